//! The SQL state machine of a simulated node, on real SQLite, and what a crash leaves
//! of it.
//!
//! Every simulated node runs the server's SQL store ([`SqlStore`] driven as the node's
//! second state machine by [`SqlMachine`]) beside its KV store, on real SQLite files in
//! a per-run temporary directory ([`RunDir`]; on `/dev/shm` when it exists, so fsyncs
//! cost nothing).
//!
//! # Durability model
//!
//! The SQL store's own rules (`sql::store`): its commits use `synchronous=NORMAL` in WAL
//! mode, so they are ordered but not synced; [`SqlStore::flush`] (the store's
//! `make_durable`, which the core calls before it trims its log), an installed state and
//! a completed staged copy are synced. SQLite and RocksDB are separate files with separate
//! write-ahead logs: what a power loss keeps of one says nothing about the other.
//!
//! A process crash keeps every SQLite commit (the OS still holds them). For a machine
//! crash, [`SqlDisk`] keeps, per node, a copy of the SQL directory as of its last sync
//! point and the journal of the SQL commits made since (each entry applied with SQL
//! writes, each membership record), and [`SqlDisk::machine_crash`] restores the copy and
//! replays a prefix of that journal drawn from the seed — none, all, or any prefix, as a
//! power loss leaves SQLite's ordered WAL — through the same `SqlMachine`, independently
//! of the prefix the KV store keeps of its own writes (see `storage`). So a restart
//! finds the two engines at different applied indexes, in either order: a crash between
//! the two engines' commits, which the core repairs by replaying only what each engine
//! has not applied (`machine::Machines`). The world counts such restarts.
//!
//! SQLite also syncs its WAL at an automatic checkpoint; the model ignores that (it may
//! lose more than a real power loss could, never less), which can only make a missing
//! flush easier to see.
//!
//! # Invariants
//!
//! - A replay applies the journaled commands at their indexes through `SqlMachine`, so
//!   it rebuilds exactly the commits it keeps (apply is deterministic).
//! - The live directory is only restored while no connection to it is open (the node's
//!   core and readers are gone).
//! - What a recovery found is a sync point (as the KV model has it).

use super::Bug;
use crate::error::Result as DbResult;
use crate::machine::{Command, Machine, Outcome, StateMachine};
use crate::membership::Membership;
use crate::sql::machine::SqlMachine;
use crate::sql::{SqlReader, SqlStore};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

static RUNS: AtomicU64 = AtomicU64::new(0);

/// A run's temporary directory, removed when dropped.
pub struct RunDir(pub PathBuf);

impl RunDir {
    pub fn new(seed: u64) -> RunDir {
        let base = std::env::var_os("PAXOSDB_SIM_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let shm = Path::new("/dev/shm");
                if shm.is_dir() {
                    shm.to_path_buf()
                } else {
                    std::env::temp_dir()
                }
            });
        let n = RUNS.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("paxosdb-sim-{}-{n}-{seed}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("the simulation's temporary directory");
        RunDir(dir)
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A SQL commit not yet synced.
enum Journaled {
    /// The entry at this index, applied with these (SQL) commands.
    Apply(u64, Vec<Command>),
    /// A membership record at this index.
    Membership(u64, Membership),
}

/// What a machine crash did to a node's SQL commits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SqlLoss {
    pub unsynced: usize,
    pub kept: usize,
    /// The index of the first commit lost, if one was.
    pub first_lost: Option<u64>,
}

/// A node's SQL directory and its durability model (see the module docs).
pub struct SqlDisk {
    /// The live directory the store runs on.
    pub live: PathBuf,
    /// Its copy as of the last sync point.
    synced: PathBuf,
    journal: Vec<Journaled>,
    /// Installed states that held SQL data (applied index > 0).
    pub installs: u64,
}

fn copy_dir(from: &Path, to: &Path, skip: impl Fn(&str) -> bool) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).expect("sim directory");
    for e in std::fs::read_dir(from).expect("sim directory") {
        let e = e.expect("sim directory");
        let name = e.file_name().to_string_lossy().into_owned();
        if !skip(&name) {
            std::fs::copy(e.path(), to.join(&name)).expect("sim file copy");
        }
    }
}

impl SqlDisk {
    pub fn new(run: &Path, id: u64) -> Arc<Mutex<SqlDisk>> {
        let live = run.join(format!("node-{id}"));
        let synced = run.join(format!("node-{id}-synced"));
        std::fs::create_dir_all(&live).expect("sim directory");
        std::fs::create_dir_all(&synced).expect("sim directory");
        Arc::new(Mutex::new(SqlDisk {
            live,
            synced,
            journal: Vec::new(),
            installs: 0,
        }))
    }

    /// Opens the store on the live directory.
    pub fn open(&self) -> SqlStore {
        SqlStore::open(&self.live).expect("the simulated SQL store opens")
    }

    /// A state was installed (a synced switch): counts it, and it is a sync point.
    pub fn installed(&mut self, applied: u64) {
        self.installs += u64::from(applied > 0);
        self.sync_point();
    }

    /// A synced write: everything committed so far is durable. Copies the live
    /// directory (without SQLite's shared-memory index, rebuilt at open).
    pub fn sync_point(&mut self) {
        self.journal.clear();
        copy_dir(&self.live, &self.synced, |n| n.ends_with("-shm"));
    }

    /// A completed staged copy was synced (`SqlImporter::finish`): it survives a machine
    /// crash; the live database's unsynced commits do not become durable by it.
    pub fn staged_synced(&mut self) {
        let staged = self.live.join("staged.sqlite");
        if staged.exists() {
            std::fs::copy(&staged, self.synced.join("staged.sqlite")).expect("sim file copy");
        }
    }

    /// A machine crash: the directory as of the last sync point, with the first
    /// `keep(count)` of the commits made since replayed. The node must be down.
    pub fn machine_crash(&mut self, keep: impl FnOnce(usize) -> usize) -> SqlLoss {
        let journal = std::mem::take(&mut self.journal);
        let unsynced = journal.len();
        let kept = keep(unsynced).min(unsynced);
        let first_lost = journal.get(kept).map(|j| match j {
            Journaled::Apply(i, _) | Journaled::Membership(i, _) => *i,
        });
        copy_dir(&self.synced, &self.live, |_| false);
        if kept > 0 {
            let mut m = SqlMachine::new(self.open());
            for j in journal.into_iter().take(kept) {
                let at = match &j {
                    Journaled::Apply(i, _) | Journaled::Membership(i, _) => *i,
                };
                while m.applied_index() < at {
                    m.apply(m.applied_index(), &[]).expect("replay");
                }
                match j {
                    Journaled::Apply(i, cmds) => {
                        let cmds: Vec<&Command> = cmds.iter().collect();
                        m.apply(i, &cmds).expect("replay");
                    }
                    Journaled::Membership(i, ms) => m.apply_membership(i, &ms).expect("replay"),
                }
            }
        }
        // What the recovery found is durable from now on.
        self.sync_point();
        SqlLoss {
            unsynced,
            kept,
            first_lost,
        }
    }
}

/// The node's SQL state machine: `SqlMachine` with its commits journaled and its synced
/// writes made sync points of the node's [`SqlDisk`], and the SQL bug injections.
pub struct SimSql {
    inner: SqlMachine,
    disk: Arc<Mutex<SqlDisk>>,
    /// Bug injection ([`Bug::NoMakeDurable`]): `make_durable` does nothing.
    no_make_durable: bool,
    /// Bug injection ([`Bug::SqlNoDedup`]): commands reach the store without their
    /// session, so a retried or re-proposed request applies again.
    no_dedup: bool,
}

impl SimSql {
    pub fn new(store: SqlStore, disk: Arc<Mutex<SqlDisk>>, bug: Option<Bug>) -> SimSql {
        SimSql {
            inner: SqlMachine::new(store),
            disk,
            no_make_durable: bug == Some(Bug::NoMakeDurable),
            no_dedup: bug == Some(Bug::SqlNoDedup),
        }
    }
}

impl StateMachine for SimSql {
    fn machine(&self) -> Machine {
        Machine::Sql
    }
    fn applied_index(&self) -> u64 {
        self.inner.applied_index()
    }
    fn apply(&mut self, index: u64, commands: &[&Command]) -> DbResult<Vec<Outcome>> {
        let owned: Vec<Command> = commands
            .iter()
            .map(|c| {
                let mut c = (*c).clone();
                if self.no_dedup {
                    (c.client_id, c.seq) = (0, 0);
                }
                c
            })
            .collect();
        let refs: Vec<&Command> = owned.iter().collect();
        let out = self.inner.apply(index, &refs)?;
        if !owned.is_empty() {
            let mut d = self.disk.lock().unwrap();
            d.journal.push(Journaled::Apply(index, owned));
        }
        Ok(out)
    }
    fn make_durable(&mut self) -> DbResult<()> {
        if self.no_make_durable {
            return Ok(());
        }
        self.inner.make_durable()?;
        self.disk.lock().unwrap().sync_point();
        Ok(())
    }
    fn install_staged(&mut self) -> DbResult<u64> {
        let applied = self.inner.install_staged()?;
        self.disk.lock().unwrap().installed(applied);
        Ok(applied)
    }
    fn membership(&self) -> DbResult<Option<Membership>> {
        self.inner.membership()
    }
    fn apply_membership(&mut self, index: u64, m: &Membership) -> DbResult<()> {
        self.inner.apply_membership(index, m)?;
        let mut d = self.disk.lock().unwrap();
        d.journal.push(Journaled::Membership(index, m.clone()));
        Ok(())
    }
}

/// A digest of a node's user-visible SQL state (schema and rows: `sql::store`'s digest),
/// read on a connection of its own.
pub fn digest(reader: &SqlReader) -> Result<u64, String> {
    let shared = &reader.shared;
    let path = crate::sql::store::db_path(&shared.dir, shared.live_gen());
    let conn = rusqlite::Connection::open_with_flags(
        &path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("open {}: {e}", path.display()))?;
    crate::sql::store::digest_of(&conn).map_err(|e| e.to_string())
}
