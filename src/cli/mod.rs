//! The `paxosdb` command line: one binary for the server, the client commands, a local
//! cluster and a benchmark.
//!
//! Exit codes: 0 success; 1 the operation answered "no" (missing key, failed compare) or
//! failed; 2 bad usage. Errors go to stderr as one line.

mod backup;
mod bench;
mod cluster;
mod kv;
mod lease;
mod members;
#[cfg(feature = "test-machinery")]
mod nemesis;
mod server;
#[cfg(feature = "test-machinery")]
mod sim;
mod sql;
mod status;
mod txn;
mod user;
mod watch;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// The default endpoints: the client ports of `paxosdb cluster up`.
pub const DEFAULT_ENDPOINTS: &str = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003";

#[derive(Parser, Debug)]
#[command(
    name = "paxosdb",
    version,
    about = "A replicated, strongly consistent key-value database",
    after_help = "Examples:
  paxosdb server                            a single-node database in ./paxosdb-data
  paxosdb cluster up                        a local 3-node cluster (prints how to connect)
  paxosdb put greeting hello                store a value (through any node)
  paxosdb get greeting                      read it back (linearizable)
  paxosdb status                            every member: role, indexes, listeners
  paxosdb sql -e 'SELECT 1'                 SQL on the same cluster
Client commands take the client options before or after their name; `paxosdb COMMAND
--help` shows each command's own."
)]
pub struct Cli {
    /// The client flags given before the subcommand (a client subcommand also takes them
    /// after its name; those win). After [`parse`], the merged ones.
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: CliCommand,
}

/// How a client command reaches the cluster: endpoints, timeout, TLS, credentials. Only
/// client commands take them (before or after their name); `server`, `restore`,
/// `cluster up`, `certs`, `sim` and `nemesis` do not.
#[derive(clap::Args, Debug, Clone, Default)]
#[command(next_help_heading = "Client options")]
pub struct ClientArgs {
    /// Client endpoints (gRPC host:port of the nodes), comma separated [default: the
    /// client config's, else 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003].
    #[arg(long, env = "PAXOSDB_ENDPOINTS")]
    pub endpoints: Option<String>,
    /// Total time a client command may take, retries included (e.g. 10s, 500ms)
    /// [default: the client config's, else 15s].
    #[arg(long, env = "PAXOSDB_TIMEOUT", value_parser = parse_duration)]
    pub timeout: Option<std::time::Duration>,
    /// Client configuration file (TOML: endpoints, cacert, cert, key, user,
    /// password_file, token, timeout); flags and PAXOSDB_* variables override it
    /// [default: ~/.config/paxosdb/client.toml if it exists].
    #[arg(long, env = "PAXOSDB_CLIENT_CONFIG")]
    pub client_config: Option<std::path::PathBuf>,
    /// CA certificate to verify the nodes' TLS certificate with; turns TLS on (`paxosdb
    /// cluster up`: paxosdb-data/tls/ca.pem).
    #[arg(long, env = "PAXOSDB_CACERT")]
    pub cacert: Option<std::path::PathBuf>,
    /// Client certificate, for nodes that require one (with --key).
    #[arg(long = "cert", id = "client_cert", env = "PAXOSDB_CERT")]
    pub client_cert: Option<std::path::PathBuf>,
    /// The client certificate's private key.
    #[arg(long = "key", id = "client_key", env = "PAXOSDB_KEY")]
    pub client_key: Option<std::path::PathBuf>,
    /// The user to authenticate as (with --password-file or PAXOSDB_PASSWORD; a password
    /// without a user is the `default` user's, as in Redis).
    #[arg(long, env = "PAXOSDB_USER")]
    pub user: Option<String>,
    /// File whose first line is the password of --user.
    #[arg(long, env = "PAXOSDB_PASSWORD_FILE")]
    pub password_file: Option<std::path::PathBuf>,
    /// The password of --user (prefer --password-file: a command line is visible to
    /// other local users).
    #[arg(long, env = "PAXOSDB_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// A bearer token (`paxosdb user token`), instead of a user and password.
    #[arg(long, env = "PAXOSDB_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl ClientArgs {
    /// These options (given after the subcommand's name), each falling back to `outer`'s
    /// (given before it), except where `outer_wins` says the outer one was on the command
    /// line and this one was not (it came from the environment, which both read).
    fn merged(self, outer: ClientArgs, outer_wins: impl Fn(&str) -> bool) -> ClientArgs {
        macro_rules! pick {
            ($field:ident, $id:literal) => {
                if outer_wins($id) {
                    outer.$field.or(self.$field)
                } else {
                    self.$field.or(outer.$field)
                }
            };
        }
        ClientArgs {
            endpoints: pick!(endpoints, "endpoints"),
            timeout: pick!(timeout, "timeout"),
            client_config: pick!(client_config, "client_config"),
            cacert: pick!(cacert, "cacert"),
            client_cert: pick!(client_cert, "client_cert"),
            client_key: pick!(client_key, "client_key"),
            user: pick!(user, "user"),
            password_file: pick!(password_file, "password_file"),
            password: pick!(password, "password"),
            token: pick!(token, "token"),
        }
    }
}

/// A client subcommand's arguments and the client flags.
#[derive(clap::Args, Debug)]
pub struct WithClient<T: clap::Args> {
    #[command(flatten)]
    pub args: T,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// A subcommand with no arguments of its own.
#[derive(clap::Args, Debug)]
pub struct NoArgs {}

/// A `paxosdb` subcommand (not the replicated [`crate::machine::Command`], nor a RESP
/// request, [`crate::api::resp::cmd::RespCommand`]).
#[derive(Subcommand, Debug)]
pub enum CliCommand {
    /// Run one node.
    #[command(after_help = "Examples:
  paxosdb server                                      node 1 alone: a single-node database
  paxosdb server --id 2 --peers 2=10.0.0.2:7101 --join 10.0.0.1:7101 --data-dir /var/lib/paxosdb
                                                      a new node joining a running cluster
  paxosdb server --config /etc/paxosdb/node.toml      everything from a file")]
    Server(Box<server::ServerArgs>),
    /// Store a value.
    #[command(after_help = "Examples:
  paxosdb put user/1 ada                    store a value
  paxosdb put --prev user/1 bob             and print the value it replaced
  paxosdb put photo - < photo.jpg           the value from standard input
  paxosdb put --ttl 30s session/9 token     expires 30 s after the write is applied
  paxosdb put --lease 7 svc/web-1 10.0.0.5  deleted when lease 7 ends (`paxosdb lease`)")]
    Put(WithClient<kv::PutArgs>),
    /// Print the value of a key (exit 1 if the key is missing).
    #[command(after_help = "Examples:
  paxosdb get user/1                        linearizable: every acknowledged write is seen
  paxosdb get --stale user/1                the contacted node's own copy, without a round trip
  paxosdb get --json user/1                 value, version and applied index as JSON
                                            (and expires_at_ms, ttl_ms if the key expires)")]
    Get(WithClient<kv::GetArgs>),
    /// Delete a key.
    Delete(WithClient<kv::DeleteArgs>),
    /// Compare-and-swap (exit 1 with the current value if the comparison fails).
    #[command(after_help = "Examples:
  paxosdb cas counter --expect 41 --new 42  only if it holds 41
  paxosdb cas lock --expect-version 0 --new me   only if absent (create)")]
    Cas(WithClient<kv::CasArgs>),
    /// List keys by prefix or range.
    #[command(after_help = "Examples:
  paxosdb scan --prefix user/               every key under user/ (at most --limit)
  paxosdb scan --from a --to m --limit 10   a range, B exclusive")]
    Scan(WithClient<kv::ScanArgs>),
    /// Print the changes of a key or a prefix as they happen, until Ctrl-C (or --count).
    #[command(
        after_help = "Prints one line per change: `rev 12 put KEY VALUE`, `rev 13 delete KEY`,
`rev 14 expire KEY` (--json: one JSON object per line). Resumes by itself on another node
when its node fails, printing every change once, in revision order.

Examples:
  paxosdb watch config/app                  a key, from now on
  paxosdb watch --prefix user/              every key under user/
  paxosdb watch --prefix user/ --from-revision 6 --count 3
                                            replay from revision 6; exit after 3 changes"
    )]
    Watch(WithClient<watch::WatchArgs>),
    /// Run an atomic transaction: comparisons, then operations if they hold, else others
    /// (a script from a file or standard input; exit 1 if a comparison failed).
    #[command(
        after_help = "The script: comparisons, a blank line, the operations to run if all hold,
a blank line, the operations to run otherwise.
  version(\"KEY\") = 0            (=, !=, <, >; the last write's revision, 0 = absent)
  create(\"KEY\") = 12           (the revision that created the key, 0 = absent)
  value(\"KEY\") != \"VALUE\"
  put KEY VALUE [--lease ID] | get KEY [END] [--prefix] [--limit N] | del KEY [END] [--prefix]

Examples:
  printf 'version(\"lock\") = 0\n\nput lock me\n\nget lock\n' | paxosdb txn
                                            take a lock if nobody holds it, else show the holder
  paxosdb txn transfer.txt --json           a script from a file; results as JSON"
    )]
    Txn(WithClient<txn::TxnArgs>),
    /// Leases (etcd's model): grant, keep-alive, revoke, ttl, list. Keys put with
    /// `--lease ID` are deleted when the lease ends.
    #[command(
        subcommand,
        after_help = "Examples:
  LEASE=$(paxosdb lease grant 10s)          a lease of 10 s; prints its id
  paxosdb put --lease $LEASE svc/web-1 up   a key that lives as long as the lease
  paxosdb lease keep-alive $LEASE           renew it every ~3 s until Ctrl-C
  paxosdb lease ttl $LEASE --keys           its time left and its keys
  paxosdb lease revoke $LEASE               end it now: its keys are deleted"
    )]
    Lease(lease::LeaseCommand),
    /// Show every node: id, addresses, role, indexes, pid.
    Status(WithClient<status::StatusArgs>),
    /// Local cluster management.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Load generator: prints throughput and latency percentiles.
    #[command(after_help = "Examples:
  paxosdb bench --concurrency 64 --duration 20s             writes of 256-byte values
  paxosdb bench --read-ratio 0.9 --concurrency 64           mostly linearizable reads
  paxosdb bench --target etcd --endpoints 127.0.0.1:2379    the same load against etcd")]
    Bench(WithClient<bench::BenchArgs>),
    /// Take a consistent backup of the whole database into a file (admin only), or check
    /// one with --verify.
    Backup(WithClient<backup::BackupArgs>),
    /// Seed a new node's data directory from a backup (one per node of the new cluster).
    Restore(Box<backup::RestoreArgs>),
    #[cfg(feature = "test-machinery")]
    /// Deterministic simulation campaign: many seeds, faults, checks (see `sim` docs).
    Sim(sim::SimArgs),
    #[cfg(feature = "test-machinery")]
    /// Fault test: a local cluster under kills, pauses and partitions, history checked.
    Nemesis(nemesis::NemesisArgs),
    /// `sim` in a binary built without the feature: says how to get it (hidden).
    #[cfg(not(feature = "test-machinery"))]
    #[command(name = "sim", hide = true, disable_help_flag = true)]
    SimUnavailable(TestMachineryArgs),
    /// `nemesis` in a binary built without the feature: says how to get it (hidden).
    #[cfg(not(feature = "test-machinery"))]
    #[command(name = "nemesis", hide = true, disable_help_flag = true)]
    NemesisUnavailable(TestMachineryArgs),
    /// Create a cluster CA, a certificate for every node (peer mutual TLS), the nodes'
    /// client-facing certificate, and client certificates.
    Certs(CertsArgs),
    /// User management (admin only): add, delete, list, token.
    #[command(subcommand)]
    User(user::UserCommand),
    /// SQL shell: interactive (history, .tables, .schema, .mode, .timer), `-e "SQL"`, or a
    /// script on standard input.
    Sql(WithClient<sql::SqlArgs>),
}

/// Whatever followed `sim` or `nemesis` in a binary without the test machinery: ignored.
#[cfg(not(feature = "test-machinery"))]
#[derive(clap::Args, Debug)]
pub struct TestMachineryArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    rest: Vec<String>,
}

/// The answer to `paxosdb sim` / `paxosdb nemesis` in a binary built without the
/// `test-machinery` feature (the shipped one): bad usage, with how to get them.
#[cfg(not(feature = "test-machinery"))]
fn test_machinery_unavailable(name: &str) -> crate::error::Result<ExitCode> {
    eprintln!(
        "error: `paxosdb {name}` is test machinery, not in this build; build with \
         `cargo build --release --features test-machinery` (or `cargo run --release \
         --features test-machinery -- {name} ...`)"
    );
    Ok(ExitCode::from(2))
}

#[derive(clap::Args, Debug)]
pub struct CertsArgs {
    /// Directory to write the certificates into (see the table in the README: ca.pem,
    /// node-N.pem, server.pem, client-ca.pem, client-NAME.pem and their keys).
    #[arg(long, default_value = "paxosdb-tls")]
    pub dir: std::path::PathBuf,
    /// The node ids to make certificates for, comma separated.
    #[arg(long, default_value = "1,2,3")]
    pub nodes: String,
    /// Make certificates for these nodes with the CA already in --dir (to add members).
    #[arg(long)]
    pub add: bool,
    /// Make the certificates of --nodes again with the CA already in --dir (renewal),
    /// replacing the ones there; send those nodes SIGHUP to use them.
    #[arg(long)]
    pub renew: bool,
    /// Host names and IP addresses clients reach the nodes at, comma separated, for the
    /// client-facing certificate server.pem (it always names localhost, 127.0.0.1, ::1).
    #[arg(long, default_value = "")]
    pub hosts: String,
    /// Make server.pem again with the CA already in --dir (new --hosts, or renewal),
    /// replacing the one there; send the nodes SIGHUP to use it.
    #[arg(long)]
    pub server: bool,
    /// Make a client certificate for each of these names (comma separated), signed by the
    /// client CA in --dir (made if missing): client-NAME.pem and client-NAME-key.pem.
    #[arg(long)]
    pub client: Option<String>,
}

fn list(s: &str) -> Vec<String> {
    s.split(',')
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

fn certs(a: &CertsArgs) -> crate::error::Result<ExitCode> {
    let ids = a
        .nodes
        .split(',')
        .map(|s| {
            s.trim()
                .parse::<u64>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| crate::error::Error::invalid(format!("{s:?} is not a node id")))
        })
        .collect::<crate::error::Result<Vec<_>>>()?;
    let hosts = list(&a.hosts);
    let clients = list(a.client.as_deref().unwrap_or(""));
    let dir = a.dir.display();
    if a.add {
        crate::tls::add(&a.dir, &ids)?;
        println!(
            "wrote certificates for nodes {} to {dir}; give each node ca.pem and its own \
             node-N.pem and node-N-key.pem",
            a.nodes
        );
    }
    if a.renew {
        crate::tls::certs::renew(&a.dir, &ids)?;
        println!(
            "wrote new certificates for nodes {} to {dir}; copy each node-N.pem and \
             node-N-key.pem to node N and send it SIGHUP (kill -HUP PID) to use them",
            a.nodes
        );
    }
    if a.server {
        crate::tls::certs::server(&a.dir, &hosts)?;
        println!(
            "wrote {dir}/server.pem and server-key.pem; copy them to the nodes' \
             --client-tls-dir and send each node SIGHUP (kill -HUP PID) to use them"
        );
    }
    if !a.add && !a.renew && !a.server && clients.is_empty() {
        crate::tls::generate(&a.dir, &ids, &hosts)?;
        println!(
            "wrote a cluster CA and certificates for nodes {} to {dir}; give each node \
             --peer-tls-dir with ca.pem and its own node-N.pem and node-N-key.pem, and \
             --client-tls-dir with server.pem and server-key.pem (keep ca-key.pem off the \
             nodes); clients trust ca.pem (--cacert)",
            a.nodes
        );
    }
    for name in &clients {
        crate::tls::certs::client(&a.dir, name)?;
        let (cert, key) = crate::tls::certs::client_files(&a.dir, name);
        println!(
            "wrote {} and {} (signed by {dir}/client-ca.pem: give the nodes \
             --client-ca {dir}/client-ca.pem to require client certificates)",
            cert.display(),
            key.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Parses `10s`, `500ms`, `2m` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (use ms, s or m)")),
    };
    // A negative, infinite or absurdly large number is an error, never a panic.
    std::time::Duration::try_from_secs_f64(secs).map_err(|_| format!("bad duration {s:?}"))
}

/// The client config file of `cli` (`--client-config`, `PAXOSDB_CLIENT_CONFIG`, or the
/// default one if it exists; see [`crate::client_config`]).
fn config_file(cli: &Cli) -> crate::Result<crate::client_config::ClientConfig> {
    Ok(
        crate::client_config::ClientConfig::find(cli.client.client_config.as_deref())?
            .map(|(_, c)| c)
            .unwrap_or_default(),
    )
}

/// The endpoints: flag or environment, else the client config's, else the defaults.
pub(crate) fn endpoints(cli: &Cli) -> crate::Result<Vec<String>> {
    let list = match (&cli.client.endpoints, config_file(cli)?.endpoints) {
        (Some(e), _) => e.split(',').map(str::to_string).collect(),
        (None, Some(e)) => e,
        (None, None) => DEFAULT_ENDPOINTS.split(',').map(str::to_string).collect(),
    };
    Ok(list
        .iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect())
}

/// The TLS files of the client flags (each falling back to the client config's), if TLS
/// is on (a CA given).
pub(crate) fn client_tls(cli: &Cli) -> crate::Result<Option<crate::tls::client::ClientTlsFiles>> {
    let f = config_file(cli)?;
    crate::client_config::tls_files(
        cli.client.cacert.clone().or(f.cacert),
        cli.client.client_cert.clone().or(f.cert),
        cli.client.client_key.clone().or(f.key),
    )
}

/// The credentials given by flags or environment; if they give none, the client
/// config's (taken whole from one place, never mixed).
pub(crate) fn credentials(cli: &Cli) -> crate::Result<Option<crate::client::Auth>> {
    let given = cli.client.token.is_some()
        || cli.client.user.is_some()
        || cli.client.password_file.is_some()
        || cli.client.password.is_some();
    if given {
        crate::client_config::credentials(
            cli.client.token.as_deref(),
            cli.client.user.as_deref(),
            cli.client.password_file.as_deref(),
            cli.client.password.as_deref(),
        )
    } else {
        config_file(cli)?.auth()
    }
}

pub(crate) fn client(cli: &Cli) -> crate::Result<crate::client::Client> {
    client_of(cli, &endpoints(cli)?)
}

/// A client of `eps` with the command line's timeout, TLS and credentials.
pub(crate) fn client_of(cli: &Cli, eps: &[String]) -> crate::Result<crate::client::Client> {
    let timeout = match (cli.client.timeout, config_file(cli)?.timeout) {
        (Some(t), _) => t,
        (None, Some(t)) => parse_duration(&t).map_err(crate::Error::Config)?,
        (None, None) => std::time::Duration::from_secs(15),
    };
    crate::client::Client::with_options(
        eps,
        crate::client::ClientOptions {
            timeout,
            tls: client_tls(cli)?,
            ..Default::default()
        },
    )?
    .with_auth(credentials(cli)?)
}

/// A progress line on stderr while a command runs: rewritten at most once a second on a
/// terminal, one line every 10 s otherwise (a log).
pub(crate) struct ProgressLine {
    tty: bool,
    every: std::time::Duration,
    last: std::time::Instant,
    shown: bool,
}

impl ProgressLine {
    pub(crate) fn new() -> ProgressLine {
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        ProgressLine {
            tty,
            every: std::time::Duration::from_secs(if tty { 1 } else { 10 }),
            last: std::time::Instant::now(),
            shown: false,
        }
    }

    /// How often a line is shown.
    pub(crate) fn every(&self) -> std::time::Duration {
        self.every
    }

    /// Shows the line `line` makes, if one is due.
    pub(crate) fn show(&mut self, line: impl FnOnce() -> String) {
        if self.last.elapsed() < self.every {
            return;
        }
        self.last = std::time::Instant::now();
        self.print(&line());
    }

    /// Shows `line` now.
    pub(crate) fn print(&mut self, line: &str) {
        self.shown = true;
        if self.tty {
            eprint!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
        }
    }

    /// Ends the line on a terminal, so that what follows starts on a line of its own.
    pub(crate) fn finish(&mut self) {
        if self.tty && self.shown {
            eprintln!();
        }
        self.shown = false;
    }
}

impl CliCommand {
    /// The client flags given after the subcommand's name; `None` for a command that is
    /// not a client (and takes none).
    fn client_args(&self) -> Option<&ClientArgs> {
        match self {
            CliCommand::Put(a) => Some(&a.client),
            CliCommand::Get(a) => Some(&a.client),
            CliCommand::Delete(a) => Some(&a.client),
            CliCommand::Cas(a) => Some(&a.client),
            CliCommand::Scan(a) => Some(&a.client),
            CliCommand::Watch(a) => Some(&a.client),
            CliCommand::Txn(a) => Some(&a.client),
            CliCommand::Status(a) => Some(&a.client),
            CliCommand::Bench(a) => Some(&a.client),
            CliCommand::Backup(a) => Some(&a.client),
            CliCommand::Sql(a) => Some(&a.client),
            CliCommand::Cluster(c) => c.client_args(),
            CliCommand::User(u) => Some(u.client_args()),
            CliCommand::Lease(l) => Some(l.client_args()),
            _ => None,
        }
    }
}

/// The client flags: clap's id, and the flag.
const CLIENT_FLAGS: [(&str, &str); 10] = [
    ("endpoints", "--endpoints"),
    ("timeout", "--timeout"),
    ("client_config", "--client-config"),
    ("cacert", "--cacert"),
    ("client_cert", "--cert"),
    ("client_key", "--key"),
    ("user", "--user"),
    ("password_file", "--password-file"),
    ("password", "--password"),
    ("token", "--token"),
];

/// Parses the command line (clap exits on `--help`, `--version` and usage errors) and
/// merges the client flags given before and after a client subcommand. A client flag on
/// the command line before a subcommand that is not a client is refused (one set in the
/// environment is not: a shell may export `PAXOSDB_ENDPOINTS` for its clients).
pub fn parse() -> crate::Result<Cli> {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let typed = |m: &clap::ArgMatches, id: &str| {
        m.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
    };
    match cli.command.client_args() {
        Some(inner) => {
            let mut deepest = &matches;
            while let Some((_, m)) = deepest.subcommand() {
                deepest = m;
            }
            let outer = std::mem::take(&mut cli.client);
            cli.client =
                (inner.clone()).merged(outer, |id| typed(&matches, id) && !typed(deepest, id));
        }
        None => {
            let given = CLIENT_FLAGS.iter().find(|(id, _)| typed(&matches, id));
            if let Some((_, flag)) = given {
                let name = matches.subcommand_name().unwrap_or("this command");
                return Err(crate::Error::InvalidInput(format!(
                    "{flag} is a client option; `paxosdb {name}` is not a client command and \
                     takes none"
                )));
            }
        }
    }
    Ok(cli)
}

/// Sets up logging: `RUST_LOG` or `PAXOSDB_LOG` choose the level (default info for the
/// server, warn for client commands).
pub fn init_logging(default: &str) {
    let filter = std::env::var("PAXOSDB_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default.to_string());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// Runs the command line; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = match parse() {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let is_server = matches!(cli.command, CliCommand::Server(_));
    init_logging(if is_server { "info" } else { "warn" });
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match &cli.command {
            CliCommand::Server(a) => server::run(a).await,
            CliCommand::Put(a) => kv::put(&cli, &a.args).await,
            CliCommand::Get(a) => kv::get(&cli, &a.args).await,
            CliCommand::Delete(a) => kv::delete(&cli, &a.args).await,
            CliCommand::Cas(a) => kv::cas(&cli, &a.args).await,
            CliCommand::Scan(a) => kv::scan(&cli, &a.args).await,
            CliCommand::Watch(a) => watch::run(&cli, &a.args).await,
            CliCommand::Txn(a) => txn::run(&cli, &a.args).await,
            CliCommand::Lease(l) => lease::run(&cli, l).await,
            CliCommand::Status(a) => status::run(&cli, &a.args).await,
            CliCommand::Cluster(c) => cluster::run(&cli, c).await,
            CliCommand::Bench(a) => bench::run(&cli, &a.args).await,
            CliCommand::Backup(a) => backup::run(&cli, &a.args).await,
            CliCommand::Restore(a) => backup::restore(a).await,
            #[cfg(feature = "test-machinery")]
            CliCommand::Sim(a) => sim::run(a).await,
            #[cfg(feature = "test-machinery")]
            CliCommand::Nemesis(a) => nemesis::run(a).await,
            #[cfg(not(feature = "test-machinery"))]
            CliCommand::SimUnavailable(_) => test_machinery_unavailable("sim"),
            #[cfg(not(feature = "test-machinery"))]
            CliCommand::NemesisUnavailable(_) => test_machinery_unavailable("nemesis"),
            CliCommand::Certs(a) => certs(a),
            CliCommand::User(u) => user::run(&cli, u).await,
            CliCommand::Sql(a) => sql::run(&cli, &a.args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod duration_tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_parse_and_nonsense_is_an_error_not_a_panic() {
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        for bad in ["99999999999999999999999s", "1e400", "x", "5h", "1.2.3s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
