//! The device lifecycle and fleet feedback as a user sees them: real `otamesh node`
//! processes on 127.0.0.1, an origin that is a static HTTP server over a store, releases
//! published through the library, directives written into the store, and the node's
//! `/status`, `/fleet`, `/report` and `otamesh audit` as the only windows into it.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use otamesh_core::directive::{DEFAULT_LIFETIME, Directive, Order, SignedDirective};
use otamesh_core::gate::HealthGate;
use otamesh_core::rollout::{RolloutPolicy, Wave};
use otamesh_core::{DeviceId, ReleaseId, SecretKey, TrustRoot};
use serde_json::Value;

fn active_seq(n: &Node) -> Option<u64> {
    n.status()?["active"]["sequence"].as_u64()
}

fn state(n: &Node) -> String {
    n.status().and_then(|s| s["state"].as_str().map(str::to_owned)).unwrap_or_default()
}

fn device_id(n: &Node) -> DeviceId {
    let mut id = None;
    wait_for(Duration::from_secs(20), "the node's API", || {
        // Before the device is open, /status may carry an empty device_id.
        id = n.status().and_then(|s| s["device_id"].as_str().map(str::to_owned)).filter(|s| !s.is_empty());
        id.is_some()
    });
    id.unwrap().parse().unwrap()
}

/// The release's entry in the node's `/status` releases, if it knows it.
fn release_entry(n: &Node, release: ReleaseId) -> Option<Value> {
    let s = n.status()?;
    s["releases"].as_array()?.iter().find(|r| r["release_id"] == release.to_string()).cloned()
}

fn audit_has(n: &Node, event: &str, release: ReleaseId, detail_prefix: &str) -> bool {
    audit_rows(&n.data).iter().any(|r| {
        r["event"] == event
            && r["release"].as_str() == Some(release.to_string().as_str())
            && r["detail"].as_str().is_some_and(|d| d.starts_with(detail_prefix))
    })
}

fn verify_audit(data: &Path) -> (i32, String) {
    let (code, out, err) = otamesh(&["audit", "--data", data.to_str().unwrap(), "--verify"]);
    (code, format!("{out}{err}"))
}

/// Writes a signed directive into the origin store at `store`.
fn directive(store: &Path, key: &SecretKey, release: ReleaseId, order: Order, sequence: u64) {
    let now = otamesh_node::clock::now_ms();
    let d = Directive { release, order, sequence, issued_at: now, expires_at: now + DEFAULT_LIFETIME };
    let v = TrustRoot::single(key.public()).verify_directive(SignedDirective::sign(d, key), now).unwrap();
    otamesh_node::store::Store::create(store).unwrap().put_directive(&v).unwrap();
}

fn with_health(extra: &[String], check: &str) -> Vec<String> {
    let mut a = extra.to_vec();
    a.extend(["--health-check".into(), check.into(), "--hook-timeout".into(), "10".into()]);
    a
}

/// Two nodes; v1 commits on both; v2's health check fails on one node only: that node
/// goes back to v1 and stays there, the other commits v2. On the same pair: a replayed
/// manifest with a lower sequence is refused and audited, `/fleet` lists both, and the
/// audit log verifies until one row is edited by hand.
#[test]
fn a_failing_health_check_rolls_back_one_node_and_old_manifests_and_edited_audit_rows_are_caught() {
    let World { dir, key, trust, store, origin } = World::new();
    let extra = vec!["--origin".to_string(), origin.url.clone()];
    let good = Node::start(dir.path(), "good", "s", &trust, &with_health(&extra, "true"));
    let mut bad_args = with_health(&extra, "test \"$OTAMESH_SEQUENCE\" = 1");
    bad_args.extend(["--peer".into(), good.addr()]);
    let mut bad = Node::start(dir.path(), "bad", "s", &trust, &bad_args);
    let both = [&good, &bad];

    let (v1, _) = publish(&store, &key, &noise(11, 300_000), "gw", 1);
    wait_for(Duration::from_secs(40), "v1 commits on both", || {
        both.iter().all(|n| state(n) == "committed" && active_seq(n) == Some(1))
    });

    let (v2, _) = publish(&store, &key, &noise(12, 300_000), "gw", 2);
    wait_for(Duration::from_secs(40), "v2 commits on good, rolls back on bad", || {
        state(&good) == "committed" && active_seq(&good) == Some(2) && state(&bad) == "rolled_back"
    });
    // It stays on v1: no retry of a release that failed its health check.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let s = bad.status().unwrap();
        assert_eq!(s["active"]["sequence"], 1, "bad left v1: {s}");
        assert_eq!(s["active"]["release_id"], v1.to_string());
        assert_eq!(s["state"], "rolled_back", "{s}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(bad.metric("otamesh_rollbacks_total"), 1.0, "{}", bad.tail_log());
    assert!(audit_has(&bad, "transition", v2, ""), "no audit row for v2 on bad");
    let payload = std::fs::read(bad.data.join("slots/active/payload")).unwrap();
    assert_eq!(payload, noise(11, 300_000), "bad's active slot is not v1's payload");

    // /fleet on each node lists both with their active release.
    let ids: Vec<String> = both.iter().map(|n| device_id(n).to_string()).collect();
    let expect = [(ids[0].clone(), v2), (ids[1].clone(), v1)];
    for n in both {
        wait_for(Duration::from_secs(20), &format!("{}'s /fleet lists both nodes", n.name), || {
            let Some(f) = api_json(&n.api, "/fleet") else {
                return false;
            };
            let devices = f["devices"].as_array().cloned().unwrap_or_default();
            expect.iter().all(|(id, active)| {
                devices.iter().any(|d| d["device_id"] == *id && d["active"] == active.to_string())
            })
        });
    }

    // A manifest with a sequence not above the installed one: refused, audited.
    // The origin store refuses a second sequence 1, so it comes over gossip.
    let old_store = dir.path().join("old-origin");
    let (old, signed) = publish(&old_store, &key, &noise(13, 200_000), "gw", 1);
    let file = dir.path().join("old.manifest");
    std::fs::write(&file, signed.to_bytes()).unwrap();
    let (code, _, err) = otamesh(&["announce", "--manifest", file.to_str().unwrap(), "--peer", &good.addr()]);
    assert_eq!(code, 0, "announce: {err}");
    wait_for(Duration::from_secs(20), "both refuse the old-sequence manifest in the audit log", || {
        both.iter().all(|n| audit_has(n, "refused", old, ""))
    });
    for n in both {
        assert!(release_entry(n, old).is_none_or(|r| r["chunks_have"] == 0), "{}", n.name);
    }
    assert_eq!(active_seq(&good), Some(2));
    assert_eq!(active_seq(&bad), Some(1));

    // The audit log verifies; editing one row by hand is found and named.
    for n in both {
        let (code, text) = verify_audit(&n.data);
        assert_eq!(code, 0, "{}: {text}", n.name);
    }
    bad.kill9();
    let rows = audit_rows(&bad.data);
    assert!(rows.len() >= 4);
    let victim = rows[rows.len() / 2]["seq"].as_u64().unwrap();
    let db = bad.data.join("state.db");
    let py = format!(
        "import sqlite3; c = sqlite3.connect({:?}); c.execute(\"UPDATE audit SET detail = detail || ' (edited)' WHERE seq = {victim}\"); c.commit()",
        db.to_str().unwrap()
    );
    let st = std::process::Command::new("python3").args(["-c", &py]).status().unwrap();
    assert!(st.success());
    let (code, text) = verify_audit(&bad.data);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains(&format!("audit row {victim} ")), "does not name row {victim}: {text}");
}

/// A node killed (SIGKILL) while its install hook runs restarts into a consistent
/// state: the active slot still holds v1 whole, v2 installs on restart, the audit log
/// verifies.
#[test]
fn sigkill_during_install_leaves_the_active_slot_intact_and_the_audit_log_valid() {
    let World { dir, key, trust, store, origin } = World::new();
    let mut args = vec!["--origin".to_string(), origin.url.clone(), "--hook-timeout".into(), "60".into()];
    args.extend(["--install-hook".into(), "test \"$OTAMESH_SEQUENCE\" = 1 || sleep 30".into()]);
    let mut node = Node::start(dir.path(), "n", "s", &trust, &args);
    let d1 = noise(21, 500_000);
    let d2 = noise(22, 500_000);
    publish(&store, &key, &d1, "gw", 1);
    wait_for(Duration::from_secs(30), "v1 commits", || {
        state(&node) == "committed" && active_seq(&node) == Some(1)
    });
    let (v2, _) = publish(&store, &key, &d2, "gw", 2);
    // The device shows `installing` just before the hook runs, once the state is persisted.
    wait_for(Duration::from_secs(30), "v2 installing (hook sleeping)", || {
        release_entry(&node, v2).is_some_and(|r| r["state"] == "installing")
    });
    assert!(audit_has(&node, "transition", v2, "installing"), "shown before it was persisted");
    std::thread::sleep(Duration::from_millis(500));
    node.kill9();
    // Whatever the kill left, the active slot is v1, whole.
    assert_eq!(std::fs::read(node.data.join("slots/active/payload")).unwrap(), d1);
    let (code, text) = verify_audit(&node.data);
    assert_eq!(code, 0, "after the kill: {text}");
    // Restart without the sleeping hook: it installs v2 again and commits.
    let n = node.process.args.len();
    assert_eq!(node.process.args[n - 2], "--install-hook");
    node.process.args.truncate(n - 2);
    node.spawn();
    // Until its first status is published, /status carries an empty device_id.
    wait_for(Duration::from_secs(30), "the restarted node answers", || {
        node.status().is_some_and(|s| s["device_id"] != "")
    });
    let s = node.status().unwrap();
    assert!(s["active"]["sequence"] == 1 || s["active"]["sequence"] == 2, "active slot after restart: {s}");
    wait_for(Duration::from_secs(30), "v2 commits after the restart", || {
        state(&node) == "committed" && active_seq(&node) == Some(2)
    });
    let s = node.status().unwrap();
    assert_eq!(s["active"]["release_id"], v2.to_string());
    assert_eq!(s["previous"]["sequence"], 1, "{s}");
    assert_eq!(std::fs::read(node.data.join("slots/active/payload")).unwrap(), d2);
    let (code, text) = verify_audit(&node.data);
    assert_eq!(code, 0, "after the restart: {text}");
}

/// One fleet of six nodes in two sites, through four releases' worth of operations:
/// waves (25% now, 100% after a delay), a health gate that a release failing on every
/// node of site `a` breaches so later waves never install it, halt and a replayed older
/// resume (refused, audited), a revoke back to v1, and `/fleet` on every node.
#[test]
fn waves_gate_directives_and_fleet_view_on_a_six_node_fleet() {
    let World { dir, key, trust, store, origin } = World::new();
    let extra = vec!["--origin".to_string(), origin.url.clone()];
    let mut nodes: Vec<Node> = Vec::new();
    for (site, n) in [("a", 3), ("b", 3)] {
        for i in 0..n {
            let check = if site == "a" { "test \"$OTAMESH_SEQUENCE\" != 2" } else { "true" };
            let mut args = with_health(&extra, check);
            for earlier in &nodes {
                args.extend(["--peer".to_string(), earlier.addr()]);
            }
            nodes.push(Node::start(dir.path(), &format!("{site}{i}"), site, &trust, &args));
        }
    }
    let ids: Vec<DeviceId> = nodes.iter().map(device_id).collect();
    wait_for(Duration::from_secs(30), "every node has a peer", || {
        nodes.iter().all(|n| n.status().is_some_and(|s| s["peers"].as_u64().unwrap_or(0) >= 1))
    });

    // ---- waves: 25% at once, the rest after `delay` ----
    let delay = 8;
    let policy = RolloutPolicy {
        waves: vec![
            Wave { percent: 25.0, after_s: 0, require_success: None, require_reports: 0 },
            Wave { percent: 100.0, after_s: delay, require_success: None, require_reports: 0 },
        ],
        ..RolloutPolicy::default()
    };
    let d1 = noise(31, 300_000);
    let (m1, waves) = pick_manifest(&d1, 1, policy, &ids, |w| w.contains(&0) && w.contains(&1));
    let start = m1.created_at;
    let v1 = publish_manifest(&store, &key, &d1, m1);
    let second_wave_at = start + delay * 1000;
    eprintln!("v1 waves: {waves:?}");
    let mut committed_at: Vec<Option<u64>> = vec![None; nodes.len()];
    let deadline = Instant::now() + Duration::from_secs(40);
    while committed_at.iter().any(Option::is_none) {
        assert!(Instant::now() < deadline, "v1 not committed everywhere: {committed_at:?}");
        for (i, n) in nodes.iter().enumerate() {
            if committed_at[i].is_none() && active_seq(n) == Some(1) {
                committed_at[i] = Some(otamesh_node::clock::now_ms());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for (i, n) in nodes.iter().enumerate() {
        let at = committed_at[i].unwrap();
        if waves[i] == 0 {
            assert!(at < second_wave_at, "{} (first wave) committed only at +{} ms", n.name, at - start);
        } else {
            assert!(
                at >= second_wave_at,
                "{} (second wave) committed at +{} ms, before +{delay} s",
                n.name,
                at - start
            );
        }
    }

    // ---- gate: v2 fails on every node of site a; gate 0.2 over at least 4 reports ----
    let later = 10;
    let policy = RolloutPolicy {
        waves: vec![
            Wave { percent: 50.0, after_s: 0, require_success: None, require_reports: 0 },
            Wave { percent: 100.0, after_s: later, require_success: None, require_reports: 0 },
        ],
        gate: Some(HealthGate { max_failure_ratio: 0.2, min_reports: 4 }),
        ..RolloutPolicy::default()
    };
    let d2 = noise(32, 300_000);
    let (m2, waves) = pick_manifest(&d2, 2, policy, &ids, |w| {
        let first: Vec<usize> = (0..w.len()).filter(|&i| w[i] == 0).collect();
        first.len() >= 4 && first.len() < w.len() && first.iter().any(|&i| i < 3)
    });
    let start = m2.created_at;
    let v2 = publish_manifest(&store, &key, &d2, m2);
    eprintln!("v2 waves: {waves:?}");
    let first: Vec<usize> = (0..nodes.len()).filter(|&i| waves[i] == 0).collect();
    let rest: Vec<usize> = (0..nodes.len()).filter(|&i| waves[i] == 1).collect();
    // Site a's first-wave nodes fail and roll back. A first-wave node of site b may
    // commit v2, or stay on v1 when the gate trips before its turn (both are right).
    wait_for(Duration::from_secs(30), "site a's first-wave nodes roll back", || {
        first.iter().filter(|&&i| i < 3).all(|&i| state(&nodes[i]) == "rolled_back")
    });
    // Well past the second wave's start, nobody of it installed v2.
    let until = start + (later + 5) * 1000;
    while otamesh_node::clock::now_ms() < until {
        for &i in &rest {
            assert_eq!(active_seq(&nodes[i]), Some(1), "{} installed v2 despite the gate", nodes[i].name);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for &i in &rest {
        assert!(
            !audit_has(&nodes[i], "transition", v2, "installing"),
            "{} started installing v2",
            nodes[i].name
        );
    }
    // Who runs v2 now (a revoke must bring them back), and who tried it.
    let installed: Vec<usize> =
        (0..nodes.len()).filter(|&i| i < 3 && waves[i] == 0 || active_seq(&nodes[i]) == Some(2)).collect();
    eprintln!("v2 installed (or tried) on {installed:?}");
    for &i in &first {
        let st = state(&nodes[i]);
        assert!(
            ["committed", "rolled_back", "staged", "waiting", "fetching"].contains(&st.as_str()),
            "{}: {st}",
            nodes[i].name
        );
    }
    let report: Value = api_json(&nodes[0].api, &format!("/report?release={v2}")).unwrap();
    eprintln!("v2 report: {report}");
    let failed = first.iter().filter(|&&i| i < 3).count() as u64;
    let outcomes = &report["outcomes"];
    let bad = outcomes["failed"].as_u64().unwrap_or(0) + outcomes["rolled_back"].as_u64().unwrap_or(0);
    assert_eq!(bad, failed, "report outcomes: {report}");

    // ---- halt, then an older resume replayed over gossip: refused and audited ----
    directive(&store, &key, v2, Order::Halt, 2);
    wait_for(Duration::from_secs(20), "every node applies the halt", || {
        nodes.iter().all(|n| audit_has(n, "directive", v2, "Halt"))
    });
    // The replayer's own origin lists only the old resume; it gossips it to a0.
    let old_store = dir.path().join("replay-origin");
    directive(&old_store, &key, v2, Order::Resume, 1);
    let old_origin = serve(&old_store, None);
    let mut refused = false;
    for attempt in 0..5 {
        let args = vec!["--origin".to_string(), old_origin.url.clone(), "--peer".into(), nodes[0].addr()];
        let replayer = Node::start(dir.path(), &format!("replayer{attempt}"), "r", &trust, &args);
        let until = Instant::now() + Duration::from_secs(6);
        while Instant::now() < until && !refused {
            refused = audit_has(&nodes[0], "refused", v2, "directive:");
            std::thread::sleep(Duration::from_millis(200));
        }
        drop(replayer);
        if refused {
            break;
        }
    }
    assert!(refused, "a0 never refused the replayed resume:\n{}", nodes[0].tail_log());
    assert!(!audit_has(&nodes[0], "directive", v2, "Resume"), "a0 applied the old resume");

    // ---- revoke: everyone back on v1 ----
    directive(&store, &key, v2, Order::Revoke { to: v1 }, 3);
    wait_for(Duration::from_secs(30), "every node back on v1", || {
        nodes.iter().all(|n| n.status().is_some_and(|s| s["active"]["release_id"] == v1.to_string()))
    });
    for &i in &installed {
        let s = nodes[i].status().unwrap();
        assert_eq!(s["state"], "rolled_back", "{}: {s}", nodes[i].name);
    }
    for n in &nodes {
        let p = std::fs::read(n.data.join("slots/active/payload")).unwrap();
        assert!(p == d1, "{}: active payload is not v1", n.name);
    }

    // ---- /fleet on any node lists every node with its active release ----
    for n in &nodes {
        wait_for(Duration::from_secs(20), &format!("{}'s /fleet lists all six on v1", n.name), || {
            let Some(f) = api_json(&n.api, "/fleet") else {
                return false;
            };
            let devices = f["devices"].as_array().cloned().unwrap_or_default();
            ids.iter().all(|id| {
                devices.iter().any(|d| d["device_id"] == id.to_string() && d["active"] == v1.to_string())
            })
        });
    }
}

/// A node that joins late, when v1 and v2 are published and a signed revoke v2 -> v1 is
/// already in the store (it polls the origin's directives before its releases), ends on
/// v1 and never activates v2: the revoke heard first withdraws v2 before it is taken up.
#[test]
fn a_late_node_honours_a_revoke_heard_before_the_release() {
    let World { dir, key, trust, store, origin } = World::new();
    let d1 = noise(51, 200_000);
    let d2 = noise(52, 200_000);
    let (v1, _) = publish(&store, &key, &d1, "gw", 1);
    let (v2, _) = publish(&store, &key, &d2, "gw", 2);
    directive(&store, &key, v2, Order::Revoke { to: v1 }, 1);
    let args = vec!["--origin".to_string(), origin.url.clone()];
    let node = Node::start(dir.path(), "late", "s", &trust, &args);
    wait_for(Duration::from_secs(30), "the late node runs v1", || active_seq(&node) == Some(1));
    // A few more polls: v2 stays refused.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(active_seq(&node), Some(1), "{}", node.tail_log());
    assert!(!audit_has(&node, "transition", v2, "activated"), "v2 was activated");
    assert!(!audit_has(&node, "admitted", v2, ""), "v2 was taken up");
    assert!(audit_has(&node, "refused", v2, "refused"), "the refusal of v2 is audited");
}

/// Whether process `pid` exists and is not a zombie (a killed hook whose parent died
/// stays a zombie until init reaps it, which not every container's init does).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| s[i + 1..].split_whitespace().next() != Some("Z")))
        .unwrap_or(false)
}

/// `kill -9` of a node while its install hook sleeps, then a restart: the old hook
/// process is gone before the new install's hook starts.
#[test]
fn a_restarted_node_kills_the_hook_its_killed_run_left_before_installing_again() {
    let World { dir, key, trust, store, origin } = World::new();
    let marks = dir.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let m = marks.display();
    // Each run notes any earlier hook still alive (not a zombie), then its own pid; the
    // first sleeps.
    let hook = format!(
        "for p in $(cat {m}/pids 2>/dev/null); do s=$(cut -d' ' -f3 /proc/$p/stat 2>/dev/null); \
         [ -n \"$s\" ] && [ \"$s\" != Z ] && echo $p >> {m}/overlap; done; \
         echo $$ >> {m}/pids; test -e {m}/second || sleep 60"
    );
    let args = vec![
        "--origin".to_string(),
        origin.url.clone(),
        "--hook-timeout".into(),
        "120".into(),
        "--install-hook".into(),
        hook,
    ];
    let mut node = Node::start(dir.path(), "n", "s", &trust, &args);
    let (v1, _) = publish(&store, &key, &noise(31, 300_000), "gw", 1);
    wait_for(Duration::from_secs(30), "the install hook sleeping", || {
        release_entry(&node, v1).is_some_and(|r| r["state"] == "installing")
            && std::fs::read_to_string(marks.join("pids")).is_ok_and(|p| p.lines().count() == 1)
    });
    let first: i32 = std::fs::read_to_string(marks.join("pids")).unwrap().trim().parse().unwrap();
    assert!(alive(first), "the first hook runs");
    node.kill9();
    assert!(alive(first), "kill -9 of the node leaves its hook running");
    std::fs::write(marks.join("second"), b"").unwrap();
    node.spawn();
    wait_for(Duration::from_secs(40), "v1 commits after the restart", || {
        state(&node) == "committed" && active_seq(&node) == Some(1)
    });
    assert!(!alive(first), "the old hook outlived the restart");
    let pids = std::fs::read_to_string(marks.join("pids")).unwrap();
    assert_eq!(pids.lines().count(), 2, "one hook per run: {pids}");
    assert!(!marks.join("overlap").exists(), "the old hook was alive when the new one started");
}

/// A node on sequence 2 whose state.db is deleted restarts on sequence 2, refuses
/// sequence 1, and `otamesh audit --verify` reports the lost history.
#[test]
fn a_deleted_state_db_does_not_reset_the_anti_rollback_floor() {
    let World { dir, key, trust, store, origin } = World::new();
    let mut node = Node::start(dir.path(), "n", "s", &trust, &["--origin".into(), origin.url.clone()]);
    let (v1, _) = publish(&store, &key, &noise(41, 300_000), "gw", 1);
    wait_for(Duration::from_secs(30), "v1 commits", || active_seq(&node) == Some(1));
    let (v2, _) = publish(&store, &key, &noise(42, 300_000), "gw", 2);
    wait_for(Duration::from_secs(30), "v2 commits", || {
        state(&node) == "committed" && active_seq(&node) == Some(2)
    });
    node.kill9();
    for f in ["state.db", "state.db-wal", "state.db-shm"] {
        let _ = std::fs::remove_file(node.data.join(f));
    }
    node.spawn();
    wait_for(Duration::from_secs(30), "the restarted node answers", || {
        node.status().is_some_and(|s| s["device_id"] != "")
    });
    // It sees v1 again (saved manifest, origin index) and refuses it: 2 is its floor.
    wait_for(Duration::from_secs(30), "v1 refused after the restart", || audit_has(&node, "refused", v1, ""));
    let s = node.status().unwrap();
    assert_eq!(s["active"]["release_id"], v2.to_string(), "{s}");
    assert_eq!(active_seq(&node), Some(2));
    let (code, text) = verify_audit(&node.data);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("history before row 1 was lost") && text.contains("missing"), "{text}");
}

/// A release published with `--expires-in 20s` whose only wave opens after 40 s is never
/// fetched nor installed: the device re-checks expiry when its wave comes.
#[test]
fn a_release_that_expires_before_its_wave_opens_is_never_fetched_nor_installed() {
    let World { dir, key: _, trust, store, origin } = World::new();
    let d = dir.path();
    std::fs::write(d.join("fw.bin"), noise(61, 200_000)).unwrap();
    std::fs::write(d.join("rollout.toml"), "[[waves]]\npercent = 100\nafter_s = 40\n").unwrap();
    let args = vec!["--origin".to_string(), origin.url.clone()];
    let node = Node::start(d, "n", "s", &trust, &args);
    let key = trust.with_extension("key");
    let (code, out, err) = otamesh(&[
        "publish",
        "--key",
        key.to_str().unwrap(),
        "--artifact",
        d.join("fw.bin").to_str().unwrap(),
        "--class",
        "gw",
        "--version",
        "1.0",
        "--sequence",
        "1",
        "--kind",
        "firmware",
        "--rollout",
        d.join("rollout.toml").to_str().unwrap(),
        "--expires-in",
        "20s",
        "--store",
        store.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let release: ReleaseId = out.split_whitespace().next().unwrap().parse().unwrap();
    wait_for(Duration::from_secs(20), "the node hears of the release", || {
        release_entry(&node, release).is_some()
    });
    // Past the wave's opening (40 s after publication) and the expiry (20 s).
    wait_for(Duration::from_secs(60), "the device gives the expired release up", || {
        node.status().is_some_and(|s| s["state"] == "rolled_back" && s["reason"] == "expired")
    });
    let entry = release_entry(&node, release).unwrap();
    assert_eq!(entry["chunks_have"], 0, "never fetched: {entry}");
    assert!(node.status().unwrap()["active"].is_null(), "never installed");
    assert!(!audit_has(&node, "transition", release, "fetching"), "never fetched");
    assert!(!audit_has(&node, "transition", release, "installing"), "never installed");
}

/// A data directory on a small filesystem, unmounted (lazily) when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    /// Mounts a tmpfs of `bytes` at `dir`; `None` where that is not allowed (not root).
    fn mount(dir: &Path, bytes: u64) -> Option<Self> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Self(dir.to_path_buf()))
    }

    fn free(&self) -> u64 {
        let out =
            std::process::Command::new("df").args(["-B1", "--output=avail"]).arg(&self.0).output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().nth(1).unwrap().trim().parse().unwrap()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The data directory fills up while the release is being installed: the install is
/// deferred, not failed (nothing reported, the release not refused later), and once
/// space is freed the release installs. Needs root (a small tmpfs); skipped elsewhere.
#[test]
fn an_install_that_finds_the_disk_full_is_retried_once_space_returns() {
    let World { dir, key, trust, store, origin } = World::new();
    let d = dir.path();
    let Some(disk) = SmallDisk::mount(&d.join("n"), 8 << 20) else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let args = vec!["--origin".to_string(), origin.url.clone()];
    let mut node = Node::start(d, "n", "s", &trust, &args);
    let payload = noise(71, 1_500_000);
    // Room for the chunks in the store, not for the assembled payload beside them.
    let filler = d.join("n/filler");
    let keep = payload.len() as u64 + payload.len() as u64 / 2;
    std::fs::write(&filler, vec![0u8; disk.free().saturating_sub(keep) as usize]).unwrap();
    let (release, _) = publish(&store, &key, &payload, "gw", 1);
    wait_for(Duration::from_secs(40), "the install deferred for lack of space", || {
        audit_has(&node, "deferred", release, "install deferred")
    });
    assert_eq!(active_seq(&node), None, "nothing installed yet");
    assert!(!audit_has(&node, "transition", release, "rolled_back"), "the release was not failed");
    std::fs::remove_file(&filler).unwrap();
    wait_for(Duration::from_secs(60), "the release installs once space is back", || {
        active_seq(&node) == Some(1)
    });
    let chunks_from_origin = node.metric("otamesh_chunk_bytes_total{source=\"wan\"}");
    node.kill9();
    assert!(
        chunks_from_origin > 0.0 && chunks_from_origin <= payload.len() as f64,
        "the chunks came once from the origin and were not fetched again: {chunks_from_origin} bytes"
    );
    drop(node);
    drop(disk);
}
