//! Where the SQL store keeps its session records: the internal table
//! `_paxosdb_sessions` of its SQLite database, written by the apply connection inside the
//! entry's transaction. The rule itself (run, answer the remembered outcome, reject a
//! reused seq, refuse an older one; expiry by log index) is [`crate::session`]'s, the same
//! as the key-value store's; this module is its [`SessionStore`] on SQLite.
//!
//! A record is one row: `client_id` (the primary key), `seq`, `last_index`,
//! `fingerprint`, and `outcome`, the remembered [`SqlOutcome`] as
//! [`session::encode_kept`] writes it. An index on `(last_index, client_id)` lets the sweep
//! find expired rows in order.
//!
//! # Invariants
//!
//! - Records are written and swept only inside the apply connection's transaction of the
//!   entry (by [`crate::sql::store::SqlStore::apply`]), so they commit or roll back with
//!   the entry's statements and its applied index.
//! - The layout is the one earlier releases wrote: an existing database keeps its records.
//! - No user statement reads or writes the table (see `exec`): only paxosdb's trusted
//!   statements here do.

use super::exec::Guard;
use super::store::{sql_err, SqlOutcome};
use crate::error::Result;
use crate::session::{self, Record, SessionOutcome, SessionStore};
use rusqlite::{Connection, OptionalExtension};

impl SessionOutcome for SqlOutcome {
    fn rejected(why: String) -> Self {
        SqlOutcome::Rejected(why)
    }

    fn superseded(why: String) -> Self {
        SqlOutcome::Superseded(why)
    }

    fn reused(why: String) -> Self {
        SqlOutcome::SessionReused(why)
    }
}

/// The records of one store, through its apply connection.
pub(crate) struct SqlRecords<'a> {
    pub(crate) conn: &'a Connection,
    pub(crate) guard: &'a Guard,
}

impl SessionStore<SqlOutcome> for SqlRecords<'_> {
    fn load(&mut self, client_id: u64) -> Result<Option<Record<SqlOutcome>>> {
        let row = self
            .guard
            .trusted(|| {
                self.conn
                    .prepare_cached(
                        "SELECT seq, last_index, fingerprint, outcome FROM _paxosdb_sessions \
                         WHERE client_id = ?1",
                    )?
                    .query_row([client_id as i64], |r| {
                        Ok((
                            r.get::<_, i64>(0)? as u64,
                            r.get::<_, i64>(1)? as u64,
                            r.get::<_, i64>(2)? as u64,
                            r.get::<_, Vec<u8>>(3)?,
                        ))
                    })
                    .optional()
            })
            .map_err(sql_err)?;
        Ok(row.map(|(seq, last_index, fingerprint, outcome)| Record {
            seq,
            last_index,
            fingerprint,
            kept: session::decode_kept(&outcome),
        }))
    }

    fn save(
        &mut self,
        client_id: u64,
        rec: &Record<SqlOutcome>,
        _before: Option<&Record<SqlOutcome>>,
    ) -> Result<()> {
        let outcome = session::encode_kept(&rec.kept)?;
        self.guard
            .trusted(|| {
                self.conn
                    .prepare_cached(
                        "INSERT OR REPLACE INTO _paxosdb_sessions \
                         (client_id, seq, last_index, fingerprint, outcome) \
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                    )?
                    .execute(rusqlite::params![
                        client_id as i64,
                        rec.seq as i64,
                        rec.last_index as i64,
                        rec.fingerprint as i64,
                        outcome
                    ])
            })
            .map_err(sql_err)?;
        Ok(())
    }

    /// Deletes the oldest expired rows. A used client's row was just rewritten with this
    /// entry's index, so it is never among them.
    fn sweep(&mut self, index: u64, _used: &dyn Fn(u64) -> bool) -> Result<()> {
        // Expired after this entry: last_index + TTL + 1 <= index.
        let Some(cutoff) = index.checked_sub(session::SESSION_TTL_ENTRIES + 1) else {
            return Ok(());
        };
        self.guard
            .trusted(|| {
                self.conn
                    .prepare_cached(
                        "DELETE FROM _paxosdb_sessions WHERE client_id IN \
                         (SELECT client_id FROM _paxosdb_sessions WHERE last_index <= ?1 \
                          ORDER BY last_index, client_id LIMIT ?2)",
                    )?
                    .execute(rusqlite::params![cutoff as i64, session::SWEEP_MAX as i64])
            })
            .map_err(sql_err)?;
        Ok(())
    }
}
