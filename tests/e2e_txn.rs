//! Transactions end to end, through the real binary: the Rust client's `Client::txn` over
//! gRPC and the `paxosdb txn` CLI, against a three-node cluster.
//!
//! A transaction is one log entry: its comparisons and its branch run with nothing in
//! between. The bank scenario checks exactly that under contention: clients on every node
//! move money between accounts with read-then-compare-versions transactions, retrying
//! when a comparison fails; if a transaction were not atomic, or compared against a stale
//! state, money would appear or vanish.

mod common;

use common::{Cluster, BIN};
use paxosdb::client::{Compare, CompareOp, Txn, TxnOp, TxnOpResult};
use paxosdb::command::{ScanRange, WriteResult};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

const ACCOUNTS: usize = 5;
const START: i64 = 100;

fn account(i: usize) -> Vec<u8> {
    format!("bank/{i}").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transaction_is_conditional_atomic_and_answers_every_operation() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    let c = cluster.client_for(follower);

    // Create-if-absent: the success branch runs once, then the failure branch.
    let take = Txn {
        compare: vec![Compare::version(b"lock", CompareOp::Equal, 0)],
        success: vec![TxnOp::put(b"lock", b"a"), TxnOp::put(b"owner", b"a")],
        failure: vec![TxnOp::get(b"lock")],
    };
    let first = c.txn(&take).await.unwrap();
    assert!(first.succeeded);
    let [TxnOpResult::Write(WriteResult::Put { version: v1, .. }), TxnOpResult::Write(WriteResult::Put { version: v2, .. })] =
        first.results[..]
    else {
        panic!("two put results: {first:?}");
    };
    assert_eq!(v2, v1 + 1, "each change takes the next revision");
    let again = c.txn(&take).await.unwrap();
    assert!(!again.succeeded);
    match &again.results[..] {
        [TxnOpResult::Get(Some(v))] => assert_eq!((v.value.as_slice(), v.version), (&b"a"[..], v1)),
        other => panic!("the failure branch's get: {other:?}"),
    }

    // Ranges and range deletes see the transaction's own earlier writes.
    let mixed = Txn {
        compare: vec![Compare::value(b"owner", CompareOp::Equal, b"a")],
        success: vec![
            TxnOp::put(b"tmp/1", b"x"),
            TxnOp::put(b"tmp/2", b"y"),
            TxnOp::Range {
                range: ScanRange::Prefix(b"tmp/".to_vec()),
                limit: 0,
            },
            TxnOp::DeleteRange {
                range: ScanRange::Prefix(b"tmp/".to_vec()),
            },
            TxnOp::delete(b"lock"),
        ],
        failure: vec![],
    };
    let done = cluster.client_for(leader).txn(&mixed).await.unwrap();
    assert!(done.succeeded);
    match &done.results[2] {
        TxnOpResult::Range { items, more: false } => {
            let keys: Vec<&[u8]> = items.iter().map(|kv| kv.key.as_slice()).collect();
            assert_eq!(keys, [&b"tmp/1"[..], b"tmp/2"]);
        }
        other => panic!("range result: {other:?}"),
    }
    assert_eq!(done.results[3], TxnOpResult::DeleteRange { deleted: 2 });
    let (lock, _) = c.get(b"lock", false).await.unwrap();
    assert_eq!(lock, None, "the lock was deleted, read through a follower");

    // A transaction may carry up to 4 × the value limit, over gRPC too (more than one
    // plain request's message bound).
    let value = vec![b'v'; 900 * 1024];
    let large = Txn {
        success: (0..3)
            .map(|i| TxnOp::put(format!("large/{i}").as_bytes(), &value))
            .collect(),
        ..Txn::default()
    };
    assert!(c.txn(&large).await.unwrap().succeeded);

    // Bad input is refused before anything is proposed, and changes nothing.
    let bad = Txn {
        compare: vec![],
        success: vec![TxnOp::put(b"fine", b"1"), TxnOp::put(b"", b"empty key")],
        failure: vec![],
    };
    match c.txn(&bad).await {
        Err(paxosdb::Error::InvalidInput(m)) => assert!(m.contains("key"), "{m}"),
        other => panic!("an empty key in a transaction: {other:?}"),
    }
    assert_eq!(c.get(b"fine", false).await.unwrap().0, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bank_transfers_in_transactions_keep_the_total() {
    let cluster = Cluster::start(3).await;
    let setup = Txn {
        success: (0..ACCOUNTS)
            .map(|i| TxnOp::put(&account(i), START.to_string().as_bytes()))
            .collect(),
        ..Txn::default()
    };
    assert!(cluster.client_for(1).txn(&setup).await.unwrap().succeeded);

    let mut tasks = Vec::new();
    for worker in 0..6u64 {
        let c = cluster.client_for(worker % 3 + 1);
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            let mut conflicts = 0;
            for n in 0..15 {
                let from = (worker as usize + n) % ACCOUNTS;
                let to = (from + 1 + n % (ACCOUNTS - 1)) % ACCOUNTS;
                loop {
                    let read = Txn {
                        success: vec![TxnOp::get(&account(from)), TxnOp::get(&account(to))],
                        ..Txn::default()
                    };
                    let r = c.txn(&read).await.unwrap();
                    let [TxnOpResult::Get(Some(a)), TxnOpResult::Get(Some(b))] = &r.results[..]
                    else {
                        panic!("balances: {r:?}");
                    };
                    let bal = |v: &[u8]| std::str::from_utf8(v).unwrap().parse::<i64>().unwrap();
                    let amount = 1 + (n as i64 % 7);
                    let transfer = Txn {
                        compare: vec![
                            Compare::version(&account(from), CompareOp::Equal, a.version),
                            Compare::version(&account(to), CompareOp::Equal, b.version),
                        ],
                        success: vec![
                            TxnOp::put(
                                &account(from),
                                (bal(&a.value) - amount).to_string().as_bytes(),
                            ),
                            TxnOp::put(
                                &account(to),
                                (bal(&b.value) + amount).to_string().as_bytes(),
                            ),
                        ],
                        failure: vec![],
                    };
                    if c.txn(&transfer).await.unwrap().succeeded {
                        done += 1;
                        break;
                    }
                    conflicts += 1;
                }
            }
            (done, conflicts)
        }));
    }
    let (mut done, mut conflicts) = (0, 0);
    for t in tasks {
        let (d, c) = t.await.unwrap();
        done += d;
        conflicts += c;
    }
    assert_eq!(done, 6 * 15);
    let c = cluster.client_for(2);
    let rows = c
        .scan(&ScanRange::Prefix(b"bank/".to_vec()), 0, false)
        .await
        .unwrap();
    let total: i64 = (rows.items.iter())
        .map(|kv| {
            std::str::from_utf8(&kv.value)
                .unwrap()
                .parse::<i64>()
                .unwrap()
        })
        .sum();
    assert_eq!(rows.items.len(), ACCOUNTS);
    assert_eq!(total, START * ACCOUNTS as i64, "money appeared or vanished");
    eprintln!("{done} transfers, {conflicts} retried after a failed comparison");
}

fn txn_cli(cluster: &Cluster, args: &[&str], script: &str) -> std::process::Output {
    let mut child = Command::new(BIN)
        .args(["--endpoints", &cluster.endpoints().join(",")])
        .arg("txn")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run paxosdb txn");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_txn_command_reads_a_script_and_exits_by_branch() {
    let cluster = Cluster::start(3).await;
    let script =
        "version(\"lock\") = 0\n\nput lock me\nput \"lock holder\" \"me, myself\"\n\nget lock\n";
    let o = txn_cli(&cluster, &[], script);
    assert!(o.status.success(), "{o:?}");
    let out = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!(lines[0], "SUCCESS");
    assert!(lines[1].starts_with("OK version=") && lines[2].starts_with("OK version="));

    // Again: the lock is taken, the failure branch runs, exit code 1.
    let o = txn_cli(&cluster, &["--json"], script);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["succeeded"], false);
    assert_eq!(v["results"][0]["get"]["value"], "me");
    let (holder, _) = cluster
        .client_for(3)
        .get(b"lock holder", false)
        .await
        .unwrap();
    assert_eq!(holder.unwrap().value, b"me, myself");

    // A script with an error names its line and sends nothing.
    let o = txn_cli(&cluster, &[], "put early 1\nput late\n");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("line 2") && err.contains("put takes"), "{err}");
    assert_eq!(
        cluster.client_for(1).get(b"early", false).await.unwrap().0,
        None
    );
}

/// etcd's create revision through the real binary: a key keeps the revision it was
/// created at through overwrites (read back by the client), a transaction compares it
/// (through a follower, the gRPC client and the CLI's `create(...)`), and a key deleted and
/// written again has a new one, so a comparison on the old one no longer holds. A CLI
/// script puts with a lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_keeps_its_create_revision_and_transactions_compare_it() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    let c = cluster.client_for(follower);
    let created = c.put(b"term", b"1", false).await.unwrap().version;
    let last = c.put(b"term", b"2", false).await.unwrap().version;
    assert!(last > created);
    let read = |c: paxosdb::client::Client| async move {
        let (t, _) = c.get_timed(b"term", false).await.unwrap();
        let t = t.expect("the key");
        (t.create_revision, t.value.version)
    };
    assert_eq!(read(c.clone()).await, (created, last));

    let compare_created = |rev: u64| Txn {
        compare: vec![Compare::create(b"term", CompareOp::Equal, rev)],
        success: vec![TxnOp::put(b"term", b"mine")],
        failure: vec![TxnOp::get(b"term")],
    };
    assert!(!c.txn(&compare_created(last)).await.unwrap().succeeded);
    assert!(c.txn(&compare_created(created)).await.unwrap().succeeded);
    let (still, _) = read(c.clone()).await;
    assert_eq!(still, created, "an overwrite in a transaction keeps it");

    // The CLI compares it too, and exits by branch.
    let script = |rev: u64| format!("create(\"term\") = {rev}\n\nput term cli\n\nget term\n");
    let o = txn_cli(&cluster, &[], &script(created));
    assert!(o.status.success(), "{o:?}");

    // Deleted and written again: a new create revision; the old one no longer holds.
    c.delete(b"term", false).await.unwrap();
    let again = c.put(b"term", b"3", false).await.unwrap().version;
    assert_eq!(read(c.clone()).await, (again, again));
    assert!(!c.txn(&compare_created(created)).await.unwrap().succeeded);
    let o = txn_cli(&cluster, &[], &script(created));
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    // Absent: 0.
    let absent = Txn {
        compare: vec![Compare::create(b"nothing", CompareOp::Equal, 0)],
        ..Txn::default()
    };
    assert!(c.txn(&absent).await.unwrap().succeeded);

    // A script puts with a lease: the key is attached to it and goes with it.
    let lease = c.lease_grant(Duration::from_secs(60)).await.unwrap();
    let o = txn_cli(
        &cluster,
        &[],
        &format!("put leader me --lease {}\n", lease.id),
    );
    assert!(o.status.success(), "{o:?}");
    let ttl = c.lease_time_to_live(lease.id, true).await.unwrap().unwrap();
    assert_eq!(ttl.keys, vec![b"leader".to_vec()]);
    c.lease_revoke(lease.id).await.unwrap();
    assert_eq!(c.get(b"leader", false).await.unwrap().0, None);
}
