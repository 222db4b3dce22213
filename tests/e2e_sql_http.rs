//! The rqlite-compatible SQL API (`/db/execute`, `/db/query`, `/db/request`) on real
//! processes with real clients: rqlite's own Python clients from PyPI, unchanged —
//! pyrqlite (DB-API) and SQLAlchemy with the sqlalchemy-rqlite dialect, scripts in
//! `tests/python/` — and curl for the wire shapes, errors and authorization.
//!
//! What must hold: the clients create tables, insert with parameters, select and run an
//! ORM session round-trip; a failed statement in a transaction rolls back the whole
//! request; a malformed request runs nothing; reads need any role, writes `readwrite`,
//! and a key-prefix user gets no SQL.
//!
//! A Python client that is not installed (`scripts/setup` installs them) makes its test a
//! recorded skip, never a pass.

mod common;

use common::tools::{curl, port};
use common::{eventually, skip, Cluster};
use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;

/// POSTs a JSON body to `http://addr{path}` (extra curl args first): (status, body).
fn post(addr: &str, path: &str, extra: &[&str], body: &str) -> (u16, String) {
    let url = format!("http://{addr}{path}");
    let mut args: Vec<&str> = extra.to_vec();
    args.extend([
        "-XPOST",
        &url,
        "-H",
        "Content-Type: application/json",
        "-d",
        body,
    ]);
    curl(&args)
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// The status and parsed body, asserting the status is `want`.
fn expect(want: u16, (status, body): (u16, String)) -> Value {
    assert_eq!(status, want, "{body}");
    json_of(&body)
}

/// Whether python3 can import every one of `modules`.
fn importable(modules: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs `tests/python/<script>` on a fresh 3-node cluster (through node 1's HTTP
/// listener); asserts it succeeded and printed `ok`. Records a skip of `test` instead
/// when python3 cannot import `modules` (`missing` says why).
async fn run_script(test: &str, modules: &str, missing: &str, script: &str) {
    if !importable(modules) {
        skip(test, missing);
        return;
    }
    let c = Cluster::start(3).await;
    let path = format!("{}/tests/python/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .args([&path, "127.0.0.1", port(&c.nodes[0].http_addr)])
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(": ok"),
        "{script} failed:\n{stdout}\n{}\nnode log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.log_of(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyrqlite_dbapi_works_unchanged() {
    run_script(
        "pyrqlite_dbapi_works_unchanged",
        "pyrqlite",
        "pyrqlite is not installed (scripts/setup installs it from PyPI)",
        "rqlite_dbapi.py",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlalchemy_rqlite_orm_round_trip() {
    run_script(
        "sqlalchemy_rqlite_orm_round_trip",
        "sqlalchemy, sqlalchemy_rqlite",
        "SQLAlchemy or sqlalchemy-rqlite is not installed (scripts/setup installs them from PyPI)",
        "rqlite_sqlalchemy.py",
    )
    .await;
}

/// rqlite's request and result shapes as curl sees them, transactions, and refusals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rqlite_shapes_transactions_and_refusals_over_curl() {
    let c = Cluster::start_with(3, &[("PAXOSDB_MAX_VALUE_SIZE", "65536")]).await;
    let a = c.nodes[0].http_addr.clone();

    let r = expect(
        200,
        post(
            &a,
            "/db/execute",
            &[],
            r#"["CREATE TABLE foo (id INTEGER PRIMARY KEY, name TEXT, age INTEGER, score REAL, data BLOB)",
               ["INSERT INTO foo(name, age, score, data) VALUES(?, ?, ?, ?)", "fiona", 20, 1.0, "x'0001ff'"],
               ["INSERT INTO foo(name, age, score) VALUES(:name, :age, :score)", {"name": "declan", "age": 25, "score": 2.5}]]"#,
        ),
    );
    assert_eq!(
        r,
        json!({"results": [{}, {"last_insert_id": 1, "rows_affected": 1}, {"last_insert_id": 2, "rows_affected": 1}]})
    );

    // GET with q=, the standard form: declared types, REAL with its fraction, BLOB base64.
    let (status, body) = curl(&[
        "-G",
        &format!("http://{a}/db/query"),
        "--data-urlencode",
        "q=SELECT id, name, score, data, age * 2 FROM foo ORDER BY id",
    ]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("[1,\"fiona\",1.0,\"AAH/\",40]"), "{body}");
    assert_eq!(
        json_of(&body),
        json!({"results": [{
            "columns": ["id", "name", "score", "data", "age * 2"],
            "types": ["integer", "text", "real", "blob", "integer"],
            "values": [[1, "fiona", 1.0, "AAH/", 40], [2, "declan", 2.5, null, 50]],
        }]})
    );

    // POST /db/query, associative, with a positional parameter and timings.
    let r = expect(
        200,
        post(
            &a,
            "/db/query?associative&timings&level=strong&db_timeout=5s&redirect",
            &[],
            r#"[["SELECT name FROM foo WHERE age > ?", 21], "SELECT count(*) AS n FROM foo WHERE 0"]"#,
        ),
    );
    assert_eq!(
        r["results"],
        json!([{"types": {"name": "text"}, "rows": [{"name": "declan"}]},
               {"types": {"n": "integer"}, "rows": [{"n": 0}]}])
    );
    assert!(r["time"].as_f64().is_some_and(|t| t > 0.0), "{r}");

    // A query may not write.
    let r = expect(200, post(&a, "/db/query", &[], r#"["DELETE FROM foo"]"#));
    assert!(r["results"][0]["error"].is_string(), "{r}");

    // A failed statement in a transaction rolls the whole request back.
    let r = expect(
        200,
        post(
            &a,
            "/db/execute?transaction",
            &[],
            r#"["INSERT INTO foo(id, name) VALUES(10, 'a')", "INSERT INTO foo(id, name) VALUES(1, 'dup')", "INSERT INTO foo(id, name) VALUES(11, 'b')"]"#,
        ),
    );
    let err = r["results"][1]["error"].as_str().unwrap_or_default();
    assert!(err.contains("UNIQUE"), "{r}");
    // Without a transaction, statements stand alone: the good one stays.
    let r = expect(
        200,
        post(
            &a,
            "/db/execute",
            &[],
            r#"["INSERT INTO foo(id, name) VALUES(1, 'dup')", "INSERT INTO foo(id, name) VALUES(12, 'c')"]"#,
        ),
    );
    assert!(r["results"][0]["error"].is_string(), "{r}");
    assert_eq!(
        r["results"][1],
        json!({"last_insert_id": 12, "rows_affected": 1})
    );

    // The unified endpoint: a mixed request runs in order through the log (the read sees
    // the write); a read-only one runs as a query (the applied index header).
    let (status, body) = curl(&[
        "-i",
        "-XPOST",
        &format!("http://{a}/db/request?transaction&associative"),
        "-d",
        r#"[["INSERT INTO foo(id, name) VALUES(?, ?)", 13, "d"], "SELECT id FROM foo WHERE id >= 10 ORDER BY id"]"#,
    ]);
    assert_eq!(status, 200, "{body}");
    let lower = body.to_ascii_lowercase();
    assert!(
        lower.contains("x-paxosdb-client-id: "),
        "a write echoes its session: {body}"
    );
    let r = json_of(&body[body.find("\r\n\r\n").expect("headers end") + 4..]);
    assert_eq!(
        r["results"],
        json!([{"last_insert_id": 13, "rows_affected": 1, "rows": null},
               {"types": {"id": "integer"}, "rows": [{"id": 12}, {"id": 13}]}])
    );
    let (status, body) = curl(&[
        "-i",
        "-XPOST",
        &format!("http://{a}/db/request?level=none"),
        "-d",
        r#"["SELECT count(*) FROM foo"]"#,
    ]);
    assert_eq!(status, 200, "{body}");
    let lower = body.to_ascii_lowercase();
    assert!(lower.contains("x-paxosdb-applied-index: "), "{body}");
    assert!(
        !lower.contains("x-paxosdb-client-id"),
        "a read has no session: {body}"
    );
    assert!(body.ends_with("\"values\":[[4]]}]}"), "{body}");

    // Refusals: rqlite-shaped errors, and nothing was run.
    let count = |a: &str| {
        let r = expect(
            200,
            post(a, "/db/query", &[], r#"["SELECT count(*) FROM foo"]"#),
        );
        r["results"][0]["values"][0][0].as_i64().expect("a count")
    };
    let before = count(&a);
    for (path, body) in [
        ("/db/execute", r#"["INSERT INTO foo(name) VALUES('x')", 5]"#),
        (
            "/db/execute",
            r#"{"statements": ["INSERT INTO foo(name) VALUES('x')"]}"#,
        ),
        ("/db/execute", r#"["INSERT INTO foo(name) VALUES('x')""#),
        ("/db/execute", "[]"),
        (
            "/db/execute",
            r#"[["INSERT INTO foo(name) VALUES(?)", {"a": {}}]]"#,
        ),
        (
            "/db/execute?queue",
            r#"["INSERT INTO foo(name) VALUES('x')"]"#,
        ),
        (
            "/db/request?freshness=soon",
            r#"["INSERT INTO foo(name) VALUES('x')"]"#,
        ),
        ("/db/query?level=eventually", r#"["SELECT 1"]"#),
    ] {
        let r = expect(400, post(&a, path, &[], body));
        assert_eq!(r["code"], "invalid_input", "{path} {body}: {r}");
        assert!(r["error"].is_string(), "{r}");
    }
    let big = format!(
        r#"["INSERT INTO foo(name) VALUES('{}')"]"#,
        "x".repeat(70_000)
    );
    let r = expect(413, post(&a, "/db/execute", &[], &big));
    assert_eq!(r["code"], "too_large", "{r}");
    assert_eq!(count(&a), before, "a refused request ran nothing");

    let (status, _) = curl(&[&format!("http://{a}/db/execute")]);
    assert_eq!(status, 405, "execute is POST only");
    let r = expect(400, curl(&[&format!("http://{a}/db/query")]));
    assert!(r["error"].as_str().unwrap().contains("q="), "{r}");
}

const ADMIN_PW: &str = "admin-secret-1";

/// PUTs a user through the HTTP user endpoint as the admin.
fn put_user(addr: &str, name: &str, body: &str) {
    let (status, resp) = curl(&[
        "-u",
        &format!("admin:{ADMIN_PW}"),
        "-XPUT",
        &format!("http://{addr}/v1/users/{name}"),
        "-d",
        body,
    ]);
    assert_eq!(status, 200, "{resp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_needs_the_right_role_and_no_key_prefix() {
    let c = Cluster::builder(3).admin(ADMIN_PW).start().await;
    let a = c.nodes[0].http_addr.clone();
    let admin = format!("admin:{ADMIN_PW}");
    let as_admin = ["-u", admin.as_str()];
    put_user(&a, "reader", r#"{"password": "rpw", "role": "read"}"#);
    put_user(&a, "writer", r#"{"password": "wpw", "role": "readwrite"}"#);
    put_user(
        &a,
        "scoped",
        r#"{"password": "spw", "role": "admin", "prefix": "app/"}"#,
    );

    // No credentials: 401 with the scheme, rqlite-shaped.
    let (status, body) = curl(&[
        "-i",
        "-XPOST",
        &format!("http://{a}/db/query"),
        "-d",
        r#"["SELECT 1"]"#,
    ]);
    assert_eq!(status, 401, "{body}");
    assert!(
        body.to_ascii_lowercase()
            .contains("www-authenticate: basic"),
        "{body}"
    );
    assert!(body.contains("\"error\":\""), "{body}");

    let create = r#"["CREATE TABLE t (x INTEGER)", ["INSERT INTO t VALUES(?)", 1]]"#;
    expect(200, post(&a, "/db/execute", &as_admin, create));

    let reader = ["-u", "reader:rpw"];
    let r = expect(
        200,
        post(&a, "/db/query", &reader, r#"["SELECT x FROM t"]"#),
    );
    assert_eq!(r["results"][0]["values"], json!([[1]]));
    let r = expect(
        200,
        post(&a, "/db/request", &reader, r#"["SELECT x FROM t"]"#),
    );
    assert_eq!(r["results"][0]["values"], json!([[1]]));
    for (path, body) in [
        ("/db/execute", r#"["INSERT INTO t VALUES(2)"]"#),
        (
            "/db/request",
            r#"["SELECT x FROM t", "INSERT INTO t VALUES(2)"]"#,
        ),
    ] {
        let r = expect(403, post(&a, path, &reader, body));
        assert_eq!(r["code"], "permission_denied", "{r}");
        assert!(r["error"].as_str().unwrap().contains("readwrite"), "{r}");
    }

    // A key-prefix user gets no SQL at all, even as an admin of its prefix.
    let scoped = ["-u", "scoped:spw"];
    for path in ["/db/query", "/db/execute", "/db/request"] {
        let r = expect(403, post(&a, path, &scoped, r#"["SELECT 1"]"#));
        assert!(r["error"].as_str().unwrap().contains("key prefix"), "{r}");
    }

    let writer = ["-u", "writer:wpw"];
    expect(
        200,
        post(&a, "/db/execute", &writer, r#"["INSERT INTO t VALUES(3)"]"#),
    );
    let r = expect(
        200,
        post(
            &a,
            "/db/query",
            &writer,
            r#"["SELECT x FROM t ORDER BY x"]"#,
        ),
    );
    assert_eq!(
        r["results"][0]["values"],
        json!([[1], [3]]),
        "only the writer's insert ran"
    );
}

/// `level=none&freshness=…` on a follower: served while the follower hears from the
/// leader; refused with 503 "stale read" once the leader and the third node are stopped
/// (SIGSTOP: the follower keeps its view of the leader but hears nothing), while a plain
/// `level=none` read is still served; fresh again once they continue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_freshness_bound_refuses_reads_from_a_cut_off_follower() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let c = Cluster::start(3).await;
    let leader = c.wait_for_leader().await;
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    let other = (1..=3).find(|&i| i != leader && i != follower).unwrap();
    let a = c.nodes[follower as usize - 1].http_addr.clone();
    let (s, body) = post(
        &a,
        "/db/execute",
        &[],
        r#"["CREATE TABLE f (x)", "INSERT INTO f VALUES (7)"]"#,
    );
    assert_eq!(s, 200, "{body}");
    let bounded = format!("http://{a}/db/query?level=none&freshness=700ms&q=SELECT%20x%20FROM%20f");
    let strict = format!("{bounded}&freshness_strict");
    let plain = format!("http://{a}/db/query?level=none&q=SELECT%20x%20FROM%20f");
    for url in [&bounded, &strict] {
        let v = expect(200, curl(&[url]));
        assert_eq!(v["results"][0]["values"], json!([[7]]), "{v}");
    }

    let pid = |id: u64| Pid::from_raw(c.nodes[id as usize - 1].child.as_ref().unwrap().id() as i32);
    for id in [leader, other] {
        kill(pid(id), Signal::SIGSTOP).unwrap();
    }
    let refused = eventually(Duration::from_secs(10), "the bound refuses", || async {
        let (status, body) = curl(&[&bounded]);
        (status == 503).then_some(body)
    })
    .await;
    assert!(refused.contains("stale read"), "{refused}");
    let v = expect(200, curl(&[&plain]));
    assert_eq!(v["results"][0]["values"], json!([[7]]), "{v}");

    for id in [leader, other] {
        kill(pid(id), Signal::SIGCONT).unwrap();
    }
    eventually(Duration::from_secs(20), "fresh again", || async {
        (curl(&[&bounded]).0 == 200).then_some(())
    })
    .await;
}
