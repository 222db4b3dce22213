//! Making certificates (`paxosdb certs`, `paxosdb cluster up`), with rcgen.
//!
//! One directory holds everything of one cluster:
//!
//! | file | what | signed by |
//! |---|---|---|
//! | `ca.pem`, `ca-key.pem` | the cluster CA | itself |
//! | `node-N.pem`, `node-N-key.pem` | node N, for peer mutual TLS | the cluster CA |
//! | `server.pem`, `server-key.pem` | the certificate every node shows its clients | the cluster CA |
//! | `client-ca.pem`, `client-ca-key.pem` | the CA of client certificates | itself |
//! | `client-NAME.pem`, `client-NAME-key.pem` | client NAME's certificate | the client CA |
//!
//! Clients trust `ca.pem` (`--cacert`). Client certificates come from a CA of their own,
//! so that a client certificate can never pass for a member on the peer port (which
//! takes any certificate of the cluster CA for a membership query).
//!
//! Invariants:
//! - a CA file is never overwritten (a new CA would orphan every certificate it issued);
//!   a node or client certificate is never overwritten either;
//! - `server.pem` and node certificates may be made again (`--server`, `--renew`): it is replaced by a rename, so a node
//!   reloading it (SIGHUP) reads either the old pair or the new one, never half of one —
//!   the key is renamed first, and a node that reads the new key with the old certificate
//!   refuses the pair and keeps what it has (reload again);
//! - private keys are created readable by their owner only.

use super::files;
use crate::command::NodeId;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// The certificate every node shows its clients, and its key.
pub const SERVER_CERT: &str = "server.pem";
pub const SERVER_KEY: &str = "server-key.pem";
/// The CA of client certificates (give it to a server as `--client-ca`).
pub const CLIENT_CA: &str = "client-ca.pem";
const CLIENT_CA_KEY: &str = "client-ca-key.pem";

/// The names `server.pem` always carries: a node reached on this machine.
pub const LOCAL_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Where client `name`'s certificate and key live in `dir`.
pub fn client_files(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("client-{name}.pem")),
        dir.join(format!("client-{name}-key.pem")),
    )
}

fn gen_err(e: rcgen::Error) -> Error {
    Error::Internal(format!("certificate generation: {e}"))
}

/// A CA's parameters: the same every time for the same key, so that a CA certificate
/// made again from the saved key issues certificates the original CA certificate verifies.
fn ca_params(common_name: &str) -> Result<rcgen::CertificateParams> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyUsagePurpose};
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, common_name);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(ca)
}

const CLUSTER_CA_NAME: &str = "paxosdb cluster CA";
const CLIENT_CA_NAME: &str = "paxosdb client CA";

/// A CA rebuilt from its saved key.
struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

/// A CA's name: `base` and a fingerprint of its key, so that two clusters' CAs differ in
/// name (a TLS client that finds a certificate's issuer by name then says "unknown
/// issuer" for another cluster's certificate, not "bad signature").
fn ca_name(base: &str, key: &rcgen::KeyPair) -> String {
    format!("{base} {:08x}", crc32fast::hash(key.public_key_raw()))
}

impl Ca {
    fn new(base_name: &str) -> Result<Ca> {
        let key = rcgen::KeyPair::generate().map_err(gen_err)?;
        let cert = ca_params(&ca_name(base_name, &key))?
            .self_signed(&key)
            .map_err(gen_err)?;
        Ok(Ca { cert, key })
    }

    /// The CA of `key_path`, named as its certificate `cert_path` names it (CAs made
    /// before names carried a fingerprint are named `base_name` alone).
    fn load(key_path: &Path, cert_path: &Path, base_name: &str, what: &str) -> Result<Ca> {
        let pem = std::fs::read_to_string(key_path).map_err(|e| {
            Error::Config(format!(
                "cannot read the {what} key {}: {e} (certificates are made where the CA key \
                 is)",
                key_path.display()
            ))
        })?;
        let key = rcgen::KeyPair::from_pem(&pem).map_err(gen_err)?;
        let name = ca_name(base_name, &key);
        let existing = super::read_certs(cert_path)?;
        let fingerprinted = existing
            .first()
            .is_some_and(|c| c.as_ref().windows(name.len()).any(|w| w == name.as_bytes()));
        let name = if fingerprinted {
            name
        } else {
            base_name.to_string()
        };
        let cert = ca_params(&name)?.self_signed(&key).map_err(gen_err)?;
        Ok(Ca { cert, key })
    }

    /// Writes the CA's key and certificate (the certificate last: its presence says the
    /// CA is complete).
    fn save(&self, cert_path: &Path, key_path: &Path) -> Result<()> {
        write_private(key_path, self.key.serialize_pem().as_bytes())?;
        std::fs::write(cert_path, self.cert.pem())?;
        Ok(())
    }

    /// A new key and a certificate for `names` with `usage`, signed by this CA.
    fn issue(
        &self,
        names: Vec<String>,
        common_name: &str,
        usage: Vec<rcgen::ExtendedKeyUsagePurpose>,
    ) -> Result<(String, String)> {
        let mut p = rcgen::CertificateParams::new(names).map_err(gen_err)?;
        p.distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        p.extended_key_usages = usage;
        let key = rcgen::KeyPair::generate().map_err(gen_err)?;
        let cert = p.signed_by(&key, &self.cert, &self.key).map_err(gen_err)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

fn refuse_existing(path: &Path) -> Result<()> {
    if path.exists() {
        return Err(Error::Config(format!("{} exists already", path.display())));
    }
    Ok(())
}

/// Node `id`'s certificate and key (PEM), issued by `ca`: it names the node and the
/// cluster, for both ends of a peer connection.
fn node_cert(id: NodeId, ca: &Ca) -> Result<(String, String)> {
    use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    let names = vec![super::node_name(id), super::CLUSTER_NAME.to_string()];
    ca.issue(
        names,
        &format!("paxosdb node {id}"),
        vec![ServerAuth, ClientAuth],
    )
}

/// Writes node `id`'s certificate and key into `dir`, issued by `ca`.
fn issue_node(dir: &Path, id: NodeId, ca: &Ca) -> Result<()> {
    let (_, cert_path, key_path) = files(dir, id);
    refuse_existing(&cert_path)?;
    let (cert, key) = node_cert(id, ca)?;
    write_private(&key_path, key.as_bytes())?;
    std::fs::write(&cert_path, cert)?;
    Ok(())
}

/// Writes a new cluster CA, a certificate and key for every id in `ids`, and the
/// client-facing server certificate (for [`LOCAL_NAMES`] and `hosts`) into `dir` (created
/// if missing). Refuses to overwrite an existing CA.
pub fn generate(dir: &Path, ids: &[NodeId], hosts: &[String]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let ca_path = dir.join("ca.pem");
    if ca_path.exists() {
        return Err(Error::Config(format!(
            "{} exists already; use another directory, or --add to make certificates for \
             more nodes with this CA",
            ca_path.display()
        )));
    }
    let ca = Ca::new(CLUSTER_CA_NAME)?;
    for &id in ids {
        issue_node(dir, id, &ca)?;
    }
    write_server(dir, &ca, hosts)?;
    // The CA's key is what lets someone mint members: keep it beside, readable by the
    // owner only, so that more nodes can be added later (`paxosdb certs --add`).
    ca.save(&ca_path, &dir.join("ca-key.pem"))
}

/// Writes certificates for more nodes (`ids`) with the CA already in `dir` (its key,
/// `ca-key.pem`, must be there).
pub fn add(dir: &Path, ids: &[NodeId]) -> Result<()> {
    let ca = cluster_ca(dir)?;
    for &id in ids {
        issue_node(dir, id, &ca)?;
    }
    Ok(())
}

/// Makes node certificates again (renewal, or a key thought exposed) with the CA in `dir`,
/// replacing the ones there: key first, then certificate, each by a rename (a node that
/// reloads in between refuses the mismatched pair and keeps what it has; reload again).
/// A node uses its new certificate on SIGHUP.
pub fn renew(dir: &Path, ids: &[NodeId]) -> Result<()> {
    let ca = cluster_ca(dir)?;
    for &id in ids {
        let (_, cert_path, key_path) = files(dir, id);
        let (cert, key) = node_cert(id, &ca)?;
        replace(&key_path, key.as_bytes(), true)?;
        replace(&cert_path, cert.as_bytes(), false)?;
    }
    Ok(())
}

/// Makes the client-facing certificate again, with the CA in `dir`, for [`LOCAL_NAMES`]
/// and `hosts` (host names or IP addresses), replacing the one there (a node picks it up
/// on SIGHUP).
pub fn server(dir: &Path, hosts: &[String]) -> Result<()> {
    write_server(dir, &cluster_ca(dir)?, hosts)
}

/// The cluster CA already in `dir` (its key, `ca-key.pem`, must be there).
fn cluster_ca(dir: &Path) -> Result<Ca> {
    Ca::load(
        &dir.join("ca-key.pem"),
        &dir.join("ca.pem"),
        CLUSTER_CA_NAME,
        "cluster CA",
    )
}

fn write_server(dir: &Path, ca: &Ca, hosts: &[String]) -> Result<()> {
    let mut names: Vec<String> = LOCAL_NAMES.iter().map(|s| s.to_string()).collect();
    for h in hosts {
        let h = h.trim();
        if h.is_empty() || names.iter().any(|n| n == h) {
            continue;
        }
        names.push(h.to_string());
    }
    let (cert, key) = ca.issue(
        names,
        "paxosdb server",
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth],
    )?;
    replace(&dir.join(SERVER_KEY), key.as_bytes(), true)?;
    replace(&dir.join(SERVER_CERT), cert.as_bytes(), false)
}

/// True for a client name usable in a file name and a certificate.
fn valid_client_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !name.starts_with('.')
}

/// Writes a certificate and key for client `name`, signed by the client CA in `dir`
/// (made first if there is none). Refuses to overwrite an existing one.
pub fn client(dir: &Path, name: &str) -> Result<()> {
    if !valid_client_name(name) {
        return Err(Error::invalid(format!(
            "client name {name:?}: use letters, digits, '-', '_' and '.' (at most 64)"
        )));
    }
    std::fs::create_dir_all(dir)?;
    let (ca_cert, ca_key) = (dir.join(CLIENT_CA), dir.join(CLIENT_CA_KEY));
    let ca = if ca_cert.exists() {
        Ca::load(&ca_key, &ca_cert, CLIENT_CA_NAME, "client CA")?
    } else {
        let ca = Ca::new(CLIENT_CA_NAME)?;
        ca.save(&ca_cert, &ca_key)?;
        ca
    };
    let (cert_path, key_path) = client_files(dir, name);
    refuse_existing(&cert_path)?;
    let (cert, key) = ca.issue(
        vec![],
        name,
        vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth],
    )?;
    write_private(&key_path, key.as_bytes())?;
    std::fs::write(&cert_path, cert)?;
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::Config(format!("cannot create {}: {e}", path.display())))?;
    f.write_all(bytes)?;
    Ok(())
}

/// Replaces `path` by a file holding `bytes`, by a rename (readers see the old file or
/// the new one).
fn replace(path: &Path, bytes: &[u8], private: bool) -> Result<()> {
    let tmp = path.with_extension("pem.new");
    let _ = std::fs::remove_file(&tmp);
    if private {
        write_private(&tmp, bytes)?;
    } else {
        std::fs::write(&tmp, bytes)?;
    }
    std::fs::rename(&tmp, path)
        .map_err(|e| Error::Config(format!("cannot replace {}: {e}", path.display())))
}
