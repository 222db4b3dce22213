//! Tests of the session rule: unit tests of [`decide`] and the encodings, then one suite
//! of behaviour tests written once against a [`Harness`] and run against BOTH state
//! machines — the key-value store on RocksDB and the SQL store on SQLite, each in a
//! temporary directory, reached through its `apply` as the node reaches it.

use super::*;
use crate::command::{KvCommand, ScanRange, Versioned, WriteOp, WriteResult};
use crate::kv::KvStore;
use crate::machine::StateMachine;
use crate::sql::store::{SqlOutcome, SqlStore, SqlWrite};
use crate::sql::{Request, Statement};
use std::fmt::Debug;
use std::path::Path;

const TTL: u64 = SESSION_TTL_ENTRIES;

// ---- the rule and the encodings ----------------------------------------------------

#[test]
fn retry_reuse_older_and_expiry_by_index() {
    let a = fingerprint("INSERT INTO t VALUES (1)");
    let b = fingerprint("INSERT INTO t VALUES (2)");
    assert_ne!(a, b);
    let done = |n: i64| WriteResult::Incr {
        value: n,
        version: 1,
    };
    assert_eq!(decide::<WriteResult>(None, 7, 1, a, 10), Decision::Run);
    let rec = record(5, a, 10, &done(1));
    assert_eq!(decide(Some(&rec), 7, 5, a, 11), Decision::Answer(done(1)));
    assert_eq!(decide(Some(&rec), 7, 6, b, 11), Decision::Run);
    match decide(Some(&rec), 7, 5, b, 11) {
        Decision::Answer(WriteResult::SessionReused(m)) => assert!(m.contains(SESSION_REUSED)),
        d => panic!("{d:?}"),
    }
    assert!(matches!(
        decide(Some(&rec), 7, 4, a, 11),
        Decision::Answer(WriteResult::Superseded(_))
    ));
    // Alive through L + TTL + 1, forgotten after: any seq runs again.
    let last = 10 + TTL + 1;
    assert_eq!(decide(Some(&rec), 7, 5, a, last), Decision::Answer(done(1)));
    assert_eq!(decide(Some(&rec), 7, 5, a, last + 1), Decision::Run);
    assert_eq!(decide(Some(&rec), 7, 4, a, last + 1), Decision::Run);
}

#[test]
fn buckets_are_swept_only_once_every_index_in_them_expired() {
    for last in [0, 1, SWEEP_BUCKET - 1, SWEEP_BUCKET, 5 * SWEEP_BUCKET + 17] {
        let b = bucket(last);
        assert!(b <= last && last < b + SWEEP_BUCKET);
        // The first entry after which the bucket may be swept...
        let first = (0..)
            .map(|i| b + TTL + i)
            .find(|i| sweepable_below(*i).is_some_and(|below| b < below));
        let first = first.unwrap();
        // ... comes after every index of the bucket stopped being alive.
        for l in b..b + SWEEP_BUCKET {
            assert!(!alive(l, first + 1), "last use {l}, swept after {first}");
        }
        // And not later than needed for the bucket's last index.
        assert!(alive(b + SWEEP_BUCKET - 1, first), "bucket {b} swept late");
    }
}

/// The KV layout is the bytes earlier releases wrote (and still reads their older one);
/// the SQL outcome layout is the one its `_paxosdb_sessions` rows hold.
#[test]
fn encodings_are_the_layouts_earlier_releases_wrote() {
    #[derive(serde::Serialize)]
    struct OldKv {
        seq: u64,
        result: WriteResult,
        last_index: u64,
        digest: u64,
        elided: bool,
    }
    #[derive(serde::Serialize)]
    struct OldKvV1 {
        seq: u64,
        result: WriteResult,
        last_index: u64,
        digest: u64,
    }
    #[derive(serde::Serialize)]
    enum OldSql {
        Outcome(SqlOutcome),
        NotKept { bytes: u64 },
    }
    let result = WriteResult::Put {
        version: 3,
        prev: Some(Versioned {
            value: b"v".to_vec(),
            version: 2,
        }),
    };
    let rec = Record {
        seq: 4,
        last_index: 99,
        fingerprint: 1234,
        kept: Kept::Trimmed(result.clone()),
    };
    let old = OldKv {
        seq: 4,
        result: result.clone(),
        last_index: 99,
        digest: 1234,
        elided: true,
    };
    assert_eq!(
        encode_record(&rec).unwrap(),
        bincode::serialize(&old).unwrap()
    );
    assert_eq!(
        decode_record::<WriteResult>(&bincode::serialize(&old).unwrap()).unwrap(),
        rec
    );
    let v1 = OldKvV1 {
        seq: 4,
        result: result.clone(),
        last_index: 99,
        digest: 1234,
    };
    assert_eq!(
        decode_record::<WriteResult>(&bincode::serialize(&v1).unwrap()).unwrap(),
        Record {
            kept: Kept::Whole(result),
            ..rec
        }
    );
    let out = SqlOutcome::Rejected("no".into());
    assert_eq!(
        encode_kept(&Kept::Whole(out.clone())).unwrap(),
        bincode::serialize(&OldSql::Outcome(out)).unwrap()
    );
    assert_eq!(
        encode_kept::<SqlOutcome>(&Kept::NotKept { bytes: 70_000 }).unwrap(),
        bincode::serialize(&OldSql::NotKept { bytes: 70_000 }).unwrap()
    );
}

// ---- one suite, both state machines ------------------------------------------------

/// A write of the suite, as each state machine spells it.
#[derive(Clone, Debug)]
enum Write {
    /// Adds `n` to a counter (different `n`: a different request).
    Add(i64),
    /// A write whose outcome takes more than [`RESULT_KEEP`] bytes.
    Big,
}

/// How the suite sees an outcome.
#[derive(Debug, PartialEq)]
enum Kind {
    Done,
    Rejected(String),
    Superseded(String),
    Reused(String),
}

/// A state machine in a directory, driven entry by entry.
trait Harness: Sized {
    type Out: Clone + Debug + PartialEq;
    fn open(dir: &Path) -> Self;
    /// Applies one entry of `(client, seq, write)` at the next index.
    fn apply(&mut self, writes: &[(u64, u64, Write)]) -> Vec<Self::Out>;
    fn applied(&self) -> u64;
    fn counter(&self) -> i64;
    /// The user-visible state, to check that nothing changed.
    fn state(&self) -> String;
    /// Session records physically stored.
    fn records(&self) -> usize;
    fn kind(out: &Self::Out) -> Kind;
    /// Makes what a state machine might restore of a trimmed outcome unavailable (the KV
    /// store re-reads an unkept value while its key keeps that version).
    fn move_on(&mut self) {}

    /// Empty entries until the next one applied has index `index`.
    fn skip_to(&mut self, index: u64) {
        while self.applied() < index {
            self.apply(&[]);
        }
    }
    fn one(&mut self, client: u64, seq: u64, w: Write) -> Self::Out {
        self.apply(&[(client, seq, w)]).remove(0)
    }
}

struct Kv {
    kv: KvStore,
}

impl Harness for Kv {
    type Out = WriteResult;
    fn open(dir: &Path) -> Self {
        let path = dir.join("db");
        let db = crate::storage::db::open_db(&path).unwrap();
        let mut kv = KvStore::open(db).unwrap();
        if kv.applied_index() == 0 {
            // The value a big write returns (its previous value).
            let put = KvCommand {
                client_id: 0,
                seq: 0,
                op: WriteOp::Put {
                    key: b"big".to_vec(),
                    value: vec![7; 2 * RESULT_KEEP],
                    return_prev: false,
                },
                user: None,
            };
            kv.apply_kv(0, &[put]).unwrap();
        }
        Kv { kv }
    }
    fn apply(&mut self, writes: &[(u64, u64, Write)]) -> Vec<WriteResult> {
        let cmds: Vec<KvCommand> = writes
            .iter()
            .map(|(client_id, seq, w)| KvCommand {
                client_id: *client_id,
                seq: *seq,
                op: match w {
                    Write::Add(n) => WriteOp::Incr {
                        key: b"n".to_vec(),
                        delta: *n,
                    },
                    Write::Big => WriteOp::Put {
                        key: b"big".to_vec(),
                        value: vec![8; 2 * RESULT_KEEP],
                        return_prev: true,
                    },
                },
                user: None,
            })
            .collect();
        let at = self.kv.applied_index();
        self.kv.apply_kv(at, &cmds).unwrap()
    }
    fn applied(&self) -> u64 {
        self.kv.applied_index()
    }
    fn counter(&self) -> i64 {
        self.kv
            .get(b"n")
            .unwrap()
            .0
            .map_or(0, |v| String::from_utf8(v.value).unwrap().parse().unwrap())
    }
    fn state(&self) -> String {
        let all = ScanRange::Prefix(Vec::new());
        format!("{:?}", self.kv.scan(&all, 1000).unwrap().0)
    }
    fn records(&self) -> usize {
        self.kv.session_records().unwrap()
    }
    fn kind(out: &WriteResult) -> Kind {
        match out {
            WriteResult::Rejected(m) => Kind::Rejected(m.clone()),
            WriteResult::Superseded(m) => Kind::Superseded(m.clone()),
            WriteResult::SessionReused(m) => Kind::Reused(m.clone()),
            _ => Kind::Done,
        }
    }
    fn move_on(&mut self) {
        let put = KvCommand {
            client_id: 0,
            seq: 0,
            op: WriteOp::Put {
                key: b"big".to_vec(),
                value: b"other".to_vec(),
                return_prev: false,
            },
            user: None,
        };
        let at = self.kv.applied_index();
        self.kv.apply_kv(at, &[put]).unwrap();
    }
}

struct Sql {
    s: SqlStore,
}

impl Harness for Sql {
    type Out = SqlOutcome;
    fn open(dir: &Path) -> Self {
        let mut s = SqlStore::open(dir).unwrap();
        if s.applied_index() == 0 {
            let setup = SqlWrite {
                client_id: 0,
                seq: 0,
                request: request(&["CREATE TABLE c (n INTEGER)", "INSERT INTO c VALUES (0)"]),
                user: None,
            };
            s.apply(0, &[setup]).unwrap();
        }
        Sql { s }
    }
    fn apply(&mut self, writes: &[(u64, u64, Write)]) -> Vec<SqlOutcome> {
        let writes: Vec<SqlWrite> = writes
            .iter()
            .map(|(client_id, seq, w)| SqlWrite {
                client_id: *client_id,
                seq: *seq,
                request: match w {
                    Write::Add(n) => request(&[&format!("UPDATE c SET n = n + {n}")]),
                    Write::Big => request(&[
                        "UPDATE c SET n = n + 1000",
                        &format!("SELECT zeroblob({})", 2 * RESULT_KEEP),
                    ]),
                },
                user: None,
            })
            .collect();
        let at = self.s.applied_index();
        self.s.apply(at, &writes).unwrap()
    }
    fn applied(&self) -> u64 {
        self.s.applied_index()
    }
    fn counter(&self) -> i64 {
        let out = self.s.query(&request(&["SELECT n FROM c"])).unwrap();
        match out.results[0].rows[0][0] {
            crate::sql::Value::Integer(n) => n,
            ref v => panic!("{v:?}"),
        }
    }
    fn state(&self) -> String {
        self.s.digest().unwrap().to_string()
    }
    fn records(&self) -> usize {
        self.s.session_records().unwrap()
    }
    fn kind(out: &SqlOutcome) -> Kind {
        match out {
            SqlOutcome::Results(r) => {
                assert!(r.iter().all(|r| r.error.is_none()), "{r:?}");
                Kind::Done
            }
            SqlOutcome::Rejected(m) => Kind::Rejected(m.clone()),
            SqlOutcome::Superseded(m) => Kind::Superseded(m.clone()),
            SqlOutcome::SessionReused(m) => Kind::Reused(m.clone()),
            SqlOutcome::Denied(m) => Kind::Rejected(m.clone()),
        }
    }
}

fn request(sqls: &[&str]) -> Request {
    Request {
        statements: sqls.iter().map(|s| Statement::new(*s)).collect(),
        transaction: false,
    }
}

fn duplicate_returns_the_remembered_answer<H: Harness>() {
    let d = tempfile::tempdir().unwrap();
    let mut h = H::open(d.path());
    let first = h.one(1, 1, Write::Add(1));
    assert_eq!(H::kind(&first), Kind::Done);
    // A retry in a later entry, and the same write twice in one entry.
    assert_eq!(h.one(1, 1, Write::Add(1)), first);
    let both = h.apply(&[(1, 1, Write::Add(1)), (1, 1, Write::Add(1))]);
    assert_eq!(both, vec![first.clone(), first]);
    assert_eq!(h.counter(), 1, "applied once");
}

fn a_reused_seq_with_another_request_is_rejected<H: Harness>() {
    let d = tempfile::tempdir().unwrap();
    let mut h = H::open(d.path());
    h.one(1, 1, Write::Add(1));
    let before = h.state();
    match H::kind(&h.one(1, 1, Write::Add(2))) {
        Kind::Reused(m) => assert!(m.contains(SESSION_REUSED), "{m}"),
        k => panic!("{k:?}"),
    }
    assert_eq!(h.state(), before, "nothing ran");
    // Within one entry too: the second write sees the first one's record.
    match &h.apply(&[(2, 1, Write::Add(1)), (2, 1, Write::Add(5))])[..] {
        [a, b] => {
            assert_eq!(H::kind(a), Kind::Done);
            assert!(matches!(H::kind(b), Kind::Reused(_)), "{b:?}");
        }
        o => panic!("{o:?}"),
    }
    assert_eq!(h.counter(), 2);
}

fn an_older_seq_is_superseded<H: Harness>() {
    let d = tempfile::tempdir().unwrap();
    let mut h = H::open(d.path());
    h.one(1, 1, Write::Add(1));
    h.one(1, 2, Write::Add(1));
    let before = h.state();
    match H::kind(&h.one(1, 1, Write::Add(1))) {
        Kind::Superseded(m) => assert!(m.contains("older than its last applied"), "{m}"),
        k => panic!("{k:?}"),
    }
    assert_eq!(h.state(), before, "nothing ran");
    assert_eq!(h.counter(), 2);
}

/// A record last used at `L` answers a duplicate decided at `L + TTL + 1` (and that
/// answer does not renew it); at `L + TTL + 2` the write runs again.
fn expiry_is_exactly_at_the_ttl_boundary<H: Harness>() {
    let d = tempfile::tempdir().unwrap();
    let mut h = H::open(d.path());
    let l = h.applied();
    let first = h.one(1, 1, Write::Add(1));
    h.one(2, 1, Write::Add(1)); // last used at l + 1
    h.skip_to(l + TTL + 1);
    assert_eq!(h.one(1, 1, Write::Add(1)), first, "alive at L + TTL + 1");
    assert_eq!(h.counter(), 2);
    assert_eq!(h.applied(), l + TTL + 2);
    assert_eq!(H::kind(&h.one(1, 1, Write::Add(1))), Kind::Done);
    assert_eq!(h.counter(), 3, "forgotten at L + TTL + 2: applied again");
    // Client 2 (last used at L + 1) expired with entry L + TTL + 2 as well.
    assert_eq!(H::kind(&h.one(2, 1, Write::Add(1))), Kind::Done);
    assert_eq!(h.counter(), 4);
}

/// Records are kept while alive, then swept at most [`SWEEP_MAX`] per entry, until none
/// of the expired ones is left — within [`SWEEP_BUCKET`] entries (plus the backlog) of
/// expiring. A "ticker" client writes in every entry of the sweep phase (the SQL store
/// touches its database, and so sweeps, only in entries with writes).
fn the_sweep_is_bounded_per_entry<H: Harness>() {
    const TICKER: u64 = 1 << 40;
    let d = tempfile::tempdir().unwrap();
    let mut h = H::open(d.path());
    let before = h.records() as u64;
    let n = SWEEP_MAX as u64 + 300;
    let l = h.applied();
    let writes: Vec<_> = (1..=n).map(|c| (c, 1, Write::Add(1))).collect();
    h.apply(&writes);
    h.one(TICKER, 1, Write::Add(1));
    assert_eq!(h.records() as u64, before + n + 1);
    h.skip_to(l + TTL + 1);
    assert_eq!(
        h.records() as u64,
        before + n + 1,
        "nothing swept before it expired"
    );
    let mut counts = vec![h.records()];
    let mut seq = 1;
    while h.records() > 1 {
        assert!(
            h.applied() < l + TTL + 2 * SWEEP_BUCKET,
            "sweep never finished"
        );
        seq += 1;
        assert_eq!(H::kind(&h.one(TICKER, seq, Write::Add(1))), Kind::Done);
        counts.push(h.records());
    }
    let steps: Vec<usize> = counts.windows(2).map(|w| w[0] - w[1]).collect();
    assert!(steps.iter().all(|s| *s <= SWEEP_MAX), "{steps:?}");
    assert!(
        steps.contains(&SWEEP_MAX),
        "the bound was reached: {steps:?}"
    );
    // The expired clients are forgotten: their write runs again.
    let again = h.counter();
    assert_eq!(H::kind(&h.one(1, 1, Write::Add(1))), Kind::Done);
    assert_eq!(h.counter(), again + 1);
}

fn records_survive_a_restart<H: Harness>() {
    let d = tempfile::tempdir().unwrap();
    let mut h = H::open(d.path());
    let first = h.one(9, 5, Write::Add(1));
    h.one(8, 1, Write::Add(1));
    drop(h);
    let mut h = H::open(d.path());
    assert_eq!(h.one(9, 5, Write::Add(1)), first);
    assert!(matches!(
        H::kind(&h.one(9, 4, Write::Add(1))),
        Kind::Superseded(_)
    ));
    assert!(matches!(
        H::kind(&h.one(9, 5, Write::Add(3))),
        Kind::Reused(_)
    ));
    assert_eq!(h.counter(), 2);
}

fn an_outcome_too_large_is_applied_not_kept<H: Harness>() {
    let d = tempfile::tempdir().unwrap();
    let mut h = H::open(d.path());
    assert_eq!(H::kind(&h.one(3, 1, Write::Big)), Kind::Done);
    assert!(h.records() > 0);
    h.move_on();
    let before = h.state();
    match H::kind(&h.one(3, 1, Write::Big)) {
        Kind::Superseded(m) => assert!(m.contains("too large"), "{m}"),
        k => panic!("{k:?}"),
    }
    assert_eq!(h.state(), before, "not applied again");
}

macro_rules! suite {
    ($name:ident, $harness:ty) => {
        mod $name {
            #[test]
            fn duplicate_returns_the_remembered_answer() {
                super::duplicate_returns_the_remembered_answer::<$harness>();
            }
            #[test]
            fn a_reused_seq_with_another_request_is_rejected() {
                super::a_reused_seq_with_another_request_is_rejected::<$harness>();
            }
            #[test]
            fn an_older_seq_is_superseded() {
                super::an_older_seq_is_superseded::<$harness>();
            }
            #[test]
            fn expiry_is_exactly_at_the_ttl_boundary() {
                super::expiry_is_exactly_at_the_ttl_boundary::<$harness>();
            }
            #[test]
            fn the_sweep_is_bounded_per_entry() {
                super::the_sweep_is_bounded_per_entry::<$harness>();
            }
            #[test]
            fn records_survive_a_restart() {
                super::records_survive_a_restart::<$harness>();
            }
            #[test]
            fn an_outcome_too_large_is_applied_not_kept() {
                super::an_outcome_too_large_is_applied_not_kept::<$harness>();
            }
        }
    };
}

suite!(kv, super::Kv);
suite!(sql, super::Sql);
