//! The watch history: every change the store applied, by revision, kept for a bounded
//! window so that a watcher can start at, or resume from, any revision still in it.
//!
//! Each change an entry makes (a put, a delete, an expiry; a transaction's and a
//! multi-put's every key) is one record in `Space::Sm`: `w` + revision (8 bytes,
//! big-endian) + key → kind (1 byte) + the value written (puts only). Records are written
//! in the batch of the entry that made the change, so the history is exactly as durable
//! and as atomic as the data; it lives in the state machine's space, so it travels with a
//! state transfer like the rest of the metadata.
//!
//! A watcher reads records from a revision on ([`KvStore::history`]), filtered by key or
//! prefix, and waits for the next applied revision ([`KvStore::subscribe`]). The server
//! holds no buffer per watcher: a slow watcher simply reads further behind, and once the
//! window passed its position it gets [`Error::Compacted`] naming the oldest revision
//! still held.
//!
//! # Invariants
//!
//! - The history holds every change of every revision from `hist-from` (the oldest
//!   revision held) to the store's revision, and nothing of a revision below it: pruning
//!   removes whole revisions, oldest first, and then advances `hist-from` in the same
//!   batch. A read below `hist-from` is refused, never answered with a gap.
//! - A read returns whole revisions only (all of a revision's changes that match, or none
//!   of them), so resuming from the revision after the last one seen neither skips nor
//!   repeats a change.
//! - The window is bounded by revisions and by bytes ([`HistoryLimits`]); an entry prunes
//!   at most a bounded number of records beyond those of its own revisions, so a lowered
//!   limit is reached over a few entries instead of by one long write. Pruning depends on
//!   the node's limits, so replicas with different limits hold different windows: the
//!   history is never part of what an answer to a write depends on.

use super::backend::{Backend, RawWrite, ReadView, Space};
use super::read_counter;
use crate::command::ScanRange;
use crate::error::{Error, Result};
use crate::storage::db::{read_u64, u64_key};

/// Prefix of history records in `Space::Sm`.
const HISTORY_PREFIX: u8 = b'w';
/// The oldest revision the history holds (absent: none recorded yet, see
/// [`Window::open`]).
pub(super) const K_HISTORY_FROM: &[u8] = b"hist-from";
/// The bytes the history's records take (keys and values).
const K_HISTORY_BYTES: &[u8] = b"hist-bytes";

/// The most records one history read looks at (matching or not).
pub(super) const MAX_READ_STEPS: usize = 10_000;

/// A change an entry made, before it is recorded.
pub(super) struct Pending {
    pub(super) revision: u64,
    pub(super) kind: ChangeKind,
    pub(super) key: Vec<u8>,
    pub(super) value: Vec<u8>,
}

/// Records an entry may prune beyond as many as it wrote (a lowered limit is reached
/// over several entries).
const PRUNE_EXTRA: usize = 1000;

/// How much history a node keeps: the most revisions and the most bytes of records. The
/// window is whichever is smaller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryLimits {
    pub revisions: u64,
    pub bytes: u64,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits {
            revisions: 100_000,
            bytes: 64 * 1024 * 1024,
        }
    }
}

/// What a change was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ChangeKind {
    /// The key was written (created or overwritten).
    Put,
    /// The key was deleted by a client.
    Delete,
    /// The key's deadline passed and the store deleted it.
    Expire,
}

impl ChangeKind {
    fn code(self) -> u8 {
        match self {
            ChangeKind::Put => 0,
            ChangeKind::Delete => 1,
            ChangeKind::Expire => 2,
        }
    }

    fn from_code(c: u8) -> Result<ChangeKind> {
        Ok(match c {
            0 => ChangeKind::Put,
            1 => ChangeKind::Delete,
            2 => ChangeKind::Expire,
            _ => return Err(Error::Storage(format!("corrupt history record (kind {c})"))),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Put => "put",
            ChangeKind::Delete => "delete",
            ChangeKind::Expire => "expire",
        }
    }
}

/// One change of one key, as a watcher receives it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Change {
    /// The revision that made it (the key's version, for a put).
    pub revision: u64,
    pub kind: ChangeKind,
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The value written (empty for a delete or an expiry).
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

/// Changes read from the history: whole revisions, in revision order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryRead {
    pub changes: Vec<Change>,
    /// The next revision to read from: every revision before it was looked at.
    pub next: u64,
    /// The store's revision when read.
    pub revision: u64,
}

/// What a key-range filter is: the key itself, or every key in a range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchFilter {
    Key(Vec<u8>),
    Range(ScanRange),
}

impl WatchFilter {
    pub fn matches(&self, key: &[u8]) -> bool {
        match self {
            WatchFilter::Key(k) => k == key,
            WatchFilter::Range(r) => key >= r.start() && r.contains_from_start(key),
        }
    }
}

fn record_key(revision: u64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + key.len());
    k.push(HISTORY_PREFIX);
    k.extend_from_slice(&revision.to_be_bytes());
    k.extend_from_slice(key);
    k
}

fn record_value(kind: ChangeKind, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + value.len());
    v.push(kind.code());
    v.extend_from_slice(value);
    v
}

fn decode(k: &[u8], v: &[u8]) -> Result<Change> {
    if k.len() < 9 || v.is_empty() {
        return Err(Error::Storage("corrupt history record".into()));
    }
    Ok(Change {
        revision: read_u64(&k[1..9])?,
        kind: ChangeKind::from_code(v[0])?,
        key: k[9..].to_vec(),
        value: v[1..].to_vec(),
    })
}

/// The bytes a record takes, as the byte limit counts them.
fn record_bytes(key_len: usize, value_len: usize) -> u64 {
    (9 + key_len + 1 + value_len) as u64
}

/// The history's bounds as the store keeps them: the oldest revision held and the bytes
/// held. Owned by the applier.
#[derive(Clone, Copy, Debug)]
pub(super) struct Window {
    pub(super) from: u64,
    bytes: u64,
    /// Whether `from` is in the store (a store from before watches has no history: its
    /// window starts after its revision, and the first entry records that).
    stored: bool,
    pub(super) limits: HistoryLimits,
}

impl Window {
    /// The window as `view` holds it, for a store at `revision`.
    pub(super) fn open(
        view: &dyn ReadView,
        revision: u64,
        limits: HistoryLimits,
    ) -> Result<Window> {
        let from = view.get(Space::Sm, K_HISTORY_FROM)?;
        Ok(Window {
            stored: from.is_some(),
            from: match from {
                Some(f) => read_u64(&f)?,
                None => revision + 1,
            },
            bytes: read_counter(view.get(Space::Sm, K_HISTORY_BYTES)?)?,
            limits,
        })
    }

    /// Adds the records of `changes` (made by one entry, which takes the store to
    /// `revision`) to `writes`, and prunes the oldest revisions past the limits.
    pub(super) fn record(
        &mut self,
        backend: &Backend,
        changes: &[Pending],
        revision: u64,
        writes: &mut Vec<RawWrite>,
    ) -> Result<()> {
        let before = (self.from, self.bytes, self.stored);
        for c in changes {
            self.bytes += record_bytes(c.key.len(), c.value.len());
            writes.push((
                Space::Sm,
                record_key(c.revision, &c.key),
                Some(record_value(c.kind, &c.value)),
            ));
        }
        if self.over(revision) {
            let budget = changes.len() + PRUNE_EXTRA;
            backend.view(|v| self.prune(v, revision, budget, writes))?;
        }
        self.stored = true;
        if before != (self.from, self.bytes, self.stored) {
            writes.push((
                Space::Sm,
                K_HISTORY_FROM.to_vec(),
                Some(u64_key(self.from).to_vec()),
            ));
            writes.push((
                Space::Sm,
                K_HISTORY_BYTES.to_vec(),
                Some(u64_key(self.bytes).to_vec()),
            ));
        }
        Ok(())
    }

    fn over(&self, revision: u64) -> bool {
        revision.saturating_sub(self.from) >= self.limits.revisions
            || self.bytes > self.limits.bytes
    }

    /// Deletes the oldest whole revisions while the window is over its limits, at most
    /// about `budget` records (a revision is never split).
    fn prune(
        &mut self,
        view: &dyn ReadView,
        revision: u64,
        budget: usize,
        writes: &mut Vec<RawWrite>,
    ) -> Result<()> {
        let mut deleted = 0;
        let mut window = *self;
        // The revision being deleted, and the one the scan stopped at (kept).
        let (mut deleting, mut kept) = (None, None);
        let start = record_key(self.from, b"");
        view.scan_from(Space::Sm, &start, &mut |k, v| {
            if k.first() != Some(&HISTORY_PREFIX) || k.len() < 9 {
                return Ok(false);
            }
            let rev = read_u64(&k[1..9])?;
            if deleting != Some(rev) {
                // Only between revisions: would the window starting here do?
                window.from = rev;
                if !window.over(revision) || deleted >= budget {
                    kept = Some(rev);
                    return Ok(false);
                }
                deleting = Some(rev);
            }
            window.bytes = window
                .bytes
                .saturating_sub(record_bytes(k.len() - 9, v.len() - 1));
            writes.push((Space::Sm, k.to_vec(), None));
            deleted += 1;
            Ok(true)
        })?;
        // Records of this entry are not in the view yet (they are newer than any read):
        // when the scan ran out, the window starts after the last revision deleted.
        window.from = match (kept, deleting) {
            (Some(rev), _) => rev,
            (None, Some(rev)) => rev + 1,
            (None, None) => self.from,
        };
        *self = window;
        Ok(())
    }
}

/// Reads the changes from revision `from` on that `filter` matches, whole revisions,
/// until about `max_changes` changes or `max_bytes` of values were read or `max_steps`
/// records were looked at. Refuses a `from` the history no longer holds.
pub(super) fn read(
    view: &dyn ReadView,
    from: u64,
    filter: &WatchFilter,
    max_changes: usize,
    max_bytes: usize,
    max_steps: usize,
) -> Result<HistoryRead> {
    let revision = read_counter(view.get(Space::Sm, super::K_REVISION)?)?;
    let oldest = match view.get(Space::Sm, K_HISTORY_FROM)? {
        Some(f) => read_u64(&f)?,
        // A store from before watches that applied nothing since: no history.
        None => revision + 1,
    };
    if from < oldest {
        return Err(Error::Compacted {
            requested: from,
            oldest,
        });
    }
    let mut changes: Vec<Change> = Vec::new();
    let (mut steps, mut bytes) = (0, 0);
    // The revision being read, and where its changes start in `changes`.
    let mut current: Option<(u64, usize)> = None;
    let mut next = revision + 1;
    view.scan_from(Space::Sm, &record_key(from, b""), &mut |k, v| {
        if k.first() != Some(&HISTORY_PREFIX) || k.len() < 9 {
            return Ok(false);
        }
        let rev = read_u64(&k[1..9])?;
        if current.is_none_or(|(r, _)| r != rev) {
            // A new revision begins: the ones before are whole.
            if changes.len() >= max_changes || bytes >= max_bytes || steps >= max_steps {
                next = rev;
                return Ok(false);
            }
            current = Some((rev, changes.len()));
        }
        steps += 1;
        if filter.matches(&k[9..]) {
            let c = decode(k, v)?;
            bytes += c.key.len() + c.value.len();
            changes.push(c);
        }
        Ok(true)
    })?;
    Ok(HistoryRead {
        changes,
        next: next.max(from),
        revision,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_filter_matches_only_inside_its_range() {
        let f = WatchFilter::Range(ScanRange::Range {
            from: b"b".to_vec(),
            to: Some(b"d".to_vec()),
        });
        assert!(!f.matches(b"a"));
        assert!(f.matches(b"b"));
        assert!(f.matches(b"c9"));
        assert!(!f.matches(b"d"));
        let p = WatchFilter::Range(ScanRange::Prefix(b"app/".to_vec()));
        assert!(p.matches(b"app/x"));
        assert!(!p.matches(b"apq"));
        assert!(WatchFilter::Key(b"k".to_vec()).matches(b"k"));
        assert!(!WatchFilter::Key(b"k".to_vec()).matches(b"k2"));
    }
}
