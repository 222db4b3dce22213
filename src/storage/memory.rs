//! An in-memory `omnipaxos::storage::Storage`, the twin of [`super::rocks::RocksStorage`].
//!
//! Used by tests and the simulation. It keeps the same global-index semantics: the log
//! holds entries `[first, next)`; trimming advances `first`. Every operation is infallible,
//! so `write_atomically` is atomic by construction.

use super::{interval_present, Res};
use crate::command::LogEntry;
use omnipaxos::ballot_leader_election::Ballot;
use omnipaxos::storage::{NoSnapshot, StopSign, Storage, StorageOp};

/// The log and Paxos metadata, in memory.
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    first: usize,
    log: Vec<LogEntry>,
    promise: Option<Ballot>,
    accepted_round: Option<Ballot>,
    decided: usize,
    compacted: usize,
    stopsign: Option<StopSign>,
    snapshot: Option<NoSnapshot>,
}

impl MemStorage {
    /// The entries held: `[first, next)`.
    pub fn bounds(&self) -> (usize, usize) {
        (self.first, self.next())
    }

    fn next(&self) -> usize {
        self.first + self.log.len()
    }

    fn apply(&mut self, op: StorageOp<LogEntry>) {
        match op {
            StorageOp::AppendEntry(e) => self.log.push(e),
            StorageOp::AppendEntries(mut es) => self.log.append(&mut es),
            StorageOp::AppendOnPrefix(from, mut es) => {
                if from < self.first {
                    // Everything before `from` that we still hold is replaced.
                    self.log.clear();
                    self.first = from;
                } else {
                    self.log.truncate(from - self.first);
                    // A gap (from > next) cannot be represented; OmniPaxos never asks it.
                    if from > self.next() {
                        self.log.clear();
                        self.first = from;
                    }
                }
                self.log.append(&mut es);
            }
            StorageOp::SetPromise(b) => self.promise = Some(b),
            StorageOp::SetDecidedIndex(i) => self.decided = i,
            StorageOp::SetAcceptedRound(b) => self.accepted_round = Some(b),
            StorageOp::SetCompactedIdx(i) => self.compacted = i,
            StorageOp::Trim(idx) => {
                if idx > self.first {
                    let n = (idx - self.first).min(self.log.len());
                    self.log.drain(..n);
                    self.first = idx;
                }
            }
            StorageOp::SetStopsign(s) => self.stopsign = s,
            StorageOp::SetSnapshot(s) => self.snapshot = s,
        }
    }
}

impl super::LogStorage for MemStorage {}

impl Storage<LogEntry> for MemStorage {
    super::storage_setters!();
    fn write_atomically(&mut self, ops: Vec<StorageOp<LogEntry>>) -> Res<()> {
        for op in ops {
            self.apply(op);
        }
        Ok(())
    }
    fn set_decided_idx(&mut self, ld: usize) -> Res<()> {
        self.write_atomically(vec![StorageOp::SetDecidedIndex(ld)])
    }
    fn get_decided_idx(&self) -> Res<usize> {
        Ok(self.decided)
    }
    fn get_accepted_round(&self) -> Res<Option<Ballot>> {
        Ok(self.accepted_round)
    }
    fn get_entries(&self, from: usize, to: usize) -> Res<Vec<LogEntry>> {
        if !interval_present(from, to, self.first, self.next()) {
            return Ok(vec![]);
        }
        Ok(self.log[from - self.first..to - self.first].to_vec())
    }
    fn get_log_len(&self) -> Res<usize> {
        Ok(self.next().saturating_sub(self.compacted))
    }
    fn get_suffix(&self, from: usize) -> Res<Vec<LogEntry>> {
        super::check_suffix_start(from, self.first)?;
        self.get_entries(from, self.next())
    }
    fn get_promise(&self) -> Res<Option<Ballot>> {
        Ok(self.promise)
    }
    fn get_stopsign(&self) -> Res<Option<StopSign>> {
        Ok(self.stopsign.clone())
    }
    fn get_compacted_idx(&self) -> Res<usize> {
        Ok(self.compacted)
    }
    fn get_snapshot(&self) -> Res<Option<NoSnapshot>> {
        Ok(self.snapshot)
    }
}
