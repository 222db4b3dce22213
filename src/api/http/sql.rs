//! The rqlite-compatible SQL endpoints, so that rqlite's clients (pyrqlite, the SQLAlchemy
//! dialect sqlalchemy-rqlite, curl scripts) work against paxosdb unchanged:
//!
//! - `POST /db/execute`: statements through the log ([`SqlService::execute`]); reads in
//!   it run in log order too;
//! - `GET /db/query?q=SQL` and `POST /db/query`: read-only statements at the requested
//!   level ([`SqlService::query`]); a statement that would write gets an error;
//! - `POST /db/request` (rqlite's "unified endpoint"): when every statement is certainly
//!   a read ([`rqlite::is_read_only`]) the request runs as a query, at its `level`;
//!   otherwise — a mixed request included — the **whole** request runs through the log as
//!   one execute, in order, so its reads see its writes and `?transaction` covers all of
//!   it (`level` is then moot: reads in the log are linearizable).
//!
//! The JSON shapes, query parameters and their mapping are in [`rqlite`]. Authorization:
//! a read-only request needs any role, one that may write the `readwrite` role, and a user
//! with a key prefix is refused SQL altogether (403: its scope is keys). Writes run in a
//! session, as key-value writes do: the client's `X-Paxosdb-Client-Id`/`X-Paxosdb-Seq`
//! headers or a fresh random session, echoed in the response so that a client that got
//! `outcome_unknown` can retry and learn the outcome. A read answers the applied index it
//! reflects in `X-Paxosdb-Applied-Index`.
//!
//! # Invariants
//!
//! - Nothing runs unless the whole request decoded and was authorized.
//! - The body read is bounded by the value size limit (413 beyond it), the reply by
//!   `--max-reply-bytes`.
//! - A write's response, whatever its status, carries the session it ran in.

use super::error::ApiError;
use super::kv::{self, APPLIED_HEADER, CLIENT_ID_HEADER, SEQ_HEADER};
use super::rqlite::{self, Endpoint, Render};
use super::AppState;
use crate::sql::{Request, SqlSession, Statement};
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use std::time::Instant;

/// `POST /db/execute`.
pub async fn execute(State(s): State<AppState>, uri: Uri, h: HeaderMap, body: Body) -> Response {
    handle(&s, Endpoint::Execute, &uri, &h, Some(body)).await
}

/// `GET /db/query?q=...`.
pub async fn query_get(State(s): State<AppState>, uri: Uri, h: HeaderMap) -> Response {
    handle(&s, Endpoint::Query, &uri, &h, None).await
}

/// `POST /db/query`.
pub async fn query_post(State(s): State<AppState>, uri: Uri, h: HeaderMap, body: Body) -> Response {
    handle(&s, Endpoint::Query, &uri, &h, Some(body)).await
}

/// `POST /db/request`.
pub async fn request(State(s): State<AppState>, uri: Uri, h: HeaderMap, body: Body) -> Response {
    handle(&s, Endpoint::Request, &uri, &h, Some(body)).await
}

/// An error in rqlite's shape (`{"error": "...", "code": "..."}`) with the status and
/// headers (`Retry-After`, `WWW-Authenticate`) of the common mapping.
pub fn error_response(e: ApiError) -> Response {
    let body = rqlite::error_body(&e);
    let mut resp = e.into_response();
    *resp.body_mut() = Body::from(body);
    resp
}

/// Runs one request; `body` is `None` for `GET /db/query`.
async fn handle(
    s: &AppState,
    ep: Endpoint,
    uri: &Uri,
    h: &HeaderMap,
    body: Option<Body>,
) -> Response {
    let mut session = None;
    let mut resp = match run(s, ep, uri, h, body, &mut session).await {
        Ok(r) => r,
        Err(e) => error_response(e),
    };
    if let Some((client_id, seq)) = session {
        kv::set_header(&mut resp, CLIENT_ID_HEADER, client_id);
        kv::set_header(&mut resp, SEQ_HEADER, seq);
    }
    resp
}

async fn run(
    s: &AppState,
    ep: Endpoint,
    uri: &Uri,
    h: &HeaderMap,
    body: Option<Body>,
    session: &mut Option<(u64, u64)>,
) -> Result<Response, ApiError> {
    let start = Instant::now();
    let id = super::auth::identity(s, h).await?;
    id.check_sql_read()?;
    let Some(service) = s.info.sql.clone() else {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "not_implemented",
            "this node does not serve SQL",
        ));
    };
    let mut opts = rqlite::options(uri.query(), ep, body.is_none())?;
    let statements = match body {
        None => vec![Statement::new(opts.q.take().unwrap_or_default())],
        Some(body) => {
            let text_plain = h
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim_start().starts_with("text/plain"));
            let limit = s.node.limits().max_value;
            let bytes = kv::read_body(h, body, limit, "the request body").await?;
            rqlite::statements(&bytes, text_plain)?
        }
    };
    let writes = match ep {
        Endpoint::Execute => true,
        Endpoint::Query => false,
        Endpoint::Request => !statements.iter().all(|st| rqlite::is_read_only(&st.sql)),
    };
    let req = Request {
        statements,
        transaction: opts.transaction,
    };
    let how = Render {
        associative: opts.associative,
        blob_array: opts.blob_array,
        unified: ep == Endpoint::Request,
    };
    let (results, applied) = if writes {
        id.check_sql_write()?;
        let (client_id, seq) = kv::session(h)?;
        *session = Some((client_id, seq));
        let r = service
            .execute(req, Some(SqlSession { client_id, seq }), id.user.clone())
            .await?;
        (r, None)
    } else {
        let out = service.query(req, opts.level).await?;
        (out.results, Some(out.applied_index))
    };
    let time = opts.timings.then(|| start.elapsed().as_secs_f64());
    let bytes = rqlite::encode(&results, how, time, opts.pretty);
    let max = s.info.config.max_reply_bytes;
    if bytes.len() > max {
        let done = if writes {
            "the statements WERE applied; "
        } else {
            ""
        };
        return Err(ApiError::too_large(format!(
            "{done}the reply would be {} bytes; the limit is {max} bytes (see \
             --max-reply-bytes): select fewer rows (LIMIT)",
            bytes.len()
        )));
    }
    let mut resp = (StatusCode::OK, bytes).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    if let Some(a) = applied {
        kv::set_header(&mut resp, APPLIED_HEADER, a);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    async fn parts(e: Error) -> (StatusCode, Option<String>, serde_json::Value) {
        let resp = error_response(ApiError::from_node(e));
        let status = resp.status();
        let retry = resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, retry, serde_json::from_slice(&body).unwrap())
    }

    /// Service errors keep the common mapping's status and headers, in rqlite's shape.
    #[tokio::test]
    async fn service_errors_map_to_rqlite_shaped_answers() {
        for (e, status, code, retry) in [
            (
                Error::Unavailable("no leader".into()),
                503,
                "unavailable",
                true,
            ),
            (Error::Overloaded("busy".into()), 429, "overloaded", true),
            (
                Error::OutcomeUnknown("timed out".into()),
                503,
                "outcome_unknown",
                true,
            ),
            (
                Error::InvalidInput("bad".into()),
                400,
                "invalid_input",
                false,
            ),
            (
                Error::PermissionDenied("no".into()),
                403,
                "permission_denied",
                false,
            ),
            (Error::Storage("disk".into()), 500, "internal", false),
        ] {
            let (s, r, body) = parts(e).await;
            assert_eq!(s, status, "{body}");
            assert_eq!(body["code"], code, "{body}");
            assert!(body["error"].is_string(), "{body}");
            assert_eq!(r.is_some(), retry, "{code}: Retry-After");
        }
    }
}
