//! Linearizability checking of client histories, per key, against a register model (a
//! value that puts, deletes, compare-and-swaps and appends change).
//!
//! A test (the deterministic simulation or the real-process nemesis runner) records every
//! client operation as an [`Operation`]: what was asked ([`Input`]), when it was invoked,
//! and how it ended ([`Outcome`]):
//!
//! - `Ok(output)` — the operation took effect exactly once, somewhere between its call and
//!   its return, and `output` is what it saw;
//! - `Fail` — it certainly did not take effect (for example refused as invalid);
//! - `Info` — unknown (timeout, lost connection): it may have taken effect at any point
//!   after its call, or never. It must never be recorded as `Fail`.
//!
//! [`check`] splits the history by key (operations on different keys commute in a
//! key-value store) and searches, per key, for an order of the operations that respects
//! real time and the register semantics (depth-first search with memoisation of
//! (linearized set, state), after Wing & Gong and Lowe). A key whose search exceeds the
//! step budget is reported as `Unknown`, never as passed.

mod search;

pub use search::check_key;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a client asked for, on one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Input {
    /// Read the key.
    Get,
    /// Set the key to the value.
    Put(Vec<u8>),
    /// Remove the key.
    Delete,
    /// Set the key to `new` if its current value equals `expect` (an absent key never
    /// matches).
    Cas { expect: Vec<u8>, new: Vec<u8> },
    /// Append the bytes to the key's value (absent = empty).
    Append(Vec<u8>),
}

/// What an operation that succeeded returned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Output {
    /// A get: the value seen (None = absent).
    Value(Option<Vec<u8>>),
    /// A put.
    Written,
    /// A delete: whether the key existed.
    Deleted(bool),
    /// A compare-and-swap: whether it swapped.
    Swapped(bool),
    /// An append: the length of the value after it.
    Appended(u64),
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Ok(Output),
    Fail,
    Info,
}

/// One client operation of a history. Times are in any monotonic unit (nanoseconds since
/// the start of the run, event numbers, ...), the same for all operations. Equal times
/// count as concurrent (either order is allowed), so a coarse clock hides violations
/// between an operation returning and another called at the same tick: the simulation
/// numbers every call and return instead, which never ties.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    /// The client (process) that issued it; a client has one operation in flight.
    pub client: u64,
    pub key: Vec<u8>,
    pub input: Input,
    pub call: u64,
    /// When the answer arrived; `None` for `Info` (treated as "never returned").
    pub ret: Option<u64>,
    pub outcome: Outcome,
}

/// The verdict for one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    Linearizable,
    /// No valid order exists; the operations of this key are the evidence.
    Violation,
    /// The search ran out of its step budget.
    Unknown,
}

/// The verdict for a whole history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Keys checked.
    pub keys: usize,
    /// Operations checked, over every key: the history less the operations that certainly
    /// failed (counted as the per-key histories are built, not taken from the input).
    pub operations: usize,
    /// Keys whose history is not linearizable, with their operations.
    pub violations: BTreeMap<String, Vec<Operation>>,
    /// Keys the search could not decide within its budget.
    pub unknown: Vec<String>,
}

impl Report {
    /// True when every key was checked and found linearizable.
    pub fn is_linearizable(&self) -> bool {
        self.violations.is_empty() && self.unknown.is_empty()
    }
}

/// Default search budget per key (states visited).
pub const DEFAULT_BUDGET: u64 = 5_000_000;

/// Checks a whole history, key by key. `initial` is the value every key starts with
/// (None = absent). `Fail` operations are ignored (they did not happen).
pub fn check(history: &[Operation], budget_per_key: u64) -> Report {
    let mut by_key: BTreeMap<Vec<u8>, Vec<Operation>> = BTreeMap::new();
    for op in history {
        if op.outcome != Outcome::Fail {
            by_key.entry(op.key.clone()).or_default().push(op.clone());
        }
    }
    let mut report = Report {
        keys: by_key.len(),
        operations: by_key.values().map(Vec::len).sum(),
        violations: BTreeMap::new(),
        unknown: Vec::new(),
    };
    for (key, ops) in by_key {
        let name = String::from_utf8_lossy(&key).into_owned();
        match check_key(&ops, None, budget_per_key) {
            Verdict::Linearizable => {}
            Verdict::Violation => {
                report.violations.insert(name, ops);
            }
            Verdict::Unknown => report.unknown.push(name),
        }
    }
    report
}

/// The register model: applies `input` to `state`; returns the new state if `output` is
/// what a correct register could have answered. `output = None` (an `Info` operation)
/// accepts any answer.
pub fn step(
    state: &Option<Vec<u8>>,
    input: &Input,
    output: Option<&Output>,
) -> Option<Option<Vec<u8>>> {
    match (input, output) {
        (Input::Get, None) => Some(state.clone()),
        (Input::Get, Some(Output::Value(v))) => (v == state).then(|| state.clone()),
        (Input::Put(v), None | Some(Output::Written)) => Some(Some(v.clone())),
        (Input::Delete, None) => Some(None),
        (Input::Delete, Some(Output::Deleted(d))) => (*d == state.is_some()).then_some(None),
        (Input::Append(suffix), out) => {
            let mut v = state.clone().unwrap_or_default();
            v.extend_from_slice(suffix);
            match out {
                None => Some(Some(v)),
                Some(Output::Appended(len)) if *len == v.len() as u64 => Some(Some(v)),
                _ => None,
            }
        }
        (Input::Cas { expect, new }, out) => {
            let matches = state.as_ref() == Some(expect);
            match out {
                None => Some(if matches {
                    Some(new.clone())
                } else {
                    state.clone()
                }),
                Some(Output::Swapped(s)) if *s == matches => Some(if matches {
                    Some(new.clone())
                } else {
                    state.clone()
                }),
                _ => None,
            }
        }
        _ => None,
    }
}
