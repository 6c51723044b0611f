//! What a release is.
//!
//! The fields follow the RFC 9124 (SUIT) information model. Required there and here:
//! a monotonic sequence number (anti-rollback), the payload format, its location (the
//! chunk list: chunks are fetched by id from any holder), digest, size and signatures.
//! Recommended or optional there, carried here: vendor and product, device class
//! (compatibility), a human version, the update kind, the precursor a delta assumes,
//! creation and expiry times (freeze attacks), and the rollout policy.
//!
//! A [`Manifest`] is the signed body; a [`SignedManifest`] adds signatures. The
//! canonical encoding of the body (see [`crate::codec`]) is what signatures cover and
//! what the [`ReleaseId`] hashes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::chunking::ChunkRef;
use crate::rollout::RolloutPolicy;
use crate::trust::Signature;
use crate::{Millis, ReleaseId, codec};

/// The manifest format this build writes and reads. 2: signatures cover the release id
/// (a prehash), and ids are encoded as byte strings.
pub const FORMAT_VERSION: u16 = 2;

/// The largest payload a manifest may describe: 16 GiB.
pub const MAX_PAYLOAD_BYTES: u64 = 16 << 30;

/// The most chunks a manifest may list. At the default 64 KiB average this is a 6 GiB
/// payload; the encoded manifest stays under 3 MB, small enough to gossip.
pub const MAX_CHUNKS: usize = 100_000;

/// The update kinds of the seed document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpdateKind {
    /// A new firmware image.
    Firmware,
    /// A security patch.
    Security,
    /// A feature update.
    Feature,
    /// A configuration change.
    Config,
    /// An emergency fix.
    Emergency,
}

impl UpdateKind {
    /// Every kind, in declaration order.
    pub const ALL: [UpdateKind; 5] =
        [Self::Firmware, Self::Security, Self::Feature, Self::Config, Self::Emergency];

    /// The lowercase name used on the command line and in TOML.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Firmware => "firmware",
            Self::Security => "security",
            Self::Feature => "feature",
            Self::Config => "config",
            Self::Emergency => "emergency",
        }
    }
}

impl fmt::Display for UpdateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for UpdateKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| {
            format!("unknown update kind {s:?}: use firmware, security, feature, config or emergency")
        })
    }
}

/// The payload: one artifact, as an ordered list of content-defined chunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// Total size in bytes; the sum of the chunk lengths.
    pub size: u64,
    /// BLAKE3 of the whole artifact, checked after assembly.
    pub digest: [u8; 32],
    /// The chunks in order; fetched by id from any peer or the origin.
    pub chunks: Vec<ChunkRef>,
}

/// The signed body of a release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT_VERSION`] at the time of writing.
    pub format: u16,
    /// Who made the device, e.g. `acme`.
    pub vendor: String,
    /// Which product line, e.g. `edge-gateway`.
    pub product: String,
    /// Which hardware class may install this; nodes ignore manifests for other classes.
    pub class: String,
    /// Monotonic per class: a device never installs a sequence at or below its own.
    pub sequence: u64,
    /// For people: `1.4.2`.
    pub version: String,
    /// What kind of update this is; the rollout policy may let some kinds skip waves.
    pub kind: UpdateKind,
    /// The artifact.
    pub payload: Payload,
    /// For a delta: the installed sequence this release assumes; `None` for a full image.
    pub precursor: Option<u64>,
    /// When the publisher made it; waves are offset from here.
    pub created_at: Millis,
    /// After this, devices refuse it (defeats freeze attacks); `None` never expires.
    pub expires_at: Option<Millis>,
    /// How devices stage the rollout.
    pub rollout: RolloutPolicy,
}

/// A manifest and the publisher signatures over its canonical encoding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignedManifest {
    /// The signed body.
    pub manifest: Manifest,
    /// One per signing key; verified against a [`crate::TrustRoot`].
    #[serde(deserialize_with = "crate::trust::bounded_signatures")]
    pub signatures: Vec<Signature>,
}

/// Why a manifest is malformed regardless of who signed it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// Written by a newer or older otamesh; upgrade the tool that reads it.
    #[error("manifest format {found} is not supported (this build reads format {FORMAT_VERSION})")]
    Format {
        /// The format field found.
        found: u16,
    },
    /// The chunk lengths do not add up to the payload size.
    #[error("chunk lengths add up to {sum} bytes but the payload size says {size}")]
    SizeMismatch {
        /// Sum of chunk lengths.
        sum: u64,
        /// Declared size.
        size: u64,
    },
    /// More chunks than [`MAX_CHUNKS`] or a payload over [`MAX_PAYLOAD_BYTES`].
    #[error(
        "payload too large: {chunks} chunks, {size} bytes (limits {MAX_CHUNKS} chunks, {MAX_PAYLOAD_BYTES} bytes)"
    )]
    TooLarge {
        /// Chunk count.
        chunks: usize,
        /// Payload size.
        size: u64,
    },
    /// A chunk of length zero cannot come from the chunker.
    #[error("chunk {index} has length zero")]
    EmptyChunk {
        /// Its index.
        index: usize,
    },
    /// `class` is empty.
    #[error("device class is empty: publish with --class NAME")]
    NoClass,
    /// The rollout policy is inconsistent.
    #[error("rollout policy: {0}")]
    Rollout(#[from] crate::rollout::PolicyError),
    /// Expires before it was created.
    #[error("expires_at {expires_at} is not after created_at {created_at}")]
    ExpiryBeforeCreation {
        /// Creation time.
        created_at: Millis,
        /// Expiry time.
        expires_at: Millis,
    },
}

impl Manifest {
    /// The canonical encoding: what signatures cover and the release id hashes.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// The release id: BLAKE3 over a domain prefix and the canonical encoding.
    pub fn release_id(&self) -> ReleaseId {
        let mut h = blake3::Hasher::new();
        h.update(b"otamesh/v1/release-id\0");
        h.update(&self.canonical_bytes());
        ReleaseId::from_bytes(*h.finalize().as_bytes())
    }

    /// Structural checks that do not depend on keys or time.
    pub fn check(&self) -> Result<(), ManifestError> {
        if self.format != FORMAT_VERSION {
            return Err(ManifestError::Format { found: self.format });
        }
        if self.class.trim().is_empty() {
            return Err(ManifestError::NoClass);
        }
        let chunks = &self.payload.chunks;
        if chunks.len() > MAX_CHUNKS || self.payload.size > MAX_PAYLOAD_BYTES {
            return Err(ManifestError::TooLarge { chunks: chunks.len(), size: self.payload.size });
        }
        if let Some(index) = chunks.iter().position(|c| c.len == 0) {
            return Err(ManifestError::EmptyChunk { index });
        }
        let sum: u64 = chunks.iter().map(|c| u64::from(c.len)).sum();
        if sum != self.payload.size {
            return Err(ManifestError::SizeMismatch { sum, size: self.payload.size });
        }
        if let Some(expires_at) = self.expires_at
            && expires_at <= self.created_at
        {
            return Err(ManifestError::ExpiryBeforeCreation { created_at: self.created_at, expires_at });
        }
        self.rollout.validate()?;
        Ok(())
    }
}

impl SignedManifest {
    /// The on-disk and on-wire form.
    pub fn to_bytes(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Parses the on-disk and on-wire form; does not verify signatures.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, codec::DecodeError> {
        codec::decode(bytes)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::chunking::{ChunkerConfig, chunk};
    use proptest::prelude::*;

    pub(crate) fn sample(sequence: u64) -> Manifest {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let chunks = chunk(&data, ChunkerConfig::default()).unwrap();
        Manifest {
            format: FORMAT_VERSION,
            vendor: "acme".into(),
            product: "gw".into(),
            class: "gw-arm64".into(),
            sequence,
            version: format!("1.0.{sequence}"),
            kind: UpdateKind::Firmware,
            payload: Payload { size: data.len() as u64, digest: *blake3::hash(&data).as_bytes(), chunks },
            precursor: None,
            created_at: 1_700_000_000_000,
            expires_at: Some(1_800_000_000_000),
            rollout: RolloutPolicy::default(),
        }
    }

    #[test]
    fn sample_passes_checks() {
        sample(1).check().unwrap();
    }

    #[test]
    fn size_mismatch_is_caught() {
        let mut m = sample(1);
        m.payload.size += 1;
        assert!(matches!(m.check(), Err(ManifestError::SizeMismatch { .. })));
    }

    #[test]
    fn release_id_depends_on_every_field() {
        let a = sample(1);
        let mut b = a.clone();
        b.version.push('x');
        assert_ne!(a.release_id(), b.release_id());
        assert_eq!(a.release_id(), a.clone().release_id());
    }

    #[test]
    fn kind_parses_its_own_names() {
        for k in UpdateKind::ALL {
            assert_eq!(k.as_str().parse::<UpdateKind>().unwrap(), k);
        }
        assert!("nope".parse::<UpdateKind>().is_err());
    }

    #[test]
    fn a_re_encoded_genuine_manifest_is_refused() {
        let signed = crate::trust::tests::key(1).sign_manifest(sample(1));
        let mut bytes = signed.to_bytes();
        assert_eq!(SignedManifest::from_bytes(&bytes).unwrap(), signed);
        // The format field (2) re-encoded as a u16 varint: same manifest, same release
        // id, same valid signature, different bytes.
        assert_eq!(bytes[0], 2);
        bytes.splice(0..1, [251, 2, 0]);
        assert!(matches!(SignedManifest::from_bytes(&bytes), Err(codec::DecodeError::NonCanonical)));
    }

    proptest! {
        #[test]
        fn signed_manifest_round_trips(seq in any::<u64>(), version in ".{0,40}", extra in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut m = sample(1);
            m.sequence = seq;
            m.version = version;
            m.vendor = String::from_utf8_lossy(&extra).into_owned();
            let sm = SignedManifest { manifest: m, signatures: vec![] };
            prop_assert_eq!(SignedManifest::from_bytes(&sm.to_bytes()).unwrap(), sm);
        }

        #[test]
        fn random_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = SignedManifest::from_bytes(&bytes);
            let _ = codec::decode::<crate::directive::SignedDirective>(&bytes);
            let _ = codec::decode::<crate::report::SignedReport>(&bytes);
            let _ = codec::decode::<crate::enrolment::SignedEnrolment>(&bytes);
        }

        #[test]
        fn bit_flips_never_panic_the_decoder(pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut bytes = SignedManifest { manifest: sample(3), signatures: vec![] }.to_bytes();
            let i = pos.index(bytes.len());
            bytes[i] ^= 1 << bit;
            let _ = SignedManifest::from_bytes(&bytes);
        }
    }
}
