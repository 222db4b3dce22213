//! `paxosdb cluster up`: a local cluster on loopback, in the foreground (and the
//! membership subcommands, in [`super::members`]).
//!
//! Each node is a child process running `paxosdb server` (the same binary), with its data
//! in `DIR/node-N` (`--nodes 1`: one node, a single-node database that grows like any
//! cluster); its log lines are printed prefixed with `[nN]`. Ctrl-C (or SIGTERM)
//! sends SIGTERM to every node and waits for them to stop cleanly. Starting again on the
//! same directory keeps the data.
//!
//! Ports of node N with the default `--base-port 7000`: gRPC 7000+N, peers 7100+N, HTTP
//! 8079+N (node 1 on 8080) and Redis protocol 6378+N (node 1 on 6379, so a bare
//! `redis-cli` reaches node 1). With another base B: gRPC B+N, peers B+100+N, HTTP
//! B+200+N, RESP B+300+N.
//!
//! Security: `DIR/tls` holds a throwaway cluster CA (made on the first start) with a
//! certificate per node, for peer mutual TLS, and `server.pem`, which every node shows its
//! clients: all client listeners speak TLS, and clients trust `DIR/tls/ca.pem` (the
//! start-up lines say how to connect with each client).

use super::{Cli, ClientArgs, WithClient};
use crate::error::{Error, Result};
use clap::{Args, Subcommand};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Run a local cluster in the foreground until Ctrl-C.
    Up(UpArgs),
    /// Add a node (start it first with --join MEMBER_PEER_ADDR).
    AddNode(WithClient<super::members::AddNodeArgs>),
    /// Remove a member; it stops serving.
    RemoveNode(WithClient<super::members::RemoveNodeArgs>),
    /// Replace a member by a new node in one change (start the new one with --join).
    ReplaceNode(WithClient<super::members::ReplaceNodeArgs>),
}

#[derive(Args, Debug)]
pub struct UpArgs {
    /// Number of nodes: 1 is a single-node database (it grows online with `cluster
    /// add-node`); 3 or 5 survive the failure of one or two.
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// Directory holding one data directory per node.
    #[arg(long, default_value = "paxosdb-data")]
    pub data_dir: PathBuf,
    /// Node N serves clients on BASE+N and peers on BASE+100+N.
    #[arg(long, default_value_t = 7000)]
    pub base_port: u16,
}

impl ClusterCommand {
    /// The client flags given after the subcommand's name, for a client subcommand.
    pub fn client_args(&self) -> Option<&ClientArgs> {
        match self {
            ClusterCommand::Up(_) => None,
            ClusterCommand::AddNode(a) => Some(&a.client),
            ClusterCommand::RemoveNode(a) => Some(&a.client),
            ClusterCommand::ReplaceNode(a) => Some(&a.client),
        }
    }
}

pub async fn run(cli: &Cli, cmd: &ClusterCommand) -> Result<ExitCode> {
    use super::members::change;
    match cmd {
        ClusterCommand::Up(a) => up(a).await,
        ClusterCommand::AddNode(WithClient { args: a, .. }) => {
            change(cli, &[(a.id, a.addr.clone())], &[], a.json).await
        }
        ClusterCommand::RemoveNode(WithClient { args: a, .. }) => {
            change(cli, &[], &[a.id], a.json).await
        }
        ClusterCommand::ReplaceNode(WithClient { args: a, .. }) => {
            change(cli, &[(a.id, a.addr.clone())], &[a.old], a.json).await
        }
    }
}

/// Writes a new random password (24 letters and digits) to `path`, readable by its
/// owner only.
fn write_new_password(path: &std::path::Path) -> Result<()> {
    use rand::Rng;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let pw: String = rand::thread_rng()
        .sample_iter(rand::distributions::Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    writeln!(f, "{pw}")?;
    Ok(())
}

fn prefix_lines<R: tokio::io::AsyncRead + Unpin + Send + 'static>(r: R, tag: String) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(r).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            println!("{tag} {line}");
        }
    });
}

/// Writes the client config file of a local cluster (see [`crate::client_config`]): its
/// endpoints, CA and the administrator's password file; readable by the owner only.
fn write_client_config(
    path: &std::path::Path,
    endpoints: &[String],
    ca: &std::path::Path,
    password_file: &std::path::Path,
) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let quote = |s: &str| toml::Value::String(s.to_string()).to_string();
    let eps: Vec<String> = endpoints.iter().map(|e| quote(e)).collect();
    let text = format!(
        "# Written by `paxosdb cluster up`: use with --client-config or PAXOSDB_CLIENT_CONFIG.\n\
         endpoints = [{}]\ncacert = {}\nuser = {}\npassword_file = {}\n",
        eps.join(", "),
        quote(&ca.to_string_lossy()),
        quote(crate::auth::DEFAULT_USER),
        quote(&password_file.to_string_lossy()),
    );
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::Config(format!("cannot write {}: {e}", path.display())))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

async fn up(a: &UpArgs) -> Result<ExitCode> {
    if !(1..=9).contains(&a.nodes) {
        return Err(Error::invalid(
            "--nodes must be between 1 and 9 (1 for a single-node database; 3 or 5 for a \
             cluster that survives a failure)",
        ));
    }
    let exe = std::env::current_exe()
        .map_err(|e| Error::Internal(format!("cannot find own executable: {e}")))?;
    let port = |n: u64, off: u64| a.base_port as u64 + off + n;
    let default_ports = a.base_port == 7000;
    let http_port = |n: u64| {
        if default_ports {
            8079 + n
        } else {
            port(n, 200)
        }
    };
    let resp_port = |n: u64| {
        if default_ports {
            6378 + n
        } else {
            port(n, 300)
        }
    };
    let peers: Vec<String> = (1..=a.nodes)
        .map(|n| format!("{n}=127.0.0.1:{}", port(n, 100)))
        .collect();
    let peers = peers.join(",");
    std::fs::create_dir_all(&a.data_dir)?;
    // Peers talk mutual TLS, and clients TLS, with a throwaway CA kept beside the data.
    let tls = a.data_dir.join("tls");
    if !tls.join("ca.pem").exists() {
        let ids: Vec<u64> = (1..=a.nodes).collect();
        crate::tls::generate(&tls, &ids, &[])?;
    }
    if !tls.join(crate::tls::certs::SERVER_CERT).exists() {
        // A directory made before client TLS existed.
        crate::tls::certs::server(&tls, &[])?;
    }
    if let Some(n) = (1..=a.nodes).find(|&n| !crate::tls::files(&tls, n).1.exists()) {
        return Err(Error::Config(format!(
            "{} has no certificate for node {n} (it was made for fewer nodes); use another \
             --data-dir, or make one with `paxosdb certs`",
            tls.display()
        )));
    }
    // Clients authenticate: the first administrator (`default`, the user of Redis'
    // `AUTH <password>`) gets a generated password kept beside the data.
    let password_file = std::path::absolute(a.data_dir.join("admin-password"))?;
    if !password_file.exists() {
        write_new_password(&password_file)?;
    }
    let mut children: Vec<(u64, Child)> = Vec::new();
    for n in 1..=a.nodes {
        let mut cmd = Command::new(&exe);
        cmd.arg("server")
            .args(["--id", &n.to_string()])
            .args(["--peers", &peers])
            .args(["--client-addr", &format!("127.0.0.1:{}", port(n, 0))])
            .args(["--http-addr", &format!("127.0.0.1:{}", http_port(n))])
            .args(["--resp-addr", &format!("127.0.0.1:{}", resp_port(n))])
            .env_remove("PAXOSDB_HTTP_ADDR")
            .env_remove("PAXOSDB_RESP_ADDR")
            .arg("--data-dir")
            .arg(a.data_dir.join(format!("node-{n}")))
            .arg("--peer-tls-dir")
            .arg(&tls)
            .arg("--client-tls-dir")
            .arg(&tls)
            .env_remove("PAXOSDB_CLIENT_CA")
            .arg("--admin-password-file")
            .arg(&password_file)
            .env_remove("PAXOSDB_ADMIN_USER")
            .env_remove("PAXOSDB_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::Internal(format!("cannot start node {n}: {e}")))?;
        prefix_lines(child.stdout.take().expect("piped"), format!("[n{n}]"));
        prefix_lines(child.stderr.take().expect("piped"), format!("[n{n}]"));
        children.push((n, child));
    }
    let endpoints: Vec<String> = (1..=a.nodes)
        .map(|n| format!("127.0.0.1:{}", port(n, 0)))
        .collect();
    println!(
        "paxosdb: {}-node cluster starting, data in {}",
        a.nodes,
        a.data_dir.display()
    );
    for n in 1..=a.nodes {
        println!(
            "  node {n}: grpc 127.0.0.1:{}  http 127.0.0.1:{}  redis 127.0.0.1:{}  peer 127.0.0.1:{}",
            port(n, 0),
            http_port(n),
            resp_port(n),
            port(n, 100)
        );
    }
    let default_eps = a.base_port == 7000 && a.nodes == 3;
    let ca = std::path::absolute(tls.join("ca.pem")).unwrap_or_else(|_| tls.join("ca.pem"));
    // The same in a client config file, for programs and for `--client-config`.
    let client_config = std::path::absolute(a.data_dir.join("client.toml"))?;
    write_client_config(&client_config, &endpoints, &ca, &password_file)?;
    let ca = ca.display();
    let pw = password_file.display();
    println!(
        "Clients connect with TLS (CA certificate {ca}) and credentials \
         (user `default`, password in {pw}). In another terminal:"
    );
    println!("  export PAXOSDB_CACERT={ca} PAXOSDB_PASSWORD_FILE={pw} REDISCLI_AUTH=$(cat {pw})");
    if !default_eps {
        println!("  export PAXOSDB_ENDPOINTS={}", endpoints.join(","));
    }
    println!("  paxosdb put hello world && paxosdb get hello && paxosdb status");
    println!(
        "  (or: export PAXOSDB_CLIENT_CONFIG={}, which names the same)",
        client_config.display()
    );
    println!(
        "  redis-cli -p {} --tls --cacert {ca} get hello",
        resp_port(1)
    );
    println!(
        "  curl --cacert {ca} -u default:$REDISCLI_AUTH https://127.0.0.1:{}/v1/kv/hello",
        http_port(1)
    );
    println!(
        "  python3 -c 'import redis; print(redis.Redis(port={}, ssl=True, \
         ssl_ca_certs=\"{ca}\", password=open(\"{pw}\").read().strip()).get(\"hello\"))'",
        resp_port(1)
    );
    println!("Press Ctrl-C to stop all nodes.");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::Internal(format!("signal handler: {e}")))?;
    let mut alive: Vec<bool> = vec![true; children.len()];
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = tokio::time::sleep(Duration::from_millis(300)) => {
                for (i, (n, child)) in children.iter_mut().enumerate() {
                    if alive[i] {
                        if let Ok(Some(status)) = child.try_wait() {
                            alive[i] = false;
                            println!("paxosdb: node {n} exited ({status})");
                        }
                    }
                }
                if alive.iter().all(|a| !a) {
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
    }
    println!("paxosdb: stopping all nodes");
    for (_, child) in &children {
        if let Some(pid) = child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }
    for (n, child) in children.iter_mut() {
        match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                println!("paxosdb: node {n} did not stop in 10s; killing it");
                let _ = child.kill().await;
            }
        }
    }
    println!(
        "paxosdb: cluster stopped; data kept in {}",
        a.data_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
