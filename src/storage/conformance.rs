//! Conformance suite for `omnipaxos::storage::Storage<LogEntry>`.
//!
//! Every check is written once as a generic `check_*` function and instantiated for both
//! implementations ([`MemStorage`] and [`RocksStorage`]) by the `conformance!` macro. The
//! checks cover appends and reads with global indexes, reads of intervals that are not
//! fully present, `append_on_prefix`, trimming with the compacted index, the Paxos
//! metadata round-trips and `write_atomically` ordering. RocksStorage alone is also checked
//! to keep everything across closing and reopening its database, and a property test runs
//! random operation sequences on both implementations side by side.

use super::db::open_db;
use super::memory::MemStorage;
use super::rocks::RocksStorage;
use crate::command::LogEntry;
use omnipaxos::ballot_leader_election::Ballot;
use omnipaxos::storage::{NoSnapshot, StopSign, Storage, StorageOp};
use omnipaxos::ClusterConfig;
use proptest::prelude::*;
use std::ops::Range;
use std::path::Path;

fn entry(i: u64) -> LogEntry {
    LogEntry {
        proposer: 1,
        batch_id: i,
        commands: vec![],
    }
}

fn entries(r: Range<u64>) -> Vec<LogEntry> {
    r.map(entry).collect()
}

fn ballot(n: u32, pid: u64) -> Ballot {
    Ballot {
        config_id: 1,
        n,
        priority: 0,
        pid,
    }
}

fn stopsign() -> StopSign {
    StopSign::with(
        ClusterConfig {
            configuration_id: 2,
            nodes: vec![1, 2, 3, 4],
            flexible_quorum: None,
        },
        Some(vec![7, 8, 9]),
    )
}

fn open_rocks(path: &Path) -> RocksStorage {
    RocksStorage::open(open_db(path).unwrap()).unwrap()
}

/// Runs `f` on a RocksStorage in a fresh temporary directory.
fn with_rocks(f: impl FnOnce(&mut RocksStorage)) {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open_rocks(&dir.path().join("db"));
    f(&mut s);
}

/// A fresh storage is empty with default metadata.
fn check_empty<S: Storage<LogEntry>>(s: &mut S) {
    assert_eq!(s.get_log_len().unwrap(), 0);
    assert_eq!(s.get_entries(0, 1).unwrap(), vec![]);
    assert_eq!(s.get_suffix(0).unwrap(), vec![]);
    assert_eq!(s.get_compacted_idx().unwrap(), 0);
    assert_eq!(s.get_decided_idx().unwrap(), 0);
    assert_eq!(s.get_promise().unwrap(), None);
    assert_eq!(s.get_accepted_round().unwrap(), None);
    assert_eq!(s.get_stopsign().unwrap(), None);
    assert_eq!(s.get_snapshot().unwrap(), None);
}

/// Appended entries are read back at their global indexes.
fn check_append_and_read<S: Storage<LogEntry>>(s: &mut S) {
    s.append_entry(entry(0)).unwrap();
    assert_eq!(s.get_log_len().unwrap(), 1);
    s.append_entries(entries(1..5)).unwrap();
    s.append_entries(vec![]).unwrap();
    assert_eq!(s.get_log_len().unwrap(), 5);
    assert_eq!(s.get_entries(0, 5).unwrap(), entries(0..5));
    assert_eq!(s.get_entries(1, 3).unwrap(), entries(1..3));
    assert_eq!(s.get_entries(4, 5).unwrap(), entries(4..5));
    assert_eq!(s.get_suffix(0).unwrap(), entries(0..5));
    assert_eq!(s.get_suffix(2).unwrap(), entries(2..5));
    assert_eq!(s.get_suffix(4).unwrap(), entries(4..5));
    s.append_entry(entry(5)).unwrap();
    assert_eq!(s.get_suffix(3).unwrap(), entries(3..6));
    assert_eq!(s.get_log_len().unwrap(), 6);
}

/// Intervals that are not fully present read as empty, never as a partial answer.
fn check_absent_intervals_are_empty<S: Storage<LogEntry>>(s: &mut S) {
    s.append_entries(entries(0..5)).unwrap();
    assert_eq!(s.get_entries(3, 6).unwrap(), vec![], "past the end");
    assert_eq!(s.get_entries(5, 6).unwrap(), vec![], "starts at the end");
    assert_eq!(s.get_entries(7, 9).unwrap(), vec![], "beyond the end");
    assert_eq!(s.get_entries(2, 2).unwrap(), vec![], "empty interval");
    assert_eq!(s.get_suffix(5).unwrap(), vec![]);
    assert_eq!(s.get_suffix(9).unwrap(), vec![]);

    s.trim(2).unwrap();
    s.set_compacted_idx(2).unwrap();
    assert_eq!(
        s.get_entries(1, 3).unwrap(),
        vec![],
        "starts before the first"
    );
    assert_eq!(
        s.get_entries(0, 5).unwrap(),
        vec![],
        "covers trimmed entries"
    );
    assert_eq!(s.get_entries(0, 2).unwrap(), vec![], "only trimmed entries");
    // OmniPaxos sends a suffix to sync a peer from that index on; a shorter one would
    // silently truncate the peer's log, so a suffix from a trimmed index is an error.
    assert!(s.get_suffix(1).is_err(), "suffix from a trimmed index");
    assert_eq!(s.get_entries(2, 5).unwrap(), entries(2..5));
    assert_eq!(
        s.get_entries(2, 6).unwrap(),
        vec![],
        "past the end after trim"
    );
}

/// `append_on_prefix` drops everything from `from` on and appends there.
fn check_append_on_prefix<S: Storage<LogEntry>>(s: &mut S) {
    s.append_entries(entries(0..6)).unwrap();
    s.append_on_prefix(3, vec![entry(30), entry(31)]).unwrap();
    assert_eq!(s.get_log_len().unwrap(), 5);
    assert_eq!(
        s.get_suffix(0).unwrap(),
        vec![entry(0), entry(1), entry(2), entry(30), entry(31)]
    );
    assert_eq!(s.get_entries(3, 5).unwrap(), vec![entry(30), entry(31)]);
    assert_eq!(s.get_entries(4, 6).unwrap(), vec![], "old entry 5 is gone");

    // At the end: a plain append.
    s.append_on_prefix(5, vec![entry(50)]).unwrap();
    assert_eq!(s.get_log_len().unwrap(), 6);
    assert_eq!(s.get_entries(5, 6).unwrap(), vec![entry(50)]);

    // With nothing to append: a truncation.
    s.append_on_prefix(2, vec![]).unwrap();
    assert_eq!(s.get_log_len().unwrap(), 2);
    assert_eq!(s.get_suffix(0).unwrap(), entries(0..2));
    assert_eq!(s.get_entries(0, 3).unwrap(), vec![]);
    assert_eq!(s.get_suffix(2).unwrap(), vec![]);

    // The next append goes right after the truncation point.
    s.append_entry(entry(20)).unwrap();
    assert_eq!(s.get_entries(2, 3).unwrap(), vec![entry(20)]);
    assert_eq!(s.get_log_len().unwrap(), 3);

    // Replacing a longer suffix with a shorter one leaves no stale tail behind.
    s.append_entries(entries(21..25)).unwrap();
    s.append_on_prefix(1, vec![entry(10)]).unwrap();
    assert_eq!(s.get_suffix(0).unwrap(), vec![entry(0), entry(10)]);
    s.append_entry(entry(11)).unwrap();
    assert_eq!(
        s.get_suffix(0).unwrap(),
        vec![entry(0), entry(10), entry(11)]
    );
    assert_eq!(s.get_entries(2, 4).unwrap(), vec![], "no stale entry at 3");

    // After trimming, replacing from the first held index replaces everything.
    s.trim(1).unwrap();
    s.set_compacted_idx(1).unwrap();
    s.append_on_prefix(1, entries(100..103)).unwrap();
    assert_eq!(s.get_log_len().unwrap(), 3);
    assert_eq!(s.get_suffix(1).unwrap(), entries(100..103));
    assert_eq!(s.get_entries(0, 2).unwrap(), vec![]);
}

/// `append_on_prefix` from an index before the first held one (OmniPaxos does not ask
/// this, but the trait allows it) succeeds and replaces the whole log; it must neither
/// fail nor leave half of its effect behind.
fn check_append_on_prefix_before_first<S: Storage<LogEntry>>(s: &mut S) {
    s.append_entries(entries(0..6)).unwrap();
    s.trim(4).unwrap();
    s.set_compacted_idx(4).unwrap();
    s.append_on_prefix(2, entries(20..22)).unwrap();
    assert_eq!(s.get_entries(2, 4).unwrap(), entries(20..22));
    assert_eq!(s.get_suffix(2).unwrap(), entries(20..22));
    assert_eq!(
        s.get_entries(4, 5).unwrap(),
        vec![],
        "old entries 4 and 5 are gone"
    );
    s.append_entry(entry(22)).unwrap();
    assert_eq!(s.get_entries(2, 5).unwrap(), entries(20..23));
}

/// Trimming keeps global indexes; the log length counts from the compacted index.
fn check_trim_and_compaction<S: Storage<LogEntry>>(s: &mut S) {
    s.append_entries(entries(0..10)).unwrap();
    s.trim(4).unwrap();
    s.set_compacted_idx(4).unwrap();
    assert_eq!(s.get_compacted_idx().unwrap(), 4);
    assert_eq!(s.get_log_len().unwrap(), 6);
    assert_eq!(s.get_entries(4, 10).unwrap(), entries(4..10));
    assert_eq!(s.get_entries(6, 8).unwrap(), entries(6..8));
    assert_eq!(s.get_suffix(4).unwrap(), entries(4..10));
    assert_eq!(s.get_suffix(7).unwrap(), entries(7..10));
    for i in 0..4 {
        assert_eq!(
            s.get_entries(i, i + 1).unwrap(),
            vec![],
            "entry {i} was trimmed"
        );
    }

    // Appends continue at the global end.
    s.append_entry(entry(10)).unwrap();
    assert_eq!(s.get_entries(10, 11).unwrap(), entries(10..11));
    assert_eq!(s.get_log_len().unwrap(), 7);

    // Trimming below the first held index changes nothing.
    s.trim(2).unwrap();
    assert_eq!(s.get_suffix(4).unwrap(), entries(4..11));

    // Trim and compaction in one atomic write, as OmniPaxos does it.
    s.write_atomically(vec![StorageOp::Trim(8), StorageOp::SetCompactedIdx(8)])
        .unwrap();
    assert_eq!(s.get_compacted_idx().unwrap(), 8);
    assert_eq!(s.get_log_len().unwrap(), 3);
    assert_eq!(s.get_suffix(8).unwrap(), entries(8..11));
    assert_eq!(s.get_entries(7, 9).unwrap(), vec![]);

    // Trimming everything leaves an empty log that still appends at the global end.
    s.trim(11).unwrap();
    s.set_compacted_idx(11).unwrap();
    assert_eq!(s.get_log_len().unwrap(), 0);
    assert_eq!(s.get_suffix(11).unwrap(), vec![]);
    assert_eq!(s.get_entries(10, 11).unwrap(), vec![]);
    s.append_entry(entry(11)).unwrap();
    assert_eq!(s.get_entries(11, 12).unwrap(), entries(11..12));
    assert_eq!(s.get_log_len().unwrap(), 1);
}

/// Promise, accepted round, decided index, stop sign and snapshot round-trip and leave
/// the log alone.
fn check_metadata<S: Storage<LogEntry>>(s: &mut S) {
    s.append_entries(entries(0..3)).unwrap();

    s.set_promise(ballot(3, 2)).unwrap();
    assert_eq!(s.get_promise().unwrap(), Some(ballot(3, 2)));
    s.set_promise(ballot(4, 1)).unwrap();
    assert_eq!(s.get_promise().unwrap(), Some(ballot(4, 1)));

    s.set_accepted_round(ballot(3, 2)).unwrap();
    assert_eq!(s.get_accepted_round().unwrap(), Some(ballot(3, 2)));
    assert_eq!(
        s.get_promise().unwrap(),
        Some(ballot(4, 1)),
        "promise unchanged"
    );

    s.set_decided_idx(2).unwrap();
    assert_eq!(s.get_decided_idx().unwrap(), 2);
    s.set_decided_idx(3).unwrap();
    assert_eq!(s.get_decided_idx().unwrap(), 3);

    s.set_stopsign(Some(stopsign())).unwrap();
    assert_eq!(s.get_stopsign().unwrap(), Some(stopsign()));
    s.set_stopsign(None).unwrap();
    assert_eq!(s.get_stopsign().unwrap(), None);
    s.set_stopsign(Some(stopsign())).unwrap();

    s.set_snapshot(Some(NoSnapshot)).unwrap();
    assert_eq!(s.get_snapshot().unwrap(), Some(NoSnapshot));
    s.set_snapshot(None).unwrap();
    assert_eq!(s.get_snapshot().unwrap(), None);

    s.set_compacted_idx(1).unwrap();
    assert_eq!(s.get_compacted_idx().unwrap(), 1);

    // None of it touched the entries.
    assert_eq!(s.get_entries(0, 3).unwrap(), entries(0..3));
    assert_eq!(s.get_stopsign().unwrap(), Some(stopsign()));
}

/// `write_atomically` applies its operations in order, in one call.
fn check_write_atomically<S: Storage<LogEntry>>(s: &mut S) {
    s.write_atomically(vec![
        StorageOp::AppendEntries(entries(0..5)),
        StorageOp::AppendOnPrefix(3, vec![entry(33)]),
        StorageOp::AppendEntry(entry(34)),
        StorageOp::SetPromise(ballot(2, 3)),
        StorageOp::SetAcceptedRound(ballot(2, 3)),
        StorageOp::SetDecidedIndex(5),
        StorageOp::SetDecidedIndex(2),
        StorageOp::Trim(1),
        StorageOp::SetCompactedIdx(1),
        StorageOp::SetStopsign(Some(stopsign())),
        StorageOp::SetSnapshot(Some(NoSnapshot)),
    ])
    .unwrap();
    assert_eq!(s.get_log_len().unwrap(), 4);
    assert_eq!(
        s.get_suffix(1).unwrap(),
        vec![entry(1), entry(2), entry(33), entry(34)]
    );
    assert_eq!(s.get_entries(3, 5).unwrap(), vec![entry(33), entry(34)]);
    assert_eq!(s.get_entries(0, 1).unwrap(), vec![]);
    assert_eq!(s.get_promise().unwrap(), Some(ballot(2, 3)));
    assert_eq!(s.get_accepted_round().unwrap(), Some(ballot(2, 3)));
    assert_eq!(
        s.get_decided_idx().unwrap(),
        2,
        "the later SetDecidedIndex wins"
    );
    assert_eq!(s.get_compacted_idx().unwrap(), 1);
    assert_eq!(s.get_stopsign().unwrap(), Some(stopsign()));
    assert_eq!(s.get_snapshot().unwrap(), Some(NoSnapshot));

    // Order relative to trimming: the append lands before the trim and the truncation
    // applies to what is left.
    s.write_atomically(vec![
        StorageOp::AppendEntry(entry(35)),
        StorageOp::Trim(3),
        StorageOp::SetCompactedIdx(3),
        StorageOp::AppendOnPrefix(4, vec![entry(44)]),
        StorageOp::SetStopsign(None),
    ])
    .unwrap();
    assert_eq!(s.get_compacted_idx().unwrap(), 3);
    assert_eq!(s.get_log_len().unwrap(), 2);
    assert_eq!(s.get_suffix(3).unwrap(), vec![entry(33), entry(44)]);
    assert_eq!(s.get_entries(5, 6).unwrap(), vec![], "entry 35 was cut off");
    assert_eq!(s.get_stopsign().unwrap(), None);

    // A log sync that installs a compacted prefix beyond the current end (a follower far
    // behind), then the leader's suffix after it.
    s.write_atomically(vec![
        StorageOp::SetAcceptedRound(ballot(5, 1)),
        StorageOp::SetDecidedIndex(20),
        StorageOp::Trim(20),
        StorageOp::SetCompactedIdx(20),
        StorageOp::AppendOnPrefix(20, entries(20..23)),
    ])
    .unwrap();
    assert_eq!(s.get_compacted_idx().unwrap(), 20);
    assert_eq!(s.get_log_len().unwrap(), 3);
    assert_eq!(s.get_suffix(20).unwrap(), entries(20..23));
    assert_eq!(s.get_entries(3, 5).unwrap(), vec![]);
    assert_eq!(s.get_accepted_round().unwrap(), Some(ballot(5, 1)));
    assert_eq!(s.get_decided_idx().unwrap(), 20);
}

macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        mod mem {
            $(
                #[test]
                fn $check() {
                    super::$check(&mut super::MemStorage::default());
                }
            )*
        }
        mod rocks {
            $(
                #[test]
                fn $check() {
                    super::with_rocks(|s| super::$check(s));
                }
            )*
        }
    };
}

conformance!(
    check_empty,
    check_append_and_read,
    check_absent_intervals_are_empty,
    check_append_on_prefix,
    check_append_on_prefix_before_first,
    check_trim_and_compaction,
    check_metadata,
    check_write_atomically,
);

/// Everything a storage reports, for comparing before and after a reopen.
#[derive(Debug, PartialEq)]
struct Observed {
    log_len: usize,
    compacted: usize,
    suffix: Vec<LogEntry>,
    decided: usize,
    promise: Option<Ballot>,
    accepted: Option<Ballot>,
    stopsign: Option<StopSign>,
    snapshot: Option<NoSnapshot>,
}

fn observe<S: Storage<LogEntry>>(s: &S) -> Observed {
    let compacted = s.get_compacted_idx().unwrap();
    Observed {
        log_len: s.get_log_len().unwrap(),
        compacted,
        suffix: s.get_suffix(compacted).unwrap(),
        decided: s.get_decided_idx().unwrap(),
        promise: s.get_promise().unwrap(),
        accepted: s.get_accepted_round().unwrap(),
        stopsign: s.get_stopsign().unwrap(),
        snapshot: s.get_snapshot().unwrap(),
    }
}

/// The core's deferral of append fsyncs: while deferred, appends are written without an
/// fsync (and read back at once); `sync` makes them durable with one WAL fsync; any other
/// write is synced as always and covers the appends before it (no second fsync then).
/// That the fsync really reaches the disk is the power-loss test's (`e2e_powerloss`).
#[test]
fn rocks_deferred_appends_are_synced_once_by_the_core() {
    use super::LogStorage;
    with_rocks(|s| {
        let metrics = crate::metrics::Metrics::new();
        s.set_metrics(metrics.clone());
        let sync = s.sync_control().expect("RocksStorage defers");
        let fsyncs = || metrics.fsync.count();
        s.append_entries(entries(0..2)).unwrap();
        assert_eq!(fsyncs(), 1, "an append outside a deferral is synced");
        sync.defer();
        s.append_entries(entries(2..4)).unwrap();
        s.append_entry(entry(4)).unwrap();
        assert_eq!(fsyncs(), 1, "deferred appends wait for the core's sync");
        assert_eq!(s.get_entries(0, 5).unwrap(), entries(0..5));
        sync.sync().unwrap();
        assert_eq!(fsyncs(), 2, "one fsync for the deferred appends");
        sync.sync().unwrap();
        assert_eq!(fsyncs(), 2, "nothing deferred, nothing to sync");
        // Deferral ended: appends are synced again.
        s.append_entry(entry(5)).unwrap();
        assert_eq!(fsyncs(), 3);
        // Another write while deferring is synced, and makes the appends durable too.
        sync.defer();
        s.append_entry(entry(6)).unwrap();
        s.set_promise(ballot(2, 1)).unwrap();
        assert_eq!(fsyncs(), 4);
        sync.sync().unwrap();
        assert_eq!(fsyncs(), 4, "the promise's fsync covered the append");
    });
}

/// Entries, log bounds and metadata survive closing and reopening the database.
#[test]
fn rocks_state_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");

    let mut s = open_rocks(&path);
    s.append_entries(entries(0..8)).unwrap();
    s.append_on_prefix(6, vec![entry(60)]).unwrap();
    s.write_atomically(vec![StorageOp::Trim(2), StorageOp::SetCompactedIdx(2)])
        .unwrap();
    s.set_promise(ballot(7, 3)).unwrap();
    s.set_accepted_round(ballot(6, 2)).unwrap();
    s.set_decided_idx(5).unwrap();
    s.set_stopsign(Some(stopsign())).unwrap();
    s.set_snapshot(Some(NoSnapshot)).unwrap();
    let before = observe(&s);
    assert_eq!(before.log_len, 5);
    assert_eq!(
        before.suffix,
        vec![entry(2), entry(3), entry(4), entry(5), entry(60)]
    );
    drop(s); // the storage holds the only Arc<DB>: this closes RocksDB

    let mut s = open_rocks(&path);
    assert_eq!(observe(&s), before);
    assert_eq!(
        s.get_entries(0, 2).unwrap(),
        vec![],
        "trimmed entries stay trimmed"
    );
    assert_eq!(
        s.get_entries(7, 8).unwrap(),
        vec![],
        "truncated entry stays gone"
    );

    // The log end survived too: appends continue at the global index 7.
    s.append_entry(entry(7)).unwrap();
    assert_eq!(s.get_entries(6, 8).unwrap(), vec![entry(60), entry(7)]);
    s.set_stopsign(None).unwrap();
    s.set_snapshot(None).unwrap();
    let before = observe(&s);
    drop(s);

    let s = open_rocks(&path);
    assert_eq!(observe(&s), before);
    assert_eq!(
        s.get_stopsign().unwrap(),
        None,
        "a cleared stop sign stays cleared"
    );
    assert_eq!(s.get_snapshot().unwrap(), None);
}

/// An operation of the property test, with indexes relative to the valid range.
#[derive(Clone, Debug)]
enum Op {
    Append(u8),
    AppendOnPrefix { at: usize, n: u8 },
    Trim { at: usize, atomically: bool },
    Reopen,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..5).prop_map(Op::Append),
        3 => (any::<usize>(), 0u8..4).prop_map(|(at, n)| Op::AppendOnPrefix { at, n }),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(at, atomically)| Op::Trim { at, atomically }),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The same random operations on both implementations give the same observable log.
    #[test]
    fn implementations_agree(ops in proptest::collection::vec(op_strategy(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut mem = MemStorage::default();
        let mut rocks = Some(open_rocks(&path));
        let mut next_id = 0u64;
        let mut fresh = |n: u8| -> Vec<LogEntry> {
            (0..n).map(|_| { next_id += 1; entry(next_id) }).collect()
        };
        for (step, op) in ops.into_iter().enumerate() {
            let r = rocks.as_mut().unwrap();
            // Valid indexes are [compacted, end of log].
            let first = mem.get_compacted_idx().unwrap();
            let end = first + mem.get_log_len().unwrap();
            match &op {
                Op::Append(n) => {
                    let es = fresh(*n);
                    if es.len() == 1 {
                        mem.append_entry(es[0].clone()).unwrap();
                        r.append_entry(es[0].clone()).unwrap();
                    } else {
                        mem.append_entries(es.clone()).unwrap();
                        r.append_entries(es).unwrap();
                    }
                }
                Op::AppendOnPrefix { at, n } => {
                    let from = first + at % (end - first + 1);
                    let es = fresh(*n);
                    mem.append_on_prefix(from, es.clone()).unwrap();
                    r.append_on_prefix(from, es).unwrap();
                }
                Op::Trim { at, atomically } => {
                    let idx = first + at % (end - first + 1);
                    if *atomically {
                        let ops = || vec![StorageOp::Trim(idx), StorageOp::SetCompactedIdx(idx)];
                        mem.write_atomically(ops()).unwrap();
                        r.write_atomically(ops()).unwrap();
                    } else {
                        mem.trim(idx).unwrap();
                        mem.set_compacted_idx(idx).unwrap();
                        r.trim(idx).unwrap();
                        r.set_compacted_idx(idx).unwrap();
                    }
                }
                Op::Reopen => {
                    drop(rocks.take()); // closes RocksDB before it is opened again
                    rocks = Some(open_rocks(&path));
                }
            }
            let r = rocks.as_ref().unwrap();
            let compacted = mem.get_compacted_idx().unwrap();
            prop_assert_eq!(r.get_compacted_idx().unwrap(), compacted, "step {}: {:?}", step, op);
            prop_assert_eq!(r.get_log_len().unwrap(), mem.get_log_len().unwrap(), "step {}: {:?}", step, op);
            let suffix = mem.get_suffix(compacted).unwrap();
            prop_assert_eq!(suffix.len(), mem.get_log_len().unwrap(), "step {}: {:?}", step, op);
            prop_assert_eq!(r.get_suffix(compacted).unwrap(), suffix, "step {}: {:?}", step, op);
            let end = compacted + mem.get_log_len().unwrap();
            prop_assert_eq!(r.get_entries(end, end + 1).unwrap(), vec![], "step {}: {:?}", step, op);
        }
    }
}
