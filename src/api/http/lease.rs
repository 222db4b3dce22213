//! Leases over HTTP (etcd's model, [`crate::kv::lease`]): `POST /v1/lease` grants one,
//! `POST /v1/lease/{id}/keep-alive` renews it for its whole time to live,
//! `DELETE /v1/lease/{id}` revokes it (deleting its keys), `GET /v1/lease/{id}` reads it
//! (with `?keys=true`, the keys attached to it) and `GET /v1/lease` lists the live ones.
//! `PUT /v1/kv/{key}?lease=ID` ([`super::kv`]) attaches a key to a lease.
//!
//! A grant's body is `{"ttl": "30s"}` (a duration as `PUT /v1/kv/{key}?ttl=` takes it) or
//! `{"ttl_ms": 30000}`, and optionally `"id"` (0 or absent: the cluster picks the next free
//! id). Every lease answer has `id`, `ttl_ms` (the time to live it was granted, renewed by
//! each keep-alive) and `deadline_ms` (when it ends unless kept alive, in the log's time:
//! ms since the Unix epoch by the leader's clock; a leader change may move it later, never
//! earlier). `GET /v1/lease/{id}` adds `remaining_ms` and, asked for, `keys` (in the
//! key-value endpoints' form, `key` or `key_base64`, at most
//! [`decode::MAX_LEASE_KEYS`]) and `more_keys`. A lease that was never granted, expired
//! or was revoked is a 404 `not_found` for a keep-alive and a read; a revoke answers 200
//! `{"revoked": false}` then, as `DELETE /v1/kv/{key}` answers `{"deleted": false}`, so a
//! retried revoke is not an error.
//!
//! This is not Consul's session API (`/v1/session/*`, `?acquire=`): a Consul client's
//! lock does not work here; clients use these endpoints as they would etcd's leases.
//!
//! # Invariants
//!
//! - The grant, keep-alive and revoke are writes of [`super::kv`]'s kind: each runs in the
//!   session of the `X-Paxosdb-Client-Id` / `X-Paxosdb-Seq` headers (or a fresh random
//!   one), echoed in every answer, 404 included, so a retry is applied at most once.
//! - Nothing is proposed before the request decoded and passed [`Identity::check_op`] with
//!   the very operation proposed (the readwrite role; a revoke by a user held to a key
//!   prefix is refused, since the keys attached may lie outside it): bad input and
//!   refused requests change nothing.
//! - Decoding ([`decode_grant`], and the query and path decoders in [`decode`]) is a pure
//!   function of the request and refuses what it does not understand (an unknown field or
//!   parameter, a time to live out of 1 s ..= a year, both `ttl` and `ttl_ms`, id 0 in a
//!   path) with a 400; the body's field at fault is named in `field`.
//! - A reader with a key prefix is shown only the attached keys inside its prefix.
//!
//! [`Identity::check_op`]: crate::auth::Identity::check_op

use super::decode;
use super::error::ApiError;
use super::kv::{in_session, read_body, session};
use super::AppState;
use crate::command::{LeaseInfo, WriteOp};
use crate::kv::handle::Writer;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

/// The largest grant body read (a few small fields).
pub const MAX_BODY: usize = 4096;

/// The path suffix of a keep-alive.
const KEEP_ALIVE: &str = "/keep-alive";

/// A decoded `POST /v1/lease` body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The id asked for; 0: the cluster picks one.
    pub id: u64,
    /// 1 s to a year.
    pub ttl_ms: u64,
}

/// The grant a `POST /v1/lease` body asks for (see the module docs).
pub fn decode_grant(body: &[u8]) -> Result<Grant, ApiError> {
    let shape = "the body must be a JSON object such as {\"ttl\": \"30s\"} or \
                 {\"ttl_ms\": 30000, \"id\": 7}";
    let v: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("{shape} ({e})")))?;
    let Value::Object(obj) = v else {
        return Err(ApiError::bad(shape));
    };
    const ALLOWED: [&str; 3] = ["id", "ttl", "ttl_ms"];
    if let Some(k) = obj.keys().find(|k| !ALLOWED.contains(&k.as_str())) {
        return Err(ApiError::bad(format!(
            "unknown field; allowed here: {}",
            ALLOWED.join(", ")
        ))
        .at(k));
    }
    let unsigned = |name: &str| {
        (obj.get(name))
            .map(|v| {
                v.as_u64()
                    .ok_or_else(|| ApiError::bad("must be an unsigned integer").at(name))
            })
            .transpose()
    };
    let id = unsigned("id")?.unwrap_or(0);
    let ttl_ms = match (obj.get("ttl"), unsigned("ttl_ms")?) {
        (Some(Value::String(t)), None) => {
            decode::parse_lease_ttl(t.as_bytes()).map_err(|e| e.at("ttl"))?
        }
        (Some(_), None) => {
            return Err(ApiError::bad("must be a string such as \"30s\"").at("ttl"));
        }
        (None, Some(ms)) => decode::check_lease_ttl(ms).map_err(|e| e.at("ttl_ms"))?,
        (Some(_), Some(_)) => {
            return Err(ApiError::bad("give ttl or ttl_ms, not both").at("ttl"));
        }
        (None, None) => {
            return Err(ApiError::bad(
                "missing; give ttl (such as \"30s\") or ttl_ms (such as 30000)",
            )
            .at("ttl"));
        }
    };
    Ok(Grant { id, ttl_ms })
}

/// A lease as every answer shows it: `id`, `ttl_ms`, `deadline_ms`.
pub fn info_json(info: &LeaseInfo) -> Map<String, Value> {
    let mut o = Map::new();
    o.insert("id".into(), info.id.into());
    o.insert("ttl_ms".into(), info.ttl_ms.into());
    o.insert("deadline_ms".into(), info.deadline.into());
    o
}

fn gone(id: u64) -> ApiError {
    ApiError::not_found(format!(
        "lease {id} not found: never granted, expired or revoked"
    ))
}

/// `POST /v1/lease`: grants a lease.
pub async fn grant(
    State(s): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let who = super::auth::identity(&s, &headers).await?;
    decode::no_params(uri.query())?;
    let sess = session(&headers)?;
    let body = read_body(&headers, body, MAX_BODY, "the lease request body").await?;
    let g = decode_grant(&body)?;
    who.check_op(&WriteOp::LeaseGrant {
        id: g.id,
        ttl_ms: g.ttl_ms,
    })?;
    let by = Writer::new(who.user.clone(), sess.0, sess.1);
    let answer = async {
        let info = s.kv.lease_grant(&by, g.id, g.ttl_ms).await?;
        Ok(Json(Value::Object(info_json(&info))).into_response())
    };
    Ok(in_session(&by, answer).await)
}

/// `POST /v1/lease/{id}/keep-alive`: renews the lease for its whole time to live; 404
/// when it is gone.
pub async fn keep_alive(
    State(s): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = super::auth::identity(&s, &headers).await?;
    let id = decode::lease_from_path(uri.path(), KEEP_ALIVE)?;
    decode::no_params(uri.query())?;
    who.check_op(&WriteOp::LeaseKeepAlive { id })?;
    let sess = session(&headers)?;
    let by = Writer::new(who.user.clone(), sess.0, sess.1);
    let answer = async {
        match s.kv.lease_keep_alive(&by, id).await? {
            Some(info) => Ok(Json(Value::Object(info_json(&info))).into_response()),
            None => Err(gone(id)),
        }
    };
    Ok(in_session(&by, answer).await)
}

/// `DELETE /v1/lease/{id}`: ends the lease now, deleting its keys; always 200, with
/// `revoked` false when it was not live (so a retried revoke is not an error).
pub async fn revoke(
    State(s): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = super::auth::identity(&s, &headers).await?;
    let id = decode::lease_from_path(uri.path(), "")?;
    decode::no_params(uri.query())?;
    who.check_op(&WriteOp::LeaseRevoke { id })?;
    let sess = session(&headers)?;
    let by = Writer::new(who.user.clone(), sess.0, sess.1);
    let answer = async {
        let revoked = s.kv.lease_revoke(&by, id).await?;
        Ok(Json(json!({ "revoked": revoked })).into_response())
    };
    Ok(in_session(&by, answer).await)
}

/// `GET /v1/lease/{id}`: the live lease, the time it has left and (`?keys=true`) its
/// keys; 404 when it is gone.
pub async fn get_lease(
    State(s): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = super::auth::identity(&s, &headers).await?;
    let id = decode::lease_from_path(uri.path(), "")?;
    let p = decode::lease_get_params(uri.query())?;
    let max_keys = if p.keys { decode::MAX_LEASE_KEYS } else { 0 };
    let Some((status, remaining)) = s.kv.lease_time_to_live(id, max_keys, p.consistency).await?
    else {
        return Err(gone(id));
    };
    let mut obj = info_json(&status.info);
    obj.insert("remaining_ms".into(), remaining.into());
    if p.keys {
        let keys: Vec<Value> = (status.keys.iter())
            .filter(|k| who.check_read(k).is_ok())
            .map(|k| {
                let mut o = Map::new();
                decode::put_bytes(&mut o, "key", k);
                Value::Object(o)
            })
            .collect();
        obj.insert("keys".into(), keys.into());
        obj.insert("more_keys".into(), status.more_keys.into());
    }
    Ok(Json(Value::Object(obj)).into_response())
}

/// `GET /v1/lease`: the live leases in id order from `from`, at most `limit`; `more`
/// when the limit cut the answer short (continue with `from` = the last id + 1).
pub async fn list(
    State(s): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    super::auth::identity(&s, &headers).await?;
    let p = decode::lease_list_params(uri.query())?;
    let (leases, more) = s.kv.leases(p.from, p.limit, p.consistency).await?;
    let leases: Vec<Value> = leases.iter().map(|l| Value::Object(info_json(l))).collect();
    Ok(Json(json!({ "leases": leases, "more": more })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_body_names_a_time_to_live_and_maybe_an_id() {
        let g = |b: &str| decode_grant(b.as_bytes());
        assert_eq!(
            g(r#"{"ttl": "30s"}"#).unwrap(),
            Grant {
                id: 0,
                ttl_ms: 30_000
            }
        );
        assert_eq!(
            g(r#"{"ttl_ms": 1000, "id": 7}"#).unwrap(),
            Grant {
                id: 7,
                ttl_ms: 1000
            }
        );
        assert_eq!(g(r#"{"ttl": "8760h"}"#).unwrap().ttl_ms, 31_536_000_000);
        for (bad, field) in [
            (r#"{"ttl": "0s"}"#, Some("ttl")),
            (r#"{"ttl": "abc"}"#, Some("ttl")),
            (r#"{"ttl": "999ms"}"#, Some("ttl")),
            (r#"{"ttl": "8761h"}"#, Some("ttl")),
            (r#"{"ttl": "999999999999999h"}"#, Some("ttl")),
            (r#"{"ttl": 30}"#, Some("ttl")),
            (r#"{"ttl_ms": 0}"#, Some("ttl_ms")),
            (r#"{"ttl_ms": -5}"#, Some("ttl_ms")),
            (r#"{"ttl_ms": 1.5}"#, Some("ttl_ms")),
            (r#"{"ttl": "1s", "ttl_ms": 1000}"#, Some("ttl")),
            (r#"{}"#, Some("ttl")),
            (r#"{"ttl": "1s", "id": "7"}"#, Some("id")),
            (r#"{"ttl": "1s", "lease": 7}"#, Some("lease")),
            ("[]", None),
            ("", None),
            ("not json", None),
        ] {
            let e = g(bad).unwrap_err();
            assert_eq!(e.status, 400, "{bad}");
            assert_eq!(
                e.extra.get("field").and_then(Value::as_str),
                field,
                "{bad}: {e:?}"
            );
        }
    }

    #[test]
    fn lease_paths_and_queries_decode_strictly() {
        assert_eq!(decode::lease_from_path("/v1/lease/42", "").unwrap(), 42);
        assert_eq!(
            decode::lease_from_path("/v1/lease/42/keep-alive", KEEP_ALIVE).unwrap(),
            42
        );
        for bad in ["/v1/lease/0", "/v1/lease/x", "/v1/lease/-1", "/v1/lease/"] {
            assert_eq!(
                decode::lease_from_path(bad, "").unwrap_err().status,
                400,
                "{bad}"
            );
        }
        let p = decode::lease_get_params(Some("keys=true&consistency=stale")).unwrap();
        assert!(p.keys);
        assert_eq!(p.consistency, crate::node::Consistency::Stale);
        assert!(!decode::lease_get_params(None).unwrap().keys);
        assert!(decode::lease_get_params(Some("keys=1")).is_err());
        let l = decode::lease_list_params(Some("from=5&limit=2")).unwrap();
        assert_eq!((l.from, l.limit), (5, 2));
        assert_eq!(decode::lease_list_params(None).unwrap().from, 1);
        assert!(decode::lease_list_params(Some("limit=0")).is_err());
        assert!(decode::lease_list_params(Some("limit=10001")).is_err());
        let put = decode::put_query(Some("lease=9")).unwrap();
        assert_eq!(put.lease, Some(9));
        assert!(decode::put_query(Some("lease=9&ttl=1s")).is_err());
        assert!(decode::put_query(Some("lease=0")).is_err());
        assert!(decode::no_params(Some("x=1")).is_err());
    }
}
