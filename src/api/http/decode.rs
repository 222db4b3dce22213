//! Decoding what an HTTP client sends: the key in the path, query parameters (blocking
//! queries' `index` and `wait`, watches' ranges and `from_revision` included), the
//! session, precondition and `Last-Event-ID` headers; and encoding bytes into JSON.
//!
//! Everything here is a pure function over strings and bytes, so that the fuzz test
//! (`fuzz.rs`) can throw arbitrary input at it. Decoding is strict: a malformed escape, an
//! unknown or repeated query parameter, or a number with a sign or spaces is a 400, never
//! silently ignored (a typo such as `?consistncy=stale` must not turn into a default).
//!
//! Bytes in JSON: a key or value that is valid UTF-8 is a JSON string under `key` /
//! `value`; anything else is standard base64 (with padding) under `key_base64` /
//! `value_base64`. Exactly one of each pair is present.

use super::error::ApiError;
use crate::command::{Limits, ScanRange, MAX_LEASE_TTL_MS, MIN_LEASE_TTL_MS};
use crate::node::Consistency;
use base64::Engine as _;
use serde_json::{Map, Value};

/// The path prefix of single-key operations.
pub const KV_PREFIX: &str = "/v1/kv/";

/// The path prefix of single-key watches (`/v1/watch/{key}`).
pub const WATCH_PREFIX: &str = "/v1/watch/";

/// The longest a blocking query waits (`?wait=` beyond it is cut to it), as Consul's.
pub const MAX_WAIT_MS: u64 = 10 * 60 * 1000;

/// How long a blocking query waits without `?wait=`, as Consul's.
pub const DEFAULT_WAIT_MS: u64 = 5 * 60 * 1000;

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes `%XX` escapes (and `+` as a space when `plus_is_space`, as in query strings).
pub fn percent_decode(s: &str, plus_is_space: bool) -> Result<Vec<u8>, ApiError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let h = b.get(i + 1).copied().and_then(hex);
                let l = b.get(i + 2).copied().and_then(hex);
                match (h, l) {
                    (Some(h), Some(l)) => out.push(h << 4 | l),
                    _ => return Err(ApiError::bad("malformed %-escape in the URL")),
                }
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// The key of a `/v1/kv/{key}` path: everything after the prefix, %-decoded (so a key may
/// hold `/` and, escaped, any byte), checked against the limits (empty: 400; long: 413).
pub fn key_from_path(path: &str, limits: &Limits) -> Result<Vec<u8>, ApiError> {
    key_under(KV_PREFIX, path, limits)
}

/// The key of a path `{prefix}{key}` (such as [`WATCH_PREFIX`]), decoded and checked as
/// [`key_from_path`] does.
pub fn key_under(prefix: &str, path: &str, limits: &Limits) -> Result<Vec<u8>, ApiError> {
    let raw = path
        .strip_prefix(prefix)
        .ok_or_else(|| ApiError::bad(format!("expected a path {prefix}{{key}}")))?;
    let key = percent_decode(raw, false)?;
    check_key(&key, limits)?;
    Ok(key)
}

pub fn check_key(key: &[u8], limits: &Limits) -> Result<(), ApiError> {
    if key.is_empty() {
        return Err(ApiError::bad("the key must not be empty"));
    }
    if key.len() > limits.max_key {
        return Err(ApiError::too_large(format!(
            "the key is {} bytes; the limit is {} bytes",
            key.len(),
            limits.max_key
        )));
    }
    Ok(())
}

/// Splits a query string into decoded (name, value) pairs, allowing only `allowed` names,
/// each at most once.
pub fn parse_query(q: Option<&str>, allowed: &[&str]) -> Result<Vec<(String, Vec<u8>)>, ApiError> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let Some(q) = q else { return Ok(out) };
    for part in q.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = part.split_once('=').unwrap_or((part, ""));
        let name = String::from_utf8(percent_decode(name, true)?)
            .map_err(|_| ApiError::bad("a query parameter name is not UTF-8"))?;
        if !allowed.contains(&name.as_str()) {
            return Err(ApiError::bad(format!(
                "unknown query parameter {name:?}; allowed here: {}",
                allowed.join(", ")
            )));
        }
        if out.iter().any(|(n, _)| *n == name) {
            return Err(ApiError::bad(format!(
                "query parameter {name:?} given twice"
            )));
        }
        out.push((name, percent_decode(value, true)?));
    }
    Ok(out)
}

fn param<'a>(pairs: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    pairs
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_slice())
}

/// A strict unsigned decimal: digits only, no sign, no spaces, fits in a u64.
pub fn parse_u64(what: &str, v: &[u8]) -> Result<u64, ApiError> {
    let ok = !v.is_empty() && v.len() <= 20 && v.iter().all(u8::is_ascii_digit);
    ok.then(|| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
        .flatten()
        .ok_or_else(|| ApiError::bad(format!("{what} must be an unsigned decimal integer")))
}

fn consistency(pairs: &[(String, Vec<u8>)]) -> Result<Consistency, ApiError> {
    match param(pairs, "consistency") {
        None | Some(b"linearizable") => Ok(Consistency::Linearizable),
        Some(b"stale") => Ok(Consistency::Stale),
        Some(_) => Err(ApiError::bad(
            "consistency must be \"linearizable\" (the default) or \"stale\"",
        )),
    }
}

/// `GET /v1/kv/{key}` parameters: the consistency only (see [`get_query`]).
pub fn get_params(q: Option<&str>) -> Result<Consistency, ApiError> {
    get_query(q).map(|p| p.consistency)
}

/// A blocking query (`?index=N&wait=30s`): answer once a change after revision `index`
/// matches, or once `wait_ms` passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    pub index: u64,
    /// At most [`MAX_WAIT_MS`]; [`DEFAULT_WAIT_MS`] when not given.
    pub wait_ms: u64,
}

/// A parsed `GET /v1/kv/{key}` query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GetParams {
    pub consistency: Consistency,
    pub block: Option<Block>,
}

/// `GET /v1/kv/{key}` parameters: `consistency`, and `index` / `wait` of a blocking query.
pub fn get_query(q: Option<&str>) -> Result<GetParams, ApiError> {
    let pairs = parse_query(q, &["consistency", "index", "wait"])?;
    Ok(GetParams {
        consistency: consistency(&pairs)?,
        block: block(&pairs)?,
    })
}

/// `index` and `wait`: a blocking query when `index` is given (without `wait`: the
/// default wait). A `wait` without `index` is checked and otherwise ignored, as Consul
/// does: its clients send their wait time with the first request too, which has no index
/// yet.
fn block(pairs: &[(String, Vec<u8>)]) -> Result<Option<Block>, ApiError> {
    let wait = param(pairs, "wait").map(parse_wait).transpose()?;
    let Some(index) = param(pairs, "index") else {
        return Ok(None);
    };
    Ok(Some(Block {
        index: parse_u64("index", index)?,
        wait_ms: wait.unwrap_or(DEFAULT_WAIT_MS),
    }))
}

/// The `wait` of a blocking query: 1 to 15 digits and a unit, `ms`, `s`, `m` or `h`
/// (`300ms`, `30s`, `5m`), 0 included (answer at once); longer than [`MAX_WAIT_MS`] is
/// cut to it, as Consul does. In ms.
pub fn parse_wait(v: &[u8]) -> Result<u64, ApiError> {
    let (n, per_unit) = duration_parts(v).ok_or_else(|| {
        ApiError::bad(
            "wait must be a whole number and a unit, ms, s, m or h (such as 300ms or 30s)",
        )
    })?;
    Ok(n.saturating_mul(per_unit).min(MAX_WAIT_MS))
}

/// A duration as `ttl` and `wait` take it: 1 to 15 digits and a unit, `ms`, `s`, `m` or
/// `h`. The number and the milliseconds per unit; `None` when malformed.
fn duration_parts(v: &[u8]) -> Option<(u64, u64)> {
    let digits = v.iter().take_while(|b| b.is_ascii_digit()).count();
    let (num, unit) = v.split_at(digits);
    let per_unit: u64 = match unit {
        b"ms" => 1,
        b"s" => 1_000,
        b"m" => 60_000,
        b"h" => 3_600_000,
        _ => return None,
    };
    if !(1..=15).contains(&digits) {
        return None;
    }
    // At most 15 digits: always fits in a u64.
    Some((std::str::from_utf8(num).ok()?.parse().ok()?, per_unit))
}

/// `PUT /v1/kv/{key}` parameters: the `cas` version, if any.
pub fn put_params(q: Option<&str>) -> Result<Option<u64>, ApiError> {
    put_query(q).map(|p| p.cas)
}

/// A parsed `PUT /v1/kv/{key}` query.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PutParams {
    /// Store only if the key's version is this.
    pub cas: Option<u64>,
    /// The time to live in ms (positive, at most [`crate::api::grpc::MAX_TTL_MS`]).
    pub ttl_ms: Option<u64>,
    /// The lease to attach the key to (non-zero); never together with `ttl_ms`.
    pub lease: Option<u64>,
}

/// `PUT /v1/kv/{key}` parameters: `cas` (a version), `ttl` (a duration) and `lease` (a
/// lease id; not with `ttl`: a key attached to a lease ends with it).
pub fn put_query(q: Option<&str>) -> Result<PutParams, ApiError> {
    let pairs = parse_query(q, &["cas", "ttl", "lease"])?;
    let p = PutParams {
        cas: param(&pairs, "cas")
            .map(|v| parse_u64("cas", v))
            .transpose()?,
        ttl_ms: param(&pairs, "ttl").map(parse_ttl).transpose()?,
        lease: param(&pairs, "lease").map(lease_id).transpose()?,
    };
    if p.ttl_ms.is_some() && p.lease.is_some() {
        return Err(ApiError::bad(
            "give ttl or lease, not both: a key attached to a lease lives as long as the lease \
             (grant the lease with the time to live you want)",
        ));
    }
    Ok(p)
}

/// A lease id as the path or a query parameter gives it: a non-zero unsigned decimal.
pub fn lease_id(v: &[u8]) -> Result<u64, ApiError> {
    match parse_u64("the lease id", v)? {
        0 => Err(ApiError::bad(
            "the lease id must be at least 1 (0 names no lease)",
        )),
        id => Ok(id),
    }
}

/// The path prefix of one lease's endpoints (`/v1/lease/{id}`, `/v1/lease/{id}/keep-alive`).
pub const LEASE_PREFIX: &str = "/v1/lease/";

/// The id of a `/v1/lease/{id}` path, or of `/v1/lease/{id}{suffix}` (such as
/// `/keep-alive`).
pub fn lease_from_path(path: &str, suffix: &str) -> Result<u64, ApiError> {
    let raw = path
        .strip_prefix(LEASE_PREFIX)
        .and_then(|p| p.strip_suffix(suffix))
        .ok_or_else(|| ApiError::bad(format!("expected a path {LEASE_PREFIX}{{id}}{suffix}")))?;
    lease_id(&percent_decode(raw, false)?)
}

/// A lease's time to live: a duration as `ttl` takes it (`30s`, `2m`), or a number of
/// ms, within [`MIN_LEASE_TTL_MS`]..=[`MAX_LEASE_TTL_MS`].
pub fn parse_lease_ttl(v: &[u8]) -> Result<u64, ApiError> {
    let (n, per_unit) = duration_parts(v).ok_or_else(|| {
        ApiError::bad("must be a whole number and a unit, ms, s, m or h (such as 30s or 2m)")
    })?;
    check_lease_ttl(n.saturating_mul(per_unit))
}

/// `ttl_ms` if a lease may be granted for that long (1 s to a year), else a 400 saying
/// the bounds.
pub fn check_lease_ttl(ttl_ms: u64) -> Result<u64, ApiError> {
    if (MIN_LEASE_TTL_MS..=MAX_LEASE_TTL_MS).contains(&ttl_ms) {
        return Ok(ttl_ms);
    }
    Err(ApiError::bad(format!(
        "a lease's time to live must be from {}s to {}h (a year); {ttl_ms}ms was asked",
        MIN_LEASE_TTL_MS / 1000,
        MAX_LEASE_TTL_MS / 3_600_000
    )))
}

/// A parsed `GET /v1/lease/{id}` query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseGetParams {
    /// List the keys attached to the lease (at most [`MAX_LEASE_KEYS`]).
    pub keys: bool,
    pub consistency: Consistency,
}

/// The most keys `GET /v1/lease/{id}?keys=true` lists.
pub const MAX_LEASE_KEYS: usize = 1000;

/// `GET /v1/lease/{id}` parameters: `keys` (`true` or `false`) and `consistency`.
pub fn lease_get_params(q: Option<&str>) -> Result<LeaseGetParams, ApiError> {
    let pairs = parse_query(q, &["keys", "consistency"])?;
    let keys = match param(&pairs, "keys") {
        None | Some(b"false") => false,
        Some(b"true") => true,
        Some(_) => return Err(ApiError::bad("keys must be true or false")),
    };
    Ok(LeaseGetParams {
        keys,
        consistency: consistency(&pairs)?,
    })
}

/// A parsed `GET /v1/lease` (list) query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseListParams {
    /// The first lease id to list.
    pub from: u64,
    /// 1 to [`MAX_LIMIT`].
    pub limit: usize,
    pub consistency: Consistency,
}

/// `GET /v1/lease` parameters: `from` (a lease id, default 1), `limit` (1 to
/// [`MAX_LIMIT`], default 1,000) and `consistency`.
pub fn lease_list_params(q: Option<&str>) -> Result<LeaseListParams, ApiError> {
    let pairs = parse_query(q, &["from", "limit", "consistency"])?;
    let from = param(&pairs, "from")
        .map(|v| parse_u64("from", v))
        .transpose()?
        .unwrap_or(1);
    let limit = match param(&pairs, "limit") {
        None => crate::node::DEFAULT_SCAN_LIMIT,
        Some(v) => match parse_u64("limit", v)? {
            n @ 1..=MAX_LIMIT => n as usize,
            _ => return Err(ApiError::bad(format!("limit must be 1 to {MAX_LIMIT}"))),
        },
    };
    Ok(LeaseListParams {
        from,
        limit,
        consistency: consistency(&pairs)?,
    })
}

/// `POST /v1/lease/{id}/keep-alive` and `DELETE /v1/lease/{id}` take no parameters.
pub fn no_params(q: Option<&str>) -> Result<(), ApiError> {
    parse_query(q, &[]).map(|_| ())
}

/// A time to live: 1 to 15 digits and a unit, `ms`, `s`, `m` or `h` (`500ms`, `30s`),
/// positive and at most [`crate::api::grpc::MAX_TTL_MS`]; in ms.
pub fn parse_ttl(v: &[u8]) -> Result<u64, ApiError> {
    let (n, per_unit) = duration_parts(v).ok_or_else(|| {
        ApiError::bad("ttl must be a whole number and a unit, ms, s, m or h (such as 500ms or 30s)")
    })?;
    let max = crate::api::grpc::MAX_TTL_MS;
    let ms = n
        .checked_mul(per_unit)
        .filter(|ms| *ms <= max)
        .ok_or_else(|| ApiError::bad(format!("ttl is too long: at most {max}ms (100 years)")))?;
    if ms == 0 {
        return Err(ApiError::bad(
            "ttl must be positive (leave it out for a key that never expires)",
        ));
    }
    Ok(ms)
}

/// `DELETE /v1/kv/{key}` takes no parameters.
pub fn delete_params(q: Option<&str>) -> Result<(), ApiError> {
    parse_query(q, &[]).map(|_| ())
}

/// A parsed `GET /v1/kv` (scan) request.
#[derive(Debug, PartialEq, Eq)]
pub struct ScanParams {
    pub range: ScanRange,
    /// 0 = the default page size.
    pub limit: usize,
    pub consistency: Consistency,
    /// `?index=&wait=`: a blocking query.
    pub block: Option<Block>,
}

/// Largest `limit` a scan accepts.
pub const MAX_LIMIT: u64 = crate::node::MAX_SCAN_LIMIT as u64;

use crate::command::prefix_end;

/// `GET /v1/kv` parameters: `prefix`, or `from`/`to` (end exclusive), `limit`,
/// `consistency`, and `index` / `wait` of a blocking query.
pub fn scan_params(q: Option<&str>, limits: &Limits) -> Result<ScanParams, ApiError> {
    let names = [
        "prefix",
        "from",
        "to",
        "limit",
        "consistency",
        "index",
        "wait",
    ];
    let pairs = parse_query(q, &names)?;
    let range = range(&pairs, limits)?;
    let limit = match param(&pairs, "limit") {
        None => 0,
        Some(v) => match parse_u64("limit", v)? {
            n @ 1..=MAX_LIMIT => n as usize,
            _ => return Err(ApiError::bad(format!("limit must be 1 to {MAX_LIMIT}"))),
        },
    };
    Ok(ScanParams {
        range,
        limit,
        consistency: consistency(&pairs)?,
        block: block(&pairs)?,
    })
}

/// `GET /v1/watch/{key}` parameters: `from_revision`, the first revision to send (at
/// least 1; `None`: from now).
pub fn watch_key_params(q: Option<&str>) -> Result<Option<u64>, ApiError> {
    from_revision(&parse_query(q, &["from_revision"])?)
}

/// `GET /v1/watch` parameters: the keys watched, as a scan takes them (`prefix`, or
/// `from`/`to`, or both, or nothing: every key), and `from_revision`.
pub fn watch_range_params(
    q: Option<&str>,
    limits: &Limits,
) -> Result<(ScanRange, Option<u64>), ApiError> {
    let pairs = parse_query(q, &["prefix", "from", "to", "from_revision"])?;
    Ok((range(&pairs, limits)?, from_revision(&pairs)?))
}

fn from_revision(pairs: &[(String, Vec<u8>)]) -> Result<Option<u64>, ApiError> {
    match param(pairs, "from_revision") {
        None => Ok(None),
        Some(v) => match parse_u64("from_revision", v)? {
            0 => Err(ApiError::bad(
                "from_revision must be at least 1 (revisions start at 1)",
            )),
            r => Ok(Some(r)),
        },
    }
}

/// Where a server-sent event stream resumes: the `Last-Event-ID` a client sends back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resume {
    /// The revision to read from.
    pub revision: u64,
    /// How many of that revision's changes the client already has (they are skipped).
    pub skip: u64,
}

/// The `Last-Event-ID` header of a resumed watch: `R` (every change up to revision `R`
/// was received: resume at `R + 1`) or `R.k` (the first `k` changes of revision `R`
/// were: resume inside `R`). Empty: none (an event stream whose id was reset).
pub fn last_event_id(h: Option<&[u8]>) -> Result<Option<Resume>, ApiError> {
    let Some(h) = h.filter(|h| !h.is_empty()) else {
        return Ok(None);
    };
    let what = "Last-Event-ID (an event id this stream sent: R or R.k)";
    let (r, k) = match h.iter().position(|b| *b == b'.') {
        Some(dot) => (&h[..dot], Some(&h[dot + 1..])),
        None => (h, None),
    };
    let revision = parse_u64(what, r)?;
    let resume = match k.map(|k| parse_u64(what, k)).transpose()? {
        None => Resume {
            revision: revision
                .checked_add(1)
                .ok_or_else(|| ApiError::bad(format!("{what} is out of range")))?,
            skip: 0,
        },
        Some(0) => return Err(ApiError::bad(format!("{what}: k is at least 1"))),
        Some(k) => Resume { revision, skip: k },
    };
    Ok(Some(resume))
}

/// The range of a scan or a watch: `prefix`, `from`, `to` (end exclusive), or both forms
/// (their intersection), or nothing (every key).
fn range(pairs: &[(String, Vec<u8>)], limits: &Limits) -> Result<ScanRange, ApiError> {
    let prefix = param(pairs, "prefix");
    let from = param(pairs, "from");
    let to = param(pairs, "to");
    for k in [prefix, from, to].into_iter().flatten() {
        check_bound(k, limits)?;
    }
    let range = match (prefix, from, to) {
        (Some(p), None, None) => ScanRange::Prefix(p.to_vec()),
        _ => {
            // A prefix together with from/to means both: the intersection of the ranges.
            let mut lo = from.unwrap_or_default().to_vec();
            let mut hi = to.map(<[u8]>::to_vec);
            if let Some(p) = prefix {
                lo = lo.max(p.to_vec());
                hi = match (hi, prefix_end(p)) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            // An empty or inverted range has no rows (not an error).
            if matches!(&hi, Some(h) if *h < lo) {
                hi = Some(lo.clone());
            }
            ScanRange::Range { from: lo, to: hi }
        }
    };
    Ok(range)
}

/// A range bound (a prefix, `from` or `to`) may be empty, but no longer than a key (413).
pub fn check_bound(bound: &[u8], limits: &Limits) -> Result<(), ApiError> {
    if bound.len() > limits.max_key {
        return Err(ApiError::too_large(format!(
            "a scan bound is {} bytes; the key limit is {} bytes",
            bound.len(),
            limits.max_key
        )));
    }
    Ok(())
}

/// A write session from the `X-Paxosdb-Client-Id` and `X-Paxosdb-Seq` headers: both or
/// neither, both non-zero. `None` means the server picks a fresh random session.
pub fn session(
    client_id: Option<&[u8]>,
    seq: Option<&[u8]>,
) -> Result<Option<(u64, u64)>, ApiError> {
    match (client_id, seq) {
        (None, None) => Ok(None),
        (Some(c), Some(s)) => {
            let c = parse_u64("X-Paxosdb-Client-Id", c)?;
            let s = parse_u64("X-Paxosdb-Seq", s)?;
            if c == 0 || s == 0 {
                return Err(ApiError::bad(
                    "X-Paxosdb-Client-Id and X-Paxosdb-Seq must be non-zero",
                ));
            }
            Ok(Some((c, s)))
        }
        _ => Err(ApiError::bad(
            "send both X-Paxosdb-Client-Id and X-Paxosdb-Seq, or neither",
        )),
    }
}

/// The condition of a conditional PUT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precondition {
    /// Store only if the key's version is this (0 = only if absent).
    Version(u64),
    /// Store only if the key exists (`If-Match: *`).
    Exists,
    /// Conditions that cannot all hold (such as `If-Match: *` with `If-None-Match: *`).
    Never,
}

impl Precondition {
    /// Both conditions at once.
    pub fn and(self, other: Precondition) -> Precondition {
        use Precondition::*;
        match (self, other) {
            (Never, _) | (_, Never) => Never,
            (Version(a), Version(b)) if a == b => Version(a),
            (Version(_), Version(_)) => Never,
            (Exists, Exists) => Exists,
            (Exists, Version(0)) | (Version(0), Exists) => Never,
            (Exists, Version(v)) | (Version(v), Exists) => Version(v),
        }
    }
}

/// Combines `?cas=`, `If-Match` and `If-None-Match` into at most one condition.
/// `If-Match: "7"` (quotes optional) means version 7; `If-Match: *` means the key exists;
/// `If-None-Match: *` means it is absent (version 0). All given conditions must hold;
/// contradictory ones combine to [`Precondition::Never`].
pub fn precondition(
    cas: Option<u64>,
    if_match: Option<&[u8]>,
    if_none_match: Option<&[u8]>,
) -> Result<Option<Precondition>, ApiError> {
    let mut conds = Vec::new();
    if let Some(v) = cas {
        conds.push(Precondition::Version(v));
    }
    if let Some(h) = if_match {
        if h == b"*" {
            conds.push(Precondition::Exists);
        } else {
            let inner = h
                .strip_prefix(b"\"")
                .and_then(|x| x.strip_suffix(b"\""))
                .unwrap_or(h);
            let what = "If-Match (one version of at most 19 digits, such as \"7\")";
            if inner.len() > 19 {
                return Err(ApiError::bad(format!("{what} is too long")));
            }
            conds.push(Precondition::Version(parse_u64(what, inner)?));
        }
    }
    if let Some(h) = if_none_match {
        if h != b"*" {
            return Err(ApiError::bad("only If-None-Match: * is supported"));
        }
        conds.push(Precondition::Version(0));
    }
    Ok(conds.into_iter().reduce(Precondition::and))
}

/// Puts `bytes` into `obj` as `{name}` (UTF-8) or `{name}_base64` (anything else).
pub fn put_bytes(obj: &mut Map<String, Value>, name: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(s) => obj.insert(name.to_string(), Value::String(s.to_string())),
        Err(_) => obj.insert(
            format!("{name}_base64"),
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ),
    };
}

/// A key/value/version object in the JSON scheme above.
pub fn entry_json(key: Option<&[u8]>, value: &[u8], version: u64) -> Map<String, Value> {
    let mut o = Map::new();
    if let Some(k) = key {
        put_bytes(&mut o, "key", k);
    }
    put_bytes(&mut o, "value", value);
    o.insert("version".into(), version.into());
    o
}

/// The bytes `obj` holds under `{name}` (a string: its UTF-8) or `{name}_base64`
/// (standard base64 with padding): the inverse of [`put_bytes`]. `None` when neither is
/// there. Both at once, a non-string or malformed base64 is a 400 about the field
/// `{at}.{name}` ([`ApiError::at`]; just `{name}` when `at` is empty).
pub fn get_bytes(
    obj: &Map<String, Value>,
    at: &str,
    name: &str,
) -> Result<Option<Vec<u8>>, ApiError> {
    let b64 = format!("{name}_base64");
    let field = |n: &str| match at {
        "" => n.to_string(),
        _ => format!("{at}.{n}"),
    };
    let string = |n: &str| match obj.get(n) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(ApiError::bad("must be a string").at(&field(n))),
    };
    match (string(name)?, string(&b64)?) {
        (None, None) => Ok(None),
        (Some(s), None) => Ok(Some(s.as_bytes().to_vec())),
        (None, Some(s)) => base64::engine::general_purpose::STANDARD
            .decode(s)
            .map(Some)
            .map_err(|e| {
                ApiError::bad(format!("not standard base64 with padding ({e})")).at(&field(&b64))
            }),
        (Some(_), Some(_)) => {
            Err(ApiError::bad(format!("give {name} or {b64}, not both")).at(&field(name)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ttl_is_a_whole_number_and_a_unit_within_bounds() {
        assert_eq!(parse_ttl(b"500ms").unwrap(), 500);
        assert_eq!(parse_ttl(b"30s").unwrap(), 30_000);
        assert_eq!(parse_ttl(b"5m").unwrap(), 300_000);
        assert_eq!(parse_ttl(b"2h").unwrap(), 7_200_000);
        let max = crate::api::grpc::MAX_TTL_MS;
        assert_eq!(parse_ttl(format!("{max}ms").as_bytes()).unwrap(), max);
        let over = format!("{}ms", max + 1);
        for bad in [
            "",
            "0s",
            "0ms",
            "30",
            "s",
            "1.5s",
            "-1s",
            "+1s",
            "1 s",
            "10d",
            "1S",
            "30s ",
            "1000000h",
            "9999999999999999ms",
            &over,
        ] {
            assert!(parse_ttl(bad.as_bytes()).is_err(), "{bad:?}");
        }
        let p = put_query(Some("ttl=30s&cas=4")).unwrap();
        assert_eq!((p.cas, p.ttl_ms), (Some(4), Some(30_000)));
        assert_eq!(put_query(None).unwrap(), PutParams::default());
        assert!(put_query(Some("ttl=1s&ttl=2s")).is_err());
    }
}
