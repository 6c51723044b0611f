//! The node's data directory: lock, identity, local store and accepted manifests.
//!
//! ```text
//! DATA/
//!   LOCK                   held (flock) while a node runs on DATA
//!   identity.key           the device's libp2p ed25519 keypair (protobuf, mode 0600)
//!   enrolment              the publisher's enrolment of that key (`otamesh enroll`)
//!   store/                 a release store (same layout as an origin); a release is
//!                          listed in store/index.json once all its chunks are here
//!   releases/<id>.manifest every accepted manifest, fetching or complete
//!   roots/<version>.root   every root of trust adopted ([`crate::roots`])
//!   slots/                 the A/B slots ([`crate::slots`]); slots/hook.pgid names the
//!                          process group of a running hook ([`crate::hooks`])
//! ```

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use libp2p::PeerId;
use libp2p::identity::Keypair;
use otamesh_core::enrolment::{Mismatch, SignedEnrolment, VerifiedEnrolment};
use otamesh_core::manifest::SignedManifest;
use otamesh_core::{DeviceId, ReleaseId, SecretKey, TrustRoot, VerifiedManifest};

use crate::store::{Store, StoreError, write_atomic};

/// Why the data directory could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataDirError {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another process holds the data directory.
    #[error(
        "{path} is in use by another otamesh process (its LOCK is held): stop that node or pass another --data"
    )]
    Locked {
        /// The data directory.
        path: PathBuf,
    },
    /// `identity.key` is not a keypair this program wrote.
    #[error("{path}: not an otamesh node identity ({reason}); move it away to make a new identity")]
    Identity {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// `enrolment` is unreadable or does not vouch for this device as configured.
    #[error(
        "{path}: {reason}; enrol this device again: otamesh enroll --key PUBLISHER_KEY --data DIR --site SITE --class CLASS"
    )]
    Enrolment {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A hook left running by the previous run could not be stopped.
    #[error(transparent)]
    Hook(#[from] crate::hooks::ReapError),
}

/// What an enrolment must say to be this device's.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// Publisher keys and threshold.
    pub trust: &'a TrustRoot,
    /// The device's key.
    pub key: &'a SecretKey,
    /// Its configured site.
    pub site: &'a str,
    /// Its configured class.
    pub class: &'a str,
}

impl Expected<'_> {
    fn check(&self, signed: SignedEnrolment) -> Result<VerifiedEnrolment, String> {
        let verified =
            self.trust.verify_enrolment(signed).map_err(|e| format!("not signed by the trust root: {e}"))?;
        let e = verified.enrolment();
        let key = self.key.public().to_bytes();
        let configured = |enrolled: &str, flag: &str, value: &str| {
            format!("enrolled for {flag} {enrolled:?}, but --{flag} is {value:?}")
        };
        match e.mismatch(&key, self.site, self.class) {
            None => {}
            Some(Mismatch::DeviceKey) => {
                let this = DeviceId::of_public_key(&key);
                return Err(format!("enrols device {}, not this one ({this})", e.device()));
            }
            Some(Mismatch::Site) => return Err(configured(&e.site, "site", self.site)),
            Some(Mismatch::Class) => return Err(configured(&e.class, "class", self.class)),
        }
        Ok(verified)
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io { path: path.to_owned(), source }
}

/// A saved manifest file and what reading it gave.
pub type SavedManifest = (PathBuf, Result<SignedManifest, StoreError>);

/// An open, locked data directory.
#[derive(Debug)]
pub struct DataDir {
    root: PathBuf,
    store: Store,
    // Held for the lifetime of the node: the OS releases the lock when the process
    // exits, however it exits.
    _lock: File,
}

impl DataDir {
    /// Opens (creating if needed) and locks `root`; fails if another process holds it.
    pub fn open(root: &Path) -> Result<Self, DataDirError> {
        fs::create_dir_all(root).map_err(io(root))?;
        let lock_path = root.join("LOCK");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                return Err(DataDirError::Locked { path: root.to_owned() });
            }
            Err(e) => return Err(DataDirError::Io { path: lock_path, source: e.into() }),
        }
        let releases = root.join("releases");
        fs::create_dir_all(&releases).map_err(io(&releases))?;
        let store = Store::create(root.join("store"))?;
        Ok(Self { root: root.to_owned(), store, _lock: lock })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The local chunk store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Kills whatever hook the previous run of a node on this directory left running
    /// (see [`crate::hooks::reap_previous`]); call it before anything touches a slot.
    pub fn reap_previous_hook(&self) -> Result<Option<i32>, DataDirError> {
        Ok(crate::hooks::reap_previous(&self.root)?)
    }

    /// The device's keypair, created on first start.
    pub fn identity(&self) -> Result<Keypair, DataDirError> {
        let path = self.root.join("identity.key");
        match fs::read(&path) {
            Ok(bytes) => {
                let bad = |reason: String| DataDirError::Identity { path: path.clone(), reason };
                let key = Keypair::from_protobuf_encoding(&bytes).map_err(|e| bad(e.to_string()))?;
                if key.clone().try_into_ed25519().is_err() {
                    return Err(bad("not an ed25519 key".into()));
                }
                Ok(key)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Keypair::generate_ed25519();
                // Invariant: encoding a freshly generated ed25519 keypair cannot fail.
                let bytes = key.to_protobuf_encoding().expect("ed25519 keypairs encode");
                write_secret(&path, &bytes)?;
                Ok(key)
            }
            Err(source) => Err(DataDirError::Io { path, source }),
        }
    }

    /// The device's key: the identity as an otamesh key.
    pub fn device_key(&self) -> Result<SecretKey, DataDirError> {
        Ok(device_secret(&self.identity()?))
    }

    /// The enrolment, checked against `expected`; `None` when the device was never
    /// enrolled.
    pub fn enrolment(&self, expected: Expected<'_>) -> Result<Option<VerifiedEnrolment>, DataDirError> {
        let path = self.root.join("enrolment");
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(DataDirError::Io { path, source }),
        };
        SignedEnrolment::from_bytes(&bytes)
            .map_err(|e| format!("not an enrolment ({e})"))
            .and_then(|signed| expected.check(signed))
            .map(Some)
            .map_err(|reason| DataDirError::Enrolment { path, reason })
    }

    /// Writes the enrolment if it vouches for this device as `expected` says.
    pub fn save_enrolment(
        &self,
        signed: SignedEnrolment,
        expected: Expected<'_>,
    ) -> Result<PathBuf, DataDirError> {
        let path = self.root.join("enrolment");
        let verified = expected
            .check(signed)
            .map_err(|reason| DataDirError::Enrolment { path: path.clone(), reason })?;
        write_atomic(&path, &verified.signed().to_bytes())?;
        Ok(path)
    }

    /// Saves an accepted manifest so a restart knows the release.
    pub fn save_manifest(&self, manifest: &VerifiedManifest) -> Result<(), DataDirError> {
        let path = self.manifest_path(manifest.id());
        if path.is_file() {
            return Ok(());
        }
        Ok(write_atomic(&path, &manifest.signed().to_bytes())?)
    }

    /// Every saved manifest (not re-verified), with its file name for error messages.
    pub fn manifests(&self) -> Result<Vec<SavedManifest>, DataDirError> {
        let dir = self.root.join("releases");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io(&dir))? {
            let path = entry.map_err(io(&dir))?.path();
            if path.extension().is_some_and(|e| e == "manifest") {
                let m = crate::store::read_manifest_file(&path);
                out.push((path, m));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    fn manifest_path(&self, release: ReleaseId) -> PathBuf {
        self.root.join("releases").join(format!("{release}.manifest"))
    }
}

/// Signs with every publisher key in `keys` (co-signing, for a trust with a threshold)
/// the enrolment of the device whose data directory is `data` at `site` and `class`
/// (making its identity if it has none), and writes it there: what `otamesh enroll`
/// does. Returns the device id and the enrolment file.
pub fn enrol(
    keys: &[SecretKey],
    data: &Path,
    site: &str,
    class: &str,
    issued_at: u64,
) -> Result<(DeviceId, PathBuf), DataDirError> {
    use otamesh_core::enrolment::Enrolment;
    let data = DataDir::open(data)?;
    let device = data.device_key()?;
    let enrolment = Enrolment {
        device_key: device.public().to_bytes(),
        site: site.into(),
        class: class.into(),
        issued_at,
    };
    let mut signed = SignedEnrolment { enrolment, signatures: Vec::new() };
    for key in keys {
        signed.signatures.push(SignedEnrolment::sign(signed.enrolment.clone(), key).signatures.remove(0));
    }
    // Every key signed: a trust of all of them, at full threshold, must accept it.
    let trust = TrustRoot::new(keys.iter().map(SecretKey::public), keys.len())
        .map_err(|e| DataDirError::Enrolment { path: data.root().to_path_buf(), reason: e.to_string() })?;
    let expected = Expected { trust: &trust, key: &device, site, class };
    let path = data.save_enrolment(signed, expected)?;
    Ok((DeviceId::of_public_key(&device.public().to_bytes()), path))
}

fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), DataDirError> {
    let tmp = path.with_extension("key.tmp");
    let _ = fs::remove_file(&tmp);
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

/// The device's report-signing key: the same ed25519 key as its libp2p identity, so its
/// device id is the same on the mesh and in its reports.
pub fn device_secret(keypair: &Keypair) -> SecretKey {
    // Invariant: DataDir::identity only returns ed25519 keypairs.
    let ed = keypair.clone().try_into_ed25519().expect("identity is ed25519");
    let mut seed = [0u8; 32];
    seed.copy_from_slice(ed.secret().as_ref());
    SecretKey::from_seed(seed)
}

/// The device id of a libp2p keypair's owner: BLAKE3 over its ed25519 public key.
pub fn device_id(key: &libp2p::identity::PublicKey) -> Option<DeviceId> {
    let ed = key.clone().try_into_ed25519().ok()?;
    Some(DeviceId::of_public_key(&ed.to_bytes()))
}

/// The device id behind a peer id, when the peer id embeds an ed25519 key (as every
/// otamesh node's does).
pub fn peer_device(peer: &PeerId) -> Option<DeviceId> {
    let mh = peer.as_ref();
    // 0x00 is the identity multihash: the peer id *is* the encoded public key.
    if mh.code() != 0 {
        return None;
    }
    let key = libp2p::identity::PublicKey::try_decode_protobuf(mh.digest()).ok()?;
    device_id(&key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_open_fails_with_locked() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDir::open(dir.path()).unwrap();
        assert!(matches!(DataDir::open(dir.path()), Err(DataDirError::Locked { .. })));
        drop(first);
        DataDir::open(dir.path()).unwrap();
    }

    #[test]
    fn identity_persists_and_peer_ids_give_device_ids() {
        let dir = tempfile::tempdir().unwrap();
        let d = DataDir::open(dir.path()).unwrap();
        let a = d.identity().unwrap();
        let b = d.identity().unwrap();
        assert_eq!(a.public(), b.public());
        let peer = a.public().to_peer_id();
        assert_eq!(peer_device(&peer), device_id(&a.public()));
        assert!(peer_device(&peer).is_some());
    }

    #[test]
    fn a_garbage_identity_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let d = DataDir::open(dir.path()).unwrap();
        fs::write(dir.path().join("identity.key"), b"nope").unwrap();
        assert!(matches!(d.identity(), Err(DataDirError::Identity { .. })));
    }
}
