use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use otamesh_core::{DeviceId, SecretKey};
use otamesh_node::datadir;
use otamesh_node::{clock, config, keys};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The publisher's secret key (from `otamesh keygen`).
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// The device's data directory, as given to `otamesh node --data`; its identity is
    /// made here if it has none yet.
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// The site the device belongs to (its `otamesh node --site`).
    #[arg(long)]
    site: String,
    /// The device's class (its `otamesh node --class`).
    #[arg(long)]
    class: String,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let key = keys::read_secret_key(&args.key).context("enroll --key")?;
    config::check_name("site", &args.site)?;
    config::check_name("class", &args.class)?;
    let (id, path) = enrol(&key, &args.data, &args.site, &args.class)?;
    println!("{id}");
    eprintln!("enrolled device {id} for site {} and class {}: {}", args.site, args.class, path.display());
    Ok(ExitCode::SUCCESS)
}

/// Signs the enrolment of the device whose data directory is `data` (making its
/// identity if it has none) and writes it there; returns the device id and the file.
pub fn enrol(key: &SecretKey, data: &Path, site: &str, class: &str) -> anyhow::Result<(DeviceId, PathBuf)> {
    Ok(datadir::enrol(key, data, site, class, clock::now_ms())?)
}
