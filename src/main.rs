//! The otamesh command line: dispatch only.

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "otamesh",
    version,
    about = "Peer-to-peer OTA updates for edge fleets, and a rollout simulator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Simulate a rollout scenario (or compare several): summary.json, timeseries.csv, plots.
    Sim(otamesh_sim::cli::SimArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Sim(args) => otamesh_sim::cli::run(args)?,
    }
    Ok(())
}
