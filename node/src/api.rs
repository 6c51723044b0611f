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

use std::collections::BTreeMap;

use otamesh_core::ReleaseId;
use otamesh_core::fleet::RolloutReport;
use otamesh_core::lifecycle::Phase;
use otamesh_core::report::OutcomeKind;

use crate::db::SlotContent;
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
    /// Whether the device carries a valid enrolment (without one its reports are not sent).
    pub enrolled: bool,
    /// Connected peers.
    pub peers: usize,
    /// Devices of this site heard recently (their site gossip), by device id.
    pub site_members: Vec<String>,
    /// The addresses the node listens on.
    pub listen: Vec<String>,
    /// The lifecycle state of the release in progress (or the last one handled).
    pub state: Phase,
    /// Why it was rolled back (`health_check_failed:exit 1`), when it was.
    pub reason: Option<String>,
    /// The slot the device runs, if any.
    pub active: Option<SlotContent>,
    /// The other slot, kept for rollback, if any.
    pub previous: Option<SlotContent>,
    /// Every known release for this device's class.
    pub releases: Vec<ReleaseStatus>,
    /// The fleet mesh: reachability, relay reservations, each connection's path.
    pub fleet_mesh: crate::fleetmesh::MeshStatus,
}

/// What `GET /fleet` and `GET /report` serve: the fleet as this node heard it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Fleet {
    /// Every device heard of, by id.
    pub devices: Vec<FleetDevice>,
    /// A rollout report per release this node knows the manifest of.
    #[serde(skip)]
    pub reports: BTreeMap<ReleaseId, RolloutReport>,
}

/// One device in [`Fleet`].
#[derive(Debug, Clone, Serialize)]
pub struct FleetDevice {
    /// Its id.
    pub device_id: String,
    /// Its site.
    pub site: String,
    /// Its class.
    pub class: String,
    /// The release it runs.
    pub active: Option<String>,
    /// The release its newest report is about.
    pub release: String,
    /// Its newest report's outcome: `committed`, `failed`, `rolled_back` or `revoked`.
    pub state: OutcomeKind,
    /// When its newest report was sent (Unix ms).
    pub last_seen: u64,
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
    /// The device's state for the release in progress; for the others `fetching`,
    /// `staged` (every chunk here and verified) or `idle`.
    pub state: Phase,
    /// Site peers banned for this release (served a bad chunk), by device id.
    pub banned: Vec<String>,
}

#[derive(Clone)]
struct ApiState {
    status: watch::Receiver<Status>,
    fleet: watch::Receiver<Fleet>,
    metrics: Metrics,
}

/// Binds the API listener; fails early (before the node starts) if the port is taken.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Serves the API on `listener` until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    status: watch::Receiver<Status>,
    fleet: watch::Receiver<Fleet>,
    metrics: Metrics,
) {
    let app = Router::new()
        .route("/status", get(status_handler))
        .route("/fleet", get(fleet_handler))
        .route("/report", get(report_handler))
        .route("/metrics", get(metrics_handler))
        .with_state(ApiState { status, fleet, metrics });
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "API server stopped");
    }
}

async fn status_handler(State(state): State<ApiState>) -> impl IntoResponse {
    let status = state.status.borrow().clone();
    axum::Json(status)
}

async fn fleet_handler(State(state): State<ApiState>) -> impl IntoResponse {
    let fleet = state.fleet.borrow().clone();
    axum::Json(fleet)
}

#[derive(serde::Deserialize)]
struct ReportQuery {
    release: String,
}

async fn report_handler(
    State(state): State<ApiState>,
    axum::extract::Query(q): axum::extract::Query<ReportQuery>,
) -> axum::response::Response {
    let not_found = |msg: String| {
        (axum::http::StatusCode::NOT_FOUND, axum::Json(serde_json::json!({ "error": msg }))).into_response()
    };
    let Ok(release) = q.release.parse::<ReleaseId>() else {
        return not_found(format!("release {:?} is not a release id (64 hex digits)", q.release));
    };
    match state.fleet.borrow().reports.get(&release) {
        Some(report) => axum::Json(report.clone()).into_response(),
        None => not_found(format!("release {release} is not known to this node")),
    }
}

async fn metrics_handler(State(state): State<ApiState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        state.metrics.encode(),
    )
}
