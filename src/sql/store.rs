//! The SQL state machine: one SQLite database per node, changed only by [`SqlStore::apply`]
//! of decided log entries, read by [`SqlReader`] from any thread.
//!
//! # Layout
//!
//! The store owns a directory (the node's `<data-dir>/sql/`):
//!
//! - `CURRENT`: the generation `g` of the live database (decimal text), switched by an
//!   atomic rename when a state transfer is installed ([`super::snapshot`]);
//! - `db-<g>.sqlite` (+ SQLite's `-wal`, `-shm`): the live database, in WAL mode with
//!   `synchronous=NORMAL`;
//! - `staged.sqlite`: a complete, verified state received from a peer, not yet installed;
//!   `staged.sqlite.part`, `export-*.tmp`: work files, removed at open.
//!
//! # Durability
//!
//! The replicated log is the durable record. A commit of the apply connection is not
//! synced (`synchronous=NORMAL`): after an OS crash the database is the state after some
//! earlier entry, whole, and the core replays the log from [`SqlStore::applied_index`].
//! Before the core trims its log it calls [`SqlStore::flush`], which makes everything
//! applied durable and returns that index; entries up to it are never needed again.
//!
//! An entry without SQL writes only advances the applied index in memory (no SQLite
//! write); the next write, [`SqlStore::flush`] or a membership change persists it. After a
//! crash such entries are replayed, which changes nothing.
//!
//! # Apply
//!
//! `apply(index, writes)` runs all writes of one entry in ONE SQLite transaction together
//! with their session records ([`super::session`]) and the new applied index. Per request:
//! `last_insert_rowid()` and `changes()` are reset (so they do not depend on what this
//! connection ran before a restart); with `transaction: true` the request runs inside a
//! savepoint and one failed statement rolls the whole request back (every result then
//! carries an error); without it every statement runs in its own savepoint (a failed
//! statement changes nothing, the others stand).
//!
//! A few SQLite errors roll back the *whole* SQLite transaction, not just the statement:
//! an interrupted write (the step budget), `INSERT OR ROLLBACK`, `RAISE(ROLLBACK, ..)`.
//! Apply then runs the entry again from its start with that statement marked failed
//! (without running it); every replica does the same, so the outcome is deterministic.
//! Each rerun marks one more statement, so reruns are bounded by the statements in the
//! entry.
//!
//! The user statements of one entry may grow the database by at most
//! [`SqlLimits::max_entry_growth_bytes`] (SQLite's `max_page_count`; a step budget alone
//! would let one small request write terabytes of `zeroblob`s). `SQLITE_FULL` is a fault
//! of the node (the entry is not applied, `apply` fails) unless the disk has room: then
//! it is that cap or an `AUTOINCREMENT` table out of rowids, a statement error like any
//! other. One known gap: a rowid table whose largest rowid is
//! 9223372036854775807 makes SQLite pick random rowids for new rows (its own PRNG), which
//! differ between nodes; paxosdb does not detect this.
//!
//! # Rights at apply
//!
//! A write carries the user it runs as ([`SqlWrite::user`]). Before a write runs (not
//! for a retry answered from its session), apply checks that user against the user
//! table *as of the write's entry* — right after the key-value commands of that entry,
//! which the node applies first — through a [`UserTable`] (the key-value store, which
//! keeps the users): the user must exist, be enabled, have the readwrite role and no key
//! prefix ([`crate::auth::Identity::permits_sql`]). A write refused there is
//! [`SqlOutcome::Denied`]: none of its statements run, its session remembers the
//! refusal, and every replica decides the same.
//!
//! The SQL store cannot simply read the key-value store's current users: each store has
//! its own applied index, and after a crash between their commits this store replays
//! entries the key-value store applied already, maybe with user changes after them. So:
//!
//! - the key-value store records, in the batch of every entry that changes users, those
//!   users as they were before it (one record, the last such entry's, with the index of
//!   the change before it: `KvStore::user_after`), and answers "as of entry `i`" by
//!   undoing that last change when it came after `i`;
//! - this store commits every entry that changed users *synced* (a [`SqlStore::flush`]
//!   once the entry is applied, even one without SQL writes) before `apply_checked`
//!   returns, so before the key-value store applies the next entry. After any crash, the
//!   entries this store replays therefore hold at most one user change — the last one,
//!   which the record undoes. (A state transfer sends the key-value state first and the
//!   SQL state after it, taken later, so it is at most the same one entry behind.) A
//!   question the record cannot answer (two changes after `i`) is an error that stops
//!   the node, never a guess.
//!
//! An apply at an index other than `applied_index()` is refused with
//! [`Error::Internal`] (a replay must start exactly at `applied_index()`; indexes below it
//! are already applied and are never applied twice).
//!
//! # Reads
//!
//! [`SqlReader`] (cheap to clone, `Send + Sync`) keeps a small pool (at most
//! [`MAX_READERS`]) of read-only connections. WAL mode lets them read the last committed
//! state while the apply connection writes. A query runs in one read transaction (all its
//! statements see the same state) and reports the applied index of that state. Statements
//! that could write are refused before anything runs.
//!
//! # Invariants
//!
//! - After a crash, the database is the state after exactly `applied_index()` entries
//!   (entries are applied whole or not at all; the index is in the same transaction).
//! - Apply reads only the database, the entry and the user table as of the entry; its
//!   limits ([`SqlLimits`]) are the same constants on every node.
//! - User statements never reach the internal `_paxosdb_*` tables (see `exec`).
//! - A write that names a user runs only if that user may write SQL in the user table as
//!   of its entry (*Rights at apply*); the answer is the same on every replica and in a
//!   replay after a crash, because every entry that changed users is committed synced
//!   here before the key-value store applies the next entry.
//! - A query never changes the database (read-only connections, read-only statements).
//! - Nothing a user statement does can make the entry's COMMIT fail (no deferred
//!   constraint is enforced there: foreign keys are off, as in SQLite by default), so an
//!   apply fails only for a fault of the node (disk, corruption).

use super::exec::{self, error_result, Guard, Role};
use super::session::SqlRecords;
use super::{QueryOutput, Request, SqlLimits, StatementResult};
use crate::error::{Error, Result};
use crate::membership::Membership;
use crate::session::{self, Decision, EntrySessions};
use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Most read connections open at once; further queries wait for one.
pub const MAX_READERS: usize = 8;

/// One SQL write of a log entry: the client's session and its (already deterministic)
/// request. `client_id == 0` means no session (applied without at-most-once protection).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SqlWrite {
    pub client_id: u64,
    pub seq: u64,
    pub request: Request,
    /// The user the write runs as (`None`: no user, while the cluster has none, or
    /// the embedding program): apply checks this user's rights against the user table
    /// as of the entry ([`UserTable`]).
    #[serde(default)]
    pub user: Option<String>,
}

/// The replicated user table as the SQL store checks a write's rights against it (the
/// key-value store keeps it; see *Rights at apply* in the module docs).
pub trait UserTable: Send {
    /// User `name` as the table was right after the key-value commands of the entry at
    /// `index` (`None`: no such user). Called only while that entry is being applied.
    fn user_after(&self, index: u64, name: &str) -> Result<Option<crate::auth::UserRecord>>;
    /// True when the entry at `index` changed the user table: the SQL store then commits
    /// the entry synced, before the key-value store applies the next entry.
    fn changed_users_at(&self, index: u64) -> Result<bool>;
}

/// The outcome of one [`SqlWrite`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SqlOutcome {
    /// The request ran (or this is its remembered outcome): one result per statement,
    /// failed statements carrying their error.
    Results(Vec<StatementResult>),
    /// Refused as a whole, nothing changed (the request is not valid here). An API
    /// reports it as `Error::InvalidInput`.
    Rejected(String),
    /// Its outcome is no longer known (an older sequence number; a result too large to
    /// remember). An API reports it as `Error::OutcomeUnknown`.
    Superseded(String),
    /// Refused, nothing changed: the session's seq already named another request. An API
    /// reports it as `Error::SessionReused`. (Last: older encodings keep their numbers.)
    SessionReused(String),
    /// Not run: the user it runs as may not write SQL (any more) at this entry. Nothing
    /// changed. An API reports it as `Error::PermissionDenied`.
    Denied(String),
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS _paxosdb_meta (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    applied INTEGER NOT NULL,
    membership BLOB
);
INSERT OR IGNORE INTO _paxosdb_meta (id, applied, membership) VALUES (0, 0, NULL);
CREATE TABLE IF NOT EXISTS _paxosdb_sessions (
    client_id INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL,
    last_index INTEGER NOT NULL,
    fingerprint INTEGER NOT NULL,
    outcome BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS _paxosdb_sessions_by_use ON _paxosdb_sessions (last_index, client_id);
CREATE TABLE IF NOT EXISTS _paxosdb_reset (id INTEGER PRIMARY KEY);
";

/// Resets `last_insert_rowid()` to 0 and `changes()` to 1 at the start of a request.
const RESET: &str = "INSERT OR REPLACE INTO _paxosdb_reset (id) VALUES (0)";

pub(crate) const CURRENT: &str = "CURRENT";

pub(crate) fn db_path(dir: &Path, gen: u64) -> PathBuf {
    dir.join(format!("db-{gen}.sqlite"))
}

pub(crate) fn sql_err(e: rusqlite::Error) -> Error {
    Error::Storage(format!("sqlite: {e}"))
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// What the apply connection and the readers share.
pub(crate) struct Shared {
    pub dir: PathBuf,
    pub limits: SqlLimits,
    /// The live generation and the applied index readers may report for it.
    live: Mutex<Live>,
    pool: Mutex<Pool>,
    freed: Condvar,
}

#[derive(Clone, Copy)]
struct Live {
    gen: u64,
    applied: u64,
}

struct Pool {
    idle: Vec<ReadConn>,
    open: usize,
}

struct ReadConn {
    gen: u64,
    conn: Connection,
    guard: Arc<Guard>,
}

impl Shared {
    pub(crate) fn live_gen(&self) -> u64 {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).gen
    }

    fn set_live(&self, gen: u64, applied: u64) {
        *self.live.lock().unwrap_or_else(|e| e.into_inner()) = Live { gen, applied };
    }
}

/// The SQL state machine (see the module docs). Owned by the apply thread.
pub struct SqlStore {
    pub(crate) shared: Arc<Shared>,
    pub(crate) conn: Connection,
    pub(crate) guard: Arc<Guard>,
    pub(crate) gen: u64,
    applied: u64,
    /// Test builds only: make `install_staged` stop (as if the node crashed) right after
    /// the given step.
    #[cfg(test)]
    pub(crate) crash_after: Option<super::snapshot::InstallStep>,
}

/// Reads the SQL state from any thread (see the module docs).
#[derive(Clone)]
pub struct SqlReader {
    pub(crate) shared: Arc<Shared>,
}

enum Attempt {
    Done(Vec<SqlOutcome>),
    /// SQLite rolled back the entry's transaction at (write, statement): run the entry
    /// again with that statement failed by this message.
    Poisoned((usize, usize), String),
}

enum Run {
    Done(Vec<StatementResult>),
    Poisoned(usize, String),
}

enum One {
    Ok(StatementResult),
    Failed(String),
    Poisoned(String),
}

impl SqlStore {
    /// Opens (or creates) the store in `dir` with the default limits, resuming from its
    /// stored applied index. Work files of an unfinished transfer or export are removed.
    pub fn open(dir: &Path) -> Result<SqlStore> {
        SqlStore::open_with(dir, SqlLimits::default())
    }

    /// [`SqlStore::open`] with explicit limits. Every replica must use the same limits
    /// (apply checks them); only tests use anything but the default.
    pub fn open_with(dir: &Path, limits: SqlLimits) -> Result<SqlStore> {
        std::fs::create_dir_all(dir)?;
        let gen = recover_dir(dir)?;
        let (conn, guard) = open_apply(&db_path(dir, gen), &limits)?;
        sync_dir(dir)?;
        let applied = read_applied(&conn, &guard)?;
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            limits,
            live: Mutex::new(Live { gen, applied }),
            pool: Mutex::new(Pool {
                idle: Vec::new(),
                open: 0,
            }),
            freed: Condvar::new(),
        });
        Ok(SqlStore {
            shared,
            conn,
            guard,
            gen,
            applied,
            #[cfg(test)]
            crash_after: None,
        })
    }

    /// Number of log entries applied (the next entry to apply has this index).
    pub fn applied_index(&self) -> u64 {
        self.applied
    }

    /// A handle for queries and exports from other threads.
    pub fn reader(&self) -> SqlReader {
        SqlReader {
            shared: self.shared.clone(),
        }
    }

    /// Runs read-only `req` (see [`SqlReader::query`]).
    pub fn query(&self, req: &Request) -> Result<QueryOutput> {
        self.reader().query(req)
    }

    fn expect_index(&self, index: u64, what: &str) -> Result<()> {
        if index != self.applied {
            return Err(Error::Internal(format!(
                "SQL {what} of entry {index} but {} entries are applied",
                self.applied
            )));
        }
        Ok(())
    }

    fn trusted_batch(&self, sql: &str) -> Result<()> {
        self.guard
            .trusted(|| self.conn.execute_batch(sql))
            .map_err(sql_err)
    }

    /// Applies the SQL writes of the log entry at `index` (which must be
    /// `applied_index()`), in one SQLite transaction with their session records and the
    /// applied index. One outcome per write. An `Err` is a fault of this node (disk,
    /// corruption), never a result: nothing of the entry was applied.
    ///
    /// Without a user table, a write that names a user is denied (its rights cannot be
    /// checked); see [`SqlStore::apply_checked`].
    pub fn apply(&mut self, index: u64, writes: &[SqlWrite]) -> Result<Vec<SqlOutcome>> {
        self.apply_checked(index, writes, None)
    }

    /// [`SqlStore::apply`], checking the rights of each write's user against `users` as
    /// of this entry (see *Rights at apply*). When `users` says the entry changed the
    /// user table, the entry is committed synced before this returns.
    pub fn apply_checked(
        &mut self,
        index: u64,
        writes: &[SqlWrite],
        users: Option<&dyn UserTable>,
    ) -> Result<Vec<SqlOutcome>> {
        self.expect_index(index, "apply")?;
        let out = self.apply_entry(index, writes, users)?;
        if let Some(users) = users {
            if users.changed_users_at(index)? {
                self.flush()?;
            }
        }
        Ok(out)
    }

    fn apply_entry(
        &mut self,
        index: u64,
        writes: &[SqlWrite],
        users: Option<&dyn UserTable>,
    ) -> Result<Vec<SqlOutcome>> {
        if writes.is_empty() {
            self.advance(index + 1);
            return Ok(Vec::new());
        }
        let mut poisoned: HashMap<(usize, usize), String> = HashMap::new();
        loop {
            match self.attempt(index, writes, &poisoned, users) {
                Ok(Attempt::Done(out)) => {
                    self.advance(index + 1);
                    return Ok(out);
                }
                Ok(Attempt::Poisoned(at, why)) => {
                    if poisoned.insert(at, why).is_some() {
                        return Err(Error::Internal(format!(
                            "entry {index}: statement {at:?} rolled back the transaction twice"
                        )));
                    }
                }
                Err(e) => {
                    if !self.conn.is_autocommit() {
                        let _ = self.trusted_batch("ROLLBACK");
                    }
                    return Err(e);
                }
            }
        }
    }

    /// After an install: the store now runs on generation `self.gen` at `applied`.
    pub(crate) fn install_done(&mut self, applied: u64) {
        self.advance(applied);
    }

    fn advance(&mut self, applied: u64) {
        self.applied = applied;
        self.shared.set_live(self.gen, applied);
    }

    fn attempt(
        &mut self,
        index: u64,
        writes: &[SqlWrite],
        poisoned: &HashMap<(usize, usize), String>,
        users: Option<&dyn UserTable>,
    ) -> Result<Attempt> {
        self.trusted_batch("BEGIN IMMEDIATE")?;
        self.cap_growth(Some(self.shared.limits.max_entry_growth_bytes))?;
        let mut sessions = EntrySessions::new(index);
        let mut out = Vec::with_capacity(writes.len());
        for (wi, w) in writes.iter().enumerate() {
            let fp = session::fingerprint(&w.request);
            let decision = if w.client_id == 0 {
                Decision::Run
            } else {
                sessions.decide(&mut self.records(), w.client_id, w.seq, fp)?
            };
            let ran = matches!(decision, Decision::Run);
            let outcome = match decision {
                Decision::Answer(o) | Decision::Trimmed(o) => o,
                Decision::Run => match permitted(index, w.user.as_deref(), users)? {
                    Some(why) => SqlOutcome::Denied(why),
                    None => match self.shared.limits.check_request(&w.request) {
                        // Deterministic on every replica: the same refusal, nothing changed.
                        Err(Error::InvalidInput(why) | Error::TooLarge(why)) => {
                            SqlOutcome::Rejected(why)
                        }
                        Err(e) => return Err(e),
                        Ok(()) => match self.run_request(wi, &w.request, poisoned)? {
                            Run::Done(results) => SqlOutcome::Results(results),
                            Run::Poisoned(si, why) => return Ok(Attempt::Poisoned((wi, si), why)),
                        },
                    },
                },
            };
            if w.client_id != 0 && ran {
                sessions.ran(&mut self.records(), w.client_id, w.seq, fp, &outcome)?;
            }
            out.push(outcome);
        }
        // paxosdb's own records never hit the users' cap.
        self.cap_growth(None)?;
        sessions.finish(&mut self.records())?;
        self.guard
            .trusted(|| -> rusqlite::Result<()> {
                self.conn
                    .prepare_cached("UPDATE _paxosdb_meta SET applied = ?1 WHERE id = 0")?
                    .execute([(index + 1) as i64])?;
                Ok(())
            })
            .map_err(sql_err)?;
        self.trusted_batch("COMMIT")?;
        Ok(Attempt::Done(out))
    }

    /// Lets the database grow by at most `bytes` from now on (`None`: no cap). A write
    /// over the cap fails with `SQLITE_FULL`, the same on every node: page counts are
    /// equal on replicas at equal applied indexes (a transfer copies pages as they are).
    fn cap_growth(&self, bytes: Option<u64>) -> Result<()> {
        self.guard
            .trusted(|| -> rusqlite::Result<()> {
                let max = match bytes {
                    Some(b) => {
                        let pages: i64 =
                            self.conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
                        let size: i64 =
                            self.conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
                        pages.saturating_add((b / size.max(1) as u64).max(1) as i64)
                    }
                    None => 0xffff_fffe,
                };
                self.conn
                    .query_row(&format!("PRAGMA max_page_count = {max}"), [], |_| Ok(()))
            })
            .map_err(sql_err)
    }

    /// Test builds only: how many session records the store holds.
    #[cfg(test)]
    pub(crate) fn session_records(&self) -> Result<usize> {
        self.guard
            .trusted(|| {
                self.conn
                    .query_row("SELECT count(*) FROM _paxosdb_sessions", [], |r| {
                        r.get::<_, i64>(0)
                    })
            })
            .map(|n| n as usize)
            .map_err(sql_err)
    }

    /// The session records of this store, in the apply connection's open transaction.
    fn records(&self) -> SqlRecords<'_> {
        SqlRecords {
            conn: &self.conn,
            guard: &self.guard,
        }
    }

    fn run_request(
        &mut self,
        wi: usize,
        req: &Request,
        poisoned: &HashMap<(usize, usize), String>,
    ) -> Result<Run> {
        self.trusted_batch(RESET)?;
        let n = req.statements.len();
        let mut results = Vec::with_capacity(n);
        if req.transaction {
            self.trusted_batch("SAVEPOINT paxosdb_request")?;
            let mut failed = None;
            for (si, st) in req.statements.iter().enumerate() {
                match self.run_one(wi, si, st, poisoned)? {
                    One::Ok(r) => results.push(r),
                    One::Failed(why) => {
                        failed = Some((si, why));
                        break;
                    }
                    One::Poisoned(why) => return Ok(Run::Poisoned(si, why)),
                }
            }
            match failed {
                None => self.trusted_batch("RELEASE paxosdb_request")?,
                Some((fi, why)) => {
                    self.trusted_batch("ROLLBACK TO paxosdb_request; RELEASE paxosdb_request")?;
                    results = (0..n)
                        .map(|i| {
                            error_result(if i == fi {
                                why.clone()
                            } else {
                                format!(
                                    "not applied: statement {fi} of this transaction failed \
                                     ({why}), so the whole request was rolled back"
                                )
                            })
                        })
                        .collect();
                }
            }
        } else {
            for (si, st) in req.statements.iter().enumerate() {
                self.trusted_batch("SAVEPOINT paxosdb_statement")?;
                match self.run_one(wi, si, st, poisoned)? {
                    One::Ok(r) => {
                        self.trusted_batch("RELEASE paxosdb_statement")?;
                        results.push(r);
                    }
                    One::Failed(why) => {
                        self.trusted_batch(
                            "ROLLBACK TO paxosdb_statement; RELEASE paxosdb_statement",
                        )?;
                        results.push(error_result(why));
                    }
                    One::Poisoned(why) => return Ok(Run::Poisoned(si, why)),
                }
            }
        }
        Ok(Run::Done(results))
    }

    fn run_one(
        &mut self,
        wi: usize,
        si: usize,
        st: &super::Statement,
        poisoned: &HashMap<(usize, usize), String>,
    ) -> Result<One> {
        if let Some(why) = poisoned.get(&(wi, si)) {
            return Ok(One::Failed(why.clone()));
        }
        let mut r = exec::run_statement(&self.conn, &self.guard, st, &self.shared.limits);
        if let Err(f) = &mut r {
            // SQLITE_FULL also means "this AUTOINCREMENT table has used its last rowid",
            // the same on every node: a result, not a fault, while the disk has room.
            if f.code == Some(rusqlite::ErrorCode::DiskFull) && disk_has_room(&self.shared.dir) {
                f.message = format!(
                    "{}: the disk has room, but the entry would grow the database by more \
                     than {} bytes, or an AUTOINCREMENT table is out of rowids",
                    f.message, self.shared.limits.max_entry_growth_bytes
                );
                f.code = None;
            }
            if f.is_storage() {
                return Err(Error::Storage(format!("sqlite: {}", f.message)));
            }
        }
        if self.conn.is_autocommit() {
            // SQLite rolled back the whole transaction (see the module docs).
            let why = match r {
                Err(f) => f.message,
                Ok(_) => "the statement ended the transaction".into(),
            };
            return Ok(One::Poisoned(why));
        }
        Ok(match r {
            Ok(res) => One::Ok(res),
            Err(f) => One::Failed(f.message),
        })
    }

    /// Makes everything applied durable (a synced commit of the applied index, then a
    /// checkpoint attempt that keeps the WAL short) and returns the durable applied index:
    /// the core may trim its log up to it.
    pub fn flush(&mut self) -> Result<u64> {
        let applied = self.applied;
        self.guard
            .trusted(|| -> rusqlite::Result<()> {
                self.conn.execute_batch("PRAGMA synchronous = FULL")?;
                let r = self.conn.execute_batch(&format!(
                    "BEGIN IMMEDIATE; UPDATE _paxosdb_meta SET applied = {applied} WHERE id = 0; \
                     COMMIT;"
                ));
                if r.is_err() && !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                self.conn.execute_batch("PRAGMA synchronous = NORMAL")?;
                r?;
                self.conn
                    .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            })
            .map_err(sql_err)?;
        Ok(applied)
    }

    /// The membership set by the last applied configuration change (`None`: the initial
    /// one, from the server's configuration).
    pub fn membership(&self) -> Result<Option<Membership>> {
        let bytes: Option<Vec<u8>> = self
            .guard
            .trusted(|| {
                self.conn.query_row(
                    "SELECT membership FROM _paxosdb_meta WHERE id = 0",
                    [],
                    |r| r.get(0),
                )
            })
            .map_err(sql_err)?;
        bytes
            .map(|b| {
                bincode::deserialize(&b)
                    .map_err(|e| Error::Storage(format!("corrupt membership record: {e}")))
            })
            .transpose()
    }

    /// Records the configuration change decided at `index` (which must be
    /// `applied_index()`) atomically with advancing the applied index past it.
    pub fn apply_membership(&mut self, index: u64, m: &Membership) -> Result<()> {
        self.expect_index(index, "membership change")?;
        let bytes = bincode::serialize(m)?;
        self.guard
            .trusted(|| -> rusqlite::Result<()> {
                self.conn.execute_batch("BEGIN IMMEDIATE")?;
                let r = self.conn.execute(
                    "UPDATE _paxosdb_meta SET membership = ?1, applied = ?2 WHERE id = 0",
                    rusqlite::params![bytes, (index + 1) as i64],
                );
                match r {
                    Ok(_) => self.conn.execute_batch("COMMIT"),
                    Err(e) => {
                        let _ = self.conn.execute_batch("ROLLBACK");
                        Err(e)
                    }
                }
            })
            .map_err(sql_err)?;
        self.advance(index + 1);
        Ok(())
    }

    /// Drops the recorded membership, durably (a restored backup seeds a new cluster, whose
    /// members come from its configuration; see `backup`).
    pub fn forget_membership(&mut self) -> Result<()> {
        self.guard
            .trusted(|| -> rusqlite::Result<()> {
                self.conn.execute_batch("PRAGMA synchronous = FULL")?;
                let r = self
                    .conn
                    .execute_batch("UPDATE _paxosdb_meta SET membership = NULL WHERE id = 0");
                self.conn.execute_batch("PRAGMA synchronous = NORMAL")?;
                r
            })
            .map_err(sql_err)
    }

    /// A deterministic digest of the user-visible state: the schema (without internal
    /// objects) and every user table's rows (with their rowids) in rowid or primary-key
    /// order. Equal on replicas that applied the same entries.
    pub fn digest(&self) -> Result<u64> {
        self.guard
            .trusted(|| digest_of(&self.conn))
            .map_err(sql_err)
    }
}

/// Why `user` may not write SQL at the entry at `index` (`None`: it may, or the write
/// runs as no user). Deterministic: it reads only the user table as of the entry.
fn permitted(
    index: u64,
    user: Option<&str>,
    users: Option<&dyn UserTable>,
) -> Result<Option<String>> {
    let Some(name) = user else {
        return Ok(None);
    };
    let Some(users) = users else {
        return Ok(Some(format!(
            "user {name}'s rights cannot be checked: this SQL store has no user table"
        )));
    };
    let rec = users.user_after(index, name)?;
    match crate::auth::Identity::permits_sql(name, rec.as_ref()) {
        Ok(()) => Ok(None),
        Err(Error::PermissionDenied(why)) => Ok(Some(why)),
        Err(e) => Err(e),
    }
}

/// True when the file system holding `dir` has at least 64 MiB free for SQLite.
fn disk_has_room(dir: &Path) -> bool {
    crate::storage::reserve::free_bytes(dir).is_ok_and(|free| free >= 64 << 20)
}

/// FNV-1a (64 bit) over tagged values.
struct Fnv(u64);

impl Fnv {
    fn bytes(&mut self, b: &[u8]) {
        for x in (b.len() as u64).to_le_bytes().iter().chain(b) {
            self.0 = (self.0 ^ u64::from(*x)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn value(&mut self, v: rusqlite::types::ValueRef<'_>) {
        use rusqlite::types::ValueRef as V;
        match v {
            V::Null => self.bytes(b"n"),
            V::Integer(i) => {
                self.bytes(b"i");
                self.bytes(&i.to_le_bytes());
            }
            V::Real(f) => {
                self.bytes(b"r");
                self.bytes(&f.to_bits().to_le_bytes());
            }
            V::Text(t) => {
                self.bytes(b"t");
                self.bytes(t);
            }
            V::Blob(b) => {
                self.bytes(b"b");
                self.bytes(b);
            }
        }
    }
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

pub(crate) fn digest_of(conn: &Connection) -> rusqlite::Result<u64> {
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    let user = "name NOT LIKE '\\_paxosdb\\_%' ESCAPE '\\' \
                AND tbl_name NOT LIKE '\\_paxosdb\\_%' ESCAPE '\\'";
    let mut tables = Vec::new();
    {
        let mut st = conn.prepare(&format!(
            "SELECT type, name, tbl_name, sql FROM sqlite_schema WHERE {user} \
             ORDER BY type, name"
        ))?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            for i in 0..4 {
                h.value(r.get_ref(i)?);
            }
            let (ty, name, sql): (String, String, Option<String>) =
                (r.get(0)?, r.get(1)?, r.get(3)?);
            let virtual_table = sql.as_deref().is_some_and(|s| {
                s.trim_start()
                    .to_ascii_uppercase()
                    .starts_with("CREATE VIRTUAL")
            });
            if ty == "table" && !virtual_table {
                tables.push(name);
            }
        }
    }
    for t in tables {
        h.bytes(t.as_bytes());
        let q = quote_ident(&t);
        let sql = match conn.prepare(&format!("SELECT _rowid_, * FROM {q} ORDER BY _rowid_")) {
            Ok(_) => format!("SELECT _rowid_, * FROM {q} ORDER BY _rowid_"),
            Err(_) => {
                // WITHOUT ROWID: order by the primary key.
                let mut pk: Vec<(i64, String)> = conn
                    .prepare("SELECT pk, name FROM pragma_table_info(?1) WHERE pk > 0")?
                    .query_map([&t], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<_>>()?;
                pk.sort();
                let order: Vec<String> = pk.iter().map(|(_, c)| quote_ident(c)).collect();
                format!("SELECT * FROM {q} ORDER BY {}", order.join(", "))
            }
        };
        let mut st = conn.prepare(&sql)?;
        let n = st.column_count();
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            for i in 0..n {
                h.value(r.get_ref(i)?);
            }
        }
    }
    Ok(h.0)
}

/// Reads `CURRENT` (creating it for a new store) and removes work files and databases of
/// other generations. Returns the live generation.
pub(crate) fn recover_dir(dir: &Path) -> Result<u64> {
    let current = dir.join(CURRENT);
    let gen = match std::fs::read_to_string(&current) {
        Ok(s) => s
            .trim()
            .parse::<u64>()
            .map_err(|_| Error::Storage(format!("{} is corrupt: {s:?}", current.display())))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let tmp = dir.join("CURRENT.tmp");
            std::fs::write(&tmp, "0\n")?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &current)?;
            sync_dir(dir)?;
            0
        }
        Err(e) => return Err(e.into()),
    };
    let live = format!("db-{gen}.sqlite");
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let stale_db = name.starts_with("db-") && !name.starts_with(&live);
        let work = name == "CURRENT.tmp"
            || name.starts_with("staged.sqlite.part")
            || name.starts_with("export-");
        if stale_db || work {
            std::fs::remove_file(dir.join(&name))?;
        }
    }
    Ok(gen)
}

/// Opens the apply connection: WAL, `synchronous=NORMAL`, foreign keys NOT enforced
/// (SQLite's and rqlite's default; enforced deferred keys would be checked at the entry's
/// COMMIT, where a user's violation would fail the whole apply), the
/// internal schema, the guard, and the clock- and randomness-free functions
/// ([`super::determinism`]).
pub(crate) fn open_apply(path: &Path, limits: &SqlLimits) -> Result<(Connection, Arc<Guard>)> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| Error::Storage(format!("open {}: {e}", path.display())))?;
    let guard = Guard::install(&conn, Role::Apply, limits);
    guard
        .trusted(|| -> rusqlite::Result<()> {
            let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(rusqlite::Error::UserFunctionError(
                    format!("WAL mode is not available ({mode})").into(),
                ));
            }
            conn.execute_batch(
                "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = OFF; \
                 PRAGMA journal_size_limit = 67108864;",
            )?;
            conn.execute_batch(&format!("BEGIN IMMEDIATE; {SCHEMA} COMMIT;"))
        })
        .map_err(sql_err)?;
    super::determinism::guard_apply_connection(&conn).map_err(sql_err)?;
    Ok((conn, guard))
}

fn read_applied(conn: &Connection, guard: &Guard) -> Result<u64> {
    guard
        .trusted(|| {
            conn.query_row("SELECT applied FROM _paxosdb_meta WHERE id = 0", [], |r| {
                r.get::<_, i64>(0)
            })
        })
        .map(|a| a as u64)
        .map_err(sql_err)
}

impl SqlReader {
    /// Runs the read-only `req` in one read transaction on a pooled read connection;
    /// returns the results and the applied index of the state they read. A statement that
    /// could write is not run: its result is an error saying so (as rqlite answers a write
    /// sent to its query endpoint); other failures are per-statement errors too.
    pub fn query(&self, req: &Request) -> Result<QueryOutput> {
        self.shared.limits.check_request(req)?;
        let mut live = *self.shared.live.lock().unwrap_or_else(|e| e.into_inner());
        let rc = match self.take(live.gen) {
            // The database was replaced by an install meanwhile: read the new one.
            Err(Error::Unavailable(_)) => {
                live = *self.shared.live.lock().unwrap_or_else(|e| e.into_inner());
                self.take(live.gen)?
            }
            r => r?,
        };
        let out = self.run_query(&rc, req, live);
        self.give_back(rc);
        out
    }

    fn run_query(&self, rc: &ReadConn, req: &Request, live: Live) -> Result<QueryOutput> {
        let writes: Vec<bool> = (req.statements.iter())
            .map(|st| exec::is_read_only(&rc.conn, &rc.guard, &st.sql) == Some(false))
            .collect();
        let stored = rc
            .guard
            .trusted(|| -> rusqlite::Result<i64> {
                rc.conn.execute_batch("BEGIN")?;
                rc.conn
                    .query_row("SELECT applied FROM _paxosdb_meta WHERE id = 0", [], |r| {
                        r.get(0)
                    })
            })
            .map_err(|e| {
                let _ = rc.guard.trusted(|| rc.conn.execute_batch("ROLLBACK"));
                sql_err(e)
            })? as u64;
        let results = (req.statements.iter().zip(writes))
            .map(|(st, write)| match write {
                true => StatementResult {
                    error: Some(
                        "this statement could change the database, which a query cannot; \
                         send it as an execute"
                            .into(),
                    ),
                    ..Default::default()
                },
                false => exec::run_statement(&rc.conn, &rc.guard, st, &self.shared.limits)
                    .unwrap_or_else(exec::Failure::into_result),
            })
            .collect();
        rc.guard
            .trusted(|| rc.conn.execute_batch("ROLLBACK"))
            .map_err(sql_err)?;
        // Entries applied after the last commit carried no SQL: the state read is also
        // the state after `live.applied` entries, when `live` is of this connection's
        // database.
        let applied = if rc.gen == live.gen {
            stored.max(live.applied)
        } else {
            stored
        };
        Ok(QueryOutput {
            results,
            applied_index: applied,
        })
    }

    /// Read connections open now (idle or in use).
    pub fn open_readers(&self) -> usize {
        self.shared
            .pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .open
    }

    fn take(&self, gen: u64) -> Result<ReadConn> {
        let mut pool = self.shared.pool.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(rc) = pool.idle.pop() {
                if rc.gen == gen {
                    return Ok(rc);
                }
                pool.open -= 1;
                continue;
            }
            if pool.open < MAX_READERS {
                pool.open += 1;
                drop(pool);
                let r = self.open_reader(gen);
                if r.is_err() {
                    self.shared
                        .pool
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .open -= 1;
                    self.shared.freed.notify_one();
                }
                return r;
            }
            pool = self
                .shared
                .freed
                .wait(pool)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    fn give_back(&self, rc: ReadConn) {
        let mut pool = self.shared.pool.lock().unwrap_or_else(|e| e.into_inner());
        if rc.gen == self.shared.live_gen() {
            pool.idle.push(rc);
        } else {
            pool.open -= 1;
        }
        drop(pool);
        self.shared.freed.notify_one();
    }

    fn open_reader(&self, gen: u64) -> Result<ReadConn> {
        let path = db_path(&self.shared.dir, gen);
        // Never SQLITE_OPEN_CREATE: a database replaced meanwhile must not reappear empty.
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| {
            Error::Unavailable(format!(
                "the SQL database was replaced while a query started ({e}); retry"
            ))
        })?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(sql_err)?;
        let guard = Guard::install(&conn, Role::Read, &self.shared.limits);
        Ok(ReadConn { gen, conn, guard })
    }
}
