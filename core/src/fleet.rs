//! The fleet as a node hears it: inventory and rollout reports from signed reports.
//!
//! There is no central server: every node keeps the view it builds from the signed
//! reports it hears (the seed document's "assess needs" and "review and report"
//! steps). [`FleetView`] keeps each device's newest report; [`FleetView::rollout`]
//! summarises one release: devices per outcome and per wave, failure reasons, and when
//! each wave's reports started and stopped coming in.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::gate::Recorded;
use crate::report::{Outcome, VerifiedReport};
use crate::rollout::{RolloutPolicy, position};
use crate::{DeviceId, Millis, ReleaseId, UpdateKind};

/// What the fleet view knows of one device: its newest report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceEntry {
    /// The device.
    pub device: DeviceId,
    /// Its site.
    pub site: String,
    /// Its class.
    pub class: String,
    /// The release it runs.
    pub active: Option<ReleaseId>,
    /// The release its newest outcome is about.
    pub release: ReleaseId,
    /// That outcome.
    pub outcome: Outcome,
    /// The report's sequence (newer replaces older).
    pub sequence: u64,
    /// When it was sent.
    pub last_seen: Millis,
}

/// Every device's newest report, and every outcome per release.
#[derive(Debug, Clone, Default)]
pub struct FleetView {
    devices: BTreeMap<DeviceId, DeviceEntry>,
    /// Per release, per device: (outcome, sent_at), newest per device.
    outcomes: BTreeMap<ReleaseId, BTreeMap<DeviceId, (u64, Outcome, Millis)>>,
}

/// One wave of a rollout report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WaveReport {
    /// Wave index (0 for a release without waves).
    pub wave: usize,
    /// Cumulative percent of the fleet.
    pub percent: f64,
    /// When the wave was allowed to start (created_at + offset).
    pub opens_at: Millis,
    /// Devices of this wave that committed.
    pub committed: usize,
    /// Devices of this wave whose install failed.
    pub failed: usize,
    /// Devices of this wave that rolled back on their own (health check, crash).
    pub rolled_back: usize,
    /// Devices of this wave that rolled back because the release was revoked.
    pub revoked: usize,
    /// The first outcome report of the wave.
    pub first_report_at: Option<Millis>,
    /// The last outcome report of the wave.
    pub last_report_at: Option<Millis>,
}

/// One release's rollout as reports tell it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolloutReport {
    /// The release.
    pub release: ReleaseId,
    /// Devices per outcome: `committed`, `failed`, `rolled_back`, `revoked`.
    pub outcomes: BTreeMap<String, usize>,
    /// Per wave.
    pub waves: Vec<WaveReport>,
    /// Failure reasons and how many devices gave each.
    pub failure_reasons: BTreeMap<String, usize>,
}

impl FleetView {
    /// Records a verified report. A report is stale when one at least as new (by its
    /// sequence) from the same device *about the same release* was recorded: a device
    /// re-announces its reports with new sequences ([`crate::reannounce`]), oldest
    /// release first, and gossip may deliver them in any order, so an older release's
    /// report arriving after a newer release's is still that release's news. The device's
    /// entry (what it runs, its newest outcome) follows only its highest sequence.
    pub fn record(&mut self, report: &VerifiedReport) -> Recorded {
        let r = report.report();
        let device = report.device();
        if self.is_stale(report) {
            return Recorded::Stale;
        }
        let seen = self.devices.get(&device).map(|e| e.sequence);
        if seen.is_none_or(|seq| seq < r.sequence) {
            self.devices.insert(
                device,
                DeviceEntry {
                    device,
                    site: r.site.clone(),
                    class: r.class.clone(),
                    active: r.active,
                    release: r.release,
                    outcome: r.outcome.clone(),
                    sequence: r.sequence,
                    last_seen: r.sent_at,
                },
            );
        }
        let previous = self
            .outcomes
            .entry(r.release)
            .or_default()
            .insert(device, (r.sequence, r.outcome.clone(), r.sent_at));
        if previous.is_some() { Recorded::Updated } else { Recorded::New }
    }

    /// True when a report at least as new as `report` from its device about its release
    /// was recorded: a duplicate or a replay, to be ignored (not held against whoever
    /// passed it on: an honest re-announcement crosses paths with its older copies).
    pub fn is_stale(&self, report: &VerifiedReport) -> bool {
        let r = report.report();
        self.outcomes
            .get(&r.release)
            .and_then(|per_device| per_device.get(&report.device()))
            .is_some_and(|(seq, ..)| *seq >= r.sequence)
    }

    /// Every device heard of, by id.
    pub fn devices(&self) -> impl Iterator<Item = &DeviceEntry> {
        self.devices.values()
    }

    /// The rollout report of `release` under its `policy`.
    pub fn rollout(
        &self,
        release: ReleaseId,
        kind: UpdateKind,
        created_at: Millis,
        policy: &RolloutPolicy,
    ) -> RolloutReport {
        let waves_n =
            if policy.waves.is_empty() || policy.skip_waves.contains(&kind) { 1 } else { policy.waves.len() };
        let mut waves: Vec<WaveReport> = (0..waves_n)
            .map(|i| {
                let (percent, after_s) = policy.waves.get(i).map_or((100.0, 0), |w| (w.percent, w.after_s));
                WaveReport {
                    wave: i,
                    percent: if waves_n == 1 { 100.0 } else { percent },
                    opens_at: created_at.saturating_add(after_s.saturating_mul(1000)),
                    committed: 0,
                    failed: 0,
                    rolled_back: 0,
                    revoked: 0,
                    first_report_at: None,
                    last_report_at: None,
                }
            })
            .collect();
        let mut outcomes = BTreeMap::new();
        let mut failure_reasons = BTreeMap::new();
        for (device, (_, outcome, at)) in self.outcomes.get(&release).into_iter().flatten() {
            let wave = policy.wave_of(kind, position(release, *device)).unwrap_or(0);
            let w = &mut waves[wave.min(waves_n - 1)];
            let key = match outcome {
                Outcome::Committed => {
                    w.committed += 1;
                    "committed"
                }
                Outcome::Failed { reason } => {
                    w.failed += 1;
                    *failure_reasons.entry(reason.clone()).or_insert(0) += 1;
                    "failed"
                }
                Outcome::RolledBack { revoked: true, .. } => {
                    w.revoked += 1;
                    "revoked"
                }
                Outcome::RolledBack { reason, .. } => {
                    w.rolled_back += 1;
                    *failure_reasons.entry(reason.clone()).or_insert(0) += 1;
                    "rolled_back"
                }
            };
            *outcomes.entry(key.to_owned()).or_insert(0) += 1;
            w.first_report_at = Some(w.first_report_at.map_or(*at, |t| t.min(*at)));
            w.last_report_at = Some(w.last_report_at.map_or(*at, |t| t.max(*at)));
        }
        RolloutReport { release, outcomes, waves, failure_reasons }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SecretKey;
    use crate::enrolment::{Enrolment, SignedEnrolment};
    use crate::report::{Report, SignedReport};
    use crate::rollout::Wave;

    fn report(n: u8, release: ReleaseId, outcome: Outcome, sequence: u64) -> VerifiedReport {
        let key = SecretKey::from_seed([n; 32]);
        let r = Report {
            device_key: key.public().to_bytes(),
            site: format!("site{}", n % 2),
            class: "gw".into(),
            release,
            outcome,
            active: Some(release),
            sequence,
            sent_at: 1000 + u64::from(n),
        };
        let publisher = SecretKey::from_seed([0xee; 32]);
        let e = Enrolment {
            device_key: r.device_key,
            site: r.site.clone(),
            class: r.class.clone(),
            issued_at: 1,
        };
        let enrolment = Some(SignedEnrolment::sign(e, &publisher));
        SignedReport::sign(r, &key, enrolment).verify(&crate::TrustRoot::single(publisher.public())).unwrap()
    }

    #[test]
    fn newest_report_per_device_wins() {
        let r = ReleaseId::from_bytes([1; 32]);
        let mut fleet = FleetView::default();
        assert_eq!(fleet.record(&report(1, r, Outcome::Committed, 5)), Recorded::New);
        assert_eq!(fleet.record(&report(1, r, Outcome::Committed, 4)), Recorded::Stale);
        let failed = Outcome::RolledBack { reason: "health".into(), revoked: false };
        assert_eq!(fleet.record(&report(1, r, failed.clone(), 6)), Recorded::Updated);
        assert_eq!(fleet.devices().count(), 1);
        assert_eq!(fleet.devices().next().unwrap().outcome, failed);
    }

    /// Reports are news per device and release: a device's report about an older release
    /// that arrives after one about a newer release still counts for the older release,
    /// but the device's entry keeps its highest sequence. Duplicates are stale.
    #[test]
    fn an_older_releases_report_arriving_late_counts_for_that_release() {
        let (v1, v2) = (ReleaseId::from_bytes([1; 32]), ReleaseId::from_bytes([2; 32]));
        let failed = Outcome::RolledBack { reason: "health".into(), revoked: false };
        let mut fleet = FleetView::default();
        // Re-announced together: v1's report (sequence 7), then v2's (8); v2's came first.
        assert_eq!(fleet.record(&report(1, v2, failed.clone(), 8)), Recorded::New);
        let late = report(1, v1, Outcome::Committed, 7);
        assert!(!fleet.is_stale(&late));
        assert_eq!(fleet.record(&late), Recorded::New);
        let entry = fleet.devices().next().unwrap();
        assert_eq!((entry.release, entry.sequence), (v2, 8), "the entry follows the highest sequence");
        assert_eq!(
            fleet.rollout(v1, UpdateKind::Firmware, 0, &RolloutPolicy::default()).outcomes["committed"],
            1
        );
        // The same report again, or an older one about v1, is stale; a newer one updates.
        assert!(fleet.is_stale(&late));
        assert_eq!(fleet.record(&late), Recorded::Stale);
        assert_eq!(fleet.record(&report(1, v1, Outcome::Committed, 3)), Recorded::Stale);
        assert_eq!(fleet.record(&report(1, v1, Outcome::Committed, 9)), Recorded::Updated);
        assert_eq!(fleet.devices().next().unwrap().release, v1);
    }

    #[test]
    fn rollout_report_counts_per_wave_and_reason() {
        let r = ReleaseId::from_bytes([2; 32]);
        let policy = RolloutPolicy {
            waves: vec![
                Wave { percent: 50.0, after_s: 0, require_success: None, require_reports: 0 },
                Wave { percent: 100.0, after_s: 10, require_success: None, require_reports: 0 },
            ],
            ..Default::default()
        };
        let mut fleet = FleetView::default();
        for n in 0..40u8 {
            let outcome = match n % 8 {
                0 => Outcome::Failed { reason: "disk full".into() },
                1 => Outcome::RolledBack { reason: "health check exited with 1".into(), revoked: false },
                2 => Outcome::RolledBack { reason: "revoked".into(), revoked: true },
                _ => Outcome::Committed,
            };
            let _ = fleet.record(&report(n, r, outcome, 1));
        }
        let rep = fleet.rollout(r, UpdateKind::Firmware, 0, &policy);
        assert_eq!(rep.outcomes["committed"], 25);
        assert_eq!(rep.outcomes["failed"], 5);
        assert_eq!(rep.outcomes["rolled_back"], 5);
        assert_eq!(rep.outcomes["revoked"], 5);
        assert_eq!(rep.failure_reasons["disk full"], 5);
        assert_eq!(rep.failure_reasons["health check exited with 1"], 5);
        assert!(!rep.failure_reasons.contains_key("revoked"), "a revoke is not a failure: {rep:?}");
        assert_eq!(rep.waves.len(), 2);
        assert_eq!(rep.waves[1].opens_at, 10_000);
        // Every state the report knows is counted in some wave, each device once.
        let sum = |f: fn(&WaveReport) -> usize| rep.waves.iter().map(f).sum::<usize>();
        assert_eq!(sum(|w| w.committed), 25);
        assert_eq!(sum(|w| w.failed), 5);
        assert_eq!(sum(|w| w.rolled_back), 5);
        assert_eq!(sum(|w| w.revoked), 5);
        for w in &rep.waves {
            let reported = w.committed + w.failed + w.rolled_back + w.revoked;
            assert!(reported > 0, "both waves got devices: {rep:?}");
            assert!(w.first_report_at.is_some() && w.last_report_at.is_some(), "{rep:?}");
        }
    }
}
