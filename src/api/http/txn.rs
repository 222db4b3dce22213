//! `POST /v1/txn`: an atomic multi-key transaction, etcd's compare / success / failure
//! model ([`Txn`]), in the JSON of the other key-value endpoints.
//!
//! The body names comparisons and two branches of operations:
//!
//! ```json
//! {"compare": [{"key": "a", "version": 0}, {"key": "b", "value": "x", "op": "not_equal"},
//!              {"key": "c", "exists": true}],
//!  "success": [{"put": {"key": "a", "value": "1"}}, {"get": {"key": "b"}},
//!              {"range": {"prefix": "p/", "limit": 10}}, {"delete": {"key": "c"}},
//!              {"delete_range": {"prefix": "tmp/"}}],
//!  "failure": [{"get": {"key": "a"}}]}
//! ```
//!
//! A comparison looks at one key's `version` (0 = absent) or `value` with `op`
//! (`equal`, the default, `not_equal`, `less`, `greater`); `exists: true|false` is short
//! for `version` `greater` / `equal` 0. If every comparison holds, `success` runs, else
//! `failure`, in order, each operation seeing the ones before it, all in one log entry.
//! The answer is `{"succeeded": bool, "results": [...]}`, one result per operation of the
//! branch that ran, each under its operation's name: `{"put": {"version"}}`,
//! `{"delete": {"deleted"}}` (both with `prev` when asked for with `"prev": true`),
//! `{"get": {"value", "version"}}` or `{"get": null}`, `{"range": {"items", "more"}}`,
//! `{"delete_range": {"deleted": n}}`. A failed comparison is a 200 with `succeeded`
//! false, not a 409: the failure branch is the answer.
//!
//! Keys, values and range bounds follow [`super::decode`]'s bytes-in-JSON scheme in both
//! directions (`key` or `key_base64`, `prefix` or `prefix_base64`, ...). A range is
//! `prefix`, or `from` with an optional `to` (exclusive); unlike `GET /v1/kv`, which
//! intersects a prefix with a from/to range, naming both here is refused (the body
//! states exactly one range per operation).
//!
//! The request is a write of [`super::kv`]'s kind: it runs in the session of the
//! `X-Paxosdb-Client-Id` / `X-Paxosdb-Seq` headers (or a fresh random one), echoed in
//! every answer, so a retry with the same pair is applied at most once and gets the first
//! answer. The user needs the readwrite role (any role for a transaction that only
//! compares and reads), and with a key prefix every key and every
//! range must lie inside it (403), checked here and again where the entry is applied.
//!
//! # Invariants
//!
//! - Decoding ([`decode()`]) is a pure function of the body and the limits, and refuses
//!   anything it does not understand (an unknown field or operation, a missing key, two
//!   forms of one field, a range given two ways, more than [`MAX_TXN_OPS`] comparisons
//!   and operations) with a 400 whose `field` names the place (`success[2].put.key`); a
//!   key, value or bound over its limit is a 413 naming it. Nothing is proposed before
//!   the whole body decoded and passed the permission check: bad input changes nothing.
//! - The body may be up to [`BODY_FACTOR`] × the value limit, so that a transaction the
//!   core accepts (at most 4 × the value limit, [`crate::command::Limits`]) fits even
//!   base64-encoded; the core's own bound then applies to the decoded transaction.
//! - Each result is encoded from the typed [`TxnOpResult`] of the operation at the same
//!   place of the branch that ran; a write result of another kind than the operation
//!   asked for is an internal error, never reinterpreted (as in [`crate::kv::handle`]).

use super::decode::{self, MAX_LIMIT};
use super::error::ApiError;
use super::kv::{in_session, read_body, session};
use super::AppState;
use crate::command::{
    Compare, CompareOp, CompareTarget, Limits, ScanRange, Txn, TxnOp, TxnOpResult, Versioned,
    WriteOp, WriteResult, MAX_TXN_OPS,
};
use crate::kv::handle::{TxnResult, Writer};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

/// How many times the value limit a transaction's body may be.
pub const BODY_FACTOR: usize = 8;

/// `POST /v1/txn`: decodes the transaction, checks it against the user's rights and runs
/// it in the request's session.
pub async fn txn(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let id = super::auth::identity(&s, &headers).await?;
    let limits = s.node.limits();
    let sess = session(&headers)?;
    let max = limits.max_value.saturating_mul(BODY_FACTOR);
    let body = read_body(&headers, body, max, "the transaction body").await?;
    let op = WriteOp::Txn(decode(&body, &limits)?);
    // Every key named, and every range wholly inside the user's prefix.
    id.check_op(&op)?;
    let WriteOp::Txn(txn) = op else {
        unreachable!("built as a transaction above")
    };
    let asked = [asked_prev(&txn.success), asked_prev(&txn.failure)];
    let by = Writer::new(id.user.clone(), sess.0, sess.1);
    let answer = async {
        let r = s.kv.txn(&by, txn).await?;
        let asked = if r.succeeded { &asked[0] } else { &asked[1] };
        Ok(Json(encode(&r, asked)?).into_response())
    };
    Ok(in_session(&by, answer).await)
}

/// One JSON object of the body, with where it is (`success[2].put`; empty: the body).
struct Obj<'a> {
    map: &'a Map<String, Value>,
    at: String,
}

impl<'a> Obj<'a> {
    /// `v`, which must be an object with only `allowed` fields.
    fn new(v: &'a Value, at: String, allowed: &[&str]) -> Result<Obj<'a>, ApiError> {
        let Value::Object(map) = v else {
            return Err(bad_at("must be a JSON object", &at));
        };
        if let Some(k) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
            let f = Obj { map, at }.field(k);
            return Err(ApiError::bad(format!(
                "unknown field; allowed here: {}",
                allowed.join(", ")
            ))
            .at(&f));
        }
        Ok(Obj { map, at })
    }

    /// The path of field `name` of this object.
    fn field(&self, name: &str) -> String {
        match self.at.as_str() {
            "" => name.to_string(),
            at => format!("{at}.{name}"),
        }
    }

    fn bytes(&self, name: &str) -> Result<Option<Vec<u8>>, ApiError> {
        decode::get_bytes(self.map, &self.at, name)
    }

    /// The required key (`key` or `key_base64`), within the key limits.
    fn key(&self, limits: &Limits) -> Result<Vec<u8>, ApiError> {
        let key = self
            .bytes("key")?
            .ok_or_else(|| bad_at("missing; give key or key_base64", &self.field("key")))?;
        decode::check_key(&key, limits).map_err(|e| e.at(&self.field("key")))?;
        Ok(key)
    }

    /// A value (`value` or `value_base64`) within the value limit, if there is one.
    fn value(&self, limits: &Limits) -> Result<Option<Vec<u8>>, ApiError> {
        let Some(v) = self.bytes("value")? else {
            return Ok(None);
        };
        limits
            .check_value(&v)
            .map_err(|e| ApiError::from(e).at(&self.field("value")))?;
        Ok(Some(v))
    }

    fn u64(&self, name: &str) -> Result<Option<u64>, ApiError> {
        self.map
            .get(name)
            .map(|v| {
                v.as_u64()
                    .ok_or_else(|| bad_at("must be an unsigned integer", &self.field(name)))
            })
            .transpose()
    }

    fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        self.map
            .get(name)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| bad_at("must be true or false", &self.field(name)))
            })
            .transpose()
    }

    fn list(&self, name: &str) -> Result<&'a [Value], ApiError> {
        match self.map.get(name) {
            None => Ok(&[]),
            Some(Value::Array(a)) => Ok(a),
            Some(_) => Err(bad_at("must be an array", &self.field(name))),
        }
    }

    /// The range of a `range` or `delete_range`: `prefix`, or `from` and optionally `to`.
    fn range(&self, limits: &Limits) -> Result<ScanRange, ApiError> {
        let [prefix, from, to] = ["prefix", "from", "to"].map(|n| self.bytes(n));
        let (prefix, from, to) = (prefix?, from?, to?);
        for (name, b) in [("prefix", &prefix), ("from", &from), ("to", &to)] {
            if let Some(b) = b {
                decode::check_bound(b, limits).map_err(|e| e.at(&self.field(name)))?;
            }
        }
        match (prefix, from, to) {
            (Some(p), None, None) => Ok(ScanRange::Prefix(p)),
            (None, Some(from), to) => {
                if to.as_ref().is_some_and(|to| *to < from) {
                    return Err(bad_at("the end is before from", &self.field("to")));
                }
                Ok(ScanRange::Range { from, to })
            }
            (Some(_), _, _) => Err(bad_at(
                "give prefix, or from (and optionally to), not both",
                &self.field("prefix"),
            )),
            (None, None, Some(_)) => Err(bad_at(
                "to needs from (\"from\": \"\" starts at the first key)",
                &self.field("from"),
            )),
            (None, None, None) => Err(bad_at(
                "missing; a range is prefix, or from and optionally to",
                &self.field("prefix"),
            )),
        }
    }
}

fn bad_at(message: &str, field: &str) -> ApiError {
    ApiError::bad(message).at(field)
}

const BYTES_KEY: [&str; 2] = ["key", "key_base64"];
const RANGE: [&str; 6] = [
    "prefix",
    "prefix_base64",
    "from",
    "from_base64",
    "to",
    "to_base64",
];

/// The transaction a `POST /v1/txn` body describes (see the module docs).
pub fn decode(body: &[u8], limits: &Limits) -> Result<Txn, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad(format!(
            "the body must be a JSON transaction object {{\"compare\", \"success\", \
             \"failure\"}} ({e})"
        ))
    })?;
    let Value::Object(_) = v else {
        return Err(ApiError::bad(
            "the body must be a JSON object {\"compare\", \"success\", \"failure\"}",
        ));
    };
    let top = Obj::new(&v, String::new(), &["compare", "success", "failure"])?;
    let (compare, success, failure) = (
        top.list("compare")?,
        top.list("success")?,
        top.list("failure")?,
    );
    let n = compare.len() + success.len() + failure.len();
    if n > MAX_TXN_OPS {
        return Err(ApiError::bad(format!(
            "a transaction holds {n} comparisons and operations; the limit is {MAX_TXN_OPS}"
        )));
    }
    let ops = |name: &str, list: &[Value]| {
        (list.iter().enumerate())
            .map(|(i, v)| op(v, format!("{name}[{i}]"), limits))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(Txn {
        compare: (compare.iter().enumerate())
            .map(|(i, v)| comparison(v, format!("compare[{i}]"), limits))
            .collect::<Result<_, _>>()?,
        success: ops("success", success)?,
        failure: ops("failure", failure)?,
    })
}

fn comparison(v: &Value, at: String, limits: &Limits) -> Result<Compare, ApiError> {
    let o = Obj::new(
        v,
        at,
        &[
            "key",
            "key_base64",
            "op",
            "version",
            "create_revision",
            "value",
            "value_base64",
            "exists",
        ],
    )?;
    let key = o.key(limits)?;
    let op = match o.map.get("op") {
        None => None,
        Some(Value::String(s)) => Some(match s.as_str() {
            "equal" => CompareOp::Equal,
            "not_equal" => CompareOp::NotEqual,
            "less" => CompareOp::Less,
            "greater" => CompareOp::Greater,
            _ => return Err(bad_op(&o)),
        }),
        Some(_) => return Err(bad_op(&o)),
    };
    let revisions = match (o.u64("version")?, o.u64("create_revision")?) {
        (Some(v), None) => Some(CompareTarget::Version(v)),
        (None, Some(c)) => Some(CompareTarget::Create(c)),
        (None, None) => None,
        (Some(_), Some(_)) => return Err(one_target(&o)),
    };
    let targets = (revisions, o.value(limits)?, o.bool("exists")?);
    let (op, target) = match targets {
        (Some(t), None, None) => (op, t),
        (None, Some(v), None) => (op, CompareTarget::Value(v)),
        (None, None, Some(exists)) => {
            if op.is_some() {
                return Err(bad_at(
                    "exists takes no op (it means version greater or equal 0)",
                    &o.field("op"),
                ));
            }
            let op = if exists {
                CompareOp::Greater
            } else {
                CompareOp::Equal
            };
            (Some(op), CompareTarget::Version(0))
        }
        _ => return Err(one_target(&o)),
    };
    Ok(Compare {
        key,
        op: op.unwrap_or(CompareOp::Equal),
        target,
    })
}

fn one_target(o: &Obj) -> ApiError {
    bad_at(
        "compare exactly one of version, create_revision, value (or value_base64) and exists",
        &o.at,
    )
}

fn bad_op(o: &Obj) -> ApiError {
    bad_at(
        "must be \"equal\" (the default), \"not_equal\", \"less\" or \"greater\"",
        &o.field("op"),
    )
}

/// One operation: an object with one field, the operation's name.
fn op(v: &Value, at: String, limits: &Limits) -> Result<TxnOp, ApiError> {
    const NAMES: [&str; 5] = ["put", "delete", "get", "range", "delete_range"];
    let outer = Obj::new(v, at, &NAMES)?;
    let mut names = outer.map.iter();
    let (Some((name, inner)), None) = (names.next(), names.next()) else {
        return Err(bad_at(
            "an operation is an object with exactly one field: put, delete, get, range or \
             delete_range",
            &outer.at,
        ));
    };
    let at = outer.field(name);
    Ok(match name.as_str() {
        "put" => {
            let o = Obj::new(
                inner,
                at,
                &["key", "key_base64", "value", "value_base64", "prev"],
            )?;
            let key = o.key(limits)?;
            let value = o
                .value(limits)?
                .ok_or_else(|| bad_at("missing; give value or value_base64", &o.field("value")))?;
            TxnOp::Write(WriteOp::Put {
                key,
                value,
                return_prev: o.bool("prev")?.unwrap_or(false),
            })
        }
        "delete" => {
            let o = Obj::new(inner, at, &["key", "key_base64", "prev"])?;
            TxnOp::Write(WriteOp::Delete {
                key: o.key(limits)?,
                return_prev: o.bool("prev")?.unwrap_or(false),
            })
        }
        "get" => TxnOp::Get {
            key: Obj::new(inner, at, &BYTES_KEY)?.key(limits)?,
        },
        "range" => {
            let mut allowed = RANGE.to_vec();
            allowed.push("limit");
            let o = Obj::new(inner, at, &allowed)?;
            let limit = match o.u64("limit")? {
                None => 0,
                Some(n @ 1..=MAX_LIMIT) => n as u32,
                Some(_) => {
                    let msg = format!("must be 1 to {MAX_LIMIT}");
                    return Err(bad_at(&msg, &o.field("limit")));
                }
            };
            TxnOp::Range {
                range: o.range(limits)?,
                limit,
            }
        }
        _ => TxnOp::DeleteRange {
            range: Obj::new(inner, at, &RANGE)?.range(limits)?,
        },
    })
}

/// For each operation of a branch, whether it asked for the previous value (its result
/// then carries `prev`, null when there was none).
fn asked_prev(ops: &[TxnOp]) -> Vec<bool> {
    (ops.iter())
        .map(|op| {
            matches!(
                op,
                TxnOp::Write(
                    WriteOp::Put {
                        return_prev: true,
                        ..
                    } | WriteOp::Delete {
                        return_prev: true,
                        ..
                    }
                )
            )
        })
        .collect()
}

fn versioned(v: &Option<Versioned>) -> Value {
    match v {
        Some(v) => Value::Object(decode::entry_json(None, &v.value, v.version)),
        None => Value::Null,
    }
}

/// The answer to a transaction; `asked` says which operations of the branch that ran
/// asked for the previous value.
pub fn encode(r: &TxnResult, asked: &[bool]) -> Result<Value, ApiError> {
    let results = (r.results.iter().enumerate())
        .map(|(i, res)| {
            let show_prev = asked.get(i).copied().unwrap_or(false);
            let with_prev = |mut o: Value, p: &Option<Versioned>| {
                if show_prev {
                    o["prev"] = versioned(p);
                }
                o
            };
            Ok(match res {
                TxnOpResult::Get(v) => json!({ "get": versioned(v) }),
                TxnOpResult::Range { items, more } => {
                    let rows: Vec<Value> = (items.iter())
                        .map(|kv| {
                            Value::Object(decode::entry_json(Some(&kv.key), &kv.value, kv.version))
                        })
                        .collect();
                    json!({ "range": { "items": rows, "more": more } })
                }
                TxnOpResult::DeleteRange { deleted } => {
                    json!({ "delete_range": { "deleted": deleted } })
                }
                TxnOpResult::Write(WriteResult::Put { version, prev }) => {
                    json!({ "put": with_prev(json!({ "version": version }), prev) })
                }
                TxnOpResult::Write(WriteResult::Delete { deleted, prev }) => {
                    json!({ "delete": with_prev(json!({ "deleted": deleted }), prev) })
                }
                TxnOpResult::Write(other) => {
                    return Err(ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        format!("operation {i} of a transaction was answered with {other:?}"),
                    ))
                }
            })
        })
        .collect::<Result<Vec<Value>, ApiError>>()?;
    Ok(json!({ "succeeded": r.succeeded, "results": results }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::KeyValue;

    fn limits() -> Limits {
        Limits {
            max_key: 8,
            max_value: 16,
        }
    }

    fn dec(body: &str) -> Result<Txn, ApiError> {
        decode(body.as_bytes(), &limits())
    }

    /// The status and `field` of a refusal.
    fn refused(body: &str) -> (u16, String) {
        let e = dec(body).expect_err(body);
        let field = e.extra.get("field").and_then(Value::as_str).unwrap_or("");
        (e.status.as_u16(), field.to_string())
    }

    #[test]
    fn decodes_every_form() {
        let t = dec(r#"{
            "compare": [{"key": "a", "version": 0}, {"key_base64": "/w==", "value": "x",
                "op": "not_equal"}, {"key": "c", "exists": true}, {"key": "d", "exists": false},
                {"key": "e", "version": 3, "op": "less"},
                {"key": "f", "create_revision": 2, "op": "greater"}],
            "success": [{"put": {"key": "a", "value_base64": "AP8=", "prev": true}},
                {"get": {"key": "b"}}, {"range": {"prefix": "p/", "limit": 10}},
                {"delete": {"key": "c"}}, {"delete_range": {"from": "t/", "to": "u"}},
                {"range": {"from": ""}}],
            "failure": [{"get": {"key": "a"}}]
        }"#)
        .unwrap();
        let cmp = |key: &[u8], op, target| Compare {
            key: key.to_vec(),
            op,
            target,
        };
        assert_eq!(
            t.compare,
            vec![
                cmp(b"a", CompareOp::Equal, CompareTarget::Version(0)),
                cmp(
                    b"\xff",
                    CompareOp::NotEqual,
                    CompareTarget::Value(b"x".to_vec())
                ),
                cmp(b"c", CompareOp::Greater, CompareTarget::Version(0)),
                cmp(b"d", CompareOp::Equal, CompareTarget::Version(0)),
                cmp(b"e", CompareOp::Less, CompareTarget::Version(3)),
                cmp(b"f", CompareOp::Greater, CompareTarget::Create(2)),
            ]
        );
        assert_eq!(
            t.success,
            vec![
                TxnOp::Write(WriteOp::Put {
                    key: b"a".to_vec(),
                    value: vec![0, 0xff],
                    return_prev: true
                }),
                TxnOp::Get { key: b"b".to_vec() },
                TxnOp::Range {
                    range: ScanRange::Prefix(b"p/".to_vec()),
                    limit: 10
                },
                TxnOp::Write(WriteOp::Delete {
                    key: b"c".to_vec(),
                    return_prev: false
                }),
                TxnOp::DeleteRange {
                    range: ScanRange::Range {
                        from: b"t/".to_vec(),
                        to: Some(b"u".to_vec())
                    }
                },
                TxnOp::Range {
                    range: ScanRange::Range {
                        from: vec![],
                        to: None
                    },
                    limit: 0
                },
            ]
        );
        assert_eq!(t.failure, vec![TxnOp::Get { key: b"a".to_vec() }]);
        assert_eq!(dec("{}").unwrap(), Txn::default());
    }

    #[test]
    fn refuses_bad_input_naming_the_field() {
        for (body, want) in [
            ("[]", (400, "")),
            ("not json", (400, "")),
            (r#"{"compare": [], "sucess": []}"#, (400, "sucess")),
            (r#"{"success": {}}"#, (400, "success")),
            (
                r#"{"success": [{"incr": {"key": "a"}}]}"#,
                (400, "success[0].incr"),
            ),
            (r#"{"success": [{}]}"#, (400, "success[0]")),
            (
                r#"{"success": [{"get": {"key": "a"}, "put": {"key": "a", "value": ""}}]}"#,
                (400, "success[0]"),
            ),
            (r#"{"success": [{"get": {}}]}"#, (400, "success[0].get.key")),
            (
                r#"{"success": [{"get": {"key": ""}}]}"#,
                (400, "success[0].get.key"),
            ),
            (
                r#"{"success": [{"get": {"key": 1}}]}"#,
                (400, "success[0].get.key"),
            ),
            (
                r#"{"success": [{"get": {"key": "a", "key_base64": "YQ=="}}]}"#,
                (400, "success[0].get.key"),
            ),
            (
                r#"{"success": [{"get": {"key_base64": "%%"}}]}"#,
                (400, "success[0].get.key_base64"),
            ),
            (
                r#"{"failure": [{"get": {"key": "123456789"}}]}"#,
                (413, "failure[0].get.key"),
            ),
            (
                r#"{"success": [{"put": {"key": "a"}}]}"#,
                (400, "success[0].put.value"),
            ),
            (
                r#"{"success": [{"put": {"key": "a", "value": "12345678901234567"}}]}"#,
                (413, "success[0].put.value"),
            ),
            (
                r#"{"success": [{"put": {"key": "a", "value": "", "prev": 1}}]}"#,
                (400, "success[0].put.prev"),
            ),
            (
                r#"{"success": [{"range": {"prefix": "a", "from": "b"}}]}"#,
                (400, "success[0].range.prefix"),
            ),
            (
                r#"{"success": [{"range": {}}]}"#,
                (400, "success[0].range.prefix"),
            ),
            (
                r#"{"success": [{"range": {"to": "b"}}]}"#,
                (400, "success[0].range.from"),
            ),
            (
                r#"{"success": [{"delete_range": {"from": "b", "to": "a"}}]}"#,
                (400, "success[0].delete_range.to"),
            ),
            (
                r#"{"success": [{"range": {"prefix": "a", "limit": 0}}]}"#,
                (400, "success[0].range.limit"),
            ),
            (
                r#"{"success": [{"range": {"prefix": "a", "limit": 10001}}]}"#,
                (400, "success[0].range.limit"),
            ),
            (
                r#"{"success": [{"delete_range": {"prefix": "a", "limit": 1}}]}"#,
                (400, "success[0].delete_range.limit"),
            ),
            (r#"{"compare": [{"version": 0}]}"#, (400, "compare[0].key")),
            (r#"{"compare": [{"key": "a"}]}"#, (400, "compare[0]")),
            (
                r#"{"compare": [{"key": "a", "version": 1, "value": "x"}]}"#,
                (400, "compare[0]"),
            ),
            (
                r#"{"compare": [{"key": "a", "version": 1, "create_revision": 1}]}"#,
                (400, "compare[0]"),
            ),
            (
                r#"{"compare": [{"key": "a", "create_revision": "1"}]}"#,
                (400, "compare[0].create_revision"),
            ),
            (
                r#"{"compare": [{"key": "a", "version": -1}]}"#,
                (400, "compare[0].version"),
            ),
            (
                r#"{"compare": [{"key": "a", "version": 1.5}]}"#,
                (400, "compare[0].version"),
            ),
            (
                r#"{"compare": [{"key": "a", "version": 1, "op": "eq"}]}"#,
                (400, "compare[0].op"),
            ),
            (
                r#"{"compare": [{"key": "a", "exists": true, "op": "equal"}]}"#,
                (400, "compare[0].op"),
            ),
        ] {
            assert_eq!(refused(body), (want.0, want.1.to_string()), "{body}");
        }
        let many = format!(
            r#"{{"success": [{}]}}"#,
            vec![r#"{"get": {"key": "a"}}"#; MAX_TXN_OPS + 1].join(",")
        );
        assert_eq!(refused(&many), (400, String::new()));
        let most = format!(
            r#"{{"success": [{}]}}"#,
            vec![r#"{"get": {"key": "a"}}"#; MAX_TXN_OPS].join(",")
        );
        assert_eq!(dec(&most).unwrap().success.len(), MAX_TXN_OPS);
    }

    #[test]
    fn encodes_every_result() {
        let v = |value: &[u8], version| Versioned {
            value: value.to_vec(),
            version,
        };
        let r = TxnResult {
            succeeded: true,
            results: vec![
                TxnOpResult::Write(WriteResult::Put {
                    version: 7,
                    prev: None,
                }),
                TxnOpResult::Write(WriteResult::Put {
                    version: 8,
                    prev: Some(v(b"old", 2)),
                }),
                TxnOpResult::Get(Some(v(&[0xff], 3))),
                TxnOpResult::Get(None),
                TxnOpResult::Range {
                    items: vec![KeyValue {
                        key: b"p/1".to_vec(),
                        value: b"x".to_vec(),
                        version: 4,
                    }],
                    more: false,
                },
                TxnOpResult::Write(WriteResult::Delete {
                    deleted: true,
                    prev: None,
                }),
                TxnOpResult::DeleteRange { deleted: 2 },
            ],
        };
        let asked = [false, true, false, false, false, true, false];
        assert_eq!(
            encode(&r, &asked).unwrap(),
            json!({"succeeded": true, "results": [
                {"put": {"version": 7}},
                {"put": {"version": 8, "prev": {"value": "old", "version": 2}}},
                {"get": {"value_base64": "/w==", "version": 3}},
                {"get": null},
                {"range": {"items": [{"key": "p/1", "value": "x", "version": 4}], "more": false}},
                {"delete": {"deleted": true, "prev": null}},
                {"delete_range": {"deleted": 2}},
            ]})
        );
        let odd = TxnResult {
            succeeded: false,
            results: vec![TxnOpResult::Write(WriteResult::Incr {
                value: 1,
                version: 1,
            })],
        };
        assert_eq!(encode(&odd, &[false]).unwrap_err().status, 500);
    }
}
