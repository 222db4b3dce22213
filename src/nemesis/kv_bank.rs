//! The key-value bank of a nemesis run: money moves between accounts kept in keys, by
//! key-value transactions (`paxosdb.v1.Kv/Txn` through the Rust client) while the faults
//! go on, and no read, replica or crash may show the bank holding more or less than it
//! started with. The books and the checks are the SQL bank's ([`super::bank`]): the same
//! accounts, transfers and fates, checked by the same [`super::bank::check_state`].
//!
//! **Books.** Account `i` (1..=[`ACCOUNTS`]) is the key `bank/a/<i>`, its balance in
//! decimal; a transfer's ledger row is the key `bank/l/<tid>` = `src,dst,amount`, with
//! `tid` = `<worker>.<n>` (n zero-padded to 8 digits) unique in the run, so a ledger row
//! can never appear twice as a key: a transfer applied twice shows as balances that do
//! not follow the ledger instead. The setup is one transaction that puts every account
//! at [`INITIAL_BALANCE`] if `bank/a/1` is absent, retried until answered.
//!
//! **Workers.** `--kv-bank-clients` workers (0 by default), each with one operation in
//! flight, beside the key-value and SQL workers:
//!
//! - a *transfer* (7 in 10), two in three of them over gRPC and one in three as a Redis
//!   script. Over gRPC it is optimistic, since gRPC transactions have no increment: one
//!   transaction reads both balances (two gets, one snapshot), then one transaction
//!   compares both accounts' versions with what it read and, if they still hold, puts both
//!   new balances and the ledger row. It ends *committed* (`succeeded` true), *failed*
//!   (`succeeded` false: the versions moved, nothing was applied; or refused before any
//!   attempt could reach a node) — then the worker reads again and tries a new transfer
//!   with a new tid — or *unknown* ([`crate::Error::OutcomeUnknown`]: it may have applied,
//!   once), and the worker moves on to a new transfer. The amount never exceeds what the
//!   source held in the read, so a correct run never overdraws. As a script
//!   ([`TRANSFER_SCRIPT`], `EVAL` through the RESP listener), one command reads both
//!   balances, refuses (answers 0) if the source holds less than the amount, and writes
//!   both balances and the ledger row: *committed* on 1, *failed* on 0 or a refusal that
//!   applied nothing (`TRYAGAIN`, an input error), *unknown* otherwise. This checks the
//!   scripts' optimistic transactions (see `crate::api::resp::script`) under the faults.
//! - a *total read* (3 in 10): one linearizable `Scan` of the prefix `bank/` (accounts
//!   and ledger in one snapshot), or, one read in three and whenever the scan would be cut
//!   by the scan limit, one read-only transaction of `Range` operations over the accounts
//!   and each worker's ledger rows in chunks of [`CHUNK`] (one snapshot too).
//!
//! **Checks** ([`check`]): every answered read must show the accounts holding
//! [`TOTAL`](super::bank::TOTAL),
//! each balance equal to the initial one plus the ledger's moves, every transfer
//! committed before the read was called, no failed one, and no row of a transfer not yet
//! sent when it returned (unknown ones may be there or not). After healing, a last
//! linearizable read, then every final member's books read with stale scans once their
//! applied indexes agree: they must be identical (ledger rows with the same versions) and
//! pass the same checks with every committed transfer present.
//!
//! # Invariants
//!
//! - A transfer is *failed* only on `succeeded: false` or a refusal of the client (no
//!   attempt may have been applied); anything else that is not an answer is unknown.
//! - Every answered read is checked; an unanswered read is counted, never a pass.

use super::bank::{
    check_finals, check_state, note, BankReport, BankState, LedgerRow, SqlProtocol, Transfer,
    TransferSpec, TransferStatus, ACCOUNTS, INITIAL_BALANCE, MAX_AMOUNT,
};
use super::clients::{grpc_error, OpError, RespClient};
use super::cluster::ProcCluster;
use super::workload::Shared;
use crate::api::resp::frame::Frame;
use crate::client::{Client, Compare, CompareOp, Txn, TxnOp, TxnOpResult};
use crate::command::{prefix_end, KeyValue, ScanRange, WriteResult};
use rand::rngs::StdRng;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The prefix of every key of the bank.
pub const PREFIX: &str = "bank/";
/// Ledger rows per `Range` operation of a transaction read.
pub const CHUNK: u64 = 1000;
/// The most rows one scan asks for.
const SCAN_LIMIT: u32 = crate::node::MAX_SCAN_LIMIT as u32;

pub fn account_key(id: i64) -> String {
    format!("{PREFIX}a/{id}")
}

pub fn ledger_key(worker: u64, n: u64) -> String {
    format!("{PREFIX}l/{worker}.{n:08}")
}

/// How a total read was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadHow {
    /// One linearizable scan of `bank/`.
    Scan,
    /// One read-only transaction of `Range` operations.
    Txn,
}

/// What a total read saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvSeen {
    /// The books, in one snapshot (`applied`: the scan's applied index, 0 for a
    /// transaction).
    Books(BankState),
    /// An answer the books cannot be read from (a key or value of the wrong shape, a
    /// range cut short).
    Malformed(String),
    /// No answer: not checked.
    Unanswered(String),
}

/// One total read and what it saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvRead {
    pub how: ReadHow,
    /// Nanoseconds since the start of the run.
    pub call: u64,
    pub ret: u64,
    pub seen: KvSeen,
}

/// Everything the key-value bank workers recorded.
#[derive(Default)]
pub struct KvBankLog {
    pub transfers: Mutex<Vec<Transfer>>,
    pub reads: Mutex<Vec<KvRead>>,
    /// Per worker, the number of the last transfer it sent (the transaction reads' ranges).
    pub sent: Mutex<BTreeMap<u64, u64>>,
    /// Transfers whose comparison failed (the versions moved between read and write).
    pub conflicts: AtomicU64,
    /// Transfer reads (the first transaction) that got no answer.
    pub reads_before_transfer_lost: AtomicU64,
    /// Scan reads cut by the scan limit, made again as transactions.
    pub scans_too_long: AtomicU64,
    /// The ids of the transfers made by a script.
    pub scripted: Mutex<BTreeSet<String>>,
}

/// A transfer as a Redis script: `KEYS` source, destination, ledger row; `ARGV` amount,
/// ledger value. 1 when done, 0 when the source holds less than the amount.
pub const TRANSFER_SCRIPT: &str = "\
local from = tonumber(redis.call('GET', KEYS[1]))
local to = tonumber(redis.call('GET', KEYS[2]))
local amount = tonumber(ARGV[1])
if from == nil or to == nil then
  return redis.error_reply('ERR an account is missing')
end
if from < amount then
  return 0
end
redis.call('SET', KEYS[1], tostring(from - amount))
redis.call('SET', KEYS[2], tostring(to + amount))
redis.call('SET', KEYS[3], ARGV[2])
return 1
";

/// The books from the rows of `bank/` (accounts by id, ledger rows in key order with
/// their key's version as rowid).
pub fn books_from(items: &[KeyValue], applied: u64) -> Result<BankState, String> {
    let mut accounts = Vec::new();
    let mut ledger = Vec::new();
    for kv in items {
        let key = String::from_utf8_lossy(&kv.key);
        let value = String::from_utf8_lossy(&kv.value);
        let bad = || format!("key {key} holds {value:?}");
        if let Some(id) = key.strip_prefix("bank/a/") {
            let id: i64 = id.parse().map_err(|_| format!("bad account key {key}"))?;
            let balance: i64 = value.parse().map_err(|_| bad())?;
            accounts.push((id, balance));
        } else if let Some(tid) = key.strip_prefix("bank/l/") {
            let parts: Vec<i64> = value
                .split(',')
                .map(|p| p.parse::<i64>())
                .collect::<Result<_, _>>()
                .map_err(|_| bad())?;
            let [src, dst, amount] = parts[..] else {
                return Err(bad());
            };
            ledger.push(LedgerRow {
                rowid: kv.version as i64,
                id: tid.to_string(),
                src,
                dst,
                amount,
            });
        } else {
            return Err(format!("unexpected key {key}"));
        }
    }
    accounts.sort_unstable();
    Ok(BankState {
        applied,
        accounts,
        ledger,
    })
}

/// Creates the bank: every account at [`INITIAL_BALANCE`] if `bank/a/1` is absent, in one
/// transaction, retried for up to a minute until answered.
pub async fn create(client: &Client) -> crate::error::Result<()> {
    let txn = Txn {
        compare: vec![Compare::version(
            account_key(1).as_bytes(),
            CompareOp::Equal,
            0,
        )],
        success: (1..=ACCOUNTS)
            .map(|id| {
                TxnOp::put(
                    account_key(id).as_bytes(),
                    INITIAL_BALANCE.to_string().as_bytes(),
                )
            })
            .collect(),
        failure: vec![],
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match client.txn(&txn).await {
            // false: an earlier attempt whose answer was lost created it.
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() < deadline && !e.is_invalid_request() => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                return Err(crate::error::Error::Internal(format!(
                    "creating the key-value bank: {e}"
                )))
            }
        }
    }
}

/// A worker's clients (gRPC, and RESP for scripts), rebuilt for the new members after a
/// membership change.
struct BankClient {
    rotate: usize,
    version: u64,
    client: Option<Client>,
    resp: Option<RespClient>,
}

impl BankClient {
    fn get(&mut self, shared: &Shared) -> Option<&Client> {
        let (version, nodes) = shared.endpoints.current();
        if self.client.is_none() || version != self.version {
            if let Ok((version, client)) = shared.endpoints.client(self.rotate) {
                self.version = version;
                self.client = Some(client);
                let mut addrs: Vec<String> = nodes.iter().map(|n| n.resp.clone()).collect();
                let first = self.rotate % addrs.len().max(1);
                addrs.rotate_left(first);
                self.resp = Some(RespClient::new(addrs, shared.endpoints.timeouts(), false));
            }
        }
        self.client.as_ref()
    }
}

/// One transfer as a Redis script: its status and why.
async fn script_transfer(
    resp: &mut RespClient,
    spec: &TransferSpec,
    keys: [&str; 3],
) -> (TransferStatus, Option<String>) {
    let amount = spec.amount.to_string();
    let row = format!("{},{},{}", spec.src, spec.dst, spec.amount);
    let keys = keys.map(str::as_bytes);
    match resp
        .eval(
            TRANSFER_SCRIPT.as_bytes(),
            &keys,
            &[amount.as_bytes(), row.as_bytes()],
        )
        .await
    {
        Ok(Frame::Integer(1)) => (TransferStatus::Committed, None),
        Ok(Frame::Integer(0)) => (
            TransferStatus::Failed,
            Some("the source held less than the amount: nothing applied".into()),
        ),
        Ok(other) => (
            TransferStatus::Unknown,
            Some(format!("the script answered {other:?}")),
        ),
        Err(OpError::Refused(e)) => (TransferStatus::Failed, Some(e)),
        Err(OpError::Unknown(e)) => (TransferStatus::Unknown, Some(e)),
    }
}

/// A balance and its version, from a get of a transaction.
fn balance_of(r: Option<&TxnOpResult>) -> Result<(i64, u64), String> {
    match r {
        Some(TxnOpResult::Get(Some(v))) => {
            let s = String::from_utf8_lossy(&v.value);
            let b = s
                .parse::<i64>()
                .map_err(|_| format!("balance {s:?} is not a number"))?;
            Ok((b, v.version))
        }
        other => Err(format!("expected an account, got {other:?}")),
    }
}

/// One key-value bank worker: transfers and total reads until the run stops.
pub async fn worker(shared: Arc<Shared>, log: Arc<KvBankLog>, worker: u64, mut rng: StdRng) {
    let mut bc = BankClient {
        rotate: worker as usize,
        version: u64::MAX,
        client: None,
        resp: None,
    };
    let mut n = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        let Some(client) = bc.get(&shared) else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let roll = rng.gen_range(0..10);
        if roll >= 7 {
            let how = if roll == 9 {
                ReadHow::Txn
            } else {
                ReadHow::Scan
            };
            let read = total_read(client, how, &log, &shared).await;
            log.reads.lock().unwrap().push(read);
            continue;
        }
        let src = rng.gen_range(1..=ACCOUNTS);
        let mut dst = rng.gen_range(1..ACCOUNTS);
        if dst >= src {
            dst += 1;
        }
        let (a, b) = (account_key(src), account_key(dst));
        if rng.gen_range(0..3) == 0 {
            let Some(resp) = bc.resp.as_mut() else {
                continue;
            };
            let (key, spec) = next_transfer(
                &log,
                worker,
                &mut n,
                src,
                dst,
                rng.gen_range(1..=MAX_AMOUNT),
            );
            let call = shared.now();
            let (status, why) = script_transfer(resp, &spec, [&a, &b, &key]).await;
            log.scripted.lock().unwrap().insert(spec.id.clone());
            record(&log, &shared, spec, call, status, why);
            continue;
        }
        let read = Txn {
            compare: vec![],
            success: vec![TxnOp::get(a.as_bytes()), TxnOp::get(b.as_bytes())],
            failure: vec![],
        };
        let call = shared.now();
        let got = match client.txn(&read).await {
            Ok(r) => r,
            Err(_) => {
                log.reads_before_transfer_lost
                    .fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (from, to) = match (
            balance_of(got.results.first()),
            balance_of(got.results.get(1)),
        ) {
            (Ok(x), Ok(y)) => (x, y),
            (Err(e), _) | (_, Err(e)) => {
                // The accounts exist from the setup on: a read that lacks one is wrong.
                log.reads.lock().unwrap().push(KvRead {
                    how: ReadHow::Txn,
                    call,
                    ret: shared.now(),
                    seen: KvSeen::Malformed(format!("reading accounts {src} and {dst}: {e}")),
                });
                continue;
            }
        };
        let amount = rng.gen_range(1..=MAX_AMOUNT).min(from.0);
        if amount <= 0 {
            continue;
        }
        let (key, spec) = next_transfer(&log, worker, &mut n, src, dst, amount);
        let commit = Txn {
            compare: vec![
                Compare::version(a.as_bytes(), CompareOp::Equal, from.1),
                Compare::version(b.as_bytes(), CompareOp::Equal, to.1),
            ],
            success: vec![
                TxnOp::put(a.as_bytes(), (from.0 - amount).to_string().as_bytes()),
                TxnOp::put(b.as_bytes(), (to.0 + amount).to_string().as_bytes()),
                TxnOp::put(key.as_bytes(), format!("{src},{dst},{amount}").as_bytes()),
            ],
            failure: vec![],
        };
        let call = shared.now();
        let (status, why) = match client.txn(&commit).await {
            Ok(r) if r.succeeded => {
                let rejected = r
                    .results
                    .iter()
                    .find(|x| !matches!(x, TxnOpResult::Write(WriteResult::Put { .. })));
                (
                    TransferStatus::Committed,
                    rejected.map(|x| format!("a put of the transaction answered {x:?}")),
                )
            }
            Ok(_) => {
                log.conflicts.fetch_add(1, Ordering::Relaxed);
                (
                    TransferStatus::Failed,
                    Some("the versions moved since the read: nothing applied".into()),
                )
            }
            Err(e) => match grpc_error(e) {
                OpError::Refused(e) => (TransferStatus::Failed, Some(e)),
                OpError::Unknown(e) => (TransferStatus::Unknown, Some(e)),
            },
        };
        record(&log, &shared, spec, call, status, why);
    }
}

/// The next transfer of `worker` (its ledger row's key and its spec), counted as sent.
fn next_transfer(
    log: &KvBankLog,
    worker: u64,
    n: &mut u64,
    src: i64,
    dst: i64,
    amount: i64,
) -> (String, TransferSpec) {
    *n += 1;
    log.sent.lock().unwrap().insert(worker, *n);
    let key = ledger_key(worker, *n);
    let spec = TransferSpec {
        id: key.trim_start_matches("bank/l/").to_string(),
        src,
        dst,
        amount,
    };
    (key, spec)
}

/// Records how a transfer called at `call` ended (answered now unless unknown).
fn record(
    log: &KvBankLog,
    shared: &Shared,
    spec: TransferSpec,
    call: u64,
    status: TransferStatus,
    why: Option<String>,
) {
    let ret = (status != TransferStatus::Unknown).then(|| shared.now());
    log.transfers.lock().unwrap().push(Transfer {
        spec,
        protocol: SqlProtocol::Grpc,
        overdraft: false,
        call,
        ret,
        status,
        resolved_by_retry: false,
        why,
    });
}

/// One total read (see the module docs).
async fn total_read(client: &Client, how: ReadHow, log: &KvBankLog, shared: &Shared) -> KvRead {
    let call = shared.now();
    let done = |how, seen| KvRead {
        how,
        call,
        ret: shared.now(),
        seen,
    };
    if how == ReadHow::Scan {
        let range = ScanRange::Prefix(PREFIX.as_bytes().to_vec());
        match client.scan(&range, SCAN_LIMIT, false).await {
            Ok(r) if !r.more => {
                let seen = books_from(&r.items, r.applied_index)
                    .map_or_else(KvSeen::Malformed, KvSeen::Books);
                return done(ReadHow::Scan, seen);
            }
            Ok(_) => {
                log.scans_too_long.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => return done(ReadHow::Scan, KvSeen::Unanswered(e.to_string())),
        }
    }
    // Accounts, then each worker's ledger rows in chunks, with one chunk past the last
    // transfer it sent (one it sends meanwhile may be applied before this read).
    let mut ranges = vec![ScanRange::Prefix(b"bank/a/".to_vec())];
    let sent: Vec<(u64, u64)> = log
        .sent
        .lock()
        .unwrap()
        .iter()
        .map(|(w, n)| (*w, *n))
        .collect();
    for (w, last) in sent {
        for c in 0..=(last / CHUNK + 1) {
            ranges.push(ScanRange::Range {
                from: ledger_key(w, c * CHUNK).into_bytes(),
                to: Some(ledger_key(w, (c + 1) * CHUNK).into_bytes()),
            });
        }
    }
    let txn = Txn {
        compare: vec![],
        success: ranges
            .into_iter()
            .map(|range| TxnOp::Range {
                range,
                limit: CHUNK as u32 + 1,
            })
            .collect(),
        failure: vec![],
    };
    let seen = match client.txn(&txn).await {
        Ok(r) => {
            let mut items = Vec::new();
            let mut cut = None;
            for x in r.results {
                match x {
                    TxnOpResult::Range { items: i, more } => {
                        if more {
                            cut = Some("a range of the read was cut short".to_string());
                        }
                        items.extend(i);
                    }
                    other => cut = Some(format!("unexpected result {other:?}")),
                }
            }
            match cut {
                Some(e) => KvSeen::Malformed(e),
                None => books_from(&items, 0).map_or_else(KvSeen::Malformed, KvSeen::Books),
            }
        }
        Err(e) => KvSeen::Unanswered(e.to_string()),
    };
    done(ReadHow::Txn, seen)
}

/// A last linearizable read after healing (a scan, retried for up to a minute).
pub async fn final_read(shared: &Shared, log: &KvBankLog, client: &Client) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let read = total_read(client, ReadHow::Scan, log, shared).await;
        if !matches!(read.seen, KvSeen::Unanswered(_)) || Instant::now() >= deadline {
            log.reads.lock().unwrap().push(read);
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every row of `bank/` on the node of `client`, by stale scans a page at a time, with
/// the applied index they reflect (every page must reflect the same one).
async fn stale_rows(client: &Client) -> Result<(Vec<KeyValue>, u64), String> {
    let end = prefix_end(PREFIX.as_bytes());
    let mut from = PREFIX.as_bytes().to_vec();
    let mut items: Vec<KeyValue> = Vec::new();
    let mut applied = None;
    loop {
        let range = ScanRange::Range {
            from: from.clone(),
            to: end.clone(),
        };
        let r = client
            .scan(&range, SCAN_LIMIT, true)
            .await
            .map_err(|e| e.to_string())?;
        if applied.is_some_and(|a| a != r.applied_index) {
            return Err(format!(
                "the state moved from applied index {} to {} while it was read",
                applied.unwrap_or(0),
                r.applied_index
            ));
        }
        applied = Some(r.applied_index);
        let more = r.more;
        items.extend(r.items);
        match (more, items.last()) {
            (true, Some(last)) => {
                from = last.key.clone();
                from.push(0);
            }
            _ => return Ok((items, applied.unwrap_or(0))),
        }
    }
}

/// Waits until every member reports the same applied index twice in a row (the cluster
/// is quiet), then reads every member's books with stale scans. Members whose books could
/// not be read within 30 s are reported as such.
pub async fn final_states(c: &ProcCluster) -> Vec<(u64, Result<BankState, String>)> {
    let clients: Vec<(u64, Client)> = c
        .members()
        .into_iter()
        .map(|id| (id, c.client_for(id, Duration::from_secs(5))))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last: Vec<Option<u64>> = Vec::new();
    loop {
        let applied = c.applied().await;
        let same = applied.iter().all(|a| a.is_some() && *a == applied[0]);
        if same && applied == last || Instant::now() > deadline {
            break;
        }
        last = applied;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut out = Vec::new();
    for (id, client) in &clients {
        let mut rows = stale_rows(client).await;
        while rows.is_err() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            rows = stale_rows(client).await;
        }
        out.push((
            *id,
            rows.and_then(|(items, applied)| books_from(&items, applied)),
        ));
    }
    out
}

/// The verdict of the key-value bank: the shared bank report (counts and problems, see
/// [`BankReport`]) and what is the key-value bank's own.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvBankReport {
    pub books: BankReport,
    /// Failed transfers whose comparison failed (the versions moved): the transfers
    /// that met another one on an account.
    pub conflicts: usize,
    /// Checked reads, by how they were made.
    pub reads_scan: usize,
    pub reads_txn: usize,
    /// Scans cut by the scan limit (made again as transactions).
    pub scans_too_long: usize,
    /// Reads before a transfer that got no answer (no transfer was then sent).
    pub reads_before_transfer_lost: usize,
}

impl KvBankReport {
    pub fn is_valid(&self) -> bool {
        self.books.is_valid()
    }

    /// `kv-bank` when its workers got no transfer committed or no read checked.
    pub fn unexercised(&self) -> Vec<String> {
        if self.books.committed == 0 || self.reads_scan + self.reads_txn == 0 {
            vec!["kv-bank".to_string()]
        } else {
            Vec::new()
        }
    }

    /// Two lines for a human (more with problems).
    pub fn render(&self) -> String {
        let b = &self.books;
        let mut s = format!(
            "kv bank: {} transfers (committed {}, failed {} of which {} version conflicts, unknown {} ({} present)); {} reads checked ({} scans, {} transactions), {} unanswered\n",
            b.transfers,
            b.committed,
            b.failed,
            self.conflicts,
            b.unknown,
            b.unknown_present,
            self.reads_scan + self.reads_txn,
            self.reads_scan,
            self.reads_txn,
            b.reads_unanswered,
        );
        let by: Vec<String> = (b.per_protocol.iter())
            .map(|(p, c)| {
                format!(
                    "{p} {} committed of {}",
                    c.committed,
                    c.committed + c.failed + c.unknown
                )
            })
            .collect();
        s += &format!("kv bank: transfers by way: {}\n", by.join(", "));
        let hit: Vec<String> = b
            .in_flight_at_faults
            .iter()
            .map(|(f, n)| format!("{f} {n}"))
            .collect();
        if !hit.is_empty() {
            s += &format!(
                "kv bank: transfers in flight at faults: {}\n",
                hit.join(", ")
            );
        }
        s += &format!(
            "kv bank: {} ledger rows, {} final members compared: {}\n",
            b.ledger_rows,
            b.nodes_compared,
            if self.is_valid() {
                "consistent"
            } else {
                "VIOLATION"
            }
        );
        for (what, list) in [
            ("bad reads", &b.bad_reads),
            ("lost", &b.lost),
            ("duplicated", &b.duplicated),
            ("unexpected", &b.unexpected),
            ("altered", &b.altered),
            ("balances", &b.balances),
            ("diverged", &b.divergence),
        ] {
            if !list.is_empty() {
                s += &format!("KV BANK {}: {}\n", what.to_uppercase(), list.join("; "));
            }
        }
        s
    }
}

/// Checks the key-value bank: every answered read with [`check_state`] against the
/// transfers known at its time, and the final members' books against each other and
/// against every transfer (see the module docs).
pub fn check(
    transfers: &[Transfer],
    scripted: &BTreeSet<String>,
    reads: &[KvRead],
    finals: &[(u64, Result<BankState, String>)],
) -> KvBankReport {
    let mut r = KvBankReport::default();
    let b = &mut r.books;
    for t in transfers {
        let how = match scripted.contains(&t.spec.id) {
            true => "resp script",
            false => "grpc",
        };
        let c = b.per_protocol.entry(how.into()).or_default();
        b.transfers += 1;
        match t.status {
            TransferStatus::Committed => {
                c.committed += 1;
                b.committed += 1;
                if let Some(why) = &t.why {
                    note(
                        &mut b.unexpected,
                        format!("transfer {} committed with {why}", t.spec.id),
                    );
                }
            }
            TransferStatus::Unknown => {
                c.unknown += 1;
                b.unknown += 1;
            }
            TransferStatus::Failed | TransferStatus::Rejected => {
                c.failed += 1;
                b.failed += 1;
            }
        }
    }
    for read in reads {
        let c = b.per_protocol.entry("grpc".into()).or_default();
        let what = format!("{:?} read at {:.3}s", read.how, read.call as f64 / 1e9);
        match &read.seen {
            KvSeen::Unanswered(_) => {
                c.reads_unanswered += 1;
                b.reads_unanswered += 1;
                continue;
            }
            _ => c.reads += 1,
        }
        b.reads_linearizable += 1;
        match read.how {
            ReadHow::Scan => r.reads_scan += 1,
            ReadHow::Txn => r.reads_txn += 1,
        }
        match &read.seen {
            KvSeen::Unanswered(_) => {}
            KvSeen::Malformed(e) => note(&mut b.bad_reads, format!("{what}: {e}")),
            KvSeen::Books(s) => {
                let mut scratch = BankReport::default();
                check_state(
                    &mut scratch,
                    transfers,
                    &what,
                    s,
                    Some((read.call, read.ret)),
                    &mut BTreeSet::new(),
                );
                for list in [
                    scratch.lost,
                    scratch.duplicated,
                    scratch.unexpected,
                    scratch.altered,
                    scratch.balances,
                ] {
                    for p in list {
                        note(&mut b.bad_reads, p);
                    }
                }
            }
        }
    }
    check_finals(b, transfers, finals);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str, version: u64) -> KeyValue {
        KeyValue {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            version,
        }
    }

    /// The rows of the books after `moves` (tid, src, dst, amount) on the initial bank,
    /// balances following the ledger.
    fn rows(moves: &[(&str, i64, i64, i64)]) -> Vec<KeyValue> {
        let mut bal: BTreeMap<i64, i64> = (1..=ACCOUNTS).map(|i| (i, INITIAL_BALANCE)).collect();
        let mut out = Vec::new();
        for (i, (tid, s, d, a)) in moves.iter().enumerate() {
            *bal.get_mut(s).unwrap() -= a;
            *bal.get_mut(d).unwrap() += a;
            out.push(kv(
                &format!("bank/l/{tid}"),
                &format!("{s},{d},{a}"),
                10 + i as u64,
            ));
        }
        for (id, b) in bal {
            out.push(kv(&account_key(id), &b.to_string(), 5));
        }
        out
    }

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

    fn read(call: u64, items: &[KeyValue]) -> KvRead {
        KvRead {
            how: ReadHow::Scan,
            call,
            ret: call + 5,
            seen: KvSeen::Books(books_from(items, 50).unwrap()),
        }
    }

    fn finals(items: &[KeyValue]) -> Vec<(u64, Result<BankState, String>)> {
        let s = books_from(items, 99).unwrap();
        vec![(1, Ok(s.clone())), (2, Ok(s))]
    }

    fn transfers() -> Vec<Transfer> {
        vec![
            transfer("1.00000001", 1, 2, 10, TransferStatus::Committed),
            transfer("1.00000002", 2, 3, 5, TransferStatus::Unknown),
            transfer("1.00000003", 3, 4, 7, TransferStatus::Failed),
        ]
    }

    #[test]
    fn keys_and_books_parse() {
        assert_eq!(ledger_key(3, 42), "bank/l/3.00000042");
        let s = books_from(&rows(&[("1.00000001", 1, 2, 10)]), 7).unwrap();
        assert_eq!(s.accounts.len(), ACCOUNTS as usize);
        assert_eq!(s.accounts[0], (1, INITIAL_BALANCE - 10));
        assert_eq!(s.ledger[0].id, "1.00000001");
        assert_eq!((s.ledger[0].rowid, s.ledger[0].amount), (10, 10));
        assert!(books_from(&[kv("bank/l/1.1", "1,2", 3)], 0).is_err());
        assert!(books_from(&[kv("bank/x", "1", 3)], 0).is_err());
    }

    #[test]
    fn a_consistent_bank_passes() {
        let ts = transfers();
        let one = rows(&[("1.00000001", 1, 2, 10)]);
        let both = rows(&[("1.00000001", 1, 2, 10), ("1.00000002", 2, 3, 5)]);
        // Before the committed one returned (at 20), a read may miss it.
        let reads = [read(15, &rows(&[])), read(30, &one), read(40, &both)];
        let r = check(&ts, &BTreeSet::new(), &reads, &finals(&both));
        assert!(r.is_valid(), "{}", r.render());
        assert_eq!(
            (r.books.committed, r.books.unknown, r.books.failed),
            (1, 1, 1)
        );
        assert_eq!((r.reads_scan, r.books.unknown_present), (3, 1));
        assert_eq!(r.books.nodes_compared, 2);
    }

    #[test]
    fn bad_reads_and_finals_are_reported() {
        let ts = transfers();
        let good = rows(&[("1.00000001", 1, 2, 10)]);
        // The committed transfer returned at 20, before the read was called at 30.
        let r = check(
            &ts,
            &BTreeSet::new(),
            &[read(30, &rows(&[]))],
            &finals(&good),
        );
        assert_eq!(r.books.bad_reads.len(), 1, "{}", r.render());
        // A failed one present; a row of a transfer nobody sent.
        let r = check(
            &ts,
            &BTreeSet::new(),
            &[read(
                30,
                &rows(&[("1.00000001", 1, 2, 10), ("1.00000003", 3, 4, 7)]),
            )],
            &finals(&good),
        );
        assert_eq!(r.books.bad_reads.len(), 1, "{}", r.render());
        let r = check(
            &ts,
            &BTreeSet::new(),
            &[],
            &finals(&rows(&[("9.00000009", 1, 2, 1)])),
        );
        assert!(!r.books.unexpected.is_empty(), "{}", r.render());
        // Money lost: the balances do not follow the ledger (a lost update), in a read
        // and at the end.
        let mut lost = good.clone();
        let a2 = lost
            .iter_mut()
            .find(|kv| kv.key == account_key(2).as_bytes())
            .unwrap();
        a2.value = INITIAL_BALANCE.to_string().into_bytes();
        let r = check(&ts, &BTreeSet::new(), &[read(30, &lost)], &finals(&lost));
        assert!(!r.books.bad_reads.is_empty(), "{}", r.render());
        assert!(r.books.balances.len() >= 2, "{}", r.render());
        assert!(r.render().contains("KV BANK BALANCES"), "{}", r.render());
        // A committed transfer missing at the end; a member that differs.
        let r = check(&ts, &BTreeSet::new(), &[], &finals(&rows(&[])));
        assert_eq!(r.books.lost.len(), 1, "{}", r.render());
        let r = check(
            &ts,
            &BTreeSet::new(),
            &[],
            &[
                (1, Ok(books_from(&good, 9).unwrap())),
                (2, Ok(books_from(&lost, 9).unwrap())),
            ],
        );
        assert_eq!(r.books.divergence.len(), 1, "{}", r.render());
        // A malformed read.
        let r = check(
            &ts,
            &BTreeSet::new(),
            &[KvRead {
                how: ReadHow::Txn,
                call: 30,
                ret: 31,
                seen: KvSeen::Malformed("cut".into()),
            }],
            &finals(&good),
        );
        assert_eq!(r.books.bad_reads.len(), 1, "{}", r.render());
    }
}
