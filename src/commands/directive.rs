//! `otamesh directive`: sign a halt, resume or revoke and push it into the mesh through
//! running nodes (`--peer`), write it into an origin store where polling nodes find it
//! (`--store`), or both.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use otamesh_core::ReleaseId;
use otamesh_core::directive::{Directive, Order, SignedDirective};
use otamesh_core::metadata::Metadata;
use otamesh_node::store::{Store, write_atomic};
use otamesh_node::wire::DIRECTIVES_TOPIC;
use otamesh_node::{announce, clock};

use super::signing::{Lifetime, all_of, read_keys};

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("target").args(["peer", "store", "out"]).required(true).multiple(true)))]
pub struct Args {
    /// halt (stop new installs), resume (lift a halt) or revoke (roll back to --to).
    #[arg(value_enum)]
    order: OrderArg,
    /// A publisher secret key (from `otamesh keygen`); repeat it to sign with several
    /// keys, or add signatures later with `otamesh sign`.
    #[arg(long, value_name = "FILE", required = true)]
    key: Vec<PathBuf>,
    /// The release the directive is about.
    #[arg(long, value_name = "ID")]
    release: ReleaseId,
    /// For revoke: the earlier release devices go back to.
    #[arg(long, value_name = "ID", required_if_eq("order", "revoke"))]
    to: Option<ReleaseId>,
    /// Directive sequence (default: now in Unix milliseconds, so later directives win).
    #[arg(long, value_name = "N")]
    sequence: Option<u64>,
    /// Devices refuse the directive after this long: 90s, 12h, 30d ...
    #[arg(long, value_name = "DURATION", default_value = "7d")]
    expires_in: Lifetime,
    /// Write the signed directive to this file too (to co-sign it with `otamesh sign`
    /// before pushing); with only --out, nothing is pushed or stored.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
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
    let keys = read_keys("directive", &args.key)?;
    let order = match (args.order, args.to) {
        (OrderArg::Halt, _) => Order::Halt,
        (OrderArg::Resume, _) => Order::Resume,
        (OrderArg::Revoke, Some(to)) => Order::Revoke { to },
        (OrderArg::Revoke, None) => anyhow::bail!("revoke needs --to ID: the release devices go back to"),
    };
    let now = clock::now_ms();
    let directive = Directive {
        release: args.release,
        order,
        sequence: args.sequence.unwrap_or(now),
        issued_at: now,
        expires_at: now.saturating_add(args.expires_in.0),
    };
    let mut signed = Metadata::Directive(SignedDirective { directive, signatures: Vec::new() });
    for key in &keys {
        signed.cosign(key)?;
    }
    let Metadata::Directive(signed) = signed else { unreachable!("built as a directive just above") };
    let verified =
        all_of(&keys).verify_directive(signed, now).context("self-check of the signed directive")?;
    if let Some(out) = &args.out {
        write_atomic(out, &verified.signed().to_bytes()).context("directive --out")?;
        println!("{}", out.display());
    }
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
