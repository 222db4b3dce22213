//! End-to-end fault tests on real processes: a 3-node cluster of the built `paxosdb`
//! binary on loopback, nodes killed with SIGKILL and restarted. Each test checks the
//! promise that matters: every acknowledged write survives, writes continue while a
//! majority lives, a restarted node catches up, a retried write is applied at most once.

mod common;

use common::workload::{assert_contains_all, read_all, Writers};
use common::{eventually, Cluster};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use paxosdb::client::{CasExpect, Client, ClientOptions, Session};
use paxosdb::command::ScanRange;
use std::io::{Read, Write};
use std::net::TcpStream;
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

/// Sends `sig` to node `id`'s process (which must be running).
fn signal(c: &Cluster, id: u64, sig: Signal) {
    let child = c.nodes[id as usize - 1].child.as_ref().expect("node runs");
    kill(Pid::from_raw(child.id() as i32), sig).expect("signal the node");
}

/// Metric `name` of node `id`, read from its HTTP `/metrics`.
fn metric(c: &Cluster, id: u64, name: &str) -> Option<u64> {
    let mut s = TcpStream::connect(&c.nodes[id as usize - 1].http_addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: n\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Waits until node `id` holds an admitted, unanswered client request: the request
/// reached the node and its waiter exists. Call [`nothing_in_flight`] before sending it,
/// so that an earlier request cannot be taken for it.
async fn request_in_flight(c: &Cluster, id: u64) {
    eventually(
        Duration::from_secs(10),
        &format!("a request in flight on node {id}"),
        || async move { (metric(c, id, "paxosdb_inflight_bytes")? > 0).then_some(()) },
    )
    .await;
}

/// Waits until node `id` holds no admitted, unanswered client request.
async fn nothing_in_flight(c: &Cluster, id: u64) {
    eventually(
        Duration::from_secs(10),
        &format!("no request in flight on node {id}"),
        || async move { (metric(c, id, "paxosdb_inflight_bytes")? == 0).then_some(()) },
    )
    .await;
}

/// A client of node `id` alone whose attempts end within a second.
fn impatient_client(c: &Cluster, id: u64) -> Client {
    let opts = ClientOptions {
        timeout: Duration::from_secs(1),
        attempt_timeout: Duration::from_secs(1),
        tls: None,
    };
    Client::with_options(&[c.nodes[id as usize - 1].client_addr.clone()], opts).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retried_cas_after_leader_kill_is_applied_at_most_once() {
    let mut cluster = Cluster::start(3).await;
    let c = cluster.client();
    c.put(b"counter", b"0", false).await.unwrap();
    let (v, _) = c.get(b"counter", false).await.unwrap();
    let before = v.unwrap().version;

    // A CAS whose answer is lost: the followers are stopped, so the leader proposes it and
    // waits; the client gives up (its connection is dropped) while it waits; then the
    // followers resume and the CAS is decided and applied with nobody to answer.
    let leader = cluster.leader().await;
    let followers: Vec<u64> = (1..=3).filter(|&id| id != leader).collect();
    let session = Session {
        client_id: 4242,
        seq: 1,
    };
    nothing_in_flight(&cluster, leader).await;
    for &f in &followers {
        signal(&cluster, f, Signal::SIGSTOP);
    }
    let to_leader = cluster.client_for(leader);
    let lost = tokio::spawn(async move {
        to_leader
            .cas_in_session(session, b"counter", CasExpect::Value(b"0".to_vec()), b"1")
            .await
    });
    request_in_flight(&cluster, leader).await;
    lost.abort();
    assert!(
        lost.await.unwrap_err().is_cancelled(),
        "the answer was read"
    );
    for &f in &followers {
        signal(&cluster, f, Signal::SIGCONT);
    }
    let applied = eventually(Duration::from_secs(20), "the lost CAS is applied", || {
        let c = c.clone();
        async move {
            let (v, _) = c.get(b"counter", false).await.ok()?;
            v.filter(|v| v.value == b"1")
        }
    })
    .await;
    assert!(applied.version > before);
    // The retry, in the same session and on another node, gets the original result.
    // Applied again, it would compare "0" with "1" and fail.
    let other = followers[0];
    let retry = cluster
        .client_for(other)
        .cas_in_session(session, b"counter", CasExpect::Value(b"0".to_vec()), b"1")
        .await
        .unwrap();
    assert!(
        retry.succeeded,
        "the retry must get the original result: {retry:?}"
    );
    assert_eq!(retry.version, applied.version, "{retry:?}");
    let (v, _) = c.get(b"counter", false).await.unwrap();
    let v = v.unwrap();
    assert_eq!(v.value, b"1");
    assert_eq!(v.version, applied.version, "no second write happened");

    // A CAS that reached a leader which is killed before it is decided (the followers are
    // stopped), retried elsewhere in the same session: applied exactly once.
    let leader2 = cluster.leader().await;
    let followers2: Vec<u64> = (1..=3).filter(|&id| id != leader2).collect();
    let s2 = Session {
        client_id: 4242,
        seq: 2,
    };
    for &f in &followers2 {
        signal(&cluster, f, Signal::SIGSTOP);
    }
    nothing_in_flight(&cluster, leader2).await;
    let doomed = impatient_client(&cluster, leader2);
    let attempt = tokio::spawn(async move {
        doomed
            .cas_in_session(s2, b"counter", CasExpect::Value(b"1".to_vec()), b"2")
            .await
    });
    request_in_flight(&cluster, leader2).await;
    cluster.kill(leader2);
    for &f in &followers2 {
        signal(&cluster, f, Signal::SIGCONT);
    }
    let first = attempt.await.unwrap();
    assert!(first.is_err(), "answered without a majority: {first:?}");
    let survivor = followers2[0];
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
    let v = v.unwrap();
    assert_eq!(v.value, b"2");
    assert_eq!(v.version, answer.version, "applied once");
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
