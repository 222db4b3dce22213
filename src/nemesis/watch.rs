//! The watchers of a nemesis run (`--watchers N`, none by default): each follows the
//! changes of the key space the key-value workload writes (the prefix `r/` of the
//! register workload, `set/` of the set workload) through the faults, from revision 1,
//! and at the end its stream must be exactly the cluster's history of that key space.
//!
//! **Watchers.** Watcher `w` (0-based) starts on the `w`-th member. Even watchers keep
//! their own resume loop over the raw `paxosdb.v1.Kv/Watch` stream: one node at a time,
//! and when the stream breaks (the node was killed, its connection dropped, it said
//! nothing, not even a progress note, for [`crate::client::WATCH_IDLE_LIMIT`]) they open
//! it again on the next member, from the last `next_revision` received, counting each
//! reopen as a reconnect; every change is kept with the node that sent it. Odd watchers
//! use the Rust client's [`Client::watch`] over every member, which resumes by itself
//! across broken streams (those reopens are the client's own and not counted); when its
//! stream ends with an error, the watcher watches again from the stream's
//! `next_revision` with a client for the current members (a restart, counted). Both
//! trust what they are handed (the revision to resume from included), as a client does,
//! so a node that skips or repeats a change shows up in the stream.
//!
//! **Checks** ([`finish`]), after the cluster is healed and the replicas agree, with no
//! write in flight: the revision `R` is the start of a watch "from now" on the reference
//! node (the first final member); the reference is that node's whole history, every key
//! from revision 1 until past `R`, read over a watch; each watcher goes on until it is
//! past `R` or has every change of its key space the reference holds (a watch only moves
//! past revisions without a change of its keys with the next change or progress note),
//! then stops. Then, with [`crate::sim::watch_check`]: the reference holds every revision
//! from 1 to `R` and replays to the reference node's data (a linearizable scan of every
//! key, with versions); every write the key-value workload got acknowledged is in it; and
//! every watcher's stream is exactly the reference's changes of its key space below the
//! revision it would resume from: in order, none missing, none twice, none made up.
//!
//! # Invariants
//!
//! - A watcher never makes up where to resume: it asks for exactly the last
//!   `next_revision` it was handed (1 at the start), so what it received is what the
//!   nodes sent.
//! - Every change a watcher received is checked; a watcher that could not be stopped
//!   cleanly, a reference that could not be read, or a watch refused for good (the
//!   history compacted past it, a refusal) is a violation, never a pass.

use super::workload::Shared;
use super::Workload;
use crate::api::pb;
use crate::check::Operation;
use crate::client::{Client, ClientOptions, WATCH_IDLE_LIMIT};
use crate::command::ScanRange;
use crate::kv::{Change, ChangeKind, WatchFilter};
use crate::sim::watch_check::{self, show};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// The revision the watchers start from.
pub const START: u64 = 1;
/// How long one open of a watch may take (connect, call, first response).
const OPEN_TIMEOUT: Duration = Duration::from_secs(2);
/// The pause before opening again after a failed open or a broken stream.
const REOPEN_PAUSE: Duration = Duration::from_millis(100);
/// How long the end waits for the watchers to catch up with the reference.
const CATCH_UP: Duration = Duration::from_secs(60);
/// How long reading the reference may take.
const REFERENCE_TIMEOUT: Duration = Duration::from_secs(60);

/// The prefix of the keys the key-value workload writes.
pub fn prefix(workload: Workload) -> Vec<u8> {
    match workload {
        Workload::Register => b"r/".to_vec(),
        Workload::Set => b"set/".to_vec(),
    }
}

/// What one watcher did and received.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WatcherRecord {
    /// `stream` (its own resume loop over the raw gRPC stream) or `client`
    /// ([`Client::watch`]).
    pub how: String,
    /// Where its changes came from: the nodes' endpoints (raw streams), or `client`.
    pub sources: Vec<String>,
    /// Every change received, with the index of its source in `sources`.
    pub changes: Vec<(usize, Change)>,
    /// The revision it would resume from: every revision below was covered.
    pub next: u64,
    /// Streams opened (each one served, its first response received).
    pub opens: u64,
    /// Raw streams opened again after one broke (on the next member).
    pub reconnects: u64,
    /// Client watches started again after the client's stream ended with an error.
    pub restarts: u64,
    /// Opens that failed (the node down, cut off, refusing).
    pub open_failures: u64,
    /// Progress notes and starts received (responses without changes).
    pub notes: u64,
    /// An error that ended the watch for good (a compacted history, a refusal).
    pub fatal: Option<String>,
}

impl WatcherRecord {
    fn source(&mut self, name: &str) -> usize {
        match self.sources.iter().position(|s| s == name) {
            Some(i) => i,
            None => {
                self.sources.push(name.to_string());
                self.sources.len() - 1
            }
        }
    }
}

/// The watchers' shared record, and the signal that stops them.
pub struct WatchLog {
    pub prefix: Vec<u8>,
    pub watchers: Vec<Mutex<WatcherRecord>>,
    stop: tokio::sync::watch::Sender<bool>,
    /// Woken whenever a watcher's `next` moves (the end waits for them to catch up).
    moved: tokio::sync::Notify,
}

impl WatchLog {
    /// The record of `n` watchers of the keys under `prefix`.
    pub fn new(n: usize, prefix: Vec<u8>) -> WatchLog {
        let record = |w: usize| {
            Mutex::new(WatcherRecord {
                how: if w.is_multiple_of(2) {
                    "stream"
                } else {
                    "client"
                }
                .into(),
                next: START,
                ..WatcherRecord::default()
            })
        };
        WatchLog {
            prefix,
            watchers: (0..n).map(record).collect(),
            stop: tokio::sync::watch::channel(false).0,
            moved: tokio::sync::Notify::new(),
        }
    }

    fn filter(&self) -> WatchFilter {
        WatchFilter::Range(ScanRange::Prefix(self.prefix.clone()))
    }

    fn next(&self, w: usize) -> u64 {
        self.watchers[w].lock().unwrap().next
    }

    /// Records what watcher `w` received from `source`, and where it resumes.
    fn received(&self, w: usize, source: &str, changes: Vec<Change>, next: u64) {
        let mut r = self.watchers[w].lock().unwrap();
        if changes.is_empty() {
            r.notes += 1;
        }
        let s = r.source(source);
        r.changes.extend(changes.into_iter().map(|c| (s, c)));
        r.next = next;
        drop(r);
        self.moved.notify_waiters();
    }

    fn update(&self, w: usize, f: impl FnOnce(&mut WatcherRecord)) {
        f(&mut self.watchers[w].lock().unwrap());
    }
}

/// The watchers' tasks: aborted when dropped (a run that ends early leaves none
/// behind); [`finish`] stops them cleanly.
pub struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Starts the watchers of `log` (see the module docs), until [`finish`] stops them.
pub fn start(shared: &Arc<Shared>, log: &Arc<WatchLog>) -> Tasks {
    Tasks(
        (0..log.watchers.len())
            .map(|w| tokio::spawn(worker(shared.clone(), log.clone(), w)))
            .collect(),
    )
}

/// Watcher `w`'s loop, until [`finish`] stops it (see the module docs).
async fn worker(shared: Arc<Shared>, log: Arc<WatchLog>, w: usize) {
    let mut stop = log.stop.subscribe();
    let run = async {
        if w.is_multiple_of(2) {
            stream_watcher(&shared, &log, w).await
        } else {
            client_watcher(&shared, &log, w).await
        }
    };
    tokio::select! {
        () = run => {}
        _ = stop.wait_for(|s| *s) => {}
    }
}

/// The gRPC channel to `endpoint` (lazily connected, reconnecting by itself).
fn channel(endpoint: &str) -> Result<Channel, String> {
    let c = Client::with_options(
        &[endpoint],
        ClientOptions {
            timeout: OPEN_TIMEOUT,
            attempt_timeout: OPEN_TIMEOUT,
            tls: None,
        },
    )
    .map_err(|e| e.to_string())?;
    c.channel(0).ok_or_else(|| "no channel".to_string())
}

/// Whether a watch refused with `status` can be opened again elsewhere.
fn retryable(status: &tonic::Status) -> bool {
    use tonic::Code;
    !matches!(
        status.code(),
        Code::OutOfRange
            | Code::InvalidArgument
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::Unimplemented
    )
}

/// Opens the watch of `target` from `from` on `ch` and reads its first response (the
/// start). `Err((why, retryable))`.
async fn open(
    ch: Channel,
    target: pb::watch_request::Target,
    from: u64,
) -> Result<(tonic::Streaming<pb::WatchResponse>, pb::WatchResponse), (String, bool)> {
    let call = async {
        let req = pb::WatchRequest {
            target: Some(target),
            from_revision: from,
        };
        let mut kv = pb::kv_client::KvClient::new(ch).max_decoding_message_size(64 << 20);
        let mut stream = kv
            .watch(req)
            .await
            .map_err(|s| (s.to_string(), retryable(&s)))?
            .into_inner();
        match stream.message().await {
            Ok(Some(first)) => Ok((stream, first)),
            Ok(None) => Err(("the node ended the stream at once".into(), true)),
            Err(s) => Err((s.to_string(), retryable(&s))),
        }
    };
    tokio::time::timeout(OPEN_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| Err((format!("no first response within {OPEN_TIMEOUT:?}"), true)))
}

/// The changes of a response.
fn changes_of(resp: pb::WatchResponse) -> Result<(Vec<Change>, u64), String> {
    let mut out = Vec::with_capacity(resp.events.len());
    for e in resp.events {
        let kind = match pb::watch_event::Kind::try_from(e.kind) {
            Ok(pb::watch_event::Kind::Put) => ChangeKind::Put,
            Ok(pb::watch_event::Kind::Delete) => ChangeKind::Delete,
            Ok(pb::watch_event::Kind::Expire) => ChangeKind::Expire,
            Err(_) => return Err(format!("a change of an unknown kind ({})", e.kind)),
        };
        out.push(Change {
            revision: e.revision,
            kind,
            key: e.key,
            value: e.value,
        });
    }
    Ok((out, resp.next_revision))
}

/// An even watcher: its own resume loop over the raw stream, one member at a time.
async fn stream_watcher(shared: &Shared, log: &WatchLog, w: usize) {
    let target = pb::watch_request::Target::Prefix(log.prefix.clone());
    let mut channels: HashMap<String, Channel> = HashMap::new();
    let mut at = w;
    let mut served = false;
    loop {
        let (_, members) = shared.endpoints.current();
        let endpoint = members[at % members.len()].grpc.clone();
        let ch = match channels.get(&endpoint) {
            Some(ch) => ch.clone(),
            None => match channel(&endpoint) {
                Ok(ch) => channels.entry(endpoint.clone()).or_insert(ch).clone(),
                Err(e) => {
                    log.update(w, |r| r.fatal = Some(format!("{endpoint}: {e}")));
                    return;
                }
            },
        };
        let from = log.next(w);
        let mut stream = match open(ch, target.clone(), from).await {
            Ok((stream, first)) => {
                log.update(w, |r| {
                    r.opens += 1;
                    r.reconnects += u64::from(served);
                });
                served = true;
                match changes_of(first) {
                    Ok((changes, next)) => log.received(w, &endpoint, changes, next),
                    Err(e) => return log.update(w, |r| r.fatal = Some(format!("{endpoint}: {e}"))),
                }
                stream
            }
            Err((why, true)) => {
                log.update(w, |r| r.open_failures += 1);
                tracing::debug!(%endpoint, "watch open failed: {why}");
                at += 1;
                tokio::time::sleep(REOPEN_PAUSE).await;
                continue;
            }
            Err((why, false)) => {
                let why = format!("{endpoint} refused the watch from revision {from}: {why}");
                return log.update(w, |r| r.fatal = Some(why));
            }
        };
        loop {
            match tokio::time::timeout(WATCH_IDLE_LIMIT, stream.message()).await {
                Ok(Ok(Some(resp))) => match changes_of(resp) {
                    Ok((changes, next)) => log.received(w, &endpoint, changes, next),
                    Err(e) => return log.update(w, |r| r.fatal = Some(format!("{endpoint}: {e}"))),
                },
                Ok(Err(s)) if !retryable(&s) => {
                    let why = format!("{endpoint} ended the watch: {s}");
                    return log.update(w, |r| r.fatal = Some(why));
                }
                // Ended, broken, or silent for too long: on to the next member.
                _ => break,
            }
        }
        at += 1;
        tokio::time::sleep(REOPEN_PAUSE).await;
    }
}

/// An odd watcher: the Rust client's resuming watch over the current members, started
/// again from where it stopped when it ends with an error.
async fn client_watcher(shared: &Shared, log: &WatchLog, w: usize) {
    let mut started = false;
    loop {
        let client = match shared.endpoints.client(w) {
            Ok((_, c)) => c,
            Err(e) => return log.update(w, |r| r.fatal = Some(e.to_string())),
        };
        let from = log.next(w);
        let mut stream = match client.watch(log.filter(), Some(from)).await {
            Ok(s) => s,
            Err(e) if e.is_retryable() => {
                log.update(w, |r| r.open_failures += 1);
                tokio::time::sleep(REOPEN_PAUSE).await;
                continue;
            }
            Err(e) => {
                let why = format!("the client's watch from revision {from} failed: {e}");
                return log.update(w, |r| r.fatal = Some(why));
            }
        };
        log.update(w, |r| {
            r.opens += 1;
            r.restarts += u64::from(started);
        });
        started = true;
        log.received(w, "client", Vec::new(), stream.next_revision());
        loop {
            match stream.next().await {
                Some(Ok(changes)) => {
                    let next = stream.next_revision();
                    log.received(w, "client", changes, next);
                }
                Some(Err(e)) if e.is_retryable() => break,
                Some(Err(e)) => {
                    let why = format!("the client's watch ended: {e}");
                    return log.update(w, |r| r.fatal = Some(why));
                }
                None => break,
            }
        }
        log.update(w, |r| r.next = stream.next_revision());
        tokio::time::sleep(REOPEN_PAUSE).await;
    }
}

/// The watchers' verdict and figures.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchReport {
    pub watchers: usize,
    /// The revision of the cluster at the end, and the changes of the reference history
    /// (every key) and of the watched key space in it.
    pub revision: u64,
    pub reference_changes: usize,
    pub watched_changes: usize,
    /// Changes the watchers received, in total.
    pub received: usize,
    /// Raw streams opened again on another member after one broke, client watches
    /// started again, opens that failed.
    pub reconnects: u64,
    pub restarts: u64,
    pub open_failures: u64,
    /// Per watcher: a line of what it did.
    pub lines: Vec<String>,
    /// What the checks found (empty: none).
    pub violations: Vec<String>,
}

impl WatchReport {
    pub fn is_valid(&self) -> bool {
        self.violations.is_empty()
    }

    /// `watch` when the watchers received no change (they tested nothing).
    pub fn unexercised(&self) -> Vec<String> {
        if self.received == 0 {
            vec!["watch".to_string()]
        } else {
            Vec::new()
        }
    }

    pub fn render(&self) -> String {
        let mut s = format!(
            "watch: {} watchers received {} changes ({} of the watched keys in the history \
             up to revision {}, {} changes of every key), {} reconnects, {} client watch \
             restarts, {} failed opens: {}\n",
            self.watchers,
            self.received,
            self.watched_changes,
            self.revision,
            self.reference_changes,
            self.reconnects,
            self.restarts,
            self.open_failures,
            if self.is_valid() {
                "consistent"
            } else {
                "VIOLATION"
            }
        );
        for l in &self.lines {
            s += &format!("watch: {l}\n");
        }
        for v in &self.violations {
            s += &format!("WATCH VIOLATION: {v}\n");
        }
        s
    }
}

/// The revision of the store of the node at `endpoint` now (after a read barrier): the
/// start of a watch from now, minus one.
async fn revision_now(endpoint: &str) -> Result<u64, String> {
    let everything = pb::watch_request::Target::Prefix(Vec::new());
    let (_, first) = (open(channel(endpoint)?, everything, 0).await).map_err(|(why, _)| why)?;
    Ok(first.next_revision.saturating_sub(1))
}

/// Every change of every key from revision [`START`] to `revision`, over a watch on
/// `endpoint`.
async fn reference(endpoint: &str, revision: u64) -> Result<Vec<Change>, String> {
    let ch = channel(endpoint)?;
    let target = pb::watch_request::Target::Prefix(Vec::new());
    let read = async {
        let (mut stream, first) = open(ch, target, START).await.map_err(|(why, _)| why)?;
        let (mut changes, mut next) = changes_of(first)?;
        while next <= revision {
            let resp = stream
                .message()
                .await
                .map_err(|s| s.to_string())?
                .ok_or("the node ended the stream")?;
            let (more, n) = changes_of(resp)?;
            changes.extend(more);
            next = n;
        }
        Ok(changes)
    };
    tokio::time::timeout(REFERENCE_TIMEOUT, read)
        .await
        .unwrap_or_else(|_| Err(format!("not read within {REFERENCE_TIMEOUT:?}")))
}

/// Every key of node `client`'s store with its value and version (linearizable scans).
async fn data(client: &Client) -> Result<Vec<(Vec<u8>, Vec<u8>, u64)>, String> {
    let mut rows = Vec::new();
    let mut range = ScanRange::Prefix(Vec::new());
    loop {
        let page = (client.scan(&range, 1000, false).await).map_err(|e| e.to_string())?;
        let last = page.items.last().map(|kv| kv.key.clone());
        rows.extend(
            page.items
                .into_iter()
                .map(|kv| (kv.key, kv.value, kv.version)),
        );
        match last {
            Some(mut from) if page.more => {
                from.push(0);
                range = ScanRange::Range { from, to: None };
            }
            _ => return Ok(rows),
        }
    }
}

/// Watcher `w` is done: past `revision`, or holding every change of the watched keys
/// `reference` has at or after where it resumes.
fn caught_up(r: &WatcherRecord, revision: u64, watched: &[&Change]) -> bool {
    r.next > revision || r.fatal.is_some() || watched.last().is_none_or(|c| c.revision < r.next)
}

/// The end of the watchers (see the module docs): with the cluster healed and quiet,
/// reads the reference from `node` (the first final member, `endpoint`), lets the
/// watchers catch up, stops them, and checks their streams, the reference and the
/// workload's `history`.
pub async fn finish(
    log: &WatchLog,
    mut tasks: Tasks,
    node: u64,
    client: &Client,
    endpoint: &str,
    history: &[Operation],
) -> WatchReport {
    let mut report = WatchReport {
        watchers: log.watchers.len(),
        ..WatchReport::default()
    };
    let name = format!("node {node}");
    let read = async {
        let revision = revision_now(endpoint)
            .await
            .map_err(|e| format!("the revision of {name}: {e}"))?;
        let reference = reference(endpoint, revision)
            .await
            .map_err(|e| format!("reading {name}'s history up to revision {revision}: {e}"))?;
        let data = data(client)
            .await
            .map_err(|e| format!("scanning {name}'s data: {e}"))?;
        Ok::<_, String>((revision, reference, data))
    };
    let (revision, reference, data, failed) = match read.await {
        Ok((revision, reference, data)) => (revision, reference, data, None),
        Err(e) => (0, Vec::new(), Vec::new(), Some(e)),
    };
    let watched: Vec<&Change> = (reference.iter())
        .filter(|c| c.key.starts_with(&log.prefix))
        .collect();
    // The watchers catch up (or, without a reference, stop at once).
    let deadline = Instant::now() + CATCH_UP;
    while failed.is_none() && Instant::now() < deadline {
        let moved = log.moved.notified();
        let all = (log.watchers.iter()).all(|r| caught_up(&r.lock().unwrap(), revision, &watched));
        if all {
            break;
        }
        let _ = tokio::time::timeout_at(deadline.into(), moved).await;
    }
    log.stop.send_replace(true);
    for (w, mut h) in std::mem::take(&mut tasks.0).into_iter().enumerate() {
        if tokio::time::timeout(Duration::from_secs(10), &mut h)
            .await
            .is_err()
        {
            h.abort();
            report
                .violations
                .push(format!("watcher {w} did not stop within 10 s"));
        }
    }
    if let Some(e) = failed {
        report.violations.push(e);
        return report;
    }
    report.revision = revision;
    report.reference_changes = reference.len();
    report.watched_changes = watched.len();
    let mut problems = Vec::new();
    if let Err(v) = watch_check::reference_valid(&name, &reference, revision, &data) {
        problems.push(v.message);
    }
    if let Err(v) = watch_check::acknowledged_in(&name, &reference, history) {
        problems.push(v.message);
    }
    for (w, r) in log.watchers.iter().enumerate() {
        let r = r.lock().unwrap();
        let who = format!("watcher {w} ({})", r.how);
        report.received += r.changes.len();
        report.reconnects += r.reconnects;
        report.restarts += r.restarts;
        report.open_failures += r.open_failures;
        report.lines.push(format!(
            "{who}: {} changes up to revision {}, {} opens ({} reconnects, {} restarts, {} \
             failed), {} notes, from {}",
            r.changes.len(),
            r.next.saturating_sub(1),
            r.opens,
            r.reconnects,
            r.restarts,
            r.open_failures,
            r.notes,
            r.sources.join(", ")
        ));
        if let Some(f) = &r.fatal {
            problems.push(format!("watch: {who} ended: {f}"));
        }
        if r.next > revision + 1 {
            problems.push(format!(
                "watch: {who} was handed revision {} to resume from, beyond {name}'s \
                 revision {revision}",
                r.next
            ));
            continue;
        }
        if !caught_up(&r, revision, &watched) {
            let missing = watched.iter().find(|c| c.revision >= r.next);
            problems.push(format!(
                "watch: {who} did not catch up within {CATCH_UP:?}: it resumes at revision \
                 {}, before {}",
                r.next,
                missing.map_or(String::new(), |c| show(c))
            ));
        }
        let expected: Vec<&Change> = (watched.iter().copied())
            .filter(|c| c.revision < r.next)
            .collect();
        let stream: Vec<&Change> = r.changes.iter().map(|(_, c)| c).collect();
        let source = |k: usize| format!("from {}", r.sources[r.changes[k].0]);
        if let Err(v) =
            watch_check::stream_matches(&who, &stream, &source, r.next, &name, &expected)
        {
            problems.push(v.message);
        }
    }
    report.violations.extend(problems);
    report
}
