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
//!   transfer, see the transfer module);
//! - but not past a live **transfer hold** (below).
//!
//! ## Transfer holds
//!
//! A state transfer takes time, and the cluster goes on writing meanwhile. If it writes
//! more than the members keep before the fetched state (at some index `S`) is installed,
//! every member has trimmed past `S` by then: the node is behind the trimmed logs again,
//! is told to fetch a state again, and under steady writes with a big state it loops for
//! good. So a node that starts fetching tells every member ([`Note::Fetching`], at once
//! and then with every progress note while it fetches) the index the fetch is at or
//! above: the compacted index of the peer that sent it `NeedState` (the peer exports its
//! applied state, which is at or past its compacted index). Each member then holds its
//! log from there ([`Trimmer::hold`]): it does not trim past the hold (a member that had
//! already trimmed past it trims no further). The hold follows the fetcher's progress
//! (its index rises with the applied index the fetcher reports), so that once the state is
//! installed the fetcher is synced from the held log; it ends:
//!
//! - when the fetcher no longer needs it: it reported an applied index at or past the hold
//!   (the state is installed), and then either an applied index past the state it
//!   installed (a leader synced it from the log: its log now holds every entry up to that
//!   leader's log end, and it is an ordinary follower, however far its applied index lags)
//!   or one the ordinary limits do not trim past (nothing written since) — checked every
//!   tick, not only when a trim is due, so that a fetcher that caught up and later stopped
//!   (paused, killed) holds nothing and is trimmed past like any stopped member;
//! - when the fetcher went silent: nothing (no progress, no fetching note) heard from it
//!   for [`CompactionPolicy::hold_silence`]. It is stopped, perhaps right after it
//!   installed the state and before a leader synced it, and a stopped node holds nothing;
//!   such a hold is not spent: once the fetcher runs again, its notes hold the log anew,
//!   from the time the first hold of that fetch began (silences do not reset the cap);
//! - when it is older than [`CompactionPolicy::hold_for`], or when the log it holds (from
//!   its index to the applied end) exceeds [`CompactionPolicy::hold_bytes`]: a fetcher
//!   that never finishes, or is so slow that holding for it would grow the log without
//!   bound, loses its hold (the member trims by the ordinary rules at once), and the same
//!   fetch (a note with an index at or below the lost hold's) gets none again; only a
//!   later fetch, from a log trimmed past it, gets a new one.
//!
//! A hold only ever keeps entries a member would otherwise trim: trimming less is always
//! safe, and every rule above ([`Invariants`](self#invariants)) stands.
//!
//! OmniPaxos (0.2.4, no snapshots) syncs a lagging follower or a new leader by reading the
//! log from the peer's decided index. With a trimmed prefix that read would be wrong, so
//! [`guard`] inspects incoming messages first: a `Prepare` or `Promise` from a node whose
//! decided index is below our compacted index is dropped, and the sender is told to fetch
//! our state instead. OmniPaxos' own `Compaction` messages are never sent by paxosdb and
//! are dropped when received.
//!
//! ## Invariants
//!
//! - a node trims only its own log, and only entries its state machines applied (and made
//!   durable first): the trim target is never above the applied index;
//! - it trims nothing below the smallest applied index a member reported unless the keep
//!   limits demand it, and nothing past a live transfer hold unless the hold's caps ended
//!   it: a hold lives at most [`CompactionPolicy::hold_for`] and keeps at most
//!   [`CompactionPolicy::hold_bytes`] of log, so no fetcher makes a log grow without
//!   bound (`hold_bytes` is at most half a frame: the held log is sent to the fetcher in
//!   one sync message once its state is installed);
//! - a message that would read the log below the compacted index is never delivered to
//!   OmniPaxos ([`guard`]); the sender is told to fetch the state instead.

use crate::command::{LogEntry, NodeId};
use omnipaxos::messages::sequence_paxos::{Compaction, PaxosMessage, PaxosMsg};
use omnipaxos::messages::Message;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

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
    /// Most bytes of applied entries kept for the state transfers under way (a transfer
    /// hold, see the module docs; 0 = no holds).
    pub hold_bytes: u64,
    /// Longest a transfer hold lives.
    pub hold_for: Duration,
    /// A transfer hold ends when its fetcher sent nothing (no progress, no fetching note)
    /// for this long: it is stopped (paused, killed, cut off), and a stopped fetcher holds
    /// nothing (see the module docs).
    pub hold_silence: Duration,
}

/// How long a transfer hold lives at most on a server (its byte cap comes from the frame
/// limit, see `Config::compaction`).
pub const HOLD_FOR: Duration = Duration::from_secs(15 * 60);

/// How long a server keeps a transfer hold for a fetcher it hears nothing from (a fetcher
/// reports its progress every ten ticks, a few times a second, while it fetches too).
pub const HOLD_SILENCE: Duration = Duration::from_secs(10);

impl CompactionPolicy {
    /// No compaction at all.
    pub const OFF: CompactionPolicy = CompactionPolicy {
        every_entries: 0,
        keep_entries: u64::MAX,
        keep_bytes: u64::MAX,
        hold_bytes: 0,
        hold_for: Duration::ZERO,
        hold_silence: Duration::ZERO,
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
    /// A follower asks the leader for a read index (its ask `id`), sent after every read
    /// it asks for arrived, with the ballot it has promised then: when that is the
    /// leader's own ballot the ask doubles as that follower's ack (see `reads`).
    ReadAsk {
        id: u64,
        ballot: omnipaxos::ballot_leader_election::Ballot,
    },
    /// The leader's confirmed read index for ask `id`: reads may be answered once the
    /// asker has applied `index` entries.
    ReadIndex { id: u64, index: u64 },
    /// The sender is fetching a peer's state, at `index` or above: keep the log from
    /// `index` until it follows the log again (a transfer hold, see the module docs).
    Fetching { index: u64 },
}

/// A member's log kept for a peer's state transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Hold {
    /// Trim nothing from here on (global index).
    index: u64,
    /// When the hold began (it lives at most `hold_for` from here).
    since: Instant,
    /// When the fetcher was last heard from (a progress or fetching note).
    heard: Instant,
    /// The first applied index the fetcher reported at or past the hold: the state it
    /// installed. An applied index reported past this one was synced from the log.
    installed: Option<u64>,
}

/// Decides how far this node trims its log.
#[derive(Debug, Default)]
pub struct Trimmer {
    /// Applied entries still in the log, oldest first: each index with the bytes of every
    /// entry this process applied up to and including it (a running total, so that the
    /// bytes of any suffix are one subtraction).
    sizes: VecDeque<(u64, u64)>,
    /// The running total of the newest entry, and of the last one forgotten.
    total: u64,
    forgotten: u64,
    /// Last applied index each peer reported.
    peer_applied: BTreeMap<NodeId, u64>,
    /// Transfer holds by fetching peer.
    holds: BTreeMap<NodeId, Hold>,
    /// Per peer, the index of its last hold that ended by a cap: a fetch at or below it
    /// gets no new hold.
    spent: BTreeMap<NodeId, u64>,
    /// Per peer, the index and start of its last hold that ended by silence: the same
    /// fetch asking again keeps that start, so silences do not reset its time cap.
    silenced: BTreeMap<NodeId, (u64, Instant)>,
}

impl Trimmer {
    pub fn applied(&mut self, index: u64, bytes: u64) {
        self.total += bytes;
        self.sizes.push_back((index, self.total));
    }

    pub fn peer_progress(&mut self, peer: NodeId, applied: u64, now: Instant) {
        self.peer_applied.insert(peer, applied);
        if let Some(h) = self.holds.get_mut(&peer) {
            h.heard = now;
            if h.installed.is_none() && applied >= h.index {
                h.installed = Some(applied);
            }
            h.index = h.index.max(applied);
        }
        if self.spent.get(&peer).is_some_and(|&s| applied >= s) {
            self.spent.remove(&peer);
        }
        if self.silenced.get(&peer).is_some_and(|&(s, _)| applied >= s) {
            self.silenced.remove(&peer);
        }
    }

    /// `peer` fetches a state at `index` or above (its [`Note::Fetching`]): hold the log
    /// from there, unless the policy has no holds or a hold for this fetch already ended
    /// by a cap. A hold under way only moves up; it is not renewed.
    pub fn hold(&mut self, policy: &CompactionPolicy, peer: NodeId, index: u64, now: Instant) {
        if policy.every_entries == 0 || policy.hold_bytes == 0 {
            return;
        }
        if self.spent.get(&peer).is_some_and(|&s| index <= s) {
            return;
        }
        let applied = self.peer_applied.get(&peer).copied().unwrap_or(0);
        let since = match self.silenced.get(&peer) {
            Some(&(s, since)) if index <= s => since,
            _ => now,
        };
        let h = self.holds.entry(peer).or_insert_with(|| {
            tracing::info!(peer, index, "holding the log for the peer's state transfer");
            Hold {
                index,
                since,
                heard: now,
                installed: (applied >= index).then_some(applied),
            }
        });
        h.index = h.index.max(index).max(applied);
        h.heard = now;
    }

    /// The lowest index a live hold keeps the log from, if any.
    pub fn hold_floor(&self) -> Option<u64> {
        self.holds.values().map(|h| h.index).min()
    }

    /// Bytes of the applied entries still in the log.
    fn bytes(&self) -> u64 {
        self.total - self.forgotten
    }

    /// Bytes of the applied entries in the log from index `i` on.
    fn bytes_from(&self, i: u64) -> u64 {
        let p = self.sizes.partition_point(|&(j, _)| j < i);
        let before = if p == 0 {
            self.forgotten
        } else {
            self.sizes[p - 1].1
        };
        self.total - before
    }

    /// Ends a hold by a cap: its fetch gets no new one.
    fn spend(&mut self, peer: NodeId, why: &str) {
        if let Some(h) = self.holds.remove(&peer) {
            tracing::warn!(
                peer,
                index = h.index,
                "log no longer held for the peer's state transfer: {why}"
            );
            self.spent.insert(peer, h.index);
        }
    }

    /// The index to trim below, if a trim is due: at most `applied`; at least up to what
    /// every node in `peers` has applied; beyond that as far as the keep limits demand;
    /// but not past a live transfer hold (whose caps it enforces here). Called every tick:
    /// cheap unless a trim of at least one step is possible.
    pub fn target(
        &mut self,
        policy: &CompactionPolicy,
        peers: impl IntoIterator<Item = NodeId>,
        applied: u64,
        compacted: u64,
        now: Instant,
    ) -> Option<u64> {
        if policy.every_entries == 0 {
            return None;
        }
        let peers: Vec<NodeId> = peers.into_iter().collect();
        // Holds of peers that are no longer members go, as do expired ones.
        self.holds.retain(|p, _| peers.contains(p));
        self.spent.retain(|p, _| peers.contains(p));
        self.silenced.retain(|p, _| peers.contains(p));
        let expired: Vec<NodeId> = (self.holds.iter())
            .filter(|(_, h)| now.duration_since(h.since) >= policy.hold_for)
            .map(|(&p, _)| p)
            .collect();
        for p in expired {
            self.spend(p, "its time ran out");
        }
        // A fetcher heard nothing from is stopped: it holds nothing, like any stopped
        // member (its last report may be the installed state, before a leader synced it).
        // Not spent: once it runs again, its fetching notes may hold the log anew.
        let silent: Vec<NodeId> = (self.holds.iter())
            .filter(|(_, h)| now.duration_since(h.heard) >= policy.hold_silence)
            .map(|(&p, _)| p)
            .collect();
        for p in silent {
            if let Some(h) = self.holds.remove(&p) {
                self.silenced.insert(p, (h.index, h.since));
            }
            tracing::info!(
                peer = p,
                "the peer fetching a state went silent: log no longer held"
            );
        }
        // Holds no longer needed end, checked every tick (not only when a trim is due: a
        // fetcher that caught up and then stopped must not keep its hold): the fetcher
        // applied the held index (its state is installed) and either applied past the
        // state it installed (the leader synced it from the log: it holds every entry up
        // to the leader's log end of that moment, and is an ordinary follower from then
        // on, however far its applied index lags) or the ordinary limits would not trim
        // past what it applied (no write since the install).
        let done: Vec<NodeId> = (self.holds.iter())
            .filter(|(p, h)| {
                let theirs = self.peer_applied.get(p).copied().unwrap_or(0);
                theirs >= h.index
                    && (h.installed.is_some_and(|s| theirs > s)
                        || (theirs >= applied.saturating_sub(policy.keep_entries)
                            && self.bytes_from(theirs) <= policy.keep_bytes))
            })
            .map(|(&p, _)| p)
            .collect();
        for p in done {
            self.holds.remove(&p);
            tracing::info!(
                peer = p,
                "the peer follows the log again: log no longer held"
            );
        }
        // Cheap unless a step is possible or the log holds more bytes than it may keep.
        if applied < compacted.saturating_add(policy.every_entries)
            && self.bytes() <= policy.keep_bytes
        {
            return None;
        }
        let everyone = (peers.iter())
            .map(|p| self.peer_applied.get(p).copied().unwrap_or(0))
            .fold(applied, u64::min);
        let mut target = everyone.max(applied.saturating_sub(policy.keep_entries));
        // The bytes kept (entries in [target, applied) seen applied by this process): over
        // the limit, trim down to three quarters of it, so that a log held at its byte
        // limit (a peer down, big entries) is not trimmed again every tick.
        let kept = self.bytes_from(target);
        let mut by_bytes = false;
        if kept > policy.keep_bytes {
            let floor = policy.keep_bytes / 4 * 3;
            // The first entry after which at most `floor` bytes remain (every entry below
            // `target` leaves more than `kept`).
            let p = (self.sizes).partition_point(|&(_, cum)| self.total - cum > floor);
            if let Some(&(i, _)) = self.sizes.get(p) {
                target = target.max(i + 1);
                by_bytes = true;
            }
        }
        let mut target = target.min(applied);
        // Holds keep the log from their index, up to their byte cap.
        let over: Vec<NodeId> = (self.holds.iter())
            .filter(|(_, h)| h.index < target && self.bytes_from(h.index) > policy.hold_bytes)
            .map(|(&p, _)| p)
            .collect();
        for p in over {
            self.spend(p, "it holds more than the log's hold limit in bytes");
        }
        if let Some(floor) = self.hold_floor() {
            target = target.min(floor);
        }
        // Steps keep trims rare; but a log over its byte limit is trimmed whatever the
        // step (a few huge entries must not stay because they are few).
        let step = target >= compacted.saturating_add(policy.every_entries);
        (step || (by_bytes && target > compacted)).then_some(target)
    }

    /// Forgets the sizes of entries below `compacted`.
    pub fn trimmed(&mut self, compacted: u64) {
        while let Some(&(i, cum)) = self.sizes.front() {
            if i >= compacted {
                break;
            }
            self.forgotten = cum;
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
        hold_bytes: 5000,
        hold_for: Duration::from_secs(60),
        hold_silence: Duration::from_secs(5),
    };

    #[test]
    fn trims_to_what_everyone_applied_in_steps() {
        let now = Instant::now();
        let mut t = Trimmer::default();
        for i in 0..50 {
            t.applied(i, 1);
        }
        t.peer_progress(2, 30, now);
        // Node 3 never reported: nothing is known to be safe beyond the keep limits.
        assert_eq!(t.target(&POLICY, [2, 3], 50, 0, now), None);
        t.peer_progress(3, 25, now);
        assert_eq!(t.target(&POLICY, [2, 3], 50, 0, now), Some(25));
        t.trimmed(25);
        // Less than a step more: wait.
        t.peer_progress(3, 34, now);
        assert_eq!(t.target(&POLICY, [2, 3], 50, 25, now), None);
        t.peer_progress(3, 40, now);
        assert_eq!(
            t.target(&POLICY, [2, 3], 50, 25, now),
            None,
            "node 2 is at 30"
        );
        t.peer_progress(2, 45, now);
        assert_eq!(t.target(&POLICY, [2, 3], 50, 25, now), Some(40));
    }

    #[test]
    fn a_node_that_is_down_stops_holding_the_log_beyond_the_limits() {
        let now = Instant::now();
        let mut t = Trimmer::default();
        for i in 0..500 {
            t.applied(i, 1);
        }
        t.peer_progress(2, 500, now);
        // Node 3 is down at 3: keep 100 entries for it, no more.
        t.peer_progress(3, 3, now);
        assert_eq!(t.target(&POLICY, [2, 3], 500, 0, now), Some(400));
        // Big entries: the byte limit trims further.
        let mut t = Trimmer::default();
        for i in 0..50 {
            t.applied(i, 100);
        }
        // Over the limit, it trims to three quarters of it (750 bytes).
        assert_eq!(t.target(&POLICY, [2], 50, 0, now), Some(43));
        t.trimmed(43);
        assert_eq!(t.bytes(), 700);
    }

    #[test]
    fn a_log_over_its_byte_limit_is_trimmed_even_below_a_step() {
        let now = Instant::now();
        let mut t = Trimmer::default();
        // Five entries of 400 bytes: fewer than a step (10), but 2000 bytes > 1000; trimmed
        // to under three quarters of the limit.
        for i in 0..5 {
            t.applied(i, 400);
        }
        t.peer_progress(2, 0, now);
        assert_eq!(t.target(&POLICY, [2], 5, 0, now), Some(4));
        t.trimmed(4);
        assert_eq!(
            t.target(&POLICY, [2], 5, 4, now),
            None,
            "400 bytes kept: under the limit"
        );
        // Growing back over the limit trims again; up to it, nothing happens.
        t.applied(5, 400);
        assert_eq!(
            t.target(&POLICY, [2], 6, 4, now),
            None,
            "800 bytes: under the limit"
        );
        t.applied(6, 400);
        assert_eq!(t.target(&POLICY, [2], 7, 4, now), Some(6));
    }

    #[test]
    fn never_trims_unapplied_entries_or_when_off() {
        let now = Instant::now();
        let mut t = Trimmer::default();
        t.peer_progress(2, 1_000, now);
        assert_eq!(t.target(&POLICY, [2], 20, 0, now), Some(20));
        assert_eq!(t.target(&CompactionPolicy::OFF, [2], 20, 0, now), None);
    }

    /// 100-byte entries 0..n applied; node 2 is at `n`, node 3 (the fetcher) far behind.
    fn busy(n: u64) -> Trimmer {
        let now = Instant::now();
        let mut t = Trimmer::default();
        for i in 0..n {
            t.applied(i, 100);
        }
        t.peer_progress(2, n, now);
        t.peer_progress(3, 1, now);
        t
    }

    /// A fetcher that caught up and then stopped (paused, partitioned) must not keep its
    /// hold: the hold ends in the tick it follows the log, even when no trim is due then,
    /// and the ordinary rules trim past the stopped node later (the nemesis's
    /// pause-past-retention fault waited in vain while the check ran only with a trim).
    #[test]
    fn a_hold_ends_when_the_fetcher_follows_even_with_no_trim_due() {
        let now = Instant::now();
        let mut t = busy(40);
        t.hold(&POLICY, 3, 20, now);
        t.trimmed(35);
        t.peer_progress(2, 40, now);
        // Installed and following at 38: within the kept window, no trim step due (40 <
        // 35 + 10), yet the hold is over.
        t.peer_progress(3, 38, now);
        assert_eq!(t.target(&POLICY, [2, 3], 40, 35, now), None);
        assert_eq!(t.hold_floor(), None, "the hold outlived the catch-up");
        // Node 3 stops; the others write on past the byte limit: trimmed past node 3.
        for i in 40..60 {
            t.applied(i, 100);
        }
        t.peer_progress(2, 60, now);
        let target = t.target(&POLICY, [2, 3], 60, 35, now).expect("a trim");
        assert!(
            target > 38,
            "trimmed to {target}, not past the stopped node"
        );
    }

    /// The nemesis's pause-past-retention fault paused a fetcher that had installed its
    /// state and been synced, but whose applied index still lagged by more than the kept
    /// entries (a tiny log budget, progress reported a few times a second): its hold
    /// pinned every member's log until the byte cap, for longer than the fault waited.
    /// Synced is enough: the hold ends when the fetcher applied past its installed state.
    #[test]
    fn a_hold_ends_once_the_fetcher_is_synced_even_lagging_far_behind() {
        let now = Instant::now();
        let mut t = busy(40);
        t.hold(&POLICY, 3, 20, now);
        t.trimmed(20);
        for i in 40..400 {
            t.applied(i, 1);
        }
        t.peer_progress(2, 400, now);
        // Installed at 25, then synced: it applied 30, more than 100 entries behind.
        t.peer_progress(3, 25, now);
        assert_eq!(t.target(&POLICY, [2, 3], 400, 20, now), None, "held at 25");
        assert_eq!(t.hold_floor(), Some(25));
        t.peer_progress(3, 30, now);
        // It stops there; the others trim past it by the ordinary rules.
        assert_eq!(t.target(&POLICY, [2, 3], 400, 20, now), Some(300));
        assert_eq!(t.hold_floor(), None, "a synced fetcher kept its hold");
    }

    /// The nemesis's pause-past-retention fault paused a follower that had just installed
    /// a fetched state: its last report was the installed state, before a leader synced
    /// it, and its hold pinned every member's log for the whole fault. A fetcher heard
    /// nothing from is stopped, and a stopped fetcher holds nothing.
    #[test]
    fn a_hold_ends_when_its_fetcher_goes_silent() {
        let start = Instant::now();
        let mut t = busy(40);
        t.hold(&POLICY, 3, 20, start);
        t.trimmed(20);
        for i in 40..400 {
            t.applied(i, 1);
        }
        t.peer_progress(2, 400, start);
        // Installed at 25 and stopped there: held while it may still be synced.
        t.peer_progress(3, 25, start);
        let later = start + POLICY.hold_silence / 2;
        t.peer_progress(2, 400, later);
        assert_eq!(
            t.target(&POLICY, [2, 3], 400, 20, later),
            None,
            "held at 25"
        );
        assert_eq!(t.hold_floor(), Some(25));
        // Silent for the policy's silence: the ordinary rules trim past it.
        let silent = start + POLICY.hold_silence;
        assert_eq!(t.target(&POLICY, [2, 3], 400, 20, silent), Some(300));
        assert_eq!(t.hold_floor(), None, "a silent fetcher kept its hold");
        // Not spent: running again and still fetching, it holds the log anew.
        t.hold(&POLICY, 3, 300, silent);
        assert_eq!(t.hold_floor(), Some(300));
        // A fetch that goes silent again and again keeps its first start: the time cap
        // still ends it.
        let mut t = busy(40);
        t.hold(&POLICY, 3, 20, start);
        let mut now = start;
        while now < start + POLICY.hold_for {
            now += POLICY.hold_silence;
            t.target(&POLICY, [2, 3], 40, 0, now); // silent: the hold ends
            t.hold(&POLICY, 3, 20, now); // and comes back with the fetcher
        }
        t.target(&POLICY, [2, 3], 40, 0, now);
        assert_eq!(t.hold_floor(), None, "silences reset the time cap");
    }

    #[test]
    fn a_transfer_hold_keeps_the_log_until_the_fetcher_follows_it() {
        let now = Instant::now();
        let mut t = busy(40);
        // Without a hold: about 750 bytes kept (7 entries).
        assert_eq!(t.target(&POLICY, [2, 3], 40, 0, now), Some(33));
        // Node 3 fetches a state at 20 or above: nothing from 20 on goes.
        t.hold(&POLICY, 3, 20, now);
        assert_eq!(t.target(&POLICY, [2, 3], 40, 0, now), Some(20));
        t.trimmed(20);
        for i in 40..60 {
            t.applied(i, 100);
        }
        t.peer_progress(2, 60, now);
        assert_eq!(t.target(&POLICY, [2, 3], 60, 20, now), None, "held at 20");
        // The state (at 25) is installed: the hold follows the fetcher's applied index
        // (the log is over its byte limit: trimmed by less than a step) until the leader
        // synced it from the held log.
        t.peer_progress(3, 25, now);
        assert_eq!(t.target(&POLICY, [2, 3], 60, 20, now), Some(25));
        t.trimmed(25);
        assert_eq!(t.target(&POLICY, [2, 3], 60, 25, now), None, "held at 25");
        // It applied past its state: synced, it follows the log like any member, however
        // far behind; the hold ends and the ordinary rules apply again (the byte limit).
        t.peer_progress(3, 35, now);
        assert_eq!(t.target(&POLICY, [2, 3], 60, 25, now), Some(53));
        assert_eq!(t.hold_floor(), None);
        t.trimmed(53);
        t.peer_progress(3, 60, now);
        assert_eq!(t.target(&POLICY, [2, 3], 60, 53, now), None);
        t.trimmed(60);
        // A stale note of the same fetch holds from what the fetcher applied, which the
        // ordinary rules keep anyway, and ends as soon as the fetcher follows the log.
        t.hold(&POLICY, 3, 20, now);
        assert_eq!(t.hold_floor(), Some(60));
        for i in 60..80 {
            t.applied(i, 100);
        }
        t.peer_progress(2, 80, now);
        t.peer_progress(3, 80, now);
        assert_eq!(t.target(&POLICY, [2, 3], 80, 60, now), Some(80));
        assert_eq!(t.hold_floor(), None);
    }

    #[test]
    fn a_transfer_hold_ends_after_its_time_and_the_same_fetch_gets_no_other() {
        let start = Instant::now();
        let mut t = busy(40);
        t.hold(&POLICY, 3, 20, start);
        assert_eq!(t.target(&POLICY, [2, 3], 40, 0, start), Some(20));
        t.trimmed(20);
        // The fetch never ends; its notes keep coming.
        let later = start + POLICY.hold_for;
        t.hold(&POLICY, 3, 20, later);
        assert_eq!(t.target(&POLICY, [2, 3], 40, 20, later), Some(33));
        t.trimmed(33);
        assert_eq!(t.hold_floor(), None);
        t.hold(&POLICY, 3, 20, later);
        t.hold(&POLICY, 3, 15, later);
        assert_eq!(
            t.hold_floor(),
            None,
            "the same fetch (or an older one) gets no other hold"
        );
        // A later fetch, from the trimmed log, gets a hold of its own.
        t.hold(&POLICY, 3, 34, later);
        assert_eq!(t.hold_floor(), Some(34));
    }

    #[test]
    fn a_transfer_hold_ends_when_it_would_keep_more_than_its_bytes() {
        let now = Instant::now();
        let mut t = busy(40);
        t.hold(&POLICY, 3, 20, now);
        assert_eq!(t.target(&POLICY, [2, 3], 40, 0, now), Some(20));
        t.trimmed(20);
        // 20 entries of 100 bytes held; 50 are 5000 bytes, the cap: still held.
        for i in 40..70 {
            t.applied(i, 100);
        }
        t.peer_progress(2, 70, now);
        assert_eq!(t.target(&POLICY, [2, 3], 70, 20, now), None);
        // One more: over the cap, the hold ends and the ordinary limits apply.
        t.applied(70, 100);
        t.peer_progress(2, 71, now);
        assert_eq!(t.target(&POLICY, [2, 3], 71, 20, now), Some(64));
        assert_eq!(t.hold_floor(), None);
        t.hold(&POLICY, 3, 20, now);
        assert_eq!(t.hold_floor(), None, "the same fetch gets no other hold");
    }

    #[test]
    fn transfer_holds_go_with_their_member_or_a_policy_without_them() {
        let now = Instant::now();
        let mut t = busy(40);
        t.hold(&POLICY, 3, 20, now);
        // Node 3 left the configuration.
        assert_eq!(t.target(&POLICY, [2], 40, 0, now), Some(40));
        assert_eq!(t.hold_floor(), None);
        let none = CompactionPolicy {
            hold_bytes: 0,
            ..POLICY
        };
        let mut t = busy(40);
        t.hold(&none, 3, 20, now);
        assert_eq!(t.hold_floor(), None);
        assert_eq!(t.target(&none, [2, 3], 40, 0, now), Some(33));
    }
}
