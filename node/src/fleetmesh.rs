//! The fleet-wide mesh: how nodes of different sites, each behind its own NAT, find and
//! reach each other so that signed reports, directives, releases and roots cross sites.
//!
//! A node given bootstrap addresses (`--bootstrap`, or the origin's `index.json`) joins
//! the fleet's Kademlia network (protocol [`KAD_PROTOCOL`]) through them. It learns its
//! reachability with AutoNAT, asking only the bootstrap nodes (a site peer would dial
//! the LAN address back and call a NATed node public). An unreachable node reserves a
//! slot on each bootstrap node that is a relay (circuit relay v2) and advertises the
//! relayed address in a Kademlia provider record under one of [`BUCKETS`] fleet keys.
//! Nodes with fewer than [`REMOTE_PEERS_WANTED`] peers outside their site look up the
//! providers of a random bucket and dial a few: first through the relay, then DCUtR
//! punches a hole to a direct connection and the relayed one is closed.
//!
//! **Goals:** gossip on the fleet-wide topics crosses sites with no `--peer` and no
//! public address on devices; every number a peer can make grow is bounded (peers
//! outside the site, candidates dialled per round, sites counted); chunks never travel
//! over a relayed connection ([`FleetMesh::is_direct`], [`FleetMesh::is_relayed`]).
//!
//! **Non-goals:** a relay or bootstrap node that takes part in gossip (it sees only
//! encrypted streams it cannot forge); DHT server mode for devices behind NAT (a
//! routing table full of unreachable peers would only slow lookups down); chunk exchange
//! across sites (the WAN-dedup rules stay per site).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{ConnectionId, NetworkBehaviour, Swarm};
use libp2p::{Multiaddr, PeerId, StreamProtocol, autonat, dcutr, kad, relay};
use prometheus_client_libp2p::metrics::counter::Counter;
use prometheus_client_libp2p::metrics::family::Family;
use prometheus_client_libp2p::metrics::gauge::Gauge;
use prometheus_client_libp2p::registry::Registry;
use serde::Serialize;
use tokio::time::Instant;

/// The fleet's Kademlia protocol: an otamesh fleet is its own DHT, not the public one.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/otamesh/kad/1.0.0");
/// Fleet keys nodes advertise themselves under. A node provides under the bucket its
/// peer id hashes to; a bootstrap node keeps [`MAX_PROVIDERS_PER_BUCKET`] per bucket,
/// so 16 x 64 = 1024 nodes of a fleet can be found at once, which is plenty to pick
/// [`REMOTE_PEERS_WANTED`] from, while one lookup returns at most 64 candidates.
pub const BUCKETS: u64 = 16;
/// Providers a bootstrap node keeps per fleet key; when full, newcomers wait until a
/// record expires ([`PROVIDER_TTL`]), so a flood of fake providers cannot push real ones out.
pub const MAX_PROVIDERS_PER_BUCKET: usize = 64;
/// Addresses kept per provider record (a liar cannot make others dial a long list).
pub const MAX_PROVIDER_ADDRS: usize = 8;
/// Peers outside its own site a node dials until it has them. Gossipsub keeps a mesh of
/// `mesh_n` = 6 of the peers subscribed to a topic: with 2 to 10 site peers and 4 remote
/// ones, every node's mesh holds remote peers, so a message crosses sites in a few hops.
pub const REMOTE_PEERS_WANTED: usize = 4;
/// Peers outside its own site a node keeps at most (inbound ones included); past it,
/// the newest is closed. Together with the site this bounds a node's peer count.
pub const MAX_REMOTE_PEERS: usize = 16;
/// Candidates dialled per discovery round, at most.
const DIALS_PER_ROUND: usize = 4;
/// Discovery rounds while short of remote peers, and once there are enough.
const DISCOVER_SHORT: Duration = Duration::from_secs(2);
const DISCOVER_SATISFIED: Duration = Duration::from_secs(30);
/// A peer must have been connected this long before it can be trimmed, so a site peer
/// whose first site message is still on its way is not mistaken for a remote one.
const TRIM_GRACE: Duration = Duration::from_secs(15);
/// How long a relayed connection outlives the direct one that replaces it. Closed at
/// once, the relayed one may go down at the peer before the peer's side of the direct
/// one is up: for that instant the peer has no connection to this node, and its
/// gossipsub forgets this node's subscriptions; they are sent only when a peer is new,
/// and this node, which never saw a gap, never sends them again. The peer would then
/// never publish a report to this node (seen in the NAT test: one site's reports never
/// left it). Seconds later both sides hold the direct connection (a hole punch
/// completes within a round trip or so); [`FleetMesh::reset_deaf_peers`] catches the rest.
const RELAYED_CLOSE_GRACE: Duration = Duration::from_secs(3);
/// How long a peer may be connected without this node knowing any of its gossip
/// subscriptions (every otamesh node subscribes to the fleet topics at once; only
/// bootstrap nodes speak no gossip). Past it, the peer is disconnected and dialled
/// again: see [`FleetMesh::reset_deaf_peers`].
const SUBSCRIPTIONS_DUE: Duration = Duration::from_secs(10);
/// Sites counted separately in the reports-per-site figures; the rest are `other`.
const MAX_SITES_COUNTED: usize = 1024;
/// Bootstrap nodes kept, at most (the origin's index names them too).
const MAX_BOOTSTRAP: usize = 16;
/// How often providers are re-announced, and how long a bootstrap node keeps them: a node
/// that vanished is forgotten within the TTL.
pub const PROVIDER_REPUBLISH: Duration = Duration::from_secs(5 * 60);
/// See [`PROVIDER_REPUBLISH`].
pub const PROVIDER_TTL: Duration = Duration::from_secs(15 * 60);

/// The libp2p behaviours of the fleet mesh, composed into the node's behaviour.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    kad: kad::Behaviour<kad::store::MemoryStore>,
    autonat: autonat::v1::Behaviour,
    relay: relay::client::Behaviour,
    dcutr: dcutr::Behaviour,
}

impl std::fmt::Debug for Behaviour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("fleetmesh::Behaviour").finish_non_exhaustive()
    }
}

/// The fleet mesh behaviours for a node with `local` as its peer id; `relay` is the
/// relay client the swarm builder made beside its transport.
pub fn behaviour(local: PeerId, relay: relay::client::Behaviour) -> Behaviour {
    let mut kad = kad::Behaviour::with_config(local, kad::store::MemoryStore::new(local), kad_config());
    // Devices behind NAT stay clients: they query the DHT and advertise themselves as
    // providers, but are never put in others' routing tables. See the module docs.
    kad.set_mode(Some(kad::Mode::Client));
    let autonat = autonat::v1::Behaviour::new(local, autonat_config());
    Behaviour { kad, autonat, relay, dcutr: dcutr::Behaviour::new(local) }
}

/// Kademlia as both nodes and bootstrap nodes run it.
pub fn kad_config() -> kad::Config {
    let mut c = kad::Config::new(KAD_PROTOCOL);
    c.set_query_timeout(Duration::from_secs(30))
        .set_provider_publication_interval(Some(PROVIDER_REPUBLISH))
        .set_provider_record_ttl(Some(PROVIDER_TTL))
        // Nothing is stored as a value record; provider records only, and only those
        // a bootstrap node checked ([`admit_provider`]).
        .set_record_filtering(kad::StoreInserts::FilterBoth)
        .set_max_packet_size(64 << 10);
    c
}

/// AutoNAT as both nodes and bootstrap nodes run it.
pub fn autonat_config() -> autonat::v1::Config {
    autonat::v1::Config {
        boot_delay: Duration::from_secs(2),
        retry_interval: Duration::from_secs(20),
        refresh_interval: Duration::from_secs(5 * 60),
        throttle_server_period: Duration::from_secs(10),
        // Only the bootstrap nodes judge reachability (see the module docs).
        use_connected: false,
        confidence_max: 2,
        // The server dials the client's observed IP only (AutoNAT replaces the IP of
        // every demanded address), so private fleets (10/8 behind a VPN, test
        // namespaces) work without letting a client aim the dial elsewhere.
        only_global_ips: false,
        ..Default::default()
    }
}

/// The Kademlia key of fleet bucket `bucket`.
pub fn bucket_key(bucket: u64) -> kad::RecordKey {
    kad::RecordKey::new(&format!("/otamesh/fleet/{bucket}"))
}

/// The bucket a peer advertises itself under.
pub fn bucket_of(peer: &PeerId) -> u64 {
    let h = blake3::hash(&peer.to_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_le_bytes(b) % BUCKETS
}

/// A provider record a bootstrap node was asked to store, checked: only a fleet key,
/// only from the provider itself (Kademlia checked that), with a bounded address list.
pub fn admit_provider(mut record: kad::ProviderRecord) -> Option<kad::ProviderRecord> {
    if !(0..BUCKETS).any(|b| bucket_key(b) == record.key) {
        return None;
    }
    record.addresses.truncate(MAX_PROVIDER_ADDRS);
    Some(record)
}

/// Whether the address goes through a relay.
pub fn is_relayed_addr(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

/// `quic` or `tcp`, by the address a connection runs over.
pub fn transport_of(addr: &Multiaddr) -> &'static str {
    if addr.iter().any(|p| matches!(p, Protocol::QuicV1)) { "quic" } else { "tcp" }
}

/// A bootstrap address: it must name its peer (`/p2p/<id>`), since the relay and the
/// DHT refer to bootstrap nodes by id.
pub fn parse_bootstrap(text: &str) -> Result<(PeerId, Multiaddr), String> {
    let addr: Multiaddr = text.parse().map_err(|e| format!("not a multiaddr: {e}"))?;
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => {
            let bare: Multiaddr = addr.iter().filter(|p| !matches!(p, Protocol::P2p(_))).collect();
            Ok((peer, bare))
        }
        _ => Err("a bootstrap address ends in /p2p/<peer id> (`otamesh relay` prints it)".into()),
    }
}

/// This node's reachability, as AutoNAT found it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reachability {
    /// Not probed yet, or no bootstrap node answered.
    #[default]
    Unknown,
    /// A bootstrap node could dial this node back.
    Public,
    /// No dial-back succeeded: behind NAT or a firewall; reached through a relay.
    Private,
}

/// One connection in `/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerConnection {
    /// The peer.
    pub peer: String,
    /// The remote address.
    pub address: String,
    /// `tcp` or `quic` (of the path to the peer, or to the relay when relayed).
    pub transport: &'static str,
    /// Through a relay (a circuit), not direct.
    pub relayed: bool,
    /// A bootstrap node.
    pub bootstrap: bool,
}

/// The fleet mesh as `/status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MeshStatus {
    /// What AutoNAT found.
    pub reachability: Reachability,
    /// Relays holding a reservation for this node, by peer id.
    pub relay_reservations: Vec<String>,
    /// Peers reached directly / only through a relay.
    pub direct_peers: usize,
    /// See `direct_peers`.
    pub relayed_peers: usize,
    /// Peers a relayed connection was upgraded to a direct one with (DCUtR), by peer id.
    pub hole_punched: Vec<String>,
    /// Every connection.
    pub connections: Vec<PeerConnection>,
    /// Signed reports taken from the mesh, by the reporting device's site.
    pub reports_by_site: BTreeMap<String, u64>,
}

/// The fleet mesh's metrics, in their own registry (the transport's byte counters are
/// registered into it while the swarm is built).
#[derive(Clone, Debug)]
pub struct FleetMetrics {
    registry: Arc<OnceLock<Registry>>,
    /// 1 for the reachability AutoNAT found (`unknown`, `public`, `private`).
    pub reachability: Family<Vec<(&'static str, &'static str)>, Gauge>,
    /// Relay reservations held.
    pub reservations: Gauge,
    /// Peers by `path` (`direct`, `relayed`).
    pub peers: Family<Vec<(&'static str, &'static str)>, Gauge>,
    /// DCUtR upgrades by `result` (`direct`, `failed`).
    pub hole_punches: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// Signed reports taken from the mesh, by the reporter's `site`.
    pub reports: Family<Vec<(&'static str, String)>, Counter>,
    /// Chunk requests refused because they came over a relayed connection.
    pub relayed_chunk_requests: Counter,
    /// Messages published again ([`otamesh_core::reannounce`]), by `topic` (`reports`,
    /// `directives`).
    pub reannounced: Family<Vec<(&'static str, &'static str)>, Counter>,
}

impl FleetMetrics {
    /// Fresh metrics; their registry is finished by [`FleetMetrics::finish`].
    pub fn new() -> Self {
        Self {
            registry: Arc::new(OnceLock::new()),
            reachability: Family::default(),
            reservations: Gauge::default(),
            peers: Family::default(),
            hole_punches: Family::default(),
            reports: Family::default(),
            relayed_chunk_requests: Counter::default(),
            reannounced: Family::default(),
        }
    }

    /// Registers these metrics into `registry` (which may already hold the transport's
    /// byte counters) and keeps it for [`FleetMetrics::encode`]. Only the first call counts.
    pub fn finish(&self, mut registry: Registry) {
        registry.register(
            "otamesh_reachability",
            "1 for the reachability AutoNAT found (unknown, public, private)",
            self.reachability.clone(),
        );
        registry.register("otamesh_relay_reservations", "Relay reservations held", self.reservations.clone());
        registry.register(
            "otamesh_mesh_peers",
            "Connected peers by path (direct, relayed)",
            self.peers.clone(),
        );
        registry.register(
            "otamesh_hole_punches",
            "Relayed connections upgraded by DCUtR, by result (direct, failed)",
            self.hole_punches.clone(),
        );
        registry.register(
            "otamesh_reports_received",
            "Signed reports taken from the mesh, by the reporting device's site",
            self.reports.clone(),
        );
        registry.register(
            "otamesh_relayed_chunk_requests",
            "Chunk requests refused because they came over a relayed connection",
            self.relayed_chunk_requests.clone(),
        );
        registry.register(
            "otamesh_reannounced",
            "Own reports (re-signed) and applied directives published again, by topic",
            self.reannounced.clone(),
        );
        let _ = self.registry.set(registry);
    }

    /// The metrics in the OpenMetrics text format (with its `# EOF`), or nothing before
    /// [`FleetMetrics::finish`].
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Some(r) = self.registry.get() {
            // Invariant: writing into a String cannot fail.
            prometheus_client_libp2p::encoding::text::encode(&mut out, r).expect("encoding to a String");
        }
        out
    }
}

impl Default for FleetMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Gives the fleet mesh its behaviours inside a node's composed behaviour.
pub trait Carrier: NetworkBehaviour {
    /// The fleet mesh's part of the behaviour.
    fn fleet(&mut self) -> &mut Behaviour;
}

#[derive(Debug, Clone)]
struct Conn {
    peer: PeerId,
    address: Multiaddr,
    relayed: bool,
    since: Instant,
    /// Asked to close (a relayed connection a direct one replaced).
    closing: bool,
}

/// The fleet mesh's state, driven by the node's event loop. See the module docs.
#[derive(Debug)]
pub struct FleetMesh {
    me: PeerId,
    bootstrap: BTreeMap<PeerId, Multiaddr>,
    connections: HashMap<ConnectionId, Conn>,
    reachability: Reachability,
    /// Relays this node listens through (asked), and those that accepted.
    listening_via: BTreeSet<PeerId>,
    reservations: BTreeSet<PeerId>,
    hole_punched: BTreeSet<PeerId>,
    reports_by_site: BTreeMap<String, u64>,
    /// The provider record needs (re)announcing: addresses changed.
    provide: bool,
    next_discovery: Instant,
    metrics: FleetMetrics,
    shown: Option<MeshStatus>,
    /// Peers disconnected by [`FleetMesh::reset_deaf_peers`], dialled again once gone.
    redial: BTreeSet<PeerId>,
}

/// What [`FleetMesh::remember_bootstrap`] did with an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Remembered {
    /// A bootstrap node not known before.
    New,
    /// A better transport of a known one, in place of its address.
    Preferred,
}

impl FleetMesh {
    /// The mesh of node `me` with the bootstrap nodes given on the command line.
    pub fn new(me: PeerId, bootstrap: &[(PeerId, Multiaddr)], metrics: FleetMetrics) -> Self {
        let mut mesh = Self {
            me,
            bootstrap: BTreeMap::new(),
            connections: HashMap::new(),
            reachability: Reachability::Unknown,
            listening_via: BTreeSet::new(),
            reservations: BTreeSet::new(),
            hole_punched: BTreeSet::new(),
            reports_by_site: BTreeMap::new(),
            provide: false,
            next_discovery: Instant::now() + DISCOVER_SHORT,
            metrics,
            shown: None,
            redial: BTreeSet::new(),
        };
        mesh.set_reachability(Reachability::Unknown);
        for (peer, addr) in bootstrap {
            mesh.remember_bootstrap(*peer, addr);
        }
        mesh
    }

    /// Registers the bootstrap nodes with Kademlia and AutoNAT and dials them.
    pub fn start<B: Carrier>(&mut self, swarm: &mut Swarm<B>) {
        for (peer, addr) in self.bootstrap.clone() {
            self.join(swarm, peer, addr);
        }
    }

    /// Bootstrap addresses from the origin's index: new ones are joined (bounded).
    pub fn add_bootstrap<B: Carrier>(&mut self, swarm: &mut Swarm<B>, addrs: &[String]) {
        for text in addrs {
            let Ok((peer, addr)) = parse_bootstrap(text) else {
                tracing::debug!(address = %text, "ignored a malformed bootstrap address from the origin");
                continue;
            };
            if peer == self.me {
                continue;
            }
            match self.remember_bootstrap(peer, &addr) {
                Some(Remembered::New) => {
                    tracing::info!(%peer, %addr, "bootstrap node from the origin's index");
                    self.join(swarm, peer, addr);
                }
                // Another transport of a known bootstrap node: dialled too, so that it
                // observes this node on both.
                Some(Remembered::Preferred) => {
                    let _ = swarm.dial(addr.with(Protocol::P2p(peer)));
                }
                None => {}
            }
        }
    }

    /// Keeps one address per bootstrap node, at most [`MAX_BOOTSTRAP`] nodes, QUIC
    /// preferred for the reservation (UDP holes punch more often than TCP ones).
    fn remember_bootstrap(&mut self, peer: PeerId, addr: &Multiaddr) -> Option<Remembered> {
        let room = self.bootstrap.len() < MAX_BOOTSTRAP;
        match self.bootstrap.get_mut(&peer) {
            Some(known) if transport_of(addr) == "quic" && transport_of(known) == "tcp" => {
                *known = addr.clone();
                Some(Remembered::Preferred)
            }
            Some(_) => None,
            None if room => {
                self.bootstrap.insert(peer, addr.clone());
                Some(Remembered::New)
            }
            None => None,
        }
    }

    fn join<B: Carrier>(&mut self, swarm: &mut Swarm<B>, peer: PeerId, addr: Multiaddr) {
        let fleet = swarm.behaviour_mut().fleet();
        fleet.kad.add_address(&peer, addr.clone());
        fleet.autonat.add_server(peer, Some(addr.clone()));
        if let Err(e) = swarm.dial(addr.clone().with(Protocol::P2p(peer))) {
            tracing::debug!(%peer, error = %e, "cannot dial a bootstrap node");
        }
    }

    /// Whether chunks may be asked of `peer`: it has a direct connection.
    pub fn is_direct(&self, peer: &PeerId) -> bool {
        self.connections.values().any(|c| c.peer == *peer && !c.relayed)
    }

    /// Whether the connection goes through a relay (chunks are refused on it).
    pub fn is_relayed(&self, connection: ConnectionId) -> bool {
        self.connections.get(&connection).is_some_and(|c| c.relayed)
    }

    /// Counts a chunk request refused for coming over a relayed connection.
    pub fn refused_relayed_chunk_request(&self) {
        self.metrics.relayed_chunk_requests.inc();
    }

    /// A connection came up. A direct one to a peer also reached through a relay makes
    /// the relayed one redundant: the heartbeat closes it [`RELAYED_CLOSE_GRACE`] later,
    /// so nothing more crosses the relay.
    pub fn connected(&mut self, peer: PeerId, connection: ConnectionId, endpoint: &ConnectedPoint) {
        let relayed = endpoint.is_relayed();
        let address = match endpoint {
            ConnectedPoint::Dialer { address, .. } => address.clone(),
            ConnectedPoint::Listener { send_back_addr, local_addr } => {
                if relayed {
                    local_addr.clone()
                } else {
                    send_back_addr.clone()
                }
            }
        };
        let conn = Conn { peer, address, relayed, since: Instant::now(), closing: false };
        self.connections.insert(connection, conn);
        if !relayed && self.connections.values().any(|c| c.peer == peer && c.relayed) {
            tracing::info!(%peer, "direct connection up; the relayed one closes in a few seconds");
        }
        self.count_peers();
    }

    /// A connection went down.
    pub fn disconnected(&mut self, peer: PeerId, connection: ConnectionId) {
        self.connections.remove(&connection);
        if self.bootstrap.contains_key(&peer) && !self.connections.values().any(|c| c.peer == peer) {
            // The relay is gone: its reservation with it (re-made once it is back).
            self.listening_via.remove(&peer);
            self.reservations.remove(&peer);
            self.metrics.reservations.set(self.reservations.len() as i64);
        }
        self.count_peers();
    }

    /// Counts messages published again ([`otamesh_core::reannounce`]).
    pub fn reannounced(&self, reports: u64, directives: u64) {
        self.metrics.reannounced.get_or_create(&vec![("topic", "reports")]).inc_by(reports);
        self.metrics.reannounced.get_or_create(&vec![("topic", "directives")]).inc_by(directives);
    }

    /// A signed report (already verified and taken) came in from the mesh; counts it by
    /// the reporter's site.
    pub fn report_received(&mut self, data: &[u8]) {
        let Ok(signed) = otamesh_core::report::SignedReport::from_bytes(data) else { return };
        let site = &signed.report.site;
        let label =
            if self.reports_by_site.contains_key(site) || self.reports_by_site.len() < MAX_SITES_COUNTED {
                site.clone()
            } else {
                "other".to_owned()
            };
        self.metrics.reports.get_or_create(&vec![("site", label.clone())]).inc();
        *self.reports_by_site.entry(label).or_default() += 1;
    }

    /// A fleet mesh event from the swarm.
    pub fn on_event<B: Carrier>(&mut self, swarm: &mut Swarm<B>, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Autonat(autonat::v1::Event::StatusChanged { new, .. }) => {
                let r = match new {
                    autonat::v1::NatStatus::Public(_) => Reachability::Public,
                    autonat::v1::NatStatus::Private => Reachability::Private,
                    autonat::v1::NatStatus::Unknown => Reachability::Unknown,
                };
                tracing::info!(reachability = ?r, "AutoNAT: reachability changed");
                self.set_reachability(r);
                if r == Reachability::Private {
                    self.reserve(swarm);
                }
                self.provide = true;
            }
            BehaviourEvent::Relay(relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            }) => {
                if !renewal {
                    tracing::info!(relay = %relay_peer_id, "relay reservation accepted");
                }
                self.reservations.insert(relay_peer_id);
                self.metrics.reservations.set(self.reservations.len() as i64);
                self.provide = true;
            }
            BehaviourEvent::Relay(e) => tracing::debug!(event = ?e, "relay client"),
            BehaviourEvent::Dcutr(dcutr::Event { remote_peer_id, result }) => match result {
                Ok(_) => {
                    tracing::info!(peer = %remote_peer_id, "DCUtR: relayed connection upgraded to direct");
                    self.hole_punched.insert(remote_peer_id);
                    self.metrics.hole_punches.get_or_create(&vec![("result", "direct")]).inc();
                }
                Err(e) => {
                    tracing::info!(peer = %remote_peer_id, error = %e, "DCUtR: hole punching failed");
                    self.metrics.hole_punches.get_or_create(&vec![("result", "failed")]).inc();
                }
            },
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                result:
                    kad::QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders { providers, .. })),
                ..
            }) => self.dial_candidates(swarm, providers.into_iter().collect()),
            BehaviourEvent::Kad(e) => tracing::trace!(event = ?e, "kad"),
            BehaviourEvent::Autonat(e) => tracing::debug!(event = ?e, "AutoNAT"),
        }
    }

    /// Once a second: (re)announce, discover, trim; true when `/status` should change.
    /// `site_peers` are the peers known to be members of this node's site.
    pub fn heartbeat<B: Carrier>(&mut self, swarm: &mut Swarm<B>, site_peers: &BTreeSet<PeerId>) -> bool {
        self.close_superseded(swarm);
        if self.bootstrap.is_empty() {
            return self.changed();
        }
        let now = Instant::now();
        // A relay that dropped our reservation (restart, expiry): ask again.
        if self.reachability == Reachability::Private && self.listening_via.len() < self.relays_up() {
            self.reserve(swarm);
        }
        if self.provide && self.reachability != Reachability::Unknown {
            let key = bucket_key(bucket_of(&self.me));
            match swarm.behaviour_mut().fleet().kad.start_providing(key) {
                Ok(_) => self.provide = false,
                Err(e) => tracing::debug!(error = %e, "cannot announce this node in the fleet DHT"),
            }
        }
        let remote = self.remote_peers(site_peers);
        if now >= self.next_discovery {
            if remote.len() < REMOTE_PEERS_WANTED {
                // Two random buckets per round: in a small fleet most are empty.
                for _ in 0..2 {
                    let bucket = random_below(BUCKETS);
                    swarm.behaviour_mut().fleet().kad.get_providers(bucket_key(bucket));
                }
                self.next_discovery = now + DISCOVER_SHORT;
            } else {
                self.next_discovery = now + DISCOVER_SATISFIED;
            }
        }
        if remote.len() > MAX_REMOTE_PEERS {
            let mut trimmable: Vec<(Instant, PeerId)> = remote
                .iter()
                .filter_map(|p| {
                    let since = self.connections.values().filter(|c| c.peer == *p).map(|c| c.since).min()?;
                    (now.duration_since(since) >= TRIM_GRACE).then_some((since, *p))
                })
                .collect();
            trimmable.sort();
            for (_, peer) in trimmable.into_iter().rev().take(remote.len() - MAX_REMOTE_PEERS) {
                tracing::info!(%peer, "too many peers outside the site; closing the newest");
                let _ = swarm.disconnect_peer_id(peer);
            }
        }
        self.changed()
    }

    /// Disconnects peers connected for [`SUBSCRIPTIONS_DUE`] whose gossip subscriptions
    /// this node does not know (`unsubscribed`, bootstrap nodes aside), and dials them
    /// again once they are gone. Gossipsub sends its subscriptions only to a peer it has
    /// no other connection to; when a peer's connections to this node were replaced with
    /// an instant of none at this end only (a relayed connection closed just before the
    /// direct one was up here, two simultaneous dials over the per-peer limit), this node
    /// forgot the peer's subscriptions and the peer, which saw no gap, never sends them
    /// again: this node would never publish to it. A fresh connection on both ends
    /// exchanges them again.
    pub fn reset_deaf_peers<B: Carrier>(&mut self, swarm: &mut Swarm<B>, unsubscribed: &BTreeSet<PeerId>) {
        let now = Instant::now();
        for peer in std::mem::take(&mut self.redial) {
            if self.connections.values().any(|c| c.peer == peer) {
                self.redial.insert(peer);
            } else if let Err(e) = swarm.dial(DialOpts::peer_id(peer).build()) {
                tracing::debug!(%peer, error = %e, "cannot dial a peer again after resetting it");
            }
        }
        for peer in unsubscribed {
            if self.bootstrap.contains_key(peer) || self.redial.contains(peer) {
                continue;
            }
            let since = self.connections.values().filter(|c| c.peer == *peer).map(|c| c.since).min();
            if since.is_some_and(|t| now.duration_since(t) >= SUBSCRIPTIONS_DUE) {
                tracing::info!(%peer, "connected without known gossip subscriptions; reconnecting");
                let _ = swarm.disconnect_peer_id(*peer);
                self.redial.insert(*peer);
            }
        }
    }

    /// Closes relayed connections to peers reached directly for [`RELAYED_CLOSE_GRACE`],
    /// so nothing more crosses the relay.
    fn close_superseded<B: Carrier>(&mut self, swarm: &mut Swarm<B>) {
        let now = Instant::now();
        let settled: BTreeSet<PeerId> = self
            .connections
            .values()
            .filter(|c| !c.relayed && now.duration_since(c.since) >= RELAYED_CLOSE_GRACE)
            .map(|c| c.peer)
            .collect();
        for (id, c) in &mut self.connections {
            if c.relayed && !c.closing && settled.contains(&c.peer) {
                tracing::info!(peer = %c.peer, "direct connection settled; closing the relayed one");
                c.closing = true;
                swarm.close_connection(*id);
            }
        }
    }

    /// The mesh for `/status`.
    pub fn status(&self) -> MeshStatus {
        let mut peers: BTreeMap<PeerId, bool> = BTreeMap::new();
        for c in self.connections.values() {
            let direct = peers.entry(c.peer).or_insert(false);
            *direct |= !c.relayed;
        }
        let mut connections: Vec<PeerConnection> = self
            .connections
            .values()
            .map(|c| PeerConnection {
                peer: c.peer.to_string(),
                address: c.address.to_string(),
                transport: transport_of(&c.address),
                relayed: c.relayed,
                bootstrap: self.bootstrap.contains_key(&c.peer),
            })
            .collect();
        connections.sort_by(|a, b| (&a.peer, &a.address).cmp(&(&b.peer, &b.address)));
        MeshStatus {
            reachability: self.reachability,
            relay_reservations: self.reservations.iter().map(|p| p.to_string()).collect(),
            direct_peers: peers.values().filter(|d| **d).count(),
            relayed_peers: peers.values().filter(|d| !**d).count(),
            hole_punched: self.hole_punched.iter().map(|p| p.to_string()).collect(),
            connections,
            reports_by_site: self.reports_by_site.clone(),
        }
    }

    fn changed(&mut self) -> bool {
        let now = self.status();
        if self.shown.as_ref() == Some(&now) {
            return false;
        }
        self.shown = Some(now);
        true
    }

    fn set_reachability(&mut self, r: Reachability) {
        self.reachability = r;
        for (label, value) in [
            ("unknown", Reachability::Unknown),
            ("public", Reachability::Public),
            ("private", Reachability::Private),
        ] {
            self.metrics
                .reachability
                .get_or_create(&vec![("reachability", label)])
                .set(i64::from(r == value));
        }
    }

    fn relays_up(&self) -> usize {
        self.bootstrap
            .keys()
            .filter(|p| self.connections.values().any(|c| c.peer == **p && !c.relayed))
            .count()
    }

    /// Listens through every connected bootstrap node not yet asked (it refuses if it
    /// is not a relay, or is full).
    fn reserve<B: Carrier>(&mut self, swarm: &mut Swarm<B>) {
        for (peer, addr) in self.bootstrap.clone() {
            if self.listening_via.contains(&peer) || !self.is_direct(&peer) {
                continue;
            }
            let circuit = addr.with(Protocol::P2p(peer)).with(Protocol::P2pCircuit);
            match swarm.listen_on(circuit.clone()) {
                Ok(_) => {
                    tracing::info!(relay = %peer, "asking the relay for a reservation");
                    self.listening_via.insert(peer);
                }
                Err(e) => tracing::warn!(address = %circuit, error = %e, "cannot listen through the relay"),
            }
        }
    }

    /// Peers connected that are neither site members nor bootstrap nodes.
    fn remote_peers(&self, site_peers: &BTreeSet<PeerId>) -> BTreeSet<PeerId> {
        self.connections
            .values()
            .map(|c| c.peer)
            .filter(|p| !site_peers.contains(p) && !self.bootstrap.contains_key(p))
            .collect()
    }

    /// Dials a few providers not connected yet. Kademlia supplies their addresses (those
    /// in the provider record, relayed ones included) while the lookup runs.
    fn dial_candidates<B: Carrier>(&mut self, swarm: &mut Swarm<B>, mut candidates: Vec<PeerId>) {
        candidates.retain(|p| {
            *p != self.me
                && !self.bootstrap.contains_key(p)
                && !self.connections.values().any(|c| c.peer == *p)
        });
        shuffle(&mut candidates);
        for peer in candidates.into_iter().take(DIALS_PER_ROUND) {
            if let Err(e) = swarm.dial(DialOpts::peer_id(peer).build()) {
                tracing::debug!(%peer, error = %e, "cannot dial a fleet peer");
            } else {
                tracing::info!(%peer, "dialling a fleet peer found in the DHT");
            }
        }
    }

    fn count_peers(&self) {
        let s = self.status();
        self.metrics.peers.get_or_create(&vec![("path", "direct")]).set(s.direct_peers as i64);
        self.metrics.peers.get_or_create(&vec![("path", "relayed")]).set(s.relayed_peers as i64);
    }
}

fn random_below(n: u64) -> u64 {
    let mut b = [0u8; 8];
    // Randomness only spreads lookups over buckets; a failed read picks bucket 0.
    let _ = getrandom::fill(&mut b);
    u64::from_le_bytes(b) % n.max(1)
}

fn shuffle<T>(v: &mut [T]) {
    for i in (1..v.len()).rev() {
        let j = random_below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bootstrap_address_must_name_its_peer() {
        let id = PeerId::random();
        let (peer, addr) = parse_bootstrap(&format!("/ip4/10.0.0.1/tcp/4001/p2p/{id}")).unwrap();
        assert_eq!(peer, id);
        assert_eq!(addr.to_string(), "/ip4/10.0.0.1/tcp/4001");
        assert!(parse_bootstrap("/ip4/10.0.0.1/tcp/4001").unwrap_err().contains("/p2p/"));
        assert!(parse_bootstrap("not an address").is_err());
    }

    #[test]
    fn a_bootstrap_node_keeps_only_fleet_keys_and_few_addresses() {
        let peer = PeerId::random();
        let addrs: Vec<Multiaddr> =
            (0..100).map(|i| format!("/ip4/10.0.0.{i}/tcp/1").parse().unwrap()).collect();
        let stranger = kad::ProviderRecord::new(kad::RecordKey::new(b"/something/else"), peer, addrs.clone());
        assert!(admit_provider(stranger).is_none(), "a key outside the fleet's buckets is refused");
        let ours = kad::ProviderRecord::new(bucket_key(bucket_of(&peer)), peer, addrs);
        let kept = admit_provider(ours).unwrap();
        assert_eq!(kept.addresses.len(), MAX_PROVIDER_ADDRS, "a long address list is cut");
    }

    #[test]
    fn peers_spread_over_every_bucket() {
        let mut seen = BTreeSet::new();
        for _ in 0..2000 {
            seen.insert(bucket_of(&PeerId::random()));
        }
        assert_eq!(seen.len() as u64, BUCKETS);
    }

    #[test]
    fn relayed_and_quic_addresses_are_told_apart() {
        let relayed: Multiaddr =
            format!("/ip4/10.0.0.1/tcp/4001/p2p/{}/p2p-circuit", PeerId::random()).parse().unwrap();
        assert!(is_relayed_addr(&relayed));
        let quic: Multiaddr = "/ip4/10.0.0.1/udp/4700/quic-v1".parse().unwrap();
        assert!(!is_relayed_addr(&quic));
        assert_eq!(transport_of(&quic), "quic");
        assert_eq!(transport_of(&relayed), "tcp");
    }
}
