//! The test support itself: a run-time skip is recorded with its reason, `scripts/test`'s
//! summary counts it as skipped and not as passed, and as root a partition skip fails.

mod common;

use std::process::Command;

const SUMMARY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/test-summary");

/// Runs `scripts/test-summary` on a skip file and a `cargo test` log; its output.
fn summary(skips: &str, log: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let (s, l) = (dir.path().join("skipped"), dir.path().join("log"));
    std::fs::write(&s, skips).unwrap();
    std::fs::write(&l, log).unwrap();
    let out = Command::new(SUMMARY).arg(&s).arg(&l).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

const LOG: &str = "\
     Running unittests src/lib.rs (/t/debug/deps/paxosdb-1)

running 3 tests
test a ... ok
test sim::tests::replay ... ignored, a tool, not a check
test b ... ok

test result: ok. 2 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.1s

     Running tests/nemesis.rs (/t/debug/deps/nemesis-2)

running 4 tests
test partition ... ok
test five_nodes ... ok
test chain ... ok
test stale ... FAILED

test result: FAILED. 3 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1s
";

#[test]
fn the_summary_counts_run_time_skips_as_skipped_not_passed() {
    let skips = "skip\tnemesis::partition\tiptables does not work here\n\
                 partial\tnemesis::five_nodes\tpartition nemesis: no root\n\
                 skip\tscripts/fuzz\tcargo-fuzz could not be installed\n";
    assert_eq!(
        summary(skips, LOG),
        "skipped: nemesis::partition: iptables does not work here\n\
         partly skipped (counted as run): nemesis::five_nodes: partition nemesis: no root\n\
         skipped: scripts/fuzz: cargo-fuzz could not be installed\n\
         skipped: paxosdb::sim::tests::replay: ignored: a tool, not a check\n\
         tests: 4 passed, 1 failed, 3 skipped\n"
    );
}

#[test]
fn without_run_time_skips_the_summary_is_libtests_counts() {
    assert_eq!(
        summary("", LOG),
        "skipped: paxosdb::sim::tests::replay: ignored: a tool, not a check\n\
         tests: 5 passed, 1 failed, 1 skipped\n"
    );
}

#[test]
fn a_skip_is_recorded_with_its_test_and_reason_on_one_line() {
    let dir = tempfile::tempdir().unwrap();
    common::skip::record_in(Some(dir.path()), "skip", "t1", "no\ttool\nhere");
    common::skip::record_in(Some(dir.path()), "partial", "t2", "part");
    let file = std::fs::read_to_string(dir.path().join("skipped")).unwrap();
    assert_eq!(
        file,
        "skip\ttest_support::t1\tno tool here\npartial\ttest_support::t2\tpart\n"
    );
}

#[test]
fn running_as_root_agrees_with_id() {
    let out = Command::new("id").arg("-u").output().expect("run id -u");
    let uid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(common::running_as_root(), uid == "0", "id -u says {uid}");
}

/// As root, what root must be able to run cannot be skipped, wholly or in part: the test
/// fails with the reason.
#[test]
fn as_root_a_skip_of_a_partition_test_fails() {
    let test = "as_root_a_skip_of_a_partition_test_fails";
    if !common::running_as_root() {
        common::skip(test, "shows what happens as root; not root here");
        return;
    }
    let why = |r: std::thread::Result<()>| -> String {
        let p = r.expect_err("did not fail as root");
        p.downcast_ref::<String>().cloned().unwrap_or_default()
    };
    let e = why(std::panic::catch_unwind(|| {
        common::skip_unless_root("t", "iptables is not installed")
    }));
    assert!(
        e.contains("must run as root: iptables is not installed"),
        "{e}"
    );
    let e = why(std::panic::catch_unwind(|| {
        common::partly_skipped("t", &["partition nemesis: no chain".to_string()])
    }));
    assert!(e.contains("partition nemesis: no chain"), "{e}");
    // Nothing left out is not a skip.
    common::partly_skipped("t", &[]);
}
