use std::path::{Path, PathBuf};
use std::process::ExitCode;

use otamesh_core::enrolment::{Enrolment, SignedEnrolment};
use otamesh_core::metadata::Metadata;
use otamesh_core::{DeviceId, SecretKey};
use otamesh_node::datadir::{DataDir, Expected};
use otamesh_node::{clock, config};

use super::signing::{all_of, read_keys};

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
    let data = DataDir::open(data)?;
    let device = data.device_key()?;
    let enrolment = Enrolment {
        device_key: device.public().to_bytes(),
        site: site.into(),
        class: class.into(),
        issued_at: clock::now_ms(),
    };
    let mut signed = Metadata::Enrolment(SignedEnrolment { enrolment, signatures: Vec::new() });
    for key in keys {
        signed.cosign(key)?;
    }
    let Metadata::Enrolment(signed) = signed else { unreachable!("built as an enrolment just above") };
    let trust = all_of(keys);
    let expected = Expected { trust: &trust, key: &device, site, class };
    let path = data.save_enrolment(signed, expected)?;
    Ok((DeviceId::of_public_key(&device.public().to_bytes()), path))
}
