//! Making a SQL write deterministic before it enters the log.
//!
//! Every replica runs the same statements; a statement whose result depends on the node
//! that runs it (a random number, the clock) would make replicas differ. The *proposing*
//! node therefore calls [`prepare`] on every write request before proposing it, with its
//! clock and a random source, and the log carries the rewritten text.
//!
//! # The rule
//!
//! Rewritten to literal values (outside string literals, quoted identifiers and comments,
//! which are never touched):
//!
//! - `random()` → a random 64-bit integer literal;
//! - `randomblob(N)` with a literal `N` (at most [`MAX_RANDOMBLOB`]) → a blob literal of
//!   `N` random bytes (`N < 1` gives one byte, as SQLite does);
//! - `CURRENT_TIMESTAMP`, `CURRENT_DATE`, `CURRENT_TIME` → the proposer's UTC time as
//!   `'YYYY-MM-DD HH:MM:SS'`, `'YYYY-MM-DD'`, `'HH:MM:SS'`;
//! - the time value `'now'` of `date`, `time`, `datetime`, `julianday`, `unixepoch`,
//!   `strftime` (its second argument) and `timediff` (both), and the implied `'now'` of a
//!   call without a time value (`date()`, `strftime('%s')`) → the proposer's UTC time as
//!   `'YYYY-MM-DD HH:MM:SS.SSS'`.
//!
//! Refused with a clear error ([`crate::Error::InvalidInput`], nothing is proposed):
//!
//! - any of the above inside `CREATE` or `ALTER` statements (except `CREATE TABLE ... AS
//!   SELECT`, which runs once): a `DEFAULT CURRENT_TIMESTAMP`, `DEFAULT (random())`, a
//!   `CHECK` using `'now'`, a trigger or a view using them would be evaluated later, on
//!   each replica, at a different time;
//! - `randomblob(?)` or any length that is not a literal number, and lengths over
//!   [`MAX_RANDOMBLOB`];
//! - the `'localtime'` and `'utc'` modifiers (they depend on the node's time zone);
//! - a statement calling a date/time function with a parameter whose value is `'now'`.
//!
//! What the text cannot show (a `'now'` reaching a date function from a column value at
//! apply time, e.g. `INSERT INTO t SELECT datetime(c) FROM u` where `c` holds `'now'`) is
//! caught by the second line of defence, [`guard_apply_connection`]: on the apply
//! connection `random()`, `randomblob()`, `total_changes()` and `CURRENT_TIMESTAMP`/
//! `_DATE`/`_TIME` fail loudly, and the date/time functions fail on `'now'`,
//! `'localtime'`, `'utc'` or a missing time value (otherwise they compute exactly what
//! SQLite's own do). Such a statement fails identically on every replica.
//!
//! # Invariants
//!
//! - [`prepare`] changes nothing but the rewritten tokens: the rest of the text is kept
//!   byte for byte.
//! - [`prepare`] never panics on any input; the result is within [`SqlLimits`].

use super::lexer::{tokenize, Kind, Token};
use super::{Params, Request, SqlLimits, Value};
use crate::error::{Error, Result};
use rand::Rng;
use rusqlite::functions::{Context, FunctionFlags};
use rusqlite::types::ValueRef;
use rusqlite::Connection;

/// Largest `randomblob(N)` rewritten (bigger ones are refused).
pub const MAX_RANDOMBLOB: i64 = 64 * 1024;

/// Date and time functions whose time value may be `'now'`, with the positions of their
/// time-value arguments.
const TIME_FUNCS: &[(&str, &[usize])] = &[
    ("date", &[0]),
    ("time", &[0]),
    ("datetime", &[0]),
    ("julianday", &[0]),
    ("unixepoch", &[0]),
    ("strftime", &[1]),
    ("timediff", &[0, 1]),
];

/// Rewrites `req` (see the module docs) with the proposer's time `now_unix_ms`
/// (milliseconds since the Unix epoch, UTC) and random source `rng`.
pub fn prepare(req: Request, now_unix_ms: i64, rng: &mut impl Rng) -> Result<Request> {
    let limits = SqlLimits::default();
    limits.check_request(&req)?;
    let now = Now::at(now_unix_ms);
    let mut out = req;
    for (i, st) in out.statements.iter_mut().enumerate() {
        st.sql = rewrite(&st.sql, &st.params, &now, rng)
            .map_err(|why| Error::InvalidInput(format!("statement {i}: {why}")))?;
    }
    limits.check_request(&out)?;
    Ok(out)
}

/// The proposer's time, formatted the ways the rewrites need.
struct Now {
    date: String,
    time: String,
    millis: u32,
}

impl Now {
    fn at(unix_ms: i64) -> Now {
        let days = unix_ms.div_euclid(86_400_000);
        let ms = unix_ms.rem_euclid(86_400_000);
        let (y, m, d) = civil_from_days(days);
        let secs = ms / 1000;
        Now {
            date: format!("{y:04}-{m:02}-{d:02}"),
            time: format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60),
            millis: (ms % 1000) as u32,
        }
    }

    fn timestamp(&self) -> String {
        format!("'{} {}'", self.date, self.time)
    }

    fn precise(&self) -> String {
        format!("'{} {}.{:03}'", self.date, self.time, self.millis)
    }
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The value of a string literal token (without quotes, `''` unescaped).
fn string_value(t: &Token, sql: &str) -> String {
    let s = t.text(sql);
    let inner = s
        .strip_prefix('\'')
        .map(|r| r.strip_suffix('\'').unwrap_or(r))
        .unwrap_or(s);
    inner.replace("''", "'")
}

fn random_literal(v: i64) -> String {
    if v == i64::MIN {
        "(-9223372036854775807 - 1)".into()
    } else {
        format!("({v})")
    }
}

fn parse_int(s: &str) -> Option<i64> {
    let s = s.replace('_', "");
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => i64::from_str_radix(hex, 16).ok(),
        None => s.parse::<i64>().ok(),
    }
}

/// True for CREATE/ALTER statements other than `CREATE TABLE ... AS`.
fn is_schema_statement(sql: &str, sig: &[&Token]) -> bool {
    let first = match sig.first() {
        Some(t) => t,
        None => return false,
    };
    if first.is_word(sql, "alter") {
        return true;
    }
    if !first.is_word(sql, "create") {
        return false;
    }
    let mut k = 1;
    while sig
        .get(k)
        .is_some_and(|t| t.is_word(sql, "temp") || t.is_word(sql, "temporary"))
    {
        k += 1;
    }
    if !sig.get(k).is_some_and(|t| t.is_word(sql, "table")) {
        return true;
    }
    k += 1;
    if sig.get(k).is_some_and(|t| t.is_word(sql, "if")) {
        k += 3;
    }
    k += 1; // the name
    if sig.get(k).is_some_and(|t| t.is_punct(sql, ".")) {
        k += 2;
    }
    !sig.get(k).is_some_and(|t| t.is_word(sql, "as"))
}

/// The arguments of the call whose `(` is `sig[open]`: each a range of `sig` indexes,
/// and the index of the closing `)` (None when unbalanced).
fn call_args(sql: &str, sig: &[&Token], open: usize) -> (Vec<(usize, usize)>, Option<usize>) {
    let mut args = Vec::new();
    let mut depth = 0usize;
    let mut start = open + 1;
    for (k, t) in sig.iter().enumerate().skip(open) {
        if t.is_punct(sql, "(") {
            depth += 1;
        } else if t.is_punct(sql, ")") {
            depth -= 1;
            if depth == 0 {
                if k > start || !args.is_empty() {
                    args.push((start, k));
                }
                return (args, Some(k));
            }
        } else if depth == 1 && t.is_punct(sql, ",") {
            args.push((start, k));
            start = k + 1;
        }
    }
    (args, None)
}

fn rewrite(sql: &str, params: &Params, now: &Now, rng: &mut impl Rng) -> Result<String, String> {
    let toks = tokenize(sql);
    let sig: Vec<&Token> = toks.iter().filter(|t| t.significant()).collect();
    let schema = is_schema_statement(sql, &sig);
    let refuse_in_schema = |what: &str| -> Result<(), String> {
        if schema {
            return Err(format!(
                "{what} cannot be used in CREATE or ALTER statements (DEFAULT, CHECK, \
                 triggers, views): it would be evaluated later on each node and give each a \
                 different value; write the value explicitly, or set it in the INSERT"
            ));
        }
        Ok(())
    };
    // (start byte, end byte, replacement)
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    let mut calls_time = false;
    let mut k = 0;
    while k < sig.len() {
        let t = sig[k];
        let paren_next = sig.get(k + 1).is_some_and(|n| n.is_punct(sql, "("));
        if t.kind != Kind::Word {
            k += 1;
            continue;
        }
        let word = t.text(sql).to_ascii_lowercase();
        match word.as_str() {
            "random" if paren_next && sig.get(k + 2).is_some_and(|c| c.is_punct(sql, ")")) => {
                refuse_in_schema("random()")?;
                edits.push((t.start, sig[k + 2].end, random_literal(rng.gen())));
                k += 3;
                continue;
            }
            "randomblob" if paren_next => {
                refuse_in_schema("randomblob()")?;
                let (args, close) = call_args(sql, &sig, k + 1);
                let close = close.ok_or("randomblob( is not closed")?;
                let n = match args.as_slice() {
                    [(a, b)] => {
                        let text: String = sig[*a..*b].iter().map(|t| t.text(sql)).collect();
                        let literal = sig[*a..*b].iter().all(|t| {
                            t.kind == Kind::Number || t.is_punct(sql, "-") || t.is_punct(sql, "+")
                        });
                        literal.then(|| parse_int(&text)).flatten()
                    }
                    _ => None,
                };
                let n = n.ok_or(
                    "randomblob() needs a literal length, e.g. randomblob(16): the bytes are \
                     chosen by the node that proposes the write",
                )?;
                if n > MAX_RANDOMBLOB {
                    return Err(format!(
                        "randomblob({n}) is over the limit of {MAX_RANDOMBLOB} bytes"
                    ));
                }
                let mut bytes = vec![0u8; n.max(1) as usize];
                rng.fill(&mut bytes[..]);
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                edits.push((t.start, sig[close].end, format!("x'{hex}'")));
                k = close + 1;
                continue;
            }
            "current_timestamp" | "current_date" | "current_time" if !paren_next => {
                refuse_in_schema(&word.to_ascii_uppercase())?;
                let lit = match word.as_str() {
                    "current_timestamp" => now.timestamp(),
                    "current_date" => format!("'{}'", now.date),
                    _ => format!("'{}'", now.time),
                };
                edits.push((t.start, t.end, lit));
            }
            _ if paren_next => {
                if let Some((_, positions)) = TIME_FUNCS.iter().find(|(f, _)| *f == word) {
                    calls_time = true;
                    let (args, close) = call_args(sql, &sig, k + 1);
                    let close = close.ok_or_else(|| format!("{word}( is not closed"))?;
                    for (a, b) in &args {
                        if b - a == 1 && sig[*a].kind == Kind::String {
                            let v = string_value(sig[*a], sql);
                            if v.eq_ignore_ascii_case("localtime") || v.eq_ignore_ascii_case("utc")
                            {
                                return Err(format!(
                                    "the '{v}' modifier depends on the time zone of the node \
                                     that runs it; compute in UTC, or convert in the client"
                                ));
                            }
                        }
                    }
                    for &pos in *positions {
                        match args.get(pos) {
                            Some((a, b))
                                if b - a == 1
                                    && sig[*a].kind == Kind::String
                                    && string_value(sig[*a], sql).eq_ignore_ascii_case("now") =>
                            {
                                refuse_in_schema(&format!("{word}('now')"))?;
                                edits.push((sig[*a].start, sig[*a].end, now.precise()));
                            }
                            None if pos == args.len() && word != "timediff" => {
                                refuse_in_schema(&format!("{word}() without a time value"))?;
                                let lit = if args.is_empty() {
                                    now.precise()
                                } else {
                                    format!(", {}", now.precise())
                                };
                                let at = sig[close].start;
                                edits.push((at, at, lit));
                            }
                            _ => {}
                        }
                    }
                }
            }
            _ => {}
        }
        k += 1;
    }
    if calls_time {
        let now_param =
            |v: &Value| matches!(v, Value::Text(s) if s.trim().eq_ignore_ascii_case("now"));
        let any = match params {
            Params::None => false,
            Params::Positional(vs) => vs.iter().any(now_param),
            Params::Named(vs) => vs.iter().any(|(_, v)| now_param(v)),
        };
        if any {
            return Err(
                "a parameter holds 'now' in a statement calling a date/time function: \
                        the time would be read by each node; pass the time itself"
                    .into(),
            );
        }
    }
    edits.sort_by_key(|e| (e.0, e.1));
    let mut out = String::with_capacity(sql.len() + 32 * edits.len());
    let mut at = 0;
    for (s, e, lit) in edits {
        out.push_str(&sql[at..s]);
        out.push_str(&lit);
        at = e;
    }
    out.push_str(&sql[at..]);
    Ok(out)
}

/// The second line of defence, installed on the apply connection (see the module docs):
/// application-defined functions replace SQLite's non-deterministic ones. The date/time
/// functions delegate to SQLite's own, on a private in-memory connection, once their
/// arguments are known not to read the clock or the time zone.
pub(crate) fn guard_apply_connection(conn: &Connection) -> rusqlite::Result<()> {
    fn fail<T>(msg: String) -> rusqlite::Result<T> {
        Err(rusqlite::Error::UserFunctionError(msg.into()))
    }
    let never = |name: &'static str| {
        move |_: &Context<'_>| -> rusqlite::Result<i64> {
            fail(format!(
                "{name} is not deterministic and reached a replica: writes must be prepared \
                 by sql::determinism before they enter the log (it cannot be used in \
                 DEFAULT, CHECK, triggers or views)"
            ))
        }
    };
    let flags = FunctionFlags::SQLITE_UTF8;
    for (name, n) in [
        ("random", 0),
        ("randomblob", 1),
        ("total_changes", 0),
        ("current_timestamp", 0),
        ("current_date", 0),
        ("current_time", 0),
    ] {
        conn.create_scalar_function(name, n, flags, never(name))?;
    }
    for (name, positions) in TIME_FUNCS {
        let helper = Connection::open_in_memory()?;
        let deterministic = flags | FunctionFlags::SQLITE_DETERMINISTIC;
        conn.create_scalar_function(name, -1, deterministic, move |ctx: &Context<'_>| {
            let n = ctx.len();
            if positions.iter().any(|&p| p >= n) {
                return fail(format!(
                    "{name}() without a time value reads the clock of the node that runs it; \
                     writes must be prepared by sql::determinism (it cannot be used in \
                     DEFAULT, CHECK, triggers or views)"
                ));
            }
            let mut args = Vec::with_capacity(n);
            for i in 0..n {
                let v = ctx.get_raw(i);
                if let ValueRef::Text(t) = v {
                    let t = String::from_utf8_lossy(t);
                    let t = t.trim();
                    if ["now", "localtime", "utc"]
                        .iter()
                        .any(|w| t.eq_ignore_ascii_case(w))
                    {
                        return fail(format!(
                            "{name}() with '{t}' depends on the clock or time zone of the node \
                             that runs it; pass the time itself"
                        ));
                    }
                }
                args.push(rusqlite::types::Value::from(v));
            }
            let sql = format!("SELECT {name}({})", vec!["?"; n].join(", "));
            let mut st = helper.prepare_cached(&sql)?;
            st.query_row(rusqlite::params_from_iter(args), |r| {
                r.get::<_, rusqlite::types::Value>(0)
            })
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
