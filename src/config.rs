//! Server configuration: where a node listens, who its peers are, where it keeps data.
//!
//! A [`Config`] comes from a TOML file, command-line flags or `PAXOSDB_*` environment
//! variables (flags and variables win over the file). [`Config::validate`] refuses a wrong
//! configuration at start with one line that says what to fix; a node never starts half
//! configured.

use crate::command::{Limits, NodeId};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

/// One member of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// The member's node id (non-zero, unique).
    pub id: NodeId,
    /// The address other nodes reach it at for replication traffic (host:port).
    pub addr: String,
}

/// Everything a node needs to start.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This node's id; must be one of `peers`.
    pub id: NodeId,
    /// Every member of the cluster, this node included, with its peer address. One member
    /// is a single-node database: the same log and format as a cluster, and it grows into
    /// one online (`paxosdb cluster add-node`). It survives no failure of its machine, so
    /// 3 or 5 members are recommended for anything that must stay up.
    pub peers: Vec<Member>,
    /// Address of the client API (gRPC), e.g. `127.0.0.1:7001`.
    pub client_addr: String,
    /// Address of the HTTP/JSON API. Unset: the client address's host, port 8080.
    /// `"off"` disables it.
    #[serde(default)]
    pub http_addr: Option<String>,
    /// Address of the Redis-protocol (RESP) listener. Unset: the client address's host,
    /// port 6379. `"off"` disables it.
    #[serde(default)]
    pub resp_addr: Option<String>,
    /// Directory for this node's RocksDB; used by one process at a time.
    pub data_dir: PathBuf,
    /// Directory of this node's SQL database. Unset: `<data_dir>/sql`. It must be on a
    /// file system that supports shared memory maps (SQLite's WAL index); keep it with
    /// the data directory, whose log it is replayed from.
    #[serde(default)]
    pub sql_dir: Option<PathBuf>,
    /// Largest accepted key, in bytes.
    #[serde(default = "default_max_key")]
    pub max_key_size: usize,
    /// Largest accepted value, in bytes.
    #[serde(default = "default_max_value")]
    pub max_value_size: usize,
    /// Milliseconds between OmniPaxos ticks.
    #[serde(default = "default_tick_ms")]
    pub tick_ms: u64,
    /// Ticks between leader-election heartbeat rounds; a leader silent for about one round
    /// is replaced.
    #[serde(default = "default_election_ticks")]
    pub election_ticks: u64,
    /// How long the node waits for a request to be decided and applied before answering
    /// "outcome unknown" (writes) or "unavailable" (reads), in milliseconds.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// A proposal not decided after this many milliseconds is proposed again (OmniPaxos may
    /// lose a proposal forwarded to a leader that just failed; sessions make this safe).
    #[serde(default = "default_repropose_ms")]
    pub repropose_ms: u64,
    /// Most commands in one log entry (one fsync on each node covers them all).
    #[serde(default = "default_max_batch")]
    pub max_batch_commands: usize,
    /// Largest peer frame accepted, in bytes; a larger one closes the connection.
    #[serde(default = "default_max_frame")]
    pub max_frame_bytes: usize,
    /// The log is trimmed in steps of at least this many applied entries (0 = never trim).
    #[serde(default = "default_compact_every")]
    pub compact_every_entries: u64,
    /// Most applied entries a node keeps for peers that are behind. A peer further behind
    /// (down for long) catches up by receiving the whole state instead of entries.
    #[serde(default = "default_log_keep_entries")]
    pub log_keep_entries: u64,
    /// Most revisions of key-value changes kept for watchers (a watcher can start or
    /// resume this far back); the history also stays within `watch_history_bytes`.
    #[serde(default = "default_watch_history_revisions")]
    pub watch_history_revisions: u64,
    /// Most bytes (keys and values) of changes kept for watchers.
    #[serde(default = "default_watch_history_bytes")]
    pub watch_history_bytes: u64,
    /// Most watchers this node serves at once (gRPC streams, server-sent events,
    /// blocking queries); one more is refused as overload.
    #[serde(default = "default_max_watchers")]
    pub max_watchers: usize,
    /// The same limit in bytes of commands (approximate). Unset: 32 MiB, or a quarter of
    /// `max_frame_bytes` if that is less (a peer that is behind is sent the kept log in one
    /// message, which must fit in a frame).
    #[serde(default)]
    pub log_keep_bytes: Option<u64>,
    /// Peer address of a member of a running cluster to join. A new node (empty data
    /// directory) waits there until `paxosdb cluster add-node` adds it, then fetches the
    /// cluster's state. `peers` then only needs this node's own entry.
    #[serde(default)]
    pub join: Option<String>,
    /// Most client connections open at once over gRPC, HTTP and RESP together. One more is
    /// answered with a clear refusal and closed (RESP `-ERR max number of clients
    /// reached`, HTTP 503). Also kept below the process's open-file limit.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A client connection that sends nothing for this many milliseconds is closed
    /// (0 = never).
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// An HTTP connection must deliver each request's headers within this many
    /// milliseconds of the server starting to wait for them (so an idle keep-alive
    /// connection is also closed after this long); otherwise it is closed.
    #[serde(default = "default_header_timeout_ms")]
    pub header_timeout_ms: u64,
    /// Most bytes of client writes this node holds at once (queued for the node thread,
    /// waiting to be proposed, or in flight). A write beyond it is refused at once with a
    /// retryable "overloaded" error (RESP `-BUSY`, HTTP 429, gRPC `RESOURCE_EXHAUSTED`),
    /// and nothing of it is applied.
    #[serde(default = "default_max_inflight_bytes")]
    pub max_inflight_bytes: u64,
    /// Most bytes of messages queued for one peer; beyond it messages are dropped
    /// (OmniPaxos sends again what matters).
    #[serde(default = "default_max_peer_queue_bytes")]
    pub max_peer_queue_bytes: u64,
    /// Largest reply one request may build (RESP `MGET`, `KEYS`, scans); a larger one is
    /// refused with an error that says so.
    #[serde(default = "default_max_reply_bytes")]
    pub max_reply_bytes: usize,
    /// Below this many free bytes on the data directory's file system the node refuses
    /// new client writes (retryable), keeps serving reads, and resumes once space returns.
    /// Below half of it (replication goes on) the node stops with exit code 3 before its
    /// disk is full; freed space and a restart bring it back.
    #[serde(default = "default_min_free_disk_bytes")]
    pub min_free_disk_bytes: u64,
    /// Acknowledge writes without waiting for fsync. UNSAFE: a power loss can lose
    /// acknowledged writes. For benchmarks and for showing that the power-loss test
    /// catches exactly this.
    #[serde(default)]
    pub unsafe_no_fsync: bool,
    /// Directory with the cluster CA (`ca.pem`) and this node's certificate and key
    /// (`node-<id>.pem`, `node-<id>-key.pem`), made by `paxosdb certs`. Set: every peer
    /// connection is mutual TLS and a peer must prove its node id with its certificate.
    #[serde(default)]
    pub peer_tls_dir: Option<PathBuf>,
    /// Directory with the certificate every node shows its clients (`server.pem`, signed
    /// by the cluster CA) and its key (`server-key.pem`), made by `paxosdb certs`. Set:
    /// every client listener (gRPC, HTTP, RESP) speaks only TLS. SIGHUP reloads them.
    #[serde(default)]
    pub client_tls_dir: Option<PathBuf>,
    /// CA certificate client certificates must be signed by (`client-ca.pem` of `paxosdb
    /// certs`). Set: a client without such a certificate is refused in the handshake.
    /// Needs `client_tls_dir`.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// Allow listening on non-loopback addresses without TLS (peers and clients are then
    /// not authenticated: anyone who reaches a port can act as a member or a client).
    #[serde(default)]
    pub insecure: bool,
    /// Require client credentials even while the replicated user table is empty (see
    /// [`crate::auth`]). Without it, and without `admin_password_file`, a cluster with no
    /// user serves every request as an administrator (local use only).
    #[serde(default)]
    pub require_auth: bool,
    /// A file holding the password of the first administrator (`admin_user`), created
    /// in the replicated state when it has no user yet (proposed by this node at start,
    /// applied once cluster-wide). Implies `require_auth`. Only its hash leaves the node.
    #[serde(default)]
    pub admin_password_file: Option<PathBuf>,
    /// The name of the first administrator (default `default`: the user Redis' one-argument
    /// `AUTH <password>` and `redis-cli -a` / `REDISCLI_AUTH` authenticate as).
    #[serde(default = "default_admin_user")]
    pub admin_user: String,
}

fn default_admin_user() -> String {
    crate::auth::DEFAULT_USER.into()
}

fn default_max_key() -> usize {
    Limits::default().max_key
}
fn default_max_value() -> usize {
    Limits::default().max_value
}
fn default_tick_ms() -> u64 {
    10
}
fn default_election_ticks() -> u64 {
    10
}
fn default_request_timeout_ms() -> u64 {
    5000
}
fn default_repropose_ms() -> u64 {
    1000
}
fn default_max_batch() -> usize {
    4096
}
fn default_max_frame() -> usize {
    256 * 1024 * 1024
}
fn default_compact_every() -> u64 {
    1_000
}
fn default_watch_history_revisions() -> u64 {
    crate::kv::HistoryLimits::default().revisions
}
fn default_watch_history_bytes() -> u64 {
    crate::kv::HistoryLimits::default().bytes
}
fn default_max_watchers() -> usize {
    crate::kv::watch::DEFAULT_MAX_WATCHERS
}
fn default_log_keep_entries() -> u64 {
    100_000
}
fn default_max_connections() -> usize {
    4096
}
fn default_idle_timeout_ms() -> u64 {
    300_000
}
fn default_header_timeout_ms() -> u64 {
    10_000
}
fn default_max_inflight_bytes() -> u64 {
    32 * 1024 * 1024
}
fn default_max_peer_queue_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_max_reply_bytes() -> usize {
    64 * 1024 * 1024
}
fn default_min_free_disk_bytes() -> u64 {
    64 * 1024 * 1024
}

impl Config {
    /// A configuration with defaults for everything but identity, peers and places.
    pub fn new(id: NodeId, peers: Vec<Member>, client_addr: String, data_dir: PathBuf) -> Self {
        Config {
            id,
            peers,
            client_addr,
            http_addr: None,
            resp_addr: None,
            data_dir,
            sql_dir: None,
            max_key_size: default_max_key(),
            max_value_size: default_max_value(),
            tick_ms: default_tick_ms(),
            election_ticks: default_election_ticks(),
            request_timeout_ms: default_request_timeout_ms(),
            repropose_ms: default_repropose_ms(),
            max_batch_commands: default_max_batch(),
            max_frame_bytes: default_max_frame(),
            compact_every_entries: default_compact_every(),
            log_keep_entries: default_log_keep_entries(),
            watch_history_revisions: default_watch_history_revisions(),
            watch_history_bytes: default_watch_history_bytes(),
            max_watchers: default_max_watchers(),
            log_keep_bytes: None,
            join: None,
            max_connections: default_max_connections(),
            idle_timeout_ms: default_idle_timeout_ms(),
            header_timeout_ms: default_header_timeout_ms(),
            max_inflight_bytes: default_max_inflight_bytes(),
            max_peer_queue_bytes: default_max_peer_queue_bytes(),
            max_reply_bytes: default_max_reply_bytes(),
            min_free_disk_bytes: default_min_free_disk_bytes(),
            unsafe_no_fsync: false,
            peer_tls_dir: None,
            client_tls_dir: None,
            client_ca: None,
            insecure: false,
            require_auth: false,
            admin_password_file: None,
            admin_user: default_admin_user(),
        }
    }

    pub fn compaction(&self) -> crate::node::CompactionPolicy {
        crate::node::CompactionPolicy {
            every_entries: self.compact_every_entries,
            keep_entries: self.log_keep_entries,
            keep_bytes: self.log_keep_bytes(),
            // A fetched state is synced from the held log in one message, which must fit
            // in a frame (see `node::compaction`, "Transfer holds").
            hold_bytes: self.max_frame_bytes as u64 / 2,
            hold_for: crate::node::HOLD_FOR,
            hold_silence: crate::node::HOLD_SILENCE,
        }
    }

    /// The bytes of applied log kept for laggards (see `log_keep_bytes`).
    pub fn log_keep_bytes(&self) -> u64 {
        self.log_keep_bytes
            .unwrap_or_else(|| (32 << 20).min(self.max_frame_bytes as u64 / 4))
    }

    /// Reads a TOML file.
    pub fn from_toml_file(path: &std::path::Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        toml::from_str(&text)
            .map_err(|e| Error::Config(format!("{}: {}", path.display(), e.message())))
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_key: self.max_key_size,
            max_value: self.max_value_size,
        }
    }

    /// The HTTP listener address, or `None` when it is off.
    pub fn http_listen(&self) -> Option<String> {
        self.optional_listener(&self.http_addr, 8080)
    }

    /// The RESP listener address, or `None` when it is off.
    pub fn resp_listen(&self) -> Option<String> {
        self.optional_listener(&self.resp_addr, 6379)
    }

    fn optional_listener(&self, set: &Option<String>, default_port: u16) -> Option<String> {
        match set.as_deref() {
            Some("off") => None,
            Some(a) => Some(a.to_string()),
            None => {
                let host = self
                    .client_addr
                    .rsplit_once(':')
                    .map_or("127.0.0.1", |(h, _)| h);
                Some(format!("{host}:{default_port}"))
            }
        }
    }

    /// This node's peer address.
    pub fn own_peer_addr(&self) -> Option<&str> {
        self.peers
            .iter()
            .find(|m| m.id == self.id)
            .map(|m| m.addr.as_str())
    }

    /// Checks the configuration; the error says what to fix.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.id == 0 {
            return bad("node id must be a positive integer (--id)".into());
        }
        if self.watch_history_revisions == 0 || self.watch_history_bytes == 0 {
            return bad(
                "--watch-history-revisions and --watch-history-bytes must be at least 1 \
                 (watchers resume from the history)"
                    .into(),
            );
        }
        if let Err(e) = crate::auth::check_name(&self.admin_user) {
            return bad(format!("--admin-user: {e}"));
        }
        // One member is a single-node database (it grows with `cluster add-node`); a
        // joining node names only itself: it learns the members from the cluster.
        if self.peers.is_empty() {
            return bad(format!(
                "--peers must list at least this node (e.g. {}=127.0.0.1:7101; 3 or 5 \
                 members for a cluster that survives a failure)",
                self.id
            ));
        }
        if self.join.as_deref().is_some_and(|j| j.trim().is_empty()) {
            return bad("--join needs a member's peer address (host:port)".into());
        }
        let mut ids = HashSet::new();
        let mut addrs = HashSet::new();
        for m in &self.peers {
            if m.id == 0 {
                return bad("peer ids must be positive integers".into());
            }
            if !ids.insert(m.id) {
                return bad(format!("node id {} appears twice in --peers", m.id));
            }
            let addr = resolve(&m.addr, &format!("peer address of node {}", m.id))?;
            // Port 0 is "any free port": fine for a node alone, whom nobody dials.
            if addr.port() == 0 && (self.peers.len() > 1 || self.join.is_some()) {
                return bad(format!(
                    "peer address {} of node {} has port 0 (any free port): peers could not \
                     reach it; give a fixed port",
                    m.addr, m.id
                ));
            }
            if addr.port() != 0 && !addrs.insert(addr) {
                return bad(format!("peer address {} appears twice in --peers", m.addr));
            }
        }
        if !ids.contains(&self.id) {
            return bad(format!(
                "this node's id {} is not in --peers (members: {})",
                self.id,
                self.peers
                    .iter()
                    .map(|m| m.id.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let mut listeners = vec![("client address (--client-addr)", self.client_addr.clone())];
        if let Some(a) = self.http_listen() {
            listeners.push(("HTTP address (--http-addr)", a));
        }
        if let Some(a) = self.resp_listen() {
            listeners.push(("RESP address (--resp-addr)", a));
        }
        for (what, addr) in &listeners {
            let sa = resolve(addr, what)?;
            if sa.port() != 0 && !addrs.insert(sa) {
                return bad(format!(
                    "{what} {addr} is already used by another listener or peer; \
                     give each listener its own port (or \"off\")"
                ));
            }
        }
        if self.data_dir.as_os_str().is_empty() {
            return bad("a data directory is required (--data-dir)".into());
        }
        if self.tick_ms == 0 || self.election_ticks == 0 {
            return bad("tick_ms and election_ticks must be positive".into());
        }
        if self.max_key_size == 0 || self.max_batch_commands == 0 {
            return bad("max_key_size and max_batch_commands must be positive".into());
        }
        // A batch (a quarter of a frame) must hold the largest command: a CAS with two values.
        if 2 * self.max_value_size + self.max_key_size + 4096 > self.max_frame_bytes / 4 {
            return bad(
                "max_frame_bytes must be at least 4 × (2 × max_value_size + max_key_size + 4 KiB)"
                    .into(),
            );
        }
        // Without TLS, a port anyone can reach is a port anyone can act through.
        if !self.insecure {
            let own = self.own_peer_addr().unwrap_or_default();
            if self.peer_tls_dir.is_none() && !is_loopback(own) {
                return bad(format!(
                    "peer address {own} is not a loopback address, and peer connections \
                     are not authenticated without TLS: give --peer-tls-dir DIR (make one \
                     with `paxosdb certs`), or --insecure to accept the risk"
                ));
            }
            for (what, addr) in &listeners {
                if self.client_tls_dir.is_none() && !is_loopback(addr) {
                    return bad(format!(
                        "{what} {addr} is not a loopback address, and client connections \
                         are not encrypted without TLS: give --client-tls-dir DIR (make one \
                         with `paxosdb certs`), listen on loopback, or give --insecure to \
                         accept the risk"
                    ));
                }
                // Encrypted is not authenticated: with no user yet, a node serves every
                // request as an administrator, so a reachable listener needs client
                // credentials required from the start (or client certificates).
                let authenticated = self.require_auth
                    || self.admin_password_file.is_some()
                    || self.client_ca.is_some();
                if !authenticated && !is_loopback(addr) {
                    return bad(format!(
                        "{what} {addr} is not a loopback address, and clients are not \
                         authenticated: give --admin-password-file FILE (the first \
                         administrator's password) or --require-auth (users come from the \
                         cluster), or --client-ca FILE, or --insecure to accept the risk"
                    ));
                }
            }
        }
        if self.client_ca.is_some() && self.client_tls_dir.is_none() {
            return bad(
                "--client-ca (client certificates) needs client TLS: give --client-tls-dir too"
                    .into(),
            );
        }
        if self.log_keep_bytes() > (self.max_frame_bytes / 4) as u64 {
            return bad(format!(
                "log_keep_bytes ({}) must be at most a quarter of max_frame_bytes ({}): a \
                 peer that is behind is sent the kept log in one message",
                self.log_keep_bytes(),
                self.max_frame_bytes
            ));
        }
        // (A write larger than max_inflight_bytes is still admitted into an empty budget.)
        if self.max_connections == 0
            || self.max_inflight_bytes == 0
            || self.max_reply_bytes == 0
            || self.max_peer_queue_bytes == 0
        {
            return bad("max_connections, max_inflight_bytes, max_reply_bytes and \
                 max_peer_queue_bytes must be positive"
                .into());
        }
        if self.max_frame_bytes > u32::MAX as usize {
            return bad(
                "max_frame_bytes must be below 4 GiB (frames carry a 32-bit length)".into(),
            );
        }
        Ok(())
    }
}

/// True when `addr` (host:port) resolves to a loopback address.
fn is_loopback(addr: &str) -> bool {
    addr.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| a.ip().is_loopback())
}

/// Resolves `host:port` to one socket address, or says which setting is wrong.
pub fn resolve(addr: &str, what: &str) -> Result<SocketAddr> {
    addr.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| Error::Config(format!("{what} {addr:?} is not a valid host:port")))
}

/// Parses `1=host:port,2=host:port,...`.
pub fn parse_peers(spec: &str) -> Result<Vec<Member>> {
    spec.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|item| {
            let (id, addr) = item.trim().split_once('=').ok_or_else(|| {
                Error::Config(format!("peer {item:?} must look like ID=HOST:PORT"))
            })?;
            let id = id
                .trim()
                .parse()
                .map_err(|_| Error::Config(format!("peer id {id:?} is not a positive integer")))?;
            Ok(Member {
                id,
                addr: addr.trim().to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config::new(
            1,
            parse_peers("1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103").unwrap(),
            "127.0.0.1:7001".into(),
            "data".into(),
        )
    }

    #[test]
    fn valid_config_passes() {
        cfg().validate().unwrap();
    }

    #[test]
    fn wrong_configs_are_refused_with_reason() {
        let mut c = cfg();
        c.id = 4;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("not in --peers"));
        let mut c = cfg();
        c.peers[2].id = 2;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("appears twice"));
        let mut c = cfg();
        c.peers[2].addr = "127.0.0.1:7102".into();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("appears twice"));
        let mut c = cfg();
        c.client_addr = "127.0.0.1:7101".into();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("already used"));
        let mut c = cfg();
        c.peers[0].addr = "nonsense".into();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("not a valid"));
        assert!(parse_peers("1:127.0.0.1:1").is_err());
    }

    #[test]
    fn one_member_is_a_valid_configuration() {
        let mut c = cfg();
        c.peers.truncate(1);
        c.validate().unwrap();
        // Its listeners still follow the security rule: loopback without TLS is allowed,
        // a reachable address is not.
        c.client_addr = "0.0.0.0:7001".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("--client-tls-dir"), "{e}");
        let mut c = cfg();
        c.peers.clear();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("at least this node"), "{e}");
        // Any free port (0) for a node alone and its listeners (the embedded default);
        // never for a member others must reach.
        let mut c = cfg();
        c.peers = parse_peers("1=127.0.0.1:0").unwrap();
        c.client_addr = "127.0.0.1:0".into();
        c.validate().unwrap();
        c.peers = parse_peers("1=127.0.0.1:0,2=127.0.0.1:7102").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("port 0"), "{e}");
    }

    #[test]
    fn non_loopback_listeners_need_tls_or_insecure() {
        let mut c = cfg();
        c.peers = parse_peers("1=10.0.0.1:7101,2=10.0.0.2:7101,3=10.0.0.3:7101").unwrap();
        c.client_addr = "127.0.0.1:7001".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("--peer-tls-dir"), "{e}");
        c.peer_tls_dir = Some("tls".into());
        c.validate().unwrap();
        c.client_addr = "0.0.0.0:7001".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("--insecure"), "{e}");
        assert!(e.contains("--client-tls-dir"), "{e}");
        // Client TLS alone does not make a non-loopback client listener acceptable:
        // clients must be authenticated too (credentials or client certificates).
        c.client_tls_dir = Some("tls".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("--admin-password-file"), "{e}");
        c.require_auth = true;
        c.validate().unwrap();
        c.require_auth = false;
        c.admin_password_file = Some("pw".into());
        c.validate().unwrap();
        c.admin_password_file = None;
        c.client_ca = Some("tls/client-ca.pem".into());
        c.validate().unwrap();
        c.client_ca = None;
        c.client_tls_dir = None;
        c.client_ca = Some("tls/client-ca.pem".into());
        assert!(c.validate().is_err(), "a client CA without client TLS");
        c.client_ca = None;
        c.insecure = true;
        c.validate().unwrap();
        c.peer_tls_dir = None;
        c.validate().unwrap();
    }

    #[test]
    fn toml_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, toml::to_string(&cfg()).unwrap()).unwrap();
        assert_eq!(Config::from_toml_file(&path).unwrap(), cfg());
        std::fs::write(&path, "id = 1\nbogus = 2\n").unwrap();
        assert!(Config::from_toml_file(&path).is_err());
    }
}
