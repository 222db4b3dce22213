//! [`NodeHandle`]: the protocol-neutral API of a running node. It hands opaque commands
//! of any state machine and read barriers to the node thread, and reports the node's
//! status and membership. The typed handles sit above it: [`crate::kv::KvHandle`] for
//! keys and values, [`crate::sql::machine::SqlHandle`] for SQL; the listeners (gRPC,
//! HTTP/JSON, Redis protocol) call those.
//!
//! Nothing here retries: a write either gets its applied result, an error saying nothing
//! happened, or [`Error::OutcomeUnknown`].

use super::admission::Admission;
use super::Event;
use crate::command::Limits;
use crate::error::{Error, Result};
use crate::machine::{Command, NodeId, Outcome};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use tokio::sync::oneshot;

/// Largest number of rows one scan returns.
pub const MAX_SCAN_LIMIT: usize = 10_000;
/// Rows a scan returns when no limit is given.
pub const DEFAULT_SCAN_LIMIT: usize = 1000;

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// Reflects every write acknowledged before the read started (the default).
    Linearizable,
    /// This node's local copy, possibly behind; the answer reports its applied index.
    Stale,
}

/// A node's place in the consensus group as it sees itself (not a user's
/// [`crate::auth::Role`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeRole {
    Leader,
    Follower,
    /// No leader known, or this node is still becoming leader.
    Candidate,
    /// A membership change removed this node; it serves nothing.
    Removed,
}

impl NodeRole {
    pub fn as_str(&self) -> &'static str {
        match self {
            NodeRole::Leader => "leader",
            NodeRole::Follower => "follower",
            NodeRole::Candidate => "candidate",
            NodeRole::Removed => "removed",
        }
    }
}

/// A snapshot of the node's consensus state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    pub id: NodeId,
    pub role: NodeRole,
    pub leader: Option<NodeId>,
    pub decided_index: u64,
    pub applied_index: u64,
    /// The log holds entries from here on; earlier ones are in the state machine only.
    pub compacted_index: u64,
    /// The peer whose state this node is fetching, while it catches up.
    pub catching_up_from: Option<NodeId>,
    /// The membership in force.
    pub membership: crate::membership::Membership,
    /// When this node last received a message from the leader it knows (`None`: on the
    /// leader itself, with no leader known, or never since it started).
    pub leader_contact: Option<std::time::Instant>,
    /// True while this node has heard from fewer than a majority of the members for one
    /// and a half election rounds: it refuses requests until it hears from them again.
    pub cut_off: bool,
}

/// A cloneable handle to a running node.
#[derive(Clone)]
pub struct NodeHandle {
    pub(crate) tx: Sender<Event>,
    pub(crate) limits: Limits,
    /// The bound on client work this node holds (shared by every listener).
    pub(crate) admission: Arc<Admission>,
}

fn stopped() -> Error {
    Error::Unavailable("the node is shutting down".into())
}

impl NodeHandle {
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The node's admission control (in-flight bytes, disk floor).
    pub fn admission(&self) -> &Arc<Admission> {
        &self.admission
    }

    /// Replicates one command of any state machine and returns that machine's encoded
    /// result once the command is decided and applied here. Protocol-neutral: the typed
    /// handles ([`crate::kv::KvHandle`], [`crate::sql::machine::SqlHandle`]) encode and
    /// decode.
    pub async fn submit(&self, cmd: Command) -> Result<Vec<u8>> {
        if cmd.client_id == 0 || cmd.seq == 0 {
            return Err(Error::invalid(
                "a write needs a session: client_id and seq must be non-zero",
            ));
        }
        // Held by the node until the write's waiter is gone: the bytes of unanswered
        // writes stay bounded even when clients hang up.
        let ticket = self.admission.write(cmd.size())?;
        let (reply, rx) = oneshot::channel();
        let ev = Event::Held(Box::new(Event::Write { cmd, reply }), ticket);
        self.tx.send(ev).map_err(|_| stopped())?;
        match rx.await {
            Ok(Ok(Outcome::Done(result))) => Ok(result),
            Ok(Ok(Outcome::Rejected(why))) => Err(Error::InvalidInput(why)),
            Ok(Ok(Outcome::Superseded(why))) => Err(Error::OutcomeUnknown(why)),
            Ok(Ok(Outcome::Denied(why))) => Err(Error::PermissionDenied(why)),
            Ok(Ok(Outcome::SessionReused(why))) => Err(Error::SessionReused(why)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::OutcomeUnknown(
                "the node stopped while the write was in flight".into(),
            )),
        }
    }

    /// Waits until this node's state reflects every write acknowledged before the call.
    pub async fn read_barrier(&self) -> Result<()> {
        let _ticket = self.admission.read()?;
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Event::ReadBarrier { reply })
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Waits for a read barrier if `consistency` asks for one.
    pub(crate) async fn prepare_read(&self, consistency: Consistency) -> Result<()> {
        match consistency {
            Consistency::Linearizable => self.read_barrier().await,
            Consistency::Stale => Ok(()),
        }
    }

    /// Checks that a stale read here is within a freshness bound: this node is the leader
    /// or heard from the leader within `max`, and, if `strict`, it applied every entry it
    /// knows to be decided. Outside the bound: `Unavailable` (another node may be fresh).
    pub async fn check_fresh(&self, max: std::time::Duration, strict: bool) -> Result<()> {
        let st = self.status().await?;
        if strict && st.applied_index < st.decided_index {
            return Err(Error::Unavailable(format!(
                "stale read: this node applied up to index {} of {} decided (freshness_strict)",
                st.applied_index, st.decided_index
            )));
        }
        if st.role == NodeRole::Leader {
            return Ok(());
        }
        let age = st.leader_contact.map(|t| t.elapsed());
        match age {
            Some(age) if age <= max => Ok(()),
            Some(age) => Err(Error::Unavailable(format!(
                "stale read: this node last heard from the leader {} ms ago, over the \
                 freshness bound of {} ms",
                age.as_millis(),
                max.as_millis()
            ))),
            None => Err(Error::Unavailable(
                "stale read: this node is not in contact with a leader".into(),
            )),
        }
    }

    /// This node's consensus state.
    pub async fn status(&self) -> Result<NodeStatus> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Event::Status { reply })
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())
    }

    /// Adds `add` and removes `remove` in one configuration change; returns the new
    /// membership once this node applied it.
    pub async fn change_membership(
        &self,
        add: Vec<crate::config::Member>,
        remove: Vec<NodeId>,
    ) -> Result<crate::membership::Membership> {
        let (ev, rx) = Event::change(add, remove);
        self.tx.send(ev).map_err(|_| stopped())?;
        rx.await.map_err(|_| {
            Error::OutcomeUnknown(
                "the node stopped while the membership change was in flight".into(),
            )
        })?
    }

    /// Runs `f` in the node thread between two applied entries, with the applied index
    /// once every machine made it durable (see [`Event::Between`]); returns what it
    /// returned.
    pub async fn between<T: Send + 'static>(
        &self,
        f: impl FnOnce(Result<u64>) -> T + Send + 'static,
    ) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        let run = Box::new(move |applied| {
            let _ = reply.send(f(applied));
        });
        self.tx.send(Event::Between(run)).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())
    }

    /// Asks the node thread to stop.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Event::Shutdown);
    }
}
