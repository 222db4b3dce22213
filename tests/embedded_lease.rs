//! Leases through the embedded API (`paxosdb::embed::Kv`): grant, put with a lease, time
//! to live with keys, keep-alive, list, revoke (watchers see `delete`), a key kept alive by
//! `Kv::keep_alive_forever` that outlives its time to live and expires once the handle is
//! dropped (watchers see `expire`), and refused input that changes nothing.
//!
//! No sleeps synchronise anything: renewals and watch events are awaited with timeouts.

use paxosdb::client::{Change, ChangeKind, KeepAliveStatus, WatchFilter};
use paxosdb::command::ScanRange;
use paxosdb::embed::{Node, Watch};
use paxosdb::Error;
use std::time::Duration;

async fn changes(w: &mut Watch, n: usize) -> Vec<Change> {
    let mut got = Vec::new();
    while got.len() < n {
        match tokio::time::timeout(Duration::from_secs(20), w.next()).await {
            Ok(Some(Ok(batch))) => got.extend(batch),
            other => panic!("the watch after {got:?}: {other:?}"),
        }
    }
    got
}

fn kinds(got: &[Change]) -> Vec<(ChangeKind, &[u8])> {
    got.iter().map(|c| (c.kind, &c.key[..])).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_leases_hold_keys_until_revoked_or_no_longer_kept_alive() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path()).await.unwrap();
    let kv = node.kv();
    let mut watch = kv
        .watch(WatchFilter::Range(ScanRange::Prefix(b"l/".to_vec())), None)
        .await
        .unwrap();

    // Refused input changes nothing.
    for ttl in [Duration::ZERO, Duration::from_millis(500)] {
        assert!(matches!(
            kv.lease_grant(ttl).await,
            Err(Error::InvalidInput(_))
        ));
    }
    match kv.put_with_lease(b"l/x", b"v", 77).await {
        Err(Error::InvalidInput(m)) => assert!(m.contains("lease 77 not found"), "{m}"),
        other => panic!("a put with an unknown lease: {other:?}"),
    }
    assert!(matches!(
        kv.lease_keep_alive(0).await,
        Err(Error::InvalidInput(_))
    ));
    assert_eq!(kv.lease_keep_alive(77).await.unwrap(), None);
    assert!(!kv.lease_revoke(77).await.unwrap());
    assert_eq!(kv.get(b"l/x").await.unwrap(), None);
    assert_eq!(kv.leases().await.unwrap(), []);

    // Grant, attach two keys, read them back with the lease.
    let lease = kv.lease_grant(Duration::from_secs(60)).await.unwrap();
    kv.put_with_lease(b"l/a", b"1", lease.id).await.unwrap();
    kv.put_with_lease(b"l/b", b"2", lease.id).await.unwrap();
    let t = kv
        .lease_time_to_live(lease.id, true)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(t.keys, [b"l/a".to_vec(), b"l/b".to_vec()]);
    assert!(t.remaining <= Duration::from_secs(60) && t.remaining > Duration::from_secs(50));
    assert_eq!(kv.leases().await.unwrap(), [lease]);
    let again = kv.lease_keep_alive(lease.id).await.unwrap().unwrap();
    assert!(again.deadline >= lease.deadline);
    match kv
        .lease_grant_with_id(lease.id, Duration::from_secs(5))
        .await
    {
        Err(Error::InvalidInput(m)) => assert!(m.contains("already exists"), "{m}"),
        other => panic!("a second grant of the same id: {other:?}"),
    }

    // A revoke deletes both at once; watchers see deletes.
    assert!(kv.lease_revoke(lease.id).await.unwrap());
    assert_eq!(kv.get(b"l/a").await.unwrap(), None);
    assert_eq!(kv.get(b"l/b").await.unwrap(), None);
    assert_eq!(kv.lease_time_to_live(lease.id, false).await.unwrap(), None);
    let got = changes(&mut watch, 4).await;
    assert_eq!(
        kinds(&got),
        [
            (ChangeKind::Put, &b"l/a"[..]),
            (ChangeKind::Put, b"l/b"),
            (ChangeKind::Delete, b"l/a"),
            (ChangeKind::Delete, b"l/b"),
        ]
    );

    // Kept alive: the key outlives three times its time to live; dropped, it expires.
    let short = kv.lease_grant(Duration::from_secs(1)).await.unwrap();
    kv.put_with_lease(b"l/kept", b"up", short.id).await.unwrap();
    let mut held = kv.keep_alive_forever(short.id);
    let mut renewals = 0;
    while renewals < 10 {
        match tokio::time::timeout(Duration::from_secs(10), held.next()).await {
            Ok(KeepAliveStatus::Alive { renewals: n, .. }) => renewals = n,
            other => panic!("a renewal: {other:?}"),
        }
        assert!(
            kv.get(b"l/kept").await.unwrap().is_some(),
            "after {renewals}"
        );
    }
    drop(held);
    let got = changes(&mut watch, 2).await;
    assert_eq!(
        kinds(&got),
        [
            (ChangeKind::Put, &b"l/kept"[..]),
            (ChangeKind::Expire, b"l/kept")
        ]
    );
    assert_eq!(kv.get(b"l/kept").await.unwrap(), None);
    assert_eq!(kv.leases().await.unwrap(), []);
    node.shutdown().await;
}
