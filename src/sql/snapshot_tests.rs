//! Tests of SQL state transfer: export, import, install, and interrupted installs.

use super::snapshot::{InstallStep, SqlPart, CHUNK_BYTES};
use super::store::SqlStore;
use super::store_tests::{exec, open, req, rows};
use super::Value;
use crate::error::Error;

/// A store with a few MiB of rows (several chunks), at applied index 3.
fn filled(dir: &std::path::Path, tag: &str) -> SqlStore {
    let mut s = open(dir);
    exec(
        &mut s,
        req(&["CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB, tag TEXT)"]),
    );
    exec(
        &mut s,
        req(&[&format!(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 3000) \
             INSERT INTO t (v, tag) SELECT zeroblob(1000), '{tag}' FROM c"
        )]),
    );
    // A rowid table without INTEGER PRIMARY KEY whose rowids have gaps: a page copy keeps
    // them.
    exec(
        &mut s,
        req(&[
            "CREATE TABLE r (a)",
            "INSERT INTO r VALUES (1), (2), (3)",
            "DELETE FROM r WHERE a = 2",
        ]),
    );
    s
}

fn export_all(s: &SqlStore) -> Vec<SqlPart> {
    let mut parts = Vec::new();
    s.reader()
        .export(&mut |p| {
            parts.push(p);
            Ok(())
        })
        .unwrap();
    parts
}

fn import(into: &SqlStore, parts: &[SqlPart]) -> crate::Result<u64> {
    let mut imp = into.importer()?;
    for p in parts {
        match p {
            SqlPart::Chunk(c) => imp.chunk(c.clone())?,
            SqlPart::End(e) => return imp.finish(e.clone()),
        }
    }
    panic!("no end")
}

#[test]
fn export_import_install_round_trip_gives_the_same_state() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let src = filled(a.path(), "src");
    let parts = export_all(&src);
    let chunks = parts.len() - 1;
    assert!(chunks >= 3, "{chunks} chunks");
    for p in &parts[..chunks] {
        let SqlPart::Chunk(c) = p else { panic!() };
        assert!(c.bytes.len() <= CHUNK_BYTES);
    }
    // No work file is left behind.
    assert!(std::fs::read_dir(a.path()).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with("export-")));

    let mut dst = filled(b.path(), "dst");
    let reader = dst.reader();
    assert_eq!(import(&dst, &parts).unwrap(), 3);
    // Staged, not live yet.
    assert_eq!(
        rows(&dst, "SELECT DISTINCT tag FROM t")[0][0],
        Value::Text("dst".into())
    );
    assert_eq!(dst.install_staged().unwrap(), 3);
    assert_eq!(dst.applied_index(), 3);
    assert_eq!(dst.digest().unwrap(), src.digest().unwrap());
    // Readers (also ones made before the install) see the new state.
    let out = reader
        .query(&req(&["SELECT DISTINCT tag FROM t", "SELECT rowid FROM r"]))
        .unwrap();
    assert_eq!(out.results[0].rows[0][0], Value::Text("src".into()));
    assert_eq!(
        out.results[1].rows,
        vec![vec![Value::Integer(1)], vec![Value::Integer(3)]]
    );
    assert_eq!(out.applied_index, 3);
    // It keeps applying from there, and survives a restart.
    exec(&mut dst, req(&["INSERT INTO r VALUES (4)"]));
    let d = dst.digest().unwrap();
    drop(dst);
    let dst = open(b.path());
    assert_eq!(dst.applied_index(), 4);
    assert_eq!(dst.digest().unwrap(), d);
    // Only the live generation's files remain.
    let names: Vec<String> = std::fs::read_dir(b.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("db-") || n.starts_with("staged"))
        .collect();
    assert!(
        names.iter().all(|n| n.starts_with("db-1.sqlite")),
        "{names:?}"
    );
}

#[test]
fn damaged_or_misordered_chunks_are_refused_and_change_nothing() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let src = filled(a.path(), "src");
    let parts = export_all(&src);
    let mut dst = open(b.path());
    let mut imp = dst.importer().unwrap();
    let SqlPart::Chunk(c0) = parts[0].clone() else {
        panic!()
    };
    let SqlPart::Chunk(c1) = parts[1].clone() else {
        panic!()
    };
    let mut bad = c0.clone();
    bad.bytes[100] ^= 1;
    assert!(matches!(imp.chunk(bad), Err(Error::Storage(_))));
    assert!(matches!(imp.chunk(c1.clone()), Err(Error::InvalidInput(_))));
    imp.chunk(c0).unwrap();
    imp.chunk(c1).unwrap();
    // An end that does not match what arrived.
    let SqlPart::End(end) = parts.last().unwrap().clone() else {
        panic!()
    };
    assert!(imp.finish(end.clone()).is_err());
    assert!(dst.install_staged().is_err(), "nothing complete is staged");
    // A wrong applied index in the end is caught by reading the copy.
    let mut wrong = parts.clone();
    if let Some(SqlPart::End(e)) = wrong.last_mut() {
        e.applied = 99;
    }
    assert!(import(&dst, &wrong).is_err());
    assert!(dst.install_staged().is_err());
    assert_eq!(dst.applied_index(), 0);
    let _ = end;
}

#[test]
fn an_install_interrupted_at_any_step_leaves_the_old_or_the_new_state() {
    let a = tempfile::tempdir().unwrap();
    let src = filled(a.path(), "src");
    let parts = export_all(&src);
    let new = src.digest().unwrap();
    for (step, expect_new) in [
        (InstallStep::Renamed, false),
        (InstallStep::PointerWritten, false),
        (InstallStep::Switched, true),
        (InstallStep::Reopened, true),
    ] {
        let b = tempfile::tempdir().unwrap();
        let mut dst = open(b.path());
        exec(
            &mut dst,
            req(&["CREATE TABLE old (a)", "INSERT INTO old VALUES (1)"]),
        );
        let old = dst.digest().unwrap();
        import(&dst, &parts).unwrap();
        dst.crash_after = Some(step);
        assert!(dst.install_staged().is_err());
        drop(dst);
        let mut dst = open(b.path());
        let (want, applied) = if expect_new { (new, 3) } else { (old, 1) };
        assert_eq!(dst.digest().unwrap(), want, "after {step:?}");
        assert_eq!(dst.applied_index(), applied, "after {step:?}");
        // Either way the store works on.
        exec(&mut dst, req(&["CREATE TABLE later (a)"]));
        assert_eq!(dst.applied_index(), applied + 1);
    }
}

#[test]
fn an_export_during_apply_is_one_point_in_time() {
    let a = tempfile::tempdir().unwrap();
    let mut src = open(a.path());
    exec(&mut src, req(&["CREATE TABLE t (v BLOB)"]));
    let reader = src.reader();
    let exporter = std::thread::spawn(move || {
        let mut copies = Vec::new();
        for _ in 0..5 {
            let mut parts = Vec::new();
            reader
                .export(&mut |p| {
                    parts.push(p);
                    Ok(())
                })
                .unwrap();
            copies.push(parts);
        }
        copies
    });
    // Each entry inserts two rows: a copy holds 2 * (applied - 1) rows.
    for i in 1..300u64 {
        exec(
            &mut src,
            req(&[
                "INSERT INTO t VALUES (zeroblob(2000))",
                "INSERT INTO t VALUES (zeroblob(2000))",
            ]),
        );
        assert_eq!(src.applied_index(), i + 1);
    }
    for parts in exporter.join().unwrap() {
        let b = tempfile::tempdir().unwrap();
        let mut dst = open(b.path());
        let applied = import(&dst, &parts).unwrap();
        assert_eq!(dst.install_staged().unwrap(), applied);
        let n = match rows(&dst, "SELECT count(*) FROM t")[0][0] {
            Value::Integer(n) => n as u64,
            ref v => panic!("{v:?}"),
        };
        assert_eq!(n, 2 * (applied - 1), "a copy mixes entries");
    }
}

#[test]
fn the_store_moves_to_the_apply_thread_and_readers_are_shared() {
    fn send<T: Send>() {}
    fn shared<T: Send + Sync + Clone>() {}
    send::<SqlStore>();
    shared::<super::SqlReader>();
}

#[test]
fn a_complete_staged_state_survives_a_restart_and_an_unfinished_one_does_not() {
    let a = tempfile::tempdir().unwrap();
    let src = filled(a.path(), "src");
    let parts = export_all(&src);
    let b = tempfile::tempdir().unwrap();
    let dst = open(b.path());
    import(&dst, &parts).unwrap();
    drop(dst);
    let mut dst = open(b.path());
    assert_eq!(dst.install_staged().unwrap(), 3);
    assert_eq!(dst.digest().unwrap(), src.digest().unwrap());
    // An import cut off midway leaves nothing installable after a restart.
    let mut imp = dst.importer().unwrap();
    let SqlPart::Chunk(c0) = parts[0].clone() else {
        panic!()
    };
    imp.chunk(c0).unwrap();
    drop(imp);
    drop(dst);
    let mut dst = open(b.path());
    assert!(dst.install_staged().is_err());
    assert_eq!(dst.digest().unwrap(), src.digest().unwrap());
    assert!(!b.path().join("staged.sqlite.part").exists());
}
