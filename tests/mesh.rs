//! The node as a user runs it: real `otamesh node` processes on 127.0.0.1, an origin
//! that is a plain static HTTP server over a published store.

mod common;

use std::time::Duration;

use common::*;

const MIB: usize = 1 << 20;

/// Starts `n` nodes of one site, each peered with every earlier one.
fn site(dir: &std::path::Path, site: &str, n: usize, trust: &std::path::Path, extra: &[String]) -> Vec<Node> {
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..n {
        let mut args = extra.to_vec();
        for earlier in &nodes {
            args.push("--peer".into());
            args.push(earlier.addr());
        }
        nodes.push(Node::start(dir, &format!("{site}-n{i}"), site, trust, &args));
    }
    nodes
}

fn wait_members(nodes: &[Node], members: usize) {
    wait_for(Duration::from_secs(30), "site membership", || {
        nodes.iter().all(|n| {
            n.status().and_then(|s| s["site_members"].as_array().map(|a| a.len())).unwrap_or(0) >= members
        })
    });
}

#[test]
fn twelve_nodes_in_three_sites_fetch_each_chunk_over_the_wan_about_once_per_site() {
    let dir = TestDir::new();
    let key = publisher();
    let trust = write_trust(dir.path(), &key);
    let store = dir.path().join("origin");
    otamesh_node::store::Store::create(&store).unwrap();
    let origin = Origin::start(&store, None);
    let extra = vec!["--origin".to_string(), origin.url.clone()];
    let sites: Vec<Vec<Node>> =
        ["a", "b", "c"].iter().map(|s| site(dir.path(), s, 4, &trust, &extra)).collect();
    for s in &sites {
        wait_members(s, 3);
    }
    let size = 32 * MIB;
    let data = noise(1, size);
    let (release, _) = publish(&store, &key, &data, "gw", 1);
    let all: Vec<&Node> = sites.iter().flatten().collect();
    wait_for(Duration::from_secs(90), "all 12 nodes complete", || all.iter().all(|n| n.complete()));
    for n in &all {
        let s = n.status().unwrap();
        assert_eq!(s["releases"][0]["release_id"], release.to_string());
        assert_eq!(s["releases"][0]["state"], "staged");
    }
    let served = origin.served();
    let budget = (3.0 * size as f64 * 1.05) as u64;
    let wan: f64 = all.iter().map(|n| n.metric("otamesh_chunk_bytes_total{source=\"wan\"}")).sum();
    let lan: f64 = all.iter().map(|n| n.metric("otamesh_chunk_bytes_total{source=\"lan\"}")).sum();
    eprintln!("origin served {served} bytes (budget {budget}); nodes counted wan {wan} lan {lan}");
    assert!(served <= budget, "origin served {served} bytes, budget {budget}");
    assert!(lan >= 8.0 * size as f64 * 0.9, "most bytes came over the LAN: {lan}");
}

/// Benchmark, not a test: two nodes on loopback; the second fetches the whole release
/// from the first. Size from `OTAMESH_BENCH_MIB` (default 256).
#[test]
#[ignore]
fn stress_bench_two_nodes_lan_transfer() {
    let mib: usize = std::env::var("OTAMESH_BENCH_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    let dir = TestDir::new();
    let key = publisher();
    let trust = write_trust(dir.path(), &key);
    let store = dir.path().join("origin");
    let data = noise(9, mib * MIB);
    publish(&store, &key, &data, "gw", 1);
    drop(data);
    let origin = Origin::start(&store, None);
    let seed = Node::start(dir.path(), "seed", "s", &trust, &["--origin".into(), origin.url.clone()]);
    wait_for(Duration::from_secs(600), "the seed holds the release", || seed.complete());
    let t0 = std::time::Instant::now();
    let leech = Node::start(dir.path(), "leech", "s", &trust, &["--peer".into(), seed.addr()]);
    wait_for(Duration::from_secs(600), "the leech holds the release", || leech.complete());
    let secs = t0.elapsed().as_secs_f64();
    let lan = leech.metric("otamesh_chunk_bytes_total{source=\"lan\"}");
    println!(
        "two nodes: {mib} MiB in {secs:.2} s including start-up = {:.1} MiB/s (lan bytes {lan})",
        mib as f64 / secs
    );
}
