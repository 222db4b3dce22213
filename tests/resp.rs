//! The Redis protocol end to end: real `paxosdb server` processes driven by real Redis
//! clients (redis-cli, redis-benchmark, redis-py, all installed by `scripts/setup`) and by
//! raw TCP for pipelining and malformed input; also what one hostile or careless client
//! must not be able to do: apply part of a MULTI block, grow a MULTI queue without
//! bound, build a reply beyond `max_reply_bytes`, or freeze a node with a KEYS pattern.
//! Transactions are checked with raw RESP (exact reply shapes, `*-1`), redis-py
//! (`pipeline()`, `transaction()` with WATCH under contention) and ioredis (`multi()`).

mod common;
mod http_client;

use common::tools::{installed, port, text, tool};
use common::{skip, Cluster};
use paxosdb::api::resp::frame::{parse, Frame, FrameError, FrameLimits};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

/// `redis-cli -h 127.0.0.1 -p PORT` reading its commands from `input`, one connection for
/// all of them (as the README's transaction session is run): its standard output.
fn cli_stdin(addr: &str, input: &str) -> String {
    let mut child = tool("redis-cli")
        .args(["-h", "127.0.0.1", "-p", port(addr)])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run redis-cli");
    let mut stdin = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, input.as_bytes()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "redis-cli < {input:?}: {out:?}");
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
        cli(&n1, &["SET", "k", "v", "EX", "0"]),
        "ERR invalid expire time in 'set' command"
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
    // The sections `redis-cli --stat` reads hold real numbers.
    let field = |info: &str, name: &str| -> u64 {
        let line = (info.lines())
            .find(|l| l.starts_with(&format!("{name}:")))
            .unwrap_or_else(|| panic!("INFO lacks {name}: {info}"));
        line[name.len() + 1..].trim().parse().expect("a number")
    };
    assert!(field(&info, "used_memory") > 1 << 20, "{info}");
    assert!(field(&info, "total_commands_processed") >= 10, "{info}");
    assert!(field(&info, "total_connections_received") >= 10, "{info}");
    assert!(field(&info, "connected_clients") >= 1, "{info}");
    // And the Redis protocol is counted in /metrics, by command.
    let metrics = http_client::get(&c.nodes[1].http_addr, "/metrics").text();
    assert!(
        metrics.contains(r#"paxosdb_requests_total{protocol="resp",op="get"}"#),
        "{metrics}"
    );
    let leader = c.leader().await;
    let repl = cli(
        &c.nodes[leader as usize - 1].resp_addr,
        &["INFO", "replication"],
    );
    assert!(repl.contains("role:master"), "{repl}");
    assert!(repl.contains(&format!("leader_id:{leader}")), "{repl}");
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    let repl = cli(
        &c.nodes[follower as usize - 1].resp_addr,
        &["INFO", "replication"],
    );
    assert!(repl.contains("role:slave"), "{repl}");
    let leader_port = port(&c.nodes[leader as usize - 1].resp_addr).to_string();
    assert!(
        repl.contains(&format!("master_port:{leader_port}")),
        "{repl}"
    );
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

    // MULTI: a queue-time error aborts the block; EXEC and DISCARD end it; outside a
    // block they are errors (the rest is in `transactions_multi_exec_watch`).
    s.write_all(b"MULTI\r\nSET tx:a 1\r\nGET\r\nEXEC\r\nEXEC\r\nDISCARD\r\nMULTI\r\nDISCARD\r\n")
        .await
        .unwrap();
    let want = [
        Frame::ok(),
        Frame::Simple("QUEUED".into()),
        err("ERR wrong number of arguments for 'get' command"),
        err("EXECABORT Transaction discarded because of previous errors."),
        err("ERR EXEC without MULTI"),
        err("ERR DISCARD without MULTI"),
        Frame::ok(),
        Frame::ok(),
    ];
    for w in want {
        assert_eq!(read_frame(&mut s, &mut buf).await, Some(w));
    }
    assert_eq!(cli(&addr, &["EXISTS", "tx:a"]), "0");

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

/// One raw RESP connection: requests written as multibulks, replies read one at a time.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: &str) -> Conn {
        Conn {
            s: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    /// Sends one request without reading its reply (a pipeline).
    async fn send(&mut self, words: &[&str]) {
        let words: Vec<&[u8]> = words.iter().map(|w| w.as_bytes()).collect();
        self.s.write_all(&request(&words)).await.unwrap();
    }

    async fn reply(&mut self) -> Frame {
        read_frame(&mut self.s, &mut self.buf)
            .await
            .expect("a reply")
    }

    /// Sends one request and reads its reply.
    async fn call(&mut self, words: &[&str]) -> Frame {
        self.send(words).await;
        self.reply().await
    }

    /// The next reply's bytes as sent (to tell `*-1` from `$-1`).
    async fn raw_reply(&mut self) -> Vec<u8> {
        loop {
            match parse(&self.buf, &FrameLimits::default()) {
                Ok((_, used)) => return self.buf.drain(..used).collect(),
                Err(FrameError::Incomplete) => {}
                Err(e) => panic!("server sent bad RESP: {e}"),
            }
            let read = self.s.read_buf(&mut self.buf);
            let n = tokio::time::timeout(Duration::from_secs(20), read)
                .await
                .expect("reply within 20 s")
                .unwrap();
            assert!(n > 0, "connection closed");
        }
    }
}

fn queued() -> Frame {
    Frame::Simple("QUEUED".into())
}

/// MULTI / EXEC / DISCARD / WATCH / UNWATCH against a 3-node cluster, with Redis' reply
/// shapes: a block applies as one transaction (a refused INCR is an error in its slot
/// while the rest applies), a queue-time error aborts all of it, a write to a watched key
/// through another node makes EXEC answer a null array and apply nothing, and the queue
/// is bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_multi_exec_watch() {
    let c = Cluster::start(3).await;
    let (n1, n2, n3) = (
        c.nodes[0].resp_addr.clone(),
        c.nodes[1].resp_addr.clone(),
        c.nodes[2].resp_addr.clone(),
    );
    let mut a = Conn::open(&n1).await;
    let mut b = Conn::open(&n2).await;

    // The README's session, piped into redis-cli (one connection; piped output prints
    // an array's elements one per line).
    let session = "SET stock 10\nMULTI\nDECRBY stock 3\nINCRBY sold 3\nGET stock\nEXEC\n";
    assert_eq!(
        cli_stdin(&n1, session),
        "OK\nOK\nQUEUED\nQUEUED\nQUEUED\n7\n3\n7"
    );

    // Reply shapes: each command answers in its slot as it would alone.
    assert_eq!(a.call(&["SET", "t:s", "abc"]).await, Frame::ok());
    assert_eq!(a.call(&["MULTI"]).await, Frame::ok());
    for w in [
        &["SET", "t:a", "1"][..],
        &["INCR", "t:s"],
        &["INCR", "t:a"],
        &["GET", "t:a"],
        &["MSET", "t:m1", "x", "t:m2", "y"],
        &["GETDEL", "t:m1"],
        &["SETNX", "t:m2", "z"],
        &["APPEND", "t:m2", "w"],
        &["MGET", "t:m1", "t:m2", "t:s"],
        &["DEL", "t:m2", "t:none"],
        &["EXISTS", "t:a", "t:m2"],
        &["PING"],
    ] {
        assert_eq!(a.call(w).await, queued(), "{w:?}");
    }
    assert_eq!(
        a.call(&["EXEC"]).await,
        Frame::Array(vec![
            Frame::ok(),
            err("ERR value is not an integer or out of range"),
            Frame::Integer(2),
            Frame::bulk("2"),
            Frame::ok(),
            Frame::bulk("x"),
            Frame::Integer(0),
            Frame::Integer(2),
            Frame::Array(vec![Frame::Null, Frame::bulk("yw"), Frame::bulk("abc")]),
            Frame::Integer(1),
            Frame::Integer(1),
            Frame::Simple("PONG".into()),
        ])
    );
    // Applied, and seen through another node.
    assert_eq!(cli(&n2, &["MGET", "t:a", "t:s"]), "2\nabc");
    assert_eq!(cli(&n2, &["EXISTS", "t:m1", "t:m2"]), "0");

    // A queue-time error (unknown command, wrong arity, a command that cannot be part of
    // a transaction) answers its error and aborts the block: nothing applies.
    assert_eq!(a.call(&["MULTI"]).await, Frame::ok());
    assert_eq!(a.call(&["SET", "t:aborted", "1"]).await, queued());
    assert_eq!(
        a.call(&["FOO", "x"]).await,
        err("ERR unknown command 'FOO', with args beginning with: 'x' ")
    );
    match a.call(&["KEYS", "*"]).await {
        Frame::Error(m) => assert!(
            m.starts_with("ERR Command not allowed inside a transaction"),
            "{m}"
        ),
        other => panic!("KEYS inside MULTI: {other:?}"),
    }
    assert_eq!(a.call(&["INCR", "t:aborted"]).await, queued());
    assert_eq!(
        a.call(&["EXEC"]).await,
        err("EXECABORT Transaction discarded because of previous errors.")
    );
    assert_eq!(cli(&n3, &["EXISTS", "t:aborted"]), "0");

    // A nested MULTI and a WATCH inside MULTI are errors that do not abort the block.
    a.send(&["MULTI"]).await;
    a.send(&["MULTI"]).await;
    a.send(&["WATCH", "t:a"]).await;
    a.send(&["INCR", "t:a"]).await;
    a.send(&["UNWATCH"]).await;
    a.send(&["EXEC"]).await;
    for want in [
        Frame::ok(),
        err("ERR MULTI calls can not be nested"),
        err("ERR WATCH inside MULTI is not allowed"),
        queued(),
        queued(),
        Frame::Array(vec![Frame::Integer(3), Frame::ok()]),
    ] {
        assert_eq!(a.reply().await, want);
    }

    // DISCARD drops the block; outside one, EXEC and DISCARD are errors.
    a.send(&["MULTI"]).await;
    a.send(&["SET", "t:discarded", "1"]).await;
    a.send(&["DISCARD"]).await;
    a.send(&["EXEC"]).await;
    a.send(&["DISCARD"]).await;
    for want in [
        Frame::ok(),
        queued(),
        Frame::ok(),
        err("ERR EXEC without MULTI"),
        err("ERR DISCARD without MULTI"),
    ] {
        assert_eq!(a.reply().await, want);
    }
    assert_eq!(cli(&n2, &["EXISTS", "t:discarded"]), "0");

    // WATCH, then a write to the key through another node: EXEC answers a null array
    // (RESP2 `*-1`) and applies nothing, not even the writes to other keys.
    assert_eq!(a.call(&["WATCH", "t:w", "t:a"]).await, Frame::ok());
    assert_eq!(b.call(&["SET", "t:w", "theirs"]).await, Frame::ok());
    a.send(&["MULTI"]).await;
    a.send(&["SET", "t:w", "mine"]).await;
    a.send(&["SET", "t:other", "x"]).await;
    a.send(&["EXEC"]).await;
    assert_eq!(a.reply().await, Frame::ok());
    assert_eq!(a.reply().await, queued());
    assert_eq!(a.reply().await, queued());
    assert_eq!(a.raw_reply().await, b"*-1\r\n");
    assert_eq!(cli(&n3, &["GET", "t:w"]), "theirs");
    assert_eq!(cli(&n3, &["EXISTS", "t:other"]), "0");
    // EXEC forgot the watches: the same block now applies.
    a.send(&["MULTI"]).await;
    a.send(&["SET", "t:w", "mine"]).await;
    a.send(&["EXEC"]).await;
    assert_eq!(a.reply().await, Frame::ok());
    assert_eq!(a.reply().await, queued());
    assert_eq!(a.reply().await, Frame::Array(vec![Frame::ok()]));
    assert_eq!(cli(&n3, &["GET", "t:w"]), "mine");

    // A watched key that stays untouched (absent or present): EXEC applies.
    assert_eq!(a.call(&["WATCH", "t:fresh", "t:w"]).await, Frame::ok());
    assert_eq!(b.call(&["SET", "t:unrelated", "1"]).await, Frame::ok());
    a.send(&["MULTI"]).await;
    a.send(&["INCR", "t:fresh"]).await;
    a.send(&["EXEC"]).await;
    assert_eq!(a.reply().await, Frame::ok());
    assert_eq!(a.reply().await, queued());
    assert_eq!(a.reply().await, Frame::Array(vec![Frame::Integer(1)]));
    // A watched absent key created by another client; in RESP3 the null is `_`.
    assert!(matches!(a.call(&["HELLO", "3"]).await, Frame::Map(_)));
    assert_eq!(a.call(&["WATCH", "t:born"]).await, Frame::ok());
    assert_eq!(b.call(&["SET", "t:born", "1"]).await, Frame::ok());
    a.send(&["MULTI"]).await;
    a.send(&["SET", "t:born", "2"]).await;
    a.send(&["EXEC"]).await;
    assert_eq!(a.reply().await, Frame::ok());
    assert_eq!(a.reply().await, queued());
    assert_eq!(a.raw_reply().await, b"_\r\n");
    assert_eq!(cli(&n1, &["GET", "t:born"]), "1");
    // UNWATCH forgets: a change after it no longer matters.
    assert_eq!(a.call(&["WATCH", "t:born"]).await, Frame::ok());
    assert_eq!(b.call(&["SET", "t:born", "3"]).await, Frame::ok());
    assert_eq!(a.call(&["UNWATCH"]).await, Frame::ok());
    a.send(&["MULTI"]).await;
    a.send(&["INCR", "t:born"]).await;
    a.send(&["EXEC"]).await;
    assert_eq!(a.reply().await, Frame::ok());
    assert_eq!(a.reply().await, queued());
    assert_eq!(a.reply().await, Frame::Array(vec![Frame::Integer(4)]));

    // The queue is bounded: past MAX_TXN_OPS commands the command is refused and the
    // block aborted, in one pipeline.
    let max = paxosdb::command::MAX_TXN_OPS;
    let mut pipeline = request(&[b"MULTI"]);
    for i in 0..=max {
        pipeline.extend(request(&[b"SET", b"t:bound", i.to_string().as_bytes()]));
    }
    pipeline.extend(request(&[b"EXEC"]));
    a.s.write_all(&pipeline).await.unwrap();
    assert_eq!(a.reply().await, Frame::ok());
    for _ in 0..max {
        assert_eq!(a.reply().await, queued());
    }
    match a.reply().await {
        Frame::Error(m) => assert!(m.starts_with("ERR transaction too large"), "{m}"),
        other => panic!("expected the queue bound, got {other:?}"),
    }
    assert_eq!(
        a.reply().await,
        err("EXECABORT Transaction discarded because of previous errors.")
    );
    assert_eq!(cli(&n2, &["EXISTS", "t:bound"]), "0");
    // One MGET of more keys than a transaction may hold: refused at queue time.
    let keys: Vec<String> = (0..=max).map(|i| format!("t:k{i}")).collect();
    let mut mget: Vec<&str> = vec!["MGET"];
    mget.extend(keys.iter().map(String::as_str));
    assert_eq!(a.call(&["MULTI"]).await, Frame::ok());
    match a.call(&mget).await {
        Frame::Error(m) => assert!(m.starts_with("ERR transaction too large"), "{m}"),
        other => panic!("expected the ops bound, got {other:?}"),
    }
    assert_eq!(
        a.call(&["EXEC"]).await,
        err("EXECABORT Transaction discarded because of previous errors.")
    );

    // Permissions: each queued command is checked as it would be alone. (Creating the
    // first user turns authentication on, so this comes last.)
    let setuser = |rules: &[&'static str]| {
        let mut w = vec!["ACL", "SETUSER"];
        w.extend(rules);
        w
    };
    let admin = setuser(&["admin", "on", ">apw", "+@all", "~*"]);
    assert_eq!(b.call(&admin).await, Frame::ok());
    assert_eq!(b.call(&["AUTH", "admin", "apw"]).await, Frame::ok());
    for rules in [
        &["scoped", "on", ">spw", "+@readwrite", "~app/*"][..],
        &["reader", "on", ">rpw", "+@read", "~*"],
    ] {
        assert_eq!(b.call(&setuser(rules)).await, Frame::ok(), "{rules:?}");
    }
    // (Through node 2, which applied the users before it answered.)
    let mut scoped = Conn::open(&n2).await;
    assert_eq!(scoped.call(&["AUTH", "scoped", "spw"]).await, Frame::ok());
    assert_eq!(scoped.call(&["MULTI"]).await, Frame::ok());
    assert_eq!(scoped.call(&["SET", "app/x", "1"]).await, queued());
    match scoped.call(&["SET", "elsewhere", "1"]).await {
        Frame::Error(m) => assert!(m.starts_with("NOPERM"), "{m}"),
        other => panic!("expected NOPERM, got {other:?}"),
    }
    assert_eq!(
        scoped.call(&["EXEC"]).await,
        err("EXECABORT Transaction discarded because of previous errors.")
    );
    assert_eq!(scoped.call(&["EXISTS", "app/x"]).await, Frame::Integer(0));
    // Inside its prefix the block applies.
    scoped.send(&["MULTI"]).await;
    scoped.send(&["SET", "app/x", "1"]).await;
    scoped.send(&["INCR", "app/x"]).await;
    scoped.send(&["EXEC"]).await;
    assert_eq!(scoped.reply().await, Frame::ok());
    assert_eq!(scoped.reply().await, queued());
    assert_eq!(scoped.reply().await, queued());
    assert_eq!(
        scoped.reply().await,
        Frame::Array(vec![Frame::ok(), Frame::Integer(2)])
    );
    // A user with the read role may run a transaction of reads (its writes it may not
    // even queue).
    let mut reader = Conn::open(&n2).await;
    assert_eq!(reader.call(&["AUTH", "reader", "rpw"]).await, Frame::ok());
    assert_eq!(reader.call(&["GET", "app/x"]).await, Frame::bulk("2"));
    assert_eq!(reader.call(&["MULTI"]).await, Frame::ok());
    assert_eq!(reader.call(&["GET", "app/x"]).await, queued());
    match reader.call(&["SET", "app/x", "3"]).await {
        Frame::Error(m) => assert!(m.starts_with("NOPERM"), "{m}"),
        other => panic!("expected NOPERM, got {other:?}"),
    }
    assert_eq!(
        reader.call(&["EXEC"]).await,
        err("EXECABORT Transaction discarded because of previous errors.")
    );
    assert_eq!(reader.call(&["MULTI"]).await, Frame::ok());
    assert_eq!(reader.call(&["GET", "app/x"]).await, queued());
    assert_eq!(
        reader.call(&["EXEC"]).await,
        Frame::Array(vec![Frame::bulk("2")])
    );
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
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
}

/// ioredis (Node.js): `multi()...exec()` as one transaction, a runtime error in its slot,
/// EXECABORT, and WATCH conflicts through another node (`tests/node/ioredis_client.js`).
/// `scripts/setup` installs node and ioredis (pinned, into `tests/node/node_modules`);
/// without them the test is recorded as skipped, never passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ioredis_transactions() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/node");
    if !installed("node") {
        return skip(
            "ioredis_transactions",
            "node is not installed (run scripts/setup)",
        );
    }
    if !std::path::Path::new(dir)
        .join("node_modules/ioredis")
        .is_dir()
    {
        return skip(
            "ioredis_transactions",
            "ioredis is not installed in tests/node/node_modules (run scripts/setup)",
        );
    }
    let c = Cluster::start(3).await;
    let (n1, n2) = (&c.nodes[0].resp_addr, &c.nodes[1].resp_addr);
    let out = tool("node")
        .arg(format!("{dir}/ioredis_client.js"))
        .args(["127.0.0.1", port(n1), port(n2)])
        .output()
        .expect("run node");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
        "ioredis script failed: {}",
        text(&out)
    );
}

fn int(f: Frame) -> i64 {
    match f {
        Frame::Integer(n) => n,
        other => panic!("expected an integer, got {other:?}"),
    }
}

/// The expiry commands against a 3-node cluster, in raw RESP: a key set with `PX 200`
/// is visible, then gone on another node once the log's time passes its deadline; TTL
/// and its family; EXPIRE's NX/XX/GT/LT; PERSIST; KEEPTTL, INCR keeping a deadline and
/// a plain SET clearing it; a deadline already passed deleting at once; GETEX; SETEX's
/// errors; expiry inside MULTI/EXEC; and every node agreeing on a key's deadline (it is
/// resolved once, in the log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_commands_across_nodes() {
    let c = Cluster::start(3).await;
    let (n1, n2, n3) = (
        c.nodes[0].resp_addr.clone(),
        c.nodes[1].resp_addr.clone(),
        c.nodes[2].resp_addr.clone(),
    );
    let mut a = Conn::open(&n1).await;
    let mut b = Conn::open(&n2).await;
    let mut d = Conn::open(&n3).await;
    let ok = Frame::ok;

    // SET PX 200: visible with a PTTL in (0, 200] (tried on a few keys, in case a slow
    // machine lets 200 ms pass before the read), then absent through another node.
    let mut seen = None;
    for i in 0..5 {
        let key = format!("short{i}");
        a.send(&["SET", &key, "v", "PX", "200"]).await;
        a.send(&["GET", &key]).await;
        a.send(&["PTTL", &key]).await;
        assert_eq!(a.reply().await, ok());
        let (got, pttl) = (a.reply().await, int(a.reply().await));
        if got == Frame::bulk("v") && pttl > 0 {
            assert!(pttl <= 200, "PTTL {pttl} after PX 200");
            seen = Some(key);
            break;
        }
        assert!(
            got == Frame::Null && pttl == -2,
            "{got:?} {pttl}: half expired"
        );
    }
    let short = seen.expect("a key set with PX 200 was visible at least once");
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while b.call(&["GET", &short]).await != Frame::Null {
        assert!(
            std::time::Instant::now() < until,
            "a key set with PX 200 still visible on another node after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(int(d.call(&["PTTL", &short]).await), -2);
    assert_eq!(int(d.call(&["EXISTS", &short]).await), 0);
    assert_eq!(int(a.call(&["TTL", &short]).await), -2);

    // TTL and its family: -2 absent, -1 no deadline.
    assert_eq!(a.call(&["SET", "plain", "v"]).await, ok());
    for cmd in ["TTL", "PTTL", "EXPIRETIME", "PEXPIRETIME"] {
        assert_eq!(int(b.call(&[cmd, "plain"]).await), -1, "{cmd}");
        assert_eq!(int(b.call(&[cmd, "nosuch"]).await), -2, "{cmd}");
    }

    // EXPIRE's conditions. No deadline counts as never: GT fails, LT applies.
    let ttl = |t: i64, around: i64| (around - 5..=around).contains(&t);
    assert_eq!(int(a.call(&["EXPIRE", "plain", "100", "XX"]).await), 0);
    assert_eq!(int(a.call(&["EXPIRE", "plain", "100", "GT"]).await), 0);
    assert_eq!(
        int(a.call(&["EXPIRE", "plain", "100", "XX", "LT"]).await),
        0
    );
    assert_eq!(int(b.call(&["TTL", "plain"]).await), -1, "nothing applied");
    assert_eq!(int(a.call(&["EXPIRE", "plain", "100", "NX"]).await), 1);
    let t = int(b.call(&["TTL", "plain"]).await);
    assert!(ttl(t, 100), "TTL {t} after EXPIRE 100");
    assert_eq!(int(a.call(&["EXPIRE", "plain", "200", "NX"]).await), 0);
    assert_eq!(int(a.call(&["EXPIRE", "plain", "50", "GT"]).await), 0);
    assert_eq!(int(a.call(&["EXPIRE", "plain", "300", "GT"]).await), 1);
    assert!(ttl(int(b.call(&["TTL", "plain"]).await), 300));
    assert_eq!(int(a.call(&["EXPIRE", "plain", "400", "LT"]).await), 0);
    assert_eq!(int(a.call(&["EXPIRE", "plain", "150", "LT"]).await), 1);
    assert!(ttl(int(b.call(&["TTL", "plain"]).await), 150));
    assert_eq!(
        int(a.call(&["EXPIRE", "plain", "120", "XX", "LT"]).await),
        1
    );
    assert_eq!(
        int(a.call(&["EXPIRE", "plain", "130", "LT", "XX"]).await),
        0
    );
    assert_eq!(int(a.call(&["PEXPIRE", "plain", "110000", "XX"]).await), 1);
    let pttl = int(d.call(&["PTTL", "plain"]).await);
    assert!((105_000..=110_000).contains(&pttl), "PTTL {pttl}");
    assert_eq!(int(a.call(&["EXPIRE", "nosuch", "10"]).await), 0);
    // Every node has the same deadline: resolved once, with the log's time.
    let at = int(a.call(&["PEXPIRETIME", "plain"]).await);
    assert_eq!(int(b.call(&["PEXPIRETIME", "plain"]).await), at);
    assert_eq!(int(d.call(&["PEXPIRETIME", "plain"]).await), at);
    assert_eq!(
        int(d.call(&["EXPIRETIME", "plain"]).await),
        (at + 500) / 1000
    );
    // PERSIST removes a deadline, once.
    assert_eq!(int(a.call(&["PERSIST", "plain"]).await), 1);
    assert_eq!(int(b.call(&["TTL", "plain"]).await), -1);
    assert_eq!(int(a.call(&["PERSIST", "plain"]).await), 0);
    assert_eq!(int(a.call(&["PERSIST", "nosuch"]).await), 0);

    // KEEPTTL keeps the deadline, INCR keeps it, a plain SET clears it.
    assert_eq!(a.call(&["SET", "kept", "1", "EX", "100"]).await, ok());
    assert_eq!(a.call(&["SET", "kept", "2", "KEEPTTL"]).await, ok());
    assert!(ttl(int(b.call(&["TTL", "kept"]).await), 100));
    assert_eq!(int(a.call(&["INCR", "kept"]).await), 3);
    assert!(ttl(int(b.call(&["TTL", "kept"]).await), 100));
    assert_eq!(b.call(&["GET", "kept"]).await, Frame::bulk("3"));
    assert_eq!(
        a.call(&["SET", "kept", "4", "EX", "50", "GET"]).await,
        Frame::bulk("3")
    );
    assert!(ttl(int(b.call(&["TTL", "kept"]).await), 50));
    assert_eq!(a.call(&["SET", "kept", "5"]).await, ok());
    assert_eq!(int(b.call(&["TTL", "kept"]).await), -1);
    assert_eq!(
        a.call(&["SET", "kept", "6", "NX", "EX", "9"]).await,
        Frame::Null
    );
    assert_eq!(
        int(b.call(&["TTL", "kept"]).await),
        -1,
        "NX refused: no deadline"
    );

    // Absolute deadlines: EXPIRETIME is the time given; one already passed deletes the
    // key at once (a linearizable read anywhere sees it gone).
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let at = (now_s + 1000).to_string();
    assert_eq!(a.call(&["SET", "abs", "v", "EXAT", &at]).await, ok());
    assert_eq!(int(b.call(&["EXPIRETIME", "abs"]).await), now_s + 1000);
    assert_eq!(
        int(d.call(&["PEXPIRETIME", "abs"]).await),
        (now_s + 1000) * 1000
    );
    assert_eq!(int(a.call(&["EXPIREAT", "abs", "1"]).await), 1);
    assert_eq!(b.call(&["GET", "abs"]).await, Frame::Null);
    assert_eq!(int(d.call(&["EXISTS", "abs"]).await), 0);
    assert_eq!(a.call(&["SET", "neg", "v"]).await, ok());
    assert_eq!(int(a.call(&["PEXPIRE", "neg", "-1"]).await), 1);
    assert_eq!(int(b.call(&["EXISTS", "neg"]).await), 0);

    // GETEX: the value, and the change to its deadline with it.
    assert_eq!(a.call(&["SET", "g", "v", "EX", "100"]).await, ok());
    assert_eq!(a.call(&["GETEX", "g", "PERSIST"]).await, Frame::bulk("v"));
    assert_eq!(int(b.call(&["TTL", "g"]).await), -1);
    assert_eq!(a.call(&["GETEX", "g", "EX", "50"]).await, Frame::bulk("v"));
    assert!(ttl(int(b.call(&["TTL", "g"]).await), 50));
    assert_eq!(a.call(&["GETEX", "g"]).await, Frame::bulk("v"));
    assert!(
        ttl(int(b.call(&["TTL", "g"]).await), 50),
        "no option: no change"
    );
    assert_eq!(a.call(&["GETEX", "nosuch", "EX", "5"]).await, Frame::Null);
    assert_eq!(int(b.call(&["EXISTS", "nosuch"]).await), 0);
    assert_eq!(a.call(&["GETEX", "g", "PXAT", "1"]).await, Frame::bulk("v"));
    assert_eq!(b.call(&["GET", "g"]).await, Frame::Null);

    // SETEX / PSETEX, and Redis' errors.
    assert_eq!(a.call(&["SETEX", "s", "100", "v"]).await, ok());
    assert!(ttl(int(b.call(&["TTL", "s"]).await), 100));
    assert_eq!(a.call(&["PSETEX", "s", "100000", "w"]).await, ok());
    assert_eq!(b.call(&["GET", "s"]).await, Frame::bulk("w"));
    for (words, want) in [
        (
            &["SETEX", "s", "0", "v"][..],
            "ERR invalid expire time in 'setex' command",
        ),
        (
            &["SETEX", "s", "-1", "v"],
            "ERR invalid expire time in 'setex' command",
        ),
        (
            &["PSETEX", "s", "0", "v"],
            "ERR invalid expire time in 'psetex' command",
        ),
        (
            &["SETEX", "s", "x", "v"],
            "ERR value is not an integer or out of range",
        ),
        (
            &["SETEX", "s", "1"],
            "ERR wrong number of arguments for 'setex' command",
        ),
        (
            &["SET", "s", "v", "PX", "-3"],
            "ERR invalid expire time in 'set' command",
        ),
        (&["SET", "s", "v", "EX", "1", "KEEPTTL"], "ERR syntax error"),
        (
            &["EXPIRE", "s", "10", "NX", "XX"],
            "ERR NX and XX, GT or LT options at the same time are not compatible",
        ),
        (
            &["EXPIRE", "s", "10", "GT", "LT"],
            "ERR GT and LT options at the same time are not compatible",
        ),
        (
            &["GETEX", "s", "EX", "0"],
            "ERR invalid expire time in 'getex' command",
        ),
    ] {
        assert_eq!(a.call(words).await, err(want), "{words:?}");
    }
    assert_eq!(b.call(&["GET", "s"]).await, Frame::bulk("w"), "unchanged");

    // Inside MULTI: each answers as alone, all in one transaction.
    assert_eq!(a.call(&["MULTI"]).await, ok());
    for words in [
        &["SET", "m", "v", "PX", "100000"][..],
        &["EXPIRE", "m", "200", "GT"],
        &["PERSIST", "m"],
        &["EXPIRE", "m", "50", "NX"],
        &["GETEX", "m", "EX", "70"],
        &["SETEX", "m2", "30", "x"],
        &["EXPIRE", "nosuch", "5"],
    ] {
        assert_eq!(a.call(words).await, queued(), "{words:?}");
    }
    assert_eq!(
        a.call(&["EXEC"]).await,
        Frame::Array(vec![
            ok(),
            Frame::Integer(1),
            Frame::Integer(1),
            Frame::Integer(1),
            Frame::bulk("v"),
            ok(),
            Frame::Integer(0),
        ])
    );
    assert!(ttl(int(b.call(&["TTL", "m"]).await), 70));
    assert!(ttl(int(b.call(&["TTL", "m2"]).await), 30));
    // TTL reads a deadline, which a transaction's reads do not carry: refused while
    // queueing, so the block aborts and nothing of it applies.
    assert_eq!(a.call(&["MULTI"]).await, ok());
    assert_eq!(a.call(&["PERSIST", "m"]).await, queued());
    match a.call(&["TTL", "m"]).await {
        Frame::Error(m) => assert!(
            m.starts_with("ERR Command not allowed inside a transaction") && m.contains("'ttl'"),
            "{m}"
        ),
        other => panic!("TTL inside MULTI answered {other:?}"),
    }
    assert_eq!(
        a.call(&["EXEC"]).await,
        err("EXECABORT Transaction discarded because of previous errors.")
    );
    assert!(
        ttl(int(b.call(&["TTL", "m"]).await), 70),
        "PERSIST not applied"
    );

    // The commands are listed.
    let listed = cli(&n1, &["COMMAND", "INFO", "expire", "getex", "pexpiretime"]);
    for name in ["expire", "getex", "pexpiretime"] {
        assert!(listed.contains(name), "{listed}");
    }
}

/// The peak resident memory of a process, in bytes (Linux `VmHWM`).
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn request(words: &[&[u8]]) -> Vec<u8> {
    Frame::Array(words.iter().map(|w| Frame::bulk(*w)).collect()).to_bytes(false)
}

/// Overload from one client: a 27 KB MGET that asks for a 3 GiB reply is refused by the
/// reply budget (`--max-reply-bytes`), a pipeline of large replies is written out as it
/// goes, and a KEYS pattern crafted for a backtracking matcher is answered at once. The
/// node keeps serving throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_budget_pipelines_and_hostile_patterns() {
    const BUDGET: usize = 4 * 1024 * 1024;
    let c = Cluster::start_with(3, &[("PAXOSDB_MAX_REPLY_BYTES", &BUDGET.to_string())]).await;
    let addr = c.nodes[0].resp_addr.clone();
    let pid = c.nodes[0].child.as_ref().expect("running").id();
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let mut buf = Vec::new();

    let big = vec![b'v'; 1024 * 1024];
    s.write_all(&request(&[b"SET", b"big", &big]))
        .await
        .unwrap();
    assert_eq!(read_frame(&mut s, &mut buf).await, Some(Frame::ok()));

    // MGET big × 3000: a 27 KB request for a 3 GiB reply.
    let mut words: Vec<&[u8]> = vec![b"MGET"];
    words.extend(std::iter::repeat_n(&b"big"[..], 3000));
    let mget = request(&words);
    assert!(mget.len() < 30_000, "{}", mget.len());
    s.write_all(&mget).await.unwrap();
    match read_frame(&mut s, &mut buf).await {
        Some(Frame::Error(m)) => assert!(
            m.starts_with(&format!(
                "ERR reply would exceed max_reply_bytes ({BUDGET} bytes)"
            )),
            "{m}"
        ),
        other => panic!("expected the reply budget error, got {other:?}"),
    }
    // Within the budget MGET works, and the node still answers.
    s.write_all(&request(&[b"MGET", b"big", b"nothing", b"big"]))
        .await
        .unwrap();
    assert_eq!(
        read_frame(&mut s, &mut buf).await,
        Some(Frame::Array(vec![
            Frame::Bulk(big.clone()),
            Frame::Null,
            Frame::Bulk(big.clone())
        ]))
    );
    s.write_all(&request(&[b"GET", b"big"])).await.unwrap();
    assert_eq!(
        read_frame(&mut s, &mut buf).await,
        Some(Frame::Bulk(big.clone()))
    );

    // A pipeline of 300 × GET big (300 MiB of replies): the server writes replies out as
    // they pass 1 MiB instead of holding them all.
    let mut pipeline = Vec::new();
    for _ in 0..300 {
        pipeline.extend_from_slice(&request(&[b"GET", b"big"]));
    }
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        wr.write_all(&pipeline).await.unwrap();
        wr
    });
    let mut got = 0;
    let mut rbuf = Vec::new();
    while got < 300 {
        match parse(&rbuf, &FrameLimits::default()) {
            Ok((f, used)) => {
                assert_eq!(f, Frame::Bulk(big.clone()));
                rbuf.drain(..used);
                got += 1;
                continue;
            }
            Err(FrameError::Incomplete) => {}
            Err(e) => panic!("bad RESP: {e}"),
        }
        let n = tokio::time::timeout(Duration::from_secs(20), rd.read_buf(&mut rbuf))
            .await
            .expect("replies keep coming")
            .unwrap();
        assert!(n > 0, "connection closed after {got} replies");
    }
    let s = rd.reunite(writer.await.unwrap()).unwrap();
    drop(s);

    // KEYS with `*` + 4000 × `a` + `b` over 4 KiB keys: the backtracking matcher spent
    // up to 8 million steps per key here, on the runtime. Now it is answered at once,
    // with exactly the matching keys; SCAN MATCH too.
    let pattern = format!("*{}b", "a".repeat(4000));
    let mut matching = Vec::new();
    for batch in 0..3 {
        let mut mset = vec!["MSET".to_string()];
        for i in 0..100 {
            let mut key = format!("h:{batch}{i:02}:");
            let tail = if i % 50 == 7 { "b" } else { "a" };
            key.push_str(&"a".repeat(4096 - key.len() - 1));
            key.push_str(tail);
            if tail == "b" {
                matching.push(key.clone());
            }
            mset.extend([key, "1".to_string()]);
        }
        let words: Vec<&[u8]> = mset.iter().map(|w| w.as_bytes()).collect();
        let mut t = TcpStream::connect(&addr).await.unwrap();
        let mut tbuf = Vec::new();
        t.write_all(&request(&words)).await.unwrap();
        assert_eq!(read_frame(&mut t, &mut tbuf).await, Some(Frame::ok()));
    }
    matching.sort();
    assert_eq!(matching.len(), 6);
    let mut k = TcpStream::connect(&addr).await.unwrap();
    let mut kbuf = Vec::new();
    let want = Frame::Array(matching.iter().map(|m| Frame::bulk(m.as_str())).collect());
    k.write_all(&request(&[b"KEYS", pattern.as_bytes()]))
        .await
        .unwrap();
    assert_eq!(read_frame(&mut k, &mut kbuf).await, Some(want.clone()));
    k.write_all(&request(&[
        b"SCAN",
        b"0",
        b"MATCH",
        pattern.as_bytes(),
        b"COUNT",
        b"10000",
    ]))
    .await
    .unwrap();
    assert_eq!(
        read_frame(&mut k, &mut kbuf).await,
        Some(Frame::Array(vec![Frame::bulk("0"), want]))
    );
    // A pattern longer than twice the largest key is refused.
    let long = "*".repeat(8193);
    k.write_all(&request(&[b"KEYS", long.as_bytes()]))
        .await
        .unwrap();
    assert_eq!(
        read_frame(&mut k, &mut kbuf).await,
        Some(err(
            "ERR pattern is 8193 bytes; the limit is 8192 bytes (twice the largest key)"
        ))
    );
    assert_eq!(cli(&addr, &["PING"]), "PONG");
    assert_eq!(cli(&addr, &["STRLEN", "big"]), (1024 * 1024).to_string());

    // Memory (about 50 MiB here): building the 3 GiB MGET reply, or holding all 300
    // pipelined replies, would show.
    if let Some(peak) = peak_rss(pid) {
        assert!(
            peak < 256 * 1024 * 1024,
            "node peak RSS {} MiB",
            peak / (1024 * 1024)
        );
    }
}
