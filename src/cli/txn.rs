//! `paxosdb txn`: an atomic transaction written as a small script, read from a file or
//! standard input (like `etcdctl txn`).
//!
//! The script has up to three sections separated by a blank line: comparisons, then the
//! operations to run if all of them hold, then the operations to run otherwise.
//!
//! ```text
//! version("lock") = 0
//! value("owner") != "me"
//!
//! put lock me
//! get config --prefix
//!
//! get lock
//! ```
//!
//! A comparison is `version(KEY) OP N` (the revision of the key's last write, 0 =
//! absent; `mod(KEY)` is the same), `create(KEY) OP N` (the key's create revision, 0 =
//! absent) or `value(KEY) OP VALUE`, with `OP` one of `=`, `!=`, `<`, `>`. An operation is
//! `put KEY VALUE [--lease ID]`, `get KEY [END] [--prefix] [--limit N]` or `del KEY [END]
//! [--prefix]`: with `END` (exclusive) or `--prefix`, a get reads and a del deletes the
//! whole range. A word is bare or in double quotes (with `\"`
//! and `\\` inside); `#` starts a comment line. Each blank line ends a section,
//! so two in a row leave the success operations empty.
//!
//! # Invariants
//!
//! - The script is parsed completely before anything is sent: an error names its line,
//!   and nothing is written.
//! - The exit code says which branch ran: 0 when every comparison held, 1 otherwise (as
//!   `paxosdb cas` does when its comparison fails).

use super::{client, Cli};
use crate::command::{Compare, CompareOp, CompareTarget, ScanRange, Txn, TxnOp, WriteResult};
use crate::command::{TxnOpResult, Versioned, WriteOp};
use crate::error::{Error, Result};
use clap::Args;
use serde_json::json;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct TxnArgs {
    /// The script; `-` or nothing reads it from standard input.
    pub file: Option<String>,
    /// Print the answer as JSON (for scripts).
    #[arg(long)]
    pub json: bool,
}

/// The words of a line: bare, or double-quoted with `\"` and `\\` escapes.
fn words(line: &str) -> std::result::Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let Some(&c) = chars.peek() else {
            return Ok(out);
        };
        let mut w = String::new();
        if c == '"' {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("a quoted word is not closed".into()),
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some(e @ ('"' | '\\')) => w.push(e),
                        _ => return Err(r#"only \" and \\ may follow a backslash"#.into()),
                    },
                    Some(c) => w.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                w.push(c);
            }
        }
        out.push(w);
    }
}

fn compare_op(w: &str) -> std::result::Result<CompareOp, String> {
    Ok(match w {
        "=" | "==" => CompareOp::Equal,
        "!=" => CompareOp::NotEqual,
        "<" => CompareOp::Less,
        ">" => CompareOp::Greater,
        other => return Err(format!("unknown comparison {other:?} (use =, !=, < or >)")),
    })
}

/// `version(KEY) OP N`, `create(KEY) OP N` or `value(KEY) OP VALUE`. The key may be
/// quoted inside the parentheses, so the line is split around them first.
fn comparison(line: &str) -> std::result::Result<Compare, String> {
    let usage =
        r#"a comparison is version("KEY") OP N, create("KEY") OP N or value("KEY") OP VALUE"#;
    let (what, rest) = line.split_once('(').ok_or(usage)?;
    // The key: quoted (it may hold a parenthesis) or bare, then the closing parenthesis.
    let rest = rest.trim_start();
    let close = if rest.starts_with('"') {
        let mut escaped = false;
        let end = (rest.char_indices().skip(1))
            .find(|&(_, c)| {
                let closes = c == '"' && !escaped;
                escaped = c == '\\' && !escaped;
                closes
            })
            .map(|(i, _)| i)
            .ok_or("a quoted word is not closed")?;
        end + 1 + rest[end + 1..].find(')').ok_or(usage)?
    } else {
        rest.find(')').ok_or(usage)?
    };
    let key = match words(&rest[..close])?.as_slice() {
        [k] => k.clone().into_bytes(),
        _ => return Err(usage.into()),
    };
    let tail = words(&rest[close + 1..])?;
    let [op, target] = tail.as_slice() else {
        return Err(usage.into());
    };
    let revision = |what: &str| {
        (target.parse::<u64>()).map_err(|_| format!("{what} {target:?} is not a number"))
    };
    let target = match what.trim() {
        "version" | "mod" => CompareTarget::Version(revision("version")?),
        "create" => CompareTarget::Create(revision("create revision")?),
        "value" => CompareTarget::Value(target.clone().into_bytes()),
        other => return Err(format!("cannot compare {other:?}; {usage}")),
    };
    Ok(Compare {
        key,
        op: compare_op(op)?,
        target,
    })
}

/// The range of `get`/`del` arguments, if they name one.
fn range_of(
    key: &str,
    end: Option<&String>,
    prefix: bool,
) -> std::result::Result<Option<ScanRange>, String> {
    Ok(match (end, prefix) {
        (Some(_), true) => return Err("give END or --prefix, not both".into()),
        (None, true) => Some(ScanRange::Prefix(key.as_bytes().to_vec())),
        (Some(end), false) => Some(ScanRange::Range {
            from: key.as_bytes().to_vec(),
            to: Some(end.as_bytes().to_vec()),
        }),
        (None, false) => None,
    })
}

fn operation(line: &str) -> std::result::Result<TxnOp, String> {
    let w = words(line)?;
    let (mut plain, mut prefix, mut limit, mut lease) = (Vec::new(), false, None, None);
    let mut it = w.iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--prefix" => prefix = true,
            "--lease" => {
                let n = it.next().ok_or("--lease needs a lease id")?;
                let id = n.parse::<u64>().ok().filter(|id| *id != 0);
                lease = Some(id.ok_or_else(|| format!("bad --lease {n:?} (a lease id)"))?);
            }
            "--limit" => {
                let n = it.next().ok_or("--limit needs a number")?;
                limit = Some(n.parse::<u32>().map_err(|_| format!("bad --limit {n:?}"))?);
            }
            _ => plain.push(a),
        }
    }
    let verb = w.first().map(String::as_str).unwrap_or_default();
    if lease.is_some() && verb != "put" {
        return Err("--lease is for put".into());
    }
    match (verb, plain.as_slice(), limit) {
        ("put", [k, v], None) if !prefix => Ok(match lease {
            None => TxnOp::put(k.as_bytes(), v.as_bytes()),
            Some(lease) => TxnOp::Write(WriteOp::PutLeased {
                key: k.as_bytes().to_vec(),
                value: v.as_bytes().to_vec(),
                lease,
                return_prev: false,
            }),
        }),
        ("put", ..) => Err("put takes KEY VALUE [--lease ID]".into()),
        ("get", [k], None) if !prefix => Ok(TxnOp::get(k.as_bytes())),
        ("get", [k, end @ ..], limit) if end.len() <= 1 => {
            let range = range_of(k, end.first().copied(), prefix)?
                .ok_or("--limit is for ranges (give END or --prefix)")?;
            Ok(TxnOp::Range {
                range,
                limit: limit.unwrap_or(0),
            })
        }
        ("get", ..) => Err("get takes KEY [END] [--prefix] [--limit N]".into()),
        ("del", [k, end @ ..], None) if end.len() <= 1 => {
            Ok(match range_of(k, end.first().copied(), prefix)? {
                Some(range) => TxnOp::DeleteRange { range },
                None => TxnOp::delete(k.as_bytes()),
            })
        }
        ("del", ..) => Err("del takes KEY [END] [--prefix]".into()),
        (other, ..) => Err(format!("unknown operation {other:?} (put, get or del)")),
    }
}

/// Parses a whole script (see the module docs).
pub fn parse_script(script: &str) -> Result<Txn> {
    let mut txn = Txn::default();
    let mut section = 0;
    let mut started = false;
    for (n, line) in script.lines().enumerate() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        // Every blank line after the first content ends a section (two in a row leave
        // one empty, as with etcdctl); blank lines before it are nothing.
        if line.is_empty() {
            section += usize::from(started);
            continue;
        }
        started = true;
        let at = |e: String| Error::invalid(format!("line {}: {e}", n + 1));
        match section {
            0 if ["version", "mod", "create", "value"]
                .contains(&line.split('(').next().unwrap_or_default().trim()) =>
            {
                txn.compare.push(comparison(line).map_err(at)?)
            }
            // A script without comparisons starts with its operations.
            0 => {
                section = 1;
                txn.success.push(operation(line).map_err(at)?)
            }
            1 => txn.success.push(operation(line).map_err(at)?),
            2 => txn.failure.push(operation(line).map_err(at)?),
            _ => {
                return Err(at(
                    "a script has three sections at most: comparisons, success, failure".into(),
                ))
            }
        }
    }
    Ok(txn)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn versioned_json(v: &Option<Versioned>) -> serde_json::Value {
    match v {
        Some(v) => json!({"value": text(&v.value), "version": v.version}),
        None => serde_json::Value::Null,
    }
}

pub async fn run(cli: &Cli, a: &TxnArgs) -> Result<ExitCode> {
    let script = match a.file.as_deref() {
        None | Some("-") => std::io::read_to_string(std::io::stdin())
            .map_err(|e| Error::invalid(format!("reading the script from standard input: {e}")))?,
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| Error::invalid(format!("reading the script {path}: {e}")))?,
    };
    let txn = parse_script(&script)?;
    let done = client(cli)?.txn(&txn).await?;
    if a.json {
        let results: Vec<_> = (done.results.iter())
            .map(|r| match r {
                TxnOpResult::Get(v) => json!({"get": versioned_json(v)}),
                TxnOpResult::Range { items, more } => json!({"range": {
                    "items": items.iter().map(|kv| json!({
                        "key": text(&kv.key), "value": text(&kv.value), "version": kv.version
                    })).collect::<Vec<_>>(),
                    "more": more,
                }}),
                TxnOpResult::DeleteRange { deleted } => {
                    json!({"delete_range": {"deleted": deleted}})
                }
                TxnOpResult::Write(WriteResult::Put { version, .. }) => {
                    json!({"put": {"version": version}})
                }
                TxnOpResult::Write(WriteResult::Delete { deleted, .. }) => {
                    json!({"delete": {"deleted": deleted}})
                }
                TxnOpResult::Write(other) => json!({"other": format!("{other:?}")}),
            })
            .collect();
        println!(
            "{}",
            json!({"succeeded": done.succeeded, "results": results})
        );
    } else {
        println!("{}", if done.succeeded { "SUCCESS" } else { "FAILURE" });
        for r in &done.results {
            match r {
                TxnOpResult::Get(Some(v)) => println!("{} (version {})", text(&v.value), v.version),
                TxnOpResult::Get(None) => println!("(not found)"),
                TxnOpResult::Range { items, more } => {
                    for kv in items {
                        println!("{}\t{}", text(&kv.key), text(&kv.value));
                    }
                    if *more {
                        println!("(more rows; raise --limit)");
                    }
                }
                TxnOpResult::DeleteRange { deleted } => println!("deleted {deleted}"),
                TxnOpResult::Write(WriteResult::Put { version, .. }) => {
                    println!("OK version={version}")
                }
                TxnOpResult::Write(WriteResult::Delete { deleted: true, .. }) => {
                    println!("deleted")
                }
                TxnOpResult::Write(WriteResult::Delete { deleted: false, .. }) => {
                    println!("not found (nothing deleted)")
                }
                TxnOpResult::Write(other) => println!("{other:?}"),
            }
        }
    }
    Ok(if done.succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_script_with_all_three_sections() {
        let txn = parse_script(
            "# take the lock\n\
             version(\"lock\") = 0\n\
             value(\"owner\") != \"me too\"\n\
             create(\"term\") < 12\n\
             mod(term) > 3\n\
             \n\
             put lock me\n\
             put owner me --lease 7\n\
             get config/ --prefix --limit 5\n\
             del tmp/a tmp/z\n\
             \n\
             get lock\n",
        )
        .unwrap();
        assert_eq!(
            txn.compare,
            vec![
                Compare::version(b"lock", CompareOp::Equal, 0),
                Compare::value(b"owner", CompareOp::NotEqual, b"me too"),
                Compare::create(b"term", CompareOp::Less, 12),
                Compare::version(b"term", CompareOp::Greater, 3),
            ]
        );
        assert_eq!(
            txn.success,
            vec![
                TxnOp::put(b"lock", b"me"),
                TxnOp::Write(WriteOp::PutLeased {
                    key: b"owner".to_vec(),
                    value: b"me".to_vec(),
                    lease: 7,
                    return_prev: false,
                }),
                TxnOp::Range {
                    range: ScanRange::Prefix(b"config/".to_vec()),
                    limit: 5
                },
                TxnOp::DeleteRange {
                    range: ScanRange::Range {
                        from: b"tmp/a".to_vec(),
                        to: Some(b"tmp/z".to_vec())
                    }
                },
            ]
        );
        assert_eq!(txn.failure, vec![TxnOp::get(b"lock")]);
    }

    #[test]
    fn operations_alone_and_quoted_words() {
        let txn = parse_script("put \"a key\" \"say \\\"hi\\\"\"\ndel old\n").unwrap();
        assert!(txn.compare.is_empty() && txn.failure.is_empty());
        assert_eq!(
            txn.success,
            vec![TxnOp::put(b"a key", b"say \"hi\""), TxnOp::delete(b"old")]
        );
    }

    #[test]
    fn a_comparison_may_have_a_space_before_its_parenthesis() {
        let txn = parse_script("create (\"k\") > 0\nput k v\n").unwrap();
        assert_eq!(
            txn.compare,
            vec![Compare::create(b"k", CompareOp::Greater, 0)]
        );
        assert_eq!(txn.success, vec![TxnOp::put(b"k", b"v")]);
    }

    #[test]
    fn two_blank_lines_leave_success_empty_and_keys_may_hold_parentheses() {
        let txn = parse_script("value(\"a(b)\") = \")\"\n\n\nget a\n").unwrap();
        assert_eq!(
            txn.compare,
            vec![Compare::value(b"a(b)", CompareOp::Equal, b")")]
        );
        assert!(txn.success.is_empty());
        assert_eq!(txn.failure, vec![TxnOp::get(b"a")]);
    }

    #[test]
    fn errors_name_the_line() {
        for (script, line, says) in [
            ("version(\"k\") ~ 1\n", "line 1", "unknown comparison"),
            ("version(\"k\") = x\n", "line 1", "not a number"),
            ("create(\"k\") = -1\n", "line 1", "not a number"),
            ("put k v --lease x\n", "line 1", "bad --lease"),
            ("put k v --lease 0\n", "line 1", "bad --lease"),
            ("get k --lease 3\n", "line 1", "--lease is for put"),
            ("\nput k\n", "line 2", "put takes"),
            // Without comparisons the operations come first: success, then failure.
            ("put k v\n\nget k\n\nget j\n", "line 5", "three sections"),
            ("frob k\n", "line 1", "unknown operation"),
            ("get k --limit 3\n", "line 1", "for ranges"),
            ("get a z --prefix\n", "line 1", "not both"),
            ("put \"k v\n", "line 1", "not closed"),
        ] {
            match parse_script(script) {
                Err(Error::InvalidInput(m)) => {
                    assert!(m.starts_with(line) && m.contains(says), "{script:?}: {m}")
                }
                other => panic!("{script:?} parsed: {other:?}"),
            }
        }
    }
}
