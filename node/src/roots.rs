//! The root-of-trust chain of a node: walked at start, followed on the origin.
//!
//! ```text
//! DATA/roots/<version>.root   every root this node adopted, each the successor of the one before
//! ```
//!
//! At start, [`Roots::open`] takes what `--trust` names (a trust file or `.pub`,
//! version 0, or a root file) and walks the roots saved in the data directory from
//! there, so a restarted node verifies against the newest root it ever adopted, never
//! an older one. [`follow`] polls the origin's `index.json` for newer roots and adopts
//! each one that [`VerifiedRoot::next`] accepts (saving it before anything is verified
//! against it); a refused root is logged and counted in `otamesh_roots_refused_total`.
//!
//! **Non-goals:** roots over gossip (the origin is the only source for now); deciding
//! anything about roots here: the rule is core's [`VerifiedRoot`].

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use otamesh_core::TrustRoot;
use otamesh_core::root::{RootError, SignedRoot, VerifiedRoot};
use tokio::sync::{mpsc, watch};

use crate::clock::now_ms;
use crate::keys::{self, KeyFileError};
use crate::metrics::Metrics;
use crate::origin::Origin;
use crate::store::{StoreError, write_atomic};

/// Why the chain could not be walked or a root not adopted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RootsError {
    /// The `--trust` file is unusable.
    #[error(transparent)]
    Anchor(#[from] KeyFileError),
    /// A root saved in the data directory does not follow the one before it.
    #[error(
        "{path}: {error}; it does not follow --trust and the roots before it: if the fleet's trust was re-provisioned, move {dir} aside"
    )]
    Saved {
        /// The saved root.
        path: PathBuf,
        /// The roots directory.
        dir: PathBuf,
        /// Why it does not follow.
        error: RootError,
    },
    /// A file in the roots directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A root could not be saved.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An offered root does not decode.
    #[error("{what}: not a root file ({reason})")]
    Malformed {
        /// Where it came from.
        what: String,
        /// The decoder's complaint.
        reason: String,
    },
    /// An offered root was refused by the chain rule.
    #[error("{what}: {error}")]
    Refused {
        /// Where it came from.
        what: String,
        /// The rule it broke.
        error: RootError,
    },
}

impl RootsError {
    /// The `reason` label of `otamesh_roots_refused_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Refused { error: RootError::NotNext { .. }, .. } => "not_next",
            Self::Refused { error: RootError::Expired { .. }, .. } => "expired",
            Self::Refused {
                error: RootError::OldKeys { .. } | RootError::NewKeys { .. } | RootError::Signatures { .. },
                ..
            } => "signatures",
            Self::Refused { .. } | Self::Malformed { .. } => "malformed",
            _ => "unreadable",
        }
    }
}

/// The newest root a node trusts, and where its adopted roots are saved.
#[derive(Debug)]
pub struct Roots {
    dir: PathBuf,
    current: VerifiedRoot,
}

impl Roots {
    /// Starts the chain at `trust` and walks the roots saved in `data/roots`.
    pub fn open(trust: &Path, data: &Path) -> Result<Self, RootsError> {
        let dir = data.join("roots");
        std::fs::create_dir_all(&dir).map_err(|source| RootsError::Io { path: dir.clone(), source })?;
        let mut current = keys::read_anchor(trust)?;
        loop {
            let path = dir.join(format!("{}.root", current.version() + 1));
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(source) => return Err(RootsError::Io { path, source }),
            };
            let saved = |error| RootsError::Saved { path: path.clone(), dir: dir.clone(), error };
            let signed = SignedRoot::from_bytes(&bytes).map_err(|e| RootsError::Malformed {
                what: format!("{} (move {} aside to start from --trust)", path.display(), dir.display()),
                reason: e.to_string(),
            })?;
            // Saved roots were checked for expiry when adopted; a root expiring since
            // must not send the node back to an older one.
            current = current.resume(signed).map_err(saved)?;
        }
        Ok(Self { dir, current })
    }

    /// The keys and threshold to verify manifests, directives and enrolments against.
    pub fn trust(&self) -> &TrustRoot {
        self.current.trust()
    }

    /// The version in use (0: a trust file).
    pub fn version(&self) -> u64 {
        self.current.version()
    }

    /// Adopts `bytes` (from `what`) if it is the next root and valid at `now`; saves it
    /// before returning the new trust.
    pub fn adopt(&mut self, what: &str, bytes: &[u8], now: u64) -> Result<&TrustRoot, RootsError> {
        let signed = SignedRoot::from_bytes(bytes)
            .map_err(|e| RootsError::Malformed { what: what.to_owned(), reason: e.to_string() })?;
        let next = self
            .current
            .next(signed, now)
            .map_err(|error| RootsError::Refused { what: what.to_owned(), error })?;
        if let Some(signed) = next.signed() {
            write_atomic(&self.dir.join(format!("{}.root", next.version())), &signed.to_bytes())?;
        }
        self.current = next;
        Ok(self.current.trust())
    }
}

/// What a root heard on gossip is worth, before any signature is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gossiped {
    /// Not a root in its canonical encoding (a stranger's bytes, a re-encoded copy):
    /// rejected, and its sender scored down.
    Malformed,
    /// Not newer than the root in force: ignored.
    NotNewer,
    /// Newer: handed to [`follow`], which adopts it only if it is the next version,
    /// validly signed; passed on only once adopted.
    Newer,
}

/// Judges `bytes` heard on gossip while root `current` is in force. Cheap, so a flood
/// costs a decode each; signatures are checked only for newer roots, off the event loop.
pub fn judge_gossip(bytes: &[u8], current: u64) -> Gossiped {
    match SignedRoot::from_bytes(bytes) {
        Err(_) => Gossiped::Malformed,
        Ok(root) if root.root.version <= current => Gossiped::NotNewer,
        Ok(_) => Gossiped::Newer,
    }
}

/// Refused roots remembered (by content) so each is counted once, at most.
const MAX_REFUSED_REMEMBERED: usize = 1024;

/// A root of trust the node adopted, for the event loop: the trust to verify against
/// from now on, and the signed root to pass on to peers (none for the start anchor).
#[derive(Debug, Clone)]
pub struct Adopted {
    /// The keys and threshold now in force.
    pub trust: TrustRoot,
    /// Its version.
    pub version: u64,
    /// The signed root, to gossip.
    pub signed: Option<Vec<u8>>,
}

/// Follows the chain of roots from two sources: `origin` (polled every `every`, when
/// there is one) and `heard` (roots peers gossiped, handed over by the event loop).
/// Each next root is adopted in order and saved before the receiver sees it; refusals
/// are counted once per content. Runs until the receiver is dropped.
pub fn follow(
    mut roots: Roots,
    origin: Option<Origin>,
    metrics: Metrics,
    every: Duration,
    mut heard: mpsc::Receiver<Vec<u8>>,
) -> watch::Receiver<Adopted> {
    let first = Adopted { trust: roots.trust().clone(), version: roots.version(), signed: None };
    let (tx, rx) = watch::channel(first);
    metrics.root_version.set(roots.version() as i64);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Refusals already counted, by content, so a refused file is counted once
        // however often it is polled or gossiped (and again if it is re-signed).
        let mut refused: BTreeSet<[u8; 32]> = BTreeSet::new();
        let mut offer = |what: &str, bytes: &[u8], roots: &mut Roots| -> bool {
            match roots.adopt(what, bytes, now_ms()) {
                Ok(_) => {
                    tracing::info!(version = roots.version(), from = what, "adopted a new root of trust");
                    metrics.root_version.set(roots.version() as i64);
                    let adopted = Adopted {
                        trust: roots.trust().clone(),
                        version: roots.version(),
                        signed: Some(bytes.to_vec()),
                    };
                    let _ = tx.send(adopted);
                    true
                }
                Err(e) => {
                    // A flood of distinct forgeries is counted each, not remembered.
                    let new = refused.len() >= MAX_REFUSED_REMEMBERED
                        || refused.insert(*blake3::hash(bytes).as_bytes());
                    if new {
                        tracing::warn!(error = %e, from = what, "refused a root of trust");
                        metrics.roots_refused.get_or_create(&vec![("reason", e.label())]).inc();
                    }
                    false
                }
            }
        };
        loop {
            tokio::select! {
                _ = tick.tick(), if origin.is_some() => {}
                bytes = heard.recv() => match bytes {
                    Some(bytes) => {
                        offer("gossip", &bytes, &mut roots);
                        continue;
                    }
                    // The node is gone.
                    None => return,
                },
            }
            let Some(origin) = &origin else { continue };
            let index = match origin.index().await {
                Ok(i) => i,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot poll the origin for roots");
                    continue;
                }
            };
            let mut newer: Vec<_> = index.roots.into_iter().filter(|e| e.version > roots.version()).collect();
            newer.sort_by_key(|e| e.version);
            for entry in newer {
                let bytes = match origin.root(&entry.path).await {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot fetch a root the origin lists");
                        break;
                    }
                };
                if !offer(&entry.path, &bytes, &mut roots) {
                    break;
                }
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use otamesh_core::SecretKey;
    use otamesh_core::root::{ROOT_FORMAT, Root};
    use otamesh_core::trust::Domain;

    const NOW: u64 = 1_750_000_000_000;

    fn key(n: u8) -> SecretKey {
        SecretKey::from_seed([n; 32])
    }

    fn root(version: u64, ids: &[u8], by: &[u8]) -> Vec<u8> {
        let root = Root {
            format: ROOT_FORMAT,
            version,
            threshold: 2,
            keys: ids.iter().map(|&i| key(i).public().to_bytes()).collect(),
            expires_at: NOW + 86_400_000,
        };
        let body = root.canonical_bytes();
        SignedRoot { signatures: by.iter().map(|&i| key(i).sign(Domain::Root, &body)).collect(), root }
            .to_bytes()
    }

    #[test]
    fn adopted_roots_are_walked_again_at_start_and_refusals_leave_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let trust = dir.path().join("v1.root");
        std::fs::write(&trust, root(1, &[1, 2, 3], &[1, 2])).unwrap();
        let data = dir.path().join("data");
        let mut roots = Roots::open(&trust, &data).unwrap();
        assert_eq!(roots.version(), 1);
        // v3 before v2: a gap.
        let err = roots.adopt("3.root", &root(3, &[2, 3, 4], &[2, 3, 4]), NOW).unwrap_err();
        assert_eq!(err.label(), "not_next");
        // v2 replaces A (1) by D (4): 2 of v1 and 2 of v2.
        roots.adopt("2.root", &root(2, &[2, 3, 4], &[2, 3, 4]), NOW).unwrap();
        assert!(roots.trust().keys().any(|k| *k == key(4).public()));
        // v3 signed by one key only.
        let err = roots.adopt("3.root", &root(3, &[2, 3, 4], &[4]), NOW).unwrap_err();
        assert_eq!(err.label(), "signatures");
        assert_eq!(roots.version(), 2);
        drop(roots);
        // A restart with the same --trust lands on v2, long after v2 expired.
        let again = Roots::open(&trust, &data).unwrap();
        assert_eq!(again.version(), 2);
        assert!(!again.trust().keys().any(|k| *k == key(1).public()), "A stays removed");
    }

    #[test]
    fn gossiped_roots_are_judged_before_any_signature_is_checked() {
        let v2 = root(2, &[2, 3, 4], &[2, 3, 4]);
        // A stranger's bytes, and a genuine root re-encoded (the format field as a
        // longer varint: same root, same signatures, other bytes).
        assert_eq!(judge_gossip(b"not a root", 1), Gossiped::Malformed);
        let mut re_encoded = v2.clone();
        assert!(re_encoded[0] < 251, "a one-byte varint to widen");
        let first = re_encoded[0];
        re_encoded.splice(0..1, [251, first, 0]);
        assert_eq!(judge_gossip(&re_encoded, 1), Gossiped::Malformed);
        // The root in force, or an older one, heard again: ignored.
        assert_eq!(judge_gossip(&v2, 2), Gossiped::NotNewer);
        assert_eq!(judge_gossip(&root(1, &[1, 2, 3], &[1, 2]), 2), Gossiped::NotNewer);
        // A newer root goes on to be verified, even one a liar signed alone: the chain
        // rules refuse it there (see the test above), and it is never passed on.
        assert_eq!(judge_gossip(&v2, 1), Gossiped::Newer);
        assert_eq!(judge_gossip(&root(2, &[2, 3, 4], &[4]), 1), Gossiped::Newer);
    }

    #[test]
    fn a_saved_root_that_does_not_follow_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let trust = dir.path().join("a.pub");
        std::fs::write(&trust, format!("{}\n", key(9).public())).unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("roots")).unwrap();
        std::fs::write(data.join("roots/1.root"), root(1, &[1, 2, 3], &[1, 2])).unwrap();
        let err = Roots::open(&trust, &data).unwrap_err();
        assert!(matches!(err, RootsError::Saved { .. }), "{err}");
        assert!(err.to_string().contains("1.root"), "{err}");
    }
}
