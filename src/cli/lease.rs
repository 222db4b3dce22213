//! `paxosdb lease grant | keep-alive | revoke | ttl | list`: etcd's leases on a running
//! cluster, through the Rust client ([`crate::client::Client::lease_grant`] and the rest).
//! `paxosdb put KEY VALUE --lease ID` ([`super::kv`]) attaches a key to a lease.
//!
//! Output: plain by default, one JSON object per answer with `--json`. `grant` prints only
//! the lease's id on standard output, so that `LEASE=$(paxosdb lease grant 30s)` works.
//! A time to live is written as `put --ttl` takes it (`30s`, `5m`, `2h`, a plain number of
//! seconds), from 1 s to a year.
//!
//! # Invariants
//!
//! - Exit codes as every client command: 0 success; 1 the lease was not found
//!   (`keep-alive`, `ttl`) or the command failed; 2 bad usage (a time to live out of
//!   range or unreadable, lease id 0), refused before anything is sent. A `revoke` of a
//!   lease that is gone exits 0 ("not found (nothing revoked)"), as `delete` of a missing
//!   key does, so that a clean-up script may revoke a lease that just expired.
//! - `keep-alive` without `--once` prints one line per renewal (renewing every third of the
//!   time to live, through [`crate::client::Client::keep_alive_forever`]) until Ctrl-C
//!   (exit 0; the lease is left to expire) or until the lease is gone (exit 1). It never
//!   revokes the lease.

use super::{client, Cli, ClientArgs, WithClient};
use crate::client::{KeepAliveStatus, LeaseInfo};
use crate::error::{Error, Result};
use clap::{Args, Subcommand};
use serde_json::json;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Subcommand, Debug)]
pub enum LeaseCommand {
    /// Grants a lease and prints its id (keys put with `--lease ID` are deleted when it
    /// ends).
    #[command(after_help = "Examples:
  paxosdb lease grant 30s                   a lease of 30 s; prints its id
  LEASE=$(paxosdb lease grant 10s)          keep the id in a shell variable
  paxosdb lease grant 1m --id 42            a lease with id 42")]
    Grant(WithClient<GrantArgs>),
    /// Keeps a lease alive: renews it every third of its time to live until Ctrl-C,
    /// printing each renewal (exit 1 when the lease is gone), or once with --once.
    KeepAlive(WithClient<KeepAliveArgs>),
    /// Revokes a lease now, deleting every key attached to it.
    Revoke(WithClient<RevokeArgs>),
    /// Prints a lease's time to live, the time it has left and, with --keys, its keys
    /// (exit 1 if it does not exist).
    Ttl(WithClient<TtlArgs>),
    /// Lists the live leases: id, time to live, deadline.
    List(WithClient<ListArgs>),
}

impl LeaseCommand {
    /// The client flags given after the subcommand's name.
    pub fn client_args(&self) -> &ClientArgs {
        match self {
            LeaseCommand::Grant(a) => &a.client,
            LeaseCommand::KeepAlive(a) => &a.client,
            LeaseCommand::Revoke(a) => &a.client,
            LeaseCommand::Ttl(a) => &a.client,
            LeaseCommand::List(a) => &a.client,
        }
    }
}

/// A time to live as `put --ttl` takes it, within what a lease may have (1 s to a year).
fn parse_lease_ttl(s: &str) -> std::result::Result<Duration, String> {
    let d = super::kv::parse_ttl(s)?;
    crate::client::lease::lease_ttl_ms(d).map_err(|e| match e {
        Error::InvalidInput(m) => m,
        e => e.to_string(),
    })?;
    Ok(d)
}

/// A lease id: a positive integer.
fn lease_id_arg() -> clap::builder::RangedU64ValueParser<u64> {
    clap::value_parser!(u64).range(1..)
}

#[derive(Args, Debug)]
pub struct GrantArgs {
    /// The time to live: 30s, 5m, 2h, a plain number of seconds (1 s to a year).
    #[arg(value_parser = parse_lease_ttl)]
    pub ttl: Duration,
    /// The lease's id (default: the cluster picks the next free one).
    #[arg(long, value_parser = lease_id_arg())]
    pub id: Option<u64>,
    /// Print id, ttl_ms and deadline_ms as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct KeepAliveArgs {
    /// The lease's id.
    #[arg(value_parser = lease_id_arg())]
    pub id: u64,
    /// Renew it once and exit.
    #[arg(long)]
    pub once: bool,
    /// One JSON object per renewal.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RevokeArgs {
    /// The lease's id.
    #[arg(value_parser = lease_id_arg())]
    pub id: u64,
    /// Print the answer as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct TtlArgs {
    /// The lease's id.
    #[arg(value_parser = lease_id_arg())]
    pub id: u64,
    /// Also print the keys attached to it (at most 1000), one per line.
    #[arg(long)]
    pub keys: bool,
    /// Print the answer as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Print the leases as JSON.
    #[arg(long)]
    pub json: bool,
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn info_json(i: &LeaseInfo) -> serde_json::Value {
    json!({"id": i.id, "ttl_ms": i.ttl_ms, "deadline_ms": i.deadline})
}

/// The line a renewal prints.
fn renewal_line(i: &LeaseInfo, as_json: bool) -> String {
    if as_json {
        info_json(i).to_string()
    } else {
        format!(
            "lease {} kept alive: ttl_ms={} deadline_ms={}",
            i.id, i.ttl_ms, i.deadline
        )
    }
}

/// Says that lease `id` does not exist (plain on stderr, or JSON on stdout); exit 1.
fn not_found(id: u64, as_json: bool) -> ExitCode {
    if as_json {
        println!("{}", json!({"id": id, "found": false}));
    } else {
        eprintln!("error: lease {id} not found (never granted, expired or revoked)");
    }
    ExitCode::FAILURE
}

pub async fn run(cli: &Cli, cmd: &LeaseCommand) -> Result<ExitCode> {
    match cmd {
        LeaseCommand::Grant(a) => grant(cli, &a.args).await,
        LeaseCommand::KeepAlive(a) => keep_alive(cli, &a.args).await,
        LeaseCommand::Revoke(a) => revoke(cli, &a.args).await,
        LeaseCommand::Ttl(a) => ttl(cli, &a.args).await,
        LeaseCommand::List(a) => list(cli, &a.args).await,
    }
}

async fn grant(cli: &Cli, a: &GrantArgs) -> Result<ExitCode> {
    let info = client(cli)?
        .lease_grant_with_id(a.id.unwrap_or(0), a.ttl)
        .await?;
    if a.json {
        println!("{}", info_json(&info));
    } else {
        println!("{}", info.id);
    }
    Ok(ExitCode::SUCCESS)
}

async fn keep_alive(cli: &Cli, a: &KeepAliveArgs) -> Result<ExitCode> {
    let c = client(cli)?;
    if a.once {
        return Ok(match c.lease_keep_alive(a.id).await? {
            Some(info) => {
                println!("{}", renewal_line(&info, a.json));
                ExitCode::SUCCESS
            }
            None => not_found(a.id, a.json),
        });
    }
    let mut held = c.keep_alive_forever(a.id);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let status = tokio::select! {
            s = held.next() => s,
            _ = &mut ctrl_c => {
                eprintln!(
                    "(stopped; lease {} is no longer renewed and ends its time to live after \
                     the last renewal)",
                    a.id
                );
                return Ok(ExitCode::SUCCESS);
            }
        };
        match status {
            KeepAliveStatus::Starting => {}
            KeepAliveStatus::Alive { info, .. } => {
                let mut out = std::io::stdout().lock();
                // A reader that went away (`| head -3`) ends the command quietly.
                if writeln!(out, "{}", renewal_line(&info, a.json)).is_err() || out.flush().is_err()
                {
                    return Ok(ExitCode::SUCCESS);
                }
            }
            KeepAliveStatus::Lost => return Ok(not_found(a.id, a.json)),
            KeepAliveStatus::Failed(e) => return Err(e),
        }
    }
}

async fn revoke(cli: &Cli, a: &RevokeArgs) -> Result<ExitCode> {
    let revoked = client(cli)?.lease_revoke(a.id).await?;
    if a.json {
        println!("{}", json!({"id": a.id, "revoked": revoked}));
    } else if revoked {
        println!("revoked lease {} (its keys are deleted)", a.id);
    } else {
        println!("lease {} not found (nothing revoked)", a.id);
    }
    Ok(ExitCode::SUCCESS)
}

async fn ttl(cli: &Cli, a: &TtlArgs) -> Result<ExitCode> {
    let Some(t) = client(cli)?.lease_time_to_live(a.id, a.keys).await? else {
        return Ok(not_found(a.id, a.json));
    };
    let remaining_ms = t.remaining.as_millis() as u64;
    if a.json {
        let mut out = info_json(&t.info);
        out["found"] = json!(true);
        out["remaining_ms"] = json!(remaining_ms);
        if a.keys {
            out["keys"] = json!(t.keys.iter().map(|k| text(k)).collect::<Vec<_>>());
            out["more_keys"] = json!(t.more_keys);
        }
        println!("{out}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "lease {} ttl_ms={} remaining_ms={remaining_ms} deadline_ms={}",
        t.info.id, t.info.ttl_ms, t.info.deadline
    );
    for k in &t.keys {
        println!("{}", text(k));
    }
    if t.more_keys {
        eprintln!("(more keys are attached than listed)");
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(cli: &Cli, a: &ListArgs) -> Result<ExitCode> {
    let leases = client(cli)?.leases().await?;
    if a.json {
        let all: Vec<_> = leases.iter().map(info_json).collect();
        println!("{}", json!({ "leases": all }));
    } else {
        for l in &leases {
            println!("{}\tttl_ms={}\tdeadline_ms={}", l.id, l.ttl_ms, l.deadline);
        }
        if leases.is_empty() {
            eprintln!("(no leases)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_ttl_is_a_put_ttl_from_a_second_to_a_year() {
        assert_eq!(parse_lease_ttl("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_lease_ttl("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_lease_ttl("1").unwrap(), Duration::from_secs(1));
        for bad in ["0", "0s", "500ms", "9000h", "soon", ""] {
            assert!(parse_lease_ttl(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_renewal_prints_as_one_line() {
        let i = LeaseInfo {
            id: 7,
            ttl_ms: 30_000,
            deadline: 1_700_000_000_000,
        };
        assert_eq!(
            renewal_line(&i, false),
            "lease 7 kept alive: ttl_ms=30000 deadline_ms=1700000000000"
        );
        assert_eq!(
            renewal_line(&i, true),
            r#"{"deadline_ms":1700000000000,"id":7,"ttl_ms":30000}"#
        );
    }
}
