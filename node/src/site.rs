//! The site as this node hears it: which enrolled devices of its site are members (their
//! site gossip was heard recently and admitted), which releases each fetches, and the
//! install-slot claims among them.
//!
//! A site message counts only when [`otamesh_core::site::judge`] admits it: it carries
//! the enrolment of the key that signed it, for this site and class, signed by the trust
//! root. Enrolments verified once are remembered (at most [`MAX_VERIFIED`], forgotten
//! all at once beyond that or when the trust root changes), so a member's heartbeat
//! costs no signature check. Each author also has a message budget ([`Budget`]).
//!
//! Membership is a hint from gossip, kept for [`MEMBER_TTL`] after the last message; the
//! fetch planner and the install-slot leases ([`InstallSlots`]) take it from here.
//!
//! **Non-goals:** transport, scoring (the loop tells gossipsub what to do with a
//! refusal), revoking an enrolment.

use std::collections::{BTreeMap, BTreeSet};

use libp2p::PeerId;
use otamesh_core::enrolment::SignedEnrolment;
use otamesh_core::site::{Claimed, InstallSlots, SiteRefusal, SlotClaim, enrolment_fingerprint, judge};
use otamesh_core::{DeviceId, Millis, ReleaseId, TrustRoot};

use crate::datadir::peer_device;
pub use crate::guard::Budget;

/// A site peer not heard for this long is no longer a member.
pub const MEMBER_TTL: Millis = 10_000;

/// Enrolments remembered as verified, at most (a site has tens to hundreds of devices).
pub const MAX_VERIFIED: usize = 4096;

/// Site messages one author may send at once; a member sends one a heartbeat (1 s) and
/// at most one per 300 ms when its chunks change.
pub const SITE_BURST: u32 = 20;
/// One more site message is allowed per this many milliseconds (10 a second).
pub const SITE_REFILL_MS: Millis = 100;

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

/// The site's members and install-slot claims. See the module docs.
#[derive(Debug)]
pub struct Site {
    name: String,
    members: BTreeMap<DeviceId, Member>,
    verified: BTreeMap<DeviceId, [u8; 32]>,
    budget: Budget<DeviceId>,
    /// The site's install-slot claims and this device's own.
    pub slots: InstallSlots,
}

impl Site {
    /// The site `name` as device `me` sees it, with nobody heard yet.
    pub fn new(name: &str, me: DeviceId) -> Self {
        Self {
            name: name.to_owned(),
            members: BTreeMap::new(),
            verified: BTreeMap::new(),
            budget: Budget::new(SITE_BURST, SITE_REFILL_MS),
            slots: InstallSlots::new(me),
        }
    }

    /// Spends one of `author`'s site messages at `now` (before it is decoded). Returns
    /// the author's device id.
    pub fn spend(&mut self, now: Millis, author: Option<PeerId>) -> Result<DeviceId, SiteRefusal> {
        let device = author.as_ref().and_then(peer_device).ok_or(SiteRefusal::NoAuthor)?;
        if !self.budget.spend(device, now) {
            return Err(SiteRefusal::Flood);
        }
        Ok(device)
    }

    /// Whether a decoded site message signed by `author` counts ([`judge`]). Returns the
    /// author's device id.
    pub fn admit(
        &mut self,
        author: Option<PeerId>,
        enrolment: &SignedEnrolment,
        class: &str,
        releases: usize,
        trust: &TrustRoot,
    ) -> Result<DeviceId, SiteRefusal> {
        let device = author.as_ref().and_then(peer_device).ok_or(SiteRefusal::NoAuthor)?;
        let fingerprint = enrolment_fingerprint(enrolment);
        let before = self.verified.get(&device) == Some(&fingerprint);
        judge(Claimed { author: device, enrolment, class, releases }, &self.name, trust, before)?;
        if !before {
            if self.verified.len() >= MAX_VERIFIED {
                self.verified.clear();
            }
            self.verified.insert(device, fingerprint);
        }
        Ok(device)
    }

    /// The trust root changed: every enrolment is verified again when next heard.
    pub fn trust_changed(&mut self) {
        self.verified.clear();
    }

    /// An admitted site message from `device` (via `peer`) was heard at `now`, with its
    /// install-slot claim. Returns the member.
    pub fn heard(
        &mut self,
        device: DeviceId,
        peer: PeerId,
        now: Millis,
        claim: Option<SlotClaim>,
    ) -> &mut Member {
        self.slots.handle_claim(now, device, claim);
        let member = self.members.entry(device).or_insert_with(|| Member {
            peer,
            last_seen: now,
            releases: BTreeSet::new(),
        });
        member.last_seen = now;
        member.peer = peer;
        member
    }

    /// Members not heard for [`MEMBER_TTL`].
    pub fn silent(&self, now: Millis) -> Vec<DeviceId> {
        self.members
            .iter()
            .filter(|(_, m)| now.saturating_sub(m.last_seen) > MEMBER_TTL)
            .map(|(d, _)| *d)
            .collect()
    }

    /// `device` left (silent, or disconnected): it is no longer a member, and its slot
    /// claim goes with it. Returns what it was.
    pub fn leave(&mut self, device: DeviceId) -> Option<Member> {
        self.slots.handle_left(device);
        self.members.remove(&device)
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
    use crate::testkit;
    use otamesh_core::SecretKey;

    fn peer_of(key: &SecretKey) -> PeerId {
        let kp = libp2p::identity::Keypair::ed25519_from_bytes(key.to_seed()).expect("32 bytes");
        kp.public().to_peer_id()
    }

    #[test]
    fn only_the_enrolled_key_is_admitted_and_its_signatures_are_checked_once() {
        let (a, b) = (SecretKey::from_seed([7; 32]), SecretKey::from_seed([8; 32]));
        let me = DeviceId::from_bytes([0; 32]);
        let mut site = Site::new("s1", me);
        let trust = testkit::trust();
        let ea = testkit::enrol(&a, "s1");
        let device = site.admit(Some(peer_of(&a)), &ea, "gw", 1, &trust).expect("enrolled");
        assert_eq!(site.spend(0, Some(peer_of(&a))), Ok(device));
        assert_eq!(site.verified.get(&device), Some(&enrolment_fingerprint(&ea)));
        // b holds up a's enrolment: refused, whatever it was verified as.
        assert_eq!(site.admit(Some(peer_of(&b)), &ea, "gw", 1, &trust), Err(SiteRefusal::NotItsKey));
        assert_eq!(site.admit(None, &ea, "gw", 1, &trust), Err(SiteRefusal::NoAuthor));
        let other_site = testkit::enrol(&b, "s2");
        assert_eq!(site.admit(Some(peer_of(&b)), &other_site, "gw", 1, &trust), Err(SiteRefusal::OtherSite));
    }

    #[test]
    fn an_author_over_its_budget_is_refused_and_others_are_not() {
        let mut budget = Budget::new(3, 100);
        let (a, b) = (DeviceId::from_bytes([1; 32]), DeviceId::from_bytes([2; 32]));
        assert!((0..3).all(|_| budget.spend(a, 0)));
        assert!(!budget.spend(a, 50));
        assert!(budget.spend(b, 50));
        assert!(budget.spend(a, 100));
        assert!(!budget.spend(a, 100));
    }

    #[test]
    fn a_member_leaving_takes_its_slot_claim() {
        let me = DeviceId::from_bytes([9; 32]);
        let mut site = Site::new("s1", me);
        let a = DeviceId::from_bytes([1; 32]);
        site.heard(a, PeerId::random(), 0, Some(SlotClaim { since: 0, holding: true }));
        use otamesh_core::lifecycle::Phase;
        assert_eq!(site.slots.ahead(1, Phase::Idle), 1);
        assert_eq!(site.silent(MEMBER_TTL + 1), vec![a]);
        assert!(site.leave(a).is_some());
        assert_eq!(site.slots.ahead(MEMBER_TTL + 1, Phase::Idle), 0);
    }
}
