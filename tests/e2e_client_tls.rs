//! TLS on the client listeners, on real processes with real clients (issue #9): the Rust
//! client (tonic over TLS), the CLI, curl, redis-cli `--tls` and redis-py `ssl=True` all
//! work against a cluster with `--client-tls-dir`; plaintext clients, a wrong CA and a
//! missing client certificate are refused with errors that say so; a client that never
//! finishes its handshake is closed; failed handshakes are logged without a flood; and
//! SIGHUP makes a node use a new certificate, or keep its own when the new file is bad.

mod common;

use common::cluster::certs;
use common::tools::{file_certificate, port, text, tls_connect, tool};
use common::{eventually, skip, Cluster, BIN};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A TLS-on cluster of 3 nodes with its certificates in `dir` (and `extra` settings).
async fn tls_cluster(dir: &Path, extra: &[(&str, &str)]) -> Cluster {
    Cluster::builder(3).tls(dir).env(extra).start().await
}

/// `paxosdb ARGS` against the cluster's nodes, with `env`.
fn paxosdb(c: &Cluster, env: &[(&str, &Path)], args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["--endpoints", &c.endpoints().join(","), "--timeout", "5s"])
        .args(args)
        .env_remove("PAXOSDB_CACERT")
        .env_remove("PAXOSDB_CERT")
        .env_remove("PAXOSDB_KEY")
        .env_remove("PAXOSDB_USER")
        .env_remove("PAXOSDB_PASSWORD")
        .env_remove("PAXOSDB_PASSWORD_FILE")
        .env_remove("PAXOSDB_TOKEN")
        .envs(env.iter().map(|(k, v)| (k, v.as_os_str())))
        .output()
        .unwrap()
}

/// The certificate a node's listener at `addr` shows (verified with `ca`, as localhost).
async fn served_certificate(addr: &str, ca: &Path) -> Vec<u8> {
    let s = tls_connect(addr, ca).await;
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_cli_and_curl_over_tls_and_clear_refusals() {
    let tmp = tempfile::tempdir().unwrap();
    let (tls, other) = (tmp.path().join("tls"), tmp.path().join("other"));
    certs(&["--dir", tls.to_str().unwrap()]);
    certs(&["--dir", other.to_str().unwrap()]);
    let c = tls_cluster(
        &tls,
        &[
            ("PAXOSDB_HEADER_TIMEOUT_MS", "1500"),
            ("PAXOSDB_IDLE_TIMEOUT_MS", "2000"),
        ],
    )
    .await;
    let ca = tls.join("ca.pem");

    // The Rust client (tonic over TLS) — the harness already used it to find the leader.
    c.client().put(b"k", b"over-tls", false).await.unwrap();

    // The CLI with --cacert, and with PAXOSDB_CACERT.
    let out = paxosdb(&c, &[], &["--cacert", ca.to_str().unwrap(), "get", "k"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "over-tls");
    let out = paxosdb(&c, &[("PAXOSDB_CACERT", &ca)], &["put", "cli", "yes"]);
    assert!(out.status.success(), "{}", text(&out));

    // The CLI without TLS: told at once that the nodes require TLS.
    let t = Instant::now();
    let out = paxosdb(&c, &[], &["get", "k"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("requires TLS"), "{}", text(&out));
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "not at once: {:?}",
        t.elapsed()
    );

    // The CLI trusting another cluster's CA: told the certificate is not trusted.
    let out = paxosdb(
        &c,
        &[("PAXOSDB_CACERT", &other.join("ca.pem"))],
        &["get", "k"],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("is not trusted"), "{}", text(&out));

    // curl over HTTPS, and plain http:// answered with the reason.
    let http = &c.nodes[0].http_addr;
    let out = tool("curl")
        .args(["-sS", "--cacert", ca.to_str().unwrap()])
        .arg(format!("https://localhost:{}/v1/kv/k", port(http)))
        .output()
        .unwrap();
    assert!(
        text(&out).contains(r#""value":"over-tls""#),
        "{}",
        text(&out)
    );
    let out = tool("curl")
        .args(["-sS", &format!("http://{http}/v1/kv/k")])
        .output()
        .unwrap();
    assert!(text(&out).contains("tls_required"), "{}", text(&out));
    let out = tool("curl")
        .args(["-sS", "--cacert", other.join("ca.pem").to_str().unwrap()])
        .arg(format!("https://{http}/v1/kv/k"))
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "curl trusted another CA: {}",
        text(&out)
    );

    // A client that connects and never completes a handshake is closed within the
    // header timeout (1.5 s): one that sends nothing, and one that stops mid-record.
    for first in [&b""[..], &[0x16, 0x03][..]] {
        let mut s = TcpStream::connect(&c.nodes[0].resp_addr).await.unwrap();
        s.write_all(first).await.unwrap();
        let t = Instant::now();
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "not closed: {closed:?}"
        );
        assert!(
            t.elapsed() >= Duration::from_millis(1000),
            "{:?}",
            t.elapsed()
        );
    }

    // Over TLS, the idle timeout still closes a connection that stops sending.
    let mut s = tls_connect(&c.nodes[0].resp_addr, &ca).await;
    s.write_all(b"PING\r\n").await.unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"+PONG\r\n");
    let t = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "not closed: {closed:?}"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );

    // A burst of failed handshakes makes a line or two, not one each.
    let log_before = c.log_of(1).matches("client TLS handshake failed").count();
    for _ in 0..30 {
        let mut s = TcpStream::connect(&c.nodes[0].resp_addr).await.unwrap();
        s.write_all(b"PING\r\n").await.unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        assert!(String::from_utf8_lossy(&buf).contains("requires TLS"));
    }
    let lines = c.log_of(1).matches("client TLS handshake failed").count() - log_before;
    assert!(lines <= 2, "{lines} log lines for 30 failed handshakes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_and_redis_py_over_tls() {
    let help = tool("redis-cli").arg("--help").output().unwrap();
    if !text(&help).contains("--tls") {
        skip(
            "redis_cli_and_redis_py_over_tls",
            "the installed redis-cli was built without TLS support (no --tls)",
        );
        return;
    }
    let c = Cluster::builder(3).certs().start().await;
    let tls = c.tls_dir();
    let ca = tls.join("ca.pem");
    let ca_s = ca.to_str().unwrap();
    let resp = c.nodes[0].resp_addr.clone();
    let redis_cli = |args: &[&str]| {
        let out = tool("redis-cli")
            .args(["-h", "127.0.0.1", "-p", port(&resp)])
            .args(args)
            .output()
            .unwrap();
        text(&out).trim().to_string()
    };
    assert_eq!(
        redis_cli(&["--tls", "--cacert", ca_s, "SET", "r", "v1"]),
        "OK"
    );
    assert_eq!(redis_cli(&["--tls", "--cacert", ca_s, "GET", "r"]), "v1");
    // Without TLS: the reason, in Redis' own error form.
    let plain = redis_cli(&["GET", "r"]);
    assert!(plain.contains("this port requires TLS"), "{plain}");

    let py = format!(
        "import redis\n\
         r = redis.Redis(host='127.0.0.1', port={}, ssl=True, ssl_ca_certs={ca_s:?})\n\
         r.set('py', 'from-python')\n\
         print(r.get('r').decode(), r.get('py').decode())\n",
        port(&resp)
    );
    let out = tool("python3").args(["-c", &py]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "v1 from-python"
    );
    let (v, _) = c.client().get(b"py", false).await.unwrap();
    assert_eq!(v.unwrap().value, b"from-python");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_when_required() {
    let tmp = tempfile::tempdir().unwrap();
    let (tls, other) = (tmp.path().join("tls"), tmp.path().join("other"));
    certs(&["--dir", tls.to_str().unwrap()]);
    certs(&["--dir", tls.to_str().unwrap(), "--client", "harness,alice"]);
    // A client certificate of another client CA.
    certs(&["--dir", other.to_str().unwrap(), "--client", "mallory"]);
    let client_ca = tls.join("client-ca.pem");
    let c = Cluster::builder(3)
        .tls(&tls)
        .client_ca(&client_ca)
        .start()
        .await;
    let ca = tls.join("ca.pem");
    // The harness's client shows client-harness.pem.
    c.client().put(b"k", b"v", false).await.unwrap();

    let with = |dir: &Path, name: &str| -> [(&'static str, PathBuf); 3] {
        [
            ("PAXOSDB_CACERT", ca.clone()),
            ("PAXOSDB_CERT", dir.join(format!("client-{name}.pem"))),
            ("PAXOSDB_KEY", dir.join(format!("client-{name}-key.pem"))),
        ]
    };
    let env = |e: &[(&'static str, PathBuf)]| -> Vec<(&'static str, PathBuf)> { e.to_vec() };
    let run = |e: Vec<(&'static str, PathBuf)>| {
        let refs: Vec<(&str, &Path)> = e.iter().map(|(k, v)| (*k, v.as_path())).collect();
        paxosdb(&c, &refs, &["get", "k"])
    };
    let out = run(env(&with(&tls, "alice")));
    assert!(out.status.success(), "{}", text(&out));
    // No client certificate, or one of another CA: refused, and the error says so.
    let out = run(vec![("PAXOSDB_CACERT", ca.clone())]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("refused this client's certificate"),
        "{}",
        text(&out)
    );
    let out = run(env(&with(&other, "mallory")));
    assert!(!out.status.success());
    assert!(
        text(&out).contains("refused this client's certificate"),
        "{}",
        text(&out)
    );

    // redis-cli with and without a certificate.
    let help = tool("redis-cli").arg("--help").output().unwrap();
    if text(&help).contains("--tls") {
        let resp = c.nodes[0].resp_addr.clone();
        let redis_cli = |extra: &[&str]| {
            let out = tool("redis-cli")
                .args(["-h", "127.0.0.1", "-p", port(&resp), "--tls", "--cacert"])
                .arg(&ca)
                .args(extra)
                .args(["GET", "k"])
                .output()
                .unwrap();
            text(&out).trim().to_string()
        };
        let (cert, key) = (
            tls.join("client-alice.pem"),
            tls.join("client-alice-key.pem"),
        );
        let ok = redis_cli(&[
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ]);
        assert_eq!(ok, "v");
        assert_ne!(redis_cli(&[]), "v");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_and_keeps_it_when_the_new_one_is_bad() {
    let c = Cluster::builder(3).certs().start().await;
    let tls = c.tls_dir();
    let (ca, server) = (tls.join("ca.pem"), tls.join("server.pem"));
    let resp = c.nodes[0].resp_addr.clone();
    let old = file_certificate(&server);
    assert_eq!(served_certificate(&resp, &ca).await, old);

    // A new certificate (another host name): not used until SIGHUP, then used.
    certs(&[
        "--dir",
        tls.to_str().unwrap(),
        "--server",
        "--hosts",
        "db.example",
    ]);
    let new = file_certificate(&server);
    assert_ne!(new, old);
    assert_eq!(served_certificate(&resp, &ca).await, old);
    let pid = c.nodes[0].child.as_ref().unwrap().id() as i32;
    let hup = || {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGHUP).unwrap()
    };
    hup();
    eventually(
        Duration::from_secs(10),
        "the new certificate served",
        || {
            let (resp, ca, new) = (resp.clone(), ca.clone(), new.clone());
            async move { (served_certificate(&resp, &ca).await == new).then_some(()) }
        },
    )
    .await;
    assert!(c.log_of(1).contains("certificate reloaded"));

    // A broken file: refused with a log line, the certificate in use is kept and the
    // node serves on.
    std::fs::write(&server, "not a certificate\n").unwrap();
    hup();
    eventually(Duration::from_secs(10), "the refused reload logged", || {
        let log = c.log_of(1);
        async move { log.contains("reload refused").then_some(()) }
    })
    .await;
    assert_eq!(served_certificate(&resp, &ca).await, new);
    c.client_for(1)
        .put(b"after", b"reload", false)
        .await
        .unwrap();
}

/// Every client over TLS *and* with credentials, as `cluster up` runs a cluster: gRPC
/// tools that find the API by reflection (grpcurl, Postman, ...) — the reflection service
/// lists paxosdb's services to a client that has none, and a raw `Kv/Put` is refused
/// without an `authorization` header and accepted with the administrator's (grpcurl
/// itself is not packaged for this system; this is the same traffic, from the generated
/// clients) — then redis-cli `--tls -a`, redis-py `ssl=True, password=`, curl
/// `--cacert -u` and the CLI, each refused without the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_over_tls_with_credentials() {
    use paxosdb::api::pb;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let tmp = tempfile::tempdir().unwrap();
    let tls = tmp.path().join("tls");
    certs(&["--dir", tls.to_str().unwrap()]);
    let pw = tmp.path().join("admin-password");
    std::fs::write(&pw, "s3cret\n").unwrap();
    let c = tls_cluster(
        &tls,
        &[("PAXOSDB_ADMIN_PASSWORD_FILE", pw.to_str().unwrap())],
    )
    .await;
    let channel = c.client().channel(0).expect("a channel to node 1");

    let mut reflection = ServerReflectionClient::new(channel.clone());
    let list = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter(vec![list]))
        .await
        .expect("reflection over TLS")
        .into_inner();
    let answer = answers.message().await.unwrap().expect("an answer");
    let Some(MessageResponse::ListServicesResponse(services)) = answer.message_response else {
        panic!("not a service list: {answer:?}");
    };
    let names: Vec<&str> = services.service.iter().map(|s| s.name.as_str()).collect();
    assert!(
        names.contains(&"paxosdb.v1.Kv") && names.contains(&"paxosdb.v1.Cluster"),
        "{names:?}"
    );

    let mut kv = pb::kv_client::KvClient::new(channel);
    let put = |seq: u64, auth: Option<&str>| {
        let mut r = tonic::Request::new(pb::PutRequest {
            session: Some(pb::Session { client_id: 77, seq }),
            key: b"reflected".to_vec(),
            value: b"yes".to_vec(),
            return_prev: false,
            ttl_ms: 0,
            lease: 0,
        });
        if let Some(a) = auth {
            r.metadata_mut().insert("authorization", a.parse().unwrap());
        }
        r
    };
    let refused = kv.put(put(1, None)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    use base64::Engine;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("default:s3cret")
    );
    let wrong = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("default:wrong")
    );
    let refused = kv.put(put(1, Some(&wrong))).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    // The first administrator is created once the cluster has a leader.
    let mut seq = 1;
    let done = eventually(Duration::from_secs(30), "the admin's Kv/Put", || {
        seq += 1;
        let r = put(seq, Some(&basic));
        let mut kv = kv.clone();
        async move { kv.put(r).await.ok() }
    })
    .await;
    assert!(done.into_inner().version > 0);

    let ca = tls.join("ca.pem");
    let ca_s = ca.to_str().unwrap();
    let resp = c.nodes[0].resp_addr.clone();
    let redis_cli = |args: &[&str]| {
        let out = tool("redis-cli")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                port(&resp),
                "--tls",
                "--cacert",
                ca_s,
            ])
            .args(args)
            .env_remove("REDISCLI_AUTH")
            .output()
            .unwrap();
        text(&out).trim().to_string()
    };
    let noauth = redis_cli(&["GET", "reflected"]);
    assert!(noauth.contains("NOAUTH"), "{noauth}");
    let got = redis_cli(&["--no-auth-warning", "-a", "s3cret", "GET", "reflected"]);
    assert_eq!(got, "yes");

    let py = |password: &str| {
        let script = format!(
            "import redis\n\
             r = redis.Redis(host='127.0.0.1', port={}, ssl=True, ssl_ca_certs={ca_s:?}, \
             password={password:?})\n\
             print(r.get('reflected').decode())\n",
            port(&resp)
        );
        tool("python3").args(["-c", &script]).output().unwrap()
    };
    let out = py("s3cret");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "yes");
    let out = py("wrong");
    assert!(
        !out.status.success() && text(&out).contains("AuthenticationError"),
        "{}",
        text(&out)
    );

    let http = &c.nodes[0].http_addr;
    let url = format!("https://localhost:{}/v1/kv/reflected", port(http));
    let curl = |user: Option<&str>| {
        let mut cmd = tool("curl");
        cmd.args(["-sS", "-w", " %{http_code}", "--cacert", ca_s]);
        if let Some(u) = user {
            cmd.args(["-u", u]);
        }
        text(&cmd.arg(&url).output().unwrap())
    };
    let ok = curl(Some("default:s3cret"));
    assert!(
        ok.contains(r#""value":"yes""#) && ok.ends_with(" 200"),
        "{ok}"
    );
    let refused = curl(None);
    assert!(refused.ends_with(" 401"), "{refused}");

    let cli = |env: &[(&str, &Path)]| {
        let mut all = vec![("PAXOSDB_CACERT", ca.as_path())];
        all.extend_from_slice(env);
        paxosdb(&c, &all, &["get", "reflected"])
    };
    let out = cli(&[("PAXOSDB_PASSWORD_FILE", pw.as_path())]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "yes");
    let out = cli(&[]);
    assert!(
        !out.status.success() && text(&out).contains("unauthenticated"),
        "{}",
        text(&out)
    );
}

/// An expired certificate gets a clear error on the client and a log line on the node:
/// a node switched (SIGHUP) to a certificate whose validity ended in 2021, from a CA the
/// clients are given, is refused by the CLI with an error that says it expired, and by
/// curl; the node logs the failed handshakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_refused_with_an_error_saying_so() {
    let tmp = tempfile::tempdir().unwrap();
    let tls = tmp.path().join("tls");
    certs(&["--dir", tls.to_str().unwrap()]);
    let c = tls_cluster(&tls, &[]).await;

    // A CA of the test's own, and a node certificate it signed that expired long ago.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "expiry test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".into()]).unwrap();
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let expired = p.signed_by(&key, &ca, &ca_key).unwrap();
    let test_ca = tmp.path().join("test-ca.pem");
    std::fs::write(&test_ca, ca.pem()).unwrap();
    std::fs::write(tls.join("server.pem"), expired.pem()).unwrap();
    std::fs::write(tls.join("server-key.pem"), key.serialize_pem()).unwrap();
    let pid = c.nodes[0].child.as_ref().unwrap().id() as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGHUP).unwrap();
    eventually(
        Duration::from_secs(10),
        "the new certificate loaded",
        || {
            let log = c.log_of(1);
            async move { log.contains("certificate reloaded").then_some(()) }
        },
    )
    .await;

    let node1 = c.nodes[0].client_addr.clone();
    let out = Command::new(BIN)
        .args(["--endpoints", &node1, "--timeout", "3s", "--cacert"])
        .arg(&test_ca)
        .args(["get", "k"])
        .env_remove("PAXOSDB_PASSWORD_FILE")
        .output()
        .unwrap();
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.to_lowercase().contains("expired"), "{said}");
    let http = &c.nodes[0].http_addr;
    let out = tool("curl")
        .args(["-sS", "--cacert", test_ca.to_str().unwrap()])
        .arg(format!("https://localhost:{}/v1/kv/k", port(http)))
        .output()
        .unwrap();
    assert!(!out.status.success(), "curl accepted it: {}", text(&out));
    assert!(
        text(&out).to_lowercase().contains("expired"),
        "{}",
        text(&out)
    );
    eventually(
        Duration::from_secs(10),
        "the failed handshake logged",
        || {
            let log = c.log_of(1);
            async move { log.contains("client TLS handshake failed").then_some(()) }
        },
    )
    .await;
}
