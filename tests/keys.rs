//! Keys as a fleet lives with them: a real `otamesh node` process that starts from a
//! root of trust, adopts the next root from its origin while running, verifies
//! releases only against the newest root, refuses a root signed by too few keys, and
//! still trusts the newest root after a restart.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use otamesh_core::root::{ROOT_FORMAT, Root, SignedRoot, VerifiedRoot};
use otamesh_core::trust::Domain;
use otamesh_core::{ReleaseId, SecretKey, TrustRoot};
use otamesh_node::store::{Index, Store};

fn key(n: u8) -> SecretKey {
    SecretKey::from_seed([n; 32])
}

/// A root of `version`, threshold 2, over keys `ids`, signed by `by`.
fn root(version: u64, ids: &[u8], by: &[u8]) -> SignedRoot {
    let root = Root {
        format: ROOT_FORMAT,
        version,
        threshold: 2,
        keys: ids.iter().map(|&i| key(i).public().to_bytes()).collect(),
        expires_at: otamesh_node::clock::now_ms() + 86_400_000,
    };
    let body = root.canonical_bytes();
    SignedRoot { signatures: by.iter().map(|&i| key(i).sign(Domain::Root, &body)).collect(), root }
}

/// Publishes `data` at `sequence` into `store`, signed by the keys `by`.
fn publish_by(store: &Path, data: &[u8], sequence: u64, by: &[u8]) -> ReleaseId {
    let s = Store::create(store).unwrap();
    let m = manifest_for(data, "gw", sequence);
    let mut off = 0;
    for c in &m.payload.chunks {
        let bytes = data[off..off + c.len as usize].to_vec();
        off += c.len as usize;
        s.put_chunk(&otamesh_core::chunking::VerifiedChunk::new(c.id, bytes).unwrap()).unwrap();
    }
    let signatures = by.iter().map(|&i| key(i).manifest_signature(&m)).collect();
    let signers = TrustRoot::new(by.iter().map(|&i| key(i).public()), by.len()).unwrap();
    let signed = otamesh_core::SignedManifest { manifest: m, signatures };
    let verified = signers.verify_manifest(signed, otamesh_node::clock::now_ms()).unwrap();
    s.put_manifest(&verified).unwrap();
    verified.id()
}

/// Enrols the node whose data directory is `data`, co-signed by B and C (key files in
/// `d`), who stay in root 2: an enrolment signed by a replaced key would stop counting
/// under v2 (docs/keys.md).
fn enroll_by_b_and_c(d: &Path, data: &Path) {
    let key = |k: &str| d.join(k).to_str().unwrap().to_owned();
    let (b, c) = (key("b.key"), key("c.key"));
    let data = data.to_str().unwrap();
    let args = ["enroll", "--key", &b, "--key", &c, "--data", data, "--site", "s", "--class", "gw"];
    let (code, out, err) = otamesh(&args);
    assert_eq!(code, 0, "{out}{err}");
}

fn active_seq(n: &Node) -> Option<u64> {
    n.status()?["active"]["sequence"].as_u64()
}

#[test]
fn a_running_node_adopts_root_v2_and_trusts_only_its_keys_after() {
    let dir = TestDir::new();
    let d = dir.path();
    for (name, n) in [("a", 1), ("b", 2), ("c", 3), ("d", 4)] {
        otamesh_node::keys::write_keypair(&d.join(name), &key(n)).unwrap();
    }
    // Root v1: 2 of {A, B, C}, what the device is provisioned with.
    let v1 = root(1, &[1, 2, 3], &[1, 2]);
    let trust = d.join("v1.root");
    std::fs::write(&trust, v1.to_bytes()).unwrap();
    let store = d.join("origin");
    Store::create(&store).unwrap();
    let origin = serve(&store, None);
    let data = d.join("n1");
    enroll_by_b_and_c(d, &data);
    let mut node = Node::start(d, "n1", "s", &trust, &["--origin".into(), origin.url.clone()]);
    wait_for(Duration::from_secs(20), "root version 1 in use", || node.metric("otamesh_root_version") == 1.0);

    // Root v2 replaces A by D, signed by B, C (2 of v1) and B, D (2 of v2).
    let v2 = VerifiedRoot::anchor(v1.clone())
        .unwrap()
        .next(root(2, &[2, 3, 4], &[2, 3, 4]), otamesh_node::clock::now_ms())
        .unwrap();
    Store::create(&store).unwrap().put_root(&v2).unwrap();
    // The node polls every 0.5 s: two polls are a second; the deadline only bounds a hang.
    wait_for(Duration::from_secs(20), "root version 2 adopted", || {
        node.metric("otamesh_root_version") == 2.0
    });
    assert!(data.join("roots/2.root").is_file(), "the adopted root is saved");

    // Under v2, A + B is one valid signature; B + D is two.
    let by_a_b = publish_by(&store, &noise(1, 200_000), 1, &[1, 2]);
    let by_b_d = publish_by(&store, &noise(2, 200_000), 2, &[2, 4]);
    wait_for(Duration::from_secs(60), "the B + D release installed", || active_seq(&node) == Some(2));
    let known: Vec<String> = node.status().unwrap()["releases"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["release_id"].as_str().map(str::to_owned))
        .collect();
    assert!(known.contains(&by_b_d.to_string()));
    assert!(!known.contains(&by_a_b.to_string()), "the A + B release was taken: {known:?}");

    // A v3 signed by D alone is refused and counted; the node stays on v2.
    let v3 = root(3, &[2, 3, 4], &[4]);
    std::fs::write(store.join("roots/3.root"), v3.to_bytes()).unwrap();
    let index_path = store.join("index.json");
    let mut index: Index = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    index.roots.push(otamesh_node::store::RootEntry { version: 3, path: "roots/3.root".into() });
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
    wait_for(Duration::from_secs(20), "root v3 refused", || {
        node.metric("otamesh_roots_refused_total") >= 1.0
    });
    assert_eq!(node.metric("otamesh_root_version"), 2.0);

    // A restart from the same --trust v1.root lands on v2, not back on v1.
    node.kill9();
    node.spawn();
    wait_for(Duration::from_secs(30), "root version 2 after restart", || {
        node.metric("otamesh_root_version") == 2.0
    });
    assert_eq!(active_seq(&node), Some(2));
    drop(node);
    drop(origin);
}

/// Roots travel on gossip too: a node with no origin, connected only to a node that
/// has one, adopts root v2 from its peer (which passes it on once it adopted it).
#[test]
fn a_node_without_an_origin_adopts_the_next_root_from_its_peers() {
    let dir = TestDir::new();
    let d = dir.path();
    let v1 = root(1, &[1, 2, 3], &[1, 2]);
    let trust = d.join("v1.root");
    std::fs::write(&trust, v1.to_bytes()).unwrap();
    let store = d.join("origin");
    Store::create(&store).unwrap();
    let origin = serve(&store, None);
    for (k, n) in [("a", 1), ("b", 2), ("c", 3), ("d", 4)] {
        otamesh_node::keys::write_keypair(&d.join(k), &key(n)).unwrap();
    }
    for name in ["near", "far"] {
        enroll_by_b_and_c(d, &d.join(name));
    }
    let near = Node::start(d, "near", "s", &trust, &["--origin".into(), origin.url.clone()]);
    let far = Node::start(d, "far", "s", &trust, &["--peer".into(), near.addr()]);
    wait_for(Duration::from_secs(20), "both on root 1", || {
        near.metric("otamesh_root_version") == 1.0 && far.metric("otamesh_root_version") == 1.0
    });
    let v2 = VerifiedRoot::anchor(v1.clone())
        .unwrap()
        .next(root(2, &[2, 3, 4], &[2, 3, 4]), otamesh_node::clock::now_ms())
        .unwrap();
    Store::create(&store).unwrap().put_root(&v2).unwrap();
    wait_for(Duration::from_secs(30), "the node without an origin adopts root 2 from its peer", || {
        far.metric("otamesh_root_version") == 2.0
    });
    assert!(d.join("far/roots/2.root").is_file(), "the adopted root is saved");
}
