//! The gRPC service (`paxosdb.v1.Kv`, `paxosdb.v1.Lease` and `paxosdb.v1.Cluster`), with
//! server reflection so that `grpcurl` can list and call it.
//!
//! `Lease` ([`LeaseService`]): etcd's leases over [`KvHandle`]'s lease operations. Grant,
//! keep-alive and revoke are writes in the request's session, checked with
//! [`Identity::check_op`] on the very operation proposed (the readwrite role; a user held
//! to a key prefix may not revoke). A lease that does not exist is an answer, not an
//! error: `found: false` (keep-alive, time to live) or `revoked: false`, so that a retry
//! in the same session, or a call racing the expiry, is never mistaken for a failure.
//!
//! Error mapping, by how the caller reacts: `INVALID_ARGUMENT` (fix the request),
//! `UNAVAILABLE` (nothing happened, retry), `DEADLINE_EXCEEDED` (a write's outcome is
//! unknown; retry with the same session), `INTERNAL` (a bug or a broken disk).
//!
//! Credentials: the `authorization` metadata, `Basic base64(user:password)` or
//! `Bearer <token>` ([`crate::auth`]); missing or wrong ones where they are required get
//! `UNAUTHENTICATED`, a role or key prefix that forbids the call `PERMISSION_DENIED`.
//! Status needs none; membership changes and user management need the admin role.
//!
//! Every call is timed into [`Metrics`] as protocol `grpc` (a `Watch` until its stream
//! starts).
//!
//! `Kv.Watch` streams a [`Watcher`] ([`crate::kv::watch`]): the watcher is started
//! before the call answers, so a refusal (a compacted revision, too many watchers, no
//! rights) is the call's status; then one task per stream reads the watcher and feeds a
//! small bounded queue that tonic sends from. A queue that is full (a client that reads
//! slowly) makes the task wait, holding nothing more: the history is on disk, and a
//! client that falls behind its window gets `OUT_OF_RANGE` as the stream's final status.
//! The task ends, dropping the watcher and freeing its place, when the client goes away,
//! even while nothing is changing. It also sends a progress note (no events, the next
//! revision) after [`WATCH_PROGRESS_EVERY`] without a message, which keeps an idle
//! stream's connection from looking idle and lets clients resume from close by. The
//! user's rights are checked again, at most once a second, before anything is sent: a
//! user deleted, disabled or narrowed stops receiving changes.
//!
//! Invariants:
//! - a watch stream sends whole revisions in increasing order, each change once, and
//!   every `next_revision` it sends is past every event sent before it;
//! - each stream holds one watcher and at most [`WATCH_QUEUE`] responses in memory;
//! - a lease write (and a put with a lease) is proposed only after the caller's rights
//!   were checked on that very operation and its input passed, so a refused call changes
//!   nothing; a put with both a lease and a time to live is refused before anything.

use super::{pb, txn_pb};
use crate::auth::{Authenticator, Identity, Role, UserChange};
use crate::command::{Deadline, Expect, Expiry, ScanRange, SetCond, Versioned, WriteOp};
use crate::error::Error;
use crate::kv::handle::{KvHandle, Writer};
use crate::kv::{Change, ChangeKind, WatchFilter, Watcher};
use crate::metrics::Metrics;
use crate::node::Consistency;
use crate::server::ServerInfo;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The metadata key that tells the two INVALID_ARGUMENT cases apart for the client
/// library: a size limit says `too-large`.
const ERROR_KIND: &str = "x-paxosdb-error";

/// With `x-paxosdb-error: compacted`: the oldest revision the watch history holds.
const OLDEST_REVISION: &str = "x-paxosdb-oldest-revision";
/// With `x-paxosdb-error: compacted`: the revision the watch asked for.
const REQUESTED_REVISION: &str = "x-paxosdb-requested-revision";

/// After this long without sending anything, a watch stream sends a progress note.
pub const WATCH_PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Responses a watch stream holds ready to send at most.
pub const WATCH_QUEUE: usize = 4;

/// Converts an [`Error`] into a gRPC status.
pub fn to_status(e: Error) -> Status {
    match e {
        Error::InvalidInput(m) => Status::invalid_argument(m),
        Error::TooLarge(m) => {
            let mut s = Status::invalid_argument(m);
            s.metadata_mut().insert(
                ERROR_KIND,
                tonic::metadata::MetadataValue::from_static("too-large"),
            );
            s
        }
        // The session's state does not allow this seq for this request.
        Error::SessionReused(m) => Status::failed_precondition(m),
        Error::Unavailable(m) => Status::unavailable(m),
        Error::Overloaded(m) => Status::resource_exhausted(format!("overloaded: {m}")),
        Error::Unauthenticated(m) => Status::unauthenticated(m),
        Error::PermissionDenied(m) => Status::permission_denied(m),
        Error::OutcomeUnknown(m) => Status::deadline_exceeded(format!("outcome unknown: {m}")),
        e @ Error::Compacted { requested, oldest } => {
            let mut s = Status::out_of_range(e.to_string());
            let md = s.metadata_mut();
            md.insert(
                ERROR_KIND,
                tonic::metadata::MetadataValue::from_static("compacted"),
            );
            md.insert(REQUESTED_REVISION, requested.into());
            md.insert(OLDEST_REVISION, oldest.into());
            s
        }
        e @ (Error::Config(_) | Error::Storage(_) | Error::Internal(_)) => {
            Status::internal(e.to_string())
        }
    }
}

/// Converts a gRPC status back into an [`Error`] (used by the client library).
pub fn from_status(s: &Status) -> Error {
    use tonic::Code;
    let m = s.message();
    // `to_status` prefixes these two with what the error's own display adds again.
    let m = match s.code() {
        Code::DeadlineExceeded => m.strip_prefix("outcome unknown: ").unwrap_or(m),
        Code::ResourceExhausted => m.strip_prefix("overloaded: ").unwrap_or(m),
        _ => m,
    }
    .to_string();
    let kind = s.metadata().get(ERROR_KIND).and_then(|v| v.to_str().ok());
    match s.code() {
        Code::InvalidArgument if kind == Some("too-large") => Error::TooLarge(m),
        Code::OutOfRange if kind == Some("compacted") => {
            let number =
                |key: &str| -> Option<u64> { s.metadata().get(key)?.to_str().ok()?.parse().ok() };
            match (number(REQUESTED_REVISION), number(OLDEST_REVISION)) {
                (Some(requested), Some(oldest)) => Error::Compacted { requested, oldest },
                _ => Error::InvalidInput(m),
            }
        }
        Code::FailedPrecondition => Error::SessionReused(m),
        Code::InvalidArgument | Code::OutOfRange => Error::InvalidInput(m),
        Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => Error::OutcomeUnknown(m),
        Code::Unavailable => Error::Unavailable(m),
        Code::ResourceExhausted => Error::Overloaded(m),
        Code::Unauthenticated => Error::Unauthenticated(m),
        Code::PermissionDenied => Error::PermissionDenied(m),
        _ => Error::Internal(format!("{:?}: {m}", s.code())),
    }
}

/// Who a call runs as, from its `authorization` metadata.
#[allow(clippy::result_large_err)] // tonic handlers return Status by value
pub async fn identity(
    auth: &Authenticator,
    meta: &tonic::metadata::MetadataMap,
) -> Result<Identity, Status> {
    let cred = match meta.get("authorization") {
        None => None,
        Some(v) => {
            let mut h = axum::http::HeaderMap::new();
            let v = axum::http::HeaderValue::from_bytes(v.as_bytes())
                .map_err(|_| Status::unauthenticated("malformed authorization metadata"))?;
            h.insert(axum::http::header::AUTHORIZATION, v);
            crate::api::http::auth::credential(&h)
                .map_err(|e| Status::unauthenticated(e.message))?
        }
    };
    auth.authenticate(cred, "grpc").await.map_err(to_status)
}

/// The longest time to live a write may give a key on the gRPC and HTTP APIs: 100 years,
/// in ms (Redis takes larger ones; nothing useful does).
pub const MAX_TTL_MS: u64 = 36_525 * 24 * 3_600 * 1_000;

/// The expiry of a write with a time to live of `ttl_ms` ms, counted from when it is
/// applied (the log's time); 0 is no time to live. Over [`MAX_TTL_MS`]: invalid input.
pub fn ttl_expiry(ttl_ms: u64) -> Result<Option<Expiry>, Error> {
    match ttl_ms {
        0 => Ok(None),
        1..=MAX_TTL_MS => Ok(Some(Expiry::Set(Deadline::In(ttl_ms)))),
        _ => Err(Error::invalid(format!(
            "a time to live of {ttl_ms} ms is too long: at most {MAX_TTL_MS} ms (100 years)"
        ))),
    }
}

fn pb_versioned(v: Option<Versioned>) -> Option<pb::Versioned> {
    v.map(|v| pb::Versioned {
        value: v.value,
        version: v.version,
    })
}

#[allow(clippy::result_large_err)] // tonic handlers return Status by value
fn session(s: Option<pb::Session>) -> Result<(u64, u64), Status> {
    s.map(|s| (s.client_id, s.seq))
        .ok_or_else(|| Status::invalid_argument("a write needs a session {client_id, seq}"))
}

/// Serves the KV API over a node.
pub struct KvService {
    pub kv: KvHandle,
    pub metrics: Arc<Metrics>,
    pub auth: Arc<Authenticator>,
    /// Becomes true when the node shuts down: open watch streams end (`UNAVAILABLE`, so
    /// clients resume on another node) instead of holding the shutdown up.
    pub stop: tokio::sync::watch::Receiver<bool>,
}

/// Checks that the caller may write `key` and names the write: the caller's user and the
/// request's session.
#[allow(clippy::result_large_err)] // tonic handlers return Status by value
fn writer(id: &Identity, session_field: Option<pb::Session>, key: &[u8]) -> Result<Writer, Status> {
    id.check_write([key]).map_err(to_status)?;
    let (client_id, seq) = session(session_field)?;
    Ok(Writer::new(id.user.clone(), client_id, seq))
}

#[tonic::async_trait]
impl pb::kv_server::Kv for KvService {
    type WatchStream = WatchResponses;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.metrics
            .timed("grpc", "watch", async move {
                let id = identity(&self.auth, req.metadata()).await?;
                let r = req.into_inner();
                let limits = self.kv.node().limits();
                let filter = watch_filter(&id, limits, r.target.clone())?;
                let from = (r.from_revision != 0).then_some(r.from_revision);
                // Started here, so that a refusal is the call's status.
                let watcher = (self.kv.watch(filter.clone(), from).await).map_err(to_status)?;
                let (tx, rx) = tokio::sync::mpsc::channel(WATCH_QUEUE);
                let pump = WatchPump {
                    watcher,
                    tx,
                    auth: self.auth.clone(),
                    id,
                    limits,
                    target: r.target,
                    filter,
                    checked: std::time::Instant::now(),
                    stop: self.stop.clone(),
                };
                tokio::spawn(pump.run());
                let stream: WatchResponses =
                    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
                Ok(Response::new(stream))
            })
            .await
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        self.metrics
            .timed("grpc", "put", async move {
                let id = identity(&self.auth, req.metadata()).await?;
                let r = req.into_inner();
                if r.lease != 0 && r.ttl_ms != 0 {
                    return Err(Status::invalid_argument(
                        "a put takes a ttl_ms or a lease, not both (a key attached to a \
                         lease lives as long as the lease)",
                    ));
                }
                let by = writer(&id, r.session, &r.key)?;
                if r.lease != 0 {
                    let done = (self.kv)
                        .put_leased(&by, r.key, r.value, r.lease, r.return_prev)
                        .await
                        .map_err(to_status)?;
                    return Ok(Response::new(pb::PutResponse {
                        version: done.version,
                        prev: pb_versioned(done.prev),
                    }));
                }
                let expiry = ttl_expiry(r.ttl_ms).map_err(to_status)?;
                let (version, prev) = match expiry {
                    None => {
                        let done = (self.kv.put(&by, r.key, r.value, r.return_prev).await)
                            .map_err(to_status)?;
                        (done.version, done.prev)
                    }
                    // Unconditional, so always applied; it reports the value before
                    // whether asked or not.
                    Some(expiry) => {
                        let done = (self.kv)
                            .set_expiring(&by, r.key, r.value, SetCond::Always, expiry)
                            .await
                            .map_err(to_status)?;
                        (done.version, done.prev.filter(|_| r.return_prev))
                    }
                };
                Ok(Response::new(pb::PutResponse {
                    version,
                    prev: pb_versioned(prev),
                }))
            })
            .await
    }

    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        self.metrics
            .timed("grpc", "get", async move {
                let id = identity(&self.auth, req.metadata()).await?;
                let r = req.into_inner();
                let c = if r.stale {
                    Consistency::Stale
                } else {
                    Consistency::Linearizable
                };
                id.check_read(&r.key).map_err(to_status)?;
                // The log's time is read only for a key that has a deadline.
                let (found, applied_index, now) =
                    self.kv.get_timed(&r.key, c).await.map_err(to_status)?;
                let deadline = found.as_ref().and_then(|t| t.deadline);
                let create_revision = found.as_ref().map_or(0, |t| t.created);
                Ok(Response::new(pb::GetResponse {
                    create_revision,
                    kv: pb_versioned(found.map(|t| t.value)),
                    applied_index,
                    expires_at_ms: deadline.unwrap_or(0),
                    // A key read is live: its deadline is after the time read.
                    ttl_ms: deadline.map_or(0, |d| d.saturating_sub(now).max(1)),
                }))
            })
            .await
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        self.metrics
            .timed("grpc", "delete", async move {
                let id = identity(&self.auth, req.metadata()).await?;
                let r = req.into_inner();
                let by = writer(&id, r.session, &r.key)?;
                let done = (self.kv.delete(&by, r.key, r.return_prev).await).map_err(to_status)?;
                Ok(Response::new(pb::DeleteResponse {
                    deleted: done.deleted,
                    prev: pb_versioned(done.prev),
                }))
            })
            .await
    }

    async fn compare_and_swap(
        &self,
        req: Request<pb::CasRequest>,
    ) -> Result<Response<pb::CasResponse>, Status> {
        self.metrics
            .timed("grpc", "cas", async move {
                let id = identity(&self.auth, req.metadata()).await?;
                let r = req.into_inner();
                let expect = match r.expect {
                    Some(pb::cas_request::Expect::ExpectValue(v)) => Expect::Value(v),
                    Some(pb::cas_request::Expect::ExpectVersion(v)) => Expect::Version(v),
                    None => {
                        return Err(Status::invalid_argument(
                            "CAS needs expect_value or expect_version",
                        ))
                    }
                };
                let by = writer(&id, r.session, &r.key)?;
                let done =
                    (self.kv.cas(&by, r.key, expect, r.new_value).await).map_err(to_status)?;
                Ok(Response::new(pb::CasResponse {
                    succeeded: done.succeeded,
                    version: done.version,
                    current: pb_versioned(done.current),
                }))
            })
            .await
    }

    async fn txn(&self, req: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        self.metrics
            .timed("grpc", "txn", async move {
                let id = identity(&self.auth, req.metadata()).await?;
                let r = req.into_inner();
                let (client_id, seq) = session(r.session)?;
                let txn = txn_pb::txn_from_pb(r).map_err(to_status)?;
                // Every key and range of it (the state machine checks again where it
                // applies).
                id.check_op(&WriteOp::Txn(txn.clone())).map_err(to_status)?;
                let by = Writer::new(id.user.clone(), client_id, seq);
                let done = self.kv.txn(&by, txn).await.map_err(to_status)?;
                Ok(Response::new(
                    txn_pb::results_to_pb(done).map_err(to_status)?,
                ))
            })
            .await
    }

    async fn scan(
        &self,
        req: Request<pb::ScanRequest>,
    ) -> Result<Response<pb::ScanResponse>, Status> {
        self.metrics
            .timed("grpc", "scan", async move {
                let id = identity(&self.auth, req.metadata()).await?;
                let r = req.into_inner();
                let range = match r.range {
                    Some(pb::scan_request::Range::Prefix(p)) => ScanRange::Prefix(p),
                    Some(pb::scan_request::Range::KeyRange(kr)) => ScanRange::Range {
                        from: kr.from,
                        to: if kr.to.is_empty() { None } else { Some(kr.to) },
                    },
                    None => ScanRange::Prefix(vec![]),
                };
                let c = if r.stale {
                    Consistency::Stale
                } else {
                    Consistency::Linearizable
                };
                // A user with a key prefix sees only the keys inside it.
                let (rows, more, applied_index) = match id.narrow(&range) {
                    Some(range) => {
                        let page =
                            (self.kv.scan(&range, r.limit as usize, c).await).map_err(to_status)?;
                        (page.items, page.more, page.applied_index)
                    }
                    None => (vec![], false, 0),
                };
                Ok(Response::new(pb::ScanResponse {
                    items: rows
                        .into_iter()
                        .map(|kv| pb::KeyValue {
                            key: kv.key,
                            value: kv.value,
                            version: kv.version,
                        })
                        .collect(),
                    more,
                    applied_index,
                }))
            })
            .await
    }
}

/// The most keys `Lease.TimeToLive` lists (`keys: true`); `more_keys` says when more are
/// attached.
pub const LEASE_KEYS_MAX: usize = 1000;

/// Serves `paxosdb.v1.Lease` over a node (see the proto file for the contract).
pub struct LeaseService {
    pub kv: KvHandle,
    pub metrics: Arc<Metrics>,
    pub auth: Arc<Authenticator>,
}

impl LeaseService {
    /// Who runs lease write `op`: checked against the caller's rights (the readwrite
    /// role; no revoke for a user held to a prefix) before anything is proposed, in the
    /// request's session.
    #[allow(clippy::result_large_err)] // tonic handlers return Status by value
    async fn lease_writer(
        &self,
        meta: &tonic::metadata::MetadataMap,
        session_field: Option<pb::Session>,
        op: &WriteOp,
    ) -> Result<Writer, Status> {
        let id = identity(&self.auth, meta).await?;
        id.check_op(op).map_err(to_status)?;
        let (client_id, seq) = session(session_field)?;
        Ok(Writer::new(id.user.clone(), client_id, seq))
    }
}

fn consistency(stale: bool) -> Consistency {
    if stale {
        Consistency::Stale
    } else {
        Consistency::Linearizable
    }
}

#[tonic::async_trait]
impl pb::lease_server::Lease for LeaseService {
    async fn grant(
        &self,
        req: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        self.metrics
            .timed("grpc", "lease_grant", async move {
                let r = req.get_ref();
                let (lease, ttl_ms) = (r.id, r.ttl_ms);
                let op = WriteOp::LeaseGrant { id: lease, ttl_ms };
                let by = self.lease_writer(req.metadata(), r.session, &op).await?;
                let info = (self.kv.lease_grant(&by, lease, ttl_ms).await).map_err(to_status)?;
                Ok(Response::new(pb::LeaseGrantResponse {
                    id: info.id,
                    ttl_ms: info.ttl_ms,
                    deadline_ms: info.deadline,
                }))
            })
            .await
    }

    async fn keep_alive(
        &self,
        req: Request<pb::LeaseKeepAliveRequest>,
    ) -> Result<Response<pb::LeaseKeepAliveResponse>, Status> {
        self.metrics
            .timed("grpc", "lease_keep_alive", async move {
                let r = req.get_ref();
                let lease = r.id;
                let op = WriteOp::LeaseKeepAlive { id: lease };
                let by = self.lease_writer(req.metadata(), r.session, &op).await?;
                let info = (self.kv.lease_keep_alive(&by, lease).await).map_err(to_status)?;
                Ok(Response::new(match info {
                    Some(info) => pb::LeaseKeepAliveResponse {
                        found: true,
                        id: info.id,
                        ttl_ms: info.ttl_ms,
                        deadline_ms: info.deadline,
                    },
                    None => pb::LeaseKeepAliveResponse {
                        found: false,
                        id: lease,
                        ..Default::default()
                    },
                }))
            })
            .await
    }

    async fn revoke(
        &self,
        req: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        self.metrics
            .timed("grpc", "lease_revoke", async move {
                let r = req.get_ref();
                let lease = r.id;
                let op = WriteOp::LeaseRevoke { id: lease };
                let by = self.lease_writer(req.metadata(), r.session, &op).await?;
                let revoked = (self.kv.lease_revoke(&by, lease).await).map_err(to_status)?;
                Ok(Response::new(pb::LeaseRevokeResponse { revoked }))
            })
            .await
    }

    async fn time_to_live(
        &self,
        req: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        self.metrics
            .timed("grpc", "lease_ttl", async move {
                let id = identity(&self.auth, req.metadata()).await?;
                let r = req.into_inner();
                if r.id == 0 {
                    return Err(Status::invalid_argument("lease id 0 names no lease"));
                }
                let max_keys = if r.keys { LEASE_KEYS_MAX } else { 0 };
                let found = (self.kv)
                    .lease_time_to_live(r.id, max_keys, consistency(r.stale))
                    .await
                    .map_err(to_status)?;
                let Some((status, remaining_ms)) = found else {
                    return Ok(Response::new(pb::LeaseTimeToLiveResponse {
                        found: false,
                        id: r.id,
                        ..Default::default()
                    }));
                };
                Ok(Response::new(pb::LeaseTimeToLiveResponse {
                    found: true,
                    id: status.info.id,
                    ttl_ms: status.info.ttl_ms,
                    deadline_ms: status.info.deadline,
                    remaining_ms,
                    // A reader held to a prefix sees only the keys inside it.
                    keys: (status.keys.into_iter())
                        .filter(|k| id.check_read(k).is_ok())
                        .collect(),
                    more_keys: status.more_keys,
                }))
            })
            .await
    }

    async fn leases(
        &self,
        req: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        self.metrics
            .timed("grpc", "lease_list", async move {
                identity(&self.auth, req.metadata()).await?;
                let r = req.into_inner();
                let limit = match r.limit as usize {
                    0 => crate::node::DEFAULT_SCAN_LIMIT,
                    n => n.min(crate::node::MAX_SCAN_LIMIT),
                };
                let (leases, more) = (self.kv.leases(r.from, limit, consistency(r.stale)).await)
                    .map_err(to_status)?;
                Ok(Response::new(pb::LeaseLeasesResponse {
                    leases: (leases.into_iter())
                        .map(|l| pb::LeaseStatus {
                            id: l.id,
                            ttl_ms: l.ttl_ms,
                            deadline_ms: l.deadline,
                        })
                        .collect(),
                    more,
                }))
            })
            .await
    }
}

/// What a watch request watches, checked against the caller's rights: a key must be
/// inside the caller's prefix; a range is narrowed to it (as a scan is), and one wholly
/// outside it is refused.
#[allow(clippy::result_large_err)] // tonic handlers return Status by value
fn watch_filter(
    id: &Identity,
    limits: crate::command::Limits,
    target: Option<pb::watch_request::Target>,
) -> Result<WatchFilter, Status> {
    use pb::watch_request::Target;
    let range = match target {
        Some(Target::Key(key)) => {
            limits.check_key(&key).map_err(to_status)?;
            id.check_read(&key).map_err(to_status)?;
            return Ok(WatchFilter::Key(key));
        }
        Some(Target::Prefix(p)) => ScanRange::Prefix(p),
        Some(Target::KeyRange(kr)) => ScanRange::Range {
            from: kr.from,
            to: if kr.to.is_empty() { None } else { Some(kr.to) },
        },
        None => {
            return Err(Status::invalid_argument(
                "a watch needs a key, a prefix or a key_range (an empty prefix: every key)",
            ))
        }
    };
    let longest = match &range {
        ScanRange::Prefix(p) => p.len(),
        ScanRange::Range { from, to } => from.len().max(to.as_ref().map_or(0, Vec::len)),
    };
    if longest > limits.max_key {
        return Err(to_status(Error::too_large(format!(
            "a watched range's bound is {longest} bytes; the key limit is {} bytes",
            limits.max_key
        ))));
    }
    match id.narrow(&range) {
        Some(range) => Ok(WatchFilter::Range(range)),
        None => Err(to_status(Error::PermissionDenied(format!(
            "user {} may not watch keys outside its prefix",
            id.user.as_deref().unwrap_or("default")
        )))),
    }
}

fn watch_event(c: Change) -> pb::WatchEvent {
    let kind = match c.kind {
        ChangeKind::Put => pb::watch_event::Kind::Put,
        ChangeKind::Delete => pb::watch_event::Kind::Delete,
        ChangeKind::Expire => pb::watch_event::Kind::Expire,
    };
    pb::WatchEvent {
        revision: c.revision,
        kind: kind as i32,
        key: c.key,
        value: c.value,
    }
}

/// A watch stream's responses, as tonic sends them.
pub type WatchResponses =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

/// How often a watch stream checks again that its user may still watch what it watches
/// (before sending changes, and with each progress note).
const WATCH_RECHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// One watch stream being served: its watcher, where its responses go, and what it
/// needs to check its user's rights again.
struct WatchPump {
    watcher: Watcher,
    tx: tokio::sync::mpsc::Sender<Result<pb::WatchResponse, Status>>,
    auth: Arc<Authenticator>,
    id: Identity,
    limits: crate::command::Limits,
    target: Option<pb::watch_request::Target>,
    filter: WatchFilter,
    checked: std::time::Instant,
    stop: tokio::sync::watch::Receiver<bool>,
}

impl WatchPump {
    /// Serves the stream: sends what the watcher returns until the client goes away or
    /// the watcher fails (its error is the stream's last item).
    async fn run(mut self) {
        let note = |next_revision| pb::WatchResponse {
            events: vec![],
            next_revision,
        };
        // The start, before anything else: where a client resumes if the stream breaks
        // before the first change.
        if self
            .tx
            .send(Ok(note(self.watcher.next_revision())))
            .await
            .is_err()
        {
            return;
        }
        let every = WATCH_PROGRESS_EVERY;
        let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // `Watcher::next` is cancel-safe: a progress note or a client gone in between
            // loses nothing.
            let msg = tokio::select! {
                r = self.watcher.next() => r.map_err(to_status).map(|changes| {
                    pb::WatchResponse {
                        events: changes.into_iter().map(watch_event).collect(),
                        next_revision: self.watcher.next_revision(),
                    }
                }),
                _ = beat.tick() => Ok(note(self.watcher.next_revision())),
                () = self.tx.closed() => return,
                _ = self.stop.wait_for(|stopping| *stopping) => {
                    Err(Status::unavailable("the node is shutting down; watch another node"))
                }
            };
            beat.reset();
            let msg = match (msg, self.recheck()) {
                (Ok(_), Err(refused)) => Err(refused),
                (msg, _) => msg,
            };
            let last = msg.is_err();
            if self.tx.send(msg).await.is_err() || last {
                return;
            }
        }
    }

    /// Whether the user may still watch what this stream watches (checked again at most
    /// every [`WATCH_RECHECK_EVERY`]): a user deleted, disabled or with another password
    /// must authenticate again; one whose prefix no longer allows the watch is refused;
    /// one whose rights changed the range is asked to watch again (`UNAVAILABLE`: a
    /// client resumes, and gets the range its rights now allow).
    #[allow(clippy::result_large_err)] // tonic handlers return Status by value
    fn recheck(&mut self) -> Result<(), Status> {
        if self.checked.elapsed() < WATCH_RECHECK_EVERY {
            return Ok(());
        }
        self.checked = std::time::Instant::now();
        let id = self.auth.refresh(&self.id).map_err(to_status)?;
        let filter = watch_filter(&id, self.limits, self.target.clone())?;
        if filter != self.filter {
            return Err(Status::unavailable(
                "the user's key prefix changed; watch again",
            ));
        }
        self.id = id;
        Ok(())
    }
}

/// One item of a backup stream as gRPC sends it.
#[allow(clippy::result_large_err)] // a stream of tonic's Result type
fn chunk_of(r: crate::error::Result<Vec<u8>>) -> Result<pb::BackupChunk, Status> {
    r.map(|data| pb::BackupChunk { data }).map_err(to_status)
}

/// Serves the cluster API over a node.
pub struct ClusterService {
    pub kv: KvHandle,
    pub info: Arc<ServerInfo>,
}

impl ClusterService {
    #[allow(clippy::result_large_err)] // tonic handlers return Status by value
    async fn admin(&self, meta: &tonic::metadata::MetadataMap) -> Result<Identity, Status> {
        let id = identity(&self.info.auth, meta).await?;
        id.check_admin().map_err(to_status)?;
        Ok(id)
    }

    /// Proposes a user command in a fresh session; whether it changed the user table.
    #[allow(clippy::result_large_err)] // tonic handlers return Status by value
    async fn user_op(&self, who: &Identity, op: WriteOp) -> Result<bool, Status> {
        let by = Writer::once(who.user.clone());
        (self.kv.user_change(&by, op).await).map_err(to_status)
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    type BackupStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<pb::BackupChunk, Status>> + Send + 'static>,
    >;

    async fn backup(
        &self,
        req: Request<pb::BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        self.admin(req.metadata()).await?;
        let mut rx = (self.info.backup(self.kv.node().clone(), Some("grpc"))).map_err(to_status)?;
        // The header record comes once the barrier passed and the views are pinned: an
        // error before it is the call's status, not a stream that fails at once.
        let first = match rx.recv().await {
            Some(r) => r.map_err(to_status)?,
            None => return Err(Status::internal("the backup ended before its first byte")),
        };
        use tokio_stream::StreamExt;
        let rest = tokio_stream::wrappers::ReceiverStream::new(rx);
        let chunks = tokio_stream::iter([Ok(first)]).chain(rest).map(chunk_of);
        Ok(Response::new(Box::pin(chunks)))
    }

    async fn change_membership(
        &self,
        req: Request<pb::ChangeMembershipRequest>,
    ) -> Result<Response<pb::ChangeMembershipResponse>, Status> {
        identity(&self.info.auth, req.metadata())
            .await?
            .check_admin()
            .map_err(to_status)?;
        let r = req.into_inner();
        let add = r
            .add
            .into_iter()
            .map(|m| crate::config::Member {
                id: m.id,
                addr: m.peer_addr,
            })
            .collect();
        self.info
            .metrics
            .timed("grpc", "change_membership", async move {
                let m = self
                    .kv
                    .node()
                    .change_membership(add, r.remove)
                    .await
                    .map_err(to_status)?;
                Ok(Response::new(pb::ChangeMembershipResponse {
                    config_id: m.config_id,
                    members: m
                        .members
                        .into_iter()
                        .map(|m| pb::MemberAddr {
                            id: m.id,
                            peer_addr: m.addr,
                        })
                        .collect(),
                }))
            })
            .await
    }

    async fn set_user(
        &self,
        req: Request<pb::SetUserRequest>,
    ) -> Result<Response<pb::SetUserResponse>, Status> {
        let who = self.admin(req.metadata()).await?;
        let r = req.into_inner();
        let mut change = UserChange {
            role: match r.role.as_str() {
                "" => None,
                s => Some(Role::parse(s).map_err(to_status)?),
            },
            prefix: r.prefix,
            enabled: r.enabled,
            enable_if_new: true,
            ..Default::default()
        };
        if !r.password.is_empty() {
            change.reset_passwords = true;
            let hash = crate::auth::hash_secret_async(r.password.into_bytes())
                .await
                .map_err(to_status)?;
            change.add_passwords.push(hash);
        }
        let changed = self
            .user_op(
                &who,
                WriteOp::SetUser {
                    name: r.name,
                    change,
                    only_if_no_users: false,
                },
            )
            .await?;
        Ok(Response::new(pb::SetUserResponse { changed }))
    }

    async fn delete_user(
        &self,
        req: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        let who = self.admin(req.metadata()).await?;
        let name = req.into_inner().name;
        let deleted = self.user_op(&who, WriteOp::DeleteUser { name }).await?;
        Ok(Response::new(pb::DeleteUserResponse { deleted }))
    }

    async fn list_users(
        &self,
        req: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        self.admin(req.metadata()).await?;
        let users = self
            .info
            .auth
            .users()
            .map_err(to_status)?
            .into_iter()
            .map(|(name, u)| pb::User {
                name,
                role: u.role.as_str().into(),
                prefix: u.prefix,
                enabled: u.enabled,
                passwords: u.passwords.len() as u32,
                token_ids: u.tokens.into_iter().map(|t| t.id).collect(),
            })
            .collect();
        Ok(Response::new(pb::ListUsersResponse { users }))
    }

    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let who = self.admin(req.metadata()).await?;
        let name = req.into_inner().name;
        crate::auth::check_name(&name).map_err(to_status)?;
        if self.info.auth.user(&name).map_err(to_status)?.is_none() {
            return Err(Status::not_found(format!("no user {name}")));
        }
        let (token, op) = crate::auth::token_write(&name).await.map_err(to_status)?;
        self.user_op(&who, op).await?;
        Ok(Response::new(pb::CreateTokenResponse { token }))
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let who = self.admin(req.metadata()).await?;
        let r = req.into_inner();
        let op = crate::auth::revoke_token_write(&r.name, &r.token).map_err(to_status)?;
        // A revocation the user table does not allow (no such token) is rejected where it
        // is applied: not found.
        let by = Writer::once(who.user.clone());
        match self.kv.user_change(&by, op).await {
            Ok(_) => Ok(Response::new(pb::RevokeTokenResponse {})),
            Err(Error::InvalidInput(why)) => {
                Err(Status::not_found(format!("user {}: {why}", r.name)))
            }
            Err(e) => Err(to_status(e)),
        }
    }

    async fn status(
        &self,
        _req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        self.info
            .metrics
            .timed("grpc", "status", async move {
                let st = self.kv.node().status().await.map_err(to_status)?;
                let listeners = |l: &[(String, String)]| {
                    l.iter()
                        .map(|(name, addr)| pb::Listener {
                            name: name.clone(),
                            addr: addr.clone(),
                        })
                        .collect::<Vec<_>>()
                };
                let members = self
                    .info
                    .members()
                    .into_iter()
                    .map(|m| pb::Member {
                        id: m.id,
                        peer_addr: m.peer_addr,
                        listeners: listeners(&m.listeners),
                        connected: m.connected,
                    })
                    .collect();
                Ok(Response::new(pb::StatusResponse {
                    id: st.id,
                    role: st.role.as_str().to_string(),
                    leader_id: st.leader.unwrap_or(0),
                    decided_index: st.decided_index,
                    applied_index: st.applied_index,
                    pid: std::process::id(),
                    listeners: listeners(&self.info.listeners),
                    members,
                    data_dir: self.info.config.data_dir.display().to_string(),
                    compacted_index: st.compacted_index,
                    catching_up_from: st.catching_up_from.unwrap_or(0),
                    config_id: st.membership.config_id,
                    cut_off: st.cut_off,
                }))
            })
            .await
    }
}
