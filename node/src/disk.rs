//! The device's disk: the state database, the A/B slots and the hooks. It executes the
//! side effects the core device machine ([`otamesh_core::device`]) asks for, on a
//! worker thread of its own, because they block: an fsync, assembling a payload,
//! an install hook or a health check that may run for minutes.
//!
//! The event loop owns the machine and sends [`Effect`]s here in the order the machine
//! emitted them; this worker executes them one after another, in that order, so a state
//! is always persisted before its side effects run (the core's drain rule). Results that
//! the machine waits for come back as [`Done`].
//!
//! **Goals:** the event loop never waits for the disk or a hook; a failing disk is
//! logged and the device reports the failure instead of stopping.
//! **Non-goals:** deciding anything: what to install, when, and what a failure means are
//! the core's.

use std::path::Path;

use otamesh_core::device::{Installed, Slots as SlotView};
use otamesh_core::directive::{DirectiveBook, Standing};
use otamesh_core::lifecycle::State;
use otamesh_core::{Manifest, Millis, ReleaseId};

use crate::db::{Db, DbError, ReleaseRecord, SlotContent};
use crate::hooks::{Hook, HookEnv};
use crate::slots::{Slot, SlotError, Slots};
use crate::store::{Store, StoreError};

/// Why the disk could not be opened or an effect not executed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiskError {
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

/// The hooks a device runs.
#[derive(Debug, Clone, Default)]
pub struct Hooks {
    /// Runs after the payload is assembled into the inactive slot.
    pub install: Option<Hook>,
    /// Runs after the switch; exit 0 commits, anything else rolls back.
    pub health_check: Option<Hook>,
}

/// A side effect for the worker, in the machine's order.
#[derive(Debug)]
pub enum Effect {
    /// Write a release's new state (write-ahead) with its audit row.
    Persist(ReleaseRecord),
    /// Record where a release stands after a directive, with its audit row.
    Directive {
        /// The release.
        release: ReleaseId,
        /// Where it stands now.
        standing: Standing,
        /// The audit text.
        detail: String,
    },
    /// Append an audit row.
    Audit {
        /// The event name.
        event: &'static str,
        /// The release it concerns.
        release: ReleaseId,
        /// The audit text.
        detail: String,
    },
    /// Assemble the release into the inactive slot and run the install hook.
    Install(ReleaseId, Box<Manifest>),
    /// Throw away the inactive slot.
    DiscardInactive,
    /// Switch to the slot holding the release.
    Activate(ReleaseId),
    /// Run the health check on the active slot.
    RunHealthCheck(ReleaseId, Box<Manifest>),
    /// Switch back to the other slot and discard this release's slot, if it is active.
    Rollback(ReleaseId),
}

/// A result the machine waits for, or news for `/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// The install finished: done, or failed because of the release (the install hook
    /// said no, the payload does not match its digest).
    Installed(ReleaseId, Result<(), String>),
    /// The device could not do the install for a reason of its own (a full disk, a
    /// failed write): it is retried later.
    InstallDeferred(ReleaseId, String),
    /// The switch is done.
    Activated(ReleaseId),
    /// The health check finished.
    Health(ReleaseId, Result<(), String>),
    /// What the slots hold now (after any effect that changed them).
    Slots(SlotContents),
}

/// What the two slots hold, for status output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotContents {
    /// The slot the device runs.
    pub active: Option<SlotContent>,
    /// The other slot.
    pub inactive: Option<SlotContent>,
}

impl SlotContents {
    /// The machine's view of the same slots.
    pub fn view(&self) -> SlotView {
        let installed = |c: &SlotContent| Installed { release: c.release_id, sequence: c.sequence };
        SlotView {
            active: self.active.as_ref().map(installed),
            inactive: self.inactive.as_ref().map(installed),
        }
    }
}

/// What the disk held at start: what the machine is rebuilt from.
#[derive(Debug, Clone, Default)]
pub struct Restored {
    /// The slots.
    pub slots: SlotContents,
    /// Releases rolled back on this device before (not retried).
    pub tried: Vec<ReleaseId>,
    /// The release worked on last, with the state last persisted.
    pub last: Option<(ReleaseId, State)>,
    /// The directives applied before.
    pub directives: DirectiveBook,
    /// Every release the device handled before (admitted or refused and audited).
    pub handled: Vec<ReleaseId>,
}

/// The database, the slots and the hooks. See the module docs.
#[derive(Debug)]
pub struct Disk {
    db: Db,
    slots: Slots,
    store: Store,
    hooks: Hooks,
}

impl Disk {
    /// Opens `data`'s state database and slots at `now`, and reads what the machine is
    /// rebuilt from.
    pub fn open(data: &Path, store: Store, hooks: Hooks, now: Millis) -> Result<(Self, Restored), DiskError> {
        // A missing or corrupt database is rebuilt from the slots (which keep their
        // manifests), so the anti-rollback floor survives it.
        let (db, _rebuilt) = crate::db::open_or_rebuild(data, now)?;
        let slots = Slots::open(data.join("slots"))?;
        let disk = Self { db, slots, store, hooks };
        let records = disk.db.releases()?;
        let restored = Restored {
            slots: disk.contents()?,
            tried: records
                .iter()
                .filter(|r| matches!(r.state, State::RolledBack(_)))
                .map(|r| r.release)
                .collect(),
            last: records
                .iter()
                .max_by_key(|r| (r.updated_at, r.sequence))
                .map(|r| (r.release, r.state.clone())),
            directives: disk.db.directives()?.into_iter().collect(),
            handled: records.iter().map(|r| r.release).collect(),
        };
        Ok((disk, restored))
    }

    /// What the slots hold.
    pub fn contents(&self) -> Result<SlotContents, DiskError> {
        let active = self.slots.active()?;
        Ok(SlotContents {
            active: self.db.slot(active.name())?,
            inactive: self.db.slot(active.other().name())?,
        })
    }

    /// Executes one effect; returns what the machine waits for, if anything.
    pub fn execute(&mut self, now: Millis, effect: Effect) -> Result<Option<Done>, DiskError> {
        Ok(match effect {
            Effect::Persist(record) => {
                self.db.transition(now, &record, "")?;
                None
            }
            Effect::Directive { release, standing, detail } => {
                self.db.apply_directive(now, release, &standing, &detail)?;
                None
            }
            Effect::Audit { event, release, detail } => {
                self.db.audit(now, event, Some(release), &detail)?;
                None
            }
            Effect::Install(release, manifest) => Some(match self.install(&manifest, release) {
                Ok(()) => Done::Installed(release, Ok(())),
                Err(Failure::Release(why)) => Done::Installed(release, Err(why)),
                Err(Failure::Device(why)) => Done::InstallDeferred(release, why),
            }),
            Effect::DiscardInactive => {
                let inactive = self.slots.inactive()?;
                self.slots.discard(inactive)?;
                self.db.clear_slot(inactive.name())?;
                None
            }
            Effect::Activate(release) => {
                if let Some(slot) = self.slot_holding(release)? {
                    self.slots.switch_to(slot)?;
                }
                Some(Done::Activated(release))
            }
            Effect::RunHealthCheck(release, manifest) => {
                let active = self.slots.active()?;
                let result = match &self.hooks.health_check {
                    None => Ok(()),
                    Some(hook) => run_hook(hook, "health", &self.slots.path(active), release, &manifest),
                };
                Some(Done::Health(release, result))
            }
            Effect::Rollback(release) => {
                let active = self.slots.active()?;
                if self.db.slot(active.name())?.is_some_and(|c| c.release_id == release) {
                    self.slots.switch_to(active.other())?;
                    self.slots.discard(active)?;
                    self.db.clear_slot(active.name())?;
                }
                None
            }
        })
    }

    fn slot_holding(&self, id: ReleaseId) -> Result<Option<Slot>, DiskError> {
        for s in [Slot::A, Slot::B] {
            if self.db.slot(s.name())?.is_some_and(|c| c.release_id == id) {
                return Ok(Some(s));
            }
        }
        Ok(None)
    }

    /// Assembles into the inactive slot, records it, runs the install hook. Only the
    /// hook's verdict and a payload that does not match its digest fail the release; a
    /// write that fails (a full disk) is the device's problem, retried later.
    fn install(&mut self, manifest: &Manifest, id: ReleaseId) -> Result<(), Failure> {
        let slot = self.slots.assemble(&self.store, manifest).map_err(|e| match e {
            SlotError::DigestMismatch { .. } => Failure::Release(e.to_string()),
            other => Failure::Device(other.to_string()),
        })?;
        let content =
            SlotContent { release_id: id, sequence: manifest.sequence, version: manifest.version.clone() };
        self.db.set_slot(slot.name(), &content).map_err(|e| Failure::Device(e.to_string()))?;
        if let Some(hook) = &self.hooks.install {
            run_hook(hook, "install", &self.slots.path(slot), id, manifest).map_err(Failure::Release)?;
        }
        Ok(())
    }

    /// The database, for tests and the audit command.
    pub fn db(&self) -> &Db {
        &self.db
    }
}

/// Why an install did not happen.
enum Failure {
    /// The release failed: it is not retried.
    Release(String),
    /// The device could not do it now: retried.
    Device(String),
}

/// Runs `disk` on its own thread: executes effects in order, hands results and slot
/// changes to `out` (which returns false once the node is gone). Ends when the effect
/// channel closes, after the effect in progress (a hook is not interrupted half-way;
/// its state is persisted).
pub fn spawn(
    mut disk: Disk,
    effects: std::sync::mpsc::Receiver<Effect>,
    mut out: impl FnMut(Done) -> bool + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut shown = disk.contents().unwrap_or_default();
        while let Ok(effect) = effects.recv() {
            // What the machine waits for when the disk fails: the failure as the result.
            let on_error = match &effect {
                Effect::Install(release, _) => Some((*release, true)),
                Effect::RunHealthCheck(release, _) => Some((*release, false)),
                _ => None,
            };
            let done = match disk.execute(crate::clock::now_ms(), effect) {
                Ok(done) => done,
                Err(e) => {
                    tracing::error!(error = %e, "device state could not be updated");
                    on_error.map(|(release, install)| match install {
                        true => Done::InstallDeferred(release, e.to_string()),
                        false => Done::Health(release, Err(e.to_string())),
                    })
                }
            };
            if let Some(done) = done
                && !out(done)
            {
                return;
            }
            match disk.contents() {
                Ok(now) if now != shown => {
                    shown = now.clone();
                    if !out(Done::Slots(now)) {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "slots unreadable"),
            }
        }
    })
}

/// Runs `hook` for `manifest` in `slot`; the error is the one-line reason.
fn run_hook(hook: &Hook, phase: &str, slot: &Path, id: ReleaseId, manifest: &Manifest) -> Result<(), String> {
    let release = id.to_hex();
    let env =
        HookEnv { phase, slot, release: &release, version: &manifest.version, sequence: manifest.sequence };
    hook.run(env).map_err(|e| e.to_string())
}
