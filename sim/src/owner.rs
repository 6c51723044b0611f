//! Who brings each piece over a site's WAN in p2p-dedup: the piece's rendezvous owner
//! among the site's online fetching members ([`otamesh_core::fetch::wan_owner`], the
//! node's rule), remembered per (site, piece) and kept up to date as members come and go.
//!
//! Asking the core rule afresh hashes every member of the site (a hundred BLAKE3 hashes
//! at a hundred devices a site), and a device asks each time it chooses a transfer:
//! at a million devices that was most of a run's time. A member that joins can only
//! take a piece over from the owner (its [`fetch::rank`] against the owner's, which is
//! remembered too: one hash), and one that leaves matters only if it was the owner
//! (then the piece is asked afresh next time).
//!
//! **Goals:** exactly the owner the core rule names for the current members; work per
//! membership change proportional to the pieces, not to the site.
//!
//! **Non-goals:** deciding anything: the rule is the core's, this only remembers it.

use std::ops::Index;

use otamesh_core::fetch::{self, Rank};
use otamesh_core::{ChunkId, DeviceId};

/// The remembered owner of every (site, piece) and its rank; `None` when none is
/// remembered (the next [`Owners::owner`] asks the core rule).
#[derive(Debug, Clone)]
pub struct Owners {
    pieces: u32,
    owner: Vec<Option<(Rank, u32)>>,
}

impl Owners {
    /// Nothing remembered yet, for `sites` sites of a release of `pieces` pieces.
    pub fn new(sites: u32, pieces: u32) -> Self {
        Self { pieces, owner: vec![None; sites as usize * pieces as usize] }
    }

    /// Device `d` became a member of site `s` (online and fetching): it takes over each
    /// remembered piece whose rule ranks it above the owner.
    pub fn joined(&mut self, s: u32, d: u32, ids: &impl Index<usize, Output = DeviceId>, chunks: &[ChunkId]) {
        for (p, chunk) in chunks.iter().enumerate() {
            let slot = self.slot(s, p as u32);
            let Some((owner_rank, owner)) = self.owner[slot] else { continue };
            if owner == d {
                continue;
            }
            let rank = fetch::rank(*chunk, ids[d as usize]);
            if rank > owner_rank {
                self.owner[slot] = Some((rank, d));
            }
        }
    }

    /// Device `d` stopped being a member of site `s`: the pieces it owned are asked
    /// afresh.
    pub fn left(&mut self, s: u32, d: u32) {
        for p in 0..self.pieces {
            let slot = self.slot(s, p);
            if self.owner[slot].is_some_and(|(_, owner)| owner == d) {
                self.owner[slot] = None;
            }
        }
    }

    /// The owner of piece `p` on site `s` among `members` (the site's current members,
    /// by device index), remembered from last time when no change made it stale; `None`
    /// when there are no members.
    pub fn owner(
        &mut self,
        s: u32,
        p: u32,
        chunk: ChunkId,
        ids: &impl Index<usize, Output = DeviceId>,
        members: impl Iterator<Item = u32>,
    ) -> Option<u32> {
        let slot = self.slot(s, p);
        if self.owner[slot].is_none() {
            // The member of highest rank, as `fetch::wan_owner` picks it.
            self.owner[slot] =
                members.map(|e| (fetch::rank(chunk, ids[e as usize]), e)).max_by_key(|&(r, _)| r);
        }
        self.owner[slot].map(|(_, owner)| owner)
    }

    fn slot(&self, s: u32, p: u32) -> usize {
        (s * self.pieces + p) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u32) -> Vec<DeviceId> {
        (0..n)
            .map(|d| {
                let mut key = [0u8; 32];
                key[..4].copy_from_slice(&d.to_le_bytes());
                DeviceId::of_public_key(&key)
            })
            .collect()
    }

    fn chunks(k: u32) -> Vec<ChunkId> {
        (0..k).map(|p| ChunkId::from_bytes(*blake3::hash(&p.to_le_bytes()).as_bytes())).collect()
    }

    #[test]
    fn remembered_owner_follows_the_core_rule_through_joins_and_leaves() {
        // One site of 30 devices, 8 pieces; members join and leave in a fixed pseudo-
        // random order, and after every change each piece's owner must be the one the
        // core rule names for the members at that moment.
        let (ids, chunks) = (ids(30), chunks(8));
        let mut owners = Owners::new(1, 8);
        let mut member = [false; 30];
        for step in 0..400u64 {
            let d = (crate::rng::draw(9, step, crate::rng::Purpose::Churn, 0) % 30) as u32;
            member[d as usize] = !member[d as usize];
            if member[d as usize] {
                owners.joined(0, d, &ids, &chunks);
            } else {
                owners.left(0, d);
            }
            let members = (0..30u32).filter(|&e| member[e as usize]);
            for (p, &chunk) in chunks.iter().enumerate() {
                let want = fetch::wan_owner(chunk, members.clone().map(|e| ids[e as usize]));
                let got = owners.owner(0, p as u32, chunk, &ids, members.clone());
                assert_eq!(got.map(|e| ids[e as usize]), want, "step {step}, piece {p}");
            }
        }
    }
}
