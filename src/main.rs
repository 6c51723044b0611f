//! `otamesh`: the command line. This file only parses arguments and dispatches; each
//! command lives in `commands/`. `sim`, `demo` and `bench` exist only with the `full`
//! feature (the default); a `node`-only build leaves them, the fleet harness and the
//! plots out (docs/benchmarks.md).

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Peer-to-peer over-the-air updates for fleets of edge devices.
#[derive(Debug, Parser)]
#[command(name = "otamesh", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate an ed25519 key pair: PREFIX.key (secret, mode 0600) and PREFIX.pub.
    Keygen(commands::keygen::Args),
    /// Chunk an artifact, sign its manifest and add both to a release store.
    Publish(commands::publish::Args),
    /// Check a manifest's signatures (and with --store, every chunk): exit 0 valid, 1 invalid.
    Verify(commands::verify::Args),
    /// Show what a manifest, directive, enrolment or root file says, who signed it and (--trust) whether that suffices.
    Inspect(commands::inspect::Args),
    /// Add your signature to a signed manifest, directive, enrolment or root file, in place.
    Sign(commands::sign::Args),
    /// Make (`root new`) and publish (`root publish`) a versioned root of trust that replaces keys.
    Root(commands::root::Args),
    /// Sign a halt, resume or revoke directive; push it to nodes (--peer), into a store (--store) and/or to a file (--out).
    Directive(commands::directive::Args),
    /// Enrol a device: sign its key, site and class so the fleet takes its reports.
    Enroll(commands::enroll::Args),
    /// Print a node's audit log; --verify proves it unmodified.
    Audit(commands::audit::Args),
    /// Run a device node: gossip releases, fetch chunks LAN-first, serve /status and /metrics.
    Node(otamesh_node::cli::NodeArgs),
    /// Push a signed manifest into the mesh through a running node.
    Announce(otamesh_node::cli::AnnounceArgs),
    /// Run a public bootstrap and relay node for sites behind NAT (logs and serves its --bootstrap addresses).
    Relay(otamesh_node::cli::RelayArgs),
    /// Serve a release store over HTTP: a static origin for nodes, until Ctrl-C.
    Serve(commands::serve::Args),
    /// Show a node's state, active release and known releases (its /status).
    Status(commands::status::Args),
    /// Show the fleet a node hears through signed reports, by site: behind, failed.
    Fleet(commands::fleet::Args),
    /// Show one release's rollout: devices per outcome and wave, failure reasons, timings.
    Report(commands::report::Args),
    /// Run a whole fleet on loopback: staged rollout, a bad release halted and revoked, a report.
    #[cfg(feature = "full")]
    Demo(commands::demo::Args),
    /// Simulate a rollout scenario (or `sim compare` several, or `sim sweep` seeds and grids):
    /// summary.json, timeseries.csv, plots.
    #[cfg(feature = "full")]
    Sim(otamesh_sim::cli::SimArgs),
    /// Run the benchmark suite: results.json (Bencher Metric Format), summary.md, plots; --baseline to compare.
    #[cfg(feature = "full")]
    Bench(commands::bench::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Keygen(args) => commands::keygen::run(args),
        Command::Publish(args) => commands::publish::run(args),
        Command::Verify(args) => commands::verify::run(args),
        Command::Inspect(args) => commands::inspect::run(args),
        Command::Sign(args) => commands::sign::run(args),
        Command::Root(args) => commands::root::run(args),
        Command::Directive(args) => commands::directive::run(args),
        Command::Enroll(args) => commands::enroll::run(args),
        Command::Audit(args) => commands::audit::run(args),
        Command::Node(args) => {
            otamesh_node::cli::run_node(args).map(|()| ExitCode::SUCCESS).map_err(Into::into)
        }
        Command::Announce(args) => {
            otamesh_node::cli::run_announce(args).map(|()| ExitCode::SUCCESS).map_err(Into::into)
        }
        Command::Relay(args) => {
            otamesh_node::cli::run_relay(args).map(|()| ExitCode::SUCCESS).map_err(Into::into)
        }
        Command::Serve(args) => commands::serve::run(args),
        Command::Status(args) => commands::status::run(args),
        Command::Fleet(args) => commands::fleet::run(args),
        Command::Report(args) => commands::report::run(args),
        #[cfg(feature = "full")]
        Command::Demo(args) => commands::demo::run(args),
        #[cfg(feature = "full")]
        Command::Sim(args) => otamesh_sim::cli::run(args).map(|()| ExitCode::SUCCESS).map_err(Into::into),
        #[cfg(feature = "full")]
        Command::Bench(args) => commands::bench::run(args),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
