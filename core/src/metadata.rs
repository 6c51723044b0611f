//! Signed metadata of any kind, for co-signing and for showing who signed.
//!
//! A threshold of keys is only usable if its holders can sign on separate machines:
//! one makes a manifest, directive, enrolment or root with their key, the others each
//! add a signature to the same file (`otamesh sign`). [`Metadata`] is the one place that
//! knows, for each kind, which signature domain and which bytes a signature covers, so
//! adding a signature and counting signatures are the same rule everywhere.
//!
//! **Non-goals:** verifying. A [`Metadata`] is not trusted; the kind-specific
//! `verify_*` functions and [`crate::root::VerifiedRoot::next`] decide.

use crate::directive::SignedDirective;
use crate::enrolment::SignedEnrolment;
use crate::manifest::SignedManifest;
use crate::root::SignedRoot;
use crate::trust::{Domain, KeyId, SecretKey, Signature, SignatureCount, TrustRoot};
use crate::{ReleaseId, codec};

/// One signed file: a manifest, directive, enrolment or root.
#[derive(Debug, Clone, PartialEq)]
pub enum Metadata {
    /// A release manifest (boxed: it is by far the largest kind).
    Manifest(Box<SignedManifest>),
    /// A halt, resume or revoke.
    Directive(SignedDirective),
    /// A device enrolment.
    Enrolment(SignedEnrolment),
    /// A root of trust.
    Root(SignedRoot),
}

/// Why a signature could not be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CosignError {
    /// This key's signature is already there; another key holder must sign.
    #[error("already signed by key {key}: another key holder must sign")]
    AlreadySigned {
        /// The key.
        key: KeyId,
    },
}

/// The bytes were not any kind of signed metadata.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not a signed manifest, directive, enrolment or root (truncated, corrupted, or another kind of file)"
)]
pub struct NotMetadata;

impl Metadata {
    /// Parses any of the four kinds; does not verify. Each decoder refuses trailing
    /// bytes, so one file decodes as at most one kind.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, NotMetadata> {
        if let Ok(m) = SignedManifest::from_bytes(bytes) {
            return Ok(Self::Manifest(Box::new(m)));
        }
        if let Ok(r) = SignedRoot::from_bytes(bytes) {
            return Ok(Self::Root(r));
        }
        if let Ok(d) = SignedDirective::from_bytes(bytes) {
            return Ok(Self::Directive(d));
        }
        if let Ok(e) = SignedEnrolment::from_bytes(bytes) {
            return Ok(Self::Enrolment(e));
        }
        Err(NotMetadata)
    }

    /// The on-disk form.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Self::Manifest(m) => m.to_bytes(),
            Self::Directive(d) => d.to_bytes(),
            Self::Enrolment(e) => e.to_bytes(),
            Self::Root(r) => r.to_bytes(),
        }
    }

    /// `manifest`, `directive`, `enrolment` or `root`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Manifest(_) => "manifest",
            Self::Directive(_) => "directive",
            Self::Enrolment(_) => "enrolment",
            Self::Root(_) => "root",
        }
    }

    /// The signatures carried.
    pub fn signatures(&self) -> &[Signature] {
        match self {
            Self::Manifest(m) => &m.signatures,
            Self::Directive(d) => &d.signatures,
            Self::Enrolment(e) => &e.signatures,
            Self::Root(r) => &r.signatures,
        }
    }

    fn signatures_mut(&mut self) -> &mut Vec<Signature> {
        match self {
            Self::Manifest(m) => &mut m.signatures,
            Self::Directive(d) => &mut d.signatures,
            Self::Enrolment(e) => &mut e.signatures,
            Self::Root(r) => &mut r.signatures,
        }
    }

    /// The signature domain and the exact bytes a signature of this kind covers (for a
    /// manifest, its release id: the prehash).
    pub fn signed_body(&self) -> (Domain, Vec<u8>) {
        match self {
            Self::Manifest(m) => {
                let id: ReleaseId = m.manifest.release_id();
                (Domain::Manifest, id.as_bytes().to_vec())
            }
            Self::Directive(d) => (Domain::Directive, codec::encode(&d.directive)),
            Self::Enrolment(e) => (Domain::Enrolment, codec::encode(&e.enrolment)),
            Self::Root(r) => (Domain::Root, r.root.canonical_bytes()),
        }
    }

    /// Adds `key`'s signature; refuses a second signature by the same key (it would not
    /// count and only makes the file look better signed than it is).
    pub fn cosign(&mut self, key: &SecretKey) -> Result<(), CosignError> {
        let id = key.public().key_id();
        if self.signatures().iter().any(|s| s.key == id) {
            return Err(CosignError::AlreadySigned { key: id });
        }
        let (domain, body) = self.signed_body();
        let signature = key.sign(domain, &body);
        self.signatures_mut().push(signature);
        Ok(())
    }

    /// Which keys of `trust` signed validly, and whether that meets its threshold.
    pub fn count(&self, trust: &TrustRoot) -> SignatureCount {
        let (domain, body) = self.signed_body();
        trust.count_signatures(domain, &body, self.signatures())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directive::{DEFAULT_LIFETIME, Directive, Order};
    use crate::manifest::tests::sample;
    use crate::trust::tests::key;

    const NOW: crate::Millis = 1_750_000_000_000;

    fn trust_2_of_3() -> TrustRoot {
        TrustRoot::new([key(1).public(), key(2).public(), key(3).public()], 2).unwrap()
    }

    #[test]
    fn a_cosigned_manifest_meets_a_threshold_one_signature_does_not() {
        let trust = trust_2_of_3();
        let mut m = Metadata::Manifest(Box::new(key(1).sign_manifest(sample(1))));
        assert!(!m.count(&trust).met());
        let bytes = m.to_bytes();
        // The second holder works from the file alone.
        let mut m2 = Metadata::from_bytes(&bytes).unwrap();
        m2.cosign(&key(2)).unwrap();
        assert!(m2.count(&trust).met());
        let Metadata::Manifest(signed) = m2 else { panic!("a manifest stays a manifest") };
        trust.verify_manifest(*signed, NOW).unwrap();
        assert_eq!(m.cosign(&key(1)), Err(CosignError::AlreadySigned { key: key(1).public().key_id() }));
    }

    #[test]
    fn a_cosigned_directive_verifies() {
        let d = Directive {
            release: ReleaseId::from_bytes([1; 32]),
            order: Order::Halt,
            sequence: 1,
            issued_at: NOW,
            expires_at: NOW + DEFAULT_LIFETIME,
        };
        let mut m = Metadata::Directive(SignedDirective::sign(d, &key(3)));
        m.cosign(&key(2)).unwrap();
        let m = Metadata::from_bytes(&m.to_bytes()).unwrap();
        assert_eq!(m.kind(), "directive");
        let Metadata::Directive(signed) = m else { panic!("a directive stays a directive") };
        trust_2_of_3().verify_directive(signed, NOW).unwrap();
    }

    #[test]
    fn garbage_is_not_metadata() {
        assert_eq!(Metadata::from_bytes(b"threshold = 2\n"), Err(NotMetadata));
        assert_eq!(Metadata::from_bytes(&[]), Err(NotMetadata));
    }
}
