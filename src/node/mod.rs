//! The node: the one thread that owns the OmniPaxos instance and the state machine.
//!
//! Everything that touches consensus state goes through [`Core`], which runs on its own
//! OS thread (RocksDB writes and fsyncs block; they never run on the async runtime).
//! Requests, peer messages and reconnect notices arrive as [`Event`]s on one channel; the
//! loop drains it, ticks OmniPaxos on a fixed period, and then:
//!
//! 1. **batches** every write and read waiting since the last round into one [`LogEntry`]
//!    and appends it — one log entry, so one synced write on every node, serves them all
//!    (group commit); while that fsync runs, the next batch accumulates;
//! 2. sends OmniPaxos' outgoing messages through the [`Network`];
//! 3. **applies** newly decided entries in order and answers the waiters whose command or
//!    read barrier was in them.
//!
//! Invariants:
//! - a write is answered only after its entry is decided (durable on a majority) and
//!   applied here; a read only after a barrier entry proposed *after* the read arrived was
//!   decided and applied here — so reads are linearizable on any node, leader or not;
//! - a waiter that is not answered within the request timeout gets
//!   [`Error::OutcomeUnknown`] (writes) or [`Error::Unavailable`] (reads), never a failure;
//! - undecided proposals are re-proposed after `repropose_ms`; the sessions in the state
//!   machine make a duplicate harmless.

mod handle;

pub use handle::{Consistency, NodeHandle, NodeStatus, Role, DEFAULT_SCAN_LIMIT, MAX_SCAN_LIMIT};

use crate::command::{Command, LogEntry, NodeId, WriteResult};
use crate::error::{Error, Result};
use crate::kv::StateMachine;
use crate::metrics::Metrics;
use omnipaxos::messages::Message;
use omnipaxos::storage::Storage;
use omnipaxos::util::LogEntry as PaxosEntry;
use omnipaxos::{ClusterConfig, OmniPaxos, OmniPaxosConfig, ServerConfig};
use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Where the node sends its outgoing OmniPaxos messages. Sending never blocks; a message
/// that cannot be delivered is dropped (OmniPaxos resends what matters).
pub trait Network: Send + 'static {
    fn send(&self, msg: Message<LogEntry>);
}

/// Everything the node thread reacts to.
pub enum Event {
    /// A message from a peer.
    Peer(Message<LogEntry>),
    /// The connection to a peer was re-established.
    Reconnected(NodeId),
    /// A client write to replicate.
    Write {
        cmd: Command,
        reply: oneshot::Sender<Result<WriteResult>>,
    },
    /// A linearizable read waits for a barrier.
    ReadBarrier { reply: oneshot::Sender<Result<()>> },
    /// A status snapshot.
    Status { reply: oneshot::Sender<NodeStatus> },
    /// Stop the loop.
    Shutdown,
}

/// Timing and batching knobs of the core.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    pub id: NodeId,
    pub nodes: Vec<NodeId>,
    pub tick: Duration,
    pub election_ticks: u64,
    pub request_timeout: Duration,
    pub repropose_after: Duration,
    pub max_batch_commands: usize,
    pub max_batch_bytes: usize,
    /// First batch id; must differ across restarts of a node (a random start does).
    pub first_batch_id: u64,
}

struct WriteWaiter {
    cmd: Command,
    replies: Vec<(oneshot::Sender<Result<WriteResult>>, Instant)>,
    proposed_at: Option<Instant>,
}

struct Barrier {
    replies: Vec<(oneshot::Sender<Result<()>>, Instant)>,
    proposed_at: Instant,
}

/// The consensus core of one node.
pub struct Core<S: Storage<LogEntry>> {
    cfg: CoreConfig,
    paxos: OmniPaxos<LogEntry, S>,
    sm: Box<dyn StateMachine>,
    net: Box<dyn Network>,
    /// Writes by session, until applied here or timed out. Ordered (not a HashMap): the
    /// tick re-proposes overdue writes in iteration order, and a randomly seeded order
    /// would make the proposed batches, and so a simulation run, irreproducible.
    writes: BTreeMap<(u64, u64), WriteWaiter>,
    /// Sessions waiting to go into the next batch, in arrival order.
    to_propose: Vec<(u64, u64)>,
    /// Reads waiting for the next batch.
    reads: Vec<(oneshot::Sender<Result<()>>, Instant)>,
    /// Batches this node proposed that carry read barriers, by batch id.
    barriers: BTreeMap<u64, Barrier>,
    next_batch_id: u64,
    outgoing: Vec<Message<LogEntry>>,
    /// Gauges updated once per round, when set (a server sets it; simulations need not).
    metrics: Option<Arc<Metrics>>,
}

impl<S: Storage<LogEntry>> Core<S> {
    /// Builds the core over `storage` (which may hold a previous life's log) and `sm`.
    pub fn new(
        cfg: CoreConfig,
        storage: S,
        sm: Box<dyn StateMachine>,
        net: Box<dyn Network>,
    ) -> Result<Self> {
        let op_config = OmniPaxosConfig {
            cluster_config: ClusterConfig {
                configuration_id: 1,
                nodes: cfg.nodes.clone(),
                flexible_quorum: None,
            },
            server_config: ServerConfig {
                pid: cfg.id,
                election_tick_timeout: cfg.election_ticks,
                resend_message_tick_timeout: cfg.election_ticks * 5,
                ..Default::default()
            },
        };
        let mut paxos = op_config
            .build(storage)
            .map_err(|e| Error::Config(format!("OmniPaxos configuration: {e}")))?;
        // A node that restarts with a promise for its *own* ballot must take over with a
        // higher one. OmniPaxos 0.2.4 restarts its election module with a low ballot and
        // keeps the promised one as "leader"; if that ballot never won (the node crashed
        // during its Prepare) the real leader ignores the node's PrepareReq (its ballot is
        // higher than the leader's) and, as the others are happy with their leader, no
        // election ever happens: the node stays behind and unavailable for good
        // (deterministic simulation, seed 153).
        if paxos.get_promise().pid == cfg.id {
            paxos.try_become_leader();
        }
        Ok(Core {
            next_batch_id: cfg.first_batch_id,
            cfg,
            paxos,
            sm,
            net,
            writes: BTreeMap::new(),
            to_propose: Vec::new(),
            reads: Vec::new(),
            barriers: BTreeMap::new(),
            outgoing: Vec::new(),
            metrics: None,
        })
    }

    /// Reports decided/applied index and leader changes to `metrics` from now on.
    pub fn set_metrics(&mut self, metrics: Arc<Metrics>) {
        self.metrics = Some(metrics);
    }

    /// Runs until `Shutdown` arrives or every sender is gone.
    pub fn run(mut self, rx: Receiver<Event>) {
        let mut next_tick = Instant::now() + self.cfg.tick;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(ev) => {
                    if !self.handle(ev, Instant::now()) {
                        return;
                    }
                    // Drain what else is waiting, so that it joins this round's batch.
                    for _ in 0..100_000 {
                        match rx.try_recv() {
                            Ok(ev) => {
                                if !self.handle(ev, Instant::now()) {
                                    return;
                                }
                            }
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            let now = Instant::now();
            if now >= next_tick {
                self.tick(now);
                next_tick = now + self.cfg.tick;
            }
            self.step(now);
        }
    }

    /// One round after events were handled: propose, send, apply, send.
    pub fn step(&mut self, now: Instant) {
        self.propose(now);
        self.flush_outgoing();
        self.apply_decided();
        self.flush_outgoing();
        if let Some(m) = &self.metrics {
            let leader = self.paxos.get_current_leader();
            let decided = self.paxos.get_decided_idx() as u64;
            m.observe_core(decided, self.sm.applied_index(), leader, self.cfg.id);
        }
    }

    /// One logical clock tick: OmniPaxos timers, request deadlines, re-proposals. `now`
    /// is passed in (never read from the clock here) so that a simulation can drive time.
    pub fn tick(&mut self, now: Instant) {
        self.paxos.tick();
        self.on_tick(now);
    }

    /// Handles one event received at `now`; false means stop.
    pub fn handle(&mut self, ev: Event, now: Instant) -> bool {
        match ev {
            Event::Peer(msg) => self.paxos.handle_incoming(msg),
            Event::Reconnected(pid) => self.paxos.reconnected(pid),
            Event::Write { cmd, reply } => {
                let deadline = now + self.cfg.request_timeout;
                let key = (cmd.client_id, cmd.seq);
                if let Some(w) = self.writes.get(&key) {
                    if w.cmd != cmd {
                        // A session has one command per seq; answering this one with the
                        // other's result would silently lose it.
                        let _ = reply.send(Err(Error::InvalidInput(format!(
                            "session ({}, {}) {}",
                            cmd.client_id,
                            cmd.seq,
                            crate::command::SESSION_REUSED
                        ))));
                        return true;
                    }
                }
                let waiter = self.writes.entry(key).or_insert_with(|| WriteWaiter {
                    cmd,
                    replies: Vec::new(),
                    proposed_at: None,
                });
                if waiter.proposed_at.is_none() && waiter.replies.is_empty() {
                    self.to_propose.push(key);
                }
                waiter.replies.push((reply, deadline));
            }
            Event::ReadBarrier { reply } => {
                self.reads.push((reply, now + self.cfg.request_timeout));
            }
            Event::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Event::Shutdown => return false,
        }
        true
    }

    /// This node's view of the cluster.
    pub fn status(&self) -> NodeStatus {
        let role = match self.paxos.get_current_leader() {
            Some((pid, true)) if pid == self.cfg.id => Role::Leader,
            Some((pid, _)) if pid != self.cfg.id => Role::Follower,
            _ => Role::Candidate,
        };
        NodeStatus {
            id: self.cfg.id,
            role,
            leader: self.paxos.get_current_leader().map(|(pid, _)| pid),
            decided_index: self.paxos.get_decided_idx() as u64,
            applied_index: self.sm.applied_index(),
        }
    }

    /// The decided log entries in `[from, to)` that are still in the log (for checkers).
    pub fn decided_entries(&self, from: u64, to: u64) -> Vec<LogEntry> {
        let to = to.min(self.paxos.get_decided_idx() as u64);
        if from >= to {
            return vec![];
        }
        self.paxos
            .read_entries(from as usize..to as usize)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|e| match e {
                PaxosEntry::Decided(e) => Some(e),
                _ => None,
            })
            .collect()
    }

    /// Expires waiters past their deadline and re-proposes what is overdue.
    fn on_tick(&mut self, now: Instant) {
        let repropose = self.cfg.repropose_after;
        let mut overdue = Vec::new();
        self.writes.retain(|key, w| {
            let (expired, live): (Vec<_>, Vec<_>) = std::mem::take(&mut w.replies)
                .into_iter()
                .partition(|(_, deadline)| *deadline <= now);
            w.replies = live;
            for (reply, _) in expired {
                let _ = reply.send(Err(Error::OutcomeUnknown(
                    "the write was not decided within the request timeout; \
                     retry with the same session to learn its outcome"
                        .into(),
                )));
            }
            if w.replies.is_empty() {
                return false;
            }
            if matches!(w.proposed_at, Some(at) if now.duration_since(at) >= repropose) {
                w.proposed_at = None;
                overdue.push(*key);
            }
            true
        });
        self.to_propose.extend(overdue);
        let mut again = Vec::new();
        self.barriers.retain(|id, b| {
            let (expired, live): (Vec<_>, Vec<_>) = std::mem::take(&mut b.replies)
                .into_iter()
                .partition(|(_, deadline)| *deadline <= now);
            b.replies = live;
            for (reply, _) in expired {
                let _ = reply.send(Err(Error::Unavailable(
                    "could not confirm a quorum for a linearizable read in time".into(),
                )));
            }
            if b.replies.is_empty() {
                return false;
            }
            if now.duration_since(b.proposed_at) >= repropose {
                b.proposed_at = now;
                again.push(*id);
            }
            true
        });
        for id in again {
            self.append(LogEntry {
                proposer: self.cfg.id,
                batch_id: id,
                commands: vec![],
            });
        }
    }

    /// Appends the waiting writes and reads as as few entries as the limits allow.
    fn propose(&mut self, now: Instant) {
        if self.to_propose.is_empty() && self.reads.is_empty() {
            return;
        }
        let mut keys = std::mem::take(&mut self.to_propose).into_iter().peekable();
        let mut first = true;
        // OmniPaxos sends everything appended in one round to a follower as one message:
        // bound the round's bytes (a quarter of a frame), and leave the rest for the next.
        let mut round_bytes = 0;
        while first || (keys.peek().is_some() && round_bytes < self.cfg.max_batch_bytes) {
            let mut commands = Vec::new();
            let mut bytes = 0;
            while let Some(key) = keys.peek() {
                if commands.len() >= self.cfg.max_batch_commands
                    || (bytes > 0 && bytes >= self.cfg.max_batch_bytes)
                {
                    break;
                }
                let key = *key;
                keys.next();
                if let Some(w) = self.writes.get_mut(&key) {
                    if w.proposed_at.is_none() {
                        w.proposed_at = Some(now);
                        bytes += w.cmd.op.size();
                        commands.push(w.cmd.clone());
                    }
                }
            }
            let batch_id = self.next_batch_id;
            self.next_batch_id = self.next_batch_id.wrapping_add(1);
            if first && !self.reads.is_empty() {
                self.barriers.insert(
                    batch_id,
                    Barrier {
                        replies: std::mem::take(&mut self.reads),
                        proposed_at: now,
                    },
                );
            } else if commands.is_empty() {
                break;
            }
            first = false;
            round_bytes += bytes;
            self.append(LogEntry {
                proposer: self.cfg.id,
                batch_id,
                commands,
            });
        }
        self.to_propose.extend(keys);
    }

    fn append(&mut self, entry: LogEntry) {
        if let Err(e) = self.paxos.append(entry) {
            // Only a pending reconfiguration refuses appends; the waiters time out.
            tracing::warn!("append refused: {e:?}");
        }
    }

    fn flush_outgoing(&mut self) {
        self.paxos.take_outgoing_messages(&mut self.outgoing);
        for msg in self.outgoing.drain(..) {
            self.net.send(msg);
        }
    }

    /// Applies decided entries in order and answers their waiters.
    fn apply_decided(&mut self) {
        loop {
            let decided = self.paxos.get_decided_idx() as u64;
            let from = self.sm.applied_index();
            if from >= decided {
                return;
            }
            let to = decided.min(from + 1024);
            let entries = match self.paxos.read_entries(from as usize..to as usize) {
                Some(e) if !e.is_empty() => e,
                _ => {
                    tracing::error!("decided entries [{from}, {to}) cannot be read");
                    return;
                }
            };
            for (i, entry) in entries.into_iter().enumerate() {
                let index = from + i as u64;
                match entry {
                    PaxosEntry::Decided(e) => {
                        if let Err(err) = self.apply_one(index, e) {
                            // A state machine that cannot apply must not go on: stop here
                            // so that nothing is answered from a state that skipped one.
                            panic!("applying entry {index} failed: {err}");
                        }
                    }
                    PaxosEntry::StopSign(..) => {
                        tracing::warn!(
                            "stop sign at {index}: reconfiguration is not supported yet"
                        );
                        return;
                    }
                    other => {
                        tracing::error!("entry {index} is not applicable here: {other:?}");
                        return;
                    }
                }
            }
        }
    }

    fn apply_one(&mut self, index: u64, entry: LogEntry) -> Result<()> {
        let results = self.sm.apply(index, &entry.commands)?;
        for (cmd, result) in entry.commands.iter().zip(results) {
            // Only a waiter for this very command: a waiter for another command under the
            // same session (a reused seq) must wait for its own entry, which refuses it,
            // instead of taking this one's answer (a retry's duplicate entry can be decided
            // after the original answered and the seq was reused).
            let key = (cmd.client_id, cmd.seq);
            if self.writes.get(&key).is_some_and(|w| w.cmd == *cmd) {
                for (reply, _) in self.writes.remove(&key).into_iter().flat_map(|w| w.replies) {
                    let _ = reply.send(Ok(result.clone()));
                }
            }
        }
        if entry.proposer == self.cfg.id {
            if let Some(b) = self.barriers.remove(&entry.batch_id) {
                for (reply, _) in b.replies {
                    let _ = reply.send(Ok(()));
                }
            }
        }
        Ok(())
    }
}
