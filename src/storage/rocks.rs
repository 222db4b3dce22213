//! `omnipaxos::storage::Storage` on the node's RocksDB.
//!
//! Layout: [`CF_LOG`] maps a big-endian global index to a bincode [`LogEntry`];
//! the `meta` column family holds the Paxos metadata (keys: [`super::meta`]). The log bounds `[first, next)`
//! are stored in the same batches as the entries they describe.
//!
//! Invariants:
//! - every write, single operation or `write_atomically`, is one RocksDB `WriteBatch`
//!   written with `sync = true`: when a call returns, its effect survives a crash, and a
//!   failed call changed nothing (OmniPaxos relies on both). The one exception is
//!   `set_decided_idx` alone, which is derivable (see there) and not synced;
//! - the in-memory cache of metadata is replaced only after the batch is durable;
//! - except while the core defers the sync of its appends ([`RocksSync`]): then a batch of
//!   pure appends is written unsynced, and the core's `sync` (one WAL fsync) makes it
//!   durable before the core handles anything else (see `node`, "The leader sends, then
//!   syncs"). Any other batch is synced as always, and with it the appends before it (one
//!   ordered WAL).
//!
//! - no batch is written into the file system's reserve ([`super::reserve`]): under it the
//!   write is refused (changing nothing) and the node stops before RocksDB meets a full
//!   disk.
//!
//! `--unsafe-no-fsync` ([`RocksStorage::set_unsafe_no_fsync`]) breaks the first invariant
//! on purpose: every batch is written unsynced, so an OS crash or power loss can lose
//! acknowledged writes. It exists for benchmarks and to show that the power-loss test
//! (`tests/e2e_powerloss.rs`) catches exactly this.

use super::db::{u64_key, CF_LOG};
use super::meta::{Meta, MetaKey};
use super::reserve::Reserve;
use super::{interval_present, storage_err, Res};
use crate::command::LogEntry;
use crate::error::Result;
use crate::metrics::Metrics;
use omnipaxos::ballot_leader_election::Ballot;
use omnipaxos::storage::{NoSnapshot, StopSign, Storage, StorageOp};
use rocksdb::{WriteBatch, WriteOptions, DB};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Clone, Debug, Default)]
struct LogMeta {
    first: usize,
    next: usize,
    promise: Option<Ballot>,
    accepted_round: Option<Ballot>,
    decided: usize,
    compacted: usize,
    stopsign: Option<StopSign>,
    snapshot: Option<NoSnapshot>,
}

/// The durable OmniPaxos storage of one node.
pub struct RocksStorage {
    db: Arc<DB>,
    meta: LogMeta,
    sync: WriteOptions,
    nosync: WriteOptions,
    /// Where synced-write latency and the log length go, when set.
    metrics: Option<Arc<Metrics>>,
    /// `--unsafe-no-fsync`: no batch is synced.
    unsafe_no_fsync: bool,
    /// The deferral of append fsyncs, shared with the core.
    deferral: Arc<Deferral>,
    /// The free space kept under the log (off until set).
    reserve: Reserve,
}

/// Whether appends are deferred now, and whether one was written unsynced since the last
/// fsync.
#[derive(Debug, Default)]
struct Deferral {
    on: AtomicBool,
    pending: AtomicBool,
}

/// The core's [`super::SyncControl`] over a [`RocksStorage`].
pub struct RocksSync {
    db: Arc<DB>,
    deferral: Arc<Deferral>,
    metrics: Option<Arc<Metrics>>,
    unsafe_no_fsync: bool,
}

impl super::SyncControl for RocksSync {
    fn defer(&self) {
        self.deferral.on.store(true, Ordering::Relaxed);
    }

    fn sync(&self) -> Result<()> {
        self.deferral.on.store(false, Ordering::Relaxed);
        if !self.deferral.pending.swap(false, Ordering::Relaxed) || self.unsafe_no_fsync {
            return Ok(());
        }
        let started = std::time::Instant::now();
        self.db
            .flush_wal(true)
            .map_err(|e| crate::error::Error::Storage(format!("syncing the log: {e}")))?;
        if let Some(m) = &self.metrics {
            m.observe_fsync(started.elapsed());
        }
        Ok(())
    }
}

fn enc<T: Serialize>(v: &T) -> Res<Vec<u8>> {
    bincode::serialize(v).map_err(storage_err)
}

impl RocksStorage {
    /// Loads the log bounds and metadata from `db`.
    pub fn open(db: Arc<DB>) -> Result<RocksStorage> {
        let m = Meta::of(&db);
        let get_u64 = |k| -> Result<usize> { Ok(m.get_u64(k)?.unwrap_or(0) as usize) };
        let meta = LogMeta {
            first: get_u64(MetaKey::LogFirst)?,
            next: get_u64(MetaKey::LogNext)?,
            decided: get_u64(MetaKey::Decided)?,
            compacted: get_u64(MetaKey::Compacted)?,
            promise: m.get_obj(MetaKey::Promise)?,
            accepted_round: m.get_obj(MetaKey::AcceptedRound)?,
            stopsign: m.get_obj::<Option<StopSign>>(MetaKey::StopSign)?.flatten(),
            snapshot: m
                .get_obj::<Option<NoSnapshot>>(MetaKey::Snapshot)?
                .flatten(),
        };
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        Ok(RocksStorage {
            db,
            meta,
            sync,
            nosync: WriteOptions::default(),
            metrics: None,
            unsafe_no_fsync: false,
            deferral: Arc::default(),
            reserve: Reserve::off(),
        })
    }

    /// The log bounds and Paxos metadata, for the start-up log line.
    pub fn describe(&self) -> String {
        let m = &self.meta;
        format!(
            "entries [{}, {}), compacted {}, decided {}, promise {:?}, accepted round {:?}, stop sign {}",
            m.first,
            m.next,
            m.compacted,
            m.decided,
            m.promise.map(|b| (b.config_id, b.n, b.pid)),
            m.accepted_round.map(|b| (b.config_id, b.n, b.pid)),
            m.stopsign.as_ref().map_or("none".to_string(), |s| format!(
                "to configuration {}",
                s.next_config.configuration_id
            ))
        )
    }

    /// UNSAFE when `on`: writes every batch without fsync from now on, so that a power
    /// loss can lose acknowledged writes (`--unsafe-no-fsync`).
    pub fn set_unsafe_no_fsync(&mut self, on: bool) {
        self.unsafe_no_fsync = on;
    }

    /// Refuses every batch from now on that would leave less than `bytes` free on the
    /// file system holding the database (see [`super::reserve`]; 0: off).
    pub fn set_reserve(&mut self, bytes: u64) {
        self.reserve = Reserve::new(self.db.path(), bytes);
    }

    /// Records each synced write's latency and the log length in `metrics` from now on.
    pub fn set_metrics(&mut self, metrics: Arc<Metrics>) {
        metrics.set_log_entries(self.meta.next.saturating_sub(self.meta.first) as u64);
        self.metrics = Some(metrics);
    }

    fn log_cf(&self) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(CF_LOG).expect("log column family")
    }

    fn meta(&self) -> Meta<'_> {
        Meta::of(&self.db)
    }

    /// Adds one operation to `batch`, updating the staged metadata `m`.
    fn stage(&self, op: StorageOp<LogEntry>, batch: &mut WriteBatch, m: &mut LogMeta) -> Res<()> {
        let (log, meta) = (self.log_cf(), self.meta());
        match op {
            StorageOp::AppendEntry(e) => {
                batch.put_cf(log, u64_key(m.next as u64), enc(&e)?);
                m.next += 1;
            }
            StorageOp::AppendEntries(es) => {
                for e in es {
                    batch.put_cf(log, u64_key(m.next as u64), enc(&e)?);
                    m.next += 1;
                }
            }
            StorageOp::AppendOnPrefix(from, es) => {
                if from < m.next {
                    batch.delete_range_cf(log, u64_key(from as u64), u64_key(m.next as u64));
                }
                // A gap after the log: drop what is held (the range above covers the case
                // `from < first`, and RocksDB refuses an inverted range in the middle of a
                // batch after applying the operations before it, so none may be staged).
                if from > m.next {
                    batch.delete_range_cf(log, u64_key(m.first as u64), u64_key(from as u64));
                }
                if from < m.first || from > m.next {
                    m.first = from;
                }
                m.next = from;
                for e in es {
                    batch.put_cf(log, u64_key(m.next as u64), enc(&e)?);
                    m.next += 1;
                }
            }
            StorageOp::SetPromise(b) => {
                meta.put(batch, MetaKey::Promise, enc(&b)?);
                m.promise = Some(b);
            }
            StorageOp::SetDecidedIndex(i) => {
                meta.put_u64(batch, MetaKey::Decided, i as u64);
                m.decided = i;
            }
            StorageOp::SetAcceptedRound(b) => {
                meta.put(batch, MetaKey::AcceptedRound, enc(&b)?);
                m.accepted_round = Some(b);
            }
            StorageOp::SetCompactedIdx(i) => {
                meta.put_u64(batch, MetaKey::Compacted, i as u64);
                m.compacted = i;
            }
            StorageOp::Trim(idx) => {
                if idx > m.first {
                    batch.delete_range_cf(log, u64_key(m.first as u64), u64_key(idx as u64));
                    m.first = idx;
                    m.next = m.next.max(idx);
                }
            }
            StorageOp::SetStopsign(s) => {
                meta.put(batch, MetaKey::StopSign, enc(&s)?);
                m.stopsign = s;
            }
            StorageOp::SetSnapshot(s) => {
                meta.put(batch, MetaKey::Snapshot, enc(&s)?);
                m.snapshot = s;
            }
        }
        Ok(())
    }
}

impl RocksStorage {
    /// Writes `ops` as one batch; `sync` decides whether it is fsynced before returning.
    fn commit(&mut self, ops: Vec<StorageOp<LogEntry>>, sync: bool) -> Res<()> {
        let mut sync = sync && !self.unsafe_no_fsync;
        let deferred =
            sync && self.deferral.on.load(Ordering::Relaxed) && super::only_appends(&ops);
        if deferred {
            sync = false;
        }
        let mut batch = WriteBatch::default();
        let mut staged = self.meta.clone();
        for op in ops {
            self.stage(op, &mut batch, &mut staged)?;
        }
        if (staged.first, staged.next) != (self.meta.first, self.meta.next) {
            let meta = self.meta();
            meta.put_u64(&mut batch, MetaKey::LogFirst, staged.first as u64);
            meta.put_u64(&mut batch, MetaKey::LogNext, staged.next as u64);
        }
        let opts = if sync { &self.sync } else { &self.nosync };
        (self.reserve.admit(batch.size_in_bytes() as u64)).map_err(storage_err)?;
        let started = std::time::Instant::now();
        self.db.write_opt(batch, opts).map_err(storage_err)?;
        if deferred {
            self.deferral.pending.store(true, Ordering::Relaxed);
        } else if sync {
            // The WAL is ordered: this fsync made the deferred appends durable too.
            self.deferral.pending.store(false, Ordering::Relaxed);
        }
        if let Some(m) = &self.metrics {
            if sync {
                m.observe_fsync(started.elapsed());
            }
            m.set_log_entries(staged.next.saturating_sub(staged.first) as u64);
        }
        self.meta = staged;
        Ok(())
    }
}

impl super::LogStorage for RocksStorage {
    fn sync_control(&self) -> Option<Arc<dyn super::SyncControl>> {
        Some(Arc::new(RocksSync {
            db: self.db.clone(),
            deferral: self.deferral.clone(),
            metrics: self.metrics.clone(),
            unsafe_no_fsync: self.unsafe_no_fsync,
        }))
    }
}

impl Storage<LogEntry> for RocksStorage {
    super::storage_setters!();
    fn write_atomically(&mut self, ops: Vec<StorageOp<LogEntry>>) -> Res<()> {
        self.commit(ops, true)
    }
    fn set_decided_idx(&mut self, ld: usize) -> Res<()> {
        // Not synced: the decided index can be re-learned from the (synced) accepted log,
        // and the WAL is ordered, so after an OS crash the applied index (written later)
        // is never ahead of the recovered decided index. A process crash loses nothing.
        self.commit(vec![StorageOp::SetDecidedIndex(ld)], false)
    }
    fn get_decided_idx(&self) -> Res<usize> {
        Ok(self.meta.decided)
    }
    fn get_accepted_round(&self) -> Res<Option<Ballot>> {
        Ok(self.meta.accepted_round)
    }
    fn get_entries(&self, from: usize, to: usize) -> Res<Vec<LogEntry>> {
        if !interval_present(from, to, self.meta.first, self.meta.next) {
            return Ok(vec![]);
        }
        let mut out = Vec::with_capacity(to - from);
        let iter = self.db.iterator_cf(
            self.log_cf(),
            rocksdb::IteratorMode::From(&u64_key(from as u64), rocksdb::Direction::Forward),
        );
        for item in iter.take(to - from) {
            let (_, v) = item.map_err(storage_err)?;
            out.push(bincode::deserialize(&v).map_err(storage_err)?);
        }
        if out.len() != to - from {
            return Err(storage_err(format!(
                "log is missing entries in [{from}, {to}): found {}",
                out.len()
            )));
        }
        Ok(out)
    }
    fn get_log_len(&self) -> Res<usize> {
        Ok(self.meta.next.saturating_sub(self.meta.compacted))
    }
    fn get_suffix(&self, from: usize) -> Res<Vec<LogEntry>> {
        super::check_suffix_start(from, self.meta.first)?;
        self.get_entries(from, self.meta.next)
    }
    fn get_promise(&self) -> Res<Option<Ballot>> {
        Ok(self.meta.promise)
    }
    fn get_stopsign(&self) -> Res<Option<StopSign>> {
        Ok(self.meta.stopsign.clone())
    }
    fn get_compacted_idx(&self) -> Res<usize> {
        Ok(self.meta.compacted)
    }
    fn get_snapshot(&self) -> Res<Option<NoSnapshot>> {
        Ok(self.meta.snapshot)
    }
}
