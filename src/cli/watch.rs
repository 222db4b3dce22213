//! `paxosdb watch`: prints the changes of a key or a key prefix as they are applied, one
//! line per change (`rev 12 put KEY VALUE`, `rev 13 delete KEY`, `rev 14 expire KEY`;
//! keys and values as text, lossy, as `get` and `scan` print them), or one JSON object
//! per line with `--json`. It runs until Ctrl-C, or until `--count` changes were printed.
//!
//! The watch goes through [`crate::client::Client::watch`], so it resumes by itself on
//! another node when its node fails, printing every change once and in order.
//!
//! # Invariants
//!
//! - Each change is printed once, whole revisions in order; with `--count N` exactly N
//!   changes are printed (the rest of a revision that goes past N is not).
//! - Ctrl-C ends the command with success and says on stderr which revision to resume
//!   from (`--from-revision`) to miss nothing; a closed standard output ends it quietly.

use super::{client, Cli};
use crate::client::{Change, WatchFilter};
use crate::command::ScanRange;
use crate::error::{Error, Result};
use clap::Args;
use serde_json::json;
use std::io::Write;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct WatchArgs {
    /// The key to watch (or --prefix).
    #[arg(required_unless_present = "prefix", conflicts_with = "prefix")]
    pub key: Option<String>,
    /// Watch every key starting with this prefix (`--prefix ""`: every key).
    #[arg(long)]
    pub prefix: Option<String>,
    /// Start at this revision (default: now). The node must still hold it in its watch
    /// history (--watch-history-revisions), else the command fails naming the oldest one.
    #[arg(long)]
    pub from_revision: Option<u64>,
    /// Exit after printing this many changes.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// One JSON object per change (for scripts).
    #[arg(long)]
    pub json: bool,
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The line `c` is printed as.
fn line(c: &Change, as_json: bool) -> String {
    let kind = c.kind.as_str();
    let put = c.kind == crate::client::ChangeKind::Put;
    if as_json {
        let mut v = json!({"revision": c.revision, "kind": kind, "key": text(&c.key)});
        if put {
            v["value"] = json!(text(&c.value));
        }
        v.to_string()
    } else if put {
        format!(
            "rev {} {kind} {} {}",
            c.revision,
            text(&c.key),
            text(&c.value)
        )
    } else {
        format!("rev {} {kind} {}", c.revision, text(&c.key))
    }
}

pub async fn run(cli: &Cli, a: &WatchArgs) -> Result<ExitCode> {
    let filter = match (&a.key, &a.prefix) {
        (Some(k), None) => WatchFilter::Key(k.as_bytes().to_vec()),
        (None, Some(p)) => WatchFilter::Range(ScanRange::Prefix(p.as_bytes().to_vec())),
        _ => return Err(Error::invalid("give a key or --prefix, not both")),
    };
    let mut watch = client(cli)?.watch(filter, a.from_revision).await?;
    let mut left = a.count.unwrap_or(u64::MAX);
    let stdout = std::io::stdout();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let batch = tokio::select! {
            b = watch.next() => b,
            _ = &mut ctrl_c => {
                let next = watch.next_revision();
                eprintln!("(stopped; resume with --from-revision {next})");
                return Ok(ExitCode::SUCCESS);
            }
        };
        // The stream ends only after an error, which it returned before.
        let Some(batch) = batch else {
            return Err(Error::Internal("the watch ended without an error".into()));
        };
        let mut out = stdout.lock();
        for c in batch? {
            // A reader that went away (`| head -3`) ends the command quietly.
            if writeln!(out, "{}", line(&c, a.json)).is_err() {
                return Ok(ExitCode::SUCCESS);
            }
            left -= 1;
            if left == 0 {
                let _ = out.flush();
                return Ok(ExitCode::SUCCESS);
            }
        }
        if out.flush().is_err() {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::line;
    use crate::client::{Change, ChangeKind};

    #[test]
    fn a_change_prints_as_one_line_plain_or_json() {
        let put = Change {
            revision: 12,
            kind: ChangeKind::Put,
            key: b"user/4".to_vec(),
            value: b"linus".to_vec(),
        };
        assert_eq!(line(&put, false), "rev 12 put user/4 linus");
        assert_eq!(
            line(&put, true),
            r#"{"key":"user/4","kind":"put","revision":12,"value":"linus"}"#
        );
        let gone = Change {
            revision: 13,
            kind: ChangeKind::Expire,
            key: b"session/9".to_vec(),
            value: vec![],
        };
        assert_eq!(line(&gone, false), "rev 13 expire session/9");
        assert_eq!(
            line(&gone, true),
            r#"{"key":"session/9","kind":"expire","revision":13}"#
        );
    }
}
