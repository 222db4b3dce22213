//! The Redis-protocol (RESP) server: `redis-cli`, `redis-benchmark` and Redis client
//! libraries talk to paxosdb through it.
//!
//! Layout (after mini-redis): [`frame`] parses and encodes RESP frames with limits,
//! [`connection`] buffers one client's bytes, [`parse`] and [`cmd`] turn a request into a
//! [`cmd::RespCommand`], and [`exec`] runs it against the typed [`KvHandle`] (above the
//! protocol-neutral [`NodeHandle`], which does all routing, replication and consistency).
//!
//! Each client connection is its own task and its own session: a random non-zero client id
//! with a sequence counter, so a retried write is applied at most once. Commands of one
//! connection run one at a time, in order, which keeps one write in flight per session and
//! pipelined replies in request order. Each data command is translated once ([`plan`])
//! into the reads and writes it makes, whether it runs alone or inside `EXEC`.
//!
//! Authentication (see [`crate::auth`]): once credentials are required, a connection runs
//! nothing but `AUTH`, `HELLO ... AUTH` and `QUIT` until it authenticated (`-NOAUTH`);
//! then every command runs as its user, re-read before each command, so a changed role or
//! a deleted user takes effect at once. `ACL WHOAMI | USERS | LIST | SETUSER | DELUSER`
//! manage users (all but WHOAMI need the admin role).
//!
//! Transactions (see [`txn`]): `MULTI` ... `EXEC` is one key-value transaction, one log
//! entry proposed as one write of the connection's session: all of it applies or none,
//! nothing interleaves with it, and `WATCH`ed keys are compared by version where it is
//! applied. A command refused while queueing answers its error and makes `EXEC` answer
//! `-EXECABORT` with nothing applied, as in Redis.
//!
//! A malformed or oversized request gets `-ERR Protocol error: ...` and its connection is
//! closed; other connections are unaffected. Nothing a client sends can panic the server.
//!
//! Connections: each takes a place in the node's connection limit (beyond it the client
//! gets `-ERR max number of clients reached` and is closed) and is closed once it has sent
//! nothing for the idle timeout (see [`crate::api::conn`]). With client TLS on, each
//! connection is a TLS session (`redis-cli --tls`); a plaintext client is answered
//! `-ERR this port requires TLS...` (see [`crate::api::tls`]).
//!
//! Shutdown: when the watch channel turns true the listener stops accepting, idle
//! connections close at once, busy ones after their current command (bounded wait).

pub mod cmd;
pub mod connection;
pub mod exec;
pub mod frame;
pub mod glob;
pub mod parse;
pub mod plan;
pub mod script;
pub mod txn;

use crate::kv::KvHandle;
use crate::node::NodeHandle;
use crate::server::ServerInfo;
use connection::Connection;
use frame::{Frame, FrameLimits};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How many SCAN cursors a node remembers (the oldest are forgotten first).
pub const MAX_CURSORS: usize = 16 * 1024;

/// SCAN cursors. Redis clients expect a cursor to be a decimal integer that fits in 64
/// bits (redis-py parses it with `int`, redis-cli with `strtoull`), but a position in
/// paxosdb is a key of up to 4 KiB, so the node keeps cursor → last key returned, for the
/// most recent [`MAX_CURSORS`] cursors. A cursor is valid on the node that issued it.
#[derive(Default)]
pub struct Cursors {
    keys: HashMap<u64, Vec<u8>>,
    order: VecDeque<u64>,
}

impl Cursors {
    /// Remembers `last_key` and returns a new cursor for it (non-zero, below 2^63).
    pub fn insert(&mut self, last_key: Vec<u8>) -> u64 {
        let id = loop {
            let id = (rand::random::<u64>() >> 1).max(1);
            if !self.keys.contains_key(&id) {
                break id;
            }
        };
        while self.order.len() >= MAX_CURSORS {
            if let Some(old) = self.order.pop_front() {
                self.keys.remove(&old);
            }
        }
        self.keys.insert(id, last_key);
        self.order.push_back(id);
        id
    }

    pub fn get(&self, id: u64) -> Option<Vec<u8>> {
        self.keys.get(&id).cloned()
    }
}

/// What every connection of one server shares.
pub struct Shared {
    pub node: NodeHandle,
    /// The typed key-value API over the same node.
    pub kv: KvHandle,
    pub info: Arc<ServerInfo>,
    pub limits: FrameLimits,
    /// Largest reply one request may build (`max_reply_bytes`).
    pub max_reply_bytes: usize,
    pub cursors: Mutex<Cursors>,
    pub next_conn_id: AtomicU64,
    pub clients: AtomicU64,
    /// Connections accepted since the start (`INFO stats`).
    pub connections_received: AtomicU64,
    pub port: u16,
    pub started: Instant,
    /// Scripts cached by `EVAL` and `SCRIPT LOAD`, for `EVALSHA`.
    pub scripts: Mutex<script::Scripts>,
    /// Places for scripts running at once ([`script::MAX_RUNNING`]).
    pub script_slots: tokio::sync::Semaphore,
}

/// Serves RESP on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    kv: KvHandle,
    info: Arc<ServerInfo>,
    mut shutdown: watch::Receiver<bool>,
) {
    let node = kv.node().clone();
    let limits = FrameLimits::for_max_value(node.limits().max_value);
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let shared = Arc::new(Shared {
        node,
        kv,
        max_reply_bytes: info.config.max_reply_bytes,
        info,
        limits,
        cursors: Mutex::new(Cursors::default()),
        next_conn_id: AtomicU64::new(1),
        clients: AtomicU64::new(0),
        connections_received: AtomicU64::new(0),
        port,
        started: Instant::now(),
        scripts: Mutex::new(script::Scripts::default()),
        script_slots: tokio::sync::Semaphore::new(script::MAX_RUNNING),
    });
    let mut conns = JoinSet::new();
    loop {
        if *shutdown.borrow() {
            break;
        }
        tokio::select! {
            r = shutdown.changed() => if r.is_err() { break },
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let Some(place) = shared.info.conns.admit(crate::api::tls::Protocol::Resp) else {
                        shared.info.conns.refuse(stream, crate::api::conn::REFUSED_RESP);
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    conns.spawn(handle(stream, place, shared.clone(), shutdown.clone()));
                }
                Err(e) => {
                    // Typically out of file descriptors: back off instead of spinning.
                    tracing::warn!("RESP accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    crate::api::conn::drain(conns, Duration::from_secs(3)).await;
}

/// Runs one client connection to its end.
async fn handle(
    stream: TcpStream,
    place: crate::api::conn::Place,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    // The TLS handshake, if client TLS is on.
    let Some(stream) = shared
        .info
        .conns
        .open(stream, crate::api::tls::Protocol::Resp)
        .await
    else {
        return;
    };
    shared.clients.fetch_add(1, Ordering::Relaxed);
    shared.connections_received.fetch_add(1, Ordering::Relaxed);
    let id = shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
    let mut session = exec::ConnState::new(id);
    // The guard times the connection out when it sends nothing, or reads nothing of its
    // replies, for the idle timeout (the same for every listener).
    let mut conn = Connection::new(shared.info.conns.guard(stream, place), shared.limits);
    run(&mut conn, &mut session, &shared, &mut shutdown).await;
    conn.close().await;
    shared.clients.fetch_sub(1, Ordering::Relaxed);
}

async fn run(
    conn: &mut Connection,
    session: &mut exec::ConnState,
    shared: &Shared,
    shutdown: &mut watch::Receiver<bool>,
) {
    loop {
        // Answer everything already buffered (a pipeline), in order, then write once.
        loop {
            match conn.next_request() {
                Ok(Some(words)) => {
                    // Counted in `/metrics` by command (an unknown one as `unknown`).
                    let op = words
                        .first()
                        .and_then(|w| cmd::lookup(&String::from_utf8_lossy(w)))
                        .map_or("unknown", |spec| spec.name);
                    let started = Instant::now();
                    let (reply, after) = session.run(shared, words).await;
                    let ok = !matches!(reply, Frame::Error(_));
                    (shared.info.metrics).observe_request("resp", op, started.elapsed(), ok);
                    conn.queue(reply, session.resp3);
                    if after == exec::After::Close {
                        return;
                    }
                    if conn.queued() >= connection::FLUSH_AT && conn.flush().await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(msg) => {
                    tracing::debug!(conn = session.id, "RESP protocol error: {msg}");
                    conn.queue(
                        Frame::error(format!("ERR Protocol error: {msg}")),
                        session.resp3,
                    );
                    return;
                }
            }
        }
        if conn.flush().await.is_err() || *shutdown.borrow() {
            return;
        }
        tokio::select! {
            // An error here includes the idle timeout (Redis' `timeout`, on by default).
            r = conn.fill() => match r {
                Ok(true) => {}
                Ok(false) | Err(_) => return,
            },
            _ = shutdown.changed() => return,
        }
    }
}
