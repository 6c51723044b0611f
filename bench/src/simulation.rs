//! The simulator scenarios: t50/t90/t100 (virtual seconds from publication until that
//! share of the fleet committed), the rollback time (virtual seconds from the revoke
//! reaching the fleet until the last rollback finished), and for each run its wall
//! time and peak resident memory.
//!
//! Each scenario runs as its own `otamesh sim` process, so its peak memory is its own:
//! the harness reads the child's `VmHWM` from `/proc/PID/status` every 20 ms until it
//! exits (so growth in its last 20 ms can be missed; Linux only, absent elsewhere).
//! Virtual times are deterministic for a seed and recorded once; wall time and memory
//! are repeated.

use std::path::Path;
use std::time::{Duration, Instant};

use otamesh_fleet::plot;
use otamesh_fleet::process::NodeProcess;

use crate::bmf::Measure;
use crate::suite::{Options, Outcome, Progress, Size, scratch};

/// A scenario of the suite, and the overrides of a size.
struct Case {
    name: &'static str,
    overrides: &'static [&'static str],
}

fn cases(size: Size) -> (Vec<Case>, usize) {
    let gate = Case { name: "bad-release-gate", overrides: &[] };
    match size {
        Size::Full => (
            vec![
                gate,
                Case { name: "canary", overrides: &[] },
                Case { name: "bench-100k", overrides: &[] },
                Case { name: "fleet-1m", overrides: &[] },
            ],
            3,
        ),
        Size::Quick => (vec![gate, Case { name: "bench-100k", overrides: &[] }], 1),
        Size::Tiny => {
            (vec![Case { name: "bad-release-gate", overrides: &["fleet.devices=400", "fleet.sites=8"] }], 1)
        }
    }
}

pub(crate) fn run(
    options: &Options,
    outcome: &mut Outcome,
    progress: &mut dyn Progress,
) -> Result<(), String> {
    let (cases, runs) = cases(options.size);
    let mut any = false;
    for case in cases {
        let bench = format!("sim/{}", case.name);
        if !options.selected(&bench) {
            continue;
        }
        any = true;
        let scenario = options.scenarios.join(format!("{}.toml", case.name));
        if !scenario.is_file() {
            return Err(format!(
                "{} not found; run from the repository or pass --scenarios DIR",
                scenario.display()
            ));
        }
        let mut walls = Vec::new();
        let mut rss = Vec::new();
        let mut summary = serde_json::Value::Null;
        let out = scratch(options, &format!("sim-{}", case.name))?;
        for run in 0..runs {
            progress.step("sim", &format!("{} run {}/{runs}", case.name, run + 1));
            let (wall, peak) = run_sim(options, &scenario, case.overrides, &out)?;
            walls.push(wall);
            rss.extend(peak);
            let text = std::fs::read_to_string(out.join("summary.json"))
                .map_err(|e| format!("{}: {e}", out.display()))?;
            summary =
                serde_json::from_str(&text).map_err(|e| format!("{}/summary.json: {e}", out.display()))?;
        }
        let f = |k: &str| summary[k].as_f64();
        for (key, name) in [("t50_s", "t50"), ("t90_s", "t90"), ("t100_s", "t100")] {
            if let Some(t) = f(key) {
                outcome.results.record(&format!("{bench}/{name}"), Measure::SimSeconds, &[t]);
            }
        }
        if let (Some(revoked), Some(done)) = (f("revoked_at_s"), f("rollback_done_s")) {
            outcome.results.record(&format!("{bench}/rollback"), Measure::SimSeconds, &[done - revoked]);
        }
        outcome.results.record(&format!("{bench}/run"), Measure::WallSeconds, &walls);
        outcome.results.record(&format!("{bench}/run"), Measure::PeakRss, &rss);
        if case.name == "bad-release-gate" {
            plots(options, outcome, &out, case.name)?;
        }
        let shape = if case.overrides.is_empty() {
            String::new()
        } else {
            format!(" with {}", case.overrides.join(", "))
        };
        outcome.notes.push(format!("sim/{}: scenarios/{}.toml{shape}, {runs} run(s)", case.name, case.name));
    }
    if !any {
        return Err("no simulator scenario matches --filter".into());
    }
    Ok(())
}

/// Runs one scenario; returns its wall seconds and peak RSS in bytes (if readable).
fn run_sim(
    options: &Options,
    scenario: &Path,
    overrides: &[&str],
    out: &Path,
) -> Result<(f64, Option<f64>), String> {
    let mut args = vec![
        "sim".to_string(),
        scenario.display().to_string(),
        "--out".into(),
        out.display().to_string(),
        "--quiet".into(),
    ];
    for o in overrides {
        args.extend(["--set".to_string(), (*o).to_owned()]);
    }
    let log = out.with_extension("log");
    let _ = std::fs::remove_file(&log);
    let mut sim = NodeProcess::new("sim", &options.exe, args, log);
    let t0 = Instant::now();
    sim.spawn().map_err(|e| e.to_string())?;
    let status_file = sim.pid().map(|pid| format!("/proc/{pid}/status")).unwrap_or_default();
    let mut peak: Option<f64> = None;
    let status = loop {
        if let Some(kib) = std::fs::read_to_string(&status_file).ok().and_then(|s| vm_hwm_kib(&s)) {
            peak = Some(peak.unwrap_or(0.0).max(kib * 1024.0));
        }
        match sim.exited() {
            Some(status) => break status,
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let wall = t0.elapsed().as_secs_f64();
    if !status.success() {
        return Err(format!("otamesh sim {} failed ({status}):\n{}", scenario.display(), sim.tail(15)));
    }
    Ok((wall, peak))
}

/// `VmHWM` (peak resident set) in KiB from a `/proc/PID/status` text.
fn vm_hwm_kib(status: &str) -> Option<f64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `sim-convergence.png` (the simulator's own figure) and `sim-rollback.png` (from its
/// time series: committed and rolled-back shares, the revoke marked).
fn plots(options: &Options, outcome: &mut Outcome, out: &Path, name: &str) -> Result<(), String> {
    let conv = out.join("convergence.png");
    if conv.is_file() {
        std::fs::copy(&conv, options.out.join("sim-convergence.png")).map_err(|e| e.to_string())?;
        outcome.plots.push("sim-convergence.png".into());
    }
    let csv =
        std::fs::read_to_string(out.join("timeseries.csv")).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let col = |n: &str| header.iter().position(|h| *h == n);
    let (Some(t), Some(committed), Some(rolled)) = (col("t_s"), col("committed"), col("rolled_back")) else {
        return Err("the simulator's timeseries.csv lacks t_s, committed or rolled_back".into());
    };
    let summary: serde_json::Value = std::fs::read_to_string(out.join("summary.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default();
    let devices = summary["devices"].as_f64().unwrap_or(1.0).max(1.0);
    let (mut c, mut r) = (Vec::new(), Vec::new());
    for line in lines {
        let cells: Vec<f64> = line.split(',').map(|x| x.parse().unwrap_or(f64::NAN)).collect();
        let (Some(&x), Some(&cv), Some(&rv)) = (cells.get(t), cells.get(committed), cells.get(rolled)) else {
            continue;
        };
        c.push((x / 60.0, 100.0 * cv / devices));
        r.push((x / 60.0, 100.0 * rv / devices));
    }
    let mut marks = Vec::new();
    for (key, label) in [
        ("halted_at_s", "halted by the gate"),
        ("revoked_at_s", "revoke"),
        ("rollback_done_s", "all rolled back"),
    ] {
        if let Some(x) = summary[key].as_f64() {
            marks.push(plot::Mark { x: x / 60.0, label: label.into() });
        }
    }
    let top = c.iter().chain(&r).map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let chart = plot::Chart {
        title: format!("simulator, {name}: committed and rolled back ({devices} devices)"),
        x_desc: "minutes since publication (virtual time)".into(),
        y_desc: "share of the fleet (%)".into(),
        y_max: top.min(100.0),
        series: vec![
            plot::Series { label: "committed".into(), color: (31, 119, 180), points: c },
            plot::Series { label: "rolled back (failed or revoked)".into(), color: (214, 39, 40), points: r },
        ],
        marks,
    };
    crate::rollout::write(options, outcome, &chart, "sim-rollback.png")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_rss_is_read_from_proc_status() {
        let text = "Name:\totamesh\nVmPeak:\t  200 kB\nVmHWM:\t    1234 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(vm_hwm_kib(text), Some(1234.0));
        assert_eq!(vm_hwm_kib("Name: x\n"), None);
    }
}
