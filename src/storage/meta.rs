//! The `meta` column family ([`CF_META`]): every key it holds, what its value means and how
//! it is encoded, in one place. Every reader and writer goes through [`MetaKey`] and
//! [`Meta`]; no other module spells a key of this family.
//!
//! | key | value | written by |
//! |---|---|---|
//! | `log_first`, `log_next` | big-endian u64: the log holds `[first, next)` | `storage::rocks` |
//! | `promise`, `accepted_round` | bincode `Ballot` | `storage::rocks` |
//! | `decided`, `compacted` | big-endian u64 | `storage::rocks` |
//! | `stopsign`, `snapshot` | bincode `Option<StopSign>`, `Option<NoSnapshot>` | `storage::rocks` |
//! | `format` | big-endian u64: the on-disk format ([`super::db::FORMAT`]) | `storage::db` |
//! | `identity` | text `node=<id> members=[<ids>]`: whom the directory belongs to | `server` |
//! | `incarnation` | big-endian u64, random, fixed when the directory is made | `server` |
//! | `peer_incarnation/<id>` | big-endian u64: the incarnation peer `<id>` first showed | `server` |
//! | `sm_slot` | one byte: the live state-machine slot (0 = A, 1 = B; absent = A) | `kv::staging` |
//! | `sm_staged` | slot (1 byte) + applied index (big-endian u64): a complete staged state | `kv::staging` |
//!
//! The state machines' own metadata (applied index, revision, membership, sessions) is
//! not here: it lives with each machine's state (the `sm` column families, the SQL
//! database), so that it commits atomically with that state.
//!
//! # Invariants
//!
//! - One spelling per key: [`MetaKey::bytes`] is the only place a key's bytes are written
//!   down, and keys never collide (`peer_incarnation/` is the only prefix, and no other
//!   key starts with it).
//! - Writes that must survive a crash before the node goes on (format, identity,
//!   incarnations, slot switches) go through [`Meta::write_synced`] or a caller's synced
//!   batch; [`Meta`] itself never writes unsynced on its own.

use super::db::{read_u64, u64_key, CF_META};
use crate::error::{Error, Result};
use rocksdb::{ColumnFamily, WriteBatch, WriteOptions, DB};
use std::borrow::Cow;

/// A key of the `meta` column family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaKey {
    /// First index the log holds.
    LogFirst,
    /// One past the last index the log holds.
    LogNext,
    /// The Paxos promise.
    Promise,
    /// The Paxos accepted round.
    AcceptedRound,
    /// The decided index.
    Decided,
    /// The compacted index.
    Compacted,
    /// The stop sign of a reconfiguration, if any.
    StopSign,
    /// OmniPaxos' snapshot (always `None`: paxosdb snapshots state machines itself).
    Snapshot,
    /// The data directory's on-disk format.
    Format,
    /// Which node and cluster the directory belongs to.
    Identity,
    /// This directory's incarnation.
    Incarnation,
    /// The incarnation a peer first showed.
    PeerIncarnation(u64),
    /// The live state-machine slot.
    LiveSlot,
    /// The staged-complete marker of a state transfer.
    Staged,
}

impl MetaKey {
    /// The key's bytes.
    pub fn bytes(self) -> Cow<'static, [u8]> {
        Cow::Borrowed(match self {
            MetaKey::LogFirst => b"log_first",
            MetaKey::LogNext => b"log_next",
            MetaKey::Promise => b"promise",
            MetaKey::AcceptedRound => b"accepted_round",
            MetaKey::Decided => b"decided",
            MetaKey::Compacted => b"compacted",
            MetaKey::StopSign => b"stopsign",
            MetaKey::Snapshot => b"snapshot",
            MetaKey::Format => b"format",
            MetaKey::Identity => b"identity",
            MetaKey::Incarnation => b"incarnation",
            MetaKey::PeerIncarnation(peer) => {
                return Cow::Owned(format!("peer_incarnation/{peer}").into_bytes())
            }
            MetaKey::LiveSlot => b"sm_slot",
            MetaKey::Staged => b"sm_staged",
        })
    }
}

/// The `meta` column family of a node's database.
pub struct Meta<'a> {
    db: &'a DB,
    cf: &'a ColumnFamily,
}

impl<'a> Meta<'a> {
    /// The family in `db` (opened by [`super::db::open_db`], which creates it).
    pub fn of(db: &'a DB) -> Meta<'a> {
        Meta {
            db,
            cf: db.cf_handle(CF_META).expect("meta column family"),
        }
    }

    /// The column family handle, for batches that also write other families.
    pub fn cf(&self) -> &'a ColumnFamily {
        self.cf
    }

    /// The raw value of `key`.
    pub fn get(&self, key: MetaKey) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf, key.bytes())?)
    }

    /// A big-endian u64 value.
    pub fn get_u64(&self, key: MetaKey) -> Result<Option<u64>> {
        self.get(key)?.map(|v| read_u64(&v)).transpose()
    }

    /// A bincode value.
    pub fn get_obj<T: serde::de::DeserializeOwned>(&self, key: MetaKey) -> Result<Option<T>> {
        self.get(key)?
            .map(|v| {
                bincode::deserialize(&v).map_err(|e| {
                    Error::Storage(format!(
                        "corrupt metadata {}: {e}",
                        String::from_utf8_lossy(&key.bytes())
                    ))
                })
            })
            .transpose()
    }

    /// Stages `key = value` in `batch`.
    pub fn put(&self, batch: &mut WriteBatch, key: MetaKey, value: impl AsRef<[u8]>) {
        batch.put_cf(self.cf, key.bytes(), value);
    }

    /// Stages `key = value` (big-endian) in `batch`.
    pub fn put_u64(&self, batch: &mut WriteBatch, key: MetaKey, value: u64) {
        self.put(batch, key, u64_key(value));
    }

    /// Stages the removal of `key` in `batch`.
    pub fn delete(&self, batch: &mut WriteBatch, key: MetaKey) {
        batch.delete_cf(self.cf, key.bytes());
    }

    /// Writes `batch` durably (synced).
    pub fn write_synced(&self, batch: WriteBatch) -> Result<()> {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        Ok(self.db.write_opt(batch, &opts)?)
    }

    /// The live state-machine slot (absent = 0, slot A).
    pub fn live_slot(&self) -> Result<u8> {
        match self.get(MetaKey::LiveSlot)?.as_deref() {
            None | Some([0]) => Ok(0),
            Some([1]) => Ok(1),
            Some(other) => Err(Error::Storage(format!(
                "corrupt live slot marker {other:?} in the meta column family"
            ))),
        }
    }

    /// Stages the switch of the live slot to `slot`.
    pub fn put_live_slot(&self, batch: &mut WriteBatch, slot: u8) {
        self.put(batch, MetaKey::LiveSlot, [slot]);
    }

    /// The staged-complete marker: (staged slot, its applied index).
    pub fn staged(&self) -> Result<Option<(u8, u64)>> {
        match self.get(MetaKey::Staged)? {
            None => Ok(None),
            Some(v) if v.len() == 9 && v[0] <= 1 => Ok(Some((v[0], read_u64(&v[1..])?))),
            Some(v) => Err(Error::Storage(format!(
                "corrupt staged-state marker of {} bytes",
                v.len()
            ))),
        }
    }

    /// Stages the marker saying slot `slot` holds a complete state at `applied`.
    pub fn put_staged(&self, batch: &mut WriteBatch, slot: u8, applied: u64) {
        let mut marker = vec![slot];
        marker.extend_from_slice(&applied.to_be_bytes());
        self.put(batch, MetaKey::Staged, marker);
    }
}
