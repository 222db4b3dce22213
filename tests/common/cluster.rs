//! The end-to-end tests' face on the project's process-cluster harness
//! (`paxosdb::nemesis::cluster::ProcCluster`): a [`Cluster`] owns a temporary directory
//! and a `ProcCluster` laid out in it, every node on `127.0.0.1` (what `paxosdb certs`
//! certificates and tools like `redis-cli -h 127.0.0.1` expect), and its `start`
//! functions return once the nodes agree on a leader.
//!
//! A [`Cluster`] dereferences to its `ProcCluster`, so `c.nodes[i].resp_addr`,
//! `c.nodes[i].peer_addr` and the rest of the shared harness are at hand; the methods
//! below with the same names as the shared harness's (`kill`, `spawn`, `leader`,
//! `client_for`, `endpoints`, `applied`) are the tests' forms of them: they panic with the
//! nodes' logs instead of returning errors, and take the tests' usual arguments.
//!
//! Setups several test files share are options of [`ClusterBuilder`]
//! ([`Cluster::builder`]): TLS directories (peer, client, client certificates),
//! certificates made by `paxosdb certs`, an administrator with a password file, the
//! data directories elsewhere, and `PAXOSDB_*` settings.
//!
//! Invariants:
//! - ports are handed out through the shared harness's registry ([`free_ports`] too):
//!   one test process never gives the same port twice while its holder may still bind it;
//! - `kill` of a running node either kills it or fails the test (a node that exited by
//!   itself before the kill is a crash the test must see); of a stopped node, nothing;
//! - field order: the processes are killed (the `ProcCluster` dropped) before the
//!   temporary directory is removed.

use super::eventually;
use paxosdb::client::{Auth, Client, ClientOptions};
use paxosdb::nemesis::cluster::{free_port, ClusterSpec, Loopback, ProcCluster};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_paxosdb");

/// The administrator's name in clusters started with [`ClusterBuilder::admin`].
pub const ADMIN_USER: &str = "admin";

/// The administrator's password file in the cluster's directory
/// ([`Cluster::admin_password_file`]).
const ADMIN_PASSWORD_FILE: &str = "admin-password";

/// How long a cluster may take to elect its first leader, or an administrator to reach
/// every node.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Finds `n` distinct free TCP ports on 127.0.0.1, below the kernel's ephemeral range,
/// through the shared harness's registry: a port is handed out at most once per test
/// process (tests run in parallel, and a port released by one test's check could
/// otherwise be picked by another before the first test's node binds it).
pub fn free_ports(n: usize) -> Vec<u16> {
    let mut held = Vec::new();
    (0..n)
        .map(|_| free_port(Ipv4Addr::LOCALHOST, &mut held).expect("a free port"))
        .collect()
}

pub struct Cluster {
    /// The shared harness's cluster; declared first, so dropped (its processes killed)
    /// before the directory below is removed.
    inner: ProcCluster,
    pub dir: tempfile::TempDir,
    /// The initial nodes' `--peers` (`1=addr,2=addr,...`).
    pub peers: String,
    /// The administrator's password, when started with one.
    pub admin_password: Option<String>,
}

impl std::ops::Deref for Cluster {
    type Target = ProcCluster;
    fn deref(&self) -> &ProcCluster {
        &self.inner
    }
}

impl std::ops::DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut ProcCluster {
        &mut self.inner
    }
}

/// Options of a cluster to start: see [`Cluster::builder`].
pub struct ClusterBuilder {
    spec: ClusterSpec,
    dir: tempfile::TempDir,
    admin_password: Option<String>,
}

impl ClusterBuilder {
    /// The cluster's directory (the nodes' own directories, logs and, with
    /// [`ClusterBuilder::data_dirs`], their SQL databases `node-N-sql` go there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Adds `PAXOSDB_*` settings of every server.
    pub fn env(mut self, env: &[(&str, &str)]) -> Self {
        self.spec = self.spec.env(env);
        self
    }

    /// Peer and client TLS with the certificates in `dir` (made by `paxosdb certs
    /// --dir dir`); the harness's clients trust `dir/ca.pem`.
    pub fn tls(mut self, dir: &Path) -> Self {
        self.spec = self.spec.peer_tls(dir).client_tls(dir);
        self
    }

    /// Peer TLS only, with the certificates in `dir`.
    pub fn peer_tls(mut self, dir: &Path) -> Self {
        self.spec = self.spec.peer_tls(dir);
        self
    }

    /// Client TLS requiring client certificates signed by `client_ca`; the harness's
    /// clients show `client-harness.pem` of the TLS directory (which the test makes:
    /// `paxosdb certs --client harness`). After [`ClusterBuilder::tls`].
    pub fn client_ca(mut self, client_ca: &Path) -> Self {
        self.spec = self.spec.client_ca(client_ca);
        self
    }

    /// Makes certificates with `paxosdb certs` in the cluster's directory
    /// ([`Cluster::tls_dir`]) and turns peer and client TLS on with them.
    pub fn certs(self) -> Self {
        let dir = self.dir.path().join("tls");
        certs(&["--dir", dir.to_str().unwrap()]);
        self.tls(&dir)
    }

    /// An administrator `admin` ([`ADMIN_USER`]) with `password`, from a private
    /// password file in the cluster's directory; `start` returns once every node
    /// authenticates it.
    pub fn admin(mut self, password: &str) -> Self {
        let file = self.dir.path().join(ADMIN_PASSWORD_FILE);
        private_file(&file, &format!("{password}\n"));
        self.admin_password = Some(password.to_string());
        self.env(&[
            ("PAXOSDB_ADMIN_PASSWORD_FILE", file.to_str().unwrap()),
            ("PAXOSDB_ADMIN_USER", ADMIN_USER),
        ])
    }

    /// Node `i` keeps its data in `data_dirs[i - 1]` (e.g. on a test file system); logs
    /// and the SQL databases (`--sql-dir`: SQLite's WAL index needs shared memory maps,
    /// which a direct-I/O test file system lacks) stay in the cluster's own directory.
    pub fn data_dirs(mut self, data_dirs: Vec<PathBuf>) -> Self {
        self.spec.size = data_dirs.len();
        self.spec.data_dirs = Some(data_dirs);
        self.spec.sql_dirs_apart = true;
        self
    }

    /// Starts the nodes and waits until they agree on a leader (and, with an
    /// administrator, until every node authenticates it).
    pub async fn start(self) -> Cluster {
        let mut spec = self.spec;
        // Client TLS named only through settings (`.env(..)` or `start_with`) is still
        // what the harness's clients must speak.
        let setting = |spec: &ClusterSpec, name: &str| {
            spec.env
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| PathBuf::from(v))
        };
        if spec.tls.is_none() {
            if let Some(dir) = setting(&spec, "PAXOSDB_CLIENT_TLS_DIR") {
                spec = spec.client_tls(&dir);
            }
        }
        if let Some(ca) = setting(&spec, "PAXOSDB_CLIENT_CA") {
            if spec.tls.as_ref().is_some_and(|t| t.cert.is_none()) {
                spec = spec.client_ca(&ca);
            }
        }
        // PAXOSDB_TEST_LOG picks the servers' log level (info by default).
        let level = std::env::var("PAXOSDB_TEST_LOG").unwrap_or("info".into());
        spec.env.insert(0, ("PAXOSDB_LOG".into(), level));
        let inner = ProcCluster::start_spec(Path::new(BIN), self.dir.path(), spec)
            .expect("start the paxosdb servers");
        let peers = inner
            .nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.peer_addr))
            .collect::<Vec<_>>()
            .join(",");
        let c = Cluster {
            inner,
            dir: self.dir,
            peers,
            admin_password: self.admin_password,
        };
        c.wait_for_leader().await;
        if c.admin_password.is_some() {
            c.wait_for_admin().await;
        }
        c
    }
}

impl Cluster {
    /// Starts `n` nodes and waits until they agree on a leader.
    pub async fn start(n: usize) -> Cluster {
        Self::builder(n).start().await
    }

    /// Starts `n` nodes with extra `PAXOSDB_*` settings.
    pub async fn start_with(n: usize, env: &[(&str, &str)]) -> Cluster {
        Self::builder(n).env(env).start().await
    }

    /// Starts one node per entry of `data_dirs` (see [`ClusterBuilder::data_dirs`]),
    /// with extra `PAXOSDB_*` settings, and waits for a leader.
    pub async fn start_in(data_dirs: Vec<PathBuf>, env: &[(&str, &str)]) -> Cluster {
        Self::builder(0).data_dirs(data_dirs).env(env).start().await
    }

    /// `n` nodes on `127.0.0.1`, no TLS, no administrator: change with the builder's
    /// methods, then [`ClusterBuilder::start`].
    pub fn builder(n: usize) -> ClusterBuilder {
        let mut spec = ClusterSpec::new(n);
        spec.loopback = Loopback::Shared;
        ClusterBuilder {
            spec,
            dir: tempfile::tempdir().expect("tempdir"),
            admin_password: None,
        }
    }

    /// The certificates [`ClusterBuilder::certs`] made.
    pub fn tls_dir(&self) -> PathBuf {
        self.dir.path().join("tls")
    }

    /// Starts (or restarts) node `id`, appending its output to its log file.
    pub fn spawn(&mut self, id: u64) {
        self.inner.spawn(id).expect("spawn paxosdb server");
    }

    /// Starts a new node `id` (the next one) that joins through node `via`; it waits to
    /// be added by a membership change. Returns its peer address.
    pub fn spawn_joiner(&mut self, id: u64, via: u64) -> String {
        assert_eq!(id as usize, self.nodes.len() + 1, "joiners get the next id");
        let got = self.inner.add_joiner(via).expect("start a joining node");
        self.node(got).peer_addr.clone()
    }

    /// SIGKILLs node `id` and reaps it; nothing if it is not running. Fails the test if
    /// the node had exited by itself (a crash) or the kill failed.
    pub fn kill(&mut self, id: u64) {
        if self.node(id).child.is_none() {
            return;
        }
        if let Err(e) = self.inner.kill(id) {
            panic!("{e}\n{}", self.log_of(id));
        }
    }

    /// Restarts a killed node and waits until it answers.
    pub async fn restart(&mut self, id: u64) {
        assert!(self.node(id).child.is_none(), "node {id} is still running");
        self.spawn(id);
        if let Err(e) = self.inner.wait_answers(id, Duration::from_secs(20)).await {
            panic!("after restart: {e}");
        }
    }

    /// Every node's client (gRPC) address.
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
        self.inner
            .client_for_with(id, Duration::from_secs(10), Duration::from_secs(5))
    }

    /// A client of every node that authenticates as the administrator.
    pub fn admin_client(&self) -> Client {
        self.client().with_auth(self.admin_auth()).unwrap()
    }

    /// The file holding the administrator's password (a cluster started with
    /// [`ClusterBuilder::admin`]), e.g. for a CLI's `PAXOSDB_PASSWORD_FILE`.
    pub fn admin_password_file(&self) -> PathBuf {
        self.dir.path().join(ADMIN_PASSWORD_FILE)
    }

    /// The administrator's credentials (a cluster started with
    /// [`ClusterBuilder::admin`]).
    pub fn admin_auth(&self) -> Option<Auth> {
        let password = self.admin_password.clone().expect("started with an admin");
        Some(Auth::Password {
            user: ADMIN_USER.into(),
            password,
        })
    }

    /// Waits until every running node answers and they agree on one leader; returns it.
    /// On a timeout, fails with every node's status and the end of its log.
    pub async fn wait_for_leader(&self) -> u64 {
        match self.inner.wait_for_leader(START_TIMEOUT).await {
            Ok(l) => l,
            Err(e) => panic!("{e}"),
        }
    }

    /// Waits until every node authenticates the administrator (the first administrator
    /// is proposed at start and reaches each node as it applies the log).
    async fn wait_for_admin(&self) {
        for id in self.running() {
            let c = self.client_for(id).with_auth(self.admin_auth()).unwrap();
            let what = format!("node {id} knows the admin user");
            eventually(START_TIMEOUT, &what, || {
                let c = c.clone();
                // A stale read is answered by the node itself: it authenticated the user.
                async move { c.get(b"x", true).await.ok() }
            })
            .await;
        }
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

    pub fn data_dir(&self, id: u64) -> &Path {
        &self.node(id).data_dir
    }
}

/// `paxosdb certs ARGS`; fails the test if it fails.
pub fn certs(args: &[&str]) {
    let out = Command::new(BIN).arg("certs").args(args).output().unwrap();
    assert!(out.status.success(), "paxosdb certs {args:?}: {out:?}");
}

/// Writes `contents` to a file only its owner may read.
pub fn private_file(path: &Path, contents: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}
