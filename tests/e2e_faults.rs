//! End-to-end fault tests on real processes: a 3-node cluster of the built `paxosdb`
//! binary on loopback, nodes killed with SIGKILL and restarted. Each test checks the
//! promise that matters: every acknowledged write survives, writes continue while a
//! majority lives, a restarted node catches up, a retried write is applied at most once.

mod common;

use common::workload::{assert_contains_all, read_all, Writers};
use common::{eventually, Cluster};
use paxosdb::client::{CasExpect, Session};
use paxosdb::command::ScanRange;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_killed_during_writes_then_restarted_catches_up() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let writers = Writers::start(cluster.client(), 8, "k/");
    writers.wait_for(200, "200 writes before the kill").await;

    cluster.kill(leader);
    let at_kill = writers.acked();
    let new_leader = cluster.wait_for_leader().await;
    assert_ne!(new_leader, leader, "a new leader must take over");
    writers
        .wait_for(at_kill + 300, "300 more writes after the leader was killed")
        .await;
    let acked = writers.finish().await;

    let c = cluster.client();
    let have = read_all(&c, "k/").await;
    assert_contains_all(&have, &acked);

    // The killed node comes back, catches up, and serves the same data as a stale read.
    cluster.restart(leader).await;
    let target = cluster.applied(new_leader).await.expect("leader status");
    eventually(Duration::from_secs(30), "restarted node catches up", || {
        let cl = &cluster;
        async move { (cl.applied(leader).await? >= target).then_some(()) }
    })
    .await;
    let back = cluster.client_for(leader);
    let reference = cluster.client_for(new_leader);
    for key in acked.keys().step_by(37).take(50) {
        let (mine, _) = back.get(key.as_bytes(), true).await.unwrap();
        let (theirs, _) = reference.get(key.as_bytes(), true).await.unwrap();
        assert_eq!(mine, theirs, "stale read of {key} on the restarted node");
        assert!(mine.is_some());
    }
    let stale_all = back
        .scan(&ScanRange::Prefix(b"k/".to_vec()), 10_000, true)
        .await
        .unwrap();
    assert_eq!(stale_all.items.len(), have.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn all_nodes_killed_and_restarted_keep_every_acknowledged_write() {
    let mut cluster = Cluster::start(3).await;
    let writers = Writers::start(cluster.client(), 8, "all/");
    writers.wait_for(300, "300 acknowledged writes").await;
    // Kill everything while writes are still in flight.
    for id in 1..=3 {
        cluster.kill(id);
    }
    let acked = writers.finish().await;
    assert!(acked.len() >= 300);
    for id in 1..=3 {
        cluster.spawn(id);
    }
    cluster.wait_for_leader().await;
    let have = read_all(&cluster.client(), "all/").await;
    assert_contains_all(&have, &acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retried_cas_after_leader_kill_is_applied_at_most_once() {
    let mut cluster = Cluster::start(3).await;
    let c = cluster.client();
    c.put(b"counter", b"0", false).await.unwrap();

    // The CAS is acknowledged by the leader, which dies before the client "sees" it:
    // the client retries the same session on another node.
    let leader = cluster.leader().await;
    let session = Session {
        client_id: 4242,
        seq: 1,
    };
    let first = cluster
        .client_for(leader)
        .cas_in_session(session, b"counter", CasExpect::Value(b"0".to_vec()), b"1")
        .await
        .unwrap();
    assert!(first.succeeded);
    cluster.kill(leader);
    let other = (1..=3).find(|id| *id != leader).unwrap();
    let retry = cluster
        .client_for(other)
        .cas_in_session(session, b"counter", CasExpect::Value(b"0".to_vec()), b"1")
        .await
        .unwrap();
    // Applied twice, the retry would compare "0" with "1" and fail.
    assert_eq!(retry, first, "the retry must get the original result");
    let (v, _) = c.get(b"counter", false).await.unwrap();
    let v = v.unwrap();
    assert_eq!(v.value, b"1");
    assert_eq!(v.version, first.version, "no second write happened");

    // A CAS sent to a leader that is killed right away, retried elsewhere until answered:
    // whatever happened to the first attempt, the counter moves by exactly one.
    cluster.restart(leader).await;
    let leader2 = cluster.wait_for_leader().await;
    let s2 = Session {
        client_id: 4242,
        seq: 2,
    };
    let doomed = cluster.client_for(leader2);
    let attempt = tokio::spawn(async move {
        doomed
            .cas_in_session(s2, b"counter", CasExpect::Value(b"1".to_vec()), b"2")
            .await
    });
    cluster.kill(leader2);
    let _ = attempt.await; // outcome unknown: the node died
    let survivor = (1..=3).find(|id| *id != leader2).unwrap();
    let answer = cluster
        .client_for(survivor)
        .cas_in_session(s2, b"counter", CasExpect::Value(b"1".to_vec()), b"2")
        .await
        .unwrap();
    assert!(
        answer.succeeded,
        "retry must report the single application: {answer:?}"
    );
    let (v, _) = cluster
        .client_for(survivor)
        .get(b"counter", false)
        .await
        .unwrap();
    assert_eq!(v.unwrap().value, b"2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_with_wiped_data_directory_is_refused_by_its_peers() {
    let mut cluster = Cluster::start(3).await;
    let c = cluster.client();
    for i in 0..20 {
        c.put(format!("w{i}").as_bytes(), b"v", false)
            .await
            .unwrap();
    }
    let leader = cluster.leader().await;
    let victim = (1..=3).find(|id| *id != leader).unwrap();
    cluster.kill(victim);
    std::fs::remove_dir_all(cluster.data_dir(victim)).unwrap();
    cluster.restart(victim).await;
    eventually(
        Duration::from_secs(20),
        "the leader refuses the wiped node",
        || {
            let log = cluster.log_of(leader);
            async move {
                log.contains("came back with a different data directory")
                    .then_some(())
            }
        },
    )
    .await;
    // The others go on; the wiped node learns nothing and so can vote for nothing.
    c.put(b"after-wipe", b"ok", false).await.unwrap();
    assert_eq!(cluster.applied(victim).await, Some(0));
}
