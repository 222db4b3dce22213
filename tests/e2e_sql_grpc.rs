//! gRPC `paxosdb.v1.Sql`, the Rust client's SQL calls and the `paxosdb sql` shell, on the
//! real binary: a three-node cluster started with an administrator password, talked to
//! by the client library and by the CLI as a user would run it (`-e`, a piped script).
//!
//! What must hold: typed values (integer, real, text, blob, NULL) round-trip through
//! parameters and results; a transaction with a failing statement changes nothing; a
//! query cannot write; Query needs the read role, Execute readwrite, and a key-prefix
//! user may not use SQL; the service is in the reflection listing; the shell prints
//! aligned tables and JSON, runs dot-commands, and exits non-zero on an error.
//!
//! Most clients here talk to node 1 ([`NODE`]); `writes_through_one_node_are_read_on_every_node`
//! checks that SQL is replicated: written through one node, read linearizably through
//! the others, and the same rows on every node's own database (stale reads).

mod common;

use common::{eventually, Cluster};
use paxosdb::client::{Auth, Client};
use paxosdb::error::Error;
use paxosdb::sql::{Params, ReadLevel, Request, Statement, StatementResult, Value};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

const ADMIN_PW: &str = "sql-admin-pw";

/// The node every client of these tests talks to (see the module doc).
const NODE: u64 = 1;

/// A three-node cluster whose administrator is `admin`, and an admin client.
async fn start() -> (Cluster, Client) {
    let c = Cluster::builder(3).admin(ADMIN_PW).start().await;
    let admin = as_user(&c, "admin", ADMIN_PW);
    (c, admin)
}

fn as_user(c: &Cluster, user: &str, password: &str) -> Client {
    c.client_for(NODE)
        .with_auth(Some(Auth::Password {
            user: user.into(),
            password: password.into(),
        }))
        .unwrap()
}

fn req(statements: Vec<Statement>, transaction: bool) -> Request {
    Request {
        statements,
        transaction,
    }
}

fn one(sql: &str) -> Request {
    req(vec![Statement::new(sql)], false)
}

fn with(sql: &str, params: Params) -> Statement {
    Statement {
        sql: sql.into(),
        params,
    }
}

/// The rows of a single-statement query that must succeed.
async fn rows(c: &Client, sql: &str) -> Vec<Vec<Value>> {
    let out = c
        .sql_query(one(sql), ReadLevel::Linearizable)
        .await
        .unwrap();
    assert_eq!(out.results.len(), 1);
    let r = out.results.into_iter().next().unwrap();
    assert_eq!(r.error, None, "{sql}");
    r.rows
}

fn ok(results: &[StatementResult]) {
    for r in results {
        assert_eq!(r.error, None, "{results:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_values_round_trip_and_transactions_are_all_or_nothing() {
    let (_c, admin) = start().await;
    let created = admin
        .sql_execute(one("CREATE TABLE t (i INTEGER, r REAL, s TEXT, b BLOB, n)"))
        .await
        .unwrap();
    ok(&created);
    let values = vec![
        Value::Integer(-9_007_199_254_740_993),
        Value::Real(0.1),
        Value::Text("héllo 日本 \n 'quoted'".into()),
        Value::Blob(vec![0, 1, 0xfe, 0xff]),
        Value::Null,
    ];
    let inserted = admin
        .sql_execute(req(
            vec![
                with(
                    "INSERT INTO t VALUES (?, ?, ?, ?, ?)",
                    Params::Positional(values.clone()),
                ),
                with(
                    "INSERT INTO t (i, s) VALUES (:i, @s)",
                    Params::Named(vec![
                        ("i".into(), Value::Integer(2)),
                        ("s".into(), Value::Text("two".into())),
                    ]),
                ),
            ],
            false,
        ))
        .await
        .unwrap();
    ok(&inserted);
    assert_eq!(inserted[0].rows_affected, Some(1));
    assert_eq!(inserted[0].last_insert_id, Some(1));
    assert_eq!(inserted[1].last_insert_id, Some(2));

    let out = admin
        .sql_query(
            one("SELECT i, r, s, b, n FROM t ORDER BY rowid"),
            ReadLevel::Linearizable,
        )
        .await
        .unwrap();
    let r = &out.results[0];
    assert_eq!(r.error, None);
    assert_eq!(r.columns, ["i", "r", "s", "b", "n"]);
    assert_eq!(r.types, ["integer", "real", "text", "blob", ""]);
    assert_eq!(
        r.rows[0], values,
        "every storage class comes back as it went in"
    );
    assert_eq!(
        r.rows[1],
        [
            Value::Integer(2),
            Value::Null,
            Value::Text("two".into()),
            Value::Null,
            Value::Null
        ]
    );
    // A stale read answers too (from the contacted node's copy).
    let stale = admin
        .sql_query(one("SELECT count(*) FROM t"), ReadLevel::Stale)
        .await
        .unwrap();
    assert_eq!(stale.results[0].rows, [[Value::Integer(2)]]);

    // A transaction whose second statement fails: the first is undone too.
    let tx = admin
        .sql_execute(req(
            vec![
                Statement::new("INSERT INTO t (i) VALUES (3)"),
                Statement::new("INSERT INTO missing VALUES (1)"),
            ],
            true,
        ))
        .await
        .unwrap();
    assert!(
        tx.iter().any(|r| r
            .error
            .as_deref()
            .is_some_and(|e| e.contains("no such table"))),
        "{tx:?}"
    );
    assert_eq!(
        rows(&admin, "SELECT count(*) FROM t").await,
        [[Value::Integer(2)]]
    );
    // Without the transaction flag, the statement before the failing one stays.
    let loose = admin
        .sql_execute(req(
            vec![
                Statement::new("INSERT INTO t (i) VALUES (3)"),
                Statement::new("INSERT INTO missing VALUES (1)"),
            ],
            false,
        ))
        .await
        .unwrap();
    assert_eq!(loose[0].error, None);
    assert!(loose[1].error.is_some());
    assert_eq!(
        rows(&admin, "SELECT count(*) FROM t").await,
        [[Value::Integer(3)]]
    );

    // A query cannot write, whichever way the service refuses it.
    match admin
        .sql_query(one("DELETE FROM t"), ReadLevel::Linearizable)
        .await
    {
        Err(Error::InvalidInput(_)) => {}
        Ok(o) => assert!(o.results[0].error.is_some(), "{o:?}"),
        Err(e) => panic!("unexpected error {e:?}"),
    }
    assert_eq!(
        rows(&admin, "SELECT count(*) FROM t").await,
        [[Value::Integer(3)]]
    );

    // A request over the node's message bound (2 × 1 MiB values + 4 KiB key + 64 KiB by
    // default) is refused whole, before anything runs.
    let big = Value::Text("x".repeat(3 << 20));
    let e = admin
        .sql_execute(req(
            vec![with(
                "INSERT INTO t (s) VALUES (?)",
                Params::Positional(vec![big]),
            )],
            false,
        ))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidInput(_)), "{e:?}");
    assert_eq!(
        rows(&admin, "SELECT count(*) FROM t").await,
        [[Value::Integer(3)]]
    );

    // An answer over the SQL store's result bound (16 MiB) is that statement's error,
    // not a stuck or dead node; the node answers the next query.
    let big = admin
        .sql_query(
            one(
                "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 70) \
                 SELECT x, zeroblob(1000000) FROM n",
            ),
            ReadLevel::Linearizable,
        )
        .await
        .unwrap();
    let err = big.results[0].error.as_deref().unwrap_or_default();
    assert!(err.contains("the result is larger than"), "{big:?}");
    assert_eq!(
        rows(&admin, "SELECT count(*) FROM t").await,
        [[Value::Integer(3)]]
    );
}

/// A write through one node is read by a linearizable query on every other node at once,
/// and every node's own database ends up with the same rows (a stale read of each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_one_node_are_read_on_every_node() {
    let (c, admin) = start().await;
    let on = |id: u64| {
        c.client_for(id)
            .with_auth(Some(Auth::Password {
                user: "admin".into(),
                password: ADMIN_PW.into(),
            }))
            .unwrap()
    };
    ok(&admin
        .sql_execute(one("CREATE TABLE r (id INTEGER PRIMARY KEY, v TEXT)"))
        .await
        .unwrap());
    for (i, id) in [1u64, 2, 3, 1, 2, 3].into_iter().enumerate() {
        let r = on(id)
            .sql_execute(req(
                vec![with(
                    "INSERT INTO r (v) VALUES (?)",
                    Params::Positional(vec![Value::Text(format!("via {id}"))]),
                )],
                false,
            ))
            .await
            .unwrap();
        ok(&r);
        // Linearizable, through the next node: the write is there already.
        let next = (id % 3) + 1;
        let n = on(next)
            .sql_query(one("SELECT count(*) FROM r"), ReadLevel::Linearizable)
            .await
            .unwrap();
        assert_eq!(
            n.results[0].rows,
            [[Value::Integer(i as i64 + 1)]],
            "via {next}"
        );
    }
    let want = rows(&admin, "SELECT id, v FROM r ORDER BY id").await;
    assert_eq!(want.len(), 6);
    for id in 1..=3 {
        let node = on(id);
        eventually(Duration::from_secs(10), "every node holds the rows", || {
            let (node, want) = (node.clone(), want.clone());
            async move {
                let got = node
                    .sql_query(one("SELECT id, v FROM r ORDER BY id"), ReadLevel::Stale)
                    .await
                    .ok()?;
                (got.results[0].rows == want).then_some(())
            }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_are_enforced_and_the_service_is_listed() {
    let (c, admin) = start().await;
    ok(&admin.sql_execute(one("CREATE TABLE r (a)")).await.unwrap());
    admin
        .set_user("reader", Some("rpw"), Some("read"), None)
        .await
        .unwrap();
    admin
        .set_user("writer", Some("wpw"), Some("readwrite"), None)
        .await
        .unwrap();
    admin
        .set_user("scoped", Some("spw"), Some("readwrite"), Some(b"app/"))
        .await
        .unwrap();

    let reader = as_user(&c, "reader", "rpw");
    assert_eq!(
        rows(&reader, "SELECT count(*) FROM r").await,
        [[Value::Integer(0)]]
    );
    let e = reader
        .sql_execute(one("INSERT INTO r VALUES (1)"))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::PermissionDenied(_)), "{e:?}");

    let writer = as_user(&c, "writer", "wpw");
    ok(&writer
        .sql_execute(one("INSERT INTO r VALUES (1)"))
        .await
        .unwrap());

    // A key prefix cannot be kept on SQL tables: such a user gets no SQL at all, and is
    // told why.
    let scoped = as_user(&c, "scoped", "spw");
    for e in [
        scoped
            .sql_query(one("SELECT 1"), ReadLevel::Linearizable)
            .await
            .unwrap_err(),
        scoped
            .sql_execute(one("INSERT INTO r VALUES (2)"))
            .await
            .unwrap_err(),
    ] {
        match e {
            Error::PermissionDenied(m) => assert!(m.contains("may not use SQL"), "{m}"),
            e => panic!("{e:?}"),
        }
    }
    let e = c
        .client_for(NODE)
        .sql_query(one("SELECT 1"), ReadLevel::Linearizable)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Unauthenticated(_)), "{e:?}");
    assert_eq!(
        rows(&admin, "SELECT count(*) FROM r").await,
        [[Value::Integer(1)]]
    );

    // The CLI as the reader: reads work, a write is refused with exit code 1.
    let (code, stdout, stderr) = sql_cli(
        &c,
        ("reader", "rpw"),
        &["-e", "SELECT count(*) AS n FROM r;"],
        None,
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("| 1 |"), "{stdout}");
    let (code, _, stderr) = sql_cli(
        &c,
        ("reader", "rpw"),
        &["-e", "INSERT INTO r VALUES (3)"],
        None,
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("may not execute SQL"), "{stderr}");

    // Raw gRPC calls as another client would make them: a malformed request (a session
    // with a zero id, a statement with both kinds of parameters, an unknown read level)
    // is refused whole with INVALID_ARGUMENT, and nothing of it runs.
    {
        use base64::Engine;
        use paxosdb::api::pb;
        let auth = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("admin:{ADMIN_PW}"))
        );
        fn with_auth<T>(auth: &str, msg: T) -> tonic::Request<T> {
            let mut r = tonic::Request::new(msg);
            r.metadata_mut()
                .insert("authorization", auth.parse().unwrap());
            r
        }
        let call = |msg| with_auth(&auth, msg);
        let mut raw = pb::sql_client::SqlClient::new(c.client_for(NODE).channel(0).unwrap());
        let insert = |named: bool| pb::SqlStatement {
            sql: "INSERT INTO r VALUES (?1)".into(),
            positional: vec![pb::SqlValue {
                value: Some(pb::sql_value::Value::Integer(5)),
            }],
            named: if named {
                vec![pb::NamedValue {
                    name: "x".into(),
                    value: None,
                }]
            } else {
                vec![]
            },
        };
        let bad_session = raw
            .execute(call(pb::ExecuteRequest {
                statements: vec![insert(false)],
                transaction: false,
                session: Some(pb::Session {
                    client_id: 0,
                    seq: 1,
                }),
            }))
            .await
            .unwrap_err();
        let mixed = raw
            .execute(call(pb::ExecuteRequest {
                statements: vec![insert(false), insert(true)],
                transaction: false,
                session: None,
            }))
            .await
            .unwrap_err();
        for status in [bad_session, mixed] {
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        }
        let mut q = pb::QueryRequest {
            statements: vec![pb::SqlStatement {
                sql: "SELECT 1".into(),
                ..Default::default()
            }],
            transaction: false,
            level: 9,
            freshness: None,
        };
        let status = raw.query(with_auth(&auth, q.clone())).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        q.level = pb::ReadLevel::Stale as i32;
        let out = raw.query(with_auth(&auth, q)).await.unwrap().into_inner();
        assert_eq!(
            out.results[0].rows[0].values[0].value,
            Some(pb::sql_value::Value::Integer(1))
        );
        // Without credentials: UNAUTHENTICATED.
        let status = raw
            .execute(tonic::Request::new(pb::ExecuteRequest {
                statements: vec![insert(false)],
                transaction: false,
                session: None,
            }))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    }
    assert_eq!(
        rows(&admin, "SELECT count(*) FROM r").await,
        [[Value::Integer(1)]]
    );

    // Reflection lists paxosdb.v1.Sql (what grpcurl and friends use to find it).
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let channel = c.client_for(NODE).channel(0).unwrap();
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let resp = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection response");
    };
    assert!(
        list.service.iter().any(|s| s.name == "paxosdb.v1.Sql"),
        "{:?}",
        list.service
    );
}

/// `paxosdb sql ARGS` as `user`, with `stdin` piped in (else no input): (exit code,
/// stdout, stderr).
fn sql_cli(
    c: &Cluster,
    (user, password): (&str, &str),
    args: &[&str],
    stdin: Option<&str>,
) -> (i32, String, String) {
    let mut child = Command::new(common::BIN)
        .args([
            "--endpoints",
            &c.endpoints()[NODE as usize - 1],
            "--timeout",
            "10s",
        ])
        .args(["--user", user])
        .arg("sql")
        .args(args)
        .env_remove("PAXOSDB_TOKEN")
        .env("PAXOSDB_PASSWORD", password)
        .env("PAXOSDB_SQL_HISTORY", "")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run paxosdb sql");
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shell_runs_statements_scripts_and_dot_commands() {
    let (c, admin) = start().await;
    let me = ("admin", ADMIN_PW);

    // -e with several statements; the query prints an aligned table.
    let (code, stdout, stderr) = sql_cli(
        &c,
        me,
        &[
            "-e",
            "CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT, score REAL);\n\
             INSERT INTO people (name, score) VALUES ('alice', 9.5), ('bob', NULL);\n\
             SELECT id, name, score FROM people ORDER BY id",
        ],
        None,
    );
    assert_eq!(code, 0, "{stderr}");
    // A statement that changes no rows says OK; an INSERT its count and last id.
    assert_eq!(
        stdout,
        "OK\n\
         2 rows changed, last insert id 2\n\
         +----+-------+-------+\n\
         | id | name  | score |\n\
         +----+-------+-------+\n\
         |  1 | alice |   9.5 |\n\
         |  2 | bob   | NULL  |\n\
         +----+-------+-------+\n"
    );

    // --json: one object per statement, typed.
    let (code, stdout, stderr) = sql_cli(
        &c,
        me,
        &[
            "--json",
            "-e",
            "SELECT id, name, score, x'00ff' AS b FROM people WHERE id = 1",
        ],
        None,
    );
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "columns": ["id", "name", "score", "b"],
            "types": ["integer", "text", "real", ""],
            "rows": [[1, "alice", 9.5, {"base64": "AP8="}]],
        })
    );

    // --stale reads the contacted node's copy (through Query at the stale level).
    let (code, stdout, stderr) = sql_cli(
        &c,
        me,
        &[
            "--stale",
            "--mode",
            "line",
            "-e",
            "SELECT count(*) AS n FROM people",
        ],
        None,
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "n = 2\n");

    // An error: message on stderr, exit code 1, later statements not run.
    let (code, _, stderr) = sql_cli(
        &c,
        me,
        &[
            "-e",
            "SELECT * FROM nowhere; INSERT INTO people (name) VALUES ('never')",
        ],
        None,
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("no such table: nowhere"), "{stderr}");
    assert_eq!(
        rows(&admin, "SELECT count(*) FROM people WHERE name = 'never'").await,
        [[Value::Integer(0)]]
    );

    // A piped script: dot-commands, a multi-line statement, CSV mode, and a BEGIN ...
    // COMMIT block with a failing statement that leaves everything as it was.
    let script = "\
CREATE INDEX people_name ON people (name);
.tables
.schema people
.schema
.mode csv
SELECT name,
       score
  FROM people
 ORDER BY id;
.mode json
BEGIN;
INSERT INTO people (name) VALUES ('carol');
INSERT INTO nowhere VALUES (1);
COMMIT;
SELECT 'not reached';
";
    let (code, stdout, stderr) = sql_cli(&c, me, &[], Some(script));
    assert_eq!(
        code, 1,
        "the failed transaction fails the script: {stdout} {stderr}"
    );
    // JSON mode: the failed statement's result is an object on stdout.
    assert!(
        stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|v| v["error"]
                .as_str()
                .is_some_and(|e| e.contains("no such table: nowhere"))),
        "{stdout}"
    );
    // `.tables` and `.schema` leave paxosdb's internal `_paxosdb_*` tables out.
    let want = "\
OK
people
CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT, score REAL);
CREATE INDEX people_name ON people (name);
CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT, score REAL);
CREATE INDEX people_name ON people (name);
name,score\r
alice,9.5\r
bob,\r
";
    assert!(stdout.contains(want), "{stdout}");
    assert!(!stdout.contains("not reached"), "{stdout}");
    assert_eq!(
        rows(&admin, "SELECT count(*) FROM people WHERE name = 'carol'").await,
        [[Value::Integer(0)]],
        "a transaction with a failed statement changed nothing"
    );

    // The same block without the failure commits, as one request.
    let (code, stdout, stderr) = sql_cli(
        &c,
        me,
        &[],
        Some(
            "BEGIN;\nINSERT INTO people (name) VALUES ('carol');\n\
             UPDATE people SET score = 1 WHERE name = 'carol';\nCOMMIT;\n\
             .timer on\nSELECT score FROM people WHERE name = 'carol';\n",
        ),
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("|   1.0 |"), "{stdout}");
    assert!(stdout.contains("Run Time: real "), "{stdout}");
    assert_eq!(
        rows(&admin, "SELECT count(*) FROM people WHERE name = 'carol'").await,
        [[Value::Integer(1)]]
    );
}

/// The interactive shell on a real terminal (a pseudo-terminal made by util-linux
/// `script`): prompts, a statement over several lines, a query's table, and the history
/// file written private to its owner. Each line is typed only once the shell shows its
/// next prompt, as a person would (the line editor discards what was typed ahead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_interactive_shell_reads_lines_and_keeps_a_private_history() {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::{Arc, Mutex};
    if Command::new("script").arg("--version").output().is_err() {
        common::skip(
            "the_interactive_shell_reads_lines_and_keeps_a_private_history",
            "util-linux `script` (to give the shell a terminal) is not installed",
        );
        return;
    }
    let (c, _admin) = start().await;
    let history = c.dir.path().join("history").join("sql_history");
    let shell = format!(
        "{} --endpoints {} --timeout 10s --user admin sql",
        common::BIN,
        c.endpoints()[NODE as usize - 1]
    );
    let mut child = Command::new("script")
        .args(["-qec", &shell, "/dev/null"])
        .env_remove("PAXOSDB_TOKEN")
        .env("PAXOSDB_PASSWORD", ADMIN_PW)
        .env("PAXOSDB_SQL_HISTORY", &history)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run script");
    let screen = Arc::new(Mutex::new(String::new()));
    let mut stdout = child.stdout.take().unwrap();
    let reader = {
        let screen = screen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                screen
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    let mut input = child.stdin.take().unwrap();
    let prompts = ["sql> ", "...> ", "sql*> "];
    let lines = [
        "CREATE TABLE h (a INTEGER);",
        "INSERT INTO h",
        "  VALUES (42);",
        "SELECT a AS answer",
        "  FROM h;",
        ".quit",
    ];
    let mut typed: Option<&str> = None;
    for line in lines {
        // Wait for a prompt after the echo of the line typed before.
        let shown = screen.clone();
        eventually(
            Duration::from_secs(20),
            &format!("a prompt before typing {line:?}"),
            || {
                let s = shown.lock().unwrap().clone();
                let from = typed.and_then(|t| s.rfind(t).map(|i| i + t.len()));
                let after = &s[from.unwrap_or(0)..];
                let ready = (typed.is_none() || from.is_some())
                    && prompts.iter().any(|p| after.contains(p));
                async move { ready.then_some(()) }
            },
        )
        .await;
        input.write_all(format!("{line}\r").as_bytes()).unwrap();
        input.flush().unwrap();
        typed = Some(line);
    }
    let status = eventually(Duration::from_secs(20), "the shell exits", || {
        let st = child.try_wait().unwrap();
        async move { st }
    })
    .await;
    drop(input);
    reader.join().unwrap();
    let screen = screen.lock().unwrap().clone();
    assert!(status.success(), "{screen}");
    assert!(screen.contains("...> "), "a continuation prompt: {screen}");
    assert!(
        screen.contains("| answer |") && screen.contains("|     42 |"),
        "{screen}"
    );
    let mode = std::fs::metadata(&history).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the history is private");
    let saved = std::fs::read_to_string(&history).unwrap();
    for line in lines {
        assert!(
            saved.contains(line.trim()),
            "{line:?} not in history:\n{saved}"
        );
    }
}
