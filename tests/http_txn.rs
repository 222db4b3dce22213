//! End-to-end tests of `POST /v1/txn` on a real 3-node cluster of the built binary, with
//! hand-written HTTP/1.1 requests (as in `tests/http.rs`): compare-and-set transactions
//! that succeed and then fail (and then run their failure branch only), transactions
//! through a follower, several keys changed in one transaction, reads and range reads,
//! range deletes, sessions (a retry is applied once), bad input refused with nothing
//! changed, and a key-prefix user kept inside its prefix.

mod common;
mod http_client;

use base64::Engine as _;
use common::Cluster;
use http_client::{get, request, Resp};
use serde_json::{json, Value};

fn ok_json(r: &Resp) -> Value {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// `POST /v1/txn` with `body` and extra headers.
fn txn_with(addr: &str, headers: &[(&str, &str)], body: &Value) -> Resp {
    let mut h = vec![("Content-Type", "application/json")];
    h.extend_from_slice(headers);
    request(addr, "POST", "/v1/txn", &h, body.to_string().as_bytes())
}

fn txn(addr: &str, body: &Value) -> Resp {
    txn_with(addr, &[], body)
}

/// The value of `key` as a linearizable `GET` through `addr` sees it (`None`: 404).
fn value_of(addr: &str, key: &str) -> Option<Value> {
    let r = get(addr, &format!("/v1/kv/{key}"));
    match r.status {
        404 => None,
        _ => Some(ok_json(&r)),
    }
}

/// The HTTP addresses of the leader and of one follower.
async fn leader_and_follower(c: &Cluster) -> (String, String) {
    let leader = c.leader().await as usize;
    let follower = leader % 3 + 1;
    (
        c.nodes[leader - 1].http_addr.clone(),
        c.nodes[follower - 1].http_addr.clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_compare_then_run_one_branch_atomically() {
    let c = Cluster::start(3).await;
    let (leader, follower) = leader_and_follower(&c).await;

    // Create-if-absent, through a follower: both keys at once.
    let open = json!({
        "compare": [{"key": "acct", "version": 0}],
        "success": [{"put": {"key": "acct", "value": "100"}},
                    {"put": {"key": "acct/log", "value": "opened"}}],
        "failure": [{"get": {"key": "acct"}}],
    });
    let r = ok_json(&txn(&follower, &open));
    assert_eq!(r["succeeded"], true, "{r}");
    let v1 = r["results"][0]["put"]["version"]
        .as_u64()
        .expect("a version");
    let v2 = r["results"][1]["put"]["version"]
        .as_u64()
        .expect("a version");
    assert!(v2 > v1, "{r}");
    // Both visible, through another node, with the versions the transaction reported.
    assert_eq!(value_of(&leader, "acct").unwrap()["version"], v1);
    assert_eq!(value_of(&leader, "acct/log").unwrap()["value"], "opened");

    // The same comparison again fails: the failure branch runs, nothing of success.
    let again = json!({
        "compare": [{"key": "acct", "version": 0}],
        "success": [{"put": {"key": "acct", "value": "999"}},
                    {"put": {"key": "acct/other", "value": "x"}}],
        "failure": [{"get": {"key": "acct"}}, {"get": {"key": "nothing"}}],
    });
    let r = ok_json(&txn(&leader, &again));
    assert_eq!(
        r,
        json!({"succeeded": false, "results": [
            {"get": {"value": "100", "version": v1}},
            {"get": null},
        ]})
    );
    assert_eq!(value_of(&follower, "acct").unwrap()["value"], "100");
    assert_eq!(value_of(&follower, "acct").unwrap()["version"], v1);
    assert_eq!(value_of(&follower, "acct/other"), None);

    // Compare-and-set on the version: the first wins, the second (same version) loses.
    let cas = |value: &str| {
        json!({
            "compare": [{"key": "acct", "version": v1}],
            "success": [{"put": {"key": "acct", "value": value, "prev": true}}],
        })
    };
    let r = ok_json(&txn(&follower, &cas("150")));
    assert_eq!(r["succeeded"], true);
    assert_eq!(
        r["results"][0]["put"]["prev"],
        json!({"value": "100", "version": v1})
    );
    let v3 = r["results"][0]["put"]["version"].as_u64().unwrap();
    let r = ok_json(&txn(&leader, &cas("175")));
    assert_eq!(r, json!({"succeeded": false, "results": []}));
    assert_eq!(value_of(&leader, "acct").unwrap()["value"], "150");

    // Value comparisons, `exists`, ordering: all must hold.
    let cond = |compare: Value| {
        let body = json!({"compare": compare, "success": [{"get": {"key": "acct"}}]});
        ok_json(&txn(&follower, &body))["succeeded"].clone()
    };
    assert_eq!(cond(json!([{"key": "acct", "value": "150"}])), true);
    assert_eq!(
        cond(json!([{"key": "acct", "value": "150", "op": "not_equal"}])),
        false
    );
    assert_eq!(
        cond(json!([{"key": "acct", "value": "2", "op": "less"}])),
        true
    );
    assert_eq!(
        cond(json!([{"key": "acct", "version": v3, "op": "greater"}])),
        false
    );
    // The create revision stays through the overwrites: the GET shows it, and a
    // comparison holds on it and not on the last write's revision.
    assert_eq!(value_of(&leader, "acct").unwrap()["create_revision"], v1);
    assert_eq!(cond(json!([{"key": "acct", "create_revision": v1}])), true);
    assert_eq!(cond(json!([{"key": "acct", "create_revision": v3}])), false);
    assert_eq!(cond(json!([{"key": "nope", "create_revision": 0}])), true);
    assert_eq!(
        cond(json!([{"key": "acct", "exists": true}, {"key": "nope", "exists": false}])),
        true
    );
    assert_eq!(
        cond(json!([{"key": "acct", "exists": true}, {"key": "nope", "exists": true}])),
        false
    );
    // A value comparison of an absent key never holds.
    assert_eq!(
        cond(json!([{"key": "nope", "value": "", "op": "not_equal"}])),
        false
    );

    // Reads and range reads see the writes before them in the same transaction.
    let body = json!({"success": [
        {"put": {"key": "p/1", "value": "one"}},
        {"put": {"key": "p/2", "value": "two"}},
        {"put": {"key_base64": "cC8z", "value_base64": "AP8="}},
        {"get": {"key": "p/2"}},
        {"range": {"prefix": "p/", "limit": 2}},
        {"range": {"from": "p/2", "to": "p/3"}},
        {"range": {"prefix_base64": "cC8="}},
    ]});
    let r = ok_json(&txn(&follower, &body));
    let res = &r["results"];
    assert_eq!(res.as_array().unwrap().len(), 7, "{r}");
    assert_eq!(res[3]["get"]["value"], "two");
    let keys = |v: &Value| -> Vec<Value> {
        (v["items"].as_array().unwrap().iter())
            .map(|i| i["key"].clone())
            .collect()
    };
    assert_eq!(keys(&res[4]["range"]), vec![json!("p/1"), json!("p/2")]);
    assert_eq!(res[4]["range"]["more"], true);
    assert_eq!(keys(&res[5]["range"]), vec![json!("p/2")]);
    assert_eq!(res[5]["range"]["more"], false);
    let all = &res[6]["range"]["items"];
    assert_eq!(all.as_array().unwrap().len(), 3, "{r}");
    assert_eq!(
        (&all[2]["key"], &all[2]["value_base64"]),
        (&json!("p/3"), &json!("AP8="))
    );
    assert_eq!(
        all[2]["version"], res[2]["put"]["version"],
        "the row shows the version its put reported"
    );

    // A range delete, a delete with its previous value, and what is left.
    let body = json!({"success": [
        {"delete_range": {"prefix": "p/"}},
        {"delete": {"key": "acct/log", "prev": true}},
        {"delete": {"key": "acct/log"}},
        {"range": {"from": "", "to": "q"}},
    ]});
    let r = ok_json(&txn(&leader, &body));
    assert_eq!(r["results"][0], json!({"delete_range": {"deleted": 3}}));
    assert_eq!(r["results"][1]["delete"]["deleted"], true);
    assert_eq!(r["results"][1]["delete"]["prev"]["value"], "opened");
    assert_eq!(r["results"][2], json!({"delete": {"deleted": false}}));
    assert_eq!(keys(&r["results"][3]["range"]), vec![json!("acct")]);
    let scan = ok_json(&get(&follower, "/v1/kv?prefix=p/"));
    assert_eq!(scan["items"], json!([]));

    // An empty transaction is a valid one.
    assert_eq!(
        ok_json(&txn(&follower, &json!({}))),
        json!({"succeeded": true, "results": []})
    );
    // Counted under its own operation name.
    let metrics = get(&follower, "/metrics").text();
    assert!(
        metrics.contains("paxosdb_requests_total{protocol=\"http\",op=\"txn\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_sessions_and_bad_input() {
    let c = Cluster::start(3).await;
    let (leader, follower) = leader_and_follower(&c).await;

    // A retry with the same session, through another node, is applied at most once and
    // answered with the first answer.
    let sess = [("X-Paxosdb-Client-Id", "777001"), ("X-Paxosdb-Seq", "1")];
    let body = json!({
        "compare": [{"key": "once", "exists": false}],
        "success": [{"put": {"key": "once", "value": "1"}}],
        "failure": [{"put": {"key": "twice", "value": "!"}}],
    });
    let first = txn_with(&follower, &sess, &body);
    assert_eq!(first.header("x-paxosdb-client-id"), Some("777001"));
    assert_eq!(first.header("x-paxosdb-seq"), Some("1"));
    let first = ok_json(&first);
    assert_eq!(first["succeeded"], true);
    let retry = ok_json(&txn_with(&leader, &sess, &body));
    assert_eq!(retry, first, "the retry gets the first answer");
    assert_eq!(
        value_of(&leader, "twice"),
        None,
        "the retry did not run again"
    );
    // The same seq for another transaction is refused, and runs nothing.
    let other = json!({"success": [{"put": {"key": "reused", "value": "x"}}]});
    let r = txn_with(&leader, &sess, &other);
    assert_eq!(
        (r.status, r.code()),
        (400, "session_reused".into()),
        "{}",
        r.text()
    );
    assert_eq!(value_of(&leader, "reused"), None);
    // Without session headers, the server picks one and says which.
    let r = txn(&leader, &other);
    assert!(r.header("x-paxosdb-client-id").is_some() && r.header("x-paxosdb-seq") == Some("1"));
    assert_eq!(ok_json(&r)["succeeded"], true);

    // Bad input: a 400 (or 413) naming the field, and nothing changes, even the valid
    // operations before the bad one.
    let put_first = |bad: Value| json!({"success": [{"put": {"key": "bad", "value": "x"}}, bad]});
    for (body, status, field) in [
        (
            put_first(json!({"incr": {"key": "a"}})),
            400,
            "success[1].incr",
        ),
        (put_first(json!({"get": {}})), 400, "success[1].get.key"),
        (
            put_first(json!({"get": {"key": ""}})),
            400,
            "success[1].get.key",
        ),
        (
            put_first(json!({"range": {"prefix": "a", "from": "b"}})),
            400,
            "success[1].range.prefix",
        ),
        (
            put_first(json!({"range": {"prefix": "a", "limit": 0}})),
            400,
            "success[1].range.limit",
        ),
        (
            put_first(json!({"put": {"key": "k", "value_base64": "not base64"}})),
            400,
            "success[1].put.value_base64",
        ),
        (
            put_first(json!({"put": {"key": "k", "value": "v", "value_base64": "dg=="}})),
            400,
            "success[1].put.value",
        ),
        (
            json!({"compare": [{"key": "a", "version": 1, "op": "eq"}],
                   "success": [{"put": {"key": "bad", "value": "x"}}]}),
            400,
            "compare[0].op",
        ),
        (
            json!({"compare": [{"key": "a"}], "success": [{"put": {"key": "bad", "value": "x"}}]}),
            400,
            "compare[0]",
        ),
        (
            json!({"success": [{"put": {"key": "bad", "value": "x"}}], "els": []}),
            400,
            "els",
        ),
        (
            put_first(json!({"put": {"key": "k".repeat(5000), "value": "v"}})),
            413,
            "success[1].put.key",
        ),
    ] {
        let r = txn(&follower, &body);
        assert_eq!(r.status, status, "{body}: {}", r.text());
        let e = &r.json()["error"];
        assert_eq!(e["field"], field, "{body}: {}", r.text());
        assert!(
            e["message"].as_str().unwrap().starts_with(field),
            "{}",
            r.text()
        );
    }
    let mut many = vec![json!({"put": {"key": "bad", "value": "x"}})];
    many.extend(vec![json!({"get": {"key": "a"}}); 1024]);
    let r = txn(&follower, &json!({ "success": many }));
    assert_eq!(
        (r.status, r.code()),
        (400, "invalid_input".into()),
        "{}",
        r.text()
    );
    assert!(r.text().contains("the limit is 1024"), "{}", r.text());
    for body in [&b"not json"[..], b"[]", b""] {
        let r = request(&leader, "POST", "/v1/txn", &[], body);
        assert_eq!(
            (r.status, r.code()),
            (400, "invalid_input".into()),
            "{}",
            r.text()
        );
    }
    assert_eq!(
        value_of(&leader, "bad"),
        None,
        "no bad transaction changed anything"
    );

    // A body over the limit (8 x the value limit) is refused before it is read.
    let wire =
        "POST /v1/txn HTTP/1.1\r\nHost: x\r\nContent-Length: 9000000\r\nConnection: close\r\n\r\n";
    let r = http_client::raw(&leader, wire.as_bytes());
    assert_eq!(
        (r.status, r.code()),
        (413, "too_large".into()),
        "{}",
        r.text()
    );
    // A transaction over the core's bound (4 x the value limit) changes nothing either.
    let mb = base64::engine::general_purpose::STANDARD.encode(vec![7u8; 1024 * 1024]);
    let big: Vec<Value> = (0..5)
        .map(|i| json!({"put": {"key": format!("big/{i}"), "value_base64": mb}}))
        .collect();
    let r = txn(&leader, &json!({ "success": big }));
    assert_eq!(
        (r.status, r.code()),
        (413, "too_large".into()),
        "{}",
        r.text()
    );
    assert_eq!(value_of(&leader, "big/0"), None);
    // Only POST.
    let r = get(&leader, "/v1/txn");
    assert_eq!(r.status, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_user_is_kept_inside_its_prefix() {
    const ADMIN_PW: &str = "admin-secret-1";
    let c = Cluster::builder(3).admin(ADMIN_PW).start().await;
    let addr = c.nodes[0].http_addr.clone();
    let basic = |user: &str, pw: &str| {
        let raw = format!("{user}:{pw}");
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    };
    let admin = basic("admin", ADMIN_PW);
    for (name, user) in [
        (
            "scoped",
            json!({"password": "spw", "role": "readwrite", "prefix": "app/"}),
        ),
        ("reader", json!({"password": "rpw", "role": "read"})),
    ] {
        let r = request(
            &addr,
            "PUT",
            &format!("/v1/users/{name}"),
            &[("Authorization", &admin)],
            user.to_string().as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let as_admin = [("Authorization", admin.as_str())];
    let r = txn_with(
        &addr,
        &as_admin,
        &json!({"success": [
            {"put": {"key": "other", "value": "admin's"}},
            {"put": {"key": "app/x", "value": "1"}},
        ]}),
    );
    assert_eq!(ok_json(&r)["succeeded"], true);

    // Inside its prefix, the scoped user runs transactions.
    let scoped = basic("scoped", "spw");
    let as_scoped = [("Authorization", scoped.as_str())];
    let inside = json!({
        "compare": [{"key": "app/x", "value": "1"}],
        "success": [{"put": {"key": "app/y", "value": "2"}},
                    {"range": {"prefix": "app/"}}],
    });
    let r = ok_json(&txn_with(&addr, &as_scoped, &inside));
    assert_eq!(r["succeeded"], true, "{r}");
    assert_eq!(
        r["results"][1]["range"]["items"].as_array().unwrap().len(),
        2
    );

    // A key, a compared key or a range outside it: 403, and nothing of it runs.
    for outside in [
        json!({"success": [{"put": {"key": "app/z", "value": "3"}},
                           {"put": {"key": "other", "value": "mine"}}]}),
        json!({"compare": [{"key": "other", "exists": true}],
               "success": [{"put": {"key": "app/z", "value": "3"}}]}),
        json!({"success": [{"put": {"key": "app/z", "value": "3"}},
                           {"delete_range": {"prefix": "app"}}]}),
        json!({"success": [{"put": {"key": "app/z", "value": "3"}},
                           {"range": {"from": "", "to": "b"}}]}),
    ] {
        let r = txn_with(&addr, &as_scoped, &outside);
        assert_eq!(
            (r.status, r.code()),
            (403, "permission_denied".into()),
            "{outside}: {}",
            r.text()
        );
    }
    // A read-only user may run a transaction that only reads, and no other.
    let reader = basic("reader", "rpw");
    let r = txn_with(
        &addr,
        &[("Authorization", reader.as_str())],
        &json!({"success": [{"put": {"key": "other", "value": "x"}}]}),
    );
    assert_eq!((r.status, r.code()), (403, "permission_denied".into()));
    let r = ok_json(&txn_with(
        &addr,
        &[("Authorization", reader.as_str())],
        &json!({"success": [{"get": {"key": "other"}}]}),
    ));
    assert_eq!(r["results"][0]["get"]["value"], "admin's");
    // No credentials: 401.
    let r = txn(&addr, &json!({"success": [{"get": {"key": "app/x"}}]}));
    assert_eq!((r.status, r.code()), (401, "unauthenticated".into()));

    let check = json!({"success": [{"get": {"key": "other"}}, {"get": {"key": "app/z"}}]});
    let r = ok_json(&txn_with(&addr, &as_admin, &check));
    assert_eq!(r["results"][0]["get"]["value"], "admin's");
    assert_eq!(
        r["results"][1]["get"],
        Value::Null,
        "nothing of a refused txn ran"
    );
}
