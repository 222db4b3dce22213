//! The watch checker's parts, as plain functions over observed data (a history read from
//! a node, the client history, a watcher's stream), shared by the simulation's watchers
//! (`sim::watch`) and the nemesis' (`nemesis::watch`), so that each can be fed a
//! known-bad input in the tests and shown to fail:
//!
//! - [`reference_valid`]: a node's whole watch history (the reference) holds every
//!   revision from the first to the store's revision, each one's changes in key order with
//!   a key once, and replaying it (a put sets the value and makes the revision the key's
//!   version, a delete or an expiry removes the key) gives exactly the store's data;
//! - [`acknowledged_in`]: every key-value write acknowledged `Ok` in a client history is
//!   in the reference: a put or multi-put that reported its version as a put of that key
//!   and value at that revision, other puts and swapped compare-and-swaps as a put of that
//!   value, an append as a put of a value of the reported length ending with the appended
//!   element, and as many deletes of a key as deletes acknowledged as deleting;
//! - [`stream_matches`]: a watcher's stream is exactly what the reference says it should
//!   have received (its filter's changes below the revision it resumes from): in order,
//!   none missing, none twice, none made up.
//!
//! Each fails with a [`Kind::Watch`] violation naming the watcher or the operation, the
//! revision and what was expected.
//!
//! # Invariants
//!
//! - A checker never passes on evidence it did not examine: every change of the reference
//!   and of a stream is compared, and an absent expectation (a stream shorter than the
//!   reference) is a violation, not a pass.
//! - The functions only read their inputs: the same inputs give the same verdict and the
//!   same message (the bug-injection tests pin messages).

use super::checks::{Kind, Violation};
use crate::check::{Input, Operation, Outcome, Output};
use crate::kv::{Change, ChangeKind};
use std::collections::{BTreeMap, HashMap};

pub fn show_bytes(b: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(b))
}

/// `c` for a report: `put "k0"="1003.4" at revision 12`.
pub fn show(c: &Change) -> String {
    match c.kind {
        ChangeKind::Put => format!(
            "put {}={} at revision {}",
            show_bytes(&c.key),
            show_bytes(&c.value),
            c.revision
        ),
        kind => format!(
            "{} {} at revision {}",
            kind.as_str(),
            show_bytes(&c.key),
            c.revision
        ),
    }
}

fn watch_violation(message: String) -> Violation {
    Violation::new(Kind::Watch, format!("watch: {message}"))
}

/// (a): `reference` (the history of `name`, whose store is at `revision` with `data`:
/// key, value, version in key order) holds every revision from 1 to `revision` in
/// order, each one's keys in order and once, and replays to `data`.
pub fn reference_valid(
    name: &str,
    reference: &[Change],
    revision: u64,
    data: &[(Vec<u8>, Vec<u8>, u64)],
) -> Result<(), Violation> {
    let mut prev: Option<&Change> = None;
    let mut state: BTreeMap<&[u8], (&[u8], u64)> = BTreeMap::new();
    for c in reference {
        let last = prev.map_or(0, |p| p.revision);
        if c.revision == last {
            let p = prev.expect("revision 0 holds nothing");
            if c.key <= p.key {
                return Err(watch_violation(format!(
                    "{name}'s history has {} after {}: a revision's keys out of order or twice",
                    show(c),
                    show(p)
                )));
            }
        } else if c.revision < last {
            return Err(watch_violation(format!(
                "{name}'s history has {} after revision {last}: out of order",
                show(c)
            )));
        } else if c.revision > last + 1 {
            return Err(watch_violation(format!(
                "{name}'s history lacks revision {} (it goes from {} to {}; its revision is \
                 {revision})",
                last + 1,
                last,
                c.revision
            )));
        }
        match c.kind {
            ChangeKind::Put => {
                state.insert(&c.key, (&c.value, c.revision));
            }
            ChangeKind::Delete | ChangeKind::Expire => {
                state.remove(c.key.as_slice());
            }
        }
        prev = Some(c);
    }
    let last = prev.map_or(0, |p| p.revision);
    if last != revision {
        return Err(watch_violation(format!(
            "{name}'s history ends at revision {last}, its store is at revision {revision}"
        )));
    }
    let mut replayed = state.into_iter();
    let mut stored = data.iter();
    loop {
        match (replayed.next(), stored.next()) {
            (None, None) => return Ok(()),
            (Some((k, (v, ver))), Some((sk, sv, sver)))
                if k == sk.as_slice() && v == sv.as_slice() && ver == *sver => {}
            (r, s) => {
                let r = r.map_or("nothing more".into(), |(k, (v, ver))| {
                    format!("{}={} (version {ver})", show_bytes(k), show_bytes(v))
                });
                let s = s.map_or("nothing more".into(), |(k, v, ver)| {
                    format!("{}={} (version {ver})", show_bytes(k), show_bytes(v))
                });
                return Err(watch_violation(format!(
                    "replaying {name}'s history gives {r} where its data has {s}"
                )));
            }
        }
    }
}

/// `op` for a report.
fn show_op(op: &Operation) -> String {
    let input = match &op.input {
        Input::Put(v) => format!("put {}", show_bytes(v)),
        Input::Append(v) => format!("append {}", show_bytes(v)),
        Input::Cas { expect, new } => {
            format!("cas {} -> {}", show_bytes(expect), show_bytes(new))
        }
        Input::Delete => "delete".into(),
        Input::MultiPut(pairs) => {
            let pairs: Vec<String> = (pairs.iter())
                .map(|(k, v)| format!("{}={}", show_bytes(k), show_bytes(v)))
                .collect();
            format!("multi-put {}", pairs.join(" "))
        }
        other => format!("{other:?}"),
    };
    format!(
        "client {}'s {input} on {} (call event {}, return {:?}) -> {:?}",
        op.client,
        show_bytes(&op.key),
        op.call,
        op.ret,
        op.outcome
    )
}

/// (b): every write `history` acknowledged `Ok` is in `reference` (see the module doc).
pub fn acknowledged_in(
    name: &str,
    reference: &[Change],
    history: &[Operation],
) -> Result<(), Violation> {
    let mut puts: HashMap<(&[u8], &[u8]), Vec<u64>> = HashMap::new();
    let mut values: HashMap<&[u8], Vec<&[u8]>> = HashMap::new();
    let mut deletes: HashMap<&[u8], u64> = HashMap::new();
    for c in reference {
        match c.kind {
            ChangeKind::Put => {
                puts.entry((&c.key, &c.value)).or_default().push(c.revision);
                values.entry(&c.key).or_default().push(&c.value);
            }
            ChangeKind::Delete => *deletes.entry(&c.key).or_default() += 1,
            ChangeKind::Expire => {}
        }
    }
    let missing = |op: &Operation, what: String| {
        watch_violation(format!(
            "{} was acknowledged, but {name}'s history has no {what}",
            show_op(op)
        ))
    };
    let put_at = |op: &Operation, key: &[u8], value: &[u8], version: Option<u64>| {
        let at = puts.get(&(key, value)).map_or(&[][..], Vec::as_slice);
        let found = match version {
            Some(v) => at.contains(&v),
            None => !at.is_empty(),
        };
        if found {
            return Ok(());
        }
        let when = version.map_or(String::new(), |v| format!(" at revision {v}"));
        Err(missing(
            op,
            format!(
                "put {}={}{when} (it has that put at revisions {at:?})",
                show_bytes(key),
                show_bytes(value)
            ),
        ))
    };
    let mut acked_deletes: BTreeMap<&[u8], (u64, &Operation)> = BTreeMap::new();
    for op in history {
        let Outcome::Ok(out) = &op.outcome else {
            continue;
        };
        let version = match out {
            Output::Version(v) => Some(*v),
            _ => None,
        };
        match (&op.input, out) {
            (Input::Put(v), _) => put_at(op, &op.key, v, version)?,
            (Input::MultiPut(pairs), _) => {
                for (k, v) in pairs {
                    put_at(op, k, v, version)?;
                }
            }
            (Input::Cas { new, .. }, Output::Swapped(true)) => put_at(op, &op.key, new, None)?,
            (Input::Append(suffix), Output::Appended(len)) => {
                let found = (values.get(op.key.as_slice()).into_iter().flatten())
                    .any(|v| v.len() as u64 == *len && v.ends_with(suffix));
                if !found {
                    return Err(missing(
                        op,
                        format!(
                            "put of {} with a value of {len} bytes ending with {}",
                            show_bytes(&op.key),
                            show_bytes(suffix)
                        ),
                    ));
                }
            }
            (Input::Delete, Output::Deleted(true)) => {
                acked_deletes.entry(&op.key).or_insert((0, op)).0 += 1;
            }
            _ => {}
        }
    }
    for (key, (n, op)) in acked_deletes {
        let held = deletes.get(key).copied().unwrap_or(0);
        if held < n {
            return Err(missing(
                op,
                format!(
                    "{n} deletes of {} ({held} of them are there; this is the first \
                     acknowledged)",
                    show_bytes(key)
                ),
            ));
        }
    }
    Ok(())
}

/// (c): `stream` (what `who` received; `source(k)` says where its change `k` came from)
/// is exactly `expected` (the reference's changes that `who` should have received: those
/// its filter matches below the revision it resumes from, `next`, in the history of
/// `name`).
pub fn stream_matches(
    who: &str,
    stream: &[&Change],
    source: &dyn Fn(usize) -> String,
    next: u64,
    name: &str,
    expected: &[&Change],
) -> Result<(), Violation> {
    for (k, got) in stream.iter().enumerate() {
        let from = source(k);
        let Some(want) = expected.get(k) else {
            let twice = expected.contains(got);
            return Err(watch_violation(format!(
                "{who} received {} ({from}) as its change #{k}, after every change {name}'s \
                 history has for it below revision {next}{}",
                show(got),
                if twice { " (a second time)" } else { "" }
            )));
        };
        if want == got {
            continue;
        }
        let what = if expected[..k].contains(got) {
            "a second time"
        } else if expected[k..].contains(got) {
            "early: changes before it are missing"
        } else {
            "which is not in the reference"
        };
        return Err(watch_violation(format!(
            "{who} received {} ({from}) as its change #{k}, {what}; {name}'s history has {} \
             there",
            show(got),
            show(want)
        )));
    }
    if let Some(want) = expected.get(stream.len()) {
        return Err(watch_violation(format!(
            "{who} missed {} (its stream ends after {} changes, though it resumes at revision \
             {next})",
            show(want),
            stream.len(),
        )));
    }
    Ok(())
}
