//! `paxosdb nemesis`: starts a local cluster of this binary, runs a workload under faults,
//! and checks the history (see `paxosdb::nemesis`). Exit code 0 when valid and complete, 1
//! on a violation (the offending history's path is printed) or an incomplete run (a fault
//! that could not be injected, a `--min-faults-each` target not reached), 2 on bad usage.

use crate::error::{Error, Result};
use crate::nemesis::{faults, LogBudget, Options, Workload};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct NemesisArgs {
    /// Faults to inject, comma separated: all, none, kill, pause, partition, membership,
    /// transfer, or single faults (kill-random, kill-leader, kill-majority, pause-random,
    /// pause-leader, partition-leader, partition-halves, quorum-loss,
    /// constrained-election, chained, replace, shrink-grow, kill-transfer-sender,
    /// pause-transfer-sender, pause-past-retention). `all` is every family but transfer,
    /// which needs --log-budget tiny (name it: all,transfer).
    #[arg(long, default_value = "all")]
    pub nemesis: String,
    /// Workload: register (put/get/cas, checked for linearizability) or set (CAS-append,
    /// nothing lost or duplicated).
    #[arg(long, default_value = "register")]
    pub workload: Workload,
    /// How long the workload runs (e.g. 60s, 10m).
    #[arg(long, default_value = "60s", value_parser = super::parse_duration)]
    pub time_limit: Duration,
    /// Stop after this many operations (0 = only the time limit).
    #[arg(long, default_value_t = 0)]
    pub ops: u64,
    /// Cluster size: 3 or 5.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 5)]
    pub clients: usize,
    /// Seed for the nemesis's and the clients' choices (default: random, printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// How long each fault lasts.
    #[arg(long, default_value = "4s", value_parser = super::parse_duration)]
    pub fault_duration: Duration,
    /// How long the cluster runs healed between faults.
    #[arg(long, default_value = "3s", value_parser = super::parse_duration)]
    pub heal_duration: Duration,
    /// Client timeout per operation; after it the outcome is unknown (info).
    #[arg(long, default_value = "3s", value_parser = super::parse_duration)]
    pub op_timeout: Duration,
    /// Directory for the run directory (node data and logs); default the temp dir.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keep the run directory even when the run passes.
    #[arg(long)]
    pub keep: bool,
    /// Deliberately unsafe: the workload reads nodes' local copies (stale reads), each
    /// worker on one node only, to see the checker report a violation.
    #[arg(long)]
    pub stale_reads: bool,
    /// Log compaction of the servers: default (their defaults) or tiny (trim every 10
    /// entries, keep 40 for laggards: nodes behind catch up by state transfers under the
    /// faults).
    #[arg(long, default_value = "default")]
    pub log_budget: LogBudget,
    /// Go on until every enabled fault was injected at least this many times, then stop;
    /// --time-limit is then a cap, and a run that reaches it first fails (0: run for
    /// --time-limit).
    #[arg(long, default_value_t = 0)]
    pub min_faults_each: usize,
    /// Client protocols of the workers, comma separated: grpc, http, resp, or all. The
    /// workers are dealt them in turn (--clients must be at least their number), and the
    /// run fails if a protocol got no answer at all.
    #[arg(long, default_value = "all")]
    pub protocols: String,
    /// Workers of the SQL bank workload, beside the --clients key-value workers: they
    /// move money between accounts in SQL transactions (gRPC and rqlite HTTP, dealt in
    /// turn) and check that no read and no replica ever shows another total (0: none).
    #[arg(long, default_value_t = 2)]
    pub sql_clients: usize,
    /// Workers of the key-value bank workload, beside the others: they move money between
    /// accounts kept in keys by gRPC key-value transactions (read both balances, then
    /// write both and a ledger row if both versions still hold) and check that no read and
    /// no replica ever shows another total or a balance the ledger does not explain (0:
    /// none).
    #[arg(long, default_value_t = 0)]
    pub kv_bank_clients: usize,
    /// Watchers of the key-value workload's keys, beside the workers: each follows the
    /// changes from revision 1 through the faults (raw gRPC watch streams resumed on the
    /// next node, and the client's resuming watch, in turn), and at the end its stream
    /// must be exactly the cluster's history of those keys, which must hold every
    /// acknowledged write (0: none).
    #[arg(long, default_value_t = 0)]
    pub watchers: usize,
    /// Also print the summary as JSON on stdout (after the text).
    #[arg(long)]
    pub json: bool,
}

pub async fn run(a: &NemesisArgs) -> Result<ExitCode> {
    let binary = std::env::current_exe()
        .map_err(|e| Error::Internal(format!("cannot find this binary: {e}")))?;
    let faults = match faults::parse_faults(&a.nemesis) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let protocols = match crate::nemesis::clients::parse_protocols(&a.protocols) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let seed = a.seed.unwrap_or_else(rand::random);
    let mut opts = Options::new(binary);
    opts.nodes = a.nodes;
    opts.clients = a.clients;
    opts.time_limit = a.time_limit;
    opts.op_limit = a.ops;
    opts.seed = seed;
    opts.workload = a.workload;
    opts.faults = faults;
    opts.fault_duration = a.fault_duration;
    opts.heal_duration = a.heal_duration;
    opts.op_timeout = a.op_timeout;
    opts.dir = a.dir.clone();
    opts.keep = a.keep;
    opts.stale_reads = a.stale_reads;
    opts.log_budget = a.log_budget;
    opts.min_each = a.min_faults_each;
    opts.protocols = protocols;
    opts.sql_clients = a.sql_clients;
    opts.kv_bank_clients = a.kv_bank_clients;
    opts.watchers = a.watchers;
    eprintln!(
        "nemesis: seed {seed}, {} nodes, {} clients + {} SQL clients, {:?}, faults {}, {} log budget",
        a.nodes,
        a.clients,
        a.sql_clients,
        a.time_limit,
        a.nemesis,
        a.log_budget.name()
    );
    // Ctrl-C or SIGTERM drops the run: its guards heal the network and kill the nodes.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::Internal(format!("signal handler: {e}")))?;
    let summary = tokio::select! {
        r = crate::nemesis::run(&opts) => r?,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("interrupted: cleaning up");
            return Ok(ExitCode::from(130));
        }
        _ = term.recv() => {
            eprintln!("terminated: cleaning up");
            return Ok(ExitCode::from(143));
        }
    };
    print!("{}", summary.render());
    if a.json {
        println!(
            "{}",
            serde_json::to_string(&summary).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
        );
    }
    Ok(if summary.is_valid() && summary.is_complete() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
