//! The device: drives the core [`Lifecycle`] with real slots, hooks, SQLite and time.
//!
//! This is the node-side driver of issue "device lifecycle": it admits verified
//! manifests ([`admit`]), keeps one release in progress, persists every state before
//! running its side effects (the core's drain rule), executes the actions on disk
//! (assemble into the inactive slot, install hook, atomic switch, health check,
//! rollback), and emits [`Event`]s for the mesh: fetch these chunks, stop, send this
//! signed report. It makes no decision of its own; waves, windows, gates, halts and
//! crash recovery are the core's.
//!
//! It is synchronous and may block for as long as a hook runs, so the node runs it on
//! its own thread and talks to it over bounded channels. Just before it blocks, it shows
//! its status to a watcher ([`Device::watch_status`]), so the node's `/status` says
//! `installing` or `checking` while the install hook or the health check runs.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use otamesh_core::directive::{DirectiveBook, Order, VerifiedDirective};
use otamesh_core::enrolment::SignedEnrolment;
use otamesh_core::gate::Tally;
use otamesh_core::lifecycle::{Action, Context, Facts, Lifecycle, Refusal, State, admit};
use otamesh_core::report::{MAX_TEXT, Outcome, Report, SignedReport, VerifiedReport};
use otamesh_core::rollout::{self, DeviceInfo, ReleaseInfo};
use otamesh_core::{DeviceId, Millis, ReleaseId, SecretKey, TrustRoot, VerifiedManifest};

use crate::db::{Db, DbError, ReleaseRecord, SlotContent};
use crate::hooks::{Hook, HookEnv};
use crate::slots::{Slot, SlotError, Slots};
use crate::store::{Store, StoreError};

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
    /// Bring this release's chunks into the local store, then call
    /// [`Device::handle_fetched`].
    Fetch {
        /// The release.
        release: ReleaseId,
    },
    /// Stop fetching this release.
    StopFetch {
        /// The release.
        release: ReleaseId,
    },
    /// Gossip this signed status report.
    Report(Box<SignedReport>),
}

/// Why the device could not start or act.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// The state database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The slots failed.
    #[error(transparent)]
    Slot(#[from] SlotError),
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What [`Device::offer`] did with a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offered {
    /// It is now the release in progress.
    Started,
    /// Already known; nothing changed.
    Known,
    /// Another release is installing; this one waits for it to end.
    Queued,
    /// Not for this device (audited unless it is for another class).
    Refused(Refusal),
}

/// A slot's content and role, for status output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStatus {
    /// The lifecycle state of the release in progress, or of the last one.
    pub state: &'static str,
    /// The release in progress, or the last one handled.
    pub release: Option<ReleaseId>,
    /// The slot the device runs.
    pub active: Option<SlotContent>,
    /// The other slot, kept for rollback.
    pub previous: Option<SlotContent>,
}

struct Tracked {
    manifest: VerifiedManifest,
    info: ReleaseInfo,
    machine: Lifecycle,
    /// The state last written to the database (None: not yet written).
    persisted: Option<State>,
}

/// One device's update state. See the module docs.
pub struct Device {
    config: DeviceConfig,
    key: SecretKey,
    id: DeviceId,
    db: Db,
    slots: Slots,
    store: Store,
    current: Option<Tracked>,
    queued: Option<VerifiedManifest>,
    tallies: BTreeMap<ReleaseId, Tally>,
    directives: DirectiveBook,
    site_installing: u32,
    report_seq: u64,
    events: VecDeque<Event>,
    /// Shown the status before a long, blocking action (see [`Device::watch_status`]).
    watcher: Option<Box<dyn FnMut(DeviceStatus) + Send>>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("id", &self.id)
            .field("class", &self.config.class)
            .finish_non_exhaustive()
    }
}

impl Device {
    /// Opens the device state in `data` (state.db, slots/, store/) and recovers from
    /// whatever a crash left: the last release handled is rebuilt with
    /// [`Lifecycle::recover`] and its pending side effects are run again.
    pub fn open(
        data: &Path,
        config: DeviceConfig,
        key: SecretKey,
        trust: &TrustRoot,
        now: Millis,
    ) -> Result<Self, DeviceError> {
        let (db, _rebuilt) = crate::db::open_or_rebuild(data, now)?;
        let directives = db.directives()?.into_iter().collect();
        let slots = Slots::open(data.join("slots"))?;
        let store = Store::create(data.join("store"))?;
        let id = DeviceId::of_public_key(&key.public().to_bytes());
        let mut device = Self {
            config,
            key,
            id,
            db,
            slots,
            store,
            current: None,
            queued: None,
            tallies: BTreeMap::new(),
            directives,
            site_installing: 0,
            report_seq: now,
            events: VecDeque::new(),
            watcher: None,
        };
        let last = device.db.releases()?.into_iter().max_by_key(|r| (r.updated_at, r.sequence));
        if let Some(record) = last {
            // The manifest was verified when it was admitted; expiry is an admission
            // check, so it is re-verified as of its creation.
            let signed = device.store.read_manifest(record.release)?;
            if let Ok(manifest) = trust.verify_manifest(signed, 0) {
                let info = release_info(&manifest);
                let machine = Lifecycle::recover(device.device_info(&info), record.state.clone(), now);
                device.current = Some(Tracked { manifest, info, machine, persisted: Some(record.state) });
                device.drive(now)?;
                if device.poll_timeout().is_some_and(|t| t <= now) {
                    device.handle_timeout(now)?;
                }
            }
        }
        Ok(device)
    }

    /// This device's id.
    pub fn id(&self) -> DeviceId {
        self.id
    }

    /// Calls `f` with the status just before the device blocks on a long action
    /// (assembling the payload and running the install hook, running the health check),
    /// so that a watcher sees `installing` or `checking` while it runs, not only the
    /// state from before and after. The state shown is already persisted.
    pub fn watch_status(&mut self, f: impl FnMut(DeviceStatus) + Send + 'static) {
        self.watcher = Some(Box::new(f));
    }

    fn show_status(&mut self) {
        let Some(mut watch) = self.watcher.take() else { return };
        match self.status() {
            Ok(status) => watch(status),
            Err(e) => tracing::error!(error = %e, "device status unreadable"),
        }
        self.watcher = Some(watch);
    }

    /// The directives applied so far (kept across restarts).
    pub fn directives(&self) -> &DirectiveBook {
        &self.directives
    }

    /// The local chunk store the mesh fills.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn device_info(&self, info: &ReleaseInfo) -> DeviceInfo {
        DeviceInfo {
            position: rollout::position(info.id, self.id),
            utc_offset_min: self.config.utc_offset_min,
        }
    }

    fn installed(&self) -> Result<Option<SlotContent>, DeviceError> {
        Ok(self.db.slot(self.slots.active()?.name())?)
    }

    /// Takes up a verified manifest if it is for this device.
    pub fn offer(&mut self, now: Millis, manifest: VerifiedManifest) -> Result<Offered, DeviceError> {
        let id = manifest.id();
        if self.current.as_ref().is_some_and(|t| t.info.id == id && !t.machine.state().is_final())
            || self.queued.as_ref().is_some_and(|q| q.id() == id)
        {
            return Ok(Offered::Known);
        }
        let known = self.db.releases()?.into_iter().find(|r| r.release == id);
        if known.as_ref().is_some_and(|r| r.state == State::Committed) {
            return Ok(Offered::Known);
        }
        let facts = Facts {
            class: &self.config.class,
            installed: self.installed()?.map(|s| s.sequence),
            revoke_target: self.is_revoke_target(id),
            rolled_back_before: known.as_ref().is_some_and(|r| matches!(r.state, State::RolledBack(_))),
        };
        if let Err(refusal) = admit(manifest.manifest(), &facts) {
            // Another class is not this device's business; a release it already handled
            // (offered again after a restart) was audited the first time.
            if !matches!(refusal, Refusal::OtherClass { .. }) && known.is_none() {
                let m = manifest.manifest();
                let detail = format!("refused {} (sequence {}): {refusal}", m.version, m.sequence);
                self.db.audit(now, "refused", Some(id), &detail)?;
            }
            return Ok(Offered::Refused(refusal));
        }
        if let Some(t) = &self.current
            && !t.machine.state().is_final()
        {
            let busy = matches!(t.machine.state(), State::Installing | State::Activated | State::Checking);
            if busy || t.manifest.manifest().sequence > manifest.manifest().sequence {
                let newer =
                    self.queued.as_ref().is_none_or(|q| q.manifest().sequence < manifest.manifest().sequence);
                if newer {
                    self.queued = Some(manifest);
                }
                return Ok(Offered::Queued);
            }
            let old = t.info.id;
            self.events.push_back(Event::StopFetch { release: old });
            self.db.audit(now, "superseded", Some(old), &format!("by {id}"))?;
        }
        self.start(now, manifest)?;
        Ok(Offered::Started)
    }

    fn start(&mut self, now: Millis, manifest: VerifiedManifest) -> Result<(), DeviceError> {
        self.store.put_manifest(&manifest)?;
        let info = release_info(&manifest);
        let machine = Lifecycle::new(self.device_info(&info), now);
        let id = info.id;
        let m = manifest.manifest();
        let detail = format!("admitted {} (sequence {}, {} bytes)", m.version, m.sequence, m.payload.size);
        self.db.audit(now, "admitted", Some(info.id), &detail)?;
        self.current = Some(Tracked { manifest, info, machine, persisted: None });
        self.persist(now, "")?;
        let halted = self.directives.standing(id).halted;
        if let Some(t) = &mut self.current {
            t.machine.handle_halt(now, halted);
        }
        self.drive(now)?;
        self.handle_timeout(now)
    }

    fn is_revoke_target(&self, id: ReleaseId) -> bool {
        self.directives.is_revoke_target(id)
    }

    /// When the device next wants [`Device::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Millis> {
        self.current.as_ref().and_then(|t| t.machine.poll_timeout())
    }

    /// The next event for the mesh.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Re-evaluates the release in progress (its timeout came, or the world changed).
    pub fn handle_timeout(&mut self, now: Millis) -> Result<(), DeviceError> {
        self.feed(|machine, ctx| machine.handle_timeout(now, ctx));
        self.drive(now)
    }

    /// Feeds the release in progress with the context its decisions need.
    fn feed(&mut self, f: impl FnOnce(&mut Lifecycle, Context<'_>)) {
        let tally = self.tally();
        let site_installing = self.site_installing;
        if let Some(t) = &mut self.current {
            let ctx = Context {
                release: &t.info,
                policy: &t.manifest.manifest().rollout,
                tally: &tally,
                site_installing,
                ordered: self.directives.is_revoke_target(t.info.id),
            };
            f(&mut t.machine, ctx);
        }
    }

    /// Every chunk of `release` is in the local store.
    pub fn handle_fetched(&mut self, now: Millis, release: ReleaseId) -> Result<(), DeviceError> {
        if self.current.as_ref().is_some_and(|t| t.info.id == release) {
            self.feed(|machine, ctx| machine.handle_fetched(now, ctx));
        }
        self.drive(now)
    }

    /// How many other devices of this site are installing now (from site gossip).
    pub fn set_site_installing(&mut self, now: Millis, n: u32) -> Result<(), DeviceError> {
        let changed = self.site_installing != n;
        self.site_installing = n;
        if changed { self.handle_timeout(now) } else { Ok(()) }
    }

    /// Counts a verified report from any device toward its release's tally. Reports
    /// for a release this device neither runs nor has queued are ignored (returns false).
    pub fn handle_report(&mut self, now: Millis, report: &VerifiedReport) -> Result<bool, DeviceError> {
        let r = report.report();
        // The queued release's reports count too: they arrive while this device is
        // still busy with the one before, and its gate must see them later.
        let manifest = match (&self.current, &self.queued) {
            (Some(t), _) if t.info.id == r.release => &t.manifest,
            (_, Some(q)) if q.id() == r.release => q,
            _ => return Ok(false),
        };
        let m = manifest.manifest();
        let position = rollout::position(r.release, report.device());
        let wave = m.rollout.wave_of(m.kind, position).unwrap_or(0);
        let _ = self.tallies.entry(r.release).or_default().record(
            report.device(),
            r.sequence,
            r.outcome.verdict(),
            wave as u16,
        );
        self.handle_timeout(now)?;
        Ok(true)
    }

    /// Applies a verified directive; older ones than already applied are refused.
    pub fn handle_directive(
        &mut self,
        now: Millis,
        directive: &VerifiedDirective,
    ) -> Result<(), DeviceError> {
        let d = directive.directive();
        let standing = match self.directives.apply(directive) {
            Ok(s) => s,
            Err(refused) => {
                self.db.audit(now, "refused", Some(d.release), &format!("directive: {refused}"))?;
                return Ok(());
            }
        };
        self.db.apply_directive(
            now,
            d.release,
            &standing,
            &format!("{:?} (sequence {})", d.order, d.sequence),
        )?;
        if let Some(t) = &mut self.current
            && t.info.id == d.release
        {
            match d.order {
                Order::Halt | Order::Resume => t.machine.handle_halt(now, standing.halted),
                Order::Revoke { .. } => t.machine.handle_revoke(now),
            }
        }
        self.drive(now)
    }

    /// The tally of the release in progress.
    fn tally(&self) -> Tally {
        self.current.as_ref().and_then(|t| self.tallies.get(&t.info.id).cloned()).unwrap_or_default()
    }

    /// What the device runs and where it stands.
    pub fn status(&self) -> Result<DeviceStatus, DeviceError> {
        let active = self.slots.active()?;
        let in_progress = self
            .current
            .as_ref()
            .is_some_and(|t| matches!(t.machine.state(), State::Staged | State::Installing));
        let previous = if in_progress { None } else { self.db.slot(active.other().name())? };
        Ok(DeviceStatus {
            state: self.current.as_ref().map_or("idle", |t| t.machine.state().name()),
            release: self.current.as_ref().map(|t| t.info.id),
            active: self.db.slot(active.name())?,
            previous,
        })
    }

    fn persist(&mut self, now: Millis, detail: &str) -> Result<(), DeviceError> {
        let Some(t) = &mut self.current else { return Ok(()) };
        if t.persisted.as_ref() == Some(t.machine.state()) {
            return Ok(());
        }
        let m = t.manifest.manifest();
        let record = ReleaseRecord {
            release: t.info.id,
            sequence: m.sequence,
            version: m.version.clone(),
            state: t.machine.state().clone(),
            updated_at: now,
        };
        t.persisted = Some(record.state.clone());
        self.db.transition(now, &record, detail)?;
        Ok(())
    }

    /// Persists the state, then executes every action the machine wants, feeding
    /// results back, until it wants nothing more (the drain rule).
    fn drive(&mut self, now: Millis) -> Result<(), DeviceError> {
        loop {
            self.persist(now, "")?;
            let Some(t) = &mut self.current else { return Ok(()) };
            let Some(action) = t.machine.poll_action() else { break };
            self.execute(now, action)?;
        }
        let finished = self.current.as_ref().is_some_and(|t| t.machine.state().is_final());
        if finished && let Some(next) = self.queued.take() {
            return self.offer(now, next).map(|_| ());
        }
        Ok(())
    }

    fn execute(&mut self, now: Millis, action: Action) -> Result<(), DeviceError> {
        // Invariant: drive() only calls execute while a release is current.
        let Some(t) = &self.current else { return Ok(()) };
        let id = t.info.id;
        let manifest = t.manifest.manifest().clone();
        match action {
            Action::Fetch => {
                if manifest.payload.chunks.iter().all(|c| self.store.has_chunk(c.id)) {
                    self.feed(|machine, ctx| machine.handle_fetched(now, ctx));
                    return Ok(());
                }
                self.events.push_back(Event::Fetch { release: id });
            }
            Action::StopFetch => self.events.push_back(Event::StopFetch { release: id }),
            Action::Install => {
                self.show_status();
                let result = self.install(&manifest, id);
                if let Some(t) = &mut self.current {
                    t.machine.handle_installed(now, result);
                }
            }
            Action::DiscardInactive => {
                let inactive = self.slots.inactive()?;
                self.slots.discard(inactive)?;
                self.db.clear_slot(inactive.name())?;
            }
            Action::Activate => {
                if let Some(slot) = self.slot_holding(id)? {
                    self.slots.switch_to(slot)?;
                }
                if let Some(t) = &mut self.current {
                    t.machine.handle_activated(now);
                }
            }
            Action::RunHealthCheck => {
                self.show_status();
                let active = self.slots.active()?;
                let result = match &self.config.health_check {
                    None => Ok(()),
                    Some(hook) => run_hook(hook, "health", &self.slots.path(active), id, &manifest),
                };
                if let Some(t) = &mut self.current {
                    t.machine.handle_health(now, result);
                }
            }
            Action::Commit => {}
            Action::Rollback => {
                let active = self.slots.active()?;
                if self.db.slot(active.name())?.is_some_and(|c| c.release_id == id) {
                    // A revoke goes back only to the release it names. When the other
                    // slot does not hold that one (or nothing), the device keeps running
                    // this release until the named one is installed over it.
                    let to = self.directives.standing(id).revoked_to;
                    let other = self.db.slot(active.other().name())?.map(|c| c.release_id);
                    if to.is_none_or(|to| other == Some(to)) {
                        self.slots.switch_to(active.other())?;
                        self.slots.discard(active)?;
                        self.db.clear_slot(active.name())?;
                    } else if let Some(to) = to {
                        let detail =
                            format!("keeps running it: {to} is not in the other slot and is installed next");
                        self.db.audit(now, "revoke", Some(id), &detail)?;
                    }
                }
            }
            Action::Report(outcome) => {
                let outcome = fit_reason(outcome);
                self.report_seq = self.report_seq.saturating_add(1).max(now);
                let report = Report {
                    device_key: self.key.public().to_bytes(),
                    site: self.config.site.clone(),
                    class: self.config.class.clone(),
                    release: id,
                    outcome,
                    active: self.installed()?.map(|c| c.release_id),
                    sequence: self.report_seq,
                    sent_at: now,
                };
                self.events.push_back(Event::Report(Box::new(SignedReport::sign(
                    report,
                    &self.key,
                    self.config.enrolment.clone(),
                ))));
            }
        }
        Ok(())
    }

    fn slot_holding(&self, id: ReleaseId) -> Result<Option<Slot>, DeviceError> {
        for s in [Slot::A, Slot::B] {
            if self.db.slot(s.name())?.is_some_and(|c| c.release_id == id) {
                return Ok(Some(s));
            }
        }
        Ok(None)
    }

    /// Assembles into the inactive slot, records it, runs the install hook.
    fn install(&mut self, manifest: &otamesh_core::Manifest, id: ReleaseId) -> Result<(), String> {
        let slot = self.slots.assemble(&self.store, manifest).map_err(|e| e.to_string())?;
        let content =
            SlotContent { release_id: id, sequence: manifest.sequence, version: manifest.version.clone() };
        self.db.set_slot(slot.name(), &content).map_err(|e| e.to_string())?;
        if let Some(hook) = &self.config.install_hook {
            run_hook(hook, "install", &self.slots.path(slot), id, manifest)?;
        }
        Ok(())
    }
}

/// What the node tells the device thread.
#[derive(Debug)]
pub enum Command {
    /// A verified manifest for this device's class arrived.
    Offer(Box<VerifiedManifest>),
    /// Every chunk of the release is in the local store.
    Fetched(ReleaseId),
    /// A verified report from any device.
    Report(Box<VerifiedReport>),
    /// A verified directive.
    Directive(Box<VerifiedDirective>),
    /// How many other devices of the site are installing now.
    SiteInstalling(u32),
}

/// What the device thread tells the node.
#[derive(Debug)]
pub enum Output {
    /// An event for the mesh.
    Event(Event),
    /// The device's status changed.
    Status(DeviceStatus),
}

/// Runs `device` on its own thread: applies commands, wakes at its timeouts, hands
/// events and status changes to `out` (which returns false once the node is gone),
/// status changes also just before a hook runs. Ends when the command channel closes.
/// A failing database or disk is logged and the device keeps serving everything else.
pub fn spawn(
    mut device: Device,
    commands: std::sync::mpsc::Receiver<Command>,
    mut out: impl FnMut(Output) -> bool + Send + Clone + 'static,
) -> std::thread::JoinHandle<()> {
    // The status last handed out, by the loop below or by the watcher before a hook.
    let shown: Arc<Mutex<Option<DeviceStatus>>> = Arc::default();
    let mut show = {
        let mut out = out.clone();
        move |status: DeviceStatus| {
            let mut last = shown.lock().unwrap_or_else(PoisonError::into_inner);
            if last.as_ref() == Some(&status) {
                return true;
            }
            *last = Some(status.clone());
            out(Output::Status(status))
        }
    };
    device.watch_status({
        let mut show = show.clone();
        move |status| {
            // A node that is gone is noticed by the loop below.
            let _ = show(status);
        }
    });
    std::thread::spawn(move || {
        loop {
            let now = crate::clock::now_ms();
            // Wake at least every few seconds so wall-clock jumps are noticed.
            let wait = device.poll_timeout().map_or(5_000, |t| t.saturating_sub(now).min(5_000));
            let result = match commands.recv_timeout(std::time::Duration::from_millis(wait)) {
                Ok(cmd) => device.apply(crate::clock::now_ms(), cmd),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Ok(()),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            };
            let now = crate::clock::now_ms();
            let result = result.and_then(|()| match device.poll_timeout() {
                Some(t) if t <= now => device.handle_timeout(now),
                _ => Ok(()),
            });
            if let Err(e) = result {
                tracing::error!(error = %e, "device state could not be updated");
            }
            while let Some(event) = device.poll_event() {
                if !out(Output::Event(event)) {
                    return;
                }
            }
            match device.status() {
                Ok(status) => {
                    if !show(status) {
                        return;
                    }
                }
                Err(e) => tracing::error!(error = %e, "device status unreadable"),
            }
        }
    })
}

impl Device {
    /// Applies one command from the node.
    pub fn apply(&mut self, now: Millis, command: Command) -> Result<(), DeviceError> {
        match command {
            Command::Offer(manifest) => {
                let id = manifest.id();
                match self.offer(now, *manifest)? {
                    Offered::Refused(r) => tracing::info!(release = %id, reason = %r, "release refused"),
                    other => tracing::info!(release = %id, result = ?other, "release offered"),
                }
                Ok(())
            }
            Command::Fetched(release) => self.handle_fetched(now, release),
            Command::Report(report) => self.handle_report(now, &report).map(|_| ()),
            Command::Directive(directive) => self.handle_directive(now, &directive),
            Command::SiteInstalling(n) => self.set_site_installing(now, n),
        }
    }
}

/// Runs `hook` for `manifest` in `slot`; the error is the one-line reason.
fn run_hook(
    hook: &Hook,
    phase: &str,
    slot: &Path,
    id: ReleaseId,
    manifest: &otamesh_core::Manifest,
) -> Result<(), String> {
    let release = id.to_hex();
    let env =
        HookEnv { phase, slot, release: &release, version: &manifest.version, sequence: manifest.sequence };
    hook.run(env).map_err(|e| e.to_string())
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

fn release_info(manifest: &VerifiedManifest) -> ReleaseInfo {
    let m = manifest.manifest();
    ReleaseInfo { id: manifest.id(), kind: m.kind, created_at: m.created_at }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use otamesh_core::directive::{DEFAULT_LIFETIME, Directive, SignedDirective};
    use otamesh_core::lifecycle::Reason;
    use otamesh_core::rollout::{RolloutPolicy, Wave};

    use super::*;
    use crate::db;
    use crate::testkit::{self, noise, put_chunks, sign};

    const NOW: Millis = 10_000;

    fn config(health: Option<&str>, install: Option<&str>) -> DeviceConfig {
        let hook = |c: &str| Hook { command: c.to_owned(), timeout: Duration::from_secs(5) };
        DeviceConfig {
            class: "gw".into(),
            site: "s1".into(),
            utc_offset_min: 0,
            install_hook: install.map(hook),
            health_check: health.map(hook),
            enrolment: Some(testkit::enrol(&SecretKey::from_seed([9; 32]), "s1")),
        }
    }

    fn open(dir: &Path, config: DeviceConfig) -> Device {
        Device::open(dir, config, SecretKey::from_seed([9; 32]), &testkit::trust(), NOW).unwrap()
    }

    /// A release whose chunks are already in the device's store.
    fn local_release(device: &Device, seed: u64, sequence: u64) -> VerifiedManifest {
        let data = noise(seed, 150_000);
        put_chunks(device.store(), &data);
        sign(testkit::manifest(&data, sequence, RolloutPolicy::default()))
    }

    fn events(device: &mut Device) -> Vec<Event> {
        std::iter::from_fn(|| device.poll_event()).collect()
    }

    fn outcome(events: &[Event]) -> Option<Outcome> {
        events.iter().find_map(|e| match e {
            Event::Report(r) => Some(r.report.outcome.clone()),
            _ => None,
        })
    }

    #[test]
    fn release_commits_and_reports_success() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = open(dir.path(), config(Some("test -f \"$1/payload\""), Some("true")));
        let v1 = local_release(&d, 1, 1);
        assert_eq!(d.offer(NOW, v1.clone()).unwrap(), Offered::Started);
        let status = d.status().unwrap();
        assert_eq!(status.state, "committed");
        assert_eq!(status.active.unwrap().release_id, v1.id());
        assert_eq!(outcome(&events(&mut d)), Some(Outcome::Committed));
        let rows = d.db.audit_rows().unwrap();
        db::verify_chain(&rows).unwrap();
        assert!(rows.iter().any(|r| r.detail.starts_with("committed")));
    }

    #[test]
    fn failed_health_check_rolls_back_and_is_not_retried() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = open(dir.path(), config(Some("test \"$OTAMESH_SEQUENCE\" = 1"), None));
        let v1 = local_release(&d, 1, 1);
        let v2 = local_release(&d, 2, 2);
        d.offer(NOW, v1.clone()).unwrap();
        let _ = events(&mut d);
        d.offer(NOW + 1, v2.clone()).unwrap();
        let status = d.status().unwrap();
        assert_eq!(status.state, "rolled_back");
        assert_eq!(status.active.unwrap().release_id, v1.id(), "back on v1");
        assert!(matches!(outcome(&events(&mut d)), Some(Outcome::RolledBack { revoked: false, .. })));
        assert_eq!(d.offer(NOW + 2, v2).unwrap(), Offered::Refused(Refusal::RolledBackBefore));
    }

    #[test]
    fn older_sequence_is_refused_and_audited() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = open(dir.path(), config(None, None));
        let v2 = local_release(&d, 2, 2);
        let v1 = local_release(&d, 1, 1);
        d.offer(NOW, v2).unwrap();
        assert!(matches!(d.offer(NOW + 1, v1.clone()).unwrap(), Offered::Refused(Refusal::NotNewer { .. })));
        let rows = d.db.audit_rows().unwrap();
        let last = rows.last().unwrap();
        assert_eq!(last.event, "refused");
        assert_eq!(last.release.as_deref(), Some(v1.id().to_hex().as_str()));
    }

    #[test]
    fn missing_chunks_are_asked_of_the_mesh() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = open(dir.path(), config(None, None));
        let data = noise(5, 150_000);
        let v1 = sign(testkit::manifest(&data, 1, RolloutPolicy::default()));
        d.offer(NOW, v1.clone()).unwrap();
        assert_eq!(events(&mut d), vec![Event::Fetch { release: v1.id() }]);
        assert_eq!(d.status().unwrap().state, "fetching");
        put_chunks(d.store(), &data);
        d.handle_fetched(NOW + 5, v1.id()).unwrap();
        assert_eq!(d.status().unwrap().state, "committed");
    }

    #[test]
    fn crash_during_install_resumes_with_the_active_slot_intact() {
        let dir = tempfile::tempdir().unwrap();
        let (v1, v2);
        {
            let mut d = open(dir.path(), config(None, None));
            v1 = local_release(&d, 1, 1);
            v2 = local_release(&d, 2, 2);
            d.offer(NOW, v1.clone()).unwrap();
            d.store.put_manifest(&v2).unwrap();
            // What a SIGKILL in the middle of assembling v2 leaves behind.
            let record = ReleaseRecord {
                release: v2.id(),
                sequence: 2,
                version: "1.2".into(),
                state: State::Installing,
                updated_at: NOW + 1,
            };
            d.db.transition(NOW + 1, &record, "").unwrap();
            std::fs::write(d.slots.payload(d.slots.inactive().unwrap()), b"half written").unwrap();
        }
        let v1_payload = dir.path().join("slots/b/payload");
        let active_before = std::fs::read(&v1_payload).unwrap();
        let d = open(dir.path(), config(None, None));
        let status = d.status().unwrap();
        assert_eq!(status.state, "committed");
        assert_eq!(status.active.unwrap().release_id, v2.id());
        assert_eq!(status.previous.unwrap().release_id, v1.id());
        assert_eq!(std::fs::read(&v1_payload).unwrap(), active_before, "v1's slot untouched");
        db::verify_chain(&d.db.audit_rows().unwrap()).unwrap();
    }

    #[test]
    fn crash_during_health_check_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let v2;
        {
            let mut d = open(dir.path(), config(None, None));
            let v1 = local_release(&d, 1, 1);
            v2 = local_release(&d, 2, 2);
            d.offer(NOW, v1).unwrap();
            d.offer(NOW + 1, v2.clone()).unwrap();
            let record = ReleaseRecord {
                release: v2.id(),
                sequence: 2,
                version: "1.2".into(),
                state: State::Checking,
                updated_at: NOW + 2,
            };
            d.db.transition(NOW + 2, &record, "").unwrap();
        }
        let d = open(dir.path(), config(None, None));
        assert_eq!(
            d.db.releases().unwrap().last().unwrap().state,
            State::RolledBack(Reason::CrashedDuringCheck)
        );
        assert_ne!(d.status().unwrap().active.unwrap().release_id, v2.id());
    }

    #[test]
    fn late_wave_waits_and_halt_holds() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = open(dir.path(), config(None, None));
        let data = noise(7, 100_000);
        put_chunks(d.store(), &data);
        let policy = RolloutPolicy {
            waves: vec![
                Wave { percent: 0.001, after_s: 0, require_success: None, require_reports: 0 },
                Wave { percent: 100.0, after_s: 60, require_success: None, require_reports: 0 },
            ],
            ..Default::default()
        };
        let v1 = sign(testkit::manifest(&data, 1, policy));
        let halt = SignedDirective::sign(
            Directive {
                release: v1.id(),
                order: Order::Halt,
                sequence: 1,
                issued_at: NOW,
                expires_at: NOW + DEFAULT_LIFETIME,
            },
            &testkit::publisher(),
        );
        d.handle_directive(NOW, &testkit::trust().verify_directive(halt, NOW).unwrap()).unwrap();
        d.offer(NOW, v1.clone()).unwrap();
        assert_eq!(d.status().unwrap().state, "waiting");
        let later = 1_000 + 61_000;
        d.handle_timeout(later).unwrap();
        assert_eq!(d.status().unwrap().state, "waiting", "halted");
        let resume = SignedDirective::sign(
            Directive {
                release: v1.id(),
                order: Order::Resume,
                sequence: 2,
                issued_at: later,
                expires_at: later + DEFAULT_LIFETIME,
            },
            &testkit::publisher(),
        );
        d.handle_directive(later, &testkit::trust().verify_directive(resume, later).unwrap()).unwrap();
        d.handle_timeout(later).unwrap();
        assert_eq!(d.status().unwrap().state, "committed");
    }

    #[test]
    fn a_halt_survives_a_restart_and_older_directives_stay_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = open(dir.path(), config(None, None));
        let v1 = local_release(&d, 1, 1);
        let directive = |order, sequence| {
            let signed = SignedDirective::sign(
                Directive {
                    release: v1.id(),
                    order,
                    sequence,
                    issued_at: NOW,
                    expires_at: NOW + DEFAULT_LIFETIME,
                },
                &testkit::publisher(),
            );
            testkit::trust().verify_directive(signed, NOW).unwrap()
        };
        d.handle_directive(NOW, &directive(Order::Halt, 5)).unwrap();
        drop(d);
        let mut d = open(dir.path(), config(None, None));
        d.handle_directive(NOW, &directive(Order::Resume, 4)).unwrap();
        d.offer(NOW, v1.clone()).unwrap();
        assert_eq!(d.status().unwrap().state, "waiting", "the halt from before the restart holds");
        let refused = d.db.audit_rows().unwrap().into_iter().filter(|r| r.event == "refused").count();
        assert_eq!(refused, 1, "the older resume is refused after the restart");
    }

    #[test]
    fn a_revoke_to_a_release_not_in_the_other_slot_installs_it_without_emptying_the_device() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = open(dir.path(), config(None, None));
        let (v0, v1) = (local_release(&d, 1, 1), local_release(&d, 2, 2));
        d.offer(NOW, v1.clone()).unwrap();
        assert_eq!(d.status().unwrap().state, "committed");
        assert_eq!(d.status().unwrap().previous, None, "v1 is the first install: the other slot is empty");
        let revoke = SignedDirective::sign(
            Directive {
                release: v1.id(),
                order: Order::Revoke { to: v0.id() },
                sequence: 1,
                issued_at: NOW,
                expires_at: NOW + DEFAULT_LIFETIME,
            },
            &testkit::publisher(),
        );
        d.handle_directive(NOW, &testkit::trust().verify_directive(revoke, NOW).unwrap()).unwrap();
        let active = |d: &Device| d.status().unwrap().active.map(|s| s.release_id);
        assert_eq!(active(&d), Some(v1.id()), "not switched to an empty slot");
        // The node offers the named release again; its lower sequence is no obstacle.
        assert!(matches!(d.offer(NOW, v0.clone()).unwrap(), Offered::Started));
        assert_eq!(d.status().unwrap().state, "committed");
        assert_eq!(active(&d), Some(v0.id()));
        assert_eq!(d.status().unwrap().previous.map(|s| s.release_id), Some(v1.id()));
        // v1 is not taken up again.
        assert!(matches!(d.offer(NOW, v1).unwrap(), Offered::Refused(_) | Offered::Known));
    }

    #[test]
    fn long_failure_reasons_still_make_valid_reports() {
        let dir = tempfile::tempdir().unwrap();
        let long = format!("echo {} >&2; exit 1", "é".repeat(400));
        let mut d = open(dir.path(), config(Some(&long), None));
        let v1 = local_release(&d, 1, 1);
        d.offer(NOW, v1).unwrap();
        let report = events(&mut d).into_iter().find_map(|e| match e {
            Event::Report(r) => Some(*r),
            _ => None,
        });
        report.unwrap().verify(&testkit::trust()).unwrap();
    }

    #[test]
    fn the_status_says_installing_and_checking_before_their_hooks_run() {
        let dir = tempfile::tempdir().unwrap();
        let marks = dir.path().join("marks");
        let hook = |phase: &str| format!("echo {phase} >> '{}'", marks.display());
        let d = open(dir.path(), config(Some(&hook("checked")), Some(&hook("installed"))));
        let v1 = local_release(&d, 1, 1);
        let (commands, rx) = std::sync::mpsc::sync_channel(1);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = {
            let (seen, marks) = (seen.clone(), marks.clone());
            move |out| {
                if let Output::Status(s) = out {
                    // What the hooks had done when this status went out.
                    let done = std::fs::read_to_string(&marks).unwrap_or_default();
                    seen.lock().unwrap().push((s.state, done));
                }
                true
            }
        };
        let thread = spawn(d, rx, record);
        commands.send(Command::Offer(Box::new(v1))).unwrap();
        drop(commands);
        thread.join().unwrap();
        let seen = seen.lock().unwrap().clone();
        let expected =
            [("installing", ""), ("checking", "installed\n"), ("committed", "installed\nchecked\n")];
        assert_eq!(seen, expected.map(|(s, d)| (s, d.to_owned())), "statuses in order, each once");
    }

    #[test]
    fn failing_install_hook_leaves_the_active_slot() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = open(dir.path(), config(None, Some("exit 4")));
        let v1 = local_release(&d, 1, 1);
        d.offer(NOW, v1).unwrap();
        let status = d.status().unwrap();
        assert_eq!(status.state, "rolled_back");
        assert_eq!(status.active, None);
        assert!(
            matches!(outcome(&events(&mut d)), Some(Outcome::Failed { reason }) if reason.contains("exited with 4"))
        );
    }
}
