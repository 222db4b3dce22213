//! Durable and in-memory homes for the replicated log.
//!
//! A node keeps everything in **one RocksDB** (see [`db`]): the OmniPaxos log and its
//! metadata, and the user data of the state machine, in separate column families. Two
//! implementations of `omnipaxos::storage::Storage` exist:
//!
//! - [`rocks::RocksStorage`]: the production one. Every write is one synced `WriteBatch`,
//!   so nothing OmniPaxos stores is acknowledged to a peer before it is on disk, and a
//!   `write_atomically` call is all-or-nothing.
//! - [`memory::MemStorage`]: the same semantics in memory, for tests and simulation.
//!
//! Both pass the same conformance suite (`conformance.rs`). Log indexes are global: entry
//! `i` keeps index `i` after a prefix is trimmed; `get_log_len` counts the entries after the
//! compacted index.

pub mod db;
pub mod memory;
pub mod rocks;

#[cfg(test)]
mod conformance;

use omnipaxos::storage::StorageResult;

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
