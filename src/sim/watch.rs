//! Simulated watchers and the watch checker.
//!
//! A [`Watcher`] follows one node's watch history as a gRPC watcher would: it reads
//! [`KvStore::history`] from its `next` revision, records every change it is handed, and
//! resumes from the `next` the read returned. The world polls the watchers every
//! [`POLL`] of virtual time, after the clients acted (`World::run_until`): no event is
//! scheduled for them and they draw nothing from the world's random stream, so a seed's
//! schedule is the same with them as without (the pinned seeds of the bug-injection
//! tests stay as they were). A watcher's node that is down, paused (as SIGSTOP: a
//! connection to it hangs), stopped for good or without a store is left for the next
//! node (in node order, wrapping) that serves, and the watcher resumes there from its
//! `next` revision, as a client resuming on another node does; a node behind that
//! revision hands out nothing until it catches up. One watcher watches every key, the
//! other the register keys' prefix `k` (see `clients`).
//!
//! At the end ([`check`], in `final_checks`, after every other checker), with the final
//! members converged, each watcher first catches up ([`Watchers::finish`]); then one
//! final member's whole history from revision 1 is the reference, checked (see
//! [`super::watch_check`]) to hold every revision with no gap and to replay to the
//! store's data with versions, to hold every write the clients got acknowledged, and to
//! be, filtered, exactly each watcher's stream over the revisions it covered (below its
//! `next`): in order, none missing, none twice, none made up ([`watcher_matches`]).
//!
//! Each failure is a [`Kind::Watch`] violation naming the watcher or the operation, the
//! revision and what was expected.
//!
//! # Invariants
//!
//! - Watchers only read: they change no node, schedule nothing and use no randomness.
//! - A watcher reads only a node that runs (a core, not paused, not retired, a store),
//!   and trusts the `next` it is handed, exactly as a client does: a node handing out a
//!   gap or a repeat shows up in the stream, and the checker finds it there.
//! - Every change a watcher recorded is kept with the node it came from, for the report.

use super::checks::{Kind, Violation};
use super::watch_check::{acknowledged_in, reference_valid, stream_matches};
use super::world::Node;
use crate::check::Operation;
use crate::command::ScanRange;
use crate::kv::{Change, KvStore, WatchFilter};
use std::time::Duration;

/// How often the watchers read (virtual time).
pub const POLL: Duration = Duration::from_millis(50);
/// The most changes one history read returns: small, so that a watcher that fell behind
/// resumes across several reads.
const READ_CHANGES: usize = 16;
/// The most bytes of keys and values one history read returns.
const READ_BYTES: usize = 64 * 1024;
/// The most reads of one watcher per poll (it goes on at the next poll).
const READS_PER_POLL: usize = 64;
/// The most reads of one watcher to catch up at the end.
const READS_TO_FINISH: usize = 100_000;

/// Every key.
fn everything() -> WatchFilter {
    WatchFilter::Range(ScanRange::Prefix(Vec::new()))
}

/// A watcher's move from one node to another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Switch {
    pub at: Duration,
    /// Node indexes.
    pub from: usize,
    pub to: usize,
    /// The revision it resumed from.
    pub next: u64,
}

/// One simulated watcher (see the module doc).
pub struct Watcher {
    /// How reports name it ("watcher 2 (prefix "k")").
    pub name: String,
    pub filter: WatchFilter,
    /// The node it reads (an index).
    pub node: usize,
    /// The revision it reads from next: every revision below was covered.
    pub next: u64,
    /// Every change it received, with the node (index) that handed it out.
    pub stream: Vec<(usize, Change)>,
    pub switches: Vec<Switch>,
    /// History reads made.
    pub reads: u64,
}

impl Watcher {
    pub fn new(name: String, filter: WatchFilter, node: usize) -> Watcher {
        Watcher {
            name,
            filter,
            node,
            next: 1,
            stream: Vec::new(),
            switches: Vec::new(),
            reads: 0,
        }
    }

    /// Reads its node's history until caught up with the node's revision, at most
    /// `max_reads` reads; moves to the next serving node first if its node does not
    /// serve. Returns whether it is caught up.
    fn poll(&mut self, now: Duration, nodes: &[Node], max_reads: usize) -> Result<bool, Violation> {
        if !serving(nodes, self.node) {
            let n = nodes.len();
            let Some(to) = (1..n)
                .map(|k| (self.node + k) % n)
                .find(|&j| serving(nodes, j))
            else {
                return Ok(false);
            };
            self.switches.push(Switch {
                at: now,
                from: self.node,
                to,
                next: self.next,
            });
            self.node = to;
        }
        let kv = nodes[self.node]
            .kv
            .as_ref()
            .expect("a serving node has a store");
        for _ in 0..max_reads {
            let read =
                (kv.history(self.next, &self.filter, READ_CHANGES, READ_BYTES)).map_err(|e| {
                    Violation::new(
                        Kind::Watch,
                        format!(
                            "watch: {} reading node {} from revision {}: {e}",
                            self.name,
                            self.node + 1,
                            self.next
                        ),
                    )
                })?;
            self.reads += 1;
            let node = self.node;
            self.stream
                .extend(read.changes.into_iter().map(|c| (node, c)));
            self.next = read.next;
            if read.next > read.revision {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// Node `i` serves watchers: it runs (a core, not paused), is not retired, has a store.
fn serving(nodes: &[Node], i: usize) -> bool {
    let n = &nodes[i];
    !n.retired && n.is_running() && n.kv.is_some()
}

/// The world's watchers.
pub struct Watchers {
    pub watchers: Vec<Watcher>,
    /// When they read next.
    next_poll: Duration,
}

impl Watchers {
    /// Two watchers over `nodes` nodes: every key, from node 1; the register keys
    /// (prefix `k`), from the last node.
    pub fn new(nodes: usize) -> Watchers {
        Watchers {
            watchers: vec![
                Watcher::new("watcher 1 (every key)".into(), everything(), 0),
                Watcher::new(
                    "watcher 2 (prefix \"k\")".into(),
                    WatchFilter::Range(ScanRange::Prefix(b"k".to_vec())),
                    nodes.saturating_sub(1),
                ),
            ],
            next_poll: POLL,
        }
    }

    /// Every [`POLL`]: each watcher reads what its node has (see [`Watcher::poll`]).
    pub fn poll(&mut self, now: Duration, nodes: &[Node]) -> Result<(), Violation> {
        if now < self.next_poll {
            return Ok(());
        }
        self.next_poll = now + POLL;
        for w in &mut self.watchers {
            w.poll(now, nodes, READS_PER_POLL)?;
        }
        Ok(())
    }

    /// At the end (the final members converged): each watcher catches up with its node.
    pub fn finish(&mut self, now: Duration, nodes: &[Node]) -> Result<(), Violation> {
        for w in &mut self.watchers {
            if !w.poll(now, nodes, READS_TO_FINISH)? {
                return Err(Violation::new(
                    Kind::Watch,
                    format!(
                        "watch: {} did not catch up with node {} at the end (at revision {})",
                        w.name,
                        w.node + 1,
                        w.next
                    ),
                ));
            }
        }
        Ok(())
    }

    /// One line per watcher: where it is, and its moves (for failure reports).
    pub fn describe(&self) -> Vec<String> {
        (self.watchers.iter())
            .map(|w| {
                let moves: Vec<String> = (w.switches.iter())
                    .map(|s| {
                        format!(
                            "{:?}: node {} -> {} at revision {}",
                            s.at,
                            s.from + 1,
                            s.to + 1,
                            s.next
                        )
                    })
                    .collect();
                format!(
                    "{}: on node {}, resuming at revision {}, {} changes received; moves: [{}]",
                    w.name,
                    w.node + 1,
                    w.next,
                    w.stream.len(),
                    moves.join(", ")
                )
            })
            .collect()
    }

    /// The figures of the run.
    pub fn stats(&self) -> WatchStats {
        WatchStats {
            changes: self.watchers.iter().map(|w| w.stream.len() as u64).sum(),
            switches: self.watchers.iter().map(|w| w.switches.len() as u64).sum(),
            reads: self.watchers.iter().map(|w| w.reads).sum(),
            reference: 0,
        }
    }
}

/// The watchers' figures of a run (or, added up, of a campaign).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct WatchStats {
    /// Changes the watchers received (all of them checked).
    pub changes: u64,
    /// Moves of a watcher to another node (its node down, paused or stopped).
    pub switches: u64,
    /// History reads the watchers made.
    pub reads: u64,
    /// Changes in the reference history (checked against the data and the client
    /// history).
    pub reference: u64,
}

impl WatchStats {
    pub fn add(&mut self, o: &WatchStats) {
        self.changes += o.changes;
        self.switches += o.switches;
        self.reads += o.reads;
        self.reference += o.reference;
    }

    pub(super) fn report(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("watch: changes received by the watchers", self.changes),
            ("watch: watchers moved to another node", self.switches),
            ("watch: history reads", self.reads),
            ("watch: changes in the reference histories", self.reference),
        ]
    }
}

impl std::fmt::Display for WatchStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} changes received ({} reads, {} node switches), {} reference changes",
            self.changes, self.reads, self.switches, self.reference
        )
    }
}

/// The whole checker (see the module doc): the watchers catch up, node `reader`'s
/// history is the reference, checked against its data, the client `history` and every
/// watcher's stream.
pub fn check(
    watchers: &mut Watchers,
    now: Duration,
    nodes: &[Node],
    reader: usize,
    history: &[Operation],
) -> Result<WatchStats, Violation> {
    watchers.finish(now, nodes)?;
    let kv = nodes[reader]
        .kv
        .as_ref()
        .expect("all members are up after healing");
    let name = format!("node {}", reader + 1);
    let (reference, revision) = full_history(&name, kv)?;
    let data = all_data(kv);
    reference_valid(&name, &reference, revision, &data)?;
    acknowledged_in(&name, &reference, history)?;
    for w in &watchers.watchers {
        watcher_matches(w, &name, &reference, revision)?;
    }
    Ok(WatchStats {
        reference: reference.len() as u64,
        ..watchers.stats()
    })
}

/// `kv`'s whole history from revision 1, and its revision.
fn full_history(name: &str, kv: &KvStore) -> Result<(Vec<Change>, u64), Violation> {
    let (mut changes, mut next) = (Vec::new(), 1);
    loop {
        let read = kv
            .history(next, &everything(), usize::MAX, usize::MAX)
            .map_err(|e| {
                Violation::new(
                    Kind::Watch,
                    format!("watch: reading {name}'s history from revision {next}: {e}"),
                )
            })?;
        changes.extend(read.changes);
        if read.next > read.revision {
            return Ok((changes, read.revision));
        }
        if read.next <= next {
            return Err(Violation::new(
                Kind::Watch,
                format!(
                    "watch: {name}'s history read from revision {next} resumes at {} (its \
                     revision is {})",
                    read.next, read.revision
                ),
            ));
        }
        next = read.next;
    }
}

/// Every key of `kv` with its value and version, in key order.
fn all_data(kv: &KvStore) -> Vec<(Vec<u8>, Vec<u8>, u64)> {
    let mut rows = Vec::new();
    let mut range = ScanRange::Prefix(Vec::new());
    loop {
        let (page, more, _) = kv.scan(&range, 1000).expect("memory reads do not fail");
        let last = page.last().map(|r| r.key.clone());
        rows.extend(page.into_iter().map(|r| (r.key, r.value, r.version)));
        match last {
            Some(mut from) if more => {
                from.push(0);
                range = ScanRange::Range { from, to: None };
            }
            _ => return rows,
        }
    }
}

/// (c) for watcher `w`: its stream against `reference` (the history of `name`, at
/// `revision`).
pub fn watcher_matches(
    w: &Watcher,
    name: &str,
    reference: &[Change],
    revision: u64,
) -> Result<(), Violation> {
    if w.next > revision + 1 {
        return Err(Violation::new(
            Kind::Watch,
            format!(
                "watch: {} was handed revision {} to resume from, beyond {name}'s revision \
                 {revision}",
                w.name, w.next
            ),
        ));
    }
    let expected: Vec<&Change> = (reference.iter())
        .filter(|c| c.revision < w.next && w.filter.matches(&c.key))
        .collect();
    let stream: Vec<&Change> = w.stream.iter().map(|(_, c)| c).collect();
    let source = |k: usize| format!("from node {}", w.stream[k].0 + 1);
    stream_matches(&w.name, &stream, &source, w.next, name, &expected)
}
