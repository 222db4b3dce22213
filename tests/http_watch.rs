//! End-to-end tests of watches over HTTP on real clusters of the built binary, with real
//! clients: `curl -N` reading server-sent events from `GET /v1/watch...` (puts, deletes,
//! an expiry and a multi-key revision of a prefix, in order, nothing outside it; a resume
//! with `Last-Event-ID` after any event, also inside a revision, on another node, yields
//! exactly the changes after it; a watch from a past revision replays the history), and
//! Consul-style blocking queries on `GET /v1/kv/{key}` and `GET /v1/kv` (with hand-written
//! HTTP/1.1 requests, as in `tests/http.rs`): answered after a write through another
//! node, or after `wait` with the same index, and not woken by a change outside the
//! range. On a node keeping 5 revisions of history: 410 `compacted` for a revision below
//! the window, a blocking query answered at once, a client that stops reading ending its
//! stream with a final `compacted` error event; and a key-prefix user's watch narrowed,
//! refused outside its prefix, and ended when its rights change.
//!
//! Nothing sleeps to synchronise: each step waits for the event, the gauge or the answer
//! it needs, with a deadline.

mod common;
mod http_client;

use base64::Engine as _;
use common::Cluster;
use http_client::{delete, get, put, request, Resp};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

/// The longest any one step may take.
const WAIT: Duration = Duration::from_secs(30);

fn ok_json(r: &Resp) -> Value {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// The version a write answered with.
fn version(r: &Resp) -> u64 {
    ok_json(r)["version"].as_u64().expect("version")
}

/// The `X-Paxosdb-Index` of an answer, checked equal to its `X-Consul-Index`.
fn index(r: &Resp) -> u64 {
    let ours = r.header("x-paxosdb-index");
    assert_eq!(ours, r.header("x-consul-index"), "{:?}", r.headers);
    ours.expect("X-Paxosdb-Index").parse().expect("a number")
}

/// One server-sent event: its `id`, `event` and the JSON of its `data`.
#[derive(Clone, Debug, PartialEq)]
struct Event {
    id: Option<String>,
    event: Option<String>,
    data: Value,
}

impl Event {
    fn parse(block: &[String]) -> Event {
        let field = |name: &str| {
            let prefix = format!("{name}: ");
            (block.iter()).find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
        };
        let data = field("data").unwrap_or_else(|| panic!("an event without data: {block:?}"));
        Event {
            id: field("id"),
            event: field("event"),
            data: serde_json::from_str(&data).unwrap_or_else(|e| panic!("{data}: {e}")),
        }
    }

    /// (type, key) of a change event.
    fn change(&self) -> (&str, &str) {
        let key = (self.data["key"].as_str()).unwrap_or_else(|| panic!("no key: {self:?}"));
        (self.data["type"].as_str().expect("type"), key)
    }

    fn revision(&self) -> u64 {
        self.data["revision"].as_u64().expect("revision")
    }
}

/// `curl -N` reading an event stream, line by line as curl prints it.
struct Curl {
    _child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    what: String,
}

impl Curl {
    /// `curl -N -sS [-H header]... http://{addr}{path}`, plus `args`.
    fn start(addr: &str, path: &str, headers: &[(&str, &str)], args: &[&str]) -> Curl {
        let mut cmd = common::tools::tool("curl");
        cmd.args(["-N", "-sS"]).args(args);
        for (name, value) in headers {
            cmd.arg("-H").arg(format!("{name}: {value}"));
        }
        cmd.arg(format!("http://{addr}{path}"));
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.stdout(Stdio::piped()).kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn curl");
        let out = child.stdout.take().expect("curl's stdout");
        Curl {
            _child: child,
            lines: BufReader::new(out).lines(),
            what: format!("curl {path} {headers:?}"),
        }
    }

    /// The next line, `None` at the end of the stream.
    async fn line(&mut self) -> Option<String> {
        tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("{}: nothing for {WAIT:?}", self.what))
            .expect("read curl's output")
    }

    /// The next block of lines up to a blank line: an event or a comment.
    async fn block(&mut self) -> Vec<String> {
        let mut block = vec![];
        loop {
            match self.line().await {
                None => panic!("{}: the stream ended after {block:?}", self.what),
                Some(l) if l.is_empty() && block.is_empty() => {}
                Some(l) if l.is_empty() => return block,
                Some(l) => block.push(l),
            }
        }
    }

    /// The revision of the opening comment, `: watching from revision N`.
    async fn opened(&mut self) -> u64 {
        let block = self.block().await;
        (block.first())
            .and_then(|l| l.strip_prefix(": watching from revision "))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{}: no opening comment: {block:?}", self.what))
    }

    /// The next event (comments, the heartbeats, are skipped).
    async fn event(&mut self) -> Event {
        loop {
            let block = self.block().await;
            if !block.iter().all(|l| l.starts_with(':')) {
                return Event::parse(&block);
            }
        }
    }

    /// The next `n` events.
    async fn events(&mut self, n: usize) -> Vec<Event> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.event().await);
        }
        out
    }

    /// Waits for the end of the stream.
    async fn ended(&mut self) {
        while let Some(l) = self.line().await {
            assert!(l.is_empty(), "{}: more after the end: {l:?}", self.what);
        }
    }
}

/// A request, timed, on a blocking thread (it may wait for long).
async fn timed(addr: &str, path: &str, headers: &[(&str, &str)]) -> (Resp, Duration) {
    let (addr, path) = (addr.to_string(), path.to_string());
    let headers: Vec<(String, String)> = (headers.iter())
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let h: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (&**n, &**v)).collect();
        let start = Instant::now();
        let r = request(&addr, "GET", &path, &h, b"");
        (r, start.elapsed())
    })
    .await
    .expect("the request's thread")
}

/// The watchers the node at `addr` serves now (its `paxosdb_watchers` gauge).
fn watchers(addr: &str) -> u64 {
    let text = get(addr, "/metrics").text();
    (text.lines())
        .find_map(|l| l.strip_prefix("paxosdb_watchers "))
        .unwrap_or_else(|| panic!("no paxosdb_watchers in /metrics:\n{text}"))
        .trim()
        .parse()
        .expect("a number")
}

fn basic(user: &str, password: &str) -> String {
    let raw = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_carry_a_prefix_in_order_and_resume_exactly() {
    let c = Cluster::start(3).await;
    let (a, b, n3) = (
        c.nodes[0].http_addr.as_str(),
        c.nodes[1].http_addr.as_str(),
        c.nodes[2].http_addr.as_str(),
    );
    version(&put(a, "/v1/kv/other/0", b"before"));

    // The watch is on node 2; every write goes through node 1 (or node 3's RESP port).
    let mut w = Curl::start(b, "/v1/watch?prefix=app/", &[], &[]);
    let first = w.opened().await;
    let v_a = version(&put(a, "/v1/kv/app/a", b"1"));
    version(&put(a, "/v1/kv/other/1", b"outside"));
    let v_b = version(&put(a, "/v1/kv/app/b", b"2"));
    assert_eq!(ok_json(&delete(a, "/v1/kv/app/a"))["deleted"], true);
    let v_bin = version(&put(a, "/v1/kv/app/%FF", b"\xffbin"));
    // One revision that changes three keys, two of them in the prefix.
    let mset = common::tools::tool("redis-cli")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            common::tools::port(&c.nodes[2].resp_addr),
        ])
        .args(["MSET", "app/m1", "m1", "other/m", "outside", "app/m2", "m2"])
        .output()
        .expect("run redis-cli");
    assert_eq!(common::tools::text(&mset).trim(), "OK");
    // Last, so that its expiry comes after every other change.
    let v_t = version(&put(a, "/v1/kv/app/t?ttl=1s", b"brief"));

    let got = w.events(8).await;
    let changes: Vec<(&str, Option<&str>)> = (got.iter())
        .map(|e| {
            (
                e.data["type"].as_str().expect("type"),
                e.data["key"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            ("put", Some("app/a")),
            ("put", Some("app/b")),
            ("delete", Some("app/a")),
            // Not UTF-8: `key_base64` only.
            ("put", None),
            ("put", Some("app/m1")),
            ("put", Some("app/m2")),
            ("put", Some("app/t")),
            ("expire", Some("app/t")),
        ],
        "{got:#?}"
    );
    // Puts carry their value, at their version; deletes and expiries none.
    let revisions: Vec<u64> = got.iter().map(Event::revision).collect();
    assert!(first <= v_a, "opened at {first}, first write {v_a}");
    assert_eq!(
        (revisions[0], revisions[1], revisions[3]),
        (v_a, v_b, v_bin)
    );
    assert_eq!(revisions[6], v_t);
    assert!(revisions.windows(2).all(|w| w[0] <= w[1]), "{revisions:?}");
    assert!(revisions[2] > v_b && revisions[7] > v_t, "{revisions:?}");
    assert_eq!(revisions[4], revisions[5], "MSET is one revision");
    assert_eq!(
        (
            &got[0].data["value"],
            &got[1].data["value"],
            &got[6].data["value"]
        ),
        (&json!("1"), &json!("2"), &json!("brief"))
    );
    for e in [&got[2], &got[7]] {
        assert!(e.data.get("value").is_none(), "{e:?}");
    }
    assert_eq!(got[3].data["key_base64"], "YXBwL/8=");
    assert_eq!(got[3].data["value_base64"], "/2Jpbg==");
    // The id is the revision, and `R.k` before the last change of a revision.
    let ids: Vec<String> = got.iter().map(|e| e.id.clone().expect("an id")).collect();
    let m = revisions[4];
    for (i, id) in ids.iter().enumerate() {
        let want = match i {
            4 => format!("{m}.1"),
            _ => revisions[i].to_string(),
        };
        assert_eq!(*id, want, "{got:#?}");
        assert_eq!(got[i].event, None, "a change is a plain message");
    }
    // A last change, so that every stream below ends its expected events with it.
    let v_z = version(&put(a, "/v1/kv/app/zz", b"end"));
    let last = w.event().await;
    assert_eq!((last.change(), last.revision()), (("put", "app/zz"), v_z));
    let all: Vec<Event> = got.into_iter().chain([last]).collect();

    // Resumed after any event, on another node, with the URL's from_revision (which a
    // reconnecting EventSource repeats) overridden: exactly the events after it.
    for (i, id) in ids.iter().enumerate() {
        let mut r = Curl::start(
            n3,
            "/v1/watch?prefix=app/&from_revision=1",
            &[("Last-Event-ID", id)],
            &[],
        );
        r.opened().await;
        let rest = r.events(all.len() - i - 1).await;
        assert_eq!(rest, all[i + 1..], "resumed after {id}");
    }

    // One key from a past revision: its history, then what comes.
    let mut k = Curl::start(
        a,
        &format!("/v1/watch/app/b?from_revision={first}"),
        &[],
        &[],
    );
    assert_eq!(k.opened().await, first);
    let e = k.event().await;
    assert_eq!((e.change(), e.revision()), (("put", "app/b"), v_b));
    let v_b2 = version(&put(b, "/v1/kv/app/b", b"3"));
    let e = k.event().await;
    assert_eq!(
        (e.change(), e.revision(), &e.data["value"]),
        (("put", "app/b"), v_b2, &json!("3"))
    );

    // Bad requests are answered, not streamed.
    let r = get(a, "/v1/watch/app/b?from_revision=0");
    assert_eq!((r.status, r.code()), (400, "invalid_input".into()));
    let r = request(a, "GET", "/v1/watch/app/b", &[("Last-Event-ID", "x")], b"");
    assert_eq!((r.status, r.code()), (400, "invalid_input".into()));
    assert_eq!(get(a, "/v1/watch/").status, 400);
    assert_eq!(get(a, "/v1/watch?prefix=a&limit=1").status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_queries_answer_after_a_change_or_the_wait() {
    let c = Cluster::start(3).await;
    let (a, b) = (c.nodes[0].http_addr.as_str(), c.nodes[1].http_addr.as_str());

    // Every read carries the index to block from, a missing key's 404 too.
    let r = get(b, "/v1/kv/cfg");
    assert_eq!(r.status, 404, "{}", r.text());
    let i0 = index(&r);

    // Blocking on node 2 from that index: the answer comes after a write through node 1.
    let path = format!("/v1/kv/cfg?index={i0}&wait=60s");
    let waiter = tokio::spawn({
        let b = b.to_string();
        async move { timed(&b, &path, &[]).await }
    });
    common::eventually(WAIT, "the blocking query waits on node 2", || async {
        (watchers(b) >= 1).then_some(())
    })
    .await;
    assert!(!waiter.is_finished(), "answered before any change");
    let v = version(&put(a, "/v1/kv/cfg", b"on"));
    let (r, took) = waiter.await.expect("the blocking query");
    assert_eq!(ok_json(&r)["value"], "on");
    let i1 = index(&r);
    assert!(i1 >= v && i1 > i0, "index {i0} -> {i1}, version {v}");
    assert!(took < WAIT, "{took:?}");

    // Nothing changes: the answer comes after the wait, with the same index.
    let path = format!("/v1/kv/cfg?index={i1}&wait=300ms");
    let (r, took) = timed(b, &path, &[]).await;
    assert_eq!(ok_json(&r)["value"], "on");
    assert_eq!(index(&r), i1);
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < WAIT, "{took:?}");

    // A range: a change outside it does not end the wait (the index moves on all the
    // same); one inside does.
    let j0 = index(&ok_json_resp(get(b, "/v1/kv?prefix=svc/")));
    version(&put(a, "/v1/kv/elsewhere", b"x"));
    let (r, took) = timed(b, &format!("/v1/kv?prefix=svc/&index={j0}&wait=300ms"), &[]).await;
    assert_eq!(ok_json(&r)["items"], json!([]));
    assert!(took >= Duration::from_millis(300), "{took:?}");
    let j1 = index(&r);
    assert!(j1 > j0, "{j0} -> {j1}");
    let v = version(&put(a, "/v1/kv/svc/web", b"10.0.0.1"));
    let (r, took) = timed(b, &format!("/v1/kv?prefix=svc/&index={j1}&wait=60s"), &[]).await;
    assert_eq!(
        ok_json(&r)["items"],
        json!([{"key": "svc/web", "value": "10.0.0.1", "version": v}])
    );
    assert!(index(&r) >= v && took < WAIT, "{took:?}");

    // A Consul client's first request sends its wait without an index: answered at once.
    let (r, took) = timed(b, "/v1/kv/cfg?wait=10m", &[]).await;
    assert_eq!(ok_json(&r)["value"], "on");
    assert!(took < WAIT, "{took:?}");
    assert_eq!(get(b, "/v1/kv/cfg?index=1&wait=1").status, 400);
    common::eventually(WAIT, "no watcher is left", || async {
        (watchers(b) == 0).then_some(())
    })
    .await;
}

fn ok_json_resp(r: Resp) -> Resp {
    assert_eq!(r.status, 200, "{}", r.text());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_history_and_a_key_prefix_user_bound_what_a_watch_sees() {
    const ADMIN_PW: &str = "admin-secret-w";
    let c = Cluster::builder(1)
        .admin(ADMIN_PW)
        .env(&[("PAXOSDB_WATCH_HISTORY_REVISIONS", "5")])
        .start()
        .await;
    let a = c.nodes[0].http_addr.as_str();
    let admin = basic("admin", ADMIN_PW);
    let as_admin = [("Authorization", admin.as_str())];
    let write = |key: &str, value: &[u8]| {
        let r = request(a, "PUT", &format!("/v1/kv/{key}"), &as_admin, value);
        version(&r)
    };

    // A user that may read only app/.
    let user = json!({"password": "spw", "role": "read", "prefix": "app/"});
    let r = request(
        a,
        "PUT",
        "/v1/users/scoped",
        &as_admin,
        user.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let scoped = basic("scoped", "spw");
    let as_scoped = [("Authorization", scoped.as_str())];
    let r = request(a, "GET", "/v1/watch/other", &as_scoped, b"");
    assert_eq!((r.status, r.code()), (403, "permission_denied".into()));
    let r = request(a, "GET", "/v1/watch?prefix=other/", &as_scoped, b"");
    assert_eq!((r.status, r.code()), (403, "permission_denied".into()));
    let r = get(a, "/v1/watch/app/x");
    assert_eq!((r.status, r.code()), (401, "unauthenticated".into()));

    // Watching every key, the user sees its prefix only; its rights narrowed, the
    // stream ends with an error event.
    let mut w = Curl::start(a, "/v1/watch", &[], &["-u", "scoped:spw"]);
    w.opened().await;
    write("other/1", b"hidden");
    let v = write("app/1", b"seen");
    let e = w.event().await;
    assert_eq!((e.change(), e.revision()), (("put", "app/1"), v));
    let narrower = json!({"prefix": "app/x/"});
    let r = request(
        a,
        "PUT",
        "/v1/users/scoped",
        &as_admin,
        narrower.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    write("app/2", b"not for the old rights");
    let e = w.event().await;
    assert_eq!(e.event.as_deref(), Some("error"), "{e:?}");
    assert_eq!(e.data["error"]["code"], "permission_denied", "{e:?}");
    w.ended().await;

    // Ten more revisions: the history keeps the last five.
    let mut last = 0;
    for i in 0..10 {
        last = write(&format!("k/{i}"), b"v");
    }
    for r in [
        request(a, "GET", "/v1/watch/k/0?from_revision=1", &as_admin, b""),
        request(
            a,
            "GET",
            "/v1/watch?prefix=k/",
            &[("Authorization", &admin), ("Last-Event-ID", "1")],
            b"",
        ),
    ] {
        assert_eq!(
            (r.status, r.code()),
            (410, "compacted".into()),
            "{}",
            r.text()
        );
        let oldest = r.json()["error"]["oldest_revision"]
            .as_u64()
            .expect("oldest_revision");
        assert!(oldest > 2 && oldest <= last, "oldest {oldest}, last {last}");
    }
    // A blocking query from an index below the window answers at once, as Consul does
    // after a reset.
    let (r, took) = timed(a, "/v1/kv/k/0?index=1&wait=60s", &as_admin).await;
    assert_eq!(ok_json(&r)["value"], "v");
    assert!(index(&r) >= last && took < WAIT, "{took:?}");

    // A client that stops reading falls behind the window: once it reads again, its
    // stream ends with the compacted error event (nothing is buffered for it meanwhile).
    let mut s = std::net::TcpStream::connect(a).expect("connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    let head = format!(
        "GET /v1/watch?prefix=big/ HTTP/1.1\r\nHost: {a}\r\nAuthorization: {admin}\r\n\
         Connection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains(": watching from revision") {
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).expect("the stream's start");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"));
    // 20 MiB: more than the socket buffers and the server's write buffer hold.
    let big = vec![b'x'; 512 * 1024];
    for i in 0..40 {
        write(&format!("big/{i}"), &big);
    }
    s.read_to_end(&mut seen).expect("the rest of the stream");
    let text = String::from_utf8_lossy(&seen);
    let error = text
        .split("event: error\ndata: ")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .unwrap_or_else(|| {
            panic!(
                "no error event in {} bytes: ...{}",
                text.len(),
                &text[text.len().saturating_sub(300)..]
            )
        });
    let error: Value = serde_json::from_str(error).expect("the error event's JSON");
    assert_eq!(error["error"]["code"], "compacted", "{error}");
    assert!(
        error["error"]["oldest_revision"].as_u64().unwrap() > 1,
        "{error}"
    );
    assert!(
        text.ends_with("\r\n0\r\n\r\n"),
        "the stream ends after the error event"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_quiet_stream_open_past_the_idle_timeout() {
    // Connections idle for a second are closed: heartbeats come every half second, and
    // a blocking query waits at most 9/10 of a second.
    let c = Cluster::start_with(1, &[("PAXOSDB_IDLE_TIMEOUT_MS", "1000")]).await;
    let a = c.nodes[0].http_addr.as_str();
    let mut w = Curl::start(a, "/v1/watch/quiet", &[], &[]);
    w.opened().await;
    let start = Instant::now();
    for _ in 0..4 {
        assert_eq!(w.block().await, [": keep-alive"]);
    }
    assert!(
        start.elapsed() > Duration::from_millis(1000),
        "{:?}",
        start.elapsed()
    );
    // Still open, past the idle timeout.
    let v = version(&put(a, "/v1/kv/quiet", b"at last"));
    let e = w.event().await;
    assert_eq!((e.change(), e.revision()), (("put", "quiet"), v));

    let i = index(&get(a, "/v1/kv/quiet"));
    let (r, took) = timed(a, &format!("/v1/kv/quiet?index={i}&wait=60s"), &[]).await;
    assert_eq!(
        (ok_json(&r)["value"].clone(), index(&r)),
        (json!("at last"), i)
    );
    assert!(
        took >= Duration::from_millis(900) && took < WAIT,
        "{took:?}"
    );

    // A node shutting down ends its streams, saying so, instead of holding its shutdown.
    let pid = c.nodes[0].child.as_ref().expect("node 1 runs").id();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM node 1");
    let e = w.event().await;
    assert_eq!(e.event.as_deref(), Some("error"), "{e:?}");
    assert_eq!(e.data["error"]["code"], "unavailable", "{e:?}");
    w.ended().await;
}
