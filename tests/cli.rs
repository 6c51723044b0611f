//! The release CLI as a user drives it: keygen, publish, verify, inspect, and every bad
//! input of the Foundation issue, each with its exit code and a one-line message.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use otamesh_core::SignedManifest;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn otamesh(dir: &Path, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_otamesh")).args(args).current_dir(dir).output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Deterministic incompressible bytes.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A temp dir with a key pair `pub1` and a published 4 MiB release (sequence 1).
struct Fixture {
    dir: tempfile::TempDir,
    release: String,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(otamesh(dir.path(), &["keygen", "--out", "pub1"]).code, 0);
        fs::write(dir.path().join("fw1.bin"), noise(1, 4 << 20)).unwrap();
        let r = publish(dir.path(), "fw1.bin", "1", &[]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let release = r.stdout.lines().next().unwrap().to_owned();
        Self { dir, release }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn manifest(&self) -> PathBuf {
        self.path().join(format!("store/manifests/{}.manifest", self.release))
    }

    fn verify(&self, extra: &[&str]) -> Run {
        let m = self.manifest().display().to_string();
        let mut args = vec!["verify", "--trust", "pub1.pub", "--manifest", &m];
        args.extend_from_slice(extra);
        otamesh(self.path(), &args)
    }

    /// Every file of the store with its size, to prove a failed command changed nothing.
    fn store_listing(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let mut stack = vec![self.path().join("store")];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                } else {
                    out.push((e.path().display().to_string(), e.metadata().unwrap().len()));
                }
            }
        }
        out.sort();
        out
    }
}

fn publish(dir: &Path, artifact: &str, sequence: &str, extra: &[&str]) -> Run {
    let mut args = vec![
        "publish",
        "--key",
        "pub1.key",
        "--artifact",
        artifact,
        "--class",
        "gw",
        "--version",
        "1.0",
        "--sequence",
        sequence,
        "--kind",
        "firmware",
        "--store",
        "store",
    ];
    args.extend_from_slice(extra);
    otamesh(dir, &args)
}

#[test]
fn publish_then_verify_passes_with_the_store() {
    let f = Fixture::new();
    let r = f.verify(&["--store", "store"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains(&f.release));
}

#[test]
fn delta_publish_reuses_most_chunks() {
    let f = Fixture::new();
    let mut v2 = noise(1, 4 << 20);
    let tail = v2.split_off(2 << 20);
    v2.extend(noise(2, 256 << 10));
    v2.extend(tail);
    fs::write(f.path().join("fw2.bin"), v2).unwrap();
    let r = publish(f.path(), "fw2.bin", "2", &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // "chunks: 81 (7 new, 91.4% already in the store)"
    let line = r.stdout.lines().find(|l| l.starts_with("chunks:")).unwrap();
    let pct: f64 = line
        .split('(')
        .nth(1)
        .unwrap()
        .split(", ")
        .nth(1)
        .unwrap()
        .split('%')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(pct >= 90.0, "{line}");
}

#[test]
fn flipped_byte_in_a_chunk_fails_naming_the_chunk() {
    let f = Fixture::new();
    let signed = SignedManifest::from_bytes(&fs::read(f.manifest()).unwrap()).unwrap();
    let victim = signed.manifest.payload.chunks[3].id;
    let path = f.path().join("store").join(otamesh_node::store::Store::chunk_rel_path(victim));
    let mut bytes = fs::read(&path).unwrap();
    bytes[10] ^= 0x01;
    fs::write(&path, bytes).unwrap();
    let r = f.verify(&["--store", "store"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains(&victim.to_hex()), "{}", r.stderr);
    assert_eq!(r.stderr.trim().lines().count(), 1, "one line: {}", r.stderr);
}

#[test]
fn missing_chunk_fails_naming_the_chunk() {
    let f = Fixture::new();
    let signed = SignedManifest::from_bytes(&fs::read(f.manifest()).unwrap()).unwrap();
    let victim = signed.manifest.payload.chunks[0].id;
    fs::remove_file(f.path().join("store").join(otamesh_node::store::Store::chunk_rel_path(victim))).unwrap();
    let r = f.verify(&["--store", "store"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("missing") && r.stderr.contains(&victim.to_hex()), "{}", r.stderr);
}

#[test]
fn wrong_key_is_invalid() {
    let f = Fixture::new();
    assert_eq!(otamesh(f.path(), &["keygen", "--out", "other"]).code, 0);
    let m = f.manifest().display().to_string();
    let r = otamesh(f.path(), &["verify", "--trust", "other.pub", "--manifest", &m]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("0 valid signature(s)"), "{}", r.stderr);
}

#[test]
fn truncated_and_bit_flipped_manifests_are_invalid() {
    let f = Fixture::new();
    let original = fs::read(f.manifest()).unwrap();
    for (what, bytes) in [
        ("truncated", original[..original.len() / 2].to_vec()),
        ("bit-flipped", {
            let mut b = original.clone();
            // Inside the version string: still decodes, so the signature must catch it.
            let i = b.windows(3).position(|w| w == b"1.0").unwrap();
            b[i] ^= 0x02;
            b
        }),
    ] {
        fs::write(f.manifest(), &bytes).unwrap();
        let r = f.verify(&[]);
        assert_eq!(r.code, 1, "{what}: {}", r.stderr);
        assert!(
            r.stderr.contains(&f.manifest().display().to_string()),
            "{what} names the file: {}",
            r.stderr
        );
    }
}

#[test]
fn too_few_signatures_for_the_threshold() {
    let f = Fixture::new();
    assert_eq!(otamesh(f.path(), &["keygen", "--out", "second"]).code, 0);
    let a = fs::read_to_string(f.path().join("pub1.pub")).unwrap();
    let b = fs::read_to_string(f.path().join("second.pub")).unwrap();
    fs::write(
        f.path().join("trust.toml"),
        format!("threshold = 2\nkeys = [\"{}\", \"{}\"]\n", a.trim(), b.trim()),
    )
    .unwrap();
    let m = f.manifest().display().to_string();
    let r = otamesh(f.path(), &["verify", "--trust", "trust.toml", "--manifest", &m]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("1 valid signature(s) from trusted keys, 2 required"), "{}", r.stderr);
}

#[test]
fn expired_manifest_is_invalid() {
    let f = Fixture::new();
    let key = otamesh_node::keys::read_secret_key(&f.path().join("pub1.key")).unwrap();
    let mut m = SignedManifest::from_bytes(&fs::read(f.manifest()).unwrap()).unwrap().manifest;
    m.expires_at = Some(m.created_at + 1);
    let path = f.path().join("expired.manifest");
    fs::write(&path, key.sign_manifest(m).to_bytes()).unwrap();
    let r = otamesh(f.path(), &["verify", "--trust", "pub1.pub", "--manifest", "expired.manifest"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("expired"), "{}", r.stderr);
}

#[test]
fn manifest_for_another_class_is_invalid() {
    let f = Fixture::new();
    let r = f.verify(&["--class", "camera"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("camera"), "{}", r.stderr);
}

#[test]
fn usage_errors_exit_2() {
    let f = Fixture::new();
    assert_eq!(otamesh(f.path(), &["verify", "--manifest", "x"]).code, 2);
    let m = f.manifest().display().to_string();
    let r = otamesh(f.path(), &["verify", "--trust", "missing.pub", "--manifest", &m]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("missing.pub"), "{}", r.stderr);
}

#[test]
fn directive_needs_a_peer_or_a_store_and_says_which_peer_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(otamesh(dir.path(), &["keygen", "--out", "pub1"]).code, 0);
    let release = "ab".repeat(32);
    let with = |extra: &[&str]| {
        let mut args = vec!["directive", "halt", "--key", "pub1.key", "--release", &release];
        args.extend_from_slice(extra);
        otamesh(dir.path(), &args)
    };
    let r = with(&[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--peer") && r.stderr.contains("--store"), "{}", r.stderr);
    let r = with(&["--peer", "not-a-multiaddr"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("--peer \"not-a-multiaddr\""), "{}", r.stderr);
    assert_eq!(r.stderr.trim().lines().count(), 1, "one line: {}", r.stderr);
    // Nothing listens there: the push fails at once, on one line naming the topic.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let r = with(&["--peer", &format!("/ip4/127.0.0.1/tcp/{port}"), "--timeout", "5"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("cannot connect to any --peer to push on otamesh/directives/1"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stderr.trim().lines().count(), 1, "one line: {}", r.stderr);
}

#[test]
fn bad_publish_inputs_leave_the_store_as_it_was() {
    let f = Fixture::new();
    let before = f.store_listing();
    fs::write(f.path().join("fw3.bin"), noise(3, 1 << 20)).unwrap();
    fs::write(f.path().join("bad.toml"), "[[waves]]\npercent = 50\nspeed = 3\n").unwrap();
    fs::write(f.path().join("short.toml"), "[[waves]]\npercent = 50\n").unwrap();
    fs::write(f.path().join("garbage.key"), "not a key").unwrap();
    let cases: &[(&[&str], &str, &str)] = &[
        (&["--rollout", "bad.toml"], "3", "speed"),
        (&["--rollout", "short.toml"], "3", "100"),
        (&["--rollout", "missing.toml"], "3", "missing.toml"),
        (&[], "1", "sequence 1"),
    ];
    for (extra, seq, expect) in cases {
        let r = publish(f.path(), "fw3.bin", seq, extra);
        assert_ne!(r.code, 0, "{extra:?}");
        assert!(r.stderr.contains(expect), "{extra:?}: {}", r.stderr);
        assert_eq!(r.stderr.trim().lines().count(), 1, "one line: {}", r.stderr);
    }
    let r = publish(f.path(), "missing.bin", "3", &[]);
    assert!(r.code != 0 && r.stderr.contains("missing.bin"), "{}", r.stderr);
    let mut args = vec!["publish", "--key", "garbage.key", "--artifact", "fw3.bin", "--class", "gw"];
    args.extend(["--version", "3", "--sequence", "3", "--kind", "firmware", "--store", "store"]);
    let r = otamesh(f.path(), &args);
    assert!(r.code != 0 && r.stderr.contains("garbage.key"), "{}", r.stderr);
    assert_eq!(f.store_listing(), before);
}

#[test]
fn inspect_json_shows_the_release() {
    let f = Fixture::new();
    let m = f.manifest().display().to_string();
    let r = otamesh(f.path(), &["inspect", &m, "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["release_id"], f.release.as_str());
    assert_eq!(v["sequence"], 1);
    assert_eq!(v["class"], "gw");
    let r = otamesh(f.path(), &["inspect", "pub1.pub"]);
    assert_eq!(r.code, 1);
}

#[test]
fn enroll_signs_the_device_and_a_node_refuses_an_enrolment_for_another_site() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(otamesh(dir.path(), &["keygen", "--out", "pub1"]).code, 0);
    assert_eq!(otamesh(dir.path(), &["keygen", "--out", "other"]).code, 0);
    let enroll = |site: &str| {
        otamesh(
            dir.path(),
            &["enroll", "--key", "pub1.key", "--data", "dev", "--site", site, "--class", "gw"],
        )
    };
    let r = enroll("s1");
    assert_eq!(r.code, 0, "{}", r.stderr);
    let id = r.stdout.trim();
    assert_eq!(id.len(), 64, "prints the device id: {id}");
    assert!(dir.path().join("dev/enrolment").is_file() && dir.path().join("dev/identity.key").is_file());
    // Enrolling again keeps the identity: the same device id.
    assert_eq!(enroll("s1").stdout.trim(), id);
    let r = otamesh(dir.path(), &["inspect", "dev/enrolment", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        (v["type"].as_str(), v["device_id"].as_str(), v["site"].as_str()),
        (Some("enrolment"), Some(id), Some("s1"))
    );

    let r = enroll("bad site");
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("--site") && r.stderr.lines().count() == 1, "{}", r.stderr);

    let node = |site: &str, trust: &str| {
        otamesh(
            dir.path(),
            &[
                "node",
                "--data",
                "dev",
                "--site",
                site,
                "--class",
                "gw",
                "--trust",
                trust,
                "--api",
                "127.0.0.1:0",
            ],
        )
    };
    let r = node("s2", "pub1.pub");
    assert_eq!(r.code, 1, "{}", r.stderr);
    let last = r.stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("enrolment") && last.contains("\"s1\"") && last.contains("otamesh enroll"),
        "{last}"
    );
    let r = node("s1", "other.pub");
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.lines().last().unwrap_or_default().contains("not signed by the trust root"),
        "{}",
        r.stderr
    );
}

#[test]
fn keygen_refuses_to_overwrite() {
    let f = Fixture::new();
    let r = otamesh(f.path(), &["keygen", "--out", "pub1"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("already exists"), "{}", r.stderr);
}

#[test]
fn sim_sweep_bad_input_exits_1_with_one_line_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/canary-detection.toml");
    let scenario = scenario.to_str().unwrap();
    // (arguments, words of the message)
    let cases: &[(&[&str], &[&str])] = &[
        (&["sim", "sweep", scenario, "--out", "o", "--shard", "4/4"], &["--shard 4/4", "out of range"]),
        (
            &["sim", "sweep", scenario, "--out", "o", "--grid", "network.speed=1,2"],
            &["network.speed", "unknown field"],
        ),
        (&["sim", "sweep", scenario, "--out", "o", "--grid", "network.mode="], &["network.mode", "empty"]),
        (&["sim", "sweep", "merge", "nowhere", "--out", "o"], &["nowhere/shard.json", "cannot read"]),
    ];
    for (args, words) in cases {
        let r = otamesh(dir.path(), args);
        assert_eq!(r.code, 1, "{args:?}: {}", r.stderr);
        assert_eq!(r.stderr.trim_end().lines().count(), 1, "{args:?}: one line: {}", r.stderr);
        for word in *words {
            assert!(r.stderr.contains(word), "{args:?}: {} lacks {word}", r.stderr);
        }
        assert!(!dir.path().join("o").exists(), "{args:?}: nothing written");
    }
}
