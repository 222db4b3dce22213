//! The SQL bank-transfer workload and its checker.
//!
//! A few bank clients (beside the KV clients of `clients`, on the same log) each have a
//! session of their own (`client_id`, a `seq` that grows with every new request; a retry
//! keeps it). A client's first request creates the bank, idempotently: tables `accounts`
//! ([`ACCOUNTS`] rows of [`OPENING`]) and `ledger`, and it repeats it until one is
//! acknowledged. Then it issues transfers and total reads to random live nodes:
//!
//! - a transfer is one SQL request run as a transaction: take an amount from one account,
//!   add it to another, and insert a ledger row naming the transfer (`tid`, unique per
//!   transfer: the session and seq). It goes through the log as a `Machine::Sql` command
//!   with the client's session, as KV writes do: `Event::Write`, retried with the same
//!   session after a lost answer. It ends acknowledged (the request's results came back),
//!   failed (rejected, never lost), or unknown (every attempt lost, or superseded);
//! - a total read is linearizable, by the KV reads' mechanism: `Event::ReadBarrier`, then a
//!   query on that node's [`SqlReader`] (every account and every ledger row, in one read
//!   transaction).
//!
//! Checked, by each read as it returns: the accounts sum to the opening total
//! ([`Kind::BankTotal`]); no transfer's ledger row appears twice
//! ([`Kind::TransferDuplicated`]); every transfer acknowledged before the read was called is
//! in it, and none that certainly failed is ([`Kind::TransferLost`]); each balance is
//! its opening plus what the ledger moved in and out ([`Kind::BankTotal`]). At the end
//! ([`Bank::check_final`]) the same on the final state. Unknown transfers may have applied
//! or not, never twice. The replicas' SQL states are compared byte for byte elsewhere
//! (`final_checks`).
//!
//! # Invariants
//!
//! - A transfer counts as acknowledged only from an answer carrying its results, and as
//!   refused only from a refusal with no earlier attempt lost; anything else is unknown.
//! - A read that fails is a violation, never a pass (reads are only issued once the
//!   issuing client's setup was acknowledged, so the tables exist).

use super::checks::{Kind, Violation};
use super::world::Node;
use crate::machine::{Command, Machine, Outcome as Applied};
use crate::node::Event;
use crate::sql::{Request, SqlReader, Statement, StatementResult, Value};
use crate::Result;
use rand::rngs::StdRng;
use rand::Rng;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::sync::oneshot::{self, error::TryRecvError};

/// Accounts in the bank, and each one's opening balance.
pub const ACCOUNTS: i64 = 5;
pub const OPENING: i64 = 100;

/// Most attempts of one request while faults are on (each draws 1 to this).
const MAX_ATTEMPTS: u32 = 3;
/// The share of a bank client's operations that are total reads.
const READ_SHARE: f64 = 0.3;

/// What became of a transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Acknowledged, at this event number.
    Acked(u64),
    /// Certainly not applied.
    Failed,
    /// Unknown: may have applied (once) or not.
    Unknown,
}

/// One transfer: its id (the ledger's `tid`), the accounts and the amount.
#[derive(Clone, Copy, Debug)]
pub struct Transfer {
    pub tid: i64,
    pub from: i64,
    pub to: i64,
    pub amount: i64,
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Setup,
    Transfer(Transfer),
    Read,
}

enum Rx {
    Write(oneshot::Receiver<Result<Applied>>),
    Read(oneshot::Receiver<Result<()>>),
    RetryAt(Duration),
}

struct Pending {
    op: Op,
    /// The request's session seq (writes).
    seq: u64,
    call: Duration,
    call_event: u64,
    node: usize,
    attempts: u32,
    max_attempts: u32,
    lost: bool,
    rx: Rx,
}

struct Client {
    session: u64,
    seq: u64,
    /// The bank exists (this client's setup was acknowledged).
    open: bool,
    pending: Option<Pending>,
    next_at: Duration,
}

/// The bank clients, what became of their transfers, and the first violation seen.
pub struct Bank {
    clients: Vec<Client>,
    pub fates: BTreeMap<i64, (Transfer, Fate)>,
    /// Total reads that returned.
    pub reads: u64,
    /// Operations called at or after this time must complete within `bound`.
    pub live_from: Option<Duration>,
    pub bound: Duration,
    pub liveness_violation: Option<String>,
    pub violation: Option<Violation>,
    pub lost_attempts: u64,
    events: u64,
}

/// The request that creates the bank (idempotent).
fn setup_request() -> Request {
    let rows: Vec<String> = (0..ACCOUNTS).map(|a| format!("({a}, {OPENING})")).collect();
    Request {
        statements: vec![
            Statement::new(
                "CREATE TABLE IF NOT EXISTS accounts \
                 (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL)",
            ),
            Statement::new(
                "CREATE TABLE IF NOT EXISTS ledger (tid INTEGER NOT NULL, src INTEGER NOT NULL, \
                 dst INTEGER NOT NULL, amount INTEGER NOT NULL)",
            ),
            Statement::new(format!(
                "INSERT OR IGNORE INTO accounts (id, balance) VALUES {}",
                rows.join(", ")
            )),
        ],
        transaction: true,
    }
}

fn transfer_request(t: &Transfer) -> Request {
    let Transfer {
        tid,
        from,
        to,
        amount,
    } = *t;
    Request {
        statements: vec![
            Statement::new(format!(
                "UPDATE accounts SET balance = balance - {amount} WHERE id = {from}"
            )),
            Statement::new(format!(
                "UPDATE accounts SET balance = balance + {amount} WHERE id = {to}"
            )),
            Statement::new(format!(
                "INSERT INTO ledger (tid, src, dst, amount) VALUES ({tid}, {from}, {to}, {amount})"
            )),
        ],
        transaction: true,
    }
}

fn read_request() -> Request {
    Request {
        statements: vec![
            Statement::new("SELECT id, balance FROM accounts ORDER BY id"),
            Statement::new("SELECT tid, src, dst, amount FROM ledger ORDER BY rowid"),
        ],
        transaction: false,
    }
}

/// The bank as one read saw it: balances by account, and the ledger rows.
pub struct Books {
    pub balances: BTreeMap<i64, i64>,
    pub ledger: Vec<[i64; 4]>,
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Integer(i) => Some(*i),
        _ => None,
    }
}

/// Reads the books on `reader` (what a read's query returns).
pub fn read_books(reader: &SqlReader) -> std::result::Result<Books, String> {
    let out = reader.query(&read_request()).map_err(|e| e.to_string())?;
    let rows = |r: &StatementResult| -> std::result::Result<Vec<Vec<i64>>, String> {
        if let Some(e) = &r.error {
            return Err(e.clone());
        }
        r.rows
            .iter()
            .map(|row| row.iter().map(int).collect::<Option<Vec<i64>>>())
            .collect::<Option<_>>()
            .ok_or_else(|| "a non-integer in the books".to_string())
    };
    let [accounts, ledger] = &out.results[..] else {
        return Err(format!("{} results for 2 statements", out.results.len()));
    };
    Ok(Books {
        balances: rows(accounts)?.into_iter().map(|r| (r[0], r[1])).collect(),
        ledger: rows(ledger)?
            .into_iter()
            .map(|r| [r[0], r[1], r[2], r[3]])
            .collect(),
    })
}

impl Bank {
    pub fn new(n: usize, rng: &mut StdRng) -> Bank {
        Bank {
            clients: (0..n as u64)
                .map(|i| Client {
                    session: 5000 + i,
                    seq: 0,
                    open: false,
                    pending: None,
                    next_at: Duration::from_millis(rng.gen_range(0..50)),
                })
                .collect(),
            fates: BTreeMap::new(),
            reads: 0,
            live_from: None,
            bound: Duration::from_secs(10),
            liveness_violation: None,
            violation: None,
            lost_attempts: 0,
            events: 0,
        }
    }

    fn event(&mut self) -> u64 {
        self.events += 1;
        self.events
    }

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

    pub fn busy(&self) -> bool {
        self.clients.iter().any(|c| c.pending.is_some())
    }

    /// Transfers acknowledged, and with an unknown outcome.
    pub fn count(&self, f: impl Fn(&Fate) -> bool) -> u64 {
        self.fates.values().filter(|(_, fate)| f(fate)).count() as u64
    }

    /// Collects answers, retries lost attempts and, if `issuing`, starts new operations
    /// (as `Clients::act`).
    pub fn act(
        &mut self,
        now: Duration,
        base: Instant,
        rng: &mut StdRng,
        nodes: &mut [Node],
        issuing: bool,
    ) {
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

    fn start(&mut self, i: usize, now: Duration, rng: &mut StdRng) {
        let c = &mut self.clients[i];
        let op = if !c.open {
            Op::Setup
        } else if rng.gen_bool(READ_SHARE) {
            Op::Read
        } else {
            let from = rng.gen_range(0..ACCOUNTS);
            let to = (from + rng.gen_range(1..ACCOUNTS)) % ACCOUNTS;
            Op::Transfer(Transfer {
                tid: (c.session * 1_000_000 + c.seq + 1) as i64,
                from,
                to,
                amount: rng.gen_range(1..=30),
            })
        };
        if !matches!(op, Op::Read) {
            c.seq += 1;
        }
        let seq = c.seq;
        let call_event = self.event();
        self.clients[i].pending = Some(Pending {
            op,
            seq,
            call: now,
            call_event,
            node: 0,
            attempts: 0,
            max_attempts: rng.gen_range(1..=MAX_ATTEMPTS),
            lost: false,
            rx: Rx::RetryAt(now),
        });
    }

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
        let session = self.clients[i].session;
        let p = self.clients[i].pending.as_mut().unwrap();
        if live.is_empty() {
            p.rx = Rx::RetryAt(now + Duration::from_millis(100));
            return;
        }
        let node = live[rng.gen_range(0..live.len())];
        p.node = node;
        p.attempts += 1;
        let at = base + now;
        let core = nodes[node].core.as_mut().unwrap();
        let request = match &p.op {
            Op::Setup => Some(setup_request()),
            Op::Transfer(t) => Some(transfer_request(t)),
            Op::Read => None,
        };
        match request {
            Some(req) => {
                let (tx, rx) = oneshot::channel();
                let cmd = Command {
                    client_id: session,
                    seq: p.seq,
                    user: None,
                    machine: Machine::Sql,
                    payload: bincode::serialize(&req).expect("a request encodes"),
                };
                core.handle(Event::Write { cmd, reply: tx }, at);
                p.rx = Rx::Write(rx);
            }
            None => {
                let (tx, rx) = oneshot::channel();
                core.handle(Event::ReadBarrier { reply: tx }, at);
                p.rx = Rx::Read(rx);
            }
        }
    }

    fn poll(&mut self, i: usize, now: Duration, rng: &mut StdRng, nodes: &[Node]) {
        let Some(p) = self.clients[i].pending.as_mut() else {
            return;
        };
        // Some(Ok(fate)) for a write, Some(Err(books)) for a read; None: lost.
        let answer: Option<std::result::Result<Fate, Books>> = match &mut p.rx {
            Rx::RetryAt(_) => return,
            Rx::Write(rx) => match rx.try_recv() {
                Err(TryRecvError::Empty) => return,
                Ok(Ok(r)) => Some(Ok(write_fate(r, p.lost))),
                Ok(Err(_)) | Err(TryRecvError::Closed) => None,
            },
            Rx::Read(rx) => match rx.try_recv() {
                Err(TryRecvError::Empty) => return,
                Ok(Ok(())) => match nodes[p.node].sql.as_ref().map(read_books) {
                    Some(Ok(books)) => Some(Err(books)),
                    Some(Err(e)) => {
                        self.violation.get_or_insert(Violation::new(
                            Kind::BankTotal,
                            format!("bank: a read on node {} failed: {e}", p.node + 1),
                        ));
                        None
                    }
                    // The node crashed between answering the barrier and the read.
                    None => None,
                },
                Ok(Err(_)) | Err(TryRecvError::Closed) => None,
            },
        };
        match answer {
            Some(a) => {
                let think = rng.gen_range(0..30);
                self.finish(i, Some(a), now, think);
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

    /// Ends client `i`'s operation: `None`, given up (a write's outcome unknown).
    fn finish(
        &mut self,
        i: usize,
        answer: Option<std::result::Result<Fate, Books>>,
        now: Duration,
        think_ms: u64,
    ) {
        let ret = self.event();
        let p = self.clients[i].pending.take().unwrap();
        self.clients[i].next_at = now + Duration::from_millis(think_ms);
        if let Some(from) = self.live_from {
            if p.call >= from && now - p.call > self.bound && self.liveness_violation.is_none() {
                self.liveness_violation = Some(format!(
                    "bank {:?} called at {:?} after healing took {:?}",
                    p.op,
                    p.call,
                    now - p.call
                ));
            }
        }
        match (p.op, answer) {
            (Op::Setup, Some(Ok(Fate::Acked(_)))) => self.clients[i].open = true,
            (Op::Setup, _) | (Op::Read, None) => {}
            (Op::Transfer(t), answer) => {
                let fate = match answer {
                    Some(Ok(Fate::Acked(_))) => Fate::Acked(ret),
                    Some(Ok(f)) => f,
                    _ => Fate::Unknown,
                };
                self.fates.insert(t.tid, (t, fate));
            }
            (Op::Read, Some(Err(books))) => {
                self.reads += 1;
                if let Err(v) = self.check_books(&books, Some(p.call_event)) {
                    self.violation.get_or_insert(Violation {
                        message: format!(
                            "{} (read on node {} called at event {})",
                            v.message,
                            p.node + 1,
                            p.call_event
                        ),
                        ..v
                    });
                }
            }
            (Op::Read, Some(Ok(_))) => unreachable!("a read's answer is books"),
        }
    }

    /// Ends the run: unfinished transfers become unknown.
    pub fn close(&mut self, now: Duration) -> Option<String> {
        let mut complaint = None;
        for i in 0..self.clients.len() {
            let Some(p) = &self.clients[i].pending else {
                continue;
            };
            if self.live_from.is_some_and(|t| p.call >= t) && complaint.is_none() {
                complaint = Some(format!(
                    "bank {:?} called at {:?} after healing never completed ({} attempts, \
                     last to node {})",
                    p.op,
                    p.call,
                    p.attempts,
                    p.node + 1
                ));
            }
            self.finish(i, None, now, 0);
        }
        complaint
    }

    /// Checks `books` against the opening total and the transfers' fates; `called`: the
    /// read's call event (transfers acknowledged before it must be there), `None` at the
    /// end (every acknowledged transfer must be there).
    pub fn check_books(&self, books: &Books, called: Option<u64>) -> Result<(), Violation> {
        // Before any setup applied the read fails (no table); an empty bank is not a read
        // of it: reads are only issued after the issuing client's setup was acknowledged.
        let total: i64 = books.balances.values().sum();
        if books.balances.len() != ACCOUNTS as usize || total != ACCOUNTS * OPENING {
            return Err(Violation::new(
                Kind::BankTotal,
                format!(
                    "bank: {} accounts total {total}, not {} opened with {}",
                    books.balances.len(),
                    ACCOUNTS,
                    ACCOUNTS * OPENING
                ),
            ));
        }
        let mut seen: BTreeMap<i64, usize> = BTreeMap::new();
        let mut moved: BTreeMap<i64, i64> = BTreeMap::new();
        for &[tid, src, dst, amount] in &books.ledger {
            *seen.entry(tid).or_default() += 1;
            *moved.entry(src).or_default() -= amount;
            *moved.entry(dst).or_default() += amount;
        }
        if let Some((tid, n)) = seen.iter().find(|(_, &n)| n > 1) {
            let fate = self.fates.get(tid).map(|(_, f)| *f);
            return Err(Violation::new(
                Kind::TransferDuplicated,
                format!("bank: transfer {tid} applied {n} times (its outcome: {fate:?})"),
            ));
        }
        for (account, balance) in &books.balances {
            let expected = OPENING + moved.get(account).copied().unwrap_or(0);
            if *balance != expected {
                return Err(Violation::new(
                    Kind::BankTotal,
                    format!(
                        "bank: account {account} holds {balance}, but its opening and the \
                         ledger make {expected}"
                    ),
                ));
            }
        }
        for (tid, (_, fate)) in &self.fates {
            let there = seen.contains_key(tid);
            match *fate {
                Fate::Acked(at) if !there && called.is_none_or(|c| at < c) => {
                    return Err(Violation::new(
                        Kind::TransferLost,
                        format!("bank: transfer {tid}, acknowledged at event {at}, is missing"),
                    ))
                }
                Fate::Failed if there => {
                    return Err(Violation::new(
                        Kind::TransferLost,
                        format!("bank: transfer {tid} was refused, yet it applied"),
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// What a transfer's (or the setup's) answer says; `lost`: an earlier attempt was lost.
fn write_fate(r: Applied, lost: bool) -> Fate {
    match r {
        Applied::Done(bytes) => match bincode::deserialize::<Vec<StatementResult>>(&bytes) {
            // A statement failed: the transaction rolled back as a whole.
            Ok(results) if results.iter().any(|r| r.error.is_some()) => Fate::Failed,
            Ok(_) => Fate::Acked(0),
            Err(_) => Fate::Unknown,
        },
        Applied::Superseded(_) => Fate::Unknown,
        Applied::Rejected(_) | Applied::Denied(_) | Applied::SessionReused(_) if lost => {
            Fate::Unknown
        }
        Applied::Rejected(_) | Applied::Denied(_) | Applied::SessionReused(_) => Fate::Failed,
    }
}
