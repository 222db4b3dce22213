//! At-most-once sessions for SQL writes: what to do with a (client id, seq) given what
//! the state machine remembers of that client. The same rule as the key-value store's
//! (`kv` module docs), in one small type and one function with no storage of their own
//! (the store keeps records in its internal `_paxosdb_sessions` table), so that a generic
//! session table can later replace both.
//!
//! # Invariants
//!
//! - `seq` equal to the remembered one with the same request (same [`fingerprint`])
//!   returns the remembered outcome and runs nothing; the same `seq` with another request
//!   is rejected with an error containing [`crate::command::SESSION_REUSED`]; an older
//!   `seq` is refused as [`SqlOutcome::Superseded`] (its outcome is no longer known).
//! - Expiry is by log index, never by clock: a record last used by the entry at `L` is
//!   alive for entries up to `L + TTL + 1` (the same bound as the KV store: a duplicate
//!   decided at `L + TTL + 1` at the latest gets the remembered answer). Lookups apply this
//!   rule themselves, so when the physical sweep runs (bounded, at most
//!   [`SWEEP_MAX`] records per entry) never changes an outcome.
//! - A remembered outcome holds at most [`RESULT_KEEP`] bytes; a larger one is
//!   remembered as "applied, result not kept" (a retry learns it was applied).

use super::store::SqlOutcome;
use super::Request;
use crate::command::SESSION_REUSED;
use serde::{Deserialize, Serialize};

/// A session unused for this many log entries is forgotten (the KV store's value).
pub const SESSION_TTL_ENTRIES: u64 = crate::kv::SESSION_TTL_ENTRIES;
/// Most expired records one entry sweeps.
pub const SWEEP_MAX: u64 = 8192;
/// Largest encoded outcome a session record keeps.
pub const RESULT_KEEP: usize = 64 * 1024;

/// What the store remembers of one client.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionRecord {
    pub seq: u64,
    /// Log index of the entry that last used the session.
    pub last_index: u64,
    /// [`fingerprint`] of the request `seq` named.
    pub fingerprint: u64,
    /// The outcome, encoded ([`Remembered`]).
    pub outcome: Vec<u8>,
}

/// A remembered outcome as stored.
#[derive(Serialize, Deserialize)]
enum Remembered {
    Outcome(SqlOutcome),
    /// The outcome was larger than [`RESULT_KEEP`] bytes.
    NotKept {
        bytes: u64,
    },
}

/// What to do with a write.
#[derive(Debug, PartialEq)]
pub enum Decision {
    /// Run it (a new seq, or no live record).
    Run,
    /// Answer without running.
    Answer(SqlOutcome),
}

/// A deterministic fingerprint of a request (FNV-1a over its encoding), the same on
/// every node and in every process.
pub fn fingerprint(req: &Request) -> u64 {
    let bytes = bincode::serialize(req).unwrap_or_default();
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// True when `rec` still counts at `index` (see the module docs).
pub fn alive(rec: &SessionRecord, index: u64) -> bool {
    index <= rec.last_index.saturating_add(SESSION_TTL_ENTRIES + 1)
}

/// Decides a write (client, seq, request fingerprint) at `index`, given the client's
/// record if any.
pub fn decide(
    rec: Option<&SessionRecord>,
    client_id: u64,
    seq: u64,
    fp: u64,
    index: u64,
) -> Decision {
    let Some(rec) = rec.filter(|r| alive(r, index)) else {
        return Decision::Run;
    };
    if seq > rec.seq {
        return Decision::Run;
    }
    if seq < rec.seq {
        return Decision::Answer(SqlOutcome::Superseded(format!(
            "sequence number {seq} of client {client_id} is older than its last applied one \
             ({}); whether it was applied earlier is no longer known",
            rec.seq
        )));
    }
    if rec.fingerprint != fp {
        return Decision::Answer(SqlOutcome::Rejected(format!(
            "session ({client_id}, {seq}) {SESSION_REUSED}"
        )));
    }
    Decision::Answer(recall(&rec.outcome))
}

/// The record a write leaves (its outcome bounded to [`RESULT_KEEP`] bytes).
pub fn record(seq: u64, fp: u64, index: u64, outcome: &SqlOutcome) -> SessionRecord {
    let full = bincode::serialize(&Remembered::Outcome(outcome.clone())).unwrap_or_default();
    let outcome = if full.len() > RESULT_KEEP {
        bincode::serialize(&Remembered::NotKept {
            bytes: full.len() as u64,
        })
        .unwrap_or_default()
    } else {
        full
    };
    SessionRecord {
        seq,
        last_index: index,
        fingerprint: fp,
        outcome,
    }
}

fn recall(bytes: &[u8]) -> SqlOutcome {
    match bincode::deserialize::<Remembered>(bytes) {
        Ok(Remembered::Outcome(o)) => o,
        Ok(Remembered::NotKept { bytes }) => SqlOutcome::Superseded(format!(
            "this request was applied earlier, but its result ({bytes} bytes) was too large \
             to keep for retries"
        )),
        Err(e) => SqlOutcome::Superseded(format!(
            "this request was applied earlier, but its remembered result is unreadable ({e})"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::{Statement, StatementResult};

    fn req(sql: &str) -> Request {
        Request {
            statements: vec![Statement::new(sql)],
            transaction: false,
        }
    }

    fn done(n: u64) -> SqlOutcome {
        SqlOutcome::Results(vec![StatementResult {
            rows_affected: Some(n),
            ..Default::default()
        }])
    }

    #[test]
    fn retry_reuse_old_and_expiry() {
        let a = fingerprint(&req("INSERT INTO t VALUES (1)"));
        let b = fingerprint(&req("INSERT INTO t VALUES (2)"));
        assert_ne!(a, b);
        assert_eq!(decide(None, 7, 1, a, 10), Decision::Run);
        let rec = record(5, a, 10, &done(1));
        assert_eq!(decide(Some(&rec), 7, 5, a, 11), Decision::Answer(done(1)));
        assert_eq!(decide(Some(&rec), 7, 6, b, 11), Decision::Run);
        match decide(Some(&rec), 7, 5, b, 11) {
            Decision::Answer(SqlOutcome::Rejected(m)) => assert!(m.contains(SESSION_REUSED)),
            d => panic!("{d:?}"),
        }
        assert!(matches!(
            decide(Some(&rec), 7, 4, a, 11),
            Decision::Answer(SqlOutcome::Superseded(_))
        ));
        // Alive through L + TTL + 1, forgotten after.
        let last = 10 + SESSION_TTL_ENTRIES + 1;
        assert_eq!(decide(Some(&rec), 7, 5, a, last), Decision::Answer(done(1)));
        assert_eq!(decide(Some(&rec), 7, 5, a, last + 1), Decision::Run);
    }

    #[test]
    fn large_outcomes_are_not_kept() {
        let big = SqlOutcome::Results(vec![StatementResult {
            rows: vec![vec![crate::sql::Value::Blob(vec![0; RESULT_KEEP])]],
            ..Default::default()
        }]);
        let fp = fingerprint(&req("x"));
        let rec = record(1, fp, 3, &big);
        assert!(rec.outcome.len() < 100);
        match decide(Some(&rec), 1, 1, fp, 4) {
            Decision::Answer(SqlOutcome::Superseded(m)) => assert!(m.contains("too large")),
            d => panic!("{d:?}"),
        }
    }
}
