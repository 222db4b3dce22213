//! Tests of the SQL store's apply-time rights check: a SQL write runs as the user who
//! sent it, and every replica checks that user again where it applies the write, against
//! the user table as of the write's entry — the key-value store's, on real RocksDB and
//! SQLite files — including when the SQL store replays entries the key-value store
//! applied before a crash.

use super::machine::SqlMachine;
use super::store::{SqlOutcome, SqlStore, SqlWrite};
use super::store_tests::{req, rows, tx};
use super::{Request, Value};
use crate::auth::{Role, UserChange};
use crate::command::{KvCommand, WriteOp, WriteResult};
use crate::kv::KvStore;
use crate::machine::{Command, Machine, Machines, Outcome, StateMachine};
use crate::storage::db::open_db;
use std::path::Path;

fn set_user(name: &str, role: Role, prefix: &[u8], enabled: bool) -> KvCommand {
    KvCommand {
        client_id: 77,
        seq: 0, // set by `Pair::entry`
        op: WriteOp::SetUser {
            name: name.into(),
            change: UserChange {
                role: Some(role),
                prefix: Some(prefix.to_vec()),
                enabled: Some(enabled),
                ..Default::default()
            },
            only_if_no_users: false,
        },
        user: None,
    }
}

fn delete_user(name: &str) -> KvCommand {
    KvCommand {
        op: WriteOp::DeleteUser { name: name.into() },
        ..set_user(name, Role::Read, b"", false)
    }
}

fn by(user: Option<&str>, client_id: u64, seq: u64, request: Request) -> SqlWrite {
    SqlWrite {
        client_id,
        seq,
        request,
        user: user.map(str::to_string),
    }
}

fn count(s: &SqlStore) -> i64 {
    match rows(s, "SELECT count(*) FROM t")[0][0] {
        Value::Integer(n) => n,
        ref v => panic!("{v:?}"),
    }
}

/// A node's two stores, applied as the node core applies them: each entry's key-value
/// commands first, then its SQL writes.
struct Pair {
    kv: KvStore,
    sql: SqlStore,
    kv_seq: u64,
}

impl Pair {
    fn open(dir: &Path) -> Pair {
        Pair {
            kv: KvStore::open(open_db(&dir.join("db")).unwrap()).unwrap(),
            sql: SqlStore::open(&dir.join("sql")).unwrap(),
            kv_seq: 0,
        }
    }

    fn kv_only(&mut self, kv: Vec<KvCommand>) -> u64 {
        let i = self.kv.applied_index();
        let kv: Vec<KvCommand> = (kv.into_iter())
            .map(|mut c| {
                self.kv_seq += 1;
                c.seq = self.kv_seq;
                c
            })
            .collect();
        for r in self.kv.apply_kv(i, &kv).unwrap() {
            assert!(matches!(r, WriteResult::User { changed: true }), "{r:?}");
        }
        i
    }

    fn entry(&mut self, kv: Vec<KvCommand>, sql: Vec<SqlWrite>) -> Vec<SqlOutcome> {
        let i = self.kv_only(kv);
        assert_eq!(self.sql.applied_index(), i);
        self.sql.apply_checked(i, &sql, Some(&self.kv)).unwrap()
    }
}

fn denied(out: &SqlOutcome, why: &str) {
    assert!(
        matches!(out, SqlOutcome::Denied(m) if m.contains(why)),
        "{out:?} does not say {why:?}"
    );
}

/// The store-level check: a user demoted, disabled, limited to a key prefix or deleted
/// by an entry is refused for the SQL writes of that entry and later ones, as a whole
/// (no statement of a multi-statement request runs), and a retry is answered the same.
#[test]
fn a_sql_write_is_checked_against_its_users_rights_where_it_is_applied() {
    let d = tempfile::tempdir().unwrap();
    let mut p = Pair::open(d.path());
    let make = by(None, 0, 0, req(&["CREATE TABLE t (n INTEGER)"]));
    p.entry(
        vec![
            set_user("ann", Role::ReadWrite, b"", true),
            set_user("root", Role::Admin, b"", true),
        ],
        vec![make],
    );
    let out = p.entry(
        vec![],
        vec![by(Some("ann"), 5, 1, req(&["INSERT INTO t VALUES (1)"]))],
    );
    assert!(
        matches!(&out[0], SqlOutcome::Results(r) if r[0].error.is_none()),
        "{out:?}"
    );

    // Demoted to read in the write's entry: nothing of the request runs.
    let two = req(&["INSERT INTO t VALUES (2)", "INSERT INTO t VALUES (3)"]);
    let out = p.entry(
        vec![set_user("ann", Role::Read, b"", true)],
        vec![by(Some("ann"), 5, 2, two.clone())],
    );
    denied(&out[0], "may not execute SQL");
    // The retry of the same session gets the same answer, still without running.
    let again = p.entry(vec![], vec![by(Some("ann"), 5, 2, two)]);
    denied(&again[0], "may not execute SQL");
    assert_eq!(count(&p.sql), 1);

    let ins = |seq, n: i64| {
        by(
            Some("ann"),
            5,
            seq,
            tx(&[&format!("INSERT INTO t VALUES ({n})"), "SELECT 1"]),
        )
    };
    let out = p.entry(
        vec![set_user("ann", Role::ReadWrite, b"", false)],
        vec![ins(3, 4)],
    );
    denied(&out[0], "user ann is disabled");
    let out = p.entry(
        vec![set_user("ann", Role::ReadWrite, b"a/", true)],
        vec![ins(4, 5)],
    );
    denied(&out[0], "limited to keys under the prefix");
    // Allowed again: it runs.
    let out = p.entry(
        vec![set_user("ann", Role::ReadWrite, b"", true)],
        vec![ins(5, 6)],
    );
    assert!(matches!(&out[0], SqlOutcome::Results(_)), "{out:?}");
    let out = p.entry(vec![delete_user("ann")], vec![ins(6, 7)]);
    denied(&out[0], "user ann no longer exists");
    // A write that runs as no user is not checked.
    let out = p.entry(
        vec![],
        vec![by(None, 6, 1, req(&["INSERT INTO t VALUES (8)"]))],
    );
    assert!(matches!(&out[0], SqlOutcome::Results(_)), "{out:?}");
    assert_eq!(
        rows(&p.sql, "SELECT n FROM t ORDER BY n"),
        vec![
            vec![Value::Integer(1)],
            vec![Value::Integer(6)],
            vec![Value::Integer(8)]
        ]
    );

    // Without a user table, a write that names a user cannot be checked: denied.
    let i = p.sql.applied_index();
    let out = (p
        .sql
        .apply(i, &[by(Some("root"), 7, 1, req(&["DELETE FROM t"]))]))
    .unwrap();
    denied(&out[0], "cannot be checked");
    assert_eq!(count(&p.sql), 3);
}

/// An entry that changes users is committed by the SQL store even when it has no SQL
/// write (an entry without one otherwise only advances the applied index in memory):
/// after a restart the SQL store is never behind such an entry the key-value store
/// applied, which is what lets `KvStore::user_after` answer for every entry it replays.
#[test]
fn an_entry_that_changes_users_is_committed_by_the_sql_store() {
    let d = tempfile::tempdir().unwrap();
    let mut p = Pair::open(d.path());
    p.entry(
        vec![],
        vec![by(None, 0, 0, req(&["CREATE TABLE t (n INTEGER)"]))],
    );
    p.entry(vec![], vec![]);
    p.entry(vec![set_user("ann", Role::ReadWrite, b"", true)], vec![]);
    p.entry(vec![], vec![]);
    assert_eq!(p.sql.applied_index(), 4);
    drop(p.sql);
    let sql = SqlStore::open(&d.path().join("sql")).unwrap();
    // Entry 2 (the user change) is durable in the SQL store; entry 3 need not be.
    assert_eq!(sql.applied_index(), 3);
}

fn sql_cmd(user: &str, client_id: u64, sql: &str) -> Command {
    Command {
        client_id,
        seq: 1,
        user: Some(user.into()),
        machine: Machine::Sql,
        payload: bincode::serialize(&req(&[sql])).unwrap(),
    }
}

fn machines(dir: &Path) -> Machines {
    let kv = KvStore::open(open_db(&dir.join("db")).unwrap()).unwrap();
    let sql = SqlStore::open(&dir.join("sql")).unwrap();
    Machines::from(Box::new(kv.clone())).with(Box::new(SqlMachine::with_users(sql, Box::new(kv))))
}

/// Through the node's machines: a SQL write proposed while its user could write (the
/// command carries the user, as `SqlHandle` builds it) and decided after an entry that
/// disabled the user is denied where it is applied, the waiting client gets
/// `Outcome::Denied` (the API's `PermissionDenied`), and nothing of it was written.
#[test]
fn a_write_proposed_before_its_user_was_disabled_is_denied_where_it_is_applied() {
    let d = tempfile::tempdir().unwrap();
    let mut ms = machines(d.path());
    let users = [
        set_user("ann", Role::ReadWrite, b"", true),
        set_user("root", Role::Admin, b"", true),
    ];
    let mut kv: Vec<Command> = users.iter().map(|c| c.encode()).collect();
    kv[0].seq = 1;
    kv[1].seq = 2;
    let create = sql_cmd("ann", 9, "CREATE TABLE t (n INTEGER)");
    let refs: Vec<&Command> = kv.iter().chain([&create]).collect();
    let out = ms.apply(0, &refs).unwrap();
    assert!(matches!(out[2], Outcome::Done(_)), "{out:?}");

    // Proposed while ann could write; an admin's disabling of ann is decided first.
    let proposed = sql_cmd("ann", 10, "INSERT INTO t VALUES (1)");
    let mut disable = set_user("ann", Role::ReadWrite, b"", false).encode();
    disable.seq = 3;
    let out = ms.apply(1, &[&disable]).unwrap();
    assert!(matches!(out[0], Outcome::Done(_)), "{out:?}");
    let out = ms.apply(2, &[&proposed]).unwrap();
    assert_eq!(out, vec![Outcome::Denied("user ann is disabled".into())]);

    drop(ms);
    let sql = SqlStore::open(&d.path().join("sql")).unwrap();
    assert_eq!(sql.applied_index(), 3);
    assert_eq!(count(&sql), 0);
}

/// The crash between the two engines' commits: the key-value store applied entries the
/// SQL store had not (its commits were lost), one of them demoting the user. Replaying
/// them, the SQL store checks each write against the user table as of ITS entry: the
/// write decided before the demotion runs, the one decided with it is denied (the
/// key-value store's current table would have denied both).
#[test]
fn a_replay_behind_the_key_value_store_checks_each_write_as_of_its_entry() {
    let d = tempfile::tempdir().unwrap();
    let mut p = Pair::open(d.path());
    p.entry(
        vec![
            set_user("ann", Role::ReadWrite, b"", true),
            set_user("root", Role::Admin, b"", true),
        ],
        vec![by(None, 0, 0, req(&["CREATE TABLE t (n INTEGER)"]))],
    );
    // The key-value store applies entries 1 and 2; the SQL store's commits of them are
    // lost in the crash.
    p.kv_only(vec![]);
    let mut demote = set_user("ann", Role::Read, b"", true);
    demote.seq = 100;
    p.kv_only(vec![demote.clone()]);
    drop(p);

    // The restarted node replays from the SQL store's applied index.
    let mut ms = machines(d.path());
    assert_eq!(ms.applied_index(), 1);
    let before = sql_cmd("ann", 11, "INSERT INTO t VALUES (1)");
    let out = ms.apply(1, &[&before]).unwrap();
    assert!(matches!(out[0], Outcome::Done(_)), "{out:?}");
    let after = sql_cmd("ann", 12, "INSERT INTO t VALUES (2)");
    let demote = demote.encode();
    let out = ms.apply(2, &[&demote, &after]).unwrap();
    assert!(matches!(out[0], Outcome::Superseded(_)), "{out:?}");
    assert!(
        matches!(&out[1], Outcome::Denied(m) if m.contains("may not execute SQL")),
        "{out:?}"
    );
    drop(ms);
    let sql = SqlStore::open(&d.path().join("sql")).unwrap();
    assert_eq!(rows(&sql, "SELECT n FROM t"), vec![vec![Value::Integer(1)]]);
}

/// Two user changes the SQL store has not seen cannot be undone with the one record the
/// key-value store keeps: that is a broken invariant, reported as an error (the node
/// stops applying), never a guess.
#[test]
fn the_user_table_of_an_entry_two_user_changes_back_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    let mut p = Pair::open(d.path());
    p.entry(vec![set_user("ann", Role::ReadWrite, b"", true)], vec![]);
    p.kv_only(vec![set_user("ann", Role::Read, b"", true)]);
    p.kv_only(vec![set_user("ann", Role::Admin, b"", true)]);
    p.kv_only(vec![]);
    let role = |p: &Pair, i| p.kv.user_after(i, "ann").unwrap().unwrap().role;
    // After the last change: the current record; one change back: the undo record.
    assert_eq!(role(&p, 3), Role::Admin);
    assert_eq!(role(&p, 2), Role::Admin);
    assert_eq!(role(&p, 1), Role::Read);
    match p.kv.user_after(0, "ann") {
        Err(crate::error::Error::Internal(m)) => assert!(m.contains("not known"), "{m}"),
        r => panic!("{r:?}"),
    }
    // An entry the key-value store has not applied is not answered either.
    assert!(matches!(
        p.kv.user_after(4, "ann"),
        Err(crate::error::Error::Internal(_))
    ));
}
