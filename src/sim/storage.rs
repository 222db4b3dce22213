//! A node's durable state in the simulation, and what a crash leaves of it.
//!
//! [`SimStorage`] is the OmniPaxos `Storage` a simulated node runs on: a [`MemStorage`]
//! behind a shared handle, so that the world keeps it when the node's `Core` is dropped
//! by a crash and hands it to the restarted one.
//!
//! It also models the production durability rules of `RocksStorage`, where the log, its
//! metadata and the state machine share one RocksDB, so one write-ahead log: every write
//! (a `WriteBatch`) is appended to it in order and is atomic. Every OmniPaxos write is
//! synced except a lone `set_decided_idx`; the state machine's apply batches (and its
//! membership records) are not synced. A synced write makes everything before it durable.
//! So at every synced write we take a *sync point* (the decided index and a copy of the KV
//! spaces as they are at that moment), and from there on we keep the journal of the
//! unsynced writes, in the order they were made ([`Durable::unsynced`]): each lone decided
//! index, and each state machine batch (which the memory backend records for us, see
//! `MemSpaces::wal`). A process crash loses nothing. A machine crash
//! ([`Durable::machine_crash`]) keeps a prefix of that journal chosen by the caller (the
//! world draws it from the seed), as a power loss does to an ordered WAL: none of it, all
//! of it, or any prefix. The node then restarts from the sync point with that prefix
//! replayed: its decided index is the last one in the prefix, its state the sync point's
//! with the prefix's batches applied. Because the WAL is ordered, the applied index
//! recovered is never ahead of the decided index recovered (apply follows the decided
//! index that covers it), and the node re-applies the rest from its log. What a
//! recovery finds is durable again (RocksDB flushes what it recovered), so it is a sync
//! point.
//!
//! The state machine's own synced writes are sync points too: completing a staged state
//! (`Importer::finish` writes its marker synced) and installing it (`install_staged`
//! flips the live slot in one synced write); the world and its state-machine wrapper call
//! [`Durable::sync_point`] after them. Staged chunks are never synced: a crash before the
//! marker leaves at most unfinished staging, which `KvStore::open_memory` discards.
//!
//! The leader's appends are written unsynced and synced after they were sent (the core's
//! [`crate::storage::SyncControl`], see `node`): between the two they are in the journal
//! like any unsynced write, and a machine crash rolls the log back to its end at the last
//! sync point before replaying the kept prefix. The world cuts the power in exactly that
//! window ([`Durable::cut_armed`]): the sync does not happen, the messages already sent
//! are delivered, and the node machine-crashes right after the step.
//!
//! For the checker self-tests, [`Durable::unsynced_log`] makes this node's log appends
//! unsynced (its fsync a no-op for the accepted log: it acknowledges entries a machine
//! crash can lose; the journal then holds those writes too, replayed on a copy of the
//! log at the sync point), [`Durable::tamper`] makes this node's log store a
//! different value than it was sent (a node that "applies a different entry"), and
//! [`Durable::stale_accepted_round`] makes a log reset after a state install keep the old
//! accepted round (the bug the nemesis found, see `node::paxos`).

use super::checks::{round_of, Round};
use crate::command::{KvCommand, LogEntry, WriteOp};
use crate::kv::backend::{MemSpaces, RawWrite};
use crate::storage::memory::MemStorage;
use omnipaxos::ballot_leader_election::Ballot;
use omnipaxos::storage::{NoSnapshot, StopSign, Storage, StorageOp, StorageResult};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

/// One write not yet synced, in the journal of a node's unsynced writes.
pub enum Unsynced {
    /// An OmniPaxos batch (a lone decided index; with [`Durable::unsynced_log`] also log
    /// appends).
    Log(Vec<StorageOp<LogEntry>>),
    /// A state machine batch.
    Kv(Vec<RawWrite>),
}

/// What a machine crash did to a node's unsynced writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loss {
    /// Unsynced writes at the crash.
    pub unsynced: usize,
    /// How many of them (a prefix) survived.
    pub kept: usize,
    /// The decided index the node restarts with.
    pub decided: usize,
}

/// The durable state of one node, shared by the world and the node's current life.
pub struct Durable {
    pub log: MemStorage,
    /// The state machine's bytes (the live ones; `KvStore::open_memory` runs on them).
    pub kv: Arc<RwLock<MemSpaces>>,
    /// The KV state at the last synced write.
    pub synced_kv: MemSpaces,
    /// The decided index at the last synced write.
    pub synced_decided: usize,
    /// The writes since the last synced write, in order (see the module docs).
    pub unsynced: Vec<Unsynced>,
    /// Bug injection: log appends are not synced (see the module docs).
    pub unsynced_log: bool,
    /// With `unsynced_log`: the log at the last synced write.
    synced_log: Option<MemStorage>,
    /// Bug injection: store every put with a different value.
    pub tamper: bool,
    /// Bug injection: a log reset (a trim to the installed state's end) keeps the old
    /// accepted round instead of the one below every real ballot.
    pub stale_accepted_round: bool,
    /// The core defers the sync of its appends now (see the module docs).
    deferring: bool,
    /// The log's end at the last sync point, once an append was deferred since.
    deferred_from: Option<usize>,
    /// The world will machine-crash this node after its current step: a deferred sync
    /// asked for meanwhile does not happen (the power went out between send and fsync).
    pub cut_armed: bool,
    /// Syncs that such a cut prevented (deferred appends lost or kept by the crash).
    pub cuts_before_sync: u64,
    /// Fetched states this node installed (in all its lives).
    pub installs: u64,
    /// The node's id.
    pub id: u64,
    /// Per round this node led: the longest log it had while leading it (recorded after
    /// every write while its promise and accepted round are its own ballot; see
    /// `checks::accepted_claim`).
    pub led: BTreeMap<Round, u64>,
}

impl Durable {
    pub fn new() -> Arc<Mutex<Durable>> {
        let mut journaled = MemSpaces::default();
        journaled.wal = Some(Vec::new());
        Arc::new(Mutex::new(Durable {
            log: MemStorage::default(),
            kv: Arc::new(RwLock::new(journaled)),
            synced_kv: MemSpaces::default(),
            synced_decided: 0,
            unsynced: Vec::new(),
            unsynced_log: false,
            synced_log: None,
            tamper: false,
            stale_accepted_round: false,
            deferring: false,
            deferred_from: None,
            cut_armed: false,
            cuts_before_sync: 0,
            installs: 0,
            id: 0,
            led: BTreeMap::new(),
        }))
    }

    /// Turns on the `unsynced_log` bug injection.
    pub fn set_unsynced_log(&mut self) {
        self.unsynced_log = true;
        self.synced_log = Some(self.log.clone());
    }

    /// Moves the state machine batches written since the last call to the journal (they
    /// come after every write journaled before, and before the next one).
    fn drain_kv(&mut self) {
        let batches = self.kv.write().unwrap().wal.as_mut().map(std::mem::take);
        self.unsynced
            .extend(batches.into_iter().flatten().map(Unsynced::Kv));
    }

    /// A machine crash: of the writes since the last synced write, the first
    /// `keep(count)` survive (at most `count`), the others are gone.
    pub fn machine_crash(&mut self, keep: impl FnOnce(usize) -> usize) -> Loss {
        self.drain_kv();
        let journal = std::mem::take(&mut self.unsynced);
        let unsynced = journal.len();
        let kept = keep(unsynced).min(unsynced);
        let mut kv = self.synced_kv.clone();
        kv.wal = Some(Vec::new());
        let mut decided = self.synced_decided;
        let deferred = self.deferred_from.take();
        self.deferring = false;
        if let Some(log) = &self.synced_log {
            self.log = log.clone();
        } else if let Some(end) = deferred {
            // Only appends were deferred: the log at the sync point is a prefix.
            self.log
                .write_atomically(vec![StorageOp::AppendOnPrefix(end, vec![])])
                .expect("memory storage is infallible");
        }
        let replay_log = self.synced_log.is_some() || deferred.is_some();
        for w in journal.into_iter().take(kept) {
            match w {
                Unsynced::Kv(writes) => kv.apply_writes(writes),
                Unsynced::Log(ops) => {
                    for op in &ops {
                        if let StorageOp::SetDecidedIndex(i) = op {
                            decided = *i;
                        }
                    }
                    if replay_log {
                        self.log
                            .write_atomically(ops)
                            .expect("memory storage is infallible");
                    }
                }
            }
        }
        self.log
            .set_decided_idx(decided)
            .expect("memory storage is infallible");
        *self.kv.write().unwrap() = kv;
        // What the recovery found is durable from now on.
        self.sync_point();
        Loss {
            unsynced,
            kept,
            decided,
        }
    }

    /// A synced write happened: everything written so far is durable.
    pub fn sync_point(&mut self) {
        self.unsynced.clear();
        self.deferred_from = None;
        let mut kv = self.kv.write().unwrap();
        if let Some(wal) = kv.wal.as_mut() {
            wal.clear();
        }
        self.synced_kv = kv.clone();
        drop(kv);
        self.synced_decided = self.log.get_decided_idx().unwrap_or(0);
        if self.synced_log.is_some() {
            self.synced_log = Some(self.log.clone());
        }
    }

    fn tamper_entry(&self, e: &mut LogEntry) {
        if !self.tamper {
            return;
        }
        for c in &mut e.commands {
            if let Ok(mut kv) = KvCommand::decode(c) {
                if let WriteOp::Put { value, .. } = &mut kv.op {
                    *value = b"tampered".to_vec();
                    *c = kv.encode();
                }
            }
        }
    }

    fn tamper_op(&self, op: &mut StorageOp<LogEntry>) {
        match op {
            StorageOp::AppendEntry(e) => self.tamper_entry(e),
            StorageOp::AppendEntries(es) | StorageOp::AppendOnPrefix(_, es) => {
                es.iter_mut().for_each(|e| self.tamper_entry(e))
            }
            _ => {}
        }
    }
}

/// A copy of `op` (OmniPaxos' `StorageOp` is not `Clone`).
fn clone_op(op: &StorageOp<LogEntry>) -> StorageOp<LogEntry> {
    match op {
        StorageOp::AppendEntry(e) => StorageOp::AppendEntry(e.clone()),
        StorageOp::AppendEntries(es) => StorageOp::AppendEntries(es.clone()),
        StorageOp::AppendOnPrefix(i, es) => StorageOp::AppendOnPrefix(*i, es.clone()),
        StorageOp::SetPromise(b) => StorageOp::SetPromise(*b),
        StorageOp::SetDecidedIndex(i) => StorageOp::SetDecidedIndex(*i),
        StorageOp::SetAcceptedRound(b) => StorageOp::SetAcceptedRound(*b),
        StorageOp::SetCompactedIdx(i) => StorageOp::SetCompactedIdx(*i),
        StorageOp::Trim(i) => StorageOp::Trim(*i),
        StorageOp::SetStopsign(s) => StorageOp::SetStopsign(s.clone()),
        StorageOp::SetSnapshot(s) => StorageOp::SetSnapshot(*s),
    }
}

/// The `Storage` handle a node's `Core` owns.
pub struct SimStorage(pub Arc<Mutex<Durable>>);

impl SimStorage {
    fn write(&mut self, mut ops: Vec<StorageOp<LogEntry>>) -> StorageResult<()> {
        let mut d = self.0.lock().unwrap();
        let appends = ops.iter().any(|o| {
            matches!(
                o,
                StorageOp::AppendEntry(_)
                    | StorageOp::AppendEntries(_)
                    | StorageOp::AppendOnPrefix(..)
            )
        });
        let lone_decided = ops.len() == 1 && matches!(ops[0], StorageOp::SetDecidedIndex(_));
        let deferred = d.deferring && !d.unsynced_log && crate::storage::only_appends(&ops);
        if deferred && d.deferred_from.is_none() {
            d.deferred_from = Some(d.log.bounds().1);
        }
        let unsynced = lone_decided || deferred || (d.unsynced_log && appends);
        for op in &mut ops {
            d.tamper_op(op);
        }
        let resets = ops
            .iter()
            .any(|o| matches!(o, StorageOp::SetCompactedIdx(_)));
        if d.stale_accepted_round && resets {
            ops.retain(|o| !matches!(o, StorageOp::SetAcceptedRound(_)));
        }
        if unsynced {
            d.drain_kv();
            let copy = ops.iter().map(clone_op).collect();
            d.unsynced.push(Unsynced::Log(copy));
        }
        d.log.write_atomically(ops)?;
        if !unsynced {
            d.sync_point();
        }
        let promise = d.log.get_promise()?;
        if promise == d.log.get_accepted_round()? {
            if let Some(round) = round_of(promise).filter(|r| r.3 == d.id) {
                let end = (d.log.get_compacted_idx()? + d.log.get_log_len()?) as u64;
                let longest = d.led.entry(round).or_default();
                *longest = (*longest).max(end);
            }
        }
        Ok(())
    }

    fn read<R>(&self, f: impl FnOnce(&MemStorage) -> R) -> R {
        f(&self.0.lock().unwrap().log)
    }
}

/// The core's sync control over a simulated node's log.
pub struct SimSync(Arc<Mutex<Durable>>);

impl crate::storage::SyncControl for SimSync {
    fn defer(&self) {
        self.0.lock().unwrap().deferring = true;
    }

    fn sync(&self) -> crate::error::Result<()> {
        let mut d = self.0.lock().unwrap();
        d.deferring = false;
        if d.deferred_from.is_none() {
            return Ok(());
        }
        if d.cut_armed {
            d.cuts_before_sync += 1;
            return Ok(());
        }
        d.sync_point();
        Ok(())
    }
}

impl crate::storage::LogStorage for SimStorage {
    fn sync_control(&self) -> Option<Arc<dyn crate::storage::SyncControl>> {
        Some(Arc::new(SimSync(self.0.clone())))
    }
}

impl Storage<LogEntry> for SimStorage {
    crate::storage::storage_setters!();
    fn write_atomically(&mut self, ops: Vec<StorageOp<LogEntry>>) -> StorageResult<()> {
        self.write(ops)
    }
    fn set_decided_idx(&mut self, ld: usize) -> StorageResult<()> {
        self.write(vec![StorageOp::SetDecidedIndex(ld)])
    }
    fn get_decided_idx(&self) -> StorageResult<usize> {
        self.read(|s| s.get_decided_idx())
    }
    fn get_accepted_round(&self) -> StorageResult<Option<Ballot>> {
        self.read(|s| s.get_accepted_round())
    }
    fn get_entries(&self, from: usize, to: usize) -> StorageResult<Vec<LogEntry>> {
        self.read(|s| s.get_entries(from, to))
    }
    fn get_log_len(&self) -> StorageResult<usize> {
        self.read(|s| s.get_log_len())
    }
    fn get_suffix(&self, from: usize) -> StorageResult<Vec<LogEntry>> {
        self.read(|s| s.get_suffix(from))
    }
    fn get_promise(&self) -> StorageResult<Option<Ballot>> {
        self.read(|s| s.get_promise())
    }
    fn get_stopsign(&self) -> StorageResult<Option<StopSign>> {
        self.read(|s| s.get_stopsign())
    }
    fn get_compacted_idx(&self) -> StorageResult<usize> {
        self.read(|s| s.get_compacted_idx())
    }
    fn get_snapshot(&self) -> StorageResult<Option<NoSnapshot>> {
        self.read(|s| s.get_snapshot())
    }
}
