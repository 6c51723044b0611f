//! What the simulator fed a device's machine and what the machine answered, for a few
//! chosen devices of a run ([`crate::engine::run_traced`]).
//!
//! The inputs are the world as the device saw it (the release heard, a directive, a
//! report, its site's install slots, its fetch and install results, a crash), not the
//! machine calls the engine made: `tests/conformance.rs` feeds the same inputs to the
//! node's driver and checks that both drivers get the same outputs from the one
//! machine, so a driver that decides something on its own shows up as a difference.

use otamesh_core::device::{Installed, Output, Release};
use otamesh_core::directive::VerifiedDirective;
use otamesh_core::gate::Verdict;
use otamesh_core::{DeviceId, Millis};

/// Which devices to trace, and the releases to use so a real node can replay them.
#[derive(Debug, Clone)]
pub struct TraceSetup {
    /// The release the scenario rolls out (its id, class, policy, creation time); a
    /// real signed manifest with this id lets a node replay the trace. Its policy
    /// replaces the scenario's rollout.
    pub release: Release,
    /// What every device runs before it (what a revoke returns to).
    pub previous: Installed,
    /// Device indexes to trace, and the id each gets (a real device key's id).
    pub devices: Vec<(u32, DeviceId)>,
}

/// One thing that happened to a traced device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// It heard of the release.
    Release,
    /// A signed directive reached it.
    Directive(VerifiedDirective),
    /// A report from some device was heard.
    Report {
        /// Who reported.
        reporter: DeviceId,
        /// The reporter's report sequence.
        sequence: u64,
        /// What it said.
        verdict: Verdict,
    },
    /// Other members of its site holding an install slot, when that changed.
    Site(u32),
    /// Every chunk of the release is here.
    Fetched,
    /// Its install finished.
    Installed(Result<(), String>),
    /// Its switch to the new slot finished.
    Activated,
    /// Its health check finished.
    Health(Result<(), String>),
    /// It lost power: nothing runs until [`Input::Restart`].
    Crash,
    /// It is back after a crash.
    Restart,
}

/// One traced device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trace {
    /// Its index in the fleet.
    pub device: u32,
    /// What happened to it, in order, with the time (core clock, ms).
    pub inputs: Vec<(Millis, Input)>,
    /// What its machine asked for, in order, with the time.
    pub outputs: Vec<(Millis, Output)>,
}
