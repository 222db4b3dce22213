//! Leases end to end, through the real binary: the Rust client over gRPC
//! (`paxosdb.v1.Lease`, `Kv.Put` with a lease, `Kv.Txn` with a leased put) and the
//! `paxosdb lease` / `paxosdb put --lease` CLI.
//!
//! - Client and CLI on a three-node cluster: a lease holds keys put through both, lists
//!   them, a keep-alive moves its deadline later, a revoke deletes them at once on every
//!   node (watchers see `delete`) and an expiry deletes them everywhere (watchers see
//!   `expire`); `lease keep-alive` renews until the lease is gone and then exits 1; a
//!   leader election by a transaction that puts under a lease only if the key is absent.
//! - Service registration across a leader change: a key kept alive by
//!   `Client::keep_alive_forever` is there at every renewal while the leader is killed and
//!   a new one elected, for three times its time to live; once the handle is dropped, it
//!   vanishes on every node within its time to live and a margin, the restarted old
//!   leader included.
//! - Refusals change nothing: a time to live of 0 (client, CLI, raw gRPC), `put --lease`
//!   with `--ttl`, a lease and a ttl in one raw `Kv.Put`, an unknown lease; and rights: a
//!   user held to a key prefix may grant and keep alive but not revoke, and sees only its
//!   own keys of a lease; a reader may not grant.
//!
//! No sleeps synchronise anything: every wait polls a condition with a deadline, or awaits
//! the next renewal or watch event with a timeout.

mod common;

use common::{eventually, Cluster, BIN};
use paxosdb::api::pb;
use paxosdb::client::{
    Auth, Change, ChangeKind, Client, Compare, CompareOp, KeepAliveHandle, KeepAliveStatus, Txn,
    TxnOp, TxnOpResult, WatchFilter, WatchStream,
};
use paxosdb::command::{ScanRange, WriteOp, WriteResult};
use paxosdb::Error;
use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a lease's keys may take to disappear everywhere once its time is up: the
/// leader stamps the log when its clock passes the lease's end, and every node must
/// apply that entry.
const GONE_WITHIN: Duration = Duration::from_secs(5);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn prefix(p: &str) -> WatchFilter {
    WatchFilter::Range(ScanRange::Prefix(p.as_bytes().to_vec()))
}

/// `paxosdb ARGS` against the cluster, with `env` added.
fn cli_env(cluster: &Cluster, env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["--endpoints", &cluster.endpoints().join(",")])
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run paxosdb")
}

fn cli(cluster: &Cluster, args: &[&str]) -> Output {
    cli_env(cluster, &[], args)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn assert_exit(o: &Output, code: i32, what: &str) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "{what}: stdout {:?}, stderr {:?}",
        stdout(o),
        stderr(o)
    );
}

/// The changes a watch delivers until `done` says it has all it waits for (each batch
/// awaited for at most `within`).
async fn collect_until(
    w: &mut WatchStream,
    within: Duration,
    done: impl Fn(&[Change]) -> bool,
) -> Vec<Change> {
    let mut got = Vec::new();
    while !done(&got) {
        match tokio::time::timeout(within, w.next()).await {
            Ok(Some(Ok(batch))) => got.extend(batch),
            other => panic!("the watch after {got:?}: {other:?}"),
        }
    }
    got
}

/// Waits until `key` is absent in node `id`'s own copy (a stale read), within `within`.
async fn await_gone_on(cluster: &Cluster, id: u64, key: &[u8], within: Duration) {
    let c = cluster.client_for(id);
    let what = format!("{:?} gone on node {id}", String::from_utf8_lossy(key));
    eventually(within, &what, || {
        let c = c.clone();
        async move { c.get(key, true).await.ok()?.0.is_none().then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lease_holds_keys_put_by_client_and_cli_until_revoked_or_expired() {
    let cluster = Cluster::start(3).await;
    let c = cluster.client();
    let mut watch = c.watch(prefix("svc/"), None).await.unwrap();

    let before = now_ms();
    let lease = c.lease_grant(Duration::from_secs(60)).await.unwrap();
    let after = now_ms();
    assert!(lease.id > 0);
    assert_eq!(lease.ttl_ms, 60_000);
    assert!(
        (before + 60_000 - 1..=after + 60_000).contains(&lease.deadline),
        "deadline {} should be 60 s after the grant ({before}..{after})",
        lease.deadline
    );
    let id = lease.id.to_string();

    // Two keys: one through the client, one through the CLI.
    let a = c.put_with_lease(b"svc/a", b"1", lease.id).await.unwrap();
    let out = cli(&cluster, &["put", "--lease", &id, "svc/b", "2"]);
    assert_exit(&out, 0, "put --lease");
    assert!(stdout(&out).starts_with("OK version="), "{}", stdout(&out));
    let (got, _) = c.get(b"svc/a", false).await.unwrap();
    assert_eq!(got.unwrap().version, a.version);

    // `lease ttl --keys` lists both; so does the client.
    let out = cli(&cluster, &["lease", "ttl", &id, "--keys"]);
    assert_exit(&out, 0, "lease ttl --keys");
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with(&format!("lease {id} ttl_ms=60000 remaining_ms=")),
        "{text}"
    );
    assert_eq!(&lines[1..], ["svc/a", "svc/b"], "{text}");
    let t = c.lease_time_to_live(lease.id, true).await.unwrap().unwrap();
    assert_eq!(t.keys, [b"svc/a".to_vec(), b"svc/b".to_vec()]);
    assert!(!t.more_keys);
    assert!(
        t.remaining <= Duration::from_secs(60) && t.remaining > Duration::from_secs(50),
        "{t:?}"
    );
    let without_keys = c
        .lease_time_to_live(lease.id, false)
        .await
        .unwrap()
        .unwrap();
    assert!(without_keys.keys.is_empty());

    // A keep-alive moves the deadline later (by the log's time, which moves in ms).
    let renewed = eventually(Duration::from_secs(10), "a later deadline", || async {
        let r = c.lease_keep_alive(lease.id).await.unwrap().expect("live");
        (r.deadline > lease.deadline).then_some(r)
    })
    .await;
    assert_eq!((renewed.id, renewed.ttl_ms), (lease.id, 60_000));
    let out = cli(&cluster, &["lease", "keep-alive", &id, "--once", "--json"]);
    assert_exit(&out, 0, "lease keep-alive --once");
    let j: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(j["id"], lease.id);
    assert!(
        j["deadline_ms"].as_u64().unwrap() >= renewed.deadline,
        "{j}"
    );

    // Listed, by the client and the CLI.
    let all = c.leases().await.unwrap();
    assert!(all.iter().any(|l| l.id == lease.id), "{all:?}");
    let out = cli(&cluster, &["lease", "list", "--json"]);
    assert_exit(&out, 0, "lease list");
    let j: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert!(
        (j["leases"].as_array().unwrap().iter()).any(|l| l["id"] == lease.id),
        "{j}"
    );

    // A grant by the CLI with a chosen id prints just the id; that id is taken then.
    let out = cli(&cluster, &["lease", "grant", "5s", "--id", "4242"]);
    assert_exit(&out, 0, "lease grant --id");
    assert_eq!(stdout(&out), "4242\n");
    let out = cli(&cluster, &["lease", "grant", "5s", "--id", "4242"]);
    assert_exit(&out, 1, "a second grant of 4242");
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));

    // `lease keep-alive` renews until the lease is gone, then exits 1.
    let mut keeper = Command::new(BIN)
        .args(["--endpoints", &cluster.endpoints().join(",")])
        .args(["lease", "keep-alive", "4242"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut renewals = BufReader::new(keeper.stdout.take().unwrap()).lines();
    for _ in 0..2 {
        let line = renewals.next().expect("a renewal line").unwrap();
        assert!(
            line.starts_with("lease 4242 kept alive: ttl_ms=5000"),
            "{line}"
        );
    }
    assert!(c.lease_revoke(4242).await.unwrap());
    // The keeper learns at its next renewal (a third of 5 s later at most).
    let status = eventually(Duration::from_secs(20), "the keeper exits", || {
        std::future::ready(keeper.try_wait().unwrap())
    })
    .await;
    assert_eq!(status.code(), Some(1));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut keeper.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("lease 4242 not found"), "{err}");

    // A revoke by the CLI deletes the keys at once: a linearizable read through any node
    // right after it finds none.
    let out = cli(&cluster, &["lease", "revoke", &id]);
    assert_exit(&out, 0, "lease revoke");
    assert!(
        stdout(&out).starts_with("revoked lease"),
        "{}",
        stdout(&out)
    );
    for node in 1..=3 {
        let n = cluster.client_for(node);
        for key in [&b"svc/a"[..], b"svc/b"] {
            assert_eq!(n.get(key, false).await.unwrap().0, None, "node {node}");
        }
    }
    let got = collect_until(&mut watch, Duration::from_secs(10), |g| g.len() >= 4).await;
    let seen: Vec<(ChangeKind, &[u8])> = got.iter().map(|c| (c.kind, &c.key[..])).collect();
    assert_eq!(
        seen,
        [
            (ChangeKind::Put, &b"svc/a"[..]),
            (ChangeKind::Put, b"svc/b"),
            (ChangeKind::Delete, b"svc/a"),
            (ChangeKind::Delete, b"svc/b"),
        ]
    );
    // Gone now: answers, not errors.
    let out = cli(&cluster, &["lease", "revoke", &id]);
    assert_exit(&out, 0, "a second revoke");
    assert!(stdout(&out).contains("not found (nothing revoked)"));
    assert!(!c.lease_revoke(lease.id).await.unwrap());
    assert_eq!(c.lease_keep_alive(lease.id).await.unwrap(), None);
    assert_eq!(c.lease_time_to_live(lease.id, true).await.unwrap(), None);
    for args in [
        &["lease", "ttl", id.as_str()][..],
        &["lease", "keep-alive", id.as_str(), "--once"],
    ] {
        let out = cli(&cluster, args);
        assert_exit(&out, 1, &format!("{args:?} of a revoked lease"));
        assert!(stderr(&out).contains("not found"), "{}", stderr(&out));
    }

    // A lease left to itself: its key expires on every node, and watchers see `expire`.
    let short = c.lease_grant(Duration::from_secs(2)).await.unwrap();
    c.put_with_lease(b"svc/e", b"brief", short.id)
        .await
        .unwrap();
    let got = collect_until(&mut watch, Duration::from_secs(20), |g| {
        g.iter().any(|c| c.kind != ChangeKind::Put)
    })
    .await;
    let seen: Vec<(ChangeKind, &[u8])> = got.iter().map(|c| (c.kind, &c.key[..])).collect();
    assert_eq!(
        seen,
        [
            (ChangeKind::Put, &b"svc/e"[..]),
            (ChangeKind::Expire, b"svc/e")
        ]
    );
    assert!(now_ms() >= short.deadline, "expired before its deadline");
    for node in 1..=3 {
        await_gone_on(&cluster, node, b"svc/e", GONE_WITHIN).await;
    }
    assert_eq!(c.lease_time_to_live(short.id, false).await.unwrap(), None);

    // Leader election: put the leader key under a lease only if it is absent.
    let campaign = |lease: u64, me: &'static [u8]| Txn {
        compare: vec![Compare::version(b"election/leader", CompareOp::Equal, 0)],
        success: vec![TxnOp::Write(WriteOp::PutLeased {
            key: b"election/leader".to_vec(),
            value: me.to_vec(),
            lease,
            return_prev: false,
        })],
        failure: vec![TxnOp::get(b"election/leader")],
    };
    let first = c.lease_grant(Duration::from_secs(30)).await.unwrap();
    let second = c.lease_grant(Duration::from_secs(30)).await.unwrap();
    assert!(c.txn(&campaign(first.id, b"n1")).await.unwrap().succeeded);
    assert!(!c.txn(&campaign(second.id, b"n2")).await.unwrap().succeeded);
    let t = c.lease_time_to_live(first.id, true).await.unwrap().unwrap();
    assert_eq!(t.keys, [b"election/leader".to_vec()]);
    // The leader steps down (or dies and its lease ends): the next one takes over.
    assert!(c.lease_revoke(first.id).await.unwrap());
    assert!(c.txn(&campaign(second.id, b"n2")).await.unwrap().succeeded);
    let (now, _) = c.get(b"election/leader", false).await.unwrap();
    assert_eq!(now.unwrap().value, b"n2");
    // A put naming a lease that is gone refuses the whole transaction (as in etcd): the
    // get after it does not run either, and nothing changes.
    let late = Txn {
        compare: vec![],
        success: vec![
            TxnOp::Write(WriteOp::PutLeased {
                key: b"election/leader".to_vec(),
                value: b"n1".to_vec(),
                lease: first.id,
                return_prev: false,
            }),
            TxnOp::get(b"election/leader"),
        ],
        failure: vec![],
    };
    let revision = c
        .get(b"election/leader", false)
        .await
        .unwrap()
        .0
        .unwrap()
        .version;
    match c.txn(&late).await {
        Err(paxosdb::Error::InvalidInput(why)) => assert!(why.contains("not found"), "{why}"),
        other => panic!("a put with a revoked lease in a transaction: {other:?}"),
    }
    let now = c.get(b"election/leader", false).await.unwrap().0.unwrap();
    assert_eq!((now.value, now.version), (b"n2".to_vec(), revision));

    // The README's election sketch: one campaigner leads, the other waits until the
    // leader stops renewing its lease, then takes over.
    assert!(c.lease_revoke(second.id).await.unwrap());
    let ttl = Duration::from_secs(2);
    let mut a = become_leader(&c, b"a", ttl).await.unwrap();
    let b = tokio::spawn({
        let c = c.clone();
        async move { become_leader(&c, b"b", ttl).await }
    });
    // Three renewals of a's lease: longer than its time to live.
    for _ in 0..3 {
        let s = tokio::time::timeout(Duration::from_secs(20), a.next()).await;
        assert!(matches!(s, Ok(KeepAliveStatus::Alive { .. })), "{s:?}");
    }
    assert!(!b.is_finished(), "two leaders at once");
    let (now, _) = c.get(b"election/leader", false).await.unwrap();
    assert_eq!(now.unwrap().value, b"a");
    drop(a);
    let b = tokio::time::timeout(ttl + Duration::from_secs(20), b)
        .await
        .expect("b takes over once a's lease ends")
        .unwrap()
        .unwrap();
    assert!(!b.is_over());
    let (now, _) = c.get(b"election/leader", false).await.unwrap();
    assert_eq!(now.unwrap().value, b"b");
}

/// The README's leader election sketch ("Rust client"), with the time to live as a
/// parameter: returns once this process leads, under a lease the handle keeps alive.
async fn become_leader(db: &Client, me: &[u8], ttl: Duration) -> paxosdb::Result<KeepAliveHandle> {
    let key = b"election/leader";
    let lease = db.lease_grant(ttl).await?;
    let held = db.keep_alive_forever(lease.id);
    loop {
        let campaign = Txn {
            compare: vec![Compare::version(key, CompareOp::Equal, 0)],
            success: vec![TxnOp::Write(WriteOp::PutLeased {
                key: key.to_vec(),
                value: me.to_vec(),
                lease: lease.id,
                return_prev: false,
            })],
            failure: vec![TxnOp::get(key)],
        };
        let done = db.txn(&campaign).await?;
        match &done.results[..] {
            [TxnOpResult::Write(WriteResult::Put { .. })] => return Ok(held),
            [TxnOpResult::Get(Some(leader))] => {
                let from = Some(leader.version + 1);
                let mut w = db.watch(WatchFilter::Key(key.to_vec()), from).await?;
                while let Some(changes) = w.next().await {
                    if changes?.iter().any(|c| c.kind != ChangeKind::Put) {
                        break;
                    }
                }
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kept_alive_registration_survives_a_leader_change_and_vanishes_once_dropped() {
    let mut cluster = Cluster::start(3).await;
    let c = cluster.client();
    let ttl = Duration::from_secs(3);
    let key = &b"svc/web-1"[..];
    let lease = c.lease_grant(ttl).await.unwrap();
    c.put_with_lease(key, b"10.0.0.5:80", lease.id)
        .await
        .unwrap();
    let mut watch = c.watch(WatchFilter::Key(key.to_vec()), None).await.unwrap();
    let mut held = c.keep_alive_forever(lease.id);
    assert_eq!(held.id(), lease.id);

    /// The next renewal, within the time a keep-alive may take across an election.
    async fn renewal(held: &mut KeepAliveHandle) -> (u64, Instant) {
        match tokio::time::timeout(Duration::from_secs(30), held.next()).await {
            Ok(KeepAliveStatus::Alive {
                renewals,
                safe_until,
                ..
            }) => (renewals, safe_until),
            other => panic!("the next renewal: {other:?}"),
        }
    }
    renewal(&mut held).await;

    let leader = cluster.leader().await;
    cluster.kill(leader);
    let new_leader = cluster.wait_for_leader().await;
    assert_ne!(new_leader, leader, "a new leader must take over");

    // Renewals go on through the new leader; the key is there at each of them, for three
    // times the lease's time to live (each renewal comes a third of it after the last).
    let (first, _) = renewal(&mut held).await;
    let mut last = (first, Instant::now());
    while last.0 < first + 9 {
        last = renewal(&mut held).await;
        let (v, _) = c.get(key, false).await.unwrap();
        assert!(
            v.is_some(),
            "the registration vanished after {} renewals",
            last.0
        );
    }
    for id in (1..=3).filter(|i| *i != leader) {
        let (v, _) = cluster.client_for(id).get(key, true).await.unwrap();
        assert!(v.is_some(), "node {id} lost the registration");
    }

    // Dropped: no more renewals. Until the last renewal's `safe_until` the key is there;
    // within the time to live and a margin it is gone on every node.
    let safe_until = last.1;
    drop(held);
    let dropped = Instant::now();
    if Instant::now() < safe_until {
        assert!(
            c.get(key, false).await.unwrap().0.is_some(),
            "gone too early"
        );
    }
    for id in (1..=3).filter(|i| *i != leader) {
        let left = (ttl + GONE_WITHIN).saturating_sub(dropped.elapsed());
        await_gone_on(&cluster, id, key, left).await;
    }
    let got = collect_until(&mut watch, Duration::from_secs(20), |g| !g.is_empty()).await;
    let seen: Vec<(ChangeKind, &[u8])> = got.iter().map(|c| (c.kind, &c.key[..])).collect();
    assert_eq!(seen, [(ChangeKind::Expire, key)], "an expiry, not a delete");
    assert_eq!(c.lease_time_to_live(lease.id, false).await.unwrap(), None);

    // The old leader comes back and, once caught up, agrees.
    cluster.restart(leader).await;
    let target = cluster.applied(new_leader).await.expect("leader status");
    cluster
        .wait_applied(leader, target, Duration::from_secs(30))
        .await;
    let (v, _) = cluster.client_for(leader).get(key, true).await.unwrap();
    assert_eq!(
        v, None,
        "the restarted old leader still has the registration"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_lease_requests_change_nothing_and_a_prefix_user_cannot_revoke() {
    let cluster = Cluster::builder(1).admin("adminpw").start().await;
    let admin = cluster.admin_client();
    let pw_file = cluster.admin_password_file();
    let as_admin = [
        ("PAXOSDB_USER", "admin"),
        ("PAXOSDB_PASSWORD_FILE", pw_file.to_str().unwrap()),
    ];
    let mark = admin.put(b"mark", b"0", false).await.unwrap().version;

    // A time to live of 0 or under a second: refused before anything is sent.
    for ttl in [Duration::ZERO, Duration::from_millis(999)] {
        match admin.lease_grant(ttl).await {
            Err(Error::InvalidInput(m)) => assert!(m.contains("time to live"), "{m}"),
            other => panic!("a grant of {ttl:?}: {other:?}"),
        }
    }
    for args in [
        &["lease", "grant", "0"][..],
        &["lease", "grant", "0s"],
        &["lease", "grant", "500ms"],
        &["lease", "keep-alive", "0", "--once"],
        &["put", "--lease", "5", "--ttl", "10s", "bad/k", "v"],
        &["put", "--lease", "0", "bad/k", "v"],
    ] {
        let out = cli_env(&cluster, &as_admin, args);
        assert_exit(&out, 2, &format!("{args:?}"));
        assert!(stderr(&out).contains("error"), "{args:?}: {}", stderr(&out));
    }
    let out = cli_env(
        &cluster,
        &as_admin,
        &["put", "--lease", "5", "--ttl", "10s", "bad/k", "v"],
    );
    assert!(
        stderr(&out).contains("cannot be used with"),
        "{}",
        stderr(&out)
    );

    // The same through raw gRPC, past the client's own checks.
    let ch = admin.channel(0).unwrap();
    let basic = format!(
        "Basic {}",
        base64_encode(&format!(
            "admin:{}",
            cluster.admin_password.clone().unwrap()
        ))
    );
    fn authed<T>(msg: T, basic: &str) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut()
            .insert("authorization", basic.parse().unwrap());
        r
    }
    let mut leases = pb::lease_client::LeaseClient::new(ch.clone());
    let refused = leases
        .grant(authed(
            pb::LeaseGrantRequest {
                session: Some(pb::Session {
                    client_id: 99,
                    seq: 1,
                }),
                id: 0,
                ttl_ms: 0,
            },
            &basic,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("time to live"), "{refused:?}");
    let mut kv = pb::kv_client::KvClient::new(ch);
    let refused = kv
        .put(authed(
            pb::PutRequest {
                session: Some(pb::Session {
                    client_id: 99,
                    seq: 2,
                }),
                key: b"bad/k".to_vec(),
                value: b"v".to_vec(),
                return_prev: false,
                ttl_ms: 10_000,
                lease: 5,
            },
            &basic,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("not both"), "{refused:?}");

    // An unknown lease: refused where it is applied, with a clear message.
    match admin.put_with_lease(b"bad/k", b"v", 999).await {
        Err(Error::InvalidInput(m)) => assert!(m.contains("lease 999 not found"), "{m}"),
        other => panic!("a put with an unknown lease: {other:?}"),
    }
    let out = cli_env(
        &cluster,
        &as_admin,
        &["put", "--lease", "999", "bad/k", "v"],
    );
    assert_exit(&out, 1, "put --lease 999");
    assert!(
        stderr(&out).contains("lease 999 not found"),
        "{}",
        stderr(&out)
    );
    assert_eq!(admin.lease_keep_alive(999).await.unwrap(), None);
    assert!(!admin.lease_revoke(999).await.unwrap());

    // Nothing changed: no key, no lease, no revision taken.
    assert_eq!(admin.get(b"bad/k", false).await.unwrap().0, None);
    assert_eq!(admin.leases().await.unwrap(), []);
    let next = admin.put(b"mark", b"1", false).await.unwrap().version;
    assert_eq!(next, mark + 1, "a refused request took a revision");

    // Rights: a user held to `svc/` grants, attaches its keys and keeps alive, but does
    // not revoke (keys outside its prefix may be attached) and sees only its own keys.
    admin
        .set_user("svc", Some("svcpw"), Some("readwrite"), Some(b"svc/"))
        .await
        .unwrap();
    admin
        .set_user("reader", Some("rpw"), Some("read"), None)
        .await
        .unwrap();
    let user = |name: &str, password: &str| {
        cluster
            .client()
            .with_auth(Some(Auth::Password {
                user: name.into(),
                password: password.into(),
            }))
            .unwrap()
    };
    let (svc, reader): (Client, Client) = (user("svc", "svcpw"), user("reader", "rpw"));
    let lease = svc.lease_grant(Duration::from_secs(60)).await.unwrap();
    svc.put_with_lease(b"svc/1", b"x", lease.id).await.unwrap();
    match svc.put_with_lease(b"other/1", b"x", lease.id).await {
        Err(Error::PermissionDenied(_)) => {}
        other => panic!("a put outside the prefix: {other:?}"),
    }
    admin
        .put_with_lease(b"other/1", b"y", lease.id)
        .await
        .unwrap();
    assert!(svc.lease_keep_alive(lease.id).await.unwrap().is_some());
    let mine = svc
        .lease_time_to_live(lease.id, true)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(mine.keys, [b"svc/1".to_vec()]);
    match svc.lease_revoke(lease.id).await {
        Err(Error::PermissionDenied(m)) => assert!(m.contains("revoke"), "{m}"),
        other => panic!("a revoke by a prefix user: {other:?}"),
    }
    let out = cli_env(
        &cluster,
        &[("PAXOSDB_USER", "svc"), ("PAXOSDB_PASSWORD", "svcpw")],
        &["lease", "revoke", &lease.id.to_string()],
    );
    assert_exit(&out, 1, "lease revoke by a prefix user");
    assert!(
        stderr(&out).contains("permission denied"),
        "{}",
        stderr(&out)
    );
    match reader.lease_grant(Duration::from_secs(5)).await {
        Err(Error::PermissionDenied(_)) => {}
        other => panic!("a grant by a reader: {other:?}"),
    }
    let all = reader
        .lease_time_to_live(lease.id, true)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(all.keys, [b"other/1".to_vec(), b"svc/1".to_vec()]);
    // Still there: the refused revokes changed nothing. The administrator may revoke.
    assert!(admin.get(b"svc/1", false).await.unwrap().0.is_some());
    assert!(admin.lease_revoke(lease.id).await.unwrap());
    assert_eq!(admin.get(b"svc/1", false).await.unwrap().0, None);
    assert_eq!(admin.get(b"other/1", false).await.unwrap().0, None);
}

fn base64_encode(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The README's CLI lease session ("Leases from the CLI") as a user pastes it, on a fresh
/// cluster with client TLS and an administrator (what `paxosdb cluster up` runs, reached
/// through `PAXOSDB_*` settings instead of its fixed ports and `default` user): each
/// command runs in `sh` and prints what the README shows (`...`: any text).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_cli_lease_session_runs_as_written() {
    let c = Cluster::builder(3)
        .certs()
        .admin("readme-secret-2")
        .start()
        .await;
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let (ca, pw) = (c.tls_dir().join("ca.pem"), c.admin_password_file());
    for (cmd, want) in common::readme::block(&readme, "cli-lease") {
        let out = common::readme::shell(c.dir.path(), &cmd)
            .env("PAXOSDB_ENDPOINTS", c.endpoints().join(","))
            .env("PAXOSDB_CACERT", &ca)
            .env("PAXOSDB_USER", common::cluster::ADMIN_USER)
            .env("PAXOSDB_PASSWORD_FILE", &pw)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{cmd}: {e}"));
        let got: Vec<String> = (String::from_utf8_lossy(&out.stdout).lines())
            .map(|l| l.trim_end().to_string())
            .collect();
        assert!(
            common::readme::lines_match(&want, &got),
            "README CLI lease session, command:\n$ {cmd}\nwant:\n{}\ngot (exit {:?}):\n{}\nstderr:\n{}",
            want.join("\n"),
            out.status.code(),
            got.join("\n"),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
