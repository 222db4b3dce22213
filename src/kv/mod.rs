//! The replicated state machine: a versioned key-value store.
//!
//! [`StateMachine`] is the seam between the node and whatever it replicates (this KV store
//! and the SQL store). [`KvStore`] implements it over a [`backend::Backend`]: the node's
//! RocksDB (the `kv` and `sm` column families) in production, or memory in tests and the
//! simulation — the same code above the bytes.
//!
//! Invariants:
//! - `apply(index, ..)` writes the user data, the client sessions, the revision counter and
//!   the applied index in **one** RocksDB batch: after a crash the store is exactly the
//!   state after some applied index, so a restart resumes from there and never re-applies.
//! - Apply is deterministic: it reads only the store and the entry (no clock, no
//!   randomness, no node-local state), so every node reaches the same state.
//! - A session's command is applied at most once, by the one session rule of
//!   [`crate::session`] (shared with the SQL store): `seq` equal to the session's last one
//!   with the same command returns the remembered result, with another command it is
//!   rejected; an older `seq` is refused as superseded without effect. Session records
//!   ([`KvRecords`]) are written in the entry's batch.
//! - Sessions expire deterministically, by log index, never by clock: a session last used
//!   by the entry at index `L` answers duplicates decided up to `L + TTL + 1`
//!   ([`session::SESSION_TTL_ENTRIES`]); answering a duplicate does not count as a use;
//!   the sweep removes expired records later, a bounded number per entry, which changes
//!   no outcome (the rule checks expiry itself).
//! - Every applied write that changes a key takes the next revision; a key's version is the
//!   revision of its last write (an absent key has version 0).
//! - Users (see [`crate::auth`]) live in the metadata space under `user/`, never in the
//!   user data space: no client read, scan or key listing reaches them, and they travel
//!   with every state transfer like the rest of the metadata.
//! - An entry that changes users also records, in its batch, those users as they were
//!   before it (`user-undo`, only the last such entry's): the SQL store checks its
//!   writes against the user table as of their entry through [`KvStore::user_after`].
//! - A node that fell behind a compacted log receives a peer's whole state instead
//!   ([`transfer`]): it is staged beside the live state and replaces it in one atomic
//!   switch ([`StateMachine::install_staged`]).
//! - [`KvStore::has_users`] answers "none" from memory only while no write that touched
//!   the user table (an applied entry's batch, an installed state) completed since a scan
//!   found none: every such write bumps [`UsersSeen::changes`] *after* it is visible, so
//!   a scan that raced it is never remembered past it. (Every request's authentication
//!   asks, and a RocksDB iterator per request cost 8 % of a leader's CPU.)

use crate::auth::UserRecord;
use crate::command::{
    Command, CompareTarget, Expect, ExpireCond, Expiry, KeyValue, KvCommand, ScanRange, SetCond,
    Txn, TxnOp, TxnOpResult, Versioned, WriteOp, WriteResult, LEGACY_APPEND_MAX,
    MAX_TXN_DELETE_RANGE,
};
use crate::error::{Error, Result};
use crate::machine::{Machine, Outcome, Stamp, StateMachine};
use crate::membership::Membership;
use crate::session::{self, Decision, EntrySessions, Kept, Record, SessionOutcome, SessionStore};
use crate::storage::db::{read_u64, u64_key};
use backend::{Backend, MemSpaces, RawWrite, ReadView, RocksSpaces, Space};
use rocksdb::DB;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

pub mod backend;
pub mod handle;
mod history;
pub mod lease;
pub mod rehearsal;
mod staging;
pub mod transfer;
pub mod watch;

pub use handle::KvHandle;
pub use history::{Change, ChangeKind, HistoryLimits, HistoryRead, WatchFilter};
pub use lease::LeaseStatus;
pub use transfer::{Importer, StateChunk, StateEnd, StatePart, CHUNK_BYTES};
pub use watch::Watcher;

/// A scan stops (reporting `more`) once its rows hold this many bytes.
pub const MAX_SCAN_BYTES: usize = 16 * 1024 * 1024;

const K_APPLIED: &[u8] = b"applied";
/// The log's time as of the applied index: milliseconds since the Unix epoch, the
/// largest clock stamp applied so far (see [`crate::machine::Machine::Clock`]).
const K_TIME: &[u8] = b"time";
/// Index of keys by deadline: `x` + deadline (8 bytes, big-endian) + key → empty, in
/// `Space::Sm`. Lazy: a key whose deadline changed leaves its old index key behind, which
/// the expiry sweep drops once its deadline passed.
const DEADLINE_PREFIX: u8 = b'x';
/// The most stored rows one transaction's range reads and deletes may step over, hidden
/// ones included: a transaction that needs more is refused as a whole.
pub const MAX_TXN_SCAN_STEPS: usize = 100_000;

/// What a row costs a transaction's answer beyond its key and value bytes (its framing).
const ROW_OVERHEAD: usize = 32;

/// The most keys one entry's expiry sweep deletes (the rest go with the next entries).
pub const EXPIRE_SWEEP_MAX: usize = 1000;
const K_MEMBERSHIP: &[u8] = b"membership";
const K_REVISION: &[u8] = b"revision";
const SESSION_PREFIX: u8 = b's';
/// Users (see [`crate::auth`]): `user/` + name → bincode [`UserRecord`], in `Space::Sm`,
/// where no client read, scan or key listing can reach them.
const USER_PREFIX: &[u8] = b"user/";

/// The users the last user-changing entry changed, as they were before it: `user-undo`
/// → bincode [`UserUndo`], in `Space::Sm` (sorts before `user/`, so no user scan sees
/// it). Written in the entry's own batch; what lets the SQL store see the user table as
/// of an entry the key-value store already applied ([`KvStore::user_after`]).
const K_USER_UNDO: &[u8] = b"user-undo";

/// The users entry `index` changed, each as it was before the entry (`None`: absent);
/// sorted by name, so every replica writes the same bytes. `previous`: the user-changing
/// entry before it (`None`: none recorded), so that a question this record cannot
/// answer is recognised.
#[derive(serde::Serialize, serde::Deserialize)]
struct UserUndo {
    index: u64,
    previous: Option<u64>,
    before: Vec<(String, Option<UserRecord>)>,
}

fn user_key(name: &str) -> Vec<u8> {
    [USER_PREFIX, name.as_bytes()].concat()
}

fn decode_user(b: &[u8]) -> Result<UserRecord> {
    bincode::deserialize(b).map_err(|e| Error::Storage(format!("corrupt user record: {e}")))
}
/// Index of sessions by expiry bucket: `e` + bucket start + client id (see
/// [`KvRecords`]).
const EXPIRY_PREFIX: u8 = b'e';

/// Whether a [`Space::Sm`] key is a session record's (see [`session_key`]).
fn is_session_key(key: &[u8]) -> bool {
    key.len() == 9 && key[0] == SESSION_PREFIX
}

fn session_key(client_id: u64) -> [u8; 9] {
    let mut k = [SESSION_PREFIX; 9];
    k[1..].copy_from_slice(&client_id.to_be_bytes());
    k
}

/// `e` + the start of the expiry bucket of the session's last use + client id. Data
/// directories of format 2 hold `e` + the last index itself (an unaligned "bucket
/// start"); [`KvRecords::sweep`] handles both.
fn expiry_key(bucket_start: u64, client_id: u64) -> [u8; 17] {
    let mut k = [EXPIRY_PREFIX; 17];
    k[1..9].copy_from_slice(&bucket_start.to_be_bytes());
    k[9..].copy_from_slice(&client_id.to_be_bytes());
    k
}

/// Longest value a session record keeps in its remembered result. A failed compare or a
/// `--prev` write returns a value; keeping megabytes of them for
/// [`session::SESSION_TTL_ENTRIES`] entries per client would fill the disk, so only the
/// version of a longer one is kept ([`Kept::Trimmed`]), and a retry reads the value back
/// while the key still has that version. (A key-value result holds little besides that
/// value, so its record stays about [`session::RESULT_KEEP`] bytes at most.)
pub const SESSION_VALUE_KEEP: usize = 64 * 1024;

/// The value a result carries, if any (every result carries at most one).
fn result_value(r: &mut WriteResult) -> Option<&mut Versioned> {
    match r {
        WriteResult::Put { prev, .. }
        | WriteResult::Delete { prev, .. }
        | WriteResult::Set { prev, .. } => prev.as_mut(),
        WriteResult::Cas { current, .. } => current.as_mut(),
        _ => None,
    }
}

impl SessionOutcome for WriteResult {
    /// Whole, or without a value longer than [`SESSION_VALUE_KEEP`] (its version stays).
    fn keep(&self) -> Kept<WriteResult> {
        // A transaction's results are kept whole while small, else not at all (a retry
        // then learns only that it was applied).
        if matches!(self, WriteResult::Txn { .. }) {
            return session::keep_bounded(self);
        }
        let mut result = self.clone();
        match result_value(&mut result) {
            Some(v) if v.value.len() > SESSION_VALUE_KEEP => {
                v.value = Vec::new();
                Kept::Trimmed(result)
            }
            _ => Kept::Whole(result),
        }
    }

    fn rejected(why: String) -> Self {
        WriteResult::Rejected(why)
    }

    fn reused(why: String) -> Self {
        WriteResult::SessionReused(why)
    }

    fn superseded(why: String) -> Self {
        WriteResult::Superseded(why)
    }
}

/// Most bytes of values [`WriteCache`] holds.
const WRITE_CACHE_BYTES: usize = 32 * 1024 * 1024;
/// Most keys [`WriteCache`] holds.
const WRITE_CACHE_KEYS: usize = 128 * 1024;
/// What a cached key costs beyond its key and value bytes (map slot, vectors), roughly.
const WRITE_CACHE_OVERHEAD: usize = 64;

/// The values the applier last wrote, as stored (`None`: deleted), for the keys that
/// applying an entry reads back: every key of [`Space::Kv`] (a write reads the key's
/// stored value first, for its create revision, deadline and lease) and every session
/// record (a write reads its client's record). A hit spares a RocksDB lookup: those two
/// lookups were a third of a follower's apply in a profile of writes with 64 clients.
///
/// Invariants: an entry equals what the live store holds under its key. It is filled only
/// from the store's own atomic write of an entry, after that write succeeded (every write
/// of those keys is such a write), and emptied whenever the live state is replaced any
/// other way (an installed state). A miss reads the store. Bounded by
/// [`WRITE_CACHE_BYTES`] and [`WRITE_CACHE_KEYS`]: past either it starts over empty. A
/// clone of the store starts empty and stays so (only the applier fills its own).
#[derive(Default)]
struct WriteCache {
    kv: HashMap<Vec<u8>, Option<Vec<u8>>>,
    sm: HashMap<Vec<u8>, Option<Vec<u8>>>,
    bytes: usize,
}

impl Clone for WriteCache {
    fn clone(&self) -> Self {
        WriteCache::default()
    }
}

impl WriteCache {
    /// What the store holds under `key`, if the cache knows (`Some(None)`: nothing).
    fn get(&self, space: Space, key: &[u8]) -> Option<&Option<Vec<u8>>> {
        match space {
            Space::Kv => self.kv.get(key),
            Space::Sm => self.sm.get(key),
        }
    }

    /// What the live store holds under `key`: from the cache when it knows, else read
    /// from `backend`.
    fn read(&self, backend: &Backend, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.get(space, key) {
            Some(cached) => Ok(cached.clone()),
            None => backend.get(space, key),
        }
    }

    /// Remembers what a written batch left under the keys the cache keeps.
    fn wrote(&mut self, writes: Vec<RawWrite>) {
        for (space, key, value) in writes {
            let map = match space {
                Space::Kv => &mut self.kv,
                Space::Sm if is_session_key(&key) => &mut self.sm,
                Space::Sm => continue,
            };
            let len = key.len();
            let cost =
                |v: &Option<Vec<u8>>| WRITE_CACHE_OVERHEAD + len + v.as_ref().map_or(0, Vec::len);
            self.bytes += cost(&value);
            // An equal key replaces only the value: the key's length is the same.
            if let Some(old) = map.insert(key, value) {
                self.bytes -= cost(&old);
            }
        }
        if self.bytes > WRITE_CACHE_BYTES || self.kv.len() + self.sm.len() > WRITE_CACHE_KEYS {
            self.clear();
        }
    }

    fn clear(&mut self) {
        *self = WriteCache::default();
    }
}

/// The key-value store's session records, in `Space::Sm`, written into the batch of the
/// entry being applied.
///
/// A record is `s` + client id → [`session::encode_record`]. Beside it, the expiry index
/// holds one key per record, `e` + [`session::bucket`] of its last use + client id, so a
/// sweep finds expired records in key order. A record used again within the same bucket
/// keeps its expiry key (a put costs the record write only, not two more for moving its
/// index key); it moves when the bucket changes.
///
/// Invariants: every record has an expiry key whose bucket start is at most its last
/// index, and at least its last index minus [`session::SWEEP_BUCKET`] − 1 (format 2
/// directories: exactly its last index, same bounds). So once
/// [`session::sweepable_below`] passes a key, the record it names, if it still names
/// that client's live record, is expired; the sweep checks the record anyway and deletes
/// a key left behind by a move (an orphan) without touching the record.
struct KvRecords<'a> {
    backend: &'a Backend,
    /// What the applier wrote last, looked at before the backend.
    cache: &'a WriteCache,
    writes: Vec<RawWrite>,
}

impl SessionStore<WriteResult> for KvRecords<'_> {
    fn load(&mut self, client_id: u64) -> Result<Option<Record<WriteResult>>> {
        let stored = self
            .cache
            .read(self.backend, Space::Sm, &session_key(client_id))?;
        stored.map(|b| session::decode_record(&b)).transpose()
    }

    fn save(
        &mut self,
        client_id: u64,
        rec: &Record<WriteResult>,
        before: Option<&Record<WriteResult>>,
    ) -> Result<()> {
        let bucket = session::bucket(rec.last_index);
        let old = before.map(|b| session::bucket(b.last_index));
        if old != Some(bucket) {
            if let Some(old) = old {
                self.writes
                    .push((Space::Sm, expiry_key(old, client_id).to_vec(), None));
            }
            self.writes.push((
                Space::Sm,
                expiry_key(bucket, client_id).to_vec(),
                Some(vec![]),
            ));
        }
        self.writes.push((
            Space::Sm,
            session_key(client_id).to_vec(),
            Some(session::encode_record(rec)?),
        ));
        Ok(())
    }

    fn sweep(&mut self, index: u64, used: &dyn Fn(u64) -> bool) -> Result<()> {
        let Some(below) = session::sweepable_below(index) else {
            return Ok(());
        };
        let end = expiry_key(below, 0);
        let mut keys = Vec::new();
        self.backend.view(|v| {
            v.scan_from(Space::Sm, &[EXPIRY_PREFIX], &mut |k, _| {
                if k.len() != 17 || k >= end.as_slice() || keys.len() >= session::SWEEP_MAX {
                    return Ok(false);
                }
                let client = u64::from_be_bytes(k[9..].try_into().expect("17-byte key"));
                keys.push((k.to_vec(), client));
                Ok(true)
            })
        })?;
        for (key, client) in keys {
            // A used client's record is being rewritten; its old key moves with it.
            if !used(client) {
                let expired = self
                    .load(client)?
                    .is_some_and(|r| !session::alive(r.last_index, index + 1));
                if expired {
                    self.writes
                        .push((Space::Sm, session_key(client).to_vec(), None));
                }
            }
            self.writes.push((Space::Sm, key, None));
        }
        Ok(())
    }
}

/// The top bit of a stored value's version says a deadline follows it. (Versions count
/// changes and never come near 2^63; values written before expiry existed never have it,
/// so they read unchanged.)
const HAS_DEADLINE: u64 = 1 << 63;
/// The next bit says a lease id follows (after the deadline, if any): the key is
/// attached to that lease ([`lease`]). Format 5 on.
const HAS_LEASE: u64 = 1 << 62;
/// The next bit says the key's create revision follows (after the lease, if any): the
/// revision at which it last came into being, when that is not the revision of its
/// last write (a write that creates a key stores no such field). Format 6 on; a value
/// written before keeps reading its last write's revision as its create revision.
const HAS_CREATE: u64 = 1 << 61;
const FLAGS: u64 = HAS_DEADLINE | HAS_LEASE | HAS_CREATE;

/// A value record as stored under its key in [`Space::Kv`].
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stored {
    value: Versioned,
    /// When it expires, in log time; `None`: never (or when its lease ends).
    deadline: Option<u64>,
    /// The lease it is attached to.
    lease: Option<u64>,
    /// The revision at which the key was created (≤ `value.version`).
    created: u64,
}

/// A stored value: the version (with [`HAS_DEADLINE`] when it expires, [`HAS_LEASE`]
/// when it is attached to a lease, [`HAS_CREATE`] when it was created before this
/// write), the deadline if any (log time in ms), the lease id if any, the create
/// revision if flagged, then the bytes.
fn encode_value(v: &Versioned, deadline: Option<u64>, lease: Option<u64>, created: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + v.value.len());
    let created = Some(created).filter(|c| *c != v.version);
    let mut version = v.version;
    for (flag, field) in [
        (HAS_DEADLINE, deadline),
        (HAS_LEASE, lease),
        (HAS_CREATE, created),
    ] {
        if field.is_some() {
            version |= flag;
        }
    }
    out.extend_from_slice(&version.to_be_bytes());
    for x in [deadline, lease, created].into_iter().flatten() {
        out.extend_from_slice(&x.to_be_bytes());
    }
    out.extend_from_slice(&v.value);
    out
}

/// A value record, as [`encode_value`] wrote it.
fn decode_value(bytes: &[u8]) -> Result<Stored> {
    let corrupt = || Error::Storage("corrupt value record".into());
    let version = read_u64(bytes.get(..8).ok_or_else(corrupt)?)?;
    let mut at = 8;
    let mut field = |flag: u64| -> Result<Option<u64>> {
        if version & flag == 0 {
            return Ok(None);
        }
        let x = read_u64(bytes.get(at..at + 8).ok_or_else(corrupt)?)?;
        at += 8;
        Ok(Some(x))
    };
    let deadline = field(HAS_DEADLINE)?;
    let lease = field(HAS_LEASE)?;
    let created = field(HAS_CREATE)?;
    let version = version & !FLAGS;
    Ok(Stored {
        value: Versioned {
            version,
            value: bytes[at..].to_vec(),
        },
        deadline,
        lease,
        created: created.unwrap_or(version),
    })
}

/// When a stored value stops being visible, in log time, as `view` holds its lease:
/// its deadline, or its lease's end (0 once the lease is gone).
fn ends(view: &dyn ReadView, deadline: Option<u64>, lease: Option<u64>) -> Result<Option<u64>> {
    match lease {
        Some(id) => Ok(Some(lease::end_in_log_time(view, id)?)),
        None => Ok(deadline),
    }
}

/// Whether a value with `deadline` is visible at log time `time` (it expires at the
/// deadline itself).
fn live(deadline: Option<u64>, time: u64) -> bool {
    deadline.is_none_or(|d| time < d)
}

fn deadline_key(deadline: u64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + key.len());
    k.push(DEADLINE_PREFIX);
    k.extend_from_slice(&deadline.to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// A key as a read sees it, with its deadline (see [`KvStore::get_timed`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timed {
    pub value: Versioned,
    /// When it expires, in log time (ms since the Unix epoch); `None`: never.
    pub deadline: Option<u64>,
    /// The revision at which the key was created: of the write that made it exist after
    /// it was absent (deleted, expired or never written). Equal to `value.version` for a
    /// key written once since.
    pub created: u64,
}

/// The versioned key-value store. Cheap to clone; reads may run on any thread while one
/// owner applies (a clone's `applied_index()` is not kept current; reads report the
/// applied index of the view they read).
#[derive(Clone)]
pub struct KvStore {
    backend: Backend,
    /// Shared by every clone: what [`KvStore::has_users`] last found.
    users_seen: Arc<UsersSeen>,
    applied: u64,
    revision: u64,
    /// The log's time as of `applied` (see [`K_TIME`]).
    time: u64,
    /// The first deadline of the deadline index, kept current by the owner's applies and
    /// installs (what [`StateMachine::next_deadline`] answers without a seek per round).
    next_deadline: Option<u64>,
    /// The watch history's bounds, kept current by the owner (see [`history`]).
    window: history::Window,
    /// Lease time's offset and the last stamp's reign, kept current by the owner.
    lease_clock: lease::LeaseClock,
    /// Shared by every clone: the revision as of the last applied entry, for watchers to
    /// wait on ([`KvStore::subscribe`]).
    revisions: Arc<tokio::sync::watch::Sender<u64>>,
    /// What the applier wrote last under the keys an apply reads (see [`WriteCache`]).
    written: WriteCache,
    /// Bug injection for the simulation's checker tests (`sim::Bug::NoDedup`): apply
    /// every command as new, as if its session were unknown, so that a retried or
    /// re-proposed command applies twice. Exists only in test builds.
    #[cfg(test)]
    pub(crate) no_dedup: bool,
    /// Test builds only, for the simulation's bug injection: a multi-put is applied as
    /// separate puts, each taking its own revision (no longer one atomic version).
    #[cfg(test)]
    pub(crate) split_multi_put: bool,
    /// Test builds only, for the simulation's bug injection: a transaction runs only the
    /// first operation of its branch (no longer all of it, atomically).
    #[cfg(test)]
    pub(crate) txn_first_only: bool,
    /// Test builds only, for the simulation's bug injection: the watch history leaves out
    /// the changes of every revision divisible by 7 (a watcher misses them).
    #[cfg(test)]
    pub(crate) history_gap: bool,
}

pub(super) fn read_counter(v: Option<Vec<u8>>) -> Result<u64> {
    v.map_or(Ok(0), |v| read_u64(&v))
}

impl KvStore {
    /// Opens the store in the node's RocksDB, resuming from its persisted applied index.
    /// Staged data of an unfinished state transfer is discarded. Open the store once per
    /// database and clone it: clones share the live slot, separately opened stores do not.
    pub fn open(db: Arc<DB>) -> Result<KvStore> {
        Self::with_backend(Backend::Rocks(Arc::new(RocksSpaces::open(db)?)))
    }

    /// Drops the recorded membership (a restored backup seeds a new cluster, whose members
    /// come from its configuration; see `backup`). Not synced by itself: the next synced
    /// write to the node's RocksDB (restore's identity record) makes it durable, as the
    /// write-ahead log is one and ordered.
    pub fn forget_membership(&self) -> Result<()> {
        self.backend
            .write(&[(Space::Sm, K_MEMBERSHIP.to_vec(), None)])
    }

    /// A store in memory, resuming from whatever `spaces` holds.
    pub fn open_memory(spaces: Arc<RwLock<MemSpaces>>) -> Result<KvStore> {
        Self::with_backend(Backend::Memory(spaces))
    }

    fn with_backend(backend: Backend) -> Result<KvStore> {
        backend.discard_unfinished()?;
        let applied = read_counter(backend.get(Space::Sm, K_APPLIED)?)?;
        let revision = read_counter(backend.get(Space::Sm, K_REVISION)?)?;
        let time = read_counter(backend.get(Space::Sm, K_TIME)?)?;
        let window =
            backend.view(|v| history::Window::open(v, revision, HistoryLimits::default()))?;
        let lease_clock = backend.view(lease::LeaseClock::read)?;
        let mut store = KvStore {
            backend,
            users_seen: Arc::default(),
            applied,
            revision,
            time,
            next_deadline: None,
            window,
            lease_clock,
            revisions: Arc::new(tokio::sync::watch::Sender::new(revision)),
            written: WriteCache::default(),
            #[cfg(test)]
            no_dedup: false,
            #[cfg(test)]
            split_multi_put: false,
            #[cfg(test)]
            txn_first_only: false,
            #[cfg(test)]
            history_gap: false,
        };
        store.next_deadline = store.seek_next_deadline()?;
        Ok(store)
    }

    /// Sets how much watch history this store keeps (from its next applied entry on).
    pub fn set_history_limits(&mut self, limits: HistoryLimits) {
        self.window.limits = limits;
    }

    /// The changes from revision `from` on that `filter` matches, whole revisions in
    /// order, about `max_changes` changes or `max_bytes` of keys and values at most, from
    /// a consistent view. [`Error::Compacted`] when the history no longer holds `from`.
    pub fn history(
        &self,
        from: u64,
        filter: &WatchFilter,
        max_changes: usize,
        max_bytes: usize,
    ) -> Result<HistoryRead> {
        self.backend.view(|v| {
            history::read(
                v,
                from,
                filter,
                max_changes,
                max_bytes,
                history::MAX_READ_STEPS,
            )
        })
    }

    /// The revision as of the last applied entry, changing with every entry that takes
    /// one (and with an installed state): what a watcher waits on.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.revisions.subscribe()
    }

    /// The last revision handed out.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The log's time as of the applied index (ms since the Unix epoch; 0 before the
    /// first clock stamp).
    pub fn time(&self) -> u64 {
        self.time
    }

    /// The applied index, the revision and the log's time as the store holds them now,
    /// from one view (what a clone that does not apply reads; its own fields are not kept
    /// current).
    pub fn counters(&self) -> Result<(u64, u64, u64)> {
        self.backend.view(|v| {
            Ok((
                read_counter(v.get(Space::Sm, K_APPLIED)?)?,
                read_counter(v.get(Space::Sm, K_REVISION)?)?,
                read_counter(v.get(Space::Sm, K_TIME)?)?,
            ))
        })
    }

    /// The earliest deadline of a key, if any key expires (what the leader watches to
    /// stamp the log's time when it passes; see [`StateMachine::next_deadline`]), as the
    /// deadline index says now (it may name a key whose deadline changed since: the sweep
    /// drops such index keys when their time comes).
    pub fn seek_next_deadline(&self) -> Result<Option<u64>> {
        let mut first = None;
        self.backend.view(|v| {
            v.scan_from(Space::Sm, &[DEADLINE_PREFIX], &mut |k, _| {
                if k.len() >= 9 && k[0] == DEADLINE_PREFIX {
                    first = Some(read_u64(&k[1..9])?);
                }
                Ok(false)
            })?;
            // A lease's end counts too.
            if let Some(end) = lease::first_end(v)? {
                first = Some(first.map_or(end, |f: u64| f.min(end)));
            }
            Ok(())
        })?;
        Ok(first)
    }

    /// The live lease `id` with up to `max_keys` of its keys, as this node's state has it
    /// (`None`: never granted, expired or revoked), with the log's time of that state.
    pub fn lease(&self, id: u64, max_keys: usize) -> Result<(Option<LeaseStatus>, u64)> {
        self.backend.view(|v| {
            let time = read_counter(v.get(Space::Sm, K_TIME)?)?;
            Ok((lease::read(v, id, time, max_keys)?, time))
        })
    }

    /// The live leases from id `from` on, at most `limit`, and whether more exist.
    pub fn leases(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<(Vec<crate::command::LeaseInfo>, bool)> {
        self.backend.view(|v| {
            let time = read_counter(v.get(Space::Sm, K_TIME)?)?;
            lease::list(v, from, time, limit)
        })
    }

    /// Reads one key from a consistent view; returns it with the applied index the view
    /// reflects. A key whose deadline the log's time has reached is absent.
    pub fn get(&self, key: &[u8]) -> Result<(Option<Versioned>, u64)> {
        let (timed, applied, _) = self.get_timed(key)?;
        Ok((timed.map(|t| t.value), applied))
    }

    /// Reads one key's value as this node holds it now, for a caller that does not
    /// report the applied index: one point read (consistent by itself) when the value
    /// has no deadline and no lease, else as [`KvStore::get`] reads it. Spares the
    /// snapshot and the applied index's lookup of [`KvStore::get`].
    pub fn get_value(&self, key: &[u8]) -> Result<Option<Versioned>> {
        let Some(bytes) = self.backend.get(Space::Kv, key)? else {
            return Ok(None);
        };
        let stored = decode_value(&bytes)?;
        if stored.deadline.is_none() && stored.lease.is_none() {
            return Ok(Some(stored.value));
        }
        // Whether it is visible depends on the log's time or the lease, read in one view
        // with the value (which may be newer than the one just read: either is current).
        Ok(self.get(key)?.0)
    }

    /// Reads one key with its deadline from a consistent view; returns it with the
    /// applied index and the log's time the view reflects.
    pub fn get_timed(&self, key: &[u8]) -> Result<(Option<Timed>, u64, u64)> {
        self.backend.view(|v| {
            let applied = read_counter(v.get(Space::Sm, K_APPLIED)?)?;
            let Some(bytes) = v.get(Space::Kv, key)? else {
                return Ok((None, applied, 0));
            };
            let Stored {
                value,
                deadline,
                lease,
                created,
            } = decode_value(&bytes)?;
            if deadline.is_none() && lease.is_none() {
                let timed = Timed {
                    value,
                    deadline,
                    created,
                };
                return Ok((Some(timed), applied, 0));
            }
            let deadline = ends(v, deadline, lease)?;
            let time = read_counter(v.get(Space::Sm, K_TIME)?)?;
            let timed = live(deadline, time).then_some(Timed {
                value,
                deadline,
                created,
            });
            Ok((timed, applied, time))
        })
    }

    /// Scans `range` in key order, at most `limit` rows and about [`MAX_SCAN_BYTES`],
    /// from a consistent view. Returns the rows, whether more rows exist, and the applied
    /// index.
    pub fn scan(&self, range: &ScanRange, limit: usize) -> Result<(Vec<KeyValue>, bool, u64)> {
        self.backend.view(|v: &dyn ReadView| {
            let applied = read_counter(v.get(Space::Sm, K_APPLIED)?)?;
            let mut rows = Vec::new();
            let mut more = false;
            let mut bytes = 0;
            // The log's time, read once, when the first row with a deadline needs it.
            let mut time = None;
            v.scan_from(Space::Kv, range.start(), &mut |k, val| {
                if !range.contains_from_start(k) {
                    return Ok(false);
                }
                let Stored {
                    value: val,
                    deadline,
                    lease,
                    ..
                } = decode_value(val)?;
                let deadline = match lease {
                    Some(_) => ends(v, deadline, lease)?,
                    None => deadline,
                };
                if deadline.is_some() {
                    let now = match time {
                        Some(t) => t,
                        None => *time.insert(read_counter(v.get(Space::Sm, K_TIME)?)?),
                    };
                    if !live(deadline, now) {
                        return Ok(true);
                    }
                }
                if rows.len() == limit || bytes >= MAX_SCAN_BYTES {
                    more = true;
                    return Ok(false);
                }
                bytes += k.len() + val.value.len();
                rows.push(KeyValue {
                    key: k.to_vec(),
                    value: val.value,
                    version: val.version,
                });
                Ok(true)
            })?;
            Ok((rows, more, applied))
        })
    }

    /// The user `name`, as this node's applied state has it.
    pub fn user(&self, name: &str) -> Result<Option<UserRecord>> {
        self.backend
            .get(Space::Sm, &user_key(name))?
            .map(|b| decode_user(&b))
            .transpose()
    }

    /// The entry that last changed the user table, if this store recorded one (entries
    /// applied before the record existed are not known).
    pub fn last_user_change(&self) -> Result<Option<u64>> {
        Ok(self.user_undo()?.map(|u| u.index))
    }

    fn user_undo(&self) -> Result<Option<UserUndo>> {
        self.backend
            .get(Space::Sm, K_USER_UNDO)?
            .map(|b| {
                bincode::deserialize::<UserUndo>(&b)
                    .map_err(|e| Error::Storage(format!("corrupt user undo record: {e}")))
            })
            .transpose()
    }

    /// User `name` as the user table was right after the entry at `index`, which this
    /// store must have applied; the SQL store checks a SQL write of that entry against it.
    ///
    /// Usually nothing changed users after `index` and the answer is the current record.
    /// When the SQL store replays entries this store applied before a crash (or a state
    /// transfer left it one entry behind), the table may have changed since: the one
    /// record this store keeps (`user-undo`) undoes the last user-changing entry,
    /// which is enough because the SQL store durably commits every user-changing entry
    /// before this store applies the next entry (see `sql::store`, *Rights at apply*), so
    /// at most that one change lies after `index`. Two or more (the record's `previous`
    /// is after `index` too) is a broken invariant, reported as an error, never a guess.
    pub fn user_after(&self, index: u64, name: &str) -> Result<Option<UserRecord>> {
        let applied = read_counter(self.backend.get(Space::Sm, K_APPLIED)?)?;
        if applied <= index {
            return Err(Error::Internal(format!(
                "the user table as of entry {index} was asked for, but the key-value store \
                 applied only {applied} entries"
            )));
        }
        match self.user_undo()? {
            Some(undo) if undo.index > index => {
                if let Some(p) = undo.previous.filter(|p| *p > index) {
                    return Err(Error::Internal(format!(
                        "the user table as of entry {index} is not known: users changed at \
                         entries {p} and {} after it",
                        undo.index
                    )));
                }
                match undo.before.into_iter().find(|(n, _)| n == name) {
                    Some((_, before)) => Ok(before),
                    None => self.user(name),
                }
            }
            _ => self.user(name),
        }
    }

    /// Every user, by name (bounded: a user table is small and user management is
    /// admin-only).
    pub fn users(&self) -> Result<Vec<(String, UserRecord)>> {
        let mut out = Vec::new();
        self.backend.view(|v| {
            v.scan_from(Space::Sm, USER_PREFIX, &mut |k, val| {
                let Some(name) = k.strip_prefix(USER_PREFIX) else {
                    return Ok(false);
                };
                out.push((
                    String::from_utf8_lossy(name).into_owned(),
                    decode_user(val)?,
                ));
                Ok(true)
            })
        })?;
        Ok(out)
    }

    /// True when at least one user exists. Answered from memory while nothing touched the
    /// user table since a scan found it empty (see [`UsersSeen`]).
    pub fn has_users(&self) -> Result<bool> {
        let changes = self.users_seen.changes.load(Ordering::Acquire);
        if self.users_seen.none_at.load(Ordering::Acquire) == changes + 1 {
            return Ok(false);
        }
        let mut any = false;
        self.backend.view(|v| {
            v.scan_from(Space::Sm, USER_PREFIX, &mut |k, _| {
                any = k.starts_with(USER_PREFIX);
                Ok(false)
            })
        })?;
        if !any {
            // Remembered for `changes` as read before the scan: a change that completed
            // since has bumped the count past it, and the next call scans again.
            self.users_seen
                .none_at
                .store(changes + 1, Ordering::Release);
        }
        Ok(any)
    }
}

/// What [`KvStore::has_users`] remembers, shared by a store's clones.
#[derive(Debug, Default)]
struct UsersSeen {
    /// Writes that touched the user table, counted after each became visible.
    changes: AtomicU64,
    /// `changes + 1` as it was before a scan that found no user (0: none remembered).
    none_at: AtomicU64,
}

impl UsersSeen {
    /// Called after a write that may have changed the user table became visible.
    fn changed(&self) {
        self.changes.fetch_add(1, Ordering::AcqRel);
    }
}

/// What an [`Overlay`] holds for a key: its value as stored (expired or not), its
/// deadline, and whether this entry wrote it.
#[derive(Clone, Debug, Default)]
struct Slot {
    value: Option<Versioned>,
    deadline: Option<u64>,
    dirty: bool,
    /// The deadline the store holds for the key (`None`: none), whose index key goes
    /// when the key's deadline changes.
    stored_deadline: Option<u64>,
    /// The lease the key is attached to.
    lease: Option<u64>,
    /// The lease the store holds for the key (`None`: none), whose attachment key goes
    /// when it changes.
    stored_lease: Option<u64>,
    /// The revision at which `value`'s key was created (0 without a value).
    created: u64,
}

/// The writes of one entry, staged in memory so later commands see earlier ones.
struct Overlay<'a> {
    store: &'a KvStore,
    keys: HashMap<Vec<u8>, Slot>,
    revision: u64,
    /// The log's time at this entry.
    time: u64,
    /// Users written by this entry (None: deleted).
    users: HashMap<String, Option<UserRecord>>,
    /// While a transaction runs: every key it wrote with what `keys` held for it before
    /// (`None`: nothing), so that a transaction refused as a whole can be undone.
    undo: Option<Vec<(Vec<u8>, Option<Slot>)>>,
    /// Every change this entry made, in order, for the watch history.
    changes: Vec<history::Pending>,
    /// The leases this entry changed.
    leases: lease::LeaseChanges,
}

/// A row an [`Overlay`] range visit passes on: as stored, or as this entry wrote it.
enum Row<'a> {
    Stored(Versioned),
    Written(&'a Versioned),
}

impl Row<'_> {
    fn versioned(self) -> Versioned {
        match self {
            Row::Stored(v) => v,
            Row::Written(v) => v.clone(),
        }
    }
}

impl Overlay<'_> {
    fn user(&self, name: &str) -> Result<Option<UserRecord>> {
        match self.users.get(name) {
            Some(u) => Ok(u.clone()),
            None => self.store.user(name),
        }
    }

    /// True when a user exists, counting this entry's own changes.
    fn any_user(&self) -> Result<bool> {
        if self.users.values().any(Option::is_some) {
            return Ok(true);
        }
        let mut any = false;
        self.store.backend.view(|v| {
            v.scan_from(Space::Sm, USER_PREFIX, &mut |k, _| {
                let Some(name) = k.strip_prefix(USER_PREFIX) else {
                    return Ok(false);
                };
                // A user deleted by this entry does not count; look further.
                any = !self
                    .users
                    .contains_key(String::from_utf8_lossy(name).as_ref());
                Ok(!any)
            })
        })?;
        Ok(any)
    }

    /// The key as stored or as this entry wrote it, expired or not.
    fn load(&mut self, key: &[u8]) -> Result<&Slot> {
        if !self.keys.contains_key(key) {
            let stored = (self.store.written).read(&self.store.backend, Space::Kv, key)?;
            let slot = match stored {
                Some(b) => {
                    let Stored {
                        value,
                        deadline,
                        lease,
                        created,
                    } = decode_value(&b)?;
                    Slot {
                        value: Some(value),
                        deadline,
                        dirty: false,
                        stored_deadline: deadline,
                        lease,
                        stored_lease: lease,
                        created,
                    }
                }
                None => Slot::default(),
            };
            self.keys.insert(key.to_vec(), slot);
        }
        Ok(&self.keys[key])
    }

    /// Whether `slot`'s value is visible at this entry: present, its deadline not
    /// reached, its lease (if any) live.
    fn visible(&self, slot: &Slot) -> Result<bool> {
        if slot.value.is_none() || !live(slot.deadline, self.time) {
            return Ok(false);
        }
        match slot.lease {
            Some(id) => Ok(self.lease_end(id)? > self.time),
            None => Ok(true),
        }
    }

    /// The key's value as this entry sees it: absent once its deadline passed or its
    /// lease ended.
    fn get(&mut self, key: &[u8]) -> Result<Option<Versioned>> {
        self.load(key)?;
        let slot = &self.keys[key];
        Ok(match self.visible(slot)? {
            true => slot.value.clone(),
            false => None,
        })
    }

    /// The deadline of the key's live value (`None`: absent or never expires).
    fn deadline(&mut self, key: &[u8]) -> Result<Option<u64>> {
        self.load(key)?;
        let slot = &self.keys[key];
        Ok(slot
            .deadline
            .filter(|_| self.visible(slot).unwrap_or(false)))
    }

    /// The remembered result of a retried command. A value the record did not keep is
    /// read back while the key still has the remembered version (a version names one
    /// write, so the value is the same); once the key moved on, the value is gone and the
    /// retry learns only that the write was applied.
    fn recall(&mut self, mut result: WriteResult, op: &WriteOp) -> Result<WriteResult> {
        let key = op.keys().first().map(|k| k.to_vec()).unwrap_or_default();
        let now = self.get(&key)?;
        let Some(v) = result_value(&mut result) else {
            return Ok(result);
        };
        match now {
            Some(cur) if cur.version == v.version => {
                v.value = cur.value;
                Ok(result)
            }
            _ => Ok(WriteResult::Superseded(format!(
                "this command was applied earlier, but the value it returned (version {}) \
                 has since been overwritten and was too large to keep for retries",
                v.version
            ))),
        }
    }

    /// Appends `suffix` to `key`'s value unless the result would be over `max_len`.
    fn append(&mut self, key: &[u8], suffix: &[u8], max_len: u64) -> Result<WriteResult> {
        let mut value = self.get(key)?.map(|v| v.value).unwrap_or_default();
        if (value.len() + suffix.len()) as u64 > max_len {
            return Ok(WriteResult::Rejected(format!(
                "append would make the value {} bytes, over the value limit of {max_len} \
                 bytes; nothing was appended",
                value.len() + suffix.len()
            )));
        }
        value.extend_from_slice(suffix);
        let len = value.len() as u64;
        // An append keeps the key's deadline, as in Redis.
        let deadline = self.deadline(key)?;
        let version = self.set_until(key, Some(value), deadline)?;
        Ok(WriteResult::Append { len, version })
    }

    /// Writes `value` (`None`: deletes) under the next revision, without a deadline.
    fn set(&mut self, key: &[u8], value: Option<Vec<u8>>) -> Result<u64> {
        self.set_until(key, value, None)
    }

    /// Writes `value` under the next revision, expiring at `deadline`.
    fn set_until(
        &mut self,
        key: &[u8],
        value: Option<Vec<u8>>,
        deadline: Option<u64>,
    ) -> Result<u64> {
        self.revision += 1;
        let version = self.revision;
        let value = value.map(|value| Versioned { value, version });
        self.write(key.to_vec(), value, deadline)?;
        Ok(version)
    }

    /// Records `value` as this entry's write of `key` (remembering what it replaces while
    /// a transaction runs). The key is read first, even by a blind write: a value that
    /// replaces a visible one keeps its create revision, any other starts a new one; and
    /// the deadline and lease index keys of the stored value are known, to go with it.
    fn write(
        &mut self,
        key: Vec<u8>,
        value: Option<Versioned>,
        deadline: Option<u64>,
    ) -> Result<()> {
        self.load(&key)?;
        let before = &self.keys[&key];
        let (stored_deadline, stored_lease) = (before.stored_deadline, before.stored_lease);
        let created = match &value {
            None => 0,
            Some(_) if self.visible(before)? => before.created,
            Some(v) => v.version,
        };
        let slot = Slot {
            deadline: deadline.filter(|_| value.is_some()),
            value,
            dirty: true,
            stored_deadline,
            lease: None,
            stored_lease,
            created,
        };
        self.changes.push(history::Pending {
            revision: slot.value.as_ref().map_or(self.revision, |v| v.version),
            kind: match slot.value {
                Some(_) => ChangeKind::Put,
                None => ChangeKind::Delete,
            },
            key: key.clone(),
            value: slot
                .value
                .as_ref()
                .map(|v| v.value.clone())
                .unwrap_or_default(),
        });
        let before = self.keys.insert(key.clone(), slot);
        if let Some(undo) = &mut self.undo {
            undo.push((key, before));
        }
        Ok(())
    }

    /// Deletes every key whose deadline the entry's time reached, at most
    /// [`EXPIRE_SWEEP_MAX`] (each taking a revision, as a delete does), and drops the index
    /// keys it passes (including those a changed deadline left behind).
    fn expire(&mut self, index_writes: &mut Vec<RawWrite>) -> Result<()> {
        let end = deadline_key(self.time.saturating_add(1), b"");
        let mut due = Vec::new();
        self.store.backend.view(|v| {
            v.scan_from(Space::Sm, &[DEADLINE_PREFIX], &mut |k, _| {
                if k < end.as_slice() && k.len() >= 9 && due.len() < EXPIRE_SWEEP_MAX {
                    due.push(k.to_vec());
                    return Ok(true);
                }
                Ok(false)
            })
        })?;
        for k in due {
            let deadline = read_u64(&k[1..9])?;
            let key = &k[9..];
            let slot = self.load(key)?;
            if slot.value.is_some() && slot.deadline == Some(deadline) {
                self.set(key, None)?;
                if let Some(c) = self.changes.last_mut() {
                    c.kind = ChangeKind::Expire;
                }
            }
            index_writes.push((Space::Sm, k, None));
        }
        self.sweep_leases(index_writes)
    }

    /// Visits the rows of `range` in key order as this entry sees them (the store with
    /// the entry's own writes over it) until `f` returns false. Every stored row read
    /// counts in `steps` (hidden ones too), and the visit stops once it passes
    /// [`MAX_TXN_SCAN_STEPS`].
    fn visit_range(
        &self,
        range: &ScanRange,
        steps: &mut usize,
        f: &mut dyn FnMut(&[u8], Row<'_>) -> Result<bool>,
    ) -> Result<()> {
        let start = range.start();
        let time = self.time;
        let mut written: Vec<(&[u8], Option<&Versioned>)> = (self.keys.iter())
            .filter(|(k, slot)| slot.dirty && k.as_slice() >= start && range.contains_from_start(k))
            .map(|(k, slot)| {
                let v = slot
                    .value
                    .as_ref()
                    .filter(|_| self.visible(slot).unwrap_or(false));
                (k.as_slice(), v)
            })
            .collect();
        written.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut written = written.into_iter().peekable();
        let mut stopped = false;
        self.store.backend.view(|view| {
            view.scan_from(Space::Kv, start, &mut |k, v| {
                if !range.contains_from_start(k) {
                    return Ok(false);
                }
                *steps += 1;
                if *steps > MAX_TXN_SCAN_STEPS {
                    stopped = true;
                    return Ok(false);
                }
                // This entry's writes before `k`, then `k` itself as written or stored.
                while let Some((wk, wv)) = written.next_if(|(wk, _)| *wk <= k) {
                    let shadows = wk == k;
                    if let Some(wv) = wv {
                        if !f(wk, Row::Written(wv))? {
                            stopped = true;
                            return Ok(false);
                        }
                    }
                    if shadows {
                        return Ok(true);
                    }
                }
                let Stored {
                    value: v,
                    deadline,
                    lease,
                    ..
                } = decode_value(v)?;
                let deadline = match lease {
                    Some(id) => Some(self.lease_end(id)?),
                    None => deadline,
                };
                if live(deadline, time) && !f(k, Row::Stored(v))? {
                    stopped = true;
                    return Ok(false);
                }
                Ok(true)
            })
        })?;
        if !stopped {
            for (wk, wv) in written {
                if let Some(wv) = wv {
                    if !f(wk, Row::Written(wv))? {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Runs a transaction (see [`Txn`]). `Ok(Rejected)` when a bound refuses it as a
    /// whole: then everything it did is undone.
    fn txn(&mut self, t: &Txn) -> Result<WriteResult> {
        let mut succeeded = true;
        for c in &t.compare {
            let cur = self.get(&c.key)?;
            let created = match cur {
                Some(_) => self.keys[c.key.as_slice()].created,
                None => 0,
            };
            let holds = match (&c.target, &cur) {
                (CompareTarget::Value(_), None) => false,
                (CompareTarget::Value(want), Some(cur)) => {
                    c.op.holds(cur.value.as_slice(), want.as_slice())
                }
                (CompareTarget::Version(want), cur) => {
                    c.op.holds(&cur.as_ref().map_or(0, |c| c.version), want)
                }
                (CompareTarget::Create(want), _) => c.op.holds(&created, want),
            };
            if !holds {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded { &t.success } else { &t.failure };
        #[cfg(test)]
        let ops = match self.store.txn_first_only {
            true => &ops[..ops.len().min(1)],
            false => ops,
        };
        let (revision, changes) = (self.revision, self.changes.len());
        self.undo = Some(Vec::new());
        let ran = self.txn_ops(ops);
        let undo = self.undo.take().unwrap_or_default();
        match ran? {
            Ok(results) => Ok(WriteResult::Txn { succeeded, results }),
            Err(why) => {
                for (key, before) in undo.into_iter().rev() {
                    match before {
                        Some(slot) => self.keys.insert(key, slot),
                        None => self.keys.remove(&key),
                    };
                }
                self.revision = revision;
                self.changes.truncate(changes);
                Ok(WriteResult::Rejected(why))
            }
        }
    }

    /// The operations of a transaction's branch: their results, or why a bound refuses
    /// the transaction (the inner `Err`).
    fn txn_ops(&mut self, ops: &[TxnOp]) -> Result<std::result::Result<Vec<TxnOpResult>, String>> {
        // For the whole transaction: what its answer may carry (like one scan's bytes and
        // rows), how many keys its range deletes may delete, how many stored rows its
        // ranges may step over.
        let mut bytes = MAX_SCAN_BYTES;
        let mut rows = crate::node::MAX_SCAN_LIMIT;
        let mut deletes = MAX_TXN_DELETE_RANGE;
        let mut steps = 0;
        let over = || {
            format!(
                "the transaction would return more than {MAX_SCAN_BYTES} bytes of values; \
                 nothing was changed (read less per transaction)"
            )
        };
        let too_long = || {
            format!(
                "the transaction's ranges would step over more than {MAX_TXN_SCAN_STEPS} \
                 rows; nothing was changed (use smaller ranges or several transactions)"
            )
        };
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            let result = match op {
                TxnOp::Get { key } => {
                    let v = self.get(key)?;
                    let n = v.as_ref().map_or(0, |v| v.value.len() + key.len()) + ROW_OVERHEAD;
                    if n > bytes {
                        return Ok(Err(over()));
                    }
                    bytes -= n;
                    TxnOpResult::Get(v)
                }
                TxnOp::Range { range, limit } => {
                    let limit = match *limit as usize {
                        0 => crate::node::DEFAULT_SCAN_LIMIT,
                        n => n.min(crate::node::MAX_SCAN_LIMIT),
                    }
                    .min(rows);
                    let (mut items, mut more) = (Vec::new(), false);
                    self.visit_range(range, &mut steps, &mut |k, row| {
                        if items.len() >= limit || bytes == 0 {
                            more = true;
                            return Ok(false);
                        }
                        let v = row.versioned();
                        bytes = bytes.saturating_sub(k.len() + v.value.len() + ROW_OVERHEAD);
                        items.push(KeyValue {
                            key: k.to_vec(),
                            value: v.value,
                            version: v.version,
                        });
                        Ok(true)
                    })?;
                    if steps > MAX_TXN_SCAN_STEPS {
                        return Ok(Err(too_long()));
                    }
                    rows -= items.len();
                    TxnOpResult::Range { items, more }
                }
                TxnOp::DeleteRange { range } => {
                    let mut keys = Vec::new();
                    self.visit_range(range, &mut steps, &mut |k, _| {
                        keys.push(k.to_vec());
                        Ok(keys.len() <= deletes)
                    })?;
                    if keys.len() > deletes {
                        return Ok(Err(format!(
                            "the range deletes of a transaction may delete at most \
                             {MAX_TXN_DELETE_RANGE} keys in all, and these have more; nothing \
                             was changed (delete in smaller ranges)"
                        )));
                    }
                    if steps > MAX_TXN_SCAN_STEPS {
                        return Ok(Err(too_long()));
                    }
                    deletes -= keys.len();
                    for k in &keys {
                        self.set(k, None)?;
                    }
                    TxnOpResult::DeleteRange {
                        deleted: keys.len() as u64,
                    }
                }
                TxnOp::Write(w) if !w.in_txn() => {
                    return Ok(Err(
                        "a transaction may not hold user management, a lease's \
                         grant, keep-alive or revoke, or another transaction"
                            .into(),
                    ));
                }
                // As etcd: a put on a lease that is gone refuses the whole transaction (a
                // leader election's put-if-absent must not half succeed).
                TxnOp::Write(WriteOp::PutLeased { lease, .. })
                    if self.live_lease(*lease)?.is_none() =>
                {
                    return Ok(Err(format!(
                        "lease {lease} not found: never granted, expired or revoked; the \
                         transaction changed nothing"
                    )));
                }
                TxnOp::Write(w) => {
                    let mut r = self.execute(w)?;
                    let n = result_value(&mut r).map_or(0, |v| v.value.len()) + ROW_OVERHEAD;
                    if n > bytes {
                        return Ok(Err(over()));
                    }
                    bytes -= n;
                    TxnOpResult::Write(r)
                }
            };
            results.push(result);
        }
        Ok(Ok(results))
    }

    /// Stores `value` if `cond` holds, with the deadline `expiry` says (`None`: none, as a
    /// plain set clears it); reports the value before either way.
    fn cond_set(
        &mut self,
        key: &[u8],
        value: &[u8],
        cond: SetCond,
        expiry: Option<Expiry>,
    ) -> Result<WriteResult> {
        let prev = self.get(key)?;
        let applies = match cond {
            SetCond::Always => true,
            SetCond::IfAbsent => prev.is_none(),
            SetCond::IfPresent => prev.is_some(),
        };
        let version = if applies {
            let deadline = match expiry {
                None => None,
                Some(Expiry::Keep) => self.deadline(key)?,
                Some(Expiry::Set(d)) => Some(d.resolve(self.time)),
            };
            self.set_until(key, Some(value.to_vec()), deadline)?
        } else {
            prev.as_ref().map_or(0, |p| p.version)
        };
        Ok(WriteResult::Set {
            applied: applies,
            version,
            prev,
        })
    }

    fn execute(&mut self, op: &WriteOp) -> Result<WriteResult> {
        Ok(match op {
            WriteOp::Put {
                key,
                value,
                return_prev,
            } => {
                let prev = if *return_prev { self.get(key)? } else { None };
                let version = self.set(key, Some(value.clone()))?;
                WriteResult::Put { version, prev }
            }
            WriteOp::Delete { key, return_prev } => {
                let cur = self.get(key)?;
                let deleted = cur.is_some();
                if deleted {
                    self.set(key, None)?;
                }
                WriteResult::Delete {
                    deleted,
                    prev: if *return_prev { cur } else { None },
                }
            }
            WriteOp::Cas {
                key,
                expect,
                new_value,
            } => {
                let cur = self.get(key)?;
                let matches = match (expect, &cur) {
                    (Expect::Value(v), Some(c)) => &c.value == v,
                    (Expect::Value(_), None) => false,
                    (Expect::Version(v), Some(c)) => c.version == *v,
                    (Expect::Version(v), None) => *v == 0,
                };
                if matches {
                    let version = self.set(key, Some(new_value.clone()))?;
                    WriteResult::Cas {
                        succeeded: true,
                        version,
                        current: None,
                    }
                } else {
                    WriteResult::Cas {
                        succeeded: false,
                        version: cur.as_ref().map_or(0, |c| c.version),
                        current: cur,
                    }
                }
            }
            WriteOp::Set { key, value, cond } => self.cond_set(key, value, *cond, None)?,
            WriteOp::SetExpiring {
                key,
                value,
                cond,
                expiry,
            } => self.cond_set(key, value, *cond, Some(*expiry))?,
            WriteOp::Expire {
                key,
                deadline,
                when,
            } => {
                let Some(cur) = self.get(key)? else {
                    return Ok(WriteResult::Expire {
                        applied: false,
                        version: 0,
                    });
                };
                let now = self.deadline(key)?;
                let deadline = &deadline.map(|d| d.resolve(self.time));
                // No deadline counts as never: later than any.
                let later = |a: Option<u64>, b: Option<u64>| match (a, b) {
                    (None, _) => false,
                    (Some(_), None) => true,
                    (Some(a), Some(b)) => a < b,
                };
                let applies = match when {
                    ExpireCond::Always => true,
                    ExpireCond::IfNone => now.is_none(),
                    ExpireCond::IfSome => now.is_some(),
                    ExpireCond::Later => later(now, *deadline),
                    ExpireCond::Earlier => later(*deadline, now),
                    ExpireCond::EarlierIfSome => now.is_some() && later(*deadline, now),
                };
                if !applies {
                    WriteResult::Expire {
                        applied: false,
                        version: cur.version,
                    }
                } else if deadline.is_some_and(|d| d <= self.time) {
                    self.set(key, None)?;
                    WriteResult::Expire {
                        applied: true,
                        version: 0,
                    }
                } else {
                    let version = self.set_until(key, Some(cur.value), *deadline)?;
                    WriteResult::Expire {
                        applied: true,
                        version,
                    }
                }
            }
            WriteOp::Incr { key, delta } => {
                let cur = match self.get(key)? {
                    None => Some(0i64),
                    Some(v) => std::str::from_utf8(&v.value)
                        .ok()
                        .and_then(|s| s.parse::<i64>().ok()),
                };
                match cur.and_then(|c| c.checked_add(*delta)) {
                    Some(value) => {
                        // An increment keeps the key's deadline, as in Redis.
                        let deadline = self.deadline(key)?;
                        let version =
                            self.set_until(key, Some(value.to_string().into_bytes()), deadline)?;
                        WriteResult::Incr { value, version }
                    }
                    None => {
                        WriteResult::Rejected("value is not an integer or out of range".to_string())
                    }
                }
            }
            WriteOp::Append { key, suffix } => self.append(key, suffix, LEGACY_APPEND_MAX)?,
            WriteOp::AppendUpTo {
                key,
                suffix,
                max_len,
            } => self.append(key, suffix, *max_len)?,
            WriteOp::MultiPut { pairs } => {
                // One revision for the whole multi-put: it is one atomic write.
                self.revision += 1;
                #[allow(unused_mut)]
                let mut version = self.revision;
                // (The index is read only by the test-build bug injection.)
                #[allow(clippy::unused_enumerate_index)]
                for (_i, (k, v)) in pairs.iter().enumerate() {
                    #[cfg(test)]
                    if self.store.split_multi_put && _i > 0 {
                        self.revision += 1;
                        version = self.revision;
                    }
                    let value = Some(Versioned {
                        value: v.clone(),
                        version,
                    });
                    self.write(k.clone(), value, None)?;
                }
                WriteResult::MultiPut { version }
            }
            WriteOp::SetUser {
                name,
                change,
                only_if_no_users,
            } => {
                if *only_if_no_users && self.any_user()? {
                    return Ok(WriteResult::User { changed: false });
                }
                match change.apply_to(self.user(name)?) {
                    Ok(u) => {
                        self.users.insert(name.clone(), Some(u));
                        WriteResult::User { changed: true }
                    }
                    Err(why) => WriteResult::Rejected(why),
                }
            }
            WriteOp::DeleteUser { name } => {
                let old = self.user(name)?;
                let changed = old.is_some();
                if changed {
                    self.users.insert(name.clone(), None);
                    // Without a user a node serves everyone as an administrator (unless
                    // it requires credentials): deleting the last one would open the
                    // cluster, so it is refused — the same on every replica.
                    if !self.any_user()? {
                        self.users.insert(name.clone(), old);
                        return Ok(WriteResult::Rejected(
                            "the last user cannot be deleted: without users, nodes not \
                             started with --require-auth would serve every client as an \
                             administrator"
                                .into(),
                        ));
                    }
                }
                WriteResult::User { changed }
            }
            WriteOp::Txn(t) => self.txn(t)?,
            WriteOp::LeaseGrant { id, ttl_ms } => match self.lease_grant(*id, *ttl_ms)? {
                Ok(info) => WriteResult::Lease(Some(info)),
                Err(why) => WriteResult::Rejected(why),
            },
            WriteOp::LeaseKeepAlive { id } => WriteResult::Lease(self.lease_keep_alive(*id)?),
            WriteOp::LeaseRevoke { id } => WriteResult::LeaseRevoked {
                existed: self.lease_revoke(*id)?,
            },
            WriteOp::PutLeased {
                key,
                value,
                lease,
                return_prev,
            } => {
                if self.live_lease(*lease)?.is_none() {
                    return Ok(WriteResult::Rejected(format!(
                        "lease {lease} not found: never granted, expired or revoked; nothing \
                         was written"
                    )));
                }
                let prev = if *return_prev { self.get(key)? } else { None };
                let version = self.set(key, Some(value.clone()))?;
                if let Some(slot) = self.keys.get_mut(key.as_slice()) {
                    slot.lease = Some(*lease);
                }
                WriteResult::Put { version, prev }
            }
        })
    }
}

impl KvStore {
    /// Applies the key-value commands of the log entry at `index`, which must equal the
    /// applied index, atomically with advancing it, at the log's time as it is. Returns
    /// one result per command.
    pub fn apply_kv(&mut self, index: u64, commands: &[KvCommand]) -> Result<Vec<WriteResult>> {
        self.apply_kv_at(index, None, commands)
    }

    /// [`KvStore::apply_kv`] for an entry that carries a clock stamp: the log's time
    /// becomes the larger of it and the stamp (it never goes back), keys whose deadline
    /// it reaches are invisible from this entry on and deleted by a bounded sweep.
    pub fn apply_kv_at(
        &mut self,
        index: u64,
        stamp: Option<u64>,
        commands: &[KvCommand],
    ) -> Result<Vec<WriteResult>> {
        let stamp = stamp.map(|time| Stamp { time, reign: 0 });
        self.apply_kv_stamped(index, stamp, commands)
    }

    /// [`KvStore::apply_kv_at`] with the whole stamp: a stamp of another reign than the
    /// last one's does not count the time between them against leases ([`lease`]).
    pub fn apply_kv_stamped(
        &mut self,
        index: u64,
        stamp: Option<Stamp>,
        commands: &[KvCommand],
    ) -> Result<Vec<WriteResult>> {
        if index != self.applied {
            return Err(Error::Internal(format!(
                "apply of entry {index} but {} entries are applied",
                self.applied
            )));
        }
        let time = self.time.max(stamp.map_or(0, |s| s.time));
        let mut lease_writes = Vec::new();
        let mut lease_clock = self.lease_clock;
        let leases = lease::LeaseChanges::begin(
            &self.backend,
            &mut lease_clock,
            stamp,
            self.time,
            &mut lease_writes,
        )?;
        let offset_moved = lease_clock.offset != self.lease_clock.offset;
        let mut overlay = Overlay {
            store: self,
            keys: HashMap::new(),
            revision: self.revision,
            time,
            users: HashMap::new(),
            undo: None,
            changes: Vec::new(),
            leases,
        };
        let mut records = KvRecords {
            backend: &self.backend,
            cache: &self.written,
            writes: Vec::new(),
        };
        let mut sessions = EntrySessions::new(index);
        let mut results = Vec::with_capacity(commands.len());
        for cmd in commands {
            let fp = session::fingerprint(&cmd.op);
            let decision = sessions.decide(&mut records, cmd.client_id, cmd.seq, fp)?;
            #[cfg(test)]
            let decision = if self.no_dedup {
                Decision::Run
            } else {
                decision
            };
            let result = match decision {
                Decision::Answer(r) => r,
                Decision::Trimmed(r) => overlay.recall(r, &cmd.op)?,
                Decision::Run => {
                    let result = match &cmd.user {
                        // The user's rights as of this log position (see
                        // `Identity::permits`).
                        Some(name) => {
                            let rec = overlay.user(name)?;
                            match crate::auth::Identity::permits(name, rec.as_ref(), &cmd.op) {
                                Ok(()) => overlay.execute(&cmd.op)?,
                                Err(Error::PermissionDenied(why)) => WriteResult::Denied(why),
                                Err(e) => return Err(e),
                            }
                        }
                        None => overlay.execute(&cmd.op)?,
                    };
                    sessions.ran(&mut records, cmd.client_id, cmd.seq, fp, &result)?;
                    result
                }
            };
            results.push(result);
        }
        sessions.finish(&mut records)?;
        // The index keys this entry drops (swept, or of a deadline that changed) go
        // before those it adds, which are never the same keys.
        let mut index_writes = Vec::new();
        if self.next_deadline.is_some_and(|d| d <= time) || overlay.leases.revoked || offset_moved {
            overlay.expire(&mut index_writes)?;
        }
        let leases_changed = overlay.leases.changed();
        if leases_changed {
            (self.backend).view(|v| overlay.leases.finish(v, &mut lease_writes))?;
        }
        let (keys, revision) = (overlay.keys, overlay.revision);
        let mut window = self.window;
        let mut history_writes = Vec::new();
        #[cfg(test)]
        if self.history_gap {
            overlay.changes.retain(|c| c.revision % 7 != 0);
        }
        window.record(
            &self.backend,
            &overlay.changes,
            revision,
            &mut history_writes,
        )?;
        let mut writes: Vec<RawWrite> = Vec::with_capacity(keys.len() + 4);
        let mut index_adds = Vec::new();
        for (k, slot) in keys.into_iter().filter(|(_, slot)| slot.dirty) {
            let live_deadline = slot.deadline.filter(|_| slot.value.is_some());
            if let Some(old) = slot.stored_deadline.filter(|d| Some(*d) != live_deadline) {
                index_writes.push((Space::Sm, deadline_key(old, &k), None));
            }
            if let Some(d) = live_deadline {
                index_adds.push((Space::Sm, deadline_key(d, &k), Some(Vec::new())));
            }
            let lease = slot.lease.filter(|_| slot.value.is_some());
            if slot.stored_lease != lease {
                if let Some(old) = slot.stored_lease {
                    index_writes.push((Space::Sm, lease::attached_key(old, &k), None));
                }
                if let Some(new) = lease {
                    index_adds.push((Space::Sm, lease::attached_key(new, &k), Some(Vec::new())));
                }
            }
            let value =
                (slot.value.as_ref()).map(|v| encode_value(v, slot.deadline, lease, slot.created));
            writes.push((Space::Kv, k, value));
        }
        let index_changed =
            !index_writes.is_empty() || !index_adds.is_empty() || leases_changed || offset_moved;
        writes.extend(index_writes);
        writes.extend(index_adds);
        writes.extend(lease_writes);
        if time != self.time {
            writes.push((Space::Sm, K_TIME.to_vec(), Some(u64_key(time).to_vec())));
        }
        let users_changed = !overlay.users.is_empty();
        if users_changed {
            let mut names: Vec<&String> = overlay.users.keys().collect();
            names.sort();
            let before = (names.into_iter())
                .map(|n| Ok((n.clone(), self.user(n)?)))
                .collect::<Result<Vec<_>>>()?;
            let previous = self.last_user_change()?;
            let undo = bincode::serialize(&UserUndo {
                index,
                previous,
                before,
            })?;
            writes.push((Space::Sm, K_USER_UNDO.to_vec(), Some(undo)));
        }
        for (name, user) in overlay.users {
            let value = user.map(|u| bincode::serialize(&u)).transpose()?;
            writes.push((Space::Sm, user_key(&name), value));
        }
        writes.extend(records.writes);
        writes.extend(history_writes);
        writes.push((
            Space::Sm,
            K_APPLIED.to_vec(),
            Some(u64_key(index + 1).to_vec()),
        ));
        writes.push((
            Space::Sm,
            K_REVISION.to_vec(),
            Some(u64_key(revision).to_vec()),
        ));
        // Not synced on purpose: the log entry is already durable; if this batch is lost
        // in an OS crash, the applied index is lost with it and the entry is applied again.
        self.backend.write(&writes)?;
        self.written.wrote(writes);
        if users_changed {
            self.users_seen.changed();
        }
        self.applied = index + 1;
        self.window = window;
        self.lease_clock = lease_clock;
        if revision != self.revision {
            self.revisions.send_replace(revision);
        }
        self.revision = revision;
        self.time = time;
        if index_changed {
            self.next_deadline = self.seek_next_deadline()?;
        }
        Ok(results)
    }
}

impl KvStore {
    /// Test builds only: how many session records the store holds.
    #[cfg(test)]
    pub(crate) fn session_records(&self) -> Result<usize> {
        let mut n = 0;
        self.backend.view(|v| {
            v.scan_from(Space::Sm, &[SESSION_PREFIX], &mut |k, _| {
                let more = is_session_key(k);
                n += usize::from(more);
                Ok(more)
            })
        })?;
        Ok(n)
    }
}

impl StateMachine for KvStore {
    fn machine(&self) -> Machine {
        Machine::Kv
    }

    fn applied_index(&self) -> u64 {
        self.applied
    }

    /// Decodes the commands and applies them ([`KvStore::apply_kv`]); a payload that is
    /// not a key-value write is rejected (and touches no session).
    fn apply(&mut self, index: u64, commands: &[&Command]) -> Result<Vec<Outcome>> {
        self.apply_at(index, None, commands)
    }

    fn apply_at(
        &mut self,
        index: u64,
        stamp: Option<Stamp>,
        commands: &[&Command],
    ) -> Result<Vec<Outcome>> {
        let decoded = commands.iter().map(|c| KvCommand::decode(c)).collect();
        crate::machine::apply_decoded(decoded, |valid| {
            (self.apply_kv_stamped(index, stamp, &valid)?.into_iter())
                .map(|r| {
                    Ok(match r {
                        WriteResult::Rejected(why) => Outcome::Rejected(why),
                        WriteResult::Superseded(why) => Outcome::Superseded(why),
                        WriteResult::Denied(why) => Outcome::Denied(why),
                        WriteResult::SessionReused(why) => Outcome::SessionReused(why),
                        r => Outcome::Done(bincode::serialize(&r)?),
                    })
                })
                .collect()
        })
    }

    fn next_deadline(&self) -> Option<u64> {
        self.next_deadline
    }

    fn log_time(&self) -> u64 {
        self.time
    }

    fn needs_time(&self, cmd: &Command) -> bool {
        // bincode writes an enum's variant index first, as a little-endian u32: a write
        // that sets a deadline, or a transaction (which may), reads the time.
        static TAGS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
        let tags = TAGS.get_or_init(|| {
            let ops = [
                WriteOp::Txn(Txn::default()),
                WriteOp::LeaseGrant { id: 0, ttl_ms: 0 },
                WriteOp::LeaseKeepAlive { id: 0 },
                WriteOp::Expire {
                    key: vec![],
                    deadline: None,
                    when: ExpireCond::Always,
                },
                WriteOp::SetExpiring {
                    key: vec![],
                    value: vec![],
                    cond: SetCond::Always,
                    expiry: Expiry::Keep,
                },
            ];
            (ops.iter())
                .map(|op| bincode::serialize(op).expect("an op encodes")[..4].to_vec())
                .collect()
        });
        cmd.payload
            .get(..4)
            .is_some_and(|p| tags.iter().any(|t| t == p))
    }

    fn membership(&self) -> Result<Option<Membership>> {
        self.backend
            .get(Space::Sm, K_MEMBERSHIP)?
            .map(|b| {
                bincode::deserialize(&b)
                    .map_err(|e| Error::Storage(format!("corrupt membership record: {e}")))
            })
            .transpose()
    }

    fn apply_membership(&mut self, index: u64, m: &Membership) -> Result<()> {
        if index != self.applied {
            return Err(Error::Internal(format!(
                "membership change at {index} but {} entries are applied",
                self.applied
            )));
        }
        self.backend.write(&[
            (
                Space::Sm,
                K_MEMBERSHIP.to_vec(),
                Some(bincode::serialize(m)?),
            ),
            (
                Space::Sm,
                K_APPLIED.to_vec(),
                Some(u64_key(index + 1).to_vec()),
            ),
        ])?;
        self.applied = index + 1;
        Ok(())
    }

    fn install_staged(&mut self) -> Result<u64> {
        let installed = self.backend.install_staged();
        // Whatever happened, the live user table and session records may differ now.
        self.users_seen.changed();
        self.written.clear();
        installed?;
        // The installed state is live now: a failure to load it cannot be reported as
        // "nothing changed" (the node would go on applying onto a state it has not
        // loaded). The node stops instead; opening the store on restart loads it.
        if let Err(e) = self.load_installed() {
            panic!("the installed key-value state could not be loaded: {e}; restart the node");
        }
        Ok(self.applied)
    }
}

impl KvStore {
    /// Reloads what the applier keeps in memory from the (just installed) live state.
    fn load_installed(&mut self) -> Result<()> {
        self.applied = read_counter(self.backend.get(Space::Sm, K_APPLIED)?)?;
        self.revision = read_counter(self.backend.get(Space::Sm, K_REVISION)?)?;
        self.time = read_counter(self.backend.get(Space::Sm, K_TIME)?)?;
        self.next_deadline = self.seek_next_deadline()?;
        let limits = self.window.limits;
        self.window = (self.backend).view(|v| history::Window::open(v, self.revision, limits))?;
        self.lease_clock = self.backend.view(lease::LeaseClock::read)?;
        self.revisions.send_replace(self.revision);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod transfer_tests;
