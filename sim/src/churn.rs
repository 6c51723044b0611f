//! When each device is online under `[churn]`: one rule for the engine and the gossip.
//!
//! A device starts online with probability `p_on = mean_online / (mean_online +
//! mean_offline)` (draw 0 of its churn stream), then alternates online and offline
//! periods of exponential length: period `n` (from 1) is draw `n` of the stream, with
//! the mean of the state it is in. Times are whole microseconds and each period is
//! rounded on its own, so a device's toggles are the running sums of its rounded
//! periods, exactly the times at which the engine's events fire.
//!
//! The engine walks a device's periods as its events come ([`Schedule::starts_online`],
//! [`Schedule::period_us`]); the gossip asks "is device `d` online at `t`" for round
//! times that only grow ([`Tracker`]). Both read the same draws through the same two
//! functions, so they cannot disagree (`sim/tests/gossip_churn.rs` checks the engine's
//! offline count, sample by sample, against a [`Tracker`]).
//!
//! **Goals:** pure and deterministic for a seed; draws made only when asked, so a
//! device whose periods outlast the question costs two draws (its first state and its
//! first period), whatever the fleet does.
//!
//! **Non-goals:** other period distributions, devices that never come back.

use crate::net::Micros;
use crate::rng::{self, Purpose};
use crate::scenario::Churn;

/// The online and offline periods of every device of a fleet, for a seed.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    seed: u64,
    mean_online_s: f64,
    mean_offline_s: f64,
}

impl Schedule {
    /// The schedule `[churn]` gives the fleet under the master `seed`.
    pub fn new(seed: u64, churn: &Churn) -> Self {
        Self { seed, mean_online_s: churn.mean_online_s, mean_offline_s: churn.mean_offline_s }
    }

    /// Whether device `d` is online when the release is published (its period 1).
    pub fn starts_online(&self, d: u32) -> bool {
        let p_on = self.mean_online_s / (self.mean_online_s + self.mean_offline_s);
        rng::unit(self.seed, u64::from(d), Purpose::Churn, 0) < p_on
    }

    /// The length of device `d`'s period `n` (from 1), which is an online period if
    /// `online`: draw `n` of its churn stream, rounded to the microsecond.
    pub fn period_us(&self, d: u32, n: u32, online: bool) -> Micros {
        let mean = if online { self.mean_online_s } else { self.mean_offline_s };
        let s = rng::exponential(self.seed, u64::from(d), Purpose::Churn, u64::from(n), mean);
        (s * 1e6).round() as Micros
    }

    /// Device `d`'s periods in order, from time 0.
    pub fn periods(&self, d: u32) -> Periods {
        Periods { schedule: *self, d, n: 0, from: 0, online: !self.starts_online(d) }
    }

    /// Whether device `d` is online at time `t`: a period holds from its start
    /// (included) to its end (excluded), so at a toggle's time the new state holds.
    /// The work is the periods before `t`.
    pub fn online_at(&self, d: u32, t: Micros) -> bool {
        self.periods(d).find(|p| t < p.until).is_some_and(|p| p.online)
    }
}

/// One online or offline period of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    /// Its number, from 1 (the engine's per-device churn counter).
    pub n: u32,
    /// When it starts (the previous toggle; 0 for period 1).
    pub from: Micros,
    /// When it ends (the next toggle).
    pub until: Micros,
    /// Whether the device is online in it.
    pub online: bool,
}

/// A device's periods, endless (see [`Schedule::periods`]).
#[derive(Debug, Clone)]
pub struct Periods {
    schedule: Schedule,
    d: u32,
    /// The last period returned (0 before the first).
    n: u32,
    /// Where the next period starts.
    from: Micros,
    /// The state of the last period returned.
    online: bool,
}

impl Iterator for Periods {
    type Item = Period;

    fn next(&mut self) -> Option<Period> {
        self.n = self.n.checked_add(1)?;
        self.online = !self.online;
        let from = self.from;
        let until = from.saturating_add(self.schedule.period_us(self.d, self.n, self.online));
        self.from = until;
        Some(Period { n: self.n, from, until, online: self.online })
    }
}

/// Where each device of a fleet is in its schedule, for questions whose times only
/// grow per device (gossip rounds): each period is drawn once, when first needed.
#[derive(Debug, Clone)]
pub struct Tracker {
    schedule: Schedule,
    /// Per device, the period holding the last time asked (`n == 0`: not asked yet).
    at: Vec<Period>,
}

impl Tracker {
    /// A tracker for devices `0..n`.
    pub fn new(schedule: Schedule, n: u32) -> Self {
        Self { schedule, at: vec![Period { n: 0, from: 0, until: 0, online: false }; n as usize] }
    }

    /// The period of device `d` that holds time `t`. Times asked of a device should
    /// not go back; if one does, its periods are walked again from time 0.
    pub fn period(&mut self, d: u32, t: Micros) -> Period {
        let mut p = self.at[d as usize];
        if p.n == 0 || t < p.from {
            let online = self.schedule.starts_online(d);
            p = Period { n: 1, from: 0, until: self.schedule.period_us(d, 1, online), online };
        }
        while t >= p.until {
            let (n, online) = (p.n + 1, !p.online);
            let until = p.until.saturating_add(self.schedule.period_us(d, n, online));
            p = Period { n, from: p.until, until, online };
        }
        self.at[d as usize] = p;
        p
    }

    /// Whether device `d` is online at `t`.
    pub fn online_at(&mut self, d: u32, t: Micros) -> bool {
        self.period(d, t).online
    }

    /// Whether device `d` has been online without a break from time 0 through `t`.
    pub fn online_throughout(&mut self, d: u32, t: Micros) -> bool {
        let p = self.period(d, t);
        p.n == 1 && p.online
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> Schedule {
        Schedule::new(7, &Churn { mean_online_s: 100.0, mean_offline_s: 50.0 })
    }

    #[test]
    fn periods_alternate_and_follow_each_other() {
        let s = schedule();
        for d in 0..200 {
            let ps: Vec<Period> = s.periods(d).take(20).collect();
            assert_eq!(ps[0].from, 0);
            assert_eq!(ps[0].online, s.starts_online(d));
            for w in ps.windows(2) {
                assert_eq!(w[1].from, w[0].until);
                assert_eq!(w[1].online, !w[0].online);
                assert_eq!(w[1].n, w[0].n + 1);
            }
        }
    }

    #[test]
    fn about_two_thirds_start_online() {
        let s = schedule();
        let on = (0..30_000).filter(|&d| s.starts_online(d)).count();
        assert!((19_000..21_000).contains(&on), "{on} of 30,000 online at 0 (p_on = 2/3)");
    }

    #[test]
    fn the_tracker_agrees_with_the_schedule_however_it_is_asked() {
        let s = schedule();
        let mut t = Tracker::new(s, 100);
        for d in 0..100 {
            // Growing times, a repeat and a step back.
            for &at in &[0, 1, 30_000_000, 30_000_000, 400_000_000, 90_000_000, 2_000_000_000] {
                assert_eq!(t.online_at(d, at), s.online_at(d, at), "device {d} at {at}");
                let first = s.periods(d).next().expect("endless");
                assert_eq!(t.online_throughout(d, at), first.online && at < first.until);
            }
        }
    }

    #[test]
    fn a_toggle_belongs_to_the_period_it_starts() {
        let s = schedule();
        let first = s.periods(3).next().expect("endless");
        assert_eq!(s.online_at(3, first.until - 1), first.online);
        assert_eq!(s.online_at(3, first.until), !first.online);
    }
}
