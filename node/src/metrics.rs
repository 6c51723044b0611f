//! The node's Prometheus metrics (prometheus-client), served at `GET /metrics`.
//!
//! Counters are atomics shared between the event loop, the origin and disk tasks and
//! the API server; cloning [`Metrics`] clones handles to the same values.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

/// Handles to every metric of a node.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Verified chunk bytes stored, by `source` (`lan` or `wan`).
    pub chunk_bytes: Family<Labels, Counter>,
    /// Chunks this node served to peers.
    pub chunks_served: Counter,
    /// Bytes of chunks this node served to peers.
    pub served_bytes: Counter,
    /// Connected peers.
    pub peers: Gauge,
    /// Chunks that did not match their id, from peers or the origin.
    pub bad_chunks: Counter,
    /// Raw bytes read from the origin (including bad or truncated bodies).
    pub origin_bytes: Counter,
    /// Origin requests that failed (connection, HTTP status, truncated body).
    pub origin_errors: Counter,
    /// Chunk requests to peers that failed or timed out.
    pub peer_request_failures: Counter,
    /// Gossip messages by `topic` (`releases`, `site`, `reports`, `directives`) and `result` (`accepted`,
    /// `rejected`, `ignored`).
    pub gossip_messages: Family<Labels, Counter>,
    /// Reports and directives from the mesh that were not taken, by `topic` and
    /// `reason` (see [`crate::feedback::Refusal`]).
    pub feedback_refused: Family<Labels, Counter>,
    /// Peers banned for serving a bad chunk.
    pub bans: Counter,
    /// Releases this device committed after a passing health check.
    pub installs: Counter,
    /// Installs that failed before activation.
    pub install_failures: Counter,
    /// Rollbacks to the previous slot (failed health check, crash, revoke).
    pub rollbacks: Counter,
    /// Device side effects waiting for the disk worker.
    pub device_backlog: Gauge,
    /// The version of the root of trust the node verifies against (0: a trust file).
    pub root_version: Gauge,
    /// Roots of trust offered by the origin and refused, by `reason` (see
    /// [`crate::roots::RootsError::label`]).
    pub roots_refused: Family<Labels, Counter>,
    /// Gossip messages dropped unread because their sender was graylisted
    /// ([`crate::guard::Graylisted`]).
    pub gossip_graylisted: Counter,
    /// The fleet mesh's metrics and the transport's byte counters (relayed ones apart).
    pub fleet: crate::fleetmesh::FleetMetrics,
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let chunk_bytes = Family::<Labels, Counter>::default();
        let chunks_served = Counter::default();
        let served_bytes = Counter::default();
        let peers = Gauge::default();
        let bad_chunks = Counter::default();
        let origin_bytes = Counter::default();
        let origin_errors = Counter::default();
        let peer_request_failures = Counter::default();
        let gossip_messages = Family::<Labels, Counter>::default();
        let feedback_refused = Family::<Labels, Counter>::default();
        let bans = Counter::default();
        let installs = Counter::default();
        let install_failures = Counter::default();
        let rollbacks = Counter::default();
        let root_version = Gauge::default();
        let roots_refused = Family::<Labels, Counter>::default();
        let gossip_graylisted = Counter::default();
        // prometheus-client appends `_total` to counter names.
        registry.register(
            "otamesh_chunk_bytes",
            "Verified chunk bytes stored, by source (lan or wan)",
            chunk_bytes.clone(),
        );
        registry.register("otamesh_chunks_served", "Chunks served to peers", chunks_served.clone());
        registry.register("otamesh_served_bytes", "Chunk bytes served to peers", served_bytes.clone());
        registry.register("otamesh_peers", "Connected peers", peers.clone());
        registry.register("otamesh_bad_chunks", "Chunks that did not match their id", bad_chunks.clone());
        registry.register("otamesh_origin_bytes", "Raw bytes read from the origin", origin_bytes.clone());
        registry.register("otamesh_origin_errors", "Failed origin requests", origin_errors.clone());
        registry.register(
            "otamesh_peer_request_failures",
            "Chunk requests to peers that failed or timed out",
            peer_request_failures.clone(),
        );
        registry.register(
            "otamesh_gossip_messages",
            "Gossip messages received, by topic and validation result",
            gossip_messages.clone(),
        );
        registry.register(
            "otamesh_feedback_refused",
            "Reports and directives not taken, by topic and reason (malformed, forged, not_enrolled, unknown_release, replayed, flood)",
            feedback_refused.clone(),
        );
        registry.register("otamesh_peer_bans", "Peers banned for serving a bad chunk", bans.clone());
        registry.register(
            "otamesh_installs",
            "Releases committed after a passing health check",
            installs.clone(),
        );
        registry.register(
            "otamesh_install_failures",
            "Installs that failed before activation",
            install_failures.clone(),
        );
        registry.register("otamesh_rollbacks", "Rollbacks to the previous slot", rollbacks.clone());
        let device_backlog = Gauge::default();
        registry.register(
            "otamesh_device_backlog",
            "Device side effects waiting for the disk worker",
            device_backlog.clone(),
        );
        registry.register(
            "otamesh_root_version",
            "Version of the root of trust in use (0: a trust file)",
            root_version.clone(),
        );
        registry.register(
            "otamesh_roots_refused",
            "Roots of trust refused, by reason (not_next, expired, signatures, malformed, unreadable)",
            roots_refused.clone(),
        );
        registry.register(
            "otamesh_gossip_graylisted_dropped",
            "Gossip messages dropped unread because their sender's score is below the graylist threshold",
            gossip_graylisted.clone(),
        );
        for source in ["lan", "wan"] {
            let _ = chunk_bytes.get_or_create(&vec![("source", source)]);
        }
        Self {
            registry: Arc::new(registry),
            chunk_bytes,
            chunks_served,
            served_bytes,
            peers,
            bad_chunks,
            origin_bytes,
            origin_errors,
            peer_request_failures,
            gossip_messages,
            feedback_refused,
            bans,
            installs,
            install_failures,
            rollbacks,
            device_backlog,
            root_version,
            roots_refused,
            gossip_graylisted,
            fleet: crate::fleetmesh::FleetMetrics::new(),
        }
    }

    /// Counts verified chunk bytes from `source` (`"lan"` or `"wan"`).
    pub fn chunk_bytes(&self, source: &'static str, bytes: usize) {
        self.chunk_bytes.get_or_create(&vec![("source", source)]).inc_by(bytes as u64);
    }

    /// Counts a gossip message on `topic` with validation `result`.
    pub fn gossip(&self, topic: &'static str, result: &'static str) {
        self.gossip_messages.get_or_create(&vec![("topic", topic), ("result", result)]).inc();
    }

    /// Counts a report or directive (`topic`) refused for `refusal`.
    pub fn refused(&self, topic: &'static str, refusal: crate::feedback::Refusal) {
        self.feedback_refused.get_or_create(&vec![("topic", topic), ("reason", refusal.label())]).inc();
    }

    /// Counts a gossip message on `topic` refused for `reason` (site messages, sizes and
    /// budgets: [`crate::guard`]).
    pub fn refused_because(&self, topic: &'static str, reason: &'static str) {
        self.feedback_refused.get_or_create(&vec![("topic", topic), ("reason", reason)]).inc();
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Invariant: writing into a String cannot fail.
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("encoding to a String");
        let fleet = self.fleet.encode();
        if !fleet.is_empty() {
            // One `# EOF`, at the very end.
            out.truncate(out.trim_end().trim_end_matches("# EOF").len());
            out.push_str(&fleet);
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
