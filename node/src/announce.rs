//! `otamesh announce`: push a signed manifest into the mesh through one or more peers;
//! [`push`] does the same for any gossip message (directives).
//!
//! A short-lived libp2p node with a fresh identity dials the peers, waits until one of
//! them is subscribed to the topic, publishes and leaves. The receiving nodes verify
//! what it pushed like any gossip: an invalid message is rejected there and goes no
//! further.

use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, noise, tcp, yamux};

use crate::wire::RELEASES_TOPIC;

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

/// Why an announcement failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AnnounceError {
    /// The manifest file is unreadable or not a manifest.
    #[error(transparent)]
    Manifest(#[from] crate::store::StoreError),
    /// A `--peer` value is not a multiaddr.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// No peer became ready in time.
    #[error(
        "no peer subscribed to {topic} within {timeout} s: check that --peer points at a running otamesh node"
    )]
    NoPeer {
        /// The gossip topic.
        topic: String,
        /// Seconds waited.
        timeout: u64,
    },
    /// libp2p could not be set up or the runtime failed.
    #[error("network: {0}")]
    Network(String),
}

/// Runs `otamesh announce` on a fresh runtime; prints the release id on success.
pub fn run_blocking(args: AnnounceArgs) -> Result<(), AnnounceError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| AnnounceError::Network(e.to_string()))?;
    rt.block_on(run(args))
}

/// Announces the manifest; returns once it was handed to a subscribed peer.
pub async fn run(args: AnnounceArgs) -> Result<(), AnnounceError> {
    let signed = crate::store::read_manifest_file(&args.manifest)?;
    let release = signed.manifest.release_id();
    let peers = args
        .peer
        .iter()
        .map(|p| crate::config::multiaddr("peer", p))
        .collect::<Result<Vec<Multiaddr>, _>>()?;
    push(RELEASES_TOPIC, vec![signed.to_bytes()], &peers, Duration::from_secs(args.timeout)).await?;
    tracing::info!(%release, "announced");
    println!("{release}");
    Ok(())
}

/// [`push`] on a fresh runtime, for callers without one.
pub fn push_blocking(
    topic: &str,
    messages: Vec<Vec<u8>>,
    peers: &[Multiaddr],
    timeout: Duration,
) -> Result<(), AnnounceError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| AnnounceError::Network(e.to_string()))?;
    rt.block_on(push(topic, messages, peers, timeout))
}

/// Publishes `messages` on the gossip `topic` through the first of `peers` that is
/// subscribed to it, then leaves. The receiving nodes validate them like any gossip.
pub async fn push(
    topic: &str,
    messages: Vec<Vec<u8>>,
    peers: &[Multiaddr],
    timeout: Duration,
) -> Result<(), AnnounceError> {
    let net = |e: &dyn std::fmt::Display| AnnounceError::Network(e.to_string());
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
    let topic = IdentTopic::new(topic);
    swarm.behaviour_mut().subscribe(&topic).map_err(|e| net(&e))?;
    for addr in peers {
        swarm.dial(addr.clone()).map_err(|e| AnnounceError::Network(format!("{addr}: {e}")))?;
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut sent_at = None;
    loop {
        let wake = match sent_at {
            // Give the messages time to leave the socket before closing.
            Some(t) => t + Duration::from_millis(500),
            None => deadline,
        };
        tokio::select! {
            event = swarm.select_next_some() => match event {
                SwarmEvent::Behaviour(gossipsub::Event::Subscribed { peer_id, topic: t })
                    if t == topic.hash() && sent_at.is_none() =>
                {
                    for bytes in &messages {
                        match swarm.behaviour_mut().publish(topic.clone(), bytes.clone()) {
                            Ok(_) | Err(gossipsub::PublishError::Duplicate) => {}
                            Err(e) => tracing::debug!(error = %e, "publish not possible yet"),
                        }
                    }
                    tracing::debug!(%peer_id, messages = messages.len(), "pushed");
                    sent_at = Some(tokio::time::Instant::now());
                }
                SwarmEvent::OutgoingConnectionError { error, .. } => {
                    tracing::warn!(%error, "cannot connect to a peer");
                }
                _ => {}
            },
            _ = tokio::time::sleep_until(wake) => {
                return match sent_at {
                    Some(_) => Ok(()),
                    None => Err(AnnounceError::NoPeer { topic: topic.to_string(), timeout: timeout.as_secs() }),
                };
            }
        }
    }
}
