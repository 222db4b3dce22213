//! Linearizable reads without log entries: a read index, confirmed by a quorum round.
//!
//! A read must see every write acknowledged before it arrived. Proposing an empty entry
//! and waiting for it to be applied does that, but costs a log append (an fsync on every
//! node) per batch of reads. Instead, the leader answers "which index must a reader wait
//! for" with a round of small notes and no disk write:
//!
//! 1. A read arrives at the leader (or a follower's [`Note::ReadAsk`] does). At the next
//!    step the leader starts a **round** for everything that arrived since the last one:
//!    its *read index* is the end of the leader's log (every entry it has accepted), and
//!    it sends [`Note::ReadProbe`] with its ballot to every other member.
//! 2. A member answers [`Note::ReadAck`] only if its promised ballot is exactly that
//!    ballot: it has promised no newer leader.
//! 3. With acks from a majority of the members (the leader counts itself), the round is
//!    **confirmed**: local reads wait until the applied index reaches the read index;
//!    followers that asked get [`Note::ReadIndex`] and wait for their own applied index to
//!    reach it.
//!
//! **An ask is an ack.** A follower's [`Note::ReadAsk`] carries the ballot it has promised
//! when it sends the ask, after every read it asks for arrived: that is what its ack of
//! a probe sent then would say. So when the ask's ballot is the leader's own and the
//! leader and the asker alone are a majority (three members), the leader answers the ask
//! at once with the end of its log, as a round confirmed by the asker's ack would: one
//! message each way instead of two, and no probe to the third member. (With more
//! members the ask joins the next round like any other.) The argument below holds as it
//! is, with the ask standing for the asker's ack and the asker's readers as the round's.
//!
//! Why that is linearizable: suppose a write was acknowledged before the read arrived.
//! If it was decided in the leader's ballot `b` or an older one, it is in the leader's
//! log (a leader in the accept phase holds every entry chosen before its ballot, and
//! everything it chose itself), so at or below the read index. If it was decided in a
//! newer ballot `b' > b`, a majority had promised `b'` before the read arrived; that
//! majority meets the round's ack majority in some member, whose promise (durable and
//! only growing) was already `b'` when it answered, after the read arrived — so it
//! did not ack, a contradiction. A stop sign would break the first half (the next
//! configuration's writes are in no log of this one), so no round starts while the
//! leader's log holds one; a configuration change only starts after its stop sign is
//! decided, which then is in the leader's log.
//!
//! Invariants:
//! - a round starts only on a leader in the accept phase whose log holds no stop sign,
//!   after every read it carries arrived; its read index is the leader's whole log;
//! - a member acks a probe only while its promise equals the probe's ballot; a round is
//!   confirmed only by acks carrying its own ballot, from a majority of the members of
//!   the configuration in force (one member alone is its own majority: see [`super::solo`]);
//! - an ask is answered at once only by a leader that may start a round, when the ask
//!   carries the leader's ballot, comes from a member, and the two are a majority; its
//!   read index is then the leader's whole log, as a round started there would have;
//! - a read is answered only once this node's applied index reaches a confirmed read
//!   index; unconfirmed rounds and unanswered asks are started again after
//!   `repropose_after` (a probe, ack or answer can be lost) and after a configuration
//!   switch; every read still waiting at its deadline gets [`Error::Unavailable`] —
//!   nothing was written, so a read never has an unknown outcome;
//! - nothing here touches the log or the disk.

use super::{Core, Note};
use crate::error::{Error, Result};
use crate::machine::NodeId;
use crate::storage::LogStorage;
use omnipaxos::ballot_leader_election::Ballot;
use omnipaxos::util::LogEntry as PaxosEntry;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;
use tokio::sync::oneshot;

/// A waiting read: where to answer, and its deadline.
type Reader = (oneshot::Sender<Result<()>>, Instant);

/// What a read still waiting at its deadline is told.
const TOO_LATE: &str = "could not confirm a quorum for a linearizable read in time";

/// A round this node runs as leader.
struct Round {
    ballot: Ballot,
    /// Global index every reader of the round waits for.
    index: u64,
    acks: BTreeSet<NodeId>,
    local: Vec<Reader>,
    /// Followers' asks: (follower, its ask id).
    remote: Vec<(NodeId, u64)>,
    started: Instant,
}

/// An ask this node sent to the leader.
struct Asked {
    leader: NodeId,
    sent: Instant,
    readers: Vec<Reader>,
}

/// The reads of one node (see the module docs).
pub(super) struct Reads {
    /// Local reads that arrived since the last round or ask started.
    waiting: Vec<Reader>,
    /// Followers' asks that arrived since the last round started (leader only).
    asks: Vec<(NodeId, u64)>,
    rounds: BTreeMap<u64, Round>,
    asked: BTreeMap<u64, Asked>,
    /// Reads with a confirmed read index, until the applied index reaches it.
    ready: Vec<(u64, Reader)>,
    /// Ids of rounds and asks; starts at a random value per process, so that a late
    /// answer meant for an earlier life of this node matches nothing.
    next_id: u64,
    /// The leader's last look at the end of its log: (accepted index, promise, whether
    /// the entry before that index is a stop sign).
    last_checked: std::cell::Cell<Option<(usize, Ballot, bool)>>,
    /// Bug injection: a leader confirms its rounds without waiting for any ack, at its
    /// decided index (a leader-local read).
    #[cfg(test)]
    pub(crate) unconfirmed: bool,
}

impl Reads {
    pub(super) fn new(first_id: u64) -> Self {
        Reads {
            waiting: Vec::new(),
            asks: Vec::new(),
            rounds: BTreeMap::new(),
            asked: BTreeMap::new(),
            ready: Vec::new(),
            next_id: first_id,
            last_checked: std::cell::Cell::new(None),
            #[cfg(test)]
            unconfirmed: false,
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id = self.next_id.wrapping_add(1);
        self.next_id
    }

    /// Every read waiting here, whatever its stage (to fail them all).
    fn take_all(&mut self) -> Vec<Reader> {
        let mut all = std::mem::take(&mut self.waiting);
        all.extend(
            std::mem::take(&mut self.rounds)
                .into_values()
                .flat_map(|r| r.local),
        );
        all.extend(
            std::mem::take(&mut self.asked)
                .into_values()
                .flat_map(|a| a.readers),
        );
        all.extend(std::mem::take(&mut self.ready).into_iter().map(|(_, r)| r));
        self.asks.clear();
        all
    }
}

impl<S: LogStorage> Core<S> {
    /// Bug injection: this node, as leader, serves reads at its decided index without a
    /// quorum's acks (the simulation's `Bug::UnconfirmedReads`).
    #[cfg(all(test, feature = "test-machinery"))]
    pub(crate) fn inject_unconfirmed_reads(&mut self) {
        self.reads.unconfirmed = true;
    }

    /// A linearizable read arrived.
    pub(super) fn read_arrived(&mut self, reply: oneshot::Sender<Result<()>>, now: Instant) {
        self.reads
            .waiting
            .push((reply, now + self.cfg.request_timeout));
    }

    /// The ballot this node leads with, when it may start a read round: leader in the
    /// accept phase, its log without a stop sign.
    fn read_ballot(&self) -> Option<Ballot> {
        if self.removed.is_some() || self.silenced().is_some() {
            return None;
        }
        match self.paxos.get_current_leader() {
            Some((pid, true)) if pid == self.cfg.id => {}
            _ => return None,
        }
        let accepted = self.paxos.get_accepted_idx();
        let promise = self.paxos.get_promise();
        // Reading the last entry decodes it from the log: done once per accepted index
        // under this ballot (no one else writes our log while we lead with it).
        let stop = match self.reads.last_checked.get() {
            Some((i, b, stop)) if i == accepted && b == promise => stop,
            _ => {
                let stop = accepted > 0
                    && matches!(
                        self.paxos.read(accepted - 1),
                        Some(PaxosEntry::StopSign(..))
                    );
                self.reads.last_checked.set(Some((accepted, promise, stop)));
                stop
            }
        };
        (!stop).then_some(promise)
    }

    /// Once per step: starts a round for (or asks the leader about) what arrived, and
    /// answers the reads the applied index has reached.
    pub(super) fn tend_reads(&mut self, now: Instant) {
        if !self.reads.waiting.is_empty() || !self.reads.asks.is_empty() {
            if let Some(ballot) = self.read_ballot() {
                self.start_round(ballot, now);
            } else {
                // Not the leader: asks from followers go unanswered (they ask again).
                self.reads.asks.clear();
                match self.paxos.get_current_leader() {
                    Some((leader, _))
                        if leader != self.cfg.id
                            && !self.reads.waiting.is_empty()
                            && self.silenced().is_none()
                            && self.removed.is_none() =>
                    {
                        let id = self.reads.id();
                        let ballot = self.paxos.get_promise();
                        self.net.send_note(leader, Note::ReadAsk { id, ballot });
                        let readers = std::mem::take(&mut self.reads.waiting);
                        self.reads.asked.insert(
                            id,
                            Asked {
                                leader,
                                sent: now,
                                readers,
                            },
                        );
                    }
                    // No leader known yet: the reads wait (until their deadline).
                    _ => {}
                }
            }
        }
        self.answer_reads();
    }

    /// The read index a round starting now gets: the end of the leader's log.
    fn read_index(&self) -> u64 {
        let accepted = self.paxos.get_accepted_idx() + self.paxos.get_batched_len();
        #[cfg(test)]
        let accepted = match self.reads.unconfirmed {
            true => self.paxos.get_decided_idx(),
            false => accepted,
        };
        self.global(accepted)
    }

    fn start_round(&mut self, ballot: Ballot, now: Instant) {
        let id = self.reads.id();
        let round = Round {
            ballot,
            index: self.read_index(),
            acks: BTreeSet::from([self.cfg.id]),
            local: std::mem::take(&mut self.reads.waiting),
            remote: std::mem::take(&mut self.reads.asks),
            started: now,
        };
        for peer in self.membership.ids() {
            if peer != self.cfg.id {
                self.net.send_note(peer, Note::ReadProbe { id, ballot });
            }
        }
        self.reads.rounds.insert(id, round);
        self.maybe_confirm(id);
    }

    /// Confirms round `id` if a majority of the members acked it.
    fn maybe_confirm(&mut self, id: u64) {
        let Some(round) = self.reads.rounds.get(&id) else {
            return;
        };
        let majority = self.membership.majority();
        #[cfg(test)]
        let majority = if self.reads.unconfirmed { 1 } else { majority };
        if round.acks.len() < majority {
            return;
        }
        let round = self.reads.rounds.remove(&id).expect("present");
        for (peer, ask) in round.remote {
            self.net.send_note(
                peer,
                Note::ReadIndex {
                    id: ask,
                    index: round.index,
                },
            );
        }
        let index = round.index;
        self.reads
            .ready
            .extend(round.local.into_iter().map(|r| (index, r)));
        self.answer_reads();
    }

    /// Answers the reads whose read index this node has applied.
    fn answer_reads(&mut self) {
        if self.reads.ready.is_empty() {
            return;
        }
        let applied = self.sm.applied_index();
        let (done, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reads.ready)
            .into_iter()
            .partition(|(index, _)| *index <= applied);
        self.reads.ready = wait;
        for (_, (reply, _)) in done {
            let _ = reply.send(Ok(()));
        }
    }

    /// A read note from `from`.
    pub(super) fn read_note(&mut self, from: NodeId, note: Note) {
        match note {
            Note::ReadProbe { id, ballot } => {
                if self.removed.is_none() && self.paxos.get_promise() == ballot {
                    self.net.send_note(from, Note::ReadAck { id, ballot });
                }
            }
            Note::ReadAck { id, ballot } => {
                let member = self.membership.contains(from);
                if let Some(r) = self.reads.rounds.get_mut(&id) {
                    if r.ballot == ballot && member {
                        r.acks.insert(from);
                        self.maybe_confirm(id);
                    }
                }
            }
            Note::ReadAsk { id, ballot } => {
                let Some(ours) = self.read_ballot() else {
                    return;
                };
                let majority = self.membership.majority();
                if ballot == ours && majority <= 2 && self.membership.contains(from) {
                    // The ask is the asker's ack: with ours, a majority (module docs).
                    let index = self.read_index();
                    self.net.send_note(from, Note::ReadIndex { id, index });
                } else {
                    self.reads.asks.push((from, id));
                }
            }
            Note::ReadIndex { id, index } => {
                if self.reads.asked.get(&id).is_some_and(|a| a.leader == from) {
                    let asked = self.reads.asked.remove(&id).expect("present");
                    self.reads
                        .ready
                        .extend(asked.readers.into_iter().map(|r| (index, r)));
                    self.answer_reads();
                }
            }
            Note::Progress { .. } | Note::NeedState { .. } | Note::Fetching { .. } => {}
        }
    }

    /// At a tick: expires reads past their deadline; starts again the rounds and asks
    /// that got no answer within `repropose_after`.
    pub(super) fn expire_reads(&mut self, now: Instant) {
        let again = self.cfg.repropose_after;
        let reads = &mut self.reads;
        let mut expired = Vec::new();
        let keep = |readers: Vec<Reader>, expired: &mut Vec<Reader>| -> Vec<Reader> {
            let (gone, live): (Vec<_>, Vec<_>) = readers.into_iter().partition(|(_, d)| *d <= now);
            expired.extend(gone);
            live
        };
        reads.waiting = keep(std::mem::take(&mut reads.waiting), &mut expired);
        let mut retry = Vec::new();
        for (id, mut r) in std::mem::take(&mut reads.rounds) {
            r.local = keep(std::mem::take(&mut r.local), &mut expired);
            if now.duration_since(r.started) >= again {
                // Lost probes or acks: the readers start over (askers ask again).
                retry.append(&mut r.local);
            } else if !r.local.is_empty() || !r.remote.is_empty() {
                reads.rounds.insert(id, r);
            }
        }
        for (id, a) in std::mem::take(&mut reads.asked) {
            let live = keep(a.readers, &mut expired);
            if now.duration_since(a.sent) >= again {
                retry.extend(live);
            } else if !live.is_empty() {
                reads.asked.insert(id, Asked { readers: live, ..a });
            }
        }
        reads.waiting.extend(retry);
        let ready = std::mem::take(&mut reads.ready);
        for (index, r) in ready {
            if r.1 <= now {
                expired.push(r);
            } else {
                reads.ready.push((index, r));
            }
        }
        for (reply, _) in expired {
            let _ = reply.send(Err(Error::Unavailable(TOO_LATE.into())));
        }
    }

    /// The configuration changed: unconfirmed rounds and asks start over in the new one
    /// (their ballots and leaders belong to the old one).
    pub(super) fn reads_enter_config(&mut self) {
        let reads = &mut self.reads;
        let mut back: Vec<Reader> = std::mem::take(&mut reads.rounds)
            .into_values()
            .flat_map(|r| r.local)
            .collect();
        back.extend(
            std::mem::take(&mut reads.asked)
                .into_values()
                .flat_map(|a| a.readers),
        );
        reads.asks.clear();
        reads.waiting.extend(back);
    }

    /// Answers every waiting read with `why`: this node stops serving for now.
    pub(super) fn fail_reads(&mut self, why: &str) {
        for (reply, _) in self.reads.take_all() {
            let _ = reply.send(Err(Error::Unavailable(why.to_string())));
        }
    }
}
