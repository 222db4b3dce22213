//! The Rust client library.
//!
//! A [`Client`] knows several endpoints and needs no idea of who leads: any node accepts
//! any request. It sticks to the endpoint that last answered, moves to the next one when
//! a node is unreachable or has no quorum, and retries with backoff until its timeout.
//!
//! Writes run in a *session* (client id, sequence number) taken from a small pool, one
//! write in flight per session. A retried write keeps its session, so the cluster applies
//! it at most once and answers the retry with the original result. When the timeout runs
//! out on a write, the error is [`Error::OutcomeUnknown`] — the write may or may not have
//! happened — never a plain failure; unless no attempt ever reached a node (every
//! connection was refused or had no route): then nothing was sent, and the error is
//! [`Error::Unavailable`].
//!
//! Leases (etcd's model, `client/lease.rs`): [`Client::lease_grant`], keep-alives, revokes,
//! [`Client::put_with_lease`], and [`Client::keep_alive_forever`], which keeps a lease alive
//! from a task until its [`KeepAliveHandle`] is dropped. Grants, keep-alives and revokes are
//! writes, retried in their session like a put.
//!
//! Watches: [`Client::watch`] streams the changes of a key or a key range and resumes by
//! itself when its node fails ([`WatchStream`], in `client/watch.rs`).
//!
//! SQL: [`Client::sql_execute`] runs statements through the log in a session, exactly like
//! a key-value write (at most once, `OutcomeUnknown` when unsure); [`Client::sql_query`]
//! runs read-only statements at a read level and is retried freely, like a read.
//!
//! TLS: with [`ClientOptions::tls`] every connection is a TLS session whose server
//! certificate must chain to the given CA (and name the host dialed), optionally showing
//! a client certificate. A TLS setup problem (untrusted certificate, a plaintext port, a
//! TLS-only port reached without TLS, a refused client certificate) is an
//! [`Error::Config`] saying what to fix, returned at once rather than retried.

pub(crate) mod lease;
mod watch;

pub use crate::command::LeaseInfo;
pub use lease::{KeepAliveHandle, KeepAliveStatus, LeaseTimeToLive};
pub use watch::{WatchStream, IDLE_LIMIT as WATCH_IDLE_LIMIT};

use crate::api::grpc::from_status;
use crate::api::{grpc_sql, pb};
use crate::command::{KeyValue, ScanRange, Versioned};
use crate::error::{Error, Result};
use crate::sql;
use crate::tls::client::{ClientTls, ClientTlsFiles, ConnectError};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint, Uri};

/// A session: writes in it are applied at most once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Session {
    pub client_id: u64,
    pub seq: u64,
}

impl Session {
    /// A new session with a random id, at its first sequence number (1).
    pub fn new() -> Session {
        Session {
            client_id: rand::random::<u64>().max(1),
            seq: 1,
        }
    }

    /// The session for the next command: same client id, next sequence number.
    pub fn next(self) -> Session {
        Session {
            seq: self.seq + 1,
            ..self
        }
    }
}

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}

pub use crate::command::{Compare, CompareOp, CompareTarget, Txn, TxnOp, TxnOpResult};
pub use crate::kv::handle::{CasResult, DeleteResult, PutResult, ScanResult, TxnResult};
pub use crate::kv::{Change, ChangeKind, WatchFilter};

/// Options of [`Client::put_with`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// Also answer the previous value.
    pub return_prev: bool,
    /// The key expires this long after the write is applied (the log's time, which the
    /// leader's clock stamps), and is then absent for every read on every node. At least
    /// 1 ms (a fraction of a ms counts as a whole one), at most 100 years. `None`: never
    /// expires, and a deadline the key had is cleared.
    pub ttl: Option<Duration>,
}

/// A value read with its deadline ([`Client::get_timed`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimedValue {
    pub value: Versioned,
    /// When the key expires, in the log's time (ms since the Unix epoch, the leader's
    /// clock); `None`: never.
    pub expires_at_ms: Option<u64>,
    /// The time it had left when read: the deadline minus the log's time the read
    /// reflects (which may trail the leader's clock by up to about a second, so this is at
    /// least the time truly left). `None`: never expires.
    pub ttl: Option<Duration>,
    /// The revision at which the key was created (etcd's create revision): of the write
    /// that made it exist after it was absent.
    pub create_revision: u64,
}

/// A time to live as the wire's ms: a fraction of a ms counts as a whole one; zero, which
/// the wire reads as "no time to live", is refused.
fn ttl_ms(ttl: Duration) -> Result<u64> {
    if ttl.is_zero() {
        return Err(Error::invalid(
            "a time to live must be positive (give none for a key that never expires)",
        ));
    }
    let ms = ttl.as_nanos().div_ceil(1_000_000);
    // Too long for the wire: the server refuses anything over 100 years anyway.
    Ok(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// What a compare-and-swap compares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CasExpect {
    Value(Vec<u8>),
    Version(u64),
}

/// Credentials a client presents on every call (gRPC `authorization` metadata).
#[derive(Clone)]
pub enum Auth {
    Password { user: String, password: String },
    Token(String),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Password { user, .. } => write!(f, "password of {user}"),
            Auth::Token(_) => write!(f, "token"),
        }
    }
}

impl Auth {
    fn header(&self) -> Result<tonic::metadata::AsciiMetadataValue> {
        use base64::Engine;
        let v = match self {
            Auth::Password { user, password } => format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            ),
            Auth::Token(t) => format!("Bearer {t}"),
        };
        v.parse()
            .map_err(|_| Error::invalid("credentials must be printable ASCII"))
    }
}

struct Inner {
    endpoints: Vec<String>,
    /// The `authorization` metadata of every call, if the client has credentials.
    authorization: Option<tonic::metadata::AsciiMetadataValue>,
    channels: Vec<Channel>,
    preferred: AtomicUsize,
    sessions: Mutex<Vec<Session>>,
    timeout: Duration,
    /// Time one attempt on one node may take.
    attempt_timeout: Duration,
    /// The CA file trusted, for error messages ("" without TLS).
    ca: String,
    tls: Option<ClientTls>,
}

/// A cloneable, thread-safe client.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// Options for [`Client::with_options`].
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Total time a request may take, retries included.
    pub timeout: Duration,
    /// Time one attempt on one node may take.
    pub attempt_timeout: Duration,
    /// TLS to the nodes (their client listeners run with `--client-tls-dir`).
    pub tls: Option<ClientTlsFiles>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: Duration::from_secs(15),
            attempt_timeout: Duration::from_secs(6),
            tls: None,
        }
    }
}

impl Client {
    /// A client for `endpoints` (`host:port` of the nodes' gRPC listeners).
    pub fn new<S: AsRef<str>>(endpoints: &[S]) -> Result<Client> {
        Self::with_options(endpoints, ClientOptions::default())
    }

    pub fn with_options<S: AsRef<str>>(endpoints: &[S], opts: ClientOptions) -> Result<Client> {
        if endpoints.is_empty() {
            return Err(Error::invalid("at least one endpoint is needed"));
        }
        let tls = opts.tls.as_ref().map(ClientTls::load).transpose()?;
        let mut channels = Vec::new();
        let mut names = Vec::new();
        for e in endpoints {
            let e = e.as_ref().trim();
            let bare = e.split_once("://").map_or(e, |(_, rest)| rest);
            let scheme = if tls.is_some() { "https" } else { "http" };
            let ep = Endpoint::from_shared(format!("{scheme}://{bare}"))
                .map_err(|err| Error::invalid(format!("endpoint {e:?}: {err}")))?
                .connect_timeout(Duration::from_millis(500))
                .timeout(opts.attempt_timeout)
                .tcp_nodelay(true);
            channels.push(match &tls {
                Some(tls) => ep.connect_with_connector_lazy(TlsConnect(tls.clone())),
                None => ep.connect_lazy(),
            });
            names.push(bare.to_string());
        }
        Ok(Client {
            inner: Arc::new(Inner {
                endpoints: names,
                authorization: None,
                channels,
                preferred: AtomicUsize::new(0),
                sessions: Mutex::new(Vec::new()),
                timeout: opts.timeout,
                attempt_timeout: opts.attempt_timeout,
                ca: opts
                    .tls
                    .as_ref()
                    .map(|t| t.ca.display().to_string())
                    .unwrap_or_default(),
                tls,
            }),
        })
    }

    /// The gRPC channel to endpoint `i` (with this client's TLS), for other services the
    /// nodes serve (reflection, ...); calls on it carry no credentials by themselves.
    pub fn channel(&self, i: usize) -> Option<Channel> {
        self.inner.channels.get(i).cloned()
    }

    /// A client as the client configuration file at `path` describes it (endpoints, TLS,
    /// credentials, timeout; see [`crate::client_config`]).
    pub fn from_config_file(path: &std::path::Path) -> Result<Client> {
        crate::client_config::ClientConfig::load(path)?.connect()
    }

    /// This client, presenting `auth` on every call from now on.
    pub fn with_auth(self, auth: Option<Auth>) -> Result<Client> {
        let authorization = auth.as_ref().map(Auth::header).transpose()?;
        let i = &self.inner;
        Ok(Client {
            inner: Arc::new(Inner {
                endpoints: i.endpoints.clone(),
                authorization,
                channels: i.channels.clone(),
                preferred: AtomicUsize::new(i.preferred.load(Ordering::Relaxed)),
                sessions: Mutex::new(Vec::new()),
                timeout: i.timeout,
                attempt_timeout: i.attempt_timeout,
                ca: i.ca.clone(),
                tls: i.tls.clone(),
            }),
        })
    }

    /// `msg` as a request carrying this client's credentials.
    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Some(a) = &self.inner.authorization {
            r.metadata_mut().insert("authorization", a.clone());
        }
        r
    }

    /// The endpoints this client knows.
    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    fn take_session(&self) -> Session {
        let pooled = self.inner.sessions.lock().unwrap().pop();
        pooled.map_or_else(Session::new, Session::next)
    }

    fn return_session(&self, s: Session) {
        self.inner.sessions.lock().unwrap().push(s);
    }

    /// Runs `f` against endpoints until it succeeds, fails for good, or time runs out.
    /// `write` decides what a timeout means: outcome unknown (write) or unavailable.
    async fn call<T, F, Fut>(&self, write: bool, f: F) -> Result<T>
    where
        F: Fn(Channel) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, tonic::Status>>,
    {
        let start = Instant::now();
        let n = self.inner.channels.len();
        let mut idx = self.inner.preferred.load(Ordering::Relaxed) % n;
        let mut backoff = Duration::from_millis(10);
        let mut last: String;
        let mut ambiguous = false;
        // Whether some attempt may have reached a node: only then can a write that got
        // no answer have been applied.
        let mut sent = false;
        loop {
            match f(self.inner.channels[idx].clone()).await {
                Ok(v) => {
                    self.inner.preferred.store(idx, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(status) => {
                    let err = self.error(&status, idx).await;
                    if !err.is_retryable() {
                        // After an attempt whose outcome was unknown, a definite-looking
                        // error on a retry says nothing about that first attempt.
                        return Err(match err {
                            e if e.is_invalid_request() && !ambiguous => e,
                            e if write && ambiguous => Error::OutcomeUnknown(format!(
                                "an earlier attempt's outcome is unknown; then: {e}"
                            )),
                            e => e,
                        });
                    }
                    ambiguous |= matches!(err, Error::OutcomeUnknown(_));
                    sent |= !never_connected(&status);
                    tracing::debug!(endpoint = %self.inner.endpoints[idx], "retrying: {err}");
                    // The last cause without its kind: the final error names the kind.
                    last = match err {
                        Error::Unavailable(m) | Error::OutcomeUnknown(m) => m,
                        e => e.to_string(),
                    };
                }
            }
            if start.elapsed() >= self.inner.timeout {
                let eps = self.inner.endpoints.join(",");
                let t = self.inner.timeout;
                return Err(if write && sent {
                    Error::OutcomeUnknown(format!("no answer within {t:?} from {eps}: {last}"))
                } else if !sent {
                    Error::Unavailable(format!(
                        "could not connect to {eps} within {t:?} ({last}); nothing was sent"
                    ))
                } else {
                    Error::Unavailable(format!("no answer within {t:?} from {eps}: {last}"))
                });
            }
            idx = (idx + 1) % n;
            // A full round over all nodes without an answer: back off before the next one.
            if idx == self.inner.preferred.load(Ordering::Relaxed) % n {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
        }
    }

    /// Runs a write in a pooled session.
    async fn write<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn(Channel, pb::Session) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, tonic::Status>>,
    {
        let s = self.take_session();
        let res = self.write_in(s, f).await;
        self.return_session(s);
        res
    }

    async fn write_in<T, F, Fut>(&self, s: Session, f: F) -> Result<T>
    where
        F: Fn(Channel, pb::Session) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, tonic::Status>>,
    {
        let ps = pb::Session {
            client_id: s.client_id,
            seq: s.seq,
        };
        self.call(true, |ch| f(ch, ps)).await
    }

    /// Stores `value` under `key`; returns the new version (and the previous value if
    /// `return_prev`). The key never expires (a deadline it had is cleared).
    pub async fn put(&self, key: &[u8], value: &[u8], return_prev: bool) -> Result<PutResult> {
        let opts = PutOptions {
            return_prev,
            ttl: None,
        };
        self.put_with(key, value, opts).await
    }

    /// Stores `value` under `key` for `ttl`: the key expires that long after the write is
    /// applied, by the log's time (the leader's clock), on every node at once. `ttl`
    /// must be positive and at most 100 years (else [`Error::InvalidInput`]).
    pub async fn put_with_ttl(&self, key: &[u8], value: &[u8], ttl: Duration) -> Result<PutResult> {
        let opts = PutOptions {
            return_prev: false,
            ttl: Some(ttl),
        };
        self.put_with(key, value, opts).await
    }

    /// Stores `value` under `key` with options (previous value, time to live).
    pub async fn put_with(&self, key: &[u8], value: &[u8], opts: PutOptions) -> Result<PutResult> {
        let ttl_ms = opts.ttl.map(ttl_ms).transpose()?.unwrap_or(0);
        self.put_raw(key, value, opts.return_prev, ttl_ms, 0).await
    }

    /// A `Kv.Put` as the wire has it (`ttl_ms` 0: none; `lease` 0: none).
    async fn put_raw(
        &self,
        key: &[u8],
        value: &[u8],
        return_prev: bool,
        ttl_ms: u64,
        lease: u64,
    ) -> Result<PutResult> {
        self.write(|ch, session| {
            let req = pb::PutRequest {
                session: Some(session),
                key: key.to_vec(),
                value: value.to_vec(),
                return_prev,
                ttl_ms,
                lease,
            };
            let req = self.request(req);
            async move { kv_client(ch).put(req).await }
        })
        .await
        .map(|r| {
            let r = r.into_inner();
            PutResult {
                version: r.version,
                prev: r.prev.map(from_pb),
            }
        })
    }

    /// Runs `txn` atomically in one log entry (etcd's model: if every comparison holds,
    /// the success operations run, else the failure ones). Over gRPC a transaction holds
    /// gets, ranges, puts, deletes and delete ranges; anything else is refused at once as
    /// invalid input. A transaction is a write: a timeout means its outcome is unknown.
    pub async fn txn(&self, txn: &Txn) -> Result<TxnResult> {
        let base = crate::api::txn_pb::txn_to_pb(txn, pb::Session::default())?;
        let resp = self
            .write(|ch, session| {
                let mut req = base.clone();
                req.session = Some(session);
                let req = self.request(req);
                async move { kv_client(ch).txn(req).await }
            })
            .await?;
        crate::api::txn_pb::results_from_pb(resp.into_inner())
    }

    /// Removes `key`.
    pub async fn delete(&self, key: &[u8], return_prev: bool) -> Result<DeleteResult> {
        self.write(|ch, session| {
            let req = pb::DeleteRequest {
                session: Some(session),
                key: key.to_vec(),
                return_prev,
            };
            let req = self.request(req);
            async move { kv_client(ch).delete(req).await }
        })
        .await
        .map(|r| {
            let r = r.into_inner();
            DeleteResult {
                deleted: r.deleted,
                prev: r.prev.map(from_pb),
            }
        })
    }

    /// Sets `key` to `new_value` if the comparison holds.
    pub async fn cas(&self, key: &[u8], expect: CasExpect, new_value: &[u8]) -> Result<CasResult> {
        let s = self.take_session();
        let res = self.cas_in_session(s, key, expect, new_value).await;
        self.return_session(s);
        res
    }

    /// A compare-and-swap in an explicit session: calling it again with the same session
    /// is a retry, applied at most once.
    pub async fn cas_in_session(
        &self,
        session: Session,
        key: &[u8],
        expect: CasExpect,
        new_value: &[u8],
    ) -> Result<CasResult> {
        self.write_in(session, |ch, session| {
            let req = pb::CasRequest {
                session: Some(session),
                key: key.to_vec(),
                expect: Some(match &expect {
                    CasExpect::Value(v) => pb::cas_request::Expect::ExpectValue(v.clone()),
                    CasExpect::Version(v) => pb::cas_request::Expect::ExpectVersion(*v),
                }),
                new_value: new_value.to_vec(),
            };
            let req = self.request(req);
            async move { kv_client(ch).compare_and_swap(req).await }
        })
        .await
        .map(|r| {
            let r = r.into_inner();
            CasResult {
                succeeded: r.succeeded,
                version: r.version,
                current: r.current.map(from_pb),
            }
        })
    }

    /// Reads `key`; `stale` reads the contacted node's local copy. Returns the value and
    /// the applied index it reflects.
    pub async fn get(&self, key: &[u8], stale: bool) -> Result<(Option<Versioned>, u64)> {
        let (timed, applied_index) = self.get_timed(key, stale).await?;
        Ok((timed.map(|t| t.value), applied_index))
    }

    /// Reads `key` like [`Client::get`], with its deadline and the time it had left.
    pub async fn get_timed(&self, key: &[u8], stale: bool) -> Result<(Option<TimedValue>, u64)> {
        self.call(false, |ch| {
            let req = pb::GetRequest {
                key: key.to_vec(),
                stale,
            };
            let req = self.request(req);
            async move { kv_client(ch).get(req).await }
        })
        .await
        .map(|r| {
            let r = r.into_inner();
            let expires = (r.expires_at_ms != 0).then_some(r.expires_at_ms);
            let timed = r.kv.map(|kv| TimedValue {
                value: from_pb(kv),
                expires_at_ms: expires,
                ttl: expires.map(|_| Duration::from_millis(r.ttl_ms)),
                create_revision: r.create_revision,
            });
            (timed, r.applied_index)
        })
    }

    /// Scans a range, at most `limit` rows (0 = server default).
    pub async fn scan(&self, range: &ScanRange, limit: u32, stale: bool) -> Result<ScanResult> {
        self.call(false, |ch| {
            let req = pb::ScanRequest {
                range: Some(match range {
                    ScanRange::Prefix(p) => pb::scan_request::Range::Prefix(p.clone()),
                    ScanRange::Range { from, to } => {
                        pb::scan_request::Range::KeyRange(pb::KeyRange {
                            from: from.clone(),
                            to: to.clone().unwrap_or_default(),
                        })
                    }
                }),
                limit,
                stale,
            };
            let req = self.request(req);
            async move { kv_client(ch).scan(req).await }
        })
        .await
        .map(|r| {
            let r = r.into_inner();
            ScanResult {
                items: r
                    .items
                    .into_iter()
                    .map(|kv| KeyValue {
                        key: kv.key,
                        value: kv.value,
                        version: kv.version,
                    })
                    .collect(),
                more: r.more,
                applied_index: r.applied_index,
            }
        })
    }

    /// Runs SQL `req` through the log (`paxosdb.v1.Sql/Execute`) in a pooled session,
    /// like a key-value write: retried (on another node if need be) with the same
    /// session, so it is applied at most once, and [`Error::OutcomeUnknown`] when the
    /// timeout runs out after an attempt that may have been applied. A statement that
    /// fails is reported in its result's `error`, not as an `Err`.
    pub async fn sql_execute(&self, req: sql::Request) -> Result<Vec<sql::StatementResult>> {
        let s = self.take_session();
        let res = self.sql_execute_in_session(s, &req).await;
        self.return_session(s);
        res
    }

    /// [`Client::sql_execute`] in an explicit session: calling it again with the same
    /// session is a retry, applied at most once.
    pub async fn sql_execute_in_session(
        &self,
        session: Session,
        req: &sql::Request,
    ) -> Result<Vec<sql::StatementResult>> {
        let statements = grpc_sql::statements_to_pb(req);
        self.write_in(session, |ch, session| {
            let r = self.request(pb::ExecuteRequest {
                statements: statements.clone(),
                transaction: req.transaction,
                session: Some(session),
            });
            async move { sql_client(ch).execute(r).await }
        })
        .await
        .map(|r| {
            let results = r.into_inner().results;
            results.into_iter().map(grpc_sql::result_from_pb).collect()
        })
    }

    /// Runs read-only SQL `req` at `level` (`paxosdb.v1.Sql/Query`); retried on any node
    /// until the timeout (a query changes nothing). A statement that would write is
    /// refused.
    pub async fn sql_query(
        &self,
        req: sql::Request,
        level: sql::ReadLevel,
    ) -> Result<sql::QueryOutput> {
        let statements = grpc_sql::statements_to_pb(&req);
        let (level, freshness) = grpc_sql::level_to_pb(level);
        let level = level as i32;
        self.call(false, |ch| {
            let r = self.request(pb::QueryRequest {
                statements: statements.clone(),
                transaction: req.transaction,
                level,
                freshness,
            });
            async move { sql_client(ch).query(r).await }
        })
        .await
        .map(|r| {
            let r = r.into_inner();
            sql::QueryOutput {
                results: r
                    .results
                    .into_iter()
                    .map(grpc_sql::result_from_pb)
                    .collect(),
                applied_index: r.applied_index,
            }
        })
    }

    /// Adds `add` (id, peer address) and removes `remove` in one membership change,
    /// through the first endpoint that answers. Not retried once a node took it: an
    /// `OutcomeUnknown` error means it may still happen (check the status).
    /// A backup of the first node that answers (admin only): the file's bytes, chunk by
    /// chunk, in order (see [`crate::backup`]). The stream fails if the backup does;
    /// its bytes then lack the end record, and no reader takes them for a backup.
    pub async fn backup(&self) -> Result<tonic::Streaming<pb::BackupChunk>> {
        self.call(false, |ch| {
            let req = self.request(pb::BackupRequest {});
            async move {
                // A chunk is one record of the file, as large as the largest part.
                pb::cluster_client::ClusterClient::new(ch)
                    .max_decoding_message_size(crate::backup::MAX_RECORD + (1 << 20))
                    .backup(req)
                    .await
            }
        })
        .await
        .map(tonic::Response::into_inner)
    }

    /// The error a status received on an open stream stands for.
    pub fn stream_error(status: &tonic::Status) -> Error {
        match status.code() {
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => {
                Error::Unavailable(format!("the stream broke: {}", status.message()))
            }
            _ => crate::api::grpc::from_status(status),
        }
    }

    pub async fn change_membership(
        &self,
        add: &[(u64, String)],
        remove: &[u64],
    ) -> Result<pb::ChangeMembershipResponse> {
        let req = pb::ChangeMembershipRequest {
            add: add
                .iter()
                .map(|(id, addr)| pb::MemberAddr {
                    id: *id,
                    peer_addr: addr.clone(),
                })
                .collect(),
            remove: remove.to_vec(),
        };
        // `Unavailable` means nothing happened (node down, no leader yet, catching up,
        // removed): try the next node, and go round again until the timeout.
        let deadline = tokio::time::Instant::now() + self.inner.timeout;
        let mut last = Error::Unavailable("no endpoints".into());
        loop {
            for (i, ch) in self.inner.channels.iter().enumerate() {
                let mut c = pb::cluster_client::ClusterClient::new(ch.clone());
                match c.change_membership(self.request(req.clone())).await {
                    Ok(resp) => return Ok(resp.into_inner()),
                    Err(s) => match self.error(&s, i).await {
                        e @ Error::Unavailable(_) => last = e,
                        e => return Err(e),
                    },
                }
            }
            if tokio::time::Instant::now() + Duration::from_millis(200) > deadline {
                return Err(last);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Runs a user-management call (admin only) on the first endpoint that answers.
    async fn cluster_call<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn(pb::cluster_client::ClusterClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call(true, |ch| f(pb::cluster_client::ClusterClient::new(ch)))
            .await
            .map(tonic::Response::into_inner)
    }

    /// Creates or changes user `name` (admin only). `password` replaces the user's
    /// passwords; `role` and `prefix` replace theirs; None leaves a field as it is.
    pub async fn set_user(
        &self,
        name: &str,
        password: Option<&str>,
        role: Option<&str>,
        prefix: Option<&[u8]>,
    ) -> Result<bool> {
        let req = pb::SetUserRequest {
            name: name.into(),
            password: password.unwrap_or_default().into(),
            role: role.unwrap_or_default().into(),
            prefix: prefix.map(<[u8]>::to_vec),
            // A new user is created enabled; an existing one keeps its state.
            enabled: None,
        };
        self.cluster_call(|mut c| {
            let r = self.request(req.clone());
            async move { c.set_user(r).await }
        })
        .await
        .map(|r| r.changed)
    }

    /// Deletes user `name` (admin only); whether it existed.
    pub async fn delete_user(&self, name: &str) -> Result<bool> {
        let req = pb::DeleteUserRequest { name: name.into() };
        self.cluster_call(|mut c| {
            let r = self.request(req.clone());
            async move { c.delete_user(r).await }
        })
        .await
        .map(|r| r.deleted)
    }

    /// Every user (admin only).
    pub async fn list_users(&self) -> Result<Vec<pb::User>> {
        self.cluster_call(|mut c| {
            let r = self.request(pb::ListUsersRequest {});
            async move { c.list_users(r).await }
        })
        .await
        .map(|r| r.users)
    }

    /// A new bearer token for user `name` (admin only); shown once.
    pub async fn create_token(&self, name: &str) -> Result<String> {
        let req = pb::CreateTokenRequest { name: name.into() };
        self.cluster_call(|mut c| {
            let r = self.request(req.clone());
            async move { c.create_token(r).await }
        })
        .await
        .map(|r| r.token)
    }

    /// Revokes user `name`'s token `token` (its id, or the whole token; admin only).
    /// Other tokens and the passwords stay. An error if the user holds no such token.
    pub async fn revoke_token(&self, name: &str, token: &str) -> Result<()> {
        let req = pb::RevokeTokenRequest {
            name: name.into(),
            token: token.into(),
        };
        self.cluster_call(|mut c| {
            let r = self.request(req.clone());
            async move { c.revoke_token(r).await }
        })
        .await
        .map(|_| ())
    }

    /// The status of the node at endpoint `i` (no retries, no failover).
    pub async fn status_of(&self, i: usize) -> Result<pb::StatusResponse> {
        let ch = self
            .inner
            .channels
            .get(i)
            .ok_or_else(|| Error::invalid("no such endpoint"))?
            .clone();
        match pb::cluster_client::ClusterClient::new(ch)
            .status(pb::StatusRequest {})
            .await
        {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => Err(self.error(&s, i).await),
        }
    }

    /// What a failed call to endpoint `idx` means: a TLS setup problem (not retryable),
    /// or the status's own error. A request canceled because its connection ended, which
    /// carries no cause, is probed with one more connection ([`ClientTls::probe`],
    /// [`crate::tls::client::probe_plaintext`]).
    async fn error(&self, status: &tonic::Status, idx: usize) -> Error {
        let addr = &self.inner.endpoints[idx];
        let Some(cause) = std::error::Error::source(status) else {
            return from_status(status);
        };
        if let Some(f) = crate::tls::client::diagnose(cause, addr, &self.inner.ca) {
            return f.into();
        }
        if !crate::tls::client::canceled(cause) {
            return from_status(status);
        }
        let probed = match &self.inner.tls {
            Some(tls) => {
                let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
                tls.probe(host, addr).await
            }
            None => crate::tls::client::probe_plaintext(addr).await,
        };
        match probed {
            Some(f) => f.into(),
            None => from_status(status),
        }
    }
}

/// True when `status` is a failure to connect (refused, unreachable, no route): the
/// request never left this process.
fn never_connected(status: &tonic::Status) -> bool {
    let mut cause = std::error::Error::source(status);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            return matches!(
                io.kind(),
                ConnectionRefused | AddrNotAvailable | NetworkUnreachable | HostUnreachable
            );
        }
        cause = e.source();
    }
    false
}

/// Opens a TLS session to the endpoint a channel connects to.
#[derive(Clone)]
struct TlsConnect(ClientTls);

impl tower_service::Service<Uri> for TlsConnect {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
    type Error = ConnectError;
    type Future = std::pin::Pin<
        Box<
            dyn std::future::Future<Output = std::result::Result<Self::Response, ConnectError>>
                + Send,
        >,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::result::Result<(), ConnectError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.0.clone();
        Box::pin(async move {
            let host = uri.host().unwrap_or_default().to_string();
            let port = uri.port_u16().unwrap_or(443);
            let addr = format!("{host}:{port}");
            let tcp = tokio::net::TcpStream::connect((
                host.trim_start_matches('[').trim_end_matches(']'),
                port,
            ))
            .await
            .map_err(ConnectError::Io)?;
            let _ = tcp.set_nodelay(true);
            let s = tls.connect(&host, &addr, tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(s))
        })
    }
}

/// Largest response accepted: a scan answer or a value is bounded well below this, and
/// the nodes send no SQL answer larger than this either.
const MAX_RESPONSE: usize = 64 * 1024 * 1024;

fn kv_client(ch: Channel) -> pb::kv_client::KvClient<Channel> {
    pb::kv_client::KvClient::new(ch).max_decoding_message_size(MAX_RESPONSE)
}

fn sql_client(ch: Channel) -> pb::sql_client::SqlClient<Channel> {
    pb::sql_client::SqlClient::new(ch).max_decoding_message_size(MAX_RESPONSE)
}

fn from_pb(v: pb::Versioned) -> Versioned {
    Versioned {
        value: v.value,
        version: v.version,
    }
}
