//! Tests of the backup file ([`super::Encoder`], [`super::Decoder`]) and of restoring one
//! into real stores (RocksDB and SQLite in temporary directories). The whole path through
//! a running cluster is `tests/e2e_backup.rs`.

use super::*;
use crate::kv::transfer_tests::{cmd, put};
use crate::server::open_stores;

/// A node's stores in a temporary directory, `n` entries applied: a put of `k<i>` in each,
/// the SQL database advanced to the same index.
fn source(n: u64) -> (tempfile::TempDir, crate::server::Stores) {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open_stores(&dir.path().join("node"), None).unwrap();
    for i in 0..n {
        s.kv.apply_kv(i, &[cmd(7, i + 1, put(&format!("k{i}"), &format!("v{i}")))])
            .unwrap();
        s.sql.apply(i, &[]).unwrap();
    }
    s.sql.flush().unwrap();
    (dir, s)
}

/// The bytes of a backup of `stores`, as [`serve`] writes them (minus the node thread).
fn backup_of(s: &crate::server::Stores, applied: u64) -> Vec<u8> {
    let mut enc = Encoder::default();
    let h = Header {
        applied,
        machines: s.states.all().iter().map(|m| m.machine()).collect(),
        ..header()
    };
    let mut out = enc.header(&h).unwrap();
    for m in s.states.all() {
        let machine = m.machine();
        m.export(&mut |at| assert_eq!(at, applied), &mut |bytes| {
            out.extend(enc.part(machine, bytes)?);
            Ok(())
        })
        .unwrap();
    }
    out.extend(enc.end().unwrap());
    out
}

/// A header of node 1, configuration 1, format [`FORMAT`], nothing in it.
fn header() -> Header {
    Header {
        format: FORMAT,
        version: "t".into(),
        node: 1,
        applied: 0,
        machines: vec![],
        members: "1=a".into(),
        config_id: 1,
        created_unix_ms: 0,
    }
}

fn write(dir: &Path, bytes: &[u8]) -> PathBuf {
    let p = dir.join("b.paxosdb-backup");
    std::fs::write(&p, bytes).unwrap();
    p
}

fn config(dir: &Path) -> Config {
    let mut cfg = Config::new(
        2,
        crate::config::parse_peers("1=127.0.0.1:1,2=127.0.0.1:2,3=127.0.0.1:3").unwrap(),
        "127.0.0.1:0".into(),
        dir.join("restored"),
    );
    cfg.http_addr = None;
    cfg
}

#[test]
fn a_backup_verifies_and_restores_into_a_new_node_of_the_chosen_members() {
    let (dir, src) = source(30);
    let file = write(dir.path(), &backup_of(&src, 30));
    let v = verify(&file).unwrap();
    assert_eq!(v.header.applied, 30);
    assert_eq!(v.bytes, std::fs::metadata(&file).unwrap().len());
    // The scratch directory is gone.
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(left.len(), 2, "node and the file only: {left:?}");

    let cfg = config(dir.path());
    let r = restore(&file, &cfg).unwrap();
    assert_eq!(r.summary.header.applied, 30);
    assert!(
        !cfg.data_dir.join(RESTORING).exists(),
        "the marker outlived the restore"
    );
    let s = open_stores(&cfg.data_dir, None).unwrap();
    assert_eq!(crate::machine::StateMachine::applied_index(&s.kv), 30);
    assert_eq!(s.sql.applied_index(), 30);
    let got = s.kv.get(b"k29").unwrap().0.map(|v| v.value);
    assert_eq!(got.as_deref(), Some(&b"v29"[..]));
    assert_eq!(
        crate::machine::StateMachine::membership(&s.kv).unwrap(),
        None
    );
    // The identity is the new cluster's: node 2 of 1, 2, 3.
    crate::server::check_identity(&s.db, &cfg, false).unwrap();
    let mut other = cfg.clone();
    other.id = 3;
    assert!(crate::server::check_identity(&s.db, &other, false).is_err());
}

#[test]
fn restore_refuses_a_data_directory_in_use_and_cleans_up_after_a_bad_file() {
    let (dir, src) = source(5);
    let bytes = backup_of(&src, 5);
    let cfg = config(dir.path());
    std::fs::create_dir_all(cfg.data_dir.join("db")).unwrap();
    let file = write(dir.path(), &bytes);
    let e = restore(&file, &cfg).unwrap_err();
    assert!(e.to_string().contains("is not empty"), "{e}");
    std::fs::remove_dir_all(&cfg.data_dir).unwrap();
    // Cut in the middle: refused, and the directory it made is gone again.
    let file = write(dir.path(), &bytes[..bytes.len() / 2]);
    let e = restore(&file, &cfg).unwrap_err();
    assert!(matches!(e, Error::InvalidInput(_)), "{e:?}");
    assert!(e.to_string().contains("truncated"), "{e}");
    assert!(
        !cfg.data_dir.exists(),
        "a failed restore left its directory"
    );
}

/// Every single-byte change and every truncation of a backup is refused by the decoder
/// alone (before any machine sees a part).
#[test]
fn every_flipped_byte_and_every_cut_is_refused() {
    let mut enc = Encoder::default();
    let h = Header {
        applied: 3,
        machines: vec![Machine::Kv],
        ..header()
    };
    let mut file = enc.header(&h).unwrap();
    file.extend(enc.part(Machine::Kv, vec![1, 2, 3]).unwrap());
    file.extend(enc.part(Machine::Kv, vec![4; 40]).unwrap());
    file.extend(enc.end().unwrap());
    let read_all = |bytes: &[u8]| -> Result<Vec<(Machine, Vec<u8>)>> {
        let mut d = Decoder::open(bytes)?;
        let mut parts = Vec::new();
        while let Some(p) = d.next_part()? {
            parts.push(p);
        }
        Ok(parts)
    };
    let parts = read_all(&file).unwrap();
    assert_eq!(
        parts,
        vec![(Machine::Kv, vec![1, 2, 3]), (Machine::Kv, vec![4; 40])]
    );
    for i in 0..file.len() {
        let mut bad = file.clone();
        bad[i] ^= 0x40;
        assert!(read_all(&bad).is_err(), "byte {i} changed, accepted");
        let e = read_all(&file[..i]).unwrap_err();
        assert!(matches!(e, Error::InvalidInput(_)), "cut at {i}: {e:?}");
    }
    let mut longer = file.clone();
    longer.push(0);
    let e = read_all(&longer).unwrap_err();
    assert!(e.to_string().contains("bytes follow"), "{e}");
}

#[test]
fn a_huge_record_length_is_refused_before_it_is_read() {
    let mut enc = Encoder::default();
    let h = header();
    let mut file = enc.header(&h).unwrap();
    file.extend(u32::MAX.to_le_bytes());
    file.extend(0u32.to_le_bytes());
    let mut d = Decoder::open(&file[..]).unwrap();
    let e = d.next_part().unwrap_err();
    assert!(e.to_string().contains("more than a backup's"), "{e}");
}

#[test]
fn a_file_of_another_kind_or_format_says_so() {
    let e = Decoder::open(&b"SQLite format 3\0 and more bytes"[..])
        .err()
        .unwrap();
    assert!(e.to_string().contains("not a paxosdb backup"), "{e}");
    let mut enc = Encoder::default();
    let h = Header {
        format: FORMAT + 1,
        version: "9.9.9".into(),
        ..header()
    };
    let file = enc.header(&h).unwrap();
    let e = Decoder::open(&file[..]).err().unwrap();
    assert!(e.to_string().contains("written by paxosdb 9.9.9"), "{e}");
}
