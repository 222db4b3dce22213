//! The model of a key group: several keys checked together, because a multi-key operation
//! (an atomic multi-put, a prefix scan) couples them, and versions.
//!
//! [`check`](super::check) puts keys in one group when an operation touches them
//! together: a [`Input::MultiPut`] joins its keys, a [`Input::Scan`] joins every key of the
//! history under its prefix. A key no multi-key or versioned operation touches stays in a
//! group of its own and is checked with the plain register model ([`super::step`]).
//!
//! The group's state is every key's value and version, and the highest version written so
//! far in the order being tried. Versions are the store's revisions: every applied write
//! takes the next revision, so along any valid order the versions that writes report
//! grow, and a key's version is the one of its last write (an atomic multi-put gives all
//! its keys one version). A write whose version is not known (an `Info` write, or one
//! whose answer does not report it) leaves its keys with an unknown version, which the
//! first read that reports one fixes.
//!
//! Invariants: the model accepts every history a correct store produces (an unknown
//! version constrains nothing until it is read); a read or a scan sees exactly the
//! state the order has reached, all keys of the group at once.

use super::{step, Input, Operation, Output};
use std::collections::BTreeMap;

/// A key's value and version (`None`: not known yet).
type Cell = (Vec<u8>, Option<u64>);

/// The state of a key group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct GroupState {
    keys: BTreeMap<Vec<u8>, Cell>,
    /// Highest version written so far (0: none known).
    rev: u64,
}

impl GroupState {
    /// A versioned write of `version`: it must be above every version written before.
    fn written(&mut self, version: u64) -> Option<()> {
        (version > self.rev).then(|| self.rev = version)
    }

    /// A read saw `version` for `key`, whose model version is `known`: equal, or fixed now.
    fn saw(&mut self, key: &[u8], version: u64) -> Option<()> {
        let cell = self.keys.get_mut(key)?;
        match cell.1 {
            Some(v) if v != version => None,
            _ => {
                cell.1 = Some(version);
                Some(())
            }
        }
    }
}

/// Applies `op` (with its `output`; `None`: an `Info` operation) to `state`; returns the
/// new state if a correct store could have answered `output`.
pub fn step_group(
    state: &GroupState,
    op: &Operation,
    output: Option<&Output>,
) -> Option<GroupState> {
    let mut next = state.clone();
    match (&op.input, output) {
        (Input::MultiPut(pairs), out) => {
            let version = match out {
                None => None,
                Some(Output::Version(v)) => {
                    next.written(*v)?;
                    Some(*v)
                }
                Some(_) => return None,
            };
            for (k, v) in pairs {
                next.keys.insert(k.clone(), (v.clone(), version));
            }
        }
        (Input::Scan(_), None) => {}
        (Input::Scan(prefix), Some(Output::Rows(rows))) => {
            let held: Vec<(&Vec<u8>, &Vec<u8>)> = state
                .keys
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(k, (v, _))| (k, v))
                .collect();
            if held.len() != rows.len() {
                return None;
            }
            for ((k, v), (rk, rv, version)) in held.into_iter().zip(rows) {
                if k != rk || v != rv {
                    return None;
                }
                next.saw(rk, *version)?;
            }
        }
        (Input::Get, Some(Output::Read(seen))) => match (state.keys.get(&op.key), seen) {
            (None, None) => {}
            (Some((v, _)), Some((sv, version))) if v == sv => next.saw(&op.key, *version)?,
            _ => return None,
        },
        (Input::Put(v), Some(Output::Version(version))) => {
            next.written(*version)?;
            next.keys
                .insert(op.key.clone(), (v.clone(), Some(*version)));
        }
        (input, out) => {
            // The register model on this key; a write leaves its version unknown.
            let value = state.keys.get(&op.key).map(|(v, _)| v.clone());
            let after = step(&value, input, out)?;
            if !matches!(input, Input::Get) {
                match after {
                    Some(v) => {
                        next.keys.insert(op.key.clone(), (v, None));
                    }
                    None => {
                        next.keys.remove(&op.key);
                    }
                }
            }
        }
    }
    Some(next)
}

#[cfg(test)]
mod tests {
    use super::super::{check, Input, Operation, Outcome, Output, DEFAULT_BUDGET};

    fn op(client: u64, key: &str, input: Input, call: u64, ret: u64, out: Output) -> Operation {
        Operation {
            client,
            key: key.into(),
            input,
            call,
            ret: Some(ret),
            outcome: Outcome::Ok(out),
        }
    }
    fn mset(c: u64, v: &str, call: u64, ret: u64, version: u64) -> Operation {
        let pairs = vec![(b"m0".to_vec(), v.into()), (b"m1".to_vec(), v.into())];
        op(
            c,
            "m0",
            Input::MultiPut(pairs),
            call,
            ret,
            Output::Version(version),
        )
    }
    fn scan(c: u64, rows: &[(&str, &str, u64)], call: u64, ret: u64) -> Operation {
        let rows = rows
            .iter()
            .map(|(k, v, n)| (k.as_bytes().to_vec(), v.as_bytes().to_vec(), *n))
            .collect();
        op(
            c,
            "m",
            Input::Scan(b"m".to_vec()),
            call,
            ret,
            Output::Rows(rows),
        )
    }
    fn put(c: u64, k: &str, v: &str, call: u64, ret: u64, version: u64) -> Operation {
        op(
            c,
            k,
            Input::Put(v.into()),
            call,
            ret,
            Output::Version(version),
        )
    }
    fn ok(h: &[Operation]) -> bool {
        check(h, DEFAULT_BUDGET).is_linearizable()
    }

    #[test]
    fn a_scan_sees_a_multi_put_whole_or_not_at_all() {
        let base = [mset(1, "a", 1, 2, 5), mset(1, "b", 3, 10, 7)];
        let mut h = base.to_vec();
        h.push(scan(2, &[("m0", "a", 5), ("m1", "a", 5)], 4, 6));
        assert!(ok(&h), "concurrent with the second: before it");
        let mut h = base.to_vec();
        h.push(scan(2, &[("m0", "b", 7), ("m1", "b", 7)], 4, 6));
        assert!(ok(&h), "concurrent with the second: after it");
        let mut h = base.to_vec();
        h.push(scan(2, &[("m0", "b", 7), ("m1", "a", 5)], 4, 6));
        let report = check(&h, DEFAULT_BUDGET);
        assert_eq!(
            report.violations.keys().collect::<Vec<_>>(),
            vec!["m,m0,m1"],
            "half a multi-put"
        );
    }

    #[test]
    fn versions_are_checked() {
        // A put's version must grow along the order (within a group: only multi-key
        // operations couple keys), and reads must see it.
        let h = [put(1, "m0", "a", 1, 2, 5), put(1, "m0", "b", 3, 4, 4)];
        assert!(!ok(&h), "a later write with a lower version");
        let h = [put(1, "m0", "a", 1, 2, 5), scan(2, &[("m0", "a", 6)], 3, 4)];
        assert!(!ok(&h), "a scan reports another version than the write's");
        let h = [
            put(1, "m0", "a", 1, 2, 5),
            op(
                2,
                "m0",
                Input::Get,
                3,
                4,
                Output::Read(Some((b"a".to_vec(), 5))),
            ),
            scan(2, &[("m0", "a", 5)], 5, 6),
        ];
        assert!(ok(&h));
        // A write of unknown outcome leaves the version to be learnt, once.
        let lost = Operation {
            client: 3,
            key: b"m1".to_vec(),
            input: Input::Put(b"z".to_vec()),
            call: 7,
            ret: None,
            outcome: Outcome::Info,
        };
        let mut h = h.to_vec();
        h.push(lost);
        h.push(scan(2, &[("m0", "a", 5), ("m1", "z", 9)], 8, 9));
        assert!(ok(&h));
        h.push(scan(2, &[("m0", "a", 5), ("m1", "z", 10)], 10, 11));
        assert!(!ok(&h), "the same write seen with two versions");
    }
}
