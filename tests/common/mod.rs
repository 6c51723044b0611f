//! Harness for the integration tests: a counting static HTTP origin, real `otamesh`
//! node processes on 127.0.0.1, release publishing through the library, and `/status`
//! polling with deadlines.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use otamesh_core::chunking::{ChunkerConfig, VerifiedChunk, chunk};
use otamesh_core::manifest::{FORMAT_VERSION, Manifest, Payload, SignedManifest, UpdateKind};
use otamesh_core::rollout::RolloutPolicy;
use otamesh_core::{ChunkId, ReleaseId, SecretKey, TrustRoot};
use otamesh_node::store::Store;

pub const BIN: &str = env!("CARGO_BIN_EXE_otamesh");

/// Deterministic pseudo-random bytes (xorshift), so tests need no RNG crate.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn publisher() -> SecretKey {
    SecretKey::from_seed([42; 32])
}

/// Enrols the node whose data directory is `data` at `site` (class `gw`) with
/// `otamesh enroll`, signing with the publisher key file `key`.
pub fn enroll(key: &Path, data: &Path, site: &str) {
    let (code, out, err) = otamesh(&[
        "enroll",
        "--key",
        key.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--site",
        site,
        "--class",
        "gw",
    ]);
    assert_eq!(code, 0, "otamesh enroll: {out}{err}");
}

/// Writes the publisher's key pair as `publisher.key` and `publisher.pub` in `dir`;
/// returns the `.pub` (what `--trust` takes). [`Node::start`] enrols nodes with the
/// `.key` beside it.
pub fn write_trust(dir: &Path, key: &SecretKey) -> PathBuf {
    otamesh_node::keys::write_keypair(&dir.join("publisher"), key).unwrap().1
}

/// A manifest for `data` (chunks not stored).
pub fn manifest_for(data: &[u8], class: &str, sequence: u64) -> Manifest {
    let chunks = chunk(data, ChunkerConfig::default()).unwrap();
    Manifest {
        format: FORMAT_VERSION,
        vendor: "acme".into(),
        product: "gw".into(),
        class: class.into(),
        sequence,
        version: format!("1.0.{sequence}"),
        kind: UpdateKind::Firmware,
        payload: Payload { size: data.len() as u64, digest: *ChunkId::of(data).as_bytes(), chunks },
        precursor: None,
        created_at: otamesh_node::clock::now_ms(),
        expires_at: None,
        rollout: RolloutPolicy::default(),
    }
}

/// Publishes `data` into the store at `dir` as `otamesh publish` would; returns the
/// release id and the signed manifest.
pub fn publish(
    dir: &Path,
    key: &SecretKey,
    data: &[u8],
    class: &str,
    sequence: u64,
) -> (ReleaseId, SignedManifest) {
    let store = Store::create(dir).unwrap();
    let m = manifest_for(data, class, sequence);
    let mut off = 0;
    for c in &m.payload.chunks {
        let bytes = data[off..off + c.len as usize].to_vec();
        off += c.len as usize;
        store.put_chunk(&VerifiedChunk::new(c.id, bytes).unwrap()).unwrap();
    }
    let signed = key.sign_manifest(m);
    let verified = TrustRoot::single(key.public())
        .verify_manifest(signed.clone(), otamesh_node::clock::now_ms())
        .unwrap();
    store.put_manifest(&verified).unwrap();
    (verified.id(), signed)
}

/// What most node tests start from: a scratch directory, the publisher's key and trust
/// file, and an origin serving the release store `store` (empty until published to).
/// Destructure it in this field order, so the origin stops before the directory goes.
pub struct World {
    pub dir: TestDir,
    pub key: SecretKey,
    pub trust: PathBuf,
    pub store: PathBuf,
    pub origin: Origin,
}

impl World {
    pub fn new() -> Self {
        Self::with_origin("127.0.0.1:0", None)
    }

    /// The origin listens on `addr`; `rate` limits its egress in bytes per second.
    pub fn with_origin(addr: &str, rate: Option<u64>) -> Self {
        let dir = TestDir::new();
        let key = publisher();
        let trust = write_trust(dir.path(), &key);
        let store = dir.path().join("origin");
        Store::create(&store).unwrap();
        let origin = Origin::start_on(addr, &store, rate);
        Self { dir, key, trust, store, origin }
    }
}

/// A scratch directory, kept (and its path printed) when `OTAMESH_KEEP` is set.
pub struct TestDir(Option<tempfile::TempDir>, PathBuf);

impl TestDir {
    pub fn new() -> Self {
        let t = tempfile::tempdir().unwrap();
        if std::env::var_os("OTAMESH_KEEP").is_some() {
            let p = t.keep();
            eprintln!("keeping test dir {}", p.display());
            return Self(None, p);
        }
        let p = t.path().to_owned();
        Self(Some(t), p)
    }

    pub fn path(&self) -> &Path {
        &self.1
    }
}

/// A free TCP port on 127.0.0.1 (racy in theory, fine on a test machine).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A static HTTP server over a directory that counts what it serves.
pub struct Origin {
    pub url: String,
    pub bytes_served: Arc<AtomicU64>,
    pub requests: Arc<Mutex<BTreeMap<String, u32>>>,
    stop: Arc<AtomicBool>,
}

impl Origin {
    /// Serves `root` on 127.0.0.1; `rate` limits total egress in bytes per second.
    pub fn start(root: &Path, rate: Option<u64>) -> Self {
        Self::start_on("127.0.0.1:0", root, rate)
    }

    /// Serves `root` on `addr`.
    pub fn start_on(addr: &str, root: &Path, rate: Option<u64>) -> Self {
        let listener = TcpListener::bind(addr).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let bytes_served = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let bucket = Arc::new(Mutex::new(Instant::now()));
        let (root, served, reqs, stop2) =
            (root.to_owned(), bytes_served.clone(), requests.clone(), stop.clone());
        listener.set_nonblocking(true).unwrap();
        thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (root, served, reqs, bucket) =
                            (root.clone(), served.clone(), reqs.clone(), bucket.clone());
                        thread::spawn(move || {
                            let _ = serve_one(stream, &root, &served, &reqs, rate, &bucket);
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self { url, bytes_served, requests, stop }
    }

    pub fn served(&self) -> u64 {
        self.bytes_served.load(Ordering::Relaxed)
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve_one(
    stream: TcpStream,
    root: &Path,
    served: &AtomicU64,
    reqs: &Mutex<BTreeMap<String, u32>>,
    rate: Option<u64>,
    bucket: &Mutex<Instant>,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut stream = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
                break;
            }
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/').to_owned();
        if path.contains("..") {
            stream.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")?;
            continue;
        }
        *reqs.lock().unwrap().entry(path.clone()).or_default() += 1;
        let body = match std::fs::read(root.join(&path)) {
            Ok(b) => b,
            Err(_) => {
                stream.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")?;
                continue;
            }
        };
        stream.write_all(format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).as_bytes())?;
        for piece in body.chunks(16 << 10) {
            if let Some(rate) = rate {
                let until = {
                    let mut next = bucket.lock().unwrap();
                    let start = (*next).max(Instant::now());
                    *next = start + Duration::from_secs_f64(piece.len() as f64 / rate as f64);
                    *next
                };
                if let Some(d) = until.checked_duration_since(Instant::now()) {
                    thread::sleep(d);
                }
            }
            stream.write_all(piece)?;
            served.fetch_add(piece.len() as u64, Ordering::Relaxed);
        }
    }
}

/// One `otamesh node` process.
pub struct Node {
    pub name: String,
    pub data: PathBuf,
    /// The address it listens on (127.0.0.1, or its network namespace's address).
    pub host: String,
    pub port: u16,
    pub api: String,
    pub args: Vec<String>,
    pub log: PathBuf,
    /// What the node command runs under (`ip netns exec NS`), if anything.
    wrapper: Vec<String>,
    child: Option<Child>,
}

impl Node {
    pub fn addr(&self) -> String {
        format!("/ip4/{}/tcp/{}", self.host, self.port)
    }

    /// Starts a node on 127.0.0.1 and waits until its API answers; `extra` are more
    /// flags (`--peer`, `--origin`, ...). The libp2p port is chosen by the OS; a taken
    /// API port (another process got it first) is retried with a new one.
    pub fn start(dir: &Path, name: &str, site: &str, trust: &Path, extra: &[String]) -> Self {
        for _ in 0..5 {
            let api = format!("127.0.0.1:{}", free_port());
            let mut args = vec!["--no-mdns".to_string()];
            args.extend_from_slice(extra);
            if let Some(node) = Self::launch(dir, name, site, trust, "127.0.0.1", 0, &api, &args, &[]) {
                return node;
            }
        }
        panic!("node {name} did not start; see {}", dir.join(format!("{name}.log")).display());
    }

    /// Starts a node inside the network namespace `netns`, listening on `host` (port
    /// 4700, API on 4780), with mDNS on.
    pub fn start_in_netns(
        netns: &str,
        host: &str,
        dir: &Path,
        name: &str,
        site: &str,
        trust: &Path,
        extra: &[String],
    ) -> Self {
        let wrapper = ["ip", "netns", "exec", netns].map(String::from);
        Self::launch(dir, name, site, trust, host, 4700, &format!("{host}:4780"), extra, &wrapper)
            .unwrap_or_else(|| {
                panic!("node {name} did not start; see {}", dir.join(format!("{name}.log")).display())
            })
    }

    /// Enrols (once) and starts a node; `None` if the process exited before its API
    /// answered.
    #[allow(clippy::too_many_arguments)]
    fn launch(
        dir: &Path,
        name: &str,
        site: &str,
        trust: &Path,
        host: &str,
        port: u16,
        api: &str,
        extra: &[String],
        wrapper: &[String],
    ) -> Option<Self> {
        let data = dir.join(name);
        if !data.join("enrolment").exists() {
            enroll(&trust.with_extension("key"), &data, site);
        }
        let mut args: Vec<String> = vec![
            "node".into(),
            "--data".into(),
            data.display().to_string(),
            "--site".into(),
            site.into(),
            "--class".into(),
            "gw".into(),
            "--listen".into(),
            format!("/ip4/{host}/tcp/{port}"),
            "--api".into(),
            api.into(),
            "--trust".into(),
            trust.display().to_string(),
            "--poll-interval".into(),
            "0.5".into(),
        ];
        args.extend(extra.iter().cloned());
        let mut node = Self {
            name: name.into(),
            data,
            host: host.into(),
            port: 0,
            api: api.into(),
            args,
            log: dir.join(format!("{name}.log")),
            wrapper: wrapper.to_vec(),
            child: None,
        };
        node.spawn();
        node.wait_up().then_some(node)
    }

    /// Waits for the API and learns the libp2p port; false if the process exited.
    fn wait_up(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return false;
            }
            if let Some(s) = self.status() {
                let port = s["listen"]
                    .as_array()
                    .and_then(|a| a.first())
                    .and_then(|a| a.as_str())
                    .and_then(|a| a.rsplit('/').next())
                    .and_then(|p| p.parse().ok());
                if let Some(port) = port {
                    self.port = port;
                    return true;
                }
            }
            thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut command = match self.wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let child = command
            .args(&self.args)
            .env("RUST_LOG", "info,otamesh_node=debug,libp2p_gossipsub=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub fn status(&self) -> Option<serde_json::Value> {
        let body = http_get(&self.api, "/status")?;
        serde_json::from_str(&body).ok()
    }

    pub fn metric(&self, name: &str) -> f64 {
        let Some(text) = http_get(&self.api, "/metrics") else { return 0.0 };
        metric_sum(&text, name)
    }

    /// (chunks_have, chunks_total) of the first release, if any.
    pub fn progress(&self) -> Option<(u64, u64)> {
        let s = self.status()?;
        let r = s["releases"].as_array()?.first()?.clone();
        Some((r["chunks_have"].as_u64()?, r["chunks_total"].as_u64()?))
    }

    pub fn complete(&self) -> bool {
        self.progress().is_some_and(|(h, t)| h == t && t > 0)
    }

    pub fn tail_log(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Two nodes of site `s`: `first` hears everything pushed at it, `third` is peered only
/// with `first`, so it hears only what `first` forwards. Returns once they are connected.
pub fn relay_pair(dir: &Path, trust: &Path) -> (Node, Node) {
    let first = Node::start(dir, "first", "s", trust, &[]);
    let third = Node::start(dir, "third", "s", trust, &["--peer".into(), first.addr()]);
    wait_for(Duration::from_secs(20), "first and third connected", || {
        third.status().is_some_and(|s| s["peers"].as_u64() == Some(1))
    });
    (first, third)
}

/// Sums every sample of `name` (all label sets) in Prometheus text.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b' ') | Some(b'{')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A plain HTTP/1.1 GET on loopback; `None` if nothing answers.
pub fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    Some(body.to_owned())
}

/// Polls `cond` every 100 ms until it holds or `limit` passes; panics with `what`.
pub fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

/// Publishes `data` into the store at `dir` under a caller-built manifest `m` (for a
/// rollout policy or a chosen `created_at`); returns the release id.
pub fn publish_manifest(dir: &Path, key: &SecretKey, data: &[u8], m: Manifest) -> ReleaseId {
    let store = Store::create(dir).unwrap();
    let mut off = 0;
    for c in &m.payload.chunks {
        let bytes = data[off..off + c.len as usize].to_vec();
        off += c.len as usize;
        store.put_chunk(&VerifiedChunk::new(c.id, bytes).unwrap()).unwrap();
    }
    let verified = TrustRoot::single(key.public())
        .verify_manifest(key.sign_manifest(m), otamesh_node::clock::now_ms())
        .unwrap();
    store.put_manifest(&verified).unwrap();
    verified.id()
}

/// Runs `otamesh ARGS`; returns (exit code, stdout, stderr).
pub fn otamesh(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The audit rows of a node's data dir, via `otamesh audit --json`.
pub fn audit_rows(data: &Path) -> Vec<serde_json::Value> {
    let (code, out, err) = otamesh(&["audit", "--data", data.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "otamesh audit failed: {err}");
    serde_json::from_str::<serde_json::Value>(&out).unwrap().as_array().cloned().unwrap_or_default()
}
