//! The site protocol's judgements: who may speak on a site's gossip topic, and which
//! device of the site may take one of its install slots now.
//!
//! A site message (membership, have-sets, fetching claims, install-slot claims) moves
//! WAN ownership and install slots, so a stranger on the LAN must not be able to send
//! one that counts. Every site message carries its author's enrolment; [`judge`] admits
//! it only when the enrolment is for the key that signed the gossip message, for this
//! site and the message's class, and is signed by the trust root. Cheap checks come
//! first; the signatures are checked once per enrolment (the driver remembers which it
//! verified and says so with `verified_before`).
//!
//! Install slots are leases claimed on gossip ([`InstallSlots`]). A device that wants to
//! install gossips a claim stamped with the time it became ready, waits [`SETTLE`] so
//! that every member hears it, and then installs only if fewer than the policy's limit
//! rank ahead of it: members already holding a slot, and among the other claimants,
//! those with a lower `(claim time, device id)`. Every member sees the same claims, so
//! every member ranks them the same way, and two devices staged in the same instant do
//! not both start. A slot is released when its holder's claim disappears (commit,
//! rollback, or the member falls silent) or after [`LEASE`].
//!
//! **Goals:** one pure decision for each; no clock (time comes in as `now`).
//!
//! **Non-goals:** transport, rate limits (the driver counts per author), revoking an
//! enrolment.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::enrolment::SignedEnrolment;
use crate::lifecycle::Phase;
use crate::trust::TrustRoot;
use crate::{DeviceId, Millis, codec};

/// Releases one site message may name, at most: a device works on one release at a
/// time and keeps a few; a message naming thousands is an attack on whoever reads it.
pub const MAX_RELEASES_PER_MESSAGE: usize = 16;

/// Why a site message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum SiteRefusal {
    /// Not decodable in the one canonical encoding, or over the topic's size limit.
    Malformed,
    /// Names more than [`MAX_RELEASES_PER_MESSAGE`] releases.
    TooManyReleases,
    /// The gossip message has no author, or its author key is not an ed25519 device key.
    NoAuthor,
    /// The enrolment is for another device key than the one that signed the message.
    NotItsKey,
    /// The enrolment is for another site.
    OtherSite,
    /// The enrolment is for another class than the message says.
    OtherClass,
    /// The enrolment's signatures do not meet the trust root.
    Forged,
    /// The author sent more messages than its budget allows.
    Flood,
}

impl SiteRefusal {
    /// The `reason` label in `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::TooManyReleases => "too_many_releases",
            Self::NoAuthor => "no_author",
            Self::NotItsKey => "not_its_key",
            Self::OtherSite => "other_site",
            Self::OtherClass => "other_class",
            Self::Forged => "not_enrolled",
            Self::Flood => "flood",
        }
    }

    /// Whether the message is invalid in itself (its sender is scored down), rather than
    /// merely not taken now.
    pub fn is_invalid(self) -> bool {
        !matches!(self, Self::Flood)
    }
}

/// What [`judge`] reads of a site message.
#[derive(Debug, Clone, Copy)]
pub struct Claimed<'a> {
    /// The device whose key signed the gossip message.
    pub author: DeviceId,
    /// The enrolment it carries.
    pub enrolment: &'a SignedEnrolment,
    /// The class it says it is.
    pub class: &'a str,
    /// How many releases it names.
    pub releases: usize,
}

/// Whether a site message counts on `site`. `verified_before` says this exact enrolment
/// was verified under `trust` before (the signatures are then not checked again).
pub fn judge(
    claimed: Claimed<'_>,
    site: &str,
    trust: &TrustRoot,
    verified_before: bool,
) -> Result<(), SiteRefusal> {
    if claimed.releases > MAX_RELEASES_PER_MESSAGE {
        return Err(SiteRefusal::TooManyReleases);
    }
    let e = &claimed.enrolment.enrolment;
    if e.device() != claimed.author {
        return Err(SiteRefusal::NotItsKey);
    }
    if e.site != site {
        return Err(SiteRefusal::OtherSite);
    }
    if e.class != claimed.class {
        return Err(SiteRefusal::OtherClass);
    }
    if verified_before {
        return Ok(());
    }
    trust.verify_enrolment(claimed.enrolment.clone()).map(|_| ()).map_err(|_| SiteRefusal::Forged)
}

/// The fingerprint under which a driver remembers an enrolment it verified.
pub fn enrolment_fingerprint(enrolment: &SignedEnrolment) -> [u8; 32] {
    *blake3::hash(&codec::encode(enrolment)).as_bytes()
}

/// How long a fresh claim waits before it counts, so that every member has heard it
/// (gossip on a LAN takes milliseconds; a member publishes within a second).
pub const SETTLE: Millis = 3_000;

/// How long a member is believed to hold a slot without letting go: longer than any
/// install and health check should take; a holder that never lets go (crashed hook,
/// hostile device) stops blocking the site after this.
pub const LEASE: Millis = 30 * 60_000;

/// What the device machine is told while its claim has not settled: the site is full.
pub const WAIT: u32 = u32::MAX;

/// A member's install-slot claim, as gossiped in its site messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotClaim {
    /// When (the claimant's clock) it became ready to install; ranks the claimants.
    pub since: Millis,
    /// It holds the slot now (installing, activated or checking).
    pub holding: bool,
}

#[derive(Debug, Clone, Copy)]
struct Heard {
    claim: SlotClaim,
    /// When this node first heard it holding (its own clock), for the lease.
    holding_since: Option<Millis>,
}

/// The site's install-slot claims as one device sees them, and its own. See the module
/// docs. Feed [`InstallSlots::handle_phase`] with the device's phase after every change,
/// claims with [`InstallSlots::handle_claim`]; give the device machine
/// [`InstallSlots::ahead`] as the number of site members installing, and wake it at
/// [`InstallSlots::poll_timeout`].
#[derive(Debug, Clone)]
pub struct InstallSlots {
    me: DeviceId,
    mine: Option<Millis>,
    others: BTreeMap<DeviceId, Heard>,
}

impl InstallSlots {
    /// No claims yet.
    pub fn new(me: DeviceId) -> Self {
        Self { me, mine: None, others: BTreeMap::new() }
    }

    /// This device's phase at `now`: staged or holding keeps (or makes) its claim;
    /// anything else drops it.
    pub fn handle_phase(&mut self, now: Millis, phase: Phase) {
        if phase == Phase::Staged || phase.holds_site_slot() {
            self.mine.get_or_insert(now);
        } else {
            self.mine = None;
        }
    }

    /// `device`'s latest site message claims `claim` (or nothing).
    pub fn handle_claim(&mut self, now: Millis, device: DeviceId, claim: Option<SlotClaim>) {
        if device == self.me {
            return;
        }
        let Some(claim) = claim else {
            self.others.remove(&device);
            return;
        };
        let before = self.others.get(&device).and_then(|h| h.holding_since);
        let holding_since = claim.holding.then(|| before.unwrap_or(now));
        self.others.insert(device, Heard { claim, holding_since });
    }

    /// `device` is no longer a member: its claim goes with it.
    pub fn handle_left(&mut self, device: DeviceId) {
        self.others.remove(&device);
    }

    /// What this device gossips, in `phase`.
    pub fn claim(&self, phase: Phase) -> Option<SlotClaim> {
        self.mine.map(|since| SlotClaim { since, holding: phase.holds_site_slot() })
    }

    /// How many members count as installing ahead of this device at `now`, in `phase`:
    /// [`WAIT`] while its own claim has not settled (so a release that becomes staged
    /// waits for it); otherwise the holders and the claimants that rank ahead.
    pub fn ahead(&self, now: Millis, phase: Phase) -> u32 {
        let holders = self.others.values().filter(|h| Self::holds(h, now)).count() as u32;
        if phase.holds_site_slot() || !matches!(phase, Phase::Fetching | Phase::Staged) {
            return holders;
        }
        let Some(mine) = self.mine.filter(|m| now >= m.saturating_add(SETTLE)) else { return WAIT };
        let ranked_ahead = self
            .others
            .iter()
            .filter(|(d, h)| !h.claim.holding && (h.claim.since, **d) < (mine, self.me))
            .count() as u32;
        holders + ranked_ahead
    }

    /// When [`InstallSlots::ahead`] changes by time alone: the own claim settles, or a
    /// lease runs out.
    pub fn poll_timeout(&self) -> Option<Millis> {
        let settle = self.mine.map(|m| m.saturating_add(SETTLE));
        let lease =
            self.others.values().filter_map(|h| h.holding_since).map(|s| s.saturating_add(LEASE)).min();
        settle.into_iter().chain(lease).min()
    }

    fn holds(h: &Heard, now: Millis) -> bool {
        h.holding_since.is_some_and(|s| now < s.saturating_add(LEASE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrolment::Enrolment;
    use crate::trust::tests::key;

    fn enrolled(device: u8, site: &str) -> (DeviceId, SignedEnrolment) {
        let e = Enrolment {
            device_key: key(device).public().to_bytes(),
            site: site.into(),
            class: "gw".into(),
            issued_at: 1,
        };
        (e.device(), SignedEnrolment::sign(e, &key(1)))
    }

    fn claimed<'a>(author: DeviceId, enrolment: &'a SignedEnrolment) -> Claimed<'a> {
        Claimed { author, enrolment, class: "gw", releases: 1 }
    }

    #[test]
    fn only_an_enrolment_of_the_author_for_this_site_and_class_counts() {
        let root = TrustRoot::single(key(1).public());
        let (a, ea) = enrolled(9, "s1");
        let (b, _) = enrolled(10, "s1");
        assert_eq!(judge(claimed(a, &ea), "s1", &root, false), Ok(()));
        // Another device holding up a's enrolment (a copied enrolment).
        assert_eq!(judge(claimed(b, &ea), "s1", &root, false), Err(SiteRefusal::NotItsKey));
        assert_eq!(judge(claimed(a, &ea), "s2", &root, false), Err(SiteRefusal::OtherSite));
        assert_eq!(
            judge(Claimed { class: "cam", ..claimed(a, &ea) }, "s1", &root, false),
            Err(SiteRefusal::OtherClass)
        );
        assert_eq!(
            judge(Claimed { releases: MAX_RELEASES_PER_MESSAGE + 1, ..claimed(a, &ea) }, "s1", &root, false),
            Err(SiteRefusal::TooManyReleases)
        );
        // Self-enrolled: signed by the device's own key, not the publisher's.
        let mut forged = ea.clone();
        forged.signatures = vec![key(9).sign(crate::trust::Domain::Enrolment, &codec::encode(&ea.enrolment))];
        assert_eq!(judge(claimed(a, &forged), "s1", &root, false), Err(SiteRefusal::Forged));
        assert_ne!(enrolment_fingerprint(&forged), enrolment_fingerprint(&ea));
    }

    #[test]
    fn a_refused_message_is_scored_unless_it_is_only_a_flood() {
        assert!(SiteRefusal::Forged.is_invalid());
        assert!(SiteRefusal::TooManyReleases.is_invalid());
        assert!(!SiteRefusal::Flood.is_invalid());
    }

    fn id(n: u8) -> DeviceId {
        DeviceId::from_bytes([n; 32])
    }

    /// Three devices staged in the same millisecond, limit one: each ranks the same one
    /// first once the claims settled, and none installs before that.
    #[test]
    fn devices_staged_together_agree_on_one_holder() {
        let devices = [id(3), id(1), id(2)];
        let mut views: Vec<InstallSlots> = devices.iter().map(|d| InstallSlots::new(*d)).collect();
        for v in &mut views {
            v.handle_phase(0, Phase::Fetching);
            assert_eq!(v.ahead(0, Phase::Fetching), WAIT, "an unsettled claim waits");
            v.handle_phase(100, Phase::Staged);
        }
        let claims: Vec<_> = views.iter().map(|v| v.claim(Phase::Staged)).collect();
        for v in &mut views {
            for (d, c) in devices.iter().zip(&claims) {
                v.handle_claim(200, *d, *c);
            }
        }
        assert_eq!(views[0].ahead(200, Phase::Staged), WAIT);
        assert_eq!(views[0].poll_timeout(), Some(100 + SETTLE));
        let ahead: Vec<u32> = views.iter().map(|v| v.ahead(100 + SETTLE, Phase::Staged)).collect();
        assert_eq!(ahead, vec![2, 0, 1], "ranked by (claim time, device id): 1, 2, 3");
        // Device 1 installs; the others see it holding, then letting go.
        views[1].handle_phase(3_200, Phase::Installing);
        let holding = views[1].claim(Phase::Installing);
        assert_eq!(holding, Some(SlotClaim { since: 100, holding: true }));
        views[2].handle_claim(3_300, id(1), holding);
        assert_eq!(views[2].ahead(3_300, Phase::Staged), 1, "the holder counts");
        views[1].handle_phase(9_000, Phase::Committed);
        assert_eq!(views[1].claim(Phase::Committed), None);
        views[2].handle_claim(9_100, id(1), None);
        assert_eq!(views[2].ahead(9_100, Phase::Staged), 0, "next in rank");
        assert_eq!(views[0].ahead(9_100, Phase::Staged), 2, "device 3 has not heard yet");
    }

    #[test]
    fn a_holder_that_never_lets_go_is_released_by_the_lease_and_a_silent_one_at_once() {
        let mut v = InstallSlots::new(id(9));
        v.handle_phase(0, Phase::Staged);
        v.handle_claim(0, id(1), Some(SlotClaim { since: 0, holding: true }));
        v.handle_claim(0, id(2), Some(SlotClaim { since: 0, holding: true }));
        assert_eq!(v.ahead(SETTLE, Phase::Staged), 2);
        // A later message of the same holding claim does not renew the lease.
        v.handle_claim(LEASE - 1, id(1), Some(SlotClaim { since: 0, holding: true }));
        v.handle_left(id(2));
        assert_eq!(v.ahead(LEASE - 1, Phase::Staged), 1);
        assert_eq!(v.ahead(LEASE, Phase::Staged), 0);
        assert_eq!(v.ahead(LEASE, Phase::Checking), 0, "a holder's count is informational");
    }
}
