//! The origin of a local fleet: the node's own static origin server over a release
//! store, run on a thread with its own runtime so that synchronous tests and async
//! programs start it alike.
//!
//! **Goals**: the same server `otamesh serve` runs, its counters (bytes, chunk bytes,
//! requests per file) readable while it runs, and an optional egress limit that stands
//! in for a site's WAN uplink or a slow CDN.
//!
//! **Non-goals**: TLS (see `otamesh bench` for an HTTPS baseline) and anything the
//! server itself does not do.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use otamesh_node::serve::{Limits, OriginServer, ServeError, Served};

/// Why the origin did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OriginError {
    /// The server refused to start (no store there, address taken).
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// No thread or runtime could be made for it: the process is out of threads or
    /// file descriptors; stop other work or raise the limits.
    #[error("cannot run the origin: {0}")]
    Runtime(std::io::Error),
}

/// A running origin; it stops when dropped.
#[derive(Debug)]
pub struct Origin {
    /// Its base URL, what nodes take as `--origin`.
    pub url: String,
    served: Arc<Served>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Origin {
    /// Serves the store at `root` on `addr` (port 0: any free port); `rate` limits its
    /// total egress in bytes per second.
    pub fn start(root: &Path, addr: SocketAddr, rate: Option<u64>) -> Result<Self, OriginError> {
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let root = root.to_owned();
        let thread = std::thread::Builder::new()
            .name("otamesh-origin".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(OriginError::Runtime(e)));
                        return;
                    }
                };
                rt.block_on(async move {
                    let limits = Limits { egress_bytes_per_s: rate };
                    match OriginServer::start_limited(&root, addr, limits).await {
                        Ok(server) => {
                            let _ = ready_tx.send(Ok((server.url(), server.served().clone())));
                            // Serve until told to stop or the handle is gone.
                            let _ = stopped.await;
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.into()));
                        }
                    }
                });
            })
            .map_err(OriginError::Runtime)?;
        let gone = || OriginError::Runtime(std::io::Error::other("the origin thread ended at start"));
        let (url, served) = ready_rx.recv().map_err(|_| gone())??;
        Ok(Self { url, served, stop: Some(stop), thread: Some(thread) })
    }

    /// What it served so far.
    pub fn served(&self) -> &Served {
        &self.served
    }

    /// Bytes of every file body sent so far.
    pub fn bytes_served(&self) -> u64 {
        self.served.bytes()
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_a_store_and_counts_per_file() {
        let dir = tempfile::tempdir().unwrap();
        otamesh_node::store::Store::create(dir.path()).unwrap();
        std::fs::write(dir.path().join("index.json"), "{}").unwrap();
        let origin = Origin::start(dir.path(), "127.0.0.1:0".parse().unwrap(), None).unwrap();
        let addr = origin.url.trim_start_matches("http://").to_owned();
        let body = get(&addr, "/index.json");
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert_eq!(origin.served().requests_for("index.json"), 1);
        assert!(origin.bytes_served() > 0);
        drop(origin);
        assert!(std::net::TcpStream::connect(&addr).is_err(), "the origin stops when dropped");
    }

    fn get(addr: &str, path: &str) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }
}
