//! `otamesh bench` as CI runs it (in its tiny size: the shape of what it writes, never
//! its figures), and benchmarks of the node that are not tests: `#[ignore]`d, run by
//! `bench/node-bench.sh` on a release build; the harness, not the test suite, holds
//! the targets.

mod common;

use std::time::{Duration, Instant};

use common::*;

const MIB: usize = 1 << 20;

fn results(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// A BMF metric: a finite `value` within its `lower_value` and `upper_value`.
fn assert_metric(r: &serde_json::Value, benchmark: &str, measure: &str) -> f64 {
    let m = &r[benchmark][measure];
    let value = m["value"].as_f64().unwrap_or_else(|| panic!("no {benchmark} {measure} in {r:#}"));
    let (lower, upper) = (m["lower_value"].as_f64().unwrap(), m["upper_value"].as_f64().unwrap());
    assert!(value.is_finite() && lower <= value && value <= upper, "{benchmark}: {m}");
    value
}

#[test]
fn calibration_plays_one_rollout_on_real_nodes_and_in_the_simulator_and_writes_the_errors() {
    let dir = TestDir::new();
    let out = dir.path().join("out");
    let (code, stdout, stderr) =
        otamesh(&["bench", "--tiny", "--filter", "calibrate", "--out", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let r = results(&out.join("results.json"));
    for figure in ["t50", "t90", "t100", "rollback"] {
        assert!(assert_metric(&r, &format!("calibrate/{figure}"), "error-percent") >= 0.0);
    }
    // Each chunk crosses each site's WAN once on both sides, whatever the machine's load.
    let wan = assert_metric(&r, "calibrate/wan_bytes", "error-percent");
    assert!(wan <= 15.0, "WAN bytes differ by {wan}% between the real fleet and the simulator");
    assert_eq!(&std::fs::read(out.join("calibration.png")).unwrap()[..4], b"\x89PNG");
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(summary.contains("calibrate: ") && summary.contains("t50 real"), "{summary}");
}

#[test]
fn bench_writes_bencher_metrics_a_summary_and_plots_and_names_regressions() {
    let dir = TestDir::new();
    let out = dir.path().join("out");
    // A baseline under which the fleet converged in a millisecond: any real run regressed.
    let impossible = dir.path().join("impossible.json");
    std::fs::write(&impossible, r#"{"fleet/time_to_converge": {"seconds": {"value": 0.001}}}"#).unwrap();
    let (code, stdout, stderr) = otamesh(&[
        "bench",
        "--tiny",
        "--filter",
        "fleet",
        "--filter",
        "sim",
        "--out",
        out.to_str().unwrap(),
        "--baseline",
        impossible.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "a regression exits 1\n{stdout}\n{stderr}");
    assert!(stderr.contains("regression: fleet/time_to_converge seconds"), "{stderr}");

    let r = results(&out.join("results.json"));
    assert!(assert_metric(&r, "fleet/time_to_converge", "seconds") > 0.0);
    assert!(assert_metric(&r, "fleet/revoke_to_all_back", "seconds") > 0.0);
    assert_metric(&r, "fleet/wan_bytes_per_site", "wan-bytes");
    assert_metric(&r, "fleet/lan_share", "lan-share-percent");
    // The gate halts this release, so the fleet reaches 50% but never 90%.
    for t in ["t50", "rollback"] {
        assert_metric(&r, &format!("sim/bad-release-gate/{t}"), "virtual-seconds");
    }
    assert!(assert_metric(&r, "sim/bad-release-gate/run", "wall-seconds") > 0.0);
    assert!(
        r.get("lan/two_node_transfer").is_none() && r.get("core/manifest_verify").is_none(),
        "--filter ran more"
    );
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(
        summary.contains("| `fleet/time_to_converge` | seconds |") && summary.contains("regressed"),
        "{summary}"
    );
    for plot in ["fleet-convergence.png", "fleet-rollback.png", "sim-rollback.png"] {
        assert_eq!(&std::fs::read(out.join(plot)).unwrap()[..4], b"\x89PNG", "{plot}");
    }
    assert!(!out.join("work").exists(), "the scratch space is removed");

    // The same results against themselves pass; against a copy whose convergence time
    // is 30% better, that metric and only it is named.
    let (code, _, stderr) = otamesh(&[
        "bench",
        "compare",
        out.join("results.json").to_str().unwrap(),
        "--baseline",
        out.join("results.json").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let mut better = r.clone();
    for k in ["value", "lower_value", "upper_value"] {
        let m = &mut better["fleet/time_to_converge"]["seconds"][k];
        *m = serde_json::json!(m.as_f64().unwrap() * 0.7);
    }
    let baseline = dir.path().join("baseline.json");
    std::fs::write(&baseline, serde_json::to_string(&better).unwrap()).unwrap();
    let (code, _, stderr) = otamesh(&[
        "bench",
        "compare",
        out.join("results.json").to_str().unwrap(),
        "--baseline",
        baseline.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{stderr}");
    let named: Vec<&str> = stderr.lines().filter(|l| l.starts_with("regression: ")).collect();
    assert_eq!(named.len(), 1, "{stderr}");
    assert!(named[0].starts_with("regression: fleet/time_to_converge seconds"), "{stderr}");
}

#[test]
fn bench_refuses_a_baseline_that_is_not_bencher_json_before_running() {
    let dir = TestDir::new();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "not json").unwrap();
    let out = dir.path().join("out");
    let (code, _, stderr) =
        otamesh(&["bench", "--quick", "--out", out.to_str().unwrap(), "--baseline", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("is not a Bencher Metric Format results file"), "{stderr}");
    assert!(!out.exists(), "nothing is written for a bad baseline");
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Two nodes on loopback; the second fetches the whole release from the first.
/// `OTAMESH_BENCH_MIB` (default 256) sets the size; `OTAMESH_BENCH_ARTIFACT`, if set,
/// is where the artifact is also written (for the HTTPS baseline).
#[test]
#[ignore]
fn stress_bench_two_nodes_lan_transfer() {
    let mib = env_usize("OTAMESH_BENCH_MIB", 256);
    let World { dir, key, trust, store, origin } = World::new();
    let data = noise(9, mib * MIB);
    if let Ok(p) = std::env::var("OTAMESH_BENCH_ARTIFACT") {
        std::fs::write(p, &data).unwrap();
    }
    publish(&store, &key, &data, "gw", 1);
    drop(data);
    let seed = Node::start(dir.path(), "seed", "s", &trust, &["--origin".into(), origin.url.clone()]);
    wait_for(Duration::from_secs(600), "the seed holds the release", || seed.complete());
    let leech = Node::start(dir.path(), "leech", "s", &trust, &["--peer".into(), seed.addr()]);
    // Clock from the leech's first stored chunk to its last, polling its byte counter
    // every 10 ms (/metrics is live; /status is refreshed only once a second).
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first: Option<Instant> = None;
    loop {
        assert!(Instant::now() < deadline, "leech did not finish");
        let lan = leech.metric("otamesh_chunk_bytes_total{source=\"lan\"}") as usize;
        if lan > 0 && first.is_none() {
            first = Some(Instant::now());
        }
        if lan == mib * MIB {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let secs = first.map_or(f64::NAN, |f| f.elapsed().as_secs_f64());
    println!("BENCH two-node lan transfer: {mib} MiB in {secs:.3} s = {:.0} MiB/s", mib as f64 / secs);
}

/// 12 nodes in 3 sites against an origin throttled to `OTAMESH_BENCH_RATE` bytes/s
/// (default 10 MB/s), then the same 12 as 12 one-node sites (everyone downloads
/// straight from the origin: "central"). Size `OTAMESH_BENCH_MIB` (default 32).
#[test]
#[ignore]
fn stress_bench_twelve_nodes_mesh_vs_central() {
    let mib = env_usize("OTAMESH_BENCH_MIB", 32);
    let rate = env_usize("OTAMESH_BENCH_RATE", 10_000_000) as u64;
    let size = (mib * MIB) as u64;
    let run = |mesh: bool| -> (f64, u64) {
        let World { dir, key, trust, store, origin } = World::with_origin("127.0.0.1:0", Some(rate));
        let mut nodes: Vec<Node> = Vec::new();
        for s in 0..3 {
            let mut site_nodes: Vec<String> = Vec::new();
            for i in 0..4 {
                let site = if mesh { format!("s{s}") } else { format!("s{s}-{i}") };
                let mut args = vec!["--origin".to_string(), origin.url.clone()];
                if mesh {
                    for a in &site_nodes {
                        args.extend(["--peer".to_string(), a.clone()]);
                    }
                }
                let n = Node::start(dir.path(), &format!("s{s}-n{i}"), &site, &trust, &args);
                site_nodes.push(n.addr());
                nodes.push(n);
            }
        }
        if mesh {
            wait_for(Duration::from_secs(60), "site membership", || {
                nodes.iter().all(|n| {
                    n.status().and_then(|s| s["site_members"].as_array().map(|a| a.len())) == Some(3)
                })
            });
        } else {
            wait_for(Duration::from_secs(60), "nodes up", || nodes.iter().all(|n| n.status().is_some()));
        }
        let data = noise(5, size as usize);
        publish(&store, &key, &data, "gw", 1);
        let base = origin.bytes_served();
        let t0 = Instant::now();
        wait_for(Duration::from_secs(900), "all 12 hold the release", || nodes.iter().all(|n| n.complete()));
        (t0.elapsed().as_secs_f64(), origin.bytes_served() - base)
    };
    let (mesh_s, mesh_wan) = run(true);
    let (central_s, central_wan) = run(false);
    println!(
        "BENCH 12 nodes / 3 sites, {mib} MiB, origin {:.1} MB/s: mesh {mesh_s:.1} s, WAN {:.1} MB ({:.3} x sites x size); \
         central {central_s:.1} s, WAN {:.1} MB; speed-up {:.2}x",
        rate as f64 / 1e6,
        mesh_wan as f64 / 1e6,
        mesh_wan as f64 / (3.0 * size as f64),
        central_wan as f64 / 1e6,
        central_s / mesh_s
    );
}

#[test]
fn the_site_part_counts_the_copies_of_a_release_the_origin_sent_per_site() {
    let dir = TestDir::new();
    let out = dir.path().join("out");
    let (code, stdout, stderr) =
        otamesh(&["bench", "--tiny", "--filter", "site", "--out", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let r = results(&out.join("results.json"));
    // Random bytes: the site cannot have fetched less than one whole copy.
    let copies = assert_metric(&r, "site/one_by_one_3_poll_2s", "wan-copies");
    assert!(copies >= 1.0, "the origin sent {copies} copies of a release every device runs");
    assert!(r.get("fleet/time_to_converge").is_none(), "--filter ran more");
}
