//! [`KvHandle`]: the typed key-value API above the protocol-neutral
//! [`crate::node::NodeHandle`], what every listener (gRPC, HTTP/JSON, the Redis protocol),
//! the embedded API and the server's own bootstrap call for keys and values.
//!
//! A write is encoded into an opaque [`crate::machine::Command`], handed to the node with
//! [`NodeHandle::submit`], and its encoded [`WriteResult`] decoded here, once, into the
//! typed answer of the method that proposed it ([`PutResult`], [`DeleteResult`],
//! [`CasResult`], …; the Rust client returns the same types).
//! So no protocol layer matches the result union again: each gets the one shape it asked
//! for. Reads ask the node for a read barrier when they must be linearizable and then read
//! this node's [`KvStore`].
//!
//! # Invariants
//!
//! - A method returns the result of the very command it proposed: a decoded result of
//!   another kind can only mean the session's seq named another command, which the store
//!   refuses before applying, so it is reported as an internal error and never
//!   reinterpreted.
//! - Input is checked against the node's [`crate::command::Limits`] before anything is
//!   proposed: a refused write changes nothing.
//! - A linearizable read returns only after this node applied every write acknowledged
//!   before the read started; a stale one reports the applied index it reflects.

use crate::auth::UserChange;
use crate::command::LeaseInfo;
use crate::command::{
    Deadline, Expect, ExpireCond, Expiry, KeyValue, KvCommand, Limits, ScanRange, SetCond, Txn,
    TxnOpResult, Versioned, WriteOp, WriteResult,
};
use crate::error::{Error, Result};
use crate::kv::watch::{Watcher, Watchers, DEFAULT_MAX_WATCHERS};
use crate::kv::{KvStore, LeaseStatus, Timed, WatchFilter};
use crate::node::{Consistency, NodeHandle, DEFAULT_SCAN_LIMIT, MAX_SCAN_LIMIT};
use std::sync::Arc;

/// Who a write runs as and which exactly-once session slot it takes: the user whose
/// rights the state machine checks again where it applies the write (`None`: the node
/// itself), and the (client id, seq) pair a retry repeats to get the same answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Writer {
    pub user: Option<String>,
    pub client_id: u64,
    pub seq: u64,
}

impl Writer {
    /// A write by `user` in session `(client_id, seq)`.
    pub fn new(user: Option<String>, client_id: u64, seq: u64) -> Writer {
        Writer {
            user,
            client_id,
            seq,
        }
    }

    /// A write on the node's own behalf in a fresh session of its own (applied at most
    /// once; nobody retries it with the same seq).
    pub fn once(user: Option<String>) -> Writer {
        Writer::new(user, (rand::random::<u64>() >> 11).max(1), 1)
    }
}

/// Result of a put: the new version, and the previous value if it was asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutResult {
    pub version: u64,
    pub prev: Option<Versioned>,
}

/// Result of a delete: whether a value was there, and that value if it was asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeleteResult {
    pub deleted: bool,
    pub prev: Option<Versioned>,
}

/// Result of a compare-and-swap. A failed comparison is a value, not an error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CasResult {
    pub succeeded: bool,
    /// New version on success; current version (0 = absent) on failure.
    pub version: u64,
    /// Current value on failure.
    pub current: Option<Versioned>,
}

/// A conditional store ([`SetCond`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CondStored {
    pub applied: bool,
    /// The new version if applied, else the current one (0 = absent).
    pub version: u64,
    /// The value before, whether or not the store applied.
    pub prev: Option<Versioned>,
}

/// A counter after an increment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counter {
    pub value: i64,
    pub version: u64,
}

/// A value after an append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// Length of the value after the append.
    pub len: u64,
    pub version: u64,
}

/// Result of a transaction: whether every comparison held (the success branch ran), and
/// the result of each operation of the branch that ran, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnResult {
    pub succeeded: bool,
    pub results: Vec<TxnOpResult>,
}

/// Result of a scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanResult {
    pub items: Vec<KeyValue>,
    /// The limit cut the answer short.
    pub more: bool,
    /// The applied index the rows reflect.
    pub applied_index: u64,
}

/// The typed key-value API of one node. Cheap to clone.
#[derive(Clone)]
pub struct KvHandle {
    node: NodeHandle,
    store: KvStore,
    /// The live watchers of this handle and its clones, against their bound.
    watchers: Arc<Watchers>,
}

/// A result as an error when it says the write was not applied (a data refusal is
/// invalid input, a superseded session an unknown outcome, ...), else the result: the
/// typing every write through this handle gets, alone or inside a transaction.
pub fn not_applied(r: WriteResult) -> Result<WriteResult> {
    match r {
        WriteResult::Rejected(why) => Err(Error::InvalidInput(why)),
        WriteResult::Superseded(why) => Err(Error::OutcomeUnknown(why)),
        WriteResult::Denied(why) => Err(Error::PermissionDenied(why)),
        WriteResult::SessionReused(why) => Err(Error::SessionReused(why)),
        r => Ok(r),
    }
}

/// A decoded result of another kind than the command proposed (see the module docs).
fn mismatch(want: &str, got: WriteResult) -> Error {
    Error::Internal(format!("a {want} was answered with {got:?}"))
}

impl KvHandle {
    pub fn new(node: NodeHandle, store: KvStore) -> KvHandle {
        KvHandle {
            node,
            store,
            watchers: Watchers::new(DEFAULT_MAX_WATCHERS),
        }
    }

    /// The same handle with at most `max` live watchers (for it and its clones).
    pub fn with_max_watchers(mut self, max: usize) -> KvHandle {
        self.watchers = Watchers::new(max);
        self
    }

    /// The live watchers against their bound.
    pub fn watchers(&self) -> &Arc<Watchers> {
        &self.watchers
    }

    /// Watches the keys `filter` matches from revision `from` on, or, with `None`, from
    /// now: after a read barrier, so that no write acknowledged before the call is
    /// missed and none is replayed. [`Error::Compacted`] when the history no longer holds
    /// `from`; [`Error::Overloaded`] when this node serves its most watchers.
    pub async fn watch(&self, filter: WatchFilter, from: Option<u64>) -> Result<Watcher> {
        let from = match from {
            Some(from) => from,
            None => {
                self.node.read_barrier().await?;
                self.store.counters()?.1 + 1
            }
        };
        Watcher::start(self.store.clone(), &self.watchers, filter, from)
    }

    /// The node below (status, membership, admission).
    pub fn node(&self) -> &NodeHandle {
        &self.node
    }

    /// This node's store, for what reads it directly (the user table).
    pub fn store(&self) -> &KvStore {
        &self.store
    }

    pub fn limits(&self) -> Limits {
        self.node.limits()
    }

    /// Replicates `op` and returns its result once it is decided and applied here.
    async fn apply(&self, by: &Writer, op: WriteOp) -> Result<WriteResult> {
        if by.client_id == 0 || by.seq == 0 {
            return Err(Error::invalid(
                "a write needs a session: client_id and seq must be non-zero",
            ));
        }
        self.limits().check_write(&op)?;
        let cmd = KvCommand {
            client_id: by.client_id,
            seq: by.seq,
            op,
            user: by.user.clone(),
        };
        let bytes = self.node.submit(cmd.encode()).await?;
        let result: WriteResult = bincode::deserialize(&bytes)
            .map_err(|e| Error::Internal(format!("undecodable key-value result: {e}")))?;
        // Not-applied outcomes travel as `Outcome`s, never as a done result; kept typed
        // should an old entry still carry one.
        not_applied(result)
    }

    /// Replicates any key write (no user management: see [`KvHandle::user_change`]) and
    /// returns its result undecoded, for callers that decode results themselves (the
    /// Redis protocol's reply shapes).
    pub async fn write(&self, by: &Writer, op: WriteOp) -> Result<WriteResult> {
        if op.is_user_op() {
            return Err(Error::invalid("a user-table command is not a key write"));
        }
        self.apply(by, op).await
    }

    /// Stores `value` under `key`.
    pub async fn put(
        &self,
        by: &Writer,
        key: Vec<u8>,
        value: Vec<u8>,
        return_prev: bool,
    ) -> Result<PutResult> {
        let op = WriteOp::Put {
            key,
            value,
            return_prev,
        };
        match self.apply(by, op).await? {
            WriteResult::Put { version, prev } => Ok(PutResult { version, prev }),
            r => Err(mismatch("put", r)),
        }
    }

    /// Stores `value` under `key` attached to the live lease `lease` (the key is deleted
    /// when the lease ends); invalid input when the lease does not exist.
    pub async fn put_leased(
        &self,
        by: &Writer,
        key: Vec<u8>,
        value: Vec<u8>,
        lease: u64,
        return_prev: bool,
    ) -> Result<PutResult> {
        let op = WriteOp::PutLeased {
            key,
            value,
            lease,
            return_prev,
        };
        match self.apply(by, op).await? {
            WriteResult::Put { version, prev } => Ok(PutResult { version, prev }),
            r => Err(mismatch("put with a lease", r)),
        }
    }

    /// Grants a lease of `ttl_ms` (`id` 0: the cluster picks the id).
    pub async fn lease_grant(&self, by: &Writer, id: u64, ttl_ms: u64) -> Result<LeaseInfo> {
        match self.apply(by, WriteOp::LeaseGrant { id, ttl_ms }).await? {
            WriteResult::Lease(Some(info)) => Ok(info),
            r => Err(mismatch("lease grant", r)),
        }
    }

    /// Renews lease `id` for its whole time to live; `None` when it no longer exists
    /// (expired or revoked: its keys are gone or going).
    pub async fn lease_keep_alive(&self, by: &Writer, id: u64) -> Result<Option<LeaseInfo>> {
        match self.apply(by, WriteOp::LeaseKeepAlive { id }).await? {
            WriteResult::Lease(info) => Ok(info),
            r => Err(mismatch("lease keep-alive", r)),
        }
    }

    /// Ends lease `id` now, deleting its keys; whether it was live.
    pub async fn lease_revoke(&self, by: &Writer, id: u64) -> Result<bool> {
        match self.apply(by, WriteOp::LeaseRevoke { id }).await? {
            WriteResult::LeaseRevoked { existed } => Ok(existed),
            r => Err(mismatch("lease revoke", r)),
        }
    }

    /// The live lease `id` with up to `max_keys` of its keys (`None`: never granted,
    /// expired or revoked), and the milliseconds it has left, counted as a key's time to
    /// live is (see [`KvHandle::get_timed`]).
    pub async fn lease_time_to_live(
        &self,
        id: u64,
        max_keys: usize,
        consistency: Consistency,
    ) -> Result<Option<(LeaseStatus, u64)>> {
        self.node.prepare_read(consistency).await?;
        let (status, log_time) = self.store.lease(id, max_keys)?;
        let now = log_time.max((crate::node::system_clock())(std::time::Instant::now()));
        Ok(status.map(|s| {
            let left = s.info.deadline.saturating_sub(now);
            (s, left)
        }))
    }

    /// The live leases from id `from` on, at most `limit`, and whether more exist.
    pub async fn leases(
        &self,
        from: u64,
        limit: usize,
        consistency: Consistency,
    ) -> Result<(Vec<LeaseInfo>, bool)> {
        self.node.prepare_read(consistency).await?;
        self.store.leases(from, limit.clamp(1, MAX_SCAN_LIMIT))
    }

    /// Deletes `key` (not an error when it is absent).
    pub async fn delete(
        &self,
        by: &Writer,
        key: Vec<u8>,
        return_prev: bool,
    ) -> Result<DeleteResult> {
        match self.apply(by, WriteOp::Delete { key, return_prev }).await? {
            WriteResult::Delete { deleted, prev } => Ok(DeleteResult { deleted, prev }),
            r => Err(mismatch("delete", r)),
        }
    }

    /// Stores `new_value` under `key` if its current value or version is `expect`.
    pub async fn cas(
        &self,
        by: &Writer,
        key: Vec<u8>,
        expect: Expect,
        new_value: Vec<u8>,
    ) -> Result<CasResult> {
        let op = WriteOp::Cas {
            key,
            expect,
            new_value,
        };
        match self.apply(by, op).await? {
            WriteResult::Cas {
                succeeded,
                version,
                current,
            } => Ok(CasResult {
                succeeded,
                version,
                current,
            }),
            r => Err(mismatch("compare-and-swap", r)),
        }
    }

    /// Stores `value` under `key` if `cond` holds; reports the value before either way.
    pub async fn set(
        &self,
        by: &Writer,
        key: Vec<u8>,
        value: Vec<u8>,
        cond: SetCond,
    ) -> Result<CondStored> {
        self.cond_store(by, WriteOp::Set { key, value, cond }).await
    }

    /// Applies a conditional store (`Set` or `SetExpiring`) and decodes its result.
    async fn cond_store(&self, by: &Writer, op: WriteOp) -> Result<CondStored> {
        let name = op.name();
        match self.apply(by, op).await? {
            WriteResult::Set {
                applied,
                version,
                prev,
            } => Ok(CondStored {
                applied,
                version,
                prev,
            }),
            r => Err(mismatch(name, r)),
        }
    }

    /// Stores `value` under `key` if `cond` holds, setting or keeping its deadline;
    /// reports the value before either way.
    pub async fn set_expiring(
        &self,
        by: &Writer,
        key: Vec<u8>,
        value: Vec<u8>,
        cond: SetCond,
        expiry: Expiry,
    ) -> Result<CondStored> {
        let op = WriteOp::SetExpiring {
            key,
            value,
            cond,
            expiry,
        };
        self.cond_store(by, op).await
    }

    /// Sets (`None`: removes) the deadline of an existing key if `when` holds; whether it
    /// did, and the key's version after (0: absent, or deleted by a passed deadline).
    pub async fn expire(
        &self,
        by: &Writer,
        key: Vec<u8>,
        deadline: Option<Deadline>,
        when: ExpireCond,
    ) -> Result<(bool, u64)> {
        let op = WriteOp::Expire {
            key,
            deadline,
            when,
        };
        match self.apply(by, op).await? {
            WriteResult::Expire { applied, version } => Ok((applied, version)),
            r => Err(mismatch("expire", r)),
        }
    }

    /// Adds `delta` to the key's value read as a decimal i64 (absent = 0).
    pub async fn incr(&self, by: &Writer, key: Vec<u8>, delta: i64) -> Result<Counter> {
        match self.apply(by, WriteOp::Incr { key, delta }).await? {
            WriteResult::Incr { value, version } => Ok(Counter { value, version }),
            r => Err(mismatch("increment", r)),
        }
    }

    /// Appends `suffix` to the key's value, unless that would pass this node's value
    /// limit (carried in the command, so every replica decides the same).
    pub async fn append(&self, by: &Writer, key: Vec<u8>, suffix: Vec<u8>) -> Result<Appended> {
        let op = WriteOp::AppendUpTo {
            key,
            suffix,
            max_len: self.limits().max_value as u64,
        };
        match self.apply(by, op).await? {
            WriteResult::Append { len, version } => Ok(Appended { len, version }),
            r => Err(mismatch("append", r)),
        }
    }

    /// Stores every pair atomically; returns the version they all have now.
    pub async fn multi_put(&self, by: &Writer, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Result<u64> {
        match self.apply(by, WriteOp::MultiPut { pairs }).await? {
            WriteResult::MultiPut { version } => Ok(version),
            r => Err(mismatch("multi-put", r)),
        }
    }

    /// Runs `txn` atomically (see [`Txn`]). An operation the data refuses reports
    /// [`WriteResult::Rejected`] as its own result; a transaction a bound refuses as a
    /// whole is an `InvalidInput` error, and nothing changed.
    pub async fn txn(&self, by: &Writer, txn: Txn) -> Result<TxnResult> {
        match self.apply(by, WriteOp::Txn(txn)).await? {
            WriteResult::Txn { succeeded, results } => Ok(TxnResult { succeeded, results }),
            r => Err(mismatch("transaction", r)),
        }
    }

    /// Creates or changes user `name`; whether the user table changed.
    pub async fn set_user(
        &self,
        by: &Writer,
        name: String,
        change: UserChange,
        only_if_no_users: bool,
    ) -> Result<bool> {
        let op = WriteOp::SetUser {
            name,
            change,
            only_if_no_users,
        };
        self.user_change(by, op).await
    }

    /// Deletes user `name`; whether it existed.
    pub async fn delete_user(&self, by: &Writer, name: String) -> Result<bool> {
        self.user_change(by, WriteOp::DeleteUser { name }).await
    }

    /// Applies a user-table command (as built by [`crate::auth`]: tokens, revocations);
    /// whether it changed the user table.
    pub async fn user_change(&self, by: &Writer, op: WriteOp) -> Result<bool> {
        if !op.is_user_op() {
            return Err(Error::invalid("not a user-table command"));
        }
        match self.apply(by, op).await? {
            WriteResult::User { changed } => Ok(changed),
            r => Err(mismatch("user change", r)),
        }
    }

    /// Reads one key; returns the value (if any) and the applied index it reflects.
    pub async fn get(
        &self,
        key: &[u8],
        consistency: Consistency,
    ) -> Result<(Option<Versioned>, u64)> {
        self.limits().check_key(key)?;
        self.node.prepare_read(consistency).await?;
        self.store.get(key)
    }

    /// Reads one key's value, without the applied index (see [`KvStore::get_value`]).
    pub async fn get_value(
        &self,
        key: &[u8],
        consistency: Consistency,
    ) -> Result<Option<Versioned>> {
        self.limits().check_key(key)?;
        self.node.prepare_read(consistency).await?;
        self.store.get_value(key)
    }

    /// Reads one key with its deadline; returns it with the applied index it reflects and
    /// the time to count a remaining time to live from (deadline minus it; 0 for a key
    /// without a deadline): the log's time the read reflects, or this node's clock if it
    /// is later. The log's time moves only with stamped entries (writes that need it, and
    /// expiries), so between them a time to live counts down by this node's clock; whether
    /// the key is visible depends on the log's time alone.
    pub async fn get_timed(
        &self,
        key: &[u8],
        consistency: Consistency,
    ) -> Result<(Option<Timed>, u64, u64)> {
        self.limits().check_key(key)?;
        self.node.prepare_read(consistency).await?;
        let (timed, applied, log_time) = self.store.get_timed(key)?;
        let now = match &timed {
            Some(t) if t.deadline.is_some() => {
                log_time.max((crate::node::system_clock())(std::time::Instant::now()))
            }
            _ => 0,
        };
        Ok((timed, applied, now))
    }

    /// Scans a range: at most `limit` rows (0 = the default, capped at the maximum).
    pub async fn scan(
        &self,
        range: &ScanRange,
        limit: usize,
        consistency: Consistency,
    ) -> Result<ScanResult> {
        let limit = match limit {
            0 => DEFAULT_SCAN_LIMIT,
            n => n.min(MAX_SCAN_LIMIT),
        };
        if let ScanRange::Range { from, to: Some(to) } = range {
            if to < from {
                return Err(Error::invalid("scan range end is before its start"));
            }
        }
        self.node.prepare_read(consistency).await?;
        let (items, more, applied_index) = self.store.scan(range, limit)?;
        Ok(ScanResult {
            items,
            more,
            applied_index,
        })
    }
}
