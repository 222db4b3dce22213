//! Membership changes on real processes, under a concurrent write workload whose
//! acknowledged writes must all be present at the end.
//!
//! The script: grow 3 → 5 (new nodes started with --join, added with the real CLI, each
//! copying the cluster's state by itself), shrink 5 → 3 (removed nodes stop serving and
//! say why, also after a restart), replace a node; and kill -9 the leader in the middle
//! of a change, and the new node in the middle of its join: the cluster finishes the
//! change or drops it, and a retry completes it.

mod common;

use common::workload::{assert_contains_all, read_all, Writers};
use common::{eventually, Cluster, BIN};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use paxosdb::client::{Client, ClientOptions};
use std::time::Duration;

/// Sends `sig` to node `id`'s process (which must be running).
fn signal(c: &Cluster, id: u64, sig: Signal) {
    let child = c.nodes[id as usize - 1].child.as_ref().expect("node runs");
    kill(Pid::from_raw(child.id() as i32), sig).expect("signal the node");
}

/// Runs the CLI against nodes `via`, expecting success; returns its stdout.
async fn cli(c: &Cluster, via: &[u64], args: &[&str]) -> String {
    let endpoints: Vec<String> = via
        .iter()
        .map(|&id| c.nodes[id as usize - 1].client_addr.clone())
        .collect();
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args).env("PAXOSDB_ENDPOINTS", endpoints.join(","));
    let out = cmd.output().await.expect("run the CLI");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "paxosdb {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Waits until node `id` serves (leader or follower) in configuration `config` or later;
/// on a timeout, fails with every node's status and the end of node `id`'s log.
async fn serves(c: &Cluster, id: u64, config: u32) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(st) = c.client_for(id).status_of(0).await {
            if st.config_id >= config && (st.role == "leader" || st.role == "follower") {
                return;
            }
        }
        if std::time::Instant::now() > deadline {
            let mut report = String::new();
            for n in &c.nodes {
                let st = c.client_for(n.id).status_of(0).await;
                let st = st.map(|s| (s.role, s.config_id, s.decided_index, s.applied_index));
                report.push_str(&format!("node {}: {st:?}\n", n.id));
            }
            let log = c.log_of(id);
            // From this node's last start on: what it did before it got stuck.
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| !l.contains("not a member"))
                .collect();
            let start = lines
                .iter()
                .rposition(|l| l.contains("node starting"))
                .unwrap_or(0);
            let tail: Vec<&str> = lines[start..].iter().take(60).copied().collect();
            panic!(
                "node {id} does not serve in configuration {config} after 60 s\n{report}\
                 log of node {id}:\n{}",
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until node `id` says it was removed.
async fn removed(c: &Cluster, id: u64) {
    eventually(
        Duration::from_secs(30),
        &format!("node {id} reports that it was removed"),
        || async move {
            let st = c.client_for(id).status_of(0).await.ok()?;
            (st.role == "removed").then_some(())
        },
    )
    .await;
    // Writes are refused with the reason (stale reads of its last state still work).
    let w = c.client_for(id).put(b"x", b"y", false).await.unwrap_err();
    assert!(w.to_string().contains("removed from the cluster"), "{w}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grow_shrink_and_replace_under_writes() {
    let mut c = Cluster::start(3).await;
    let writers = Writers::start(c.client(), 3, "w/");
    writers.wait_for(30, "writes before the changes").await;

    // Grow 3 → 5.
    let a4 = c.spawn_joiner(4, 1);
    let out = cli(&c, &[1, 2, 3], &["cluster", "add-node", "4", &a4]).await;
    assert!(out.contains("configuration 2"), "{out}");
    serves(&c, 4, 2).await;
    let a5 = c.spawn_joiner(5, 2);
    let out = cli(&c, &[2], &["cluster", "add-node", "5", &a5]).await;
    assert!(out.contains("configuration 3"), "{out}");
    serves(&c, 5, 3).await;
    let n = writers.acked();
    writers.wait_for(n + 30, "writes with five members").await;
    // The new node serves linearizable reads of what was written before it existed.
    let five = c.client_for(5);
    let (v, _) = five.get(b"w/00-000000", false).await.unwrap();
    assert_eq!(v.expect("first write").value, b"v0-0");
    let st = five.status_of(0).await.unwrap();
    assert_eq!(st.members.len(), 5, "{st:?}");
    // `paxosdb status` given only the first three nodes asks the members they name:
    // the new nodes are shown as they are, not as unreachable.
    let out = cli(&c, &[1, 2, 3], &["status", "--json"]).await;
    let v: serde_json::Value = serde_json::from_str(&out).expect("status --json");
    let roles: Vec<(u64, String)> = (v["nodes"].as_array().expect("nodes").iter())
        .map(|n| {
            (
                n["id"].as_u64().unwrap(),
                n["role"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(roles.len(), 5, "{out}");
    assert!(
        roles.iter().all(|(_, r)| r == "leader" || r == "follower"),
        "a member shown as not serving: {out}"
    );

    // Shrink 5 → 3.
    let out = cli(&c, &[1], &["cluster", "remove-node", "5", "--json"]).await;
    assert!(out.contains("\"config_id\":4"), "{out}");
    removed(&c, 5).await;
    c.kill(5);
    let out = cli(&c, &[4], &["cluster", "remove-node", "4"]).await;
    assert!(out.contains("configuration 5"), "{out}");
    removed(&c, 4).await;
    c.kill(4);

    // Replace node 3 by node 6 in one change.
    let a6 = c.spawn_joiner(6, 1);
    let out = cli(&c, &[1, 2], &["cluster", "replace-node", "3", "6", &a6]).await;
    assert!(out.contains("configuration 6"), "{out}");
    serves(&c, 6, 6).await;
    removed(&c, 3).await;
    c.kill(3);
    let n = writers.acked();
    writers
        .wait_for(n + 30, "writes after the replacement")
        .await;

    let acked = writers.finish().await;
    let have = read_all(&c.client_for(6), "w/").await;
    assert_contains_all(&have, &acked);

    // A removed node refuses to start again, and says why.
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::from(c.server_command(3)).output(),
    )
    .await
    .expect("a removed node exits")
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("removed from the cluster"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_and_new_node_killed_during_a_change() {
    let mut c = Cluster::start(3).await;
    let writers = Writers::start(c.client(), 2, "w/");
    writers.wait_for(20, "writes before the change").await;

    // Kill the leader after it took the change and before it could be decided: with both
    // followers stopped (SIGSTOP), the leader proposes the stop sign (it logs so) but no
    // majority can accept it.
    let leader = c.leader().await;
    let followers: Vec<u64> = (1..=3).filter(|&id| id != leader).collect();
    let a4 = c.spawn_joiner(4, 1);
    // A short client timeout: the attempt ends soon after the kill, and is not sent again
    // to the restarted leader.
    let via = Client::with_options(
        &[c.nodes[leader as usize - 1].client_addr.clone()],
        ClientOptions {
            timeout: Duration::from_secs(1),
            attempt_timeout: Duration::from_secs(1),
            tls: None,
        },
    )
    .unwrap();
    for &f in &followers {
        signal(&c, f, Signal::SIGSTOP);
    }
    let change = tokio::spawn(async move { via.change_membership(&[(4, a4)], &[]).await });
    eventually(
        Duration::from_secs(10),
        "the leader proposes the change",
        || {
            let log = c.log_of(leader);
            async move { log.contains("membership change proposed").then_some(()) }
        },
    )
    .await;
    c.kill(leader);
    for &f in &followers {
        signal(&c, f, Signal::SIGCONT);
    }
    // No majority accepted the change before the leader died: the client cannot have been
    // told it succeeded. (If it says so, the change was answered before it was decided.)
    let first = change.await.unwrap();
    assert!(
        first.is_err(),
        "the change was answered as done without a majority: {first:?}"
    );
    c.restart(leader).await;
    // The cluster dropped the change, or finished it if the restarted leader's copy of
    // the stop sign won the next election: the retry, as a user would make it (until it
    // succeeds or says so), completes it either way.
    let a4 = c.nodes[3].peer_addr.clone();
    let mut attempts = 0;
    loop {
        attempts += 1;
        match c.client().change_membership(&[(4, a4.clone())], &[]).await {
            Ok(m) => break assert_eq!(m.config_id, 2, "{m:?}"),
            Err(e) if e.to_string().contains("already a member") => break,
            Err(paxosdb::Error::OutcomeUnknown(e)) if attempts < 5 => {
                eprintln!("retrying an unknown outcome: {e}")
            }
            Err(e) => panic!("adding node 4 failed: {e}"),
        }
    }
    // Every old member, the restarted leader included, ends in configuration 2.
    for id in 1..=3 {
        serves(&c, id, 2).await;
    }
    serves(&c, 4, 2).await;

    // Kill the new node and restart it: it keeps its membership and catches up.
    c.kill(4);
    let n = writers.acked();
    writers
        .wait_for(n + 20, "writes while the new node is down")
        .await;
    c.restart(4).await;
    serves(&c, 4, 2).await;

    let acked = writers.finish().await;
    for id in [1, 4] {
        let have = read_all(&c.client_for(id), "w/").await;
        assert_contains_all(&have, &acked);
    }
}
