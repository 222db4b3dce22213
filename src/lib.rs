//! paxosdb: a replicated, strongly consistent key-value database.
//!
//! Every node keeps a full copy of the data in RocksDB. Changes are first ordered in a
//! replicated log (OmniPaxos) and then applied by every node in the same order. The crate
//! is organised by layer, top to bottom:
//!
//! - [`api`]: the protocol servers, gRPC, HTTP/JSON and Redis (decode, validate, call
//!   the node); [`metrics`]: request, consensus and fsync metrics for `/metrics`;
//! - [`client`]: the Rust client library (leader-agnostic, retries, sessions);
//!   [`client_config`]: its configuration file (endpoints, TLS, credentials);
//! - [`embed`]: a node inside your own program (`embed::Node::start(dir)`: a single-node
//!   database, growing into a cluster like any other), with in-process key-value and SQL
//!   handles;
//! - [`node`]: the task that owns the OmniPaxos instance, batches commands, applies
//!   decided entries and answers waiters; [`server`] wires a node to its listeners;
//! - [`transport`]: peer-to-peer TCP with framed messages;
//! - [`kv`]: the state machine; [`storage`]: the log storage and the RocksDB home;
//! - [`ratelog`]: rate-limited log lines for failures an outsider can cause at will;
//! - test machinery, compiled only with the `test-machinery` cargo feature (off by
//!   default, so the shipped binary carries none of it; `scripts/test` turns it on):
//!   `check` (the linearizability checker), `sim` (the deterministic simulation) and
//!   `nemesis` (fault tests of a real local cluster), with the `paxosdb sim` and
//!   `paxosdb nemesis` commands.
//!
//! `docs/architecture.md` follows a write and a read through these layers.

pub mod api;
pub mod auth;
pub mod backup;
#[cfg(feature = "test-machinery")]
pub mod check;
pub mod cli;
pub mod client;
pub mod client_config;
pub mod command;
pub mod config;
pub mod embed;
pub mod error;
#[cfg(test)]
pub(crate) mod fault_proxy;
pub mod kv;
pub mod machine;
pub mod membership;
pub mod metrics;
#[cfg(feature = "test-machinery")]
pub mod nemesis;
pub mod node;
pub mod ratelog;
pub mod server;
pub mod session;
#[cfg(feature = "test-machinery")]
pub mod sim;
pub mod sql;
pub mod storage;
pub mod tls;
pub mod transfer;
pub mod transport;

pub use error::{Error, Result};
