//! Test harness for end-to-end tests: a cluster of real `paxosdb server` processes on
//! loopback, each with its own data directory and log file, that tests can kill with
//! SIGKILL, restart, and talk to through the real client library.
//!
//! The process cluster itself is the project's one harness, `paxosdb::nemesis::cluster`
//! (shared with the nemesis; only built with the `test-machinery` feature, which every
//! test using [`Cluster`] requires in `Cargo.toml`). [`cluster`] puts the tests' own
//! face on it: a temporary directory, waiting for a leader, and a [`ClusterBuilder`]
//! for the setups several files share (TLS certificates, an administrator, settings),
//! so that each test file states only what it tests. [`tools`] holds the helpers the
//! test files share to run the binary and the clients users run (curl, redis-cli).
//!
//! Nothing here sleeps to synchronise: waits poll a condition until a deadline and fail
//! with a message saying what did not happen. A test that cannot run here says so with
//! [`skip`] (see `skip`): it is then counted as skipped, never as passed.
//!
//! Invariants:
//! - a cluster returned by a `start` function has a leader every running node knows,
//!   and, when started with an administrator, every node authenticates it;
//! - dropping a [`Cluster`] kills its processes before its directory is removed.

#![allow(dead_code)]

#[cfg(feature = "test-machinery")]
pub mod cluster;
#[cfg(feature = "test-machinery")]
pub mod readme;
pub mod skip;
pub mod tools;
pub mod workload;

#[cfg(feature = "test-machinery")]
#[allow(unused_imports)]
pub use cluster::{free_ports, Cluster, ClusterBuilder, BIN};
#[allow(unused_imports)]
pub use skip::{partly_skipped, running_as_root, skip, skip_unless_root};

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `f` until it returns `Some`, or panics after `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
