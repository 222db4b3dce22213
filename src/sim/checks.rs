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
//! - [`replicas_equal`]: after quiescence, all state machines hold the same bytes.
//! - [`linearizable`]: the client history, through [`crate::check::check`].

use crate::check::{self, Operation};
use crate::command::{LogEntry, NodeId};
use crate::kv::backend::MemSpaces;

/// The one decided log, as first reported by any node.
#[derive(Default)]
pub struct LogOracle {
    log: Vec<LogEntry>,
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
    pub fn skip(&mut self, node: usize, to: u64, install: bool) -> Result<(), String> {
        let from = self.checked[node];
        if to <= from {
            return Ok(());
        }
        if !install {
            return Err(format!(
                "node {} trimmed its log to {to} without installing a state, but entries \
                 from {from} on were never compared",
                node + 1
            ));
        }
        if to > self.log.len() as u64 {
            return Err(format!(
                "node {} installed a state ending at {to}, beyond the known decided log of {}",
                node + 1,
                self.log.len()
            ));
        }
        self.checked[node] = to;
        Ok(())
    }

    /// Length of the longest decided log seen.
    pub fn len(&self) -> usize {
        self.log.len()
    }

    pub fn is_empty(&self) -> bool {
        self.log.is_empty()
    }

    /// `node` reports `entries` decided from index `from` on.
    pub fn observe(&mut self, node: usize, from: u64, entries: &[LogEntry]) -> Result<(), String> {
        for (i, e) in entries.iter().enumerate() {
            let index = from as usize + i;
            match self.log.get(index) {
                Some(known) if known != e => {
                    return Err(format!(
                        "decided entry {index} differs: node {} has {e:?}, another node decided {known:?}",
                        node + 1
                    ))
                }
                Some(_) => {}
                None if index == self.log.len() => self.log.push(e.clone()),
                None => {
                    return Err(format!(
                        "node {} reports decided entry {index} beyond the known log of {}",
                        node + 1,
                        self.log.len()
                    ))
                }
            }
        }
        self.checked[node] = self.checked[node].max(from + entries.len() as u64);
        Ok(())
    }
}

/// Every pair of logs agrees where both have entries. A log is (node, index of its first
/// entry, entries): with compaction each starts at its node's compacted index.
pub fn common_prefix(logs: &[(NodeId, u64, Vec<LogEntry>)]) -> Result<(), String> {
    for (i, (a, sa, la)) in logs.iter().enumerate() {
        for (b, sb, lb) in &logs[i + 1..] {
            let start = (*sa).max(*sb);
            let (xa, xb) = ((start - sa) as usize, (start - sb) as usize);
            if xa >= la.len() || xb >= lb.len() {
                continue;
            }
            if let Some(k) = la[xa..].iter().zip(&lb[xb..]).position(|(x, y)| x != y) {
                return Err(format!(
                    "nodes {a} and {b} decided different entries at index {}: {:?} vs {:?}",
                    start + k as u64,
                    la[xa + k],
                    lb[xb + k]
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

    pub fn observe(&mut self, node: usize, decided: u64) -> Result<(), String> {
        let last = &mut self.last[node];
        if decided < *last {
            return Err(format!(
                "node {}'s decided index went back from {last} to {decided}",
                node + 1
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

/// All replicas hold the same bytes (user data and state-machine metadata).
pub fn replicas_equal(states: &[(NodeId, MemSpaces)]) -> Result<(), String> {
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
                return Err(format!(
                    "replicas {a} and {b} differ in {name} key {:?}: {:?} vs {:?}",
                    String::from_utf8_lossy(k),
                    x.get(k).map(|v| String::from_utf8_lossy(v).into_owned()),
                    y.get(k).map(|v| String::from_utf8_lossy(v).into_owned()),
                ));
            }
        }
    }
    Ok(())
}

/// The history is linearizable per key; returns the number of operations checked.
pub fn linearizable(history: &[Operation], budget: u64) -> Result<usize, String> {
    let report = check::check(history, budget);
    if let Some((key, ops)) = report.violations.iter().next() {
        let mut text = format!("history of key {key:?} is not linearizable:");
        for op in ops {
            text.push_str(&format!(
                "\n  client {} {:?} call {} ret {:?} -> {:?}",
                op.client, op.input, op.call, op.ret, op.outcome
            ));
        }
        return Err(text);
    }
    if !report.unknown.is_empty() {
        return Err(format!(
            "linearizability undecided within the budget for keys {:?}",
            report.unknown
        ));
    }
    Ok(report.operations)
}
