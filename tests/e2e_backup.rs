//! Backup and restore with real processes: `paxosdb backup` from a 3-node cluster under
//! write load, `paxosdb restore` into a new 3-node cluster, `GET /v1/backup` with curl,
//! and damaged files refused.

mod common;

use common::tools::{text, tool};
use common::workload::{read_all, Writers};
use common::{eventually, Cluster, BIN};
use paxosdb::sql::{Params, ReadLevel, Request, Statement, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const PASSWORD: &str = "backup-test-pw";

/// `paxosdb ARGS` against `c` as its administrator.
fn admin_cli(c: &Cluster, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["--endpoints", &c.endpoints().join(","), "--timeout", "10s"])
        .args(["--user", "admin", "--password-file"])
        .arg(c.admin_password_file())
        .args(args)
        .output()
        .expect("run paxosdb")
}

/// `paxosdb ARGS` without a cluster (verify, restore).
fn offline(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run paxosdb")
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "failed: {}", text(o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn sql(statements: &[&str]) -> Request {
    Request {
        statements: statements
            .iter()
            .map(|s| Statement {
                sql: s.to_string(),
                params: Params::None,
            })
            .collect(),
        transaction: false,
    }
}

/// Restores `file` into `n` nodes' directories under `dir`, laid out as the harness will
/// start them (`restored-N`, the SQL database in `node-N-sql`); only the ids of
/// `--peers` matter to the data (the harness picks the addresses at start).
fn restore_nodes(file: &Path, dir: &Path, n: u64) -> Vec<PathBuf> {
    let peers = (1..=n)
        .map(|i| format!("{i}=127.0.0.1:{}", 9 + i))
        .collect::<Vec<_>>()
        .join(",");
    (1..=n)
        .map(|i| {
            let data = dir.join(format!("restored-{i}"));
            let sql = dir.join(format!("node-{i}-sql"));
            let out = ok(&offline(&[
                "restore",
                file.to_str().unwrap(),
                "--id",
                &i.to_string(),
                "--peers",
                &peers,
                "--data-dir",
                data.to_str().unwrap(),
                "--sql-dir",
                sql.to_str().unwrap(),
            ]));
            assert!(
                out.contains(&format!("as node {i} of a new cluster")),
                "{out}"
            );
            data
        })
        .collect()
}

/// For each writer (`w/NN-`), the index of every key present: they must be its first
/// keys, with none missing in between.
fn assert_prefixes(restored: &BTreeMap<String, String>, acked: &BTreeMap<String, String>) {
    let mut by_writer: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for k in restored.keys() {
        let (w, i) = k.rsplit_once('-').expect("a writer's key");
        by_writer.entry(w).or_default().push(i.parse().unwrap());
    }
    for (w, mut is) in by_writer {
        is.sort_unstable();
        let last = *is.last().unwrap();
        // Every acknowledged key of this writer up to its last present one is present.
        for (k, _) in acked.range(format!("{w}-")..format!("{w}-{:06}", last + 1)) {
            assert!(restored.contains_key(k), "{k} is missing below {w}-{last}");
        }
    }
}

/// A backup taken while four writers write holds exactly a prefix of the log: every
/// write acknowledged before `paxosdb backup` began, each writer's keys up to some point
/// and none after, and the SQL tables; it restores into a new 3-node cluster (ids 1-3,
/// other addresses) that serves it and takes new writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_writes_restores_into_a_new_three_node_cluster() {
    let c = Cluster::builder(3).admin(PASSWORD).start().await;
    let admin = c.admin_client();
    admin
        .sql_execute(sql(&[
            "CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT, balance INTEGER)",
            "INSERT INTO accounts (owner, balance) VALUES ('ada', 100), ('bob', 50)",
        ]))
        .await
        .unwrap();
    let writers = Writers::start(admin.clone(), 4, "w/");
    writers.wait_for(300, "300 writes before the backup").await;
    let before = writers.acked_now();
    let file = c.dir.path().join("under-load.backup");
    let out = ok(&admin_cli(&c, &["backup", file.to_str().unwrap()]));
    let after = writers.acked().max(1);
    writers
        .wait_for(after + 200, "200 writes after the backup")
        .await;
    let all = writers.finish().await;
    assert!(out.contains("applied index"), "{out}");
    assert!(!c.dir.path().join("under-load.backup.part").exists());
    let verified = ok(&offline(&["backup", "--verify", file.to_str().unwrap()]));
    assert!(verified.contains("a valid backup"), "{verified}");

    // The new cluster: the original one keeps running beside it, on other ports.
    let b = Cluster::builder(3).admin(PASSWORD);
    let dirs = restore_nodes(&file, b.dir(), 3);
    let r = b.data_dirs(dirs).start().await;
    let restored_admin = r.admin_client();
    let restored = read_all(&restored_admin, "w/").await;
    let missing: Vec<_> = (before.iter())
        .filter(|(k, v)| restored.get(*k) != Some(*v))
        .map(|(k, _)| k)
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} writes acknowledged before the backup are not in it, e.g. {:?}",
        missing.len(),
        before.len(),
        &missing[..missing.len().min(5)]
    );
    for (k, v) in &restored {
        // A write whose outcome the writer never learned may be there; nothing else.
        if let Some(acked) = all.get(k) {
            assert_eq!(acked, v, "{k} restored with another value");
        }
    }
    assert_prefixes(&restored, &all);
    assert!(
        restored.len() < all.len(),
        "all {} writes are in a backup taken before the last 200 of them",
        all.len()
    );
    let out = restored_admin
        .sql_query(
            sql(&["SELECT owner, balance FROM accounts ORDER BY id"]),
            ReadLevel::Linearizable,
        )
        .await
        .unwrap();
    assert_eq!(
        out.results[0].rows,
        vec![
            vec![Value::Text("ada".into()), Value::Integer(100)],
            vec![Value::Text("bob".into()), Value::Integer(50)],
        ]
    );
    // A cluster of its own: it writes on, and its log went on from the backup's index.
    restored_admin
        .put(b"after/restore", b"yes", false)
        .await
        .unwrap();
    let st = restored_admin.status_of(0).await.unwrap();
    assert!(st.config_id == 1, "{st:?}");
    eventually(
        Duration::from_secs(10),
        "every restored node applies it",
        || {
            let r = &r;
            async move {
                for id in 1..=3 {
                    let c = r.client_for(id).with_auth(r.admin_auth()).unwrap();
                    let (v, _) = c.get(b"after/restore", true).await.ok()?;
                    v.filter(|v| v.value == b"yes")?;
                }
                Some(())
            }
        },
    )
    .await;
}

/// `GET /v1/backup` with curl is the same file (admin only); damaged files are refused
/// by `backup --verify` and `restore` with the offset, and a failed restore leaves no
/// data directory; an existing file is never overwritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_backups_and_damaged_files() {
    let c = Cluster::builder(3).admin(PASSWORD).start().await;
    let admin = c.admin_client();
    for i in 0..50 {
        let k = format!("k{i:02}");
        admin
            .put(k.as_bytes(), &vec![b'x'; 3000], false)
            .await
            .unwrap();
    }
    let dir = c.dir.path();
    let url = format!("http://{}/v1/backup", c.node(2).http_addr);
    // Without credentials: 401, and no file.
    let anon = dir.join("anon.backup");
    let out = tool("curl")
        .args([
            "-s",
            "-o",
            anon.to_str().unwrap(),
            "-w",
            "%{http_code}",
            &url,
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "401",
        "{}",
        text(&out)
    );
    let file = dir.join("http.backup");
    let out = tool("curl")
        .args(["-sf", "-u", &format!("admin:{PASSWORD}"), "-o"])
        .arg(&file)
        .arg(&url)
        .output()
        .unwrap();
    assert!(out.status.success(), "curl: {}", text(&out));
    let verified = ok(&offline(&["backup", "--verify", file.to_str().unwrap()]));
    assert!(verified.contains("node 2's state"), "{verified}");

    // The CLI never overwrites.
    let again = admin_cli(&c, &["backup", file.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(text(&again).contains("exists"), "{}", text(&again));

    let bytes = std::fs::read(&file).unwrap();
    let damaged = [
        (
            "truncated",
            bytes[..bytes.len() * 2 / 3].to_vec(),
            "truncated",
        ),
        ("flipped", flip(&bytes, bytes.len() / 2), "checksum"),
        ("empty", Vec::new(), "not a valid backup"),
    ];
    for (name, content, says) in damaged {
        let f = dir.join(format!("{name}.backup"));
        std::fs::write(&f, content).unwrap();
        let v = offline(&["backup", "--verify", f.to_str().unwrap()]);
        assert!(!v.status.success(), "{name}: verified");
        assert!(text(&v).contains(says), "{name}: {}", text(&v));
        let data = dir.join(format!("{name}-restored"));
        let r = offline(&[
            "restore",
            f.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ]);
        assert!(!r.status.success(), "{name}: restored");
        assert!(text(&r).contains(says), "{name}: {}", text(&r));
        assert!(
            !data.exists(),
            "{name}: a failed restore left {}",
            data.display()
        );
    }
}

/// A restore stopped half way (killed: it could not clean up) leaves its marker, and a
/// server refuses the directory instead of starting from a half-made state.
#[test]
fn a_server_refuses_a_half_restored_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("half");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("RESTORING"), "paxosdb restore under way\n").unwrap();
    let o = offline(&[
        "server",
        "--data-dir",
        data.to_str().unwrap(),
        "--id",
        "1",
        "--peers",
        "1=127.0.0.1:1",
        "--client-addr",
        "127.0.0.1:0",
        "--http-addr",
        "off",
        "--resp-addr",
        "off",
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("holds an unfinished `paxosdb restore`"),
        "{}",
        text(&o)
    );
}

fn flip(bytes: &[u8], at: usize) -> Vec<u8> {
    let mut b = bytes.to_vec();
    b[at] ^= 0x01;
    b
}
