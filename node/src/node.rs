//! The node daemon: one `tokio::select!` loop that translates between libp2p, the
//! origin, the disk and the core's fetch planners.
//!
//! Swarm events, results of spawned origin and disk tasks, and the planners' next
//! timeout become planner inputs; planner outputs become chunk requests, origin
//! downloads and bans. Nothing in the loop blocks: disk writes and hashing run on the
//! blocking pool and report back through one bounded channel.
//!
//! **Goals:** every chunk verified before it is stored or served; bytes from the
//! network never panic the node; a full disk, an unreachable origin or a misbehaving
//! peer is logged and survived.
//!
//! The device's decisions run inside the loop ([`crate::device`], the core device
//! machine): the loop hands it verified manifests, reports and directives, and fetches a
//! release only when the device asks for it (its wave has come); the device's signed
//! reports go out on the reports topic. Its blocking side effects (state writes, slot
//! assembly, hooks) run on the [`crate::disk`] worker and come back as inputs.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageAuthenticity, MessageId};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, identify, mdns, noise, ping, tcp, yamux};
use otamesh_core::chunking::VerifiedChunk;
use otamesh_core::fetch::{Output, Planner, PlannerConfig, Source};
use otamesh_core::lifecycle::Phase;
use otamesh_core::manifest::SignedManifest;
use otamesh_core::report::Outcome;
use otamesh_core::{ChunkId, DeviceId, Millis, ReleaseId, TrustRoot, VerifiedManifest, codec};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::api::{Fleet, ReleaseStatus, Status};
use crate::clock::now_ms;
use crate::config::NodeConfig;
use crate::datadir::{DataDir, DataDirError, Expected, device_id, device_secret, peer_device};
use crate::device::{Device, Event as DeviceEvent, Shown};
use crate::disk::{Disk, Done, Effect, Hooks};
use crate::feedback::Refusal;
use crate::ingest::{Stored, Writer};
use crate::intake::Intake;
use crate::metrics::Metrics;
use crate::origin::{Origin, OriginError};
use crate::site::Site;
use crate::store::Store;
use crate::wire::{
    self, CHUNK_PROTOCOL, ChunkCodec, DIRECTIVES_TOPIC, Have, Item, RELEASES_TOPIC, REPORTS_TOPIC,
    ROOTS_TOPIC, Request, Response, SiteMessage, Want,
};

/// How often a node gossips its have-bitfields even when nothing changed.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// The shortest gap between two have-bitfield messages.
const HAVE_MIN_GAP: Duration = Duration::from_millis(300);
/// Manifests asked of site peers per site message naming releases not heard of, at most.
const MANIFESTS_ASKED_PER_MESSAGE: usize = 4;
/// Manifest requests outstanding at once, at most.
const MAX_MANIFESTS_ASKED: usize = 64;
/// The longest wait before an unconnected static peer is dialled again.
const REDIAL: Duration = Duration::from_secs(3);
/// The first wait before a static peer that refused or dropped a connection is dialled
/// again; it doubles per failure up to [`REDIAL`]. Short, because a site powering up
/// together starts its devices a moment apart: a device whose peers were not listening
/// yet and that waited the whole [`REDIAL`] would settle alone and fetch from the origin
/// chunks its site fetches too (measured: up to 1.3x the release per site).
const REDIAL_FIRST: Duration = Duration::from_millis(250);
/// Capacity of the channel from spawned tasks to the loop.
const INTERNAL_QUEUE: usize = 1024;
/// How long a release announcement is retried while nobody is subscribed.
const ANNOUNCE_RETRY_FOR: Millis = 120_000;
/// Roots heard from peers waiting for the task that follows the chain, at most.
const ROOTS_HEARD_QUEUE: usize = 16;
/// Capacity of the channel from the loop to the disk worker (more wait in the device).
const DISK_QUEUE: usize = 64;

/// Why the node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The data directory is unusable (or locked by another process).
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// The trust file is unusable.
    #[error(transparent)]
    Trust(#[from] crate::keys::KeyFileError),
    /// The root-of-trust chain in the data directory is unusable.
    #[error(transparent)]
    Roots(#[from] crate::roots::RootsError),
    /// The origin client could not be built.
    #[error(transparent)]
    Origin(#[from] OriginError),
    /// The API address could not be bound.
    #[error("API address {addr}: {source}: pass another --api IP:PORT")]
    Api {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A listen address could not be used.
    #[error("cannot listen on {addr}: {reason}: pass another --listen")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// What went wrong.
        reason: String,
    },
    /// libp2p could not be set up.
    #[error("libp2p setup: {0}")]
    Network(String),
    /// The async runtime could not start or a signal handler could not be installed.
    #[error("runtime: {0}")]
    Runtime(#[from] std::io::Error),
    /// The device state (database, slots) is unusable.
    #[error(transparent)]
    Disk(#[from] crate::disk::DiskError),
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    // The limits come first: a connection they deny must not reach the other behaviours,
    // or request-response keeps a connection that never was and sends requests into it.
    limits: libp2p::connection_limits::Behaviour,
    ip_limit: crate::guard::IpLimit,
    gossipsub: crate::guard::Graylisted,
    chunks: request_response::Behaviour<ChunkCodec>,
    identify: identify::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    fleet: crate::fleetmesh::Behaviour,
    /// Wakes every connection each [`PING_INTERVAL`]. Gossipsub queues a peer's messages
    /// once for all its connections, and a connection's handler looks at that queue only
    /// when its connection is woken. With a relayed and a direct connection to a peer,
    /// the relayed one often carries all gossip; when the relay dies, that connection
    /// hangs until it times out, and the direct one, never woken, leaves the messages
    /// queued until they expire (seen in the NAT test: one site's failure reports never
    /// left it, for 15 s, and a gate elsewhere let a bad release in). A ping a second
    /// bounds that stall to a second, well inside gossipsub's 5 s publish deadline.
    ping: ping::Behaviour,
}

/// How often every connection is pinged (see [`Behaviour::ping`]).
const PING_INTERVAL: Duration = Duration::from_secs(1);

impl crate::fleetmesh::Carrier for Behaviour {
    fn fleet(&mut self) -> &mut crate::fleetmesh::Behaviour {
        &mut self.fleet
    }
}

/// What became of a batch of chunks from one source.
struct Ingested {
    source: Source,
    /// Checked and stored, with their lengths.
    stored: Vec<(ChunkId, usize)>,
    /// Bytes that did not match their id.
    bad: Vec<ChunkId>,
    /// Not fetched (origin error) or not stored (disk full ...), with why.
    failed: Vec<(ChunkId, String)>,
}

impl Ingested {
    fn new(source: Source) -> Self {
        Self { source, stored: Vec::new(), bad: Vec::new(), failed: Vec::new() }
    }
}

/// Results of spawned tasks, back to the loop.
enum Internal {
    /// A batch of chunks from one source was checked and stored, as far as it went.
    Ingested(Ingested),
    /// A chunk (or manifest) was read for a peer.
    Serve { channel: ResponseChannel<Response>, response: Response, served: usize },
    /// The origin listed a release this node does not know; here is its manifest.
    OriginManifest { bytes: Vec<u8>, url: String },
    /// The origin lists a directive this node has not seen; here it is.
    OriginDirective { bytes: Vec<u8>, url: String },
    /// An origin poll finished.
    PollDone,
    /// The disk worker finished an effect the device waits for, or the slots changed.
    Disk(Done),
    /// The origin's index names bootstrap nodes of the fleet mesh.
    Bootstrap(Vec<String>),
}

struct Release {
    manifest: VerifiedManifest,
    planner: Planner,
    /// Chunk lengths from the manifest, to bound downloads.
    lengths: HashMap<ChunkId, u32>,
    indexed: bool,
}

/// A peer given with `--peer`, dialled until connected and again after it drops.
#[derive(Debug)]
struct StaticPeer {
    addr: Multiaddr,
    /// Learnt from the first connection dialled to `addr` (or given in it).
    id: Option<PeerId>,
    /// When it may be dialled next.
    due: Instant,
    /// The wait after the next dial: [`REDIAL_FIRST`], doubling up to [`REDIAL`].
    wait: Duration,
}

struct PendingRequest {
    id: u64,
    peer: DeviceId,
    want: Want,
}

/// Runs a node until SIGINT or SIGTERM.
pub async fn run(config: NodeConfig) -> Result<(), NodeError> {
    let data = DataDir::open(&config.data)?;
    data.reap_previous_hook()?;
    let keypair = data.identity()?;
    let roots = crate::roots::Roots::open(&config.trust, data.root())?;
    let trust = roots.trust().clone();
    // Invariant: DataDir::identity only returns ed25519 keypairs.
    let me = device_id(&keypair.public()).expect("identity is ed25519");
    let metrics = Metrics::new();
    let origin = match &config.origin {
        Some(url) => Some(Origin::new(url, config.wan_rate, metrics.clone())?),
        None => None,
    };
    let (roots_heard, heard_rx) = mpsc::channel(ROOTS_HEARD_QUEUE);
    let trust_updates =
        crate::roots::follow(roots, origin.clone(), metrics.clone(), config.poll_interval, heard_rx);
    let api_listener =
        crate::api::bind(config.api).await.map_err(|source| NodeError::Api { addr: config.api, source })?;
    let secret = device_secret(&keypair);
    let expected = Expected { trust: &trust, key: &secret, site: &config.site, class: &config.class };
    let mut device_config = config.device.clone();
    device_config.enrolment = data.enrolment(expected)?.map(|e| e.signed().clone());
    if device_config.enrolment.is_none() {
        tracing::warn!(
            data = %config.data.display(),
            "this device is not enrolled: it installs updates but its reports are not sent (others would refuse them); enrol it with `otamesh enroll`"
        );
    }
    let enrolled = device_config.enrolment.is_some();
    let enrolment = device_config.enrolment.clone();
    let hooks = Hooks {
        install: device_config.install_hook.clone(),
        health_check: device_config.health_check.clone(),
    };
    let (disk, restored) = Disk::open(&config.data, data.store().clone(), hooks, now_ms())?;
    let saved = saved_manifests(&data, &trust, restored.last.as_ref().map(|(r, _)| *r));
    let swarm = build_swarm(keypair, &config.site, config.mdns, &metrics.fleet)?;
    let mesh =
        crate::fleetmesh::FleetMesh::new(*swarm.local_peer_id(), &config.bootstrap, metrics.fleet.clone());
    let (tx, rx) = mpsc::channel(INTERNAL_QUEUE);
    let (status_tx, status_rx) = watch::channel(Status::default());
    let (fleet_tx, fleet_rx) = watch::channel(Fleet::default());
    let (disk_tx, disk_rx) = std::sync::mpsc::sync_channel::<Effect>(DISK_QUEUE);
    let disk_out = tx.clone();
    let disk_thread =
        crate::disk::spawn(disk, disk_rx, move |done| disk_out.blocking_send(Internal::Disk(done)).is_ok());
    let mut device = Device::new(now_ms(), device_config, secret, restored, saved, disk_tx);
    // A release staged before a restart installs only once the site's claims settled.
    device.site(now_ms(), otamesh_core::site::WAIT);
    device.resume(now_ms());
    let (writer, writer_thread) = Writer::start(data.store().clone())
        .map_err(|e| NodeError::Network(format!("cannot start the chunk writer: {e}")))?;
    let mut node = Node {
        site_topic: IdentTopic::new(wire::site_topic(&config.site)),
        releases_topic: IdentTopic::new(RELEASES_TOPIC),
        reports_topic: IdentTopic::new(REPORTS_TOPIC),
        directives_topic: IdentTopic::new(DIRECTIVES_TOPIC),
        device,
        shown: None,
        intake: Intake::new(config.class.clone(), fleet_tx),
        enrolled,
        enrolment,
        guard: crate::guard::Topics::default(),
        site: Site::new(&config.site, me),
        store: data.store().clone(),
        writer,
        config,
        swarm,
        me,
        trust,
        trust_updates,
        roots_heard,
        roots_topic: IdentTopic::new(ROOTS_TOPIC),
        data,
        origin,
        metrics: metrics.clone(),
        tx,
        status_tx,
        releases: BTreeMap::new(),
        requests: HashMap::new(),
        next_request_id: 1,
        connected: BTreeSet::new(),
        static_peers: Vec::new(),
        lan_redial_due: Instant::now(),
        announce_queue: VecDeque::new(),
        manifests_asked: BTreeSet::new(),
        have_dirty: true,
        last_have: Instant::now() - HEARTBEAT,
        polling: false,
        listen_addrs: Vec::new(),
        rejected_from_origin: BTreeSet::new(),
        mesh,
        reannounce: otamesh_core::reannounce::Reannounce::new(),
    };
    node.start()?;
    let api = tokio::spawn(crate::api::serve(api_listener, status_rx, fleet_rx, metrics));
    let result = node.run_loop(rx).await;
    api.abort();
    // Closing the effect channel ends the disk worker after its current effect; a hook
    // in progress is not interrupted half-way (its state is persisted).
    drop(node);
    let _ = tokio::task::spawn_blocking(move || disk_thread.join()).await;
    let _ = tokio::task::spawn_blocking(move || writer_thread.join()).await;
    tracing::info!("node stopped");
    result
}

fn build_swarm(
    keypair: libp2p::identity::Keypair,
    site: &str,
    with_mdns: bool,
    fleet_metrics: &crate::fleetmesh::FleetMetrics,
) -> Result<Swarm<Behaviour>, NodeError> {
    let net = |e: &dyn std::fmt::Display| NodeError::Network(e.to_string());
    let mut transport_metrics = libp2p::metrics::Registry::default();
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .map_err(|e| net(&e))?
        .with_quic()
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| net(&e))?
        .with_bandwidth_metrics(&mut transport_metrics)
        .with_behaviour(|key, relay_client| {
            let mut gossipsub = gossipsub::Behaviour::new(
                MessageAuthenticity::Signed(key.clone()),
                gossip_config().map_err(|e| e.to_string())?,
            )?;
            let (params, thresholds) = peer_score(site);
            let graylist = thresholds.graylist_threshold;
            gossipsub.with_peer_score(params, thresholds)?;
            let rr = request_response::Config::default()
                .with_request_timeout(Duration::from_secs(60))
                .with_max_concurrent_streams(1024);
            let chunks = request_response::Behaviour::with_codec(
                ChunkCodec,
                [(CHUNK_PROTOCOL, ProtocolSupport::Full)],
                rr,
            );
            let identify = identify::Behaviour::new(identify::Config::new("/otamesh/1".into(), key.public()));
            let mdns = if with_mdns {
                Some(mdns::tokio::Behaviour::new(mdns::Config::default(), key.public().to_peer_id())?)
            } else {
                None
            };
            let fleet = crate::fleetmesh::behaviour(key.public().to_peer_id(), relay_client);
            Ok(Behaviour {
                limits: crate::guard::connection_limits(),
                ip_limit: crate::guard::IpLimit::default(),
                gossipsub: crate::guard::Graylisted::new(gossipsub, graylist),
                chunks,
                identify,
                mdns: Toggle::from(mdns),
                fleet,
                ping: ping::Behaviour::new(ping::Config::new().with_interval(PING_INTERVAL)),
            })
        })
        .map_err(|e| net(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build();
    fleet_metrics.finish(transport_metrics);
    Ok(swarm)
}

/// Gossipsub with explicit validation and room for the largest manifest.
pub fn gossip_config() -> Result<gossipsub::Config, gossipsub::ConfigBuilderError> {
    gossipsub::ConfigBuilder::default()
        .validation_mode(gossipsub::ValidationMode::Strict)
        .validate_messages()
        // The codec caps a manifest at MAX_MESSAGE_BYTES; leave room for the envelope.
        .max_transmit_size(codec::MAX_MESSAGE_BYTES + (64 << 10))
        .heartbeat_initial_delay(Duration::from_millis(500))
        .heartbeat_interval(Duration::from_secs(1))
        .message_id_fn(message_id)
        .build()
}

/// Gossip message ids. Releases, reports, directives and roots are content-addressed:
/// the same signed message announced by many nodes is one message. A site message also
/// names its author: two members in the same state (say, both holding nothing at a cold
/// start) send identical bytes, and must not collapse into one, or each loses the other.
fn message_id(m: &gossipsub::Message) -> MessageId {
    let mut h = blake3::Hasher::new();
    if m.topic.as_str().starts_with(wire::SITE_TOPIC_PREFIX)
        && let Some(author) = &m.source
    {
        h.update(&author.to_bytes());
    }
    h.update(&m.data);
    MessageId::from(h.finalize().to_hex().to_string())
}

/// Gossipsub peer scoring. Only invalid messages count against a peer (P4, squared):
/// a peer whose messages were rejected twice is no longer gossiped to, three times and it
/// is ignored altogether, until the count decays (by 10% a second). Nothing else is
/// scored, so quiet topics, peers sharing an address (containers, NAT, loopback) and
/// honest forwarders cost nothing: a node forwards only what it validated.
fn peer_score(site: &str) -> (gossipsub::PeerScoreParams, gossipsub::PeerScoreThresholds) {
    let topic = gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.0,
        first_message_deliveries_weight: 0.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -10.0,
        invalid_message_deliveries_decay: 0.9,
        ..Default::default()
    };
    let topics = [RELEASES_TOPIC, REPORTS_TOPIC, DIRECTIVES_TOPIC, ROOTS_TOPIC, &wire::site_topic(site)]
        .map(|t| (IdentTopic::new(t).hash(), topic.clone()))
        .into();
    let params =
        gossipsub::PeerScoreParams { topics, ip_colocation_factor_weight: 0.0, ..Default::default() };
    (params, gossipsub::PeerScoreThresholds::default())
}

struct Node {
    config: NodeConfig,
    reports_topic: IdentTopic,
    directives_topic: IdentTopic,
    /// The device's decisions (the core machine) and every verified manifest for this
    /// class.
    device: Device,
    /// The device's state and slots as `/status` last showed them.
    shown: Option<Shown>,
    /// Reports and directives from the fleet, and the fleet view they build.
    intake: Intake,
    /// This device has a valid enrolment, so its reports are sent.
    enrolled: bool,
    /// The site's members and install slot holders, from site gossip.
    site: Site,
    /// This device's enrolment, carried by its site messages (none: it sends none).
    enrolment: Option<otamesh_core::enrolment::SignedEnrolment>,
    /// Size limits and per-peer budgets of gossip topics.
    guard: crate::guard::Topics,
    swarm: Swarm<Behaviour>,
    me: DeviceId,
    trust: TrustRoot,
    /// Newer roots of trust adopted from the origin or from peers ([`crate::roots::follow`]).
    trust_updates: watch::Receiver<crate::roots::Adopted>,
    /// Roots peers gossiped, to the task that follows the chain.
    roots_heard: mpsc::Sender<Vec<u8>>,
    roots_topic: IdentTopic,
    data: DataDir,
    store: Store,
    /// Stores fetched chunks durably, in group commits.
    writer: Writer,
    origin: Option<Origin>,
    metrics: Metrics,
    tx: mpsc::Sender<Internal>,
    status_tx: watch::Sender<Status>,
    site_topic: IdentTopic,
    releases_topic: IdentTopic,
    releases: BTreeMap<ReleaseId, Release>,
    requests: HashMap<OutboundRequestId, PendingRequest>,
    next_request_id: u64,
    connected: BTreeSet<PeerId>,
    /// Static peers: the address to dial, the peer id it turned out to have, and when
    /// to dial it again.
    static_peers: Vec<StaticPeer>,
    /// When LAN peers found by mDNS and not connected are dialled next.
    lan_redial_due: Instant,
    /// Manifests, reports and directives to publish once someone is subscribed to their
    /// topic (retried for `ANNOUNCE_RETRY_FOR`).
    announce_queue: VecDeque<(IdentTopic, Vec<u8>, Millis)>,
    manifests_asked: BTreeSet<ReleaseId>,
    have_dirty: bool,
    last_have: Instant,
    polling: bool,
    listen_addrs: Vec<Multiaddr>,
    /// Origin manifests that failed verification, so they are not fetched every poll.
    rejected_from_origin: BTreeSet<String>,
    /// Peers at other sites, across NATs ([`crate::fleetmesh`]).
    mesh: crate::fleetmesh::FleetMesh,
    /// This device's reports and the directives it applied, published again in rounds so
    /// that what gossip lost still crosses sites ([`otamesh_core::reannounce`]).
    reannounce: otamesh_core::reannounce::Reannounce,
}

// A round re-sends up to MAX_RELEASES reports of this device; rounds that far apart
// stay within the per-device budget every receiver enforces, so none is refused.
const _: () = assert!(
    otamesh_core::reannounce::MIN_GAP
        >= otamesh_core::reannounce::MAX_RELEASES as u64 * crate::feedback::REPORT_REFILL_MS
);

impl Node {
    fn start(&mut self) -> Result<(), NodeError> {
        self.swarm.behaviour_mut().gossipsub.count_into(self.metrics.gossip_graylisted.clone());
        if let Some(warning) = crate::guard::file_limit_warning() {
            tracing::warn!("{warning}");
        }
        let gs = &mut self.swarm.behaviour_mut().gossipsub;
        for topic in [
            &self.releases_topic,
            &self.site_topic,
            &self.reports_topic,
            &self.directives_topic,
            &self.roots_topic,
        ] {
            gs.subscribe(topic).map_err(|e| NodeError::Network(e.to_string()))?;
        }
        for addr in self.config.listen.clone() {
            self.swarm
                .listen_on(addr.clone())
                .map_err(|e| NodeError::Listen { addr: addr.clone(), reason: e.to_string() })?;
        }
        for addr in self.config.peers.clone() {
            let peer = addr.iter().find_map(|p| if let Protocol::P2p(id) = p { Some(id) } else { None });
            self.static_peers.push(StaticPeer { addr, id: peer, due: Instant::now(), wait: REDIAL_FIRST });
        }
        self.dial_static_peers();
        self.mesh.start(&mut self.swarm);
        self.on_device();
        tracing::info!(
            device = %self.me,
            peer_id = %self.swarm.local_peer_id(),
            site = %self.config.site,
            class = %self.config.class,
            api = %self.config.api,
            origin = self.config.origin.as_deref().unwrap_or("none"),
            "node started"
        );
        Ok(())
    }

    async fn run_loop(&mut self, mut rx: mpsc::Receiver<Internal>) -> Result<(), NodeError> {
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut redial = tokio::time::interval(REDIAL_FIRST);
        redial.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut poll = tokio::time::interval(self.config.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                Some(msg) = rx.recv() => self.on_internal(msg),
                _ = tokio::time::sleep_until(deadline) => {
                    let now = now_ms();
                    for r in self.releases.values_mut() {
                        r.planner.handle_timeout(now);
                    }
                    self.device.timeout(now);
                    self.publish_reannounced();
                }
                _ = heartbeat.tick() => self.on_heartbeat(),
                _ = redial.tick() => self.dial_static_peers(),
                _ = poll.tick() => self.poll_origin(),
                Ok(()) = self.trust_updates.changed() => {
                    // A new root: what the old one refused may verify now; peers hear it.
                    let adopted = self.trust_updates.borrow_and_update().clone();
                    self.trust = adopted.trust;
                    self.site.trust_changed();
                    self.rejected_from_origin.clear();
                    if let Some(bytes) = adopted.signed {
                        self.announce_queue.push_back((self.roots_topic.clone(), bytes, now_ms()));
                        self.flush_announcements();
                    }
                }
                _ = &mut ctrl_c => { tracing::info!("SIGINT: shutting down"); return Ok(()); }
                _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); return Ok(()); }
            }
            self.on_device();
            self.drain_planners();
            if self.have_dirty && self.last_have.elapsed() >= HAVE_MIN_GAP {
                self.publish_have();
            }
        }
    }

    fn next_deadline(&self) -> Instant {
        let now = now_ms();
        let next = self
            .releases
            .values()
            .filter_map(|r| r.planner.poll_timeout())
            .chain(self.device.poll_timeout())
            .chain(self.site.slots.poll_timeout())
            .chain(self.reannounce.poll_timeout())
            .min();
        match next {
            Some(t) => Instant::now() + Duration::from_millis(t.saturating_sub(now)),
            // Nothing pending on time: wake on the heartbeat anyway.
            None => Instant::now() + Duration::from_secs(3600),
        }
    }

    // ---- swarm ----

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                self.listen_addrs.push(address);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, connection_id, endpoint, num_established, ..
            } => {
                self.mesh.connected(peer_id, connection_id, &endpoint);
                if num_established.get() == 1 {
                    tracing::info!(peer = %peer_id, addr = %endpoint.get_remote_address(), "peer connected");
                }
                self.connected.insert(peer_id);
                if endpoint.is_dialer() {
                    let addr = strip_p2p(endpoint.get_remote_address());
                    for p in &mut self.static_peers {
                        if strip_p2p(&p.addr) == addr {
                            p.id = Some(peer_id);
                            p.wait = REDIAL_FIRST;
                        }
                    }
                }
                self.metrics.peers.set(self.connected.len() as i64);
            }
            SwarmEvent::ConnectionClosed { peer_id, connection_id, num_established, .. }
                if num_established > 0 =>
            {
                self.mesh.disconnected(peer_id, connection_id);
            }
            SwarmEvent::ConnectionClosed { peer_id, connection_id, num_established: 0, cause, .. } => {
                self.mesh.disconnected(peer_id, connection_id);
                tracing::info!(peer = %peer_id, cause = ?cause, "peer disconnected");
                self.connected.remove(&peer_id);
                for p in self.static_peers.iter_mut().filter(|p| p.id == Some(peer_id)) {
                    p.due = Instant::now() + p.wait;
                }
                self.metrics.peers.set(self.connected.len() as i64);
                if let Some(device) = peer_device(&peer_id) {
                    self.member_left(device);
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(peer = ?peer_id, %error, "dial failed");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(e)) => self.on_gossip(e),
            SwarmEvent::Behaviour(BehaviourEvent::Chunks(e)) => self.on_chunk_event(e),
            SwarmEvent::Behaviour(BehaviourEvent::Fleet(e)) => self.mesh.on_event(&mut self.swarm, e),
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    if !self.connected.contains(&peer) {
                        tracing::info!(%peer, %addr, "mDNS: discovered");
                        let _ = self.swarm.dial(addr.with(Protocol::P2p(peer)));
                    }
                }
            }
            _ => {}
        }
    }

    /// Dials each static peer that is not connected and due, and doubles its wait.
    fn dial_static_peers(&mut self) {
        let now = Instant::now();
        for p in &mut self.static_peers {
            if p.due > now || p.id.is_some_and(|id| self.connected.contains(&id)) {
                continue;
            }
            if let Err(e) = self.swarm.dial(p.addr.clone()) {
                tracing::debug!(addr = %p.addr, error = %e, "cannot dial static peer");
            }
            p.due = now + p.wait;
            p.wait = (p.wait * 2).min(REDIAL);
        }
        // LAN peers mDNS found and that are not connected, every REDIAL: two nodes
        // dialling each other at once can end with neither connection, and mDNS
        // reports a peer only once.
        if self.lan_redial_due > now {
            return;
        }
        self.lan_redial_due = now + REDIAL;
        let lan: BTreeSet<PeerId> = (self.swarm.behaviour().mdns.as_ref())
            .map(|m| m.discovered_nodes().copied().collect())
            .unwrap_or_default();
        for peer in lan.into_iter().filter(|p| !self.connected.contains(p)) {
            let _ = self.swarm.dial(peer);
        }
    }

    // ---- gossip ----

    fn on_gossip(&mut self, event: gossipsub::Event) {
        let gossipsub::Event::Message { propagation_source, message_id, message } = event else {
            if let gossipsub::Event::Subscribed { peer_id, topic } = event {
                self.flush_announcements();
                // A peer not (yet) known as a member of this site: most likely a new link
                // to another site, over which what was lost before can now cross.
                let member = self.site.members().any(|d| self.site.peer(*d) == Some(peer_id));
                if topic == self.reports_topic.hash() && !member {
                    self.reannounce.handle_peer_joined(now_ms());
                }
            }
            return;
        };
        let topic_name = [
            (&self.releases_topic, "releases"),
            (&self.site_topic, "site"),
            (&self.reports_topic, "reports"),
            (&self.directives_topic, "directives"),
            (&self.roots_topic, "roots"),
        ]
        .into_iter()
        .find_map(|(t, name)| (t.hash() == message.topic).then_some(name))
        .unwrap_or("other");
        let refused = self.guard.refuse(now_ms(), topic_name, propagation_source, &message.data);
        let acceptance = if let Some(refusal) = refused {
            self.metrics.refused_because(topic_name, refusal);
            if refusal == "oversize" { MessageAcceptance::Reject } else { MessageAcceptance::Ignore }
        } else {
            match topic_name {
                "releases" => self.on_release_message(&message.data, propagation_source),
                "site" => self.on_site_message(message.source, &message.data),
                "reports" => self.on_report_message(&message.data, propagation_source),
                "directives" => self.on_directive_message(&message.data, propagation_source),
                "roots" => self.on_root_message(&message.data),
                _ => MessageAcceptance::Ignore,
            }
        };
        self.metrics.gossip(
            topic_name,
            match acceptance {
                MessageAcceptance::Accept => "accepted",
                MessageAcceptance::Reject => "rejected",
                MessageAcceptance::Ignore => "ignored",
            },
        );
        self.swarm.behaviour_mut().gossipsub.report_message_validation_result(
            &message_id,
            &propagation_source,
            acceptance,
        );
    }

    fn on_release_message(&mut self, data: &[u8], from: PeerId) -> MessageAcceptance {
        let signed = match SignedManifest::from_bytes(data) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%from, error = %e, "rejected a malformed manifest from gossip");
                return MessageAcceptance::Reject;
            }
        };
        match self.trust.verify_manifest(signed, now_ms()) {
            Ok(v) => {
                self.adopt(v, false);
                MessageAcceptance::Accept
            }
            // Expiry depends on this node's clock (devices without a battery-backed
            // clock can be far off): not forwarded, but the sender is not scored down.
            Err(e @ otamesh_core::trust::VerifyError::Expired { .. }) => {
                tracing::warn!(%from, error = %e, "ignored an expired manifest from gossip; not forwarded");
                MessageAcceptance::Ignore
            }
            Err(e) => {
                tracing::warn!(%from, error = %e, "rejected a manifest from gossip; not forwarded");
                MessageAcceptance::Reject
            }
        }
    }

    fn on_site_message(&mut self, source: Option<PeerId>, data: &[u8]) -> MessageAcceptance {
        let now = now_ms();
        let (peer, device, msg) = match crate::guard::site_message(
            &mut self.site,
            now,
            source,
            data,
            &self.trust,
        ) {
            Ok(admitted) => admitted,
            Err(refusal) => {
                self.metrics.refused_because("site", refusal.label());
                tracing::debug!(author = ?source, reason = refusal.label(), "site message refused; not forwarded");
                return if refusal.is_invalid() {
                    MessageAcceptance::Reject
                } else {
                    MessageAcceptance::Ignore
                };
            }
        };
        if device == self.me {
            return MessageAcceptance::Ignore;
        }
        let entry = self.site.heard(device, peer, now, msg.slot);
        let connected = self.connected.contains(&peer);
        let mut unknown = Vec::new();
        for Have { release, bits, fetching } in &msg.haves {
            match self.releases.get_mut(release) {
                // Only directly connected peers can be asked for chunks.
                Some(r) if connected => {
                    if let Err(e) = r.planner.handle_peer_have(now, device, bits, fetching) {
                        tracing::debug!(%peer, error = %e, "ignored a have-bitfield");
                        continue;
                    }
                    if entry.releases.insert(*release) {
                        tracing::debug!(%release, %device, "site member fetches this release too");
                    }
                }
                Some(_) => {}
                None => unknown.push(*release),
            }
        }
        // A peer fetches a release this node has not heard of: ask it for the manifest,
        // a few per message and a bounded number at a time, so one message naming
        // thousands of releases costs a few requests, not thousands.
        if connected && msg.class == self.config.class {
            for release in unknown.into_iter().take(MANIFESTS_ASKED_PER_MESSAGE) {
                if self.manifests_asked.len() < MAX_MANIFESTS_ASKED && self.manifests_asked.insert(release) {
                    self.send_request(peer, device, Want::Manifest(release));
                }
            }
        }
        MessageAcceptance::Accept
    }

    /// A root of trust from gossip: malformed is rejected; one not newer than the root
    /// in force is ignored; a newer one goes to the task that follows the chain, which
    /// adopts it only if it is the next version, validly signed. It is not forwarded
    /// now: once adopted, this node announces it itself.
    fn on_root_message(&mut self, data: &[u8]) -> MessageAcceptance {
        use crate::roots::{Gossiped, judge_gossip};
        let current = self.trust_updates.borrow().version;
        match judge_gossip(data, current) {
            Gossiped::Malformed => MessageAcceptance::Reject,
            Gossiped::NotNewer => MessageAcceptance::Ignore,
            Gossiped::Newer => {
                if self.roots_heard.try_send(data.to_vec()).is_err() {
                    self.metrics.refused("roots", Refusal::Busy);
                }
                MessageAcceptance::Ignore
            }
        }
    }

    fn on_heartbeat(&mut self) {
        let now = now_ms();
        for device in self.site.silent(now) {
            tracing::info!(%device, "site peer silent; no longer a member");
            self.member_left(device);
        }
        self.have_dirty = true;
        self.flush_announcements();
        let site_peers = self.site.members().filter_map(|d| self.site.peer(*d)).collect();
        self.mesh.heartbeat(&mut self.swarm, &site_peers);
        let unsubscribed: BTreeSet<PeerId> = (self.swarm.behaviour().gossipsub.all_peers())
            .filter(|(_, topics)| topics.is_empty())
            .map(|(peer, _)| *peer)
            .collect();
        self.mesh.reset_deaf_peers(&mut self.swarm, &unsubscribed);
        self.publish_status();
        self.intake.publish_if_changed(&self.device);
    }

    fn member_left(&mut self, device: DeviceId) {
        let now = now_ms();
        if let Some(p) = self.site.leave(device) {
            for r in p.releases {
                if let Some(release) = self.releases.get_mut(&r) {
                    release.planner.handle_peer_left(now, device);
                }
            }
        }
    }

    fn publish_have(&mut self) {
        let haves = self
            .releases
            .iter()
            .map(|(id, r)| Have {
                release: *id,
                bits: r.planner.bitfield(),
                fetching: r.planner.fetching_bitfield(),
            })
            .collect();
        // Unenrolled, its site messages would only be refused by every member.
        let Some(enrolment) = self.enrolment.clone() else { return };
        let slot = self.site.slots.claim(self.phase());
        let msg = SiteMessage { sent_at: now_ms(), class: self.config.class.clone(), haves, slot, enrolment };
        let topic = self.site_topic.clone();
        match self.swarm.behaviour_mut().gossipsub.publish(topic, codec::encode(&msg)) {
            Ok(_) | Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {}
            Err(e) => tracing::debug!(error = %e, "cannot publish have-bitfields"),
        }
        self.have_dirty = false;
        self.last_have = Instant::now();
    }

    fn announce(&mut self, manifest: &VerifiedManifest) {
        self.announce_queue.push_back((self.releases_topic.clone(), manifest.signed().to_bytes(), now_ms()));
        self.flush_announcements();
    }

    fn flush_announcements(&mut self) {
        let now = now_ms();
        let mut keep = VecDeque::new();
        while let Some((topic, bytes, since)) = self.announce_queue.pop_front() {
            match self.swarm.behaviour_mut().gossipsub.publish(topic.clone(), bytes.clone()) {
                Ok(_) | Err(gossipsub::PublishError::Duplicate) => {}
                Err(gossipsub::PublishError::NoPeersSubscribedToTopic)
                | Err(gossipsub::PublishError::AllQueuesFull(_))
                    if now.saturating_sub(since) < ANNOUNCE_RETRY_FOR =>
                {
                    keep.push_back((topic, bytes, since))
                }
                Err(e) => tracing::debug!(error = %e, "gave up announcing a release"),
            }
        }
        self.announce_queue = keep;
    }

    // ---- releases ----

    /// Takes up a verified manifest for this class: saves it, offers it to the device,
    /// tells the mesh. Fetching starts when the device's lifecycle asks for it.
    fn adopt(&mut self, manifest: VerifiedManifest, tell: bool) {
        let id = manifest.id();
        if self.device.manifest(id).is_some() {
            return;
        }
        let m = manifest.manifest();
        if m.class != self.config.class {
            tracing::debug!(release = %id, class = %m.class, "release for another class; ignored");
            return;
        }
        if let Err(e) = self.data.save_manifest(&manifest) {
            tracing::error!(release = %id, error = %e, "cannot save the manifest; release not taken up");
            return;
        }
        tracing::info!(release = %id, sequence = m.sequence, version = %m.version, "release heard");
        if let Err(e) = self.device.offer(now_ms(), manifest.clone()) {
            self.metrics.refused("releases", Refusal::Busy);
            tracing::warn!(release = %id, error = %e, "release not taken up now; heard again later");
            return;
        }
        self.intake.release_heard(now_ms(), id, &mut self.device);
        if tell {
            self.announce(&manifest);
        }
    }

    /// The device's lifecycle wants this release's chunks: start a planner.
    fn start_fetch(&mut self, id: ReleaseId) {
        if self.releases.contains_key(&id) {
            return;
        }
        let Some(manifest) = self.device.manifest(id).cloned() else { return };
        let m = manifest.manifest();
        let store = self.store.clone();
        let planner = Planner::new(
            self.me,
            m.payload.chunks.iter().map(|c| c.id),
            |c| store.has_chunk(c),
            now_ms(),
            PlannerConfig::default(),
        );
        tracing::info!(
            release = %id,
            chunks = m.payload.chunks.len(),
            have = planner.chunks_have(),
            "fetching release"
        );
        let lengths = m.payload.chunks.iter().map(|c| (c.id, c.len)).collect();
        self.releases.insert(id, Release { manifest, planner, lengths, indexed: false });
        // Peers already heard are members of this release only once their next
        // have-bitfield names it; that arrives within a heartbeat.
        self.have_dirty = true;
    }

    /// The phase of the release in progress (idle without one).
    fn phase(&self) -> Phase {
        self.device.current().map_or(Phase::Idle, |(_, s)| s.phase())
    }

    /// Executes what the device asked of the mesh since the last call.
    fn on_device(&mut self) {
        // The install-slot lease: the device's claim follows its phase, and the device
        // is told how many members rank ahead of it.
        let now = now_ms();
        let before = self.site.slots.claim(self.phase());
        self.site.slots.handle_phase(now, self.phase());
        if self.site.slots.claim(self.phase()) != before {
            self.have_dirty = true;
        }
        self.device.site(now, self.site.slots.ahead(now, self.phase()));
        while let Some(event) = self.device.poll_event() {
            match event {
                DeviceEvent::Fetch(release) => self.start_fetch(release),
                DeviceEvent::StopFetch(release) => {
                    self.releases.remove(&release);
                    self.have_dirty = true;
                }
                DeviceEvent::Report(report) => {
                    match &report.report.outcome {
                        Outcome::Committed => self.metrics.installs.inc(),
                        Outcome::Failed { .. } => self.metrics.install_failures.inc(),
                        Outcome::RolledBack { .. } => self.metrics.rollbacks.inc(),
                    };
                    if let Some(body) = self.vouch_for(now_ms(), *report) {
                        self.reannounce.handle_reported(now_ms(), &body);
                        self.flush_announcements();
                    }
                }
            }
        }
        if !self.device.flush() {
            tracing::error!("the disk worker is gone; device state is no longer written");
        }
        self.metrics.device_backlog.set(self.device.backlog() as i64);
        let status = self.device.shown();
        if self.shown.as_ref() != Some(&status) {
            self.shown = Some(status);
            self.have_dirty = true;
            self.publish_status();
        }
    }

    fn on_report_message(&mut self, data: &[u8], from: PeerId) -> MessageAcceptance {
        match self.intake.report(now_ms(), data, &self.trust, &mut self.device) {
            Ok(()) => {
                self.mesh.report_received(data);
                MessageAcceptance::Accept
            }
            Err(refusal) => {
                self.metrics.refused("reports", refusal);
                tracing::debug!(%from, reason = refusal.label(), "report not taken; not forwarded");
                refusal.acceptance()
            }
        }
    }

    fn on_directive_message(&mut self, data: &[u8], from: PeerId) -> MessageAcceptance {
        match self.intake.directive(now_ms(), data, &self.trust, &mut self.device) {
            Ok(applied) => {
                self.reannounce.handle_directive(now_ms(), &applied);
                MessageAcceptance::Accept
            }
            Err(refusal) => {
                self.metrics.refused("directives", refusal);
                tracing::warn!(%from, reason = refusal.label(), "directive not taken; not forwarded");
                refusal.acceptance()
            }
        }
    }

    /// This device's own signed report: counted here like anyone's and queued for the
    /// mesh (retried until some peer is subscribed). `None` when it does not verify: an
    /// unenrolled device's reports would only be refused by every peer.
    fn vouch_for(
        &mut self,
        now: Millis,
        report: otamesh_core::report::SignedReport,
    ) -> Option<otamesh_core::report::Report> {
        let bytes = report.to_bytes();
        let verified = report.verify(&self.trust).ok()?;
        let body = verified.report().clone();
        self.intake.take(now, verified, &mut self.device);
        self.announce_queue.push_back((self.reports_topic.clone(), bytes, now));
        Some(body)
    }

    /// Publishes again what [`otamesh_core::reannounce`] says is due: this device's
    /// reports re-signed with a new sequence, the directives it applied as they are.
    fn publish_reannounced(&mut self) {
        use otamesh_core::reannounce::Output as Again;
        let now = now_ms();
        self.reannounce.handle_timeout(now);
        let (mut reports, mut directives) = (0, 0);
        while let Some(again) = self.reannounce.poll_output() {
            match again {
                Again::Report(body) => {
                    let signed = self.device.resign(now, body);
                    reports += u64::from(self.vouch_for(now, signed).is_some());
                }
                Again::Directive(d) => {
                    directives += 1;
                    self.announce_queue.push_back((self.directives_topic.clone(), d.to_bytes(), now));
                }
            }
        }
        if reports + directives > 0 {
            tracing::info!(
                reports,
                directives,
                "re-announced this device's reports and the directives applied"
            );
            self.mesh.reannounced(reports, directives);
            self.flush_announcements();
        }
    }

    fn drain_planners(&mut self) {
        let mut todo = Vec::new();
        for (id, r) in &mut self.releases {
            while let Some(o) = r.planner.poll_output() {
                todo.push((*id, o));
            }
        }
        // Requests to one peer from one drain travel as batches: one stream per batch.
        let mut batches: BTreeMap<DeviceId, Vec<ChunkId>> = BTreeMap::new();
        for (release, output) in todo {
            match output {
                Output::Request { peer, chunk } => {
                    let batch = batches.entry(peer).or_default();
                    batch.push(chunk);
                    if batch.len() == wire::MAX_BATCH {
                        let full = std::mem::take(batch);
                        self.request_chunks(peer, full);
                    }
                }
                Output::FetchFromOrigin { chunk } => {
                    // The site learns of the claim with the next have-set.
                    tracing::debug!(%release, %chunk, "fetching a chunk from the origin");
                    self.have_dirty = true;
                    self.fetch_from_origin(release, chunk)
                }
                Output::Stalled { peer, chunks, reason } => {
                    let first: Vec<String> = chunks.iter().take(4).map(|c| c.to_string()).collect();
                    tracing::warn!(
                        %release, %peer, reason = reason.label(), chunks = chunks.len(), first = ?first,
                        "site peer did not deliver what it claimed; its chunks are fetched elsewhere"
                    );
                }
                Output::Banned { peer, reason } => {
                    self.metrics.bans.inc();
                    tracing::warn!(%release, %peer, reason = reason.label(), "site peer banned for this release");
                }
                Output::Complete => self.on_complete(release),
            }
        }
        for (peer, chunks) in batches {
            if !chunks.is_empty() {
                self.request_chunks(peer, chunks);
            }
        }
    }

    fn request_chunks(&mut self, peer: DeviceId, chunks: Vec<ChunkId>) {
        // Chunks only over a direct connection: never through a relay.
        let Some(p) = self.site.peer(peer).filter(|p| self.mesh.is_direct(p)) else {
            for chunk in chunks {
                self.fail_everywhere(Source::Peer(peer), chunk);
            }
            return;
        };
        self.send_request(p, peer, Want::Chunks(chunks));
    }

    fn on_complete(&mut self, release: ReleaseId) {
        let Some(r) = self.releases.get_mut(&release) else { return };
        if r.indexed {
            return;
        }
        r.indexed = true;
        tracing::info!(%release, "release complete: every chunk here and verified");
        // The local store becomes a valid origin-layout store for this release.
        if let Err(e) = self.store.put_manifest(&r.manifest) {
            tracing::warn!(%release, error = %e, "cannot list the release in the local store index");
        }
        self.device.fetched(now_ms(), release);
        self.have_dirty = true;
        self.publish_status();
    }

    fn send_request(&mut self, peer: PeerId, device: DeviceId, want: Want) {
        let id = self.next_request_id;
        self.next_request_id += 1;
        let rid = self.swarm.behaviour_mut().chunks.send_request(&peer, Request { id, want: want.clone() });
        self.requests.insert(rid, PendingRequest { id, peer: device, want });
    }

    fn fetch_from_origin(&mut self, release: ReleaseId, chunk: ChunkId) {
        let Some(origin) = self.origin.clone() else {
            // No origin configured: only peers can provide it; retried with backoff.
            self.fail_everywhere(Source::Origin, chunk);
            return;
        };
        let max_len = self.releases.get(&release).and_then(|r| r.lengths.get(&chunk)).copied().unwrap_or(0);
        let tx = self.tx.clone();
        let writer = self.writer.clone();
        tokio::spawn(async move {
            let msg = match origin.chunk(chunk, max_len as usize).await {
                Ok(bytes) => ingest(writer, Source::Origin, vec![(chunk, bytes)]).await,
                Err(e) => Internal::Ingested(Ingested {
                    failed: vec![(chunk, e.to_string())],
                    ..Ingested::new(Source::Origin)
                }),
            };
            let _ = tx.send(msg).await;
        });
    }

    fn poll_origin(&mut self) {
        let Some(origin) = self.origin.clone() else { return };
        if self.polling {
            return;
        }
        self.polling = true;
        let known: BTreeSet<ReleaseId> = self.device.manifests().keys().copied().collect();
        let directives = self.device.heard().directives().clone();
        let rejected = self.rejected_from_origin.clone();
        let class = self.config.class.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            match origin.index().await {
                Ok(index) => {
                    if !index.bootstrap.is_empty() {
                        let _ = tx.send(Internal::Bootstrap(index.bootstrap)).await;
                    }
                    for d in index.directives {
                        if directives.standing(d.release_id).sequence >= d.sequence {
                            continue;
                        }
                        match origin.manifest(&d.path).await {
                            Ok(bytes) => {
                                let _ = tx.send(Internal::OriginDirective { bytes, url: d.path }).await;
                            }
                            Err(err) => {
                                tracing::warn!(error = %err, "cannot fetch a directive the origin lists")
                            }
                        }
                    }
                    for e in index.releases {
                        if e.class != class || known.contains(&e.release_id) || rejected.contains(&e.manifest)
                        {
                            continue;
                        }
                        match origin.manifest(&e.manifest).await {
                            Ok(bytes) => {
                                let _ = tx.send(Internal::OriginManifest { bytes, url: e.manifest }).await;
                            }
                            Err(err) => {
                                tracing::warn!(error = %err, "cannot fetch a manifest the origin lists")
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot poll the origin index"),
            }
            let _ = tx.send(Internal::PollDone).await;
        });
    }

    // ---- chunk exchange ----

    fn on_chunk_event(&mut self, event: request_response::Event<Request, Response>) {
        use request_response::{Event, Message};
        match event {
            Event::Message { peer, connection_id, message: Message::Request { request, channel, .. } } => {
                if let (true, Want::Chunks(chunks)) = (self.mesh.is_relayed(connection_id), &request.want) {
                    // A relay carries gossip while a hole is punched, never chunks: the
                    // asker hears "failed" at once and asks over the LAN or the origin.
                    self.mesh.refused_relayed_chunk_request();
                    tracing::debug!(%peer, "chunk request over a relayed connection refused");
                    let failed = Item { status: wire::Status::Failed, body: Vec::new() };
                    let response = Response { id: request.id, items: vec![failed; chunks.len()] };
                    let _ = self.swarm.behaviour_mut().chunks.send_response(channel, response);
                    return;
                }
                self.serve(peer, request, channel);
            }
            Event::Message { peer, message: Message::Response { request_id, response }, .. } => {
                let Some(pending) = self.requests.remove(&request_id) else { return };
                if response.id != pending.id {
                    tracing::warn!(%peer, "response does not echo its request id; treated as bad");
                    if let Want::Chunks(chunks) = pending.want {
                        for chunk in chunks {
                            self.bad_everywhere(Source::Peer(pending.peer), chunk);
                        }
                    }
                    return;
                }
                self.on_response(pending, response);
            }
            Event::OutboundFailure { peer, request_id, error, .. } => {
                let Some(pending) = self.requests.remove(&request_id) else { return };
                self.metrics.peer_request_failures.inc();
                tracing::debug!(%peer, %error, "chunk request failed");
                match pending.want {
                    // Judged like the planner's own timeout: slow if it served since.
                    Want::Chunks(chunks) if matches!(error, request_response::OutboundFailure::Timeout) => {
                        let now = now_ms();
                        for r in self.releases.values_mut() {
                            r.planner.handle_request_timed_out(now, pending.peer, &chunks);
                        }
                    }
                    Want::Chunks(chunks) => {
                        for chunk in chunks {
                            self.fail_everywhere(Source::Peer(pending.peer), chunk);
                        }
                    }
                    Want::Manifest(r) => {
                        self.manifests_asked.remove(&r);
                    }
                }
            }
            Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "serving a request failed");
            }
            Event::ResponseSent { .. } => {}
        }
    }

    fn on_response(&mut self, pending: PendingRequest, response: Response) {
        let source = Source::Peer(pending.peer);
        let mut items = response.items;
        match pending.want {
            Want::Chunks(chunks) => {
                if items.len() != chunks.len() {
                    tracing::warn!(peer = %pending.peer, "response has {} items for {} chunks", items.len(), chunks.len());
                    for chunk in chunks {
                        self.fail_everywhere(source, chunk);
                    }
                    return;
                }
                let mut found = Vec::new();
                for (chunk, item) in chunks.into_iter().zip(items) {
                    if item.status == wire::Status::Found {
                        found.push((chunk, item.body));
                    } else {
                        self.fail_everywhere(source, chunk);
                    }
                }
                if found.is_empty() {
                    return;
                }
                let writer = self.writer.clone();
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    let msg = ingest(writer, source, found).await;
                    let _ = tx.send(msg).await;
                });
            }
            Want::Manifest(release) if items.len() == 1 && items[0].status == wire::Status::Found => {
                let body = items.pop().map(|i| i.body).unwrap_or_default();
                let verified = SignedManifest::from_bytes(&body)
                    .map_err(|e| e.to_string())
                    .and_then(|m| self.trust.verify_manifest(m, now_ms()).map_err(|e| e.to_string()));
                match verified {
                    Ok(v) if v.id() == release => self.adopt(v, false),
                    Ok(_) => tracing::warn!(peer = %pending.peer, "peer answered with another manifest"),
                    Err(e) => {
                        tracing::warn!(peer = %pending.peer, error = %e, "peer sent an invalid manifest")
                    }
                }
            }
            Want::Manifest(release) => {
                self.manifests_asked.remove(&release);
            }
        }
    }

    fn serve(&mut self, peer: PeerId, request: Request, channel: ResponseChannel<Response>) {
        let id = request.id;
        match request.want {
            Want::Manifest(release) => {
                let item = match self.device.manifest(release) {
                    Some(m) => Item { status: wire::Status::Found, body: m.signed().to_bytes() },
                    None => Item { status: wire::Status::NotFound, body: Vec::new() },
                };
                let response = Response { id, items: vec![item] };
                let _ = self.swarm.behaviour_mut().chunks.send_response(channel, response);
            }
            Want::Chunks(chunks) => {
                let store = self.store.clone();
                let tx = self.tx.clone();
                let corrupt = self.config.corrupt_served_chunks;
                tokio::spawn(async move {
                    let read = tokio::task::spawn_blocking(move || {
                        chunks
                            .into_iter()
                            .map(|c| read_for_peer(&store, peer, c, corrupt))
                            .collect::<Vec<_>>()
                    })
                    .await;
                    let items = read.unwrap_or_default();
                    let served = items.iter().filter(|i| i.status == wire::Status::Found).count();
                    let response = Response { id, items };
                    let _ = tx.send(Internal::Serve { channel, response, served }).await;
                });
            }
        }
    }

    /// A batch is through: bad and failed chunks are re-planned; the stored ones are
    /// counted and told to every planner, once for the lot.
    fn on_ingested(&mut self, now: Millis, batch: Ingested) {
        let Ingested { source, stored, bad, failed } = batch;
        for chunk in bad {
            self.bad_everywhere(source, chunk);
        }
        for (chunk, reason) in failed {
            tracing::warn!(?source, %chunk, %reason, "chunk fetch failed; re-planned");
            self.fail_everywhere(source, chunk);
        }
        if stored.is_empty() {
            return;
        }
        let label = if source == Source::Origin { "wan" } else { "lan" };
        for &(_, len) in &stored {
            self.metrics.chunk_bytes(label, len);
        }
        for r in self.releases.values_mut() {
            r.planner.handle_chunks_verified(now, source, stored.iter().map(|&(c, _)| c));
        }
        self.have_dirty = true;
    }

    fn on_internal(&mut self, msg: Internal) {
        let now = now_ms();
        match msg {
            Internal::Ingested(batch) => self.on_ingested(now, batch),
            Internal::Serve { channel, response, served } => {
                self.metrics.chunks_served.inc_by(served as u64);
                let bytes: usize = response.items.iter().map(|i| i.body.len()).sum();
                self.metrics.served_bytes.inc_by(bytes as u64);
                let _ = self.swarm.behaviour_mut().chunks.send_response(channel, response);
            }
            Internal::OriginManifest { bytes, url } => {
                let verified = SignedManifest::from_bytes(&bytes)
                    .map_err(|e| e.to_string())
                    .and_then(|m| self.trust.verify_manifest(m, now).map_err(|e| e.to_string()));
                match verified {
                    Ok(v) => self.adopt(v, true),
                    Err(e) => {
                        tracing::warn!(manifest = %url, error = %e, "origin manifest rejected");
                        self.rejected_from_origin.insert(url);
                    }
                }
            }
            Internal::OriginDirective { bytes, url } => {
                match self.intake.directive(now, &bytes, &self.trust, &mut self.device) {
                    // Tell the mesh, so nodes without an origin learn it too.
                    // Queued like announcements: retried until some peer is subscribed.
                    Ok(applied) => {
                        self.reannounce.handle_directive(now, &applied);
                        self.announce_queue.push_back((self.directives_topic.clone(), bytes, now_ms()));
                        self.flush_announcements();
                    }
                    Err(refusal) => {
                        self.metrics.refused("directives", refusal);
                        tracing::warn!(directive = %url, reason = refusal.label(), "origin directive not taken");
                    }
                }
            }
            Internal::PollDone => self.polling = false,
            Internal::Disk(done) => self.device.done(now, done),
            Internal::Bootstrap(addrs) => self.mesh.add_bootstrap(&mut self.swarm, &addrs),
        }
    }

    fn fail_everywhere(&mut self, source: Source, chunk: ChunkId) {
        let now = now_ms();
        for r in self.releases.values_mut() {
            r.planner.handle_chunk_failed(now, source, chunk);
        }
    }

    fn bad_everywhere(&mut self, source: Source, chunk: ChunkId) {
        self.metrics.bad_chunks.inc();
        tracing::warn!(?source, %chunk, "received a chunk that does not match its id; discarded");
        let now = now_ms();
        for r in self.releases.values_mut() {
            r.planner.handle_chunk_bad(now, source, chunk);
        }
    }

    // ---- status ----

    fn publish_status(&mut self) {
        let current = self.device.current().map(|(r, s)| (r, s.phase()));
        let releases = self
            .device
            .manifests()
            .iter()
            .map(|(id, v)| {
                let m = v.manifest();
                let planner = self.releases.get(id).map(|r| &r.planner);
                let state = match (current, planner) {
                    (Some((r, state)), _) if r == *id => state,
                    (_, Some(p)) if p.is_complete() => Phase::Staged,
                    (_, Some(_)) => Phase::Fetching,
                    (_, None) => Phase::Idle,
                };
                ReleaseStatus {
                    release_id: id.to_string(),
                    sequence: m.sequence,
                    version: m.version.clone(),
                    chunks_have: planner.map_or(0, |p| p.chunks_have()),
                    chunks_total: m.payload.chunks.len(),
                    state,
                    banned: planner
                        .map(|p| {
                            self.site.members().filter(|d| p.is_banned(**d)).map(|d| d.to_string()).collect()
                        })
                        .unwrap_or_default(),
                }
            })
            .collect();
        let (state, reason) = match self.device.current() {
            Some((_, s)) => (s.phase(), s.parts().1),
            None => (Phase::Idle, None),
        };
        let (active, previous) = self.device.slots();
        let status = Status {
            device_id: self.me.to_string(),
            peer_id: self.swarm.local_peer_id().to_string(),
            site: self.config.site.clone(),
            enrolled: self.enrolled,
            class: self.config.class.clone(),
            peers: self.connected.len(),
            site_members: self.site.members().map(|d| d.to_string()).collect(),
            listen: self.listen_addrs.iter().map(|a| a.to_string()).collect(),
            state,
            reason,
            active,
            previous,
            releases,
            fleet_mesh: self.mesh.status(),
        };
        self.status_tx.send_replace(status);
    }
}

/// Verifies each chunk's bytes against its id on the blocking pool, then stores the
/// good ones through the chunk writer (acknowledged once flushed).
async fn ingest(writer: Writer, source: Source, chunks: Vec<(ChunkId, Vec<u8>)>) -> Internal {
    let ids: Vec<ChunkId> = chunks.iter().map(|(c, _)| *c).collect();
    let checked = tokio::task::spawn_blocking(move || {
        let mut bad = Vec::new();
        let mut verified = Vec::with_capacity(chunks.len());
        for (chunk, bytes) in chunks {
            match VerifiedChunk::new(chunk, bytes) {
                Ok(v) => verified.push(v),
                Err(_) => bad.push(chunk),
            }
        }
        (verified, bad)
    })
    .await;
    let (verified, bad) = match checked {
        Ok(checked) => checked,
        Err(e) => {
            let reason = format!("verify task failed: {e}");
            let failed = ids.into_iter().map(|chunk| (chunk, reason.clone())).collect();
            return Internal::Ingested(Ingested { failed, ..Ingested::new(source) });
        }
    };
    let mut batch = Ingested { bad, ..Ingested::new(source) };
    if !verified.is_empty() {
        match writer.store(verified).await {
            Stored::Stored(stored) => batch.stored = stored,
            Stored::Failed(failed) => batch.failed = failed,
        }
    }
    Internal::Ingested(batch)
}

/// Reads a chunk to serve (the store checks its hash on the way).
fn read_for_peer(store: &Store, peer: PeerId, chunk: ChunkId, corrupt: bool) -> Item {
    match store.read_chunk(chunk) {
        Ok(c) => {
            let mut body = c.into_bytes();
            if corrupt && let Some(b) = body.first_mut() {
                *b ^= 0xff;
            }
            Item { status: wire::Status::Found, body }
        }
        Err(crate::store::StoreError::MissingChunk { .. }) => {
            Item { status: wire::Status::NotFound, body: Vec::new() }
        }
        Err(e) => {
            tracing::error!(%peer, error = %e, "cannot read a chunk to serve");
            Item { status: wire::Status::Failed, body: Vec::new() }
        }
    }
}

/// Every manifest saved before a restart, verified again. The release the device last
/// worked on is kept even if its manifest expired since, so that a crash in the middle of
/// it can be recovered (the device machine then decides what expiry means for it).
fn saved_manifests(data: &DataDir, trust: &TrustRoot, last: Option<ReleaseId>) -> Vec<VerifiedManifest> {
    let manifests = match data.manifests() {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "cannot list saved manifests");
            return Vec::new();
        }
    };
    let mut verified = Vec::new();
    for (path, m) in manifests {
        let checked = m.map_err(|e| e.to_string()).and_then(|m| {
            let now = trust.verify_manifest(m.clone(), now_ms());
            match now {
                Err(otamesh_core::trust::VerifyError::Expired { .. })
                    if Some(m.manifest.release_id()) == last =>
                {
                    trust.verify_manifest(m, 0).map_err(|e| e.to_string())
                }
                other => other.map_err(|e| e.to_string()),
            }
        });
        match checked {
            Ok(v) => verified.push(v),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "saved manifest no longer valid; ignored")
            }
        }
    }
    verified
}

fn strip_p2p(addr: &Multiaddr) -> Multiaddr {
    addr.iter().filter(|p| !matches!(p, Protocol::P2p(_))).collect()
}

/// Runs a node on a fresh multi-threaded runtime until SIGINT or SIGTERM.
pub fn run_blocking(config: NodeConfig) -> Result<(), NodeError> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(topic: &str, source: PeerId, data: &[u8]) -> gossipsub::Message {
        gossipsub::Message {
            source: Some(source),
            data: data.to_vec(),
            sequence_number: Some(1),
            topic: IdentTopic::new(topic).hash(),
        }
    }

    #[test]
    fn identical_site_messages_of_two_members_stay_two_messages_and_a_release_stays_one() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let site = wire::site_topic("plant-7");
        let same = b"the same bitfield";
        assert_ne!(message_id(&message(&site, a, same)), message_id(&message(&site, b, same)));
        assert_eq!(message_id(&message(&site, a, same)), message_id(&message(&site, a, same)));
        assert_eq!(
            message_id(&message(RELEASES_TOPIC, a, same)),
            message_id(&message(RELEASES_TOPIC, b, same)),
            "a manifest announced by two nodes is one message"
        );
    }
}
