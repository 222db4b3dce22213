//! The inactive slot of a [`Backend`]: where a state received from a peer is staged, and
//! the atomic switch that makes it live.
//!
//! Invariants:
//! - Staged data never touches the live slot; the live state changes only in
//!   [`Backend::install_staged`], by one synced write that flips the live slot and removes
//!   the staged-complete marker.
//! - The staged-complete marker (`storage::meta::MetaKey::Staged`, naming the staged slot and its applied
//!   index) is written, synced, only after all staged data is durable. Without it, staged
//!   data is never used, and opening the store discards it.
//! - Each import has a generation; starting another import or installing bumps it, and a
//!   write of an older generation is refused, so a forgotten importer cannot write into a
//!   slot that has become live or belongs to a newer import.
//! - After a switch the old slot is cleared by range tombstones (cheap) and compacted in
//!   the background (a view opened before the switch keeps reading it: both respect
//!   snapshots). That clean-up is best effort: once the live slot has flipped, an install
//!   never reports failure (the caller would carry on as if the old state were live); a
//!   slot left uncleared is cleared by the next import or the next open.

use super::backend::{cf_name, Backend, RocksSpaces, Space};
use crate::error::{Error, Result};
use crate::storage::meta::{Meta, MetaKey};
use rocksdb::{IteratorMode, WriteBatch, WriteOptions};

/// The import a staged write belongs to.
#[derive(Debug)]
pub(super) struct StageTarget {
    generation: u64,
    /// The RocksDB slot written (unused by the memory backend).
    slot: u8,
}

fn superseded() -> Error {
    Error::Unavailable("this import was superseded by a newer import or an install".into())
}

fn no_staged() -> Error {
    Error::InvalidInput("no completely staged state to install".into())
}

fn synced() -> WriteOptions {
    let mut o = WriteOptions::default();
    o.set_sync(true);
    o
}

impl RocksSpaces {
    fn meta(&self) -> Meta<'_> {
        Meta::of(&self.db)
    }

    /// The staged-complete marker: (slot, applied).
    fn marker(&self) -> Result<Option<(u8, u64)>> {
        self.meta().staged()
    }

    /// Adds to `batch` range deletions covering every key of `slot`'s column families.
    fn clear_slot(&self, slot: u8, batch: &mut WriteBatch) -> Result<bool> {
        let mut any = false;
        for space in [Space::Kv, Space::Sm] {
            let cf = self.cf(slot, space);
            // The end bound is just above the largest key, whatever the key size limit.
            if let Some(last) = self.db.iterator_cf(cf, IteratorMode::End).next() {
                let mut end = last?.0.into_vec();
                end.push(0);
                batch.delete_range_cf(cf, &[][..], &end[..]);
                any = true;
            }
        }
        Ok(any)
    }

    /// After a switch: clears the slot that was live (not synced: if lost, opening the
    /// store finds the inactive slot non-empty without a marker and clears it again).
    fn clear_old_slot(&self, slot: u8) -> Result<()> {
        #[cfg(test)]
        if self.fail_cleanup.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Error::Storage(
                "injected: clearing the old slot failed".into(),
            ));
        }
        let mut batch = WriteBatch::default();
        if self.clear_slot(slot, &mut batch)? {
            self.db.write(batch)?;
            self.compact_later(slot);
        }
        Ok(())
    }

    /// Compacts `slot`'s (cleared) column families in the background.
    fn compact_later(&self, slot: u8) {
        let db = self.db.clone();
        let mut cleanup = self.cleanup.lock().unwrap();
        let previous = cleanup.take();
        *cleanup = Some(std::thread::spawn(move || {
            if let Some(p) = previous {
                let _ = p.join();
            }
            for space in [Space::Kv, Space::Sm] {
                if let Some(cf) = db.cf_handle(cf_name(slot, space)) {
                    db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
                }
            }
        }));
    }
}

impl Backend {
    /// Starts a new import: forgets any earlier one (and its marker) and clears the
    /// inactive slot.
    pub(super) fn stage_begin(&self) -> Result<StageTarget> {
        match self {
            Backend::Rocks(r) => {
                let mut generation = r.import.lock().unwrap();
                *generation += 1;
                let slot = 1 - r.live();
                let mut batch = WriteBatch::default();
                r.meta().delete(&mut batch, MetaKey::Staged);
                r.clear_slot(slot, &mut batch)?;
                r.db.write(batch)?;
                Ok(StageTarget {
                    generation: *generation,
                    slot,
                })
            }
            Backend::Memory(m) => {
                let mut m = m.write().unwrap();
                let st = &mut m.staging;
                st.generation += 1;
                st.kv.clear();
                st.sm.clear();
                st.complete = None;
                Ok(StageTarget {
                    generation: st.generation,
                    slot: 1,
                })
            }
        }
    }

    /// Writes `pairs` into the staged `space` (not synced, not even logged: a crash
    /// loses them, and the missing marker then discards the rest).
    pub(super) fn stage_write(
        &self,
        t: &StageTarget,
        space: Space,
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<()> {
        match self {
            Backend::Rocks(r) => {
                let generation = r.import.lock().unwrap();
                if *generation != t.generation {
                    return Err(superseded());
                }
                let cf = r.cf(t.slot, space);
                let mut batch = WriteBatch::default();
                for (k, v) in pairs {
                    batch.put_cf(cf, k, v);
                }
                let mut opts = WriteOptions::default();
                opts.disable_wal(true);
                Ok(r.db.write_opt(batch, &opts)?)
            }
            Backend::Memory(m) => {
                let mut m = m.write().unwrap();
                let st = &mut m.staging;
                if st.generation != t.generation {
                    return Err(superseded());
                }
                let map = match space {
                    Space::Kv => &mut st.kv,
                    Space::Sm => &mut st.sm,
                };
                map.extend(pairs);
                Ok(())
            }
        }
    }

    /// A point read of the staged state.
    pub(super) fn stage_get(
        &self,
        t: &StageTarget,
        space: Space,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>> {
        match self {
            Backend::Rocks(r) => Ok(r.db.get_cf(r.cf(t.slot, space), key)?),
            Backend::Memory(m) => {
                let m = m.read().unwrap();
                let map = match space {
                    Space::Kv => &m.staging.kv,
                    Space::Sm => &m.staging.sm,
                };
                Ok(map.get(key).cloned())
            }
        }
    }

    /// Makes the staged data durable, then durably marks it complete with `applied`.
    pub(super) fn stage_complete(&self, t: &StageTarget, applied: u64) -> Result<()> {
        match self {
            Backend::Rocks(r) => {
                let generation = r.import.lock().unwrap();
                if *generation != t.generation {
                    return Err(superseded());
                }
                // The staged writes bypassed the WAL: flushing writes (and syncs) them.
                for space in [Space::Kv, Space::Sm] {
                    r.db.flush_cf(r.cf(t.slot, space))?;
                }
                let mut batch = WriteBatch::default();
                r.meta().put_staged(&mut batch, t.slot, applied);
                Ok(r.db.write_opt(batch, &synced())?)
            }
            Backend::Memory(m) => {
                let mut m = m.write().unwrap();
                if m.staging.generation != t.generation {
                    return Err(superseded());
                }
                m.staging.complete = Some(applied);
                Ok(())
            }
        }
    }

    /// Makes the completely staged state live in one atomic (synced) write and clears
    /// the old one. Fails, changing nothing, if no complete staged state exists.
    pub(super) fn install_staged(&self) -> Result<()> {
        match self {
            Backend::Rocks(r) => {
                let mut generation = r.import.lock().unwrap();
                let Some((slot, _)) = r.marker()? else {
                    return Err(no_staged());
                };
                let old = r.live();
                if slot == old {
                    return Err(Error::Storage(format!(
                        "the staged-state marker names the live slot {slot}"
                    )));
                }
                {
                    let mut live = r.slot.write().unwrap();
                    let mut batch = WriteBatch::default();
                    r.meta().put_live_slot(&mut batch, slot);
                    r.meta().delete(&mut batch, MetaKey::Staged);
                    r.db.write_opt(batch, &synced())?;
                    *live = slot;
                }
                *generation += 1;
                // The switch is done: from here nothing may be reported as a failed
                // install (the caller would go on as if the old state were live). Clearing
                // the old slot is best effort: the next import and the next open clear
                // it again.
                if let Err(e) = r.clear_old_slot(old) {
                    tracing::warn!(
                        slot = old,
                        "clearing the replaced state failed: {e}; the next state transfer \
                         or restart clears it"
                    );
                }
                Ok(())
            }
            Backend::Memory(m) => {
                let mut m = m.write().unwrap();
                let m = &mut *m;
                if m.staging.complete.is_none() {
                    return Err(no_staged());
                }
                std::mem::swap(&mut m.kv, &mut m.staging.kv);
                std::mem::swap(&mut m.sm, &mut m.staging.sm);
                m.staging.kv.clear();
                m.staging.sm.clear();
                m.staging.complete = None;
                m.staging.generation += 1;
                Ok(())
            }
        }
    }

    /// On open: discards staged data that was never marked complete.
    pub(super) fn discard_unfinished(&self) -> Result<()> {
        match self {
            Backend::Rocks(r) => {
                if r.marker()?.is_some() {
                    return Ok(());
                }
                let mut batch = WriteBatch::default();
                if r.clear_slot(1 - r.live(), &mut batch)? {
                    r.db.write(batch)?;
                    r.compact_later(1 - r.live());
                }
                Ok(())
            }
            Backend::Memory(m) => {
                let mut m = m.write().unwrap();
                if m.staging.complete.is_none() {
                    m.staging.kv.clear();
                    m.staging.sm.clear();
                }
                Ok(())
            }
        }
    }
}
