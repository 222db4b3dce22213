//! What several end-to-end test files run the same way: the clients users run (curl,
//! redis-cli) and the text of a finished command.
//!
//! Invariants:
//! - a tool that is not installed fails the test with a hint (`scripts/setup` installs
//!   them), unless the test checks [`installed`] first and records a skip.

use std::process::{Command, Output};

/// True if `name` is a command on the PATH.
pub fn installed(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Runs a client tool; panics with a hint if it is not installed.
pub fn tool(name: &str) -> Command {
    assert!(
        installed(name),
        "{name} is not installed; run scripts/setup"
    );
    Command::new(name)
}

/// A finished command's stdout followed by its stderr.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The port of a `host:port` address.
pub fn port(addr: &str) -> &str {
    addr.rsplit_once(':').expect("host:port").1
}

/// `curl -s` with `args`: (status, body).
pub fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').expect("status line");
    (code.trim().parse().expect("status"), body.to_string())
}

/// A TLS session with the client listener at `addr`, verified with `ca` as localhost
/// (the name `paxosdb certs` gives the nodes' client-facing certificate).
pub async fn tls_connect(
    addr: &str,
    ca: &std::path::Path,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut std::fs::read(ca).unwrap().as_slice()) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap()
}

/// The first certificate of a PEM file, DER-encoded.
pub fn file_certificate(path: &std::path::Path) -> Vec<u8> {
    let pem = std::fs::read(path).unwrap();
    let first = rustls_pemfile::certs(&mut pem.as_slice())
        .next()
        .unwrap()
        .unwrap();
    first.to_vec()
}
