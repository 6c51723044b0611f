//! `otamesh serve`: a static HTTP origin over a release store, until Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use otamesh_node::serve::{OriginServer, SERVED_PATH};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The release store directory to serve (written by `otamesh publish`).
    #[arg(long, value_name = "DIR")]
    store: PathBuf,
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let origin = OriginServer::start(&args.store, args.listen).await?;
        // The URL alone on the first line, for scripts; the rest on stderr.
        println!("{}", origin.url());
        eprintln!(
            "serving {} at {} (counters at {}{SERVED_PATH}); Ctrl-C stops",
            args.store.display(),
            origin.url(),
            origin.url()
        );
        shutdown_signal().await;
        let s = origin.served();
        eprintln!(
            "served {} bytes ({} of chunks) in {} requests, {} not found",
            s.bytes(),
            s.chunk_bytes(),
            s.requests(),
            s.not_found()
        );
        Ok(ExitCode::SUCCESS)
    })
}

/// Resolves on the first SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    // Without a handler (the OS refused one) only the process's death stops us.
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}
