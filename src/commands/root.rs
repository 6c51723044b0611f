//! `otamesh root new` and `otamesh root publish`: make a versioned root of trust and put
//! it into a release store, where nodes find and adopt it (docs/keys.md).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use otamesh_core::metadata::Metadata;
use otamesh_core::root::{ROOT_FORMAT, Root, SignedRoot, VerifiedRoot};
use otamesh_node::store::{Store, write_atomic};
use otamesh_node::{clock, keys};

use super::signing::{Lifetime, read_keys};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Write a new root of trust (unsigned unless --key is given); sign it with `otamesh sign`.
    New(NewArgs),
    /// Check a root against the store's newest and add it: STORE/roots/N.root and index.json.
    Publish(PublishArgs),
}

#[derive(Debug, clap::Args)]
struct NewArgs {
    /// Its version: 1 for the first root, then one more than the root it replaces.
    #[arg(long, value_name = "N")]
    version: u64,
    /// How many distinct keys must sign releases, directives, enrolments and the next root.
    #[arg(long, value_name = "T")]
    threshold: u32,
    /// A publisher public key (`.pub` from `otamesh keygen`); repeat for each key.
    #[arg(long = "pub", value_name = "FILE", required = true)]
    public: Vec<PathBuf>,
    /// Nodes refuse to adopt it after this long: 90s, 12h, 30d ...
    #[arg(long, value_name = "DURATION", default_value = "365d")]
    expires_in: Lifetime,
    /// Sign it at once with these secret keys (repeatable); others add theirs with `otamesh sign`.
    #[arg(long, value_name = "FILE")]
    key: Vec<PathBuf>,
    /// The root file to write; must not exist yet.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(Debug, clap::Args)]
struct PublishArgs {
    /// The release store (as for `otamesh publish --store`).
    #[arg(long, value_name = "DIR")]
    store: PathBuf,
    /// For the store's first root: the trust file, .pub or root the fleet's nodes start
    /// from, which must vouch for it. Without it a first root needs only its own keys.
    #[arg(long, value_name = "FILE")]
    trust: Option<PathBuf>,
    /// The signed root file.
    file: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::New(args) => new(args),
        Command::Publish(args) => publish(args),
    }
}

fn new(args: NewArgs) -> anyhow::Result<ExitCode> {
    if args.version == 0 {
        bail!("--version 0 is what a trust file means: the first root is --version 1");
    }
    let out = args.out.display();
    if args.out.exists() {
        bail!("{out} already exists: choose another --out or remove it first");
    }
    let mut public = Vec::with_capacity(args.public.len());
    for path in &args.public {
        public.push(keys::read_public_key(path).context("root new --pub")?.to_bytes());
    }
    let root = Root {
        format: ROOT_FORMAT,
        version: args.version,
        threshold: args.threshold,
        keys: public,
        expires_at: clock::now_ms().saturating_add(args.expires_in.0),
    };
    root.trust().context("root new")?;
    let mut metadata = Metadata::Root(SignedRoot { root, signatures: Vec::new() });
    for key in read_keys("root new", &args.key)? {
        metadata.cosign(&key)?;
    }
    write_atomic(&args.out, &metadata.to_bytes()).with_context(|| format!("cannot write {out}"))?;
    println!("{out}");
    eprintln!(
        "root version {} ({} of {} keys), {} signature(s): add more with `otamesh sign --key KEY {out}`",
        args.version,
        args.threshold,
        args.public.len(),
        metadata.signatures().len()
    );
    Ok(ExitCode::SUCCESS)
}

fn publish(args: PublishArgs) -> anyhow::Result<ExitCode> {
    let file = args.file.display();
    let bytes = std::fs::read(&args.file).with_context(|| format!("cannot read {file}"))?;
    let signed = SignedRoot::from_bytes(&bytes)
        .map_err(|e| anyhow::anyhow!("{file}: not a root file ({e}): make one with `otamesh root new`"))?;
    let store = Store::create(&args.store).context("root publish --store")?;
    let now = clock::now_ms();
    let newest = newest_root(&store, args.trust.as_deref())?;
    let verified = match newest {
        Some(current) => current.next(signed, now),
        None => VerifiedRoot::first(signed, now),
    }
    .with_context(|| format!("{file}"))?;
    let rel = store.put_root(&verified)?;
    println!("{}", store.root().join(rel).display());
    Ok(ExitCode::SUCCESS)
}

/// The newest root the store vouches for, walking its chain from the first (or from
/// `trust`); `None` for a store without roots and no `--trust`.
fn newest_root(store: &Store, trust: Option<&Path>) -> anyhow::Result<Option<VerifiedRoot>> {
    let mut current = match trust {
        Some(path) => Some(keys::read_anchor(path).context("root publish --trust")?),
        None => None,
    };
    for entry in store.index()?.roots {
        if current.as_ref().is_some_and(|c| entry.version <= c.version()) {
            continue;
        }
        let signed = store.read_root(entry.version)?;
        let path = store.root().join(&entry.path);
        current = Some(
            match current {
                // Roots already in the store were checked for expiry when they were added.
                Some(c) => c.resume(signed),
                None => VerifiedRoot::anchor(signed),
            }
            .with_context(|| format!("{}: the store's root chain is broken", path.display()))?,
        );
    }
    Ok(current)
}
