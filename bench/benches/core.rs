//! Criterion benches for the hot paths of `otamesh-core`, each beside the bare crates it
//! wraps, measured in the same run so the ratio between them means something on a noisy
//! shared machine.
//!
//! **Goals:** chunk+hash throughput (target: at least 1.5 GiB/s on one core and at most
//! 20% over bare FastCDC + BLAKE3), manifest sign and verify (target: at least 20,000
//! verifications/s of a 1,000-chunk manifest), and the codec round trip.
//!
//! **Non-goals:** multi-core throughput (every bench here runs on one thread) and timing
//! targets as pass/fail checks; the figures are read by people, see `bench/README.md`.
//!
//! Run with `cargo bench -p otamesh-bench --bench core`.

use std::hint::black_box;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use ed25519_dalek::{Signer, SigningKey};
use otamesh_core::chunking::{ChunkRef, ChunkerConfig, chunk};
use otamesh_core::manifest::{FORMAT_VERSION, Payload};
use otamesh_core::rollout::RolloutPolicy;
use otamesh_core::trust::Domain;
use otamesh_core::{Manifest, Millis, SecretKey, SignedManifest, TrustRoot, UpdateKind};

/// 512 MiB: large enough that caches do not flatter the chunker.
const DATA_BYTES: usize = 512 << 20;
/// The chunk count of the manifest benches (the "1,000-chunk manifest").
const MANIFEST_CHUNKS: usize = 1_000;
/// Between the sample manifest's `created_at` and `expires_at`.
const NOW: Millis = 1_750_000_000_000;
/// The default chunker bounds, spelled out for the bare-crate baselines.
const MIN: u32 = 16 << 10;
const AVG: u32 = 64 << 10;
const MAX: u32 = 256 << 10;

criterion_group!(benches, chunk_hash, manifest_sign_verify, codec_round_trip);
criterion_main!(benches);

fn chunk_hash(c: &mut Criterion) {
    let data = data();
    let config = ChunkerConfig::default();
    assert_eq!((config.min, config.avg, config.max), (MIN, AVG, MAX), "baselines must match the defaults");
    // The baseline must do the same work as ours, or the ratio says nothing.
    let ours = chunk(data, config).expect("the default config is valid");
    assert_eq!(bare_chunk_hash(data).len(), ours.len());

    paired(
        "chunk_hash_512MiB: ours_chunk / bare_fastcdc_blake3",
        7,
        1,
        || chunk(data, config),
        || bare_chunk_hash(data),
    );

    let mut g = c.benchmark_group("chunk_hash_512MiB");
    // One iteration takes a few hundred milliseconds: ten flat samples are plenty.
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(6))
        .throughput(Throughput::Bytes(DATA_BYTES as u64));
    g.bench_function("bare_blake3_whole", |b| b.iter(|| blake3::hash(black_box(data))));
    g.bench_function("bare_fastcdc", |b| {
        b.iter(|| {
            fastcdc::v2020::FastCDC::new(black_box(data), MIN, AVG, MAX).map(|c| c.length).sum::<usize>()
        })
    });
    g.bench_function("bare_fastcdc_blake3", |b| b.iter(|| bare_chunk_hash(black_box(data))));
    g.bench_function("ours_chunk", |b| b.iter(|| chunk(black_box(data), config)));
    g.finish();
}

fn manifest_sign_verify(c: &mut Criterion) {
    let manifest = sample_manifest();
    let secret = SecretKey::from_seed([7; 32]);
    let root = TrustRoot::single(secret.public());
    let signed = secret.sign_manifest(manifest.clone());
    root.verify_manifest(signed.clone(), NOW).expect("the sample manifest verifies");
    let body = manifest.canonical_bytes();

    // Bare crates doing the same work: bincode encodes, BLAKE3 hashes the encoding with
    // the release-id prefix, ed25519-dalek signs or verifies the 32-byte digest behind
    // the manifest signature prefix.
    let bare = SigningKey::from_bytes(&[7; 32]);
    let public = bare.verifying_key();
    let bare_message = |m: &Manifest| {
        let encoded = bincode::serde::encode_to_vec(m, bare_config()).expect("plain data always encodes");
        let mut h = blake3::Hasher::new();
        h.update(b"otamesh/v1/release-id\0");
        h.update(&encoded);
        Domain::Manifest.message(h.finalize().as_bytes())
    };
    let message = bare_message(&manifest);
    let sig = bare.sign(&message);
    let bare_verify = |m: &Manifest| public.verify_strict(&bare_message(m), &sig);
    assert!(bare_verify(&manifest).is_ok(), "the bare baseline checks the same signature");
    // Format 1 signed the whole encoding: what ed25519 alone costs on it, for reference.
    let whole = Domain::Manifest.message(&body);
    let sig_whole = bare.sign(&whole);

    paired(
        "manifest: ours_verify_manifest / bare_encode_blake3_verify_strict",
        15,
        200,
        || root.verify_manifest(signed.clone(), NOW),
        || bare_verify(&manifest),
    );

    let mut g = c.benchmark_group(format!("manifest_{MANIFEST_CHUNKS}_chunks_{}B", body.len()));
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));
    g.bench_function("bare_encode_blake3_sign", |b| {
        b.iter(|| bare.sign(&bare_message(black_box(&manifest))))
    });
    g.bench_function("ours_sign_manifest", |b| {
        b.iter_batched(|| manifest.clone(), |m| secret.sign_manifest(m), BatchSize::SmallInput)
    });
    g.bench_function("bare_encode_blake3_verify_strict", |b| b.iter(|| bare_verify(black_box(&manifest))));
    // Clone in the setup: verify_manifest takes the manifest by value, and a driver
    // hands it the one it just decoded.
    g.bench_function("ours_verify_manifest", |b| {
        b.iter_batched(|| signed.clone(), |s| root.verify_manifest(s, NOW), BatchSize::SmallInput)
    });
    g.bench_function("format1_ed25519_verify_strict_whole_encoding", |b| {
        b.iter(|| public.verify_strict(black_box(&whole), &sig_whole))
    });
    // The parts of verify_manifest, to see where its time goes.
    g.bench_function("part_check", |b| b.iter(|| black_box(&manifest).check()));
    g.bench_function("part_canonical_bytes", |b| b.iter(|| black_box(&manifest).canonical_bytes()));
    g.bench_function("part_release_id", |b| b.iter(|| black_box(&manifest).release_id()));
    g.bench_function("part_clone_signed", |b| b.iter(|| black_box(&signed).clone()));
    g.finish();
}

fn codec_round_trip(c: &mut Criterion) {
    let secret = SecretKey::from_seed([7; 32]);
    let signed = secret.sign_manifest(sample_manifest());
    let bytes = signed.to_bytes();
    assert_eq!(SignedManifest::from_bytes(&bytes).expect("own encoding decodes"), signed);
    assert_eq!(bare_encode(&signed), bytes, "the baseline must use the same bincode config");

    paired(
        "codec: ours_round_trip / bare_bincode_round_trip",
        15,
        100,
        || SignedManifest::from_bytes(&signed.to_bytes()).expect("own encoding decodes"),
        || bare_round_trip(&signed),
    );

    let mut g = c.benchmark_group(format!("codec_signed_manifest_{MANIFEST_CHUNKS}_chunks_{}B", bytes.len()));
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));
    g.bench_function("bare_bincode_round_trip", |b| b.iter(|| bare_round_trip(black_box(&signed))));
    g.bench_function("bare_bincode_decode", |b| {
        b.iter(|| {
            let (value, _): (SignedManifest, usize) =
                bincode::serde::decode_from_slice(black_box(&bytes), bare_config())
                    .expect("own encoding decodes");
            value
        })
    });
    g.bench_function("ours_round_trip", |b| {
        b.iter(|| SignedManifest::from_bytes(&black_box(&signed).to_bytes()).expect("own encoding decodes"))
    });
    g.bench_function("ours_to_bytes", |b| b.iter(|| black_box(&signed).to_bytes()));
    g.bench_function("ours_from_bytes", |b| {
        b.iter(|| SignedManifest::from_bytes(black_box(&bytes)).expect("own encoding decodes"))
    });
    g.finish();
}

/// Times `ours` and `bare` in alternation, `rounds` times each (`iters` calls per
/// timing), and prints the median of the per-round ratios. Criterion runs one bench
/// after the other, so on a machine shared with builds a change in load between them
/// skews their ratio; alternating makes both see the same load.
fn paired<A, B>(
    label: &str,
    rounds: usize,
    iters: u32,
    mut ours: impl FnMut() -> A,
    mut bare: impl FnMut() -> B,
) {
    let time = |f: &mut dyn FnMut()| {
        let start = Instant::now();
        for _ in 0..iters {
            f();
        }
        start.elapsed().as_secs_f64() / f64::from(iters)
    };
    let mut ratios = Vec::with_capacity(rounds);
    for round in 0..rounds {
        // Swap the order every round so neither side always runs on a warmer cache.
        let (a, b) = if round % 2 == 0 {
            (time(&mut || drop(black_box(ours()))), time(&mut || drop(black_box(bare()))))
        } else {
            let b = time(&mut || drop(black_box(bare())));
            (time(&mut || drop(black_box(ours()))), b)
        };
        ratios.push(a / b);
    }
    ratios.sort_by(f64::total_cmp);
    let (lo, median, hi) = (ratios[0], ratios[rounds / 2], ratios[rounds - 1]);
    println!("paired {label}: median ratio {median:.3} (min {lo:.3}, max {hi:.3}, {rounds} rounds)");
}

/// The 512 MiB of pseudo-random bytes, made once per process.
fn data() -> &'static [u8] {
    static DATA: OnceLock<Vec<u8>> = OnceLock::new();
    DATA.get_or_init(|| {
        // xorshift64: deterministic, fast, and incompressible enough for FastCDC.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut data = vec![0u8; DATA_BYTES];
        for word in data.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        data
    })
}

/// FastCDC boundaries and a BLAKE3 digest per chunk, with no otamesh code in between.
fn bare_chunk_hash(data: &[u8]) -> Vec<([u8; 32], u32)> {
    fastcdc::v2020::FastCDC::new(data, MIN, AVG, MAX)
        .map(|c| (*blake3::hash(&data[c.offset..c.offset + c.length]).as_bytes(), c.length as u32))
        .collect()
}

/// A well-formed manifest whose chunk list is the first 1,000 real chunks of [`data`],
/// so ids and lengths (and so their encoded sizes) are those of a real release.
fn sample_manifest() -> Manifest {
    let data = data();
    let mut chunks: Vec<ChunkRef> =
        chunk(data, ChunkerConfig::default()).expect("the default config is valid");
    assert!(chunks.len() >= MANIFEST_CHUNKS, "512 MiB makes about 8,000 chunks");
    chunks.truncate(MANIFEST_CHUNKS);
    let size: u64 = chunks.iter().map(|c| u64::from(c.len)).sum();
    // Invariant: the chunks are a prefix of data, so their lengths sum to at most its length.
    let payload = &data[..size as usize];
    let manifest = Manifest {
        format: FORMAT_VERSION,
        vendor: "acme".into(),
        product: "edge-gateway".into(),
        class: "gw-arm64".into(),
        sequence: 42,
        version: "1.4.2".into(),
        kind: UpdateKind::Firmware,
        payload: Payload { size, digest: *blake3::hash(payload).as_bytes(), chunks },
        precursor: None,
        created_at: 1_700_000_000_000,
        expires_at: Some(1_800_000_000_000),
        rollout: RolloutPolicy::default(),
    };
    manifest.check().expect("the sample manifest is well formed");
    manifest
}

/// The codec's configuration, restated for the bare-bincode baseline.
fn bare_config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_little_endian()
        .with_variable_int_encoding()
        .with_limit::<{ otamesh_core::codec::MAX_MESSAGE_BYTES }>()
}

fn bare_encode(signed: &SignedManifest) -> Vec<u8> {
    bincode::serde::encode_to_vec(signed, bare_config()).expect("plain data always encodes")
}

fn bare_round_trip(signed: &SignedManifest) -> SignedManifest {
    let bytes = bare_encode(signed);
    let (value, _) = bincode::serde::decode_from_slice(&bytes, bare_config()).expect("own encoding decodes");
    value
}
