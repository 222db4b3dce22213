//! Whether this node can reach a majority of its configuration, judged by what it hears.
//!
//! A node cut off from the majority cannot decide a write or confirm a read, yet without
//! this it would keep taking requests and answer them only at the request timeout (5 s by
//! default): an old leader behind a partition keeps calling itself leader, and a client
//! waits there instead of moving on to a node that can serve it. So the core keeps, for
//! every other member, the last time something arrived from it — any peer message or
//! note — and when fewer than a majority (this node included) were heard within the
//! **contact window**, it refuses new writes and reads with `UNAVAILABLE` at once and
//! answers the writes waiting on it "outcome unknown" (they may still be decided, by
//! the majority, if they reached it), so that their clients retry elsewhere with the same
//! session.
//!
//! What is heard comes from two places. The messages the core handles: OmniPaxos' leader
//! election has every member ask every other once per election round, and each answers
//! at once, so a reachable member is heard at least twice a round, plus the progress
//! notes. And the transport ([`super::Network::last_heard`]), which notes every frame as it
//! arrives and keeps an idle link busy with small `Alive` frames: a peer whose own thread
//! is stuck in a long fsync (a burst of big writes on a slow disk) still has a transport
//! that answers, and is reachable — it is slow, not gone. The window is one and a half
//! rounds, but never less than a second in a server ([`MIN_WINDOW`]): a live link is never
//! that quiet, and a cut link is noticed at most that long (and one tick) after its last
//! frame.
//!
//! The verdict is reached only at a tick, and requests are judged by the last verdict.
//! The core's loop handles the messages already queued (up to 100,000) before it ticks, and the
//! transport's stamps do not wait for the core at all, so a node slowed by its own work
//! (thousands of requests queued ahead of its peers' heartbeats) is not mistaken for one
//! cut off either: what counts is whether its peers' frames arrived, not whether it had
//! got round to reading them.
//!
//! Invariants:
//! - this only refuses and gives up waiting: it never sends, proposes or applies anything,
//!   so it cannot make a write happen twice or a read stale; a refused write was not
//!   proposed by this request, and a write given up on is reported as unknown, never as
//!   failed;
//! - a member not yet heard counts as heard at the first look after the node started or
//!   entered the configuration, or stopped being exempt (a node is given one window to
//!   find its peers);
//! - a configuration with one member (the single-node database, with its witness) is never
//!   cut off.

use crate::machine::NodeId;
use crate::membership::Membership;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The shortest contact window a server uses, whatever its election round: a node judged
/// on a window of a few short rounds refused requests as cut off when it was only
/// starved of CPU (thousands of connections flooding two cores, its transport thread
/// unscheduled for hundreds of milliseconds). Like etcd's leader, which steps down after
/// an election timeout (1 s by default) without a quorum, a second is the floor. The
/// simulation, whose threads are never starved, judges on the rounds alone.
pub const MIN_WINDOW: Duration = Duration::from_secs(1);

/// The last time each member was heard from.
pub(super) struct Contact {
    heard: BTreeMap<NodeId, Instant>,
    /// When this node started counting (its start, or its entry into the configuration);
    /// set at the first look, since the core is given its times from outside.
    since: Option<Instant>,
    window: Duration,
    /// The last verdict: why this node cannot serve, if it is cut off.
    verdict: Option<String>,
}

impl Contact {
    /// A contact window of one and a half election rounds of `round`.
    pub(super) fn new(round: Duration) -> Self {
        Contact {
            heard: BTreeMap::new(),
            since: None,
            window: round + round / 2,
            verdict: None,
        }
    }

    /// `from` was heard at `at` (a later time than any before counts).
    /// Makes the window at least `floor` (see [`MIN_WINDOW`]).
    pub(super) fn set_floor(&mut self, floor: Duration) {
        self.window = self.window.max(floor);
    }

    pub(super) fn heard(&mut self, from: NodeId, at: Instant) {
        let last = self.heard.entry(from).or_insert(at);
        *last = (*last).max(at);
    }

    /// A new configuration: its members are given a window from now.
    pub(super) fn restart(&mut self) {
        self.heard.clear();
        self.since = None;
    }

    /// How many members of `m` (this node `me` included) were heard within the window.
    fn reachable(&mut self, m: &Membership, me: NodeId, now: Instant) -> usize {
        let since = *self.since.get_or_insert(now);
        m.members
            .iter()
            .filter(|p| {
                p.id == me || {
                    let last = self.heard.get(&p.id).copied().unwrap_or(since).max(since);
                    now.saturating_duration_since(last) < self.window
                }
            })
            .count()
    }

    /// Why this node cannot serve now, if it heard from fewer than a majority of `m`.
    fn judge(&mut self, m: &Membership, me: NodeId, now: Instant) -> Option<String> {
        if m.members.len() < 2 {
            return None;
        }
        let reachable = self.reachable(m, me, now);
        (reachable < m.majority()).then(|| {
            format!(
                "this node cannot reach a majority of the cluster (it heard from {reachable} of \
                 {} members within the last {} ms); another node can serve this",
                m.members.len(),
                self.window.as_millis()
            )
        })
    }

    /// Looks again (at a tick): judges contact with `m` now, or, when `exempt` (a node
    /// that serves nothing by itself), finds it never cut off. True when the verdict
    /// changed between serving and refusing.
    pub(super) fn look(&mut self, m: &Membership, me: NodeId, now: Instant, exempt: bool) -> bool {
        let verdict = if exempt {
            // Counting starts again when it ends.
            self.since = None;
            None
        } else {
            self.judge(m, me, now)
        };
        let was = self.verdict.is_some();
        self.verdict = verdict;
        was != self.verdict.is_some()
    }

    /// Why this node cannot serve, by the last look; `None` while it can.
    pub(super) fn refusal(&self) -> Option<&str> {
        self.verdict.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Member;

    fn three() -> Membership {
        Membership::initial(
            &(1..=3)
                .map(|id| Member {
                    id,
                    addr: format!("127.0.0.1:{}", 9000 + id),
                })
                .collect::<Vec<_>>(),
        )
    }

    /// Looks at `now` and returns the verdict.
    fn at(c: &mut Contact, m: &Membership, now: Instant) -> Option<String> {
        c.look(m, 1, now, false);
        c.refusal().map(str::to_owned)
    }

    #[test]
    fn a_node_is_cut_off_once_a_majority_was_silent_for_the_window() {
        let m = three();
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut c = Contact::new(Duration::from_millis(100));
        // At start every member counts as heard.
        assert_eq!(at(&mut c, &m, t0), None);
        assert_eq!(at(&mut c, &m, ms(149)), None);
        // One peer is enough for a majority of three.
        c.heard(2, ms(140));
        assert_eq!(at(&mut c, &m, ms(289)), None);
        let why = at(&mut c, &m, ms(290)).expect("silent for 150 ms");
        assert!(why.contains("heard from 1 of 3 members"), "{why}");
        // Hearing again is not enough: the verdict stands until the next look.
        c.heard(3, ms(300));
        assert!(c.refusal().is_some());
        assert_eq!(at(&mut c, &m, ms(300)), None);
        // A new configuration starts counting again.
        c.restart();
        assert_eq!(at(&mut c, &m, ms(1000)), None);
        assert!(at(&mut c, &m, ms(1150)).is_some());
    }

    #[test]
    fn a_look_reports_changes_and_an_exempt_node_is_never_cut_off() {
        let m = three();
        let t0 = Instant::now();
        let mut c = Contact::new(Duration::from_millis(100));
        assert!(!c.look(&m, 1, t0, false));
        let late = t0 + Duration::from_secs(1);
        assert!(c.look(&m, 1, late, false), "serving -> refusing");
        assert!(!c.look(&m, 1, late, false), "no change");
        assert!(c.look(&m, 1, late, true), "exempt: serving again");
        assert_eq!(c.refusal(), None);
    }

    #[test]
    fn one_member_is_never_cut_off() {
        let m = Membership::initial(&[Member {
            id: 1,
            addr: "127.0.0.1:9001".into(),
        }]);
        let t0 = Instant::now();
        let mut c = Contact::new(Duration::from_millis(100));
        assert_eq!(at(&mut c, &m, t0), None);
        assert_eq!(at(&mut c, &m, t0 + Duration::from_secs(60)), None);
    }
}
