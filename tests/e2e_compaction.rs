//! Log compaction and catch-up on real processes: a 3-node cluster of the built binary
//! with a small log budget (trim in steps of 50 entries, keep at most 200 for laggards).
//!
//! The script: the logs stay short while everyone is up; a node down for a few entries
//! catches up from the log; a node down while far more than the budget was written (with
//! overwrites and deletes) finds its missing range trimmed away everywhere, fetches a
//! peer's state instead, and ends with exactly the others' state; then it follows the log
//! again.

mod common;

use common::{eventually, Cluster};
use paxosdb::command::{KeyValue, ScanRange};
use std::time::Duration;

const SMALL_LOG: &[(&str, &str)] = &[
    ("PAXOSDB_COMPACT_EVERY_ENTRIES", "50"),
    ("PAXOSDB_LOG_KEEP_ENTRIES", "200"),
];

/// Node `id`'s whole key space, read locally (stale), with its applied index.
async fn local_state(c: &Cluster, id: u64) -> Option<(u64, Vec<KeyValue>)> {
    let r = c
        .client_for(id)
        .scan(
            &ScanRange::Range {
                from: vec![],
                to: None,
            },
            10_000,
            true,
        )
        .await
        .ok()?;
    assert!(!r.more, "test data fits one scan");
    Some((r.applied_index, r.items))
}

/// Waits until node `id` holds exactly what node `reference` holds (writes have stopped).
async fn converged(c: &Cluster, id: u64, reference: u64, what: &str) {
    eventually(Duration::from_secs(60), what, || async move {
        let (a, want) = local_state(c, reference).await?;
        let (b, have) = local_state(c, id).await?;
        (a == b && want == have).then_some(())
    })
    .await;
}

async fn compacted(c: &Cluster, id: u64) -> u64 {
    c.client_for(id)
        .status_of(0)
        .await
        .map(|s| s.compacted_index)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_behind_the_compacted_log_catches_up_by_state_transfer() {
    let mut c = Cluster::start_with(3, SMALL_LOG).await;
    let client = c.client();
    for i in 0..300 {
        let (k, v) = (format!("k{i:04}"), format!("v{i}-a"));
        client.put(k.as_bytes(), v.as_bytes(), false).await.unwrap();
    }
    // Everyone is up: every node trims what every node applied, in steps.
    for id in 1..=3 {
        eventually(Duration::from_secs(20), "every node trims its log", || {
            let c = &c;
            async move { (compacted(c, id).await >= 200).then_some(()) }
        })
        .await;
        let st = c.client_for(id).status_of(0).await.unwrap();
        assert!(
            st.applied_index - st.compacted_index < 200,
            "node {id} keeps a short log: {st:?}"
        );
    }

    let leader = c.leader().await;
    let behind = (1..=3).find(|&id| id != leader).unwrap();

    // A short outage: the others keep its entries, it catches up from the log.
    c.kill(behind);
    for i in 0..20 {
        let (k, v) = (format!("short{i}"), "x");
        client.put(k.as_bytes(), v.as_bytes(), false).await.unwrap();
    }
    c.restart(behind).await;
    converged(&c, behind, leader, "the node catches up from the log").await;
    assert!(
        !c.log_of(behind).contains("fetching its state"),
        "a short outage needs no state transfer"
    );

    // A long outage: far more than the 200 kept entries, overwrites and deletes included.
    let before = c.applied(behind).await.unwrap();
    c.kill(behind);
    for i in 0..300 {
        let k = format!("k{i:04}");
        if i % 3 == 0 {
            client.delete(k.as_bytes(), false).await.unwrap();
        } else {
            let v = format!("v{i}-b");
            client.put(k.as_bytes(), v.as_bytes(), false).await.unwrap();
        }
    }
    for i in 300..600 {
        let (k, v) = (format!("k{i:04}"), format!("v{i}-a"));
        client.put(k.as_bytes(), v.as_bytes(), false).await.unwrap();
    }
    for id in (1..=3).filter(|&id| id != behind) {
        eventually(
            Duration::from_secs(20),
            "the running nodes trim past the stopped one",
            || {
                let c = &c;
                async move { (compacted(c, id).await > before).then_some(()) }
            },
        )
        .await;
    }

    c.restart(behind).await;
    converged(
        &c,
        behind,
        leader,
        "the node catches up by a state transfer",
    )
    .await;
    let log = c.log_of(behind);
    assert!(log.contains("state installed"), "{log}");
    // The transfer in the metrics, on both sides.
    let metric = |id: u64, name: &str| -> f64 {
        let url = format!("http://{}/metrics", c.node(id).http_addr);
        let (status, text) = common::tools::curl(&[&url]);
        assert_eq!(status, 200, "{text}");
        let line = (text.lines())
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in {text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(
        metric(
            behind,
            "paxosdb_state_transfers_total{outcome=\"installed\"} "
        ) >= 1.0
    );
    assert!(metric(behind, "paxosdb_state_transfer_received_bytes_total ") > 1000.0);
    assert_eq!(metric(behind, "paxosdb_state_transfer_fetching "), 0.0);
    let sent: f64 = (1..=3)
        .filter(|&id| id != behind)
        .map(|id| metric(id, "paxosdb_state_transfers_sent_total "))
        .sum();
    assert!(sent >= 1.0, "no member counted the state it sent");
    let (_, state) = local_state(&c, behind).await.unwrap();
    assert!(
        state.iter().all(|kv| kv.key != b"k0000"),
        "a delete made while it was down"
    );
    assert!(state
        .iter()
        .any(|kv| kv.key == b"k0001" && kv.value == b"v1-b"));

    // It follows the log again, and serves linearizable reads.
    client.put(b"after", b"yes", false).await.unwrap();
    let own = c.client_for(behind);
    let (v, _) = own.get(b"after", false).await.unwrap();
    assert_eq!(v.unwrap().value, b"yes");
    converged(&c, behind, leader, "the node keeps following the log").await;
}
