//! Chunk sourcing decisions shared by the node and the simulator.
//!
//! For a chunk nobody on a site has yet, one live site member fetches it from the
//! origin, chosen by rendezvous (highest-random-weight) hashing of (chunk, member):
//! every member computes the same owner from the same membership, with no coordinator,
//! and when a member leaves only the chunks it owned move.
//!
//! [`Planner`] is the per-release fetch machine built on that rule: it knows which
//! chunks this device has, which chunks each live site peer has and which it is
//! fetching from the origin (their gossiped have-sets and fetching-sets), what is in
//! flight, and decides what to ask of whom.
//!
//! Why a site fetches each chunk about once, whatever its size and start order:
//!
//! - **Claims travel.** A member advertises the chunks it is fetching from the origin
//!   ([`Planner::fetching_bitfield`]); nobody else fetches a claimed chunk. Two members
//!   whose membership views differ (one has not heard of a newcomer yet) can therefore
//!   only collide on chunks both start within one gossip delay.
//! - **Own order.** Each member works through the chunks it owns in the order of its own
//!   rendezvous weight, highest first, so two members that both think they own a chunk
//!   rarely reach it at the same moment.
//! - **Staggered takeover.** A chunk whose owner delivers nothing is taken over by the
//!   member ranked second for it after `owner_timeout`, by the third after twice that,
//!   and so on; the first to start advertises its claim. Every member falling back at
//!   the same instant (the old rule) made a stalled owner cost the site one WAN copy per
//!   member.
//!
//! Claims are hints, outcomes are facts: a fresh have-set never makes a peer more
//! credible; only chunks that arrive verified do. A peer whose request fails or times
//! out is *struck*: it loses every chunk it claimed and its ownership at once, is
//! suspended for `strike_backoff`, and is banned for the release at `max_strikes`. A
//! peer that serves bytes not matching their id is banned at once. New peers get a
//! small request window that grows with each chunk they deliver, so a bad peer wastes
//! a few requests, not a pipeline.
//!
//! **Goals:** LAN peers first; rarest chunk first, so copies spread; each missing chunk
//! crosses the site's WAN link about once; bounded requests per peer and to the origin;
//! no peer can stall a release for longer than a configured time; every failed or
//! undelivered claim is reported with the peer and the chunks ([`Output::Stalled`]).
//!
//! **Non-goals:** moving bytes, verifying them (the driver checks every chunk against
//! its id before it reports it verified), deciding *whether* to fetch a release, or who
//! may be a site member (the driver passes only enrolled members' have-sets).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::{ChunkId, DeviceId, Millis};

/// The rendezvous weight of `member` for `chunk`.
pub fn weight(chunk: ChunkId, member: DeviceId) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(b"otamesh/v1/rendezvous\0");
    h.update(chunk.as_bytes());
    h.update(member.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.finalize().as_bytes()[..8]);
    u64::from_be_bytes(b)
}

/// Where a member stands for a chunk in the rendezvous order ([`rank`]): the member of
/// the highest rank fetches the chunk over the WAN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rank {
    weight: u64,
    /// Ties (astronomically unlikely) go to the smaller device id, so the order is total.
    member: std::cmp::Reverse<DeviceId>,
}

/// The rank of `member` for `chunk`.
pub fn rank(chunk: ChunkId, member: DeviceId) -> Rank {
    Rank { weight: weight(chunk, member), member: std::cmp::Reverse(member) }
}

/// The member that fetches `chunk` over the WAN for its site, the one of highest
/// [`rank`]; `None` for no members.
pub fn wan_owner(chunk: ChunkId, members: impl IntoIterator<Item = DeviceId>) -> Option<DeviceId> {
    members.into_iter().max_by_key(|m| rank(chunk, *m))
}

/// Tunables of a [`Planner`]. The defaults suit a LAN of a few to a few dozen devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannerConfig {
    /// Chunks asked of one proven peer at once (pipelining depth per peer).
    pub max_per_peer: usize,
    /// Chunks asked of all peers together at once: bounds the memory responses in
    /// flight can take, however many peers a site has.
    pub max_peer_total: usize,
    /// Origin downloads in flight at once. Also the most fetching claims honoured from
    /// one peer: an honest member never has more in flight.
    pub max_origin: usize,
    /// A peer request not answered within this strikes the peer; the chunk is
    /// re-planned elsewhere. The floor: when the site's LAN is slow, the timeout grows
    /// with the time recent requests took to be answered, up to
    /// `max_request_timeout`.
    pub request_timeout: Millis,
    /// The longest a peer request is waited for, however slow the LAN.
    pub max_request_timeout: Millis,
    /// An origin download not finished within this is abandoned and retried.
    pub origin_timeout: Millis,
    /// The member ranked `r` for a chunk nobody has fetches it from the origin once the
    /// owner has delivered nothing for `(r - 1) * owner_timeout`; a peer's claim to be
    /// fetching a chunk from the origin is honoured for this long.
    pub owner_timeout: Millis,
    /// No origin download starts before this long after the planner was created, so
    /// that site peers' first have-sets arrive and everyone hashes over the same
    /// membership. LAN requests may start at once.
    pub settle: Millis,
    /// First retry delay after an origin failure; doubles per failure.
    pub retry_base: Millis,
    /// The longest retry delay.
    pub retry_max: Millis,
    /// Requests a peer gets at once before it has delivered anything; each chunk it
    /// delivers verified widens its window by one, up to `max_per_peer` (slow start).
    pub initial_window: usize,
    /// How long a struck peer's claims are ignored and it owns nothing.
    pub strike_backoff: Millis,
    /// Strikes (failed or timed-out requests, one per episode) that ban a peer for the
    /// release.
    pub max_strikes: u32,
}

impl Default for PlannerConfig {
    fn default() -> Self {
        Self {
            // With 64 KiB chunks, 256 in flight is 16 MiB: on loopback a deeper pipeline
            // than 64 raised one peer's throughput by 40% (bench/node-bench.sh).
            max_per_peer: 256,
            max_peer_total: 256,
            max_origin: 4,
            request_timeout: 10_000,
            // The node's request-response protocol gives up after 60 s.
            max_request_timeout: 60_000,
            origin_timeout: 120_000,
            owner_timeout: 15_000,
            settle: 2_000,
            retry_base: 500,
            retry_max: 30_000,
            // Two chunks: a peer serving bad bytes is banned on the first and has at
            // most one more outstanding (the bound is four).
            initial_window: 2,
            strike_backoff: 30_000,
            max_strikes: 2,
        }
    }
}

/// Where a chunk is asked of or came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// A site peer, by device id.
    Peer(DeviceId),
    /// The origin, over the WAN.
    Origin,
}

/// What the planner wants done. The driver executes each and reports the result back
/// with [`Planner::handle_chunk_verified`], [`Planner::handle_chunk_bad`] or
/// [`Planner::handle_chunk_failed`].
#[must_use]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Ask site peer `peer` for `chunk`.
    Request {
        /// Who to ask.
        peer: DeviceId,
        /// What for.
        chunk: ChunkId,
    },
    /// Download `chunk` from the origin.
    FetchFromOrigin {
        /// What to download.
        chunk: ChunkId,
    },
    /// `peer` did not deliver what it claimed: the driver should log it (a warning
    /// naming the peer and the chunks). Its claims are already dropped and the chunks
    /// re-planned.
    Stalled {
        /// The peer that failed to deliver.
        peer: DeviceId,
        /// What it failed to deliver (may be empty for a strike with nothing in flight).
        chunks: Vec<ChunkId>,
        /// How it failed.
        reason: Stall,
    },
    /// `peer` is banned for this release: it is never asked again and its have-sets
    /// are ignored.
    Banned {
        /// The offender.
        peer: DeviceId,
        /// Why.
        reason: BanReason,
    },
    /// Every chunk is here and verified. Emitted once.
    Complete,
}

/// How a peer failed to deliver ([`Output::Stalled`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stall {
    /// A request failed: the peer answered that it lacks a chunk it advertised, or the
    /// connection broke. The peer is struck.
    Refused,
    /// A request was not answered within `request_timeout`. The peer is struck.
    TimedOut,
    /// The peer owns (or claimed to be fetching) these chunks and delivered nothing for
    /// `owner_timeout`: this device now fetches them from the origin.
    NoProgress,
}

impl Stall {
    /// A short label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Stall::Refused => "refused",
            Stall::TimedOut => "timed_out",
            Stall::NoProgress => "no_progress",
        }
    }
}

/// Why a peer was banned for a release ([`Output::Banned`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BanReason {
    /// It served bytes that do not hash to the chunk asked for.
    BadChunk,
    /// It was struck `max_strikes` times for chunks it advertised and did not deliver.
    Undelivered,
}

impl BanReason {
    /// A short label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            BanReason::BadChunk => "bad_chunk",
            BanReason::Undelivered => "undelivered",
        }
    }
}

/// Why a have-set or fetching-set was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BitfieldError {
    /// The bitfield is not `ceil(chunks / 8)` bytes long: it was made for another
    /// manifest or by a broken peer; it is ignored.
    #[error("have-bitfield of {got} bytes, expected {expected} for this release's chunk count")]
    Length {
        /// Bytes received.
        got: usize,
        /// Bytes expected.
        expected: usize,
    },
}

/// The fetch planner for one release on one device.
///
/// Sans-IO, in the shape of the other core machines: `handle_*` methods feed it what
/// happened, [`Planner::poll_output`] drains what it wants done and
/// [`Planner::poll_timeout`] says when it next wants [`Planner::handle_timeout`]. Every
/// `handle_*` call first expires what is due at its `now`, so a deadline is never lost
/// because another input arrived before the timer fired.
///
/// **Drain rule:** after every `handle_*` call, drain [`Planner::poll_output`] until
/// `None` and execute the outputs before feeding the next input; then re-read
/// [`Planner::poll_timeout`]. After an [`Output::FetchFromOrigin`], gossip
/// [`Planner::fetching_bitfield`] soon: it is what keeps other members off that chunk.
///
/// Chunks are tracked by id: a manifest that lists the same chunk twice needs it once.
/// Bitfields are over the manifest's chunk *indexes*, so peers with the same manifest
/// agree on them.
#[derive(Debug)]
pub struct Planner {
    me: DeviceId,
    config: PlannerConfig,
    created: Millis,
    /// Unique chunk ids in order of first appearance in the manifest.
    ids: Vec<ChunkId>,
    slot_of: BTreeMap<ChunkId, usize>,
    /// Manifest index -> slot.
    index_slot: Vec<u32>,
    /// This device's rendezvous weight for each slot (its own work order).
    my_weight: Vec<u64>,
    state: Vec<ChunkState>,
    /// Slots not yet here, in or out of flight.
    missing: BTreeSet<usize>,
    /// Credible (not suspended) peers whose have-set names each slot.
    holders: Vec<u32>,
    /// The rendezvous owner of each slot over the current owning membership.
    owner: Vec<DeviceId>,
    /// This device's rank for each slot: 1 when it is the owner.
    rank: Vec<u32>,
    owners_stale: bool,
    /// The last time a claim on each slot (a fetching claim or a have) was honoured or
    /// withdrawn: origin takeovers are scheduled from it, so that a lapsed claim does not
    /// make every member fetch at once.
    last_claim: Vec<Millis>,
    /// Slots some credible peer claims to be fetching, with when the claim lapses;
    /// rebuilt on every plan.
    claimed: BTreeMap<usize, Millis>,
    peers: BTreeMap<DeviceId, Peer>,
    banned: BTreeSet<DeviceId>,
    origin_inflight: usize,
    outputs: VecDeque<Output>,
    complete_sent: bool,
    /// The latest `now` seen; timeouts at or before it are not reported again.
    now: Millis,
    next_timeout: Option<Millis>,
    /// How long the last [`ANSWER_SAMPLES`] peer requests took to be answered with a
    /// verified chunk, oldest first.
    answers: VecDeque<Millis>,
}

/// Answer times kept for the request timeout.
const ANSWER_SAMPLES: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Have,
    Missing { since: Millis, not_before: Millis, origin_failures: u32 },
    InFlight { source: Source, sent: Millis, since: Millis, origin_failures: u32 },
}

#[derive(Debug)]
struct Peer {
    have: Vec<bool>,
    count: usize,
    /// Slots it says it is fetching from the origin, each with when this device first
    /// heard the claim (claims lapse `owner_timeout` after that).
    claims: BTreeMap<usize, Millis>,
    inflight: usize,
    /// Requests it may have outstanding now (slow start).
    window: usize,
    /// When it last delivered: served a verified chunk, or a chunk it claimed to fetch
    /// arrived here verified. Starts when it joined. Never moved by a have-set.
    credit: Millis,
    /// When it last served this device a chunk that verified (0: never). Unlike
    /// `credit`, nobody else's delivery moves it.
    served: Millis,
    strikes: u32,
    /// Set by a strike: its claims are ignored and it owns nothing until this time has
    /// passed *and* a new have-set arrives.
    suspended_until: Option<Millis>,
}

impl Planner {
    /// A planner for the chunks `chunks` (the manifest's list, in order) on device `me`;
    /// `have` says which of them the device already holds (verified, e.g. after a
    /// restart).
    pub fn new(
        me: DeviceId,
        chunks: impl IntoIterator<Item = ChunkId>,
        have: impl Fn(ChunkId) -> bool,
        now: Millis,
        config: PlannerConfig,
    ) -> Self {
        let mut ids = Vec::new();
        let mut slot_of = BTreeMap::new();
        let mut index_slot = Vec::new();
        for id in chunks {
            let slot = *slot_of.entry(id).or_insert_with(|| {
                ids.push(id);
                ids.len() - 1
            });
            // Invariant: a manifest lists at most MAX_CHUNKS (100k) chunks.
            index_slot.push(slot as u32);
        }
        let mut missing = BTreeSet::new();
        let state = ids
            .iter()
            .enumerate()
            .map(|(slot, id)| {
                if have(*id) {
                    ChunkState::Have
                } else {
                    missing.insert(slot);
                    ChunkState::Missing { since: now, not_before: now, origin_failures: 0 }
                }
            })
            .collect();
        let n = ids.len();
        let my_weight = ids.iter().map(|c| weight(*c, me)).collect();
        let mut planner = Self {
            me,
            config,
            created: now,
            ids,
            slot_of,
            index_slot,
            my_weight,
            state,
            missing,
            holders: vec![0; n],
            owner: vec![me; n],
            rank: vec![1; n],
            owners_stale: true,
            last_claim: vec![0; n],
            claimed: BTreeMap::new(),
            peers: BTreeMap::new(),
            banned: BTreeSet::new(),
            origin_inflight: 0,
            outputs: VecDeque::new(),
            complete_sent: false,
            now,
            next_timeout: None,
            answers: VecDeque::new(),
        };
        planner.plan(now);
        planner
    }

    /// The next thing to do, if any. See the drain rule on [`Planner`].
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`Planner::handle_timeout`] should next be called; `None` when nothing is
    /// pending on time.
    pub fn poll_timeout(&self) -> Option<Millis> {
        self.next_timeout
    }

    /// Time has reached `now`: expire stalled requests and start what is due.
    pub fn handle_timeout(&mut self, now: Millis) {
        self.plan(now);
    }

    /// `peer`, a live member of this device's site, says which chunks of the release it
    /// holds (`have`) and which it is fetching from the origin now (`fetching`; empty
    /// for none). In both, bit `i` of byte `i / 8`, least significant first, is manifest
    /// index `i`. Its first have-set makes it a member; later ones replace the earlier.
    ///
    /// A have-set is a claim, not progress: it never extends the time the peer is
    /// trusted to deliver. A suspended peer's have-sets are ignored until its suspension
    /// ends; a banned peer's always.
    pub fn handle_peer_have(
        &mut self,
        now: Millis,
        peer: DeviceId,
        have: &[u8],
        fetching: &[u8],
    ) -> Result<(), BitfieldError> {
        let expected = self.index_slot.len().div_ceil(8);
        if have.len() != expected {
            return Err(BitfieldError::Length { got: have.len(), expected });
        }
        if !fetching.is_empty() && fetching.len() != expected {
            return Err(BitfieldError::Length { got: fetching.len(), expected });
        }
        if peer == self.me || self.banned.contains(&peer) {
            self.plan(now);
            return Ok(());
        }
        if let Some(p) = self.peers.get_mut(&peer)
            && let Some(until) = p.suspended_until
        {
            if now < until {
                self.plan(now);
                return Ok(());
            }
            // Back on probation: a fresh window, its old strikes kept.
            p.suspended_until = None;
            p.window = self.config.initial_window;
            self.owners_stale = true;
        }
        let mut held = vec![false; self.ids.len()];
        for (index, &slot) in self.index_slot.iter().enumerate() {
            if have[index / 8] & (1 << (index % 8)) != 0 {
                held[slot as usize] = true;
            }
        }
        // Honest members never fetch more than `max_origin` at once; the rest of a
        // longer claim is ignored, so a liar can hold back only that many.
        let mut fetching_slots = BTreeSet::new();
        if !fetching.is_empty() {
            for (index, &slot) in self.index_slot.iter().enumerate() {
                if fetching_slots.len() >= self.config.max_origin {
                    break;
                }
                if fetching[index / 8] & (1 << (index % 8)) != 0 && !held[slot as usize] {
                    fetching_slots.insert(slot as usize);
                }
            }
        }
        let count = held.iter().filter(|h| **h).count();
        let initial_window = self.config.initial_window;
        let is_new = !self.peers.contains_key(&peer);
        let entry = self.peers.entry(peer).or_insert_with(|| Peer {
            have: vec![false; held.len()],
            count: 0,
            claims: BTreeMap::new(),
            inflight: 0,
            window: initial_window,
            credit: now,
            served: 0,
            strikes: 0,
            suspended_until: None,
        });
        for (slot, (&old, &new)) in entry.have.iter().zip(&held).enumerate() {
            match (old, new) {
                (false, true) => self.holders[slot] += 1,
                (true, false) => {
                    self.holders[slot] -= 1;
                    self.last_claim[slot] = now;
                }
                _ => {}
            }
        }
        entry.have = held;
        entry.count = count;
        let mut claims = BTreeMap::new();
        for slot in fetching_slots {
            let first = entry.claims.get(&slot).copied().unwrap_or(now);
            // A lapsed claim no longer postpones anyone's takeover.
            if now < first.saturating_add(self.config.owner_timeout) {
                self.last_claim[slot] = now;
            }
            claims.insert(slot, first);
        }
        for slot in entry.claims.keys() {
            if !claims.contains_key(slot) {
                self.last_claim[*slot] = now;
            }
        }
        entry.claims = claims;
        if is_new {
            self.owners_stale = true;
        }
        self.plan(now);
        Ok(())
    }

    /// `peer` left the site (disconnected, or its have-sets stopped arriving). Chunks
    /// it owned move to other members; requests to it are re-planned.
    pub fn handle_peer_left(&mut self, now: Millis, peer: DeviceId) {
        self.remove_peer(now, peer);
        self.plan(now);
    }

    /// The driver checked `chunk`'s bytes from `source` against its id and stored them.
    /// `source` credits the peer that served it; a chunk that arrives from a source
    /// other than the one asked (a late answer) still counts.
    pub fn handle_chunk_verified(&mut self, now: Millis, source: Source, chunk: ChunkId) {
        self.handle_chunks_verified(now, source, [chunk]);
    }

    /// Several chunks verified and stored together (one batch from a peer): the same as
    /// [`Planner::handle_chunk_verified`] for each, but planned once, not per chunk.
    pub fn handle_chunks_verified(
        &mut self,
        now: Millis,
        source: Source,
        chunks: impl IntoIterator<Item = ChunkId>,
    ) {
        let mut delivered = 0;
        for chunk in chunks {
            let Some(&slot) = self.slot_of.get(&chunk) else { continue };
            delivered += 1;
            if let ChunkState::InFlight { source: asked, sent, .. } = self.state[slot] {
                self.release_slot(asked);
                if asked == source && matches!(source, Source::Peer(_)) {
                    if self.answers.len() == ANSWER_SAMPLES {
                        self.answers.pop_front();
                    }
                    self.answers.push_back(now.saturating_sub(sent));
                }
            }
            if self.state[slot] != ChunkState::Have {
                self.state[slot] = ChunkState::Have;
                self.missing.remove(&slot);
            }
            // A claim that turned into a real chunk is delivered progress.
            for p in self.peers.values_mut() {
                if p.claims.contains_key(&slot) {
                    p.credit = p.credit.max(now);
                }
            }
        }
        if let Source::Peer(id) = source
            && delivered > 0
            && let Some(p) = self.peers.get_mut(&id)
        {
            p.credit = p.credit.max(now);
            p.served = p.served.max(now);
            p.window = (p.window + delivered).min(self.config.max_per_peer);
        }
        self.plan(now);
    }

    /// `source` sent bytes for `chunk` that do not hash to it. A peer is banned for the
    /// release (an [`Output::Banned`]); the origin is retried with backoff.
    pub fn handle_chunk_bad(&mut self, now: Millis, source: Source, chunk: ChunkId) {
        if let Source::Peer(peer) = source
            && !self.banned.contains(&peer)
            && peer != self.me
        {
            self.ban(now, peer, BanReason::BadChunk);
        }
        self.handle_chunk_failed(now, source, chunk);
    }

    /// Asking `source` for `chunk` failed (the peer does not have it after all, the
    /// connection broke, the origin answered with an error). A peer is struck: it loses
    /// every claim and its ownership, and is suspended or, at `max_strikes`, banned. The
    /// origin is retried with backoff.
    pub fn handle_chunk_failed(&mut self, now: Millis, source: Source, chunk: ChunkId) {
        if let Some(&slot) = self.slot_of.get(&chunk)
            && let ChunkState::InFlight { source: asked, .. } = self.state[slot]
            && asked == source
        {
            match source {
                Source::Origin => self.fail_origin(now, slot),
                Source::Peer(peer) => self.strike(now, peer, Stall::Refused),
            }
        }
        self.plan(now);
    }

    /// The transport gave up waiting for `peer`'s answer to a request for `chunks`
    /// (before this planner's own timeout: a protocol timer, a stream that could not
    /// open in time). Judged like this planner's timeout: slow if the peer served this
    /// device verified chunks since the request was sent, otherwise struck.
    pub fn handle_request_timed_out(&mut self, now: Millis, peer: DeviceId, chunks: &[ChunkId]) {
        let sent = chunks
            .iter()
            .filter_map(|c| self.slot_of.get(c))
            .filter_map(|&slot| match self.state[slot] {
                ChunkState::InFlight { source: Source::Peer(asked), sent, .. } if asked == peer => Some(sent),
                _ => None,
            })
            .min();
        if let Some(sent) = sent {
            self.overdue(now, peer, sent);
        }
        self.plan(now);
    }

    /// Chunks in the manifest (counting repeats).
    pub fn chunks_total(&self) -> usize {
        self.index_slot.len()
    }

    /// Manifest chunks held (counting repeats).
    pub fn chunks_have(&self) -> usize {
        self.index_slot.iter().filter(|&&s| self.state[s as usize] == ChunkState::Have).count()
    }

    /// Whether every chunk is here.
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty()
    }

    /// This device's have-set over the manifest indexes, to gossip to the site.
    pub fn bitfield(&self) -> Vec<u8> {
        self.bits_where(|s| s == ChunkState::Have)
    }

    /// The chunks this device is fetching from the origin now, over the manifest
    /// indexes, to gossip beside [`Planner::bitfield`]: members that see a chunk here
    /// do not fetch it themselves.
    pub fn fetching_bitfield(&self) -> Vec<u8> {
        self.bits_where(|s| matches!(s, ChunkState::InFlight { source: Source::Origin, .. }))
    }

    /// The members this planner hashes ownership over: this device and its site peers
    /// that are not suspended.
    pub fn members(&self) -> impl Iterator<Item = DeviceId> + '_ {
        std::iter::once(self.me)
            .chain(self.peers.iter().filter(|(_, p)| p.suspended_until.is_none()).map(|(id, _)| *id))
    }

    /// Whether `peer` is banned for this release.
    pub fn is_banned(&self, peer: DeviceId) -> bool {
        self.banned.contains(&peer)
    }

    /// Whether `peer` is suspended after a strike (its claims ignored for now).
    pub fn is_suspended(&self, peer: DeviceId) -> bool {
        self.peers.get(&peer).is_some_and(|p| p.suspended_until.is_some())
    }

    /// Requests in flight to peers and to the origin.
    pub fn in_flight(&self) -> usize {
        self.missing.iter().filter(|&&s| matches!(self.state[s], ChunkState::InFlight { .. })).count()
    }

    fn bits_where(&self, pick: impl Fn(ChunkState) -> bool) -> Vec<u8> {
        let mut bits = vec![0u8; self.index_slot.len().div_ceil(8)];
        for (index, &slot) in self.index_slot.iter().enumerate() {
            if pick(self.state[slot as usize]) {
                bits[index / 8] |= 1 << (index % 8);
            }
        }
        bits
    }

    fn refresh_owners(&mut self) {
        if !self.owners_stale {
            return;
        }
        let others: Vec<DeviceId> = self.members().skip(1).collect();
        for &slot in &self.missing {
            let chunk = self.ids[slot];
            let mine = (self.my_weight[slot], std::cmp::Reverse(self.me));
            let (mut best, mut best_key, mut rank) = (self.me, mine, 1u32);
            for &m in &others {
                let key = (weight(chunk, m), std::cmp::Reverse(m));
                if key > mine {
                    rank += 1;
                }
                if key > best_key {
                    (best, best_key) = (m, key);
                }
            }
            self.owner[slot] = best;
            self.rank[slot] = rank;
        }
        self.owners_stale = false;
    }

    /// When this device may fetch `slot` (wanted since `since`, nobody holding or
    /// claiming it) from the origin: at once for the owner, and `(rank - 1) *
    /// owner_timeout` after the owner's last delivery for the others, counted from the
    /// latest of settling, the chunk becoming wanted and the last claim on it.
    fn origin_at(&self, slot: usize, since: Millis) -> Millis {
        let owner = self.owner[slot];
        let credit = if owner == self.me { 0 } else { self.peers.get(&owner).map_or(0, |p| p.credit) };
        let base = since.max(self.created + self.config.settle).max(credit).max(self.last_claim[slot]);
        let wait = Millis::from(self.rank[slot] - 1).saturating_mul(self.config.owner_timeout);
        base.saturating_add(wait)
    }

    /// When a request to `source` sent at `sent` is overdue, peer requests waiting
    /// `peer_timeout` ([`Planner::request_timeout`], worked out once per pass).
    fn deadline(&self, source: Source, sent: Millis, peer_timeout: Millis) -> Millis {
        let timeout = match source {
            Source::Origin => self.config.origin_timeout,
            Source::Peer(_) => peer_timeout,
        };
        sent.saturating_add(timeout)
    }

    /// How long a peer request is waited for: four times the 90th percentile of the
    /// last [`ANSWER_SAMPLES`] answer times on this site (only chunks that arrived
    /// verified from the peer asked count), within `request_timeout` and
    /// `max_request_timeout`. A congested LAN or a busy site (every member serving
    /// every other at once) makes honest answers slow; without this they were struck
    /// as silent and their chunks fetched over the WAN again (25 devices on 2 busy
    /// cores: up to 1.15x the release). A liar cannot shorten it, and can lengthen it
    /// only by delivering, slowly, up to the cap.
    fn request_timeout(&self) -> Millis {
        if self.answers.len() < ANSWER_SAMPLES / 4 {
            return self.config.request_timeout;
        }
        let mut sorted: Vec<Millis> = self.answers.iter().copied().collect();
        sorted.sort_unstable();
        let p90 = sorted[(sorted.len() * 9 / 10).min(sorted.len() - 1)];
        p90.saturating_mul(4).clamp(self.config.request_timeout, self.config.max_request_timeout)
    }

    fn room(&self, p: &Peer) -> usize {
        p.window.min(self.config.max_per_peer).saturating_sub(p.inflight)
    }

    fn release_slot(&mut self, source: Source) {
        match source {
            Source::Origin => self.origin_inflight = self.origin_inflight.saturating_sub(1),
            Source::Peer(p) => {
                if let Some(peer) = self.peers.get_mut(&p) {
                    peer.inflight = peer.inflight.saturating_sub(1);
                }
            }
        }
    }

    fn fail_origin(&mut self, now: Millis, slot: usize) {
        let ChunkState::InFlight { since, origin_failures, .. } = self.state[slot] else { return };
        self.release_slot(Source::Origin);
        let failures = origin_failures + 1;
        let shift = failures.saturating_sub(1).min(16);
        let not_before = now + (self.config.retry_base << shift).min(self.config.retry_max);
        self.state[slot] = ChunkState::Missing { since, not_before, origin_failures: failures };
    }

    /// Puts every request in flight to `peer` back to missing; returns their chunks.
    fn recall(&mut self, now: Millis, peer: DeviceId) -> Vec<ChunkId> {
        let asked: Vec<usize> = self
            .missing
            .iter()
            .copied()
            .filter(|&s| {
                matches!(self.state[s], ChunkState::InFlight { source: Source::Peer(q), .. } if q == peer)
            })
            .collect();
        for &slot in &asked {
            if let ChunkState::InFlight { since, origin_failures, .. } = self.state[slot] {
                self.state[slot] = ChunkState::Missing { since, not_before: now, origin_failures };
            }
        }
        if let Some(p) = self.peers.get_mut(&peer) {
            p.inflight = 0;
        }
        asked.into_iter().map(|s| self.ids[s]).collect()
    }

    /// `peer` failed to deliver something it advertised: it loses its claims and its
    /// ownership at once and is suspended, or banned at `max_strikes`. Late answers to
    /// the recalled requests are still welcome.
    fn strike(&mut self, now: Millis, peer: DeviceId, reason: Stall) {
        let chunks = self.recall(now, peer);
        let Some(p) = self.peers.get_mut(&peer) else { return };
        // One episode, one strike: the rest of a batch failing together adds nothing.
        if p.suspended_until.is_some() {
            return;
        }
        p.strikes += 1;
        let strikes = p.strikes;
        self.outputs.push_back(Output::Stalled { peer, chunks, reason });
        if strikes >= self.config.max_strikes {
            self.ban(now, peer, BanReason::Undelivered);
            return;
        }
        p.suspended_until = Some(now + self.config.strike_backoff);
        p.window = self.config.initial_window;
        for (slot, h) in p.have.iter_mut().enumerate() {
            if std::mem::replace(h, false) {
                self.holders[slot] -= 1;
                self.last_claim[slot] = now;
            }
        }
        p.count = 0;
        for slot in std::mem::take(&mut p.claims).into_keys() {
            self.last_claim[slot] = now;
        }
        self.owners_stale = true;
    }

    fn ban(&mut self, now: Millis, peer: DeviceId, reason: BanReason) {
        self.remove_peer(now, peer);
        self.banned.insert(peer);
        self.outputs.push_back(Output::Banned { peer, reason });
    }

    fn remove_peer(&mut self, now: Millis, peer: DeviceId) {
        self.recall(now, peer);
        let Some(p) = self.peers.remove(&peer) else { return };
        for (slot, h) in p.have.iter().enumerate() {
            if *h {
                self.holders[slot] -= 1;
                self.last_claim[slot] = now;
            }
        }
        for slot in p.claims.into_keys() {
            self.last_claim[slot] = now;
        }
        self.owners_stale = true;
    }

    /// Expires what is due, starts what may start, and recomputes the next timeout.
    fn plan(&mut self, now: Millis) {
        self.now = self.now.max(now);
        self.expire(now);
        self.assign(now);
        self.next_timeout = self.compute_timeout();
    }

    /// Requests past their deadline: a peer is struck (once for all its overdue
    /// requests), the origin retried with backoff.
    fn expire(&mut self, now: Millis) {
        let peer_timeout = self.request_timeout();
        let expired: Vec<(usize, Source, Millis)> = self
            .missing
            .iter()
            .filter_map(|&s| match self.state[s] {
                ChunkState::InFlight { source, sent, .. }
                    if self.deadline(source, sent, peer_timeout) <= now =>
                {
                    Some((s, source, sent))
                }
                _ => None,
            })
            .collect();
        // Per peer, when its oldest overdue request was sent.
        let mut overdue: BTreeMap<DeviceId, Millis> = BTreeMap::new();
        for (slot, source, sent) in expired {
            match source {
                Source::Origin => self.fail_origin(now, slot),
                Source::Peer(peer) => {
                    overdue.entry(peer).and_modify(|s| *s = (*s).min(sent)).or_insert(sent);
                }
            }
        }
        for (peer, sent) in overdue {
            self.overdue(now, peer, sent);
        }
    }

    /// A request to `peer` sent at `sent` is overdue. A peer that served verified chunks
    /// since it was asked is slow (a busy device, a congested LAN), not silent: its
    /// requests are planned again and its window halves, without a strike. One that
    /// served nothing is struck.
    fn overdue(&mut self, now: Millis, peer: DeviceId, sent: Millis) {
        if self.peers.get(&peer).is_some_and(|p| p.served > sent) {
            self.recall(now, peer);
            if let Some(p) = self.peers.get_mut(&peer) {
                p.window = (p.window / 2).max(self.config.initial_window);
            }
        } else {
            self.strike(now, peer, Stall::TimedOut);
        }
    }

    fn compute_timeout(&self) -> Option<Millis> {
        let peer_timeout = self.request_timeout();
        let mut next: Option<Millis> = None;
        // Work due now but not started waits for capacity, which only an input frees.
        let mut consider = |t: Millis| {
            if t > self.now {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        for &slot in &self.missing {
            match self.state[slot] {
                ChunkState::InFlight { source, sent, .. } => {
                    consider(self.deadline(source, sent, peer_timeout))
                }
                ChunkState::Missing { since, not_before, .. } => {
                    if self.holders[slot] > 0 {
                        consider(not_before);
                    } else if let Some(&lapses) = self.claimed.get(&slot) {
                        consider(lapses.max(not_before));
                    } else {
                        consider(self.origin_at(slot, since).max(not_before));
                    }
                }
                ChunkState::Have => {}
            }
        }
        next
    }

    fn assign(&mut self, now: Millis) {
        if self.missing.is_empty() {
            if !self.complete_sent {
                self.complete_sent = true;
                self.outputs.push_back(Output::Complete);
            }
            return;
        }
        self.refresh_owners();
        self.claimed.clear();
        for p in self.peers.values().filter(|p| p.suspended_until.is_none()) {
            for (&slot, &first) in &p.claims {
                let lapses = first.saturating_add(self.config.owner_timeout);
                if lapses > now {
                    let e = self.claimed.entry(slot).or_insert(lapses);
                    *e = (*e).max(lapses);
                }
            }
        }
        let total_room = self.config.max_peer_total.saturating_sub(self.peer_inflight());
        let peer_capacity = total_room > 0 && self.peers.values().any(|p| p.count > 0 && self.room(p) > 0);
        let origin_room = self.config.max_origin.saturating_sub(self.origin_inflight);
        let mut lan: Vec<(u32, usize)> = Vec::new();
        // (rank, own weight reversed, slot): own chunks first, each member in its own order.
        let mut wan: Vec<(u32, std::cmp::Reverse<u64>, usize)> = Vec::new();
        for &slot in &self.missing {
            let ChunkState::Missing { since, not_before, .. } = self.state[slot] else { continue };
            if not_before > now {
                continue;
            }
            if self.holders[slot] > 0 {
                if peer_capacity {
                    lan.push((self.holders[slot], slot));
                }
            } else if origin_room > 0
                && !self.claimed.contains_key(&slot)
                && self.origin_at(slot, since) <= now
            {
                wan.push((self.rank[slot], std::cmp::Reverse(self.my_weight[slot]), slot));
            }
        }
        // Rarest first; among equals, manifest order. Only the first `capacity`
        // candidates are sorted unless free request slots remain after them: one chunk
        // arriving frees one slot, and sorting every missing chunk for it is wasted.
        let capacity: usize =
            self.peers.values().filter(|p| p.count > 0).map(|p| self.room(p)).sum::<usize>().min(total_room);
        if lan.len() > capacity {
            lan.select_nth_unstable(capacity);
            let (head, tail) = lan.split_at_mut(capacity);
            head.sort_unstable();
            self.request_from_peers(now, head);
            if self.peer_inflight() < self.config.max_peer_total
                && self.peers.values().any(|p| p.count > 0 && self.room(p) > 0)
            {
                tail.sort_unstable();
                self.request_from_peers(now, tail);
            }
        } else {
            lan.sort_unstable();
            self.request_from_peers(now, &lan);
        }
        if wan.len() > origin_room {
            wan.select_nth_unstable(origin_room);
            wan.truncate(origin_room);
        }
        wan.sort_unstable();
        let mut taken: BTreeMap<DeviceId, Vec<ChunkId>> = BTreeMap::new();
        for (rank, _, slot) in wan {
            self.origin_inflight += 1;
            self.start(now, slot, Source::Origin);
            let chunk = self.ids[slot];
            self.outputs.push_back(Output::FetchFromOrigin { chunk });
            if rank > 1 {
                taken.entry(self.owner[slot]).or_default().push(chunk);
            }
        }
        for (peer, chunks) in taken {
            self.outputs.push_back(Output::Stalled { peer, chunks, reason: Stall::NoProgress });
        }
    }

    /// Chunks asked of peers and not answered yet.
    fn peer_inflight(&self) -> usize {
        self.peers.values().map(|p| p.inflight).sum()
    }

    fn request_from_peers(&mut self, now: Millis, candidates: &[(u32, usize)]) {
        let mut total = self.peer_inflight();
        for &(_, slot) in candidates {
            if total >= self.config.max_peer_total {
                return;
            }
            if !matches!(self.state[slot], ChunkState::Missing { .. }) {
                continue;
            }
            let chunk = self.ids[slot];
            let best = self
                .peers
                .iter()
                .filter(|(_, p)| p.have[slot] && self.room(p) > 0)
                .min_by_key(|(id, p)| (p.inflight, std::cmp::Reverse(weight(chunk, **id))))
                .map(|(id, _)| *id);
            let Some(peer) = best else { continue };
            // Invariant: `best` was just found in `peers`.
            self.peers.get_mut(&peer).expect("chosen peer is present").inflight += 1;
            total += 1;
            self.start(now, slot, Source::Peer(peer));
            self.outputs.push_back(Output::Request { peer, chunk });
        }
    }

    fn start(&mut self, now: Millis, slot: usize, source: Source) {
        let ChunkState::Missing { since, origin_failures, .. } = self.state[slot] else { return };
        self.state[slot] = ChunkState::InFlight { source, sent: now, since, origin_failures };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(n: u8) -> DeviceId {
        DeviceId::from_bytes([n; 32])
    }

    #[test]
    fn owner_is_the_same_in_any_order() {
        let c = ChunkId::of(b"c");
        let a = wan_owner(c, [dev(1), dev(2), dev(3)]);
        let b = wan_owner(c, [dev(3), dev(1), dev(2)]);
        assert_eq!(a, b);
        assert_eq!(wan_owner(c, []), None);
    }

    #[test]
    fn owners_spread_over_members() {
        let members: Vec<_> = (0..4).map(dev).collect();
        let mut counts = [0usize; 4];
        for i in 0..4000u32 {
            let owner = wan_owner(ChunkId::of(&i.to_le_bytes()), members.iter().copied()).unwrap();
            counts[members.iter().position(|m| *m == owner).unwrap()] += 1;
        }
        assert!(counts.iter().all(|&c| (800..1200).contains(&c)), "{counts:?}");
    }

    #[test]
    fn a_leaving_member_moves_only_its_chunks() {
        let all: Vec<_> = (0..5).map(dev).collect();
        for i in 0..500u32 {
            let c = ChunkId::of(&i.to_le_bytes());
            let before = wan_owner(c, all.iter().copied()).unwrap();
            let after = wan_owner(c, all.iter().copied().filter(|m| *m != dev(0))).unwrap();
            if before != dev(0) {
                assert_eq!(before, after);
            }
        }
    }

    // ---- Planner ----

    use proptest::prelude::*;

    const T0: Millis = 1_000_000;

    fn ids(n: u32) -> Vec<ChunkId> {
        (0..n).map(|i| ChunkId::of(&i.to_le_bytes())).collect()
    }

    fn cfg() -> PlannerConfig {
        PlannerConfig { settle: 0, ..PlannerConfig::default() }
    }

    /// The origin stays closed (settle never ends), to look at LAN behaviour alone.
    fn lan_cfg() -> PlannerConfig {
        PlannerConfig { settle: Millis::MAX / 4, ..PlannerConfig::default() }
    }

    /// Whether `out` strikes `peer` for a request it did not answer in time.
    fn struck_timed_out(out: &[Output], peer: DeviceId) -> bool {
        out.iter()
            .any(|o| matches!(o, Output::Stalled { peer: p, reason: Stall::TimedOut, .. } if *p == peer))
    }

    /// Whether `out` stalls or bans anyone.
    fn stalls_anyone(out: &[Output]) -> bool {
        out.iter().any(|o| matches!(o, Output::Stalled { .. } | Output::Banned { .. }))
    }

    /// The chunks asked of peers among the planner's outputs (the rest are dropped).
    fn requested(p: &mut Planner) -> Vec<ChunkId> {
        drain(p)
            .into_iter()
            .filter_map(|o| if let Output::Request { chunk, .. } = o { Some(chunk) } else { None })
            .collect()
    }

    fn drain(p: &mut Planner) -> Vec<Output> {
        std::iter::from_fn(|| p.poll_output()).collect()
    }

    fn all_bits(n: usize) -> Vec<u8> {
        let mut b = vec![0xffu8; n.div_ceil(8)];
        if !n.is_multiple_of(8) {
            *b.last_mut().unwrap() = (1u8 << (n % 8)) - 1;
        }
        b
    }

    fn bits_of(n: usize, have: impl Fn(usize) -> bool) -> Vec<u8> {
        let mut b = vec![0u8; n.div_ceil(8)];
        for i in (0..n).filter(|&i| have(i)) {
            b[i / 8] |= 1 << (i % 8);
        }
        b
    }

    #[test]
    fn a_restarted_device_with_every_chunk_is_complete_at_once() {
        let chunks = ids(10);
        let mut p = Planner::new(dev(0), chunks.clone(), |_| true, T0, cfg());
        assert_eq!(drain(&mut p), vec![Output::Complete]);
        assert_eq!(p.chunks_have(), 10);
        assert_eq!(p.bitfield(), all_bits(10));
        assert_eq!(p.poll_timeout(), None);
    }

    #[test]
    fn chunks_a_peer_has_come_from_the_lan_only_and_respect_the_per_peer_limit() {
        let chunks = ids(40);
        let config = PlannerConfig { max_per_peer: 4, initial_window: 4, settle: 1, ..cfg() };
        // Two members: this device and peer 1 that has everything. This device owns
        // some chunks, but a LAN copy always wins over the origin.
        let mut p = Planner::new(dev(0), chunks.clone(), |_| false, T0, config);
        assert!(drain(&mut p).is_empty());
        p.handle_peer_have(T0, dev(1), &all_bits(40), &[]).unwrap();
        let out = drain(&mut p);
        assert_eq!(out.len(), 4, "pipelined up to max_per_peer: {out:?}");
        assert!(out.iter().all(|o| matches!(o, Output::Request { peer, .. } if *peer == dev(1))));
        let mut now = T0;
        let mut pending: Vec<ChunkId> = out
            .iter()
            .filter_map(|o| if let Output::Request { chunk, .. } = o { Some(*chunk) } else { None })
            .collect();
        let mut origin = 0;
        while let Some(c) = pending.pop() {
            now += 1;
            p.handle_chunk_verified(now, Source::Peer(dev(1)), c);
            for o in drain(&mut p) {
                match o {
                    Output::Request { chunk, .. } => pending.push(chunk),
                    Output::FetchFromOrigin { .. } => origin += 1,
                    Output::Complete => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert!(p.in_flight() <= 4);
        }
        assert!(p.is_complete());
        assert_eq!(origin, 0);
    }

    #[test]
    fn chunks_asked_of_all_peers_together_stay_under_the_total_limit() {
        let chunks = ids(40);
        let config = PlannerConfig { max_per_peer: 4, initial_window: 4, max_peer_total: 6, ..lan_cfg() };
        let mut p = Planner::new(dev(0), chunks.clone(), |_| false, T0, config);
        for peer in 1..=3 {
            p.handle_peer_have(T0, dev(peer), &all_bits(40), &[]).unwrap();
        }
        let out = drain(&mut p);
        assert_eq!(out.len(), 6, "three peers could take 12, the total allows 6: {out:?}");
        let Output::Request { peer, chunk } = out[0] else { panic!("{out:?}") };
        p.handle_chunks_verified(T0 + 1, Source::Peer(peer), [chunk]);
        assert_eq!(drain(&mut p).len(), 1, "one answer frees one place");
        assert_eq!(p.in_flight(), 6);
    }

    #[test]
    fn rarest_chunk_is_requested_first() {
        let chunks = ids(3);
        let config = PlannerConfig { max_per_peer: 1, ..lan_cfg() };
        let mut p = Planner::new(dev(0), chunks.clone(), |_| false, T0, config);
        // Chunk 2 is held by one peer, chunks 0 and 1 by three.
        p.handle_peer_have(T0, dev(1), &bits_of(3, |i| i < 2), &[]).unwrap();
        p.handle_peer_have(T0, dev(2), &bits_of(3, |i| i < 2), &[]).unwrap();
        let _ = drain(&mut p);
        p.handle_peer_have(T0, dev(3), &all_bits(3), &[]).unwrap();
        let out = drain(&mut p);
        assert!(out.contains(&Output::Request { peer: dev(3), chunk: chunks[2] }), "{out:?}");
    }

    #[test]
    fn each_member_fetches_only_the_chunks_it_owns_from_the_origin() {
        let chunks = ids(200);
        let config = PlannerConfig { max_origin: 1000, ..cfg() };
        let members = [dev(0), dev(1), dev(2)];
        let mut p =
            Planner::new(dev(0), chunks.clone(), |_| false, T0, PlannerConfig { settle: 10, ..config });
        assert!(drain(&mut p).is_empty(), "nothing from the origin before settling");
        assert_eq!(p.poll_timeout(), Some(T0 + 10));
        p.handle_peer_have(T0 + 1, dev(1), &bits_of(200, |_| false), &[]).unwrap();
        p.handle_peer_have(T0 + 1, dev(2), &bits_of(200, |_| false), &[]).unwrap();
        assert!(drain(&mut p).is_empty());
        p.handle_timeout(T0 + 10);
        let fetched: BTreeSet<ChunkId> = drain(&mut p)
            .into_iter()
            .map(|o| match o {
                Output::FetchFromOrigin { chunk } => chunk,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        let owned: BTreeSet<ChunkId> =
            chunks.iter().copied().filter(|c| wan_owner(*c, members) == Some(dev(0))).collect();
        assert_eq!(fetched, owned);
        assert!(!owned.is_empty() && owned.len() < 200);
    }

    #[test]
    fn a_silent_owner_is_taken_over_after_the_owner_timeout_whatever_its_have_sets_say() {
        let chunks = ids(50);
        let config = PlannerConfig { owner_timeout: 1000, settle: 1, max_origin: 1000, ..cfg() };
        let mut p = Planner::new(dev(0), chunks.clone(), |_| false, T0, config);
        p.handle_peer_have(T0, dev(1), &bits_of(50, |_| false), &[]).unwrap();
        let _ = drain(&mut p);
        let theirs: Vec<ChunkId> =
            chunks.iter().copied().filter(|c| wan_owner(*c, [dev(0), dev(1)]) == Some(dev(1))).collect();
        // The owner's have-sets grow, but nothing it claims ever arrives here: a have-set
        // is a claim, not progress, so the takeover is not postponed.
        p.handle_peer_have(T0 + 500, dev(1), &bits_of(50, |i| chunks[i] == theirs[0]), &[]).unwrap();
        let _ = drain(&mut p);
        // Ranked second: one owner_timeout after the origin opened (settle ends at T0 + 1).
        assert_eq!(p.poll_timeout(), Some(T0 + 1001));
        p.handle_timeout(T0 + 1001);
        let out = drain(&mut p);
        let taken: Vec<ChunkId> = out
            .iter()
            .filter_map(|o| if let Output::FetchFromOrigin { chunk } = o { Some(*chunk) } else { None })
            .collect();
        let want: BTreeSet<ChunkId> = theirs[1..].iter().copied().collect();
        assert_eq!(taken.iter().copied().collect::<BTreeSet<_>>(), want);
        assert!(
            out.iter().any(|o| matches!(o, Output::Stalled { peer, reason: Stall::NoProgress, chunks }
                if *peer == dev(1) && chunks.len() == theirs.len() - 1)),
            "the takeover names the owner and its chunks: {out:?}"
        );
    }

    #[test]
    fn an_owner_that_delivers_keeps_its_chunks() {
        let chunks = ids(50);
        let config = PlannerConfig { owner_timeout: 1000, settle: 1, max_origin: 1000, ..cfg() };
        let mut p = Planner::new(dev(0), chunks.clone(), |_| false, T0, config);
        p.handle_peer_have(T0, dev(1), &bits_of(50, |_| false), &[]).unwrap();
        let _ = drain(&mut p);
        let theirs: Vec<usize> =
            (0..50).filter(|&i| wan_owner(chunks[i], [dev(0), dev(1)]) == Some(dev(1))).collect();
        // This device fetches its own chunks once settled.
        p.handle_timeout(T0 + 1);
        assert!(drain(&mut p).iter().all(|o| matches!(o, Output::FetchFromOrigin { .. })));
        // The owner serves its first chunk verified at T0 + 800: the takeover of the
        // rest moves to T0 + 1800.
        p.handle_peer_have(T0 + 700, dev(1), &bits_of(50, |i| i == theirs[0]), &[]).unwrap();
        let out = drain(&mut p);
        assert_eq!(out, vec![Output::Request { peer: dev(1), chunk: chunks[theirs[0]] }]);
        p.handle_chunk_verified(T0 + 800, Source::Peer(dev(1)), chunks[theirs[0]]);
        assert!(drain(&mut p).is_empty());
        assert_eq!(p.poll_timeout(), Some(T0 + 1800));
    }

    #[test]
    fn a_peer_serving_a_bad_chunk_is_banned_and_the_chunk_asked_elsewhere() {
        let chunks = ids(1);
        let config = PlannerConfig { max_per_peer: 1, ..lan_cfg() };
        let mut p = Planner::new(dev(0), chunks.clone(), |_| false, T0, config);
        p.handle_peer_have(T0, dev(1), &all_bits(1), &[]).unwrap();
        let out = drain(&mut p);
        let Output::Request { peer: first, .. } = out[0] else { panic!("{out:?}") };
        p.handle_peer_have(T0, dev(2), &all_bits(1), &[]).unwrap();
        p.handle_chunk_bad(T0 + 1, Source::Peer(first), chunks[0]);
        let out = drain(&mut p);
        assert_eq!(out[0], Output::Banned { peer: first, reason: BanReason::BadChunk });
        let other = if first == dev(1) { dev(2) } else { dev(1) };
        assert_eq!(out[1], Output::Request { peer: other, chunk: chunks[0] });
        assert!(p.is_banned(first));
        // A banned peer's later have-bitfields are ignored.
        p.handle_peer_have(T0 + 2, first, &all_bits(1), &[]).unwrap();
        assert!(p.members().all(|m| m != first));
    }

    #[test]
    fn a_stalled_request_is_replanned_to_another_peer() {
        let chunks = ids(1);
        let mut p = Planner::new(dev(0), chunks.clone(), |_| false, T0, lan_cfg());
        p.handle_peer_have(T0, dev(1), &all_bits(1), &[]).unwrap();
        p.handle_peer_have(T0, dev(2), &all_bits(1), &[]).unwrap();
        let out = drain(&mut p);
        let Output::Request { peer: first, .. } = out[0] else { panic!("{out:?}") };
        let deadline = p.poll_timeout().unwrap();
        assert_eq!(deadline, T0 + cfg().request_timeout);
        p.handle_timeout(deadline);
        let out = drain(&mut p);
        assert_eq!(
            out[0],
            Output::Stalled { peer: first, chunks: chunks.clone(), reason: Stall::TimedOut },
            "the silent peer is named with what it did not deliver"
        );
        assert!(matches!(out[1], Output::Request { peer, .. } if peer != first), "{out:?}");
        assert!(p.is_suspended(first));
        // The late answer of the first peer is accepted and completes the release.
        p.handle_chunk_verified(deadline + 1, Source::Peer(first), chunks[0]);
        assert_eq!(drain(&mut p), vec![Output::Complete]);
    }

    #[test]
    fn a_slow_site_lengthens_the_request_timeout_so_slow_honest_peers_are_not_struck() {
        let chunks = ids(20);
        let mut p = Planner::new(dev(0), chunks.clone(), |_| false, T0, lan_cfg());
        // Peer 1 holds the first 12 chunks and answers every request after 8 s.
        p.handle_peer_have(T0, dev(1), &bits_of(20, |i| i < 12), &[]).unwrap();
        let mut now = T0;
        while p.chunks_have() < 12 {
            let asked = requested(&mut p);
            assert!(!asked.is_empty(), "requests go out while chunks are missing");
            now += 8_000;
            p.handle_chunks_verified(now, Source::Peer(dev(1)), asked);
        }
        // Peer 2 joins with the rest; it has served nothing yet, so a timeout would
        // strike it. The site's answers took 8 s: it is waited for 4 x 8 s.
        p.handle_peer_have(now, dev(2), &bits_of(20, |i| i >= 12), &[]).unwrap();
        assert!(drain(&mut p).iter().any(|o| matches!(o, Output::Request { peer, .. } if *peer == dev(2))));
        assert_eq!(p.poll_timeout(), Some(now + 32_000));
        p.handle_timeout(now + cfg().request_timeout);
        assert!(drain(&mut p).is_empty(), "not struck at the 10 s floor");
        p.handle_timeout(now + 32_000);
        assert!(struck_timed_out(&drain(&mut p), dev(2)), "struck once the longer timeout passed");
    }

    #[test]
    fn origin_failures_back_off() {
        let chunks = ids(1);
        let mut p = Planner::new(dev(0), chunks.clone(), |_| false, T0, cfg());
        assert_eq!(drain(&mut p), vec![Output::FetchFromOrigin { chunk: chunks[0] }]);
        let mut now = T0;
        let mut delays = Vec::new();
        for _ in 0..4 {
            p.handle_chunk_failed(now, Source::Origin, chunks[0]);
            assert!(drain(&mut p).is_empty());
            let t = p.poll_timeout().unwrap();
            delays.push(t - now);
            now = t;
            p.handle_timeout(now);
            assert_eq!(drain(&mut p), vec![Output::FetchFromOrigin { chunk: chunks[0] }]);
        }
        assert_eq!(delays, vec![500, 1000, 2000, 4000]);
    }

    #[test]
    fn bitfields_of_the_wrong_length_are_refused() {
        let mut p = Planner::new(dev(0), ids(9), |_| false, T0, cfg());
        assert_eq!(
            p.handle_peer_have(T0, dev(1), &[0xff], &[]),
            Err(BitfieldError::Length { got: 1, expected: 2 })
        );
        assert_eq!(p.members().count(), 1);
    }

    #[test]
    fn a_repeated_chunk_is_fetched_once() {
        let c = ids(2);
        let chunks = vec![c[0], c[1], c[0]];
        let mut p = Planner::new(dev(0), chunks, |_| false, T0, cfg());
        let out = drain(&mut p);
        assert_eq!(out.len(), 2);
        assert_eq!(p.chunks_total(), 3);
        p.handle_chunk_verified(T0, Source::Origin, c[0]);
        assert_eq!(p.chunks_have(), 2);
        assert_eq!(p.bitfield(), vec![0b101]);
    }

    /// A whole site: `n` devices, instant gossip of have-bitfields, every request
    /// answered after `delay` ms. Returns the origin fetch count per chunk.
    fn run_site(n: u8, chunks: u32, seed: u64, bad: Option<u8>) -> (BTreeMap<ChunkId, u32>, u64) {
        let ids = ids(chunks);
        let members: Vec<DeviceId> = (0..n).map(dev).collect();
        let config = PlannerConfig { settle: 5, max_per_peer: 3, max_origin: 2, ..PlannerConfig::default() };
        let mut planners: Vec<Planner> =
            members.iter().map(|m| Planner::new(*m, ids.clone(), |_| false, T0, config.clone())).collect();
        let mut now = T0;
        let mut origin: BTreeMap<ChunkId, u32> = BTreeMap::new();
        // (due, seq, device, source, chunk)
        let mut queue: Vec<(Millis, u64, usize, Source, ChunkId)> = Vec::new();
        let mut seq = 0u64;
        let mut rng = seed | 1;
        let mut next_rand = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for _ in 0..200_000 {
            // Gossip: every device learns every other's bitfield.
            let all_bits: Vec<(Vec<u8>, Vec<u8>)> =
                planners.iter().map(|p| (p.bitfield(), p.fetching_bitfield())).collect();
            for (j, p) in planners.iter_mut().enumerate() {
                for (i, (bits, fetching)) in all_bits.iter().enumerate() {
                    if i != j {
                        p.handle_peer_have(now, members[i], bits, fetching).unwrap();
                    }
                }
            }
            for (i, p) in planners.iter_mut().enumerate() {
                while let Some(o) = p.poll_output() {
                    match o {
                        Output::Request { peer, chunk } => {
                            seq += 1;
                            queue.push((now + 1 + next_rand() % 5, seq, i, Source::Peer(peer), chunk));
                        }
                        Output::FetchFromOrigin { chunk } => {
                            *origin.entry(chunk).or_default() += 1;
                            seq += 1;
                            queue.push((now + 3 + next_rand() % 20, seq, i, Source::Origin, chunk));
                        }
                        _ => {}
                    }
                }
                let in_flight_per_peer = |q: &Vec<(Millis, u64, usize, Source, ChunkId)>, peer: DeviceId| {
                    q.iter().filter(|e| e.2 == i && e.3 == Source::Peer(peer)).count()
                };
                for m in &members {
                    assert!(in_flight_per_peer(&queue, *m) <= config.max_per_peer);
                }
            }
            if planners.iter().all(Planner::is_complete) {
                return (origin, now - T0);
            }
            // Next event: the earliest queued answer or planner timeout.
            queue.sort_by_key(|e| (e.0, e.1));
            let next_timer = planners.iter().filter_map(Planner::poll_timeout).min();
            let next_answer = queue.first().map(|e| e.0);
            let Some(t) = [next_timer, next_answer].into_iter().flatten().min() else {
                panic!("stuck with nothing pending");
            };
            now = now.max(t);
            if next_answer == Some(t) {
                let (_, _, i, source, chunk) = queue.remove(0);
                match source {
                    Source::Peer(p) if Some(p) == bad.map(dev) => {
                        planners[i].handle_chunk_bad(now, source, chunk)
                    }
                    _ => planners[i].handle_chunk_verified(now, source, chunk),
                }
            } else {
                for p in &mut planners {
                    p.handle_timeout(now);
                }
            }
        }
        panic!("site did not complete");
    }

    #[test]
    fn a_site_fetches_each_chunk_from_the_origin_once() {
        let (origin, _) = run_site(4, 64, 7, None);
        assert_eq!(origin.len(), 64);
        assert!(origin.values().all(|&n| n == 1), "{origin:?}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn sites_complete_with_one_wan_copy_per_chunk(n in 1u8..6, chunks in 1u32..60, seed in any::<u64>()) {
            let (origin, _) = run_site(n, chunks, seed, None);
            prop_assert_eq!(origin.len(), chunks as usize);
            prop_assert!(origin.values().all(|&c| c == 1), "{:?}", origin);
        }

        #[test]
        fn sites_complete_despite_a_peer_serving_bad_chunks(n in 2u8..6, chunks in 1u32..40, seed in any::<u64>()) {
            // Device n-1 corrupts what it serves; everyone still completes.
            let (origin, _) = run_site(n, chunks, seed, Some(n - 1));
            prop_assert_eq!(origin.len(), chunks as usize);
        }
    }

    // ---- A site of planners (quinn-proto's `Pair`, for N) ----

    /// How a simulated site member behaves.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Behaviour {
        /// Runs a planner and serves what it has.
        Honest,
        /// Runs a planner, but every chunk it serves fails its hash check.
        Corrupt,
        /// Runs no planner: gossips that it has every chunk and is fetching every chunk,
        /// and never answers a request.
        SilentLiar,
        /// The same, but answers every request with "not found".
        RefusingLiar,
        /// Runs no planner: a member that holds nothing and fetches nothing.
        Empty,
    }

    #[derive(Debug)]
    enum Event {
        /// The member starts fetching the release (its planner is created).
        Start(usize),
        /// The member gossips its have-set and fetching-set.
        Publish(usize),
        /// A site message from `from` reaches `to`.
        Gossip { to: usize, from: usize, have: Vec<u8>, fetching: Vec<u8> },
        /// The answer to a request reaches `to`.
        Answer { to: usize, source: Source, chunk: ChunkId, outcome: Outcome },
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Outcome {
        Verified,
        Bad,
        Failed,
    }

    struct Member {
        id: DeviceId,
        behaviour: Behaviour,
        planner: Option<Planner>,
        last_publish: Millis,
        published: (Vec<u8>, Vec<u8>),
        publish_queued: bool,
        completed: Option<Millis>,
    }

    /// What a site run measured.
    #[derive(Debug, Default)]
    struct SiteRun {
        /// Origin downloads started by all members together.
        origin_fetches: usize,
        /// The same, per member.
        origin_by: BTreeMap<DeviceId, usize>,
        /// When the last honest member completed, from the first start.
        duration: Millis,
        /// (reporter, peer, reason) of every `Stalled`.
        stalls: Vec<(DeviceId, DeviceId, Stall)>,
        /// (reporter, peer, reason) of every `Banned`.
        bans: Vec<(DeviceId, DeviceId, BanReason)>,
        /// Requests each member sent to each peer: (from, to) -> count.
        requests: BTreeMap<(DeviceId, DeviceId), usize>,
    }

    /// N members of one site, a virtual clock and an event queue. Gossip takes 5-50 ms
    /// and is sent on change (at most every 300 ms) and on a 1 s heartbeat, as the node
    /// does; LAN answers take 2-10 ms, origin downloads 30-150 ms. A member that has not
    /// started drops what it hears, as a node does for a release it is not fetching.
    struct Site {
        now: Millis,
        chunks: Vec<ChunkId>,
        config: PlannerConfig,
        members: Vec<Member>,
        events: BTreeMap<(Millis, u64), Event>,
        seq: u64,
        rng: u64,
        run: SiteRun,
        started: Millis,
        /// Percent of site messages lost on the way (gossipsub drops duplicates by
        /// content and meshes churn, so a member may miss a peer for a heartbeat or two).
        loss: u64,
        /// Origin download time: `origin_ms.0 + rand(origin_ms.1)`.
        origin_ms: (Millis, Millis),
    }

    const HEARTBEAT: Millis = 1_000;
    const MIN_GAP: Millis = 300;

    impl Site {
        /// `starts[i]` is when member `i` starts fetching, after T0.
        fn new(
            chunks: u32,
            behaviours: &[Behaviour],
            starts: &[Millis],
            seed: u64,
            config: PlannerConfig,
        ) -> Self {
            let mut site = Site {
                now: T0,
                chunks: ids(chunks),
                config,
                members: behaviours
                    .iter()
                    .enumerate()
                    .map(|(i, &behaviour)| Member {
                        id: DeviceId::of_public_key(&[i as u8 + 1; 32]),
                        behaviour,
                        planner: None,
                        last_publish: 0,
                        published: (Vec::new(), Vec::new()),
                        publish_queued: false,
                        completed: None,
                    })
                    .collect(),
                events: BTreeMap::new(),
                seq: 0,
                rng: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
                run: SiteRun::default(),
                started: T0 + starts.iter().copied().min().unwrap_or(0),
                loss: 0,
                origin_ms: (30, 120),
            };
            for (i, &start) in starts.iter().enumerate() {
                site.push(T0 + start, Event::Start(i));
            }
            site
        }

        fn rand(&mut self, below: Millis) -> Millis {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            self.rng % below.max(1)
        }

        fn push(&mut self, at: Millis, event: Event) {
            self.seq += 1;
            self.events.insert((at, self.seq), event);
        }

        fn honest_done(&self) -> bool {
            self.members
                .iter()
                .filter(|m| matches!(m.behaviour, Behaviour::Honest | Behaviour::Corrupt))
                .all(|m| m.completed.is_some())
        }

        /// Runs until every honest member is complete; panics after `limit` ms.
        fn run(mut self, limit: Millis) -> SiteRun {
            while !self.honest_done() {
                let next_event = self.events.keys().next().map(|k| k.0);
                let next_timer = self.members.iter().filter_map(|m| m.planner.as_ref()?.poll_timeout()).min();
                let Some(t) = [next_event, next_timer].into_iter().flatten().min() else {
                    panic!("site stuck at {} with nothing pending", self.now - T0);
                };
                assert!(t - T0 < limit, "site did not complete within {limit} ms");
                self.now = self.now.max(t);
                if next_event == Some(t) {
                    let (_, event) = self.events.pop_first().expect("just peeked");
                    self.handle(event);
                } else {
                    for i in 0..self.members.len() {
                        let now = self.now;
                        let Some(p) = self.members[i].planner.as_mut() else { continue };
                        if p.poll_timeout().is_some_and(|w| w <= now) {
                            p.handle_timeout(now);
                            self.drain(i);
                        }
                    }
                }
            }
            self.run.duration =
                self.members.iter().filter_map(|m| m.completed).max().unwrap_or(T0) - self.started;
            self.run
        }

        fn handle(&mut self, event: Event) {
            let now = self.now;
            match event {
                Event::Start(i) => {
                    if matches!(self.members[i].behaviour, Behaviour::Honest | Behaviour::Corrupt) {
                        let p = Planner::new(
                            self.members[i].id,
                            self.chunks.clone(),
                            |_| false,
                            now,
                            self.config.clone(),
                        );
                        self.members[i].planner = Some(p);
                        self.drain(i);
                    }
                    self.publish(i);
                }
                Event::Publish(i) => {
                    self.members[i].publish_queued = false;
                    self.publish(i);
                }
                Event::Gossip { to, from, have, fetching } => {
                    let id = self.members[from].id;
                    let Some(p) = self.members[to].planner.as_mut() else { return };
                    p.handle_peer_have(now, id, &have, &fetching).expect("bitfields of the right length");
                    self.drain(to);
                }
                Event::Answer { to, source, chunk, outcome } => {
                    let Some(p) = self.members[to].planner.as_mut() else { return };
                    match outcome {
                        Outcome::Verified => p.handle_chunk_verified(now, source, chunk),
                        Outcome::Bad => p.handle_chunk_bad(now, source, chunk),
                        Outcome::Failed => p.handle_chunk_failed(now, source, chunk),
                    }
                    self.drain(to);
                }
            }
        }

        /// Gossips member `i`'s sets to every other member now, and schedules its next
        /// heartbeat.
        fn publish(&mut self, i: usize) {
            let n = self.chunks.len();
            let sets = match (self.members[i].behaviour, &self.members[i].planner) {
                (Behaviour::SilentLiar | Behaviour::RefusingLiar, _) => (all_bits(n), all_bits(n)),
                (Behaviour::Empty, _) => (bits_of(n, |_| false), Vec::new()),
                (_, Some(p)) => (p.bitfield(), p.fetching_bitfield()),
                (_, None) => return,
            };
            self.members[i].last_publish = self.now;
            self.members[i].published = sets.clone();
            for to in 0..self.members.len() {
                if to != i && self.rand(100) >= self.loss {
                    let at = self.now + 5 + self.rand(45);
                    let (have, fetching) = sets.clone();
                    self.push(at, Event::Gossip { to, from: i, have, fetching });
                }
            }
            let beat = self.now + HEARTBEAT;
            self.push(beat, Event::Publish(i));
        }

        /// Executes member `i`'s outputs, and gossips when its sets changed.
        fn drain(&mut self, i: usize) {
            let me = self.members[i].id;
            let Some(p) = self.members[i].planner.as_mut() else { return };
            let outputs: Vec<Output> = std::iter::from_fn(|| p.poll_output()).collect();
            let sets = (p.bitfield(), p.fetching_bitfield());
            for output in outputs {
                match output {
                    Output::Request { peer, chunk } => {
                        *self.run.requests.entry((me, peer)).or_default() += 1;
                        let j = self.members.iter().position(|m| m.id == peer).expect("a site member");
                        let delay = 2 + self.rand(8);
                        let outcome = match self.members[j].behaviour {
                            Behaviour::SilentLiar => continue,
                            Behaviour::RefusingLiar | Behaviour::Empty => Outcome::Failed,
                            Behaviour::Corrupt => Outcome::Bad,
                            Behaviour::Honest => {
                                let has = self.members[j].planner.as_ref().is_some_and(|q| {
                                    let index =
                                        self.chunks.iter().position(|c| *c == chunk).expect("a chunk");
                                    q.bitfield()[index / 8] & (1 << (index % 8)) != 0
                                });
                                if has { Outcome::Verified } else { Outcome::Failed }
                            }
                        };
                        let at = self.now + delay;
                        self.push(at, Event::Answer { to: i, source: Source::Peer(peer), chunk, outcome });
                    }
                    Output::FetchFromOrigin { chunk } => {
                        self.run.origin_fetches += 1;
                        *self.run.origin_by.entry(me).or_default() += 1;
                        let at = self.now + self.origin_ms.0 + self.rand(self.origin_ms.1);
                        self.push(
                            at,
                            Event::Answer {
                                to: i,
                                source: Source::Origin,
                                chunk,
                                outcome: Outcome::Verified,
                            },
                        );
                    }
                    Output::Stalled { peer, reason, .. } => self.run.stalls.push((me, peer, reason)),
                    Output::Banned { peer, reason } => self.run.bans.push((me, peer, reason)),
                    Output::Complete => self.members[i].completed = Some(self.now),
                }
            }
            if sets != self.members[i].published && !self.members[i].publish_queued {
                let at = (self.members[i].last_publish + MIN_GAP).max(self.now);
                if at == self.now {
                    self.publish(i);
                } else {
                    self.members[i].publish_queued = true;
                    self.push(at, Event::Publish(i));
                }
            }
        }
    }

    const SIZES: [usize; 3] = [4, 10, 25];
    const RELEASE_CHUNKS: u32 = 160;

    fn honest(n: usize) -> Vec<Behaviour> {
        vec![Behaviour::Honest; n]
    }

    fn assert_about_once(run: &SiteRun, what: &str) {
        let ratio = run.origin_fetches as f64 / f64::from(RELEASE_CHUNKS);
        eprintln!("{what}: {ratio:.3}x origin, {} ms", run.duration);
        assert!(ratio <= 1.05, "{what}: origin fetches {}x the release ({run:?})", ratio);
    }

    #[test]
    fn members_started_together_fetch_each_chunk_from_the_origin_about_once() {
        for n in SIZES {
            for seed in 1..=5 {
                let run = Site::new(RELEASE_CHUNKS, &honest(n), &vec![0; n], seed, PlannerConfig::default())
                    .run(600_000);
                assert_about_once(&run, &format!("{n} members together, seed {seed}"));
            }
        }
    }

    #[test]
    fn members_started_one_by_one_fetch_each_chunk_from_the_origin_about_once() {
        for n in SIZES {
            // One every 100 ms (joins during the first member's settle window), and at
            // random within 10 s (each node hears of the release on its own poll).
            for (gap, seed) in [(100, 1), (0, 2)] {
                let mut site = Site::new(RELEASE_CHUNKS, &honest(n), &[], seed, PlannerConfig::default());
                for i in 0..n {
                    let at = if gap > 0 { i as Millis * gap } else { site.rand(10_000) };
                    site.push(T0 + at, Event::Start(i));
                }
                site.started = T0 + site.events.keys().map(|k| k.0 - T0).min().unwrap_or(0);
                let run = site.run(900_000);
                assert_about_once(&run, &format!("{n} members one by one, gap {gap}, seed {seed}"));
            }
        }
    }

    #[test]
    fn members_joining_while_a_slow_origin_is_busy_fetch_each_chunk_about_once() {
        // Origin downloads take 0.3-1.3 s and a third of the site messages are lost, so
        // members join while others' downloads are in flight and views differ for a
        // while: the fetching-sets are what keeps the newcomers off those chunks
        // (without them this run fetched up to 1.027x).
        for n in SIZES {
            let mut site = Site::new(RELEASE_CHUNKS, &honest(n), &[], n as u64, PlannerConfig::default());
            site.loss = 33;
            site.origin_ms = (300, 1000);
            for i in 0..n {
                site.push(T0 + i as Millis * 700, Event::Start(i));
            }
            let run = site.run(900_000);
            assert_about_once(&run, &format!("{n} members joining every 700 ms, slow origin, lossy gossip"));
            assert!(run.stalls.is_empty(), "honest members never stall: {:?}", run.stalls);
        }
    }

    fn with_one(n_honest: usize, other: Behaviour) -> Vec<Behaviour> {
        let mut b = honest(n_honest);
        b.push(other);
        b
    }

    #[test]
    fn a_liar_claiming_every_chunk_and_answering_nothing_stalls_the_site_once_and_is_named() {
        let config = PlannerConfig::default();
        let baseline = Site::new(RELEASE_CHUNKS, &honest(3), &[0; 3], 1, config.clone()).run(600_000);
        let run = Site::new(RELEASE_CHUNKS, &with_one(3, Behaviour::SilentLiar), &[0; 4], 1, config.clone())
            .run(600_000);
        eprintln!("silent liar: {} ms (without it {} ms)", run.duration, baseline.duration);
        let liar = DeviceId::of_public_key(&[4; 32]);
        // Each honest member asked it for at most its first window and named it.
        for reporter in (1..=3u8).map(|i| DeviceId::of_public_key(&[i; 32])) {
            assert!(run.requests.get(&(reporter, liar)).copied().unwrap_or(0) <= config.initial_window);
            assert!(
                run.stalls.contains(&(reporter, liar, Stall::TimedOut)),
                "{reporter} names the liar: {:?}",
                run.stalls
            );
        }
        // Its claims cost one request timeout, not the release; the origin still serves
        // each chunk about once.
        assert!(run.duration <= baseline.duration + config.request_timeout + config.owner_timeout, "{run:?}");
        assert!(run.origin_fetches as f64 <= 1.1 * f64::from(RELEASE_CHUNKS), "{run:?}");
    }

    #[test]
    fn a_liar_answering_not_found_is_backed_off_then_banned_for_the_release() {
        let config = PlannerConfig { strike_backoff: 500, ..PlannerConfig::default() };
        let run =
            Site::new(RELEASE_CHUNKS, &with_one(3, Behaviour::RefusingLiar), &[0; 4], 2, config.clone())
                .run(600_000);
        let liar = DeviceId::of_public_key(&[4; 32]);
        for reporter in (1..=3u8).map(|i| DeviceId::of_public_key(&[i; 32])) {
            let strikes = run.stalls.iter().filter(|s| **s == (reporter, liar, Stall::Refused)).count();
            assert_eq!(strikes, config.max_strikes as usize, "{:?}", run.stalls);
            assert!(run.bans.contains(&(reporter, liar, BanReason::Undelivered)), "{:?}", run.bans);
            // Two windows of requests, then never again.
            assert!(run.requests[&(reporter, liar)] <= 2 * config.initial_window, "{:?}", run.requests);
        }
        assert_about_once(&run, "a refusing liar");
    }

    #[test]
    fn a_member_that_holds_nothing_delays_its_chunks_by_one_owner_timeout_and_costs_no_wan() {
        let config = PlannerConfig::default();
        let run = Site::new(RELEASE_CHUNKS, &with_one(3, Behaviour::Empty), &[0; 4], 3, config.clone())
            .run(600_000);
        let empty = DeviceId::of_public_key(&[4; 32]);
        eprintln!("empty member: {} ms", run.duration);
        // Its chunks go to the member ranked second for each, one owner timeout after
        // settling, and to nobody else: no stampede to the origin.
        assert_about_once(&run, "a member that holds nothing");
        assert!(run.duration <= config.settle + config.owner_timeout + 5_000, "{run:?}");
        assert!(run.stalls.iter().any(|s| s.1 == empty && s.2 == Stall::NoProgress), "{:?}", run.stalls);
        assert!(run.stalls.iter().all(|s| s.1 == empty), "only the empty member stalls: {:?}", run.stalls);
    }

    #[test]
    fn a_peer_serving_corrupt_chunks_costs_at_most_four_chunks_before_its_ban() {
        for seed in 1..=3 {
            let run = Site::new(
                RELEASE_CHUNKS,
                &with_one(4, Behaviour::Corrupt),
                &[0; 5],
                seed,
                PlannerConfig::default(),
            )
            .run(600_000);
            let corrupt = DeviceId::of_public_key(&[5; 32]);
            for reporter in (1..=4u8).map(|i| DeviceId::of_public_key(&[i; 32])) {
                let asked = run.requests.get(&(reporter, corrupt)).copied().unwrap_or(0);
                assert!(asked <= 4, "{reporter} asked the corrupt peer for {asked} chunks");
                if asked > 0 {
                    assert!(run.bans.contains(&(reporter, corrupt, BanReason::BadChunk)), "{:?}", run.bans);
                }
            }
            // Its own downloads were real WAN bytes wasted; the honest members fetch
            // each chunk about once among themselves.
            let honest = run.origin_fetches - run.origin_by.get(&corrupt).copied().unwrap_or(0);
            assert!(honest as f64 <= 1.05 * f64::from(RELEASE_CHUNKS), "{run:?}");
        }
    }

    #[test]
    fn a_request_timeout_is_not_lost_when_another_input_arrives_first() {
        let chunks = ids(4);
        let mut p = Planner::new(dev(0), chunks.clone(), |_| false, T0, lan_cfg());
        p.handle_peer_have(T0, dev(1), &all_bits(4), &[]).unwrap();
        let asked = drain(&mut p);
        assert_eq!(asked.len(), 2, "slow start: two requests to a new peer: {asked:?}");
        let deadline = p.poll_timeout().unwrap();
        // The driver is late: a have-set from another peer arrives after the deadline,
        // before the timer fires. The overdue requests expire in that same call.
        p.handle_peer_have(deadline + 5, dev(2), &bits_of(4, |_| false), &[]).unwrap();
        let out = drain(&mut p);
        assert!(
            matches!(&out[0], Output::Stalled { peer, chunks, reason: Stall::TimedOut } if *peer == dev(1) && chunks.len() == 2),
            "{out:?}"
        );
        assert!(p.is_suspended(dev(1)));
        assert_eq!(p.in_flight(), 0);
    }

    #[test]
    fn a_peer_that_served_since_it_was_asked_is_slow_not_struck_and_one_that_served_nothing_is() {
        let chunks = ids(8);
        let mut p = Planner::new(dev(0), chunks.clone(), |_| false, T0, lan_cfg());
        p.handle_peer_have(T0, dev(1), &all_bits(8), &[]).unwrap();
        let asked = requested(&mut p);
        assert_eq!(asked.len(), 2);
        // It serves the first chunk late but within the deadline (the window grows to
        // three), then the rest are overdue: a busy peer, not a silent one.
        p.handle_chunk_verified(T0 + 9_000, Source::Peer(dev(1)), asked[0]);
        drain(&mut p);
        let deadline = p.poll_timeout().unwrap();
        p.handle_timeout(deadline);
        let out = drain(&mut p);
        assert!(!stalls_anyone(&out), "{out:?}");
        assert!(!p.is_suspended(dev(1)));
        assert!(p.members().any(|m| m == dev(1)), "it keeps its place");
        // Asked again and silent since: struck.
        let deadline = p.poll_timeout().unwrap();
        p.handle_timeout(deadline + 20_000);
        let out = drain(&mut p);
        assert!(struck_timed_out(&out, dev(1)), "{out:?}");
    }

    #[test]
    fn a_transport_timeout_is_judged_like_the_planners_own() {
        let chunks = ids(8);
        let mut p = Planner::new(dev(0), chunks.clone(), |_| false, T0, lan_cfg());
        p.handle_peer_have(T0, dev(1), &all_bits(8), &[]).unwrap();
        let asked = requested(&mut p);
        // It served one of the two since they were asked: the other timing out in the
        // transport makes it slow, not struck, and the chunk is asked again.
        p.handle_chunk_verified(T0 + 3_000, Source::Peer(dev(1)), asked[0]);
        drain(&mut p);
        p.handle_request_timed_out(T0 + 5_000, dev(1), &asked[1..]);
        let out = drain(&mut p);
        assert!(!stalls_anyone(&out), "{out:?}");
        assert!(
            out.iter().any(|o| matches!(o, Output::Request { chunk, .. } if *chunk == asked[1])),
            "{out:?}"
        );
        // Asked again and nothing served since: the next transport timeout strikes.
        let pending: Vec<ChunkId> = chunks.iter().copied().filter(|c| *c != asked[0]).collect();
        p.handle_request_timed_out(T0 + 20_000, dev(1), &pending);
        let out = drain(&mut p);
        assert!(struck_timed_out(&out, dev(1)), "{out:?}");
    }

    #[test]
    fn a_struck_peer_loses_its_claims_and_a_fresh_have_set_does_not_restore_them() {
        let chunks = ids(4);
        let config = PlannerConfig { strike_backoff: 1_000, ..lan_cfg() };
        let mut p = Planner::new(dev(0), chunks.clone(), |_| false, T0, config);
        p.handle_peer_have(T0, dev(1), &all_bits(4), &[]).unwrap();
        let Output::Request { chunk, .. } = drain(&mut p)[0] else { panic!() };
        p.handle_chunk_failed(T0 + 1, Source::Peer(dev(1)), chunk);
        let out = drain(&mut p);
        assert!(matches!(&out[0], Output::Stalled { reason: Stall::Refused, .. }), "{out:?}");
        assert!(p.members().all(|m| m != dev(1)), "it owns nothing while suspended");
        p.handle_peer_have(T0 + 500, dev(1), &all_bits(4), &[]).unwrap();
        assert!(drain(&mut p).is_empty(), "its have-sets are ignored while suspended");
        // After the backoff it is asked again, with a fresh slow-start window; a second
        // failure bans it.
        p.handle_peer_have(T0 + 1_001, dev(1), &all_bits(4), &[]).unwrap();
        let out = drain(&mut p);
        assert_eq!(out.len(), 2, "{out:?}");
        let Output::Request { chunk, .. } = out[0] else { panic!() };
        p.handle_chunk_failed(T0 + 1_002, Source::Peer(dev(1)), chunk);
        let out = drain(&mut p);
        assert_eq!(out[1], Output::Banned { peer: dev(1), reason: BanReason::Undelivered }, "{out:?}");
        assert!(p.is_banned(dev(1)));
    }

    #[test]
    fn a_window_grows_with_each_chunk_a_peer_delivers() {
        let chunks = ids(20);
        let config = PlannerConfig { max_per_peer: 6, ..lan_cfg() };
        let mut p = Planner::new(dev(0), chunks.clone(), |_| false, T0, config);
        p.handle_peer_have(T0, dev(1), &all_bits(20), &[]).unwrap();
        let mut asked: Vec<ChunkId> = drain(&mut p)
            .into_iter()
            .map(|o| if let Output::Request { chunk, .. } = o { chunk } else { panic!("{o:?}") })
            .collect();
        assert_eq!(asked.len(), 2);
        let mut widths = vec![p.in_flight()];
        for t in 1..=4 {
            let c = asked.remove(0);
            p.handle_chunk_verified(T0 + t, Source::Peer(dev(1)), c);
            asked.extend(drain(&mut p).into_iter().filter_map(|o| match o {
                Output::Request { chunk, .. } => Some(chunk),
                _ => None,
            }));
            widths.push(p.in_flight());
        }
        assert_eq!(widths, vec![2, 3, 4, 5, 6], "one more per delivered chunk, up to max_per_peer");
    }

    #[test]
    fn a_chunk_a_peer_is_fetching_is_left_to_it_until_the_claim_lapses() {
        let chunks = ids(8);
        let config = PlannerConfig { settle: 1, max_origin: 2, owner_timeout: 1_000, ..cfg() };
        // This device misses chunks 0, 1 and 2. Peer 1 claims to be fetching all eight:
        // only `max_origin` claims (chunks 0 and 1) are honoured.
        let have = |c: ChunkId| chunks[3..].contains(&c);
        let mut p = Planner::new(dev(0), chunks.clone(), have, T0, config);
        p.handle_peer_have(T0, dev(1), &bits_of(8, |_| false), &all_bits(8)).unwrap();
        let _ = drain(&mut p);
        let fetched = |out: &[Output]| -> BTreeSet<ChunkId> {
            out.iter()
                .filter_map(|o| if let Output::FetchFromOrigin { chunk } = o { Some(*chunk) } else { None })
                .collect()
        };
        let mine = |c: &ChunkId| wan_owner(*c, [dev(0), dev(1)]) == Some(dev(0));
        // Chunk 2 is unclaimed: fetched at once if this device owns it. Chunks 0 and 1
        // are left to the claimant, whoever owns them.
        p.handle_peer_have(T0 + 999, dev(1), &bits_of(8, |_| false), &all_bits(8)).unwrap();
        let out = drain(&mut p);
        let want: BTreeSet<ChunkId> = chunks[2..3].iter().copied().filter(mine).collect();
        assert_eq!(fetched(&out), want, "{out:?}");
        p.handle_chunk_verified(T0 + 999, Source::Origin, chunks[2]);
        let _ = drain(&mut p);
        // The claims never turned into chunks and lapse one owner timeout after they
        // were first heard: this device fetches the ones it owns at once, the others
        // one owner timeout later (it ranks second for them).
        p.handle_timeout(T0 + 1_000);
        let first = fetched(&drain(&mut p));
        assert_eq!(first, chunks[..2].iter().copied().filter(mine).collect());
        p.handle_timeout(T0 + 1_999);
        let second = fetched(&drain(&mut p));
        assert_eq!(second, chunks[..2].iter().copied().filter(|c| !mine(c)).collect());
    }
}
