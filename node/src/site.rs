//! The site as this node hears it: which devices of its site are members (their site
//! gossip was heard recently), which releases each fetches, and which of them hold one of
//! the site's install slots.
//!
//! Membership is a hint from gossip, kept for [`MEMBER_TTL`] after the last message; the
//! fetch planner and the device machine take it from here. A member's slot claim is what
//! the device machine counts against `max_concurrent_per_site`.

use std::collections::{BTreeMap, BTreeSet};

use libp2p::PeerId;
use otamesh_core::{DeviceId, Millis, ReleaseId};

/// A site peer not heard for this long is no longer a member.
pub const MEMBER_TTL: Millis = 10_000;

/// One member of the site.
#[derive(Debug, Clone)]
pub struct Member {
    /// Its libp2p peer id (where to ask for chunks).
    pub peer: PeerId,
    /// When its site gossip was last heard.
    pub last_seen: Millis,
    /// Releases whose have-bitfield it gossiped (the planners that know it).
    pub releases: BTreeSet<ReleaseId>,
}

/// The site's members and install slot holders. See the module docs.
#[derive(Debug, Default)]
pub struct Site {
    members: BTreeMap<DeviceId, Member>,
    holding: BTreeSet<DeviceId>,
}

impl Site {
    /// A site message from `device` (via `peer`) was heard at `now`, saying whether it
    /// holds an install slot. Returns the member, and whether the number of slot
    /// holders changed.
    pub fn heard(
        &mut self,
        device: DeviceId,
        peer: PeerId,
        now: Millis,
        holds_slot: bool,
    ) -> (&mut Member, bool) {
        let changed = if holds_slot { self.holding.insert(device) } else { self.holding.remove(&device) };
        let member = self.members.entry(device).or_insert_with(|| Member {
            peer,
            last_seen: now,
            releases: BTreeSet::new(),
        });
        member.last_seen = now;
        member.peer = peer;
        (member, changed)
    }

    /// Members not heard for [`MEMBER_TTL`].
    pub fn silent(&self, now: Millis) -> Vec<DeviceId> {
        self.members
            .iter()
            .filter(|(_, m)| now.saturating_sub(m.last_seen) > MEMBER_TTL)
            .map(|(d, _)| *d)
            .collect()
    }

    /// `device` left (silent, or disconnected). Returns what it was, and whether the
    /// number of slot holders changed.
    pub fn leave(&mut self, device: DeviceId) -> (Option<Member>, bool) {
        let changed = self.holding.remove(&device);
        (self.members.remove(&device), changed)
    }

    /// Members holding an install slot now.
    pub fn holding(&self) -> u32 {
        self.holding.len() as u32
    }

    /// The peer id of a member.
    pub fn peer(&self, device: DeviceId) -> Option<PeerId> {
        self.members.get(&device).map(|m| m.peer)
    }

    /// Every member, by device id.
    pub fn members(&self) -> impl Iterator<Item = &DeviceId> {
        self.members.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_holders_are_counted_once_and_leave_with_their_member() {
        let mut site = Site::default();
        let (a, b) = (DeviceId::from_bytes([1; 32]), DeviceId::from_bytes([2; 32]));
        let peer = PeerId::random();
        assert!(site.heard(a, peer, 0, true).1);
        assert!(!site.heard(a, peer, 1, true).1, "the same claim again changes nothing");
        assert!(site.heard(b, peer, 5, true).1);
        assert_eq!(site.holding(), 2);
        assert_eq!(site.silent(MEMBER_TTL + 2), vec![a], "a was last heard at 1, b at 5");
        let (gone, changed) = site.leave(a);
        assert!(gone.is_some() && changed);
        assert_eq!(site.holding(), 1);
        assert!(site.heard(b, peer, 2, false).1);
        assert_eq!(site.holding(), 0);
    }
}
