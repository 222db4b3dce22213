//! `paxosdb server`: runs one node until SIGINT or SIGTERM, then shuts down cleanly.
//! SIGHUP reloads the client-facing TLS certificate and key (`--client-tls-dir`) and the
//! peer TLS material (`--peer-tls-dir`: node certificate, key and cluster CA).
//!
//! With no flags at all it is a single-node database (node 1, a configuration of one
//! member) on loopback, with its data in `./paxosdb-data`: the same log, format and
//! durability as a cluster, and it grows into one online (`--join` on the new nodes,
//! `paxosdb cluster add-node`). Every setting left out has a default ([`defaults`]): node
//! N listens where node N of `paxosdb cluster up` does (gRPC 7000+N, peers 7100+N, HTTP
//! 8079+N, Redis protocol 6378+N, all on 127.0.0.1), and its `--peers` names only itself.
//! A configuration file (`--config`) has no such defaults: it says what it means.
//!
//! # Invariants
//!
//! - Defaults only ever listen on loopback, so a node started without flags is reachable
//!   from this machine only, and the security rule of [`Config::validate`] (TLS and client
//!   authentication for any other address, or `--insecure`) is never bypassed.
//! - A default never lands on a directory `paxosdb cluster up` made for several nodes.

use crate::config::{parse_peers, Config};
use crate::error::{Error, Result};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// TOML configuration file; flags and PAXOSDB_* variables override its values.
    #[arg(long, env = "PAXOSDB_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's id, a member of --peers [default: 1].
    #[arg(long, env = "PAXOSDB_ID")]
    pub id: Option<u64>,
    /// Every member with its peer address: 1=host:port,2=host:port,3=host:port
    /// [default: this node alone, ID=127.0.0.1:7100+ID: a single-node database].
    #[arg(long, env = "PAXOSDB_PEERS")]
    pub peers: Option<String>,
    /// Address for the client API (gRPC) [default: 127.0.0.1:7000+ID].
    #[arg(long, env = "PAXOSDB_CLIENT_ADDR")]
    pub client_addr: Option<String>,
    /// Address for the HTTP/JSON API; "off" disables it [default: with --client-addr, its
    /// host and port 8080; without, 127.0.0.1:8079+ID].
    #[arg(long, env = "PAXOSDB_HTTP_ADDR")]
    pub http_addr: Option<String>,
    /// Address for the Redis protocol; "off" disables it [default: with --client-addr,
    /// its host and port 6379; without, 127.0.0.1:6378+ID].
    #[arg(long, env = "PAXOSDB_RESP_ADDR")]
    pub resp_addr: Option<String>,
    /// Data directory, created if missing [default: ./paxosdb-data].
    #[arg(long, env = "PAXOSDB_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Directory of the SQL database (default: DATA_DIR/sql; needs a file system with
    /// shared memory maps).
    #[arg(long, env = "PAXOSDB_SQL_DIR")]
    pub sql_dir: Option<PathBuf>,
    /// Largest value accepted, in bytes (default 1 MiB).
    #[arg(long, env = "PAXOSDB_MAX_VALUE_SIZE")]
    pub max_value_size: Option<usize>,
    /// Most revisions of changes kept for watchers to start or resume from (default 100000).
    #[arg(long, env = "PAXOSDB_WATCH_HISTORY_REVISIONS")]
    pub watch_history_revisions: Option<u64>,
    /// Most bytes of changes kept for watchers (default 64 MiB).
    #[arg(long, env = "PAXOSDB_WATCH_HISTORY_BYTES")]
    pub watch_history_bytes: Option<u64>,
    /// Most watchers served at once (default 10000); one more is refused as overload.
    #[arg(long, env = "PAXOSDB_MAX_WATCHERS")]
    pub max_watchers: Option<usize>,
    /// Trim the log in steps of at least this many applied entries (default 1000; 0 = never).
    #[arg(long, env = "PAXOSDB_COMPACT_EVERY_ENTRIES")]
    pub compact_every_entries: Option<u64>,
    /// Most applied log entries kept for lagging peers (default 100000); a peer further
    /// behind catches up by a state transfer.
    #[arg(long, env = "PAXOSDB_LOG_KEEP_ENTRIES")]
    pub log_keep_entries: Option<u64>,
    /// Most bytes of applied log kept for lagging peers (default 32 MiB; at most a quarter
    /// of the peer frame limit, so that catching a peer up always fits in a frame).
    #[arg(long, env = "PAXOSDB_LOG_KEEP_BYTES")]
    pub log_keep_bytes: Option<u64>,
    /// Join a running cluster (or single-node database) through this member's peer
    /// address (or several, comma separated), e.g. 127.0.0.1:7101. A new node, with an
    /// empty data directory: --peers then names only this node (the default). It waits
    /// until `paxosdb cluster add-node` adds it, then copies the cluster's state.
    #[arg(long, env = "PAXOSDB_JOIN")]
    pub join: Option<String>,
    /// Largest peer frame, in bytes (default 256 MiB); must hold 4 batches of the largest
    /// write.
    #[arg(long, env = "PAXOSDB_MAX_FRAME_BYTES")]
    pub max_frame_bytes: Option<usize>,
    /// Length of a leader-election round, in milliseconds (default 100): a leader not
    /// heard from for about one round is replaced, and a node that cannot reach a
    /// majority stops serving after about one. Rounded up to whole ticks.
    #[arg(long, env = "PAXOSDB_ELECTION_MS")]
    pub election_ms: Option<u64>,
    /// How long a request waits to be decided and applied before the answer "outcome
    /// unknown" (writes) or "unavailable" (reads), in milliseconds (default 5000).
    #[arg(long, env = "PAXOSDB_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    /// Most client connections at once, over gRPC, HTTP and RESP together (default 4096).
    #[arg(long, env = "PAXOSDB_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Close a client connection idle for this many milliseconds (default 300000; 0 = never).
    #[arg(long, env = "PAXOSDB_IDLE_TIMEOUT_MS")]
    pub idle_timeout_ms: Option<u64>,
    /// Refuse an HTTP request whose headers take longer than this many milliseconds
    /// (default 10000).
    #[arg(long, env = "PAXOSDB_HEADER_TIMEOUT_MS")]
    pub header_timeout_ms: Option<u64>,
    /// Most bytes of client writes held by this node at once; more are refused as
    /// overloaded, retryable (default 32 MiB).
    #[arg(long, env = "PAXOSDB_MAX_INFLIGHT_BYTES")]
    pub max_inflight_bytes: Option<u64>,
    /// Most bytes queued for one peer (default 64 MiB).
    #[arg(long, env = "PAXOSDB_MAX_PEER_QUEUE_BYTES")]
    pub max_peer_queue_bytes: Option<u64>,
    /// Largest reply one request may build, in bytes (default 64 MiB).
    #[arg(long, env = "PAXOSDB_MAX_REPLY_BYTES")]
    pub max_reply_bytes: Option<usize>,
    /// Refuse client writes while the data directory's file system has less free space
    /// than this, in bytes (default 64 MiB).
    #[arg(long, env = "PAXOSDB_MIN_FREE_DISK_BYTES")]
    pub min_free_disk_bytes: Option<u64>,
    /// Directory with the cluster CA and this node's certificate (`paxosdb certs`): peers
    /// then talk mutual TLS and must prove their node id.
    #[arg(long, env = "PAXOSDB_PEER_TLS_DIR")]
    pub peer_tls_dir: Option<PathBuf>,
    /// Directory with `server.pem` and `server-key.pem` (`paxosdb certs`): every client
    /// listener (gRPC, HTTP, RESP) then speaks only TLS. SIGHUP reloads them.
    #[arg(long, env = "PAXOSDB_CLIENT_TLS_DIR")]
    pub client_tls_dir: Option<PathBuf>,
    /// Require client certificates signed by this CA (`client-ca.pem` of `paxosdb certs`).
    #[arg(long, env = "PAXOSDB_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
    /// Allow non-loopback listeners without TLS (anyone reaching a port is then trusted).
    #[arg(long, env = "PAXOSDB_INSECURE")]
    pub insecure: bool,
    /// Require client credentials even while no user exists.
    #[arg(long, env = "PAXOSDB_REQUIRE_AUTH")]
    pub require_auth: bool,
    /// File with the first administrator's password: the administrator is created when
    /// the cluster has no user yet (implies --require-auth).
    #[arg(long, env = "PAXOSDB_ADMIN_PASSWORD_FILE")]
    pub admin_password_file: Option<PathBuf>,
    /// Name of the first administrator (default `default`, the user of `AUTH <password>`).
    #[arg(long, env = "PAXOSDB_ADMIN_USER")]
    pub admin_user: Option<String>,
    /// Acknowledge writes without fsync. UNSAFE: a power loss can lose acknowledged writes.
    #[arg(long, env = "PAXOSDB_UNSAFE_NO_FSYNC")]
    pub unsafe_no_fsync: bool,
}

/// The data directory of a node started without `--data-dir` (and without `--config`).
pub const DEFAULT_DATA_DIR: &str = "paxosdb-data";

/// The defaults of node `id` started without a configuration file (see the module docs):
/// its peers (itself alone), client, HTTP and RESP addresses, all on loopback.
pub fn defaults(id: u64) -> Result<(String, String, String, String)> {
    let port = |base: u64| {
        u16::try_from(base + id).map_err(|_| {
            Error::Config(format!(
                "node id {id} has no default ports (7000+ID must be a port number): give \
                 --peers, --client-addr, --http-addr and --resp-addr"
            ))
        })
    };
    Ok((
        format!("{id}=127.0.0.1:{}", port(7100)?),
        format!("127.0.0.1:{}", port(7000)?),
        format!("127.0.0.1:{}", port(8079)?),
        format!("127.0.0.1:{}", port(6378)?),
    ))
}

/// Refuses a default data directory that holds a `paxosdb cluster up` cluster (one data
/// directory per node inside, `node-1`...): a node must not make its database among them.
fn check_default_data_dir(dir: &std::path::Path) -> Result<()> {
    let is_rocksdb = dir.join("CURRENT").exists();
    if !is_rocksdb && dir.join("node-1").is_dir() {
        return Err(Error::Config(format!(
            "{} holds the nodes of a `paxosdb cluster up` cluster (node-1, ...), not one \
             node's data: give --data-dir (e.g. {}/node-1 to run its node 1 by hand, or a \
             new directory), or run `paxosdb cluster up` again",
            dir.display(),
            dir.display()
        )));
    }
    Ok(())
}

/// Builds the configuration from the file (if any) and the flags; without a file, what
/// the flags leave out is a single-node database on loopback (see the module docs).
pub fn build_config(a: &ServerArgs) -> Result<Config> {
    let mut cfg = match &a.config {
        Some(path) => Config::from_toml_file(path)?,
        None => {
            let id = a.id.unwrap_or(1);
            let (peers, client, http, resp) = defaults(id)?;
            let data_dir = match &a.data_dir {
                Some(d) => d.clone(),
                None => {
                    let d = PathBuf::from(DEFAULT_DATA_DIR);
                    check_default_data_dir(&d)?;
                    d
                }
            };
            let mut cfg = Config::new(
                id,
                parse_peers(a.peers.as_deref().unwrap_or(&peers))?,
                a.client_addr.clone().unwrap_or(client),
                data_dir,
            );
            // Without a client address, the other listeners default to node ID's ports
            // too (with one, to its host: see `Config::http_addr`).
            if a.client_addr.is_none() {
                cfg.http_addr = Some(http);
                cfg.resp_addr = Some(resp);
            }
            cfg
        }
    };
    if let Some(id) = a.id {
        cfg.id = id;
    }
    if let Some(p) = &a.peers {
        cfg.peers = parse_peers(p)?;
    }
    if let Some(c) = &a.client_addr {
        cfg.client_addr = c.clone();
    }
    if let Some(h) = &a.http_addr {
        cfg.http_addr = Some(h.clone());
    }
    if let Some(r) = &a.resp_addr {
        cfg.resp_addr = Some(r.clone());
    }
    if let Some(d) = &a.data_dir {
        cfg.data_dir = d.clone();
    }
    if let Some(d) = &a.sql_dir {
        cfg.sql_dir = Some(d.clone());
    }
    if let Some(v) = a.max_value_size {
        cfg.max_value_size = v;
    }
    if let Some(v) = a.compact_every_entries {
        cfg.compact_every_entries = v;
    }
    if let Some(v) = a.watch_history_revisions {
        cfg.watch_history_revisions = v;
    }
    if let Some(v) = a.watch_history_bytes {
        cfg.watch_history_bytes = v;
    }
    if let Some(v) = a.max_watchers {
        cfg.max_watchers = v;
    }
    if let Some(v) = a.log_keep_entries {
        cfg.log_keep_entries = v;
    }
    if let Some(v) = a.log_keep_bytes {
        cfg.log_keep_bytes = Some(v);
    }
    if let Some(j) = &a.join {
        cfg.join = Some(j.clone());
    }
    if let Some(v) = a.max_frame_bytes {
        cfg.max_frame_bytes = v;
    }
    if let Some(ms) = a.election_ms {
        cfg.election_ticks = ms.div_ceil(cfg.tick_ms.max(1));
    }
    if let Some(v) = a.request_timeout_ms {
        cfg.request_timeout_ms = v;
    }
    if let Some(v) = a.max_connections {
        cfg.max_connections = v;
    }
    if let Some(v) = a.idle_timeout_ms {
        cfg.idle_timeout_ms = v;
    }
    if let Some(v) = a.header_timeout_ms {
        cfg.header_timeout_ms = v;
    }
    if let Some(v) = a.max_inflight_bytes {
        cfg.max_inflight_bytes = v;
    }
    if let Some(v) = a.max_peer_queue_bytes {
        cfg.max_peer_queue_bytes = v;
    }
    if let Some(v) = a.max_reply_bytes {
        cfg.max_reply_bytes = v;
    }
    if let Some(v) = a.min_free_disk_bytes {
        cfg.min_free_disk_bytes = v;
    }
    if a.unsafe_no_fsync {
        cfg.unsafe_no_fsync = true;
    }
    if let Some(d) = &a.peer_tls_dir {
        cfg.peer_tls_dir = Some(d.clone());
    }
    if let Some(d) = &a.client_tls_dir {
        cfg.client_tls_dir = Some(d.clone());
    }
    if let Some(f) = &a.client_ca {
        cfg.client_ca = Some(f.clone());
    }
    if a.insecure {
        cfg.insecure = true;
    }
    if a.require_auth {
        cfg.require_auth = true;
    }
    if let Some(f) = &a.admin_password_file {
        cfg.admin_password_file = Some(f.clone());
    }
    if let Some(u) = &a.admin_user {
        cfg.admin_user = u.clone();
    }
    cfg.validate()?;
    Ok(cfg)
}

/// One line on standard output saying where the node serves (the log lines say the same
/// on standard error, among others).
fn print_banner(server: &crate::server::RunningServer) {
    let info = &server.info;
    let members = info.membership.read().map(|m| m.members.len()).unwrap_or(0);
    let what = match members {
        1 => " (a single-node database: grow it with `paxosdb cluster add-node`)".to_string(),
        n => format!(" (one of {n} members)"),
    };
    let listeners: Vec<String> = info
        .listeners
        .iter()
        .map(|(name, addr)| format!("{name} {addr}"))
        .collect();
    // Not println!: a closed standard output must not stop a server.
    use std::io::Write;
    let _ = writeln!(
        std::io::stdout(),
        "paxosdb: node {} serving{what}, data in {}\n  {}",
        info.config.id,
        info.config.data_dir.display(),
        listeners.join("  ")
    );
}

pub async fn run(a: &ServerArgs) -> Result<ExitCode> {
    let cfg = build_config(a)?;
    // Panics are logged like everything else (the node thread's one is also reported
    // below, with what to do about it).
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current().name().unwrap_or("?").to_string();
        tracing::error!(thread, "panic: {info}");
    }));
    let mut server = crate::server::start(cfg).await?;
    print_banner(&server);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::Internal(format!("signal handler: {e}")))?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| Error::Internal(format!("signal handler: {e}")))?;
    let mut watch = tokio::time::interval(std::time::Duration::from_millis(200));
    let code = loop {
        tokio::select! {
            _ = hup.recv() => {
                // The outcomes are logged by the reloads themselves.
                if let Ok(false) = server.reload_client_tls() {
                    tracing::info!("SIGHUP: client TLS is off; nothing to reload");
                }
                if let Ok(false) = server.reload_peer_tls() {
                    tracing::info!("SIGHUP: peer TLS is off; nothing to reload");
                }
            }
            _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: shutting down"); break ExitCode::SUCCESS }
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break ExitCode::SUCCESS }
            _ = watch.tick() => {
                if let Some(why) = server.fatal() {
                    let (line, code) = crate::server::fatal_exit(&why);
                    tracing::error!("{line}");
                    eprintln!("paxosdb: {line}");
                    break ExitCode::from(code);
                }
            }
        }
    };
    server.shutdown().await;
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, CliCommand};
    use clap::Parser;

    fn config_of(args: &[&str]) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut argv = vec!["paxosdb", "server", "--data-dir", data.to_str().unwrap()];
        argv.extend(args);
        let cli = Cli::try_parse_from(argv).unwrap();
        let CliCommand::Server(a) = cli.command else {
            panic!("not the server command")
        };
        build_config(&a).unwrap()
    }

    /// The election round and the request timeout are flags (and `PAXOSDB_*` variables),
    /// not only TOML keys: a partition test sets them on the command line.
    #[test]
    fn election_round_and_request_timeout_are_flags() {
        let d = config_of(&[]);
        assert_eq!(
            (d.tick_ms, d.election_ticks, d.request_timeout_ms),
            (10, 10, 5000)
        );
        let c = config_of(&["--election-ms", "1000", "--request-timeout-ms", "1500"]);
        assert_eq!((c.election_ticks, c.request_timeout_ms), (100, 1500));
        // Rounded up to whole ticks.
        assert_eq!(config_of(&["--election-ms", "95"]).election_ticks, 10);
    }
}
