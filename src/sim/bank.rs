//! The SQL bank-transfer workload and its checker.
//!
//! A few bank clients (beside the KV clients of `clients`, on the same log, and run by the
//! same client loop, [`super::driver`]) each have a session of their own (`client_id`, a
//! `seq` that grows with every new request; a retry keeps it). A client's first request creates the bank, idempotently: tables `accounts`
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
use super::driver::{Driver, End, Session, Workload};
use super::world::Node;
use crate::machine::{Command, Machine, Outcome as Applied};
use crate::sql::{Request, SqlReader, Statement, StatementResult, Value};
use rand::rngs::StdRng;
use rand::Rng;
use std::collections::BTreeMap;

/// Accounts in the bank, and each one's opening balance.
pub const ACCOUNTS: i64 = 5;
pub const OPENING: i64 = 100;

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

/// One bank operation: what, and its session seq (writes).
pub struct BankOp {
    op: Op,
    seq: u64,
}

/// What a bank operation returned.
pub enum Answer {
    /// A write's fate (`Acked(0)`: acknowledged, at the end event).
    Written(Fate),
    /// A total read's books.
    Read(Books),
}

/// The bank clients: the shared client loop over the bank workload.
pub type BankClients = Driver<Bank>;

/// `n` bank clients (sessions 5000, 5001, ...).
pub fn clients(n: usize, rng: &mut StdRng) -> BankClients {
    let bank = Bank {
        open: vec![false; n],
        fates: BTreeMap::new(),
        reads: 0,
        violation: None,
    };
    Driver::new(n, 5000, bank, rng)
}

/// The bank workload: what became of its transfers, and the first violation seen.
pub struct Bank {
    /// Per client: the bank exists (this client's setup was acknowledged).
    open: Vec<bool>,
    pub fates: BTreeMap<i64, (Transfer, Fate)>,
    /// Total reads that returned.
    pub reads: u64,
    pub violation: Option<Violation>,
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

impl Workload for Bank {
    type Op = BankOp;
    type Answer = Answer;

    fn start(&mut self, client: usize, session: &mut Session, rng: &mut StdRng) -> BankOp {
        let op = if !self.open[client] {
            Op::Setup
        } else if rng.gen_bool(READ_SHARE) {
            Op::Read
        } else {
            let from = rng.gen_range(0..ACCOUNTS);
            let to = (from + rng.gen_range(1..ACCOUNTS)) % ACCOUNTS;
            Op::Transfer(Transfer {
                tid: (session.id * 1_000_000 + session.seq + 1) as i64,
                from,
                to,
                amount: rng.gen_range(1..=30),
            })
        };
        if !matches!(op, Op::Read) {
            session.seq += 1;
        }
        BankOp {
            op,
            seq: session.seq,
        }
    }

    fn command(&self, session: u64, op: &BankOp) -> Option<Command> {
        let request = match &op.op {
            Op::Setup => setup_request(),
            Op::Transfer(t) => transfer_request(t),
            Op::Read => return None,
        };
        Some(Command {
            client_id: session,
            seq: op.seq,
            user: None,
            machine: Machine::Sql,
            payload: bincode::serialize(&request).expect("a request encodes"),
        })
    }

    fn written(&self, _op: &BankOp, answer: Applied, lost: bool) -> Answer {
        Answer::Written(write_fate(answer, lost))
    }

    fn read(&mut self, _op: &BankOp, node: usize, nodes: &[Node]) -> Option<Answer> {
        match nodes[node].sql.as_ref().map(read_books) {
            Some(Ok(books)) => Some(Answer::Read(books)),
            Some(Err(e)) => {
                self.violation.get_or_insert(Violation::new(
                    Kind::BankTotal,
                    format!("bank: a read on node {} failed: {e}", node + 1),
                ));
                None
            }
            // The node crashed between answering the barrier and the read.
            None => None,
        }
    }

    fn finish(&mut self, client: usize, end: End<BankOp>, answer: Option<Answer>) {
        match (end.op.op, answer) {
            (Op::Setup, Some(Answer::Written(Fate::Acked(_)))) => self.open[client] = true,
            (Op::Setup, _) | (Op::Read, None) => {}
            (Op::Transfer(t), answer) => {
                let fate = match answer {
                    Some(Answer::Written(Fate::Acked(_))) => Fate::Acked(end.ret_event),
                    Some(Answer::Written(f)) => f,
                    _ => Fate::Unknown,
                };
                self.fates.insert(t.tid, (t, fate));
            }
            (Op::Read, Some(Answer::Read(books))) => {
                self.reads += 1;
                if let Err(v) = self.check_books(&books, Some(end.call_event)) {
                    self.violation.get_or_insert(Violation {
                        message: format!(
                            "{} (read on node {} called at event {})",
                            v.message,
                            end.node + 1,
                            end.call_event
                        ),
                        ..v
                    });
                }
            }
            (Op::Read, Some(Answer::Written(_))) => unreachable!("a read's answer is books"),
        }
    }

    fn describe(&self, op: &BankOp) -> String {
        format!("bank {:?}", op.op)
    }
}

impl Bank {
    /// Transfers whose fate `f` accepts.
    pub fn count(&self, f: impl Fn(&Fate) -> bool) -> u64 {
        self.fates.values().filter(|(_, fate)| f(fate)).count() as u64
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
