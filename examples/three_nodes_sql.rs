//! Three paxosdb nodes in one process, and a SQL workload across them: a table created
//! through one node, rows inserted through each node in turn and read back linearizably
//! through another, a transfer between two rows as one transaction, and the table read
//! through every node.
//!
//! ```sh
//! cargo run --example three_nodes_sql
//! ```
//!
//! Each node is a full member (its own RocksDB, SQLite database and log in its own
//! directory; peers talk over loopback TCP, as separate machines would). Any node accepts
//! any request: a write through a follower is ordered by the leader's log, and a
//! linearizable read through any node sees every write acknowledged before it.
//! `tests/embedded.rs` runs [`run`] in CI.

use paxosdb::embed::{Node, ReadLevel, Value};
use paxosdb::sql::{Params, Request, Statement};
use std::path::Path;
use std::time::Duration;

/// What the example saw, for the test that runs it.
#[derive(Debug, PartialEq)]
pub struct Report {
    /// After insert number i (1-based), the row count a linearizable read through the
    /// *next* node returned.
    pub counts_seen: Vec<i64>,
    /// The table (owner, balance) as each node returned it at the end.
    pub tables: Vec<Vec<(String, i64)>>,
}

/// Free loopback ports for the peers (a real deployment uses fixed ones).
fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()?;
    held.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

fn owner_balance(rows: &[Vec<Value>]) -> Vec<(String, i64)> {
    rows.iter()
        .map(|r| match (&r[0], &r[1]) {
            (Value::Text(o), Value::Integer(b)) => (o.clone(), *b),
            other => panic!("unexpected row {other:?}"),
        })
        .collect()
}

/// Starts three nodes with their data under `dir`, runs the workload, stops them.
pub async fn run(dir: &Path) -> paxosdb::Result<Report> {
    let ports = free_ports(3)?;
    let members: Vec<String> = (1..=3)
        .map(|i| format!("{i}=127.0.0.1:{}", ports[i - 1]))
        .collect();
    let members = members.join(",");
    let starts = (1..=3u64).map(|id| {
        Node::builder(dir.join(format!("node-{id}")))
            .id(id)
            .peer_addr(format!("127.0.0.1:{}", ports[id as usize - 1]))
            .members(members.clone())
            .start()
    });
    let nodes = futures::future::try_join_all(starts).await?;
    for node in &nodes {
        let st = node.wait_ready(Duration::from_secs(30)).await?;
        println!("node {} ready: leader is node {:?}", node.id(), st.leader);
    }

    nodes[0]
        .sql()
        .execute(
            "CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT NOT NULL, \
             balance INTEGER NOT NULL)",
            (),
        )
        .await?;
    println!("node 1: created table accounts");

    let mut counts_seen = Vec::new();
    for (i, owner) in ["ada", "grace", "edsger", "barbara", "donald", "frances"]
        .into_iter()
        .enumerate()
    {
        let (writer, reader) = (&nodes[i % 3], &nodes[(i + 1) % 3]);
        let done = writer
            .sql()
            .execute(
                "INSERT INTO accounts (owner, balance) VALUES (?, ?)",
                vec![Value::from(owner), Value::from(100)],
            )
            .await?;
        // Linearizable (the default): through another node, and it sees the insert.
        let rows = reader
            .sql()
            .query("SELECT count(*) FROM accounts", ())
            .await?;
        let count = match rows.rows[0][0] {
            Value::Integer(n) => n,
            ref other => panic!("count(*) gave {other:?}"),
        };
        println!(
            "node {}: inserted {owner} (row {:?}); node {} counts {count} rows",
            writer.id(),
            done.last_insert_id,
            reader.id()
        );
        counts_seen.push(count);
    }

    // A transfer: both updates or neither, through node 3, with named parameters.
    let transfer = |sql: &str, owner: &str| Statement {
        sql: sql.to_string(),
        params: Params::Named(vec![
            ("owner".into(), Value::from(owner)),
            ("amount".into(), Value::from(30)),
        ]),
    };
    let results = nodes[2]
        .sql()
        .execute_request(Request {
            statements: vec![
                transfer(
                    "UPDATE accounts SET balance = balance - :amount WHERE owner = :owner",
                    "ada",
                ),
                transfer(
                    "UPDATE accounts SET balance = balance + :amount WHERE owner = :owner",
                    "grace",
                ),
            ],
            transaction: true,
        })
        .await?;
    if let Some(e) = results.iter().find_map(|r| r.error.clone()) {
        return Err(paxosdb::Error::InvalidInput(e));
    }
    println!("node 3: moved 30 from ada to grace in one transaction");

    let mut tables = Vec::new();
    for node in &nodes {
        let rows = node
            .sql()
            .query("SELECT owner, balance FROM accounts ORDER BY id", ())
            .await?;
        let table = owner_balance(&rows.rows);
        let total: i64 = table.iter().map(|(_, b)| b).sum();
        println!("node {}: {table:?} (total {total})", node.id());
        tables.push(table);
    }
    // A stale read answers from the node's own copy at once, and says how fresh it is.
    let stale = nodes[1]
        .sql()
        .query_with("SELECT count(*) FROM accounts", (), ReadLevel::Stale)
        .await?;
    println!(
        "node 2, stale: {:?} at applied index {}",
        stale.rows[0][0], stale.applied_index
    );

    for node in nodes {
        node.shutdown().await;
    }
    Ok(Report {
        counts_seen,
        tables,
    })
}

#[allow(dead_code)] // a module of tests/embedded.rs, where only `run` is used
#[tokio::main]
async fn main() -> paxosdb::Result<()> {
    let dir = tempfile::tempdir()?;
    run(dir.path()).await.map(drop)
}
