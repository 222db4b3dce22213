//! Where the key-value store keeps its bytes: RocksDB (production) or memory (tests and
//! the simulation). Both offer the same three things: point reads, consistent read views
//! (a point-in-time snapshot for a multi-key read), and atomic multi-key writes.
//!
//! Two key spaces exist: [`Space::Kv`] for user data and [`Space::Sm`] for the state
//! machine's own metadata (applied index, revision, sessions).
//!
//! In RocksDB each space exists in two slots of column families (see
//! [`crate::storage::db`]); [`RocksSpaces`] resolves a space to the live slot's column
//! family. All clones of a [`Backend`] share the live slot, so every reader sees a
//! switch (`kv::staging`) as soon as it happened. A view resolves the slot once, together
//! with taking its snapshot, so it reads one consistent state even across a switch.

use crate::error::Result;
use crate::storage::db::{CF_KV, CF_KV_B, CF_SM, CF_SM_B};
use crate::storage::meta::Meta;
use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch, DB};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

/// A key space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    Kv,
    Sm,
}

/// One write of an atomic batch: `None` deletes.
pub type RawWrite = (Space, Vec<u8>, Option<Vec<u8>>);

/// The in-memory spaces. `Clone` gives a point-in-time copy (the simulation uses it to
/// model what survives a crash). Equality compares the live state only (`kv`, `sm`),
/// never a staged one.
#[derive(Clone, Debug, Default)]
pub struct MemSpaces {
    pub kv: BTreeMap<Vec<u8>, Vec<u8>>,
    pub sm: BTreeMap<Vec<u8>, Vec<u8>>,
    /// A state being received from a peer (see `kv::staging`).
    pub(super) staging: MemStaging,
    /// When `Some`, every atomic write ([`Backend::write`]) is also appended here, in
    /// order: the simulation's model of the write-ahead log, from which a machine crash
    /// keeps a prefix (see `sim::storage`). `None` (the default) records nothing.
    pub wal: Option<Vec<Vec<RawWrite>>>,
}

/// The memory backend's inactive slot.
#[derive(Clone, Debug, Default)]
pub(super) struct MemStaging {
    pub(super) kv: BTreeMap<Vec<u8>, Vec<u8>>,
    pub(super) sm: BTreeMap<Vec<u8>, Vec<u8>>,
    /// `Some(applied)` once the staged state is complete.
    pub(super) complete: Option<u64>,
    /// Import generation: bumped by a new import and by an install.
    pub(super) generation: u64,
}

impl PartialEq for MemSpaces {
    fn eq(&self, other: &Self) -> bool {
        self.kv == other.kv && self.sm == other.sm
    }
}

impl Eq for MemSpaces {}

impl MemSpaces {
    /// Applies one atomic batch of writes (what [`Backend::write`] does in memory, and
    /// what the simulation replays after a machine crash).
    pub fn apply_writes(&mut self, writes: Vec<RawWrite>) {
        for (space, k, v) in writes {
            let map = match space {
                Space::Kv => &mut self.kv,
                Space::Sm => &mut self.sm,
            };
            match v {
                Some(v) => map.insert(k, v),
                None => map.remove(&k),
            };
        }
    }

    fn space(&self, s: Space) -> &BTreeMap<Vec<u8>, Vec<u8>> {
        match s {
            Space::Kv => &self.kv,
            Space::Sm => &self.sm,
        }
    }
}

/// Called for each (key, value) of a scan; returns false to stop.
pub type Visitor<'a> = dyn FnMut(&[u8], &[u8]) -> Result<bool> + 'a;

/// A consistent, read-only view.
pub trait ReadView {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Visits keys of `space` from `start` in order until `f` returns false.
    fn scan_from(&self, space: Space, start: &[u8], f: &mut Visitor<'_>) -> Result<()>;
}

/// The store's bytes.
#[derive(Clone)]
pub enum Backend {
    Rocks(Arc<RocksSpaces>),
    Memory(Arc<RwLock<MemSpaces>>),
}

/// The node's RocksDB with the live slot of the state machine's column families.
pub struct RocksSpaces {
    pub(super) db: Arc<DB>,
    /// The live slot (0 = A, 1 = B). Write-locked only while a switch flips it, so that a
    /// view's snapshot and slot always belong together.
    pub(super) slot: RwLock<u8>,
    /// The import generation, bumped by a new import and by an install; held while
    /// staged data is written or installed, so a superseded importer cannot write.
    pub(super) import: Mutex<u64>,
    /// The background compaction of a cleared slot, joined on drop.
    pub(super) cleanup: Mutex<Option<JoinHandle<()>>>,
    /// Test builds only: make clearing the old slot after a switch fail.
    #[cfg(test)]
    pub(crate) fail_cleanup: std::sync::atomic::AtomicBool,
}

impl RocksSpaces {
    /// Reads the live slot ([`crate::storage::meta::MetaKey::LiveSlot`]).
    pub(super) fn open(db: Arc<DB>) -> Result<RocksSpaces> {
        let slot = Meta::of(&db).live_slot()?;
        Ok(RocksSpaces {
            db,
            slot: RwLock::new(slot),
            import: Mutex::new(0),
            cleanup: Mutex::new(None),
            #[cfg(test)]
            fail_cleanup: Default::default(),
        })
    }

    /// The live slot now.
    pub(super) fn live(&self) -> u8 {
        *self.slot.read().unwrap()
    }

    /// The column family of `space` in `slot`.
    pub(super) fn cf(&self, slot: u8, space: Space) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(cf_name(slot, space))
            .expect("column family exists")
    }
}

/// The column family holding `space` in `slot`.
pub(super) fn cf_name(slot: u8, space: Space) -> &'static str {
    match (slot, space) {
        (0, Space::Kv) => CF_KV,
        (0, Space::Sm) => CF_SM,
        (_, Space::Kv) => CF_KV_B,
        (_, Space::Sm) => CF_SM_B,
    }
}

impl Drop for RocksSpaces {
    fn drop(&mut self) {
        // Whoever reopens the database after dropping the store must find it closed.
        if let Some(h) = self.cleanup.get_mut().unwrap().take() {
            let _ = h.join();
        }
    }
}

struct RocksView<'a> {
    r: &'a RocksSpaces,
    slot: u8,
    snap: rocksdb::Snapshot<'a>,
}

impl ReadView for RocksView<'_> {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.snap.get_cf(self.r.cf(self.slot, space), key)?)
    }

    fn scan_from(&self, space: Space, start: &[u8], f: &mut Visitor<'_>) -> Result<()> {
        let mut opts = ReadOptions::default();
        opts.set_snapshot(&self.snap);
        let iter = self.r.db.iterator_cf_opt(
            self.r.cf(self.slot, space),
            opts,
            IteratorMode::From(start, Direction::Forward),
        );
        for item in iter {
            let (k, v) = item?;
            if !f(&k, &v)? {
                break;
            }
        }
        Ok(())
    }
}

impl ReadView for MemSpaces {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.space(space).get(key).cloned())
    }

    fn scan_from(&self, space: Space, start: &[u8], f: &mut Visitor<'_>) -> Result<()> {
        for (k, v) in self.space(space).range(start.to_vec()..) {
            if !f(k, v)? {
                break;
            }
        }
        Ok(())
    }
}

impl Backend {
    /// A point read outside any view (the applier's own reads, and a single key's read
    /// that needs nothing else to agree with it: `KvStore::get_value`).
    pub fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self {
            Backend::Rocks(r) => {
                // Holding the slot keeps a switch, and the clearing of the old slot after
                // it, from slipping between resolving the column family and reading.
                let slot = r.slot.read().unwrap();
                Ok(r.db.get_cf(r.cf(*slot, space), key)?)
            }
            Backend::Memory(m) => m.read().unwrap().get(space, key),
        }
    }

    /// Runs `f` on a consistent view of both spaces.
    pub fn view<R>(&self, f: impl FnOnce(&dyn ReadView) -> Result<R>) -> Result<R> {
        match self {
            Backend::Rocks(r) => f(&rocks_view(r)),
            Backend::Memory(m) => f(&*m.read().unwrap()),
        }
    }

    /// Like [`Backend::view`], but `f` may run long (and block) without holding up
    /// writers: the memory backend hands `f` a copy instead of holding its lock.
    pub fn detached_view<R>(&self, f: impl FnOnce(&dyn ReadView) -> Result<R>) -> Result<R> {
        match self {
            Backend::Rocks(r) => f(&rocks_view(r)),
            Backend::Memory(m) => {
                let copy = {
                    let m = m.read().unwrap();
                    MemSpaces {
                        kv: m.kv.clone(),
                        sm: m.sm.clone(),
                        staging: MemStaging::default(),
                        wal: None,
                    }
                };
                f(&copy)
            }
        }
    }

    /// Applies `writes` atomically (not synced: see the state machine docs).
    pub fn write(&self, writes: &[RawWrite]) -> Result<()> {
        match self {
            Backend::Rocks(r) => {
                // Holding the slot keeps a switch from slipping between resolving the
                // column families and writing.
                let slot = r.slot.read().unwrap();
                let mut batch = WriteBatch::default();
                for (space, k, v) in writes {
                    match v {
                        Some(v) => batch.put_cf(r.cf(*slot, *space), k, v),
                        None => batch.delete_cf(r.cf(*slot, *space), k),
                    }
                }
                Ok(r.db.write(batch)?)
            }
            Backend::Memory(m) => {
                let mut m = m.write().unwrap();
                if let Some(wal) = m.wal.as_mut() {
                    wal.push(writes.to_vec());
                }
                m.apply_writes(writes.to_vec());
                Ok(())
            }
        }
    }
}

/// A view of `r`'s live slot: the slot and the snapshot are taken under the slot lock, so
/// they agree; the lock is released before the view is used.
fn rocks_view(r: &RocksSpaces) -> RocksView<'_> {
    let guard = r.slot.read().unwrap();
    let snap = r.db.snapshot();
    RocksView {
        r,
        slot: *guard,
        snap,
    }
}
