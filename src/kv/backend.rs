//! Where the key-value store keeps its bytes: RocksDB (production) or memory (tests and
//! the simulation). Both offer the same three things: point reads, consistent read views
//! (a point-in-time snapshot for a multi-key read), and atomic multi-key writes.
//!
//! Two key spaces exist: [`Space::Kv`] for user data and [`Space::Sm`] for the state
//! machine's own metadata (applied index, revision, sessions).

use crate::error::Result;
use crate::storage::db::{CF_KV, CF_SM};
use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch, DB};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// A key space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    Kv,
    Sm,
}

/// One write of an atomic batch: `None` deletes.
pub type RawWrite = (Space, Vec<u8>, Option<Vec<u8>>);

/// The in-memory spaces. `Clone` gives a point-in-time copy (the simulation uses it to
/// model what survives a crash).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemSpaces {
    pub kv: BTreeMap<Vec<u8>, Vec<u8>>,
    pub sm: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl MemSpaces {
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
    Rocks(Arc<DB>),
    Memory(Arc<RwLock<MemSpaces>>),
}

fn cf(db: &DB, s: Space) -> &rocksdb::ColumnFamily {
    let name = match s {
        Space::Kv => CF_KV,
        Space::Sm => CF_SM,
    };
    db.cf_handle(name).expect("column family exists")
}

struct RocksView<'a> {
    db: &'a DB,
    snap: rocksdb::Snapshot<'a>,
}

impl ReadView for RocksView<'_> {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.snap.get_cf(cf(self.db, space), key)?)
    }

    fn scan_from(&self, space: Space, start: &[u8], f: &mut Visitor<'_>) -> Result<()> {
        let mut opts = ReadOptions::default();
        opts.set_snapshot(&self.snap);
        let iter = self.db.iterator_cf_opt(
            cf(self.db, space),
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
    /// A point read outside any view (the applier's own reads).
    pub fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self {
            Backend::Rocks(db) => Ok(db.get_cf(cf(db, space), key)?),
            Backend::Memory(m) => m.read().unwrap().get(space, key),
        }
    }

    /// Runs `f` on a consistent view of both spaces.
    pub fn view<R>(&self, f: impl FnOnce(&dyn ReadView) -> Result<R>) -> Result<R> {
        match self {
            Backend::Rocks(db) => f(&RocksView {
                db,
                snap: db.snapshot(),
            }),
            Backend::Memory(m) => f(&*m.read().unwrap()),
        }
    }

    /// Applies `writes` atomically (not synced: see the state machine docs).
    pub fn write(&self, writes: Vec<RawWrite>) -> Result<()> {
        match self {
            Backend::Rocks(db) => {
                let mut batch = WriteBatch::default();
                for (space, k, v) in writes {
                    match v {
                        Some(v) => batch.put_cf(cf(db, space), k, v),
                        None => batch.delete_cf(cf(db, space), k),
                    }
                }
                Ok(db.write(batch)?)
            }
            Backend::Memory(m) => {
                let mut m = m.write().unwrap();
                for (space, k, v) in writes {
                    let map = match space {
                        Space::Kv => &mut m.kv,
                        Space::Sm => &mut m.sm,
                    };
                    match v {
                        Some(v) => map.insert(k, v),
                        None => map.remove(&k),
                    };
                }
                Ok(())
            }
        }
    }
}
