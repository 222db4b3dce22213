//! Tests of the simulated watchers and the watch checker (`watch`): seeds whose watchers
//! follow the history through faults and node moves, an injected gap in the history
//! caught, and each part of the checker fed a known-bad input.
//!
//! # Invariants
//!
//! - The seeds run here use the campaign's configurations (`tests::config_for`), so what
//!   passes here is what `many_seeds` runs.

use super::tests::{caught_in, config_for, fail};
use super::watch::{self, Watcher};
use super::watch_check;
use super::*;
use crate::check::{Input, Operation, Outcome, Output};
use crate::command::ScanRange;
use crate::kv::{Change, ChangeKind, WatchFilter};

/// The seeds of `watchers_follow_the_history_through_faults`.
const SEEDS: std::ops::Range<u64> = 0..16;

/// `config_for(seed)` with the bank as `many_seeds` runs it: SQL on every third seed,
/// on key-value transactions (whose keys the watchers see too) on another third.
fn campaign_config(seed: u64) -> SimConfig {
    let mut cfg = config_for(seed);
    match seed % 3 {
        0 => {}
        1 => cfg.bank_ledger = bank::Ledger::Kv,
        _ => cfg.bank_clients = 0,
    }
    cfg
}

/// Through crashes, pauses, partitions, membership changes and state transfers, both
/// watchers receive exactly the history's changes (the checker runs in every seed's
/// final checks), moving between nodes as theirs go down.
#[test]
fn watchers_follow_the_history_through_faults() {
    let mut totals = WatchStats::default();
    for seed in SEEDS {
        let s = run(seed, &campaign_config(seed)).unwrap_or_else(|f| fail(f));
        eprintln!("seed {seed}: watchers: {}", s.watch);
        totals.add(&s.watch);
    }
    eprintln!("watchers over seeds {SEEDS:?}: {totals}");
    assert!(totals.switches > 0, "no watcher ever moved: {totals}");
    assert!(
        totals.changes >= 500,
        "the watchers received few changes: {totals}"
    );
    // The watcher of every key receives the whole reference history.
    assert!(totals.changes >= totals.reference, "{totals}");
}

/// A history that leaves out every revision divisible by 7 is caught by the watch
/// checker, on the first seed: the reference history lacks revision 7.
#[test]
fn a_gap_in_the_watch_history_is_caught() {
    let f = caught_in(Bug::HistoryGap, 0..1, config_for);
    assert_eq!(f.kind, Kind::Watch, "{f}");
    assert_eq!(
        f.reason,
        r#"watch: node 1's history lacks revision 7 (it goes from 6 to 8; its revision is 199)"#
    );
}

fn put(revision: u64, key: &str, value: &str) -> Change {
    Change {
        revision,
        kind: ChangeKind::Put,
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
    }
}

fn delete(revision: u64, key: &str) -> Change {
    Change {
        revision,
        kind: ChangeKind::Delete,
        key: key.as_bytes().to_vec(),
        value: Vec::new(),
    }
}

/// A reference: k0 put at 1, k1 and s0 at 2 (one revision), k0 deleted at 3, k1 at 4.
fn reference() -> Vec<Change> {
    vec![
        put(1, "k0", "a"),
        put(2, "k1", "b"),
        put(2, "s0", "c"),
        delete(3, "k0"),
        put(4, "k1", "d"),
    ]
}

fn row(k: &str, v: &str, version: u64) -> (Vec<u8>, Vec<u8>, u64) {
    (k.as_bytes().to_vec(), v.as_bytes().to_vec(), version)
}

#[test]
fn the_reference_must_have_every_revision_and_replay_to_the_data() {
    let data = vec![row("k1", "d", 4), row("s0", "c", 2)];
    watch_check::reference_valid("node 1", &reference(), 4, &data).unwrap();
    // A revision left out.
    let mut gap = reference();
    gap.remove(3);
    let err = watch_check::reference_valid("node 1", &gap, 4, &data).unwrap_err();
    assert_eq!(err.kind, Kind::Watch);
    assert_eq!(
        err.message,
        "watch: node 1's history lacks revision 3 (it goes from 2 to 4; its revision is 4)"
    );
    // The last revisions left out.
    let err = watch_check::reference_valid("node 1", &reference()[..4], 4, &data).unwrap_err();
    assert_eq!(
        err.message,
        "watch: node 1's history ends at revision 3, its store is at revision 4"
    );
    // A key twice in a revision.
    let mut twice = reference();
    twice.insert(2, put(2, "k1", "b"));
    let err = watch_check::reference_valid("node 1", &twice, 4, &data).unwrap_err();
    assert!(err.message.contains("out of order or twice"), "{err}");
    // Data the history does not replay to: a version, and a key.
    let stale = vec![row("k1", "d", 3), row("s0", "c", 2)];
    let err = watch_check::reference_valid("node 1", &reference(), 4, &stale).unwrap_err();
    assert_eq!(
        err.message,
        "watch: replaying node 1's history gives \"k1\"=\"d\" (version 4) where its data has \
         \"k1\"=\"d\" (version 3)"
    );
    let more = vec![row("k1", "d", 4), row("s0", "c", 2), row("x", "y", 1)];
    let err = watch_check::reference_valid("node 1", &reference(), 4, &more).unwrap_err();
    assert!(err
        .message
        .ends_with("gives nothing more where its data has \"x\"=\"y\" (version 1)"));
}

fn op(input: Input, key: &str, out: Output) -> Operation {
    Operation {
        client: 7,
        key: key.as_bytes().to_vec(),
        input,
        call: 1,
        ret: Some(2),
        outcome: Outcome::Ok(out),
    }
}

#[test]
fn every_acknowledged_write_must_be_in_the_reference() {
    let v = |s: &str| s.as_bytes().to_vec();
    let fine = vec![
        op(Input::Put(v("a")), "k0", Output::Version(1)),
        op(Input::Put(v("d")), "k1", Output::Written),
        op(Input::Delete, "k0", Output::Deleted(true)),
        op(Input::Delete, "k9", Output::Deleted(false)),
        op(
            Input::Cas {
                expect: v("x"),
                new: v("zz"),
            },
            "k1",
            Output::Swapped(false),
        ),
        op(Input::Append(v("c")), "s0", Output::Appended(1)),
        // Not acknowledged: nothing to find.
        Operation {
            outcome: Outcome::Info,
            ..op(Input::Put(v("lost")), "k0", Output::Written)
        },
    ];
    watch_check::acknowledged_in("node 1", &reference(), &fine).unwrap();
    let bad = |o: Operation| {
        let err = watch_check::acknowledged_in("node 1", &reference(), &[o]).unwrap_err();
        assert_eq!(err.kind, Kind::Watch);
        err.message
    };
    assert_eq!(
        bad(op(Input::Put(v("a")), "k0", Output::Version(2))),
        "watch: client 7's put \"a\" on \"k0\" (call event 1, return Some(2)) -> \
         Ok(Version(2)) was acknowledged, but node 1's history has no put \"k0\"=\"a\" at \
         revision 2 (it has that put at revisions [1])"
    );
    assert!(bad(op(Input::Put(v("q")), "k0", Output::Written)).contains("no put \"k0\"=\"q\""));
    let multi = Input::MultiPut(vec![(v("k1"), v("b")), (v("k2"), v("b"))]);
    assert!(bad(op(multi, "k1", Output::Version(2))).contains("no put \"k2\"=\"b\" at revision 2"));
    let cas = Input::Cas {
        expect: v("b"),
        new: v("e"),
    };
    assert!(bad(op(cas, "k1", Output::Swapped(true))).contains("no put \"k1\"=\"e\""));
    assert!(bad(op(Input::Append(v("c")), "s0", Output::Appended(2)))
        .contains("value of 2 bytes ending with \"c\""));
    let two = [
        op(Input::Delete, "k0", Output::Deleted(true)),
        op(Input::Delete, "k0", Output::Deleted(true)),
    ];
    let err = watch_check::acknowledged_in("node 1", &reference(), &two).unwrap_err();
    assert!(
        err.message.contains("no 2 deletes of \"k0\" (1 of them"),
        "{err}"
    );
}

fn watcher(filter: WatchFilter, next: u64, stream: Vec<Change>) -> Watcher {
    let mut w = Watcher::new("watcher 9".into(), filter, 0);
    w.next = next;
    w.stream = stream.into_iter().map(|c| (1, c)).collect();
    w
}

#[test]
fn a_stream_must_be_exactly_the_reference_over_what_it_covered() {
    let all = || WatchFilter::Range(ScanRange::Prefix(Vec::new()));
    let k = || WatchFilter::Range(ScanRange::Prefix(b"k".to_vec()));
    let r = reference();
    let check = |w: &Watcher| watch::watcher_matches(w, "node 1", &r, 4);
    check(&watcher(all(), 5, reference())).unwrap();
    // Covered up to revision 2 only.
    check(&watcher(all(), 3, reference()[..3].to_vec())).unwrap();
    // Filtered: s0 is not a register key.
    let ks: Vec<Change> = (reference().into_iter())
        .filter(|c| c.key.starts_with(b"k"))
        .collect();
    check(&watcher(k(), 5, ks.clone())).unwrap();
    // Missing at the end.
    let err = check(&watcher(k(), 5, ks[..3].to_vec())).unwrap_err();
    assert_eq!(err.kind, Kind::Watch);
    assert_eq!(
        err.message,
        "watch: watcher 9 missed put \"k1\"=\"d\" at revision 4 (its stream ends after 3 \
         changes, though it resumes at revision 5)"
    );
    // Missing in the middle.
    let mut gap = reference();
    gap.remove(1);
    let err = check(&watcher(all(), 5, gap)).unwrap_err();
    assert_eq!(
        err.message,
        "watch: watcher 9 received put \"s0\"=\"c\" at revision 2 (from node 2) as its change \
         #1, early: changes before it are missing; node 1's history has put \"k1\"=\"b\" at \
         revision 2 there"
    );
    // Twice (a resume from a revision already seen).
    let mut twice = reference();
    twice.insert(3, put(2, "s0", "c"));
    let err = check(&watcher(all(), 5, twice)).unwrap_err();
    assert!(
        err.message.contains("as its change #3, a second time"),
        "{err}"
    );
    // Made up.
    let mut wrong = reference();
    wrong[4] = put(4, "k1", "x");
    let err = check(&watcher(all(), 5, wrong)).unwrap_err();
    assert!(
        err.message.contains("which is not in the reference"),
        "{err}"
    );
    // Beyond what it covered.
    let err = check(&watcher(all(), 3, reference())).unwrap_err();
    assert!(err
        .message
        .contains("after every change node 1's history has for it below revision 3"));
    // Resuming beyond the revision.
    let err = check(&watcher(all(), 9, reference())).unwrap_err();
    assert!(
        err.message.contains("handed revision 9 to resume from"),
        "{err}"
    );
}
