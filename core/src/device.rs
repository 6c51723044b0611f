//! One device's decisions, as one sans-IO machine that the node and the simulator both
//! execute.
//!
//! A [`Device`] owns everything a device decides about updates: which release it works
//! on and which comes next, whether a release is admitted at all (class, anti-rollback,
//! precursor, revoked before it was heard of, not retried after a rollback), how a
//! directive changes the release in progress, which release a revoke installs, which
//! states hold one of the site's install slots, and whether a manifest is still valid
//! before each step that commits resources. The per-release [`Lifecycle`] is a part of it.
//!
//! What a device has *heard* (verified releases of its class, applied directives, the
//! health tallies built from reports) is a [`Heard`] passed to every call. A node owns
//! one `Heard` beside its one `Device`; the simulator shares one `Heard` among all its
//! virtual devices, because they hear the same gossip, so a million devices do not keep
//! a million tallies. Directives are applied, and replays refused, only in
//! [`Heard::apply_directive`]; reports are counted, with the reporter's wave computed
//! from its id, only in [`Heard::record_report`].
//!
//! ```text
//!                 Heard (releases, directives, tallies)
//!                        |  read by every call
//!   inputs               v                              outputs (poll_output)
//!   handle_release  --> +--------+  --> Persist (write-ahead state)
//!   handle_directive    | Device |      Audit, Directive (persist + audit)
//!   handle_tally        |  +-----+--+   Fetch / StopFetch
//!   handle_site         |  |Lifecycle|  Install, DiscardInactive, Activate,
//!   handle_timeout      |  +--------+   RunHealthCheck, Commit, Rollback
//!   handle_fetched ...  +--------+      Report { outcome }
//! ```
//!
//! **Drain rule:** after every `handle_*` call, drain [`Device::poll_output`] and
//! execute the outputs in order before the next input. [`Output::Persist`] always comes
//! before the side effects of the state it records, so a crash leaves a state from
//! which [`Device::restore`] knows what may be half done. Results of long side effects
//! (an install, a health check) come back later as inputs; a result for a release that
//! is no longer in progress is ignored.
//!
//! **Non-goals:** how bytes move (the fetch planner), how outputs are executed, what is
//! signed. Those belong to the drivers and to [`crate::fetch`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::directive::{DirectiveBook, Order, Refused, Standing, VerifiedDirective};
use crate::gate::{Recorded, Tally, Verdict};
use crate::lifecycle::{Action, Context, Lifecycle, Phase, Reason, State};
use crate::manifest::Manifest;
use crate::report::Outcome;
use crate::rollout::{DeviceInfo, ReleaseInfo, RolloutPolicy, position};
use crate::{DeviceId, Millis, ReleaseId};

/// What the machine needs to know of a release: the parts of its verified manifest
/// that decisions read.
#[derive(Debug, Clone, PartialEq)]
pub struct Release {
    /// Id, kind and creation time.
    pub info: ReleaseInfo,
    /// The device class it is for.
    pub class: String,
    /// Monotonic sequence (anti-rollback).
    pub sequence: u64,
    /// For a delta: the installed sequence it assumes.
    pub precursor: Option<u64>,
    /// When the signed manifest stops being valid.
    pub expires_at: Option<Millis>,
    /// The signed rollout policy.
    pub policy: RolloutPolicy,
}

impl Release {
    /// The release a verified manifest describes.
    pub fn of(id: ReleaseId, manifest: &Manifest) -> Self {
        Self {
            info: ReleaseInfo { id, kind: manifest.kind, created_at: manifest.created_at },
            class: manifest.class.clone(),
            sequence: manifest.sequence,
            precursor: manifest.precursor,
            expires_at: manifest.expires_at,
            policy: manifest.rollout.clone(),
        }
    }

    /// The release id.
    pub fn id(&self) -> ReleaseId {
        self.info.id
    }

    /// The wave `device` belongs to under this release's policy (`None`: the release
    /// skips waves or has none). The one place a device's wave is computed: for this
    /// device's decisions, for the gate tally of a reporter, for rollout reports.
    pub fn wave_of(&self, device: DeviceId) -> Option<usize> {
        self.policy.wave_of(self.info.kind, position(self.info.id, device))
    }

    /// Whether the manifest has expired at `now`.
    pub fn is_expired(&self, now: Millis) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }
}

/// Why a release is not taken up by a device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The manifest is for another device class.
    #[error("manifest is for class {manifest:?}, this device is {device:?}")]
    OtherClass {
        /// The manifest's class.
        manifest: String,
        /// This device's class.
        device: String,
    },
    /// Anti-rollback: the sequence is not above the installed one.
    #[error("sequence {sequence} is not above the installed sequence {installed} (anti-rollback)")]
    NotNewer {
        /// The manifest's sequence.
        sequence: u64,
        /// The installed one.
        installed: u64,
    },
    /// A delta for a different installed version.
    #[error("delta assumes installed sequence {precursor}, this device has {installed:?}")]
    WrongPrecursor {
        /// What the delta needs.
        precursor: u64,
        /// What is installed.
        installed: Option<u64>,
    },
    /// This device already tried the release and rolled it back; it is not retried.
    #[error("this release was rolled back on this device before and is not retried")]
    RolledBackBefore,
    /// A signed revoke withdrew the release before this device took it up.
    #[error("a signed revoke withdrew this release")]
    Revoked,
    /// The manifest expired.
    #[error("the manifest expired at {expires_at} (ms since the epoch)")]
    Expired {
        /// Its `expires_at`.
        expires_at: Millis,
    },
}

/// The release a slot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Installed {
    /// The release.
    pub release: ReleaseId,
    /// Its sequence.
    pub sequence: u64,
}

/// What the two A/B slots hold, as the device left them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Slots {
    /// The slot the device runs.
    pub active: Option<Installed>,
    /// The other slot: the previous release, kept for a rollback, or one being written.
    pub inactive: Option<Installed>,
}

/// What a device has heard: verified releases of its class, the directives applied,
/// and the health tallies. See the module docs for who owns one.
#[derive(Debug, Clone, Default)]
pub struct Heard {
    class: String,
    releases: BTreeMap<ReleaseId, Release>,
    directives: DirectiveBook,
    tallies: BTreeMap<ReleaseId, Tally>,
}

static NO_TALLY: Tally = Tally::new();

/// Distinct replayed directives audited per run, at most: past this a replay is only
/// refused (the node counts it in `/metrics`).
pub const MAX_REPLAYS_AUDITED: usize = 1024;

impl Heard {
    /// Nothing heard yet, for devices of `class`, with the directives applied before a
    /// restart (so a halt holds and older directives stay refused).
    pub fn new(class: impl Into<String>, directives: DirectiveBook) -> Self {
        Self { class: class.into(), directives, ..Self::default() }
    }

    /// Takes a verified release. `Ok(false)`: already known. A release of another class
    /// is refused: it is no business of this device.
    pub fn add_release(&mut self, release: Release) -> Result<bool, Refusal> {
        if release.class != self.class {
            return Err(Refusal::OtherClass { manifest: release.class, device: self.class.clone() });
        }
        if self.releases.contains_key(&release.id()) {
            return Ok(false);
        }
        self.releases.insert(release.id(), release);
        Ok(true)
    }

    /// A release heard of.
    pub fn release(&self, id: ReleaseId) -> Option<&Release> {
        self.releases.get(&id)
    }

    /// Every release heard of, by id.
    pub fn releases(&self) -> impl Iterator<Item = &Release> {
        self.releases.values()
    }

    /// Applies a verified directive if it is newer than every directive applied for
    /// its release; the one place a replay is refused. Then tell the device
    /// ([`Device::handle_directive`]).
    pub fn apply_directive(&mut self, directive: &VerifiedDirective) -> Result<Standing, Refused> {
        self.directives.apply(directive)
    }

    /// The directives applied so far.
    pub fn directives(&self) -> &DirectiveBook {
        &self.directives
    }

    /// Where `release` stands under the directives applied.
    pub fn standing(&self, release: ReleaseId) -> Standing {
        self.directives.standing(release)
    }

    /// Counts a verified report of `reporter` toward its release's gate tally, in the
    /// reporter's wave as this release's policy places it (never as the report says).
    /// `None`: the release is not known here (the caller may hold the report until it is).
    pub fn record_report(
        &mut self,
        reporter: DeviceId,
        release: ReleaseId,
        sequence: u64,
        verdict: Verdict,
    ) -> Option<Recorded> {
        let wave = self.releases.get(&release)?.wave_of(reporter).unwrap_or(0);
        let tally = self.tallies.entry(release).or_default();
        Some(tally.record(reporter, sequence, verdict, wave.min(usize::from(u16::MAX)) as u16))
    }

    /// The gate tally of `release` (empty when nothing was reported).
    pub fn tally(&self, release: ReleaseId) -> &Tally {
        self.tallies.get(&release).unwrap_or(&NO_TALLY)
    }

    /// Whether `release`'s health gate is breached by the reports heard.
    pub fn gate_breached(&self, release: ReleaseId) -> bool {
        self.releases
            .get(&release)
            .and_then(|r| r.policy.gate.as_ref())
            .is_some_and(|g| g.breached(self.tally(release)))
    }
}

/// What the machine wants done, in order. See the module docs for the drain rule.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Output {
    /// Write this state of `release` before executing anything that follows.
    Persist {
        /// The release.
        release: ReleaseId,
        /// Its new state.
        state: State,
    },
    /// Record a directive this device applied (its standing) with an audit row.
    Directive {
        /// The release it is about.
        release: ReleaseId,
        /// What it ordered.
        order: Order,
        /// Its sequence.
        sequence: u64,
        /// Where the release stands now.
        standing: Standing,
    },
    /// Append an audit row.
    Audit(Audit),
    /// Bring `release`'s chunks here; then [`Device::handle_fetched`].
    Fetch(ReleaseId),
    /// Stop fetching `release`.
    StopFetch(ReleaseId),
    /// Assemble `release` into the inactive slot, check its digest, run the install
    /// hook; then [`Device::handle_installed`].
    Install(ReleaseId),
    /// Throw away whatever is in the inactive slot.
    DiscardInactive,
    /// Atomically make the inactive slot (holding `release`) active; then
    /// [`Device::handle_activated`].
    Activate(ReleaseId),
    /// Run the health check on `release`; then [`Device::handle_health`].
    RunHealthCheck(ReleaseId),
    /// Make `release` permanent; keep the other slot for a later rollback.
    Commit(ReleaseId),
    /// Atomically make the inactive slot active again and discard `release`, which
    /// the active slot held. Idempotent: when the active slot no longer holds
    /// `release`, nothing changes.
    Rollback(ReleaseId),
    /// Sign and send a status report about `release`.
    Report {
        /// The release.
        release: ReleaseId,
        /// What became of it.
        outcome: Outcome,
    },
}

/// An audit row's content (the database adds time and the hash chain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audit {
    /// A release was taken up.
    Admitted {
        /// The release.
        release: ReleaseId,
        /// Its sequence.
        sequence: u64,
    },
    /// A release was refused (once per release and run).
    Refused {
        /// The release.
        release: ReleaseId,
        /// Why.
        refusal: Refusal,
    },
    /// A newer release replaced one that had not started installing.
    Superseded {
        /// The release given up.
        release: ReleaseId,
        /// The newer one.
        by: ReleaseId,
    },
    /// A directive was refused as a replay (audited once per release and sequence, so
    /// a flood of the same replay writes one row).
    DirectiveRefused {
        /// The release it is about.
        release: ReleaseId,
        /// Its sequence.
        sequence: u64,
        /// Why.
        refused: Refused,
    },
    /// An install could not be done for a reason of the device's own; it is retried.
    InstallDeferred {
        /// The release.
        release: ReleaseId,
        /// What went wrong.
        why: String,
    },
    /// A revoked release keeps running: the release the revoke names is not in the
    /// other slot, so it is installed over it instead of switching to an empty slot.
    KeepsRunning {
        /// The revoked release.
        release: ReleaseId,
        /// The release the revoke returns to.
        until: ReleaseId,
    },
}

#[derive(Debug, Clone, Default)]
struct Memory {
    /// Releases rolled back on this device: never retried (unless a revoke names one).
    tried: BTreeSet<ReleaseId>,
    /// Releases refused this run (or handled before a restart): audited once.
    refused: BTreeSet<ReleaseId>,
    /// Replayed directives audited this run (at most [`MAX_REPLAYS_AUDITED`]).
    replays: BTreeSet<(ReleaseId, u64)>,
}

#[derive(Debug, Clone)]
struct Current {
    release: ReleaseId,
    machine: Lifecycle,
    /// The state last handed out in [`Output::Persist`].
    persisted: Option<Phase>,
}

/// One device's update decisions. See the module docs.
#[derive(Debug, Clone)]
pub struct Device {
    id: DeviceId,
    utc_offset_min: i16,
    slots: Slots,
    current: Option<Current>,
    /// Releases rolled back on this device: never retried (unless a revoke names one).
    /// What this device remembers of releases it handled: boxed, because a simulator
    /// keeps a million devices and most never need it.
    memory: Option<Box<Memory>>,
    /// Other members of the site holding an install slot.
    site_others: u32,
    outputs: VecDeque<Output>,
}

impl Device {
    /// A device with nothing in progress.
    pub fn new(id: DeviceId, utc_offset_min: i16, slots: Slots) -> Self {
        Self {
            id,
            utc_offset_min,
            slots,
            current: None,
            memory: None,
            site_others: 0,
            outputs: VecDeque::new(),
        }
    }

    /// Rebuilds a device after a restart or a crash: `slots` as they are on disk,
    /// `tried` the releases it rolled back before, `last` the release it worked on
    /// with the state last persisted. The release's pending side effects come out as
    /// outputs (see [`Lifecycle::recover`]); drain them first.
    pub fn restore(
        now: Millis,
        heard: &Heard,
        id: DeviceId,
        utc_offset_min: i16,
        slots: Slots,
        tried: impl IntoIterator<Item = ReleaseId>,
        last: Option<(ReleaseId, State)>,
    ) -> Self {
        let mut device = Self::new(id, utc_offset_min, slots);
        device.memory_mut().tried.extend(tried);
        if let Some((release, state)) = last
            && heard.release(release).is_some()
        {
            let mut machine = Lifecycle::recover(device.device_info(release), state.clone(), now);
            if heard.standing(release).halted {
                machine.handle_halt(now, true);
            }
            device.current = Some(Current { release, machine, persisted: Some(state.phase()) });
            device.after(now, heard);
        }
        device.handle_timeout(now, heard);
        device
    }

    /// Releases this device handled before a restart (its database knows them): a
    /// refusal of one of them was audited then and is not audited again.
    pub fn handled_before(&mut self, releases: impl IntoIterator<Item = ReleaseId>) {
        self.memory_mut().refused.extend(releases);
    }

    /// This device's id.
    pub fn id(&self) -> DeviceId {
        self.id
    }

    /// The release in progress (or the last one handled) and its state.
    pub fn current(&self) -> Option<(ReleaseId, &State)> {
        self.current.as_ref().map(|c| (c.release, c.machine.state()))
    }

    /// What the slots hold, as far as this machine has ordered.
    pub fn slots(&self) -> Slots {
        self.slots
    }

    /// Whether this device holds one of its site's install slots now.
    pub fn holds_site_slot(&self) -> bool {
        self.current.as_ref().is_some_and(|c| c.machine.state().holds_site_slot())
    }

    /// Whether an operator halt holds the release in progress.
    pub fn is_halted(&self) -> bool {
        self.current.as_ref().is_some_and(|c| c.machine.is_halted())
    }

    /// This device's wave in the release in progress.
    pub fn wave(&self, heard: &Heard) -> Option<usize> {
        let c = self.current.as_ref()?;
        heard.release(c.release)?.wave_of(self.id)
    }

    /// The next output, in order.
    pub fn poll_output(&mut self) -> Option<Output> {
        let output = self.outputs.pop_front();
        if output.is_none() && self.outputs.capacity() > 0 {
            // A simulator keeps a million devices: an idle one holds no buffer.
            self.outputs = VecDeque::new();
        }
        output
    }

    /// When the device next wants [`Device::handle_timeout`]; `None`: only an input can
    /// move it.
    pub fn poll_timeout(&self) -> Option<Millis> {
        self.current.as_ref().and_then(|c| c.machine.poll_timeout())
    }

    /// A release was added to `heard` (or offered again): take it up if it is
    /// admissible and better than what is in progress.
    pub fn handle_release(&mut self, now: Millis, heard: &Heard, release: ReleaseId) {
        let Some(r) = heard.release(release) else { return };
        if self.is_known(release) {
            return;
        }
        if let Err(refusal) = self.admit(now, heard, r) {
            if self.memory_mut().refused.insert(release) {
                self.outputs.push_back(Output::Audit(Audit::Refused { release, refusal }));
            }
            return;
        }
        if let Some(c) = &self.current
            && !c.machine.state().is_final()
        {
            let started_install =
                !matches!(c.machine.state(), State::Idle | State::Waiting | State::Fetching | State::Staged);
            let newer = heard.release(c.release).is_none_or(|cur| r.sequence > cur.sequence);
            let ordered = self.ordered(heard, release);
            if started_install || !(newer || ordered) {
                // It waits: picked up when the release in progress ends.
                return;
            }
            let old = c.release;
            if c.machine.state() == &State::Fetching {
                self.outputs.push_back(Output::StopFetch(old));
            }
            self.outputs.push_back(Output::Audit(Audit::Superseded { release: old, by: release }));
        }
        self.start(now, heard, release);
    }

    /// A directive for `release` was applied to `heard`: halt, resume or revoke what it
    /// concerns, and take up the release a revoke returns to.
    pub fn handle_directive(&mut self, now: Millis, heard: &Heard, directive: &VerifiedDirective) {
        let d = directive.directive();
        let standing = heard.standing(d.release);
        self.outputs.push_back(Output::Directive {
            release: d.release,
            order: d.order,
            sequence: d.sequence,
            standing,
        });
        self.catch_up(now, heard, d.release);
    }

    /// [`Heard::apply_directive`] refused `directive` as a replay: nothing changes; the
    /// refusal is audited once per release and sequence. The directive applied itself,
    /// heard again (peers re-announce what they applied, [`crate::reannounce`]), is no
    /// replay worth a row.
    pub fn handle_replayed(&mut self, directive: &VerifiedDirective, refused: Refused) {
        let d = directive.directive();
        if matches!(refused, Refused::Replayed { sequence, applied } if sequence == applied) {
            return;
        }
        let replays = &mut self.memory_mut().replays;
        if replays.len() < MAX_REPLAYS_AUDITED && replays.insert((d.release, d.sequence)) {
            let audit = Audit::DirectiveRefused { release: d.release, sequence: d.sequence, refused };
            self.outputs.push_back(Output::Audit(audit));
        }
    }

    /// Brings the device in line with where `release` stands under the directives in
    /// `heard` (a device that was offline when they came calls this when it is back).
    pub fn catch_up(&mut self, now: Millis, heard: &Heard, release: ReleaseId) {
        let standing = heard.standing(release);
        if let Some(c) = &mut self.current
            && c.release == release
        {
            if standing.revoked_to.is_some() {
                c.machine.handle_revoke(now);
            } else if c.machine.is_halted() != standing.halted {
                c.machine.handle_halt(now, standing.halted);
            }
        }
        self.after(now, heard);
        if let Some(to) = standing.revoked_to {
            self.handle_release(now, heard, to);
        }
    }

    /// A report for `release` was recorded in `heard`: its gate or a wave's success
    /// requirement may have moved.
    pub fn handle_tally(&mut self, now: Millis, heard: &Heard, release: ReleaseId) {
        if self.current.as_ref().is_some_and(|c| c.release == release) {
            self.handle_timeout(now, heard);
        }
    }

    /// How many other members of the site hold an install slot now.
    pub fn handle_site(&mut self, now: Millis, heard: &Heard, others: u32) {
        if self.site_others != others {
            self.site_others = others;
            self.handle_timeout(now, heard);
        }
    }

    /// Re-evaluates at `now` (the timeout came, or the world changed).
    pub fn handle_timeout(&mut self, now: Millis, heard: &Heard) {
        self.step(now, heard, |m, ctx| m.handle_timeout(now, ctx));
    }

    /// Every chunk of `release` is here and verified.
    pub fn handle_fetched(&mut self, now: Millis, heard: &Heard, release: ReleaseId) {
        self.step_on(release, now, heard, |m, ctx| m.handle_fetched(now, ctx));
    }

    /// The install of `release` into the inactive slot finished.
    pub fn handle_installed(
        &mut self,
        now: Millis,
        heard: &Heard,
        release: ReleaseId,
        result: Result<(), String>,
    ) {
        self.step_on(release, now, heard, |m, _| m.handle_installed(now, result));
    }

    /// The device could not install `release` now for a reason of its own (a full disk,
    /// a failed write): retried later, nothing concluded about the release.
    pub fn handle_install_deferred(&mut self, now: Millis, heard: &Heard, release: ReleaseId, why: String) {
        if self.is_current(release) {
            self.outputs.push_back(Output::Audit(Audit::InstallDeferred { release, why }));
            self.step(now, heard, |m, _| m.handle_install_deferred(now));
        }
    }

    /// The active slot now holds `release`.
    pub fn handle_activated(&mut self, now: Millis, heard: &Heard, release: ReleaseId) {
        self.step_on(release, now, heard, |m, _| m.handle_activated(now));
    }

    /// The health check of `release` finished.
    pub fn handle_health(
        &mut self,
        now: Millis,
        heard: &Heard,
        release: ReleaseId,
        result: Result<(), String>,
    ) {
        self.step_on(release, now, heard, |m, ctx| m.handle_health(now, result, ctx.expires_at));
    }

    /// Whether a revoke orders this device to `release`: the device runs a release whose
    /// revoke names `release` as the one to go back to. Only then is `release` taken up
    /// below the anti-rollback floor and past its waves; a device that has moved on to a
    /// newer release since the revoke is not sent back by it.
    fn ordered(&self, heard: &Heard, release: ReleaseId) -> bool {
        self.slots.active.is_some_and(|a| heard.standing(a.release).revoked_to == Some(release))
    }

    fn memory_mut(&mut self) -> &mut Memory {
        self.memory.get_or_insert_with(Box::default)
    }

    fn is_current(&self, release: ReleaseId) -> bool {
        self.current.as_ref().is_some_and(|c| c.release == release)
    }

    /// In progress, or running in the active slot: nothing to decide.
    fn is_known(&self, release: ReleaseId) -> bool {
        self.current.as_ref().is_some_and(|c| c.release == release && !c.machine.state().is_final())
            || self.slots.active.is_some_and(|a| a.release == release)
    }

    /// Whether this device takes up `release`. A release named by a revoke as the one
    /// to go back to may have a lower sequence than the installed one.
    fn admit(&self, now: Millis, heard: &Heard, r: &Release) -> Result<(), Refusal> {
        let id = r.id();
        let ordered = self.ordered(heard, id);
        if heard.standing(id).revoked_to.is_some() {
            return Err(Refusal::Revoked);
        }
        if let Some(expires_at) = r.expires_at.filter(|_| r.is_expired(now)) {
            return Err(Refusal::Expired { expires_at });
        }
        if self.memory.as_ref().is_some_and(|m| m.tried.contains(&id)) && !ordered {
            return Err(Refusal::RolledBackBefore);
        }
        let installed = self.slots.active.map(|a| a.sequence);
        if let Some(installed) = installed
            && r.sequence <= installed
            && !ordered
        {
            return Err(Refusal::NotNewer { sequence: r.sequence, installed });
        }
        if let Some(precursor) = r.precursor
            && installed != Some(precursor)
        {
            return Err(Refusal::WrongPrecursor { precursor, installed });
        }
        Ok(())
    }

    fn device_info(&self, release: ReleaseId) -> DeviceInfo {
        DeviceInfo { position: position(release, self.id), utc_offset_min: self.utc_offset_min }
    }

    fn start(&mut self, now: Millis, heard: &Heard, release: ReleaseId) {
        let Some(r) = heard.release(release) else { return };
        self.outputs.push_back(Output::Audit(Audit::Admitted { release, sequence: r.sequence }));
        let mut machine = Lifecycle::new(self.device_info(release), now);
        if heard.standing(release).halted {
            machine.handle_halt(now, true);
        }
        self.current = Some(Current { release, machine, persisted: None });
        self.handle_timeout(now, heard);
    }

    /// [`Device::step`] if `release` is the one in progress: a result for a release no
    /// longer in progress is ignored.
    fn step_on(
        &mut self,
        release: ReleaseId,
        now: Millis,
        heard: &Heard,
        f: impl FnOnce(&mut Lifecycle, Context<'_>),
    ) {
        if self.is_current(release) {
            self.step(now, heard, f);
        }
    }

    /// Feeds the release in progress with the context its decisions need, then drains.
    fn step(&mut self, now: Millis, heard: &Heard, f: impl FnOnce(&mut Lifecycle, Context<'_>)) {
        let ordered = self.current.as_ref().is_some_and(|c| self.ordered(heard, c.release));
        let Some(c) = &mut self.current else { return };
        let Some(r) = heard.release(c.release) else { return };
        let ctx = Context {
            release: &r.info,
            policy: &r.policy,
            tally: heard.tally(c.release),
            site_installing: self.site_others,
            ordered,
            expires_at: r.expires_at,
        };
        f(&mut c.machine, ctx);
        self.after(now, heard);
    }

    /// The drain: the new state first (write-ahead), then the machine's actions as
    /// outputs, keeping the slot view in step; a release that ended makes room for the
    /// next one.
    fn after(&mut self, now: Millis, heard: &Heard) {
        let Some(c) = &mut self.current else { return };
        let release = c.release;
        // Every change of state changes its phase (a final state never changes), so the
        // phase tells whether the state was persisted.
        if c.persisted != Some(c.machine.state().phase()) {
            let state = c.machine.state().clone();
            c.persisted = Some(state.phase());
            self.outputs.push_back(Output::Persist { release, state });
        }
        while let Some(action) = self.current.as_mut().and_then(|c| c.machine.poll_action()) {
            self.execute(heard, release, action);
        }
        let Some(c) = &self.current else { return };
        let state = c.machine.state();
        let (tried, finished) =
            (matches!(state, State::RolledBack(r) if *r != Reason::Expired), state.is_final());
        if tried {
            self.memory_mut().tried.insert(release);
        }
        if finished {
            self.next(now, heard);
        }
    }

    fn execute(&mut self, heard: &Heard, release: ReleaseId, action: Action) {
        let output = match action {
            Action::Fetch => Output::Fetch(release),
            Action::StopFetch => Output::StopFetch(release),
            Action::Install => {
                let sequence = heard.release(release).map_or(0, |r| r.sequence);
                self.slots.inactive = Some(Installed { release, sequence });
                Output::Install(release)
            }
            Action::DiscardInactive => {
                self.slots.inactive = None;
                Output::DiscardInactive
            }
            Action::Activate => {
                if self.slots.inactive.is_some_and(|s| s.release == release) {
                    std::mem::swap(&mut self.slots.active, &mut self.slots.inactive);
                }
                Output::Activate(release)
            }
            Action::RunHealthCheck => Output::RunHealthCheck(release),
            Action::Commit => Output::Commit(release),
            Action::Rollback => {
                if self.slots.active.is_none_or(|a| a.release != release) {
                    // Never switched to it (or already back): nothing to undo.
                    return;
                }
                // A revoke goes back only to the release it names. When the other slot
                // does not hold that one, the device keeps running this release until
                // the named one is installed over it, rather than switch to an empty
                // or unrelated slot.
                let to = heard.standing(release).revoked_to;
                let other = self.slots.inactive.map(|s| s.release);
                if let Some(to) = to
                    && other != Some(to)
                {
                    Output::Audit(Audit::KeepsRunning { release, until: to })
                } else {
                    self.slots.active = self.slots.inactive.take();
                    Output::Rollback(release)
                }
            }
            Action::Report(outcome) => Output::Report { release, outcome },
        };
        self.outputs.push_back(output);
    }

    /// Takes up the best admissible release heard of, if any: the highest sequence.
    fn next(&mut self, now: Millis, heard: &Heard) {
        let best = heard
            .releases()
            .filter(|r| {
                !self.is_known(r.id()) && !self.is_current(r.id()) && self.admit(now, heard, r).is_ok()
            })
            .max_by_key(|r| r.sequence)
            .map(Release::id);
        if let Some(release) = best {
            self.start(now, heard, release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directive::{DEFAULT_LIFETIME, Directive, SignedDirective};
    use crate::gate::{HealthGate, Verdict};
    use crate::manifest::UpdateKind;
    use crate::rollout::Wave;
    use crate::trust::TrustRoot;
    use crate::trust::tests::key;

    const T0: Millis = 1_700_000_000_000;

    fn release(n: u8, sequence: u64) -> Release {
        Release {
            info: ReleaseInfo {
                id: ReleaseId::from_bytes([n; 32]),
                kind: UpdateKind::Firmware,
                created_at: T0,
            },
            class: "gw".into(),
            sequence,
            precursor: None,
            expires_at: None,
            policy: RolloutPolicy::default(),
        }
    }

    fn directive(release: ReleaseId, order: Order, sequence: u64) -> VerifiedDirective {
        let d = Directive { release, order, sequence, issued_at: T0, expires_at: T0 + DEFAULT_LIFETIME };
        TrustRoot::single(key(1).public()).verify_directive(SignedDirective::sign(d, &key(1)), T0).unwrap()
    }

    fn device() -> Device {
        Device::new(DeviceId::from_bytes([7; 32]), 0, Slots::default())
    }

    fn drain(d: &mut Device) -> Vec<Output> {
        std::iter::from_fn(|| d.poll_output()).collect()
    }

    /// Executes outputs as a driver with instant, successful side effects would, until
    /// nothing is left; returns every output seen.
    fn settle(d: &mut Device, heard: &Heard, now: Millis, health: Result<(), String>) -> Vec<Output> {
        let mut seen = Vec::new();
        for _ in 0..50 {
            let outputs = drain(d);
            if outputs.is_empty() {
                break;
            }
            for o in outputs {
                match &o {
                    Output::Fetch(r) => d.handle_fetched(now, heard, *r),
                    Output::Install(r) => d.handle_installed(now, heard, *r, Ok(())),
                    Output::Activate(r) => d.handle_activated(now, heard, *r),
                    Output::RunHealthCheck(r) => d.handle_health(now, heard, *r, health.clone()),
                    _ => {}
                }
                seen.push(o);
            }
        }
        seen
    }

    fn heard_with(releases: &[Release]) -> Heard {
        let mut heard = Heard::new("gw", DirectiveBook::default());
        for r in releases {
            heard.add_release(r.clone()).unwrap();
        }
        heard
    }

    #[test]
    fn a_release_is_installed_and_committed_with_state_persisted_before_each_step() {
        let v1 = release(1, 1);
        let heard = heard_with(std::slice::from_ref(&v1));
        let mut d = device();
        d.handle_release(T0, &heard, v1.id());
        let seen = settle(&mut d, &heard, T0, Ok(()));
        let persist_before = |action: &Output, state: State| {
            let at = seen.iter().position(|o| o == action).unwrap();
            let persisted =
                seen.iter().position(|o| *o == Output::Persist { release: v1.id(), state: state.clone() });
            assert!(persisted.is_some_and(|p| p < at), "{state:?} persisted before {action:?}");
        };
        persist_before(&Output::Fetch(v1.id()), State::Fetching);
        persist_before(&Output::Install(v1.id()), State::Installing);
        persist_before(&Output::Activate(v1.id()), State::Activated);
        persist_before(&Output::Commit(v1.id()), State::Committed);
        assert_eq!(d.current(), Some((v1.id(), &State::Committed)));
        assert_eq!(d.slots().active, Some(Installed { release: v1.id(), sequence: 1 }));
    }

    #[test]
    fn a_release_revoked_before_it_was_heard_of_is_refused_and_its_target_installed() {
        let (v1, v2) = (release(1, 1), release(2, 2));
        let mut heard = heard_with(&[]);
        let revoke = directive(v2.id(), Order::Revoke { to: v1.id() }, 1);
        heard.apply_directive(&revoke).unwrap();
        let mut d = device();
        d.handle_directive(T0, &heard, &revoke);
        // The origin lists v2 first, then v1.
        heard.add_release(v2.clone()).unwrap();
        d.handle_release(T0, &heard, v2.id());
        heard.add_release(v1.clone()).unwrap();
        d.handle_release(T0, &heard, v1.id());
        let seen = settle(&mut d, &heard, T0, Ok(()));
        assert!(!seen.contains(&Output::Activate(v2.id())), "v2 never activated");
        assert_eq!(d.slots().active.map(|a| a.release), Some(v1.id()));
        let refused = |o: &Output| matches!(o, Output::Audit(Audit::Refused { release, refusal: Refusal::Revoked }) if *release == v2.id());
        assert!(
            seen.iter().any(refused)
                || drain(&mut d).iter().any(refused)
                || d.memory.as_ref().is_some_and(|m| m.refused.contains(&v2.id()))
        );
    }

    #[test]
    fn the_directive_applied_heard_again_is_not_audited_and_an_older_one_is() {
        let v1 = release(1, 1);
        let mut heard = heard_with(std::slice::from_ref(&v1));
        let mut d = device();
        let (old, new) = (directive(v1.id(), Order::Halt, 1), directive(v1.id(), Order::Resume, 2));
        for applied in [&old, &new] {
            heard.apply_directive(applied).unwrap();
            d.handle_directive(T0, &heard, applied);
        }
        drain(&mut d);
        let again = heard.apply_directive(&new).unwrap_err();
        d.handle_replayed(&new, again);
        assert!(drain(&mut d).is_empty(), "the applied directive, re-announced by a peer");
        let replayed = heard.apply_directive(&old).unwrap_err();
        d.handle_replayed(&old, replayed);
        assert!(
            drain(&mut d)
                .iter()
                .any(|o| matches!(o, Output::Audit(Audit::DirectiveRefused { sequence: 1, .. }))),
            "an older one is a replay, audited"
        );
    }

    #[test]
    fn a_revoke_after_commit_rolls_back_to_the_named_release_in_the_other_slot() {
        let (v1, v2) = (release(1, 1), release(2, 2));
        let mut heard = heard_with(std::slice::from_ref(&v1));
        let mut d = device();
        d.handle_release(T0, &heard, v1.id());
        settle(&mut d, &heard, T0, Ok(()));
        heard.add_release(v2.clone()).unwrap();
        d.handle_release(T0, &heard, v2.id());
        settle(&mut d, &heard, T0, Ok(()));
        assert_eq!(d.slots().active.map(|a| a.release), Some(v2.id()));
        let revoke = directive(v2.id(), Order::Revoke { to: v1.id() }, 1);
        heard.apply_directive(&revoke).unwrap();
        d.handle_directive(T0, &heard, &revoke);
        let seen = settle(&mut d, &heard, T0, Ok(()));
        assert!(seen.contains(&Output::Rollback(v2.id())));
        assert_eq!(d.slots().active.map(|a| a.release), Some(v1.id()));
        assert!(
            !seen.iter().any(|o| matches!(o, Output::Install(_))),
            "v1 was in the other slot: no reinstall"
        );
    }

    #[test]
    fn a_revoke_whose_target_is_not_in_the_other_slot_installs_it_over_the_revoked_one() {
        let (v0, v1) = (release(1, 1), release(2, 2));
        let mut heard = heard_with(&[v0.clone(), v1.clone()]);
        let mut d = device();
        d.handle_release(T0, &heard, v1.id());
        settle(&mut d, &heard, T0, Ok(()));
        let revoke = directive(v1.id(), Order::Revoke { to: v0.id() }, 1);
        heard.apply_directive(&revoke).unwrap();
        d.handle_directive(T0, &heard, &revoke);
        let seen = settle(&mut d, &heard, T0, Ok(()));
        assert!(!seen.contains(&Output::Rollback(v1.id())), "not switched to an empty slot");
        assert!(seen.contains(&Output::Audit(Audit::KeepsRunning { release: v1.id(), until: v0.id() })));
        assert!(seen.contains(&Output::Install(v0.id())), "the named release goes in past anti-rollback");
        assert_eq!(d.slots().active.map(|a| a.release), Some(v0.id()));
        // v1 is not taken up again.
        d.handle_release(T0, &heard, v1.id());
        assert!(!drain(&mut d).iter().any(|o| matches!(o, Output::Fetch(_) | Output::Install(_))));
    }

    #[test]
    fn a_revoke_target_is_not_taken_up_again_once_the_device_moved_past_it() {
        let (v1, v2, v3) = (release(1, 1), release(2, 2), release(3, 3));
        let mut heard = heard_with(std::slice::from_ref(&v1));
        let mut d = device();
        d.handle_release(T0, &heard, v1.id());
        settle(&mut d, &heard, T0, Ok(()));
        heard.add_release(v2.clone()).unwrap();
        d.handle_release(T0, &heard, v2.id());
        settle(&mut d, &heard, T0, Ok(()));
        let revoke = directive(v2.id(), Order::Revoke { to: v1.id() }, 1);
        heard.apply_directive(&revoke).unwrap();
        d.handle_directive(T0, &heard, &revoke);
        settle(&mut d, &heard, T0, Ok(()));
        assert_eq!(d.slots().active.map(|a| a.release), Some(v1.id()));
        // A newer release goes in; the old revoke's target must not follow it.
        heard.add_release(v3.clone()).unwrap();
        d.handle_release(T0, &heard, v3.id());
        let seen = settle(&mut d, &heard, T0, Ok(()));
        assert_eq!(d.slots().active.map(|a| a.release), Some(v3.id()));
        assert!(!seen.contains(&Output::Install(v1.id())), "v1 was not installed over v3: {seen:?}");
        // A revoke of v3 back to v1 rolls back to the other slot.
        let revoke = directive(v3.id(), Order::Revoke { to: v1.id() }, 1);
        heard.apply_directive(&revoke).unwrap();
        d.handle_directive(T0, &heard, &revoke);
        let seen = settle(&mut d, &heard, T0, Ok(()));
        assert!(seen.contains(&Output::Rollback(v3.id())));
        assert_eq!(d.slots().active.map(|a| a.release), Some(v1.id()));
    }

    #[test]
    fn admission_rules() {
        let heard = heard_with(&[release(1, 5)]);
        let r = heard.release(ReleaseId::from_bytes([1; 32])).unwrap();
        let on = |sequence| {
            let installed = Installed { release: ReleaseId::from_bytes([9; 32]), sequence };
            Device::new(DeviceId::from_bytes([7; 32]), 0, Slots { active: Some(installed), inactive: None })
        };
        on(4).admit(T0, &heard, r).unwrap();
        assert!(matches!(on(5).admit(T0, &heard, r), Err(Refusal::NotNewer { .. })));
        let mut tried = on(4);
        tried.memory_mut().tried.insert(r.id());
        assert_eq!(tried.admit(T0, &heard, r), Err(Refusal::RolledBackBefore));
        let mut delta = r.clone();
        delta.precursor = Some(3);
        assert!(matches!(on(4).admit(T0, &heard, &delta), Err(Refusal::WrongPrecursor { .. })));
        let mut expiring = r.clone();
        expiring.expires_at = Some(T0);
        assert_eq!(on(4).admit(T0, &heard, &expiring), Err(Refusal::Expired { expires_at: T0 }));
        let mut other = heard_with(&[]);
        let mut foreign = release(3, 1);
        foreign.class = "other".into();
        assert!(matches!(other.add_release(foreign), Err(Refusal::OtherClass { .. })));
    }

    #[test]
    fn a_manifest_that_expires_while_waiting_for_its_wave_is_never_fetched() {
        let mut v1 = release(1, 1);
        v1.policy.waves = vec![
            Wave { percent: 0.001, after_s: 0, require_success: None, require_reports: 0 },
            Wave { percent: 100.0, after_s: 40, require_success: None, require_reports: 0 },
        ];
        v1.expires_at = Some(T0 + 20_000);
        let heard = heard_with(std::slice::from_ref(&v1));
        let mut d = device();
        d.handle_release(T0, &heard, v1.id());
        assert!(!settle(&mut d, &heard, T0, Ok(())).contains(&Output::Fetch(v1.id())));
        let wake = d.poll_timeout().unwrap();
        assert_eq!(wake, T0 + 40_000);
        d.handle_timeout(wake, &heard);
        let seen = settle(&mut d, &heard, wake, Ok(()));
        assert!(!seen.contains(&Output::Fetch(v1.id())));
        assert_eq!(d.current(), Some((v1.id(), &State::RolledBack(Reason::Expired))));
    }

    #[test]
    fn a_manifest_that_expires_during_the_health_check_is_rolled_back_not_committed() {
        let mut v1 = release(1, 1);
        v1.expires_at = Some(T0 + 1_000);
        let heard = heard_with(std::slice::from_ref(&v1));
        let mut d = device();
        d.handle_release(T0, &heard, v1.id());
        let mut seen = Vec::new();
        for o in drain(&mut d) {
            if o == Output::Fetch(v1.id()) {
                d.handle_fetched(T0, &heard, v1.id());
            }
            seen.push(o);
        }
        for o in drain(&mut d) {
            if o == Output::Install(v1.id()) {
                d.handle_installed(T0, &heard, v1.id(), Ok(()));
            }
        }
        for o in drain(&mut d) {
            if o == Output::Activate(v1.id()) {
                d.handle_activated(T0, &heard, v1.id());
            }
        }
        let _ = drain(&mut d);
        d.handle_health(T0 + 1_000, &heard, v1.id(), Ok(()));
        let out = drain(&mut d);
        assert!(out.contains(&Output::Rollback(v1.id())));
        assert!(!out.contains(&Output::Commit(v1.id())));
    }

    #[test]
    fn install_slots_are_held_from_install_to_the_end_of_the_health_check() {
        let mut v1 = release(1, 1);
        v1.policy.max_concurrent_per_site = Some(1);
        let heard = heard_with(std::slice::from_ref(&v1));
        let mut d = device();
        d.handle_site(T0, &heard, 1);
        d.handle_release(T0, &heard, v1.id());
        let _ = drain(&mut d);
        d.handle_fetched(T0, &heard, v1.id());
        assert_eq!(d.current().map(|c| c.1.clone()), Some(State::Staged), "another member holds the slot");
        assert!(!d.holds_site_slot());
        d.handle_site(T0 + 1, &heard, 0);
        assert!(drain(&mut d).contains(&Output::Install(v1.id())));
        assert!(d.holds_site_slot());
        d.handle_installed(T0 + 2, &heard, v1.id(), Ok(()));
        let _ = drain(&mut d);
        assert!(d.holds_site_slot(), "activated");
        d.handle_activated(T0 + 3, &heard, v1.id());
        assert!(d.holds_site_slot(), "checking");
        d.handle_health(T0 + 4, &heard, v1.id(), Ok(()));
        assert!(!d.holds_site_slot(), "committed: the slot is free");
    }

    #[test]
    fn a_breached_gate_in_heard_keeps_a_staged_device_from_installing() {
        let mut v1 = release(1, 1);
        v1.policy.gate = Some(HealthGate { max_failure_ratio: 0.0, min_reports: 1 });
        let mut heard = heard_with(std::slice::from_ref(&v1));
        let mut d = device();
        d.handle_release(T0, &heard, v1.id());
        let _ = drain(&mut d);
        let reporter = DeviceId::from_bytes([3; 32]);
        assert_eq!(heard.record_report(reporter, v1.id(), 1, Verdict::Failure), Some(Recorded::New));
        d.handle_tally(T0, &heard, v1.id());
        d.handle_fetched(T0, &heard, v1.id());
        assert!(!drain(&mut d).contains(&Output::Install(v1.id())));
        assert!(heard.gate_breached(v1.id()));
    }

    #[test]
    fn a_halt_holds_the_release_and_a_resume_lets_it_go() {
        let v1 = release(1, 1);
        let mut heard = heard_with(std::slice::from_ref(&v1));
        let halt = directive(v1.id(), Order::Halt, 1);
        heard.apply_directive(&halt).unwrap();
        let mut d = device();
        d.handle_directive(T0, &heard, &halt);
        d.handle_release(T0, &heard, v1.id());
        assert!(!settle(&mut d, &heard, T0, Ok(())).contains(&Output::Fetch(v1.id())));
        let resume = directive(v1.id(), Order::Resume, 2);
        heard.apply_directive(&resume).unwrap();
        d.handle_directive(T0 + 1, &heard, &resume);
        d.handle_timeout(T0 + 1, &heard);
        assert!(settle(&mut d, &heard, T0 + 1, Ok(())).contains(&Output::Commit(v1.id())));
        assert!(heard.apply_directive(&halt).is_err(), "a replayed halt is refused by the book");
    }

    #[test]
    fn a_newer_release_waits_while_one_installs_then_goes() {
        let (v1, v2) = (release(1, 1), release(2, 2));
        let mut heard = heard_with(std::slice::from_ref(&v1));
        let mut d = device();
        d.handle_release(T0, &heard, v1.id());
        let _ = drain(&mut d);
        d.handle_fetched(T0, &heard, v1.id());
        assert!(drain(&mut d).contains(&Output::Install(v1.id())));
        heard.add_release(v2.clone()).unwrap();
        d.handle_release(T0, &heard, v2.id());
        assert!(drain(&mut d).is_empty(), "v1 is installing: v2 waits");
        d.handle_installed(T0, &heard, v1.id(), Ok(()));
        let _ = drain(&mut d);
        d.handle_activated(T0, &heard, v1.id());
        let _ = drain(&mut d);
        d.handle_health(T0, &heard, v1.id(), Ok(()));
        let out = drain(&mut d);
        assert!(out.contains(&Output::Commit(v1.id())));
        assert!(out.contains(&Output::Fetch(v2.id())), "v2 starts once v1 ended: {out:?}");
    }

    #[test]
    fn an_install_the_disk_could_not_take_is_retried_with_backoff_not_failed() {
        let v1 = release(1, 1);
        let heard = heard_with(std::slice::from_ref(&v1));
        let mut d = device();
        d.handle_release(T0, &heard, v1.id());
        let _ = drain(&mut d);
        d.handle_fetched(T0, &heard, v1.id());
        assert!(drain(&mut d).contains(&Output::Install(v1.id())));
        d.handle_install_deferred(T0, &heard, v1.id(), "No space left on device".into());
        let out = drain(&mut d);
        assert!(out.contains(&Output::DiscardInactive));
        assert!(
            !out.iter().any(|o| matches!(o, Output::Report { .. })),
            "nothing concluded about the release"
        );
        assert_eq!(d.current().map(|c| c.1.clone()), Some(State::Staged));
        assert_eq!(d.poll_timeout(), Some(T0 + 10_000));
        // Woken early (a site slot freed): it still waits for its retry.
        d.handle_timeout(T0 + 5_000, &heard);
        assert!(drain(&mut d).is_empty());
        d.handle_timeout(T0 + 10_000, &heard);
        assert!(drain(&mut d).contains(&Output::Install(v1.id())), "tried again");
        d.handle_install_deferred(T0 + 10_000, &heard, v1.id(), "still full".into());
        let _ = drain(&mut d);
        assert_eq!(d.poll_timeout(), Some(T0 + 30_000), "the second wait is twice the first");
        d.handle_timeout(T0 + 30_000, &heard);
        let _ = drain(&mut d);
        d.handle_installed(T0 + 30_000, &heard, v1.id(), Ok(()));
        let _ = settle(&mut d, &heard, T0 + 30_000, Ok(()));
        assert_eq!(d.current().map(|c| c.1.clone()), Some(State::Committed), "space came back: installed");
    }

    #[test]
    fn a_failed_release_is_not_retried() {
        let v1 = release(1, 1);
        let heard = heard_with(std::slice::from_ref(&v1));
        let mut d = device();
        d.handle_release(T0, &heard, v1.id());
        settle(&mut d, &heard, T0, Err("exit 1".into()));
        assert!(matches!(d.current(), Some((_, State::RolledBack(Reason::HealthCheckFailed(_))))));
        d.handle_release(T0 + 1, &heard, v1.id());
        assert!(
            drain(&mut d).iter().any(|o| matches!(
                o,
                Output::Audit(Audit::Refused { refusal: Refusal::RolledBackBefore, .. })
            ))
        );
    }

    #[test]
    fn restore_after_a_crash_mid_install_discards_and_installs_again() {
        let v1 = release(1, 1);
        let heard = heard_with(std::slice::from_ref(&v1));
        let slots = Slots { active: None, inactive: Some(Installed { release: v1.id(), sequence: 1 }) };
        let mut d = Device::restore(
            T0,
            &heard,
            DeviceId::from_bytes([7; 32]),
            0,
            slots,
            [],
            Some((v1.id(), State::Installing)),
        );
        let out = settle(&mut d, &heard, T0, Ok(()));
        let discard = out.iter().position(|o| *o == Output::DiscardInactive).unwrap();
        let install = out.iter().position(|o| *o == Output::Install(v1.id())).unwrap();
        assert!(discard < install);
        assert_eq!(d.current(), Some((v1.id(), &State::Committed)));
    }
}
