//! The seam between the replica core and the state machines it drives.
//!
//! The core (`node/`: OmniPaxos, the log, batching, compaction, catch-up, membership)
//! orders [`Command`]s without knowing what they mean: a command is a session (`client_id`,
//! `seq`), the [`Machine`] it is for, and opaque `payload` bytes that only that machine
//! decodes. A [`LogEntry`] carries a batch of them. After an entry is decided, the core
//! hands each machine the commands meant for it, and each machine returns one opaque
//! [`Outcome`] per command, which the core passes back to whoever waits for it. The typed
//! vocabulary lives beside each machine: `kv` (`WriteOp`/`WriteResult`, `KvHandle`) and
//! `sql` (`Request`/`StatementResult`).
//!
//! The shape follows toydb's `raft::State`: opaque bytes in the log, the adapter beside
//! the state machine, a small trait between them.
//!
//! # Invariants
//!
//! - Every node applies the same commands in the same order; a machine's outcome depends
//!   only on its state and the command (never on a clock, a random source or the node),
//!   so every node computes the same outcome.
//! - A machine applies an entry's commands atomically with advancing its own applied
//!   index, its session records and the membership it records; an index it already
//!   applied is never applied again.
//! - Bytes of a payload the machine cannot decode give the same `Outcome::Rejected` on
//!   every node (nothing changes), never a panic.

use crate::error::{Error, Result};
use crate::membership::Membership;
use omnipaxos::macros::Entry;
use serde::{Deserialize, Serialize};

/// A node's identifier within the cluster (never 0).
pub type NodeId = u64;

/// Which state machine a command is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Machine {
    /// The key-value store (`kv`), also holding users.
    Kv,
    /// The SQL database (`sql`).
    Sql,
}

/// One entry of the replicated log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Entry)]
pub struct LogEntry {
    /// The node that proposed the entry.
    pub proposer: NodeId,
    /// The proposer's sequence number for this batch; with `proposer` it names the entry.
    pub batch_id: u64,
    /// The client commands, applied in order. None: a pure read barrier.
    pub commands: Vec<Command>,
}

/// A client command as replicated: a session, a machine, and bytes only it decodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub client_id: u64,
    pub seq: u64,
    pub machine: Machine,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

impl Command {
    /// Bytes the command takes in a log entry, roughly (bounds batches).
    pub fn size(&self) -> usize {
        self.payload.len() + 24
    }
}

/// What applying a command gave, as the core passes it back to the waiting client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Applied (or recalled for a retry): the machine's encoded result.
    Done(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Not applied, and never will be: the data does not allow it, the payload is not
    /// valid, or the session's seq names another command. Nothing changed.
    Rejected(String),
    /// The session can no longer tell this command's outcome: an unknown outcome, not a
    /// failure (see the KV store's sessions).
    Superseded(String),
}

/// A state machine the core applies decided entries to.
pub trait StateMachine: Send + 'static {
    /// Which commands are this machine's.
    fn machine(&self) -> Machine;
    /// Number of log entries applied so far (the next entry to apply has this index).
    fn applied_index(&self) -> u64;
    /// Applies `commands` (this machine's commands of the log entry at `index`, in log
    /// order; possibly none) atomically with advancing the applied index to `index + 1`.
    /// `index` must equal `applied_index()`. Returns one outcome per command.
    fn apply(&mut self, index: u64, commands: &[&Command]) -> Result<Vec<Outcome>>;
    /// Atomically replaces the live state by the completely staged one and returns the
    /// new applied index. Fails, changing nothing, if no complete staged state exists.
    fn install_staged(&mut self) -> Result<u64> {
        Err(Error::Internal(
            "state transfer is not supported by this state machine".into(),
        ))
    }
    /// The membership set by the last applied configuration change (`None`: the initial
    /// one, from the server's configuration).
    fn membership(&self) -> Result<Option<Membership>> {
        Ok(None)
    }
    /// Applies the configuration change decided at `index` (a stop sign): records `m`
    /// atomically with advancing the applied index past it.
    fn apply_membership(&mut self, index: u64, m: &Membership) -> Result<()> {
        let _ = (index, m);
        Err(Error::Internal(
            "membership changes are not supported by this state machine".into(),
        ))
    }
}
