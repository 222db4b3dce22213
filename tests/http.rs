//! End-to-end tests of the HTTP/JSON API on a real 3-node cluster, with hand-written
//! HTTP/1.1 requests: the key-value endpoints and their JSON shapes, conditional writes,
//! sessions, error codes, cluster endpoints, metrics, linearizable reads across nodes, and
//! the OpenAPI validation by schemathesis (installed by `scripts/setup`).

mod common;
mod http_client;

use common::Cluster;
use http_client::{get, put, request, Resp};
use std::time::Duration;

fn ok_json(r: &Resp) -> serde_json::Value {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// Reads, writes, conditional writes, deletes and scans through different nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_endpoints_work_across_nodes() {
    let c = Cluster::start(3).await;
    let (a, b, n3) = (
        &c.nodes[0].http_addr,
        &c.nodes[1].http_addr,
        &c.nodes[2].http_addr,
    );

    let r = put(a, "/v1/kv/greeting", b"hello");
    let v1 = ok_json(&r)["version"].as_u64().expect("version");
    assert!(r.header("x-paxosdb-client-id").is_some() && r.header("x-paxosdb-seq") == Some("1"));

    // Linearizable read on another node sees the write at once.
    let g = ok_json(&get(b, "/v1/kv/greeting"));
    assert_eq!(g["key"], "greeting");
    assert_eq!(g["value"], "hello");
    assert_eq!(g["version"], v1);
    assert!(g["applied_index"].as_u64().unwrap() >= 1);
    assert_eq!(
        get(b, "/v1/kv/greeting").header("etag"),
        Some(format!("\"{v1}\"").as_str())
    );
    // A stale read on the third node catches up eventually and says so.
    common::eventually(
        Duration::from_secs(10),
        "stale read sees the write",
        || async {
            let r = get(n3, "/v1/kv/greeting?consistency=stale");
            (r.status == 200 && r.json()["value"] == "hello").then_some(())
        },
    )
    .await;

    // Compare-and-swap on the version, by query and by If-Match.
    let v2 = ok_json(&put(a, &format!("/v1/kv/greeting?cas={v1}"), b"world"))["version"]
        .as_u64()
        .unwrap();
    let r = put(b, &format!("/v1/kv/greeting?cas={v1}"), b"again");
    assert_eq!(
        (r.status, r.code()),
        (409, "compare_failed".into()),
        "{}",
        r.text()
    );
    let e = &r.json()["error"];
    assert_eq!(
        (e["version"].as_u64(), &e["current"]["value"]),
        (Some(v2), &"world".into())
    );
    let tag = format!("\"{v2}\"");
    let r = request(
        b,
        "PUT",
        "/v1/kv/greeting",
        &[("If-Match", &tag)],
        b"by etag",
    );
    let v3 = ok_json(&r)["version"].as_u64().unwrap();
    assert!(v3 > v2);
    assert_eq!(put(a, "/v1/kv/greeting?cas=0", b"x").status, 409);
    let r = request(a, "PUT", "/v1/kv/greeting", &[("If-None-Match", "*")], b"x");
    assert_eq!(r.status, 409);
    assert_eq!(put(a, "/v1/kv/fresh?cas=0", b"created").status, 200);
    let r = request(a, "PUT", "/v1/kv/absent", &[("If-Match", "*")], b"x");
    assert_eq!(
        (r.status, &r.json()["error"]["current"]),
        (409, &serde_json::Value::Null)
    );

    // Binary keys and values travel %-encoded in paths and base64 in JSON.
    assert_eq!(
        put(a, "/v1/kv/bin%00%FF", &[0, 0x9f, 0x92, 0x96]).status,
        200
    );
    let g = ok_json(&get(b, "/v1/kv/bin%00%ff"));
    assert_eq!(
        (&g["key_base64"], &g["value_base64"]),
        (&"YmluAP8=".into(), &"AJ+Slg==".into())
    );
    assert!(g.get("key").is_none() && g.get("value").is_none());
    // A key may contain slashes.
    assert_eq!(put(a, "/v1/kv/dir/sub/file", b"f").status, 200);
    assert_eq!(ok_json(&get(b, "/v1/kv/dir%2Fsub%2Ffile"))["value"], "f");

    // Delete: 200 either way; `deleted` says whether there was something.
    assert_eq!(
        ok_json(&request(b, "DELETE", "/v1/kv/greeting", &[], b""))["deleted"],
        true
    );
    assert_eq!(
        ok_json(&request(a, "DELETE", "/v1/kv/greeting", &[], b""))["deleted"],
        false
    );
    let r = get(n3, "/v1/kv/greeting");
    assert_eq!((r.status, r.code()), (404, "not_found".into()));

    // Scans by prefix and by range, with paging.
    for k in ["p/1", "p/2", "p/3", "q/1"] {
        assert_eq!(put(a, &format!("/v1/kv/{k}"), k.as_bytes()).status, 200);
    }
    let s = ok_json(&get(b, "/v1/kv?prefix=p%2F&limit=2"));
    let keys: Vec<_> = s["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["key"].clone())
        .collect();
    assert_eq!(
        (keys, &s["more"]),
        (vec!["p/1".into(), "p/2".into()], &true.into())
    );
    let s = ok_json(&get(n3, "/v1/kv?from=p/2&to=q/1"));
    let rows = s["items"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{s}");
    assert_eq!(
        (&rows[1]["key"], &rows[1]["value"], &s["more"]),
        (&"p/3".into(), &"p/3".into(), &false.into())
    );
    assert!(rows[0]["version"].as_u64().unwrap() > 0);
    let s = ok_json(&get(n3, "/v1/kv?prefix=p/&consistency=stale"));
    assert!(s["applied_index"].as_u64().is_some());

    // PUT via one node, GET via another, many times: always the latest value.
    for i in 0..20 {
        let (w, r) = (&c.nodes[i % 3].http_addr, &c.nodes[(i + 1) % 3].http_addr);
        let v = format!("v{i}");
        assert_eq!(put(w, "/v1/kv/lin", v.as_bytes()).status, 200);
        assert_eq!(
            ok_json(&get(r, "/v1/kv/lin"))["value"],
            v.as_str(),
            "round {i}"
        );
    }
}

/// Sessions, input validation and error shapes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_and_errors() {
    let c = Cluster::start(3).await;
    let (a, b) = (&c.nodes[0].http_addr, &c.nodes[1].http_addr);

    // A retry with the same session is applied at most once and gets the first answer.
    let sess = [("X-Paxosdb-Client-Id", "4242"), ("X-Paxosdb-Seq", "1")];
    let first = ok_json(&request(a, "PUT", "/v1/kv/s", &sess, b"one"))["version"].clone();
    let retry = request(b, "PUT", "/v1/kv/s", &sess, b"one");
    assert_eq!(ok_json(&retry)["version"], first);
    assert_eq!(retry.header("x-paxosdb-client-id"), Some("4242"));
    // The same session for a different write is refused, not answered with the first
    // write's result (which would silently drop this one).
    let reuse = request(b, "PUT", "/v1/kv/s", &sess, b"two");
    assert_eq!((reuse.status, reuse.code()), (400, "session_reused".into()));
    assert_eq!(ok_json(&get(b, "/v1/kv/s"))["value"], "one");
    let r = request(a, "DELETE", "/v1/kv/s", &sess, b"");
    assert_eq!(
        (r.status, r.code()),
        (400, "session_reused".into()),
        "{}",
        r.text()
    );
    let r = request(a, "PUT", "/v1/kv/s", &[("X-Paxosdb-Client-Id", "1")], b"x");
    assert_eq!((r.status, r.code()), (400, "invalid_input".into()));

    let bad = |path: &str| {
        let r = get(a, path);
        assert_eq!(
            (r.status, r.code()),
            (400, "invalid_input".into()),
            "{path}: {}",
            r.text()
        );
    };
    bad("/v1/kv?limit=0");
    bad("/v1/kv?limit=abc");
    bad("/v1/kv?limit=10001");
    // Contradictions are not errors: an inverted range is empty, and contradictory
    // conditions are a failed compare.
    let empty = ok_json(&get(a, "/v1/kv?from=b&to=a"));
    assert_eq!(empty["items"], serde_json::json!([]));
    let both = [("If-Match", "*"), ("If-None-Match", "*")];
    assert_eq!(request(a, "PUT", "/v1/kv/s", &both, b"x").status, 409);
    bad("/v1/kv?colour=red");
    bad("/v1/kv/k?consistency=eventual");
    bad("/v1/kv/k%zz");
    bad("/v1/kv/");
    let r = put(a, "/v1/kv/k?cas=-1", b"x");
    assert_eq!(r.status, 400);
    let r = request(a, "PUT", "/v1/kv/k", &[("If-Match", "\"1\", \"2\"")], b"x");
    assert_eq!(r.status, 400);
    let r = request(a, "DELETE", "/v1/kv/s", &[("If-Match", "\"1\"")], b"");
    assert_eq!(
        (r.status, r.code()),
        (400, "invalid_input".into()),
        "{}",
        r.text()
    );

    // Too large: keys over 4 KiB, values over 1 MiB (refused before the body is read).
    let long = "k".repeat(5000);
    let r = get(a, &format!("/v1/kv/{long}"));
    assert_eq!((r.status, r.code()), (413, "too_large".into()));
    let wire = "PUT /v1/kv/big HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\nConnection: close\r\n\r\n";
    let r = http_client::raw(a, wire.as_bytes());
    assert_eq!((r.status, r.code()), (413, "too_large".into()));
    let mut wire = b"PUT /v1/kv/big HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..20 {
        wire.extend_from_slice(format!("{:x}\r\n", 100_000).as_bytes());
        wire.extend(std::iter::repeat_n(b'v', 100_000));
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(http_client::raw(a, &wire).status, 413);
    let r = put(a, "/v1/kv/big", &vec![b'v'; 16 * 1024]);
    assert_eq!(r.status, 200, "{}", r.text());

    // Unknown routes and methods answer JSON too.
    let r = get(a, "/nope");
    assert_eq!((r.status, r.code()), (404, "not_found".into()));
    let r = request(a, "PATCH", "/v1/kv/k", &[], b"");
    assert_eq!(r.status, 405);
    assert!(
        r.header("allow").is_some_and(|h| h.contains("PUT")),
        "{:?}",
        r.headers
    );

    // Without a quorum: writes and reads are 503 with a retry hint, readyz is 503, and
    // healthz still 200.
    let mut c = c;
    c.kill(2);
    c.kill(3);
    let a = c.nodes[0].http_addr.clone();
    let r = get(&a, "/readyz");
    assert_eq!(
        (r.status, r.code()),
        (503, "not_ready".into()),
        "{}",
        r.text()
    );
    assert_eq!(get(&a, "/healthz").status, 200);
    let r = put(&a, "/v1/kv/k", b"x");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        ["unavailable", "outcome_unknown"].contains(&r.code().as_str()),
        "{}",
        r.text()
    );
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(r.header("x-paxosdb-seq").is_some());
    let r = get(&a, "/v1/kv/k");
    assert_eq!(
        (r.status, r.code()),
        (503, "unavailable".into()),
        "{}",
        r.text()
    );
    assert_eq!(
        ok_json(&get(&a, "/v1/kv/s?consistency=stale"))["value"],
        "one"
    );
}

/// Status, health, readiness, metrics and the OpenAPI document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_endpoints_and_metrics() {
    let c = Cluster::start(3).await;
    let a = &c.nodes[0].http_addr;
    assert_eq!(ok_json(&get(a, "/healthz"))["status"], "ok");
    // Ready once a read barrier completes within its second (right after the start, the
    // first one may still wait for the new leader to settle).
    for n in &c.nodes {
        let addr = n.http_addr.clone();
        common::eventually(Duration::from_secs(20), "the node is ready", || {
            let addr = addr.clone();
            async move {
                let r = get(&addr, "/readyz");
                (r.status == 200).then(|| ok_json(&r))
            }
        })
        .await;
    }
    let st = ok_json(&get(a, "/v1/status"));
    assert_eq!(st["id"], 1);
    // A loaded machine may hold an election right after the start: candidate is a role too.
    assert!(
        ["leader", "follower", "candidate"].contains(&st["role"].as_str().unwrap()),
        "{st}"
    );
    assert!(st["leader"].as_u64().is_some());
    assert_eq!(st["members"].as_array().unwrap().len(), 3);
    let listeners = st["listeners"].as_array().unwrap();
    assert!(
        listeners
            .iter()
            .any(|l| l["name"] == "http" && l["addr"] == a.as_str()),
        "{st}"
    );

    assert_eq!(put(a, "/v1/kv/m", b"1").status, 200);
    assert_eq!(get(a, "/v1/kv/m").status, 200);
    // Kept open until the scrape: its connection is counted under the gRPC listener.
    let grpc = c.client_for(1);
    grpc.put(b"via-grpc", b"1", false).await.expect("gRPC put");
    let m = get(a, "/metrics");
    drop(grpc);
    assert_eq!(m.status, 200);
    assert!(m.header("content-type").unwrap().starts_with("text/plain"));
    let text = m.text();
    for needle in [
        "paxosdb_requests_total{protocol=\"http\",op=\"put\"} 1\n",
        "paxosdb_requests_total{protocol=\"http\",op=\"get\"} 1\n",
        "paxosdb_requests_total{protocol=\"grpc\",op=\"put\"}",
        "paxosdb_request_duration_seconds_bucket{protocol=\"http\",op=\"put\",le=\"+Inf\"} 1\n",
        "# TYPE paxosdb_fsync_duration_seconds histogram",
        "paxosdb_leader_changes_total ",
        "paxosdb_decided_index ",
        "paxosdb_log_entries ",
        "paxosdb_rocksdb_bytes ",
        "# TYPE paxosdb_log_disk_bytes gauge\n",
        "paxosdb_log_disk_bytes ",
    ] {
        assert!(text.contains(needle), "metrics lack {needle:?}:\n{text}");
    }
    let sample = |name: &str| -> f64 {
        let line = text.lines().find(|l| l.starts_with(name)).expect(name);
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(sample("paxosdb_fsync_duration_seconds_count") > 0.0);
    assert!(sample("paxosdb_applied_index ") >= 2.0);
    assert!(sample("paxosdb_leader_changes_total ") >= 1.0);
    // The log column family holds the entries just written (in its memtable at least).
    assert!(sample("paxosdb_log_disk_bytes ") > 0.0);
    // The process, under Prometheus' standard names, and the build.
    assert!(sample("process_resident_memory_bytes ") > 1e6);
    assert!(sample("process_cpu_seconds_total ") > 0.0);
    assert!(sample("process_open_fds ") >= 10.0);
    let build = format!(
        "paxosdb_build_info{{version=\"{}\"}} 1\n",
        env!("CARGO_PKG_VERSION")
    );
    assert!(text.contains(&build), "{text}");
    // Connections by listener: this scrape's own, and the gRPC client's.
    assert!(sample("paxosdb_client_connections{listener=\"http\"} ") >= 1.0);
    assert!(sample("paxosdb_client_connections{listener=\"grpc\"} ") >= 1.0);
    assert_eq!(
        sample("paxosdb_client_connections{listener=\"resp\"} "),
        0.0
    );
    assert_eq!(
        sample("paxosdb_state_transfers_total{outcome=\"started\"} "),
        0.0
    );
    assert!(text.contains("# TYPE paxosdb_overload_refusals_total counter\n"));
    // Node 1's queues toward its two peers, and none toward itself.
    for peer in [2, 3] {
        assert!(sample(&format!("paxosdb_peer_queue_bytes{{peer=\"{peer}\"}} ")) >= 0.0);
    }
    assert!(
        !text.contains("paxosdb_peer_queue_bytes{peer=\"1\"}"),
        "{text}"
    );
    // Prometheus' own linter finds nothing to say about the exposition.
    let mut check = common::tools::tool("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}",
        common::tools::text(&out)
    );

    // What the status page reads: any origin may; and the page itself.
    let st = get(a, "/v1/status");
    assert_eq!(st.header("access-control-allow-origin"), Some("*"));
    let events = ok_json(&get(a, "/v1/events"));
    let leads = (events["events"].as_array().unwrap().iter())
        .any(|e| e["kind"] == "leader" && e["message"].as_str().unwrap().ends_with(" leads"));
    assert!(leads, "no leader event: {events}");
    let history = ok_json(&get(a, "/v1/history"));
    assert_eq!(history["interval_ms"], 5000, "{history}");
    assert!(
        !history["samples"].as_array().unwrap().is_empty(),
        "{history}"
    );
    let page = get(a, "/");
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(page.text().contains("/v1/history"), "the status page");
    assert_eq!(
        get(a, "/v1/kv/m").header("access-control-allow-origin"),
        None
    );

    let doc = ok_json(&get(a, "/openapi.json"));
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert!(doc["paths"]["/v1/kv/{key}"]["put"].is_object());
}

/// Validates the server against `docs/openapi.json` with schemathesis (`--checks all`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_conformance_with_schemathesis() {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import schemathesis"])
        .status();
    assert!(
        probe.is_ok_and(|s| s.success()),
        "schemathesis is not installed: run scripts/setup (python3 -m pip install schemathesis)"
    );
    let c = Cluster::start(3).await;
    let base = format!("http://{}", c.nodes[0].http_addr);
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/schemathesis.toml");
    // positive_data_acceptance is left out: the API has rules OpenAPI 3 cannot state (the
    // two session headers come together or not at all), so schema-valid requests may
    // rightly get a 400. Every other check runs.
    let st = "import sys; from schemathesis.cli import schemathesis; \
              sys.argv[0] = 'st'; sys.exit(schemathesis())";
    let out = tokio::process::Command::new("python3")
        .args(["-c", st, "--no-color", "--config-file", config, "run"])
        .args([&format!("{base}/openapi.json"), "--url", &base])
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ])
        // The user endpoints are left out: a user made by a generated request switches
        // the cluster to authenticated mode and every later request would get a 401.
        // tests/e2e_auth.rs covers them with real credentials.
        .args(["--exclude-path-regex", "^/v1/users"])
        .args(["--max-examples", "20", "--seed", "1", "--workers", "1"])
        .args(["--request-timeout", "15", "--generation-database", "none"])
        .current_dir(c.dir.path())
        .output()
        .await
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "schemathesis failed:\n{stdout}\n{stderr}\nnode 1 log:\n{}",
        c.log_of(1)
    );
}
