//! The SQL bank workload of a nemesis run, and its checks: money moves between accounts
//! in SQL transactions while the faults go on, and no read, replica or crash may ever
//! show the bank holding more or less than it started with.
//!
//! **Setup.** Before the workers start, one request through the log (gRPC
//! `paxosdb.v1.Sql/Execute`, in a session, as one transaction) creates
//! `accounts(id INTEGER PRIMARY KEY, balance INTEGER NOT NULL CHECK (balance >= 0))` with
//! [`ACCOUNTS`] accounts of [`INITIAL_BALANCE`] each (total [`TOTAL`]), and
//! `ledger(id TEXT NOT NULL, src, dst, amount)` with indexes. The ledger's `id` is not a
//! key on purpose: a transfer applied twice then shows as two rows (and twice its amount
//! moved) instead of being hidden as a constraint failure. A linearizable read right after
//! the setup gives the *setup index*, an applied index at which the tables certainly exist.
//!
//! **Workers.** `--sql-clients` workers (default 2) run beside the key-value workers, dealt
//! gRPC (`paxosdb.v1.Sql` through the Rust client) and HTTP (rqlite's `POST /db/execute`
//! and `POST /db/query`) in turn, each with one operation in flight:
//!
//! - a *transfer* (6 in 10): one request of three statements run as one transaction
//!   (`transaction: true` over gRPC, `?transaction` over HTTP; the SQL service refuses
//!   BEGIN/COMMIT inside a request): insert the ledger row `(id, src, dst, amount)` with an
//!   id unique in the run, debit `src`, credit `dst`. One transfer in
//!   [`OVERDRAFT_EVERY`] asks for more than the whole bank holds, so its debit breaks the
//!   CHECK constraint and the whole request — its ledger row included — must roll back.
//!   Every transfer runs in a session (client id, seq: gRPC `Session`, HTTP
//!   `X-Paxosdb-Client-Id`/`X-Paxosdb-Seq`): the client retries a lost attempt with the
//!   same session, and when the operation times out with its outcome unknown the worker
//!   asks again with the same session and request, up to [`RETRY_ROUNDS`] rounds in all,
//!   so the cluster answers from its session record (a retry after a lost answer applies
//!   nothing twice). A transfer ends *committed* (an answer without a statement error),
//!   *rejected* (an answer whose statements failed: rolled back), *failed* (every attempt
//!   refused: nothing happened) or *unknown*; after an unknown one the worker takes a
//!   fresh session.
//! - a *linearizable read* (2 in 10: gRPC level linearizable, HTTP `level=strong` or
//!   `level=linearizable`) and a *stale read* of one random member (2 in 10: gRPC level
//!   stale on a client of that node only, HTTP `level=none` sent to that node only). One
//!   read request (one read transaction) returns whether the tables exist, the number of
//!   accounts and their total, the number of ledger rows, and the number of accounts
//!   whose balance differs from `INITIAL_BALANCE + credits - debits` in the ledger.
//!
//! **Checks** ([`check`]), each violation making the run invalid with a clear reason:
//! - every answered read shows [`ACCOUNTS`] accounts holding [`TOTAL`], and every balance
//!   equal to what the ledger says (each SQL batch is one SQLite transaction, so even a
//!   stale read of a lagging node sees a consistent state); a stale read may find no
//!   tables only if it reports an applied index below the setup index;
//! - a read never sees fewer ledger rows than transfers committed before it was sent
//!   (linearizable reads), nor more than the transfers sent before it returned that could
//!   have happened (committed or unknown; any read);
//! - after healing, once every final member reports the same SQL applied index, each
//!   member's accounts and ledger (rowids included) are read with a stale read and must be
//!   identical; and that state must hold every committed transfer exactly once, with the
//!   amount and accounts it was sent with, every unknown one at most once, no rejected or
//!   failed one and no row nobody sent, and balances equal to the initial ones plus the
//!   ledger's sums; an overdraft must never commit.
//!
//! [`Tamper`] is test-only sabotage: after the final convergence it changes one node's
//! SQLite file behind the node's back, so that a test can show the final comparison is
//! not blind.
//!
//! # Invariants
//!
//! - The bank workload's operations are not in the key-value history: the linearizability
//!   checker never sees them, and their counts are reported apart (SQL line of the report).
//! - A transfer is *failed* only when no attempt in its session may have reached a node
//!   that could apply it; after an unknown round, a refusal leaves it unknown.
//! - Every read that got an answer is checked; an unanswered read is counted, never
//!   checked and never a pass of anything.

use super::clients::{grpc_error, HttpClient, NodeAddrs, OpError, Timeouts};
use super::cluster::ProcCluster;
use super::workload::Shared;
use crate::client::{Client, ClientOptions, Session};
use crate::sql::{Params, ReadLevel, Request, Statement, StatementResult, Value};
use rand::rngs::StdRng;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Accounts in the bank (ids 1..=ACCOUNTS).
pub const ACCOUNTS: i64 = 8;
/// Every account's balance at the start.
pub const INITIAL_BALANCE: i64 = 1000;
/// What the bank holds, always.
pub const TOTAL: i64 = ACCOUNTS * INITIAL_BALANCE;
/// Largest ordinary transfer.
pub const MAX_AMOUNT: i64 = 50;
/// One transfer in this many is an overdraft (more than the bank holds): it must roll back.
pub const OVERDRAFT_EVERY: u32 = 10;
/// Rounds of one transfer: the first and the retries with the same session after an
/// unknown outcome.
pub const RETRY_ROUNDS: usize = 3;
/// Ledger rows per page when a node's final state is read.
const PAGE: i64 = 5000;
/// Most entries each list of problems keeps (then one "and more" entry).
const SHOWN: usize = 20;

/// The SQL protocols the bank workers speak, dealt in turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum SqlProtocol {
    /// `paxosdb.v1.Sql` through the Rust client.
    Grpc,
    /// rqlite's data API: `POST /db/execute`, `POST /db/query`.
    Http,
}

impl SqlProtocol {
    pub const ALL: [SqlProtocol; 2] = [SqlProtocol::Grpc, SqlProtocol::Http];

    pub fn name(self) -> &'static str {
        match self {
            SqlProtocol::Grpc => "grpc",
            SqlProtocol::Http => "http",
        }
    }
}

fn int(v: i64) -> Value {
    Value::Integer(v)
}

/// The setup: both tables, their indexes and the accounts, as one transaction.
pub fn setup_request() -> Request {
    let mut statements = vec![
        Statement::new(
            "CREATE TABLE accounts (id INTEGER PRIMARY KEY, \
             balance INTEGER NOT NULL CHECK (balance >= 0))",
        ),
        Statement::new(
            "CREATE TABLE ledger (id TEXT NOT NULL, src INTEGER NOT NULL, \
             dst INTEGER NOT NULL, amount INTEGER NOT NULL)",
        ),
        Statement::new("CREATE INDEX ledger_by_id ON ledger (id)"),
        Statement::new("CREATE INDEX ledger_by_src ON ledger (src, amount)"),
        Statement::new("CREATE INDEX ledger_by_dst ON ledger (dst, amount)"),
    ];
    for id in 1..=ACCOUNTS {
        statements.push(Statement {
            sql: "INSERT INTO accounts (id, balance) VALUES (?, ?)".into(),
            params: Params::Positional(vec![int(id), int(INITIAL_BALANCE)]),
        });
    }
    Request {
        statements,
        transaction: true,
    }
}

/// One transfer as sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferSpec {
    /// Unique in the run: `<worker>.<n>`.
    pub id: String,
    pub src: i64,
    pub dst: i64,
    pub amount: i64,
}

const INSERT_LEDGER: &str = "INSERT INTO ledger (id, src, dst, amount) VALUES (?, ?, ?, ?)";
const DEBIT: &str = "UPDATE accounts SET balance = balance - ? WHERE id = ?";
const CREDIT: &str = "UPDATE accounts SET balance = balance + ? WHERE id = ?";

/// The transfer's request: ledger row, debit, credit, as one transaction.
pub fn transfer_request(t: &TransferSpec) -> Request {
    let st = |sql: &str, params: Vec<Value>| Statement {
        sql: sql.into(),
        params: Params::Positional(params),
    };
    Request {
        statements: vec![
            st(
                INSERT_LEDGER,
                vec![
                    Value::Text(t.id.clone()),
                    int(t.src),
                    int(t.dst),
                    int(t.amount),
                ],
            ),
            st(DEBIT, vec![int(t.amount), int(t.src)]),
            st(CREDIT, vec![int(t.amount), int(t.dst)]),
        ],
        transaction: true,
    }
}

/// The same request as an rqlite JSON body (positional parameters).
fn transfer_json(t: &TransferSpec) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!([
        [INSERT_LEDGER, t.id, t.src, t.dst, t.amount],
        [DEBIT, t.amount, t.src],
        [CREDIT, t.amount, t.dst],
    ]))
    .unwrap_or_default()
}

/// The read: tables present, accounts and their total, ledger rows, accounts whose
/// balance the ledger does not explain. One request: one read transaction.
fn read_statements() -> Vec<String> {
    vec![
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN ('accounts', 'ledger')"
            .into(),
        "SELECT COUNT(*), COALESCE(SUM(balance), 0) FROM accounts".into(),
        "SELECT COUNT(*) FROM ledger".into(),
        format!(
            "SELECT COUNT(*) FROM accounts a WHERE a.balance <> {INITIAL_BALANCE} \
             + (SELECT COALESCE(SUM(amount), 0) FROM ledger WHERE dst = a.id) \
             - (SELECT COALESCE(SUM(amount), 0) FROM ledger WHERE src = a.id)"
        ),
    ]
}

fn read_request() -> Request {
    Request {
        statements: read_statements().into_iter().map(Statement::new).collect(),
        transaction: false,
    }
}

fn read_json() -> Vec<u8> {
    serde_json::to_vec(&read_statements()).unwrap_or_default()
}

/// How a transfer ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferStatus {
    /// Answered without a statement error: it happened, once.
    Committed,
    /// Answered with a statement error: the transaction rolled back, nothing happened.
    Rejected,
    /// No answer: it may have happened (once) or not.
    Unknown,
    /// Every attempt refused: nothing happened.
    Failed,
}

/// One transfer and what became of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    pub spec: TransferSpec,
    pub protocol: SqlProtocol,
    /// Asked for more than the bank holds: must be rejected.
    pub overdraft: bool,
    /// Nanoseconds since the start of the run.
    pub call: u64,
    /// When it ended (None: unknown).
    pub ret: Option<u64>,
    pub status: TransferStatus,
    /// An answer came in a retry round after a round whose outcome was unknown.
    pub resolved_by_retry: bool,
    /// The error of a rejected, failed or unknown transfer.
    pub why: Option<String>,
}

/// What a read saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadSeen {
    /// The state, as counted in one read transaction.
    State {
        /// Of `accounts` and `ledger`, how many exist (2 once the setup is applied).
        tables: i64,
        accounts: i64,
        total: i64,
        ledger_rows: i64,
        /// Accounts whose balance is not `INITIAL_BALANCE + credits - debits`.
        unexplained: i64,
    },
    /// Neither table exists at the applied index read.
    NoTables,
    /// An answer that does not have the shape asked for (a statement error, a NULL).
    Malformed(String),
    /// No answer (refusals, timeouts): not checked.
    Unanswered(String),
}

/// How fresh a bank read was asked to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BankReadLevel {
    Linearizable,
    /// The named node's applied state.
    Stale,
}

/// One read and what it saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadSample {
    pub protocol: SqlProtocol,
    pub level: BankReadLevel,
    /// The node read (stale reads: its address).
    pub node: Option<String>,
    pub call: u64,
    pub ret: u64,
    /// The applied index the answer reports.
    pub applied: Option<u64>,
    pub seen: ReadSeen,
}

/// Everything the bank workers recorded.
#[derive(Default)]
pub struct BankLog {
    pub transfers: Mutex<Vec<Transfer>>,
    pub reads: Mutex<Vec<ReadSample>>,
    /// An applied index at which the tables certainly exist (from the linearizable read
    /// after the setup).
    pub setup_index: AtomicU64,
}

/// One statement's answer, protocol-neutral: its rows as integers, text or NULL (what
/// the bank's statements return), or its error.
type Cell = Option<Scalar>;

#[derive(Clone, Debug, PartialEq)]
enum Scalar {
    Int(i64),
    Text(String),
}

#[derive(Clone, Debug, PartialEq)]
struct StmtOut {
    rows: Vec<Vec<Cell>>,
    error: Option<String>,
}

fn from_results(results: Vec<StatementResult>) -> Result<Vec<StmtOut>, String> {
    results
        .into_iter()
        .map(|r| {
            let rows = r
                .rows
                .into_iter()
                .map(|row| {
                    row.into_iter()
                        .map(|v| match v {
                            Value::Integer(i) => Ok(Some(Scalar::Int(i))),
                            Value::Text(t) => Ok(Some(Scalar::Text(t))),
                            Value::Null => Ok(None),
                            other => Err(format!("unexpected value {other:?}")),
                        })
                        .collect::<Result<Vec<Cell>, String>>()
                })
                .collect::<Result<Vec<_>, String>>()?;
            Ok(StmtOut {
                rows,
                error: r.error,
            })
        })
        .collect()
}

fn from_json(results: Vec<serde_json::Value>) -> Result<Vec<StmtOut>, String> {
    results
        .into_iter()
        .map(|r| {
            let error = r["error"].as_str().map(str::to_string);
            let rows = match r["values"].as_array() {
                None => Vec::new(),
                Some(rows) => rows
                    .iter()
                    .map(|row| {
                        let cells = row.as_array().ok_or("a row is not an array")?;
                        cells
                            .iter()
                            .map(|c| match c {
                                serde_json::Value::Null => Ok(None),
                                serde_json::Value::String(s) => Ok(Some(Scalar::Text(s.clone()))),
                                c => c
                                    .as_i64()
                                    .map(|i| Some(Scalar::Int(i)))
                                    .ok_or(format!("unexpected value {c}")),
                            })
                            .collect::<Result<Vec<Cell>, String>>()
                    })
                    .collect::<Result<Vec<_>, String>>()?,
            };
            Ok(StmtOut { rows, error })
        })
        .collect()
}

/// The first statement error of an answer, if any (a rejected transfer).
fn first_error(out: &[StmtOut]) -> Option<String> {
    out.iter().find_map(|s| s.error.clone())
}

/// The integer in row 0, column `col` of a statement's answer.
fn int_at(s: &StmtOut, col: usize) -> Result<i64, String> {
    if let Some(e) = &s.error {
        return Err(e.clone());
    }
    match s.rows.first().and_then(|r| r.get(col)) {
        Some(Some(Scalar::Int(i))) => Ok(*i),
        other => Err(format!("expected an integer, got {other:?}")),
    }
}

/// What the answer to the bank read says.
fn interpret_read(out: &[StmtOut]) -> ReadSeen {
    let parse = || -> Result<ReadSeen, String> {
        if out.len() != 4 {
            return Err(format!("{} results for 4 statements", out.len()));
        }
        let tables = int_at(&out[0], 0)?;
        if tables == 0 {
            return Ok(ReadSeen::NoTables);
        }
        Ok(ReadSeen::State {
            tables,
            accounts: int_at(&out[1], 0)?,
            total: int_at(&out[1], 1)?,
            ledger_rows: int_at(&out[2], 0)?,
            unexplained: int_at(&out[3], 0)?,
        })
    };
    parse().unwrap_or_else(ReadSeen::Malformed)
}

/// How one round of a transfer ended.
enum Round {
    Committed,
    Rejected(String),
}

/// A bank worker's clients, rebuilt for the new members after a membership change.
struct BankClient {
    protocol: SqlProtocol,
    rotate: usize,
    version: u64,
    nodes: Vec<NodeAddrs>,
    timeouts: Timeouts,
    /// gRPC: a client of every member, and one of each member alone (stale reads).
    grpc: Option<(Client, Vec<Client>)>,
    http: Option<HttpClient>,
}

fn grpc_client(addrs: &[String], t: Timeouts) -> crate::error::Result<Client> {
    Client::with_options(
        addrs,
        ClientOptions {
            timeout: t.op,
            attempt_timeout: t.attempt,
            tls: None,
        },
    )
}

impl BankClient {
    fn new(protocol: SqlProtocol, rotate: usize, shared: &Shared) -> BankClient {
        let mut c = BankClient {
            protocol,
            rotate,
            version: u64::MAX,
            nodes: Vec::new(),
            timeouts: shared.endpoints.timeouts(),
            grpc: None,
            http: None,
        };
        c.refresh(shared);
        c
    }

    /// Rebuilds the clients when the members changed.
    fn refresh(&mut self, shared: &Shared) {
        let (version, mut nodes) = shared.endpoints.current();
        if version == self.version || nodes.is_empty() {
            return;
        }
        let n = nodes.len();
        nodes.rotate_left(self.rotate % n);
        match self.protocol {
            SqlProtocol::Grpc => {
                let all: Vec<String> = nodes.iter().map(|n| n.grpc.clone()).collect();
                let each: crate::error::Result<Vec<Client>> = all
                    .iter()
                    .map(|a| grpc_client(std::slice::from_ref(a), self.timeouts))
                    .collect();
                match (grpc_client(&all, self.timeouts), each) {
                    (Ok(all), Ok(each)) => self.grpc = Some((all, each)),
                    _ => return,
                }
            }
            SqlProtocol::Http => {
                let addrs = nodes.iter().map(|n| n.http.clone()).collect();
                self.http = Some(HttpClient::new(addrs, self.timeouts, false));
            }
        }
        self.version = version;
        self.nodes = nodes;
    }

    /// One round of a transfer in session (`client_id`, `seq`).
    async fn transfer(
        &mut self,
        t: &TransferSpec,
        client_id: u64,
        seq: u64,
    ) -> Result<Round, OpError> {
        let out = match (&self.grpc, &mut self.http) {
            (Some((all, _)), _) => {
                let s = Session { client_id, seq };
                let results = all
                    .sql_execute_in_session(s, &transfer_request(t))
                    .await
                    .map_err(grpc_error)?;
                from_results(results)
            }
            (None, Some(http)) => {
                from_json(http.sql_execute(&transfer_json(t), client_id, seq).await?)
            }
            (None, None) => return Err(OpError::Refused("no client for the members".into())),
        };
        let out = out.map_err(OpError::Unknown)?;
        Ok(match first_error(&out) {
            Some(e) => Round::Rejected(e),
            None => Round::Committed,
        })
    }

    /// One read: linearizable through any member, or stale on member `node` only.
    /// Returns the node read (stale), the applied index reported, and what it saw.
    async fn read(
        &mut self,
        stale: Option<usize>,
        rng: &mut StdRng,
    ) -> (Option<String>, Option<u64>, ReadSeen) {
        let node = stale.map(|i| i % self.nodes.len().max(1));
        let label = node
            .and_then(|i| self.nodes.get(i))
            .map(|n| match self.protocol {
                SqlProtocol::Grpc => n.grpc.clone(),
                SqlProtocol::Http => n.http.clone(),
            });
        let answer = match (&self.grpc, &mut self.http) {
            (Some((all, each)), _) => {
                let (client, level) = match node {
                    Some(i) => (&each[i], ReadLevel::Stale),
                    None => (all, ReadLevel::Linearizable),
                };
                match client.sql_query(read_request(), level).await {
                    Ok(out) => from_results(out.results).map(|r| (r, Some(out.applied_index))),
                    Err(e) => return (label, None, ReadSeen::Unanswered(e.to_string())),
                }
            }
            (None, Some(http)) => {
                let level = match node {
                    Some(_) => "none",
                    None if rng.gen_bool(0.5) => "strong",
                    None => "linearizable",
                };
                match http.sql_query(&read_json(), level, node).await {
                    Ok((r, applied)) => from_json(r).map(|r| (r, applied)),
                    Err(OpError::Refused(e) | OpError::Unknown(e)) => {
                        return (label, None, ReadSeen::Unanswered(e))
                    }
                }
            }
            (None, None) => {
                return (
                    label,
                    None,
                    ReadSeen::Unanswered("no client for the members".into()),
                )
            }
        };
        match answer {
            Ok((out, applied)) => (label, applied, interpret_read(&out)),
            Err(e) => (label, None, ReadSeen::Malformed(e)),
        }
    }
}

fn fresh_client_id() -> u64 {
    // The HTTP API's random ids stay within 2^53 (JSON-safe); do the same.
    (rand::random::<u64>() >> 11).max(1)
}

/// Creates the bank (see the module docs) through `client` and records the setup index.
/// Retried in the same session for up to a minute.
pub async fn create(client: &Client, log: &BankLog) -> crate::error::Result<()> {
    use crate::error::Error;
    let deadline = Instant::now() + Duration::from_secs(60);
    let session = Session::new();
    let req = setup_request();
    loop {
        match client.sql_execute_in_session(session, &req).await {
            Ok(results) => {
                if let Some(e) = results.iter().find_map(|r| r.error.clone()) {
                    return Err(Error::Internal(format!("creating the SQL bank: {e}")));
                }
                break;
            }
            Err(e) if Instant::now() < deadline && !e.is_invalid_request() => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(Error::Internal(format!("creating the SQL bank: {e}"))),
        }
    }
    loop {
        match client
            .sql_query(read_request(), ReadLevel::Linearizable)
            .await
        {
            Ok(out) => {
                log.setup_index.store(out.applied_index, Ordering::Relaxed);
                return Ok(());
            }
            Err(e) if Instant::now() < deadline => {
                tracing::debug!("reading the SQL bank after its setup: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(Error::Internal(format!("reading the SQL bank: {e}"))),
        }
    }
}

/// One bank worker: transfers and reads until the run stops.
pub async fn worker(
    shared: Arc<Shared>,
    log: Arc<BankLog>,
    protocol: SqlProtocol,
    worker: u64,
    mut rng: StdRng,
) {
    let mut client = BankClient::new(protocol, worker as usize, &shared);
    let mut client_id = fresh_client_id();
    let mut seq = 0u64;
    let mut n = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        client.refresh(&shared);
        let roll = rng.gen_range(0..10);
        if roll < 6 {
            n += 1;
            seq += 1;
            let src = rng.gen_range(1..=ACCOUNTS);
            let mut dst = rng.gen_range(1..ACCOUNTS);
            if dst >= src {
                dst += 1;
            }
            let overdraft = rng.gen_ratio(1, OVERDRAFT_EVERY);
            let amount = if overdraft {
                TOTAL + 1
            } else {
                rng.gen_range(1..=MAX_AMOUNT)
            };
            let spec = TransferSpec {
                id: format!("{worker}.{n}"),
                src,
                dst,
                amount,
            };
            let call = shared.now();
            let mut unknown = false;
            let mut answered = None;
            let mut why = None;
            for _round in 0..RETRY_ROUNDS {
                match client.transfer(&spec, client_id, seq).await {
                    Ok(r) => {
                        answered = Some(r);
                        break;
                    }
                    Err(OpError::Refused(e)) => {
                        why = Some(e);
                        if !unknown {
                            break;
                        }
                    }
                    Err(OpError::Unknown(e)) => {
                        why = Some(e);
                        unknown = true;
                    }
                }
            }
            let resolved_by_retry = unknown && answered.is_some();
            let (status, ret) = match answered {
                Some(Round::Committed) => (TransferStatus::Committed, Some(shared.now())),
                Some(Round::Rejected(e)) => {
                    why = Some(e);
                    (TransferStatus::Rejected, Some(shared.now()))
                }
                None if unknown => (TransferStatus::Unknown, None),
                None => (TransferStatus::Failed, Some(shared.now())),
            };
            if status == TransferStatus::Committed {
                why = None;
            }
            log.transfers.lock().unwrap().push(Transfer {
                spec,
                protocol,
                overdraft,
                call,
                ret,
                status,
                resolved_by_retry,
                why,
            });
            if status == TransferStatus::Unknown {
                // It may still be in flight in the old session.
                client_id = fresh_client_id();
                seq = 0;
            }
        } else {
            let stale = (roll >= 8).then(|| rng.gen_range(0..usize::MAX));
            let call = shared.now();
            let (node, applied, seen) = client.read(stale, &mut rng).await;
            log.reads.lock().unwrap().push(ReadSample {
                protocol,
                level: if stale.is_some() {
                    BankReadLevel::Stale
                } else {
                    BankReadLevel::Linearizable
                },
                node,
                call,
                ret: shared.now(),
                applied,
                seen,
            });
        }
    }
}

/// A linearizable read after healing, retried for up to a minute, recorded as a read of
/// `protocol` gRPC.
pub async fn final_read(shared: &Shared, log: &BankLog, client: &Client) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let call = shared.now();
        match client
            .sql_query(read_request(), ReadLevel::Linearizable)
            .await
        {
            Ok(out) => {
                let seen = match from_results(out.results) {
                    Ok(r) => interpret_read(&r),
                    Err(e) => ReadSeen::Malformed(e),
                };
                log.reads.lock().unwrap().push(ReadSample {
                    protocol: SqlProtocol::Grpc,
                    level: BankReadLevel::Linearizable,
                    node: None,
                    call,
                    ret: shared.now(),
                    applied: Some(out.applied_index),
                    seen,
                });
                return;
            }
            Err(e) if Instant::now() >= deadline => {
                log.reads.lock().unwrap().push(ReadSample {
                    protocol: SqlProtocol::Grpc,
                    level: BankReadLevel::Linearizable,
                    node: None,
                    call,
                    ret: shared.now(),
                    applied: None,
                    seen: ReadSeen::Unanswered(format!("final read: {e}")),
                });
                return;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// One row of the ledger, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerRow {
    pub rowid: i64,
    pub id: String,
    pub src: i64,
    pub dst: i64,
    pub amount: i64,
}

/// A node's bank, read in full at one applied index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BankState {
    pub applied: u64,
    /// (id, balance), by id.
    pub accounts: Vec<(i64, i64)>,
    /// By rowid.
    pub ledger: Vec<LedgerRow>,
}

fn ledger_page(after: i64) -> Statement {
    Statement {
        sql: format!(
            "SELECT rowid, id, src, dst, amount FROM ledger WHERE rowid > ? ORDER BY rowid LIMIT {PAGE}"
        ),
        params: Params::Positional(vec![int(after)]),
    }
}

/// Reads node `client`'s bank with stale reads, a page of the ledger at a time; every
/// page must report the same applied index (the cluster is quiet by then).
async fn read_state(client: &Client) -> Result<BankState, String> {
    let first = Request {
        statements: vec![
            Statement::new("SELECT id, balance FROM accounts ORDER BY id"),
            ledger_page(0),
        ],
        transaction: false,
    };
    let out = client
        .sql_query(first, ReadLevel::Stale)
        .await
        .map_err(|e| e.to_string())?;
    let applied = out.applied_index;
    let r = from_results(out.results)?;
    if let Some(e) = first_error(&r) {
        return Err(e);
    }
    let cell_int = |c: &Cell| match c {
        Some(Scalar::Int(i)) => Ok(*i),
        other => Err(format!("expected an integer, got {other:?}")),
    };
    let accounts = r[0]
        .rows
        .iter()
        .map(|row| Ok((cell_int(&row[0])?, cell_int(&row[1])?)))
        .collect::<Result<Vec<_>, String>>()?;
    let parse_rows = |s: &StmtOut| -> Result<Vec<LedgerRow>, String> {
        s.rows
            .iter()
            .map(|row| {
                let id = match &row[1] {
                    Some(Scalar::Text(t)) => t.clone(),
                    other => return Err(format!("ledger id {other:?} is not text")),
                };
                Ok(LedgerRow {
                    rowid: cell_int(&row[0])?,
                    id,
                    src: cell_int(&row[2])?,
                    dst: cell_int(&row[3])?,
                    amount: cell_int(&row[4])?,
                })
            })
            .collect()
    };
    let mut ledger = parse_rows(&r[1])?;
    let mut last_page = r[1].rows.len() as i64;
    while last_page == PAGE {
        let after = ledger.last().map_or(0, |r| r.rowid);
        let req = Request {
            statements: vec![ledger_page(after)],
            transaction: false,
        };
        let out = client
            .sql_query(req, ReadLevel::Stale)
            .await
            .map_err(|e| e.to_string())?;
        if out.applied_index != applied {
            return Err(format!(
                "the state moved from applied index {applied} to {} while it was read",
                out.applied_index
            ));
        }
        let r = from_results(out.results)?;
        if let Some(e) = first_error(&r) {
            return Err(e);
        }
        let rows = parse_rows(&r[0])?;
        last_page = rows.len() as i64;
        ledger.extend(rows);
    }
    Ok(BankState {
        applied,
        accounts,
        ledger,
    })
}

/// Test-only sabotage of one node's SQL database, behind the node's back (see
/// [`tamper`]): the final checks must then fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Tamper {
    /// One account's balance raised by 1.
    Balance,
    /// The last ledger row deleted.
    LedgerRow,
}

/// Applies `how` to the live SQLite database of the node whose data directory is
/// `data_dir` (`<data-dir>/sql/`, generation named by `CURRENT`), through a connection of
/// this process (WAL: the node's readers see it at once). Returns what it did.
pub fn tamper(data_dir: &Path, how: Tamper) -> Result<String, String> {
    let dir = data_dir.join("sql");
    let gen = std::fs::read_to_string(dir.join("CURRENT"))
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = dir.join(format!("db-{}.sqlite", gen.trim()));
    let conn = rusqlite::Connection::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    let sql = match how {
        Tamper::Balance => "UPDATE accounts SET balance = balance + 1 WHERE id = 1",
        Tamper::LedgerRow => "DELETE FROM ledger WHERE rowid = (SELECT MAX(rowid) FROM ledger)",
    };
    let n = conn.execute(sql, []).map_err(|e| e.to_string())?;
    if n != 1 {
        return Err(format!("{sql}: changed {n} rows"));
    }
    Ok(format!("{sql} on {}", path.display()))
}

/// Waits until every member answers a stale SQL read at the same applied index, twice in
/// a row (the cluster is quiet: workers stopped, faults healed), then, with `sabotage`,
/// tampers one node, and reads every member's bank. Members whose state could not be
/// read within 30 s are reported as such.
pub async fn final_states(
    c: &ProcCluster,
    sabotage: Option<Tamper>,
    note: &dyn Fn(String),
) -> Vec<(u64, Result<BankState, String>)> {
    let members = c.members();
    let clients: Vec<(u64, Client)> = members
        .iter()
        .map(|id| (*id, c.client_for(*id, Duration::from_secs(5))))
        .collect();
    let probe = || Request {
        statements: vec![Statement::new("SELECT 1")],
        transaction: false,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last: Vec<Option<u64>> = Vec::new();
    let mut stable = 0;
    loop {
        let mut applied = Vec::new();
        for (_, client) in &clients {
            applied.push(
                client
                    .sql_query(probe(), ReadLevel::Stale)
                    .await
                    .ok()
                    .map(|o| o.applied_index),
            );
        }
        let same = applied.iter().all(|a| a.is_some() && *a == applied[0]);
        stable = if same && applied == last {
            stable + 1
        } else {
            0
        };
        last = applied;
        if stable >= 1 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if let (Some(how), Some(&victim)) = (sabotage, members.last()) {
        match tamper(&c.node(victim).data_dir, how) {
            Ok(what) => note(format!(
                "tampered with node {victim}'s SQL database: {what}"
            )),
            Err(e) => note(format!("could not tamper with node {victim}: {e}")),
        }
    }
    let mut out = Vec::new();
    for (id, client) in &clients {
        let mut state = read_state(client).await;
        // A read cut short by a moving state is tried again while there is time.
        while state.is_err() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            state = read_state(client).await;
        }
        out.push((*id, state));
    }
    out
}

/// A transfer's counts, by protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BankCounts {
    pub committed: usize,
    pub rejected: usize,
    pub unknown: usize,
    pub failed: usize,
    /// Reads answered (and checked).
    pub reads: usize,
    pub reads_unanswered: usize,
}

impl BankCounts {
    /// Operations that got an answer.
    pub fn answered(&self) -> usize {
        self.committed + self.rejected + self.reads
    }
}

/// The verdict of the bank workload.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BankReport {
    pub per_protocol: BTreeMap<String, BankCounts>,
    pub transfers: usize,
    pub committed: usize,
    /// Answered with a statement error (rolled back); overdrafts among them.
    pub rejected: usize,
    pub overdrafts_rejected: usize,
    pub unknown: usize,
    /// Unknown transfers found in the final ledger.
    pub unknown_present: usize,
    pub failed: usize,
    /// Transfers answered by a retry in the same session after an unknown round.
    pub resolved_by_retry: usize,
    pub reads_linearizable: usize,
    pub reads_stale: usize,
    /// Stale reads of a node that had not yet applied the setup (no tables, applied index
    /// below the setup index): allowed, counted.
    pub stale_before_setup: usize,
    pub reads_unanswered: usize,
    /// The final members whose banks were compared, and the rows of their ledger.
    pub nodes_compared: usize,
    pub ledger_rows: usize,
    /// Reads that saw a wrong total, a wrong number of accounts, balances the ledger does
    /// not explain, missing tables, a malformed answer, or a ledger that went back in
    /// time or held more than could have happened.
    pub bad_reads: Vec<String>,
    /// Committed transfers missing from the final ledger.
    pub lost: Vec<String>,
    /// Transfers present more than once.
    pub duplicated: Vec<String>,
    /// Rows of rejected, failed or never-sent transfers, or a committed overdraft.
    pub unexpected: Vec<String>,
    /// Rows whose accounts or amount differ from what was sent.
    pub altered: Vec<String>,
    /// Accounts missing, or whose balance is not the initial one plus the ledger's sums,
    /// or a total that is not [`TOTAL`].
    pub balances: Vec<String>,
    /// Final members whose banks differ, or whose bank could not be read.
    pub divergence: Vec<String>,
    /// For each fault injected, how many transfers were in flight at that moment (sent,
    /// not yet answered): the faults that hit SQL writes.
    #[serde(default)]
    pub in_flight_at_faults: BTreeMap<String, usize>,
}

impl BankReport {
    pub fn is_valid(&self) -> bool {
        self.bad_reads.is_empty()
            && self.lost.is_empty()
            && self.duplicated.is_empty()
            && self.unexpected.is_empty()
            && self.altered.is_empty()
            && self.balances.is_empty()
            && self.divergence.is_empty()
    }

    /// The SQL protocols whose workers got no answer at all.
    pub fn unexercised(&self) -> Vec<String> {
        self.per_protocol
            .iter()
            .filter(|(_, c)| c.answered() == 0)
            .map(|(p, _)| format!("sql/{p}"))
            .collect()
    }

    /// Two lines for a human (three with problems).
    pub fn render(&self) -> String {
        let by: Vec<String> = self
            .per_protocol
            .iter()
            .map(|(p, c)| {
                format!(
                    "{p} {} transfers, {} reads",
                    c.committed + c.rejected + c.unknown + c.failed,
                    c.reads + c.reads_unanswered
                )
            })
            .collect();
        let mut s = format!(
            "sql bank: {} transfers (committed {}, rejected {} of which {} overdrafts, unknown {} ({} present), failed {}; {} resolved by a retry in the same session); {} reads checked ({} linearizable, {} stale on random nodes, {} before the setup reached that node), {} unanswered; by protocol: {}\n",
            self.transfers,
            self.committed,
            self.rejected,
            self.overdrafts_rejected,
            self.unknown,
            self.unknown_present,
            self.failed,
            self.resolved_by_retry,
            self.reads_linearizable + self.reads_stale,
            self.reads_linearizable,
            self.reads_stale,
            self.stale_before_setup,
            self.reads_unanswered,
            by.join(", ")
        );
        let hit: Vec<String> = self
            .in_flight_at_faults
            .iter()
            .map(|(f, n)| format!("{f} {n}"))
            .collect();
        if !hit.is_empty() {
            s += &format!(
                "sql bank: transfers in flight at faults: {}\n",
                hit.join(", ")
            );
        }
        s += &format!(
            "sql bank: {} ledger rows, {} final members compared: {}\n",
            self.ledger_rows,
            self.nodes_compared,
            if self.is_valid() {
                "consistent".to_string()
            } else {
                "VIOLATION".to_string()
            }
        );
        for (what, list) in [
            ("bad reads", &self.bad_reads),
            ("lost", &self.lost),
            ("duplicated", &self.duplicated),
            ("unexpected", &self.unexpected),
            ("altered", &self.altered),
            ("balances", &self.balances),
            ("diverged", &self.divergence),
        ] {
            if !list.is_empty() {
                s += &format!("SQL BANK {}: {}\n", what.to_uppercase(), list.join("; "));
            }
        }
        s
    }
}

/// Counts, for every `(fault, seconds since the start)`, the transfers in flight at that
/// moment into [`BankReport::in_flight_at_faults`].
pub fn count_in_flight(r: &mut BankReport, transfers: &[Transfer], faults: &[(String, f64)]) {
    for (fault, at) in faults {
        let at = (*at * 1e9) as u64;
        let n = transfers
            .iter()
            .filter(|t| t.call <= at && t.ret.is_none_or(|ret| ret >= at))
            .count();
        *r.in_flight_at_faults.entry(fault.clone()).or_default() += n;
    }
}

/// Appends `what` to `list`, keeping at most [`SHOWN`] entries and one "and more".
pub(super) fn note(list: &mut Vec<String>, what: String) {
    if list.len() < SHOWN {
        list.push(what);
    } else if list.len() == SHOWN {
        list.push("and more".into());
    }
}

/// Checks the bank: the reads against the invariants and the transfers known before
/// them, the final members' states against each other and against the transfers (see the
/// module docs). `setup_index` is an applied index at which the tables exist.
pub fn check(
    transfers: &[Transfer],
    reads: &[ReadSample],
    setup_index: u64,
    finals: &[(u64, Result<BankState, String>)],
) -> BankReport {
    let mut r = BankReport::default();
    for t in transfers {
        let c = r.per_protocol.entry(t.protocol.name().into()).or_default();
        r.transfers += 1;
        match t.status {
            TransferStatus::Committed => {
                c.committed += 1;
                r.committed += 1;
                if t.overdraft {
                    note(
                        &mut r.unexpected,
                        format!(
                            "overdraft {} of {} committed (the CHECK constraint did not hold)",
                            t.spec.id, t.spec.amount
                        ),
                    );
                }
            }
            TransferStatus::Rejected => {
                c.rejected += 1;
                r.rejected += 1;
                r.overdrafts_rejected += usize::from(t.overdraft);
            }
            TransferStatus::Unknown => {
                c.unknown += 1;
                r.unknown += 1;
            }
            TransferStatus::Failed => {
                c.failed += 1;
                r.failed += 1;
            }
        }
        r.resolved_by_retry += usize::from(t.resolved_by_retry);
    }
    check_reads(&mut r, transfers, reads, setup_index);
    check_finals(&mut r, transfers, finals);
    r
}

fn check_reads(r: &mut BankReport, transfers: &[Transfer], reads: &[ReadSample], setup_index: u64) {
    // Committed transfers by the time they returned; possible ones (committed or unknown)
    // by the time they were sent.
    let mut committed_at: Vec<u64> = transfers
        .iter()
        .filter(|t| t.status == TransferStatus::Committed)
        .filter_map(|t| t.ret)
        .collect();
    committed_at.sort_unstable();
    let mut possible_at: Vec<u64> = transfers
        .iter()
        .filter(|t| {
            matches!(
                t.status,
                TransferStatus::Committed | TransferStatus::Unknown
            )
        })
        .map(|t| t.call)
        .collect();
    possible_at.sort_unstable();
    for s in reads {
        let c = r.per_protocol.entry(s.protocol.name().into()).or_default();
        let what = || {
            format!(
                "{} {:?} read{} at {:.3}s (applied index {})",
                s.protocol.name(),
                s.level,
                s.node
                    .as_ref()
                    .map(|n| format!(" of {n}"))
                    .unwrap_or_default(),
                s.call as f64 / 1e9,
                s.applied.map_or("?".into(), |a| a.to_string())
            )
        };
        match &s.seen {
            ReadSeen::Unanswered(_) => {
                c.reads_unanswered += 1;
                r.reads_unanswered += 1;
                continue;
            }
            _ => c.reads += 1,
        }
        match s.level {
            BankReadLevel::Linearizable => r.reads_linearizable += 1,
            BankReadLevel::Stale => r.reads_stale += 1,
        }
        match &s.seen {
            ReadSeen::Unanswered(_) => {}
            ReadSeen::Malformed(e) => note(&mut r.bad_reads, format!("{}: {e}", what())),
            ReadSeen::NoTables => {
                let excused =
                    s.level == BankReadLevel::Stale && s.applied.is_some_and(|a| a < setup_index);
                if excused {
                    r.stale_before_setup += 1;
                } else {
                    note(
                        &mut r.bad_reads,
                        format!(
                            "{}: no bank tables (the setup is applied by index {setup_index})",
                            what()
                        ),
                    );
                }
            }
            ReadSeen::State {
                tables,
                accounts,
                total,
                ledger_rows,
                unexplained,
            } => {
                let mut wrong = Vec::new();
                if *tables != 2 {
                    wrong.push(format!("{tables} of the 2 tables"));
                }
                if *accounts != ACCOUNTS {
                    wrong.push(format!("{accounts} accounts, not {ACCOUNTS}"));
                }
                if *total != TOTAL {
                    wrong.push(format!("total {total}, not {TOTAL}"));
                }
                if *unexplained != 0 {
                    wrong.push(format!(
                        "{unexplained} balances not explained by the ledger"
                    ));
                }
                let rows = (*ledger_rows).max(0) as usize;
                if s.level == BankReadLevel::Linearizable {
                    let before = committed_at.partition_point(|&t| t < s.call);
                    if rows < before {
                        wrong.push(format!(
                            "{rows} ledger rows, but {before} transfers were committed before the read was sent"
                        ));
                    }
                }
                let could = possible_at.partition_point(|&t| t < s.ret);
                if rows > could {
                    wrong.push(format!(
                        "{rows} ledger rows, but only {could} transfers sent before the answer could have happened"
                    ));
                }
                if !wrong.is_empty() {
                    note(
                        &mut r.bad_reads,
                        format!("{}: {}", what(), wrong.join(", ")),
                    );
                }
            }
        }
    }
}

/// Compares the final members' books with each other ([`BankReport::divergence`]) and
/// checks them against the transfers with [`check_state`] (once when they agree, each
/// member's own otherwise). Shared by the SQL bank and the key-value bank
/// ([`super::kv_bank`]).
pub(super) fn check_finals(
    r: &mut BankReport,
    transfers: &[Transfer],
    finals: &[(u64, Result<BankState, String>)],
) {
    let mut states: Vec<(u64, &BankState)> = Vec::new();
    for (id, st) in finals {
        match st {
            Ok(s) => states.push((*id, s)),
            Err(e) => note(
                &mut r.divergence,
                format!("node {id}: bank not readable: {e}"),
            ),
        }
    }
    r.nodes_compared = states.len();
    let Some(&(first_id, first)) = states.first() else {
        note(
            &mut r.divergence,
            "no final member's bank could be read".into(),
        );
        return;
    };
    r.ledger_rows = first.ledger.len();
    let mut all_same = true;
    for &(id, s) in &states[1..] {
        if let Some(d) = difference(first, s) {
            all_same = false;
            note(
                &mut r.divergence,
                format!("node {id} differs from node {first_id}: {d}"),
            );
        }
    }
    // One check when the members agree; each member's own otherwise.
    let checked: Vec<(String, &BankState)> = if all_same {
        vec![("the final ledger".into(), first)]
    } else {
        states
            .iter()
            .map(|(id, s)| (format!("node {id}'s ledger"), *s))
            .collect()
    };
    let mut unknown_present = BTreeSet::new();
    for (label, s) in checked {
        check_state(r, transfers, &label, s, None, &mut unknown_present);
    }
    r.unknown_present = unknown_present.len();
}

/// The first difference between two banks, if any.
fn difference(a: &BankState, b: &BankState) -> Option<String> {
    if a.applied != b.applied {
        return Some(format!("applied index {} vs {}", a.applied, b.applied));
    }
    if a.accounts != b.accounts {
        let at = (a.accounts.iter().zip(&b.accounts))
            .find(|(x, y)| x != y)
            .map(|(x, y)| format!("account {} has {} vs {}", x.0, x.1, y.1))
            .unwrap_or_else(|| format!("{} vs {} accounts", a.accounts.len(), b.accounts.len()));
        return Some(at);
    }
    if a.ledger != b.ledger {
        let at = (a.ledger.iter().zip(&b.ledger))
            .find(|(x, y)| x != y)
            .map(|(x, y)| format!("ledger row {x:?} vs {y:?}"))
            .unwrap_or_else(|| format!("{} vs {} ledger rows", a.ledger.len(), b.ledger.len()));
        return Some(at);
    }
    None
}

/// Checks one state of the books against the transfers: each committed transfer exactly
/// once with the accounts and amount it was sent with, each unknown one at most once
/// (noted in `unknown_present`), no rejected or failed one, no row nobody sent, balances
/// equal to the initial ones plus the ledger's moves, and the total.
///
/// `window` is the (call, return) of a read that saw `s` while transfers went on: then a
/// committed transfer must be there only if it returned before the read was called, and
/// a row of a transfer sent after the read returned is one nobody sent (yet). None: a
/// final state, after every transfer ended.
pub(super) fn check_state(
    r: &mut BankReport,
    transfers: &[Transfer],
    label: &str,
    s: &BankState,
    window: Option<(u64, u64)>,
    unknown_present: &mut BTreeSet<String>,
) {
    let mut rows: BTreeMap<&str, Vec<&LedgerRow>> = BTreeMap::new();
    for row in &s.ledger {
        rows.entry(row.id.as_str()).or_default().push(row);
    }
    let mut sent: BTreeSet<&str> = BTreeSet::new();
    for t in transfers {
        if window.is_some_and(|(_, ret)| t.call > ret) {
            // Sent after the read returned: it cannot be in what the read saw.
            continue;
        }
        let id = t.spec.id.as_str();
        sent.insert(id);
        let found = rows.get(id).map_or(&[][..], |v| v.as_slice());
        if found.len() > 1 {
            note(
                &mut r.duplicated,
                format!(
                    "{label}: transfer {id} ({:?}) {} times",
                    t.status,
                    found.len()
                ),
            );
        }
        if let Some(row) = found
            .iter()
            .find(|row| (row.src, row.dst, row.amount) != (t.spec.src, t.spec.dst, t.spec.amount))
        {
            note(
                &mut r.altered,
                format!(
                    "{label}: transfer {id} sent as {} -> {} of {}, stored as {} -> {} of {}",
                    t.spec.src, t.spec.dst, t.spec.amount, row.src, row.dst, row.amount
                ),
            );
        }
        match t.status {
            TransferStatus::Committed
                if found.is_empty()
                    && window.is_none_or(|(call, _)| t.ret.is_some_and(|ret| ret < call)) =>
            {
                note(
                    &mut r.lost,
                    format!("{label}: committed transfer {id} is missing"),
                )
            }
            TransferStatus::Rejected | TransferStatus::Failed if !found.is_empty() => note(
                &mut r.unexpected,
                format!(
                    "{label}: {:?} transfer {id} is present ({})",
                    t.status,
                    t.why.as_deref().unwrap_or("")
                ),
            ),
            TransferStatus::Unknown if !found.is_empty() => {
                unknown_present.insert(id.to_string());
            }
            _ => {}
        }
    }
    for id in rows.keys() {
        if !sent.contains(id) {
            note(
                &mut r.unexpected,
                format!("{label}: row {id} of a transfer nobody sent"),
            );
        }
    }
    // Balances: the initial ones plus what the ledger moved.
    let mut want: BTreeMap<i64, i64> = (1..=ACCOUNTS).map(|id| (id, INITIAL_BALANCE)).collect();
    for row in &s.ledger {
        *want.entry(row.src).or_default() -= row.amount;
        *want.entry(row.dst).or_default() += row.amount;
    }
    let have: BTreeMap<i64, i64> = s.accounts.iter().copied().collect();
    for (id, w) in &want {
        match have.get(id) {
            Some(h) if h == w => {}
            Some(h) => note(
                &mut r.balances,
                format!("{label}: account {id} holds {h}, the ledger says {w}"),
            ),
            None => note(&mut r.balances, format!("{label}: account {id} is missing")),
        }
    }
    for id in have.keys() {
        if !want.contains_key(id) {
            note(
                &mut r.balances,
                format!("{label}: account {id} should not exist"),
            );
        }
    }
    let total: i64 = s.accounts.iter().map(|(_, b)| b).sum();
    if total != TOTAL {
        note(
            &mut r.balances,
            format!("{label}: the accounts hold {total}, not {TOTAL}"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transfer(id: &str, src: i64, dst: i64, amount: i64, status: TransferStatus) -> Transfer {
        Transfer {
            spec: TransferSpec {
                id: id.into(),
                src,
                dst,
                amount,
            },
            protocol: SqlProtocol::Grpc,
            overdraft: false,
            call: 10,
            ret: (status != TransferStatus::Unknown).then_some(20),
            status,
            resolved_by_retry: false,
            why: None,
        }
    }

    /// The state after `rows` on top of the initial bank (balances follow the ledger).
    fn state(rows: &[(&str, i64, i64, i64)]) -> BankState {
        let mut bal: BTreeMap<i64, i64> = (1..=ACCOUNTS).map(|i| (i, INITIAL_BALANCE)).collect();
        let ledger = rows
            .iter()
            .enumerate()
            .map(|(i, (id, s, d, a))| {
                *bal.get_mut(s).unwrap() -= a;
                *bal.get_mut(d).unwrap() += a;
                LedgerRow {
                    rowid: i as i64 + 1,
                    id: id.to_string(),
                    src: *s,
                    dst: *d,
                    amount: *a,
                }
            })
            .collect();
        BankState {
            applied: 100,
            accounts: bal.into_iter().collect(),
            ledger,
        }
    }

    fn read(level: BankReadLevel, applied: u64, seen: ReadSeen) -> ReadSample {
        ReadSample {
            protocol: SqlProtocol::Http,
            level,
            node: None,
            call: 30,
            ret: 40,
            applied: Some(applied),
            seen,
        }
    }

    fn good_read(rows: i64) -> ReadSeen {
        ReadSeen::State {
            tables: 2,
            accounts: ACCOUNTS,
            total: TOTAL,
            ledger_rows: rows,
            unexplained: 0,
        }
    }

    fn transfers() -> Vec<Transfer> {
        vec![
            transfer("1.1", 1, 2, 10, TransferStatus::Committed),
            transfer("1.2", 2, 3, 5, TransferStatus::Unknown),
            transfer("1.3", 3, 4, 7, TransferStatus::Rejected),
            transfer("1.4", 4, 5, 9, TransferStatus::Failed),
        ]
    }

    fn finals(s: BankState) -> Vec<(u64, Result<BankState, String>)> {
        vec![(1, Ok(s.clone())), (2, Ok(s.clone())), (3, Ok(s))]
    }

    #[test]
    fn a_consistent_bank_passes() {
        let ts = transfers();
        let reads = vec![
            read(BankReadLevel::Linearizable, 50, good_read(1)),
            read(BankReadLevel::Stale, 3, ReadSeen::NoTables),
        ];
        let r = check(&ts, &reads, 5, &finals(state(&[("1.1", 1, 2, 10)])));
        assert!(r.is_valid(), "{}", r.render());
        assert_eq!((r.committed, r.unknown, r.rejected, r.failed), (1, 1, 1, 1));
        assert_eq!((r.unknown_present, r.stale_before_setup), (0, 1));
        // The unknown one present is fine too.
        let r = check(
            &ts,
            &[],
            5,
            &finals(state(&[("1.1", 1, 2, 10), ("1.2", 2, 3, 5)])),
        );
        assert!(r.is_valid(), "{}", r.render());
        assert_eq!(r.unknown_present, 1);
    }

    #[test]
    fn bad_reads_are_reported() {
        let ts = transfers();
        let cases = [
            ReadSeen::State {
                tables: 2,
                accounts: ACCOUNTS,
                total: TOTAL - 1,
                ledger_rows: 1,
                unexplained: 0,
            },
            ReadSeen::State {
                tables: 2,
                accounts: ACCOUNTS,
                total: TOTAL,
                ledger_rows: 1,
                unexplained: 1,
            },
            // The committed transfer returned at 20, before the read was sent at 30.
            good_read(0),
            // More rows than transfers that could have happened.
            good_read(3),
            ReadSeen::Malformed("no such column".into()),
        ];
        for seen in cases {
            let r = check(
                &ts,
                &[read(BankReadLevel::Linearizable, 50, seen.clone())],
                5,
                &finals(state(&[("1.1", 1, 2, 10)])),
            );
            assert!(!r.is_valid(), "{seen:?} passed");
            assert_eq!(r.bad_reads.len(), 1, "{seen:?}: {}", r.render());
        }
        // No tables where the setup is applied: not excused.
        let r = check(
            &ts,
            &[read(BankReadLevel::Stale, 5, ReadSeen::NoTables)],
            5,
            &finals(state(&[("1.1", 1, 2, 10)])),
        );
        assert_eq!(r.bad_reads.len(), 1, "{}", r.render());
        // A stale read may lag: fewer rows than committed is fine there.
        let r = check(
            &ts,
            &[read(BankReadLevel::Stale, 50, good_read(0))],
            5,
            &finals(state(&[("1.1", 1, 2, 10)])),
        );
        assert!(r.is_valid(), "{}", r.render());
    }

    #[test]
    fn bad_final_states_are_reported() {
        let ts = transfers();
        let good = state(&[("1.1", 1, 2, 10)]);
        // Lost.
        let r = check(&ts, &[], 5, &finals(state(&[])));
        assert_eq!(r.lost.len(), 1, "{}", r.render());
        // Duplicated (a retry applied twice).
        let r = check(
            &ts,
            &[],
            5,
            &finals(state(&[("1.1", 1, 2, 10), ("1.1", 1, 2, 10)])),
        );
        assert_eq!(r.duplicated.len(), 1, "{}", r.render());
        // A rejected one, a failed one and one nobody sent.
        let r = check(
            &ts,
            &[],
            5,
            &finals(state(&[
                ("1.1", 1, 2, 10),
                ("1.3", 3, 4, 7),
                ("1.4", 4, 5, 9),
                ("9.9", 1, 2, 1),
            ])),
        );
        assert_eq!(r.unexpected.len(), 3, "{}", r.render());
        // Stored with another amount.
        let r = check(&ts, &[], 5, &finals(state(&[("1.1", 1, 2, 11)])));
        assert_eq!(r.altered.len(), 1, "{}", r.render());
        // A balance that does not follow the ledger (on every node alike).
        let mut bad = good.clone();
        bad.accounts[0].1 += 1;
        let r = check(&ts, &[], 5, &finals(bad.clone()));
        assert!(r.balances.len() >= 2, "{}", r.render()); // the account, and the total
        assert!(r.divergence.is_empty());
        // One node alone differs: divergence, and its own ledger check fails too.
        let r = check(
            &ts,
            &[],
            5,
            &[(1, Ok(good.clone())), (2, Ok(good.clone())), (3, Ok(bad))],
        );
        assert_eq!(r.divergence.len(), 1, "{}", r.render());
        assert!(r.divergence[0].contains("node 3"), "{}", r.render());
        assert!(
            r.balances.iter().all(|b| b.contains("node 3")),
            "{}",
            r.render()
        );
        // A node whose bank cannot be read.
        let r = check(
            &ts,
            &[],
            5,
            &[(1, Ok(good.clone())), (2, Err("timed out".into()))],
        );
        assert_eq!(r.divergence.len(), 1, "{}", r.render());
        // An overdraft that committed.
        let mut ts2 = ts.clone();
        ts2[0].overdraft = true;
        let r = check(&ts2, &[], 5, &finals(good));
        assert_eq!(r.unexpected.len(), 1, "{}", r.render());
    }

    #[test]
    fn answers_of_both_protocols_are_interpreted_alike() {
        let json: Vec<serde_json::Value> = serde_json::from_str(
            r#"[{"columns":["COUNT(*)"],"types":["integer"],"values":[[2]]},
                {"columns":["a","b"],"types":["integer","integer"],"values":[[8,8000]]},
                {"columns":["c"],"types":["integer"],"values":[[3]]},
                {"columns":["d"],"types":["integer"],"values":[[0]]}]"#,
        )
        .unwrap();
        let from_http = interpret_read(&from_json(json).unwrap());
        let res = |vals: Vec<i64>| StatementResult {
            rows: vec![vals.into_iter().map(Value::Integer).collect()],
            ..Default::default()
        };
        let from_grpc = interpret_read(
            &from_results(vec![
                res(vec![2]),
                res(vec![8, 8000]),
                res(vec![3]),
                res(vec![0]),
            ])
            .unwrap(),
        );
        assert_eq!(from_http, good_read(3));
        assert_eq!(from_grpc, from_http);
        let err: Vec<serde_json::Value> =
            serde_json::from_str(r#"[{"error":"CHECK constraint failed"},{"error":"x"}]"#).unwrap();
        assert_eq!(
            first_error(&from_json(err).unwrap()).as_deref(),
            Some("CHECK constraint failed")
        );
        let none: Vec<serde_json::Value> = serde_json::from_str(
            r#"[{"columns":["n"],"types":["integer"],"values":[[0]]},{"error":"no such table: accounts"},{"error":"x"},{"error":"y"}]"#,
        )
        .unwrap();
        assert_eq!(
            interpret_read(&from_json(none).unwrap()),
            ReadSeen::NoTables
        );
    }
}
