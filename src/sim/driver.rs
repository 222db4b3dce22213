//! The one client loop of the simulation, shared by every workload: sessions, one
//! operation in flight per client, sending to a random live node, taking answers,
//! retrying lost and refused attempts, giving up, and the liveness bound after healing.
//!
//! A [`Driver`] runs `n` clients of one [`Workload`]. Each client has a session
//! (`client_id`, and a `seq` the workload raises for every new write; a retry keeps it,
//! as the real client does). In every round ([`Driver::act`]) the driver first takes
//! every answer that arrived (their return events numbered), then resends attempts whose
//! retry time came and, if new operations are being issued, starts one for every idle
//! client whose think time is over. The workload decides what an operation is
//! ([`Workload::start`]), what goes to the node (a logged command, or a linearizable
//! read: `Event::ReadBarrier`, then [`Workload::read`] on that node), what an answer
//! means, and what to record when the operation ends ([`Workload::finish`]): the KV
//! clients (`clients`) record a checker history, the SQL bank (`bank`) the transfers'
//! fates and its reads' checks.
//!
//! The driver draws from the world's random stream in a fixed order (a client's start
//! time at creation; per operation the workload's draws, then its attempt limit; per
//! attempt the node; per answer a think time; per lost attempt a retry delay), so a seed
//! replays exactly.
//!
//! # Invariants
//!
//! - A client has at most one operation in flight; an operation ends exactly once
//!   (answered, given up after its attempts, or at [`Driver::close`]), and the workload
//!   hears of it exactly once.
//! - Event numbers (call and return) grow strictly, one per call and per return, in the
//!   order they happen: answers of a round are numbered before that round's calls.
//! - An operation called after healing (`live_from`) is never given up: it is retried
//!   until answered, and one that took longer than `bound`, or never finished, is a
//!   liveness complaint.

use super::world::Node;
use crate::error::Error;
use crate::machine::{Command, Outcome as Applied};
use crate::node::Event;
use crate::Result;
use rand::rngs::StdRng;
use rand::Rng;
use std::time::{Duration, Instant};
use tokio::sync::oneshot::{self, error::TryRecvError};

/// Most attempts of one operation while faults are on, before it is given up (each
/// operation draws its own limit, 1 to this).
const MAX_ATTEMPTS: u32 = 3;

/// A client's session: its id and the seq of its latest write.
pub struct Session {
    pub id: u64,
    pub seq: u64,
}

/// What a workload's operations are, how they go to a node, and what their ends mean.
pub trait Workload {
    /// One operation, from its call to its end.
    type Op;
    /// What an answered operation returned.
    type Answer;

    /// Client `client`'s next operation (a write takes the session's next seq).
    fn start(&mut self, client: usize, session: &mut Session, rng: &mut StdRng) -> Self::Op;
    /// The command `op` proposes, with `session`'s id; `None`: a linearizable read.
    fn command(&self, session: u64, op: &Self::Op) -> Option<Command>;
    /// What a write's answer means; `lost`: an earlier attempt of it was lost.
    fn written(&self, op: &Self::Op, answer: Applied, lost: bool) -> Self::Answer;
    /// A read after its barrier on `nodes[node]`; `None`: no answer (the node crashed
    /// after the barrier, or the read failed: the workload records why).
    fn read(&mut self, op: &Self::Op, node: usize, nodes: &[Node]) -> Option<Self::Answer>;
    /// What `op` ending with every attempt refused means (it certainly did not happen);
    /// `None`: the same as given up.
    fn refused(&self, _op: &Self::Op) -> Option<Self::Answer> {
        None
    }
    /// `op` ended: answered, or (`None`) given up or unfinished at the end.
    fn finish(&mut self, client: usize, end: End<Self::Op>, answer: Option<Self::Answer>);
    /// `op`, in a complaint about an operation that took too long.
    fn describe(&self, op: &Self::Op) -> String;
    /// `op`, in a complaint about an operation still unfinished at the end.
    fn describe_unfinished(&self, op: &Self::Op) -> String {
        self.describe(op)
    }
}

/// An ended operation as the workload records it.
pub struct End<Op> {
    pub op: Op,
    /// Event number of its call, and of its end.
    pub call_event: u64,
    pub ret_event: u64,
    /// The node of its last attempt.
    pub node: usize,
}

enum Rx {
    Write(oneshot::Receiver<Result<Applied>>),
    Read(oneshot::Receiver<Result<()>>),
    /// Not sent yet, or lost: (re)send at this time.
    RetryAt(Duration),
}

struct Pending<Op> {
    op: Op,
    /// Virtual time of the call (for the liveness bound).
    call: Duration,
    /// Event number of the call (the history's time).
    call_event: u64,
    node: usize,
    attempts: u32,
    max_attempts: u32,
    lost: bool,
    rx: Rx,
}

struct Client<Op> {
    session: Session,
    pending: Option<Pending<Op>>,
    next_at: Duration,
}

/// The clients of one workload.
pub struct Driver<W: Workload> {
    clients: Vec<Client<W::Op>>,
    /// What the workload recorded.
    pub workload: W,
    /// Operations called at or after this time must complete within `bound`.
    pub live_from: Option<Duration>,
    pub bound: Duration,
    pub liveness_violation: Option<String>,
    /// Bug injection: answer reads from the local store without a read barrier.
    pub stale_reads: bool,
    /// Attempts that got no answer (timeout or crashed node).
    pub lost_attempts: u64,
    /// The last event number handed out (see [`Driver::event`]).
    events: u64,
}

impl<W: Workload> Driver<W> {
    /// `n` clients of `workload`, with sessions `first_session`, `first_session + 1`, ...
    pub fn new(n: usize, first_session: u64, workload: W, rng: &mut StdRng) -> Driver<W> {
        Driver {
            clients: (0..n as u64)
                .map(|i| Client {
                    session: Session {
                        id: first_session + i,
                        seq: 0,
                    },
                    pending: None,
                    next_at: Duration::from_millis(rng.gen_range(0..50)),
                })
                .collect(),
            workload,
            live_from: None,
            bound: Duration::from_secs(10),
            liveness_violation: None,
            stale_reads: false,
            lost_attempts: 0,
            events: 0,
        }
    }

    /// The next event number: every call and every return gets one, in the order they
    /// happen, so real-time order is exact (no two events tie, as calls and returns
    /// within one round of virtual time would).
    fn event(&mut self) -> u64 {
        self.events += 1;
        self.events
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

    /// Client `i` calls its next operation now.
    fn start(&mut self, i: usize, now: Duration, rng: &mut StdRng) {
        let op = self.workload.start(i, &mut self.clients[i].session, rng);
        let call_event = self.event();
        self.clients[i].pending = Some(Pending {
            op,
            call: now,
            call_event,
            node: 0,
            attempts: 0,
            max_attempts: rng.gen_range(1..=MAX_ATTEMPTS),
            lost: false,
            rx: Rx::RetryAt(now),
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
        let c = &mut self.clients[i];
        let p = c.pending.as_mut().unwrap();
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
        let read = match self.workload.command(c.session.id, &p.op) {
            Some(cmd) => {
                let (tx, rx) = oneshot::channel();
                core.handle(Event::Write { cmd, reply: tx }, at);
                p.rx = Rx::Write(rx);
                false
            }
            None => {
                let (tx, rx) = oneshot::channel();
                if stale {
                    let _ = tx.send(Ok(()));
                } else {
                    core.handle(Event::ReadBarrier { reply: tx }, at);
                }
                p.rx = Rx::Read(rx);
                true
            }
        };
        if stale && read {
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
                Ok(Ok(r)) => Some(self.workload.written(&p.op, r, p.lost)),
                Ok(Err(Error::Unavailable(_))) => return self.refused(i, now, rng),
                // A timeout (outcome unknown) or a crashed node.
                Ok(Err(_)) | Err(TryRecvError::Closed) => None,
            },
            Rx::Read(rx) => match rx.try_recv() {
                Err(TryRecvError::Empty) => return,
                Ok(Ok(())) => self.workload.read(&p.op, p.node, nodes),
                Ok(Err(Error::Unavailable(_))) => return self.refused(i, now, rng),
                Ok(Err(_)) | Err(TryRecvError::Closed) => None,
            },
        };
        match answer {
            Some(answer) => {
                let think = rng.gen_range(0..30);
                self.finish(i, Some(answer), now, think)
            }
            None => {
                p.lost = true;
                self.lost_attempts += 1;
                let live = self.live_from.is_some_and(|t| p.call >= t);
                if p.attempts >= p.max_attempts && !live {
                    self.finish(i, None, now, 0);
                } else {
                    p.rx = Rx::RetryAt(now + Duration::from_millis(rng.gen_range(10..200)));
                }
            }
        }
    }

    /// Client `i`'s attempt was refused by a node that cannot serve it now (cut off from
    /// the majority, catching up, removed): that attempt did nothing. The client tries
    /// again, as the real one moves on to the next node; once out of attempts, an
    /// operation none of whose attempts was lost certainly did not happen (the real
    /// client library is more cautious and reports it as unknown; the simulation sees
    /// every answer, so it checks the server's promise itself).
    fn refused(&mut self, i: usize, now: Duration, rng: &mut StdRng) {
        let p = self.clients[i].pending.as_mut().unwrap();
        let live = self.live_from.is_some_and(|t| p.call >= t);
        if p.attempts >= p.max_attempts && !live {
            let answer = if p.lost {
                None
            } else {
                self.workload.refused(&p.op)
            };
            self.finish(i, answer, now, 0);
        } else {
            p.rx = Rx::RetryAt(now + Duration::from_millis(rng.gen_range(10..200)));
        }
    }

    /// Ends client `i`'s operation: `None`, given up or unfinished.
    fn finish(&mut self, i: usize, answer: Option<W::Answer>, now: Duration, think_ms: u64) {
        let ret_event = self.event();
        let c = &mut self.clients[i];
        let p = c.pending.take().unwrap();
        c.next_at = now + Duration::from_millis(think_ms);
        if let Some(from) = self.live_from {
            if p.call >= from && now - p.call > self.bound && self.liveness_violation.is_none() {
                self.liveness_violation = Some(format!(
                    "{} called at {:?} after healing took {:?}",
                    self.workload.describe(&p.op),
                    p.call,
                    now - p.call
                ));
            }
        }
        let end = End {
            op: p.op,
            call_event: p.call_event,
            ret_event,
            node: p.node,
        };
        self.workload.finish(i, end, answer);
    }

    /// Ends the run: every unfinished operation ends unanswered. Returns a liveness
    /// complaint about operations still pending that had to finish.
    pub fn close(&mut self, now: Duration) -> Option<String> {
        let mut complaint = None;
        for i in 0..self.clients.len() {
            let Some(p) = &self.clients[i].pending else {
                continue;
            };
            if self.live_from.is_some_and(|t| p.call >= t) && complaint.is_none() {
                complaint = Some(format!(
                    "{} called at {:?} after healing never completed ({} attempts, last to \
                     node {})",
                    self.workload.describe_unfinished(&p.op),
                    p.call,
                    p.attempts,
                    p.node + 1
                ));
            }
            self.finish(i, None, now, 0);
        }
        complaint
    }
}
