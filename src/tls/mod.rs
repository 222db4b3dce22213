//! TLS: peer authentication (here), certificate making ([`certs`]) and the client side of
//! TLS to a node's client listeners ([`client`]; the server side is [`crate::api::tls`]).
//!
//! Peer authentication: mutual TLS between the nodes of a cluster, with a cluster CA.
//!
//! A cluster's TLS directory holds `ca.pem` (the cluster CA's certificate) and, for every
//! node N, `node-N.pem` and `node-N-key.pem`: a certificate signed by the CA that names
//! `node-N.paxosdb` (its identity) and `cluster.paxosdb` (any member, for a node that does
//! not know yet whom it reaches). `paxosdb certs` makes them ([`generate`]); `paxosdb
//! cluster up` makes a throwaway set in its data directory.
//!
//! With a TLS directory, every peer connection (replication, state transfer, membership
//! queries, joining) is a TLS 1.3/1.2 session in which both sides present a certificate
//! of the cluster CA. The dialer checks that the node it reached is the one it dialed
//! (`node-<to>.paxosdb`); the acceptor checks that the `Hello`'s sender is the node the
//! client certificate names ([`PeerTls::check_identity`]). A peer with no certificate, a
//! certificate of another CA, or another node's certificate is refused before any of its
//! frames reach the node, and the refusal is logged. Captured frames are useless to
//! replay: they are encrypted under the session's keys.
//!
//! Rotation without restart: [`PeerTls::reload`] (the node's SIGHUP, with the client TLS
//! reload) reads `ca.pem`, `node-N.pem` and `node-N-key.pem` again. New peer connections,
//! accepted and dialed, use the new material; established sessions keep theirs. Material
//! that does not load completely is refused with an error line, and the node keeps what it
//! had. `paxosdb certs --renew` reissues node certificates with the same CA; to move to a
//! new CA, every node first trusts both (`ca.pem` may hold several certificates), then
//! gets its certificate from the new one (the README gives the steps).
//!
//! Invariants:
//! - with TLS configured, no byte of a peer frame is read from or written to a socket
//!   outside a TLS session whose peer presented a certificate chaining to the cluster CA;
//! - a replication or state-transfer connection is served only when the client
//!   certificate names the `Hello`'s sender; a membership query (a joining node) only
//!   needs a certificate of the cluster;
//! - the material in use is always a set that loaded completely (a reload swaps the
//!   acceptor and connector together, never one without the other).

pub mod certs;
pub mod client;

pub use certs::{add, generate};

use crate::command::NodeId;
use crate::error::{Error, Result};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use tokio::net::TcpStream;

/// The name every member's certificate carries, checked when the dialer does not know
/// which member it reaches (a joining node's membership query).
pub const CLUSTER_NAME: &str = "cluster.paxosdb";

/// The name node `id`'s certificate carries.
pub fn node_name(id: NodeId) -> String {
    format!("node-{id}.paxosdb")
}

/// Where the files of node `id` live in a TLS directory.
pub fn files(dir: &Path, id: NodeId) -> (PathBuf, PathBuf, PathBuf) {
    (
        dir.join("ca.pem"),
        dir.join(format!("node-{id}.pem")),
        dir.join(format!("node-{id}-key.pem")),
    )
}

/// One node's TLS setup for peer connections. [`PeerTls::reload`] (SIGHUP) reads the
/// files again: new connections, both ways, use what it loaded; established ones keep the
/// session they have.
pub struct PeerTls {
    dir: PathBuf,
    id: NodeId,
    /// The acceptor and connector of the material last loaded completely (swapped whole).
    current: RwLock<(tokio_rustls::TlsAcceptor, tokio_rustls::TlsConnector)>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PeerTls({}, node {})", self.dir.display(), self.id)
    }
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path)
        .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::Config(format!("{}: not a PEM certificate: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "{} holds no certificate",
            path.display()
        )));
    }
    Ok(certs)
}

pub(crate) fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = std::fs::read(path)
        .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?
        .ok_or_else(|| Error::Config(format!("{} holds no private key", path.display())))
}

pub(crate) fn tls_err(what: &str) -> impl Fn(rustls::Error) -> Error + '_ {
    move |e| Error::Config(format!("{what}: {e}"))
}

/// The acceptor and connector of node `id`'s files in `dir`.
fn build_peer(
    dir: &Path,
    id: NodeId,
) -> Result<(tokio_rustls::TlsAcceptor, tokio_rustls::TlsConnector)> {
    let (ca, cert, key) = files(dir, id);
    let mut roots = rustls::RootCertStore::empty();
    for c in read_certs(&ca)? {
        roots
            .add(c)
            .map_err(tls_err("the cluster CA certificate is not usable"))?;
    }
    let roots = Arc::new(roots);
    let chain = read_certs(&cert)?;
    let key = read_key(&key)?;
    let client_verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| Error::Config(format!("client verifier: {e}")))?;
    let server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err("TLS versions"))?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(tls_err(&format!("{} and its key", cert.display())))?;
    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err("TLS versions"))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(tls_err(&format!("{} and its key", cert.display())))?;
    Ok((
        tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        tokio_rustls::TlsConnector::from(Arc::new(client)),
    ))
}

impl PeerTls {
    /// Loads node `id`'s certificate and key and the cluster CA from `dir`.
    pub fn load(dir: &Path, id: NodeId) -> Result<Arc<PeerTls>> {
        Ok(Arc::new(PeerTls {
            dir: dir.to_path_buf(),
            id,
            current: RwLock::new(build_peer(dir, id)?),
        }))
    }

    /// Reads the node's certificate, key and the cluster CA again; new peer connections
    /// (accepted and dialed) use them, established ones go on with theirs. On an error
    /// (a file missing, unreadable, or a key that does not match) the material in use is
    /// kept, and the error is logged and returned.
    pub fn reload(&self) -> Result<()> {
        let (_, cert, _) = files(&self.dir, self.id);
        match build_peer(&self.dir, self.id) {
            Ok(pair) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = pair;
                tracing::info!(
                    cert = %cert.display(),
                    "peer TLS: certificate and CA reloaded; new peer connections use them"
                );
                Ok(())
            }
            Err(e) => {
                tracing::error!(
                    cert = %cert.display(),
                    "peer TLS: reload refused, keeping the certificate in use: {e}"
                );
                Err(e)
            }
        }
    }

    fn connector(&self) -> tokio_rustls::TlsConnector {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    /// Opens a TLS session to node `to` (0: any member of the cluster) over `tcp`.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        to: NodeId,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = if to == 0 {
            CLUSTER_NAME.to_string()
        } else {
            node_name(to)
        };
        let name = ServerName::try_from(name)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        self.connector().connect(name, tcp).await
    }

    /// Accepts a TLS session on `tcp`; the client must present a certificate of the
    /// cluster CA. Returns the session and the client's certificate.
    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> std::io::Result<(
        tokio_rustls::server::TlsStream<TcpStream>,
        CertificateDer<'static>,
    )> {
        let s = self.acceptor().accept(tcp).await?;
        let cert = s
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .cloned()
            .ok_or_else(|| std::io::Error::other("the peer presented no certificate"))?;
        Ok((s, cert))
    }

    /// Checks that `cert` (already verified against the cluster CA) names node `id`.
    pub fn check_identity(
        cert: &CertificateDer<'_>,
        id: NodeId,
    ) -> std::result::Result<(), String> {
        let ee = webpki::EndEntityCert::try_from(cert)
            .map_err(|e| format!("unreadable peer certificate: {e}"))?;
        let name = ServerName::try_from(node_name(id)).map_err(|e| e.to_string())?;
        ee.verify_is_valid_for_subject_name(&name).map_err(|_| {
            format!(
                "the peer's certificate does not name node {id} ({}): a node may only \
                 speak as itself",
                node_name(id)
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Node `from` (certificates in `client_dir`) dials node `to` (in `server_dir`);
    /// returns what the acceptor saw: the client certificate's identity check for
    /// `claimed`, or the handshake error.
    async fn dial(
        server_dir: &Path,
        to: NodeId,
        client_dir: &Path,
        from: NodeId,
        claimed: NodeId,
    ) -> std::result::Result<(), String> {
        let server = PeerTls::load(server_dir, to).unwrap();
        let client = PeerTls::load(client_dir, from).unwrap();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accept = tokio::spawn(async move {
            let (tcp, _) = l.accept().await.unwrap();
            let (mut s, cert) = server.accept(tcp).await.map_err(|e| e.to_string())?;
            PeerTls::check_identity(&cert, claimed)?;
            let mut b = [0u8; 5];
            s.read_exact(&mut b).await.map_err(|e| e.to_string())?;
            assert_eq!(&b, b"hello");
            Ok::<(), String>(())
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        if let Ok(mut s) = client.connect(tcp, to).await {
            let _ = s.write_all(b"hello").await;
            let _ = s.flush().await;
        }
        accept.await.unwrap()
    }

    #[tokio::test]
    async fn members_talk_and_impostors_are_refused() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        generate(a.path(), &[1, 2, 3], &[]).unwrap();
        generate(b.path(), &[1, 2, 3], &[]).unwrap();
        // Node 2 of cluster A reaches node 1 of cluster A, speaking as itself.
        dial(a.path(), 1, a.path(), 2, 2).await.unwrap();
        // Node 2 claiming to be node 3: refused by the identity check.
        let e = dial(a.path(), 1, a.path(), 2, 3).await.unwrap_err();
        assert!(e.contains("does not name node 3"), "{e}");
        // A node of another cluster (another CA): the handshake fails.
        assert!(dial(a.path(), 1, b.path(), 2, 2).await.is_err());
        // Regenerating over an existing CA is refused; adding a node with it works.
        assert!(generate(a.path(), &[4], &[]).is_err());
        add(a.path(), &[4]).unwrap();
        assert!(
            add(a.path(), &[4]).is_err(),
            "node 4 has a certificate already"
        );
        dial(a.path(), 1, a.path(), 4, 4).await.unwrap();
    }
}
