//! Peer-to-peer TCP transport for OmniPaxos messages and node notes.
//!
//! Wire format: every frame is a 4-byte big-endian length followed by that many bytes of
//! bincode. The first frame on a connection is a [`Hello`] (magic, protocol version, sender
//! and receiver ids, the sender's listeners and pid, and the connection's [`Purpose`]).
//! On a replication connection every later frame is one [`PeerMsg`]: an OmniPaxos
//! `Message` or a node [`Note`]. Replication connections are one-way: each node dials
//! every peer and sends on that connection; it receives on the connections peers dialed.
//! A state-fetch connection is handed to [`crate::transfer`], which streams this node's
//! state back on it; a membership query gets one [`MembershipReply`] frame (this is how a
//! node that is joining learns when it was added).
//!
//! Who is a peer follows the membership in force ([`SharedMembership`], updated by the
//! node when a configuration change is applied): senders are started for new members and
//! stopped for removed ones, and only members may connect (for anything but a membership
//! query). OmniPaxos messages carry the sender's configuration id, so a node can tell a
//! peer that is still in an older configuration.
//!
//! Invariants:
//! - one sender task per peer owns that peer's outgoing connection; it reconnects with
//!   exponential backoff and tells the node `Reconnected(pid)` after every successful
//!   reconnect, so OmniPaxos can resynchronise;
//! - a frame that is oversized, undecodable, from an unknown node, or whose message claims
//!   another sender closes that connection and is logged; the node keeps running;
//! - a connection refused before its peer was admitted (TLS, hello, identity, membership,
//!   incarnation checks) is logged at most once per [`REFUSAL_LOG_EVERY`] for each stage
//!   it failed at (before TLS, in the handshake, at the hello), the next line counting
//!   the ones suppressed: whoever reaches the port cannot flood the log;
//! - sending never blocks the node: a full queue drops the message (OmniPaxos resends);
//!   queues are bounded in bytes (`max_peer_queue_bytes` per peer) as well as in messages;
//! - no frame over `max_frame` is ever written: a message that would be larger is not
//!   sent, and the node is told ([`Network::take_oversized`]) so it can make that peer
//!   catch up by a state transfer instead (a sync of a long log is the one message that can
//!   grow that large);
//! - received messages wait for the node thread in a byte budget shared by all peers
//!   (the inbox): a reader that would exceed it stops reading its socket until the node
//!   has handled earlier messages, so a flood from peers becomes TCP back-pressure, not
//!   memory;
//! - links stay FIFO (OmniPaxos relies on it): messages may be lost, never reordered —
//!   a sender uses one connection at a time, and once a peer has reconnected, the reader
//!   of its older connection delivers nothing more;
//! - a connected link is never quiet for long: a sender with nothing to send for
//!   [`ALIVE_EVERY`] sends an `Alive` frame, and a reader notes the time whenever bytes
//!   arrive ([`Network::last_heard`]), even in the middle of a long frame, and counts its
//!   peer as heard while it waits for room in the inbox. So a node knows whom it can reach even while its own thread, or its peer's,
//!   is busy with a long fsync (see `node::contact`); `Alive` frames never reach the node.

use crate::machine::{LogEntry, NodeId};
use crate::membership::Membership;
use crate::node::{Event, Network, Note};
use crate::transfer::States;
use bincode::Options;
use omnipaxos::messages::Message;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc as tmpsc;
use tokio::sync::Semaphore;

const MAGIC: u64 = 0x7061_786f_7364_6231; // "paxosdb1"
const PROTOCOL_VERSION: u32 = 10;
/// A sender with nothing to send for this long sends an `Alive` frame.
pub const ALIVE_EVERY: Duration = Duration::from_millis(20);
const QUEUE_PER_PEER: usize = 16 * 1024;
/// How long a peer may take for the TLS handshake, and again for its hello.
const HANDSHAKE: Duration = Duration::from_secs(5);
/// Peer connections that have not yet passed the handshake and the hello checks: beyond
/// this many, a new connection is closed at once (a connect flood must not use up the
/// file descriptors RocksDB needs).
const MAX_UNAUTHENTICATED: usize = 64;
/// At most one log line per this long about peer connections refused before admission
/// (failed TLS handshakes, plaintext on a TLS port, bad hellos, impostors).
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);
/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// Largest [`Hello`] frame accepted, in bytes.
pub const MAX_HELLO_FRAME: usize = 64 * 1024;

/// The first frame on every peer connection.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Hello {
    pub magic: u64,
    pub version: u32,
    pub from: NodeId,
    pub to: NodeId,
    /// The sender's listeners, name → address (e.g. "grpc" → "127.0.0.1:7001").
    pub listeners: Vec<(String, String)>,
    pub pid: u32,
    /// Random id of the sender's data directory, fixed when it was created. A node whose
    /// data directory was wiped comes back with a new one and is refused: it forgot what
    /// it promised and accepted, and letting it vote could lose acknowledged writes.
    pub incarnation: u64,
    pub purpose: Purpose,
}

/// What a peer connection is for.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum Purpose {
    /// A stream of [`PeerMsg`]s from the dialer.
    Replication,
    /// The dialer fetches this node's state (see [`crate::transfer`]).
    FetchState,
    /// The dialer asks for the membership in force (it may not be a member yet).
    Membership,
}

/// One frame on a replication connection.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PeerMsg {
    /// An OmniPaxos message of the sender's configuration `config`.
    Paxos {
        config: u32,
        msg: Message<LogEntry>,
    },
    Note(Note),
    /// Nothing to say: the link and the sender's transport are up (see [`ALIVE_EVERY`]).
    Alive,
}

/// The answer to a membership query.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MembershipReply {
    /// The node that answered.
    pub id: NodeId,
    pub membership: Membership,
}

/// The membership in force, shared by the node, the transport and status reports.
pub type SharedMembership = Arc<RwLock<Membership>>;

/// Checks a peer's data-directory incarnation (and records it the first time).
pub type IncarnationCheck = Arc<dyn Fn(NodeId, u64) -> Result<(), String> + Send + Sync>;

/// What this node knows of a peer, for status reports.
#[derive(Clone, Debug, Default)]
pub struct PeerInfo {
    pub listeners: Vec<(String, String)>,
    pub pid: u32,
    /// Our outgoing connection to it is up.
    pub connected: bool,
    /// Generation of its newest inbound connection. A reader whose connection is no
    /// longer the newest stops delivering: OmniPaxos assumes FIFO links, and messages
    /// still buffered on an old connection must not arrive after newer ones.
    pub inbound_generation: Arc<std::sync::atomic::AtomicU64>,
    /// When a frame last arrived from it, on any of its connections.
    pub heard: Arc<Heard>,
}

/// When a peer was last heard from: stamped by its readers, read by the node at its ticks.
#[derive(Debug, Default)]
pub struct Heard {
    /// Nanoseconds after [`epoch`] of the last frame read; 0: never.
    last: AtomicU64,
    /// Readers of this peer waiting for room in the inbox: the peer has more to say, and
    /// only this node's backlog holds it up.
    waiting: AtomicU64,
}

/// The origin of [`Heard`] stamps (the first time anyone asks).
fn epoch() -> std::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

impl Heard {
    fn stamp(&self) {
        let nanos = epoch().elapsed().as_nanos().max(1) as u64;
        self.last.fetch_max(nanos, Ordering::Release);
    }

    /// Counts a reader waiting for inbox room until the guard is dropped (also when the
    /// reader's task is cancelled mid-wait); stamps on the way out.
    fn while_waiting(&self) -> impl Drop + '_ {
        struct Waiting<'a>(&'a Heard);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.stamp();
                self.0.waiting.fetch_sub(1, Ordering::Release);
            }
        }
        self.waiting.fetch_add(1, Ordering::AcqRel);
        Waiting(self)
    }

    /// The last time the peer was heard from, as of `now`.
    fn at(&self, now: std::time::Instant) -> Option<std::time::Instant> {
        if self.waiting.load(Ordering::Acquire) > 0 {
            return Some(now);
        }
        match self.last.load(Ordering::Acquire) {
            0 => None,
            n => Some(epoch() + Duration::from_nanos(n)),
        }
    }
}

/// A reader that stamps its peer as heard whenever bytes arrive, so that a frame still
/// arriving (a catch-up of many megabytes) does not look like silence.
struct Stamping<'a, R> {
    inner: &'a mut R,
    heard: &'a Heard,
}

impl<R: AsyncRead + Unpin> AsyncRead for Stamping<'_, R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut *self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.heard.stamp();
        }
        polled
    }
}

/// Shared view of the peers, updated by the transport tasks.
pub type PeerTable = Arc<Mutex<BTreeMap<NodeId, PeerInfo>>>;

fn codec(limit: usize) -> impl Options {
    bincode::DefaultOptions::new().with_limit(limit as u64)
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    value: &T,
    limit: usize,
) -> std::io::Result<()> {
    let bytes = codec(limit)
        .serialize(value)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    w.write_all(&(bytes.len() as u32).to_be_bytes()).await?;
    w.write_all(&bytes).await
}

/// Reads one frame; an oversized or undecodable frame is an `InvalidData` error.
pub async fn read_frame<R: AsyncRead + Unpin, T: for<'de> Deserialize<'de>>(
    r: &mut R,
    limit: usize,
) -> std::io::Result<T> {
    read_frame_sized(r, limit).await.map(|(v, _)| v)
}

/// [`read_frame`], also returning the frame's length in bytes.
pub async fn read_frame_sized<R: AsyncRead + Unpin, T: for<'de> Deserialize<'de>>(
    r: &mut R,
    limit: usize,
) -> std::io::Result<(T, usize)> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the limit of {limit}"),
        ));
    }
    // Grow as bytes arrive instead of trusting the length prefix with an allocation.
    let mut buf = Vec::with_capacity(len.min(64 * 1024));
    let n = r.take(len as u64).read_to_end(&mut buf).await?;
    if n != len {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    codec(limit)
        .deserialize(&buf)
        .map(|v| (v, len))
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// A stream a peer connection can be read and written through.
pub trait PeerIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> PeerIo for T {}

/// A peer connection: TLS when the cluster has certificates, else plain TCP.
pub type PeerStream = Box<dyn PeerIo>;

/// Connects to the peer port at `addr` of node `to` (0: whichever member answers there),
/// from this node's peer IP, over TLS when `cfg` has it (checking that the node reached
/// is `to`, or a member of the cluster).
pub async fn dial(addr: &str, cfg: &TransportConfig, to: NodeId) -> std::io::Result<PeerStream> {
    let tcp = connect(addr, cfg.bind_ip).await?;
    let _ = tcp.set_nodelay(true);
    Ok(match &cfg.tls {
        Some(tls) => Box::new(
            tokio::time::timeout(HANDSHAKE, tls.connect(tcp, to))
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??,
        ),
        None => Box::new(tcp),
    })
}

/// Starts fetching a peer's state in the background (see [`crate::transfer::fetcher`]).
pub type Fetcher = Box<dyn Fn(NodeId) + Send>;

/// One peer's outgoing queue: messages with their encoded sizes, and the bytes queued.
#[derive(Clone)]
pub struct PeerQueue {
    tx: tmpsc::Sender<(PeerMsg, usize)>,
    bytes: Arc<AtomicU64>,
}

/// The sending half handed to the node: one queue per peer.
pub struct PeerSender {
    queues: Mutex<HashMap<NodeId, PeerQueue>>,
    fetcher: Option<Fetcher>,
    my_id: NodeId,
    membership: SharedMembership,
    max_frame: usize,
    max_queue_bytes: u64,
    /// Peers a message was too large to send to, since the node last asked.
    oversized: Mutex<Vec<NodeId>>,
    /// A proposal forward was dropped since the node last asked.
    forward_lost: std::sync::atomic::AtomicBool,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    /// Starts the sender task of a new peer.
    start: Box<dyn Fn(NodeId, String) -> PeerQueue + Send>,
    /// When each peer was last heard from.
    table: PeerTable,
}

impl PeerSender {
    fn me(&self) -> NodeId {
        self.my_id
    }

    /// Where [`Network::fetch_state`] goes.
    pub fn set_fetcher(&mut self, f: Fetcher) {
        self.fetcher = Some(f);
    }

    /// Counts dropped and oversized messages in `metrics` from now on, and shows it the
    /// bytes queued for each peer.
    pub fn set_metrics(&mut self, metrics: Arc<crate::metrics::Metrics>) {
        for (id, q) in self.queues.lock().unwrap().iter() {
            metrics.peer_queue(*id, q.bytes.clone());
        }
        self.metrics = Some(metrics);
    }

    fn enqueue(&self, to: NodeId, msg: PeerMsg) {
        use omnipaxos::messages::sequence_paxos::PaxosMsg;
        let forward = matches!(
            &msg,
            PeerMsg::Paxos { msg: Message::SequencePaxos(m), .. }
                if matches!(m.msg, PaxosMsg::ProposalForward(_))
        );
        let Some(q) = self.queues.lock().unwrap().get(&to).cloned() else {
            if forward {
                self.forward_lost.store(true, Ordering::SeqCst);
            }
            return;
        };
        // The encoded size, without encoding (a walk over lengths); over the frame limit
        // is an error here, never a frame that the peer would refuse.
        let size = match codec(self.max_frame).serialized_size(&msg) {
            Ok(n) => n as usize,
            Err(_) => {
                tracing::warn!(
                    peer = to,
                    limit = self.max_frame,
                    "a message for this peer is over the frame limit; not sent (the peer \
                     will catch up by a state transfer)"
                );
                if let Some(m) = &self.metrics {
                    m.peer_oversized.fetch_add(1, Ordering::Relaxed);
                }
                self.oversized.lock().unwrap().push(to);
                if forward {
                    self.forward_lost.store(true, Ordering::SeqCst);
                }
                return;
            }
        };
        // Full (in bytes or messages) or closed: drop; OmniPaxos resends on its timers,
        // notes are periodic.
        let queued = q.bytes.fetch_add(size as u64, Ordering::SeqCst);
        if (queued > 0 && queued + size as u64 > self.max_queue_bytes)
            || q.tx.try_send((msg, size)).is_err()
        {
            q.bytes.fetch_sub(size as u64, Ordering::SeqCst);
            if forward {
                self.forward_lost.store(true, Ordering::SeqCst);
            }
            if let Some(m) = &self.metrics {
                m.peer_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Network for PeerSender {
    fn send(&self, msg: Message<LogEntry>) {
        let config = self.membership.read().unwrap().config_id;
        self.enqueue(msg.get_receiver(), PeerMsg::Paxos { config, msg });
    }

    fn last_heard(&self, peer: NodeId, now: std::time::Instant) -> Option<std::time::Instant> {
        let heard = self.table.lock().unwrap().get(&peer)?.heard.clone();
        heard.at(now)
    }

    fn set_membership(&self, m: &Membership) {
        *self.membership.write().unwrap() = m.clone();
        let mut queues = self.queues.lock().unwrap();
        // Dropping a queue ends its sender task.
        queues.retain(|id, _| m.contains(*id));
        let me = self.me();
        for member in &m.members {
            if member.id != me && !queues.contains_key(&member.id) {
                tracing::info!(peer = member.id, addr = %member.addr, "new peer");
                let q = (self.start)(member.id, member.addr.clone());
                if let Some(metrics) = &self.metrics {
                    metrics.peer_queue(member.id, q.bytes.clone());
                }
                queues.insert(member.id, q);
            }
        }
        if let Some(metrics) = &self.metrics {
            metrics.retain_peer_queues(|id| queues.contains_key(&id));
        }
    }

    fn send_note(&self, to: NodeId, note: Note) {
        self.enqueue(to, PeerMsg::Note(note));
    }

    fn take_oversized(&self) -> Vec<NodeId> {
        std::mem::take(&mut *self.oversized.lock().unwrap())
    }

    fn take_forward_lost(&self) -> bool {
        self.forward_lost.swap(false, Ordering::SeqCst)
    }

    fn fetch_state(&self, from: NodeId) {
        match &self.fetcher {
            Some(f) => f(from),
            None => tracing::error!(from, "no state fetcher configured"),
        }
    }
}

/// Settings the transport needs.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    pub id: NodeId,
    pub listeners: Vec<(String, String)>,
    pub max_frame: usize,
    /// Most bytes queued for one peer, and received from all peers but not yet handled.
    pub max_queue_bytes: u64,
    /// Source address for outgoing peer connections: this node's peer IP, so that peers
    /// (and firewall rules in fault tests) see connections come from the node's address.
    pub bind_ip: Option<std::net::IpAddr>,
    /// This node's data-directory incarnation, sent in every hello.
    pub incarnation: u64,
    /// Mutual TLS for every peer connection (`None`: plain TCP, loopback or `--insecure`).
    pub tls: Option<Arc<crate::tls::PeerTls>>,
}

impl TransportConfig {
    /// The hello this node sends to `to`.
    pub fn hello(&self, to: NodeId, purpose: Purpose) -> Hello {
        Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            from: self.id,
            to,
            listeners: self.listeners.clone(),
            pid: std::process::id(),
            incarnation: self.incarnation,
            purpose,
        }
    }
}

/// Starts the sender task of every member but this node; returns the node-facing
/// sender. Must be called inside a Tokio runtime.
pub fn start_senders(
    cfg: &TransportConfig,
    events: mpsc::Sender<Event>,
    table: PeerTable,
    membership: SharedMembership,
) -> PeerSender {
    let rt = tokio::runtime::Handle::current();
    let tcfg = cfg.clone();
    let heard = table.clone();
    let start = move |pid: NodeId, addr: String| {
        let (tx, rx) = tmpsc::channel(QUEUE_PER_PEER);
        let bytes = Arc::new(AtomicU64::new(0));
        rt.spawn(sender_task(
            pid,
            addr,
            tcfg.clone(),
            Outbox {
                rx,
                bytes: bytes.clone(),
            },
            events.clone(),
            table.clone(),
            tcfg.max_frame,
        ));
        PeerQueue { tx, bytes }
    };
    let m = membership.read().unwrap().clone();
    let queues = m
        .members
        .iter()
        .filter(|p| p.id != cfg.id)
        .map(|p| (p.id, start(p.id, p.addr.clone())))
        .collect();
    PeerSender {
        queues: Mutex::new(queues),
        fetcher: None,
        my_id: cfg.id,
        membership,
        max_frame: cfg.max_frame,
        max_queue_bytes: cfg.max_queue_bytes,
        oversized: Mutex::new(Vec::new()),
        forward_lost: std::sync::atomic::AtomicBool::new(false),
        metrics: None,
        start: Box::new(start),
        table: heard,
    }
}

/// Connects to `addr`, from `bind_ip` when given.
pub async fn connect(addr: &str, bind_ip: Option<std::net::IpAddr>) -> std::io::Result<TcpStream> {
    let target = tokio::net::lookup_host(addr)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{addr} does not resolve")))?;
    let socket = if target.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    if let Some(ip) = bind_ip.filter(|ip| !ip.is_unspecified() && ip.is_ipv4() == target.is_ipv4())
    {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    socket.connect(target).await
}

/// The receiving end of a peer's queue, which gives back the bytes of what it takes.
struct Outbox {
    rx: tmpsc::Receiver<(PeerMsg, usize)>,
    bytes: Arc<AtomicU64>,
}

impl Outbox {
    fn took(&self, size: usize) {
        self.bytes.fetch_sub(size as u64, Ordering::SeqCst);
    }

    fn try_recv(&mut self) -> Option<PeerMsg> {
        let (msg, size) = self.rx.try_recv().ok()?;
        self.took(size);
        Some(msg)
    }

    async fn recv(&mut self) -> Option<PeerMsg> {
        let (msg, size) = self.rx.recv().await?;
        self.took(size);
        Some(msg)
    }
}

#[allow(clippy::too_many_arguments)]
async fn sender_task(
    pid: NodeId,
    addr: String,
    cfg: TransportConfig,
    mut rx: Outbox,
    events: mpsc::Sender<Event>,
    table: PeerTable,
    max_frame: usize,
) {
    let mut backoff = Duration::from_millis(20);
    let mut ever_connected = false;
    // A TLS refusal (wrong CA, wrong identity) is a setup problem worth a warning, but
    // not one every backoff round: at most every 30 s.
    let mut last_warning: Option<std::time::Instant> = None;
    // A connection the peer drops at once, again and again (a plaintext node dialing a
    // TLS peer port), must not write two lines per attempt: at most one of each per
    // period, counting the others.
    let connected_log = crate::ratelog::RateLimited::new(REFUSAL_LOG_EVERY);
    let lost_log = crate::ratelog::RateLimited::new(REFUSAL_LOG_EVERY);
    loop {
        let stream = match dial(&addr, &cfg, pid).await {
            Ok(s) => s,
            Err(e) => {
                let tls_refused = e.kind() == std::io::ErrorKind::InvalidData;
                if tls_refused
                    && last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(30))
                {
                    tracing::warn!(peer = pid, %addr, "TLS session to the peer refused: {e}");
                    last_warning = Some(std::time::Instant::now());
                } else {
                    tracing::debug!(peer = pid, %addr, "connect failed: {e}");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                // Keep the queue from filling with stale messages while the peer is away.
                while rx.try_recv().is_some() {}
                if rx.rx.is_closed() {
                    return;
                }
                continue;
            }
        };
        let mut w = BufWriter::new(stream);
        let hello = cfg.hello(pid, Purpose::Replication);
        if write_frame(&mut w, &hello, max_frame).await.is_err() || w.flush().await.is_err() {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
            continue;
        }
        backoff = Duration::from_millis(20);
        let connected_at = std::time::Instant::now();
        if let Some(suppressed) = connected_log.admit() {
            tracing::info!(
                peer = pid,
                %addr,
                "connected to peer ({suppressed} more reconnections since the last such line)"
            );
        }
        set_connected(&table, pid, true);
        if ever_connected && events.send(Event::Reconnected(pid)).is_err() {
            return;
        }
        ever_connected = true;
        loop {
            let msg = match tokio::time::timeout(ALIVE_EVERY, rx.recv()).await {
                Ok(Some(msg)) => msg,
                Ok(None) => return,
                Err(_) => PeerMsg::Alive,
            };
            let mut res = write_frame(&mut w, &msg, max_frame).await;
            while res.is_ok() {
                match rx.try_recv() {
                    Some(msg) => res = write_frame(&mut w, &msg, max_frame).await,
                    None => break,
                }
            }
            if let Err(e) = res.and(w.flush().await) {
                if let Some(suppressed) = lost_log.admit() {
                    // A plaintext node's hello on a TLS peer port is refused without a
                    // word (this side never reads); say what that usually means.
                    let hint =
                        if cfg.tls.is_none() && connected_at.elapsed() < Duration::from_secs(1) {
                            "; the peer closed the connection right after the hello: if it runs \
                         with --peer-tls-dir (mutual TLS), this node needs --peer-tls-dir too"
                        } else {
                            ""
                        };
                    tracing::warn!(
                        peer = pid,
                        "connection lost: {e}{hint} ({suppressed} more suppressed since the \
                         last such line; at most one per {}s)",
                        lost_log.every_secs()
                    );
                }
                break;
            }
        }
        set_connected(&table, pid, false);
    }
}

fn set_connected(table: &PeerTable, pid: NodeId, up: bool) {
    table.lock().unwrap().entry(pid).or_default().connected = up;
}

/// Accepts peer connections on `listener` and feeds their messages to the node.
pub async fn accept_loop(
    listener: TcpListener,
    cfg: TransportConfig,
    events: mpsc::Sender<Event>,
    table: PeerTable,
    check: IncarnationCheck,
    source: States,
    membership: SharedMembership,
) {
    let inbox = Arc::new(Semaphore::new(
        cfg.max_queue_bytes.min(Semaphore::MAX_PERMITS as u64) as usize,
    ));
    let unauthenticated = Arc::new(Semaphore::new(MAX_UNAUTHENTICATED));
    // Refusals before a peer proved who it is can be caused by anyone who reaches the
    // port, as often as they like: rate limited (see crate::ratelog), each stage on its
    // own so that one kind of refusal does not hide another.
    let refusals: Arc<[crate::ratelog::RateLimited; 3]> = Arc::new(std::array::from_fn(|_| {
        crate::ratelog::RateLimited::new(REFUSAL_LOG_EVERY)
    }));
    let cfg = Arc::new(cfg);
    // The connection tasks live in this set: when the accept loop is aborted (shutdown),
    // dropping the set aborts them too, so none keeps the node's database open.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let (stream, remote) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("peer accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(pending) = unauthenticated.clone().try_acquire_owned() else {
            tracing::debug!(%remote, "too many peer connections in their handshake; closed");
            continue;
        };
        let (cfg, events, table, check, source, membership, inbox, refusals) = (
            cfg.clone(),
            events.clone(),
            table.clone(),
            check.clone(),
            source.clone(),
            membership.clone(),
            inbox.clone(),
            refusals.clone(),
        );
        conns.spawn(async move {
            let peer = Peer {
                cfg: &cfg,
                events: &events,
                table: &table,
                check: &check,
                membership: &membership,
                inbox: &inbox,
            };
            let mut stage = Stage::Connected;
            match serve_peer(stream, peer, source, pending, &mut stage).await {
                Ok(()) => {}
                Err(e) if stage == Stage::Admitted => {
                    tracing::warn!(%remote, "peer connection closed: {e}")
                }
                Err(e) => {
                    let limit = &refusals[stage as usize];
                    if let Some(suppressed) = limit.admit() {
                        tracing::warn!(
                            %remote,
                            "peer connection closed before the peer was admitted: {e}; \
                             {suppressed} more suppressed since the last such line (at most \
                             one line per {}s)",
                            limit.every_secs()
                        );
                    }
                }
            }
        });
    }
}

/// What a connection task needs of the node.
struct Peer<'a> {
    cfg: &'a TransportConfig,
    events: &'a mpsc::Sender<Event>,
    table: &'a PeerTable,
    check: &'a IncarnationCheck,
    membership: &'a SharedMembership,
    /// Bytes of received messages the node thread has not handled yet.
    inbox: &'a Arc<Semaphore>,
}

/// How far an accepted peer connection got; an error before [`Stage::Admitted`] is a
/// refusal, logged rate limited per stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Nothing checked yet (a plaintext peer on a TLS port fails here).
    Connected = 0,
    /// In the TLS handshake (no certificate, another cluster's, expired).
    Handshake = 1,
    /// Reading and checking the hello (identity, membership, incarnation).
    Hello = 2,
    /// The peer proved who it is and passed every check.
    Admitted = 3,
}

/// Serves one accepted peer connection, recording in `stage` how far it got.
async fn serve_peer(
    stream: TcpStream,
    p: Peer<'_>,
    source: States,
    pending: tokio::sync::OwnedSemaphorePermit,
    stage: &mut Stage,
) -> Result<(), String> {
    let Peer {
        cfg,
        events,
        table,
        check,
        membership,
        inbox,
    } = p;
    let _ = stream.set_nodelay(true);
    // With TLS, nothing is read before the peer proved it holds a certificate of the
    // cluster; its identity is checked against the hello below.
    let (stream, cert): (PeerStream, _) = match &cfg.tls {
        Some(tls) => {
            let mut first = [0u8; 1];
            if let Ok(Ok(1)) = tokio::time::timeout(HANDSHAKE, stream.peek(&mut first)).await {
                if first[0] != TLS_HANDSHAKE_RECORD {
                    return Err(
                        "plaintext on the TLS peer port: does that node run without \
                         --peer-tls-dir?"
                            .to_string(),
                    );
                }
            }
            *stage = Stage::Handshake;
            let (s, cert) = tokio::time::timeout(HANDSHAKE, tls.accept(stream))
                .await
                .map_err(|_| "no TLS handshake within 5s".to_string())?
                .map_err(|e| format!("TLS handshake refused: {e}"))?;
            (Box::new(s), Some(cert))
        }
        None => {
            // A TLS ClientHello (a handshake record, version 3.x) can never start a valid
            // frame here (its length would be hundreds of megabytes): say what it is.
            let mut head = [0u8; 2];
            if let Ok(Ok(2)) = tokio::time::timeout(HANDSHAKE, stream.peek(&mut head)).await {
                if head == [TLS_HANDSHAKE_RECORD, 0x03] {
                    return Err(
                        "a TLS handshake on this plaintext peer port: that node runs \
                         with --peer-tls-dir; this one needs it too"
                            .to_string(),
                    );
                }
            }
            (Box::new(stream), None)
        }
    };
    *stage = Stage::Hello;
    let mut r = tokio::io::BufReader::new(stream);
    let hello: Hello =
        tokio::time::timeout(Duration::from_secs(5), read_frame(&mut r, MAX_HELLO_FRAME))
            .await
            .map_err(|_| "no hello within 5s".to_string())?
            .map_err(|e| format!("bad hello: {e}"))?;
    if hello.magic != MAGIC || hello.version != PROTOCOL_VERSION {
        return Err(format!(
            "not a paxosdb peer of protocol {PROTOCOL_VERSION} (magic {:#x}, version {})",
            hello.magic, hello.version
        ));
    }
    if let (Some(cert), true) = (&cert, hello.purpose != Purpose::Membership) {
        crate::tls::PeerTls::check_identity(cert, hello.from)
            .map_err(|e| format!("hello from node {}: {e}", hello.from))?;
    }
    if hello.purpose == Purpose::Membership {
        let reply = MembershipReply {
            id: cfg.id,
            membership: membership.read().unwrap().clone(),
        };
        let mut w = r.into_inner();
        write_frame(&mut w, &reply, MAX_HELLO_FRAME)
            .await
            .map_err(|e| e.to_string())?;
        return w.flush().await.map_err(|e| e.to_string());
    }
    if hello.to != cfg.id {
        return Err(format!(
            "peer {} wanted node {}, this is node {}",
            hello.from, hello.to, cfg.id
        ));
    }
    if hello.from == cfg.id || !membership.read().unwrap().contains(hello.from) {
        return Err(format!(
            "node {} is not a member of this cluster",
            hello.from
        ));
    }
    let from = hello.from;
    check(from, hello.incarnation)?;
    // Past the checks: this connection no longer counts as one in its handshake.
    drop(pending);
    *stage = Stage::Admitted;
    if hello.purpose == Purpose::FetchState {
        tracing::info!(
            peer = from,
            "sending this node's state to a peer that is behind"
        );
        return crate::transfer::serve(r.into_inner(), source, cfg.max_frame)
            .await
            .map_err(|e| format!("state transfer to node {from}: {e}"));
    }
    let (generation, mine, heard) = {
        let mut t = table.lock().unwrap();
        let info = t.entry(from).or_default();
        info.listeners = hello.listeners;
        info.pid = hello.pid;
        let g = info.inbound_generation.clone();
        let mine = g.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        (g, mine, info.heard.clone())
    };
    loop {
        let mut stamping = Stamping {
            inner: &mut r,
            heard: &heard,
        };
        let (msg, len): (PeerMsg, usize) =
            match read_frame_sized(&mut stamping, cfg.max_frame).await {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(format!("from node {from}: {e}")),
            };
        let event = match msg {
            PeerMsg::Alive => continue,
            PeerMsg::Paxos { config, msg } => {
                if msg.get_sender() != from || msg.get_receiver() != cfg.id {
                    return Err(format!(
                        "node {from} sent a message claiming {} → {}",
                        msg.get_sender(),
                        msg.get_receiver()
                    ));
                }
                Event::Peer { config, msg }
            }
            PeerMsg::Note(note) => Event::Note { from, note },
        };
        if generation.load(std::sync::atomic::Ordering::SeqCst) != mine {
            // A newer connection from this peer exists: drop the rest of this one.
            return Ok(());
        }
        // Wait for room in the inbox (back-pressure on this peer's socket meanwhile).
        let cost = len
            .max(64)
            .min(cfg.max_queue_bytes.min(Semaphore::MAX_PERMITS as u64) as usize)
            .min(u32::MAX as usize) as u32;
        let permit = {
            let _waiting = heard.while_waiting();
            inbox.clone().acquire_many_owned(cost).await
        };
        let Ok(permit) = permit else {
            return Ok(());
        };
        if events
            .send(Event::Held(Box::new(event), permit.into()))
            .is_err()
        {
            return Ok(());
        }
    }
}

/// Binds the peer listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Member;
    use crate::machine::{Command, Machine};
    use crate::metrics::Metrics;
    use omnipaxos::ballot_leader_election::Ballot;
    use omnipaxos::messages::sequence_paxos::{AcceptDecide, PaxosMessage, PaxosMsg};

    /// An AcceptDecide from 1 to 2 carrying `bytes` of value.
    fn accept(bytes: usize) -> Message<LogEntry> {
        let entry = LogEntry {
            proposer: 1,
            batch_id: 1,
            commands: vec![Command {
                client_id: 1,
                seq: 1,
                user: None,
                machine: Machine::Kv,
                payload: vec![0; bytes],
            }],
        };
        Message::SequencePaxos(PaxosMessage {
            from: 1,
            to: 2,
            msg: PaxosMsg::AcceptDecide(AcceptDecide {
                n: Ballot::default(),
                seq_num: Default::default(),
                decided_idx: 0,
                entries: vec![entry],
            }),
        })
    }

    /// Issue #8: a message over the frame limit is never written (the connection was
    /// treated as lost and the same message rebuilt forever); the node learns which peer
    /// it was for. A peer that does not read gets at most its byte budget queued.
    #[tokio::test]
    async fn oversized_messages_are_reported_and_queues_are_bounded_in_bytes() {
        // A peer that accepts connections but never reads them.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let members = vec![
            Member {
                id: 1,
                addr: "127.0.0.1:1".into(),
            },
            Member {
                id: 2,
                addr: silent.local_addr().unwrap().to_string(),
            },
        ];
        let cfg = TransportConfig {
            id: 1,
            listeners: vec![],
            max_frame: 64 * 1024,
            max_queue_bytes: 256 * 1024,
            bind_ip: None,
            incarnation: 1,
            tls: None,
        };
        let (events, _rx) = mpsc::channel();
        let membership = Arc::new(RwLock::new(Membership::initial(&members)));
        let mut net = start_senders(&cfg, events, PeerTable::default(), membership);
        let metrics = Metrics::new();
        net.set_metrics(metrics.clone());

        net.send(accept(100 * 1024));
        assert_eq!(net.take_oversized(), vec![2]);
        assert_eq!(net.take_oversized(), Vec::<NodeId>::new());
        assert_eq!(metrics.peer_oversized.load(Ordering::Relaxed), 1);

        // 40 KiB each: far more than the socket buffers and the 256 KiB budget hold.
        for _ in 0..2000 {
            net.send(accept(40 * 1024));
        }
        let queued = net.queues.lock().unwrap()[&2].bytes.load(Ordering::SeqCst);
        assert!(queued <= cfg.max_queue_bytes, "{queued} bytes queued");
        assert!(metrics.peer_dropped.load(Ordering::Relaxed) > 1000);
        assert!(net.take_oversized().is_empty());
    }
}

#[cfg(test)]
#[path = "transport_net_tests.rs"]
mod net_tests;
