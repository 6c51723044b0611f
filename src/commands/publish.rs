use std::fs;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use otamesh_core::chunking::{ChunkerConfig, VerifiedChunk, chunk};
use otamesh_core::manifest::{FORMAT_VERSION, Manifest, Payload};
use otamesh_core::rollout::RolloutPolicy;
use otamesh_core::{SignedManifest, UpdateKind};
use otamesh_node::clock;
use otamesh_node::store::{Store, StoreError};

use super::signing::{Lifetime, all_of, read_keys};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A publisher secret key (from `otamesh keygen`); repeat it to sign with several
    /// keys at once, or add signatures later with `otamesh sign`.
    #[arg(long, value_name = "FILE", required = true)]
    key: Vec<PathBuf>,
    /// The file to release (firmware image, package, configuration ...).
    #[arg(long, value_name = "FILE")]
    artifact: PathBuf,
    /// The device class that may install it; nodes of other classes ignore it.
    #[arg(long, value_name = "NAME")]
    class: String,
    /// Human version, e.g. 1.4.2.
    #[arg(long, value_name = "V")]
    version: String,
    /// Monotonic sequence number: devices never install a sequence at or below theirs.
    #[arg(long, value_name = "N")]
    sequence: u64,
    /// firmware, security, feature, config or emergency.
    #[arg(long, value_name = "KIND")]
    kind: UpdateKind,
    /// Rollout policy (TOML: waves, window, gate, ...); without it every device goes at once.
    #[arg(long, value_name = "FILE.toml")]
    rollout: Option<PathBuf>,
    /// The release store directory (created if missing); serve it with any static web server.
    #[arg(long, value_name = "DIR")]
    store: PathBuf,
    /// Vendor name carried in the manifest.
    #[arg(long, default_value = "otamesh")]
    vendor: String,
    /// Product name carried in the manifest (default: the class).
    #[arg(long)]
    product: Option<String>,
    /// For a delta release: the installed sequence it assumes.
    #[arg(long, value_name = "N")]
    precursor: Option<u64>,
    /// Devices refuse the manifest after this long (freeze-attack defence): 90s, 12h,
    /// 30d ... [default: 365d].
    #[arg(long, value_name = "DURATION", conflicts_with = "expires_days")]
    expires_in: Option<Lifetime>,
    /// The same in days (older spelling of --expires-in).
    #[arg(long, value_name = "DAYS", hide = true)]
    expires_days: Option<u64>,
    /// Average chunk size in KiB (min is a quarter, max four times).
    #[arg(long, value_name = "KIB", default_value_t = 64)]
    chunk_avg_kib: u32,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // Every input is checked before the store is touched, so bad input leaves it as it was.
    let keys = read_keys("publish", &args.key)?;
    let rollout = match &args.rollout {
        Some(path) => read_rollout(path)?,
        None => RolloutPolicy::default(),
    };
    let lifetime = match (args.expires_in, args.expires_days) {
        (Some(Lifetime(ms)), _) => ms,
        (None, Some(0)) => bail!("--expires-days 0 would publish an already expired manifest: use 1 or more"),
        (None, Some(days)) => days.saturating_mul(86_400_000),
        (None, None) => 365 * 86_400_000,
    };
    let avg = args.chunk_avg_kib.saturating_mul(1024);
    let config = ChunkerConfig { min: avg / 4, avg, max: avg.saturating_mul(4) };
    config.validate().context("--chunk-avg-kib")?;
    let data = fs::read(&args.artifact)
        .with_context(|| format!("cannot read artifact {}", args.artifact.display()))?;
    let chunks = chunk(&data, config).context("chunking")?;
    let now = clock::now_ms();
    let manifest = Manifest {
        format: FORMAT_VERSION,
        vendor: args.vendor,
        product: args.product.unwrap_or_else(|| args.class.clone()),
        class: args.class,
        sequence: args.sequence,
        version: args.version,
        kind: args.kind,
        payload: Payload { size: data.len() as u64, digest: *blake3::hash(&data).as_bytes(), chunks },
        precursor: args.precursor,
        created_at: now,
        expires_at: Some(now.saturating_add(lifetime)),
        rollout,
    };
    manifest.check().context("manifest")?;
    let signatures = keys.iter().map(|k| k.manifest_signature(&manifest)).collect();
    // Verify what we signed, exactly as a device will.
    let verified = all_of(&keys)
        .verify_manifest(SignedManifest { manifest, signatures }, now)
        .context("self-check of the signed manifest")?;
    let store = Store::create(&args.store).context("publish --store")?;
    if let Some(e) = store
        .index()?
        .releases
        .iter()
        .find(|e| e.class == verified.manifest().class && e.sequence == verified.manifest().sequence)
    {
        return Err(StoreError::SequenceTaken {
            class: e.class.clone(),
            sequence: e.sequence,
            existing: e.release_id,
        }
        .into());
    }

    let (mut new_chunks, mut new_bytes, mut offset) = (0usize, 0u64, 0usize);
    let payload = &verified.manifest().payload;
    for c in &payload.chunks {
        let bytes = data[offset..offset + c.len as usize].to_vec();
        offset += c.len as usize;
        // Invariant: the chunk list was computed from these very bytes just above.
        let chunk = VerifiedChunk::new(c.id, bytes).expect("chunk bytes match the ids just computed");
        if store.put_chunk(&chunk)? {
            new_chunks += 1;
            new_bytes += u64::from(c.len);
        }
    }
    store.put_manifest(&verified)?;

    let total = payload.chunks.len();
    let pct = |part: f64, whole: f64| if whole == 0.0 { 0.0 } else { 100.0 * part / whole };
    println!("{}", verified.id());
    println!(
        "chunks: {total} ({new_chunks} new, {:.1}% already in the store)",
        pct((total - new_chunks) as f64, total as f64)
    );
    println!("bytes: {} ({new_bytes} new)", payload.size);
    println!("manifest: {}", store.root().join(Store::manifest_rel_path(verified.id())).display());
    Ok(ExitCode::SUCCESS)
}

fn read_rollout(path: &std::path::Path) -> anyhow::Result<RolloutPolicy> {
    let text = fs::read_to_string(path).with_context(|| format!("cannot read rollout {}", path.display()))?;
    let policy: RolloutPolicy = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.to_string().replace('\n', " ")))?;
    policy.validate().with_context(|| format!("{}", path.display()))?;
    Ok(policy)
}
