//! TLS on the client listeners (gRPC, HTTP, RESP): the node's client-facing certificate,
//! its reload without restart, optional client certificates, and the bounded handshake.
//!
//! With `client_tls_dir` set, every client listener speaks only TLS, with the certificate
//! `server.pem` and key `server-key.pem` of that directory (`paxosdb certs` makes them).
//! With `client_ca` also set, a client must present a certificate signed by that CA, or
//! the handshake fails.
//!
//! A connection goes: accepted → a place in the connection limit ([`super::conn`]) → its
//! own task → [`ListenerTls::open`] → the protocol. In `open`, the first byte, then the
//! wait for one of [`MAX_HANDSHAKES`] slots (the CPU cost of handshakes is bounded in
//! count), then the whole handshake must fit in `header_timeout_ms` (a client that
//! connects and sends nothing holds no slot, and its place not for long). A first byte that cannot
//! start a TLS record is a plaintext client: it gets its protocol's clear refusal (RESP
//! `-ERR this port requires TLS...`, an HTTP 400, an HTTP/2 GOAWAY with
//! `INADEQUATE_SECURITY`, which the Rust client turns into "requires TLS: give
//! --cacert") and is closed. Failed handshakes are logged, at most one line per
//! [`LOG_EVERY`], counting the ones not shown.
//!
//! Reload: [`ListenerTls::reload`] (SIGHUP) reads the files again; new connections use the
//! new certificate, open ones keep theirs. A file that does not load (unreadable, not a
//! certificate, a key that does not match) is refused with an error line and the
//! certificate in use is kept.
//!
//! Invariants:
//! - with client TLS on, no request byte is read outside a TLS session, and none is read
//!   at all before the handshake (and, with a client CA, the client's certificate check)
//!   succeeded;
//! - a connection in its handshake holds a place in the connection limit and ends within
//!   `header_timeout_ms`; at most [`MAX_HANDSHAKES`] handshakes run at once;
//! - the certificate in use is always one that loaded completely (a reload swaps whole
//!   configurations, never half of one).

use crate::error::{Error, Result};
use crate::tls::certs::{SERVER_CERT, SERVER_KEY};
use crate::tls::{provider, read_certs, read_key, tls_err};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// Most TLS handshakes in progress at once, over all client listeners; more wait (within
/// their deadline).
pub const MAX_HANDSHAKES: usize = 128;
/// At most one log line about failed handshakes per this long.
pub const LOG_EVERY: Duration = Duration::from_secs(10);
/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Which protocol a listener speaks, for the answer to a plaintext client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    Http,
    Resp,
}

/// What a plaintext client on a TLS port gets, in its own protocol.
pub fn tls_required(p: Protocol) -> Vec<u8> {
    const WHY: &str = "this port requires TLS";
    match p {
        Protocol::Resp => {
            format!("-ERR {WHY}: connect with TLS (redis-cli --tls --cacert CA.pem)\r\n")
                .into_bytes()
        }
        Protocol::Http => {
            let body = format!(
                r#"{{"error":{{"code":"tls_required","message":"{WHY}: use https:// (curl --cacert CA.pem https://...)"}}}}"#
            );
            format!(
                "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n\
                 connection: close\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        }
        Protocol::Grpc => {
            // The server's connection preface (an empty SETTINGS frame), then GOAWAY with
            // INADEQUATE_SECURITY and the reason as debug data.
            let debug = format!("{WHY}: connect with TLS (--cacert CA.pem)");
            let mut b = vec![0, 0, 0, 0x4, 0, 0, 0, 0, 0];
            let len = 8 + debug.len() as u32;
            b.extend_from_slice(&len.to_be_bytes()[1..]);
            b.extend_from_slice(&[0x7, 0, 0, 0, 0, 0]);
            b.extend_from_slice(&0u32.to_be_bytes()); // last stream id
            b.extend_from_slice(&0xcu32.to_be_bytes()); // INADEQUATE_SECURITY
            b.extend_from_slice(debug.as_bytes());
            b
        }
    }
}

/// A client connection after [`ListenerTls::open`]: plain TCP (client TLS off) or a TLS
/// session.
pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl ClientStream {
    /// The TCP connection underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            ClientStream::Plain(s) => s,
            ClientStream::Tls(s) => s.get_ref().0,
        }
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ClientStream::Plain(s) => s.is_write_vectored(),
            ClientStream::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// Log lines about failed handshakes, at most one per [`LOG_EVERY`] (see
/// [`crate::ratelog`]).
struct FailureLog(crate::ratelog::RateLimited);

impl Default for FailureLog {
    fn default() -> FailureLog {
        FailureLog(crate::ratelog::RateLimited::new(LOG_EVERY))
    }
}

impl FailureLog {
    fn note(&self, peer: Option<SocketAddr>, what: &str) {
        let Some(suppressed) = self.0.admit() else {
            return;
        };
        let peer = peer.map_or_else(|| "?".to_string(), |p| p.to_string());
        tracing::warn!(
            %peer,
            "client TLS handshake failed: {what}; {suppressed} more suppressed since the last \
             such line (at most one line per {}s)",
            LOG_EVERY.as_secs()
        );
    }
}

/// The TLS setup of a node's client listeners.
pub struct ListenerTls {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    /// One acceptor per [`Protocol`] (they differ in the ALPN names offered).
    acceptors: RwLock<Acceptors>,
    handshakes: Semaphore,
    timeout: Duration,
    failures: FailureLog,
}

impl ListenerTls {
    /// Loads `server.pem` and `server-key.pem` from `dir`, and the client CA if given; a
    /// handshake must complete within `timeout`.
    pub fn load(dir: &Path, client_ca: Option<&Path>, timeout: Duration) -> Result<ListenerTls> {
        let (cert, key) = (dir.join(SERVER_CERT), dir.join(SERVER_KEY));
        let config = build(&cert, &key, client_ca)?;
        Ok(ListenerTls {
            cert,
            key,
            client_ca: client_ca.map(Path::to_path_buf),
            acceptors: RwLock::new(Acceptors::new(config)),
            handshakes: Semaphore::new(MAX_HANDSHAKES),
            timeout,
            failures: FailureLog::default(),
        })
    }

    /// True when clients must present a certificate.
    pub fn requires_client_cert(&self) -> bool {
        self.client_ca.is_some()
    }

    /// Reads the certificate, key and client CA again; new connections use them. On an
    /// error the configuration in use is kept (and the error says why).
    pub fn reload(&self) -> Result<()> {
        match build(&self.cert, &self.key, self.client_ca.as_deref()) {
            Ok(config) => {
                *self.acceptors.write().unwrap() = Acceptors::new(config);
                tracing::info!(
                    cert = %self.cert.display(),
                    "client TLS: certificate reloaded; new connections use it"
                );
                Ok(())
            }
            Err(e) => {
                tracing::error!(
                    cert = %self.cert.display(),
                    "client TLS: reload refused, keeping the certificate in use: {e}"
                );
                Err(e)
            }
        }
    }

    /// Turns an admitted connection into a TLS session (or answers a plaintext client in
    /// protocol `p` and closes it). `None`: the connection is over.
    pub async fn open(&self, tcp: TcpStream, p: Protocol) -> Option<ClientStream> {
        let peer = tcp.peer_addr().ok();
        let deadline = tokio::time::Instant::now() + self.timeout;
        let handshake = async {
            let mut first = [0u8; 1];
            match tcp.peek(&mut first).await {
                Ok(1) if first[0] == TLS_HANDSHAKE_RECORD => {}
                Ok(1) => return Some(Err(tcp)),
                _ => return None,
            }
            // A slot only once the client has started its handshake: one that connects
            // and sends nothing holds no slot.
            let _slot = self.handshakes.acquire().await.ok()?;
            let acceptor = self.acceptors.read().unwrap().get(p);
            match acceptor.accept(tcp).await {
                Ok(s) => Some(Ok(s)),
                Err(e) => {
                    self.failures.note(peer, &e.to_string());
                    None
                }
            }
        };
        match tokio::time::timeout_at(deadline, handshake).await {
            Ok(Some(Ok(s))) => Some(ClientStream::Tls(Box::new(s))),
            Ok(Some(Err(plain))) => {
                self.failures.note(
                    peer,
                    "a plaintext client on a TLS port (answered: TLS required)",
                );
                refuse_plaintext(plain, p).await;
                None
            }
            Ok(None) => None,
            Err(_) => {
                self.failures.note(
                    peer,
                    &format!("no TLS handshake within {:?}; closed", self.timeout),
                );
                None
            }
        }
    }
}

/// Writes `p`'s "TLS required" answer, then reads what the client still sends (briefly)
/// so that closing does not reset the connection before the client read the answer.
async fn refuse_plaintext(mut tcp: TcpStream, p: Protocol) {
    let answer = async {
        tcp.write_all(&tls_required(p)).await?;
        tcp.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut left: usize = 64 * 1024;
        while left > 0 {
            let n = tcp.read(&mut sink).await?;
            if n == 0 {
                break;
            }
            left = left.saturating_sub(n);
        }
        Ok::<(), std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), answer).await;
}

/// The server configuration from the files: certificate chain, key, and (if given) the CA
/// client certificates must chain to.
fn build(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<rustls::ServerConfig> {
    let chain = read_certs(cert)?;
    let key_der = read_key(key)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err("TLS versions"))?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in read_certs(ca)? {
                roots.add(c).map_err(tls_err(&format!(
                    "the client CA {} is not usable",
                    ca.display()
                )))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .map_err(|e| Error::Config(format!("client certificate verifier: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    builder
        .with_single_cert(chain, key_der)
        .map_err(tls_err(&format!(
            "{} and {} do not make a usable certificate and key",
            cert.display(),
            key.display()
        )))
}

/// The acceptors of one configuration, per protocol: gRPC offers ALPN `h2` (HTTP/2 only),
/// HTTP offers `http/1.1` (a client such as curl must not pick HTTP/2, which this
/// listener does not serve), RESP offers none (Redis clients send none).
struct Acceptors([tokio_rustls::TlsAcceptor; 3]);

impl Acceptors {
    fn new(config: rustls::ServerConfig) -> Acceptors {
        let with = |alpn: &[&[u8]]| {
            let mut c = config.clone();
            c.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
            tokio_rustls::TlsAcceptor::from(Arc::new(c))
        };
        Acceptors([with(&[b"h2"]), with(&[b"http/1.1"]), with(&[])])
    }

    fn get(&self, p: Protocol) -> tokio_rustls::TlsAcceptor {
        self.0[match p {
            Protocol::Grpc => 0,
            Protocol::Http => 1,
            Protocol::Resp => 2,
        }]
        .clone()
    }
}
