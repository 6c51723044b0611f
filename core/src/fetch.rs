//! Chunk sourcing decisions shared by the node and the simulator.
//!
//! For a chunk nobody on a site has yet, exactly one live site member fetches it from
//! the origin, chosen by rendezvous (highest-random-weight) hashing of (chunk, member):
//! every member computes the same owner from the same membership, with no coordinator,
//! and when a member leaves only the chunks it owned move.
//!
//! [`Planner`] is the per-release fetch machine built on that rule: it knows which
//! chunks this device has, which chunks each live site peer has (their gossiped
//! have-bitfields) and what is in flight, and decides what to ask of whom.
//!
//! **Goals:** LAN peers first; rarest chunk first, so copies spread; each missing chunk
//! crosses the site's WAN link about once (its rendezvous owner fetches it, the others
//! wait for it and fall back to the origin only when the owner stops making progress);
//! bounded requests per peer and to the origin; a peer that serves a bad chunk is
//! banned for the release; a stalled request is re-planned elsewhere.
//!
//! **Non-goals:** moving bytes, verifying them (the driver checks every chunk against
//! its id before it reports it verified) or deciding *whether* to fetch a release.

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

/// The member that fetches `chunk` over the WAN for its site; `None` for no members.
/// Ties (astronomically unlikely) break on the smaller device id, so it is total.
pub fn wan_owner(chunk: ChunkId, members: impl IntoIterator<Item = DeviceId>) -> Option<DeviceId> {
    members.into_iter().max_by_key(|m| (weight(chunk, *m), std::cmp::Reverse(*m)))
}

/// Tunables of a [`Planner`]. The defaults suit a LAN of a few to a few dozen devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannerConfig {
    /// Chunks asked of one peer at once (pipelining depth per peer).
    pub max_per_peer: usize,
    /// Chunks asked of all peers together at once: bounds the memory responses in
    /// flight can take, however many peers a site has.
    pub max_peer_total: usize,
    /// Origin downloads in flight at once.
    pub max_origin: usize,
    /// A peer request not answered within this is abandoned and re-planned elsewhere.
    pub request_timeout: Millis,
    /// An origin download not finished within this is abandoned and retried.
    pub origin_timeout: Millis,
    /// A chunk owned by another member is fetched from the origin by this device after
    /// the owner has gained no chunk for this long (it stalled or left without notice).
    pub owner_timeout: Millis,
    /// No origin download starts before this long after the planner was created, so
    /// that site peers' first have-bitfields arrive and everyone hashes over the same
    /// membership. LAN requests may start at once.
    pub settle: Millis,
    /// First retry delay after an origin failure; doubles per failure.
    pub retry_base: Millis,
    /// The longest retry delay.
    pub retry_max: Millis,
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
            origin_timeout: 120_000,
            owner_timeout: 15_000,
            settle: 2_000,
            retry_base: 500,
            retry_max: 30_000,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// `peer` served bytes that do not match their id: stop using it for this release.
    Ban {
        /// The offender.
        peer: DeviceId,
    },
    /// Every chunk is here and verified. Emitted once.
    Complete,
}

/// Why a have-bitfield was refused.
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
/// [`Planner::poll_timeout`] says when it next wants [`Planner::handle_timeout`].
///
/// **Drain rule:** after every `handle_*` call, drain [`Planner::poll_output`] until
/// `None` and execute the outputs before feeding the next input; then re-read
/// [`Planner::poll_timeout`].
///
/// Chunks are tracked by id: a manifest that lists the same chunk twice needs it once.
/// Have-bitfields are over the manifest's chunk *indexes*, so peers with the same
/// manifest agree on them.
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
    state: Vec<ChunkState>,
    /// Slots not yet here, in or out of flight.
    missing: BTreeSet<usize>,
    /// Live, unbanned peers that have each slot.
    holders: Vec<u32>,
    /// The rendezvous owner of each slot over the current membership.
    owner: Vec<DeviceId>,
    owners_stale: bool,
    peers: BTreeMap<DeviceId, Peer>,
    banned: BTreeSet<DeviceId>,
    origin_inflight: usize,
    outputs: VecDeque<Output>,
    complete_sent: bool,
    /// The latest `now` seen; timeouts at or before it are not reported again.
    now: Millis,
    next_timeout: Option<Millis>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Have,
    Missing { since: Millis, not_before: Millis, origin_failures: u32 },
    InFlight { source: Source, deadline: Millis, since: Millis, origin_failures: u32 },
}

#[derive(Debug)]
struct Peer {
    have: Vec<bool>,
    count: usize,
    inflight: usize,
    last_progress: Millis,
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
        let mut planner = Self {
            me,
            config,
            created: now,
            ids,
            slot_of,
            index_slot,
            state,
            missing,
            holders: vec![0; n],
            owner: vec![me; n],
            owners_stale: true,
            peers: BTreeMap::new(),
            banned: BTreeSet::new(),
            origin_inflight: 0,
            outputs: VecDeque::new(),
            complete_sent: false,
            now,
            next_timeout: None,
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

    /// Recomputed after every input (in [`Planner::plan`]), so that drivers may call
    /// [`Planner::poll_timeout`] as often as they like.
    fn compute_timeout(&self) -> Option<Millis> {
        let mut next: Option<Millis> = None;
        // Work due now but not started waits for capacity, which only an input frees.
        let mut consider = |t: Millis| {
            if t > self.now {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        let origin_gate = self.created + self.config.settle;
        for &slot in &self.missing {
            match self.state[slot] {
                ChunkState::InFlight { deadline, .. } => consider(deadline),
                ChunkState::Missing { since, not_before, .. } => {
                    if self.holders[slot] > 0 {
                        consider(not_before);
                    } else if self.owner_of(slot) == self.me {
                        consider(not_before.max(origin_gate));
                    } else {
                        consider(self.fallback_at(slot, since).max(not_before).max(origin_gate));
                    }
                }
                ChunkState::Have => {}
            }
        }
        next
    }

    /// Time has reached `now`: expire stalled requests and start what is due.
    pub fn handle_timeout(&mut self, now: Millis) {
        let expired: Vec<usize> = self
            .missing
            .iter()
            .copied()
            .filter(|&s| matches!(self.state[s], ChunkState::InFlight { deadline, .. } if deadline <= now))
            .collect();
        for slot in expired {
            if let ChunkState::InFlight { source, .. } = self.state[slot] {
                self.fail(now, slot, source);
            }
        }
        self.plan(now);
    }

    /// `peer`, a live member of this device's site, says which chunks of the release it
    /// holds (bit `i` of byte `i / 8`, least significant first, is manifest index `i`).
    /// Its first have-bitfield makes it a member; later ones replace the earlier.
    pub fn handle_peer_have(
        &mut self,
        now: Millis,
        peer: DeviceId,
        bits: &[u8],
    ) -> Result<(), BitfieldError> {
        let expected = self.index_slot.len().div_ceil(8);
        if bits.len() != expected {
            return Err(BitfieldError::Length { got: bits.len(), expected });
        }
        if peer == self.me || self.banned.contains(&peer) {
            return Ok(());
        }
        let mut have = vec![false; self.ids.len()];
        for (index, &slot) in self.index_slot.iter().enumerate() {
            if bits[index / 8] & (1 << (index % 8)) != 0 {
                have[slot as usize] = true;
            }
        }
        let count = have.iter().filter(|h| **h).count();
        let is_new = !self.peers.contains_key(&peer);
        let entry = self.peers.entry(peer).or_insert_with(|| Peer {
            have: vec![false; have.len()],
            count: 0,
            inflight: 0,
            last_progress: now,
        });
        if count > entry.count {
            entry.last_progress = now;
        }
        for (slot, (&old, &new)) in entry.have.iter().zip(&have).enumerate() {
            match (old, new) {
                (false, true) => self.holders[slot] += 1,
                (true, false) => self.holders[slot] -= 1,
                _ => {}
            }
        }
        entry.have = have;
        entry.count = count;
        if is_new {
            self.owners_stale = true;
        }
        self.plan(now);
        Ok(())
    }

    /// `peer` left the site (disconnected, or its have-bitfields stopped arriving).
    /// Chunks it owned move to other members; requests to it are re-planned.
    pub fn handle_peer_left(&mut self, now: Millis, peer: DeviceId) {
        self.remove_peer(now, peer);
        self.plan(now);
    }

    /// The driver checked `chunk`'s bytes from `source` against its id and stored them.
    /// `source` is for the driver's byte counters; a chunk that arrives from a source
    /// other than the one asked (a late answer) still counts.
    pub fn handle_chunk_verified(&mut self, now: Millis, source: Source, chunk: ChunkId) {
        self.handle_chunks_verified(now, source, [chunk]);
    }

    /// Several chunks verified and stored together (one batch from a peer): the same as
    /// [`Planner::handle_chunk_verified`] for each, but planned once, not per chunk.
    pub fn handle_chunks_verified(
        &mut self,
        now: Millis,
        _source: Source,
        chunks: impl IntoIterator<Item = ChunkId>,
    ) {
        for chunk in chunks {
            let Some(&slot) = self.slot_of.get(&chunk) else { continue };
            if let ChunkState::InFlight { source: asked, .. } = self.state[slot] {
                self.release_slot(asked);
            }
            if self.state[slot] != ChunkState::Have {
                self.state[slot] = ChunkState::Have;
                self.missing.remove(&slot);
            }
        }
        self.plan(now);
    }

    /// `source` sent bytes for `chunk` that do not hash to it. A peer is banned for the
    /// release (an [`Output::Ban`]); the origin is retried with backoff.
    pub fn handle_chunk_bad(&mut self, now: Millis, source: Source, chunk: ChunkId) {
        if let Source::Peer(peer) = source
            && self.banned.insert(peer)
        {
            self.remove_peer(now, peer);
            self.outputs.push_back(Output::Ban { peer });
        }
        self.handle_chunk_failed(now, source, chunk);
    }

    /// Asking `source` for `chunk` failed (the peer no longer has it, the connection
    /// broke, the origin answered with an error). A peer is not asked for that chunk
    /// again until its next have-bitfield says it has it; the origin is retried with
    /// backoff.
    pub fn handle_chunk_failed(&mut self, now: Millis, source: Source, chunk: ChunkId) {
        let Some(&slot) = self.slot_of.get(&chunk) else { return };
        if let ChunkState::InFlight { source: asked, .. } = self.state[slot]
            && asked == source
        {
            self.fail(now, slot, source);
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

    /// This device's have-bitfield over the manifest indexes, to gossip to the site.
    pub fn bitfield(&self) -> Vec<u8> {
        let mut bits = vec![0u8; self.index_slot.len().div_ceil(8)];
        for (index, &slot) in self.index_slot.iter().enumerate() {
            if self.state[slot as usize] == ChunkState::Have {
                bits[index / 8] |= 1 << (index % 8);
            }
        }
        bits
    }

    /// The live members this planner hashes over (this device and its site peers).
    pub fn members(&self) -> impl Iterator<Item = DeviceId> + '_ {
        std::iter::once(self.me).chain(self.peers.keys().copied())
    }

    /// Whether `peer` was banned for serving a bad chunk.
    pub fn is_banned(&self, peer: DeviceId) -> bool {
        self.banned.contains(&peer)
    }

    /// Requests in flight to peers and to the origin.
    pub fn in_flight(&self) -> usize {
        self.missing.iter().filter(|&&s| matches!(self.state[s], ChunkState::InFlight { .. })).count()
    }

    fn owner_of(&self, slot: usize) -> DeviceId {
        if self.owners_stale {
            wan_owner(self.ids[slot], self.members()).unwrap_or(self.me)
        } else {
            self.owner[slot]
        }
    }

    fn refresh_owners(&mut self) {
        if !self.owners_stale {
            return;
        }
        let members: Vec<DeviceId> = self.members().collect();
        for &slot in &self.missing {
            self.owner[slot] = wan_owner(self.ids[slot], members.iter().copied()).unwrap_or(self.me);
        }
        self.owners_stale = false;
    }

    /// When this device takes over `slot` from its owner: `owner_timeout` after the
    /// later of the chunk becoming wanted and the owner's last progress.
    fn fallback_at(&self, slot: usize, since: Millis) -> Millis {
        let owner = self.owner_of(slot);
        let progress = self.peers.get(&owner).map_or(since, |p| p.last_progress);
        since.max(progress) + self.config.owner_timeout
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

    fn fail(&mut self, now: Millis, slot: usize, source: Source) {
        let ChunkState::InFlight { since, origin_failures, .. } = self.state[slot] else { return };
        self.release_slot(source);
        let mut failures = origin_failures;
        let mut not_before = now;
        match source {
            Source::Origin => {
                failures += 1;
                let shift = failures.saturating_sub(1).min(16);
                not_before = now + (self.config.retry_base << shift).min(self.config.retry_max);
            }
            Source::Peer(p) => {
                if let Some(peer) = self.peers.get_mut(&p)
                    && std::mem::replace(&mut peer.have[slot], false)
                {
                    peer.count -= 1;
                    self.holders[slot] -= 1;
                }
            }
        }
        self.state[slot] = ChunkState::Missing { since, not_before, origin_failures: failures };
    }

    fn remove_peer(&mut self, now: Millis, peer: DeviceId) {
        let Some(p) = self.peers.remove(&peer) else { return };
        for (slot, h) in p.have.iter().enumerate() {
            if *h {
                self.holders[slot] -= 1;
            }
        }
        self.owners_stale = true;
        let asked: Vec<usize> = self
            .missing
            .iter()
            .copied()
            .filter(|&s| {
                matches!(self.state[s], ChunkState::InFlight { source: Source::Peer(q), .. } if q == peer)
            })
            .collect();
        for slot in asked {
            if let ChunkState::InFlight { since, origin_failures, .. } = self.state[slot] {
                self.state[slot] = ChunkState::Missing { since, not_before: now, origin_failures };
            }
        }
    }

    fn plan(&mut self, now: Millis) {
        self.now = self.now.max(now);
        self.assign(now);
        self.next_timeout = self.compute_timeout();
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
        let total_room = self.config.max_peer_total.saturating_sub(self.peer_inflight());
        let peer_capacity = total_room > 0
            && self.peers.values().any(|p| p.inflight < self.config.max_per_peer && p.count > 0);
        let origin_open = now >= self.created + self.config.settle;
        let mut lan: Vec<(u32, usize)> = Vec::new();
        let mut wan: Vec<usize> = Vec::new();
        for &slot in &self.missing {
            let ChunkState::Missing { since, not_before, .. } = self.state[slot] else { continue };
            if not_before > now {
                continue;
            }
            if self.holders[slot] > 0 {
                if peer_capacity {
                    lan.push((self.holders[slot], slot));
                }
            } else if origin_open
                && self.origin_inflight < self.config.max_origin
                && (self.owner[slot] == self.me || self.fallback_at(slot, since) <= now)
            {
                wan.push(slot);
            }
        }
        // Rarest first; among equals, manifest order. Only the first `capacity`
        // candidates are sorted unless free request slots remain after them: one chunk
        // arriving frees one slot, and sorting every missing chunk for it is wasted.
        let capacity: usize = self
            .peers
            .values()
            .filter(|p| p.count > 0)
            .map(|p| self.config.max_per_peer.saturating_sub(p.inflight))
            .sum::<usize>()
            .min(total_room);
        if lan.len() > capacity {
            lan.select_nth_unstable(capacity);
            let (head, tail) = lan.split_at_mut(capacity);
            head.sort_unstable();
            self.request_from_peers(now, head);
            if self.peer_inflight() < self.config.max_peer_total
                && self.peers.values().any(|p| p.count > 0 && p.inflight < self.config.max_per_peer)
            {
                tail.sort_unstable();
                self.request_from_peers(now, tail);
            }
        } else {
            lan.sort_unstable();
            self.request_from_peers(now, &lan);
        }
        for slot in wan {
            if self.origin_inflight >= self.config.max_origin {
                break;
            }
            self.origin_inflight += 1;
            self.start(now, slot, Source::Origin);
            self.outputs.push_back(Output::FetchFromOrigin { chunk: self.ids[slot] });
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
                .filter(|(_, p)| p.have[slot] && p.inflight < self.config.max_per_peer)
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
        let timeout = match source {
            Source::Origin => self.config.origin_timeout,
            Source::Peer(_) => self.config.request_timeout,
        };
        self.state[slot] = ChunkState::InFlight { source, deadline: now + timeout, since, origin_failures };
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
        let config = PlannerConfig { max_per_peer: 4, settle: 1, ..cfg() };
        // Two members: this device and peer 1 that has everything. This device owns
        // some chunks, but a LAN copy always wins over the origin.
        let mut p = Planner::new(dev(0), chunks.clone(), |_| false, T0, config);
        assert!(drain(&mut p).is_empty());
        p.handle_peer_have(T0, dev(1), &all_bits(40)).unwrap();
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
                    Output::Ban { .. } => panic!("no bans here"),
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
        let config = PlannerConfig { max_per_peer: 4, max_peer_total: 6, ..lan_cfg() };
        let mut p = Planner::new(dev(0), chunks.clone(), |_| false, T0, config);
        for peer in 1..=3 {
            p.handle_peer_have(T0, dev(peer), &all_bits(40)).unwrap();
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
        p.handle_peer_have(T0, dev(1), &bits_of(3, |i| i < 2)).unwrap();
        p.handle_peer_have(T0, dev(2), &bits_of(3, |i| i < 2)).unwrap();
        let _ = drain(&mut p);
        p.handle_peer_have(T0, dev(3), &all_bits(3)).unwrap();
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
        p.handle_peer_have(T0 + 1, dev(1), &bits_of(200, |_| false)).unwrap();
        p.handle_peer_have(T0 + 1, dev(2), &bits_of(200, |_| false)).unwrap();
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
    fn a_stalled_owner_is_replaced_after_the_owner_timeout() {
        let chunks = ids(50);
        let config = PlannerConfig { owner_timeout: 1000, settle: 1, max_origin: 1000, ..cfg() };
        let mut p = Planner::new(dev(0), chunks.clone(), |_| false, T0, config);
        p.handle_peer_have(T0, dev(1), &bits_of(50, |_| false)).unwrap();
        assert!(drain(&mut p).is_empty());
        let theirs: Vec<ChunkId> =
            chunks.iter().copied().filter(|c| wan_owner(*c, [dev(0), dev(1)]) == Some(dev(1))).collect();
        // The owner makes progress at T0 + 500: the fallback moves to T0 + 1500.
        p.handle_peer_have(T0 + 500, dev(1), &bits_of(50, |i| chunks[i] == theirs[0])).unwrap();
        let _ = drain(&mut p);
        p.handle_timeout(T0 + 1400);
        assert!(
            !drain(&mut p)
                .iter()
                .any(|o| matches!(o, Output::FetchFromOrigin { chunk } if theirs[1..].contains(chunk))),
            "the owner is still making progress"
        );
        let t = p.poll_timeout().unwrap();
        assert!(t <= T0 + 1500, "{t}");
        p.handle_timeout(T0 + 1500);
        let out = drain(&mut p);
        assert!(
            out.iter().any(|o| matches!(o, Output::FetchFromOrigin { chunk } if theirs[1..].contains(chunk)))
        );
    }

    #[test]
    fn a_peer_serving_a_bad_chunk_is_banned_and_the_chunk_asked_elsewhere() {
        let chunks = ids(1);
        let config = PlannerConfig { max_per_peer: 1, ..lan_cfg() };
        let mut p = Planner::new(dev(0), chunks.clone(), |_| false, T0, config);
        p.handle_peer_have(T0, dev(1), &all_bits(1)).unwrap();
        let out = drain(&mut p);
        let Output::Request { peer: first, .. } = out[0] else { panic!("{out:?}") };
        p.handle_peer_have(T0, dev(2), &all_bits(1)).unwrap();
        p.handle_chunk_bad(T0 + 1, Source::Peer(first), chunks[0]);
        let out = drain(&mut p);
        assert_eq!(out[0], Output::Ban { peer: first });
        let other = if first == dev(1) { dev(2) } else { dev(1) };
        assert_eq!(out[1], Output::Request { peer: other, chunk: chunks[0] });
        assert!(p.is_banned(first));
        // A banned peer's later have-bitfields are ignored.
        p.handle_peer_have(T0 + 2, first, &all_bits(1)).unwrap();
        assert!(p.members().all(|m| m != first));
    }

    #[test]
    fn a_stalled_request_is_replanned_to_another_peer() {
        let chunks = ids(1);
        let mut p = Planner::new(dev(0), chunks.clone(), |_| false, T0, lan_cfg());
        p.handle_peer_have(T0, dev(1), &all_bits(1)).unwrap();
        p.handle_peer_have(T0, dev(2), &all_bits(1)).unwrap();
        let out = drain(&mut p);
        let Output::Request { peer: first, .. } = out[0] else { panic!("{out:?}") };
        let deadline = p.poll_timeout().unwrap();
        assert_eq!(deadline, T0 + cfg().request_timeout);
        p.handle_timeout(deadline);
        let out = drain(&mut p);
        assert!(matches!(out[0], Output::Request { peer, .. } if peer != first), "{out:?}");
        // The late answer of the first peer is accepted and completes the release.
        p.handle_chunk_verified(deadline + 1, Source::Peer(first), chunks[0]);
        assert_eq!(drain(&mut p), vec![Output::Complete]);
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
            p.handle_peer_have(T0, dev(1), &[0xff]),
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
            let all_bits: Vec<Vec<u8>> = planners.iter().map(Planner::bitfield).collect();
            for (j, p) in planners.iter_mut().enumerate() {
                for (i, bits) in all_bits.iter().enumerate() {
                    if i != j {
                        p.handle_peer_have(now, members[i], bits).unwrap();
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
                        Output::Ban { .. } | Output::Complete => {}
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
}
