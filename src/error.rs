//! The one error type of paxosdb, grouped by how a caller reacts to it.
//!
//! - *Retry*: [`Error::Unavailable`] — nothing happened; the same request may be sent again,
//!   to this node or another. [`Error::Overloaded`] likewise, after a short pause: the node
//!   refused the request at its door because a bound on queued work was reached.
//! - *Unknown outcome*: [`Error::OutcomeUnknown`] — a write may or may not have been applied.
//!   Retrying it with the same session (client id, sequence number) is safe and returns the
//!   original result if it was applied. Never report this as a failure.
//! - *Fix the request*: [`Error::InvalidInput`] — bad key, value, argument; nothing changed.
//!   Two cases of it carry their own variant because clients react to them differently:
//!   [`Error::TooLarge`] (a size limit: send less) and [`Error::SessionReused`] (the
//!   session's seq already named another request: take a new seq).
//! - *Fix the credentials*: [`Error::Unauthenticated`] (none, or wrong ones) and
//!   [`Error::PermissionDenied`] (the user's role or key prefix forbids it); nothing changed.
//! - *Fix the setup*: [`Error::Config`] — wrong configuration or a data directory in use.
//! - *Bug or broken disk*: [`Error::Internal`] and [`Error::Storage`].
//!
//! Expected outcomes (a missing key, a failed compare) are values, never errors.

use std::fmt;

/// Result alias used throughout paxosdb.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong, grouped by the caller's reaction (see module docs).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Nothing was done (no leader, no quorum, node shutting down, peer unreachable):
    /// safe to retry.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The node refused the request because a bound on the work it holds was reached
    /// (bytes of writes in flight, disk nearly full): nothing was done; retry after a
    /// short pause, here or on another node.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// The request timed out or the connection broke after it was sent: the write may or
    /// may not have been applied. Retry with the same session to learn the result.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// The request is malformed; nothing changed.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The request exceeds a size limit (key, value, statement, request); nothing changed.
    /// The same request fails again: send less.
    #[error("too large: {0}")]
    TooLarge(String),
    /// The session's seq was already used for a different request; nothing changed. Use
    /// the next seq (answering with the other request's result would lose this one).
    #[error("session reused: {0}")]
    SessionReused(String),
    /// The request carried no credentials where they are required, or wrong ones; nothing
    /// changed. Fix the credentials.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The authenticated user's role or key prefix does not allow the request; nothing
    /// changed.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// A watch asked for changes from a revision the node's watch history no longer holds
    /// (it keeps a bounded window): nothing before `oldest` can be replayed. Start again
    /// from `oldest` (after reading the current state) or from now.
    #[error(
        "compacted: the watch history no longer holds revision {requested}; the oldest \
         revision it holds is {oldest}"
    )]
    Compacted { requested: u64, oldest: u64 },
    /// The configuration is wrong or the data directory cannot be used.
    #[error("configuration error: {0}")]
    Config(String),
    /// A disk or database error.
    #[error("storage error: {0}")]
    Storage(String),
    /// A bug: an invariant did not hold.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// True when the same request may simply be sent again.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Unavailable(_) | Error::Overloaded(_) | Error::OutcomeUnknown(_)
        )
    }

    pub(crate) fn invalid(msg: impl fmt::Display) -> Self {
        Error::InvalidInput(msg.to_string())
    }

    pub(crate) fn too_large(msg: impl fmt::Display) -> Self {
        Error::TooLarge(msg.to_string())
    }

    /// True when the request itself is at fault (malformed, too large, a reused seq):
    /// nothing changed and the same request fails again.
    pub fn is_invalid_request(&self) -> bool {
        matches!(
            self,
            Error::InvalidInput(_) | Error::TooLarge(_) | Error::SessionReused(_)
        )
    }
}

impl From<rocksdb::Error> for Error {
    fn from(e: rocksdb::Error) -> Self {
        Error::Storage(e.into_string())
    }
}

impl From<bincode::Error> for Error {
    fn from(e: bincode::Error) -> Self {
        Error::Internal(format!("encoding: {e}"))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Storage(e.to_string())
    }
}
