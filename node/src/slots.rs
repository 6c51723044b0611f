//! A/B slots on disk.
//!
//! ```text
//! DATA/slots/a/payload     the artifact of the release in slot a
//! DATA/slots/a/manifest    the manifest body of that release (canonical encoding)
//! DATA/slots/b/payload
//! DATA/slots/b/manifest
//! DATA/slots/active -> a   which slot the device runs (a symlink)
//! ```
//!
//! The manifest kept with each payload makes the slots describe themselves: which
//! release the device runs, and so its anti-rollback floor, survive the loss of the
//! state database ([`Slots::content`], [`crate::db::open_or_rebuild`]).
//!
//! A release is assembled into the inactive slot only; the active slot is only ever
//! changed by [`Slots::switch_to`], which replaces the `active` symlink atomically
//! (symlink to a temporary name, rename over, fsync the directory). So a crash at any
//! moment leaves the active slot whole and pointing at one complete release.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use otamesh_core::manifest::Manifest;

use crate::store::{Store, StoreError};

/// One of the two slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Slot `a`.
    A,
    /// Slot `b`.
    B,
}

impl Slot {
    /// `a` or `b`.
    pub fn name(self) -> &'static str {
        match self {
            Self::A => "a",
            Self::B => "b",
        }
    }

    /// The other slot.
    pub fn other(self) -> Self {
        match self {
            Self::A => Self::B,
            Self::B => Self::A,
        }
    }
}

/// The payload file name inside a slot.
pub const PAYLOAD: &str = "payload";

/// The manifest file name inside a slot.
pub const MANIFEST: &str = "manifest";

/// Why a slot operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SlotError {
    /// A file operation failed (a full disk shows up here).
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A chunk could not be read from the local store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The assembled payload does not hash to the manifest's digest.
    #[error("assembled payload does not match the manifest digest (expected {expected}, got {actual})")]
    DigestMismatch {
        /// From the manifest.
        expected: String,
        /// What was assembled.
        actual: String,
    },
    /// The `active` link points somewhere unexpected.
    #[error("{path} does not point at slot a or b: fix or remove the link")]
    BadLink {
        /// The link.
        path: PathBuf,
    },
    /// Refusing to write into the slot the device runs from.
    #[error("refusing to modify the active slot {0}")]
    Active(&'static str),
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> SlotError + '_ {
    move |source| SlotError::Io { path: path.to_owned(), source }
}

/// The slot directories of one device.
#[derive(Debug, Clone)]
pub struct Slots {
    root: PathBuf,
}

impl Slots {
    /// Opens `root` (e.g. `DATA/slots`), creating both slots and pointing `active` at `a`
    /// on first use.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, SlotError> {
        let slots = Self { root: root.into() };
        for s in [Slot::A, Slot::B] {
            let p = slots.path(s);
            fs::create_dir_all(&p).map_err(io_at(&p))?;
        }
        let link = slots.link();
        if fs::symlink_metadata(&link).is_err() {
            slots.point_link(Slot::A)?;
        }
        slots.active()?;
        Ok(slots)
    }

    /// The directory of slot `s`.
    pub fn path(&self, s: Slot) -> PathBuf {
        self.root.join(s.name())
    }

    /// The payload file of slot `s`.
    pub fn payload(&self, s: Slot) -> PathBuf {
        self.path(s).join(PAYLOAD)
    }

    fn link(&self) -> PathBuf {
        self.root.join("active")
    }

    /// The slot the device runs from.
    pub fn active(&self) -> Result<Slot, SlotError> {
        let link = self.link();
        let target = fs::read_link(&link).map_err(io_at(&link))?;
        match target.to_str() {
            Some("a") => Ok(Slot::A),
            Some("b") => Ok(Slot::B),
            _ => Err(SlotError::BadLink { path: link }),
        }
    }

    /// The release slot `s` holds, from the manifest kept beside its payload; `None`
    /// for an empty slot, or one whose payload or manifest is missing, unreadable or of
    /// the wrong size (a slot assembled by an older build, or damaged).
    pub fn content(&self, s: Slot) -> Option<Manifest> {
        let bytes = fs::read(self.path(s).join(MANIFEST)).ok()?;
        let manifest: Manifest = otamesh_core::codec::decode(&bytes).ok()?;
        let size = fs::metadata(self.payload(s)).ok()?.len();
        (size == manifest.payload.size).then_some(manifest)
    }

    /// The slot a new release goes into.
    pub fn inactive(&self) -> Result<Slot, SlotError> {
        Ok(self.active()?.other())
    }

    /// Empties slot `s`; refuses the active slot.
    pub fn discard(&self, s: Slot) -> Result<(), SlotError> {
        if self.active()? == s {
            return Err(SlotError::Active(s.name()));
        }
        let p = self.path(s);
        match fs::remove_dir_all(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(SlotError::Io { path: p, source: e });
            }
            _ => {}
        }
        fs::create_dir_all(&p).map_err(io_at(&p))
    }

    /// Writes the payload of `manifest` into the inactive slot from verified chunks of
    /// `store`, checks the whole-payload digest, fsyncs. On any error the slot is
    /// emptied again; the active slot is never touched.
    pub fn assemble(&self, store: &Store, manifest: &Manifest) -> Result<Slot, SlotError> {
        let slot = self.inactive()?;
        self.discard(slot)?;
        let result = self.write_payload(slot, store, manifest);
        if result.is_err() {
            let _ = self.discard(slot);
        }
        result.map(|()| slot)
    }

    fn write_payload(&self, slot: Slot, store: &Store, manifest: &Manifest) -> Result<(), SlotError> {
        let tmp = self.path(slot).join(".payload.partial");
        let mut file = io::BufWriter::new(fs::File::create(&tmp).map_err(io_at(&tmp))?);
        let mut whole = blake3::Hasher::new();
        for c in &manifest.payload.chunks {
            let chunk = store.read_chunk(c.id)?;
            whole.update(chunk.bytes());
            file.write_all(chunk.bytes()).map_err(io_at(&tmp))?;
        }
        let file =
            file.into_inner().map_err(|e| SlotError::Io { path: tmp.clone(), source: e.into_error() })?;
        file.sync_all().map_err(io_at(&tmp))?;
        let actual = whole.finalize();
        if *actual.as_bytes() != manifest.payload.digest {
            return Err(SlotError::DigestMismatch {
                expected: hex::encode(manifest.payload.digest),
                actual: actual.to_hex().to_string(),
            });
        }
        // The manifest goes in first: a slot with a payload always says what it holds.
        crate::store::write_atomic(&self.path(slot).join(MANIFEST), &manifest.canonical_bytes())?;
        let dest = self.payload(slot);
        fs::rename(&tmp, &dest).map_err(io_at(&dest))?;
        sync_dir(&self.path(slot))
    }

    /// Atomically makes `s` the active slot. Idempotent.
    pub fn switch_to(&self, s: Slot) -> Result<(), SlotError> {
        if self.active()? == s {
            return Ok(());
        }
        self.point_link(s)
    }

    fn point_link(&self, s: Slot) -> Result<(), SlotError> {
        let tmp = self.root.join(".active.new");
        let _ = fs::remove_file(&tmp);
        #[cfg(unix)]
        std::os::unix::fs::symlink(s.name(), &tmp).map_err(io_at(&tmp))?;
        #[cfg(not(unix))]
        compile_error!("A/B slots need symlinks (unix)");
        let link = self.link();
        fs::rename(&tmp, &link).map_err(io_at(&link))?;
        sync_dir(&self.root)
    }
}

fn sync_dir(dir: &Path) -> Result<(), SlotError> {
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_at(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{self, put_chunks};

    fn release(store: &Store, data: &[u8]) -> Manifest {
        put_chunks(store, data);
        testkit::manifest(data, 1, Default::default())
    }

    fn setup() -> (tempfile::TempDir, Store, Slots) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path().join("store")).unwrap();
        let slots = Slots::open(dir.path().join("slots")).unwrap();
        (dir, store, slots)
    }

    #[test]
    fn assemble_into_inactive_then_switch() {
        let (_dir, store, slots) = setup();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let m = release(&store, &data);
        assert_eq!(slots.active().unwrap(), Slot::A);
        let slot = slots.assemble(&store, &m).unwrap();
        assert_eq!(slot, Slot::B);
        assert_eq!(fs::read(slots.payload(Slot::B)).unwrap(), data);
        assert_eq!(slots.content(Slot::B), Some(m.clone()), "the slot says what it holds");
        assert_eq!(slots.content(Slot::A), None);
        slots.switch_to(Slot::B).unwrap();
        slots.switch_to(Slot::B).unwrap();
        assert_eq!(slots.active().unwrap(), Slot::B);
        assert_eq!(Slots::open(slots.root.clone()).unwrap().active().unwrap(), Slot::B, "survives reopen");
    }

    #[test]
    fn digest_mismatch_leaves_inactive_empty_and_active_alone() {
        let (_dir, store, slots) = setup();
        fs::write(slots.payload(Slot::A), b"running version").unwrap();
        let mut m = release(&store, &[5u8; 70_000]);
        m.payload.digest = [0; 32];
        let err = slots.assemble(&store, &m).unwrap_err();
        assert!(matches!(err, SlotError::DigestMismatch { .. }), "{err}");
        assert_eq!(fs::read_dir(slots.path(Slot::B)).unwrap().count(), 0);
        assert_eq!(slots.content(Slot::B), None);
        assert_eq!(fs::read(slots.payload(Slot::A)).unwrap(), b"running version");
    }

    #[test]
    fn missing_chunk_fails_the_install() {
        let (_dir, store, slots) = setup();
        let m = release(&store, &[9u8; 70_000]);
        store.remove_chunk(m.payload.chunks[0].id).unwrap();
        assert!(matches!(slots.assemble(&store, &m), Err(SlotError::Store(StoreError::MissingChunk { .. }))));
    }

    #[test]
    fn active_slot_cannot_be_discarded() {
        let (_dir, _store, slots) = setup();
        assert!(matches!(slots.discard(Slot::A), Err(SlotError::Active("a"))));
    }
}
