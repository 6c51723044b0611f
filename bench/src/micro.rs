//! The core micro-benchmarks, timed in this process: chunking and hashing a firmware
//! image, signing and verifying a manifest of 1,000 chunks, and the codec's round trip
//! of that signed manifest. (The criterion benches in `benches/core.rs` measure the same
//! paths against the bare crates, for studies; these are the CI figures.)
//!
//! Each run times a batch (the whole image, or a fixed number of operations); the
//! figure is the median over runs, the bounds the slowest and fastest run.

use std::hint::black_box;
use std::time::Instant;

use otamesh_core::chunking::{ChunkRef, ChunkerConfig, chunk};
use otamesh_core::manifest::{FORMAT_VERSION, Manifest, Payload, SignedManifest};
use otamesh_core::rollout::RolloutPolicy;
use otamesh_core::{ChunkId, SecretKey, TrustRoot, UpdateKind};

use crate::bmf::Measure;
use crate::suite::{Options, Outcome, Progress, Size, noise};

/// Chunks in the manifest that is signed, verified and encoded.
const MANIFEST_CHUNKS: usize = 1000;

/// (image MiB, runs, operations per run).
fn shape(size: Size) -> (usize, usize, usize) {
    match size {
        Size::Full => (128, 5, 1000),
        Size::Quick => (32, 3, 300),
        Size::Tiny => (4, 1, 5),
    }
}

pub(crate) fn run(
    options: &Options,
    outcome: &mut Outcome,
    progress: &mut dyn Progress,
) -> Result<(), String> {
    let (mib, runs, ops) = shape(options.size);
    let data = noise(3, mib << 20);
    let mut chunking = Vec::new();
    let mut chunks = Vec::new();
    for run in 0..runs {
        progress.step("core", &format!("chunk+hash {mib} MiB, run {}/{runs}", run + 1));
        let t0 = Instant::now();
        chunks = chunk(black_box(&data), ChunkerConfig::default()).map_err(|e| e.to_string())?;
        chunking.push(mib as f64 / t0.elapsed().as_secs_f64());
    }
    // Always a manifest of 1,000 chunks, so the figure means the same at every size: real
    // chunks first, then (for small images) more entries with the real lengths.
    let real = chunks.len().max(1);
    while chunks.len() < MANIFEST_CHUNKS {
        let i = chunks.len();
        let len = chunks.get(i % real).map_or(65_536, |c| c.len);
        chunks.push(ChunkRef { id: ChunkId::of(&(i as u64).to_le_bytes()), len });
    }
    chunks.truncate(MANIFEST_CHUNKS);
    let size: u64 = chunks.iter().map(|c| u64::from(c.len)).sum();
    let manifest = Manifest {
        format: FORMAT_VERSION,
        vendor: "acme".into(),
        product: "gateway".into(),
        class: "gw".into(),
        sequence: 1,
        version: "1.0.0".into(),
        kind: UpdateKind::Firmware,
        payload: Payload { size, digest: *blake3::hash(&data).as_bytes(), chunks },
        precursor: None,
        created_at: 1_000,
        expires_at: None,
        rollout: RolloutPolicy::default(),
    };
    let key = SecretKey::from_seed([5; 32]);
    let trust = TrustRoot::single(key.public());
    let signed = key.sign_manifest(manifest.clone());
    let bytes = signed.to_bytes();
    let per_second = |f: &mut dyn FnMut()| {
        let t0 = Instant::now();
        for _ in 0..ops {
            f();
        }
        ops as f64 / t0.elapsed().as_secs_f64()
    };
    let (mut sign, mut verify, mut codec) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        progress.step("core", &format!("manifest sign, verify, codec: run {}/{runs}", run + 1));
        sign.push(per_second(&mut || {
            black_box(key.sign_manifest(black_box(manifest.clone())));
        }));
        let mut failed = false;
        verify.push(per_second(&mut || {
            failed |= trust.verify_manifest(black_box(signed.clone()), 2_000).is_err();
        }));
        if failed {
            return Err("the benchmark manifest does not verify".into());
        }
        codec.push(per_second(&mut || {
            let decoded = SignedManifest::from_bytes(black_box(&bytes));
            black_box(decoded.map(|m| m.to_bytes()).ok());
        }));
    }
    outcome.results.record("core/chunk_and_hash", Measure::Throughput, &chunking);
    outcome.results.record("core/manifest_sign", Measure::OpsPerSecond, &sign);
    outcome.results.record("core/manifest_verify", Measure::OpsPerSecond, &verify);
    outcome.results.record("core/codec_round_trip", Measure::OpsPerSecond, &codec);
    outcome.notes.push(format!(
        "core: chunk+hash of {mib} MiB, manifest of 1,000 chunks ({} B signed), {ops} operations per run, {runs} run(s), one thread",
        bytes.len()
    ));
    Ok(())
}
