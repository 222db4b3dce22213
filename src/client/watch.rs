//! [`WatchStream`]: the changes of a key or a key range through `Kv.Watch`, resumed
//! transparently across broken streams, node restarts and leader changes.
//!
//! A stream follows one node at a time. When its stream breaks (the node was killed or
//! restarted, its connection dropped, it shut down, or it sent nothing, not even a
//! progress note, for [`IDLE_LIMIT`]), the watch is opened again on the next endpoint
//! that takes it, from the revision after the last one delivered (or the last progress
//! note's), so the caller sees every change once and in order. The first open, and every
//! reopen, waits for the stream's first response, which fixes where it starts: a watch
//! "from now" starts before [`Client::watch`] returns, and a reopen never starts anew.
//!
//! Errors that end the watch are returned once, and the stream ends after them:
//! [`Error::Compacted`] (the node's history no longer holds the revision to resume from),
//! refusals (credentials, rights, bad request), [`Error::Overloaded`] when every node
//! refused for lack of watcher places, and [`Error::Unavailable`] when no node took the
//! watch within the client's timeout. [`WatchStream::next_revision`] then says where to
//! watch again from to miss nothing.
//!
//! # Invariants
//!
//! - Changes are delivered in increasing revision order, whole revisions at a time, each
//!   once: every open asks for the revision after everything delivered, and a response
//!   with a revision below that is an [`Error::Internal`], never passed on.
//! - `next_revision` only moves forward, and only past revisions delivered or reported
//!   by a node as holding nothing that matches.
//! - Reopening is bounded: a break starts the client's timeout, each full round of
//!   endpoints without a working stream backs off (10 ms, doubling to 500 ms), and so
//!   do reopens after streams that broke within a second of being opened.

use super::{kv_client, Client};
use crate::api::pb;
use crate::error::{Error, Result};
use crate::kv::{Change, ChangeKind, WatchFilter};
use futures::{Stream, StreamExt};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// A stream that sent nothing, not even a progress note, for this long is taken for dead
/// (a node gone without closing its connection) and opened again.
pub const IDLE_LIMIT: Duration =
    Duration::from_secs(3 * crate::api::grpc::WATCH_PROGRESS_EVERY.as_secs());

/// A stream that breaks sooner than this after it was opened makes the next reopen wait.
const QUICK_BREAK: Duration = Duration::from_secs(1);

/// The changes of a watch, batch by batch: each item is one or more whole revisions in
/// order (see the module docs). A [`Stream`]; [`WatchStream::next`] is the same without
/// `StreamExt`.
pub struct WatchStream {
    next: Arc<AtomicU64>,
    inner: Pin<Box<dyn Stream<Item = Result<Vec<Change>>> + Send>>,
}

impl std::fmt::Debug for WatchStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchStream")
            .field("next_revision", &self.next_revision())
            .finish()
    }
}

impl WatchStream {
    /// The next changes: one or more whole revisions, waiting until there are some.
    /// `None` after an error ended the watch.
    pub async fn next(&mut self) -> Option<Result<Vec<Change>>> {
        StreamExt::next(self).await
    }

    /// The revision to watch again from to miss nothing: past every change delivered
    /// (and every revision a node reported as holding nothing that matches).
    pub fn next_revision(&self) -> u64 {
        self.next.load(Ordering::Acquire)
    }
}

impl Stream for WatchStream {
    type Item = Result<Vec<Change>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// The state of a watch between batches.
struct Watch {
    client: Client,
    target: pb::watch_request::Target,
    /// The revision to ask for when (re)opening; 0 until the first response fixed it.
    next: Arc<AtomicU64>,
    /// The stream being read, its endpoint, and when it was opened.
    stream: Option<(tonic::Streaming<pb::WatchResponse>, usize, Instant)>,
    /// The pause before reopening after a stream that broke soon after it was opened
    /// (doubling while they keep breaking so; zero after one that lasted).
    pause: Duration,
    /// The endpoint to try first at the next open.
    at: usize,
    /// Since when no stream works (the client's timeout counts from here).
    broken_since: Option<Instant>,
    /// Changes of the first response of an open, delivered before anything else.
    pending: Option<Vec<Change>>,
    done: bool,
}

impl Client {
    /// Watches the keys `filter` matches, from revision `from_revision` on (`None`: from
    /// now, i.e. after every write acknowledged before the call; `Some(0)` is revision 1,
    /// the first). Returns once a node serves the watch; the stream then resumes by
    /// itself across broken streams and node failures (see [`WatchStream`]).
    /// [`Error::Compacted`] when the node no longer holds `from_revision`.
    pub async fn watch(
        &self,
        filter: WatchFilter,
        from_revision: Option<u64>,
    ) -> Result<WatchStream> {
        use pb::watch_request::Target;
        let target = match filter {
            WatchFilter::Key(k) => Target::Key(k),
            WatchFilter::Range(crate::command::ScanRange::Prefix(p)) => Target::Prefix(p),
            WatchFilter::Range(crate::command::ScanRange::Range { from, to }) => {
                Target::KeyRange(pb::KeyRange {
                    from,
                    to: to.unwrap_or_default(),
                })
            }
        };
        let n = self.inner.channels.len();
        let mut w = Watch {
            client: self.clone(),
            target,
            next: Arc::new(AtomicU64::new(from_revision.map_or(0, |r| r.max(1)))),
            stream: None,
            at: self.inner.preferred.load(Ordering::Relaxed) % n,
            broken_since: None,
            pause: Duration::ZERO,
            pending: None,
            done: false,
        };
        w.open().await?;
        let next = w.next.clone();
        let inner = futures::stream::unfold(w, |mut w| async move {
            let item = w.next_batch().await?;
            Some((item, w))
        });
        Ok(WatchStream {
            next,
            inner: Box::pin(inner),
        })
    }
}

impl Watch {
    fn next_revision(&self) -> u64 {
        self.next.load(Ordering::Acquire)
    }

    /// The next batch of changes, reopening the stream as often as it takes; `None` once
    /// an error ended the watch.
    async fn next_batch(&mut self) -> Option<Result<Vec<Change>>> {
        if let Some(changes) = self.pending.take() {
            return Some(Ok(changes));
        }
        loop {
            if self.done {
                return None;
            }
            let Some((stream, idx, opened)) = self.stream.as_mut() else {
                if let Err(e) = self.open().await {
                    self.done = true;
                    return Some(Err(e));
                }
                if let Some(changes) = self.pending.take() {
                    return Some(Ok(changes));
                }
                continue;
            };
            let (idx, opened) = (*idx, *opened);
            let why = match tokio::time::timeout(IDLE_LIMIT, stream.message()).await {
                Ok(Ok(Some(resp))) => match self.accept(resp) {
                    Ok(None) => continue,
                    Ok(Some(changes)) => return Some(Ok(changes)),
                    Err(e) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                },
                Ok(Ok(None)) => "the node ended the stream".to_string(),
                Ok(Err(status)) => match broken(&status) {
                    e if e.is_retryable() => e.to_string(),
                    e => {
                        self.done = true;
                        return Some(Err(e));
                    }
                },
                Err(_) => format!("nothing received for {IDLE_LIMIT:?}"),
            };
            let endpoint = &self.client.inner.endpoints[idx];
            tracing::debug!(%endpoint, "watch stream broke, resuming: {why}");
            self.stream = None;
            self.at = idx + 1;
            self.broken_since.get_or_insert_with(Instant::now);
            // A node that takes the watch and breaks it again at once is not retried in a
            // tight loop.
            self.pause = if opened.elapsed() < QUICK_BREAK {
                (self.pause * 2).clamp(Duration::from_millis(10), Duration::from_millis(500))
            } else {
                Duration::ZERO
            };
            tokio::time::sleep(self.pause).await;
        }
    }

    /// Takes a response: its changes (checked to come after everything delivered) and
    /// where to resume. `None`: a start or a progress note.
    fn accept(&mut self, resp: pb::WatchResponse) -> Result<Option<Vec<Change>>> {
        self.broken_since = None;
        let mut expected = self.next_revision();
        let mut changes = Vec::with_capacity(resp.events.len());
        for e in resp.events {
            if e.revision < expected {
                return Err(Error::Internal(format!(
                    "a node sent a change of revision {} after the watch had reached {expected}",
                    e.revision
                )));
            }
            expected = e.revision;
            let kind = match pb::watch_event::Kind::try_from(e.kind) {
                Ok(pb::watch_event::Kind::Put) => ChangeKind::Put,
                Ok(pb::watch_event::Kind::Delete) => ChangeKind::Delete,
                Ok(pb::watch_event::Kind::Expire) => ChangeKind::Expire,
                Err(_) => {
                    return Err(Error::Internal(format!(
                        "a node sent a change of an unknown kind ({})",
                        e.kind
                    )))
                }
            };
            changes.push(Change {
                revision: e.revision,
                kind,
                key: e.key,
                value: e.value,
            });
        }
        let after = changes.last().map_or(0, |c| c.revision + 1);
        let next = resp.next_revision.max(after).max(self.next_revision());
        self.next.store(next, Ordering::Release);
        Ok((!changes.is_empty()).then_some(changes))
    }

    /// Opens the watch on the first endpoint that takes it, from `next`, and reads its
    /// first response. Within the client's timeout (counted from the break, if any);
    /// [`Error::Overloaded`] when a whole round of endpoints refused for that.
    async fn open(&mut self) -> Result<()> {
        let inner = self.client.inner.clone();
        let n = inner.channels.len();
        let started = *self.broken_since.get_or_insert_with(Instant::now);
        let mut backoff = Duration::from_millis(10);
        let (mut tried, mut overloaded) = (0, 0);
        let mut last;
        loop {
            let idx = self.at % n;
            let from_revision = self.next_revision();
            match open_at(&self.client, &self.target, from_revision, idx).await {
                Ok(mut stream) => {
                    // The first response fixes where the watch starts.
                    let first = tokio::time::timeout(inner.attempt_timeout, stream.message());
                    let failed = match first.await {
                        Ok(Ok(Some(resp))) => {
                            self.pending = self.accept(resp)?;
                            self.stream = Some((stream, idx, Instant::now()));
                            self.at = idx;
                            inner.preferred.store(idx, Ordering::Relaxed);
                            return Ok(());
                        }
                        Ok(Ok(None)) => Error::Unavailable("the node ended the stream".into()),
                        Ok(Err(status)) => broken(&status),
                        Err(_) => Error::Unavailable("no first response".into()),
                    };
                    if !failed.is_retryable() {
                        return Err(failed);
                    }
                    last = failed.to_string();
                }
                Err(e) if !e.is_retryable() => return Err(e),
                Err(e) => {
                    if matches!(e, Error::Overloaded(_)) {
                        overloaded += 1;
                    }
                    last = e.to_string();
                }
            }
            tried += 1;
            self.at = idx + 1;
            if tried % n == 0 {
                if overloaded == n {
                    return Err(Error::Overloaded(format!(
                        "every node refused the watch: {}",
                        last.strip_prefix("overloaded: ").unwrap_or(&last)
                    )));
                }
                overloaded = 0;
                if started.elapsed() >= inner.timeout {
                    return Err(Error::Unavailable(format!(
                        "no node took the watch within {:?} ({}): {last}",
                        inner.timeout,
                        inner.endpoints.join(",")
                    )));
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
        }
    }
}

/// One attempt to open the watch of `target` from `from_revision` on endpoint `idx`.
async fn open_at(
    client: &Client,
    target: &pb::watch_request::Target,
    from_revision: u64,
    idx: usize,
) -> Result<tonic::Streaming<pb::WatchResponse>> {
    let req = client.request(pb::WatchRequest {
        target: Some(target.clone()),
        from_revision,
    });
    let ch = client.inner.channels[idx].clone();
    match kv_client(ch).watch(req).await {
        Ok(resp) => Ok(resp.into_inner()),
        Err(status) => Err(match client.error(&status, idx).await {
            // A connection that failed under the call (an HTTP/2 error), not a node's
            // answer: another node may take it.
            Error::Internal(m) if from_transport(&status) => Error::Unavailable(m),
            e => e,
        }),
    }
}

/// True when `status` stands for a failure of the connection (tonic made it from a
/// transport error), not for a status the node sent.
fn from_transport(status: &tonic::Status) -> bool {
    std::error::Error::source(status).is_some()
}

/// The error a status received on an open watch stream stands for: a broken connection
/// (whatever HTTP/2 reported) is [`Error::Unavailable`], to resume elsewhere.
fn broken(status: &tonic::Status) -> Error {
    if from_transport(status) {
        return Error::Unavailable(format!("the stream broke: {}", status.message()));
    }
    Client::stream_error(status)
}
