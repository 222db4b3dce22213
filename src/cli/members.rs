//! `paxosdb cluster add-node | remove-node | replace-node`: membership changes on a
//! running cluster, through any node (see `crate::membership`).
//!
//! A new node is started first, with `--join` pointing at a member's peer address; the
//! change then adds it, and it copies the cluster's state by itself. Exit 0 with the new
//! membership once the contacted node applied the change; exit 2 when the outcome is
//! unknown (the change may still be decided: check `paxosdb status`).

use super::{client, Cli};
use crate::error::{Error, Result};
use clap::Args;
use serde_json::json;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct AddNodeArgs {
    /// The new node's id (unused in this cluster).
    pub id: u64,
    /// The new node's peer address (host:port), as given to its --peers.
    pub addr: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RemoveNodeArgs {
    /// The member to remove.
    pub id: u64,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ReplaceNodeArgs {
    /// The member to remove.
    pub old: u64,
    /// The new node's id.
    pub id: u64,
    /// The new node's peer address.
    pub addr: String,
    #[arg(long)]
    pub json: bool,
}

/// Runs one change: `add` then `remove`, in one configuration change.
pub async fn change(
    cli: &Cli,
    add: &[(u64, String)],
    remove: &[u64],
    json: bool,
) -> Result<ExitCode> {
    let c = client(cli)?;
    match c.change_membership(add, remove).await {
        Ok(r) => {
            let members: Vec<String> = r
                .members
                .iter()
                .map(|m| format!("{}={}", m.id, m.peer_addr))
                .collect();
            if json {
                let ms: Vec<_> = r
                    .members
                    .iter()
                    .map(|m| json!({"id": m.id, "peer_addr": m.peer_addr}))
                    .collect();
                println!("{}", json!({"config_id": r.config_id, "members": ms}));
            } else {
                println!(
                    "configuration {}: members {}",
                    r.config_id,
                    members.join(",")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ Error::OutcomeUnknown(_)) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(2))
        }
        Err(e) => Err(e),
    }
}
