//! The node: the one thread that owns the OmniPaxos instance and the state machine.
//!
//! Everything that touches consensus state goes through [`Core`], which runs on its own
//! OS thread (RocksDB writes and fsyncs block; they never run on the async runtime).
//! Requests, peer messages and reconnect notices arrive as [`Event`]s on one channel; the
//! loop drains it, ticks OmniPaxos on a fixed period, and then:
//!
//! 1. **batches** every write waiting since the last round into one [`LogEntry`] and
//!    appends it — one log entry, so one synced write on every node, serves them all
//!    (group commit); while that fsync runs, the next batch accumulates;
//! 2. sends OmniPaxos' outgoing messages through the [`Network`], and only then waits for
//!    its own fsync of the appends (below);
//! 3. **applies** newly decided entries in order and answers the waiters whose command
//!    was in them;
//! 4. starts a **read round** for the linearizable reads that arrived (or asks the leader
//!    for one), and answers the reads whose read index is applied (see [`reads`]: no log
//!    entry, no disk write).
//!
//! ## The leader sends, then syncs
//!
//! A leader's append is written to its log unsynced ([`SyncControl::defer`]), sent to
//! the followers, and synced after ([`SyncControl::sync`], one WAL fsync): its own fsync
//! and the followers' run at the same time, where storing first put two fsyncs in series
//! on every write. OmniPaxos counts the leader's append as its own accept when the append
//! returns; that is safe because this thread handles no message before the sync returns,
//! so no Accepted is counted, nothing decided and nothing answered, until the leader's
//! copy is durable too (or, if the power goes out first, the followers' copies are all
//! there is, and the entry was never decided). A failed sync stops the node. Followers
//! still store before they answer (OmniPaxos writes before it queues the Accepted).
//! The simulation cuts a leader's power in exactly that window (`sim::storage`), and
//! `Bug::SkipLogSync` (no sync after the send) is caught by its durability check.
//!
//! Invariants:
//! - a write is answered only after its entry is decided (durable on a majority) and
//!   applied here; a read only after this node applied a read index that a majority
//!   confirmed after the read arrived — so reads are linearizable on any node, leader or
//!   not;
//! - a waiter that is not answered within the request timeout gets
//!   [`Error::OutcomeUnknown`] (writes) or [`Error::Unavailable`] (reads), never a failure;
//! - undecided proposals are re-proposed after `repropose_ms` when something that can
//!   lose a proposal happened since (a new leader, a reconnection, a dropped forward),
//!   and after [`PATIENCE`] times that otherwise; the sessions in the state machine make a
//!   duplicate harmless;
//! - what the node holds is bounded: client writes by their admission tickets (held by
//!   their waiters), peer messages by the transport's queues and inbox (see
//!   [`admission`] and `crate::transport`);
//! - the log is trimmed only below the applied index (see [`compaction`]); a node whose
//!   decided index fell below a peer's trimmed log catches up by a state transfer: it goes
//!   silent for consensus, the host fetches the state into a staging area, and the core
//!   installs it atomically, then restarts OmniPaxos on a log that starts where the
//!   installed state ends. A crash between the two steps is finished at the next start
//!   (an applied index above the decided one means "reset the log to it"). Meanwhile
//!   the members hold their logs from the fetched state's index, within a cap of bytes
//!   and time, so that the node follows the log once the state is installed (transfer
//!   holds, see [`compaction`]);
//! - membership changes are stop signs in the log; applying one records the next
//!   membership in the state machine and restarts OmniPaxos in the next configuration on a
//!   fresh log (see [`reconfig`] and [`paxos`]). Applied indexes are global: they keep
//!   counting across configurations ([`Membership::base`] is where one's log starts);
//! - a configuration may have one member (a single-node database): the same log and state
//!   machines, run by OmniPaxos with an in-memory witness as its second node, so that
//!   every quorum is this node's durable state plus an always-present witness (see
//!   [`solo`]).

pub mod admission;
mod apply;
mod catchup;
mod compaction;
pub mod contact;
mod handle;
mod paxos;
mod quirks;
mod reads;
mod reconfig;
mod solo;

pub use compaction::{CompactionPolicy, Note, HOLD_FOR, HOLD_SILENCE};
pub use handle::{
    Consistency, NodeHandle, NodeRole, NodeStatus, DEFAULT_SCAN_LIMIT, MAX_SCAN_LIMIT,
};
pub use reconfig::removed_message;

use crate::config::Member;
use crate::error::{Error, Result};
use crate::machine::Machines;
use crate::machine::{Command, LogEntry, Machine, NodeId, Outcome, Stamp};
use crate::membership::Membership;
use crate::metrics::Metrics;
use crate::storage::{LogStorage, SyncControl};
use omnipaxos::messages::sequence_paxos::{PaxosMessage, PaxosMsg};
use omnipaxos::messages::Message;
use omnipaxos::util::LogEntry as PaxosEntry;
use omnipaxos::OmniPaxos;
use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Where the node sends its outgoing messages. Sending never blocks; a message that cannot
/// be delivered is dropped (OmniPaxos resends what matters; notes are periodic).
pub trait Network: Send + 'static {
    fn send(&self, msg: Message<LogEntry>);
    /// Sends a node-level note (progress, "fetch my state").
    fn send_note(&self, _to: NodeId, _note: Note) {}
    /// Asks the host to fetch `from`'s state machine into the staging area and report
    /// [`Event::StateFetched`].
    fn fetch_state(&self, _from: NodeId) {}
    /// The membership in force changed (or is announced at start): whom to talk to, and
    /// the configuration id to tag OmniPaxos messages with.
    fn set_membership(&self, _m: &Membership) {}
    /// Peers that a message was too large to send to since the last call (the sync of a
    /// log longer than a frame): the core makes them catch up by a state transfer.
    fn take_oversized(&self) -> Vec<NodeId> {
        Vec::new()
    }
    /// True when, since the last call, a proposal forwarded to the leader was dropped
    /// before it left this node (a full queue): the core re-proposes what is waiting
    /// without the usual patience.
    fn take_forward_lost(&self) -> bool {
        false
    }
    /// When a frame last arrived from `peer` (`now` if more are waiting for this node to
    /// take them), as the transport saw it — independent of how far behind this node's
    /// thread is. `None`: the network does not know, messages handled are all there is.
    fn last_heard(&self, _peer: NodeId, _now: Instant) -> Option<Instant> {
        None
    }
}

/// Everything the node thread reacts to.
pub enum Event {
    /// An OmniPaxos message from a peer running configuration `config`.
    Peer { config: u32, msg: Message<LogEntry> },
    /// The connection to a peer was re-established.
    Reconnected(NodeId),
    /// A node-level note from a peer.
    Note { from: NodeId, note: Note },
    /// The state fetch asked for by [`Network::fetch_state`] ended: the staged state's
    /// applied index, or why it failed.
    StateFetched(Result<u64>),
    /// A client write to replicate.
    Write {
        cmd: Command,
        reply: oneshot::Sender<Result<Outcome>>,
    },
    /// A linearizable read waits for a barrier.
    ReadBarrier { reply: oneshot::Sender<Result<()>> },
    /// A status snapshot.
    Status { reply: oneshot::Sender<NodeStatus> },
    /// Add and remove members, in one configuration change.
    ChangeMembership {
        add: Vec<Member>,
        remove: Vec<NodeId>,
        reply: oneshot::Sender<Result<Membership>>,
    },
    /// Runs the function in the node thread between two applied entries, after every
    /// machine made what it applied durable (so each one's stored applied index is its
    /// own in-memory one; they equal the node's unless a crash between two machines'
    /// commits left one an entry ahead), with the node's applied index: nothing is
    /// applied while it runs (a backup pins every state machine's point-in-time view
    /// there, so that the views agree; see `backup`). It must be quick.
    Between(Box<dyn FnOnce(Result<u64>) + Send>),
    /// Stop the loop.
    Shutdown,
    /// An event holding a share of a bounded budget (client admission, the peer inbox):
    /// given back once the event is handled, except that a write keeps it with its waiter
    /// until answered or expired (a client that hangs up must not free the bytes early).
    Held(Box<Event>, admission::Ticket),
}

/// Timing and batching knobs of the core.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    pub id: NodeId,
    /// The initial membership (configuration 1); a later one recorded by the state
    /// machine takes precedence.
    pub members: Vec<Member>,
    pub tick: Duration,
    pub election_ticks: u64,
    pub request_timeout: Duration,
    pub repropose_after: Duration,
    pub max_batch_commands: usize,
    pub max_batch_bytes: usize,
    /// First batch id; must differ across restarts of a node (a random start does).
    pub first_batch_id: u64,
    pub compaction: CompactionPolicy,
}

/// Opens the node's log storage again (to restart OmniPaxos after a state transfer).
pub type Reopen<S> = Box<dyn FnMut() -> Result<S> + Send>;

/// Ticks between two progress notes to the peers.
const PROGRESS_EVERY_TICKS: u64 = 10;

/// A waiting write: its machine and session (sessions are per machine).
type WriteKey = (Machine, u64, u64);

struct WriteWaiter {
    cmd: Command,
    replies: Vec<(oneshot::Sender<Result<Outcome>>, Instant)>,
    proposed_at: Option<Instant>,
    /// [`Core::lost_epoch`] when it was proposed.
    epoch: u64,
    /// The admission tickets of the requests waiting here: their bytes count against the
    /// node's budget until the waiter is gone, even if a client stopped waiting.
    _tickets: Vec<admission::Ticket>,
}

/// A membership change this node proposed, waiting for its stop sign to be applied.
struct PendingChange {
    /// The configuration id it creates.
    target: u32,
    /// The stop sign's configuration and metadata, to propose again if it was lost.
    next: omnipaxos::ClusterConfig,
    metadata: Vec<u8>,
    /// When it was last proposed (or forwarded to the leader).
    proposed_at: Instant,
    reply: oneshot::Sender<Result<Membership>>,
    deadline: Instant,
}

/// The consensus core of one node.
pub struct Core<S: LogStorage> {
    cfg: CoreConfig,
    paxos: OmniPaxos<LogEntry, S>,
    /// The in-memory second node of a one-member configuration (see [`solo`]).
    witness: Option<solo::Witness>,
    /// Defers the fsync of the leader's appends until they are sent (see the module docs).
    log_sync: Option<Arc<dyn SyncControl>>,
    sm: Machines,
    net: Box<dyn Network>,
    /// Writes by session, until applied here or timed out. Ordered (not a HashMap): the
    /// tick re-proposes overdue writes in iteration order, and a randomly seeded order
    /// would make the proposed batches, and so a simulation run, irreproducible.
    writes: BTreeMap<WriteKey, WriteWaiter>,
    /// Sessions waiting to go into the next batch, in arrival order.
    to_propose: Vec<WriteKey>,
    /// Batches other nodes forwarded to this one (as leader), to append in the next
    /// `propose` (OmniPaxos would append them as they arrive, synced before sending).
    forwarded: Vec<LogEntry>,
    /// Linearizable reads, from arrival to answer (see [`reads`]).
    reads: reads::Reads,
    next_batch_id: u64,
    outgoing: Vec<Message<LogEntry>>,
    /// Gauges updated once per round, when set (a server sets it; simulations need not).
    metrics: Option<Arc<Metrics>>,
    trimmer: compaction::Trimmer,
    ticks: u64,
    /// Set while this node fetches a peer's state: the peer, when it started, and the
    /// index the state is at or above (the peer's compacted index; see
    /// [`Note::Fetching`]).
    catching_up: Option<(NodeId, Instant, u64)>,
    /// When the last message from the leader we know arrived (freshness-bounded reads).
    leader_contact: Option<Instant>,
    reopen: Option<Reopen<S>>,
    /// The membership in force.
    membership: Membership,
    /// Why this node no longer serves, once a membership change removed it.
    removed: Option<String>,
    change: Option<PendingChange>,
    /// Counts the events that can lose a proposal (a new leader, a reconnection, a
    /// forward dropped here): a write proposed in an older epoch may be lost and is
    /// re-proposed after `repropose_after`; one proposed in this epoch is only slow, and
    /// gets [`PATIENCE`] times longer (re-proposing slow writes under load duplicated
    /// every waiting write in the log and collapsed throughput).
    lost_epoch: u64,
    /// The leader last seen, to notice a change.
    last_leader: Option<NodeId>,
    /// When each member was last heard from: a node cut off from the majority refuses
    /// requests at once (see [`contact`]).
    contact: contact::Contact,
    /// The wall clock a leader stamps the entries it appends with (see
    /// [`crate::machine::Machine::Clock`]): the system clock, or a simulation's.
    wall: WallClock,
    /// When this node, as leader, last appended an entry holding only a clock stamp (to
    /// let the log's time pass a deadline while no writes come), and the time it stamped.
    last_tick_stamp: Option<(Instant, u64)>,
    /// Bug injection: appends stay unsynced after they were sent (the simulation's
    /// `Bug::SkipLogSync`).
    #[cfg(test)]
    skip_log_sync: bool,
    /// Bug injection: a node cut off from the majority answers its waiting writes
    /// "unavailable" (the simulation's `Bug::GiveUpAsRefused`).
    #[cfg(test)]
    give_up_as_refused: bool,
}

/// A wall clock: milliseconds since the Unix epoch at a given instant of the node's
/// monotonic time.
pub type WallClock = Arc<dyn Fn(Instant) -> u64 + Send + Sync>;

/// The system's wall clock.
pub fn system_clock() -> WallClock {
    Arc::new(|_| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    })
}

/// How many re-propose periods a write proposed in the current epoch waits before it is
/// proposed again anyway (a loss this node could not see).
const PATIENCE: u32 = 3;

impl<S: LogStorage> Core<S> {
    /// Builds the core over `storage` (which may hold a previous life's log) and `sm`.
    pub fn new(
        cfg: CoreConfig,
        storage: S,
        sm: impl Into<Machines>,
        net: Box<dyn Network>,
    ) -> Result<Self> {
        let sm: Machines = sm.into();
        let membership = sm
            .membership()?
            .unwrap_or_else(|| Membership::initial(&cfg.members));
        if !membership.contains(cfg.id) {
            return Err(Error::Config(removed_message(cfg.id, &membership)));
        }
        let log_sync = storage.sync_control();
        let paxos = paxos::build(&cfg, &membership, storage, sm.applied_index())?;
        let witness = solo::Witness::for_membership(&cfg, &membership, paxos.get_decided_idx())?;
        net.set_membership(&membership);
        let contact = contact::Contact::new(cfg.tick * cfg.election_ticks as u32);
        Ok(Core {
            next_batch_id: cfg.first_batch_id,
            reads: reads::Reads::new(cfg.first_batch_id.rotate_left(32)),
            cfg,
            paxos,
            witness,
            log_sync,
            sm,
            net,
            writes: BTreeMap::new(),
            to_propose: Vec::new(),
            forwarded: Vec::new(),
            outgoing: Vec::new(),
            metrics: None,
            trimmer: compaction::Trimmer::default(),
            ticks: 0,
            catching_up: None,
            leader_contact: None,
            reopen: None,
            membership,
            removed: None,
            change: None,
            lost_epoch: 0,
            last_leader: None,
            contact,
            wall: system_clock(),
            last_tick_stamp: None,
            #[cfg(test)]
            skip_log_sync: false,
            #[cfg(test)]
            give_up_as_refused: false,
        })
    }

    /// Replaces the wall clock the core stamps entries with (a simulation's virtual
    /// clock, possibly skewed).
    pub fn set_wall_clock(&mut self, wall: WallClock) {
        self.wall = wall;
    }

    /// Bug injection: this node never syncs its deferred appends (they become durable
    /// only with its next synced write), yet counts them as its own accepts.
    #[cfg(all(test, feature = "test-machinery"))]
    pub(crate) fn inject_skip_log_sync(&mut self) {
        self.skip_log_sync = true;
    }

    /// Bug injection: a node cut off from the majority answers the writes waiting on it
    /// as refused (certainly not done) rather than of unknown outcome.
    #[cfg(all(test, feature = "test-machinery"))]
    pub(crate) fn inject_give_up_as_refused(&mut self) {
        self.give_up_as_refused = true;
    }

    /// Lets the core reopen its log storage, which a state transfer needs (without it, a
    /// node told to fetch a peer's state only logs that it cannot).
    pub fn set_reopen(&mut self, reopen: Reopen<S>) {
        self.reopen = Some(reopen);
    }

    /// Judges contact with the majority on a window of at least `floor` (servers use
    /// [`contact::MIN_WINDOW`]; see there).
    pub fn set_contact_floor(&mut self, floor: Duration) {
        self.contact.set_floor(floor);
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
        self.tend_reads(now);
        self.flush_outgoing();
        if let Some(m) = &self.metrics {
            let leader = self.paxos.get_current_leader();
            let decided = self.global(self.paxos.get_decided_idx());
            m.observe_core(decided, self.sm.applied_index(), leader, self.cfg.id);
        }
    }

    /// One logical clock tick: OmniPaxos timers, request deadlines, re-proposals. `now`
    /// is passed in (never read from the clock here) so that a simulation can drive time.
    pub fn tick(&mut self, now: Instant) {
        // A node fetching a state (or removed) is silent for consensus: it has no log to
        // offer, and must not be elected leader.
        if self.silenced().is_none() {
            self.paxos.tick();
        }
        self.ticks += 1;
        if self.ticks.is_multiple_of(PROGRESS_EVERY_TICKS) && self.removed.is_none() {
            let note = Note::Progress {
                applied: self.sm.applied_index(),
                compacted: self.global(self.paxos.get_compacted_idx()),
            };
            for p in self
                .membership
                .ids()
                .into_iter()
                .filter(|&p| p != self.cfg.id)
            {
                self.net.send_note(p, note.clone());
            }
            // A fetch under way says so again (a member that restarted, or lost the
            // first note, learns to hold its log for it).
            self.announce_fetch();
        }
        self.on_tick(now);
        self.tend_contact(now);
        self.tend_change(now);
        self.maybe_trim(now);
    }

    /// Handles one event received at `now`; false means stop.
    pub fn handle(&mut self, ev: Event, now: Instant) -> bool {
        match &ev {
            Event::Peer { msg, .. } => self.contact.heard(msg.get_sender(), now),
            Event::Note { from, .. } => self.contact.heard(*from, now),
            _ => {}
        }
        match ev {
            Event::Held(ev, ticket) => match *ev {
                Event::Write { cmd, reply } if self.silenced().is_none() => {
                    self.write(cmd, reply, Some(ticket), now)
                }
                // Handled at once: the ticket goes back now.
                ev => return self.handle(ev, now),
            },
            Event::Peer { .. } if self.silenced().is_some() => {}
            Event::Peer { config, msg } if config < self.membership.config_id => {
                // The sender is still in a configuration we left: its log ended at our
                // base at the latest; it catches up by fetching our state.
                let compacted = self.membership.base;
                self.net
                    .send_note(msg.get_sender(), Note::NeedState { compacted });
            }
            // From a newer configuration: we will learn of it (that node tells us).
            Event::Peer { config, .. } if config > self.membership.config_id => {}
            Event::Peer { mut msg, config } => {
                if tracing::enabled!(tracing::Level::DEBUG) {
                    quirks::debug_peer_message(config, &msg);
                }
                if self.paxos.get_current_leader().map(|(pid, _)| pid) == Some(msg.get_sender()) {
                    self.leader_contact = Some(now);
                }
                let paxos = &self.paxos;
                quirks::fix_stop_sign_sync(&mut msg, |i| paxos.read(i));
                let local = self.paxos.get_compacted_idx() as u64;
                match compaction::guard(&msg, local) {
                    compaction::Verdict::Deliver => match msg {
                        // Another node's batches: appended in this round's `propose`,
                        // with ours (sent before they are synced, see the module docs).
                        Message::SequencePaxos(PaxosMessage {
                            msg: PaxosMsg::ProposalForward(entries),
                            ..
                        }) => self.forwarded.extend(entries),
                        msg => self.paxos.handle_incoming(msg),
                    },
                    compaction::Verdict::Drop => {}
                    compaction::Verdict::SendState => {
                        let compacted = self.membership.base + local;
                        self.net
                            .send_note(msg.get_sender(), Note::NeedState { compacted });
                    }
                }
            }
            Event::Reconnected(pid) => {
                self.lost_epoch += 1;
                self.paxos.reconnected(pid)
            }
            Event::Note { from, note } => match note {
                Note::Progress { applied, .. } => self.trimmer.peer_progress(from, applied, now),
                Note::NeedState { compacted } => self.need_state(from, compacted, now),
                Note::Fetching { index } => {
                    self.trimmer.hold(&self.cfg.compaction, from, index, now)
                }
                note => self.read_note(from, note),
            },
            Event::StateFetched(res) => self.state_fetched(res),
            Event::Write { reply, .. } if self.silenced().is_some() => {
                let _ = reply.send(Err(self.silenced().expect("checked")));
            }
            Event::ReadBarrier { reply } if self.silenced().is_some() => {
                let _ = reply.send(Err(self.silenced().expect("checked")));
            }
            Event::ChangeMembership { add, remove, reply } => {
                self.propose_change(add, remove, reply, now)
            }
            Event::Write { cmd, reply } => self.write(cmd, reply, None, now),
            Event::ReadBarrier { reply } => match self.cut_off() {
                Some(why) => {
                    let _ = reply.send(Err(Error::Unavailable(why)));
                }
                None => self.read_arrived(reply, now),
            },
            Event::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Event::Between(f) => f(self.sm.make_durable().map(|()| self.sm.applied_index())),
            Event::Shutdown => return false,
        }
        true
    }

    /// Registers a client write (or a retry of one still waiting here) and its ticket.
    fn write(
        &mut self,
        cmd: Command,
        reply: oneshot::Sender<Result<Outcome>>,
        ticket: Option<admission::Ticket>,
        now: Instant,
    ) {
        if let Some(why) = self.cut_off() {
            // Not proposed: this request did nothing (its ticket goes back with it).
            let _ = reply.send(Err(Error::Unavailable(why)));
            return;
        }
        let deadline = now + self.cfg.request_timeout;
        let key = (cmd.machine, cmd.client_id, cmd.seq);
        if let Some(w) = self.writes.get(&key) {
            if w.cmd != cmd {
                // A session has one command per seq; answering this one with the other's
                // result would silently lose it. (Its ticket goes back with it.)
                let _ = reply.send(Err(Error::SessionReused(format!(
                    "session ({}, {}) {}",
                    cmd.client_id,
                    cmd.seq,
                    crate::command::SESSION_REUSED
                ))));
                return;
            }
        }
        let waiter = self.writes.entry(key).or_insert_with(|| WriteWaiter {
            cmd,
            replies: Vec::new(),
            proposed_at: None,
            epoch: 0,
            _tickets: Vec::new(),
        });
        if waiter.proposed_at.is_none() && waiter.replies.is_empty() {
            self.to_propose.push(key);
        }
        waiter.replies.push((reply, deadline));
        waiter._tickets.extend(ticket);
    }

    /// This node's view of the cluster.
    pub fn status(&self) -> NodeStatus {
        let role = match self.paxos.get_current_leader() {
            _ if self.removed.is_some() => NodeRole::Removed,
            Some((pid, true)) if pid == self.cfg.id => NodeRole::Leader,
            Some((pid, _)) if pid != self.cfg.id => NodeRole::Follower,
            _ => NodeRole::Candidate,
        };
        NodeStatus {
            id: self.cfg.id,
            role,
            leader: self.paxos.get_current_leader().map(|(pid, _)| pid),
            decided_index: self.global(self.paxos.get_decided_idx()),
            applied_index: self.sm.applied_index(),
            compacted_index: self.global(self.paxos.get_compacted_idx()),
            catching_up_from: self.catching_up.map(|(p, _, _)| p),
            membership: self.membership.clone(),
            leader_contact: match role {
                NodeRole::Follower => self.leader_contact,
                _ => None,
            },
            cut_off: self.cut_off().is_some(),
        }
    }

    /// The decided log entries in `[from, to)` that are still in the log (for checkers).
    pub fn decided_entries(&self, from: u64, to: u64) -> Vec<LogEntry> {
        let base = self.membership.base;
        let (from, to) = (from.saturating_sub(base), to.saturating_sub(base));
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
        let epoch = self.lost_epoch;
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
            let wait = if w.epoch == epoch {
                repropose * PATIENCE
            } else {
                repropose
            };
            if matches!(w.proposed_at, Some(at) if now.duration_since(at) >= wait) {
                w.proposed_at = None;
                overdue.push(*key);
            }
            true
        });
        self.to_propose.extend(overdue);
        self.expire_reads(now);
    }

    /// Appends the waiting writes as as few entries as the limits allow.
    fn propose(&mut self, now: Instant) {
        self.stamp_if_due(now);
        if self.to_propose.is_empty() && self.forwarded.is_empty() {
            return;
        }
        // The leader's appends are written unsynced, sent, then synced (`flush_outgoing`).
        if let Some(s) = &self.log_sync {
            s.defer();
        }
        // As OmniPaxos handles a forward: appended by a leader, buffered in its prepare
        // phase, forwarded again by a node that is not the leader.
        for entry in std::mem::take(&mut self.forwarded) {
            self.append(entry, now, true);
        }
        if self.to_propose.is_empty() {
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
                        w.epoch = self.lost_epoch;
                        bytes += w.cmd.size();
                        commands.push(w.cmd.clone());
                    }
                }
            }
            let batch_id = self.next_batch_id;
            self.next_batch_id = self.next_batch_id.wrapping_add(1);
            if commands.is_empty() {
                break;
            }
            first = false;
            round_bytes += bytes;
            self.append(
                LogEntry {
                    proposer: self.cfg.id,
                    batch_id,
                    commands,
                },
                now,
                false,
            );
        }
        self.to_propose.extend(keys);
    }

    /// Ends the deferral of the log's fsyncs and makes the appends durable. A failure
    /// stops the node (as OmniPaxos does on a failed write): its appends were sent, and
    /// it must not count them as its own accepts.
    fn sync_log(&mut self) {
        let Some(s) = &self.log_sync else {
            return;
        };
        #[cfg(test)]
        if self.skip_log_sync {
            return;
        }
        if let Err(e) = s.sync() {
            panic!("{e}: this node stops rather than count appends that may not be durable");
        }
    }

    /// Whether this node leads, in its accept phase (a leader still preparing, or one
    /// recovering its old promise after a restart, does not stamp entries by itself).
    fn leads(&self) -> bool {
        self.paxos.get_current_leader() == Some((self.cfg.id, true))
    }

    /// A leader with no write to stamp appends an entry holding only a clock stamp once
    /// its clock passed the earliest deadline of the state machines, so that the expiry
    /// is applied without waiting for a write.
    fn stamp_if_due(&mut self, now: Instant) {
        if !self.to_propose.is_empty() || !self.forwarded.is_empty() || !self.leads() {
            return;
        }
        let Some(deadline) = self.sm.next_deadline() else {
            return;
        };
        let wall = (self.wall)(now);
        // One stamp in flight at a time: until it is applied here (the log's time reached
        // it), or for a re-propose period (a leader cut off from its majority appends one
        // stamp a period, not one a tick).
        let in_flight = self.last_tick_stamp.is_some_and(|(at, stamped)| {
            self.sm.log_time() < stamped
                && now.saturating_duration_since(at) < self.cfg.repropose_after
        });
        if !in_flight && wall >= deadline {
            self.last_tick_stamp = Some((now, wall));
            let batch_id = self.next_batch_id;
            self.next_batch_id = self.next_batch_id.wrapping_add(1);
            if let Some(s) = &self.log_sync {
                s.defer();
            }
            self.append(
                LogEntry {
                    proposer: self.cfg.id,
                    batch_id,
                    commands: vec![],
                },
                now,
                false,
            );
        }
    }

    /// Appends `entry`, stamped with this node's clock if it needs a stamp. A batch
    /// another node forwarded here loses its stamps first: the leader's clock is the one
    /// that counts, and an entry reaches the log through the leader's `append` (a node
    /// that appends while it does not lead forwards the entry, and the leader's core takes
    /// the forward here; a node that wins an election with entries still buffered stamped
    /// them itself, as the leader it became).
    fn append(&mut self, mut entry: LogEntry, now: Instant, forwarded: bool) {
        if forwarded {
            entry.commands.retain(|c| c.machine != Machine::Clock);
        }
        if entry.commands.is_empty() || self.sm.needs_stamp(&entry.commands) {
            let ballot = self.paxos.get_promise();
            let stamp = Stamp::new((self.wall)(now), ballot.config_id, ballot.n, ballot.pid);
            entry.commands.push(Command::clock(stamp));
        }
        let commands = entry.commands.len();
        if self.paxos.append(entry).is_err() {
            // Only a pending reconfiguration refuses appends: what waits is proposed again
            // in the next configuration (`enter`), or times out. Expected during a change,
            // and the entry itself (payload bytes) says nothing to an operator.
            tracing::debug!(
                commands,
                "append refused while a membership change is pending"
            );
        }
    }

    fn flush_outgoing(&mut self) {
        self.paxos.take_outgoing_messages(&mut self.outgoing);
        if self.witness.is_some() {
            // A one-member configuration: nobody to overlap the fsync with, and the
            // witness accepts at once (a quorum with this node's log), so it is durable
            // first.
            self.sync_log();
            if let Some(w) = self.witness.as_mut() {
                w.exchange(&mut self.paxos, &mut self.outgoing);
            }
        }
        for msg in self.outgoing.drain(..) {
            self.net.send(msg);
        }
        // The appends just sent become durable here, while the followers store them too;
        // no message is handled (so no Accepted counted) before this returns.
        self.sync_log();
        for peer in self.net.take_oversized() {
            self.too_far_behind(peer);
        }
        let leader = self.paxos.get_current_leader().map(|(l, _)| l);
        if leader != self.last_leader {
            self.last_leader = leader;
            self.lost_epoch += 1;
            if leader.is_some() {
                self.repropose_lost();
            }
        } else if self.net.take_forward_lost() {
            // A full queue to the leader: re-proposed after `repropose_after` (see
            // `on_tick`), not at once — at once would re-forward every waiting write on
            // every step for as long as the queue stays full, turning overload into
            // collapse.
            self.lost_epoch += 1;
        }
    }

    /// Proposes again, in the next round, every waiting write proposed before the leader
    /// changed: a forward to a leader that is gone is lost, and waiting `repropose_after`
    /// for it is the pause a client would see. A write that was not lost is in the log
    /// twice; its session makes the second a no-op.
    fn repropose_lost(&mut self) {
        let epoch = self.lost_epoch;
        for (key, w) in &mut self.writes {
            if w.proposed_at.is_some() && w.epoch < epoch && !w.replies.is_empty() {
                w.proposed_at = None;
                self.to_propose.push(*key);
            }
        }
    }

    /// Why this node cannot serve requests now: it was cut off from the majority at the
    /// last tick (see [`contact`] for why only a tick judges).
    fn cut_off(&self) -> Option<String> {
        if self.exempt_from_contact() {
            return None;
        }
        self.contact.refusal().map(str::to_owned)
    }

    /// A node that serves nothing by itself (silenced, or the single node's witness) is
    /// never cut off.
    fn exempt_from_contact(&self) -> bool {
        self.silenced().is_some() || self.witness.is_some()
    }

    /// Notices this node losing (or regaining) contact with a majority; while it is cut
    /// off, the writes and reads waiting here are given up on at once, so that their
    /// clients move on to a node that can serve them.
    fn tend_contact(&mut self, now: Instant) {
        for p in self.membership.ids() {
            if let Some(at) = self.net.last_heard(p, now) {
                self.contact.heard(p, at);
            }
        }
        let exempt = self.exempt_from_contact();
        let changed = self
            .contact
            .look(&self.membership, self.cfg.id, now, exempt);
        let why = self.cut_off();
        if changed {
            let what = why
                .clone()
                .unwrap_or_else(|| "this node reaches a majority of the cluster again".to_string());
            match &why {
                Some(_) => tracing::warn!("{what}"),
                None => tracing::info!("{what}"),
            }
            if let Some(m) = &self.metrics {
                m.event("quorum", what);
            }
        }
        let Some(why) = why else {
            return;
        };
        #[cfg(test)]
        if self.give_up_as_refused {
            for (_, w) in std::mem::take(&mut self.writes) {
                for (reply, _) in w.replies {
                    let _ = reply.send(Err(Error::Unavailable(why.clone())));
                }
            }
        }
        self.give_up_waiters(&why);
    }
}
