//! The three client protocols a nemesis worker may speak — gRPC (the Rust client), HTTP
//! (`/v1/kv`) and RESP (the Redis protocol) — behind one small interface, and how each
//! protocol's answers map to an operation's outcome.
//!
//! A worker is bound to one protocol for the whole run ([`ProtoClient`]). Every write ends
//! in one of three ways, which the history records as `Ok`, `Fail` or `Info`:
//!
//! - an answer (`Ok`): a value, a write acknowledged, a compare-and-swap that swapped or
//!   not (HTTP 409 `compare_failed` is a "not swapped" answer, not an error);
//! - a refusal that certainly did nothing ([`OpError::Refused`] → `Fail`): gRPC
//!   `UNAVAILABLE` / `RESOURCE_EXHAUSTED` / `INVALID_ARGUMENT` as the Rust client reports
//!   them, HTTP 503 `unavailable`, 429 `overloaded`, 4xx input errors, RESP `-TRYAGAIN`,
//!   `-BUSY`, `-ERR max number of clients reached` and input errors; a connection that
//!   could not be opened sent nothing;
//! - anything else after the request may have left ([`OpError::Unknown`] → `Info`): a
//!   timeout, a connection closed or reset before the answer, HTTP 503 `outcome_unknown`,
//!   RESP `-ERR outcome unknown`, an internal error.
//!
//! Refusals are retried (on the next node, with a short backoff) until the operation's
//! timeout; only when every attempt was a refusal is the write `Fail`. HTTP writes carry
//! a session (`X-Paxosdb-Client-Id`, `X-Paxosdb-Seq`), so an attempt whose outcome is
//! unknown is retried with the same session, which the cluster applies at most once and
//! answers with the original result; the write is `Info` only if no attempt got an
//! answer. RESP has no way to name a session across connections (each connection is its
//! own session), so a RESP write whose outcome is unknown ends there as `Info`.
//!
//! The SQL bank workers ([`super::bank`]) use the same HTTP client for rqlite's
//! `POST /db/execute?transaction` (a write, in the session the worker names, with the
//! write's retry rules above) and `POST /db/query?level=...` (a read, on any node or on
//! one node only for a stale read).
//!
//! HTTP compare-and-swap compares versions (`?cas=V`), not values; the workload records it
//! as a compare on the value read together with `V`. The two are the same test because
//! every value in a run is written by one write only (values are unique), and each write
//! gets its own version.
//!
//! Invariants:
//! - a write is `Fail` only when no attempt may have reached a node that could apply it;
//! - connections are reused (one per node at a time) and dropped after any error, and a
//!   connection the server has closed (a killed node's) is noticed before it is reused,
//!   so a restart of a node does not turn the next write into an unknown outcome.

use crate::api::resp::frame::{self, Frame, FrameError, FrameLimits};
use crate::client::{CasExpect, Client};
use crate::error::Error;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A client protocol of the nemesis workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Protocol {
    Grpc,
    Http,
    Resp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Grpc, Protocol::Http, Protocol::Resp];

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::Http => "http",
            Protocol::Resp => "resp",
        }
    }
}

/// Parses `--protocols`: a comma-separated list of `grpc`, `http`, `resp`, or `all`.
pub fn parse_protocols(spec: &str) -> Result<Vec<Protocol>, String> {
    let mut out = Vec::new();
    for word in spec.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        let add: Vec<Protocol> = match word {
            "all" => Protocol::ALL.to_vec(),
            _ => match Protocol::ALL.into_iter().find(|p| p.name() == word) {
                Some(p) => vec![p],
                None => return Err(format!("unknown protocol {word:?} (grpc, http, resp, all)")),
            },
        };
        for p in add {
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    if out.is_empty() {
        return Err("no protocol given (grpc, http, resp, all)".into());
    }
    Ok(out)
}

/// A node's client addresses, one per protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeAddrs {
    pub grpc: String,
    pub http: String,
    pub resp: String,
}

impl NodeAddrs {
    pub fn of(&self, p: Protocol) -> &str {
        match p {
            Protocol::Grpc => &self.grpc,
            Protocol::Http => &self.http,
            Protocol::Resp => &self.resp,
        }
    }
}

/// A value read with its version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read {
    pub value: Vec<u8>,
    /// 0 when the protocol does not report it (RESP `GET`).
    pub version: u64,
}

/// Why an operation got no answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpError {
    /// Certainly did nothing.
    Refused(String),
    /// May have taken effect.
    Unknown(String),
}

/// Timeouts of one worker's operations.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// All attempts of one operation together.
    pub op: Duration,
    /// One attempt (HTTP; RESP uses `op`, as it cannot retry an unknown write).
    pub attempt: Duration,
}

/// One worker's client, of one protocol.
pub enum ProtoClient {
    Grpc(Client),
    Http(HttpClient),
    Resp(RespClient),
}

impl ProtoClient {
    /// A client of protocol `p` for `nodes`, starting at the `rotate`-th.
    pub fn new(
        p: Protocol,
        nodes: &[NodeAddrs],
        rotate: usize,
        timeouts: Timeouts,
        stale: bool,
    ) -> crate::error::Result<ProtoClient> {
        let mut addrs: Vec<String> = nodes.iter().map(|n| n.of(p).to_string()).collect();
        let n = addrs.len().max(1);
        addrs.rotate_left(rotate % n);
        if stale {
            // A stale-read run (the checker's own test) pins each worker to one node: a
            // real client moves on at once from a node cut off from the majority, and
            // the stale reads such a run exists to produce would leave with it.
            addrs.truncate(1);
        }
        Ok(match p {
            Protocol::Grpc => ProtoClient::Grpc(Client::with_options(
                &addrs,
                crate::client::ClientOptions {
                    timeout: timeouts.op,
                    attempt_timeout: timeouts.attempt,
                    tls: None,
                },
            )?),
            Protocol::Http => ProtoClient::Http(HttpClient::new(addrs, timeouts, stale)),
            Protocol::Resp => ProtoClient::Resp(RespClient::new(addrs, timeouts, stale)),
        })
    }

    pub fn protocol(&self) -> Protocol {
        match self {
            ProtoClient::Grpc(_) => Protocol::Grpc,
            ProtoClient::Http(_) => Protocol::Http,
            ProtoClient::Resp(_) => Protocol::Resp,
        }
    }

    /// Reads `key` (linearizable unless `stale`).
    pub async fn get(&mut self, key: &[u8], stale: bool) -> Result<Option<Read>, OpError> {
        match self {
            ProtoClient::Grpc(c) => match c.get(key, stale).await {
                Ok((v, _)) => Ok(v.map(|v| Read {
                    value: v.value,
                    version: v.version,
                })),
                Err(e) => Err(grpc_error(e)),
            },
            ProtoClient::Http(c) => c.get(key).await,
            ProtoClient::Resp(c) => c.get(key).await,
        }
    }

    pub async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), OpError> {
        match self {
            ProtoClient::Grpc(c) => c
                .put(key, value, false)
                .await
                .map(|_| ())
                .map_err(grpc_error),
            ProtoClient::Http(c) => c.put(key, value, None).await.map(|_| ()),
            ProtoClient::Resp(c) => c.put(key, value).await,
        }
    }

    /// Stores `new` if the key still holds `expect` (for HTTP: still has its version).
    pub async fn cas(&mut self, key: &[u8], expect: &Read, new: &[u8]) -> Result<bool, OpError> {
        match self {
            ProtoClient::Grpc(c) => c
                .cas(key, CasExpect::Value(expect.value.clone()), new)
                .await
                .map(|r| r.succeeded)
                .map_err(grpc_error),
            ProtoClient::Http(c) => c.put(key, new, Some(expect.version)).await,
            ProtoClient::Resp(c) => c.cas(key, &expect.value, new).await,
        }
    }

    /// Starts a new session (after an unknown outcome: the old one may still be in
    /// flight). The gRPC client takes a fresh session for every write already.
    pub fn new_session(&mut self) {
        if let ProtoClient::Http(c) = self {
            c.client_id = rand::random::<u64>().max(1);
            c.seq = 0;
        }
    }
}

/// The Rust client's errors: a refusal (`Unavailable`, `Overloaded`, `InvalidInput`)
/// certainly did nothing; anything else may have.
pub fn grpc_error(e: Error) -> OpError {
    match e {
        Error::Unavailable(_) | Error::Overloaded(_) => OpError::Refused(e.to_string()),
        e if e.is_invalid_request() => OpError::Refused(e.to_string()),
        _ => OpError::Unknown(e.to_string()),
    }
}

/// A connection that the server closed (or that has unexpected bytes waiting) is not
/// reused.
fn still_open(s: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(s.try_read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// How one attempt over a connection ended without a response.
enum Attempt {
    /// The connection could not be opened: nothing was sent.
    NotSent(String),
    /// The request may have been sent: timeout, reset, closed, garbled answer.
    Lost(String),
}

/// Opens a connection to `addr` within `timeout`.
async fn connect(addr: &str, timeout: Duration) -> Result<TcpStream, Attempt> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(Attempt::NotSent(format!("connect {addr}: {e}"))),
        Err(_) => Err(Attempt::NotSent(format!("connect {addr}: timed out"))),
    }
}

/// A minimal HTTP/1.1 client of `/v1/kv` (keep-alive, one request at a time).
pub struct HttpClient {
    addrs: Vec<String>,
    conns: Vec<Option<TcpStream>>,
    preferred: usize,
    timeouts: Timeouts,
    stale: bool,
    client_id: u64,
    seq: u64,
}

/// An HTTP response: status, body, and the applied index a read reports
/// (`X-Paxosdb-Applied-Index`).
struct HttpResponse {
    status: u16,
    body: Vec<u8>,
    applied: Option<u64>,
}

impl HttpResponse {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// `error.code` of an error body ("" if none).
    fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    fn describe(&self) -> String {
        format!(
            "HTTP {} {}",
            self.status,
            String::from_utf8_lossy(&self.body[..self.body.len().min(300)])
        )
    }
}

/// `key` %-encoded for a path (keeps unreserved characters and `/`).
fn path_key(key: &[u8]) -> String {
    let mut s = String::new();
    for &b in key {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

impl HttpClient {
    /// A client of `addrs` (HTTP listeners), starting at the first; `stale` makes its
    /// key-value reads local.
    pub fn new(addrs: Vec<String>, timeouts: Timeouts, stale: bool) -> HttpClient {
        HttpClient {
            conns: addrs.iter().map(|_| None).collect(),
            addrs,
            preferred: 0,
            timeouts,
            stale,
            client_id: rand::random::<u64>().max(1),
            seq: 0,
        }
    }

    /// One request to node `idx` over its kept-alive connection (opened if needed).
    async fn attempt(
        &mut self,
        idx: usize,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: &[u8],
        timeout: Duration,
    ) -> Result<HttpResponse, Attempt> {
        let addr = self.addrs[idx].clone();
        let reuse = self.conns[idx].take().filter(still_open);
        let mut s = match reuse {
            Some(s) => s,
            None => connect(&addr, timeout).await?,
        };
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (n, v) in headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let mut wire = head.into_bytes();
        wire.extend_from_slice(body);
        let exchange = async {
            s.write_all(&wire).await?;
            read_http_response(&mut s).await
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok((resp, keep))) => {
                if keep {
                    self.conns[idx] = Some(s);
                }
                Ok(resp)
            }
            Ok(Err(e)) => Err(Attempt::Lost(format!("{addr}: {e}"))),
            Err(_) => Err(Attempt::Lost(format!(
                "{addr}: no answer within {timeout:?}"
            ))),
        }
    }

    async fn get(&mut self, key: &[u8]) -> Result<Option<Read>, OpError> {
        let path = format!(
            "/v1/kv/{}{}",
            path_key(key),
            if self.stale { "?consistency=stale" } else { "" }
        );
        let not_found = |r: &HttpResponse| r.status == 404 && r.code() == "not_found";
        let (_, r) = self.send_read("GET", &path, b"", None, not_found).await?;
        if r.status == 404 {
            return Ok(None);
        }
        parse_read(&r).map(Some).map_err(OpError::Unknown)
    }

    /// Sends a read until an answer (200, or what `answer` accepts) or the operation's
    /// timeout, on node `pinned` only or rotating over the nodes; returns the node that
    /// answered and its answer. 503 and 429 are retried, as are lost attempts (a read
    /// changes nothing); any other status ends it. Every failure is `Unknown` (the caller
    /// records a failed read as unanswered).
    async fn send_read(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
        pinned: Option<usize>,
        answer: impl Fn(&HttpResponse) -> bool,
    ) -> Result<(usize, HttpResponse), OpError> {
        let deadline = Instant::now() + self.timeouts.op;
        let mut idx = pinned.unwrap_or(self.preferred);
        let first = idx;
        let mut last: String;
        let mut backoff = Duration::from_millis(10);
        let headers: Vec<(&str, String)> = if body.is_empty() {
            Vec::new()
        } else {
            vec![("Content-Type", "application/json".to_string())]
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let timeout = self
                .timeouts
                .attempt
                .min(left)
                .max(Duration::from_millis(50));
            match self
                .attempt(idx, method, path, &headers, body, timeout)
                .await
            {
                Ok(r) if r.status == 200 || answer(&r) => {
                    if pinned.is_none() {
                        self.preferred = idx;
                    }
                    return Ok((idx, r));
                }
                Ok(r) if r.status == 503 || r.status == 429 => last = r.describe(),
                Ok(r) => return Err(OpError::Unknown(r.describe())),
                Err(Attempt::NotSent(m) | Attempt::Lost(m)) => last = m,
            }
            if Instant::now() >= deadline {
                return Err(OpError::Unknown(last));
            }
            if pinned.is_none() {
                idx = (idx + 1) % self.addrs.len();
            }
            if idx == first {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(300));
            }
        }
    }

    /// Sends a write in the session of `headers` until an answer (200, or what `answer`
    /// accepts) or the operation's timeout, retrying with the same session on the next
    /// node after a refusal (503 `unavailable`, 429, a connection not opened) or a lost
    /// attempt (503 `outcome_unknown`, a timeout, a dropped connection): the cluster
    /// applies the session's write at most once and answers a retry with its result.
    /// Without an answer the write is `Unknown` if some attempt may have reached a node,
    /// else `Refused`; a 4xx after an ambiguous attempt says nothing about that attempt,
    /// so it is `Unknown` too.
    async fn send_write(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: &[u8],
        answer: impl Fn(&HttpResponse) -> bool,
    ) -> Result<HttpResponse, OpError> {
        let deadline = Instant::now() + self.timeouts.op;
        let mut idx = self.preferred;
        // Some attempt may have reached a node that applies it.
        let mut ambiguous: Option<String> = None;
        let mut last = String::from("no attempt answered");
        let mut backoff = Duration::from_millis(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let timeout = self
                .timeouts
                .attempt
                .min(left)
                .max(Duration::from_millis(50));
            match self
                .attempt(idx, method, path, headers, body, timeout)
                .await
            {
                // An answer: with the same session, the answer of the write itself.
                Ok(r) if r.status == 200 || answer(&r) => {
                    self.preferred = idx;
                    return Ok(r);
                }
                Ok(r) if r.status == 503 && r.code() == "outcome_unknown" => {
                    ambiguous = Some(r.describe())
                }
                Ok(r) if r.status == 503 || r.status == 429 => last = r.describe(),
                Ok(r) if (400..500).contains(&r.status) => {
                    return Err(match ambiguous {
                        None => OpError::Refused(r.describe()),
                        Some(a) => OpError::Unknown(format!("{a}; then {}", r.describe())),
                    })
                }
                Ok(r) => return Err(OpError::Unknown(r.describe())),
                Err(Attempt::NotSent(m)) => last = m,
                Err(Attempt::Lost(m)) => ambiguous = Some(m),
            }
            if Instant::now() >= deadline {
                return Err(match ambiguous {
                    Some(a) => OpError::Unknown(a),
                    None => OpError::Refused(last),
                });
            }
            idx = (idx + 1) % self.addrs.len();
            if idx == self.preferred {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(300));
            }
        }
    }

    /// PUT `value`; with `cas`, only if the key's version is `cas` (0: absent). Returns
    /// whether it was stored (false: the condition did not hold).
    async fn put(&mut self, key: &[u8], value: &[u8], cas: Option<u64>) -> Result<bool, OpError> {
        self.seq += 1;
        let path = match cas {
            Some(v) => format!("/v1/kv/{}?cas={v}", path_key(key)),
            None => format!("/v1/kv/{}", path_key(key)),
        };
        let headers = [
            ("X-Paxosdb-Client-Id", self.client_id.to_string()),
            ("X-Paxosdb-Seq", self.seq.to_string()),
        ];
        let compare_failed =
            |r: &HttpResponse| r.status == 409 && cas.is_some() && r.code() == "compare_failed";
        let r = self
            .send_write("PUT", &path, &headers, value, compare_failed)
            .await?;
        Ok(r.status == 200)
    }

    /// `POST /db/execute?transaction` of the JSON statements `body` in the session
    /// (`client_id`, `seq`), retried with that session until an answer or the timeout
    /// (see [`HttpClient::send_write`]). Returns the answer's `results`.
    pub async fn sql_execute(
        &mut self,
        body: &[u8],
        client_id: u64,
        seq: u64,
    ) -> Result<Vec<serde_json::Value>, OpError> {
        let headers = [
            ("Content-Type", "application/json".to_string()),
            ("X-Paxosdb-Client-Id", client_id.to_string()),
            ("X-Paxosdb-Seq", seq.to_string()),
        ];
        let r = self
            .send_write("POST", "/db/execute?transaction", &headers, body, |_| false)
            .await?;
        sql_results(&r).map_err(OpError::Unknown)
    }

    /// `POST /db/query?level=<level>` of the JSON statements `body`, on node `pinned`
    /// only (a stale read of that node) or on any node. Returns the `results` and the
    /// applied index the answer reports.
    pub async fn sql_query(
        &mut self,
        body: &[u8],
        level: &str,
        pinned: Option<usize>,
    ) -> Result<(Vec<serde_json::Value>, Option<u64>), OpError> {
        let path = format!("/db/query?level={level}");
        let (_, r) = self
            .send_read("POST", &path, body, pinned, |_| false)
            .await?;
        let applied = r.applied;
        Ok((sql_results(&r).map_err(OpError::Unknown)?, applied))
    }

    /// How many nodes this client knows.
    pub fn nodes(&self) -> usize {
        self.addrs.len()
    }
}

/// The `results` array of an rqlite-shaped answer.
fn sql_results(r: &HttpResponse) -> Result<Vec<serde_json::Value>, String> {
    match r.json()["results"].as_array() {
        Some(a) => Ok(a.clone()),
        None => Err(format!("no results in {}", r.describe())),
    }
}

/// The value and version of a `GET /v1/kv/{key}` answer.
fn parse_read(r: &HttpResponse) -> Result<Read, String> {
    let j = r.json();
    let value = if let Some(v) = j["value"].as_str() {
        v.as_bytes().to_vec()
    } else if let Some(b) = j["value_base64"].as_str() {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(b)
            .map_err(|e| format!("bad value_base64: {e}"))?
    } else {
        return Err(format!("no value in {}", r.describe()));
    };
    let version = j["version"]
        .as_u64()
        .ok_or_else(|| format!("no version in {}", r.describe()))?;
    Ok(Read { value, version })
}

/// Reads one response; returns it and whether the connection may be reused.
/// Appends what `s` has next to `buf`; the end of the stream is an error (`eof`).
async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>, eof: &str) -> std::io::Result<()> {
    let mut chunk = [0u8; 8192];
    let n = s.read(&mut chunk).await?;
    if n == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            eof.to_string(),
        ));
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

async fn read_http_response(s: &mut TcpStream) -> std::io::Result<(HttpResponse, bool)> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut buf = Vec::with_capacity(1024);
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        if buf.len() > 64 * 1024 {
            return Err(bad("response head too long"));
        }
        read_more(s, &mut buf, "connection closed before the answer").await?;
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| bad("response head not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let mut length = None;
    let mut applied = None;
    let mut keep = true;
    for l in lines {
        if let Some((n, v)) = l.split_once(':') {
            let (n, v) = (n.trim().to_ascii_lowercase(), v.trim());
            if n == "content-length" {
                length = Some(v.parse::<usize>().map_err(|_| bad("bad content-length"))?);
            } else if n == "connection" && v.eq_ignore_ascii_case("close") {
                keep = false;
            } else if n == "x-paxosdb-applied-index" {
                applied = v.parse::<u64>().ok();
            } else if n == "transfer-encoding" {
                return Err(bad("transfer-encoding is not supported here"));
            }
        }
    }
    let mut body = buf[end + 4..].to_vec();
    match length {
        Some(len) => {
            if len > 16 << 20 {
                return Err(bad("response body too large"));
            }
            while body.len() < len {
                let mut chunk = vec![0u8; (len - body.len()).min(64 * 1024)];
                let n = s.read(&mut chunk).await?;
                if n == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "connection closed in the body",
                    ));
                }
                body.extend_from_slice(&chunk[..n]);
            }
            body.truncate(len);
        }
        None => {
            s.read_to_end(&mut body).await?;
            keep = false;
        }
    }
    Ok((
        HttpResponse {
            status,
            body,
            applied,
        },
        keep,
    ))
}

/// A minimal RESP2 client: one connection at a time, one command at a time.
pub struct RespClient {
    addrs: Vec<String>,
    /// The open connection: node index, stream, bytes read and not yet parsed.
    conn: Option<(usize, TcpStream, Vec<u8>)>,
    preferred: usize,
    timeouts: Timeouts,
    stale: bool,
}

/// How a RESP error reply is to be taken.
fn resp_error(m: &str) -> OpError {
    let kind = m.split(' ').next().unwrap_or("");
    if kind == "TRYAGAIN" || kind == "BUSY" || m.starts_with("ERR max number of clients") {
        OpError::Refused(m.to_string())
    } else if kind == "ERR"
        && !m.starts_with("ERR outcome unknown")
        && !m.starts_with("ERR internal")
    {
        // Input errors: nothing changed.
        OpError::Refused(m.to_string())
    } else {
        OpError::Unknown(m.to_string())
    }
}

impl RespClient {
    pub fn new(addrs: Vec<String>, timeouts: Timeouts, stale: bool) -> RespClient {
        RespClient {
            addrs,
            conn: None,
            preferred: 0,
            timeouts,
            stale,
        }
    }

    /// Sends one command on the open connection and reads its reply.
    async fn exchange(
        s: &mut TcpStream,
        buf: &mut Vec<u8>,
        args: &[&[u8]],
    ) -> std::io::Result<Frame> {
        let req = Frame::Array(args.iter().map(|a| Frame::Bulk(a.to_vec())).collect());
        s.write_all(&req.to_bytes(false)).await?;
        let limits = FrameLimits::default();
        loop {
            match frame::parse(buf, &limits) {
                Ok((f, used)) => {
                    buf.drain(..used);
                    return Ok(f);
                }
                Err(FrameError::Incomplete) => {}
                Err(FrameError::Protocol(m)) => {
                    return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, m))
                }
            }
            read_more(s, buf, "connection closed before the reply").await?;
        }
    }

    /// Runs one command. A refusal is retried on the next node until the timeout; a
    /// write that may have been sent and got no clear answer ends as unknown (a RESP
    /// retry would be a new write). Reads are retried after any error.
    async fn call(&mut self, args: &[&[u8]], write: bool) -> Result<Frame, OpError> {
        let deadline = Instant::now() + self.timeouts.op;
        let mut idx = self.conn.as_ref().map_or(self.preferred, |c| c.0);
        let mut last: String;
        let mut backoff = Duration::from_millis(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let timeout = left.max(Duration::from_millis(50));
            let open = match self.conn.take() {
                Some(c) if c.0 == idx && still_open(&c.1) => Ok(c),
                _ => match connect(&self.addrs[idx], timeout).await {
                    Ok(mut s) => {
                        let mut buf = Vec::new();
                        if self.stale {
                            // Local reads on this connection (deliberately unsafe).
                            match tokio::time::timeout(
                                timeout,
                                Self::exchange(&mut s, &mut buf, &[b"READONLY"]),
                            )
                            .await
                            {
                                Ok(Ok(Frame::Simple(_))) => Ok((idx, s, buf)),
                                _ => Err(format!("{}: READONLY failed", self.addrs[idx])),
                            }
                        } else {
                            Ok((idx, s, buf))
                        }
                    }
                    Err(Attempt::NotSent(m) | Attempt::Lost(m)) => Err(m),
                },
            };
            match open {
                Ok((i, mut s, mut buf)) => {
                    match tokio::time::timeout(timeout, Self::exchange(&mut s, &mut buf, args))
                        .await
                    {
                        Ok(Ok(Frame::Error(m))) => {
                            self.conn = Some((i, s, buf));
                            match resp_error(&m) {
                                OpError::Refused(m)
                                    if !m.starts_with("ERR") || m.contains("max number") =>
                                {
                                    last = m
                                }
                                e => return Err(e),
                            }
                        }
                        Ok(Ok(f)) => {
                            self.preferred = i;
                            self.conn = Some((i, s, buf));
                            return Ok(f);
                        }
                        Ok(Err(e)) if write => {
                            return Err(OpError::Unknown(format!("{}: {e}", self.addrs[i])))
                        }
                        Err(_) if write => {
                            return Err(OpError::Unknown(format!(
                                "{}: no reply within {timeout:?}",
                                self.addrs[i]
                            )))
                        }
                        Ok(Err(e)) => last = format!("{}: {e}", self.addrs[i]),
                        Err(_) => last = format!("{}: no reply", self.addrs[i]),
                    }
                }
                Err(m) => last = m,
            }
            if Instant::now() >= deadline {
                return Err(if write {
                    OpError::Refused(last)
                } else {
                    OpError::Unknown(last)
                });
            }
            idx = (idx + 1) % self.addrs.len();
            if idx == self.preferred {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(300));
            }
        }
    }

    /// `EVAL script numkeys keys... args...`: a write (its reply, or how it failed).
    pub async fn eval(
        &mut self,
        script: &[u8],
        keys: &[&[u8]],
        args: &[&[u8]],
    ) -> Result<Frame, OpError> {
        let n = keys.len().to_string();
        let mut words: Vec<&[u8]> = vec![b"EVAL", script, n.as_bytes()];
        words.extend_from_slice(keys);
        words.extend_from_slice(args);
        self.call(&words, true).await
    }

    async fn get(&mut self, key: &[u8]) -> Result<Option<Read>, OpError> {
        match self.call(&[b"GET", key], false).await? {
            Frame::Bulk(v) => Ok(Some(Read {
                value: v,
                version: 0,
            })),
            Frame::Null => Ok(None),
            f => Err(OpError::Unknown(format!("unexpected reply to GET: {f:?}"))),
        }
    }

    async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), OpError> {
        match self.call(&[b"SET", key, value], true).await? {
            Frame::Simple(s) if s == "OK" => Ok(()),
            f => Err(OpError::Unknown(format!("unexpected reply to SET: {f:?}"))),
        }
    }

    async fn cas(&mut self, key: &[u8], expect: &[u8], new: &[u8]) -> Result<bool, OpError> {
        match self.call(&[b"CAS", key, expect, new], true).await? {
            Frame::Integer(1) => Ok(true),
            Frame::Integer(0) => Ok(false),
            f => Err(OpError::Unknown(format!("unexpected reply to CAS: {f:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp_errors_map_to_refused_or_unknown() {
        for m in [
            "TRYAGAIN no leader",
            "BUSY too many bytes in flight",
            "ERR max number of clients reached",
            "ERR value over the limit",
        ] {
            assert!(matches!(resp_error(m), OpError::Refused(_)), "{m}");
        }
        for m in [
            "ERR outcome unknown: timed out; the command may or may not have been applied",
            "ERR internal: storage error",
            "WEIRD something",
        ] {
            assert!(matches!(resp_error(m), OpError::Unknown(_)), "{m}");
        }
    }

    #[test]
    fn grpc_errors_map_to_refused_or_unknown() {
        assert!(matches!(
            grpc_error(Error::Overloaded("x".into())),
            OpError::Refused(_)
        ));
        assert!(matches!(
            grpc_error(Error::Unavailable("x".into())),
            OpError::Refused(_)
        ));
        assert!(matches!(
            grpc_error(Error::OutcomeUnknown("x".into())),
            OpError::Unknown(_)
        ));
        assert!(matches!(
            grpc_error(Error::Internal("x".into())),
            OpError::Unknown(_)
        ));
    }

    #[test]
    fn protocols_parse() {
        assert_eq!(parse_protocols("all").unwrap(), Protocol::ALL.to_vec());
        assert_eq!(
            parse_protocols("resp,http,resp").unwrap(),
            vec![Protocol::Resp, Protocol::Http]
        );
        assert!(parse_protocols("gopher").is_err());
        assert!(parse_protocols("").is_err());
    }

    #[test]
    fn keys_are_escaped_in_paths() {
        assert_eq!(path_key(b"r/0/1"), "r/0/1");
        assert_eq!(path_key(b"a b?%"), "a%20b%3F%25");
    }
}
