//! The simulated world: the nodes, the network, the clients, virtual time and the nemesis.
//!
//! Time is virtual: `base + now`, where `base` is read once and `now` only moves forward
//! to the next thing that happens (a message arrives, a node's 10 ms tick, a client acts,
//! a fault is due). Nothing sleeps and nothing reads the clock to decide. Each round:
//! deliver due messages, tick due nodes, let clients act (and, every 50 ms, the
//! watchers read: see `watch`), `step` every live core and route what it sent, check the log invariants, and maybe inject a fault. All randomness comes
//! from one `StdRng` seeded with the run's seed, so a seed replays exactly.
//!
//! State transfer ([`Network::fetch_state`](crate::node::Network)) is a simulated transfer
//! that takes some virtual time. At its start the peer's state is exported (the copy is
//! of that moment) and its chunks are written to the fetching node's staging area (never
//! synced); when it ends the import is finished (a synced marker) and the node gets
//! `Event::StateFetched(Ok(applied))`. It fails if the link between the two is down, in
//! either direction, at the start or at the end, or if the peer crashes meanwhile: the
//! fetching node then gets `StateFetched(Err)` after a 1 s back-off, as the server's
//! fetcher does. A crash of the fetching node ends the transfer; what it staged stays
//! unfinished, and the restarted store discards it. With
//! [`SimConfig::crash_transfers`] the nemesis aims crashes at transfers under way, which
//! the regular fault schedule almost never hits (see `World::aim_at_transfer`).
//!
//! A paused node (the nemesis' SIGSTOP) takes no steps, ticks or messages: what arrives
//! for it is held and delivered in order when it resumes, what it had sent stays in its
//! outbox, its transfers report when it resumes, and clients do not pick it. A crash of a
//! paused node ends the pause. The nemesis pauses at most as many nodes as it may crash
//! (together with the crashed ones), and healing resumes every node.
//!
//! Membership changes (with [`SimConfig::membership`]) go through the nodes' own
//! reconfiguration, as on the server: the nemesis sends `Event::ChangeMembership` (add a
//! fresh node, remove a member, or replace one by a fresh node) to the configuration's
//! leader or a running member, which proposes the OmniPaxos stop sign; every node that
//! applies it records the next membership and restarts OmniPaxos in the next
//! configuration (`node::reconfig`). Messages carry the sender's configuration, and only
//! members talk to each other (as `transport` refuses non-members). A fresh node runs the
//! join loop of `transfer::join`: it asks a random node for its membership every 500 ms,
//! and once it is named, fetches that member's state (a transfer like any other, which
//! faults can cut), installs it and only then starts its core. Nodes that are not members
//! of the newest configuration stop for good (as the membership nemesis stops them): a
//! running member when it applies its removal, or at the heal; a down one, or a fresh
//! node that no change under way may still add, as soon as a node is seen in that
//! configuration; and any, once the faults are over. The final checks are over the
//! newest configuration's members. Changes are counted by kind when a node is first seen in a
//! newer configuration, and by the faults in effect between proposal and effect. The
//! log oracle sees a configuration's last entries and its stop sign through the state
//! machine wrapper (`SimSm::apply_membership` keeps the old log before the switch wipes
//! it), so the one decided log is compared across configurations, stop signs included.

use super::bank::{self, BankClients};
use super::checks::{accepted_claim, DecidedMonotonic, Kind, LogOracle, Violation};
use super::clients::{self, Clients};
use super::net::{idx, Outbox, Packet, Shape, SimNet, Weather};
use super::sql::{RunDir, SimSql, SqlDisk};
use super::storage::{Durable, SimStorage};
use super::watch::Watchers;
use super::{Bug, SimConfig};
use crate::command::NodeId;
use crate::error::{Error, Result as DbResult};
use crate::kv::KvStore;
use crate::machine::StateMachine;
use crate::machine::{Command, Machine, Machines, Outcome};
use crate::membership::Membership;
use crate::node::{Core, CoreConfig, Event, NodeRole};
use crate::sql::{SqlReader, SqlStore};
use crate::transfer::{Import, Transferable};
use omnipaxos::storage::Storage;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::hash_map::DefaultHasher;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// One simulated node: its current life (`core`, `kv`) and what survives it (`durable`).
/// The wall-clock time at the start of every simulation (2026-01-01, in ms since the
/// Unix epoch): what the leaders stamp the log with, plus the virtual time.
pub const SIM_EPOCH_MS: u64 = 1_767_225_600_000;

pub struct Node {
    pub core: Option<Core<SimStorage>>,
    /// A reader over the node's state machine (what the node's API serves gets from).
    pub kv: Option<KvStore>,
    /// A reader over the node's SQL state machine (what the SQL API queries).
    pub sql: Option<SqlReader>,
    /// While joining (no core yet): the SQL store a fetched state is installed into.
    sql_join: Option<SqlStore>,
    pub durable: Arc<Mutex<Durable>>,
    /// The node's SQL directory and its durability model (see `sql`).
    pub sql_disk: Arc<Mutex<SqlDisk>>,
    outbox: Outbox,
    next_tick: Duration,
    /// Paused (as by SIGSTOP): the core takes no steps, ticks or messages, and keeps its
    /// state, what it sent but was not routed yet (its outbox), and what arrived for it
    /// (`held`, delivered in order when it resumes).
    paused: bool,
    /// Messages that arrived while paused: (from, packet).
    held: Vec<(usize, Packet)>,
    /// A machine crash of the leader, due between its sending appends and syncing them
    /// (see `storage`, [`Durable::cut_armed`]): the steps it may still take to reach
    /// that window; it crashes after the step that did, or the last one.
    power_cut: Option<u32>,
    /// Stopped for good: removed from the cluster (the nemesis stops a removed member's
    /// process, and the heal does not restart it), or a joining node the cluster will
    /// never add.
    pub retired: bool,
    /// Started to join a running cluster (`--join`): every start joins again until the
    /// node holds a state (as the server does), and only then runs a core.
    joiner: bool,
    /// A joining node has run a core once (it became a member).
    joined: bool,
    /// While joining: when the node next asks a member for the membership.
    joining: Option<Duration>,
    /// Stop signs this node's state machine applied since the world last looked.
    sealed: Arc<Mutex<Vec<Sealed>>>,
}

impl Node {
    /// A node that has not started yet, over `durable`; `joiner`: one the cluster adds.
    fn new(durable: Arc<Mutex<Durable>>, sql_disk: Arc<Mutex<SqlDisk>>, joiner: bool) -> Node {
        Node {
            core: None,
            kv: None,
            sql: None,
            sql_join: None,
            durable,
            sql_disk,
            outbox: Outbox::default(),
            next_tick: Duration::ZERO,
            paused: false,
            power_cut: None,
            held: Vec::new(),
            retired: false,
            joiner,
            joined: false,
            joining: None,
            sealed: Arc::default(),
        }
    }
}

impl Node {
    /// The process runs: a core, or the join loop of a joining node.
    pub fn is_up(&self) -> bool {
        self.core.is_some() || self.joining.is_some()
    }

    /// Up and not paused: takes steps, and clients' connections to it are answered.
    pub fn is_running(&self) -> bool {
        self.core.is_some() && !self.paused
    }
}

/// A configuration's log as its stop sign was applied (read by the state machine wrapper
/// before the core wipes it for the next configuration), so that the log oracle compares
/// the last entries of a configuration and its stop sign even when they were decided and
/// applied in the same round as the switch.
struct Sealed {
    /// Global index of `entries[0]`.
    first: u64,
    entries: Vec<crate::command::LogEntry>,
    /// Global index of the stop sign.
    index: u64,
    /// The membership it names.
    next: Membership,
}

/// A node's state machine: its `KvStore`, with the store's synced writes made sync points
/// of the node's durable state, and the state-machine bug injections.
struct SimSm {
    kv: KvStore,
    durable: Arc<Mutex<Durable>>,
    /// Bug injection: drop the first command of every third entry that has commands.
    skip_apply: bool,
    /// Bug injection: after applying an entry whose index ends in 25 or 75, append a
    /// bogus element to the set key `s0` behind the state machine's back.
    diverge: bool,
    sealed: Arc<Mutex<Vec<Sealed>>>,
    /// Bug injection: likewise, bump the version of register key `k0`, value unchanged.
    diverge_version: bool,
}

impl StateMachine for SimSm {
    fn machine(&self) -> Machine {
        Machine::Kv
    }
    fn applied_index(&self) -> u64 {
        self.kv.applied_index()
    }
    fn apply(&mut self, index: u64, commands: &[&Command]) -> DbResult<Vec<Outcome>> {
        self.apply_at(index, None, commands)
    }
    fn next_deadline(&self) -> Option<u64> {
        StateMachine::next_deadline(&self.kv)
    }
    fn log_time(&self) -> u64 {
        self.kv.log_time()
    }
    fn apply_at(
        &mut self,
        index: u64,
        stamp: Option<crate::machine::Stamp>,
        commands: &[&Command],
    ) -> DbResult<Vec<Outcome>> {
        let skip = self.skip_apply && index % 3 == 2 && !commands.is_empty();
        let results = self.kv.apply_at(index, stamp, &commands[skip as usize..])?;
        if self.diverge && index % 50 == 25 {
            let spaces = self.durable.lock().unwrap().kv.clone();
            let mut spaces = spaces.write().unwrap();
            // A stored value is its version then its bytes: this appends to the bytes.
            if let Some(v) = spaces.kv.get_mut(b"s0".as_slice()) {
                v.extend_from_slice(b",diverged");
            }
        }
        if self.diverge_version && index % 50 == 25 {
            let spaces = self.durable.lock().unwrap().kv.clone();
            let mut spaces = spaces.write().unwrap();
            // The version is the first 8 bytes (big-endian) of a stored value.
            if let Some(v) = spaces.kv.get_mut(b"k0".as_slice()).filter(|v| v.len() >= 8) {
                v[7] = v[7].wrapping_add(1);
            }
        }
        Ok(results)
    }
    fn install_staged(&mut self) -> DbResult<u64> {
        let applied = self.kv.install_staged()?;
        let mut d = self.durable.lock().unwrap();
        d.sync_point();
        d.installs += 1;
        Ok(applied)
    }
    fn membership(&self) -> DbResult<Option<Membership>> {
        self.kv.membership()
    }
    fn apply_membership(&mut self, index: u64, m: &Membership) -> DbResult<()> {
        {
            // OmniPaxos keeps the stop sign in the slot after the log (local index
            // compacted + length), which is global index `index`.
            let d = self.durable.lock().unwrap();
            let compacted = d.log.get_compacted_idx().unwrap_or(0);
            let end = compacted + d.log.get_log_len().unwrap_or(0);
            let entries = d.log.get_entries(compacted, end).unwrap_or_default();
            self.sealed.lock().unwrap().push(Sealed {
                first: index - (end - compacted) as u64,
                entries,
                index,
                next: m.clone(),
            });
        }
        self.kv.apply_membership(index, m)
    }
}

/// A state fetch under way.
struct Transfer {
    /// Node indexes.
    fetcher: usize,
    from: usize,
    /// When it ends (or, failed, when the fetching node hears of it).
    due: Duration,
    /// The imports under way, one per state machine; or why it failed.
    state: Result<Vec<Box<dyn Import>>, String>,
}

/// How long a failed fetch waits before it reports (as `crate::transfer::fetcher` does).
const FETCH_BACKOFF: Duration = Duration::from_secs(1);
/// The share of nemesis actions that are membership changes (with `SimConfig::membership`).
const MEMBERSHIP_SHARE: f64 = 0.15;
/// How often a joining node asks a member whether it was added (as `transfer::join`).
const JOIN_POLL: Duration = Duration::from_millis(500);
/// Most nodes a run adds beyond its initial ones (each add or replace takes a fresh id).
const MAX_NEW_NODES: usize = 4;

/// A membership change the nemesis proposed.
struct Change {
    /// The configuration it creates.
    target: u32,
    /// Whether it was handed to a follower rather than the leader.
    via_follower: bool,
    /// Its answer, until it came.
    rx: Option<oneshot::Receiver<DbResult<Membership>>>,
    /// The fresh node it adds (an index).
    joiner: Option<usize>,
    /// Whether a crash, a partition, a pause was in effect at some point between its
    /// proposal and its taking effect.
    overlap: [bool; 3],
}

/// Counts of the membership changes that took effect in a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangeCounts {
    /// Changes the nemesis proposed (a refused one included).
    pub proposed: u64,
    /// Configurations that took effect adding a node, removing one, replacing one.
    pub added: u64,
    pub removed: u64,
    pub replaced: u64,
    /// Of those, the ones with a crashed node, a partition, a paused node in effect
    /// between their proposal and their taking effect.
    pub during_crash: u64,
    pub during_partition: u64,
    pub during_pause: u64,
    /// Changes handed to a follower (which forwards the stop sign to the leader), and of
    /// those, the ones its caller was told were done.
    pub via_follower: u64,
    pub via_follower_acknowledged: u64,
    /// Answers to the callers: done, outcome unknown (timed out, or the node crashed).
    pub acknowledged: u64,
    pub unknown: u64,
}

impl ChangeCounts {
    pub fn add(&mut self, o: &ChangeCounts) {
        self.proposed += o.proposed;
        self.added += o.added;
        self.removed += o.removed;
        self.replaced += o.replaced;
        self.during_crash += o.during_crash;
        self.during_partition += o.during_partition;
        self.during_pause += o.during_pause;
        self.via_follower += o.via_follower;
        self.via_follower_acknowledged += o.via_follower_acknowledged;
        self.acknowledged += o.acknowledged;
        self.unknown += o.unknown;
    }
}

pub struct World {
    pub cfg: SimConfig,
    pub rng: StdRng,
    base: Instant,
    pub now: Duration,
    pub nodes: Vec<Node>,
    pub net: SimNet,
    pub clients: Clients,
    pub oracle: LogOracle,
    mono: DecidedMonotonic,
    next_fault: Duration,
    pub faults: u64,
    /// What the nemesis did, for the failure report.
    pub fault_log: Vec<String>,
    pub trace: DefaultHasher,
    transfers: Vec<Transfer>,
    /// Per node: its durable install count when last observed.
    installs_seen: Vec<u64>,
    /// State fetches started, installed (`StateFetched(Ok)`), failed (`StateFetched(Err)`).
    pub fetches: u64,
    pub fetched: u64,
    pub fetch_failures: u64,
    /// Transfers under way (not already failed) cut by a crash of the fetching node, and
    /// by a crash of the node sending its state.
    pub fetcher_crashes: u64,
    pub sender_crashes: u64,
    /// Machine crashes, and those that did drop a write not yet synced (a decided index
    /// or state machine writes newer than the last sync point).
    pub machine_crashes: u64,
    pub lossy_machine_crashes: u64,
    /// Lossy machine crashes that kept some of the unsynced writes (a prefix).
    pub partial_machine_crashes: u64,
    /// Pauses of a node (see [`Node::paused`]).
    pub pauses: u64,
    /// Machine crashes of a leader that cut the power between the send of its appends
    /// and their fsync (see `storage`).
    pub cuts_before_sync: u64,
    /// A machine crash happened since the last `observe`: check durability there.
    machine_crashed: bool,
    /// Crashes aimed at transfers so far (see `aim_at_transfer`), from a per-seed start.
    aims: u64,
    /// Picks the changes handed to a follower (see `change_membership`), per seed.
    follower_turn: u64,
    /// The newest membership any node is in: the cluster's, as far as anyone knows.
    pub config: Membership,
    /// Membership changes proposed and not yet seen to take effect or fail.
    changes: Vec<Change>,
    pub change_counts: ChangeCounts,
    /// The faults ended (`heal`).
    healed: bool,
    /// The SQL bank-transfer workload (see `bank`).
    pub bank: BankClients,
    /// Restarts that found the KV and SQL engines at different applied indexes, and of
    /// those, the ones with SQL ahead (its commit survived, the KV one did not).
    pub engines_apart: u64,
    pub sql_ahead: u64,
    /// Machine crashes that lost a SQL commit of an entry whose KV commit survived.
    pub sql_behind_kv: u64,
    /// Machine crashes that lost SQL commits not yet synced.
    pub sql_lossy_crashes: u64,
    /// A violation found outside `observe` (at a node's start, or by a watcher).
    violation: Option<Violation>,
    /// The simulated watchers (see `watch`): they read the nodes' watch histories every
    /// `watch::POLL`, after the clients act, without events or randomness of their own.
    pub watchers: Watchers,
    /// The run's SQL directories (removed with the world).
    pub run_dir: RunDir,
}

const TICK: Duration = Duration::from_millis(10);

/// Steps a leader with a power cut due may take to send appends it has not synced (see
/// [`Node::power_cut`]); then the cut happens anyway.
const POWER_CUT_STEPS: u32 = 50;

impl World {
    pub fn new(seed: u64, cfg: SimConfig) -> World {
        let mut rng = StdRng::seed_from_u64(seed);
        let n = cfg.nodes;
        let mut clients = clients::clients(cfg.clients, cfg.keys, cfg.multi_key, &mut rng);
        clients.bound = cfg.liveness_bound;
        clients.stale_reads = cfg.bug == Some(Bug::StaleReads);
        let mut bank = bank::clients(cfg.bank_clients, cfg.bank_ledger, &mut rng);
        bank.bound = cfg.liveness_bound;
        let mut w = World {
            base: Instant::now(),
            now: Duration::ZERO,
            nodes: Vec::new(),
            net: SimNet::new(n),
            clients,
            oracle: LogOracle::new(n),
            mono: DecidedMonotonic::new(n),
            next_fault: Duration::from_millis(rng.gen_range(200..1000)),
            faults: 0,
            fault_log: Vec::new(),
            trace: DefaultHasher::new(),
            transfers: Vec::new(),
            installs_seen: vec![0; n],
            fetches: 0,
            fetched: 0,
            fetch_failures: 0,
            fetcher_crashes: 0,
            sender_crashes: 0,
            machine_crashes: 0,
            lossy_machine_crashes: 0,
            partial_machine_crashes: 0,
            machine_crashed: false,
            pauses: 0,
            cuts_before_sync: 0,
            aims: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 63,
            follower_turn: seed.wrapping_mul(0xc2b2_ae3d_27d4_eb4f) >> 62,
            config: Membership::initial(&crate::sim::members(n as NodeId)),
            changes: Vec::new(),
            change_counts: ChangeCounts::default(),
            healed: false,
            bank,
            engines_apart: 0,
            sql_ahead: 0,
            sql_behind_kv: 0,
            sql_lossy_crashes: 0,
            violation: None,
            watchers: Watchers::new(n),
            run_dir: RunDir::new(seed),
            rng,
            cfg,
        };
        for i in 0..n {
            let durable = Durable::new();
            {
                let mut d = durable.lock().unwrap();
                d.id = i as u64 + 1;
                d.tamper = w.cfg.bug == Some(Bug::TamperLog) && i == 0;
                d.stale_accepted_round = w.cfg.bug == Some(Bug::StaleAcceptedRound) && i == 0;
                if w.cfg.bug == Some(Bug::UnsyncedLog) {
                    d.set_unsynced_log();
                }
            }
            let disk = SqlDisk::new(&w.run_dir.0, i as u64 + 1);
            w.nodes.push(Node::new(durable, disk, false));
            w.start(i);
        }
        w
    }

    fn at(&self) -> Instant {
        self.base + self.now
    }

    /// Starts node `i` from its durable state, with a fresh first batch id. A joining
    /// node without a state starts its join loop instead (as `server` does with `--join`);
    /// a node whose state says it was removed stays stopped (the server refuses to start).
    fn start(&mut self, i: usize) {
        if self.nodes[i].joiner && !self.nodes[i].joined {
            let spaces = self.nodes[i].durable.lock().unwrap().kv.clone();
            let kv = KvStore::open_memory(spaces).expect("memory store opens");
            if kv.membership().expect("memory reads").is_none() && kv.applied_index() == 0 {
                let node = &mut self.nodes[i];
                let sql = node.sql_disk.lock().unwrap().open();
                node.kv = Some(kv);
                node.sql = Some(sql.reader());
                node.sql_join = Some(sql);
                node.joining = Some(self.now);
                return;
            }
        }
        // The join store (if any) is closed before the core's opens.
        self.nodes[i].sql_join = None;
        self.nodes[i].sql = None;
        let cfg = CoreConfig {
            id: i as NodeId + 1,
            members: crate::sim::members(self.cfg.nodes as NodeId),
            tick: TICK,
            election_ticks: 10,
            request_timeout: Duration::from_secs(5),
            repropose_after: Duration::from_secs(1),
            max_batch_commands: 4096,
            max_batch_bytes: 64 << 20,
            first_batch_id: self.rng.gen::<u64>() >> 1,
            compaction: self.cfg.compaction,
        };
        let node = &self.nodes[i];
        let (durable, outbox) = (node.durable.clone(), node.outbox.clone());
        let spaces = durable.lock().unwrap().kv.clone();
        #[allow(unused_mut)]
        let mut kv = KvStore::open_memory(spaces).expect("memory store opens");
        #[cfg(test)]
        {
            kv.no_dedup = self.cfg.bug == Some(Bug::NoDedup);
            kv.split_multi_put = self.cfg.bug == Some(Bug::SplitMultiPut);
            kv.txn_first_only = self.cfg.bug == Some(Bug::TxnFirstOpOnly);
            kv.history_gap = self.cfg.bug == Some(Bug::HistoryGap);
        }
        let sql = node.sql_disk.lock().unwrap().open();
        let (kv_applied, sql_applied) = (kv.applied_index(), sql.applied_index());
        if kv_applied != sql_applied {
            self.engines_apart += 1;
            self.sql_ahead += u64::from(sql_applied > kv_applied);
        }
        {
            // The log must still hold every entry some machine has to apply (the core
            // makes every machine's state durable before it trims: `make_durable`).
            let d = durable.lock().unwrap();
            let base = kv.membership().ok().flatten().map_or(0, |m| m.base);
            let start = base + d.log.get_compacted_idx().unwrap_or(0) as u64;
            if sql_applied < start {
                // Not started: the core could not apply what the log no longer holds.
                self.violation.get_or_insert(Violation::new(
                    Kind::StateBehindLog,
                    format!(
                        "node {} restarts with its SQL state at applied index {sql_applied}, \
                         below the start of its log at {start}: the log was trimmed past SQL \
                         state that was not durable",
                        i + 1
                    ),
                ));
                return;
            }
        }
        let sql_reader = sql.reader();
        let sql_sm = SimSql::new(sql, node.sql_disk.clone(), self.cfg.bug);
        let sm = SimSm {
            kv: kv.clone(),
            durable: durable.clone(),
            skip_apply: self.cfg.bug == Some(Bug::SkipApply) && i == 0,
            diverge: self.cfg.bug == Some(Bug::DivergeState) && i == 0,
            sealed: node.sealed.clone(),
            diverge_version: self.cfg.bug == Some(Bug::DivergeVersion) && i == 0,
        };
        let storage = SimStorage(durable.clone());
        let machines = Machines::from(Box::new(sm)).with(Box::new(sql_sm));
        let mut core = match Core::new(cfg, storage, machines, Box::new(outbox)) {
            Ok(core) => core,
            Err(e) => {
                // Only a node removed from the cluster is refused.
                self.retire(i, &format!("refuses to start: {e}"));
                return;
            }
        };
        let node = &mut self.nodes[i];
        node.joining = None;
        node.joined = true;
        core.set_reopen(Box::new(move || Ok(SimStorage(durable.clone()))));
        // The node's wall clock: virtual time from a fixed epoch.
        let base = self.base;
        core.set_wall_clock(Arc::new(move |at: Instant| {
            SIM_EPOCH_MS + at.saturating_duration_since(base).as_millis() as u64
        }));
        #[cfg(test)]
        if self.cfg.bug == Some(Bug::UnconfirmedReads) {
            core.inject_unconfirmed_reads();
        }
        #[cfg(test)]
        if self.cfg.bug == Some(Bug::SkipLogSync) {
            core.inject_skip_log_sync();
        }
        #[cfg(test)]
        if self.cfg.bug == Some(Bug::GiveUpAsRefused) {
            core.inject_give_up_as_refused();
        }
        node.core = Some(core);
        node.kv = Some(kv);
        node.sql = Some(sql_reader);
        node.next_tick = self.now + TICK;
    }

    /// After node `i`'s step: the power cut due on it happens if the step sent appends
    /// it did not sync (they were delivered, its disk may lose them), or if it has no
    /// step left to wait for that.
    fn cut_power(&mut self, i: usize) {
        let Some(left) = self.nodes[i].power_cut else {
            return;
        };
        let cut = {
            let mut d = self.nodes[i].durable.lock().unwrap();
            std::mem::take(&mut d.cuts_before_sync) > 0
        };
        if cut || left == 0 {
            self.cuts_before_sync += u64::from(cut);
            self.nodes[i].power_cut = None;
            if cut {
                self.log(format!(
                    "node {}: power cut between sending its appends and syncing them",
                    i + 1
                ));
            }
            self.crash(i, true);
        } else {
            self.nodes[i].power_cut = Some(left - 1);
        }
    }

    /// Crashes node `i`: its core, waiters and unsent messages are gone; a machine crash
    /// also loses what was not synced (see `storage`).
    fn crash(&mut self, i: usize, machine: bool) {
        self.nodes[i].power_cut = None;
        self.nodes[i].durable.lock().unwrap().cut_armed = false;
        let before = self.nodes[i].core.as_ref().map(|c| c.status());
        self.stop_process(i);
        let node = &mut self.nodes[i];
        let mut what = "process".to_string();
        if machine {
            self.machine_crashes += 1;
            // A power loss keeps a prefix of the unsynced writes (see `storage`).
            let rng = &mut self.rng;
            let loss = node.durable.lock().unwrap().machine_crash(|n| {
                if n == 0 {
                    0
                } else {
                    rng.gen_range(0..=n)
                }
            });
            let local = loss.decided as u64;
            self.lossy_machine_crashes += u64::from(loss.kept < loss.unsynced);
            self.partial_machine_crashes += u64::from(0 < loss.kept && loss.kept < loss.unsynced);
            // SQLite's own WAL keeps a prefix of its unsynced commits, independently.
            let sql_loss = node.sql_disk.lock().unwrap().machine_crash(|n| {
                if n == 0 {
                    0
                } else {
                    rng.gen_range(0..=n)
                }
            });
            let spaces = node.durable.lock().unwrap().kv.clone();
            let kv = KvStore::open_memory(spaces).ok();
            let applied = kv.as_ref().map_or(0, |kv| kv.applied_index());
            self.sql_lossy_crashes += u64::from(sql_loss.kept < sql_loss.unsynced);
            self.sql_behind_kv += u64::from(sql_loss.first_lost.is_some_and(|l| l < applied));
            // The decided index is of the configuration the state records (global).
            let base = kv.and_then(|kv| kv.membership().ok().flatten());
            let decided = base.map_or(0, |m| m.base) + local;
            if let Some(s) = before {
                what = format!(
                    "machine: decided {} -> {decided}, applied {} -> {applied}, kept {} of {} \
                     unsynced writes, {} of {} unsynced SQL commits",
                    s.decided_index,
                    s.applied_index,
                    loss.kept,
                    loss.unsynced,
                    sql_loss.kept,
                    sql_loss.unsynced
                );
            }
            self.machine_crashed = true;
            self.mono.reset(i, decided);
            self.oracle.rewind(i, decided);
        }
        self.log(format!("crash node {} ({what})", i + 1));
    }

    /// Ends node `i`'s process (a crash, or a stop): its core, waiters and unsent
    /// messages are gone, its connections break.
    fn stop_process(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.core = None;
        node.kv = None;
        node.sql = None;
        node.sql_join = None;
        node.joining = None;
        node.paused = false;
        node.held.clear();
        node.outbox.take_all();
        self.net.drop_node(i);
        // The fetching node's transfers die with it; a peer's crash breaks the
        // connection: the fetching node hears of it after the back-off.
        let under_way = |t: &Transfer| t.state.is_ok();
        self.fetcher_crashes += self
            .transfers
            .iter()
            .filter(|t| t.fetcher == i && under_way(t))
            .count() as u64;
        self.transfers.retain(|t| t.fetcher != i);
        for t in &mut self.transfers {
            if t.from == i && under_way(t) {
                t.state = Err(format!("node {} crashed during the transfer", i + 1));
                t.due = self.now + FETCH_BACKOFF;
                self.sender_crashes += 1;
            }
        }
    }

    /// Stops node `i` for good (see [`Node::retired`]).
    fn retire(&mut self, i: usize, why: &str) {
        self.stop_process(i);
        self.nodes[i].retired = true;
        self.log(format!("stop node {} for good: {why}", i + 1));
    }

    fn restart(&mut self, i: usize) {
        self.start(i);
        self.log(format!("restart node {}", i + 1));
        for j in 0..self.nodes.len() {
            if j != i && self.net.link_up(i, j) && self.net.link_up(j, i) {
                self.reconnected(j, i);
            }
        }
    }

    /// Tells node `to` that its connection to node `peer` came back.
    fn reconnected(&mut self, to: usize, peer: usize) {
        let at = self.at();
        // A paused node notices when it resumes (see `resume`).
        let node = &mut self.nodes[to];
        if let Some(core) = node.core.as_mut().filter(|_| !node.paused) {
            core.handle(Event::Reconnected(peer as NodeId + 1), at);
        }
    }

    fn set_links(&mut self, up: Vec<Vec<bool>>) {
        for (a, b) in self.net.set_links(up) {
            self.reconnected(a, b);
            self.reconnected(b, a);
        }
    }

    /// Node `i` asked to fetch peer `from`'s state.
    fn start_fetch(&mut self, i: usize, from: NodeId) {
        self.fetches += 1;
        let from = idx(from);
        let took = Duration::from_millis(self.rng.gen_range(5..300));
        let state = self.export(i, from);
        let due = match &state {
            Ok(_) => self.now + took,
            Err(_) => self.now + FETCH_BACKOFF,
        };
        let what = match &state {
            Ok(_) => {
                let kv = self.nodes[from]
                    .kv
                    .as_ref()
                    .map_or(0, |kv| kv.applied_index());
                format!("state at {kv}")
            }
            Err(e) => format!("failing: {e}"),
        };
        self.log(format!("node {} fetches node {}'s {what}", i + 1, from + 1));
        if self.cfg.crash_transfers && state.is_ok() {
            // The next fault comes while this transfer is under way.
            let at =
                self.now + Duration::from_millis(self.rng.gen_range(0..took.as_millis() as u64));
            self.next_fault = self.next_fault.min(at);
        }
        self.transfers.push(Transfer {
            fetcher: i,
            from,
            due,
            state,
        });
    }

    fn linked(&self, a: usize, b: usize) -> bool {
        self.net.link_up(a, b) && self.net.link_up(b, a)
    }

    /// The start of a transfer: the peer's states (KV, then SQL, through
    /// `transfer::Transferable` as the server sends them) as of now, written to `i`'s
    /// staging areas.
    fn export(&mut self, i: usize, from: usize) -> Result<Vec<Box<dyn Import>>, String> {
        if from >= self.nodes.len() || from == i {
            return Err(format!("no peer {}", from + 1));
        }
        if !self.linked(i, from) {
            return Err(format!("node {} is unreachable", from + 1));
        }
        let (Some(source), Some(source_sql)) =
            (self.nodes[from].kv.as_ref(), self.nodes[from].sql.as_ref())
        else {
            return Err(format!("node {} is down", from + 1));
        };
        let Some(core) = self.nodes[from].core.as_ref() else {
            return Err(format!("node {} is not serving", from + 1));
        };
        if !core.status().membership.contains(i as NodeId + 1) {
            return Err(format!(
                "node {} is not a member for node {}",
                i + 1,
                from + 1
            ));
        }
        let sources: [&dyn Transferable; 2] = [source, source_sql];
        let node = &self.nodes[i];
        let kv = node.kv.as_ref().expect("a fetching node is up");
        let sql = node.sql.as_ref().expect("a fetching node is up");
        let targets: [&dyn Transferable; 2] = [kv, sql];
        let mut imports = Vec::new();
        for (source, target) in sources.into_iter().zip(targets) {
            let mut import = target.importer().map_err(|e| format!("import: {e}"))?;
            source
                .export(&mut |_| {}, &mut |bytes| import.part(bytes))
                .map_err(|e| format!("{:?} export: {e}", source.machine()))?;
            imports.push(import);
        }
        Ok(imports)
    }

    /// Ends the transfers due at `now`.
    fn finish_fetches(&mut self) {
        let at = self.at();
        // A paused fetching node hears of its transfer when it resumes.
        let due = |w: &World, t: &Transfer| t.due <= w.now && !w.nodes[t.fetcher].paused;
        while let Some(k) = self.transfers.iter().position(|t| due(self, t)) {
            let t = self.transfers.remove(k);
            let res = match t.state {
                Ok(_) if !self.linked(t.fetcher, t.from) => {
                    // Broken at the end: heard of after the back-off.
                    self.transfers.push(Transfer {
                        state: Err(format!("node {} became unreachable", t.from + 1)),
                        due: self.now + FETCH_BACKOFF,
                        ..t
                    });
                    continue;
                }
                Ok(imports) => imports
                    .into_iter()
                    .try_fold(u64::MAX, |a, imp| Ok(a.min(imp.finish()?)))
                    .map_err(|e: Error| e.to_string()),
                Err(e) => Err(e),
            };
            if res.is_ok() {
                // The staged copies are synced (`finish`).
                self.nodes[t.fetcher]
                    .sql_disk
                    .lock()
                    .unwrap()
                    .staged_synced();
            }
            if self.nodes[t.fetcher].core.is_none() {
                self.joined_or_not(t.fetcher, res);
                continue;
            }
            let node = &mut self.nodes[t.fetcher];
            let core = node.core.as_mut().expect("a fetching node is up");
            if res.is_ok() {
                // The staged-complete marker is a synced write.
                node.durable.lock().unwrap().sync_point();
                self.fetched += 1;
            } else {
                self.fetch_failures += 1;
            }
            if self.cfg.trace {
                (self.now, t.fetcher, format!("{res:?}")).hash(&mut self.trace);
            }
            let what = match &res {
                Ok(applied) => format!("fetched the state at {applied}"),
                Err(e) => format!("state fetch failed: {e}"),
            };
            core.handle(Event::StateFetched(res.map_err(Error::Unavailable)), at);
            self.log(format!("node {} {what}", t.fetcher + 1));
        }
    }

    /// A joining node's state fetch ended (`transfer::join`): installed, the node starts
    /// its core in the membership the state records; failed, it asks again.
    fn joined_or_not(&mut self, i: usize, res: Result<u64, String>) {
        let res = res.and_then(|_| {
            let node = &mut self.nodes[i];
            let sql = node
                .sql_join
                .as_mut()
                .expect("a joining node has its store open");
            let sql_applied = sql.install_staged().map_err(|e| e.to_string())?;
            node.sql_disk.lock().unwrap().installed(sql_applied);
            let kv = node.kv.as_mut().expect("a joining node has its store open");
            let applied = kv.install_staged().map_err(|e| e.to_string())?;
            let mut d = node.durable.lock().unwrap();
            d.sync_point();
            d.installs += 1;
            Ok(applied.min(sql_applied))
        });
        match res {
            Ok(applied) => {
                self.fetched += 1;
                self.log(format!("node {} joined with the state at {applied}", i + 1));
                self.start(i);
            }
            Err(e) => {
                self.fetch_failures += 1;
                self.log(format!("node {}'s join fetch failed: {e}", i + 1));
                self.nodes[i].joining = Some(self.now);
            }
        }
    }

    /// Joining nodes due to ask: a random other node is asked for its membership (as
    /// `transfer::join` asks the members it knows); once it names the joining node, the
    /// node fetches that member's state.
    fn join_step(&mut self) {
        for i in 0..self.nodes.len() {
            let node = &self.nodes[i];
            let due = node.joining.is_some_and(|t| t <= self.now);
            if !due || node.paused || self.transfers.iter().any(|t| t.fetcher == i) {
                continue;
            }
            let asked: Vec<usize> = (0..self.nodes.len())
                .filter(|&j| j != i && !self.nodes[j].retired && self.nodes[j].joined)
                .collect();
            let Some(&j) = asked.choose(&mut self.rng) else {
                self.nodes[i].joining = Some(self.now + JOIN_POLL);
                continue;
            };
            let answer = match &self.nodes[j].core {
                Some(c) if self.linked(i, j) && !self.nodes[j].paused => {
                    Some(c.status().membership)
                }
                _ => None,
            };
            match answer {
                Some(m) if m.contains(i as NodeId + 1) => {
                    if self.cfg.bug == Some(Bug::JoinWithoutState) {
                        self.take_position(i, j);
                        self.log(format!(
                            "node {} joins without a state (bug), at node {}'s position",
                            i + 1,
                            j + 1
                        ));
                        self.start(i);
                        continue;
                    }
                    self.nodes[i].joining = Some(Duration::MAX);
                    self.start_fetch(i, j as NodeId + 1);
                }
                _ => self.nodes[i].joining = Some(self.now + JOIN_POLL),
            }
        }
    }

    /// Bug injection ([`Bug::JoinWithoutState`]): node `i` records node `j`'s applied
    /// index and membership as its own, without its data: a new member that serves
    /// without having installed the state.
    fn take_position(&mut self, i: usize, j: usize) {
        let from = self.nodes[j]
            .durable
            .lock()
            .unwrap()
            .kv
            .read()
            .unwrap()
            .sm
            .clone();
        let mut d = self.nodes[i].durable.lock().unwrap();
        {
            let mut spaces = d.kv.write().unwrap();
            for key in [b"applied".as_slice(), b"membership".as_slice()] {
                if let Some(v) = from.get(key) {
                    spaces.sm.insert(key.to_vec(), v.clone());
                }
            }
        }
        d.sync_point();
    }

    fn log(&mut self, what: String) {
        self.fault_log.push(format!("{:?}: {what}", self.now));
    }

    fn leader(&self) -> Option<usize> {
        (0..self.nodes.len()).find(
            |&i| matches!(&self.nodes[i].core, Some(c) if c.status().role == NodeRole::Leader),
        )
    }

    /// Pauses node `i` (see [`Node::paused`]).
    fn pause(&mut self, i: usize) {
        self.nodes[i].paused = true;
        self.pauses += 1;
        self.log(format!("pause node {}", i + 1));
    }

    /// Resumes paused node `i`: what arrived meanwhile is delivered first, in order, then
    /// its timers fire (late, as after SIGCONT).
    fn resume(&mut self, i: usize) {
        let at = self.at();
        let node = &mut self.nodes[i];
        node.paused = false;
        node.next_tick = node.next_tick.min(self.now);
        let held = std::mem::take(&mut node.held);
        let n = held.len();
        for (from, packet) in held {
            self.deliver(from, i, packet, at);
        }
        self.log(format!("resume node {} ({n} messages held)", i + 1));
        // Its connections may have broken and come back meanwhile.
        for j in 0..self.nodes.len() {
            if j != i && self.linked(i, j) {
                self.reconnected(i, j);
            }
        }
    }

    /// Hands `packet` from `from` to node `to`'s core (if it is up).
    fn deliver(&mut self, from: usize, to: usize, packet: Packet, at: Instant) {
        let now = self.now;
        // Only members may connect to a node (`transport`): what a node that is not a
        // member in the receiver's view sends is refused.
        let member = |c: &Core<SimStorage>| c.status().membership.contains(from as NodeId + 1);
        let core = self.nodes[to].core.as_mut().filter(|c| member(c));
        if let Some(core) = core {
            if self.cfg.trace {
                (now, to).hash(&mut self.trace);
                match &packet {
                    Packet::Paxos { msg, .. } => bincode::serialize(msg),
                    Packet::Note(n) => bincode::serialize(n),
                }
                .unwrap()
                .hash(&mut self.trace);
            }
            let ev = match packet {
                Packet::Paxos { config, msg } if self.cfg.bug == Some(Bug::UntaggedMessages) => {
                    // Every message passes for one of the receiver's configuration.
                    let _ = config;
                    let config = core.status().membership.config_id;
                    Event::Peer { config, msg }
                }
                Packet::Paxos { config, msg } => Event::Peer { config, msg },
                Packet::Note(note) => Event::Note {
                    from: from as NodeId + 1,
                    note,
                },
            };
            core.handle(ev, at);
        }
    }

    /// With `crash_transfers`, while a transfer is under way: crashes its fetching or its
    /// sending node, in turn (as many nodes may be down as for any crash). Returns whether
    /// it did.
    fn aim_at_transfer(&mut self, down: usize) -> bool {
        let under_way: Vec<(usize, usize)> = self
            .transfers
            .iter()
            .filter(|t| t.state.is_ok())
            .map(|t| (t.fetcher, t.from))
            .collect();
        if under_way.is_empty() || down >= self.nodes.len().div_ceil(2) {
            return false;
        }
        let (fetcher, from) = *under_way.choose(&mut self.rng).unwrap();
        // Both ends in turn, from a seed-dependent start (most runs aim once or twice):
        // each crash path is taken about as often.
        self.aims += 1;
        let victim = if self.aims.is_multiple_of(2) {
            fetcher
        } else {
            from
        };
        let machine = self.rng.gen_bool(0.5);
        self.crash(victim, machine);
        true
    }

    /// One nemesis action.
    fn inject_fault(&mut self) {
        self.nemesis_action();
        self.faults += 1;
        let now = self.faults_now();
        for c in &mut self.changes {
            for (o, f) in c.overlap.iter_mut().zip(now) {
                *o |= f;
            }
        }
    }

    /// One nemesis action (see `inject_fault`).
    fn nemesis_action(&mut self) {
        let alive: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| !self.nodes[i].retired)
            .collect();
        // A node with a power cut due is neither: it is about to go down.
        let up: Vec<usize> = alive
            .iter()
            .copied()
            .filter(|&i| self.nodes[i].is_up() && self.nodes[i].power_cut.is_none())
            .collect();
        let down: Vec<usize> = alive
            .iter()
            .copied()
            .filter(|&i| !self.nodes[i].is_up())
            .collect();
        if alive.iter().any(|&i| self.nodes[i].power_cut.is_some()) {
            return;
        }
        // The crash and pause limits are of the cluster's members.
        let n = self.config.members.len();
        if self.cfg.crash_transfers && self.aim_at_transfer(down.len()) {
            return;
        }
        if self.cfg.membership && self.rng.gen_bool(MEMBERSHIP_SHARE) && self.change_membership() {
            return;
        }
        let leader = self.leader();
        let roll = self.rng.gen_range(0..100);
        if roll < 30 {
            let shape = *Shape::ALL.choose(&mut self.rng).unwrap();
            let links = self.net.shape(shape, leader, &alive, &mut self.rng);
            self.log(format!(
                "partition {shape:?} (leader {:?})",
                leader.map(|l| l + 1)
            ));
            self.set_links(links);
        } else if roll < 42 {
            self.log("heal the network".into());
            let links = self.net.all_up();
            self.set_links(links);
        } else if roll < 62 && down.len() < n.div_ceil(2) {
            let victim = match leader {
                Some(l) if roll < 50 => l,
                _ => *up.choose(&mut self.rng).unwrap(),
            };
            let machine = self.rng.gen_bool(0.5);
            let cut = self.cfg.power_cuts && machine && leader == Some(victim);
            if cut && self.nodes[victim].is_running() {
                // The leader's power goes out once it sent appends it has not synced.
                self.log(format!("power cut due on node {}", victim + 1));
                self.nodes[victim].durable.lock().unwrap().cut_armed = true;
                self.nodes[victim].power_cut = Some(POWER_CUT_STEPS);
            } else {
                self.crash(victim, machine);
            }
        } else if roll < 85 && !down.is_empty() {
            let i = *down.choose(&mut self.rng).unwrap();
            self.restart(i);
        } else if roll < 93 {
            // Pause a running node (the leader half the time), or resume a paused one.
            let paused: Vec<usize> = up
                .iter()
                .copied()
                .filter(|&i| self.nodes[i].paused)
                .collect();
            let running: Vec<usize> = up
                .iter()
                .copied()
                .filter(|&i| !self.nodes[i].paused)
                .collect();
            let may_pause = down.len() + paused.len() < n.div_ceil(2) && !running.is_empty();
            if !paused.is_empty() && (!may_pause || self.rng.gen_bool(0.5)) {
                let i = *paused.choose(&mut self.rng).unwrap();
                self.resume(i);
            } else if may_pause {
                let i = match leader {
                    Some(l) if self.rng.gen_bool(0.5) && !self.nodes[l].paused => l,
                    _ => *running.choose(&mut self.rng).unwrap(),
                };
                self.pause(i);
            }
        } else {
            self.net.weather = if self.rng.gen_bool(0.3) {
                Weather::CALM
            } else {
                Weather::random(&mut self.rng, self.cfg.chaos)
            };
            self.log(format!("weather {:?}", self.net.weather));
        }
    }

    /// Which faults are in effect among the members: a crashed node, a partition, a
    /// paused node.
    fn faults_now(&self) -> [bool; 3] {
        let members: Vec<usize> = (self.config.ids().into_iter().map(idx))
            .filter(|&i| i < self.nodes.len() && !self.nodes[i].retired)
            .collect();
        let crash = members.iter().any(|&i| !self.nodes[i].is_up());
        let pause = members.iter().any(|&i| self.nodes[i].paused);
        let cut = members
            .iter()
            .any(|&a| members.iter().any(|&b| a != b && !self.net.link_up(a, b)));
        [crash, cut, pause]
    }

    /// A membership change, as `nemesis::membership` makes them: add a fresh node, remove
    /// a member (the leader one time in three), or replace one by a fresh node, keeping
    /// the cluster between one node fewer (at least 3) and one more than it started with.
    /// The change goes to the configuration's leader, else to a running member, as
    /// `Event::ChangeMembership` (what the APIs send); a fresh node starts its join loop
    /// first. One change at a time. Returns whether it proposed one.
    fn change_membership(&mut self) -> bool {
        if self.changes.iter().any(|c| c.rx.is_some()) {
            return false;
        }
        let members = self.config.ids();
        let initial = self.cfg.nodes;
        let (min, max) = (3.max(initial - 1), initial + 1);
        let room = self.nodes.len() < initial + MAX_NEW_NODES;
        let mut kinds = Vec::new();
        if room && members.len() < max {
            kinds.push("add");
        }
        if members.len() > min {
            kinds.push("remove");
        }
        if room {
            kinds.push("replace");
        }
        let Some(&kind) = kinds.choose(&mut self.rng) else {
            return false;
        };
        let running: Vec<usize> = (members.iter().map(|&id| idx(id)))
            .filter(|&i| self.nodes[i].is_running())
            .collect();
        if running.is_empty() {
            return false;
        }
        let config = self.config.config_id;
        let leader = self.leader().filter(|&l| {
            running.contains(&l)
                && self.nodes[l]
                    .core
                    .as_ref()
                    .unwrap()
                    .status()
                    .membership
                    .config_id
                    == config
        });
        // To the leader, except every third change (from a per-seed start), which goes to a
        // follower (it forwards the stop sign). Chosen without the random stream, so that the seeds of the
        // injected-bug tests keep their schedules.
        let follower = running.iter().copied().find(|&i| Some(i) != leader);
        let proposer = match (leader, follower) {
            (Some(_), Some(f))
                if (self.follower_turn + self.change_counts.proposed).is_multiple_of(3) =>
            {
                f
            }
            (Some(l), _) => l,
            (None, _) => *running.choose(&mut self.rng).unwrap(),
        };
        let via_follower = leader.is_some_and(|l| l != proposer);
        let remove = if kind == "add" {
            vec![]
        } else {
            let victim = match leader {
                Some(l) if self.rng.gen_ratio(1, 3) => l as NodeId + 1,
                _ => *members.choose(&mut self.rng).unwrap(),
            };
            vec![victim]
        };
        let joiner = (kind != "remove").then(|| self.add_node());
        let add: Vec<crate::config::Member> = joiner
            .map(|j| crate::config::Member {
                id: j as NodeId + 1,
                addr: format!("sim-{}", j + 1),
            })
            .into_iter()
            .collect();
        self.log(format!(
            "membership change ({kind}) to node {}: add {:?}, remove {remove:?}",
            proposer + 1,
            add.iter().map(|m| m.id).collect::<Vec<_>>()
        ));
        let (ev, rx) = Event::change(add, remove);
        let at = self.at();
        let core = self.nodes[proposer].core.as_mut().expect("running");
        core.handle(ev, at);
        self.change_counts.proposed += 1;
        self.change_counts.via_follower += u64::from(via_follower);
        self.changes.push(Change {
            target: config + 1,
            via_follower,
            rx: Some(rx),
            joiner,
            overlap: self.faults_now(),
        });
        true
    }

    /// Starts a fresh node (the next id) that joins the cluster; returns its index.
    fn add_node(&mut self) -> usize {
        let i = self.nodes.len();
        let durable = Durable::new();
        durable.lock().unwrap().id = i as u64 + 1;
        let disk = SqlDisk::new(&self.run_dir.0, i as u64 + 1);
        self.nodes.push(Node::new(durable, disk, true));
        self.net.add_node();
        self.oracle.add_node();
        self.mono.add_node();
        self.installs_seen.push(0);
        self.log(format!("start node {} (joining)", i + 1));
        self.start(i);
        i
    }

    /// Takes the answers of proposed changes. A clean error means it did not happen: its
    /// fresh node is stopped (as the membership nemesis does). An unknown outcome is
    /// settled when a newer configuration shows up (see `config_changed`).
    fn poll_changes(&mut self) {
        let mut failed = Vec::new();
        for (k, c) in self.changes.iter_mut().enumerate() {
            let Some(rx) = c.rx.as_mut() else { continue };
            let what = match rx.try_recv() {
                Err(oneshot::error::TryRecvError::Empty) => continue,
                Ok(Ok(m)) => {
                    self.change_counts.acknowledged += 1;
                    self.change_counts.via_follower_acknowledged += u64::from(c.via_follower);
                    format!("acknowledged: configuration {}", m.config_id)
                }
                Ok(Err(e @ Error::OutcomeUnknown(_))) => {
                    self.change_counts.unknown += 1;
                    format!("outcome unknown: {e}")
                }
                Err(oneshot::error::TryRecvError::Closed) => {
                    self.change_counts.unknown += 1;
                    "outcome unknown: the node crashed".into()
                }
                Ok(Err(e)) => {
                    failed.push(k);
                    format!("failed: {e}")
                }
            };
            c.rx = None;
            let line = format!("membership change to configuration {}: {what}", c.target);
            self.fault_log.push(format!("{:?}: {line}", self.now));
        }
        let config = self.config.config_id;
        for k in failed.into_iter().rev() {
            let c = self.changes.remove(k);
            let undecided = c.target > config;
            if let Some(j) = c.joiner.filter(|&j| undecided && !self.nodes[j].joined) {
                self.retire(j, "its membership change failed");
            }
        }
    }

    /// A node is in configuration `m`, newer than any seen: count the change by kind and
    /// by the faults it overlapped, and settle the changes it ends.
    fn config_changed(&mut self, m: Membership) {
        let (old, new) = (self.config.ids(), m.ids());
        let added: Vec<NodeId> = new.iter().copied().filter(|id| !old.contains(id)).collect();
        let removed: Vec<NodeId> = old.iter().copied().filter(|id| !new.contains(id)).collect();
        let counts = &mut self.change_counts;
        match (added.is_empty(), removed.is_empty()) {
            (false, false) => counts.replaced += 1,
            (false, true) => counts.added += 1,
            (true, false) => counts.removed += 1,
            (true, true) => {}
        }
        let overlap = self
            .changes
            .iter()
            .find(|c| c.target == m.config_id)
            .map_or_else(|| self.faults_now(), |c| c.overlap);
        let counts = &mut self.change_counts;
        counts.during_crash += u64::from(overlap[0]);
        counts.during_partition += u64::from(overlap[1]);
        counts.during_pause += u64::from(overlap[2]);
        self.log(format!(
            "configuration {} in effect: members {new:?} (added {added:?}, removed \
             {removed:?}; during a crash/partition/pause: {overlap:?})",
            m.config_id
        ));
        self.config = m;
        let config = self.config.config_id;
        // A change this configuration settles stays until its caller is answered (the
        // node it was handed to may apply it later than the first one seen here).
        self.changes.retain(|c| c.target > config || c.rx.is_some());
        // The nodes that are not members stop (as the membership nemesis stops them once
        // it knows): a fresh node still joining unless a change under way may add it, a
        // down one (it is not restarted), and any once the faults are over; a running
        // member removed by this change may still apply its removal itself (then it
        // stops), or the heal stops it.
        for i in 0..self.nodes.len() {
            let node = &self.nodes[i];
            let joining = node.joiner && !node.joined;
            let stop = (joining && !self.may_join(i)) || self.healed || !node.is_up();
            if !node.retired && !self.config.contains(i as NodeId + 1) && stop {
                let why = format!("not a member of configuration {config}");
                self.retire(i, &why);
            }
        }
    }

    /// Node `i` is a fresh node that a change under way may still add.
    fn may_join(&self, i: usize) -> bool {
        let node = &self.nodes[i];
        let config = self.config.config_id;
        node.joiner
            && !node.joined
            && (self.changes.iter()).any(|c| c.target > config && c.joiner == Some(i))
    }

    /// The members of the newest configuration (node indexes).
    pub fn final_members(&self) -> Vec<usize> {
        self.config.ids().into_iter().map(idx).collect()
    }

    /// Ends every fault: all nodes up, all links up, calm weather.
    pub fn heal(&mut self) {
        self.healed = true;
        for i in 0..self.nodes.len() {
            let node = &self.nodes[i];
            if node.retired {
                continue;
            }
            // A power cut still due lands now, and the node restarts below: after healing
            // nothing goes down any more.
            if node.power_cut.is_some() {
                self.crash(i, true);
            }
            // A node that is no longer a member is not restarted (nor left running), as
            // by the membership nemesis; a fresh node that a change may add goes on.
            if !self.config.contains(i as NodeId + 1) && !self.may_join(i) {
                let why = format!("not a member of configuration {}", self.config.config_id);
                self.retire(i, &why);
            } else if !self.nodes[i].is_up() {
                self.restart(i);
            } else if self.nodes[i].paused {
                self.resume(i);
            }
        }
        let links = self.net.all_up();
        self.set_links(links);
        self.net.weather = Weather::CALM;
        self.log("heal everything".into());
    }

    /// Checks the log invariants on every live node (after every round, so before a node
    /// can trim what it decided in it: see `checks`).
    fn observe(&mut self) -> Result<(), Violation> {
        if let Some(v) = self
            .violation
            .take()
            .or_else(|| self.bank.workload.violation.take())
        {
            return Err(v);
        }
        self.poll_changes();
        if std::mem::take(&mut self.machine_crashed) {
            self.check_durable()?;
        }
        for i in 0..self.nodes.len() {
            let Some(core) = &self.nodes[i].core else {
                continue;
            };
            let status = core.status();
            // The stop signs it applied since the last look: its old configuration's last
            // entries and the stop sign, compared if it had compared everything before.
            let sealed = std::mem::take(&mut *self.nodes[i].sealed.lock().unwrap());
            for s in sealed {
                let from = self.oracle.checked_to(i);
                if from >= s.first && from < s.index {
                    let k = ((from - s.first) as usize).min(s.entries.len());
                    self.oracle.observe(i, from, &s.entries[k..])?;
                }
                if self.oracle.checked_to(i) == s.index {
                    let ids = s.next.ids();
                    self.oracle
                        .observe_stop_sign(i, s.index, s.next.config_id, ids)?;
                }
            }
            if status.role == NodeRole::Removed {
                let why = format!("removed in configuration {}", status.membership.config_id);
                self.retire(i, &why);
                continue;
            }
            if status.membership.config_id > self.config.config_id {
                self.config_changed(status.membership.clone());
            }
            let core = self.nodes[i].core.as_ref().expect("checked above");
            let decided = status.decided_index;
            self.mono.observe(i, decided)?;
            let (installs, accepted, end) = {
                let d = self.nodes[i].durable.lock().unwrap();
                let end = d.log.get_compacted_idx().unwrap() + d.log.get_log_len().unwrap();
                (d.installs, d.log.get_accepted_round().unwrap(), end as u64)
            };
            let nodes = &self.nodes;
            accepted_claim(i, accepted, end, |r| {
                let leader = nodes.get((r.3 as usize).wrapping_sub(1))?;
                let led = leader.durable.lock().unwrap().led.get(&r).copied();
                led
            })?;
            let installed = installs > self.installs_seen[i];
            self.installs_seen[i] = installs;
            self.oracle.skip(i, status.compacted_index, installed)?;
            let from = self.oracle.checked_to(i);
            if decided > from {
                let entries = core.decided_entries(from, decided);
                self.oracle.observe(i, from, &entries)?;
            }
        }
        Ok(())
    }

    /// Every decided entry is still in a majority of the durable logs (`decided_durable`).
    fn check_durable(&self) -> Result<(), Violation> {
        let config = &self.config;
        let logs: Vec<_> = config
            .members
            .iter()
            .filter_map(|m| {
                let i = (m.id as usize)
                    .checked_sub(1)
                    .filter(|&i| i < self.nodes.len())?;
                let d = self.nodes[i].durable.lock().unwrap();
                let own = KvStore::open_memory(d.kv.clone())
                    .ok()
                    .and_then(|kv| kv.membership().ok().flatten());
                // No membership recorded yet: the initial configuration.
                let own = own.map_or(1, |o| o.config_id);
                if own < config.config_id {
                    // Not yet in this configuration: it holds none of its entries.
                    return Some((m.id, config.base, Vec::new()));
                }
                if own > config.config_id {
                    // Already past it (this world's view lags): it applied the whole
                    // configuration, stop sign included, into its state.
                    return Some((m.id, u64::MAX, Vec::new()));
                }
                let (first, next) = d.log.bounds();
                let start = first.max(d.log.get_compacted_idx().unwrap());
                let entries = d.log.get_entries(start, next).unwrap();
                Some((m.id, config.base + start as u64, entries))
            })
            .collect();
        super::checks::decided_durable(self.oracle.decided(), config.base, &logs)
    }

    /// Runs until `end`, or until `stop` holds. Returns whether `stop` held.
    pub fn run_until(
        &mut self,
        end: Duration,
        faults: bool,
        issuing: bool,
        stop: fn(&World) -> bool,
    ) -> Result<bool, Violation> {
        loop {
            if stop(self) {
                return Ok(true);
            }
            let ticks = self.nodes.iter().filter(|n| n.is_running());
            let ticks = ticks.map(|n| n.next_tick);
            let next = ticks
                .chain(self.net.next_time())
                .chain(
                    self.transfers
                        .iter()
                        .filter(|t| !self.nodes[t.fetcher].paused)
                        .map(|t| t.due),
                )
                .chain(
                    self.nodes
                        .iter()
                        .filter(|n| !n.paused)
                        .filter_map(|n| n.joining),
                )
                .chain(self.clients.next_time(issuing))
                .chain(self.bank.next_time(issuing))
                .chain(faults.then_some(self.next_fault))
                .min()
                .unwrap_or(end);
            if next > end {
                self.now = end;
                return Ok(false);
            }
            self.now = self.now.max(next);
            let (now, at) = (self.now, self.at());
            while let Some((from, to, packet)) = self.net.pop_due(now) {
                if to == 0 && self.cfg.bug == Some(Bug::DeafNode) {
                    continue;
                }
                if self.nodes[to].paused {
                    self.nodes[to].held.push((from, packet));
                } else {
                    self.deliver(from, to, packet, at);
                }
            }
            self.finish_fetches();
            self.join_step();
            for node in &mut self.nodes {
                if let Some(core) = node.core.as_mut().filter(|_| !node.paused) {
                    if node.next_tick <= now {
                        core.tick(at);
                        node.next_tick += TICK;
                    }
                }
            }
            let base = self.base;
            self.clients
                .act(now, base, &mut self.rng, &mut self.nodes, issuing);
            self.bank
                .act(now, base, &mut self.rng, &mut self.nodes, issuing);
            if let Err(v) = self.watchers.poll(now, &self.nodes) {
                self.violation.get_or_insert(v);
            }
            for i in 0..self.nodes.len() {
                if self.nodes[i].paused {
                    continue;
                }
                if let Some(core) = self.nodes[i].core.as_mut() {
                    core.step(at);
                    // The transport has senders for the members only.
                    let members = core.status().membership;
                    let sent = self.nodes[i].outbox.take_all();
                    for (config, msg) in sent.msgs {
                        if !members.contains(msg.get_receiver()) {
                            self.net.dropped += 1;
                            continue;
                        }
                        self.net.submit(&mut self.rng, now, config, msg);
                    }
                    for (to, note) in sent.notes {
                        if !members.contains(to) {
                            self.net.dropped += 1;
                            continue;
                        }
                        let packet = Packet::Note(note);
                        self.net
                            .submit_packet(&mut self.rng, now, i, idx(to), packet);
                    }
                    for from in sent.fetches {
                        self.start_fetch(i, from);
                    }
                    self.cut_power(i);
                }
            }
            self.observe()?;
            if faults && self.next_fault <= now {
                self.inject_fault();
                let gap = self.cfg.max_fault_gap.as_millis() as u64;
                self.next_fault =
                    now + Duration::from_millis(self.rng.gen_range(100..gap.max(101)));
            }
        }
    }

    /// One line per node: role, leader, decided and applied index (for failure reports).
    pub fn describe(&self) -> Vec<String> {
        let mut out = vec![format!(
            "at {:?}, configuration {} ({}):",
            self.now,
            self.config.config_id,
            self.config.describe()
        )];
        for (i, n) in self.nodes.iter().enumerate() {
            out.push(match &n.core {
                Some(c) => {
                    let s = c.status();
                    let d = n.durable.lock().unwrap();
                    let ballot = |b: Option<omnipaxos::ballot_leader_election::Ballot>| {
                        b.map(|b| (b.n, b.pid))
                    };
                    format!(
                        "node {}: {} (leader {:?}), decided {}, applied {}, promise {:?}, \
                         accepted round {:?}, log length {}",
                        i + 1,
                        s.role.as_str(),
                        s.leader,
                        s.decided_index,
                        s.applied_index,
                        ballot(d.log.get_promise().unwrap()),
                        ballot(d.log.get_accepted_round().unwrap()),
                        d.log.get_log_len().unwrap(),
                    )
                }
                None if n.retired => format!("node {}: stopped for good", i + 1),
                None if n.joining.is_some() => format!("node {}: joining", i + 1),
                None => format!("node {}: down", i + 1),
            });
        }
        out.extend(self.watchers.describe());
        out
    }

    /// All nodes up and at the same decided and applied index.
    /// All members of the newest configuration up, in it, and at the same decided and
    /// applied index.
    pub fn converged(&self) -> bool {
        let mut idx = self.final_members().into_iter().map(|i| {
            self.nodes.get(i)?.core.as_ref().map(|c| {
                let s = c.status();
                (s.membership.config_id, s.decided_index, s.applied_index)
            })
        });
        let first = idx.next().flatten();
        first.is_some_and(|(_, d, a)| d == a) && idx.all(|x| x == first)
    }
}
