//! Rehearsals: running transaction operations against the store as it is now, without
//! writing anything, to learn what they would answer — and what they read, so that the
//! real run can be made conditional on exactly that.
//!
//! A Redis script (`EVAL`, see [`crate::api::resp::script`]) needs each command's reply
//! while it runs, but its writes must reach the log as one transaction. So the script runs
//! against a [`Rehearsal`]: an [`Overlay`] over the store (the very code that applies
//! entries), whose writes stay in memory. At the end the script's writes become one
//! [`crate::command::Txn`] whose comparisons are [`Rehearsal::compares`]: every key the
//! rehearsal read, at the version it saw (0: absent). Where that transaction is applied
//! the comparisons hold only if none of those keys changed, and then each operation meets
//! the state it met in the rehearsal and answers the same; if one changed, nothing is
//! applied and the script runs again. This is optimistic concurrency, like `WATCH` and
//! `EXEC`.
//!
//! # Invariants
//!
//! - A rehearsal writes nothing to the store: its writes live in the overlay it drops.
//! - Every key an operation names is read, and its visible version recorded, before the
//!   operation runs; later operations see the rehearsal's own writes (as in a
//!   transaction), never a newer stored value of a key read once.
//! - Lease operations, user changes and nested transactions are refused (as in a
//!   transaction: [`WriteOp::in_txn`]), so a rehearsal never needs what an entry's end
//!   would write.

use super::{lease, read_counter, Overlay, Space, K_REVISION, K_TIME};
use crate::command::{Compare, CompareOp, TxnOp, TxnOpResult};
use crate::error::Result;
use std::collections::HashMap;

/// Operations run against the store as it is, writing nothing (see the module docs).
pub struct Rehearsal<'a> {
    overlay: Overlay<'a>,
    /// Each key read, in first-read order, with the version it had (0: absent).
    seen: Vec<(Vec<u8>, u64)>,
    seen_at: HashMap<Vec<u8>, usize>,
    /// The bytes of the keys and values read from the store (the overlay keeps them).
    loaded: usize,
}

impl super::KvStore {
    /// A rehearsal over the store's current state, at the log's time or `clock` (ms
    /// since the Unix epoch: the caller's clock), whichever is later — the time the
    /// entry carrying its writes will be stamped with, about, if the caller's clock is
    /// the leader's.
    pub fn rehearse(&self, clock: u64) -> Result<Rehearsal<'_>> {
        let (time, revision) = self.backend.view(|v| {
            Ok((
                read_counter(v.get(Space::Sm, K_TIME)?)?,
                read_counter(v.get(Space::Sm, K_REVISION)?)?,
            ))
        })?;
        let time = time.max(clock);
        let mut clock = self.backend.view(lease::LeaseClock::read)?;
        // Without a stamp nothing is written: the leases as they are.
        let leases =
            lease::LeaseChanges::begin(&self.backend, &mut clock, None, time, &mut vec![])?;
        Ok(Rehearsal {
            overlay: Overlay {
                store: self,
                keys: HashMap::new(),
                revision,
                time,
                users: HashMap::new(),
                undo: None,
                changes: Vec::new(),
                leases,
            },
            seen: Vec::new(),
            seen_at: HashMap::new(),
            loaded: 0,
        })
    }
}

impl Rehearsal<'_> {
    /// Runs `ops` as a transaction branch would (each seeing the ones before it, and every
    /// earlier run of this rehearsal): their results, or why a transaction's bound refuses
    /// them (the inner `Err`). Range operations are refused: a script names its keys.
    pub fn run(&mut self, ops: &[TxnOp]) -> Result<std::result::Result<Vec<TxnOpResult>, String>> {
        for op in ops {
            let keys = match op {
                TxnOp::Get { key } => vec![key.as_slice()],
                TxnOp::Write(w) if w.in_txn() => w.keys(),
                TxnOp::Write(_) => {
                    return Ok(Err("lease operations and user changes cannot be \
                                   rehearsed"
                        .into()))
                }
                TxnOp::Range { .. } | TxnOp::DeleteRange { .. } => {
                    return Ok(Err("range operations cannot be rehearsed".into()))
                }
            };
            for key in keys {
                self.see(key)?;
            }
        }
        self.overlay.txn_ops(ops)
    }

    /// Records `key`'s visible version the first time it is read.
    fn see(&mut self, key: &[u8]) -> Result<()> {
        if !self.seen_at.contains_key(key) {
            let value = self.overlay.get(key)?;
            let version = value.as_ref().map_or(0, |v| v.version);
            self.loaded += key.len() + value.map_or(0, |v| v.value.len());
            self.seen_at.insert(key.to_vec(), self.seen.len());
            self.seen.push((key.to_vec(), version));
        }
        Ok(())
    }

    /// `key`'s deadline as the rehearsal sees it (`None`: absent; `Some(None)`: never
    /// expires), and the log's time it runs at. Counts as a read of the key.
    pub fn deadline(&mut self, key: &[u8]) -> Result<(Option<Option<u64>>, u64)> {
        self.see(key)?;
        let deadline = match self.overlay.get(key)? {
            Some(_) => Some(self.overlay.deadline(key)?),
            None => None,
        };
        Ok((deadline, self.overlay.time))
    }

    /// One comparison per key read: its version equals the one seen (0: absent).
    pub fn compares(&self) -> Vec<Compare> {
        (self.seen.iter())
            .map(|(key, version)| Compare::version(key, CompareOp::Equal, *version))
            .collect()
    }

    /// Whether the rehearsal read any key.
    pub fn read_any(&self) -> bool {
        !self.seen.is_empty()
    }

    /// How many keys it read, the bytes of their comparisons in a transaction, and the
    /// bytes of the keys and values it holds for them.
    pub fn seen(&self) -> (usize, usize, usize) {
        let bytes = self.seen.iter().map(|(k, _)| k.len() + 16).sum();
        (self.seen.len(), bytes, self.loaded)
    }

    /// The log time it runs at.
    pub fn time(&self) -> u64 {
        self.overlay.time
    }
}
