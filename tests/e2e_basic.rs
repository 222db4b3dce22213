//! End-to-end tests of the built binary without faults: replication across nodes, the
//! CLI (exit codes, JSON, `cluster up`), and bad input of every kind — oversized values,
//! empty keys, garbage on the client and peer ports, wrong configuration, a data
//! directory in use — each answered with a clear error, changing nothing, the node
//! still serving.

mod common;

use common::{eventually, free_ports, Cluster, BIN};
use paxosdb::Error;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

fn cli(cluster: &Cluster, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(["--endpoints", &cluster.endpoints().join(",")])
        .args(args)
        .output()
        .expect("run paxosdb")
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn write_through_one_node_read_through_another() {
    let cluster = Cluster::start(3).await;
    for (writer, reader) in [(1, 2), (2, 3), (3, 1)] {
        let key = format!("key-from-{writer}");
        let put = cluster
            .client_for(writer)
            .put(key.as_bytes(), b"hello", false)
            .await
            .unwrap();
        let (v, _) = cluster
            .client_for(reader)
            .get(key.as_bytes(), false)
            .await
            .unwrap();
        let v = v.expect("linearizable read sees the acknowledged write");
        assert_eq!(v.value, b"hello");
        assert_eq!(v.version, put.version);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_commands_exit_codes_and_json() {
    let cluster = Cluster::start(3).await;
    let o = cli(&cluster, &["put", "greeting", "hi"]);
    assert!(o.status.success(), "{o:?}");
    assert!(stdout(&o).starts_with("OK version="));
    let o = cli(&cluster, &["get", "greeting"]);
    assert_eq!(stdout(&o), "hi");
    // `put KEY -` takes the value from standard input, whole (newlines included).
    let mut child = Command::new(BIN)
        .args(["--endpoints", &cluster.endpoints().join(",")])
        .args(["put", "piped", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"line one\nline two\n")
        .unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
    let o = cli(&cluster, &["get", "piped", "--json"]);
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(j["value"], "line one\nline two\n", "{j}");

    let o = cli(&cluster, &["get", "missing"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not found"));

    let o = cli(
        &cluster,
        &["cas", "greeting", "--expect", "nope", "--new", "x"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("current value=hi"));
    let o = cli(
        &cluster,
        &["cas", "greeting", "--expect", "hi", "--new", "yo", "--json"],
    );
    assert!(o.status.success());
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(j["succeeded"], true);
    let version = j["version"].as_u64().unwrap();
    let o = cli(
        &cluster,
        &[
            "cas",
            "greeting",
            "--expect-version",
            &version.to_string(),
            "--new",
            "v3",
        ],
    );
    assert!(o.status.success(), "{o:?}");

    for k in ["a/1", "a/2", "b/1"] {
        assert!(cli(&cluster, &["put", k, "x"]).status.success());
    }
    let o = cli(&cluster, &["scan", "--prefix", "a/", "--json"]);
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(j["items"].as_array().unwrap().len(), 2);
    let o = cli(
        &cluster,
        &["scan", "--from", "a/2", "--to", "b/2", "--limit", "1"],
    );
    assert_eq!(stdout(&o), "a/2\tx");
    let o = cli(&cluster, &["get", "a/1", "--stale", "--json"]);
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(j["value"], "x");
    assert!(j["applied_index"].as_u64().unwrap() > 0);

    let o = cli(&cluster, &["delete", "a/1"]);
    assert_eq!(stdout(&o), "deleted");
    assert_eq!(cli(&cluster, &["get", "a/1"]).status.code(), Some(1));

    let o = cli(&cluster, &["status", "--json"]);
    assert!(o.status.success());
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let nodes = j["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    assert_eq!(nodes.iter().filter(|n| n["role"] == "leader").count(), 1);
    for n in nodes {
        assert!(n["pid"].as_u64().unwrap() > 0);
        assert!(n["listeners"]["grpc"].is_string() && n["listeners"]["peer"].is_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_client_input_is_refused_and_changes_nothing() {
    let cluster = Cluster::start(3).await;
    let c = cluster.client();
    let before = cluster.applied(1).await.unwrap();

    let big = vec![b'x'; 1024 * 1024 + 1];
    let err = c.put(b"big", &big, false).await.unwrap_err();
    assert!(
        matches!(err, Error::TooLarge(ref m) if m.contains("limit")),
        "{err}"
    );
    let err = c.put(b"", b"v", false).await.unwrap_err();
    assert!(
        matches!(err, Error::InvalidInput(ref m) if m.contains("empty")),
        "{err}"
    );
    let long_key = vec![b'k'; 4097];
    let err = c.put(&long_key, b"v", false).await.unwrap_err();
    assert!(matches!(err, Error::TooLarge(_)), "{err}");
    assert_eq!(
        cluster.applied(1).await.unwrap(),
        before,
        "nothing was replicated"
    );
    assert!(c.get(b"big", false).await.unwrap().0.is_none());

    // A value exactly at the limit is accepted, replicated and read back elsewhere.
    let max = vec![b'm'; 1024 * 1024];
    cluster
        .client_for(1)
        .put(b"max", &max, false)
        .await
        .unwrap();
    let (v, _) = cluster.client_for(2).get(b"max", false).await.unwrap();
    assert_eq!(v.unwrap().value.len(), max.len());

    // Garbage on the client port: the connection dies, the node keeps serving.
    for id in 1..=3 {
        let addr = &cluster.nodes[id - 1].client_addr;
        let mut s = TcpStream::connect(addr).unwrap();
        let _ = s.write_all(b"\x00\xff garbage that is not HTTP/2 \r\n\r\n\x16\x03\x01");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 256];
        let _ = s.read(&mut buf);
    }
    c.put(b"after-garbage", b"ok", false).await.unwrap();
    for id in 1..=3 {
        let (v, _) = cluster
            .client_for(id)
            .get(b"after-garbage", false)
            .await
            .unwrap();
        assert_eq!(v.unwrap().value, b"ok");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_on_the_peer_port_closes_that_connection_only() {
    let cluster = Cluster::start(3).await;
    let peer = cluster.nodes[0].peer_addr.clone();
    let payloads: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3], // oversized length prefix
        [&8u32.to_be_bytes()[..], b"12345678"].concat(), // well-framed, not a hello
        (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect(),
    ];
    for p in payloads {
        let mut s = TcpStream::connect(&peer).unwrap();
        let _ = s.write_all(&p);
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 16];
        // The node closes the connection: read returns 0 (EOF) or a reset, within 10 s.
        // A read that times out means the node kept the connection open: it hangs.
        match s.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!(
                "node 1 answered {n} bytes to {} bytes of garbage instead of closing",
                p.len()
            ),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("node 1 kept the connection open for 10 s after {} bytes of garbage: it hangs instead of closing", p.len())
            }
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    ErrorKind::ConnectionReset
                        | ErrorKind::ConnectionAborted
                        | ErrorKind::BrokenPipe
                ),
                "reading after garbage: {e}"
            ),
        }
    }
    let log = cluster.log_of(1);
    assert!(
        log.contains("peer connection closed"),
        "the bad frames are logged"
    );
    // Replication still works through node 1.
    cluster
        .client_for(1)
        .put(b"still", b"alive", false)
        .await
        .unwrap();
    let (v, _) = cluster.client_for(2).get(b"still", false).await.unwrap();
    assert_eq!(v.unwrap().value, b"alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_configuration_and_busy_data_dir_are_refused() {
    let ports = free_ports(4);
    let peers = format!(
        "1=127.0.0.1:{},2=127.0.0.1:{},3=127.0.0.1:{}",
        ports[0], ports[1], ports[2]
    );
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(BIN)
            .arg("server")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let client_addr = format!("127.0.0.1:{}", ports[3]);
    let data = dir.path().join("d").display().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "--id",
                "4",
                "--peers",
                &peers,
                "--client-addr",
                &client_addr,
                "--data-dir",
                &data,
            ],
            "not in --peers",
        ),
        (
            vec![
                "--id",
                "1",
                "--peers",
                "1=127.0.0.1:1,1=127.0.0.1:2",
                "--client-addr",
                &client_addr,
                "--data-dir",
                &data,
            ],
            "appears twice",
        ),
        (
            vec![
                "--id",
                "1",
                "--peers",
                &peers,
                "--client-addr",
                "nonsense",
                "--data-dir",
                &data,
            ],
            "not a valid host:port",
        ),
        // (Without --client-addr a node takes its id's default ports: that starts.)
        (
            vec!["--id", "0", "--peers", &peers, "--data-dir", &data],
            "positive integer",
        ),
        (vec!["--config", "/nonexistent/paxosdb.toml"], "cannot read"),
    ];
    for (args, want) in cases {
        let o = run(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} must fail");
        assert!(
            err.contains(want),
            "{args:?}: stderr {err:?} should say {want:?}"
        );
        assert_eq!(err.trim().lines().count(), 1, "one-line error, got {err:?}");
    }

    // A data directory used by a running node is refused.
    let cluster = Cluster::start(3).await;
    let mut cmd = cluster.server_command(1);
    let o = cmd.output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("in use by process"), "{err}");
    // ...and the original node still serves.
    cluster.client_for(1).put(b"k", b"v", false).await.unwrap();

    // A data directory made for node 1 refuses to start as node 2.
    let mut cluster = cluster;
    cluster.kill(1);
    let o = Command::new(BIN)
        .args(["server", "--id", "2", "--peers", &cluster.peers])
        .args(["--client-addr", &client_addr, "--data-dir"])
        .arg(cluster.data_dir(1))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("belongs to node=1"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_up_runs_stops_on_sigint_and_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    // Find a base port whose 12 ports (gRPC, peer, HTTP, RESP of 3 nodes) are free.
    let base = loop {
        let b = 10000 + (rand::random::<u16>() % 20000); // below the ephemeral range
        let free = [1, 2, 3, 101, 102, 103, 201, 202, 203, 301, 302, 303]
            .iter()
            .all(|o| std::net::TcpListener::bind(("127.0.0.1", b + o)).is_ok());
        if free {
            break b;
        }
    };
    let eps = format!(
        "127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}",
        base + 1,
        base + 2,
        base + 3
    );
    let up = || {
        Command::new(BIN)
            .args([
                "cluster",
                "up",
                "--base-port",
                &base.to_string(),
                "--data-dir",
            ])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    // `cluster up` turns client TLS on, with the CA it makes in DIR/tls, and generates an
    // admin password beside the data and requires it.
    let ca = dir.path().join("tls").join("ca.pem");
    let password_file = dir.path().join("admin-password");
    let run = |args: &[&str], with_password: bool| {
        let mut cmd = Command::new(BIN);
        cmd.args(["--endpoints", &eps, "--timeout", "5s", "--cacert"])
            .arg(&ca)
            .args(args)
            .env_remove("PAXOSDB_USER")
            .env_remove("PAXOSDB_PASSWORD")
            .env_remove("PAXOSDB_PASSWORD_FILE")
            .env_remove("PAXOSDB_TOKEN");
        if with_password {
            cmd.env("PAXOSDB_PASSWORD_FILE", &password_file);
        }
        cmd.output().unwrap()
    };
    let put_get = |args: &[&str]| run(args, true);
    let mut child = up();
    eventually(
        Duration::from_secs(30),
        "cluster up accepts a write",
        || async {
            put_get(&["put", "persist", "me"])
                .status
                .success()
                .then_some(())
        },
    )
    .await;
    let refused = run(&["get", "persist"], false);
    assert!(
        !refused.status.success()
            && String::from_utf8_lossy(&refused.stderr).contains("unauthenticated"),
        "cluster up requires credentials: {refused:?}"
    );
    // The client config file it writes names all of it: endpoints, CA and password.
    let by_config = Command::new(BIN)
        .arg("--client-config")
        .arg(dir.path().join("client.toml"))
        .args(["get", "persist"])
        .env_remove("PAXOSDB_ENDPOINTS")
        .env_remove("PAXOSDB_CACERT")
        .env_remove("PAXOSDB_USER")
        .env_remove("PAXOSDB_PASSWORD")
        .env_remove("PAXOSDB_PASSWORD_FILE")
        .env_remove("PAXOSDB_TOKEN")
        .output()
        .unwrap();
    assert!(
        by_config.status.success() && String::from_utf8_lossy(&by_config.stdout).contains("me"),
        "cluster up's client.toml: {by_config:?}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "cluster up exits cleanly on SIGINT: {status}"
    );
    // All nodes released their data directories (a running node would hold the lock).
    for n in 1..=3 {
        paxosdb::storage::db::DataDir::lock(&dir.path().join(format!("node-{n}")))
            .expect("node stopped and released its data directory");
    }

    let mut child = up();
    let o = eventually(
        Duration::from_secs(30),
        "restarted cluster serves",
        || async {
            let o = put_get(&["get", "persist"]);
            o.status.success().then_some(o)
        },
    )
    .await;
    assert_eq!(stdout(&o), "me");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_share_log_entries_group_commit() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let c = cluster.client_for(leader);
    c.put(b"warm-up", b"x", false).await.unwrap();
    let before = cluster.applied(leader).await.unwrap();
    let writes = 256u64;
    let results = futures::future::join_all((0..writes).map(|i| {
        let c = c.clone();
        async move { c.put(format!("gc-{i}").as_bytes(), b"v", false).await }
    }))
    .await;
    assert!(results.iter().all(|r| r.is_ok()));
    let entries = cluster.applied(leader).await.unwrap() - before;
    // One log entry (one fsync per node) per write would be `writes` entries.
    assert!(
        entries * 4 <= writes,
        "{writes} concurrent writes took {entries} log entries; batching should need far fewer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpc_server_reflection_lists_the_services() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let cluster = Cluster::start(3).await;
    let url = format!("http://{}", cluster.nodes[0].client_addr);
    let channel = tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection response");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "paxosdb.v1.Kv",
        "paxosdb.v1.Cluster",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
}

/// A write to a cluster nobody listens for was never sent: the client says it is
/// unavailable (retryable, nothing applied), not that its outcome is unknown, and names
/// the cause once. The CLI prints the same.
#[tokio::test]
async fn a_refused_connection_is_unavailable_not_outcome_unknown() {
    let eps: Vec<String> = free_ports(2)
        .into_iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let c = paxosdb::client::Client::with_options(
        &eps,
        paxosdb::client::ClientOptions {
            timeout: Duration::from_millis(800),
            ..Default::default()
        },
    )
    .unwrap();
    match c.put(b"k", b"v", false).await {
        Err(Error::Unavailable(m)) => {
            assert!(m.contains("nothing was sent"), "{m}");
            assert!(!m.contains("unavailable"), "the kind repeated: {m}");
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
    let o = Command::new(BIN)
        .args(["put", "k", "v", "--timeout", "1s"])
        .env("PAXOSDB_ENDPOINTS", eps.join(","))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("error: unavailable: could not connect"),
        "{err}"
    );
}

/// The standard gRPC health service: `SERVING` on every node of a healthy cluster (for
/// the server and each service name), `NOT_FOUND` for another name; a node left without
/// a quorum turns `NOT_SERVING`, and a watch sees it change.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpc_health_checks_follow_the_quorum() {
    use paxosdb::api::health::proto::health_check_response::ServingStatus;
    use paxosdb::api::health::proto::health_client::HealthClient;
    use paxosdb::api::health::proto::HealthCheckRequest;

    let mut cluster = Cluster::start(3).await;
    let connect = |id: usize| {
        let url = format!("http://{}", cluster.nodes[id - 1].client_addr);
        async move {
            HealthClient::new(
                tonic::transport::Endpoint::from_shared(url)
                    .unwrap()
                    .connect()
                    .await
                    .unwrap(),
            )
        }
    };
    let ask = |service: &str| HealthCheckRequest {
        service: service.to_string(),
    };
    for id in 1..=3 {
        let mut h = connect(id).await;
        for service in ["", "paxosdb.v1.Kv", "paxosdb.v1.Sql", "paxosdb.v1.Cluster"] {
            let r = h.check(ask(service)).await.unwrap().into_inner();
            assert_eq!(r.status(), ServingStatus::Serving, "node {id} {service:?}");
        }
        let e = h.check(ask("no.such.Service")).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound, "{e}");
    }
    let mut h1 = connect(1).await;
    let mut watch = h1.watch(ask("")).await.unwrap().into_inner();
    let first = watch.message().await.unwrap().expect("the current status");
    assert_eq!(first.status(), ServingStatus::Serving);
    // Nodes 2 and 3 go: node 1 has no quorum left.
    cluster.kill(2);
    cluster.kill(3);
    let next = tokio::time::timeout(Duration::from_secs(15), watch.message())
        .await
        .expect("the watch reported the change")
        .unwrap()
        .expect("a message");
    assert_eq!(next.status(), ServingStatus::NotServing);
    let r = h1.check(ask("")).await.unwrap().into_inner();
    assert_eq!(r.status(), ServingStatus::NotServing);
}

/// `paxosdb bench` says how far it got while it runs (on a log, a line every 10 s), not
/// only at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_reports_progress_while_it_runs() {
    let cluster = Cluster::start(3).await;
    let o = cli(
        &cluster,
        &[
            "bench",
            "--duration",
            "11s",
            "--concurrency",
            "2",
            "--keys",
            "100",
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("bench: 10s, "))
        .unwrap_or_else(|| panic!("no progress line after 10 s: {err}"));
    assert!(line.contains("operations started"), "{line}");
    assert!(stdout(&o).contains("throughput="), "the final figures");
}
