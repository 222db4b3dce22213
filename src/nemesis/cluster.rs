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

use super::clients::NodeAddrs;
use crate::client::{Client, ClientOptions};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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
    pub client_addr: String,
    /// The HTTP and RESP listeners (the workload speaks all three protocols).
    pub http_addr: String,
    pub resp_addr: String,
    pub data_dir: PathBuf,
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
        format!("{}:{}", self.ip, self.peer_port)
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
}

/// A free TCP port on `ip` (free now; the caller binds it soon after). Taken below the
/// kernel's ephemeral range (32768+), so that no outgoing connection's source port takes
/// it between now and the node's bind — or its rebind after a kill and restart.
fn free_port(ip: Ipv4Addr, held: &mut Vec<TcpListener>) -> std::io::Result<u16> {
    for _ in 0..10_000 {
        let port = 10_000 + rand::random::<u16>() % 22_000;
        if let Ok(l) = TcpListener::bind(SocketAddrV4::new(ip, port)) {
            held.push(l);
            return Ok(port);
        }
    }
    Err(std::io::Error::other(
        "no free port below the ephemeral range",
    ))
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
        let mut held = Vec::new();
        let mut nodes = Vec::new();
        for i in 0..n {
            nodes.push(lay_out(dir, i as u64 + 1, &mut held)?);
        }
        drop(held);
        let peers = nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.peer_addr()))
            .collect::<Vec<_>>()
            .join(",");
        for n in &mut nodes {
            n.peers = peers.clone();
        }
        let mut c = ProcCluster {
            binary: binary.to_path_buf(),
            dir: dir.to_path_buf(),
            nodes,
            config_id: 1,
            size: n,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
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
        if id > 254 {
            return Err(std::io::Error::other("no loopback IP left for a new node"));
        }
        let mut held = Vec::new();
        let mut n = lay_out(&self.dir, id, &mut held)?;
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
        let n = self.node(id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)?;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("server")
            .args(["--id", &id.to_string()])
            .args(["--peers", &n.peers]);
        if let Some(join) = &n.join {
            cmd.args(["--join", join]);
        }
        let child = cmd
            .args(["--client-addr", &n.client_addr])
            // Fresh ports of their own: the defaults would collide between runs sharing
            // the machine.
            .args(["--http-addr", &n.http_addr, "--resp-addr", &n.resp_addr])
            .arg("--data-dir")
            .arg(&n.data_dir)
            .env("PAXOSDB_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let n = self.node_mut(id);
        n.child = Some(child);
        n.paused = false;
        Ok(())
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
        Client::with_options(
            &[self.node(id).client_addr.clone()],
            ClientOptions {
                timeout,
                attempt_timeout: timeout,
                tls: None,
            },
        )
        .expect("valid endpoint")
    }
}

/// A node `id` under `dir` with fresh ports on `127.0.0.id`, not started.
fn lay_out(dir: &Path, id: u64, held: &mut Vec<TcpListener>) -> std::io::Result<ProcNode> {
    let ip = Ipv4Addr::new(127, 0, 0, id as u8);
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
            tls: None,
        },
    )
    .map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(ProcNode {
        id,
        ip,
        peer_port,
        client_addr,
        http_addr,
        resp_addr,
        data_dir: dir.join(format!("node-{id}")),
        log: dir.join(format!("node-{id}.log")),
        child: None,
        paused: false,
        member_state: MemberState::Member,
        join: None,
        peers: String::new(),
        status,
    })
}

impl Drop for ProcCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
