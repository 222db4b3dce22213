//! Deterministic simulation (testing tier 2 of the design): several real node
//! [`Core`](crate::node::Core)s — OmniPaxos over an in-memory log, the KV state machine
//! over its memory backend, the same code the server runs — in one thread, over a
//! simulated network, in virtual time, driven by one seeded random generator.
//!
//! A run ([`run`]) has four phases:
//!
//! 1. **faults** (`fault_time`): clients issue operations while the nemesis drops,
//!    delays and reorders messages (FIFO per link, as TCP; `chaos` also duplicates and
//!    reorders within a link), partitions the network (full split,
//!    one-way, quorum-loss, constrained election, chained), crashes and restarts
//!    nodes — a process crash, or a machine crash that keeps a seeded prefix of the
//!    writes made since the last synced one, in order, as a power loss leaves RocksDB's
//!    one WAL (see `storage`) — and pauses and resumes them (as SIGSTOP/SIGCONT: a paused node takes no steps and
//!    fires no timers, keeps its state, and gets what arrived meanwhile when it resumes);
//!    and (with [`SimConfig::membership`], the default) adds, removes and replaces nodes
//!    through the nodes' own reconfiguration — a stop sign sealing the configuration, a
//!    new OmniPaxos instance, a fresh node joining by state transfer — while the other
//!    faults go on (see `world`);
//! 2. **heal**: every member up (nodes no longer members stay stopped), every link up, calm
//!    network; clients go on issuing for
//!    `live_time`, and each operation called now must complete within `liveness_bound`;
//! 3. **drain**: clients stop issuing; their operations finish;
//! 4. **quiesce**: run until every member of the newest configuration has decided and
//!    applied the same log.
//!
//! With a compaction policy ([`SimConfig::compaction`]; [`LogBudgetMix`]) the nodes trim their
//! logs as the server does, exchange progress notes over the simulated network, and a node
//! that falls behind a peer's trimmed log catches up by a simulated state transfer (see
//! `world`), so crashes and partitions hit nodes while they trim, send and install states.
//!
//! Clients issue puts, gets, CAS and deletes on register keys, appends on a set key, and
//! (odd seeds, [`SimConfig::multi_key`]) MSET, puts, versioned gets and prefix scans on
//! a two-key group (see `clients`). The KV clients and the SQL bank clients below run on
//! one client loop (`driver`: sessions, retries, giving up, the liveness bound), each with
//! its workload behind the driver's `Workload` trait.
//!
//! Every node also runs the SQL state machine beside its KV store, on the same log (real
//! SQLite in a per-run temporary directory; see `sql`): bank clients
//! ([`SimConfig::bank_clients`]) create a table of accounts with a known total, then
//! issue transfers (one SQL transaction each, with a ledger row naming it, through the
//! log with client sessions as KV writes) and linearizable total reads (see `bank`).
//! SQLite's commits are unsynced until a flush (`make_durable`) or an install, and a
//! machine crash keeps a seeded prefix of them independently of what RocksDB's WAL
//! keeps, so restarts find the two engines at different applied indexes (counted in
//! [`SqlStats`]). State transfers carry both states (`transfer::Transferable`).
//!
//! Checked: one decided log (every decided entry any node reports is compared, during the
//! run and pairwise at the end, over what the logs still hold; across configurations,
//! with each stop sign a slot of its own); no node's decided index goes back (across a machine
//! crash it may, because production does not fsync it — monotonicity is then checked
//! from the restored value on); after every machine crash, every decided entry still in
//! a majority of the durable logs ([`decided_durable`]: acknowledged writes are durable);
//! the final members' bytes equal after quiescence; liveness after healing (of the final
//! members); no node claims more of a round's log than that round's leader had
//! ([`AcceptedClaims`](checks::AcceptedClaims)); the set workload's appends neither lost
//! nor duplicated ([`set_valid`]); the client history linearizable per key
//! ([`crate::check`]), in exact real-time order (calls and returns are numbered events),
//! and across keys for multi-key operations, with versions (`check::group`: an MSET is
//! atomic, a scan sees one state, a version read is the one the model has).
//! For SQL: every total read and the final state hold the opening total, with balances
//! that agree with the ledger, every transfer acknowledged before the read and none
//! refused, and no ledger row twice (an unknown transfer applied at most once); the final
//! members' SQL states are equal (a digest of schema and rows); no node restarts with a
//! state machine behind the start of its log ([`Kind::StateBehindLog`]).
//! For watches (`watch`): two simulated watchers (every key; the register keys' prefix)
//! read a node's watch history every 50 ms of virtual time, as a gRPC watcher streams it,
//! and move to the next serving node, resuming from their next revision, when theirs is
//! down, paused or stopped (no events, no randomness: the schedule is unchanged). At the
//! end a final member's whole history is the reference: it has every revision from 1 to
//! the store's, replays to the store's data with versions, and holds every acknowledged
//! write (a put that reported its version at that revision); each watcher's stream is
//! exactly its filtered changes over the revisions it covered, in order, none missing,
//! none twice ([`Kind::Watch`]).
//! A campaign ([`Totals::report`], `paxosdb sim --seeds N`) counts every fault path:
//! crashes by kind (process; machine with nothing lost, all unsynced writes lost, or a
//! prefix kept), pauses, partitions per shape, dropped messages, state transfers, and the
//! changes the watchers received and their moves between nodes.
//! Each checker fails with its own [`Kind`] of [`Violation`].
//!
//! A failure reads `sim seed=<N> failed: <reason>`; `PAXOSDB_SIM_SEED=<N> cargo test
//! --features test-machinery --lib sim::tests::replay -- --ignored --nocapture` or
//! `paxosdb sim --seed <N>` replays it exactly.
//!
//! Test machinery: compiled only with the `test-machinery` cargo feature (as are
//! `crate::nemesis` and `crate::check`), so the shipped binary carries none of it.

/// Members 1..=n (the simulation's nodes have no addresses).
pub fn members(n: crate::command::NodeId) -> Vec<crate::config::Member> {
    (1..=n)
        .map(|id| crate::config::Member {
            id,
            addr: format!("sim-{id}"),
        })
        .collect()
}

pub mod bank;
mod checks;
mod clients;
mod driver;
mod net;
mod sql;
mod storage;
mod watch;
pub mod watch_check;
mod world;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod transfer_loop;
#[cfg(test)]
mod watch_tests;

pub use checks::{
    common_prefix, decided_durable, linearizable, replicas_equal, set_valid, DecidedMonotonic,
    Kind, LogOracle, Violation,
};
pub use net::{Shape, Weather};
pub use watch::WatchStats;
pub use world::ChangeCounts;

use crate::node::CompactionPolicy;

use std::hash::{Hash, Hasher};
use std::time::Duration;
use world::World;

/// A known bug to inject, to show that the checkers catch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    /// Node 1's log stores every put with a different value.
    TamperLog,
    /// Node 1's state machine skips a command now and then.
    SkipApply,
    /// Gets are served from the local store without a read barrier.
    StaleReads,
    /// Node 1's state is changed behind the state machine's back at apply time (a bogus
    /// element appended to the set key now and then), so that the final comparison has
    /// to find it after further operations, crashes and state transfers.
    DivergeState,
    /// Node 1's state is changed behind the state machine's back at apply time as with
    /// `DivergeState`, but only in a version: register key `k0` keeps its value and gets
    /// another version, which only a comparison that includes versions sees.
    DivergeVersion,
    /// Node 1 ignores every peer message: requests sent to it never complete.
    DeafNode,
    /// Node 1, after installing a fetched state, resets its log but keeps its old accepted
    /// round (the false claim the nemesis found; see `node::paxos`). Needs compaction.
    StaleAcceptedRound,
    /// No node syncs its log appends (the storage's fsync is a no-op for the accepted
    /// log), yet each acknowledges them (Accepted, and a leader counts itself): machine
    /// crashes then lose entries a quorum was told were stored (see `storage`).
    UnsyncedLog,
    /// Every node's state machine applies a multi-put as separate puts, each with its own
    /// version (`KvStore::split_multi_put`). Test builds only.
    #[cfg(test)]
    SplitMultiPut,
    /// Every node's state machine runs only the first operation of a transaction's branch
    /// (`KvStore::txn_first_only`): a transfer takes the money out of one account and
    /// puts it nowhere. Test builds only.
    #[cfg(test)]
    TxnFirstOpOnly,
    /// Every node's leader confirms its read rounds without any member's ack, at its
    /// decided index (a leader that a partition deposed goes on serving reads from its own
    /// state, see `node::reads`). Test builds only: the switch exists only there.
    #[cfg(test)]
    UnconfirmedReads,
    /// Every node's core sends its appends unsynced and never syncs them after (they
    /// become durable only with the node's next synced write), yet a leader counts them
    /// as its own accepts: an acknowledgement before a majority holds the entry durably.
    /// Test builds only.
    #[cfg(test)]
    SkipLogSync,
    /// Every node's state machine ignores sessions (`KvStore::no_dedup`): a retried or
    /// re-proposed write applies again. Test builds only: the switch exists only there.
    #[cfg(test)]
    NoDedup,
    /// A node that joins the cluster records a member's applied index and membership as
    /// its own instead of fetching and installing that member's state, and starts
    /// serving: a new member without the data. Needs membership changes.
    JoinWithoutState,
    /// Messages are delivered as if of the receiver's configuration (the transport drops
    /// its configuration tag): a node that missed a stop sign takes the next
    /// configuration's messages into its old instance. Needs membership changes.
    UntaggedMessages,
    /// The state machines' `make_durable` before a log trim does nothing (as if the core
    /// no longer called `Machines::make_durable` in `node::catchup`): the SQL store's
    /// unsynced commits are not flushed, so a machine crash can leave its state behind
    /// the trimmed log. Needs compaction.
    NoMakeDurable,
    /// Every node's SQL state machine gets commands without their session (the store's
    /// at-most-once check skipped): a retried or re-proposed transfer applies again.
    SqlNoDedup,
    /// Every node's watch history leaves out the changes of every revision divisible by
    /// 7 (`KvStore::history_gap`): watchers miss them. Test builds only: the switch
    /// exists only there.
    #[cfg(test)]
    HistoryGap,
    /// A node cut off from the majority answers the writes waiting on it "unavailable"
    /// (this attempt did nothing) instead of "outcome unknown", though they were proposed
    /// and may be decided by the majority: a client told its write certainly failed can
    /// see it applied. Test builds only: the switch exists only there.
    #[cfg(test)]
    GiveUpAsRefused,
}

/// How much log the simulated nodes keep, chosen per seed of a campaign (`--log-budget
/// off|tiny|mixed`); not the nemesis's [`crate::nemesis::LogBudget`], one budget for every
/// server of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogBudgetMix {
    /// No compaction.
    Off,
    /// A tiny budget for every seed ([`tiny_policy`]).
    Tiny,
    /// Tiny for half the seeds (`seed % 8 < 4`, which includes half the 5-node seeds of
    /// the default mix), off for the others.
    Mixed,
}

impl LogBudgetMix {
    /// The policy of `seed`'s run.
    pub fn policy(self, seed: u64) -> CompactionPolicy {
        match self {
            LogBudgetMix::Off => CompactionPolicy::OFF,
            LogBudgetMix::Tiny => tiny_policy(seed),
            LogBudgetMix::Mixed if seed % 8 < 4 => tiny_policy(seed),
            LogBudgetMix::Mixed => CompactionPolicy::OFF,
        }
    }
}

impl std::str::FromStr for LogBudgetMix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(LogBudgetMix::Off),
            "tiny" => Ok(LogBudgetMix::Tiny),
            "mixed" => Ok(LogBudgetMix::Mixed),
            _ => Err(format!("unknown log budget {s:?} (off, tiny or mixed)")),
        }
    }
}

/// A tiny log budget, varied by seed: trim in steps of 5 to 10 entries, keep 20 to 40
/// applied entries for laggards (and, for a third of the seeds, about 1 KiB of them), so a
/// node that is down or cut off for a moment falls behind its peers' trimmed logs.
pub fn tiny_policy(seed: u64) -> CompactionPolicy {
    let h = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32;
    CompactionPolicy {
        every_entries: 5 + h % 6,
        keep_entries: 20 + (h / 6) % 21,
        keep_bytes: if (h / 126).is_multiple_of(3) {
            1024
        } else {
            u64::MAX
        },
        // No transfer holds: the campaign's seeds replay as before (`transfer_loop` runs
        // seeds with holds).
        hold_bytes: 0,
        hold_for: std::time::Duration::ZERO,
        hold_silence: std::time::Duration::ZERO,
    }
}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub nodes: usize,
    pub clients: usize,
    pub keys: usize,
    pub fault_time: Duration,
    /// Longest gap between two nemesis actions (each gap is uniform in 100 ms..this).
    pub max_fault_gap: Duration,
    pub live_time: Duration,
    pub liveness_bound: Duration,
    /// Check the history for linearizability.
    pub linearizability: bool,
    /// Hash every delivered message into the trace hash (for determinism tests).
    pub trace: bool,
    /// Also duplicate and reorder messages on one link, which the production transport
    /// never does and OmniPaxos does not tolerate (see `net`).
    pub chaos: bool,
    pub bug: Option<Bug>,
    /// Log compaction of every node (`CompactionPolicy::OFF`: none).
    pub compaction: CompactionPolicy,
    /// The nemesis aims crashes at state transfers: when a transfer starts, the next
    /// fault comes before it ends, and a fault while a transfer is under way crashes its
    /// fetching or its sending node, in turn (a process or a machine crash).
    /// Without it, transfers (tens of ms) and faults (every 100 ms to seconds) almost
    /// never meet.
    pub crash_transfers: bool,
    /// The nemesis also changes the membership (adds, removes and replaces nodes; see
    /// `world`), through the nodes' own reconfiguration.
    pub membership: bool,
    /// Clients also issue the multi-key workload (MSET, versioned gets, scans; see
    /// `clients`).
    pub multi_key: bool,
    /// Bank clients issuing the SQL bank-transfer workload (see `bank`); 0: none.
    pub bank_clients: usize,
    /// Where the bank keeps its books: SQL tables, or keys changed by key-value
    /// transactions.
    pub bank_ledger: bank::Ledger,
    /// Some machine crashes of the leader are power cuts between the send of its appends
    /// and their fsync (see `storage`).
    pub power_cuts: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 3,
            clients: 4,
            keys: 3,
            fault_time: Duration::from_secs(5),
            max_fault_gap: Duration::from_secs(4),
            live_time: Duration::from_secs(2),
            liveness_bound: Duration::from_secs(10),
            linearizability: true,
            trace: false,
            chaos: false,
            bug: None,
            compaction: CompactionPolicy::OFF,
            crash_transfers: false,
            membership: true,
            multi_key: false,
            bank_clients: 2,
            bank_ledger: bank::Ledger::Sql,
            power_cuts: true,
        }
    }
}

impl SimConfig {
    /// The configuration of `seed` in a campaign (the CI test's and `paxosdb sim`'s): 3
    /// nodes, 5 for every fourth seed; the log budget's policy for the seed, and a busier
    /// nemesis (a fault every 100 ms to 1.5 s) when it trims, so that nodes fall behind
    /// the trimmed logs while faults go on, and crashes aimed at the state transfers
    /// ([`SimConfig::crash_transfers`]); the multi-key workload in odd seeds.
    pub fn for_seed(seed: u64, budget: LogBudgetMix) -> SimConfig {
        let compaction = budget.policy(seed);
        let compacting = compaction != CompactionPolicy::OFF;
        SimConfig {
            nodes: if seed % 4 == 3 { 5 } else { 3 },
            compaction,
            max_fault_gap: Duration::from_millis(if compacting { 1500 } else { 4000 }),
            crash_transfers: compacting,
            multi_key: seed % 2 == 1,
            ..SimConfig::default()
        }
    }
}

/// The figures of one run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    pub seed: u64,
    /// Operations recorded in the history.
    pub ops: usize,
    pub ok: usize,
    pub info: usize,
    pub fail: usize,
    /// Operations the linearizability checker examined (0 when skipped).
    pub checked: usize,
    pub faults: u64,
    pub crashes: u64,
    pub partitions: u64,
    /// Client attempts that got no answer (timeouts, crashed nodes).
    pub lost_attempts: u64,
    pub messages: u64,
    pub dropped: u64,
    pub duplicated: u64,
    /// Length of the decided log.
    pub decided: u64,
    /// State fetches started, installed and failed.
    pub fetches: u64,
    pub fetched: u64,
    pub fetch_failures: u64,
    /// Fetched states the nodes installed (`install_staged`, counted by the store).
    pub installs: u64,
    /// Transfers under way cut by a crash of the fetching node, and of the sending node.
    pub fetcher_crashes: u64,
    pub sender_crashes: u64,
    /// Machine crashes, and those that dropped a write not yet synced.
    pub machine_crashes: u64,
    pub lossy_machine_crashes: u64,
    /// Lossy machine crashes that kept a prefix of the unsynced writes (not none).
    pub partial_machine_crashes: u64,
    /// Machine crashes of a leader between the send of its appends and their fsync.
    pub cuts_before_sync: u64,
    /// Pauses of a node (it stops taking steps and keeps its state, then resumes).
    pub pauses: u64,
    /// Partitions per shape (`Shape`'s debug name).
    pub partition_shapes: std::collections::BTreeMap<String, u64>,
    /// Highest compacted index of any node at the end.
    pub compacted: u64,
    pub virtual_ms: u64,
    /// Hash of the history, the decided log and (with `trace`) every delivered message.
    pub trace_hash: u64,
    /// Membership changes proposed, and those that took effect by kind.
    pub membership: ChangeCounts,
    /// What the nemesis did, with virtual times.
    pub fault_log: Vec<String>,
    /// The SQL figures of the run.
    pub sql: SqlStats,
    /// The watchers' figures of the run.
    pub watch: WatchStats,
}

/// The SQL figures of a run (or, added up, of a campaign).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SqlStats {
    /// Bank transfers acknowledged, with an unknown outcome, refused.
    pub transfers_acked: u64,
    pub transfers_unknown: u64,
    pub transfers_failed: u64,
    /// Unknown transfers found applied at the end (once).
    pub unknown_applied: u64,
    /// Total reads that returned (each checked).
    pub total_reads: u64,
    /// Restarts that found the KV and SQL engines at different applied indexes, and of
    /// those, the ones with SQL ahead (a crash between the two engines' commits kept the
    /// SQL commit and lost the KV one).
    pub engines_apart: u64,
    pub sql_ahead: u64,
    /// Machine crashes that lost a SQL commit of an entry whose KV commit survived.
    pub sql_behind_kv: u64,
    /// Machine crashes that lost unsynced SQL commits.
    pub sql_lossy_crashes: u64,
    /// SQL states installed from a state transfer that held SQL data (applied index > 0).
    pub sql_installs: u64,
}

impl SqlStats {
    pub fn add(&mut self, o: &SqlStats) {
        self.transfers_acked += o.transfers_acked;
        self.transfers_unknown += o.transfers_unknown;
        self.transfers_failed += o.transfers_failed;
        self.unknown_applied += o.unknown_applied;
        self.total_reads += o.total_reads;
        self.engines_apart += o.engines_apart;
        self.sql_ahead += o.sql_ahead;
        self.sql_behind_kv += o.sql_behind_kv;
        self.sql_lossy_crashes += o.sql_lossy_crashes;
        self.sql_installs += o.sql_installs;
    }

    fn report(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("SQL transfers acknowledged", self.transfers_acked),
            ("SQL transfers with unknown outcome", self.transfers_unknown),
            (
                "of those, found applied (once) at the end",
                self.unknown_applied,
            ),
            ("SQL transfers refused", self.transfers_failed),
            ("SQL total reads checked", self.total_reads),
            (
                "restarts with the KV and SQL applied indexes apart",
                self.engines_apart,
            ),
            ("of those, with SQL ahead of KV", self.sql_ahead),
            (
                "machine crashes losing a SQL commit whose KV commit survived",
                self.sql_behind_kv,
            ),
            (
                "machine crashes losing unsynced SQL commits",
                self.sql_lossy_crashes,
            ),
            (
                "SQL states installed by a state transfer",
                self.sql_installs,
            ),
        ]
    }
}

/// The figures of many runs added up: what a campaign covered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub seeds: u64,
    pub ops: usize,
    pub checked: usize,
    /// Operations whose outcome stayed unknown (timed out, node crashed).
    pub info: usize,
    pub faults: u64,
    pub crashes: u64,
    pub machine_crashes: u64,
    /// Machine crashes that dropped a write not yet synced.
    pub lossy_machine_crashes: u64,
    pub pauses: u64,
    pub partitions: u64,
    pub lost_attempts: u64,
    /// Runs in which some node trimmed its log.
    pub trimmed_runs: u64,
    pub fetches: u64,
    pub fetched: u64,
    pub fetch_failures: u64,
    pub installs: u64,
    /// Transfers under way cut by a crash of the fetching node, and of the sending node.
    pub fetcher_crashes: u64,
    pub sender_crashes: u64,
    /// Membership changes proposed, and those that took effect by kind.
    pub membership: ChangeCounts,
    /// Lossy machine crashes that kept a prefix of the unsynced writes.
    pub partial_machine_crashes: u64,
    /// Machine crashes of a leader between the send of its appends and their fsync.
    pub cuts_before_sync: u64,
    /// Partitions per shape.
    pub partition_shapes: std::collections::BTreeMap<String, u64>,
    /// Messages sent, dropped and duplicated by the network.
    pub messages: u64,
    pub dropped: u64,
    pub duplicated: u64,
    /// The SQL figures.
    pub sql: SqlStats,
    /// The watchers' figures.
    pub watch: WatchStats,
}

impl Totals {
    /// The campaign report: one named count per line, per fault path (a new counter is
    /// one more line here).
    pub fn report(&self) -> Vec<(String, u64)> {
        let mut lines: Vec<(String, u64)> = [
            ("seeds passed", self.seeds),
            ("operations recorded", self.ops as u64),
            (
                "operations checked for linearizability",
                self.checked as u64,
            ),
            ("operations with unknown outcome", self.info as u64),
            ("client attempts lost", self.lost_attempts),
            ("faults injected", self.faults),
            ("crashes: process", self.crashes - self.machine_crashes),
            (
                "crashes: machine, no unsynced write lost",
                self.machine_crashes - self.lossy_machine_crashes,
            ),
            (
                "crashes: machine, all unsynced writes lost",
                self.lossy_machine_crashes - self.partial_machine_crashes,
            ),
            (
                "crashes: machine, a prefix of the unsynced writes kept",
                self.partial_machine_crashes,
            ),
            (
                "crashes: machine, a leader between sending appends and syncing them",
                self.cuts_before_sync,
            ),
            ("pauses", self.pauses),
            ("partitions", self.partitions),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for (shape, n) in &self.partition_shapes {
            lines.push((format!("partitions: {shape}"), *n));
        }
        lines.extend(
            [
                ("messages sent", self.messages),
                ("messages dropped", self.dropped),
                ("messages duplicated", self.duplicated),
                ("runs with trimmed logs", self.trimmed_runs),
                ("state transfers started", self.fetches),
                ("state transfers completed", self.fetched),
                ("state transfers installed", self.installs),
                ("state transfers failed", self.fetch_failures),
                (
                    "state transfers cut by a crash of the fetcher",
                    self.fetcher_crashes,
                ),
                (
                    "state transfers cut by a crash of the sender",
                    self.sender_crashes,
                ),
                ("membership changes proposed", self.membership.proposed),
                ("membership: a node added", self.membership.added),
                ("membership: a node removed", self.membership.removed),
                ("membership: a node replaced", self.membership.replaced),
                (
                    "membership changes during a crash",
                    self.membership.during_crash,
                ),
                (
                    "membership changes during a partition",
                    self.membership.during_partition,
                ),
                (
                    "membership changes during a pause",
                    self.membership.during_pause,
                ),
                (
                    "membership changes acknowledged to the caller",
                    self.membership.acknowledged,
                ),
                (
                    "membership changes with an unknown outcome",
                    self.membership.unknown,
                ),
                (
                    "membership changes proposed through a follower",
                    self.membership.via_follower,
                ),
                (
                    "of those, acknowledged to the caller",
                    self.membership.via_follower_acknowledged,
                ),
            ]
            .into_iter()
            .chain(self.sql.report())
            .chain(self.watch.report())
            .map(|(k, v)| (k.to_string(), v)),
        );
        lines
    }

    pub fn add(&mut self, s: &RunStats) {
        self.seeds += 1;
        self.ops += s.ops;
        self.checked += s.checked;
        self.info += s.info;
        self.faults += s.faults;
        self.crashes += s.crashes;
        self.machine_crashes += s.machine_crashes;
        self.lossy_machine_crashes += s.lossy_machine_crashes;
        self.pauses += s.pauses;
        self.partitions += s.partitions;
        self.lost_attempts += s.lost_attempts;
        self.trimmed_runs += u64::from(s.compacted > 0);
        self.fetches += s.fetches;
        self.fetched += s.fetched;
        self.fetch_failures += s.fetch_failures;
        self.installs += s.installs;
        self.fetcher_crashes += s.fetcher_crashes;
        self.sender_crashes += s.sender_crashes;
        self.membership.add(&s.membership);
        self.partial_machine_crashes += s.partial_machine_crashes;
        self.cuts_before_sync += s.cuts_before_sync;
        for (shape, n) in &s.partition_shapes {
            *self.partition_shapes.entry(shape.clone()).or_default() += n;
        }
        self.messages += s.messages;
        self.dropped += s.dropped;
        self.duplicated += s.duplicated;
        self.sql.add(&s.sql);
        self.watch.add(&s.watch);
    }
}

impl std::fmt::Display for Totals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} seeds, {} operations ({} checked, {} with unknown outcome), {} faults ({} \
             crashes, {} of them machine crashes, {} losing unsynced writes, {} keeping a \
             prefix of them, {} cutting a leader's power between send and sync; {} pauses; \
             {} partitions), \
             {} client attempts lost, {} runs with trimmed logs, {} state fetches ({} \
             completed, {} installed, {} failed; {} cut by a crash of the fetcher, {} by a \
             crash of the sender)",
            self.seeds,
            self.ops,
            self.checked,
            self.info,
            self.faults,
            self.crashes,
            self.machine_crashes,
            self.lossy_machine_crashes,
            self.partial_machine_crashes,
            self.cuts_before_sync,
            self.pauses,
            self.partitions,
            self.lost_attempts,
            self.trimmed_runs,
            self.fetches,
            self.fetched,
            self.installs,
            self.fetch_failures,
            self.fetcher_crashes,
            self.sender_crashes,
        )?;
        let m = &self.membership;
        write!(
            f,
            ", {} membership changes proposed ({} added a node, {} removed one, {} replaced \
             one; {} during a crash, {} during a partition, {} during a pause)",
            m.proposed,
            m.added,
            m.removed,
            m.replaced,
            m.during_crash,
            m.during_partition,
            m.during_pause
        )?;
        write!(f, ", SQL: {}, watchers: {}", self.sql, self.watch)
    }
}

impl std::fmt::Display for SqlStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} transfers acknowledged, {} unknown ({} of them applied), {} total reads, {} \
             restarts with the engines apart ({} with SQL ahead), {} machine crashes losing a \
             SQL commit whose KV commit survived",
            self.transfers_acked,
            self.transfers_unknown,
            self.unknown_applied,
            self.total_reads,
            self.engines_apart,
            self.sql_ahead,
            self.sql_behind_kv
        )
    }
}

/// A failed run.
#[derive(Clone, Debug)]
pub struct Failure {
    pub seed: u64,
    /// Which checker failed.
    pub kind: Kind,
    /// Its message.
    pub reason: String,
    /// The nemesis' actions up to the failure.
    pub faults: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sim seed={} failed: {}", self.seed, self.reason)
    }
}

/// Runs one seed and checks it.
pub fn run(seed: u64, cfg: &SimConfig) -> Result<RunStats, Failure> {
    let mut w = World::new(seed, cfg.clone());
    // OmniPaxos' own assertions panic: report them as this seed's failure.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| phases(&mut w)))
        .unwrap_or_else(|p| {
            let what = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(Violation::new(Kind::Panic, format!("panicked: {what}")))
        });
    result.map(|s| RunStats { seed, ..s }).map_err(|v| {
        let mut faults = std::mem::take(&mut w.fault_log);
        faults.extend(w.describe());
        Failure {
            seed,
            kind: v.kind,
            reason: v.message,
            faults,
        }
    })
}

fn phases(w: &mut World) -> Result<RunStats, Violation> {
    let liveness = |m: String| Violation::new(Kind::Liveness, format!("liveness: {m}"));
    let cfg = w.cfg.clone();
    w.run_until(cfg.fault_time, true, true, |_| false)?;
    w.heal();
    w.clients.live_from = Some(w.now);
    w.bank.live_from = Some(w.now);
    w.run_until(w.now + cfg.live_time, false, true, |_| false)?;
    let end = w.now + cfg.liveness_bound + Duration::from_secs(1);
    w.run_until(end, false, false, |w| !w.clients.busy() && !w.bank.busy())?;
    if let Some(complaint) = w.clients.close(w.now) {
        return Err(liveness(complaint));
    }
    if let Some(complaint) = w.bank.close(w.now) {
        return Err(liveness(complaint));
    }
    if let Some(v) = w.clients.liveness_violation.take() {
        return Err(liveness(v));
    }
    if let Some(v) = w.bank.liveness_violation.take() {
        return Err(liveness(v));
    }
    let end = w.now + Duration::from_secs(30);
    if !w.run_until(end, false, false, World::converged)? {
        return Err(liveness(
            "the replicas did not converge within 30 s after healing".into(),
        ));
    }
    final_checks(w)
}

/// Partitions per shape, from the nemesis' log ("partition <Shape> (leader ...)").
fn partition_shapes(fault_log: &[String]) -> std::collections::BTreeMap<String, u64> {
    let mut shapes = std::collections::BTreeMap::new();
    for line in fault_log {
        if let Some((_, rest)) = line.split_once(": partition ") {
            let shape = rest.split(' ').next().unwrap_or_default().to_string();
            *shapes.entry(shape).or_default() += 1;
        }
    }
    shapes
}

fn final_checks(w: &mut World) -> Result<RunStats, Violation> {
    let mut logs = Vec::new();
    let mut states = Vec::new();
    let mut compacted = 0;
    // The members of the final configuration (removed nodes are stopped).
    let members = w.final_members();
    for &i in &members {
        let node = &w.nodes[i];
        let core = node
            .core
            .as_ref()
            .expect("all members are up after healing");
        let s = core.status();
        let entries = core.decided_entries(s.compacted_index, s.decided_index);
        compacted = compacted.max(s.compacted_index);
        logs.push((i as u64 + 1, s.compacted_index, entries));
        let spaces = node.durable.lock().unwrap().kv.read().unwrap().clone();
        states.push((i as u64 + 1, spaces));
    }
    common_prefix(&logs)?;
    replicas_equal(&states)?;
    let sql = sql_final_checks(w, &members)?;
    let history = &w.clients.workload.history;
    // The replicas are equal: the set keys' final values are node 1's.
    let reader = w.nodes[members[0]]
        .kv
        .as_ref()
        .expect("all nodes are up after healing");
    let finals = clients::Kv::set_keys()
        .into_iter()
        .map(|k| {
            let (v, _) = reader.get(&k).expect("memory reads do not fail");
            (k, v.map(|v| v.value))
        })
        .collect();
    set_valid(history, &finals)?;
    let checked = if w.cfg.linearizability {
        linearizable(history, crate::check::DEFAULT_BUDGET)?
    } else {
        0
    };
    // Last, so that a bug another checker is there for is reported by that checker.
    let watch = watch::check(&mut w.watchers, w.now, &w.nodes, members[0], history)?;
    let mut h = std::mem::take(&mut w.trace);
    for op in history {
        (op.client, &op.key, op.call, op.ret).hash(&mut h);
        format!("{:?}{:?}", op.input, op.outcome).hash(&mut h);
    }
    format!("{:?}", logs[0]).hash(&mut h);
    format!("{:?}", w.bank.workload.fates).hash(&mut h);
    (w.bank.workload.reads, &sql).hash(&mut h);
    let count = |o: fn(&crate::check::Outcome) -> bool| w.clients.workload.count(o);
    use crate::check::Outcome;
    Ok(RunStats {
        seed: 0,
        ops: history.len(),
        ok: count(|o| matches!(o, Outcome::Ok(_))),
        info: count(|o| *o == Outcome::Info),
        fail: count(|o| *o == Outcome::Fail),
        checked,
        faults: w.faults,
        crashes: w.fault_log.iter().filter(|l| l.contains(": crash")).count() as u64,
        partitions: w
            .fault_log
            .iter()
            .filter(|l| l.contains(": partition"))
            .count() as u64,
        lost_attempts: w.clients.lost_attempts,
        messages: w.net.sent,
        dropped: w.net.dropped,
        duplicated: w.net.duplicated,
        decided: w.oracle.len() as u64,
        fetches: w.fetches,
        fetched: w.fetched,
        fetch_failures: w.fetch_failures,
        installs: w
            .nodes
            .iter()
            .map(|n| n.durable.lock().unwrap().installs)
            .sum(),
        fetcher_crashes: w.fetcher_crashes,
        sender_crashes: w.sender_crashes,
        machine_crashes: w.machine_crashes,
        lossy_machine_crashes: w.lossy_machine_crashes,
        partial_machine_crashes: w.partial_machine_crashes,
        cuts_before_sync: w.cuts_before_sync,
        pauses: w.pauses,
        membership: w.change_counts.clone(),
        partition_shapes: partition_shapes(&w.fault_log),
        compacted,
        virtual_ms: w.now.as_millis() as u64,
        trace_hash: h.finish(),
        fault_log: w.fault_log.clone(),
        sql,
        watch,
    })
}

/// The SQL side of the final checks: the final members' SQL states equal (a digest of
/// the schema and every row, `sql::store`'s), and the bank's books right on them.
fn sql_final_checks(w: &World, members: &[usize]) -> Result<SqlStats, Violation> {
    let mut first: Option<(usize, u64)> = None;
    for &i in members {
        let reader = w.nodes[i]
            .sql
            .as_ref()
            .expect("all members are up after healing");
        let d = sql::digest(reader)
            .map_err(|e| Violation::new(Kind::ReplicasDiffer, format!("SQL digest: {e}")))?;
        match first {
            None => first = Some((i, d)),
            Some((j, dj)) if dj != d => {
                return Err(Violation::new(
                    Kind::ReplicasDiffer,
                    format!(
                        "the SQL state of node {} differs from node {}'s (digest {d:#x} vs \
                         {dj:#x})",
                        i + 1,
                        j + 1
                    ),
                ))
            }
            Some(_) => {}
        }
    }
    let bank = &w.bank.workload;
    let mut unknown_applied = 0;
    if bank.fates.values().any(|(_, f)| *f != bank::Fate::Failed) || bank.reads > 0 {
        let books = (bank.books(&w.nodes[members[0]]))
            .expect("all members are up after healing")
            .map_err(|e| Violation::new(Kind::BankTotal, format!("bank: final read: {e}")))?;
        bank.check_books(&books, None).map_err(|v| Violation {
            message: format!("{} (final state)", v.message),
            ..v
        })?;
        let tids: std::collections::BTreeSet<i64> = books.ledger.iter().map(|r| r[0]).collect();
        unknown_applied = (bank.fates.iter())
            .filter(|(tid, (_, f))| *f == bank::Fate::Unknown && tids.contains(tid))
            .count() as u64;
    }
    Ok(SqlStats {
        transfers_acked: bank.count(|f| matches!(f, bank::Fate::Acked(_))),
        transfers_unknown: bank.count(|f| *f == bank::Fate::Unknown),
        transfers_failed: bank.count(|f| *f == bank::Fate::Failed),
        unknown_applied,
        total_reads: bank.reads,
        engines_apart: w.engines_apart,
        sql_ahead: w.sql_ahead,
        sql_behind_kv: w.sql_behind_kv,
        sql_lossy_crashes: w.sql_lossy_crashes,
        sql_installs: (w.nodes.iter())
            .map(|n| n.sql_disk.lock().unwrap().installs)
            .sum(),
    })
}
