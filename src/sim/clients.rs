//! Simulated clients and the history they record.
//!
//! Each client has one session (`client_id`, and a `seq` that grows with every new
//! write; a retry keeps its `seq`, as the real client does) and at most one operation in
//! flight: put, get, compare-and-swap or delete on a few register keys (`k0`, ...), or an
//! append of a unique element (`,<session>.<seq>`) or a get on a set key (`s0`), sent to a
//! random live node. A get is a linearizable read: `Event::ReadBarrier`, then `KvStore::get` on that
//! node's store.
//!
//! Every operation is recorded once, as a [`crate::check::Operation`] whose call and return
//! times are event numbers: one counter numbers every call and every return in the order
//! they happen (all answers that arrived are taken before the calls of the same round), so
//! real-time order is exact — virtual time has ties (a return and a call in the same
//! round), which the checker would treat as concurrency. An operation ends `Ok` with what
//! it returned; `Fail` if the node rejected it (it certainly did not happen); `Info` if an attempt was lost (timeout, crashed node)
//! and no retry with the same session returned an answer — an answer to a retry completes
//! the operation with that retry's return time. After an `Info` the client continues as a
//! new checker process (its lost operation may still take effect at any later time).
//! A read that is not answered had no effect and is retried or dropped.

use super::checks::SET_SEPARATOR;
use super::world::Node;
use crate::check::{Input, Operation, Outcome, Output};
use crate::command::{Expect, KvCommand, ScanRange, WriteOp, WriteResult};
use crate::machine::Outcome as Applied;
use crate::node::Event;
use crate::Result;
use rand::rngs::StdRng;
use rand::Rng;
use std::time::{Duration, Instant};
use tokio::sync::oneshot::{self, error::TryRecvError};

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

/// Most attempts of one operation while faults are on, before it is given up as `Info`
/// (each operation draws its own limit, 1 to this).
const MAX_ATTEMPTS: u32 = 3;

enum Rx {
    Write(oneshot::Receiver<Result<Applied>>),
    Read(oneshot::Receiver<Result<()>>),
    /// Not sent yet, or lost: (re)send at this time.
    RetryAt(Duration),
}

struct Pending {
    key: Vec<u8>,
    input: Input,
    /// The write with its session; None for a get.
    cmd: Option<KvCommand>,
    /// Virtual time of the call (for the liveness bound).
    call: Duration,
    /// Event number of the call (the history's time).
    call_event: u64,
    node: usize,
    attempts: u32,
    max_attempts: u32,
    lost: bool,
    rx: Rx,
    /// Records versions (the multi-key group's operations).
    versioned: bool,
}

struct Client {
    session: u64,
    seq: u64,
    proc: u64,
    pending: Option<Pending>,
    next_at: Duration,
}

/// All clients, their history and their counters.
pub struct Clients {
    clients: Vec<Client>,
    keys: usize,
    next_proc: u64,
    /// Recently written values per key (CAS expectations come from here).
    recent: Vec<Vec<Vec<u8>>>,
    pub history: Vec<Operation>,
    /// Operations called at or after this time must complete within `bound`.
    pub live_from: Option<Duration>,
    pub bound: Duration,
    pub liveness_violation: Option<String>,
    /// Bug injection: answer gets from the local store without a read barrier.
    pub stale_reads: bool,
    /// Also issue the multi-key group's operations.
    pub multi_key: bool,
    /// Attempts that got no answer (timeout or crashed node).
    pub lost_attempts: u64,
    /// The last event number handed out (see [`Clients::event`]).
    events: u64,
}

impl Clients {
    /// The next event number: every call and every return of the history gets one, in
    /// the order they happen, so the history's real-time order is exact (no two events
    /// tie, as calls and returns within one round of virtual time would).
    fn event(&mut self) -> u64 {
        self.events += 1;
        self.events
    }

    pub fn new(n: usize, keys: usize, rng: &mut StdRng) -> Clients {
        Clients {
            clients: (0..n as u64)
                .map(|i| Client {
                    session: 1000 + i,
                    seq: 0,
                    proc: i,
                    pending: None,
                    next_at: Duration::from_millis(rng.gen_range(0..50)),
                })
                .collect(),
            keys,
            next_proc: n as u64,
            recent: vec![Vec::new(); keys],
            history: Vec::new(),
            live_from: None,
            bound: Duration::from_secs(10),
            liveness_violation: None,
            stale_reads: false,
            multi_key: false,
            lost_attempts: 0,
            events: 0,
        }
    }

    /// When a client next wants to act (new operation or retry).
    pub fn next_time(&self, issuing: bool) -> Option<Duration> {
        self.clients
            .iter()
            .filter_map(|c| match &c.pending {
                Some(Pending {
                    rx: Rx::RetryAt(t), ..
                }) => Some(*t),
                Some(_) => None,
                None => issuing.then_some(c.next_at),
            })
            .min()
    }

    /// True while some operation is unfinished.
    pub fn busy(&self) -> bool {
        self.clients.iter().any(|c| c.pending.is_some())
    }

    /// Collects answers, retries lost attempts and, if `issuing`, starts new operations.
    pub fn act(
        &mut self,
        now: Duration,
        base: Instant,
        rng: &mut StdRng,
        nodes: &mut [Node],
        issuing: bool,
    ) {
        // Every answer that arrived is taken (its return event numbered) before any new
        // call of this round: those answers came out of earlier steps of the nodes, so
        // they did return before these calls were made.
        for i in 0..self.clients.len() {
            self.poll(i, now, rng, nodes);
        }
        for i in 0..self.clients.len() {
            let c = &self.clients[i];
            let resend =
                matches!(&c.pending, Some(Pending { rx: Rx::RetryAt(t), .. }) if *t <= now);
            if resend {
                self.send(i, now, base, rng, nodes);
            } else if c.pending.is_none() && issuing && c.next_at <= now {
                self.start(i, now, rng);
                self.send(i, now, base, rng, nodes);
            }
        }
    }

    /// Starts an operation on the multi-key group: MSET of both keys, a put, a versioned
    /// get or a scan.
    fn start_multi(&mut self, i: usize, now: Duration, rng: &mut StdRng) {
        let c = &mut self.clients[i];
        let value = format!("{}.{}", c.session, c.seq + 1).into_bytes();
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
        let cmd = op.map(|op| {
            c.seq += 1;
            KvCommand {
                client_id: c.session,
                seq: c.seq,
                op,
                user: None,
            }
        });
        self.begin(i, key, input, cmd, now, rng, true);
    }

    fn start(&mut self, i: usize, now: Duration, rng: &mut StdRng) {
        if self.multi_key && rng.gen_bool(MULTI_SHARE) {
            return self.start_multi(i, now, rng);
        }
        let set = rng.gen_bool(SET_SHARE);
        let k = rng.gen_range(0..if set { SET_KEYS } else { self.keys });
        let key = format!("{}{k}", if set { "s" } else { "k" }).into_bytes();
        let c = &mut self.clients[i];
        let value = format!("{}.{}", c.session, c.seq + 1).into_bytes();
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
        let cmd = op.map(|op| {
            c.seq += 1;
            KvCommand {
                client_id: c.session,
                seq: c.seq,
                op,
                user: None,
            }
        });
        if cmd.is_some() && !set {
            let r = &mut self.recent[k];
            r.push(value);
            if r.len() > 4 {
                r.remove(0);
            }
        }
        self.begin(i, key, input, cmd, now, rng, false);
    }

    /// Client `i` calls its next operation now.
    #[allow(clippy::too_many_arguments)]
    fn begin(
        &mut self,
        i: usize,
        key: Vec<u8>,
        input: Input,
        cmd: Option<KvCommand>,
        now: Duration,
        rng: &mut StdRng,
        versioned: bool,
    ) {
        let call_event = self.event();
        self.clients[i].pending = Some(Pending {
            key,
            input,
            cmd,
            call: now,
            call_event,
            node: 0,
            attempts: 0,
            max_attempts: rng.gen_range(1..=MAX_ATTEMPTS),
            lost: false,
            rx: Rx::RetryAt(now),
            versioned,
        });
    }

    /// Sends the pending operation of client `i` to a random live node.
    fn send(
        &mut self,
        i: usize,
        now: Duration,
        base: Instant,
        rng: &mut StdRng,
        nodes: &mut [Node],
    ) {
        let live: Vec<usize> = (0..nodes.len())
            .filter(|&n| nodes[n].is_running())
            .collect();
        let stale = self.stale_reads;
        let p = self.clients[i].pending.as_mut().unwrap();
        if live.is_empty() {
            // Connection refused everywhere: nothing was sent; try again later.
            p.rx = Rx::RetryAt(now + Duration::from_millis(100));
            return;
        }
        let node = live[rng.gen_range(0..live.len())];
        p.node = node;
        p.attempts += 1;
        let at = base + now;
        let core = nodes[node].core.as_mut().unwrap();
        match &p.cmd {
            Some(cmd) => {
                let (tx, rx) = oneshot::channel();
                core.handle(
                    Event::Write {
                        cmd: cmd.encode(),
                        reply: tx,
                    },
                    at,
                );
                p.rx = Rx::Write(rx);
            }
            None => {
                let (tx, rx) = oneshot::channel();
                if stale {
                    let _ = tx.send(Ok(()));
                } else {
                    core.handle(Event::ReadBarrier { reply: tx }, at);
                }
                p.rx = Rx::Read(rx);
            }
        }
        if stale && p.cmd.is_none() {
            self.poll(i, now, rng, nodes);
        }
    }

    /// Takes the answer of client `i`'s attempt, if one arrived.
    fn poll(&mut self, i: usize, now: Duration, rng: &mut StdRng, nodes: &[Node]) {
        let Some(p) = self.clients[i].pending.as_mut() else {
            return;
        };
        let answer = match &mut p.rx {
            Rx::RetryAt(_) => return,
            Rx::Write(rx) => match rx.try_recv() {
                Err(TryRecvError::Empty) => return,
                Ok(Ok(r)) => Some(outcome(kv_result(r), p.lost, p.versioned)),
                // A timeout (outcome unknown) or a crashed node.
                Ok(Err(_)) | Err(TryRecvError::Closed) => None,
            },
            Rx::Read(rx) => match rx.try_recv() {
                Err(TryRecvError::Empty) => return,
                // The node crashed between answering the barrier and the read.
                Ok(Ok(())) if nodes[p.node].kv.is_none() => None,
                Ok(Ok(())) => {
                    let kv = nodes[p.node].kv.as_ref().unwrap();
                    Some(Outcome::Ok(read(kv, p)))
                }
                Ok(Err(_)) | Err(TryRecvError::Closed) => None,
            },
        };
        match answer {
            Some(outcome) => {
                let think = rng.gen_range(0..30);
                self.finish(i, outcome, now, think)
            }
            None => {
                p.lost = true;
                self.lost_attempts += 1;
                let live = self.live_from.is_some_and(|t| p.call >= t);
                if p.attempts >= p.max_attempts && !live {
                    let outcome = if p.cmd.is_some() {
                        Outcome::Info
                    } else {
                        Outcome::Fail
                    };
                    self.finish(i, outcome, now, 0);
                } else {
                    p.rx = Rx::RetryAt(now + Duration::from_millis(rng.gen_range(10..200)));
                }
            }
        }
    }

    fn finish(&mut self, i: usize, outcome: Outcome, now: Duration, think_ms: u64) {
        let ret_event = self.event();
        let c = &mut self.clients[i];
        let p = c.pending.take().unwrap();
        if let Some(from) = self.live_from {
            if p.call >= from && now - p.call > self.bound && self.liveness_violation.is_none() {
                self.liveness_violation = Some(format!(
                    "operation {:?} on {:?} called at {:?} after healing took {:?}",
                    p.input,
                    String::from_utf8_lossy(&p.key),
                    p.call,
                    now - p.call
                ));
            }
        }
        let info = outcome == Outcome::Info;
        if !(outcome == Outcome::Fail && p.cmd.is_none()) {
            self.history.push(Operation {
                client: c.proc,
                key: p.key,
                input: p.input,
                call: p.call_event,
                ret: (!info).then_some(ret_event),
                outcome,
            });
        }
        if info {
            c.proc = self.next_proc;
            self.next_proc += 1;
        }
        c.next_at = now + Duration::from_millis(think_ms);
    }

    /// Ends the run: unfinished writes become `Info`, unfinished reads are dropped.
    /// Returns a liveness complaint about operations still pending that had to finish.
    pub fn close(&mut self, now: Duration) -> Option<String> {
        let mut complaint = None;
        for i in 0..self.clients.len() {
            let Some(p) = &self.clients[i].pending else {
                continue;
            };
            if self.live_from.is_some_and(|t| p.call >= t) && complaint.is_none() {
                complaint = Some(format!(
                    "operation {:?} called at {:?} after healing never completed \
                     ({} attempts, last to node {})",
                    p.input,
                    p.call,
                    p.attempts,
                    p.node + 1
                ));
            }
            let outcome = if p.cmd.is_some() {
                Outcome::Info
            } else {
                Outcome::Fail
            };
            self.finish(i, outcome, now, 0);
        }
        complaint
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

/// What read `p` sees in `kv` (after its barrier).
fn read(kv: &crate::kv::KvStore, p: &Pending) -> Output {
    match &p.input {
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
            let (v, _) = kv.get(&p.key).expect("memory reads do not fail");
            if p.versioned {
                Output::Read(v.map(|v| (v.value, v.version)))
            } else {
                Output::Value(v.map(|v| v.value))
            }
        }
    }
}

/// The checker's outcome of a write's answer; `lost`: an earlier attempt was lost;
/// `versioned`: record the version a put or multi-put reports.
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
