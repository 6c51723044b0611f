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
    let World { dir, key, trust, store, origin } = World::new();
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
    // With no rollout policy every device installs as soon as its chunks are here.
    wait_for(Duration::from_secs(60), "all 12 nodes commit", || {
        all.iter().all(|n| n.status().is_some_and(|s| s["state"] == "committed"))
    });
    for n in &all {
        let s = n.status().unwrap();
        assert_eq!(s["releases"][0]["release_id"], release.to_string());
        assert_eq!(s["active"]["release_id"], release.to_string());
    }
    let served = origin.bytes_served();
    let budget = (3.0 * size as f64 * 1.05) as u64;
    let wan: f64 = all.iter().map(|n| n.metric("otamesh_chunk_bytes_total{source=\"wan\"}")).sum();
    let lan: f64 = all.iter().map(|n| n.metric("otamesh_chunk_bytes_total{source=\"lan\"}")).sum();
    eprintln!("origin served {served} bytes (budget {budget}); nodes counted wan {wan} lan {lan}");
    assert!(served <= budget, "origin served {served} bytes, budget {budget}");
    assert!(lan >= 8.0 * size as f64 * 0.9, "most bytes came over the LAN: {lan}");
}

#[test]
fn a_peer_serving_corrupt_chunks_is_banned_and_everyone_completes() {
    let World { dir, key, trust, store, origin } = World::new();
    let data = noise(2, 4 * MIB);
    publish(&store, &key, &data, "gw", 1);
    let with_origin = vec!["--origin".to_string(), origin.url.clone()];
    // The bad node fetches the whole release alone first, so it has every chunk to
    // offer; then it serves them corrupted (test-only flag).
    let mut bad_args = with_origin.clone();
    bad_args.push("--test-corrupt-served-chunks".into());
    let bad = Node::start(dir.path(), "bad", "s", &trust, &bad_args);
    wait_for(Duration::from_secs(30), "the bad node holds the release", || bad.complete());
    let bad_device = bad.status().unwrap()["device_id"].as_str().unwrap().to_owned();
    let mut good: Vec<Node> = Vec::new();
    for i in 0..3 {
        let mut args = with_origin.clone();
        args.extend(["--peer".to_string(), bad.addr()]);
        for g in &good {
            args.extend(["--peer".to_string(), g.addr()]);
        }
        good.push(Node::start(dir.path(), &format!("good{i}"), "s", &trust, &args));
    }
    wait_for(Duration::from_secs(45), "every good node complete", || good.iter().all(|n| n.complete()));
    for n in &good {
        let bad_chunks = n.metric("otamesh_bad_chunks_total");
        let s = n.status().unwrap();
        let banned: Vec<&str> =
            s["releases"][0]["banned"].as_array().unwrap().iter().filter_map(|b| b.as_str()).collect();
        assert!(bad_chunks >= 1.0, "{}: bad chunks {bad_chunks}\n{}", n.name, n.tail_log());
        // Slow start: a peer that has delivered nothing gets two chunks at once.
        assert!(bad_chunks <= 4.0, "{}: a corrupt peer cost {bad_chunks} chunks before its ban", n.name);
        assert_eq!(banned, vec![bad_device.as_str()], "{}", n.name);
    }
    assert!(bad.metric("otamesh_chunks_served_total") >= 3.0);
    // Nothing corrupt was stored: every chunk file hashes to its name.
    for n in &good {
        for entry in walk(&n.data.join("store/chunks")) {
            let bytes = std::fs::read(&entry).unwrap();
            let name = entry.file_name().unwrap().to_str().unwrap().to_owned();
            assert_eq!(otamesh_core::ChunkId::of(&bytes).to_hex(), name);
        }
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if !p.file_name().unwrap().to_string_lossy().starts_with('.') {
            out.push(p);
        }
    }
    out
}

#[test]
fn manifests_with_an_unknown_key_or_a_broken_signature_are_never_accepted_nor_forwarded() {
    let dir = TestDir::new();
    let key = publisher();
    let trust = write_trust(dir.path(), &key);
    let (first, third) = relay_pair(dir.path(), &trust);
    let data = noise(3, 300_000);
    let write = |name: &str, signed: &otamesh_core::SignedManifest| {
        let p = dir.path().join(name);
        std::fs::write(&p, signed.to_bytes()).unwrap();
        p
    };
    let unknown = otamesh_core::SecretKey::from_seed([7; 32]).sign_manifest(manifest_for(&data, "gw", 1));
    let mut broken = key.sign_manifest(manifest_for(&data, "gw", 2));
    broken.signatures[0].bytes.0[10] ^= 1;
    let good = key.sign_manifest(manifest_for(&data, "gw", 3));
    let announce = |file: &std::path::Path| {
        let out = std::process::Command::new(BIN)
            .args(["announce", "--manifest", file.to_str().unwrap(), "--peer", &first.addr()])
            .output()
            .unwrap();
        assert!(out.status.success(), "announce failed: {}", String::from_utf8_lossy(&out.stderr));
    };
    announce(&write("unknown.manifest", &unknown));
    announce(&write("broken.manifest", &broken));
    wait_for(Duration::from_secs(20), "the first node rejects both", || {
        first.metric("otamesh_gossip_messages_total{topic=\"releases\",result=\"rejected\"}") >= 2.0
    });
    // A valid manifest takes the same path and does reach the third node, so the
    // path works and the bad ones were stopped at the first.
    let good_id = good.manifest.release_id().to_string();
    wait_for(Duration::from_secs(30), "the good release reaches the third node", || {
        announce(&write("good.manifest", &good));
        std::thread::sleep(Duration::from_millis(500));
        third.status().is_some_and(|s| s["releases"].as_array().is_some_and(|r| !r.is_empty()))
    });
    for n in [&first, &third] {
        let s = n.status().unwrap();
        let ids: Vec<&str> =
            s["releases"].as_array().unwrap().iter().map(|r| r["release_id"].as_str().unwrap()).collect();
        assert_eq!(ids, vec![good_id.as_str()], "{}", n.name);
    }
    assert_eq!(third.metric("otamesh_gossip_messages_total{topic=\"releases\",result=\"rejected\"}"), 0.0);
}

#[test]
fn directives_pushed_through_a_peer_reach_the_mesh_and_forged_ones_are_never_forwarded() {
    let dir = TestDir::new();
    let prefix = |name: &str| dir.path().join(name).display().to_string();
    for name in ["publisher", "stranger"] {
        let (code, _, err) = otamesh(&["keygen", "--out", &prefix(name)]);
        assert_eq!(code, 0, "keygen: {err}");
    }
    let trust = dir.path().join("publisher.pub");
    let (first, third) = relay_pair(dir.path(), &trust);
    // Each directive is about its own release, so audit rows tell them apart.
    let (forged, good) = ("aa".repeat(32), "bb".repeat(32));
    let halt = |key: &str, release: &str| {
        let key = format!("{}.key", prefix(key));
        let (code, out, err) =
            otamesh(&["directive", "halt", "--key", &key, "--release", release, "--peer", &first.addr()]);
        assert_eq!(code, 0, "directive --peer failed: {err}");
        assert!(out.contains("pushed to 1 peer(s)"), "{out}");
    };
    let rejected = "otamesh_gossip_messages_total{topic=\"directives\",result=\"rejected\"}";
    let directive_rows = |node: &Node, release: &str| {
        audit_rows(&node.data).iter().filter(|r| r["event"] == "directive" && r["release"] == release).count()
    };
    // The forged one first: by the time the good one has reached the third node, the
    // forged one would have too, had the first forwarded it.
    halt("stranger", &forged);
    wait_for(Duration::from_secs(20), "the first node rejects the forged directive", || {
        first.metric(rejected) >= 1.0
    });
    halt("publisher", &good);
    wait_for(Duration::from_secs(30), "the good directive reaches the third node", || {
        directive_rows(&third, &good) == 1
    });
    for n in [&first, &third] {
        assert_eq!(directive_rows(n, &good), 1, "{}", n.name);
        let about_forged =
            audit_rows(&n.data).into_iter().filter(|r| r["release"] == forged.as_str()).count();
        assert_eq!(about_forged, 0, "{} audited the forged directive", n.name);
    }
    assert_eq!(third.metric(rejected), 0.0, "the forged directive reached the third node");
}

#[test]
fn a_node_killed_mid_transfer_does_not_fetch_its_verified_chunks_again() {
    let World { dir, key, trust, store, origin } = World::new();
    let data = noise(4, 8 * MIB);
    publish(&store, &key, &data, "gw", 1);
    let args = vec!["--origin".to_string(), origin.url.clone(), "--wan-rate".into(), "2000000".into()];
    let mut node = Node::start(dir.path(), "n", "s", &trust, &args);
    wait_for(Duration::from_secs(30), "a third of the release", || {
        node.progress().is_some_and(|(h, t)| h * 3 >= t && h < t)
    });
    node.kill9();
    let before: Vec<String> = walk(&node.data.join("store/chunks"))
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(!before.is_empty());
    // Restart without the rate limit.
    node.process.args.truncate(node.process.args.len() - 2);
    node.spawn();
    wait_for(Duration::from_secs(30), "the restarted node completes", || node.complete());
    for id in &before {
        let path = format!("chunks/{}/{id}", &id[..2]);
        assert_eq!(origin.served().requests_for(&path), 1, "chunk {id} was fetched again after the restart");
    }
    let total = node.progress().unwrap().1 as usize;
    assert!(before.len() < total);
}
