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
    /// The signed manifest expired before the device committed resources to it (a
    /// fetch, an install, the commit); an expired manifest is no longer trusted.
    Expired,
}

impl State {
    /// A short lowercase name, for status output and metrics labels.
    pub fn name(&self) -> &'static str {
        self.phase().name()
    }

    /// Committed or rolled back: nothing more will happen.
    pub fn is_final(&self) -> bool {
        matches!(self, Self::Committed | Self::RolledBack(_))
    }

    /// Whether a device in this state holds one of its site's install slots
    /// (`max_concurrent_per_site`): from the start of the install until the health
    /// check has decided, because the device may be rebooting or degraded all along.
    pub fn holds_site_slot(&self) -> bool {
        self.phase().holds_site_slot()
    }

    /// The state's two text columns, the one text form of a state (database, API,
    /// simulator, demo): its [`State::name`], and for a rolled-back release the reason,
    /// as `install_failed:disk full`. [`State::from_parts`] is the inverse.
    pub fn parts(&self) -> (&'static str, Option<String>) {
        let reason = match self {
            Self::RolledBack(reason) => Some(reason.encode()),
            _ => None,
        };
        (self.name(), reason)
    }

    /// Parses what [`State::parts`] wrote.
    pub fn from_parts(name: &str, reason: Option<&str>) -> Result<Self, UnknownState> {
        let unknown = || UnknownState(format!("{name}:{}", reason.unwrap_or_default()));
        Ok(match (name, reason) {
            ("idle", None) => Self::Idle,
            ("waiting", None) => Self::Waiting,
            ("fetching", None) => Self::Fetching,
            ("staged", None) => Self::Staged,
            ("installing", None) => Self::Installing,
            ("activated", None) => Self::Activated,
            ("checking", None) => Self::Checking,
            ("committed", None) => Self::Committed,
            ("rolled_back", Some(reason)) => {
                let (kind, detail) = reason.split_once(':').unwrap_or((reason, ""));
                Self::RolledBack(match kind {
                    "install_failed" => Reason::InstallFailed(detail.to_owned()),
                    "health_check_failed" => Reason::HealthCheckFailed(detail.to_owned()),
                    "crashed_during_check" => Reason::CrashedDuringCheck,
                    "revoked" => Reason::Revoked,
                    "expired" => Reason::Expired,
                    _ => return Err(unknown()),
                })
            }
            _ => return Err(unknown()),
        })
    }
}

impl std::fmt::Display for State {
    /// The state's name; see [`State::parts`] for the form with the reason.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl serde::Serialize for State {
    /// As its name: API clients compare states by name ([`Phase`] parses it back).
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// Text that is not a lifecycle state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown lifecycle state {0:?}: expected one of {names}", names = Phase::NAMES.join(", "))]
pub struct UnknownState(pub String);

/// A lifecycle state without the rolled-back reason: what status output shows and
/// what a reader of it (the API client, the demo) compares. Parsed from, and shown
/// as, [`State::name`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// See [`State::Idle`].
    #[default]
    Idle,
    /// See [`State::Waiting`].
    Waiting,
    /// See [`State::Fetching`].
    Fetching,
    /// See [`State::Staged`].
    Staged,
    /// See [`State::Installing`].
    Installing,
    /// See [`State::Activated`].
    Activated,
    /// See [`State::Checking`].
    Checking,
    /// See [`State::Committed`].
    Committed,
    /// See [`State::RolledBack`].
    RolledBack,
}

impl Phase {
    /// Every phase, in lifecycle order.
    pub const ALL: [Phase; 9] = [
        Self::Idle,
        Self::Waiting,
        Self::Fetching,
        Self::Staged,
        Self::Installing,
        Self::Activated,
        Self::Checking,
        Self::Committed,
        Self::RolledBack,
    ];
    /// Their names, in the same order.
    pub const NAMES: [&'static str; 9] = [
        "idle",
        "waiting",
        "fetching",
        "staged",
        "installing",
        "activated",
        "checking",
        "committed",
        "rolled_back",
    ];

    /// The name, as in status output.
    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// Whether a device in this phase holds a site install slot ([`State::holds_site_slot`]).
    pub fn holds_site_slot(self) -> bool {
        matches!(self, Self::Installing | Self::Activated | Self::Checking)
    }
}

impl State {
    /// The phase, without the reason.
    pub fn phase(&self) -> Phase {
        match self {
            Self::Idle => Phase::Idle,
            Self::Waiting => Phase::Waiting,
            Self::Fetching => Phase::Fetching,
            Self::Staged => Phase::Staged,
            Self::Installing => Phase::Installing,
            Self::Activated => Phase::Activated,
            Self::Checking => Phase::Checking,
            Self::Committed => Phase::Committed,
            Self::RolledBack(_) => Phase::RolledBack,
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Phase {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let i = Self::NAMES.iter().position(|n| *n == s).ok_or_else(|| UnknownState(s.to_owned()))?;
        Ok(Self::ALL[i])
    }
}

impl serde::Serialize for Phase {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Phase {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
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
            Self::Expired => "the manifest expired".to_owned(),
        }
    }

    /// The machine-readable form inside [`State::encode`].
    fn encode(&self) -> String {
        match self {
            Self::InstallFailed(why) => format!("install_failed:{why}"),
            Self::HealthCheckFailed(why) => format!("health_check_failed:{why}"),
            Self::CrashedDuringCheck => "crashed_during_check".to_owned(),
            Self::Revoked => "revoked".to_owned(),
            Self::Expired => "expired".to_owned(),
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
    /// When the signed manifest stops being valid. Checked before each step that
    /// commits resources: the fetch, the install, the commit.
    pub expires_at: Option<Millis>,
}

impl Context<'_> {
    fn expired(&self, now: Millis) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }
}

/// One device's progress through one release. See the module docs for the drain rule.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    device: DeviceInfo,
    state: State,
    halted: bool,
    /// Installs deferred by the device (a full disk): the next waits longer.
    deferred: u8,
    wake_at: Option<Millis>,
    actions: VecDeque<Action>,
}

/// The first wait after an install the device could not do (a full disk), doubled at
/// each further one up to [`MAX_INSTALL_RETRY`].
pub const FIRST_INSTALL_RETRY: Millis = 10_000;
/// The longest wait between attempts at an install the device could not do.
pub const MAX_INSTALL_RETRY: Millis = 600_000;

impl Lifecycle {
    /// A fresh machine for an admitted release; it wants a timeout at `now`.
    pub fn new(device: DeviceInfo, now: Millis) -> Self {
        Self::with_state(device, State::Idle, now)
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
        Self { device, state, halted: false, deferred: 0, wake_at: Some(now), actions: VecDeque::new() }
    }

    /// The current state; persist it after every `handle_*` call.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Whether an operator halt holds this machine.
    pub fn is_halted(&self) -> bool {
        self.halted
    }

    /// The next action to execute, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        let action = self.actions.pop_front();
        if action.is_none() && self.actions.capacity() > 0 {
            // A simulator keeps a million machines: an idle one holds no buffer.
            self.actions = VecDeque::new();
        }
        action
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
        let retry_at = if self.deferred > 0 { self.wake_at } else { None };
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
                    Decision::Go if ctx.expired(now) => self.state = State::RolledBack(Reason::Expired),
                    Decision::Go => {
                        self.state = State::Fetching;
                        self.actions.push_back(Action::Fetch);
                    }
                    Decision::WaitUntil(at) => self.wake_at = Some(at),
                    Decision::WaitForReports | Decision::Halted => {}
                }
            }
            State::Staged => {
                if let Some(at) = retry_at
                    && now < at
                {
                    // A deferred install waits for its retry, whatever else woke us.
                    self.wake_at = Some(at);
                    return;
                }
                let gate_breached =
                    !ctx.ordered && ctx.policy.gate.as_ref().is_some_and(|g| g.breached(ctx.tally));
                if self.halted || gate_breached || !ctx.policy.may_install(ctx.site_installing) {
                    return;
                }
                if ctx.expired(now) {
                    self.state = State::RolledBack(Reason::Expired);
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

    /// The device could not do the install for a reason that is not the release's (the
    /// disk is full, a write failed): nothing is concluded about the release. The
    /// inactive slot is discarded and the install tried again later, waiting longer
    /// each time; the release is neither failed nor reported.
    pub fn handle_install_deferred(&mut self, now: Millis) {
        if self.state != State::Installing {
            return;
        }
        self.actions.push_back(Action::DiscardInactive);
        self.state = State::Staged;
        let wait = FIRST_INSTALL_RETRY.saturating_mul(1 << self.deferred.min(16)).min(MAX_INSTALL_RETRY);
        self.deferred = self.deferred.saturating_add(1);
        self.wake_at = Some(now.saturating_add(wait));
    }

    /// The active slot now holds the new version.
    pub fn handle_activated(&mut self, _now: Millis) {
        if self.state != State::Activated {
            return;
        }
        self.state = State::Checking;
        self.actions.push_back(Action::RunHealthCheck);
    }

    /// The health check finished. `expires_at` is the manifest's expiry: a release whose
    /// manifest expired meanwhile is rolled back rather than committed.
    pub fn handle_health(&mut self, now: Millis, result: Result<(), String>, expires_at: Option<Millis>) {
        if self.state != State::Checking {
            return;
        }
        match result {
            Ok(()) if expires_at.is_some_and(|at| now >= at) => {
                // Not the release's fault: no failure report, the device only goes back.
                self.actions.push_back(Action::Rollback);
                self.state = State::RolledBack(Reason::Expired);
            }
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
        Context { release: &RELEASE, policy, tally, site_installing: 0, ordered: false, expires_at: None }
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
                    Action::RunHealthCheck => m.handle_health(now, health.clone(), None),
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
        assert_eq!(policy.wave_of(RELEASE.kind, 500_000), Some(1));
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
}
