use std::path::{Path, PathBuf};
use std::process::ExitCode;

use otamesh_core::{DeviceId, SecretKey};
use otamesh_node::datadir;
use otamesh_node::{clock, config};

use super::signing::read_keys;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A publisher secret key (from `otamesh keygen`); repeat it for a threshold, or
    /// add signatures later with `otamesh sign DIR/enrolment`.
    #[arg(long, value_name = "FILE", required = true)]
    key: Vec<PathBuf>,
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
    let keys = read_keys("enroll", &args.key)?;
    config::check_name("site", &args.site)?;
    config::check_name("class", &args.class)?;
    let (id, path) = enrol(&keys, &args.data, &args.site, &args.class)?;
    println!("{id}");
    eprintln!("enrolled device {id} for site {} and class {}: {}", args.site, args.class, path.display());
    Ok(ExitCode::SUCCESS)
}

/// Signs the enrolment of the device whose data directory is `data` (making its
/// identity if it has none) with every key and writes it there; returns the device id
/// and the file.
pub fn enrol(
    keys: &[SecretKey],
    data: &Path,
    site: &str,
    class: &str,
) -> anyhow::Result<(DeviceId, PathBuf)> {
    Ok(datadir::enrol(keys, data, site, class, clock::now_ms())?)
}
