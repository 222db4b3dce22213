//! A paxosdb node inside your own program: start it with one call and a data directory,
//! then read and write through typed, in-process handles for key-value data ([`Kv`]) and
//! SQL ([`Sql`]) — no network round trip between your code and the node.
//!
//! # A single node
//!
//! [`Node::start`] opens (or creates) a database in a directory and starts a node that is
//! the only member of its configuration: a single-node database. It is not a special
//! mode: the same replicated log, state machines (RocksDB for key-value data, SQLite for
//! SQL) and on-disk format as every cluster member, and a write is acknowledged once it is
//! fsynced. Start it again on the same directory and everything acknowledged is there.
//!
//! ```no_run
//! use paxosdb::embed::Node;
//! use paxosdb::sql::Value;
//!
//! # async fn run() -> paxosdb::Result<()> {
//! let node = Node::start("my-data").await?;
//!
//! // Key-value: put, linearizable get, compare-and-swap, scan, delete.
//! let kv = node.kv();
//! kv.put(b"greeting", b"hello").await?;
//! assert_eq!(kv.get(b"greeting").await?.unwrap().value, b"hello");
//!
//! // SQL: statements go through the log; queries read after a read barrier.
//! let sql = node.sql();
//! sql.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, name TEXT)", ()).await?;
//! sql.execute("INSERT INTO t (name) VALUES (?)", ["ada"]).await?;
//! let rows = sql.query("SELECT name FROM t", ()).await?;
//! assert_eq!(rows.rows[0][0], Value::Text("ada".into()));
//!
//! node.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! The node needs a Tokio runtime (the one your program already runs: `#[tokio::main]`).
//! By default it opens no client port an outsider could use: its gRPC listener is on an
//! ephemeral loopback port, HTTP and the Redis protocol are off, and its peer listener,
//! unused while it is alone, is on an ephemeral loopback port too. [`Builder`] turns any
//! of them on (`grpc_addr`, `http_addr`, `resp_addr`), for example so that `paxosdb sql`,
//! `redis-cli` or curl can look at the same data while your program runs.
//!
//! # Growing into a cluster
//!
//! A node that will have peers needs a peer address the others can reach, the same after
//! every restart: [`Builder::peer_addr`]. New nodes start empty with [`Builder::join`]
//! (the peer address of a member), wait, and are added by a member with
//! [`Node::add_member`]; they then copy the database and follow the log. Shrinking is
//! [`Node::remove_member`]. This is exactly what `paxosdb server --join` and `paxosdb
//! cluster add-node` do for separate processes — and the two mix: an embedded node and
//! `paxosdb server` processes can be members of one cluster.
//!
//! ```no_run
//! use paxosdb::embed::Node;
//!
//! # async fn run() -> paxosdb::Result<()> {
//! let first = Node::builder("data-1").peer_addr("127.0.0.1:7101").start().await?;
//! let second = Node::builder("data-2")
//!     .id(2)
//!     .peer_addr("127.0.0.1:7102")
//!     .join("127.0.0.1:7101")
//!     .start_joining(); // waits until it is added: run it concurrently
//! let (added, second) = tokio::join!(first.add_member(2, "127.0.0.1:7102"), second);
//! added?;
//! let second = second?;
//! // Both members now hold the same data; each serves reads and writes.
//! # Ok(())
//! # }
//! ```
//!
//! A fixed set of members can also start together ([`Builder::members`], each node with
//! the whole list, as `paxosdb server --peers` does): see `examples/three_nodes_sql.rs`.
//!
//! # Reads, writes and errors
//!
//! Writes (key-value puts, deletes, compare-and-swaps; SQL `execute`) are ordered by the
//! log and answered once applied on this node. Each runs in a session (client id,
//! sequence number) from a small pool: a write that meets a retryable error (no leader
//! yet, overload, an unknown outcome) is sent again in the *same* session until
//! [`Builder::timeout`], so it is applied at most once. If the outcome is still unknown
//! then, the error is [`Error::OutcomeUnknown`] — the write may or may not have happened —
//! never a plain failure.
//!
//! Reads are linearizable by default: they reflect every write acknowledged anywhere in
//! the cluster before the read began (a read barrier through the log). `Stale` reads
//! ([`Consistency::Stale`], [`ReadLevel::Stale`]) read this node's copy at once and report
//! the applied index they reflect.
//!
//! Watches: [`Kv::watch`] streams the changes of a key or a key range from a revision
//! on ([`Watch`]), read from the node's watch history as the gRPC `Watch` is. A watch is
//! served by a task of its own that feeds a small queue, so that [`Node::shutdown`] can
//! end it (the watch then answers `Unavailable`) and release the database even while the
//! caller holds it.
//!
//! Leases (etcd's model, as over gRPC): [`Kv::lease_grant`], [`Kv::lease_keep_alive`],
//! [`Kv::lease_revoke`], [`Kv::lease_time_to_live`], [`Kv::leases`], [`Kv::put_with_lease`]
//! and [`Kv::keep_alive_forever`] (a task that renews a lease until its
//! [`KeepAliveHandle`] is dropped). Grants, keep-alives and revokes are writes, retried in
//! their session like a put.
//!
//! A SQL statement that fails (a syntax error, a constraint) is [`Error::InvalidInput`]
//! with SQLite's message, and changed nothing; for several statements in one request,
//! [`Sql::execute_request`] returns each statement's result or error, as the HTTP API does.
//!
//! # Invariants
//!
//! - Every read and write goes through the node's own paths — [`NodeHandle`] for key-value
//!   data and the node's [`SqlService`] for SQL — the very ones its gRPC, HTTP and Redis
//!   listeners call, so an embedded caller gets exactly the guarantees a remote one gets
//!   (it just skips the socket).
//! - A write is retried only in its own session, so it is applied at most once; a session
//!   goes back to the pool only after its write has an answer, and the next write in it
//!   takes the next sequence number.
//! - Nothing here is a special single-node path: one member is an ordinary configuration.
//! - [`Node::shutdown`] returns after the node thread has stopped and the data directory
//!   is released: handles still held (watches too) answer `Unavailable` from then on and
//!   hold nothing of the node, so the same directory can be opened again at once.
//!   Dropping a [`Node`] without it asks the node to stop but does not wait.
//! - A [`Watch`] holds at most [`WATCH_QUEUE`] batches it has not handed out; its task
//!   ends, freeing the watcher's place, when the watch is dropped or the node shuts down.

use crate::client::lease::{lease_id, lease_ttl_ms};
use crate::client::{
    CasExpect, CasResult, DeleteResult, KeepAliveHandle, LeaseInfo, LeaseTimeToLive, PutResult,
    ScanResult,
};
use crate::command::{Expect, ScanRange, Versioned};
use crate::config::{parse_peers, Config, Member};
use crate::error::{Error, Result};
use crate::kv::handle::{KvHandle, Writer};
use crate::kv::{Change, WatchFilter, Watcher};
use crate::machine::NodeId;
use crate::membership::Membership;
use crate::node::{NodeHandle, NodeStatus};
use crate::server::RunningServer;
use crate::sql::{Params, Request, SqlService, SqlSession, Statement, StatementResult};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use crate::node::Consistency;
pub use crate::sql::{ReadLevel, Value};

/// How long a read or write is retried while its error is retryable, by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// Most idle sessions a node keeps for reuse (more concurrent writers get new ones).
const SESSION_POOL: usize = 64;

/// How to start a node: its data directory, identity, members and listeners. Made by
/// [`Node::builder`]; everything not set has the single-node default.
pub struct Builder {
    data_dir: PathBuf,
    id: NodeId,
    peer_addr: Option<String>,
    members: Option<String>,
    join: Option<String>,
    grpc_addr: String,
    http_addr: Option<String>,
    resp_addr: Option<String>,
    timeout: Duration,
    configure: Vec<ConfigChange>,
}

/// A change to the node's configuration, made by [`Builder::configure`].
type ConfigChange = Box<dyn FnOnce(&mut Config) + Send>;

impl Builder {
    fn new(data_dir: impl AsRef<Path>) -> Builder {
        Builder {
            data_dir: data_dir.as_ref().to_path_buf(),
            id: 1,
            peer_addr: None,
            members: None,
            join: None,
            grpc_addr: "127.0.0.1:0".into(),
            http_addr: None,
            resp_addr: None,
            timeout: DEFAULT_TIMEOUT,
            configure: Vec::new(),
        }
    }

    /// This node's id (default 1); unique in the cluster, never reused.
    pub fn id(mut self, id: NodeId) -> Builder {
        self.id = id;
        self
    }

    /// The address peers reach this node at (host:port). Default: an ephemeral loopback
    /// port, which is enough alone; a node that has or will have peers needs a fixed one.
    pub fn peer_addr(mut self, addr: impl Into<String>) -> Builder {
        self.peer_addr = Some(addr.into());
        self
    }

    /// The members of a new cluster that starts together, `1=host:port,2=host:port,...`
    /// (the format of `paxosdb server --peers`), this node included. Default: this node
    /// alone.
    pub fn members(mut self, members: impl Into<String>) -> Builder {
        self.members = Some(members.into());
        self
    }

    /// Join a running cluster through a member's peer address: the node starts with an
    /// empty data directory and waits until a member adds it ([`Node::add_member`] or
    /// `paxosdb cluster add-node`), then copies the database.
    pub fn join(mut self, member_peer_addr: impl Into<String>) -> Builder {
        self.join = Some(member_peer_addr.into());
        self
    }

    /// Serve the gRPC API (what the `paxosdb` CLI and the Rust client speak) on this
    /// address. Default: an ephemeral loopback port.
    pub fn grpc_addr(mut self, addr: impl Into<String>) -> Builder {
        self.grpc_addr = addr.into();
        self
    }

    /// Serve HTTP (`/v1/kv`, the rqlite-compatible `/db/*`, `/metrics`) on this address.
    /// Default: off.
    pub fn http_addr(mut self, addr: impl Into<String>) -> Builder {
        self.http_addr = Some(addr.into());
        self
    }

    /// Serve the Redis protocol on this address. Default: off.
    pub fn resp_addr(mut self, addr: impl Into<String>) -> Builder {
        self.resp_addr = Some(addr.into());
        self
    }

    /// How long the handles retry a read or write whose error is retryable (default
    /// [`DEFAULT_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Builder {
        self.timeout = timeout;
        self
    }

    /// Changes any other setting of the node's [`Config`] (limits, compaction, TLS,
    /// timing), after the builder's own.
    pub fn configure(mut self, f: impl FnOnce(&mut Config) + Send + 'static) -> Builder {
        self.configure.push(Box::new(f));
        self
    }

    /// The node's configuration, checked.
    pub fn config(self) -> Result<Config> {
        let own = self
            .peer_addr
            .clone()
            .unwrap_or_else(|| "127.0.0.1:0".into());
        let peers: Vec<Member> = match &self.members {
            Some(list) => parse_peers(list)?,
            None => vec![Member {
                id: self.id,
                addr: own.clone(),
            }],
        };
        if let (Some(addr), Some(m)) = (&self.peer_addr, peers.iter().find(|m| m.id == self.id)) {
            if &m.addr != addr {
                return Err(Error::Config(format!(
                    "peer address {addr} of node {} differs from its entry in the members \
                     ({})",
                    self.id, m.addr
                )));
            }
        }
        let mut cfg = Config::new(self.id, peers, self.grpc_addr, self.data_dir);
        cfg.http_addr = Some(self.http_addr.unwrap_or_else(|| "off".into()));
        cfg.resp_addr = Some(self.resp_addr.unwrap_or_else(|| "off".into()));
        cfg.join = self.join;
        for f in self.configure {
            f(&mut cfg);
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Starts the node and returns once it serves. A joining node ([`Builder::join`])
    /// returns only once it was added and copied the cluster's state: start it with
    /// [`Builder::start_joining`] beside the `add_member` call.
    pub async fn start(self) -> Result<Node> {
        let timeout = self.timeout;
        let cfg = self.config()?;
        let server = crate::server::start(cfg).await?;
        Ok(Node::new(server, timeout))
    }

    /// [`Builder::start`] as a spawned task, for a joining node that waits to be added.
    pub fn start_joining(self) -> impl Future<Output = Result<Node>> {
        let task = tokio::spawn(self.start());
        async move {
            task.await
                .map_err(|e| Error::Internal(format!("starting the node: {e}")))?
        }
    }
}

/// A running node in this process. Cloneable handles ([`Node::kv`], [`Node::sql`]) read
/// and write through it; [`Node::shutdown`] stops it.
pub struct Node {
    server: Option<RunningServer>,
    live: Arc<Live>,
    kv: Kv,
    sql: Sql,
}

impl Node {
    /// Starts a single-node database in `data_dir` (created if missing; an existing one
    /// is opened with everything it holds). See [`Node::builder`] for anything else.
    pub async fn start(data_dir: impl AsRef<Path>) -> Result<Node> {
        Node::builder(data_dir).start().await
    }

    /// A builder for a node in `data_dir`: members, ports, joining, settings.
    pub fn builder(data_dir: impl AsRef<Path>) -> Builder {
        Builder::new(data_dir)
    }

    fn new(server: RunningServer, timeout: Duration) -> Node {
        let retry = Retry { timeout };
        let live = Arc::new(Live {
            kv: Some(server.kv.clone()).into(),
            sql: server.info.sql.clone().into(),
            stop: tokio::sync::watch::Sender::new(false),
        });
        Node {
            kv: Kv {
                live: live.clone(),
                sessions: Arc::new(Sessions::default()),
                retry,
            },
            sql: Sql {
                live: live.clone(),
                sessions: Arc::new(Sessions::default()),
                retry,
            },
            live,
            server: Some(server),
        }
    }

    fn server(&self) -> &RunningServer {
        self.server
            .as_ref()
            .expect("only shutdown takes the server")
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.server().info.config.id
    }

    /// Key-value reads and writes through this node.
    pub fn kv(&self) -> Kv {
        self.kv.clone()
    }

    /// SQL statements and queries through this node.
    pub fn sql(&self) -> Sql {
        self.sql.clone()
    }

    /// The node's protocol-neutral handle (what every listener calls), for what the typed
    /// handles do not offer.
    pub fn handle(&self) -> &NodeHandle {
        &self.server().handle
    }

    /// The node's listeners as bound, name → address: `grpc`, `peer`, and `http`, `resp`
    /// when on (an ephemeral port shows its number here).
    pub fn listeners(&self) -> &[(String, String)] {
        &self.server().info.listeners
    }

    /// The address of the listener `name` (`grpc`, `peer`, `http`, `resp`), if on.
    pub fn listener(&self, name: &str) -> Option<SocketAddr> {
        self.listeners()
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, a)| a.parse().ok())
    }

    /// The node's view of the cluster: role, leader, indexes, members.
    pub async fn status(&self) -> Result<NodeStatus> {
        self.handle().status().await
    }

    /// The membership in force as this node knows it.
    pub fn membership(&self) -> Membership {
        self.server()
            .info
            .membership
            .read()
            .expect("membership lock")
            .clone()
    }

    /// Waits until this node knows a leader of its configuration (and is not catching
    /// up), so that requests are served without waiting for an election.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<NodeStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.status().await?;
            if st.leader.is_some() && st.catching_up_from.is_none() {
                return Ok(st);
            }
            if Instant::now() >= deadline {
                return Err(Error::Unavailable(format!(
                    "node {} knows no leader after {timeout:?} (members: {})",
                    st.id,
                    st.membership.describe()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Adds member `id` with peer address `addr` (started with [`Builder::join`] or
    /// `paxosdb server --join`) in one configuration change; returns the new membership
    /// once this node applied it. Writes pause only for the switch.
    pub async fn add_member(&self, id: NodeId, addr: impl Into<String>) -> Result<Membership> {
        self.check_reachable()?;
        let member = Member {
            id,
            addr: addr.into(),
        };
        self.handle().change_membership(vec![member], vec![]).await
    }

    /// Removes member `id` (it stops serving) in one configuration change; returns the new
    /// membership once this node applied it.
    pub async fn remove_member(&self, id: NodeId) -> Result<Membership> {
        self.handle().change_membership(vec![], vec![id]).await
    }

    /// Peers must be able to reach this node at the address the membership records.
    fn check_reachable(&self) -> Result<()> {
        let own = self
            .server()
            .info
            .config
            .own_peer_addr()
            .unwrap_or_default();
        if own.ends_with(":0") {
            return Err(Error::Config(format!(
                "node {} was started without a fixed peer address (Builder::peer_addr), so \
                 no peer could reach it: restart it with one before adding members",
                self.id()
            )));
        }
        Ok(())
    }

    /// Stops the listeners and the node thread and releases the data directory; returns
    /// once all of that is done. Handles still held then answer `Unavailable`.
    pub async fn shutdown(mut self) {
        self.live.close();
        // Every watch's task has ended (and dropped its watcher) once no receiver of the
        // stop signal is left.
        self.live.stop.closed().await;
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.live.close();
        if let Some(server) = &self.server {
            // Without `shutdown().await` nobody waits; at least the node thread stops.
            server.handle.shutdown();
        }
    }
}

/// What the handles reach the node through, until [`Node::shutdown`] takes it away (so
/// that handles still held then release the database and answer `Unavailable`).
struct Live {
    kv: std::sync::RwLock<Option<KvHandle>>,
    sql: std::sync::RwLock<Option<Arc<dyn SqlService>>>,
    /// True once the node is shutting down: every watch's task holds a receiver, and ends
    /// when this turns true (see [`Watch`]).
    stop: tokio::sync::watch::Sender<bool>,
}

fn shut_down() -> Error {
    Error::Unavailable("the embedded node was shut down".into())
}

impl Live {
    fn kv(&self) -> Result<KvHandle> {
        self.kv.read().expect("live").clone().ok_or_else(shut_down)
    }

    fn sql(&self) -> Result<Arc<dyn SqlService>> {
        self.sql.read().expect("live").clone().ok_or_else(shut_down)
    }

    fn close(&self) {
        self.kv.write().expect("live").take();
        self.sql.write().expect("live").take();
        self.stop.send_replace(true);
    }
}

/// Idle write sessions, each at the next sequence number to use.
#[derive(Default)]
struct Sessions(Mutex<Vec<SqlSession>>);

impl Sessions {
    fn take(&self) -> SqlSession {
        self.0
            .lock()
            .expect("sessions")
            .pop()
            .unwrap_or(SqlSession {
                // 53 bits: the id is also stored by SQLite and shown in JSON.
                client_id: (rand::random::<u64>() >> 11).max(1),
                seq: 1,
            })
    }

    /// Gives a session back after its write at `s.seq` has an answer (any answer: the
    /// next write must not reuse that sequence number).
    fn give_back(&self, s: SqlSession) {
        let mut pool = self.0.lock().expect("sessions");
        if pool.len() < SESSION_POOL {
            pool.push(SqlSession {
                seq: s.seq + 1,
                ..s
            });
        }
    }
}

/// Retries a retryable error with backoff until a deadline.
#[derive(Clone, Copy)]
struct Retry {
    timeout: Duration,
}

impl Retry {
    /// Runs `f` until it answers with anything but a retryable error, or the time is up.
    /// For a write (`write`), an earlier unknown outcome makes a later error unknown too.
    async fn run<T, F, Fut>(&self, write: bool, mut f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let deadline = Instant::now() + self.timeout;
        let mut backoff = Duration::from_millis(10);
        let mut ambiguous = false;
        loop {
            let err = match f().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let retry = err.is_retryable() && Instant::now() + backoff < deadline;
            if !retry {
                return Err(match err {
                    e @ Error::OutcomeUnknown(_) => e,
                    e if write && ambiguous => Error::OutcomeUnknown(format!(
                        "an earlier attempt's outcome is unknown; then: {e}"
                    )),
                    e => e,
                });
            }
            ambiguous |= matches!(err, Error::OutcomeUnknown(_));
            tracing::debug!("retrying: {err}");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }
}

/// Key-value reads and writes through one node (cheap to clone; clones share sessions).
#[derive(Clone)]
pub struct Kv {
    live: Arc<Live>,
    sessions: Arc<Sessions>,
    retry: Retry,
}

impl Kv {
    /// Runs one write in a pooled session, retried in that session.
    async fn write<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: Fn(KvHandle, Writer) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let kv = self.live.kv()?;
        let s = self.sessions.take();
        let by = Writer::new(None, s.client_id, s.seq);
        let res = self.retry.run(true, || op(kv.clone(), by.clone())).await;
        self.sessions.give_back(s);
        res
    }

    /// Stores `value` under `key`; returns the new version (and no previous value: see
    /// [`Kv::put_returning_prev`]).
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<PutResult> {
        self.put_with(key, value, false).await
    }

    /// Stores `value` under `key`; returns the new version and the previous value.
    pub async fn put_returning_prev(&self, key: &[u8], value: &[u8]) -> Result<PutResult> {
        self.put_with(key, value, true).await
    }

    async fn put_with(&self, key: &[u8], value: &[u8], return_prev: bool) -> Result<PutResult> {
        self.write(
            |kv, by| async move { kv.put(&by, key.to_vec(), value.to_vec(), return_prev).await },
        )
        .await
    }

    /// Removes `key`; says whether it existed and, with `return_prev`, its value.
    pub async fn delete(&self, key: &[u8], return_prev: bool) -> Result<DeleteResult> {
        self.write(|kv, by| async move { kv.delete(&by, key.to_vec(), return_prev).await })
            .await
    }

    /// Sets `key` to `new_value` if the comparison holds. A failed comparison is a value
    /// (`succeeded: false`, with the current value), not an error.
    pub async fn cas(&self, key: &[u8], expect: CasExpect, new_value: &[u8]) -> Result<CasResult> {
        let expect = match expect {
            CasExpect::Value(v) => Expect::Value(v),
            CasExpect::Version(v) => Expect::Version(v),
        };
        self.write(|kv, by| {
            let expect = expect.clone();
            async move { kv.cas(&by, key.to_vec(), expect, new_value.to_vec()).await }
        })
        .await
    }

    /// Runs `txn` atomically in one log entry: its comparisons, then its success or its
    /// failure operations (see [`crate::command::Txn`]).
    pub async fn txn(&self, txn: &crate::command::Txn) -> Result<crate::kv::handle::TxnResult> {
        self.write(|kv, by| async move { kv.txn(&by, txn.clone()).await })
            .await
    }

    /// Grants a lease of `ttl` (1 s to a year, else [`Error::InvalidInput`]); the cluster
    /// picks its id. Keys put with it ([`Kv::put_with_lease`]) are deleted when it ends:
    /// when it is revoked, or `ttl` after its last grant or keep-alive, by the log's time.
    pub async fn lease_grant(&self, ttl: Duration) -> Result<LeaseInfo> {
        self.lease_grant_with_id(0, ttl).await
    }

    /// [`Kv::lease_grant`] with the id chosen (0: the cluster picks it); an id that is
    /// live already is [`Error::InvalidInput`].
    pub async fn lease_grant_with_id(&self, id: u64, ttl: Duration) -> Result<LeaseInfo> {
        let ttl_ms = lease_ttl_ms(ttl)?;
        self.write(|kv, by| async move { kv.lease_grant(&by, id, ttl_ms).await })
            .await
    }

    /// Renews lease `id` for its whole time to live; `None` when it no longer exists
    /// (expired or revoked).
    pub async fn lease_keep_alive(&self, id: u64) -> Result<Option<LeaseInfo>> {
        let id = lease_id(id)?;
        self.write(|kv, by| async move { kv.lease_keep_alive(&by, id).await })
            .await
    }

    /// Ends lease `id` now, deleting its keys; whether it was live.
    pub async fn lease_revoke(&self, id: u64) -> Result<bool> {
        let id = lease_id(id)?;
        self.write(|kv, by| async move { kv.lease_revoke(&by, id).await })
            .await
    }

    /// Reads lease `id` linearizably (with `keys`, the keys attached to it, at most
    /// 1000); `None` when it does not exist.
    pub async fn lease_time_to_live(&self, id: u64, keys: bool) -> Result<Option<LeaseTimeToLive>> {
        self.lease_time_to_live_with(id, keys, Consistency::Linearizable)
            .await
    }

    /// [`Kv::lease_time_to_live`] at `consistency`.
    pub async fn lease_time_to_live_with(
        &self,
        id: u64,
        keys: bool,
        consistency: Consistency,
    ) -> Result<Option<LeaseTimeToLive>> {
        let id = lease_id(id)?;
        let kv = self.live.kv()?;
        let max_keys = if keys {
            crate::api::grpc::LEASE_KEYS_MAX
        } else {
            0
        };
        let found = self
            .retry
            .run(false, || kv.lease_time_to_live(id, max_keys, consistency))
            .await?;
        Ok(found.map(|(s, remaining_ms)| LeaseTimeToLive {
            info: s.info,
            remaining: Duration::from_millis(remaining_ms),
            keys: s.keys,
            more_keys: s.more_keys,
        }))
    }

    /// Every live lease, in id order (read page by page, each page linearizable).
    pub async fn leases(&self) -> Result<Vec<LeaseInfo>> {
        let kv = self.live.kv()?;
        let mut all = Vec::new();
        let mut from = 1;
        loop {
            let (page, more) = self
                .retry
                .run(false, || {
                    kv.leases(
                        from,
                        crate::node::DEFAULT_SCAN_LIMIT,
                        Consistency::Linearizable,
                    )
                })
                .await?;
            let next = page.last().and_then(|l| l.id.checked_add(1));
            all.extend(page);
            match next {
                Some(n) if more => from = n,
                _ => return Ok(all),
            }
        }
    }

    /// Stores `value` under `key` attached to lease `lease` (deleted when the lease ends);
    /// a lease that does not exist is [`Error::InvalidInput`], and nothing is written.
    pub async fn put_with_lease(&self, key: &[u8], value: &[u8], lease: u64) -> Result<PutResult> {
        let lease = lease_id(lease)?;
        self.write(|kv, by| async move {
            kv.put_leased(&by, key.to_vec(), value.to_vec(), lease, false)
                .await
        })
        .await
    }

    /// Keeps lease `id` alive from a task, renewing it at once and then every third of its
    /// time to live, until the returned handle is dropped or the lease is gone (see
    /// [`KeepAliveHandle`]). After [`Node::shutdown`] the renewals fail as unavailable and
    /// are retried until the handle is dropped.
    pub fn keep_alive_forever(&self, id: u64) -> KeepAliveHandle {
        let kv = self.clone();
        KeepAliveHandle::spawn(id, move || {
            let kv = kv.clone();
            async move { kv.lease_keep_alive(id).await }
        })
    }

    /// Reads `key` linearizably: the value every acknowledged write left.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Versioned>> {
        Ok(self.get_with(key, Consistency::Linearizable).await?.0)
    }

    /// Reads `key` at `consistency`; returns the value and the applied index it reflects.
    pub async fn get_with(
        &self,
        key: &[u8],
        consistency: Consistency,
    ) -> Result<(Option<Versioned>, u64)> {
        let kv = self.live.kv()?;
        self.retry.run(false, || kv.get(key, consistency)).await
    }

    /// Scans `range` in key order, at most `limit` rows (0: the default, 1000; at most
    /// 10000), at `consistency`. `more` says whether rows beyond the limit exist.
    pub async fn scan(
        &self,
        range: &ScanRange,
        limit: usize,
        consistency: Consistency,
    ) -> Result<ScanResult> {
        let kv = self.live.kv()?;
        self.retry
            .run(false, || kv.scan(range, limit, consistency))
            .await
    }

    /// Watches the keys `filter` matches from revision `from` on (`None`: from now, after
    /// every write acknowledged before the call): every change once, in revision order,
    /// whole revisions at a time (see [`Watch`]). [`Error::Compacted`] when the node's
    /// watch history no longer holds `from`; [`Error::Overloaded`] when the node serves
    /// its most watchers (`max_watchers`; not retried: a place frees only when a watch
    /// ends). No leader yet is retried until the timeout, as a read is.
    pub async fn watch(&self, filter: WatchFilter, from: Option<u64>) -> Result<Watch> {
        let kv = self.live.kv()?;
        let watcher = self
            .retry
            .run(false, || {
                let (kv, filter) = (&kv, filter.clone());
                async move {
                    match kv.watch(filter, from).await {
                        // Passed through, not retried.
                        Err(e @ Error::Overloaded(_)) => Ok(Err(e)),
                        r => r.map(Ok),
                    }
                }
            })
            .await??;
        drop(kv);
        let next = watcher.next_revision();
        let (tx, rx) = tokio::sync::mpsc::channel(WATCH_QUEUE);
        tokio::spawn(pump_watch(watcher, tx, self.live.stop.subscribe()));
        Ok(Watch {
            rx,
            next,
            done: false,
        })
    }
}

/// Batches a [`Watch`] holds ready at most.
pub const WATCH_QUEUE: usize = 4;

/// A batch of a watch's task: the changes and where the watcher is after them.
type Batch = Result<(Vec<Change>, u64)>;

/// A watch's task: reads `watcher` into `tx` until the watch is dropped, the watcher
/// fails (its error is the last item) or the node shuts down.
async fn pump_watch(
    mut watcher: Watcher,
    tx: tokio::sync::mpsc::Sender<Batch>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        // `Watcher::next` is cancel-safe.
        let item = tokio::select! {
            r = watcher.next() => r.map(|changes| (changes, watcher.next_revision())),
            _ = stop.wait_for(|stop| *stop) => return,
            () = tx.closed() => return,
        };
        let last = item.is_err();
        tokio::select! {
            sent = tx.send(item) => if sent.is_err() || last {
                return;
            },
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}

/// The changes of a watch on this node ([`Kv::watch`]), batch by batch: each batch is one
/// or more whole revisions, in order. A [`futures::Stream`] too. After an error (or once
/// the node shut down: `Unavailable`) it ends; [`Watch::next_revision`] says where to
/// watch again from to miss nothing.
#[derive(Debug)]
pub struct Watch {
    rx: tokio::sync::mpsc::Receiver<Batch>,
    next: u64,
    done: bool,
}

impl Watch {
    /// The next changes, waiting until there are some; `None` after an error ended the
    /// watch.
    pub async fn next(&mut self) -> Option<Result<Vec<Change>>> {
        std::future::poll_fn(|cx| self.poll_batch(cx)).await
    }

    /// The revision to watch again from to miss nothing: past every change handed out.
    pub fn next_revision(&self) -> u64 {
        self.next
    }

    fn poll_batch(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Vec<Change>>>> {
        use std::task::Poll;
        if self.done {
            return Poll::Ready(None);
        }
        let item = match self.rx.poll_recv(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(Ok((changes, next)))) => {
                self.next = next;
                return Poll::Ready(Some(Ok(changes)));
            }
            Poll::Ready(Some(Err(e))) => Err(e),
            // The task ended without an error: the node shut down.
            Poll::Ready(None) => Err(shut_down()),
        };
        self.done = true;
        Poll::Ready(Some(item))
    }
}

impl futures::Stream for Watch {
    type Item = Result<Vec<Change>>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.get_mut().poll_batch(cx)
    }
}

/// The rows of one query, and the applied log index they were read at.
#[derive(Clone, Debug, PartialEq)]
pub struct Rows {
    pub columns: Vec<String>,
    /// Declared column types (lower case; empty where SQLite has none).
    pub types: Vec<String>,
    pub rows: Vec<Vec<Value>>,
    pub applied_index: u64,
}

/// What one write statement did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Executed {
    /// SQLite's `last_insert_rowid()` after the statement (of the applying connection).
    pub last_insert_id: Option<i64>,
    pub rows_affected: u64,
}

/// SQL through one node (cheap to clone; clones share sessions).
#[derive(Clone)]
pub struct Sql {
    live: Arc<Live>,
    sessions: Arc<Sessions>,
    retry: Retry,
}

impl Sql {
    /// Runs one write statement (or DDL) through the log with its parameters: `()` for
    /// none, an array or `Vec` of values for `?` placeholders, or [`Params`] (named).
    /// A statement SQLite refuses is `Error::InvalidInput` with its message.
    pub async fn execute(&self, sql: &str, params: impl Into<Params>) -> Result<Executed> {
        let req = Request {
            statements: vec![Statement {
                sql: sql.to_string(),
                params: params.into(),
            }],
            transaction: false,
        };
        let r = one(self.execute_request(req).await?)?;
        Ok(Executed {
            last_insert_id: r.last_insert_id,
            rows_affected: r.rows_affected.unwrap_or(0),
        })
    }

    /// Runs a request (several statements; with `transaction`, all or nothing) through
    /// the log, applied at most once; one result per statement, each with its own error.
    pub async fn execute_request(&self, req: Request) -> Result<Vec<StatementResult>> {
        let service = self.live.sql()?;
        let s = self.sessions.take();
        let res = self
            .retry
            .run(true, || service.execute(req.clone(), Some(s), None))
            .await;
        self.sessions.give_back(s);
        res
    }

    /// Runs one read-only statement linearizably.
    pub async fn query(&self, sql: &str, params: impl Into<Params>) -> Result<Rows> {
        self.query_with(sql, params, ReadLevel::Linearizable).await
    }

    /// Runs one read-only statement at `level` (a statement that would write is
    /// `Error::InvalidInput`: it belongs in [`Sql::execute`]).
    pub async fn query_with(
        &self,
        sql: &str,
        params: impl Into<Params>,
        level: ReadLevel,
    ) -> Result<Rows> {
        let req = Request {
            statements: vec![Statement {
                sql: sql.to_string(),
                params: params.into(),
            }],
            transaction: false,
        };
        let out = self.query_request(req, level).await?;
        let r = one(out.results)?;
        Ok(Rows {
            columns: r.columns,
            types: r.types,
            rows: r.rows,
            applied_index: out.applied_index,
        })
    }

    /// Runs a request of read-only statements at `level`; one result per statement.
    pub async fn query_request(
        &self,
        req: Request,
        level: ReadLevel,
    ) -> Result<crate::sql::QueryOutput> {
        let service = self.live.sql()?;
        self.retry
            .run(false, || service.query(req.clone(), level))
            .await
    }
}

/// The only result of a one-statement request, its error as `InvalidInput`.
fn one(results: Vec<StatementResult>) -> Result<StatementResult> {
    let mut results = results.into_iter();
    match (results.next(), results.next()) {
        (Some(r), None) => match r.error {
            Some(e) => Err(Error::InvalidInput(e)),
            None => Ok(r),
        },
        _ => Err(Error::Internal(
            "a one-statement request did not give one result".into(),
        )),
    }
}

impl From<()> for Params {
    fn from(_: ()) -> Params {
        Params::None
    }
}

impl<V: Into<Value>> From<Vec<V>> for Params {
    fn from(v: Vec<V>) -> Params {
        Params::Positional(v.into_iter().map(Into::into).collect())
    }
}

impl<V: Into<Value>, const N: usize> From<[V; N]> for Params {
    fn from(v: [V; N]) -> Params {
        Params::Positional(v.into_iter().map(Into::into).collect())
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Integer(v)
    }
}

impl From<i32> for Value {
    fn from(v: i32) -> Value {
        Value::Integer(v.into())
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Real(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Text(v.to_string())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Text(v)
    }
}

impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Value {
        Value::Blob(v)
    }
}

impl<V: Into<Value>> From<Option<V>> for Value {
    fn from(v: Option<V>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}
