//! The per-key search for a linearization (see the module docs of `check`).
//!
//! State of the search: which operations are linearized so far (a bitset) and the
//! register's value. An operation may come next when no other remaining *completed*
//! operation returned before it was called (real-time order). `Info` operations never
//! returned: they may be placed anywhere after their call, or nowhere. The search succeeds
//! once every completed operation is placed. Visited (bitset, value) pairs are memoised.

use super::{step, Operation, Outcome, Output, Verdict};
use std::collections::HashSet;
use std::hash::Hash;

struct Op<'a> {
    call: u64,
    /// `u64::MAX` for an `Info` operation.
    ret: u64,
    op: &'a Operation,
}

/// Checks the operations of one key, starting from `initial`.
pub fn check_key(ops: &[Operation], initial: Option<Vec<u8>>, budget: u64) -> Verdict {
    search(ops, initial, budget, |state, op, output| {
        step(state, &op.input, output)
    })
}

/// The search over any model: `model(state, op, output)` is the state after `op`, if
/// `output` (`None`: an `Info` operation) is what it could have answered.
pub fn search<S: Clone + Eq + Hash>(
    ops: &[Operation],
    initial: S,
    budget: u64,
    model: impl Fn(&S, &Operation, Option<&Output>) -> Option<S>,
) -> Verdict {
    let mut ops: Vec<Op> = ops
        .iter()
        .filter(|o| o.outcome != Outcome::Fail)
        .map(|o| Op {
            call: o.call,
            ret: match o.outcome {
                Outcome::Ok(_) => o.ret.unwrap_or(u64::MAX).max(o.call),
                _ => u64::MAX,
            },
            op: o,
        })
        .collect();
    ops.sort_by_key(|o| (o.call, o.ret));
    let n = ops.len();
    let must: usize = ops
        .iter()
        .filter(|o| matches!(o.op.outcome, Outcome::Ok(_)))
        .count();
    let words = n.div_ceil(64).max(1);
    let mut seen: HashSet<(Vec<u64>, S)> = HashSet::new();
    let mut steps = 0u64;
    // Explicit stack of (linearized set, state, completed ops placed).
    let mut stack: Vec<(Vec<u64>, S, usize)> = vec![(vec![0; words], initial, 0)];
    while let Some((done, state, placed)) = stack.pop() {
        if placed == must {
            return Verdict::Linearizable;
        }
        steps += 1;
        if steps > budget {
            return Verdict::Unknown;
        }
        let is_done = |i: usize| done[i / 64] & (1 << (i % 64)) != 0;
        // The earliest return among remaining completed operations bounds who may go next.
        let min_ret = (0..n)
            .filter(|&i| !is_done(i))
            .map(|i| ops[i].ret)
            .min()
            .unwrap_or(u64::MAX);
        for i in (0..n).rev() {
            if is_done(i) || ops[i].call > min_ret {
                continue;
            }
            let output = match &ops[i].op.outcome {
                Outcome::Ok(o) => Some(o),
                _ => None,
            };
            let Some(next) = model(&state, ops[i].op, output) else {
                continue;
            };
            let mut d = done.clone();
            d[i / 64] |= 1 << (i % 64);
            if seen.insert((d.clone(), next.clone())) {
                let p = placed + usize::from(output.is_some());
                stack.push((d, next, p));
            }
        }
    }
    Verdict::Violation
}

#[cfg(test)]
mod tests {
    use super::super::{check, Input, Output, DEFAULT_BUDGET};
    use super::*;

    fn op(client: u64, input: Input, call: u64, ret: Option<u64>, outcome: Outcome) -> Operation {
        Operation {
            client,
            key: b"k".to_vec(),
            input,
            call,
            ret,
            outcome,
        }
    }
    fn put(c: u64, v: &str, call: u64, ret: u64) -> Operation {
        op(
            c,
            Input::Put(v.into()),
            call,
            Some(ret),
            Outcome::Ok(Output::Written),
        )
    }
    fn get(c: u64, v: Option<&str>, call: u64, ret: u64) -> Operation {
        let seen = Output::Value(v.map(|s| s.as_bytes().to_vec()));
        op(c, Input::Get, call, Some(ret), Outcome::Ok(seen))
    }
    fn verdict(h: &[Operation]) -> Verdict {
        check_key(h, None, DEFAULT_BUDGET)
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = [
            put(1, "a", 0, 1),
            get(2, Some("a"), 2, 3),
            put(1, "b", 4, 5),
            get(2, Some("b"), 6, 7),
        ];
        assert_eq!(verdict(&h), Verdict::Linearizable);
    }

    #[test]
    fn stale_read_after_acknowledged_write_is_a_violation() {
        // The put of "b" returned before the get started, yet the get saw "a".
        let h = [
            put(1, "a", 0, 1),
            put(1, "b", 2, 3),
            get(2, Some("a"), 4, 5),
        ];
        assert_eq!(verdict(&h), Verdict::Violation);
    }

    /// The blind spot of coarse timestamps: a read called in the same instant (the same
    /// simulation round) as a write returned ties with it, and a tie is concurrency, so
    /// the read may be placed before the write and its stale value passes. Numbering
    /// every call and return in the order they happen (as the simulation does) leaves no
    /// ties, and the same history is a violation.
    #[test]
    fn only_exact_event_order_exposes_a_stale_read_at_a_tie() {
        // Round times: the put of "b" returns at 20, the get is called at 20.
        let per_round = [
            put(1, "a", 0, 10),
            put(1, "b", 10, 20),
            get(2, Some("a"), 20, 30),
        ];
        assert_eq!(verdict(&per_round), Verdict::Linearizable);
        // Event numbers: the put returned (event 4) before the get was called (event 5).
        let exact = [
            put(1, "a", 1, 2),
            put(1, "b", 3, 4),
            get(2, Some("a"), 5, 6),
        ];
        assert_eq!(verdict(&exact), Verdict::Violation);
    }

    #[test]
    fn concurrent_operations_may_take_either_order() {
        let h = [
            put(1, "a", 0, 10),
            get(2, None, 1, 2),
            get(3, Some("a"), 3, 4),
            get(2, Some("a"), 5, 6),
        ];
        assert_eq!(verdict(&h), Verdict::Linearizable);
        // But once "a" was seen, absent cannot be seen again.
        let h = [
            put(1, "a", 0, 10),
            get(3, Some("a"), 3, 4),
            get(2, None, 5, 6),
        ];
        assert_eq!(verdict(&h), Verdict::Violation);
    }

    #[test]
    fn info_operations_may_or_may_not_have_happened() {
        let lost = op(1, Input::Put("x".into()), 0, None, Outcome::Info);
        assert_eq!(
            verdict(&[lost.clone(), get(2, Some("x"), 5, 6)]),
            Verdict::Linearizable
        );
        assert_eq!(
            verdict(&[lost.clone(), get(2, None, 5, 6)]),
            Verdict::Linearizable
        );
        // ...but not both ways: once seen, it stays.
        let h = [lost, get(2, Some("x"), 5, 6), get(2, None, 7, 8)];
        assert_eq!(verdict(&h), Verdict::Violation);
    }

    #[test]
    fn cas_and_delete_follow_register_semantics() {
        let cas = |c, e: &str, n: &str, call, ret, ok| {
            let input = Input::Cas {
                expect: e.into(),
                new: n.into(),
            };
            op(c, input, call, Some(ret), Outcome::Ok(Output::Swapped(ok)))
        };
        let del = |c, call, ret, existed| {
            op(
                c,
                Input::Delete,
                call,
                Some(ret),
                Outcome::Ok(Output::Deleted(existed)),
            )
        };
        let h = [
            put(1, "a", 0, 1),
            cas(2, "a", "b", 2, 3, true),
            cas(3, "a", "c", 4, 5, false),
            get(1, Some("b"), 6, 7),
            del(1, 8, 9, true),
            del(2, 10, 11, false),
        ];
        assert_eq!(verdict(&h), Verdict::Linearizable);
        // Two sequential CAS from the same expected value cannot both succeed.
        let h = [
            put(1, "a", 0, 1),
            cas(2, "a", "b", 2, 3, true),
            cas(3, "a", "c", 4, 5, true),
        ];
        assert_eq!(verdict(&h), Verdict::Violation);
    }

    #[test]
    fn failed_operations_are_ignored_and_keys_are_independent() {
        let mut other = get(2, Some("zzz"), 0, 1);
        other.key = b"other".to_vec();
        let failed = op(1, Input::Put("a".into()), 0, Some(1), Outcome::Fail);
        let report = check(&[failed, get(2, None, 2, 3), other], DEFAULT_BUDGET);
        assert!(!report.is_linearizable());
        assert_eq!(report.violations.keys().collect::<Vec<_>>(), vec!["other"]);
    }

    #[test]
    fn budget_exhaustion_is_unknown_not_a_pass() {
        // Many concurrent writes of distinct values and reads of an impossible value force
        // an exhaustive search.
        let mut h: Vec<Operation> = (0..14).map(|i| put(i, &format!("v{i}"), 0, 100)).collect();
        h.push(get(99, Some("never"), 0, 100));
        assert_eq!(check_key(&h, None, 1000), Verdict::Unknown);
    }
}
