//! The real fleet on loopback: how long a release takes to reach every device, how
//! long a revoke takes to bring every device back, and what it cost the WAN.
//!
//! SITES x NODES real `otamesh node` processes (through [`otamesh_fleet`]) poll one
//! origin. Each round publishes a new release (a twentieth of the previous image
//! rewritten, so a delta), waits until every device runs it (**time to converge**:
//! publication to the first sample in which all devices run it), then signs a revoke
//! of it into the store and waits until every device runs the previous release again
//! (**revoke to all back**). Per release the origin's chunk bytes divided by the
//! sites give **WAN bytes per site**, and the devices' byte counters the **LAN
//! share**. The fleet is sampled every 100 ms; the nodes poll the origin every 0.5 s,
//! so both times include up to half a second of discovery.

use std::time::{Duration, Instant};

use otamesh_core::directive::Order;
use otamesh_core::rollout::RolloutPolicy;
use otamesh_core::{SecretKey, UpdateKind};
use otamesh_fleet::fleet::{Bytes, NodeSpec, Setup};
use otamesh_fleet::release::{self, Describe};
use otamesh_fleet::{Fleet, Origin, Timeline, plot};
use otamesh_node::clock;
use otamesh_node::store::Store;

use crate::bmf::Measure;
use crate::suite::{Options, Outcome, Progress, Size, noise, publisher, scratch};

/// The device class of the benchmark fleets.
pub(crate) const CLASS: &str = "bench-gw";
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// The fleet's shape for a size: (sites, nodes per site, MiB, rounds).
fn shape(size: Size) -> (usize, usize, usize, usize) {
    match size {
        Size::Full => (3, 4, 32, 5),
        Size::Quick => (3, 3, 8, 3),
        Size::Tiny => (2, 2, 1, 1),
    }
}

/// One release on the fleet.
struct Round {
    version: String,
    hex: String,
    published_s: f64,
    converged_s: Option<f64>,
    revoke_s: Option<f64>,
    all_back_s: Option<f64>,
    bytes: Bytes,
}

pub(crate) async fn play(
    options: &Options,
    outcome: &mut Outcome,
    progress: &mut dyn Progress,
) -> Result<(), String> {
    let (sites, per_site, mib, rounds) = shape(options.size);
    let dir = scratch(options, "fleet")?;
    let (key, trust) = publisher(&dir, 11)?;
    let store_dir = dir.join("store");
    let store = Store::create(&store_dir).map_err(|e| e.to_string())?;
    let origin = Origin::start(&store_dir, loopback(), None).map_err(|e| e.to_string())?;
    progress.step("fleet", &format!("starting {} nodes", sites * per_site));
    let (mut fleet, _) = start_fleet(options, &dir, &origin, (&key, &trust), (sites, per_site), 0.5).await?;
    let logs = dir.join("logs");

    let started = Instant::now();
    let mut timeline = Timeline::default();
    let mut image = noise(21, mib << 20);
    let mut played: Vec<Round> = Vec::new();
    let limit = Duration::from_secs(120 + 4 * mib as u64);
    // The first release is the base every revoke returns to.
    for round in 0..=rounds {
        let version = format!("1.{round}.0");
        progress.step("fleet", &format!("round {round}/{rounds}: {version} converging"));
        if round > 0 {
            image = patched(&image, round as u64);
        }
        let before = fleet.bytes(origin.served().chunk_bytes()).await;
        let hex = publish(&store, &key, &image, &version, round as u64 + 1, RolloutPolicy::default())?;
        let published_s = started.elapsed().as_secs_f64();
        let converged =
            watch(&mut fleet, &mut timeline, started, limit, SAMPLE_EVERY, |s| all_on(s, &hex)).await?;
        let after = fleet.bytes(origin.served().chunk_bytes()).await;
        let mut r = Round {
            version,
            hex: hex.clone(),
            published_s,
            converged_s: converged.then(|| timeline.all_running(published_s, &hex)).flatten(),
            revoke_s: None,
            all_back_s: None,
            bytes: after.since(before),
        };
        if !converged {
            return Err(format!(
                "not every device ran {} after {} s; logs in {}",
                r.version,
                limit.as_secs(),
                logs.display()
            ));
        }
        if round > 0 {
            progress.step("fleet", &format!("round {round}/{rounds}: revoking {}", r.version));
            let base = played[0].hex.clone();
            let revoke_s = started.elapsed().as_secs_f64();
            revoke(&store, &key, &hex, &base)?;
            let back =
                watch(&mut fleet, &mut timeline, started, limit, SAMPLE_EVERY, |s| all_on(s, &base)).await?;
            if !back {
                return Err(format!(
                    "the revoke of {} did not bring every device back in {} s",
                    r.version,
                    limit.as_secs()
                ));
            }
            r.revoke_s = Some(revoke_s);
            r.all_back_s = timeline.all_running(revoke_s, &base);
        }
        played.push(r);
    }
    fleet.stop();

    let converge: Vec<f64> = played.iter().filter_map(|r| r.converged_s).collect();
    let back: Vec<f64> = played.iter().filter_map(|r| r.all_back_s).collect();
    let wan: Vec<f64> = played.iter().map(|r| r.bytes.origin as f64 / sites as f64).collect();
    let lan: Vec<f64> = played.iter().map(|r| 100.0 * r.bytes.lan_share()).collect();
    outcome.results.record("fleet/time_to_converge", Measure::FleetSeconds, &converge);
    outcome.results.record("fleet/revoke_to_all_back", Measure::FleetSeconds, &back);
    outcome.results.record("fleet/wan_bytes_per_site", Measure::WanBytes, &wan);
    outcome.results.record("fleet/lan_share", Measure::LanSharePercent, &lan);
    outcome.notes.push(format!(
        "fleet: {sites} sites x {per_site} nodes on loopback, {mib} MiB releases (deltas after the first), {} releases, {rounds} revokes",
        played.len()
    ));
    plots(options, outcome, &timeline, &played)?;
    Ok(())
}

/// Starts `sites` x `per_site` nodes in `dir` (data under `nodes/`, logs under `logs/`)
/// polling `origin` every `poll_s` seconds, and waits until all are up; returns the
/// fleet and its nodes, site by site.
pub(crate) async fn start_fleet(
    options: &Options,
    dir: &std::path::Path,
    origin: &Origin,
    (key, trust): (&SecretKey, &std::path::Path),
    (sites, per_site): (usize, usize),
    poll_s: f64,
) -> Result<(Fleet, Vec<NodeSpec>), String> {
    let (nodes_dir, logs) = (dir.join("nodes"), dir.join("logs"));
    for d in [&nodes_dir, &logs] {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let specs: Vec<NodeSpec> = (0..sites)
        .flat_map(|s| {
            (0..per_site).map(move |i| NodeSpec {
                name: format!("s{s}-n{i}"),
                site: format!("s{s}"),
                site_index: s,
                health_check: None,
            })
        })
        .collect();
    let setup = Setup {
        exe: &options.exe,
        nodes_dir: &nodes_dir,
        logs_dir: &logs,
        origin: &origin.url,
        trust,
        publisher: key,
        class: CLASS,
        poll_interval_s: poll_s,
        cwd: dir,
    };
    let mut fleet = Fleet::start(&setup, &specs).map_err(|e| e.to_string())?;
    fleet
        .wait_ready(Duration::from_secs(60), SAMPLE_EVERY, &logs, |_, _| {})
        .await
        .map_err(|e| e.to_string())?;
    Ok((fleet, specs))
}

fn loopback() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Every node runs `hex`.
pub(crate) fn all_on(s: &otamesh_fleet::Sample, hex: &str) -> bool {
    !s.nodes.is_empty() && (0..s.nodes.len()).all(|i| s.active(i) == Some(hex))
}

/// Samples the fleet into `timeline` every `every` until `done` or `limit`; false on
/// timeout.
pub(crate) async fn watch(
    fleet: &mut Fleet,
    timeline: &mut Timeline,
    started: Instant,
    limit: Duration,
    every: Duration,
    done: impl Fn(&otamesh_fleet::Sample) -> bool,
) -> Result<bool, String> {
    let deadline = Instant::now() + limit;
    loop {
        fleet.check_alive().map_err(|e| e.to_string())?;
        let sample = fleet.sample(started.elapsed().as_secs_f64()).await;
        let finished = done(&sample);
        timeline.push(sample);
        if finished {
            return Ok(true);
        }
        if Instant::now() > deadline {
            return Ok(false);
        }
        tokio::time::sleep(every).await;
    }
}

/// Publishes `image` as `version` of [`CLASS`] into `store`; returns its release id.
pub(crate) fn publish(
    store: &Store,
    key: &SecretKey,
    image: &[u8],
    version: &str,
    sequence: u64,
    rollout: RolloutPolicy,
) -> Result<String, String> {
    let now = clock::now_ms();
    let describe = Describe {
        vendor: "otamesh-bench",
        product: "gateway",
        class: CLASS,
        version,
        sequence,
        kind: UpdateKind::Firmware,
        created_at: now,
        expires_at: Some(now + 86_400_000),
        rollout,
    };
    let manifest = release::manifest(image, describe).map_err(|e| e.to_string())?;
    let published = release::publish(store, key, image, manifest, now).map_err(|e| e.to_string())?;
    Ok(published.id().to_hex())
}

/// Signs a revoke of `bad` back to `to` into `store`.
pub(crate) fn revoke(store: &Store, key: &SecretKey, bad: &str, to: &str) -> Result<(), String> {
    let (bad, to) = (bad.parse().map_err(|e| format!("{e}"))?, to.parse().map_err(|e| format!("{e}"))?);
    release::direct(store, key, bad, Order::Revoke { to }, clock::now_ms()).map_err(|e| e.to_string())?;
    Ok(())
}

/// The next image: a twentieth rewritten at a place that moves with `round`.
fn patched(image: &[u8], round: u64) -> Vec<u8> {
    let mut next = image.to_vec();
    let len = (image.len() / 20).max(1);
    let start = (image.len() / 7 * (round as usize % 6)).min(image.len() - len);
    next[start..start + len].copy_from_slice(&noise(100 + round, len));
    next
}

const COLORS: [(u8, u8, u8); 6] =
    [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (140, 86, 75)];

fn plots(
    options: &Options,
    outcome: &mut Outcome,
    timeline: &Timeline,
    played: &[Round],
) -> Result<(), String> {
    let n = timeline.samples.first().map_or(1, |s| s.nodes.len()).max(1) as f64;
    let share = |hex: &str| -> Vec<(f64, f64)> {
        timeline
            .samples
            .iter()
            .map(|s| {
                (s.t, 100.0 * (0..s.nodes.len()).filter(|&i| s.active(i) == Some(hex)).count() as f64 / n)
            })
            .collect()
    };
    let mut chart = plot::Chart {
        title: format!("otamesh bench: share of {n} devices running each release"),
        x_desc: "seconds since the fleet was up".into(),
        y_desc: "devices running it (%)".into(),
        y_max: 100.0,
        series: Vec::new(),
        marks: Vec::new(),
    };
    for (r, color) in played.iter().zip(COLORS.iter().cycle()) {
        chart.series.push(plot::Series {
            label: format!("running {}", r.version),
            color: *color,
            points: share(&r.hex),
        });
        chart.marks.push(plot::Mark { x: r.published_s, label: format!("{} published", r.version) });
        if let Some(t) = r.revoke_s {
            chart.marks.push(plot::Mark { x: t, label: format!("{} revoked", r.version) });
        }
    }
    write(options, outcome, &chart, "fleet-convergence.png")?;

    let mut rollback = plot::Chart {
        title: format!("otamesh bench: devices still on a revoked release ({n} devices)"),
        x_desc: "seconds since the revoke was signed".into(),
        y_desc: "devices on the revoked release".into(),
        y_max: n + 1.0,
        series: Vec::new(),
        marks: Vec::new(),
    };
    for (r, color) in played.iter().zip(COLORS.iter().cycle()) {
        let Some(t0) = r.revoke_s else { continue };
        let points = timeline
            .samples
            .iter()
            .filter(|s| s.t >= t0)
            .map(|s| {
                (s.t - t0, (0..s.nodes.len()).filter(|&i| s.active(i) == Some(r.hex.as_str())).count() as f64)
            })
            .collect::<Vec<_>>();
        let end = points.iter().position(|p| p.1 == 0.0).map_or(points.len(), |i| (i + 10).min(points.len()));
        rollback.series.push(plot::Series {
            label: format!("{} revoked", r.version),
            color: *color,
            points: points[..end].to_vec(),
        });
    }
    if !rollback.series.is_empty() {
        write(options, outcome, &rollback, "fleet-rollback.png")?;
    }
    Ok(())
}

pub(crate) fn write(
    options: &Options,
    outcome: &mut Outcome,
    chart: &plot::Chart,
    name: &str,
) -> Result<(), String> {
    plot::png(chart, &options.out.join(name))?;
    outcome.plots.push(name.to_owned());
    Ok(())
}
