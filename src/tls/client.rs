//! The client side of TLS to a node's client listeners, used by the Rust client (and so by
//! the CLI): which CA to trust, which certificate to show, and what a failure means.
//!
//! A failed TLS session is turned into a [`TlsFailure`] that says what to fix: the
//! server's certificate is not trusted (wrong `--cacert`), the server refused ours (it
//! requires a client certificate), the server does not speak TLS (client TLS is off
//! there), or the server speaks only TLS and this client did not. [`diagnose`] finds one
//! in any error chain the gRPC stack hands back, by type: rustls errors, our own
//! connector's errors, and the HTTP/2 `INADEQUATE_SECURITY` refusal a node sends a
//! plaintext client (see [`crate::api::tls`]).
//!
//! Invariants:
//! - with TLS configured, no request leaves this client outside a TLS session whose
//!   server certificate chains to the given CA and names the host dialed;
//! - a [`TlsFailure`] is a setup problem: retrying the same request cannot fix it.

use super::{provider, read_certs, read_key, tls_err};
use crate::error::{Error, Result};
use rustls::pki_types::ServerName;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpStream;

/// Where a client finds its TLS material.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// The CA that signed the nodes' client-facing certificate (`ca.pem` of `paxosdb
    /// certs`).
    pub ca: PathBuf,
    /// This client's certificate and key, for a node that requires client certificates.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// A loaded client TLS setup; cheap to clone.
#[derive(Clone)]
pub struct ClientTls {
    connector: tokio_rustls::TlsConnector,
    ca: PathBuf,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientTls(ca={})", self.ca.display())
    }
}

/// Why a TLS session with a node could not be opened or went on; each says what to fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TlsFailure {
    #[error(
        "{addr} did not answer with TLS: is client TLS on at that node? (connect without \
         --cacert/PAXOSDB_CACERT if it serves plaintext)"
    )]
    NotTls { addr: String },
    #[error(
        "{addr} requires TLS: give the cluster's CA certificate with --cacert or \
         PAXOSDB_CACERT (paxosdb cluster up: paxosdb-data/tls/ca.pem)"
    )]
    TlsRequired { addr: String },
    #[error("the certificate of {addr} is not trusted with {ca}: {detail} (wrong --cacert?)")]
    Untrusted {
        addr: String,
        ca: String,
        detail: String,
    },
    #[error(
        "{addr} refused this client's certificate: {detail} (it requires a client \
         certificate signed by its client CA: --cert and --key)"
    )]
    Refused { addr: String, detail: String },
    #[error("TLS with {addr} failed: {detail}")]
    Other { addr: String, detail: String },
}

impl From<TlsFailure> for Error {
    fn from(f: TlsFailure) -> Error {
        Error::Config(f.to_string())
    }
}

impl ClientTls {
    /// Loads the CA and (if given) the client certificate and key.
    pub fn load(files: &ClientTlsFiles) -> Result<ClientTls> {
        let mut roots = rustls::RootCertStore::empty();
        for c in read_certs(&files.ca)? {
            roots
                .add(c)
                .map_err(tls_err("the CA certificate (--cacert) is not usable"))?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(tls_err("TLS versions"))?
            .with_root_certificates(roots);
        let config = match (&files.cert, &files.key) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
                .map_err(tls_err(&format!("{} and its key", cert.display())))?,
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(Error::Config(
                    "a client certificate needs both --cert and --key".into(),
                ))
            }
        };
        Ok(ClientTls {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            ca: files.ca.clone(),
        })
    }

    /// Opens a TLS session over `tcp` with the node at `host` (`addr`: host:port, for
    /// messages); its certificate must name `host`.
    pub async fn connect(
        &self,
        host: &str,
        addr: &str,
        tcp: TcpStream,
    ) -> std::result::Result<tokio_rustls::client::TlsStream<TcpStream>, ConnectError> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_string()).map_err(|e| {
            ConnectError::Tls(TlsFailure::Other {
                addr: addr.to_string(),
                detail: format!("{host:?} is not a valid server name: {e}"),
            })
        })?;
        self.connector
            .connect(name, tcp)
            .await
            .map_err(|e| match self.failure(addr, &e) {
                Some(f) => ConnectError::Tls(f),
                None => ConnectError::Io(e),
            })
    }

    /// Opens a TLS session with the node at `host` (`addr`: host:port) and waits briefly
    /// for its first word: what went wrong with TLS there, if anything. For errors that
    /// reach the client without their cause: in TLS 1.3 a server refuses a client
    /// certificate (or its absence) only after the client finished its handshake, and the
    /// HTTP/2 stack then reports a bare "canceled".
    pub async fn probe(&self, host: &str, addr: &str) -> Option<TlsFailure> {
        use tokio::io::AsyncReadExt;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let port = addr.rsplit_once(':')?.1.parse::<u16>().ok()?;
        let wait = std::time::Duration::from_secs(1);
        let tcp = tokio::time::timeout(wait, TcpStream::connect((bare, port)))
            .await
            .ok()?
            .ok()?;
        let mut s = match tokio::time::timeout(wait, self.connect(host, addr, tcp)).await {
            Err(_) | Ok(Err(ConnectError::Io(_))) => return None,
            Ok(Err(ConnectError::Tls(f))) => return Some(f),
            Ok(Ok(s)) => s,
        };
        let mut b = [0u8; 1];
        match tokio::time::timeout(wait, s.read(&mut b)).await {
            Ok(Err(e)) => self.failure(addr, &e),
            _ => None,
        }
    }

    /// What a TLS-level error `e` on a connection to `addr` means, if it is one.
    pub fn failure(&self, addr: &str, e: &(dyn std::error::Error + 'static)) -> Option<TlsFailure> {
        diagnose(e, addr, &self.ca.display().to_string())
    }
}

/// Asks the node at `addr` over plaintext HTTP/2 whether it requires TLS: sends the
/// client preface and looks, in what comes back within a second, for the GOAWAY with
/// `INADEQUATE_SECURITY` a TLS-only node answers plaintext gRPC clients with. For a
/// plaintext client whose call failed without a cause (the HTTP/2 stack may report the
/// refused connection as a bare "canceled").
pub async fn probe_plaintext(addr: &str) -> Option<TlsFailure> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let wait = std::time::Duration::from_secs(1);
    let answer = async {
        let mut tcp = TcpStream::connect(addr).await.ok()?;
        // The preface and an empty SETTINGS frame.
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
        tcp.write_all(&hello).await.ok()?;
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while got.len() < 9 + 17 + 256 {
            let n = tcp.read(&mut buf).await.ok()?;
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            if goaway_inadequate_security(&got) {
                return Some(());
            }
            if got.len() >= 9 && !got.starts_with(&[0, 0, 0, 0x4]) {
                return None; // a node speaking HTTP/2: not the refusal
            }
        }
        None
    };
    tokio::time::timeout(wait, answer).await.ok()??;
    Some(TlsFailure::TlsRequired {
        addr: addr.to_string(),
    })
}

/// True when `b` starts with what a TLS-only node answers a plaintext HTTP/2 client: an
/// empty SETTINGS frame, then a GOAWAY with error code `INADEQUATE_SECURITY` (0xc). (A
/// node serving plaintext gRPC starts with a SETTINGS frame that is not empty.) False
/// also when more bytes are needed; the caller reads on until a timeout.
fn goaway_inadequate_security(b: &[u8]) -> bool {
    const EMPTY_SETTINGS: [u8; 9] = [0, 0, 0, 0x4, 0, 0, 0, 0, 0];
    let Some(rest) = b.strip_prefix(&EMPTY_SETTINGS) else {
        return false;
    };
    rest.len() >= 17 && rest[3] == 0x7 && rest[13..17] == 0xcu32.to_be_bytes()
}

/// True when `e`'s chain holds a request the HTTP/2 client canceled because its
/// connection ended (the cause, if any, is then not in the chain).
pub fn canceled(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_canceled)
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// A connection attempt that failed: a TLS problem, or a plain I/O one (node down,
/// connection reset), which another attempt may get past.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Tls(TlsFailure),
    #[error(transparent)]
    Io(std::io::Error),
}

/// Finds, in the chain of `e`, a TLS failure with the node at `addr` (`ca`: the CA file the
/// client trusts, for messages; empty for a client without TLS).
pub fn diagnose(e: &(dyn std::error::Error + 'static), addr: &str, ca: &str) -> Option<TlsFailure> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(f) = err.downcast_ref::<TlsFailure>() {
            return Some(f.clone());
        }
        if let Some(ConnectError::Tls(f)) = err.downcast_ref::<ConnectError>() {
            return Some(f.clone());
        }
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(from_rustls(r, addr, ca));
        }
        if let Some(h) = err.downcast_ref::<h2::Error>() {
            if h.reason() == Some(h2::Reason::INADEQUATE_SECURITY) && h.is_remote() {
                return Some(TlsFailure::TlsRequired {
                    addr: addr.to_string(),
                });
            }
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                if let Some(r) = inner.downcast_ref::<rustls::Error>() {
                    return Some(from_rustls(r, addr, ca));
                }
            }
        }
        cur = err.source();
    }
    None
}

fn from_rustls(r: &rustls::Error, addr: &str, ca: &str) -> TlsFailure {
    use rustls::AlertDescription as A;
    let addr = addr.to_string();
    let detail = r.to_string();
    match r {
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            TlsFailure::NotTls { addr }
        }
        rustls::Error::InvalidCertificate(_) => TlsFailure::Untrusted {
            addr,
            ca: ca.to_string(),
            detail,
        },
        rustls::Error::AlertReceived(
            A::CertificateRequired
            | A::BadCertificate
            | A::UnknownCA
            | A::CertificateUnknown
            | A::CertificateExpired
            | A::CertificateRevoked
            | A::UnsupportedCertificate
            | A::AccessDenied,
        ) => TlsFailure::Refused { addr, detail },
        _ => TlsFailure::Other { addr, detail },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::tls::{tls_required, Protocol};

    #[test]
    fn the_grpc_refusal_is_recognised_and_nothing_else_is() {
        let refusal = tls_required(Protocol::Grpc);
        assert!(goaway_inadequate_security(&refusal));
        // Cut short, or another GOAWAY code, or a real server's first SETTINGS: no.
        assert!(!goaway_inadequate_security(&refusal[..20]));
        let mut other = refusal.clone();
        other[9 + 9 + 7] = 0x1; // PROTOCOL_ERROR
        assert!(!goaway_inadequate_security(&other));
        assert!(!goaway_inadequate_security(&[
            0, 0, 6, 0x4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100
        ]));
    }
}
