//! The space a node keeps free under its log: the last line of defence against a full
//! disk.
//!
//! Below `min_free_disk_bytes` the server refuses client writes (`node::admission`), but
//! replication from the leader goes on, and a follower's disk can still fill. RocksDB must
//! never be the one to find that out: a write that fails on a full disk leaves its file
//! writers in an error state, and the next write to one (its info log, a WAL) aborts the
//! process in a RocksDB built with assertions, as Debian's is. So before each log batch the
//! storage asks the [`Reserve`]: under half of `min_free_disk_bytes` free (the reserve), the
//! write is refused with [`RESERVE_REACHED`] in its message, the node thread stops, and the
//! server exits with the full-disk code and line. The reserve is left for what the log's
//! batches lead to (their apply, memtable flushes, compactions, RocksDB's info log).
//!
//! # Invariants
//!
//! - A log batch is written only if, when free space was last read, the file system had
//!   room for twice the batch above the reserve (the WAL record, and the state it leads
//!   to), less what was admitted since.
//! - Free space is read again at least every [`RECHECK`] and whenever the room estimated at
//!   the last reading is used up, so other writers (the applier, flushes, other processes)
//!   are noticed within that time or that many bytes.
//! - A reserve of 0 admits everything (the floor is off).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Marks a write refused by the reserve; `server::fatal_exit` turns a node that stopped on
/// it into the full-disk exit.
pub const RESERVE_REACHED: &str = "the data directory's file system reached its reserve";

/// The longest time between two readings of free space.
pub const RECHECK: Duration = Duration::from_millis(250);

/// Free bytes on the file system holding `path` (for an unprivileged process).
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
}

/// Admits log batches while the file system has room above the reserve.
#[derive(Debug)]
pub struct Reserve {
    path: PathBuf,
    reserve: u64,
    /// Bytes that may be admitted before free space is read again.
    budget: u64,
    /// When free space was last read (`None`: never).
    read_at: Option<Instant>,
}

impl Reserve {
    /// Keeps `reserve` bytes free on the file system holding `path` (0: off).
    pub fn new(path: &Path, reserve: u64) -> Reserve {
        Reserve {
            path: path.to_path_buf(),
            reserve,
            budget: 0,
            read_at: None,
        }
    }

    /// Admits everything.
    pub fn off() -> Reserve {
        Reserve::new(Path::new(""), 0)
    }

    /// Whether a batch of `bytes` may be written; the refusal says why.
    pub fn admit(&mut self, bytes: u64) -> Result<(), String> {
        if self.reserve == 0 {
            return Ok(());
        }
        let fresh = self.read_at.is_some_and(|t| t.elapsed() < RECHECK);
        if fresh && bytes <= self.budget {
            self.budget -= bytes;
            return Ok(());
        }
        let free = match free_bytes(&self.path) {
            Ok(f) => f,
            // Not knowing is no reason to stop: RocksDB reports a real failure itself.
            Err(_) => return Ok(()),
        };
        self.read_at = Some(Instant::now());
        let room = free.saturating_sub(self.reserve);
        let needed = 2 * bytes;
        if room < needed {
            self.budget = 0;
            return Err(format!(
                "{RESERVE_REACHED} ({free} bytes free, {} kept in reserve, half of \
                 min_free_disk_bytes): the node stops before the disk is full",
                self.reserve
            ));
        }
        // Other writers share the room: admit a quarter of it before reading again.
        self.budget = (room - needed) / 4;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserve_larger_than_the_disk_refuses_and_names_itself() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        let mut r = Reserve::new(dir.path(), free + (1 << 30));
        let why = r.admit(1).unwrap_err();
        assert!(why.contains(RESERVE_REACHED), "{why}");
        assert!(r.admit(1).is_err(), "and keeps refusing");
    }

    #[test]
    fn room_above_the_reserve_is_admitted_and_read_again_when_used_up() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        assert!(free > 2 << 30, "the test needs 2 GiB free, has {free}");
        // About 1 GiB of room above the reserve (other tests may write meanwhile).
        let mut r = Reserve::new(dir.path(), free - (1 << 30));
        r.admit(64 << 20).unwrap();
        assert!(r.read_at.is_some());
        assert!(
            r.budget < 1 << 30,
            "only a share of the room is kept: {}",
            r.budget
        );
        let before = r.budget;
        r.admit(1 << 20).unwrap();
        assert_eq!(
            r.budget,
            before - (1 << 20),
            "admitted from the budget, not read"
        );
        // A batch larger than the room is refused even though the budget was fresh.
        assert!(r.admit(1 << 30).is_err());
    }

    #[test]
    fn free_bytes_reads_the_file_system() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).unwrap() > 0);
    }

    #[test]
    fn a_zero_reserve_admits_everything() {
        Reserve::off().admit(u64::MAX / 4).unwrap();
    }
}
