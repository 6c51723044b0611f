//! The content-addressed release store.
//!
//! ```text
//! STORE/
//!   chunks/ab/abcdef…        one file per chunk, named by its BLAKE3 id, fanned out
//!                            by the first hex byte
//!   manifests/<release>.manifest   signed manifests, canonical encoding
//!   directives/<release>-<sequence>.directive   signed halt / resume / revoke
//!   roots/<version>.root     signed roots of trust, each vouched for by the one before
//!   index.json               the releases, directives and roots in the store, for pollers
//! ```
//!
//! Any static web server over this directory is an origin; a node's own local store
//! uses the same layout. Every file is written to a temporary name, fsynced, renamed
//! into place and its directory fsynced, so a crash leaves either the old state or the
//! new one, never a torn file. Chunks go in before the manifest that names them and the
//! manifest before the index, so the index never points at something missing. Only
//! [`VerifiedChunk`]s and [`VerifiedManifest`]s can be written.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use otamesh_core::chunking::VerifiedChunk;
use otamesh_core::directive::{Order, VerifiedDirective};
use otamesh_core::manifest::SignedManifest;
use otamesh_core::root::{SignedRoot, VerifiedRoot};
use otamesh_core::{ChunkId, Millis, ReleaseId, VerifiedManifest};
use serde::{Deserialize, Serialize};

/// The index file's name at the store root.
pub const INDEX_FILE: &str = "index.json";

/// A release store directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// What the index says about one release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// The release id, hex.
    pub release_id: ReleaseId,
    /// Device class.
    pub class: String,
    /// Monotonic sequence.
    pub sequence: u64,
    /// Human version.
    pub version: String,
    /// Update kind.
    pub kind: String,
    /// Payload size in bytes.
    pub size: u64,
    /// Number of chunks.
    pub chunks: usize,
    /// When it was made.
    pub created_at: Millis,
    /// The manifest's path relative to the store root.
    pub manifest: String,
}

/// What the index says about one directive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectiveEntry {
    /// The release it is about.
    pub release_id: ReleaseId,
    /// Its sequence.
    pub sequence: u64,
    /// `halt`, `resume` or `revoke`.
    pub order: String,
    /// The directive file's path relative to the store root.
    pub path: String,
}

/// What the index says about one root of trust.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootEntry {
    /// The root's version.
    pub version: u64,
    /// The root file's path relative to the store root.
    pub path: String,
}

/// The store's `index.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    /// Index format version.
    pub format: u16,
    /// Releases by class, then sequence.
    pub releases: Vec<IndexEntry>,
    /// Signed directives, by release then sequence.
    #[serde(default)]
    pub directives: Vec<DirectiveEntry>,
    /// Signed roots of trust, by version.
    #[serde(default)]
    pub roots: Vec<RootEntry>,
    /// Bootstrap nodes of the fleet mesh (`/ip4/.../tcp/4001/p2p/<id>`), which nodes
    /// join without a `--bootstrap` flag. Left out of the file when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bootstrap: Vec<String>,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The directory is not a store.
    #[error(
        "{path} is not a release store (no chunks/ or manifests/): pass the directory `otamesh publish --store` wrote"
    )]
    NotAStore {
        /// The directory.
        path: PathBuf,
    },
    /// A chunk the manifest names is not in the store.
    #[error("chunk {id} is missing from the store ({path})")]
    MissingChunk {
        /// The chunk.
        id: ChunkId,
        /// Where it should be.
        path: PathBuf,
    },
    /// A chunk file's bytes do not hash to its name.
    #[error("chunk {id} is corrupt: {path} does not hash to its id")]
    CorruptChunk {
        /// The chunk.
        id: ChunkId,
        /// The file.
        path: PathBuf,
    },
    /// A file that should hold a manifest or the index does not parse.
    #[error("{path}: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The store already has another release of this class and sequence.
    #[error(
        "the store already has release {existing} for class {class:?} at sequence {sequence}: publish with a higher --sequence"
    )]
    SequenceTaken {
        /// The class.
        class: String,
        /// The sequence.
        sequence: u64,
        /// The release already there.
        existing: ReleaseId,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_owned(), source }
}

impl Store {
    /// Opens a store, creating its directories if needed.
    pub fn create(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let store = Self { root: root.into() };
        for dir in [store.root.join("chunks"), store.root.join("manifests")] {
            fs::create_dir_all(&dir).map_err(io_at(&dir))?;
        }
        Ok(store)
    }

    /// Opens an existing store.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let store = Self { root: root.into() };
        if !store.root.join("chunks").is_dir() || !store.root.join("manifests").is_dir() {
            return Err(StoreError::NotAStore { path: store.root });
        }
        Ok(store)
    }

    /// The store directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where chunk `id` lives, relative to the root: `chunks/ab/abcdef…`.
    pub fn chunk_rel_path(id: ChunkId) -> String {
        let hex = id.to_hex();
        format!("chunks/{}/{hex}", &hex[..2])
    }

    /// Where chunk `id` lives.
    pub fn chunk_path(&self, id: ChunkId) -> PathBuf {
        self.root.join(Self::chunk_rel_path(id))
    }

    /// Whether the store has a file for chunk `id` (not re-verified).
    pub fn has_chunk(&self, id: ChunkId) -> bool {
        self.chunk_path(id).is_file()
    }

    /// Writes a verified chunk; returns false when it was already there.
    pub fn put_chunk(&self, chunk: &VerifiedChunk) -> Result<bool, StoreError> {
        let path = self.chunk_path(chunk.id());
        if fs::metadata(&path).is_ok_and(|m| m.len() == chunk.bytes().len() as u64) {
            return Ok(false);
        }
        // Invariant: chunk_path always has a parent (chunks/ab).
        let dir = path.parent().expect("chunk path has a parent");
        fs::create_dir_all(dir).map_err(io_at(dir))?;
        write_atomic(&path, chunk.bytes())?;
        Ok(true)
    }

    /// Writes a batch of verified chunks with one flush for the whole batch instead of
    /// two per chunk; returns how many were new. Each new chunk goes to a temporary
    /// file; then the file data of all of them is made durable at once, they are
    /// renamed into place, and the renames are made durable at once. Only then does it
    /// return: a caller may acknowledge the chunks as stored only after `Ok`. After an
    /// error, chunks may or may not be in place (each whole or absent, never torn);
    /// nothing is acknowledged.
    ///
    /// On Linux the two flushes are `syncfs` of the store's filesystem (one journal
    /// commit each, however many chunks); elsewhere each temporary file and then each
    /// distinct directory is fsynced once.
    pub fn put_chunks(&self, chunks: &[VerifiedChunk]) -> Result<usize, StoreError> {
        let mut pending: Vec<(PathBuf, PathBuf)> = Vec::new();
        let result = self.write_batch(chunks, &mut pending);
        if result.is_err() {
            for (tmp, _) in &pending {
                let _ = fs::remove_file(tmp);
            }
        }
        result
    }

    fn write_batch(
        &self,
        chunks: &[VerifiedChunk],
        pending: &mut Vec<(PathBuf, PathBuf)>,
    ) -> Result<usize, StoreError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let mut files = Vec::new();
        for chunk in chunks {
            let path = self.chunk_path(chunk.id());
            let present = fs::metadata(&path).is_ok_and(|m| m.len() == chunk.bytes().len() as u64);
            if present || pending.iter().any(|(_, p)| *p == path) {
                continue;
            }
            // Invariant: chunk_path always has a parent (chunks/ab).
            let dir = path.parent().expect("chunk path has a parent");
            fs::create_dir_all(dir).map_err(io_at(dir))?;
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let tmp = dir.join(format!(
                ".{name}.tmp.{}.{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            let mut f = fs::File::create(&tmp).map_err(io_at(&tmp))?;
            pending.push((tmp.clone(), path));
            f.write_all(chunk.bytes()).map_err(io_at(&tmp))?;
            files.push(f);
        }
        let Some((first_tmp, _)) = pending.first().cloned() else { return Ok(0) };
        flush_files(&files, &first_tmp, pending)?;
        let mut dirs: Vec<&Path> = Vec::new();
        for (tmp, path) in pending.iter() {
            fs::rename(tmp, path).map_err(io_at(path))?;
            if let Some(dir) = path.parent().filter(|d| !dirs.contains(d)) {
                dirs.push(dir);
            }
        }
        let renamed = pending.len();
        flush_dirs(&self.root, &dirs)?;
        pending.clear();
        Ok(renamed)
    }

    /// Reads chunk `id` and checks its bytes.
    pub fn read_chunk(&self, id: ChunkId) -> Result<VerifiedChunk, StoreError> {
        let path = self.chunk_path(id);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::MissingChunk { id, path });
            }
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        VerifiedChunk::new(id, bytes).map_err(|_| StoreError::CorruptChunk { id, path })
    }

    /// Deletes chunk `id` if present (e.g. found corrupt).
    pub fn remove_chunk(&self, id: ChunkId) -> Result<(), StoreError> {
        let path = self.chunk_path(id);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StoreError::Io { path, source: e }),
            _ => Ok(()),
        }
    }

    /// Where the manifest of `release` lives, relative to the root.
    pub fn manifest_rel_path(release: ReleaseId) -> String {
        format!("manifests/{release}.manifest")
    }

    /// Writes a verified manifest and lists it in the index. Its chunks should be in
    /// the store first. Refuses a second release with the same class and sequence.
    pub fn put_manifest(&self, manifest: &VerifiedManifest) -> Result<(), StoreError> {
        let m = manifest.manifest();
        let mut index = self.index()?;
        if let Some(e) = index.releases.iter().find(|e| e.class == m.class && e.sequence == m.sequence) {
            if e.release_id == manifest.id() {
                return Ok(());
            }
            return Err(StoreError::SequenceTaken {
                class: m.class.clone(),
                sequence: m.sequence,
                existing: e.release_id,
            });
        }
        let rel = Self::manifest_rel_path(manifest.id());
        write_atomic(&self.root.join(&rel), &manifest.signed().to_bytes())?;
        index.format = 1;
        index.releases.push(IndexEntry {
            release_id: manifest.id(),
            class: m.class.clone(),
            sequence: m.sequence,
            version: m.version.clone(),
            kind: m.kind.to_string(),
            size: m.payload.size,
            chunks: m.payload.chunks.len(),
            created_at: m.created_at,
            manifest: rel,
        });
        index.releases.sort_by(|a, b| (&a.class, a.sequence).cmp(&(&b.class, b.sequence)));
        self.write_index(&index)
    }

    fn write_index(&self, index: &Index) -> Result<(), StoreError> {
        // Invariant: the index is plain strings and integers, always serializable.
        let json = serde_json::to_vec_pretty(index).expect("index serializes");
        write_atomic(&self.root.join(INDEX_FILE), &json)
    }

    /// Lists the fleet mesh's bootstrap nodes in the index (replacing any listed before),
    /// so nodes polling this origin join the mesh without a `--bootstrap` flag.
    pub fn set_bootstrap(&self, addrs: &[String]) -> Result<(), StoreError> {
        let mut index = self.index()?;
        index.bootstrap = addrs.to_vec();
        self.write_index(&index)
    }

    /// Writes a verified directive and lists it in the index, so polling nodes find it.
    pub fn put_directive(&self, directive: &VerifiedDirective) -> Result<String, StoreError> {
        let d = directive.directive();
        let rel = format!("directives/{}-{}.directive", d.release, d.sequence);
        let dir = self.root.join("directives");
        fs::create_dir_all(&dir).map_err(io_at(&dir))?;
        write_atomic(&self.root.join(&rel), &directive.signed().to_bytes())?;
        let mut index = self.index()?;
        index.directives.retain(|e| !(e.release_id == d.release && e.sequence == d.sequence));
        let order = match d.order {
            Order::Halt => "halt",
            Order::Resume => "resume",
            Order::Revoke { .. } => "revoke",
        };
        index.directives.push(DirectiveEntry {
            release_id: d.release,
            sequence: d.sequence,
            order: order.to_owned(),
            path: rel.clone(),
        });
        index.directives.sort_by_key(|e| (e.release_id, e.sequence));
        self.write_index(&index)?;
        Ok(rel)
    }

    /// Where root `version` lives, relative to the root: `roots/<version>.root`.
    pub fn root_rel_path(version: u64) -> String {
        format!("roots/{version}.root")
    }

    /// Writes a root of trust and lists it in the index. The caller checked it follows
    /// the store's newest root ([`VerifiedRoot::next`]); a trust file (version 0) has no
    /// file to write and is refused.
    pub fn put_root(&self, root: &VerifiedRoot) -> Result<String, StoreError> {
        let Some(signed) = root.signed() else {
            return Err(StoreError::Malformed {
                path: self.root.join("roots"),
                reason: "a trust file is not a root: make one with `otamesh root new`".into(),
            });
        };
        let rel = Self::root_rel_path(root.version());
        let dir = self.root.join("roots");
        fs::create_dir_all(&dir).map_err(io_at(&dir))?;
        write_atomic(&self.root.join(&rel), &signed.to_bytes())?;
        let mut index = self.index()?;
        index.roots.retain(|e| e.version != root.version());
        index.roots.push(RootEntry { version: root.version(), path: rel.clone() });
        index.roots.sort_by_key(|e| e.version);
        self.write_index(&index)?;
        Ok(rel)
    }

    /// Reads root `version` (not verified).
    pub fn read_root(&self, version: u64) -> Result<SignedRoot, StoreError> {
        let path = self.root.join(Self::root_rel_path(version));
        let bytes = fs::read(&path).map_err(io_at(&path))?;
        SignedRoot::from_bytes(&bytes)
            .map_err(|e| StoreError::Malformed { path, reason: format!("not a root: {e}") })
    }

    /// Reads the manifest of `release` (not verified).
    pub fn read_manifest(&self, release: ReleaseId) -> Result<SignedManifest, StoreError> {
        read_manifest_file(&self.root.join(Self::manifest_rel_path(release)))
    }

    /// The index; empty when the store has none yet.
    pub fn index(&self) -> Result<Index, StoreError> {
        let path = self.root.join(INDEX_FILE);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::Malformed { path, reason: format!("not a store index: {e}") }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Index::default()),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }
}

/// Reads and decodes a manifest file (not verified).
pub fn read_manifest_file(path: &Path) -> Result<SignedManifest, StoreError> {
    let bytes = fs::read(path).map_err(io_at(path))?;
    SignedManifest::from_bytes(&bytes)
        .map_err(|e| StoreError::Malformed { path: path.to_owned(), reason: format!("not a manifest: {e}") })
}

/// Makes the data of the batch's temporary files durable.
#[cfg(target_os = "linux")]
fn flush_files(files: &[fs::File], first: &Path, _pending: &[(PathBuf, PathBuf)]) -> Result<(), StoreError> {
    let Some(f) = files.first() else { return Ok(()) };
    rustix::fs::syncfs(f).map_err(|e| StoreError::Io { path: first.to_owned(), source: e.into() })
}

#[cfg(not(target_os = "linux"))]
fn flush_files(files: &[fs::File], _first: &Path, pending: &[(PathBuf, PathBuf)]) -> Result<(), StoreError> {
    for (f, (tmp, _)) in files.iter().zip(pending) {
        f.sync_all().map_err(io_at(tmp))?;
    }
    Ok(())
}

/// Makes the renames into `dirs` durable.
#[cfg(target_os = "linux")]
fn flush_dirs(root: &Path, _dirs: &[&Path]) -> Result<(), StoreError> {
    let d = fs::File::open(root).map_err(io_at(root))?;
    rustix::fs::syncfs(&d).map_err(|e| StoreError::Io { path: root.to_owned(), source: e.into() })
}

#[cfg(not(target_os = "linux"))]
fn flush_dirs(_root: &Path, dirs: &[&Path]) -> Result<(), StoreError> {
    for dir in dirs {
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_at(dir))?;
    }
    Ok(())
}

/// Writes `bytes` to `path` so that a crash leaves the old file or the new one: a
/// temporary file in the same directory, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // A bare file name (`otamesh sign x.root`) lives in the current directory.
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp =
        dir.join(format!(".{name}.tmp.{}.{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
    let result = (|| {
        let mut f = fs::File::create(&tmp).map_err(io_at(&tmp))?;
        f.write_all(bytes).map_err(io_at(&tmp))?;
        f.sync_all().map_err(io_at(&tmp))?;
        fs::rename(&tmp, path).map_err(io_at(path))?;
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_at(dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit;

    fn release(store: &Store, data: &[u8], sequence: u64) -> VerifiedManifest {
        testkit::put_chunks(store, data);
        testkit::sign(testkit::manifest(data, sequence, Default::default()))
    }

    #[test]
    fn a_batch_is_stored_whole_counted_once_and_leaves_no_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        let data = testkit::noise(8, 600_000);
        let refs = otamesh_core::chunking::chunk(&data, Default::default()).unwrap();
        let mut off = 0;
        let chunks: Vec<VerifiedChunk> = refs
            .iter()
            .map(|c| {
                let bytes = data[off..off + c.len as usize].to_vec();
                off += c.len as usize;
                VerifiedChunk::new(c.id, bytes).unwrap()
            })
            .collect();
        assert!(chunks.len() >= 3, "a batch of several chunks");
        // One already stored, and one twice in the batch: neither is new.
        assert!(store.put_chunk(&chunks[0]).unwrap());
        let mut batch = chunks.clone();
        batch.push(chunks[1].clone());
        assert_eq!(store.put_chunks(&batch).unwrap(), chunks.len() - 1);
        for c in &chunks {
            assert_eq!(store.read_chunk(c.id()).unwrap().bytes(), c.bytes());
        }
        assert_eq!(store.put_chunks(&batch).unwrap(), 0, "all there already");
        assert_eq!(store.put_chunks(&[]).unwrap(), 0);
        let leftovers: Vec<_> = fs::read_dir(dir.path().join("chunks"))
            .unwrap()
            .flat_map(|d| fs::read_dir(d.unwrap().path()).unwrap())
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn chunks_round_trip_and_are_fanned_out() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        let c = VerifiedChunk::new(ChunkId::of(b"abc"), b"abc".to_vec()).unwrap();
        assert!(store.put_chunk(&c).unwrap());
        assert!(!store.put_chunk(&c).unwrap(), "second put is a no-op");
        let hex = c.id().to_hex();
        assert!(dir.path().join("chunks").join(&hex[..2]).join(&hex).is_file());
        assert_eq!(store.read_chunk(c.id()).unwrap(), c);
    }

    #[test]
    fn corrupt_and_missing_chunks_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        let c = VerifiedChunk::new(ChunkId::of(b"abc"), b"abc".to_vec()).unwrap();
        store.put_chunk(&c).unwrap();
        fs::write(store.chunk_path(c.id()), b"abd").unwrap();
        assert!(matches!(store.read_chunk(c.id()), Err(StoreError::CorruptChunk { .. })));
        assert!(matches!(store.read_chunk(ChunkId::of(b"x")), Err(StoreError::MissingChunk { .. })));
    }

    #[test]
    fn manifest_is_indexed_and_sequence_is_unique() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        let v1 = release(&store, &[7u8; 100_000], 1);
        store.put_manifest(&v1).unwrap();
        store.put_manifest(&v1).unwrap();
        let index = store.index().unwrap();
        assert_eq!(index.releases.len(), 1);
        assert_eq!(index.releases[0].release_id, v1.id());
        assert_eq!(store.read_manifest(v1.id()).unwrap(), *v1.signed());
        let other = release(&store, &[8u8; 100_000], 1);
        assert!(matches!(store.put_manifest(&other), Err(StoreError::SequenceTaken { .. })));
        assert_eq!(store.index().unwrap().releases.len(), 1, "index unchanged by a refused put");
    }

    #[test]
    fn directives_are_indexed() {
        use otamesh_core::directive::{Directive, SignedDirective};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        let release = ReleaseId::from_bytes([3; 32]);
        for (sequence, order) in [(2, Order::Resume), (1, Order::Halt)] {
            let d = Directive { release, order, sequence, issued_at: 5, expires_at: 10 };
            let v = testkit::trust()
                .verify_directive(SignedDirective::sign(d, &testkit::publisher()), 5)
                .unwrap();
            let rel = store.put_directive(&v).unwrap();
            assert!(dir.path().join(rel).is_file());
        }
        let index = store.index().unwrap();
        let seqs: Vec<_> = index.directives.iter().map(|e| (e.sequence, e.order.as_str())).collect();
        assert_eq!(seqs, vec![(1, "halt"), (2, "resume")]);
    }

    #[test]
    fn open_refuses_a_plain_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(Store::open(dir.path()), Err(StoreError::NotAStore { .. })));
    }

    #[test]
    fn atomic_write_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
