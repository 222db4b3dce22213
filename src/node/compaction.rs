//! Keeping the log bounded: when a node trims its log prefix, and what it refuses to do
//! with a trimmed log.
//!
//! Every node trims **its own** log, locally, and only entries its state machine has
//! applied (the applied state is durable: the trim is a synced RocksDB write, and the
//! WAL is ordered, so the apply batches before it are durable too). How far it trims is
//! decided by [`Trimmer`]:
//!
//! - up to the smallest applied index any node of the cluster reported ([`Note::Progress`],
//!   sent by every node a few times a second): nobody needs those entries any more;
//! - beyond that only to keep at most [`CompactionPolicy::keep_entries`] applied entries
//!   (and about [`CompactionPolicy::keep_bytes`] of them): a node that is down for longer
//!   than that no longer gets entries but the whole state ([`Note::NeedState`] and a state
//!   transfer, see the transfer module).
//!
//! OmniPaxos (0.2.4, no snapshots) syncs a lagging follower or a new leader by reading the
//! log from the peer's decided index. With a trimmed prefix that read would be wrong, so
//! [`guard`] inspects incoming messages first: a `Prepare` or `Promise` from a node whose
//! decided index is below our compacted index is dropped, and the sender is told to fetch
//! our state instead. OmniPaxos' own `Compaction` messages are never sent by paxosdb and
//! are dropped when received.

use crate::command::{LogEntry, NodeId};
use omnipaxos::messages::sequence_paxos::{Compaction, PaxosMessage, PaxosMsg};
use omnipaxos::messages::Message;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// When a node trims its log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompactionPolicy {
    /// Trim once at least this many entries can go (0 = never trim).
    pub every_entries: u64,
    /// Most applied entries kept for peers that are behind.
    pub keep_entries: u64,
    /// Most bytes of applied entries kept for peers that are behind (approximate: the
    /// commands' sizes, counted as they are applied).
    pub keep_bytes: u64,
}

impl CompactionPolicy {
    /// No compaction at all.
    pub const OFF: CompactionPolicy = CompactionPolicy {
        every_entries: 0,
        keep_entries: u64::MAX,
        keep_bytes: u64::MAX,
    };
}

/// Node-to-node messages beside OmniPaxos' own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Note {
    /// The sender has applied this many entries and trimmed its log below `compacted`.
    Progress { applied: u64, compacted: u64 },
    /// The sender's log starts at `compacted`, above the receiver's decided index: the
    /// receiver must fetch the sender's state (a state transfer) to catch up.
    NeedState { compacted: u64 },
    /// The leader's read round `id` under `ballot` (see `reads`): ack it if you promised
    /// exactly that ballot.
    ReadProbe {
        id: u64,
        ballot: omnipaxos::ballot_leader_election::Ballot,
    },
    /// The answer to a [`Note::ReadProbe`] by a member still promised to its ballot.
    ReadAck {
        id: u64,
        ballot: omnipaxos::ballot_leader_election::Ballot,
    },
    /// A follower asks the leader for a read index (its ask `id`).
    ReadAsk { id: u64 },
    /// The leader's confirmed read index for ask `id`: reads may be answered once the
    /// asker has applied `index` entries.
    ReadIndex { id: u64, index: u64 },
}

/// Decides how far this node trims its log.
#[derive(Debug, Default)]
pub struct Trimmer {
    /// Applied entries still in the log and their approximate sizes, oldest first.
    sizes: VecDeque<(u64, u64)>,
    bytes: u64,
    /// Last applied index each peer reported.
    peer_applied: BTreeMap<NodeId, u64>,
}

impl Trimmer {
    pub fn applied(&mut self, index: u64, bytes: u64) {
        self.sizes.push_back((index, bytes));
        self.bytes += bytes;
    }

    pub fn peer_progress(&mut self, peer: NodeId, applied: u64) {
        self.peer_applied.insert(peer, applied);
    }

    /// The index to trim below, if a trim is due: at most `applied`; at least up to what
    /// every node in `peers` has applied; beyond that as far as the keep limits demand.
    /// Called every tick: cheap unless a trim of at least one step is possible.
    pub fn target(
        &self,
        policy: &CompactionPolicy,
        peers: impl IntoIterator<Item = NodeId>,
        applied: u64,
        compacted: u64,
    ) -> Option<u64> {
        if policy.every_entries == 0 {
            return None;
        }
        // Cheap unless a step is possible or the log holds more bytes than it may keep.
        if applied < compacted.saturating_add(policy.every_entries)
            && self.bytes <= policy.keep_bytes
        {
            return None;
        }
        let everyone = peers
            .into_iter()
            .map(|p| self.peer_applied.get(&p).copied().unwrap_or(0))
            .fold(applied, u64::min);
        let mut target = everyone.max(applied.saturating_sub(policy.keep_entries));
        // One pass: drop the sizes below the target, then trim further while the bytes
        // kept (entries in [target, applied) seen applied by this process) exceed the limit.
        let mut kept = self.bytes;
        let mut sizes = self.sizes.iter().peekable();
        while let Some((_, b)) = sizes.next_if(|(i, _)| *i < target) {
            kept -= b;
        }
        // Over the limit: trim down to three quarters of it, so that a log held at its
        // byte limit (a peer down, big entries) is not trimmed again every tick.
        let mut by_bytes = false;
        let floor = if kept > policy.keep_bytes {
            policy.keep_bytes / 4 * 3
        } else {
            kept
        };
        while kept > floor {
            let Some((i, b)) = sizes.next() else { break };
            kept -= b;
            target = i + 1;
            by_bytes = true;
        }
        let target = target.min(applied);
        // Steps keep trims rare; but a log over its byte limit is trimmed whatever the
        // step (a few huge entries must not stay because they are few).
        let step = target >= compacted.saturating_add(policy.every_entries);
        (step || (by_bytes && target > compacted)).then_some(target)
    }

    /// Forgets the sizes of entries below `compacted`.
    pub fn trimmed(&mut self, compacted: u64) {
        while let Some(&(i, b)) = self.sizes.front() {
            if i >= compacted {
                break;
            }
            self.bytes -= b;
            self.sizes.pop_front();
        }
    }
}

/// The message that makes OmniPaxos trim this node's own log below `idx` (OmniPaxos 0.2.4
/// trims only on a leader's request; a follower applies a `Trim` it receives as is, which
/// is the local trim paxosdb needs).
pub fn local_trim(id: NodeId, idx: u64) -> Message<LogEntry> {
    Message::SequencePaxos(PaxosMessage {
        from: id,
        to: id,
        msg: PaxosMsg::Compaction(Compaction::Trim(idx as usize)),
    })
}

/// What to do with an incoming OmniPaxos message, given this node's compacted index.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Deliver,
    Drop,
    /// Drop it and tell the sender to fetch our state.
    SendState,
}

pub fn guard(msg: &Message<LogEntry>, compacted: u64) -> Verdict {
    let Message::SequencePaxos(m) = msg else {
        return Verdict::Deliver;
    };
    let behind = |decided: usize| (decided as u64) < compacted;
    match &m.msg {
        PaxosMsg::Compaction(_) => Verdict::Drop,
        PaxosMsg::Prepare(p) if behind(p.decided_idx) => Verdict::SendState,
        PaxosMsg::Promise(p) if behind(p.decided_idx) => Verdict::SendState,
        _ => Verdict::Deliver,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: CompactionPolicy = CompactionPolicy {
        every_entries: 10,
        keep_entries: 100,
        keep_bytes: 1000,
    };

    #[test]
    fn trims_to_what_everyone_applied_in_steps() {
        let mut t = Trimmer::default();
        for i in 0..50 {
            t.applied(i, 1);
        }
        t.peer_progress(2, 30);
        // Node 3 never reported: nothing is known to be safe beyond the keep limits.
        assert_eq!(t.target(&POLICY, [2, 3], 50, 0), None);
        t.peer_progress(3, 25);
        assert_eq!(t.target(&POLICY, [2, 3], 50, 0), Some(25));
        t.trimmed(25);
        // Less than a step more: wait.
        t.peer_progress(3, 34);
        assert_eq!(t.target(&POLICY, [2, 3], 50, 25), None);
        t.peer_progress(3, 40);
        assert_eq!(t.target(&POLICY, [2, 3], 50, 25), None, "node 2 is at 30");
        t.peer_progress(2, 45);
        assert_eq!(t.target(&POLICY, [2, 3], 50, 25), Some(40));
    }

    #[test]
    fn a_node_that_is_down_stops_holding_the_log_beyond_the_limits() {
        let mut t = Trimmer::default();
        for i in 0..500 {
            t.applied(i, 1);
        }
        t.peer_progress(2, 500);
        // Node 3 is down at 3: keep 100 entries for it, no more.
        t.peer_progress(3, 3);
        assert_eq!(t.target(&POLICY, [2, 3], 500, 0), Some(400));
        // Big entries: the byte limit trims further.
        let mut t = Trimmer::default();
        for i in 0..50 {
            t.applied(i, 100);
        }
        // Over the limit, it trims to three quarters of it (750 bytes).
        assert_eq!(t.target(&POLICY, [2], 50, 0), Some(43));
        t.trimmed(43);
        assert_eq!(t.bytes, 700);
    }

    #[test]
    fn a_log_over_its_byte_limit_is_trimmed_even_below_a_step() {
        let mut t = Trimmer::default();
        // Five entries of 400 bytes: fewer than a step (10), but 2000 bytes > 1000; trimmed
        // to under three quarters of the limit.
        for i in 0..5 {
            t.applied(i, 400);
        }
        t.peer_progress(2, 0);
        assert_eq!(t.target(&POLICY, [2], 5, 0), Some(4));
        t.trimmed(4);
        assert_eq!(
            t.target(&POLICY, [2], 5, 4),
            None,
            "400 bytes kept: under the limit"
        );
        // Growing back over the limit trims again; up to it, nothing happens.
        t.applied(5, 400);
        assert_eq!(
            t.target(&POLICY, [2], 6, 4),
            None,
            "800 bytes: under the limit"
        );
        t.applied(6, 400);
        assert_eq!(t.target(&POLICY, [2], 7, 4), Some(6));
    }

    #[test]
    fn never_trims_unapplied_entries_or_when_off() {
        let mut t = Trimmer::default();
        t.peer_progress(2, 1_000);
        assert_eq!(t.target(&POLICY, [2], 20, 0), Some(20));
        assert_eq!(t.target(&CompactionPolicy::OFF, [2], 20, 0), None);
    }
}
