//! A single-node paxosdb inside this program: key-value data and SQL through in-process
//! handles, then a restart on the same directory that finds everything again.
//!
//! ```sh
//! cargo run --example single_node              # in a temporary directory
//! cargo run --example single_node -- my-data   # in ./my-data (kept)
//! ```
//!
//! `tests/embedded.rs` runs [`run`] in CI.

use paxosdb::client::CasExpect;
use paxosdb::command::ScanRange;
use paxosdb::embed::{Consistency, Node, Value};
use std::path::Path;

/// What the example saw, for the test that runs it.
#[derive(Debug, PartialEq)]
pub struct Report {
    /// `greeting` after the compare-and-swap, read back after the restart.
    pub greeting: Vec<u8>,
    /// Keys under `user/` after the restart.
    pub users: Vec<String>,
    /// The `notes` table after the restart: (id, body).
    pub notes: Vec<(i64, String)>,
}

/// Writes, reads, restarts and reads again in `dir`, printing as it goes.
pub async fn run(dir: &Path) -> paxosdb::Result<Report> {
    let node = Node::start(dir).await?;
    println!("node {} started, data in {}", node.id(), dir.display());

    // Key-value: every write is in the log and fsynced before it is acknowledged.
    let kv = node.kv();
    let put = kv.put(b"greeting", b"hello").await?;
    println!("put greeting = hello (version {})", put.version);
    let swapped = kv
        .cas(
            b"greeting",
            CasExpect::Value(b"hello".to_vec()),
            b"hello, world",
        )
        .await?;
    println!("cas hello -> hello, world: succeeded={}", swapped.succeeded);
    for (i, name) in ["ada", "grace", "barbara"].iter().enumerate() {
        kv.put(format!("user/{i}").as_bytes(), name.as_bytes())
            .await?;
    }
    kv.delete(b"user/2", false).await?;

    // SQL: statements through the log, queries after a read barrier.
    let sql = node.sql();
    sql.execute(
        "CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)",
        (),
    )
    .await?;
    for body in ["buy milk", "call home"] {
        let done = sql
            .execute("INSERT INTO notes (body) VALUES (?)", [body])
            .await?;
        println!("inserted note {:?}", done.last_insert_id);
    }
    if let Err(e) = sql
        .execute("INSERT INTO notes (body) VALUES (NULL)", ())
        .await
    {
        println!("refused, nothing changed: {e}");
    }
    node.shutdown().await;
    println!("stopped; starting again on the same directory");

    let node = Node::start(dir).await?;
    let (greeting, index) = node
        .kv()
        .get_with(b"greeting", Consistency::Linearizable)
        .await?;
    let greeting = greeting.map(|v| v.value).unwrap_or_default();
    println!(
        "greeting = {} (applied index {index})",
        String::from_utf8_lossy(&greeting)
    );
    let scan = node
        .kv()
        .scan(
            &ScanRange::Prefix(b"user/".to_vec()),
            0,
            Consistency::Linearizable,
        )
        .await?;
    let users: Vec<String> = scan
        .items
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect();
    println!("users: {users:?}");
    let rows = node
        .sql()
        .query("SELECT id, body FROM notes ORDER BY id", ())
        .await?;
    let notes: Vec<(i64, String)> = rows
        .rows
        .iter()
        .map(|r| match (&r[0], &r[1]) {
            (Value::Integer(id), Value::Text(body)) => (*id, body.clone()),
            other => panic!("unexpected row {other:?}"),
        })
        .collect();
    for (id, body) in &notes {
        println!("note {id}: {body}");
    }
    node.shutdown().await;
    Ok(Report {
        greeting,
        users,
        notes,
    })
}

#[allow(dead_code)] // a module of tests/embedded.rs, where only `run` is used
#[tokio::main]
async fn main() -> paxosdb::Result<()> {
    match std::env::args().nth(1) {
        Some(dir) => run(Path::new(&dir)).await.map(drop),
        None => {
            let dir = tempfile::tempdir()?;
            run(dir.path()).await.map(drop)
        }
    }
}
