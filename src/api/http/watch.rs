//! Watches over HTTP: server-sent events (`GET /v1/watch/{key}`, `GET /v1/watch?prefix=…`)
//! and Consul-style blocking queries (`?index=N&wait=30s` on `GET /v1/kv/{key}` and
//! `GET /v1/kv`). Both drive a [`Watcher`] of the key or range, read from the node's watch
//! history ([`crate::kv::history`]).
//!
//! **Server-sent events.** One event per change, in revision order:
//!
//! ```text
//! id: 7
//! data: {"key":"app/a","revision":7,"type":"put","value":"1"}
//! ```
//!
//! `data` is the change in the key-value endpoints' JSON (`key`/`key_base64`,
//! `value`/`value_base64`, a value for puts only) with its `revision` and `type` (`put`,
//! `delete`, `expire`). The `id` is the revision, except inside a revision that changed
//! several watched keys (a multi-put, such as Redis' `MSET`): there every change but the
//! last has the id `R.k` (its number `k` among the revision's changes this stream
//! sends), and the last one `R`. A client that reconnects sends the last id it received as
//! `Last-Event-ID` (EventSource does) and gets exactly the changes after it: after `R`,
//! the changes from revision `R + 1` on; after `R.k`, the rest of revision `R`, then the
//! later ones. The stream opens with a comment, `: watching from revision N`, sends a
//! comment `: keep-alive` after [`HEARTBEAT`] of silence (less when the node's idle
//! timeout is shorter, so that proxies and the node itself keep the connection), and ends
//! after an `event: error` whose data is the JSON error body (`compacted` with
//! `oldest_revision` once the history's window passed the watcher; `unavailable` when
//! the node shuts down; `unauthenticated` / `permission_denied` when the user's rights
//! changed). Before the stream starts an error is an ordinary answer (410 `compacted`,
//! 429 `overloaded` past `--max-watchers`, ...).
//!
//! **Blocking queries.** With `?index=N` a key read or scan first waits until a change
//! after revision `N` matches (its key, or its range as the user may see it), or until
//! `wait` (default [`decode::DEFAULT_WAIT_MS`], at most [`decode::MAX_WAIT_MS`], and less
//! than the node's idle timeout) passes, and then answers as without `index`. If revision
//! `N + 1` is no longer in the history it answers at once, as Consul does after a reset.
//! Every key read and scan carries `X-Paxosdb-Index` (and, the same, `X-Consul-Index`):
//! the index to pass next.
//!
//! # Invariants
//!
//! - A stream sends each change of its key or range once, in revision order, and every
//!   event id names a position that resumes exactly after that event: a revision's
//!   changes are numbered in the history's order (key order within a revision), which is
//!   the same on every node, so a resume on any node skips what was sent and nothing
//!   else.
//! - A stream holds no buffer: its body asks the watcher for more only when hyper asks
//!   the body for its next frame, that is when the client read what was sent; a client
//!   too slow for the history's window gets the `compacted` error event, never a gap.
//! - A stream sends nothing its user may no longer read: the user's rights are read
//!   again before every event and heartbeat, and a change that narrows them ends the
//!   stream with an error event.
//! - The index of a read never exceeds the revision its answer reflects: it is the
//!   store's revision read in the same state as the answer (same applied index), or else
//!   one read before the answer. So a client blocking from it may be answered at once,
//!   but never misses a change.

use super::decode::{self, Block};
use super::error::ApiError;
use super::kv::set_header;
use super::AppState;
use crate::auth::{Authenticator, Identity};
use crate::command::ScanRange;
use crate::error::Error;
use crate::kv::{Change, ChangeKind, WatchFilter, Watcher};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

/// The header with the index a blocking query passes next.
pub const INDEX_HEADER: &str = "x-paxosdb-index";
/// The same index under Consul's name, for Consul clients.
pub const CONSUL_INDEX_HEADER: &str = "x-consul-index";

/// The longest an event stream stays silent: a `: keep-alive` comment follows.
pub const HEARTBEAT: Duration = Duration::from_secs(15);

/// The shortest interval between heartbeats, however short the idle timeout.
const MIN_HEARTBEAT: Duration = Duration::from_millis(100);

/// The heartbeat interval for a node that closes connections idle for `idle_ms` (0:
/// never): [`HEARTBEAT`], or half the idle timeout if that is shorter.
pub fn heartbeat(idle_ms: u64) -> Duration {
    match idle_ms {
        0 => HEARTBEAT,
        ms => HEARTBEAT
            .min(Duration::from_millis(ms / 2))
            .max(MIN_HEARTBEAT),
    }
}

/// How long a blocking query waits on a node that closes connections idle for `idle_ms`
/// (0: never): its `wait`, but at most 9/10 of the idle timeout (a blocking query sends
/// nothing until it answers).
pub fn wait_for(b: Block, idle_ms: u64) -> Duration {
    let ms = match idle_ms {
        0 => b.wait_ms,
        idle => b.wait_ms.min(idle / 10 * 9),
    };
    Duration::from_millis(ms)
}

/// What a stream watches, as asked, to check the user's rights against again.
#[derive(Clone, Debug)]
enum Asked {
    Key(Vec<u8>),
    /// The range asked for, and what the user's key prefix narrowed it to.
    Range {
        asked: ScanRange,
        seen: ScanRange,
    },
}

impl Asked {
    fn filter(&self) -> WatchFilter {
        match self {
            Asked::Key(k) => WatchFilter::Key(k.clone()),
            Asked::Range { seen, .. } => WatchFilter::Range(seen.clone()),
        }
    }

    /// Whether `who` may still see exactly what the stream sends.
    fn allowed(&self, who: &Identity) -> Result<(), Error> {
        match self {
            Asked::Key(k) => who.check_read(k),
            Asked::Range { asked, seen } => match who.narrow(asked) {
                Some(now) if now == *seen => Ok(()),
                _ => Err(Error::PermissionDenied(
                    "the user's key prefix changed since this watch started; watch again".into(),
                )),
            },
        }
    }
}

/// `GET /v1/watch/{key}`: the changes of one key, as server-sent events.
pub async fn watch_key(
    State(s): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = super::auth::identity(&s, &headers).await?;
    let key = decode::key_under(decode::WATCH_PREFIX, uri.path(), &s.node.limits())?;
    id.check_read(&key)?;
    let from = decode::watch_key_params(uri.query())?;
    open(&s, id, Asked::Key(key), from, &headers).await
}

/// `GET /v1/watch?prefix=…` (or `from`/`to`, or nothing: every key): the changes of a
/// range, as server-sent events. A user with a key prefix watches the range narrowed to
/// it, and is refused one outside it.
pub async fn watch_range(
    State(s): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = super::auth::identity(&s, &headers).await?;
    let (asked, from) = decode::watch_range_params(uri.query(), &s.node.limits())?;
    let seen = id.narrow(&asked).ok_or_else(|| {
        ApiError::from(Error::PermissionDenied(
            "this user may read only keys under its key prefix, and none is in this range".into(),
        ))
    })?;
    open(&s, id, Asked::Range { asked, seen }, from, &headers).await
}

/// Starts the watcher (errors are answers: 410, 429, 503, ...) and answers with the
/// event stream.
async fn open(
    s: &AppState,
    who: Identity,
    asked: Asked,
    from_revision: Option<u64>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let resume = decode::last_event_id(headers.get("last-event-id").map(HeaderValue::as_bytes))?;
    // A reconnecting EventSource repeats the URL (and its from_revision): the id wins.
    let (from, skip) = match resume {
        Some(r) => (
            Some(r.revision),
            (r.skip > 0).then_some((r.revision, r.skip)),
        ),
        None => (from_revision, None),
    };
    let watcher = s.kv.watch(asked.filter(), from).await?;
    let feed = Feed {
        watcher,
        skip,
        who,
        auth: s.info.auth.clone(),
        asked,
        heartbeat: heartbeat(s.info.config.idle_timeout_ms),
        shutdown: s.shutdown.clone(),
        phase: Phase::Opening,
    };
    let body = Body::from_stream(futures::stream::unfold(feed, Feed::step));
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            // nginx buffers responses unless told not to.
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        body,
    )
        .into_response())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// The opening comment is still to send.
    Opening,
    Open,
    /// The final error event was sent.
    Ended,
}

/// An event stream's state: the body asks [`Feed::step`] for its next frame.
struct Feed {
    watcher: Watcher,
    /// A resume inside a revision: that revision's changes the client has (how many).
    skip: Option<(u64, u64)>,
    who: Identity,
    auth: Arc<Authenticator>,
    asked: Asked,
    heartbeat: Duration,
    shutdown: tokio::sync::watch::Receiver<bool>,
    phase: Phase,
}

const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

impl Feed {
    /// The next frame: the opening comment, the events of one or more whole revisions,
    /// a heartbeat, or the final error event; `None` after that.
    async fn step(mut self) -> Option<(Result<Bytes, Infallible>, Feed)> {
        loop {
            match self.phase {
                Phase::Ended => return None,
                Phase::Opening => {
                    self.phase = Phase::Open;
                    let first = self.watcher.next_revision();
                    let open = format!(": watching from revision {first}\n\n");
                    return Some((Ok(Bytes::from(open)), self));
                }
                Phase::Open => {}
            }
            let stop = async {
                // (A server gone without saying so is shutting down too.)
                let _ = self.shutdown.wait_for(|stop| *stop).await;
            };
            let next = tokio::select! {
                next = tokio::time::timeout(self.heartbeat, self.watcher.next()) => Some(next),
                () = stop => None,
            };
            let Some(next) = next else {
                let why = "the node is shutting down: reconnect to another node, with \
                           Last-Event-ID to resume";
                let frame = self.fail(Error::Unavailable(why.into()));
                return Some((Ok(frame), self));
            };
            let frame = match next {
                Err(_silent) => match self.recheck() {
                    Ok(()) => Bytes::from_static(KEEP_ALIVE),
                    Err(e) => self.fail(e),
                },
                Ok(Err(e)) => self.fail(e),
                Ok(Ok(changes)) => match self.recheck() {
                    Err(e) => self.fail(e),
                    Ok(()) => match self.events(changes) {
                        Some(frame) => frame,
                        // Only changes the client already has.
                        None => continue,
                    },
                },
            };
            return Some((Ok(frame), self));
        }
    }

    /// Reads the user's rights again; an error if they no longer cover the stream.
    fn recheck(&mut self) -> Result<(), Error> {
        self.who = self.auth.refresh(&self.who)?;
        self.asked.allowed(&self.who)
    }

    /// The final error event; the stream ends after it.
    fn fail(&mut self, e: Error) -> Bytes {
        self.phase = Phase::Ended;
        let body = ApiError::from(e).body();
        Bytes::from(format!("event: error\ndata: {body}\n\n"))
    }

    /// The events of `changes` (whole revisions) in one frame, less those a resume
    /// skips; `None` when nothing is left.
    fn events(&mut self, changes: Vec<Change>) -> Option<Bytes> {
        let out = events(&changes, self.skip.take());
        (!out.is_empty()).then(|| Bytes::from(out))
    }
}

/// The events of `changes` (whole revisions, in order), less the first `k` changes of
/// revision `r` when `skip` is `(r, k)`: each with the id `R`, or `R.k` when more
/// changes of its revision follow (see the module docs).
pub fn events(changes: &[Change], skip: Option<(u64, u64)>) -> String {
    let mut out = String::new();
    // The change's number among its revision's changes (1-based, skipped ones too).
    let mut number = 0u64;
    for (i, c) in changes.iter().enumerate() {
        let same = i > 0 && changes[i - 1].revision == c.revision;
        number = if same { number + 1 } else { 1 };
        if skip.is_some_and(|(r, k)| r == c.revision && number <= k) {
            continue;
        }
        let last = changes.get(i + 1).is_none_or(|n| n.revision != c.revision);
        let id = match last {
            true => c.revision.to_string(),
            false => format!("{}.{number}", c.revision),
        };
        out.push_str(&format!("id: {id}\ndata: {}\n\n", change_json(c)));
    }
    out
}

/// A change in the key-value endpoints' JSON: `key`/`key_base64`, `value`/`value_base64`
/// (puts only), `revision` and `type`.
pub fn change_json(c: &Change) -> Value {
    let mut o = Map::new();
    decode::put_bytes(&mut o, "key", &c.key);
    if c.kind == ChangeKind::Put {
        decode::put_bytes(&mut o, "value", &c.value);
    }
    o.insert("revision".into(), c.revision.into());
    o.insert("type".into(), c.kind.as_str().into());
    Value::Object(o)
}

/// Waits as a blocking query asks (see the module docs): until a change after revision
/// `b.index` matches `filter` (`None`: the user may see nothing of the range, so nothing
/// can change), or the wait passes. Answers at once when the history no longer holds
/// revision `b.index + 1`.
pub(crate) async fn block(
    s: &AppState,
    filter: Option<WatchFilter>,
    b: Block,
) -> Result<(), ApiError> {
    let wait = wait_for(b, s.info.config.idle_timeout_ms);
    let mut shutdown = s.shutdown.clone();
    let Some(filter) = filter else {
        // Nothing the user may see can change: the wait only.
        let _ = tokio::time::timeout(wait, shutdown.wait_for(|stop| *stop)).await;
        return Ok(());
    };
    let mut watcher = match s.kv.watch(filter, Some(b.index.saturating_add(1))).await {
        Ok(w) => w,
        Err(Error::Compacted { .. }) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    tokio::select! {
        next = tokio::time::timeout(wait, watcher.next()) => match next {
            Err(_) | Ok(Ok(_)) | Ok(Err(Error::Compacted { .. })) => Ok(()),
            Ok(Err(e)) => Err(e.into()),
        },
        // Answered now, not after the shutdown waited for it.
        _ = shutdown.wait_for(|stop| *stop) => Ok(()),
    }
}

/// The store's revision now: read before a read, a lower bound of the revision the read
/// reflects.
pub(crate) fn revision_now(s: &AppState) -> Result<u64, ApiError> {
    Ok(s.kv.store().counters()?.1)
}

/// The index to pass next after a read that reflects applied index `applied`: the
/// store's revision if the store is still at `applied` (so it is the read's own), else
/// `before` ([`revision_now`] before the read).
pub(crate) fn index_of_read(s: &AppState, before: u64, applied: u64) -> Result<u64, ApiError> {
    let (now_applied, revision, _) = s.kv.store().counters()?;
    Ok(if now_applied == applied {
        revision
    } else {
        before
    })
}

/// Sets `X-Paxosdb-Index` and `X-Consul-Index` to `index`.
pub(crate) fn set_index(resp: &mut Response, index: u64) {
    set_header(resp, INDEX_HEADER, index);
    set_header(resp, CONSUL_INDEX_HEADER, index);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(revision: u64, kind: ChangeKind, key: &[u8], value: &[u8]) -> Change {
        Change {
            revision,
            kind,
            key: key.to_vec(),
            value: value.to_vec(),
        }
    }

    #[test]
    fn a_change_is_one_event_with_its_revision_as_id() {
        let out = events(&[change(7, ChangeKind::Put, b"app/a", b"1")], None);
        assert_eq!(
            out,
            "id: 7\ndata: {\"key\":\"app/a\",\"revision\":7,\"type\":\"put\",\"value\":\"1\"}\n\n"
        );
        let out = events(
            &[
                change(8, ChangeKind::Delete, b"\xff", b""),
                change(9, ChangeKind::Expire, b"t", b""),
            ],
            None,
        );
        assert_eq!(
            out,
            "id: 8\ndata: {\"key_base64\":\"/w==\",\"revision\":8,\"type\":\"delete\"}\n\n\
             id: 9\ndata: {\"key\":\"t\",\"revision\":9,\"type\":\"expire\"}\n\n"
        );
    }

    /// The ids of the events `events` writes.
    fn ids(out: &str) -> Vec<&str> {
        out.lines().filter_map(|l| l.strip_prefix("id: ")).collect()
    }

    #[test]
    fn a_revision_of_several_changes_resumes_exactly_inside_it() {
        let batch = [
            change(4, ChangeKind::Put, b"a", b"x"),
            change(5, ChangeKind::Put, b"a", b"1"),
            change(5, ChangeKind::Put, b"b", b"2"),
            change(5, ChangeKind::Delete, b"c", b""),
            change(6, ChangeKind::Put, b"a", b"3"),
        ];
        let all = events(&batch, None);
        assert_eq!(ids(&all), ["4", "5.1", "5.2", "5", "6"]);
        // Every id resumes right after its event: Last-Event-ID R.k reads revision R
        // again and skips its first k changes; R reads from R + 1.
        for (i, id) in ids(&all).into_iter().enumerate() {
            let r = decode::last_event_id(Some(id.as_bytes())).unwrap().unwrap();
            let again: Vec<Change> = batch
                .iter()
                .filter(|c| c.revision >= r.revision)
                .cloned()
                .collect();
            let skip = (r.skip > 0).then_some((r.revision, r.skip));
            let rest = events(&again, skip);
            assert_eq!(ids(&rest), ids(&all)[i + 1..], "after {id}");
        }
        // A skip past a revision's changes sends nothing of it.
        assert_eq!(ids(&events(&batch[1..4], Some((5, 9)))), Vec::<&str>::new());
    }

    #[test]
    fn heartbeats_and_waits_fit_inside_the_idle_timeout() {
        assert_eq!(heartbeat(0), HEARTBEAT);
        assert_eq!(heartbeat(300_000), HEARTBEAT);
        assert_eq!(heartbeat(2_000), Duration::from_millis(1_000));
        assert_eq!(heartbeat(10), MIN_HEARTBEAT);
        let b = |wait_ms| Block { index: 1, wait_ms };
        assert_eq!(wait_for(b(300), 300_000), Duration::from_millis(300));
        assert_eq!(wait_for(b(600_000), 0), Duration::from_millis(600_000));
        assert_eq!(
            wait_for(b(decode::DEFAULT_WAIT_MS), 300_000),
            Duration::from_millis(270_000)
        );
    }
}
