//! The `otamesh` command line: clap dispatch only.

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "otamesh", version, about = "Peer-to-peer over-the-air updates for fleets of edge devices")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a device node: gossip releases, fetch chunks LAN-first, serve /status and /metrics.
    Node(otamesh_node::cli::NodeArgs),
    /// Push a signed manifest into the mesh through a running node.
    Announce(otamesh_node::cli::AnnounceArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Node(args) => otamesh_node::cli::run_node(args)?,
        Command::Announce(args) => otamesh_node::cli::run_announce(args)?,
    }
    Ok(())
}
