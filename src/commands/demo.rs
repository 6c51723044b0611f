//! `otamesh demo`: a whole fleet on loopback in one command, with no setup.
//!
//! It generates a publisher key and a sample firmware image, serves an origin store
//! in-process, starts SITES x NODES real `otamesh node` processes (this same binary),
//! and then plays the story of a fleet update:
//!
//! 1. 1.0.0 goes out as a staged rollout: wave 1 (25% of the devices) at once, the rest
//!    `--wave-after` seconds later, under a health gate (halt when more than 20% of at
//!    least 2 outcome reports are failures). Devices fetch LAN-first, so each site
//!    pulls each chunk from the origin about once.
//! 2. 1.1.0 goes out the same way, but it does not come up on the last site's boards:
//!    its health check fails there, those devices roll back by themselves, their
//!    signed reports breach the gate, and wave 2 never installs it.
//! 3. The operator signs a revoke of 1.1.0 into the store; polling nodes find it, and
//!    the devices that committed 1.1.0 go back to 1.0.0.
//! 4. It prints a report (per-wave timings, WAN and LAN bytes, rollbacks), writes it to
//!    `DIR/report.json` with `convergence.png` and `rollback.png`, and exits 0 only
//!    when every check of the report passed.
//!
//! Every node is stopped when the demo ends, fails or is interrupted (Ctrl-C).
//!
//! The fleet itself (origin, node processes, publishing, the revoke, sampling, plots)
//! is the [`otamesh_fleet`] harness; this file is the story told on top of it.
//!
//! With a dozen devices, "25%" can mean anything from none to half of them, which would
//! make a different story every run. So the demo stamps each release's `created_at` a
//! few milliseconds earlier until the wave assignment (a hash of release and device ids,
//! computed exactly as devices do) gives wave 1 a story-sized group, and prints it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use otamesh_core::directive::Order;
use otamesh_core::gate::HealthGate;
use otamesh_core::lifecycle::Phase;
use otamesh_core::report::OutcomeKind;
use otamesh_core::rollout::{RolloutPolicy, Wave, position};
use otamesh_core::{DeviceId, SecretKey, UpdateKind};
use otamesh_fleet::fleet::{Bytes, Fleet, NodeSpec, Sample, Seen, Setup, Timeline};
use otamesh_fleet::release::{self, Describe};
use otamesh_fleet::{Origin, plot};
use otamesh_node::client::ReportView;
use otamesh_node::store::Store;
use otamesh_node::{clock, keys};
use serde::Serialize;

use super::text::{bytes, short};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where keys, the origin store, node data, logs, report.json and the plots go. A
    /// directory left by an earlier demo is replaced; any other must be empty.
    #[arg(long, value_name = "DIR", default_value = "otamesh-demo")]
    out: PathBuf,
    /// Sites (LANs). The bad release fails on the last one only.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(2..=8))]
    sites: u32,
    /// Nodes per site.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(2..=16))]
    nodes: u32,
    /// Size of the sample firmware image, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
    size_mib: u32,
    /// Seconds after a release is published at which its second wave opens.
    #[arg(long, value_name = "SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(3..=600))]
    wave_after: u64,
    /// After the report, keep the fleet running until Ctrl-C, to try `otamesh status`,
    /// `otamesh fleet` and `otamesh report` against it.
    #[arg(long)]
    keep_running: bool,
}

/// The device class of the demo's fleet.
const CLASS: &str = "demo-gw";
/// Wave 1's share of the fleet, in percent.
const WAVE1_PERCENT: f64 = 25.0;
/// The health gate of both releases.
const GATE_MAX_FAILURE_RATIO: f64 = 0.2;
const GATE_MIN_REPORTS: u32 = 2;
/// How often nodes poll the origin's index (releases and directives), seconds.
const POLL_INTERVAL_S: f64 = 1.0;
/// How often the demo samples every node's API.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// How long past wave 2's opening the demo watches a halted release before revoking it.
const HALT_GRACE: Duration = Duration::from_secs(5);
/// How long the demo keeps watching after the revoke brought every device back.
const SETTLE: Duration = Duration::from_secs(3);
/// Lifecycle states between "the wave came" and an outcome. (`staged` is not one: a
/// halted device stays staged.)
/// On its way with a release: fetching it, or between install and health check.
fn in_flight(seen: Seen) -> bool {
    matches!(seen, Seen::Phase(Phase::Fetching | Phase::Installing | Phase::Activated | Phase::Checking))
}
/// The marker that makes a directory one this command may replace.
const MARKER: &str = ".otamesh-demo";
const GOOD: &str = "1.0.0";
const BAD: &str = "1.1.0";

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        // Dropping the demo future (on a signal) drops its Fleet, which stops every node.
        tokio::select! {
            result = demo(args) => result,
            () = super::serve::shutdown_signal() => {
                eprintln!("\ninterrupted: stopped every node");
                Ok(ExitCode::from(130))
            }
        }
    })
}

/// Where the demo writes.
#[derive(Debug)]
struct Paths {
    root: PathBuf,
    store: PathBuf,
    nodes: PathBuf,
    logs: PathBuf,
}

/// One published release and what the demo planned for it.
#[derive(Debug, Clone)]
struct Release {
    hex: String,
    version: String,
    sequence: u64,
    created_at: u64,
    /// Seconds since the demo started.
    published_s: f64,
    size: u64,
    chunks: usize,
    new_chunks: usize,
    new_bytes: u64,
    policy: RolloutPolicy,
    /// The wave of every node (0-based), in fleet order.
    waves: Vec<usize>,
}

struct Demo {
    args: Args,
    paths: Paths,
    started: Instant,
    key: SecretKey,
    store: Store,
    origin: Origin,
    fleet: Fleet,
    devices: Vec<DeviceId>,
    timeline: Timeline,
    versions: BTreeMap<String, String>,
}

async fn demo(args: Args) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let paths = prepare(&args.out)?;
    let devices_n = args.sites * args.nodes;
    println!(
        "otamesh demo: {} sites x {} nodes on 127.0.0.1, a staged rollout, a bad release, a revoke",
        args.sites, args.nodes
    );
    println!("writing to {}", paths.root.display());

    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    let key = SecretKey::from_seed(seed);
    let (_, trust) = keys::write_keypair(&paths.root.join("publisher"), &key)?;
    let store = Store::create(&paths.store)?;
    let origin = Origin::start(&paths.store, "127.0.0.1:0".parse()?, None)?;
    let check = paths.root.join("health-check.sh");
    let failing_site = site_name(args.sites as usize - 1);
    fs::write(&check, health_check_script(&failing_site))
        .with_context(|| format!("cannot write {}", check.display()))?;
    let exe = std::env::current_exe().context("cannot find the otamesh binary to start nodes with")?;
    // Nodes run in the output directory, so the command stays short: a device's report
    // carries the failing command and its stderr, and reports limit their text.
    let specs: Vec<NodeSpec> = (0..args.sites as usize)
        .flat_map(|s| {
            (0..args.nodes).map(move |i| NodeSpec {
                name: format!("{}-{i}", site_name(s)),
                site: site_name(s),
                site_index: s,
                health_check: Some(format!("sh health-check.sh {}", site_name(s))),
            })
        })
        .collect();
    let setup = Setup {
        exe: &exe,
        nodes_dir: &paths.nodes,
        logs_dir: &paths.logs,
        origin: &origin.url,
        trust: &trust,
        publisher: &key,
        class: CLASS,
        poll_interval_s: POLL_INTERVAL_S,
        cwd: &paths.root,
    };
    let fleet = Fleet::start(&setup, &specs)?;
    println!("origin {} serving {}; {devices_n} nodes starting", origin.url, paths.store.display());

    let mut demo = Demo {
        args,
        paths,
        started,
        key,
        store,
        origin,
        fleet,
        devices: Vec::new(),
        timeline: Timeline::default(),
        versions: BTreeMap::new(),
    };
    demo.wait_ready().await?;
    let outcome = demo.play(&failing_site).await?;
    let ok = outcome.checks.iter().all(|c| c.ok);
    if demo.args.keep_running {
        println!("\nthe fleet keeps running; try:");
        for n in demo.fleet.nodes.iter().take(3) {
            println!("  otamesh status --api {}", n.api.base().trim_start_matches("http://"));
        }
        let api = demo.fleet.nodes[0].api.base().trim_start_matches("http://").to_owned();
        println!("  otamesh fleet --api {api}");
        println!("  otamesh report --api {api} --release {}", short(&outcome.bad_release_hex));
        println!("Ctrl-C stops it");
        std::future::pending::<()>().await;
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// What the played story produced.
struct Played {
    checks: Vec<Check>,
    bad_release_hex: String,
}

#[derive(Debug, Clone, Serialize)]
struct Check {
    name: String,
    ok: bool,
    detail: String,
}

impl Check {
    fn new(name: &str, ok: bool, detail: String) -> Self {
        Self { name: name.to_owned(), ok, detail }
    }
}

impl Demo {
    fn now_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Waits until every node answers, knows its site peers and is connected.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let n = self.fleet.nodes.len();
        let bar = self.bar(n as u64, "starting");
        let ready = self
            .fleet
            .wait_ready(Duration::from_secs(45), SAMPLE_EVERY, &self.paths.logs, |up, _| {
                bar.set_position(up as u64)
            })
            .await;
        bar.finish_and_clear();
        ready?;
        self.devices = self
            .fleet
            .nodes
            .iter()
            .map(|node| node.device.with_context(|| format!("node {} reports no device id", node.name)))
            .collect::<anyhow::Result<_>>()?;
        println!("{:>7.1} s  all {n} nodes up, each connected to its site", self.now_s());
        Ok(())
    }

    async fn play(&mut self, failing_site: &str) -> anyhow::Result<Played> {
        let size = u64::from(self.args.size_mib) << 20;
        let v1 = release::noise(1, size as usize);
        let v2 = patched(&v1);
        let n = self.devices.len();
        let failing: Vec<bool> = self.fleet.nodes.iter().map(|node| node.site == failing_site).collect();
        let policy = policy(self.args.wave_after);
        fs::write(self.paths.root.join("rollout.toml"), toml::to_string(&policy)?)?;
        fs::write(self.paths.root.join(format!("firmware-{GOOD}.bin")), &v1)?;
        fs::write(self.paths.root.join(format!("firmware-{BAD}.bin")), &v2)?;
        let mut checks = Vec::new();

        // 1. The good release.
        let bytes_0 = self.bytes().await;
        let r1 = self.publish(&v1, GOOD, 1, &policy, |waves| {
            let first = waves.iter().filter(|w| **w == 0).count();
            (1..=n / 2).contains(&first)
        })?;
        self.announce(&r1, "");
        let limit = Duration::from_secs(self.args.wave_after + 60);
        let hex1 = r1.hex.clone();
        let converged =
            self.watch(&r1, &hex1, limit, |s: &Sample| (0..n).all(|i| s.active(i) == Some(&hex1))).await?;
        let bytes_1 = self.bytes().await;
        let converged_s = converged.then(|| self.now_s() - r1.published_s);
        checks.push(Check::new(
            "every device committed 1.0.0",
            converged,
            match converged_s {
                Some(t) => format!("all {n} devices run {GOOD} {t:.1} s after publication"),
                None => format!("not all devices run {GOOD} after {} s", limit.as_secs()),
            },
        ));
        let early = self.early_wave2(&r1);
        checks.push(Check::new(
            "1.0.0 was staged: no wave 2 device committed before wave 2 opened",
            converged && early.is_empty(),
            if early.is_empty() {
                format!("wave 2 opened {} s after publication", self.args.wave_after)
            } else {
                format!("committed early: {}", early.join(", "))
            },
        ));
        let r1_bytes = bytes_1.since(bytes_0);
        let budget = 1.5 * self.args.sites as f64 * size as f64;
        checks.push(Check::new(
            "each site pulled 1.0.0 from the origin about once",
            converged && (r1_bytes.origin as f64) <= budget,
            format!(
                "the origin sent {} for {} devices, {} from site peers; budget 1.5 x {} sites x {}",
                bytes(r1_bytes.origin as f64),
                n,
                bytes(r1_bytes.lan),
                self.args.sites,
                bytes(size as f64)
            ),
        ));
        if !converged {
            return self.finish(checks, &[r1], None, vec![r1_bytes], failing_site).await;
        }

        // 2. The bad release: wave 1 holds exactly one device of the failing site and
        // at least one elsewhere, few enough that one failure breaches the gate.
        let r2 = self.publish(&v2, BAD, 2, &policy, |waves| {
            let first: Vec<usize> = (0..n).filter(|&i| waves[i] == 0).collect();
            let failing_first = first.iter().filter(|&&i| failing[i]).count();
            let k = first.len();
            (2..=4).contains(&k)
                && k < n
                && failing_first == 1
                && failing_first as f64 > GATE_MAX_FAILURE_RATIO * k as f64
        })?;
        self.announce(&r2, &format!("; its health check fails on {failing_site}"));
        let (hex2, wave2_opens) = (r2.hex.clone(), r2.published_s + self.args.wave_after as f64);
        let first_wave: Vec<usize> = (0..n).filter(|&i| r2.waves[i] == 0).collect();
        let devices = self.devices.clone();
        let limit = Duration::from_secs(self.args.wave_after + 45);
        // Settled: wave 2 is overdue and no wave 1 device is still on its way. Once the
        // gate breaches, wave 1 devices that had not installed yet never will.
        let settled = self
            .watch(&r2, &hex2, limit, |s: &Sample| {
                s.t >= wave2_opens + HALT_GRACE.as_secs_f64()
                    && first_wave.iter().all(|&i| !in_flight(s.phase(i, Some(devices[i]), &hex2)))
            })
            .await?;
        let bytes_2 = self.bytes().await;
        let revoke_s = self.now_s();
        let revoke_from = self.timeline.samples.len();
        let gate = self.gate_findings(&r2, &failing, &hex2);
        checks.push(Check::new(
            &format!("1.1.0 failed its health check on {failing_site} and rolled back there"),
            settled && !gate.health_rollbacks.is_empty(),
            format!("rolled back by the health check: {}", list(&gate.health_rollbacks)),
        ));
        checks.push(Check::new(
            "the health gate halted 1.1.0: no wave 2 device installed it",
            settled && gate.later_wave_installs.is_empty(),
            if gate.later_wave_installs.is_empty() {
                format!("0 of {} wave 2 devices installed it", gate.later_wave_devices)
            } else {
                format!("installed by wave 2 devices: {}", list(&gate.later_wave_installs))
            },
        ));

        // 3. The revoke.
        println!(
            "{:>7.1} s  operator: otamesh directive revoke --release {} --to {} (into the origin store)",
            revoke_s - r2.published_s,
            short(&hex2),
            short(&r1.hex)
        );
        let (bad_id, good_id) = (hex2.parse()?, r1.hex.parse()?);
        release::direct(&self.store, &self.key, bad_id, Order::Revoke { to: good_id }, clock::now_ms())
            .context("signing the revoke into the origin store")?;
        let hex1 = r1.hex.clone();
        let back = self
            .watch(&r2, &hex1, Duration::from_secs(45), |s: &Sample| {
                (0..n).all(|i| s.active(i) == Some(&hex1))
            })
            .await?;
        // Watch a little longer: a revoked release must stay revoked.
        let settle_from = self.timeline.samples.len();
        let settle_until = self.now_s() + SETTLE.as_secs_f64();
        let stayed = self
            .watch(&r2, &hex1, SETTLE * 2, |s: &Sample| {
                s.t >= settle_until && (0..n).all(|i| s.active(i) == Some(&hex1))
            })
            .await?;
        let bytes_3 = self.bytes().await;
        let revoke = self.revoke_findings(&r1, &r2, revoke_from, revoke_s);
        checks.push(Check::new(
            "the revoke brought every device back to 1.0.0",
            back,
            if back {
                format!(
                    "{} had committed {BAD}; all back on {GOOD} {} after the revoke",
                    count_devices(revoke.rolled_back.len()),
                    revoke.all_back_s.map_or_else(|| "-".to_owned(), |t| format!("{t:.1} s"))
                )
            } else {
                let stuck: Vec<String> = (0..n)
                    .filter(|&i| self.timeline.samples.last().and_then(|s| s.active(i)) != Some(&hex1))
                    .map(|i| self.fleet.nodes[i].name.clone())
                    .collect();
                format!("not back on {GOOD} after 45 s: {}", stuck.join(", "))
            },
        ));
        let reinstalled: Vec<String> = (0..n)
            .filter(|&i| self.timeline.samples[settle_from..].iter().any(|s| s.active(i) == Some(&hex2)))
            .map(|i| self.fleet.nodes[i].name.clone())
            .collect();
        checks.push(Check::new(
            "1.1.0 stays revoked",
            back && stayed && reinstalled.is_empty(),
            if reinstalled.is_empty() {
                format!("every device still ran {GOOD} {} s later", SETTLE.as_secs())
            } else {
                format!("ran {BAD} again: {}", reinstalled.join(", "))
            },
        ));
        let per_release = vec![r1_bytes, bytes_3.since(bytes_1)];
        let bad = BadRun {
            revoke_s: revoke_s - r2.published_s,
            gate,
            revoke,
            until_revoke: bytes_2.since(bytes_1),
        };
        let played = self.finish(checks, &[r1, r2], Some(bad), per_release, failing_site).await?;
        Ok(played)
    }

    /// Builds, stamps (see the module doc), signs and stores a release.
    fn publish(
        &mut self,
        data: &[u8],
        version: &str,
        sequence: u64,
        policy: &RolloutPolicy,
        accept: impl Fn(&[usize]) -> bool,
    ) -> anyhow::Result<Release> {
        let now = clock::now_ms();
        let describe = Describe {
            vendor: "otamesh-demo",
            product: "edge gateway",
            class: CLASS,
            version,
            sequence,
            kind: UpdateKind::Firmware,
            created_at: now,
            expires_at: Some(now + 86_400_000),
            rollout: policy.clone(),
        };
        let mut manifest = release::manifest(data, describe)?;
        let mut waves = None;
        let found = release::stamp(&mut manifest, 100_000, |id| {
            let w: Vec<usize> = self
                .devices
                .iter()
                .map(|d| policy.wave_of(UpdateKind::Firmware, position(id, *d)).unwrap_or(0))
                .collect();
            let ok = accept(&w);
            if ok {
                waves = Some(w);
            }
            ok
        });
        let (true, Some(waves)) = (found, waves) else {
            bail!("no stamp of {version} gives wave 1 a group fit for the demo; try other --sites or --nodes")
        };
        let published = release::publish(&self.store, &self.key, data, manifest, clock::now_ms())
            .context("publishing into the origin store")?;
        let (new_chunks, new_bytes, verified) =
            (published.new_chunks, published.new_bytes, published.manifest);
        let m = verified.manifest();
        let release = Release {
            hex: verified.id().to_hex(),
            version: version.into(),
            sequence,
            created_at: m.created_at,
            published_s: self.now_s(),
            size: m.payload.size,
            chunks: m.payload.chunks.len(),
            new_chunks,
            new_bytes,
            policy: policy.clone(),
            waves,
        };
        self.versions.insert(release.hex.clone(), version.into());
        Ok(release)
    }

    fn announce(&self, r: &Release, note: &str) {
        let names = |wave: usize| -> Vec<&str> {
            (0..r.waves.len())
                .filter(|&i| r.waves[i] == wave)
                .map(|i| self.fleet.nodes[i].name.as_str())
                .collect()
        };
        println!(
            "\n{:>7.1} s  published {} (release {}, sequence {}, {} in {} chunks, {} new){note}",
            0.0,
            r.version,
            short(&r.hex),
            r.sequence,
            bytes(r.size as f64),
            r.chunks,
            r.new_chunks
        );
        println!("           wave 1 ({WAVE1_PERCENT}%) now: {}", names(0).join(", "));
        println!(
            "           wave 2 (100%) at +{} s: {}",
            self.args.wave_after,
            count_devices(names(1).len())
        );
    }

    /// Samples every node until `done` holds or `limit` passes; shows progress towards
    /// every device running `target`, and prints what changes. False on timeout.
    async fn watch(
        &mut self,
        release: &Release,
        target: &str,
        limit: Duration,
        mut done: impl FnMut(&Sample) -> bool,
    ) -> anyhow::Result<bool> {
        let n = self.devices.len();
        let bar = self.bar(n as u64, &format!("-> {}", self.versions.get(target).map_or("?", |v| v)));
        let deadline = Instant::now() + limit;
        let devices: Vec<Option<DeviceId>> = self.devices.iter().copied().map(Some).collect();
        let mut wave2_told = self.now_s() > release.published_s + self.args.wave_after as f64;
        loop {
            self.fleet.check_alive()?;
            let sample = self.fleet.sample(self.now_s()).await;
            let rel = sample.t - release.published_s;
            if !wave2_told && rel >= self.args.wave_after as f64 {
                wave2_told = true;
                bar.suspend(|| println!("{rel:>7.1} s  wave 2 of {} opens", release.version));
            }
            let lines = self.changes(&sample, release);
            if !lines.is_empty() {
                bar.suspend(|| lines.iter().for_each(|l| println!("{rel:>7.1} s  {l}")));
            }
            let running = (0..n).filter(|&i| sample.active(i) == Some(target)).count();
            bar.set_position(running as u64);
            let phases = sample.phases(&devices, &release.hex);
            bar.set_message(
                phases.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(" · ")
                    + &format!("  [{}]", release.version),
            );
            let finished = done(&sample);
            self.timeline.push(sample);
            if finished {
                bar.finish_and_clear();
                return Ok(true);
            }
            if Instant::now() > deadline {
                bar.finish_and_clear();
                return Ok(false);
            }
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
    }

    /// What changed since the previous sample, for people.
    fn changes(&self, sample: &Sample, release: &Release) -> Vec<String> {
        let Some(prev) = self.timeline.samples.last() else { return Vec::new() };
        let mut lines = Vec::new();
        for (i, node) in self.fleet.nodes.iter().enumerate() {
            let wave = release.waves.get(i).map_or(1, |w| w + 1);
            let (before, now) = (prev.active(i), sample.active(i));
            if before != now
                && let Some(now) = now
            {
                let version = self.versions.get(now).map_or_else(|| short(now).to_owned(), Clone::clone);
                let verb = if before
                    .is_some_and(|b| self.versions.get(b).is_some_and(|v| v.as_str() > version.as_str()))
                {
                    "went back to"
                } else {
                    "committed"
                };
                lines.push(format!("{:<10} {verb} {version} (wave {wave})", node.name));
            }
            let device = node.device;
            let (was, is) = (prev.outcome(device, &release.hex), sample.outcome(device, &release.hex));
            if was != is && is.is_some_and(OutcomeKind::is_failure) {
                lines.push(format!(
                    "{:<10} rolled back {} by itself: its health check failed (wave {wave})",
                    node.name, release.version
                ));
            }
        }
        lines
    }

    fn bar(&self, len: u64, prefix: &str) -> ProgressBar {
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr_with_hz(8));
        // Invariant: the template is a constant known to parse.
        let style = ProgressStyle::with_template("{prefix:>9} [{bar:24}] {pos}/{len} {msg}")
            .expect("valid template")
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(prefix.to_owned());
        bar
    }

    async fn bytes(&self) -> Bytes {
        self.fleet.bytes(self.origin.served().chunk_bytes()).await
    }

    /// Wave 2 devices first seen running `r` before wave 2 opened.
    fn early_wave2(&self, r: &Release) -> Vec<String> {
        let opens = r.created_at + r.policy.waves.get(1).map_or(0, |w| w.after_s * 1000);
        let mut early = BTreeSet::new();
        for (s, at) in self.timeline.samples.iter().zip(&self.timeline.at_ms) {
            for i in (0..self.devices.len()).filter(|&i| r.waves[i] >= 1) {
                // A sample is taken before its time is read, so a commit it shows
                // happened before `at`; allow a sampling period of slack.
                if s.active(i) == Some(&r.hex) && *at + (SAMPLE_EVERY.as_millis() as u64) < opens {
                    early.insert(self.fleet.nodes[i].name.clone());
                }
            }
        }
        early.into_iter().collect()
    }

    fn gate_findings(&self, r: &Release, failing: &[bool], hex: &str) -> GateFindings {
        let n = self.devices.len();
        let mut health = BTreeSet::new();
        let mut committed = BTreeSet::new();
        let mut later = BTreeSet::new();
        let mut later_fetching = BTreeSet::new();
        for s in self.timeline.samples.iter().filter(|s| s.t >= r.published_s) {
            for i in 0..n {
                let name = self.fleet.nodes[i].name.clone();
                let outcome = s.outcome(Some(self.devices[i]), hex);
                // Seen in the fleet's reports, or in the device's own status.
                let phase = s.phase(i, Some(self.devices[i]), hex);
                if phase.failed() || outcome.is_some_and(OutcomeKind::is_failure) {
                    health.insert(name.clone());
                }
                if s.active(i) == Some(hex) {
                    committed.insert(name.clone());
                }
                if r.waves[i] >= 1 {
                    let installed = s.active(i) == Some(hex) || outcome.is_some() || phase.installed();
                    if installed {
                        later.insert(name.clone());
                    }
                    if matches!(phase, Seen::Phase(Phase::Fetching | Phase::Staged)) {
                        later_fetching.insert(name);
                    }
                }
            }
        }
        let wave1: Vec<String> =
            (0..n).filter(|&i| r.waves[i] == 0).map(|i| self.fleet.nodes[i].name.clone()).collect();
        let held_back =
            wave1.iter().filter(|d| !health.contains(*d) && !committed.contains(*d)).cloned().collect();
        GateFindings {
            held_back,
            wave1,
            wave1_failing_site: (0..n).filter(|&i| r.waves[i] == 0 && failing[i]).count(),
            health_rollbacks: health.into_iter().collect(),
            committed: committed.into_iter().collect(),
            later_wave_devices: (0..n).filter(|&i| r.waves[i] >= 1).count(),
            later_wave_installs: later.into_iter().collect(),
            later_wave_fetched: later_fetching.into_iter().collect(),
        }
    }

    fn revoke_findings(&self, r1: &Release, r2: &Release, from: usize, revoke_s: f64) -> RevokeFindings {
        let mut rolled_back = Vec::new();
        for i in 0..self.devices.len() {
            let ran_bad = self.timeline.samples[..from].last().is_some_and(|s| s.active(i) == Some(&r2.hex));
            if !ran_bad {
                continue;
            }
            let back = self.timeline.samples[from..]
                .iter()
                .find(|s| s.active(i) == Some(&r1.hex))
                .map(|s| s.t - revoke_s);
            rolled_back.push(Rollback { device: self.fleet.nodes[i].name.clone(), after_s: back });
        }
        let all_back_s = self.timeline.samples[from..]
            .iter()
            .find(|s| (0..self.devices.len()).all(|i| s.active(i) == Some(&r1.hex)))
            .map(|s| s.t - revoke_s);
        RevokeFindings { rolled_back, all_back_s }
    }

    /// Fetches the nodes' own rollout reports, writes report.json and the plots, prints
    /// the report.
    async fn finish(
        &self,
        mut checks: Vec<Check>,
        releases: &[Release],
        bad: Option<BadRun>,
        per_release: Vec<Bytes>,
        failing_site: &str,
    ) -> anyhow::Result<Played> {
        // Any node will do: they all hear the same signed reports.
        let reporter = &self.fleet.nodes[0].api;
        let mut release_reports = Vec::new();
        // Devices that installed the bad release: rolled back by its health check, or
        // committed it (a device is in one of the two, counted once).
        let bad_installed = bad
            .as_ref()
            .map(|b| b.gate.health_rollbacks.iter().chain(&b.gate.committed).collect::<BTreeSet<_>>().len());
        for (i, (r, b)) in releases.iter().zip(&per_release).enumerate() {
            let node_report = reporter.report(&r.hex).await.ok();
            let installed = if i == 0 { None } else { bad_installed };
            release_reports.push(self.release_report(r, *b, node_report.as_ref(), installed));
        }
        let has_reports = release_reports.iter().all(|r| r.node_report);
        checks.push(Check::new(
            "the nodes' signed reports account for every outcome",
            has_reports && release_reports.iter().all(|r| r.reported >= r.expected_outcomes),
            release_reports
                .iter()
                .map(|r| {
                    format!(
                        "{}: {} outcome reports of {} expected",
                        r.version, r.reported, r.expected_outcomes
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
        ));
        let mut files = vec!["report.json".to_owned()];
        let plots = self.plots(releases, bad.as_ref());
        for (name, result) in plots {
            match result {
                Ok(()) => files.push(name),
                Err(e) => checks.push(Check::new(&format!("plot {name}"), false, e)),
            }
        }
        let ok = checks.iter().all(|c| c.ok);
        let report = Report {
            ok,
            duration_s: self.now_s(),
            out: self.paths.root.display().to_string(),
            fleet: FleetReport {
                sites: (0..self.args.sites as usize).map(site_name).collect(),
                nodes_per_site: self.args.nodes,
                devices: self.devices.len(),
                class: CLASS.into(),
                origin: self.origin.url.clone(),
                failing_site: failing_site.into(),
                nodes: self
                    .fleet
                    .nodes
                    .iter()
                    .zip(&self.devices)
                    .map(|(n, d)| NodeReport {
                        name: n.name.clone(),
                        site: n.site.clone(),
                        device: d.to_hex(),
                        api: n.api.base().into(),
                        log: n.process.log.display().to_string(),
                    })
                    .collect(),
            },
            releases: release_reports,
            bad_release: bad.map(|b| BadReport {
                release: releases.get(1).map(|r| r.hex.clone()).unwrap_or_default(),
                wave1: b.gate.wave1,
                wave1_held_back: b.gate.held_back,
                wave1_failing_site: b.gate.wave1_failing_site,
                rolled_back_by_health_check: b.gate.health_rollbacks,
                committed: b.gate.committed,
                later_wave_devices: b.gate.later_wave_devices,
                later_wave_installs: b.gate.later_wave_installs,
                later_wave_fetched: b.gate.later_wave_fetched,
                bytes_until_revoke: b.until_revoke,
                revoke_at_s: b.revoke_s,
                rolled_back_by_revoke: b.revoke.rolled_back,
                all_back_after_s: b.revoke.all_back_s,
            }),
            checks: checks.clone(),
            files: files.iter().map(|f| self.paths.root.join(f).display().to_string()).collect(),
        };
        let path = self.paths.root.join("report.json");
        fs::write(&path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        print!("{}", render(&report, &self.args));
        Ok(Played { checks, bad_release_hex: releases.get(1).map(|r| r.hex.clone()).unwrap_or_default() })
    }

    fn release_report(
        &self,
        r: &Release,
        b: Bytes,
        node: Option<&ReportView>,
        installed: Option<usize>,
    ) -> ReleaseReport {
        let base = r.created_at;
        let rel = |ms: Option<u64>| ms.map(|t| (t as f64 - base as f64) / 1000.0);
        let waves = r
            .policy
            .waves
            .iter()
            .enumerate()
            .map(|(w, wave)| {
                let from_node = node.and_then(|n| n.waves.iter().find(|x| x.wave == w));
                WaveSummary {
                    wave: w + 1,
                    percent: wave.percent,
                    opens_at_s: wave.after_s as f64,
                    devices: r.waves.iter().filter(|x| **x == w).count(),
                    committed: from_node.map(|x| x.committed),
                    failed: from_node.map(|x| x.failed),
                    rolled_back: from_node.map(|x| x.rolled_back),
                    revoked: from_node.map(|x| x.revoked),
                    first_outcome_s: from_node.and_then(|x| rel(x.first_report_at)),
                    last_outcome_s: from_node.and_then(|x| rel(x.last_report_at)),
                }
            })
            .collect();
        let converged_s = self.timeline.all_running(r.published_s, &r.hex);
        let reported = node.map_or(0, |n| n.outcomes.values().sum::<u64>());
        // Every device of 1.0.0 commits; of 1.1.0 the devices seen to install it report.
        let expected_outcomes = installed.unwrap_or(r.waves.len());
        ReleaseReport {
            version: r.version.clone(),
            release_id: r.hex.clone(),
            sequence: r.sequence,
            published_at_s: r.published_s,
            size_bytes: r.size,
            chunks: r.chunks,
            new_chunks: r.new_chunks,
            new_bytes: r.new_bytes,
            policy: r.policy.clone(),
            waves,
            node_report: node.is_some(),
            outcomes: node.map(|n| n.outcomes.clone()).unwrap_or_default(),
            failure_reasons: node.map(|n| n.failure_reasons.clone()).unwrap_or_default(),
            reported: reported as usize,
            expected_outcomes,
            converged_s,
            bytes: b,
        }
    }

    fn plots(&self, releases: &[Release], bad: Option<&BadRun>) -> Vec<(String, Result<(), String>)> {
        let mut out = Vec::new();
        let n = self.devices.len() as f64;
        let Some(r1) = releases.first() else { return out };
        let t0 = r1.published_s;
        let colors = [(31, 119, 180), (214, 39, 40)];
        let mut chart = plot::Chart {
            title: format!("otamesh demo: share of {} devices running each release", self.devices.len()),
            x_desc: format!("seconds since {} was published", r1.version),
            y_desc: "devices running it (%)".into(),
            y_max: 100.0,
            series: Vec::new(),
            marks: Vec::new(),
        };
        for (r, color) in releases.iter().zip(colors) {
            let points = self
                .timeline
                .samples
                .iter()
                .filter(|s| s.t >= t0)
                .map(|s| {
                    let running = (0..self.devices.len()).filter(|&i| s.active(i) == Some(&r.hex)).count();
                    (s.t - t0, 100.0 * running as f64 / n)
                })
                .collect();
            chart.series.push(plot::Series { label: format!("running {}", r.version), color, points });
            chart.marks.push(plot::Mark { x: r.published_s - t0, label: format!("{} published", r.version) });
            chart.marks.push(plot::Mark {
                x: r.published_s - t0 + self.args.wave_after as f64,
                label: format!("{} wave 2", r.version),
            });
        }
        if let (Some(b), Some(r2)) = (bad, releases.get(1)) {
            chart.marks.push(plot::Mark { x: r2.published_s - t0 + b.revoke_s, label: "revoke".into() });
        }
        out.push(("convergence.png".to_owned(), plot::png(&chart, &self.paths.root.join("convergence.png"))));

        let (Some(b), Some(r2)) = (bad, releases.get(1)) else { return out };
        let t2 = r2.published_s;
        let mut health = BTreeSet::new();
        let mut ran = BTreeSet::new();
        let (mut running, mut by_health, mut by_revoke) = (Vec::new(), Vec::new(), Vec::new());
        for s in self.timeline.samples.iter().filter(|s| s.t >= t2) {
            let x = s.t - t2;
            let mut now_running = 0;
            let mut reverted = 0;
            for i in 0..self.devices.len() {
                if s.outcome(Some(self.devices[i]), &r2.hex).is_some_and(OutcomeKind::is_failure) {
                    health.insert(i);
                }
                if s.active(i) == Some(&r2.hex) {
                    now_running += 1;
                    ran.insert(i);
                } else if ran.contains(&i) && s.active(i) == Some(&r1.hex) {
                    reverted += 1;
                }
            }
            running.push((x, f64::from(now_running)));
            by_health.push((x, health.len() as f64));
            by_revoke.push((x, f64::from(reverted)));
        }
        let mut marks = vec![
            plot::Mark { x: self.args.wave_after as f64, label: "wave 2 due: halted by the gate".into() },
            plot::Mark { x: b.revoke_s, label: "revoke signed".into() },
        ];
        if let Some(t) = b.revoke.all_back_s {
            marks.push(plot::Mark { x: b.revoke_s + t, label: format!("all on {}", r1.version) });
        }
        let wave1 = b.gate.wave1.len() as f64;
        let chart = plot::Chart {
            title: format!("otamesh demo: {} ({} devices in wave 1), halted and revoked", r2.version, wave1),
            x_desc: format!("seconds since {} was published", r2.version),
            y_desc: "devices".into(),
            y_max: (wave1 + 1.0).max(3.0),
            series: vec![
                plot::Series {
                    label: format!("running {}", r2.version),
                    color: (214, 39, 40),
                    points: running,
                },
                plot::Series {
                    label: "rolled back by their health check".into(),
                    color: (255, 127, 14),
                    points: by_health,
                },
                plot::Series {
                    label: format!("back on {} by the revoke", r1.version),
                    color: (31, 119, 180),
                    points: by_revoke,
                },
            ],
            marks,
        };
        out.push(("rollback.png".to_owned(), plot::png(&chart, &self.paths.root.join("rollback.png"))));
        out
    }
}

struct GateFindings {
    wave1: Vec<String>,
    /// Wave 1 devices the breached gate stopped before they installed.
    held_back: Vec<String>,
    wave1_failing_site: usize,
    health_rollbacks: Vec<String>,
    committed: Vec<String>,
    later_wave_devices: usize,
    later_wave_installs: Vec<String>,
    later_wave_fetched: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
struct Rollback {
    device: String,
    /// Seconds from the revoke until it ran the earlier release again.
    after_s: Option<f64>,
}

struct RevokeFindings {
    rolled_back: Vec<Rollback>,
    all_back_s: Option<f64>,
}

struct BadRun {
    /// Seconds from the bad release's publication to the revoke.
    revoke_s: f64,
    gate: GateFindings,
    revoke: RevokeFindings,
    until_revoke: Bytes,
}

/// `report.json`.
#[derive(Debug, Serialize)]
struct Report {
    /// Every check passed.
    ok: bool,
    duration_s: f64,
    out: String,
    fleet: FleetReport,
    releases: Vec<ReleaseReport>,
    bad_release: Option<BadReport>,
    checks: Vec<Check>,
    files: Vec<String>,
}

#[derive(Debug, Serialize)]
struct FleetReport {
    sites: Vec<String>,
    nodes_per_site: u32,
    devices: usize,
    class: String,
    origin: String,
    failing_site: String,
    nodes: Vec<NodeReport>,
}

#[derive(Debug, Serialize)]
struct NodeReport {
    name: String,
    site: String,
    device: String,
    api: String,
    log: String,
}

#[derive(Debug, Serialize)]
struct ReleaseReport {
    version: String,
    release_id: String,
    sequence: u64,
    /// Seconds since the demo started.
    published_at_s: f64,
    size_bytes: u64,
    chunks: usize,
    new_chunks: usize,
    new_bytes: u64,
    policy: RolloutPolicy,
    /// Times in seconds from publication.
    waves: Vec<WaveSummary>,
    /// Whether the nodes served `/report` for it.
    node_report: bool,
    outcomes: BTreeMap<String, u64>,
    failure_reasons: BTreeMap<String, u64>,
    reported: usize,
    expected_outcomes: usize,
    /// Seconds from publication until every device ran it.
    converged_s: Option<f64>,
    bytes: Bytes,
}

#[derive(Debug, Serialize)]
struct WaveSummary {
    wave: usize,
    percent: f64,
    opens_at_s: f64,
    devices: usize,
    committed: Option<u64>,
    failed: Option<u64>,
    rolled_back: Option<u64>,
    revoked: Option<u64>,
    first_outcome_s: Option<f64>,
    last_outcome_s: Option<f64>,
}

#[derive(Debug, Serialize)]
struct BadReport {
    release: String,
    wave1: Vec<String>,
    wave1_held_back: Vec<String>,
    wave1_failing_site: usize,
    rolled_back_by_health_check: Vec<String>,
    committed: Vec<String>,
    later_wave_devices: usize,
    later_wave_installs: Vec<String>,
    later_wave_fetched: Vec<String>,
    bytes_until_revoke: Bytes,
    /// Seconds from the bad release's publication.
    revoke_at_s: f64,
    rolled_back_by_revoke: Vec<Rollback>,
    /// Seconds from the revoke until every device ran the good release again.
    all_back_after_s: Option<f64>,
}

fn render(report: &Report, args: &Args) -> String {
    let mut out = String::from("\n== report ==\n");
    let f = &report.fleet;
    out.push_str(&format!(
        "fleet      {} devices: {} sites x {} nodes, origin {}\n",
        f.devices,
        f.sites.len(),
        f.nodes_per_site,
        f.origin
    ));
    for r in &report.releases {
        out.push_str(&format!(
            "{:<10} release {}, sequence {}, {} in {} chunks ({} new, {})\n",
            r.version,
            short(&r.release_id),
            r.sequence,
            bytes(r.size_bytes as f64),
            r.chunks,
            r.new_chunks,
            bytes(r.new_bytes as f64)
        ));
        for w in &r.waves {
            let counts = match (w.committed, w.failed, w.rolled_back, w.revoked) {
                (Some(c), Some(f), Some(rb), Some(0) | None) => {
                    format!("{c} committed, {f} failed, {rb} rolled back")
                }
                (Some(c), Some(f), Some(rb), Some(rv)) => {
                    format!("{c} committed, {f} failed, {rb} rolled back, {rv} revoked")
                }
                _ => "no outcome counts (the node has no /report)".into(),
            };
            let window = match (w.first_outcome_s, w.last_outcome_s) {
                (Some(a), Some(b)) => format!("outcomes {a:+.1} s .. {b:+.1} s"),
                _ => "no outcomes".into(),
            };
            out.push_str(&format!(
                "  wave {}   {:>3}%, {:>2}, opens {:+.1} s: {counts}; {window}\n",
                w.wave,
                w.percent,
                count_devices(w.devices),
                w.opens_at_s
            ));
        }
        if !r.outcomes.is_empty() {
            let outcomes: Vec<String> =
                r.outcomes.iter().map(|(k, v)| format!("{v} {}", k.replace('_', " "))).collect();
            out.push_str(&format!("  devices  {} (each device's newest outcome)\n", outcomes.join(", ")));
        }
        for (reason, n) in &r.failure_reasons {
            out.push_str(&format!("  failed   {n} x {reason}\n"));
        }
        if let Some(t) = r.converged_s {
            out.push_str(&format!("  done     every device ran it {t:.1} s after publication\n"));
        }
        let fetched = r.bytes.wan + r.bytes.lan;
        out.push_str(&format!(
            "  bytes    origin (WAN) {}, site peers (LAN) {}: {:.0}% of the {} devices fetched came over the LAN\n",
            bytes(r.bytes.origin as f64),
            bytes(r.bytes.lan),
            if fetched > 0.0 { 100.0 * r.bytes.lan / fetched } else { 0.0 },
            bytes(fetched)
        ));
    }
    if let Some(b) = &report.bad_release {
        out.push_str(&format!(
            "gate       {BAD} halted: {} of {} wave 1 devices failed their health check ({}); \
             {} of {} wave 2 devices installed it\n",
            b.rolled_back_by_health_check.len(),
            b.wave1.len(),
            b.rolled_back_by_health_check.join(", "),
            b.later_wave_installs.len(),
            b.later_wave_devices
        ));
        if !b.wave1_held_back.is_empty() {
            out.push_str(&format!(
                "           held back by the gate before installing, though in wave 1: {}\n",
                b.wave1_held_back.join(", ")
            ));
        }
        let times: Vec<String> = b
            .rolled_back_by_revoke
            .iter()
            .map(|r| {
                format!("{} {}", r.device, r.after_s.map_or_else(|| "-".into(), |t| format!("{t:.1} s")))
            })
            .collect();
        out.push_str(&format!(
            "revoke     at {:+.1} s after {BAD} was published; back on {GOOD}: {}\n",
            b.revoke_at_s,
            if times.is_empty() { "no device had committed it".into() } else { times.join(", ") }
        ));
    }
    out.push_str("checks\n");
    for c in &report.checks {
        out.push_str(&format!("  {} {}: {}\n", if c.ok { "ok  " } else { "FAIL" }, c.name, c.detail));
    }
    out.push_str(&format!(
        "\ndemo {} in {:.1} s; wrote {}; node logs in {}\n",
        if report.ok { "succeeded" } else { "FAILED" },
        report.duration_s,
        report.files.join(", "),
        args.out.join("logs").display()
    ));
    out
}

/// The rollout policy of both releases.
fn policy(wave_after: u64) -> RolloutPolicy {
    RolloutPolicy {
        waves: vec![
            Wave { percent: WAVE1_PERCENT, after_s: 0, require_success: None, require_reports: 0 },
            Wave { percent: 100.0, after_s: wave_after, require_success: None, require_reports: 0 },
        ],
        gate: Some(HealthGate { max_failure_ratio: GATE_MAX_FAILURE_RATIO, min_reports: GATE_MIN_REPORTS }),
        ..RolloutPolicy::default()
    }
}

/// Creates the output directory, replacing one an earlier demo left.
fn prepare(out: &Path) -> anyhow::Result<Paths> {
    if out.exists() {
        let empty =
            fs::read_dir(out).with_context(|| format!("cannot read {}", out.display()))?.next().is_none();
        if out.join(MARKER).exists() {
            fs::remove_dir_all(out)
                .with_context(|| format!("cannot clear the earlier demo in {}", out.display()))?;
        } else if !empty {
            bail!(
                "{} exists and is not an earlier demo's directory: choose another --out or remove it",
                out.display()
            );
        }
    }
    let paths = Paths {
        root: out.to_owned(),
        store: out.join("store"),
        nodes: out.join("nodes"),
        logs: out.join("logs"),
    };
    for d in [&paths.root, &paths.nodes, &paths.logs] {
        fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    fs::write(out.join(MARKER), "written by `otamesh demo`; the next demo replaces this directory\n")?;
    let root = out.canonicalize().with_context(|| format!("cannot resolve {}", out.display()))?;
    Ok(Paths { store: root.join("store"), nodes: root.join("nodes"), logs: root.join("logs"), root })
}

fn site_name(i: usize) -> String {
    format!("site-{}", (b'a' + i as u8) as char)
}

fn health_check_script(failing_site: &str) -> String {
    format!(
        r#"#!/bin/sh
# The demo's health check. Every node runs it after switching to a new release, as
#   sh health-check.sh SITE
# with OTAMESH_VERSION, OTAMESH_SLOT and friends in its environment (see `otamesh node
# --help`). Exit 0 commits the release; anything else rolls the device back.
#
# Release {BAD} does not come up on the boards of {failing_site}.
if [ "$OTAMESH_VERSION" = "{BAD}" ] && [ "$1" = "{failing_site}" ]; then
    echo "{BAD} does not boot on the board revision of {failing_site} (watchdog reset)" >&2
    exit 1
fi
exit 0
"#
    )
}

/// The next version: a twentieth of the image rewritten in the middle, so only the
/// chunks around the change are new.
fn patched(v1: &[u8]) -> Vec<u8> {
    let mut v2 = v1.to_vec();
    let (start, len) = (v1.len() / 2, (v1.len() / 20).max(1));
    let patch = release::noise(2, len);
    let end = (start + len).min(v2.len());
    v2[start..end].copy_from_slice(&patch[..end - start]);
    v2
}

fn count_devices(n: usize) -> String {
    if n == 1 { "1 device".into() } else { format!("{n} devices") }
}

fn list(items: &[String]) -> String {
    if items.is_empty() { "none".into() } else { items.join(", ") }
}

#[cfg(test)]
mod tests {
    use otamesh_core::chunking::{ChunkerConfig, chunk};

    use super::*;

    #[test]
    fn policy_is_valid_and_staged() {
        let p = policy(10);
        p.validate().unwrap();
        assert_eq!(p.waves.len(), 2);
    }

    #[test]
    fn the_patch_changes_few_chunks() {
        let v1 = release::noise(1, 4 << 20);
        let v2 = patched(&v1);
        let a: BTreeSet<_> =
            chunk(&v1, ChunkerConfig::default()).unwrap().into_iter().map(|c| c.id).collect();
        let b = chunk(&v2, ChunkerConfig::default()).unwrap();
        let new = b.iter().filter(|c| !a.contains(&c.id)).count();
        assert!(new > 0 && new * 5 < b.len(), "{new} of {} chunks new", b.len());
    }

    #[test]
    fn output_directories_are_never_clobbered() {
        let dir = tempfile::tempdir().unwrap();
        let foreign = dir.path().join("mine");
        fs::create_dir(&foreign).unwrap();
        fs::write(foreign.join("precious"), "x").unwrap();
        let e = prepare(&foreign).unwrap_err();
        assert!(e.to_string().contains("not an earlier demo's directory"), "{e}");
        assert!(foreign.join("precious").exists());
        let demo = dir.path().join("demo");
        prepare(&demo).unwrap();
        fs::write(demo.join("report.json"), "old").unwrap();
        prepare(&demo).unwrap();
        assert!(!demo.join("report.json").exists() && demo.join(MARKER).exists());
    }
}
