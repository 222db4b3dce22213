//! Client workloads for end-to-end tests: writers of unique keys that record what was
//! acknowledged, and the checks that every acknowledged write is present.

use super::eventually;
use paxosdb::client::Client;
use paxosdb::command::ScanRange;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Every key under `prefix` with its value, read linearizably through `c`.
pub async fn read_all(c: &Client, prefix: &str) -> BTreeMap<String, String> {
    read_all_with(c, prefix, false).await
}

/// Every key under `prefix` with its value, read through `c`: linearizably, or `stale`
/// (the node's own state as it is now).
pub async fn read_all_with(c: &Client, prefix: &str, stale: bool) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut from = prefix.as_bytes().to_vec();
    loop {
        let r = c
            .scan(
                &ScanRange::Range {
                    from: from.clone(),
                    to: Some(format!("{prefix}~").into_bytes()),
                },
                1000,
                stale,
            )
            .await
            .expect("scan");
        for kv in &r.items {
            out.insert(
                String::from_utf8(kv.key.clone()).unwrap(),
                String::from_utf8(kv.value.clone()).unwrap(),
            );
        }
        match (r.more, r.items.last()) {
            (true, Some(last)) => {
                from = last.key.clone();
                from.push(0);
            }
            _ => return out,
        }
    }
}

/// Writers that put unique keys until stopped, recording what was acknowledged.
pub struct Writers {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<BTreeMap<String, String>>>,
    count: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    pub fn start(client: Client, n: usize, prefix: &str) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(BTreeMap::new()));
        let count = Arc::new(AtomicU64::new(0));
        let tasks = (0..n)
            .map(|w| {
                let (c, stop, acked, count) =
                    (client.clone(), stop.clone(), acked.clone(), count.clone());
                let prefix = prefix.to_string();
                tokio::spawn(async move {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let key = format!("{prefix}{w:02}-{i:06}");
                        let value = format!("v{w}-{i}");
                        // An error here is outcome-unknown or unavailable: not acknowledged.
                        if c.put(key.as_bytes(), value.as_bytes(), false).await.is_ok() {
                            acked.lock().unwrap().insert(key, value);
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        i += 1;
                    }
                })
            })
            .collect();
        Writers {
            stop,
            acked,
            count,
            tasks,
        }
    }

    /// The writes acknowledged so far.
    pub fn acked_now(&self) -> BTreeMap<String, String> {
        self.acked.lock().unwrap().clone()
    }

    pub fn acked(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub async fn wait_for(&self, n: u64, what: &str) {
        eventually(Duration::from_secs(30), what, || async move {
            (self.acked() >= n).then_some(())
        })
        .await
    }

    pub async fn finish(self) -> BTreeMap<String, String> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        Arc::try_unwrap(self.acked).unwrap().into_inner().unwrap()
    }
}

pub fn assert_contains_all(have: &BTreeMap<String, String>, acked: &BTreeMap<String, String>) {
    let missing: Vec<_> = acked
        .iter()
        .filter(|(k, v)| have.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes are missing or wrong, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
}
