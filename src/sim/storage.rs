//! A node's durable state in the simulation, and what a crash leaves of it.
//!
//! [`SimStorage`] is the OmniPaxos `Storage` a simulated node runs on: a [`MemStorage`]
//! behind a shared handle, so that the world keeps it when the node's `Core` is dropped
//! by a crash and hands it to the restarted one.
//!
//! It also models the production durability rules of `RocksStorage`, where the log, its
//! metadata and the state machine share one RocksDB (one write-ahead log, in order):
//! every OmniPaxos write is synced except a lone `set_decided_idx`, and the state
//! machine's apply batches are not synced. A synced write makes everything before it
//! durable. So at every synced write we remember a *sync point*: the decided index and a
//! copy of the KV spaces as they are at that moment. A process crash loses nothing; a
//! machine crash ([`Durable::lose_unsynced`]) rolls the decided index and the KV state
//! back to the last sync point (the applied index then is at most the decided index, and
//! the node re-applies from its log).
//!
//! The state machine's own synced writes are sync points too: completing a staged state
//! (`Importer::finish` writes its marker synced) and installing it (`install_staged`
//! flips the live slot in one synced write); the world and its state-machine wrapper call
//! [`Durable::sync_point`] after them. Staged chunks are never synced: a crash before the
//! marker leaves at most unfinished staging, which `KvStore::open_memory` discards.
//!
//! For the checker self-tests, [`Durable::tamper`] makes this node's log store a
//! different value than it was sent (a node that "applies a different entry"), and
//! [`Durable::stale_accepted_round`] makes a log reset after a state install keep the old
//! accepted round (the bug the nemesis found, see `node::paxos`).

use super::checks::{round_of, Round};
use crate::command::{LogEntry, WriteOp};
use crate::kv::backend::MemSpaces;
use crate::storage::memory::MemStorage;
use omnipaxos::ballot_leader_election::Ballot;
use omnipaxos::storage::{NoSnapshot, StopSign, Storage, StorageOp, StorageResult};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

/// The durable state of one node, shared by the world and the node's current life.
pub struct Durable {
    pub log: MemStorage,
    /// The state machine's bytes (the live ones; `KvStore::open_memory` runs on them).
    pub kv: Arc<RwLock<MemSpaces>>,
    /// The KV state at the last synced write.
    pub synced_kv: MemSpaces,
    /// The decided index at the last synced write.
    pub synced_decided: usize,
    /// Bug injection: store every put with a different value.
    pub tamper: bool,
    /// Bug injection: a log reset (a trim to the installed state's end) keeps the old
    /// accepted round instead of the one below every real ballot.
    pub stale_accepted_round: bool,
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
        Arc::new(Mutex::new(Durable {
            log: MemStorage::default(),
            kv: Arc::new(RwLock::new(MemSpaces::default())),
            synced_kv: MemSpaces::default(),
            synced_decided: 0,
            tamper: false,
            stale_accepted_round: false,
            installs: 0,
            id: 0,
            led: BTreeMap::new(),
        }))
    }

    /// A machine crash: whatever was written after the last synced write is gone.
    /// Returns the decided index the node restarts with.
    pub fn lose_unsynced(&mut self) -> usize {
        let decided = self.synced_decided;
        self.log
            .set_decided_idx(decided)
            .expect("memory storage is infallible");
        *self.kv.write().unwrap() = self.synced_kv.clone();
        decided
    }

    /// A synced write happened: everything written so far is durable.
    pub fn sync_point(&mut self) {
        self.synced_kv = self.kv.read().unwrap().clone();
        self.synced_decided = self.log.get_decided_idx().unwrap_or(0);
    }

    fn tamper_entry(&self, e: &mut LogEntry) {
        if !self.tamper {
            return;
        }
        for c in &mut e.commands {
            if let WriteOp::Put { value, .. } = &mut c.op {
                *value = b"tampered".to_vec();
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

/// The `Storage` handle a node's `Core` owns.
pub struct SimStorage(pub Arc<Mutex<Durable>>);

impl SimStorage {
    fn write(&mut self, mut ops: Vec<StorageOp<LogEntry>>) -> StorageResult<()> {
        let mut d = self.0.lock().unwrap();
        let synced = !(ops.len() == 1 && matches!(ops[0], StorageOp::SetDecidedIndex(_)));
        for op in &mut ops {
            d.tamper_op(op);
        }
        let resets = ops
            .iter()
            .any(|o| matches!(o, StorageOp::SetCompactedIdx(_)));
        if d.stale_accepted_round && resets {
            ops.retain(|o| !matches!(o, StorageOp::SetAcceptedRound(_)));
        }
        d.log.write_atomically(ops)?;
        if synced {
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
