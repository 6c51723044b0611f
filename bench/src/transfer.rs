//! The LAN path against HTTPS: one node fetching a whole release from a site peer,
//! and an HTTPS download of the same bytes, in the same run.
//!
//! A seed node fetches the release from the origin; then, per run, a fresh leech peered
//! only with the seed fetches it over the LAN. Its speed is clocked from its first
//! stored LAN byte to its last (its `/metrics` byte counter, polled every 10 ms). The
//! baseline is an HTTPS GET of the same bytes over loopback, timed by a rustls client
//! from the request to the last body byte, against nginx when `nginx` is on the PATH
//! and otherwise a small rustls server in this harness (which one is written into the
//! notes). Two baselines: the body discarded (`lan/https_download`: the transport
//! alone, nothing stored), and the body written to a file beside the nodes' data dirs
//! and fsynced at the end (`lan/https_download_stored`: what a device downloading the
//! release from an HTTPS origin does). The leech verifies, writes and flushes every
//! chunk before counting it. The seed has installed the release before a leech starts,
//! so that its slot assembly does not share the cores with the transfer.

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use otamesh_core::UpdateKind;
use otamesh_core::rollout::RolloutPolicy;
use otamesh_fleet::Origin;
use otamesh_fleet::process::{self, NodeArgs, NodeProcess};
use otamesh_fleet::release::{self, Describe};
use otamesh_node::client::Client;
use otamesh_node::store::Store;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::bmf::Measure;
use crate::suite::{Options, Outcome, Progress, Size, noise, publisher, scratch, until};

const MIB: usize = 1 << 20;

fn shape(size: Size) -> (usize, usize) {
    match size {
        Size::Full => (256, 3),
        Size::Quick => (64, 2),
        Size::Tiny => (4, 1),
    }
}

pub(crate) async fn play(
    options: &Options,
    outcome: &mut Outcome,
    progress: &mut dyn Progress,
) -> Result<(), String> {
    let (mib, runs) = shape(options.size);
    let dir = scratch(options, "lan")?;
    let (key, trust) = publisher(&dir, 12)?;
    let store_dir = dir.join("store");
    let store = Store::create(&store_dir).map_err(|e| e.to_string())?;
    let data = noise(9, mib * MIB);
    let now = otamesh_node::clock::now_ms();
    let describe = Describe {
        vendor: "otamesh-bench",
        product: "gateway",
        class: "gw",
        version: "1.0.0",
        sequence: 1,
        kind: UpdateKind::Firmware,
        created_at: now,
        expires_at: None,
        rollout: RolloutPolicy::default(),
    };
    let manifest = release::manifest(&data, describe).map_err(|e| e.to_string())?;
    release::publish(&store, &key, &data, manifest, now).map_err(|e| e.to_string())?;
    let origin = Origin::start(&store_dir, ([127, 0, 0, 1], 0).into(), None).map_err(|e| e.to_string())?;

    progress.step("lan", &format!("seed node fetching {mib} MiB from the origin"));
    let origin_flag = ["--origin".to_string(), origin.url.clone()];
    let (mut seed, seed_api, seed_addr) = start_node(options, &dir, &key, &trust, "seed", &origin_flag)?;
    // The seed has the whole release and has installed it: its slot assembly would
    // otherwise compete with the transfer for the same cores.
    let complete = |api: Client| async move {
        api.metrics().await.is_ok_and(|m| {
            m.sum("otamesh_chunk_bytes_total", &[]) as usize >= mib * MIB
                && m.sum("otamesh_installs_total", &[]) >= 1.0
        })
    };
    let limit = Duration::from_secs(120 + mib as u64);
    let ok = until(limit, Duration::from_millis(100), async || {
        seed.check_alive().is_ok() && complete(seed_api.clone()).await
    })
    .await;
    if !ok {
        return Err(format!(
            "the seed did not fetch the release in {} s; see {}",
            limit.as_secs(),
            seed.log.display()
        ));
    }

    let mut lan = Vec::new();
    for run in 0..runs {
        progress.step("lan", &format!("run {}/{runs}: a peer fetches {mib} MiB over the LAN", run + 1));
        let peer_flag = ["--peer".to_string(), seed_addr.clone()];
        let (mut leech, api, _) =
            start_node(options, &dir, &key, &trust, &format!("leech{run}"), &peer_flag)?;
        let mut first: Option<Instant> = None;
        let deadline = Instant::now() + limit;
        let secs = loop {
            leech.check_alive().map_err(|e| e.to_string())?;
            let got =
                api.metrics().await.map_or(0.0, |m| m.sum("otamesh_chunk_bytes_total", &["source=\"lan\""]));
            if got > 0.0 && first.is_none() {
                first = Some(Instant::now());
            }
            if got as usize >= mib * MIB {
                break first.map_or(f64::NAN, |f| f.elapsed().as_secs_f64());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "a leech did not finish in {} s; see {}",
                    limit.as_secs(),
                    leech.log.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        lan.push(mib as f64 / secs);
        leech.stop();
    }
    seed.stop();
    drop(origin);

    let artifact = dir.join("artifact.bin");
    std::fs::write(&artifact, &data).map_err(|e| format!("{}: {e}", artifact.display()))?;
    drop(data);
    let (server, https, stored) = https_baseline(&dir, &artifact, mib, runs, progress).await?;
    let ratios: Vec<f64> = lan.iter().zip(&https).map(|(l, h)| l / h).collect();
    let ratios_stored: Vec<f64> = lan.iter().zip(&stored).map(|(l, h)| l / h).collect();
    outcome.results.record("lan/two_node_transfer", Measure::Throughput, &lan);
    outcome.results.record("lan/https_download", Measure::Throughput, &https);
    outcome.results.record("lan/ratio_to_https", Measure::Ratio, &ratios);
    outcome.results.record("lan/https_download_stored", Measure::Throughput, &stored);
    outcome.results.record("lan/ratio_to_https_stored", Measure::Ratio, &ratios_stored);
    outcome.notes.push(format!(
        "lan: {mib} MiB, {runs} run(s), data dirs in {}; HTTPS baseline served by {server}",
        options.work.display()
    ));
    Ok(())
}

/// Enrols and starts a node in `dir`; returns it, its API and its libp2p address.
fn start_node(
    options: &Options,
    dir: &Path,
    key: &otamesh_core::SecretKey,
    trust: &Path,
    name: &str,
    extra: &[String],
) -> Result<(NodeProcess, Client, String), String> {
    let data = dir.join(name);
    process::enrol(name, key, &data, "lan", "gw").map_err(|e| e.to_string())?;
    let port = process::free_port().map_err(|e| e.to_string())?;
    let api = format!("127.0.0.1:{}", process::free_port().map_err(|e| e.to_string())?);
    let listen = format!("/ip4/127.0.0.1/tcp/{port}");
    let mut flags = vec!["--no-mdns".to_string()];
    flags.extend_from_slice(extra);
    let args = NodeArgs {
        data: &data,
        site: "lan",
        class: "gw",
        listen: &listen,
        api: &api,
        trust,
        poll_interval_s: 0.5,
        extra: &flags,
    };
    let mut node = NodeProcess::new(name, &options.exe, args.to_vec(), dir.join(format!("{name}.log")));
    node.spawn().map_err(|e| e.to_string())?;
    let client = Client::new(&api).map_err(|e| e.to_string())?;
    Ok((node, client, listen))
}

/// Times `runs` HTTPS downloads of `artifact` whose body is discarded, then `runs`
/// whose body is written to a file in `dir` and fsynced (what a device downloading a
/// release does); returns the server's name and both sets of MiB/s.
async fn https_baseline(
    dir: &Path,
    artifact: &Path,
    mib: usize,
    runs: usize,
    progress: &mut dyn Progress,
) -> Result<(String, Vec<f64>, Vec<f64>), String> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).map_err(|e| e.to_string())?;
    let cert_der = cert.cert.der().to_vec();
    let key_der = cert.key_pair.serialize_der();
    let nginx = which("nginx");
    let (name, url, _server): (String, String, Box<dyn std::any::Any>) = match nginx {
        Some(nginx) => {
            let n = Nginx::start(&nginx, dir, artifact, &cert.cert.pem(), &cert.key_pair.serialize_pem())?;
            let url = format!("https://localhost:{}/artifact.bin", n.port);
            ("nginx (found on the PATH)".into(), url, Box::new(n))
        }
        None => {
            let s = RustlsServer::start(artifact, cert_der.clone(), key_der)?;
            let url = format!("https://localhost:{}/artifact.bin", s.port);
            ("a rustls server in the harness (no nginx on the PATH)".into(), url, Box::new(s))
        }
    };
    let root = reqwest::Certificate::from_der(&cert_der).map_err(|e| e.to_string())?;
    let client = reqwest::Client::builder()
        .add_root_certificate(root)
        .resolve("localhost", ([127, 0, 0, 1], 0).into())
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?;
    let mut discarded = Vec::new();
    let mut stored = Vec::new();
    for run in 0..2 * runs {
        let to_file = (run >= runs).then(|| dir.join(format!("https-{run}.bin")));
        let what = if to_file.is_some() { "stored to a file" } else { "discarded" };
        progress.step(
            "lan",
            &format!("run {}/{runs}: HTTPS download of the same {mib} MiB, {what}", run % runs + 1),
        );
        let t0 = Instant::now();
        let mut file = match &to_file {
            Some(path) => {
                Some(tokio::fs::File::create(path).await.map_err(|e| format!("{}: {e}", path.display()))?)
            }
            None => None,
        };
        let mut response = client.get(&url).send().await.map_err(|e| format!("HTTPS GET {url}: {e}"))?;
        let mut got = 0usize;
        while let Some(piece) = response.chunk().await.map_err(|e| format!("HTTPS body: {e}"))? {
            got += piece.len();
            if let Some(f) = file.as_mut() {
                f.write_all(&piece).await.map_err(|e| format!("writing the HTTPS download: {e}"))?;
            }
        }
        if let Some(f) = file.as_mut() {
            f.sync_all().await.map_err(|e| format!("syncing the HTTPS download: {e}"))?;
        }
        if got != mib * MIB {
            return Err(format!("HTTPS download of {url} returned {got} bytes, expected {}", mib * MIB));
        }
        let speed = mib as f64 / t0.elapsed().as_secs_f64();
        if let Some(path) = &to_file {
            let _ = std::fs::remove_file(path);
            stored.push(speed);
        } else {
            discarded.push(speed);
        }
    }
    Ok((name, discarded, stored))
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| p.is_file())
}

/// A minimal HTTPS file server: one file, HTTP/1.1, on its own thread and runtime so
/// that it does not share the client's threads.
struct RustlsServer {
    port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RustlsServer {
    fn start(artifact: &Path, cert: Vec<u8>, key: Vec<u8>) -> Result<Self, String> {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(cert)],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
            )
            .map_err(|e| e.to_string())?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let body = Arc::new(std::fs::read(artifact).map_err(|e| format!("{}: {e}", artifact.display()))?);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
                loop {
                    tokio::select! {
                        _ = &mut stopped => return,
                        accepted = listener.accept() => {
                            let Ok((tcp, _)) = accepted else { continue };
                            let (acceptor, body) = (acceptor.clone(), body.clone());
                            tokio::spawn(async move {
                                let _ = serve(acceptor, tcp, &body).await;
                            });
                        }
                    }
                }
            });
        });
        Ok(Self { port, stop: Some(stop), thread: Some(thread) })
    }
}

/// Answers every request on one connection with the file.
async fn serve(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    body: &[u8],
) -> std::io::Result<()> {
    tcp.set_nodelay(true)?;
    let mut tls = acceptor.accept(tcp).await?;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tls.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
        if head.len() > 64 << 10 {
            return Ok(());
        }
    }
    let mut header = Vec::new();
    write!(
        header,
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: application/octet-stream\r\n\r\n",
        body.len()
    )?;
    tls.write_all(&header).await?;
    for piece in body.chunks(256 << 10) {
        tls.write_all(piece).await?;
    }
    tls.flush().await?;
    tls.shutdown().await
}

impl Drop for RustlsServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// nginx serving the artifact over HTTPS (sendfile, one worker), as
/// `bench/node-bench.sh` used to run it.
struct Nginx {
    port: u16,
    process: NodeProcess,
}

impl Nginx {
    fn start(
        nginx: &Path,
        dir: &Path,
        artifact: &Path,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<Self, String> {
        let conf_dir = dir.join("nginx");
        let www = dir.join("www");
        for d in [&conf_dir, &www] {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        std::fs::rename(artifact, www.join("artifact.bin")).map_err(|e| e.to_string())?;
        std::fs::write(conf_dir.join("cert.pem"), cert_pem).map_err(|e| e.to_string())?;
        std::fs::write(conf_dir.join("key.pem"), key_pem).map_err(|e| e.to_string())?;
        let port = process::free_port().map_err(|e| e.to_string())?;
        let c = conf_dir.display();
        let conf = format!(
            "worker_processes 1;\ndaemon off;\npid {c}/nginx.pid;\nerror_log {c}/error.log;\nevents {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  sendfile on;\n  client_body_temp_path {c};\n  proxy_temp_path {c};\n  fastcgi_temp_path {c};\n  uwsgi_temp_path {c};\n  scgi_temp_path {c};\n\
             server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {c}/cert.pem;\n    ssl_certificate_key {c}/key.pem;\n    root {};\n  }}\n}}\n",
            www.display()
        );
        let conf_path = conf_dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).map_err(|e| e.to_string())?;
        let args = vec![
            "-c".into(),
            conf_path.display().to_string(),
            "-e".into(),
            conf_dir.join("error.log").display().to_string(),
        ];
        let mut process = NodeProcess::new("nginx", nginx, args, conf_dir.join("stderr.log"));
        process.spawn().map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            process.check_alive().map_err(|e| e.to_string())?;
            if Instant::now() > deadline {
                return Err(format!("nginx did not listen on port {port}; see {}", conf_dir.display()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self { port, process })
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.process.stop();
    }
}
