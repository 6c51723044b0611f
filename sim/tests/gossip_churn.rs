//! Announcement while devices come and go: offline devices neither push nor hear, the
//! gossip and the engine read one churn schedule, and without churn the spread is
//! what it always was.

use otamesh_sim::churn::{Schedule, Tracker};
use otamesh_sim::gossip::{self, Churned, Presence, Sites, Spread};
use otamesh_sim::report::Summary;
use otamesh_sim::scenario::Churn;
use otamesh_sim::{Scenario, run};

/// FNV-1a over a spread's rounds, order and round starts.
fn digest(s: &Spread) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |x: u64| {
        for b in x.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    s.round.iter().for_each(|&r| eat(u64::from(r)));
    s.order.iter().for_each(|&d| eat(u64::from(d)));
    s.starts.iter().for_each(|&x| eat(u64::from(x)));
    h
}

#[test]
fn without_churn_the_spread_is_what_it_was() {
    // The digests were computed by the spread as it was before churn was modelled
    // (commit 91a0976's sim/src/gossip.rs, built on its own).
    let site: Vec<u32> = (0..20_000u32).map(|d| d / 37).collect();
    let start: Vec<u32> = (0..=20_000u32.div_ceil(37)).map(|s| (s * 37).min(20_000)).collect();
    let lan = Sites { site: &site, start: &start };
    assert_eq!(digest(&gossip::push(5, 20_000, 1, None)), 0x3088_6216_7d20_7885);
    assert_eq!(digest(&gossip::push(6, 20_000, 3, None)), 0xa138_55b9_cba7_4a7b);
    assert_eq!(digest(&gossip::push(7, 20_000, 2, Some(lan))), 0xddb3_e259_709a_ed0f);
    assert_eq!(digest(&gossip::push_pull(8, 20_000, 1, None)), 0xa8ea_ac26_4f07_f586);
    assert_eq!(digest(&gossip::push_pull(9, 20_000, 2, Some(lan))), 0x653a_656d_78a1_1507);
}

/// Everyone online, except that in round 3 the devices in `out` are offline.
struct OutageInRound3 {
    out: Vec<bool>,
}

impl Presence for OutageInRound3 {
    const ALWAYS: bool = false;

    fn online(&mut self, d: u32, r: u8) -> bool {
        !(r == 3 && self.out[d as usize])
    }

    fn online_throughout(&mut self, d: u32, r: u8) -> bool {
        r < 3 || !self.out[d as usize]
    }
}

#[test]
fn informed_devices_offline_in_a_round_tell_nobody_in_it() {
    type Play = fn(u64, u32, u32, Option<Sites<'_>>, &mut OutageInRound3) -> Spread;
    let plays: [(&str, Play); 2] = [("push", gossip::push_with), ("push-pull", gossip::push_pull_with)];
    for (name, play) in plays {
        let n = 10_000;
        // Rounds 1 and 2 do not depend on round 3: play once to learn who knows by then.
        let everyone = play(1, n, 2, None, &mut OutageInRound3 { out: vec![false; n as usize] });
        assert!(!everyone.heard_in(3).is_empty(), "{name}: round 3 reaches someone when all are online");
        let out: Vec<bool> = everyone.round.iter().map(|&r| r <= 2).collect();
        let informed = out.iter().filter(|&&o| o).count();
        assert!(informed >= 2, "{name}: {informed} informed by round 2");

        let s = play(1, n, 2, None, &mut OutageInRound3 { out });
        assert_eq!(s.heard_in(1), everyone.heard_in(1), "{name}");
        assert_eq!(s.heard_in(2), everyone.heard_in(2), "{name}");
        // Everyone else is online in round 3, so pushes from offline devices would land.
        assert!(s.heard_in(3).is_empty(), "{name}: {} heard from offline devices", s.heard_in(3).len());
        assert!(!s.heard_in(4).is_empty(), "{name}: back online in round 4, they tell again");
        assert_eq!(s.late, 0, "{name}: everyone was online since, so everyone heard in a round");
        assert_eq!(s.order.len(), n as usize, "{name}");
    }
}

fn half_online(seed: u64) -> Schedule {
    // Ten-minute periods: the same devices stay offline for most of a spread of a minute.
    Schedule::new(seed, &Churn { mean_online_s: 600.0, mean_offline_s: 600.0 })
}

/// Checks that every device heard in a round in which it was online, or is one of the
/// late devices at the end, and returns how many late devices were offline at the end.
fn check_heard_online(s: &Spread, schedule: Schedule, hop_delay_s: f64) -> usize {
    let n = s.round.len();
    assert_eq!(s.order.len(), n, "every device is placed");
    let on_time = n - s.late as usize;
    for &d in &s.order[..on_time] {
        let t = gossip::round_at(s.round[d as usize], hop_delay_s);
        assert!(schedule.online_at(d, t), "device {d} heard in round {} while offline", s.round[d as usize]);
    }
    let last = s.last_round();
    let late = &s.order[on_time..];
    assert!(late.iter().all(|&d| s.round[d as usize] == last), "late devices are in the last round");
    late.iter().filter(|&&d| !schedule.online_at(d, gossip::round_at(last, hop_delay_s))).count()
}

#[test]
fn with_half_the_fleet_offline_the_rumour_needs_more_rounds() {
    let (n, hop) = (100_000, 1.0);
    for style in ["push", "push-pull"] {
        let seed = 3;
        let schedule = half_online(seed);
        let mut churned = Churned::new(schedule, n, hop);
        let (with, without) = match style {
            "push" => (gossip::push_with(seed, n, 1, None, &mut churned), gossip::push(seed, n, 1, None)),
            _ => {
                (gossip::push_pull_with(seed, n, 1, None, &mut churned), gossip::push_pull(seed, n, 1, None))
            }
        };
        let offline_late = check_heard_online(&with, schedule, hop);
        eprintln!(
            "{style}: {} rounds without churn, {} at 50% online; {} late, {offline_late} of them offline at the end",
            without.last_round(),
            with.last_round(),
            with.late,
        );
        assert!(
            with.last_round() >= without.last_round() + 3,
            "{style}: {} rounds at 50% online vs {} without churn",
            with.last_round(),
            without.last_round()
        );
        // About half the fleet is offline through the whole minute of the spread: they
        // hear when they come back, not while away.
        assert!(offline_late > n as usize / 3, "{style}: {offline_late} offline late devices");
        assert!(offline_late < n as usize * 2 / 3, "{style}: {offline_late} offline late devices");
        // The same seed, the same spread.
        let mut again = Churned::new(half_online(seed), n, hop);
        let twice = match style {
            "push" => gossip::push_with(seed, n, 1, None, &mut again),
            _ => gossip::push_pull_with(seed, n, 1, None, &mut again),
        };
        assert_eq!(digest(&twice), digest(&with), "{style}");
    }
}

#[test]
fn only_online_members_tell_and_hear_on_the_lan() {
    let (n, hop, seed) = (20_000u32, 1.0, 4);
    let site: Vec<u32> = (0..n).map(|d| d / 50).collect();
    let start: Vec<u32> = (0..=n / 50).map(|s| s * 50).collect();
    let lan = Sites { site: &site, start: &start };
    let schedule = half_online(seed);
    let s = gossip::push_with(seed, n, 1, Some(lan), &mut Churned::new(schedule, n, hop));
    let plain = gossip::push(seed, n, 1, Some(lan));
    check_heard_online(&s, schedule, hop);
    // The LAN still carries the rumour: far fewer rounds than without it.
    let no_lan = gossip::push_with(seed, n, 1, None, &mut Churned::new(schedule, n, hop));
    eprintln!(
        "LAN: {} rounds under churn, {} without churn; no LAN under churn: {}",
        s.last_round(),
        plain.last_round(),
        no_lan.last_round()
    );
    assert!(s.last_round() + 5 < no_lan.last_round(), "{} vs {}", s.last_round(), no_lan.last_round());
    // A site whose first devices heard in round r is told in round r + 1 if one of them
    // is online then, and every member online then hears in it.
    let on_time = &s.order[..(n - s.late) as usize];
    let mut first = vec![u8::MAX; n as usize / 50];
    for &d in on_time {
        let f = &mut first[d as usize / 50];
        *f = (*f).min(s.round[d as usize]);
    }
    let mut told = 0;
    for (site, &r) in first.iter().enumerate() {
        let members = site as u32 * 50..(site as u32 + 1) * 50;
        let t = gossip::round_at(r.saturating_add(1), hop);
        let tellers =
            members.clone().filter(|&e| s.round[e as usize] == r && schedule.online_at(e, t)).count();
        if r >= s.last_round() || tellers == 0 {
            continue;
        }
        told += 1;
        for e in members.filter(|&e| schedule.online_at(e, t)) {
            assert!(
                s.round[e as usize] <= r + 1,
                "site {site}: member {e} online in round {} but heard in {}",
                r + 1,
                s.round[e as usize]
            );
        }
    }
    assert!(told > 300, "{told} of 400 sites told on the LAN");
}

/// A small fleet that stays uncommitted for hours (a large release over a slow WAN),
/// sampled every 10 s: its offline count is the engine's churn.
const SLOW: &str = r#"
[sim]
duration_s = 20000
sample_s = 10
[fleet]
devices = 1000
sites = 10
utc_offsets_min = [0]
[[class]]
name = "device"
share = 100
install_s = 60
reboot_s = 20
health_check_s = 30
downlink_mbps = 10
uplink_mbps = 1
[release]
bytes = 1_000_000_000
piece_bytes = 50_000_000
[network]
mode = "p2p-dedup"
origin_egress_mbps = 0
site_wan_mbps = 1
site_lan_mbps = 100
latency_ms = 20
[announce]
hop_delay_s = 1
fanout = 2
[churn]
mean_online_s = 300
mean_offline_s = 200
[rollout]
"#;

#[test]
fn the_engine_and_the_gossip_read_one_churn_schedule() {
    let seed = 5;
    let sc = Scenario::parse("slow.toml", SLOW, &[]).expect("test scenario is valid");
    let r = run(&sc, seed, &mut |_| {});
    let churn = sc.churn.as_ref().expect("the scenario has churn");
    let schedule = Schedule::new(seed, churn);
    let mut tracker = Tracker::new(schedule, 1000);
    assert!(r.series.len() > 1000, "{} samples", r.series.len());
    for sample in &r.series {
        let t = (sample.t_s * 1e6).round() as u64;
        let offline = (0..1000).filter(|&d| !tracker.online_at(d, t)).count() as u64;
        assert_eq!(sample.offline, offline, "offline devices at {} s", sample.t_s);
    }
}

#[test]
fn a_churned_gossip_run_is_reproducible() {
    let sets = ["network.site_wan_mbps=50", "release.bytes=20_000_000", "release.piece_bytes=1_000_000"];
    let sets: Vec<String> = sets.iter().map(|s| (*s).to_owned()).collect();
    let sc = Scenario::parse("slow.toml", SLOW, &sets).expect("test scenario is valid");
    let a = run(&sc, 8, &mut |_| {});
    let b = run(&sc, 8, &mut |_| {});
    assert_eq!(Summary::of(&a, None).to_json(), Summary::of(&b, None).to_json());
    assert_eq!(a.committed, 1000, "offline devices hear and fetch when back");
}

#[test]
fn the_publisher_tries_again_until_an_online_device_hears() {
    // One device in a hundred online at a time: the publisher's first pushes are lost.
    let (n, hop, seed) = (5_000, 1.0, 9);
    let schedule = Schedule::new(seed, &Churn { mean_online_s: 600.0, mean_offline_s: 59_400.0 });
    let s = gossip::push_with(seed, n, 1, None, &mut Churned::new(schedule, n, hop));
    check_heard_online(&s, schedule, hop);
    let first = (1..=s.last_round()).find(|&r| !s.heard_in(r).is_empty()).expect("someone is placed");
    let on_time = n - s.late;
    eprintln!("first hearer in round {first}, {on_time} heard on time, {} rounds", s.last_round());
    assert!(first > 1, "round 1's push was lost (this seed)");
    assert!(on_time > 1, "the publisher tried again and the rumour spread among the online devices");
}

#[test]
fn tiny_churned_fleets() {
    let schedule = Schedule::new(1, &Churn { mean_online_s: 1.0, mean_offline_s: 1e6 });
    // Offline at every round: placed late, to hear when it comes back.
    let one = gossip::push_with(1, 1, 1, None, &mut Churned::new(schedule, 1, 1.0));
    assert_eq!((one.late, one.round.clone()), (1, vec![1]));
    let none = gossip::push_pull_with(1, 0, 1, None, &mut Churned::new(schedule, 0, 1.0));
    assert!(none.order.is_empty());
}
