//! A static HTTP origin over a release store: what `otamesh serve` and `otamesh demo` run.
//!
//! **Goals**: serve the files of one store directory (`index.json`, `manifests/`,
//! `chunks/`, `directives/`) to nodes with GET and HEAD, each with its exact
//! `Content-Length`, streamed from disk so a large file never sits in memory; count what
//! was served, readable in-process ([`Served`], also per file) and at `GET /-/served`
//! (JSON); optionally limit the egress rate ([`Limits`]), to stand in for a WAN link.
//!
//! **Non-goals**: TLS, range requests, directory listings, caching headers. In
//! production put any static web server or CDN in front of the store; otamesh needs
//! nothing from the origin but plain GETs.
//!
//! Only regular files below the root are served: a path with an empty, `.`-prefixed
//! (so also `.` and `..`, and the store's temporary files), backslash or
//! percent-encoded segment is answered 404 without touching the disk, and a symlink
//! that leads out of the root is 404 too.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::io::AsyncReadExt;

/// The path of the counters endpoint; `-` is not a name the store ever writes.
pub const SERVED_PATH: &str = "/-/served";

/// How much of a file is read per body frame.
const FRAME: usize = 64 << 10;

/// What an origin served so far. Bytes are counted as they are handed to the
/// connection, so a client that hangs up early is counted for what it was sent.
#[derive(Debug, Default)]
pub struct Served {
    bytes: AtomicU64,
    chunk_bytes: AtomicU64,
    requests: AtomicU64,
    not_found: AtomicU64,
    /// GETs answered per store-relative path; bounded by the files in the store.
    per_file: Mutex<BTreeMap<String, u64>>,
}

impl Served {
    /// Bytes of every file body sent.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Bytes of chunk bodies (`chunks/...`) sent: the WAN cost of the releases.
    pub fn chunk_bytes(&self) -> u64 {
        self.chunk_bytes.load(Ordering::Relaxed)
    }

    /// Requests answered, found or not.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Requests answered 404.
    pub fn not_found(&self) -> u64 {
        self.not_found.load(Ordering::Relaxed)
    }

    /// GETs of the store-relative `path` (e.g. `chunks/ab/ab...`) answered with the file.
    pub fn requests_for(&self, path: &str) -> u64 {
        self.per_file.lock().map_or(0, |m| m.get(path).copied().unwrap_or(0))
    }

    fn count_file(&self, path: &str) {
        // A poisoned lock only means another request panicked mid-count; counts are
        // statistics, so carry on with what is there.
        let mut m = self.per_file.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *m.entry(path.to_owned()).or_insert(0) += 1;
    }
}

/// What an origin holds back.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// Total bytes per second over all connections (a WAN uplink); `None`: unlimited.
    pub egress_bytes_per_s: Option<u64>,
}

/// Why the origin cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The store directory does not exist or is not a directory; publish into it first
    /// (`otamesh publish --store DIR`) or fix the path.
    #[error("{path}: not a readable directory ({source}); publish a release into it first or fix --store")]
    Root {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The listen address is taken or not allowed; choose another `--listen`.
    #[error("cannot listen on {addr}: {source}; choose another --listen address")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
}

/// A running origin; the server stops when this is dropped.
#[derive(Debug)]
pub struct OriginServer {
    addr: SocketAddr,
    served: Arc<Served>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct Origin {
    root: Arc<PathBuf>,
    served: Arc<Served>,
    egress: Option<Arc<Egress>>,
}

/// A shared egress budget: the time at which the link is next free.
#[derive(Debug)]
struct Egress {
    bytes_per_s: u64,
    free_at: Mutex<tokio::time::Instant>,
}

impl Egress {
    /// When `n` more bytes have crossed the link, reserving their slot now.
    fn reserve(&self, n: usize) -> tokio::time::Instant {
        let mut free_at = self.free_at.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let start = (*free_at).max(tokio::time::Instant::now());
        *free_at = start + Duration::from_secs_f64(n as f64 / self.bytes_per_s as f64);
        *free_at
    }
}

impl OriginServer {
    /// Serves `root` on `addr` (port 0 picks a free port). Needs a tokio runtime.
    pub async fn start(root: &Path, addr: SocketAddr) -> Result<Self, ServeError> {
        Self::start_limited(root, addr, Limits::default()).await
    }

    /// [`OriginServer::start`] with `limits` on what it sends.
    pub async fn start_limited(root: &Path, addr: SocketAddr, limits: Limits) -> Result<Self, ServeError> {
        let root_err = |source| ServeError::Root { path: root.to_owned(), source };
        let canonical = root.canonicalize().map_err(root_err)?;
        if !canonical.is_dir() {
            return Err(root_err(io::Error::new(io::ErrorKind::NotADirectory, "not a directory")));
        }
        let listener =
            tokio::net::TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, source })?;
        let addr = listener.local_addr().map_err(|source| ServeError::Bind { addr, source })?;
        let served = Arc::new(Served::default());
        let egress = limits.egress_bytes_per_s.filter(|r| *r > 0).map(|bytes_per_s| {
            Arc::new(Egress { bytes_per_s, free_at: Mutex::new(tokio::time::Instant::now()) })
        });
        let state = Origin { root: Arc::new(canonical), served: served.clone(), egress };
        let app =
            Router::new().route(SERVED_PATH, get(served_handler)).fallback(file_handler).with_state(state);
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "origin server stopped");
            }
        });
        Ok(Self { addr, served, task })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL, what nodes take as `--origin`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What it served so far (shared, so it can be read after the server moved).
    pub fn served(&self) -> &Arc<Served> {
        &self.served
    }
}

impl Drop for OriginServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn served_handler(State(origin): State<Origin>) -> impl IntoResponse {
    axum::Json(serde_json::json!({
        "bytes": origin.served.bytes(),
        "chunk_bytes": origin.served.chunk_bytes(),
        "requests": origin.served.requests(),
        "not_found": origin.served.not_found(),
    }))
}

async fn file_handler(State(origin): State<Origin>, method: Method, uri: Uri) -> Response {
    origin.served.requests.fetch_add(1, Ordering::Relaxed);
    if method != Method::GET && method != Method::HEAD {
        return (StatusCode::METHOD_NOT_ALLOWED, [(header::ALLOW, "GET, HEAD")]).into_response();
    }
    let Some(rel) = relative_path(uri.path()) else { return not_found(&origin) };
    let path = origin.root.join(&rel);
    // A symlink inside the store must not lead outside it.
    let Ok(canonical) = tokio::fs::canonicalize(&path).await else { return not_found(&origin) };
    if !canonical.starts_with(origin.root.as_path()) {
        return not_found(&origin);
    }
    let Ok(file) = tokio::fs::File::open(&canonical).await else { return not_found(&origin) };
    let Ok(meta) = file.metadata().await else { return not_found(&origin) };
    if !meta.is_file() {
        return not_found(&origin);
    }
    let len = meta.len();
    let content_type = if rel.ends_with(".json") { "application/json" } else { "application/octet-stream" };
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CONTENT_LENGTH, HeaderValue::from(len)),
    ];
    if method == Method::HEAD {
        return (headers, Body::empty()).into_response();
    }
    let is_chunk = rel.starts_with("chunks/");
    origin.served.count_file(&rel);
    let served = origin.served.clone();
    let egress = origin.egress.clone();
    // Sends exactly `len` bytes: a file that grows while being read is cut at the
    // length announced, one that shrinks ends the body early (the client sees a short
    // body and retries).
    let stream = futures::stream::unfold((file, len), move |(mut file, left)| {
        let served = served.clone();
        let egress = egress.clone();
        async move {
            if left == 0 {
                return None;
            }
            let mut buf = vec![0u8; FRAME.min(usize::try_from(left).unwrap_or(FRAME))];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    if let Some(egress) = &egress {
                        tokio::time::sleep_until(egress.reserve(n)).await;
                    }
                    served.bytes.fetch_add(n as u64, Ordering::Relaxed);
                    if is_chunk {
                        served.chunk_bytes.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Some((Ok::<_, io::Error>(buf), (file, left - n as u64)))
                }
                Err(e) => Some((Err(e), (file, 0))),
            }
        }
    });
    (headers, Body::from_stream(stream)).into_response()
}

fn not_found(origin: &Origin) -> Response {
    origin.served.not_found.fetch_add(1, Ordering::Relaxed);
    StatusCode::NOT_FOUND.into_response()
}

/// The store-relative path of a request path, or `None` when it is not one the store
/// could hold (see the module doc).
fn relative_path(path: &str) -> Option<String> {
    let rel = path.strip_prefix('/')?;
    let ok = !rel.is_empty()
        && rel
            .split('/')
            .all(|seg| !seg.is_empty() && !seg.starts_with('.') && !seg.contains(['\\', '%', '\0']));
    ok.then(|| rel.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_store_paths_are_accepted() {
        let table: &[(&str, Option<&str>)] = &[
            // What nodes ask for.
            ("/index.json", Some("index.json")),
            ("/chunks/ab/abcdef", Some("chunks/ab/abcdef")),
            ("/manifests/01.manifest", Some("manifests/01.manifest")),
            // The root itself is not a file.
            ("/", None),
            // Traversal, plain and hidden in segments.
            ("/../etc/passwd", None),
            ("/chunks/../../etc/passwd", None),
            ("/chunks/..", None),
            ("/./index.json", None),
            // Encoded traversal is never decoded into a path.
            ("/%2e%2e/etc/passwd", None),
            ("/chunks%2f..%2f..%2fetc", None),
            // Backslashes (Windows separators), NULs, empty segments.
            ("/chunks\\..\\x", None),
            ("/a\0b", None),
            ("//etc/passwd", None),
            ("/chunks//ab", None),
            // The store's temporary files.
            ("/.index.json.tmp.1.2", None),
        ];
        for (path, want) in table {
            assert_eq!(relative_path(path).as_deref(), *want, "{path}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn egress_slots_follow_one_another_at_the_rate() {
        let egress = Egress { bytes_per_s: 1000, free_at: Mutex::new(tokio::time::Instant::now()) };
        let t0 = tokio::time::Instant::now();
        // Two connections share one link: the second frame waits for the first.
        assert_eq!(egress.reserve(1000) - t0, Duration::from_secs(1));
        assert_eq!(egress.reserve(500) - t0, Duration::from_millis(1500));
        // An idle link does not bank credit.
        tokio::time::advance(Duration::from_secs(10)).await;
        let t1 = tokio::time::Instant::now();
        assert_eq!(egress.reserve(250) - t1, Duration::from_millis(250));
    }

    #[test]
    fn files_are_counted_per_path() {
        let served = Served::default();
        served.count_file("chunks/ab/x");
        served.count_file("chunks/ab/x");
        served.count_file("index.json");
        assert_eq!(served.requests_for("chunks/ab/x"), 2);
        assert_eq!(served.requests_for("index.json"), 1);
        assert_eq!(served.requests_for("chunks/cd/y"), 0);
    }
}
