//! The `otamesh sim` command: arguments and the run that writes the outputs (sweeps
//! live in [`crate::sweep`]).
//!
//! The binary's `main.rs` only adds `Sim(otamesh_sim::cli::SimArgs)` to its commands
//! and calls [`run`]; everything else lives here.

use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use crate::engine::{self, Progress, RunResult};
use crate::plot::{self, Curve};
use crate::report::{Summary, timeseries_csv};
use crate::scenario::{Scenario, ScenarioError};
use crate::sweep::{self, MergeError, SweepError};

/// `otamesh sim SCENARIO.toml --out DIR [--seed N] [--set section.key=value]...`, or
/// `otamesh sim compare A.toml B.toml ... --out DIR`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct SimArgs {
    /// Compare several scenarios, or one under several variants.
    #[command(subcommand)]
    pub command: Option<SimCommand>,
    /// The scenario file (TOML; see scenarios/ and docs/simulator.md).
    #[arg(required = true, value_name = "SCENARIO.toml")]
    pub scenario: Option<PathBuf>,
    /// Directory for summary.json, timeseries.csv and the plots (created if missing).
    #[arg(long, required = true, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Options shared with `compare`.
    #[command(flatten)]
    pub common: Common,
}

/// Options of both forms.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// Master seed (overrides the scenario's); printed at start so a run can be replayed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Override a scenario value, e.g. --set network.mode=central (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,
    /// Write `wall_s` as null so that summary.json is byte-identical across runs.
    #[arg(long)]
    pub reproducible: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Subcommands of `otamesh sim`.
#[derive(Debug, clap::Subcommand)]
pub enum SimCommand {
    /// Run several scenarios (or one scenario under several --variant sets) and draw
    /// them side by side: compare.json and compare.png.
    Compare(CompareArgs),
    /// Run one scenario over many seeds and a grid of values on every core: runs.csv,
    /// sweep.json (means, percentiles, 95% intervals) and plots. `--shard I/N` runs one
    /// slice for a cluster; `sweep merge` combines the slices.
    Sweep(SweepArgs),
}

/// `otamesh sim sweep SCENARIO.toml --out DIR [--seeds N | --seed-range A..B]
/// [--grid section.key=v1,v2,...]... [--jobs J] [--shard I/N]`, or `otamesh sim sweep
/// merge DIR... --out DIR`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct SweepArgs {
    /// Combine shard outputs.
    #[command(subcommand)]
    pub command: Option<SweepCommand>,
    /// The scenario file.
    #[arg(required = true, value_name = "SCENARIO.toml")]
    pub scenario: Option<PathBuf>,
    /// Directory for runs.csv, sweep.json and the plots; with --shard, for runs.csv and
    /// shard.json (created if missing).
    #[arg(long, required = true, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Run N seeds per grid point, from the scenario's seed on [default: 100].
    #[arg(long, value_name = "N", conflicts_with = "seed_range")]
    pub seeds: Option<u64>,
    /// Run the seeds A to B per grid point, B excluded (A..=B includes it).
    #[arg(long, value_name = "A..B")]
    pub seed_range: Option<String>,
    /// Sweep a scenario key over values, as --set takes them (repeatable: every
    /// combination runs). TOML lists stay whole: rollout.waves=[{percent=100}],[].
    #[arg(long, value_name = "SECTION.KEY=V1,V2,...")]
    pub grid: Vec<String>,
    /// Override a scenario value in every run (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,
    /// Runs at once, one thread each [default: every core]; each run is single-threaded.
    #[arg(long, value_name = "J")]
    pub jobs: Option<usize>,
    /// Run only shard I of N (numbered from 0): the runs r with r % N == I.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// Plot this numeric summary key or outcome against the first grid key (repeatable)
    /// [default: t90_s, wan_bytes, halted].
    #[arg(long = "plot", value_name = "KEY")]
    pub plot: Vec<String>,
    /// Write the wall-clock fields as null, so that outputs are byte-identical across
    /// reruns and across sharded and unsharded sweeps.
    #[arg(long)]
    pub reproducible: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Subcommands of `otamesh sim sweep`.
#[derive(Debug, clap::Subcommand)]
pub enum SweepCommand {
    /// Combine the --out directories of every shard of one sweep into the files the
    /// unsharded sweep writes.
    Merge(MergeArgs),
}

/// `otamesh sim sweep merge DIR... --out DIR`.
#[derive(Debug, clap::Args)]
pub struct MergeArgs {
    /// The shards' --out directories, all of them, in any order.
    #[arg(required = true, value_name = "DIR")]
    pub dirs: Vec<PathBuf>,
    /// Directory for runs.csv, sweep.json and the plots.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// As for the sweep (repeatable) [default: t90_s, wan_bytes, halted].
    #[arg(long = "plot", value_name = "KEY")]
    pub plot: Vec<String>,
}

/// `otamesh sim compare`.
#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// Scenario files.
    #[arg(required = true, value_name = "SCENARIO.toml")]
    pub scenarios: Vec<PathBuf>,
    /// Directory for compare.json and compare.png.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// A variant: `;`-separated section.key=value overrides, applied to every
    /// scenario (repeatable; each scenario runs once per variant).
    #[arg(long, value_name = "K=V[;K=V...]")]
    pub variant: Vec<String>,
    /// Options shared with a single run.
    #[command(flatten)]
    pub common: Common,
}

/// Why `otamesh sim` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// The scenario is invalid; the message names the file, the key and the fix.
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    /// An output could not be written.
    #[error("cannot write {path}: {source}; check that --out names a writable directory")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A plot could not be drawn.
    #[error("cannot draw {path}: {reason}")]
    Plot {
        /// The image file.
        path: PathBuf,
        /// What the plotting library said.
        reason: String,
    },
    /// The command line is incomplete.
    #[error("{0}")]
    Usage(String),
    /// A sweep's options are invalid; the message names the option, the key and the fix.
    #[error(transparent)]
    Sweep(#[from] SweepError),
    /// Shard outputs cannot be merged; the message names the directory and the reason.
    #[error(transparent)]
    Merge(#[from] MergeError),
}

/// Runs `otamesh sim`.
pub fn run(args: SimArgs) -> Result<(), SimError> {
    match args.command {
        Some(SimCommand::Compare(c)) => return compare(c),
        Some(SimCommand::Sweep(s)) => {
            return match s.command {
                Some(SweepCommand::Merge(m)) => sweep::merge(m),
                None => sweep::sweep(s),
            };
        }
        None => {}
    }
    let (Some(path), Some(out)) = (args.scenario, args.out) else {
        return Err(SimError::Usage("usage: otamesh sim SCENARIO.toml --out DIR".into()));
    };
    let scenario = Scenario::load(&path, &args.common.set)?;
    let seed = seed_for(&path, &scenario, args.common.seed);
    println!("otamesh sim: {} with seed {seed} (replay with --seed {seed})", scenario.name());
    create_dir(&out)?;
    let (result, wall) = simulate(&scenario, seed, args.common.quiet);
    let summary = Summary::of(&result, (!args.common.reproducible).then_some(wall));
    write(&out.join("summary.json"), summary.to_json().as_bytes())?;
    write(&out.join("timeseries.csv"), timeseries_csv(&result).as_bytes())?;
    plot::convergence(&result, &out.join("convergence.png"))?;
    plot::convergence(&result, &out.join("convergence.svg"))?;
    plot::wan(&result, &out.join("wan.png"))?;
    print_summary(&summary, wall);
    println!("wrote {}", out.display());
    Ok(())
}

/// Runs one scenario with a progress bar on a terminal; returns the result and the
/// wall-clock seconds.
pub fn simulate(scenario: &Scenario, seed: u64, quiet: bool) -> (RunResult, f64) {
    let bar =
        if quiet { ProgressBar::hidden() } else { ProgressBar::new(scenario.sim.duration_s.ceil() as u64) };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} virtual s  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let result = engine::run(scenario, seed, &mut |p: Progress| {
        bar.set_position(p.t_s as u64);
        bar.set_message(format!("{} committed, {} events", p.committed, p.events));
    });
    bar.finish_and_clear();
    (result, started.elapsed().as_secs_f64())
}

pub(crate) fn seed_for(path: &Path, scenario: &Scenario, flag: Option<u64>) -> u64 {
    flag.or(scenario.sim.seed).unwrap_or_else(|| {
        // No seed anywhere: derive one from the file, so a plain rerun replays.
        let text = std::fs::read(path).unwrap_or_default();
        let mut b = [0u8; 8];
        b.copy_from_slice(&blake3::hash(&text).as_bytes()[..8]);
        u64::from_le_bytes(b) >> 12
    })
}

fn print_summary(s: &Summary, wall: f64) {
    let t = |x: Option<f64>| x.map_or("never".to_owned(), |v| format!("{v:.1} s"));
    println!(
        "{}: {} devices, {} sites, {}: t50 {}, t90 {}, t100 {}; committed {}, failed {}, rolled back {}, never started {}",
        s.scenario,
        s.devices,
        s.sites,
        s.mode,
        t(s.t50_s),
        t(s.t90_s),
        t(s.t100_s),
        s.committed,
        s.failed,
        s.rolled_back,
        s.never_started
    );
    println!(
        "WAN {:.2} GiB, LAN {:.2} GiB, origin peak {:.1} Mbit/s, halted {}; {} events in {:.2} s wall ({:.0} events/s)",
        s.wan_bytes as f64 / f64::from(1u32 << 30),
        s.lan_bytes as f64 / f64::from(1u32 << 30),
        s.origin_peak_bps as f64 / 1e6,
        t(s.halted_at_s),
        s.events,
        wall,
        s.events as f64 / wall.max(1e-9)
    );
}

fn compare(c: CompareArgs) -> Result<(), SimError> {
    let variants: Vec<Vec<String>> = if c.variant.is_empty() {
        vec![Vec::new()]
    } else {
        c.variant
            .iter()
            .map(|v| v.split(';').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect())
            .collect()
    };
    create_dir(&c.out)?;
    let mut rows = Vec::new();
    let mut curves = Vec::new();
    for path in &c.scenarios {
        for (vi, variant) in variants.iter().enumerate() {
            let mut sets = c.common.set.clone();
            sets.extend(variant.iter().cloned());
            let scenario = Scenario::load(path, &sets)?;
            let seed = seed_for(path, &scenario, c.common.seed);
            let label = if c.variant.is_empty() {
                scenario.name().to_owned()
            } else {
                format!("{} [{}]", scenario.name(), c.variant[vi])
            };
            println!("otamesh sim compare: {label} with seed {seed}");
            let (result, wall) = simulate(&scenario, seed, c.common.quiet);
            let summary = Summary::of(&result, (!c.common.reproducible).then_some(wall));
            print_summary(&summary, wall);
            rows.push(serde_json::json!({ "label": label, "summary": summary }));
            curves.push(Curve::of(&label, &result));
        }
    }
    // Invariant: JSON values built above always serialize.
    let mut json = serde_json::to_string_pretty(&serde_json::json!({ "runs": rows })).expect("serializes");
    json.push('\n');
    write(&c.out.join("compare.json"), json.as_bytes())?;
    plot::compare(&curves, &c.out.join("compare.png"))?;
    println!("wrote {}", c.out.display());
    Ok(())
}

pub(crate) fn create_dir(dir: &Path) -> Result<(), SimError> {
    std::fs::create_dir_all(dir).map_err(|source| SimError::Write { path: dir.to_owned(), source })
}

pub(crate) fn write(path: &Path, bytes: &[u8]) -> Result<(), SimError> {
    std::fs::write(path, bytes).map_err(|source| SimError::Write { path: path.to_owned(), source })
}
