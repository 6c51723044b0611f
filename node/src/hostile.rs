//! A hostile site peer for tests (feature `testkit`), built on the node's own libp2p
//! stack: it joins a site's gossip and lies. It claims every chunk of the releases it is
//! told of (have and fetching bitfields all set), claims an install slot, answers no
//! chunk request (it keeps the request open until it times out), and can flood the site
//! topic with well-formed messages, and its connections with pings.
//!
//! **Goals:** the attacks of issue 11, as a LAN stranger (self-enrolled) or as an
//! enrolled device, against real node processes.
//!
//! **Non-goals:** being a node; anything a test does not need.

use std::time::Duration;

use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity};
use libp2p::request_response::{self, ProtocolSupport, ResponseChannel};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, noise, ping, tcp, yamux};
use otamesh_core::enrolment::SignedEnrolment;
use otamesh_core::site::SlotClaim;
use otamesh_core::trust::MAX_SIGNATURES;
use otamesh_core::{ReleaseId, SignedManifest, codec};
use tokio::sync::oneshot;

use crate::wire::{self, CHUNK_PROTOCOL, ChunkCodec, Have, Item, Response, SiteMessage, Status, Want};

/// What the hostile peer does.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Its libp2p identity (ed25519 seed).
    pub seed: [u8; 32],
    /// The site whose topic it joins.
    pub site: String,
    /// The class it says it is.
    pub class: String,
    /// The enrolment it carries: a genuine one (an enrolled hostile device) or one it
    /// signed itself (a stranger).
    pub enrolment: SignedEnrolment,
    /// Releases (and their chunk counts) whose every chunk it claims.
    pub claims: Vec<(ReleaseId, usize)>,
    /// It claims to hold an install slot.
    pub holds_slot: bool,
    /// It answers chunk requests at once with NotFound (otherwise never).
    pub not_found: bool,
    /// Site messages per second it publishes (1 is a member's heartbeat).
    pub rate: u32,
    /// Nodes it dials.
    pub peers: Vec<Multiaddr>,
    /// What it publishes at `rate`, one kind per tick in turn; empty: its site message.
    pub floods: Vec<Flood>,
    /// Pings each connection this often, the next as soon as the last is answered
    /// (libp2p's ping protocol, which every node answers); `None`: never.
    pub ping_every: Option<Duration>,
}

/// A kind of crafted message. Each message of a kind differs from the last, so that
/// gossip de-duplication does not stop the flood at the sender.
#[derive(Debug, Clone)]
pub enum Flood {
    /// Its site message (claims, slot) as set by the plan.
    SiteMessage,
    /// A genuine manifest carrying more signatures than any trust root has keys:
    /// `MAX_SIGNATURES + 1` copies of its first signature.
    SignatureBomb(SignedManifest),
    /// A genuine manifest re-encoded: its format field as a wider integer than the
    /// canonical encoding (three ways).
    ReEncoding(SignedManifest),
    /// A site message naming 20,000 releases.
    HugeSiteMessage,
}

/// A running hostile peer; dropped, it stops.
#[derive(Debug)]
pub struct Hostile {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Hostile {
    /// Starts the peer on its own thread and runtime.
    pub fn start(plan: Plan) -> Self {
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::spawn(move || {
            // Invariant: a test machine can build a current-thread runtime.
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(run(plan, stopped))
        });
        Self { stop: Some(stop), thread: Some(thread) }
    }

    /// Stops the peer; returns how many messages it published plus how many of its
    /// pings were answered.
    pub fn stop(mut self) -> u64 {
        self.halt()
    }

    fn halt(&mut self) -> u64 {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or(0)
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.halt();
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    gossipsub: gossipsub::Behaviour,
    chunks: request_response::Behaviour<ChunkCodec>,
    ping: Toggle<ping::Behaviour>,
}

async fn run(plan: Plan, mut stopped: oneshot::Receiver<()>) -> u64 {
    // Invariant: any 32 bytes are an ed25519 seed.
    let keypair = libp2p::identity::Keypair::ed25519_from_bytes(plan.seed).expect("32-byte seed");
    let built = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .map_err(|e| e.to_string())
        .and_then(|b| {
            b.with_behaviour(|key| {
                let gossipsub = gossipsub::Behaviour::new(
                    MessageAuthenticity::Signed(key.clone()),
                    crate::node::gossip_config().map_err(|e| e.to_string())?,
                )?;
                let chunks = request_response::Behaviour::with_codec(
                    ChunkCodec,
                    [(CHUNK_PROTOCOL, ProtocolSupport::Full)],
                    request_response::Config::default().with_request_timeout(Duration::from_secs(600)),
                );
                let ping = plan
                    .ping_every
                    .map(|every| ping::Behaviour::new(ping::Config::new().with_interval(every)));
                Ok(Behaviour { gossipsub, chunks, ping: Toggle::from(ping) })
            })
            .map_err(|e| e.to_string())
        });
    let mut swarm = match built {
        Ok(b) => b.with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600))).build(),
        Err(e) => {
            tracing::error!(error = %e, "hostile peer: cannot build its swarm");
            return 0;
        }
    };
    let topic = IdentTopic::new(wire::site_topic(&plan.site));
    let _ = swarm.behaviour_mut().gossipsub.subscribe(&topic);
    let releases = IdentTopic::new(wire::RELEASES_TOPIC);
    let _ = swarm.behaviour_mut().gossipsub.subscribe(&releases);
    let many: Vec<Have> = (0..20_000u32)
        .map(|i| Have {
            release: ReleaseId::from_bytes(*blake3::hash(&i.to_le_bytes()).as_bytes()),
            bits: vec![0xff],
            fetching: Vec::new(),
        })
        .collect();
    let floods = if plan.floods.is_empty() { vec![Flood::SiteMessage] } else { plan.floods.clone() };
    let _ = swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("valid multiaddr"));
    for addr in &plan.peers {
        let _ = swarm.dial(addr.clone());
    }
    let all = |n: usize| vec![0xffu8; n.div_ceil(8)];
    let haves: Vec<Have> =
        plan.claims.iter().map(|(r, n)| Have { release: *r, bits: all(*n), fetching: all(*n) }).collect();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / plan.rate.max(1));
    // Requests are kept open, unanswered, until the requester gives up.
    let mut unanswered: Vec<ResponseChannel<Response>> = Vec::new();
    let (mut sent, mut ticks) = (0u64, 0u64);
    loop {
        tokio::select! {
            _ = &mut stopped => return sent,
            _ = tick.tick() => {
                ticks += 1;
                let n = ticks / floods.len() as u64;
                let site_message = |haves: Vec<Have>| SiteMessage {
                    sent_at: ticks,
                    class: plan.class.clone(),
                    haves,
                    slot: plan.holds_slot.then_some(SlotClaim { since: 0, holding: true }),
                    enrolment: plan.enrolment.clone(),
                };
                let (to, bytes) = match &floods[(ticks % floods.len() as u64) as usize] {
                    Flood::SiteMessage => (&topic, codec::encode(&site_message(haves.clone()))),
                    Flood::SignatureBomb(genuine) => {
                        let mut bomb = genuine.clone();
                        bomb.signatures = vec![genuine.signatures[0].clone(); MAX_SIGNATURES + 1];
                        // The last copy's bytes count the messages, so each is new.
                        bomb.signatures[MAX_SIGNATURES].bytes.0[..8].copy_from_slice(&ticks.to_le_bytes());
                        (&releases, bomb.to_bytes())
                    }
                    Flood::ReEncoding(genuine) => {
                        // The format field, one byte canonically, as u16, u32 or u64.
                        let wide: &[u8] = match n % 3 {
                            0 => &[0xfb, 2, 0],
                            1 => &[0xfc, 2, 0, 0, 0],
                            _ => &[0xfd, 2, 0, 0, 0, 0, 0, 0, 0],
                        };
                        let bytes = genuine.to_bytes();
                        (&releases, [wide, &bytes[1..]].concat())
                    }
                    Flood::HugeSiteMessage => (&topic, codec::encode(&site_message(many.clone()))),
                };
                if swarm.behaviour_mut().gossipsub.publish(to.clone(), bytes).is_ok() {
                    sent += 1;
                }
            }
            event = swarm.select_next_some() => match event {
                SwarmEvent::Behaviour(BehaviourEvent::Chunks(request_response::Event::Message {
                    message: request_response::Message::Request { channel, request, .. }, ..
                })) => {
                    if plan.not_found {
                        let n = match &request.want { Want::Chunks(c) => c.len(), Want::Manifest(_) => 1 };
                        let items = vec![Item { status: Status::NotFound, body: Vec::new() }; n];
                        let _ = swarm.behaviour_mut().chunks.send_response(channel, Response { id: request.id, items });
                    } else {
                        unanswered.push(channel);
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                    propagation_source, message_id, ..
                })) => {
                    // Passes on nothing it hears.
                    let _ = swarm.behaviour_mut().gossipsub.report_message_validation_result(
                        &message_id, &propagation_source, gossipsub::MessageAcceptance::Ignore);
                }
                SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event { result: Ok(_), .. })) => sent += 1,
                _ => {}
            },
        }
    }
}
