//! Watches through the embedded API (`paxosdb::embed::Kv::watch`): changes in order from
//! a revision or from now, the history's window, the bound on watchers (a dropped watch
//! frees its place), and a shutdown that ends a watch still held and releases the data
//! directory at once.

use futures::StreamExt;
use paxosdb::client::{ChangeKind, WatchFilter};
use paxosdb::command::ScanRange;
use paxosdb::embed::Node;
use paxosdb::Error;
use std::time::{Duration, Instant};

fn prefix(p: &str) -> WatchFilter {
    WatchFilter::Range(ScanRange::Prefix(p.as_bytes().to_vec()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_watch_streams_changes_and_ends_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::builder(dir.path())
        .configure(|c| {
            c.watch_history_revisions = 5;
            c.max_watchers = 1;
        })
        .start()
        .await
        .unwrap();
    let kv = node.kv();

    // Past the window of 5 revisions.
    for i in 0..10 {
        kv.put(format!("c/{i}").as_bytes(), b"v").await.unwrap();
    }
    match tokio::time::timeout(Duration::from_secs(5), kv.watch(prefix("c/"), Some(1))).await {
        Ok(Err(Error::Compacted {
            requested: 1,
            oldest,
        })) => assert!(oldest > 5, "{oldest}"),
        other => panic!("a watch from revision 1: {other:?}"),
    }

    let first = kv.put(b"a/1", b"x").await.unwrap().version;
    kv.put(b"b/1", b"y").await.unwrap();
    kv.delete(b"a/1", false).await.unwrap();

    // From a past revision: the put and the delete, not the key outside the prefix.
    let mut w = kv.watch(prefix("a/"), Some(first)).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        let batch = tokio::time::timeout(Duration::from_secs(10), w.next()).await;
        got.extend(batch.unwrap().unwrap().unwrap());
    }
    let kinds: Vec<(u64, ChangeKind)> = got.iter().map(|c| (c.revision, c.kind)).collect();
    assert_eq!(
        kinds,
        [(first, ChangeKind::Put), (first + 2, ChangeKind::Delete)]
    );
    assert_eq!(w.next_revision(), first + 3);

    // One watcher at most: a second is refused at once; dropping the first frees it.
    match tokio::time::timeout(Duration::from_secs(5), kv.watch(prefix(""), None)).await {
        Ok(Err(Error::Overloaded(_))) => {}
        other => panic!("a second watch: {other:?}"),
    }
    drop(w);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut w = loop {
        match kv.watch(WatchFilter::Key(b"k".to_vec()), None).await {
            Ok(w) => break w,
            Err(Error::Overloaded(_)) if Instant::now() < deadline => {
                tokio::task::yield_now().await
            }
            Err(e) => panic!("the dropped watch's place is not freed: {e}"),
        }
    };
    // From now: only what is written after the call; a Stream too.
    let v = kv.put(b"k", b"1").await.unwrap().version;
    let batch = tokio::time::timeout(Duration::from_secs(10), StreamExt::next(&mut w)).await;
    let batch = batch.unwrap().unwrap().unwrap();
    assert_eq!((batch.len(), batch[0].revision), (1, v));

    // Shutdown ends the watch still held and releases the directory at once.
    node.shutdown().await;
    match tokio::time::timeout(Duration::from_secs(5), w.next()).await {
        Ok(Some(Err(Error::Unavailable(_)))) => {}
        other => panic!("a watch after shutdown: {other:?}"),
    }
    assert!(w.next().await.is_none());
    let again = Node::start(dir.path()).await.unwrap();
    assert_eq!(again.kv().get(b"k").await.unwrap().unwrap().value, b"1");
    again.shutdown().await;
}
