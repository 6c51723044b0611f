//! The node's HTTP API: `GET /status` (JSON) and `GET /metrics` (Prometheus text).
//!
//! The event loop publishes a [`Status`] snapshot through a `watch` channel; the API
//! only reads snapshots and metric atomics, so a slow client never stalls the node.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Serialize;
use tokio::sync::watch;

use crate::metrics::Metrics;

/// What `GET /status` returns.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    /// This device's id (hex BLAKE3 of its public key).
    pub device_id: String,
    /// This node's libp2p peer id.
    pub peer_id: String,
    /// The site.
    pub site: String,
    /// The device class.
    pub class: String,
    /// Connected peers.
    pub peers: usize,
    /// Devices of this site heard recently (their site gossip), by device id.
    pub site_members: Vec<String>,
    /// The addresses the node listens on.
    pub listen: Vec<String>,
    /// Every known release for this device's class.
    pub releases: Vec<ReleaseStatus>,
}

/// One release in [`Status`].
#[derive(Debug, Clone, Serialize)]
pub struct ReleaseStatus {
    /// The release id.
    pub release_id: String,
    /// Its sequence.
    pub sequence: u64,
    /// Its human version.
    pub version: String,
    /// Chunks held (verified).
    pub chunks_have: usize,
    /// Chunks in the manifest.
    pub chunks_total: usize,
    /// `fetching` or `staged` (every chunk here and verified).
    pub state: &'static str,
    /// Site peers banned for this release (served a bad chunk), by device id.
    pub banned: Vec<String>,
}

#[derive(Clone)]
struct ApiState {
    status: watch::Receiver<Status>,
    metrics: Metrics,
}

/// Binds the API listener; fails early (before the node starts) if the port is taken.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Serves the API on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, status: watch::Receiver<Status>, metrics: Metrics) {
    let app = Router::new()
        .route("/status", get(status_handler))
        .route("/metrics", get(metrics_handler))
        .with_state(ApiState { status, metrics });
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "API server stopped");
    }
}

async fn status_handler(State(state): State<ApiState>) -> impl IntoResponse {
    let status = state.status.borrow().clone();
    axum::Json(status)
}

async fn metrics_handler(State(state): State<ApiState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        state.metrics.encode(),
    )
}
