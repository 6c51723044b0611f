//! Fleet feedback from the mesh as an attacker or a broken device sends it: reports and
//! directives pushed into real `otamesh node` processes over gossip.

mod common;

use std::time::Duration;

use common::*;
use otamesh_core::enrolment::{Enrolment, SignedEnrolment};
use otamesh_core::report::{Outcome, Report, SignedReport};
use otamesh_core::{DeviceId, ReleaseId, SecretKey};
use otamesh_node::announce::push_blocking;
use otamesh_node::wire::{RELEASES_TOPIC, REPORTS_TOPIC};
use serde_json::Value;

fn push(node: &Node, topic: &str, messages: Vec<Vec<u8>>) {
    let peer = node.addr().parse().unwrap();
    push_blocking(topic, messages, &[peer], Duration::from_secs(20)).unwrap();
}

fn refused(node: &Node, reason: &str) -> f64 {
    node.metric(&format!("otamesh_feedback_refused_total{{topic=\"reports\",reason=\"{reason}\"}}"))
}

fn fleet_ids(node: &Node) -> Vec<String> {
    let f: Value = api_json(&node.api, "/fleet").unwrap();
    f["devices"].as_array().unwrap().iter().map(|d| d["device_id"].as_str().unwrap().to_owned()).collect()
}

/// A report by `device` (class `gw`) about `release`, enrolled by `enroller` at site `s`.
fn report(device: &SecretKey, enroller: &SecretKey, release: ReleaseId, sequence: u64) -> SignedReport {
    report_of_class("gw", device, enroller, release, sequence)
}

fn report_of_class(
    class: &str,
    device: &SecretKey,
    enroller: &SecretKey,
    release: ReleaseId,
    sequence: u64,
) -> SignedReport {
    let r = Report {
        device_key: device.public().to_bytes(),
        site: "s".into(),
        class: class.into(),
        release,
        outcome: Outcome::Failed { reason: "health check exited with 1".into() },
        active: None,
        sequence,
        sent_at: otamesh_node::clock::now_ms(),
    };
    let e = Enrolment { device_key: r.device_key, site: "s".into(), class: class.into(), issued_at: 1 };
    SignedReport::sign(r, device, Some(SignedEnrolment::sign(e, enroller)))
}

/// The first node hears every bad report; the third hears only what the first forwards.
/// Reports by a stranger's key, forged ones, garbage, one for a release nobody knows, an
/// older one replayed and a flood from one enrolled device: each is counted under its
/// reason on the first, none reaches the third, and only the enrolled device is in
/// either node's fleet view.
#[test]
fn bad_reports_are_counted_by_reason_and_never_forwarded() {
    let dir = TestDir::new();
    let key = publisher();
    let trust = write_trust(dir.path(), &key);
    let (first, third) = relay_pair(dir.path(), &trust);
    let data = noise(5, 200_000);
    let manifest = key.sign_manifest(manifest_for(&data, "gw", 1));
    let release = manifest.manifest.release_id();
    push(&first, RELEASES_TOPIC, vec![manifest.to_bytes()]);
    wait_for(Duration::from_secs(20), "both nodes know the release", || {
        [&first, &third]
            .iter()
            .all(|n| n.status().is_some_and(|s| s["releases"].as_array().is_some_and(|r| !r.is_empty())))
    });

    let ghost = SecretKey::from_seed([5; 32]); // enrolled, never runs a node
    let stranger = SecretKey::from_seed([6; 32]); // enrolled by nobody but itself
    let mut forged = report(&ghost, &key, release, 2);
    forged.signature = report(&stranger, &key, release, 2).signature;
    // One push (one fresh peer) each: gossipsub ignores a peer after three rejections.
    for bad in [
        report(&stranger, &stranger, release, 1).to_bytes(),
        forged.to_bytes(),
        b"not a report at all".to_vec(),
        report(&ghost, &key, ReleaseId::from_bytes([9; 32]), 1).to_bytes(),
    ] {
        push(&first, REPORTS_TOPIC, vec![bad]);
    }
    wait_for(Duration::from_secs(20), "the first node refuses the four", || {
        ["not_enrolled", "forged", "malformed", "unknown_release"].iter().all(|r| refused(&first, r) == 1.0)
    });
    // The ghost floods: 20 fresh reports at once, then an older one again.
    push(&first, REPORTS_TOPIC, (10..30).map(|seq| report(&ghost, &key, release, seq).to_bytes()).collect());
    push(&first, REPORTS_TOPIC, vec![report(&ghost, &key, release, 5).to_bytes()]);
    wait_for(Duration::from_secs(20), "the flood and the replay are counted", || {
        refused(&first, "replayed") == 1.0 && refused(&first, "flood") >= 10.0
    });
    // What the first took (the ghost's first reports) does reach the third, so the path
    // works and the rest was stopped at the first.
    let ghost_id = DeviceId::of_public_key(&ghost.public().to_bytes()).to_string();
    wait_for(Duration::from_secs(20), "the ghost's accepted reports reach the third", || {
        fleet_ids(&third).contains(&ghost_id)
    });
    for n in [&first, &third] {
        assert_eq!(fleet_ids(n), vec![ghost_id.clone()], "{} lists someone else", n.name);
    }
    // An enrolled device of another class, on a release these nodes do not run: no
    // gate here judges it, but it is in the inventory everywhere.
    let camera = SecretKey::from_seed([8; 32]);
    push(
        &first,
        REPORTS_TOPIC,
        vec![report_of_class("cam", &camera, &key, ReleaseId::from_bytes([7; 32]), 1).to_bytes()],
    );
    let camera_id = DeviceId::of_public_key(&camera.public().to_bytes()).to_string();
    wait_for(Duration::from_secs(20), "both nodes list the camera", || {
        [&first, &third].iter().all(|n| fleet_ids(n).contains(&camera_id))
    });
    // (Not `replayed`: gossip keeps no order, so the third may get the ghost's accepted
    // reports out of order and drop the older ones itself.)
    for reason in ["not_enrolled", "forged", "malformed", "unknown_release", "flood"] {
        assert_eq!(refused(&third, reason), 0.0, "the first forwarded a {reason} report");
    }
    assert!(first.status().is_some(), "the first node is still up");

    // A peer that keeps sending forged reports is soon not listened to: of a burst of
    // 30, the first node validates (and counts) only the first few.
    let before = refused(&first, "forged");
    let burst = (0..30u64)
        .map(|n| {
            let mut r = report(&ghost, &key, release, 100 + n);
            r.signature = forged.signature;
            r.to_bytes()
        })
        .collect();
    push(&first, REPORTS_TOPIC, burst);
    wait_for(Duration::from_secs(20), "some of the burst counted", || refused(&first, "forged") > before);
    std::thread::sleep(Duration::from_secs(2));
    let counted = refused(&first, "forged") - before;
    eprintln!("forged reports of the burst validated before the sender was ignored: {counted}");
    assert!(counted < 30.0, "all 30 forged reports were validated: the sender was never ignored");
}
