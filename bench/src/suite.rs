//! The fixed benchmark suite that `otamesh bench` runs, part by part, into one
//! [`Results`].
//!
//! **Goals**: a suite a CI job runs as is: the same parts, names and units every time,
//! sized by [`Size`] (full, `--quick`, or the tiny size the test suite uses), with a
//! `--filter` to run some parts only.
//!
//! **Non-goals**: tuning the machine or judging the figures (see
//! [`crate::bmf::regressions`]); the harness measures what the code does on the
//! machine at hand.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::bmf::Results;
use crate::{calibrate, micro, rollout, simulation, site, transfer};

/// How big a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Size {
    /// Every part at its full size: minutes to tens of minutes.
    Full,
    /// `--quick`: within 5 minutes on 2 cores (release build).
    Quick,
    /// The test suite's: seconds each, in a debug build. Figures are not comparable.
    Tiny,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// How big.
    pub size: Size,
    /// Run only the parts (or simulator scenarios) whose name contains one of these;
    /// empty: everything.
    pub filters: Vec<String>,
    /// The `otamesh` binary, for node and simulator processes.
    pub exe: PathBuf,
    /// Where results and plots go.
    pub out: PathBuf,
    /// Scratch space for keys, stores and node data directories (on disk, or in
    /// /dev/shm to leave fsync out of the LAN figures).
    pub work: PathBuf,
    /// The directory of the simulator scenarios.
    pub scenarios: PathBuf,
}

impl Options {
    /// Whether the part or benchmark `name` (`fleet`, `lan`, `sim/canary`, `core`) runs:
    /// a filter selects the names that contain it (`sim` selects every scenario) and the
    /// parts it names more closely (`sim/canary` selects the part `sim`).
    pub fn selected(&self, name: &str) -> bool {
        self.filters.is_empty() || self.filters.iter().any(|f| name.contains(f.as_str()) || f.contains(name))
    }
}

/// The parts of the suite, in the order they run.
pub const PARTS: [&str; 6] = ["core", "sim", "fleet", "site", "lan", "calibrate"];

/// What a run produced besides its metrics.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The metrics.
    pub results: Results,
    /// Facts a reader of the figures needs (which HTTPS server, sizes, skipped parts).
    pub notes: Vec<String>,
    /// Plots written into the output directory (file names).
    pub plots: Vec<String>,
}

/// Why a part of the suite failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SuiteError {
    /// A part could not run; the message names the part and what went wrong.
    #[error("bench {part}: {reason}")]
    Part {
        /// The part.
        part: &'static str,
        /// Why.
        reason: String,
    },
    /// Nothing matched `--filter`; see docs/benchmarks.md for the names.
    #[error(
        "--filter {0:?} matches no part of the suite (core, sim, sim/SCENARIO, fleet, site, lan, calibrate)"
    )]
    NothingSelected(String),
}

/// Progress of a run: the part running and a message.
pub trait Progress {
    /// Part `part` (one of [`PARTS`]) is at `what`.
    fn step(&mut self, part: &str, what: &str);
}

/// Runs every selected part; each writes its metrics, notes and plots.
pub fn run(options: &Options, progress: &mut dyn Progress) -> Result<Outcome, SuiteError> {
    let selected: Vec<&str> = PARTS
        .into_iter()
        .filter(|p| {
            options.selected(p) || (*p == "sim" && options.filters.iter().any(|f| f.starts_with("sim/")))
        })
        .collect();
    if selected.is_empty() {
        return Err(SuiteError::NothingSelected(options.filters.join(", ")));
    }
    let mut outcome = Outcome::default();
    let part = |part: &'static str| move |reason: String| SuiteError::Part { part, reason };
    for p in selected {
        progress.step(p, "starting");
        match p {
            "core" => micro::run(options, &mut outcome, progress).map_err(part("core"))?,
            "sim" => simulation::run(options, &mut outcome, progress).map_err(part("sim"))?,
            "fleet" => block_on(rollout::play(options, &mut outcome, progress)).map_err(part("fleet"))?,
            "site" => block_on(site::play(options, &mut outcome, progress)).map_err(part("site"))?,
            "lan" => block_on(transfer::play(options, &mut outcome, progress)).map_err(part("lan"))?,
            "calibrate" => {
                block_on(calibrate::play(options, &mut outcome, progress)).map_err(part("calibrate"))?
            }
            _ => {}
        }
    }
    Ok(outcome)
}

/// Runs a part that drives real processes on a multi-threaded runtime of its own.
fn block_on(part: impl std::future::Future<Output = Result<(), String>>) -> Result<(), String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?
        .block_on(part)
}

/// A fresh scratch directory `name` under the work directory.
pub(crate) fn scratch(options: &Options, name: &str) -> Result<PathBuf, String> {
    let dir = options.work.join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("cannot clear {}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

pub(crate) use otamesh_fleet::release::noise;

/// Polls `cond` every `every` until it holds (true) or `limit` passes (false).
pub(crate) async fn until(limit: Duration, every: Duration, mut cond: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(every).await;
    }
}

/// The `--trust` file and key of a fresh publisher in `dir`.
pub(crate) fn publisher(dir: &Path, seed: u8) -> Result<(otamesh_core::SecretKey, PathBuf), String> {
    let key = otamesh_core::SecretKey::from_seed([seed; 32]);
    let (_, trust) =
        otamesh_node::keys::write_keypair(&dir.join("publisher"), &key).map_err(|e| e.to_string())?;
    Ok((key, trust))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(filters: &[&str]) -> Options {
        Options {
            size: Size::Tiny,
            filters: filters.iter().map(|f| f.to_string()).collect(),
            exe: PathBuf::new(),
            out: PathBuf::new(),
            work: PathBuf::new(),
            scenarios: PathBuf::new(),
        }
    }

    #[test]
    fn filters_select_parts_and_scenarios() {
        // Rows: no filter runs all; a part; a scenario selects its part and only itself.
        assert!(PARTS.iter().all(|p| with(&[]).selected(p)));
        let sim = with(&["sim"]);
        assert!(sim.selected("sim") && sim.selected("sim/canary") && !sim.selected("fleet"));
        let canary = with(&["sim/canary"]);
        assert!(canary.selected("sim") && canary.selected("sim/canary"));
        assert!(!canary.selected("sim/bad-release-gate") && !canary.selected("core"));
        let two = with(&["fleet", "lan"]);
        assert!(two.selected("fleet") && two.selected("lan") && !two.selected("core"));
    }
}
