//! The HTTP/JSON API (axum over hyper, HTTP/1.1), described by `docs/openapi.json`, which
//! is also served at `/openapi.json`.
//!
//! Like every protocol server it only decodes, validates and calls the typed
//! [`KvHandle`] (the SQL endpoints: the node's [`crate::sql::SqlService`]); routing to
//! the leader, batching, retries inside the cluster and linearizable reads all happen
//! below it.
//!
//! - [`kv`]: `GET/PUT/DELETE /v1/kv/{key}`, `GET /v1/kv` (scan), both reads also as
//!   blocking queries (`?index=N&wait=30s`);
//! - [`watch`]: `GET /v1/watch/{key}` and `GET /v1/watch?prefix=…`, the changes of a key
//!   or a range as server-sent events, and the blocking queries' wait;
//! - [`txn`]: `POST /v1/txn`, an atomic multi-key transaction (compare, then success or
//!   failure operations) in one log entry;
//! - [`lease`]: `POST /v1/lease` (grant), `POST /v1/lease/{id}/keep-alive`,
//!   `DELETE /v1/lease/{id}` (revoke), `GET /v1/lease/{id}` and `GET /v1/lease` (etcd's
//!   leases; `PUT /v1/kv/{key}?lease=ID` attaches a key);
//! - [`sql`]: the rqlite-compatible SQL endpoints `POST /db/execute`, `GET|POST
//!   /db/query`, `POST /db/request`, with rqlite's JSON shapes in [`rqlite`];
//! - [`cluster`]: `/v1/status`, `/healthz`, `/readyz`, `/metrics`, `/openapi.json`,
//!   `/v1/backup`, and the status page: `/` (a static page embedded in the binary, which
//!   polls `/v1/status`, `/v1/history` and `/v1/events` of every member; those and
//!   `/metrics` answer any origin, `Access-Control-Allow-Origin: *`, so the page goes on
//!   when the node it came from is down);
//! - [`decode`]: path, query and header decoding and the bytes-in-JSON scheme (fuzzed);
//! - [`error`]: the JSON error body and the status code of every error.
//!
//! Every request is timed into [`crate::metrics::Metrics`] as protocol `http`.

pub mod auth;
pub mod cluster;
pub mod decode;
pub mod error;
#[cfg(test)]
mod fuzz;
pub mod kv;
pub mod lease;
pub mod rqlite;
pub mod sql;
pub mod txn;
pub mod watch;

use crate::api::tls::Protocol;
use crate::kv::KvHandle;
use crate::node::NodeHandle;
use crate::server::ServerInfo;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use error::ApiError;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// What every handler gets.
#[derive(Clone)]
pub struct AppState {
    pub node: NodeHandle,
    /// The typed key-value API over the same node.
    pub kv: KvHandle,
    pub info: Arc<ServerInfo>,
    /// Turns true when the server shuts down: what ends event streams and blocking
    /// queries at once instead of holding the shutdown up.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

/// The router with every endpoint, the metrics layer and JSON fallbacks.
pub fn router(state: AppState) -> Router {
    let key_routes = get(kv::get_key).put(kv::put_key).delete(kv::delete_key);
    Router::new()
        .route("/v1/kv", get(kv::scan))
        // `/v1/kv/` (empty key) gets the same handlers, which answer 400.
        .route("/v1/kv/", key_routes.clone())
        .route("/v1/kv/*key", key_routes)
        .route("/v1/watch", get(watch::watch_range))
        // `/v1/watch/` (empty key) answers 400, as `/v1/kv/` does.
        .route("/v1/watch/", get(watch::watch_key))
        .route("/v1/watch/*key", get(watch::watch_key))
        .route("/v1/txn", axum::routing::post(txn::txn))
        .route("/v1/lease", get(lease::list).post(lease::grant))
        .route("/v1/lease/:id", get(lease::get_lease).delete(lease::revoke))
        .route(
            "/v1/lease/:id/keep-alive",
            axum::routing::post(lease::keep_alive),
        )
        .route("/v1/users", get(auth::list))
        .route(
            "/v1/users/:name",
            axum::routing::put(auth::put).delete(auth::delete),
        )
        .route("/v1/users/:name/tokens", axum::routing::post(auth::token))
        .route("/db/execute", axum::routing::post(sql::execute))
        .route("/db/query", get(sql::query_get).post(sql::query_post))
        .route("/db/request", axum::routing::post(sql::request))
        .route(
            "/v1/users/:name/tokens/:token",
            axum::routing::delete(auth::revoke_token),
        )
        .route("/v1/status", get(cluster::status))
        .route("/v1/backup", get(cluster::backup))
        .route("/v1/events", get(cluster::events))
        .route("/v1/history", get(cluster::history))
        .route("/", get(cluster::page))
        .route("/healthz", get(cluster::healthz))
        .route("/readyz", get(cluster::readyz))
        .route("/metrics", get(cluster::metrics))
        .route("/openapi.json", get(cluster::openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint; see /openapi.json")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not support that method; see /openapi.json",
    )
}

/// The operation name a request is counted under in the metrics.
pub fn op_name(
    method: &Method,
    path: &str,
    query: Option<&str>,
    conditional: bool,
) -> &'static str {
    let q = query.unwrap_or("");
    // A blocking query's time is mostly its wait: counted apart from plain reads.
    let blocking = q
        .split('&')
        .any(|p| p == "index" || p.starts_with("index="));
    match path {
        "/v1/watch" => "watch",
        p if p.starts_with(decode::WATCH_PREFIX) => "watch",
        "/v1/kv" if blocking => "watch",
        "/v1/kv" => "scan",
        "/v1/txn" => "txn",
        "/v1/lease" if *method == Method::POST => "lease_grant",
        "/v1/lease" => "lease_list",
        p if p.starts_with(decode::LEASE_PREFIX) => match *method {
            Method::POST => "lease_keep_alive",
            Method::DELETE => "lease_revoke",
            _ => "lease_get",
        },
        "/v1/status" => "status",
        "/v1/backup" => "backup",
        "/v1/events" => "events",
        "/v1/history" => "history",
        "/" => "page",
        p if p.starts_with("/v1/users") => "users",
        "/healthz" => "healthz",
        "/readyz" => "readyz",
        "/metrics" => "metrics",
        "/openapi.json" => "openapi",
        "/db/execute" => "sql_execute",
        "/db/query" => "sql_query",
        "/db/request" => "sql_request",
        p if p.starts_with(decode::KV_PREFIX) => match *method {
            Method::GET | Method::HEAD if blocking => "watch",
            Method::GET | Method::HEAD => "get",
            Method::PUT if conditional || q.split('&').any(|p| p.starts_with("cas=")) => "cas",
            Method::PUT => "put",
            Method::DELETE => "delete",
            _ => "other",
        },
        _ => "other",
    }
}

/// Times every request. An error is a 5xx, or a 4xx other than 404 (missing key) and 409
/// (failed compare), which are answers, not errors.
async fn track(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let h = req.headers();
    let conditional = h.contains_key("if-match") || h.contains_key("if-none-match");
    let op = op_name(
        req.method(),
        req.uri().path(),
        req.uri().query(),
        conditional,
    );
    let start = Instant::now();
    let mut resp = next.run(req).await;
    // What the status page reads of every member, from wherever it was loaded: no
    // credentials, nothing but this node's own view.
    if matches!(op, "status" | "metrics" | "events" | "history") {
        resp.headers_mut().insert(
            axum::http::header::ACCESS_CONTROL_ALLOW_ORIGIN,
            axum::http::HeaderValue::from_static("*"),
        );
    }
    let st = resp.status();
    let ok = st.is_success() || st == StatusCode::NOT_FOUND || st == StatusCode::CONFLICT;
    s.info
        .metrics
        .observe_request("http", op, start.elapsed(), ok);
    resp
}

/// Serves HTTP on `listener` until `shutdown` turns true. Each connection takes a place
/// in the node's connection limit (refused with a 503 beyond it), must complete its TLS
/// handshake (client TLS on) and then send each request's headers within
/// `header_timeout_ms`, and is closed when idle for `idle_timeout_ms`.
pub async fn serve(
    listener: TcpListener,
    kv: KvHandle,
    info: Arc<ServerInfo>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let conns = info.conns.clone();
    let header_timeout = Duration::from_millis(info.config.header_timeout_ms.max(1));
    let node = kv.node().clone();
    let app = router(AppState {
        node,
        kv,
        info,
        shutdown: shutdown.clone(),
    });
    let mut tasks = JoinSet::new();
    loop {
        if *shutdown.borrow() {
            break;
        }
        let (stream, _) = tokio::select! {
            r = shutdown.changed() => if r.is_err() { break } else { continue },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Typically out of file descriptors: back off instead of spinning.
                    tracing::warn!("HTTP accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(place) = conns.admit(Protocol::Http) else {
            conns.refuse(stream, refused());
            continue;
        };
        let _ = stream.set_nodelay(true);
        let svc = TowerToHyperService::new(app.clone());
        let mut stop = shutdown.clone();
        let conns = conns.clone();
        tasks.spawn(async move {
            // The TLS handshake, if client TLS is on (bounded by the header timeout too).
            let Some(stream) = conns.open(stream, Protocol::Http).await else {
                return;
            };
            let io = TokioIo::new(conns.guard(stream, place));
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let conn = builder.serve_connection(io, svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    drop(listener);
    crate::api::conn::drain(tasks, Duration::from_secs(5)).await;
}

/// The 503 a connection over the limit gets (built once).
fn refused() -> &'static [u8] {
    static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BYTES.get_or_init(crate::api::conn::refused_http)
}
