//! `otamesh bench`: the benchmark suite a CI job runs (see `otamesh_bench` and
//! docs/benchmarks.md), and `otamesh bench history` to plot metrics across runs.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use otamesh_bench::{Options, Progress, Results, Size, regressions, report, suite};

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Args {
    /// Plot runs against each other instead of running the suite.
    #[command(subcommand)]
    command: Option<BenchCommand>,
    /// Where results.json (Bencher Metric Format), summary.md and the plots go; created
    /// if missing, those files replaced.
    #[arg(long, value_name = "DIR", required = true)]
    out: Option<PathBuf>,
    /// The short suite: within 5 minutes on 2 cores in a release build.
    #[arg(long)]
    quick: bool,
    /// Compare with this results.json; exit 1 naming every metric worse than it by more
    /// than the metric's tolerance.
    #[arg(long, value_name = "FILE")]
    baseline: Option<PathBuf>,
    /// Run only the parts whose name contains NAME: core, sim, sim/SCENARIO, fleet, lan
    /// (repeatable).
    #[arg(long, value_name = "NAME")]
    filter: Vec<String>,
    /// Scratch space for stores and node data (default DIR/work, removed after a
    /// successful run). /dev/shm keeps the disk's fsyncs out of the LAN figures.
    #[arg(long, value_name = "DIR")]
    work: Option<PathBuf>,
    /// The simulator scenarios directory.
    #[arg(long, value_name = "DIR", default_value = "scenarios")]
    scenarios: PathBuf,
    /// Tiny sizes, for the test suite in a debug build: the figures mean nothing.
    #[arg(long, hide = true, conflicts_with = "quick")]
    tiny: bool,
}

#[derive(Debug, clap::Subcommand)]
enum BenchCommand {
    /// One PNG per metric across several results.json files (oldest first).
    History(HistoryArgs),
    /// Compare a results.json with a baseline without running anything: the summary
    /// table on stdout, exit 1 naming every regression.
    Compare(CompareArgs),
}

#[derive(Debug, clap::Args)]
struct CompareArgs {
    /// The results.json of the run to judge.
    #[arg(value_name = "FILE")]
    results: PathBuf,
    /// The results.json to compare it with.
    #[arg(long, value_name = "FILE")]
    baseline: PathBuf,
}

#[derive(Debug, clap::Args)]
struct HistoryArgs {
    /// results.json files, in commit order.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Where the charts go (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match &args.command {
        Some(BenchCommand::History(h)) => return history(h),
        Some(BenchCommand::Compare(c)) => return compare(c),
        None => {}
    }
    let Some(out) = args.out else { bail!("--out DIR is required: where results.json and the plots go") };
    // Read the baseline first, so a wrong path fails in a second, not after the suite.
    let baseline = args.baseline.as_deref().map(Results::read).transpose().context("bench --baseline")?;
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create --out {}", out.display()))?;
    let out = out.canonicalize().with_context(|| format!("cannot resolve {}", out.display()))?;
    let work = args.work.clone().unwrap_or_else(|| out.join("work"));
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create --work {}", work.display()))?;
    let size = match (args.tiny, args.quick) {
        (true, _) => Size::Tiny,
        (false, true) => Size::Quick,
        (false, false) => Size::Full,
    };
    let options = Options {
        size,
        filters: args.filter.clone(),
        exe: std::env::current_exe().context("cannot find the otamesh binary to start nodes with")?,
        out: out.clone(),
        work: work.canonicalize().unwrap_or(work.clone()),
        scenarios: args.scenarios.clone(),
    };
    let mut progress = Bar::new();
    let started = std::time::Instant::now();
    let outcome = suite::run(&options, &mut progress);
    progress.bar.finish_and_clear();
    let mut outcome = outcome?;
    let took = started.elapsed().as_secs_f64();
    outcome.notes.push(format!("suite: {} size, {took:.0} s wall", size_name(size)));
    let regs = baseline.as_ref().map(|b| regressions(&outcome.results, b)).unwrap_or_default();
    write(&out.join("results.json"), &outcome.results.to_json())?;
    let title = format!("otamesh bench ({})", size_name(size));
    let md =
        report::summary(&title, &outcome.results, baseline.as_ref(), &regs, &outcome.notes, &outcome.plots);
    write(&out.join("summary.md"), &md)?;
    if args.work.is_none() {
        let _ = std::fs::remove_dir_all(&work);
    }
    say(&md);
    eprintln!(
        "wrote {} and {} in {took:.0} s",
        out.join("results.json").display(),
        out.join("summary.md").display()
    );
    Ok(verdict(&regs))
}

/// Exit 0 without regressions; else each named on stderr, and exit 1.
fn verdict(regs: &[otamesh_bench::Regression]) -> ExitCode {
    if regs.is_empty() {
        return ExitCode::SUCCESS;
    }
    for r in regs {
        eprintln!("regression: {r}");
    }
    ExitCode::FAILURE
}

fn compare(c: &CompareArgs) -> anyhow::Result<ExitCode> {
    let results = Results::read(&c.results).context("bench compare")?;
    let baseline = Results::read(&c.baseline).context("bench compare --baseline")?;
    let regs = regressions(&results, &baseline);
    say(&report::summary("otamesh bench compare", &results, Some(&baseline), &regs, &[], &[]));
    Ok(verdict(&regs))
}

fn history(h: &HistoryArgs) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&h.out).with_context(|| format!("cannot create --out {}", h.out.display()))?;
    let files: Vec<&Path> = h.files.iter().map(PathBuf::as_path).collect();
    let written = report::history(&files, &h.out)?;
    for w in &written {
        say(&h.out.join(w).display().to_string());
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints a line on stdout; a reader that went away (`| head`) is not an error: the
/// files are written by then.
fn say(text: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

fn size_name(size: Size) -> &'static str {
    match size {
        Size::Full => "full",
        Size::Quick => "quick",
        _ => "tiny",
    }
}

/// A progress bar on a terminal; one line per step in a CI log.
struct Bar {
    bar: ProgressBar,
    terminal: bool,
    part: String,
}

impl Bar {
    fn new() -> Self {
        let terminal = std::io::stderr().is_terminal();
        let bar = ProgressBar::with_draw_target(
            Some(suite::PARTS.len() as u64),
            ProgressDrawTarget::stderr_with_hz(4),
        );
        // Invariant: the template is a constant known to parse.
        let style = ProgressStyle::with_template("{elapsed:>4} [{bar:20}] {pos}/{len} parts  {msg}")
            .expect("valid template")
            .progress_chars("=> ");
        bar.set_style(style);
        Self { bar, terminal, part: String::new() }
    }
}

impl Progress for Bar {
    fn step(&mut self, part: &str, what: &str) {
        if part != self.part {
            if !self.part.is_empty() {
                self.bar.inc(1);
            }
            self.part = part.to_owned();
        }
        if self.terminal {
            self.bar.set_message(format!("{part}: {what}"));
        } else {
            eprintln!("bench {part}: {what}");
        }
    }
}
