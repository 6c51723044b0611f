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
    assert!(r.stderr.contains("which the trust root does not list"), "{}", r.stderr);
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

// ---- co-signing, roots of trust, expiry (issue "keys that can be rotated and shared") ----

/// A temp dir with key pairs `a`, `b`, `c`, `d`, a trust file `trust.toml` of 2 of
/// {a, b, c}, and an artifact `fw.bin`.
fn keyring() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for k in ["a", "b", "c", "d"] {
        assert_eq!(otamesh(dir.path(), &["keygen", "--out", k]).code, 0);
    }
    let public = |k: &str| fs::read_to_string(dir.path().join(format!("{k}.pub"))).unwrap().trim().to_owned();
    let keys = ["a", "b", "c"].map(|k| format!("\"{}\"", public(k))).join(", ");
    fs::write(dir.path().join("trust.toml"), format!("threshold = 2\nkeys = [{keys}]\n")).unwrap();
    fs::write(dir.path().join("fw.bin"), noise(7, 300_000)).unwrap();
    dir
}

/// Publishes `fw.bin` at `sequence` with `keys`; returns the manifest path.
fn publish_with(dir: &Path, sequence: &str, keys: &[&str]) -> String {
    let mut args = vec!["publish", "--artifact", "fw.bin", "--class", "gw", "--version", sequence];
    args.extend(["--sequence", sequence, "--kind", "firmware", "--store", "store"]);
    for k in keys {
        args.extend(["--key", k]);
    }
    let r = otamesh(dir, &args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    format!("store/manifests/{}.manifest", r.stdout.lines().next().unwrap())
}

fn verify_against(dir: &Path, trust: &str, manifest: &str) -> Run {
    otamesh(dir, &["verify", "--trust", trust, "--manifest", manifest])
}

/// Asserts a refused command: non-zero exit, one line naming `file` and containing
/// `says`, and every file in `dir` as it was.
fn assert_refused(dir: &Path, args: &[&str], file: &str, says: &str) {
    let before = listing(dir);
    let r = otamesh(dir, args);
    assert_ne!(r.code, 0, "{args:?} succeeded");
    assert_eq!(r.stderr.trim().lines().count(), 1, "{args:?}: one line: {}", r.stderr);
    assert!(r.stderr.contains(file), "{args:?} names {file}: {}", r.stderr);
    assert!(r.stderr.contains(says), "{args:?} says {says:?}: {}", r.stderr);
    assert_eq!(listing(dir), before, "{args:?} changed files");
}

/// Every file under `dir` with its contents.
fn listing(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() { stack.push(p) } else { out.push((p.clone(), fs::read(&p).unwrap())) }
        }
    }
    out.sort();
    out
}

#[test]
fn a_threshold_of_two_is_met_by_cosigning_or_by_two_keys_at_once() {
    let dir = keyring();
    let d = dir.path();
    let m1 = publish_with(d, "1", &["a.key"]);
    let r = verify_against(d, "trust.toml", &m1);
    assert_eq!(r.code, 1, "A alone: {}", r.stderr);
    assert!(r.stderr.contains("1 valid signature(s) from trusted keys, 2 required"), "{}", r.stderr);
    let r = otamesh(d, &["sign", "--key", "b.key", &m1]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = verify_against(d, "trust.toml", &m1);
    assert_eq!(r.code, 0, "A then B: {}", r.stderr);
    let r = otamesh(d, &["inspect", &m1, "--trust", "trust.toml", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        (v["trust"]["met"].as_bool(), v["trust"]["valid"].as_array().map(Vec::len)),
        (Some(true), Some(2))
    );
    assert_eq!(v["signatures"].as_array().map(Vec::len), Some(2));
    // The same key again is refused and the file is left alone.
    assert_refused(d, &["sign", "--key", "b.key", &m1], &m1, "already signed");

    let m2 = publish_with(d, "2", &["a.key", "c.key"]);
    assert_eq!(verify_against(d, "trust.toml", &m2).code, 0);
}

#[test]
fn a_co_signed_enrolment_is_accepted_by_a_threshold_two_node() {
    let dir = keyring();
    let d = dir.path();
    let r = otamesh(d, &["enroll", "--key", "a.key", "--data", "dev", "--site", "s1", "--class", "gw"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let api = format!("127.0.0.1:{port}");
    let node_args =
        ["node", "--data", "dev", "--site", "s1", "--class", "gw", "--trust", "trust.toml", "--api", &api];
    let r = otamesh(d, &node_args);
    assert_eq!(r.code, 1, "an enrolment by A alone: {}", r.stderr);
    assert!(r.stderr.contains("not signed by the trust root"), "{}", r.stderr);
    assert_eq!(otamesh(d, &["sign", "--key", "c.key", "dev/enrolment"]).code, 0);
    let mut node = Command::new(env!("CARGO_BIN_EXE_otamesh"))
        .args(node_args)
        .current_dir(d)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let up = loop {
        if let Some(status) = node.try_wait().unwrap() {
            panic!("the node refused its co-signed enrolment and exited with {status}");
        }
        if std::net::TcpStream::connect(&api).is_ok() || std::time::Instant::now() > deadline {
            break std::net::TcpStream::connect(&api).is_ok();
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let _ = node.kill();
    let _ = node.wait();
    assert!(up, "the node started with its co-signed enrolment");
}

#[test]
fn root_v2_replaces_a_key_and_a_root_signed_by_one_key_is_refused() {
    let dir = keyring();
    let d = dir.path();
    let new_root = |version: &str, keys: [&str; 3], out: &str| {
        let mut args = vec!["root", "new", "--version", version, "--threshold", "2", "--out", out];
        for k in keys {
            args.extend(["--pub", k]);
        }
        let r = otamesh(d, &args);
        assert_eq!(r.code, 0, "{}", r.stderr);
    };
    new_root("1", ["a.pub", "b.pub", "c.pub"], "v1.root");
    for k in ["a.key", "b.key"] {
        assert_eq!(otamesh(d, &["sign", "--key", k, "v1.root"]).code, 0);
    }
    let r = otamesh(d, &["root", "publish", "--store", "store", "--trust", "trust.toml", "v1.root"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // v2 replaces A by D: signed by B and C (2 of v1) and B and D (2 of v2).
    new_root("2", ["b.pub", "c.pub", "d.pub"], "v2.root");
    for k in ["b.key", "c.key", "d.key"] {
        assert_eq!(otamesh(d, &["sign", "--key", k, "v2.root"]).code, 0);
    }
    let r = otamesh(d, &["root", "publish", "--store", "store", "v2.root"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(d.join("store/roots/2.root").is_file());
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(d.join("store/index.json")).unwrap()).unwrap();
    let versions: Vec<_> = index["roots"].as_array().unwrap().iter().map(|e| e["version"].as_u64()).collect();
    assert_eq!(versions, vec![Some(1), Some(2)]);

    let by_a_b = publish_with(d, "1", &["a.key", "b.key"]);
    let by_b_d = publish_with(d, "2", &["b.key", "d.key"]);
    assert_eq!(verify_against(d, "v1.root", &by_a_b).code, 0, "v1 trusts A and B");
    assert_eq!(verify_against(d, "v2.root", &by_a_b).code, 1, "v2 no longer trusts A");
    assert_eq!(verify_against(d, "v2.root", &by_b_d).code, 0, "v2 trusts B and D");

    // v3 signed by one key only: refused, the store unchanged.
    new_root("3", ["b.pub", "c.pub", "d.pub"], "v3.root");
    assert_eq!(otamesh(d, &["sign", "--key", "d.key", "v3.root"]).code, 0);
    assert_refused(d, &["root", "publish", "--store", "store", "v3.root"], "v3.root", "1 valid signature(s)");
}

#[test]
fn bad_root_and_sign_inputs_name_the_file_and_change_nothing() {
    let dir = keyring();
    let d = dir.path();
    let root = |version: &str, expires: &str, out: &str, keys: &[&str]| {
        let mut args = vec!["root", "new", "--version", version, "--threshold", "2", "--expires-in", expires];
        args.extend(["--pub", "a.pub", "--pub", "b.pub", "--pub", "c.pub", "--out", out]);
        for k in keys {
            args.extend(["--key", k]);
        }
        let r = otamesh(d, &args);
        assert_eq!(r.code, 0, "{}", r.stderr);
    };
    root("1", "30d", "v1.root", &["a.key", "b.key"]);
    assert_eq!(otamesh(d, &["root", "publish", "--store", "store", "v1.root"]).code, 0);
    // A version gap.
    root("3", "30d", "v3.root", &["a.key", "b.key"]);
    assert_refused(
        d,
        &["root", "publish", "--store", "store", "v3.root"],
        "v3.root",
        "publish and adopt version 2 first",
    );
    // Too few signatures.
    root("2", "30d", "thin.root", &["a.key"]);
    assert_refused(d, &["root", "publish", "--store", "store", "thin.root"], "thin.root", "otamesh sign");
    // Expired.
    root("2", "1s", "stale.root", &["a.key", "b.key"]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_refused(d, &["root", "publish", "--store", "store", "stale.root"], "stale.root", "expired");
    // Key files of the wrong kind.
    assert_refused(d, &["sign", "--key", "a.pub", "v3.root"], "a.pub", "pass the secret file");
    let r = otamesh(
        d,
        &["root", "new", "--version", "2", "--threshold", "1", "--pub", "a.key", "--out", "x.root"],
    );
    assert!(r.code != 0 && r.stderr.contains("a.key") && r.stderr.contains("public"), "{}", r.stderr);
    assert!(!d.join("x.root").exists());
    // `sign` on a file that is not signed metadata.
    assert_refused(d, &["sign", "--key", "a.key", "trust.toml"], "trust.toml", "not a signed manifest");
    // An unreachable threshold.
    let r = otamesh(
        d,
        &["root", "new", "--version", "2", "--threshold", "3", "--pub", "a.pub", "--out", "y.root"],
    );
    assert!(r.code != 0 && r.stderr.contains("threshold 3"), "{}", r.stderr);
    assert!(!d.join("y.root").exists());
}

#[test]
fn directives_carry_their_expiry_and_can_be_cosigned_before_pushing() {
    let dir = keyring();
    let d = dir.path();
    let release = "ab".repeat(32);
    let r = otamesh(
        d,
        &[
            "directive",
            "halt",
            "--key",
            "a.key",
            "--release",
            &release,
            "--expires-in",
            "90s",
            "--out",
            "halt.directive",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(otamesh(d, &["sign", "--key", "b.key", "halt.directive"]).code, 0);
    let r = otamesh(d, &["inspect", "halt.directive", "--trust", "trust.toml", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["trust"]["met"], true);
    let (issued, expires) = (v["issued_at"].as_u64().unwrap(), v["expires_at"].as_u64().unwrap());
    assert_eq!(expires - issued, 90_000);
    let r = otamesh(
        d,
        &["directive", "halt", "--key", "a.key", "--release", &release, "--expires-in", "soon", "--out", "x"],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("90s, 12h, 30d"), "{}", r.stderr);
}
