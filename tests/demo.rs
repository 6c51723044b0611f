//! `otamesh demo`, `serve`, `status`, `fleet` and `report` as a user runs them: the real
//! binary, real node processes on 127.0.0.1.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A raw HTTP/1.1 GET, so that nothing normalises the path: (status line, headers, body).
fn raw_get(addr: &str, path: &str) -> (String, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("a header block");
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let body = buf[split + 4..].to_vec();
    let (status, headers) = head.split_once("\r\n").unwrap_or((&head, ""));
    (status.to_owned(), headers.to_ascii_lowercase(), body)
}

/// Kills the child when dropped, so a failing assertion leaves nothing running.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn serve_sends_store_files_with_their_length_and_nothing_outside_the_store() {
    let dir = TestDir::new();
    let store = dir.path().join("store");
    let data = noise(9, 300_000);
    let (release, _) = publish(&store, &publisher(), &data, "gw", 1);
    std::fs::write(dir.path().join("secret"), "do not serve").unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(dir.path().join("secret"), store.join("escape")).unwrap();
    let mut child = Running(
        Command::new(BIN)
            .args(["serve", "--store", store.to_str().unwrap(), "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut url = String::new();
    BufReader::new(child.0.stdout.take().unwrap()).read_line(&mut url).unwrap();
    let addr = url.trim().strip_prefix("http://").expect("the URL on the first line").to_owned();

    let index = std::fs::read(store.join("index.json")).unwrap();
    let (status, headers, body) = raw_get(&addr, "/index.json");
    assert!(status.contains("200"), "{status}");
    assert!(headers.contains(&format!("content-length: {}", index.len())), "{headers}");
    assert_eq!(body, index);
    let manifest = format!("/manifests/{release}.manifest");
    let (status, _, body) = raw_get(&addr, &manifest);
    assert!(status.contains("200"), "{manifest}: {status}");
    assert_eq!(body, std::fs::read(store.join(&manifest[1..])).unwrap());

    for bad in [
        "/../secret",
        "/chunks/../../secret",
        "/%2e%2e/secret",
        "/..%2fsecret",
        "/escape",
        "/chunks",
        "/",
        "/missing.json",
    ] {
        let (status, _, body) = raw_get(&addr, bad);
        assert!(status.contains("404"), "{bad}: {status}");
        assert!(!String::from_utf8_lossy(&body).contains("do not serve"), "{bad} leaked the secret");
    }
    let (_, _, body) = raw_get(&addr, "/-/served");
    let served: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        served["bytes"],
        (index.len() + std::fs::metadata(store.join(&manifest[1..])).unwrap().len() as usize)
    );
    assert_eq!(served["not_found"], 8);
}

#[test]
fn serve_names_a_missing_store() {
    let dir = TestDir::new();
    let out = Command::new(BIN)
        .args(["serve", "--store", dir.path().join("nope").to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nope") && err.contains("not a readable directory"), "{err}");
}

#[test]
fn status_fleet_and_report_say_in_one_line_when_the_api_is_unreachable() {
    let api = format!("127.0.0.1:{}", free_port());
    let release = "ab".repeat(32);
    for args in [
        vec!["status", "--api", &api],
        vec!["fleet", "--api", &api],
        vec!["report", "--api", &api, "--release", &release],
        vec!["status", "--api", &api, "--json"],
    ] {
        let out = Command::new(BIN).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(&format!("cannot reach the node API at http://{api}")), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    let out = Command::new(BIN).args(["status", "--api", "localhost"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected HOST:PORT"));
}

#[test]
fn demo_refuses_a_directory_it_did_not_make() {
    let dir = TestDir::new();
    std::fs::write(dir.path().join("precious.txt"), "mine").unwrap();
    let out = Command::new(BIN).args(["demo", "--out", dir.path().to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an earlier demo's directory"));
    assert_eq!(std::fs::read_to_string(dir.path().join("precious.txt")).unwrap(), "mine");
}

/// The whole story on a small fleet; then, with the fleet kept running, the operator
/// commands against it; then Ctrl-C stops every node.
#[test]
fn demo_rolls_out_halts_a_bad_release_revokes_it_and_reports() {
    let dir = TestDir::new();
    let out_dir = dir.path().join("demo");
    let started = Instant::now();
    let mut demo = Running(
        Command::new(BIN)
            .args(["demo", "--out", out_dir.to_str().unwrap(), "--sites", "2", "--nodes", "3"])
            .args(["--size-mib", "2", "--wave-after", "5", "--keep-running"])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("demo.stderr")).unwrap())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(demo.0.stdout.take().unwrap()).lines();
    let mut transcript = String::new();
    loop {
        let Some(line) = lines.next() else {
            let stderr = std::fs::read_to_string(dir.path().join("demo.stderr")).unwrap_or_default();
            panic!("the demo ended before its report:\n{transcript}\nits stderr:\n{stderr}");
        };
        let line = line.unwrap();
        transcript.push_str(&line);
        transcript.push('\n');
        if line.contains("the fleet keeps running") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(240), "demo too slow:\n{transcript}");
    }
    eprintln!("{transcript}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["ok"], true, "{transcript}");
    assert!(transcript.contains("demo succeeded"), "{transcript}");
    let failed: Vec<&serde_json::Value> =
        report["checks"].as_array().unwrap().iter().filter(|c| c["ok"] != true).collect();
    assert!(failed.is_empty(), "{failed:?}");

    let good = &report["releases"][0];
    assert_eq!(good["version"], "1.0.0");
    assert!(good["converged_s"].as_f64().is_some());
    assert_eq!(good["outcomes"]["committed"], 6);
    assert!(good["waves"][1]["first_outcome_s"].as_f64().unwrap() >= 5.0, "wave 2 waited: {good}");
    let bytes = &good["bytes"];
    assert!(bytes["lan"].as_f64().unwrap() > 0.0, "{bytes}");

    let bad = &report["bad_release"];
    assert_eq!(report["releases"][1]["version"], "1.1.0");
    assert_eq!(bad["wave1_failing_site"], 1);
    assert_eq!(bad["rolled_back_by_health_check"].as_array().unwrap().len(), 1, "{bad}");
    assert!(bad["rolled_back_by_health_check"][0].as_str().unwrap().starts_with("site-b"), "{bad}");
    assert_eq!(bad["later_wave_installs"].as_array().unwrap().len(), 0, "{bad}");
    assert!(bad["all_back_after_s"].as_f64().is_some(), "{bad}");
    for rb in bad["rolled_back_by_revoke"].as_array().unwrap() {
        assert!(rb["after_s"].as_f64().is_some(), "{rb}");
    }
    for png in ["convergence.png", "rollback.png"] {
        let bytes = std::fs::read(out_dir.join(png)).unwrap();
        assert_eq!(&bytes[..4], b"\x89PNG", "{png}");
    }

    // The operator's commands against the running fleet.
    let apis: Vec<String> = report["fleet"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["api"].as_str().unwrap().trim_start_matches("http://").to_owned())
        .collect();
    let run = |args: &[&str]| {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let status = run(&["status", "--api", &apis[0]]);
    assert!(status.contains("active    1.0.0 (sequence 1"), "{status}");
    let fleet = run(&["fleet", "--api", &apis[1]]);
    assert!(fleet.contains("6 devices in 2 sites"), "{fleet}");
    assert!(fleet.contains("newest release running: 1.0.0"), "{fleet}");
    assert!(fleet.contains("behind the newest release: 0"), "{fleet}");
    let bad_id = report["releases"][1]["release_id"].as_str().unwrap();
    let text = run(&["report", "--api", &apis[2], "--release", &bad_id[..10]]);
    assert!(text.contains("1.1.0 (sequence 2)"), "{text}");
    assert!(text.contains("does not boot on the board revision of site-b"), "{text}");
    let json: serde_json::Value =
        serde_json::from_str(&run(&["report", "--api", &apis[2], "--release", bad_id, "--json"])).unwrap();
    assert_eq!(json["waves"].as_array().unwrap().len(), 2, "{json}");

    // Ctrl-C stops the demo and every node it started.
    interrupt(&demo.0);
    let deadline = Instant::now() + Duration::from_secs(15);
    let code = loop {
        if let Some(status) = demo.0.try_wait().unwrap() {
            break status.code();
        }
        assert!(Instant::now() < deadline, "the demo ignored SIGINT");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(code, Some(130));
    for api in &apis {
        assert!(TcpStream::connect(api).is_err(), "a node still answers at {api} after Ctrl-C");
    }
    assert!(no_process_uses(&out_dir), "a node process outlived the demo");
}

#[cfg(unix)]
fn interrupt(child: &Child) {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
}

/// No process has `dir` on its command line (Linux /proc; elsewhere assumed true).
fn no_process_uses(dir: &Path) -> bool {
    let needle = dir.display().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else { return true };
    !procs.flatten().any(|p| {
        std::fs::read(p.path().join("cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).replace('\0', " ").contains(&needle))
    })
}
