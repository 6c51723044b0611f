//! One WAN copy per site: how many copies of a release a site's origin link carries,
//! with real `otamesh node` processes on loopback.
//!
//! Each case starts a fresh origin and fleet, publishes one release (random bytes, so
//! nothing is deduplicated within it) and waits until every device runs it; its figure
//! is the origin's chunk bytes over the release, per site (**1.0 is one copy**). The
//! cases are the ones the site planner must get right: devices started one by one
//! (each peered with every earlier one and started once those are up) with the
//! release published afterwards, at a short and at the default poll interval (devices
//! then hear of the release through the site's gossip, not all from the origin); and
//! a power cut: every node of three sites started in the same moment, the release
//! already published.
//!
//! **Non-goals**: speed (the `fleet` and `lan` parts measure it); hostile peers (the
//! test suite's `tests/site.rs` plays them).

use std::time::Duration;

use otamesh_core::rollout::RolloutPolicy;
use otamesh_fleet::fleet::{NodeSpec, Setup};
use otamesh_fleet::{Fleet, Origin};
use otamesh_node::store::Store;

use crate::bmf::Measure;
use crate::rollout::{CLASS, all_on, publish};
use crate::suite::{Options, Outcome, Progress, Size, noise, publisher, scratch, until};

/// One way a site comes to fetch a release.
struct Case {
    /// The benchmark's name under `site/`.
    name: &'static str,
    sites: usize,
    per_site: usize,
    /// The nodes' `--poll-interval`, seconds (60 is the default).
    poll_s: f64,
    /// All nodes started in one moment after the release is published; otherwise one
    /// by one before it.
    together: bool,
}

const fn one_by_one(name: &'static str, per_site: usize, poll_s: f64) -> Case {
    Case { name, sites: 1, per_site, poll_s, together: false }
}

const POWER_CUT: Case =
    Case { name: "together_3_sites_x4", sites: 3, per_site: 4, poll_s: 2.0, together: true };

/// The cases, runs of each and release size (MiB) for a size.
fn plan(size: Size) -> (Vec<Case>, usize, usize) {
    match size {
        Size::Full => (
            vec![
                one_by_one("one_by_one_4_poll_2s", 4, 2.0),
                one_by_one("one_by_one_10_poll_2s", 10, 2.0),
                one_by_one("one_by_one_25_poll_2s", 25, 2.0),
                one_by_one("one_by_one_4_poll_60s", 4, 60.0),
                one_by_one("one_by_one_10_poll_60s", 10, 60.0),
                one_by_one("one_by_one_25_poll_60s", 25, 60.0),
                POWER_CUT,
            ],
            5,
            16,
        ),
        Size::Quick => (
            vec![
                one_by_one("one_by_one_10_poll_2s", 10, 2.0),
                one_by_one("one_by_one_25_poll_2s", 25, 2.0),
                POWER_CUT,
            ],
            1,
            16,
        ),
        Size::Tiny => (vec![one_by_one("one_by_one_3_poll_2s", 3, 2.0)], 1, 1),
    }
}

pub(crate) async fn play(
    options: &Options,
    outcome: &mut Outcome,
    progress: &mut dyn Progress,
) -> Result<(), String> {
    let (cases, runs, mib) = plan(options.size);
    for case in cases.iter().filter(|c| options.selected(&format!("site/{}", c.name))) {
        let mut copies = Vec::with_capacity(runs);
        for run in 0..runs {
            progress.step("site", &format!("{} run {}/{runs}", case.name, run + 1));
            copies.push(play_case(options, case, mib, run as u64).await?);
        }
        outcome.results.record(&format!("site/{}", case.name), Measure::WanCopies, &copies);
    }
    outcome.notes.push(format!(
        "site: origin chunk bytes per site over a {mib} MiB release, {runs} run(s) per case; 1.0 is one WAN copy"
    ));
    Ok(())
}

/// One run of `case`: the copies of the release the origin sent per site.
async fn play_case(options: &Options, case: &Case, mib: usize, run: u64) -> Result<f64, String> {
    let dir = scratch(options, &format!("site-{}", case.name))?;
    let (key, trust) = publisher(&dir, 31)?;
    let store_dir = dir.join("store");
    let store = Store::create(&store_dir).map_err(|e| e.to_string())?;
    let origin = Origin::start(&store_dir, ([127, 0, 0, 1], 0).into(), None).map_err(|e| e.to_string())?;
    let (nodes_dir, logs) = (dir.join("nodes"), dir.join("logs"));
    for d in [&nodes_dir, &logs] {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let setup = Setup {
        exe: &options.exe,
        nodes_dir: &nodes_dir,
        logs_dir: &logs,
        origin: &origin.url,
        trust: &trust,
        publisher: &key,
        class: CLASS,
        poll_interval_s: case.poll_s,
        cwd: &dir,
    };
    let specs: Vec<NodeSpec> = (0..case.sites)
        .flat_map(|s| {
            (0..case.per_site).map(move |i| NodeSpec {
                name: format!("s{s}-n{i}"),
                site: format!("s{s}"),
                site_index: s,
                health_check: None,
            })
        })
        .collect();
    let image = noise(300 + run, mib << 20);
    let ready = Duration::from_secs(60);
    let every = Duration::from_millis(100);
    let mut fleet = Fleet::default();
    let hex = if case.together {
        let hex = publish(&store, &key, &image, "1.0.0", 1, RolloutPolicy::default())?;
        fleet = Fleet::start(&setup, &specs).map_err(|e| e.to_string())?;
        hex
    } else {
        for spec in &specs {
            fleet.add(&setup, spec).map_err(|e| e.to_string())?;
            fleet.wait_ready(ready, every, &logs, |_, _| {}).await.map_err(|e| e.to_string())?;
        }
        publish(&store, &key, &image, "1.0.0", 1, RolloutPolicy::default())?
    };
    let limit = Duration::from_secs(60 + 2 * case.poll_s as u64 + 4 * mib as u64);
    let done =
        until(limit, every, async || fleet.check_alive().is_ok() && all_on(&fleet.sample(0.0).await, &hex))
            .await;
    fleet.check_alive().map_err(|e| e.to_string())?;
    if !done {
        return Err(format!(
            "{}: not every device ran the release after {} s; logs in {}",
            case.name,
            limit.as_secs(),
            logs.display()
        ));
    }
    fleet.stop();
    Ok(origin.served().chunk_bytes() as f64 / (case.sites * image.len()) as f64)
}
