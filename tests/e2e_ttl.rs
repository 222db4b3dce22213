//! Keys with a time to live through every API but Redis (which has its own tests), on a
//! real three-node cluster: the Rust client over gRPC (`Client::put_with_ttl`,
//! `Client::get_timed`), the `paxosdb put --ttl` / `get` CLI, and HTTP `PUT ?ttl=` with
//! curl.
//!
//! A time to live counts from when the write is applied, by the log's time (the leader's
//! clock); an expired key is absent for every read on every node. The nodes run on this
//! machine, so the leader's clock is the test's: a deadline must lie between the clock
//! before the write plus the time to live and the clock after it plus the time to live.
//! Nothing sleeps to synchronise: expiry is awaited by polling with a deadline.

mod common;

use common::{tools, Cluster, BIN};
use paxosdb::client::{Client, PutOptions};
use paxosdb::command::ScanRange;
use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long an expired key may take to disappear everywhere: the leader stamps the log
/// when its clock passes the earliest deadline (and at least every second), and every
/// node must apply that stamp.
const GONE_WITHIN: Duration = Duration::from_secs(5);

/// The wall clock in ms since the Unix epoch (the clock the nodes' leader stamps with).
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Waits until `key` is absent on every node: each node's own copy (a stale read, what
/// that node applied) and its scan, then a linearizable read.
async fn await_gone_everywhere(cluster: &Cluster, key: &[u8]) {
    for id in 1..=3u64 {
        let c = cluster.client_for(id);
        let what = format!("{:?} expired on node {id}", String::from_utf8_lossy(key));
        common::eventually(GONE_WITHIN, &what, || async {
            let (v, _) = c.get_timed(key, true).await.unwrap();
            v.is_none().then_some(())
        })
        .await;
        let rows = c
            .scan(&ScanRange::Prefix(key.to_vec()), 0, true)
            .await
            .unwrap();
        assert!(
            rows.items.iter().all(|kv| kv.key != key),
            "node {id} scans an expired key: {rows:?}"
        );
        assert_eq!(c.get(key, false).await.unwrap().0, None, "node {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ttl_put_through_a_follower_expires_on_every_node() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    let other = (1..=3).find(|i| *i != follower).unwrap();
    let (writer, reader) = (cluster.client_for(follower), cluster.client_for(other));

    // A long time to live first: its deadline and remaining time are exact enough to
    // check against this machine's clock.
    let before = now_ms();
    let put = writer
        .put_with_ttl(b"ttl/long", b"v", Duration::from_secs(60))
        .await
        .unwrap();
    let after = now_ms();
    let (got, _) = reader.get_timed(b"ttl/long", false).await.unwrap();
    let got = got.expect("the key, read through another node");
    assert_eq!(
        (got.value.value.as_slice(), got.value.version),
        (&b"v"[..], put.version)
    );
    let at = got.expires_at_ms.expect("a deadline");
    assert!(
        (before + 60_000 - 1..=after + 60_000).contains(&at),
        "deadline {at} should be 60 s after the write ({before}..{after})"
    );
    let left = got.ttl.expect("a remaining time");
    assert!(
        left <= Duration::from_secs(60) && left > Duration::from_secs(50),
        "{left:?}"
    );
    // `get` still answers the plain value.
    let (plain, _) = reader.get(b"ttl/long", false).await.unwrap();
    assert_eq!(plain.unwrap().version, put.version);

    // 300 ms: seen with its deadline, then gone on every node.
    let before = now_ms();
    writer
        .put_with_ttl(b"ttl/short", b"brief", Duration::from_millis(300))
        .await
        .unwrap();
    let after = now_ms();
    match reader.get_timed(b"ttl/short", false).await.unwrap().0 {
        Some(t) => {
            let left = t.ttl.expect("a remaining time");
            assert!(
                left > Duration::ZERO && left <= Duration::from_millis(300),
                "{left:?}"
            );
            let at = t.expires_at_ms.expect("a deadline");
            assert!(
                (before + 300 - 1..=after + 300).contains(&at),
                "deadline {at} should be 300 ms after the write ({before}..{after})"
            );
        }
        // Only a slow machine may read it after its deadline.
        None => assert!(
            now_ms() >= before + 300,
            "a 300 ms key vanished {} ms after it was written",
            now_ms() - before
        ),
    }
    await_gone_everywhere(&cluster, b"ttl/short").await;
    // The long one is still there, with its deadline.
    let (still, _) = cluster
        .client_for(3)
        .get_timed(b"ttl/long", true)
        .await
        .unwrap();
    assert!(still.is_some_and(|t| t.expires_at_ms == Some(at)));

    // A plain put clears the deadline; a put with return_prev and a ttl answers the value
    // it replaced.
    let put = writer.put(b"ttl/long", b"forever", false).await.unwrap();
    let (got, _) = reader.get_timed(b"ttl/long", false).await.unwrap();
    let got = got.unwrap();
    assert_eq!(got.value.version, put.version);
    assert_eq!((got.expires_at_ms, got.ttl), (None, None), "{got:?}");
    let opts = PutOptions {
        return_prev: true,
        ttl: Some(Duration::from_secs(30)),
    };
    let put = writer.put_with(b"ttl/long", b"again", opts).await.unwrap();
    assert_eq!(put.prev.map(|p| p.value), Some(b"forever".to_vec()));
    let (got, _) = reader.get_timed(b"ttl/long", false).await.unwrap();
    assert!(got
        .unwrap()
        .ttl
        .is_some_and(|t| t <= Duration::from_secs(30)));
    let opts = PutOptions {
        ttl: Some(Duration::from_secs(30)),
        ..PutOptions::default()
    };
    assert_eq!(
        writer.put_with(b"ttl/new", b"x", opts).await.unwrap().prev,
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_ttl_is_refused_and_changes_nothing() {
    let cluster = Cluster::start(3).await;
    let c: Client = cluster.client_for(2);
    let put = c.put(b"kept", b"v", false).await.unwrap();
    let too_long = Duration::from_secs(101 * 366 * 24 * 3600);
    for (ttl, says) in [(too_long, "100 years"), (Duration::ZERO, "positive")] {
        match c.put_with_ttl(b"kept", b"changed", ttl).await {
            Err(paxosdb::Error::InvalidInput(m)) => assert!(m.contains(says), "{m}"),
            other => panic!("a ttl of {ttl:?}: {other:?}"),
        }
    }
    // Exactly 100 years (36,525 days) is taken; a ms more is not.
    let max = Duration::from_millis(36_525 * 24 * 3_600 * 1_000);
    assert!(c
        .put_with_ttl(b"century", b"v", max + Duration::from_millis(1))
        .await
        .is_err());
    c.put_with_ttl(b"century", b"v", max).await.unwrap();
    let (got, _) = cluster
        .client_for(1)
        .get_timed(b"kept", false)
        .await
        .unwrap();
    let got = got.unwrap();
    assert_eq!(
        (
            got.value.value.as_slice(),
            got.value.version,
            got.expires_at_ms
        ),
        (&b"v"[..], put.version, None)
    );
}

fn cli(cluster: &Cluster, node: usize, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["--endpoints", &cluster.endpoints()[node - 1]])
        .args(args)
        .output()
        .expect("run paxosdb")
}

fn json_of(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", tools::text(o)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_puts_with_a_ttl_and_shows_it() {
    let cluster = Cluster::start(3).await;

    let before = now_ms();
    let o = cli(&cluster, 1, &["put", "--ttl", "30s", "cli/a", "hello"]);
    let after = now_ms();
    assert!(o.status.success(), "{}", tools::text(&o));
    let o = cli(&cluster, 2, &["get", "--json", "cli/a"]);
    assert!(o.status.success(), "{}", tools::text(&o));
    let v = json_of(&o);
    assert_eq!(v["value"], "hello");
    let at = v["expires_at_ms"].as_u64().expect("expires_at_ms");
    assert!((before + 30_000 - 1..=after + 30_000).contains(&at), "{v}");
    let ttl = v["ttl_ms"].as_u64().expect("ttl_ms");
    assert!((20_000..=30_000).contains(&ttl), "{v}");
    let o = cli(&cluster, 3, &["get", "cli/a"]);
    assert!(o.status.success(), "{}", tools::text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hello\n");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("(expires in ") && err.contains(" s)"), "{err}");

    // Hours; then a plain put clears the ttl, and get says nothing of expiry.
    let o = cli(&cluster, 1, &["put", "--ttl", "2h", "cli/a", "later"]);
    assert!(o.status.success(), "{}", tools::text(&o));
    let v = json_of(&cli(&cluster, 2, &["get", "--json", "cli/a"]));
    let ttl = v["ttl_ms"].as_u64().expect("ttl_ms");
    assert!((7_190_000..=7_200_000).contains(&ttl), "{v}");
    assert!(cli(&cluster, 1, &["put", "cli/a", "plain"])
        .status
        .success());
    let v = json_of(&cli(&cluster, 2, &["get", "--json", "cli/a"]));
    assert_eq!(v["value"], "plain");
    assert!(
        v.get("expires_at_ms").is_none() && v.get("ttl_ms").is_none(),
        "{v}"
    );
    let o = cli(&cluster, 2, &["get", "cli/a"]);
    assert!(!String::from_utf8_lossy(&o.stderr).contains("expires"));

    // Bad ttls are refused before anything is sent.
    for bad in ["0s", "soon", "-5s", "10d"] {
        let o = cli(
            &cluster,
            1,
            &["put", &format!("--ttl={bad}"), "cli/a", "no"],
        );
        assert!(!o.status.success(), "--ttl {bad}: {}", tools::text(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("ttl"),
            "{}",
            tools::text(&o)
        );
    }
    let o = cli(&cluster, 1, &["put", "--ttl", "1000000h", "cli/a", "no"]);
    assert!(!o.status.success());
    assert!(tools::text(&o).contains("100 years"), "{}", tools::text(&o));
    assert_eq!(
        json_of(&cli(&cluster, 3, &["get", "--json", "cli/a"]))["value"],
        "plain"
    );

    // 500 ms: `get` exits 1 once the key expired.
    let o = cli(&cluster, 3, &["put", "--ttl", "500ms", "cli/b", "brief"]);
    assert!(o.status.success(), "{}", tools::text(&o));
    common::eventually(GONE_WITHIN, "cli/b expired", || async {
        let o = cli(&cluster, 1, &["get", "cli/b"]);
        (o.status.code() == Some(1)).then_some(())
    })
    .await;
    let v = json_of(&cli(&cluster, 2, &["get", "--json", "cli/b"]));
    assert_eq!(v["found"], false);
}

fn curl(args: &[&str]) -> (u16, serde_json::Value) {
    let (status, body) = tools::curl(args);
    let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {status} {body}"));
    (status, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_puts_with_a_ttl_and_get_shows_the_deadline() {
    assert!(
        tools::installed("curl"),
        "curl is not installed; run scripts/setup"
    );
    let cluster = Cluster::start(3).await;
    let url =
        |node: usize, path: &str| format!("http://{}{path}", cluster.nodes[node - 1].http_addr);
    let put = |node: usize, path: &str, body: &str, headers: &[&str]| {
        let u = url(node, path);
        let mut args = vec!["-X", "PUT", "--data-binary", body, u.as_str()];
        for h in headers {
            args.extend(["-H", h]);
        }
        curl(&args)
    };

    let before = now_ms();
    let (status, v) = put(1, "/v1/kv/h/a?ttl=30s", "hello", &[]);
    let after = now_ms();
    assert_eq!(status, 200, "{v}");
    let version = v["version"].as_u64().unwrap();
    let (status, v) = curl(&[&url(2, "/v1/kv/h/a")]);
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (&v["value"], v["version"].as_u64()),
        (&"hello".into(), Some(version))
    );
    let at = v["expires_at_ms"].as_u64().expect("expires_at_ms");
    assert!((before + 30_000 - 1..=after + 30_000).contains(&at), "{v}");
    let ttl = v["ttl_ms"].as_u64().expect("ttl_ms");
    assert!((20_000..=30_000).contains(&ttl), "{v}");

    // Conditions combine with a ttl: create-if-absent, if-version, if-exists.
    let (status, v) = put(1, "/v1/kv/h/a?ttl=30s&cas=0", "no", &[]);
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["error"]["version"].as_u64(), Some(version));
    let (status, v) = put(2, &format!("/v1/kv/h/a?ttl=1h&cas={version}"), "cas", &[]);
    assert_eq!(status, 200, "{v}");
    let v2 = v["version"].as_u64().unwrap();
    let (status, v) = put(3, &format!("/v1/kv/h/a?ttl=1h&cas={version}"), "stale", &[]);
    assert_eq!(status, 409, "{v}");
    assert_eq!(
        (
            v["error"]["version"].as_u64(),
            &v["error"]["current"]["value"]
        ),
        (Some(v2), &"cas".into())
    );
    let (_, v) = curl(&[&url(3, "/v1/kv/h/a")]);
    assert_eq!(v["value"], "cas");
    assert!(v["ttl_ms"].as_u64().is_some_and(|t| t > 3_500_000), "{v}");
    let (status, v) = put(1, "/v1/kv/h/none?ttl=30s", "x", &["If-Match: *"]);
    assert_eq!(
        (status, &v["error"]["current"]),
        (409, &serde_json::Value::Null)
    );
    let (status, v) = put(1, "/v1/kv/h/new?ttl=30s", "x", &["If-None-Match: *"]);
    assert_eq!(status, 200, "{v}");

    // A plain PUT clears the deadline: GET shows none.
    let (status, _) = put(1, "/v1/kv/h/a", "plain", &[]);
    assert_eq!(status, 200);
    let (_, v) = curl(&[&url(2, "/v1/kv/h/a")]);
    assert_eq!(v["value"], "plain");
    assert!(
        v.get("expires_at_ms").is_none() && v.get("ttl_ms").is_none(),
        "{v}"
    );

    // Bad ttls: 400, nothing written.
    for bad in [
        "0s",
        "30",
        "1.5s",
        "-1s",
        "10d",
        "1000000h",
        "9999999999999999ms",
    ] {
        let (status, v) = put(1, &format!("/v1/kv/h/a?ttl={bad}"), "no", &[]);
        assert_eq!(
            (status, &v["error"]["code"]),
            (400, &"invalid_input".into()),
            "ttl={bad}: {v}"
        );
        assert!(
            v["error"]["message"].as_str().unwrap().contains("ttl"),
            "{v}"
        );
    }
    let (_, v) = curl(&[&url(3, "/v1/kv/h/a")]);
    assert_eq!(v["value"], "plain");

    // 500 ms: GET answers 404 on every node once it expired.
    let (status, _) = put(3, "/v1/kv/h/brief?ttl=500ms", "brief", &[]);
    assert_eq!(status, 200);
    for node in 1..=3 {
        let u = url(node, "/v1/kv/h/brief?consistency=stale");
        common::eventually(
            GONE_WITHIN,
            &format!("h/brief gone on node {node}"),
            || async { (tools::curl(&[&u]).0 == 404).then_some(()) },
        )
        .await;
    }
    assert_eq!(tools::curl(&[&url(1, "/v1/kv/h/brief")]).0, 404);
}
