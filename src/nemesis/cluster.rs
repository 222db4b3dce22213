//! A cluster of real `paxosdb server` processes for the nemesis, one loopback IP per node.
//!
//! Node `i` (1-based) listens on `127.0.0.i` for its peer port and its client ports (gRPC,
//! HTTP and RESP, each on a fresh port), and its outgoing peer connections leave from that
//! IP too (the transport binds to the node's own peer IP). So a firewall rule naming two nodes' IPs and peer ports cuts
//! exactly the link between them while clients still reach every node.
//!
//! Nodes added at run time by the membership nemesis (see [`super::membership`]) get the
//! next id and IP (`127.0.0.N`), fresh ports and an empty data directory, and start with
//! `--join`. Every node has a [`MemberState`]: the cluster tracks which nodes are members of the
//! configuration in force (`config_id`), which one is joining, and which are retired
//! (removed from the cluster, or never added); retired nodes are stopped and never
//! restarted. Health, convergence, clients and heals use the current members; faults
//! target members and a joining node.
//!
//! The cluster owns its children: dropping it SIGKILLs every node (paused ones included).
//!
//! This is the one process-cluster harness of the project: the nemesis uses it as is
//! ([`ProcCluster::start`]), and the end-to-end tests (`tests/common`) through a
//! [`ClusterSpec`] with their own options — every node on `127.0.0.1`
//! ([`Loopback::Shared`]: their certificates and tools name that address), client TLS
//! for the harness's own clients, the SQL databases apart from the data directories.
//! Laying out nodes, picking ports, starting, restarting, killing and waiting for a
//! leader are written here once.
//!
//! Invariants:
//! - a port is handed out at most once at a time per process (a registry of the ports
//!   given, released when their cluster is dropped): clusters started in parallel by
//!   one test process never race for the same port between its check and the node's
//!   bind;
//! - ports come from below the kernel's ephemeral range, so no outgoing connection takes
//!   one between the check and the bind (or a rebind after a restart);
//! - dropping the cluster kills and reaps every child before anything else of it goes.

use super::clients::NodeAddrs;
use crate::client::{Client, ClientOptions};
use crate::tls::client::ClientTlsFiles;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where a node stands in the cluster's membership.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberState {
    /// A member of the configuration in force.
    Member,
    /// Started with `--join`; a membership change adding it is being made.
    Joining,
    /// Removed from the cluster, or never added: stopped for good.
    Retired,
}

/// One node: where it listens, where it keeps its data, and its process if running.
pub struct ProcNode {
    pub id: u64,
    pub ip: Ipv4Addr,
    pub peer_port: u16,
    /// `ip:peer_port`, as the other nodes' `--peers` name it.
    pub peer_addr: String,
    pub client_addr: String,
    /// The HTTP and RESP listeners (the workload speaks all three protocols).
    pub http_addr: String,
    pub resp_addr: String,
    pub data_dir: PathBuf,
    /// `--sql-dir`, when not the default inside the data directory.
    pub sql_dir: Option<PathBuf>,
    pub log: PathBuf,
    pub child: Option<Child>,
    pub paused: bool,
    pub member_state: MemberState,
    /// The peer address of the member a node added at run time joins through (renewed
    /// at every start); None for the initial nodes.
    pub join: Option<String>,
    /// Its `--peers`: every initial node for the initial nodes, itself for a joiner.
    peers: String,
    status: Client,
}

impl ProcNode {
    pub fn peer_addr(&self) -> String {
        self.peer_addr.clone()
    }
}

pub struct ProcCluster {
    pub binary: PathBuf,
    pub dir: PathBuf,
    pub nodes: Vec<ProcNode>,
    /// The configuration in force as last learned from the nodes (1 at the start).
    pub config_id: u32,
    /// How many members the cluster started with (membership faults keep it that size).
    pub size: usize,
    /// Extra environment of every server process (e.g. the log budget).
    env: Vec<(String, String)>,
    /// Where nodes listen: one IP each, or all on `127.0.0.1`.
    loopback: Loopback,
    /// What the harness's own clients (status polls, [`ProcCluster::client_for`]) use
    /// when the servers have client TLS on.
    pub tls: Option<ClientTlsFiles>,
    /// Every port this cluster was given, released to the registry when it is dropped.
    ports: Vec<(Ipv4Addr, u16)>,
}

/// Where the nodes of a cluster listen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loopback {
    /// Node `i` on `127.0.0.i` (firewall rules can cut one link; the nemesis).
    PerNode,
    /// Every node on `127.0.0.1` (what certificates made by `paxosdb certs` and tools
    /// like `redis-cli -h 127.0.0.1` expect; the end-to-end tests).
    Shared,
}

impl Loopback {
    fn ip(self, id: u64) -> Ipv4Addr {
        match self {
            Loopback::PerNode => Ipv4Addr::new(127, 0, 0, id as u8),
            Loopback::Shared => Ipv4Addr::LOCALHOST,
        }
    }
}

/// How long the running nodes must agree on one leader before [`ProcCluster::wait_for_leader`]
/// returns it.
pub const LEADER_SETTLED: Duration = Duration::from_millis(300);

/// How to lay out and start a cluster: [`ClusterSpec::new`] gives the nemesis's layout
/// (one IP per node, data under the cluster directory, no TLS); the methods change it.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub size: usize,
    pub loopback: Loopback,
    /// Extra environment of every server process (restarts included).
    pub env: Vec<(String, String)>,
    /// Node `i`'s data directory is `data_dirs[i - 1]` (e.g. on a test file system)
    /// instead of `node-i` under the cluster directory.
    pub data_dirs: Option<Vec<PathBuf>>,
    /// The SQL databases in `node-i-sql` under the cluster directory (`--sql-dir`)
    /// instead of inside the data directories.
    pub sql_dirs_apart: bool,
    /// What the harness's own clients use against client TLS.
    pub tls: Option<ClientTlsFiles>,
}

impl ClusterSpec {
    pub fn new(size: usize) -> ClusterSpec {
        ClusterSpec {
            size,
            loopback: Loopback::PerNode,
            env: Vec::new(),
            data_dirs: None,
            sql_dirs_apart: false,
            tls: None,
        }
    }

    /// Adds `PAXOSDB_*` settings of every server (a later one wins).
    pub fn env(mut self, env: &[(&str, &str)]) -> ClusterSpec {
        self.env
            .extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self
    }

    /// Peer TLS with the certificates of `paxosdb certs --dir dir`.
    pub fn peer_tls(self, dir: &Path) -> ClusterSpec {
        let d = dir.to_string_lossy().into_owned();
        self.env(&[("PAXOSDB_PEER_TLS_DIR", &d)])
    }

    /// Client TLS with the certificates of `paxosdb certs --dir dir`; the harness's
    /// clients trust `dir/ca.pem`.
    pub fn client_tls(mut self, dir: &Path) -> ClusterSpec {
        let d = dir.to_string_lossy().into_owned();
        self.tls = Some(ClientTlsFiles {
            ca: dir.join("ca.pem"),
            cert: None,
            key: None,
        });
        self.env(&[("PAXOSDB_CLIENT_TLS_DIR", &d)])
    }

    /// Client certificates required, signed by `client_ca`; the harness's clients show
    /// `client-harness.pem` of the client TLS directory (the test makes it with
    /// `paxosdb certs --client harness`).
    pub fn client_ca(mut self, client_ca: &Path) -> ClusterSpec {
        let c = client_ca.to_string_lossy().into_owned();
        if let Some(tls) = &mut self.tls {
            let dir = tls.ca.parent().map(Path::to_path_buf).unwrap_or_default();
            tls.cert = Some(dir.join("client-harness.pem"));
            tls.key = Some(dir.join("client-harness-key.pem"));
        }
        self.env(&[("PAXOSDB_CLIENT_CA", &c)])
    }
}

/// The ports handed out and not yet released, across every cluster of this process.
static GIVEN: std::sync::Mutex<std::collections::BTreeSet<(Ipv4Addr, u16)>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// A free TCP port on `ip` (free now; the caller binds it soon after, and `held` keeps
/// it bound until then). Taken below the kernel's ephemeral range (32768+), so that no
/// outgoing connection's source port takes it between now and the node's bind — or its
/// rebind after a kill and restart — and never one handed out before in this process
/// and not released ([`release_ports`]): a port another cluster of this process checked
/// and let go could otherwise be picked again before that cluster's node binds it.
pub fn free_port(ip: Ipv4Addr, held: &mut Vec<TcpListener>) -> std::io::Result<u16> {
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..10_000 {
        let port = 10_000 + rand::random::<u16>() % 22_000;
        if given.contains(&(ip, port)) {
            continue;
        }
        if let Ok(l) = TcpListener::bind(SocketAddrV4::new(ip, port)) {
            given.insert((ip, port));
            held.push(l);
            return Ok(port);
        }
    }
    Err(std::io::Error::other(
        "no free port below the ephemeral range",
    ))
}

/// Gives ports handed out by [`free_port`] back, once nothing listens on them.
pub fn release_ports(ports: &[(Ipv4Addr, u16)]) {
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for p in ports {
        given.remove(p);
    }
}

/// The (IP, port) pairs `held` listens on.
fn held_ports(held: &[TcpListener]) -> Vec<(Ipv4Addr, u16)> {
    held.iter()
        .filter_map(|l| match l.local_addr() {
            Ok(std::net::SocketAddr::V4(a)) => Some((*a.ip(), a.port())),
            _ => None,
        })
        .collect()
}

impl ProcCluster {
    /// Lays out `n` nodes under `dir` and starts them (does not wait for a leader). Every
    /// server process, restarts included, gets `env` on top of the inherited environment.
    pub fn start(
        binary: &Path,
        dir: &Path,
        n: usize,
        env: &[(&str, &str)],
    ) -> std::io::Result<ProcCluster> {
        Self::start_spec(binary, dir, ClusterSpec::new(n).env(env))
    }

    /// Lays out the nodes `spec` describes under `dir` and starts them (does not wait
    /// for a leader: see [`ProcCluster::wait_for_leader`]).
    pub fn start_spec(
        binary: &Path,
        dir: &Path,
        spec: ClusterSpec,
    ) -> std::io::Result<ProcCluster> {
        let n = spec.size;
        let mut c = ProcCluster {
            binary: binary.to_path_buf(),
            dir: dir.to_path_buf(),
            nodes: Vec::new(),
            config_id: 1,
            size: n,
            env: spec.env,
            loopback: spec.loopback,
            tls: spec.tls,
            ports: Vec::new(),
        };
        let mut held = Vec::new();
        for i in 0..n {
            let id = i as u64 + 1;
            let mut node = c.lay_out(id, &mut held)?;
            if let Some(d) = &spec.data_dirs {
                node.data_dir = d[i].clone();
            }
            if spec.sql_dirs_apart {
                node.sql_dir = Some(dir.join(format!("node-{id}-sql")));
            }
            c.nodes.push(node);
        }
        c.ports.extend(held_ports(&held));
        drop(held);
        let peers = c
            .nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.peer_addr()))
            .collect::<Vec<_>>()
            .join(",");
        for n in &mut c.nodes {
            n.peers = peers.clone();
        }
        for id in 1..=n as u64 {
            c.spawn(id)?;
        }
        Ok(c)
    }

    /// Lays out a fresh node with the next unused id (new IP, ports and empty data
    /// directory) and starts it with `--join` through member `via`: it waits until a
    /// membership change adds it. Returns its id.
    pub fn add_joiner(&mut self, via: u64) -> std::io::Result<u64> {
        let id = self.nodes.len() as u64 + 1;
        if id > 254 && self.loopback == Loopback::PerNode {
            return Err(std::io::Error::other("no loopback IP left for a new node"));
        }
        let mut held = Vec::new();
        let mut n = self.lay_out(id, &mut held)?;
        self.ports.extend(held_ports(&held));
        drop(held);
        n.peers = format!("{id}={}", n.peer_addr());
        n.join = Some(self.node(via).peer_addr());
        n.member_state = MemberState::Joining;
        self.nodes.push(n);
        self.spawn(id)?;
        Ok(id)
    }

    /// Stops node `id` for good (it was removed, or will never be added).
    pub fn retire(&mut self, id: u64) {
        // Retiring a node that is already down (killed, or refused to start) is normal.
        let _ = self.kill(id);
        self.node_mut(id).member_state = MemberState::Retired;
    }

    /// Takes in the membership the cluster reports: configuration `config_id` with
    /// `members`. Nodes named become members (a retired one comes back and is restarted
    /// by the next heal); members not named are removed: retired and stopped. A joining
    /// node not named stays joining (its change is still being made). Returns what
    /// changed, for the event log.
    pub fn set_membership(&mut self, config_id: u32, members: &[u64]) -> Vec<String> {
        let mut out = Vec::new();
        self.config_id = self.config_id.max(config_id);
        for i in 0..self.nodes.len() {
            let id = self.nodes[i].id;
            let named = members.contains(&id);
            match (self.nodes[i].member_state, named) {
                (MemberState::Member, true)
                | (MemberState::Retired, false)
                | (MemberState::Joining, false) => {}
                (MemberState::Joining, true) => {
                    self.nodes[i].member_state = MemberState::Member;
                    out.push(format!("node {id} is a member"));
                }
                (MemberState::Retired, true) => {
                    self.nodes[i].member_state = MemberState::Member;
                    out.push(format!("retired node {id} is a member after all"));
                }
                (MemberState::Member, false) => {
                    let was_running = self.nodes[i].child.is_some();
                    self.retire(id);
                    out.push(if was_running {
                        format!("stopped removed node {id}")
                    } else {
                        format!("node {id} (down) was removed")
                    });
                }
            }
        }
        out
    }

    /// The newest membership any running node reports: (configuration, member ids).
    pub async fn reported_membership(&self) -> Option<(u32, Vec<u64>)> {
        let answers = futures::future::join_all(
            self.ids()
                .into_iter()
                .map(|id| async move { self.status(id).await }),
        )
        .await;
        answers
            .into_iter()
            .flatten()
            .filter(|st| st.config_id > 0 && !st.members.is_empty())
            .max_by_key(|st| st.config_id)
            .map(|st| (st.config_id, st.members.iter().map(|m| m.id).collect()))
    }

    pub fn node(&self, id: u64) -> &ProcNode {
        &self.nodes[id as usize - 1]
    }

    fn node_mut(&mut self, id: u64) -> &mut ProcNode {
        &mut self.nodes[id as usize - 1]
    }

    /// The nodes faults may hit: the members and a joining node (not the retired).
    pub fn ids(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.member_state != MemberState::Retired)
            .map(|n| n.id)
            .collect()
    }

    /// The members of the configuration in force.
    pub fn members(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.member_state == MemberState::Member)
            .map(|n| n.id)
            .collect()
    }

    /// The members' client endpoints (every protocol).
    pub fn endpoints(&self) -> Vec<NodeAddrs> {
        self.nodes
            .iter()
            .filter(|n| n.member_state == MemberState::Member)
            .map(|n| NodeAddrs {
                grpc: n.client_addr.clone(),
                http: n.http_addr.clone(),
                resp: n.resp_addr.clone(),
            })
            .collect()
    }

    /// Starts node `id` (again), appending its output to its log file. A node added at
    /// run time joins through a running member (its data directory may still be empty).
    pub fn spawn(&mut self, id: u64) -> std::io::Result<()> {
        if let Some(join) = self.node(id).join.clone() {
            if !self.joinable(&join) {
                let via = self
                    .nodes
                    .iter()
                    .filter(|n| {
                        n.id != id && n.member_state == MemberState::Member && n.child.is_some()
                    })
                    .min_by_key(|n| n.paused)
                    .map(|n| n.peer_addr());
                if let Some(via) = via {
                    self.node_mut(id).join = Some(via);
                }
            }
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.node(id).log)?;
        let child = self
            .server_command(id)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let n = self.node_mut(id);
        n.child = Some(child);
        n.paused = false;
        Ok(())
    }

    /// The command line that starts node `id` (its output not yet redirected).
    pub fn server_command(&self, id: u64) -> Command {
        let n = self.node(id);
        let mut cmd = Command::new(&self.binary);
        cmd.arg("server")
            .args(["--id", &id.to_string()])
            .args(["--peers", &n.peers]);
        if let Some(join) = &n.join {
            cmd.args(["--join", join]);
        }
        cmd.args(["--client-addr", &n.client_addr])
            // Fresh ports of their own: the defaults would collide between runs sharing
            // the machine.
            .args(["--http-addr", &n.http_addr, "--resp-addr", &n.resp_addr])
            .arg("--data-dir")
            .arg(&n.data_dir);
        if let Some(sql) = &n.sql_dir {
            cmd.arg("--sql-dir").arg(sql);
        }
        cmd.env("PAXOSDB_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// True when `peer_addr` is a running member's: a new node can join through it.
    pub fn joinable(&self, peer_addr: &str) -> bool {
        self.nodes.iter().any(|n| {
            n.member_state == MemberState::Member && n.child.is_some() && n.peer_addr() == peer_addr
        })
    }

    /// Nodes whose process exists (paused or not).
    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.member_state != MemberState::Retired && n.child.is_some())
            .map(|n| n.id)
            .collect()
    }

    /// Nodes that are running and not paused.
    pub fn live(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.member_state != MemberState::Retired && n.child.is_some() && !n.paused)
            .map(|n| n.id)
            .collect()
    }

    /// Members and a joining node whose process is not running.
    pub fn killed(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.member_state != MemberState::Retired && n.child.is_none())
            .map(|n| n.id)
            .collect()
    }

    pub fn paused(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.paused)
            .map(|n| n.id)
            .collect()
    }

    /// Reaps nodes whose process exited by itself (a panic, an abort): they count as
    /// killed from now on, so that healing restarts them. Returns each with its exit
    /// status. Paused nodes are stopped, not exited, and are not reported.
    pub fn reap_exited(&mut self) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        for n in &mut self.nodes {
            let exited = match n.child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(status))) => status.to_string(),
                Some(Err(e)) => format!("cannot wait for it: {e}"),
                Some(Ok(None)) | None => continue,
            };
            n.child = None;
            n.paused = false;
            out.push((n.id, exited));
        }
        out
    }

    /// SIGKILLs node `id` and reaps it. An error if it was not running (already killed,
    /// or exited by itself and not yet reaped) or the signal or the reaping failed: the
    /// fault the caller meant did not happen as meant.
    pub fn kill(&mut self, id: u64) -> Result<(), String> {
        let n = self.node_mut(id);
        n.paused = false;
        let mut child = n
            .child
            .take()
            .ok_or_else(|| format!("node {id} is not running"))?;
        // An error here means the process had already exited (or the signal failed):
        // either way this kill is not what stopped it.
        let killed = child
            .kill()
            .map_err(|e| format!("SIGKILL to node {id} failed: {e}"));
        let status = child
            .wait()
            .map_err(|e| format!("reaping node {id} failed: {e}"))?;
        killed?;
        // A process that exits by itself before the signal lands reports its own status.
        match status.signal() {
            Some(9) => Ok(()),
            _ => Err(format!(
                "node {id} had exited by itself ({status}) before the kill"
            )),
        }
    }

    fn signal(&mut self, id: u64, sig: Signal) -> Result<(), String> {
        match &self.node(id).child {
            Some(child) => kill(Pid::from_raw(child.id() as i32), sig)
                .map_err(|e| format!("{sig} to node {id} failed: {e}")),
            None => Err(format!("node {id} is not running")),
        }
    }

    /// SIGSTOPs node `id`. An error if it is already paused, not running, or the signal
    /// failed.
    pub fn pause(&mut self, id: u64) -> Result<(), String> {
        if self.node(id).paused {
            return Err(format!("node {id} is already paused"));
        }
        self.signal(id, Signal::SIGSTOP)?;
        self.node_mut(id).paused = true;
        Ok(())
    }

    /// SIGCONTs node `id`.
    pub fn resume(&mut self, id: u64) -> Result<(), String> {
        let was = self.node(id).paused;
        self.node_mut(id).paused = false;
        if !was {
            return Err(format!("node {id} is not paused"));
        }
        self.signal(id, Signal::SIGCONT)
    }

    /// Node `id`'s status, or None if it does not answer quickly.
    pub async fn status(&self, id: u64) -> Option<crate::api::pb::StatusResponse> {
        let c = self.node(id).status.clone();
        tokio::time::timeout(Duration::from_millis(800), c.status_of(0))
            .await
            .ok()?
            .ok()
    }

    /// The leader most live nodes agree on, if any.
    pub async fn leader(&self) -> Option<u64> {
        let live = self.live();
        let answers =
            futures::future::join_all(live.iter().map(|&id| async move { self.status(id).await }))
                .await;
        let mut votes = std::collections::BTreeMap::<u64, usize>::new();
        for st in answers.into_iter().flatten() {
            if st.role == "leader" {
                *votes.entry(st.id).or_default() += 2;
            } else if st.leader_id != 0 {
                *votes.entry(st.leader_id).or_default() += 1;
            }
        }
        votes
            .into_iter()
            .filter(|(id, _)| live.contains(id))
            .max_by_key(|&(id, v)| (v, std::cmp::Reverse(id)))
            .map(|(id, _)| id)
    }

    /// True when every member answers and all agree on one leader that says it leads.
    pub async fn healthy(&self) -> bool {
        let answers = futures::future::join_all(
            self.members()
                .into_iter()
                .map(|id| async move { self.status(id).await }),
        )
        .await;
        let mut leader = None;
        for st in &answers {
            let Some(st) = st else { return false };
            if st.leader_id == 0 || leader.is_some_and(|l| l != st.leader_id) {
                return false;
            }
            leader = Some(st.leader_id);
        }
        let Some(l) = leader else { return false };
        answers
            .iter()
            .flatten()
            .any(|st| st.id == l && st.role == "leader")
    }

    /// The applied index of every member (None where a member does not answer).
    pub async fn applied(&self) -> Vec<Option<u64>> {
        futures::future::join_all(
            self.members()
                .into_iter()
                .map(|id| async move { self.status(id).await.map(|s| s.applied_index) }),
        )
        .await
    }

    /// A client that talks to node `id` only.
    pub fn client_for(&self, id: u64, timeout: Duration) -> Client {
        self.client_for_with(id, timeout, timeout)
    }

    /// A client that talks to node `id` only, with a deadline per call and per attempt
    /// (its own retries stay on that node).
    pub fn client_for_with(&self, id: u64, timeout: Duration, attempt_timeout: Duration) -> Client {
        Client::with_options(
            &[self.node(id).client_addr.clone()],
            ClientOptions {
                timeout,
                attempt_timeout,
                tls: self.tls.clone(),
            },
        )
        .expect("valid endpoint")
    }

    /// A node `id` under the cluster directory with fresh ports on its IP, not started.
    fn lay_out(&self, id: u64, held: &mut Vec<TcpListener>) -> std::io::Result<ProcNode> {
        let ip = self.loopback.ip(id);
        let peer_port = free_port(ip, held)?;
        let client_port = free_port(ip, held)?;
        let client_addr = format!("{ip}:{client_port}");
        let http_addr = format!("{ip}:{}", free_port(ip, held)?);
        let resp_addr = format!("{ip}:{}", free_port(ip, held)?);
        let status = Client::with_options(
            std::slice::from_ref(&client_addr),
            ClientOptions {
                timeout: Duration::from_millis(700),
                attempt_timeout: Duration::from_millis(700),
                tls: self.tls.clone(),
            },
        )
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(ProcNode {
            id,
            ip,
            peer_port,
            peer_addr: format!("{ip}:{peer_port}"),
            client_addr,
            http_addr,
            resp_addr,
            data_dir: self.dir.join(format!("node-{id}")),
            sql_dir: None,
            log: self.dir.join(format!("node-{id}.log")),
            child: None,
            paused: false,
            member_state: MemberState::Member,
            join: None,
            peers: String::new(),
            status,
        })
    }

    /// Waits until every running node answers and they all name one leader that says it
    /// leads, for [`LEADER_SETTLED`] in a row; returns it. After `timeout`, an error with
    /// every node's status and the end of its log.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<u64, String> {
        let deadline = Instant::now() + timeout;
        // The leader every node names, and since when: right after an election a second
        // candidate can still take over (CI saw node 1 lead, then node 2, within a
        // second), and a test that acts on the first would act on a former leader.
        let mut seen: Option<(u64, Instant)> = None;
        loop {
            let running = self.running();
            let answers = futures::future::join_all(running.iter().map(|&id| async move {
                let c = self.client_for_with(id, Duration::from_secs(5), Duration::from_secs(5));
                c.status_of(0).await.ok()
            }))
            .await;
            let answered = answers.iter().all(Option::is_some);
            let statuses: Vec<_> = answers.into_iter().flatten().collect();
            let leaders: Vec<u64> = statuses
                .iter()
                .filter(|st| st.role == "leader")
                .map(|st| st.id)
                .collect();
            match (answered, leaders.as_slice()) {
                (true, &[l]) if statuses.iter().all(|st| st.leader_id == l) => match seen {
                    Some((s, since)) if s == l => {
                        if since.elapsed() >= LEADER_SETTLED {
                            return Ok(l);
                        }
                    }
                    _ => seen = Some((l, Instant::now())),
                },
                _ => seen = None,
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "timed out after {timeout:?} waiting for a leader that every running node knows\n{}",
                    self.diagnose().await
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until node `id` answers a status call (e.g. after a restart).
    pub async fn wait_answers(&self, id: u64, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let c = self.client_for_with(id, timeout, Duration::from_secs(5));
        loop {
            if c.status_of(0).await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "node {id} does not answer after {timeout:?}\n{}",
                    self.diagnose().await
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every node's status and the last lines of its log, for failure messages.
    pub async fn diagnose(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let st = self
                .client_for_with(n.id, Duration::from_secs(2), Duration::from_secs(2))
                .status_of(0)
                .await
                .map(|s| {
                    (
                        s.role,
                        s.leader_id,
                        s.config_id,
                        s.decided_index,
                        s.applied_index,
                    )
                });
            out.push_str(&format!("node {} ({}): {st:?}\n", n.id, n.client_addr));
            let log = self.log_of(n.id);
            let lines: Vec<&str> = log.lines().collect();
            for l in &lines[lines.len().saturating_sub(12)..] {
                out.push_str(&format!("  {l}\n"));
            }
        }
        out
    }

    /// The log of node `id` (empty if it has none yet).
    pub fn log_of(&self, id: u64) -> String {
        std::fs::read_to_string(&self.node(id).log).unwrap_or_default()
    }
}

impl Drop for ProcCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        release_ports(&self.ports);
    }
}
