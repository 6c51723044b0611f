use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use otamesh_core::directive::{Directive, Order, SignedDirective};
use otamesh_core::{ReleaseId, TrustRoot};
use otamesh_node::store::Store;
use otamesh_node::{clock, keys};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// halt (stop new installs), resume (lift a halt) or revoke (roll back to --to).
    #[arg(value_enum)]
    order: OrderArg,
    /// The publisher's secret key (from `otamesh keygen`).
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// The release the directive is about.
    #[arg(long, value_name = "ID")]
    release: ReleaseId,
    /// For revoke: the earlier release devices go back to.
    #[arg(long, value_name = "ID", required_if_eq("order", "revoke"))]
    to: Option<ReleaseId>,
    /// Directive sequence (default: now in Unix milliseconds, so later directives win).
    #[arg(long, value_name = "N")]
    sequence: Option<u64>,
    /// Write it into this origin store, where polling nodes find it.
    #[arg(long, value_name = "DIR")]
    store: PathBuf,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum OrderArg {
    Halt,
    Resume,
    Revoke,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let key = keys::read_secret_key(&args.key).context("directive --key")?;
    let order = match (args.order, args.to) {
        (OrderArg::Halt, _) => Order::Halt,
        (OrderArg::Resume, _) => Order::Resume,
        (OrderArg::Revoke, Some(to)) => Order::Revoke { to },
        (OrderArg::Revoke, None) => anyhow::bail!("revoke needs --to ID: the release devices go back to"),
    };
    let now = clock::now_ms();
    let directive =
        Directive { release: args.release, order, sequence: args.sequence.unwrap_or(now), issued_at: now };
    let verified = TrustRoot::single(key.public())
        .verify_directive(SignedDirective::sign(directive, &key))
        .context("self-check of the signed directive")?;
    let store = Store::open(&args.store).context("directive --store")?;
    let path = store.put_directive(&verified)?;
    println!("{}", store.root().join(path).display());
    Ok(ExitCode::SUCCESS)
}
