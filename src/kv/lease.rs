//! Leases (etcd's model): a lease is granted with a time to live, kept alive by its
//! holder, and revoked or left to expire; keys put with a lease are deleted when it ends.
//! What leader election and service registration are built on.
//!
//! A lease lives in `Space::Sm`: `l` + id (8 bytes, big-endian) → time to live and end
//! (8 + 8 bytes); an index of leases by end, `y` + end + id; the keys attached to it,
//! `L` + id + key. A key attached to a lease carries the lease id in its stored value (a
//! flag bit of its version, [`super::HAS_LEASE`]), so every read sees at once that its
//! lease ended.
//!
//! # Time without a leader does not count
//!
//! A lease's end is kept in *lease time*: the log's time minus an offset, `lease-offset`.
//! Every clock stamp names the reign (ballot) of the leader that appended it; when an
//! entry's stamp comes from another reign than the last stamp applied, the time between
//! the two stamps, during which the cluster may have had no leader and a holder could
//! not reach one to keep its lease alive, is added to the offset: every lease's end moves
//! later by it in log time, at once (one write, whatever the number of leases). So a
//! lease never ends early because of a leader change; it may end later, by the time since
//! the log's last stamp before the change (at most about its time to live, as the leader
//! stamps at least when an end passes), as etcd renews every lease on a new leader.
//!
//! # Invariants
//!
//! - A key attached to a lease is visible only while its lease exists and its end in lease
//!   time is after the entry's lease time, on every read path; a lease that ended (or was
//!   revoked) hides its keys from that entry on, and the sweep deletes them, a bounded
//!   number per entry, each under its own revision (a watcher sees an `expire`, or a
//!   `delete` for a revoke). The lease itself goes once no key is attached.
//! - The index by end is exact: a lease's end changes only with its `y` key in the same
//!   batch. The attachment index may hold keys a later plain write detached (a blind
//!   write does not read the key); the sweep checks each key's own lease id.
//! - Apply reads no clock: lease time comes from the log's time and the stamps' reigns.

use super::backend::{RawWrite, ReadView, Space};
use super::{read_counter, Overlay, EXPIRE_SWEEP_MAX};
use crate::command::LeaseInfo;
use crate::error::{Error, Result};
use crate::storage::db::{read_u64, u64_key};

const LEASE_PREFIX: u8 = b'l';
const LEASE_INDEX_PREFIX: u8 = b'y';
const LEASE_KEYS_PREFIX: u8 = b'L';
/// Log time minus lease time (see the module docs).
pub(super) const K_LEASE_OFFSET: &[u8] = b"offset-lease";
/// The reign of the last clock stamp applied (16 bytes).
pub(super) const K_REIGN: &[u8] = b"reign";
/// The next lease id the store picks.
const K_LEASE_NEXT: &[u8] = b"next-lease";
/// How many leases exist.
const K_LEASE_COUNT: &[u8] = b"count-leases";

/// The most leases a store holds; a grant beyond is refused.
pub const MAX_LEASES: u64 = 100_000;

/// What the store keeps in memory of lease time (as in `sm`): the offset and the reign
/// of the last stamp applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct LeaseClock {
    pub(super) offset: u64,
    pub(super) reign: Option<u128>,
}

impl LeaseClock {
    pub(super) fn read(view: &dyn ReadView) -> Result<LeaseClock> {
        let reign = view.get(Space::Sm, K_REIGN)?;
        let reign = reign.and_then(|b| <[u8; 16]>::try_from(b.as_slice()).ok());
        Ok(LeaseClock {
            offset: offset(view)?,
            reign: reign.map(u128::from_be_bytes),
        })
    }
}

/// A lease as stored: its time to live and its end in lease time (0: revoked).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct LeaseRec {
    pub(super) ttl_ms: u64,
    pub(super) end: u64,
}

fn lease_key(id: u64) -> [u8; 9] {
    let mut k = [LEASE_PREFIX; 9];
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

fn index_key(end: u64, id: u64) -> [u8; 17] {
    let mut k = [LEASE_INDEX_PREFIX; 17];
    k[1..9].copy_from_slice(&end.to_be_bytes());
    k[9..].copy_from_slice(&id.to_be_bytes());
    k
}

pub(super) fn attached_key(id: u64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + key.len());
    k.push(LEASE_KEYS_PREFIX);
    k.extend_from_slice(&id.to_be_bytes());
    k.extend_from_slice(key);
    k
}

fn encode(r: &LeaseRec) -> Vec<u8> {
    [r.ttl_ms.to_be_bytes(), r.end.to_be_bytes()].concat()
}

fn decode(b: &[u8]) -> Result<LeaseRec> {
    if b.len() != 16 {
        return Err(Error::Storage("corrupt lease record".into()));
    }
    Ok(LeaseRec {
        ttl_ms: read_u64(&b[..8])?,
        end: read_u64(&b[8..])?,
    })
}

/// The lease `id` as `view` holds it.
pub(super) fn stored(view: &dyn ReadView, id: u64) -> Result<Option<LeaseRec>> {
    view.get(Space::Sm, &lease_key(id))?
        .map(|b| decode(&b))
        .transpose()
}

/// The lease offset as `view` holds it.
pub(super) fn offset(view: &dyn ReadView) -> Result<u64> {
    read_counter(view.get(Space::Sm, K_LEASE_OFFSET)?)
}

/// When the lease `id` ends in log time as `view` holds it (0: it does not exist).
pub(super) fn end_in_log_time(view: &dyn ReadView, id: u64) -> Result<u64> {
    Ok(match stored(view, id)? {
        Some(r) if r.end > 0 => r.end.saturating_add(offset(view)?),
        _ => 0,
    })
}

/// The earliest end of a lease in log time, if any lease exists.
pub(super) fn first_end(view: &dyn ReadView) -> Result<Option<u64>> {
    let mut first = None;
    view.scan_from(Space::Sm, &[LEASE_INDEX_PREFIX], &mut |k, _| {
        if k.len() == 17 && k[0] == LEASE_INDEX_PREFIX {
            first = Some(read_u64(&k[1..9])?);
        }
        Ok(false)
    })?;
    match first {
        Some(end) => Ok(Some(end.saturating_add(offset(view)?))),
        None => Ok(None),
    }
}

/// A lease as a reader sees it: what it was granted, when it ends, and (some of) its keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseStatus {
    pub info: LeaseInfo,
    /// Keys attached to it, in key order, at most the number asked for.
    pub keys: Vec<Vec<u8>>,
    /// More keys are attached than listed.
    pub more_keys: bool,
}

/// Reads the live lease `id` at log time `time` from `view`, with up to `max_keys` of its
/// keys.
pub(super) fn read(
    view: &dyn ReadView,
    id: u64,
    time: u64,
    max_keys: usize,
) -> Result<Option<LeaseStatus>> {
    let end = end_in_log_time(view, id)?;
    let Some(rec) = stored(view, id)? else {
        return Ok(None);
    };
    if end <= time {
        return Ok(None);
    }
    let (mut keys, mut more_keys) = (Vec::new(), false);
    let start = attached_key(id, b"");
    view.scan_from(Space::Sm, &start, &mut |k, _| {
        if !k.starts_with(&start) {
            return Ok(false);
        }
        let key = &k[9..];
        // The index may name keys a blind write detached since.
        let attached = match view.get(Space::Kv, key)? {
            Some(v) => super::decode_value(&v)?.lease == Some(id),
            None => false,
        };
        if attached {
            if keys.len() == max_keys {
                more_keys = true;
                return Ok(false);
            }
            keys.push(key.to_vec());
        }
        Ok(true)
    })?;
    Ok(Some(LeaseStatus {
        info: LeaseInfo {
            id,
            ttl_ms: rec.ttl_ms,
            deadline: end,
        },
        keys,
        more_keys,
    }))
}

/// The live leases at log time `time`, in id order from `from`, at most `limit`.
pub(super) fn list(
    view: &dyn ReadView,
    from: u64,
    time: u64,
    limit: usize,
) -> Result<(Vec<LeaseInfo>, bool)> {
    let offset = offset(view)?;
    let (mut out, mut more) = (Vec::new(), false);
    view.scan_from(Space::Sm, &lease_key(from), &mut |k, v| {
        if k.len() != 9 || k[0] != LEASE_PREFIX {
            return Ok(false);
        }
        let rec = decode(v)?;
        let end = rec.end.saturating_add(offset);
        if rec.end == 0 || end <= time {
            return Ok(true);
        }
        if out.len() == limit {
            more = true;
            return Ok(false);
        }
        out.push(LeaseInfo {
            id: read_u64(&k[1..])?,
            ttl_ms: rec.ttl_ms,
            deadline: end,
        });
        Ok(true)
    })?;
    Ok((out, more))
}

/// What an entry changed of the leases, staged like its key writes.
#[derive(Debug, Default)]
pub(super) struct LeaseChanges {
    /// Leases this entry wrote (`None`: deleted), with the record the store holds.
    pub(super) written: std::collections::HashMap<u64, (Option<LeaseRec>, Option<LeaseRec>)>,
    /// Lease time minus log time, as of this entry.
    pub(super) offset: u64,
    /// Whether a lease was revoked (the sweep must run this entry).
    pub(super) revoked: bool,
    /// The next id to pick, once read or changed.
    next_id: Option<u64>,
    /// Leases created minus leases deleted.
    count_delta: i64,
}

impl LeaseChanges {
    /// The changes of an entry at log time `time` whose stamp (if any) came from reign
    /// `reign`: a reign other than the last stamp's moves every lease's end later by the
    /// time since that stamp (`last_time`, the log's time before the entry).
    /// `clock` is the store's as of the last entry (updated here for this one); only a
    /// change of reign reads the store (whether any lease exists).
    pub(super) fn begin(
        backend: &super::backend::Backend,
        clock: &mut LeaseClock,
        stamp: Option<crate::machine::Stamp>,
        last_time: u64,
        writes: &mut Vec<RawWrite>,
    ) -> Result<LeaseChanges> {
        if let Some(stamp) = stamp.filter(|s| s.reign != 0 && clock.reign != Some(s.reign)) {
            if clock.reign.is_some() {
                let gap = stamp.time.saturating_sub(last_time);
                if gap > 0 && read_counter(backend.get(Space::Sm, K_LEASE_COUNT)?)? > 0 {
                    clock.offset = clock.offset.saturating_add(gap);
                    writes.push((
                        Space::Sm,
                        K_LEASE_OFFSET.to_vec(),
                        Some(u64_key(clock.offset).to_vec()),
                    ));
                }
            }
            clock.reign = Some(stamp.reign);
            writes.push((
                Space::Sm,
                K_REIGN.to_vec(),
                Some(stamp.reign.to_be_bytes().to_vec()),
            ));
        }
        Ok(LeaseChanges {
            offset: clock.offset,
            ..Default::default()
        })
    }

    /// Whether anything changed that the end-of-entry writes must record.
    pub(super) fn changed(&self) -> bool {
        !self.written.is_empty()
    }

    /// The writes of the leases this entry changed: records, the index by end, the
    /// count and the next id.
    pub(super) fn finish(self, view: &dyn ReadView, writes: &mut Vec<RawWrite>) -> Result<()> {
        if self.written.is_empty() && self.next_id.is_none() {
            return Ok(());
        }
        let mut ids: Vec<_> = self.written.into_iter().collect();
        ids.sort_unstable_by_key(|(id, _)| *id);
        for (id, (before, after)) in ids {
            if before == after {
                continue;
            }
            if let Some(b) = before {
                writes.push((Space::Sm, index_key(b.end, id).to_vec(), None));
            }
            match after {
                Some(a) => {
                    writes.push((Space::Sm, index_key(a.end, id).to_vec(), Some(vec![])));
                    writes.push((Space::Sm, lease_key(id).to_vec(), Some(encode(&a))));
                }
                None => writes.push((Space::Sm, lease_key(id).to_vec(), None)),
            }
        }
        if self.count_delta != 0 {
            let count = read_counter(view.get(Space::Sm, K_LEASE_COUNT)?)?;
            let count = count.saturating_add_signed(self.count_delta);
            writes.push((
                Space::Sm,
                K_LEASE_COUNT.to_vec(),
                Some(u64_key(count).to_vec()),
            ));
        }
        if let Some(next) = self.next_id {
            writes.push((
                Space::Sm,
                K_LEASE_NEXT.to_vec(),
                Some(u64_key(next).to_vec()),
            ));
        }
        Ok(())
    }
}

impl Overlay<'_> {
    /// Lease time at this entry.
    fn lease_time(&self) -> u64 {
        self.time.saturating_sub(self.leases.offset)
    }

    /// The lease as this entry sees it (ended or not).
    pub(super) fn lease(&self, id: u64) -> Result<Option<LeaseRec>> {
        match self.leases.written.get(&id) {
            Some((_, after)) => Ok(*after),
            None => self.store.backend.view(|v| stored(v, id)),
        }
    }

    /// The lease if it is live at this entry.
    pub(super) fn live_lease(&self, id: u64) -> Result<Option<LeaseRec>> {
        let now = self.lease_time();
        Ok(self.lease(id)?.filter(|r| r.end > now))
    }

    /// When a key attached to lease `id` stops being visible, in log time (0: already).
    pub(super) fn lease_end(&self, id: u64) -> Result<u64> {
        Ok(match self.lease(id)? {
            Some(r) if r.end > 0 => r.end.saturating_add(self.leases.offset),
            _ => 0,
        })
    }

    fn put_lease(&mut self, id: u64, rec: Option<LeaseRec>) -> Result<()> {
        if !self.leases.written.contains_key(&id) {
            let before = self.store.backend.view(|v| stored(v, id))?;
            self.leases.written.insert(id, (before, before));
        }
        let slot = self.leases.written.get_mut(&id).expect("just inserted");
        match (slot.1.is_some(), rec.is_some()) {
            (false, true) => self.leases.count_delta += 1,
            (true, false) => self.leases.count_delta -= 1,
            _ => {}
        }
        slot.1 = rec;
        Ok(())
    }

    fn lease_count(&self) -> Result<u64> {
        let stored = self
            .store
            .backend
            .view(|v| read_counter(v.get(Space::Sm, K_LEASE_COUNT)?))?;
        Ok(stored.saturating_add_signed(self.leases.count_delta))
    }

    fn info(&self, id: u64, r: LeaseRec) -> LeaseInfo {
        LeaseInfo {
            id,
            ttl_ms: r.ttl_ms,
            deadline: r.end.saturating_add(self.leases.offset),
        }
    }

    /// Grants lease `id` (0: the next free id) for `ttl_ms`.
    pub(super) fn lease_grant(
        &mut self,
        id: u64,
        ttl_ms: u64,
    ) -> Result<std::result::Result<LeaseInfo, String>> {
        if self.lease_count()? >= MAX_LEASES {
            return Ok(Err(format!(
                "this cluster holds {MAX_LEASES} leases, the most it keeps; revoke some or \
                 let them expire"
            )));
        }
        let id = if id == 0 {
            let mut next = match self.leases.next_id {
                Some(n) => n,
                None => (self.store.backend)
                    .view(|v| read_counter(v.get(Space::Sm, K_LEASE_NEXT)?))?
                    .max(1),
            };
            while self.lease(next)?.is_some() {
                next += 1;
            }
            self.leases.next_id = Some(next + 1);
            next
        } else {
            if self.lease(id)?.is_some() {
                return Ok(Err(format!("lease {id} already exists")));
            }
            id
        };
        let rec = LeaseRec {
            ttl_ms,
            end: self.lease_time().saturating_add(ttl_ms),
        };
        self.put_lease(id, Some(rec))?;
        Ok(Ok(self.info(id, rec)))
    }

    /// Renews lease `id` for its whole time to live, if it is live.
    pub(super) fn lease_keep_alive(&mut self, id: u64) -> Result<Option<LeaseInfo>> {
        let Some(mut rec) = self.live_lease(id)? else {
            return Ok(None);
        };
        rec.end = self.lease_time().saturating_add(rec.ttl_ms);
        self.put_lease(id, Some(rec))?;
        Ok(Some(self.info(id, rec)))
    }

    /// Ends lease `id` now; its keys go with this entry's sweep (and the next ones').
    pub(super) fn lease_revoke(&mut self, id: u64) -> Result<bool> {
        let Some(mut rec) = self.live_lease(id)? else {
            return Ok(false);
        };
        rec.end = 0;
        self.put_lease(id, Some(rec))?;
        self.leases.revoked = true;
        Ok(true)
    }

    /// Deletes the keys of leases that ended (at most [`EXPIRE_SWEEP_MAX`] in all), and
    /// each lease with no key left; drops attachment keys that no longer attach.
    pub(super) fn sweep_leases(&mut self, index_writes: &mut Vec<RawWrite>) -> Result<()> {
        let now = self.lease_time();
        // Ended leases: from the store's index, and those this entry changed; in the
        // order of their ends as this entry sees them, then of ids.
        let mut candidates: Vec<u64> = Vec::new();
        self.store.backend.view(|v| {
            v.scan_from(Space::Sm, &[LEASE_INDEX_PREFIX], &mut |k, _| {
                if k.len() != 17 || k[0] != LEASE_INDEX_PREFIX {
                    return Ok(false);
                }
                let end = read_u64(&k[1..9])?;
                if end > now || candidates.len() >= EXPIRE_SWEEP_MAX {
                    return Ok(false);
                }
                candidates.push(read_u64(&k[9..])?);
                Ok(true)
            })
        })?;
        candidates.extend(self.leases.written.keys());
        let mut due: Vec<(u64, u64)> = Vec::new();
        for id in candidates {
            if let Some(rec) = self.lease(id)?.filter(|r| r.end <= now) {
                due.push((rec.end, id));
            }
        }
        due.sort_unstable();
        due.dedup();
        let mut budget = EXPIRE_SWEEP_MAX;
        for (_, id) in due {
            let Some(rec) = self.lease(id)?.filter(|r| r.end <= now) else {
                continue;
            };
            let kind = match rec.end {
                0 => super::ChangeKind::Delete,
                _ => super::ChangeKind::Expire,
            };
            // The attached keys: as stored, and as this entry attached them.
            let start = attached_key(id, b"");
            let mut keys: Vec<Vec<u8>> = Vec::new();
            let mut all = true;
            self.store.backend.view(|v| {
                v.scan_from(Space::Sm, &start, &mut |k, _| {
                    if !k.starts_with(&start) {
                        return Ok(false);
                    }
                    if keys.len() >= budget {
                        all = false;
                        return Ok(false);
                    }
                    keys.push(k[9..].to_vec());
                    Ok(true)
                })
            })?;
            let mine = (self.keys.iter())
                .filter(|(_, s)| s.dirty && s.lease == Some(id) && s.value.is_some())
                .map(|(k, _)| k.clone());
            let mut keys: Vec<Vec<u8>> = keys.into_iter().chain(mine).collect();
            keys.sort_unstable();
            keys.dedup();
            for key in keys {
                budget = budget.saturating_sub(1);
                let slot = self.load(&key)?;
                if slot.value.is_some() && slot.lease == Some(id) {
                    // Its attachment key goes with the write (the slot's stored lease).
                    self.set(&key, None)?;
                    if let Some(c) = self.changes.last_mut() {
                        c.kind = kind;
                    }
                } else {
                    index_writes.push((Space::Sm, attached_key(id, &key), None));
                }
            }
            if !all {
                break;
            }
            self.put_lease(id, None)?;
            if budget == 0 {
                break;
            }
        }
        Ok(())
    }
}
