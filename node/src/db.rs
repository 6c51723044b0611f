//! The device's durable state in SQLite: the lifecycle state of each release, what each
//! A/B slot holds, applied directives, and the hash-chained audit log.
//!
//! The database runs in WAL mode with `synchronous = FULL`: a committed transaction
//! survives power loss. A state change and its audit row are written in one
//! transaction ([`Db::transition`]), so the log never disagrees with the state.
//!
//! The audit log is append-only and hash-chained: each row carries the hash of the row
//! before it, and its own hash covers its sequence, time, event, release, detail and
//! that previous hash. Editing or deleting a row breaks the chain at that row, which
//! [`verify_chain`] names. (Cutting rows off the end is only detectable against a copy
//! of the last hash kept elsewhere, e.g. in a signed report.)

use std::path::{Path, PathBuf};

use otamesh_core::directive::Standing;
use otamesh_core::lifecycle::State;
use otamesh_core::{Millis, ReleaseId, codec};

use crate::slots::Slot;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::Serialize;

/// The hash before the first audit row.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Why the state database could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// The file is not a healthy SQLite database.
    #[error(
        "{path} is corrupted ({reason}): restore it from a backup, or move it aside to start with empty state; the installed slots are not touched"
    )]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        reason: String,
    },
    /// Any other SQLite failure (disk full, permissions ...).
    #[error("{path}: {source}")]
    Sql {
        /// The database file.
        path: PathBuf,
        /// The SQLite error.
        source: rusqlite::Error,
    },
    /// The database was lost and could not be moved aside or rebuilt from the slots.
    #[error(
        "{path}: cannot rebuild the lost state from the slots ({reason}); check the data directory is writable"
    )]
    Rebuild {
        /// The database file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A stored value that this build cannot read.
    #[error("{path}: unreadable {what} {value:?} in the database")]
    Value {
        /// The database file.
        path: PathBuf,
        /// Which column.
        what: &'static str,
        /// The value.
        value: String,
    },
}

/// The audit event that marks where a rebuilt database's history starts.
pub const HISTORY_LOST: &str = "history_lost";

/// What [`open_or_rebuild`] recovered after the state database was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebuilt {
    /// Why: `missing`, or `corrupt (moved to …)`.
    pub cause: String,
    /// The slot the device runs and what it holds (the anti-rollback floor).
    pub active: Option<(String, SlotContent)>,
    /// The other slot, when it holds an older release (the rollback target).
    pub previous: Option<(String, SlotContent)>,
}

/// Opens `DATA/state.db`; if it is corrupt (moved aside to `state.db.corrupt-NOW`) or
/// missing while the slots hold releases, makes a new one from what the slots say
/// (each keeps its release's manifest), so the active release and the anti-rollback
/// floor survive. The rebuilt log starts with a [`HISTORY_LOST`] row, which
/// `otamesh audit --verify` reports. Lost for good: applied directives and the history.
pub fn open_or_rebuild(data: &Path, now: Millis) -> Result<(Db, Option<Rebuilt>), DbError> {
    let path = data.join("state.db");
    let slots = crate::slots::Slots::open(data.join("slots"))
        .map_err(|e| DbError::Rebuild { path: path.clone(), reason: e.to_string() })?;
    let cause = if path.exists() {
        match Db::open(&path) {
            Ok(db) => return Ok((db, None)),
            Err(DbError::Corrupt { reason, .. }) => {
                let aside = data.join(format!("state.db.corrupt-{now}"));
                let rebuild =
                    |e: std::io::Error| DbError::Rebuild { path: path.clone(), reason: e.to_string() };
                std::fs::rename(&path, &aside).map_err(rebuild)?;
                for ext in ["-wal", "-shm"] {
                    let side = data.join(format!("state.db{ext}"));
                    if side.exists() {
                        std::fs::rename(&side, data.join(format!("state.db.corrupt-{now}{ext}")))
                            .map_err(rebuild)?;
                    }
                }
                tracing::error!(moved_to = %aside.display(), %reason, "state.db is corrupt: rebuilding from the slots");
                format!("corrupt ({reason}; moved to {})", aside.display())
            }
            Err(e) => return Err(e),
        }
    } else if [Slot::A, Slot::B].iter().any(|&s| slots.content(s).is_some()) {
        tracing::error!(path = %path.display(), "state.db is missing but the slots hold releases: rebuilding from the slots");
        "missing".to_owned()
    } else {
        // A new device: nothing was lost.
        return Ok((Db::open(&path)?, None));
    };
    let mut db = Db::open(&path)?;
    let active_slot =
        slots.active().map_err(|e| DbError::Rebuild { path: path.clone(), reason: e.to_string() })?;
    let content = |s: Slot| {
        slots.content(s).map(|m| SlotContent {
            release_id: m.release_id(),
            sequence: m.sequence,
            version: m.version,
        })
    };
    let active = content(active_slot).map(|c| (active_slot.name().to_owned(), c));
    let floor = active.as_ref().map(|(_, c)| c.sequence);
    // The other slot counts only as the previous release: a newer one there was never
    // activated, or was rolled back from, and must not become a rollback target.
    let previous = content(active_slot.other())
        .filter(|c| floor.is_some_and(|f| c.sequence < f))
        .map(|c| (active_slot.other().name().to_owned(), c));
    for (slot, c) in active.iter().chain(previous.iter()) {
        db.set_slot(slot, c)?;
    }
    let describe = |what: &str, s: &Option<(String, SlotContent)>| match s {
        Some((slot, c)) => {
            format!("{what} slot {slot} holds {} (sequence {}, {})", c.release_id, c.sequence, c.version)
        }
        None => format!("{what} slot: nothing recoverable"),
    };
    let detail = format!(
        "state.db was {cause}: the audit history and applied directives before this row are lost; rebuilt from the slots: {}; {}",
        describe("active", &active),
        describe("previous", &previous)
    );
    db.audit(now, HISTORY_LOST, active.as_ref().map(|(_, c)| c.release_id), &detail)?;
    Ok((db, Some(Rebuilt { cause, active, previous })))
}

/// Where the audit history was lost: the first [`HISTORY_LOST`] row, if any.
pub fn history_lost(rows: &[AuditRow]) -> Option<&AuditRow> {
    rows.iter().find(|r| r.event == HISTORY_LOST)
}

/// One release as the device tracks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseRecord {
    /// The release.
    pub release: ReleaseId,
    /// Its sequence.
    pub sequence: u64,
    /// Its human version.
    pub version: String,
    /// The lifecycle state, persisted before the state's side effects run.
    pub state: State,
    /// When the state was last written.
    pub updated_at: Millis,
}

/// What a slot holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotContent {
    /// The release installed there.
    pub release_id: ReleaseId,
    /// Its sequence.
    pub sequence: u64,
    /// Its version.
    pub version: String,
}

/// One audit log row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRow {
    /// Position in the log, from 1, without gaps.
    pub seq: u64,
    /// When, in Unix milliseconds.
    pub at: Millis,
    /// What kind of event (`transition`, `refused`, `directive`, ...).
    pub event: String,
    /// The release it concerns, if any.
    pub release: Option<String>,
    /// Free text.
    pub detail: String,
    /// The previous row's hash ([`GENESIS`] for the first).
    pub prev_hash: String,
    /// This row's hash.
    pub hash: String,
}

/// Where the audit chain is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit row {seq} is not what was written ({why})")]
pub struct ChainBreak {
    /// The first bad row.
    pub seq: u64,
    /// What does not match.
    pub why: &'static str,
}

/// The state database.
#[derive(Debug)]
pub struct Db {
    conn: Connection,
    path: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS releases(
    release_id TEXT PRIMARY KEY,
    sequence INTEGER NOT NULL,
    version TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    updated_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS slots(
    slot TEXT PRIMARY KEY,
    release_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    version TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS directives(
    release_id TEXT PRIMARY KEY,
    sequence INTEGER NOT NULL,
    halted INTEGER NOT NULL,
    revoked_to TEXT);
CREATE TABLE IF NOT EXISTS audit(
    seq INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    event TEXT NOT NULL,
    release_id TEXT,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL);
";

impl Db {
    /// Opens (creating if needed) the database at `path` and checks its integrity.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        let conn = Connection::open(path).map_err(|e| classify(path, e))?;
        let db = Self { conn, path: path.to_owned() };
        db.check_integrity()?;
        db.conn
            .execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")
            .and_then(|()| db.conn.execute_batch(SCHEMA))
            .map_err(|e| classify(path, e))?;
        Ok(db)
    }

    /// Opens an existing database read-only (for `otamesh audit` beside a running node).
    pub fn open_read_only(path: &Path) -> Result<Self, DbError> {
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| classify(path, e))?;
        let db = Self { conn, path: path.to_owned() };
        db.check_integrity()?;
        Ok(db)
    }

    fn check_integrity(&self) -> Result<(), DbError> {
        let verdict: String = self
            .conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(|e| classify(&self.path, e))?;
        if verdict != "ok" {
            return Err(DbError::Corrupt { path: self.path.clone(), reason: verdict });
        }
        Ok(())
    }

    /// Parses a release id read from column `what`.
    fn release_id(&self, what: &'static str, text: String) -> Result<ReleaseId, DbError> {
        text.parse().map_err(|_| DbError::Value { path: self.path.clone(), what, value: text })
    }

    fn sql(&self) -> impl Fn(rusqlite::Error) -> DbError + '_ {
        |e| classify(&self.path, e)
    }

    /// Writes a release's new state and its audit row in one transaction.
    pub fn transition(
        &mut self,
        at: Millis,
        record: &ReleaseRecord,
        detail: &str,
    ) -> Result<AuditRow, DbError> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(|e| classify(&path, e))?;
        let (state, reason) = record.state.parts();
        tx.execute(
            "INSERT INTO releases(release_id, sequence, version, state, reason, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(release_id) DO UPDATE SET state = ?4, reason = ?5, updated_at = ?6",
            params![
                record.release.to_hex(),
                record.sequence as i64,
                record.version,
                state,
                reason,
                at as i64
            ],
        )
        .map_err(|e| classify(&path, e))?;
        let text = match &reason {
            Some(r) => format!("{state} ({r}){}{detail}", if detail.is_empty() { "" } else { ": " }),
            None if detail.is_empty() => state.to_owned(),
            None => format!("{state}: {detail}"),
        };
        let row = append_audit(&tx, &path, at, "transition", Some(record.release), &text)?;
        tx.commit().map_err(|e| classify(&path, e))?;
        Ok(row)
    }

    /// Appends an audit row on its own (a refusal, a directive, a decision).
    pub fn audit(
        &mut self,
        at: Millis,
        event: &str,
        release: Option<ReleaseId>,
        detail: &str,
    ) -> Result<AuditRow, DbError> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(|e| classify(&path, e))?;
        let row = append_audit(&tx, &path, at, event, release, detail)?;
        tx.commit().map_err(|e| classify(&path, e))?;
        Ok(row)
    }

    /// Records where `release` stands after an applied directive, with its audit row,
    /// in one transaction.
    pub fn apply_directive(
        &mut self,
        at: Millis,
        release: ReleaseId,
        standing: &Standing,
        detail: &str,
    ) -> Result<AuditRow, DbError> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(|e| classify(&path, e))?;
        tx.execute(
            "INSERT INTO directives(release_id, sequence, halted, revoked_to) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(release_id) DO UPDATE SET sequence = ?2, halted = ?3, revoked_to = ?4",
            params![
                release.to_hex(),
                standing.sequence as i64,
                standing.halted,
                standing.revoked_to.map(|r| r.to_hex())
            ],
        )
        .map_err(|e| classify(&path, e))?;
        let row = append_audit(&tx, &path, at, "directive", Some(release), detail)?;
        tx.commit().map_err(|e| classify(&path, e))?;
        Ok(row)
    }

    /// Where each directed release stands, as [`Db::apply_directive`] left it.
    pub fn directives(&self) -> Result<Vec<(ReleaseId, Standing)>, DbError> {
        let mut stmt = self
            .conn
            .prepare("SELECT release_id, sequence, halted, revoked_to FROM directives")
            .map_err(self.sql())?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, bool>(2)?,
                    r.get::<_, Option<String>>(3)?,
                ))
            })
            .map_err(self.sql())?;
        let mut out = Vec::new();
        for row in rows {
            let (id, sequence, halted, revoked_to) = row.map_err(self.sql())?;
            let release = self.release_id("directive release id", id)?;
            let revoked_to = revoked_to.map(|to| self.release_id("directive revoked_to", to)).transpose()?;
            out.push((release, Standing { sequence: sequence as u64, halted, revoked_to }));
        }
        Ok(out)
    }

    /// Every release the device tracks, oldest sequence first.
    pub fn releases(&self) -> Result<Vec<ReleaseRecord>, DbError> {
        let mut stmt = self
            .conn
            .prepare("SELECT release_id, sequence, version, state, reason, updated_at FROM releases ORDER BY sequence")
            .map_err(self.sql())?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            })
            .map_err(self.sql())?;
        let mut out = Vec::new();
        for row in rows {
            let (id, sequence, version, state, reason, updated_at) = row.map_err(self.sql())?;
            let release = self.release_id("release id", id)?;
            let state = State::from_parts(&state, reason.as_deref()).map_err(|_| DbError::Value {
                path: self.path.clone(),
                what: "state",
                value: state.clone(),
            })?;
            out.push(ReleaseRecord {
                release,
                sequence: sequence as u64,
                version,
                state,
                updated_at: updated_at as Millis,
            });
        }
        Ok(out)
    }

    /// Records what slot `slot` holds (after a successful install into it).
    pub fn set_slot(&mut self, slot: &str, content: &SlotContent) -> Result<(), DbError> {
        self.conn
            .execute(
                "INSERT INTO slots(slot, release_id, sequence, version) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(slot) DO UPDATE SET release_id = ?2, sequence = ?3, version = ?4",
                params![slot, content.release_id.to_hex(), content.sequence as i64, content.version],
            )
            .map_err(self.sql())?;
        Ok(())
    }

    /// Forgets what slot `slot` holds (it was discarded).
    pub fn clear_slot(&mut self, slot: &str) -> Result<(), DbError> {
        self.conn.execute("DELETE FROM slots WHERE slot = ?1", params![slot]).map_err(self.sql())?;
        Ok(())
    }

    /// What slot `slot` holds, if anything.
    pub fn slot(&self, slot: &str) -> Result<Option<SlotContent>, DbError> {
        let row = self
            .conn
            .query_row(
                "SELECT release_id, sequence, version FROM slots WHERE slot = ?1",
                params![slot],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?)),
            )
            .optional()
            .map_err(self.sql())?;
        let Some((id, sequence, version)) = row else { return Ok(None) };
        let release_id = self.release_id("slot release id", id)?;
        Ok(Some(SlotContent { release_id, sequence: sequence as u64, version }))
    }

    /// The whole audit log in order.
    pub fn audit_rows(&self) -> Result<Vec<AuditRow>, DbError> {
        let mut stmt = self
            .conn
            .prepare("SELECT seq, at, event, release_id, detail, prev_hash, hash FROM audit ORDER BY seq")
            .map_err(self.sql())?;
        let rows = stmt
            .query_map([], |r| {
                Ok(AuditRow {
                    seq: r.get::<_, i64>(0)? as u64,
                    at: r.get::<_, i64>(1)? as Millis,
                    event: r.get(2)?,
                    release: r.get(3)?,
                    detail: r.get(4)?,
                    prev_hash: r.get(5)?,
                    hash: r.get(6)?,
                })
            })
            .map_err(self.sql())?;
        rows.collect::<Result<_, _>>().map_err(self.sql())
    }
}

fn classify(path: &Path, e: rusqlite::Error) -> DbError {
    use rusqlite::ErrorCode::{DatabaseCorrupt, NotADatabase};
    match e.sqlite_error_code() {
        Some(DatabaseCorrupt | NotADatabase) => {
            DbError::Corrupt { path: path.to_owned(), reason: e.to_string() }
        }
        _ => DbError::Sql { path: path.to_owned(), source: e },
    }
}

fn append_audit(
    tx: &rusqlite::Transaction<'_>,
    path: &Path,
    at: Millis,
    event: &str,
    release: Option<ReleaseId>,
    detail: &str,
) -> Result<AuditRow, DbError> {
    let last: Option<(i64, String)> = tx
        .query_row("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()
        .map_err(|e| classify(path, e))?;
    let (seq, prev_hash) = last.map_or((1, GENESIS.to_owned()), |(s, h)| (s as u64 + 1, h));
    let mut row = AuditRow {
        seq,
        at,
        event: event.to_owned(),
        release: release.map(|r| r.to_hex()),
        detail: detail.to_owned(),
        prev_hash,
        hash: String::new(),
    };
    row.hash = row_hash(&row);
    tx.execute(
        "INSERT INTO audit(seq, at, event, release_id, detail, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![row.seq as i64, row.at as i64, row.event, row.release, row.detail, row.prev_hash, row.hash],
    )
    .map_err(|e| classify(path, e))?;
    Ok(row)
}

/// The hash a row must carry: BLAKE3 over a domain prefix and the canonical encoding of
/// every field but the hash itself.
pub fn row_hash(row: &AuditRow) -> String {
    let body = codec::encode(&(row.seq, row.at, &row.event, &row.release, &row.detail, &row.prev_hash));
    let mut h = blake3::Hasher::new();
    h.update(b"otamesh/v1/audit-row\0");
    h.update(&body);
    h.finalize().to_hex().to_string()
}

/// Checks the chain: sequences without gaps from 1, each row's `prev_hash` the hash of
/// the row before, each row's hash its contents'. Names the first bad row.
pub fn verify_chain(rows: &[AuditRow]) -> Result<(), ChainBreak> {
    let mut prev = GENESIS.to_owned();
    for (i, row) in rows.iter().enumerate() {
        let expected_seq = i as u64 + 1;
        if row.seq != expected_seq {
            // A deleted row: the first row after the gap is where the chain breaks.
            return Err(ChainBreak { seq: expected_seq.min(row.seq), why: "a row is missing before it" });
        }
        if row.prev_hash != prev {
            return Err(ChainBreak { seq: row.seq, why: "its previous-row hash does not match" });
        }
        if row.hash != row_hash(row) {
            return Err(ChainBreak { seq: row.seq, why: "its contents do not match its hash" });
        }
        prev = row.hash.clone();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u8, state: State) -> ReleaseRecord {
        ReleaseRecord {
            release: ReleaseId::from_bytes([n; 32]),
            sequence: u64::from(n),
            version: format!("1.{n}"),
            state,
            updated_at: 0,
        }
    }

    #[test]
    fn states_round_trip_through_text() {
        for s in [
            State::Idle,
            State::Waiting,
            State::Fetching,
            State::Staged,
            State::Installing,
            State::Activated,
            State::Checking,
            State::Committed,
            State::RolledBack(otamesh_core::lifecycle::Reason::InstallFailed("disk: full".into())),
            State::RolledBack(otamesh_core::lifecycle::Reason::HealthCheckFailed("exit 3".into())),
            State::RolledBack(otamesh_core::lifecycle::Reason::CrashedDuringCheck),
            State::RolledBack(otamesh_core::lifecycle::Reason::Revoked),
            State::RolledBack(otamesh_core::lifecycle::Reason::Expired),
        ] {
            let (name, reason) = s.parts();
            assert_eq!(State::from_parts(name, reason.as_deref()), Ok(s));
        }
    }

    #[test]
    fn transitions_persist_and_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let mut db = Db::open(&path).unwrap();
            db.transition(1, &record(1, State::Fetching), "").unwrap();
            db.transition(2, &record(1, State::Committed), "").unwrap();
            db.audit(3, "refused", Some(ReleaseId::from_bytes([0; 32])), "sequence 0 is not above 1")
                .unwrap();
        }
        let db = Db::open(&path).unwrap();
        assert_eq!(
            db.releases().unwrap(),
            vec![ReleaseRecord { updated_at: 2, ..record(1, State::Committed) }]
        );
        let rows = db.audit_rows().unwrap();
        assert_eq!(rows.len(), 3);
        verify_chain(&rows).unwrap();
    }

    #[test]
    fn edited_row_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let mut db = Db::open(&path).unwrap();
        for i in 0..5 {
            db.audit(i, "note", None, &format!("row {i}")).unwrap();
        }
        db.conn.execute("UPDATE audit SET detail = 'edited' WHERE seq = 3", []).unwrap();
        assert_eq!(verify_chain(&db.audit_rows().unwrap()).unwrap_err().seq, 3);
        db.conn.execute("DELETE FROM audit WHERE seq = 3", []).unwrap();
        assert_eq!(verify_chain(&db.audit_rows().unwrap()).unwrap_err().seq, 3);
    }

    #[test]
    fn garbage_file_is_reported_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        std::fs::write(&path, vec![0x42u8; 8192]).unwrap();
        let err = Db::open(&path).unwrap_err();
        assert!(matches!(err, DbError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("state.db"));
    }

    /// A data directory whose slot `a` is active and holds sequence 2, slot `b` sequence 1.
    fn device_on_sequence_2() -> (tempfile::TempDir, ReleaseId) {
        use crate::testkit;
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::create(dir.path().join("store")).unwrap();
        let slots = crate::slots::Slots::open(dir.path().join("slots")).unwrap();
        let mut v2 = ReleaseId::from_bytes([0; 32]);
        for sequence in [1u64, 2] {
            let data = vec![sequence as u8; 70_000];
            testkit::put_chunks(&store, &data);
            let m = testkit::manifest(&data, sequence, Default::default());
            let slot = slots.assemble(&store, &m).unwrap();
            slots.switch_to(slot).unwrap();
            v2 = m.release_id();
        }
        (dir, v2)
    }

    #[test]
    fn a_missing_database_is_rebuilt_from_the_slots_and_says_history_was_lost() {
        let (dir, v2) = device_on_sequence_2();
        let (db, rebuilt) = open_or_rebuild(dir.path(), 77).unwrap();
        let rebuilt = rebuilt.expect("the slots hold releases: something was lost");
        assert_eq!(rebuilt.cause, "missing");
        assert_eq!(db.slot("a").unwrap().map(|c| (c.release_id, c.sequence)), Some((v2, 2)), "the floor");
        assert_eq!(db.slot("b").unwrap().map(|c| c.sequence), Some(1), "the rollback target");
        let rows = db.audit_rows().unwrap();
        verify_chain(&rows).unwrap();
        assert_eq!(history_lost(&rows).map(|r| r.seq), Some(1));
        drop(db);
        let (_db, again) = open_or_rebuild(dir.path(), 78).unwrap();
        assert_eq!(again, None, "a healthy database is opened as it is");
    }

    #[test]
    fn a_corrupt_database_is_moved_aside_and_rebuilt() {
        let (dir, v2) = device_on_sequence_2();
        std::fs::write(dir.path().join("state.db"), vec![0x42u8; 8192]).unwrap();
        let (db, rebuilt) = open_or_rebuild(dir.path(), 77).unwrap();
        assert!(rebuilt.unwrap().cause.starts_with("corrupt"));
        assert!(
            dir.path().join("state.db.corrupt-77").is_file(),
            "the corrupt file is kept for a post-mortem"
        );
        assert_eq!(db.slot("a").unwrap().map(|c| c.release_id), Some(v2));
    }

    #[test]
    fn a_new_device_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (db, rebuilt) = open_or_rebuild(dir.path(), 1).unwrap();
        assert_eq!(rebuilt, None);
        assert!(db.audit_rows().unwrap().is_empty());
    }

    #[test]
    fn slots_are_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(&dir.path().join("state.db")).unwrap();
        assert_eq!(db.slot("a").unwrap(), None);
        let c = SlotContent { release_id: ReleaseId::from_bytes([1; 32]), sequence: 1, version: "1".into() };
        db.set_slot("a", &c).unwrap();
        assert_eq!(db.slot("a").unwrap(), Some(c));
        db.clear_slot("a").unwrap();
        assert_eq!(db.slot("a").unwrap(), None);
    }
}
