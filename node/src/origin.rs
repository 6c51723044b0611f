//! The origin client: a static HTTP(S) server over a release store.
//!
//! The node polls `index.json`, and GETs `manifests/<id>.manifest` and
//! `chunks/ab/<id>`. Everything that crosses the WAN is counted
//! (`otamesh_origin_bytes_total`) and can be rate-limited ([`RateLimit`]); transient
//! failures are retried with exponential backoff. Bodies are bounded: a chunk body
//! longer than the manifest says is cut off and reported, never buffered whole.
//! Nothing here verifies chunk bytes: the caller does, before storing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::store::{Index, Store};
use otamesh_core::{ChunkId, codec};

/// Why an origin request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OriginError {
    /// The server could not be reached or the transfer broke; check `--origin` and the
    /// network. Retried with backoff.
    #[error("origin {url}: {source}")]
    Http {
        /// The URL.
        url: String,
        /// The transport error.
        source: reqwest::Error,
    },
    /// The server answered with an error status (404: the store lacks the file).
    #[error("origin {url}: HTTP {status}")]
    Status {
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// The body is larger than the file can legitimately be.
    #[error(
        "origin {url}: body exceeds {limit} bytes; the origin serves something else than an otamesh store"
    )]
    TooLarge {
        /// The URL.
        url: String,
        /// The limit.
        limit: usize,
    },
    /// The body does not parse as what was asked for.
    #[error("origin {url}: {reason}")]
    Malformed {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
}

impl OriginError {
    fn retryable(&self) -> bool {
        match self {
            Self::Http { .. } => true,
            Self::Status { status, .. } => *status >= 500 || *status == 429,
            Self::TooLarge { .. } | Self::Malformed { .. } => false,
        }
    }
}

/// A token bucket over bytes per second, shared by every origin download of a node.
#[derive(Debug)]
pub struct RateLimit {
    bytes_per_s: f64,
    next_free: Mutex<Instant>,
}

impl RateLimit {
    /// A limit of `bytes_per_s` (at least 1).
    pub fn new(bytes_per_s: u64) -> Self {
        Self { bytes_per_s: bytes_per_s.max(1) as f64, next_free: Mutex::new(Instant::now()) }
    }

    /// Accounts for `n` bytes just read; sleeps so that reads average the rate.
    pub async fn take(&self, n: usize) {
        let until = {
            // Invariant: the lock is never held across an await, so it cannot be poisoned
            // by a cancelled task; a poisoned lock still holds a valid Instant.
            let mut next = self.next_free.lock().unwrap_or_else(|e| e.into_inner());
            let start = (*next).max(Instant::now());
            *next = start + Duration::from_secs_f64(n as f64 / self.bytes_per_s);
            *next
        };
        tokio::time::sleep_until(until).await;
    }
}

/// A client of one origin.
#[derive(Debug, Clone)]
pub struct Origin {
    base: String,
    http: reqwest::Client,
    limit: Option<Arc<RateLimit>>,
    metrics: Metrics,
    attempts: u32,
}

/// The largest `index.json` accepted.
const MAX_INDEX_BYTES: usize = 16 << 20;

impl Origin {
    /// A client of the store served at `base` (e.g. `https://updates.example/store`).
    pub fn new(base: &str, wan_rate: Option<u64>, metrics: Metrics) -> Result<Self, OriginError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(300))
            .user_agent(concat!("otamesh/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| OriginError::Http { url: base.to_owned(), source })?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            http,
            limit: wan_rate.map(|r| Arc::new(RateLimit::new(r))),
            metrics,
            attempts: 3,
        })
    }

    /// The origin's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Reads and parses `index.json`.
    pub async fn index(&self) -> Result<Index, OriginError> {
        let url = self.url(crate::store::INDEX_FILE);
        let bytes = self.get(&url, MAX_INDEX_BYTES).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| OriginError::Malformed { url, reason: format!("not a store index: {e}") })
    }

    /// Downloads the manifest at `rel` (as the index names it); not verified.
    pub async fn manifest(&self, rel: &str) -> Result<Vec<u8>, OriginError> {
        if rel.contains("..") || rel.starts_with('/') {
            return Err(OriginError::Malformed {
                url: self.url(rel),
                reason: "manifest path leaves the store".into(),
            });
        }
        self.get(&self.url(rel), codec::MAX_MESSAGE_BYTES).await
    }

    /// Downloads root `version` at `rel` (as the index names it); not verified.
    pub async fn root(&self, rel: &str) -> Result<Vec<u8>, OriginError> {
        // The same bounded, path-checked GET as a manifest: a root is smaller still.
        self.manifest(rel).await
    }

    /// Downloads chunk `id`, at most `max_len` bytes; not verified.
    pub async fn chunk(&self, id: ChunkId, max_len: usize) -> Result<Vec<u8>, OriginError> {
        self.get(&self.url(&Store::chunk_rel_path(id)), max_len).await
    }

    fn url(&self, rel: &str) -> String {
        format!("{}/{rel}", self.base)
    }

    /// GET with retries and backoff for transient failures.
    async fn get(&self, url: &str, limit: usize) -> Result<Vec<u8>, OriginError> {
        let mut delay = Duration::from_millis(250);
        let mut attempt = 1;
        loop {
            match self.get_once(url, limit).await {
                Ok(body) => return Ok(body),
                Err(e) if e.retryable() && attempt < self.attempts => {
                    self.metrics.origin_errors.inc();
                    tracing::debug!(%url, attempt, error = %e, "origin request failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                Err(e) => {
                    self.metrics.origin_errors.inc();
                    return Err(e);
                }
            }
        }
    }

    async fn get_once(&self, url: &str, limit: usize) -> Result<Vec<u8>, OriginError> {
        let http = |source| OriginError::Http { url: url.to_owned(), source };
        let mut resp = self.http.get(url).send().await.map_err(http)?;
        let status = resp.status();
        if !status.is_success() {
            return Err(OriginError::Status { url: url.to_owned(), status: status.as_u16() });
        }
        let mut body = Vec::with_capacity(resp.content_length().unwrap_or(0).min(limit as u64) as usize);
        while let Some(piece) = resp.chunk().await.map_err(http)? {
            self.metrics.origin_bytes.inc_by(piece.len() as u64);
            if let Some(limit) = &self.limit {
                limit.take(piece.len()).await;
            }
            if body.len() + piece.len() > limit {
                return Err(OriginError::TooLarge { url: url.to_owned(), limit });
            }
            body.extend_from_slice(&piece);
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-route HTTP server answering every request with `status` and `body`.
    async fn serve(status: &'static str, body: Vec<u8>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let body = body.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let head = format!(
                        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = s.write_all(head.as_bytes()).await;
                    let _ = s.write_all(&body).await;
                });
            }
        });
        url
    }

    #[tokio::test]
    async fn bodies_longer_than_the_chunk_are_refused() {
        let url = serve("200 OK", vec![7; 1000]).await;
        let origin = Origin::new(&url, None, Metrics::new()).unwrap();
        let err = origin.chunk(ChunkId::of(b"x"), 999).await.unwrap_err();
        assert!(matches!(err, OriginError::TooLarge { limit: 999, .. }), "{err}");
        assert_eq!(origin.chunk(ChunkId::of(b"x"), 1000).await.unwrap().len(), 1000);
    }

    #[tokio::test]
    async fn a_missing_file_is_not_retried_and_garbage_is_named() {
        let metrics = Metrics::new();
        let url = serve("404 Not Found", Vec::new()).await;
        let origin = Origin::new(&url, None, metrics.clone()).unwrap();
        assert!(matches!(origin.index().await, Err(OriginError::Status { status: 404, .. })));
        assert_eq!(metrics.origin_errors.get(), 1, "no retries for a 404");
        let url = serve("200 OK", b"<html>not a store</html>".to_vec()).await;
        let origin = Origin::new(&url, None, metrics).unwrap();
        assert!(matches!(origin.index().await, Err(OriginError::Malformed { .. })));
        assert!(matches!(origin.manifest("../../etc/passwd").await, Err(OriginError::Malformed { .. })));
    }

    #[tokio::test]
    async fn an_unreachable_origin_is_retried_then_reported() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let metrics = Metrics::new();
        let origin = Origin::new(&format!("http://127.0.0.1:{port}"), None, metrics.clone()).unwrap();
        assert!(matches!(origin.index().await, Err(OriginError::Http { .. })));
        assert_eq!(metrics.origin_errors.get(), 3, "three attempts");
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_limit_spaces_reads() {
        let limit = RateLimit::new(1000);
        let t0 = Instant::now();
        limit.take(500).await;
        limit.take(1500).await;
        let elapsed = t0.elapsed();
        assert!(
            elapsed >= Duration::from_millis(1999) && elapsed < Duration::from_millis(2100),
            "{elapsed:?}"
        );
    }
}
