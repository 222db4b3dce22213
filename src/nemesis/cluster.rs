//! A cluster of real `paxosdb server` processes for the nemesis, one loopback IP per node.
//!
//! Node `i` (1-based) listens on `127.0.0.i` for both its peer port and its client port,
//! and its outgoing peer connections leave from that IP too (the transport binds to the
//! node's own peer IP). So a firewall rule naming two nodes' IPs and peer ports cuts
//! exactly the link between them while clients still reach every node.
//!
//! The cluster owns its children: dropping it SIGKILLs every node (paused ones included).

use crate::client::{Client, ClientOptions};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// One node: where it listens, where it keeps its data, and its process if running.
pub struct ProcNode {
    pub id: u64,
    pub ip: Ipv4Addr,
    pub peer_port: u16,
    pub client_addr: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
    pub paused: bool,
    status: Client,
}

pub struct ProcCluster {
    pub binary: PathBuf,
    pub dir: PathBuf,
    pub nodes: Vec<ProcNode>,
    peers: String,
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
            let ip = Ipv4Addr::new(127, 0, 0, i as u8 + 1);
            let peer_port = free_port(ip, &mut held)?;
            let client_port = free_port(ip, &mut held)?;
            let client_addr = format!("{ip}:{client_port}");
            let status = Client::with_options(
                std::slice::from_ref(&client_addr),
                ClientOptions {
                    timeout: Duration::from_millis(700),
                    attempt_timeout: Duration::from_millis(700),
                },
            )
            .map_err(|e| std::io::Error::other(e.to_string()))?;
            nodes.push(ProcNode {
                id: i as u64 + 1,
                ip,
                peer_port,
                client_addr,
                data_dir: dir.join(format!("node-{}", i + 1)),
                log: dir.join(format!("node-{}.log", i + 1)),
                child: None,
                paused: false,
                status,
            });
        }
        drop(held);
        let peers = nodes
            .iter()
            .map(|n| format!("{}={}:{}", n.id, n.ip, n.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = ProcCluster {
            binary: binary.to_path_buf(),
            dir: dir.to_path_buf(),
            nodes,
            peers,
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

    pub fn node(&self, id: u64) -> &ProcNode {
        &self.nodes[id as usize - 1]
    }

    fn node_mut(&mut self, id: u64) -> &mut ProcNode {
        &mut self.nodes[id as usize - 1]
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.client_addr.clone()).collect()
    }

    /// Starts node `id` (again), appending its output to its log file.
    pub fn spawn(&mut self, id: u64) -> std::io::Result<()> {
        let n = self.node(id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)?;
        let child = Command::new(&self.binary)
            .arg("server")
            .args(["--id", &id.to_string()])
            .args(["--peers", &self.peers])
            .args(["--client-addr", &n.client_addr])
            // The workload speaks gRPC only; the other listeners would collide between
            // runs sharing the machine.
            .args(["--http-addr", "off", "--resp-addr", "off"])
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

    /// Nodes whose process exists (paused or not).
    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.id)
            .collect()
    }

    /// Nodes that are running and not paused.
    pub fn live(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some() && !n.paused)
            .map(|n| n.id)
            .collect()
    }

    pub fn killed(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_none())
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

    /// SIGKILLs node `id` and reaps it. Returns false if it was not running.
    pub fn kill(&mut self, id: u64) -> bool {
        let n = self.node_mut(id);
        n.paused = false;
        match n.child.take() {
            Some(mut child) => {
                let _ = child.kill();
                let _ = child.wait();
                true
            }
            None => false,
        }
    }

    fn signal(&mut self, id: u64, sig: Signal) -> bool {
        match &self.node(id).child {
            Some(child) => kill(Pid::from_raw(child.id() as i32), sig).is_ok(),
            None => false,
        }
    }

    /// SIGSTOPs node `id`.
    pub fn pause(&mut self, id: u64) -> bool {
        let ok = !self.node(id).paused && self.signal(id, Signal::SIGSTOP);
        if ok {
            self.node_mut(id).paused = true;
        }
        ok
    }

    /// SIGCONTs node `id`.
    pub fn resume(&mut self, id: u64) -> bool {
        let ok = self.node(id).paused && self.signal(id, Signal::SIGCONT);
        self.node_mut(id).paused = false;
        ok
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

    /// True when every node answers and all agree on one leader that says it leads.
    pub async fn healthy(&self) -> bool {
        let answers = futures::future::join_all(
            self.ids()
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

    /// The applied index of every node (None where a node does not answer).
    pub async fn applied(&self) -> Vec<Option<u64>> {
        futures::future::join_all(
            self.ids()
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
            },
        )
        .expect("valid endpoint")
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
    }
}
