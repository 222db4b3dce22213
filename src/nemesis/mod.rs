//! The real-process fault tester (Jepsen-style): `paxosdb nemesis`. Test machinery:
//! compiled only with the `test-machinery` cargo feature.
//!
//! [`run`] starts a 3- or 5-node cluster of the `paxosdb` binary on loopback (node `i` on
//! `127.0.0.i`, see [`cluster`]), runs concurrent clients that record every operation
//! ([`workload`]) — each worker speaks one protocol, gRPC, HTTP (`/v1/kv`) or RESP, dealt
//! in turn ([`clients`], which also says how each protocol's answers become ok, fail or
//! unknown) — and meanwhile injects faults ([`faults`]): `kill -9` and restart,
//! SIGSTOP/SIGCONT, iptables partitions ([`firewall`]; skipped with a printed reason
//! when not root or without iptables), membership changes ([`membership`]: a member
//! replaced by a fresh node, or removed and a fresh node added), and, with the tiny log
//! budget, faults aimed at state transfers ([`transfer_faults`]: the node sending a state
//! killed or paused mid-stream, a follower paused until the others trimmed their logs
//! past it and then required to catch up by a state transfer; each counts only when it
//! landed there). Each fault lasts `fault_duration`, then everything heals for
//! `heal_duration`; when several families are enabled, a round sometimes combines two
//! faults (a membership change with a kill, a pause or a partition that lands during the
//! change; a transfer fault always runs alone). Every nemesis event is logged
//! with its time. Nodes added at run time join the cluster the nemesis drives: clients,
//! heals, fault targets, final reads and the replica comparison use the current members.
//!
//! Beside the key-value workers, [`Options::sql_clients`] workers (2 by default) run the
//! SQL bank workload ([`bank`]): transfers between accounts as SQL transactions in
//! sessions, over gRPC `paxosdb.v1.Sql` and rqlite's HTTP API, with linearizable reads
//! and stale reads of random members, all under the same faults (a kill of the leader
//! lands during SQL writes, a replaced or new member catches up the SQL state with the
//! key-value state by a state transfer).
//!
//! Beside them, [`Options::kv_bank_clients`] workers (none by default) run the same bank
//! on the key-value store ([`kv_bank`]): accounts and ledger rows are keys, each transfer
//! an optimistic pair of gRPC transactions (read both balances; then, if both versions
//! still hold, put both balances and the ledger row), each total read one linearizable
//! scan of the books (or one read-only transaction of ranges), checked by the SQL bank's
//! checker.
//!
//! With [`Options::watchers`] (none by default), watchers follow the key-value
//! workload's keys through the faults ([`watch`]): raw gRPC watch streams resumed on the
//! next member when they break, and the Rust client's resuming watch.
//!
//! At the end all faults are healed, the cluster must become healthy, and then:
//! - the history is checked for linearizability per key ([`crate::check::check`]);
//! - the set workload's final linearizable reads must hold every acknowledged element
//!   exactly once ([`workload::check_set`]);
//! - every replica (of the final members) must reach the same applied index and hold the
//!   same value and the same version for every key the run touched;
//! - the SQL bank must hold its total in every read, and every final member the same
//!   accounts and ledger, with each committed transfer exactly once, each unknown one at
//!   most once, and balances that follow the ledger ([`bank::check`]); the key-value bank
//!   the same, in every read and on every final member ([`kv_bank::check`]);
//! - with watchers, one final member's whole watch history must hold every revision and
//!   replay to its data, hold every acknowledged key-value write, and be, for the watched
//!   keys, exactly every watcher's stream over the revisions it covered ([`watch`]);
//! - every membership change must be resolved (applied or not), and none answered with
//!   an error may have happened;
//! - no node process may have exited by itself (a panic, an abort) at any time: such a
//!   node is noted as a crash when the nemesis next looks, restarted by the next heal, and
//!   makes the run invalid;
//! - every enabled protocol's workers got at least one answer (the summary counts
//!   operations per protocol; the SQL workers' protocols count as `sql/grpc` and
//!   `sql/http`); a protocol that ran nothing makes the run incomplete.
//!
//! With [`LogBudget::Tiny`] (`--log-budget tiny`) every server trims its log in steps of 10
//! entries and keeps at most 40 applied entries for laggards, so a node that is killed,
//! paused or cut off for a moment falls behind the others' compacted logs and catches up
//! by a state transfer: the faults then hit nodes while they trim and while they send or
//! install states. The summary counts the state transfers the node logs show
//! ([`StateTransfers`]) under either budget.
//!
//! A run lasts `time_limit`, or with [`Options::min_each`] until every enabled fault was
//! injected that many times (for a transfer fault: landed where it aims; a miss is
//! reported and does not count), the time limit then being a cap: a run that hits the cap
//! first, or in which a fault could not be injected (a kill or pause that failed, a
//! firewall rule refused, a follower that did not catch up by a state transfer after the
//! others trimmed past it), is reported incomplete ([`Summary::is_complete`]) and fails
//! the command like a violation, because it did not test what it says it did.
//!
//! A violation keeps the run directory (node logs and data) and writes `violation.json`
//! there with the offending per-key histories (and either bank's transfers and reads when
//! its checks failed).

pub mod bank;
pub mod clients;
pub mod cluster;
pub mod faults;
pub mod firewall;
pub mod kv_bank;
pub mod membership;
pub mod transfer_faults;
pub mod watch;
pub mod workload;

use crate::check::{self, Input, Operation, Outcome, Output, Report};
use crate::client::Client;
use crate::error::{Error, Result};
use bank::{BankLog, BankReport, SqlProtocol};
use clients::{Protocol, Timeouts};
use cluster::ProcCluster;
use faults::{Family, Fault};
use firewall::Firewall;
use kv_bank::{KvBankLog, KvBankReport};
use membership::MembershipStats;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use workload::{Element, Endpoints, OpCounts, SetReport, Shared, WorkerClient};

/// Which workload the clients run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Workload {
    Register,
    Set,
}

impl std::str::FromStr for Workload {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "register" => Ok(Workload::Register),
            "set" => Ok(Workload::Set),
            _ => Err(format!("unknown workload {s:?} (register or set)")),
        }
    }
}

/// How much log the servers keep: the compaction settings every node of a run gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogBudget {
    /// The servers' defaults (trim in steps of 1000 entries, keep 100000 for laggards):
    /// a short run never trims far enough to need a state transfer.
    #[default]
    Default,
    /// Trim in steps of 10 entries and keep at most 40 for laggards, so that a node killed,
    /// paused or cut off for a moment falls behind the others' logs and must catch up by a
    /// state transfer, and faults hit nodes while they trim and while they send or install
    /// states.
    Tiny,
}

impl LogBudget {
    /// The environment that sets this budget on a server (empty: the defaults).
    pub fn env(self) -> &'static [(&'static str, &'static str)] {
        match self {
            LogBudget::Default => &[],
            LogBudget::Tiny => &[
                ("PAXOSDB_COMPACT_EVERY_ENTRIES", "10"),
                ("PAXOSDB_LOG_KEEP_ENTRIES", "40"),
            ],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            LogBudget::Default => "default",
            LogBudget::Tiny => "tiny",
        }
    }
}

impl std::str::FromStr for LogBudget {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "default" => Ok(LogBudget::Default),
            "tiny" => Ok(LogBudget::Tiny),
            _ => Err(format!("unknown log budget {s:?} (tiny or default)")),
        }
    }
}

/// State transfers seen in the node logs of a run (see [`count_state_transfers`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateTransfers {
    /// A node found itself behind a peer's compacted log and began fetching its state.
    pub started: usize,
    /// A fetched state was installed.
    pub installed: usize,
    /// A fetch or an install failed (the node retries when asked again). Transfers cut
    /// short by a kill leave no line: they are `started - installed - failed`.
    pub failed: usize,
    /// A node finished sending its state to a peer.
    pub sent: usize,
}

/// Counts the state transfer lines in every `node-*.log` under `run_dir`.
pub fn count_state_transfers(run_dir: &std::path::Path) -> StateTransfers {
    let mut t = StateTransfers::default();
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return t;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with("node-") && name.ends_with(".log")) {
            continue;
        }
        let Ok(bytes) = std::fs::read(e.path()) else {
            continue;
        };
        for line in String::from_utf8_lossy(&bytes).lines() {
            if line.contains("fetching its state") {
                t.started += 1;
            } else if line.contains("state installed") {
                t.installed += 1;
            } else if line.contains("state transfer failed") {
                // A failed fetch logs "state fetch failed" and then this line too.
                t.failed += 1;
            } else if line.contains("state sent to a peer") {
                t.sent += 1;
            }
        }
    }
    t
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// The `paxosdb` binary the nodes run.
    pub binary: PathBuf,
    pub nodes: usize,
    pub clients: usize,
    pub time_limit: Duration,
    /// Stop after this many operations (0 = only the time limit).
    pub op_limit: u64,
    pub seed: u64,
    pub workload: Workload,
    pub faults: BTreeSet<Fault>,
    /// How long each fault lasts.
    pub fault_duration: Duration,
    /// How long the cluster runs healed between faults.
    pub heal_duration: Duration,
    /// Client timeout per operation (retries included); then the outcome is unknown.
    pub op_timeout: Duration,
    /// Where run directories go (default: the system temp dir).
    pub dir: Option<PathBuf>,
    /// Keep the run directory even when the run passes.
    pub keep: bool,
    /// Print nemesis events as they happen.
    pub verbose: bool,
    /// Deliberately unsafe stale (local) reads in the workload, to show the checker
    /// catches them. The final reads stay linearizable.
    pub stale_reads: bool,
    /// The servers' log compaction settings.
    pub log_budget: LogBudget,
    /// Go on until every enabled fault has been injected at least this many times, then
    /// stop (0: run for `time_limit`). With it, `time_limit` is only a cap: a run that
    /// reaches it first is incomplete ([`Summary::short_of_target`]).
    pub min_each: usize,
    /// The client protocols the workers speak, dealt to the workers in turn (at least
    /// one worker each).
    pub protocols: Vec<Protocol>,
    /// Workers of the SQL bank workload ([`bank`]), beside the `clients` key-value
    /// workers, dealt gRPC and HTTP in turn (0: no SQL workload).
    pub sql_clients: usize,
    /// Test-only: after the final convergence, change one node's SQL database behind its
    /// back, so that the bank's final checks must fail ([`bank::Tamper`]).
    pub sql_tamper: Option<bank::Tamper>,
    /// Workers of the key-value bank workload ([`kv_bank`]), beside the others (0: none).
    pub kv_bank_clients: usize,
    /// Watchers of the key-value workload's keys through the faults ([`watch`]), checked
    /// at the end against the cluster's history (0: none).
    pub watchers: usize,
}

impl Options {
    pub fn new(binary: PathBuf) -> Options {
        Options {
            binary,
            nodes: 3,
            clients: 5,
            time_limit: Duration::from_secs(60),
            op_limit: 0,
            seed: 0,
            workload: Workload::Register,
            faults: Fault::all().collect(),
            fault_duration: Duration::from_secs(4),
            heal_duration: Duration::from_secs(3),
            op_timeout: Duration::from_secs(3),
            dir: None,
            keep: false,
            verbose: true,
            stale_reads: false,
            log_budget: LogBudget::Default,
            min_each: 0,
            protocols: Protocol::ALL.to_vec(),
            sql_clients: 2,
            sql_tamper: None,
            kv_bank_clients: 0,
            watchers: 0,
        }
    }
}

/// One thing the nemesis did (a record of the run, not a node core's [`crate::node::Event`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NemesisEvent {
    /// Seconds since the start of the run.
    pub at: f64,
    /// The fault name, or "heal".
    pub kind: String,
    pub detail: String,
}

/// Everything a run found out.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    pub seed: u64,
    pub nodes: usize,
    pub clients: usize,
    pub workload: Workload,
    #[serde(default)]
    pub log_budget: LogBudget,
    pub elapsed: f64,
    pub ops: usize,
    pub ok: usize,
    pub fail: usize,
    pub info: usize,
    /// The workers' operations by protocol (`grpc`, `http`, `resp`); the set keys'
    /// creation and the final reads (gRPC) are not in it.
    #[serde(default)]
    pub per_protocol: BTreeMap<String, OpCounts>,
    /// Enabled protocols whose workers got no answer at all (no `ok` operation): the run
    /// did not test them, and is incomplete.
    #[serde(default)]
    pub protocols_unexercised: Vec<String>,
    pub events: Vec<NemesisEvent>,
    /// Faults injected, by name.
    pub injected: BTreeMap<String, usize>,
    /// Nemesis families not run, with the reason.
    pub skipped: Vec<String>,
    pub linearizability: Option<Report>,
    /// Why the checker gave no report (it failed).
    pub check_error: Option<String>,
    pub set: Option<SetReport>,
    /// The SQL bank workload's verdict (None: it did not run).
    #[serde(default)]
    pub bank: Option<BankReport>,
    /// The key-value bank workload's verdict (None: it did not run).
    #[serde(default)]
    pub kv_bank: Option<KvBankReport>,
    /// The watchers' verdict (None: none ran).
    #[serde(default)]
    pub watch: Option<watch::WatchReport>,
    /// Replicas that disagree after healing (empty = converged).
    pub divergence: Vec<String>,
    /// Nodes whose process exited by itself during the run (a panic, an abort), with the
    /// time and exit status; each was restarted, and each makes the run invalid.
    #[serde(default)]
    pub crashes: Vec<String>,
    /// State transfers the nodes logged during the run.
    #[serde(default)]
    pub state_transfers: StateTransfers,
    /// Membership changes made by the membership nemesis.
    #[serde(default)]
    pub membership: MembershipStats,
    /// Faults that could not be injected as meant (a kill of a node that was not running,
    /// a signal or a firewall rule that failed, a membership change not sent), with why.
    /// Each makes the run incomplete: it did not test what it says.
    #[serde(default)]
    pub injection_errors: Vec<String>,
    /// Transfer-family faults that ran but did not land where they aim (the transfer had
    /// ended before the sender was hit, or none began in time): not counted as injected.
    #[serde(default)]
    pub transfer_missed: Vec<String>,
    /// [`Options::min_each`] of the run (0: it ran for its time limit).
    #[serde(default)]
    pub min_each: usize,
    /// With `min_each`: each fault injected fewer times than that before the run hit its
    /// cap (the time limit), with its count. Makes the run incomplete.
    #[serde(default)]
    pub short_of_target: Vec<String>,
    pub run_dir: PathBuf,
    pub violation_file: Option<PathBuf>,
}

impl Summary {
    /// True when the history is linearizable, the set is intact, the SQL bank and the
    /// key-value bank passed their checks, the watchers' streams are the history, the
    /// replicas agree, no node crashed, and every membership change was
    /// answered truthfully and resolved.
    pub fn is_valid(&self) -> bool {
        self.linearizability
            .as_ref()
            .is_some_and(|r| r.is_linearizable())
            && self.set.as_ref().is_none_or(|s| s.is_valid())
            && self.bank.as_ref().is_none_or(|b| b.is_valid())
            && self.kv_bank.as_ref().is_none_or(|b| b.is_valid())
            && self.watch.as_ref().is_none_or(|w| w.is_valid())
            && self.divergence.is_empty()
            && self.crashes.is_empty()
            && self.membership.failed_but_applied == 0
            && self.membership.unresolved == 0
    }

    /// True when the nemesis did what it was asked: every fault it drew was injected, and
    /// with `min_each` every enabled fault reached that count before the cap. A run can be
    /// valid and incomplete; only a valid and complete one passes.
    pub fn is_complete(&self) -> bool {
        self.injection_errors.is_empty()
            && self.short_of_target.is_empty()
            && self.protocols_unexercised.is_empty()
    }

    /// Faults injected of a family.
    pub fn injected_of(&self, family: Family) -> usize {
        self.injected
            .iter()
            .filter(|(name, _)| {
                Fault::ALL
                    .iter()
                    .any(|f| f.name() == name.as_str() && f.family() == family)
            })
            .map(|(_, n)| n)
            .sum()
    }

    /// A few lines for a human.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let w = match self.workload {
            Workload::Register => "register",
            Workload::Set => "set",
        };
        s += &format!(
            "nemesis run: {} nodes, {} clients, {w} workload, {} log budget, {:.1}s, seed {}\n",
            self.nodes,
            self.clients,
            self.log_budget.name(),
            self.elapsed,
            self.seed
        );
        s += &format!(
            "ops: {} (ok {}, fail {}, info {})\n",
            self.ops, self.ok, self.fail, self.info
        );
        let by_protocol: Vec<String> = self
            .per_protocol
            .iter()
            .map(|(p, c)| {
                format!(
                    "{p} {} (ok {}, fail {}, info {})",
                    c.total(),
                    c.ok,
                    c.fail,
                    c.info
                )
            })
            .collect();
        s += &format!("ops by protocol: {}\n", by_protocol.join(", "));
        if !self.protocols_unexercised.is_empty() {
            s += &format!(
                "PROTOCOLS NOT EXERCISED (no operation answered): {}\n",
                self.protocols_unexercised.join(", ")
            );
        }
        let injected: Vec<String> = self
            .injected
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        s += &format!(
            "nemesis events: {} ({} faults: {})\n",
            self.events.len(),
            self.injected.values().sum::<usize>(),
            if injected.is_empty() {
                "none".to_string()
            } else {
                injected.join(", ")
            }
        );
        for sk in &self.skipped {
            s += &format!("skipped: {sk}\n");
        }
        match (&self.linearizability, &self.check_error) {
            (Some(r), _) => {
                s += &format!(
                    "linearizability: {} keys, {} ops: {}\n",
                    r.keys,
                    r.operations,
                    if r.is_linearizable() {
                        "linearizable".to_string()
                    } else {
                        format!(
                            "VIOLATION on {:?}, undecided {:?}",
                            r.violations.keys().collect::<Vec<_>>(),
                            r.unknown
                        )
                    }
                )
            }
            (None, Some(e)) => s += &format!("linearizability: not checked: {e}\n"),
            (None, None) => s += "linearizability: not checked\n",
        }
        if let Some(set) = &self.set {
            s += &format!(
                "set: {} acknowledged, {} unknown ({} present), {} failed; lost {:?}, duplicated {:?}, unexpected {:?}, unreadable {:?}\n",
                set.acked, set.unknown, set.unknown_present, set.absent,
                set.lost, set.duplicated, set.unexpected, set.unreadable
            );
        }
        if let Some(bank) = &self.bank {
            s += &bank.render();
        }
        if let Some(bank) = &self.kv_bank {
            s += &bank.render();
        }
        if let Some(watch) = &self.watch {
            s += &watch.render();
        }
        for c in &self.crashes {
            s += &format!("CRASH: {c}\n");
        }
        let t = &self.state_transfers;
        s += &format!(
            "state transfers: {} installed, {} failed, {} started, {} sent\n",
            t.installed, t.failed, t.started, t.sent
        );
        if self.membership.attempted > 0 {
            s += &format!("{}\n", self.membership.render());
        }
        if self.divergence.is_empty() {
            s += "replicas: converged\n";
        } else {
            s += &format!("replicas: DIVERGED: {}\n", self.divergence.join("; "));
        }
        if let Some(f) = &self.violation_file {
            s += &format!("violation history: {}\n", f.display());
        }
        if !self.transfer_missed.is_empty() {
            s += &format!(
                "transfer faults missed (not counted): {}\n",
                self.transfer_missed.len()
            );
        }
        for e in &self.injection_errors {
            s += &format!("INJECTION FAILED: {e}\n");
        }
        if !self.short_of_target.is_empty() {
            s += &format!(
                "TARGET NOT REACHED (each fault {} times) before the time limit, at {:.1}s: {}\n",
                self.min_each,
                self.elapsed,
                self.short_of_target.join(", ")
            );
        }
        if !self.is_complete() {
            s += "nemesis: INCOMPLETE\n";
        }
        s += &format!(
            "verdict: {}\n",
            if self.is_valid() { "VALID" } else { "INVALID" }
        );
        s
    }
}

/// The reason a node gave for not starting, if it exited because a membership change had
/// removed it: its log ends with that error.
fn refused_as_removed(log: &std::path::Path) -> Option<String> {
    let bytes = std::fs::read(log).ok()?;
    let tail = &bytes[bytes.len().saturating_sub(4096)..];
    let text = String::from_utf8_lossy(tail);
    let last = text.lines().rev().find(|l| !l.trim().is_empty())?;
    (last.starts_with("error: ") && last.contains("was removed from the cluster"))
        .then(|| last.to_string())
}

/// The event log, shared by the nemesis and the final phase.
struct Events {
    start: Instant,
    verbose: bool,
    list: Mutex<Vec<NemesisEvent>>,
    crashes: Mutex<Vec<String>>,
    membership: Mutex<MembershipStats>,
    /// Faults that could not be injected (see [`Summary::injection_errors`]).
    errors: Mutex<Vec<String>>,
    /// Transfer faults that missed (see [`Summary::transfer_missed`]).
    missed: Mutex<Vec<String>>,
}

impl Events {
    /// Notes every node that exited by itself (it is restarted by the next heal).
    fn reap(&self, c: &mut ProcCluster) {
        for (id, status) in c.reap_exited() {
            if let Some(why) = refused_as_removed(&c.node(id).log) {
                // Restarted before the nemesis learned that a change removed it.
                c.retire(id);
                self.log(
                    "membership",
                    format!("node {id} refused to start, it was removed: {why}"),
                );
                continue;
            }
            let at = self.start.elapsed().as_secs_f64();
            let what = format!(
                "node {id} exited by itself ({status}), noticed at {at:.3}s; see {}",
                c.node(id).log.display()
            );
            self.log("crash", what.clone());
            self.crashes.lock().unwrap().push(what);
        }
    }

    /// A fault that could not be injected: logged, and reported in the summary.
    fn injection_failed(&self, fault: Fault, why: String) {
        let what = format!("{fault}: {why}");
        self.log("error", what.clone());
        self.errors.lock().unwrap().push(what);
    }

    fn log(&self, kind: &str, detail: String) {
        let at = self.start.elapsed().as_secs_f64();
        if self.verbose {
            eprintln!("[{at:8.3}s] {kind}: {detail}");
        }
        self.list.lock().unwrap().push(NemesisEvent {
            at,
            kind: kind.to_string(),
            detail,
        });
    }
}

/// Runs one nemesis test and returns what it found. Errors are setup failures (the
/// cluster would not start, the binary is missing); a violation is a valid `Summary`
/// whose `is_valid()` is false.
pub async fn run(opts: &Options) -> Result<Summary> {
    if opts.nodes != 3 && opts.nodes != 5 {
        return Err(Error::invalid("--nodes must be 3 or 5"));
    }
    if opts.clients == 0 {
        return Err(Error::invalid("--clients must be at least 1"));
    }
    if opts.protocols.is_empty() || opts.clients < opts.protocols.len() {
        return Err(Error::invalid(format!(
            "--clients ({}) must be at least the number of --protocols ({}): every protocol gets a worker",
            opts.clients,
            opts.protocols.len()
        )));
    }
    if opts.log_budget != LogBudget::Tiny
        && opts.faults.iter().any(|f| f.family() == Family::Transfer)
    {
        return Err(Error::invalid(
            "the transfer faults need --log-budget tiny (the logs must be trimmed past a follower)",
        ));
    }
    let base = opts.dir.clone().unwrap_or_else(std::env::temp_dir);
    let run_dir = base.join(format!(
        "paxosdb-nemesis-{}-{}-{:x}",
        std::process::id(),
        opts.seed,
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&run_dir)?;
    let result = run_in(opts, run_dir.clone()).await;
    let keep = opts.keep || !matches!(&result, Ok(s) if s.is_valid() && s.is_complete());
    if !keep {
        let _ = std::fs::remove_dir_all(&run_dir);
    } else if opts.verbose {
        eprintln!("run directory kept: {}", run_dir.display());
    }
    result
}

async fn run_in(opts: &Options, run_dir: PathBuf) -> Result<Summary> {
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut skipped = Vec::new();
    let mut faults: Vec<Fault> = opts.faults.iter().copied().collect();
    let wants_partition = faults.iter().any(|f| f.family() == Family::Partition);
    let firewall = if wants_partition {
        match Firewall::unavailable().map_or_else(Firewall::create, Err) {
            Ok(fw) => Some(fw),
            Err(why) => {
                let msg = format!("partition nemesis: {why}");
                eprintln!("skipping the {msg}");
                skipped.push(msg);
                faults.retain(|f| f.family() != Family::Partition);
                None
            }
        }
    } else {
        None
    };

    let cluster = ProcCluster::start(&opts.binary, &run_dir, opts.nodes, opts.log_budget.env())?;
    let cluster = tokio::sync::Mutex::new(cluster);
    wait_healthy(
        &cluster,
        Duration::from_secs(60),
        "the cluster to elect a leader",
        None,
    )
    .await?;

    let start = Instant::now();
    let events = Events {
        start,
        verbose: opts.verbose,
        list: Mutex::new(Vec::new()),
        crashes: Mutex::new(Vec::new()),
        membership: Mutex::new(MembershipStats::default()),
        errors: Mutex::new(Vec::new()),
        missed: Mutex::new(Vec::new()),
    };
    let endpoints = cluster.lock().await.endpoints();
    let set_generations = opts.time_limit.as_secs() / workload::SET_GENERATION.as_secs() + 1;
    let shared = Arc::new(Shared {
        start,
        history: Mutex::new(Vec::new()),
        elements: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
        started: AtomicU64::new(0),
        op_limit: opts.op_limit,
        next_process: AtomicU64::new(opts.clients as u64 + 1),
        set_generations,
        stale_reads: opts.stale_reads,
        endpoints: Endpoints::new(
            endpoints,
            Timeouts {
                op: opts.op_timeout,
                attempt: (opts.op_timeout / 2).max(Duration::from_millis(300)),
            },
            opts.stale_reads,
        ),
        per_protocol: Mutex::new(BTreeMap::new()),
    });

    if opts.workload == Workload::Set {
        let (_, client) = shared.endpoints.client(0)?;
        create_set_keys(&shared, &client, set_generations).await?;
    }
    let bank_log = Arc::new(BankLog::default());
    if opts.sql_clients > 0 {
        let (_, client) = shared.endpoints.client(0)?;
        bank::create(&client, &bank_log).await?;
        events.log(
            "setup",
            format!(
                "created the SQL bank: {} accounts of {} (total {}), tables present by applied index {}",
                bank::ACCOUNTS,
                bank::INITIAL_BALANCE,
                bank::TOTAL,
                bank_log.setup_index.load(Ordering::Relaxed)
            ),
        );
    }
    let kv_bank_log = Arc::new(KvBankLog::default());
    if opts.kv_bank_clients > 0 {
        let (_, client) = shared.endpoints.client(0)?;
        kv_bank::create(&client).await?;
        events.log(
            "setup",
            format!(
                "created the key-value bank: {} accounts of {} (total {}) under {}",
                bank::ACCOUNTS,
                bank::INITIAL_BALANCE,
                bank::TOTAL,
                kv_bank::PREFIX
            ),
        );
    }
    if faults.iter().any(|f| f.family() == Family::Transfer) {
        let (_, client) = shared.endpoints.client(0)?;
        let t = Instant::now();
        transfer_faults::load_ballast(&client, opts.seed).await?;
        events.log(
            "setup",
            format!(
                "loaded {} ballast values of {} bytes in {:.1}s, so that state transfers last long enough to be hit",
                transfer_faults::BALLAST_VALUES,
                transfer_faults::BALLAST_VALUE_BYTES,
                t.elapsed().as_secs_f64()
            ),
        );
    }

    // Workers.
    let mut workers = Vec::new();
    for w in 0..opts.clients {
        let protocol = opts.protocols[w % opts.protocols.len()];
        let client = WorkerClient::new(&shared.endpoints, protocol, w)?;
        let worker_rng = StdRng::seed_from_u64(opts.seed.wrapping_add(1 + w as u64));
        let shared = shared.clone();
        let id = w as u64 + 1;
        let kind = opts.workload;
        workers.push(tokio::spawn(async move {
            match kind {
                Workload::Register => {
                    workload::register_worker(shared, client, worker_rng, id).await
                }
                Workload::Set => workload::set_worker(shared, client, worker_rng, id).await,
            }
        }));
    }
    let sql_protocols: Vec<SqlProtocol> = (0..opts.sql_clients)
        .map(|w| SqlProtocol::ALL[w % SqlProtocol::ALL.len()])
        .collect();
    for (w, &protocol) in sql_protocols.iter().enumerate() {
        let id = (opts.clients + w) as u64 + 1;
        let worker_rng = StdRng::seed_from_u64(opts.seed.wrapping_add(id));
        let (shared, log) = (shared.clone(), bank_log.clone());
        workers.push(tokio::spawn(async move {
            bank::worker(shared, log, protocol, id, worker_rng).await
        }));
    }
    for w in 0..opts.kv_bank_clients {
        let id = (opts.clients + opts.sql_clients + w) as u64 + 1;
        kv_bank_log.sent.lock().unwrap().insert(id, 0);
        let worker_rng = StdRng::seed_from_u64(opts.seed.wrapping_add(id));
        let (shared, log) = (shared.clone(), kv_bank_log.clone());
        workers.push(tokio::spawn(async move {
            kv_bank::worker(shared, log, id, worker_rng).await
        }));
    }
    // The watchers run on through the end of the workload, until `watch::finish`.
    let watch_log = Arc::new(watch::WatchLog::new(
        opts.watchers,
        watch::prefix(opts.workload),
    ));
    let watchers = watch::start(&shared, &watch_log);

    let deadline = start + opts.time_limit;
    let nemesis = nemesis_loop(
        &cluster,
        firewall.as_ref(),
        &faults,
        &events,
        &shared,
        deadline,
        opts,
        &mut rng,
    );
    let stopper = async {
        while Instant::now() < deadline && !shared.stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        shared.stop.store(true, Ordering::Relaxed);
    };
    let (nemesis_result, ()) = tokio::join!(nemesis, stopper);
    for w in workers {
        w.await
            .map_err(|e| Error::Internal(format!("worker panicked: {e}")))?;
    }
    let elapsed = start.elapsed().as_secs_f64();

    // Heal everything, whatever happened above.
    {
        let mut c = cluster.lock().await;
        events.reap(&mut c);
        membership::sync(&mut c, &shared, &events).await;
        let healed = faults::heal_all(&mut c, firewall.as_ref(), &[]).map_err(Error::Internal)?;
        if !healed.is_empty() {
            events.log("heal", format!("final: {healed}"));
        }
    }
    nemesis_result?;
    wait_healthy(
        &cluster,
        Duration::from_secs(60),
        "the cluster to recover after healing",
        Some((&events, shared.as_ref())),
    )
    .await?;

    // Final reads (linearizable, recorded in the history too), from the final members.
    {
        let mut c = cluster.lock().await;
        membership::sync(&mut c, &shared, &events).await;
        let mut st = events.membership.lock().unwrap();
        st.final_members = c.members();
        st.final_config = c.config_id;
    }
    let (_, final_client) = shared.endpoints.client(0)?;
    let set = if opts.workload == Workload::Set {
        let elements: Vec<Element> = shared.elements.lock().unwrap().clone();
        let mut finals = BTreeMap::new();
        for g in 0..set_generations {
            for slot in 0..workload::SET_KEYS {
                let key = workload::set_key(g, slot);
                let v = final_read(&shared, &final_client, key.as_bytes()).await;
                finals.insert(key, v);
            }
        }
        Some(workload::check_set(&elements, &finals))
    } else {
        None
    };

    let history: Vec<Operation> = shared.history.lock().unwrap().clone();
    let divergence = {
        let mut c = cluster.lock().await;
        let keys: BTreeSet<Vec<u8>> = history.iter().map(|o| o.key.clone()).collect();
        let divergence = compare_replicas(&c, &keys).await;
        events.reap(&mut c);
        divergence
    };
    let mut bank = if opts.sql_clients > 0 {
        bank::final_read(&shared, &bank_log, &final_client).await;
        let c = cluster.lock().await;
        let note = |what: String| events.log("sql", what);
        let finals = bank::final_states(&c, opts.sql_tamper, &note).await;
        let transfers = bank_log.transfers.lock().unwrap().clone();
        let reads = bank_log.reads.lock().unwrap().clone();
        let setup_index = bank_log.setup_index.load(Ordering::Relaxed);
        let mut report = bank::check(&transfers, &reads, setup_index, &finals);
        // Every SQL protocol dealt to a worker appears, answered or not.
        for p in &sql_protocols {
            report.per_protocol.entry(p.name().to_string()).or_default();
        }
        Some(report)
    } else {
        None
    };
    let mut kv_bank = if opts.kv_bank_clients > 0 {
        kv_bank::final_read(&shared, &kv_bank_log, &final_client).await;
        let finals = kv_bank::final_states(&*cluster.lock().await).await;
        let transfers = kv_bank_log.transfers.lock().unwrap().clone();
        let reads = kv_bank_log.reads.lock().unwrap().clone();
        let scripted = kv_bank_log.scripted.lock().unwrap().clone();
        let mut report = kv_bank::check(&transfers, &scripted, &reads, &finals);
        report.conflicts = kv_bank_log.conflicts.load(Ordering::Relaxed) as usize;
        report.scans_too_long = kv_bank_log.scans_too_long.load(Ordering::Relaxed) as usize;
        report.reads_before_transfer_lost = kv_bank_log
            .reads_before_transfer_lost
            .load(Ordering::Relaxed) as usize;
        Some(report)
    } else {
        None
    };
    let watch = if opts.watchers > 0 {
        // The cluster is healed, its replicas agree and nothing writes any more: the
        // history is complete.
        let (node, endpoint, client) = {
            let c = cluster.lock().await;
            let node = c.members().first().copied().unwrap_or(1);
            let endpoint = c.node(node).client_addr.clone();
            (node, endpoint, c.client_for(node, Duration::from_secs(10)))
        };
        Some(watch::finish(&watch_log, watchers, node, &client, &endpoint, &history).await)
    } else {
        None
    };
    drop(cluster);
    drop(firewall);
    // Every node is gone: its log is complete.
    let state_transfers = count_state_transfers(&run_dir);

    let (ok, fail, info) = history
        .iter()
        .fold((0, 0, 0), |(ok, fail, info), o| match o.outcome {
            Outcome::Ok(_) => (ok + 1, fail, info),
            Outcome::Fail => (ok, fail + 1, info),
            Outcome::Info => (ok, fail, info + 1),
        });
    let checked = history.clone();
    let (linearizability, check_error) =
        match tokio::task::spawn_blocking(move || check::check(&checked, check::DEFAULT_BUDGET))
            .await
        {
            Ok(r) => (Some(r), None),
            Err(e) => (None, Some(format!("the checker failed: {e}"))),
        };
    let crashes = events.crashes.into_inner().unwrap();
    let injection_errors = events.errors.into_inner().unwrap();
    let transfer_missed = events.missed.into_inner().unwrap();
    let membership = events.membership.into_inner().unwrap();
    let events = events.list.into_inner().unwrap();
    let mut injected = BTreeMap::new();
    for e in &events {
        if Fault::ALL.iter().any(|f| f.name() == e.kind) {
            *injected.entry(e.kind.clone()).or_insert(0) += 1;
        }
    }
    let fault_times: Vec<(String, f64)> = events
        .iter()
        .filter(|e| Fault::ALL.iter().any(|f| f.name() == e.kind))
        .map(|e| (e.kind.clone(), e.at))
        .collect();
    if let Some(b) = bank.as_mut() {
        bank::count_in_flight(b, &bank_log.transfers.lock().unwrap(), &fault_times);
    }
    if let Some(b) = kv_bank.as_mut() {
        let transfers = kv_bank_log.transfers.lock().unwrap();
        bank::count_in_flight(&mut b.books, &transfers, &fault_times);
    }
    let short_of_target: Vec<String> = if opts.min_each == 0 {
        Vec::new()
    } else {
        faults
            .iter()
            .map(|f| (f.name(), injected.get(f.name()).copied().unwrap_or(0)))
            .filter(|(_, n)| *n < opts.min_each)
            .map(|(name, n)| format!("{name} {n}"))
            .collect()
    };
    let per_protocol: BTreeMap<String, OpCounts> = shared
        .per_protocol
        .lock()
        .unwrap()
        .iter()
        .map(|(p, c)| (p.name().to_string(), *c))
        .collect();
    let mut protocols_unexercised: Vec<String> = opts
        .protocols
        .iter()
        .filter(|p| per_protocol.get(p.name()).is_none_or(|c| c.ok == 0))
        .map(|p| p.name().to_string())
        .collect();
    if let Some(b) = &bank {
        protocols_unexercised.extend(b.unexercised());
    }
    if let Some(b) = &kv_bank {
        protocols_unexercised.extend(b.unexercised());
    }
    if let Some(w) = &watch {
        protocols_unexercised.extend(w.unexercised());
    }
    let mut summary = Summary {
        seed: opts.seed,
        nodes: opts.nodes,
        clients: opts.clients,
        workload: opts.workload,
        log_budget: opts.log_budget,
        elapsed,
        ops: history.len(),
        ok,
        fail,
        info,
        per_protocol,
        protocols_unexercised,
        events,
        injected,
        skipped,
        linearizability,
        check_error,
        set,
        bank,
        kv_bank,
        watch,
        divergence,
        crashes,
        state_transfers,
        membership,
        injection_errors,
        transfer_missed,
        min_each: opts.min_each,
        short_of_target,
        run_dir: run_dir.clone(),
        violation_file: None,
    };
    if !summary.is_valid() {
        let path = run_dir.join("violation.json");
        let offending: BTreeMap<String, Vec<Operation>> = match &summary.linearizability {
            Some(r) if !r.violations.is_empty() => r.violations.clone(),
            // No per-key verdict to point at: keep the whole history.
            _ => {
                let mut all: BTreeMap<String, Vec<Operation>> = BTreeMap::new();
                for o in &history {
                    all.entry(String::from_utf8_lossy(&o.key).into_owned())
                        .or_default()
                        .push(o.clone());
                }
                all
            }
        };
        let sql_bank_invalid = summary.bank.as_ref().is_some_and(|b| !b.is_valid());
        let kv_bank_invalid = summary.kv_bank.as_ref().is_some_and(|b| !b.is_valid());
        let watch_invalid = summary.watch.as_ref().is_some_and(|w| !w.is_valid());
        let doc = serde_json::json!({
            "summary": &summary,
            "histories": offending,
            "elements": &*shared.elements.lock().unwrap(),
            // The bank's own records, when its checks failed.
            "sql_transfers": sql_bank_invalid.then(|| bank_log.transfers.lock().unwrap().clone()),
            "sql_reads": sql_bank_invalid.then(|| bank_log.reads.lock().unwrap().clone()),
            "kv_bank_transfers": kv_bank_invalid.then(|| kv_bank_log.transfers.lock().unwrap().clone()),
            "kv_bank_reads": kv_bank_invalid.then(|| kv_bank_log.reads.lock().unwrap().clone()),
            // What every watcher received, when the watch checks failed.
            "watchers": watch_invalid.then(|| {
                (watch_log.watchers.iter())
                    .map(|r| r.lock().unwrap().clone())
                    .collect::<Vec<_>>()
            }),
        });
        std::fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap_or_default())?;
        summary.violation_file = Some(path);
    }
    Ok(summary)
}

/// Waits until every member answers and they agree on a leader. With `events`, a node
/// that exits by itself meanwhile is noted as a crash and restarted, and a newer
/// configuration the nodes report is taken in.
async fn wait_healthy(
    cluster: &tokio::sync::Mutex<ProcCluster>,
    timeout: Duration,
    what: &str,
    events: Option<(&Events, &Shared)>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        {
            let mut c = cluster.lock().await;
            if let Some((events, shared)) = events {
                events.reap(&mut c);
                membership::sync(&mut c, shared, events).await;
                let killed = c.killed();
                for id in killed {
                    c.spawn(id)?;
                    events.log("heal", format!("restarted crashed node {id}"));
                }
            }
            if c.healthy().await {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(Error::Internal(format!(
                "timed out after {timeout:?} waiting for {what}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates every set key with the empty set before the workers start (recorded as puts).
async fn create_set_keys(shared: &Shared, client: &Client, generations: u64) -> Result<()> {
    let keys: Vec<String> = (0..generations)
        .flat_map(|g| (0..workload::SET_KEYS).map(move |s| workload::set_key(g, s)))
        .collect();
    for chunk in keys.chunks(32) {
        let puts = chunk.iter().map(|key| async move {
            let call = shared.now();
            client
                .put(key.as_bytes(), workload::SET_EMPTY.as_bytes(), false)
                .await
                .map_err(|e| Error::Internal(format!("creating set key {key}: {e}")))?;
            Ok::<_, Error>(Operation {
                client: 0,
                key: key.clone().into_bytes(),
                input: Input::Put(workload::SET_EMPTY.as_bytes().to_vec()),
                call,
                ret: Some(shared.now()),
                outcome: Outcome::Ok(Output::Written),
            })
        });
        for op in futures::future::join_all(puts).await {
            shared.history.lock().unwrap().push(op?);
        }
    }
    Ok(())
}

/// A linearizable read after healing, retried for up to a minute; recorded in the history.
/// None if it never succeeded.
async fn final_read(shared: &Shared, client: &Client, key: &[u8]) -> Option<Option<Vec<u8>>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let call = shared.now();
        if let Ok((v, _)) = client.get(key, false).await {
            let v = v.map(|v| v.value);
            shared.history.lock().unwrap().push(Operation {
                client: 0,
                key: key.to_vec(),
                input: Input::Get,
                call,
                ret: Some(shared.now()),
                outcome: Outcome::Ok(Output::Value(v.clone())),
            });
            return Some(v);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Waits until every member has applied the same index, then compares every member's
/// local copy of `keys`: the value and its version (the log revision of the key's last
/// write, which every replica must have recorded alike). Returns the disagreements.
async fn compare_replicas(c: &ProcCluster, keys: &BTreeSet<Vec<u8>>) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut stable = 0;
    let mut last = Vec::new();
    loop {
        let applied = c.applied().await;
        let all_same = applied.iter().all(|a| a.is_some() && *a == applied[0]);
        stable = if all_same && applied == last {
            stable + 1
        } else {
            0
        };
        last = applied;
        if stable >= 2 {
            break;
        }
        if Instant::now() > deadline {
            return vec![format!("applied indexes did not converge: {last:?}")];
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut out = Vec::new();
    let clients: Vec<(u64, Client)> = c
        .members()
        .into_iter()
        .map(|id| (id, c.client_for(id, Duration::from_secs(5))))
        .collect();
    for key in keys {
        let mut values = Vec::new();
        for (id, client) in &clients {
            match client.get(key, true).await {
                Ok((v, _)) => values.push((*id, v.map(|v| (v.value, v.version)))),
                Err(e) => {
                    out.push(format!(
                        "node {id} cannot read {}: {e}",
                        String::from_utf8_lossy(key)
                    ));
                }
            }
        }
        out.extend(replica_disagreement(key, &values));
    }
    out
}

/// A key's copy on each node: (node, value and version, or None when absent).
type Copies = [(u64, Option<(Vec<u8>, u64)>)];

/// The disagreement of the replicas' copies of `key`, if any: values or versions differ.
fn replica_disagreement(key: &[u8], values: &Copies) -> Option<String> {
    if !values.windows(2).any(|w| w[0].1 != w[1].1) {
        return None;
    }
    let shown: Vec<String> = values
        .iter()
        .map(|(id, v)| match v {
            Some((v, version)) => {
                format!(
                    "node {id}: {:?} version {version}",
                    String::from_utf8_lossy(v)
                )
            }
            None => format!("node {id}: absent"),
        })
        .collect();
    Some(format!(
        "key {}: {}",
        String::from_utf8_lossy(key),
        shown.join(", ")
    ))
}

/// Sleeps until `until` or until the run stops, whichever is first.
async fn sleep_until_or_stop(until: Instant, shared: &Shared) {
    while Instant::now() < until && !shared.stop.load(Ordering::Relaxed) {
        let left = until.saturating_duration_since(Instant::now());
        tokio::time::sleep(left.min(Duration::from_millis(50))).await;
    }
}

/// Injects faults until the run stops: fault, wait, heal, wait. With
/// [`Options::min_each`], the run stops once every enabled fault was injected that many
/// times (a fault whose injection failed does not count, and is drawn again). Faults are
/// drawn from a shuffled bag so that every enabled fault runs before any repeats; with several
/// families enabled, one round in three adds a second fault of another family. A
/// membership change is sent first when its fault comes first, and the round's other
/// fault follows within 400 ms, so that it hits the cluster during the change; the change
/// is settled (resolved when its outcome is unknown) after the heal, before the next
/// round.
#[allow(clippy::too_many_arguments)]
async fn nemesis_loop(
    cluster: &tokio::sync::Mutex<ProcCluster>,
    firewall: Option<&Firewall>,
    faults: &[Fault],
    events: &Events,
    shared: &Shared,
    deadline: Instant,
    opts: &Options,
    rng: &mut StdRng,
) -> Result<()> {
    if faults.is_empty() {
        return Ok(());
    }
    let families: BTreeSet<Family> = faults.iter().map(|f| f.family()).collect();
    let mut bag: Vec<Fault> = Vec::new();
    // Successful injections so far, for `min_each`.
    let mut injected: BTreeMap<Fault, usize> = BTreeMap::new();
    let target_reached = |injected: &BTreeMap<Fault, usize>| {
        opts.min_each > 0
            && faults
                .iter()
                .all(|f| injected.get(f).copied().unwrap_or(0) >= opts.min_each)
    };
    // Let the workload get going before the first fault.
    sleep_until_or_stop(Instant::now() + opts.heal_duration / 2, shared).await;
    while !shared.stop.load(Ordering::Relaxed) {
        // Leave time to heal before the end of the run.
        if Instant::now() + opts.fault_duration / 2 > deadline {
            break;
        }
        if bag.is_empty() {
            // With a target, only the faults still short of it (a failed injection is
            // drawn again); without, all of them.
            bag = faults
                .iter()
                .copied()
                .filter(|f| {
                    opts.min_each == 0 || injected.get(f).copied().unwrap_or(0) < opts.min_each
                })
                .collect();
            bag.shuffle(rng);
        }
        let first = bag.pop().unwrap();
        if first.family() == Family::Transfer {
            // A procedure of its own, alone in its round (see `transfer_faults`).
            let note = |what: String| events.log("nemesis", what);
            let res = if first == Fault::PausePastRetention {
                transfer_faults::pause_past_retention(cluster, shared, rng, &note).await
            } else {
                transfer_faults::sender_fault(
                    first,
                    cluster,
                    shared,
                    opts.fault_duration,
                    rng,
                    &note,
                )
                .await
            };
            match res {
                Ok(what) => {
                    events.log(first.name(), what);
                    *injected.entry(first).or_insert(0) += 1;
                }
                Err(transfer_faults::NotLanded::Missed(why)) => {
                    let what = format!("{first}: {why}");
                    events.log("missed", what.clone());
                    events.missed.lock().unwrap().push(what);
                }
                Err(transfer_faults::NotLanded::Failed(why)) => events.injection_failed(first, why),
            }
            {
                let mut c = cluster.lock().await;
                events.reap(&mut c);
                membership::sync(&mut c, shared, events).await;
                let healed = faults::heal_all(&mut c, firewall, &[]).map_err(Error::Internal)?;
                events.log("heal", healed);
            }
            if target_reached(&injected) {
                sleep_until_or_stop(Instant::now() + opts.heal_duration / 2, shared).await;
                shared.stop.store(true, Ordering::Relaxed);
                break;
            }
            sleep_until_or_stop(Instant::now() + opts.heal_duration, shared).await;
            continue;
        }
        let mut round = vec![first];
        if families.len() > 1 && rng.gen_ratio(1, 3) {
            // A transfer fault is never a second fault: it runs its own procedure.
            let second: Vec<Fault> = faults
                .iter()
                .copied()
                .filter(|f| f.family() != first.family() && f.family() != Family::Transfer)
                .collect();
            round.extend(second.choose(rng));
        }
        let mut change = None;
        {
            let mut c = cluster.lock().await;
            events.reap(&mut c);
            membership::sync(&mut c, shared, events).await;
            let n = round.len();
            for (i, f) in round.into_iter().enumerate() {
                if f.family() == Family::Membership {
                    match membership::begin(f, &mut c, events, rng).await {
                        Ok((inflight, what)) => {
                            events.log(f.name(), what);
                            *injected.entry(f).or_insert(0) += 1;
                            change = Some(inflight);
                        }
                        Err(e) => events.injection_failed(f, e.to_string()),
                    }
                    if i + 1 < n {
                        let delay = Duration::from_millis(rng.gen_range(0..=400));
                        tokio::time::sleep(delay).await;
                    }
                    continue;
                }
                match faults::apply(f, &mut c, firewall, rng).await {
                    Ok(what) => {
                        events.log(f.name(), what);
                        *injected.entry(f).or_insert(0) += 1;
                    }
                    Err(e) => events.injection_failed(f, e),
                }
            }
        }
        let fault_end = Instant::now() + opts.fault_duration;
        if let Some(inflight) = change.as_mut() {
            membership::drive(inflight, cluster, shared, events, fault_end).await;
        }
        sleep_until_or_stop(fault_end, shared).await;
        {
            let mut c = cluster.lock().await;
            events.reap(&mut c);
            membership::sync(&mut c, shared, events).await;
            let hold = change.as_ref().map(|f| f.hold()).unwrap_or_default();
            let healed = faults::heal_all(&mut c, firewall, &hold).map_err(Error::Internal)?;
            events.log("heal", healed);
        }
        if let Some(inflight) = change {
            membership::finish(inflight, cluster, shared, events).await;
        }
        if target_reached(&injected) {
            // Every fault ran often enough: the workload sees the healed cluster for a
            // moment, then the run ends.
            sleep_until_or_stop(Instant::now() + opts.heal_duration / 2, shared).await;
            shared.stop.store(true, Ordering::Relaxed);
            break;
        }
        sleep_until_or_stop(Instant::now() + opts.heal_duration, shared).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replicas that hold the same value under different versions disagree: a replica
    /// that applied a write twice, or skipped one that wrote the same bytes, shows only
    /// in its version.
    #[test]
    fn replicas_disagree_on_a_version_alone() {
        let same = [(1, Some((b"v".to_vec(), 7))), (2, Some((b"v".to_vec(), 7)))];
        assert_eq!(replica_disagreement(b"k", &same), None);
        let versions = [(1, Some((b"v".to_vec(), 7))), (2, Some((b"v".to_vec(), 9)))];
        assert_eq!(
            replica_disagreement(b"k", &versions).as_deref(),
            Some("key k: node 1: \"v\" version 7, node 2: \"v\" version 9")
        );
        let absent = [(1, Some((b"v".to_vec(), 7))), (2, None)];
        assert_eq!(
            replica_disagreement(b"k", &absent).as_deref(),
            Some("key k: node 1: \"v\" version 7, node 2: absent")
        );
    }
}
