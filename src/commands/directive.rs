//! `otamesh directive`: sign a halt, resume or revoke and push it into the mesh through
//! running nodes (`--peer`), write it into an origin store where polling nodes find it
//! (`--store`), or both.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use otamesh_core::directive::{Directive, Order, SignedDirective};
use otamesh_core::{ReleaseId, TrustRoot};
use otamesh_node::announce;
use otamesh_node::store::Store;
use otamesh_node::wire::DIRECTIVES_TOPIC;
use otamesh_node::{clock, keys};

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("target").args(["peer", "store"]).required(true).multiple(true)))]
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
    /// Push it into the mesh through this node, with or without /p2p/<peer id>; repeatable.
    #[arg(long, value_name = "MULTIADDR")]
    peer: Vec<String>,
    /// Write it into this origin store, where polling nodes find it.
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,
    /// With --peer: seconds to wait for a node to take it.
    #[arg(long, value_name = "SECONDS", default_value_t = 15)]
    timeout: u64,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum OrderArg {
    Halt,
    Resume,
    Revoke,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // Checked before anything is written, so a typo in --peer leaves the store as it was.
    let peers = announce::parse_peers(&args.peer)?;
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
    if let Some(dir) = &args.store {
        let store = Store::open(dir).context("directive --store")?;
        let path = store.put_directive(&verified)?;
        println!("{}", store.root().join(path).display());
    }
    if !peers.is_empty() {
        let bytes = verified.signed().to_bytes();
        let n = announce::push_blocking(
            DIRECTIVES_TOPIC,
            vec![bytes],
            &peers,
            Duration::from_secs(args.timeout),
        )?;
        println!("pushed to {n} peer(s)");
    }
    Ok(ExitCode::SUCCESS)
}
