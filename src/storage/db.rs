//! Opening a node's single RocksDB and guarding its data directory.
//!
//! Column families: [`CF_LOG`] (log entries by big-endian index), [`CF_META`] (Paxos
//! metadata: promise, accepted round, decided and compacted index, stop sign, node
//! identity), [`CF_KV`] (user keys → version + value) and [`CF_SM`] (state machine
//! metadata: applied index, revision, client sessions).
//!
//! The state machine's two column families exist twice, as slots: A = ([`CF_KV`],
//! [`CF_SM`]) and B = ([`CF_KV_B`], [`CF_SM_B`]). One slot is live; the other receives a
//! state transferred from a peer and becomes live in one atomic write (see
//! `kv::transfer`). Which slot is live is recorded in [`CF_META`] (absent = A, so data
//! directories from before the slots keep working).
//!
//! Invariant: a data directory is used by at most one process. [`DataDir::lock`] takes an
//! exclusive `flock` on `paxosdb.lock` (which records the holder's pid) and keeps it until
//! the `DataDir` is dropped; a second process gets a clear error naming the holder.

use super::meta::{Meta, MetaKey};
use crate::error::{Error, Result};
use rocksdb::{ColumnFamilyDescriptor, Options, DB};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const CF_LOG: &str = "log";
pub const CF_META: &str = "meta";
pub const CF_KV: &str = "kv";
pub const CF_SM: &str = "sm";
/// Slot B of the user keys (see the module docs).
pub const CF_KV_B: &str = "kv_b";
/// Slot B of the state machine metadata.
pub const CF_SM_B: &str = "sm_b";

/// A locked data directory. Dropping it releases the lock.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: File,
}

impl DataDir {
    /// Creates the directory if needed (durably: its parent is synced) and locks it for
    /// this process.
    pub fn lock(path: &Path) -> Result<DataDir> {
        let existed = path.is_dir();
        std::fs::create_dir_all(path).map_err(|e| {
            Error::Config(format!(
                "cannot create data directory {}: {e}",
                path.display()
            ))
        })?;
        if !existed {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        let lock_path = path.join("paxosdb.lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| Error::Config(format!("cannot open {}: {e}", lock_path.display())))?;
        // SAFETY: flock only reads the descriptor, which `file` keeps open.
        let rc = unsafe { libc_flock(file.as_raw_fd()) };
        if rc != 0 {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.is_empty() {
                "another process".to_string()
            } else {
                format!("process {holder}")
            };
            return Err(Error::Config(format!(
                "data directory {} is in use by {who}; stop that node or choose another --data-dir",
                path.display()
            )));
        }
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        write!(file, "{}", std::process::id())?;
        file.sync_all()?;
        Ok(DataDir {
            path: path.to_path_buf(),
            _lock: file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens (or creates) the node's RocksDB inside this directory.
    pub fn open_db(&self) -> Result<Arc<DB>> {
        let db = open_db(&self.path.join("db"))?;
        // RocksDB syncs what is inside `db/`, but not the entry that names `db/` itself:
        // without this, a power loss soon after the first start loses the whole database
        // (found by the power-loss test, tests/e2e_powerloss.rs).
        sync_dir(&self.path)?;
        Ok(db)
    }
}

/// Makes the entries of directory `dir` (files created, renamed or removed in it) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::Storage(format!("syncing directory {}: {e}", dir.display())))
}

unsafe fn libc_flock(fd: i32) -> i32 {
    nix::libc::flock(fd, nix::libc::LOCK_EX | nix::libc::LOCK_NB)
}

/// Most bytes of write-ahead log kept before RocksDB flushes memtables to free it.
pub const MAX_TOTAL_WAL_BYTES: u64 = 128 * 1024 * 1024;

/// Memtable size of the state machine's column families (RocksDB's default is 64 MiB).
/// Applying a write inserts into them and reads them back, and a skiplist walk's cost
/// grows with the memtable, in cache misses more than in steps: with 8 MiB, the node
/// threads of a 3-node cluster took about a sixth less CPU per write (64 clients, 10,000
/// keys, with [`crate::kv`]'s write cache), for more, smaller flushes.
pub const STATE_MEMTABLE_BYTES: usize = 8 * 1024 * 1024;

/// Opens the RocksDB at `path` with all paxosdb column families.
pub fn open_db(path: &Path) -> Result<Arc<DB>> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // All column families share one write-ahead log, and a WAL file is freed only once
    // every family's memtable holding its writes was flushed. `meta` and `sm` take small
    // writes that rarely fill a memtable, so without a cap the WAL grew without bound
    // (2.4 GiB after 1.3M writes, and a 15 s replay at restart): past this size RocksDB
    // flushes the families that hold the oldest WAL file.
    opts.set_max_total_wal_size(MAX_TOTAL_WAL_BYTES);
    let cfs = [CF_LOG, CF_META, CF_KV, CF_SM, CF_KV_B, CF_SM_B]
        .into_iter()
        .map(|name| {
            let mut o = Options::default();
            if name != CF_LOG && name != CF_META {
                o.set_write_buffer_size(STATE_MEMTABLE_BYTES);
            }
            ColumnFamilyDescriptor::new(name, o)
        });
    let db = DB::open_cf_descriptors(&opts, path, cfs)
        .map_err(|e| Error::Storage(format!("opening RocksDB at {}: {e}", path.display())))?;
    check_format(&db, path)?;
    Ok(Arc::new(db))
}

/// The on-disk format this build writes, recorded under [`MetaKey::Format`]:
/// - 2: log commands are opaque (a machine tag and payload bytes, see `machine`);
/// - 3: the key-value store's session expiry keys name a bucket of log indexes
///   (`crate::session::bucket`), not the exact last index. This build reads format 2
///   (its exact indexes are valid, unaligned bucket starts) and upgrades a format 2
///   directory in place at open; a release reading format 2 only refuses a format 3 one,
///   since it would misread the bucketed keys;
/// - 4: a stored value may carry a deadline (a flag bit in its version, see `kv`), and
///   the log may hold clock stamps and transactions. Formats 2 and 3 hold neither and
///   are upgraded in place; a release reading format 3 only refuses a format 4 one,
///   since it would misread an expiring value as a huge version;
/// - 5: a stored value may name the lease it is attached to (another flag bit of its
///   version), the state machine space holds leases and the watch history, and clock
///   stamps name the leader's reign. Formats 2 to 4 hold none of these and are upgraded in
///   place; a release reading format 4 only refuses a format 5 one;
/// - 6: a stored value may carry its key's create revision (a third flag bit of its
///   version). Formats 2 to 5 hold none (their values read their last write's revision
///   as their create revision) and are upgraded in place; a release reading format 5 only
///   refuses a format 6 one.
pub const FORMAT: u64 = 6;
/// Formats this build opens, upgrading them to [`FORMAT`].
const UPGRADES_FROM: &[u64] = &[2, 3, 4, 5];

/// Records [`FORMAT`] in a new database; upgrades one of a format in [`UPGRADES_FROM`];
/// refuses one written in another format (a database without the key but with data is
/// format 1), with what to do about it.
fn check_format(db: &DB, path: &Path) -> Result<()> {
    let meta = Meta::of(db);
    let err = |e: Error| Error::Storage(format!("format of {}: {e}", path.display()));
    let found = match meta.get_u64(MetaKey::Format).map_err(err)? {
        Some(f) => f,
        None => {
            let used = [CF_LOG, CF_META, CF_SM].iter().any(|cf| {
                let cf = db.cf_handle(cf).expect("column family");
                db.iterator_cf(cf, rocksdb::IteratorMode::Start)
                    .next()
                    .is_some()
            });
            if used {
                1
            } else {
                0
            }
        }
    };
    if found == 0 || UPGRADES_FROM.contains(&found) {
        let mut batch = rocksdb::WriteBatch::default();
        meta.put_u64(&mut batch, MetaKey::Format, FORMAT);
        meta.write_synced(batch).map_err(err)?;
        return Ok(());
    }
    if found != FORMAT {
        return Err(Error::Config(format!(
            "the data directory {} holds on-disk format {found}, and this paxosdb reads \
             formats {UPGRADES_FROM:?} and {FORMAT} only; start this node with an empty data \
             directory and --join (it copies the cluster's state), or use the paxosdb release \
             that wrote it",
            path.display()
        )));
    }
    Ok(())
}

/// Big-endian u64 key, so that RocksDB's byte order is numeric order.
pub fn u64_key(i: u64) -> [u8; 8] {
    i.to_be_bytes()
}

/// Decodes an 8-byte big-endian value.
pub fn read_u64(bytes: &[u8]) -> Result<u64> {
    let arr: [u8; 8] = bytes
        .try_into()
        .map_err(|_| Error::Storage(format!("corrupt u64 of {} bytes", bytes.len())))?;
    Ok(u64::from_be_bytes(arr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_with_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDir::lock(dir.path()).unwrap();
        // flock locks are per open file description: a second open in the same process
        // conflicts just like another process would.
        let err = DataDir::lock(dir.path()).unwrap_err().to_string();
        assert!(err.contains("in use by process"), "{err}");
        drop(first);
        DataDir::lock(dir.path()).unwrap();
    }

    /// A new database records the format; one of format 2 is upgraded in place; one with
    /// data but no format (written before commands were opaque) is refused with what to
    /// do, and so is a format this build does not know.
    #[test]
    fn an_older_format_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let format = |db: &DB| Meta::of(db).get_u64(MetaKey::Format).unwrap();
        let set_format = |db: &DB, f: Option<u64>| {
            let meta = Meta::of(db);
            let mut b = rocksdb::WriteBatch::default();
            match f {
                Some(f) => meta.put_u64(&mut b, MetaKey::Format, f),
                None => meta.delete(&mut b, MetaKey::Format),
            }
            meta.write_synced(b).unwrap();
        };
        let db = open_db(&path).unwrap();
        assert_eq!(format(&db), Some(FORMAT));
        // Reopening a database of this format works.
        drop(db);
        let db = open_db(&path).unwrap();
        // Format 2 (exact-index session expiry keys) is read and upgraded.
        set_format(&db, Some(2));
        drop(db);
        let db = open_db(&path).unwrap();
        assert_eq!(format(&db), Some(FORMAT), "upgraded in place");
        // A newer format than this build knows is refused.
        set_format(&db, Some(FORMAT + 1));
        drop(db);
        let err = open_db(&path).unwrap_err().to_string();
        assert!(
            err.contains(&format!("holds on-disk format {}", FORMAT + 1)),
            "{err}"
        );
        // Format 1: data, no format key.
        let db = DB::open_cf(
            &{
                let mut o = Options::default();
                o.create_if_missing(true);
                o
            },
            &path,
            [CF_LOG, CF_META, CF_KV, CF_SM, CF_KV_B, CF_SM_B],
        )
        .unwrap();
        set_format(&db, None);
        let log = db.cf_handle(CF_LOG).unwrap();
        db.put_cf(log, u64_key(0), b"old entry").unwrap();
        drop(db);
        let err = open_db(&path).unwrap_err().to_string();
        assert!(err.contains("holds on-disk format 1"), "{err}");
        assert!(err.contains("--join"), "{err}");
    }
}
