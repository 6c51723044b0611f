//! Keys, signatures and trust roots.
//!
//! Every signature covers a domain-separation prefix followed by the canonical encoding
//! of the signed value, so a signature over a manifest can never be replayed as one over
//! a directive or a report ([`Domain`]). A manifest, which can be megabytes, is signed
//! through its release id: the BLAKE3 hash of its canonical encoding (a prehash, so
//! ed25519 hashes 57 bytes rather than the whole manifest again with SHA-512). A [`TrustRoot`] lists publisher keys and a
//! threshold; a manifest is valid only with `threshold` distinct valid signatures from
//! keys in the root (TUF's threshold signatures). The only way to hold a
//! [`VerifiedManifest`] is [`TrustRoot::verify_manifest`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::manifest::{Manifest, ManifestError, SignedManifest};
use crate::{Millis, ReleaseId};

/// What a signature is for; its prefix is signed before the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    /// A release manifest.
    Manifest,
    /// A halt, resume or revoke directive.
    Directive,
    /// A device status report.
    Report,
    /// A device enrolment.
    Enrolment,
    /// A versioned root of trust ([`crate::root::Root`]).
    Root,
}

impl Domain {
    fn prefix(self) -> &'static [u8] {
        match self {
            Self::Manifest => b"otamesh/v1/sig/manifest\0",
            Self::Directive => b"otamesh/v1/sig/directive\0",
            Self::Report => b"otamesh/v1/sig/report\0",
            Self::Enrolment => b"otamesh/v1/sig/enrolment\0",
            Self::Root => b"otamesh/v1/sig/root\0",
        }
    }

    /// The exact bytes a signature in this domain covers.
    pub fn message(self, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::with_capacity(self.prefix().len() + body.len());
        m.extend_from_slice(self.prefix());
        m.extend_from_slice(body);
        m
    }
}

/// A short key identifier: the first 8 bytes of BLAKE3 over the public key. Only a hint
/// to find the key; verification always uses the full key from the trust root.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KeyId([u8; 8]);

impl KeyId {
    /// The id of a public key.
    pub fn of(public: &[u8; 32]) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(b"otamesh/v1/key-id\0");
        h.update(public);
        let mut id = [0u8; 8];
        id.copy_from_slice(&h.finalize().as_bytes()[..8]);
        Self(id)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// An ed25519 secret key (a publisher's or a device's). Debug output hides it.
#[derive(Clone)]
pub struct SecretKey(SigningKey);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(public {})", self.public())
    }
}

impl SecretKey {
    /// A key from 32 secret bytes. The core has no randomness: callers supply the seed
    /// from the OS (keygen) or from a deterministic stream (tests, simulator).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(SigningKey::from_bytes(&seed))
    }

    /// The 32 secret bytes, for writing a key file.
    pub fn to_seed(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Signs `body` in `domain`.
    pub fn sign(&self, domain: Domain, body: &[u8]) -> Signature {
        let sig = self.0.sign(&domain.message(body));
        Signature { key: self.public().key_id(), bytes: SignatureBytes(sig.to_bytes()) }
    }

    /// Signs a manifest, with this key alone.
    pub fn sign_manifest(&self, manifest: Manifest) -> SignedManifest {
        let signature = self.manifest_signature(&manifest);
        SignedManifest { manifest, signatures: vec![signature] }
    }

    /// This key's signature over a manifest (to add to a [`SignedManifest`] for a
    /// threshold): over its release id, the BLAKE3 hash of its canonical encoding.
    pub fn manifest_signature(&self, manifest: &Manifest) -> Signature {
        self.sign(Domain::Manifest, manifest.release_id().as_bytes())
    }
}

/// An ed25519 public key, hex in text.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Parses 32 raw bytes; fails on bytes that are not a curve point.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, KeyError> {
        VerifyingKey::from_bytes(bytes).map(Self).map_err(|_| KeyError::NotAPoint)
    }

    /// The 32 raw bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// Its short id.
    pub fn key_id(&self) -> KeyId {
        KeyId::of(&self.to_bytes())
    }

    /// Whether `signature` is this key's, in `domain`, over `body`. Uses strict
    /// verification (rejects small-order keys and non-canonical signatures).
    pub fn verifies(&self, domain: Domain, body: &[u8], signature: &SignatureBytes) -> bool {
        let sig = ed25519_dalek::Signature::from_bytes(&signature.0);
        self.0.verify_strict(&domain.message(body), &sig).is_ok()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.to_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.key_id())
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut bytes).map_err(|_| KeyError::NotHex)?;
        Self::from_bytes(&bytes)
    }
}

/// Why a key could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// A key is 64 hex digits, as `otamesh keygen` writes it.
    #[error("not a key: expected 64 hex digits as written by `otamesh keygen`")]
    NotHex,
    /// The bytes are not a valid ed25519 public key.
    #[error("not a valid ed25519 public key")]
    NotAPoint,
}

/// 64 signature bytes (serde handles arrays only up to 32 on its own).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SignatureBytes(pub [u8; 64]);

impl fmt::Debug for SignatureBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SignatureBytes({}..)", hex::encode(&self.0[..6]))
    }
}

impl Serialize for SignatureBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for SignatureBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = SignatureBytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("64 signature bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
                <[u8; 64]>::try_from(v).map(SignatureBytes).map_err(|_| E::invalid_length(v.len(), &self))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// One signature and the id of the key that claims to have made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// Which key; looked up in the trust root.
    pub key: KeyId,
    /// The ed25519 signature.
    pub bytes: SignatureBytes,
}

/// Signatures one signed message may carry at most: a new root of trust is signed by
/// the keys of the old and the new root, each at most [`crate::root::MAX_ROOT_KEYS`].
pub const MAX_SIGNATURES: usize = 2 * crate::root::MAX_ROOT_KEYS;

/// Decodes a signature list of at most [`MAX_SIGNATURES`] (`#[serde(deserialize_with)]`
/// of every signed message): a signature bomb is refused at its length prefix.
pub fn bounded_signatures<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Signature>, D::Error> {
    crate::codec::bounded::<D, Signature, MAX_SIGNATURES>(d)
}

/// What [`TrustRoot::count_signatures`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureCount {
    /// Distinct trusted keys with a valid signature.
    pub valid: BTreeSet<KeyId>,
    /// Signatures by keys not in the trust root.
    pub untrusted: usize,
    /// Signatures by trusted keys that did not verify.
    pub invalid: usize,
    /// How many distinct valid signatures the trust root requires.
    pub threshold: usize,
}

impl SignatureCount {
    /// Whether the threshold is met.
    pub fn met(&self) -> bool {
        self.valid.len() >= self.threshold
    }

    /// `Ok` when the threshold is met, else why not.
    pub fn decide(&self) -> Result<(), VerifyError> {
        if self.met() {
            return Ok(());
        }
        Err(VerifyError::TooFewSignatures {
            valid: self.valid.len(),
            threshold: self.threshold,
            untrusted: self.untrusted,
            invalid: self.invalid,
        })
    }
}

/// Publisher keys and how many of them must sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustRoot {
    keys: BTreeMap<KeyId, PublicKey>,
    threshold: usize,
}

/// Why a trust root could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrustRootError {
    /// The threshold must be between 1 and the number of distinct keys.
    #[error("threshold {threshold} is not between 1 and the {keys} distinct keys listed")]
    Threshold {
        /// Requested threshold.
        threshold: usize,
        /// Distinct keys.
        keys: usize,
    },
}

/// Why a signed value was not accepted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// Fewer distinct trusted keys signed validly than the threshold requires.
    #[error(
        "{valid} valid signature(s) from trusted keys, {threshold} required ({untrusted} by unknown keys, {invalid} invalid)"
    )]
    TooFewSignatures {
        /// Distinct trusted keys with a valid signature.
        valid: usize,
        /// Required.
        threshold: usize,
        /// Signatures by keys not in the trust root.
        untrusted: usize,
        /// Signatures by trusted keys that did not verify.
        invalid: usize,
    },
    /// More signatures than the trust root has keys: not something a signer makes, and
    /// refused before any is checked, so a signature bomb costs nothing.
    #[error("{count} signatures, but the trust root has only {keys} keys: refused unchecked")]
    TooManySignatures {
        /// Signatures carried.
        count: usize,
        /// Keys that could have signed.
        keys: usize,
    },
    /// One key signed twice.
    #[error("key {key} signed more than once: each key may sign once")]
    DuplicateSignature {
        /// The key.
        key: KeyId,
    },
    /// A signature by a key the trust root does not list.
    #[error("signed by key {key}, which the trust root does not list: only trusted keys may sign")]
    UnknownKey {
        /// The key.
        key: KeyId,
    },
    /// The manifest is structurally wrong.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The manifest's `expires_at` has passed; ask the publisher for a fresh one.
    #[error("manifest expired at {expires_at} ms (now {now} ms)")]
    Expired {
        /// When it expired.
        expires_at: Millis,
        /// The time of the check.
        now: Millis,
    },
    /// The directive's `expires_at` has passed; sign a fresh one (`otamesh directive
    /// --expires-in`).
    #[error("directive expired at {expires_at} ms (now {now} ms): sign a fresh one")]
    DirectiveExpired {
        /// When it expired.
        expires_at: Millis,
        /// The time of the check.
        now: Millis,
    },
}

impl TrustRoot {
    /// A root of `keys` requiring `threshold` distinct signatures.
    pub fn new(keys: impl IntoIterator<Item = PublicKey>, threshold: usize) -> Result<Self, TrustRootError> {
        let keys: BTreeMap<_, _> = keys.into_iter().map(|k| (k.key_id(), k)).collect();
        if threshold == 0 || threshold > keys.len() {
            return Err(TrustRootError::Threshold { threshold, keys: keys.len() });
        }
        Ok(Self { keys, threshold })
    }

    /// A root of one key, threshold 1 (what a bare `.pub` file means).
    pub fn single(key: PublicKey) -> Self {
        Self { keys: BTreeMap::from([(key.key_id(), key)]), threshold: 1 }
    }

    /// The keys, by id.
    pub fn keys(&self) -> impl Iterator<Item = &PublicKey> {
        self.keys.values()
    }

    /// The number of distinct valid signatures required.
    pub fn threshold(&self) -> usize {
        self.threshold
    }

    /// Sorts `signatures` into valid ones by distinct trusted keys, ones by unknown keys
    /// and ones by trusted keys that do not verify. Used to decide and to show people
    /// (`otamesh inspect --trust`) which keys signed.
    pub fn count_signatures(&self, domain: Domain, body: &[u8], signatures: &[Signature]) -> SignatureCount {
        let mut valid = BTreeSet::new();
        let (mut untrusted, mut invalid) = (0, 0);
        for sig in signatures {
            match self.keys.get(&sig.key) {
                None => untrusted += 1,
                Some(key) if key.verifies(domain, body, &sig.bytes) => {
                    valid.insert(sig.key);
                }
                Some(_) => invalid += 1,
            }
        }
        SignatureCount { valid, untrusted, invalid, threshold: self.threshold }
    }

    /// Checks signatures in `domain` over `body`: first their shape ([`check_shape`]:
    /// no more than this root has keys, no key twice, no unknown key), then signatures
    /// in order until the threshold is met or can no longer be.
    pub fn check_signatures(
        &self,
        domain: Domain,
        body: &[u8],
        signatures: &[Signature],
    ) -> Result<(), VerifyError> {
        check_shape(signatures, &[self])?;
        self.meets_threshold(domain, body, signatures)
    }

    /// Whether this root's threshold of its keys signed validly, verifying no more
    /// signatures than it takes to decide. Signatures by keys it does not list are
    /// skipped (for a new root of trust, they are the other root's).
    pub fn meets_threshold(
        &self,
        domain: Domain,
        body: &[u8],
        signatures: &[Signature],
    ) -> Result<(), VerifyError> {
        let (mut valid, mut untrusted, mut invalid) = (BTreeSet::new(), 0, 0);
        for (i, sig) in signatures.iter().enumerate() {
            match self.keys.get(&sig.key) {
                None => untrusted += 1,
                Some(key) if key.verifies(domain, body, &sig.bytes) => {
                    valid.insert(sig.key);
                    if valid.len() >= self.threshold {
                        return Ok(());
                    }
                }
                Some(_) => invalid += 1,
            }
            if valid.len() + (signatures.len() - i - 1) < self.threshold {
                break;
            }
        }
        Err(VerifyError::TooFewSignatures {
            valid: valid.len(),
            threshold: self.threshold,
            untrusted,
            invalid,
        })
    }

    /// Whether `key` is one of this root's.
    pub fn lists(&self, key: &KeyId) -> bool {
        self.keys.contains_key(key)
    }

    /// Checks structure, signatures and expiry at `now`.
    pub fn verify_manifest(
        &self,
        signed: SignedManifest,
        now: Millis,
    ) -> Result<VerifiedManifest, VerifyError> {
        signed.manifest.check()?;
        let id = signed.manifest.release_id();
        self.check_signatures(Domain::Manifest, id.as_bytes(), &signed.signatures)?;
        if let Some(expires_at) = signed.manifest.expires_at
            && now >= expires_at
        {
            return Err(VerifyError::Expired { expires_at, now });
        }
        Ok(VerifiedManifest { id, signed })
    }
}

/// The shape every signed message's signatures must have, checked on key ids alone
/// before any signature is verified: at most as many signatures as `roots` have
/// distinct keys, no key twice, every key listed by one of `roots` (one trust root, or
/// for a new root of trust the old and the new).
pub fn check_shape(signatures: &[Signature], roots: &[&TrustRoot]) -> Result<(), VerifyError> {
    let keys: BTreeSet<&KeyId> = roots.iter().flat_map(|r| r.keys.keys()).collect();
    if signatures.len() > keys.len() {
        return Err(VerifyError::TooManySignatures { count: signatures.len(), keys: keys.len() });
    }
    let mut seen = BTreeSet::new();
    for sig in signatures {
        if !keys.contains(&sig.key) {
            return Err(VerifyError::UnknownKey { key: sig.key });
        }
        if !seen.insert(sig.key) {
            return Err(VerifyError::DuplicateSignature { key: sig.key });
        }
    }
    Ok(())
}

/// A manifest whose signatures, structure and expiry were checked against a trust
/// root. Only [`TrustRoot::verify_manifest`] makes one.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedManifest {
    id: ReleaseId,
    signed: SignedManifest,
}

impl VerifiedManifest {
    /// The release id.
    pub fn id(&self) -> ReleaseId {
        self.id
    }

    /// The manifest body.
    pub fn manifest(&self) -> &Manifest {
        &self.signed.manifest
    }

    /// The manifest with its signatures, to store or forward.
    pub fn signed(&self) -> &SignedManifest {
        &self.signed
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::manifest::tests::sample;

    pub(crate) fn key(n: u8) -> SecretKey {
        SecretKey::from_seed([n; 32])
    }

    const NOW: Millis = 1_750_000_000_000;

    #[test]
    fn signed_manifest_verifies() {
        let k = key(1);
        let root = TrustRoot::single(k.public());
        let v = root.verify_manifest(k.sign_manifest(sample(1)), NOW).unwrap();
        assert_eq!(v.id(), sample(1).release_id());
    }

    #[test]
    fn unknown_key_is_refused() {
        let root = TrustRoot::single(key(1).public());
        let err = root.verify_manifest(key(2).sign_manifest(sample(1)), NOW).unwrap_err();
        assert_eq!(err, VerifyError::UnknownKey { key: key(2).public().key_id() });
    }

    #[test]
    fn tampered_body_is_refused() {
        let k = key(1);
        let mut signed = k.sign_manifest(sample(1));
        signed.manifest.sequence += 1;
        let err = TrustRoot::single(k.public()).verify_manifest(signed, NOW).unwrap_err();
        assert!(matches!(err, VerifyError::TooFewSignatures { invalid: 1, .. }), "{err}");
    }

    #[test]
    fn threshold_counts_distinct_keys_and_a_key_signing_twice_is_refused() {
        let (a, b) = (key(1), key(2));
        let root = TrustRoot::new([a.public(), b.public()], 2).unwrap();
        let mut signed = a.sign_manifest(sample(1));
        assert!(matches!(
            root.verify_manifest(signed.clone(), NOW),
            Err(VerifyError::TooFewSignatures { valid: 1, .. })
        ));
        let mut twice = signed.clone();
        twice.signatures.push(twice.signatures[0].clone());
        assert_eq!(
            root.verify_manifest(twice, NOW).unwrap_err(),
            VerifyError::DuplicateSignature { key: a.public().key_id() }
        );
        signed.signatures.push(b.manifest_signature(&signed.manifest));
        root.verify_manifest(signed, NOW).unwrap();
    }

    #[test]
    fn a_signature_bomb_is_refused_unchecked() {
        let k = key(1);
        let root = TrustRoot::single(k.public());
        let mut signed = k.sign_manifest(sample(1));
        let one = signed.signatures[0].clone();
        signed.signatures = vec![one; 100_000];
        // The decoder refuses it at the length of its signature list, and what fits
        // through it is refused on its shape before any signature is checked.
        assert!(SignedManifest::from_bytes(&signed.to_bytes()).is_err());
        let err = root.verify_manifest(signed.clone(), NOW).unwrap_err();
        assert_eq!(err, VerifyError::TooManySignatures { count: 100_000, keys: 1 });
        signed.signatures.truncate(MAX_SIGNATURES);
        let signed = SignedManifest::from_bytes(&signed.to_bytes()).unwrap();
        let err = root.verify_manifest(signed, NOW).unwrap_err();
        assert_eq!(err, VerifyError::TooManySignatures { count: MAX_SIGNATURES, keys: 1 });
    }

    #[test]
    fn an_unknown_key_beside_a_threshold_of_trusted_ones_is_refused() {
        let root = TrustRoot::new([key(1).public(), key(2).public()], 1).unwrap();
        let mut signed = key(1).sign_manifest(sample(1));
        signed.signatures.push(key(3).manifest_signature(&signed.manifest));
        assert_eq!(
            root.verify_manifest(signed, NOW).unwrap_err(),
            VerifyError::UnknownKey { key: key(3).public().key_id() }
        );
    }

    #[test]
    fn verification_stops_once_the_threshold_is_decided() {
        // Two of three keys suffice: a garbage third signature is never looked at.
        let root = TrustRoot::new([key(1).public(), key(2).public(), key(3).public()], 2).unwrap();
        let mut signed = key(1).sign_manifest(sample(1));
        signed.signatures.push(key(2).manifest_signature(&signed.manifest));
        signed.signatures.push(Signature { key: key(3).public().key_id(), bytes: SignatureBytes([0; 64]) });
        root.verify_manifest(signed, NOW).unwrap();
    }

    #[test]
    fn threshold_must_be_reachable() {
        assert!(TrustRoot::new([key(1).public()], 2).is_err());
        assert!(TrustRoot::new([key(1).public()], 0).is_err());
    }

    #[test]
    fn expired_manifest_is_refused() {
        let k = key(1);
        let m = sample(1);
        let expires_at = m.expires_at.unwrap();
        let err = TrustRoot::single(k.public()).verify_manifest(k.sign_manifest(m), expires_at).unwrap_err();
        assert!(matches!(err, VerifyError::Expired { .. }));
    }

    #[test]
    fn manifest_signature_is_not_a_directive_signature() {
        let k = key(1);
        let body = sample(1).canonical_bytes();
        let sig = k.sign(Domain::Manifest, &body);
        assert!(k.public().verifies(Domain::Manifest, &body, &sig.bytes));
        assert!(!k.public().verifies(Domain::Directive, &body, &sig.bytes));
        assert!(!k.public().verifies(Domain::Report, &body, &sig.bytes));
    }

    #[test]
    fn public_key_hex_round_trip() {
        let p = key(9).public();
        assert_eq!(p.to_string().parse::<PublicKey>().unwrap(), p);
        assert_eq!("zz".parse::<PublicKey>(), Err(KeyError::NotHex));
    }
}
