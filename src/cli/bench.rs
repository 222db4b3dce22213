//! `paxosdb bench`: a closed-loop load generator against a running cluster. N concurrent
//! workers each issue one request at a time (a get with probability `--read-ratio`, else a
//! put of `--value-size` bytes over `--keys` keys) for `--duration`, or until `--ops`
//! operations were issued, then it prints throughput and latency percentiles. Errors are
//! counted, not retried beyond the client's own retries.

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
                    c.put(key.as_bytes(), &pool[off..off + size], false)
                        .await
                        .is_ok()
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
        "concurrency={} value_size={} read_ratio={} duration={:.1}s",
        a.concurrency, a.value_size, a.read_ratio, secs
    );
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
