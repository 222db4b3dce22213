//! The key-value endpoints: `GET/PUT/DELETE /v1/kv/{key}` and `GET /v1/kv` (scan).
//!
//! Writes run in a session: the client's `X-Paxosdb-Client-Id` / `X-Paxosdb-Seq` headers
//! when it sends them (then a retry with the same pair is applied at most once and gets
//! the original answer), otherwise a fresh random session (client id below 2^53, seq 1).
//! Every write response, error or not, echoes the session in those two headers, so that a
//! client that got `outcome_unknown` can retry with it and learn what happened.

use super::decode::{self, Precondition};
use super::error::ApiError;
use super::{watch, AppState};
use crate::command::{
    Compare, CompareOp, Deadline, Expect, Expiry, SetCond, Txn, TxnOp, TxnOpResult, WriteOp,
    WriteResult,
};
use crate::kv::handle::Writer;
use crate::kv::WatchFilter;
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

/// `GET /v1/kv/{key}`: the value, its version and the applied index it reflects; for a
/// key that expires, its deadline (`expires_at_ms`, the log's time) and the time it had
/// left (`ttl_ms`: the deadline minus the log's time the answer reflects). With
/// `?index=N` a blocking query: answers once the key changed after revision `N`, or once
/// `wait` passed (see [`super::watch`]). Found or not, the answer carries the index to
/// block from next (`X-Paxosdb-Index`, `X-Consul-Index`).
pub async fn get_key(
    State(s): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = super::auth::identity(&s, &headers).await?;
    let key = decode::key_from_path(uri.path(), &s.node.limits())?;
    id.check_read(&key)?;
    let params = decode::get_query(uri.query())?;
    if let Some(b) = params.block {
        watch::block(&s, Some(WatchFilter::Key(key.clone())), b).await?;
    }
    let before = watch::revision_now(&s)?;
    // The log's time is read only for a key that has a deadline.
    let (found, applied, now) = s.kv.get_timed(&key, params.consistency).await?;
    let index = watch::index_of_read(&s, before, applied)?;
    let mut resp = match found {
        None => ApiError::not_found("no such key")
            .with("applied_index", applied)
            .into_response(),
        Some(timed) => {
            let v = timed.value;
            let mut obj = decode::entry_json(Some(&key), &v.value, v.version);
            obj.insert("applied_index".into(), applied.into());
            obj.insert("create_revision".into(), timed.created.into());
            if let Some(deadline) = timed.deadline {
                obj.insert("expires_at_ms".into(), deadline.into());
                // A key read is live: its deadline is after the time read.
                let left = deadline.saturating_sub(now).max(1);
                obj.insert("ttl_ms".into(), left.into());
            }
            let mut resp = json_ok(obj);
            if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", v.version)) {
                resp.headers_mut().insert(header::ETAG, etag);
            }
            set_header(&mut resp, APPLIED_HEADER, applied);
            resp
        }
    };
    watch::set_index(&mut resp, index);
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

/// The answer to a write made by `by`; the response, whatever it is, carries the
/// writer's session headers.
pub(crate) async fn in_session(
    by: &Writer,
    answer: impl std::future::Future<Output = Result<Response, ApiError>>,
) -> Response {
    let mut resp = answer.await.unwrap_or_else(IntoResponse::into_response);
    set_header(&mut resp, CLIENT_ID_HEADER, by.client_id);
    set_header(&mut resp, SEQ_HEADER, by.seq);
    resp
}

/// The answer to a write that stored version `version`.
fn written(version: u64) -> Response {
    Json(json!({ "version": version })).into_response()
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

/// Writes `write` (a put of `key`) if `compare` holds: one transaction, whose failure
/// branch reads the key for the 409. A write the store refuses (an unknown lease) is a 400.
async fn conditional_write(
    s: &AppState,
    by: &Writer,
    key: Vec<u8>,
    compare: Compare,
    write: WriteOp,
) -> Result<Response, ApiError> {
    let txn = Txn {
        compare: vec![compare],
        success: vec![TxnOp::Write(write)],
        failure: vec![TxnOp::Get { key }],
    };
    let done = s.kv.txn(by, txn).await?;
    match (done.succeeded, done.results.as_slice()) {
        (true, [TxnOpResult::Write(WriteResult::Set { version, .. })])
        | (true, [TxnOpResult::Write(WriteResult::Put { version, .. })]) => Ok(written(*version)),
        (false, [TxnOpResult::Get(cur)]) => {
            let version = cur.as_ref().map_or(0, |c| c.version);
            Err(compare_failed(version, cur.clone()))
        }
        (_, [TxnOpResult::Write(WriteResult::Rejected(why))]) => Err(ApiError::bad(why.clone())),
        _ => Err(crate::error::Error::Internal(format!(
            "a conditional put with a ttl or a lease was answered with {done:?}"
        ))
        .into()),
    }
}

/// The comparison a precondition other than [`Precondition::Never`] stands for.
fn compare_of(key: &[u8], cond: Precondition) -> Compare {
    match cond {
        Precondition::Version(v) => Compare::version(key, CompareOp::Equal, v),
        Precondition::Exists => Compare::version(key, CompareOp::Greater, 0),
        Precondition::Never => unreachable!("answered without a write"),
    }
}

/// `PUT /v1/kv/{key}?lease=ID`: stores `value` attached to lease `lease`, under `cond` (a
/// transaction, as a conditional put with a ttl).
async fn put_leased(
    s: &AppState,
    by: &Writer,
    key: Vec<u8>,
    value: Vec<u8>,
    lease: u64,
    cond: Option<Precondition>,
) -> Result<Response, ApiError> {
    match cond {
        None => Ok(written(
            s.kv.put_leased(by, key, value, lease, false).await?.version,
        )),
        Some(cond) => {
            let compare = compare_of(&key, cond);
            let write = WriteOp::PutLeased {
                key: key.clone(),
                value,
                lease,
                return_prev: false,
            };
            conditional_write(s, by, key, compare, write).await
        }
    }
}

/// `PUT /v1/kv/{key}`: stores the body, unconditionally or under a precondition; with
/// `?ttl=`, the key expires that long after the write is applied (the log's time); with
/// `?lease=ID`, the key is attached to that lease and deleted when it ends (an unknown
/// lease is a 400 and nothing is written).
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
    let params = decode::put_query(uri.query())?;
    let expiry = params.ttl_ms.map(|ms| Expiry::Set(Deadline::In(ms)));
    let cond = decode::precondition(
        params.cas,
        header_bytes(&headers, "if-match"),
        header_bytes(&headers, "if-none-match"),
    )?;
    let sess = session(&headers)?;
    let value = read_body(&headers, body, limits.max_value, "the value").await?;
    let by = Writer::new(id.user.clone(), sess.0, sess.1);
    if let Some(Precondition::Never) = cond {
        // Nothing to write: answer with the key as it is, like any failed compare.
        let (cur, _) = s.kv.get(&key, Consistency::Linearizable).await?;
        let version = cur.as_ref().map_or(0, |c| c.version);
        return Ok(in_session(&by, async { Err(compare_failed(version, cur)) }).await);
    }
    let answer = async {
        if let Some(lease) = params.lease {
            return put_leased(&s, &by, key, value, lease, cond).await;
        }
        if let Some(expiry) = expiry {
            let cond = match cond {
                None => SetCond::Always,
                Some(Precondition::Version(0)) => SetCond::IfAbsent,
                Some(Precondition::Exists) => SetCond::IfPresent,
                Some(c @ Precondition::Version(_)) => {
                    let compare = compare_of(&key, c);
                    let write = WriteOp::SetExpiring {
                        key: key.clone(),
                        value,
                        cond: SetCond::Always,
                        expiry,
                    };
                    return conditional_write(&s, &by, key, compare, write).await;
                }
                Some(Precondition::Never) => unreachable!("answered without a write"),
            };
            let r = s.kv.set_expiring(&by, key, value, cond, expiry).await?;
            return match r.applied {
                true => Ok(written(r.version)),
                false => Err(compare_failed(r.version, r.prev)),
            };
        }
        match cond {
            None => Ok(written(s.kv.put(&by, key, value, false).await?.version)),
            Some(Precondition::Version(v)) => {
                let r = s.kv.cas(&by, key, Expect::Version(v), value).await?;
                match r.succeeded {
                    true => Ok(written(r.version)),
                    false => Err(compare_failed(r.version, r.current)),
                }
            }
            Some(Precondition::Exists) => {
                let r = s.kv.set(&by, key, value, SetCond::IfPresent).await?;
                match r.applied {
                    true => Ok(written(r.version)),
                    false => Err(compare_failed(r.version, r.prev)),
                }
            }
            Some(Precondition::Never) => unreachable!("answered without a write"),
        }
    };
    Ok(in_session(&by, answer).await)
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
    let by = Writer::new(id.user.clone(), sess.0, sess.1);
    let answer = async {
        let done = s.kv.delete(&by, key, false).await?;
        Ok(Json(json!({ "deleted": done.deleted })).into_response())
    };
    Ok(in_session(&by, answer).await)
}

/// `GET /v1/kv?prefix=…` or `?from=…&to=…`: rows in key order, `more` when the limit cut
/// the answer short (continue with `from` = last key + a zero byte, `%00`).
/// A user with a key prefix sees only the keys inside it (the range is narrowed). With
/// `?index=N` a blocking query (see [`super::watch`]); the answer carries the index to
/// block from next.
pub async fn scan(
    State(s): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = super::auth::identity(&s, &headers).await?;
    let p = decode::scan_params(uri.query(), &s.node.limits())?;
    let seen = id.narrow(&p.range);
    if let Some(b) = p.block {
        watch::block(&s, seen.clone().map(WatchFilter::Range), b).await?;
    }
    let before = watch::revision_now(&s)?;
    let (rows, more, applied) = match seen {
        Some(range) => {
            let page = s.kv.scan(&range, p.limit, p.consistency).await?;
            (page.items, page.more, page.applied_index)
        }
        None => (vec![], false, s.node.status().await?.applied_index),
    };
    let items: Vec<Value> = rows
        .iter()
        .map(|kv| Value::Object(decode::entry_json(Some(&kv.key), &kv.value, kv.version)))
        .collect();
    let index = watch::index_of_read(&s, before, applied)?;
    let mut resp =
        Json(json!({ "items": items, "more": more, "applied_index": applied })).into_response();
    set_header(&mut resp, APPLIED_HEADER, applied);
    watch::set_index(&mut resp, index);
    Ok(resp)
}
