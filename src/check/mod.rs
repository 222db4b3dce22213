//! Linearizability checking of client histories, per key, against a register model (a
//! value that puts, deletes, compare-and-swaps and appends change). Test machinery:
//! compiled only with the `test-machinery` cargo feature.
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
//! key-value store) — into groups of keys where multi-key operations (an atomic
//! multi-put, a prefix scan) couple keys, checked against the group model with versions
//! (see [`group`]) — and searches, per key or group, for an order of the operations that respects
//! real time and the register semantics (depth-first search with memoisation of
//! (linearized set, state), after Wing & Gong and Lowe). A key whose search exceeds the
//! step budget is reported as `Unknown`, never as passed.

mod group;
mod search;

pub use group::{step_group, GroupState};
pub use search::{check_key, search};

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
    /// Set every pair, atomically (one version for all).
    MultiPut(Vec<(Vec<u8>, Vec<u8>)>),
    /// Read every key under the prefix, with versions, from one state. The operation's
    /// `key` is the prefix.
    Scan(Vec<u8>),
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
    /// A write (put, multi-put) that reports the version it wrote.
    Version(u64),
    /// A versioned get: the value and its version (None = absent).
    Read(Option<(Vec<u8>, u64)>),
    /// A scan: the rows (key, value, version) in key order.
    Rows(Vec<(Vec<u8>, Vec<u8>, u64)>),
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
    /// Keys checked: each key on its own, or each group of keys that multi-key
    /// operations couple (named by its keys, joined by commas).
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
    let mut groups: BTreeMap<Vec<Vec<u8>>, Vec<Operation>> = BTreeMap::new();
    let group_of = key_groups(history);
    for op in history {
        if op.outcome != Outcome::Fail {
            let group = group_of[&op.key].clone();
            groups.entry(group).or_default().push(op.clone());
        }
    }
    let mut report = Report {
        keys: groups.len(),
        operations: groups.values().map(Vec::len).sum(),
        violations: BTreeMap::new(),
        unknown: Vec::new(),
    };
    for (keys, ops) in groups {
        let names: Vec<String> = keys
            .iter()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        let name = names.join(",");
        let grouped = keys.len() > 1 || ops.iter().any(is_grouped);
        let verdict = if grouped {
            search(&ops, GroupState::default(), budget_per_key, step_group)
        } else {
            check_register(&ops, budget_per_key)
        };
        match verdict {
            Verdict::Linearizable => {}
            Verdict::Violation => {
                report.violations.insert(name, ops);
            }
            Verdict::Unknown => report.unknown.push(name),
        }
    }
    report
}

/// One key's history against the register model. A set key (only appends of unique,
/// separator-led elements, and reads) is first tried without the appends of unknown
/// outcome that no read saw: "it never happened" is one of their allowed outcomes, so a
/// valid order without them is a valid order of the history. Those appends are what
/// makes the search explode — each may sit anywhere after its call, in any order with
/// the others — so this settles most histories at once. Only if that fails is the whole
/// history searched, where an unseen append may still be needed (say, to explain the
/// length another append reported).
fn check_register(ops: &[Operation], budget: u64) -> Verdict {
    if let Some(reduced) = without_unseen_appends(ops) {
        if check_key(&reduced, None, budget) == Verdict::Linearizable {
            return Verdict::Linearizable;
        }
    }
    check_key(ops, None, budget)
}

/// `ops` less the appends of unknown outcome whose element no successful read shows, if
/// `ops` is a set key's history (appends and reads only; every appended suffix starts
/// with one separator byte found nowhere else in it) and there is such an append.
fn without_unseen_appends(ops: &[Operation]) -> Option<Vec<Operation>> {
    let mut sep = None;
    for op in ops {
        match &op.input {
            Input::Append(suffix) => {
                let (&first, rest) = suffix.split_first()?;
                if *sep.get_or_insert(first) != first || rest.contains(&first) {
                    return None;
                }
            }
            Input::Get => {}
            _ => return None,
        }
    }
    let sep = sep?;
    let mut seen: std::collections::HashSet<&[u8]> = std::collections::HashSet::new();
    for op in ops {
        if let (Input::Get, Outcome::Ok(Output::Value(Some(v)))) = (&op.input, &op.outcome) {
            seen.extend(v.split(|b| *b == sep).skip(1));
        }
    }
    let unseen = |op: &Operation| match (&op.input, &op.outcome) {
        (Input::Append(suffix), Outcome::Info) => !seen.contains(&suffix[1..]),
        _ => false,
    };
    if !ops.iter().any(unseen) {
        return None;
    }
    Some(ops.iter().filter(|op| !unseen(op)).cloned().collect())
}

/// An operation only the group model understands (multi-key or versioned).
fn is_grouped(op: &Operation) -> bool {
    matches!(op.input, Input::MultiPut(_) | Input::Scan(_))
        || matches!(
            op.outcome,
            Outcome::Ok(Output::Version(_) | Output::Read(_) | Output::Rows(_))
        )
}

/// Each key of `history` (operation keys and multi-put keys) mapped to its group (sorted
/// keys): keys a multi-key operation touches together are in one group.
fn key_groups(history: &[Operation]) -> BTreeMap<Vec<u8>, Vec<Vec<u8>>> {
    let mut keys: Vec<Vec<u8>> = Vec::new();
    for op in history {
        keys.push(op.key.clone());
        if let Input::MultiPut(pairs) = &op.input {
            keys.extend(pairs.iter().map(|(k, _)| k.clone()));
        }
    }
    keys.sort();
    keys.dedup();
    // Union-find over the indexes of `keys`.
    let mut parent: Vec<usize> = (0..keys.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let index = |k: &[u8]| keys.binary_search_by(|x| x.as_slice().cmp(k)).unwrap();
    for op in history {
        let coupled: Vec<usize> = match &op.input {
            Input::MultiPut(pairs) => pairs.iter().map(|(k, _)| index(k)).collect(),
            Input::Scan(prefix) => (0..keys.len())
                .filter(|&i| keys[i].starts_with(prefix))
                .collect(),
            _ => continue,
        };
        let a = root(&mut parent, index(&op.key));
        for i in coupled {
            let b = root(&mut parent, i);
            parent[b] = a;
        }
    }
    let mut members: BTreeMap<usize, Vec<Vec<u8>>> = BTreeMap::new();
    for (i, key) in keys.iter().enumerate() {
        let r = root(&mut parent, i);
        members.entry(r).or_default().push(key.clone());
    }
    let mut out = BTreeMap::new();
    for group in members.into_values() {
        for k in &group {
            out.insert(k.clone(), group.clone());
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: u64, input: Input, call: u64, ret: Option<u64>, outcome: Outcome) -> Operation {
        Operation {
            client,
            key: b"s".to_vec(),
            input,
            call,
            ret,
            outcome,
        }
    }
    fn append(c: u64, e: &str, call: u64, ret: u64, len: u64) -> Operation {
        let out = Outcome::Ok(Output::Appended(len));
        op(c, Input::Append(e.into()), call, Some(ret), out)
    }
    fn lost(c: u64, e: &str, call: u64) -> Operation {
        op(c, Input::Append(e.into()), call, None, Outcome::Info)
    }
    fn read(c: u64, v: &str, call: u64, ret: u64) -> Operation {
        let out = Outcome::Ok(Output::Value(Some(v.into())));
        op(c, Input::Get, call, Some(ret), out)
    }

    /// Appends of unknown outcome no read saw, each free to sit anywhere after its call:
    /// the plain search runs out of budget over their orders, the set-key shortcut (they
    /// never happened) decides at once.
    #[test]
    fn unseen_appends_of_unknown_outcome_do_not_exhaust_the_search() {
        let mut h: Vec<Operation> = (0..40)
            .map(|i| lost(100 + i, &format!(",u{i}"), i))
            .collect();
        let mut value = String::new();
        let mut t = 100;
        for i in 0..30 {
            let e = format!(",e{i:02}");
            value.push_str(&e);
            h.push(append(1, &e, t, t + 1, value.len() as u64));
            h.push(read(2, &value, t + 2, t + 3));
            t += 4;
        }
        assert_eq!(
            check_key(&h, None, 20_000),
            Verdict::Unknown,
            "the plain search"
        );
        let r = check(&h, 20_000);
        assert!(r.is_linearizable(), "{r:?}");
    }

    /// An unseen append that must have happened (another append's reported length counts
    /// it) is still found, by the full search.
    #[test]
    fn an_unseen_append_another_append_counts_is_kept() {
        let h = vec![lost(1, ",x", 0), append(2, ",y", 10, 11, 4)];
        assert!(without_unseen_appends(&h).is_some());
        assert!(check(&h, DEFAULT_BUDGET).is_linearizable());
        // Without it the length is wrong: a violation.
        let h = vec![append(2, ",y", 10, 11, 4)];
        assert!(!check(&h, DEFAULT_BUDGET).is_linearizable());
    }

    /// The shortcut never hides a violation: a stale read stays one.
    #[test]
    fn a_stale_set_read_is_still_a_violation() {
        let h = vec![
            lost(9, ",z", 0),
            append(1, ",a", 1, 2, 2),
            append(1, ",b", 3, 4, 4),
            read(2, ",a", 5, 6),
        ];
        let r = check(&h, DEFAULT_BUDGET);
        assert!(r.violations.contains_key("s"), "{r:?}");
    }

    /// Only set-key histories are reduced.
    #[test]
    fn only_separator_led_appends_and_reads_are_reduced() {
        let put = op(
            1,
            Input::Put(b"v".to_vec()),
            0,
            Some(1),
            Outcome::Ok(Output::Written),
        );
        assert!(without_unseen_appends(&[put, lost(2, ",x", 0)]).is_none());
        assert!(without_unseen_appends(&[lost(2, ",x,", 0)]).is_none());
        assert!(without_unseen_appends(&[lost(2, ",x", 0), lost(3, ";y", 0)]).is_none());
        // Seen by a read: kept.
        assert!(without_unseen_appends(&[lost(2, ",x", 0), read(3, ",x", 1, 2)]).is_none());
    }
}
