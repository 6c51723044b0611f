//! `otamesh relay`: a public bootstrap and relay node for a fleet whose sites sit behind
//! NAT (see [`crate::fleetmesh`]).
//!
//! It runs the fleet's Kademlia in server mode (storing provider records under the
//! fleet keys only, a bounded number per key), answers AutoNAT dial-back probes, tells
//! peers their observed address (identify, which DCUtR needs), and relays circuits
//! (circuit relay v2) between nodes that cannot reach each other yet.
//!
//! **Goals:** every resource a stranger can claim is bounded: reservations (in total,
//! per peer, per IP and rate), circuits (in total and per peer), bytes and duration per
//! circuit, provider records per key and addresses per record. The relay holds no trust
//! root and no key of the fleet: a circuit carries a Noise session between the two
//! nodes, so it sees only encrypted bytes and can forge nothing.
//!
//! **Non-goals:** gossip, chunks or any otamesh state; it can be restarted or replaced
//! at any time (nodes re-reserve and re-announce).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, autonat, identify, kad, noise, relay, tcp, yamux};
use prometheus_client_libp2p::metrics::counter::Counter;
use prometheus_client_libp2p::metrics::family::Family;
use prometheus_client_libp2p::metrics::gauge::Gauge;
use prometheus_client_libp2p::registry::Registry;
use serde::Serialize;
use tokio::sync::watch;

use crate::datadir::{DataDir, DataDirError};
use crate::fleetmesh::{self, KAD_PROTOCOL};

/// The default listen addresses of a relay: TCP and QUIC on port 4001.
pub const DEFAULT_RELAY_LISTEN: [&str; 2] = ["/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1"];
/// The default API address of a relay.
pub const DEFAULT_RELAY_API: &str = "127.0.0.1:4781";

/// `otamesh relay` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct RelayArgs {
    /// Data directory: the relay's identity (its peer id stays the same across restarts).
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Listen address, repeatable [default: /ip4/0.0.0.0/tcp/4001 and /ip4/0.0.0.0/udp/4001/quic-v1].
    #[arg(long, value_name = "MULTIADDR")]
    pub listen: Vec<String>,
    /// The public address nodes reach this relay at, repeatable [default: every
    /// non-loopback address it listens on].
    #[arg(long, value_name = "MULTIADDR")]
    pub external: Vec<String>,
    /// Address of the HTTP API (/status, /metrics) [default: 127.0.0.1:4781].
    #[arg(long, value_name = "ADDR")]
    pub api: Option<String>,
    /// Reservations held at once, at most.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub max_reservations: usize,
    /// Circuits open at once, at most.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub max_circuits: usize,
    /// Bytes one circuit may carry (both ways) before the relay closes it: enough for
    /// gossip while DCUtR punches a hole, far too little for a release.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    pub max_circuit_bytes: u64,
    /// Seconds one circuit may stay open.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    pub max_circuit_duration: u64,
}

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The data directory is unusable (or locked by another process).
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// A flag has a bad value.
    #[error("--{key} {value:?}: {reason}")]
    Invalid {
        /// The flag.
        key: &'static str,
        /// The value given.
        value: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The API address could not be bound.
    #[error("API address {addr}: {source}: pass another --api IP:PORT")]
    Api {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// libp2p could not be set up, or a listen address could not be used.
    #[error("libp2p: {0}: check --listen")]
    Network(String),
    /// The async runtime could not start or a signal handler could not be installed.
    #[error("runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

/// What the relay's `GET /status` returns.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RelayStatus {
    /// The relay's peer id.
    pub peer_id: String,
    /// Addresses it listens on.
    pub listen: Vec<String>,
    /// Addresses nodes reach it at, each with `/p2p/<peer id>`: what `--bootstrap` takes.
    pub bootstrap: Vec<String>,
    /// Peers holding a reservation.
    pub reservations: usize,
    /// Circuits open.
    pub circuits: usize,
    /// Connected peers.
    pub peers: usize,
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    relay: relay::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    autonat: autonat::v1::Behaviour,
    identify: identify::Behaviour,
}

#[derive(Clone, Debug)]
struct RelayMetrics {
    reservations: Gauge,
    circuits: Gauge,
    refused: Family<Vec<(&'static str, &'static str)>, Counter>,
}

/// Runs the relay until SIGINT or SIGTERM.
pub async fn run(args: RelayArgs) -> Result<(), RelayError> {
    let invalid = |key: &'static str, value: &str, reason: &str| RelayError::Invalid {
        key,
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    let listen: Vec<String> = if args.listen.is_empty() {
        DEFAULT_RELAY_LISTEN.iter().map(|s| s.to_string()).collect()
    } else {
        args.listen.clone()
    };
    let listen = listen
        .iter()
        .map(|a| a.parse::<Multiaddr>().map_err(|e| invalid("listen", a, &e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let external = args
        .external
        .iter()
        .map(|a| a.parse::<Multiaddr>().map_err(|e| invalid("external", a, &e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let api_text = args.api.clone().unwrap_or_else(|| DEFAULT_RELAY_API.to_owned());
    let api: SocketAddr = api_text.parse().map_err(|_| invalid("api", &api_text, "expected IP:PORT"))?;
    if args.max_circuit_bytes == 0 || args.max_circuit_duration == 0 {
        return Err(invalid("max-circuit-bytes", "0", "a circuit needs some bytes and some seconds"));
    }
    let data = DataDir::open(&args.data)?;
    let keypair = data.identity()?;
    let me = keypair.public().to_peer_id();
    let api_listener =
        tokio::net::TcpListener::bind(api).await.map_err(|source| RelayError::Api { addr: api, source })?;

    let mut registry = Registry::default();
    let net = |e: &dyn std::fmt::Display| RelayError::Network(e.to_string());
    let relay_config = relay_config(&args);
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .map_err(|e| net(&e))?
        .with_quic()
        .with_bandwidth_metrics(&mut registry)
        .with_behaviour(|key| {
            let local = key.public().to_peer_id();
            let store = kad::store::MemoryStore::with_config(
                local,
                kad::store::MemoryStoreConfig {
                    max_records: 0,
                    max_value_bytes: 0,
                    max_providers_per_key: fleetmesh::MAX_PROVIDERS_PER_BUCKET,
                    max_provided_keys: fleetmesh::BUCKETS as usize,
                },
            );
            let mut kad = kad::Behaviour::with_config(local, store, fleetmesh::kad_config());
            kad.set_mode(Some(kad::Mode::Server));
            Behaviour {
                relay: relay::Behaviour::new(local, relay_config),
                kad,
                autonat: autonat::v1::Behaviour::new(local, fleetmesh::autonat_config()),
                identify: identify::Behaviour::new(identify::Config::new("/otamesh/1".into(), key.public())),
            }
        })
        .map_err(|e| net(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build();
    for addr in &listen {
        swarm.listen_on(addr.clone()).map_err(|e| RelayError::Network(format!("{addr}: {e}")))?;
    }
    for addr in &external {
        swarm.add_external_address(addr.clone());
    }

    let metrics = RelayMetrics {
        reservations: Gauge::default(),
        circuits: Gauge::default(),
        refused: Family::default(),
    };
    registry.register("otamesh_relay_reservations", "Reservations held", metrics.reservations.clone());
    registry.register("otamesh_relay_circuits", "Circuits open", metrics.circuits.clone());
    registry.register(
        "otamesh_relay_refused",
        "Requests refused, by what (reservation, circuit, provider)",
        metrics.refused.clone(),
    );
    let (status_tx, status_rx) =
        watch::channel(RelayStatus { peer_id: me.to_string(), ..Default::default() });
    let registry = std::sync::Arc::new(registry);
    let api_task = tokio::spawn(serve_api(api_listener, status_rx, registry));
    tracing::info!(peer_id = %me, api = %api, "relay started");

    let mut status = RelayStatus { peer_id: me.to_string(), ..Default::default() };
    let mut reserved: BTreeSet<PeerId> = BTreeSet::new();
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let event = tokio::select! {
            e = swarm.select_next_some() => e,
            _ = &mut ctrl_c => break,
            _ = sigterm.recv() => break,
        };
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                let bootstrap = address.clone().with(Protocol::P2p(me));
                tracing::info!(%address, %bootstrap, "listening; nodes take the bootstrap address");
                status.listen.push(address.to_string());
                if external.is_empty() && !is_loopback(&address) {
                    swarm.add_external_address(address);
                }
            }
            SwarmEvent::ConnectionEstablished { .. } | SwarmEvent::ConnectionClosed { .. } => {}
            SwarmEvent::Behaviour(BehaviourEvent::Relay(e)) => {
                use relay::Event as R;
                match e {
                    R::ReservationReqAccepted { src_peer_id, .. } => {
                        reserved.insert(src_peer_id);
                    }
                    R::ReservationTimedOut { src_peer_id } => {
                        reserved.remove(&src_peer_id);
                    }
                    R::ReservationReqDenied { src_peer_id, .. } => {
                        tracing::info!(peer = %src_peer_id, "reservation refused (limits)");
                        metrics.refused.get_or_create(&vec![("what", "reservation")]).inc();
                    }
                    R::CircuitReqAccepted { src_peer_id, dst_peer_id } => {
                        tracing::info!(src = %src_peer_id, dst = %dst_peer_id, "circuit opened");
                        status.circuits += 1;
                    }
                    R::CircuitClosed { src_peer_id, dst_peer_id, .. } => {
                        tracing::info!(src = %src_peer_id, dst = %dst_peer_id, "circuit closed");
                        status.circuits = status.circuits.saturating_sub(1);
                    }
                    R::CircuitReqDenied { src_peer_id, dst_peer_id, .. } => {
                        tracing::info!(src = %src_peer_id, dst = %dst_peer_id, "circuit refused (limits or no reservation)");
                        metrics.refused.get_or_create(&vec![("what", "circuit")]).inc();
                    }
                    other => tracing::debug!(event = ?other, "relay"),
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::InboundRequest {
                request: kad::InboundRequest::AddProvider { record: Some(record) },
            })) => match fleetmesh::admit_provider(record) {
                Some(r) => {
                    if let Err(e) =
                        kad::store::RecordStore::add_provider(swarm.behaviour_mut().kad.store_mut(), r)
                    {
                        tracing::debug!(error = %e, "provider record not stored");
                    }
                }
                None => {
                    metrics.refused.get_or_create(&vec![("what", "provider")]).inc();
                }
            },
            // Other bootstrap nodes (Kademlia servers) join the routing table.
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) if info.protocols.contains(&KAD_PROTOCOL) => {
                for addr in info.listen_addrs.into_iter().take(fleetmesh::MAX_PROVIDER_ADDRS) {
                    swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
            }
            _ => {}
        }
        status.reservations = reserved.len();
        status.peers = swarm.connected_peers().count();
        status.bootstrap =
            swarm.external_addresses().map(|a| a.clone().with(Protocol::P2p(me)).to_string()).collect();
        metrics.reservations.set(status.reservations as i64);
        metrics.circuits.set(status.circuits as i64);
        status_tx.send_if_modified(|s| {
            let changed = s.listen != status.listen
                || s.bootstrap != status.bootstrap
                || s.reservations != status.reservations
                || s.circuits != status.circuits
                || s.peers != status.peers;
            if changed {
                *s = status.clone();
            }
            changed
        });
    }
    tracing::info!("relay stopped");
    api_task.abort();
    Ok(())
}

/// Runs the relay on a fresh runtime until SIGINT or SIGTERM.
pub fn run_blocking(args: RelayArgs) -> Result<(), RelayError> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run(args))
}

/// The relay server's limits: the flags, and fixed per-peer and per-IP bounds so that
/// one machine cannot take every slot.
fn relay_config(args: &RelayArgs) -> relay::Config {
    let per_minute = |n: u32| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
    relay::Config {
        max_reservations: args.max_reservations,
        max_reservations_per_peer: 2,
        reservation_duration: Duration::from_secs(60 * 60),
        max_circuits: args.max_circuits,
        max_circuits_per_peer: 8,
        max_circuit_duration: Duration::from_secs(args.max_circuit_duration),
        max_circuit_bytes: args.max_circuit_bytes,
        ..relay::Config::default()
    }
    .reservation_rate_per_peer(per_minute(30), Duration::from_secs(60))
    .reservation_rate_per_ip(per_minute(600), Duration::from_secs(60))
    .circuit_src_per_peer(per_minute(60), Duration::from_secs(60))
    .circuit_src_per_ip(per_minute(600), Duration::from_secs(60))
}

fn is_loopback(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback() || ip.is_unspecified(),
        Protocol::Ip6(ip) => ip.is_loopback() || ip.is_unspecified(),
        _ => false,
    })
}

#[derive(Clone)]
struct ApiState {
    status: watch::Receiver<RelayStatus>,
    registry: std::sync::Arc<Registry>,
}

async fn serve_api(
    listener: tokio::net::TcpListener,
    status: watch::Receiver<RelayStatus>,
    registry: std::sync::Arc<Registry>,
) {
    let app = Router::new()
        .route("/status", get(status_handler))
        .route("/metrics", get(metrics_handler))
        .with_state(ApiState { status, registry });
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "relay API stopped");
    }
}

async fn status_handler(State(state): State<ApiState>) -> impl IntoResponse {
    axum::Json(state.status.borrow().clone())
}

async fn metrics_handler(State(state): State<ApiState>) -> impl IntoResponse {
    let mut out = String::new();
    // Invariant: writing into a String cannot fail.
    prometheus_client_libp2p::encoding::text::encode(&mut out, &state.registry)
        .expect("encoding to a String");
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_unspecified_addresses_are_not_advertised() {
        assert!(is_loopback(&"/ip4/127.0.0.1/tcp/4001".parse().unwrap()));
        assert!(is_loopback(&"/ip4/0.0.0.0/tcp/4001".parse().unwrap()));
        assert!(!is_loopback(&"/ip4/203.0.113.7/tcp/4001".parse().unwrap()));
    }
}
