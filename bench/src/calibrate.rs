//! The simulator checked against the real mesh: one rollout played twice, once by real
//! node processes on this machine and once by `otamesh sim` with the same parameters,
//! both convergence curves on one plot and the errors of the fleet-level figures.
//!
//! The real side: SITES x NODES `otamesh node` processes on loopback, one origin whose
//! egress is throttled to a known rate, a first release (the revoke's target, untimed),
//! then the measured release with the demo's rollout (a first wave of 25%, everyone
//! after `WAVE_AFTER_S`), and a revoke of it once every device runs it. The fleet is
//! sampled every 50 ms.
//!
//! The simulated side is built from the same parameters (fleet shape, release size,
//! origin rate, poll interval, rollout policy, revoke time) plus three durations
//! measured on single devices, never fitted to the outcome: how long a device takes
//! from `installing` to `committed` and from applying the revoke to `rolled_back`
//! (medians over the devices), and how long the revoke took to reach the first device
//! (all from their audit logs). What is compared is what neither side was given: t50,
//! t90, t100 from publication, WAN bytes, and the time from the revoke to the last
//! device back.
//!
//! **Non-goals:** fitting. A parameter the simulator cannot know (loopback LAN speed) is
//! set from the LAN benchmark's order of magnitude and said so in the notes; it barely
//! matters here because the throttled origin is the bottleneck.

use std::path::Path;
use std::time::{Duration, Instant};

use otamesh_core::rollout::{RolloutPolicy, Wave};
use otamesh_fleet::fleet::NodeSpec;
use otamesh_fleet::{Origin, Timeline, plot};
use otamesh_node::store::Store;

use crate::bmf::Measure;
use crate::rollout::{CLASS, all_on, publish, revoke, start_fleet, watch};
use crate::suite::{Options, Outcome, Progress, Size, noise, publisher, scratch};

const SAMPLE_EVERY: Duration = Duration::from_millis(50);
const POLL_S: f64 = 0.5;
const WAVE1_PERCENT: f64 = 25.0;
/// The LAN speed given to the simulator: loopback between two nodes moves 100–250 MiB/s
/// on the 2-core machines (`lan/two_node_transfer`); about 1 Gb/s.
const LAN_MBPS: f64 = 1000.0;

/// (sites, nodes per site, MiB, origin bytes per second, wave 2 after seconds)
fn shape(size: Size) -> (usize, usize, usize, u64, u64) {
    match size {
        Size::Full | Size::Quick => (3, 4, 8, 2 << 20, 6),
        Size::Tiny => (2, 2, 1, 1 << 20, 2),
    }
}

/// A fleet-level figure of both sides.
struct Figure {
    name: &'static str,
    real: Option<f64>,
    sim: Option<f64>,
    unit: &'static str,
}

impl Figure {
    /// |sim - real| / real, in percent.
    fn error_percent(&self) -> Option<f64> {
        match (self.real, self.sim) {
            (Some(r), Some(s)) if r > 0.0 => Some(100.0 * (s - r).abs() / r),
            _ => None,
        }
    }
}

pub(crate) async fn play(
    options: &Options,
    outcome: &mut Outcome,
    progress: &mut dyn Progress,
) -> Result<(), String> {
    let (sites, per_site, mib, rate, wave_after) = shape(options.size);
    let devices = sites * per_site;
    let dir = scratch(options, "calibrate")?;
    let (key, trust) = publisher(&dir, 13)?;
    let store_dir = dir.join("store");
    let store = Store::create(&store_dir).map_err(|e| e.to_string())?;
    let origin =
        Origin::start(&store_dir, ([127, 0, 0, 1], 0).into(), Some(rate)).map_err(|e| e.to_string())?;
    progress.step("calibrate", &format!("starting {devices} nodes"));
    let (mut fleet, specs) =
        start_fleet(options, &dir, &origin, (&key, &trust), (sites, per_site), POLL_S).await?;
    let (nodes_dir, logs) = (dir.join("nodes"), dir.join("logs"));
    let limit = Duration::from_secs(120 + 8 * mib as u64);
    let started = Instant::now();
    let mut timeline = Timeline::default();

    progress.step("calibrate", "the base release (the revoke's target)");
    let base = publish(&store, &key, &noise(31, mib << 20), "1.0.0", 1, RolloutPolicy::default())?;
    if !watch(&mut fleet, &mut Timeline::default(), started, limit, SAMPLE_EVERY, |s| all_on(s, &base))
        .await?
    {
        return Err(format!("the base release did not reach every device; logs in {}", logs.display()));
    }

    progress.step("calibrate", "the measured release, in two waves");
    let policy = RolloutPolicy {
        waves: vec![
            Wave { percent: WAVE1_PERCENT, after_s: 0, require_success: None, require_reports: 0 },
            Wave { percent: 100.0, after_s: wave_after, require_success: None, require_reports: 0 },
        ],
        ..RolloutPolicy::default()
    };
    let before = origin.served().chunk_bytes();
    let published_s = started.elapsed().as_secs_f64();
    let next = publish(&store, &key, &noise(32, mib << 20), "2.0.0", 2, policy.clone())?;
    if !watch(&mut fleet, &mut timeline, started, limit, SAMPLE_EVERY, |s| all_on(s, &next)).await? {
        return Err(format!("the measured release did not reach every device; logs in {}", logs.display()));
    }
    let wan_bytes = (origin.served().chunk_bytes() - before) as f64;
    progress.step("calibrate", "revoking it");
    let revoke_s = started.elapsed().as_secs_f64();
    let revoke_ms = otamesh_node::clock::now_ms();
    revoke(&store, &key, &next, &base)?;
    if !watch(&mut fleet, &mut timeline, started, limit, SAMPLE_EVERY, |s| all_on(s, &base)).await? {
        return Err(format!("the revoke did not bring every device back; logs in {}", logs.display()));
    }
    fleet.stop();

    let commits = commit_times(&timeline, &next, published_s);
    let measured = device_durations(&options.exe, &nodes_dir, &specs, &next, revoke_ms)?;
    // The same devices and release ids, so that the same devices are in each wave (a
    // wave position is a hash of both).
    let device_ids: Vec<String> =
        fleet.nodes.iter().filter_map(|m| m.device.map(|d| d.to_string())).collect();
    if device_ids.len() != devices {
        return Err("not every node told its device id".into());
    }

    progress.step("calibrate", "the same rollout in the simulator");
    let scenario = Scenario {
        device_ids,
        release: next.clone(),
        devices,
        sites,
        bytes: mib << 20,
        origin_mbps: rate as f64 * 8.0 / 1e6,
        wave_after,
        measured,
        revoke_at_s: None,
        duration_s: (revoke_s - published_s) * 3.0 + 60.0,
    };
    // Two runs: the rollout alone (its curve and times), then with the revoke as long
    // after the simulator's own convergence as the real revoke came after the real one.
    // One run with the real revoke time would cut the rollout short whenever the
    // simulator converges later than the real fleet did.
    let sim = simulate(options, &scenario, &dir.join("sim"))?;
    let converged_s = commits.last().copied().unwrap_or(0.0);
    let revoked = match sim.t100 {
        Some(t100) => {
            let at = t100 + (revoke_s - published_s - converged_s).max(0.0);
            let with_revoke = Scenario { revoke_at_s: Some(at), ..scenario };
            simulate(options, &with_revoke, &dir.join("sim-revoke"))?.rollback
        }
        None => None,
    };

    let quantile = |q: f64| -> Option<f64> {
        let n = commits.len();
        (n == devices).then(|| commits[((q * n as f64).ceil() as usize).clamp(1, n) - 1])
    };
    let figures = [
        Figure { name: "t50", real: quantile(0.5), sim: sim.t50, unit: "s" },
        Figure { name: "t90", real: quantile(0.9), sim: sim.t90, unit: "s" },
        Figure { name: "t100", real: quantile(1.0), sim: sim.t100, unit: "s" },
        Figure { name: "wan_bytes", real: Some(wan_bytes), sim: sim.wan_bytes, unit: "bytes" },
        Figure { name: "rollback", real: measured.all_back_s, sim: revoked, unit: "s" },
    ];
    for f in &figures {
        if let Some(e) = f.error_percent() {
            outcome.results.record(&format!("calibrate/{}", f.name), Measure::ErrorPercent, &[e]);
        }
    }
    let table: Vec<String> = figures
        .iter()
        .map(|f| {
            let v = |x: Option<f64>| x.map_or("-".to_owned(), |x| format!("{x:.2} {}", f.unit));
            let e = f.error_percent().map_or("-".to_owned(), |e| format!("{e:.1}%"));
            format!("{} real {} sim {} error {e}", f.name, v(f.real), v(f.sim))
        })
        .collect();
    outcome.notes.push(format!(
        "calibrate: {sites} sites x {per_site} nodes, {mib} MiB, origin {:.1} MiB/s, waves {WAVE1_PERCENT}% then all at +{wave_after} s, poll {POLL_S} s; measured on the devices: install {:.2} s, revoke switch {:.2} s, revoke heard by the first device after {:.2} s; simulator LAN {LAN_MBPS} Mb/s (not measured); {}",
        rate as f64 / f64::from(1 << 20),
        measured.install_s,
        measured.switch_s,
        measured.directive_s,
        table.join("; ")
    ));
    plot_curves(options, outcome, &commits, devices, &sim.curve)?;
    Ok(())
}

/// Seconds from publication at which each device first ran `hex`, sorted.
fn commit_times(timeline: &Timeline, hex: &str, published_s: f64) -> Vec<f64> {
    let n = timeline.samples.first().map_or(0, |s| s.nodes.len());
    let mut times: Vec<f64> = (0..n)
        .filter_map(|i| timeline.samples.iter().find(|s| s.active(i) == Some(hex)).map(|s| s.t - published_s))
        .collect();
    times.sort_by(f64::total_cmp);
    times
}

/// Device-level durations measured on the real devices, from their audit logs.
#[derive(Debug, Clone, Copy)]
struct Measured {
    /// Median over the devices of `installing` to `committed`.
    install_s: f64,
    /// Median over the devices of the revoke applied to `rolled_back`.
    switch_s: f64,
    /// From the revoke being signed into the origin's store to the first device
    /// applying it (origin poll, fetch, verify, persist).
    directive_s: f64,
    /// From the revoke being signed to the last device rolled back: the real rollback
    /// time, read from the devices' own clocks rather than from `/status` polls (whose
    /// 50 ms period and sequential reads would add their own delay).
    all_back_s: Option<f64>,
}

/// Reads every device's audit log (`otamesh audit --json`) for `release`.
fn device_durations(
    exe: &Path,
    nodes_dir: &Path,
    specs: &[NodeSpec],
    release: &str,
    revoke_ms: u64,
) -> Result<Measured, String> {
    let mut installs = Vec::new();
    let mut switches = Vec::new();
    let mut heard = Vec::new();
    let mut back = Vec::new();
    for spec in specs {
        let data = nodes_dir.join(&spec.name);
        let out = std::process::Command::new(exe)
            .args(["audit", "--json", "--data"])
            .arg(&data)
            .output()
            .map_err(|e| format!("otamesh audit: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "otamesh audit --data {}: {}",
                data.display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let rows: Vec<serde_json::Value> =
            serde_json::from_slice(&out.stdout).map_err(|e| format!("audit of {}: {e}", data.display()))?;
        let at = |pred: &dyn Fn(&serde_json::Value) -> bool| {
            rows.iter().find(|r| r["release"] == release && pred(r)).and_then(|r| r["at"].as_f64())
        };
        let detail = |r: &serde_json::Value, prefix: &str| {
            r["event"] == "transition" && r["detail"].as_str().is_some_and(|d| d.starts_with(prefix))
        };
        if let (Some(a), Some(b)) = (at(&|r| detail(r, "installing")), at(&|r| detail(r, "committed"))) {
            installs.push((b - a) / 1000.0);
        }
        let applied = at(&|r| r["event"] == "directive");
        let rolled_back = at(&|r| detail(r, "rolled_back"));
        if let (Some(a), Some(b)) = (applied, rolled_back) {
            switches.push((b - a).max(0.0) / 1000.0);
        }
        back.push(rolled_back.map(|b| (b - revoke_ms as f64).max(0.0) / 1000.0));
        if let Some(a) = applied {
            heard.push((a - revoke_ms as f64).max(0.0) / 1000.0);
        }
    }
    let median = |mut v: Vec<f64>, what: &str| -> Result<f64, String> {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().ok_or_else(|| format!("no device's audit log shows {what}"))
    };
    let first =
        heard.iter().copied().min_by(f64::total_cmp).ok_or("no device's audit log shows the revoke")?;
    // Every device's, or none: a device not back has no rollback time to compare.
    let all_back_s =
        back.into_iter().collect::<Option<Vec<f64>>>().and_then(|b| b.into_iter().max_by(f64::total_cmp));
    Ok(Measured {
        install_s: median(installs, "an install")?,
        switch_s: median(switches, "a revoke")?,
        directive_s: first,
        all_back_s,
    })
}

/// The simulator's parameters for the real rollout.
struct Scenario {
    /// The real devices' ids, site by site (the simulator's sites are contiguous).
    device_ids: Vec<String>,
    /// The real release's id.
    release: String,
    devices: usize,
    sites: usize,
    bytes: usize,
    origin_mbps: f64,
    wave_after: u64,
    measured: Measured,
    /// When the revoke is signed, seconds after publication; none: no revoke.
    revoke_at_s: Option<f64>,
    duration_s: f64,
}

impl Scenario {
    fn toml(&self) -> String {
        // The simulator's device does install, reboot, health check; the real one
        // assembles and switches (no reboot, no health check hook): the measured
        // install time is split into the simulator's install and its reboot, which is
        // also what a rollback costs there, so the reboot is the measured switch.
        let m = self.measured;
        let install = (m.install_s - m.switch_s).max(0.001);
        // The revoke reaches the fleet when the first device has it (gossip carries it
        // to the rest within tens of milliseconds on the real mesh).
        let delay = m.directive_s;
        format!(
            r#"# Generated by `otamesh bench --filter calibrate`: the real fleet's rollout.
[sim]
duration_s = {duration}
seed = 1
sample_s = 0.05

[fleet]
devices = {devices}
sites = {sites}
site_size = "equal"
device_ids = [{ids}]

[[class]]
name = "{CLASS}"
share = 100
install_s = {install}
reboot_s = {switch}
health_check_s = 0
downlink_mbps = {LAN_MBPS}
uplink_mbps = {LAN_MBPS}

[release]
id = "{release}"
bytes = {bytes}
piece_bytes = {piece}
kind = "firmware"

[network]
mode = "p2p-dedup"
origin_egress_mbps = {origin}
site_wan_mbps = 100000
site_lan_mbps = {LAN_MBPS}
latency_ms = 1

[announce]
mode = "poll"
poll_interval_s = {POLL_S}

[directives]
report_delay_s = 0.1
delay_s = {delay}
{revoke}

[rollout]
waves = [
  {{ percent = {WAVE1_PERCENT} }},
  {{ percent = 100, after_s = {after} }},
]
"#,
            duration = self.duration_s.ceil(),
            devices = self.devices,
            sites = self.sites,
            ids = self.device_ids.iter().map(|d| format!("\"{d}\"")).collect::<Vec<_>>().join(", "),
            release = self.release,
            switch = m.switch_s.max(0.001),
            bytes = self.bytes,
            piece = (self.bytes / 32).max(1),
            origin = self.origin_mbps,
            revoke = self.revoke_at_s.map_or(String::new(), |at| format!("revoke_at_s = {at}")),
            after = self.wave_after,
        )
    }
}

/// What the simulator said.
struct Simulated {
    t50: Option<f64>,
    t90: Option<f64>,
    t100: Option<f64>,
    wan_bytes: Option<f64>,
    rollback: Option<f64>,
    /// (seconds, share of devices committed 0..=1)
    curve: Vec<(f64, f64)>,
}

fn simulate(options: &Options, scenario: &Scenario, dir: &Path) -> Result<Simulated, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let file = dir.join("calibrate.toml");
    std::fs::write(&file, scenario.toml()).map_err(|e| format!("{}: {e}", file.display()))?;
    let out = std::process::Command::new(&options.exe)
        .arg("sim")
        .arg(&file)
        .arg("--out")
        .arg(dir)
        .arg("--quiet")
        .output()
        .map_err(|e| format!("otamesh sim: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "otamesh sim {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text =
        std::fs::read_to_string(dir.join("summary.json")).map_err(|e| format!("{}: {e}", dir.display()))?;
    let s: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("summary.json: {e}"))?;
    let f = |k: &str| s[k].as_f64();
    let rollback = match (f("rollback_done_s"), scenario.revoke_at_s) {
        (Some(done), Some(at)) => Some(done - at),
        _ => None,
    };
    let csv =
        std::fs::read_to_string(dir.join("timeseries.csv")).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(Simulated {
        t50: f("t50_s"),
        t90: f("t90_s"),
        t100: f("t100_s"),
        wan_bytes: f("wan_bytes"),
        rollback,
        curve: committed_share(&csv),
    })
}

/// (t_s, committed_share) of a `timeseries.csv`.
fn committed_share(csv: &str) -> Vec<(f64, f64)> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let (Some(t), Some(c)) =
        (header.iter().position(|h| *h == "t_s"), header.iter().position(|h| *h == "committed_share"))
    else {
        return Vec::new();
    };
    lines
        .filter_map(|l| {
            let cols: Vec<&str> = l.split(',').collect();
            Some((cols.get(t)?.parse().ok()?, cols.get(c)?.parse().ok()?))
        })
        .collect()
}

fn plot_curves(
    options: &Options,
    outcome: &mut Outcome,
    commits: &[f64],
    devices: usize,
    sim: &[(f64, f64)],
) -> Result<(), String> {
    let end = commits.last().copied().unwrap_or(1.0) * 1.2 + 1.0;
    let mut real = vec![(0.0, 0.0)];
    for (i, t) in commits.iter().enumerate() {
        real.push((*t, 100.0 * i as f64 / devices as f64));
        real.push((*t, 100.0 * (i + 1) as f64 / devices as f64));
    }
    real.push((end, 100.0 * commits.len() as f64 / devices as f64));
    let chart = plot::Chart {
        title: format!("calibration: {devices} real devices against the simulator"),
        x_desc: "seconds since publication".into(),
        y_desc: "devices committed (%)".into(),
        y_max: 100.0,
        series: vec![
            plot::Series { label: "real nodes".into(), color: (31, 119, 180), points: real },
            plot::Series {
                label: "simulator".into(),
                color: (214, 39, 40),
                points: sim.iter().filter(|p| p.0 <= end).map(|&(t, s)| (t, 100.0 * s)).collect(),
            },
        ],
        marks: Vec::new(),
    };
    crate::rollout::write(options, outcome, &chart, "calibration.png")
}
