//! Tests of state transfer ([`super::transfer`], [`super::staging`]). Every test body runs
//! twice, on RocksDB (a temporary directory) and on the memory backend: `both!(name)`
//! makes `name::rocks` and `name::memory`.

use super::backend::{Backend, MemSpaces, Space};
use super::{KvStore, StateChunk, StateEnd, StateMachine, StatePart, CHUNK_BYTES};
use crate::command::{KeyValue, KvCommand, ScanRange, WriteOp, WriteResult};
use crate::error::Error;
use crate::storage::db::open_db;
use std::sync::{Arc, RwLock};

#[derive(Clone, Copy)]
pub(crate) enum Kind {
    Rocks,
    Memory,
}

/// Where a store lives, so that it can be reopened.
pub(crate) struct Place {
    kind: Kind,
    dir: tempfile::TempDir,
    mem: Arc<RwLock<MemSpaces>>,
}

impl Place {
    pub(crate) fn new(kind: Kind) -> Place {
        Place {
            kind,
            dir: tempfile::tempdir().unwrap(),
            mem: Arc::default(),
        }
    }

    /// Opens the store (again: drop every clone of the previous one first).
    pub(crate) fn open(&self) -> KvStore {
        match self.kind {
            Kind::Rocks => KvStore::open(open_db(&self.dir.path().join("db")).unwrap()).unwrap(),
            Kind::Memory => KvStore::open_memory(self.mem.clone()).unwrap(),
        }
    }
}

macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[test]
            fn rocks() {
                super::$name(super::Kind::Rocks)
            }
            #[test]
            fn memory() {
                super::$name(super::Kind::Memory)
            }
        }
    };
}

pub(crate) fn cmd(client_id: u64, seq: u64, op: WriteOp) -> KvCommand {
    KvCommand {
        client_id,
        seq,
        op,
        user: None,
    }
}

pub(crate) fn put(key: &str, value: &str) -> WriteOp {
    WriteOp::Put {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        return_prev: true,
    }
}

/// Applies one entry at the next index.
pub(crate) fn apply(kv: &mut KvStore, commands: &[KvCommand]) -> Vec<WriteResult> {
    let index = kv.applied_index();
    kv.apply_kv(index, commands).unwrap()
}

/// Puts, overwrites, deletes, a multi-put, an increment, from several sessions. Returns
/// a command of a session and its result, to retry later.
pub(crate) fn populate(kv: &mut KvStore, tag: &str) -> (KvCommand, WriteResult) {
    apply(kv, &[cmd(1, 1, put("a", tag)), cmd(2, 1, put("b", "x"))]);
    apply(kv, &[cmd(1, 2, put("a", &format!("{tag}-2")))]);
    let del = WriteOp::Delete {
        key: b"b".to_vec(),
        return_prev: true,
    };
    let multi = WriteOp::MultiPut {
        pairs: (0..20)
            .map(|i| {
                (
                    format!("m{i:02}").into_bytes(),
                    format!("{tag}{i}").into_bytes(),
                )
            })
            .collect(),
    };
    apply(kv, &[cmd(2, 2, del), cmd(3, 1, multi)]);
    let incr = cmd(
        4,
        7,
        WriteOp::Incr {
            key: b"n".to_vec(),
            delta: 5,
        },
    );
    let result = apply(kv, &[incr.clone(), cmd(3, 2, put("m03", "over"))]);
    (incr, result[0].clone())
}

/// The whole state as exported (both spaces, raw, and the applied index).
pub(crate) fn dump(kv: &KvStore) -> Vec<StatePart> {
    let mut parts = Vec::new();
    kv.export(&mut |p| {
        parts.push(p);
        Ok(())
    })
    .unwrap();
    parts
}

fn split(parts: Vec<StatePart>) -> (Vec<StateChunk>, StateEnd) {
    let mut chunks = Vec::new();
    for p in parts {
        match p {
            StatePart::Chunk(c) => chunks.push(c),
            StatePart::End(e) => return (chunks, e),
        }
    }
    panic!("export without end");
}

/// Stages `from`'s state in `to` (finished, not installed); returns its applied index.
fn stage(from: &KvStore, to: &KvStore) -> u64 {
    let (chunks, end) = split(dump(from));
    let mut imp = to.importer().unwrap();
    for c in chunks {
        imp.chunk(c).unwrap();
    }
    imp.finish(end).unwrap()
}

/// Every row, page by page (a scan stops at about `MAX_SCAN_BYTES`).
pub(crate) fn all_rows(kv: &KvStore) -> Vec<KeyValue> {
    let mut all: Vec<KeyValue> = Vec::new();
    loop {
        let from = all.last().map_or(vec![], |r| [&r.key[..], &[0]].concat());
        let range = ScanRange::Range { from, to: None };
        let (rows, more, _) = kv.scan(&range, usize::MAX).unwrap();
        all.extend(rows);
        if !more {
            return all;
        }
    }
}

/// The two stores hold the same state, byte for byte, and answer reads alike.
pub(crate) fn assert_same(a: &KvStore, b: &KvStore) {
    assert_eq!(dump(a), dump(b));
    assert_eq!(all_rows(a), all_rows(b));
    assert_eq!(a.applied_index(), b.applied_index());
    assert_eq!(a.revision(), b.revision());
    assert_eq!(a.get(b"a").unwrap(), b.get(b"a").unwrap());
}

/// Nothing is left in the inactive slot.
pub(crate) fn inactive_is_empty(kv: &KvStore) -> bool {
    match &kv.backend {
        Backend::Rocks(r) => [Space::Kv, Space::Sm].into_iter().all(|s| {
            let cf = r.cf(1 - r.live(), s);
            r.db.iterator_cf(cf, rocksdb::IteratorMode::Start)
                .next()
                .is_none()
        }),
        Backend::Memory(m) => {
            let m = m.read().unwrap();
            m.staging.kv.is_empty() && m.staging.sm.is_empty()
        }
    }
}

/// A source with some history and a receiver with a different, shorter one.
fn pair(kind: Kind) -> (Place, KvStore, Place, KvStore) {
    let (pa, pb) = (Place::new(kind), Place::new(kind));
    let (mut a, mut b) = (pa.open(), pb.open());
    populate(&mut a, "A");
    apply(&mut a, &[cmd(9, 1, put("z", "zz"))]);
    apply(
        &mut b,
        &[cmd(1, 1, put("a", "B-only")), cmd(5, 1, put("q", "q"))],
    );
    (pa, a, pb, b)
}

fn copies_state(kind: Kind) {
    let (pa, pb) = (Place::new(kind), Place::new(kind));
    let (mut a, mut b) = (pa.open(), pb.open());
    let (retry, answer) = populate(&mut a, "A");
    apply(&mut b, &[cmd(1, 1, put("a", "B-only"))]);
    let reader = b.clone();
    let before = dump(&b);

    assert_eq!(stage(&a, &b), a.applied_index());
    assert_eq!(dump(&b), before, "finish leaves the live state alone");
    assert_eq!(b.applied_index(), 1);

    assert_eq!(b.install_staged().unwrap(), a.applied_index());
    assert_same(&a, &b);
    assert_eq!(dump(&reader), dump(&a), "clones see the switch at once");
    assert!(inactive_is_empty(&b), "the old state is cleared");
    assert!(b.install_staged().is_err(), "a staged state installs once");

    // The sessions came along: a retry gets the original answer, on both.
    assert_eq!(
        apply(&mut b, std::slice::from_ref(&retry)),
        vec![answer.clone()]
    );
    assert_eq!(apply(&mut a, &[retry]), vec![answer]);
    assert_same(&a, &b);

    // Again, now into the other slot; the installed state survives a reopen.
    apply(&mut a, &[cmd(7, 1, put("late", "1"))]);
    stage(&a, &b);
    b.install_staged().unwrap();
    assert_same(&a, &b);
    drop((b, reader));
    let b = pb.open();
    assert_same(&a, &b);
}
both!(copies_state);

/// The applier remembers what it wrote last (its write cache); an installed state
/// replaces all of it. Node B wrote key `a` and client 1's record itself, then installs
/// A's state, in which both differ: client 1's retry of A's seq 2 must get A's answer,
/// and the next put of `a` must return A's value, exactly as on A.
fn an_install_replaces_what_the_applier_wrote(kind: Kind) {
    let (pa, pb) = (Place::new(kind), Place::new(kind));
    let (mut a, mut b) = (pa.open(), pb.open());
    populate(&mut a, "A");
    apply(&mut b, &[cmd(1, 1, put("a", "B-only"))]);
    apply(&mut b, &[cmd(8, 1, put("z", "B"))]);
    stage(&a, &b);
    b.install_staged().unwrap();
    let next = [
        cmd(1, 2, put("a", "A-2")),
        cmd(6, 1, put("a", "after")),
        cmd(8, 1, put("z", "again")),
    ];
    let on_a = apply(&mut a, &next);
    assert_eq!(apply(&mut b, &next), on_a);
    assert!(
        matches!(&on_a[1], WriteResult::Put { prev: Some(v), .. } if v.value == b"A-2"),
        "{on_a:?}"
    );
    assert_same(&a, &b);
}
both!(an_install_replaces_what_the_applier_wrote);

/// Keys left in the slot that is not live (RocksDB only).
fn keys_in_inactive_slot(kv: &KvStore) -> usize {
    let Backend::Rocks(r) = &kv.backend else {
        unreachable!("RocksDB only")
    };
    let slot = 1 - r.live();
    [Space::Kv, Space::Sm]
        .into_iter()
        .map(|space| {
            let it =
                r.db.iterator_cf(r.cf(slot, space), rocksdb::IteratorMode::Start);
            it.count()
        })
        .sum()
}

/// Once the live slot has flipped, the install has happened: a failure clearing the old
/// slot must not be reported as a failed install (the node would go on applying onto a
/// state it believes is not live) and must not leave the store half loaded. The old slot
/// is cleared at the next open instead.
#[test]
fn an_install_whose_cleanup_fails_is_still_an_install() {
    let (pa, pb) = (Place::new(Kind::Rocks), Place::new(Kind::Rocks));
    let (mut a, mut b) = (pa.open(), pb.open());
    populate(&mut a, "A");
    apply(&mut b, &[cmd(1, 1, put("a", "B-only"))]);
    apply(&mut b, &[cmd(8, 1, put("z", "B"))]);
    let staged = stage(&a, &b);
    let Backend::Rocks(r) = &b.backend else {
        unreachable!()
    };
    r.fail_cleanup
        .store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        b.install_staged().unwrap(),
        staged,
        "installed despite the failure"
    );
    assert_eq!(b.applied_index(), a.applied_index(), "counters reloaded");
    assert!(keys_in_inactive_slot(&b) > 0, "the clean-up really failed");
    let next = [cmd(1, 2, put("a", "A-2")), cmd(8, 1, put("z", "again"))];
    assert_eq!(apply(&mut b, &next), apply(&mut a, &next));
    assert_same(&a, &b);
    drop(b);
    let b = pb.open();
    assert_eq!(keys_in_inactive_slot(&b), 0, "opening clears the old slot");
    assert_same(&a, &b);
}

/// Creates user alice, enabled, with one password hash.
fn set_alice() -> WriteOp {
    let change = crate::auth::UserChange {
        enabled: Some(true),
        add_passwords: vec!["$hash".into()],
        ..Default::default()
    };
    WriteOp::SetUser {
        name: "alice".into(),
        change,
        only_if_no_users: false,
    }
}

/// Users are part of the state a lagging node receives.
fn users_travel_with_the_state(kind: Kind) {
    let (_pa, mut a, _pb, mut b) = pair(kind);
    apply(&mut a, &[cmd(11, 1, set_alice())]);
    assert!(b.user("alice").unwrap().is_none());
    stage(&a, &b);
    b.install_staged().unwrap();
    assert_eq!(b.user("alice").unwrap(), a.user("alice").unwrap());
    assert!(b.user("alice").unwrap().is_some());
    assert_same(&a, &b);
}
both!(users_travel_with_the_state);

/// `has_users` answers from memory between changes, so every change of the user table
/// must reach every clone at once: an applied user, an installed state. (Users are never
/// all deleted again: the last one cannot be.)
fn has_users_follows_every_change_of_the_user_table(kind: Kind) {
    let alice = || cmd(11, 1, set_alice());
    let (_pa, mut a, _pb, b) = pair(kind);
    let reader = b.clone();
    assert!(!reader.has_users().unwrap());
    assert!(!reader.has_users().unwrap(), "remembered, still none");
    apply(&mut a, &[alice()]);
    assert!(a.has_users().unwrap(), "an applied user is seen");
    // A state with a user arrives from a peer: the switch is a change as well.
    stage(&a, &b);
    assert!(
        !reader.has_users().unwrap(),
        "a staged state is not live yet"
    );
    let mut b = b;
    b.install_staged().unwrap();
    assert!(
        reader.has_users().unwrap(),
        "an installed state's users are seen"
    );

    let pc = Place::new(kind);
    let mut c = pc.open();
    let reader = c.clone();
    assert!(!reader.has_users().unwrap());
    apply(&mut c, &[alice()]);
    assert!(
        reader.has_users().unwrap(),
        "every clone sees an applied user at once"
    );
}
both!(has_users_follows_every_change_of_the_user_table);

fn corrupt_chunk_is_refused(kind: Kind) {
    let (_pa, a, _pb, b) = pair(kind);
    let (chunks, end) = split(dump(&a));
    let mut imp = b.importer().unwrap();
    let mut bad = chunks[0].clone();
    bad.pairs[0].1[0] ^= 0x01;
    let err = imp.chunk(bad).unwrap_err();
    assert!(
        matches!(&err, Error::Storage(m) if m.contains("chunk 0 is corrupt")),
        "{err}"
    );
    let mut bad = chunks[0].clone();
    bad.crc ^= 0x8000;
    assert!(imp.chunk(bad).is_err());
    let mut bad = chunks[0].clone();
    bad.seq = 1;
    assert!(imp.chunk(bad).is_err(), "seq is covered by the crc");
    // A refused chunk changed nothing: the good copy continues the import.
    for c in chunks {
        imp.chunk(c).unwrap();
    }
    imp.finish(end).unwrap();
}
both!(corrupt_chunk_is_refused);

fn out_of_order_is_refused(kind: Kind) {
    let (_pa, a, _pb, b) = pair(kind);
    let (chunks, _) = split(dump(&a));
    assert!(chunks.len() >= 2, "one kv and one sm chunk at least");
    let mut imp = b.importer().unwrap();
    let err = imp.chunk(chunks[1].clone()).unwrap_err();
    assert!(err.to_string().contains("out of order"), "{err}");
    imp.chunk(chunks[0].clone()).unwrap();
    let err = imp.chunk(chunks[0].clone()).unwrap_err();
    assert!(err.to_string().contains("out of order"), "{err}");
    // A kv chunk after the sm space started.
    imp.chunk(chunks[1].clone()).unwrap();
    assert_eq!(chunks[1].space, 1);
    let late = StateChunk::seal(2, 0, vec![(b"zz".to_vec(), b"v".to_vec())]);
    let err = imp.chunk(late).unwrap_err();
    assert!(err.to_string().contains("after space sm"), "{err}");
    // Keys must ascend within a space.
    let mut imp = b.importer().unwrap();
    let mut pairs = chunks[0].pairs.clone();
    pairs.swap(0, 1);
    let err = imp.chunk(StateChunk::seal(0, 0, pairs)).unwrap_err();
    assert!(
        err.to_string().contains("out of order in space kv"),
        "{err}"
    );
}
both!(out_of_order_is_refused);

fn wrong_end_is_refused(kind: Kind) {
    let (_pa, a, _pb, mut b) = pair(kind);
    let live = dump(&b);
    let (chunks, end) = split(dump(&a));
    let wrongs = [
        (
            StateEnd {
                digest: end.digest ^ 1,
                ..end.clone()
            },
            "digest",
        ),
        (
            StateEnd {
                chunks: end.chunks + 1,
                ..end.clone()
            },
            "chunks",
        ),
        (
            StateEnd {
                pairs: end.pairs - 1,
                ..end.clone()
            },
            "pairs",
        ),
        (
            StateEnd {
                applied: end.applied + 1,
                ..end.clone()
            },
            "applied index",
        ),
    ];
    for (wrong, what) in wrongs {
        let mut imp = b.importer().unwrap();
        for c in &chunks {
            imp.chunk(c.clone()).unwrap();
        }
        let err = imp.finish(wrong).unwrap_err();
        assert!(err.to_string().contains(what), "{what}: {err}");
        let err = b.install_staged().unwrap_err();
        assert!(
            err.to_string().contains("no completely staged state"),
            "{err}"
        );
        assert_eq!(dump(&b), live);
    }
    // A missing chunk shows in the count.
    let mut imp = b.importer().unwrap();
    imp.chunk(chunks[0].clone()).unwrap();
    assert!(imp.finish(end).is_err());
    assert!(b.install_staged().is_err());
    assert_eq!(dump(&b), live);
}
both!(wrong_end_is_refused);

fn interrupted_import_is_discarded(kind: Kind) {
    let (_pa, a, pb, b) = pair(kind);
    let live = dump(&b);
    let (chunks, _) = split(dump(&a));
    let mut imp = b.importer().unwrap();
    imp.chunk(chunks[0].clone()).unwrap();
    drop((imp, b));
    let mut b = pb.open();
    assert_eq!(dump(&b), live);
    assert!(inactive_is_empty(&b), "open discards the partial state");
    assert!(b.install_staged().is_err());
    assert_eq!(dump(&b), live);
    // A new import works.
    stage(&a, &b);
    b.install_staged().unwrap();
    assert_same(&a, &b);
}
both!(interrupted_import_is_discarded);

fn finished_import_installs_after_reopen(kind: Kind) {
    let (_pa, a, pb, b) = pair(kind);
    let live = dump(&b);
    stage(&a, &b);
    drop(b);
    let mut b = pb.open();
    assert_eq!(dump(&b), live, "reopening does not install");
    assert_eq!(b.install_staged().unwrap(), a.applied_index());
    assert_same(&a, &b);
}
both!(finished_import_installs_after_reopen);

fn superseded_importer_cannot_write(kind: Kind) {
    let (_pa, a, _pb, mut b) = pair(kind);
    let (chunks, end) = split(dump(&a));
    let mut old = b.importer().unwrap();
    old.chunk(chunks[0].clone()).unwrap();
    let mut new = b.importer().unwrap();
    let err = old.chunk(chunks[1].clone()).unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err}");
    for c in chunks.iter().cloned() {
        new.chunk(c).unwrap();
    }
    new.finish(end.clone()).unwrap();
    // An importer started before an install cannot write into the now live slot.
    let mut stale = b.importer().unwrap();
    stage(&a, &b);
    b.install_staged().unwrap();
    assert!(stale.chunk(chunks[0].clone()).is_err());
    assert_same(&a, &b);
}
both!(superseded_importer_cannot_write);

fn export_streams_bounded_chunks(kind: Kind) {
    let (pa, pb) = (Place::new(kind), Place::new(kind));
    let (mut a, b) = (pa.open(), pb.open());
    // About 20 MB: 20 entries of 256 pairs of 4 KB, and some bigger values.
    for e in 0..20u64 {
        let pairs = (0..256u64)
            .map(|i| (format!("k{e:02}-{i:03}").into_bytes(), vec![e as u8; 4000]))
            .collect();
        apply(&mut a, &[cmd(1, e + 1, WriteOp::MultiPut { pairs })]);
    }
    for i in 0..3 {
        apply(
            &mut a,
            &[cmd(2, i + 1, put(&format!("big{i}"), &"b".repeat(900_000)))],
        );
    }
    let (mut chunks, mut biggest, mut ended) = (0u64, 0usize, false);
    let mut imp = b.importer().unwrap();
    a.export(&mut |p| {
        assert!(!ended);
        match p {
            StatePart::Chunk(c) => {
                let bytes: usize = c.pairs.iter().map(|(k, v)| k.len() + v.len()).sum();
                biggest = biggest.max(bytes);
                chunks += 1;
                imp.chunk(c)
            }
            StatePart::End(_) => {
                ended = true;
                Ok(())
            }
        }
    })
    .unwrap();
    assert!(ended);
    assert!(chunks >= 18, "{chunks} chunks for 20 MB");
    assert!(biggest <= 2 * CHUNK_BYTES, "a chunk of {biggest} bytes");
    drop(imp);

    // The sink sees chunks while the export runs: an error from it stops the export.
    let mut seen = 0;
    let err = a
        .export(&mut |_| {
            seen += 1;
            Err(Error::Unavailable("receiver gone".into()))
        })
        .unwrap_err();
    assert_eq!(err, Error::Unavailable("receiver gone".into()));
    assert_eq!(seen, 1);

    let mut b = b;
    stage(&a, &b);
    b.install_staged().unwrap();
    assert_same(&a, &b);
}
both!(export_streams_bounded_chunks);

fn view_before_switch_reads_old_data(kind: Kind) {
    let (_pa, a, _pb, mut b) = pair(kind);
    let old_rows = all_rows(&b);
    stage(&a, &b);
    let reader = b.clone();
    // On RocksDB a detached view is an ordinary snapshot view; on memory it is a copy
    // (an ordinary memory view holds the lock, so no switch can happen under it).
    b.backend
        .clone()
        .detached_view(|v| {
            b.install_staged().unwrap();
            assert_eq!(
                all_rows(&reader),
                all_rows(&a),
                "new readers see the new state"
            );
            let mut rows = Vec::new();
            v.scan_from(Space::Kv, &[], &mut |k, _| {
                rows.push(k.to_vec());
                Ok(true)
            })?;
            let old: Vec<_> = old_rows.iter().map(|r| r.key.clone()).collect();
            assert_eq!(rows, old, "the old view still reads the old state");
            assert!(v.get(Space::Kv, b"q")?.is_some());
            Ok(())
        })
        .unwrap();
    assert_same(&a, &b);
}
both!(view_before_switch_reads_old_data);

#[test]
fn state_parts_encode_bytes_compactly() {
    let chunk = StateChunk::seal(3, 1, vec![(b"key".to_vec(), vec![7; 1000])]);
    let bytes = bincode::serialize(&StatePart::Chunk(chunk.clone())).unwrap();
    assert!(bytes.len() < 1100, "{} bytes", bytes.len());
    let back: StatePart = bincode::deserialize(&bytes).unwrap();
    assert_eq!(back, StatePart::Chunk(chunk.clone()));
    let json = serde_json::to_string(&StatePart::Chunk(chunk.clone())).unwrap();
    let back: StatePart = serde_json::from_str(&json).unwrap();
    assert_eq!(back, StatePart::Chunk(chunk));
}

/// Two memory replicas with equal live states compare equal whatever either has staged
/// (the simulation compares replicas with `==`).
#[test]
fn staged_memory_state_does_not_affect_equality() {
    let (pa, pb, pc) = (
        Place::new(Kind::Memory),
        Place::new(Kind::Memory),
        Place::new(Kind::Memory),
    );
    let (mut a, mut b, mut c) = (pa.open(), pb.open(), pc.open());
    populate(&mut a, "A");
    populate(&mut b, "A");
    apply(&mut c, &[cmd(1, 1, put("x", "y"))]);
    stage(&c, &b);
    assert!(*pa.mem.read().unwrap() == *pb.mem.read().unwrap());
    b.install_staged().unwrap();
    assert!(*pc.mem.read().unwrap() == *pb.mem.read().unwrap());
}

/// The watch history travels with the state: a watcher on the receiver resumes from a
/// revision it saw before the install and gets the source's changes, with the window's
/// bounds; a revision the source pruned is refused on the receiver too. The receiver's
/// subscribers hear of the install.
fn watch_history_travels_with_the_state(kind: Kind) {
    let (_pa, mut a, _pb, mut b) = pair(kind);
    a.set_history_limits(super::HistoryLimits {
        revisions: 4,
        bytes: 1 << 20,
    });
    for i in 0..6 {
        apply(&mut a, &[cmd(20 + i, 1, put("w", &format!("v{i}")))]);
    }
    let mut revisions = b.subscribe();
    stage(&a, &b);
    b.install_staged().unwrap();
    assert!(revisions.has_changed().unwrap(), "the install is announced");
    assert_eq!(*revisions.borrow_and_update(), a.revision());
    let all = super::WatchFilter::Range(ScanRange::Prefix(vec![]));
    let (ha, hb) = (
        a.history(0, &all, 100, usize::MAX),
        b.history(0, &all, 100, usize::MAX),
    );
    assert_eq!(format!("{ha:?}"), format!("{hb:?}"));
    let Err(Error::Compacted { oldest, .. }) = hb else {
        panic!("{hb:?}")
    };
    assert_eq!(oldest, a.revision() - 3, "four revisions are kept");
    let got = b.history(oldest, &all, 100, usize::MAX).unwrap();
    assert_eq!(
        got.changes,
        a.history(oldest, &all, 100, usize::MAX).unwrap().changes
    );
    assert_eq!(got.changes.len(), 4);
    assert_eq!(got.changes.last().unwrap().value, b"v5");
}
both!(watch_history_travels_with_the_state);
