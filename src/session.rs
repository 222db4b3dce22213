//! Exactly-once sessions, once for every state machine.
//!
//! Every client write carries a session `(client id, seq)`. A client sends at most one
//! write per session at a time and retries it with the same session, so a state machine
//! that remembers, per client, the last seq it applied and that write's outcome can make
//! every write take effect at most once — and answer a retry with the outcome of the first
//! attempt. This module is that memory and its rule; the key-value store (`kv`) and the
//! SQL store (`sql::store`) both use it, each keeping the records next to its own state:
//!
//! - [`decide`] is the rule. Given the client's [`Record`] (if any) and a write at log
//!   index `index`, it says [`Decision::Run`] (a new seq, or no live record), answers the
//!   remembered outcome (a retry: same seq, same [`fingerprint`] of the request), rejects
//!   a seq reused for another request (an error containing [`SESSION_REUSED`]), or
//!   refuses an older seq as superseded (its outcome is no longer known).
//! - [`EntrySessions`] runs the rule over the writes of one log entry: it loads each
//!   client's record once through the store's [`SessionStore`], lets a later write of the
//!   entry see what an earlier one left, and at the end hands the store the records to
//!   write and asks it to sweep expired ones — inside the store's own atomic write of the
//!   entry (the KV store's RocksDB `WriteBatch`, the SQL store's SQLite transaction).
//! - A [`Record`] keeps the outcome as [`Kept`] ([`SessionOutcome::keep`]): whole, or not
//!   at all when it would take more than [`RESULT_KEEP`] bytes (a retry then learns only
//!   that the write was applied), or trimmed by a state machine that can restore what it
//!   dropped (the KV store drops a value over 64 KiB, keeps its version, and reads the
//!   value back on a retry while the key still has that version). Two encodings exist, both here, both the
//!   bytes earlier releases wrote: [`encode_record`] (the whole record in one value, the
//!   KV store's) and [`encode_kept`] (the outcome alone, for a store that keeps the other
//!   fields in columns, the SQL store's).
//!
//! # Expiry
//!
//! Records expire by log index, never by clock, so every replica forgets the same
//! session at the same point. A record last used by the entry at index `L` is alive for
//! the writes of entries up to `L + TTL + 1` ([`alive`]); answering a retry does not count
//! as a use. So a duplicate (a retry, or the same command decided in two entries) decided
//! at `L + TTL + 1` at the latest gets the remembered answer, one decided later runs again.
//! [`decide`] applies this itself, so *when* a store physically removes an expired record
//! never changes an outcome: the sweep may lag (it removes at most [`SWEEP_MAX`] records
//! per entry, and a store may index records by [`bucket`] of [`SWEEP_BUCKET`] entries, so
//! a record moving within its bucket costs no index rewrite) without changing the rule.
//!
//! # Invariants
//!
//! - A session's write runs at most once: while its record is alive, the same seq gets
//!   the remembered outcome (never another request's: the fingerprint must match) and an
//!   older seq is refused without effect.
//! - The decision reads only the record and the entry: deterministic on every replica.
//! - Records are written in the same atomic write as the state they describe, so after a
//!   crash they match the state exactly.
//! - A record holds about [`RESULT_KEEP`] bytes of outcome at most, and every
//!   record is swept at most `TTL + SWEEP_BUCKET` entries after its last use (more only
//!   while a backlog above [`SWEEP_MAX`] per entry drains): the table stays bounded.

use crate::error::{Error, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// What a rejected reuse of a seq says (APIs map it to their "session reused" error).
pub const SESSION_REUSED: &str = "was already used for a different command";
/// A session unused for this many log entries is forgotten.
pub const SESSION_TTL_ENTRIES: u64 = 200_000;
/// Most expired records one entry sweeps (the rest wait for the next entries). Above the
/// most sessions one entry can create, so the table cannot outgrow sweeping.
pub const SWEEP_MAX: usize = 8192;
/// Largest encoded outcome a record keeps.
pub const RESULT_KEEP: usize = 64 * 1024;
/// Entries per expiry bucket: a store indexing records by last use may index them by
/// [`bucket`] instead, and sweep a bucket once all of it expired ([`sweepable_below`]).
pub const SWEEP_BUCKET: u64 = 1024;

/// A deterministic fingerprint of a request (FNV-1a over its bincode encoding): the same
/// on every node and in every process, unlike the standard library's keyed hasher.
pub fn fingerprint<T: Serialize + ?Sized>(request: &T) -> u64 {
    let bytes = bincode::serialize(request).unwrap_or_default();
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// What a record keeps of an outcome. The variant order is part of the encoding
/// ([`encode_kept`]): `Whole` and `NotKept` are the SQL store's original layout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Kept<O> {
    /// The outcome as it was.
    Whole(O),
    /// The outcome took this many bytes, more than [`RESULT_KEEP`]: not kept.
    NotKept { bytes: u64 },
    /// The outcome without parts the state machine dropped to bound the record (see
    /// [`SessionOutcome::keep`]); the state machine restores them on a retry, or says the
    /// outcome is unknown.
    Trimmed(O),
}

/// `outcome` whole, or `NotKept` when it encodes to more than [`RESULT_KEEP`] bytes: the
/// default of [`SessionOutcome::keep`].
pub fn keep_bounded<O: Clone + Serialize>(outcome: &O) -> Kept<O> {
    match bincode::serialized_size(&Kept::Whole(outcome)) {
        Ok(n) if n as usize <= RESULT_KEEP => Kept::Whole(outcome.clone()),
        Ok(n) => Kept::NotKept { bytes: n },
        Err(_) => Kept::NotKept { bytes: u64::MAX },
    }
}

/// An outcome type sessions can remember.
pub trait SessionOutcome: Clone + Serialize + DeserializeOwned {
    /// The outcome as a record keeps it. By default whole, or `NotKept` when it encodes
    /// to more than [`RESULT_KEEP`] bytes; a state machine that can restore large parts
    /// of an outcome on a retry may instead drop them (`Trimmed`), keeping the record
    /// about as small.
    fn keep(&self) -> Kept<Self> {
        keep_bounded(self)
    }
    /// A write refused as a whole, nothing changed.
    fn rejected(why: String) -> Self;
    /// A write whose outcome is no longer known.
    fn superseded(why: String) -> Self;
    /// A write whose seq the session already used for a different request; nothing
    /// changed.
    fn reused(why: String) -> Self;
}

/// What a store remembers of one client.
#[derive(Clone, Debug, PartialEq)]
pub struct Record<O> {
    /// The last seq applied.
    pub seq: u64,
    /// Log index of the entry that last used the session.
    pub last_index: u64,
    /// [`fingerprint`] of the request `seq` named.
    pub fingerprint: u64,
    /// Its outcome.
    pub kept: Kept<O>,
}

/// What to do with a write.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision<O> {
    /// Run it (a new seq, or no live record) and then call [`EntrySessions::ran`].
    Run,
    /// Answer this without running anything: a remembered outcome or a refusal.
    Answer(O),
    /// The remembered outcome, trimmed ([`Kept::Trimmed`]): the state machine restores
    /// what it dropped, or answers that the outcome is no longer known.
    Trimmed(O),
}

/// True when a record last used at `last_index` still counts for a write at `index`.
pub fn alive(last_index: u64, index: u64) -> bool {
    index <= last_index.saturating_add(SESSION_TTL_ENTRIES + 1)
}

/// The first index of the expiry bucket of `last_index`.
pub fn bucket(last_index: u64) -> u64 {
    last_index - last_index % SWEEP_BUCKET
}

/// After the entry at `index`, a record indexed under a bucket start below the returned
/// value is expired: its last use is at most `bucket + SWEEP_BUCKET - 1`, and no entry
/// from `index + 1` on is [`alive`] for it. `None` when no bucket is.
pub fn sweepable_below(index: u64) -> Option<u64> {
    (index + 1)
        .checked_sub(SESSION_TTL_ENTRIES + SWEEP_BUCKET)
        .filter(|b| *b > 0)
}

/// The answer for a write whose outcome was applied but not kept.
fn not_kept<O: SessionOutcome>(bytes: u64) -> O {
    O::superseded(format!(
        "this write was applied earlier, but its result ({bytes} bytes) was too large to \
         keep for retries"
    ))
}

/// Decides a write `(client_id, seq)` with request fingerprint `fp` at log index `index`,
/// given the client's record if any.
pub fn decide<O: SessionOutcome>(
    rec: Option<&Record<O>>,
    client_id: u64,
    seq: u64,
    fp: u64,
    index: u64,
) -> Decision<O> {
    let Some(rec) = rec.filter(|r| alive(r.last_index, index)) else {
        return Decision::Run;
    };
    if seq > rec.seq {
        return Decision::Run;
    }
    if seq < rec.seq {
        return Decision::Answer(O::superseded(format!(
            "sequence number {seq} of client {client_id} is older than its last applied one \
             ({}); whether it was applied earlier is no longer known",
            rec.seq
        )));
    }
    if rec.fingerprint != fp {
        return Decision::Answer(O::reused(format!(
            "session ({client_id}, {seq}) {SESSION_REUSED}"
        )));
    }
    match &rec.kept {
        Kept::Whole(o) => Decision::Answer(o.clone()),
        Kept::Trimmed(o) => Decision::Trimmed(o.clone()),
        Kept::NotKept { bytes } => Decision::Answer(not_kept(*bytes)),
    }
}

/// The record a write leaves: `outcome` as [`SessionOutcome::keep`] keeps it.
pub fn record<O: SessionOutcome>(seq: u64, fp: u64, index: u64, outcome: &O) -> Record<O> {
    Record {
        seq,
        last_index: index,
        fingerprint: fp,
        kept: outcome.keep(),
    }
}

/// Where a state machine keeps its records. Implemented over the store's own atomic write
/// of an entry, so records and state commit together.
pub trait SessionStore<O> {
    /// The client's record as of the start of the entry being applied, if any (expired or
    /// not: [`decide`] judges).
    fn load(&mut self, client_id: u64) -> Result<Option<Record<O>>>;
    /// Writes the record `rec` of `client_id` left by the entry; `before` is the record it
    /// replaces (as [`SessionStore::load`] returned it).
    fn save(&mut self, client_id: u64, rec: &Record<O>, before: Option<&Record<O>>) -> Result<()>;
    /// After the entry at `index`, removes at most [`SWEEP_MAX`] records that expired (not
    /// [`alive`] for entry `index + 1`); never one of `used` (the clients whose records
    /// this entry saved).
    fn sweep(&mut self, index: u64, used: &dyn Fn(u64) -> bool) -> Result<()>;
}

/// The sessions of one log entry being applied.
pub struct EntrySessions<O> {
    index: u64,
    /// Records as of the entry's start, loaded once.
    before: HashMap<u64, Option<Record<O>>>,
    /// Records this entry leaves, by client (ordered: stores write them in one order).
    after: BTreeMap<u64, Record<O>>,
}

impl<O: SessionOutcome> EntrySessions<O> {
    /// Sessions for the entry at `index`.
    pub fn new(index: u64) -> Self {
        EntrySessions {
            index,
            before: HashMap::new(),
            after: BTreeMap::new(),
        }
    }

    /// The client's record as this entry left it so far.
    fn current(
        &mut self,
        store: &mut dyn SessionStore<O>,
        client: u64,
    ) -> Result<Option<&Record<O>>> {
        if !self.after.contains_key(&client) && !self.before.contains_key(&client) {
            let rec = store.load(client)?;
            self.before.insert(client, rec);
        }
        Ok(self
            .after
            .get(&client)
            .or_else(|| self.before.get(&client).and_then(Option::as_ref)))
    }

    /// Decides the write `(client_id, seq)` with request fingerprint `fp`.
    pub fn decide(
        &mut self,
        store: &mut dyn SessionStore<O>,
        client_id: u64,
        seq: u64,
        fp: u64,
    ) -> Result<Decision<O>> {
        let index = self.index;
        let rec = self.current(store, client_id)?;
        Ok(decide(rec, client_id, seq, fp, index))
    }

    /// Records that the write `(client_id, seq)` with fingerprint `fp` ran with `outcome`
    /// (call it exactly for the writes [`EntrySessions::decide`] said to run).
    pub fn ran(
        &mut self,
        store: &mut dyn SessionStore<O>,
        client_id: u64,
        seq: u64,
        fp: u64,
        outcome: &O,
    ) -> Result<()> {
        self.current(store, client_id)?;
        self.after
            .insert(client_id, record(seq, fp, self.index, outcome));
        Ok(())
    }

    /// Hands the entry's records to the store and lets it sweep expired ones.
    pub fn finish(self, store: &mut dyn SessionStore<O>) -> Result<()> {
        for (client, rec) in &self.after {
            let before = self.before.get(client).and_then(Option::as_ref);
            store.save(*client, rec, before)?;
        }
        let after = &self.after;
        store.sweep(self.index, &|c| after.contains_key(&c))
    }
}

/// The layout of a record in one value (the KV store's, unchanged since `elided`
/// existed): seq, outcome, last index, fingerprint, whether the outcome is trimmed.
#[derive(Serialize, Deserialize)]
struct RecordV2<O> {
    seq: u64,
    outcome: O,
    last_index: u64,
    fingerprint: u64,
    trimmed: bool,
}

/// The layout before the trimmed flag existed, still read.
#[derive(Deserialize)]
struct RecordV1<O> {
    seq: u64,
    outcome: O,
    last_index: u64,
    fingerprint: u64,
}

/// Encodes a whole record as one value. A `NotKept` outcome is stored as the answer a
/// retry gets (a superseded outcome), which this layout can hold.
pub fn encode_record<O: SessionOutcome>(rec: &Record<O>) -> Result<Vec<u8>> {
    let (outcome, trimmed) = match &rec.kept {
        Kept::Whole(o) => (o.clone(), false),
        Kept::Trimmed(o) => (o.clone(), true),
        Kept::NotKept { bytes } => (not_kept(*bytes), false),
    };
    Ok(bincode::serialize(&RecordV2 {
        seq: rec.seq,
        outcome,
        last_index: rec.last_index,
        fingerprint: rec.fingerprint,
        trimmed,
    })?)
}

/// Decodes [`encode_record`]'s bytes (and the older layout without the trimmed flag).
pub fn decode_record<O: SessionOutcome>(bytes: &[u8]) -> Result<Record<O>> {
    let (seq, outcome, last_index, fingerprint, trimmed) =
        match bincode::deserialize::<RecordV2<O>>(bytes) {
            Ok(r) => (r.seq, r.outcome, r.last_index, r.fingerprint, r.trimmed),
            Err(_) => {
                let r: RecordV1<O> = bincode::deserialize(bytes)
                    .map_err(|e| Error::Storage(format!("corrupt session record: {e}")))?;
                (r.seq, r.outcome, r.last_index, r.fingerprint, false)
            }
        };
    Ok(Record {
        seq,
        last_index,
        fingerprint,
        kept: if trimmed {
            Kept::Trimmed(outcome)
        } else {
            Kept::Whole(outcome)
        },
    })
}

/// Encodes the outcome alone, for a store keeping the other fields apart.
pub fn encode_kept<O: SessionOutcome>(kept: &Kept<O>) -> Result<Vec<u8>> {
    Ok(bincode::serialize(kept)?)
}

/// Decodes [`encode_kept`]'s bytes; unreadable bytes become an outcome saying so (a
/// retry learns the write was applied), never a fault of the node.
pub fn decode_kept<O: SessionOutcome>(bytes: &[u8]) -> Kept<O> {
    bincode::deserialize(bytes).unwrap_or_else(|e| {
        Kept::Whole(O::superseded(format!(
            "this write was applied earlier, but its remembered result is unreadable ({e})"
        )))
    })
}

#[cfg(test)]
pub(crate) mod tests;
