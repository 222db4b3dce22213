//! Replicated SQL: a SQLite database per node, changed only by statements ordered in the
//! log (the second state machine beside `kv`).
//!
//! Built in steps; so far only the shared vocabulary ([`types`]) exists.
//!
//! # Invariants
//!
//! - Only decided log entries change a node's SQL database.

pub mod types;

pub use types::{Params, ReadLevel, Request, Statement, StatementResult, Value};

pub mod local;

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
/// gRPC) call. Authorization happens in the API layer, before these are called.
pub trait SqlService: Send + Sync + 'static {
    /// Runs `req` through the log: every replica applies it, once (per session, if
    /// given). Results in statement order.
    fn execute(
        &self,
        req: Request,
        session: Option<SqlSession>,
    ) -> BoxFuture<'_, Result<Vec<StatementResult>>>;
    /// Runs read-only `req` at `level`. A statement that would write is refused with
    /// `Error::InvalidInput` (it belongs in `execute`).
    fn query(&self, req: Request, level: ReadLevel) -> BoxFuture<'_, Result<QueryOutput>>;
}
