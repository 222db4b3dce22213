//! Starting and stopping a complete node: data directory, RocksDB, storage, state
//! machine, node thread, peer transport and client listeners.
//!
//! Start-up order matters: the configuration is validated, the data directory locked and
//! checked to belong to this node id, and every listener bound *before* anything runs, so a
//! misconfigured node fails at once with one clear line. Every listener is described the
//! same way (name, address) and reported by `status` and to peers.

use crate::api::conn::{ConnLimiter, Guarded};
use crate::api::tls::{ClientStream, ListenerTls, Protocol};
use crate::api::{grpc, pb};
use crate::auth::Authenticator;
use crate::command::NodeId;
use crate::config::{resolve, Config};
use crate::error::{Error, Result};
use crate::kv::KvStore;
use crate::machine::Machines;
use crate::machine::StateMachine;
use crate::membership::Membership;
use crate::metrics::Metrics;
use crate::node::admission::Admission;
use crate::node::{Core, CoreConfig, NodeHandle};
use crate::sql::machine::SqlMachine;
use crate::sql::SqlStore;
use crate::storage::db::DataDir;
use crate::storage::meta::{Meta, MetaKey};
use crate::storage::reserve::{free_bytes, RESERVE_REACHED};
use crate::storage::rocks::RocksStorage;
use crate::transfer::States;
use crate::transport::{self, PeerTable, SharedMembership, TransportConfig};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Static facts about a running server, shared with the API services.
pub struct ServerInfo {
    pub config: Config,
    /// This node's listeners, name → address.
    pub listeners: Vec<(String, String)>,
    pub peers: PeerTable,
    /// Request, consensus and storage metrics, served by HTTP `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The node's RocksDB, for gauges measured at scrape time (the log's on-disk size).
    pub db: Arc<rocksdb::DB>,
    /// The membership in force (it changes with `paxosdb cluster add-node` and friends).
    pub membership: SharedMembership,
    /// The client connection limit and idle timeout, shared by every listener.
    pub conns: Arc<ConnLimiter>,
    /// Who a client request runs as (users and roles, see [`crate::auth`]).
    pub auth: Arc<Authenticator>,
    /// The SQL database the SQL APIs serve (`None`: this node serves no SQL).
    pub sql: Option<Arc<dyn crate::sql::SqlService>>,
    /// What a backup (and a state transfer) moves: every state machine of the node.
    pub states: States,
    /// Backups this node may still serve at once (each holds a view of every machine and
    /// a copy of the SQL database while it streams).
    pub backups: Arc<tokio::sync::Semaphore>,
}

/// Most backups a node serves at once.
pub const MAX_BACKUPS: usize = 2;

impl ServerInfo {
    /// Starts a backup of this node (see [`crate::backup::serve`]), or refuses it as
    /// overloaded when [`MAX_BACKUPS`] are under way. With a `protocol`, the backup is
    /// recorded in the metrics as that protocol's request once it ended (HTTP's layer
    /// records every request itself).
    pub fn backup(
        &self,
        node: crate::node::NodeHandle,
        protocol: Option<&'static str>,
    ) -> Result<tokio::sync::mpsc::Receiver<Result<Vec<u8>>>> {
        let permit = self.backups.clone().try_acquire_owned().map_err(|_| {
            Error::Overloaded(format!(
                "this node already serves {MAX_BACKUPS} backups; retry when one ended"
            ))
        })?;
        let (metrics, started) = (self.metrics.clone(), std::time::Instant::now());
        let done = move |ok| {
            drop(permit);
            if let Some(p) = protocol {
                metrics.observe_request(p, "backup", started.elapsed(), ok);
            }
        };
        Ok(crate::backup::serve(
            node,
            self.states.clone(),
            self.config.id,
            done,
        ))
    }
}

/// One member as this node sees it, for status reports (every protocol shows the same).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberView {
    pub id: NodeId,
    pub peer_addr: String,
    /// Its listeners: our own for this node, otherwise what its hello announced.
    pub listeners: Vec<(String, String)>,
    /// This node itself, or a peer our outgoing connection reaches.
    pub connected: bool,
}

impl ServerInfo {
    /// Every member of the configuration in force, as this node sees it.
    pub fn members(&self) -> Vec<MemberView> {
        let peers = self.peers.lock().unwrap().clone();
        let membership = self.membership.read().unwrap().clone();
        membership
            .members
            .iter()
            .map(|m| {
                let known = peers.get(&m.id);
                let own = m.id == self.config.id;
                MemberView {
                    id: m.id,
                    peer_addr: m.addr.clone(),
                    listeners: if own {
                        self.listeners.clone()
                    } else {
                        known.map(|p| p.listeners.clone()).unwrap_or_default()
                    },
                    connected: own || known.is_some_and(|p| p.connected),
                }
            })
            .collect()
    }
}

/// A node that is up and serving.
pub struct RunningServer {
    pub handle: NodeHandle,
    /// The typed key-value API of this node (in-process, no network).
    pub kv: crate::kv::KvHandle,
    pub info: Arc<ServerInfo>,
    pub client_addr: SocketAddr,
    /// Ends with the reason the node stopped, if it stopped on a fatal error.
    node_thread: Option<std::thread::JoinHandle<Option<String>>>,
    grpc_stop: Option<oneshot::Sender<()>>,
    /// Tells the HTTP and RESP servers to stop.
    stop_tx: tokio::sync::watch::Sender<bool>,
    protocol_tasks: Vec<tokio::task::JoinHandle<()>>,
    grpc_task: tokio::task::JoinHandle<()>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The peer TLS material every peer connection uses (reloadable).
    peer_tls: Option<Arc<crate::tls::PeerTls>>,
    _dir: DataDir,
}

async fn bind(addr: &str, what: &str) -> Result<TcpListener> {
    let sa = resolve(addr, what)?;
    TcpListener::bind(sa)
        .await
        .map_err(|e| Error::Config(format!("cannot listen on {addr} ({what}): {e}")))
}

/// A node's stores, open: the locked data directory, its RocksDB, the key-value store, the
/// SQL database, and what a state transfer (or a backup) moves.
pub(crate) struct Stores {
    pub dir: DataDir,
    pub db: Arc<rocksdb::DB>,
    pub kv: KvStore,
    pub sql: SqlStore,
    pub states: States,
}

/// Locks `data_dir` (created if missing) and opens the node's stores in it (the SQL
/// database in `sql_dir`, by default `data_dir/sql`).
pub(crate) fn open_stores(
    data_dir: &std::path::Path,
    sql_dir: Option<&std::path::Path>,
) -> Result<Stores> {
    let dir = DataDir::lock(data_dir)?;
    let db = dir.open_db()?;
    let kv = KvStore::open(db.clone())?;
    let sql_dir = sql_dir.map_or_else(|| data_dir.join("sql"), |d| d.to_path_buf());
    let sql = SqlStore::open(&sql_dir).map_err(|e| {
        Error::Storage(format!(
            "opening the SQL database in {}: {e} (it needs a file system with shared \
             memory maps; see --sql-dir)",
            sql_dir.display()
        ))
    })?;
    // What a state transfer moves, in order: every state machine of the node.
    let states = States::new(vec![Arc::new(kv.clone()), Arc::new(sql.reader())]);
    Ok(Stores {
        dir,
        db,
        kv,
        sql,
        states,
    })
}

/// Records the node id and member ids (and a random incarnation) in a new data directory,
/// or checks that an existing one was made for this node and cluster. Returns the
/// incarnation.
/// Once a membership change is recorded (`changed`), the members may differ from
/// `--peers` (which then only matters for the node's own address): only the node id is
/// checked.
pub(crate) fn check_identity(db: &rocksdb::DB, cfg: &Config, changed: bool) -> Result<u64> {
    let meta = Meta::of(db);
    let mut ids: Vec<NodeId> = cfg.peers.iter().map(|m| m.id).collect();
    ids.sort_unstable();
    let want = format!("node={} members={:?}", cfg.id, ids);
    let node_part = format!("node={} ", cfg.id);
    let incarnation = match meta.get_u64(MetaKey::Incarnation)? {
        Some(v) => v,
        None => rand::random::<u64>().max(1),
    };
    match meta.get(MetaKey::Identity)? {
        Some(have) if have == want.as_bytes() => Ok(incarnation),
        Some(have) if changed && have.starts_with(node_part.as_bytes()) => Ok(incarnation),
        Some(have) => Err(Error::Config(format!(
            "data directory {} belongs to {}, but this node is configured as {want}; \
             use the matching --id/--peers or another --data-dir",
            cfg.data_dir.display(),
            String::from_utf8_lossy(&have)
        ))),
        None => {
            let mut b = rocksdb::WriteBatch::default();
            meta.put(&mut b, MetaKey::Identity, want.as_bytes());
            meta.put_u64(&mut b, MetaKey::Incarnation, incarnation);
            meta.write_synced(b)?;
            Ok(incarnation)
        }
    }
}

/// Remembers the incarnation each peer first showed and refuses a different one later.
fn incarnation_check(db: Arc<rocksdb::DB>) -> transport::IncarnationCheck {
    Arc::new(move |peer: NodeId, inc: u64| {
        let meta = Meta::of(&db);
        let key = MetaKey::PeerIncarnation(peer);
        let known = meta.get(key).map_err(|e| e.to_string())?;
        match known {
            Some(v) if v.as_slice() == inc.to_be_bytes() => Ok(()),
            Some(_) => Err(format!(
                "node {peer} came back with a different data directory (it was wiped or \
                 replaced); refusing it, because a node that forgot its log must not vote. \
                 Restore its data, or remove it and add a new node"
            )),
            None => {
                let mut b = rocksdb::WriteBatch::default();
                meta.put_u64(&mut b, key, inc);
                meta.write_synced(b).map_err(|e| e.to_string())
            }
        }
    })
}

/// The message of a panic payload.
fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

/// How the server process ends after the node thread stopped on `why`: the line for the
/// operator and the exit code (3: the data directory could not be written, 1: anything
/// else). The reason arrives as text because a failed write inside OmniPaxos is a panic
/// carrying the storage error's message.
pub fn fatal_exit(why: &str) -> (String, u8) {
    let full = ["No space left on device", "ENOSPC", RESERVE_REACHED];
    if full.iter().any(|s| why.contains(s)) {
        (
            format!(
                "the disk holding the data directory is full; the node stopped rather than \
                 run on a log it cannot write (nothing acknowledged is lost: every \
                 acknowledged write is on a majority). Free space and restart it: it catches \
                 up from its peers. Cause: {why}"
            ),
            3,
        )
    } else if why.contains("storage error") || why.contains("IO error") {
        (
            format!(
                "a write to the data directory failed; the node stopped rather than run on \
                 a log it cannot write. Fix the disk and restart it. Cause: {why}"
            ),
            3,
        )
    } else {
        (format!("the node stopped on an internal error: {why}"), 1)
    }
}

/// Bytes of commands per log entry and per round: a quarter of a frame, but not more than
/// 8 MiB beyond what the largest command needs (a round is one message to each follower,
/// and it is held by each until applied).
fn max_batch_bytes(cfg: &Config) -> usize {
    let largest = 2 * cfg.max_value_size + cfg.max_key_size + 4096;
    (cfg.max_frame_bytes / 4).min(largest.max(8 << 20))
}

/// The free space the log keeps (see [`crate::storage::reserve`]): half the floor under
/// which client writes are refused, so a follower that replication keeps filling stops
/// cleanly before its disk is full.
fn log_reserve(cfg: &Config) -> u64 {
    cfg.min_free_disk_bytes / 2
}

/// Every second, closes the door to client writes while the data directory's file system
/// has less than `floor` bytes free, and opens it again once it has more.
async fn watch_disk(dir: std::path::PathBuf, floor: u64, admission: Arc<Admission>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let d = dir.clone();
        let free = tokio::task::spawn_blocking(move || free_bytes(&d)).await;
        let Ok(Ok(free)) = free else { continue };
        let low = free < floor;
        if low != admission.disk_low() {
            if low {
                tracing::error!(
                    free,
                    min_free_disk_bytes = floor,
                    "the data directory's file system is nearly full: refusing client writes \
                     until space is freed (reads go on)"
                );
            } else {
                tracing::warn!(free, "free space is back: taking client writes again");
            }
            admission.set_disk_low(low);
        }
    }
}

/// Accepts gRPC connections and hands each, once opened (TLS handshake), to tonic
/// through `tx`, until tonic stops taking them.
async fn accept_grpc(
    listener: TcpListener,
    conns: Arc<ConnLimiter>,
    tx: tokio::sync::mpsc::Sender<std::io::Result<Guarded<ClientStream>>>,
) {
    // Connections in their handshake; each holds a place, so the set is bounded by the
    // connection limit.
    let mut opening = tokio::task::JoinSet::new();
    loop {
        let tcp = tokio::select! {
            _ = tx.closed() => return,
            Some(_) = opening.join_next(), if !opening.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Typically out of file descriptors: back off instead of spinning.
                    tracing::warn!("gRPC accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(place) = conns.admit(crate::api::tls::Protocol::Grpc) else {
            continue;
        };
        // Small responses must not wait for Nagle's algorithm (≈40 ms stalls otherwise).
        let _ = tcp.set_nodelay(true);
        let (conns, tx) = (conns.clone(), tx.clone());
        opening.spawn(async move {
            if let Some(s) = conns.open(tcp, Protocol::Grpc).await {
                let _ = tx.send(Ok(conns.guard(s, place))).await;
            }
        });
    }
}

/// Starts a node from `cfg`. Must be called inside a Tokio runtime.
pub async fn start(cfg: Config) -> Result<RunningServer> {
    cfg.validate()?;
    // Client TLS files are read first: a node with a bad certificate does not start.
    let client_tls = match &cfg.client_tls_dir {
        Some(dir) => Some(ListenerTls::load(
            dir,
            cfg.client_ca.as_deref(),
            Duration::from_millis(cfg.header_timeout_ms.max(1)),
        )?),
        None => None,
    };
    if cfg.data_dir.join(crate::backup::RESTORING).exists() {
        return Err(Error::Config(format!(
            "data directory {} holds an unfinished `paxosdb restore` (it was stopped half \
             way); remove the directory and run the restore again",
            cfg.data_dir.display()
        )));
    }
    let Stores {
        dir,
        db,
        mut kv,
        mut sql,
        states,
    } = open_stores(&cfg.data_dir, cfg.sql_dir.as_deref())?;
    kv.set_history_limits(crate::kv::HistoryLimits {
        revisions: cfg.watch_history_revisions,
        bytes: cfg.watch_history_bytes,
    });
    let sql_reader = sql.reader();
    let incarnation = check_identity(&db, &cfg, kv.membership()?.is_some())?;
    let metrics = Metrics::new();
    let states = states.with_metrics(metrics.clone());
    let mut storage = RocksStorage::open(db.clone())?;
    storage.set_metrics(metrics.clone());
    storage.set_unsafe_no_fsync(cfg.unsafe_no_fsync);
    storage.set_reserve(log_reserve(&cfg));
    if cfg.unsafe_no_fsync {
        tracing::warn!("UNSAFE: --unsafe-no-fsync: the replicated log is written WITHOUT fsync; a power loss or OS crash can LOSE ACKNOWLEDGED WRITES. Never use this for data you keep.");
    }

    let own_peer = cfg.own_peer_addr().expect("validated").to_string();
    let peer_listener = bind(&own_peer, "peer address").await?;
    let client_listener = bind(&cfg.client_addr, "client address").await?;
    let client_addr = client_listener.local_addr()?;
    let http_listener = match cfg.http_listen() {
        Some(a) => Some(bind(&a, "HTTP address").await?),
        None => None,
    };
    let resp_listener = match cfg.resp_listen() {
        Some(a) => Some(bind(&a, "RESP address").await?),
        None => None,
    };
    let mut listeners = vec![
        ("grpc".to_string(), client_addr.to_string()),
        ("peer".to_string(), peer_listener.local_addr()?.to_string()),
    ];
    if let Some(l) = &http_listener {
        listeners.push(("http".to_string(), l.local_addr()?.to_string()));
    }
    if let Some(l) = &resp_listener {
        listeners.push(("resp".to_string(), l.local_addr()?.to_string()));
    }

    let (tx, rx) = std::sync::mpsc::channel();
    let table = PeerTable::default();
    let tcfg = TransportConfig {
        id: cfg.id,
        listeners: listeners.clone(),
        max_frame: cfg.max_frame_bytes,
        max_queue_bytes: cfg.max_peer_queue_bytes,
        bind_ip: resolve(&own_peer, "peer address").ok().map(|a| a.ip()),
        incarnation,
        tls: match &cfg.peer_tls_dir {
            Some(dir) => Some(crate::tls::PeerTls::load(dir, cfg.id)?),
            None => None,
        },
    };
    let peer_tls = tcfg.tls.clone();
    if tcfg.tls.is_none() {
        tracing::warn!(
            "peer connections are plain TCP: any process that reaches the peer port can act \
             as a member (use --peer-tls-dir)"
        );
    }
    if let Some(join) = &cfg.join {
        let alone = matches!(cfg.peers.as_slice(), [m] if m.id == cfg.id);
        if kv.membership()?.is_none() && kv.applied_index() > 0 && alone {
            // It ran as a database of its own: joining would throw that away.
            return Err(Error::Config(format!(
                "--join {join}: data directory {} already holds a single-node database \
                 ({} entries applied); a joining node starts with an empty data directory \
                 (or drop --join to run this one)",
                cfg.data_dir.display(),
                kv.applied_index()
            )));
        }
        if kv.membership()?.is_none() && kv.applied_index() == 0 {
            crate::transfer::join(join, &tcfg, &states).await?;
            // The secondary machine first, the KV store (which records the membership,
            // i.e. that the join is done) last.
            let mut installed = kv.clone();
            (kv, sql) = tokio::task::spawn_blocking(move || {
                sql.install_staged()?;
                installed.install_staged()?;
                Ok::<_, Error>((installed, sql))
            })
            .await
            .map_err(|e| Error::Internal(format!("installing the joined state: {e}")))??;
        }
    }
    let membership = kv
        .membership()?
        .unwrap_or_else(|| Membership::initial(&cfg.peers));
    if !membership.contains(cfg.id) {
        return Err(Error::Config(crate::node::removed_message(
            cfg.id,
            &membership,
        )));
    }
    if membership.config_id > 1 {
        tracing::info!(
            config = membership.config_id,
            members = %membership.describe(),
            "membership recorded by the cluster is in force (--peers names only this node's address)"
        );
    }
    let shared: SharedMembership = Arc::new(std::sync::RwLock::new(membership));
    let mut net = transport::start_senders(&tcfg, tx.clone(), table.clone(), shared.clone());
    net.set_metrics(metrics.clone());
    net.set_fetcher(crate::transfer::fetcher(
        tokio::runtime::Handle::current(),
        tcfg.clone(),
        states.clone(),
        tx.clone(),
        shared.clone(),
    ));
    tracing::info!(
        id = cfg.id,
        applied = kv.applied_index(),
        log = %storage.describe(),
        "node starting; data in {}",
        cfg.data_dir.display()
    );
    let mut core = Core::new(
        CoreConfig {
            id: cfg.id,
            members: cfg.peers.clone(),
            tick: Duration::from_millis(cfg.tick_ms),
            election_ticks: cfg.election_ticks,
            request_timeout: Duration::from_millis(cfg.request_timeout_ms),
            repropose_after: Duration::from_millis(cfg.repropose_ms),
            max_batch_commands: cfg.max_batch_commands,
            max_batch_bytes: max_batch_bytes(&cfg),
            first_batch_id: rand::random::<u64>() >> 1,
            compaction: cfg.compaction(),
        },
        storage,
        Machines::from(Box::new(kv.clone()))
            .with(Box::new(SqlMachine::with_users(sql, Box::new(kv.clone())))),
        Box::new(net),
    )?;
    core.set_metrics(metrics.clone());
    core.set_contact_floor(crate::node::contact::MIN_WINDOW);
    let (reopen_db, reopen_metrics) = (db.clone(), metrics.clone());
    let (no_fsync, reserve) = (cfg.unsafe_no_fsync, log_reserve(&cfg));
    core.set_reopen(Box::new(move || {
        let mut s = RocksStorage::open(reopen_db.clone())?;
        s.set_metrics(reopen_metrics.clone());
        s.set_unsafe_no_fsync(no_fsync);
        s.set_reserve(reserve);
        Ok(s)
    }));
    let node_thread = std::thread::Builder::new()
        .name(format!("paxosdb-node-{}", cfg.id))
        .spawn(move || {
            // A panic here (a failed disk write inside OmniPaxos, a broken invariant) ends
            // the node thread; its message goes to the server, which exits saying why.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| core.run(rx)))
                .err()
                .map(|p| panic_text(p.as_ref()))
        })
        .map_err(|e| Error::Internal(format!("cannot start node thread: {e}")))?;

    let admission = Admission::new(cfg.max_inflight_bytes);
    let handle = NodeHandle {
        tx,
        limits: cfg.limits(),
        admission: admission.clone(),
    };
    let kv_handle =
        crate::kv::KvHandle::new(handle.clone(), kv).with_max_watchers(cfg.max_watchers);
    let idle = (cfg.idle_timeout_ms > 0).then(|| Duration::from_millis(cfg.idle_timeout_ms));
    let conns = ConnLimiter::new(cfg.max_connections, idle, client_tls, metrics.clone());
    let admin_password = match &cfg.admin_password_file {
        Some(f) => Some(read_password_file(f)?),
        None => None,
    };
    let auth = Authenticator::new(
        kv_handle.store().clone(),
        cfg.require_auth || admin_password.is_some(),
    );
    let info = Arc::new(ServerInfo {
        config: cfg,
        listeners,
        peers: table.clone(),
        metrics,
        db: db.clone(),
        membership: shared.clone(),
        conns,
        auth,
        sql: Some(Arc::new(crate::sql::machine::SqlHandle::new(
            handle.clone(),
            sql_reader,
        ))),
        states: states.clone(),
        backups: Arc::new(tokio::sync::Semaphore::new(MAX_BACKUPS)),
    });
    let sampler = tokio::spawn({
        let metrics = info.metrics.clone();
        async move {
            let mut every = tokio::time::interval(crate::metrics::SAMPLE_EVERY);
            loop {
                every.tick().await;
                metrics.sample();
            }
        }
    });
    let disk = tokio::spawn(watch_disk(
        info.config.data_dir.clone(),
        info.config.min_free_disk_bytes,
        admission,
    ));
    let accept = tokio::spawn(transport::accept_loop(
        peer_listener,
        tcfg,
        handle.tx.clone(),
        table,
        incarnation_check(db.clone()),
        states,
        shared.clone(),
    ));

    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(crate::api::health::proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::Internal(format!("reflection: {e}")))?;
    // Older tools (some grpcurl builds) only speak the v1alpha reflection protocol.
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(crate::api::health::proto::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| Error::Internal(format!("reflection: {e}")))?;
    // A request carries a key and a value (a compare-and-swap two values), and a SQL
    // request as much; a key-value transaction up to 4 × the value limit in all
    // (`Limits::check_txn`), plus its framing.
    let max_msg = info.config.max_value_size * 2 + info.config.max_key_size + 64 * 1024;
    let max_kv_msg = info.config.max_value_size * 4 + info.config.max_key_size + 64 * 1024;
    // Stops the listeners' long-lived work (watch streams, blocking queries) at shutdown.
    let (stop_tx, stopping) = tokio::sync::watch::channel(false);
    let kv_svc = pb::kv_server::KvServer::new(grpc::KvService {
        kv: kv_handle.clone(),
        metrics: info.metrics.clone(),
        auth: info.auth.clone(),
        stop: stopping.clone(),
    })
    .max_decoding_message_size(max_kv_msg)
    .max_encoding_message_size(64 * 1024 * 1024);
    // Lease requests are small (ids, a time to live); a time-to-live answer lists at
    // most 1000 keys.
    let lease_svc = pb::lease_server::LeaseServer::new(grpc::LeaseService {
        kv: kv_handle.clone(),
        metrics: info.metrics.clone(),
        auth: info.auth.clone(),
    })
    .max_decoding_message_size(max_kv_msg)
    .max_encoding_message_size(64 * 1024 * 1024);
    let sql_service = info.sql.clone().expect("every node serves SQL");
    let max_response = 64 * 1024 * 1024;
    let sql_svc = pb::sql_server::SqlServer::new(crate::api::grpc_sql::SqlGrpc {
        sql: sql_service,
        metrics: info.metrics.clone(),
        auth: info.auth.clone(),
        max_response,
    })
    .max_decoding_message_size(max_msg)
    .max_encoding_message_size(max_response);
    let cluster_svc = pb::cluster_server::ClusterServer::new(grpc::ClusterService {
        kv: kv_handle.clone(),
        info: info.clone(),
    });
    let health_svc = crate::api::health::proto::health_server::HealthServer::new(
        crate::api::health::HealthService::new(kv_handle.node().clone()),
    );
    let (grpc_stop, stop_rx) = oneshot::channel::<()>();
    // Each connection takes a place in the connection limit (one over it is closed at
    // once: the client sees UNAVAILABLE and tries another node), is opened (the TLS
    // handshake, if on) in its own task, and times out when idle.
    let (incoming_tx, incoming_rx) = tokio::sync::mpsc::channel(64);
    let grpc_accept = tokio::spawn(accept_grpc(
        client_listener,
        info.conns.clone(),
        incoming_tx,
    ));
    let incoming = tokio_stream::wrappers::ReceiverStream::new(incoming_rx);
    let grpc_task = tokio::spawn(async move {
        let res = tonic::transport::Server::builder()
            .add_service(reflection)
            .add_service(reflection_alpha)
            .add_service(kv_svc)
            .add_service(lease_svc)
            .add_service(cluster_svc)
            .add_service(sql_svc)
            .add_service(health_svc)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stop_rx.await;
            })
            .await;
        if let Err(e) = res {
            tracing::error!("gRPC server failed: {e}");
        }
    });
    let mut protocol_tasks = Vec::new();
    if let Some(l) = http_listener {
        protocol_tasks.push(tokio::spawn(crate::api::http::serve(
            l,
            kv_handle.clone(),
            info.clone(),
            stopping.clone(),
        )));
    }
    if let Some(l) = resp_listener {
        protocol_tasks.push(tokio::spawn(crate::api::resp::serve(
            l,
            kv_handle.clone(),
            info.clone(),
            stopping,
        )));
    }
    let shown: Vec<String> = info
        .listeners
        .iter()
        .map(|(n, a)| format!("{n}={a}"))
        .collect();
    tracing::info!(id = info.config.id, "node serving: {}", shown.join(" "));
    let mut tasks = vec![accept, disk, sampler, grpc_accept];
    if let Some(pw) = admin_password {
        let name = info.config.admin_user.clone();
        tasks.push(tokio::spawn(bootstrap_admin(kv_handle.clone(), name, pw)));
    }
    Ok(RunningServer {
        handle,
        kv: kv_handle,
        info,
        client_addr,
        node_thread: Some(node_thread),
        grpc_stop: Some(grpc_stop),
        stop_tx,
        protocol_tasks,
        grpc_task,
        tasks,
        peer_tls,
        _dir: dir,
    })
}

/// Reads a password file: its first line, without the line end. An empty or unreadable
/// file is a configuration error.
pub fn read_password_file(path: &std::path::Path) -> Result<Vec<u8>> {
    let text = std::fs::read(path)
        .map_err(|e| Error::Config(format!("cannot read password file {}: {e}", path.display())))?;
    let first = text.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = first.strip_suffix(b"\r").unwrap_or(first).to_vec();
    if line.is_empty() {
        return Err(Error::Config(format!(
            "password file {} is empty",
            path.display()
        )));
    }
    Ok(line)
}

/// Creates the first administrator while the replicated state has no user: hashes the
/// password here (only the hash is proposed) and proposes an `only_if_no_users` command,
/// retrying with the same session until it is applied (applying it when a user already
/// exists does nothing, so every node may do this).
async fn bootstrap_admin(kv: crate::kv::KvHandle, name: String, password: Vec<u8>) {
    let hash = match crate::auth::hash_secret_async(password).await {
        Ok(h) => h,
        Err(e) => {
            tracing::error!("cannot hash the administrator password: {e}");
            return;
        }
    };
    let change = crate::auth::UserChange {
        role: Some(crate::auth::Role::Admin),
        enabled: Some(true),
        add_passwords: vec![hash],
        ..Default::default()
    };
    let by = crate::kv::handle::Writer::once(None);
    loop {
        match kv.store().has_users() {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => tracing::warn!("reading the user table: {e}"),
        }
        match kv.set_user(&by, name.clone(), change.clone(), true).await {
            Ok(true) => {
                tracing::info!("created the first administrator, {name}");
                return;
            }
            Ok(false) => return,
            Err(e) if e.is_retryable() => {}
            Err(e) => {
                tracing::error!("cannot create the first administrator: {e}");
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

impl RunningServer {
    /// True while the node thread runs (it stops only on shutdown or a fatal error).
    pub fn node_alive(&self) -> bool {
        self.node_thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Why the node thread stopped, once it has stopped on a fatal error.
    pub fn fatal(&mut self) -> Option<String> {
        if self.node_alive() {
            return None;
        }
        let t = self.node_thread.take()?;
        t.join()
            .unwrap_or_else(|p| Some(panic_text(p.as_ref())))
            .or_else(|| Some("the node thread ended".into()))
    }

    /// Reads the client-facing certificate and key (and client CA) again; new client
    /// connections use them. `Ok(false)`: client TLS is off. On an error the certificate
    /// in use is kept.
    pub fn reload_client_tls(&self) -> Result<bool> {
        match self.info.conns.tls() {
            Some(tls) => tls.reload().map(|()| true),
            None => Ok(false),
        }
    }

    /// Reads the peer TLS material (node certificate, key, cluster CA) again; new peer
    /// connections use it, established ones keep theirs. `Ok(false)`: peer TLS is off. On
    /// an error the material in use is kept.
    pub fn reload_peer_tls(&self) -> Result<bool> {
        match &self.peer_tls {
            Some(tls) => tls.reload().map(|()| true),
            None => Ok(false),
        }
    }

    /// Stops listeners and the node thread, and releases the data directory (once the
    /// last clone of [`RunningServer::handle`] held elsewhere is dropped too).
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.grpc_stop.take() {
            let _ = stop.send(());
        }
        let _ = self.stop_tx.send(true);
        if tokio::time::timeout(Duration::from_secs(5), &mut self.grpc_task)
            .await
            .is_err()
        {
            self.grpc_task.abort();
            let _ = (&mut self.grpc_task).await;
        }
        for mut t in self.protocol_tasks.drain(..) {
            if tokio::time::timeout(Duration::from_secs(5), &mut t)
                .await
                .is_err()
            {
                t.abort();
                let _ = t.await;
            }
        }
        // Awaited, not only aborted: what they hold (the database, the state machines) is
        // released when this returns, so the data directory can be opened again at once
        // (an embedded node restarted in the same process).
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
        self.handle.shutdown();
        if let Some(t) = self.node_thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        tracing::info!(id = self.info.config.id, "node stopped");
    }
}
