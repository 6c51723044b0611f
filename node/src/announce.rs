//! Pushing signed messages into the mesh through one or more peers: `otamesh announce`
//! (a manifest on the releases topic) and `otamesh directive --peer` (a directive on
//! the directives topic), both through [`push`], which takes any gossip messages.
//!
//! A short-lived libp2p node with a fresh identity dials the peers, waits until the
//! ones it reached are subscribed to the topic, publishes the messages once and leaves.
//! The receiving nodes verify it like any gossip: an invalid message is rejected there
//! and goes no further.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity};
use libp2p::swarm::SwarmEvent;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::{Multiaddr, noise, tcp, yamux};

use crate::wire::RELEASES_TOPIC;

/// How long to wait for the remaining peers once one is subscribed: a peer that never
/// subscribes (not an otamesh node, or a slow dial) does not hold the push back longer.
const GRACE: Duration = Duration::from_secs(3);

/// How often a publish that failed (no subscription known yet) is tried again.
const RETRY: Duration = Duration::from_millis(100);

/// How long to stay connected after publishing, so the message leaves the socket.
const LINGER: Duration = Duration::from_millis(500);

/// `otamesh announce` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct AnnounceArgs {
    /// The signed manifest file (as `otamesh publish` writes it under manifests/).
    #[arg(long, value_name = "FILE")]
    pub manifest: PathBuf,
    /// A node to push it to, with or without /p2p/<peer id>; repeatable.
    #[arg(long, value_name = "MULTIADDR", required = true)]
    pub peer: Vec<String>,
    /// Seconds to wait for a peer to accept the announcement.
    #[arg(long, default_value_t = 15)]
    pub timeout: u64,
}

/// Why an announcement or a push failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AnnounceError {
    /// The manifest file is unreadable or not a manifest.
    #[error(transparent)]
    Manifest(#[from] crate::store::StoreError),
    /// A `--peer` value is not a multiaddr.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// No peer was reached and subscribed to the topic in time.
    #[error(
        "no peer subscribed to {topic} within {timeout} s: check that --peer points at a running otamesh node"
    )]
    NoPeer {
        /// The gossip topic.
        topic: String,
        /// Seconds waited.
        timeout: u64,
    },
    /// Every dial failed: nothing listens at any `--peer`.
    #[error(
        "cannot connect to any --peer to push on {topic}: check the address and that an otamesh node listens there"
    )]
    Unreachable {
        /// The gossip topic.
        topic: String,
    },
    /// libp2p could not be set up or the runtime failed.
    #[error("network: {0}")]
    Network(String),
}

/// Runs `otamesh announce` on a fresh runtime; prints the release id on success.
pub fn run_blocking(args: AnnounceArgs) -> Result<(), AnnounceError> {
    runtime()?.block_on(run(args))
}

/// Announces the manifest; returns once it was handed to the subscribed peers.
pub async fn run(args: AnnounceArgs) -> Result<(), AnnounceError> {
    let signed = crate::store::read_manifest_file(&args.manifest)?;
    let release = signed.manifest.release_id();
    let peers = parse_peers(&args.peer)?;
    push(RELEASES_TOPIC, vec![signed.to_bytes()], &peers, Duration::from_secs(args.timeout)).await?;
    tracing::info!(%release, "announced");
    println!("{release}");
    Ok(())
}

/// Parses `--peer` values; a bad one is the one-line config error naming the flag.
pub fn parse_peers(values: &[String]) -> Result<Vec<Multiaddr>, AnnounceError> {
    Ok(values.iter().map(|p| crate::config::multiaddr("peer", p)).collect::<Result<_, _>>()?)
}

/// [`push`] on a fresh single-threaded runtime, for synchronous callers.
pub fn push_blocking(
    topic: &str,
    messages: Vec<Vec<u8>>,
    peers: &[Multiaddr],
    timeout: Duration,
) -> Result<usize, AnnounceError> {
    runtime()?.block_on(push(topic, messages, peers, timeout))
}

/// Publishes `messages` on the gossip `topic` through `peers`; returns how many peers
/// they were sent to (those subscribed to the topic when they were published).
///
/// It publishes once every peer reached is subscribed, or [`GRACE`] after the first
/// one is, and fails with [`AnnounceError::NoPeer`] when no peer is subscribed within
/// `timeout`, and with [`AnnounceError::Unreachable`] when every dial failed.
pub async fn push(
    topic: &str,
    messages: Vec<Vec<u8>>,
    peers: &[Multiaddr],
    timeout: Duration,
) -> Result<usize, AnnounceError> {
    let net = |e: &dyn std::fmt::Display| AnnounceError::Network(e.to_string());
    let no_peer = || AnnounceError::NoPeer { topic: topic.to_owned(), timeout: timeout.as_secs() };
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .map_err(|e| net(&e))?
        .with_behaviour(|key| -> Result<gossipsub::Behaviour, Box<dyn std::error::Error + Send + Sync>> {
            let config = crate::node::gossip_config().map_err(|e| e.to_string())?;
            Ok(gossipsub::Behaviour::new(MessageAuthenticity::Signed(key.clone()), config)?)
        })
        .map_err(|e| net(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
        .build();
    let gossip_topic = IdentTopic::new(topic);
    let hash = gossip_topic.hash();
    swarm.behaviour_mut().subscribe(&gossip_topic).map_err(|e| net(&e))?;
    // Dials not yet resolved; each ends in ConnectionEstablished or OutgoingConnectionError.
    let mut dialling = BTreeSet::new();
    for addr in peers {
        let opts = DialOpts::from(addr.clone());
        let id = opts.connection_id();
        match swarm.dial(opts) {
            Ok(()) => {
                dialling.insert(id);
            }
            Err(e) => tracing::warn!(%addr, error = %e, "cannot dial a peer"),
        }
    }
    let mut connected = BTreeSet::new();
    let mut subscribed = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut first_subscribed: Option<tokio::time::Instant> = None;
    let mut sent: Option<(tokio::time::Instant, usize)> = None;
    let total = messages.len();
    let mut unsent = messages;
    loop {
        if sent.is_none() && !subscribed.is_empty() {
            let settled = dialling.is_empty() && connected.is_subset(&subscribed);
            let waited = first_subscribed.is_some_and(|t| tokio::time::Instant::now() >= t + GRACE);
            if settled || waited {
                let to = swarm.behaviour().all_peers().filter(|(_, t)| t.contains(&&hash)).count();
                let mut failed = None;
                unsent.retain(|bytes| match swarm.behaviour_mut().publish(hash.clone(), bytes.clone()) {
                    Ok(_) | Err(gossipsub::PublishError::Duplicate) => false,
                    // Not yet possible: tried again.
                    Err(gossipsub::PublishError::NoPeersSubscribedToTopic)
                    | Err(gossipsub::PublishError::AllQueuesFull(_)) => true,
                    Err(e) => {
                        failed = Some(e);
                        false
                    }
                });
                if let Some(e) = failed {
                    return Err(AnnounceError::Network(format!("cannot publish on {topic}: {e}")));
                }
                if unsent.is_empty() {
                    tracing::debug!(%topic, peers = to, messages = total, "pushed");
                    sent = Some((tokio::time::Instant::now(), to));
                }
            }
        }
        if sent.is_none() && dialling.is_empty() && connected.is_empty() {
            return Err(AnnounceError::Unreachable { topic: topic.to_owned() });
        }
        let now = tokio::time::Instant::now();
        let wake = match (sent, first_subscribed) {
            (Some((at, _)), _) => at + LINGER,
            // Past the grace, messages not yet published are tried again every RETRY.
            (None, Some(t)) => (t + GRACE).max(now + RETRY).min(deadline),
            (None, None) => deadline,
        };
        tokio::select! {
            event = swarm.select_next_some() => match event {
                SwarmEvent::ConnectionEstablished { peer_id, connection_id, .. } => {
                    dialling.remove(&connection_id);
                    connected.insert(peer_id);
                }
                SwarmEvent::OutgoingConnectionError { connection_id, error, .. } => {
                    dialling.remove(&connection_id);
                    tracing::warn!(%error, "cannot connect to a peer");
                }
                SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
                    connected.remove(&peer_id);
                    subscribed.remove(&peer_id);
                }
                SwarmEvent::Behaviour(gossipsub::Event::Subscribed { peer_id, topic }) if topic == hash => {
                    subscribed.insert(peer_id);
                    first_subscribed.get_or_insert_with(tokio::time::Instant::now);
                }
                _ => {}
            },
            _ = tokio::time::sleep_until(wake) => {
                if let Some((_, to)) = sent {
                    return Ok(to);
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(no_peer());
                }
            }
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, AnnounceError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| AnnounceError::Network(e.to_string()))
}
