//! Fleet feedback from the mesh and the origin: signed reports and directives, from the
//! bytes to the device.
//!
//! [`Intake`] owns what the node knows of the fleet beyond its own device: the fleet
//! view behind `/fleet` and `/report`, the per-device report budget, and the reports
//! held for releases of this class not heard of yet. A report or directive is verified
//! and checked here, then handed to the device machine, which counts it toward its gate
//! or applies it (refusing replays itself). Why anything is refused is a
//! [`Refusal`](crate::feedback::Refusal); nothing refused is forwarded.

use std::collections::BTreeMap;

use otamesh_core::directive::SignedDirective;
use otamesh_core::fleet::FleetView;
use otamesh_core::gate::Recorded;
use otamesh_core::report::{SignedReport, VerifiedReport};
use otamesh_core::{DeviceId, Millis, ReleaseId, TrustRoot};
use tokio::sync::watch;

use crate::api::{Fleet, FleetDevice};
use crate::device::{Device, NotTaken};
use crate::feedback::{Refusal, ReportBudget};

/// Reports held for releases not heard of yet, at most (one per device).
const MAX_HELD_REPORTS: usize = 10_000;

/// The fleet as heard, and the intake of reports and directives. See the module docs.
#[derive(Debug)]
pub struct Intake {
    class: String,
    fleet: FleetView,
    fleet_tx: watch::Sender<Fleet>,
    budget: ReportBudget,
    /// Newest report per device for releases of this class not heard of yet; counted
    /// when the release arrives.
    held: BTreeMap<DeviceId, VerifiedReport>,
    /// Reports changed the fleet view since `/fleet` was last rebuilt.
    dirty: bool,
}

impl Intake {
    /// An empty fleet view for a device of `class`, published on `fleet_tx`.
    pub fn new(class: impl Into<String>, fleet_tx: watch::Sender<Fleet>) -> Self {
        Self {
            class: class.into(),
            fleet: FleetView::default(),
            fleet_tx,
            budget: ReportBudget::default(),
            held: BTreeMap::new(),
            dirty: false,
        }
    }

    /// A report from the mesh: verified (signature, enrolment), not a replay, within the
    /// sender's budget; then counted in the fleet view and the device's gate tally, or
    /// held until its release is heard of.
    pub fn report(
        &mut self,
        now: Millis,
        data: &[u8],
        trust: &TrustRoot,
        device: &mut Device,
    ) -> Result<(), Refusal> {
        let signed = SignedReport::from_bytes(data).map_err(|_| Refusal::Malformed)?;
        let report = signed.verify(trust).map_err(|e| Refusal::of_report(&e))?;
        let r = report.report();
        if self.fleet.is_stale(&report)
            || self
                .held
                .get(&report.device())
                .is_some_and(|h| h.report().release == r.release && h.report().sequence >= r.sequence)
        {
            return Err(Refusal::Replayed);
        }
        if !self.budget.spend(report.device(), now) {
            return Err(Refusal::Flood);
        }
        if device.manifest(r.release).is_none() {
            if r.class != self.class {
                // A release of another class: no gate here judges it, but the device
                // belongs in the inventory.
                self.dirty |= self.fleet.record(&report) != Recorded::Stale;
                return Ok(());
            }
            if self.held.len() < MAX_HELD_REPORTS || self.held.contains_key(&report.device()) {
                self.held.insert(report.device(), report);
            }
            return Err(Refusal::UnknownRelease);
        }
        self.take(now, report, device);
        Ok(())
    }

    /// Counts a verified report (also this device's own) in the fleet view and the
    /// device's gate tally.
    pub fn take(&mut self, now: Millis, report: VerifiedReport, device: &mut Device) {
        if self.fleet.record(&report) != Recorded::Stale {
            device.report(now, &report);
            // Rebuilt at the next heartbeat: a wave's burst of reports costs one rebuild
            // of the fleet view and its rollout reports a second, not one per report.
            self.dirty = true;
        }
    }

    /// `release` was heard of: the reports held for it are counted now.
    pub fn release_heard(&mut self, now: Millis, release: ReleaseId, device: &mut Device) {
        let held: Vec<DeviceId> =
            self.held.iter().filter(|(_, r)| r.report().release == release).map(|(d, _)| *d).collect();
        for reporter in held {
            if let Some(report) = self.held.remove(&reporter) {
                self.take(now, report, device);
            }
        }
        self.publish(device);
    }

    /// A directive from the mesh or the origin: verified, then applied by the device,
    /// which refuses a replay (an older one than already applied for its release) before
    /// anything is written. Returns the directive applied.
    pub fn directive(
        &mut self,
        now: Millis,
        data: &[u8],
        trust: &TrustRoot,
        device: &mut Device,
    ) -> Result<SignedDirective, Refusal> {
        let signed = SignedDirective::from_bytes(data).map_err(|_| Refusal::Malformed)?;
        let verified = trust.verify_directive(signed, now).map_err(|_| Refusal::Forged)?;
        match device.directive(now, &verified) {
            Ok(()) => Ok(verified.signed().clone()),
            Err(NotTaken::Replayed(_)) => Err(Refusal::Replayed),
            Err(NotTaken::Busy(_)) => Err(Refusal::Busy),
        }
    }

    /// Rebuilds `/fleet` and `/report` if reports changed them.
    pub fn publish_if_changed(&mut self, device: &Device) {
        if self.dirty {
            self.publish(device);
        }
    }

    /// Rebuilds `/fleet` and the rollout report of every release the device knows.
    pub fn publish(&mut self, device: &Device) {
        self.dirty = false;
        let devices = self
            .fleet
            .devices()
            .map(|e| FleetDevice {
                device_id: e.device.to_string(),
                site: e.site.clone(),
                class: e.class.clone(),
                active: e.active.map(|r| r.to_string()),
                release: e.release.to_string(),
                state: e.outcome.kind(),
                last_seen: e.last_seen,
            })
            .collect();
        let reports = device
            .manifests()
            .iter()
            .map(|(id, v)| {
                let m = v.manifest();
                (*id, self.fleet.rollout(*id, m.kind, m.created_at, &m.rollout))
            })
            .collect();
        self.fleet_tx.send_replace(Fleet { devices, reports });
    }
}
