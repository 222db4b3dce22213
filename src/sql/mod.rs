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
