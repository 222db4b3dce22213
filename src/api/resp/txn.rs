//! Redis transactions (`MULTI` / `EXEC` / `DISCARD` / `WATCH` / `UNWATCH`) as one
//! key-value [`Txn`]: a connection's queue and watched keys, and how `EXEC` turns them
//! into the transaction and its results into the reply. `exec.rs` drives it (it owns the
//! connection's identity and session); what is here does no I/O.
//!
//! `MULTI` starts a [`Queue`]. Each data command after it is planned ([`Plan::of`]: the
//! reads and writes it makes alone), checked as it would be alone (permissions, then the
//! bounds below) and queued, answered `+QUEUED`. `EXEC` ([`Queue::prepare`]) makes one
//! [`Txn`]: one comparison `Version Equal v` per watched key (`v` the version a
//! linearizable read saw at `WATCH`, 0 for absent), the success branch every queued
//! plan's ops in order, the failure branch empty. The transaction is one log entry, one
//! write of the connection's session; nothing interleaves with it, and each op sees the
//! ones before it. Its results are cut back into one reply per queued command
//! ([`Answer::reply`]), each exactly what the command answers alone, a data refusal
//! (`INCR` of a non-number) being that command's error in its slot while the others
//! still apply, as in Redis. If a watched key's version moved, nothing ran and `EXEC`
//! answers a null array (RESP2 `*-1`, RESP3 `_`), as Redis does.
//!
//! Why versions are Redis' WATCH: a key's version is the revision of its last write, and
//! revisions only grow, so any write to a watched key that existed (even of the same
//! value, even a delete and re-create) makes its version differ at `EXEC`. A key absent
//! at `WATCH` compares against version 0: any write that leaves it present is seen; one
//! that creates it and deletes it again before `EXEC` is not (Redis would abort there).
//! What the client read is then still true at `EXEC`, so the transaction is still
//! serializable, which is what `WATCH` is for.
//!
//! Invariants:
//! - a command refused while queueing (a parse error, an unknown command, a permission,
//!   a command that cannot run inside a transaction, a bound) gets its error at once and
//!   aborts the queue: `EXEC` then answers `-EXECABORT` and nothing runs (Redis'
//!   semantics); a `WATCH` or a nested `MULTI` inside the block is an error that does
//!   not abort it, as in Redis;
//! - memory is bounded: at most [`MAX_TXN_OPS`] queued commands, at most [`MAX_TXN_OPS`]
//!   ops plus watched keys (the transaction's own limit), at most 4 × the value limit of
//!   queued bytes (the transaction's own size limit, `Limits::check_txn`), at most
//!   [`MAX_WATCHED_KEYS`] watched keys; past a bound the command is refused (and, while
//!   queueing, the transaction aborted), never queued;
//! - `EXEC`, `DISCARD` and `UNWATCH` forget the watched keys, and `EXEC` and `DISCARD`
//!   end the block, whatever they answer.

use super::exec::too_big;
use super::frame::{ArrayEncoder, Encoded, Frame};
use super::plan::Plan;
use crate::command::{Compare, CompareOp, CompareTarget, Limits, Txn, MAX_TXN_OPS};
use crate::kv::handle::TxnResult;
use std::collections::BTreeMap;

/// The most keys one connection may watch at once. A comparison per watched key goes into
/// the transaction, beside its ops, within [`MAX_TXN_OPS`]; this leaves room for them.
pub const MAX_WATCHED_KEYS: usize = MAX_TXN_OPS / 2;

/// `EXEC` after a refused command.
pub const EXEC_ABORT: &str = "EXECABORT Transaction discarded because of previous errors.";

/// Why a command is not queued, or keys not watched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnRefusal {
    /// The command is no key read or write (connection state, key walks, users), so it
    /// cannot be part of the transaction's one log entry.
    NotTransactional { command: &'static str },
    /// The queue holds [`MAX_TXN_OPS`] commands.
    TooManyCommands,
    /// The ops queued plus the watched keys would pass [`MAX_TXN_OPS`].
    TooManyOps { ops: usize },
    /// The queued commands would hold more than `limit` bytes.
    TooLarge { bytes: usize, limit: usize },
    /// The keys to watch would pass [`MAX_WATCHED_KEYS`].
    TooManyWatched { watched: usize },
    /// The command reads a key's deadline (`TTL` and its family), which a transaction's
    /// reads do not carry.
    ReadsDeadline { command: &'static str },
}

impl TxnRefusal {
    /// The error reply. The first words of `NotTransactional` are Redis' own for a
    /// command it does not allow inside `MULTI`.
    pub fn reply(&self) -> Frame {
        Frame::error(match self {
            TxnRefusal::NotTransactional { command } => format!(
                "ERR Command not allowed inside a transaction: paxosdb runs a transaction as \
                 one atomic log entry of key reads and writes, and '{command}' is not one \
                 (send it before MULTI or after EXEC)"
            ),
            TxnRefusal::TooManyCommands => format!(
                "ERR transaction too large: at most {MAX_TXN_OPS} commands may be queued \
                 (EXEC will abort; DISCARD and send fewer)"
            ),
            TxnRefusal::TooManyOps { ops } => format!(
                "ERR transaction too large: {ops} key reads, writes and watched keys; the \
                 limit is {MAX_TXN_OPS} (EXEC will abort; DISCARD and send fewer)"
            ),
            TxnRefusal::TooLarge { bytes, limit } => format!(
                "ERR transaction too large: {bytes} bytes queued; the limit is {limit} \
                 bytes, 4 × the value limit (EXEC will abort; DISCARD and send less)"
            ),
            TxnRefusal::ReadsDeadline { command } => format!(
                "ERR Command not allowed inside a transaction: '{command}' reads a key's \
                 deadline, and paxosdb's transactions read values only (send it before \
                 MULTI or after EXEC)"
            ),
            TxnRefusal::TooManyWatched { watched } => format!(
                "ERR too many watched keys: {watched}; the limit is {MAX_WATCHED_KEYS} per \
                 connection (UNWATCH first, or watch fewer)"
            ),
        })
    }
}

/// The commands queued since `MULTI`.
#[derive(Debug, Default)]
pub struct Queue {
    plans: Vec<Plan>,
    /// Transaction ops the plans make.
    ops: usize,
    /// Bytes the plans hold ([`Plan::size`]).
    bytes: usize,
    /// A command was refused while queueing: `EXEC` aborts.
    aborted: bool,
}

impl Queue {
    /// Queues `plan`, unless that would pass a bound (`watched`: the keys that will be
    /// compared). A refusal aborts the queue.
    pub fn push(&mut self, plan: Plan, watched: usize, limits: &Limits) -> Result<(), TxnRefusal> {
        let ops = self.ops + plan.txn_op_count(limits);
        let bytes = self.bytes + plan.size();
        let max_bytes = 4 * limits.max_value;
        let refused = if self.plans.len() >= MAX_TXN_OPS {
            Some(TxnRefusal::TooManyCommands)
        } else if ops + watched > MAX_TXN_OPS {
            Some(TxnRefusal::TooManyOps { ops: ops + watched })
        } else if bytes > max_bytes {
            Some(TxnRefusal::TooLarge {
                bytes,
                limit: max_bytes,
            })
        } else {
            None
        };
        if let Some(r) = refused {
            self.abort();
            return Err(r);
        }
        self.plans.push(plan);
        (self.ops, self.bytes) = (ops, bytes);
        Ok(())
    }

    /// Marks the queue so that `EXEC` aborts (a command was refused), and drops what it
    /// holds: nothing of it will run.
    pub fn abort(&mut self) {
        *self = Queue {
            aborted: true,
            ..Queue::default()
        };
    }

    pub fn aborted(&self) -> bool {
        self.aborted
    }

    /// The transaction of the queued plans, guarded by `watches`, and what answers from
    /// its result.
    pub fn prepare(self, watches: Watches, limits: &Limits) -> (Txn, Answer) {
        let compare = (watches.keys.into_iter())
            .map(|(key, version)| Compare {
                key,
                op: CompareOp::Equal,
                target: CompareTarget::Version(version),
            })
            .collect();
        let success = self.plans.iter().flat_map(|p| p.txn_ops(limits)).collect();
        let txn = Txn {
            compare,
            success,
            failure: vec![],
        };
        (txn, Answer { plans: self.plans })
    }
}

/// True when `txn` needs no store at all: no comparison and no op (`MULTI` `PING`
/// `EXEC`, or an empty block without watches). It is then answered without the log.
pub fn is_empty(txn: &Txn) -> bool {
    txn.compare.is_empty() && txn.success.is_empty()
}

/// The keys a connection watches, each with the version it had when it was watched.
#[derive(Debug, Default)]
pub struct Watches {
    keys: BTreeMap<Vec<u8>, u64>,
}

impl Watches {
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Which of `keys` are not watched yet (each once), or a refusal if watching them
    /// would pass [`MAX_WATCHED_KEYS`].
    pub fn new_keys(&self, keys: Vec<Vec<u8>>) -> Result<Vec<Vec<u8>>, TxnRefusal> {
        let mut fresh: Vec<Vec<u8>> = keys
            .into_iter()
            .filter(|k| !self.keys.contains_key(k))
            .collect();
        fresh.sort();
        fresh.dedup();
        let watched = self.keys.len() + fresh.len();
        if watched > MAX_WATCHED_KEYS {
            return Err(TxnRefusal::TooManyWatched { watched });
        }
        Ok(fresh)
    }

    /// Watches `key` as of `version` (0: absent). A key already watched keeps the
    /// version of its first `WATCH`, as in Redis, where re-watching changes nothing.
    pub fn insert(&mut self, key: Vec<u8>, version: u64) {
        self.keys.entry(key).or_insert(version);
    }
}

/// The queued plans, which answer `EXEC` from their transaction's result.
#[derive(Debug)]
pub struct Answer {
    plans: Vec<Plan>,
}

impl Answer {
    /// `EXEC`'s reply: a null array if a watched key changed (nothing ran), else every
    /// queued command's reply, in order, within the reply budget.
    pub fn reply(self, result: TxnResult, limits: &Limits, budget: usize, resp3: bool) -> Frame {
        if !result.succeeded {
            return null_array(resp3);
        }
        let mut results = result.results.into_iter();
        let mut out = ArrayEncoder::new(budget, resp3);
        for plan in self.plans {
            let reply = plan.reply_in_txn(limits, &mut results, budget, resp3);
            if let Err(e) = out.push(&reply) {
                return too_big(e);
            }
        }
        out.finish()
    }
}

/// A null array: what `EXEC` answers when a watched key changed. RESP2 has a null array
/// of its own (`*-1`, which clients tell from a null bulk string); RESP3 has one null.
pub fn null_array(resp3: bool) -> Frame {
    if resp3 {
        Frame::Null
    } else {
        Frame::Encoded(Encoded::from_vec(b"*-1\r\n".to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::resp::cmd;
    use crate::command::{TxnOp, TxnOpResult, WriteOp, WriteResult};

    fn plan(w: &[&str]) -> Plan {
        let c = cmd::parse(w.iter().map(|s| s.as_bytes().to_vec()).collect()).unwrap();
        Plan::of(c, &Limits::default()).unwrap()
    }

    /// `EXEC` makes one transaction: a version comparison per watched key, every queued
    /// op in order; its results become one reply per command.
    #[test]
    fn queue_becomes_one_transaction_and_its_replies() {
        let limits = Limits::default();
        let mut q = Queue::default();
        for w in [
            &["SET", "a", "1"][..],
            &["INCR", "a"],
            &["PING"],
            &["GET", "a"],
        ] {
            q.push(plan(w), 1, &limits).unwrap();
        }
        let mut w = Watches::default();
        w.insert(b"x".to_vec(), 7);
        w.insert(b"x".to_vec(), 9);
        let (txn, answer) = q.prepare(w, &limits);
        assert!(!is_empty(&txn));
        assert_eq!(
            txn.compare,
            vec![Compare {
                key: b"x".to_vec(),
                op: CompareOp::Equal,
                target: CompareTarget::Version(7),
            }],
            "a key watched twice keeps its first version"
        );
        assert_eq!(txn.success.len(), 3);
        assert!(matches!(
            &txn.success[1],
            TxnOp::Write(WriteOp::Incr { .. })
        ));
        let results = vec![
            TxnOpResult::Write(WriteResult::Put {
                version: 1,
                prev: None,
            }),
            TxnOpResult::Write(WriteResult::Incr {
                value: 2,
                version: 2,
            }),
            TxnOpResult::Get(Some(crate::command::Versioned {
                value: b"2".to_vec(),
                version: 2,
            })),
        ];
        let ok = TxnResult {
            succeeded: true,
            results,
        };
        let reply = answer.reply(ok, &limits, 1 << 20, false);
        let want = Frame::Array(vec![
            Frame::ok(),
            Frame::Integer(2),
            Frame::Simple("PONG".into()),
            Frame::bulk("2"),
        ]);
        assert_eq!(reply.to_bytes(false), want.to_bytes(false));
        // A watched key moved: a null array, in each protocol's form.
        let failed = TxnResult {
            succeeded: false,
            results: vec![],
        };
        let (txn, answer) = Queue::default().prepare(Watches::default(), &limits);
        assert!(is_empty(&txn));
        let reply = answer.reply(failed.clone(), &limits, 1 << 20, false);
        assert_eq!(reply.to_bytes(false), b"*-1\r\n");
        let (_, answer) = Queue::default().prepare(Watches::default(), &limits);
        assert_eq!(
            answer.reply(failed, &limits, 1 << 20, true).to_bytes(true),
            b"_\r\n"
        );
    }

    /// Each bound refuses the command, aborts the queue, and queues nothing more.
    #[test]
    fn bounds_abort_the_queue() {
        let limits = Limits::default();
        let mut q = Queue::default();
        for _ in 0..MAX_TXN_OPS {
            q.push(plan(&["PING"]), 0, &limits).unwrap();
        }
        assert_eq!(
            q.push(plan(&["PING"]), 0, &limits),
            Err(TxnRefusal::TooManyCommands)
        );
        assert!(q.aborted() && q.plans.is_empty());

        let mut q = Queue::default();
        let keys: Vec<String> = (0..MAX_TXN_OPS).map(|i| format!("k{i}")).collect();
        let mut mget = vec!["MGET"];
        mget.extend(keys.iter().map(String::as_str));
        assert_eq!(
            q.push(plan(&mget), 1, &limits),
            Err(TxnRefusal::TooManyOps {
                ops: MAX_TXN_OPS + 1
            })
        );
        assert!(q.aborted());

        let mut q = Queue::default();
        let big = "v".repeat(limits.max_value);
        for i in 0..3 {
            q.push(plan(&["SET", &format!("k{i}"), &big]), 0, &limits)
                .unwrap();
        }
        match q.push(plan(&["SET", "k4", &big]), 0, &limits) {
            Err(TxnRefusal::TooLarge { limit, .. }) => assert_eq!(limit, 4 * limits.max_value),
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert!(q.aborted() && q.bytes == 0);

        let mut w = Watches::default();
        let many: Vec<Vec<u8>> = (0..MAX_WATCHED_KEYS)
            .map(|i| vec![b'w', i as u8, (i >> 8) as u8])
            .collect();
        for k in w.new_keys(many.clone()).unwrap() {
            w.insert(k, 0);
        }
        assert_eq!(
            w.new_keys(many).unwrap(),
            Vec::<Vec<u8>>::new(),
            "watched already"
        );
        assert_eq!(
            w.new_keys(vec![b"one more".to_vec()]),
            Err(TxnRefusal::TooManyWatched {
                watched: MAX_WATCHED_KEYS + 1
            })
        );
    }
}
