//! Watches end to end, through the real binary: the Rust client's `Client::watch` over
//! gRPC `Kv.Watch` and the `paxosdb watch` CLI.
//!
//! - Across node kills: a watcher on a prefix, started from a past revision on the
//!   leader, while writers put, delete, run transactions and multi-puts (Redis `MSET`)
//!   inside and outside the prefix; the node the watcher follows is killed (the leader),
//!   then the one it moved to. It must receive every acknowledged change under the prefix
//!   exactly once, in revision order, and nothing else than what was attempted there;
//!   and a later replay of the same revisions, and `paxosdb watch --count`, must show
//!   exactly the same.
//! - The history's window: a watch from a revision the node no longer holds fails with
//!   `Compacted` naming the oldest one, at once or, for a client that reads too slowly,
//!   as the stream's last item.
//! - A node that goes silent without closing its connections (SIGSTOP) is left after
//!   the client's idle limit, while a stream that is quiet but for its progress notes is
//!   kept.
//! - Bounds and rights: a node with `--max-watchers 1` refuses a second watch until the
//!   first client drops its stream; a user limited to a prefix watches only inside it, and
//!   its stream ends once the user is deleted.
//!
//! No sleeps synchronise anything: every wait polls a condition with a deadline.

mod common;

use common::{eventually, Cluster, BIN};
use paxosdb::client::{
    Auth, Change, ChangeKind, Client, ClientOptions, Txn, TxnOp, TxnOpResult, WatchFilter,
    WatchStream,
};
use paxosdb::command::{ScanRange, WriteResult};
use paxosdb::Error;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PREFIX: &str = "w/";

fn prefix(p: &str) -> WatchFilter {
    WatchFilter::Range(ScanRange::Prefix(p.as_bytes().to_vec()))
}

/// A client of every node, trying node `first` first.
fn client_via(c: &Cluster, first: u64) -> Client {
    let mut eps = vec![c.node(first).client_addr.clone()];
    eps.extend(
        (c.nodes.iter())
            .filter(|n| n.id != first)
            .map(|n| n.client_addr.clone()),
    );
    Client::with_options(&eps, ClientOptions::default()).unwrap()
}

/// `MSET` of `pairs` through the Redis protocol at `addr`: whether it answered `+OK`.
async fn mset(addr: &str, pairs: &[(String, String)]) -> bool {
    let mut words = vec!["MSET".to_string()];
    for (k, v) in pairs {
        words.extend([k.clone(), v.clone()]);
    }
    let mut req = format!("*{}\r\n", words.len());
    for w in &words {
        req.push_str(&format!("${}\r\n{w}\r\n", w.len()));
    }
    let run = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        while !buf.ends_with(b"\r\n") {
            let mut b = [0u8; 64];
            let n = s.read(&mut b).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&b[..n]);
        }
        Some(buf.starts_with(b"+OK"))
    };
    (tokio::time::timeout(Duration::from_secs(10), run).await)
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// How many watches node `id` has opened since it started (its HTTP `/metrics`).
async fn watches_opened(c: &Cluster, id: u64) -> Option<u64> {
    let name = "paxosdb_requests_total{protocol=\"grpc\",op=\"watch\"} ";
    let run = async {
        let mut s = tokio::net::TcpStream::connect(&c.node(id).http_addr)
            .await
            .ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: n\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).await.ok()?;
        Some(body)
    };
    let body = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .ok()??;
    Some(
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0),
    )
}

/// Waits until node `id` has opened a watch (the test's watcher follows it).
async fn serves_a_watch(c: &Cluster, id: u64) {
    let what = format!("node {id} serves the watch");
    eventually(Duration::from_secs(30), &what, || async move {
        (watches_opened(c, id).await? > 0).then_some(())
    })
    .await
}

/// What the writers attempted and what was acknowledged, under the prefix.
#[derive(Default)]
struct Ledger {
    /// Every put attempted under the prefix: key → value (keys are unique).
    attempted_puts: BTreeMap<String, String>,
    /// Every delete attempted under the prefix (each key deleted once at most).
    attempted_deletes: BTreeSet<String>,
    /// Acknowledged puts: key → (revision, value).
    acked_puts: BTreeMap<String, (u64, String)>,
    /// Acknowledged deletes that deleted something.
    acked_deletes: BTreeSet<String>,
    /// Acknowledged multi-puts: their keys under the prefix.
    acked_msets: Vec<Vec<String>>,
    /// Acknowledged puts outside the prefix (never to be seen).
    acked_outside: u64,
}

/// Writers of unique keys inside and outside the prefix, through every API that writes:
/// puts, deletes, transactions (gRPC) and multi-puts (Redis `MSET`).
struct Writers {
    stop: Arc<AtomicBool>,
    acks: Arc<AtomicU64>,
    ledger: Arc<Mutex<Ledger>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    fn start(c: &Cluster, n: u64) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(AtomicU64::new(0));
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let resp: Vec<String> = c.nodes.iter().map(|n| n.resp_addr.clone()).collect();
        let tasks = (0..n)
            .map(|w| {
                let client = client_via(c, w % 3 + 1);
                let (stop, acks, ledger, resp) =
                    (stop.clone(), acks.clone(), ledger.clone(), resp.clone());
                tokio::spawn(async move {
                    let mut i = 0u64;
                    // This writer's acknowledged puts not deleted yet.
                    let mut live: Vec<String> = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let key = format!("{PREFIX}{w}-{i:05}");
                        let value = format!("v{w}.{i}");
                        let acked = match i % 5 {
                            0 | 1 => {
                                ledger
                                    .lock()
                                    .unwrap()
                                    .attempted_puts
                                    .insert(key.clone(), value.clone());
                                match client.put(key.as_bytes(), value.as_bytes(), false).await {
                                    Ok(r) => {
                                        let mut l = ledger.lock().unwrap();
                                        l.acked_puts.insert(key.clone(), (r.version, value));
                                        live.push(key);
                                        true
                                    }
                                    Err(_) => false,
                                }
                            }
                            2 => {
                                // A put outside the prefix, and one of a key that only
                                // starts like it.
                                let outside = [format!("x/{w}-{i}"), format!("w{w}-{i}")];
                                let k = &outside[(i / 5 % 2) as usize];
                                let ok = client.put(k.as_bytes(), b"no", false).await.is_ok();
                                if ok {
                                    ledger.lock().unwrap().acked_outside += 1;
                                }
                                ok
                            }
                            3 => {
                                let Some(victim) = live.first().cloned() else {
                                    continue;
                                };
                                live.remove(0);
                                ledger
                                    .lock()
                                    .unwrap()
                                    .attempted_deletes
                                    .insert(victim.clone());
                                match client.delete(victim.as_bytes(), false).await {
                                    Ok(r) => {
                                        assert!(r.deleted, "{victim} was acknowledged");
                                        ledger.lock().unwrap().acked_deletes.insert(victim);
                                        true
                                    }
                                    Err(_) => false,
                                }
                            }
                            _ if i.is_multiple_of(2) => {
                                let (inside, outside) =
                                    (format!("{key}-t"), format!("x/{w}-{i}-t"));
                                ledger
                                    .lock()
                                    .unwrap()
                                    .attempted_puts
                                    .insert(inside.clone(), value.clone());
                                let txn = Txn {
                                    success: vec![
                                        TxnOp::put(inside.as_bytes(), value.as_bytes()),
                                        TxnOp::put(outside.as_bytes(), b"no"),
                                    ],
                                    ..Txn::default()
                                };
                                match client.txn(&txn).await {
                                    Ok(r) => {
                                        let TxnOpResult::Write(WriteResult::Put {
                                            version, ..
                                        }) = r.results[0]
                                        else {
                                            panic!("a put's result: {r:?}");
                                        };
                                        let mut l = ledger.lock().unwrap();
                                        l.acked_puts.insert(inside.clone(), (version, value));
                                        l.acked_outside += 1;
                                        live.push(inside);
                                        true
                                    }
                                    Err(_) => false,
                                }
                            }
                            _ => {
                                let keys = [format!("{key}-m1"), format!("{key}-m2")];
                                let mut pairs: Vec<(String, String)> =
                                    keys.iter().map(|k| (k.clone(), value.clone())).collect();
                                pairs.push((format!("x/{w}-{i}-m"), "no".into()));
                                {
                                    let mut l = ledger.lock().unwrap();
                                    for k in &keys {
                                        l.attempted_puts.insert(k.clone(), value.clone());
                                    }
                                }
                                let addr = &resp[(i as usize / 5) % resp.len()];
                                let ok = mset(addr, &pairs).await;
                                if ok {
                                    ledger.lock().unwrap().acked_msets.push(keys.to_vec());
                                }
                                ok
                            }
                        };
                        if acked {
                            acks.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        Writers {
            stop,
            acks,
            ledger,
            tasks,
        }
    }

    /// Waits until `more` further writes were acknowledged.
    async fn wait_more(&self, more: u64, what: &str) {
        let want = self.acks.load(Ordering::Relaxed) + more;
        eventually(Duration::from_secs(60), what, || async move {
            (self.acks.load(Ordering::Relaxed) >= want).then_some(())
        })
        .await
    }

    async fn finish(self) -> Ledger {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        Arc::try_unwrap(self.ledger)
            .ok()
            .expect("the writers ended")
            .into_inner()
            .unwrap()
    }
}

/// Reads `w` into `into` until a change of key `end` arrives, or an error.
fn consume(
    mut w: WatchStream,
    into: Arc<Mutex<Vec<Change>>>,
    end: String,
) -> tokio::task::JoinHandle<Result<(), Error>> {
    tokio::spawn(async move {
        loop {
            let batch = w
                .next()
                .await
                .expect("the stream ends only after an error")?;
            let done = batch.iter().any(|c| c.key == end.as_bytes());
            into.lock().unwrap().extend(batch);
            if done {
                return Ok(());
            }
        }
    })
}

/// Reads `w` until a change of revision `until` or later: every change up to there.
async fn collect_until(w: &mut WatchStream, until: u64) -> Vec<Change> {
    let mut all = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(30), w.next()).await;
        let batch = next
            .expect("changes within 30 s")
            .expect("not ended")
            .unwrap();
        let last = batch.last().unwrap().revision;
        all.extend(batch);
        if last >= until {
            return all;
        }
    }
}

/// The line `paxosdb watch` prints for `c`.
fn cli_line(c: &Change) -> String {
    let (key, value) = (
        String::from_utf8_lossy(&c.key),
        String::from_utf8_lossy(&c.value),
    );
    match c.kind {
        ChangeKind::Put => format!("rev {} put {key} {value}", c.revision),
        k => format!("rev {} {} {key}", c.revision, k.as_str()),
    }
}

/// Checks the changes a watcher of [`PREFIX`] from `start` received against what the
/// writers attempted and what was acknowledged.
fn check(changes: &[Change], ledger: &Ledger, start: u64, own_keys: &[&str]) {
    // In revision order, each once; a revision holds several changes only for a
    // multi-put, each key once.
    let mut seen = BTreeSet::new();
    let mut last = start;
    for c in changes {
        assert!(c.revision >= last, "revision {} after {last}", c.revision);
        last = c.revision;
        assert!(
            seen.insert((c.revision, c.key.clone())),
            "change {c:?} received twice"
        );
    }
    // Nothing outside the prefix, and nothing that was not attempted.
    let mut puts: BTreeMap<String, Vec<&Change>> = BTreeMap::new();
    let mut deletes: BTreeMap<String, Vec<&Change>> = BTreeMap::new();
    for c in changes {
        let key = String::from_utf8(c.key.clone()).unwrap();
        assert!(
            key.starts_with(PREFIX),
            "a change outside the prefix: {c:?}"
        );
        match c.kind {
            // The test's own first and last writes.
            ChangeKind::Put if own_keys.contains(&key.as_str()) => {}
            ChangeKind::Put => {
                let want = ledger.attempted_puts.get(&key);
                assert_eq!(want.map(String::as_bytes), Some(&c.value[..]), "{c:?}");
                puts.entry(key).or_default().push(c);
            }
            ChangeKind::Delete => {
                assert!(
                    ledger.attempted_deletes.contains(&key),
                    "{c:?} not attempted"
                );
                deletes.entry(key).or_default().push(c);
            }
            ChangeKind::Expire => panic!("nothing expires here: {c:?}"),
        }
    }
    // Every acknowledged change exactly once.
    for (key, (revision, value)) in &ledger.acked_puts {
        let got = puts.get(key).map(Vec::as_slice).unwrap_or_default();
        assert!(
            matches!(got, [c] if c.revision == *revision && c.value == value.as_bytes()),
            "acknowledged put of {key} at revision {revision}: received {got:?}"
        );
    }
    for key in &ledger.acked_deletes {
        let got = deletes.get(key).map(Vec::as_slice).unwrap_or_default();
        let put = puts[key][0].revision;
        assert!(
            matches!(got, [c] if c.revision > put),
            "acknowledged delete of {key} (put at {put}): received {got:?}"
        );
    }
    for keys in &ledger.acked_msets {
        let revisions: Vec<u64> = keys
            .iter()
            .map(|k| match puts.get(k).map(Vec::as_slice) {
                Some([c]) => c.revision,
                other => panic!("acknowledged multi-put of {k}: received {other:?}"),
            })
            .collect();
        assert!(
            revisions.windows(2).all(|w| w[0] == w[1]),
            "a multi-put's keys in one revision: {keys:?} at {revisions:?}"
        );
    }
    // Deletes that were not acknowledged but happened are allowed; puts too.
    assert!(
        ledger.acked_outside > 0,
        "writes outside the prefix were made"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_sees_every_acknowledged_change_once_in_order_across_node_kills() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let other = (1..=3).find(|i| *i != leader).unwrap();
    let c = cluster.client();

    // Some history before the watch starts, from which it replays.
    let before = c.put(b"w/before", b"old", false).await.unwrap().version;
    c.put(b"x/before", b"no", false).await.unwrap();

    // The watcher follows the leader first; its endpoints in this order, so that after
    // the leader's kill it moves to the next one.
    let order: Vec<u64> = std::iter::once(leader)
        .chain((1..=3).filter(|i| *i != leader))
        .collect();
    let watcher = client_via(&cluster, leader)
        .watch(prefix(PREFIX), Some(before))
        .await
        .unwrap();
    assert_eq!(watcher.next_revision(), before);
    let received = Arc::new(Mutex::new(Vec::new()));
    let end_key = format!("{PREFIX}~end");
    let consumer = consume(watcher, received.clone(), end_key.clone());

    let writers = Writers::start(&cluster, 4);
    writers.wait_more(100, "writes before the first kill").await;
    // The leader, which the watcher follows: the watcher moves to the next node (and no
    // other watch is open anywhere, so the nodes' counts of watches say where it is).
    serves_a_watch(&cluster, order[0]).await;
    cluster.kill(order[0]);
    serves_a_watch(&cluster, order[1]).await;
    writers
        .wait_more(100, "writes after the leader's kill")
        .await;
    cluster.restart(order[0]).await;
    writers.wait_more(50, "writes after the restart").await;
    // The node the watcher moved to.
    cluster.kill(order[1]);
    serves_a_watch(&cluster, order[2]).await;
    writers.wait_more(100, "writes after the second kill").await;
    cluster.restart(order[1]).await;
    writers
        .wait_more(50, "writes after the second restart")
        .await;
    let ledger = writers.finish().await;

    let end = c
        .put(end_key.as_bytes(), b"end", false)
        .await
        .unwrap()
        .version;
    let done = tokio::time::timeout(Duration::from_secs(60), consumer).await;
    done.expect("the watcher received the last write")
        .unwrap()
        .expect("the watch never failed");
    let changes = received.lock().unwrap().clone();
    assert_eq!(
        changes[0].key, b"w/before",
        "replayed from the start revision"
    );
    assert_eq!(changes.last().unwrap().revision, end);
    assert!(
        ledger.acked_puts.len() > 20
            && !ledger.acked_deletes.is_empty()
            && !ledger.acked_msets.is_empty(),
        "every kind of write was acknowledged: {} puts, {} deletes, {} multi-puts",
        ledger.acked_puts.len(),
        ledger.acked_deletes.len(),
        ledger.acked_msets.len()
    );
    check(&changes, &ledger, before, &["w/before", &end_key]);

    // A replay of the same revisions, through another node, is the same sequence.
    let mut replay = cluster
        .client_for(other)
        .watch(prefix(PREFIX), Some(before))
        .await
        .unwrap();
    assert_eq!(collect_until(&mut replay, end).await, changes);
    drop(replay);

    // `paxosdb watch` prints the same, one line per change.
    let n = changes.len().min(25);
    let out = std::process::Command::new(BIN)
        .args(["--endpoints", &cluster.endpoints().join(",")])
        .args([
            "watch",
            "--prefix",
            PREFIX,
            "--from-revision",
            &before.to_string(),
        ])
        .args(["--count", &n.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "paxosdb watch: {out:?}");
    let want: Vec<String> = changes[..n].iter().map(cli_line).collect();
    let got: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
    assert_eq!(got, want);
    let out = std::process::Command::new(BIN)
        .args(["--endpoints", &cluster.endpoints().join(",")])
        .args(["watch", "w/before", "--from-revision", &before.to_string()])
        .args(["--count", "1", "--json"])
        .output()
        .unwrap();
    assert_eq!(
        std::str::from_utf8(&out.stdout).unwrap().trim_end(),
        format!(r#"{{"key":"w/before","kind":"put","revision":{before},"value":"old"}}"#),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_from_beyond_the_history_window_is_compacted() {
    // A window of 5 revisions.
    let cluster = Cluster::start_with(1, &[("PAXOSDB_WATCH_HISTORY_REVISIONS", "5")]).await;
    let c = cluster.client();
    let mut last = 0;
    for i in 0..20 {
        last = (c.put(format!("k/{i}").as_bytes(), b"v", false).await)
            .unwrap()
            .version;
    }
    let oldest = match c.watch(prefix("k/"), Some(1)).await {
        Err(Error::Compacted { requested, oldest }) => {
            assert_eq!(requested, 1);
            assert!(oldest > 1 && oldest <= last, "oldest {oldest}, last {last}");
            oldest
        }
        other => panic!("a watch from revision 1: {other:?}"),
    };
    // From the oldest revision held, it replays the window.
    let mut w = c.watch(prefix("k/"), Some(oldest)).await.unwrap();
    let got = collect_until(&mut w, last).await;
    assert_eq!(got[0].revision, oldest);
    assert_eq!(got.last().unwrap().revision, last);
    drop(w);

    // The CLI says so too, naming the oldest revision.
    let out = std::process::Command::new(BIN)
        .args(["--endpoints", &cluster.endpoints().join(",")])
        .args(["watch", "--prefix", "k/", "--from-revision", "1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(err.contains("compacted") && err.contains("oldest"), "{err}");

    // A client that reads too slowly falls behind the window: what it had not read is
    // delivered, then `Compacted` ends the stream. Large values fill the stream's
    // buffers (a small queue on the server, HTTP/2's windows), so the server's task
    // waits and the window passes its position.
    let mut slow = c.watch(prefix("big/"), None).await.unwrap();
    let value = vec![b'v'; 512 * 1024];
    for i in 0..60 {
        c.put(format!("big/{i}").as_bytes(), &value, false)
            .await
            .unwrap();
    }
    let mut delivered = 0;
    let err = loop {
        match tokio::time::timeout(Duration::from_secs(30), slow.next()).await {
            Ok(Some(Ok(batch))) => delivered += batch.len(),
            Ok(Some(Err(e))) => break e,
            other => panic!("the slow watch: {other:?}"),
        }
    };
    assert!(matches!(err, Error::Compacted { .. }), "{err:?}");
    assert!(
        delivered < 60,
        "{delivered} of 60 changes delivered, then Compacted"
    );
    assert!(
        slow.next().await.is_none(),
        "the stream ends after its error"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dropped_watch_frees_its_place_and_a_watch_from_now_starts_after_the_call() {
    let cluster = Cluster::start_with(1, &[("PAXOSDB_MAX_WATCHERS", "1")]).await;
    let c = cluster.client();
    c.put(b"now/before", b"1", false).await.unwrap();
    let mut first = c.watch(prefix("now/"), None).await.unwrap();
    let after = c.put(b"now/after", b"2", false).await.unwrap().version;
    let got = collect_until(&mut first, after).await;
    assert_eq!(got.len(), 1, "only the write after the call: {got:?}");
    assert_eq!(
        (got[0].key.as_slice(), got[0].revision),
        (&b"now/after"[..], after)
    );

    // The node serves one watcher: a second is refused as overload, at once.
    let second = tokio::time::timeout(Duration::from_secs(10), c.watch(prefix(""), None)).await;
    match second.expect("refused at once") {
        Err(Error::Overloaded(m)) => assert!(m.contains("max_watchers"), "{m}"),
        other => panic!("a second watch: {other:?}"),
    }
    // Once the first client drops its stream, the node frees its place.
    drop(first);
    let mut third = eventually(
        Duration::from_secs(10),
        "the first watch's place is freed",
        || {
            let c = c.clone();
            async move { c.watch(prefix("now/"), None).await.ok() }
        },
    )
    .await;
    let v = c.put(b"now/third", b"3", false).await.unwrap().version;
    assert_eq!(collect_until(&mut third, v).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_prefix_user_watches_only_inside_its_prefix_and_not_once_deleted() {
    let cluster = Cluster::builder(1).admin("adminpw").start().await;
    let admin = cluster.admin_client();
    admin
        .set_user("scoped", Some("spw"), Some("read"), Some(b"app/"))
        .await
        .unwrap();
    let scoped = cluster
        .client()
        .with_auth(Some(Auth::Password {
            user: "scoped".into(),
            password: "spw".into(),
        }))
        .unwrap();
    for filter in [
        WatchFilter::Key(b"other".to_vec()),
        prefix("other/"),
        WatchFilter::Range(ScanRange::Range {
            from: b"b".to_vec(),
            to: Some(b"c".to_vec()),
        }),
    ] {
        match scoped.watch(filter.clone(), None).await {
            Err(Error::PermissionDenied(_)) => {}
            other => panic!("{filter:?} outside the prefix: {other:?}"),
        }
    }
    // A watch of every key is narrowed to the prefix, as a scan is.
    let mut all = scoped.watch(prefix(""), None).await.unwrap();
    admin.put(b"other", b"x", false).await.unwrap();
    let v = admin.put(b"app/1", b"y", false).await.unwrap().version;
    let got = collect_until(&mut all, v).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].key, b"app/1");

    // Once the user is deleted, its stream ends (checked again before changes are sent).
    assert!(admin.delete_user("scoped").await.unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let err = loop {
        admin.put(b"app/2", b"z", false).await.unwrap();
        match tokio::time::timeout(Duration::from_secs(5), all.next()).await {
            Ok(Some(Err(e))) => break e,
            Ok(Some(Ok(_))) => {}
            other => panic!("the deleted user's watch: {other:?}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the deleted user's watch still delivers changes after 20 s"
        );
    };
    assert!(matches!(err, Error::Unauthenticated(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_leaves_a_node_that_went_silent_and_a_quiet_stream_stays() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let others: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
    let (silent, quiet) = (others[0], others[1]);
    // Follows `silent`, then the leader; another follows `quiet` only, on a prefix
    // nobody writes to until the end.
    let c = cluster.client();
    let eps = |ids: &[u64]| -> Vec<String> {
        ids.iter()
            .map(|i| cluster.node(*i).client_addr.clone())
            .collect()
    };
    let moving = Client::with_options(&eps(&[silent, leader]), ClientOptions::default()).unwrap();
    let mut a = moving.watch(prefix("s/"), None).await.unwrap();
    let staying = Client::with_options(&eps(&[quiet]), ClientOptions::default()).unwrap();
    let mut b = staying.watch(prefix("q/"), None).await.unwrap();
    assert_eq!(watches_opened(&cluster, silent).await, Some(1));
    // Read all along: its first change comes after the pause.
    let quiet_reader = tokio::spawn(async move { b.next().await });

    // SIGSTOP: its connections stay open, and nothing comes through them. After the
    // idle limit without even a progress note, the watch moves to the leader.
    cluster.pause(silent).unwrap();
    let v = c.put(b"s/1", b"x", false).await.unwrap().version;
    let limit = paxosdb::client::WATCH_IDLE_LIMIT + Duration::from_secs(20);
    let got = tokio::time::timeout(limit, a.next()).await;
    let got = got
        .expect("the watch left the silent node")
        .unwrap()
        .unwrap();
    assert_eq!((got.len(), got[0].revision), (1, v));
    assert_eq!(watches_opened(&cluster, leader).await, Some(1));
    cluster.resume(silent).unwrap();

    // The quiet stream, read all along and silent longer than the idle limit but for
    // its progress notes, was never opened again, and still delivers.
    let v = c.put(b"q/1", b"y", false).await.unwrap().version;
    let got = tokio::time::timeout(Duration::from_secs(10), quiet_reader).await;
    let got = got
        .expect("the quiet watch delivers")
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((got.len(), got[0].revision), (1, v));
    assert_eq!(watches_opened(&cluster, quiet).await, Some(1));
}
