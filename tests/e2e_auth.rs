//! Users, passwords, tokens and roles on real processes with real clients: a 3-node
//! cluster of the built binary started with `--admin-password-file`, driven by redis-cli,
//! redis-py, curl, the gRPC client library and the CLI.
//!
//! What must hold: nothing runs without credentials; wrong credentials are refused on
//! every API; a `read` user cannot write; a prefix-scoped user neither reads, writes nor
//! lists keys outside its prefix; users are replicated, survive a restart and reach a node
//! that caught up by state transfer.

mod common;

use common::tools::{curl, port};
use common::{eventually, Cluster};
use std::process::Command;
use std::time::Duration;

const ADMIN_PW: &str = "admin-secret-1";

/// `redis-cli -p PORT [--user U --pass P] args...`: stdout and stderr, trimmed.
fn cli(addr: &str, auth: Option<(&str, &str)>, args: &[&str]) -> String {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["-h", "127.0.0.1", "-p", port(addr), "--no-auth-warning"]);
    if let Some((u, p)) = auth {
        cmd.args(["--user", u, "--pass", p]);
    }
    let out = cmd.args(args).output().expect("run redis-cli");
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    s.trim().to_string()
}

fn url(addr: &str, path: &str) -> String {
    format!("http://{addr}{path}")
}

/// Runs a redis-py script with `PORT` set; returns its stdout (asserts success).
fn python(addr: &str, script: &str) -> String {
    let out = Command::new("python3")
        .args(["-c", script])
        .env("PORT", port(addr))
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A 3-node cluster whose administrator `admin` has [`ADMIN_PW`] (and `extra` settings),
/// once every node knows the administrator.
async fn start(extra: &[(&str, &str)]) -> Cluster {
    Cluster::builder(3).admin(ADMIN_PW).env(extra).start().await
}

fn admin() -> Option<(&'static str, &'static str)> {
    Some(("admin", ADMIN_PW))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_prefixes_are_enforced_on_resp_and_http() {
    let c = start(&[]).await;
    let resp = c.nodes[0].resp_addr.clone();
    let http = c.nodes[1].http_addr.clone();

    // No credentials, wrong credentials: refused, nothing changes.
    assert!(cli(&resp, None, &["SET", "k", "v"]).contains("NOAUTH"));
    assert!(cli(&resp, None, &["GET", "k"]).contains("NOAUTH"));
    assert!(
        cli(&resp, Some(("admin", "wrong")), &["GET", "k"]).contains("WRONGPASS"),
        "a wrong password is refused"
    );
    assert!(cli(&resp, None, &["HELLO", "3", "AUTH", "default", "wrong"]).contains("WRONGPASS"));
    assert!(cli(&resp, None, &["AUTH", "wrong"]).contains("WRONGPASS"));

    // The admin creates users (Redis ACL syntax) and some data.
    for rules in [
        vec!["reader", "on", ">rpw", "+@read", "~*"],
        vec!["scoped", "on", ">spw", "+@readwrite", "~app/*"],
    ] {
        let mut args = vec!["ACL", "SETUSER"];
        args.extend(rules);
        assert_eq!(cli(&resp, admin(), &args), "OK");
    }
    assert_eq!(cli(&resp, admin(), &["SET", "app/x", "1"]), "OK");
    assert_eq!(cli(&resp, admin(), &["SET", "other", "2"]), "OK");
    assert_eq!(cli(&resp, admin(), &["ACL", "WHOAMI"]), "admin");
    let list = cli(&resp, admin(), &["ACL", "LIST"]);
    assert!(list.contains("user scoped on ~app/* +@readwrite"), "{list}");
    assert!(!list.contains("spw"), "no secret is shown: {list}");

    // A read user reads but cannot write, nor manage users.
    let reader = Some(("reader", "rpw"));
    assert_eq!(cli(&resp, reader, &["GET", "other"]), "2");
    assert!(cli(&resp, reader, &["SET", "other", "x"]).contains("NOPERM"));
    assert!(cli(
        &resp,
        reader,
        &["ACL", "SETUSER", "evil", "on", ">x", "+@all"]
    )
    .contains("NOPERM"));
    assert_eq!(
        cli(&resp, admin(), &["GET", "other"]),
        "2",
        "nothing changed"
    );

    // A scoped user sees only its prefix.
    let scoped = Some(("scoped", "spw"));
    assert!(cli(&resp, scoped, &["GET", "other"]).contains("NOPERM"));
    assert!(cli(&resp, scoped, &["SET", "other", "x"]).contains("NOPERM"));
    assert_eq!(cli(&resp, scoped, &["SET", "app/y", "3"]), "OK");
    // A DEL naming one key outside the prefix deletes nothing.
    assert!(cli(&resp, scoped, &["DEL", "app/y", "other"]).contains("NOPERM"));
    assert_eq!(cli(&resp, scoped, &["GET", "app/y"]), "3");
    let keys = cli(&resp, scoped, &["KEYS", "*"]);
    let mut keys: Vec<&str> = keys.lines().collect();
    keys.sort();
    assert_eq!(keys, vec!["app/x", "app/y"]);
    assert_eq!(cli(&resp, scoped, &["DBSIZE"]), "2");

    // redis-py, RESP2 and RESP3.
    let out = python(
        &resp,
        "import os, redis\n\
         p = int(os.environ['PORT'])\n\
         r = redis.Redis(port=p, username='reader', password='rpw')\n\
         print(r.get('other').decode())\n\
         try:\n    r.set('other', 'x'); print('wrote')\n\
         except redis.exceptions.NoPermissionError: print('noperm')\n\
         try:\n    redis.Redis(port=p, username='reader', password='bad').ping(); print('in')\n\
         except redis.exceptions.AuthenticationError: print('wrongpass')\n\
         r3 = redis.Redis(port=p, username='scoped', password='spw', protocol=3)\n\
         print(sorted(k.decode() for k in r3.scan_iter('*')))\n",
    );
    assert_eq!(out, "2\nnoperm\nwrongpass\n['app/x', 'app/y']");

    // HTTP: 401 without or with wrong credentials, 403 for a role refusal.
    let (code, _) = curl(&[&url(&http, "/v1/kv/other")]);
    assert_eq!(code, 401);
    let out = Command::new("curl")
        .args([
            "-s",
            "-D",
            "-",
            "-o",
            "/dev/null",
            &url(&http, "/v1/kv/other"),
        ])
        .output()
        .unwrap();
    let headers = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(headers.contains("www-authenticate: basic"), "{headers}");
    let (code, _) = curl(&["-u", "admin:nope", &url(&http, "/v1/kv/other")]);
    assert_eq!(code, 401);
    let (code, body) = curl(&["-u", "reader:rpw", &url(&http, "/v1/kv/other")]);
    assert_eq!(code, 200, "{body}");
    let (code, body) = curl(&[
        "-u",
        "reader:rpw",
        "-X",
        "PUT",
        "-d",
        "x",
        &url(&http, "/v1/kv/other"),
    ]);
    assert_eq!(code, 403, "{body}");
    let (code, _) = curl(&["-u", "scoped:spw", &url(&http, "/v1/kv/other")]);
    assert_eq!(code, 403);
    let (code, body) = curl(&["-u", "scoped:spw", &url(&http, "/v1/kv?prefix=")]);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("app/x") && !body.contains("other"), "{body}");

    // Bearer tokens: made by an admin, stored hashed, carry the user's role.
    let (code, _) = curl(&[
        "-u",
        "reader:rpw",
        "-X",
        "POST",
        &url(&http, "/v1/users/reader/tokens"),
    ]);
    assert_eq!(code, 403, "only an admin makes tokens");
    let (code, body) = curl(&[
        "-u",
        &format!("admin:{ADMIN_PW}"),
        "-X",
        "POST",
        &url(&http, "/v1/users/reader/tokens"),
    ]);
    assert_eq!(code, 200, "{body}");
    let token: serde_json::Value = serde_json::from_str(&body).unwrap();
    let bearer = format!("Authorization: Bearer {}", token["token"].as_str().unwrap());
    let (code, _) = curl(&["-H", &bearer, &url(&http, "/v1/kv/other")]);
    assert_eq!(code, 200);
    let (code, _) = curl(&[
        "-H",
        &bearer,
        "-X",
        "PUT",
        "-d",
        "x",
        &url(&http, "/v1/kv/other"),
    ]);
    assert_eq!(code, 403);
    let (code, _) = curl(&[
        "-H",
        "Authorization: Bearer reader.00000000.forged",
        &url(&http, "/v1/kv/other"),
    ]);
    assert_eq!(code, 401);

    // Deleting a user takes effect at once, also for a connection that authenticated.
    assert_eq!(cli(&resp, admin(), &["ACL", "DELUSER", "reader"]), "1");
    let (code, _) = curl(&["-H", &bearer, &url(&http, "/v1/kv/other")]);
    assert_eq!(code, 401, "a deleted user's token is refused");
    assert!(cli(&resp, reader, &["GET", "other"]).contains("WRONGPASS"));
    assert_eq!(cli(&resp, admin(), &["GET", "other"]), "2");

    // Failures are logged (rate limited), secrets never.
    let log = c.log_of(1);
    // One line per 5 s at most, whatever the protocol: the RESP failures above may fall
    // in the window a gRPC failure opened (reads no longer write the log, so the test's
    // steps can all fit in 5 s).
    assert!(log.contains("authentication failed on "), "{log}");
    for secret in [ADMIN_PW, "rpw", "spw"] {
        assert!(
            !c.log_of(1).contains(secret) && !c.log_of(2).contains(secret),
            "a secret in a log"
        );
    }
}

/// Users survive a restart, and reach a node that was down while they were created and
/// came back by a state transfer (its missing log range compacted away everywhere).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_survive_restart_and_state_transfer() {
    let mut c = start(&[
        ("PAXOSDB_COMPACT_EVERY_ENTRIES", "50"),
        ("PAXOSDB_LOG_KEEP_ENTRIES", "200"),
    ])
    .await;
    let leader = c.leader().await;
    let behind = (1..=3).find(|&id| id != leader).unwrap();
    let resp_of = |c: &Cluster, id: u64| c.nodes[id as usize - 1].resp_addr.clone();
    let lead_resp = resp_of(&c, leader);
    let before = c.applied(behind).await.unwrap();
    c.kill(behind);
    assert_eq!(
        cli(
            &lead_resp,
            admin(),
            &["ACL", "SETUSER", "late", "on", ">lpw", "+@read"]
        ),
        "OK"
    );
    // Far more entries than the log keeps.
    python(
        &lead_resp,
        &format!(
            "import os, redis\n\
             r = redis.Redis(port=int(os.environ['PORT']), username='admin', password='{ADMIN_PW}')\n\
             for i in range(400):\n    r.set('fill%d' % i, 'x')\n"
        ),
    );
    for id in (1..=3).filter(|&id| id != behind) {
        eventually(
            Duration::from_secs(30),
            "the log is trimmed past the stopped node",
            || {
                let c = &c;
                async move {
                    let st = c.client_for(id).status_of(0).await.ok()?;
                    (st.compacted_index > before + 10).then_some(())
                }
            },
        )
        .await;
    }
    c.restart(behind).await;
    let target = c.applied(leader).await.unwrap();
    c.wait_applied(behind, target, Duration::from_secs(60))
        .await;
    assert!(
        c.log_of(behind).contains("fetching its state"),
        "the node caught up by state transfer"
    );
    let behind_resp = resp_of(&c, behind);
    assert_eq!(
        cli(&behind_resp, Some(("late", "lpw")), &["GET", "fill1"]),
        "x"
    );
    assert!(cli(&behind_resp, Some(("late", "lpw")), &["SET", "a", "b"]).contains("NOPERM"));

    // A whole-cluster restart: users are in the applied state on disk.
    for id in 1..=3 {
        c.kill(id);
    }
    for id in 1..=3 {
        c.spawn(id);
    }
    c.wait_for_leader().await;
    let r1 = resp_of(&c, 1);
    eventually(Duration::from_secs(30), "users after a restart", || {
        let r1 = r1.clone();
        async move { (cli(&r1, Some(("late", "lpw")), &["GET", "fill1"]) == "x").then_some(()) }
    })
    .await;
    assert!(cli(&r1, Some(("late", "nope")), &["GET", "fill1"]).contains("WRONGPASS"));
    assert!(cli(&r1, None, &["GET", "fill1"]).contains("NOAUTH"));
}

/// `paxosdb ARGS` against the cluster's gRPC endpoints with `env`: (exit ok, stdout,
/// stderr).
fn paxosdb(c: &Cluster, env: &[(&str, &str)], args: &[&str]) -> (bool, String, String) {
    let out = Command::new(common::BIN)
        .args(["--endpoints", &c.endpoints().join(","), "--timeout", "5s"])
        .args(args)
        .env_remove("PAXOSDB_USER")
        .env_remove("PAXOSDB_PASSWORD")
        .env_remove("PAXOSDB_TOKEN")
        .envs(env.iter().copied())
        .output()
        .expect("run paxosdb");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

/// gRPC (through the Rust client) and the CLI: credentials from options and environment,
/// roles and prefixes, `paxosdb user`, and membership changes refused to non-admins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_cli_and_membership_need_the_right_role() {
    use paxosdb::client::Auth;
    use paxosdb::command::ScanRange;
    use paxosdb::error::Error;
    let mut c = start(&[]).await;
    let as_user = |user: &str, password: &str| {
        c.client()
            .with_auth(Some(Auth::Password {
                user: user.into(),
                password: password.into(),
            }))
            .unwrap()
    };
    let admin = as_user("admin", ADMIN_PW);

    // No credentials or wrong ones: refused; nothing written.
    let e = c.client().put(b"k", b"v", false).await.unwrap_err();
    assert!(matches!(e, Error::Unauthenticated(_)), "{e:?}");
    let e = as_user("admin", "wrong")
        .get(b"k", false)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Unauthenticated(_)), "{e:?}");
    assert_eq!(admin.get(b"k", false).await.unwrap().0, None);

    admin
        .set_user("reader", Some("rpw"), Some("read"), None)
        .await
        .unwrap();
    admin
        .set_user("scoped", Some("spw"), Some("readwrite"), Some(b"app/"))
        .await
        .unwrap();
    admin.put(b"other", b"1", false).await.unwrap();
    admin.put(b"app/x", b"2", false).await.unwrap();

    let reader = as_user("reader", "rpw");
    assert_eq!(
        reader.get(b"other", false).await.unwrap().0.unwrap().value,
        b"1"
    );
    let e = reader.put(b"other", b"x", false).await.unwrap_err();
    assert!(matches!(e, Error::PermissionDenied(_)), "{e:?}");
    let e = reader
        .set_user("evil", Some("x"), Some("admin"), None)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::PermissionDenied(_)), "{e:?}");

    let scoped = as_user("scoped", "spw");
    let e = scoped.get(b"other", false).await.unwrap_err();
    assert!(matches!(e, Error::PermissionDenied(_)), "{e:?}");
    let all = ScanRange::Range {
        from: vec![],
        to: None,
    };
    let keys: Vec<Vec<u8>> = scoped
        .scan(&all, 100, false)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(keys, vec![b"app/x".to_vec()]);

    // Membership changes: admin only, on the client library and the CLI.
    let config = c.client_for(1).status_of(0).await.unwrap().config_id;
    let e = reader.change_membership(&[], &[3]).await.unwrap_err();
    assert!(matches!(e, Error::PermissionDenied(_)), "{e:?}");
    let e = c.client().change_membership(&[], &[3]).await.unwrap_err();
    assert!(matches!(e, Error::Unauthenticated(_)), "{e:?}");
    let reader_env = [("PAXOSDB_USER", "reader"), ("PAXOSDB_PASSWORD", "rpw")];
    let (ok, _, err) = paxosdb(&c, &reader_env, &["cluster", "remove-node", "3"]);
    assert!(!ok && err.contains("permission denied"), "{err}");
    let (ok, _, err) = paxosdb(&c, &[], &["cluster", "add-node", "4", "127.0.0.1:1"]);
    assert!(!ok && err.contains("unauthenticated"), "{err}");
    assert_eq!(
        c.client_for(1).status_of(0).await.unwrap().config_id,
        config,
        "the membership did not change"
    );

    // The CLI: credentials from the environment or a password file; `paxosdb user`.
    let (ok, out, _) = paxosdb(&c, &reader_env, &["get", "other"]);
    assert!(ok && out.contains('1'), "{out}");
    let (ok, _, err) = paxosdb(&c, &reader_env, &["put", "other", "x"]);
    assert!(!ok && err.contains("permission denied"), "{err}");
    let (ok, _, err) = paxosdb(
        &c,
        &[("PAXOSDB_USER", "reader"), ("PAXOSDB_PASSWORD", "bad")],
        &["get", "other"],
    );
    assert!(!ok && err.contains("unauthenticated"), "{err}");
    let pwfile = c.dir.path().join("admin-pw");
    std::fs::write(&pwfile, ADMIN_PW).unwrap();
    let admin_args = [
        "--user",
        "admin",
        "--password-file",
        pwfile.to_str().unwrap(),
    ];
    let with = |more: &[&'static str]| {
        let mut v: Vec<String> = admin_args.iter().map(|s| s.to_string()).collect();
        v.extend(more.iter().map(|s| s.to_string()));
        v
    };
    let run = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        paxosdb(&c, &[], &refs)
    };
    let (ok, out, err) = run(with(&["user", "list"]));
    assert!(
        ok && out.contains("reader\tread") && out.contains("scoped\treadwrite"),
        "{out}{err}"
    );
    let (ok, token, err) = run(with(&["user", "token", "reader"]));
    assert!(ok && token.starts_with("reader."), "{err}");
    let (ok, out, _) = paxosdb(&c, &[("PAXOSDB_TOKEN", &token)], &["get", "other"]);
    assert!(ok && out.contains('1'), "{out}");
    let (ok, _, err) = paxosdb(&c, &reader_env, &["user", "list"]);
    assert!(!ok && err.contains("permission denied"), "{err}");
    let (ok, _, _) = run(with(&["user", "delete", "reader"]));
    assert!(ok);
    let (ok, _, err) = paxosdb(&c, &[("PAXOSDB_TOKEN", &token)], &["get", "other"]);
    assert!(
        !ok && err.contains("unauthenticated"),
        "a deleted user's token: {err}"
    );

    // A node added later receives the users with the state it copies.
    let a4 = c.spawn_joiner(4, 1);
    admin.change_membership(&[(4, a4)], &[]).await.unwrap();
    let scoped4 = c
        .client_for(4)
        .with_auth(Some(Auth::Password {
            user: "scoped".into(),
            password: "spw".into(),
        }))
        .unwrap();
    let v = eventually(Duration::from_secs(30), "node 4 knows the users", || {
        let s = scoped4.clone();
        async move { s.get(b"app/x", true).await.ok().and_then(|(v, _)| v) }
    })
    .await;
    assert_eq!(v.value, b"2");
    let e = scoped4.get(b"other", true).await.unwrap_err();
    assert!(matches!(e, Error::PermissionDenied(_)), "{e:?}");
}
