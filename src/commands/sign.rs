//! `otamesh sign --key KEY FILE`: adds one signature to a signed manifest, directive,
//! enrolment or root, in place, so that the holders of a threshold of keys can sign
//! the same file on separate machines. The file is replaced atomically (temporary file,
//! fsync, rename) and only after the new signature is made, so a refused or interrupted
//! run leaves it as it was.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use otamesh_core::metadata::Metadata;
use otamesh_node::keys;
use otamesh_node::store::write_atomic;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Your secret key (from `otamesh keygen`).
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// The signed file: a manifest, directive, enrolment or root.
    file: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let key = keys::read_secret_key(&args.key).context("sign --key")?;
    let path = args.file.display();
    let bytes = std::fs::read(&args.file).with_context(|| format!("cannot read {path}"))?;
    let mut metadata = Metadata::from_bytes(&bytes).map_err(|e| {
        anyhow::anyhow!(
            "{path}: {e}; sign only files written by `otamesh publish`, `directive --out`, `enroll` or `root new`"
        )
    })?;
    metadata.cosign(&key).with_context(|| format!("{path}"))?;
    write_atomic(&args.file, &metadata.to_bytes()).with_context(|| format!("cannot write {path}"))?;
    let signers: Vec<String> = metadata.signatures().iter().map(|s| s.key.to_string()).collect();
    println!("{}", key.public().key_id());
    eprintln!("signed {} {path}: now signed by {}", metadata.kind(), signers.join(", "));
    Ok(ExitCode::SUCCESS)
}
