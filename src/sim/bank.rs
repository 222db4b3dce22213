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
//! The same bank runs on the key-value store instead ([`Ledger::Kv`]), as transactions:
//! accounts are keys `bank/a/<id>`, a transfer is one [`Txn`] of two increments and a put of
//! its ledger row `bank/l/<tid>`, the setup a transaction that opens the accounts only if
//! the first one is absent, and a total read one scan of `bank/` (one snapshot) after the
//! read barrier. The checks are the same.
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
use crate::command::{Compare, CompareOp, KvCommand, ScanRange, Txn, TxnOp, TxnOpResult};
use crate::command::{WriteOp, WriteResult};
use crate::kv::KvStore;
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

/// Where the bank keeps its books.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Ledger {
    /// SQL tables, transfers as SQL transactions.
    #[default]
    Sql,
    /// Keys of the key-value store, transfers as key-value transactions.
    Kv,
}

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

/// `n` bank clients (sessions 5000, 5001, ...) keeping their books in `ledger`.
pub fn clients(n: usize, ledger: Ledger, rng: &mut StdRng) -> BankClients {
    let bank = Bank {
        ledger,
        open: vec![false; n],
        fates: BTreeMap::new(),
        reads: 0,
        violation: None,
    };
    Driver::new(n, 5000, bank, rng)
}

/// The bank workload: what became of its transfers, and the first violation seen.
pub struct Bank {
    pub ledger: Ledger,
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

const KV_ACCOUNT: &str = "bank/a/";
const KV_LEDGER: &str = "bank/l/";

fn kv_account(id: i64) -> Vec<u8> {
    format!("{KV_ACCOUNT}{id}").into_bytes()
}

/// The key-value setup: open every account, unless the first one exists.
fn kv_setup() -> Txn {
    Txn {
        compare: vec![Compare::version(&kv_account(0), CompareOp::Equal, 0)],
        success: (0..ACCOUNTS)
            .map(|a| TxnOp::put(&kv_account(a), OPENING.to_string().as_bytes()))
            .collect(),
        failure: vec![],
    }
}

/// A key-value transfer: both balances and the ledger row in one transaction.
fn kv_transfer(t: &Transfer) -> Txn {
    let incr = |id, delta| {
        TxnOp::Write(WriteOp::Incr {
            key: kv_account(id),
            delta,
        })
    };
    Txn {
        compare: vec![],
        success: vec![
            incr(t.from, -t.amount),
            incr(t.to, t.amount),
            TxnOp::put(
                format!("{KV_LEDGER}{}", t.tid).as_bytes(),
                format!("{},{},{}", t.from, t.to, t.amount).as_bytes(),
            ),
        ],
        failure: vec![],
    }
}

/// Reads the key-value books on `kv`: one scan, one snapshot.
pub fn read_kv_books(kv: &KvStore) -> std::result::Result<Books, String> {
    let (rows, more, _) = kv
        .scan(&ScanRange::Prefix(b"bank/".to_vec()), 1 << 20)
        .map_err(|e| e.to_string())?;
    if more {
        return Err("the books did not fit one scan".into());
    }
    let mut books = Books {
        balances: BTreeMap::new(),
        ledger: Vec::new(),
    };
    let num = |b: &str| {
        b.parse::<i64>()
            .map_err(|_| format!("{b:?} is not a number"))
    };
    for kv in rows {
        let key = String::from_utf8_lossy(&kv.key).into_owned();
        let value = String::from_utf8_lossy(&kv.value).into_owned();
        if let Some(id) = key.strip_prefix(KV_ACCOUNT) {
            books.balances.insert(num(id)?, num(&value)?);
        } else if let Some(tid) = key.strip_prefix(KV_LEDGER) {
            let parts: Vec<i64> = value.split(',').map(num).collect::<Result<_, _>>()?;
            let [src, dst, amount] = parts[..] else {
                return Err(format!("ledger row {key} holds {value:?}"));
            };
            books.ledger.push([num(tid)?, src, dst, amount]);
        } else {
            return Err(format!("a stranger in the books: {key}"));
        }
    }
    Ok(books)
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
        if self.ledger == Ledger::Kv {
            let txn = match &op.op {
                Op::Setup => kv_setup(),
                Op::Transfer(t) => kv_transfer(t),
                Op::Read => return None,
            };
            let cmd = KvCommand {
                client_id: session,
                seq: op.seq,
                op: WriteOp::Txn(txn),
                user: None,
            };
            return Some(cmd.encode());
        }
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
        Answer::Written(write_fate(self.ledger, answer, lost))
    }

    fn read(&mut self, _op: &BankOp, node: usize, nodes: &[Node]) -> Option<Answer> {
        match self.books(&nodes[node]) {
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
    /// The books as `node` holds them now (`None`: the node is down).
    pub fn books(&self, node: &Node) -> Option<std::result::Result<Books, String>> {
        match self.ledger {
            Ledger::Sql => node.sql.as_ref().map(read_books),
            Ledger::Kv => node.kv.as_ref().map(read_kv_books),
        }
    }

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
fn write_fate(ledger: Ledger, r: Applied, lost: bool) -> Fate {
    match r {
        Applied::Done(bytes) if ledger == Ledger::Kv => {
            match bincode::deserialize::<WriteResult>(&bytes) {
                // An increment refused: the others of the transfer applied (as in a
                // Redis MULTI block), which the books would show; it never happens here.
                Ok(WriteResult::Txn { results, .. })
                    if (results.iter())
                        .any(|r| matches!(r, TxnOpResult::Write(WriteResult::Rejected(_)))) =>
                {
                    Fate::Unknown
                }
                Ok(WriteResult::Txn { .. }) => Fate::Acked(0),
                _ => Fate::Unknown,
            }
        }
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
