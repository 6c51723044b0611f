//! Releases and directives of a local fleet, made through the library exactly as
//! `otamesh publish` and `otamesh directive` make them: chunked, signed, verified and
//! written into the origin store.
//!
//! **Goals**: publish a release from bytes in memory under a caller-built manifest
//! (rollout policy, `created_at` and so on), stamp a manifest until its wave
//! assignment suits a story, and sign a halt, resume or revoke into the store.
//!
//! **Non-goals**: key management (the caller holds the [`SecretKey`]) and thresholds
//! above one signature.

use otamesh_core::chunking::{ChunkerConfig, ChunkerConfigError, VerifiedChunk, chunk};
use otamesh_core::directive::{Directive, Order, SignedDirective, VerifiedDirective};
use otamesh_core::manifest::{FORMAT_VERSION, Manifest, Payload};
use otamesh_core::rollout::RolloutPolicy;
use otamesh_core::trust::VerifyError;
use otamesh_core::{ReleaseId, SecretKey, TrustRoot, UpdateKind, VerifiedManifest};
use otamesh_node::store::{Store, StoreError};

/// Deterministic incompressible bytes (xorshift), like a firmware image: what the demo,
/// the benchmarks and the tests publish.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Why a release or directive could not be published.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The default chunker configuration was refused (a bug in the chunker's defaults).
    #[error("cannot chunk the release: {0}")]
    Chunking(#[from] ChunkerConfigError),
    /// The manifest's chunk list does not describe the bytes given; build the manifest
    /// with [`manifest`] from the same bytes.
    #[error("the manifest's chunk list does not match the release bytes")]
    ChunksMismatch,
    /// The freshly signed manifest or directive does not verify (it expired already,
    /// or the policy is invalid); fix the manifest.
    #[error("the signed {what} does not verify: {source}")]
    Verify {
        /// `manifest` or `directive`.
        what: &'static str,
        /// Why.
        source: VerifyError,
    },
    /// The store could not be written (see the store's message for the fix).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A release written into a store.
#[derive(Debug, Clone)]
pub struct Published {
    /// The verified manifest (its id is the release id).
    pub manifest: VerifiedManifest,
    /// Chunks the store did not hold before.
    pub new_chunks: usize,
    /// Their bytes.
    pub new_bytes: u64,
}

impl Published {
    /// The release id.
    pub fn id(&self) -> ReleaseId {
        self.manifest.id()
    }
}

/// What a manifest says besides its payload.
#[derive(Debug, Clone)]
pub struct Describe<'a> {
    /// Vendor.
    pub vendor: &'a str,
    /// Product.
    pub product: &'a str,
    /// Device class.
    pub class: &'a str,
    /// Human version.
    pub version: &'a str,
    /// Monotonic sequence.
    pub sequence: u64,
    /// Kind of update.
    pub kind: UpdateKind,
    /// When it was made, Unix ms.
    pub created_at: u64,
    /// When it expires, Unix ms.
    pub expires_at: Option<u64>,
    /// Its rollout.
    pub rollout: RolloutPolicy,
}

/// The unsigned manifest of `data` as `describe` says.
pub fn manifest(data: &[u8], describe: Describe<'_>) -> Result<Manifest, PublishError> {
    let chunks = chunk(data, ChunkerConfig::default())?;
    Ok(Manifest {
        format: FORMAT_VERSION,
        vendor: describe.vendor.into(),
        product: describe.product.into(),
        class: describe.class.into(),
        sequence: describe.sequence,
        version: describe.version.into(),
        kind: describe.kind,
        payload: Payload { size: data.len() as u64, digest: *blake3::hash(data).as_bytes(), chunks },
        precursor: None,
        created_at: describe.created_at,
        expires_at: describe.expires_at,
        rollout: describe.rollout,
    })
}

/// Moves `manifest.created_at` back a millisecond at a time (at most `tries` times)
/// until `accept` likes its release id; the wave of a device is a hash of release and
/// device, so this chooses who goes first. False if nothing was accepted.
pub fn stamp(manifest: &mut Manifest, tries: u64, mut accept: impl FnMut(ReleaseId) -> bool) -> bool {
    let now = manifest.created_at;
    for back in 0..tries.min(now) {
        manifest.created_at = now - back;
        if accept(manifest.release_id()) {
            return true;
        }
    }
    false
}

/// Signs `manifest` with `key`, verifies it at `now`, and writes its chunks (from
/// `data`) and then the manifest into `store`, so a node never sees a release whose
/// chunks are not there.
pub fn publish(
    store: &Store,
    key: &SecretKey,
    data: &[u8],
    manifest: Manifest,
    now: u64,
) -> Result<Published, PublishError> {
    let total: u64 = manifest.payload.chunks.iter().map(|c| u64::from(c.len)).sum();
    if total != data.len() as u64 {
        return Err(PublishError::ChunksMismatch);
    }
    let verified = TrustRoot::single(key.public())
        .verify_manifest(key.sign_manifest(manifest), now)
        .map_err(|source| PublishError::Verify { what: "manifest", source })?;
    let (mut new_chunks, mut new_bytes, mut offset) = (0, 0, 0usize);
    for c in &verified.manifest().payload.chunks {
        let bytes = data[offset..offset + c.len as usize].to_vec();
        offset += c.len as usize;
        let chunk = VerifiedChunk::new(c.id, bytes).map_err(|_| PublishError::ChunksMismatch)?;
        if store.put_chunk(&chunk)? {
            new_chunks += 1;
            new_bytes += u64::from(c.len);
        }
    }
    store.put_manifest(&verified)?;
    Ok(Published { manifest: verified, new_chunks, new_bytes })
}

/// Signs `order` about `release` with `key` (sequence and issue time `now`) and writes
/// it into `store`, where polling nodes find it. Returns it and its store path.
pub fn direct(
    store: &Store,
    key: &SecretKey,
    release: ReleaseId,
    order: Order,
    now: u64,
) -> Result<(VerifiedDirective, String), PublishError> {
    let expires_at = now + otamesh_core::directive::DEFAULT_LIFETIME;
    let directive = Directive { release, order, sequence: now, issued_at: now, expires_at };
    let verified = TrustRoot::single(key.public())
        .verify_directive(SignedDirective::sign(directive, key), now)
        .map_err(|source| PublishError::Verify { what: "directive", source })?;
    let path = store.put_directive(&verified)?;
    Ok((verified, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn describe() -> Describe<'static> {
        Describe {
            vendor: "acme",
            product: "gw",
            class: "gw",
            version: "1.0",
            sequence: 1,
            kind: UpdateKind::Firmware,
            created_at: 10_000,
            expires_at: None,
            rollout: RolloutPolicy::default(),
        }
    }

    #[test]
    fn publishes_chunks_then_manifest_and_counts_only_new_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        let key = SecretKey::from_seed([3; 32]);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let m = manifest(&data, describe()).unwrap();
        let first = publish(&store, &key, &data, m.clone(), 20_000).unwrap();
        assert_eq!(first.new_chunks, m.payload.chunks.len());
        assert_eq!(first.new_bytes, data.len() as u64);
        assert!(store.read_manifest(first.id()).is_ok());
        let mut again = m;
        again.sequence = 2;
        let second = publish(&store, &key, &data, again, 20_000).unwrap();
        assert_eq!((second.new_chunks, second.new_bytes), (0, 0), "the same bytes cost nothing");
    }

    #[test]
    fn bytes_that_do_not_match_the_manifest_are_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        let key = SecretKey::from_seed([3; 32]);
        let m = manifest(&[7u8; 1000], describe()).unwrap();
        let e = publish(&store, &key, &[8u8; 1000], m, 20_000).unwrap_err();
        assert!(matches!(e, PublishError::ChunksMismatch), "{e}");
        assert!(store.index().unwrap().releases.is_empty());
    }

    #[test]
    fn stamping_moves_created_at_back_until_accepted() {
        let mut m = manifest(&[1u8; 100], describe()).unwrap();
        let mut seen = Vec::new();
        assert!(stamp(&mut m, 100, |id| {
            seen.push(id);
            seen.len() == 3
        }));
        assert_eq!(m.created_at, 10_000 - 2);
        assert!(!stamp(&mut m, 5, |_| false));
    }
}
