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
//!
//! `--target etcd` drives an etcd cluster instead, through etcd's own v3 gRPC API
//! (`etcdserverpb.KV`: `Put` for a write, `Range` for a read, linearizable unless
//! `--stale`), at the first of `--endpoints`, with the same workers, keys, values and
//! measurement, so that both systems are measured by one load generator. The client is
//! [`etcdpb`], generated from the subset of etcd's protocol in `proto/etcd/kv.proto`;
//! like paxosdb's client, all workers share one HTTP/2 connection.
//!
//! # Invariants
//!
//! - Only answered operations enter the latency histogram and the throughput; failed ones
//!   are counted as errors, and any error makes the exit status a failure.
//! - Every target gets the same request sequence for the same flags (keys and read/write
//!   choices come from one per-worker generator), so two targets differ only in who
//!   answers.

use super::{client, parse_duration, Cli};
use crate::error::Result;
use clap::Args;
use hdrhistogram::Histogram;
use std::io::IsTerminal;
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
    /// The system driven: paxosdb (every endpoint of --endpoints), or an etcd cluster
    /// through etcd's v3 gRPC KV API at the first endpoint (--workload kv only).
    #[arg(long, value_enum, default_value_t = Target::Paxosdb)]
    pub target: Target,
}

/// The system a benchmark drives.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// paxosdb, through its own client.
    Paxosdb,
    /// etcd (v3 API): Put, and Range (serializable with --stale, else linearizable).
    Etcd,
}

/// The client stubs of the part of etcd's v3 API in `proto/etcd/kv.proto`.
pub mod etcdpb {
    tonic::include_proto!("etcdserverpb");
}

/// The client one worker sends its operations through.
#[derive(Clone)]
enum Driver {
    Paxosdb(crate::client::Client),
    Etcd(etcdpb::kv_client::KvClient<tonic::transport::Channel>),
}

impl Driver {
    /// A connection to the first endpoint's etcd (plain gRPC, as etcd listens without
    /// TLS by default).
    fn etcd(endpoint: &str) -> Result<Driver> {
        let bare = endpoint
            .split_once("://")
            .map_or(endpoint, |(_, rest)| rest);
        let ep = tonic::transport::Endpoint::from_shared(format!("http://{bare}"))
            .map_err(|e| crate::error::Error::invalid(format!("endpoint {endpoint:?}: {e}")))?
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(6))
            .tcp_nodelay(true);
        Ok(Driver::Etcd(etcdpb::kv_client::KvClient::new(
            ep.connect_lazy(),
        )))
    }

    /// Reads `key`; true if answered.
    async fn get(&self, key: &[u8], stale: bool) -> bool {
        match self {
            Driver::Paxosdb(c) => c.get(key, stale).await.is_ok(),
            Driver::Etcd(c) => {
                let req = etcdpb::RangeRequest {
                    key: key.to_vec(),
                    serializable: stale,
                    ..Default::default()
                };
                c.clone().range(req).await.is_ok()
            }
        }
    }

    /// Writes `key` (a SQL write of `rows` rows numbered from `i` instead, for paxosdb
    /// with rows > 0); true if answered without error.
    async fn write(&self, key: &[u8], value: &[u8], i: u64, rows: usize) -> bool {
        match self {
            Driver::Paxosdb(c) if rows == 0 => c.put(key, value, false).await.is_ok(),
            Driver::Paxosdb(c) => {
                let done = c.sql_execute(sql_write(i, value, rows)).await;
                done.is_ok_and(|r| r.iter().all(|s| s.error.is_none()))
            }
            Driver::Etcd(c) => {
                let req = etcdpb::PutRequest {
                    key: key.to_vec(),
                    value: value.to_vec(),
                    ..Default::default()
                };
                c.clone().put(req).await.is_ok()
            }
        }
    }
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

/// While the run lasts, shows on stderr how many operations were started and the rate
/// since the last look: one line rewritten every second on a terminal, a line every 10 s
/// otherwise (a log).
async fn report_progress(issued: Arc<AtomicU64>, max_ops: u64, start: Instant) {
    let mut progress = super::ProgressLine::new();
    let mut last = (0u64, start);
    loop {
        tokio::time::sleep(progress.every()).await;
        let n = issued.load(Relaxed).min(max_ops);
        let now = Instant::now();
        let rate = (n - last.0) as f64 / now.duration_since(last.1).as_secs_f64();
        progress.print(&format!(
            "bench: {:.0}s, {n} operations started, {rate:.0} ops/s now",
            now.duration_since(start).as_secs_f64()
        ));
        last = (n, now);
    }
}

pub async fn run(cli: &Cli, a: &BenchArgs) -> Result<ExitCode> {
    if a.target == Target::Etcd && a.workload != Workload::Kv {
        return Err(crate::error::Error::InvalidInput(
            "--target etcd runs --workload kv only (etcd has no SQL)".into(),
        ));
    }
    let (driver, c) = match a.target {
        Target::Paxosdb => {
            let c = client(cli)?;
            (Driver::Paxosdb(c.clone()), Some(c))
        }
        Target::Etcd => {
            let endpoints = super::endpoints(cli)?;
            let first = endpoints
                .first()
                .ok_or_else(|| crate::error::Error::invalid("at least one endpoint is needed"))?;
            (Driver::etcd(first)?, None)
        }
    };
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
    if let (Some(c), true) = (&c, a.workload != Workload::Kv) {
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
    let entries_before = match &c {
        Some(c) => decided(c).await,
        None => None,
    };
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
            driver.clone(),
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
                    c.get(key.as_bytes(), stale).await
                } else {
                    writes += 1;
                    let size = pool.len().min(value_size);
                    let off = (n >> 20) as usize % (pool.len() - size + 1);
                    c.write(key.as_bytes(), &pool[off..off + size], i, rows)
                        .await
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
    let progress = tokio::spawn(report_progress(issued.clone(), max_ops, start));
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
    progress.abort();
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[2K");
    }
    let secs = start.elapsed().as_secs_f64();
    let entries_after = match &c {
        Some(c) => decided(c).await,
        None => None,
    };
    let entries = match (entries_before, entries_after) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => 0,
    };
    let ok = hist.len();
    println!(
        "target={:?} workload={:?} concurrency={} value_size={} read_ratio={} duration={:.1}s",
        a.target, a.workload, a.concurrency, a.value_size, a.read_ratio, secs
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
