//! A versioned, signed root of trust that can replace its own keys, as TUF's root role
//! does.
//!
//! A [`Root`] lists the publisher keys, how many of them must sign, its version and when
//! it expires. Version N+1 is accepted only from a holder of version N, and only if a
//! threshold of version N's keys *and* a threshold of its own keys signed it: the old
//! keys vouch for the change, the new keys prove they exist and are held. So a lost or
//! leaked key is replaced by publishing a new root, not by re-flashing devices, and a
//! thief of fewer than a threshold of keys cannot rotate the fleet to keys of their own.
//!
//! **Goals:** one pure rule for the chain ([`VerifiedRoot::next`]), typed refusals
//! naming what to do, the only way to hold a [`VerifiedRoot`] being through that rule
//! (or an anchor the operator handed over).
//!
//! **Non-goals:** TUF's other roles (targets, snapshot, timestamp): manifests are
//! signed directly by the root's keys. Expiry limits when a root can be *adopted*; a
//! device keeps verifying against its newest root after that root's expiry (manifests
//! carry their own expiry against freeze attacks), so a late rotation never bricks it.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::trust::{
    Domain, KeyError, PublicKey, SecretKey, Signature, TrustRoot, TrustRootError, VerifyError, check_shape,
};
use crate::{Millis, codec};

/// The root format this build writes and reads.
pub const ROOT_FORMAT: u16 = 1;

/// The most keys a root may list; more is not a fleet's publisher set but an attack on
/// the verifier.
pub const MAX_ROOT_KEYS: usize = 64;

/// The signed body of a root of trust.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Root {
    /// [`ROOT_FORMAT`] at the time of writing.
    pub format: u16,
    /// 1 for the first root; each replacement is exactly one more.
    pub version: u64,
    /// How many distinct keys must sign a manifest, directive, enrolment or the next root.
    pub threshold: u32,
    /// The publisher keys, raw.
    pub keys: Vec<[u8; 32]>,
    /// After this, the root is refused for adoption (Unix milliseconds).
    pub expires_at: Millis,
}

/// A root and the signatures over its canonical encoding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRoot {
    /// The signed body.
    pub root: Root,
    /// By keys of this root and of the one before it.
    #[serde(deserialize_with = "crate::trust::bounded_signatures")]
    pub signatures: Vec<Signature>,
}

/// Why a root was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RootError {
    /// Written by another otamesh; upgrade the tool that reads it.
    #[error("root format {found} is not supported (this build reads format {ROOT_FORMAT})")]
    Format {
        /// The format field found.
        found: u16,
    },
    /// A listed key is not an ed25519 public key.
    #[error("key {index} of the root: {error}")]
    Key {
        /// Its position in the list.
        index: usize,
        /// What is wrong.
        error: KeyError,
    },
    /// A key is listed twice, which would let one holder count as two.
    #[error("key {index} of the root is listed twice: list each key once (`otamesh root new --pub`)")]
    DuplicateKey {
        /// Its second position in the list.
        index: usize,
    },
    /// More keys than [`MAX_ROOT_KEYS`].
    #[error("the root lists {keys} keys; at most {MAX_ROOT_KEYS} are allowed")]
    TooManyKeys {
        /// How many.
        keys: usize,
    },
    /// The threshold cannot be met by the keys listed.
    #[error("{0}")]
    Threshold(TrustRootError),
    /// Not the version that comes next: a gap, a replay of an old root or a second
    /// root of the current version.
    #[error(
        "root version {found} does not follow version {current}: publish and adopt version {} first",
        current + 1
    )]
    NotNext {
        /// The version held.
        current: u64,
        /// The version offered.
        found: u64,
    },
    /// Not enough keys of the root held now signed the new one.
    #[error(
        "root version {version} lacks signatures of the current root (version {current}): {count}; have its key holders run `otamesh sign`"
    )]
    OldKeys {
        /// The version offered.
        version: u64,
        /// The version held.
        current: u64,
        /// The count.
        count: VerifyError,
    },
    /// Not enough of the new root's own keys signed it.
    #[error(
        "root version {version} lacks signatures of its own keys: {count}; have its new key holders run `otamesh sign`"
    )]
    NewKeys {
        /// The version offered.
        version: u64,
        /// The count.
        count: VerifyError,
    },
    /// Signatures that no root of the pair may carry: a key twice, a key neither root
    /// lists, or more signatures than both have keys.
    #[error("root version {version}: {error}; sign only with keys of this root or the one before it")]
    Signatures {
        /// The version offered.
        version: u64,
        /// What is wrong.
        error: VerifyError,
    },
    /// The root's expiry has passed.
    #[error(
        "root version {version} expired at {expires_at} ms (now {now} ms): make a new one with a later --expires-in"
    )]
    Expired {
        /// The version offered.
        version: u64,
        /// When it expired.
        expires_at: Millis,
        /// The time of the check.
        now: Millis,
    },
}

impl Root {
    /// The canonical encoding: what signatures cover.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// The trust root this root describes, after every structural check.
    pub fn trust(&self) -> Result<TrustRoot, RootError> {
        if self.format != ROOT_FORMAT {
            return Err(RootError::Format { found: self.format });
        }
        if self.keys.len() > MAX_ROOT_KEYS {
            return Err(RootError::TooManyKeys { keys: self.keys.len() });
        }
        let mut seen = BTreeSet::new();
        let mut keys = Vec::with_capacity(self.keys.len());
        for (index, raw) in self.keys.iter().enumerate() {
            if !seen.insert(*raw) {
                return Err(RootError::DuplicateKey { index });
            }
            keys.push(PublicKey::from_bytes(raw).map_err(|error| RootError::Key { index, error })?);
        }
        // A threshold too large for usize is certainly above the key count.
        let threshold = usize::try_from(self.threshold).unwrap_or(usize::MAX);
        TrustRoot::new(keys, threshold).map_err(RootError::Threshold)
    }
}

impl SignedRoot {
    /// Signs `root` with `key` alone; more signers add theirs with `otamesh sign`.
    pub fn sign(root: Root, key: &SecretKey) -> Self {
        let signature = key.sign(Domain::Root, &root.canonical_bytes());
        Self { root, signatures: vec![signature] }
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

/// The root a verifier currently trusts: manifests, directives and enrolments are
/// checked against its keys and threshold, and only its successor can replace it.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedRoot {
    version: u64,
    trust: TrustRoot,
    signed: Option<SignedRoot>,
}

impl VerifiedRoot {
    /// A trust file or a single `.pub` as a root: version 0, so the first signed root a
    /// fleet publishes (version 1) must be signed by a threshold of these keys.
    pub fn unversioned(trust: TrustRoot) -> Self {
        Self { version: 0, trust, signed: None }
    }

    /// A root file the operator handed over (`--trust root.root`): trusted because the
    /// operator chose it, but it must still be signed by a threshold of its own keys, so
    /// a half-made root is not mistaken for a finished one. Its expiry is not checked:
    /// a device provisioned long ago must still be able to walk forward from it.
    pub fn anchor(signed: SignedRoot) -> Result<Self, RootError> {
        let trust = signed.root.trust()?;
        let version = signed.root.version;
        trust
            .check_signatures(Domain::Root, &signed.root.canonical_bytes(), &signed.signatures)
            .map_err(|count| RootError::NewKeys { version, count })?;
        Ok(Self { version, trust, signed: Some(signed) })
    }

    /// The first root of a store that has none: [`Self::anchor`]'s rule, and unexpired
    /// at `now`.
    pub fn first(signed: SignedRoot, now: Millis) -> Result<Self, RootError> {
        fresh(&signed.root, now)?;
        Self::anchor(signed)
    }

    /// The successor of this root, if `signed` is exactly the next version, unexpired
    /// at `now`, and signed by a threshold of this root's keys and of its own.
    pub fn next(&self, signed: SignedRoot, now: Millis) -> Result<Self, RootError> {
        self.follows(&signed.root)?;
        fresh(&signed.root, now)?;
        self.resume(signed)
    }

    /// [`Self::next`] without the expiry check, for walking again a chain of roots that
    /// were each checked when they were adopted (a node's saved roots, a store's): a
    /// root expiring later must not undo its adoption and send the walk backwards.
    pub fn resume(&self, signed: SignedRoot) -> Result<Self, RootError> {
        let root = &signed.root;
        self.follows(root)?;
        let trust = root.trust()?;
        let body = root.canonical_bytes();
        check_shape(&signed.signatures, &[&self.trust, &trust])
            .map_err(|error| RootError::Signatures { version: root.version, error })?;
        self.trust
            .meets_threshold(Domain::Root, &body, &signed.signatures)
            .map_err(|count| RootError::OldKeys { version: root.version, current: self.version, count })?;
        trust
            .meets_threshold(Domain::Root, &body, &signed.signatures)
            .map_err(|count| RootError::NewKeys { version: root.version, count })?;
        Ok(Self { version: root.version, trust, signed: Some(signed) })
    }

    fn follows(&self, root: &Root) -> Result<(), RootError> {
        if root.version != self.version.saturating_add(1) {
            return Err(RootError::NotNext { current: self.version, found: root.version });
        }
        Ok(())
    }

    /// Its version; 0 for a trust file.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The keys and threshold everything else is verified against.
    pub fn trust(&self) -> &TrustRoot {
        &self.trust
    }

    /// The signed root, to persist or forward; `None` for a trust file.
    pub fn signed(&self) -> Option<&SignedRoot> {
        self.signed.as_ref()
    }
}

fn fresh(root: &Root, now: Millis) -> Result<(), RootError> {
    if now >= root.expires_at {
        return Err(RootError::Expired { version: root.version, expires_at: root.expires_at, now });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::tests::key;

    const NOW: Millis = 1_750_000_000_000;
    const LATER: Millis = NOW + 365 * 86_400_000;

    /// A root of `version` over keys `ids` (by test key seed).
    fn root(version: u64, threshold: u32, ids: &[u8]) -> Root {
        Root {
            format: ROOT_FORMAT,
            version,
            threshold,
            keys: ids.iter().map(|&i| key(i).public().to_bytes()).collect(),
            expires_at: LATER,
        }
    }

    /// `root` signed by the keys `by`.
    fn signed(root: Root, by: &[u8]) -> SignedRoot {
        let body = root.canonical_bytes();
        SignedRoot { signatures: by.iter().map(|&i| key(i).sign(Domain::Root, &body)).collect(), root }
    }

    /// Root v1: 2 of {A=1, B=2, C=3}.
    fn v1() -> VerifiedRoot {
        VerifiedRoot::anchor(signed(root(1, 2, &[1, 2, 3]), &[1, 2])).unwrap()
    }

    #[test]
    fn v2_replacing_a_key_needs_a_threshold_of_old_and_new_keys() {
        // v2 replaces A by D=4: signed by B, C (2 of v1) and B, D (2 of v2).
        let v2 = v1().next(signed(root(2, 2, &[2, 3, 4]), &[2, 3, 4]), NOW).unwrap();
        assert_eq!(v2.version(), 2);
        assert_eq!(v2.trust().threshold(), 2);
        assert!(v2.trust().keys().any(|k| *k == key(4).public()));
        assert!(!v2.trust().keys().any(|k| *k == key(1).public()), "A is gone");
    }

    #[test]
    fn too_few_signatures_of_the_old_keys_are_refused() {
        // D and B sign: 2 of v2 but only 1 of v1 (B).
        let err = v1().next(signed(root(2, 2, &[2, 3, 4]), &[4, 2]), NOW).unwrap_err();
        assert!(matches!(err, RootError::OldKeys { version: 2, current: 1, .. }), "{err}");
    }

    #[test]
    fn too_few_signatures_of_the_new_keys_are_refused() {
        // A and B sign: 2 of v1 but only 1 of v2 (B); the new key D never proved itself.
        let err = v1().next(signed(root(2, 2, &[2, 3, 4]), &[1, 2]), NOW).unwrap_err();
        assert!(matches!(err, RootError::NewKeys { version: 2, .. }), "{err}");
    }

    #[test]
    fn a_version_gap_or_replay_is_refused() {
        let gap = v1().next(signed(root(3, 2, &[1, 2, 3]), &[1, 2]), NOW).unwrap_err();
        assert_eq!(gap, RootError::NotNext { current: 1, found: 3 });
        let replay = v1().next(signed(root(1, 2, &[1, 2, 3]), &[1, 2]), NOW).unwrap_err();
        assert_eq!(replay, RootError::NotNext { current: 1, found: 1 });
    }

    #[test]
    fn an_expired_root_is_refused() {
        let mut r = root(2, 2, &[1, 2, 3]);
        r.expires_at = NOW;
        let err = v1().next(signed(r, &[1, 2]), NOW).unwrap_err();
        assert_eq!(err, RootError::Expired { version: 2, expires_at: NOW, now: NOW });
    }

    #[test]
    fn a_saved_chain_is_walked_again_after_its_roots_expired() {
        let mut r = root(2, 2, &[1, 2, 3]);
        r.expires_at = NOW + 1;
        let s = signed(r, &[1, 2]);
        v1().next(s.clone(), NOW).unwrap();
        assert!(matches!(v1().next(s.clone(), NOW + 1), Err(RootError::Expired { .. })));
        assert_eq!(v1().resume(s).unwrap().version(), 2);
    }

    #[test]
    fn a_first_root_must_be_unexpired() {
        let mut r = root(1, 1, &[1]);
        r.expires_at = NOW;
        assert!(matches!(VerifiedRoot::first(signed(r, &[1]), NOW), Err(RootError::Expired { .. })));
    }

    #[test]
    fn duplicate_keys_are_refused() {
        // Listing A twice would let A alone meet a threshold of 2.
        let err = v1().next(signed(root(2, 2, &[1, 1, 2]), &[1, 2]), NOW).unwrap_err();
        assert_eq!(err, RootError::DuplicateKey { index: 1 });
        let err = VerifiedRoot::anchor(signed(root(1, 2, &[1, 1]), &[1])).unwrap_err();
        assert_eq!(err, RootError::DuplicateKey { index: 1 });
    }

    #[test]
    fn one_key_signing_twice_or_a_stranger_signing_is_refused() {
        let mut s = signed(root(2, 2, &[1, 2, 3]), &[1]);
        s.signatures.push(s.signatures[0].clone());
        assert!(matches!(v1().next(s, NOW), Err(RootError::Signatures { version: 2, .. })));
        // Key 9 is in neither v1 nor v2.
        let s = signed(root(2, 2, &[1, 2, 3]), &[1, 2, 9]);
        assert!(matches!(v1().next(s, NOW), Err(RootError::Signatures { version: 2, .. })));
    }

    #[test]
    fn a_trust_file_is_version_zero_and_vouches_for_version_one() {
        let file = VerifiedRoot::unversioned(TrustRoot::new([key(1).public(), key(2).public()], 2).unwrap());
        let v1 = file.next(signed(root(1, 1, &[3]), &[1, 2, 3]), NOW).unwrap();
        assert_eq!(v1.version(), 1);
        assert!(matches!(file.next(signed(root(1, 1, &[3]), &[1, 3]), NOW), Err(RootError::OldKeys { .. })));
    }

    #[test]
    fn an_anchor_must_be_signed_by_its_own_threshold() {
        let err = VerifiedRoot::anchor(signed(root(1, 2, &[1, 2, 3]), &[1])).unwrap_err();
        assert!(matches!(err, RootError::NewKeys { version: 1, .. }), "{err}");
    }

    #[test]
    fn a_signature_in_another_domain_does_not_sign_a_root() {
        let r = root(1, 1, &[1]);
        let forged =
            SignedRoot { signatures: vec![key(1).sign(Domain::Manifest, &r.canonical_bytes())], root: r };
        let single = VerifiedRoot::unversioned(TrustRoot::single(key(1).public()));
        assert!(matches!(single.next(forged, NOW), Err(RootError::OldKeys { .. })));
    }

    #[test]
    fn unreachable_threshold_and_wrong_format_are_refused() {
        assert!(matches!(root(1, 4, &[1, 2, 3]).trust(), Err(RootError::Threshold(_))));
        assert!(matches!(root(1, 0, &[1]).trust(), Err(RootError::Threshold(_))));
        let mut r = root(1, 1, &[1]);
        r.format = 9;
        assert_eq!(r.trust(), Err(RootError::Format { found: 9 }));
    }

    #[test]
    fn signed_roots_round_trip() {
        let s = signed(root(1, 2, &[1, 2, 3]), &[1, 2]);
        assert_eq!(SignedRoot::from_bytes(&s.to_bytes()).unwrap(), s);
    }
}
