//! `paxosdb bench`: a closed-loop load generator against a running cluster. N concurrent
//! workers each issue one request at a time (a get with probability `--read-ratio`, else a
//! put of `--value-size` bytes over `--keys` keys) for `--duration`, or until `--ops`
//! operations were issued, then it prints throughput and latency percentiles. Errors are
//! counted, not retried beyond the client's own retries.
//!
//! `--workload sql-insert` makes every write one single-row `INSERT` through the SQL API
//! (`paxosdb.v1.Sql/Execute`, a session each), and `--workload sql-txn` one transaction of
//! `--rows` INSERTs; both into a table `bench_rows` created first if absent. A statement
//! that fails counts as an error.

use super::{client, parse_duration, Cli};
use crate::error::Result;
use clap::Args;
use hdrhistogram::Histogram;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Concurrent workers (each has one request in flight).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// How long to run (default 10s; without a limit when --ops is given).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Stop after this many operations in total (a --duration given as well still caps
    /// the run).
    #[arg(long)]
    pub ops: Option<u64>,
    /// Fraction of operations that are (linearizable) reads, 0.0 to 1.0.
    #[arg(long, default_value_t = 0.0)]
    pub read_ratio: f64,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Reads are served stale (locally) instead of linearizable.
    #[arg(long)]
    pub stale: bool,
    /// Take keys in order (operation i uses key i mod --keys) instead of at random, so
    /// that --ops N over --keys >= N writes N distinct keys (to load a given data size).
    #[arg(long)]
    pub sequential_keys: bool,
    /// What each write is: a key-value put, one SQL INSERT, or a SQL transaction of
    /// --rows INSERTs.
    #[arg(long, value_enum, default_value_t = Workload::Kv)]
    pub workload: Workload,
    /// Rows per transaction with --workload sql-txn.
    #[arg(long, default_value_t = 100)]
    pub rows: usize,
}

/// What one write of the benchmark is.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// A key-value put.
    Kv,
    /// One single-row SQL INSERT.
    SqlInsert,
    /// One SQL transaction of --rows INSERTs.
    SqlTxn,
}

/// A SQL write of the benchmark: `rows` INSERTs of (`k`, a `size`-byte value), as one
/// transaction when more than one.
fn sql_write(k: u64, value: &[u8], rows: usize) -> crate::sql::Request {
    use crate::sql::{Params, Statement, Value};
    let statements = (0..rows.max(1))
        .map(|r| Statement {
            sql: "INSERT INTO bench_rows (k, v) VALUES (?, ?)".into(),
            params: Params::Positional(vec![
                Value::Integer((k * rows.max(1) as u64 + r as u64) as i64),
                Value::Blob(value.to_vec()),
            ]),
        })
        .collect();
    crate::sql::Request {
        statements,
        transaction: rows > 1,
    }
}

pub async fn run(cli: &Cli, a: &BenchArgs) -> Result<ExitCode> {
    let c = client(cli)?;
    // Values are slices of a random pool at varying offsets: they do not compress, so the
    // data on disk is as large as the data written (identical values would shrink to
    // almost nothing under RocksDB's block compression).
    let pool: Arc<Vec<u8>> = Arc::new(
        (0..(a.value_size * 4).max(1 << 20))
            .map(|_| rand::random::<u8>())
            .collect(),
    );
    if a.workload != Workload::Kv && a.read_ratio > 0.0 {
        return Err(crate::error::Error::InvalidInput(
            "--read-ratio applies to --workload kv only (the SQL workloads only write)".into(),
        ));
    }
    if a.workload != Workload::Kv {
        let create = crate::sql::Request {
            statements: vec![crate::sql::Statement {
                sql: "CREATE TABLE IF NOT EXISTS bench_rows (k INTEGER, v BLOB)".into(),
                params: crate::sql::Params::None,
            }],
            transaction: false,
        };
        if let Some(e) = (c.sql_execute(create).await?.into_iter()).find_map(|r| r.error) {
            return Err(crate::error::Error::InvalidInput(format!(
                "creating the benchmark table: {e}"
            )));
        }
    }
    let rows = match a.workload {
        Workload::Kv => 0,
        Workload::SqlInsert => 1,
        Workload::SqlTxn => a.rows.max(1),
    };
    let entries_before = decided(&c).await;
    let duration = match (a.duration, a.ops) {
        (Some(d), _) => d,
        (None, Some(_)) => Duration::from_secs(100 * 365 * 24 * 3600),
        (None, None) => Duration::from_secs(10),
    };
    let deadline = Instant::now() + duration;
    // Operations handed out so far, against --ops.
    let issued = Arc::new(AtomicU64::new(0));
    let max_ops = a.ops.unwrap_or(u64::MAX);
    let start = Instant::now();
    let mut tasks = Vec::new();
    let value_size = a.value_size;
    for w in 0..a.concurrency.max(1) {
        let (c, pool, read_ratio, keys, stale, issued, sequential) = (
            c.clone(),
            pool.clone(),
            a.read_ratio,
            a.keys.max(1),
            a.stale,
            issued.clone(),
            a.sequential_keys,
        );
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3).expect("histogram");
            let (mut errors, mut reads, mut writes) = (0u64, 0u64, 0u64);
            let mut n = w as u64;
            loop {
                let i = issued.fetch_add(1, Relaxed);
                if i >= max_ops || Instant::now() >= deadline {
                    break;
                }
                n = n
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let k = if sequential { i } else { n >> 16 };
                let key = format!("bench-{:08}", k % keys);
                let is_read = ((n >> 40) as f64 / (1u64 << 24) as f64) < read_ratio;
                let t = Instant::now();
                let ok = if is_read {
                    reads += 1;
                    c.get(key.as_bytes(), stale).await.is_ok()
                } else {
                    writes += 1;
                    let size = pool.len().min(value_size);
                    let off = (n >> 20) as usize % (pool.len() - size + 1);
                    let value = &pool[off..off + size];
                    if rows == 0 {
                        c.put(key.as_bytes(), value, false).await.is_ok()
                    } else {
                        let done = c.sql_execute(sql_write(i, value, rows)).await;
                        done.is_ok_and(|r| r.iter().all(|s| s.error.is_none()))
                    }
                };
                if ok {
                    let _ = h.record(t.elapsed().as_micros() as u64);
                } else {
                    errors += 1;
                }
            }
            (h, errors, reads, writes)
        }));
    }
    let mut hist = Histogram::<u64>::new(3).expect("histogram");
    let (mut errors, mut reads, mut writes) = (0, 0, 0);
    for t in tasks {
        if let Ok((h, e, r, w)) = t.await {
            let _ = hist.add(&h);
            errors += e;
            reads += r;
            writes += w;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let entries = match (entries_before, decided(&c).await) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => 0,
    };
    let ok = hist.len();
    println!(
        "workload={:?} concurrency={} value_size={} read_ratio={} duration={:.1}s",
        a.workload, a.concurrency, a.value_size, a.read_ratio, secs
    );
    if rows > 1 {
        println!(
            "rows per transaction={rows}: {:.0} rows/s",
            ok as f64 * rows as f64 / secs
        );
    }
    println!(
        "ops={} ({} reads, {} writes) errors={} throughput={:.0} ops/s",
        ok,
        reads,
        writes,
        errors,
        ok as f64 / secs
    );
    if entries > 0 {
        println!(
            "log entries={} (one fsync per node each): {:.1} ops per entry",
            entries,
            ok as f64 / entries as f64
        );
    }
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "latency ms: p50={:.2} p90={:.2} p99={:.2} p99.9={:.2} max={:.2}",
        ms(hist.value_at_quantile(0.5)),
        ms(hist.value_at_quantile(0.9)),
        ms(hist.value_at_quantile(0.99)),
        ms(hist.value_at_quantile(0.999)),
        ms(hist.max())
    );
    Ok(if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The highest decided index any endpoint reports.
async fn decided(c: &crate::client::Client) -> Option<u64> {
    let mut best = None;
    for i in 0..c.endpoints().len() {
        if let Ok(st) = c.status_of(i).await {
            best = best.max(Some(st.decided_index));
        }
    }
    best
}
