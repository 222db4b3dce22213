//! Replicated SQL: a SQLite database per node, changed only by statements ordered in the
//! log (the second state machine beside `kv`).
//!
//! What exists so far, bottom to top:
//!
//! - [`types`]: the shared vocabulary (values, statements, requests, results, read levels).
//! - [`determinism`]: what the *proposing* node does to a write before it enters the log:
//!   `random()`, `randomblob(N)`, `CURRENT_TIMESTAMP`/`_DATE`/`_TIME` and `'now'` become
//!   literal values; what cannot be made deterministic is refused. Every replica then runs
//!   the same text with the same parameters.
//! - [`store`]: [`SqlStore`], the state machine. `apply(index, writes)` runs every SQL write
//!   of one log entry in ONE SQLite transaction together with the applied index and the
//!   session records, after checking each write's user against the user table as of the
//!   entry ([`UserTable`]); [`SqlReader`] runs read-only queries on separate connections,
//!   from any thread, while the apply thread writes. Internal tables (`_paxosdb_*`) are
//!   unreachable by user statements (an authorizer); a VM-step budget stops runaway
//!   statements identically on every replica.
//! - [`session`]: the at-most-once rule for a (client id, seq) (the KV store's rule, kept in
//!   one small function so one generic implementation can replace both).
//! - [`snapshot`]: catch-up: a consistent copy (SQLite's backup API) streamed as
//!   checksummed chunks, staged beside the live database, installed by one atomic rename
//!   of the `CURRENT` pointer.
//! - [`machine`]: the adapters: `SqlMachine` (the store as the node's second state
//!   machine, driven by the replica core through `machine::StateMachine`), `SqlHandle`
//!   (what the SQL APIs call: writes through the log, queries after the read barrier),
//!   and the store's state transfer (`transfer::Transferable` on [`SqlReader`]).
//!
//! # Invariants
//!
//! - Only decided log entries change a node's SQL database.
//! - Apply is deterministic: it reads only the database, the entry and the user table as
//!   of the entry (the same on every replica: `store`, *Rights at apply*). Time and
//!   randomness enter only as literals written by the proposer ([`determinism`]); the apply
//!   connection fails `random()`, `randomblob()`, `total_changes()`, `CURRENT_TIMESTAMP`
//!   and a date function reading `'now'` or the time zone loudly, and resets
//!   `last_insert_rowid()`/`changes()` at the start of every request.
//! - Every limit ([`SqlLimits`]) is checked the same way on every replica, so a request
//!   over a limit fails identically everywhere and changes nothing.

pub mod types;

pub use types::{Params, ReadLevel, Request, Statement, StatementResult, Value};

pub mod determinism;
mod exec;
mod lexer;
pub mod machine;
#[cfg(test)]
mod rights_tests;
pub mod session;
pub mod snapshot;
#[cfg(test)]
mod snapshot_tests;
pub mod store;
#[cfg(test)]
mod store_tests;

pub use snapshot::{SqlChunk, SqlEnd, SqlImporter, SqlPart};
pub use store::{SqlOutcome, SqlReader, SqlStore, SqlWrite, UserTable};

use crate::error::Result;
use futures::future::BoxFuture;

/// A client's session for a SQL write: the (client id, sequence number) pair that makes a
/// retried write apply at most once (as for key-value writes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SqlSession {
    pub client_id: u64,
    pub seq: u64,
}

/// What a query returns: the results, and the applied log index they were read at.
#[derive(Clone, Debug, PartialEq)]
pub struct QueryOutput {
    pub results: Vec<StatementResult>,
    pub applied_index: u64,
}

/// What the SQL APIs (rqlite-compatible HTTP, gRPC `paxosdb.v1.Sql`, the CLI through
/// gRPC) call. Authorization happens in the API layer, before these are called; a write
/// is checked again where it is applied (`user`).
pub trait SqlService: Send + Sync + 'static {
    /// Runs `req` through the log: every replica applies it, once (per session, if
    /// given). Results in statement order. `user` is the authenticated user it runs as
    /// (`None`: no user): every replica checks that user's rights again at apply, as of
    /// the write's log position, and a user no longer allowed to write SQL there gets
    /// `Error::PermissionDenied` with nothing changed.
    fn execute(
        &self,
        req: Request,
        session: Option<SqlSession>,
        user: Option<String>,
    ) -> BoxFuture<'_, Result<Vec<StatementResult>>>;
    /// Runs read-only `req` at `level`. A statement that would write is refused with
    /// `Error::InvalidInput` (it belongs in `execute`).
    fn query(&self, req: Request, level: ReadLevel) -> BoxFuture<'_, Result<QueryOutput>>;
}

/// The bounds on SQL work. Apply checks them as part of the state machine, so they MUST be
/// equal on every replica: use [`SqlLimits::default`] outside tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SqlLimits {
    /// Longest SQL text of one statement, in bytes.
    pub max_statement_bytes: usize,
    /// Most statements in one request.
    pub max_statements: usize,
    /// Most bytes of SQL text and parameters in one request.
    pub max_request_bytes: usize,
    /// Most rows in one statement's result.
    pub max_result_rows: usize,
    /// Most bytes of values in one statement's result.
    pub max_result_bytes: usize,
    /// SQLite virtual-machine steps one statement may take (counted in steps of 1000).
    pub step_budget: u64,
    /// Most bytes the user statements of one log entry may grow the database by.
    pub max_entry_growth_bytes: u64,
}

impl Default for SqlLimits {
    fn default() -> SqlLimits {
        SqlLimits {
            max_statement_bytes: 1024 * 1024,
            max_statements: 1000,
            max_request_bytes: 4 * 1024 * 1024,
            max_result_rows: 100_000,
            max_result_bytes: 16 * 1024 * 1024,
            step_budget: 200_000_000,
            max_entry_growth_bytes: 1 << 30,
        }
    }
}

impl SqlLimits {
    /// Checks the size of a request: a clear error, never retryable (the same request
    /// fails again).
    pub fn check_request(&self, req: &Request) -> Result<()> {
        use crate::error::Error;
        if req.statements.len() > self.max_statements {
            return Err(Error::TooLarge(format!(
                "the request has {} statements; at most {} are allowed",
                req.statements.len(),
                self.max_statements
            )));
        }
        let mut total = 0usize;
        for (i, st) in req.statements.iter().enumerate() {
            if st.sql.len() > self.max_statement_bytes {
                return Err(Error::TooLarge(format!(
                    "statement {i} is {} bytes of SQL; at most {} are allowed",
                    st.sql.len(),
                    self.max_statement_bytes
                )));
            }
            total += exec::statement_bytes(st);
        }
        if total > self.max_request_bytes {
            return Err(Error::TooLarge(format!(
                "the request is {total} bytes of SQL and parameters; at most {} are allowed",
                self.max_request_bytes
            )));
        }
        Ok(())
    }
}
