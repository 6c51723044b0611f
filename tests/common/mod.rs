//! Harness for the integration tests, on the fleet harness (`otamesh-fleet`): its
//! origin, its node processes and its publishing, with blocking waits and API reads
//! (through the node's own API client) as tests want them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use otamesh_core::manifest::{Manifest, SignedManifest, UpdateKind};
use otamesh_core::rollout::{RolloutPolicy, position};
use otamesh_core::{DeviceId, ReleaseId, SecretKey};
pub use otamesh_fleet::Origin;
use otamesh_fleet::process::{self, NodeArgs, NodeProcess};
use otamesh_fleet::release::{self, Describe};
use otamesh_node::client::Client;
use otamesh_node::store::Store;

pub const BIN: &str = env!("CARGO_BIN_EXE_otamesh");

pub use otamesh_fleet::release::noise;

pub fn publisher() -> SecretKey {
    SecretKey::from_seed([42; 32])
}

/// Enrols the node whose data directory is `data` at `site` (class `gw`), signed by
/// the publisher key file `key`, through the library as `otamesh enroll` does.
pub fn enroll(key: &Path, data: &Path, site: &str) {
    let key = otamesh_node::keys::read_secret_key(key).unwrap();
    process::enrol(site, &key, data, site, "gw").unwrap();
}

/// Writes the publisher's key pair as `publisher.key` and `publisher.pub` in `dir`;
/// returns the `.pub` (what `--trust` takes). [`Node::start`] enrols nodes with the
/// `.key` beside it.
pub fn write_trust(dir: &Path, key: &SecretKey) -> PathBuf {
    otamesh_node::keys::write_keypair(&dir.join("publisher"), key).unwrap().1
}

/// A manifest for `data` (chunks not stored).
pub fn manifest_for(data: &[u8], class: &str, sequence: u64) -> Manifest {
    let version = format!("1.0.{sequence}");
    release::manifest(
        data,
        Describe {
            vendor: "acme",
            product: "gw",
            class,
            version: &version,
            sequence,
            kind: UpdateKind::Firmware,
            created_at: otamesh_node::clock::now_ms(),
            expires_at: None,
            rollout: RolloutPolicy::default(),
        },
    )
    .unwrap()
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
    let p = publish_verified(dir, key, data, manifest_for(data, class, sequence));
    (p.id(), p.manifest.signed().clone())
}

fn publish_verified(dir: &Path, key: &SecretKey, data: &[u8], m: Manifest) -> release::Published {
    let store = Store::create(dir).unwrap();
    release::publish(&store, key, data, m, otamesh_node::clock::now_ms()).unwrap()
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
        let origin = Origin::start(&store, addr.parse().unwrap(), rate).unwrap();
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
    process::free_port().unwrap()
}

/// An origin over the store `root` on 127.0.0.1; `rate` limits its egress in bytes/s.
pub fn serve(root: &Path, rate: Option<u64>) -> Origin {
    Origin::start(root, "127.0.0.1:0".parse().unwrap(), rate).unwrap()
}

/// One `otamesh node` process, with what tests read of it.
pub struct Node {
    pub name: String,
    pub data: PathBuf,
    /// The address it listens on (127.0.0.1, or its network namespace's address).
    pub host: String,
    pub port: u16,
    pub api: String,
    /// The process (its `args` can be edited before [`Node::spawn`] restarts it).
    pub process: NodeProcess,
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
        // A test that enrolled the node itself (co-signed, say) keeps its enrolment.
        if !data.join("enrolment").exists() {
            enroll(&trust.with_extension("key"), &data, site);
        }
        let listen = format!("/ip4/{host}/tcp/{port}");
        let args = NodeArgs {
            data: &data,
            site,
            class: "gw",
            listen: &listen,
            api,
            trust,
            poll_interval_s: 0.5,
            extra,
        };
        let mut process =
            NodeProcess::new(name, Path::new(BIN), args.to_vec(), dir.join(format!("{name}.log")));
        process.wrapper = wrapper.to_vec();
        process.rust_log = "info,otamesh_node=debug,libp2p_gossipsub=warn".into();
        let mut node = Self { name: name.into(), data, host: host.into(), port: 0, api: api.into(), process };
        node.spawn();
        node.wait_up().then_some(node)
    }

    /// Starts every node of `specs` (name, site) in the same moment, each listening on a
    /// port chosen beforehand and peered with every other node of its site; `extra(i)`
    /// are more flags for node `i`. Returns once every API answers.
    pub fn start_together(
        dir: &Path,
        trust: &Path,
        specs: &[(String, String)],
        extra: impl Fn(usize) -> Vec<String>,
    ) -> Vec<Self> {
        let ports: Vec<u16> = specs.iter().map(|_| free_port()).collect();
        let mut nodes: Vec<Self> = Vec::new();
        for (i, (name, site)) in specs.iter().enumerate() {
            let data = dir.join(name);
            if !data.join("enrolment").exists() {
                enroll(&trust.with_extension("key"), &data, site);
            }
            let api = format!("127.0.0.1:{}", free_port());
            let listen = format!("/ip4/127.0.0.1/tcp/{}", ports[i]);
            let mut args = vec!["--no-mdns".to_string()];
            args.extend(extra(i));
            for (j, (_, other)) in specs.iter().enumerate() {
                if j != i && other == site {
                    args.extend(["--peer".to_string(), format!("/ip4/127.0.0.1/tcp/{}", ports[j])]);
                }
            }
            let node_args = NodeArgs {
                data: &data,
                site,
                class: "gw",
                listen: &listen,
                api: &api,
                trust,
                poll_interval_s: 0.5,
                extra: &args,
            };
            let mut process =
                NodeProcess::new(name, Path::new(BIN), node_args.to_vec(), dir.join(format!("{name}.log")));
            process.rust_log = "info,otamesh_node=debug,libp2p_gossipsub=warn".into();
            nodes.push(Self { name: name.clone(), data, host: "127.0.0.1".into(), port: 0, api, process });
        }
        for n in &mut nodes {
            n.spawn();
        }
        for n in &mut nodes {
            assert!(n.wait_up(), "node {} did not start; see its log", n.name);
        }
        nodes
    }

    /// Waits for the API and learns the libp2p port; false if the process exited.
    fn wait_up(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.process.check_alive().is_err() {
                return false;
            }
            if let Some(s) = self.status() {
                // The TCP address: a node may listen on QUIC too.
                let port = s["listen"]
                    .as_array()
                    .and_then(|a| a.iter().filter_map(|a| a.as_str()).find(|a| a.contains("/tcp/")))
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

    /// Starts the process (again) with its current `process.args`.
    pub fn spawn(&mut self) {
        self.process.spawn().unwrap();
    }

    /// SIGKILL, as a power cut.
    pub fn kill9(&mut self) {
        self.process.kill();
    }

    pub fn status(&self) -> Option<serde_json::Value> {
        api_json(&self.api, "/status")
    }

    /// The sum of every sample of `name`, which may carry labels to match, e.g.
    /// `otamesh_chunk_bytes_total{source="lan"}`; 0 when the node does not answer.
    pub fn metric(&self, name: &str) -> f64 {
        let (name, labels) = match name.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}').split(',').map(str::trim).collect()),
            None => (name, Vec::new()),
        };
        self.metrics().map_or(0.0, |m| m.sum(name, &labels))
    }

    /// The node's `/metrics`, if it answers.
    pub fn metrics(&self) -> Option<otamesh_node::client::Metrics> {
        let client = Client::new(&self.api).ok()?;
        runtime().block_on(client.metrics()).ok()
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
        self.process.tail(30)
    }
}

/// A runtime for one blocking API read.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// `GET path` of the node API at `addr` as JSON, through the node's own API client;
/// `None` if nothing answers or the answer is not a 200 with JSON.
pub fn api_json(addr: &str, path: &str) -> Option<serde_json::Value> {
    let client = Client::new(addr).ok()?;
    runtime().block_on(client.raw_json(path)).ok()
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
    publish_verified(dir, key, data, m).id()
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

/// Picks a `created_at` (now, or a few ms before) for `m` with `policy` such that the
/// wave split of `devices` satisfies `ok`; returns the manifest and each device's wave.
pub fn pick_manifest(
    data: &[u8],
    sequence: u64,
    policy: RolloutPolicy,
    devices: &[DeviceId],
    ok: impl Fn(&[usize]) -> bool,
) -> (Manifest, Vec<usize>) {
    let mut m = manifest_for(data, "gw", sequence);
    m.rollout = policy;
    for _ in 0..10_000 {
        let id = m.release_id();
        let waves: Vec<usize> =
            devices.iter().map(|d| m.rollout.wave_of(m.kind, position(id, *d)).unwrap()).collect();
        if ok(&waves) {
            return (m, waves);
        }
        m.created_at -= 1;
    }
    panic!("no created_at gives the wanted wave split");
}
