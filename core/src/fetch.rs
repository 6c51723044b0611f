//! Chunk sourcing decisions shared by the node and the simulator.
//!
//! For a chunk nobody on a site has yet, exactly one live site member fetches it from
//! the origin, chosen by rendezvous (highest-random-weight) hashing of (chunk, member):
//! every member computes the same owner from the same membership, with no coordinator,
//! and when a member leaves only the chunks it owned move.

use crate::{ChunkId, DeviceId};

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
}
