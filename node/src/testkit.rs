//! Test support: releases built in memory and written to a store.

use otamesh_core::chunking::{ChunkerConfig, VerifiedChunk, chunk};
use otamesh_core::enrolment::{Enrolment, SignedEnrolment};
use otamesh_core::manifest::{FORMAT_VERSION, Manifest, Payload, UpdateKind};
use otamesh_core::rollout::RolloutPolicy;
use otamesh_core::{SecretKey, TrustRoot, VerifiedManifest};

use crate::store::Store;

/// The publisher key of test releases.
pub fn publisher() -> SecretKey {
    SecretKey::from_seed([1; 32])
}

/// A trust root of [`publisher`].
pub fn trust() -> TrustRoot {
    TrustRoot::single(publisher().public())
}

/// [`publisher`]'s enrolment of `device` at `site`, class `gw`.
pub fn enrol(device: &SecretKey, site: &str) -> SignedEnrolment {
    let e = Enrolment {
        device_key: device.public().to_bytes(),
        site: site.into(),
        class: "gw".into(),
        issued_at: 1,
    };
    SignedEnrolment::sign(e, &publisher())
}

/// Deterministic incompressible bytes.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// An unsigned manifest of `data` for class `gw`.
pub fn manifest(data: &[u8], sequence: u64, rollout: RolloutPolicy) -> Manifest {
    let chunks = chunk(data, ChunkerConfig::default()).expect("default chunker config is valid");
    Manifest {
        format: FORMAT_VERSION,
        vendor: "acme".into(),
        product: "gw".into(),
        class: "gw".into(),
        sequence,
        version: format!("1.{sequence}"),
        kind: UpdateKind::Firmware,
        payload: Payload { size: data.len() as u64, digest: *blake3::hash(data).as_bytes(), chunks },
        precursor: None,
        created_at: 1_000,
        expires_at: None,
        rollout,
    }
}

/// Writes the chunks of `data` to `store`.
pub fn put_chunks(store: &Store, data: &[u8]) {
    let mut off = 0;
    for c in chunk(data, ChunkerConfig::default()).expect("valid config") {
        let bytes = data[off..off + c.len as usize].to_vec();
        off += c.len as usize;
        store.put_chunk(&VerifiedChunk::new(c.id, bytes).expect("chunk of data")).expect("store writable");
    }
}

/// Signs and verifies `manifest` with [`publisher`].
pub fn sign(manifest: Manifest) -> VerifiedManifest {
    trust().verify_manifest(publisher().sign_manifest(manifest), 2_000).expect("test manifest verifies")
}
