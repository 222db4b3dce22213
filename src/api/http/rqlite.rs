//! rqlite's JSON data API shapes, decoded and encoded: what `POST /db/execute`,
//! `GET|POST /db/query` and `POST /db/request` accept and answer (the handlers are in
//! [`super::sql`]).
//!
//! Everything here is a pure function over bytes and strings, fuzzed by the seeded test
//! `fuzz_decoders` below and by the cargo-fuzz target `fuzz/fuzz_targets/rqlite_request.rs`.
//!
//! **Requests.** A body is a JSON array of statements; each is a string (SQL without
//! parameters) or an array `[sql, params...]`: positional parameters are JSON values after
//! the SQL, named ones one or more objects after it (`["... :name", {"name": 1}]`; a name
//! may also be given with its `:`/`@`/`$` prefix). A JSON number that is an integer (no
//! fraction, no exponent, within i64) binds as INTEGER, any other number as REAL; `true`
//! and `false` bind as the integers 1 and 0; `null` as NULL; a string as TEXT, except that,
//! as in rqlite, a string of the form `x'0A1B'` (a SQL blob literal) binds as a BLOB; an
//! array of integers 0..=255 binds as a BLOB. A body sent as `Content-Type: text/plain` is
//! one SQL statement. Anything else (not an array, no statements, an object as a
//! positional parameter, positional and named parameters in one statement, a name given
//! twice) is refused as a whole with a 400: nothing runs.
//!
//! **Query string.** Flags are `?flag`, `?flag=true` or `?flag=false`: `transaction`,
//! `timings`, `associative`, `pretty` (4-space indented), `blob_array` (BLOBs as arrays of
//! byte values instead of base64). `level=none|weak|linearizable|strong|auto` on reads:
//! `none` is [`ReadLevel::Stale`] (this node's applied state, no round trip), every other
//! level [`ReadLevel::Linearizable`] (paxosdb's reads are linearizable or explicitly stale;
//! rqlite's `weak` — "probably current" — is served linearizably). With `level=none`,
//! `freshness=DURATION` bounds the staleness ([`ReadLevel::Fresh`]): a node that is not the
//! leader serves the read only if it heard from the leader within that time, and with
//! `freshness_strict` also only once it applied every entry it knows to be decided;
//! otherwise it answers 503 (`unavailable`, "stale read: …"), and the client may try
//! another node. With any other level `freshness` has no effect (a linearizable read is
//! fresher than any bound), as in rqlite. `redirect` and
//! `noleader` are accepted and have no effect (every node forwards to the leader itself, so
//! there is nothing to redirect). `timeout`, `db_timeout` and `linearizable_timeout` (Go
//! durations such as `5s` or `1m30s`) and `retries` (a count) are checked and then have no
//! effect: the node's own `--request-timeout-ms` bounds a request, and SQL execution is not
//! interrupted. `q` carries the SQL of `GET /db/query`. Every other parameter, such as
//! rqlite's `queue`, `wait`, `raft_index`, `qualify_columns` or `norwrandom`, is refused
//! with a 400 naming it, rather than silently ignored.
//!
//! **Results.** `{"results": [...]}` (plus `"time"`, seconds, with `timings`), one entry per
//! statement, in the shapes of rqlite: a statement that failed is `{"error": "..."}`; one
//! that returned rows (any statement with result columns) is `{"columns": [...], "types":
//! [...], "values": [[...]...]}` (`values` left out when there are no rows), or with
//! `associative` `{"types": {col: type}, "rows": [{col: value}...]}`; any other is
//! `{"last_insert_id": n, "rows_affected": n}`, each left out when zero as rqlite does
//! (`/db/request` with `associative` adds `"rows": null` so it can be told from a query).
//! `types` are the declared column types, lower case; where a column has none (an
//! expression), the storage class of its value in the first row, as rqlite reports it.
//! Values: INTEGER a JSON integer; REAL a JSON number always written with a fraction or
//! an exponent (`1.0`; rqlite writes `1`), and `"Infinity"`/`"-Infinity"` for infinite
//! values, which JSON numbers cannot carry; TEXT a string; BLOB standard base64 (or an
//! array of byte values with `blob_array`); NULL `null`; an INTEGER in a column declared
//! `BOOLEAN` is `true`/`false`, as rqlite's SQLite driver gives it. Per-statement `time` is
//! not reported (the SQL service does not measure statements).
//!
//! **Errors** of a whole request are rqlite-like: `{"error": "message", "code": "..."}`
//! with the HTTP status of the common mapping ([`super::error`]).
//!
//! # Invariants
//!
//! - A request that does not decode is refused whole, before anything runs.
//! - Decoding never panics on any input, and its memory is bounded by the body's size.
//! - [`is_read_only`] errs only towards "may write": a statement it calls read-only is a
//!   lone SELECT, VALUES or EXPLAIN, or a WITH that names no INSERT, UPDATE, DELETE or
//!   REPLACE (the query path refuses writes anyway; a read called a write only costs a
//!   trip through the log and the readwrite role).

use super::decode::parse_query;
use super::error::ApiError;
use crate::sql::{Params, ReadLevel, Statement, StatementResult, Value};
use base64::Engine as _;
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use serde_json::Value as Json;

/// The three rqlite data endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Execute,
    Query,
    Request,
}

/// What the query string asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct SqlOptions {
    pub transaction: bool,
    pub timings: bool,
    pub associative: bool,
    pub pretty: bool,
    pub blob_array: bool,
    pub level: ReadLevel,
    /// The SQL of `GET /db/query?q=`.
    pub q: Option<String>,
}

const COMMON: &[&str] = &[
    "transaction",
    "timings",
    "associative",
    "pretty",
    "blob_array",
    "redirect",
    "noleader",
    "timeout",
    "db_timeout",
    "linearizable_timeout",
    "retries",
];
const READS: &[&str] = &["level", "freshness", "freshness_strict"];

fn flag(name: &str, v: &[u8]) -> Result<bool, ApiError> {
    match v {
        b"" | b"true" | b"1" => Ok(true),
        b"false" | b"0" => Ok(false),
        _ => Err(ApiError::bad(format!(
            "{name} is a flag: give it as ?{name}, ?{name}=true or ?{name}=false"
        ))),
    }
}

/// Decodes the query string of `endpoint` (`get`: a `GET /db/query`, whose SQL is `q`).
pub fn options(query: Option<&str>, endpoint: Endpoint, get: bool) -> Result<SqlOptions, ApiError> {
    let mut allowed: Vec<&str> = COMMON.to_vec();
    if endpoint != Endpoint::Execute {
        allowed.extend_from_slice(READS);
    }
    if get {
        allowed.push("q");
    }
    let mut o = SqlOptions {
        transaction: false,
        timings: false,
        associative: false,
        pretty: false,
        blob_array: false,
        level: ReadLevel::Linearizable,
        q: None,
    };
    let (mut freshness, mut strict) = (None, false);
    for (name, v) in parse_query(query, &allowed)? {
        match name.as_str() {
            "transaction" => o.transaction = flag(&name, &v)?,
            "timings" => o.timings = flag(&name, &v)?,
            "associative" => o.associative = flag(&name, &v)?,
            "pretty" => o.pretty = flag(&name, &v)?,
            "blob_array" => o.blob_array = flag(&name, &v)?,
            "redirect" | "noleader" => {
                flag(&name, &v)?;
            }
            "timeout" | "db_timeout" | "linearizable_timeout" => {
                if go_duration(&v).is_none() {
                    return Err(ApiError::bad(format!(
                        "{name} must be a duration such as 500ms, 5s or 1m30s"
                    )));
                }
            }
            "retries" => {
                super::decode::parse_u64("retries", &v)?;
            }
            "level" => {
                o.level = match v.to_ascii_lowercase().as_slice() {
                    b"none" => ReadLevel::Stale,
                    b"weak" | b"linearizable" | b"strong" | b"auto" => ReadLevel::Linearizable,
                    _ => {
                        return Err(ApiError::bad(
                            "level must be none (stale: this node's applied state) or weak, \
                             linearizable, strong or auto (all served linearizably)",
                        ))
                    }
                }
            }
            "freshness" => match go_duration(&v) {
                Some((false, d)) => freshness = Some(d),
                _ => {
                    return Err(ApiError::bad(
                        "freshness must be a duration such as 500ms, 5s or 1m30s",
                    ))
                }
            },
            "freshness_strict" => strict = flag(&name, &v)?,
            "q" => {
                let sql = String::from_utf8(v).map_err(|_| ApiError::bad("q must be UTF-8 SQL"))?;
                if sql.trim().is_empty() {
                    return Err(ApiError::bad("q must not be empty"));
                }
                o.q = Some(sql);
            }
            _ => unreachable!("parse_query allows only the names listed"),
        }
    }
    // As in rqlite, a freshness bound applies to `level=none` only (every other level is
    // linearizable, which is fresher than any bound).
    if let (ReadLevel::Stale, Some(max)) = (o.level, freshness) {
        let max_ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
        o.level = ReadLevel::Fresh { max_ms, strict };
    }
    if get && o.q.is_none() {
        return Err(ApiError::bad(
            "GET /db/query needs the SQL in q=, e.g. /db/query?q=SELECT%201 (or POST a JSON array)",
        ));
    }
    Ok(o)
}

/// A Go duration as rqlite takes it: `0`, or an optional sign and numbers (with an
/// optional fraction) each followed by a unit (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`).
/// Returns whether it is negative, and its length.
fn go_duration(v: &[u8]) -> Option<(bool, std::time::Duration)> {
    let s = std::str::from_utf8(v).ok()?;
    let negative = s.starts_with('-');
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    if s == "0" {
        return Some((negative, std::time::Duration::ZERO));
    }
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    let mut secs = 0f64;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..digits];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return None;
        }
        let n: f64 = number.parse().ok()?;
        rest = &rest[digits..];
        // Longest unit names first: "ms" before "m" and "s".
        let (unit, scale) = [
            ("ns", 1e-9),
            ("us", 1e-6),
            ("µs", 1e-6),
            ("ms", 1e-3),
            ("s", 1.0),
            ("m", 60.0),
            ("h", 3600.0),
        ]
        .into_iter()
        .find(|(u, _)| rest.starts_with(u))?;
        secs += n * scale;
        rest = &rest[unit.len()..];
    }
    std::time::Duration::try_from_secs_f64(secs)
        .ok()
        .map(|d| (negative, d))
}

fn invalid(what: impl std::fmt::Display) -> ApiError {
    ApiError::bad(format!("invalid request: {what}; nothing was run"))
}

/// Decodes a request body: a JSON array of statements, or (`text_plain`) one SQL string.
pub fn statements(body: &[u8], text_plain: bool) -> Result<Vec<Statement>, ApiError> {
    if text_plain {
        let sql = std::str::from_utf8(body).map_err(|_| invalid("the SQL is not UTF-8"))?;
        if sql.trim().is_empty() {
            return Err(invalid("no statements"));
        }
        return Ok(vec![Statement::new(sql)]);
    }
    let doc: Json = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad(format!("invalid JSON body: {e}; nothing was run")))?;
    let Json::Array(items) = doc else {
        return Err(invalid(
            "the body must be a JSON array of statements, e.g. [\"SELECT 1\"]",
        ));
    };
    if items.is_empty() {
        return Err(invalid("no statements"));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| statement(item).map_err(|e| invalid(format!("statement {i}: {e}"))))
        .collect()
}

fn statement(item: Json) -> Result<Statement, String> {
    let parts = match item {
        Json::String(sql) => return Ok(Statement::new(sql)),
        Json::Array(parts) => parts,
        _ => return Err("a statement is a SQL string or an array [sql, parameters...]".into()),
    };
    let mut parts = parts.into_iter();
    let Some(Json::String(sql)) = parts.next() else {
        return Err("a statement array starts with its SQL string".into());
    };
    let mut positional = Vec::new();
    let mut named: Vec<(String, Value)> = Vec::new();
    for p in parts {
        match p {
            Json::Object(m) => {
                for (k, v) in m {
                    let name = k.strip_prefix([':', '@', '$']).unwrap_or(&k).to_string();
                    if name.is_empty() {
                        return Err("a parameter name must not be empty".into());
                    }
                    if named.iter().any(|(n, _)| *n == name) {
                        return Err(format!("parameter {name:?} is given twice"));
                    }
                    named.push((name, value(v)?));
                }
            }
            v => positional.push(value(v)?),
        }
    }
    let params = match (positional.is_empty(), named.is_empty()) {
        (true, true) => Params::None,
        (false, true) => Params::Positional(positional),
        (true, false) => Params::Named(named),
        (false, false) => {
            return Err("positional and named parameters cannot be mixed in one statement".into())
        }
    };
    Ok(Statement { sql, params })
}

/// One parameter value (see the module doc for the mapping).
fn value(v: Json) -> Result<Value, String> {
    Ok(match v {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Integer(b as i64),
        Json::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Value::Integer(i),
            (None, Some(f)) => Value::Real(f),
            (None, None) => return Err(format!("number {n} is out of range")),
        },
        Json::String(s) => match blob_literal(&s) {
            Some(b) => Value::Blob(b),
            None => Value::Text(s),
        },
        Json::Array(items) => Value::Blob(
            items
                .iter()
                .map(|e| {
                    e.as_u64()
                        .filter(|b| *b <= 255)
                        .map(|b| b as u8)
                        .ok_or("a BLOB given as an array holds integers 0 to 255")
                })
                .collect::<Result<_, _>>()?,
        ),
        Json::Object(_) => {
            return Err("a parameter object is only allowed as the set of named parameters".into())
        }
    })
}

/// `x'0a1B'` (surrounding spaces allowed, as rqlite does) as bytes; `None` if `s` is not
/// a blob literal.
pub fn blob_literal(s: &str) -> Option<Vec<u8>> {
    let t = s.trim();
    let hex = t
        .strip_prefix(['x', 'X'])?
        .strip_prefix('\'')?
        .strip_suffix('\'')?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    hex.as_bytes()
        .chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

// ---- read-only classification -------------------------------------------------------

/// The SQL with comments removed and string literals and quoted identifiers blanked, so
/// that keywords can be looked for; `None` if a literal or comment is left open.
fn code_only(sql: &str) -> Option<String> {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                out.push(' ');
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let end = sql[i + 2..].find("*/")?;
                i += 2 + end + 2;
                out.push(' ');
            }
            q @ (b'\'' | b'"' | b'`' | b'[') => {
                let close = if q == b'[' { b']' } else { q };
                i += 1;
                loop {
                    let c = *b.get(i)?;
                    i += 1;
                    if c == close {
                        // A doubled quote inside a literal is an escaped quote.
                        if close != b']' && b.get(i) == Some(&close) {
                            i += 1;
                            continue;
                        }
                        break;
                    }
                }
                out.push_str(" _ ");
            }
            c => {
                out.push(c as char);
                i += 1;
            }
        }
        // `c as char` keeps ASCII; multi-byte characters outside literals only occur in
        // identifiers, which are not keywords, so their exact form does not matter.
    }
    Some(out)
}

/// Whether `sql` is certainly a read: one statement that starts with SELECT, VALUES or
/// EXPLAIN, or with WITH and names no INSERT, UPDATE, DELETE or REPLACE. Anything else
/// (including PRAGMA, which may write) counts as a possible write.
pub fn is_read_only(sql: &str) -> bool {
    let Some(code) = code_only(sql) else {
        return false;
    };
    // One statement only: nothing but blanks after a first `;`.
    if let Some(pos) = code.find(';') {
        if !code[pos + 1..].trim().is_empty() {
            return false;
        }
    }
    let words: Vec<String> = code
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .map(|w| w.to_ascii_uppercase())
        .collect();
    match words.first().map(String::as_str) {
        Some("SELECT" | "VALUES" | "EXPLAIN") => true,
        Some("WITH") => !words
            .iter()
            .any(|w| matches!(w.as_str(), "INSERT" | "UPDATE" | "DELETE" | "REPLACE")),
        _ => false,
    }
}

// ---- results ------------------------------------------------------------------------

/// How results are rendered.
#[derive(Clone, Copy, Debug)]
pub struct Render {
    pub associative: bool,
    pub blob_array: bool,
    /// `/db/request`: an associative execute result carries `"rows": null`.
    pub unified: bool,
}

struct Cell<'a> {
    v: &'a Value,
    boolean: bool,
    blob_array: bool,
}

impl Serialize for Cell<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.v {
            Value::Null => s.serialize_unit(),
            Value::Integer(i) if self.boolean => s.serialize_bool(*i != 0),
            Value::Integer(i) => s.serialize_i64(*i),
            Value::Real(f) if f.is_finite() => s.serialize_f64(*f),
            Value::Real(f) if *f > 0.0 => s.serialize_str("Infinity"),
            Value::Real(f) if *f < 0.0 => s.serialize_str("-Infinity"),
            Value::Real(_) => s.serialize_unit(),
            Value::Text(t) => s.serialize_str(t),
            Value::Blob(b) if self.blob_array => {
                let mut seq = s.serialize_seq(Some(b.len()))?;
                for x in b {
                    seq.serialize_element(x)?;
                }
                seq.end()
            }
            Value::Blob(b) => s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b)),
        }
    }
}

fn storage_class(v: &Value) -> &'static str {
    match v {
        Value::Null => "",
        Value::Integer(_) => "integer",
        Value::Real(_) => "real",
        Value::Text(_) => "text",
        Value::Blob(_) => "blob",
    }
}

struct Item<'a> {
    r: &'a StatementResult,
    how: Render,
}

impl Item<'_> {
    /// The column types: declared, or (none declared) the first row's storage class.
    fn types(&self) -> Vec<&str> {
        let first = self.r.rows.first();
        self.r
            .types
            .iter()
            .enumerate()
            .map(
                |(i, t)| match (t.as_str(), first.and_then(|row| row.get(i))) {
                    ("", Some(v)) => storage_class(v),
                    (t, _) => t,
                },
            )
            .chain(std::iter::repeat_n(
                "",
                self.r.columns.len().saturating_sub(self.r.types.len()),
            ))
            .collect()
    }

    fn cell<'v>(&self, v: &'v Value, ty: &str) -> Cell<'v> {
        Cell {
            v,
            boolean: ty == "boolean",
            blob_array: self.how.blob_array,
        }
    }
}

struct Row<'a, 'b> {
    item: &'b Item<'a>,
    types: &'b [&'b str],
    row: &'a [Value],
}

impl Serialize for Row<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let cols = &self.item.r.columns;
        if self.item.how.associative {
            // A name that occurs twice keeps its last value (as a JSON object must).
            let mut m = s.serialize_map(None)?;
            for (i, c) in cols.iter().enumerate() {
                if cols[i + 1..].contains(c) {
                    continue;
                }
                let v = self.row.get(i).unwrap_or(&Value::Null);
                m.serialize_entry(
                    c,
                    &self.item.cell(v, self.types.get(i).copied().unwrap_or("")),
                )?;
            }
            m.end()
        } else {
            let mut seq = s.serialize_seq(Some(self.row.len()))?;
            for (i, v) in self.row.iter().enumerate() {
                seq.serialize_element(
                    &self.item.cell(v, self.types.get(i).copied().unwrap_or("")),
                )?;
            }
            seq.end()
        }
    }
}

struct Rows<'a, 'b> {
    item: &'b Item<'a>,
    types: &'b [&'b str],
}

impl Serialize for Rows<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.item.r.rows.len()))?;
        for row in &self.item.r.rows {
            seq.serialize_element(&Row {
                item: self.item,
                types: self.types,
                row,
            })?;
        }
        seq.end()
    }
}

struct AssocTypes<'a> {
    cols: &'a [String],
    types: &'a [&'a str],
}

impl Serialize for AssocTypes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        for (i, c) in self.cols.iter().enumerate() {
            if !self.cols[i + 1..].contains(c) {
                m.serialize_entry(c, self.types.get(i).copied().unwrap_or(""))?;
            }
        }
        m.end()
    }
}

impl Serialize for Item<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.r;
        let mut m = s.serialize_map(None)?;
        if let Some(e) = &r.error {
            m.serialize_entry("error", e)?;
        } else if !r.columns.is_empty() {
            let types = self.types();
            if self.how.associative {
                m.serialize_entry(
                    "types",
                    &AssocTypes {
                        cols: &r.columns,
                        types: &types,
                    },
                )?;
                m.serialize_entry(
                    "rows",
                    &Rows {
                        item: self,
                        types: &types,
                    },
                )?;
            } else {
                m.serialize_entry("columns", &r.columns)?;
                m.serialize_entry("types", &types)?;
                if !r.rows.is_empty() {
                    m.serialize_entry(
                        "values",
                        &Rows {
                            item: self,
                            types: &types,
                        },
                    )?;
                }
            }
        } else {
            if let Some(id) = r.last_insert_id.filter(|id| *id != 0) {
                m.serialize_entry("last_insert_id", &id)?;
            }
            if let Some(n) = r.rows_affected.filter(|n| *n != 0) {
                m.serialize_entry("rows_affected", &n)?;
            }
            if self.how.associative && self.how.unified {
                m.serialize_entry("rows", &())?;
            }
        }
        m.end()
    }
}

struct Body<'a> {
    results: &'a [StatementResult],
    how: Render,
    time: Option<f64>,
}

impl Serialize for Body<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_key("results")?;
        m.serialize_value(&ItemsOf(self.results, self.how))?;
        if let Some(t) = self.time {
            m.serialize_entry("time", &t)?;
        }
        m.end()
    }
}

struct ItemsOf<'a>(&'a [StatementResult], Render);

impl Serialize for ItemsOf<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for r in self.0 {
            seq.serialize_element(&Item { r, how: self.1 })?;
        }
        seq.end()
    }
}

/// The response body for `results` (`time`: seconds, with `timings`); `pretty` indents by
/// four spaces, as rqlite does.
pub fn encode(
    results: &[StatementResult],
    how: Render,
    time: Option<f64>,
    pretty: bool,
) -> Vec<u8> {
    let body = Body { results, how, time };
    let mut out = Vec::new();
    let written = if pretty {
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
        let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
        body.serialize(&mut ser)
    } else {
        body.serialize(&mut serde_json::Serializer::new(&mut out))
    };
    // Serializing into memory fails only on a map key that is not a string; every key
    // here is one.
    written.expect("results serialize");
    out
}

/// A whole-request error in rqlite's shape: `{"error": message, "code": code}`.
pub fn error_body(e: &ApiError) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "error": e.message, "code": e.code }))
        .expect("error serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn st(sql: &str, params: Params) -> Statement {
        Statement {
            sql: sql.into(),
            params,
        }
    }

    #[test]
    fn decodes_rqlite_bodies() {
        let body = br#"["CREATE TABLE t (x)", ["INSERT INTO t VALUES(?, ?, ?, ?, ?)", 1, 1.5, "a", null, true],
            ["INSERT INTO t VALUES(:a, @b)", {"a": 2}, {"@b": 2.0}], ["SELECT 1"]]"#;
        let got = statements(body, false).unwrap();
        assert_eq!(
            got,
            vec![
                Statement::new("CREATE TABLE t (x)"),
                st(
                    "INSERT INTO t VALUES(?, ?, ?, ?, ?)",
                    Params::Positional(vec![
                        Value::Integer(1),
                        Value::Real(1.5),
                        Value::Text("a".into()),
                        Value::Null,
                        Value::Integer(1),
                    ])
                ),
                st(
                    "INSERT INTO t VALUES(:a, @b)",
                    Params::Named(vec![
                        ("a".into(), Value::Integer(2)),
                        ("b".into(), Value::Real(2.0)),
                    ])
                ),
                Statement::new("SELECT 1"),
            ]
        );
    }

    #[test]
    fn numbers_bind_as_rqlite_binds_them() {
        let one = |j: &str| match &statements(format!("[[\"?\", {j}]]").as_bytes(), false).unwrap()
            [0]
        .params
        {
            Params::Positional(v) => v[0].clone(),
            p => panic!("{p:?}"),
        };
        assert_eq!(one("7"), Value::Integer(7));
        assert_eq!(one("-9223372036854775808"), Value::Integer(i64::MIN));
        assert_eq!(one("7.0"), Value::Real(7.0));
        assert_eq!(one("1e3"), Value::Real(1000.0));
        // Beyond i64: rqlite falls back to a float, and so do we.
        assert_eq!(
            one("9223372036854775808"),
            Value::Real(9.223372036854776e18)
        );
        assert_eq!(one("false"), Value::Integer(0));
        assert_eq!(one("\"x'00FF'\""), Value::Blob(vec![0, 255]));
        assert_eq!(one("\" X'' \""), Value::Blob(vec![]));
        assert_eq!(one("\"x'0'\""), Value::Text("x'0'".into()));
        assert_eq!(one("\"x'zz'\""), Value::Text("x'zz'".into()));
        assert_eq!(one("[1, 2, 255]"), Value::Blob(vec![1, 2, 255]));
    }

    #[test]
    fn refuses_bad_bodies_whole() {
        for bad in [
            "",
            "{}",
            "[]",
            "\"SELECT 1\"",
            "[1]",
            "[[]]",
            "[[1, 2]]",
            "[[\"?\", {\"a\": {}}]]",
            "[[\"?\", [256]]]",
            "[[\"?\", [-1]]]",
            "[[\"?\", [1.5]]]",
            "[[\"?\", 1, {\"a\": 1}]]",
            "[[\"?\", {\"a\": 1}, {\":a\": 2}]]",
            "[[\"?\", {\"\": 1}]]",
            "[\"SELECT 1\", 2]",
            "[\"SELECT 1\"",
            "[\"SELECT 1\"] x",
        ] {
            let e = statements(bad.as_bytes(), false).unwrap_err();
            assert_eq!(e.status, 400, "{bad}: {e:?}");
            assert!(
                e.message.contains("nothing was run"),
                "{bad}: {}",
                e.message
            );
        }
        assert_eq!(
            statements(b"SELECT 1; SELECT 2", true).unwrap(),
            vec![Statement::new("SELECT 1; SELECT 2")]
        );
        assert!(statements(b"  ", true).is_err());
    }

    #[test]
    fn options_are_strict() {
        let o = options(
            Some("transaction&timings=true&pretty&level=none&redirect"),
            Endpoint::Request,
            false,
        )
        .unwrap();
        assert!(o.transaction && o.timings && o.pretty && !o.associative);
        assert_eq!(o.level, ReadLevel::Stale);
        for l in ["weak", "strong", "linearizable", "auto", "STRONG"] {
            let o = options(Some(&format!("level={l}")), Endpoint::Query, false).unwrap();
            assert_eq!(o.level, ReadLevel::Linearizable, "{l}");
        }
        let o = options(Some("q=SELECT+1%2C%202&associative"), Endpoint::Query, true).unwrap();
        assert_eq!(o.q.as_deref(), Some("SELECT 1, 2"));
        assert!(o.associative);
        assert_eq!(
            options(None, Endpoint::Execute, false).unwrap().level,
            ReadLevel::Linearizable
        );
        for (q, ep, get) in [
            ("level=eventual", Endpoint::Query, false),
            ("level=none", Endpoint::Execute, false),
            ("freshness=1s", Endpoint::Execute, false),
            ("freshness=-1s", Endpoint::Query, false),
            ("freshness=soon", Endpoint::Query, false),
            ("freshness_strict=maybe", Endpoint::Request, false),
            ("queue", Endpoint::Execute, false),
            ("raft_index", Endpoint::Execute, false),
            ("timeout=5", Endpoint::Execute, false),
            ("retries=-1", Endpoint::Execute, false),
            ("transaction=yes", Endpoint::Execute, false),
            ("transaction&transaction", Endpoint::Execute, false),
            ("q=SELECT+1", Endpoint::Query, false),
            ("", Endpoint::Query, true),
            ("q=", Endpoint::Query, true),
            ("q=%ff", Endpoint::Query, true),
        ] {
            let e = options(Some(q), ep, get).unwrap_err();
            assert_eq!(e.status, 400, "{q}");
        }
    }

    #[test]
    fn freshness_bounds_stale_reads_only() {
        let level = |q| options(Some(q), Endpoint::Query, false).unwrap().level;
        assert_eq!(
            level("level=none&freshness=1.5s&freshness_strict"),
            ReadLevel::Fresh {
                max_ms: 1500,
                strict: true
            }
        );
        assert_eq!(
            level("freshness=1m30s&level=none"),
            ReadLevel::Fresh {
                max_ms: 90_000,
                strict: false
            }
        );
        // A linearizable read is fresher than any bound.
        assert_eq!(level("freshness=1s"), ReadLevel::Linearizable);
        assert_eq!(level("level=strong&freshness=1s"), ReadLevel::Linearizable);
        // Strict without a bound changes nothing.
        assert_eq!(level("level=none&freshness_strict"), ReadLevel::Stale);
    }

    #[test]
    fn classifies_reads_conservatively() {
        for r in [
            "SELECT * FROM t",
            "  select 1;",
            "-- note\nSELECT 1",
            "/* c */ VALUES (1)",
            "EXPLAIN INSERT INTO t VALUES (1)",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "SELECT 'INSERT; DELETE' FROM \"update\"",
        ] {
            assert!(is_read_only(r), "{r}");
        }
        for w in [
            "INSERT INTO t VALUES (1)",
            "WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x",
            "SELECT 1; DELETE FROM t",
            "PRAGMA user_version = 3",
            "CREATE TABLE t (x)",
            "SELECT 'open",
            "/* open",
            "",
            "BEGIN",
        ] {
            assert!(!is_read_only(w), "{w}");
        }
    }

    fn render(results: &[StatementResult], associative: bool, unified: bool) -> Json {
        let how = Render {
            associative,
            blob_array: false,
            unified,
        };
        serde_json::from_slice(&encode(results, how, None, false)).unwrap()
    }

    fn rows_result() -> StatementResult {
        StatementResult {
            columns: vec![
                "id".into(),
                "name".into(),
                "n".into(),
                "b".into(),
                "ok".into(),
            ],
            types: vec![
                "integer".into(),
                "text".into(),
                "".into(),
                "blob".into(),
                "boolean".into(),
            ],
            rows: vec![
                vec![
                    Value::Integer(1),
                    Value::Text("fiona".into()),
                    Value::Real(1.0),
                    Value::Blob(vec![0, 1, 2]),
                    Value::Integer(1),
                ],
                vec![
                    Value::Integer(2),
                    Value::Null,
                    Value::Real(f64::INFINITY),
                    Value::Null,
                    Value::Integer(0),
                ],
            ],
            ..Default::default()
        }
    }

    #[test]
    fn encodes_rqlite_result_shapes() {
        let exec = StatementResult {
            last_insert_id: Some(3),
            rows_affected: Some(1),
            ..Default::default()
        };
        let create = StatementResult {
            last_insert_id: Some(0),
            rows_affected: Some(0),
            ..Default::default()
        };
        let failed = StatementResult {
            error: Some("no such table: x".into()),
            ..Default::default()
        };
        let empty = StatementResult {
            columns: vec!["x".into()],
            types: vec!["".into()],
            ..Default::default()
        };
        let all = [exec, create, failed, rows_result(), empty];
        assert_eq!(
            render(&all, false, false),
            json!({"results": [
                {"last_insert_id": 3, "rows_affected": 1},
                {},
                {"error": "no such table: x"},
                {"columns": ["id", "name", "n", "b", "ok"],
                 "types": ["integer", "text", "real", "blob", "boolean"],
                 "values": [[1, "fiona", 1.0, "AAEC", true], [2, null, "Infinity", null, false]]},
                {"columns": ["x"], "types": [""]},
            ]})
        );
        assert_eq!(
            render(&all, true, true),
            json!({"results": [
                {"last_insert_id": 3, "rows_affected": 1, "rows": null},
                {"rows": null},
                {"error": "no such table: x"},
                {"types": {"id": "integer", "name": "text", "n": "real", "b": "blob", "ok": "boolean"},
                 "rows": [{"id": 1, "name": "fiona", "n": 1.0, "b": "AAEC", "ok": true},
                          {"id": 2, "name": null, "n": "Infinity", "b": null, "ok": false}]},
                {"types": {"x": ""}, "rows": []},
            ]})
        );
        // A REAL keeps its fraction, so a client can tell it from an INTEGER.
        let text = String::from_utf8(encode(
            &all[3..4],
            Render {
                associative: false,
                blob_array: true,
                unified: false,
            },
            Some(0.5),
            false,
        ))
        .unwrap();
        assert!(text.contains("[1,\"fiona\",1.0,[0,1,2],true]"), "{text}");
        assert!(text.ends_with(",\"time\":0.5}"), "{text}");
        let pretty = String::from_utf8(encode(
            &all[..1],
            Render {
                associative: false,
                blob_array: false,
                unified: false,
            },
            None,
            true,
        ))
        .unwrap();
        assert!(
            pretty.contains("\n    \"results\": [\n        {"),
            "{pretty}"
        );
    }

    #[test]
    fn error_body_is_rqlite_like() {
        let b: Json =
            serde_json::from_slice(&error_body(&ApiError::bad("invalid JSON body"))).unwrap();
        assert_eq!(
            b,
            json!({"error": "invalid JSON body", "code": "invalid_input"})
        );
    }

    /// Seeded random bodies and query strings: decoding never panics, and what decodes
    /// holds at least one statement.
    #[test]
    fn fuzz_decoders() {
        use rand::{Rng, SeedableRng};
        const PIECES: &[&str] = &[
            "[",
            "]",
            "{",
            "}",
            ",",
            ":",
            "\"",
            "\"SELECT 1\"",
            "\"?\"",
            "1",
            "-1",
            "1.5",
            "1e999",
            "null",
            "true",
            "\"x'00'\"",
            "\"a\"",
            "[256]",
            "\\",
            "\\u0000",
            "é",
            " ",
            "&",
            "=",
            "level",
            "none",
            "q",
            "transaction",
            "%",
            "%zz",
            "freshness",
            "+",
        ];
        let iters = std::env::var("PAXOSDB_FUZZ_ITERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20_000u64);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..iters {
            let n = rng.gen_range(0..12);
            let s: String = (0..n)
                .map(|_| PIECES[rng.gen_range(0..PIECES.len())])
                .collect();
            if let Ok(v) = statements(s.as_bytes(), rng.gen_bool(0.1)) {
                assert!(!v.is_empty(), "{s}");
            }
            let _ = options(Some(&s), Endpoint::Query, rng.gen_bool(0.5));
            let _ = is_read_only(&s);
        }
    }
}
