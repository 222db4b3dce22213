//! The embedded API (`paxosdb::embed`): both examples run as CI tests (their `run`
//! functions, the very code `cargo run --example` runs), and an embedded single-node
//! database grows into three members and shrinks back to one, online, without losing a
//! write.

mod common;
mod http_client;
use http_client::fsyncs;

#[path = "../examples/single_node.rs"]
mod single_node;
#[path = "../examples/three_nodes_sql.rs"]
mod three_nodes_sql;

use common::free_ports;
use paxosdb::command::ScanRange;
use paxosdb::embed::{Consistency, Node, Value};
use paxosdb::Error;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_node_example_writes_restarts_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let report = single_node::run(dir.path()).await.unwrap();
    assert_eq!(
        report,
        single_node::Report {
            greeting: b"hello, world".to_vec(),
            users: vec!["user/0".into(), "user/1".into()],
            notes: vec![(1, "buy milk".into()), (2, "call home".into())],
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_sql_example_reads_every_write_through_other_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let report = three_nodes_sql::run(dir.path()).await.unwrap();
    assert_eq!(report.counts_seen, vec![1, 2, 3, 4, 5, 6]);
    let want: Vec<(String, i64)> = [
        ("ada", 70),
        ("grace", 130),
        ("edsger", 100),
        ("barbara", 100),
        ("donald", 100),
        ("frances", 100),
    ]
    .iter()
    .map(|(o, b)| (o.to_string(), *b))
    .collect();
    assert_eq!(report.tables, vec![want.clone(), want.clone(), want]);
}

/// Every key under `prefix` through `node`, linearizably.
async fn keys(node: &Node, prefix: &str) -> Vec<String> {
    let r = node
        .kv()
        .scan(
            &ScanRange::Prefix(prefix.as_bytes().to_vec()),
            10_000,
            Consistency::Linearizable,
        )
        .await
        .unwrap();
    assert!(!r.more);
    r.items
        .iter()
        .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
        .collect()
}

async fn count_rows(node: &Node) -> i64 {
    let rows = node
        .sql()
        .query("SELECT count(*) FROM t", ())
        .await
        .unwrap();
    match rows.rows[0][0] {
        Value::Integer(n) => n,
        ref v => panic!("count(*) = {v:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_single_node_grows_to_three_and_shrinks_back_online() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(3);
    let addr = |i: usize| format!("127.0.0.1:{}", ports[i - 1]);
    let first = Node::builder(dir.path().join("n1"))
        .peer_addr(addr(1))
        .start()
        .await
        .unwrap();
    assert_eq!(first.membership().members.len(), 1);
    let kv = first.kv();
    let sql = first.sql();
    sql.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, who INTEGER)", ())
        .await
        .unwrap();
    // Every key written (one row in `t` each), in order.
    let mut written: Vec<String> = Vec::new();
    let next = |written: &mut Vec<String>| {
        let key = format!("k/{:04}", written.len());
        written.push(key.clone());
        key
    };

    // Alone: writes decided by this node's own fsync.
    for _ in 0..20 {
        let key = next(&mut written);
        kv.put(key.as_bytes(), b"v").await.unwrap();
        sql.execute("INSERT INTO t (who) VALUES (?)", [1])
            .await
            .unwrap();
    }

    // Grow: each new node starts empty, joins, is added, and copies everything.
    let mut nodes = vec![first];
    for id in 2..=3u64 {
        let joining = Node::builder(dir.path().join(format!("n{id}")))
            .id(id)
            .peer_addr(addr(id as usize))
            .join(addr(1))
            .start_joining();
        let (added, joined) = tokio::join!(nodes[0].add_member(id, addr(id as usize)), joining);
        let m = added.unwrap();
        assert_eq!(m.members.len(), id as usize, "{m:?}");
        let node = joined.unwrap();
        node.wait_ready(Duration::from_secs(30)).await.unwrap();
        // Everything written before is there, read linearizably through the new node.
        assert_eq!(keys(&node, "k/").await, written);
        assert_eq!(count_rows(&node).await, written.len() as i64);
        // And it takes writes.
        let key = next(&mut written);
        node.kv().put(key.as_bytes(), b"v").await.unwrap();
        node.sql()
            .execute("INSERT INTO t (who) VALUES (?)", [id as i64])
            .await
            .unwrap();
        nodes.push(node);
    }
    for node in &nodes {
        assert_eq!(node.membership().members.len(), 3);
        assert_eq!(keys(node, "k/").await, written);
        assert_eq!(count_rows(node).await, written.len() as i64);
    }

    // Shrink back to the first node, one member at a time, through the first node.
    for id in [3u64, 2] {
        let m = nodes[0].remove_member(id).await.unwrap();
        assert!(!m.contains(id), "{m:?}");
        let gone = nodes.pop().unwrap();
        assert_eq!(gone.id(), id);
        gone.shutdown().await;
        let key = next(&mut written);
        nodes[0].kv().put(key.as_bytes(), b"v").await.unwrap();
        nodes[0]
            .sql()
            .execute("INSERT INTO t (who) VALUES (?)", [1])
            .await
            .unwrap();
    }
    let first = nodes.pop().unwrap();
    assert_eq!(first.membership().members.len(), 1);
    assert_eq!(keys(&first, "k/").await, written);
    assert_eq!(count_rows(&first).await, written.len() as i64);
    first.shutdown().await;

    // Alone again after a restart: the membership and the data are the ones it had.
    let first = Node::builder(dir.path().join("n1"))
        .peer_addr(addr(1))
        .start()
        .await
        .unwrap();
    assert_eq!(first.membership().members.len(), 1);
    assert_eq!(keys(&first, "k/").await, written);
    assert_eq!(count_rows(&first).await, written.len() as i64);
    first.kv().put(b"after", b"restart").await.unwrap();
    first.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_fixed_peer_address_refuses_to_grow() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path()).await.unwrap();
    let err = node.add_member(2, "127.0.0.1:7102").await.unwrap_err();
    assert!(
        matches!(&err, Error::Config(m) if m.contains("peer address")),
        "{err:?}"
    );
    // Nothing changed: still alone, still serving.
    assert_eq!(node.membership().members.len(), 1);
    node.kv().put(b"k", b"v").await.unwrap();
    // A SQL error is the statement's, and changes nothing.
    let err = node.sql().execute("CREATE TABLE", ()).await.unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_decides_on_one_fsync_trims_its_log_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_ports(1)[0];
    let start = || {
        Node::builder(dir.path())
            .http_addr(format!("127.0.0.1:{port}"))
            .configure(|c| {
                c.compact_every_entries = 20;
                c.log_keep_entries = 10;
            })
            .start()
    };
    let node = start().await.unwrap();
    let http = node.listener("http").unwrap().to_string();
    let kv = node.kv();
    kv.put(b"warm", b"up").await.unwrap();
    let before = fsyncs(&http);
    const N: u64 = 100;
    for i in 0..N {
        kv.put(format!("k/{i:03}").as_bytes(), b"v").await.unwrap();
    }
    // One synced append per write, one after the other: the witness adds none (a handful
    // more may come from the node's own bookkeeping, e.g. a trim).
    let spent = fsyncs(&http) - before;
    assert!(
        (N..=N + 10).contains(&spent),
        "{spent} fsyncs for {N} writes"
    );
    // The trim runs on the node's tick: wait for it (a loaded machine can delay it).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let st = loop {
        let st = node.status().await.unwrap();
        if st.compacted_index >= N - 20 || std::time::Instant::now() > deadline {
            break st;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(
        st.compacted_index >= N - 20,
        "the log is trimmed in steps of 20 entries: {st:?}"
    );
    node.shutdown().await;

    let node = start().await.unwrap();
    let all = node
        .kv()
        .scan(
            &ScanRange::Prefix(b"k/".to_vec()),
            0,
            Consistency::Linearizable,
        )
        .await
        .unwrap();
    assert_eq!(all.items.len(), N as usize);
    node.kv().put(b"after", b"restart").await.unwrap();
    assert_eq!(
        node.kv().get(b"after").await.unwrap().unwrap().value,
        b"restart"
    );
    node.shutdown().await;
}

/// A transaction through the embedded API: conditional, atomic over several keys, and
/// answered per operation; its failure branch runs when the comparison fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_node_runs_transactions() {
    use paxosdb::client::{Compare, CompareOp, Txn, TxnOp, TxnOpResult};
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path()).await.unwrap();
    let kv = node.kv();
    let take = Txn {
        compare: vec![Compare::version(b"lock", CompareOp::Equal, 0)],
        success: vec![TxnOp::put(b"lock", b"a"), TxnOp::put(b"owner", b"a")],
        failure: vec![TxnOp::get(b"lock")],
    };
    assert!(kv.txn(&take).await.unwrap().succeeded);
    let again = kv.txn(&take).await.unwrap();
    assert!(!again.succeeded);
    match &again.results[..] {
        [TxnOpResult::Get(Some(v))] => assert_eq!(v.value, b"a"),
        other => panic!("the failure branch's get: {other:?}"),
    }
    assert_eq!(kv.get(b"owner").await.unwrap().unwrap().value, b"a");
    node.shutdown().await;
}
