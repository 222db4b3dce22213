//! `paxosdb status`: asks every endpoint for its view and prints one row per member:
//! id, role (leader/follower/candidate/unreachable), decided and applied index, process
//! id, and every listener (peer, grpc, ...).
//!
//! The endpoints given are where to start, not the cluster: the members named by the
//! answers (their gRPC listeners) are asked too, until no new one appears, so that a
//! node added since the endpoints were written down is shown as it is. A member is
//! `unreachable` only if it was asked and did not answer (or has no gRPC listener known).

use super::{client_of, endpoints, Cli};
use crate::api::pb;
use crate::error::Result;
use clap::Args;
use serde_json::json;
use std::collections::BTreeMap;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Default, Clone)]
struct Row {
    id: u64,
    role: String,
    decided: Option<u64>,
    applied: Option<u64>,
    compacted: Option<u64>,
    catching_up_from: Option<u64>,
    cut_off: bool,
    pid: Option<u32>,
    listeners: BTreeMap<String, String>,
}

/// Rounds of asking the members the answers named (each round asks only new addresses).
const DISCOVERY_ROUNDS: usize = 4;

/// Asks each of `eps` for its status (3 s each, at once); `None` where none came.
async fn ask(cli: &Cli, eps: &[String]) -> Result<Vec<Option<pb::StatusResponse>>> {
    let c = client_of(cli, eps)?;
    Ok(futures::future::join_all((0..eps.len()).map(|i| {
        let c = c.clone();
        async move {
            tokio::time::timeout(std::time::Duration::from_secs(3), c.status_of(i))
                .await
                .ok()
                .and_then(|r| r.ok())
        }
    }))
    .await)
}

/// The gRPC listeners of the members the answers name, in the newest configuration any
/// of them reports.
fn member_endpoints(answers: &[Option<pb::StatusResponse>]) -> Vec<String> {
    let ok: Vec<&pb::StatusResponse> = answers.iter().flatten().collect();
    let newest = ok.iter().map(|s| s.config_id).max().unwrap_or(0);
    let mut eps = Vec::new();
    for st in ok.iter().filter(|s| s.config_id == newest) {
        for m in &st.members {
            for l in m.listeners.iter().filter(|l| l.name == "grpc") {
                if !eps.contains(&l.addr) {
                    eps.push(l.addr.clone());
                }
            }
        }
    }
    eps
}

pub async fn run(cli: &Cli, a: &StatusArgs) -> Result<ExitCode> {
    let mut eps = endpoints(cli)?;
    let mut answers = ask(cli, &eps).await?;
    for _ in 0..DISCOVERY_ROUNDS {
        let new: Vec<String> = member_endpoints(&answers)
            .into_iter()
            .filter(|e| !eps.contains(e))
            .collect();
        if new.is_empty() {
            break;
        }
        answers.extend(ask(cli, &new).await?);
        eps.extend(new);
    }

    let mut rows: BTreeMap<u64, Row> = BTreeMap::new();
    let mut seen_eps: Vec<String> = Vec::new();
    let ok: Vec<&pb::StatusResponse> = answers.iter().flatten().collect();
    let config = ok.iter().map(|s| s.config_id).max().unwrap_or(0);
    for st in &ok {
        for m in &st.members {
            let row = rows.entry(m.id).or_insert_with(|| Row {
                id: m.id,
                role: "unreachable".into(),
                ..Default::default()
            });
            row.listeners.insert("peer".into(), m.peer_addr.clone());
            for l in &m.listeners {
                row.listeners.insert(l.name.clone(), l.addr.clone());
            }
        }
    }
    for st in &ok {
        let row = rows.entry(st.id).or_default();
        row.id = st.id;
        row.role = st.role.clone();
        row.decided = Some(st.decided_index);
        row.applied = Some(st.applied_index);
        row.compacted = Some(st.compacted_index);
        row.catching_up_from = Some(st.catching_up_from).filter(|&p| p != 0);
        if let Some(p) = row.catching_up_from {
            row.role = format!("catch-up<-{p}");
        }
        row.cut_off = st.cut_off;
        if st.cut_off {
            // Whatever OmniPaxos believes, the node serves nothing now.
            row.role = "cut-off".into();
        }
        row.pid = Some(st.pid);
        for l in &st.listeners {
            row.listeners.insert(l.name.clone(), l.addr.clone());
            seen_eps.push(l.addr.clone());
        }
    }
    // Endpoints that answered nothing and match no known member.
    let known: Vec<String> = rows
        .values()
        .flat_map(|r| r.listeners.values().cloned())
        .collect();
    let mut unknown: Vec<&String> = Vec::new();
    for (ep, ans) in eps.iter().zip(&answers) {
        if ans.is_none() && !known.contains(ep) {
            unknown.push(ep);
        }
    }

    if a.json {
        let nodes: Vec<_> = rows
            .values()
            .map(|r| {
                json!({"id": r.id, "role": r.role, "decided_index": r.decided,
                       "applied_index": r.applied, "compacted_index": r.compacted,
                       "catching_up_from": r.catching_up_from, "cut_off": r.cut_off,
                       "pid": r.pid, "listeners": r.listeners})
            })
            .collect();
        println!(
            "{}",
            json!({"config_id": config, "nodes": nodes, "unreachable_endpoints": unknown})
        );
    } else {
        println!(
            "{:<4} {:<12} {:>9} {:>9} {:>9} {:>8}  LISTENERS",
            "ID", "ROLE", "DECIDED", "APPLIED", "LOG FROM", "PID"
        );
        let dash = || "-".to_string();
        for r in rows.values() {
            let ls: Vec<String> = r
                .listeners
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            println!(
                "{:<4} {:<12} {:>9} {:>9} {:>9} {:>8}  {}",
                r.id,
                r.role,
                r.decided.map_or_else(dash, |v| v.to_string()),
                r.applied.map_or_else(dash, |v| v.to_string()),
                r.compacted.map_or_else(dash, |v| v.to_string()),
                r.pid.map_or_else(dash, |v| v.to_string()),
                ls.join(" ")
            );
        }
        for ep in &unknown {
            println!(
                "{:<4} {:<12} {:>9} {:>9} {:>9} {:>8}  grpc={ep}",
                "?", "unreachable", "-", "-", "-", "-"
            );
        }
        if config > 1 {
            println!("membership configuration {config}");
        }
    }
    Ok(if ok.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
