use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use otamesh_core::SecretKey;
use otamesh_node::keys;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Write PREFIX.key and PREFIX.pub; neither may exist yet.
    #[arg(long, value_name = "PREFIX")]
    out: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    let key = SecretKey::from_seed(seed);
    let (secret, public) = keys::write_keypair(&args.out, &key).context("keygen")?;
    println!("{}", key.public());
    eprintln!("wrote {} (secret, keep it safe) and {}", secret.display(), public.display());
    Ok(ExitCode::SUCCESS)
}
