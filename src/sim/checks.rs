//! The safety checkers of the simulation, as plain functions over observed data, so that
//! each one can be fed a known-bad input in the tests and shown to fail.
//!
//! - [`LogOracle`]: one decided log. Every decided entry any node ever reports is compared
//!   with the first report for that index (so a divergence is caught even if the node
//!   later crashes), and [`common_prefix`] compares the final logs pairwise where they
//!   overlap. With log compaction a node's log starts at its compacted index: the world
//!   observes every node after every round, and a node trims only entries it applied in
//!   an earlier round, so every entry a node decides is compared before it can be trimmed.
//!   The one legitimate gap is a state install, which moves a node's log start past
//!   entries it never decided: [`LogOracle::skip`] allows it only then, and only up to
//!   the known decided log (an installed state covering entries no node was seen to
//!   decide is a violation).
//! - [`DecidedMonotonic`]: a node's decided index never goes back.
//! - [`accepted_claim`]: what a node claims it accepted is true of the round it names.
//!   A node's accepted round `r` and log end `e` (compacted index + log length) tell a new
//!   leader "my log up to `e` is round `r`'s log", and the leader syncs the node from
//!   that claim. In round `r` only `r`'s leader creates entries, so no node may claim
//!   more of `r` than `r`'s leader ever had while leading it. The leader's log is
//!   recorded at every write to its storage while its promise and accepted round are
//!   its own ballot (`storage::Durable::led`), so no growth escapes, even several
//!   messages handled at one instant (a paused node resuming); every node's claim is
//!   checked after every round. Ballots with round number 0 (the initial one, and the "below every real ballot"
//!   claim of a log reset, see `node::paxos`) claim nothing and are not checked; a
//!   round whose leader was never observed leading is not checked either.
//! - [`decided_durable`]: after a machine crash, every decided entry is still held by a
//!   majority of the nodes' durable logs (acknowledged writes are durable).
//! - [`replicas_equal`]: after quiescence, all state machines hold the same bytes.
//! - [`set_valid`]: the set workload's appends (unique elements, each appended once by
//!   one command): no element is ever read twice, no element appears that was not
//!   appended (or whose append certainly failed), and every acknowledged element is in
//!   the final value exactly once. (A read missing an element acknowledged before it was
//!   called is a stale read, left to [`linearizable`].) This is what a
//!   register model cannot see: a duplicate suppression (session table) that lets a
//!   retried or re-proposed append apply twice.
//! - [`linearizable`]: the client history, through [`crate::check::check`].
//! - The watch checker ([`super::watch_check`], over histories read from the nodes and
//!   the watchers' streams) fails with [`Kind::Watch`].
//!
//! Every checker fails with a [`Violation`]: a [`Kind`] (which invariant) and a message
//! naming the evidence; the bug-injection tests assert the kind, and the message where it
//! is deterministic.
//!
//! Invariants: a checker never passes on evidence it could not examine (a search out of
//! budget is a violation of its own kind, not a pass); each kind is raised by exactly
//! one checker, so a test asserting a kind shows which checker caught the bug.

use crate::check::{self, Input, Operation, Outcome, Output};
use crate::command::{LogEntry, NodeId};
use crate::kv::backend::MemSpaces;
use omnipaxos::ballot_leader_election::Ballot;
use std::collections::BTreeMap;

/// Which invariant a run broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// [`LogOracle`]: a node decided another entry at an index than an earlier report.
    DecidedEntryDiffers,
    /// [`LogOracle`]: a node reported a decided entry beyond the known log, trimmed
    /// entries never compared, or installed a state beyond the known log.
    DecidedLogGap,
    /// [`common_prefix`]: two final logs differ where they overlap.
    PrefixDiffers,
    /// [`DecidedMonotonic`]: a node's decided index went back.
    DecidedWentBack,
    /// [`accepted_claim`]: a node claims entries accepted in a round beyond what that
    /// round's leader ever had.
    FalseAcceptedClaim,
    /// [`replicas_equal`]: two replicas' bytes differ after quiescence.
    ReplicasDiffer,
    /// [`set_valid`]: an element appears twice.
    SetDuplicate,
    /// [`set_valid`]: an acknowledged element is missing from the final value.
    SetLost,
    /// [`set_valid`]: an element appears that was never appended, or whose append
    /// certainly failed.
    SetUnexpected,
    /// [`linearizable`]: no valid order of a key's history exists.
    NotLinearizable,
    /// [`linearizable`]: the search ran out of its budget.
    Undecided,
    /// An operation called after healing did not complete in time, or the replicas did
    /// not converge.
    Liveness,
    /// Code under test panicked (an OmniPaxos assertion).
    Panic,

    /// [`decided_durable`]: a decided entry is no longer held by a majority of the
    /// nodes' durable logs (a machine crash lost an acknowledged write).
    DecidedEntryLost,

    /// A node restarts with a state machine's applied index below the start of its log
    /// (the log was trimmed past state that was not durable; checked by `world`).
    StateBehindLog,
    /// The bank (`bank`): the accounts do not hold the opening total, or a balance
    /// disagrees with the ledger.
    BankTotal,
    /// The bank: a transfer's ledger row appears more than once (applied twice).
    TransferDuplicated,
    /// The bank: an acknowledged transfer is missing, or a refused one applied.
    TransferLost,
    /// The watch checker (`watch::check`): a watch history with a gap, one that does not
    /// replay to the data, an acknowledged write missing from it, or a watcher's stream
    /// that is not exactly the history's changes over the revisions it covered.
    Watch,
}

/// What a checker found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub kind: Kind,
    pub message: String,
}

impl Violation {
    pub fn new(kind: Kind, message: impl Into<String>) -> Violation {
        Violation {
            kind,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

type Checked<T> = Result<T, Violation>;

/// One slot of the decided log: an entry, or the stop sign that sealed a configuration
/// (it takes a global index of its own: the next configuration's log starts after it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Slot {
    Entry(LogEntry),
    /// The stop sign naming configuration `config` with these members.
    StopSign {
        config: u32,
        members: Vec<NodeId>,
    },
}

impl Slot {
    fn show(&self) -> String {
        match self {
            Slot::Entry(e) => format!("{e:?}"),
            Slot::StopSign { config, members } => {
                format!("the stop sign of configuration {config} (members {members:?})")
            }
        }
    }
}

/// The one decided log, as first reported by any node, across configurations (global
/// indexes; a configuration's stop sign is the slot before the next one's base).
#[derive(Default)]
pub struct LogOracle {
    log: Vec<Slot>,
    /// Per node: entries below this index were already compared.
    checked: Vec<u64>,
}

impl LogOracle {
    pub fn new(nodes: usize) -> LogOracle {
        LogOracle {
            log: Vec::new(),
            checked: vec![0; nodes],
        }
    }

    /// A node joins (the next index); it has compared nothing yet.
    pub fn add_node(&mut self) {
        self.checked.push(0);
    }

    /// The index from which `node` has not been compared yet.
    pub fn checked_to(&self, node: usize) -> u64 {
        self.checked[node]
    }

    /// Re-check `node` from `to` on (after it restarted with an older decided index).
    pub fn rewind(&mut self, node: usize, to: u64) {
        self.checked[node] = self.checked[node].min(to);
    }

    /// `node`'s log now starts at `to`, above what was compared: allowed only if `install`
    /// (it installed a fetched state) and only within the known decided log.
    pub fn skip(&mut self, node: usize, to: u64, install: bool) -> Checked<()> {
        let from = self.checked[node];
        if to <= from {
            return Ok(());
        }
        if !install {
            return Err(Violation::new(
                Kind::DecidedLogGap,
                format!(
                    "node {} trimmed its log to {to} without installing a state, but \
                     entries from {from} on were never compared",
                    node + 1
                ),
            ));
        }
        if to > self.log.len() as u64 {
            return Err(Violation::new(
                Kind::DecidedLogGap,
                format!(
                    "node {} installed a state ending at {to}, beyond the known decided log \
                     of {}",
                    node + 1,
                    self.log.len()
                ),
            ));
        }
        self.checked[node] = to;
        Ok(())
    }

    /// The decided log, as first reported.
    pub fn decided(&self) -> &[Slot] {
        &self.log
    }

    /// Length of the longest decided log seen.
    pub fn len(&self) -> usize {
        self.log.len()
    }

    pub fn is_empty(&self) -> bool {
        self.log.is_empty()
    }

    /// `node` reports `entries` decided from index `from` on.
    pub fn observe(&mut self, node: usize, from: u64, entries: &[LogEntry]) -> Checked<()> {
        let slots: Vec<Slot> = entries.iter().cloned().map(Slot::Entry).collect();
        self.observe_slots(node, from, &slots)
    }

    /// `node` applied the stop sign at `index` naming configuration `config` of `members`
    /// (it has reported every entry before it).
    pub fn observe_stop_sign(
        &mut self,
        node: usize,
        index: u64,
        config: u32,
        members: Vec<NodeId>,
    ) -> Checked<()> {
        self.observe_slots(node, index, &[Slot::StopSign { config, members }])
    }

    fn observe_slots(&mut self, node: usize, from: u64, slots: &[Slot]) -> Checked<()> {
        for (i, e) in slots.iter().enumerate() {
            let index = from as usize + i;
            match self.log.get(index) {
                Some(known) if known != e => {
                    return Err(Violation::new(
                        Kind::DecidedEntryDiffers,
                        format!(
                            "decided entry {index} differs: node {} has {}, another node \
                             decided {}",
                            node + 1,
                            e.show(),
                            known.show()
                        ),
                    ))
                }
                Some(_) => {}
                None if index == self.log.len() => self.log.push(e.clone()),
                None => {
                    return Err(Violation::new(
                        Kind::DecidedLogGap,
                        format!(
                            "node {} reports decided entry {index} beyond the known log of {}",
                            node + 1,
                            self.log.len()
                        ),
                    ))
                }
            }
        }
        self.checked[node] = self.checked[node].max(from + slots.len() as u64);
        Ok(())
    }
}

/// Every pair of logs agrees where both have entries. A log is (node, index of its first
/// entry, entries): with compaction each starts at its node's compacted index.
pub fn common_prefix(logs: &[(NodeId, u64, Vec<LogEntry>)]) -> Checked<()> {
    for (i, (a, sa, la)) in logs.iter().enumerate() {
        for (b, sb, lb) in &logs[i + 1..] {
            let start = (*sa).max(*sb);
            let (xa, xb) = ((start - sa) as usize, (start - sb) as usize);
            if xa >= la.len() || xb >= lb.len() {
                continue;
            }
            if let Some(k) = la[xa..].iter().zip(&lb[xb..]).position(|(x, y)| x != y) {
                return Err(Violation::new(
                    Kind::PrefixDiffers,
                    format!(
                        "nodes {a} and {b} decided different entries at index {}: {:?} vs {:?}",
                        start + k as u64,
                        la[xa + k],
                        lb[xb + k]
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Tracks that every node's decided index only grows.
pub struct DecidedMonotonic {
    last: Vec<u64>,
}

impl DecidedMonotonic {
    pub fn new(nodes: usize) -> DecidedMonotonic {
        DecidedMonotonic {
            last: vec![0; nodes],
        }
    }

    /// A node joins (the next index).
    pub fn add_node(&mut self) {
        self.last.push(0);
    }

    pub fn observe(&mut self, node: usize, decided: u64) -> Checked<()> {
        let last = &mut self.last[node];
        if decided < *last {
            return Err(Violation::new(
                Kind::DecidedWentBack,
                format!(
                    "node {}'s decided index went back from {last} to {decided}",
                    node + 1
                ),
            ));
        }
        *last = decided;
        Ok(())
    }

    /// A machine crash lost the unsynced decided index (allowed: it is not fsynced in
    /// production and is re-learned); monotonicity restarts from `decided`.
    pub fn reset(&mut self, node: usize, decided: u64) {
        self.last[node] = decided;
    }
}

/// Durability of acknowledged writes: every entry of the decided log (`decided`) is still
/// held by a majority of the nodes' durable logs. An entry is decided once a majority
/// accepted it, and a node acknowledges an accept only once it is synced, so no crash
/// takes it away, and a later leader's log, which overwrites a node's, holds it too. A
/// log is (node, entries below this global index count as held: its compacted or trimmed
/// index, its entries from there on). Only the slots from `from` on are checked — the
/// current configuration's, since each configuration's logs are discarded when the next
/// one starts — over the logs of that configuration's members. Checked after machine
/// crashes (the only fault that loses writes).
pub fn decided_durable(
    decided: &[Slot],
    from: u64,
    logs: &[(NodeId, u64, Vec<LogEntry>)],
) -> Checked<()> {
    let majority = logs.len() / 2 + 1;
    for (i, slot) in decided.iter().enumerate().skip(from as usize) {
        let Slot::Entry(e) = slot else {
            continue;
        };
        let i = i as u64;
        let held = logs
            .iter()
            .filter(|(_, start, entries)| {
                i < *start || entries.get((i - start) as usize) == Some(e)
            })
            .count();
        if held < majority {
            return Err(Violation::new(
                Kind::DecidedEntryLost,
                format!(
                    "decided entry {i} is held by {held} of {} nodes' durable logs, fewer \
                     than a majority",
                    logs.len()
                ),
            ));
        }
    }
    Ok(())
}

/// A round: (config id, round number, priority, leader).
pub type Round = (u32, u32, u32, u64);

/// The round a ballot names, if it is a real one (round number above 0).
pub fn round_of(b: Option<Ballot>) -> Option<Round> {
    b.filter(|b| b.n > 0)
        .map(|b| (b.config_id, b.n, b.priority, b.pid))
}

/// `node` (an index) claims its log up to `end` was accepted in `accepted`; `led` is the
/// longest log that round's leader had while it led it (`None`: never seen leading; the
/// claim is then not checked). See the module docs.
pub fn accepted_claim(
    node: usize,
    accepted: Option<Ballot>,
    end: u64,
    led: impl Fn(Round) -> Option<u64>,
) -> Checked<()> {
    let Some(round) = round_of(accepted) else {
        return Ok(());
    };
    match led(round) {
        Some(longest) if end > longest => Err(Violation::new(
            Kind::FalseAcceptedClaim,
            format!(
                "node {} claims a log up to {end} accepted in round {} of node {}, but that \
                 round's leader never had more than {longest} entries",
                node + 1,
                round.1,
                round.3
            ),
        )),
        _ => Ok(()),
    }
}

/// All replicas hold the same bytes (user data and state-machine metadata).
pub fn replicas_equal(states: &[(NodeId, MemSpaces)]) -> Checked<()> {
    let Some((a, first)) = states.first() else {
        return Ok(());
    };
    for (b, other) in &states[1..] {
        if other == first {
            continue;
        }
        for (name, x, y) in [("kv", &first.kv, &other.kv), ("sm", &first.sm, &other.sm)] {
            let keys = x.keys().chain(y.keys());
            if let Some(k) = keys.into_iter().find(|k| x.get(*k) != y.get(*k)) {
                return Err(Violation::new(
                    Kind::ReplicasDiffer,
                    format!(
                        "replicas {a} and {b} differ in {name} key {:?}: {:?} vs {:?}",
                        String::from_utf8_lossy(k),
                        // Escaped, so that bytes that are not text (a version) show.
                        x.get(k).map(|v| v.escape_ascii().to_string()),
                        y.get(k).map(|v| v.escape_ascii().to_string()),
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The history is linearizable per key; returns the number of operations checked.
pub fn linearizable(history: &[Operation], budget: u64) -> Checked<usize> {
    let report = check::check(history, budget);
    if let Some((key, ops)) = report.violations.iter().next() {
        let mut text = format!("history of key {key:?} is not linearizable:");
        for op in ops {
            text.push_str(&format!(
                "\n  client {} {:?} call {} ret {:?} -> {:?}",
                op.client, op.input, op.call, op.ret, op.outcome
            ));
        }
        return Err(Violation::new(Kind::NotLinearizable, text));
    }
    if !report.unknown.is_empty() {
        return Err(Violation::new(
            Kind::Undecided,
            format!(
                "linearizability undecided within the budget for keys {:?}",
                report.unknown
            ),
        ));
    }
    Ok(report.operations)
}

/// The separator before every element of a set value (`,a,b,c`).
pub const SET_SEPARATOR: u8 = b',';

/// The elements of a set value, in order.
fn elements(value: &[u8]) -> Vec<&[u8]> {
    value
        .split(|b| *b == SET_SEPARATOR)
        .skip(1)
        .collect::<Vec<_>>()
}

/// Checks the set workload: `history` holds the appends (`Input::Append`, whose suffix
/// is the separator and one element) and the reads of the set keys; `finals` the value
/// of each set key after quiescence. See the module docs for what is checked.
pub fn set_valid(
    history: &[Operation],
    finals: &BTreeMap<Vec<u8>, Option<Vec<u8>>>,
) -> Checked<()> {
    let name = |k: &[u8]| String::from_utf8_lossy(k).into_owned();
    // Per (key, element): the outcome of its append and, if acknowledged, its return.
    type Append<'a> = (&'a Outcome, Option<u64>);
    let mut appended: BTreeMap<(&[u8], &[u8]), Append> = BTreeMap::new();
    for op in history {
        if let Input::Append(suffix) = &op.input {
            let e = elements(suffix);
            appended.insert((&op.key, e[0]), (&op.outcome, op.ret));
        }
    }
    // One value read: `at` is the read's call event (None: the final value).
    let check = |key: &[u8], value: &[u8], at: Option<u64>| -> Checked<()> {
        let place = match at {
            Some(call) => format!("a read called at event {call}"),
            None => "the final value".to_string(),
        };
        let mut counts: BTreeMap<&[u8], usize> = BTreeMap::new();
        for e in elements(value) {
            *counts.entry(e).or_default() += 1;
        }
        for (e, n) in &counts {
            if *n > 1 {
                return Err(Violation::new(
                    Kind::SetDuplicate,
                    format!(
                        "set {:?}: element {:?} appears {n} times in {place}",
                        name(key),
                        name(e)
                    ),
                ));
            }
            match appended.get(&(key, *e)) {
                Some((Outcome::Fail, _)) | None => {
                    return Err(Violation::new(
                        Kind::SetUnexpected,
                        format!(
                            "set {:?}: element {:?} in {place} was never appended (or its \
                             append certainly failed)",
                            name(key),
                            name(e)
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
        if at.is_some() {
            // A read missing an element acknowledged before it was called is stale: that
            // is the linearizability check's to report (so each bug has one kind).
            return Ok(());
        }
        for ((k, e), (outcome, _)) in &appended {
            if *k == key && matches!(outcome, Outcome::Ok(_)) && !counts.contains_key(e) {
                return Err(Violation::new(
                    Kind::SetLost,
                    format!(
                        "set {:?}: acknowledged element {:?} is missing from {place}",
                        name(key),
                        name(e)
                    ),
                ));
            }
        }
        Ok(())
    };
    for op in history {
        if let (true, Outcome::Ok(Output::Value(v))) = (finals.contains_key(&op.key), &op.outcome) {
            check(&op.key, v.as_deref().unwrap_or_default(), Some(op.call))?;
        }
    }
    for (key, value) in finals {
        check(key, value.as_deref().unwrap_or_default(), None)?;
    }
    Ok(())
}
