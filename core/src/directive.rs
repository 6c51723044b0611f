//! Signed operator directives: halt, resume, revoke.
//!
//! Halting is fail-safe (devices stop adopting a release); rolling back devices that
//! already committed needs a signed revoke naming the release to go back to. Each
//! directive carries its own sequence, and a device applies, per release, only
//! directives newer than the newest it applied ([`DirectiveBook`]), so an old "resume"
//! replayed after a "halt" is refused.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::trust::{Domain, Signature, TrustRoot, VerifyError};
use crate::{Millis, ReleaseId, codec};

/// What an operator orders for one release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Order {
    /// Stop new installs of the release.
    Halt,
    /// Lift a halt.
    Resume,
    /// Every device that installed the release goes back to `to`.
    Revoke {
        /// The earlier release to return to.
        to: ReleaseId,
    },
}

/// A directive body: what is signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directive {
    /// The release it is about.
    pub release: ReleaseId,
    /// What to do.
    pub order: Order,
    /// Monotonic per release; a device ignores anything not above what it applied.
    pub sequence: u64,
    /// When it was signed.
    pub issued_at: Millis,
    /// After this, devices refuse it, so a directive withheld and replayed much later
    /// (before any newer one reached the device) cannot act.
    pub expires_at: Millis,
}

/// How long a directive stays valid when the operator does not say:
/// `otamesh directive --expires-in`, 7 days.
pub const DEFAULT_LIFETIME: Millis = 7 * 86_400_000;

/// A directive and its publisher signatures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedDirective {
    /// The signed body.
    pub directive: Directive,
    /// Verified against the same trust root as manifests.
    #[serde(deserialize_with = "crate::trust::bounded_signatures")]
    pub signatures: Vec<Signature>,
}

impl SignedDirective {
    /// Signs `directive` with `key`.
    pub fn sign(directive: Directive, key: &crate::SecretKey) -> Self {
        let signature = key.sign(Domain::Directive, &codec::encode(&directive));
        Self { directive, signatures: vec![signature] }
    }

    /// The on-disk and on-wire form.
    pub fn to_bytes(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Parses the on-disk and on-wire form; does not verify.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, codec::DecodeError> {
        codec::decode(bytes)
    }
}

/// A directive whose signatures were checked. Only [`TrustRoot::verify_directive`]
/// makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedDirective(SignedDirective);

impl VerifiedDirective {
    /// The body.
    pub fn directive(&self) -> &Directive {
        &self.0.directive
    }

    /// With signatures, to store or forward.
    pub fn signed(&self) -> &SignedDirective {
        &self.0
    }
}

impl TrustRoot {
    /// Checks a directive's signatures against this root and that it has not expired
    /// at `now`.
    pub fn verify_directive(
        &self,
        signed: SignedDirective,
        now: Millis,
    ) -> Result<VerifiedDirective, VerifyError> {
        self.check_signatures(Domain::Directive, &codec::encode(&signed.directive), &signed.signatures)?;
        let expires_at = signed.directive.expires_at;
        if now >= expires_at {
            return Err(VerifyError::DirectiveExpired { expires_at, now });
        }
        Ok(VerifiedDirective(signed))
    }
}

/// Why a verified directive was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refused {
    /// A directive at or below the newest applied sequence for this release: a replay.
    #[error("directive sequence {sequence} is not above {applied}, the newest applied for this release")]
    Replayed {
        /// Its sequence.
        sequence: u64,
        /// The newest applied.
        applied: u64,
    },
}

/// Where a release stands under the directives applied so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Standing {
    /// The newest applied sequence.
    pub sequence: u64,
    /// Halted (and not resumed since).
    pub halted: bool,
    /// Revoked, and the release to go back to. A revoke is final: resume does not undo it.
    pub revoked_to: Option<ReleaseId>,
}

/// The directives a device applied, per release.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirectiveBook {
    releases: BTreeMap<ReleaseId, Standing>,
}

impl DirectiveBook {
    /// Applies a verified directive if it is newer than any applied for its release.
    pub fn apply(&mut self, directive: &VerifiedDirective) -> Result<Standing, Refused> {
        let d = directive.directive();
        let standing = self.releases.entry(d.release).or_default();
        if d.sequence <= standing.sequence {
            return Err(Refused::Replayed { sequence: d.sequence, applied: standing.sequence });
        }
        standing.sequence = d.sequence;
        match d.order {
            Order::Halt => standing.halted = true,
            Order::Resume => standing.halted = false,
            Order::Revoke { to } => standing.revoked_to = Some(to),
        }
        Ok(*standing)
    }

    /// Whether a revoke names `release` as the one to go back to.
    pub fn is_revoke_target(&self, release: ReleaseId) -> bool {
        self.releases.values().any(|s| s.revoked_to == Some(release))
    }

    /// The standing of `release`; default (not halted, not revoked) if never directed.
    pub fn standing(&self, release: ReleaseId) -> Standing {
        self.releases.get(&release).copied().unwrap_or_default()
    }
}

/// Rebuilds a book from standings kept elsewhere (a device's database), so a restart
/// forgets neither a halt nor the sequence that older directives must exceed.
impl FromIterator<(ReleaseId, Standing)> for DirectiveBook {
    fn from_iter<I: IntoIterator<Item = (ReleaseId, Standing)>>(iter: I) -> Self {
        Self { releases: iter.into_iter().collect() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::tests::key;

    /// A time within every test directive's lifetime.
    const NOW: Millis = 2;

    fn directive(order: Order, sequence: u64) -> SignedDirective {
        let d = Directive {
            release: ReleaseId::from_bytes([5; 32]),
            order,
            sequence,
            issued_at: 1,
            expires_at: 1 + DEFAULT_LIFETIME,
        };
        SignedDirective::sign(d, &key(1))
    }

    #[test]
    fn old_resume_after_halt_is_refused() {
        let root = TrustRoot::single(key(1).public());
        let mut book = DirectiveBook::default();
        let resume = root.verify_directive(directive(Order::Resume, 1), NOW).unwrap();
        let halt = root.verify_directive(directive(Order::Halt, 2), NOW).unwrap();
        assert!(!book.apply(&resume).unwrap().halted);
        assert!(book.apply(&halt).unwrap().halted);
        assert_eq!(book.apply(&resume), Err(Refused::Replayed { sequence: 1, applied: 2 }));
        assert!(book.standing(ReleaseId::from_bytes([5; 32])).halted);
    }

    #[test]
    fn a_rebuilt_book_still_refuses_replays() {
        let root = TrustRoot::single(key(1).public());
        let mut book = DirectiveBook::default();
        let halt = book.apply(&root.verify_directive(directive(Order::Halt, 2), NOW).unwrap()).unwrap();
        let release = ReleaseId::from_bytes([5; 32]);
        let mut rebuilt: DirectiveBook = [(release, halt)].into_iter().collect();
        assert!(rebuilt.standing(release).halted);
        let resume = root.verify_directive(directive(Order::Resume, 1), NOW).unwrap();
        assert_eq!(rebuilt.apply(&resume), Err(Refused::Replayed { sequence: 1, applied: 2 }));
    }

    #[test]
    fn revoke_names_its_target() {
        let root = TrustRoot::single(key(1).public());
        let mut book = DirectiveBook::default();
        let to = ReleaseId::from_bytes([4; 32]);
        let s = book.apply(&root.verify_directive(directive(Order::Revoke { to }, 3), NOW).unwrap()).unwrap();
        assert_eq!(s.revoked_to, Some(to));
        assert!(book.is_revoke_target(to));
        assert!(!book.is_revoke_target(ReleaseId::from_bytes([5; 32])));
    }

    #[test]
    fn an_expired_directive_is_refused() {
        let root = TrustRoot::single(key(1).public());
        let halt = directive(Order::Halt, 1);
        let expires_at = halt.directive.expires_at;
        root.verify_directive(halt.clone(), expires_at - 1).unwrap();
        let err = root.verify_directive(halt, expires_at).unwrap_err();
        assert_eq!(err, VerifyError::DirectiveExpired { expires_at, now: expires_at });
    }

    #[test]
    fn unknown_key_is_refused() {
        let root = TrustRoot::single(key(2).public());
        assert!(root.verify_directive(directive(Order::Halt, 1), NOW).is_err());
    }

    #[test]
    fn manifest_signature_cannot_sign_a_directive() {
        let k = key(1);
        let d = Directive {
            release: ReleaseId::from_bytes([5; 32]),
            order: Order::Halt,
            sequence: 1,
            issued_at: 1,
            expires_at: 100,
        };
        let forged =
            SignedDirective { signatures: vec![k.sign(Domain::Manifest, &codec::encode(&d))], directive: d };
        assert!(TrustRoot::single(k.public()).verify_directive(forged, NOW).is_err());
    }
}
