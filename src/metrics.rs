//! Process metrics, rendered in the Prometheus text format by the HTTP `/metrics` endpoint.
//!
//! One [`Metrics`] per server, shared as `Arc<Metrics>` (in [`crate::server::ServerInfo`]).
//! Everything is atomics and fixed-bucket histograms, so recording is a few relaxed atomic
//! adds and never blocks; only the first request of a new (protocol, operation) pair takes
//! a write lock to create its counters.
//!
//! Who feeds what:
//! - every protocol server calls [`Metrics::observe_request`] once per request (gRPC,
//!   HTTP and RESP, the latter by command name);
//! - the node core calls [`Metrics::observe_core`] once per loop round (decided and applied
//!   index, leader; a change of known leader counts as a leader change);
//! - the log storage records each synced write's latency ([`Metrics::observe_fsync`]) and
//!   the number of entries in the log ([`Metrics::set_log_entries`]);
//! - the HTTP handler measures some gauges at scrape time and passes them to
//!   [`Metrics::render`] (e.g. the log's on-disk size, [`cf_disk_bytes`]).

use crate::api::tls::Protocol;
use crate::command::NodeId;
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Upper bounds (seconds) of the histogram buckets; the last bucket is `+Inf`.
pub const BUCKETS: [f64; 15] = [
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A latency histogram with the fixed [`BUCKETS`].
#[derive(Default)]
pub struct Histogram {
    /// Per-bucket (not cumulative) counts; index `BUCKETS.len()` is `+Inf`.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_nanos
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// Appends the `_bucket`, `_sum` and `_count` lines; `labels` is `k="v",…` or empty.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        cumulative += self.buckets[BUCKETS.len()].load(Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
        );
        let braces = |l: &str| {
            if l.is_empty() {
                String::new()
            } else {
                format!("{{{l}}}")
            }
        };
        let sum = self.sum_nanos.load(Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
        let _ = writeln!(out, "{name}_count{} {cumulative}", braces(labels));
    }
}

/// Counters of one (protocol, operation) pair.
#[derive(Default)]
pub struct RequestStats {
    pub errors: AtomicU64,
    pub latency: Histogram,
}

/// Every metric of one server process.
#[derive(Default)]
pub struct Metrics {
    requests: RwLock<BTreeMap<(&'static str, &'static str), Arc<RequestStats>>>,
    pub decided_index: AtomicU64,
    pub applied_index: AtomicU64,
    /// The leader this node last knew, 0 for none.
    pub leader: AtomicU64,
    pub is_leader: AtomicU64,
    pub leader_changes: AtomicU64,
    /// The last established leader, 0 for none yet.
    established_leader: AtomicU64,
    pub fsync: Histogram,
    pub log_entries: AtomicU64,
    /// Peer messages not sent because their queue was full (OmniPaxos resends).
    pub peer_dropped: AtomicU64,
    /// Peer messages not sent because they were over the frame limit.
    pub peer_oversized: AtomicU64,
    /// Client connections of each listener, by [`Protocol`] (see [`Metrics::listener`]).
    listeners: [ListenerStats; 3],
    /// State transfers this node started to fetch, installed, and that failed.
    pub transfers_started: AtomicU64,
    pub transfers_installed: AtomicU64,
    pub transfers_failed: AtomicU64,
    /// 1 while this node fetches a state.
    pub transfer_fetching: AtomicU64,
    /// Bytes of state received by fetches (the current one included, as it goes).
    pub transfer_bytes_received: AtomicU64,
    /// States this node sent to peers (whole), and the bytes it sent (as they go).
    pub transfers_sent: AtomicU64,
    pub transfer_bytes_sent: AtomicU64,
    /// The bytes queued for each peer (its sender's queue), by peer.
    peer_queues: Mutex<BTreeMap<NodeId, Arc<AtomicU64>>>,
    /// What happened to this node lately, oldest first (at most [`EVENTS_KEPT`]).
    events: Mutex<VecDeque<NodeEvent>>,
    /// This node's request counters, sampled every [`SAMPLE_EVERY`] (at most
    /// [`SAMPLES_KEPT`]), oldest first.
    samples: Mutex<VecDeque<Sample>>,
}

/// Operations that only look at the node (status, metrics, the status page's own
/// polling): left out of the samples, which show the work the node serves.
const LOOKING_ON: [&str; 9] = [
    "status", "metrics", "healthz", "readyz", "openapi", "page", "events", "history", "backup",
];

/// Events a node keeps for the status page (`/v1/events`).
pub const EVENTS_KEPT: usize = 64;
/// How often the request counters are sampled for `/v1/history`.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Samples kept: ten minutes.
pub const SAMPLES_KEPT: usize = 120;

/// Something that happened to a node: a leader change, a state transfer, a membership
/// change.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NodeEvent {
    /// Milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// `leader`, `transfer` or `membership`.
    pub kind: &'static str,
    pub message: String,
}

/// The request counters at one moment, over every protocol and operation.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Sample {
    pub unix_ms: u64,
    pub requests: u64,
    pub errors: u64,
    /// Seconds spent in requests, summed.
    pub latency_sum_s: f64,
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The connection counters of one client listener.
#[derive(Default)]
pub struct ListenerStats {
    /// Connections open now.
    pub open: AtomicU64,
    /// Connections refused at the connection limit.
    pub refused: AtomicU64,
    /// Connections closed for being idle (or slow to send a request's headers).
    pub timed_out: AtomicU64,
}

/// Every client listener, in the order of [`Metrics::listener`]'s array.
const LISTENERS: [(Protocol, &str); 3] = [
    (Protocol::Grpc, "grpc"),
    (Protocol::Http, "http"),
    (Protocol::Resp, "resp"),
];

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics::default())
    }

    /// The connection counters of the `p` listener.
    pub fn listener(&self, p: Protocol) -> &ListenerStats {
        let i = LISTENERS
            .iter()
            .position(|(q, _)| *q == p)
            .expect("every protocol");
        &self.listeners[i]
    }

    /// Client connections open now, over every listener.
    pub fn connections(&self) -> u64 {
        self.listeners.iter().map(|l| l.open.load(Relaxed)).sum()
    }

    /// Shows the bytes queued for `peer` (its sender's counter) in the metrics.
    pub fn peer_queue(&self, peer: NodeId, bytes: Arc<AtomicU64>) {
        self.peer_queues.lock().unwrap().insert(peer, bytes);
    }

    /// Keeps only the peer queues of the peers `keep` says are still members.
    pub fn retain_peer_queues(&self, keep: impl Fn(NodeId) -> bool) {
        self.peer_queues.lock().unwrap().retain(|id, _| keep(*id));
    }

    /// Records an event for the status page (the oldest goes beyond [`EVENTS_KEPT`]).
    pub fn event(&self, kind: &'static str, message: String) {
        let mut events = self.events.lock().unwrap();
        if events.len() == EVENTS_KEPT {
            events.pop_front();
        }
        events.push_back(NodeEvent {
            unix_ms: unix_ms(),
            kind,
            message,
        });
    }

    /// The events kept, oldest first.
    pub fn events(&self) -> Vec<NodeEvent> {
        self.events.lock().unwrap().iter().cloned().collect()
    }

    /// Samples the request counters now (the server does every [`SAMPLE_EVERY`]).
    pub fn sample(&self) {
        let stats: Vec<Arc<RequestStats>> = (self.requests.read().unwrap().iter())
            .filter(|((_, op), _)| !LOOKING_ON.contains(op))
            .map(|(_, s)| s.clone())
            .collect();
        let s = Sample {
            unix_ms: unix_ms(),
            requests: stats.iter().map(|s| s.latency.count()).sum(),
            errors: stats.iter().map(|s| s.errors.load(Relaxed)).sum(),
            latency_sum_s: (stats.iter())
                .map(|s| s.latency.sum_nanos.load(Relaxed) as f64 / 1e9)
                .sum(),
        };
        let mut samples = self.samples.lock().unwrap();
        if samples.len() == SAMPLES_KEPT {
            samples.pop_front();
        }
        samples.push_back(s);
    }

    /// The samples kept, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().unwrap().iter().copied().collect()
    }

    /// Records one served request. `ok` is false when the request ended in an error (an
    /// expected answer such as a missing key or a failed compare is not an error).
    pub fn observe_request(&self, protocol: &'static str, op: &'static str, d: Duration, ok: bool) {
        let stats = self.stats(protocol, op);
        stats.latency.observe(d);
        if !ok {
            stats.errors.fetch_add(1, Relaxed);
        }
    }

    /// Requests of `protocol` recorded so far, every operation together.
    pub fn requests_of(&self, protocol: &str) -> u64 {
        (self.requests.read().unwrap().iter())
            .filter(|((p, _), _)| *p == protocol)
            .map(|(_, s)| s.latency.count())
            .sum()
    }

    /// The counters of one (protocol, operation) pair, created on first use.
    pub fn stats(&self, protocol: &'static str, op: &'static str) -> Arc<RequestStats> {
        if let Some(s) = self.requests.read().unwrap().get(&(protocol, op)) {
            return s.clone();
        }
        self.requests
            .write()
            .unwrap()
            .entry((protocol, op))
            .or_default()
            .clone()
    }

    /// Runs `fut` and records it as one request of `protocol`/`op`; `Err` counts as an error.
    pub async fn timed<T, E>(
        &self,
        protocol: &'static str,
        op: &'static str,
        fut: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let start = std::time::Instant::now();
        let r = fut.await;
        self.observe_request(protocol, op, start.elapsed(), r.is_ok());
        r
    }

    /// The core's view, once per loop round. `leader` is the node this one promised to
    /// follow and whether that leader is established (accepting); a leader change is an
    /// established leader other than the last established one (the ballots a node promises
    /// during an election do not count).
    pub fn observe_core(
        &self,
        decided: u64,
        applied: u64,
        leader: Option<(NodeId, bool)>,
        me: NodeId,
    ) {
        self.decided_index.store(decided, Relaxed);
        self.applied_index.store(applied, Relaxed);
        let l = leader.map_or(0, |(l, _)| l);
        self.leader.store(l, Relaxed);
        if let Some((l, true)) = leader {
            if self.established_leader.swap(l, Relaxed) != l {
                self.leader_changes.fetch_add(1, Relaxed);
                self.event("leader", format!("node {l} leads"));
            }
        }
        self.is_leader
            .store(u64::from(leader == Some((me, true))), Relaxed);
    }

    pub fn observe_fsync(&self, d: Duration) {
        self.fsync.observe(d);
    }

    pub fn set_log_entries(&self, n: u64) {
        self.log_entries.store(n, Relaxed);
    }

    /// Renders everything in the Prometheus text exposition format (version 0.0.4).
    /// `extra` values (name, help, value) are appended, for values measured at scrape
    /// time: counters if the name ends in `_total`, gauges otherwise.
    pub fn render(&self, extra: &[(&str, &str, u64)]) -> String {
        let mut out = String::with_capacity(8192);
        let requests: Vec<_> = self
            .requests
            .read()
            .unwrap()
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        let label = |(p, o): (&str, &str)| format!("protocol=\"{p}\",op=\"{o}\"");
        header(
            &mut out,
            "paxosdb_requests_total",
            "counter",
            "Requests served, by protocol and operation.",
        );
        for (k, s) in &requests {
            let _ = writeln!(
                out,
                "paxosdb_requests_total{{{}}} {}",
                label(*k),
                s.latency.count()
            );
        }
        header(
            &mut out,
            "paxosdb_request_errors_total",
            "counter",
            "Requests that ended in an error (a missing key or failed compare is not one).",
        );
        for (k, s) in &requests {
            let e = s.errors.load(Relaxed);
            let _ = writeln!(out, "paxosdb_request_errors_total{{{}}} {e}", label(*k));
        }
        header(
            &mut out,
            "paxosdb_request_duration_seconds",
            "histogram",
            "Request latency, by protocol and operation.",
        );
        for (k, s) in &requests {
            s.latency
                .render(&mut out, "paxosdb_request_duration_seconds", &label(*k));
        }
        let gauges: [(&str, &str, &str, u64); 12] = [
            (
                "paxosdb_decided_index",
                "gauge",
                "Log index up to which entries are decided.",
                self.decided_index.load(Relaxed),
            ),
            (
                "paxosdb_applied_index",
                "gauge",
                "Log index up to which entries are applied here.",
                self.applied_index.load(Relaxed),
            ),
            (
                "paxosdb_leader_id",
                "gauge",
                "The leader this node knows (0 = none).",
                self.leader.load(Relaxed),
            ),
            (
                "paxosdb_is_leader",
                "gauge",
                "1 when this node is the leader.",
                self.is_leader.load(Relaxed),
            ),
            (
                "paxosdb_leader_changes_total",
                "counter",
                "Times this node saw a new established leader.",
                self.leader_changes.load(Relaxed),
            ),
            (
                "paxosdb_log_entries",
                "gauge",
                "Entries in this node's replicated log storage.",
                self.log_entries.load(Relaxed),
            ),
            (
                "paxosdb_peer_messages_dropped_total",
                "counter",
                "Peer messages not sent because the peer's queue was full.",
                self.peer_dropped.load(Relaxed),
            ),
            (
                "paxosdb_peer_messages_oversized_total",
                "counter",
                "Peer messages not sent because they were over the frame limit.",
                self.peer_oversized.load(Relaxed),
            ),
            (
                "paxosdb_state_transfer_fetching",
                "gauge",
                "1 while this node fetches a peer's state.",
                self.transfer_fetching.load(Relaxed),
            ),
            (
                "paxosdb_state_transfer_received_bytes_total",
                "counter",
                "Bytes of state this node received from peers (the fetch under way included).",
                self.transfer_bytes_received.load(Relaxed),
            ),
            (
                "paxosdb_state_transfers_sent_total",
                "counter",
                "Whole states this node sent to peers.",
                self.transfers_sent.load(Relaxed),
            ),
            (
                "paxosdb_state_transfer_sent_bytes_total",
                "counter",
                "Bytes of state this node sent to peers (transfers under way included).",
                self.transfer_bytes_sent.load(Relaxed),
            ),
        ];
        for (name, kind, help, v) in gauges {
            header(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {v}");
        }
        header(
            &mut out,
            "paxosdb_peer_queue_bytes",
            "gauge",
            "Bytes of messages queued for each peer, not yet written to its connection.",
        );
        for (peer, bytes) in self.peer_queues.lock().unwrap().iter() {
            let _ = writeln!(
                out,
                "paxosdb_peer_queue_bytes{{peer=\"{peer}\"}} {}",
                bytes.load(Relaxed)
            );
        }
        header(
            &mut out,
            "paxosdb_state_transfers_total",
            "counter",
            "State fetches of this node, by outcome (started, installed, failed).",
        );
        for (outcome, v) in [
            ("started", &self.transfers_started),
            ("installed", &self.transfers_installed),
            ("failed", &self.transfers_failed),
        ] {
            let v = v.load(Relaxed);
            let _ = writeln!(
                out,
                "paxosdb_state_transfers_total{{outcome=\"{outcome}\"}} {v}"
            );
        }
        type Field = fn(&ListenerStats) -> &AtomicU64;
        let per_listener: [(&str, &str, &str, Field); 3] = [
            (
                "paxosdb_client_connections",
                "gauge",
                "Client connections open now, by listener.",
                |l| &l.open,
            ),
            (
                "paxosdb_client_connections_refused_total",
                "counter",
                "Client connections refused at the connection limit, by listener.",
                |l| &l.refused,
            ),
            (
                "paxosdb_client_connections_timed_out_total",
                "counter",
                "Client connections closed as idle or too slow to send headers, by listener.",
                |l| &l.timed_out,
            ),
        ];
        for (name, kind, help, field) in per_listener {
            header(&mut out, name, kind, help);
            for ((_, listener), l) in LISTENERS.iter().zip(&self.listeners) {
                let v = field(l).load(Relaxed);
                let _ = writeln!(out, "{name}{{listener=\"{listener}\"}} {v}");
            }
        }
        header(
            &mut out,
            "paxosdb_fsync_duration_seconds",
            "histogram",
            "Latency of synced (fsynced) log writes.",
        );
        self.fsync
            .render(&mut out, "paxosdb_fsync_duration_seconds", "");
        for (name, help, v) in extra {
            let kind = if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            header(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {v}");
        }
        out
    }
}

/// Bytes one RocksDB column family takes: its SST files plus its memtables (the data not
/// flushed yet), from RocksDB's properties `rocksdb.total-sst-files-size` and
/// `rocksdb.cur-size-all-mem-tables`; 0 for an unknown column family. The write-ahead
/// log, shared by all column families, is not counted.
pub fn cf_disk_bytes(db: &rocksdb::DB, cf: &str) -> u64 {
    let Some(h) = db.cf_handle(cf) else {
        return 0;
    };
    [
        "rocksdb.total-sst-files-size",
        "rocksdb.cur-size-all-mem-tables",
    ]
    .into_iter()
    .filter_map(|p| db.property_int_value_cf(h, p).ok().flatten())
    .sum()
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// User plus system CPU time of this process, in seconds (`/proc/self/stat`, whose times
/// are in USER_HZ ticks: 100 a second on Linux).
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime): (u64, u64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
    Some((utime + stime) as f64 / 100.0)
}

/// The process figures Prometheus' client libraries export under these standard names,
/// measured now, and the build: appended to `/metrics`.
pub fn render_process() -> String {
    let mut out = String::new();
    let mut line = |name: &str, kind: &str, help: &str, value: String| {
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        );
    };
    if let Some(rss) = process_rss_bytes() {
        line(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory of the node process, in bytes.",
            rss.to_string(),
        );
    }
    if let Some(cpu) = process_cpu_seconds() {
        line(
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time of the node process, in seconds.",
            format!("{cpu:.2}"),
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        line(
            "process_open_fds",
            "gauge",
            "Open file descriptors of the node process.",
            fds.count().to_string(),
        );
    }
    let _ = write!(
        out,
        "# HELP paxosdb_build_info Always 1; the running binary's version is its label.\n\
         # TYPE paxosdb_build_info gauge\npaxosdb_build_info{{version=\"{}\"}} 1\n",
        env!("CARGO_PKG_VERSION")
    );
    out
}

/// The resident memory of this process in bytes (`VmRSS` of `/proc/self/status`), where
/// the system has it.
pub fn process_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let mut s = String::new();
        h.render(&mut s, "x", "");
        assert!(s.contains("x_bucket{le=\"0.0001\"} 1\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"0.005\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"10\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"+Inf\"} 3\n"), "{s}");
        assert!(s.contains("x_count 3\n"), "{s}");
    }

    #[test]
    fn render_has_requests_and_core_gauges() {
        let m = Metrics::new();
        m.observe_request("http", "get", Duration::from_millis(2), true);
        m.observe_request("http", "get", Duration::from_millis(2), false);
        m.observe_core(7, 6, Some((2, false)), 1);
        m.observe_core(7, 6, Some((2, true)), 1);
        m.observe_core(8, 8, Some((3, false)), 1);
        m.observe_core(8, 8, Some((3, true)), 1);
        m.observe_core(8, 8, Some((3, true)), 1);
        m.observe_core(8, 8, None, 1);
        let s = m.render(&[("paxosdb_data_dir_bytes", "Bytes on disk.", 42)]);
        assert!(
            s.contains("paxosdb_requests_total{protocol=\"http\",op=\"get\"} 2\n"),
            "{s}"
        );
        assert!(s.contains("paxosdb_request_errors_total{protocol=\"http\",op=\"get\"} 1\n"));
        assert!(s.contains(
            "paxosdb_request_duration_seconds_bucket{protocol=\"http\",op=\"get\",le=\"+Inf\"} 2\n"
        ));
        assert!(s.contains("paxosdb_decided_index 8\n"));
        assert!(s.contains("paxosdb_leader_changes_total 2\n"), "{s}");
        assert!(s.contains("paxosdb_data_dir_bytes 42\n"));
        assert!(s.contains("# TYPE paxosdb_data_dir_bytes gauge\n"));
        // Every sample line is `name{labels} value` or `name value` with a numeric value.
        for line in s.lines().filter(|l| !l.starts_with('#')) {
            let v = line.rsplit(' ').next().unwrap();
            assert!(v.parse::<f64>().is_ok(), "bad sample line {line:?}");
        }
    }

    #[test]
    fn cf_disk_bytes_counts_memtables_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::storage::db::open_db(dir.path()).unwrap();
        let log = crate::storage::db::CF_LOG;
        let empty = cf_disk_bytes(&db, log);
        let cf = db.cf_handle(log).unwrap();
        for i in 0u64..1000 {
            db.put_cf(cf, i.to_be_bytes(), [7u8; 100]).unwrap();
        }
        let in_memory = cf_disk_bytes(&db, log);
        assert!(in_memory > empty + 50_000, "{empty} -> {in_memory}");
        db.flush_cf(cf).unwrap();
        assert!(cf_disk_bytes(&db, log) > 0);
        assert_eq!(cf_disk_bytes(&db, "no-such-cf"), 0);
    }
}
