//! Operating a secure cluster (issue #9), on real processes: clients configured by a file
//! (the CLI and the Rust client), peer certificates rotated by SIGHUP, one token revoked
//! while the others work, and failures anyone can cause logged without a flood.

mod common;

use common::cluster::{certs, private_file};
use common::tools::{file_certificate, text, tls_connect};
use common::{eventually, Cluster, BIN};
use paxosdb::client::Client;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ADMIN_PW: &str = "admin-secret-1";

/// A 3-node cluster with peer and client TLS (certificates in `tmp/tls`) and an
/// administrator `admin`; returns it once every node knows the administrator.
async fn secure_cluster(tmp: &Path) -> Cluster {
    let tls = tmp.join("tls");
    certs(&["--dir", tls.to_str().unwrap()]);
    Cluster::builder(3).tls(&tls).admin(ADMIN_PW).start().await
}

/// `paxosdb ARGS` with none of the client settings of this process's environment, and
/// `env` instead (a config file in `$XDG_CONFIG_HOME/paxosdb/client.toml` only if `env`
/// points XDG_CONFIG_HOME at one).
fn paxosdb(env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    for v in [
        "PAXOSDB_ENDPOINTS",
        "PAXOSDB_TIMEOUT",
        "PAXOSDB_CLIENT_CONFIG",
        "PAXOSDB_CACERT",
        "PAXOSDB_CERT",
        "PAXOSDB_KEY",
        "PAXOSDB_USER",
        "PAXOSDB_PASSWORD",
        "PAXOSDB_PASSWORD_FILE",
        "PAXOSDB_TOKEN",
    ] {
        cmd.env_remove(v);
    }
    cmd.env("XDG_CONFIG_HOME", "/nonexistent")
        .envs(env.iter().copied())
        .args(args)
        .output()
        .unwrap()
}

/// Clients configured by a file: the CLI through `--client-config`, the environment and
/// the default place, with flags over environment over file and credentials taken whole
/// from one place; the Rust client through `Client::from_config_file`; a token in a file
/// others can read is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_take_endpoints_tls_and_credentials_from_a_config_file() {
    let tmp = tempfile::tempdir().unwrap();
    let c = secure_cluster(tmp.path()).await;
    let eps = c.endpoints();
    let conf_dir = tmp.path().join("conf");
    std::fs::create_dir_all(conf_dir.join("paxosdb")).unwrap();
    // Relative paths are relative to the file.
    std::fs::copy(tmp.path().join("tls/ca.pem"), conf_dir.join("ca.pem")).unwrap();
    private_file(&conf_dir.join("admin-pw"), &format!("{ADMIN_PW}\n"));
    let conf = conf_dir.join("paxosdb/client.toml");
    let eps_toml = eps
        .iter()
        .map(|e| format!("{e:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let body = format!(
        "endpoints = [{eps_toml}]\ncacert = \"../ca.pem\"\nuser = \"admin\"\n\
         password_file = \"../admin-pw\"\ntimeout = \"10s\"\n"
    );
    private_file(&conf, &body);
    let conf_s = conf.to_str().unwrap();

    // Without the file: no TLS, no credentials, no endpoints; refused.
    let o = paxosdb(
        &[("PAXOSDB_ENDPOINTS", eps[0].as_str())],
        &["--timeout", "3s", "put", "k", "v"],
    );
    assert!(!o.status.success(), "{}", text(&o));
    // With it, by flag, by environment, and from the default place.
    let o = paxosdb(&[], &["--client-config", conf_s, "put", "k", "by-flag"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = paxosdb(&[("PAXOSDB_CLIENT_CONFIG", conf_s)], &["get", "k"]);
    assert!(
        o.status.success() && text(&o).contains("by-flag"),
        "{}",
        text(&o)
    );
    let xdg = conf_dir.to_str().unwrap();
    let o = paxosdb(
        &[("XDG_CONFIG_HOME", xdg)],
        &["put", "k", "by-default-file"],
    );
    assert!(o.status.success(), "{}", text(&o));
    // A password file others can read: used, with a warning.
    let pw = conf_dir.join("admin-pw");
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = paxosdb(&[("PAXOSDB_CLIENT_CONFIG", conf_s)], &["get", "k"]);
    assert!(
        o.status.success() && text(&o).contains("is readable by others"),
        "{}",
        text(&o)
    );
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    // A named file that is missing is an error, not silently the defaults.
    let o = paxosdb(
        &[],
        &["--client-config", "/nonexistent/client.toml", "get", "k"],
    );
    assert!(
        !o.status.success() && text(&o).contains("cannot read client config"),
        "{}",
        text(&o)
    );

    // Precedence. A `read` user given by flags replaces the file's credentials whole.
    let admin = c.admin_client();
    admin
        .set_user("reader", Some("reader-pw"), Some("read"), None)
        .await
        .unwrap();
    private_file(&tmp.path().join("reader-pw"), "reader-pw\n");
    let reader_pw = tmp.path().join("reader-pw");
    let o = paxosdb(
        &[("PAXOSDB_CLIENT_CONFIG", conf_s)],
        &[
            "--user",
            "reader",
            "--password-file",
            reader_pw.to_str().unwrap(),
            "put",
            "k",
            "as-reader",
        ],
    );
    assert!(
        !o.status.success() && text(&o).contains("permission denied"),
        "flags beat the file: {}",
        text(&o)
    );
    // The environment beats the file (a dead endpoint: the command fails) ...
    let dead = format!("127.0.0.1:{}", common::free_ports(1)[0]);
    let o = paxosdb(
        &[
            ("PAXOSDB_CLIENT_CONFIG", conf_s),
            ("PAXOSDB_ENDPOINTS", dead.as_str()),
        ],
        &["--timeout", "2s", "get", "k"],
    );
    assert!(!o.status.success(), "{}", text(&o));
    // ... and a flag beats the environment.
    let o = paxosdb(
        &[
            ("PAXOSDB_CLIENT_CONFIG", conf_s),
            ("PAXOSDB_ENDPOINTS", dead.as_str()),
        ],
        &["--endpoints", &eps[1], "get", "k"],
    );
    assert!(
        o.status.success() && text(&o).contains("by-default-file"),
        "{}",
        text(&o)
    );
    // Client options also go after the command's name; there they beat the environment
    // and the same option before the name.
    for args in [
        vec!["get", "k", "--endpoints", &eps[1]],
        vec![
            "--endpoints",
            dead.as_str(),
            "get",
            "k",
            "--endpoints",
            &eps[1],
        ],
    ] {
        let o = paxosdb(
            &[
                ("PAXOSDB_CLIENT_CONFIG", conf_s),
                ("PAXOSDB_ENDPOINTS", dead.as_str()),
            ],
            &args,
        );
        assert!(
            o.status.success() && text(&o).contains("by-default-file"),
            "{args:?}: {}",
            text(&o)
        );
    }
    // A command that is no client refuses a client option.
    let o = paxosdb(&[], &["--endpoints", &eps[1], "certs", "--dir", "x"]);
    assert!(
        !o.status.success() && text(&o).contains("--endpoints is a client option"),
        "{}",
        text(&o)
    );

    // The Rust client reads the same file.
    let rc = Client::from_config_file(&conf).unwrap();
    rc.put(b"rust", b"from-config", false).await.unwrap();
    let (v, _) = rc.get(b"rust", false).await.unwrap();
    assert_eq!(v.map(|v| v.value), Some(b"from-config".to_vec()));

    // A token in the file: refused while others can read the file, used once private.
    let token = admin.create_token("reader").await.unwrap();
    let tconf = conf_dir.join("token.toml");
    std::fs::write(
        &tconf,
        format!("endpoints = [{eps_toml}]\ncacert = \"ca.pem\"\ntoken = \"{token}\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(&tconf, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = paxosdb(
        &[],
        &["--client-config", tconf.to_str().unwrap(), "get", "k"],
    );
    assert!(
        !o.status.success() && text(&o).contains("chmod 600"),
        "{}",
        text(&o)
    );
    assert!(Client::from_config_file(&tconf).is_err());
    std::fs::set_permissions(&tconf, std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = paxosdb(
        &[],
        &["--client-config", tconf.to_str().unwrap(), "get", "k"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let e = Client::from_config_file(&tconf)
        .unwrap()
        .put(b"k", b"x", false)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("may not write"),
        "the token's user is a reader: {e}"
    );
}

/// A TLS client to a node's peer port, presenting node `as_node`'s certificate from
/// `dir` and expecting node `to`; returns the certificate the node showed.
async fn peer_certificate(addr: &str, dir: &Path, as_node: u64, to: u64) -> Vec<u8> {
    let read = |p: PathBuf| std::fs::read(p).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut read(dir.join("ca.pem")).as_slice()) {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<_> =
        rustls_pemfile::certs(&mut read(dir.join(format!("node-{as_node}.pem"))).as_slice())
            .map(Result::unwrap)
            .collect();
    let key = rustls_pemfile::private_key(
        &mut read(dir.join(format!("node-{as_node}-key.pem"))).as_slice(),
    )
    .unwrap()
    .unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(format!("node-{to}.paxosdb")).unwrap();
    let s = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap();
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// A node's peer certificate is renewed on disk and the node sent SIGHUP: its peer port
/// then shows the new certificate, the connections it had keep working, and new ones both
/// ways (a restarted peer, with the third node down so that every write needs them) work
/// with the new one. A broken file on the next SIGHUP is refused with an error line and
/// the node keeps the certificate it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rotates_the_peer_certificate_and_keeps_it_when_the_new_one_is_bad() {
    let tmp = tempfile::tempdir().unwrap();
    let tls = tmp.path().join("tls");
    certs(&["--dir", tls.to_str().unwrap()]);
    let mut c = Cluster::builder(3).peer_tls(&tls).start().await;
    let peer1 = c.nodes[0].peer_addr.clone();
    let cert1 = tls.join("node-1.pem");
    let old = file_certificate(&cert1);
    assert_eq!(peer_certificate(&peer1, &tls, 2, 1).await, old);

    certs(&["--dir", tls.to_str().unwrap(), "--renew", "--nodes", "1"]);
    let new = file_certificate(&cert1);
    assert_ne!(new, old);
    assert_eq!(
        peer_certificate(&peer1, &tls, 2, 1).await,
        old,
        "not before SIGHUP"
    );
    let pid = c.nodes[0].child.as_ref().unwrap().id() as i32;
    let hup = || {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGHUP).unwrap()
    };
    hup();
    eventually(Duration::from_secs(10), "the new peer certificate", || {
        let (peer1, tls, new) = (peer1.clone(), tls.clone(), new.clone());
        async move { (peer_certificate(&peer1, &tls, 2, 1).await == new).then_some(()) }
    })
    .await;
    assert!(c
        .log_of(1)
        .contains("peer TLS: certificate and CA reloaded"));
    // Established connections go on.
    c.client_for(1)
        .put(b"after-rotation", b"1", false)
        .await
        .unwrap();

    // New connections both ways: node 3 down, node 2 restarted; writes need 1 and 2.
    write_over_new_connections(&mut c, b"new-connections").await;
    assert!(
        !c.log_of(2).contains("TLS session to the peer refused"),
        "{}",
        c.log_of(2)
    );

    // A broken certificate file: refused, the node keeps the one it had.
    std::fs::write(&cert1, "not a certificate\n").unwrap();
    hup();
    eventually(Duration::from_secs(10), "the refused reload logged", || {
        let log = c.log_of(1);
        async move { log.contains("peer TLS: reload refused").then_some(()) }
    })
    .await;
    assert_eq!(peer_certificate(&peer1, &tls, 2, 1).await, new);
    c.client_for(1)
        .put(b"after-bad-reload", b"1", false)
        .await
        .unwrap();
}

fn hup(c: &Cluster, id: u64) {
    let pid = c.nodes[id as usize - 1].child.as_ref().unwrap().id() as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGHUP).unwrap();
}

/// Moving the cluster to a new CA without a restart, as the README says: every node
/// trusts both CAs (SIGHUP), then node 1 takes a certificate of the new CA (SIGHUP); its
/// old-certificate peers keep talking with it over new connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_ca_is_rolled_in_with_sighup() {
    let tmp = tempfile::tempdir().unwrap();
    let (tls, new) = (tmp.path().join("tls"), tmp.path().join("new"));
    certs(&["--dir", tls.to_str().unwrap()]);
    certs(&["--dir", new.to_str().unwrap()]);
    let mut c = Cluster::builder(3).peer_tls(&tls).start().await;
    let both = [
        std::fs::read(tls.join("ca.pem")).unwrap(),
        std::fs::read(new.join("ca.pem")).unwrap(),
    ]
    .concat();
    std::fs::write(tls.join("ca.pem"), both).unwrap();
    for id in 1..=3 {
        hup(&c, id);
    }
    for id in 1..=3 {
        eventually(Duration::from_secs(10), "both CAs trusted", || {
            let log = c.log_of(id);
            async move {
                log.contains("peer TLS: certificate and CA reloaded")
                    .then_some(())
            }
        })
        .await;
    }
    std::fs::copy(new.join("node-1-key.pem"), tls.join("node-1-key.pem")).unwrap();
    std::fs::copy(new.join("node-1.pem"), tls.join("node-1.pem")).unwrap();
    hup(&c, 1);
    let want = file_certificate(&new.join("node-1.pem"));
    let peer1 = c.nodes[0].peer_addr.clone();
    eventually(
        Duration::from_secs(10),
        "node 1 shows the new CA's certificate",
        || {
            let (peer1, tls, want) = (peer1.clone(), tls.clone(), want.clone());
            async move { (peer_certificate(&peer1, &tls, 2, 1).await == want).then_some(()) }
        },
    )
    .await;
    // New connections between node 1 (new CA) and node 2 (old CA); writes need both.
    write_over_new_connections(&mut c, b"new-ca").await;
}

/// Makes new peer connections both ways between nodes 1 and 2 (node 3 stopped, node 2
/// restarted) and waits until a write of `key` goes through: it needs both.
async fn write_over_new_connections(c: &mut Cluster, key: &'static [u8]) {
    c.kill(3);
    c.kill(2);
    c.restart(2).await;
    let w = c.client_for(1);
    eventually(
        Duration::from_secs(30),
        "a write with nodes 1 and 2",
        || {
            let w = w.clone();
            async move { w.put(key, b"1", false).await.ok() }
        },
    )
    .await;
}

/// Revoking one token: the others and the passwords keep working on every API, the
/// revoked one is refused by the CLI (gRPC) and curl (HTTP Bearer); `user list` shows
/// token ids; revoking one the user does not hold fails and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_token_is_revoked_and_the_others_keep_working() {
    let tmp = tempfile::tempdir().unwrap();
    let c = secure_cluster(tmp.path()).await;
    let ca = tmp.path().join("tls/ca.pem");
    let eps = c.endpoints().join(",");
    let pw = c.admin_password_file();
    let admin_env = [
        ("PAXOSDB_ENDPOINTS", eps.as_str()),
        ("PAXOSDB_CACERT", ca.to_str().unwrap()),
        ("PAXOSDB_USER", "admin"),
        ("PAXOSDB_PASSWORD_FILE", pw.to_str().unwrap()),
    ];
    let o = paxosdb(
        &[&admin_env[..], &[("PAXOSDB_NEW_PASSWORD", "app-pw")][..]].concat(),
        &["user", "add", "app", "--role", "readwrite"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let token = |o: &Output| {
        assert!(o.status.success(), "{}", text(o));
        let t = String::from_utf8_lossy(&o.stdout).trim().to_string();
        let id = t.split('.').nth(1).unwrap().to_string();
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(&format!("token id {id}")),
            "{}",
            text(o)
        );
        (t, id)
    };
    let (t1, id1) = token(&paxosdb(&admin_env, &["user", "token", "app"]));
    let (t2, id2) = token(&paxosdb(&admin_env, &["user", "token", "app"]));
    let o = paxosdb(&admin_env, &["user", "list"]);
    assert!(
        text(&o).contains(&id1) && text(&o).contains(&id2),
        "{}",
        text(&o)
    );
    let with_token = |t: &str, args: &[&str]| {
        paxosdb(
            &[
                ("PAXOSDB_ENDPOINTS", eps.as_str()),
                ("PAXOSDB_CACERT", ca.to_str().unwrap()),
                ("PAXOSDB_TOKEN", t),
            ],
            args,
        )
    };
    let http = format!("https://localhost:{}/v1/kv/k", {
        c.nodes[0].http_addr.rsplit_once(':').unwrap().1
    });
    let curl = |t: &str| {
        let o = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(&ca)
            .args(["-H", &format!("Authorization: Bearer {t}"), &http])
            .output()
            .expect("curl (scripts/setup installs it)");
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    for t in [&t1, &t2] {
        assert!(with_token(t, &["put", "k", "v"]).status.success());
        assert_eq!(curl(t), "200");
    }

    // Revoke the first by its id.
    let o = paxosdb(&admin_env, &["user", "revoke-token", "app", &id1]);
    assert!(o.status.success(), "{}", text(&o));
    let o = with_token(&t1, &["get", "k"]);
    assert!(
        !o.status.success() && text(&o).contains("unauthenticated"),
        "{}",
        text(&o)
    );
    assert_eq!(curl(&t1), "401");
    assert!(with_token(&t2, &["put", "k", "v2"]).status.success());
    assert_eq!(curl(&t2), "200");
    let o = paxosdb(
        &[
            ("PAXOSDB_ENDPOINTS", eps.as_str()),
            ("PAXOSDB_CACERT", ca.to_str().unwrap()),
            ("PAXOSDB_USER", "app"),
            ("PAXOSDB_PASSWORD", "app-pw"),
        ],
        &["get", "k"],
    );
    assert!(
        o.status.success() && text(&o).contains("v2"),
        "{}",
        text(&o)
    );
    let o = paxosdb(&admin_env, &["user", "list"]);
    assert!(
        !text(&o).contains(&id1) && text(&o).contains(&id2),
        "{}",
        text(&o)
    );
    // Again: the user holds no such token; an error, and the other token still works.
    let o = paxosdb(&admin_env, &["user", "revoke-token", "app", &id1]);
    assert!(
        !o.status.success() && text(&o).contains("no token"),
        "{}",
        text(&o)
    );
    assert_eq!(curl(&t2), "200");
    // Over HTTP, by the whole token.
    let o = Command::new("curl")
        .args(["-s", "-w", " %{http_code}", "-X", "DELETE", "--cacert"])
        .arg(&ca)
        .args(["-u", &format!("admin:{ADMIN_PW}")])
        .arg(format!(
            "https://localhost:{}/v1/users/app/tokens/{t2}",
            c.nodes[1].http_addr.rsplit_once(':').unwrap().1
        ))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).ends_with(" 200"),
        "{}",
        text(&o)
    );
    let o = with_token(&t2, &["get", "k"]);
    assert!(!o.status.success(), "{}", text(&o));
}

/// Reads RESP reply lines until `n` have come.
async fn read_lines<S: tokio::io::AsyncRead + Unpin>(s: &mut S, n: usize) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.iter().filter(|&&b| b == b'\n').count() < n {
        let k = tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf))
            .await
            .expect("replies within 30s")
            .unwrap();
        assert!(k > 0, "connection closed early");
        got.extend_from_slice(&buf[..k]);
    }
    String::from_utf8_lossy(&got).to_string()
}

/// The numbers N of the "N more suppressed" in `lines`.
fn suppressed_counts(lines: &[&str]) -> Vec<u64> {
    lines
        .iter()
        .filter_map(|l| {
            let head = l.split(" more suppressed").next()?;
            head.rsplit(' ')
                .next()?
                .trim_start_matches('(')
                .parse()
                .ok()
        })
        .collect()
}

/// What anyone who reaches a node can cause at will is logged, but not once per attempt:
/// 200 wrong passwords over RESP (TLS), 200 plaintext connections to the TLS peer port
/// and 200 to the TLS RESP port each get a clear answer (WRONGPASS, TLS required) and
/// leave at most one log line per period, the next line counting the ones suppressed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_anyone_can_cause_are_logged_rate_limited() {
    const N: usize = 200;
    let tmp = tempfile::tempdir().unwrap();
    let c = secure_cluster(tmp.path()).await;
    let ca = tmp.path().join("tls/ca.pem");
    let resp = c.nodes[0].resp_addr.clone();
    let started = Instant::now();

    // Wrong passwords: each answered WRONGPASS.
    let mut s = tls_connect(&resp, &ca).await;
    let auth = "*3\r\n$4\r\nAUTH\r\n$5\r\nadmin\r\n$5\r\nwrong\r\n";
    s.write_all(auth.repeat(N).as_bytes()).await.unwrap();
    let replies = read_lines(&mut s, N).await;
    assert_eq!(replies.matches("-WRONGPASS").count(), N, "{replies}");

    // Plaintext on the TLS peer port and the TLS RESP port.
    let peer = c.nodes[0].peer_addr.clone();
    for _ in 0..N {
        let mut p = TcpStream::connect(&peer).await.unwrap();
        let _ = p.write_all(b"hello in the clear\r\n").await;
        let _ = p.read(&mut [0u8; 64]).await;
    }
    for i in 0..N {
        let mut p = TcpStream::connect(&resp).await.unwrap();
        p.write_all(b"PING\r\n").await.unwrap();
        let mut answer = String::new();
        let _ = p.read_to_string(&mut answer).await;
        if i == 0 {
            assert!(answer.contains("this port requires TLS"), "{answer}");
        }
    }

    // Every failure is accounted for in the log: shown as a line, or counted in the
    // "N more suppressed" of the next line. One more failed login after the period makes
    // that line; failures before this test's (the harness waiting for the administrator)
    // only add to the count.
    let probes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let accounted = || {
        let log = c.log_of(1);
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("authentication failed on"))
            .collect();
        lines.len() as u64 + suppressed_counts(&lines).iter().sum::<u64>()
    };
    eventually(
        Duration::from_secs(40),
        "a line counting the suppressed failures",
        || {
            let (ca, resp, probes) = (ca.clone(), resp.clone(), probes.clone());
            let made = N as u64 + probes.load(std::sync::atomic::Ordering::SeqCst);
            let done = accounted() >= made;
            async move {
                if !done {
                    let mut s = tls_connect(&resp, &ca).await;
                    s.write_all(auth.as_bytes()).await.unwrap();
                    read_lines(&mut s, 1).await;
                    probes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                done.then_some(())
            }
        },
    )
    .await;

    let secs = started.elapsed().as_secs();
    let log = c.log_of(1);
    let count = |what: &str| log.lines().filter(|l| l.contains(what)).count() as u64;
    let logins = count("authentication failed on");
    let peers = count("peer connection closed before the peer was admitted");
    let client_tls = count("client TLS handshake failed");
    // One line per period (5s logins, 10s TLS and peers), plus the first.
    assert!(
        logins >= 1 && logins <= secs / 5 + 3,
        "{logins} login lines in {secs}s"
    );
    assert!(
        peers >= 1 && peers <= secs / 10 + 2,
        "{peers} peer lines in {secs}s"
    );
    assert!(
        client_tls >= 1 && client_tls <= secs / 10 + 2,
        "{client_tls} TLS lines in {secs}s"
    );
    assert!(
        log.contains("plaintext on the TLS peer port"),
        "the peer line says what happened"
    );
    assert!(log.contains("a plaintext client on a TLS port"));
}

/// A node started without `--peer-tls-dir` in a mutual-TLS cluster: the TLS nodes refuse
/// it (`plaintext on the TLS peer port`), and the plaintext node, which never reads an
/// answer on its replication connections, says what its dropped connections likely mean;
/// both sides log a bounded number of lines while it keeps retrying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_node_among_tls_peers_is_told_without_a_flood() {
    let tmp = tempfile::tempdir().unwrap();
    let tls = tmp.path().join("tls");
    certs(&["--dir", tls.to_str().unwrap()]);
    let mut c = Cluster::builder(3).peer_tls(&tls).start().await;
    c.kill(3);
    let log3 = tmp.path().join("node-3-plain.log");
    let out = std::fs::File::create(&log3).unwrap();
    let child = c
        .server_command(3)
        .env_remove("PAXOSDB_PEER_TLS_DIR")
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    c.nodes[2].child = Some(child); // the harness stops it
    let started = Instant::now();
    let read3 = || std::fs::read_to_string(&log3).unwrap_or_default();
    // Many attempts held back: a line counting at least 5 suppressed ones.
    eventually(
        Duration::from_secs(40),
        "a connection-lost line counting suppressed ones",
        || {
            let log = read3();
            async move {
                let lines: Vec<&str> = log
                    .lines()
                    .filter(|l| l.contains("connection lost"))
                    .collect();
                (suppressed_counts(&lines).iter().any(|&n| n >= 5)).then_some(())
            }
        },
    )
    .await;
    let secs = started.elapsed().as_secs();
    let log = read3();
    assert!(
        log.contains(
            "if it runs with --peer-tls-dir (mutual TLS), this node needs --peer-tls-dir too"
        ),
        "{log}"
    );
    let lost = log
        .lines()
        .filter(|l| l.contains("connection lost"))
        .count() as u64;
    assert!(
        lost <= 2 * (secs / 10 + 2),
        "{lost} lines in {secs}s:\n{log}"
    );
    assert!(
        log.contains("a TLS handshake on this plaintext peer port"),
        "the TLS nodes dialing it are explained too: {log}"
    );
    let log1 = c.log_of(1);
    assert!(log1.contains("plaintext on the TLS peer port"), "{log1}");
    let refused = log1
        .lines()
        .filter(|l| l.contains("plaintext on the TLS peer port"))
        .count() as u64;
    assert!(refused <= secs / 10 + 2, "{refused} lines in {secs}s");
}
