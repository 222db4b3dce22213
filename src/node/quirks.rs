//! Workarounds for OmniPaxos 0.2.4 behaviour that paxosdb must not inherit.
//!
//! **A stop sign counted as a log entry in a sync point.** A node's accepted index counts
//! an accepted stop sign as one more slot. When a new leader syncs a follower whose
//! promise matches the previous round, it takes the follower's accepted index — stop sign
//! slot included — as the point to sync from, and sends an empty suffix plus the stop sign.
//! The follower then puts the stop sign one slot *after* where it is, its accepted index
//! grows by one, the leader decides an index beyond its own log, and no node can read
//! the decided stop sign any more (found by killing the leader right after it proposed a
//! membership change, tests/e2e_membership.rs). The same can happen with the log a
//! follower sends back in a promise. [`fix_stop_sign_sync`] moves such a sync point back
//! onto the stop sign's slot when the receiver holds the stop sign exactly there.

use crate::command::LogEntry;
use omnipaxos::messages::sequence_paxos::{PaxosMessage, PaxosMsg};
use omnipaxos::messages::Message;
use omnipaxos::util::LogEntry as PaxosEntry;
use omnipaxos::util::LogSync;

/// Corrects the sync point of an incoming `AcceptSync` or `Promise` (see the module docs);
/// `read` reads this node's log.
pub fn fix_stop_sign_sync(
    msg: &mut Message<LogEntry>,
    read: impl Fn(usize) -> Option<PaxosEntry<LogEntry>>,
) {
    let Message::SequencePaxos(PaxosMessage { msg, .. }) = msg else {
        return;
    };
    let sync: &mut LogSync<LogEntry> = match msg {
        PaxosMsg::AcceptSync(a) => &mut a.log_sync,
        PaxosMsg::Promise(p) => match p.log_sync.as_mut() {
            Some(s) => s,
            None => return,
        },
        _ => return,
    };
    if sync.stopsign.is_none() || !sync.suffix.is_empty() || sync.sync_idx == 0 {
        return;
    }
    if matches!(read(sync.sync_idx - 1), Some(PaxosEntry::StopSign(..))) {
        tracing::debug!(
            sync_idx = sync.sync_idx,
            "sync point moved back onto the stop sign's slot"
        );
        sync.sync_idx -= 1;
    }
}

/// Logs (at debug level) what a Sequence Paxos message says about decided and accepted indexes.
pub fn debug_peer_message(config: u32, msg: &Message<LogEntry>) {
    use omnipaxos::messages::sequence_paxos::PaxosMsg;
    if let Message::SequencePaxos(m) = msg {
        let what = match &m.msg {
            PaxosMsg::AcceptSync(a) => format!(
                "AcceptSync n={:?} decided={} sync_idx={} suffix={} stopsign={}",
                a.n,
                a.decided_idx,
                a.log_sync.sync_idx,
                a.log_sync.suffix.len(),
                a.log_sync.stopsign.is_some()
            ),
            PaxosMsg::AcceptDecide(a) => format!(
                "AcceptDecide n={:?} decided={} entries={}",
                a.n,
                a.decided_idx,
                a.entries.len()
            ),
            PaxosMsg::Decide(d) => format!("Decide n={:?} decided={}", d.n, d.decided_idx),
            PaxosMsg::AcceptStopSign(a) => format!("AcceptStopSign n={:?}", a.n),
            PaxosMsg::Prepare(p) => format!("Prepare n={:?} decided={}", p.n, p.decided_idx),
            PaxosMsg::Promise(p) => format!(
                "Promise n={:?} decided={} accepted={}",
                p.n, p.decided_idx, p.accepted_idx
            ),
            _ => return,
        };
        tracing::debug!(from = m.from, config, "{what}");
    }
}
