//! Replicated SQL under the faults the key-value store already survives, on real
//! processes: the leader killed (-9) in the middle of SQL writes, and a new node that
//! joins and must receive the SQL database by state transfer beside the key-value state.
//!
//! What must hold: every acknowledged INSERT is present on every node afterwards (a write
//! whose outcome was unknown may or may not be), no row is there twice (each INSERT runs
//! in its own session), and a node that joined late has exactly the same rows.

mod common;

use common::{eventually, Cluster, BIN};
use paxosdb::client::Client;
use paxosdb::sql::{Params, ReadLevel, Request, Statement, Value};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn one(sql: &str, params: Params) -> Request {
    Request {
        statements: vec![Statement {
            sql: sql.into(),
            params,
        }],
        transaction: false,
    }
}

/// Every `v` in table `w` as node `c` holds it (a stale read of its own database).
async fn values_on(c: &Client) -> Option<Vec<i64>> {
    let out = c
        .sql_query(
            one("SELECT v FROM w ORDER BY v", Params::None),
            ReadLevel::Stale,
        )
        .await
        .ok()?;
    let r = out.results.into_iter().next()?;
    if r.error.is_some() {
        return None;
    }
    Some(
        r.rows
            .into_iter()
            .map(|row| match row.first() {
                Some(Value::Integer(i)) => *i,
                other => panic!("not an integer: {other:?}"),
            })
            .collect(),
    )
}

/// Writers inserting 0, 1, 2, ... (each INSERT its own request and session) until told to
/// stop; they record what was acknowledged.
struct Writers {
    acked: Arc<Mutex<BTreeSet<i64>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    fn start(client: Client, n: i64) -> Writers {
        let acked = Arc::new(Mutex::new(BTreeSet::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tasks = (0..n)
            .map(|w| {
                let (client, acked, stop) = (client.clone(), acked.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut v = w;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let req = one(
                            "INSERT INTO w (v) VALUES (?)",
                            Params::Positional(vec![Value::Integer(v)]),
                        );
                        if let Ok(r) = client.sql_execute(req).await {
                            assert!(r[0].error.is_none(), "{r:?}");
                            acked.lock().unwrap().insert(v);
                        }
                        v += n;
                    }
                })
            })
            .collect();
        Writers { acked, stop, tasks }
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    async fn wait_for(&self, n: usize, what: &str) {
        eventually(Duration::from_secs(60), what, || async move {
            (self.acked() >= n).then_some(())
        })
        .await;
    }

    async fn finish(self) -> BTreeSet<i64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        Arc::try_unwrap(self.acked).unwrap().into_inner().unwrap()
    }
}

/// Every node ends with the same rows, all acknowledged writes among them, none twice.
async fn same_rows_everywhere(c: &Cluster, ids: &[u64], acked: &BTreeSet<i64>) -> Vec<i64> {
    let first = c.client_for(ids[0]);
    // A linearizable read first: after it, every node converges on the same rows.
    first
        .sql_query(
            one("SELECT count(*) FROM w", Params::None),
            ReadLevel::Linearizable,
        )
        .await
        .unwrap();
    let want = values_on(&first).await.expect("rows on the first node");
    for &id in ids {
        let node = c.client_for(id);
        let want = want.clone();
        eventually(
            Duration::from_secs(30),
            &format!("node {id} holds the same rows"),
            || {
                let (node, want) = (node.clone(), want.clone());
                async move { (values_on(&node).await? == want).then_some(()) }
            },
        )
        .await;
    }
    let have: BTreeSet<i64> = want.iter().copied().collect();
    assert_eq!(have.len(), want.len(), "a row applied twice");
    let lost: Vec<&i64> = acked.difference(&have).collect();
    assert!(lost.is_empty(), "acknowledged INSERTs lost: {lost:?}");
    want
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_sql_writes_survive_a_killed_leader() {
    let mut c = Cluster::start(3).await;
    c.client()
        .sql_execute(one("CREATE TABLE w (v INTEGER)", Params::None))
        .await
        .unwrap();
    let writers = Writers::start(c.client(), 4);
    writers.wait_for(40, "SQL writes before the kill").await;
    let leader = c.leader().await;
    c.kill(leader);
    let n = writers.acked();
    writers.wait_for(n + 40, "SQL writes after the kill").await;
    c.restart(leader).await;
    let n = writers.acked();
    writers
        .wait_for(n + 20, "SQL writes after the restart")
        .await;
    let acked = writers.finish().await;
    same_rows_everywhere(&c, &[1, 2, 3], &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_joining_node_receives_the_sql_database_by_state_transfer() {
    let mut c = Cluster::start(3).await;
    let client = c.client();
    client
        .sql_execute(one("CREATE TABLE w (v INTEGER)", Params::None))
        .await
        .unwrap();
    client.put(b"kv-too", b"yes", false).await.unwrap();
    let writers = Writers::start(c.client(), 2);
    writers.wait_for(30, "SQL writes before the join").await;
    let a4 = c.spawn_joiner(4, 1);
    let out = tokio::process::Command::new(BIN)
        .args(["cluster", "add-node", "4", &a4])
        .env("PAXOSDB_ENDPOINTS", c.endpoints().join(","))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n = writers.acked();
    writers
        .wait_for(n + 20, "SQL writes with four members")
        .await;
    let acked = writers.finish().await;
    same_rows_everywhere(&c, &[1, 2, 3, 4], &acked).await;
    // And the key-value state came with it.
    let (v, _) = c.client_for(4).get(b"kv-too", true).await.unwrap();
    assert_eq!(v.expect("the key").value, b"yes");
}
