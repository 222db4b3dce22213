//! Test harness for end-to-end tests: a cluster of real `paxosdb server` processes on
//! loopback, each with its own data directory and log file, that tests can kill with
//! SIGKILL, restart, and talk to through the real client library.
//!
//! Nothing here sleeps to synchronise: waits poll a condition until a deadline and fail
//! with a message saying what did not happen. A test that cannot run here says so with
//! [`skip`] (see `skip`): it is then counted as skipped, never as passed.

#![allow(dead_code)]

pub mod skip;
pub mod workload;

#[allow(unused_imports)]
pub use skip::{partly_skipped, running_as_root, skip, skip_unless_root};

use paxosdb::client::{Client, ClientOptions};
use paxosdb::tls::client::ClientTlsFiles;
use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_paxosdb");

/// Finds `n` distinct free TCP ports on 127.0.0.1, below the kernel's ephemeral range
/// (32768+): a port from that range, once released, can be taken as the source port of
/// any outgoing connection before a node binds it (or rebinds it after a restart).
/// A port is handed out at most once per test process: tests run in parallel, and a port
/// released by one test's check could otherwise be picked by another before the first
/// test's node binds it.
pub fn free_ports(n: usize) -> Vec<u16> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    let mut held: Vec<TcpListener> = Vec::new();
    while held.len() < n {
        let port = 10_000 + rand::random::<u16>() % 22_000;
        if given.contains(&port) {
            continue;
        }
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            given.push(port);
            held.push(l);
        }
    }
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// Polls `f` until it returns `Some`, or panics after `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub struct Node {
    pub id: u64,
    pub client_addr: String,
    pub http_addr: String,
    pub resp_addr: String,
    pub peer_addr: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// `--sql-dir`, when not the default inside the data directory.
    pub sql_dir: Option<PathBuf>,
    pub child: Option<Child>,
    /// For a node added later: the peer address of the member it joins through.
    pub join: Option<String>,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<Node>,
    pub peers: String,
    /// Extra environment of every server (PAXOSDB_* settings).
    pub env: Vec<(String, String)>,
    /// What the harness's clients use when the servers have client TLS on (from
    /// `PAXOSDB_CLIENT_TLS_DIR` D: `D/ca.pem`, and with `PAXOSDB_CLIENT_CA` the client
    /// certificate `D/client-harness.pem`, which the test makes).
    pub tls: Option<ClientTlsFiles>,
}

impl Cluster {
    /// Starts `n` nodes and waits until they agree on a leader.
    pub async fn start(n: usize) -> Cluster {
        Self::start_with(n, &[]).await
    }

    /// Starts `n` nodes with extra `PAXOSDB_*` settings.
    pub async fn start_with(n: usize, env: &[(&str, &str)]) -> Cluster {
        Self::start_at(n, None, env).await
    }

    /// Starts one node per entry of `data_dirs`, each keeping its data there (e.g. on a
    /// test file system), with extra `PAXOSDB_*` settings, and waits for a leader. Logs
    /// and the SQL databases (`--sql-dir`: SQLite's WAL index needs shared memory maps,
    /// which a direct-I/O test file system lacks) stay in the cluster's own temporary
    /// directory.
    pub async fn start_in(data_dirs: Vec<PathBuf>, env: &[(&str, &str)]) -> Cluster {
        Self::start_at(data_dirs.len(), Some(data_dirs), env).await
    }

    /// `n` nodes, with their data in `data_dirs` or else in the cluster's temporary
    /// directory; starts them and waits for a leader.
    async fn start_at(n: usize, data_dirs: Option<Vec<PathBuf>>, env: &[(&str, &str)]) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports = free_ports(4 * n);
        let nodes: Vec<Node> = (0..n)
            .map(|i| Node {
                id: i as u64 + 1,
                client_addr: format!("127.0.0.1:{}", ports[i]),
                http_addr: format!("127.0.0.1:{}", ports[2 * n + i]),
                resp_addr: format!("127.0.0.1:{}", ports[3 * n + i]),
                peer_addr: format!("127.0.0.1:{}", ports[n + i]),
                data_dir: match &data_dirs {
                    Some(d) => d[i].clone(),
                    None => dir.path().join(format!("node-{}", i + 1)),
                },
                log: dir.path().join(format!("node-{}.log", i + 1)),
                sql_dir: data_dirs
                    .is_some()
                    .then(|| dir.path().join(format!("node-{}-sql", i + 1))),
                child: None,
                join: None,
            })
            .collect();
        let peers = nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.peer_addr))
            .collect::<Vec<_>>()
            .join(",");
        let setting = |name: &str| env.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
        let tls = setting("PAXOSDB_CLIENT_TLS_DIR").map(|d| {
            let d = Path::new(d);
            let with_cert = setting("PAXOSDB_CLIENT_CA").is_some();
            ClientTlsFiles {
                ca: d.join("ca.pem"),
                cert: with_cert.then(|| d.join("client-harness.pem")),
                key: with_cert.then(|| d.join("client-harness-key.pem")),
            }
        });
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut c = Cluster {
            dir,
            nodes,
            peers,
            env,
            tls,
        };
        for id in 1..=n as u64 {
            c.spawn(id);
        }
        c.wait_for_leader().await;
        c
    }

    fn node(&self, id: u64) -> &Node {
        &self.nodes[id as usize - 1]
    }

    /// The command line that starts node `id`.
    pub fn server_command(&self, id: u64) -> Command {
        let n = self.node(id);
        let mut cmd = Command::new(BIN);
        let peers = match &n.join {
            Some(_) => format!("{id}={}", n.peer_addr),
            None => self.peers.clone(),
        };
        cmd.arg("server")
            .args(["--id", &id.to_string()])
            .args(["--peers", &peers])
            .args(["--client-addr", &n.client_addr])
            .args(["--http-addr", &n.http_addr])
            .args(["--resp-addr", &n.resp_addr])
            .arg("--data-dir")
            .arg(&n.data_dir)
            .args(
                n.sql_dir
                    .iter()
                    .flat_map(|d| [std::ffi::OsStr::new("--sql-dir"), d.as_os_str()]),
            )
            .env(
                "PAXOSDB_LOG",
                std::env::var("PAXOSDB_TEST_LOG").unwrap_or("info".into()),
            )
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(j) = &n.join {
            cmd.args(["--join", j]);
        }
        cmd
    }

    /// Starts (or restarts) node `id`, appending its output to its log file.
    pub fn spawn(&mut self, id: u64) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.node(id).log)
            .expect("log file");
        let child = self
            .server_command(id)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn paxosdb server");
        self.nodes[id as usize - 1].child = Some(child);
    }

    /// Starts a new node `id` (the next one) that joins through node `via`; it waits to
    /// be added by a membership change. Returns its peer address.
    pub fn spawn_joiner(&mut self, id: u64, via: u64) -> String {
        assert_eq!(id as usize, self.nodes.len() + 1, "joiners get the next id");
        let ports = free_ports(4);
        let node = Node {
            id,
            client_addr: format!("127.0.0.1:{}", ports[0]),
            peer_addr: format!("127.0.0.1:{}", ports[1]),
            http_addr: format!("127.0.0.1:{}", ports[2]),
            resp_addr: format!("127.0.0.1:{}", ports[3]),
            data_dir: self.dir.path().join(format!("node-{id}")),
            log: self.dir.path().join(format!("node-{id}.log")),
            sql_dir: None,
            child: None,
            join: Some(self.node(via).peer_addr.clone()),
        };
        let addr = node.peer_addr.clone();
        self.nodes.push(node);
        self.spawn(id);
        addr
    }

    /// SIGKILLs node `id` and reaps it.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.nodes[id as usize - 1].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Restarts a killed node.
    pub async fn restart(&mut self, id: u64) {
        assert!(self.node(id).child.is_none(), "node {id} is still running");
        self.spawn(id);
        let c = self.client_for(id);
        eventually(
            Duration::from_secs(20),
            &format!("node {id} answers after restart"),
            || {
                let c = c.clone();
                async move { c.status_of(0).await.ok() }
            },
        )
        .await;
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.client_addr.clone()).collect()
    }

    /// A client that knows every node.
    pub fn client(&self) -> Client {
        Client::with_options(
            &self.endpoints(),
            ClientOptions {
                tls: self.tls.clone(),
                ..Default::default()
            },
        )
        .unwrap()
    }

    /// A client bound to one node (its own retries stay on that node).
    pub fn client_for(&self, id: u64) -> Client {
        Client::with_options(
            &[self.node(id).client_addr.clone()],
            ClientOptions {
                timeout: Duration::from_secs(10),
                attempt_timeout: Duration::from_secs(5),
                tls: self.tls.clone(),
            },
        )
        .unwrap()
    }

    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.id)
            .collect()
    }

    /// Waits until every running node answers and they agree on one leader; returns it.
    /// On a timeout, fails with every node's status and the end of its log.
    pub async fn wait_for_leader(&self) -> u64 {
        let running = self.running();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut leader = None;
            let mut leaders = 0;
            let mut agreed = true;
            let mut answered = true;
            for id in &running {
                match self.client_for(*id).status_of(0).await {
                    Ok(st) => {
                        if st.role == "leader" {
                            leaders += 1;
                            leader = Some(st.id);
                        }
                        agreed &= st.leader_id != 0;
                    }
                    Err(_) => answered = false,
                }
            }
            if let (true, true, 1, Some(l)) = (answered, agreed, leaders, leader) {
                return l;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after 30s waiting for a leader that every running node knows\n{}",
                    self.diagnose().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every node's status and the last lines of its log, for failure messages.
    pub async fn diagnose(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let st = self.client_for(n.id).status_of(0).await.map(|s| {
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

    /// The running node that says it is the leader.
    pub async fn leader(&self) -> u64 {
        self.wait_for_leader().await
    }

    /// Node `id`'s applied index.
    pub async fn applied(&self, id: u64) -> Option<u64> {
        self.client_for(id)
            .status_of(0)
            .await
            .ok()
            .map(|s| s.applied_index)
    }

    /// Waits until node `id` has applied at least `index` entries (a restarted node has
    /// caught up with what the others had applied).
    pub async fn wait_applied(&self, id: u64, index: u64, timeout: Duration) {
        let what = format!("node {id} applies up to {index}");
        eventually(timeout, &what, || async move {
            (self.applied(id).await? >= index).then_some(())
        })
        .await
    }

    /// The log of node `id`, for assertion messages.
    pub fn log_of(&self, id: u64) -> String {
        std::fs::read_to_string(&self.node(id).log).unwrap_or_default()
    }

    pub fn data_dir(&self, id: u64) -> &Path {
        &self.node(id).data_dir
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
