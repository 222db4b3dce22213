//! Tests of the SQL state machine on real SQLite files (a temporary directory each).

use super::store::{SqlOutcome, SqlStore, SqlWrite};
use super::{Params, Request, SqlLimits, Statement, StatementResult, Value};
use crate::command::SESSION_REUSED;
use crate::error::Error;

pub(crate) fn req(sqls: &[&str]) -> Request {
    Request {
        statements: sqls.iter().map(|s| Statement::new(*s)).collect(),
        transaction: false,
    }
}

pub(crate) fn tx(sqls: &[&str]) -> Request {
    Request {
        transaction: true,
        ..req(sqls)
    }
}

pub(crate) fn w(client_id: u64, seq: u64, request: Request) -> SqlWrite {
    SqlWrite {
        client_id,
        seq,
        request,
        user: None,
    }
}

/// Applies one write at the next index and returns its results.
pub(crate) fn exec(s: &mut SqlStore, r: Request) -> Vec<StatementResult> {
    let i = s.applied_index();
    match s.apply(i, &[w(0, 0, r)]).unwrap().remove(0) {
        SqlOutcome::Results(r) => r,
        o => panic!("{o:?}"),
    }
}

fn ok(rs: &[StatementResult]) {
    for r in rs {
        assert_eq!(r.error, None, "{rs:?}");
    }
}

fn err_of(r: &StatementResult) -> &str {
    r.error
        .as_deref()
        .unwrap_or_else(|| panic!("no error: {r:?}"))
}

pub(crate) fn rows(s: &SqlStore, sql: &str) -> Vec<Vec<Value>> {
    let out = s.query(&req(&[sql])).unwrap();
    let r = out.results.into_iter().next().unwrap();
    assert_eq!(r.error, None, "{sql}");
    r.rows
}

fn count(s: &SqlStore, table: &str) -> i64 {
    match rows(s, &format!("SELECT count(*) FROM {table}"))[0][0] {
        Value::Integer(n) => n,
        ref v => panic!("{v:?}"),
    }
}

pub(crate) fn open(dir: &std::path::Path) -> SqlStore {
    SqlStore::open(dir).unwrap()
}

#[test]
fn writes_apply_and_queries_return_typed_values() {
    let d = tempfile::tempdir().unwrap();
    let mut s = open(d.path());
    assert_eq!(s.applied_index(), 0);
    ok(&exec(
        &mut s,
        req(&["CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, score REAL, data BLOB, n)"]),
    ));
    let rs = exec(
        &mut s,
        Request {
            statements: vec![Statement {
                sql: "INSERT INTO t (name, score, data, n) VALUES (?, ?, :d, NULL)".into(),
                params: Params::Positional(vec![
                    Value::Text("ann".into()),
                    Value::Real(1.5),
                    Value::Blob(vec![0, 1, 255]),
                ]),
            }],
            transaction: false,
        },
    );
    ok(&rs);
    assert_eq!(rs[0].last_insert_id, Some(1));
    assert_eq!(rs[0].rows_affected, Some(1));
    assert_eq!(s.applied_index(), 2);
    let out = s
        .query(&req(&["SELECT id, name, score, data, n FROM t"]))
        .unwrap();
    assert_eq!(out.applied_index, 2);
    let r = &out.results[0];
    assert_eq!(r.columns, ["id", "name", "score", "data", "n"]);
    assert_eq!(r.types, ["integer", "text", "real", "blob", ""]);
    assert_eq!(
        r.rows,
        vec![vec![
            Value::Integer(1),
            Value::Text("ann".into()),
            Value::Real(1.5),
            Value::Blob(vec![0, 1, 255]),
            Value::Null
        ]]
    );
    // Named parameters, and a RETURNING clause in a write.
    let rs = exec(
        &mut s,
        Request {
            statements: vec![Statement {
                sql: "UPDATE t SET score = :s WHERE id = 1 RETURNING score".into(),
                params: Params::Named(vec![(":s".into(), Value::Real(2.0))]),
            }],
            transaction: false,
        },
    );
    assert_eq!(rs[0].rows, vec![vec![Value::Real(2.0)]]);
    assert_eq!(rs[0].rows_affected, Some(1));
}

#[test]
fn apply_at_any_index_but_the_next_is_refused_and_changes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let mut s = open(d.path());
    ok(&exec(&mut s, req(&["CREATE TABLE t (a)"])));
    ok(&exec(&mut s, req(&["INSERT INTO t VALUES (1)"])));
    let before = s.digest().unwrap();
    for i in [0, 1, 3, 100] {
        let e = s
            .apply(i, &[w(0, 0, req(&["INSERT INTO t VALUES (2)"]))])
            .unwrap_err();
        assert!(matches!(e, Error::Internal(_)), "{e}");
    }
    assert_eq!(s.applied_index(), 2);
    assert_eq!(s.digest().unwrap(), before);
    assert_eq!(count(&s, "t"), 1);
}

#[test]
fn empty_entries_advance_in_memory_and_are_persisted_by_the_next_write_or_flush() {
    let d = tempfile::tempdir().unwrap();
    let mut s = open(d.path());
    ok(&exec(&mut s, req(&["CREATE TABLE t (a)"])));
    for i in 1..1000 {
        assert!(s.apply(i, &[]).unwrap().is_empty());
    }
    assert_eq!(s.applied_index(), 1000);
    // A query reports the in-memory index: the state is the same.
    assert_eq!(s.query(&req(&["SELECT 1"])).unwrap().applied_index, 1000);
    drop(s);
    // A crash loses only the empty entries (replaying them changes nothing).
    let mut s = open(d.path());
    assert_eq!(s.applied_index(), 1);
    for i in 1..5 {
        s.apply(i, &[]).unwrap();
    }
    assert_eq!(s.flush().unwrap(), 5);
    drop(s);
    let mut s = open(d.path());
    assert_eq!(s.applied_index(), 5);
    s.apply(5, &[]).unwrap();
    ok(&exec(&mut s, req(&["INSERT INTO t VALUES (1)"])));
    drop(s);
    assert_eq!(open(d.path()).applied_index(), 7);
}

/// The files of a store directory, as a power loss right now would keep them if every
/// write so far had been synced.
fn image(dir: &std::path::Path) -> Vec<(std::ffi::OsString, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name(), std::fs::read(e.path()).unwrap())
        })
        .collect();
    out.sort();
    out
}

fn restore(dir: &std::path::Path, img: &[(std::ffi::OsString, Vec<u8>)]) {
    for e in std::fs::read_dir(dir).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    for (name, bytes) in img {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

#[test]
fn a_crash_after_flush_loses_nothing_flushed_and_replay_repairs_the_rest() {
    let d = tempfile::tempdir().unwrap();
    let entries: Vec<Request> = (0..20)
        .map(|i| {
            if i == 0 {
                req(&["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"])
            } else {
                req(&[&format!("INSERT INTO t (v) VALUES ('v{i}')")])
            }
        })
        .collect();
    let mut s = open(d.path());
    for r in &entries[..10] {
        exec(&mut s, r.clone());
    }
    assert_eq!(s.flush().unwrap(), 10);
    let flushed = s.digest().unwrap();
    // The state a power loss would leave: only what flush synced (the store's connection
    // is dropped first so the copy is of closed files, as after a crash).
    drop(s);
    let img = image(d.path());
    let mut s = open(d.path());
    for r in &entries[10..] {
        exec(&mut s, r.clone());
    }
    let full = s.digest().unwrap();
    drop(s);
    restore(d.path(), &img);
    let mut s = open(d.path());
    assert_eq!(s.applied_index(), 10);
    assert_eq!(s.digest().unwrap(), flushed);
    // Replaying the log from applied_index() gives the same state as never crashing.
    for r in &entries[10..] {
        exec(&mut s, r.clone());
    }
    assert_eq!(s.digest().unwrap(), full);
    assert_eq!(count(&s, "t"), 19);
}

#[test]
fn a_process_crash_between_apply_and_flush_keeps_every_applied_entry() {
    let d = tempfile::tempdir().unwrap();
    let mut s = open(d.path());
    ok(&exec(&mut s, req(&["CREATE TABLE t (a)"])));
    ok(&exec(
        &mut s,
        tx(&["INSERT INTO t VALUES (1)", "INSERT INTO t VALUES (2)"]),
    ));
    let digest = s.digest().unwrap();
    // No flush: the process dies (connections closed without a checkpoint).
    std::mem::forget(s);
    let s = open(d.path());
    assert_eq!(s.applied_index(), 2);
    assert_eq!(s.digest().unwrap(), digest);
}

#[test]
fn sessions_apply_once_and_reject_reuse() {
    let d = tempfile::tempdir().unwrap();
    let mut s = open(d.path());
    ok(&exec(
        &mut s,
        req(&["CREATE TABLE t (id INTEGER PRIMARY KEY, v)"]),
    ));
    let ins = req(&["INSERT INTO t (v) VALUES ('x')"]);
    let first = s.apply(1, &[w(9, 1, ins.clone())]).unwrap();
    // The same write again, in a later entry and twice in one entry: one row.
    let again = s
        .apply(2, &[w(9, 1, ins.clone()), w(9, 1, ins.clone())])
        .unwrap();
    assert_eq!(again, vec![first[0].clone(), first[0].clone()]);
    assert_eq!(count(&s, "t"), 1);
    // Same seq, another request: rejected, nothing runs.
    let other = req(&["INSERT INTO t (v) VALUES ('y')"]);
    match &s.apply(3, &[w(9, 1, other.clone())]).unwrap()[0] {
        SqlOutcome::SessionReused(m) => assert!(m.contains(SESSION_REUSED), "{m}"),
        o => panic!("{o:?}"),
    }
    // The next seq runs; an older one is superseded.
    assert!(matches!(
        &s.apply(4, &[w(9, 2, other.clone())]).unwrap()[0],
        SqlOutcome::Results(_)
    ));
    assert!(matches!(
        &s.apply(5, &[w(9, 1, ins.clone())]).unwrap()[0],
        SqlOutcome::Superseded(_)
    ));
    assert_eq!(count(&s, "t"), 2);
    // Sessions survive a restart.
    drop(s);
    let mut s = open(d.path());
    assert_eq!(
        s.apply(6, &[w(9, 2, other.clone())]).unwrap()[0],
        SqlOutcome::Results(vec![StatementResult {
            last_insert_id: Some(2),
            rows_affected: Some(1),
            ..Default::default()
        }])
    );
    assert_eq!(count(&s, "t"), 2);
    // A request over a limit is rejected and remembered like any outcome.
    let many = req(&vec!["SELECT 1"; SqlLimits::default().max_statements + 1]);
    assert!(matches!(
        &s.apply(7, &[w(10, 1, many)]).unwrap()[0],
        SqlOutcome::Rejected(_)
    ));
}

#[test]
fn sessions_expire_by_log_index() {
    use crate::session::SESSION_TTL_ENTRIES as TTL;
    let d = tempfile::tempdir().unwrap();
    let mut s = open(d.path());
    ok(&exec(&mut s, req(&["CREATE TABLE t (v)"])));
    let ins = req(&["INSERT INTO t VALUES (1)"]);
    s.apply(1, &[w(5, 1, ins.clone())]).unwrap(); // last used at L = 1
    s.apply(2, &[w(6, 1, ins.clone())]).unwrap(); // last used at 2
    for i in 3..=TTL + 2 {
        s.apply(i, &[]).unwrap();
    }
    // At L + TTL + 1 the record still answers (and is then swept).
    let at = TTL + 2;
    assert_eq!(s.applied_index(), at + 1);
    let _ = at;
    // Client 6 (L = 2) at index 2 + TTL + 1 = TTL + 3: still remembered.
    s.apply(TTL + 3, &[w(6, 1, ins.clone())]).unwrap();
    assert_eq!(count(&s, "t"), 2);
    // Client 5 (L = 1) at index TTL + 4 > 1 + TTL + 1: forgotten, applied again.
    s.apply(TTL + 4, &[w(5, 1, ins.clone())]).unwrap();
    assert_eq!(count(&s, "t"), 3);
    // The sweep removed client 6's record (L = 2 <= TTL + 4 - TTL - 1).
    let n: i64 = s
        .guard
        .trusted(|| {
            s.conn
                .query_row("SELECT count(*) FROM _paxosdb_sessions", [], |r| r.get(0))
        })
        .unwrap();
    assert_eq!(n, 1, "only client 5's fresh record remains");
}

#[test]
fn a_failed_statement_in_a_transaction_undoes_the_whole_request() {
    let d = tempfile::tempdir().unwrap();
    let mut s = open(d.path());
    ok(&exec(
        &mut s,
        req(&["CREATE TABLE t (id INTEGER PRIMARY KEY, v NOT NULL)"]),
    ));
    let rs = exec(
        &mut s,
        tx(&[
            "INSERT INTO t VALUES (1, 'a')",
            "INSERT INTO t VALUES (2, NULL)",
            "INSERT INTO t VALUES (3, 'c')",
        ]),
    );
    assert_eq!(rs.len(), 3);
    assert!(err_of(&rs[1]).contains("NOT NULL"), "{rs:?}");
    assert!(err_of(&rs[0]).contains("rolled back"));
    assert!(err_of(&rs[2]).contains("rolled back"));
    assert_eq!(count(&s, "t"), 0);
    // Without the flag each statement stands alone; a failed one changes nothing, even an
    // OR FAIL that had already inserted rows.
    let rs = exec(
        &mut s,
        req(&[
            "INSERT INTO t VALUES (1, 'a')",
            "INSERT OR FAIL INTO t VALUES (2, 'b'), (1, 'dup')",
            "INSERT INTO t VALUES (3, 'c')",
        ]),
    );
    assert_eq!(rs[0].error, None);
    assert!(err_of(&rs[1]).contains("UNIQUE"));
    assert_eq!(rs[2].error, None);
    assert_eq!(
        rows(&s, "SELECT id FROM t ORDER BY id"),
        vec![vec![Value::Integer(1)], vec![Value::Integer(3)]]
    );
}

#[test]
fn a_statement_that_rolls_back_sqlites_transaction_fails_alone_and_deterministically() {
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let mut digests = Vec::new();
    for d in [&d1, &d2] {
        let mut s = open(d.path());
        ok(&exec(
            &mut s,
            req(&["CREATE TABLE t (id INTEGER PRIMARY KEY)"]),
        ));
        ok(&exec(
            &mut s,
            req(&[
                "CREATE TABLE u (x)",
                "CREATE TRIGGER g BEFORE INSERT ON u WHEN new.x < 0 \
                 BEGIN SELECT RAISE(ROLLBACK, 'negative'); END",
            ]),
        ));
        // One entry: a write before, the two statements that roll back everything in
        // SQLite, and a write after. Only the two fail.
        let out = s
            .apply(
                2,
                &[
                    w(1, 1, req(&["INSERT INTO t VALUES (1)"])),
                    w(
                        2,
                        1,
                        req(&[
                            "INSERT INTO t VALUES (2)",
                            "INSERT OR ROLLBACK INTO t VALUES (1)",
                            "INSERT INTO u VALUES (-1)",
                            "INSERT INTO t VALUES (3)",
                        ]),
                    ),
                ],
            )
            .unwrap();
        let SqlOutcome::Results(rs) = &out[1] else {
            panic!("{out:?}")
        };
        assert_eq!(rs[0].error, None);
        assert!(err_of(&rs[1]).contains("UNIQUE"), "{rs:?}");
        assert!(err_of(&rs[2]).contains("negative"), "{rs:?}");
        assert_eq!(rs[3].error, None);
        assert_eq!(
            rows(&s, "SELECT id FROM t ORDER BY id"),
            vec![
                vec![Value::Integer(1)],
                vec![Value::Integer(2)],
                vec![Value::Integer(3)]
            ]
        );
        assert_eq!(count(&s, "u"), 0);
        digests.push(s.digest().unwrap());
    }
    assert_eq!(digests[0], digests[1]);
}

#[test]
fn a_runaway_statement_stops_at_its_step_budget_everywhere() {
    let d = tempfile::tempdir().unwrap();
    let limits = SqlLimits {
        step_budget: 1_000_000,
        ..SqlLimits::default()
    };
    let mut s = SqlStore::open_with(d.path(), limits).unwrap();
    ok(&exec(&mut s, req(&["CREATE TABLE t (a)"])));
    let forever = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) \
                   INSERT INTO t SELECT x FROM c";
    let out = s
        .apply(
            1,
            &[
                w(1, 1, req(&["INSERT INTO t VALUES (-1)"])),
                w(2, 1, req(&[forever, "INSERT INTO t VALUES (-2)"])),
            ],
        )
        .unwrap();
    let SqlOutcome::Results(rs) = &out[1] else {
        panic!("{out:?}")
    };
    assert!(err_of(&rs[0]).contains("budget"), "{rs:?}");
    assert_eq!(rs[1].error, None);
    assert_eq!(count(&s, "t"), 2);
    // A read-only runaway statement, at apply and in a query.
    let spin = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) \
                SELECT count(*) FROM c";
    let rs = exec(&mut s, req(&[spin]));
    assert!(err_of(&rs[0]).contains("budget"));
    let q = s.query(&req(&[spin])).unwrap();
    assert!(err_of(&q.results[0]).contains("budget"));
}

#[test]
fn user_statements_cannot_reach_internals_or_connection_state() {
    let d = tempfile::tempdir().unwrap();
    let mut s = open(d.path());
    ok(&exec(&mut s, req(&["CREATE TABLE t (a)"])));
    let cases = [
        ("SELECT * FROM _paxosdb_meta", "internal"),
        ("UPDATE _paxosdb_meta SET applied = 0", "internal"),
        ("DELETE FROM _PAXOSDB_SESSIONS", "internal"),
        ("CREATE TABLE _paxosdb_mine (a)", "internal"),
        ("DROP TABLE _paxosdb_reset", "internal"),
        (
            "CREATE TRIGGER g AFTER INSERT ON t BEGIN DELETE FROM _paxosdb_sessions; END",
            "internal",
        ),
        ("CREATE VIEW v AS SELECT * FROM _paxosdb_meta", "internal"),
        ("SELECT * FROM \"_paxosdb_meta\"", "internal"),
        ("SELECT * FROM main.[_Paxosdb_meta]", "internal"),
        ("ALTER TABLE _paxosdb_meta ADD COLUMN x", "internal"),
        ("ALTER TABLE _paxosdb_reset RENAME TO mine", "internal"),
        ("ALTER TABLE t RENAME TO _paxosdb_t", "internal"),
        ("CREATE INDEX i ON _paxosdb_sessions (seq)", "internal"),
        ("DROP INDEX _paxosdb_sessions_by_use", "internal"),
        ("ATTACH 'other.db' AS o", "ATTACH"),
        ("SELECT load_extension('x')", "load_extension"),
        ("PRAGMA foreign_keys = ON", "PRAGMA"),
        ("PRAGMA writable_schema = 1", "PRAGMA"),
        ("PRAGMA synchronous", "PRAGMA"),
        ("BEGIN", "transaction=true"),
        ("COMMIT", "transaction=true"),
        ("SAVEPOINT x", "transaction=true"),
        ("CREATE TEMP TABLE x (a)", "temporary"),
        ("SELECT random()", "not deterministic"),
        ("SELECT randomblob(4)", "not deterministic"),
        ("SELECT total_changes()", "not deterministic"),
        ("SELECT CURRENT_TIMESTAMP", "not deterministic"),
        ("SELECT date()", "reads the clock"),
        ("SELECT strftime('%s')", "reads the clock"),
        ("SELECT datetime('now')", "clock or time zone"),
        (
            "SELECT datetime('2024-01-01', 'localtime')",
            "clock or time zone",
        ),
        ("SELECT count(*) FROM dbstat", "page layout"),
        ("SELECT * FROM pragma_page_count()", "PRAGMA"),
        (
            "INSERT INTO t VALUES (1); INSERT INTO t VALUES (2)",
            "2 statements",
        ),
        ("  ", "empty"),
    ];
    for (sql, why) in cases {
        let rs = exec(&mut s, req(&[sql]));
        assert!(
            rs[0].error.as_deref().is_some_and(|e| e.contains(why)),
            "{sql}: {rs:?}"
        );
    }
    assert_eq!(count(&s, "t"), 0);
    assert_eq!(s.applied_index(), 1 + cases.len() as u64);
    // Schema PRAGMAs are allowed.
    let rs = exec(&mut s, req(&["PRAGMA table_info(t)"]));
    assert_eq!(rs[0].rows.len(), 1);
    // Queries: the internals are as unreachable; schema and plain reads work.
    let q = s
        .query(&req(&[
            "SELECT * FROM _paxosdb_sessions",
            "PRAGMA table_info(t)",
        ]))
        .unwrap();
    assert!(err_of(&q.results[0]).contains("internal"));
    assert_eq!(q.results[1].rows.len(), 1);
    let q = s.query(&req(&["PRAGMA cache_size = 10"])).unwrap();
    assert!(err_of(&q.results[0]).contains("PRAGMA"));
    // What the README says: the schema table still names them (SQLite cannot hide rows
    // of it), which is why listing tools must skip `_paxosdb_*` themselves.
    let names = rows(
        &s,
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name LIKE '\\_paxosdb\\_%' \
         ESCAPE '\\' ORDER BY name",
    );
    assert_eq!(
        names,
        ["_paxosdb_meta", "_paxosdb_reset", "_paxosdb_sessions"]
            .map(|n| vec![Value::Text(n.into())])
    );
}

#[test]
fn last_insert_rowid_and_changes_do_not_depend_on_the_connections_past() {
    let d = tempfile::tempdir().unwrap();
    let mut s = open(d.path());
    ok(&exec(
        &mut s,
        req(&["CREATE TABLE t (a)", "INSERT INTO t VALUES (1)"]),
    ));
    let probe = req(&["SELECT last_insert_rowid(), changes()"]);
    let live = exec(&mut s, probe.clone());
    drop(s);
    let mut s = open(d.path());
    let reopened = exec(&mut s, probe);
    assert_eq!(live, reopened);
    assert_eq!(
        live[0].rows,
        vec![vec![Value::Integer(0), Value::Integer(1)]]
    );
    // Within a request they follow its own statements.
    let rs = exec(
        &mut s,
        req(&["INSERT INTO t VALUES (2)", "SELECT last_insert_rowid()"]),
    );
    assert_eq!(rs[1].rows, vec![vec![Value::Integer(2)]]);
}

#[test]
fn queries_refuse_writes_and_run_beside_apply() {
    let d = tempfile::tempdir().unwrap();
    let mut s = open(d.path());
    ok(&exec(&mut s, req(&["CREATE TABLE t (a)"])));
    for sql in [
        "INSERT INTO t VALUES (1)",
        "CREATE TABLE x (a)",
        "DROP TABLE t",
    ] {
        // The write is not run and says so; the read beside it is answered.
        let out = s.query(&req(&["SELECT 1", sql])).unwrap();
        assert_eq!(out.results[0].rows, [[Value::Integer(1)]], "{sql}");
        let e = out.results[1].error.as_deref().unwrap_or_default();
        assert!(e.contains("could change the database"), "{sql}: {out:?}");
    }
    assert_eq!(count(&s, "t"), 0);
    // A reader on another thread sees only whole entries while apply goes on.
    let reader = s.reader();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let t = std::thread::spawn(move || {
        let mut seen = 0;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            let out = reader
                .query(&req(&["SELECT count(*), count(*) % 2 FROM t"]))
                .unwrap();
            let r = &out.results[0].rows[0];
            assert_eq!(r[1], Value::Integer(0), "half an entry seen: {r:?}");
            seen += 1;
        }
        seen
    });
    for i in 0..200 {
        ok(&exec(
            &mut s,
            req(&[
                &format!("INSERT INTO t VALUES ({i})"),
                &format!("INSERT INTO t VALUES ({i})"),
            ]),
        ));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(t.join().unwrap() > 0);
    assert_eq!(count(&s, "t"), 400);
}

#[test]
fn result_limits_are_errors_not_truncations() {
    let d = tempfile::tempdir().unwrap();
    let limits = SqlLimits {
        max_result_rows: 10,
        max_result_bytes: 1000,
        ..SqlLimits::default()
    };
    let mut s = SqlStore::open_with(d.path(), limits).unwrap();
    ok(&exec(&mut s, req(&["CREATE TABLE t (a)"])));
    ok(&exec(
        &mut s,
        req(&[
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 11) \
               INSERT INTO t SELECT x FROM c",
        ]),
    ));
    let q = s
        .query(&req(&["SELECT a FROM t", "SELECT a FROM t LIMIT 10"]))
        .unwrap();
    assert!(err_of(&q.results[0]).contains("more than 10 rows"));
    assert_eq!(q.results[1].rows.len(), 10);
    let q = s.query(&req(&["SELECT zeroblob(2000)"])).unwrap();
    assert!(err_of(&q.results[0]).contains("1000 bytes"));
    // In a write, the oversized RETURNING is an error and the statement is undone.
    let rs = exec(&mut s, req(&["DELETE FROM t RETURNING a"]));
    assert!(err_of(&rs[0]).contains("more than 10 rows"));
    assert_eq!(count(&s, "t"), 11);
}

#[test]
fn membership_is_stored_with_the_applied_index() {
    use crate::config::Member;
    use crate::membership::Membership;
    let d = tempfile::tempdir().unwrap();
    let mut s = open(d.path());
    assert_eq!(s.membership().unwrap(), None);
    let m = Membership {
        config_id: 2,
        base: 1,
        members: vec![Member {
            id: 1,
            addr: "127.0.0.1:1".into(),
        }],
    };
    assert!(s.apply_membership(1, &m).is_err());
    s.apply_membership(0, &m).unwrap();
    assert_eq!(s.applied_index(), 1);
    drop(s);
    let s = open(d.path());
    assert_eq!(s.applied_index(), 1);
    assert_eq!(s.membership().unwrap(), Some(m));
}

/// Model check: random entries (good and failing statements, sessions, retries, crashes
/// with replay from the applied index) give the same user state as running the
/// statements that should take effect on a plain in-memory SQLite.
#[test]
fn random_histories_with_crashes_match_a_plain_sqlite_model() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    for seed in 0..4u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let d = tempfile::tempdir().unwrap();
        let mut s = open(d.path());
        let model = rusqlite::Connection::open_in_memory().unwrap();
        let schema = "CREATE TABLE kv (k INTEGER PRIMARY KEY, v INTEGER NOT NULL)";
        model.execute_batch(schema).unwrap();
        let mut log: Vec<Vec<SqlWrite>> = vec![vec![w(0, 0, req(&[schema]))]];
        let mut seqs = [0u64; 4];
        for _ in 0..60 {
            let mut entry = Vec::new();
            for _ in 0..rng.gen_range(0..4) {
                let c = rng.gen_range(0..4usize);
                let retry = seqs[c] > 0 && rng.gen_bool(0.2);
                if !retry {
                    seqs[c] += 1;
                }
                let k = rng.gen_range(0..8);
                let st = match rng.gen_range(0..4) {
                    0 => format!("INSERT INTO kv VALUES ({k}, {})", rng.gen_range(0..100)),
                    1 => format!("UPDATE kv SET v = v + 1 WHERE k = {k}"),
                    2 => format!("DELETE FROM kv WHERE k = {k}"),
                    _ => format!("INSERT INTO kv VALUES ({k}, NULL)"),
                };
                let r = if rng.gen_bool(0.3) {
                    tx(&[&st, &format!("UPDATE kv SET v = v * 2 WHERE k = {}", k + 1)])
                } else {
                    req(&[&st])
                };
                // Retries resend the request the session last carried.
                let r = if retry {
                    log.iter()
                        .flatten()
                        .rev()
                        .find(|x| x.client_id == c as u64 + 1 && x.seq == seqs[c])
                        .map(|x| x.request.clone())
                        .unwrap_or(r)
                } else {
                    r
                };
                entry.push(w(c as u64 + 1, seqs[c], r));
            }
            log.push(entry);
        }
        // Model: run each (client, seq) once, a transaction all-or-nothing.
        let mut done = std::collections::HashSet::new();
        for entry in &log {
            for x in entry {
                if x.client_id != 0 && !done.insert((x.client_id, x.seq)) {
                    continue;
                }
                if x.request.transaction {
                    model.execute_batch("SAVEPOINT m").unwrap();
                    let okk = x
                        .request
                        .statements
                        .iter()
                        .all(|st| model.execute_batch(&st.sql).is_ok());
                    model
                        .execute_batch(if okk {
                            "RELEASE m"
                        } else {
                            "ROLLBACK TO m; RELEASE m"
                        })
                        .unwrap();
                } else {
                    for st in &x.request.statements {
                        let _ = model.execute_batch(&st.sql);
                    }
                }
            }
        }
        // The store, crashing now and then (with or without a flush) and replaying, and
        // now and then replaced by a copy streamed to a fresh node (a catch-up).
        let mut dirs = vec![d];
        while (s.applied_index() as usize) < log.len() {
            let i = s.applied_index();
            s.apply(i, &log[i as usize]).unwrap();
            match rng.gen_range(0..12) {
                0 => {
                    drop(s);
                    s = open(dirs.last().unwrap().path());
                }
                1 => {
                    s.flush().unwrap();
                }
                2 => {
                    let fresh = tempfile::tempdir().unwrap();
                    let mut t = open(fresh.path());
                    let mut imp = t.importer().unwrap();
                    let mut applied = None;
                    s.reader()
                        .export(&mut |p| {
                            match p {
                                super::SqlPart::Chunk(c) => imp.chunk(c)?,
                                super::SqlPart::End(e) => applied = Some(e),
                            }
                            Ok(())
                        })
                        .unwrap();
                    let staged = imp.finish(applied.unwrap()).unwrap();
                    assert_eq!(t.install_staged().unwrap(), staged);
                    // The copy holds what was committed; replay the rest (empty entries).
                    assert!(staged <= s.applied_index());
                    s = t;
                    dirs.push(fresh);
                }
                _ => {}
            }
        }
        let want = super::store::digest_of(&model).unwrap();
        assert_eq!(s.digest().unwrap(), want, "seed {seed}");
    }
}

#[test]
fn no_user_statement_can_make_the_entry_commit_fail() {
    let d = tempfile::tempdir().unwrap();
    let mut s = open(d.path());
    ok(&exec(
        &mut s,
        req(&[
            "CREATE TABLE p (id INTEGER PRIMARY KEY)",
            "CREATE TABLE c (p REFERENCES p (id) DEFERRABLE INITIALLY DEFERRED)",
        ]),
    ));
    // A dangling reference: with enforced deferred keys, SQLite would refuse the COMMIT
    // of the whole entry.
    let out = s
        .apply(1, &[w(1, 1, req(&["INSERT INTO c VALUES (42)"]))])
        .unwrap();
    assert!(matches!(&out[0], SqlOutcome::Results(r) if r[0].error.is_none()));
    assert_eq!(s.applied_index(), 2);
}

/// Apply throughput of single-row INSERT entries (one write per entry, with a session),
/// and of one entry holding a 100-row transaction. A measurement, not a test:
/// `cargo test --lib sql::store_tests::apply_throughput -- --ignored --nocapture`.
#[test]
#[ignore]
fn apply_throughput() {
    let d = tempfile::tempdir().unwrap();
    let mut s = open(d.path());
    ok(&exec(
        &mut s,
        req(&["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"]),
    ));
    let n = 5000u64;
    let t0 = std::time::Instant::now();
    for i in 0..n {
        let at = s.applied_index();
        s.apply(
            at,
            &[w(1, i + 1, req(&["INSERT INTO t (v) VALUES ('hello')"]))],
        )
        .unwrap();
    }
    let single = t0.elapsed();
    let stmts: Vec<String> = (0..100)
        .map(|i| format!("INSERT INTO t (v) VALUES ('row {i}')"))
        .collect();
    let refs: Vec<&str> = stmts.iter().map(String::as_str).collect();
    let t1 = std::time::Instant::now();
    for i in 0..200u64 {
        let at = s.applied_index();
        s.apply(at, &[w(2, i + 1, tx(&refs))]).unwrap();
    }
    let batch = t1.elapsed();
    let t2 = std::time::Instant::now();
    s.flush().unwrap();
    eprintln!(
        "single-row INSERT entries: {:.0}/s; 100-row transactions: {:.0}/s ({:.0} rows/s); flush {:?}",
        n as f64 / single.as_secs_f64(),
        200.0 / batch.as_secs_f64(),
        20_000.0 / batch.as_secs_f64(),
        t2.elapsed()
    );
}

#[test]
fn date_functions_at_apply_compute_but_never_read_the_clock() {
    let d = tempfile::tempdir().unwrap();
    let mut s = open(d.path());
    ok(&exec(
        &mut s,
        req(&[
            "CREATE TABLE u (c TEXT)",
            "INSERT INTO u VALUES ('2024-02-29 13:45:07'), ('now')",
            "CREATE TABLE t (d TEXT CHECK (date(d) IS NOT NULL), \
             y INTEGER GENERATED ALWAYS AS (CAST(strftime('%Y', d) AS INTEGER)))",
            "CREATE INDEX t_day ON t (date(d))",
            "CREATE TABLE k (ts TEXT DEFAULT CURRENT_TIMESTAMP, v)",
        ]),
    ));
    let rs = exec(
        &mut s,
        req(&[
            "SELECT datetime('2024-02-29 13:45:07', '+1 day'), julianday('2000-01-01'), \
             unixepoch('1970-01-02'), strftime('%H:%M', '2024-02-29 13:45:07'), \
             timediff('2024-02-29', '2024-02-28')",
            "INSERT INTO t (d) VALUES ('2024-02-29 13:45:07')",
        ]),
    );
    ok(&rs);
    assert_eq!(
        rs[0].rows[0],
        vec![
            Value::Text("2024-03-01 13:45:07".into()),
            Value::Real(2_451_544.5),
            Value::Integer(86_400),
            Value::Text("13:45".into()),
            Value::Text("+0000-00-01 00:00:00.000".into()),
        ]
    );
    assert_eq!(
        rows(&s, "SELECT y FROM t"),
        vec![vec![Value::Integer(2024)]]
    );
    // A 'now' that only shows up at apply, from a column, fails (on every node alike);
    // so does a DEFAULT that reads the clock.
    let rs = exec(
        &mut s,
        req(&[
            "INSERT INTO t (d) SELECT datetime(c) FROM u",
            "INSERT INTO k (v) VALUES (1)",
        ]),
    );
    assert!(err_of(&rs[0]).contains("'now'"), "{rs:?}");
    assert!(err_of(&rs[1]).contains("not deterministic"), "{rs:?}");
    assert_eq!(count(&s, "t"), 1);
    assert_eq!(count(&s, "k"), 0);
}

#[test]
fn an_autoincrement_table_out_of_rowids_is_a_statement_error_not_a_node_fault() {
    let d = tempfile::tempdir().unwrap();
    let mut s = open(d.path());
    ok(&exec(
        &mut s,
        req(&[
            "CREATE TABLE a (id INTEGER PRIMARY KEY AUTOINCREMENT, v)",
            "INSERT INTO a VALUES (9223372036854775807, 1)",
        ]),
    ));
    let rs = exec(
        &mut s,
        req(&["INSERT INTO a (v) VALUES (2)", "SELECT count(*) FROM a"]),
    );
    assert!(err_of(&rs[0]).contains("out of rowids"), "{rs:?}");
    assert_eq!(rs[1].rows, vec![vec![Value::Integer(1)]]);
    assert_eq!(s.applied_index(), 2);
}

#[test]
fn one_entry_cannot_grow_the_database_past_its_cap() {
    let d = tempfile::tempdir().unwrap();
    let limits = SqlLimits {
        max_entry_growth_bytes: 1 << 20,
        ..SqlLimits::default()
    };
    let mut s = SqlStore::open_with(d.path(), limits).unwrap();
    ok(&exec(&mut s, req(&["CREATE TABLE t (b BLOB)"])));
    let out = s
        .apply(
            1,
            &[
                w(1, 1, req(&["INSERT INTO t VALUES (zeroblob(100000))"])),
                w(
                    2,
                    1,
                    req(&[
                        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c \
                         LIMIT 100) INSERT INTO t SELECT zeroblob(100000) FROM c",
                        "INSERT INTO t VALUES (zeroblob(10))",
                    ]),
                ),
            ],
        )
        .unwrap();
    let SqlOutcome::Results(rs) = &out[1] else {
        panic!("{out:?}")
    };
    assert!(err_of(&rs[0]).contains("grow the database"), "{rs:?}");
    assert_eq!(rs[1].error, None);
    assert_eq!(count(&s, "t"), 2);
    // The cap is per entry: the next entry may grow again.
    ok(&exec(
        &mut s,
        req(&["INSERT INTO t VALUES (zeroblob(500000))"]),
    ));
    assert_eq!(count(&s, "t"), 3);
}

#[test]
fn many_concurrent_queries_share_a_bounded_pool() {
    let d = tempfile::tempdir().unwrap();
    let mut s = open(d.path());
    ok(&exec(
        &mut s,
        req(&["CREATE TABLE t (a)", "INSERT INTO t VALUES (1)"]),
    ));
    let threads: Vec<_> = (0..24)
        .map(|_| {
            let r = s.reader();
            std::thread::spawn(move || {
                for _ in 0..20 {
                    let out = r.query(&req(&["SELECT a FROM t"])).unwrap();
                    assert_eq!(out.results[0].rows, vec![vec![Value::Integer(1)]]);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let open = s.reader().open_readers();
    assert!(
        (1..=super::store::MAX_READERS).contains(&open),
        "{open} read connections"
    );
}
