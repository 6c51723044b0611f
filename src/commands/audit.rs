use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use otamesh_node::db::{self, Db};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The node's data directory (holds state.db).
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Check the hash chain; exit 1 naming the first bad row if it is broken.
    #[arg(long)]
    verify: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let path = args.data.join("state.db");
    if !path.is_file() {
        anyhow::bail!("{} does not exist: pass the --data directory of a node", path.display());
    }
    let rows = Db::open_read_only(&path).and_then(|db| db.audit_rows()).context("audit")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if !args.verify {
        for r in &rows {
            let release = r.release.as_deref().map(|id| &id[..12]).unwrap_or("-");
            println!("{:>5}  {}  {:<10}  {:<12}  {}", r.seq, r.at, r.event, release, r.detail);
        }
    }
    if args.verify {
        if let Err(e) = db::verify_chain(&rows) {
            eprintln!("audit log {} is tampered: {e}", path.display());
            return Ok(ExitCode::FAILURE);
        }
        if let Some(lost) = db::history_lost(&rows) {
            eprintln!(
                "audit log {} is incomplete: the history before row {} was lost ({}); the {} rows since are intact",
                path.display(),
                lost.seq,
                lost.detail,
                rows.len()
            );
            return Ok(ExitCode::FAILURE);
        }
        eprintln!("audit log intact: {} rows, chain verified", rows.len());
    }
    Ok(ExitCode::SUCCESS)
}
