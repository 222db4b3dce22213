//! `paxosdb sim`: a long deterministic-simulation campaign (see [`crate::sim`]). Runs
//! seeds `--first..--first+--seeds` (or only `--seed N`), prints each failure with its
//! seed, then one report: seeds run, operations recorded and checked, one count per
//! fault path (crashes by kind, pauses, partitions per shape, dropped messages, state
//! transfers, the SQL bank workload's figures; [`crate::sim::Totals::report`]), and the violations by checker kind with
//! their seeds. Exits 1 if any seed failed.

use crate::error::Result;
use crate::sim::{self, LogBudgetMix, SimConfig};
use clap::Args;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct SimArgs {
    /// Number of seeds to run.
    #[arg(long, default_value_t = 1000)]
    pub seeds: u64,
    /// First seed of the campaign.
    #[arg(long, default_value_t = 0)]
    pub first: u64,
    /// Run only this seed (replay), printing what the nemesis did.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Nodes per cluster (3 or 5); default: 3, and 5 for every fourth seed (the nemesis is
    /// busier in seeds that trim their logs; see `SimConfig::for_seed`).
    #[arg(long)]
    pub nodes: Option<usize>,
    /// Seconds of virtual time with faults per seed.
    #[arg(long, default_value_t = 5)]
    pub fault_secs: u64,
    /// Clients per run.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// SQL bank clients per run (transfers and total reads on the same log; 0: none).
    #[arg(long, default_value_t = 2)]
    pub bank_clients: usize,
    /// Also duplicate and reorder messages within a link (beyond what TCP does; OmniPaxos
    /// assumes FIFO links, so failures here are not necessarily paxosdb bugs).
    #[arg(long)]
    pub chaos: bool,
    /// Log compaction: `off`; `tiny` (every seed trims in steps of 5-10 entries and keeps
    /// 20-40 for laggards, so faults push nodes into state transfers); `mixed` (tiny for
    /// half the seeds, as the CI test runs).
    #[arg(long, default_value = "mixed")]
    pub log_budget: LogBudgetMix,
    /// No membership changes (by default the nemesis also adds, removes and replaces
    /// nodes, through the nodes' own reconfiguration).
    #[arg(long)]
    pub no_membership: bool,
}

pub async fn run(a: &SimArgs) -> Result<ExitCode> {
    let seeds: Vec<u64> = match a.seed {
        Some(s) => vec![s],
        None => (a.first..a.first + a.seeds).collect(),
    };
    let started = Instant::now();
    let mut totals = sim::Totals::default();
    let mut failed = 0u64;
    // Violations by checker kind, with their seeds.
    let mut violations: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for &seed in &seeds {
        let base = SimConfig::for_seed(seed, a.log_budget);
        let cfg = SimConfig {
            nodes: a.nodes.unwrap_or(base.nodes),
            clients: a.clients,
            bank_clients: a.bank_clients,
            fault_time: Duration::from_secs(a.fault_secs),
            chaos: a.chaos,
            membership: !a.no_membership,
            ..base
        };
        // `sim::run` reports panics as failures; this also catches one in the checker.
        match std::panic::catch_unwind(|| sim::run(seed, &cfg)) {
            Ok(Ok(s)) => {
                totals.add(&s);
                if a.seed.is_some() {
                    s.fault_log.iter().for_each(|l| println!("  {l}"));
                    println!(
                        "sim seed={seed} passed: {} ops, {} faults, compacted to {}, {} state \
                         fetches ({} installed)",
                        s.ops, s.faults, s.compacted, s.fetches, s.fetched
                    );
                    println!("  SQL: {}", s.sql);
                }
            }
            Ok(Err(f)) => {
                failed += 1;
                violations
                    .entry(format!("{:?}", f.kind))
                    .or_default()
                    .push(seed);
                println!("{f}");
                if a.seed.is_some() {
                    f.faults.iter().for_each(|l| println!("  {l}"));
                }
            }
            Err(_) => {
                failed += 1;
                violations.entry("Panic".into()).or_default().push(seed);
                println!("sim seed={seed} failed: panicked (see above)");
            }
        }
    }
    // The totals are of the runs that passed.
    println!(
        "sim: {} seeds run; passed: {totals}; {failed} violations, {:.1}s",
        seeds.len(),
        started.elapsed().as_secs_f64()
    );
    println!("campaign report ({} seeds run):", seeds.len());
    for (what, n) in totals.report() {
        println!("  {what:<55} {n:>10}");
    }
    println!("  {:<55} {failed:>10}", "violations");
    for (kind, seeds) in &violations {
        println!(
            "  violations: {kind:<43} {:>10}  seeds {seeds:?}",
            seeds.len()
        );
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
