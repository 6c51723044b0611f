//! Announcement by random push gossip against the theory and an independent
//! Monte-Carlo.
//!
//! From one informed device, push gossip with fanout 1 (each informed device tells one
//! device drawn uniformly from the others, every round) reaches all n devices in
//! log2 n + ln n + O(1) rounds (Frieze and Grimmett 1985; Pittel, "On spreading a
//! rumor", SIAM J. Appl. Math. 47, 1987). The reference below is a separate,
//! deliberately plain implementation of that process with its own random generator
//! (xorshift64*), averaged over a few runs; the simulator's spread must agree with it
//! and with the formula within 10%.

use otamesh_sim::gossip;

/// Rounds until all `n` know, from one informed device: a plain Monte-Carlo.
fn reference_rounds(n: usize, seed: u64) -> u32 {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        // xorshift64* (Vigna 2014).
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let mut knows = vec![false; n];
    let mut informed = vec![0usize];
    knows[0] = true;
    let mut rounds = 0;
    while informed.len() < n {
        rounds += 1;
        let before = informed.len();
        for k in 0..before {
            let me = informed[k];
            let mut other = (next() % (n as u64 - 1)) as usize;
            if other >= me {
                other += 1;
            }
            if !knows[other] {
                knows[other] = true;
                informed.push(other);
            }
        }
    }
    rounds
}

/// The simulator's rounds to all from one informed device (its round 1 is the
/// publisher telling the first device).
fn simulated_rounds(n: u32, seed: u64) -> u32 {
    let spread = gossip::push(seed, n, 1, None);
    assert_eq!(spread.order.len(), n as usize, "everyone hears");
    u32::from(spread.last_round()) - 1
}

fn mean(xs: impl Iterator<Item = u32>) -> f64 {
    let v: Vec<u32> = xs.collect();
    v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64
}

fn check(n: u32, runs: u64) {
    let theory = f64::from(n).log2() + f64::from(n).ln();
    let reference = mean((0..runs).map(|s| reference_rounds(n as usize, 1000 + s)));
    let simulated = mean((0..runs).map(|s| simulated_rounds(n, s)));
    eprintln!("n = {n}: simulated {simulated:.2}, Monte-Carlo {reference:.2}, log2 n + ln n = {theory:.2}");
    assert!(
        (simulated - reference).abs() <= 0.10 * reference,
        "n = {n}: simulated {simulated} vs Monte-Carlo {reference}"
    );
    assert!(
        (simulated - theory).abs() <= 0.10 * theory,
        "n = {n}: simulated {simulated} vs log2 n + ln n = {theory}"
    );
}

#[test]
fn rounds_to_all_at_fanout_1_for_ten_thousand_devices() {
    check(10_000, 10);
}

#[test]
fn rounds_to_all_at_fanout_1_for_a_million_devices() {
    check(1_000_000, 2);
}

#[test]
fn a_larger_fanout_spreads_faster() {
    let one = simulated_rounds(100_000, 1);
    let six = simulated_rounds(100_000, 1);
    let six_fanout = u32::from(gossip::push(1, 100_000, 6, None).last_round()) - 1;
    assert_eq!(one, six, "pure for a seed");
    assert!(six_fanout * 2 < one, "fanout 6: {six_fanout} rounds, fanout 1: {one}");
}

/// Rounds until all `n` know under push-pull, from one informed device: every device
/// calls one partner per round; an informed caller tells it, an uninformed caller
/// learns if the partner knew before the round. A plain Monte-Carlo with its own
/// generator, as above.
fn reference_push_pull_rounds(n: usize, seed: u64) -> u32 {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    // The round in which each device heard; u32::MAX for not yet.
    let mut heard = vec![u32::MAX; n];
    heard[0] = 0;
    let mut informed = 1;
    let mut rounds = 0;
    while informed < n {
        rounds += 1;
        for me in 0..n {
            let mut other = (next() % (n as u64 - 1)) as usize;
            if other >= me {
                other += 1;
            }
            if heard[me] < rounds && heard[other] == u32::MAX {
                heard[other] = rounds;
                informed += 1;
            } else if heard[me] == u32::MAX && heard[other] < rounds {
                heard[me] = rounds;
                informed += 1;
            }
        }
    }
    rounds
}

fn check_push_pull(n: u32, runs: u64) {
    let reference = mean((0..runs).map(|s| reference_push_pull_rounds(n as usize, 2000 + s)));
    let simulated = mean((0..runs).map(|s| {
        let spread = gossip::push_pull(s, n, 1, None);
        assert_eq!(spread.order.len(), n as usize, "everyone hears");
        u32::from(spread.last_round()) - 1
    }));
    let push = mean((0..runs).map(|s| simulated_rounds(n, s)));
    eprintln!("n = {n}: push-pull simulated {simulated:.2}, Monte-Carlo {reference:.2}; push {push:.2}");
    assert!(
        (simulated - reference).abs() <= 0.10 * reference,
        "n = {n}: push-pull simulated {simulated} vs Monte-Carlo {reference}"
    );
    assert!(simulated < push, "pull finishes the tail: push-pull {simulated} vs push {push}");
}

#[test]
fn push_pull_rounds_to_all_for_ten_thousand_devices() {
    check_push_pull(10_000, 10);
}

#[test]
fn push_pull_rounds_to_all_for_a_million_devices() {
    check_push_pull(1_000_000, 2);
}
