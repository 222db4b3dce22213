//! The README's sessions against a 3-node cluster, run as written: each block marked
//! `<!-- readme-test: NAME -->` is a `console` block of `$ command` lines, each followed
//! by what it prints. For each block a fresh `paxosdb cluster up` starts in a temporary
//! directory on the README's ports (the sessions are written for a fresh cluster), every
//! command runs in `sh` there (after the block's `export` lines), and its standard output
//! must match the lines shown. In the expected lines, `...` alone stands for any number
//! of lines, and `...` inside a line for any text (what differs from run to run: process
//! ids, timings). `redis-cli` prints replies without their terminal decoration when its
//! output is not a terminal; the README shows the terminal form, turned into the piped
//! form here.
//!
//! The ports are the README's (node N's gRPC 7000+N, HTTP 8079+N, Redis 6378+N, peer
//! 7100+N), as in `e2e_single_node.rs`'s quickstart test, which runs in another test
//! binary (cargo runs binaries one after the other).

mod common;

use common::readme::{block, line_matches, lines_match, piped_redis, shell};
use std::process::{Child, Stdio};
use std::time::Duration;

/// `paxosdb cluster up`, stopped as its user stops it when dropped: SIGTERM, which it
/// passes on to its nodes (each in a process group of its own) before it exits.
struct Up(Child);

impl Drop for Up {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}

/// Runs block `name` against a fresh `paxosdb cluster up`.
async fn run_block(readme: &str, name: &str) {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("cluster-up.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let up = Up(shell(dir.path(), "exec paxosdb cluster up")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("paxosdb cluster up"));
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let env = "export PAXOSDB_CACERT=$PWD/paxosdb-data/tls/ca.pem \
               PAXOSDB_PASSWORD_FILE=$PWD/paxosdb-data/admin-password";
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let probe = format!("{env}; paxosdb get readme-probe --timeout 2s");
        let out = shell(dir.path(), &probe).output().unwrap();
        // "not found": the cluster answers (and the key is missing).
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.code() == Some(1) && err.contains("not found") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "block {name}: the cluster does not serve: {err}\ncluster log:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut exports = String::from(":");
    for (cmd, want) in block(readme, name) {
        if cmd.starts_with("export ") {
            // One line each: a command may end in a comment.
            exports = format!("{exports}\n{cmd}");
            continue;
        }
        let line = format!("{exports}\n{cmd}");
        let out = tokio::task::spawn_blocking({
            let dir = dir.path().to_path_buf();
            move || shell(&dir, &line).stdin(Stdio::null()).output()
        })
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
        let mut got: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim_end().to_string())
            .collect();
        let want: Vec<String> = if cmd.starts_with("redis-cli") {
            want.iter()
                .map(|l| {
                    if l == "..." {
                        l.clone()
                    } else {
                        piped_redis(l)
                    }
                })
                .collect()
        } else {
            want
        };
        // Blank lines at the end say nothing (`redis-cli` ends some replies with one).
        let mut want = want;
        for v in [&mut want, &mut got] {
            while v.last().is_some_and(|l| l.is_empty()) {
                v.pop();
            }
        }
        assert!(
            lines_match(&want, &got),
            "README block {name}, command:\n$ {cmd}\nwant:\n{}\ngot (exit {:?}):\n{}\nstderr:\n{}\ncluster log:\n{}",
            want.join("\n"),
            out.status.code(),
            got.join("\n"),
            String::from_utf8_lossy(&out.stderr),
            log()
        );
    }
    drop(up);
}

/// The CLI session of "Using the CLI", the redis-cli session of "Redis protocol" and the
/// curl session of "HTTP API", each on a fresh cluster, as a user pastes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_cluster_sessions_run_as_written() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    for name in ["cluster-cli", "cluster-redis", "cluster-curl"] {
        run_block(&readme, name).await;
    }
}

/// The matching rules themselves.
#[test]
fn wildcards_and_redis_replies() {
    assert!(line_matches("a...c", "abbbc"));
    assert!(line_matches("{\"v\":...}", "{\"v\":12}"));
    assert!(line_matches("a...b...c", "a1b2c"));
    assert!(!line_matches("a...c", "abbb"));
    assert!(line_matches("...", "anything"));
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert!(lines_match(
        &s(&["a", "...", "z"]),
        &s(&["a", "b", "c", "z"])
    ));
    assert!(lines_match(&s(&["a", "..."]), &s(&["a"])));
    assert!(!lines_match(&s(&["a", "z"]), &s(&["a", "b", "z"])));
    assert_eq!(piped_redis("1) \"ada\""), "ada");
    assert_eq!(piped_redis("2) (integer) 6"), "6");
    assert_eq!(piped_redis("(integer) 42"), "42");
    assert_eq!(piped_redis("(nil)"), "");
    assert_eq!(piped_redis("(error) ERR no"), "ERR no");
    assert_eq!(piped_redis("OK"), "OK");
}
