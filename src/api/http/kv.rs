//! The key-value endpoints: `GET/PUT/DELETE /v1/kv/{key}` and `GET /v1/kv` (scan).
//!
//! Writes run in a session: the client's `X-Paxosdb-Client-Id` / `X-Paxosdb-Seq` headers
//! when it sends them (then a retry with the same pair is applied at most once and gets
//! the original answer), otherwise a fresh random session (client id below 2^53, seq 1).
//! Every write response, error or not, echoes the session in those two headers, so that a
//! client that got `outcome_unknown` can retry with it and learn what happened.

use super::decode::{self, Precondition};
use super::error::ApiError;
use super::AppState;
use crate::auth::Identity;
use crate::command::{Expect, SetCond, WriteOp, WriteResult};
use crate::node::Consistency;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde_json::{json, Map, Value};

pub const CLIENT_ID_HEADER: &str = "x-paxosdb-client-id";
pub const SEQ_HEADER: &str = "x-paxosdb-seq";
pub const APPLIED_HEADER: &str = "x-paxosdb-applied-index";

fn json_ok(obj: Map<String, Value>) -> Response {
    (StatusCode::OK, Json(Value::Object(obj))).into_response()
}

pub(crate) fn set_header(resp: &mut Response, name: &'static str, v: u64) {
    resp.headers_mut().insert(name, HeaderValue::from(v));
}

/// `GET /v1/kv/{key}`: the value, its version and the applied index it reflects.
pub async fn get_key(
    State(s): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = super::auth::identity(&s, &headers).await?;
    let key = decode::key_from_path(uri.path(), &s.node.limits())?;
    id.check_read(&key)?;
    let consistency = decode::get_params(uri.query())?;
    let (found, applied) = s.node.get(&key, consistency).await?;
    let Some(v) = found else {
        return Err(ApiError::not_found("no such key").with("applied_index", applied));
    };
    let mut obj = decode::entry_json(Some(&key), &v.value, v.version);
    obj.insert("applied_index".into(), applied.into());
    let mut resp = json_ok(obj);
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", v.version)) {
        resp.headers_mut().insert(header::ETAG, etag);
    }
    set_header(&mut resp, APPLIED_HEADER, applied);
    Ok(resp)
}

fn header_bytes<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    h.get(name).map(HeaderValue::as_bytes)
}

/// The client's session, or a fresh random one.
pub(crate) fn session(h: &HeaderMap) -> Result<(u64, u64), ApiError> {
    let given = decode::session(
        header_bytes(h, CLIENT_ID_HEADER),
        header_bytes(h, SEQ_HEADER),
    )?;
    Ok(given.unwrap_or_else(|| ((rand::random::<u64>() >> 11).max(1), 1)))
}

/// Reads at most `max` body bytes; a declared or actual larger body is a 413, answered
/// without reading the rest. `what` names the body in the error ("the value").
pub(crate) async fn read_body(
    h: &HeaderMap,
    body: Body,
    max: usize,
    what: &str,
) -> Result<Vec<u8>, ApiError> {
    let too_large = |n: &dyn std::fmt::Display| {
        ApiError::too_large(format!(
            "{what} is {n} bytes; the limit is {max} bytes (see --max-value-size)"
        ))
    };
    if let Some(len) = h.get(header::CONTENT_LENGTH) {
        let len = decode::parse_u64("Content-Length", len.as_bytes())?;
        if len > max as u64 {
            return Err(too_large(&len));
        }
    }
    let mut out = Vec::new();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad(format!("reading the body: {e}")))?;
        if out.len() + chunk.len() > max {
            return Err(too_large(&format!("more than {max}")));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Runs a write in session `(client_id, seq)`; the response, whatever it is, carries the
/// session headers.
async fn write_in_session(
    s: &AppState,
    id: &Identity,
    (client_id, seq): (u64, u64),
    op: WriteOp,
    answer: impl FnOnce(WriteResult) -> Result<Response, ApiError>,
) -> Response {
    let result = match s.node.write_as(id.user.clone(), client_id, seq, op).await {
        Ok(r) => answer(r),
        Err(e) => Err(ApiError::from_node(e)),
    };
    let mut resp = result.unwrap_or_else(IntoResponse::into_response);
    set_header(&mut resp, CLIENT_ID_HEADER, client_id);
    set_header(&mut resp, SEQ_HEADER, seq);
    resp
}

/// The session's remembered answer is for another kind of write: the client reused a
/// sequence number (a session's seq names one write; a retry must repeat that write).
fn unexpected(_: WriteResult) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "session_reused",
        "this X-Paxosdb-Client-Id/X-Paxosdb-Seq pair was already used for a different \
         operation, whose answer it keeps; use the next seq for a new write",
    )
}

fn compare_failed(version: u64, current: Option<crate::command::Versioned>) -> ApiError {
    let current = match current {
        Some(v) => Value::Object(decode::entry_json(None, &v.value, v.version)),
        None => Value::Null,
    };
    ApiError::new(
        StatusCode::CONFLICT,
        "compare_failed",
        "the condition did not hold; nothing changed",
    )
    .with("version", version)
    .with("current", current)
}

/// `PUT /v1/kv/{key}`: stores the body, unconditionally or under a precondition.
pub async fn put_key(
    State(s): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let id = super::auth::identity(&s, &headers).await?;
    let limits = s.node.limits();
    let key = decode::key_from_path(uri.path(), &limits)?;
    id.check_write([key.as_slice()])?;
    let cond = decode::precondition(
        decode::put_params(uri.query())?,
        header_bytes(&headers, "if-match"),
        header_bytes(&headers, "if-none-match"),
    )?;
    let sess = session(&headers)?;
    let value = read_body(&headers, body, limits.max_value, "the value").await?;
    let op = match cond {
        Some(Precondition::Never) => {
            // Nothing to write: answer with the key as it is, like any failed compare.
            let (cur, _) = s.node.get(&key, Consistency::Linearizable).await?;
            let version = cur.as_ref().map_or(0, |c| c.version);
            let mut resp = compare_failed(version, cur).into_response();
            set_header(&mut resp, CLIENT_ID_HEADER, sess.0);
            set_header(&mut resp, SEQ_HEADER, sess.1);
            return Ok(resp);
        }
        None => WriteOp::Put {
            key,
            value,
            return_prev: false,
        },
        Some(Precondition::Version(v)) => WriteOp::Cas {
            key,
            expect: Expect::Version(v),
            new_value: value,
        },
        Some(Precondition::Exists) => WriteOp::Set {
            key,
            value,
            cond: SetCond::IfPresent,
        },
    };
    Ok(write_in_session(&s, &id, sess, op, |r| match r {
        WriteResult::Put { version, .. }
        | WriteResult::Cas {
            succeeded: true,
            version,
            ..
        }
        | WriteResult::Set {
            applied: true,
            version,
            ..
        } => Ok(Json(json!({ "version": version })).into_response()),
        WriteResult::Cas {
            version, current, ..
        } => Err(compare_failed(version, current)),
        WriteResult::Set { version, prev, .. } => Err(compare_failed(version, prev)),
        other => Err(unexpected(other)),
    })
    .await)
}

/// `DELETE /v1/kv/{key}`: always 200, with `deleted` false when there was nothing to
/// delete (so a retried delete is not an error).
pub async fn delete_key(
    State(s): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = super::auth::identity(&s, &headers).await?;
    let key = decode::key_from_path(uri.path(), &s.node.limits())?;
    id.check_write([key.as_slice()])?;
    decode::delete_params(uri.query())?;
    if headers.contains_key("if-match") || headers.contains_key("if-none-match") {
        // Ignoring the condition would delete unconditionally what the client meant to
        // delete only if unchanged.
        return Err(ApiError::bad("conditional deletes are not supported yet"));
    }
    let sess = session(&headers)?;
    let op = WriteOp::Delete {
        key,
        return_prev: false,
    };
    Ok(write_in_session(&s, &id, sess, op, |r| match r {
        WriteResult::Delete { deleted, .. } => {
            Ok(Json(json!({ "deleted": deleted })).into_response())
        }
        other => Err(unexpected(other)),
    })
    .await)
}

/// `GET /v1/kv?prefix=…` or `?from=…&to=…`: rows in key order, `more` when the limit cut
/// the answer short (continue with `from` = last key + a zero byte, `%00`).
/// A user with a key prefix sees only the keys inside it (the range is narrowed).
pub async fn scan(
    State(s): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = super::auth::identity(&s, &headers).await?;
    let p = decode::scan_params(uri.query(), &s.node.limits())?;
    let (rows, more, applied) = match id.narrow(&p.range) {
        Some(range) => s.node.scan(&range, p.limit, p.consistency).await?,
        None => (vec![], false, s.node.status().await?.applied_index),
    };
    let items: Vec<Value> = rows
        .iter()
        .map(|kv| Value::Object(decode::entry_json(Some(&kv.key), &kv.value, kv.version)))
        .collect();
    let mut resp =
        Json(json!({ "items": items, "more": more, "applied_index": applied })).into_response();
    set_header(&mut resp, APPLIED_HEADER, applied);
    Ok(resp)
}
