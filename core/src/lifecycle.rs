//! The per-device state machine for one release.
//!
//! ```text
//! Idle -> Waiting -> Fetching -> Staged -> Installing -> Activated -> Checking -> Committed
//!            |           |          |           |             |            |
//!            +-----------+----------+-----------+-------------+------------+--> RolledBack(reason)
//! ```
//!
//! The machine has the sans-IO shape: `handle_*(now, ..)` methods feed it what
//! happened, [`Lifecycle::poll_action`] drains what it wants done, and
//! [`Lifecycle::poll_timeout`] says when it next wants [`Lifecycle::handle_timeout`].
//!
//! **Drain rule:** after every `handle_*` call, the driver first persists
//! [`Lifecycle::state`] (write-ahead), then drains and executes every action, before
//! feeding the next input. Because the state is persisted before its side effects run,
//! [`Lifecycle::recover`] can always tell what may have been half done after a crash:
//!
//! | state at crash | on restart |
//! |---|---|
//! | Idle, Waiting | decide again |
//! | Fetching | fetch again (verified chunks are kept) |
//! | Staged | wait for an install slot again |
//! | Installing | discard the half-written inactive slot, back to Staged |
//! | Activated | switch to the new slot again (idempotent), then check |
//! | Checking | the new version may have caused the crash: roll back |
//! | RolledBack after a failed install | discard the inactive slot again |
//! | RolledBack otherwise | roll back again (the switch may not have happened) |
//! | Committed | nothing to do |
//!
//! Drivers execute [`Action::Rollback`] and [`Action::DiscardInactive`] idempotently:
//! a rollback when the release is not the active one changes nothing.
//!
//! The active slot is only ever changed by [`Action::Activate`] and
//! [`Action::Rollback`], both atomic switches, so it is never half-written.

use std::collections::VecDeque;

use crate::Millis;
use crate::gate::Tally;
use crate::manifest::Manifest;
use crate::report::Outcome;
use crate::rollout::{Decision, DeviceInfo, ReleaseInfo, RolloutPolicy, decide};

/// Where a device stands with one release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Admitted, not yet evaluated.
    Idle,
    /// Waiting for its wave, the window, earlier waves' reports, or a halt to lift.
    Waiting,
    /// Bringing the release's chunks onto the device.
    Fetching,
    /// Every chunk is here and verified; waiting for an install slot.
    Staged,
    /// Writing the inactive slot.
    Installing,
    /// The active slot was switched to the new version; not yet health-checked.
    Activated,
    /// The health check is running.
    Checking,
    /// The health check passed; the new version stays.
    Committed,
    /// The release was abandoned or undone.
    RolledBack(Reason),
}

/// Why a release ended in [`State::RolledBack`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Installing into the inactive slot failed; the active slot was never touched.
    InstallFailed(String),
    /// The health check failed on the new version.
    HealthCheckFailed(String),
    /// The device crashed or lost power while the health check ran.
    CrashedDuringCheck,
    /// A signed revoke directive ordered it.
    Revoked,
}

impl State {
    /// A short lowercase name, for status output and metrics labels.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Waiting => "waiting",
            Self::Fetching => "fetching",
            Self::Staged => "staged",
            Self::Installing => "installing",
            Self::Activated => "activated",
            Self::Checking => "checking",
            Self::Committed => "committed",
            Self::RolledBack(_) => "rolled_back",
        }
    }

    /// Committed or rolled back: nothing more will happen.
    pub fn is_final(&self) -> bool {
        matches!(self, Self::Committed | Self::RolledBack(_))
    }
}

impl Reason {
    /// A one-line description, as reports carry it.
    pub fn describe(&self) -> String {
        match self {
            Self::InstallFailed(why) => format!("install failed: {why}"),
            Self::HealthCheckFailed(why) => format!("health check failed: {why}"),
            Self::CrashedDuringCheck => "crashed during health check".to_owned(),
            Self::Revoked => "revoked by directive".to_owned(),
        }
    }
}

/// What the machine wants the driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Action {
    /// Start or resume bringing the chunks here; report back with `handle_fetched`.
    Fetch,
    /// Stop fetching this release.
    StopFetch,
    /// Assemble the payload into the inactive slot, check its digest, run the install
    /// hook; report back with `handle_installed`.
    Install,
    /// Throw away whatever is in the inactive slot.
    DiscardInactive,
    /// Atomically make the inactive slot active; report back with `handle_activated`.
    Activate,
    /// Run the health check on the new version; report back with `handle_health`.
    RunHealthCheck,
    /// Make the new version permanent; keep the previous slot for a later rollback.
    Commit,
    /// Atomically make the previous slot active again.
    Rollback,
    /// Sign and send a status report.
    Report(Outcome),
}

/// What the rest of the world looks like when the machine decides. The release and
/// policy live here rather than in the machine, so a simulator can keep a million
/// machines that share one policy.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The release.
    pub release: &'a ReleaseInfo,
    /// Its rollout policy, from the signed manifest.
    pub policy: &'a RolloutPolicy,
    /// Outcome reports heard for this release.
    pub tally: &'a Tally,
    /// Devices of this site installing right now (this device excluded).
    pub site_installing: u32,
    /// A signed revoke names this release as the one to go back to: it goes now, past
    /// waves, windows and the health gate (a halt and the site's install limit hold).
    pub ordered: bool,
}

/// One device's progress through one release. See the module docs for the drain rule.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    device: DeviceInfo,
    state: State,
    halted: bool,
    wake_at: Option<Millis>,
    actions: VecDeque<Action>,
}

impl Lifecycle {
    /// A fresh machine for an admitted release; it wants a timeout at `now`.
    pub fn new(device: DeviceInfo, now: Millis) -> Self {
        Self::with_state(device, State::Idle, now)
    }

    /// The release info, device info and policy of a manifest, for [`Lifecycle::new`].
    pub fn inputs(
        manifest: &Manifest,
        release_id: crate::ReleaseId,
        device: crate::DeviceId,
        utc_offset_min: i16,
    ) -> (ReleaseInfo, DeviceInfo) {
        let release = ReleaseInfo { id: release_id, kind: manifest.kind, created_at: manifest.created_at };
        let device = DeviceInfo { position: crate::rollout::position(release_id, device), utc_offset_min };
        (release, device)
    }

    /// Rebuilds a machine after a crash from its last persisted state (see the table in
    /// the module docs). Drain actions before anything else.
    pub fn recover(device: DeviceInfo, state: State, now: Millis) -> Self {
        let mut m = Self::with_state(device, state.clone(), now);
        m.wake_at = None;
        match state {
            State::Idle | State::Waiting | State::Staged => m.wake_at = Some(now),
            State::Fetching => m.actions.push_back(Action::Fetch),
            State::Installing => {
                m.actions.push_back(Action::DiscardInactive);
                m.state = State::Staged;
                m.wake_at = Some(now);
            }
            State::Activated => m.actions.push_back(Action::Activate),
            State::Checking => m.roll_back(Reason::CrashedDuringCheck),
            // The state is persisted before its side effects run, so they may not have
            // happened: repeat them. Both are idempotent for the driver.
            State::RolledBack(Reason::InstallFailed(_)) => m.actions.push_back(Action::DiscardInactive),
            State::RolledBack(_) => m.actions.push_back(Action::Rollback),
            State::Committed => {}
        }
        m
    }

    fn with_state(device: DeviceInfo, state: State, now: Millis) -> Self {
        Self { device, state, halted: false, wake_at: Some(now), actions: VecDeque::new() }
    }

    /// The current state; persist it after every `handle_*` call.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The device's wave under `policy`, `None` when the release skips waves or has none.
    pub fn wave(&self, policy: &RolloutPolicy, release: &ReleaseInfo) -> Option<usize> {
        policy.wave_of(release.kind, self.device.position)
    }

    /// Whether an operator halt holds this machine.
    pub fn is_halted(&self) -> bool {
        self.halted
    }

    /// The next action to execute, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When the machine next wants [`Lifecycle::handle_timeout`]. `None`: only a new
    /// input (reports, a site install ending, a directive) can move it.
    pub fn poll_timeout(&self) -> Option<Millis> {
        self.wake_at
    }

    /// Re-evaluates at `now`. Call it at [`Lifecycle::poll_timeout`], and whenever the
    /// tally or the number of installing site members changed; it is cheap and
    /// idempotent.
    pub fn handle_timeout(&mut self, now: Millis, ctx: Context<'_>) {
        self.wake_at = None;
        match self.state {
            State::Idle | State::Waiting => {
                self.state = State::Waiting;
                if self.halted {
                    return;
                }
                let decision = if ctx.ordered {
                    Decision::Go
                } else {
                    decide(ctx.policy, ctx.release, &self.device, now, ctx.tally)
                };
                match decision {
                    Decision::Go => {
                        self.state = State::Fetching;
                        self.actions.push_back(Action::Fetch);
                    }
                    Decision::WaitUntil(at) => self.wake_at = Some(at),
                    Decision::WaitForReports | Decision::Halted => {}
                }
            }
            State::Staged => {
                let gate_breached =
                    !ctx.ordered && ctx.policy.gate.as_ref().is_some_and(|g| g.breached(ctx.tally));
                if self.halted || gate_breached || !ctx.policy.may_install(ctx.site_installing) {
                    return;
                }
                self.state = State::Installing;
                self.actions.push_back(Action::Install);
            }
            _ => {}
        }
    }

    /// Every chunk is on the device and verified.
    pub fn handle_fetched(&mut self, now: Millis, ctx: Context<'_>) {
        if self.state != State::Fetching {
            return;
        }
        self.state = State::Staged;
        self.handle_timeout(now, ctx);
    }

    /// The install into the inactive slot finished (digest checked, hook run).
    pub fn handle_installed(&mut self, _now: Millis, result: Result<(), String>) {
        if self.state != State::Installing {
            return;
        }
        match result {
            Ok(()) => {
                self.state = State::Activated;
                self.actions.push_back(Action::Activate);
            }
            Err(why) => {
                self.actions.push_back(Action::DiscardInactive);
                let reason = Reason::InstallFailed(why);
                self.actions.push_back(Action::Report(Outcome::Failed { reason: reason.describe() }));
                self.state = State::RolledBack(reason);
            }
        }
    }

    /// The active slot now holds the new version.
    pub fn handle_activated(&mut self, _now: Millis) {
        if self.state != State::Activated {
            return;
        }
        self.state = State::Checking;
        self.actions.push_back(Action::RunHealthCheck);
    }

    /// The health check finished.
    pub fn handle_health(&mut self, _now: Millis, result: Result<(), String>) {
        if self.state != State::Checking {
            return;
        }
        match result {
            Ok(()) => {
                self.state = State::Committed;
                self.actions.push_back(Action::Commit);
                self.actions.push_back(Action::Report(Outcome::Committed));
            }
            Err(why) => self.roll_back(Reason::HealthCheckFailed(why)),
        }
    }

    /// An operator halt (`true`) or resume (`false`) for this release. A halt stops new
    /// fetches and installs; what is already installing finishes.
    pub fn handle_halt(&mut self, now: Millis, halted: bool) {
        self.halted = halted;
        if !halted && matches!(self.state, State::Idle | State::Waiting | State::Staged) {
            self.wake_at = Some(now);
        }
    }

    /// A verified revoke for this release: undo it wherever the device stands.
    pub fn handle_revoke(&mut self, _now: Millis) {
        match self.state {
            State::Idle | State::Waiting | State::Staged => self.state = State::RolledBack(Reason::Revoked),
            State::Fetching => {
                self.actions.push_back(Action::StopFetch);
                self.state = State::RolledBack(Reason::Revoked);
            }
            State::Installing => {
                self.actions.push_back(Action::DiscardInactive);
                self.state = State::RolledBack(Reason::Revoked);
            }
            State::Activated | State::Checking | State::Committed => self.roll_back(Reason::Revoked),
            State::RolledBack(_) => {}
        }
        self.wake_at = None;
    }

    fn roll_back(&mut self, reason: Reason) {
        self.actions.push_back(Action::Rollback);
        let revoked = reason == Reason::Revoked;
        self.actions.push_back(Action::Report(Outcome::RolledBack { reason: reason.describe(), revoked }));
        self.state = State::RolledBack(reason);
    }
}

/// Why a verified manifest is not taken up by a device.
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
}

/// What a device knows about itself when a manifest arrives.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// Its device class.
    pub class: &'a str,
    /// The sequence of the release it runs, if any.
    pub installed: Option<u64>,
    /// A verified revoke names this release as the one to go back to.
    pub revoke_target: bool,
    /// This device already rolled this release back.
    pub rolled_back_before: bool,
}

/// Whether a device takes up `manifest`. A release named by a verified revoke as the
/// one to go back to may have a lower sequence than the installed one.
pub fn admit(manifest: &Manifest, facts: &Facts<'_>) -> Result<(), Refusal> {
    let Facts { class, installed, revoke_target, rolled_back_before } = *facts;
    if manifest.class != class {
        return Err(Refusal::OtherClass { manifest: manifest.class.clone(), device: class.to_owned() });
    }
    if rolled_back_before && !revoke_target {
        return Err(Refusal::RolledBackBefore);
    }
    if let Some(installed) = installed
        && manifest.sequence <= installed
        && !revoke_target
    {
        return Err(Refusal::NotNewer { sequence: manifest.sequence, installed });
    }
    if let Some(precursor) = manifest.precursor
        && installed != Some(precursor)
    {
        return Err(Refusal::WrongPrecursor { precursor, installed });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::{HealthGate, Verdict};
    use crate::manifest::UpdateKind;
    use crate::rollout::Wave;
    use crate::{DeviceId, ReleaseId};

    const T0: Millis = 1_700_000_000_000;

    fn device(position: u32) -> DeviceInfo {
        DeviceInfo { position, utc_offset_min: 0 }
    }

    fn drain(m: &mut Lifecycle) -> Vec<Action> {
        std::iter::from_fn(|| m.poll_action()).collect()
    }

    static RELEASE: ReleaseInfo =
        ReleaseInfo { id: ReleaseId::from_bytes([1; 32]), kind: UpdateKind::Firmware, created_at: T0 };

    fn ctx<'a>(policy: &'a RolloutPolicy, tally: &'a Tally) -> Context<'a> {
        Context { release: &RELEASE, policy, tally, site_installing: 0, ordered: false }
    }

    /// Drives a machine through a whole install with the given health result, as a
    /// driver would: advance to each timeout, execute actions, feed results back.
    fn run(m: &mut Lifecycle, health: Result<(), String>) -> Vec<Action> {
        let tally = Tally::default();
        let policy = RolloutPolicy::default();
        let mut seen = Vec::new();
        let mut now = T0;
        for _ in 0..10 {
            if let Some(t) = m.poll_timeout() {
                now = now.max(t);
                m.handle_timeout(now, ctx(&policy, &tally));
            }
            for a in drain(m) {
                match &a {
                    Action::Fetch => m.handle_fetched(now, ctx(&policy, &tally)),
                    Action::Install => m.handle_installed(now, Ok(())),
                    Action::Activate => m.handle_activated(now),
                    Action::RunHealthCheck => m.handle_health(now, health.clone()),
                    _ => {}
                }
                seen.push(a);
            }
            if m.state().is_final() {
                seen.extend(drain(m));
                break;
            }
        }
        seen
    }

    #[test]
    fn happy_path_commits_and_reports_success() {
        let mut m = Lifecycle::new(device(0), T0);
        let actions = run(&mut m, Ok(()));
        assert_eq!(m.state(), &State::Committed);
        assert_eq!(
            actions,
            vec![
                Action::Fetch,
                Action::Install,
                Action::Activate,
                Action::RunHealthCheck,
                Action::Commit,
                Action::Report(Outcome::Committed)
            ]
        );
    }

    #[test]
    fn failed_health_check_rolls_back_and_reports_failure() {
        let mut m = Lifecycle::new(device(0), T0);
        let actions = run(&mut m, Err("exit 1".into()));
        assert_eq!(m.state(), &State::RolledBack(Reason::HealthCheckFailed("exit 1".into())));
        assert!(actions.contains(&Action::Rollback));
        let report = actions.iter().find_map(|a| match a {
            Action::Report(o) => Some(o.verdict()),
            _ => None,
        });
        assert_eq!(report, Some(Verdict::Failure));
    }

    #[test]
    fn install_failure_never_touches_the_active_slot() {
        let policy = RolloutPolicy::default();
        let mut m = Lifecycle::new(device(0), T0);
        m.handle_timeout(T0, ctx(&policy, &Tally::default()));
        let _ = drain(&mut m);
        m.handle_fetched(T0, ctx(&policy, &Tally::default()));
        assert_eq!(drain(&mut m), vec![Action::Install]);
        m.handle_installed(T0, Err("disk full".into()));
        let actions = drain(&mut m);
        assert!(!actions.contains(&Action::Rollback) && !actions.contains(&Action::Activate));
        assert!(actions.contains(&Action::DiscardInactive));
        assert!(matches!(m.state(), State::RolledBack(Reason::InstallFailed(_))));
    }

    #[test]
    fn late_wave_waits_for_its_offset() {
        let policy = RolloutPolicy {
            waves: vec![
                Wave { percent: 10.0, after_s: 0, require_success: None, require_reports: 0 },
                Wave { percent: 100.0, after_s: 60, require_success: None, require_reports: 0 },
            ],
            ..Default::default()
        };
        let mut m = Lifecycle::new(device(500_000), T0);
        m.handle_timeout(T0, ctx(&policy, &Tally::default()));
        assert_eq!(m.state(), &State::Waiting);
        assert_eq!(m.poll_timeout(), Some(T0 + 60_000));
        assert_eq!(m.wave(&policy, &RELEASE), Some(1));
        m.handle_timeout(T0 + 60_000, ctx(&policy, &Tally::default()));
        assert_eq!(m.state(), &State::Fetching);
    }

    #[test]
    fn an_ordered_revoke_target_goes_past_its_wave_and_a_breached_gate() {
        let policy = RolloutPolicy {
            waves: vec![
                Wave { percent: 10.0, after_s: 0, require_success: None, require_reports: 0 },
                Wave { percent: 100.0, after_s: 3_600, require_success: None, require_reports: 0 },
            ],
            gate: Some(HealthGate { max_failure_ratio: 0.0, min_reports: 1 }),
            ..Default::default()
        };
        let mut tally = Tally::default();
        let _ = tally.record(crate::DeviceId::of_public_key(&[1; 32]), 1, Verdict::Failure, 0);
        let ordered = Context { ordered: true, ..ctx(&policy, &tally) };
        let mut m = Lifecycle::new(device(500_000), T0);
        m.handle_timeout(T0, ordered);
        assert_eq!(m.state(), &State::Fetching, "not waiting an hour for wave 2");
        m.handle_fetched(T0, ordered);
        assert_eq!(drain(&mut m), vec![Action::Fetch, Action::Install], "the breached gate does not hold it");
        // The same release without the order waits for its wave.
        let mut plain = Lifecycle::new(device(500_000), T0);
        plain.handle_timeout(T0, ctx(&policy, &tally));
        assert_eq!(plain.state(), &State::Waiting);
    }

    #[test]
    fn halt_holds_then_resume_releases() {
        let policy = RolloutPolicy::default();
        let mut m = Lifecycle::new(device(0), T0);
        m.handle_halt(T0, true);
        m.handle_timeout(T0, ctx(&policy, &Tally::default()));
        assert_eq!(m.state(), &State::Waiting);
        assert!(drain(&mut m).is_empty());
        m.handle_halt(T0 + 5, false);
        assert_eq!(m.poll_timeout(), Some(T0 + 5));
        m.handle_timeout(T0 + 5, ctx(&policy, &Tally::default()));
        assert_eq!(drain(&mut m), vec![Action::Fetch]);
    }

    #[test]
    fn breached_gate_keeps_staged_devices_from_installing() {
        let policy = RolloutPolicy {
            gate: Some(HealthGate { max_failure_ratio: 0.0, min_reports: 1 }),
            ..Default::default()
        };
        let mut m = Lifecycle::new(device(0), T0);
        let mut tally = Tally::default();
        m.handle_timeout(T0, ctx(&policy, &tally));
        let _ = drain(&mut m);
        let _ = tally.record(DeviceId::from_bytes([9; 32]), 1, Verdict::Failure, 0);
        m.handle_fetched(T0, ctx(&policy, &tally));
        assert_eq!(m.state(), &State::Staged);
        assert!(drain(&mut m).is_empty());
    }

    #[test]
    fn site_concurrency_limit_holds_install() {
        let policy = RolloutPolicy { max_concurrent_per_site: Some(1), ..Default::default() };
        let mut m = Lifecycle::new(device(0), T0);
        let tally = Tally::default();
        m.handle_timeout(T0, ctx(&policy, &tally));
        let _ = drain(&mut m);
        m.handle_fetched(T0, Context { site_installing: 1, ..ctx(&policy, &tally) });
        assert_eq!(m.state(), &State::Staged);
        m.handle_timeout(T0 + 1, ctx(&policy, &tally));
        assert_eq!(drain(&mut m), vec![Action::Install]);
    }

    #[test]
    fn revoke_after_commit_rolls_back_neutrally() {
        let mut m = Lifecycle::new(device(0), T0);
        let _ = run(&mut m, Ok(()));
        m.handle_revoke(T0 + 10);
        let actions = drain(&mut m);
        assert_eq!(actions[0], Action::Rollback);
        assert!(matches!(&actions[1], Action::Report(o) if o.verdict() == Verdict::Neutral));
        assert_eq!(m.state(), &State::RolledBack(Reason::Revoked));
    }

    #[test]
    fn revoke_while_fetching_stops_the_fetch() {
        let policy = RolloutPolicy::default();
        let mut m = Lifecycle::new(device(0), T0);
        m.handle_timeout(T0, ctx(&policy, &Tally::default()));
        let _ = drain(&mut m);
        m.handle_revoke(T0);
        assert_eq!(drain(&mut m), vec![Action::StopFetch]);
    }

    #[test]
    fn recovery_table() {
        let rec = |s: State| {
            let mut m = Lifecycle::recover(device(0), s, T0);
            (m.state().clone(), drain(&mut m), m.poll_timeout())
        };
        // (state at crash, state after, actions, wants a timeout)
        assert_eq!(rec(State::Waiting), (State::Waiting, vec![], Some(T0)));
        assert_eq!(rec(State::Fetching), (State::Fetching, vec![Action::Fetch], None));
        assert_eq!(rec(State::Staged), (State::Staged, vec![], Some(T0)));
        assert_eq!(rec(State::Installing), (State::Staged, vec![Action::DiscardInactive], Some(T0)));
        assert_eq!(rec(State::Activated), (State::Activated, vec![Action::Activate], None));
        let (state, actions, _) = rec(State::Checking);
        assert_eq!(state, State::RolledBack(Reason::CrashedDuringCheck));
        assert_eq!(actions[0], Action::Rollback);
        assert_eq!(rec(State::Committed), (State::Committed, vec![], None));
        let revoked = State::RolledBack(Reason::Revoked);
        assert_eq!(rec(revoked.clone()), (revoked, vec![Action::Rollback], None));
        let failed = State::RolledBack(Reason::InstallFailed("disk full".into()));
        assert_eq!(rec(failed.clone()), (failed, vec![Action::DiscardInactive], None));
    }

    #[test]
    fn admission_rules() {
        let m = crate::manifest::tests::sample(5);
        let facts = |installed, revoke_target, rolled_back_before| Facts {
            class: "gw-arm64",
            installed,
            revoke_target,
            rolled_back_before,
        };
        admit(&m, &facts(Some(4), false, false)).unwrap();
        let other = Facts { class: "other", ..facts(None, false, false) };
        assert!(matches!(admit(&m, &other), Err(Refusal::OtherClass { .. })));
        assert!(matches!(admit(&m, &facts(Some(5), false, false)), Err(Refusal::NotNewer { .. })));
        admit(&m, &facts(Some(7), true, false)).unwrap();
        assert_eq!(admit(&m, &facts(Some(4), false, true)), Err(Refusal::RolledBackBefore));
        let mut delta = m.clone();
        delta.precursor = Some(3);
        assert!(matches!(admit(&delta, &facts(Some(4), false, false)), Err(Refusal::WrongPrecursor { .. })));
    }
}
