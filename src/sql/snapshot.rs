//! State transfer of the SQL state machine: a consistent copy of a peer's database,
//! streamed in checksummed chunks, staged beside the live database and switched in
//! atomically.
//!
//! - Export ([`SqlReader::export`]): SQLite's backup API copies the live database, in
//!   one step (one read transaction, so one point in time, while apply goes on), to a
//!   work file `export-*.tmp`; the file is then sent in [`SqlChunk`]s of
//!   [`CHUNK_BYTES`], each with a CRC-32, and an [`SqlEnd`] with the totals, a CRC-32 over
//!   the whole file, and the applied index stored *in* the copy. The work file is removed
//!   when the export ends, however it ends. A page copy keeps every rowid (a `VACUUM INTO`
//!   may renumber rows of tables without an `INTEGER PRIMARY KEY`).
//! - Import ([`SqlStore::importer`], [`SqlImporter`]): chunks are checked (CRC, order) and
//!   appended to `staged.sqlite.part`; [`SqlImporter::finish`] checks the totals, syncs the
//!   file, opens it with SQLite (`PRAGMA quick_check`, the applied index in the copy equals
//!   the one announced), and renames it to `staged.sqlite` (synced directory). The live
//!   database is untouched.
//! - Install ([`SqlStore::install_staged`]), in [`InstallStep`] order: rename
//!   `staged.sqlite` to `db-<g+1>.sqlite`; write `CURRENT.tmp` naming `g+1` (synced);
//!   rename it over `CURRENT` (synced directory) — the one commit point; reopen on the new
//!   database; remove generation `g`'s files. At open, whatever `CURRENT` names is live
//!   and every other `db-*` file is removed, so a crash at any point leaves either the old
//!   or the new state, never a mix.
//!
//! # Invariants
//!
//! - Memory is bounded by the chunk size on both sides, never by the database size.
//! - A chunk that fails its CRC or arrives out of order is refused and changes nothing, so
//!   the same importer can take a correct copy of it.
//! - The live database is untouched until the rename of `CURRENT`.

use super::store::{db_path, open_apply, sql_err, sync_dir, SqlReader, SqlStore};
use super::SqlLimits;
use crate::error::{Error, Result};
use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Payload bytes of one chunk (the last may be shorter).
pub const CHUNK_BYTES: usize = 1 << 20;

const STAGED: &str = "staged.sqlite";
const STAGED_PART: &str = "staged.sqlite.part";

/// Consecutive bytes of the database file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SqlChunk {
    /// 0 for the first chunk, then +1.
    pub seq: u64,
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
    /// CRC-32 over `seq` and `bytes`.
    pub crc: u32,
}

/// The end of a transfer: what the receiver must have received.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SqlEnd {
    /// The applied index stored in the copy.
    pub applied: u64,
    pub chunks: u64,
    pub bytes: u64,
    /// CRC-32 over the whole file.
    pub file_crc: u32,
}

/// One message of a transfer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SqlPart {
    Chunk(SqlChunk),
    End(SqlEnd),
}

fn chunk_crc(seq: u64, bytes: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(bytes);
    h.finalize()
}

impl SqlChunk {
    pub fn seal(seq: u64, bytes: Vec<u8>) -> SqlChunk {
        let crc = chunk_crc(seq, &bytes);
        SqlChunk { seq, bytes, crc }
    }

    /// Checks the CRC: an error names the damaged chunk.
    pub fn verify(&self) -> Result<()> {
        let crc = chunk_crc(self.seq, &self.bytes);
        if crc != self.crc {
            return Err(Error::Storage(format!(
                "SQL state chunk {} is corrupt: its CRC is {:#010x} but its bytes hash to {crc:#010x}",
                self.seq, self.crc
            )));
        }
        Ok(())
    }
}

static EXPORTS: AtomicU64 = AtomicU64::new(0);

/// Removes a work file when dropped.
struct WorkFile(PathBuf);

impl Drop for WorkFile {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut p = self.0.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(PathBuf::from(p));
        }
    }
}

impl SqlReader {
    /// Streams a consistent copy of the database to `sink` (see the module docs). `sink`
    /// may block (back-pressure); an `Err` from it aborts the export.
    pub fn export(&self, sink: &mut dyn FnMut(SqlPart) -> Result<()>) -> Result<()> {
        self.export_pinned(&mut |_| {}, sink)
    }

    /// [`SqlReader::export`], calling `pinned` with the copy's applied index once its read
    /// transaction is open, before the copy (see [`crate::transfer::Transferable::export`]).
    pub fn export_pinned(
        &self,
        pinned: &mut dyn FnMut(u64),
        sink: &mut dyn FnMut(SqlPart) -> Result<()>,
    ) -> Result<()> {
        let dir = &self.shared.dir;
        let n = EXPORTS.fetch_add(1, Ordering::Relaxed);
        let work = WorkFile(dir.join(format!("export-{}-{n}.tmp", std::process::id())));
        let gen = self.shared.live_gen();
        let src = Connection::open_with_flags(
            db_path(dir, gen),
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| Error::Unavailable(format!("SQL export: the database was replaced ({e})")))?;
        src.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sql_err)?;
        // The read transaction opened here is the copy's point in time: the backup below
        // runs inside it (SQLite's backup uses an open read transaction of the source).
        src.execute_batch("BEGIN").map_err(sql_err)?;
        let at: i64 = src
            .query_row("SELECT applied FROM _paxosdb_meta WHERE id = 0", [], |r| {
                r.get(0)
            })
            .map_err(sql_err)?;
        pinned(at as u64);
        let applied = {
            let mut dst = Connection::open(&work.0).map_err(sql_err)?;
            {
                let b = rusqlite::backup::Backup::new(&src, &mut dst).map_err(sql_err)?;
                // All pages in one step: one read transaction, one point in time.
                loop {
                    match b.step(-1).map_err(sql_err)? {
                        rusqlite::backup::StepResult::Done => break,
                        rusqlite::backup::StepResult::More => continue,
                        _ => std::thread::sleep(std::time::Duration::from_millis(5)),
                    }
                }
            }
            let a: i64 = dst
                .query_row("SELECT applied FROM _paxosdb_meta WHERE id = 0", [], |r| {
                    r.get(0)
                })
                .map_err(sql_err)?;
            dst.close().map_err(|(_, e)| sql_err(e))?;
            a as u64
        };
        if applied != at as u64 {
            return Err(Error::Internal(format!(
                "SQL export: the copy holds applied index {applied}, its read transaction \
                 began at {at}"
            )));
        }
        src.execute_batch("COMMIT").map_err(sql_err)?;
        drop(src);
        let mut file = std::fs::File::open(&work.0)?;
        let mut whole = crc32fast::Hasher::new();
        let (mut seq, mut total) = (0u64, 0u64);
        loop {
            let mut buf = vec![0u8; CHUNK_BYTES];
            let mut len = 0;
            while len < CHUNK_BYTES {
                let r = file.read(&mut buf[len..])?;
                if r == 0 {
                    break;
                }
                len += r;
            }
            if len == 0 {
                break;
            }
            buf.truncate(len);
            whole.update(&buf);
            total += len as u64;
            sink(SqlPart::Chunk(SqlChunk::seal(seq, buf)))?;
            seq += 1;
        }
        sink(SqlPart::End(SqlEnd {
            applied,
            chunks: seq,
            bytes: total,
            file_crc: whole.finalize(),
        }))
    }
}

/// The receiving side of one transfer (see the module docs).
pub struct SqlImporter {
    dir: PathBuf,
    file: std::fs::File,
    next_seq: u64,
    bytes: u64,
    crc: crc32fast::Hasher,
}

impl SqlStore {
    /// Starts receiving a state (see [`SqlReader::importer`]).
    pub fn importer(&self) -> Result<SqlImporter> {
        self.reader().importer()
    }
}

impl SqlReader {
    /// Starts receiving a state into `staged.sqlite.part` (forgets any earlier staged or
    /// unfinished state). The live database is untouched. (On the reader, which any
    /// thread may hold: the transfer runs beside the node thread, which owns the store.)
    pub fn importer(&self) -> Result<SqlImporter> {
        let dir = self.shared.dir.clone();
        remove_with_sidecars(&dir.join(STAGED))?;
        remove_with_sidecars(&dir.join(STAGED_PART))?;
        let file = std::fs::File::create(dir.join(STAGED_PART))?;
        Ok(SqlImporter {
            dir,
            file,
            next_seq: 0,
            bytes: 0,
            crc: crc32fast::Hasher::new(),
        })
    }
}

impl SqlStore {
    /// Replaces the live database by the completely staged one (see the module docs for
    /// the steps and why a crash at any of them leaves the old or the new state) and
    /// returns the new applied index. Fails, changing nothing, when no complete staged
    /// state exists.
    pub fn install_staged(&mut self) -> Result<u64> {
        let dir = self.shared.dir.clone();
        let staged = dir.join(STAGED);
        if !staged.exists() {
            return Err(Error::Internal(
                "install of a SQL state, but no complete staged state exists".into(),
            ));
        }
        let next = self.gen + 1;
        std::fs::rename(&staged, db_path(&dir, next))?;
        sync_dir(&dir)?;
        self.crash_point(InstallStep::Renamed)?;
        let tmp = dir.join("CURRENT.tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(format!("{next}\n").as_bytes())?;
            f.sync_all()?;
        }
        self.crash_point(InstallStep::PointerWritten)?;
        std::fs::rename(&tmp, dir.join(super::store::CURRENT))?;
        sync_dir(&dir)?;
        self.crash_point(InstallStep::Switched)?;
        let old = self.gen;
        // CURRENT names the installed database now: a failure from here on cannot be
        // reported as "nothing changed" (the node would go on applying onto the old
        // connection while a restart opens the new database). Loading it either works or
        // stops the node; the restart loads it.
        let applied = match self.open_installed(next) {
            Ok(applied) => applied,
            Err(e) => panic!("the installed SQL state could not be opened: {e}; restart the node"),
        };
        self.crash_point(InstallStep::Reopened)?;
        // Best effort: a leftover generation is removed at the next open.
        if let Err(e) = remove_with_sidecars(&db_path(&dir, old)) {
            tracing::warn!("removing the replaced SQL database failed: {e}");
        }
        Ok(applied)
    }

    /// Switches the apply connection to generation `next` and reads its applied index.
    fn open_installed(&mut self, next: u64) -> Result<u64> {
        let (conn, guard) = open_apply(&db_path(&self.shared.dir, next), &self.shared.limits)?;
        self.conn = conn;
        self.guard = guard;
        self.gen = next;
        let applied = self
            .guard
            .trusted(|| {
                self.conn
                    .query_row("SELECT applied FROM _paxosdb_meta WHERE id = 0", [], |r| {
                        r.get::<_, i64>(0)
                    })
            })
            .map_err(sql_err)? as u64;
        self.install_done(applied);
        Ok(applied)
    }

    #[cfg(test)]
    fn crash_point(&self, step: InstallStep) -> Result<()> {
        if self.crash_after == Some(step) {
            return Err(Error::Internal(format!("simulated crash after {step:?}")));
        }
        Ok(())
    }

    #[cfg(not(test))]
    fn crash_point(&self, _step: InstallStep) -> Result<()> {
        Ok(())
    }
}

/// The steps of [`SqlStore::install_staged`], in order (tests stop after each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstallStep {
    /// `staged.sqlite` renamed to the next generation's file.
    Renamed,
    /// `CURRENT.tmp` written and synced.
    PointerWritten,
    /// `CURRENT` names the new generation (the commit point).
    Switched,
    /// The store runs on the new database; the old one's files still exist.
    Reopened,
}

fn remove_with_sidecars(path: &Path) -> Result<()> {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut p = path.to_path_buf().into_os_string();
        p.push(suffix);
        match std::fs::remove_file(PathBuf::from(p)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

impl SqlImporter {
    /// Verifies (CRC, order) and appends one chunk.
    pub fn chunk(&mut self, c: SqlChunk) -> Result<()> {
        c.verify()?;
        if c.seq != self.next_seq {
            return Err(Error::invalid(format!(
                "SQL state chunk {} arrived out of order: chunk {} was expected",
                c.seq, self.next_seq
            )));
        }
        self.file.write_all(&c.bytes)?;
        self.crc.update(&c.bytes);
        self.bytes += c.bytes.len() as u64;
        self.next_seq += 1;
        Ok(())
    }

    /// Verifies the totals and the copy itself, makes it durable as `staged.sqlite` and
    /// returns its applied index. The live database is unchanged.
    pub fn finish(self, end: SqlEnd) -> Result<u64> {
        if end.chunks != self.next_seq || end.bytes != self.bytes {
            return Err(Error::invalid(format!(
                "SQL state transfer ends after {} chunks ({} bytes) but {} chunks ({} bytes) arrived",
                end.chunks, end.bytes, self.next_seq, self.bytes
            )));
        }
        let crc = self.crc.finalize();
        if crc != end.file_crc {
            return Err(Error::Storage(format!(
                "SQL state transfer CRC mismatch: the sender's is {:#010x}, the received file's {crc:#010x}",
                end.file_crc
            )));
        }
        self.file.sync_all()?;
        drop(self.file);
        let part = self.dir.join(STAGED_PART);
        let applied = check_copy(&part, &SqlLimits::default())?;
        if applied != end.applied {
            return Err(Error::invalid(format!(
                "SQL state transfer ends with applied index {} but the copy holds {applied}",
                end.applied
            )));
        }
        std::fs::rename(&part, self.dir.join(STAGED))?;
        sync_dir(&self.dir)?;
        Ok(applied)
    }
}

/// Opens a received copy: SQLite's quick check, and its applied index. Leaves it a single
/// file (in WAL mode, checkpointed, without `-wal`/`-shm`).
fn check_copy(path: &Path, limits: &SqlLimits) -> Result<u64> {
    let applied = {
        let (conn, guard) = open_apply(path, limits)?;
        let (check, applied) = guard
            .trusted(|| -> rusqlite::Result<(String, i64)> {
                let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
                let applied =
                    conn.query_row("SELECT applied FROM _paxosdb_meta WHERE id = 0", [], |r| {
                        r.get(0)
                    })?;
                conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
                Ok((check, applied))
            })
            .map_err(|e| Error::Storage(format!("the received SQL state is unusable: {e}")))?;
        if check != "ok" {
            return Err(Error::Storage(format!(
                "the received SQL state fails SQLite's check: {check}"
            )));
        }
        conn.close().map_err(|(_, e)| sql_err(e))?;
        applied as u64
    };
    for suffix in ["-wal", "-shm"] {
        let mut p = path.to_path_buf().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
    std::fs::File::open(path)?.sync_all()?;
    Ok(applied)
}
