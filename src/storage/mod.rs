//! Durable and in-memory homes for the replicated log.
//!
//! A node keeps everything in **one RocksDB** (see [`db`]): the OmniPaxos log and its
//! metadata, and the user data of the state machine, in separate column families. Two
//! implementations of `omnipaxos::storage::Storage` exist:
//!
//! - [`rocks::RocksStorage`]: the production one. Every write is one synced `WriteBatch`,
//!   so nothing OmniPaxos stores is acknowledged to a peer before it is on disk, and a
//!   `write_atomically` call is all-or-nothing.
//! - [`memory::MemStorage`]: the same semantics in memory, for tests and simulation, and
//!   the log of the in-memory witness of a one-member configuration (`node::solo`).
//!
//! Both pass the same conformance suite (`conformance.rs`).
//!
//! A storage may let the core **defer the fsync of its appends** ([`LogStorage`],
//! [`SyncControl`]): the leader appends a batch unsynced, sends it to the followers, and
//! only then waits for its own disk, so that its fsync and theirs run at the same time
//! (see `node`, "The leader sends, then syncs"). Only pure appends at the log's end are
//! deferred; every other write (a promise, a truncation, a trim) is synced as it is made,
//! and being later in the one ordered WAL, makes the deferred appends durable with it. Log indexes are global: entry
//! `i` keeps index `i` after a prefix is trimmed; `get_log_len` counts the entries after the
//! compacted index.

/// The single-operation setters of `omnipaxos::storage::Storage`, each routed through
/// `write_atomically`: an implementation writes its batch logic once and uses this inside
/// its `impl Storage<LogEntry>` (every setter but `set_decided_idx`, whose durability is a
/// per-implementation choice).
macro_rules! storage_setters {
    () => {
        fn append_entry(
            &mut self,
            entry: $crate::command::LogEntry,
        ) -> ::omnipaxos::storage::StorageResult<()> {
            self.write_atomically(vec![::omnipaxos::storage::StorageOp::AppendEntry(entry)])
        }
        fn append_entries(
            &mut self,
            entries: Vec<$crate::command::LogEntry>,
        ) -> ::omnipaxos::storage::StorageResult<()> {
            self.write_atomically(vec![::omnipaxos::storage::StorageOp::AppendEntries(
                entries,
            )])
        }
        fn append_on_prefix(
            &mut self,
            from_idx: usize,
            entries: Vec<$crate::command::LogEntry>,
        ) -> ::omnipaxos::storage::StorageResult<()> {
            self.write_atomically(vec![::omnipaxos::storage::StorageOp::AppendOnPrefix(
                from_idx, entries,
            )])
        }
        fn set_promise(
            &mut self,
            n_prom: ::omnipaxos::ballot_leader_election::Ballot,
        ) -> ::omnipaxos::storage::StorageResult<()> {
            self.write_atomically(vec![::omnipaxos::storage::StorageOp::SetPromise(n_prom)])
        }
        fn set_accepted_round(
            &mut self,
            na: ::omnipaxos::ballot_leader_election::Ballot,
        ) -> ::omnipaxos::storage::StorageResult<()> {
            self.write_atomically(vec![::omnipaxos::storage::StorageOp::SetAcceptedRound(na)])
        }
        fn set_stopsign(
            &mut self,
            s: Option<::omnipaxos::storage::StopSign>,
        ) -> ::omnipaxos::storage::StorageResult<()> {
            self.write_atomically(vec![::omnipaxos::storage::StorageOp::SetStopsign(s)])
        }
        fn trim(&mut self, idx: usize) -> ::omnipaxos::storage::StorageResult<()> {
            self.write_atomically(vec![::omnipaxos::storage::StorageOp::Trim(idx)])
        }
        fn set_compacted_idx(&mut self, idx: usize) -> ::omnipaxos::storage::StorageResult<()> {
            self.write_atomically(vec![::omnipaxos::storage::StorageOp::SetCompactedIdx(idx)])
        }
        fn set_snapshot(
            &mut self,
            snapshot: Option<::omnipaxos::storage::NoSnapshot>,
        ) -> ::omnipaxos::storage::StorageResult<()> {
            self.write_atomically(vec![::omnipaxos::storage::StorageOp::SetSnapshot(snapshot)])
        }
    };
}
pub(crate) use storage_setters;

pub mod db;
/// Tests and the simulation, and the in-memory witness of a one-member configuration
/// (`node::solo`).
pub mod memory;
pub mod meta;
pub mod reserve;
pub mod rocks;

#[cfg(test)]
mod conformance;

use crate::command::LogEntry;
use omnipaxos::storage::{Storage, StorageOp, StorageResult};
use std::sync::Arc;

/// The log storage the node core runs on.
pub trait LogStorage: Storage<LogEntry> {
    /// The switch over this storage's append fsyncs, if it can defer them (without one,
    /// every write is durable when it returns, and the core waits for it).
    fn sync_control(&self) -> Option<Arc<dyn SyncControl>> {
        None
    }
}

/// Deferred fsyncs of log appends, shared by a storage and the core that drives it.
///
/// Invariant: between [`SyncControl::defer`] and [`SyncControl::sync`] only pure appends
/// are written unsynced; when `sync` returns `Ok`, every write made before it is durable.
pub trait SyncControl: Send + Sync {
    /// From now until [`SyncControl::sync`], appends are written but not synced.
    fn defer(&self);
    /// Ends the deferral and makes every write so far durable (one fsync, if any append
    /// was deferred).
    fn sync(&self) -> crate::error::Result<()>;
}

/// True when `ops` only append at the log's end (what may be deferred).
pub(crate) fn only_appends(ops: &[StorageOp<LogEntry>]) -> bool {
    !ops.is_empty()
        && ops
            .iter()
            .all(|o| matches!(o, StorageOp::AppendEntry(_) | StorageOp::AppendEntries(_)))
}

/// Shorthand for the boxed error type OmniPaxos expects from a storage.
pub(crate) fn storage_err<E: std::fmt::Display>(e: E) -> Box<dyn std::error::Error> {
    e.to_string().into()
}

/// Entries `[from, to)` out of a log that holds `[first, next)`: empty unless the whole
/// interval is present, as the `Storage` contract asks.
pub(crate) fn interval_present(from: usize, to: usize, first: usize, next: usize) -> bool {
    from >= first && to <= next && from < to
}

pub(crate) type Res<T> = StorageResult<T>;

/// A suffix read to sync a peer must not start in the trimmed prefix: an empty answer
/// would truncate the peer's log. paxosdb's message guard keeps OmniPaxos from asking;
/// this turns a slip into a loud error instead of a silently shortened log.
pub(crate) fn check_suffix_start(from: usize, first: usize) -> Res<()> {
    if from < first {
        return Err(storage_err(format!(
            "log suffix from {from} requested, but the log was trimmed below {first}"
        )));
    }
    Ok(())
}
