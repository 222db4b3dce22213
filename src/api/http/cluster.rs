//! Cluster and operations endpoints: `/v1/status`, `/healthz`, `/readyz`, `/metrics`,
//! `/openapi.json` and `/v1/backup`.
//!
//! - `/v1/backup` (admin only) streams a backup file of this node (see [`crate::backup`]);
//!   an error before its first byte is an ordinary error answer, one after it cuts the
//!   chunked body short (no final chunk), so a client never takes it for a whole file;
//! - `/healthz` answers 200 whenever the process serves HTTP (liveness);
//! - `/readyz` answers 200 only when a linearizable read barrier completes within
//!   [`READY_TIMEOUT`], i.e. this node can serve linearizable requests now (readiness);
//! - `/v1/status` is the same data as the gRPC `Cluster.Status`.

use super::error::ApiError;
use super::AppState;
use crate::metrics::cf_disk_bytes;
use crate::storage::db::CF_LOG;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::time::Duration;

/// How long `/readyz` waits for a read barrier.
pub const READY_TIMEOUT: Duration = Duration::from_secs(1);

/// The OpenAPI document, kept in the repository at `docs/openapi.json`.
pub const OPENAPI: &str = include_str!("../../../docs/openapi.json");

fn listeners(l: &[(String, String)]) -> Value {
    l.iter()
        .map(|(name, addr)| json!({ "name": name, "addr": addr }))
        .collect()
}

/// `GET /v1/status`.
pub async fn status(State(s): State<AppState>) -> Result<Response, ApiError> {
    let st = s.node.status().await?;
    let members: Vec<Value> = s
        .info
        .members()
        .into_iter()
        .map(|m| {
            let l = listeners(&m.listeners);
            json!({ "id": m.id, "peer_addr": m.peer_addr, "listeners": l, "connected": m.connected })
        })
        .collect();
    Ok(Json(json!({
        "id": st.id,
        "role": st.role.as_str(),
        "leader": st.leader,
        "decided_index": st.decided_index,
        "applied_index": st.applied_index,
        "compacted_index": st.compacted_index,
        "catching_up_from": st.catching_up_from,
        "cut_off": st.cut_off,
        "config_id": st.membership.config_id,
        "pid": std::process::id(),
        "data_dir": s.info.config.data_dir.display().to_string(),
        "listeners": listeners(&s.info.listeners),
        "members": members,
    }))
    .into_response())
}

/// `GET /v1/backup`.
pub async fn backup(
    State(s): State<AppState>,
    h: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    super::auth::admin(&s, &h).await?;
    let mut rx = s.info.backup(s.node.clone(), None)?;
    // The header record comes once the barrier passed and the views are pinned.
    let first = rx.recv().await.ok_or_else(|| {
        ApiError::from(crate::error::Error::Internal(
            "the backup ended before its first byte".into(),
        ))
    })??;
    let rest = tokio_stream::wrappers::ReceiverStream::new(rx);
    let body = futures::StreamExt::map(
        futures::StreamExt::chain(futures::stream::iter([Ok(first)]), rest),
        |r| r.map_err(|e| std::io::Error::other(e.to_string())),
    );
    let name = format!("paxosdb-node-{}.backup", s.info.config.id);
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        axum::body::Body::from_stream(body),
    )
        .into_response())
}

/// The status page (`/`): one static file, no build step (see `status.html`).
pub const STATUS_PAGE: &str = include_str!("status.html");

/// `GET /`.
pub async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        STATUS_PAGE,
    )
        .into_response()
}

/// `GET /v1/events`: what happened to this node lately (leader changes, state transfers,
/// membership changes), oldest first.
pub async fn events(State(s): State<AppState>) -> Response {
    Json(json!({ "id": s.info.config.id, "events": s.info.metrics.events() })).into_response()
}

/// `GET /v1/history`: this node's request counters (every protocol, data operations
/// only), sampled every few seconds over the last minutes, oldest first.
pub async fn history(State(s): State<AppState>) -> Response {
    Json(json!({
        "id": s.info.config.id,
        "interval_ms": crate::metrics::SAMPLE_EVERY.as_millis() as u64,
        "samples": s.info.metrics.samples(),
    }))
    .into_response()
}

/// `GET /healthz`.
pub async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

/// `GET /readyz`.
pub async fn readyz(State(s): State<AppState>) -> Result<Response, ApiError> {
    match tokio::time::timeout(READY_TIMEOUT, s.node.read_barrier()).await {
        Ok(Ok(())) => {
            let applied = s
                .info
                .metrics
                .applied_index
                .load(std::sync::atomic::Ordering::Relaxed);
            Ok(Json(json!({ "ready": true, "applied_index": applied })).into_response())
        }
        Ok(Err(e)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!("a linearizable read cannot be served: {e}"),
        )),
        Err(_) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!("a linearizable read barrier did not complete within {READY_TIMEOUT:?}"),
        )),
    }
}

/// Total size of the files in `dir` (RocksDB keeps its files flat in one directory);
/// a few dozen `stat`s, cheap enough per scrape.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// `GET /metrics`, in the Prometheus text format.
pub async fn metrics(State(s): State<AppState>) -> Response {
    let dir = s.info.config.data_dir.join("db");
    let db = s.info.db.clone();
    let (bytes, log_bytes) =
        tokio::task::spawn_blocking(move || (dir_bytes(&dir), cf_disk_bytes(&db, CF_LOG)))
            .await
            .unwrap_or((0, 0));
    let body = s.info.metrics.render(&[
        (
            "paxosdb_rocksdb_bytes",
            "Bytes of this node's RocksDB files (log, metadata and data).",
            bytes,
        ),
        (
            "paxosdb_log_disk_bytes",
            "Bytes of the replicated log column family: SST files plus memtables.",
            log_bytes,
        ),
        (
            "paxosdb_inflight_bytes",
            "Bytes of client requests admitted and not answered yet (max_inflight_bytes).",
            s.node.admission().in_flight(),
        ),
        (
            "paxosdb_overload_refusals_total",
            "Client requests refused as overloaded since start (in-flight bytes or disk).",
            s.node
                .admission()
                .refused
                .load(std::sync::atomic::Ordering::Relaxed),
        ),
        (
            "paxosdb_disk_low",
            "1 while the data directory's file system is below min_free_disk_bytes free.",
            u64::from(s.node.admission().disk_low()),
        ),
        (
            "paxosdb_watchers",
            "Watchers this node serves now: watch streams, server-sent events, blocking \
             queries (max_watchers).",
            s.kv.watchers().live() as u64,
        ),
    ]) + &crate::metrics::render_process();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// `GET /openapi.json`.
pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}
