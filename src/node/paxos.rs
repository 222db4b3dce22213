//! Building the node's OmniPaxos instance, and replacing it when the configuration
//! changes or a fetched state is installed.
//!
//! The state machine is the authority on where the node is: its applied index (global,
//! counting across configurations) and the membership in force. [`build`] makes the log
//! storage agree with it before OmniPaxos sees the storage:
//!
//! - storage whose Paxos state belongs to an older configuration (its promise and accepted
//!   round carry an older configuration id, or none) is wiped: every configuration runs a
//!   fresh OmniPaxos log, and ballots do not order across configurations. A node cannot
//!   have accepted anything in a configuration it never promised in, so nothing is lost;
//! - a state machine ahead of the decided log (an installed state) resets the log to
//!   start where the state ends, keeping the promise. What the node tells a leader it
//!   accepted must stay true, because OmniPaxos' leader computes from it where to sync
//!   the node from:
//!   - accepted entries above the state's end are kept with their accepted round:
//!     forgetting them could lose a chosen entry, and they are a genuine claim;
//!   - if the state covers every accepted entry, the node claims the state's prefix
//!     under a ballot below every real one (round 0, this node's id). Keeping the old
//!     round with the longer log would claim a log that round never had, and a leader
//!     that elected itself with that round as the highest would sync the node from
//!     that round's end, below the installed state (nemesis, seeds 34 and 44). A ballot
//!     below every real one never hides a real accepted entry, and makes the leader sync
//!     from the node's decided index.
//!
//! Both are single synced writes, and both are decided from durable state alone, so a
//! crash anywhere in a state installation or a configuration switch is finished by the
//! next start.

use super::{Core, CoreConfig};
use crate::command::LogEntry;
use crate::error::{Error, Result};
use crate::membership::Membership;
use crate::storage::LogStorage;
use omnipaxos::ballot_leader_election::Ballot;
use omnipaxos::storage::{Storage, StorageOp};
use omnipaxos::{ClusterConfig, OmniPaxos, OmniPaxosConfig, ServerConfig};

/// Builds the OmniPaxos instance of membership `m` over `storage`, for a state machine
/// that has applied `applied` entries (global index).
pub(super) fn build<S: Storage<LogEntry>>(
    cfg: &CoreConfig,
    m: &Membership,
    mut storage: S,
    applied: u64,
) -> Result<OmniPaxos<LogEntry, S>> {
    if !m.contains(cfg.id) {
        return Err(Error::Config(format!(
            "node {} is not a member of configuration {} ({})",
            cfg.id,
            m.config_id,
            m.describe()
        )));
    }
    let config_of = |b: Option<Ballot>| b.map_or(0, |b| b.config_id);
    let storage_config = config_of(storage.get_promise().map_err(storage_error)?).max(config_of(
        storage.get_accepted_round().map_err(storage_error)?,
    ));
    if storage_config < m.config_id {
        wipe(&mut storage)?;
    }
    let local_applied = applied.saturating_sub(m.base);
    let decided = storage.get_decided_idx().map_err(storage_error)? as u64;
    if local_applied > decided {
        let below_all = Ballot::with(m.config_id, 0, 0, cfg.id);
        reset_log(&mut storage, local_applied, below_all)?;
    }
    let op_config = OmniPaxosConfig {
        cluster_config: ClusterConfig {
            configuration_id: m.config_id,
            nodes: super::solo::paxos_nodes(&m.ids()),
            flexible_quorum: None,
        },
        server_config: ServerConfig {
            pid: cfg.id,
            election_tick_timeout: cfg.election_ticks,
            resend_message_tick_timeout: cfg.election_ticks * 5,
            ..Default::default()
        },
    };
    let mut paxos = op_config
        .build(storage)
        .map_err(|e| Error::Config(format!("OmniPaxos configuration: {e}")))?;
    // A node that restarts with a promise for its *own* ballot must take over with a
    // higher one. OmniPaxos 0.2.4 restarts its election module with a low ballot and
    // keeps the promised one as "leader"; if that ballot never won (the node crashed
    // during its Prepare) the real leader ignores the node's PrepareReq (its ballot is
    // higher than the leader's) and, as the others are happy with their leader, no
    // election ever happens: the node stays behind and unavailable for good
    // (deterministic simulation, seed 153).
    // Alone in the configuration (beside its witness, which never leads): lead at once.
    if paxos.get_promise().pid == cfg.id || super::solo::alone(m, cfg.id) {
        paxos.try_become_leader();
    }
    Ok(paxos)
}

/// Makes the log start at local index `at`: entries below it are dropped and counted as
/// decided (an installed state covers them). If no accepted entry remains, the accepted
/// round becomes `below_all` (see the module docs).
fn reset_log<S: Storage<LogEntry>>(storage: &mut S, at: u64, below_all: Ballot) -> Result<()> {
    let decided = storage.get_decided_idx().map_err(storage_error)?;
    let accepted = storage.get_compacted_idx().map_err(storage_error)?
        + storage.get_log_len().map_err(storage_error)?;
    let at = at as usize;
    let mut ops = vec![
        StorageOp::Trim(at),
        StorageOp::SetCompactedIdx(at),
        StorageOp::SetDecidedIndex(decided.max(at)),
    ];
    let keeps_accepted = accepted > at;
    if !keeps_accepted {
        ops.push(StorageOp::SetAcceptedRound(below_all));
    }
    tracing::info!(
        at,
        decided,
        accepted,
        keeps_accepted,
        "log reset to start where the installed state ends"
    );
    storage.write_atomically(ops).map_err(storage_error)
}

/// Forgets an older configuration's log and Paxos state.
fn wipe<S: Storage<LogEntry>>(storage: &mut S) -> Result<()> {
    let has_state = storage.get_promise().map_err(storage_error)?.is_some()
        || storage.get_log_len().map_err(storage_error)? > 0
        || storage.get_compacted_idx().map_err(storage_error)? > 0;
    if !has_state {
        return Ok(());
    }
    tracing::info!("log of an older configuration wiped");
    storage
        .write_atomically(vec![
            StorageOp::AppendOnPrefix(0, vec![]),
            StorageOp::SetCompactedIdx(0),
            StorageOp::SetDecidedIndex(0),
            StorageOp::SetPromise(Ballot::default()),
            StorageOp::SetAcceptedRound(Ballot::default()),
            StorageOp::SetStopsign(None),
        ])
        .map_err(storage_error)
}

pub(super) fn storage_error(e: Box<dyn std::error::Error>) -> Error {
    Error::Storage(e.to_string())
}

impl<S: LogStorage> Core<S> {
    /// Replaces the OmniPaxos instance by one built from the reopened storage, for the
    /// membership and applied index the state machine holds now.
    pub(super) fn rebuild(&mut self) -> Result<()> {
        let storage = match self.reopen.as_mut() {
            Some(f) => f()?,
            None => return Err(Error::Internal("this node cannot reopen its log".into())),
        };
        self.log_sync = storage.sync_control();
        self.paxos = build(
            &self.cfg,
            &self.membership,
            storage,
            self.sm.applied_index(),
        )?;
        self.witness = super::solo::Witness::for_membership(
            &self.cfg,
            &self.membership,
            self.paxos.get_decided_idx(),
        )?;
        self.trimmer = super::compaction::Trimmer::default();
        Ok(())
    }

    /// Global index of local log index `i` of the current configuration.
    pub(super) fn global(&self, i: usize) -> u64 {
        self.membership.base + i as u64
    }
}
