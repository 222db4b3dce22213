//! The key-value vocabulary: what a KV write is, what it returns, and its limits.
//! The writes it applies ([`WriteOp`], with their
//! session in a [`KvCommand`]), their results ([`WriteResult`]), reads and limits. The
//! log itself is opaque to it (see [`crate::machine`]): a [`LogEntry`] carries commands
//! whose payload is an encoded [`WriteOp`] for the KV machine.
//!
//! Byte strings are serialized as bytes (`serde_bytes`), not as sequences of numbers:
//! bincode then copies them in one go, which matters for megabyte values (the encoding
//! on disk and on the wire is the same either way).
//!
//! Every command carries a session (`client_id`, `seq`); the state machine applies a
//! session's command at most once and remembers its result for retries.

use serde::{Deserialize, Serialize};

pub use crate::machine::{Command, LogEntry, NodeId};

/// A key-value write with its session: what the KV store applies. In the log it travels
/// as an opaque [`Command`] for [`crate::machine::Machine::Kv`] ([`KvCommand::encode`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvCommand {
    pub client_id: u64,
    pub seq: u64,
    pub op: WriteOp,
    /// The user it runs as (see [`Command::user`]).
    pub user: Option<String>,
}

impl KvCommand {
    /// The command as the log carries it.
    pub fn encode(&self) -> Command {
        Command {
            client_id: self.client_id,
            seq: self.seq,
            user: self.user.clone(),
            machine: crate::machine::Machine::Kv,
            payload: bincode::serialize(&self.op).expect("a write op serializes"),
        }
    }

    /// The typed command inside `cmd` (which must be a KV command).
    pub fn decode(cmd: &Command) -> Result<KvCommand, String> {
        let op = bincode::deserialize(&cmd.payload)
            .map_err(|e| format!("not a key-value command: {e}"))?;
        Ok(KvCommand {
            client_id: cmd.client_id,
            seq: cmd.seq,
            op,
            user: cmd.user.clone(),
        })
    }
}

/// A state-changing operation on the key-value store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOp {
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        return_prev: bool,
    },
    Delete {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        return_prev: bool,
    },
    Cas {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        expect: Expect,
        #[serde(with = "serde_bytes")]
        new_value: Vec<u8>,
    },
    /// Stores `value` if `cond` holds; always reports the previous value.
    Set {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        cond: SetCond,
    },
    /// Adds `delta` to the key's value read as a decimal i64 (absent = 0).
    Incr {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        delta: i64,
    },
    /// Appends `suffix` to the key's value (absent = empty), unless the value would then
    /// be longer than [`LEGACY_APPEND_MAX`]. Only in logs written before [`WriteOp::AppendUpTo`]
    /// existed; nothing proposes it any more (kept so that such logs still decode and apply
    /// as they did).
    Append {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        suffix: Vec<u8>,
    },
    /// Stores every pair, atomically (all in one apply).
    MultiPut { pairs: Vec<(Vec<u8>, Vec<u8>)> },
    /// Appends `suffix` to the key's value (absent = empty), unless the value would then
    /// be longer than `max_len` (the proposing node's value limit, carried in the command
    /// so that every node decides the same, whatever its own configuration). A new variant
    /// at the end, so that log entries written before it decode unchanged.
    AppendUpTo {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        suffix: Vec<u8>,
        max_len: u64,
    },
    /// Creates or changes a user (see [`crate::auth`]): secrets arrive hashed. With
    /// `only_if_no_users`, applies only while the user table is empty (the bootstrap
    /// administrator: proposed by every node that has `--admin-password-file`, applied
    /// once). Never touches the user data space.
    SetUser {
        name: String,
        change: crate::auth::UserChange,
        only_if_no_users: bool,
    },
    /// Deletes a user (with its passwords and tokens).
    DeleteUser { name: String },
    /// An atomic multi-key transaction ([`Txn`]). A new variant at the end, so that log
    /// entries written before it decode unchanged.
    Txn(Txn),
    /// Redis `SET` with an expiry: stores `value` if `cond` holds, keeping the key's
    /// deadline or setting a new one ([`Expiry`]); reports the previous value as
    /// [`WriteOp::Set`] does. (A plain `Set` or `Put` clears a deadline.)
    SetExpiring {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        cond: SetCond,
        expiry: Expiry,
    },
    /// Changes the deadline of an existing key if `when` holds (Redis `EXPIRE` and its
    /// family, `PERSIST`; `None`: never expires). A deadline the log's time has reached
    /// deletes the key.
    Expire {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        deadline: Option<Deadline>,
        when: ExpireCond,
    },
    /// Grants a lease (etcd's `LeaseGrant`) that ends `ttl_ms` after the entry's time
    /// unless kept alive; `id` 0: the store picks the next free id. See `kv::lease`.
    LeaseGrant { id: u64, ttl_ms: u64 },
    /// Renews a live lease for its whole time to live (etcd's `LeaseKeepAlive`).
    LeaseKeepAlive { id: u64 },
    /// Ends a lease now: every key attached to it is deleted.
    LeaseRevoke { id: u64 },
    /// A put that attaches the key to a live lease (etcd's `put --lease`): the key is
    /// deleted when the lease ends. Any other write of the key detaches it.
    PutLeased {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        lease: u64,
        return_prev: bool,
    },
}

/// The shortest time to live a lease may be granted (shorter would end within an
/// election).
pub const MIN_LEASE_TTL_MS: u64 = 1000;
/// The longest time to live a lease may be granted (a year).
pub const MAX_LEASE_TTL_MS: u64 = 365 * 24 * 3600 * 1000;

/// A lease as a grant or keep-alive leaves it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    pub id: u64,
    /// The time to live it was granted, renewed by each keep-alive.
    pub ttl_ms: u64,
    /// When it ends unless kept alive, in log time (ms since the Unix epoch); a later
    /// leader change may move it later, never earlier.
    pub deadline: u64,
}

/// When a key expires, in the log's time (milliseconds since the Unix epoch, as the
/// leaders' clocks stamp the log; see [`crate::machine::Machine::Clock`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Deadline {
    /// At this time (Redis `EXAT`, `PXAT`, `EXPIREAT`).
    At(u64),
    /// This many ms after the time of the entry that applies it (Redis `EX`, `PX`,
    /// `EXPIRE`): the leader's clock, never the proposing node's.
    In(u64),
}

impl Deadline {
    /// The deadline in log time, for an entry at log time `now`.
    pub fn resolve(self, now: u64) -> u64 {
        match self {
            Deadline::At(t) => t,
            Deadline::In(ms) => now.saturating_add(ms),
        }
    }
}

/// What a [`WriteOp::SetExpiring`] does with the key's deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expiry {
    /// Keeps it (Redis `KEEPTTL`).
    Keep,
    /// Sets it.
    Set(Deadline),
}

/// When a [`WriteOp::Expire`] applies (Redis' `NX`, `XX`, `GT`, `LT`); never to an absent
/// key. A key without a deadline counts as expiring never: later than any deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpireCond {
    Always,
    /// Only if the key has no deadline.
    IfNone,
    /// Only if the key has a deadline.
    IfSome,
    /// Only if the new deadline is later than the current one.
    Later,
    /// Only if the new deadline is earlier than the current one.
    Earlier,
    /// Only if the key has a deadline and the new one is earlier (Redis `XX LT`).
    EarlierIfSome,
}

/// The most comparisons plus operations one [`Txn`] may hold.
pub const MAX_TXN_OPS: usize = 1024;

/// The most keys the [`TxnOp::DeleteRange`]s of one transaction may delete in all: a
/// transaction that would delete more is refused as a whole (nothing changes), so that
/// no single entry makes apply write an unbounded batch.
pub const MAX_TXN_DELETE_RANGE: usize = 10_000;

/// An atomic multi-key transaction, etcd's model: every comparison is evaluated against
/// the store as of the transaction's place in the log; if all hold, `success` runs, else
/// `failure`, in order, each operation seeing the ones before it. It is applied in one
/// log entry (nothing else interleaves) and answers with the result of every operation
/// of the branch that ran ([`WriteResult::Txn`]).
///
/// Each change takes its own revision, as every change does. An operation that the data
/// refuses (an increment of a non-number, an append over the limit) reports
/// [`WriteResult::Rejected`] as its own result and changes nothing, and the others still
/// run (as Redis runs the rest of a `MULTI` block); only a bound ([`MAX_TXN_DELETE_RANGE`],
/// the read budget) refuses the whole transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

/// One comparison of a [`Txn`]: `key`'s `target` compared with `op`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    pub op: CompareOp,
    pub target: CompareTarget,
}

/// How a [`Compare`] compares the current state (left) with its target (right).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Less,
    Greater,
}

impl CompareOp {
    /// Whether `current op target` holds.
    pub fn holds<T: Ord + ?Sized>(self, current: &T, target: &T) -> bool {
        match self {
            CompareOp::Equal => current == target,
            CompareOp::NotEqual => current != target,
            CompareOp::Less => current < target,
            CompareOp::Greater => current > target,
        }
    }
}

/// What a [`Compare`] looks at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The key's value, bytewise. A comparison of an absent key's value never holds.
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The key's version (the revision of its last write; 0 = absent): `Version(0)`
    /// `Equal` means "absent", `Greater` means "present".
    Version(u64),
    /// The key's create revision: the revision of the write that made it exist after it
    /// was absent (0 = absent). A key deleted and written again has a new one; a value
    /// last written before data format 6 reads its last write's revision.
    Create(u64),
}

/// One operation of a [`Txn`] branch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    /// Reads one key.
    Get {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Reads a range: at most `limit` rows (0 = the scan default, capped at the scan
    /// maximum).
    Range { range: ScanRange, limit: u32 },
    /// Any key-value write but user management and another transaction.
    Write(WriteOp),
    /// Deletes every key of the range (at most [`MAX_TXN_DELETE_RANGE`]).
    DeleteRange { range: ScanRange },
}

/// The result of one [`TxnOp`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOpResult {
    Get(Option<Versioned>),
    Range { items: Vec<KeyValue>, more: bool },
    Write(WriteResult),
    DeleteRange { deleted: u64 },
}

impl Compare {
    /// `key`'s version `op` `version` (0 = absent).
    pub fn version(key: &[u8], op: CompareOp, version: u64) -> Compare {
        Compare {
            key: key.to_vec(),
            op,
            target: CompareTarget::Version(version),
        }
    }

    /// `key`'s create revision `op` `revision` (0 = absent).
    pub fn create(key: &[u8], op: CompareOp, revision: u64) -> Compare {
        Compare {
            key: key.to_vec(),
            op,
            target: CompareTarget::Create(revision),
        }
    }

    /// `key`'s value `op` `value` (never holds for an absent key).
    pub fn value(key: &[u8], op: CompareOp, value: &[u8]) -> Compare {
        Compare {
            key: key.to_vec(),
            op,
            target: CompareTarget::Value(value.to_vec()),
        }
    }
}

impl TxnOp {
    pub fn get(key: &[u8]) -> TxnOp {
        TxnOp::Get { key: key.to_vec() }
    }

    pub fn put(key: &[u8], value: &[u8]) -> TxnOp {
        TxnOp::Write(WriteOp::Put {
            key: key.to_vec(),
            value: value.to_vec(),
            return_prev: false,
        })
    }

    pub fn delete(key: &[u8]) -> TxnOp {
        TxnOp::Write(WriteOp::Delete {
            key: key.to_vec(),
            return_prev: false,
        })
    }
}

impl Txn {
    /// Every single key the transaction names (compared, read or written).
    pub fn keys(&self) -> Vec<&[u8]> {
        let mut keys: Vec<&[u8]> = self.compare.iter().map(|c| c.key.as_slice()).collect();
        for op in self.success.iter().chain(&self.failure) {
            match op {
                TxnOp::Get { key } => keys.push(key),
                TxnOp::Write(w) => keys.extend(w.keys()),
                TxnOp::Range { .. } | TxnOp::DeleteRange { .. } => {}
            }
        }
        keys
    }

    /// Whether an operation of either branch changes anything.
    pub fn writes(&self) -> bool {
        (self.success.iter().chain(&self.failure))
            .any(|op| matches!(op, TxnOp::Write(_) | TxnOp::DeleteRange { .. }))
    }

    /// Every range the transaction reads or deletes.
    pub fn ranges(&self) -> Vec<&ScanRange> {
        (self.success.iter().chain(&self.failure))
            .filter_map(|op| match op {
                TxnOp::Range { range, .. } | TxnOp::DeleteRange { range } => Some(range),
                _ => None,
            })
            .collect()
    }

    fn ops(&self) -> usize {
        self.compare.len() + self.success.len() + self.failure.len()
    }

    fn size(&self) -> usize {
        let compares: usize = (self.compare.iter())
            .map(|c| match &c.target {
                CompareTarget::Value(v) => c.key.len() + v.len() + 8,
                CompareTarget::Version(_) | CompareTarget::Create(_) => c.key.len() + 16,
            })
            .sum();
        let ops: usize = (self.success.iter().chain(&self.failure))
            .map(|op| match op {
                TxnOp::Get { key } => key.len() + 8,
                TxnOp::Range { range, .. } | TxnOp::DeleteRange { range } => range.size() + 8,
                TxnOp::Write(w) => w.size(),
            })
            .sum();
        compares + ops + 16
    }
}

/// The largest value a legacy [`WriteOp::Append`] may produce (what apply decided before
/// appends carried their limit).
pub const LEGACY_APPEND_MAX: u64 = 16 * 1024 * 1024;

/// When a [`WriteOp::Set`] applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetCond {
    Always,
    /// Only if the key is absent (Redis `NX`).
    IfAbsent,
    /// Only if the key exists (Redis `XX`).
    IfPresent,
}

/// The phrase every "this session's seq names another command" error contains, so that
/// protocol layers can report it under their own code (HTTP: `session_reused`). Owned by
/// [`crate::session`]; named here too for the protocol layers that import it from here.
pub use crate::session::SESSION_REUSED;

impl WriteOp {
    /// Every key the operation writes.
    pub fn keys(&self) -> Vec<&[u8]> {
        match self {
            WriteOp::Put { key, .. }
            | WriteOp::Delete { key, .. }
            | WriteOp::Cas { key, .. }
            | WriteOp::Set { key, .. }
            | WriteOp::Incr { key, .. }
            | WriteOp::Append { key, .. }
            | WriteOp::AppendUpTo { key, .. }
            | WriteOp::SetExpiring { key, .. }
            | WriteOp::PutLeased { key, .. }
            | WriteOp::Expire { key, .. } => vec![key],
            WriteOp::MultiPut { pairs } => pairs.iter().map(|(k, _)| k.as_slice()).collect(),
            WriteOp::SetUser { .. }
            | WriteOp::DeleteUser { .. }
            | WriteOp::LeaseGrant { .. }
            | WriteOp::LeaseKeepAlive { .. }
            | WriteOp::LeaseRevoke { .. } => vec![],
            WriteOp::Txn(t) => t.keys(),
        }
    }

    /// The operation's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            WriteOp::Put { .. } => "put",
            WriteOp::Delete { .. } => "delete",
            WriteOp::Cas { .. } => "compare-and-swap",
            WriteOp::Set { .. } => "conditional set",
            WriteOp::Incr { .. } => "incr",
            WriteOp::Append { .. } | WriteOp::AppendUpTo { .. } => "append",
            WriteOp::MultiPut { .. } => "multi-put",
            WriteOp::SetUser { .. } => "set-user",
            WriteOp::DeleteUser { .. } => "delete-user",
            WriteOp::Txn(_) => "transaction",
            WriteOp::SetExpiring { .. } => "set with expiry",
            WriteOp::Expire { .. } => "expire",
            WriteOp::LeaseGrant { .. } => "lease grant",
            WriteOp::LeaseKeepAlive { .. } => "lease keep-alive",
            WriteOp::LeaseRevoke { .. } => "lease revoke",
            WriteOp::PutLeased { .. } => "put with a lease",
        }
    }

    /// True for user management (which names no key and needs the admin role).
    pub fn is_user_op(&self) -> bool {
        matches!(self, WriteOp::SetUser { .. } | WriteOp::DeleteUser { .. })
    }

    /// Whether a transaction may hold the operation: not user management, not a lease's
    /// own operations (a refused transaction undoes its key writes only), not another
    /// transaction.
    pub fn in_txn(&self) -> bool {
        !(self.is_user_op() || self.is_lease_op() || matches!(self, WriteOp::Txn(_)))
    }

    /// True for a lease's own operations (which name no key).
    pub fn is_lease_op(&self) -> bool {
        matches!(
            self,
            WriteOp::LeaseGrant { .. }
                | WriteOp::LeaseKeepAlive { .. }
                | WriteOp::LeaseRevoke { .. }
        )
    }

    /// Approximate encoded size, used to bound batch sizes.
    pub fn size(&self) -> usize {
        match self {
            WriteOp::Put { key, value, .. } => key.len() + value.len() + 16,
            WriteOp::Delete { key, .. } => key.len() + 16,
            WriteOp::Cas {
                key,
                expect,
                new_value,
            } => {
                let e = match expect {
                    Expect::Value(v) => v.len(),
                    Expect::Version(_) => 8,
                };
                key.len() + new_value.len() + e + 16
            }
            WriteOp::Set { key, value, .. } => key.len() + value.len() + 16,
            WriteOp::Incr { key, .. } => key.len() + 24,
            WriteOp::Append { key, suffix } | WriteOp::AppendUpTo { key, suffix, .. } => {
                key.len() + suffix.len() + 24
            }
            WriteOp::MultiPut { pairs } => pairs.iter().map(|(k, v)| k.len() + v.len() + 8).sum(),
            WriteOp::SetUser { name, change, .. } => {
                name.len()
                    + change.prefix.as_ref().map_or(0, |p| p.len())
                    + change.add_passwords.iter().map(String::len).sum::<usize>()
                    + change
                        .add_token
                        .as_ref()
                        .map_or(0, |t| t.id.len() + t.hash.len())
                    + 32
            }
            WriteOp::DeleteUser { name } => name.len() + 16,
            WriteOp::Txn(t) => t.size(),
            WriteOp::SetExpiring { key, value, .. } => key.len() + value.len() + 32,
            WriteOp::Expire { key, .. } => key.len() + 24,
            WriteOp::LeaseGrant { .. }
            | WriteOp::LeaseKeepAlive { .. }
            | WriteOp::LeaseRevoke { .. } => 24,
            WriteOp::PutLeased { key, value, .. } => key.len() + value.len() + 24,
        }
    }
}

/// What a compare-and-swap compares.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expect {
    /// The current value equals this (an absent key never matches).
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The current version equals this (an absent key has version 0).
    Version(u64),
}

/// A stored value with its version: the revision of the key's last write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versioned {
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub version: u64,
}

/// The outcome of an applied [`WriteOp`]. Deterministic: every node computes the same.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteResult {
    Put {
        version: u64,
        prev: Option<Versioned>,
    },
    Delete {
        deleted: bool,
        prev: Option<Versioned>,
    },
    Cas {
        succeeded: bool,
        /// The new version on success, the current one (0 = absent) on failure.
        version: u64,
        /// The current value on failure.
        current: Option<Versioned>,
    },
    Set {
        applied: bool,
        /// The new version if applied, else the current one (0 = absent).
        version: u64,
        prev: Option<Versioned>,
    },
    Incr {
        value: i64,
        version: u64,
    },
    Append {
        /// Length of the value after the append.
        len: u64,
        version: u64,
    },
    MultiPut {
        /// The version all the pairs now have.
        version: u64,
    },
    /// The command was not applied: the data does not allow it (INCR of a non-number).
    /// Nothing changed.
    Rejected(String),
    /// The session can no longer tell this command's outcome in full: either the session
    /// has moved past this seq (this command was not applied now, and whether an earlier
    /// attempt was is no longer known), or it was applied earlier but the value its
    /// result carried was too large to keep and has been overwritten since. An unknown
    /// outcome, not a failure.
    Superseded(String),
    /// A user management command: whether it changed the user table (false: a bootstrap
    /// when users already exist, or the delete of an absent user).
    User {
        changed: bool,
    },
    /// Not applied: the user it runs as may not do this any more where it was applied
    /// (demoted, disabled or deleted since it was proposed). Nothing changed.
    Denied(String),
    /// Not applied: its session's seq was already used for a different command. Nothing
    /// changed. (After the older variants, so that their encodings keep their numbers.)
    SessionReused(String),
    /// A [`Txn`]: whether every comparison held, and the result of each operation of the
    /// branch that ran.
    Txn {
        succeeded: bool,
        results: Vec<TxnOpResult>,
    },
    /// A [`WriteOp::Expire`]: whether the deadline changed (or the key was deleted, its
    /// new deadline having passed), and the key's version after it (0 = absent).
    Expire {
        applied: bool,
        version: u64,
    },
    /// A lease granted or kept alive; `None`: no such live lease (never granted,
    /// expired or revoked).
    Lease(Option<LeaseInfo>),
    /// A [`WriteOp::LeaseRevoke`]: whether the lease was live.
    LeaseRevoked {
        existed: bool,
    },
}

/// A key range for scans.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScanRange {
    /// Every key starting with these bytes.
    Prefix(#[serde(with = "serde_bytes")] Vec<u8>),
    /// `from` inclusive to `to` exclusive; `None` means unbounded.
    Range {
        #[serde(with = "serde_bytes")]
        from: Vec<u8>,
        to: Option<Vec<u8>>,
    },
}

impl ScanRange {
    /// The first key of the range.
    pub fn start(&self) -> &[u8] {
        match self {
            ScanRange::Prefix(p) => p,
            ScanRange::Range { from, .. } => from,
        }
    }

    fn size(&self) -> usize {
        match self {
            ScanRange::Prefix(p) => p.len(),
            ScanRange::Range { from, to } => from.len() + to.as_ref().map_or(0, Vec::len),
        }
    }

    /// True when `key` (at or after `start()`) is still inside the range.
    pub fn contains_from_start(&self, key: &[u8]) -> bool {
        match self {
            ScanRange::Prefix(p) => key.starts_with(p),
            ScanRange::Range { to: Some(to), .. } => key < to.as_slice(),
            ScanRange::Range { to: None, .. } => true,
        }
    }
}

/// One row of a scan result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub version: u64,
}

/// Size limits for keys and values, checked before anything is proposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_key: usize,
    pub max_value: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key: 4 * 1024,
            max_value: 1024 * 1024,
        }
    }
}

impl Limits {
    pub fn check_key(&self, key: &[u8]) -> crate::Result<()> {
        if key.is_empty() {
            return Err(crate::Error::invalid("key must not be empty"));
        }
        if key.len() > self.max_key {
            return Err(crate::Error::too_large(format!(
                "key is {} bytes; the limit is {} bytes",
                key.len(),
                self.max_key
            )));
        }
        Ok(())
    }

    pub fn check_value(&self, value: &[u8]) -> crate::Result<()> {
        if value.len() > self.max_value {
            return Err(crate::Error::too_large(format!(
                "value is {} bytes; the limit is {} bytes (see --max-value-size)",
                value.len(),
                self.max_value
            )));
        }
        Ok(())
    }

    /// Validates a write before it is proposed.
    pub fn check_write(&self, op: &WriteOp) -> crate::Result<()> {
        match op {
            WriteOp::SetUser { name, change, .. } => {
                crate::auth::check_name(name)?;
                return change.check(self.max_key);
            }
            WriteOp::DeleteUser { name } => return crate::auth::check_name(name),
            WriteOp::Txn(t) => return self.check_txn(t),
            WriteOp::LeaseGrant { ttl_ms, .. } => {
                if !(MIN_LEASE_TTL_MS..=MAX_LEASE_TTL_MS).contains(ttl_ms) {
                    return Err(crate::Error::invalid(format!(
                        "a lease's time to live must be between {} s and {} days; {ttl_ms} ms \
                         was asked",
                        MIN_LEASE_TTL_MS / 1000,
                        MAX_LEASE_TTL_MS / 86_400_000
                    )));
                }
                return Ok(());
            }
            WriteOp::LeaseKeepAlive { id } | WriteOp::LeaseRevoke { id } => {
                if *id == 0 {
                    return Err(crate::Error::invalid("lease id 0 names no lease"));
                }
                return Ok(());
            }
            WriteOp::PutLeased { lease: 0, .. } => {
                return Err(crate::Error::invalid("lease id 0 names no lease"));
            }
            _ => {}
        }
        let keys = op.keys();
        if keys.is_empty() {
            return Err(crate::Error::invalid("the operation names no key"));
        }
        for k in keys {
            self.check_key(k)?;
        }
        match op {
            WriteOp::Put { value, .. }
            | WriteOp::Set { value, .. }
            | WriteOp::PutLeased { value, .. }
            | WriteOp::SetExpiring { value, .. } => self.check_value(value),
            WriteOp::Append { suffix, .. } => self.check_value(suffix),
            WriteOp::AppendUpTo {
                suffix, max_len, ..
            } => {
                if *max_len > self.max_value as u64 {
                    return Err(crate::Error::too_large(format!(
                        "an append may not grow a value beyond the value limit of {} bytes",
                        self.max_value
                    )));
                }
                self.check_value(suffix)
            }
            WriteOp::MultiPut { pairs } => {
                let total: usize = pairs.iter().map(|(k, v)| k.len() + v.len()).sum();
                if total > 4 * self.max_value {
                    return Err(crate::Error::too_large(format!(
                        "a multi-put of {total} bytes exceeds 4 × the value limit"
                    )));
                }
                pairs.iter().try_for_each(|(_, v)| self.check_value(v))
            }
            WriteOp::Delete { .. }
            | WriteOp::Incr { .. }
            | WriteOp::SetUser { .. }
            | WriteOp::DeleteUser { .. }
            | WriteOp::Txn(_)
            | WriteOp::LeaseGrant { .. }
            | WriteOp::LeaseKeepAlive { .. }
            | WriteOp::LeaseRevoke { .. }
            | WriteOp::Expire { .. } => Ok(()),
            WriteOp::Cas {
                expect, new_value, ..
            } => {
                if let Expect::Value(v) = expect {
                    self.check_value(v)?;
                }
                self.check_value(new_value)
            }
        }
    }
}

impl Limits {
    /// Validates a transaction before it is proposed: its size, every key, value and
    /// range, and that it nests no user management or other transaction.
    fn check_txn(&self, t: &Txn) -> crate::Result<()> {
        if t.ops() > MAX_TXN_OPS {
            return Err(crate::Error::invalid(format!(
                "a transaction holds {} comparisons and operations; the limit is {MAX_TXN_OPS}",
                t.ops()
            )));
        }
        let size = t.size();
        if size > 4 * self.max_value {
            return Err(crate::Error::too_large(format!(
                "a transaction of {size} bytes exceeds 4 × the value limit"
            )));
        }
        for c in &t.compare {
            self.check_key(&c.key)?;
            if let CompareTarget::Value(v) = &c.target {
                self.check_value(v)?;
            }
        }
        for op in t.success.iter().chain(&t.failure) {
            match op {
                TxnOp::Get { key } => self.check_key(key)?,
                TxnOp::Range { range, .. } | TxnOp::DeleteRange { range } => {
                    if let ScanRange::Range { from, to: Some(to) } = range {
                        if to < from {
                            return Err(crate::Error::invalid("a range's end is before its start"));
                        }
                    }
                }
                TxnOp::Write(w) if !w.in_txn() => {
                    return Err(crate::Error::invalid(
                        "a transaction may not hold user management, a lease's grant, \
                         keep-alive or revoke, or another transaction (a put with a lease \
                         is fine)",
                    ))
                }
                TxnOp::Write(w) => self.check_write(w)?,
            }
        }
        Ok(())
    }
}

/// The smallest key after every key that starts with `prefix` (`None`: no bound, the
/// prefix is empty or all 0xff), for turning a prefix into a key range.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}
