//! Client commands: put (with a time to live or a lease), get, delete, cas, scan. Plain output by default, `--json` for
//! scripts. Keys and values are taken and printed as UTF-8 text (lossy on output).

use super::{client, Cli};
use crate::client::{CasExpect, PutOptions};
use crate::command::{ScanRange, Versioned};
use crate::error::{Error, Result};
use clap::Args;
use serde_json::json;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct PutArgs {
    /// The key.
    pub key: String,
    /// The value; `-` reads it from standard input, to its end, byte for byte.
    pub value: String,
    /// Also print the previous value and version.
    #[arg(long)]
    pub prev: bool,
    /// Time to live: the key expires this long after the write is applied, by the
    /// leader's clock (500ms, 30s, 5m, 2h; a plain number is seconds). Without it the
    /// key never expires, and a time to live it had is cleared.
    #[arg(long, value_parser = parse_ttl)]
    pub ttl: Option<std::time::Duration>,
    /// Attach the key to this lease (`paxosdb lease grant`): it is deleted when the lease
    /// ends. Not with --ttl. A lease that does not exist is refused and nothing is
    /// written.
    #[arg(long, conflicts_with = "ttl", value_parser = clap::value_parser!(u64).range(1..))]
    pub lease: Option<u64>,
    /// Print the answer as JSON (for scripts).
    #[arg(long)]
    pub json: bool,
}

/// A time to live: what [`super::parse_duration`] takes (`500ms`, `30s`, `5m`, a plain
/// number of seconds), or hours (`2h`); positive.
pub(super) fn parse_ttl(s: &str) -> std::result::Result<std::time::Duration, String> {
    let t = s.trim();
    // A number of more than 12 whole digits is over any ttl the server takes (and might
    // not fit a `Duration`).
    let whole = t.split(|c: char| !c.is_ascii_digit()).next().unwrap_or("");
    if whole.len() > 12 {
        return Err(format!("ttl {s:?} is too long (at most 100 years)"));
    }
    let d = match t.strip_suffix('h') {
        Some(hours) if !hours.is_empty() && !hours.ends_with(|c: char| c.is_alphabetic()) => {
            super::parse_duration(&format!("{hours}m"))?
                .checked_mul(60)
                .ok_or_else(|| format!("ttl {s:?} is too long"))?
        }
        _ => super::parse_duration(t)
            .map_err(|e| format!("{e} (a ttl is such as 500ms, 30s, 5m or 2h)"))?,
    };
    if d.is_zero() {
        return Err("a ttl must be positive".into());
    }
    Ok(d)
}

#[derive(Args, Debug)]
pub struct GetArgs {
    /// The key.
    pub key: String,
    /// Serve from the contacted node's local copy (may be behind; reports its index).
    #[arg(long)]
    pub stale: bool,
    /// Print the answer as JSON (for scripts).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// The key.
    pub key: String,
    /// Also print the deleted value and its version.
    #[arg(long)]
    pub prev: bool,
    /// Print the answer as JSON (for scripts).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct CasArgs {
    /// The key.
    pub key: String,
    /// Expected current value.
    #[arg(
        long,
        conflicts_with = "expect_version",
        required_unless_present = "expect_version"
    )]
    pub expect: Option<String>,
    /// Expected current version (0 = the key must be absent).
    #[arg(long)]
    pub expect_version: Option<u64>,
    /// The value to store if the comparison holds.
    #[arg(long = "new")]
    pub new_value: String,
    /// Print the answer as JSON (for scripts).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ScanArgs {
    /// Keys starting with this prefix.
    #[arg(long, conflicts_with_all = ["from", "to"])]
    pub prefix: Option<String>,
    /// First key (inclusive).
    #[arg(long)]
    pub from: Option<String>,
    /// End key (exclusive).
    #[arg(long)]
    pub to: Option<String>,
    /// At most this many rows (default 1000, at most 10000).
    #[arg(long)]
    pub limit: Option<u32>,
    /// Serve from the contacted node's local copy (may be behind; reports its index).
    #[arg(long)]
    pub stale: bool,
    /// Print the rows as JSON (for scripts).
    #[arg(long)]
    pub json: bool,
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn vjson(v: &Option<Versioned>) -> serde_json::Value {
    match v {
        Some(v) => json!({"value": text(&v.value), "version": v.version}),
        None => serde_json::Value::Null,
    }
}

fn print_json(v: serde_json::Value) {
    println!("{v}");
}

pub async fn put(cli: &Cli, a: &PutArgs) -> Result<ExitCode> {
    let value = if a.value == "-" {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut v)
            .map_err(|e| Error::invalid(format!("reading the value from standard input: {e}")))?;
        v
    } else {
        a.value.as_bytes().to_vec()
    };
    let c = client(cli)?;
    let r = match a.lease {
        Some(lease) => (c.put_leased(a.key.as_bytes(), &value, lease, a.prev)).await?,
        None => {
            let opts = PutOptions {
                return_prev: a.prev,
                ttl: a.ttl,
            };
            c.put_with(a.key.as_bytes(), &value, opts).await?
        }
    };
    if a.json {
        print_json(json!({"version": r.version, "prev": vjson(&r.prev)}));
    } else {
        println!("OK version={}", r.version);
        if let Some(p) = &r.prev {
            println!("prev={} prev_version={}", text(&p.value), p.version);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn get(cli: &Cli, a: &GetArgs) -> Result<ExitCode> {
    let (timed, applied) = client(cli)?.get_timed(a.key.as_bytes(), a.stale).await?;
    let ttl_ms = |t: &crate::client::TimedValue| t.ttl.map(|d| d.as_millis() as u64);
    if a.json {
        let mut out = json!({"key": a.key, "found": timed.is_some(), "applied_index": applied});
        if let Some(t) = &timed {
            out["value"] = json!(text(&t.value.value));
            out["version"] = json!(t.value.version);
            // Only for a key that expires.
            if let (Some(at), Some(ms)) = (t.expires_at_ms, ttl_ms(t)) {
                out["expires_at_ms"] = json!(at);
                out["ttl_ms"] = json!(ms);
            }
        }
        print_json(out);
        return Ok(if timed.is_some() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    match timed {
        Some(t) => {
            let v = &t.value;
            println!("{}", text(&v.value));
            if let Some(ms) = ttl_ms(&t) {
                eprintln!("(expires in {} s)", ms as f64 / 1000.0);
            }
            if a.stale {
                eprintln!(
                    "(stale read: version {}, node applied index {applied})",
                    v.version
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!("error: key {:?} not found", a.key);
            Ok(ExitCode::FAILURE)
        }
    }
}

pub async fn delete(cli: &Cli, a: &DeleteArgs) -> Result<ExitCode> {
    let r = client(cli)?.delete(a.key.as_bytes(), a.prev).await?;
    if a.json {
        print_json(json!({"deleted": r.deleted, "prev": vjson(&r.prev)}));
    } else {
        println!(
            "{}",
            if r.deleted {
                "deleted"
            } else {
                "not found (nothing deleted)"
            }
        );
        if let Some(p) = &r.prev {
            println!("prev={} prev_version={}", text(&p.value), p.version);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn cas(cli: &Cli, a: &CasArgs) -> Result<ExitCode> {
    let expect = match (&a.expect, a.expect_version) {
        (Some(v), None) => CasExpect::Value(v.as_bytes().to_vec()),
        (None, Some(v)) => CasExpect::Version(v),
        _ => {
            return Err(Error::invalid(
                "give exactly one of --expect or --expect-version",
            ))
        }
    };
    let r = client(cli)?
        .cas(a.key.as_bytes(), expect, a.new_value.as_bytes())
        .await?;
    if a.json {
        print_json(
            json!({"succeeded": r.succeeded, "version": r.version, "current": vjson(&r.current)}),
        );
    } else if r.succeeded {
        println!("OK version={}", r.version);
    } else {
        match &r.current {
            Some(c) => eprintln!(
                "compare failed: current value={} version={}",
                text(&c.value),
                c.version
            ),
            None => eprintln!("compare failed: key is absent (version 0)"),
        }
    }
    Ok(if r.succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub async fn scan(cli: &Cli, a: &ScanArgs) -> Result<ExitCode> {
    let range = match (&a.prefix, &a.from, &a.to) {
        (Some(p), None, None) => ScanRange::Prefix(p.as_bytes().to_vec()),
        (None, from, to) => ScanRange::Range {
            from: from.clone().unwrap_or_default().into_bytes(),
            to: to.clone().map(String::into_bytes),
        },
        _ => return Err(Error::invalid("use --prefix, or --from/--to, not both")),
    };
    let r = client(cli)?
        .scan(&range, a.limit.unwrap_or(0), a.stale)
        .await?;
    if a.json {
        let items: Vec<_> = r
            .items
            .iter()
            .map(
                |kv| json!({"key": text(&kv.key), "value": text(&kv.value), "version": kv.version}),
            )
            .collect();
        print_json(json!({"items": items, "more": r.more, "applied_index": r.applied_index}));
    } else {
        for kv in &r.items {
            println!("{}\t{}", text(&kv.key), text(&kv.value));
        }
        if r.more {
            eprintln!("(more rows; raise --limit or continue with --from)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::parse_ttl;
    use std::time::Duration;

    #[test]
    fn a_ttl_takes_the_cli_durations_and_hours() {
        assert_eq!(parse_ttl("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_ttl("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_ttl("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_ttl("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_ttl("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_ttl("1.5h").unwrap(), Duration::from_secs(5400));
        for bad in [
            "",
            "0",
            "0s",
            "h",
            "mh",
            "-5s",
            "10d",
            "soon",
            "9999999999999h",
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad:?}");
        }
    }
}
