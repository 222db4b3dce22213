//! `paxosdb bench --target etcd` against a real etcd (the one `scripts/bench-etcd` compares
//! with): its writes land in etcd as etcd's own API stores them, its reads are answered,
//! and a workload etcd cannot run is refused before anything is sent.
//!
//! etcd is a dependency of the benchmark only (Debian's `etcd-server`, which the script
//! installs): where it is not installed, the test that needs it records a skip.
//!
//! Invariants:
//! - the etcd started here listens on ports of the shared registry, in a temporary
//!   directory, and is killed when the test ends, passed or failed.

mod common;

use base64::Engine;
use common::tools::{curl, installed, text};
use common::{eventually, free_ports, skip, BIN};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// An etcd process, killed on drop.
struct Etcd {
    child: Child,
    client: String,
    _dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A one-member etcd cluster on loopback, ready to serve.
async fn start_etcd() -> Etcd {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(2);
    let client = format!("127.0.0.1:{}", ports[0]);
    let peer = format!("http://127.0.0.1:{}", ports[1]);
    let child = Command::new("etcd")
        .args(["--name", "e1", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--listen-client-urls", &format!("http://{client}")])
        .args(["--advertise-client-urls", &format!("http://{client}")])
        .args(["--listen-peer-urls", &peer])
        .args(["--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("e1={peer}")])
        .args(["--logger", "zap", "--log-level", "error"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start etcd");
    let etcd = Etcd {
        child,
        client,
        _dir: dir,
    };
    let health = format!("http://{}/health", etcd.client);
    eventually(Duration::from_secs(30), "etcd healthy", || {
        let (code, body) = curl(&[&health]);
        std::future::ready((code == 200 && body.contains("true")).then_some(()))
    })
    .await;
    etcd
}

/// The value of `key` in etcd, read through etcd's JSON gateway (not through the
/// benchmark's client), or None if absent.
fn etcd_value(etcd: &Etcd, key: &str) -> Option<Vec<u8>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let body = format!(r#"{{"key":"{}"}}"#, b64.encode(key));
    let (code, reply) = curl(&[
        "-X",
        "POST",
        "-d",
        &body,
        &format!("http://{}/v3/kv/range", etcd.client),
    ]);
    assert_eq!(code, 200, "range {key}: {reply}");
    let v: serde_json::Value = serde_json::from_str(&reply).expect("JSON reply");
    let value = v["kvs"].get(0)?["value"].as_str().unwrap_or("");
    Some(b64.decode(value).expect("base64 value"))
}

/// `paxosdb bench --target etcd --endpoints ENDPOINT ARGS...`.
fn bench(endpoint: &str, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(["bench", "--target", "etcd", "--endpoints", endpoint])
        .args(args)
        .output()
        .expect("run paxosdb bench")
}

#[tokio::test]
async fn bench_target_etcd_writes_and_reads_through_etcds_api() {
    let name = "bench_target_etcd_writes_and_reads_through_etcds_api";
    if !installed("etcd") {
        skip(
            name,
            "etcd is not installed (Debian's etcd-server; scripts/bench-etcd installs it)",
        );
        return;
    }
    let etcd = start_etcd().await;
    assert_eq!(etcd_value(&etcd, "bench-00000099"), None);

    // 100 writes of keys 0..99 in order, 48-byte values.
    let out = bench(
        &etcd.client,
        &[
            "--ops",
            "100",
            "--sequential-keys",
            "--keys",
            "100",
            "--concurrency",
            "4",
            "--value-size",
            "48",
        ],
    );
    let t = text(&out);
    assert!(out.status.success(), "bench writes: {t}");
    assert!(t.contains("target=Etcd"), "{t}");
    assert!(t.contains("ops=100 (0 reads, 100 writes) errors=0"), "{t}");
    for k in ["bench-00000000", "bench-00000057", "bench-00000099"] {
        let v = etcd_value(&etcd, k).unwrap_or_else(|| panic!("{k} was not written: {t}"));
        assert_eq!(v.len(), 48, "{k}");
    }
    assert_eq!(etcd_value(&etcd, "bench-00000100"), None, "beyond --keys");

    // Linearizable reads (Range, serializable = false), then serializable ones.
    for stale in [false, true] {
        let mut args = vec!["--ops", "50", "--keys", "100", "--read-ratio", "1"];
        if stale {
            args.push("--stale");
        }
        let out = bench(&etcd.client, &args);
        let t = text(&out);
        assert!(out.status.success(), "bench reads (stale: {stale}): {t}");
        assert!(t.contains("ops=50 (50 reads, 0 writes) errors=0"), "{t}");
    }

    // Once etcd is gone, every operation fails: the figures count only answered ones,
    // and the exit status says so.
    let endpoint = etcd.client.clone();
    drop(etcd);
    let out = bench(&endpoint, &["--ops", "3", "--concurrency", "1"]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("ops=0 (0 reads, 3 writes) errors=3"), "{t}");
}

#[test]
fn bench_target_etcd_refuses_sql_workloads() {
    // No etcd needed: the refusal comes before any connection (the endpoint is closed).
    let port = free_ports(1)[0];
    let out = Command::new(BIN)
        .args(["bench", "--target", "etcd", "--endpoints"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["--workload", "sql-insert", "--ops", "1"])
        .output()
        .expect("run paxosdb bench");
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("--target etcd runs --workload kv only"), "{t}");
    assert!(!t.contains("ops="), "nothing was run: {t}");
}
