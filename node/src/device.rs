//! The device as the node runs it: the core device machine ([`otamesh_core::device`])
//! inside the event loop, its disk side effects on the [`crate::disk`] worker.
//!
//! The event loop hands this verified manifests, directives and reports, site news,
//! fetch completions and the worker's results; each becomes one input of the machine,
//! and the machine's outputs are translated here and nowhere else: state, audit rows,
//! installs and hooks go to the worker in order; fetches and signed reports come back
//! to the loop as [`Event`]s. The machine makes every decision; this only executes.
//!
//! **Backpressure:** effects go to the worker over a bounded channel. When it is full
//! (a hook runs for minutes), effects wait here in order and are handed over as room
//! frees; nothing is dropped. Inputs that would only repeat what is known are refused
//! before they reach the machine (a replayed directive, a stale report), so the backlog
//! grows only with genuine, signed news.

use std::collections::{BTreeMap, VecDeque};
use std::sync::mpsc::{SyncSender, TrySendError};

use otamesh_core::device::{Audit, Device as Machine, Heard, Output, Release};
use otamesh_core::directive::{Refused, VerifiedDirective};
use otamesh_core::enrolment::SignedEnrolment;
use otamesh_core::gate::Verdict;
use otamesh_core::lifecycle::State;
use otamesh_core::report::{MAX_TEXT, Outcome, Report, SignedReport, VerifiedReport};
use otamesh_core::{DeviceId, Millis, ReleaseId, SecretKey, VerifiedManifest};

use crate::db::{ReleaseRecord, SlotContent};
use crate::disk::{Done, Effect, Restored, SlotContents};
use crate::hooks::Hook;

/// How a device is set up.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// Its hardware class; manifests for other classes are ignored.
    pub class: String,
    /// Its site.
    pub site: String,
    /// Its local time's offset from UTC in minutes (maintenance windows).
    pub utc_offset_min: i16,
    /// Runs after the payload is assembled into the inactive slot.
    pub install_hook: Option<Hook>,
    /// Runs after the switch; exit 0 commits, anything else rolls back.
    pub health_check: Option<Hook>,
    /// The publisher's enrolment of this device, attached to its reports.
    pub enrolment: Option<SignedEnrolment>,
}

/// What the device asks of the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Event {
    /// Bring this release's chunks into the local store, then call [`Device::fetched`].
    Fetch(ReleaseId),
    /// Stop fetching this release.
    StopFetch(ReleaseId),
    /// Gossip this signed status report.
    Report(Box<SignedReport>),
}

/// What `/status` shows of the device: when it changes, the status is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    /// The release in progress (or the last one) and its state.
    pub current: Option<(ReleaseId, State)>,
    /// The slot the device runs.
    pub active: Option<SlotContent>,
    /// The other slot, kept for a rollback (hidden while a release is written into it).
    pub previous: Option<SlotContent>,
}

/// Effects waiting for room in the worker's channel, at most; past this the device
/// refuses new releases and directives (counted by the caller) until the worker
/// catches up.
const MAX_BACKLOG: usize = 4096;

/// Why an input was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NotTaken {
    /// A directive at or below the newest applied for its release.
    #[error(transparent)]
    Replayed(#[from] Refused),
    /// The worker is far behind; the input is refused, not queued without bound.
    #[error("the device's disk worker is {0} effects behind; input refused")]
    Busy(usize),
}

/// The device: the machine, what it heard, and the effects on their way to the disk.
/// See the module docs.
#[derive(Debug)]
pub struct Device {
    machine: Machine,
    heard: Heard,
    manifests: BTreeMap<ReleaseId, VerifiedManifest>,
    config: DeviceConfig,
    key: SecretKey,
    worker: SyncSender<Effect>,
    backlog: VecDeque<Effect>,
    events: VecDeque<Event>,
    slots: SlotContents,
    report_seq: u64,
    /// Every output of the machine, when asked to keep them ([`Device::keep_outputs`]).
    kept: Option<Vec<Output>>,
}

impl Device {
    /// Rebuilds the device from what the disk held (`restored`) and the manifests saved
    /// before (`saved`, verified again by the caller). Nothing runs until
    /// [`Device::resume`].
    pub fn new(
        now: Millis,
        config: DeviceConfig,
        key: SecretKey,
        restored: Restored,
        saved: Vec<VerifiedManifest>,
        worker: SyncSender<Effect>,
    ) -> Self {
        let Restored { slots, tried, last, directives, handled } = restored;
        let mut heard = Heard::new(config.class.clone(), directives);
        let mut manifests = BTreeMap::new();
        for manifest in saved {
            if heard.add_release(Release::of(manifest.id(), manifest.manifest())).is_ok() {
                manifests.insert(manifest.id(), manifest);
            }
        }
        let id = DeviceId::of_public_key(&key.public().to_bytes());
        let mut machine = Machine::restore(now, &heard, id, config.utc_offset_min, slots.view(), tried, last);
        machine.handled_before(handled);
        Self {
            machine,
            heard,
            manifests,
            config,
            key,
            worker,
            backlog: VecDeque::new(),
            events: VecDeque::new(),
            slots,
            report_seq: now,
            kept: None,
        }
    }

    /// Starts the rebuilt device: the pending side effects of a crash first, then every
    /// known release is considered again.
    pub fn resume(&mut self, now: Millis) {
        self.drain(now);
        let known: Vec<ReleaseId> = self.manifests.keys().copied().collect();
        for release in known {
            self.machine.handle_release(now, &self.heard, release);
            self.drain(now);
        }
    }

    /// What the device heard (releases, directives, tallies).
    pub fn heard(&self) -> &Heard {
        &self.heard
    }

    /// The verified manifest of a known release.
    pub fn manifest(&self, release: ReleaseId) -> Option<&VerifiedManifest> {
        self.manifests.get(&release)
    }

    /// Every known manifest of this device's class.
    pub fn manifests(&self) -> &BTreeMap<ReleaseId, VerifiedManifest> {
        &self.manifests
    }

    /// The release in progress (or the last one) and its state.
    pub fn current(&self) -> Option<(ReleaseId, &State)> {
        self.machine.current()
    }

    /// What the slots hold, as the worker last reported; the other slot is not shown
    /// while a release is staged or being written into it.
    pub fn slots(&self) -> (Option<SlotContent>, Option<SlotContent>) {
        let writing = self.current().is_some_and(|(_, s)| matches!(s, State::Staged | State::Installing));
        (self.slots.active.clone(), if writing { None } else { self.slots.inactive.clone() })
    }

    /// What `/status` shows of the device.
    pub fn shown(&self) -> Shown {
        let (active, previous) = self.slots();
        Shown { current: self.current().map(|(r, s)| (r, s.clone())), active, previous }
    }

    /// Effects waiting for the worker.
    pub fn backlog(&self) -> usize {
        self.backlog.len()
    }

    fn busy(&self) -> Result<(), NotTaken> {
        if self.backlog.len() >= MAX_BACKLOG { Err(NotTaken::Busy(self.backlog.len())) } else { Ok(()) }
    }

    /// A verified manifest of this device's class. `Ok(false)`: already known.
    pub fn offer(&mut self, now: Millis, manifest: VerifiedManifest) -> Result<bool, NotTaken> {
        let id = manifest.id();
        if self.manifests.contains_key(&id) {
            return Ok(false);
        }
        self.busy()?;
        if self.heard.add_release(Release::of(id, manifest.manifest())).is_err() {
            // Another class: no business of this device.
            return Ok(false);
        }
        self.manifests.insert(id, manifest);
        self.machine.handle_release(now, &self.heard, id);
        self.drain(now);
        Ok(true)
    }

    /// A verified directive: applied unless it is a replay (refused here, before
    /// anything is persisted or audited).
    pub fn directive(&mut self, now: Millis, directive: &VerifiedDirective) -> Result<(), NotTaken> {
        self.busy()?;
        if let Err(refused) = self.heard.apply_directive(directive) {
            self.machine.handle_replayed(directive, refused.clone());
            self.drain(now);
            return Err(refused.into());
        }
        self.machine.handle_directive(now, &self.heard, directive);
        self.drain(now);
        Ok(())
    }

    /// A verified report from any device, counted toward its release's gate. False:
    /// the release is not known here (the caller may hold the report until it is).
    pub fn report(&mut self, now: Millis, report: &VerifiedReport) -> bool {
        let r = report.report();
        self.verdict(now, report.device(), r.release, r.sequence, r.outcome.verdict())
    }

    /// What a verified report says, counted toward `release`'s gate (see
    /// [`Device::report`]; the simulator's traces carry reports in this form).
    pub fn verdict(
        &mut self,
        now: Millis,
        reporter: DeviceId,
        release: ReleaseId,
        sequence: u64,
        verdict: Verdict,
    ) -> bool {
        if self.heard.record_report(reporter, release, sequence, verdict).is_none() {
            return false;
        }
        self.machine.handle_tally(now, &self.heard, release);
        self.drain(now);
        true
    }

    /// How many other members of the site hold an install slot.
    pub fn site(&mut self, now: Millis, others: u32) {
        self.machine.handle_site(now, &self.heard, others);
        self.drain(now);
    }

    /// Every chunk of `release` is in the local store.
    pub fn fetched(&mut self, now: Millis, release: ReleaseId) {
        self.machine.handle_fetched(now, &self.heard, release);
        self.drain(now);
    }

    /// A result from the disk worker.
    pub fn done(&mut self, now: Millis, done: Done) {
        match done {
            Done::Installed(r, result) => self.machine.handle_installed(now, &self.heard, r, result),
            Done::InstallDeferred(r, why) => {
                tracing::warn!(release = %r, reason = %why, "install deferred: the device could not write it; retried later");
                self.machine.handle_install_deferred(now, &self.heard, r, why)
            }
            Done::Activated(r) => self.machine.handle_activated(now, &self.heard, r),
            Done::Health(r, result) => self.machine.handle_health(now, &self.heard, r, result),
            Done::Slots(contents) => self.slots = contents,
        }
        self.drain(now);
    }

    /// When the device next wants [`Device::timeout`].
    pub fn poll_timeout(&self) -> Option<Millis> {
        self.machine.poll_timeout()
    }

    /// Re-evaluates at `now`.
    pub fn timeout(&mut self, now: Millis) {
        if self.poll_timeout().is_some_and(|t| t <= now) {
            self.machine.handle_timeout(now, &self.heard);
            self.drain(now);
        }
    }

    /// The next event for the mesh.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Hands waiting effects to the worker while it has room. False: the worker is gone.
    pub fn flush(&mut self) -> bool {
        while let Some(effect) = self.backlog.pop_front() {
            match self.worker.try_send(effect) {
                Ok(()) => {}
                Err(TrySendError::Full(effect)) => {
                    self.backlog.push_front(effect);
                    return true;
                }
                Err(TrySendError::Disconnected(_)) => return false,
            }
        }
        true
    }

    /// Keeps a copy of every output the machine gives from now on, for
    /// [`Device::take_outputs`] (conformance tests compare them with the simulator's).
    pub fn keep_outputs(&mut self) {
        self.kept.get_or_insert_with(Vec::new);
    }

    /// The outputs kept since the last call.
    pub fn take_outputs(&mut self) -> Vec<Output> {
        self.kept.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Translates every output of the machine (the drain rule).
    fn drain(&mut self, now: Millis) {
        while let Some(output) = self.machine.poll_output() {
            if let Some(kept) = &mut self.kept {
                kept.push(output.clone());
            }
            self.execute(now, output);
        }
        self.flush();
    }

    fn execute(&mut self, now: Millis, output: Output) {
        let manifest =
            |release: ReleaseId| self.manifests.get(&release).map(|m| Box::new(m.manifest().clone()));
        let effect = match output {
            Output::Persist { release, state } => {
                let Some(m) = self.manifests.get(&release).map(|m| m.manifest()) else { return };
                Effect::Persist(ReleaseRecord {
                    release,
                    sequence: m.sequence,
                    version: m.version.clone(),
                    state,
                    updated_at: now,
                })
            }
            Output::Directive { release, order, sequence, standing } => {
                tracing::info!(%release, ?order, sequence, "directive applied");
                Effect::Directive { release, standing, detail: format!("{order:?} (sequence {sequence})") }
            }
            Output::Audit(audit) => self.audit(audit),
            Output::Fetch(release) => return self.events.push_back(Event::Fetch(release)),
            Output::StopFetch(release) => return self.events.push_back(Event::StopFetch(release)),
            Output::Install(release) => match manifest(release) {
                Some(m) => Effect::Install(release, m),
                // Invariant: the machine only installs releases offered with a manifest.
                None => return,
            },
            Output::DiscardInactive => Effect::DiscardInactive,
            Output::Activate(release) => Effect::Activate(release),
            Output::RunHealthCheck(release) => match manifest(release) {
                Some(m) => Effect::RunHealthCheck(release, m),
                None => return,
            },
            // The state row (committed) is its record; the other slot stays for a rollback.
            Output::Commit(_) => return,
            Output::Rollback(release) => Effect::Rollback(release),
            Output::Report { release, outcome } => return self.sign_report(now, release, outcome),
        };
        self.backlog.push_back(effect);
    }

    fn audit(&self, audit: Audit) -> Effect {
        let describe = |release: ReleaseId| match self.manifests.get(&release).map(|m| m.manifest()) {
            Some(m) => format!("{} (sequence {})", m.version, m.sequence),
            None => release.to_string(),
        };
        match audit {
            Audit::Admitted { release, .. } => {
                let bytes = self.manifests.get(&release).map_or(0, |m| m.manifest().payload.size);
                Effect::Audit {
                    event: "admitted",
                    release,
                    detail: format!("admitted {} ({bytes} bytes)", describe(release)),
                }
            }
            Audit::Refused { release, refusal } => {
                tracing::info!(%release, reason = %refusal, "release refused");
                Effect::Audit {
                    event: "refused",
                    release,
                    detail: format!("refused {}: {refusal}", describe(release)),
                }
            }
            Audit::DirectiveRefused { release, sequence, refused } => Effect::Audit {
                event: "refused",
                release,
                detail: format!("directive: sequence {sequence}: {refused}"),
            },
            Audit::InstallDeferred { release, why } => Effect::Audit {
                event: "deferred",
                release,
                detail: format!("install deferred, retried later: {why}"),
            },
            Audit::Superseded { release, by } => {
                Effect::Audit { event: "superseded", release, detail: format!("by {by}") }
            }
            Audit::KeepsRunning { release, until } => Effect::Audit {
                event: "revoke",
                release,
                detail: format!("keeps running it: {until} is not in the other slot and is installed next"),
            },
        }
    }

    /// This device's own `report` signed again with a new sequence, above every one it
    /// signed before, so that it is news to every node ([`otamesh_core::reannounce`]);
    /// nothing else in it changes.
    pub fn resign(&mut self, now: Millis, mut report: Report) -> SignedReport {
        self.report_seq = self.report_seq.saturating_add(1).max(now);
        report.sequence = self.report_seq;
        SignedReport::sign(report, &self.key, self.config.enrolment.clone())
    }

    fn sign_report(&mut self, now: Millis, release: ReleaseId, outcome: Outcome) {
        self.report_seq = self.report_seq.saturating_add(1).max(now);
        let report = Report {
            device_key: self.key.public().to_bytes(),
            site: self.config.site.clone(),
            class: self.config.class.clone(),
            release,
            outcome: fit_reason(outcome),
            active: self.machine.slots().active.map(|a| a.release),
            sequence: self.report_seq,
            sent_at: now,
        };
        let signed = SignedReport::sign(report, &self.key, self.config.enrolment.clone());
        self.events.push_back(Event::Report(Box::new(signed)));
    }
}

/// Cuts a failure reason to what a report may carry ([`MAX_TEXT`] bytes, on a character
/// boundary), so a long hook command or stderr never makes the report invalid and blinds
/// the health gate.
fn fit_reason(outcome: Outcome) -> Outcome {
    let fit = |mut reason: String| {
        if reason.len() > MAX_TEXT {
            let mut end = MAX_TEXT - 3;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
            reason.push_str("...");
        }
        reason
    };
    match outcome {
        Outcome::Failed { reason } => Outcome::Failed { reason: fit(reason) },
        Outcome::RolledBack { reason, revoked } => Outcome::RolledBack { reason: fit(reason), revoked },
        committed => committed,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::mpsc::{Receiver, sync_channel};
    use std::time::Duration;

    use otamesh_core::directive::{DEFAULT_LIFETIME, Directive, Order, SignedDirective};
    use otamesh_core::lifecycle::Reason;
    use otamesh_core::rollout::{RolloutPolicy, Wave};

    use super::*;
    use crate::db;
    use crate::disk::{Disk, Hooks};
    use crate::store::Store;
    use crate::testkit::{self, noise, put_chunks, sign};

    const NOW: Millis = 10_000;

    /// A device and its disk in a scratch directory, driven the way the node drives
    /// them, except that the disk's effects run inline when the test settles.
    struct Rig {
        device: Device,
        disk: Disk,
        effects: Receiver<Effect>,
        store: Store,
        reports: Vec<SignedReport>,
        /// What the device asked of the mesh, in order (reports not included).
        asked: Vec<Event>,
    }

    fn key() -> SecretKey {
        SecretKey::from_seed([9; 32])
    }

    fn config(health: Option<&str>, install: Option<&str>) -> DeviceConfig {
        let hook = |c: &str| Hook { command: c.to_owned(), timeout: Duration::from_secs(5) };
        DeviceConfig {
            class: "gw".into(),
            site: "s1".into(),
            utc_offset_min: 0,
            install_hook: install.map(hook),
            health_check: health.map(hook),
            enrolment: Some(testkit::enrol(&key(), "s1")),
        }
    }

    impl Rig {
        fn open(dir: &Path, config: DeviceConfig, saved: Vec<VerifiedManifest>) -> Self {
            let store = Store::create(dir.join("store")).unwrap();
            let hooks =
                Hooks { install: config.install_hook.clone(), health_check: config.health_check.clone() };
            let (disk, restored) = Disk::open(dir, store.clone(), hooks, NOW).unwrap();
            let (tx, effects) = sync_channel(4);
            let mut device = Device::new(NOW, config, key(), restored, saved, tx);
            device.resume(NOW);
            let mut rig = Self { device, disk, effects, store, reports: Vec::new(), asked: Vec::new() };
            rig.settle(NOW);
            rig
        }

        /// Runs the disk's effects and the mesh's part (a fetch whose chunks are all in
        /// the store completes) until nothing is left.
        fn settle(&mut self, now: Millis) {
            loop {
                let mut moved = false;
                while let Some(event) = self.device.poll_event() {
                    moved = true;
                    match event {
                        Event::Report(r) => self.reports.push(*r),
                        Event::Fetch(release) => {
                            self.asked.push(Event::Fetch(release));
                            let m = self.device.manifest(release).unwrap().manifest().clone();
                            if m.payload.chunks.iter().all(|c| self.store.has_chunk(c.id)) {
                                self.device.fetched(now, release);
                            }
                        }
                        other => self.asked.push(other),
                    }
                }
                self.device.flush();
                while let Ok(effect) = self.effects.try_recv() {
                    moved = true;
                    if let Some(done) = self.disk.execute(now, effect).unwrap() {
                        self.device.done(now, done);
                    }
                    self.device.done(now, Done::Slots(self.disk.contents().unwrap()));
                }
                if !moved {
                    return;
                }
            }
        }

        fn offer(&mut self, now: Millis, m: &VerifiedManifest) {
            self.device.offer(now, m.clone()).unwrap();
            self.settle(now);
        }

        fn state(&self) -> State {
            self.device.current().map_or(State::Idle, |(_, s)| s.clone())
        }

        fn active(&self) -> Option<ReleaseId> {
            self.device.slots().0.map(|s| s.release_id)
        }

        fn outcome(&self) -> Option<Outcome> {
            self.reports.last().map(|r| r.report.outcome.clone())
        }

        fn audit(&self) -> Vec<db::AuditRow> {
            self.disk.db().audit_rows().unwrap()
        }
    }

    /// A release whose chunks are already in the device's store.
    fn local_release(store: &Store, seed: u64, sequence: u64) -> VerifiedManifest {
        let data = noise(seed, 150_000);
        put_chunks(store, &data);
        sign(testkit::manifest(&data, sequence, RolloutPolicy::default()))
    }

    fn directive(release: ReleaseId, order: Order, sequence: u64) -> VerifiedDirective {
        let d = Directive { release, order, sequence, issued_at: NOW, expires_at: NOW + DEFAULT_LIFETIME };
        testkit::trust().verify_directive(SignedDirective::sign(d, &testkit::publisher()), NOW).unwrap()
    }

    fn store_of(dir: &Path) -> Store {
        Store::create(dir.join("store")).unwrap()
    }

    #[test]
    fn release_commits_and_reports_success() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Rig::open(dir.path(), config(Some("test -f \"$1/payload\""), Some("true")), vec![]);
        let v1 = local_release(&d.store, 1, 1);
        d.offer(NOW, &v1);
        assert_eq!(d.state(), State::Committed);
        assert_eq!(d.active(), Some(v1.id()));
        assert_eq!(d.outcome(), Some(Outcome::Committed));
        let rows = d.audit();
        db::verify_chain(&rows).unwrap();
        assert!(rows.iter().any(|r| r.detail.starts_with("committed")));
    }

    #[test]
    fn failed_health_check_rolls_back_and_is_not_retried() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Rig::open(dir.path(), config(Some("test \"$OTAMESH_SEQUENCE\" = 1"), None), vec![]);
        let v1 = local_release(&d.store, 1, 1);
        let v2 = local_release(&d.store, 2, 2);
        d.offer(NOW, &v1);
        d.offer(NOW + 1, &v2);
        assert!(matches!(d.state(), State::RolledBack(Reason::HealthCheckFailed(_))));
        assert_eq!(d.active(), Some(v1.id()), "back on v1");
        assert!(matches!(d.outcome(), Some(Outcome::RolledBack { revoked: false, .. })));
        // Offered again (by a peer, after a restart): refused, not retried.
        let reports = d.reports.len();
        d.device.timeout(NOW + 2);
        d.settle(NOW + 2);
        assert_eq!(d.reports.len(), reports);
        assert_eq!(d.active(), Some(v1.id()));
    }

    #[test]
    fn older_sequence_is_refused_and_audited() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Rig::open(dir.path(), config(None, None), vec![]);
        let v2 = local_release(&d.store, 2, 2);
        let v1 = local_release(&d.store, 1, 1);
        d.offer(NOW, &v2);
        d.offer(NOW + 1, &v1);
        let rows = d.audit();
        let last = rows.last().unwrap();
        assert_eq!(last.event, "refused");
        assert_eq!(last.release.as_deref(), Some(v1.id().to_hex().as_str()));
        assert!(last.detail.contains("anti-rollback"), "{}", last.detail);
    }

    #[test]
    fn missing_chunks_are_asked_of_the_mesh() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Rig::open(dir.path(), config(None, None), vec![]);
        let data = noise(5, 150_000);
        let v1 = sign(testkit::manifest(&data, 1, RolloutPolicy::default()));
        d.offer(NOW, &v1);
        assert_eq!(d.asked, vec![Event::Fetch(v1.id())]);
        assert_eq!(d.state(), State::Fetching);
        put_chunks(&d.store, &data);
        d.device.fetched(NOW + 5, v1.id());
        d.settle(NOW + 5);
        assert_eq!(d.state(), State::Committed);
    }

    #[test]
    fn crash_during_install_resumes_with_the_active_slot_intact() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_of(dir.path());
        let (v1, v2) = (local_release(&store, 1, 1), local_release(&store, 2, 2));
        {
            let mut d = Rig::open(dir.path(), config(None, None), vec![]);
            d.offer(NOW, &v1);
            // What a SIGKILL in the middle of assembling v2 leaves behind.
            let mut db = db::Db::open(&dir.path().join("state.db")).unwrap();
            let record = ReleaseRecord {
                release: v2.id(),
                sequence: 2,
                version: "1.2".into(),
                state: State::Installing,
                updated_at: NOW + 1,
            };
            db.transition(NOW + 1, &record, "").unwrap();
            std::fs::write(dir.path().join("slots/a/payload"), b"half written").unwrap();
        }
        let v1_payload = dir.path().join("slots/b/payload");
        let active_before = std::fs::read(&v1_payload).unwrap();
        let d = Rig::open(dir.path(), config(None, None), vec![v1.clone(), v2.clone()]);
        assert_eq!(d.state(), State::Committed);
        let (active, previous) = d.device.slots();
        assert_eq!(active.unwrap().release_id, v2.id());
        assert_eq!(previous.unwrap().release_id, v1.id());
        assert_eq!(std::fs::read(&v1_payload).unwrap(), active_before, "v1's slot untouched");
        db::verify_chain(&d.audit()).unwrap();
    }

    #[test]
    fn crash_during_health_check_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_of(dir.path());
        let (v1, v2) = (local_release(&store, 1, 1), local_release(&store, 2, 2));
        {
            let mut d = Rig::open(dir.path(), config(None, None), vec![]);
            d.offer(NOW, &v1);
            d.offer(NOW + 1, &v2);
            let mut db = db::Db::open(&dir.path().join("state.db")).unwrap();
            let record = ReleaseRecord {
                release: v2.id(),
                sequence: 2,
                version: "1.2".into(),
                state: State::Checking,
                updated_at: NOW + 2,
            };
            db.transition(NOW + 2, &record, "").unwrap();
        }
        let d = Rig::open(dir.path(), config(None, None), vec![v1.clone(), v2.clone()]);
        assert_eq!(d.state(), State::RolledBack(Reason::CrashedDuringCheck));
        assert_eq!(d.active(), Some(v1.id()));
    }

    #[test]
    fn late_wave_waits_and_halt_holds() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Rig::open(dir.path(), config(None, None), vec![]);
        let data = noise(7, 100_000);
        put_chunks(&d.store, &data);
        let policy = RolloutPolicy {
            waves: vec![
                Wave { percent: 0.001, after_s: 0, require_success: None, require_reports: 0 },
                Wave { percent: 100.0, after_s: 60, require_success: None, require_reports: 0 },
            ],
            ..Default::default()
        };
        let v1 = sign(testkit::manifest(&data, 1, policy));
        d.device.directive(NOW, &directive(v1.id(), Order::Halt, 1)).unwrap();
        d.offer(NOW, &v1);
        assert_eq!(d.state(), State::Waiting);
        let later = 1_000 + 61_000;
        d.device.timeout(later);
        d.settle(later);
        assert_eq!(d.state(), State::Waiting, "halted");
        d.device.directive(later, &directive(v1.id(), Order::Resume, 2)).unwrap();
        d.device.timeout(later);
        d.settle(later);
        assert_eq!(d.state(), State::Committed);
    }

    #[test]
    fn a_halt_survives_a_restart_and_older_directives_stay_refused() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = local_release(&store_of(dir.path()), 1, 1);
        {
            let mut d = Rig::open(dir.path(), config(None, None), vec![]);
            d.device.directive(NOW, &directive(v1.id(), Order::Halt, 5)).unwrap();
            d.settle(NOW);
        }
        let mut d = Rig::open(dir.path(), config(None, None), vec![]);
        let replay = d.device.directive(NOW, &directive(v1.id(), Order::Resume, 4));
        assert!(
            matches!(replay, Err(NotTaken::Replayed(_))),
            "the older resume is refused after the restart"
        );
        d.offer(NOW, &v1);
        assert_eq!(d.state(), State::Waiting, "the halt from before the restart holds");
        let rows = d.audit();
        assert_eq!(rows.iter().filter(|r| r.event == "directive").count(), 1, "a replay is not applied");
        assert_eq!(rows.iter().filter(|r| r.event == "refused").count(), 1, "the replay is audited once");
        for _ in 0..100 {
            let again = d.device.directive(NOW, &directive(v1.id(), Order::Resume, 4));
            assert!(matches!(again, Err(NotTaken::Replayed(_))));
        }
        d.settle(NOW);
        assert_eq!(
            d.audit().iter().filter(|r| r.event == "refused").count(),
            1,
            "a flood of it writes no more"
        );
    }

    #[test]
    fn a_revoke_to_a_release_not_in_the_other_slot_installs_it_without_emptying_the_device() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Rig::open(dir.path(), config(None, None), vec![]);
        let (v0, v1) = (local_release(&d.store, 1, 1), local_release(&d.store, 2, 2));
        d.offer(NOW, &v1);
        assert_eq!(d.state(), State::Committed);
        assert_eq!(d.device.slots().1, None, "v1 is the first install: the other slot is empty");
        d.device.directive(NOW, &directive(v1.id(), Order::Revoke { to: v0.id() }, 1)).unwrap();
        d.settle(NOW);
        assert_eq!(d.active(), Some(v1.id()), "not switched to an empty slot");
        // The named release arrives; its lower sequence is no obstacle.
        d.offer(NOW, &v0);
        assert_eq!(d.state(), State::Committed);
        assert_eq!(d.active(), Some(v0.id()));
        assert_eq!(d.device.slots().1.map(|s| s.release_id), Some(v1.id()));
    }

    #[test]
    fn a_node_that_hears_the_revoke_first_never_activates_the_revoked_release() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Rig::open(dir.path(), config(None, None), vec![]);
        let (v1, v2) = (local_release(&d.store, 1, 1), local_release(&d.store, 2, 2));
        d.device.directive(NOW, &directive(v2.id(), Order::Revoke { to: v1.id() }, 1)).unwrap();
        d.offer(NOW, &v2);
        d.offer(NOW, &v1);
        assert_eq!(d.active(), Some(v1.id()));
        let v2_rows: Vec<String> = d
            .audit()
            .into_iter()
            .filter(|r| r.release.as_deref() == Some(&v2.id().to_hex()))
            .map(|r| r.event)
            .collect();
        assert_eq!(v2_rows, ["directive", "refused"], "v2 was never admitted, let alone activated");
    }

    #[test]
    fn long_failure_reasons_still_make_valid_reports() {
        let dir = tempfile::tempdir().unwrap();
        let long = format!("echo {} >&2; exit 1", "é".repeat(400));
        let mut d = Rig::open(dir.path(), config(Some(&long), None), vec![]);
        let v1 = local_release(&d.store, 1, 1);
        d.offer(NOW, &v1);
        d.reports.pop().unwrap().verify(&testkit::trust()).unwrap();
    }

    #[test]
    fn the_state_is_persisted_and_shown_before_the_install_hook_runs() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Rig::open(dir.path(), config(None, Some("true")), vec![]);
        let v1 = local_release(&d.store, 1, 1);
        d.device.offer(NOW, v1.clone()).unwrap();
        assert_eq!(d.device.poll_event(), Some(Event::Fetch(v1.id())));
        d.device.fetched(NOW, v1.id());
        // The effects are queued for the worker, in the machine's order.
        let mut queued = Vec::new();
        d.device.flush();
        while let Ok(e) = d.effects.try_recv() {
            queued.push(e);
            d.device.flush();
        }
        assert_eq!(d.state(), State::Installing, "shown while the worker has not run the hook yet");
        let persist =
            queued.iter().position(|e| matches!(e, Effect::Persist(r) if r.state == State::Installing));
        let install = queued.iter().position(|e| matches!(e, Effect::Install(..)));
        assert!(persist.unwrap() < install.unwrap(), "write-ahead: persisted before the hook runs");
    }

    #[test]
    fn failing_install_hook_leaves_the_active_slot() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Rig::open(dir.path(), config(None, Some("exit 4")), vec![]);
        let v1 = local_release(&d.store, 1, 1);
        d.offer(NOW, &v1);
        assert!(matches!(d.state(), State::RolledBack(Reason::InstallFailed(_))));
        assert_eq!(d.active(), None);
        assert!(matches!(d.outcome(), Some(Outcome::Failed { reason }) if reason.contains("exited with 4")));
    }

    #[test]
    fn a_full_worker_queue_holds_effects_in_order_and_drops_none() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Rig::open(dir.path(), config(None, None), vec![]);
        let v1 = local_release(&d.store, 1, 1);
        // Many genuine directives while the worker does not run: none is lost.
        for seq in 1..=50 {
            let order = if seq % 2 == 1 { Order::Halt } else { Order::Resume };
            d.device.directive(NOW, &directive(v1.id(), order, seq)).unwrap();
        }
        assert!(d.device.backlog() > 0, "the channel holds 4; the rest wait in order");
        d.device.directive(NOW, &directive(v1.id(), Order::Halt, 51)).unwrap();
        d.settle(NOW);
        let rows = d.audit().into_iter().filter(|r| r.event == "directive").count();
        assert_eq!(rows, 51);
        d.offer(NOW, &v1);
        assert_eq!(d.state(), State::Waiting, "the last, genuine halt holds");
    }
}
