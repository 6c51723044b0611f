//! The per-release tally of status reports and the health gate.
//!
//! A tally counts distinct devices only: a device that reports twice counts once, with
//! its newest outcome (by the device's own report sequence), so one device cannot move
//! a gate by repeating itself. Success means a report sent after the health check
//! passed on the new version, never "image written".

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use serde::{Deserialize, Serialize};

use crate::DeviceId;

/// Stop adopting a release when the failure ratio among reports exceeds this.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthGate {
    /// Failures over outcome reports above which the gate is breached.
    pub max_failure_ratio: f64,
    /// The gate judges only once this many distinct devices reported.
    #[serde(default)]
    pub min_reports: u32,
}

impl HealthGate {
    /// Whether `tally` breaches this gate.
    pub fn breached(&self, tally: &Tally) -> bool {
        let outcomes = tally.outcomes();
        outcomes > 0
            && outcomes >= u64::from(self.min_reports)
            && tally.failures() as f64 > self.max_failure_ratio * outcomes as f64
    }
}

/// What a report says about the release, for the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// Committed after the health check passed.
    Success,
    /// Install or health check failed.
    Failure,
    /// Says nothing about the release's health (e.g. rolled back by a revoke).
    Neutral,
}

/// What [`Tally::record`] did with a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Recorded {
    /// A device heard of for the first time.
    New,
    /// A newer report from a known device replaced its old one.
    Updated,
    /// Not newer than what the device already said: ignored.
    Stale,
}

/// Outcome reports for one release, by device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    devices: BTreeMap<DeviceId, (u64, Verdict, u16)>,
    /// Per wave: (successes, failures).
    per_wave: Vec<(u64, u64)>,
}

impl Tally {
    /// No reports yet.
    pub const fn new() -> Self {
        Self { devices: BTreeMap::new(), per_wave: Vec::new() }
    }

    /// Records that `device` (in wave `wave`, which the caller computes itself from the
    /// device id, never trusting the report) said `verdict` in its report `sequence`.
    pub fn record(&mut self, device: DeviceId, sequence: u64, verdict: Verdict, wave: u16) -> Recorded {
        // One walk down the map (a simulated fleet's tally holds millions of devices).
        let previous = match self.devices.entry(device) {
            Entry::Occupied(mut known) => {
                if known.get().0 >= sequence {
                    return Recorded::Stale;
                }
                Some(known.insert((sequence, verdict, wave)))
            }
            Entry::Vacant(new) => {
                new.insert((sequence, verdict, wave));
                None
            }
        };
        if let Some((_, old, old_wave)) = previous {
            self.count(old, old_wave, false);
        }
        self.count(verdict, wave, true);
        if previous.is_some() { Recorded::Updated } else { Recorded::New }
    }

    fn count(&mut self, verdict: Verdict, wave: u16, add: bool) {
        let w = usize::from(wave);
        if self.per_wave.len() <= w {
            self.per_wave.resize(w + 1, (0, 0));
        }
        let slot = match verdict {
            Verdict::Success => &mut self.per_wave[w].0,
            Verdict::Failure => &mut self.per_wave[w].1,
            Verdict::Neutral => return,
        };
        if add { *slot += 1 } else { *slot -= 1 }
    }

    /// Distinct devices that reported anything.
    pub fn devices(&self) -> usize {
        self.devices.len()
    }

    /// Devices whose newest report is a success or a failure.
    pub fn outcomes(&self) -> u64 {
        self.per_wave.iter().map(|(s, f)| s + f).sum()
    }

    /// Devices whose newest report is a failure.
    pub fn failures(&self) -> u64 {
        self.per_wave.iter().map(|(_, f)| f).sum()
    }

    /// Devices whose newest report is a success.
    pub fn successes(&self) -> u64 {
        self.per_wave.iter().map(|(s, _)| s).sum()
    }

    /// (successes, outcomes) among devices of waves before `wave`.
    pub fn outcomes_before(&self, wave: usize) -> (u64, u64) {
        self.per_wave.iter().take(wave).fold((0, 0), |(s, o), (ws, wf)| (s + ws, o + ws + wf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(n: u8) -> DeviceId {
        DeviceId::from_bytes([n; 32])
    }

    #[test]
    fn one_device_counts_once() {
        let mut t = Tally::default();
        assert_eq!(t.record(dev(1), 1, Verdict::Failure, 0), Recorded::New);
        assert_eq!(t.record(dev(1), 1, Verdict::Failure, 0), Recorded::Stale);
        assert_eq!(t.record(dev(1), 0, Verdict::Success, 0), Recorded::Stale);
        assert_eq!(t.failures(), 1);
        assert_eq!(t.record(dev(1), 2, Verdict::Success, 0), Recorded::Updated);
        assert_eq!((t.failures(), t.successes(), t.devices()), (0, 1, 1));
    }

    #[test]
    fn gate_waits_for_min_reports() {
        let g = HealthGate { max_failure_ratio: 0.2, min_reports: 4 };
        let mut t = Tally::default();
        for n in 0..3 {
            let _ = t.record(dev(n), 1, Verdict::Failure, 0);
        }
        assert!(!g.breached(&t), "3 reports < min 4");
        let _ = t.record(dev(3), 1, Verdict::Success, 0);
        assert!(g.breached(&t), "3 of 4 failed > 0.2");
    }

    #[test]
    fn gate_holds_at_exact_ratio() {
        let g = HealthGate { max_failure_ratio: 0.2, min_reports: 1 };
        let mut t = Tally::default();
        let _ = t.record(dev(0), 1, Verdict::Failure, 0);
        for n in 1..5 {
            let _ = t.record(dev(n), 1, Verdict::Success, 0);
        }
        assert!(!g.breached(&t), "1 of 5 = 0.2 is not above 0.2");
    }

    #[test]
    fn neutral_reports_do_not_count() {
        let g = HealthGate { max_failure_ratio: 0.0, min_reports: 1 };
        let mut t = Tally::default();
        let _ = t.record(dev(0), 1, Verdict::Neutral, 0);
        assert_eq!(t.outcomes(), 0);
        assert!(!g.breached(&t));
    }

    #[test]
    fn outcomes_before_splits_by_wave() {
        let mut t = Tally::default();
        let _ = t.record(dev(0), 1, Verdict::Success, 0);
        let _ = t.record(dev(1), 1, Verdict::Failure, 1);
        let _ = t.record(dev(2), 1, Verdict::Success, 2);
        assert_eq!(t.outcomes_before(0), (0, 0));
        assert_eq!(t.outcomes_before(1), (1, 1));
        assert_eq!(t.outcomes_before(2), (1, 2));
    }
}
