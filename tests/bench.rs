//! Benchmarks of the node, not tests: `#[ignore]`d, run by `bench/node-bench.sh` on a
//! release build. They print their figures; the harness, not the test suite, holds the
//! targets.

mod common;

use std::time::{Duration, Instant};

use common::*;

const MIB: usize = 1 << 20;

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
        let base = origin.served();
        let t0 = Instant::now();
        wait_for(Duration::from_secs(900), "all 12 hold the release", || nodes.iter().all(|n| n.complete()));
        (t0.elapsed().as_secs_f64(), origin.served() - base)
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
