use std::path::PathBuf;
use std::process::ExitCode;

use otamesh_core::SignedManifest;
use otamesh_node::store::Store;
use otamesh_node::{clock, keys};

/// Exit code for a manifest or store that failed a check.
const INVALID: u8 = 1;
/// Exit code when the inputs could not even be read.
const USAGE: u8 = 2;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A trust file (TOML: threshold and keys) or a single .pub file.
    #[arg(long, value_name = "FILE")]
    trust: PathBuf,
    /// The manifest file (STORE/manifests/<release>.manifest).
    #[arg(long, value_name = "FILE")]
    manifest: PathBuf,
    /// Also check every chunk and the whole payload digest in this store.
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,
    /// Also require the manifest to be for this device class.
    #[arg(long, value_name = "NAME")]
    class: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let fail = |code: u8, msg: String| {
        eprintln!("{msg}");
        Ok(ExitCode::from(code))
    };
    let trust = match keys::read_trust(&args.trust) {
        Ok(t) => t,
        Err(e) => return fail(USAGE, format!("error: --trust {e}")),
    };
    let bytes = match std::fs::read(&args.manifest) {
        Ok(b) => b,
        Err(e) => return fail(USAGE, format!("error: --manifest {}: {e}", args.manifest.display())),
    };
    let m = args.manifest.display();
    let signed = match SignedManifest::from_bytes(&bytes) {
        Ok(s) => s,
        Err(e) => return fail(INVALID, format!("invalid: {m}: not a manifest ({e})")),
    };
    let verified = match trust.verify_manifest(signed, clock::now_ms()) {
        Ok(v) => v,
        Err(e) => return fail(INVALID, format!("invalid: {m}: {e}")),
    };
    let manifest = verified.manifest();
    if let Some(class) = &args.class
        && *class != manifest.class
    {
        return fail(INVALID, format!("invalid: {m}: for class {:?}, not {class:?}", manifest.class));
    }
    if let Some(dir) = &args.store {
        let store = match Store::open(dir) {
            Ok(s) => s,
            Err(e) => return fail(USAGE, format!("error: --store {e}")),
        };
        let mut whole = blake3::Hasher::new();
        for (index, c) in manifest.payload.chunks.iter().enumerate() {
            match store.read_chunk(c.id) {
                Ok(chunk) => {
                    whole.update(chunk.bytes());
                }
                Err(e) => return fail(INVALID, format!("invalid: chunk {index} of {m}: {e}")),
            }
        }
        if *whole.finalize().as_bytes() != manifest.payload.digest {
            return fail(INVALID, format!("invalid: {m}: assembled payload does not match its digest"));
        }
    }
    println!(
        "valid: release {} ({} {} sequence {}, {} chunks{})",
        verified.id(),
        manifest.class,
        manifest.version,
        manifest.sequence,
        manifest.payload.chunks.len(),
        if args.store.is_some() { ", all present and intact" } else { "" }
    );
    Ok(ExitCode::SUCCESS)
}
