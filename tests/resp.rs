//! The Redis protocol end to end: real `paxosdb server` processes driven by real Redis
//! clients (redis-cli, redis-benchmark, redis-py, all installed by `scripts/setup`) and by
//! raw TCP for pipelining and malformed input.

mod common;

use common::Cluster;
use paxosdb::api::resp::frame::{parse, Frame, FrameError, FrameLimits};
use std::process::Command;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn port(addr: &str) -> &str {
    addr.rsplit_once(':').expect("host:port").1
}

/// Runs a client tool; panics with a hint if it is not installed.
fn tool(name: &str) -> Command {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{name} is not installed; run scripts/setup (it installs redis-tools and redis-py)"
    );
    Command::new(name)
}

/// `redis-cli -h 127.0.0.1 -p PORT args...`: its standard output, trimmed.
fn cli(addr: &str, args: &[&str]) -> String {
    let out = tool("redis-cli")
        .args(["-h", "127.0.0.1", "-p", port(addr)])
        .args(args)
        .output()
        .expect("run redis-cli");
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

/// Reads until one complete frame has arrived, or returns None at EOF.
async fn read_frame(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Frame> {
    loop {
        match parse(buf, &FrameLimits::default()) {
            Ok((f, used)) => {
                buf.drain(..used);
                return Some(f);
            }
            Err(FrameError::Incomplete) => {}
            Err(e) => panic!("server sent bad RESP: {e}"),
        }
        let n = tokio::time::timeout(Duration::from_secs(20), s.read_buf(buf))
            .await
            .expect("reply within 20 s")
            .expect("read");
        if n == 0 {
            return None;
        }
    }
}

/// True when the server has closed the connection (EOF within a few seconds).
async fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

fn err(m: &str) -> Frame {
    Frame::Error(m.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_commands_error_shapes_and_reads_across_nodes() {
    let c = Cluster::start(3).await;
    let n1 = c.nodes[0].resp_addr.clone();
    let n2 = c.nodes[1].resp_addr.clone();
    assert_eq!(cli(&n1, &["PING"]), "PONG");
    assert_eq!(cli(&n1, &["ECHO", "hi there"]), "hi there");
    // Linearizable across nodes: a write acknowledged by node 1 is read through node 2.
    for i in 0..5 {
        let v = format!("v{i}");
        assert_eq!(cli(&n1, &["SET", "k", &v]), "OK");
        assert_eq!(cli(&n2, &["GET", "k"]), v);
    }
    assert_eq!(cli(&n1, &["SET", "k", "w", "GET"]), "v4");
    assert_eq!(cli(&n1, &["SET", "k", "x", "NX"]), "");
    assert_eq!(cli(&n1, &["SET", "fresh", "x", "XX"]), "");
    assert_eq!(cli(&n1, &["SETNX", "fresh", "1"]), "1");
    assert_eq!(cli(&n1, &["SETNX", "fresh", "2"]), "0");
    assert_eq!(cli(&n1, &["INCR", "n"]), "1");
    assert_eq!(cli(&n2, &["INCRBY", "n", "9"]), "10");
    assert_eq!(cli(&n1, &["DECR", "n"]), "9");
    assert_eq!(cli(&n2, &["DECRBY", "n", "10"]), "-1");
    assert_eq!(cli(&n1, &["MSET", "a", "1", "b", "2"]), "OK");
    assert_eq!(cli(&n2, &["MGET", "a", "b", "zz"]), "1\n2");
    assert_eq!(cli(&n1, &["EXISTS", "a", "b", "zz", "a"]), "3");
    assert_eq!(cli(&n1, &["APPEND", "a", "xyz"]), "4");
    assert_eq!(cli(&n2, &["STRLEN", "a"]), "4");
    assert_eq!(cli(&n1, &["GETDEL", "a"]), "1xyz");
    assert_eq!(cli(&n1, &["GET", "a"]), "");
    assert_eq!(cli(&n1, &["DEL", "b", "fresh", "zz"]), "2");
    assert_eq!(cli(&n2, &["KEYS", "*"]), "k\nn");
    assert_eq!(cli(&n2, &["DBSIZE"]), "2");
    // Our compare-and-swap commands.
    assert_eq!(cli(&n1, &["CAS", "k", "w", "cas1"]), "1");
    assert_eq!(cli(&n1, &["CAS", "k", "w", "cas2"]), "0");
    let ver = cli(&n2, &["GETVER", "k"]);
    let (value, version) = ver.split_once('\n').expect("value and version");
    assert_eq!(value, "cas1");
    assert_eq!(cli(&n1, &["CASVER", "k", "1", "no"]), "0");
    assert_eq!(cli(&n1, &["CASVER", "k", version, "cas3"]), "1");
    assert_eq!(cli(&n2, &["GET", "k"]), "cas3");
    // Error shapes, exactly as Redis words them.
    assert_eq!(
        cli(&n1, &["FOO", "a", "b"]),
        "ERR unknown command 'FOO', with args beginning with: 'a' 'b'"
    );
    assert_eq!(
        cli(&n1, &["GET"]),
        "ERR wrong number of arguments for 'get' command"
    );
    assert_eq!(cli(&n1, &["SET", "k", "v", "NX", "XX"]), "ERR syntax error");
    assert_eq!(
        cli(&n1, &["SET", "k", "v", "EX", "10"]),
        "ERR paxosdb has no TTLs yet"
    );
    assert_eq!(
        cli(&n1, &["INCR", "k"]),
        "ERR value is not an integer or out of range"
    );
    assert_eq!(cli(&n1, &["TYPE", "k"]), "string");
    assert_eq!(cli(&n1, &["TYPE", "zz"]), "none");
    assert_eq!(cli(&n1, &["TTL", "k"]), "-1");
    assert_eq!(cli(&n1, &["PTTL", "zz"]), "-2");
    assert_eq!(cli(&n1, &["SELECT", "0"]), "OK");
    assert_eq!(cli(&n1, &["SELECT", "1"]), "ERR DB index is out of range");
    // Probing commands clients send.
    assert_eq!(
        cli(&n1, &["COMMAND", "COUNT"]),
        paxosdb::api::resp::cmd::COMMANDS.len().to_string()
    );
    assert!(cli(&n1, &["COMMAND"]).contains("getdel"));
    assert_eq!(cli(&n1, &["CLIENT", "SETNAME", "me"]), "OK");
    let hello = cli(&n1, &["-3", "HELLO", "3"]);
    assert!(hello.contains("proto 3"), "{hello}");
    let info = cli(&n2, &["INFO"]);
    for want in [
        "# Server",
        "paxosdb_version:",
        "node_id:2",
        "process_id:",
        "# Replication",
    ] {
        assert!(info.contains(want), "INFO lacks {want}: {info}");
    }
    assert!(info.contains(&format!("tcp_port:{}", port(&n2))), "{info}");
    assert!(info.contains("db0:keys=2"), "{info}");
    let leader = c.leader().await;
    let repl = cli(
        &c.nodes[leader as usize - 1].resp_addr,
        &["INFO", "replication"],
    );
    assert!(repl.contains("role:master"), "{repl}");
    assert!(repl.contains(&format!("leader_id:{leader}")), "{repl}");
    // SCAN through several pages (COUNT defaults to 10), as redis-cli --scan does it.
    let mut mset = vec!["MSET".to_string()];
    for i in 0..25 {
        mset.extend([format!("s:{i:02}"), i.to_string()]);
    }
    let mset: Vec<&str> = mset.iter().map(String::as_str).collect();
    assert_eq!(cli(&n1, &mset), "OK");
    let want: Vec<String> = (0..25).map(|i| format!("s:{i:02}")).collect();
    assert_eq!(cli(&n2, &["--scan", "--pattern", "s:*"]), want.join("\n"));
    assert_eq!(cli(&n2, &["--scan"]).lines().count(), 27);
    // READONLY: stale reads still see this node's applied state.
    let mut s = TcpStream::connect(&n2).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(b"*1\r\n$8\r\nREADONLY\r\n*2\r\n$3\r\nGET\r\n$1\r\nn\r\n")
        .await
        .unwrap();
    assert_eq!(read_frame(&mut s, &mut buf).await, Some(Frame::ok()));
    assert!(matches!(
        read_frame(&mut s, &mut buf).await,
        Some(Frame::Bulk(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelining_and_protocol_errors() {
    let c = Cluster::start(3).await;
    let addr = c.nodes[0].resp_addr.clone();
    let mut buf = Vec::new();

    // Three commands in one write, three replies in order.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(
        b"*3\r\n$3\r\nSET\r\n$1\r\np\r\n$2\r\nv1\r\n*2\r\n$3\r\nGET\r\n$1\r\np\r\nINCR p\r\n",
    )
    .await
    .unwrap();
    assert_eq!(read_frame(&mut s, &mut buf).await, Some(Frame::ok()));
    assert_eq!(read_frame(&mut s, &mut buf).await, Some(Frame::bulk("v1")));
    assert_eq!(
        read_frame(&mut s, &mut buf).await,
        Some(err("ERR value is not an integer or out of range"))
    );

    // A long pipeline, with the replies read only at the end.
    let mut req = Vec::new();
    for i in 0..200 {
        req.extend_from_slice(format!("*2\r\n$4\r\nINCR\r\n$4\r\nctr{}\r\n", i % 2).as_bytes());
    }
    s.write_all(&req).await.unwrap();
    for i in 0..200 {
        assert_eq!(
            read_frame(&mut s, &mut buf).await,
            Some(Frame::Integer(i / 2 + 1))
        );
    }

    // A malformed frame: an error reply, then the connection is closed...
    let mut bad = TcpStream::connect(&addr).await.unwrap();
    let mut bbuf = Vec::new();
    bad.write_all(b"*1\r\n$x\r\n").await.unwrap();
    match read_frame(&mut bad, &mut bbuf).await {
        Some(Frame::Error(m)) => assert!(m.starts_with("ERR Protocol error"), "{m}"),
        other => panic!("expected a protocol error, got {other:?}"),
    }
    assert!(
        closed(&mut bad).await,
        "connection closed after a protocol error"
    );
    // ...while the other connection still works.
    s.write_all(b"PING\r\n").await.unwrap();
    assert_eq!(
        read_frame(&mut s, &mut buf).await,
        Some(Frame::Simple("PONG".into()))
    );

    // An oversized bulk length is refused at once, before any of its bytes arrive.
    let mut big = TcpStream::connect(&addr).await.unwrap();
    let mut gbuf = Vec::new();
    big.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$999999999999\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_frame(&mut big, &mut gbuf).await,
        Some(err("ERR Protocol error: invalid bulk length"))
    );
    assert!(closed(&mut big).await);

    // Garbage bytes: an error, never a crash.
    let mut junk = TcpStream::connect(&addr).await.unwrap();
    junk.write_all(b"*2\r\n:1\r\n:2\r\n").await.unwrap();
    let mut jbuf = Vec::new();
    assert!(matches!(
        read_frame(&mut junk, &mut jbuf).await,
        Some(Frame::Error(_))
    ));
    assert_eq!(cli(&addr, &["PING"]), "PONG", "the server still serves");

    // QUIT answers OK and closes.
    s.write_all(b"QUIT\r\n").await.unwrap();
    assert_eq!(read_frame(&mut s, &mut buf).await, Some(Frame::ok()));
    assert!(closed(&mut s).await);

    // redis-cli --pipe: a bulk load in raw protocol.
    let mut input = Vec::new();
    for i in 0..100 {
        Frame::Array(vec![
            Frame::bulk("SET"),
            Frame::bulk(format!("pipe:{i}")),
            Frame::bulk(format!("{i}")),
        ])
        .encode(&mut input, false);
    }
    let mut child = tool("redis-cli")
        .args(["-h", "127.0.0.1", "-p", port(&addr), "--pipe"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &input).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("errors: 0, replies: 100"), "{text}");
    assert_eq!(cli(&addr, &["GET", "pipe:99"]), "99");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_benchmark_and_redis_py() {
    let c = Cluster::start(3).await;
    let n1 = c.nodes[0].resp_addr.clone();
    let n2 = c.nodes[1].resp_addr.clone();

    let out = tool("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", port(&n1)])
        .args(["-t", "set,get", "-n", "2000", "-c", "10", "-q"])
        .output()
        .expect("run redis-benchmark");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for t in ["SET", "GET"] {
        let line = text
            .split(['\r', '\n'])
            .find(|l| l.starts_with(&format!("{t}: ")) && l.contains("requests per second"))
            .unwrap_or_else(|| panic!("no {t} result in: {text}"));
        let rate: f64 = line[t.len() + 2..]
            .split_whitespace()
            .next()
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("no rate in {line}"));
        assert!(rate > 0.0, "{line}");
    }

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/resp_client.py");
    let out = tool("python3")
        .args([script, "127.0.0.1", port(&n1), port(&n2)])
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "redis-py script failed (run scripts/setup if redis-py is missing): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
