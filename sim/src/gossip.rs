//! Announcement by push gossip, played as a random process.
//!
//! The publisher pushes a new release to `fanout` devices drawn uniformly from the
//! fleet (round 1). In every later round, each device that knew the release before the
//! round pushes it to `fanout` devices drawn uniformly from the others; a push to a
//! device that already knows is a wasted duplicate, and several pushes may hit the same
//! device in one round. This is the random phone-call model of Frieze and Grimmett
//! (1985) and Pittel (1987): from one informed device, fanout 1 reaches all `n` in
//! `log2 n + ln n + O(1)` rounds. The fast start (doubling) and the slow tail (the last
//! devices are found by chance) both come out of the draws, not a formula.
//!
//! **Goals:** pure and deterministic for a seed (every push is the counter-based draw
//! (seed, pushing device, mixed (round, j))); work proportional to the pushes made, that is to
//! the informed devices of each round, never to the fleet per round; a few bytes per
//! device (under churn, 28 more while the spread is drawn).
//!
//! With [`Sites`], delivery is also per site: the first devices of a site to hear tell
//! the whole site on its LAN in the next round (a site's peers are each other's
//! gossip neighbours), so the rumour needs to reach each site once.
//!
//! [`push_pull`] adds pull: every device calls partners each round, and an uninformed
//! caller learns from an informed partner, which removes push's slow tail.
//!
//! **Churn while spreading** ([`push_with`], [`push_pull_with`] and a [`Presence`]; the
//! engine uses [`Churned`], the fleet's `[churn]` schedule from [`crate::churn`], the
//! one its own online and offline events follow). Round `r` is played at
//! [`round_at`]`(r, hop_delay_s)`, and a device offline then takes no part in it: it
//! does not push, a push to it is lost, in push-pull it neither calls nor answers, and
//! on a LAN only the online members of a site tell and hear. It takes part again in
//! the rounds after it is back. The publisher is always online and pushes again in
//! every round until one of its pushes reaches an online device (it publishes to the
//! devices it is connected to). The rounds stop once every device that has been
//! online since publication has heard: new rounds would mostly reach devices coming
//! back, one by one, and their cost is the informed fleet per round. The devices not
//! reached by then are *late* ([`Spread::late`]): they are put in the last round, so
//! the engine announces to those online then at once and to the others when they
//! come back, as a reconnecting gossipsub peer catches up from peers that know.
//! That is optimistic by a round or two for a device back shortly before the end
//! (random pushes would have found it soon), and more so when the rumour has not
//! reached most online devices by then: when online periods are shorter than the
//! spread (few devices stay online throughout, so the rounds stop early), or when few
//! devices are online at all (the rounds then run to [`MAX_ROUND`]). Churn costs a
//! few draws per device (each device's first periods, drawn when first needed) and a
//! presence look-up per pushing device and per push to a device that has not heard;
//! without churn the spread, its draws and its work are what they were.
//!
//! **Non-goals:** message loss other than to offline devices; a device's mesh peers
//! (pushes go to uniform random devices, online or not, where gossipsub would send
//! only to connected peers: a lost push is the pessimistic side of that).

use std::ops::Range;

use crate::churn;
use crate::net::Micros;
use crate::rng::{self, Purpose};

/// The round of a device that never hears (rounds stop at [`MAX_ROUND`]).
pub const UNHEARD: u8 = u8::MAX;

/// The last round played; with fanout 1 a fleet of 2^32 devices needs about 55.
pub const MAX_ROUND: u8 = UNHEARD - 1;

/// Who hears in which round.
#[derive(Debug, Clone, Default)]
pub struct Spread {
    /// Per device, the round in which it first heard ([`UNHEARD`] if it never did).
    pub round: Vec<u8>,
    /// Devices in the order they heard; round `r`'s are `order[starts[r]..starts[r + 1]]`.
    pub order: Vec<u32>,
    /// Where each round's devices start in `order`; `starts[0] == starts[1] == 0`.
    pub starts: Vec<u32>,
    /// Under churn, the last `late` devices of `order`: not reached while online in the
    /// rounds played, they are put in the last round and hear then if online, or else
    /// when they are next online (0 without churn).
    pub late: u32,
}

impl Spread {
    /// The devices that first heard in round `r`.
    pub fn heard_in(&self, r: u8) -> &[u32] {
        let r = usize::from(r);
        match (self.starts.get(r), self.starts.get(r + 1)) {
            (Some(&a), Some(&b)) => &self.order[a as usize..b as usize],
            _ => &[],
        }
    }

    /// The last round in which someone heard (0 for an empty fleet).
    pub fn last_round(&self) -> u8 {
        (self.starts.len().saturating_sub(2)).min(usize::from(MAX_ROUND)) as u8
    }

    /// The spread as a shard playing `devices` needs it: only they are in the rounds'
    /// lists (every device's round is kept).
    pub fn only(self, devices: Range<u32>) -> Spread {
        let tail = self.order.len() - self.late as usize;
        let mut order = Vec::new();
        let mut starts = vec![0];
        let mut late = 0;
        for r in 0..self.starts.len().saturating_sub(1) {
            let (a, b) = (self.starts[r] as usize, self.starts[r + 1] as usize);
            for (at, &d) in self.order[a..b].iter().enumerate() {
                if devices.contains(&d) {
                    order.push(d);
                    late += u32::from(a + at >= tail);
                }
            }
            starts.push(order.len() as u32);
        }
        Spread { round: self.round, order, starts, late }
    }
}

/// The fleet's sites, for per-site delivery.
#[derive(Debug, Clone, Copy)]
pub struct Sites<'a> {
    /// Each device's site.
    pub site: &'a [u32],
    /// Site `s` is devices `start[s]..start[s + 1]`.
    pub start: &'a [u32],
}

/// Who is online at each round's time, as the spread asks (see [`Churned`]).
pub trait Presence {
    /// Every device is online in every round: the spread is played as without churn,
    /// with no work for presence at all.
    const ALWAYS: bool;

    /// Whether device `d` is online in round `r`. The rounds asked of a device only
    /// grow.
    fn online(&mut self, d: u32, r: u8) -> bool;

    /// Whether device `d` has been online without a break from publication (time 0)
    /// through round `r`.
    fn online_throughout(&mut self, d: u32, r: u8) -> bool;
}

/// No churn: every device is online all the time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Everyone;

impl Presence for Everyone {
    const ALWAYS: bool = true;

    fn online(&mut self, _: u32, _: u8) -> bool {
        true
    }

    fn online_throughout(&mut self, _: u32, _: u8) -> bool {
        true
    }
}

/// Devices online and offline by the fleet's churn schedule ([`churn::Schedule`], the
/// one the engine plays), round `r` at [`round_at`]`(r, hop_delay_s)`.
#[derive(Debug, Clone)]
pub struct Churned {
    tracker: churn::Tracker,
    /// Each round's time.
    at: Vec<Micros>,
    /// Per device, what the period it was last asked about says, for the rounds it
    /// covers: its first round (bits 11 and up), the first round past it (bits 2 to
    /// 10), whether it is the device's first period (bit 1) and online (bit 0); 0
    /// before the first question. Four bytes a device answer almost every question (a
    /// period lasts many rounds) where the tracker's period records, six times larger,
    /// would be read at random across the fleet.
    known: Vec<u32>,
}

impl Churned {
    /// The presence of devices `0..n` under `schedule`, with rounds `hop_delay_s` apart.
    pub fn new(schedule: churn::Schedule, n: u32, hop_delay_s: f64) -> Self {
        let at = (0..=UNHEARD).map(|r| round_at(r, hop_delay_s)).collect();
        Self { tracker: churn::Tracker::new(schedule, n), at, known: vec![0; n as usize] }
    }

    /// What device `d`'s period holding round `r` says (encoded as in `known`).
    fn ask(&mut self, d: u32, r: u8) -> u32 {
        let r32 = u32::from(r);
        let k = self.known[d as usize];
        if (k >> 11) <= r32 && r32 < (k >> 2 & 0x1ff) {
            return k;
        }
        let p = self.tracker.period(d, self.at[usize::from(r)]);
        // The rounds whose time falls in the period (`first..past`, past at most 256).
        let first = self.at.partition_point(|&t| t < p.from) as u32;
        let past = self.at.partition_point(|&t| t < p.until) as u32;
        let k = first << 11 | past << 2 | u32::from(p.n == 1) << 1 | u32::from(p.online);
        self.known[d as usize] = k;
        k
    }
}

impl Presence for Churned {
    const ALWAYS: bool = false;

    fn online(&mut self, d: u32, r: u8) -> bool {
        self.ask(d, r) & 1 == 1
    }

    fn online_throughout(&mut self, d: u32, r: u8) -> bool {
        self.ask(d, r) & 3 == 3
    }
}

/// When round `r` is played, `hop_delay_s` seconds a round after publication, to the
/// microsecond: the engine announces round `r` at this time too.
pub fn round_at(r: u8, hop_delay_s: f64) -> Micros {
    (f64::from(r) * hop_delay_s * 1e6).round() as Micros
}

/// Plays push gossip over `n` devices with `fanout` pushes per informed device and
/// round, until every device knows or [`MAX_ROUND`] is reached; with `sites`, a site
/// hears on its LAN the round after its first device heard. Nobody goes offline: see
/// [`push_with`] for churn.
pub fn push(seed: u64, n: u32, fanout: u32, sites: Option<Sites<'_>>) -> Spread {
    push_with(seed, n, fanout, sites, &mut Everyone)
}

/// [`push`] with devices online and offline as `presence` says: in each round only
/// the informed devices online then push, a push to a device offline then is lost,
/// and only online site members tell and hear on the LAN. Under churn the rounds
/// stop once every device online since publication has heard, and the devices not
/// reached by then hear late (see [`Spread::late`]).
pub fn push_with<P: Presence>(
    seed: u64,
    n: u32,
    fanout: u32,
    sites: Option<Sites<'_>>,
    presence: &mut P,
) -> Spread {
    play(seed, n, fanout, sites, presence, |r, informed, presence, round, order| {
        // Synchronous rounds: only devices that knew before this round push in it.
        for k in 0..informed {
            let d = order[k];
            if !P::ALWAYS && !presence.online(d, r) {
                continue;
            }
            for j in 0..u64::from(fanout) {
                let target = partner(seed, n, fanout, d, r, j);
                if round[target as usize] == UNHEARD && (P::ALWAYS || presence.online(target, r)) {
                    round[target as usize] = r;
                    order.push(target);
                }
            }
        }
    })
}

/// Plays push-pull gossip over `n` devices: in every round each device calls `fanout`
/// partners drawn uniformly from the others; a caller that knew before the round tells
/// its partner (push), and one that did not learns from a partner that did (pull).
/// The publisher's round 1 is as in [`push`]. This is the random phone-call model with
/// push and pull (R. Karp, C. Schindelhauer, S. Shenker and B. Vöcking, "Randomized
/// rumor spreading", FOCS 2000): from one informed device, fanout 1 reaches all `n` in
/// `log3 n + O(ln ln n)` rounds; pull finishes the tail that push leaves to chance.
/// The work is `n * fanout` draws per round (every device calls), against push's
/// draws per informed device. With `sites`, delivery is also per site, as in [`push`].
/// Nobody goes offline: see [`push_pull_with`] for churn.
pub fn push_pull(seed: u64, n: u32, fanout: u32, sites: Option<Sites<'_>>) -> Spread {
    push_pull_with(seed, n, fanout, sites, &mut Everyone)
}

/// [`push_pull`] with devices online and offline as `presence` says: a device offline
/// in a round neither calls nor answers (a call to it is lost), and the rounds stop
/// and late devices hear as in [`push_with`].
pub fn push_pull_with<P: Presence>(
    seed: u64,
    n: u32,
    fanout: u32,
    sites: Option<Sites<'_>>,
    presence: &mut P,
) -> Spread {
    play(seed, n, fanout, sites, presence, |r, _, presence, round, order| {
        for d in 0..n {
            if !P::ALWAYS && !presence.online(d, r) {
                continue;
            }
            for j in 0..u64::from(fanout) {
                let partner = partner(seed, n, fanout, d, r, j);
                // "Knew before this round": heard in an earlier round.
                let (me, them) = (round[d as usize], round[partner as usize]);
                if me < r && them == UNHEARD {
                    if P::ALWAYS || presence.online(partner, r) {
                        round[partner as usize] = r;
                        order.push(partner);
                    }
                } else if me == UNHEARD && them < r && (P::ALWAYS || presence.online(partner, r)) {
                    round[d as usize] = r;
                    order.push(d);
                }
            }
        }
    })
}

/// The rounds both styles share: the publisher's round 1, then round after round
/// until every device knows, [`MAX_ROUND`], or (under churn) nobody online since
/// publication is still waiting. Each round delivers on site LANs, has the publisher
/// try again while its every push was lost, then lets `gossip` play the round given
/// how many devices knew before it.
fn play<P: Presence>(
    seed: u64,
    n: u32,
    fanout: u32,
    sites: Option<Sites<'_>>,
    presence: &mut P,
    mut gossip: impl FnMut(u8, usize, &mut P, &mut [u8], &mut Vec<u32>),
) -> Spread {
    let mut round = vec![UNHEARD; n as usize];
    let mut order: Vec<u32> = Vec::with_capacity(n as usize);
    let mut starts = vec![0u32, 0];
    if n == 0 || fanout == 0 {
        return Spread { round, order, starts, late: 0 };
    }
    let mut waiting = Waiting::new(n, presence);
    publish(seed, n, fanout, 1, presence, &mut round, &mut order);
    starts.push(order.len() as u32);
    let mut told = vec![false; sites.map_or(0, |s| s.start.len().saturating_sub(1))];
    let mut r: u8 = 1;
    while order.len() < n as usize && r < MAX_ROUND && n > 1 && waiting.any(presence, &round, r) {
        r += 1;
        let informed = order.len();
        if let Some(sites) = sites {
            let fresh = starts[usize::from(r) - 1] as usize;
            tell_sites(sites, r, fresh, &mut told, presence, &mut round, &mut order);
        }
        if informed == 0 {
            // Under churn every push of the publisher's may have been lost.
            publish(seed, n, fanout, r, presence, &mut round, &mut order);
        }
        gossip(r, informed, presence, &mut round, &mut order);
        starts.push(order.len() as u32);
    }
    finish::<P>(round, order, starts, r)
}

/// The devices that have been online since publication and not heard yet: under churn
/// the rounds go on while there is one. Without churn, no work: the rounds go on
/// until everyone heard.
struct Waiting(Vec<u32>);

impl Waiting {
    fn new<P: Presence>(n: u32, presence: &mut P) -> Self {
        if P::ALWAYS {
            return Self(Vec::new());
        }
        Self((0..n).filter(|&d| presence.online_throughout(d, 0)).collect())
    }

    /// Whether a device has been online from publication through round `r` without
    /// hearing. A device that heard or went offline never waits again, so each is
    /// dropped once: the work is the fleet's size over the whole spread.
    fn any<P: Presence>(&mut self, presence: &mut P, round: &[u8], r: u8) -> bool {
        if P::ALWAYS {
            return true;
        }
        while let Some(&d) = self.0.last() {
            if round[d as usize] == UNHEARD && presence.online_throughout(d, r) {
                return true;
            }
            self.0.pop();
        }
        false
    }
}

/// Ends a spread whose last round was `last`: under churn, the devices not reached
/// while online hear late, in round `last` (see [`Spread::late`]).
fn finish<P: Presence>(mut round: Vec<u8>, mut order: Vec<u32>, mut starts: Vec<u32>, last: u8) -> Spread {
    let mut late = 0;
    if !P::ALWAYS && order.len() < round.len() {
        for (d, r) in round.iter_mut().enumerate() {
            if *r == UNHEARD {
                *r = last;
                order.push(d as u32);
                late += 1;
            }
        }
        if let Some(end) = starts.last_mut() {
            *end = order.len() as u32;
        }
    }
    Spread { round, order, starts, late }
}

/// The publisher (not a device, always online) tells `fanout` devices drawn at
/// random in round `r`: round 1, and under churn again in every round until one of
/// its pushes reached a device online then (its peers are the devices it is
/// connected to).
fn publish<P: Presence>(
    seed: u64,
    n: u32,
    fanout: u32,
    r: u8,
    presence: &mut P,
    round: &mut [u8],
    order: &mut Vec<u32>,
) {
    // Round 1's draws are 0..fanout; round r's follow on from r * fanout.
    let first = if r == 1 { 0 } else { u64::from(r) * u64::from(fanout) };
    for j in first..first + u64::from(fanout) {
        let target = (rng::draw(seed, u64::MAX, Purpose::Announce, j) % u64::from(n)) as u32;
        if round[target as usize] == UNHEARD && (P::ALWAYS || presence.online(target, r)) {
            round[target as usize] = r;
            order.push(target);
        }
    }
}

/// Sites whose first devices heard in the last round (`order[fresh..]`) hear now, all
/// at once: the work is each site's size, once. Under churn a site is told by those
/// of its fresh devices that are online now, and its members offline now miss it.
fn tell_sites<P: Presence>(
    sites: Sites<'_>,
    r: u8,
    fresh: usize,
    told: &mut [bool],
    presence: &mut P,
    round: &mut [u8],
    order: &mut Vec<u32>,
) {
    for k in fresh..order.len() {
        let d = order[k];
        let s = sites.site[d as usize] as usize;
        if told[s] || !(P::ALWAYS || presence.online(d, r)) {
            continue;
        }
        told[s] = true;
        for e in sites.start[s]..sites.start[s + 1] {
            if round[e as usize] == UNHEARD && (P::ALWAYS || presence.online(e, r)) {
                round[e as usize] = r;
                order.push(e);
            }
        }
    }
}

/// Device `d`'s `j`-th partner in round `r`: uniform over the other devices.
fn partner(seed: u64, n: u32, fanout: u32, d: u32, r: u8, j: u64) -> u32 {
    // The counter is mixed first: with plain small counters, one device's draws in
    // successive rounds came out correlated enough to lengthen the tail by two rounds
    // at a million devices (against the Monte-Carlo in tests/gossip.rs).
    let n_draw = rng::mix(u64::from(r) * u64::from(fanout) + j);
    let pick = (rng::draw(seed, u64::from(d), Purpose::Announce, n_draw) % u64::from(n - 1)) as u32;
    // Skip over the caller itself.
    if pick >= d { pick + 1 } else { pick }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everyone_hears_once_in_round_order() {
        let s = push(3, 1000, 2, None);
        assert_eq!(s.order.len(), 1000);
        let mut seen = vec![false; 1000];
        for r in 1..=s.last_round() {
            for &d in s.heard_in(r) {
                assert!(!seen[d as usize], "device {d} heard twice");
                seen[d as usize] = true;
                assert_eq!(s.round[d as usize], r);
            }
        }
        assert!(seen.iter().all(|&x| x));
        // The publisher's round reaches at most `fanout` devices.
        assert!(s.heard_in(1).len() <= 2);
    }

    #[test]
    fn a_round_at_most_multiplies_the_informed_by_fanout_plus_one() {
        let s = push(5, 100_000, 3, None);
        for r in 2..=s.last_round() {
            let before = s.starts[usize::from(r)] as usize;
            let after = s.starts[usize::from(r) + 1] as usize;
            assert!(after <= before * 4, "round {r}: {before} -> {after}");
        }
    }

    #[test]
    fn a_site_hears_the_round_after_its_first_device() {
        // 10,000 devices in 100 sites of 100: every site's devices hear within one
        // round of the first, and the fleet needs far fewer rounds than without.
        let site: Vec<u32> = (0..10_000).map(|d| d / 100).collect();
        let start: Vec<u32> = (0..=100).map(|s| s * 100).collect();
        let lan = push(7, 10_000, 1, Some(Sites { site: &site, start: &start }));
        let plain = push(7, 10_000, 1, None);
        assert_eq!(lan.order.len(), 10_000);
        for s in 0..100 {
            let rounds = &lan.round[s * 100..(s + 1) * 100];
            let first = *rounds.iter().min().expect("a site has devices");
            assert!(rounds.iter().all(|&r| r <= first + 1), "site {s}: {rounds:?}");
        }
        assert!(lan.last_round() + 5 < plain.last_round(), "{} vs {}", lan.last_round(), plain.last_round());
    }

    #[test]
    fn churned_presence_agrees_with_the_schedule_whatever_the_order_asked() {
        // Periods of a few rounds, so answers change often; rounds asked out of order too.
        let churn = crate::scenario::Churn { mean_online_s: 5.0, mean_offline_s: 3.0 };
        for hop in [0.7, 0.0] {
            let schedule = churn::Schedule::new(2, &churn);
            let mut c = Churned::new(schedule, 50, hop);
            for r in [0u8, 1, 5, 5, 6, 30, 2, 200, 254, 0, 100] {
                let t = round_at(r, hop);
                for d in 0..50 {
                    assert_eq!(c.online(d, r), schedule.online_at(d, t), "device {d}, round {r}, hop {hop}");
                    let first = schedule.periods(d).next().expect("endless");
                    assert_eq!(c.online_throughout(d, r), first.online && t < first.until);
                }
            }
        }
    }

    #[test]
    fn a_shard_sees_its_own_devices_in_the_rounds_they_heard() {
        let all = push(9, 5_000, 1, None);
        let (low, high) = (all.clone().only(0..2_000), all.clone().only(2_000..5_000));
        assert_eq!(low.last_round(), all.last_round());
        for r in 0..=all.last_round() {
            let mine = |s: &Spread, range: std::ops::Range<u32>| -> Vec<u32> {
                let heard: Vec<u32> = s.heard_in(r).to_vec();
                assert!(heard.iter().all(|d| range.contains(d)), "round {r}: another shard's device");
                heard
            };
            let mut both = mine(&low, 0..2_000);
            both.extend(mine(&high, 2_000..5_000));
            both.sort_unstable();
            let mut want = all.heard_in(r).to_vec();
            want.sort_unstable();
            assert_eq!(both, want, "round {r}");
        }
        assert_eq!(low.round, all.round);
    }

    #[test]
    fn tiny_fleets() {
        assert!(push(1, 0, 1, None).order.is_empty());
        let one = push(1, 1, 1, None);
        assert_eq!(one.round, vec![1]);
        let two = push(1, 2, 1, None);
        assert_eq!(two.order.len(), 2);
        assert_eq!(two.last_round(), 2);
    }
}
