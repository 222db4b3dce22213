//! Peer authentication on real processes (issue #9): the injection attack that worked on
//! plain TCP — connect to the leader's peer port, say hello as node 1, forward a proposal —
//! is shown to work without TLS, then to fail with mutual TLS in each of its forms: no
//! TLS at all, a certificate of another cluster, and a member's real certificate used to
//! speak as another member. The cluster itself replicates, and catches a node up by state
//! transfer, over TLS.

mod common;

use common::{eventually, Cluster};
use paxosdb::command::{KvCommand, LogEntry, WriteOp};
use paxosdb::transport::{read_frame, write_frame, Hello, PeerMsg, Purpose, TransportConfig};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

fn certs(dir: &Path) {
    common::cluster::certs(&["--nodes", "1,2,3", "--dir", dir.to_str().unwrap()]);
}

/// The attacker's hello and forwarded proposal, speaking as node `as_node` (with its
/// data directory's `incarnation`) to node `to`.
async fn inject<S: AsyncWrite + Unpin>(
    s: &mut S,
    as_node: u64,
    incarnation: u64,
    to: u64,
    key: &str,
) -> std::io::Result<()> {
    let me = TransportConfig {
        id: as_node,
        listeners: vec![],
        max_frame: 1 << 20,
        max_queue_bytes: 1 << 20,
        bind_ip: None,
        incarnation,
        tls: None,
    };
    write_frame(s, &me.hello(to, Purpose::Replication), 1 << 16).await?;
    let entry = LogEntry {
        proposer: as_node,
        batch_id: 7,
        commands: vec![KvCommand {
            client_id: 777,
            seq: 1,
            op: WriteOp::Put {
                key: key.as_bytes().to_vec(),
                value: b"by-attacker".to_vec(),
                return_prev: false,
            },
            user: None,
        }
        .encode()],
    };
    use omnipaxos::messages::sequence_paxos::{PaxosMessage, PaxosMsg};
    let msg = omnipaxos::messages::Message::SequencePaxos(PaxosMessage {
        from: as_node,
        to,
        msg: PaxosMsg::ProposalForward(vec![entry]),
    });
    write_frame(s, &PeerMsg::Paxos { config: 1, msg }, 1 << 20).await?;
    s.flush().await
}

/// Waits until the peer closes the connection (or 5 s), reading whatever it sends.
async fn drained<S: AsyncRead + Unpin>(s: &mut S) {
    let mut buf = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// True when `key` exists, read linearizably after a fresh write went through.
async fn present(c: &Cluster, key: &str) -> bool {
    let client = c.client();
    client.put(b"fence", b"x", false).await.unwrap();
    client.get(key.as_bytes(), false).await.unwrap().0.is_some()
}

fn peer_addr(c: &Cluster, id: u64) -> String {
    c.nodes[id as usize - 1].peer_addr.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tls_anyone_can_inject_a_proposal() {
    // The attack as the issue reported it, on a plain-TCP cluster: with one node down,
    // listen on its peer port, read the hello another node sends it (the incarnation
    // travels in the clear), then speak as that node to the leader. It works. (This is
    // the control for the test below: the same bytes, refused once peers use TLS.)
    let mut c = Cluster::start(3).await;
    let leader = c.leader().await;
    let down = (1..=3).find(|&i| i != leader).unwrap();
    let as_node = (1..=3).find(|&i| i != leader && i != down).unwrap();
    c.kill(down);
    let l = tokio::net::TcpListener::bind(peer_addr(&c, down))
        .await
        .unwrap();
    let incarnation = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            if let Ok(h) = read_frame::<_, Hello>(&mut s, 1 << 16).await {
                if h.from == as_node {
                    return h.incarnation;
                }
            }
        }
    })
    .await
    .expect("a hello from the other node");
    // One injection is enough when the leader takes it at once; on a loaded machine it
    // may arrive while the leader is still settling after the kill, so the same bytes are
    // sent again (on a new connection) until one injected write is applied.
    eventually(
        Duration::from_secs(30),
        "the injected write applied",
        || {
            let c = &c;
            async move {
                let mut s = TcpStream::connect(peer_addr(c, leader)).await.ok()?;
                inject(&mut s, as_node, incarnation, leader, "pwned")
                    .await
                    .ok()?;
                let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
                while tokio::time::Instant::now() < deadline {
                    if present(c, "pwned").await {
                        return Some(());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                None
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_mutual_tls_impostors_are_refused_and_members_replicate() {
    let tmp = tempfile::tempdir().unwrap();
    let (tls, other) = (tmp.path().join("tls"), tmp.path().join("other"));
    certs(&tls);
    certs(&other);
    let mut c = Cluster::builder(3)
        .peer_tls(&tls)
        .env(&[
            ("PAXOSDB_COMPACT_EVERY_ENTRIES", "20"),
            ("PAXOSDB_LOG_KEEP_ENTRIES", "40"),
        ])
        .start()
        .await;
    let leader = c.leader().await;
    c.client().put(b"over", b"tls", false).await.unwrap();

    // 1. Plain TCP to a TLS peer port: the handshake fails, nothing is read.
    let mut s = TcpStream::connect(peer_addr(&c, leader)).await.unwrap();
    let _ = inject(&mut s, 1, 1, leader, "pwned-plain").await;
    drained(&mut s).await;

    // 2. TLS with a certificate of another cluster, by a client that does not even check
    // whom it reached: the node refuses the client certificate in the handshake.
    let tcp = TcpStream::connect(peer_addr(&c, leader)).await.unwrap();
    if let Ok(mut s) = foreign_client(&other)
        .connect(name("node-1.paxosdb"), tcp)
        .await
    {
        let _ = inject(&mut s, 1, 1, leader, "pwned-foreign").await;
        drained(&mut s).await;
    }

    // 3. A member's real certificate (node 2's) used to speak as node 1.
    let impostor = node_tls(&tls, 2);
    let tcp = TcpStream::connect(peer_addr(&c, leader)).await.unwrap();
    let mut s = impostor
        .connect(tcp, leader)
        .await
        .expect("node 2 is a member");
    let _ = inject(&mut s, 1, 1, leader, "pwned-impostor").await;
    drained(&mut s).await;

    for key in ["pwned-plain", "pwned-foreign", "pwned-impostor"] {
        assert!(!present(&c, key).await, "{key} was applied");
    }
    let log = c.log_of(leader);
    assert!(log.contains("TLS handshake refused"), "{log}");
    assert!(
        log.contains("UnknownIssuer") || log.contains("BadSignature"),
        "the foreign certificate was not refused by the node:\n{log}"
    );
    assert!(log.contains("does not name node 1"), "{log}");

    // Members still replicate and a node far behind catches up by state transfer, all
    // over TLS.
    let down = (1..=3).find(|&i| i != leader).unwrap();
    c.kill(down);
    let client = c.client_for(leader);
    for i in 0..200 {
        client
            .put(format!("k{i}").as_bytes(), b"v", false)
            .await
            .unwrap();
    }
    let target = c.applied(leader).await.unwrap();
    c.restart(down).await;
    c.wait_applied(down, target, Duration::from_secs(60)).await;
    let (v, _) = c.client_for(down).get(b"k199", true).await.unwrap();
    assert!(v.is_some());
    assert!(c.log_of(down).contains("state installed"));
}

fn name(n: &str) -> rustls::pki_types::ServerName<'static> {
    rustls::pki_types::ServerName::try_from(n.to_string()).unwrap()
}

/// An attacker's TLS client: presents node 1's certificate of another cluster (`dir`) and
/// accepts whatever certificate the server shows.
fn foreign_client(dir: &Path) -> tokio_rustls::TlsConnector {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, UnixTime};
    #[derive(Debug)]
    struct AnyServer;
    impl ServerCertVerifier for AnyServer {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    let pem = |f: &str| std::fs::read(dir.join(f)).unwrap();
    let certs = rustls_pemfile::certs(&mut pem("node-1.pem").as_slice())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pemfile::private_key(&mut pem("node-1-key.pem").as_slice())
        .unwrap()
        .unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AnyServer))
    .with_client_auth_cert(certs, key)
    .unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

fn node_tls(dir: &Path, id: u64) -> Arc<paxosdb::tls::PeerTls> {
    paxosdb::tls::PeerTls::load(dir, id).unwrap()
}
