//! Tests of [`KvStore`] against a model: a `BTreeMap` of key → (value, version) with a
//! revision counter and client sessions.
//!
//! The property test applies random entries of 1–4 puts, deletes and compare-and-swaps
//! (value and version expectations) from three clients with increasing sequence numbers,
//! including retries of a client's last command (same result, no change) and older
//! sequence numbers (rejected, no change); interleaves point reads, prefix and range scans
//! with limits; and at random points closes the store and its RocksDB and reopens them
//! from the same directory. Entries also hold transactions: comparisons of values and
//! versions, then branches of reads, range reads, range deletes and the writes above,
//! which see the writes of earlier commands of the same entry. Entries carry clock
//! stamps that move the log's time forward, and writes set, keep, change and remove
//! deadlines (Redis' `SET … PX|KEEPTTL`, `EXPIRE … NX|XX|GT|LT`, `PERSIST`): the model
//! hides a key from its deadline on and deletes it at the end of the entry, in deadline
//! order, as the store's sweep does. After every step the store must equal the model.

use super::backend::Space;
use super::{KvStore, StateMachine};
use crate::command::{
    Compare, CompareOp, CompareTarget, Deadline, Expect, ExpireCond, Expiry, KeyValue, KvCommand,
    ScanRange, SetCond, Txn, TxnOp, TxnOpResult, Versioned, WriteOp, WriteResult,
};
use crate::storage::db::open_db;
use proptest::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The keys commands write (prefixes of each other, so prefix scans have work to do).
const KEYS: &[&[u8]] = &[b"a", b"ab", b"abc", b"b", b"ba", b"c"];
/// Keys that are read: the written ones and one never written.
const READ_KEYS: &[&[u8]] = &[b"a", b"ab", b"abc", b"b", b"ba", b"c", b"d"];
const VALUES: &[&[u8]] = &[b"", b"x", b"y", b"zz", b"7", b"-12"];
const CONDS: &[SetCond] = &[SetCond::Always, SetCond::IfAbsent, SetCond::IfPresent];
const PREFIXES: &[&[u8]] = &[b"", b"a", b"ab", b"b", b"c", b"d"];
const BOUNDS: &[&[u8]] = &[b"", b"a", b"aa", b"ab", b"abc", b"b", b"bb", b"c", b"d"];

/// What a compare-and-swap expects, resolved against the model when the command is built.
#[derive(Clone, Debug)]
enum ExpectSpec {
    CurrentValue,
    CurrentVersion,
    Value(usize),
    Version(u64),
}

#[derive(Clone, Debug)]
enum OpSpec {
    Put {
        key: usize,
        value: usize,
        return_prev: bool,
    },
    Delete {
        key: usize,
        return_prev: bool,
    },
    Cas {
        key: usize,
        expect: ExpectSpec,
        value: usize,
    },
    Set {
        key: usize,
        value: usize,
        cond: usize,
    },
    Incr {
        key: usize,
        delta: i64,
    },
    Append {
        key: usize,
        value: usize,
    },
    MultiPut(Vec<(usize, usize)>),
    /// `SET key value [NX|XX] PX delta` (`None`: `KEEPTTL`).
    SetEx {
        key: usize,
        value: usize,
        cond: usize,
        delta: Option<u64>,
    },
    /// `PEXPIRE key delta` (`None`: `PERSIST`), `delta` from the entry's time (may be
    /// in the past).
    Expire {
        key: usize,
        delta: Option<i64>,
        when: usize,
    },
    Txn {
        compare: Vec<(usize, usize, CmpSpec)>,
        success: Vec<TxnOpSpec>,
        failure: Vec<TxnOpSpec>,
    },
    /// A grant of lease `id` (0: the store picks) for `ttl` ms.
    LeaseGrant {
        id: u64,
        ttl: u64,
    },
    LeaseKeepAlive(u64),
    LeaseRevoke(u64),
    PutLeased {
        key: usize,
        value: usize,
        lease: u64,
    },
}

/// What a transaction's comparison compares with, resolved when the command is built.
#[derive(Clone, Debug)]
enum CmpSpec {
    Value(usize),
    Version(u64),
    CurrentVersion,
    Create(u64),
    /// The key's create revision as the model has it.
    CurrentCreate,
}

const CMP_OPS: &[CompareOp] = &[
    CompareOp::Equal,
    CompareOp::NotEqual,
    CompareOp::Less,
    CompareOp::Greater,
];

#[derive(Clone, Debug)]
enum TxnOpSpec {
    Get(usize),
    Range { prefix: usize, limit: u32 },
    DeleteRange { from: usize, to: Option<usize> },
    Write(OpSpec),
}

#[derive(Clone, Debug)]
enum CmdSpec {
    /// A new command: the client's last sequence number plus `gap`.
    Fresh { client: u64, gap: u64, op: OpSpec },
    /// The client's last applied command again: same client id, seq and operation.
    Retry { client: u64 },
    /// A sequence number `back` below the client's last one.
    Old { client: u64, back: u64, op: OpSpec },
}

const WHENS: &[ExpireCond] = &[
    ExpireCond::Always,
    ExpireCond::IfNone,
    ExpireCond::IfSome,
    ExpireCond::Later,
    ExpireCond::Earlier,
    ExpireCond::EarlierIfSome,
];

#[derive(Clone, Debug)]
enum Action {
    /// An entry: its commands, how far its clock stamp moves the log's time (0: no
    /// stamp), and the reign of the leader that stamped it.
    Entry(Vec<CmdSpec>, u64, u8),
    Get(usize),
    ScanPrefix {
        prefix: usize,
        limit: usize,
    },
    ScanRange {
        from: usize,
        to: Option<usize>,
        limit: usize,
    },
    Restart,
}

/// The reference: what the store must contain and answer.
#[derive(Default)]
struct Model {
    data: BTreeMap<Vec<u8>, (Vec<u8>, u64)>,
    /// Each present key's create revision.
    created: HashMap<Vec<u8>, u64>,
    revision: u64,
    applied: u64,
    /// The log's time, and each key's deadline.
    time: u64,
    deadlines: HashMap<Vec<u8>, u64>,
    /// The store's deadline index as of the last entry: (deadline, key).
    indexed: std::collections::BTreeSet<(u64, Vec<u8>)>,
    /// Client → its last applied command and that command's result.
    sessions: HashMap<u64, (KvCommand, WriteResult)>,
    /// Deadlines written by the entry being applied.
    written: Vec<(u64, Vec<u8>)>,
    /// Every change, in order: what the watch history must hold.
    changes: Vec<crate::kv::Change>,
    /// Leases: id → (time to live, end in lease time; 0: revoked).
    leases: BTreeMap<u64, (u64, u64)>,
    /// The lease each attached key is attached to.
    lease_of: HashMap<Vec<u8>, u64>,
    /// Log time minus lease time; the reign of the last stamp; the next id picked.
    offset: u64,
    reign: Option<u128>,
    next_lease: u64,
}

impl Model {
    fn lease_time(&self) -> u64 {
        self.time.saturating_sub(self.offset)
    }

    fn live_lease(&self, id: u64) -> Option<(u64, u64)> {
        let lt = self.lease_time();
        self.leases.get(&id).copied().filter(|(_, end)| *end > lt)
    }

    fn lease_info(&self, id: u64) -> crate::command::LeaseInfo {
        let (ttl_ms, end) = self.leases[&id];
        crate::command::LeaseInfo {
            id,
            ttl_ms,
            deadline: end + self.offset,
        }
    }

    /// The start of an entry stamped at `stamp` by reign `reign`: another reign than the
    /// last stamp's does not count the time since it against leases.
    fn begin_entry(&mut self, stamp: Option<u64>, reign: u128) {
        if let Some(t) = stamp {
            if self.reign != Some(reign) {
                if self.reign.is_some() && !self.leases.is_empty() {
                    self.offset += t.saturating_sub(self.time);
                }
                self.reign = Some(reign);
            }
            self.time = self.time.max(t);
        }
    }

    fn current(&self, key: &[u8]) -> Option<Versioned> {
        if self.deadlines.get(key).is_some_and(|d| *d <= self.time) {
            return None;
        }
        if let Some(id) = self.lease_of.get(key) {
            self.live_lease(*id)?;
        }
        self.data.get(key).map(|(value, version)| Versioned {
            value: value.clone(),
            version: *version,
        })
    }

    /// The create revision of a live key; 0: absent.
    fn created(&self, key: &[u8]) -> u64 {
        self.current(key).map_or(0, |_| self.created[key])
    }

    /// The deadline of a live key.
    fn deadline(&self, key: &[u8]) -> Option<u64> {
        self.current(key)?;
        self.deadlines.get(key).copied()
    }

    fn set_until(&mut self, key: &[u8], value: Option<Vec<u8>>, deadline: Option<u64>) -> u64 {
        let version = self.set(key, value.clone());
        if let (Some(d), Some(_)) = (deadline, value) {
            self.deadlines.insert(key.to_vec(), d);
            self.written.push((d, key.to_vec()));
        }
        version
    }

    /// The end of an entry: the store's sweep (keys whose indexed deadline passed, in
    /// deadline order, each deleted under a revision), then the new index keys.
    fn end_entry(&mut self) {
        let due: Vec<(u64, Vec<u8>)> = (self.indexed.iter())
            .take_while(|(d, _)| *d <= self.time)
            .cloned()
            .collect();
        for (d, k) in due {
            if self.data.contains_key(&k) && self.deadlines.get(&k) == Some(&d) {
                self.set(&k, None);
                if let Some(c) = self.changes.last_mut() {
                    c.kind = crate::kv::ChangeKind::Expire;
                }
            }
            self.indexed.remove(&(d, k));
        }
        // Then leases that ended, by end then id: their keys in key order, then the lease.
        let lt = self.lease_time();
        let mut due: Vec<(u64, u64)> = (self.leases.iter())
            .filter(|(_, (_, end))| *end <= lt)
            .map(|(id, (_, end))| (*end, *id))
            .collect();
        due.sort_unstable();
        for (end, id) in due {
            let kind = match end {
                0 => crate::kv::ChangeKind::Delete,
                _ => crate::kv::ChangeKind::Expire,
            };
            let mut keys: Vec<Vec<u8>> = (self.lease_of.iter())
                .filter(|(_, l)| **l == id)
                .map(|(k, _)| k.clone())
                .collect();
            keys.sort();
            for k in keys {
                self.set(&k, None);
                if let Some(c) = self.changes.last_mut() {
                    c.kind = kind;
                }
            }
            self.leases.remove(&id);
        }
        for w in std::mem::take(&mut self.written) {
            // Only a value still holding that deadline writes its index key.
            if self.deadlines.get(&w.1) == Some(&w.0) && self.data.contains_key(&w.1) {
                self.indexed.insert(w);
            }
        }
    }

    fn last_seq(&self, client: u64) -> u64 {
        self.sessions.get(&client).map_or(0, |(c, _)| c.seq)
    }

    fn make_op(&self, op: &OpSpec) -> WriteOp {
        match op {
            OpSpec::Put {
                key,
                value,
                return_prev,
            } => WriteOp::Put {
                key: KEYS[*key].to_vec(),
                value: VALUES[*value].to_vec(),
                return_prev: *return_prev,
            },
            OpSpec::Delete { key, return_prev } => WriteOp::Delete {
                key: KEYS[*key].to_vec(),
                return_prev: *return_prev,
            },
            OpSpec::Cas { key, expect, value } => {
                let cur = self.current(KEYS[*key]);
                let expect = match expect {
                    ExpectSpec::CurrentValue => {
                        Expect::Value(cur.map_or_else(Vec::new, |c| c.value))
                    }
                    ExpectSpec::CurrentVersion => Expect::Version(cur.map_or(0, |c| c.version)),
                    ExpectSpec::Value(v) => Expect::Value(VALUES[*v].to_vec()),
                    ExpectSpec::Version(v) => Expect::Version(*v),
                };
                WriteOp::Cas {
                    key: KEYS[*key].to_vec(),
                    expect,
                    new_value: VALUES[*value].to_vec(),
                }
            }
            OpSpec::Set { key, value, cond } => WriteOp::Set {
                key: KEYS[*key].to_vec(),
                value: VALUES[*value].to_vec(),
                cond: CONDS[*cond],
            },
            OpSpec::Incr { key, delta } => WriteOp::Incr {
                key: KEYS[*key].to_vec(),
                delta: *delta,
            },
            OpSpec::Append { key, value } => WriteOp::AppendUpTo {
                key: KEYS[*key].to_vec(),
                suffix: VALUES[*value].to_vec(),
                max_len: 1 << 20,
            },
            OpSpec::MultiPut(pairs) => WriteOp::MultiPut {
                pairs: pairs
                    .iter()
                    .map(|(k, v)| (KEYS[*k].to_vec(), VALUES[*v].to_vec()))
                    .collect(),
            },
            OpSpec::SetEx {
                key,
                value,
                cond,
                delta,
            } => WriteOp::SetExpiring {
                key: KEYS[*key].to_vec(),
                value: VALUES[*value].to_vec(),
                cond: CONDS[*cond],
                expiry: match delta {
                    // Relative and absolute deadlines, the same time.
                    Some(d) if d % 2 == 0 => Expiry::Set(Deadline::In(*d)),
                    Some(d) => Expiry::Set(Deadline::At(self.time + d)),
                    None => Expiry::Keep,
                },
            },
            OpSpec::Expire { key, delta, when } => WriteOp::Expire {
                key: KEYS[*key].to_vec(),
                deadline: delta.map(|d| match d {
                    0.. if d % 2 == 0 => Deadline::In(d as u64),
                    _ => Deadline::At(self.time.saturating_add_signed(d)),
                }),
                when: WHENS[*when],
            },
            OpSpec::LeaseGrant { id, ttl } => WriteOp::LeaseGrant {
                id: *id,
                ttl_ms: *ttl,
            },
            OpSpec::LeaseKeepAlive(id) => WriteOp::LeaseKeepAlive { id: *id },
            OpSpec::LeaseRevoke(id) => WriteOp::LeaseRevoke { id: *id },
            OpSpec::PutLeased { key, value, lease } => WriteOp::PutLeased {
                key: KEYS[*key].to_vec(),
                value: VALUES[*value].to_vec(),
                lease: *lease,
                return_prev: *value % 2 == 0,
            },
            OpSpec::Txn {
                compare,
                success,
                failure,
            } => {
                let compare = (compare.iter())
                    .map(|(key, op, target)| {
                        let key = READ_KEYS[*key].to_vec();
                        let target = match target {
                            CmpSpec::Value(v) => CompareTarget::Value(VALUES[*v].to_vec()),
                            CmpSpec::Version(v) => CompareTarget::Version(*v),
                            CmpSpec::CurrentVersion => {
                                CompareTarget::Version(self.current(&key).map_or(0, |c| c.version))
                            }
                            CmpSpec::Create(v) => CompareTarget::Create(*v),
                            CmpSpec::CurrentCreate => CompareTarget::Create(self.created(&key)),
                        };
                        Compare {
                            key,
                            op: CMP_OPS[*op],
                            target,
                        }
                    })
                    .collect();
                let ops = |specs: &[TxnOpSpec]| {
                    (specs.iter())
                        .map(|o| match o {
                            TxnOpSpec::Get(k) => TxnOp::Get {
                                key: READ_KEYS[*k].to_vec(),
                            },
                            TxnOpSpec::Range { prefix, limit } => TxnOp::Range {
                                range: ScanRange::Prefix(PREFIXES[*prefix].to_vec()),
                                limit: *limit,
                            },
                            TxnOpSpec::DeleteRange { from, to } => TxnOp::DeleteRange {
                                range: ScanRange::Range {
                                    from: BOUNDS[*from].to_vec(),
                                    to: to
                                        .map(|t| BOUNDS[t].to_vec())
                                        .filter(|t| t >= &BOUNDS[*from].to_vec()),
                                },
                            },
                            TxnOpSpec::Write(w) => TxnOp::Write(self.make_op(w)),
                        })
                        .collect()
                };
                WriteOp::Txn(Txn {
                    compare,
                    success: ops(success),
                    failure: ops(failure),
                })
            }
        }
    }

    /// The concrete command for `spec`, or `None` when the client's history does not allow
    /// it (a retry or an older seq before the client wrote anything).
    fn make_command(&self, spec: &CmdSpec) -> Option<KvCommand> {
        match spec {
            CmdSpec::Fresh { client, gap, op } => Some(KvCommand {
                client_id: *client,
                seq: self.last_seq(*client) + gap,
                op: self.make_op(op),
                user: None,
            }),
            CmdSpec::Retry { client } => self.sessions.get(client).map(|(c, _)| c.clone()),
            CmdSpec::Old { client, back, op } => {
                let last = self.last_seq(*client);
                (last > *back).then(|| KvCommand {
                    client_id: *client,
                    seq: last - back,
                    op: self.make_op(op),
                    user: None,
                })
            }
        }
    }

    fn set(&mut self, key: &[u8], value: Option<Vec<u8>>) -> u64 {
        // A value over a live one keeps its create revision; any other starts one.
        let created = match self.current(key) {
            Some(_) => self.created[key],
            None => self.revision + 1,
        };
        match value {
            Some(_) => self.created.insert(key.to_vec(), created),
            None => self.created.remove(key),
        };
        self.revision += 1;
        self.deadlines.remove(key);
        self.lease_of.remove(key);
        self.changes.push(crate::kv::Change {
            revision: self.revision,
            kind: match value {
                Some(_) => crate::kv::ChangeKind::Put,
                None => crate::kv::ChangeKind::Delete,
            },
            key: key.to_vec(),
            value: value.clone().unwrap_or_default(),
        });
        match value {
            Some(v) => self.data.insert(key.to_vec(), (v, self.revision)),
            None => self.data.remove(key),
        };
        self.revision
    }

    fn execute(&mut self, op: &WriteOp) -> WriteResult {
        match op {
            WriteOp::Put {
                key,
                value,
                return_prev,
            } => {
                let prev = self.current(key).filter(|_| *return_prev);
                let version = self.set(key, Some(value.clone()));
                WriteResult::Put { version, prev }
            }
            WriteOp::Delete { key, return_prev } => {
                let cur = self.current(key);
                let deleted = cur.is_some();
                if deleted {
                    self.set(key, None);
                }
                WriteResult::Delete {
                    deleted,
                    prev: cur.filter(|_| *return_prev),
                }
            }
            WriteOp::Cas {
                key,
                expect,
                new_value,
            } => {
                let cur = self.current(key);
                let matches = match (expect, &cur) {
                    (Expect::Value(v), Some(c)) => c.value == *v,
                    (Expect::Value(_), None) => false,
                    (Expect::Version(v), c) => c.as_ref().map_or(0, |c| c.version) == *v,
                };
                if matches {
                    WriteResult::Cas {
                        succeeded: true,
                        version: self.set(key, Some(new_value.clone())),
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
            WriteOp::Set { key, value, cond } => {
                let prev = self.current(key);
                let applied = match cond {
                    SetCond::Always => true,
                    SetCond::IfAbsent => prev.is_none(),
                    SetCond::IfPresent => prev.is_some(),
                };
                let version = if applied {
                    self.set(key, Some(value.clone()))
                } else {
                    prev.as_ref().map_or(0, |p| p.version)
                };
                WriteResult::Set {
                    applied,
                    version,
                    prev,
                }
            }
            WriteOp::Incr { key, delta } => {
                let cur = match self.current(key) {
                    None => Some(0i64),
                    Some(v) => String::from_utf8(v.value).ok().and_then(|s| s.parse().ok()),
                };
                match cur.and_then(|c: i64| c.checked_add(*delta)) {
                    Some(value) => {
                        let d = self.deadline(key);
                        WriteResult::Incr {
                            value,
                            version: self.set_until(key, Some(value.to_string().into_bytes()), d),
                        }
                    }
                    None => {
                        WriteResult::Rejected("value is not an integer or out of range".to_string())
                    }
                }
            }
            WriteOp::AppendUpTo { key, suffix, .. } | WriteOp::Append { key, suffix } => {
                let mut v = self.current(key).map(|c| c.value).unwrap_or_default();
                v.extend_from_slice(suffix);
                let len = v.len() as u64;
                let d = self.deadline(key);
                WriteResult::Append {
                    len,
                    version: self.set_until(key, Some(v), d),
                }
            }
            WriteOp::MultiPut { pairs } => {
                self.revision += 1;
                for (k, v) in pairs {
                    if self.current(k).is_none() {
                        self.created.insert(k.clone(), self.revision);
                    }
                    self.data.insert(k.clone(), (v.clone(), self.revision));
                    self.deadlines.remove(k);
                    self.lease_of.remove(k);
                    self.changes.push(crate::kv::Change {
                        revision: self.revision,
                        kind: crate::kv::ChangeKind::Put,
                        key: k.clone(),
                        value: v.clone(),
                    });
                }
                WriteResult::MultiPut {
                    version: self.revision,
                }
            }
            WriteOp::SetExpiring {
                key,
                value,
                cond,
                expiry,
            } => {
                let prev = self.current(key);
                let applied = match cond {
                    SetCond::Always => true,
                    SetCond::IfAbsent => prev.is_none(),
                    SetCond::IfPresent => prev.is_some(),
                };
                let version = if applied {
                    let d = match expiry {
                        Expiry::Keep => self.deadline(key),
                        Expiry::Set(d) => Some(d.resolve(self.time)),
                    };
                    self.set_until(key, Some(value.clone()), d)
                } else {
                    prev.as_ref().map_or(0, |p| p.version)
                };
                WriteResult::Set {
                    applied,
                    version,
                    prev,
                }
            }
            WriteOp::Expire {
                key,
                deadline,
                when,
            } => {
                let Some(cur) = self.current(key) else {
                    return WriteResult::Expire {
                        applied: false,
                        version: 0,
                    };
                };
                let now = self.deadline(key);
                let deadline = &deadline.map(|d| d.resolve(self.time));
                // Never expiring is later than any deadline.
                let rank = |d: Option<u64>| d.unwrap_or(u64::MAX) as u128 + u128::from(d.is_none());
                let applied = match when {
                    ExpireCond::Always => true,
                    ExpireCond::IfNone => now.is_none(),
                    ExpireCond::IfSome => now.is_some(),
                    ExpireCond::Later => rank(*deadline) > rank(now),
                    ExpireCond::Earlier => rank(*deadline) < rank(now),
                    ExpireCond::EarlierIfSome => now.is_some() && rank(*deadline) < rank(now),
                };
                if !applied {
                    WriteResult::Expire {
                        applied,
                        version: cur.version,
                    }
                } else if deadline.is_some_and(|d| d <= self.time) {
                    self.set(key, None);
                    WriteResult::Expire {
                        applied,
                        version: 0,
                    }
                } else {
                    WriteResult::Expire {
                        applied,
                        version: self.set_until(key, Some(cur.value), *deadline),
                    }
                }
            }
            // The model covers the data space; users have their own test below.
            WriteOp::LeaseGrant { id, ttl_ms } => {
                let id = match *id {
                    0 => {
                        let mut next = self.next_lease.max(1);
                        while self.leases.contains_key(&next) {
                            next += 1;
                        }
                        self.next_lease = next + 1;
                        next
                    }
                    id if self.leases.contains_key(&id) => {
                        return WriteResult::Rejected(String::new())
                    }
                    id => id,
                };
                let end = self.lease_time() + ttl_ms;
                self.leases.insert(id, (*ttl_ms, end));
                WriteResult::Lease(Some(self.lease_info(id)))
            }
            WriteOp::LeaseKeepAlive { id } => match self.live_lease(*id) {
                Some((ttl, _)) => {
                    let end = self.lease_time() + ttl;
                    self.leases.insert(*id, (ttl, end));
                    WriteResult::Lease(Some(self.lease_info(*id)))
                }
                None => WriteResult::Lease(None),
            },
            WriteOp::LeaseRevoke { id } => {
                let existed = self.live_lease(*id).is_some();
                if let Some((ttl, _)) = self.live_lease(*id) {
                    self.leases.insert(*id, (ttl, 0));
                }
                WriteResult::LeaseRevoked { existed }
            }
            WriteOp::PutLeased {
                key,
                value,
                lease,
                return_prev,
            } => {
                if self.live_lease(*lease).is_none() {
                    return WriteResult::Rejected(format!(
                        "lease {lease} not found: never granted, expired or revoked; nothing \
                         was written"
                    ));
                }
                let prev = self.current(key).filter(|_| *return_prev);
                let version = self.set(key, Some(value.clone()));
                self.lease_of.insert(key.clone(), *lease);
                WriteResult::Put { version, prev }
            }
            WriteOp::SetUser { .. } | WriteOp::DeleteUser { .. } => {
                unreachable!("the property test generates no user commands")
            }
            WriteOp::Txn(t) => {
                let succeeded = t.compare.iter().all(|c| {
                    let cur = self.current(&c.key);
                    match (&c.target, cur) {
                        (CompareTarget::Value(_), None) => false,
                        (CompareTarget::Value(v), Some(cur)) => {
                            c.op.holds(cur.value.as_slice(), v.as_slice())
                        }
                        (CompareTarget::Version(v), cur) => {
                            c.op.holds(&cur.map_or(0, |c| c.version), v)
                        }
                        (CompareTarget::Create(v), _) => c.op.holds(&self.created(&c.key), v),
                    }
                });
                let ops = if succeeded { &t.success } else { &t.failure };
                // A put on a lease that is gone refuses the whole transaction (no lease
                // changes inside one, so checking first is the same as at its place).
                let dead_lease = ops.iter().any(|op| {
                    matches!(op, TxnOp::Write(WriteOp::PutLeased { lease, .. })
                        if self.live_lease(*lease).is_none())
                });
                if dead_lease {
                    return WriteResult::Rejected(String::new());
                }
                let results = (ops.iter())
                    .map(|op| match op {
                        TxnOp::Get { key } => TxnOpResult::Get(self.current(key)),
                        TxnOp::Range { range, limit } => {
                            let limit = if *limit == 0 { 1000 } else { *limit as usize };
                            let (items, more) = self.scan(range, limit);
                            TxnOpResult::Range { items, more }
                        }
                        TxnOp::DeleteRange { range } => {
                            let (rows, _) = self.scan(range, usize::MAX);
                            for row in &rows {
                                self.set(&row.key, None);
                            }
                            TxnOpResult::DeleteRange {
                                deleted: rows.len() as u64,
                            }
                        }
                        TxnOp::Write(w) => TxnOpResult::Write(self.execute(w)),
                    })
                    .collect();
                WriteResult::Txn { succeeded, results }
            }
        }
    }

    fn apply(&mut self, cmd: &KvCommand) -> WriteResult {
        match self.sessions.get(&cmd.client_id) {
            Some((last, res)) if last.seq == cmd.seq => res.clone(),
            Some((last, _)) if last.seq > cmd.seq => WriteResult::Superseded(String::new()),
            _ => {
                let res = self.execute(&cmd.op);
                self.sessions
                    .insert(cmd.client_id, (cmd.clone(), res.clone()));
                res
            }
        }
    }

    /// Rows of `range` in key order: at most `limit`, and whether more exist.
    fn scan(&self, range: &ScanRange, limit: usize) -> (Vec<KeyValue>, bool) {
        let all: Vec<KeyValue> = self
            .data
            .iter()
            .filter(|(k, _)| match range {
                ScanRange::Prefix(p) => k.starts_with(p),
                ScanRange::Range { from, to } => *k >= from && to.as_ref().is_none_or(|to| *k < to),
            })
            .filter(|(k, _)| self.current(k).is_some())
            .map(|(k, (v, version))| KeyValue {
                key: k.clone(),
                value: v.clone(),
                version: *version,
            })
            .collect();
        let more = all.len() > limit;
        (all.into_iter().take(limit).collect(), more)
    }
}

fn open_store(path: &Path) -> KvStore {
    KvStore::open(open_db(path).unwrap()).unwrap()
}

/// The whole store must equal the model.
fn check_state(kv: &KvStore, model: &Model, what: &str) -> Result<(), TestCaseError> {
    prop_assert_eq!(kv.applied_index(), model.applied, "applied index {}", what);
    prop_assert_eq!(kv.revision(), model.revision, "revision {}", what);
    let everything = ScanRange::Range {
        from: vec![],
        to: None,
    };
    let (rows, more, applied) = kv.scan(&everything, 1000).unwrap();
    prop_assert_eq!(rows, model.scan(&everything, 1000).0, "data {}", what);
    prop_assert!(!more);
    prop_assert_eq!(applied, model.applied);
    // The watch history holds every change, in order; a read from any revision returns
    // whole revisions from there on, and resuming after them misses nothing.
    // Within a revision (a multi-put) changes come in key order, a key once, as written
    // last.
    let mut expected: Vec<crate::kv::Change> = Vec::new();
    for c in &model.changes {
        match expected
            .iter()
            .rposition(|e| e.revision == c.revision && e.key == c.key)
        {
            Some(i) => expected[i] = c.clone(),
            None => expected.push(c.clone()),
        }
    }
    expected.sort_by(|a, b| (a.revision, &a.key).cmp(&(b.revision, &b.key)));
    let all = crate::kv::WatchFilter::Range(everything);
    let history = kv.history(1, &all, 100_000, usize::MAX).unwrap();
    prop_assert_eq!(&history.changes, &expected, "history {}", what);
    prop_assert_eq!(history.next, model.revision + 1);
    let mut resumed = Vec::new();
    let mut from = 1 + model.revision / 3;
    loop {
        let r = kv.history(from, &all, 2, usize::MAX).unwrap();
        resumed.extend(r.changes);
        if r.next > model.revision {
            break;
        }
        prop_assert!(r.next > from, "a read moves on");
        from = r.next;
    }
    let tail: Vec<_> = (expected.iter())
        .filter(|c| c.revision > model.revision / 3)
        .cloned()
        .collect();
    prop_assert_eq!(resumed, tail, "resumed history {}", what);
    // The live leases, and the keys attached to each.
    let live: Vec<_> = (model.leases.keys())
        .filter(|id| model.live_lease(**id).is_some())
        .map(|id| model.lease_info(*id))
        .collect();
    prop_assert_eq!(&kv.leases(0, 100).unwrap().0, &live, "leases {}", what);
    for info in &live {
        let mut keys: Vec<Vec<u8>> = (model.lease_of.iter())
            .filter(|(_, l)| **l == info.id)
            .map(|(k, _)| k.clone())
            .collect();
        keys.sort();
        let (status, _) = kv.lease(info.id, 100).unwrap();
        prop_assert_eq!(
            status.map(|s| s.keys),
            Some(keys),
            "lease {} {}",
            info.id,
            what
        );
    }
    Ok(())
}

fn run(actions: Vec<Action>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let mut kv = open_store(&path);
    let mut model = Model::default();
    for (step, action) in actions.into_iter().enumerate() {
        let what = format!("at step {step}: {action:?}");
        match &action {
            Action::Entry(specs, advance, reign) => {
                let stamp = (*advance > 0).then(|| model.time + advance);
                // Reign 0: a stamp written before reigns (never a leader change).
                let reign = u128::from(*reign);
                if reign != 0 {
                    model.begin_entry(stamp, reign);
                } else {
                    model.time = model.time.max(stamp.unwrap_or(0));
                }
                let mut cmds = Vec::new();
                let mut expected = Vec::new();
                for spec in specs {
                    if let Some(cmd) = model.make_command(spec) {
                        let remembered = match spec {
                            CmdSpec::Retry { client } => model.sessions.get(client).cloned(),
                            _ => None,
                        };
                        let res = model.apply(&cmd);
                        if let Some((_, original)) = remembered {
                            prop_assert_eq!(&res, &original, "a retry answers the original");
                        }
                        expected.push(res);
                        cmds.push(cmd);
                    }
                }
                let stamp = stamp.map(|time| crate::machine::Stamp { time, reign });
                let got = kv.apply_kv_stamped(model.applied, stamp, &cmds).unwrap();
                model.applied += 1;
                model.end_entry();
                prop_assert_eq!(got.len(), expected.len(), "{}", what);
                for ((got, want), cmd) in got.iter().zip(&expected).zip(&cmds) {
                    match want {
                        WriteResult::Superseded(_) => prop_assert!(
                            matches!(got, WriteResult::Superseded(_)),
                            "{:?} must be superseded, got {:?} ({})",
                            cmd,
                            got,
                            what
                        ),
                        WriteResult::Rejected(_) => prop_assert!(
                            matches!(got, WriteResult::Rejected(_)),
                            "{:?} must be rejected, got {:?} ({})",
                            cmd,
                            got,
                            what
                        ),
                        _ => prop_assert_eq!(got, want, "{:?} {}", cmd, what),
                    }
                }
                check_state(&kv, &model, &what)?;
            }
            Action::Get(k) => {
                let (timed, applied, _) = kv.get_timed(READ_KEYS[*k]).unwrap();
                let (v, created) = timed.map_or((None, 0), |t| (Some(t.value), t.created));
                prop_assert_eq!(v, model.current(READ_KEYS[*k]), "{}", what);
                prop_assert_eq!(created, model.created(READ_KEYS[*k]), "{}", what);
                prop_assert_eq!(applied, model.applied);
            }
            Action::ScanPrefix { prefix, limit } => {
                let range = ScanRange::Prefix(PREFIXES[*prefix].to_vec());
                let (rows, more, applied) = kv.scan(&range, *limit).unwrap();
                prop_assert_eq!((rows, more), model.scan(&range, *limit), "{}", what);
                prop_assert_eq!(applied, model.applied);
            }
            Action::ScanRange { from, to, limit } => {
                let range = ScanRange::Range {
                    from: BOUNDS[*from].to_vec(),
                    to: to.map(|t| BOUNDS[t].to_vec()),
                };
                let (rows, more, applied) = kv.scan(&range, *limit).unwrap();
                prop_assert_eq!((rows, more), model.scan(&range, *limit), "{}", what);
                prop_assert_eq!(applied, model.applied);
            }
            Action::Restart => {
                drop(kv); // the only handle on the DB: RocksDB closes
                kv = open_store(&path);
                check_state(&kv, &model, &what)?;
            }
        }
    }
    Ok(())
}

fn op_spec() -> impl Strategy<Value = OpSpec> {
    let cmp = prop_oneof![
        (0..VALUES.len()).prop_map(CmpSpec::Value),
        (0u64..6).prop_map(CmpSpec::Version),
        Just(CmpSpec::CurrentVersion),
        (0u64..6).prop_map(CmpSpec::Create),
        Just(CmpSpec::CurrentCreate),
    ];
    let txn_op = || {
        prop_oneof![
            2 => (0..READ_KEYS.len()).prop_map(TxnOpSpec::Get),
            1 => (0..PREFIXES.len(), 0u32..4)
                .prop_map(|(prefix, limit)| TxnOpSpec::Range { prefix, limit }),
            1 => (0..BOUNDS.len(), proptest::option::of(0..BOUNDS.len()))
                .prop_map(|(from, to)| TxnOpSpec::DeleteRange { from, to }),
            4 => write_op_spec().prop_map(TxnOpSpec::Write),
        ]
    };
    let lease_id = || prop_oneof![Just(0u64), 1u64..4];
    prop_oneof![
        8 => write_op_spec(),
        1 => (lease_id(), 1u64..6).prop_map(|(id, ttl)| OpSpec::LeaseGrant { id, ttl }),
        1 => (1u64..4).prop_map(OpSpec::LeaseKeepAlive),
        1 => (1u64..4).prop_map(OpSpec::LeaseRevoke),
        2 => (
            proptest::collection::vec((0..READ_KEYS.len(), 0..CMP_OPS.len(), cmp), 0..3),
            proptest::collection::vec(txn_op(), 0..4),
            proptest::collection::vec(txn_op(), 0..4),
        )
            .prop_map(|(compare, success, failure)| OpSpec::Txn { compare, success, failure }),
    ]
}

/// Every single write (no transaction).
fn write_op_spec() -> impl Strategy<Value = OpSpec> {
    let expect = prop_oneof![
        2 => Just(ExpectSpec::CurrentValue),
        2 => Just(ExpectSpec::CurrentVersion),
        1 => (0..VALUES.len()).prop_map(ExpectSpec::Value),
        1 => (0u64..6).prop_map(ExpectSpec::Version),
    ];
    prop_oneof![
        3 => (0..KEYS.len(), 0..VALUES.len(), any::<bool>())
            .prop_map(|(key, value, return_prev)| OpSpec::Put { key, value, return_prev }),
        2 => (0..KEYS.len(), any::<bool>())
            .prop_map(|(key, return_prev)| OpSpec::Delete { key, return_prev }),
        3 => (0..KEYS.len(), expect, 0..VALUES.len())
            .prop_map(|(key, expect, value)| OpSpec::Cas { key, expect, value }),
        2 => (0..KEYS.len(), 0..VALUES.len(), 0..CONDS.len())
            .prop_map(|(key, value, cond)| OpSpec::Set { key, value, cond }),
        2 => (0..KEYS.len(), prop_oneof![Just(i64::MAX), -5i64..5])
            .prop_map(|(key, delta)| OpSpec::Incr { key, delta }),
        1 => (0..KEYS.len(), 0..VALUES.len())
            .prop_map(|(key, value)| OpSpec::Append { key, value }),
        1 => proptest::collection::vec((0..KEYS.len(), 0..VALUES.len()), 1..4)
            .prop_map(OpSpec::MultiPut),
        2 => (0..KEYS.len(), 0..VALUES.len(), 0..CONDS.len(), proptest::option::of(1u64..6))
            .prop_map(|(key, value, cond, delta)| OpSpec::SetEx { key, value, cond, delta }),
        2 => (0..KEYS.len(), proptest::option::of(-1i64..6), 0..WHENS.len())
            .prop_map(|(key, delta, when)| OpSpec::Expire { key, delta, when }),
        2 => (0..KEYS.len(), 0..VALUES.len(), 1u64..4)
            .prop_map(|(key, value, lease)| OpSpec::PutLeased { key, value, lease }),
    ]
}

fn cmd_spec() -> impl Strategy<Value = CmdSpec> {
    prop_oneof![
        6 => (1u64..=3, 1u64..=3, op_spec())
            .prop_map(|(client, gap, op)| CmdSpec::Fresh { client, gap, op }),
        2 => (1u64..=3).prop_map(|client| CmdSpec::Retry { client }),
        1 => (1u64..=3, 1u64..=3, op_spec())
            .prop_map(|(client, back, op)| CmdSpec::Old { client, back, op }),
    ]
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        10 => (
            proptest::collection::vec(cmd_spec(), 1..=4),
            prop_oneof![Just(0u64), 1u64..4],
            prop_oneof![4 => Just(1u8), 1 => 0u8..3],
        )
            .prop_map(|(specs, advance, reign)| Action::Entry(specs, advance, reign)),
        2 => (0..READ_KEYS.len()).prop_map(Action::Get),
        2 => (0..PREFIXES.len(), 0usize..5)
            .prop_map(|(prefix, limit)| Action::ScanPrefix { prefix, limit }),
        2 => (0..BOUNDS.len(), proptest::option::of(0..BOUNDS.len()), 0usize..5)
            .prop_map(|(from, to, limit)| Action::ScanRange { from, to, limit }),
        1 => Just(Action::Restart),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn kv_store_matches_model(actions in proptest::collection::vec(action(), 1..60)) {
        run(actions)?;
    }
}

fn put(client_id: u64, seq: u64, key: &[u8], value: &[u8]) -> KvCommand {
    KvCommand {
        client_id,
        seq,
        op: WriteOp::Put {
            key: key.to_vec(),
            value: value.to_vec(),
            return_prev: true,
        },
        user: None,
    }
}

/// An entry applied at the wrong index is refused and changes nothing.
#[test]
fn apply_at_wrong_index_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut kv = open_store(&dir.path().join("db"));
    assert_eq!(kv.applied_index(), 0);
    assert!(kv.apply_kv(1, &[put(1, 1, b"k", b"v")]).is_err(), "ahead");
    assert_eq!(kv.applied_index(), 0);
    assert_eq!(kv.get(b"k").unwrap(), (None, 0));

    kv.apply_kv(0, &[put(1, 1, b"k", b"v1")]).unwrap();
    let before = (kv.get(b"k").unwrap(), kv.revision());
    for index in [0, 2, 7] {
        let err = kv.apply_kv(index, &[put(1, 2, b"k", b"v2"), put(2, 1, b"j", b"w")]);
        assert!(err.is_err(), "apply at {index} with 1 applied must fail");
        assert_eq!(kv.applied_index(), 1);
        assert_eq!((kv.get(b"k").unwrap(), kv.revision()), before);
        assert_eq!(kv.get(b"j").unwrap(), (None, 1));
    }
    // Nothing of the refused commands was recorded: the session of client 1 still
    // executes seq 2 as new.
    let res = kv.apply_kv(1, &[put(1, 2, b"k", b"v2")]).unwrap();
    assert_eq!(
        res,
        vec![WriteResult::Put {
            version: 2,
            prev: Some(Versioned {
                value: b"v1".to_vec(),
                version: 1
            }),
        }]
    );
}

/// Sessions survive a restart: a retry after reopening returns the original result.
#[test]
fn sessions_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let mut kv = open_store(&path);
    let first = kv.apply_kv(0, &[put(9, 5, b"k", b"v")]).unwrap();
    kv.apply_kv(1, &[put(8, 1, b"k", b"w")]).unwrap();
    drop(kv);
    let mut kv = open_store(&path);
    assert_eq!(kv.applied_index(), 2);
    assert_eq!(kv.revision(), 2);
    assert_eq!(kv.apply_kv(2, &[put(9, 5, b"k", b"v")]).unwrap(), first);
    assert!(matches!(
        kv.apply_kv(3, &[put(9, 4, b"k", b"old")]).unwrap()[..],
        [WriteResult::Superseded(_)]
    ));
    let (v, applied) = kv.get(b"k").unwrap();
    assert_eq!(applied, 4);
    assert_eq!(
        v,
        Some(Versioned {
            value: b"w".to_vec(),
            version: 2
        })
    );
}

#[test]
fn idle_sessions_expire_by_log_index_and_active_ones_stay() {
    use crate::session::SESSION_TTL_ENTRIES;
    let mut kv = KvStore::open_memory(Default::default()).unwrap();
    let incr = |client_id, seq| KvCommand {
        client_id,
        seq,
        op: WriteOp::Incr {
            key: b"n".to_vec(),
            delta: 1,
        },
        user: None,
    };
    let apply =
        |kv: &mut KvStore, cmds: &[KvCommand]| kv.apply_kv(kv.applied_index(), cmds).unwrap();
    let value = |kv: &KvStore| kv.get(b"n").unwrap().0.map(|v| v.value);
    apply(&mut kv, &[incr(1, 1)]);
    // Client 2 keeps using its session; client 1 goes quiet.
    let mut seq2 = 0;
    while kv.applied_index() < SESSION_TTL_ENTRIES + 1 {
        if kv.applied_index() % 50_000 == 1 {
            seq2 += 1;
            apply(&mut kv, &[incr(2, seq2)]);
        } else {
            apply(&mut kv, &[]);
        }
    }
    let total = 1 + seq2 as i64;
    assert_eq!(value(&kv), Some(total.to_string().into_bytes()));
    // A retry of client 2's last command is still recognised: no second increment.
    apply(&mut kv, &[incr(2, seq2)]);
    assert_eq!(value(&kv), Some(total.to_string().into_bytes()));
    // Client 1's session was forgotten: the same command now counts as new.
    let late = apply(&mut kv, &[incr(1, 1)]);
    assert!(
        matches!(late[0], WriteResult::Incr { value, .. } if value == total + 1),
        "{late:?}"
    );
}

/// Issue #14: session expiry meets a duplicate — a client's retry, or the same command
/// proposed twice and decided in two log entries (the state machine cannot tell them
/// apart). A session last used by the entry at index `L` is swept by the entry at
/// `L + SESSION_TTL_ENTRIES + 1`, after that entry's own commands ran; a recognised
/// duplicate does not count as a use. So a duplicate decided at `L + TTL + 1` at the latest
/// is suppressed (the original answer, no second effect), and one decided at
/// `L + TTL + 2` or later is applied again.
mod duplicates_and_expiry {
    use super::*;
    use crate::session::SESSION_TTL_ENTRIES as TTL;

    fn incr(client_id: u64) -> KvCommand {
        KvCommand {
            client_id,
            seq: 1,
            op: WriteOp::Incr {
                key: b"n".to_vec(),
                delta: 1,
            },
            user: None,
        }
    }

    fn apply(kv: &mut KvStore, cmds: &[KvCommand]) -> Vec<WriteResult> {
        kv.apply_kv(kv.applied_index(), cmds).unwrap()
    }

    fn counter(kv: &KvStore) -> i64 {
        let v = kv.get(b"n").unwrap().0.unwrap().value;
        String::from_utf8(v).unwrap().parse().unwrap()
    }

    /// Empty entries until the next one applied has index `index`.
    fn skip_to(kv: &mut KvStore, index: u64) {
        while kv.applied_index() < index {
            apply(kv, &[]);
        }
    }

    fn answer(value: i64, version: u64) -> WriteResult {
        WriteResult::Incr { value, version }
    }

    /// Client 1 increments at entry 0, client 2 at entry 1; client 1 retries at
    /// entry 100 000, which is suppressed and does not extend its session.
    fn history() -> KvStore {
        let mut kv = KvStore::open_memory(Default::default()).unwrap();
        assert_eq!(apply(&mut kv, &[incr(1)]), vec![answer(1, 1)]);
        assert_eq!(apply(&mut kv, &[incr(2)]), vec![answer(2, 2)]);
        skip_to(&mut kv, 100_000);
        assert_eq!(apply(&mut kv, &[incr(1)]), vec![answer(1, 1)], "a retry");
        assert_eq!(counter(&kv), 2);
        kv
    }

    #[test]
    fn a_duplicate_just_before_its_session_expires_is_suppressed() {
        let mut kv = history();
        // Client 1's session (last used at 0) lives through entry TTL + 1.
        skip_to(&mut kv, TTL + 1);
        assert_eq!(apply(&mut kv, &[incr(1)]), vec![answer(1, 1)]);
        assert_eq!(counter(&kv), 2, "no second increment");
        // Client 2's (last used at 1) through TTL + 2, though client 1's ended at TTL + 1.
        assert_eq!(apply(&mut kv, &[incr(2)]), vec![answer(2, 2)]);
        assert_eq!(counter(&kv), 2);
    }

    #[test]
    fn a_duplicate_after_its_session_expired_is_applied_again() {
        let mut kv = history();
        // The retry at entry 100 000 did not extend the session: it ended at TTL + 1.
        skip_to(&mut kv, TTL + 2);
        let again = apply(&mut kv, &[incr(1)]);
        assert_eq!(again, vec![answer(3, 3)], "applied a second time");
        assert_eq!(counter(&kv), 3);
        // It opened a new session: a duplicate right after is suppressed again.
        assert_eq!(apply(&mut kv, &[incr(1)]), vec![answer(3, 3)]);
        // Client 2's session ended with entry TTL + 2: its duplicate counts again too.
        assert_eq!(apply(&mut kv, &[incr(2)]), vec![answer(4, 4)]);
        assert_eq!(counter(&kv), 4);
    }
}

#[test]
fn a_seq_reused_for_a_different_command_is_rejected_not_answered_with_the_old_result() {
    let mut kv = KvStore::open_memory(Default::default()).unwrap();
    let put = |key: &[u8]| KvCommand {
        client_id: 9,
        seq: 1,
        op: WriteOp::Put {
            key: key.to_vec(),
            value: b"v".to_vec(),
            return_prev: false,
        },
        user: None,
    };
    let first = kv.apply_kv(0, &[put(b"a")]).unwrap();
    // The same command again is a retry: the original answer.
    assert_eq!(kv.apply_kv(1, &[put(b"a")]).unwrap(), first);
    // Another command under the same seq must not be "answered" by the first's result.
    let reused = kv.apply_kv(2, &[put(b"b")]).unwrap();
    assert!(
        matches!(reused[0], WriteResult::SessionReused(_)),
        "{reused:?}"
    );
    assert!(kv.get(b"b").unwrap().0.is_none());
}

/// Issue #8: a failed compare returns the current value; its session record must not keep
/// a large one (100 failed CAS against a 16 MiB value used to add 1.7 GiB on every node).
/// A retry still gets the full answer while the key keeps that version, and an unknown
/// outcome (never a wrong value) once it moved on.
#[test]
fn session_records_keep_versions_not_large_values() {
    use super::backend::Space;
    use super::SESSION_VALUE_KEEP;
    let mut kv = KvStore::open_memory(Default::default()).unwrap();
    let big = vec![7u8; 256 * 1024];
    kv.apply_kv(0, &[put(1, 1, b"big", &big)]).unwrap();
    let cas = |client_id| KvCommand {
        client_id,
        seq: 1,
        op: WriteOp::Cas {
            key: b"big".to_vec(),
            expect: Expect::Version(99),
            new_value: b"new".to_vec(),
        },
        user: None,
    };
    let failed = WriteResult::Cas {
        succeeded: false,
        version: 1,
        current: Some(Versioned {
            value: big.clone(),
            version: 1,
        }),
    };
    for c in 0..100u64 {
        let index = kv.applied_index();
        assert_eq!(
            kv.apply_kv(index, &[cas(100 + c)]).unwrap(),
            vec![failed.clone()]
        );
    }
    let mut session_bytes = 0;
    kv.backend
        .view(|v| {
            v.scan_from(Space::Sm, b"s", &mut |k, val| {
                if k.first() == Some(&b's') {
                    session_bytes += val.len();
                }
                Ok(true)
            })
        })
        .unwrap();
    assert!(
        session_bytes < 101 * (SESSION_VALUE_KEEP + 256),
        "101 session records take {session_bytes} bytes"
    );
    // A retry while the key is unchanged: the full original answer, value included.
    let index = kv.applied_index();
    assert_eq!(
        kv.apply_kv(index, &[cas(100)]).unwrap(),
        vec![failed.clone()]
    );
    // Small values are kept as they are (a retry never needs the key).
    let index = kv.applied_index();
    let first = kv.apply_kv(index, &[put(2, 1, b"small", b"s1")]).unwrap();
    let index = kv.applied_index();
    let second = kv.apply_kv(index, &[put(2, 2, b"small", b"s2")]).unwrap();
    let index = kv.applied_index();
    kv.apply_kv(index, &[put(3, 1, b"small", b"s3")]).unwrap();
    let index = kv.applied_index();
    assert_eq!(
        kv.apply_kv(index, &[put(2, 2, b"small", b"s2")]).unwrap(),
        second
    );
    assert_ne!(first, second);
    // Once the big value is overwritten, a retry cannot return it: unknown, not wrong.
    let index = kv.applied_index();
    kv.apply_kv(index, &[put(4, 1, b"big", b"other")]).unwrap();
    let index = kv.applied_index();
    let late = kv.apply_kv(index, &[cas(101)]).unwrap();
    assert!(matches!(late[0], WriteResult::Superseded(_)), "{late:?}");
    // Nothing of the retries was applied again.
    assert_eq!(kv.get(b"big").unwrap().0.unwrap().value, b"other".to_vec());
}

/// Issue #8: `APPEND` cannot grow a value past the limit the proposer carried.
#[test]
fn append_beyond_the_value_limit_is_rejected_and_changes_nothing() {
    let mut kv = KvStore::open_memory(Default::default()).unwrap();
    let append = |seq, suffix: &[u8]| KvCommand {
        client_id: 5,
        seq,
        op: WriteOp::AppendUpTo {
            key: b"log".to_vec(),
            suffix: suffix.to_vec(),
            max_len: 10,
        },
        user: None,
    };
    let r = kv.apply_kv(0, &[append(1, b"12345678")]).unwrap();
    assert!(matches!(r[0], WriteResult::Append { len: 8, .. }), "{r:?}");
    let r = kv.apply_kv(1, &[append(2, b"abc")]).unwrap();
    assert!(matches!(r[0], WriteResult::Rejected(_)), "{r:?}");
    assert_eq!(
        kv.get(b"log").unwrap().0.unwrap().value,
        b"12345678".to_vec()
    );
    let r = kv.apply_kv(2, &[append(3, b"ab")]).unwrap();
    assert!(matches!(r[0], WriteResult::Append { len: 10, .. }), "{r:?}");
}

fn set_user(name: &str, change: crate::auth::UserChange, only_if_no_users: bool) -> WriteOp {
    WriteOp::SetUser {
        name: name.into(),
        change,
        only_if_no_users,
    }
}

fn admin_change(hash: &str) -> crate::auth::UserChange {
    crate::auth::UserChange {
        role: Some(crate::auth::Role::Admin),
        enabled: Some(true),
        add_passwords: vec![hash.into()],
        ..Default::default()
    }
}

/// Users are applied into the metadata space: the bootstrap applies once, changes merge,
/// deletes remove, and no client read, scan or key write reaches them.
#[test]
fn users_live_outside_the_client_keyspace() {
    use crate::auth::{Role, UserChange};
    let mut kv = KvStore::open_memory(Default::default()).unwrap();
    let c = |seq, op| KvCommand {
        client_id: 3,
        seq,
        op,
        user: None,
    };
    assert!(!kv.has_users().unwrap());
    // Bootstrap twice in one entry and once more later: only the first applies.
    let r = kv
        .apply_kv(
            0,
            &[
                c(1, set_user("admin", admin_change("$h1"), true)),
                c(2, set_user("other", admin_change("$h2"), true)),
            ],
        )
        .unwrap();
    assert_eq!(
        r,
        vec![
            WriteResult::User { changed: true },
            WriteResult::User { changed: false }
        ]
    );
    let r = kv
        .apply_kv(1, &[c(3, set_user("admin", admin_change("$h3"), true))])
        .unwrap();
    assert_eq!(r, vec![WriteResult::User { changed: false }]);
    let admin = kv.user("admin").unwrap().unwrap();
    assert_eq!(admin.passwords, vec!["$h1".to_string()]);
    assert_eq!(admin.role, Role::Admin);
    assert!(kv.user("other").unwrap().is_none());

    // A change merges into the record; a new user starts disabled, read-only.
    let change = UserChange {
        prefix: Some(b"app/".to_vec()),
        add_passwords: vec!["$r".into()],
        ..Default::default()
    };
    kv.apply_kv(2, &[c(4, set_user("reader", change, false))])
        .unwrap();
    let reader = kv.user("reader").unwrap().unwrap();
    assert_eq!(
        (reader.role, reader.enabled, reader.prefix.as_slice()),
        (Role::Read, false, b"app/".as_slice())
    );
    // Too many secrets: rejected, nothing changes.
    let many: Vec<KvCommand> = (0..20)
        .map(|i| {
            let ch = UserChange {
                add_passwords: vec![format!("$p{i}")],
                ..Default::default()
            };
            c(5 + i, set_user("reader", ch, false))
        })
        .collect();
    let r = kv.apply_kv(3, &many).unwrap();
    assert!(matches!(r.last(), Some(WriteResult::Rejected(_))), "{r:?}");
    assert_eq!(
        kv.user("reader").unwrap().unwrap().passwords.len(),
        crate::auth::MAX_SECRETS
    );

    // Invisible to every client read: the data space is empty.
    let (rows, _, _) = kv.scan(&ScanRange::Prefix(vec![]), 100).unwrap();
    assert!(rows.is_empty(), "{rows:?}");
    assert_eq!(kv.get(b"user/admin").unwrap().0, None);
    let names: Vec<String> = kv.users().unwrap().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, vec!["admin".to_string(), "reader".to_string()]);

    // Delete: gone; deleting again changes nothing; the bootstrap does not apply while
    // another user exists.
    let del = |name: &str| WriteOp::DeleteUser { name: name.into() };
    let r = kv
        .apply_kv(4, &[c(30, del("admin")), c(31, del("admin"))])
        .unwrap();
    assert_eq!(
        r,
        vec![
            WriteResult::User { changed: true },
            WriteResult::User { changed: false }
        ]
    );
    let r = kv
        .apply_kv(5, &[c(32, set_user("admin", admin_change("$h4"), true))])
        .unwrap();
    assert_eq!(r, vec![WriteResult::User { changed: false }]);
    // The last user cannot be deleted (without users, nodes would serve everyone as an
    // administrator): rejected, on every replica alike, and the user stays.
    let r = kv.apply_kv(6, &[c(33, del("reader"))]).unwrap();
    assert!(
        matches!(&r[0], WriteResult::Rejected(why) if why.contains("last user")),
        "{r:?}"
    );
    assert!(kv.user("reader").unwrap().is_some());
    // With another user made first, in the same entry, it can go.
    let r = kv
        .apply_kv(
            7,
            &[
                c(34, set_user("admin", admin_change("$h5"), false)),
                c(35, del("reader")),
            ],
        )
        .unwrap();
    assert_eq!(r[1], WriteResult::User { changed: true });
    assert_eq!(kv.users().unwrap().len(), 1);
    // `enable_if_new`: a user it creates is on; an existing disabled one stays off.
    let make = |prefix: &[u8]| UserChange {
        prefix: Some(prefix.to_vec()),
        enable_if_new: true,
        ..Default::default()
    };
    kv.apply_kv(8, &[c(36, set_user("new", make(b"a/"), false))])
        .unwrap();
    assert!(kv.user("new").unwrap().unwrap().enabled);
    let off = UserChange {
        enabled: Some(false),
        ..Default::default()
    };
    kv.apply_kv(9, &[c(37, set_user("new", off, false))])
        .unwrap();
    kv.apply_kv(10, &[c(38, set_user("new", make(b"b/"), false))])
        .unwrap();
    let u = kv.user("new").unwrap().unwrap();
    assert_eq!((u.enabled, u.prefix.as_slice()), (false, b"b/".as_slice()));
}

/// A write runs as the user who sent it, and the store checks that user's rights again
/// where it applies the write: a user demoted, disabled or deleted after a write was
/// proposed (through a node that had not applied the change yet) cannot make it land.
#[test]
fn a_write_is_checked_against_its_users_rights_where_it_is_applied() {
    use crate::auth::{Role, UserChange};
    let mut kv = KvStore::open_memory(Default::default()).unwrap();
    let run = |kv: &mut KvStore, seq, op, user: Option<&str>| {
        let cmd = KvCommand {
            client_id: 9,
            seq,
            op,
            user: user.map(str::to_string),
        };
        let index = kv.applied_index();
        kv.apply_kv(index, &[cmd]).unwrap().remove(0)
    };
    let change = |role, prefix: &[u8]| UserChange {
        role: Some(role),
        prefix: Some(prefix.to_vec()),
        enabled: Some(true),
        ..Default::default()
    };
    let put = |k: &[u8]| WriteOp::Put {
        key: k.to_vec(),
        value: b"v".to_vec(),
        return_prev: false,
    };
    run(
        &mut kv,
        1,
        set_user("ann", change(Role::ReadWrite, b"a/"), false),
        None,
    );
    assert!(matches!(
        run(&mut kv, 2, put(b"a/1"), Some("ann")),
        WriteResult::Put { .. }
    ));
    // Outside the prefix, or user management: denied, nothing written.
    let denied = run(&mut kv, 3, put(b"b/1"), Some("ann"));
    assert!(
        matches!(&denied, WriteResult::Denied(m) if m.contains("ann")),
        "{denied:?}"
    );
    assert_eq!(kv.get(b"b/1").unwrap().0, None);
    let denied = run(
        &mut kv,
        4,
        set_user("ann", change(Role::Admin, b""), false),
        Some("ann"),
    );
    assert!(matches!(denied, WriteResult::Denied(_)), "{denied:?}");
    // Demoted to read: the next write is denied.
    run(
        &mut kv,
        5,
        set_user("ann", change(Role::Read, b"a/"), false),
        None,
    );
    let denied = run(&mut kv, 6, put(b"a/2"), Some("ann"));
    assert!(
        matches!(&denied, WriteResult::Denied(m) if m.contains("may not write")),
        "{denied:?}"
    );
    // Disabled, then deleted.
    let mut off = change(Role::ReadWrite, b"a/");
    off.enabled = Some(false);
    run(&mut kv, 7, set_user("ann", off, false), None);
    let denied = run(&mut kv, 8, put(b"a/3"), Some("ann"));
    assert_eq!(denied, WriteResult::Denied("user ann is disabled".into()));
    run(
        &mut kv,
        9,
        set_user("root", change(Role::Admin, b""), false),
        None,
    );
    run(
        &mut kv,
        10,
        WriteOp::DeleteUser { name: "ann".into() },
        Some("root"),
    );
    let denied = run(&mut kv, 11, put(b"a/4"), Some("ann"));
    assert_eq!(
        denied,
        WriteResult::Denied("user ann no longer exists".into())
    );
    assert_eq!(kv.get(b"a/2").unwrap().0, None);
    assert_eq!(kv.get(b"a/3").unwrap().0, None);
    assert_eq!(kv.get(b"a/4").unwrap().0, None);
    // The denial is remembered by the session like any result: a retry gets it again.
    let again = run(&mut kv, 11, put(b"a/4"), Some("ann"));
    assert_eq!(
        again,
        WriteResult::Denied("user ann no longer exists".into())
    );
}

/// Apply throughput of single-put entries on RocksDB (issue #11: a put cost four memtable
/// writes, three of them session bookkeeping), with a pool of 64 clients each taking the
/// next seq, as the client library does. Reports entries per second and the memtable
/// entries the session bookkeeping left in `sm` per applied put. A measurement, not a
/// test: `cargo test --release --lib kv::tests::apply_throughput -- --ignored --nocapture`.
#[test]
#[ignore]
fn apply_throughput() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_db(&dir.path().join("db")).unwrap();
    let mut kv = KvStore::open(db.clone()).unwrap();
    let n = 50_000u64;
    let clients = 64u64;
    let value = vec![b'v'; 100];
    let t0 = std::time::Instant::now();
    for i in 0..n {
        let at = kv.applied_index();
        let cmd = KvCommand {
            client_id: 1 + i % clients,
            seq: 1 + i / clients,
            op: WriteOp::Put {
                key: format!("key{}", i % 10_000).into_bytes(),
                value: value.clone(),
                return_prev: false,
            },
            user: None,
        };
        kv.apply_kv(at, &[cmd]).unwrap();
    }
    let took = t0.elapsed();
    let sm = db.cf_handle(crate::storage::db::CF_SM).unwrap();
    let mem = |prop: &str| db.property_int_value_cf(sm, prop).unwrap().unwrap_or(0);
    let entries = mem("rocksdb.num-entries-active-mem-table");
    let deletes = mem("rocksdb.num-deletes-active-mem-table");
    eprintln!(
        "single-put entries: {:.0}/s; sm memtable entries per put: {:.2} ({:.2} of them deletes)",
        n as f64 / took.as_secs_f64(),
        entries as f64 / n as f64,
        deletes as f64 / n as f64,
    );
}

/// Format 2 directories hold expiry keys at the exact last index (`e` + L + client), not
/// at a bucket start. Such a key stays valid while its record moves within the bucket,
/// is left behind as an orphan when the record moves to another bucket, and the sweep
/// then deletes the orphan key without touching the live record.
#[test]
fn format_2_expiry_keys_are_swept_without_losing_live_records() {
    use super::backend::Space;
    use super::expiry_key;
    use crate::session::{SESSION_TTL_ENTRIES as TTL, SWEEP_BUCKET};
    let mut kv = KvStore::open_memory(Default::default()).unwrap();
    let incr = |seq| KvCommand {
        client_id: 5,
        seq,
        op: WriteOp::Incr {
            key: b"n".to_vec(),
            delta: 1,
        },
        user: None,
    };
    let skip_to = |kv: &mut KvStore, index: u64| {
        while kv.applied_index() < index {
            kv.apply_kv(kv.applied_index(), &[]).unwrap();
        }
    };
    let expiry_keys = |kv: &KvStore| {
        let mut keys = Vec::new();
        kv.backend
            .view(|v| {
                v.scan_from(Space::Sm, b"e", &mut |k, _| {
                    if k[0] == b'e' {
                        keys.push(k.to_vec());
                    }
                    Ok(k[0] == b'e')
                })
            })
            .unwrap();
        keys
    };
    let legacy_at = SWEEP_BUCKET + 476;
    skip_to(&mut kv, legacy_at);
    kv.apply_kv(legacy_at, &[incr(1)]).unwrap();
    // Rewrite the key as format 2 had it.
    let bucketed = expiry_key(SWEEP_BUCKET, 5).to_vec();
    let legacy = expiry_key(legacy_at, 5).to_vec();
    assert_eq!(expiry_keys(&kv), vec![bucketed.clone()]);
    kv.backend
        .write(&[
            (Space::Sm, bucketed, None),
            (Space::Sm, legacy.clone(), Some(vec![])),
        ])
        .unwrap();
    // Used again in the same bucket: the key stays where it is.
    skip_to(&mut kv, legacy_at + 10);
    kv.apply_kv(legacy_at + 10, &[incr(2)]).unwrap();
    assert_eq!(expiry_keys(&kv), vec![legacy.clone()]);
    // Used in the next bucket: a bucketed key is written, the legacy one is an orphan.
    let moved_at = 2 * SWEEP_BUCKET + 3;
    skip_to(&mut kv, moved_at);
    kv.apply_kv(moved_at, &[incr(3)]).unwrap();
    let current = expiry_key(2 * SWEEP_BUCKET, 5).to_vec();
    assert_eq!(expiry_keys(&kv), vec![legacy.clone(), current]);
    // Still in use when the legacy key's bucket expires.
    let used_at = legacy_at + TTL;
    skip_to(&mut kv, used_at);
    let last = kv.apply_kv(used_at, &[incr(4)]).unwrap();
    let current = expiry_key(crate::session::bucket(used_at), 5).to_vec();
    assert_eq!(expiry_keys(&kv), vec![legacy.clone(), current.clone()]);
    // Past the legacy key's sweep point: the orphan goes, the live record stays.
    skip_to(&mut kv, legacy_at + TTL + SWEEP_BUCKET + 1);
    assert_eq!(expiry_keys(&kv), vec![current]);
    let index = kv.applied_index();
    assert_eq!(
        kv.apply_kv(index, &[incr(4)]).unwrap(),
        last,
        "still a duplicate"
    );
    // And the record itself is swept once its bucket expired.
    skip_to(&mut kv, used_at + TTL + SWEEP_BUCKET + 1);
    assert_eq!(expiry_keys(&kv), Vec::<Vec<u8>>::new());
    assert_eq!(kv.session_records().unwrap(), 0);
}

/// A transaction that a bound refuses as a whole (a delete range over
/// [`crate::command::MAX_TXN_DELETE_RANGE`] keys) is undone entirely: its earlier writes,
/// its revisions, and nothing of it reaches the store; a later command of the same entry
/// runs on the state before it.
#[test]
fn a_transaction_refused_as_a_whole_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut kv = open_store(&dir.path().join("db"));
    let n = crate::command::MAX_TXN_DELETE_RANGE + 1;
    let pairs = (0..n)
        .map(|i| (format!("k/{i:06}").into_bytes(), b"v".to_vec()))
        .collect();
    kv.apply_kv(0, &[cmd(1, 1, WriteOp::MultiPut { pairs })])
        .unwrap();
    let revision = kv.revision();
    let txn = Txn {
        compare: vec![],
        success: vec![
            TxnOp::Write(WriteOp::Put {
                key: b"x".to_vec(),
                value: b"1".to_vec(),
                return_prev: false,
            }),
            TxnOp::DeleteRange {
                range: ScanRange::Prefix(b"k/".to_vec()),
            },
        ],
        failure: vec![],
    };
    let got = kv
        .apply_kv(
            1,
            &[
                cmd(2, 1, WriteOp::Txn(txn)),
                cmd(
                    3,
                    1,
                    WriteOp::Incr {
                        key: b"counter".to_vec(),
                        delta: 1,
                    },
                ),
            ],
        )
        .unwrap();
    match &got[0] {
        WriteResult::Rejected(why) => assert!(why.contains("at most"), "{why}"),
        other => panic!("the oversized delete range was not refused: {other:?}"),
    }
    assert_eq!(
        got[1],
        WriteResult::Incr {
            value: 1,
            version: revision + 1
        }
    );
    assert_eq!(
        kv.get(b"x").unwrap().0,
        None,
        "the transaction's put was undone"
    );
    assert_eq!(
        kv.revision(),
        revision + 1,
        "only the increment took a revision"
    );
    let (rows, _, _) = kv.scan(&ScanRange::Prefix(b"k/".to_vec()), 10).unwrap();
    assert_eq!(rows.len(), 10, "nothing was deleted");

    // Within the bound, the same delete range runs, seeing the entry's earlier writes.
    let small = Txn {
        compare: vec![Compare {
            key: b"counter".to_vec(),
            op: CompareOp::Equal,
            target: CompareTarget::Value(b"1".to_vec()),
        }],
        success: vec![
            TxnOp::Write(WriteOp::Put {
                key: b"k/zz".to_vec(),
                value: b"w".to_vec(),
                return_prev: false,
            }),
            TxnOp::DeleteRange {
                range: ScanRange::Range {
                    from: b"k/000000".to_vec(),
                    to: Some(b"k/000010".to_vec()),
                },
            },
            TxnOp::Range {
                range: ScanRange::Prefix(b"k/z".to_vec()),
                limit: 0,
            },
        ],
        failure: vec![],
    };
    let got = kv.apply_kv(2, &[cmd(2, 2, WriteOp::Txn(small))]).unwrap();
    let WriteResult::Txn { succeeded, results } = &got[0] else {
        panic!("not a transaction result: {got:?}");
    };
    assert!(succeeded);
    assert_eq!(results[1], TxnOpResult::DeleteRange { deleted: 10 });
    match &results[2] {
        TxnOpResult::Range { items, more } => {
            assert_eq!((items.len(), *more), (1, false));
            assert_eq!(items[0].key, b"k/zz");
        }
        other => panic!("not a range result: {other:?}"),
    }
}

fn cmd(client_id: u64, seq: u64, op: WriteOp) -> KvCommand {
    KvCommand {
        client_id,
        seq,
        op,
        user: None,
    }
}

/// The node stamps an entry with its clock only when a command reads the time: a write
/// that sets a deadline, or a transaction; other writes leave the log's time alone.
#[test]
fn only_writes_that_read_the_time_ask_for_a_stamp() {
    use crate::machine::StateMachine;
    let dir = tempfile::tempdir().unwrap();
    let kv = open_store(&dir.path().join("db"));
    let asks = |op: WriteOp| kv.needs_time(&cmd(1, 1, op).encode());
    assert!(asks(WriteOp::SetExpiring {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        cond: SetCond::Always,
        expiry: Expiry::Set(Deadline::In(5)),
    }));
    assert!(asks(WriteOp::Expire {
        key: b"k".to_vec(),
        deadline: Some(Deadline::In(5)),
        when: ExpireCond::Always,
    }));
    assert!(asks(WriteOp::Txn(Txn::default())));
    assert!(!asks(WriteOp::Put {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        return_prev: false,
    }));
    assert!(!asks(WriteOp::Incr {
        key: b"k".to_vec(),
        delta: 1,
    }));
}

/// A transaction's bounds hold for the whole transaction, not per operation: range
/// deletes that together pass [`crate::command::MAX_TXN_DELETE_RANGE`], or ranges that
/// together step over more than [`super::MAX_TXN_SCAN_STEPS`] rows, refuse it whole.
#[test]
fn a_transactions_bounds_count_all_its_operations() {
    let dir = tempfile::tempdir().unwrap();
    let mut kv = open_store(&dir.path().join("db"));
    let pairs = |p: &str, n: usize| {
        (0..n)
            .map(|i| (format!("{p}/{i:06}").into_bytes(), b"v".to_vec()))
            .collect()
    };
    kv.apply_kv(
        0,
        &[
            cmd(
                1,
                1,
                WriteOp::MultiPut {
                    pairs: pairs("a", 6000),
                },
            ),
            cmd(
                1,
                2,
                WriteOp::MultiPut {
                    pairs: pairs("b", 6000),
                },
            ),
        ],
    )
    .unwrap();
    let delete = |p: &[u8]| TxnOp::DeleteRange {
        range: ScanRange::Prefix(p.to_vec()),
    };
    let both = Txn {
        success: vec![delete(b"a/"), delete(b"b/")],
        ..Txn::default()
    };
    let got = kv.apply_kv(1, &[cmd(2, 1, WriteOp::Txn(both))]).unwrap();
    assert!(
        matches!(&got[0], WriteResult::Rejected(m) if m.contains("in all")),
        "{got:?}"
    );
    let range = || TxnOp::Range {
        range: ScanRange::Prefix(b"a/".to_vec()),
        limit: 1,
    };
    // Each range reads one row but steps over the 6,000 keys the first op deleted.
    let mut ops = vec![delete(b"a/")];
    ops.extend((0..20).map(|_| range()));
    let long = Txn {
        success: ops,
        ..Txn::default()
    };
    let got = kv.apply_kv(2, &[cmd(2, 2, WriteOp::Txn(long))]).unwrap();
    assert!(
        matches!(&got[0], WriteResult::Rejected(m) if m.contains("step over")),
        "{got:?}"
    );
    let (rows, _, _) = kv.scan(&ScanRange::Prefix(b"a/".to_vec()), 10).unwrap();
    assert_eq!(rows.len(), 10, "nothing was deleted");
}

/// A write that reads its key drops the key's old deadline index key, so a deleted or
/// persisted key leaves nothing for the leader to stamp the log for.
#[test]
fn a_changed_deadline_leaves_no_index_key_behind() {
    use crate::machine::StateMachine;
    let dir = tempfile::tempdir().unwrap();
    let mut kv = open_store(&dir.path().join("db"));
    let set = WriteOp::SetExpiring {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        cond: SetCond::Always,
        expiry: Expiry::Set(Deadline::At(u64::MAX / 2)),
    };
    kv.apply_kv_at(0, Some(1000), &[cmd(1, 1, set)]).unwrap();
    assert_eq!(kv.next_deadline(), Some(u64::MAX / 2));
    let delete = WriteOp::Delete {
        key: b"k".to_vec(),
        return_prev: false,
    };
    kv.apply_kv(1, &[cmd(1, 2, delete)]).unwrap();
    assert_eq!(kv.next_deadline(), None);
    assert_eq!(kv.seek_next_deadline().unwrap(), None);
}

/// The watch history keeps a window of revisions and of bytes: older revisions are
/// pruned whole (a multi-put's keys go together), a read below the window is refused
/// with the oldest revision held, and the window survives a restart.
#[test]
fn watch_history_is_a_bounded_window_of_whole_revisions() {
    use crate::error::Error;
    use crate::kv::{ChangeKind, HistoryLimits, WatchFilter};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let mut kv = open_store(&path);
    kv.set_history_limits(HistoryLimits {
        revisions: 10,
        bytes: 1 << 20,
    });
    let all = WatchFilter::Range(ScanRange::Prefix(vec![]));
    for i in 0..30u64 {
        kv.apply_kv(i, &[put(1, i + 1, b"k", format!("{i}").as_bytes())])
            .unwrap();
    }
    assert_eq!(kv.revision(), 30);
    match kv.history(1, &all, 100, usize::MAX) {
        Err(Error::Compacted { requested, oldest }) => assert_eq!((requested, oldest), (1, 21)),
        other => panic!("{other:?}"),
    }
    let r = kv.history(21, &all, 100, usize::MAX).unwrap();
    assert_eq!(r.changes.len(), 10);
    assert_eq!((r.changes[0].revision, r.next, r.revision), (21, 31, 30));
    // Reading from the future waits there: nothing, and the next revision is `from`.
    let r = kv.history(40, &all, 100, usize::MAX).unwrap();
    assert!(r.changes.is_empty());
    assert_eq!(r.next, 40);
    // A key filter sees only its key; deletes are changes too.
    kv.apply_kv(
        30,
        &[cmd(
            2,
            1,
            WriteOp::Delete {
                key: b"k".to_vec(),
                return_prev: false,
            },
        )],
    )
    .unwrap();
    let r = kv
        .history(31, &WatchFilter::Key(b"k".to_vec()), 100, usize::MAX)
        .unwrap();
    assert_eq!(r.changes.len(), 1);
    assert_eq!(r.changes[0].kind, ChangeKind::Delete);
    assert!(kv
        .history(22, &WatchFilter::Key(b"other".to_vec()), 100, usize::MAX)
        .unwrap()
        .changes
        .is_empty());

    // Bytes: 100-byte values, a 1,000-byte window; a multi-put of three keys is one
    // revision, kept or pruned whole.
    kv.set_history_limits(HistoryLimits {
        revisions: 1000,
        bytes: 1000,
    });
    let big = vec![b'x'; 100];
    for i in 0..20u64 {
        let pairs = (0..3)
            .map(|j| (format!("m{j}").into_bytes(), big.clone()))
            .collect();
        kv.apply_kv(31 + i, &[cmd(3, i + 1, WriteOp::MultiPut { pairs })])
            .unwrap();
    }
    let oldest = match kv.history(0, &all, 1000, usize::MAX) {
        Err(Error::Compacted { oldest, .. }) => oldest,
        other => panic!("{other:?}"),
    };
    let r = kv.history(oldest, &all, 1000, usize::MAX).unwrap();
    let bytes: usize = r
        .changes
        .iter()
        .map(|c| 9 + c.key.len() + 1 + c.value.len())
        .sum();
    assert!(
        bytes <= 1000 && bytes > 1000 - 3 * 113,
        "{bytes} bytes held"
    );
    assert_eq!(r.changes.len() % 3, 0, "whole multi-puts");
    assert_eq!(r.changes[0].revision, oldest);
    // A small read still returns whole revisions.
    let r = kv.history(oldest, &all, 1, usize::MAX).unwrap();
    assert_eq!(r.changes.len(), 3);
    assert_eq!(r.next, oldest + 1);

    drop(kv);
    let kv = open_store(&path);
    assert!(matches!(
        kv.history(oldest - 1, &all, 1, usize::MAX),
        Err(Error::Compacted { oldest: o, .. }) if o == oldest
    ));
    assert_eq!(
        kv.history(oldest, &all, 1, usize::MAX)
            .unwrap()
            .changes
            .len(),
        3
    );
}

/// A watcher waits for the next matching revision, returns whole revisions in order,
/// skips changes that do not match, fails with the oldest revision held once the window
/// passed it, and counts against the bound of live watchers until dropped.
#[tokio::test]
async fn a_watcher_follows_the_history_and_is_bounded() {
    use crate::error::Error;
    use crate::kv::watch::{Watcher, Watchers};
    use crate::kv::{HistoryLimits, WatchFilter};
    let mut kv = KvStore::open_memory(Default::default()).unwrap();
    let watchers = Watchers::new(2);
    let prefix = WatchFilter::Range(ScanRange::Prefix(b"app/".to_vec()));
    let mut w = Watcher::start(kv.clone(), &watchers, prefix.clone(), 1).unwrap();
    let other = Watcher::start(kv.clone(), &watchers, WatchFilter::Key(b"x".to_vec()), 1).unwrap();
    assert!(matches!(
        Watcher::start(kv.clone(), &watchers, prefix.clone(), 1),
        Err(Error::Overloaded(_))
    ));
    drop(other);
    assert_eq!(watchers.live(), 1);

    // Nothing yet: the watcher waits.
    let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), w.next()).await;
    assert!(waiting.is_err(), "no change, no answer");
    kv.apply_kv(0, &[put(1, 1, b"other", b"1")]).unwrap();
    kv.apply_kv(1, &[put(1, 2, b"app/a", b"2")]).unwrap();
    let got = w.next().await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].revision, &got[0].key[..]), (2, &b"app/a"[..]));
    assert_eq!(w.next_revision(), 3);

    // Woken by an entry applied while it waits.
    let mut applier = kv.clone();
    let task = tokio::spawn(async move { w.next().await.map(|c| (c, w)) });
    tokio::task::yield_now().await;
    let pairs = vec![
        (b"app/b".to_vec(), b"3".to_vec()),
        (b"app/c".to_vec(), b"3".to_vec()),
    ];
    applier
        .apply_kv(2, &[cmd(2, 1, WriteOp::MultiPut { pairs })])
        .unwrap();
    let (got, mut w) = task.await.unwrap().unwrap();
    assert_eq!(got.len(), 2, "the multi-put's revision whole");
    assert!(got.iter().all(|c| c.revision == 3));

    // Left behind: the window moves past it while it is not reading.
    kv = applier;
    kv.set_history_limits(HistoryLimits {
        revisions: 2,
        bytes: 1 << 20,
    });
    for i in 0..5 {
        kv.apply_kv(3 + i, &[put(3, i + 1, b"app/d", b"4")])
            .unwrap();
    }
    match w.next().await {
        Err(Error::Compacted { requested, oldest }) => assert_eq!((requested, oldest), (4, 7)),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        Watcher::start(kv.clone(), &watchers, prefix, 2),
        Err(Error::Compacted { oldest: 7, .. })
    ));
}

/// Leases: a granted lease ends its time to live after the entry's time unless kept
/// alive; its keys are invisible from the entry whose log time reaches its end and are
/// deleted by the sweep under revisions (watchers see `expire`; `delete` for a revoke);
/// a plain write detaches a key; a put on a lease that ended is refused; a leader
/// change (a stamp of another reign) does not count the time since the last stamp.
#[test]
fn leases_end_by_the_log_clock_and_take_their_keys() {
    use crate::command::LeaseInfo;
    use crate::kv::{ChangeKind, WatchFilter};
    use crate::machine::Stamp;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let mut kv = open_store(&path);
    let t0 = 1_000_000;
    let reign_a = Stamp::new(0, 1, 1, 1).reign;
    let reign_b = Stamp::new(0, 1, 2, 2).reign;
    let at = |time, reign| Some(Stamp { time, reign });
    let mut seq = 0;
    let mut entry = |kv: &mut KvStore, stamp: Option<Stamp>, ops: Vec<WriteOp>| {
        let cmds: Vec<KvCommand> = (ops.into_iter())
            .map(|op| {
                seq += 1;
                cmd(1, seq, op)
            })
            .collect();
        let index = kv.applied_index();
        kv.apply_kv_stamped(index, stamp, &cmds).unwrap()
    };
    let leased = |key: &str, lease| WriteOp::PutLeased {
        key: key.as_bytes().to_vec(),
        value: b"v".to_vec(),
        lease,
        return_prev: false,
    };
    let r = entry(
        &mut kv,
        at(t0, reign_a),
        vec![WriteOp::LeaseGrant {
            id: 0,
            ttl_ms: 10_000,
        }],
    );
    let WriteResult::Lease(Some(LeaseInfo {
        id,
        ttl_ms,
        deadline,
    })) = r[0]
    else {
        panic!("{r:?}")
    };
    assert_eq!((id, ttl_ms, deadline), (1, 10_000, t0 + 10_000));
    let r = entry(
        &mut kv,
        at(t0 + 1000, reign_a),
        vec![
            leased("svc/a", id),
            leased("svc/b", id),
            leased("svc/c", 99),
        ],
    );
    assert!(matches!(r[2], WriteResult::Rejected(_)), "{r:?}");
    assert_eq!(StateMachine::next_deadline(&kv), Some(t0 + 10_000));
    // A plain put detaches svc/b: it outlives the lease.
    entry(
        &mut kv,
        None,
        vec![WriteOp::Put {
            key: b"svc/b".to_vec(),
            value: b"w".to_vec(),
            return_prev: false,
        }],
    );
    let (status, _) = kv.lease(id, 10).unwrap();
    assert_eq!(status.unwrap().keys, vec![b"svc/a".to_vec()]);
    // Kept alive at t0 + 9 s: now ends at t0 + 19 s.
    let r = entry(
        &mut kv,
        at(t0 + 9000, reign_a),
        vec![WriteOp::LeaseKeepAlive { id }],
    );
    assert!(
        matches!(r[0], WriteResult::Lease(Some(i)) if i.deadline == t0 + 19_000),
        "{r:?}"
    );
    // Leader change: the next stamp is 20 s later, from another reign. The time between
    // the two stamps does not count: the lease now ends at t0 + 39 s.
    entry(&mut kv, at(t0 + 29_000, reign_b), vec![]);
    assert!(
        kv.get(b"svc/a").unwrap().0.is_some(),
        "the lease survives the change"
    );
    assert_eq!(StateMachine::next_deadline(&kv), Some(t0 + 39_000));
    let revision = kv.revision();
    // Within the same reign, time counts: at t0 + 39 s the lease ends.
    entry(&mut kv, at(t0 + 38_999, reign_b), vec![]);
    assert!(kv.get(b"svc/a").unwrap().0.is_some());
    entry(&mut kv, at(t0 + 39_000, reign_b), vec![]);
    assert!(kv.get(b"svc/a").unwrap().0.is_none(), "gone with its lease");
    assert_eq!(kv.get(b"svc/b").unwrap().0.unwrap().value, b"w");
    assert!(kv.lease(id, 10).unwrap().0.is_none());
    let all = WatchFilter::Range(ScanRange::Prefix(b"svc/".to_vec()));
    let changes = kv
        .history(revision + 1, &all, 10, usize::MAX)
        .unwrap()
        .changes;
    assert_eq!(changes.len(), 1);
    assert_eq!(
        (changes[0].kind, &changes[0].key[..]),
        (ChangeKind::Expire, &b"svc/a"[..])
    );
    let r = entry(
        &mut kv,
        None,
        vec![WriteOp::LeaseKeepAlive { id }, leased("svc/d", id)],
    );
    assert!(matches!(r[0], WriteResult::Lease(None)), "{r:?}");
    assert!(matches!(r[1], WriteResult::Rejected(_)), "{r:?}");

    // Revoke: the keys go in the revoking entry, as deletes; a lease id given is kept.
    let r = entry(
        &mut kv,
        at(t0 + 40_000, reign_b),
        vec![WriteOp::LeaseGrant {
            id: 7,
            ttl_ms: 5000,
        }],
    );
    assert!(
        matches!(r[0], WriteResult::Lease(Some(i)) if i.id == 7),
        "{r:?}"
    );
    entry(&mut kv, None, vec![leased("svc/e", 7), leased("svc/f", 7)]);
    let revision = kv.revision();
    drop(kv);
    let mut kv = open_store(&path);
    assert_eq!(
        kv.leases(0, 10).unwrap().0.len(),
        1,
        "leases survive a restart"
    );
    let r = entry(
        &mut kv,
        None,
        vec![
            WriteOp::LeaseRevoke { id: 7 },
            WriteOp::LeaseRevoke { id: 7 },
        ],
    );
    assert_eq!(
        r,
        vec![
            WriteResult::LeaseRevoked { existed: true },
            WriteResult::LeaseRevoked { existed: false }
        ]
    );
    assert!(kv.get(b"svc/e").unwrap().0.is_none());
    let changes = kv
        .history(revision + 1, &all, 10, usize::MAX)
        .unwrap()
        .changes;
    assert_eq!(changes.len(), 2);
    assert!(changes.iter().all(|c| c.kind == ChangeKind::Delete));
    assert!(kv.leases(0, 10).unwrap().0.is_empty());
    assert_eq!(
        StateMachine::next_deadline(&kv),
        None,
        "nothing left to stamp for"
    );
}

/// A key keeps the revision it was created at through every later write, and starts a
/// new one once it was absent: deleted, or expired (even before the sweep deleted it).
/// Transactions compare it; it survives reopening the store.
#[test]
fn a_key_keeps_its_create_revision_until_it_is_absent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let mut kv = open_store(&path);
    let created = |kv: &KvStore| {
        let (t, _, _) = kv.get_timed(b"k").unwrap();
        t.map(|t| (t.created, t.value.version))
    };
    let put = |seq: u64| {
        let op = WriteOp::Put {
            key: b"k".to_vec(),
            value: format!("{seq}").into_bytes(),
            return_prev: false,
        };
        cmd(1, seq, op)
    };
    kv.apply_kv_at(0, Some(1000), &[put(1)]).unwrap();
    assert_eq!(created(&kv), Some((1, 1)));
    kv.apply_kv(1, &[put(2)]).unwrap();
    assert_eq!(created(&kv), Some((1, 2)), "an overwrite keeps it");
    let multi = WriteOp::MultiPut {
        pairs: vec![(b"k".to_vec(), b"m".to_vec())],
    };
    kv.apply_kv(2, &[cmd(1, 3, multi)]).unwrap();
    assert_eq!(created(&kv), Some((1, 3)), "a multi-put keeps it");
    drop(kv);
    let mut kv = open_store(&path);
    assert_eq!(created(&kv), Some((1, 3)), "kept across reopening");

    // Comparisons: equal to 1 holds, equal to the version does not, greater than 0 holds.
    let txn = |cmp: Compare| {
        WriteOp::Txn(Txn {
            compare: vec![cmp],
            success: vec![],
            failure: vec![],
        })
    };
    let succeeded = |r: &WriteResult| match r {
        WriteResult::Txn { succeeded, .. } => *succeeded,
        other => panic!("{other:?}"),
    };
    let rs = kv
        .apply_kv(
            3,
            &[
                cmd(1, 4, txn(Compare::create(b"k", CompareOp::Equal, 1))),
                cmd(1, 5, txn(Compare::create(b"k", CompareOp::Equal, 3))),
                cmd(1, 6, txn(Compare::create(b"k", CompareOp::Greater, 0))),
                cmd(1, 7, txn(Compare::create(b"absent", CompareOp::Equal, 0))),
            ],
        )
        .unwrap();
    assert_eq!(
        rs.iter().map(succeeded).collect::<Vec<_>>(),
        [true, false, true, true]
    );

    // Deleted, then written: a new create revision.
    let delete = WriteOp::Delete {
        key: b"k".to_vec(),
        return_prev: false,
    };
    kv.apply_kv(4, &[cmd(1, 8, delete), put(9)]).unwrap();
    assert_eq!(created(&kv), Some((5, 5)));

    // Expiring keeps it while live; once the log's time passes the deadline the key is
    // absent, and a write creates it again.
    let expiring = WriteOp::SetExpiring {
        key: b"k".to_vec(),
        value: b"e".to_vec(),
        cond: SetCond::Always,
        expiry: Expiry::Set(Deadline::At(1500)),
    };
    kv.apply_kv(5, &[cmd(1, 10, expiring)]).unwrap();
    assert_eq!(created(&kv), Some((5, 6)));
    kv.apply_kv_at(6, Some(2000), &[put(11)]).unwrap();
    let (c, v) = created(&kv).unwrap();
    assert_eq!(c, v, "written after it expired: created anew");
    assert!(c > 6);
}

/// The applier's write cache stays within its bounds, keeps only the keys an apply reads
/// back (values and session records, not history or index keys), and knows a delete.
#[test]
fn the_write_cache_is_bounded_and_keeps_what_applies_read() {
    let mut cache = super::WriteCache::default();
    let value = vec![7u8; 64 * 1024];
    for i in 0..2 * (super::WRITE_CACHE_BYTES / value.len()) {
        cache.wrote(vec![(
            Space::Kv,
            format!("k{i}").into_bytes(),
            Some(value.clone()),
        )]);
        assert!(
            cache.bytes <= super::WRITE_CACHE_BYTES,
            "{} bytes",
            cache.bytes
        );
    }
    for i in 0..2 * super::WRITE_CACHE_KEYS {
        cache.wrote(vec![(Space::Kv, format!("s{i}").into_bytes(), None)]);
        assert!(cache.kv.len() + cache.sm.len() <= super::WRITE_CACHE_KEYS);
    }
    cache.clear();
    let session = super::session_key(42).to_vec();
    cache.wrote(vec![
        (Space::Kv, b"a".to_vec(), Some(b"1".to_vec())),
        (Space::Sm, session.clone(), Some(b"rec".to_vec())),
        (Space::Sm, b"h-history".to_vec(), Some(b"x".to_vec())),
    ]);
    assert_eq!(cache.get(Space::Kv, b"a"), Some(&Some(b"1".to_vec())));
    assert_eq!(cache.get(Space::Sm, &session), Some(&Some(b"rec".to_vec())));
    assert_eq!(
        cache.get(Space::Sm, b"h-history"),
        None,
        "only session records of Sm"
    );
    assert_eq!(cache.get(Space::Kv, b"b"), None, "never written: unknown");
    cache.wrote(vec![(Space::Kv, b"a".to_vec(), None)]);
    assert_eq!(cache.get(Space::Kv, b"a"), Some(&None), "a delete is known");
    assert_eq!(cache.bytes, 2 * super::WRITE_CACHE_OVERHEAD + 1 + 9 + 3);
}

/// `get_value` (one point read where it can) answers what `get` (a consistent view with
/// the applied index) answers: for a plain value, a value with a deadline (which takes
/// the view), a leased value, a deleted and an absent key.
#[test]
fn get_value_answers_as_get_does() {
    let dir = tempfile::tempdir().unwrap();
    let mut kv = open_store(&dir.path().join("db"));
    let t0 = 1_000_000;
    let expiring = WriteOp::SetExpiring {
        key: b"expiring".to_vec(),
        value: b"e".to_vec(),
        cond: SetCond::Always,
        expiry: Expiry::Set(Deadline::At(t0 + 60_000)),
    };
    let grant = WriteOp::LeaseGrant {
        id: 7,
        ttl_ms: 60_000,
    };
    kv.apply_kv_at(0, Some(t0), &[cmd(1, 1, expiring), cmd(1, 2, grant)])
        .unwrap();
    let leased = WriteOp::PutLeased {
        key: b"leased".to_vec(),
        value: b"l".to_vec(),
        lease: 7,
        return_prev: false,
    };
    kv.apply_kv_at(
        1,
        Some(t0 + 1),
        &[
            cmd(1, 3, leased),
            put(2, 1, b"plain", b"p"),
            put(2, 2, b"gone", b"g"),
        ],
    )
    .unwrap();
    let delete = WriteOp::Delete {
        key: b"gone".to_vec(),
        return_prev: false,
    };
    kv.apply_kv(2, &[cmd(2, 3, delete)]).unwrap();
    for key in [&b"plain"[..], b"expiring", b"leased", b"gone", b"absent"] {
        let expected = kv.get(key).unwrap().0;
        assert_eq!(kv.get_value(key).unwrap(), expected, "{key:?}");
    }
    let value = |key: &[u8]| kv.get_value(key).unwrap().map(|v| v.value);
    assert_eq!(value(b"plain"), Some(b"p".to_vec()));
    assert_eq!(value(b"expiring"), Some(b"e".to_vec()));
    assert_eq!(value(b"leased"), Some(b"l".to_vec()));
    assert_eq!(value(b"gone"), None);
}
