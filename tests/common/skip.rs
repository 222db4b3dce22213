//! Tests that cannot run here say so, and are counted as skipped, never as passed.
//!
//! libtest has no run-time skip: a test that returns early is reported `ok`. So a test
//! that finds it cannot run calls [`skip`] and returns; [`skip`] prints the reason and,
//! when `PAXOSDB_SKIP_DIR` is set (`scripts/test` sets it), appends a line to
//! `$PAXOSDB_SKIP_DIR/skipped`. `scripts/test` lists those lines above its summary and
//! counts each as skipped instead of passed.
//!
//! Invariants:
//! - a test that calls [`skip`] returns right after it and asserts nothing (otherwise it
//!   would be counted as skipped while it did check something, or passed while skipped);
//! - what root can always do here (iptables partitions: `scripts/setup` installs
//!   iptables) is never skipped as root: [`skip_unless_root`] fails the test instead, so a
//!   CI run (root) that lost its partition tests fails rather than passing quietly;
//! - a test that ran but left part of its faults out records it with [`partly_skipped`]
//!   (listed, not counted: the test did run and check the rest), or fails as root.
//!
//! A line of the file is `<kind>\t<crate>::<test>\t<reason>`, kind `skip` or `partial`;
//! the reason has no tab or newline.

use std::io::Write;
use std::path::Path;

/// True if this process runs as root (effective uid 0).
pub fn running_as_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        .unwrap_or(false)
}

fn record(kind: &str, test: &str, why: &str) {
    let dir = std::env::var_os("PAXOSDB_SKIP_DIR");
    record_in(dir.as_ref().map(Path::new), kind, test, why);
}

/// Prints the skip and appends its line to `dir`'s `skipped` file, if there is a `dir`.
pub fn record_in(dir: Option<&Path>, kind: &str, test: &str, why: &str) {
    let crate_name = env!("CARGO_CRATE_NAME");
    let why: String = why
        .chars()
        .map(|c| if c == '\t' || c == '\n' { ' ' } else { c })
        .collect();
    eprintln!("{kind}: {crate_name}::{test}: {why}");
    let Some(dir) = dir else {
        return;
    };
    let path = dir.join("skipped");
    let line = format!("{kind}\t{crate_name}::{test}\t{why}\n");
    // One write of one short line to a file opened for appending: lines of tests running
    // in parallel do not interleave.
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        // Not recorded means counted as passed: that must not happen silently.
        panic!("{test} skips ({why}) but cannot record it in {path:?}: {e}");
    }
}

/// Records that `test` cannot run here, and why. The caller returns right after.
pub fn skip(test: &str, why: &str) {
    record("skip", test, why);
}

/// Like [`skip`], for what must run as root: as root it panics with the reason (something
/// the setup provides is broken); otherwise the test is skipped. The caller returns right
/// after.
pub fn skip_unless_root(test: &str, why: &str) {
    if running_as_root() {
        panic!("{test} would be skipped, but it must run as root: {why}");
    }
    skip(test, why);
}

/// `test` ran, but left out parts, each with its reason (`parts`: e.g. a nemesis run's
/// `skipped` list). Nothing left out: nothing happens. As root a left-out part fails the
/// test (the only parts tests leave out are partitions, which root can do).
pub fn partly_skipped(test: &str, parts: &[String]) {
    if parts.is_empty() {
        return;
    }
    if running_as_root() {
        panic!(
            "{test} left out {}, but as root it must not: {}",
            parts.len(),
            parts.join("; ")
        );
    }
    record("partial", test, &parts.join("; "));
}
