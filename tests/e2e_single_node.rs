//! A single-node database on real processes: one `paxosdb server` (a configuration of one
//! member) serving every API and surviving kill -9 with every acknowledged write; its
//! linearizable reads served without a log entry (no fsync) and still reading every write
//! before them; growing online to three members and shrinking back to one under
//! concurrent writers, without a restart of the first node, with every acknowledged write
//! present at the end and every read of a register linearizable throughout; and
//! the README's single-node quickstart, its commands run exactly as written (with no flag
//! at all on the first server) and each output it shows checked.

mod common;
mod http_client;
use http_client::fsyncs;

use common::workload::{assert_contains_all, read_all, Writers};
use common::{eventually, readme, skip, Cluster, BIN};
use std::collections::BTreeSet;
use std::io::BufRead;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn port(addr: &str) -> &str {
    addr.rsplit_once(':').expect("host:port").1
}

/// Runs the CLI against node `id` of `c`, expecting success; returns its stdout.
fn cli(c: &Cluster, id: u64, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .env("PAXOSDB_ENDPOINTS", &c.nodes[id as usize - 1].client_addr)
        .output()
        .expect("run the CLI");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "paxosdb {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// POSTs a JSON body to the rqlite-compatible API of `http`; returns the JSON answer.
fn sql_http(http: &str, path: &str, body: &str) -> serde_json::Value {
    let r = http_client::request(
        http,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "{path} {body}: {}", r.text());
    r.json()
}

/// The node's membership size and role, through gRPC.
async fn members_and_role(c: &Cluster, id: u64) -> Option<(usize, String)> {
    let st = c.client_for(id).status_of(0).await.ok()?;
    Some((st.members.len(), st.role))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_node_serves_every_api_and_survives_kill_9() {
    let mut c = Cluster::start(1).await;
    let node = &c.nodes[0];
    let (http, resp) = (node.http_addr.clone(), node.resp_addr.clone());
    assert_eq!(
        members_and_role(&c, 1).await,
        Some((1, "leader".into())),
        "a one-member configuration leads itself"
    );

    // gRPC (the Rust client).
    let client = c.client();
    client.put(b"grpc", b"one", false).await.unwrap();
    assert_eq!(
        client.get(b"grpc", false).await.unwrap().0.unwrap().value,
        b"one"
    );
    // HTTP /v1/kv: a write, and the gRPC write read back.
    let r = http_client::put(&http, "/v1/kv/http", b"two");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = http_client::get(&http, "/v1/kv/grpc");
    assert_eq!(r.json()["value"], "one", "{}", r.text());
    assert_eq!(
        client.get(b"http", false).await.unwrap().0.unwrap().value,
        b"two"
    );
    // RESP: the redis-py script of tests/resp.rs (plain commands, pipelines, RESP3, CAS).
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/resp_client.py");
    let out = Command::new("python3")
        .args([script, "127.0.0.1", port(&resp)])
        .output()
        .expect("run python3 (scripts/setup installs it with redis-py)");
    assert!(
        out.status.success(),
        "redis-py script failed (run scripts/setup if redis-py is missing): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // SQL through /db/execute and /db/query.
    let r = sql_http(
        &http,
        "/db/execute",
        r#"["CREATE TABLE acked (id INTEGER PRIMARY KEY)", ["INSERT INTO acked(id) VALUES(?)", 0]]"#,
    );
    assert_eq!(r["results"][1]["rows_affected"], 1, "{r}");
    let r = sql_http(&http, "/db/query", r#"["SELECT count(*) FROM acked"]"#);
    assert_eq!(r["results"][0]["values"][0][0], 1, "{r}");

    // Writers over gRPC (keys) and HTTP (SQL rows); kill -9 in the middle.
    let writers = Writers::start(c.client(), 4, "w/");
    let stop = Arc::new(AtomicBool::new(false));
    let rows: Arc<Mutex<Vec<u64>>> = Arc::default();
    let sql_writer = {
        let (stop, rows, http) = (stop.clone(), rows.clone(), http.clone());
        std::thread::spawn(move || {
            let mut id = 1u64;
            while !stop.load(Ordering::Relaxed) {
                let body = format!(r#"[["INSERT INTO acked(id) VALUES(?)", {id}]]"#);
                // The node may be dead: a refused connection or an error is not an ack.
                let acked = std::panic::catch_unwind(|| {
                    http_client::request(
                        &http,
                        "POST",
                        "/db/execute",
                        &[("Content-Type", "application/json")],
                        body.as_bytes(),
                    )
                })
                .ok()
                .filter(|r| r.status == 200 && r.json()["results"][0]["rows_affected"] == 1);
                if acked.is_some() {
                    rows.lock().unwrap().push(id);
                }
                id += 1;
            }
        })
    };
    writers.wait_for(300, "300 acknowledged writes").await;
    eventually(
        Duration::from_secs(30),
        "20 acknowledged SQL rows",
        || async { (rows.lock().unwrap().len() >= 20).then_some(()) },
    )
    .await;
    c.kill(1);
    let acked = writers.finish().await;
    stop.store(true, Ordering::Relaxed);
    sql_writer.join().unwrap();
    let acked_rows: Vec<u64> = rows.lock().unwrap().clone();

    c.restart(1).await;
    c.wait_for_leader().await;
    let have = read_all(&c.client(), "w/").await;
    assert_contains_all(&have, &acked);
    let r = sql_http(&http, "/db/query", r#"["SELECT id FROM acked"]"#);
    let present: BTreeSet<u64> = r["results"][0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row[0].as_u64().unwrap())
        .collect();
    let missing: Vec<_> = acked_rows
        .iter()
        .filter(|id| !present.contains(id))
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged SQL rows lost: {missing:?}"
    );
    // And it goes on taking writes.
    c.client().put(b"after", b"restart", false).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_reads_on_one_node_take_no_fsync_and_read_your_writes() {
    let c = Cluster::start(1).await;
    let http = c.nodes[0].http_addr.clone();
    let client = c.client();
    sql_http(
        &http,
        "/db/execute",
        r#"["CREATE TABLE ryw (id INTEGER PRIMARY KEY)"]"#,
    );
    let count_rows = || {
        let r = sql_http(&http, "/db/query", r#"["SELECT count(*) FROM ryw"]"#);
        r["results"][0]["values"][0][0].as_u64().unwrap()
    };
    let before = fsyncs(&http);
    // Each write through one API, then read back linearizably through the others, at
    // once: the reads answer from the node's state, which already holds the write.
    const N: u64 = 30;
    for i in 0..N {
        let value = format!("v{i}");
        if i % 2 == 0 {
            client.put(b"ryw", value.as_bytes(), false).await.unwrap();
        } else {
            let r = http_client::put(&http, "/v1/kv/ryw", value.as_bytes());
            assert_eq!(r.status, 200, "{}", r.text());
        }
        let (got, _) = client.get(b"ryw", false).await.unwrap();
        assert_eq!(
            got.unwrap().value,
            value.as_bytes(),
            "gRPC read after write {i}"
        );
        let r = http_client::get(&http, "/v1/kv/ryw");
        assert_eq!(
            r.json()["value"],
            value,
            "HTTP read after write {i}: {}",
            r.text()
        );
        let body = format!(r#"[["INSERT INTO ryw(id) VALUES(?)", {i}]]"#);
        sql_http(&http, "/db/execute", &body);
        assert_eq!(count_rows(), i + 1, "SQL read after insert {i}");
    }
    // One fsync per write (2 per round), none per read (3 per round); a barrier per read
    // would be 5 per round.
    let spent = fsyncs(&http) - before;
    assert!(
        (2 * N..=2 * N + 3).contains(&spent),
        "{spent} fsyncs for {} writes and {} linearizable reads",
        2 * N,
        3 * N
    );
    // Reads alone: not one fsync.
    let before = fsyncs(&http);
    const READS: u64 = 300;
    for i in 0..READS {
        let (got, _) = client.get(b"ryw", false).await.unwrap();
        assert_eq!(got.unwrap().value, format!("v{}", N - 1).as_bytes());
        if i % 10 == 0 {
            assert_eq!(count_rows(), N);
            let r = http_client::get(&http, "/v1/kv/ryw");
            assert_eq!(r.status, 200, "{}", r.text());
        }
    }
    let spent = fsyncs(&http) - before;
    assert_eq!(
        spent,
        0,
        "{spent} fsyncs for {} linearizable reads on a single node",
        READS + READS / 5
    );
}

/// A register checked for linearizable reads while the membership changes: one writer
/// puts 1, 2, 3, ... under one key, each through the next node of `through` in turn;
/// readers read the key through the nodes in another turn. A read must return at least
/// the last number acknowledged before it began, or a number whose write's outcome was
/// unknown (such a write may take effect late). Each number is written once.
struct Register {
    stop: Arc<AtomicBool>,
    /// Clients of the nodes that currently serve, one each.
    through: Arc<Mutex<Vec<paxosdb::client::Client>>>,
    acked: Arc<std::sync::atomic::AtomicU64>,
    unknown: Arc<Mutex<BTreeSet<u64>>>,
    reads: Arc<std::sync::atomic::AtomicU64>,
    violations: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

const REGISTER: &[u8] = b"register";

impl Register {
    fn start(first: paxosdb::client::Client, readers: usize) -> Register {
        let r = Register {
            stop: Arc::default(),
            through: Arc::new(Mutex::new(vec![first])),
            acked: Arc::default(),
            unknown: Arc::default(),
            reads: Arc::default(),
            violations: Arc::default(),
            tasks: Vec::new(),
        };
        let pick = |through: &Mutex<Vec<paxosdb::client::Client>>, i: usize| {
            let t = through.lock().unwrap();
            t[i % t.len()].clone()
        };
        let mut tasks = Vec::new();
        {
            let (stop, through, acked, unknown) = (
                r.stop.clone(),
                r.through.clone(),
                r.acked.clone(),
                r.unknown.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let c = pick(&through, n as usize);
                    match c.put(REGISTER, n.to_string().as_bytes(), false).await {
                        Ok(_) => acked.store(n, Ordering::SeqCst),
                        Err(_) => {
                            unknown.lock().unwrap().insert(n);
                        }
                    }
                }
            }));
        }
        for k in 0..readers {
            let (stop, through, acked, unknown, reads, violations) = (
                r.stop.clone(),
                r.through.clone(),
                r.acked.clone(),
                r.unknown.clone(),
                r.reads.clone(),
                r.violations.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut i = k + 1;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let floor = acked.load(Ordering::SeqCst);
                    let c = pick(&through, i);
                    // An error (a node being removed, no leader yet) is no answer.
                    let Ok((got, _)) = c.get(REGISTER, false).await else {
                        continue;
                    };
                    reads.fetch_add(1, Ordering::Relaxed);
                    let n: u64 =
                        got.map_or(0, |v| String::from_utf8(v.value).unwrap().parse().unwrap());
                    if n < floor && !unknown.lock().unwrap().contains(&n) {
                        violations.lock().unwrap().push(format!(
                            "a read returned {n} after {floor} was acknowledged"
                        ));
                    }
                }
            }));
        }
        Register { tasks, ..r }
    }

    /// Reads and writes go through exactly the nodes of `clients` from now on.
    fn through(&self, clients: Vec<paxosdb::client::Client>) {
        *self.through.lock().unwrap() = clients;
    }

    fn acked(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }

    /// Stops; returns (acknowledged writes, answered reads), or fails on a stale read.
    async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let violations = self.violations.lock().unwrap();
        assert!(
            violations.is_empty(),
            "{} reads were not linearizable, e.g. {:?}",
            violations.len(),
            &violations[..violations.len().min(5)]
        );
        (
            self.acked.load(Ordering::SeqCst),
            self.reads.load(Ordering::Relaxed),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grows_from_one_to_three_and_back_under_writers() {
    let mut c = Cluster::start(1).await;
    let first_pid = c.nodes[0].child.as_ref().unwrap().id();
    // Writers through node 1, which stays a member throughout.
    let writers = Writers::start(c.client_for(1), 4, "g/");
    // A register written and read through every serving node in turn.
    let register = Register::start(c.client_for(1), 2);
    writers.wait_for(100, "writes while alone").await;

    for id in 2..=3u64 {
        let addr = c.spawn_joiner(id, 1);
        let out = cli(&c, 1, &["cluster", "add-node", &id.to_string(), &addr]);
        assert!(out.contains(&format!("configuration {id}")), "{out}");
        let c = &c;
        eventually(
            Duration::from_secs(60),
            &format!("node {id} serves in a cluster of {id}"),
            || async move {
                let (n, role) = members_and_role(c, id).await?;
                (n == id as usize && (role == "leader" || role == "follower")).then_some(())
            },
        )
        .await;
        register.through((1..=id).map(|i| c.client_for(i)).collect());
        let n = writers.acked();
        writers
            .wait_for(n + 50, &format!("writes go on with {id} members"))
            .await;
    }
    let n = register.acked();
    eventually(
        Duration::from_secs(30),
        "register writes through three members",
        || async { (register.acked() >= n + 20).then_some(()) },
    )
    .await;
    // The newest member holds everything acknowledged so far, read through it.
    let so_far = {
        let n = writers.acked();
        writers.wait_for(n + 1, "one more write").await;
        read_all(&c.client_for(3), "g/").await
    };
    assert!(so_far.len() >= 200, "{}", so_far.len());

    for id in [3u64, 2] {
        register.through((1..id).map(|i| c.client_for(i)).collect());
        let out = cli(&c, 1, &["cluster", "remove-node", &id.to_string()]);
        assert!(!out.contains(&format!("{id}=127.")), "{out}");
        let c = &c;
        eventually(
            Duration::from_secs(30),
            &format!("node {id} reports that it was removed"),
            || async move {
                let (_, role) = members_and_role(c, id).await?;
                (role == "removed").then_some(())
            },
        )
        .await;
        let n = writers.acked();
        writers
            .wait_for(n + 50, "writes go on after a removal")
            .await;
    }
    assert_eq!(members_and_role(&c, 1).await, Some((1, "leader".into())));
    let n = register.acked();
    eventually(
        Duration::from_secs(30),
        "register writes alone again",
        || async { (register.acked() >= n + 20).then_some(()) },
    )
    .await;
    let (register_writes, register_reads) = register.finish().await;
    println!("register: {register_writes} writes, {register_reads} linearizable reads checked");
    assert!(register_reads >= 100, "{register_reads} register reads");
    let acked = writers.finish().await;
    let have = read_all(&c.client_for(1), "g/").await;
    assert_contains_all(&have, &acked);
    assert_contains_all(&have, &so_far);
    // The first node was never restarted.
    let first = c.nodes[0].child.as_mut().unwrap();
    assert_eq!(first.id(), first_pid);
    assert!(first.try_wait().unwrap().is_none(), "node 1 exited");
}

/// Processes started by the README's commands, killed (with their process group) at the end.
struct Background(Vec<Child>);

impl Drop for Background {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = c.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_single_node_quickstart_runs_as_written() {
    const TEST: &str = "readme_single_node_quickstart_runs_as_written";
    // The README's ports: node N's gRPC 7000+N, peer 7100+N, HTTP 8079+N, Redis 6378+N.
    let busy: Vec<u16> = (1..=3)
        .flat_map(|n| [7000 + n, 7100 + n, 8079 + n, 6378 + n])
        .filter(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_err())
        .collect();
    if !busy.is_empty() {
        return skip(
            TEST,
            &format!("the README's default ports {busy:?} are in use"),
        );
    }
    for tool in ["redis-cli", "curl"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(found, "{tool} is not installed; run scripts/setup");
    }
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("read README.md");
    let dir = tempfile::tempdir().unwrap();
    let mut background = Background(Vec::new());

    // The server block: `paxosdb server`, no flag at all, in the foreground of its
    // terminal; here in the background, its output kept for failure messages.
    let server = readme::block(&readme, "single-node-server");
    assert_eq!(server.len(), 1, "one server command: {server:?}");
    assert_eq!(
        server[0].0, "paxosdb server",
        "the quickstart needs no flag"
    );
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = readme::shell(dir.path(), &format!("exec {}", server[0].0))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .process_group(0)
        .spawn()
        .expect("start paxosdb server");
    background.0.push(child);
    let server_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    eventually(
        Duration::from_secs(30),
        "`paxosdb server` says it serves",
        || async {
            server_log()
                .contains("paxosdb: node 1 serving")
                .then_some(())
        },
    )
    .await;
    assert!(dir.path().join("paxosdb-data").is_dir(), "{}", server_log());

    for block in [
        "single-node-client",
        "single-node-grow",
        "single-node-shrink",
    ] {
        for (cmd, want) in readme::block(&readme, block) {
            if let Some(bg) = cmd.strip_suffix(" &") {
                let child = readme::shell(dir.path(), &format!("exec {bg}"))
                    .stdin(Stdio::null())
                    .process_group(0)
                    .spawn()
                    .unwrap_or_else(|e| panic!("{cmd}: {e}"));
                background.0.push(child);
                continue;
            }
            let out = tokio::task::spawn_blocking({
                let (dir, cmd) = (dir.path().to_path_buf(), cmd.clone());
                move || readme::shell(&dir, &cmd).stdin(Stdio::null()).output()
            })
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{cmd}: {e}"));
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "README command failed: {cmd}\n{stdout}{}\nserver log:\n{}",
                String::from_utf8_lossy(&out.stderr),
                server_log()
            );
            let got: Vec<String> = stdout.lines().map(|l| l.trim_end().to_string()).collect();
            let want: Vec<String> = if cmd.starts_with("redis-cli") {
                want.iter().map(|l| readme::piped_redis(l)).collect()
            } else {
                want
            };
            assert_eq!(got, want, "README command: {cmd}");
        }
    }
    // Node 1 served all along: the server started first never stopped.
    assert!(
        background.0[0].try_wait().unwrap().is_none(),
        "{}",
        server_log()
    );
    // Ctrl-C stops it cleanly, and `paxosdb server` again finds the data.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(background.0[0].id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = background.0[0].wait().unwrap();
    assert!(status.success(), "{status:?}\n{}", server_log());
    let mut again = readme::shell(dir.path(), "exec paxosdb server")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(again.stdout.take().unwrap()).lines();
    let banner = lines.next().unwrap().unwrap();
    // Keep reading what it prints, as a terminal would.
    std::thread::spawn(move || lines.for_each(drop));
    background.0.push(again);
    assert!(banner.contains("single-node database"), "{banner}");
    let out = readme::shell(dir.path(), "paxosdb get hello")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "world",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_up_with_one_node_is_a_secured_single_node_database() {
    let dir = tempfile::tempdir().unwrap();
    // A base port whose four ports (gRPC, peer, HTTP, RESP of node 1) are free.
    let base = loop {
        let b = 10000 + (rand::random::<u16>() % 20000); // below the ephemeral range
        let free = [1, 101, 201, 301]
            .iter()
            .all(|o| std::net::TcpListener::bind(("127.0.0.1", b + o)).is_ok());
        if free {
            break b;
        }
    };
    let mut up = Command::new(BIN)
        .args([
            "cluster",
            "up",
            "--nodes",
            "1",
            "--base-port",
            &base.to_string(),
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Its client config names the endpoint, the CA and the password: TLS and credentials.
    let run = |args: &[&str]| {
        Command::new(BIN)
            .arg("--client-config")
            .arg(dir.path().join("client.toml"))
            .args(["--timeout", "5s"])
            .args(args)
            .env_remove("PAXOSDB_ENDPOINTS")
            .env_remove("PAXOSDB_CACERT")
            .env_remove("PAXOSDB_USER")
            .env_remove("PAXOSDB_PASSWORD")
            .env_remove("PAXOSDB_PASSWORD_FILE")
            .env_remove("PAXOSDB_TOKEN")
            .output()
            .unwrap()
    };
    eventually(
        Duration::from_secs(30),
        "cluster up accepts a write",
        || async { run(&["put", "one", "node"]).status.success().then_some(()) },
    )
    .await;
    let got = run(&["get", "one"]);
    assert_eq!(
        String::from_utf8_lossy(&got.stdout).trim(),
        "node",
        "{got:?}"
    );
    let status = run(&["status", "--json"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("\"leader\""), "{text}");
    // Without credentials (or without the CA) it refuses.
    let plain = Command::new(BIN)
        .args([
            "--endpoints",
            &format!("127.0.0.1:{}", base + 1),
            "--timeout",
            "3s",
        ])
        .args(["get", "one"])
        .env_remove("PAXOSDB_CLIENT_CONFIG")
        .env_remove("PAXOSDB_CACERT")
        .output()
        .unwrap();
    assert!(!plain.status.success(), "{plain:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(up.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    assert!(up.wait().unwrap().success());
}
