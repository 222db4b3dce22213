//! What a data command asks of the store, written once for both ways it runs: alone, and
//! queued in a `MULTI` block that `EXEC` turns into one [`crate::command::Txn`].
//!
//! [`Plan::of`] turns a [`RespCommand`] into the single-key reads and the [`WriteOp`]s it
//! needs (the same ops whether it runs alone or in a transaction), plus the shape of its
//! reply. Alone, `exec.rs` runs the reads after one read barrier and proposes each write
//! through [`crate::kv::KvHandle::write`]; in `EXEC`, `txn.rs` puts every queued plan's reads
//! ([`TxnOp::Get`]) and writes ([`TxnOp::Write`]) into one transaction. Either way the
//! reply is built from the results by the same code ([`ReadReply`],
//! [`WriteShape::reply`]), so a command answers the same inside `EXEC` as it does alone.
//!
//! No data command paxosdb has needs a read of its own before it writes: the ones that
//! look like read-then-write (`GETDEL`, `SETNX`, `SET ... GET`, `INCR`, `APPEND`, `CAS`,
//! `SET ... KEEPTTL`, `EXPIRE ... NX|XX|GT|LT`, `PERSIST`) are each one [`WriteOp`] that
//! reads and writes where it is applied, and `MSET` is one `MultiPut`. `GETEX` with an
//! option is a read and a write ([`Plan::GetAndWrite`]) that are one transaction even
//! alone, so nothing comes between them. So inside a transaction, where each op sees the
//! ones before it, each means what it means alone, and none has to be refused for
//! needing two round trips.
//!
//! Expiry: a relative time (`EX`, `PX`, `EXPIRE`, `SETEX`, ...) is a
//! [`Deadline::In`], resolved with the log's time where the op is applied, never with
//! this node's clock; an absolute one (`EXAT`, `EXPIREAT`, ...) a [`Deadline::At`].
//! A plain `SET` / `MSET` clears a key's deadline, `SET ... KEEPTTL`, `INCR` and
//! `APPEND` keep it (as Redis). Two commands have no plan and run only alone, because a
//! transaction's reads carry no deadlines: `TTL` and its family (`PTTL`, `EXPIRETIME`,
//! `PEXPIRETIME`, a read of the deadline with [`crate::kv::KvHandle::get_timed`]).
//!
//! Invariants:
//! - a key that could never be stored (empty, longer than the key limit) is absent: its
//!   read becomes no op at all and reads as nil, its `DEL` deletes nothing, its `GETDEL`
//!   and `GETEX` answer nil, its `EXPIRE` and `PERSIST` 0; so a plan's ops always pass
//!   the node's limits on keys;
//! - a plan's ops are exactly what the command proposes alone; only how many log entries
//!   carry them differs (`DEL k1 k2` alone is one write per key, as before; in `EXEC`
//!   both are in the transaction's one entry);
//! - [`Plan::check`] is the permission check of the command alone (read rights for what
//!   it reads, write rights for what it writes), made before anything runs or is queued.

use super::cmd::RespCommand;
use super::exec::{error_reply, too_big};
use super::frame::{ArrayEncoder, Frame};
use crate::auth::Identity;
#[cfg(doc)]
use crate::command::Deadline;
use crate::command::{
    Expect, ExpireCond, Limits, SetCond, Txn, TxnOp, TxnOpResult, Versioned, WriteOp, WriteResult,
};
use crate::error::Error;

/// A data command as reads and writes of the store, with the shape of its reply.
#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    /// Answered without the store (`PING`, `ECHO`, `SELECT`, a `GETDEL` of a key that
    /// could never be stored); may be an error reply (`SELECT 1`).
    Known(Frame),
    /// Reads of single keys (each, if it could be stored, one [`TxnOp::Get`]).
    Read {
        keys: Vec<Vec<u8>>,
        shape: ReadShape,
    },
    /// Writes (each one [`TxnOp::Write`]), answered together.
    Write {
        ops: Vec<WriteOp>,
        shape: WriteShape,
    },
    /// A read of `key` and then a write (`GETEX` with an option: [`TxnOp::Get`] then
    /// [`TxnOp::Write`]), one transaction even alone; answers the value read, or nil.
    GetAndWrite { key: Vec<u8>, op: WriteOp },
}

/// How a read command answers from its keys' values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadShape {
    /// `GET`: the value or nil.
    Value,
    /// `GETVER`: `[value, version]` or nil.
    ValueAndVersion,
    /// `TYPE`: `string` or `none`.
    Type,
    /// `STRLEN`: the value's length (0 when absent).
    Strlen,
    /// `EXISTS`: how many of the keys are present.
    Exists,
    /// `MGET`: every value or nil, in order.
    Values,
}

/// How a write command answers from its writes' results.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteShape {
    /// `SET`, `MSET`: `+OK`.
    Ok,
    /// `SET` with `NX`/`XX`/`GET`: the previous value if `get`, else OK or nil.
    Set { get: bool },
    /// `SETNX`: 1 if it stored, else 0.
    Applied,
    /// `GETDEL`: the value deleted, or nil.
    Prev,
    /// `DEL`: how many keys were deleted.
    Deleted,
    /// `INCR`, `INCRBY`, `DECR`, `DECRBY`: the new value.
    Counter,
    /// `APPEND`: the new length.
    Length,
    /// `CAS`, `CASVER`: 1 if it swapped, else 0.
    Swapped,
    /// `EXPIRE` and its family, `PERSIST`: 1 if the deadline changed (or the key was
    /// deleted, its new deadline passed), else 0.
    Expired,
}

impl Plan {
    /// The plan of `c`, or `c` back when it is no data command (connection state, key
    /// walks, user management): those run only alone.
    pub fn of(c: RespCommand, limits: &Limits) -> Result<Plan, RespCommand> {
        use RespCommand as C;
        let read = |keys: Vec<Vec<u8>>, shape| Plan::Read { keys, shape };
        let write = |op: WriteOp, shape| Plan::Write {
            ops: vec![op],
            shape,
        };
        Ok(match c {
            C::Ping(None) => Plan::Known(Frame::Simple("PONG".into())),
            C::Ping(Some(m)) | C::Echo(m) => Plan::Known(Frame::Bulk(m)),
            C::Select(0) => Plan::Known(Frame::ok()),
            C::Select(_) => Plan::Known(Frame::error("ERR DB index is out of range")),
            C::Get(k) => read(vec![k], ReadShape::Value),
            C::GetVer(k) => read(vec![k], ReadShape::ValueAndVersion),
            C::Type(k) => read(vec![k], ReadShape::Type),
            C::Strlen(k) => read(vec![k], ReadShape::Strlen),
            C::Exists(keys) => read(keys, ReadShape::Exists),
            C::MGet(keys) => read(keys, ReadShape::Values),
            C::Set {
                key,
                value,
                cond: SetCond::Always,
                get: false,
                expiry: None,
            } => write(
                WriteOp::Put {
                    key,
                    value,
                    return_prev: false,
                },
                WriteShape::Ok,
            ),
            C::Set {
                key,
                value,
                cond,
                get,
                expiry: None,
            } => write(WriteOp::Set { key, value, cond }, WriteShape::Set { get }),
            C::Set {
                key,
                value,
                cond,
                get,
                expiry: Some(expiry),
            } => write(
                WriteOp::SetExpiring {
                    key,
                    value,
                    cond,
                    expiry,
                },
                WriteShape::Set { get },
            ),
            C::GetEx { key, change: None } => read(vec![key], ReadShape::Value),
            C::GetEx { key, .. } if limits.check_key(&key).is_err() => Plan::Known(Frame::Null),
            C::GetEx {
                key,
                change: Some(deadline),
            } => Plan::GetAndWrite {
                op: WriteOp::Expire {
                    key: key.clone(),
                    deadline,
                    // PERSIST changes only a key that has a deadline.
                    when: match deadline {
                        None => ExpireCond::IfSome,
                        Some(_) => ExpireCond::Always,
                    },
                },
                key,
            },
            C::Expire { key, .. } | C::Persist(key) if limits.check_key(&key).is_err() => {
                Plan::Known(Frame::Integer(0))
            }
            C::Expire {
                key,
                deadline,
                when,
            } => write(
                WriteOp::Expire {
                    key,
                    deadline: Some(deadline),
                    when,
                },
                WriteShape::Expired,
            ),
            C::Persist(key) => write(
                WriteOp::Expire {
                    key,
                    deadline: None,
                    when: ExpireCond::IfSome,
                },
                WriteShape::Expired,
            ),
            C::SetNx(key, value) => write(
                WriteOp::Set {
                    key,
                    value,
                    cond: SetCond::IfAbsent,
                },
                WriteShape::Applied,
            ),
            C::GetDel(key) if limits.check_key(&key).is_err() => Plan::Known(Frame::Null),
            C::GetDel(key) => write(
                WriteOp::Delete {
                    key,
                    return_prev: true,
                },
                WriteShape::Prev,
            ),
            C::Del(keys) => Plan::Write {
                ops: (keys.into_iter())
                    .filter(|k| limits.check_key(k).is_ok())
                    .map(|key| WriteOp::Delete {
                        key,
                        return_prev: false,
                    })
                    .collect(),
                shape: WriteShape::Deleted,
            },
            C::MSet(pairs) => write(WriteOp::MultiPut { pairs }, WriteShape::Ok),
            C::IncrBy(key, delta) => write(WriteOp::Incr { key, delta }, WriteShape::Counter),
            C::Append(key, suffix) => write(
                // The node's value limit travels in the op (see `KvHandle::append`).
                WriteOp::AppendUpTo {
                    key,
                    suffix,
                    max_len: limits.max_value as u64,
                },
                WriteShape::Length,
            ),
            C::Cas(key, expected, new_value) => write(
                WriteOp::Cas {
                    key,
                    expect: Expect::Value(expected),
                    new_value,
                },
                WriteShape::Swapped,
            ),
            C::CasVer(key, version, new_value) => write(
                WriteOp::Cas {
                    key,
                    expect: Expect::Version(version),
                    new_value,
                },
                WriteShape::Swapped,
            ),
            other => return Err(other),
        })
    }

    /// May `id` run this command (read rights for its reads, write rights for its
    /// writes)? Checked before it runs or is queued.
    pub fn check(&self, id: &Identity) -> Result<(), Error> {
        match self {
            Plan::Known(_) => Ok(()),
            Plan::Read { keys, .. } => keys.iter().try_for_each(|k| id.check_read(k)),
            Plan::Write { ops, .. } => id.check_write(ops.iter().flat_map(WriteOp::keys)),
            Plan::GetAndWrite { key, op } => {
                id.check_read(key)?;
                id.check_write(op.keys())
            }
        }
    }

    /// The transaction ops of this plan, in order (a read of a key that could never be
    /// stored is none: it reads as nil).
    pub fn txn_ops(&self, limits: &Limits) -> Vec<TxnOp> {
        match self {
            Plan::Known(_) => vec![],
            Plan::Read { keys, .. } => (keys.iter())
                .filter(|k| limits.check_key(k).is_ok())
                .map(|k| TxnOp::Get { key: k.clone() })
                .collect(),
            Plan::Write { ops, .. } => ops.iter().cloned().map(TxnOp::Write).collect(),
            Plan::GetAndWrite { key, op } => {
                vec![TxnOp::Get { key: key.clone() }, TxnOp::Write(op.clone())]
            }
        }
    }

    /// The transaction a plan that reads and writes ([`Plan::GetAndWrite`]) is alone:
    /// its ops, unconditionally, so that nothing comes between the read and the write.
    pub fn own_txn(&self, limits: &Limits) -> Txn {
        Txn {
            compare: vec![],
            success: self.txn_ops(limits),
            failure: vec![],
        }
    }

    /// How many transaction ops [`Plan::txn_ops`] gives, without building them.
    pub fn txn_op_count(&self, limits: &Limits) -> usize {
        match self {
            Plan::Known(_) => 0,
            Plan::Read { keys, .. } => keys.iter().filter(|k| limits.check_key(k).is_ok()).count(),
            Plan::Write { ops, .. } => ops.len(),
            Plan::GetAndWrite { .. } => 2,
        }
    }

    /// About the bytes the plan holds (keys, values, arguments): what a queued plan
    /// costs and adds to its transaction.
    pub fn size(&self) -> usize {
        match self {
            Plan::Known(f) => match f {
                Frame::Bulk(b) => b.len() + 16,
                _ => 16,
            },
            Plan::Read { keys, .. } => keys.iter().map(|k| k.len() + 8).sum::<usize>() + 16,
            Plan::Write { ops, .. } => ops.iter().map(WriteOp::size).sum::<usize>() + 16,
            Plan::GetAndWrite { key, op } => key.len() + op.size() + 24,
        }
    }

    /// This plan's reply from the results of its [`Plan::txn_ops`] inside a transaction
    /// (taken from `results` in order), as the command alone would answer: a write the
    /// data refused (an `INCR` of a non-number) is this command's error reply.
    pub fn reply_in_txn(
        self,
        limits: &Limits,
        results: &mut impl Iterator<Item = TxnOpResult>,
        budget: usize,
        resp3: bool,
    ) -> Frame {
        let unexpected = |r: Option<TxnOpResult>| {
            Frame::error(format!(
                "ERR internal: the transaction answered {r:?} where this command expected \
                 its own result"
            ))
        };
        match self {
            Plan::Known(f) => f,
            Plan::Read { keys, shape } => {
                // This plan's results first (exactly its ops), then the reply from them.
                let mut values = Vec::with_capacity(keys.len());
                for k in &keys {
                    if limits.check_key(k).is_err() {
                        values.push(None);
                        continue;
                    }
                    match results.next() {
                        Some(TxnOpResult::Get(v)) => values.push(v),
                        r => return unexpected(r),
                    }
                }
                let mut reply = ReadReply::new(shape, budget, resp3);
                for v in values {
                    if let Err(e) = reply.push(v) {
                        return e;
                    }
                }
                reply.finish()
            }
            Plan::Write { ops, shape } => {
                let mut done = Vec::with_capacity(ops.len());
                let mut refused = None;
                for _ in &ops {
                    match results.next() {
                        Some(TxnOpResult::Write(r)) => match written(r) {
                            Ok(r) => done.push(r),
                            Err(e) => refused = refused.or(Some(e)),
                        },
                        r => return unexpected(r),
                    }
                }
                match refused {
                    Some(e) => error_reply(e),
                    None => shape.reply(done),
                }
            }
            Plan::GetAndWrite { .. } => {
                let value = match results.next() {
                    Some(TxnOpResult::Get(v)) => v,
                    r => return unexpected(r),
                };
                match results.next() {
                    Some(TxnOpResult::Write(r)) => match written(r) {
                        Ok(_) => bulk_or_null(value.map(|v| v.value)),
                        Err(e) => error_reply(e),
                    },
                    r => unexpected(r),
                }
            }
        }
    }
}

pub use crate::kv::handle::not_applied as written;

pub(super) fn bulk_or_null(v: Option<Vec<u8>>) -> Frame {
    v.map(Frame::Bulk).unwrap_or(Frame::Null)
}

/// A read command's reply, built from its keys' values one at a time (in key order), so
/// that `MGET`'s values are encoded as they are read, within the reply budget.
pub struct ReadReply {
    shape: ReadShape,
    /// The reply of a one-key shape, once its value came.
    one: Option<Frame>,
    /// `EXISTS`' count.
    present: i64,
    /// `MGET`'s values.
    values: Option<ArrayEncoder>,
}

impl ReadReply {
    pub fn new(shape: ReadShape, budget: usize, resp3: bool) -> ReadReply {
        ReadReply {
            shape,
            one: None,
            present: 0,
            values: (shape == ReadShape::Values).then(|| ArrayEncoder::new(budget, resp3)),
        }
    }

    /// Adds the next key's value. Refused once `MGET`'s reply would pass the budget.
    pub fn push(&mut self, v: Option<Versioned>) -> Result<(), Frame> {
        let present = v.is_some();
        self.one = Some(match self.shape {
            ReadShape::Value => bulk_or_null(v.map(|v| v.value)),
            ReadShape::ValueAndVersion => match v {
                Some(v) => {
                    Frame::Array(vec![Frame::Bulk(v.value), Frame::Integer(v.version as i64)])
                }
                None => Frame::Null,
            },
            ReadShape::Type => Frame::Simple(if present { "string" } else { "none" }.into()),
            ReadShape::Strlen => Frame::Integer(v.map_or(0, |v| v.value.len() as i64)),
            ReadShape::Exists => {
                self.present += present as i64;
                return Ok(());
            }
            ReadShape::Values => {
                let out = self.values.as_mut().expect("MGET has its encoder");
                match v {
                    Some(v) => out.bulk(&v.value),
                    None => out.null(),
                }
                .map_err(too_big)?;
                return Ok(());
            }
        });
        Ok(())
    }

    /// The reply.
    pub fn finish(self) -> Frame {
        match self.shape {
            ReadShape::Exists => Frame::Integer(self.present),
            ReadShape::Values => self.values.expect("MGET has its encoder").finish(),
            _ => self.one.unwrap_or(Frame::Null),
        }
    }
}

impl WriteShape {
    /// The reply to the results of a plan's writes, all applied, in order.
    pub fn reply(self, results: Vec<WriteResult>) -> Frame {
        let mismatch = |r: &WriteResult| {
            Frame::error(format!(
                "ERR internal: a write was answered with {r:?}, not its own result"
            ))
        };
        if self == WriteShape::Deleted {
            let mut n = 0;
            for r in &results {
                match r {
                    WriteResult::Delete { deleted, .. } => n += *deleted as i64,
                    r => return mismatch(r),
                }
            }
            return Frame::Integer(n);
        }
        let Some(r) = results.into_iter().next() else {
            return Frame::error("ERR internal: a write command made no write");
        };
        match (self, r) {
            (WriteShape::Ok, WriteResult::Put { .. } | WriteResult::MultiPut { .. }) => Frame::ok(),
            (WriteShape::Set { get: true }, WriteResult::Set { prev, .. }) => {
                bulk_or_null(prev.map(|v| v.value))
            }
            (WriteShape::Set { get: false }, WriteResult::Set { applied, .. }) => {
                if applied {
                    Frame::ok()
                } else {
                    Frame::Null
                }
            }
            (WriteShape::Applied, WriteResult::Set { applied, .. }) => {
                Frame::Integer(applied as i64)
            }
            (WriteShape::Prev, WriteResult::Delete { prev, .. }) => {
                bulk_or_null(prev.map(|v| v.value))
            }
            (WriteShape::Counter, WriteResult::Incr { value, .. }) => Frame::Integer(value),
            (WriteShape::Length, WriteResult::Append { len, .. }) => Frame::Integer(len as i64),
            (WriteShape::Swapped, WriteResult::Cas { succeeded, .. }) => {
                Frame::Integer(succeeded as i64)
            }
            (WriteShape::Expired, WriteResult::Expire { applied, .. }) => {
                Frame::Integer(applied as i64)
            }
            (_, r) => mismatch(&r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::resp::cmd;

    fn plan(w: &[&str]) -> Plan {
        let c = cmd::parse(w.iter().map(|s| s.as_bytes().to_vec()).collect()).unwrap();
        Plan::of(c, &Limits::default()).unwrap_or_else(|c| panic!("{c:?} has no plan"))
    }

    fn v(value: &str, version: u64) -> Option<Versioned> {
        Some(Versioned {
            value: value.into(),
            version,
        })
    }

    /// The expiry commands' ops and replies: SET with an expiry is `SetExpiring`, EXPIRE
    /// and PERSIST are `Expire` answering 1/0, GETEX with an option is a read then an
    /// `Expire`, answering the value read.
    #[test]
    fn expiry_commands_become_ops_and_replies() {
        use crate::command::{Deadline, Expiry};
        let limits = Limits::default();
        let k = || b"k".to_vec();
        assert_eq!(
            plan(&["SET", "k", "v", "PX", "200"]).txn_ops(&limits),
            vec![TxnOp::Write(WriteOp::SetExpiring {
                key: k(),
                value: b"v".to_vec(),
                cond: SetCond::Always,
                expiry: Expiry::Set(Deadline::In(200)),
            })]
        );
        let set = plan(&["SETEX", "k", "1", "v"]);
        let stored = WriteResult::Set {
            applied: true,
            version: 4,
            prev: None,
        };
        let mut results = vec![TxnOpResult::Write(stored)].into_iter();
        assert_eq!(
            set.reply_in_txn(&limits, &mut results, 1 << 20, false),
            Frame::ok()
        );
        let expire = |w: &[&str], deadline, when| {
            assert_eq!(
                plan(w).txn_ops(&limits),
                vec![TxnOp::Write(WriteOp::Expire {
                    key: k(),
                    deadline,
                    when
                })],
                "{w:?}"
            );
        };
        expire(
            &["PEXPIRE", "k", "9", "GT"],
            Some(Deadline::In(9)),
            ExpireCond::Later,
        );
        expire(
            &["EXPIREAT", "k", "9"],
            Some(Deadline::At(9000)),
            ExpireCond::Always,
        );
        expire(&["PERSIST", "k"], None, ExpireCond::IfSome);
        for (applied, want) in [(true, 1), (false, 0)] {
            let r = WriteResult::Expire {
                applied,
                version: 1,
            };
            let mut results = vec![TxnOpResult::Write(r)].into_iter();
            let reply = plan(&["PERSIST", "k"]).reply_in_txn(&limits, &mut results, 1 << 20, false);
            assert_eq!(reply, Frame::Integer(want));
        }
        let getex = plan(&["GETEX", "k", "EXAT", "7"]);
        assert_eq!(
            getex.txn_ops(&limits),
            vec![
                TxnOp::Get { key: k() },
                TxnOp::Write(WriteOp::Expire {
                    key: k(),
                    deadline: Some(Deadline::At(7000)),
                    when: ExpireCond::Always
                })
            ]
        );
        assert_eq!(getex.txn_op_count(&limits), 2);
        assert_eq!(getex.own_txn(&limits).success, getex.txn_ops(&limits));
        let mut results = vec![
            TxnOpResult::Get(v("val", 2)),
            TxnOpResult::Write(WriteResult::Expire {
                applied: true,
                version: 0,
            }),
        ]
        .into_iter();
        assert_eq!(
            getex.reply_in_txn(&limits, &mut results, 1 << 20, false),
            Frame::bulk("val")
        );
        assert_eq!(
            plan(&["GETEX", "k"]),
            Plan::Read {
                keys: vec![k()],
                shape: ReadShape::Value
            }
        );
    }

    /// Each command's ops are what it proposes alone, and its reply in a transaction is
    /// built from the transaction's results by the same shapes.
    #[test]
    fn commands_become_ops_and_replies() {
        let limits = Limits::default();
        let p = plan(&["SET", "k", "v", "NX", "GET"]);
        assert_eq!(
            p.txn_ops(&limits),
            vec![TxnOp::Write(WriteOp::Set {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                cond: SetCond::IfAbsent
            })]
        );
        let prev = WriteResult::Set {
            applied: false,
            version: 3,
            prev: v("old", 3),
        };
        let mut results = vec![TxnOpResult::Write(prev)].into_iter();
        assert_eq!(
            p.reply_in_txn(&limits, &mut results, 1 << 20, false),
            Frame::bulk("old")
        );
        // An INCR the data refuses answers as it does alone; the next plan still reads
        // its own results.
        let incr = plan(&["INCR", "s"]);
        let get = plan(&["MGET", "a", "", "b"]);
        assert_eq!(get.txn_op_count(&limits), 2, "the empty key is no op");
        let mut results = vec![
            TxnOpResult::Write(WriteResult::Rejected(
                "value is not an integer or out of range".into(),
            )),
            TxnOpResult::Get(v("1", 1)),
            TxnOpResult::Get(None),
        ]
        .into_iter();
        assert_eq!(
            incr.reply_in_txn(&limits, &mut results, 1 << 20, false),
            Frame::error("ERR value is not an integer or out of range")
        );
        let mget = get.reply_in_txn(&limits, &mut results, 1 << 20, false);
        assert_eq!(
            mget.to_bytes(false),
            Frame::Array(vec![Frame::bulk("1"), Frame::Null, Frame::Null]).to_bytes(false)
        );
        assert!(results.next().is_none());
        // DEL: one delete per storable key, the count of those that were there.
        let del = plan(&["DEL", "a", "", "b"]);
        assert_eq!(del.txn_op_count(&limits), 2);
        let deleted = |d| {
            TxnOpResult::Write(WriteResult::Delete {
                deleted: d,
                prev: None,
            })
        };
        let mut results = vec![deleted(true), deleted(false)].into_iter();
        assert_eq!(
            del.reply_in_txn(&limits, &mut results, 1 << 20, false),
            Frame::Integer(1)
        );
        assert_eq!(plan(&["GETDEL", ""]), Plan::Known(Frame::Null));
        assert_eq!(plan(&["GETEX", "", "PERSIST"]), Plan::Known(Frame::Null));
        assert_eq!(plan(&["EXPIRE", "", "1"]), Plan::Known(Frame::Integer(0)));
        assert_eq!(plan(&["PERSIST", ""]), Plan::Known(Frame::Integer(0)));
        assert_eq!(plan(&["PING"]), Plan::Known(Frame::Simple("PONG".into())));
        // Not data commands, or commands that read a deadline: no plan.
        for w in [
            &["KEYS", "*"][..],
            &["SCAN", "0"],
            &["INFO"],
            &["HELLO", "3"],
            &["TTL", "k"],
            &["PEXPIRETIME", "k"],
        ] {
            let c = cmd::parse(w.iter().map(|s| s.as_bytes().to_vec()).collect()).unwrap();
            assert!(Plan::of(c, &limits).is_err(), "{w:?}");
        }
    }
}
