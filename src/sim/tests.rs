//! Simulation tests: many seeds, replay of one seed, determinism, and one test per
//! checker showing that it catches an injected bug.
//!
//! - `cargo test --features test-machinery --lib sim -- --nocapture` runs everything here
//!   (`PAXOSDB_SIM_SEEDS` changes how many seeds `many_seeds` runs);
//! - `PAXOSDB_SIM_SEED=N [PAXOSDB_SIM_NODES=5] cargo test --features test-machinery --lib
//!   sim::tests::replay -- --ignored --nocapture` re-runs one seed and prints what the nemesis did (a tool, not
//!   a check, so ignored: `scripts/test` lists it as skipped);
//! - `PAXOSDB_SIM_BUDGET=off|tiny|mixed` sets the log compaction of both (default mixed:
//!   a tiny budget for half the seeds, see [`LogBudgetMix`]).

use super::*;
use crate::check::{Input, Operation, Outcome, Output};
use crate::command::{Command, KvCommand, LogEntry, WriteOp};
use crate::kv::backend::MemSpaces;
use crate::machine::Outcome as Applied;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn budget() -> LogBudgetMix {
    std::env::var("PAXOSDB_SIM_BUDGET")
        .ok()
        .map_or(LogBudgetMix::Mixed, |b| b.parse().unwrap())
}

/// The configuration `many_seeds` uses for `seed` ([`SimConfig::for_seed`]).
pub fn config_for(seed: u64) -> SimConfig {
    SimConfig::for_seed(seed, budget())
}

pub(super) fn fail(f: Failure) -> ! {
    for line in &f.faults {
        eprintln!("  {line}");
    }
    panic!(
        "{f}\n(replay: PAXOSDB_SIM_SEED={} cargo test --features test-machinery --lib \
         sim::tests::replay -- --ignored --nocapture)",
        f.seed
    );
}

/// A path of the fault model: what, its count in a campaign's totals, the minimum.
type Covered = (&'static str, fn(&Totals) -> u64, u64);

/// The paths of the fault model `many_seeds` must have taken in its default 200 seeds,
/// with at least these counts: about half of what was measured (in parentheses) when
/// they were set. A campaign that no longer reaches them no longer tests them, and
/// fails; if a change of the nodes or of the nemesis legitimately moves a count, measure
/// again and set half of it, never 0.
const COVERAGE: &[Covered] = &[
    ("runs with trimmed logs (138)", |t| t.trimmed_runs, 69),
    ("installed state transfers (193)", |t| t.installs, 96),
    ("failed state transfers (37)", |t| t.fetch_failures, 18),
    (
        "transfers cut by a crash of the fetcher (43)",
        |t| t.fetcher_crashes,
        21,
    ),
    (
        "transfers cut by a crash of the sender (39)",
        |t| t.sender_crashes,
        19,
    ),
    (
        "machine crashes that lost unsynced writes (16)",
        |t| t.lossy_machine_crashes,
        8,
    ),
    (
        "machine crashes that kept a prefix of the unsynced writes (8)",
        |t| t.partial_machine_crashes,
        4,
    ),
    (
        "machine crashes of a leader between sending appends and syncing them (17)",
        |t| t.cuts_before_sync,
        8,
    ),
    (
        "operations with unknown outcome (146)",
        |t| t.info as u64,
        73,
    ),
    ("node pauses (136)", |t| t.pauses, 68),
    // Membership changes (`world::change_membership`), through the nodes' own
    // reconfiguration: each kind took effect, also while a fault was in effect.
    ("nodes added (47)", |t| t.membership.added, 23),
    ("nodes removed (19)", |t| t.membership.removed, 9),
    ("nodes replaced (56)", |t| t.membership.replaced, 28),
    (
        "membership changes during a crash (41)",
        |t| t.membership.during_crash,
        20,
    ),
    (
        "membership changes during a partition (56)",
        |t| t.membership.during_partition,
        28,
    ),
    (
        "membership changes during a pause (25)",
        |t| t.membership.during_pause,
        12,
    ),
    (
        "membership changes proposed through a follower (51)",
        |t| t.membership.via_follower,
        25,
    ),
    // The watchers (`watch`) resume on another node when theirs goes down.
    (
        "watchers moved to another node (257)",
        |t| t.watch.switches,
        128,
    ),
];

#[test]
fn many_seeds() {
    let n = env_u64("PAXOSDB_SIM_SEEDS").unwrap_or(200);
    let first = env_u64("PAXOSDB_SIM_FIRST").unwrap_or(0);
    let mut totals = Totals::default();
    for seed in first..first + n {
        let mut cfg = config_for(seed);
        if let Some(nodes) = env_u64("PAXOSDB_SIM_NODES") {
            cfg.nodes = nodes as usize;
        }
        // The SQL bank on every third seed of this campaign: its SQLite transactions cost
        // several times a KV-only run (CI time); `paxosdb sim` runs it on every seed. The
        // bank on key-value transactions on another third.
        match seed % 3 {
            0 => {}
            1 => cfg.bank_ledger = super::bank::Ledger::Kv,
            _ => cfg.bank_clients = 0,
        }
        match run(seed, &cfg) {
            Ok(s) => totals.add(&s),
            Err(f) => fail(f),
        }
    }
    eprintln!("sim: {totals}, 0 violations");
    // The minimums hold for the default campaign (the CI one); other seed ranges,
    // budgets or sizes only print.
    let default = n == 200 && first == 0 && budget() == LogBudgetMix::Mixed;
    if default && env_u64("PAXOSDB_SIM_NODES").is_none() {
        let short: Vec<String> = COVERAGE
            .iter()
            .filter(|(_, count, min)| count(&totals) < *min)
            .map(|(what, count, min)| format!("{what}: {} < {min}", count(&totals)))
            .collect();
        assert!(
            short.is_empty(),
            "the simulation no longer covers what it claims: {}",
            short.join(", ")
        );
        // A change's stop sign is forwarded to the leader once (or buffered by a leader
        // still preparing), and OmniPaxos never resends it; the node proposes it again
        // while it is undecided (`Core::tend_change`). Measured: 110 of 126 changes
        // acknowledged to their caller with that (41 of the 51 handed to a follower), 95
        // (37) without; the rest time out ("outcome unknown") or are refused.
        let m = &totals.membership;
        assert!(
            m.acknowledged * 5 >= m.proposed * 4,
            "only {} of {} membership changes acknowledged ({} of {} through a follower)",
            m.acknowledged,
            m.proposed,
            m.via_follower_acknowledged,
            m.via_follower
        );
    }
}

#[test]
#[ignore = "a tool, not a check: replays the seed in PAXOSDB_SIM_SEED (run with --ignored)"]
fn replay() {
    let seed = env_u64("PAXOSDB_SIM_SEED").expect("set PAXOSDB_SIM_SEED to the seed to replay");
    let mut cfg = config_for(seed);
    if let Some(n) = env_u64("PAXOSDB_SIM_NODES") {
        cfg.nodes = n as usize;
    }
    match run(seed, &cfg) {
        Ok(s) => {
            s.fault_log.iter().for_each(|l| eprintln!("  {l}"));
            eprintln!(
                "sim seed={seed} passed: {} ops, {} faults, compacted to {}, {} state fetches \
                 ({} installed)",
                s.ops, s.faults, s.compacted, s.fetches, s.fetched
            );
        }
        Err(f) => fail(f),
    }
}

/// Seeds that once failed (with the simulation as it was then); they must keep passing.
const REGRESSIONS: &[u64] = &[
    // A node restarting with a promise for its own unfinished ballot stayed behind forever.
    153,
];

#[test]
fn regressions() {
    for &seed in REGRESSIONS {
        if let Err(f) = run(seed, &config_for(seed)) {
            fail(f);
        }
    }
}

#[test]
fn same_seed_same_trace() {
    for seed in [3, 42] {
        let cfg = SimConfig {
            trace: true,
            ..config_for(seed)
        };
        let a = run(seed, &cfg).unwrap_or_else(|f| fail(f));
        let b = run(seed, &cfg).unwrap_or_else(|f| fail(f));
        assert_eq!(a, b, "seed {seed} is not reproducible");
        let c = run(seed + 1, &cfg).unwrap_or_else(|f| fail(f));
        assert_ne!(
            a.trace_hash, c.trace_hash,
            "the trace hash ignores the seed"
        );
    }
}

/// `config_for(seed)` without membership changes: with them off the simulation runs as it
/// did before they existed, so the exact failures found then stay the same.
fn without_membership(seed: u64) -> SimConfig {
    SimConfig {
        membership: false,
        ..config_for(seed)
    }
}

/// The failure's message is exactly `expected` (a file of `caught/`, whose last line ends
/// with a newline): checker messages too long to write inline are kept there whole.
fn assert_caught(f: &Failure, expected: &str) {
    assert_eq!(
        f.reason,
        expected.strip_suffix('\n').unwrap_or(expected),
        "{f}"
    );
}

/// Runs seeds with `bug` until one fails; returns the failure.
fn caught(bug: Bug, seeds: u64) -> Failure {
    caught_in(bug, 0..seeds, config_for)
}

/// Runs `seeds` with `bug` and configuration `cfg` until one fails; returns the failure.
pub(super) fn caught_in(
    bug: Bug,
    seeds: std::ops::Range<u64>,
    cfg: fn(u64) -> SimConfig,
) -> Failure {
    for seed in seeds.clone() {
        // The seeds and messages pinned by the bug-injection tests were found without
        // power cuts (they test the checkers, not that fault; a cut changes a schedule).
        let cfg = SimConfig {
            bug: Some(bug),
            power_cuts: false,
            ..cfg(seed)
        };
        if let Err(f) = run(seed, &cfg) {
            eprintln!("{bug:?} caught: {f}");
            // Re-recording the pinned messages after a change of schedule: each caught
            // failure's reason goes to `$PAXOSDB_SIM_RECORD/<bug>.txt`.
            if let Some(dir) = std::env::var_os("PAXOSDB_SIM_RECORD") {
                let path = std::path::Path::new(&dir).join(format!("{bug:?}.txt"));
                std::fs::write(path, format!("{}\n", f.reason)).expect("record the reason");
            }
            return f;
        }
    }
    panic!("{bug:?} was not caught in seeds {seeds:?}");
}

#[test]
fn tampered_log_is_caught_by_the_prefix_check() {
    let f = caught(Bug::TamperLog, 5);
    assert_eq!(f.kind, Kind::DecidedEntryDiffers, "{f}");
    // Node 1's copy of the put carries "tampered" where the others have "1003.1".
    assert_caught(&f, include_str!("caught/tamper_log.txt"));
}

#[test]
fn skipped_apply_is_caught_by_the_replica_check() {
    let f = caught_in(Bug::SkipApply, 0..5, without_membership);
    assert_eq!(f.kind, Kind::ReplicasDiffer, "{f}");
    // Node 1 skipped commands: it kept an older value, and numbers fewer versions (262
    // against 304; the key was created at 253 and 290, the flag of the create revision
    // sets the first byte to a space).
    assert_eq!(
        f.reason,
        r#"replicas 1 and 2 differ in kv key "k2": Some(" \\x00\\x00\\x00\\x00\\x00\\x01\\x06\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\xfd1003.99") vs Some(" \\x00\\x00\\x00\\x00\\x00\\x010\\x00\\x00\\x00\\x00\\x00\\x00\\x01\\\"1003.99")"#
    );
}

#[test]
fn diverged_state_is_caught_by_a_read() {
    let f = caught_in(Bug::DivergeState, 7..8, config_for);
    // The bogus element is read before the final comparison would see it. (Not the first
    // one: the bug writes behind the applier, whose write cache still holds the value it
    // wrote, so the next append to `s0` on that node overwrites the earlier bogus elements.)
    assert_eq!(f.kind, Kind::SetUnexpected, "{f}");
    assert_eq!(
        f.reason,
        r#"set "s0": element "diverged" in a read called at event 606 was never appended (or its append certainly failed)"#
    );
}

/// Replica equality includes versions: node 1's `k0` gets another version, same value.
#[test]
fn a_diverged_version_is_caught_by_the_replica_check() {
    let f = caught_in(Bug::DivergeVersion, 5..6, config_for);
    assert_eq!(f.kind, Kind::ReplicasDiffer, "{f}");
    // A value is the 8 bytes of its version (escaped here), then the bytes written.
    assert_eq!(
        f.reason,
        r#"replicas 1 and 2 differ in kv key "k0": Some("\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\xda1003.82") vs Some("\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\xd91003.82")"#
    );
}

/// A node that handles no message hears from nobody: it refuses requests as cut off from
/// the majority (so the clients move on and their operations complete), and it never
/// catches up, which the convergence check after healing sees.
#[test]
fn a_deaf_node_is_caught_by_the_liveness_check() {
    let f = caught(Bug::DeafNode, 3);
    assert_eq!(f.kind, Kind::Liveness, "{f}");
    assert_eq!(
        f.reason,
        r#"liveness: the replicas did not converge within 30 s after healing"#
    );
}

#[test]
fn stale_reads_are_caught_by_the_linearizability_check() {
    let f = caught(Bug::StaleReads, 30);
    assert_eq!(f.kind, Kind::NotLinearizable, "{f}");
    // The key's whole history, as the checker lists it.
    assert_caught(&f, include_str!("caught/stale_reads.txt"));
}

/// A leader that serves reads at its decided index without a quorum's acks answers from
/// its own state after another node became leader: the new leader's writes are missing
/// (seed 73: the bank's total read on node 2 misses an acknowledged transfer; earlier
/// seeds catch the bug too, as a key history that is not linearizable).
#[test]
fn reads_confirmed_without_a_quorum_are_caught() {
    let f = caught_in(Bug::UnconfirmedReads, 73..74, config_for);
    assert_eq!(f.kind, Kind::TransferLost, "{f}");
    assert_eq!(
        f.reason,
        r#"bank: transfer 5000000042, acknowledged at event 295, is missing (read on node 2 called at event 301)"#
    );
}

/// Without duplicate suppression, a write retried after a lost answer, or re-proposed by
/// its node after `repropose_after`, applies twice. A register model cannot see that (a
/// put applied twice leaves the same value); the set workload's appends can (seed 1: an
/// element appears twice in a read; seed 0 catches the bug as a history that is not
/// linearizable).
#[test]
fn disabled_duplicate_suppression_is_caught_by_the_set_check() {
    let f = caught_in(Bug::NoDedup, 1..2, without_membership);
    assert_eq!(f.kind, Kind::SetDuplicate, "{f}");
    assert_eq!(
        f.reason,
        r#"set "s0": element "1000.16" appears 2 times in a read called at event 196"#
    );
}

/// The bug the nemesis found in state installation (see `node::paxos`): node 1, having
/// installed a fetched state and reset its log, keeps its old accepted round, so it claims
/// a log that round never had. A leader then computes from that claim to sync node 1 from
/// the old round's end, below node 1's installed state, and reads its own log there, which
/// it has trimmed: OmniPaxos panics ("log suffix from 164 requested, but the log was
/// trimmed below 192"). That panic was the only sign; now the claims checker
/// (`checks::accepted_claim`) sees the false claim as soon as the reset is written, before
/// any leader acts on it: it is no longer OmniPaxos that catches the bug.
#[test]
fn a_stale_accepted_round_after_an_install_is_caught() {
    let f = caught_in(Bug::StaleAcceptedRound, 0..120, |seed| SimConfig {
        membership: false,
        ..SimConfig::for_seed(seed, LogBudgetMix::Tiny)
    });
    assert_eq!(f.kind, Kind::FalseAcceptedClaim, "{f}");
    assert_eq!(
        f.reason,
        r#"node 1 claims a log up to 429 accepted in round 1 of node 3, but that round's leader never had more than 331 entries"#
    );
}

/// A fresh node that joins by taking a member's position (the KV store's applied index
/// and membership) without its state starts a log at that position whose prefix it never
/// had. Its SQL state machine, which took no position, is at 0, below the start of that
/// log: the world's start check sees it before the core runs. (Before SQL ran in the
/// simulation, the log oracle caught it: a log starting above what the node was compared
/// on, without an installed state.)
#[test]
fn a_member_joining_without_the_state_is_caught() {
    let f = caught(Bug::JoinWithoutState, 5);
    assert_eq!(f.kind, Kind::StateBehindLog, "{f}");
    assert_eq!(
        f.reason,
        r#"node 4 restarts with its SQL state at applied index 0, below the start of its log at 117: the log was trimmed past SQL state that was not durable"#
    );
}

/// Without the configuration tag on messages, a node still in an old configuration takes
/// the newer one's messages into its old OmniPaxos instance: it decides another entry at
/// an index than the cluster did (seed 28), which the log oracle sees. (It can also leave
/// the node stuck, with no member telling it to fetch the state that would move it on:
/// the liveness check catches that in other seeds.)
#[test]
fn untagged_messages_are_caught() {
    let f = caught_in(Bug::UntaggedMessages, 28..29, config_for);
    assert_eq!(f.kind, Kind::DecidedEntryDiffers, "{f}");
    // Node 3 decided an SQL transfer of node 1's old configuration where the cluster
    // decided another entry of node 1's, a key-value write.
    assert_caught(&f, include_str!("caught/untagged_messages.txt"));
}

/// Stop signs take a slot of the one decided log: a node that decided another
/// configuration (or an entry) at that index is caught.
#[test]
fn the_log_oracle_compares_stop_signs() {
    let good = vec![entry(1, "a")];
    let mut oracle = LogOracle::new(2);
    oracle.observe(0, 0, &good).unwrap();
    oracle.observe_stop_sign(0, 1, 2, vec![1, 2, 4]).unwrap();
    oracle.observe(1, 0, &good).unwrap();
    let e = oracle
        .observe_stop_sign(1, 1, 2, vec![1, 2, 3])
        .unwrap_err();
    assert_eq!(e.kind, Kind::DecidedEntryDiffers);
    assert_eq!(
        e.message,
        "decided entry 1 differs: node 2 has the stop sign of configuration 2 (members [1, \
         2, 3]), another node decided the stop sign of configuration 2 (members [1, 2, 4])"
    );
    let e = oracle.observe(1, 1, &good).unwrap_err();
    assert_eq!(e.kind, Kind::DecidedEntryDiffers);
    oracle.observe_stop_sign(1, 1, 2, vec![1, 2, 4]).unwrap();
    assert_eq!(oracle.checked_to(1), 2);
}

/// With membership changes off, the nemesis changes nothing and every message stays in
/// configuration 1; with them on (the default), the same seed changes the membership.
#[test]
fn membership_changes_can_be_turned_off() {
    // The first seed whose run changes the membership.
    let seed = (0..8)
        .find(|&seed| {
            let on = run(seed, &config_for(seed)).unwrap_or_else(|f| fail(f));
            on.membership.proposed > 0
        })
        .expect("some seed changes the membership");
    let off = run(
        seed,
        &SimConfig {
            membership: false,
            ..config_for(seed)
        },
    )
    .unwrap_or_else(|f| fail(f));
    assert_eq!(off.membership, ChangeCounts::default());
}

/// Durability of acknowledged writes, and what the partial-WAL crash model is for: the
/// nodes acknowledge log appends they never sync. Only a machine crash can lose them (a
/// process crash loses nothing), and the loss shows once the nodes of a quorum that
/// decided an entry have lost it.
#[test]
fn unsynced_log_appends_are_caught_after_a_machine_crash() {
    let f = caught(Bug::UnsyncedLog, 11);
    assert_eq!(f.kind, Kind::DecidedEntryLost, "{f}");
    assert_eq!(
        f.reason,
        r#"decided entry 145 is held by 1 of 3 nodes' durable logs, fewer than a majority"#
    );
}

/// The leader sends its appends before it syncs them, and must not count them as its own
/// accepts before they are durable: with the sync skipped, a leader decides with one
/// follower on entries its disk does not hold, and a power loss of the leader leaves
/// them on fewer nodes than a majority.
#[test]
fn appends_never_synced_after_their_send_are_caught() {
    let f = caught_in(Bug::SkipLogSync, 9..10, config_for);
    assert_eq!(f.kind, Kind::DecidedEntryLost, "{f}");
    assert_eq!(
        f.reason,
        r#"decided entry 399 is held by 1 of 3 nodes' durable logs, fewer than a majority"#
    );
}

/// The partial-WAL crash model, directly: a machine crash keeps a prefix of the writes
/// made since the last synced one, in the order they were made (decided indexes and state
/// machine batches interleaved), and what it kept is durable from then on.
#[test]
fn a_machine_crash_keeps_a_prefix_of_the_unsynced_writes() {
    use super::storage::{Durable, Loss, SimStorage};
    use crate::kv::backend::{Backend, Space};
    use omnipaxos::storage::Storage;
    let d = Durable::new();
    let mut log = SimStorage(d.clone());
    let kv = Backend::Memory(d.lock().unwrap().kv.clone());
    let put = |k: &str| vec![(Space::Kv, k.as_bytes().to_vec(), Some(b"v".to_vec()))];
    // Synced: a sync point.
    log.append_entries(vec![entry(1, "a"), entry(2, "b")])
        .unwrap();
    log.set_decided_idx(1).unwrap();
    kv.write(&put("x")).unwrap();
    log.set_decided_idx(2).unwrap();
    kv.write(&put("y")).unwrap();
    let loss = d.lock().unwrap().machine_crash(|n| {
        assert_eq!(n, 4);
        2
    });
    assert_eq!(
        loss,
        Loss {
            unsynced: 4,
            kept: 2,
            decided: 1
        }
    );
    {
        let g = d.lock().unwrap();
        assert_eq!(g.log.get_decided_idx().unwrap(), 1);
        assert_eq!(g.log.get_log_len().unwrap(), 2, "synced appends survive");
        let spaces = g.kv.read().unwrap();
        assert!(spaces.kv.contains_key(b"x".as_slice()));
        assert!(!spaces.kv.contains_key(b"y".as_slice()));
    }
    // What survived is durable: the next crash has nothing to lose.
    let again = d.lock().unwrap().machine_crash(|n| n);
    assert_eq!((again.unsynced, again.decided), (0, 1));
    // With unsynced appends (`Bug::UnsyncedLog`), appends are in the journal too.
    d.lock().unwrap().set_unsynced_log();
    log.append_entries(vec![entry(3, "c")]).unwrap();
    log.set_decided_idx(3).unwrap();
    let loss = d.lock().unwrap().machine_crash(|_| 0);
    assert_eq!((loss.unsynced, loss.decided), (2, 1));
    assert_eq!(d.lock().unwrap().log.get_log_len().unwrap(), 2);
}

/// The leader's appends between their send and their sync (`SyncControl`): in the
/// journal like any unsynced write, rolled back by a machine crash unless kept, durable
/// once synced; a power cut due makes the sync not happen.
#[test]
fn deferred_appends_are_lost_by_a_crash_until_synced() {
    use super::storage::{Durable, SimStorage};
    use crate::storage::LogStorage;
    use omnipaxos::storage::Storage;
    let d = Durable::new();
    let mut log = SimStorage(d.clone());
    let sync = log.sync_control().expect("the simulated log defers");
    log.append_entries(vec![entry(1, "a")]).unwrap();
    sync.defer();
    log.append_entries(vec![entry(2, "b")]).unwrap();
    log.append_entry(entry(3, "c")).unwrap();
    let len = |d: &std::sync::Arc<std::sync::Mutex<Durable>>| {
        d.lock().unwrap().log.get_log_len().unwrap()
    };
    assert_eq!(len(&d), 3);
    // A crash keeping one of the two deferred appends.
    let loss = d.lock().unwrap().machine_crash(|n| {
        assert_eq!(n, 2);
        1
    });
    assert_eq!((loss.unsynced, loss.kept), (2, 1));
    assert_eq!(len(&d), 2, "the log at the sync point plus the kept append");
    // Synced, they survive.
    sync.defer();
    log.append_entry(entry(4, "d")).unwrap();
    sync.sync().unwrap();
    assert_eq!(d.lock().unwrap().machine_crash(|_| 0).unsynced, 0);
    assert_eq!(len(&d), 3);
    // Another write while deferring is synced, and makes the appends before it durable.
    sync.defer();
    log.append_entry(entry(5, "e")).unwrap();
    log.set_promise(Default::default()).unwrap();
    assert_eq!(d.lock().unwrap().machine_crash(|_| 0).unsynced, 0);
    assert_eq!(len(&d), 4);
    // A power cut due: the sync does not happen.
    sync.defer();
    log.append_entry(entry(6, "f")).unwrap();
    d.lock().unwrap().cut_armed = true;
    sync.sync().unwrap();
    assert_eq!(d.lock().unwrap().cuts_before_sync, 1);
    assert_eq!(d.lock().unwrap().machine_crash(|_| 0).unsynced, 1);
    assert_eq!(len(&d), 4);
}

/// Atomicity and versions of multi-key operations: a multi-put applied as separate puts
/// (each key its own version) leaves the keys of one MSET with different versions, which a
/// versioned get or a scan of the group sees; the group model (`check::group`) finds no
/// order in which the MSET wrote one version to both.
#[test]
fn a_split_multi_put_is_caught_by_the_multi_key_check() {
    let f = caught_in(Bug::SplitMultiPut, 0..10, |seed| SimConfig {
        multi_key: true,
        ..config_for(seed)
    });
    assert_eq!(f.kind, Kind::NotLinearizable, "{f}");
    // The group's whole history (116 operations on m0, m1 and the scans of "m").
    assert_caught(&f, include_str!("caught/split_multi_put.txt"));
}

fn entry(batch: u64, value: &str) -> LogEntry {
    LogEntry {
        proposer: 1,
        batch_id: batch,
        commands: vec![KvCommand {
            client_id: 1,
            seq: batch,
            op: WriteOp::Put {
                key: b"k".to_vec(),
                value: value.as_bytes().to_vec(),
                return_prev: false,
            },
            user: None,
        }
        .encode()],
    }
}

#[test]
fn prefix_checks_catch_a_different_entry() {
    let good = vec![entry(1, "a"), entry(2, "b")];
    let bad = vec![entry(1, "a"), entry(2, "x"), entry(3, "c")];
    assert!(common_prefix(&[(1, 0, good.clone()), (2, 0, good[..1].to_vec())]).is_ok());
    let e = common_prefix(&[(1, 0, good.clone()), (2, 0, bad.clone())]).unwrap_err();
    assert_eq!(e.kind, Kind::PrefixDiffers);
    assert_eq!(
        e.message,
        format!(
            "nodes 1 and 2 decided different entries at index 1: {:?} vs {:?}",
            good[1], bad[1]
        )
    );
    // Trimmed logs are compared where they overlap, at the right indexes.
    assert!(common_prefix(&[(1, 0, good.clone()), (2, 1, good[1..].to_vec())]).is_ok());
    let e = common_prefix(&[(1, 1, bad[1..].to_vec()), (2, 0, good.clone())]).unwrap_err();
    assert_eq!(e.kind, Kind::PrefixDiffers);
    assert!(common_prefix(&[(1, 2, bad[2..].to_vec()), (2, 0, good.clone())]).is_ok());

    let mut oracle = LogOracle::new(2);
    oracle.observe(0, 0, &good).unwrap();
    oracle.observe(1, 0, &good[..1]).unwrap();
    let e = oracle.observe(1, 1, &bad[1..]).unwrap_err();
    assert_eq!(e.kind, Kind::DecidedEntryDiffers);
    assert_eq!(
        e.message,
        format!(
            "decided entry 1 differs: node 2 has {:?}, another node decided {:?}",
            bad[1], good[1]
        )
    );
    // A gap (an entry reported beyond the known log) is also a violation.
    let e = LogOracle::new(1).observe(0, 1, &good).unwrap_err();
    assert_eq!(e.kind, Kind::DecidedLogGap);
    assert_eq!(
        e.message,
        "node 1 reports decided entry 1 beyond the known log of 0"
    );
    // A node's log may start above what was compared only after a state install, and
    // only within the known log.
    let mut oracle = LogOracle::new(2);
    oracle.observe(0, 0, &good).unwrap();
    let e = oracle.skip(1, 1, false).unwrap_err();
    assert_eq!(
        (e.kind, e.message.as_str()),
        (
            Kind::DecidedLogGap,
            "node 2 trimmed its log to 1 without installing a state, but entries from 0 on \
             were never compared"
        )
    );
    let e = oracle.skip(1, 3, true).unwrap_err();
    assert_eq!(
        (e.kind, e.message.as_str()),
        (
            Kind::DecidedLogGap,
            "node 2 installed a state ending at 3, beyond the known decided log of 2"
        )
    );
    oracle.skip(1, 2, true).unwrap();
    assert_eq!(oracle.checked_to(1), 2);
}

#[test]
fn monotonic_check_catches_a_decided_index_going_back() {
    let mut m = DecidedMonotonic::new(1);
    m.observe(0, 5).unwrap();
    m.observe(0, 5).unwrap();
    let e = m.observe(0, 4).unwrap_err();
    assert_eq!(e.kind, Kind::DecidedWentBack);
    assert_eq!(e.message, "node 1's decided index went back from 5 to 4");
    m.reset(0, 2);
    m.observe(0, 3).unwrap();
}

#[test]
fn replica_check_catches_divergence() {
    let mut a = MemSpaces::default();
    a.kv.insert(b"k".to_vec(), b"1".to_vec());
    let mut b = a.clone();
    assert!(replicas_equal(&[(1, a.clone()), (2, b.clone())]).is_ok());
    b.kv.insert(b"k".to_vec(), b"2".to_vec());
    let err = replicas_equal(&[(1, a.clone()), (2, b)]).unwrap_err();
    assert_eq!(err.kind, Kind::ReplicasDiffer);
    assert_eq!(
        err.message,
        "replicas 1 and 2 differ in kv key \"k\": Some(\"1\") vs Some(\"2\")"
    );
    let mut c = a.clone();
    c.sm.insert(b"applied".to_vec(), b"x".to_vec());
    let err = replicas_equal(&[(1, a), (2, c)]).unwrap_err();
    assert_eq!(
        err.message,
        "replicas 1 and 2 differ in sm key \"applied\": None vs Some(\"x\")"
    );
}

#[test]
fn linearizability_check_catches_a_stale_read() {
    let op = |client, input, call, ret, out| Operation {
        client,
        key: b"k".to_vec(),
        input,
        call,
        ret: Some(ret),
        outcome: Outcome::Ok(out),
    };
    let history = vec![
        op(1, Input::Put(b"1".to_vec()), 0, 10, Output::Written),
        op(1, Input::Put(b"2".to_vec()), 20, 30, Output::Written),
        // Starts after the second put returned, yet sees the first value.
        op(2, Input::Get, 40, 50, Output::Value(Some(b"1".to_vec()))),
    ];
    let err = linearizable(&history, 100_000).unwrap_err();
    assert_eq!(err.kind, Kind::NotLinearizable);
    assert!(err
        .message
        .starts_with("history of key \"k\" is not linearizable:"));
    assert_eq!(linearizable(&history[..2], 100_000), Ok(2));
}

#[test]
fn set_check_catches_duplicates_losses_and_strangers() {
    use std::collections::BTreeMap;
    let op = |client, input, call, ret: Option<u64>, outcome| Operation {
        client,
        key: b"s0".to_vec(),
        input,
        call,
        ret,
        outcome,
    };
    let append = |c, e: &str, call, ret: Option<u64>, outcome| {
        op(
            c,
            Input::Append(format!(",{e}").into_bytes()),
            call,
            ret,
            outcome,
        )
    };
    let read = |c, v: &str, call, ret| {
        let out = Output::Value(Some(v.as_bytes().to_vec()));
        op(c, Input::Get, call, Some(ret), Outcome::Ok(out))
    };
    let history = vec![
        append(1, "a", 1, Some(2), Outcome::Ok(Output::Appended(2))),
        append(2, "b", 3, None, Outcome::Info),
        append(3, "c", 4, Some(6), Outcome::Fail),
        read(1, ",a", 5, 7),
    ];
    let finals = |v: &str| BTreeMap::from([(b"s0".to_vec(), Some(v.as_bytes().to_vec()))]);
    // The unknown append may or may not be there.
    set_valid(&history, &finals(",a")).unwrap();
    set_valid(&history, &finals(",a,b")).unwrap();
    let err = |h: &[Operation], v: &str| set_valid(h, &finals(v)).unwrap_err();
    let e = err(&history, ",a,b,a");
    assert_eq!(e.kind, Kind::SetDuplicate);
    assert_eq!(
        e.message,
        "set \"s0\": element \"a\" appears 2 times in the final value"
    );
    let e = err(&history, ",b");
    assert_eq!(e.kind, Kind::SetLost);
    assert_eq!(
        e.message,
        "set \"s0\": acknowledged element \"a\" is missing from the final value"
    );
    let e = err(&history, ",a,c");
    assert_eq!(e.kind, Kind::SetUnexpected);
    assert_eq!(
        e.message,
        "set \"s0\": element \"c\" in the final value was never appended (or its append \
         certainly failed)"
    );
    // Reads are checked for duplicates and strangers; a stale read (missing an element
    // acknowledged before it was called) is the linearizability check's.
    let mut h = history.clone();
    h.push(read(2, "", 8, 9));
    set_valid(&h, &finals(",a")).unwrap();
    h.push(read(2, ",a,a", 10, 11));
    let e = err(&h, ",a");
    assert_eq!(
        e.message,
        "set \"s0\": element \"a\" appears 2 times in a read called at event 10"
    );
}

/// With `chaos` (duplicates and reordering within one link, which the TCP transport never
/// does) OmniPaxos 0.2.4 breaks: a delayed `AcceptSync` reaches a follower that already
/// decided further ("log sync from X would overwrite decided entries up to Y"), and some
/// runs never converge. This shows the simulation finds protocol-level trouble when the
/// network breaks OmniPaxos' FIFO-link assumption, and why the default model is FIFO per
/// link. Slow (about 30 s): `cargo test --features test-machinery --lib sim::tests::chaos --
/// --ignored --nocapture`.
#[test]
#[ignore = "slow (about 30 s), and shows a failure outside the FIFO model: run with --ignored"]
fn chaos_breaks_the_fifo_assumption_of_omnipaxos() {
    let mut failures = 0;
    for seed in 0..100 {
        let cfg = SimConfig {
            chaos: true,
            fault_time: std::time::Duration::from_secs(10),
            ..config_for(seed)
        };
        match std::panic::catch_unwind(|| run(seed, &cfg)) {
            Ok(Ok(_)) => {}
            Ok(Err(f)) => {
                eprintln!("{f}");
                failures += 1;
            }
            Err(_) => {
                eprintln!("sim seed={seed} failed: panicked");
                failures += 1;
            }
        }
    }
    assert!(failures > 0, "chaos found nothing in 100 seeds");
}

/// Seed 153's bug, directly: a node restarting with a promise for its own ballot (a
/// Prepare it never finished) starts a new election with a higher ballot, instead of
/// waiting forever for a leader that ignores it.
#[test]
fn a_node_restarting_with_its_own_promise_takes_over() {
    use crate::kv::KvStore;
    use crate::node::Core;
    use crate::storage::memory::MemStorage;
    use omnipaxos::ballot_leader_election::Ballot;
    use omnipaxos::messages::sequence_paxos::PaxosMsg;
    use omnipaxos::messages::Message;
    use omnipaxos::storage::Storage;
    use std::sync::{Arc, RwLock};
    use std::time::Instant;

    let mut storage = MemStorage::default();
    storage.set_promise(Ballot::with(1, 4, 0, 2)).unwrap();
    let kv = KvStore::open_memory(Arc::new(RwLock::new(MemSpaces::default()))).unwrap();
    let outbox = net::Outbox::default();
    let cfg = one_core_config(2);
    let mut core = Core::new(cfg, storage, Box::new(kv), Box::new(outbox.clone())).unwrap();
    core.step(Instant::now());
    let prepares: Vec<_> = outbox
        .take()
        .into_iter()
        .filter_map(|m| match m {
            Message::SequencePaxos(p) => match p.msg {
                PaxosMsg::Prepare(prep) => Some(prep.n),
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(prepares.len(), 2, "a Prepare to each peer");
    assert!(
        prepares.iter().all(|n| n.n == 5 && n.pid == 2),
        "{prepares:?}"
    );
}

/// The race behind a flaky HTTP test, directly: a follower's retry of a write is answered
/// by the original entry while the follower's own duplicate entry is still in flight; the
/// client then reuses the seq for another write. When the duplicate is decided it must not
/// answer the new write (with the first write's result, silently dropping it): the new
/// write waits for its own entry, which refuses the reused seq.
#[test]
fn a_late_duplicate_does_not_answer_a_reused_session() {
    use crate::node::{Core, CoreConfig, Event};
    use crate::storage::memory::MemStorage;
    use std::time::{Duration, Instant};
    use tokio::sync::oneshot;

    let ids = [1u64, 2, 3];
    let (mut cores, outboxes) = three_cores(|id| CoreConfig {
        request_timeout: Duration::from_secs(3600),
        repropose_after: Duration::from_secs(3600),
        ..one_core_config(id)
    });
    let mut now = Instant::now();
    let mut held: Vec<omnipaxos::messages::Message<LogEntry>> = Vec::new();
    // One round: step everyone, deliver everything (messages from `mute` are held back).
    let round =
        |cores: &mut Vec<Core<MemStorage>>, mute: Option<u64>, held: &mut Vec<_>, now: Instant| {
            for _ in 0..5 {
                for c in cores.iter_mut() {
                    c.step(now);
                }
                for (i, ob) in outboxes.iter().enumerate() {
                    for m in ob.take() {
                        if mute == Some(ids[i]) {
                            held.push(m);
                        } else {
                            let to = m.get_receiver();
                            cores[(to - 1) as usize].handle(Event::Peer { config: 1, msg: m }, now);
                        }
                    }
                }
            }
        };
    let mut leader = None;
    for _ in 0..500 {
        now += Duration::from_millis(10);
        for c in cores.iter_mut() {
            c.tick(now);
        }
        round(&mut cores, None, &mut held, now);
        leader = cores[0].status().leader;
        if leader.is_some() && cores.iter().all(|c| c.status().leader == leader) {
            break;
        }
    }
    let leader = leader.expect("a leader is elected");
    let f = ids.iter().copied().find(|&i| i != leader).unwrap();
    let (li, fi) = ((leader - 1) as usize, (f - 1) as usize);
    let write = |v: &str| {
        KvCommand {
            client_id: 4242,
            seq: 1,
            op: WriteOp::Put {
                key: b"s".to_vec(),
                value: v.as_bytes().to_vec(),
                return_prev: false,
            },
            user: None,
        }
        .encode()
    };
    let send = |core: &mut Core<MemStorage>, cmd: Command| {
        let (reply, rx) = oneshot::channel();
        core.handle(Event::Write { cmd, reply }, now);
        rx
    };

    // The follower proposes the retry, but its forward is held back; the original goes
    // through the leader and answers both.
    let mut retry = send(&mut cores[fi], write("one"));
    round(&mut cores, Some(f), &mut held, now);
    let mut original = send(&mut cores[li], write("one"));
    round(&mut cores, Some(f), &mut held, now);
    let first = original.try_recv().expect("original answered").unwrap();
    assert_eq!(retry.try_recv().expect("retry answered").unwrap(), first);

    // The seq is reused for another write on the follower; then the held duplicate and the
    // new write are delivered, in order.
    let mut reuse = send(&mut cores[fi], write("two"));
    round(&mut cores, Some(f), &mut held, now);
    for m in std::mem::take(&mut held) {
        let to = m.get_receiver();
        cores[(to - 1) as usize].handle(Event::Peer { config: 1, msg: m }, now);
    }
    round(&mut cores, None, &mut held, now);
    match reuse.try_recv().expect("reuse answered") {
        Ok(Applied::SessionReused(why)) => assert!(why.contains(crate::command::SESSION_REUSED)),
        other => panic!("the reused seq got {other:?}, not a refusal"),
    }
}

/// A follower's read ask doubles as its ack only when it carries the leader's ballot: the
/// leader of three answers such an ask at once (a `ReadIndex`, no probe), and an ask
/// carrying another ballot (the asker promised a newer leader) only joins a read round,
/// whose probes must be acked first.
#[test]
fn a_read_ask_counts_as_an_ack_only_with_the_leaders_ballot() {
    use crate::node::{CoreConfig, Event, Note};
    use std::time::{Duration, Instant};
    use tokio::sync::oneshot;

    let (mut cores, outboxes) = three_cores(|id| CoreConfig {
        request_timeout: Duration::from_secs(3600),
        repropose_after: Duration::from_secs(3600),
        ..one_core_config(id)
    });
    let mut now = Instant::now();
    let mut leader = None;
    for _ in 0..500 {
        now += Duration::from_millis(10);
        for c in cores.iter_mut() {
            c.tick(now);
        }
        for _ in 0..5 {
            for c in cores.iter_mut() {
                c.step(now);
            }
            for (i, ob) in outboxes.iter().enumerate() {
                let sent = ob.take_all();
                for (config, m) in sent.msgs {
                    let to = m.get_receiver();
                    cores[(to - 1) as usize].handle(Event::Peer { config, msg: m }, now);
                }
                for (to, note) in sent.notes {
                    let from = (i + 1) as u64;
                    cores[(to - 1) as usize].handle(Event::Note { from, note }, now);
                }
            }
        }
        leader = cores[0].status().leader;
        if leader.is_some() && cores.iter().all(|c| c.status().leader == leader) {
            break;
        }
    }
    let leader = leader.expect("a leader is elected");
    let f = [1u64, 2, 3].into_iter().find(|&i| i != leader).unwrap();
    let (li, fi) = ((leader - 1) as usize, (f - 1) as usize);
    // The follower's ask for a read that arrived there.
    let (reply, _read) = oneshot::channel();
    cores[fi].handle(Event::ReadBarrier { reply }, now);
    cores[fi].step(now);
    let asks: Vec<Note> = (outboxes[fi].take_all().notes.into_iter())
        .filter(|(to, n)| *to == leader && matches!(n, Note::ReadAsk { .. }))
        .map(|(_, n)| n)
        .collect();
    let [Note::ReadAsk { id, ballot }] = asks[..] else {
        panic!("one ask to the leader, got {asks:?}");
    };
    let notes_of_leader = |cores: &mut Vec<_>, note: Note| {
        let core: &mut crate::node::Core<_> = &mut cores[li];
        core.handle(Event::Note { from: f, note }, now);
        core.step(now);
        outboxes[li].take_all().notes
    };
    // Another ballot: no answer yet, a round's probes instead.
    let mut newer = ballot;
    newer.n += 1;
    let sent = notes_of_leader(&mut cores, Note::ReadAsk { id, ballot: newer });
    assert!(
        !sent
            .iter()
            .any(|(_, n)| matches!(n, Note::ReadIndex { .. })),
        "an ask with another ballot was answered at once: {sent:?}"
    );
    assert!(
        sent.iter()
            .any(|(_, n)| matches!(n, Note::ReadProbe { .. })),
        "an ask with another ballot starts a round: {sent:?}"
    );
    // The leader's ballot: answered at once, with no probe.
    let sent = notes_of_leader(&mut cores, Note::ReadAsk { id: id + 1, ballot });
    assert!(
        sent.iter()
            .any(|(to, n)| *to == f && matches!(n, Note::ReadIndex { id: i, .. } if *i == id + 1)),
        "an ask with the leader's ballot is answered at once: {sent:?}"
    );
    assert!(
        !sent
            .iter()
            .any(|(_, n)| matches!(n, Note::ReadProbe { .. })),
        "and needs no probe: {sent:?}"
    );
}

/// The second half of a state installation, as a restart finishes it: a state machine
/// ahead of the decided log (the state was switched in, the crash came before the log
/// reset) makes the core start its log where the state ends, keeping the promise.
#[test]
fn a_state_ahead_of_the_log_resets_the_log_at_start() {
    use crate::kv::KvStore;
    use crate::node::Core;
    use crate::storage::memory::MemStorage;
    use omnipaxos::ballot_leader_election::Ballot;
    use omnipaxos::storage::Storage;
    use std::sync::{Arc, RwLock};

    let spaces = Arc::new(RwLock::new(MemSpaces::default()));
    let mut kv = KvStore::open_memory(spaces.clone()).unwrap();
    for i in 0..10 {
        crate::machine::StateMachine::apply(&mut kv, i, &[]).unwrap();
    }
    let mut storage = MemStorage::default();
    storage
        .append_entries(vec![entry(1, "a"), entry(2, "b")])
        .unwrap();
    storage.set_decided_idx(2).unwrap();
    let promise = Ballot::with(1, 7, 0, 3);
    storage.set_promise(promise).unwrap();
    let cfg = one_core_config(2);
    let core = Core::new(cfg, storage, Box::new(kv), Box::new(net::Outbox::default())).unwrap();
    let st = core.status();
    assert_eq!(
        (st.decided_index, st.applied_index, st.compacted_index),
        (10, 10, 10)
    );
}

/// The configuration of one core of a hand-driven 3-node cluster, without compaction.
/// Cores 1, 2 and 3 in memory, each with the configuration `cfg` gives for its id (and its
/// own batch ids), and the outboxes of their messages.
fn three_cores(
    cfg: impl Fn(u64) -> crate::node::CoreConfig,
) -> (
    Vec<crate::node::Core<crate::storage::memory::MemStorage>>,
    Vec<net::Outbox>,
) {
    let (cores, outboxes, _) = three_cores_and_stores(cfg);
    (cores, outboxes)
}

/// [`three_cores`], with a clone of each core's key-value store (reads its state).
#[allow(clippy::type_complexity)]
fn three_cores_and_stores(
    cfg: impl Fn(u64) -> crate::node::CoreConfig,
) -> (
    Vec<crate::node::Core<crate::storage::memory::MemStorage>>,
    Vec<net::Outbox>,
    Vec<crate::kv::KvStore>,
) {
    use crate::kv::KvStore;
    use std::sync::{Arc, RwLock};
    let (mut cores, mut outboxes, mut stores) = (Vec::new(), Vec::new(), Vec::new());
    for id in [1u64, 2, 3] {
        let kv = KvStore::open_memory(Arc::new(RwLock::new(MemSpaces::default()))).unwrap();
        stores.push(kv.clone());
        let outbox = net::Outbox::default();
        let cfg = crate::node::CoreConfig {
            first_batch_id: id << 32,
            ..cfg(id)
        };
        let storage = crate::storage::memory::MemStorage::default();
        let core = crate::node::Core::new(cfg, storage, Box::new(kv), Box::new(outbox.clone()));
        cores.push(core.unwrap());
        outboxes.push(outbox);
    }
    (cores, outboxes, stores)
}

fn one_core_config(id: crate::command::NodeId) -> crate::node::CoreConfig {
    crate::node::CoreConfig {
        id,
        members: super::members(3),
        tick: std::time::Duration::from_millis(10),
        election_ticks: 10,
        request_timeout: std::time::Duration::from_secs(5),
        repropose_after: std::time::Duration::from_secs(1),
        max_batch_commands: 16,
        max_batch_bytes: 1 << 20,
        first_batch_id: 1,
        compaction: crate::node::CompactionPolicy::OFF,
    }
}

/// The SQL durability model, directly: SQLite keeps what was synced (a flush by
/// `make_durable`) and, after a machine crash, a prefix of the commits made since, which
/// it rebuilds by replaying them through the SQL state machine.
#[test]
fn a_machine_crash_keeps_a_prefix_of_the_unsynced_sql_commits() {
    use super::sql::{RunDir, SimSql, SqlDisk};
    use crate::machine::{Command, Machine, StateMachine};
    use crate::sql::{Request, Statement};
    let run = RunDir::new(0);
    let disk = SqlDisk::new(&run.0, 1);
    let cmd = |seq: u64, sql: &str| Command {
        client_id: 7,
        seq,
        user: None,
        machine: Machine::Sql,
        payload: bincode::serialize(&Request {
            statements: vec![Statement::new(sql)],
            transaction: false,
        })
        .unwrap(),
    };
    let rows = |disk: &std::sync::Arc<std::sync::Mutex<SqlDisk>>| {
        let store = disk.lock().unwrap().open();
        let out = store
            .query(&Request {
                statements: vec![Statement::new("SELECT count(*) FROM t")],
                transaction: false,
            })
            .unwrap();
        (out.results[0].rows.clone(), store.applied_index())
    };
    {
        let store = disk.lock().unwrap().open();
        let mut sm = SimSql::new(store, disk.clone(), None);
        sm.apply(0, &[&cmd(1, "CREATE TABLE t (x INTEGER)")])
            .unwrap();
        sm.apply(1, &[]).unwrap();
        sm.make_durable().unwrap();
        for i in 2..5u64 {
            let c = cmd(i, "INSERT INTO t VALUES (1)");
            sm.apply(i, &[&c]).unwrap();
        }
    }
    // Three commits since the flush; the crash keeps the first.
    let loss = disk.lock().unwrap().machine_crash(|n| {
        assert_eq!(n, 3);
        1
    });
    assert_eq!((loss.unsynced, loss.kept, loss.first_lost), (3, 1, Some(3)));
    let one = vec![vec![crate::sql::Value::Integer(1)]];
    assert_eq!(rows(&disk), (one.clone(), 3));
    // What survived is durable: the next crash has nothing to lose.
    let again = disk.lock().unwrap().machine_crash(|n| n);
    assert_eq!(again.unsynced, 0);
    assert_eq!(rows(&disk), (one, 3));
}

/// Every run carries the SQL bank workload on the same log as the KV one, and machine
/// crashes land between the two engines' commits: a crash loses a SQL commit whose KV
/// commit survived, restarts find the engines at different applied indexes, the core
/// replays only what each engine lacks, and the bank's checks and the SQL replica
/// comparison hold. State transfers carry SQL state. (The other order, SQL ahead of KV
/// after a machine crash, needs a crash to lose a KV batch before the next synced log
/// write: the campaign counts it, `paxosdb sim`.)
#[test]
fn sql_and_kv_share_the_log_through_crashes_between_their_commits() {
    let mut t = super::SqlStats::default();
    let mut installs = 0;
    for seed in 0..12 {
        let s = run(seed, &config_for(seed)).unwrap_or_else(|f| fail(f));
        t.add(&s.sql);
        installs += s.installs;
    }
    eprintln!("{t:?}, {installs} installs");
    assert!(t.transfers_acked > 0 && t.total_reads > 0, "{t:?}");
    assert!(
        t.engines_apart > 0,
        "no restart found the engines apart: {t:?}"
    );
    assert!(
        t.sql_behind_kv > 0,
        "no crash lost a SQL commit alone: {t:?}"
    );
    assert!(
        t.sql_installs > 0,
        "no state transfer carried SQL state: {t:?}"
    );
}

/// Without `make_durable` before a log trim, the SQL store's commits since its last flush
/// are not synced when the log entries that produced them are trimmed: a machine crash
/// then leaves the SQL state behind the start of the log, which no longer holds the
/// entries to replay.
#[test]
fn a_trim_without_make_durable_is_caught_at_restart() {
    let f = caught(Bug::NoMakeDurable, 16);
    assert_eq!(f.kind, Kind::StateBehindLog, "{f}");
    assert_eq!(
        f.reason,
        r#"node 3 restarts with its SQL state at applied index 55, below the start of its log at 194: the log was trimmed past SQL state that was not durable"#
    );
}

/// Without the SQL store's session check, a transfer retried after a lost answer (or
/// re-proposed by its node) applies twice: its ledger row appears twice.
#[test]
fn sql_without_sessions_is_caught_by_the_bank() {
    let f = caught(Bug::SqlNoDedup, 19);
    assert_eq!(f.kind, Kind::TransferDuplicated, "{f}");
    assert_eq!(
        f.reason,
        r#"bank: transfer 5000000019 applied 2 times (its outcome: Some(Acked(130))) (read on node 1 called at event 137)"#
    );
}

fn kv_bank(seed: u64) -> SimConfig {
    SimConfig {
        bank_ledger: super::bank::Ledger::Kv,
        ..config_for(seed)
    }
}

/// The bank on the key-value store: every transfer one transaction of two increments and
/// a ledger row, through crashes, partitions, membership changes and state transfers;
/// every total read and the final books hold the opening total, every acknowledged
/// transfer exactly once.
#[test]
fn kv_transactions_keep_the_bank_books() {
    let mut t = super::SqlStats::default();
    for seed in 0..12 {
        let s = run(seed, &kv_bank(seed)).unwrap_or_else(|f| fail(f));
        t.add(&s.sql);
    }
    eprintln!("{t:?}");
    assert!(t.transfers_acked > 100 && t.total_reads > 20, "{t:?}");
}

/// A transaction that runs only part of its branch (the setup opens one account, a
/// transfer takes money out and puts it nowhere) breaks the books, which the bank's first
/// total read finds.
#[test]
fn a_transaction_applied_in_part_is_caught_by_the_bank() {
    let f = caught_in(Bug::TxnFirstOpOnly, 0..4, kv_bank);
    assert_eq!(f.kind, Kind::BankTotal, "{f}");
    assert_eq!(
        f.reason,
        r#"bank: 2 accounts total 31, not 5 opened with 500 (read on node 1 called at event 11)"#
    );
}

/// Hands every message and note the cores sent to their receivers (those in `down` get
/// nothing, and what they sent is dropped), `rounds` times, stepping every live core.
fn pump(
    cores: &mut [crate::node::Core<crate::storage::memory::MemStorage>],
    outboxes: &[net::Outbox],
    down: &[usize],
    now: std::time::Instant,
    rounds: usize,
) {
    use crate::node::Event;
    for _ in 0..rounds {
        for (i, c) in cores.iter_mut().enumerate() {
            if !down.contains(&i) {
                c.step(now);
            }
        }
        for (i, ob) in outboxes.iter().enumerate() {
            let sent = ob.take_all();
            if down.contains(&i) {
                continue;
            }
            for (config, m) in sent.msgs {
                let to = (m.get_receiver() - 1) as usize;
                if !down.contains(&to) {
                    cores[to].handle(Event::Peer { config, msg: m }, now);
                }
            }
            for (to, note) in sent.notes {
                let from = (i + 1) as u64;
                if !down.contains(&((to - 1) as usize)) {
                    cores[(to - 1) as usize].handle(Event::Note { from, note }, now);
                }
            }
        }
    }
}

/// Expiry follows the log's time, which only leaders' clocks set: on three cores whose
/// wall clocks disagree by 5 s, a key written through a follower with a relative
/// deadline gets the leader's time plus its TTL on every replica; it disappears on all
/// of them at the same point of the log once the leader's clock passes the deadline (the
/// leader stamps the log by itself, no write needed); and after the leader dies, a new
/// leader whose clock is 5 s behind never moves the log's time back: a key it wrote
/// under the old leader's time expires when the new leader's clock passes its deadline,
/// not earlier.
#[test]
fn keys_expire_by_the_leaders_clock_at_the_same_point_of_the_log_everywhere() {
    use crate::command::{Deadline, Expiry, KvCommand, SetCond, WriteOp};
    use crate::node::{CoreConfig, Event};
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    use tokio::sync::oneshot;

    const EPOCH: u64 = 1_767_225_600_000;
    let start = Instant::now();
    let (mut cores, outboxes, stores) = three_cores_and_stores(|id| CoreConfig {
        request_timeout: Duration::from_secs(3600),
        repropose_after: Duration::from_secs(3600),
        ..one_core_config(id)
    });
    let mut now = start;
    let mut leader = None;
    for _ in 0..500 {
        now += Duration::from_millis(10);
        for c in cores.iter_mut() {
            c.tick(now);
        }
        pump(&mut cores, &outboxes, &[], now, 5);
        leader = cores[0].status().leader;
        if leader.is_some() && cores.iter().all(|c| c.status().leader == leader) {
            break;
        }
    }
    let leader = (leader.expect("a leader is elected") - 1) as usize;
    let follower = (0..3).find(|&i| i != leader).unwrap();
    // The leader's clock is right; the follower the first write goes through is 3 s
    // ahead (its own stamp must not count), the other one 5 s behind.
    let wall = move |skew: i64, at: Instant| {
        (EPOCH + at.saturating_duration_since(start).as_millis() as u64).saturating_add_signed(skew)
    };
    let clock = |skew: i64| -> crate::node::WallClock { Arc::new(move |at| wall(skew, at)) };
    for (i, c) in cores.iter_mut().enumerate() {
        let skew = match i {
            i if i == leader => 0,
            i if i == follower => 3000,
            _ => -5000,
        };
        c.set_wall_clock(clock(skew));
    }
    let set_px = |key: &[u8], ms: u64, seq: u64| {
        KvCommand {
            client_id: 7,
            seq,
            op: WriteOp::SetExpiring {
                key: key.to_vec(),
                value: b"v".to_vec(),
                cond: SetCond::Always,
                expiry: Expiry::Set(Deadline::In(ms)),
            },
            user: None,
        }
        .encode()
    };
    // Through the follower: the deadline is the leader's time plus 200 ms.
    let (reply, _answer) = oneshot::channel();
    let appended_at = now;
    cores[follower].handle(
        Event::Write {
            cmd: set_px(b"a", 200, 1),
            reply,
        },
        now,
    );
    pump(&mut cores, &outboxes, &[], now, 6);
    let expected = wall(0, appended_at) + 200;
    for s in &stores {
        let (timed, _, _) = s.get_timed(b"a").unwrap();
        assert_eq!(timed.expect("written").deadline, Some(expected));
    }
    // Time passes with no write: the leader stamps the log when its clock passes the
    // deadline, and every replica drops the key at the same index.
    let mut gone_at = None;
    for _ in 0..40 {
        now += Duration::from_millis(10);
        for c in cores.iter_mut() {
            c.tick(now);
        }
        pump(&mut cores, &outboxes, &[], now, 4);
        let seen: Vec<_> = stores.iter().map(|s| s.get(b"a").unwrap()).collect();
        if seen.iter().all(|(v, _)| v.is_none()) {
            gone_at = Some(now);
            break;
        }
    }
    let gone_at = gone_at.expect("the key expired within 400 ms");
    assert!(
        wall(0, gone_at) >= expected,
        "not before the leader's clock passed it"
    );
    // Once every replica applied the same entries, they agree on the log's time.
    pump(&mut cores, &outboxes, &[], now, 4);
    let counters: Vec<(u64, u64, u64)> = stores.iter().map(|s| s.counters().unwrap()).collect();
    assert!(counters.iter().all(|c| *c == counters[0]), "{counters:?}");
    assert!(counters[0].2 >= expected, "{counters:?}");

    // A key with 10 s to live under this leader; then the leader dies, and a node whose
    // clock is 5 s behind takes over.
    // Both others are 5 s behind from here on.
    cores[follower].set_wall_clock(clock(-5000));
    let (reply, _answer) = oneshot::channel();
    cores[leader].handle(
        Event::Write {
            cmd: set_px(b"b", 10_000, 2),
            reply,
        },
        now,
    );
    pump(&mut cores, &outboxes, &[], now, 6);
    let deadline_b = stores[leader]
        .get_timed(b"b")
        .unwrap()
        .0
        .unwrap()
        .deadline
        .unwrap();
    let before = stores[leader].counters().unwrap().2;
    let down = [leader];
    let mut new_leader = None;
    for _ in 0..300 {
        now += Duration::from_millis(10);
        for (i, c) in cores.iter_mut().enumerate() {
            if i != leader {
                c.tick(now);
            }
        }
        pump(&mut cores, &outboxes, &down, now, 4);
        let l = cores[follower].status().leader.map(|l| (l - 1) as usize);
        if l.is_some_and(|l| l != leader) {
            new_leader = l;
            break;
        }
    }
    let new_leader = new_leader.expect("a new leader is elected");
    // Its stamps do not move the log's time back, and the key lives until the new
    // leader's clock passes its deadline.
    let mut expired = None;
    for _ in 0..1600 {
        now += Duration::from_millis(10);
        for (i, c) in cores.iter_mut().enumerate() {
            if i != leader {
                c.tick(now);
            }
        }
        pump(&mut cores, &outboxes, &down, now, 3);
        let s = &stores[new_leader];
        assert!(
            s.counters().unwrap().2 >= before,
            "the log's time went back"
        );
        if s.get(b"b").unwrap().0.is_none() {
            expired = Some(now);
            break;
        }
    }
    let expired = expired.expect("the key expired under the new leader");
    assert!(
        wall(-5000, expired) >= deadline_b,
        "expired before the new leader's clock passed the deadline"
    );
    let other = (0..3).find(|&i| i != leader && i != new_leader).unwrap();
    pump(&mut cores, &outboxes, &down, now, 4);
    assert_eq!(stores[other].get(b"b").unwrap().0, None);
    assert_eq!(
        stores[other].counters().unwrap(),
        stores[new_leader].counters().unwrap()
    );
}

/// A lease survives a leader change: its holder keeps it alive through the leader, the
/// leader dies, and the election takes longer than the lease has left by the clock. The
/// new leader's first stamp (its clock passes the lease's end as the old reign counted
/// it) comes from another reign, so the time without a leader does not count: the key
/// stays, with the time it had left when the old leader last stamped, a keep-alive
/// through the new leader renews it, and without more keep-alives it ends on every
/// replica at the same index, not before its time to live passed on the new leader's
/// clock.
#[test]
fn a_lease_survives_a_leader_change_and_ends_after_its_time_without_keep_alives() {
    use crate::command::{KvCommand, WriteOp, WriteResult};
    use crate::machine::Outcome;
    use crate::node::{CoreConfig, Event};
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    use tokio::sync::oneshot;

    const EPOCH: u64 = 1_767_225_600_000;
    const TTL: u64 = 2000;
    let start = Instant::now();
    let (mut cores, outboxes, stores) = three_cores_and_stores(|id| CoreConfig {
        request_timeout: Duration::from_secs(3600),
        repropose_after: Duration::from_secs(3600),
        ..one_core_config(id)
    });
    let wall = move |at: Instant| EPOCH + at.saturating_duration_since(start).as_millis() as u64;
    for c in cores.iter_mut() {
        c.set_wall_clock(Arc::new(wall));
    }
    let mut now = start;
    let tick = |cores: &mut Vec<crate::node::Core<_>>, now: Instant, down: &[usize]| {
        for (i, c) in cores.iter_mut().enumerate() {
            if !down.contains(&i) {
                c.tick(now);
            }
        }
    };
    let mut leader = None;
    for _ in 0..500 {
        now += Duration::from_millis(10);
        tick(&mut cores, now, &[]);
        pump(&mut cores, &outboxes, &[], now, 5);
        leader = cores[0].status().leader;
        if leader.is_some() && cores.iter().all(|c| c.status().leader == leader) {
            break;
        }
    }
    let leader = (leader.expect("a leader is elected") - 1) as usize;
    let mut seq = 0;
    // Proposes `op` through node `at` and runs the cluster until it is applied there.
    let mut write = |cores: &mut Vec<crate::node::Core<_>>,
                     now: Instant,
                     at: usize,
                     down: &[usize],
                     op: WriteOp|
     -> WriteResult {
        seq += 1;
        let cmd = KvCommand {
            client_id: 9,
            seq,
            op,
            user: None,
        };
        let (reply, mut answer) = oneshot::channel();
        cores[at].handle(
            Event::Write {
                cmd: cmd.encode(),
                reply,
            },
            now,
        );
        for _ in 0..20 {
            pump(cores, &outboxes, down, now, 2);
            if let Ok(r) = answer.try_recv() {
                let Ok(Outcome::Done(bytes)) = r else {
                    panic!("{r:?}")
                };
                return bincode::deserialize(&bytes).unwrap();
            }
        }
        panic!("no answer");
    };
    let r = write(
        &mut cores,
        now,
        leader,
        &[],
        WriteOp::LeaseGrant { id: 0, ttl_ms: TTL },
    );
    let WriteResult::Lease(Some(lease)) = r else {
        panic!("{r:?}")
    };
    let put = WriteOp::PutLeased {
        key: b"leader".to_vec(),
        value: b"node-a".to_vec(),
        lease: lease.id,
        return_prev: false,
    };
    write(&mut cores, now, leader, &[], put);
    // Kept alive 500 ms later; it then ends at that time + TTL by this leader's reign.
    // (Time passes with the cluster running: a node that heard nothing for longer than
    // its contact window refuses requests.)
    for _ in 0..50 {
        now += Duration::from_millis(10);
        tick(&mut cores, now, &[]);
        pump(&mut cores, &outboxes, &[], now, 4);
    }
    let r = write(
        &mut cores,
        now,
        leader,
        &[],
        WriteOp::LeaseKeepAlive { id: lease.id },
    );
    let WriteResult::Lease(Some(kept)) = r else {
        panic!("{r:?}")
    };
    assert_eq!(kept.deadline, wall(now) + TTL);
    pump(&mut cores, &outboxes, &[], now, 4);

    // The leader dies; the others are cut off from it for longer than the lease has left.
    let down = [leader];
    let died = now;
    now += Duration::from_millis(TTL + 500);
    let mut new_leader = None;
    for _ in 0..600 {
        now += Duration::from_millis(10);
        tick(&mut cores, now, &down);
        pump(&mut cores, &outboxes, &down, now, 4);
        let survivor = (0..3).find(|&i| i != leader).unwrap();
        let l = cores[survivor].status().leader.map(|l| (l - 1) as usize);
        if l.is_some_and(|l| l != leader) && stores[l.unwrap()].counters().unwrap().2 > wall(died) {
            new_leader = l;
            break;
        }
    }
    let new_leader = new_leader.expect("a new leader is elected and stamps the log");
    let other = (0..3).find(|&i| i != leader && i != new_leader).unwrap();
    pump(&mut cores, &outboxes, &down, now, 4);
    for s in [new_leader, other] {
        let (v, _) = stores[s].get(b"leader").unwrap();
        assert_eq!(v.expect("the lease survived the change").value, b"node-a");
    }
    // Renewed through the new leader.
    for _ in 0..10 {
        now += Duration::from_millis(10);
        tick(&mut cores, now, &down);
        pump(&mut cores, &outboxes, &down, now, 4);
    }
    let r = write(
        &mut cores,
        now,
        new_leader,
        &down,
        WriteOp::LeaseKeepAlive { id: lease.id },
    );
    let WriteResult::Lease(Some(renewed)) = r else {
        panic!("{r:?}")
    };
    let renewed_at = now;
    // Now no keep-alive: the key ends with the lease, not before TTL on this clock.
    let mut gone = None;
    for _ in 0..600 {
        now += Duration::from_millis(10);
        tick(&mut cores, now, &down);
        pump(&mut cores, &outboxes, &down, now, 4);
        if [new_leader, other]
            .iter()
            .all(|&s| stores[s].get(b"leader").unwrap().0.is_none())
        {
            gone = Some(now);
            break;
        }
    }
    let gone = gone.expect("the key ends with its lease");
    assert!(
        wall(gone) >= wall(renewed_at) + TTL,
        "not before its time to live passed"
    );
    assert!(renewed.deadline >= wall(renewed_at) + TTL);
    assert!(stores[new_leader].lease(lease.id, 1).unwrap().0.is_none());
    pump(&mut cores, &outboxes, &down, now, 4);
    assert_eq!(
        stores[other].counters().unwrap(),
        stores[new_leader].counters().unwrap()
    );
}

/// A node cut off from the majority gives up the writes waiting on it, answering
/// "outcome unknown": they were proposed, and the majority may still decide them. Answered
/// "unavailable" instead (as a request refused before it was proposed is), a client
/// believes its write certainly failed, and the checkers see it applied.
#[test]
fn writes_given_up_as_refused_by_a_cut_off_node_are_caught() {
    let f = caught(Bug::GiveUpAsRefused, 40);
    assert!(
        matches!(
            f.kind,
            Kind::SetUnexpected | Kind::NotLinearizable | Kind::TransferLost
        ),
        "{f}"
    );
}

/// Steps every core and delivers what they sent, `rounds` times, except between a node
/// in `apart` and one outside it (a partition: both keep running).
fn pump_apart(
    cores: &mut [crate::node::Core<crate::storage::memory::MemStorage>],
    outboxes: &[net::Outbox],
    apart: &[usize],
    now: std::time::Instant,
    rounds: usize,
) {
    use crate::node::Event;
    let linked = |a: usize, b: usize| apart.contains(&a) == apart.contains(&b);
    for _ in 0..rounds {
        for c in cores.iter_mut() {
            c.step(now);
        }
        for (i, ob) in outboxes.iter().enumerate() {
            let sent = ob.take_all();
            for (config, m) in sent.msgs {
                let to = (m.get_receiver() - 1) as usize;
                if linked(i, to) {
                    cores[to].handle(Event::Peer { config, msg: m }, now);
                }
            }
            for (to, note) in sent.notes {
                let from = (i + 1) as u64;
                if linked(i, (to - 1) as usize) {
                    cores[(to - 1) as usize].handle(Event::Note { from, note }, now);
                }
            }
        }
    }
}

/// A leader cut off from both followers says so within one and a half election rounds:
/// the write waiting on it is answered "outcome unknown" and a new one is refused, long
/// before the request timeout. A write a follower forwarded to it as the partition began
/// is lost with the forward; the follower proposes it again as soon as the majority has a
/// new leader, not after `repropose_after` (an hour here). After the heal the old leader
/// serves again.
#[test]
fn a_cut_off_leader_refuses_and_a_lost_forward_goes_to_the_next_leader() {
    use crate::command::{KvCommand, WriteOp};
    use crate::error::Error;
    use crate::node::{CoreConfig, Event};
    use std::time::{Duration, Instant};
    use tokio::sync::oneshot;

    let (mut cores, outboxes, _stores) = three_cores_and_stores(|id| CoreConfig {
        request_timeout: Duration::from_secs(3600),
        repropose_after: Duration::from_secs(3600),
        ..one_core_config(id)
    });
    let tick = Duration::from_millis(10);
    let mut now = Instant::now();
    let step = |cores: &mut Vec<crate::node::Core<_>>, now: &mut Instant, apart: &[usize]| {
        *now += tick;
        for c in cores.iter_mut() {
            c.tick(*now);
        }
        pump_apart(cores, &outboxes, apart, *now, 3);
    };
    let mut leader = None;
    for _ in 0..500 {
        step(&mut cores, &mut now, &[]);
        leader = cores[0].status().leader;
        if leader.is_some() && cores.iter().all(|c| c.status().leader == leader) {
            break;
        }
    }
    let old = (leader.expect("a leader is elected") - 1) as usize;
    let follower = (old + 1) % 3;
    let put = |seq: u64, key: &str| {
        let cmd = KvCommand {
            client_id: 7,
            seq,
            op: WriteOp::Put {
                key: key.as_bytes().to_vec(),
                value: b"v".to_vec(),
                return_prev: false,
            },
            user: None,
        };
        let (reply, answer) = oneshot::channel();
        (
            Event::Write {
                cmd: cmd.encode(),
                reply,
            },
            answer,
        )
    };

    // The partition begins; a write arrives at the old leader, another at a follower,
    // which forwards it to the old leader (the forward is lost).
    let cut = now;
    let (ev, mut at_leader) = put(1, "a");
    cores[old].handle(ev, now);
    let (ev, mut forwarded) = put(2, "b");
    cores[follower].handle(ev, now);
    let (mut gave_up, mut elected, mut answered) = (None, None, None);
    while now < cut + Duration::from_secs(10) && (gave_up.is_none() || answered.is_none()) {
        step(&mut cores, &mut now, &[old]);
        if gave_up.is_none() {
            if let Ok(r) = at_leader.try_recv() {
                let Err(Error::OutcomeUnknown(why)) = r else {
                    panic!("the waiting write: {r:?}")
                };
                assert!(why.contains("cannot reach a majority"), "{why}");
                gave_up = Some(now - cut);
            }
        }
        let l = cores[follower].status().leader;
        if elected.is_none() && l.is_some_and(|l| l != old as u64 + 1) {
            elected = Some(now - cut);
        }
        if answered.is_none() {
            if let Ok(r) = forwarded.try_recv() {
                assert!(r.is_ok(), "the forwarded write: {r:?}");
                answered = Some(now - cut);
            }
        }
    }
    let round = tick * 10;
    let gave_up = gave_up.expect("the cut-off leader gives up the waiting write");
    assert!(gave_up <= round * 3 / 2 + tick, "gave up after {gave_up:?}");
    let elected = elected.expect("the majority elects a new leader");
    let answered = answered.expect("the lost forward is proposed again");
    assert!(
        answered <= elected + round,
        "answered {answered:?} after the cut, the new leader came at {elected:?}"
    );
    // A new request at the old leader is refused at once, with the reason.
    let (ev, mut refused) = put(3, "c");
    cores[old].handle(ev, now);
    let Ok(Err(Error::Unavailable(why))) = refused.try_recv() else {
        panic!("not refused at once")
    };
    assert!(why.contains("cannot reach a majority"), "{why}");

    // Healed: the old leader hears the others again and serves.
    for _ in 0..20 {
        step(&mut cores, &mut now, &[]);
    }
    let (ev, mut after) = put(4, "d");
    cores[old].handle(ev, now);
    for _ in 0..100 {
        step(&mut cores, &mut now, &[]);
        if let Ok(r) = after.try_recv() {
            assert!(r.is_ok(), "after the heal: {r:?}");
            return;
        }
    }
    panic!("no answer at the old leader after the heal");
}
