//! lossyfs mounted for real: the kernel's FUSE driver between these syscalls and the
//! model. Needs root and /dev/fuse; says SKIPPED and passes where they are missing.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

fn skip(reason: &str) {
    println!("SKIPPED: {reason}");
}

fn mounted() -> Option<(tempfile::TempDir, lossyfs::Mount)> {
    if let Some(why) = lossyfs::unavailable() {
        skip(&why);
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let m = lossyfs::mount(dir.path()).expect("mount lossyfs (root with /dev/fuse)");
    Some((dir, m))
}

fn sync_dir(p: &Path) {
    File::open(p).unwrap().sync_all().unwrap();
}

fn ctl(root: &Path, cmd: &str) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .open(root.join(lossyfs::CTL_NAME))?;
    f.write_all(cmd.as_bytes())
}

#[test]
fn crash_keeps_exactly_what_was_synced() {
    let Some((dir, m)) = mounted() else { return };
    let root = dir.path();
    fs::create_dir(root.join("db")).unwrap();
    sync_dir(root);
    let db = root.join("db");

    // Synced data and entry: kept. Synced data, entry not synced: gone.
    let mut wal = File::create(db.join("wal")).unwrap();
    wal.write_all(b"record-1;").unwrap();
    wal.sync_data().unwrap();
    sync_dir(&db);
    wal.write_all(b"record-2;").unwrap();
    wal.sync_all().unwrap();
    wal.write_all(b"record-3-unsynced;").unwrap();

    // Atomic replace through rename, made durable by syncing the directory.
    fs::write(db.join("CURRENT"), b"v1").unwrap();
    File::open(db.join("CURRENT")).unwrap().sync_all().unwrap();
    sync_dir(&db);
    let mut tmp = File::create(db.join("CURRENT.tmp")).unwrap();
    tmp.write_all(b"v2").unwrap();
    tmp.sync_all().unwrap();
    fs::rename(db.join("CURRENT.tmp"), db.join("CURRENT")).unwrap();
    sync_dir(&db);

    let mut orphan = File::create(db.join("orphan")).unwrap();
    orphan.write_all(b"never in a synced directory").unwrap();
    orphan.sync_all().unwrap();
    fs::create_dir(db.join("sub")).unwrap();

    assert_eq!(
        fs::read(db.join("wal")).unwrap(),
        b"record-1;record-2;record-3-unsynced;"
    );
    ctl(root, "crash\n").unwrap();

    // Old handles are dead.
    let e = wal.write_all(b"after").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert_eq!(wal.sync_all().unwrap_err().raw_os_error(), Some(libc::EIO));
    drop((wal, orphan, tmp));

    assert_eq!(fs::read(db.join("wal")).unwrap(), b"record-1;record-2;");
    assert_eq!(fs::read(db.join("CURRENT")).unwrap(), b"v2");
    let mut names: Vec<String> = fs::read_dir(&db)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["CURRENT", "wal"]);
    let status = fs::read_to_string(root.join(lossyfs::CTL_NAME)).unwrap();
    assert!(status.contains("crashes 1\n"), "{status}");
    assert_eq!(m.control().stats().crashes, 1);
    assert!(
        ctl(root, "bogus\n").is_err(),
        "unknown commands are refused"
    );
    m.unmount().unwrap();
}

#[test]
fn offsets_truncate_and_locks_work() {
    let Some((dir, m)) = mounted() else { return };
    let p = dir.path().join("f");
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    f.write_all(b"0123456789").unwrap();
    f.seek(SeekFrom::Start(3)).unwrap();
    f.write_all(b"abc").unwrap();
    f.set_len(8).unwrap();
    let mut s = String::new();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "012abc67");
    // Append mode writes at the end.
    let mut a = OpenOptions::new().append(true).open(&p).unwrap();
    a.write_all(b"XY").unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"012abc67XY");
    assert_eq!(fs::metadata(&p).unwrap().len(), 10);

    // flock and fcntl locks are the kernel's: a second open file description conflicts.
    let g = File::open(&p).unwrap();
    // SAFETY: plain syscalls on descriptors these Files keep open.
    unsafe {
        assert_eq!(libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB), 0);
        assert_ne!(libc::flock(g.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB), 0);
        let mut lk: libc::flock = std::mem::zeroed();
        lk.l_type = libc::F_WRLCK as i16;
        lk.l_whence = libc::SEEK_SET as i16;
        assert_eq!(libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &lk), 0);
        // fallocate is refused, as documented (RocksDB falls back).
        assert_ne!(libc::fallocate(f.as_raw_fd(), 0, 0, 4096), 0);
    }
    drop((f, a, g));
    m.unmount().unwrap();
}

#[test]
fn space_budget_gives_enospc_and_statfs_shows_it() {
    let Some((dir, m)) = mounted() else { return };
    let root = dir.path();
    let mut f = File::create(root.join("f")).unwrap();
    f.write_all(&[1u8; 1000]).unwrap();
    ctl(root, "space 8192\n").unwrap();
    let free = |p: &Path| {
        let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        // SAFETY: statvfs fills the zeroed struct.
        unsafe {
            let mut s: libc::statvfs = std::mem::zeroed();
            assert_eq!(libc::statvfs(c.as_ptr(), &mut s), 0);
            s.f_bavail * s.f_frsize
        }
    };
    assert_eq!(free(root), 8192);
    f.write_all(&[2u8; 8192]).unwrap();
    let e = f.write_all(&[3u8; 10]).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    assert_eq!(free(root), 0);
    m.control().command("space unlimited").unwrap();
    f.write_all(&[3u8; 10]).unwrap();
    assert!(free(root) > 1 << 30);
    assert_eq!(
        File::open(root.join("missing")).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    drop(f);
    m.unmount().unwrap();
}
