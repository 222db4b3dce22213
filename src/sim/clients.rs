//! The key-value workload of the simulated clients and the history it records.
//!
//! Every client (run by the shared client loop, [`super::driver`]) has one session and
//! at most one operation in flight: put, get, compare-and-swap or delete on a few
//! register keys (`k0`, ...), or an append of a unique element (`,<session>.<seq>`) or a
//! get on a set key (`s0`), and with the multi-key group on, an MSET of `m0` and `m1`, a
//! put, a versioned get or a prefix scan of the group. A get is a linearizable read:
//! `Event::ReadBarrier`, then `KvStore::get` on that node's store.
//!
//! Every operation is recorded once, as a [`crate::check::Operation`] whose call and return
//! times are the driver's event numbers, so real-time order is exact — virtual time has
//! ties (a return and a call in the same round), which the checker would treat as
//! concurrency. An operation ends `Ok` with what it returned; `Fail` if the node rejected
//! it (it certainly did not happen); `Info` if an attempt was lost (timeout, crashed node)
//! and no retry with the same session returned an answer — an answer to a retry completes
//! the operation with that retry's return time. After an `Info` the client continues as a
//! new checker process (its lost operation may still take effect at any later time).
//! A read that is not answered had no effect and is retried or dropped.
//!
//! # Invariants
//!
//! - Every write carries a seq of its session that no other write of the session has;
//!   a set element is the session and seq of its append, so unique.
//! - A history operation's `client` (checker process) never has two operations open: a
//!   client whose write ended `Info` continues as a new process.

use super::checks::SET_SEPARATOR;
use super::driver::{Driver, End, Session, Workload};
use super::world::Node;
use crate::check::{Input, Operation, Outcome, Output};
use crate::command::{Expect, KvCommand, ScanRange, WriteOp, WriteResult};
use crate::machine::{Command, Outcome as Applied};
use rand::rngs::StdRng;
use rand::Rng;

/// The share of operations on the set keys (`s0`, ...): appends of unique elements and
/// reads, checked by `checks::set_valid` as well as for linearizability.
const SET_SHARE: f64 = 0.2;
/// How many set keys there are.
pub const SET_KEYS: usize = 1;
/// The value limit appends carry (`WriteOp::Append::max_len`); set values stay far below.
const MAX_VALUE: u64 = 1 << 20;

/// The share of operations on the multi-key group, when it is on.
const MULTI_SHARE: f64 = 0.25;
/// The keys of the multi-key group, and the prefix its scans read.
const MULTI_KEYS: [&[u8]; 2] = [b"m0", b"m1"];
const MULTI_PREFIX: &[u8] = b"m";

/// The KV clients: the shared client loop over the key-value workload.
pub type Clients = Driver<Kv>;

/// `n` KV clients on `keys` register keys (sessions 1000, 1001, ...).
pub fn clients(n: usize, keys: usize, multi_key: bool, rng: &mut StdRng) -> Clients {
    let kv = Kv {
        keys,
        procs: (0..n as u64).collect(),
        next_proc: n as u64,
        recent: vec![Vec::new(); keys],
        history: Vec::new(),
        multi_key,
    };
    Driver::new(n, 1000, kv, rng)
}

/// One key-value operation.
pub struct KvOp {
    key: Vec<u8>,
    input: Input,
    /// The write with its session; None for a get or a scan.
    cmd: Option<KvCommand>,
    /// Records versions (the multi-key group's operations).
    versioned: bool,
}

/// The key-value workload and the history it recorded.
pub struct Kv {
    keys: usize,
    /// Each client's checker process.
    procs: Vec<u64>,
    next_proc: u64,
    /// Recently written values per key (CAS expectations come from here).
    recent: Vec<Vec<Vec<u8>>>,
    pub history: Vec<Operation>,
    /// Also issue the multi-key group's operations.
    multi_key: bool,
}

impl Kv {
    /// Starts an operation on the multi-key group: MSET of both keys, a put, a versioned
    /// get or a scan.
    fn start_multi(&mut self, session: &mut Session, rng: &mut StdRng) -> KvOp {
        let value = format!("{}.{}", session.id, session.seq + 1).into_bytes();
        let k = MULTI_KEYS[rng.gen_range(0..MULTI_KEYS.len())].to_vec();
        let roll = rng.gen_range(0..100);
        let (key, input, op) = if roll < 30 {
            let pairs: Vec<(Vec<u8>, Vec<u8>)> = MULTI_KEYS
                .iter()
                .map(|k| (k.to_vec(), value.clone()))
                .collect();
            let op = WriteOp::MultiPut {
                pairs: pairs.clone(),
            };
            (MULTI_KEYS[0].to_vec(), Input::MultiPut(pairs), Some(op))
        } else if roll < 50 {
            let op = WriteOp::Put {
                key: k.clone(),
                value: value.clone(),
                return_prev: false,
            };
            (k, Input::Put(value), Some(op))
        } else if roll < 70 {
            (k, Input::Get, None)
        } else {
            (
                MULTI_PREFIX.to_vec(),
                Input::Scan(MULTI_PREFIX.to_vec()),
                None,
            )
        };
        KvOp {
            key,
            input,
            cmd: op.map(|op| command(session, op)),
            versioned: true,
        }
    }

    /// The set keys.
    pub fn set_keys() -> Vec<Vec<u8>> {
        (0..SET_KEYS)
            .map(|k| format!("s{k}").into_bytes())
            .collect()
    }

    pub fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.history.iter().filter(|o| f(&o.outcome)).count()
    }
}

/// `op` as the session's next write.
fn command(session: &mut Session, op: WriteOp) -> KvCommand {
    session.seq += 1;
    KvCommand {
        client_id: session.id,
        seq: session.seq,
        op,
        user: None,
    }
}

impl Workload for Kv {
    type Op = KvOp;
    /// The checker's outcome.
    type Answer = Outcome;

    fn start(&mut self, _client: usize, session: &mut Session, rng: &mut StdRng) -> KvOp {
        if self.multi_key && rng.gen_bool(MULTI_SHARE) {
            return self.start_multi(session, rng);
        }
        let set = rng.gen_bool(SET_SHARE);
        let k = rng.gen_range(0..if set { SET_KEYS } else { self.keys });
        let key = format!("{}{k}", if set { "s" } else { "k" }).into_bytes();
        let value = format!("{}.{}", session.id, session.seq + 1).into_bytes();
        let roll = rng.gen_range(0..100);
        let (input, op) = if set && roll < 40 {
            (Input::Get, None)
        } else if set {
            // A unique element (the session and seq of its command).
            let mut suffix = vec![SET_SEPARATOR];
            suffix.extend_from_slice(&value);
            let op = WriteOp::AppendUpTo {
                key: key.clone(),
                suffix: suffix.clone(),
                max_len: MAX_VALUE,
            };
            (Input::Append(suffix), Some(op))
        } else if roll < 40 {
            (Input::Get, None)
        } else if roll < 65 {
            let op = WriteOp::Put {
                key: key.clone(),
                value: value.clone(),
                return_prev: false,
            };
            (Input::Put(value.clone()), Some(op))
        } else if roll < 85 {
            let recent = &self.recent[k];
            let expect = if recent.is_empty() || rng.gen_bool(0.2) {
                b"none".to_vec()
            } else {
                recent[rng.gen_range(0..recent.len())].clone()
            };
            let op = WriteOp::Cas {
                key: key.clone(),
                expect: Expect::Value(expect.clone()),
                new_value: value.clone(),
            };
            (
                Input::Cas {
                    expect,
                    new: value.clone(),
                },
                Some(op),
            )
        } else {
            let op = WriteOp::Delete {
                key: key.clone(),
                return_prev: false,
            };
            (Input::Delete, Some(op))
        };
        let cmd = op.map(|op| command(session, op));
        if cmd.is_some() && !set {
            let r = &mut self.recent[k];
            r.push(value);
            if r.len() > 4 {
                r.remove(0);
            }
        }
        KvOp {
            key,
            input,
            cmd,
            versioned: false,
        }
    }

    fn command(&self, _session: u64, op: &KvOp) -> Option<Command> {
        op.cmd.as_ref().map(KvCommand::encode)
    }

    fn written(&self, op: &KvOp, answer: Applied, lost: bool) -> Outcome {
        outcome(kv_result(answer), lost, op.versioned)
    }

    fn read(&mut self, op: &KvOp, node: usize, nodes: &[Node]) -> Option<Outcome> {
        // None: the node crashed between answering the barrier and the read.
        let kv = nodes[node].kv.as_ref()?;
        Some(Outcome::Ok(read(kv, op)))
    }

    fn refused(&self, _op: &KvOp) -> Option<Outcome> {
        // A write refused on every attempt certainly failed (a read is not recorded).
        Some(Outcome::Fail)
    }

    fn finish(&mut self, client: usize, end: End<KvOp>, answer: Option<Outcome>) {
        let p = end.op;
        // Given up: a write's outcome is unknown, a read had no effect.
        let outcome = answer.unwrap_or(if p.cmd.is_some() {
            Outcome::Info
        } else {
            Outcome::Fail
        });
        let info = outcome == Outcome::Info;
        if !(outcome == Outcome::Fail && p.cmd.is_none()) {
            self.history.push(Operation {
                client: self.procs[client],
                key: p.key,
                input: p.input,
                call: end.call_event,
                ret: (!info).then_some(end.ret_event),
                outcome,
            });
        }
        if info {
            self.procs[client] = self.next_proc;
            self.next_proc += 1;
        }
    }

    fn describe(&self, op: &KvOp) -> String {
        format!(
            "operation {:?} on {:?}",
            op.input,
            String::from_utf8_lossy(&op.key)
        )
    }

    fn describe_unfinished(&self, op: &KvOp) -> String {
        format!("operation {:?}", op.input)
    }
}

/// What read `op` sees in `kv` (after its barrier).
fn read(kv: &crate::kv::KvStore, op: &KvOp) -> Output {
    match &op.input {
        Input::Scan(prefix) => {
            let range = ScanRange::Prefix(prefix.clone());
            let (rows, _, _) = kv.scan(&range, 1000).expect("memory reads do not fail");
            Output::Rows(
                rows.into_iter()
                    .map(|r| (r.key, r.value, r.version))
                    .collect(),
            )
        }
        _ => {
            let (v, _) = kv.get(&op.key).expect("memory reads do not fail");
            if op.versioned {
                Output::Read(v.map(|v| (v.value, v.version)))
            } else {
                Output::Value(v.map(|v| v.value))
            }
        }
    }
}

/// The key-value result inside a machine outcome.
fn kv_result(r: Applied) -> WriteResult {
    match r {
        Applied::Done(b) => bincode::deserialize(&b).expect("a key-value result decodes"),
        Applied::Rejected(why) => WriteResult::Rejected(why),
        Applied::Superseded(why) => WriteResult::Superseded(why),
        Applied::Denied(why) => WriteResult::Denied(why),
        Applied::SessionReused(why) => WriteResult::SessionReused(why),
    }
}

/// The checker's outcome of a write's answer; `lost`: an earlier attempt was lost;
/// `versioned`: record the version a put or multi-put reports.
fn outcome(r: WriteResult, lost: bool, versioned: bool) -> Outcome {
    match r {
        WriteResult::Put { version, .. } | WriteResult::MultiPut { version } if versioned => {
            Outcome::Ok(Output::Version(version))
        }
        WriteResult::Superseded(_) => Outcome::Info,
        WriteResult::Rejected(_) | WriteResult::SessionReused(_) if lost => Outcome::Info,
        WriteResult::Rejected(_) | WriteResult::SessionReused(_) => Outcome::Fail,
        WriteResult::Put { .. } => Outcome::Ok(Output::Written),
        WriteResult::Delete { deleted, .. } => Outcome::Ok(Output::Deleted(deleted)),
        WriteResult::Cas { succeeded, .. } => Outcome::Ok(Output::Swapped(succeeded)),
        WriteResult::Append { len, .. } => Outcome::Ok(Output::Appended(len)),
        // Kinds of writes the simulation never issues.
        #[allow(unreachable_patterns)]
        _ => Outcome::Info,
    }
}
