//! Key files and trust files.
//!
//! `otamesh keygen --out PREFIX` writes `PREFIX.key` (the 32-byte secret seed as hex,
//! mode 0600) and `PREFIX.pub` (the public key as hex). A trust file is TOML:
//!
//! ```toml
//! threshold = 2
//! keys = ["<64 hex digits>", "<64 hex digits>"]
//! ```
//!
//! Wherever a trust file is taken, a single `.pub` file also works (threshold 1), and
//! so does a signed root file (`otamesh root new`, see docs/keys.md).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use otamesh_core::root::{RootError, SignedRoot, VerifiedRoot};
use otamesh_core::trust::{KeyError, TrustRootError};
use otamesh_core::{PublicKey, SecretKey, TrustRoot};
use serde::Deserialize;

/// Why a key or trust file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file does not hold a key.
    #[error("{path}: {source}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: KeyError,
    },
    /// The file is neither a `.pub` key nor a valid trust file.
    #[error(
        "{path}: not a public key, trust or root file ({reason}); expected TOML `threshold = N` and `keys = [\"hex\", ...]`, a .pub file from `otamesh keygen` or a root from `otamesh root new`"
    )]
    Trust {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The threshold cannot be met by the keys listed.
    #[error("{path}: {source}")]
    Threshold {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: TrustRootError,
    },
    /// A root file that is not signed by a threshold of its own keys, or malformed.
    #[error("{path}: {error}")]
    Root {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        error: RootError,
    },
    /// A public key where a secret key belongs, or the other way round.
    #[error("{path} is a {found} key file: pass the {wanted} file from `otamesh keygen` ({suffix})")]
    WrongKind {
        /// The file.
        path: PathBuf,
        /// `public` or `secret`.
        found: &'static str,
        /// `secret` or `public`.
        wanted: &'static str,
        /// The file name ending expected.
        suffix: &'static str,
    },
    /// Refusing to overwrite an existing key.
    #[error("{path} already exists: choose another --out prefix or remove it first")]
    Exists {
        /// The file.
        path: PathBuf,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Io { path: path.to_owned(), source }
}

/// Writes `PREFIX.key` (mode 0600) and `PREFIX.pub`; refuses to overwrite either.
pub fn write_keypair(prefix: &Path, key: &SecretKey) -> Result<(PathBuf, PathBuf), KeyFileError> {
    let secret = with_suffix(prefix, "key");
    let public = with_suffix(prefix, "pub");
    for p in [&secret, &public] {
        if p.exists() {
            return Err(KeyFileError::Exists { path: p.clone() });
        }
    }
    write_new(&secret, &format!("{}\n", hex::encode(key.to_seed())), true)?;
    write_new(&public, &format!("{}\n", key.public()), false)?;
    Ok((secret, public))
}

fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(".");
    s.push(suffix);
    PathBuf::from(s)
}

fn write_new(path: &Path, text: &str, secret: bool) -> Result<(), KeyFileError> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let _ = secret;
    let mut f = opts.open(path).map_err(io(path))?;
    f.write_all(text.as_bytes()).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// Reads a secret key file written by `otamesh keygen`. A `.pub` file is refused: both
/// are 64 hex digits, and signing with a public key's bytes as a seed would make a
/// valid-looking signature by a key nobody trusts.
pub fn read_secret_key(path: &Path) -> Result<SecretKey, KeyFileError> {
    if path.extension().is_some_and(|e| e == "pub") {
        return Err(KeyFileError::WrongKind {
            path: path.to_owned(),
            found: "public",
            wanted: "secret",
            suffix: ".key",
        });
    }
    let text = fs::read_to_string(path).map_err(io(path))?;
    let mut seed = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut seed)
        .map_err(|_| KeyFileError::Key { path: path.to_owned(), source: KeyError::NotHex })?;
    Ok(SecretKey::from_seed(seed))
}

/// Reads a public key file written by `otamesh keygen`; a `.key` file is refused.
pub fn read_public_key(path: &Path) -> Result<PublicKey, KeyFileError> {
    if path.extension().is_some_and(|e| e == "key") {
        return Err(KeyFileError::WrongKind {
            path: path.to_owned(),
            found: "secret",
            wanted: "public",
            suffix: ".pub",
        });
    }
    let text = fs::read_to_string(path).map_err(io(path))?;
    text.trim().parse().map_err(|source| KeyFileError::Key { path: path.to_owned(), source })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustFile {
    threshold: usize,
    keys: Vec<String>,
}

/// Reads a trust file, a single `.pub` file as a root of one key, or a signed root file:
/// the keys and threshold to verify against.
pub fn read_trust(path: &Path) -> Result<TrustRoot, KeyFileError> {
    Ok(read_anchor(path)?.trust().clone())
}

/// Reads what `--trust` names as the start of the root chain: a trust file or `.pub`
/// (version 0) or a root file signed by a threshold of its own keys (its version).
pub fn read_anchor(path: &Path) -> Result<VerifiedRoot, KeyFileError> {
    let bytes = fs::read(path).map_err(io(path))?;
    if let Ok(signed) = SignedRoot::from_bytes(&bytes) {
        return VerifiedRoot::anchor(signed)
            .map_err(|error| KeyFileError::Root { path: path.to_owned(), error });
    }
    let text = String::from_utf8(bytes).map_err(|_| KeyFileError::Trust {
        path: path.to_owned(),
        reason: "binary, but not a root file".into(),
    })?;
    read_trust_text(path, &text).map(VerifiedRoot::unversioned)
}

fn read_trust_text(path: &Path, text: &str) -> Result<TrustRoot, KeyFileError> {
    if let Ok(key) = text.trim().parse::<PublicKey>() {
        return Ok(TrustRoot::single(key));
    }
    let trust_err = |reason: String| KeyFileError::Trust { path: path.to_owned(), reason };
    let file: TrustFile = toml::from_str(text).map_err(|e| trust_err(e.message().to_owned()))?;
    let keys = file
        .keys
        .iter()
        .map(|k| k.parse::<PublicKey>().map_err(|e| trust_err(format!("key {k:?}: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    TrustRoot::new(keys, file.threshold)
        .map_err(|source| KeyFileError::Threshold { path: path.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keypair_round_trip_and_no_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("pub1");
        let key = SecretKey::from_seed([3; 32]);
        let (s, p) = write_keypair(&prefix, &key).unwrap();
        assert_eq!(read_secret_key(&s).unwrap().public(), key.public());
        assert_eq!(read_public_key(&p).unwrap(), key.public());
        assert!(matches!(write_keypair(&prefix, &key), Err(KeyFileError::Exists { .. })));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&s).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }

    #[test]
    fn trust_file_and_pub_file() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (SecretKey::from_seed([1; 32]), SecretKey::from_seed([2; 32]));
        let t = dir.path().join("trust.toml");
        fs::write(&t, format!("threshold = 2\nkeys = [\"{}\", \"{}\"]\n", a.public(), b.public())).unwrap();
        assert_eq!(read_trust(&t).unwrap().threshold(), 2);
        let p = dir.path().join("a.pub");
        fs::write(&p, format!("{}\n", a.public())).unwrap();
        assert_eq!(read_trust(&p).unwrap().threshold(), 1);
        fs::write(&t, "threshold = 3\nkeys = []\n").unwrap();
        assert!(matches!(read_trust(&t), Err(KeyFileError::Threshold { .. })));
        fs::write(&t, "garbage").unwrap();
        assert!(matches!(read_trust(&t), Err(KeyFileError::Trust { .. })));
    }
}
