//! A three-node cluster in one process: `paxosdb::server::start` on real loopback TCP,
//! driven through `paxosdb::client::Client` with one client per node. Writes (put, cas,
//! delete) go through each node; linearizable reads through every other node must see
//! each write at once, stale reads on every node must converge to the same values, and
//! scans must return the same rows everywhere. Then all nodes shut down cleanly.

mod common;

use common::{eventually, free_ports};
use paxosdb::client::{CasExpect, Client};
use paxosdb::command::{KeyValue, ScanRange, Versioned};
use paxosdb::config::{Config, Member};
use paxosdb::server::{self, RunningServer};
use std::collections::BTreeMap;
use std::time::Duration;

const N: usize = 3;

/// Reads `key` linearizably through every node except `writer` and checks the value.
async fn assert_seen_by_others(
    clients: &[Client],
    writer: usize,
    key: &[u8],
    want: &Option<Versioned>,
) {
    for (j, c) in clients.iter().enumerate().filter(|(j, _)| *j != writer) {
        let (got, _) = c.get(key, false).await.unwrap();
        assert_eq!(
            &got,
            want,
            "node {} after a write of {:?} through node {}",
            j + 1,
            String::from_utf8_lossy(key),
            writer + 1
        );
    }
}

fn versioned(value: &[u8], version: u64) -> Option<Versioned> {
    Some(Versioned {
        value: value.to_vec(),
        version,
    })
}

async fn run(clients: &[Client]) {
    // Expected final state: key → value (None = deleted).
    let mut expected: BTreeMap<Vec<u8>, Option<Versioned>> = BTreeMap::new();
    let mut last_version = 0;

    // Puts through each node, several keys under a common prefix for the scans.
    for (i, c) in clients.iter().enumerate() {
        for k in 0..3 {
            let key = format!("row/{i}/{k}").into_bytes();
            let value = format!("v{i}{k}").into_bytes();
            let r = c.put(&key, &value, true).await.unwrap();
            assert!(r.version > last_version, "versions grow: {r:?}");
            assert_eq!(r.prev, None);
            last_version = r.version;
            let want = versioned(&value, r.version);
            assert_seen_by_others(clients, i, &key, &want).await;
            expected.insert(key, want);
        }
    }

    // Overwrite with return_prev through the next node.
    for i in 0..N {
        let writer = (i + 1) % N;
        let key = format!("row/{i}/0").into_bytes();
        let old = expected[&key].clone();
        let r = clients[writer].put(&key, b"over", true).await.unwrap();
        assert_eq!(
            r.prev,
            old,
            "put returns the value written through node {}",
            i + 1
        );
        assert!(r.version > last_version);
        last_version = r.version;
        let want = versioned(b"over", r.version);
        assert_seen_by_others(clients, writer, &key, &want).await;
        expected.insert(key, want);
    }

    // CAS through each node: on the version, on the value, and one that must fail.
    for (i, c) in clients.iter().enumerate() {
        let key = format!("row/{i}/1").into_bytes();
        let cur = expected[&key].clone().unwrap();
        let r = c
            .cas(&key, CasExpect::Version(cur.version), b"cas1")
            .await
            .unwrap();
        assert!(r.succeeded, "CAS on the current version: {r:?}");
        assert!(r.version > last_version);
        last_version = r.version;
        let want = versioned(b"cas1", r.version);
        assert_seen_by_others(clients, i, &key, &want).await;

        let r = c
            .cas(&key, CasExpect::Value(b"cas1".to_vec()), b"cas2")
            .await
            .unwrap();
        assert!(r.succeeded, "CAS on the current value: {r:?}");
        assert!(r.version > last_version);
        last_version = r.version;
        let want = versioned(b"cas2", r.version);
        assert_seen_by_others(clients, i, &key, &want).await;

        let r = c
            .cas(&key, CasExpect::Value(b"cas1".to_vec()), b"never")
            .await
            .unwrap();
        assert!(!r.succeeded, "CAS on a stale value must fail: {r:?}");
        assert_eq!(r.current, want, "a failed CAS reports the current value");
        assert_eq!(r.version, want.as_ref().unwrap().version);
        assert_seen_by_others(clients, i, &key, &want).await;
        expected.insert(key, want);
    }

    // Deletes through each node.
    for (i, c) in clients.iter().enumerate() {
        let key = format!("row/{}/2", (i + 2) % N).into_bytes();
        let old = expected[&key].clone();
        let r = c.delete(&key, true).await.unwrap();
        assert!(r.deleted);
        assert_eq!(r.prev, old);
        assert_seen_by_others(clients, i, &key, &None).await;
        let r = c.delete(&key, false).await.unwrap();
        assert!(!r.deleted, "deleting a missing key deletes nothing");
        expected.insert(key, None);
    }

    // Stale reads converge to the same values on every node.
    for (j, c) in clients.iter().enumerate() {
        for (key, want) in &expected {
            let what = format!(
                "stale read of {:?} on node {} to equal {want:?}",
                String::from_utf8_lossy(key),
                j + 1
            );
            eventually(Duration::from_secs(10), &what, || async {
                let (got, _) = c.get(key, true).await.ok()?;
                (&got == want).then_some(())
            })
            .await;
        }
    }

    // Scans: every node returns the same rows, equal to what was written.
    let rows: Vec<KeyValue> = expected
        .iter()
        .filter_map(|(k, v)| {
            v.as_ref().map(|v| KeyValue {
                key: k.clone(),
                value: v.value.clone(),
                version: v.version,
            })
        })
        .collect();
    assert_eq!(rows.len(), 6);
    let prefix = ScanRange::Prefix(b"row/".to_vec());
    let range = ScanRange::Range {
        from: b"row/1".to_vec(),
        to: Some(b"row/2".to_vec()),
    };
    let in_range: Vec<KeyValue> = rows
        .iter()
        .filter(|r| r.key.starts_with(b"row/1/"))
        .cloned()
        .collect();
    assert_eq!(in_range.len(), 2);
    for (j, c) in clients.iter().enumerate() {
        let r = c.scan(&prefix, 0, false).await.unwrap();
        assert_eq!(r.items, rows, "prefix scan on node {}", j + 1);
        assert!(!r.more);
        let r = c.scan(&prefix, 4, false).await.unwrap();
        assert_eq!(r.items, rows[..4], "limited scan on node {}", j + 1);
        assert!(r.more);
        let r = c.scan(&range, 0, false).await.unwrap();
        assert_eq!(r.items, in_range, "range scan on node {}", j + 1);
        assert!(!r.more);
        eventually(
            Duration::from_secs(10),
            &format!("stale scan on node {} to equal the written rows", j + 1),
            || async {
                let r = c.scan(&prefix, 0, true).await.ok()?;
                (r.items == rows).then_some(())
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_in_one_process_replicate_writes() {
    let dirs: Vec<tempfile::TempDir> = (0..N).map(|_| tempfile::tempdir().unwrap()).collect();
    let ports = free_ports(2 * N);
    let peers: Vec<Member> = (0..N)
        .map(|i| Member {
            id: i as u64 + 1,
            addr: format!("127.0.0.1:{}", ports[N + i]),
        })
        .collect();
    let mut servers: Vec<RunningServer> = Vec::new();
    for i in 0..N {
        let mut cfg = Config::new(
            i as u64 + 1,
            peers.clone(),
            format!("127.0.0.1:{}", ports[i]),
            dirs[i].path().join("data"),
        );
        cfg.http_addr = Some("off".into());
        cfg.resp_addr = Some("off".into());
        servers.push(server::start(cfg).await.unwrap());
    }
    let clients: Vec<Client> = servers
        .iter()
        .map(|s| Client::new(&[s.client_addr.to_string()]).unwrap())
        .collect();

    let leader = eventually(
        Duration::from_secs(10),
        "all nodes to agree on a leader",
        || async {
            let mut leaders = Vec::new();
            for c in &clients {
                leaders.push(c.status_of(0).await.ok()?.leader_id);
            }
            (leaders[0] != 0 && leaders.iter().all(|l| *l == leaders[0])).then(|| leaders[0])
        },
    )
    .await;
    assert!((1..=N as u64).contains(&leader));

    tokio::time::timeout(Duration::from_secs(60), run(&clients))
        .await
        .expect("the scenario finishes within 60 s");

    for s in &servers {
        assert!(s.node_alive(), "node {} still runs", s.info.config.id);
    }
    for s in servers {
        tokio::time::timeout(Duration::from_secs(10), s.shutdown())
            .await
            .expect("shutdown finishes");
    }
}
