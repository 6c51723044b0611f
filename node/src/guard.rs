//! What the network must pass before the loop looks at it: connection limits (per
//! peer, per IP, in total), each gossip topic's size limit, the count of messages
//! gossipsub drops from graylisted peers, and for site messages, decoding and
//! admission (enrolled authors of this site, within their budget,
//! [`crate::site::Site::admit`]).
//!
//! **Goals:** a refusal costs at most one decode and one signature check, and is
//! counted by topic and reason; nothing refused is forwarded; no peer or address can
//! take every connection.
//!
//! **Non-goals:** what a valid message means (the loop, the intake, the core).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::task::{Context, Poll};

use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::gossipsub;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent,
    ToSwarm, dummy,
};
use libp2p::{PeerId, connection_limits};
use otamesh_core::site::SiteRefusal;
use otamesh_core::{Millis, TrustRoot, codec};
use prometheus_client::metrics::counter::Counter;

use crate::site::Site;
use crate::wire::SiteMessage;

/// Connections to one peer at most: two, so that two peers dialling each other at once
/// both succeed.
pub const MAX_CONNECTIONS_PER_PEER: u32 = 2;
/// Established connections from one IP address at most (loopback is not limited: the
/// processes on this host are trusted as far as connections go).
pub const MAX_CONNECTIONS_PER_IP: usize = 64;
/// Established connections in total at most.
pub const MAX_CONNECTIONS: u32 = 512;
/// Incoming connections still in their handshake at most.
pub const MAX_PENDING_INCOMING: u32 = 64;
/// File descriptors the node needs besides its connections (store, database, hooks,
/// origin and API sockets).
pub const FDS_BESIDES_CONNECTIONS: u64 = 256;

/// The connection limits above, as libp2p's behaviour.
pub fn connection_limits() -> connection_limits::Behaviour {
    connection_limits::Behaviour::new(
        connection_limits::ConnectionLimits::default()
            .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER))
            .with_max_established(Some(MAX_CONNECTIONS))
            .with_max_pending_incoming(Some(MAX_PENDING_INCOMING)),
    )
}

/// A start-up warning when the process may open fewer files than the connection limits
/// allow; `None` when the limit is enough (or unknown).
pub fn file_limit_warning() -> Option<String> {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current?;
    let needed = u64::from(MAX_CONNECTIONS) + FDS_BESIDES_CONNECTIONS;
    (limit < needed).then(|| {
        format!(
            "the process may open {limit} files but up to {MAX_CONNECTIONS} connections are allowed and the node needs about {needed} descriptors: raise it (`ulimit -n {needed}`, or LimitNOFILE= in a systemd unit)"
        )
    })
}

/// The largest site message: [`otamesh_core::site::MAX_RELEASES_PER_MESSAGE`] releases,
/// each two bitfields of a bit per chunk (a 4 GiB release of 64 KiB chunks is 8 KiB of
/// bits each), and an enrolment. A message naming 20,000 releases is refused on its
/// size alone, before it is decoded.
pub const MAX_SITE_MESSAGE_BYTES: usize = 256 << 10;

/// The largest report (a report, a signature and an enrolment are well under 4 KiB).
pub const MAX_REPORT_BYTES: usize = 64 << 10;

/// The largest directive (an order and a few signatures).
pub const MAX_DIRECTIVE_BYTES: usize = 64 << 10;

/// The largest root of trust (keys and signatures).
pub const MAX_ROOT_BYTES: usize = 256 << 10;

/// Messages of a rarely-changing topic (releases, directives, roots) one peer may pass
/// on at once; one more per [`RARE_REFILL_MS`]. Reports are budgeted per author instead
/// ([`crate::feedback::ReportBudget`]): a peer may rightly forward many devices' reports.
pub const RARE_BURST: u32 = 16;
/// See [`RARE_BURST`].
pub const RARE_REFILL_MS: Millis = 1_000;

/// The size limit of a topic by its `/metrics` label; `None` for a topic not ours.
pub fn topic_limit(topic: &str) -> Option<usize> {
    match topic {
        "releases" => Some(codec::MAX_MESSAGE_BYTES),
        "site" => Some(MAX_SITE_MESSAGE_BYTES),
        "reports" => Some(MAX_REPORT_BYTES),
        "directives" => Some(MAX_DIRECTIVE_BYTES),
        "roots" => Some(MAX_ROOT_BYTES),
        _ => None,
    }
}

/// Whether `topic` is budgeted per forwarding peer ([`RARE_BURST`]).
pub fn is_rare(topic: &str) -> bool {
    matches!(topic, "releases" | "directives" | "roots")
}

/// Size limits of every topic and the per-peer budget of the rare ones.
#[derive(Debug)]
pub struct Topics {
    rare: Budget<PeerId>,
}

impl Default for Topics {
    fn default() -> Self {
        Self { rare: Budget::new(RARE_BURST, RARE_REFILL_MS) }
    }
}

impl Topics {
    /// Why a message of `topic` (its `/metrics` label) passed on by `from` is refused
    /// before it is decoded: `"oversize"` (invalid: the sender is scored down) or
    /// `"flood"` (only not taken); `None` to go on.
    pub fn refuse(&mut self, now: Millis, topic: &str, from: PeerId, data: &[u8]) -> Option<&'static str> {
        if topic_limit(topic).is_some_and(|limit| data.len() > limit) {
            return Some("oversize");
        }
        if is_rare(topic) && !self.rare.spend(from, now) {
            return Some("flood");
        }
        None
    }
}

/// A site message: its author's budget, its size, canonical decoding, then admission of
/// its author. Returns the author's peer id, device id and the message.
pub fn site_message(
    site: &mut Site,
    now: Millis,
    source: Option<PeerId>,
    data: &[u8],
    trust: &TrustRoot,
) -> Result<(PeerId, otamesh_core::DeviceId, SiteMessage), SiteRefusal> {
    let peer = source.ok_or(SiteRefusal::NoAuthor)?;
    site.spend(now, source)?;
    if data.len() > MAX_SITE_MESSAGE_BYTES {
        return Err(SiteRefusal::Malformed);
    }
    let msg: SiteMessage = codec::decode(data).map_err(|_| SiteRefusal::Malformed)?;
    let device = site.admit(Some(peer), &msg.enrolment, &msg.class, msg.haves.len(), trust)?;
    Ok((peer, device, msg))
}

/// A token bucket per author: `burst` messages at once, then one per `refill_ms`.
/// Tracks at most [`crate::site::MAX_VERIFIED`] authors; beyond that, the full (idle) ones are
/// forgotten first.
#[derive(Debug)]
pub struct Budget<K> {
    burst: u32,
    refill_ms: Millis,
    authors: HashMap<K, (u32, Millis)>,
}

impl<K: std::hash::Hash + Eq> Budget<K> {
    /// `burst` at once, one more per `refill_ms`.
    pub fn new(burst: u32, refill_ms: Millis) -> Self {
        Self { burst, refill_ms: refill_ms.max(1), authors: HashMap::new() }
    }

    /// Spends one of `author`'s messages at `now`; false when it has none left.
    pub fn spend(&mut self, author: K, now: Millis) -> bool {
        if self.authors.len() >= crate::site::MAX_VERIFIED && !self.authors.contains_key(&author) {
            let (burst, refill) = (self.burst, self.refill_ms);
            self.authors.retain(|_, b| Self::refill(b, now, burst, refill) < burst);
            if self.authors.len() >= crate::site::MAX_VERIFIED {
                return false;
            }
        }
        let (burst, refill) = (self.burst, self.refill_ms);
        let bucket = self.authors.entry(author).or_insert((burst, now));
        if Self::refill(bucket, now, burst, refill) == 0 {
            return false;
        }
        bucket.0 -= 1;
        true
    }

    fn refill(bucket: &mut (u32, Millis), now: Millis, burst: u32, refill_ms: Millis) -> u32 {
        let earned = now.saturating_sub(bucket.1) / refill_ms;
        if earned > 0 {
            bucket.0 = (u64::from(bucket.0) + earned).min(u64::from(burst)) as u32;
            bucket.1 = if bucket.0 == burst { now } else { bucket.1 + earned * refill_ms };
        }
        bucket.0
    }
}

/// Established connections per remote IP address, denied past [`MAX_CONNECTIONS_PER_IP`].
#[derive(Debug, Default)]
pub struct IpLimit {
    established: HashMap<IpAddr, usize>,
}

impl IpLimit {
    fn ip(addr: &Multiaddr) -> Option<IpAddr> {
        addr.iter().find_map(|p| match p {
            Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
            Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
            _ => None,
        })
    }

    fn check(&self, remote: &Multiaddr) -> Result<(), ConnectionDenied> {
        let Some(ip) = Self::ip(remote).filter(|ip| !ip.is_loopback()) else { return Ok(()) };
        let n = self.established.get(&ip).copied().unwrap_or(0);
        if n >= MAX_CONNECTIONS_PER_IP {
            return Err(ConnectionDenied::new(format!(
                "{n} connections from {ip} already (the most per address)"
            )));
        }
        Ok(())
    }
}

impl NetworkBehaviour for IpLimit {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.check(remote_addr)?;
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(e) => {
                if let Some(ip) = Self::ip(e.endpoint.get_remote_address()) {
                    *self.established.entry(ip).or_default() += 1;
                }
            }
            FromSwarm::ConnectionClosed(e) => {
                if let Some(ip) = Self::ip(e.endpoint.get_remote_address())
                    && let Some(n) = self.established.get_mut(&ip)
                {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.established.remove(&ip);
                    }
                }
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(&mut self, _: PeerId, _: ConnectionId, event: THandlerOutEvent<Self>) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

/// Gossipsub, with a count of the messages it drops unread because their sender is
/// graylisted (its score is below the graylist threshold): gossipsub itself only logs
/// them. Everything else is gossipsub's own ([`std::ops::Deref`]).
pub struct Graylisted {
    inner: gossipsub::Behaviour,
    threshold: f64,
    dropped: Counter,
}

impl Graylisted {
    /// `inner`, whose peers are graylisted below `threshold`.
    pub fn new(inner: gossipsub::Behaviour, threshold: f64) -> Self {
        Self { inner, threshold, dropped: Counter::default() }
    }

    /// Counts dropped messages into `counter` from now on (a registered metric).
    pub fn count_into(&mut self, counter: Counter) {
        self.dropped = counter;
    }
}

impl std::fmt::Debug for Graylisted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graylisted").field("threshold", &self.threshold).finish_non_exhaustive()
    }
}

impl std::ops::Deref for Graylisted {
    type Target = gossipsub::Behaviour;

    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl std::ops::DerefMut for Graylisted {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.inner
    }
}

type GossipHandlerEvent = THandlerOutEvent<gossipsub::Behaviour>;

impl NetworkBehaviour for Graylisted {
    type ConnectionHandler = THandler<gossipsub::Behaviour>;
    type ToSwarm = gossipsub::Event;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner.handle_pending_inbound_connection(id, local, remote)
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner.handle_established_inbound_connection(id, peer, local, remote)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: Option<PeerId>,
        addresses: &[Multiaddr],
        role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner.handle_pending_outbound_connection(id, peer, addresses, role)
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner.handle_established_outbound_connection(id, peer, addr, role, port_use)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.inner.on_swarm_event(event)
    }

    fn on_connection_handler_event(&mut self, peer: PeerId, id: ConnectionId, event: THandlerOutEvent<Self>) {
        if let GossipHandlerEvent::Message { rpc, invalid_messages } = &event {
            let messages = rpc.messages.len() + invalid_messages.len();
            // The same test gossipsub makes before it drops the whole RPC.
            if messages > 0 && self.inner.peer_score(&peer).is_some_and(|s| s < self.threshold) {
                self.dropped.inc_by(messages as u64);
            }
        }
        self.inner.on_connection_handler_event(peer, id, event)
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        self.inner.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use otamesh_core::SignedManifest;
    use otamesh_core::rollout::RolloutPolicy;
    use otamesh_core::site::SlotClaim;

    use super::*;
    use crate::testkit;
    use crate::wire::Have;

    #[test]
    fn one_address_gets_at_most_its_share_of_connections_and_loopback_is_not_limited() {
        let mut limit = IpLimit::default();
        let lan: Multiaddr = "/ip4/10.0.7.9/tcp/4700".parse().expect("valid");
        let other: Multiaddr = "/ip4/10.0.7.10/tcp/4700".parse().expect("valid");
        let local: Multiaddr = "/ip4/127.0.0.1/tcp/4700".parse().expect("valid");
        limit.established.insert("10.0.7.9".parse().expect("ip"), MAX_CONNECTIONS_PER_IP - 1);
        limit.established.insert("127.0.0.1".parse().expect("ip"), 10 * MAX_CONNECTIONS_PER_IP);
        assert!(limit.check(&lan).is_ok());
        *limit.established.get_mut(&"10.0.7.9".parse().expect("ip")).expect("present") += 1;
        assert!(limit.check(&lan).is_err(), "the 65th connection from one address");
        assert!(limit.check(&other).is_ok());
        assert!(limit.check(&local).is_ok());
    }

    /// Mean microseconds per call of `f` over `n` calls.
    fn micros(n: u32, mut f: impl FnMut()) -> f64 {
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        t.elapsed().as_secs_f64() * 1e6 / f64::from(n)
    }

    fn site_bytes(releases: usize, bits: usize) -> Vec<u8> {
        let haves = (0..releases)
            .map(|i| Have {
                release: otamesh_core::ReleaseId::from_bytes(*blake3::hash(&i.to_le_bytes()).as_bytes()),
                bits: vec![0xff; bits],
                fetching: vec![0xff; bits],
            })
            .collect();
        let stranger = otamesh_core::SecretKey::from_seed([5; 32]);
        codec::encode(&SiteMessage {
            sent_at: 1,
            class: "gw".into(),
            haves,
            slot: Some(SlotClaim { since: 0, holding: true }),
            enrolment: testkit::enrol(&stranger, "s1"),
        })
    }

    /// The attacks of issue 11 that cost a receiver CPU, each refused the way the loop
    /// refuses it, with the cost printed (`cargo test -p otamesh-node --lib
    /// guard::tests::refusal_costs -- --nocapture`; debug build of our crates,
    /// dependencies at opt-level 2). No timing is asserted: the machine is shared.
    #[test]
    fn refusal_costs_of_bombs_re_encodings_and_huge_site_messages() {
        let trust = testkit::trust();
        let genuine =
            testkit::publisher().sign_manifest(testkit::manifest(b"firmware", 1, RolloutPolicy::default()));
        let genuine_bytes = genuine.to_bytes();

        // A signature bomb: 50,000 copies of the publisher's signature (5 MB, under the
        // gossip size limit), so that every signature names a trusted key.
        let mut bomb = genuine.clone();
        bomb.signatures = vec![genuine.signatures[0].clone(); 50_000];
        let bomb_bytes = bomb.to_bytes();
        assert!(bomb_bytes.len() < codec::MAX_MESSAGE_BYTES);
        let refuse_bomb = || {
            assert!(SignedManifest::from_bytes(&bomb_bytes).is_err(), "refused at the signature count");
        };
        let bomb_us = micros(200, refuse_bomb);

        // A re-encoding: the format field (2) as a non-minimal varint (0xfb, u16).
        assert_eq!(genuine_bytes[0], 2);
        let mut re = vec![0xfb, 2, 0];
        re.extend_from_slice(&genuine_bytes[1..]);
        assert!(matches!(SignedManifest::from_bytes(&re), Err(codec::DecodeError::NonCanonical)));
        let re_us = micros(200, || assert!(SignedManifest::from_bytes(&re).is_err()));

        // A site message naming 20,000 releases: refused on its size before decoding.
        let huge = site_bytes(20_000, 1);
        let mut topics = Topics::default();
        let peer = PeerId::random();
        assert_eq!(topics.refuse(0, "site", peer, &huge), Some("oversize"));
        let huge_us = micros(200, || assert!(topics.refuse(0, "site", peer, &huge).is_some()));

        // One just over the release cap, under the size limit: refused at the length
        // prefix of its release list.
        let over = site_bytes(otamesh_core::site::MAX_RELEASES_PER_MESSAGE + 1, 2048);
        assert!(over.len() <= MAX_SITE_MESSAGE_BYTES);
        let stranger = otamesh_core::SecretKey::from_seed([5; 32]);
        let author = libp2p::identity::Keypair::ed25519_from_bytes(stranger.to_seed()).expect("32 bytes");
        let author = author.public().to_peer_id();
        let mut site = Site::new("s1", otamesh_core::DeviceId::from_bytes([0; 32]));
        let mut now = 0;
        let over_us = micros(200, || {
            now += 1_000;
            let r = site_message(&mut site, now, Some(author), &over, &trust);
            assert_eq!(r.err(), Some(SiteRefusal::Malformed));
        });

        // A stranger's self-signed enrolment: one signature check, refused.
        let forged = {
            let mut m: SiteMessage = codec::decode(&site_bytes(1, 8)).expect("decodes");
            m.enrolment.signatures = vec![
                stranger.sign(otamesh_core::trust::Domain::Enrolment, &codec::encode(&m.enrolment.enrolment)),
            ];
            codec::encode(&m)
        };
        let mut site = Site::new("s1", otamesh_core::DeviceId::from_bytes([0; 32]));
        let mut now = 0;
        let forged_us = micros(200, || {
            now += 1_000;
            assert_eq!(
                site_message(&mut site, now, Some(author), &forged, &trust).err(),
                Some(SiteRefusal::Forged)
            );
        });
        eprintln!(
            "refusal costs (mean us): signature bomb of 50,000 ({} bytes) {bomb_us:.0}; re-encoded manifest {re_us:.1}; \
             20,000-release site message ({} bytes) {huge_us:.2}; 17-release site message ({} bytes) {over_us:.1}; \
             self-enrolled site message {forged_us:.1}",
            bomb_bytes.len(),
            huge.len(),
            over.len()
        );
    }
}
