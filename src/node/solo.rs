//! A configuration of one member: the single-node database, run by OmniPaxos with an
//! in-memory *witness* as its second node.
//!
//! A single-node database is an ordinary configuration whose only member is this node:
//! the same log, state machines, on-disk format and write path as every cluster member,
//! and it grows into a cluster by the usual membership changes (and shrinks back into one
//! the same way). OmniPaxos 0.2.4, though, refuses a configuration of one node ("Need
//! more than 1 node"), and even past that check its leader only leaves the Prepare phase
//! when a peer's `Promise` arrives and only decides when a peer's `Accepted` arrives.
//!
//! So the OmniPaxos configuration of a one-member membership has two nodes: the member
//! and a witness ([`witness_id`]), a second OmniPaxos instance in this process over an
//! in-memory log ([`MemStorage`]). The node thread hands the witness every message
//! addressed to it and the witness's answers back to its own instance, in the same round
//! ([`Witness::exchange`]): a write is appended and fsynced by the member, accepted by the
//! witness in memory, and decided in that round — one fsync, no network.
//!
//! Why this is safe although the witness forgets everything at a restart: with two
//! nodes, every quorum (prepare or accept) is both of them, so every decision and every
//! leader's promise quorum includes the member, whose promise and accepted log are
//! durable. Two quorums always intersect in the member; what the witness says adds
//! nothing to safety and can take nothing away — it is the member's own durable state
//! that decides, exactly as a quorum of one would.
//!
//! The witness never leads: it is never ticked, so it never starts an election, and the
//! member takes the lead at once when the instance is built (`try_become_leader`). It
//! starts at the member's decided index (an empty log whose prefix counts as compacted),
//! so a leader always syncs it from entries its own log still holds, and it trims what
//! it has seen decided every round, so it holds no more than the entries in flight.
//!
//! # Invariants
//!
//! - A witness exists exactly while the membership in force has one member, this node
//!   ([`paxos_nodes`] is the only place the OmniPaxos node list of a membership is made);
//!   with two or more members everything is OmniPaxos' own between real peers.
//! - The witness's messages never leave the process, and nothing from the network
//!   reaches it: its id is not a member, and messages addressed to it are taken out of
//!   the outgoing queue before it reaches the transport.
//! - The witness never proposes or leads (it is never ticked and gets no client
//!   commands).
//! - It holds at most the entries not yet decided (it trims to its decided index every
//!   exchange).

use super::{compaction, quirks, CoreConfig};
use crate::command::{LogEntry, NodeId};
use crate::error::{Error, Result};
use crate::membership::Membership;
use crate::storage::memory::MemStorage;
use omnipaxos::messages::Message;
use omnipaxos::storage::{Storage, StorageOp};
use omnipaxos::{ClusterConfig, OmniPaxos, OmniPaxosConfig, ServerConfig};

/// The OmniPaxos node ids of a configuration whose members are `members`: the members,
/// and with one member its witness too.
pub(super) fn paxos_nodes(members: &[NodeId]) -> Vec<NodeId> {
    match members {
        [only] => vec![*only, witness_id(*only)],
        _ => members.to_vec(),
    }
}

/// The id of the witness of a configuration whose only member is `member`: any id but
/// the member's will do (no other node is in that configuration); a small one keeps
/// OmniPaxos' per-node tables small.
pub fn witness_id(member: NodeId) -> NodeId {
    member + 1
}

/// True when `m` is a configuration of this one node.
pub(super) fn alone(m: &Membership, me: NodeId) -> bool {
    matches!(m.members.as_slice(), [only] if only.id == me)
}

/// The in-memory second node of a one-member configuration (see the module docs).
pub struct Witness {
    id: NodeId,
    paxos: OmniPaxos<LogEntry, MemStorage>,
}

impl Witness {
    /// The witness of membership `m` if it has one member, this node; its log starts at
    /// `decided` (local index), the member's decided index.
    pub(super) fn for_membership(
        cfg: &CoreConfig,
        m: &Membership,
        decided: usize,
    ) -> Result<Option<Witness>> {
        if !alone(m, cfg.id) {
            return Ok(None);
        }
        let id = witness_id(cfg.id);
        let mut storage = MemStorage::default();
        storage
            .write_atomically(vec![
                StorageOp::Trim(decided),
                StorageOp::SetCompactedIdx(decided),
                StorageOp::SetDecidedIndex(decided),
            ])
            .map_err(|e| Error::Internal(format!("witness log: {e}")))?;
        let config = OmniPaxosConfig {
            cluster_config: ClusterConfig {
                configuration_id: m.config_id,
                nodes: paxos_nodes(&[cfg.id]),
                flexible_quorum: None,
            },
            server_config: ServerConfig {
                pid: id,
                election_tick_timeout: cfg.election_ticks,
                resend_message_tick_timeout: cfg.election_ticks * 5,
                ..Default::default()
            },
        };
        let paxos = config
            .build(storage)
            .map_err(|e| Error::Config(format!("OmniPaxos configuration of the witness: {e}")))?;
        Ok(Some(Witness { id, paxos }))
    }

    /// Delivers the messages in `outgoing` addressed to the witness, and the witness's
    /// answers to `member`, until neither has anything more for the other; what remains in
    /// `outgoing` is for real peers. Then trims the witness's log to its decided index.
    pub(super) fn exchange<S: Storage<LogEntry>>(
        &mut self,
        member: &mut OmniPaxos<LogEntry, S>,
        outgoing: &mut Vec<Message<LogEntry>>,
    ) {
        // Each pass is one step of the protocol (prepare → promise → sync → accepted →
        // decide); a handful is all one round can need.
        for _ in 0..8 {
            let (to_witness, rest): (Vec<_>, Vec<_>) = std::mem::take(outgoing)
                .into_iter()
                .partition(|m| m.get_receiver() == self.id);
            *outgoing = rest;
            if to_witness.is_empty() {
                break;
            }
            for mut msg in to_witness {
                let witness = &self.paxos;
                quirks::fix_stop_sign_sync(&mut msg, |i| witness.read(i));
                self.paxos.handle_incoming(msg);
            }
            let mut answers = Vec::new();
            self.paxos.take_outgoing_messages(&mut answers);
            for mut msg in answers {
                quirks::fix_stop_sign_sync(&mut msg, |i| member.read(i));
                // As for a peer's message: never a compaction request (only the member
                // trims its own log), never a sync from below its trimmed log.
                let compacted = member.get_compacted_idx() as u64;
                if compaction::guard(&msg, compacted) == compaction::Verdict::Deliver {
                    member.handle_incoming(msg);
                }
            }
            member.take_outgoing_messages(outgoing);
        }
        let decided = self.paxos.get_decided_idx();
        if decided > self.paxos.get_compacted_idx() {
            self.paxos
                .handle_incoming(compaction::local_trim(self.id, decided as u64));
        }
    }
}
