//! Sweeps: one scenario over many seeds and a grid of parameter values, run on every
//! core and summarised with confidence intervals; split into shards for a cluster and
//! merged back.
//!
//! A sweep's *run list* is every grid point (every combination of the `--grid` values,
//! the first key varying slowest) times every seed, numbered from 0: run `r` is grid
//! point `r / seeds` with seed `from + r % seeds`. Every grid point runs the same seeds,
//! so a device fails the same way at every point and differences between points are
//! not noise. Shard `I` of `N` runs the runs with `r % N == I`: consecutive runs go to
//! different shards, so a costly grid point is spread over all of them.
//!
//! Outputs: `runs.csv` (one row per run in run order: the run number, the grid values
//! and every [`Summary`] key), `sweep.json` (per grid point: mean, standard deviation,
//! percentiles and 95% interval of every numeric summary key, and yes/no outcomes as
//! proportions with Wilson intervals) and plots. A shard writes its rows of `runs.csv`
//! and a `shard.json`; [`merge`] turns all shards of a sweep into the files the
//! unsharded sweep writes. Both paths format the rows, parse them back from the
//! `runs.csv` text and summarise what they parsed, so merged and unsharded outputs are
//! byte-identical (with `--reproducible`, which writes the wall-clock fields as null).
//!
//! **Goals:** every input checked before the first run, rejected with the option, the
//! key and the reason; memory bounded by the thread count (a run's time series is
//! dropped as soon as its summary row is taken); a study that runs as a Slurm job array
//! or a Kubernetes Indexed Job without a scheduler of our own. A *fingerprint* (the
//! scenario's bytes, the overrides, the grid, the seeds and the otamesh version,
//! hashed) is written into every shard, so shards of different sweeps are never merged.
//!
//! **Non-goals:** Parquet (the arrow and parquet crates would cost more to build than
//! the rest of the simulator; `runs.csv` loads directly into pandas and polars);
//! retrying failed shards (the cluster's scheduler does that); per-run plots.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::cli::{self, MergeArgs, SimError, SweepArgs};
use crate::engine;
use crate::plot::{self, Band, BandChart, Estimate, Spread, SpreadChart};
use crate::report::Summary;
use crate::scenario::Scenario;
use crate::stats::{Describe, Proportion};

/// Seeds per grid point when neither `--seeds` nor `--seed-range` is given.
pub const DEFAULT_SEEDS: u64 = 100;

/// The most runs one sweep may list (split a larger study into several sweeps).
pub const MAX_RUNS: u64 = 100_000_000;

/// The most grid points (each is a scenario checked before the first run).
pub const MAX_POINTS: u64 = 100_000;

/// What is plotted when no `--plot` is given.
pub const DEFAULT_PLOTS: [&str; 3] = ["t90_s", "wan_bytes", "halted"];

/// The yes/no outcomes reported as proportions, and what makes a run count as yes.
pub const OUTCOMES: [(&str, &str); 4] = [
    ("halted", "the release was halted (health gate or operator): halted_at_s is set"),
    ("revoked", "a revoke reached the fleet: revoked_at_s is set"),
    ("all_committed", "every device of the fleet committed: committed == devices"),
    ("any_failed", "at least one device failed its install or health check: failed > 0"),
];

/// A sweep's identity, in `sweep.json` and in every shard's `shard.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// The scenario's name.
    pub scenario: String,
    /// BLAKE3 of the scenario file's bytes, hex.
    pub scenario_blake3: String,
    /// The otamesh version that ran it.
    pub otamesh: String,
    /// `--set` overrides applied to every run, in order.
    pub set: Vec<String>,
    /// The grid keys and their values, as given.
    pub grid: Vec<Axis>,
    /// The seeds of every grid point.
    pub seeds: SeedRange,
    /// BLAKE3 over every field above: equal for the shards of one sweep only.
    pub fingerprint: String,
}

/// One `--grid` key and its values (TOML text, as `--set` takes them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Axis {
    /// `section.key`.
    pub key: String,
    /// The values, in the order given.
    pub values: Vec<String>,
}

/// Seeds `from` to `to`, `to` excluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedRange {
    /// The first seed.
    pub from: u64,
    /// One past the last seed.
    pub to: u64,
}

/// Shard `index` of `count` (from 0): the runs `r` with `r % count == index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shard {
    /// Which shard, from 0.
    pub index: u64,
    /// How many shards.
    pub count: u64,
}

/// A sweep's command line that cannot run: the option, the key and the reason.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SweepError {
    /// A `--grid` option is malformed, or one of its values makes the scenario invalid;
    /// fix or drop that value.
    #[error("--grid {key}: {reason}")]
    Grid {
        /// The grid key (or the whole option when it has no key).
        key: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// Every value is valid alone, but this combination makes the scenario invalid;
    /// change the grid so that every combination is a valid scenario.
    #[error("grid point {point}: {reason}")]
    Point {
        /// The combination, `key=value, ...`.
        point: String,
        /// The scenario error.
        reason: String,
    },
    /// `--seeds` or `--seed-range` names no seeds, or seeds past `u64::MAX`.
    #[error("{option}: {reason}")]
    Seeds {
        /// The option as given.
        option: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// `--shard` is not `I/N` with `I < N`, or has more shards than runs.
    #[error("--shard {shard}: {reason}")]
    Shard {
        /// The option's value as given.
        shard: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// `--jobs 0`: use at least one thread.
    #[error("--jobs 0: use at least one thread")]
    NoJobs,
    /// `--plot` names neither a numeric summary key nor an outcome; pick one of the list.
    #[error("--plot {key}: not a numeric summary key or an outcome; use one of {choices}")]
    Plot {
        /// The key as given.
        key: String,
        /// The keys that can be plotted.
        choices: String,
    },
    /// The grid and the seeds list more runs than [`MAX_RUNS`] (or grid points than
    /// [`MAX_POINTS`]); split the study into several sweeps.
    #[error("{what}: more than {limit}; split the study into several sweeps")]
    TooLarge {
        /// What is too large, with its size.
        what: String,
        /// The limit.
        limit: u64,
    },
}

/// Shard outputs that cannot be merged: which directory or file, and why.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MergeError {
    /// A shard's `shard.json` or `runs.csv` cannot be read; pass the `--out` directories
    /// of `otamesh sim sweep --shard` runs.
    #[error(
        "{path}: cannot read it ({error}); pass the --out directories of `otamesh sim sweep --shard` runs"
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error (not a `source`: the message already says it).
        error: std::io::Error,
    },
    /// A file is not what a shard writes (or was edited); rerun that shard.
    #[error("{path}: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line where there is one.
        reason: String,
    },
    /// Two directories hold shards of different sweeps (scenario bytes, `--set`, `--grid`,
    /// seeds or otamesh version differ); merge only the shards of one sweep.
    #[error(
        "{dir}: a shard of another sweep (fingerprint {theirs}, {first} has {ours}): the scenario, --set, --grid, seeds or otamesh version differ; merge only the shards of one sweep"
    )]
    Foreign {
        /// The odd one out.
        dir: PathBuf,
        /// Its fingerprint.
        theirs: String,
        /// The first directory given.
        first: PathBuf,
        /// The first directory's fingerprint.
        ours: String,
    },
    /// Shards of different `--shard I/N` splits; merge the shards of one split.
    #[error(
        "{dir}: shard {index}/{count}, but {first} is one of {expected} shards; merge the shards of one split"
    )]
    Split {
        /// The odd one out.
        dir: PathBuf,
        /// Its index.
        index: u64,
        /// Its count.
        count: u64,
        /// The first directory given.
        first: PathBuf,
        /// The first directory's count.
        expected: u64,
    },
    /// The same shard was given twice; pass each shard's directory once.
    #[error("{dir}: shard {index}/{count} again (also in {other}); pass each shard's directory once")]
    Duplicate {
        /// The second directory.
        dir: PathBuf,
        /// The first directory with that shard.
        other: PathBuf,
        /// The shard.
        index: u64,
        /// The shard count.
        count: u64,
    },
    /// A shard is missing; pass the directories of all shards.
    #[error("shard {index}/{count} is missing; pass the --out directories of all {count} shards")]
    Missing {
        /// The missing shard.
        index: u64,
        /// The shard count.
        count: u64,
    },
    /// Some shards ran with `--reproducible` and some without; rerun them alike.
    #[error("{dir}: ran {how} --reproducible, unlike {first}; run every shard with the same flags")]
    Reproducible {
        /// The odd one out.
        dir: PathBuf,
        /// "with" or "without".
        how: &'static str,
        /// The first directory given.
        first: PathBuf,
    },
}

/// Runs `otamesh sim sweep SCENARIO.toml --out DIR ...` (or a shard of it).
pub fn sweep(args: SweepArgs) -> Result<(), SimError> {
    let (Some(path), Some(out)) = (args.scenario.clone(), args.out.clone()) else {
        return Err(SimError::Usage("usage: otamesh sim sweep SCENARIO.toml --out DIR".into()));
    };
    let plan = Plan::new(&path, &args)?;
    let spec = &plan.spec;
    let shard_runs = plan.shard.runs(plan.runs);
    let split = if plan.sharded {
        format!(" (shard {}/{}: {shard_runs} runs)", plan.shard.index, plan.shard.count)
    } else {
        String::new()
    };
    println!(
        "otamesh sim sweep: {}: {} grid points x {} seeds ({}..{}) = {} runs{split} on {} threads; fingerprint {}",
        spec.scenario,
        spec.points(),
        spec.seed_count(),
        spec.seeds.from,
        spec.seeds.to,
        plan.runs,
        plan.jobs,
        &spec.fingerprint[..16]
    );
    cli::create_dir(&out)?;
    let started = Instant::now();
    let text = {
        let lines = execute(&plan, args.quiet);
        runs_csv(spec, lines.iter().map(|(_, line)| line.as_str()))
    };
    let wall_s = (!args.reproducible).then(|| round_ms(started.elapsed().as_secs_f64()));
    // Parsed back and checked like a shard's file, so both paths summarise the same rows.
    let rows = parse_runs(&out.join("runs.csv"), &text, spec, plan.shard, plan.runs)?;
    if plan.sharded {
        let file = ShardFile {
            sweep: spec.clone(),
            shard: plan.shard,
            runs: shard_runs,
            reproducible: args.reproducible,
            wall_s,
        };
        remove_stale(&out.join("sweep.json"))?;
        write_atomic(&out.join("runs.csv"), text.as_bytes())?;
        write_atomic(&out.join("shard.json"), pretty(&file).as_bytes())?;
        println!(
            "wrote shard {}/{} to {}; combine all shards with `otamesh sim sweep merge DIR... --out DIR`",
            plan.shard.index,
            plan.shard.count,
            out.display()
        );
        return Ok(());
    }
    write_study(&out, spec, &text, &rows, wall_s, &plan.plots)
}

/// Runs `otamesh sim sweep merge DIR... --out DIR`: checks that the directories hold
/// every shard of one sweep exactly once, then writes what the unsharded sweep writes.
pub fn merge(args: MergeArgs) -> Result<(), SimError> {
    let mut shards: Vec<(PathBuf, ShardFile, u64)> = Vec::new();
    for dir in &args.dirs {
        let path = dir.join("shard.json");
        let bytes = std::fs::read(&path).map_err(|error| MergeError::Read { path: path.clone(), error })?;
        let malformed = |reason: String| MergeError::Malformed { path: path.clone(), reason };
        let file: ShardFile = serde_json::from_slice(&bytes)
            .map_err(|e| malformed(format!("not a shard.json of `otamesh sim sweep --shard`: {e}")))?;
        let runs = file.sweep.check().map_err(malformed)?;
        let s = file.shard;
        if s.count == 0 || s.index >= s.count {
            return Err(malformed(format!("shard {}/{} is not a shard", s.index, s.count)).into());
        }
        if file.runs != s.runs(runs) {
            return Err(malformed(format!(
                "lists {} runs; shard {}/{} has {}",
                file.runs,
                s.index,
                s.count,
                s.runs(runs)
            ))
            .into());
        }
        shards.push((dir.clone(), file, runs));
    }
    let Some((first, head, runs)) = shards.first().cloned() else {
        return Err(SimError::Usage("usage: otamesh sim sweep merge DIR... --out DIR".into()));
    };
    for (dir, file, _) in &shards[1..] {
        if file.sweep.fingerprint != head.sweep.fingerprint {
            return Err(MergeError::Foreign {
                dir: dir.clone(),
                theirs: file.sweep.fingerprint[..16].to_owned(),
                first: first.clone(),
                ours: head.sweep.fingerprint[..16].to_owned(),
            }
            .into());
        }
        if file.shard.count != head.shard.count {
            return Err(MergeError::Split {
                dir: dir.clone(),
                index: file.shard.index,
                count: file.shard.count,
                first: first.clone(),
                expected: head.shard.count,
            }
            .into());
        }
        if file.reproducible != head.reproducible {
            let how = if file.reproducible { "with" } else { "without" };
            return Err(MergeError::Reproducible { dir: dir.clone(), how, first: first.clone() }.into());
        }
    }
    shards.sort_by_key(|(_, file, _)| file.shard.index);
    for pair in shards.windows(2) {
        if pair[0].1.shard.index == pair[1].1.shard.index {
            let (s, count) = (pair[1].1.shard.index, head.shard.count);
            return Err(MergeError::Duplicate {
                dir: pair[1].0.clone(),
                other: pair[0].0.clone(),
                index: s,
                count,
            }
            .into());
        }
    }
    if let Some(index) =
        (0..head.shard.count).find(|i| shards.get(*i as usize).is_none_or(|s| s.1.shard.index != *i))
    {
        return Err(MergeError::Missing { index, count: head.shard.count }.into());
    }
    let spec = head.sweep;
    let plots = plot_keys(&args.plot)?;
    let mut rows = Vec::with_capacity(usize::try_from(runs).unwrap_or(0));
    for (dir, file, _) in &shards {
        let path = dir.join("runs.csv");
        let text =
            std::fs::read_to_string(&path).map_err(|error| MergeError::Read { path: path.clone(), error })?;
        rows.extend(parse_runs(&path, &text, &spec, file.shard, runs)?);
    }
    rows.sort_by_key(|r| r.run);
    let text = runs_csv(&spec, rows.iter().map(|r| r.raw.as_str()));
    let wall_s =
        if head.reproducible { None } else { Some(round_ms(shards.iter().filter_map(|s| s.1.wall_s).sum())) };
    println!("otamesh sim sweep merge: {} shards of {} ({} runs)", shards.len(), spec.scenario, runs);
    cli::create_dir(&args.out)?;
    write_study(&args.out, &spec, &text, &rows, wall_s, &plots)
}

impl Spec {
    /// Grid points (1 without a grid).
    pub fn points(&self) -> u64 {
        self.grid.iter().map(|a| a.values.len() as u64).product()
    }

    /// Seeds per grid point.
    pub fn seed_count(&self) -> u64 {
        self.seeds.to - self.seeds.from
    }

    /// The grid values of point `p`, one per grid key.
    pub fn values(&self, mut p: u64) -> Vec<&str> {
        let mut values = vec![""; self.grid.len()];
        for (i, axis) in self.grid.iter().enumerate().rev() {
            let len = axis.values.len() as u64;
            values[i] = &axis.values[(p % len) as usize];
            p /= len;
        }
        values
    }

    /// `key=value, ...` of point `p` (`all runs` without a grid).
    pub fn label(&self, p: u64) -> String {
        if self.grid.is_empty() {
            return "all runs".into();
        }
        let values = self.values(p);
        self.grid.iter().zip(values).map(|(a, v)| format!("{}={v}", a.key)).collect::<Vec<_>>().join(", ")
    }

    /// The fingerprint of every other field.
    pub fn fingerprint_of(&self) -> String {
        let mut hasher = blake3::Hasher::new();
        let mut put = |s: &str| {
            hasher.update(&(s.len() as u64).to_le_bytes());
            hasher.update(s.as_bytes());
        };
        put("otamesh sweep 1");
        put(&self.otamesh);
        put(&self.scenario);
        put(&self.scenario_blake3);
        put(&self.set.len().to_string());
        self.set.iter().for_each(|s| put(s));
        put(&self.grid.len().to_string());
        for axis in &self.grid {
            put(&axis.key);
            put(&axis.values.len().to_string());
            axis.values.iter().for_each(|v| put(v));
        }
        put(&self.seeds.from.to_string());
        put(&self.seeds.to.to_string());
        hasher.finalize().to_hex().to_string()
    }

    /// Checks a spec read from a file; returns its run count.
    fn check(&self) -> Result<u64, String> {
        if self.seeds.from >= self.seeds.to {
            return Err(format!("seeds {}..{} is empty", self.seeds.from, self.seeds.to));
        }
        let mut points = 1u64;
        for axis in &self.grid {
            if axis.values.is_empty() {
                return Err(format!("grid key {} has no values", axis.key));
            }
            points = points.saturating_mul(axis.values.len() as u64);
        }
        let runs = points.saturating_mul(self.seed_count());
        if points > MAX_POINTS || runs > MAX_RUNS {
            return Err(format!("{points} grid points and {runs} runs: more than a sweep may hold"));
        }
        if self.fingerprint != self.fingerprint_of() {
            return Err("the fingerprint does not match the sweep it describes: the file was edited".into());
        }
        Ok(runs)
    }
}

impl Shard {
    /// The whole run list.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Runs of this shard out of `total`.
    pub fn runs(&self, total: u64) -> u64 {
        if self.index >= total { 0 } else { (total - self.index).div_ceil(self.count) }
    }

    /// The run number of this shard's `k`th run.
    pub fn run(&self, k: u64) -> u64 {
        self.index + k * self.count
    }

    /// Whether run `r` belongs to this shard.
    pub fn holds(&self, r: u64) -> bool {
        r % self.count == self.index
    }
}

/// `shard.json`: the sweep a shard belongs to, and which shard it is.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShardFile {
    sweep: Spec,
    shard: Shard,
    /// Runs in this shard.
    runs: u64,
    /// Whether it ran with `--reproducible`.
    reproducible: bool,
    /// Wall-clock seconds it took (`null` with `--reproducible`).
    wall_s: Option<f64>,
}

/// A sweep whose every input was checked.
struct Plan {
    spec: Spec,
    /// The scenario of each grid point.
    scenarios: Vec<Scenario>,
    shard: Shard,
    /// `--shard` was given (even `0/1`): write a shard's outputs for `merge`.
    sharded: bool,
    jobs: usize,
    plots: Vec<String>,
    runs: u64,
    reproducible: bool,
}

impl Plan {
    fn new(path: &Path, args: &SweepArgs) -> Result<Self, SimError> {
        if args.jobs == Some(0) {
            return Err(SweepError::NoJobs.into());
        }
        let shard = match &args.shard {
            Some(s) => parse_shard(s)?,
            None => Shard::ALL,
        };
        let plots = plot_keys(&args.plot)?;
        let file = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| crate::ScenarioError {
            file: file.clone(),
            key: "-".into(),
            reason: format!("cannot read the scenario: {e}"),
        })?;
        let text = String::from_utf8_lossy(&bytes);
        let base = Scenario::parse(&file, &text, &args.set)?;
        let seeds = seed_range(args, cli::seed_for(path, &base, None))?;
        let grid = grid_axes(&args.grid, &args.set)?;
        // Each value alone first, so that a bad value is named with its own key.
        for axis in &grid {
            for value in &axis.values {
                let mut sets = args.set.clone();
                sets.push(format!("{}={value}", axis.key));
                Scenario::parse(&file, &text, &sets).map_err(|e| SweepError::Grid {
                    key: axis.key.clone(),
                    reason: format!("value {value}: {e}"),
                })?;
            }
        }
        let mut spec = Spec {
            scenario: base.name().to_owned(),
            scenario_blake3: blake3::hash(&bytes).to_hex().to_string(),
            otamesh: env!("CARGO_PKG_VERSION").to_owned(),
            set: args.set.clone(),
            grid,
            seeds,
            fingerprint: String::new(),
        };
        spec.fingerprint = spec.fingerprint_of();
        let points = spec.grid.iter().try_fold(1u64, |n, a| n.checked_mul(a.values.len() as u64));
        let points = match points {
            Some(p) if p <= MAX_POINTS => p,
            _ => {
                return Err(
                    SweepError::TooLarge { what: "the grid's points".into(), limit: MAX_POINTS }.into()
                );
            }
        };
        let runs = match points.checked_mul(spec.seed_count()) {
            Some(r) if r <= MAX_RUNS => r,
            _ => {
                let what = format!("{points} grid points x {} seeds", spec.seed_count());
                return Err(SweepError::TooLarge { what, limit: MAX_RUNS }.into());
            }
        };
        let mut scenarios = Vec::with_capacity(points as usize);
        for p in 0..points {
            let mut sets = args.set.clone();
            sets.extend(spec.grid.iter().zip(spec.values(p)).map(|(a, v)| format!("{}={v}", a.key)));
            let scenario = Scenario::parse(&file, &text, &sets)
                .map_err(|e| SweepError::Point { point: spec.label(p), reason: e.to_string() })?;
            scenarios.push(scenario);
        }
        if shard.count > runs {
            let reason = format!("{} shards for {runs} runs: use at most {runs} shards", shard.count);
            return Err(
                SweepError::Shard { shard: format!("{}/{}", shard.index, shard.count), reason }.into()
            );
        }
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let jobs = args
            .jobs
            .unwrap_or(cores)
            .clamp(1, usize::try_from(shard.runs(runs)).unwrap_or(usize::MAX).max(1));
        let sharded = args.shard.is_some();
        Ok(Self { spec, scenarios, shard, sharded, jobs, plots, runs, reproducible: args.reproducible })
    }
}

/// Runs this shard's runs on `plan.jobs` threads; returns (run, `runs.csv` row) in run
/// order. Each thread holds one run's result at a time and keeps only its row.
fn execute(plan: &Plan, quiet: bool) -> Vec<(u64, String)> {
    let total = plan.shard.runs(plan.runs);
    let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(total) };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} runs, ETA {eta_precise}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let prefixes: Vec<Vec<String>> =
        (0..plan.spec.points()).map(|p| plan.spec.values(p).into_iter().map(csv_field).collect()).collect();
    let next = AtomicU64::new(0);
    let seeds = plan.spec.seed_count();
    let mut lines = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..plan.jobs)
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        if k >= total {
                            return mine;
                        }
                        let run = plan.shard.run(k);
                        let (point, seed) = ((run / seeds) as usize, plan.spec.seeds.from + run % seeds);
                        let started = Instant::now();
                        let result = engine::run(&plan.scenarios[point], seed, &mut |_| {});
                        let wall = (!plan.reproducible).then(|| started.elapsed().as_secs_f64());
                        let summary = Summary::of(&result, wall);
                        drop(result);
                        mine.push((run, row(run, &prefixes[point], &summary)));
                        bar.inc(1);
                    }
                })
            })
            .collect();
        for worker in workers {
            // A panicking run is a simulator bug: let it surface as it would unthreaded.
            lines.extend(worker.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)));
        }
    });
    bar.finish_and_clear();
    lines.sort_unstable_by_key(|(run, _)| *run);
    lines
}

/// One parsed row of `runs.csv`.
#[derive(Debug, Clone)]
struct Row {
    run: u64,
    /// The line as written (re-emitted unchanged by `merge`).
    raw: String,
    /// The value of every column that holds numbers; `None` for text columns and nulls.
    numbers: Vec<Option<f64>>,
}

/// The columns of `runs.csv`, each with whether it holds text: `run`, the grid keys,
/// then every summary key.
fn columns(spec: &Spec) -> Vec<(String, bool)> {
    let mut columns = vec![("run".to_owned(), false)];
    columns.extend(spec.grid.iter().map(|a| (a.key.clone(), true)));
    columns.extend(summary_keys());
    columns
}

/// Every summary key, in `summary.json` order, with whether it holds text.
fn summary_keys() -> Vec<(String, bool)> {
    // Invariant: a Summary serializes to a JSON object (see report.rs).
    match serde_json::to_value(Summary::default()) {
        Ok(Value::Object(keys)) => keys.into_iter().map(|(k, v)| (k, v.is_string())).collect(),
        _ => Vec::new(),
    }
}

/// The summary keys that hold numbers, but the seed: what `sweep.json` describes.
fn metric_names() -> Vec<String> {
    summary_keys().into_iter().filter(|(k, text)| !text && k != "seed").map(|(k, _)| k).collect()
}

fn row(run: u64, grid: &[String], summary: &Summary) -> String {
    let mut line = run.to_string();
    for cell in grid {
        line.push(',');
        line.push_str(cell);
    }
    // Invariant: a Summary serializes to a JSON object (see report.rs).
    let Ok(Value::Object(values)) = serde_json::to_value(summary) else { return line };
    for value in values.values() {
        line.push(',');
        match value {
            Value::Null => {}
            Value::String(s) => line.push_str(&csv_field(s)),
            Value::Number(n) => {
                let _ = write!(line, "{n}");
            }
            other => line.push_str(&csv_field(&other.to_string())),
        }
    }
    line
}

/// `runs.csv`: the header, then `lines` (rows in run order).
fn runs_csv<'a>(spec: &Spec, lines: impl Iterator<Item = &'a str>) -> String {
    let header: Vec<String> = columns(spec).into_iter().map(|(k, _)| csv_field(&k)).collect();
    let mut text = header.join(",");
    text.push('\n');
    for line in lines {
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// Parses and checks `runs.csv` of `shard`: the header this otamesh writes, every run of
/// the shard exactly once, grid values and seeds matching the run number, numbers where
/// numbers belong. Returns the rows in run order.
fn parse_runs(
    path: &Path,
    text: &str,
    spec: &Spec,
    shard: Shard,
    total: u64,
) -> Result<Vec<Row>, MergeError> {
    let bad = |reason: String| MergeError::Malformed { path: path.to_owned(), reason };
    let records = csv_records(text).map_err(bad)?;
    let columns = columns(spec);
    let mut records = records.into_iter();
    let Some(header) = records.next() else { return Err(bad("empty: no header line".into())) };
    if header.fields.len() != columns.len() || header.fields.iter().zip(&columns).any(|(f, (c, _))| f != c) {
        return Err(bad(format!(
            "the columns are not those of this otamesh's runs.csv ({}); merge with the otamesh version that ran the shards",
            columns.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>().join(",")
        )));
    }
    let seeds = spec.seed_count();
    let seed_column = columns.iter().position(|(c, _)| c == "seed");
    let mut rows = Vec::new();
    for record in records {
        let line = record.line;
        let at = |reason: String| bad(format!("line {line}: {reason}"));
        if record.fields.len() != columns.len() {
            return Err(at(format!("{} fields, expected {}", record.fields.len(), columns.len())));
        }
        let run: u64 = record.fields[0]
            .parse()
            .map_err(|_| at(format!("run {:?} is not a run number", record.fields[0])))?;
        if run >= total || !shard.holds(run) {
            return Err(at(format!("run {run} is not one of shard {}/{}'s runs", shard.index, shard.count)));
        }
        let point = run / seeds;
        for (i, value) in spec.values(point).into_iter().enumerate() {
            if record.fields[1 + i] != value {
                return Err(at(format!(
                    "{} is {:?}, but run {run} has {value:?}",
                    spec.grid[i].key,
                    record.fields[1 + i]
                )));
            }
        }
        let seed = spec.seeds.from + run % seeds;
        if let Some(c) = seed_column
            && record.fields[c] != seed.to_string()
        {
            return Err(at(format!("seed {:?}, but run {run} has seed {seed}", record.fields[c])));
        }
        let mut numbers = Vec::with_capacity(columns.len());
        for (field, (name, text)) in record.fields.iter().zip(&columns) {
            if *text || field.is_empty() {
                numbers.push(None);
                continue;
            }
            match field.parse::<f64>() {
                Ok(v) if v.is_finite() => numbers.push(Some(v)),
                _ => return Err(at(format!("{name} {field:?} is not a number"))),
            }
        }
        rows.push(Row { run, raw: record.raw, numbers });
    }
    rows.sort_by_key(|r| r.run);
    if let Some(pair) = rows.windows(2).find(|p| p[0].run == p[1].run) {
        return Err(bad(format!("run {} appears twice", pair[0].run)));
    }
    let expected = shard.runs(total);
    if rows.len() as u64 != expected {
        return Err(bad(format!(
            "{} runs, but shard {}/{} has {expected}: rerun it",
            rows.len(),
            shard.index,
            shard.count
        )));
    }
    Ok(rows)
}

/// One grid point's results.
struct PointStats {
    metrics: Vec<(String, Describe)>,
    outcomes: Vec<(&'static str, Proportion)>,
}

/// Writes `runs.csv`, the plots and `sweep.json` (last: its presence means the study is
/// whole), and prints a line per grid point. `rows` are every run, in run order.
fn write_study(
    out: &Path,
    spec: &Spec,
    text: &str,
    rows: &[Row],
    wall_s: Option<f64>,
    plots: &[String],
) -> Result<(), SimError> {
    let columns = columns(spec);
    let index = |name: &str| columns.iter().position(|(c, _)| c == name);
    let metric_columns: Vec<(String, usize)> =
        metric_names().into_iter().filter_map(|m| index(&m).map(|i| (m, i))).collect();
    let outcome_of = outcome_rules(&index);
    let seeds = spec.seed_count() as usize;
    let mut stats = Vec::new();
    for chunk in rows.chunks(seeds) {
        let metrics = metric_columns
            .iter()
            .map(|(name, i)| {
                let values: Vec<f64> = chunk.iter().filter_map(|r| r.numbers[*i]).collect();
                (name.clone(), Describe::of(&values))
            })
            .collect();
        let outcomes = outcome_of
            .iter()
            .map(|(name, rule)| {
                let yes = chunk.iter().filter(|r| rule(&r.numbers)).count() as u64;
                (*name, Proportion::of(yes, chunk.len() as u64))
            })
            .collect();
        stats.push(PointStats { metrics, outcomes });
    }
    remove_stale(&out.join("shard.json"))?;
    for key in plots {
        draw_bands(out, spec, &stats, key)?;
    }
    draw_t90(out, spec, &stats)?;
    write_atomic(&out.join("runs.csv"), text.as_bytes())?;
    write_atomic(&out.join("sweep.json"), sweep_json(spec, rows.len() as u64, wall_s, &stats).as_bytes())?;
    for (p, point) in stats.iter().enumerate() {
        println!("{}", point_line(&spec.label(p as u64), point));
    }
    println!("wrote {}", out.display());
    Ok(())
}

type Rule = Box<dyn Fn(&[Option<f64>]) -> bool>;

/// The rule of each outcome whose columns exist.
fn outcome_rules(index: &dyn Fn(&str) -> Option<usize>) -> Vec<(&'static str, Rule)> {
    let mut rules: Vec<(&'static str, Rule)> = Vec::new();
    for (name, _) in OUTCOMES {
        let rule: Option<Rule> = match name {
            "halted" => {
                index("halted_at_s").map(|i| Box::new(move |r: &[Option<f64>]| r[i].is_some()) as Rule)
            }
            "revoked" => {
                index("revoked_at_s").map(|i| Box::new(move |r: &[Option<f64>]| r[i].is_some()) as Rule)
            }
            "all_committed" => index("committed")
                .zip(index("devices"))
                .map(|(c, d)| Box::new(move |r: &[Option<f64>]| r[c].is_some() && r[c] == r[d]) as Rule),
            "any_failed" => index("failed")
                .map(|i| Box::new(move |r: &[Option<f64>]| r[i].is_some_and(|f| f > 0.0)) as Rule),
            _ => None,
        };
        if let Some(rule) = rule {
            rules.push((name, rule));
        }
    }
    rules
}

fn sweep_json(spec: &Spec, runs: u64, wall_s: Option<f64>, stats: &[PointStats]) -> String {
    // Invariant: Spec is plain strings and numbers, so it serializes to an object.
    let mut sweep = match serde_json::to_value(spec) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    sweep.insert("points".into(), spec.points().into());
    sweep.insert("runs".into(), runs.into());
    sweep.insert("wall_s".into(), wall_s.into());
    let points: Vec<Value> = stats
        .iter()
        .enumerate()
        .map(|(p, s)| {
            let grid: Map<String, Value> =
                spec.grid.iter().zip(spec.values(p as u64)).map(|(a, v)| (a.key.clone(), typed(v))).collect();
            let outcomes: Map<String, Value> =
                s.outcomes.iter().map(|(k, v)| ((*k).to_owned(), json(v))).collect();
            let metrics: Map<String, Value> = s.metrics.iter().map(|(k, v)| (k.clone(), json(v))).collect();
            serde_json::json!({
                "point": p,
                "grid": grid,
                "runs": spec.seed_count(),
                "outcomes": outcomes,
                "metrics": metrics,
            })
        })
        .collect();
    pretty(&serde_json::json!({ "sweep": sweep, "points": points }))
}

fn point_line(label: &str, s: &PointStats) -> String {
    let mut line = format!("{label}:");
    if let Some((_, p)) = s.outcomes.iter().find(|(k, _)| *k == "halted")
        && let (Some(v), Some([lo, hi])) = (p.proportion, p.ci95)
    {
        let _ = write!(
            line,
            " halted {:.1}% [{:.1}, {:.1}] of {} runs;",
            v * 100.0,
            lo * 100.0,
            hi * 100.0,
            p.runs
        );
    }
    if let Some((_, d)) = s.metrics.iter().find(|(k, _)| k == "t90_s") {
        match (d.mean, d.ci95) {
            (Some(m), Some([lo, hi])) => {
                let _ = write!(line, " t90 mean {m:.1} s [{lo:.1}, {hi:.1}] ({} runs reached it)", d.n);
            }
            (Some(m), None) => {
                let _ = write!(line, " t90 {m:.1} s ({} run reached it)", d.n);
            }
            _ => line.push_str(" t90 never reached"),
        }
    }
    line
}

/// `DIR/KEY.png`: the metric's mean (or the outcome's proportion) against the first grid
/// key, one line per combination of the other keys.
fn draw_bands(out: &Path, spec: &Spec, stats: &[PointStats], key: &str) -> Result<(), SimError> {
    let is_outcome = OUTCOMES.iter().any(|(k, _)| *k == key);
    let estimate = |p: usize| -> Option<(f64, f64, f64)> {
        let s = &stats[p];
        if is_outcome {
            let (_, o) = s.outcomes.iter().find(|(k, _)| *k == key)?;
            let [lo, hi] = o.ci95?;
            Some((o.proportion?, lo, hi))
        } else {
            let (_, d) = s.metrics.iter().find(|(k, _)| k == key)?;
            let mean = d.mean?;
            let [lo, hi] = d.ci95.unwrap_or([mean, mean]);
            Some((mean, lo, hi))
        }
    };
    let (x_desc, categories, per_x) = match spec.grid.first() {
        None => ("(no grid)".to_owned(), Some(vec!["all runs".to_owned()]), 1),
        Some(axis) => {
            let numeric = axis.values.iter().all(|v| number(v).is_some());
            let categories = (!numeric).then(|| axis.values.clone());
            (axis.key.clone(), categories, axis.values.len())
        }
    };
    let lines = stats.len() / per_x;
    let bands: Vec<Band> = (0..lines)
        .map(|line| {
            let mut points: Vec<Estimate> = (0..per_x)
                .filter_map(|i| {
                    let p = i * lines + line;
                    let (y, lo, hi) = estimate(p)?;
                    let x = match (&categories, spec.grid.first()) {
                        (None, Some(axis)) => number(&axis.values[i])?,
                        _ => i as f64,
                    };
                    Some(Estimate { x, y, lo, hi })
                })
                .collect();
            points.sort_by(|a, b| a.x.total_cmp(&b.x));
            let label = spec
                .grid
                .iter()
                .zip(spec.values(line as u64))
                .skip(1)
                .map(|(a, v)| format!("{}={v}", a.key))
                .collect::<Vec<_>>()
                .join(", ");
            Band { label, points }
        })
        .collect();
    let (title, y_desc) = if is_outcome {
        (
            format!("{}: share of runs {key} (Wilson 95% interval)", spec.scenario),
            format!("{key} (share of runs)"),
        )
    } else {
        (format!("{}: {key}, mean and 95% interval", spec.scenario), format!("{key} (mean)"))
    };
    plot::bands(&BandChart { title, x_desc, y_desc, categories, bands }, &out.join(format!("{key}.png")))
}

/// `DIR/t90_s-distribution.png`: t90 per grid point.
fn draw_t90(out: &Path, spec: &Spec, stats: &[PointStats]) -> Result<(), SimError> {
    let spreads = stats
        .iter()
        .enumerate()
        .filter_map(|(p, s)| {
            let (_, d) = s.metrics.iter().find(|(k, _)| k == "t90_s")?;
            let quantiles = (|| Some([d.min?, d.p5?, d.p25?, d.p50?, d.p75?, d.p95?, d.max?]))();
            let label =
                if spec.grid.is_empty() { "all runs".to_owned() } else { spec.values(p as u64).join(", ") };
            Some(Spread { label, missing: spec.seed_count() - d.n, quantiles })
        })
        .collect();
    let keys = spec.grid.iter().map(|a| a.key.as_str()).collect::<Vec<_>>().join(", ");
    let title = if keys.is_empty() {
        format!("{}: t90 over {} seeds", spec.scenario, spec.seed_count())
    } else {
        format!("{}: t90 per grid point ({keys})", spec.scenario)
    };
    let chart = SpreadChart { title, y_desc: "t90 (s)".into(), spreads };
    plot::spreads(&chart, &out.join("t90_s-distribution.png"))
}

/// Checks `--plot` keys (or takes the defaults).
fn plot_keys(keys: &[String]) -> Result<Vec<String>, SweepError> {
    if keys.is_empty() {
        return Ok(DEFAULT_PLOTS.iter().map(|k| (*k).to_owned()).collect());
    }
    let mut choices = metric_names();
    choices.extend(OUTCOMES.iter().map(|(k, _)| (*k).to_owned()));
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for key in keys {
        if !choices.contains(key) {
            return Err(SweepError::Plot { key: key.clone(), choices: choices.join(", ") });
        }
        if seen.insert(key.clone()) {
            out.push(key.clone());
        }
    }
    Ok(out)
}

/// `I/N` with `I < N`.
fn parse_shard(s: &str) -> Result<Shard, SweepError> {
    let fail = |reason: &str| SweepError::Shard { shard: s.to_owned(), reason: reason.to_owned() };
    let Some((i, n)) = s.split_once('/') else {
        return Err(fail("write I/N: shard I (from 0) of N, e.g. --shard 0/4"));
    };
    let (Ok(index), Ok(count)) = (i.trim().parse::<u64>(), n.trim().parse::<u64>()) else {
        return Err(fail("write I/N with two whole numbers, e.g. --shard 0/4"));
    };
    if count == 0 {
        return Err(fail("the shard count N must be at least 1"));
    }
    if index >= count {
        return Err(SweepError::Shard {
            shard: s.to_owned(),
            reason: format!(
                "index {index} is out of range: shards are numbered from 0, so use 0 to {} (with Slurm: $SLURM_ARRAY_TASK_ID from an --array=0-{})",
                count - 1,
                count - 1
            ),
        });
    }
    Ok(Shard { index, count })
}

/// The seeds: `--seeds N` from the scenario's seed on, `--seed-range A..B` or `A..=B`,
/// or [`DEFAULT_SEEDS`] from the scenario's seed on.
fn seed_range(args: &SweepArgs, base: u64) -> Result<SeedRange, SweepError> {
    let fail = |option: String, reason: &str| SweepError::Seeds { option, reason: reason.to_owned() };
    if let Some(raw) = &args.seed_range {
        let option = format!("--seed-range {raw}");
        let (a, b, inclusive) = if let Some((a, b)) = raw.split_once("..=") {
            (a, b, true)
        } else if let Some((a, b)) = raw.split_once("..") {
            (a, b, false)
        } else {
            return Err(fail(option, "write A..B (B excluded) or A..=B, e.g. --seed-range 0..1000"));
        };
        let (Ok(from), Ok(last)) = (a.trim().parse::<u64>(), b.trim().parse::<u64>()) else {
            return Err(fail(option, "A and B must be whole numbers, e.g. --seed-range 0..1000"));
        };
        let to = if inclusive {
            last.checked_add(1).ok_or_else(|| fail(option.clone(), "the range ends past the last seed"))?
        } else {
            last
        };
        if from >= to {
            return Err(fail(option, "the range is empty: write A..B with A < B (B is excluded)"));
        }
        return Ok(SeedRange { from, to });
    }
    let n = args.seeds.unwrap_or(DEFAULT_SEEDS);
    if n == 0 {
        return Err(fail("--seeds 0".into(), "run at least one seed"));
    }
    let to = base.checked_add(n).ok_or_else(|| {
        fail(
            format!("--seeds {n}"),
            &format!("{n} seeds from the scenario's seed {base} pass the last seed; use --seed-range"),
        )
    })?;
    Ok(SeedRange { from: base, to })
}

/// Parses the `--grid` options and rejects keys that cannot be swept.
fn grid_axes(options: &[String], sets: &[String]) -> Result<Vec<Axis>, SweepError> {
    let mut axes: Vec<Axis> = Vec::new();
    for option in options {
        let Some((key, list)) = option.split_once('=') else {
            return Err(SweepError::Grid {
                key: option.clone(),
                reason: "write section.key=v1,v2,... e.g. --grid rollout.waves.0.percent=1,2,5".into(),
            });
        };
        let key = key.trim().to_owned();
        let fail = |reason: String| SweepError::Grid { key: key.clone(), reason };
        if key.is_empty() {
            return Err(SweepError::Grid {
                key: option.clone(),
                reason: "the key is empty: write section.key=v1,v2,...".into(),
            });
        }
        if key == "sim.seed" {
            return Err(fail("seeds come from --seeds or --seed-range, not from the grid".into()));
        }
        if axes.iter().any(|a| a.key == key) {
            return Err(fail("given twice: list all its values in one --grid".into()));
        }
        if sets.iter().any(|s| s.split_once('=').is_some_and(|(k, _)| k.trim() == key)) {
            return Err(fail("also given with --set: drop one of them".into()));
        }
        let values = split_values(list).map_err(&fail)?;
        if values.iter().all(String::is_empty) {
            return Err(fail(format!("the value list is empty: give at least one value, e.g. {key}=1,2")));
        }
        if let Some(i) = values.iter().position(String::is_empty) {
            return Err(fail(format!(
                "value {} of {} is empty: remove the extra comma",
                i + 1,
                values.len()
            )));
        }
        if let Some((i, v)) = values.iter().enumerate().find(|(i, v)| values[..*i].contains(v)) {
            return Err(fail(format!("value {v} is listed twice (as value {})", i + 1)));
        }
        axes.push(Axis { key, values });
    }
    Ok(axes)
}

/// Splits `v1,v2,...` at the commas outside brackets, braces and quotes, so that TOML
/// lists and tables are one value: `[{percent=2},{percent=100}],[]` is two.
fn split_values(list: &str) -> Result<Vec<String>, String> {
    let mut values = Vec::new();
    let (mut depth, mut quote, mut start) = (0i32, None::<char>, 0);
    for (i, c) in list.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '[' | '{') => depth += 1,
            (None, ']' | '}') => depth -= 1,
            (None, ',') if depth == 0 => {
                values.push(list[start..i].trim().to_owned());
                start = i + 1;
            }
            _ => {}
        }
        if depth < 0 {
            return Err(format!("a closing bracket without an opening one in {list:?}"));
        }
    }
    if depth != 0 || quote.is_some() {
        return Err(format!("unbalanced brackets or quotes in {list:?}"));
    }
    values.push(list[start..].trim().to_owned());
    Ok(values)
}

/// A grid value as JSON: a number, boolean or string where TOML reads it so.
fn typed(raw: &str) -> Value {
    match toml_value(raw) {
        Some(toml::Value::Integer(i)) => i.into(),
        Some(toml::Value::Float(f)) if f.is_finite() => f.into(),
        Some(toml::Value::Boolean(b)) => b.into(),
        Some(toml::Value::String(s)) => s.into(),
        _ => raw.into(),
    }
}

/// A grid value as a number, if TOML reads it as one.
fn number(raw: &str) -> Option<f64> {
    match toml_value(raw)? {
        toml::Value::Integer(i) => Some(i as f64),
        toml::Value::Float(f) if f.is_finite() => Some(f),
        _ => None,
    }
}

fn toml_value(raw: &str) -> Option<toml::Value> {
    format!("v = {raw}").parse::<toml::Table>().ok()?.remove("v")
}

/// A CSV field: quoted when it holds a comma, a quote or a line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_owned() }
}

/// One CSV record: its first line number, its text as written, its fields unquoted.
struct Record {
    line: usize,
    raw: String,
    fields: Vec<String>,
}

/// Splits CSV text (RFC 4180: quoted fields may hold commas, quotes doubled, line
/// breaks) into records. Never panics on malformed input: it says where it is.
fn csv_records(text: &str) -> Result<Vec<Record>, String> {
    let bytes = text.as_bytes();
    let mut records = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < bytes.len() {
        let (start, first_line) = (i, line);
        let mut fields = Vec::new();
        let end = loop {
            if bytes[i..].first() == Some(&b'"') {
                let mut field = Vec::new();
                i += 1;
                loop {
                    match bytes.get(i) {
                        None => return Err(format!("line {first_line}: a quoted field is not closed")),
                        Some(b'"') if bytes.get(i + 1) == Some(&b'"') => {
                            field.push(b'"');
                            i += 2;
                        }
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(&b) => {
                            line += usize::from(b == b'\n');
                            field.push(b);
                            i += 1;
                        }
                    }
                }
                // The field lies between ASCII quotes of valid UTF-8, so it is valid too.
                fields.push(String::from_utf8(field).map_err(|_| format!("line {line}: not UTF-8"))?);
            } else {
                let from = i;
                while i < bytes.len() && !matches!(bytes[i], b',' | b'\n' | b'\r') {
                    if bytes[i] == b'"' {
                        return Err(format!("line {line}: a quote inside an unquoted field"));
                    }
                    i += 1;
                }
                fields.push(text[from..i].to_owned());
            }
            match bytes.get(i) {
                Some(b',') => i += 1,
                Some(b'\n') => {
                    i += 1;
                    line += 1;
                    break i - 1;
                }
                Some(b'\r') if bytes.get(i + 1) == Some(&b'\n') => {
                    i += 2;
                    line += 1;
                    break i - 2;
                }
                None => break i,
                Some(_) => {
                    return Err(format!("line {line}: a quoted field must end at a comma or the line's end"));
                }
            }
        };
        records.push(Record { line: first_line, raw: text[start..end].to_owned(), fields });
    }
    Ok(records)
}

/// Writes `bytes` to `path` through a temporary file and a rename, so that a reader
/// sees the old file or the whole new one.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SimError> {
    let name = path.file_name().map_or_else(|| "out".into(), |n| n.to_string_lossy().into_owned());
    let temporary = path.with_file_name(format!(".{name}.partial"));
    cli::write(&temporary, bytes)?;
    std::fs::rename(&temporary, path).map_err(|source| SimError::Write { path: path.to_owned(), source })
}

/// Removes a file that described another kind of output in this directory (a shard's
/// `shard.json` under a whole sweep, or the reverse), so it cannot be mistaken for this one.
fn remove_stale(path: &Path) -> Result<(), SimError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(SimError::Write { path: path.to_owned(), source: e })
        }
        _ => Ok(()),
    }
}

fn json<T: Serialize>(value: &T) -> Value {
    // Invariant: the statistics types are numbers and options of numbers.
    serde_json::to_value(value).unwrap_or(Value::Null)
}

fn pretty<T: Serialize>(value: &T) -> String {
    // Invariant: values built from numbers, strings and maps always serialize.
    let mut s = serde_json::to_string_pretty(value).unwrap_or_default();
    s.push('\n');
    s
}

fn round_ms(s: f64) -> f64 {
    (s * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_split_at_top_level_commas_only() {
        // (list, values)
        let table: &[(&str, &[&str])] = &[
            // Plain numbers.
            ("1,2, 5", &["1", "2", "5"]),
            // One value.
            ("central", &["central"]),
            // TOML lists and inline tables stay whole.
            ("[{percent=2},{percent=100}],[]", &["[{percent=2},{percent=100}]", "[]"]),
            // Commas inside quotes.
            ("\"a,b\",c", &["\"a,b\"", "c"]),
            // Empty items are kept, so that they can be reported.
            ("1,,2", &["1", "", "2"]),
            ("", &[""]),
        ];
        for (list, values) in table {
            assert_eq!(split_values(list).unwrap(), *values, "{list}");
        }
        assert!(split_values("[1,2").is_err());
        assert!(split_values("1],2").is_err());
    }

    #[test]
    fn csv_round_trips_awkward_fields() {
        let fields = ["plain", "with,comma", "with \"quotes\"", "two\nlines", ""];
        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        let text = format!("{}\r\nnext,1\n", line.join(","));
        let records = csv_records(&text).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].fields, fields);
        assert_eq!(records[0].raw, line.join(","));
        assert_eq!((records[1].line, records[1].raw.as_str()), (3, "next,1"));
        // Malformed input is an error, never a panic.
        for bad in ["\"open", "a\"b,c", "\"x\"y"] {
            assert!(csv_records(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn shards_partition_the_run_list() {
        for total in [1u64, 7, 12] {
            for count in 1..=total.min(5) {
                let mut seen = Vec::new();
                for index in 0..count {
                    let s = Shard { index, count };
                    seen.extend((0..s.runs(total)).map(|k| s.run(k)));
                    assert!((0..s.runs(total)).all(|k| s.holds(s.run(k))));
                }
                seen.sort_unstable();
                assert_eq!(seen, (0..total).collect::<Vec<_>>(), "{total} runs in {count} shards");
            }
        }
    }

    #[test]
    fn grid_points_enumerate_with_the_first_key_slowest() {
        let spec = Spec {
            scenario: "s".into(),
            scenario_blake3: String::new(),
            otamesh: String::new(),
            set: Vec::new(),
            grid: vec![
                Axis { key: "a.x".into(), values: vec!["1".into(), "2".into()] },
                Axis { key: "b.y".into(), values: vec!["p".into(), "q".into(), "r".into()] },
            ],
            seeds: SeedRange { from: 5, to: 9 },
            fingerprint: String::new(),
        };
        assert_eq!(spec.points(), 6);
        assert_eq!(spec.values(0), ["1", "p"]);
        assert_eq!(spec.values(2), ["1", "r"]);
        assert_eq!(spec.values(3), ["2", "p"]);
        assert_eq!(spec.label(5), "a.x=2, b.y=r");
        // The fingerprint covers the seeds.
        let mut other = spec.clone();
        other.seeds.to = 10;
        assert_ne!(spec.fingerprint_of(), other.fingerprint_of());
    }
}
