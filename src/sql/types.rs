//! The SQL vocabulary shared by the SQL state machine, the node's typed handle, the APIs
//! (rqlite-compatible HTTP, gRPC) and the client: values, statements with their
//! parameters, requests, per-statement results, and read levels.
//!
//! A [`Request`] is what a client asks for: statements, each with positional or named
//! parameters, optionally run as one transaction. Writes travel through the log as a
//! request already made deterministic by the proposing node (see `sql::determinism`);
//! every replica then runs exactly the same statements with the same parameters.
//!
//! # Invariants
//!
//! - A [`Value`] is one of SQLite's five storage classes; nothing else enters or leaves
//!   the SQL state machine.
//! - A [`StatementResult`] with `error: Some(..)` changed nothing of its own (SQLite
//!   undid the statement); inside a transaction, one failed statement undoes the whole
//!   request, and every result of that request then says so.

use serde::{Deserialize, Serialize};

/// One SQLite value (a storage class).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// A statement's parameters: none, positional (`?`, `?NNN`) or named (`:name`, `@name`,
/// `$name`; the name is given without its prefix character).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub enum Params {
    #[default]
    None,
    Positional(Vec<Value>),
    Named(Vec<(String, Value)>),
}

/// One SQL statement with its parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Statement {
    pub sql: String,
    pub params: Params,
}

impl Statement {
    /// A statement without parameters.
    pub fn new(sql: impl Into<String>) -> Statement {
        Statement {
            sql: sql.into(),
            params: Params::None,
        }
    }
}

/// What a client asks to run: statements in order; with `transaction`, all or nothing.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub statements: Vec<Statement>,
    pub transaction: bool,
}

/// The result of one statement.
///
/// A query fills `columns`, `types` (the declared column types, lower case, empty where
/// SQLite has none) and `rows`; a write fills `last_insert_id` and `rows_affected`. A
/// failed statement has only `error`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatementResult {
    pub columns: Vec<String>,
    pub types: Vec<String>,
    pub rows: Vec<Vec<Value>>,
    pub last_insert_id: Option<i64>,
    pub rows_affected: Option<u64>,
    pub error: Option<String>,
}

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ReadLevel {
    /// Linearizable: reflects every write acknowledged before the read began (the same
    /// read barrier as a linearizable key-value read).
    #[default]
    Linearizable,
    /// Whatever this node has applied, without asking anyone; the result reports the
    /// applied index it was read at.
    Stale,
    /// A stale read with a freshness bound (rqlite's `freshness`): served only by the
    /// leader or by a node that heard from the leader within the last `max_ms`
    /// milliseconds; with `strict`, also only once the node applied every entry it knows
    /// to be decided. A node outside the bound answers `Unavailable` (try another node).
    Fresh { max_ms: u64, strict: bool },
}
