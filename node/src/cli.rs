//! The `otamesh node` and `otamesh announce` commands, for the binary's clap dispatch.
//!
//! ```ignore
//! Command::Node(args) => otamesh_node::cli::run_node(args)?,
//! Command::Announce(args) => otamesh_node::cli::run_announce(args)?,
//! ```

pub use crate::announce::{AnnounceArgs, AnnounceError};
pub use crate::config::NodeArgs;
pub use crate::node::NodeError;
pub use crate::relay::{RelayArgs, RelayError};

/// Runs `otamesh relay` until SIGINT or SIGTERM.
pub fn run_relay(args: RelayArgs) -> Result<(), RelayError> {
    init_logging();
    crate::relay::run_blocking(args)
}

/// Runs `otamesh node` until SIGINT or SIGTERM; logs to stderr (`RUST_LOG` filters,
/// default `info`).
pub fn run_node(args: NodeArgs) -> Result<(), NodeError> {
    init_logging();
    let config = args.resolve()?;
    crate::node::run_blocking(config)
}

/// Runs `otamesh announce`; prints the release id once a node took the manifest.
pub fn run_announce(args: AnnounceArgs) -> Result<(), AnnounceError> {
    init_logging();
    crate::announce::run_blocking(args)
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,libp2p_gossipsub=warn,libp2p_mdns=warn")
    });
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
