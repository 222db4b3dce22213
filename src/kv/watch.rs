//! [`Watcher`]: one subscription to the changes of a key or a key range, from a revision
//! on, read from the store's watch history ([`super::history`]). Every listener (gRPC's
//! `Watch` stream, HTTP's server-sent events and blocking queries, the embedded API)
//! drives one the same way: call [`Watcher::next`] until it fails or the client leaves.
//!
//! # Invariants
//!
//! - [`Watcher::next`] returns whole revisions in increasing order, each change once:
//!   its position only moves past revisions it has returned or found nothing in, so a
//!   watcher resumed from the revision after the last one it delivered (on any node, after
//!   any leader change) neither skips nor repeats a change.
//! - A watcher holds no buffer on the server: it reads the history when its consumer asks
//!   for more. One that falls behind the history's window fails with
//!   [`Error::Compacted`], naming the oldest revision held, instead of buffering.
//! - The number of live watchers of a handle is bounded ([`Watchers`]): one more is
//!   refused as overload, and a dropped watcher frees its place.
//! - `next` is cancel-safe: dropping its future (a timeout, a client gone) loses nothing.

use super::history::{Change, WatchFilter};
use super::KvStore;
use crate::error::{Error, Result};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Changes one [`Watcher::next`] returns at most (it may return more to finish a
/// revision).
pub const WATCH_BATCH_CHANGES: usize = 1000;
/// Bytes of keys and values one [`Watcher::next`] returns at most (it may return more to
/// finish a revision).
pub const WATCH_BATCH_BYTES: usize = 1024 * 1024;

/// How many watchers a node serves at most by default.
pub const DEFAULT_MAX_WATCHERS: usize = 10_000;

/// The count of live watchers against their bound, shared by a handle's clones.
#[derive(Debug)]
pub struct Watchers {
    live: AtomicUsize,
    max: usize,
}

impl Watchers {
    pub fn new(max: usize) -> Arc<Watchers> {
        Arc::new(Watchers {
            live: AtomicUsize::new(0),
            max,
        })
    }

    /// How many watchers are live.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    fn admit(self: &Arc<Self>) -> Result<Place> {
        let taken = self.live.fetch_add(1, Ordering::AcqRel);
        let place = Place(self.clone());
        if taken >= self.max {
            return Err(Error::Overloaded(format!(
                "this node serves at most {} watchers (max_watchers), and that many are \
                 open; close some or watch through another node",
                self.max
            )));
        }
        Ok(place)
    }
}

/// A watcher's place in [`Watchers`], given back when dropped.
#[derive(Debug)]
struct Place(Arc<Watchers>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A subscription to the changes of a key or range (see the module docs).
pub struct Watcher {
    store: KvStore,
    filter: WatchFilter,
    /// The next revision to read.
    next: u64,
    revisions: tokio::sync::watch::Receiver<u64>,
    _place: Place,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("filter", &self.filter)
            .field("next", &self.next)
            .finish()
    }
}

impl Watcher {
    /// A watcher of `filter` from revision `from` on (at least 1), counted in `watchers`.
    /// [`Error::Compacted`] at once when the history no longer holds `from`.
    pub(super) fn start(
        store: KvStore,
        watchers: &Arc<Watchers>,
        filter: WatchFilter,
        from: u64,
    ) -> Result<Watcher> {
        let place = watchers.admit()?;
        let from = from.max(1);
        // Checks the window without reading any change.
        store.history(from, &filter, 0, 0)?;
        Ok(Watcher {
            revisions: store.subscribe(),
            store,
            filter,
            next: from,
            _place: place,
        })
    }

    /// The next revision this watcher will look at: resume from here to miss nothing.
    pub fn next_revision(&self) -> u64 {
        self.next
    }

    /// The next changes that match: one or more whole revisions, in order, waiting until
    /// there are some. [`Error::Compacted`] when the history's window passed this
    /// watcher's position.
    pub async fn next(&mut self) -> Result<Vec<Change>> {
        loop {
            // Marks the current revision seen before reading, so that an entry applied
            // after the read wakes the wait below.
            self.revisions.borrow_and_update();
            let read = self.store.history(
                self.next,
                &self.filter,
                WATCH_BATCH_CHANGES,
                WATCH_BATCH_BYTES,
            )?;
            self.next = read.next;
            if !read.changes.is_empty() {
                return Ok(read.changes);
            }
            if read.next <= read.revision {
                // Only changes that do not match were read; there are more.
                tokio::task::yield_now().await;
                continue;
            }
            if self.revisions.changed().await.is_err() {
                return Err(Error::Unavailable("the node is shutting down".into()));
            }
        }
    }
}
