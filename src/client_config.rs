//! The client configuration file: where the nodes are, how to reach them over TLS, and
//! who to be — for the CLI and for programs using the Rust client.
//!
//! A TOML file; every key is optional:
//!
//! ```toml
//! endpoints = ["db1.example:7001", "db2.example:7001", "db3.example:7001"]
//! cacert = "ca.pem"              # turns TLS on; relative paths are relative to this file
//! cert = "client-app.pem"        # a client certificate, for nodes that require one
//! key = "client-app-key.pem"
//! user = "app"
//! password_file = "app-password" # first line: the password
//! # token = "app.0123abcd.…"     # instead of user and password
//! timeout = "15s"
//! ```
//!
//! Where the CLI finds it: `--client-config PATH`, else `PAXOSDB_CLIENT_CONFIG`, else
//! `$XDG_CONFIG_HOME/paxosdb/client.toml` (or `~/.config/paxosdb/client.toml`) if that
//! exists. A named file that does not exist is an error; the default one is optional.
//! Precedence: a flag beats its environment variable, which beats the file. Credentials
//! are taken whole from one place — if a flag or variable gives any of user, password,
//! password file or token, the file's credentials are not used at all (a `--user` on the
//! command line never pairs with the file's password, nor loses to the file's token).
//!
//! Programs: [`ClientConfig::load`] and [`ClientConfig::connect`], or
//! [`crate::client::Client::from_config_file`].
//!
//! Secrets: a file holding a `token` must be readable by its owner only (mode 0600 or
//! stricter) or it is refused, as ssh refuses a private key others can read; a password
//! file (`password_file`, or `--password-file`) readable by others gets a warning (a
//! `tracing` warning: on stderr for the CLI).
//!
//! Invariants:
//! - unknown keys are refused (a misspelt `cacert` must not silently mean "no TLS");
//! - a secret is never read from a file group or others can read without the user being
//!   told (refused for the config file, a warning for a password file).

use crate::client::{Auth, Client, ClientOptions};
use crate::error::{Error, Result};
use crate::tls::client::ClientTlsFiles;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The environment variable naming the client configuration file.
pub const ENV: &str = "PAXOSDB_CLIENT_CONFIG";

/// The contents of a client configuration file (paths already resolved against its
/// directory).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub endpoints: Option<Vec<String>>,
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    pub token: Option<String>,
    /// Total time a request may take, retries included (`15s`, `500ms`, `2m`).
    pub timeout: Option<String>,
}

impl ClientConfig {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<ClientConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!("cannot read client config {}: {e}", path.display()))
        })?;
        let mut c: ClientConfig = toml::from_str(&text)
            .map_err(|e| Error::Config(format!("client config {}: {e}", path.display())))?;
        if c.token.is_some() {
            if let Some(mode) = loose_mode(path) {
                return Err(Error::Config(format!(
                    "client config {} holds a token but others can read it (mode {mode:o}); \
                     chmod 600 {}",
                    path.display(),
                    path.display()
                )));
            }
        }
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut c.cacert, &mut c.cert, &mut c.key, &mut c.password_file]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(t) = &c.timeout {
            crate::cli::parse_duration(t)
                .map_err(|e| Error::Config(format!("client config {}: {e}", path.display())))?;
        }
        Ok(c)
    }

    /// The file to use: `explicit` (a flag or [`ENV`]; must exist), else the default
    /// one if it exists, else none.
    pub fn find(explicit: Option<&Path>) -> Result<Option<(PathBuf, ClientConfig)>> {
        let path = match explicit {
            Some(p) => p.to_path_buf(),
            None => match default_path() {
                Some(p) if p.exists() => p,
                _ => return Ok(None),
            },
        };
        let c = ClientConfig::load(&path)?;
        Ok(Some((path, c)))
    }

    /// The TLS files, if TLS is on (`cacert` given).
    pub fn tls(&self) -> Result<Option<ClientTlsFiles>> {
        tls_files(self.cacert.clone(), self.cert.clone(), self.key.clone())
    }

    /// The credentials, if any.
    pub fn auth(&self) -> Result<Option<Auth>> {
        credentials(
            self.token.as_deref(),
            self.user.as_deref(),
            self.password_file.as_deref(),
            None,
        )
    }

    /// A client for the file's endpoints, TLS and credentials.
    pub fn connect(&self) -> Result<Client> {
        let endpoints = self
            .endpoints
            .clone()
            .filter(|e| !e.is_empty())
            .ok_or_else(|| Error::Config("the client config names no endpoints".into()))?;
        let mut opts = ClientOptions {
            tls: self.tls()?,
            ..Default::default()
        };
        if let Some(t) = &self.timeout {
            opts.timeout = crate::cli::parse_duration(t).map_err(Error::Config)?;
        }
        Client::with_options(&endpoints, opts)?.with_auth(self.auth()?)
    }
}

/// `$XDG_CONFIG_HOME/paxosdb/client.toml`, or `$HOME/.config/paxosdb/client.toml`.
pub fn default_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("paxosdb").join("client.toml"))
}

/// The file's mode if group or others may read it.
fn loose_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o044 != 0).then_some(mode)
}

/// The TLS files of a CA, certificate and key, if TLS is on (a CA given).
pub(crate) fn tls_files(
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<Option<ClientTlsFiles>> {
    match ca {
        Some(ca) => Ok(Some(ClientTlsFiles { ca, cert, key })),
        None if cert.is_some() || key.is_some() => Err(Error::Config(
            "a client certificate (--cert/--key) needs the CA to verify the nodes with \
             (--cacert, PAXOSDB_CACERT or cacert in the client config)"
                .into(),
        )),
        None => Ok(None),
    }
}

/// Credentials from a token, or a user with a password file or password (a password
/// without a user is the `default` user's, as in Redis).
pub(crate) fn credentials(
    token: Option<&str>,
    user: Option<&str>,
    password_file: Option<&Path>,
    password: Option<&str>,
) -> Result<Option<Auth>> {
    if let Some(t) = token {
        return Ok(Some(Auth::Token(t.to_string())));
    }
    if user.is_none() && password_file.is_none() && password.is_none() {
        return Ok(None);
    }
    let user = user.unwrap_or(crate::auth::DEFAULT_USER);
    let password = match (password_file, password) {
        (Some(f), _) => {
            if let Some(mode) = loose_mode(f) {
                tracing::warn!(
                    "password file {} is readable by others (mode {mode:o}); chmod 600 it",
                    f.display()
                );
            }
            String::from_utf8(crate::server::read_password_file(f)?)
                .map_err(|_| Error::invalid("the password must be UTF-8"))?
        }
        (None, Some(p)) => p.to_string(),
        (None, None) => {
            return Err(Error::invalid(
                "a user needs a password: --password-file, PAXOSDB_PASSWORD_FILE, \
                 PAXOSDB_PASSWORD or password_file in the client config",
            ))
        }
    };
    Ok(Some(Auth::Password {
        user: user.to_string(),
        password,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn paths_resolve_beside_the_file_and_secrets_need_a_private_file() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("client.toml");
        std::fs::write(
            &f,
            "endpoints = [\"h:1\"]\ncacert = \"ca.pem\"\nuser = \"u\"\npassword_file = \"/abs/pw\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let c = ClientConfig::load(&f).unwrap();
        assert_eq!(c.cacert, Some(d.path().join("ca.pem")));
        assert_eq!(c.password_file, Some(PathBuf::from("/abs/pw")));
        // A token in a file others can read: refused; private: accepted.
        std::fs::write(&f, "token = \"u.0123.secret\"\n").unwrap();
        let e = ClientConfig::load(&f).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            ClientConfig::load(&f).unwrap().token.as_deref(),
            Some("u.0123.secret")
        );
        // A misspelt key is an error, not silence.
        std::fs::write(&f, "ca_cert = \"ca.pem\"\n").unwrap();
        assert!(ClientConfig::load(&f).is_err());
        assert!(ClientConfig::find(Some(&d.path().join("missing.toml"))).is_err());
    }
}
