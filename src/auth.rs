//! Users, secrets and roles: who may do what on the client APIs.
//!
//! Users live in the **replicated state**: they are created, changed and deleted by log
//! commands ([`WriteOp::SetUser`](crate::command::WriteOp::SetUser),
//! [`WriteOp::DeleteUser`](crate::command::WriteOp::DeleteUser)) that the key-value state
//! machine applies into its own metadata space (`Space::Sm`, keys `u` + name). Client reads,
//! scans, KEYS/SCAN and key validation only ever reach the user data space (`Space::Kv`),
//! so no client command can read or write a user record; and because the metadata space is
//! part of every snapshot, state transfer and replica comparison, users survive restarts,
//! state transfer and membership changes exactly like data does.
//!
//! Secrets (passwords and tokens) are hashed with argon2id and a random salt by the node
//! that receives the request, *before* it proposes the command ([`hash_secret`]): the log
//! carries only PHC hash strings, and apply reads no clock and no random source.
//!
//! A token is `<user>.<id>.<secret>`: the user record keeps each token's public id beside
//! the hash of its secret, so that one token can be revoked by its id
//! ([`TokenRevocation::Id`], [`revoke_token_write`]) while the others and the passwords
//! stay.
//!
//! A request is authenticated by the [`Authenticator`] of the node it reaches. Argon2
//! verification is deliberately slow, so a successful verification is remembered in a
//! bounded cache keyed by an HMAC (with a per-process random key) of the user name, the
//! stored hash and the secret: a changed password has a new salt and so a new stored hash,
//! a deleted or disabled user is refused before the cache is consulted, and the role and
//! key prefix are read afresh from the applied state on every request, so a change takes
//! effect as soon as this node applied it.
//!
//! Enforcement: authentication is required once the replicated user table holds a user,
//! or from the start when the node was given `--require-auth` or `--admin-password-file`.
//! With no user and neither option, every request is allowed as an administrator (today's
//! loopback behaviour, for local use only).
//!
//! Roles ([`Role`]): `read` may read and list keys; `readwrite` may also write; `admin` may
//! also manage users and change the membership. A user with a key prefix reads, writes and
//! lists only keys that start with it: a read or write of another key is refused
//! (permission denied), and a scan or key listing is narrowed to the prefix (other keys are
//! silently left out, as if absent).
//!
//! SQL ([`Identity::check_sql`]): querying needs `read`, executing `readwrite`. A user
//! with a key prefix may not use SQL at all (permission denied, saying why): a key prefix
//! does not describe SQL tables, so its limit could not be kept there. Like a key write,
//! a SQL write carries its user through the log and the SQL store checks again where it
//! applies it ([`Identity::permits_sql`], against the user table as of that entry; see
//! `sql::store`).
//!
//! Invariants:
//! - No secret is ever stored, proposed or logged: only argon2id hashes enter the log, and
//!   the failure log line names the API and the user, never what was sent.
//! - A failed authentication changes nothing, and its log line is rate limited
//!   ([`FAIL_LOG_EVERY`]).
//! - Memory stays bounded: at most [`CACHE_MAX`] cached verifications, at most
//!   [`VERIFY_CONCURRENCY`] argon2 verifications at once (each holds ~19 MiB), at most
//!   [`MAX_SECRETS`] secrets per user.

use crate::command::{prefix_end, ScanRange};
use crate::error::{Error, Result};
use crate::kv::KvStore;
use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, SaltString};
use argon2::{Argon2, PasswordVerifier};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

/// What a user may do. Ordered: each role may do everything the ones before it may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Role {
    /// Read and list keys.
    Read,
    /// Read, list and write keys.
    ReadWrite,
    /// Everything, including user management and membership changes.
    Admin,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::ReadWrite => "readwrite",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Result<Role> {
        match s.to_ascii_lowercase().as_str() {
            "read" => Ok(Role::Read),
            "readwrite" => Ok(Role::ReadWrite),
            "admin" => Ok(Role::Admin),
            _ => Err(Error::invalid(format!(
                "unknown role {s:?}: use read, readwrite or admin"
            ))),
        }
    }
}

/// A token's stored form: its public id (the part of the token that names it) and the
/// argon2id hash of its secret part.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub hash: String,
}

/// A user as the replicated state stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub role: Role,
    /// Only keys starting with this are visible to the user (empty: every key).
    #[serde(with = "serde_bytes")]
    pub prefix: Vec<u8>,
    /// A disabled user cannot authenticate.
    pub enabled: bool,
    /// argon2id PHC strings of the user's passwords (any one of them is accepted).
    pub passwords: Vec<String>,
    pub tokens: Vec<TokenRecord>,
}

/// Changes to a user, applied in the log in this order: `reset_passwords` clears the
/// passwords, `revoke_tokens` removes tokens (revoking a token the user does not hold
/// rejects the whole change), then each field that is set replaces (role, prefix, enabled)
/// or adds (password, token). A user that does not exist is created as a disabled `read` user
/// over every key, and then changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserChange {
    pub reset_passwords: bool,
    pub role: Option<Role>,
    pub prefix: Option<Vec<u8>>,
    pub enabled: Option<bool>,
    /// argon2id hashes (never plain passwords).
    pub add_passwords: Vec<String>,
    pub add_token: Option<TokenRecord>,
    /// With `enabled: None`: a user this change creates is enabled (HTTP, gRPC and the
    /// CLI create usable users; RESP's `ACL SETUSER` creates them off, as Redis does). An
    /// existing user keeps its state, so changing a disabled user does not turn it on.
    #[serde(default)]
    pub enable_if_new: bool,
    /// Tokens to revoke: every one (`ACL SETUSER name resetpass` / `reset`: in Redis
    /// those leave no way in, and a token is a way in), or one by its id (`paxosdb user
    /// revoke-token`). Encoded so that log entries written when this field was a `bool`
    /// (`reset_tokens`) decode unchanged (see [`TokenRevocation`]).
    #[serde(default)]
    pub revoke_tokens: TokenRevocation,
}

/// Which of a user's tokens a [`UserChange`] revokes (before it adds one).
///
/// Wire form: a tag byte — 0 nothing, 1 every token, 2 one token, followed by its id —
/// written as a tuple, which bincode encodes without a length. Tags 0 and 1 are exactly
/// the bytes of the `bool` this field replaced (`reset_tokens: false / true`), so a
/// `SetUser` entry written before per-token revocation existed decodes as it was meant;
/// an older node meeting tag 2 refuses the entry instead of misreading it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum TokenRevocation {
    #[default]
    Nothing,
    All,
    /// The token with this id (the middle part of `<user>.<id>.<secret>`).
    Id(String),
}

impl Serialize for TokenRevocation {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        match self {
            TokenRevocation::Nothing | TokenRevocation::All => {
                let mut t = s.serialize_tuple(1)?;
                t.serialize_element(&u8::from(*self == TokenRevocation::All))?;
                t.end()
            }
            TokenRevocation::Id(id) => {
                let mut t = s.serialize_tuple(2)?;
                t.serialize_element(&2u8)?;
                t.serialize_element(id)?;
                t.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for TokenRevocation {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = TokenRevocation;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a token revocation (tag 0, 1, or 2 and an id)")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<TokenRevocation, A::Error> {
                use serde::de::Error as _;
                let tag: u8 = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(0, &self))?;
                match tag {
                    0 => Ok(TokenRevocation::Nothing),
                    1 => Ok(TokenRevocation::All),
                    2 => seq
                        .next_element()?
                        .map(TokenRevocation::Id)
                        .ok_or_else(|| A::Error::invalid_length(1, &self)),
                    t => Err(A::Error::custom(format!(
                        "unknown token revocation tag {t}"
                    ))),
                }
            }
        }
        // Up to two elements; tags 0 and 1 stop after the first (bincode reads only what
        // the visitor asks for).
        d.deserialize_tuple(2, V)
    }
}

/// Most passwords plus tokens one user may hold.
pub const MAX_SECRETS: usize = 16;
/// Longest user name.
pub const MAX_NAME: usize = 64;
/// Longest secret accepted (a longer one is refused, not truncated).
pub const MAX_SECRET: usize = 1024;
/// Cached successful verifications, at most.
pub const CACHE_MAX: usize = 4096;
/// argon2 verifications running at once, at most (others wait their turn).
pub const VERIFY_CONCURRENCY: usize = 4;
/// At most one "authentication failed" log line per this many seconds.
pub const FAIL_LOG_EVERY: u64 = 5;
/// The user `AUTH <password>` (one argument) names, as in Redis.
pub const DEFAULT_USER: &str = "default";

/// Refuses a user name that is empty, too long, or not made of letters, digits and
/// `_ . @ -` (so that names print safely and a token can carry one).
pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(Error::invalid(format!(
            "a user name is 1 to {MAX_NAME} characters"
        )));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_.@-".contains(c))
    {
        return Err(Error::invalid(
            "a user name may hold only letters, digits and _ . @ -",
        ));
    }
    Ok(())
}

impl UserChange {
    /// Validates a change before it is proposed.
    pub fn check(&self, max_key: usize) -> Result<()> {
        if let Some(p) = &self.prefix {
            if p.len() > max_key {
                return Err(Error::invalid("the key prefix is longer than a key may be"));
            }
        }
        if self.add_passwords.len() > MAX_SECRETS {
            return Err(Error::invalid(format!(
                "a user may hold at most {MAX_SECRETS} passwords and tokens"
            )));
        }
        for h in self
            .add_passwords
            .iter()
            .chain(self.add_token.iter().map(|t| &t.hash))
        {
            PasswordHash::new(h).map_err(|_| Error::invalid("a secret must be given hashed"))?;
        }
        Ok(())
    }

    /// The record after this change (deterministic: apply calls it).
    pub fn apply_to(&self, old: Option<UserRecord>) -> std::result::Result<UserRecord, String> {
        let is_new = old.is_none();
        let mut u = old.unwrap_or(UserRecord {
            role: Role::Read,
            prefix: vec![],
            enabled: false,
            passwords: vec![],
            tokens: vec![],
        });
        if self.reset_passwords {
            u.passwords.clear();
        }
        match &self.revoke_tokens {
            TokenRevocation::Nothing => {}
            TokenRevocation::All => u.tokens.clear(),
            TokenRevocation::Id(id) => {
                let before = u.tokens.len();
                u.tokens.retain(|t| &t.id != id);
                if u.tokens.len() == before {
                    return Err(format!("the user has no token {id:?}"));
                }
            }
        }
        if let Some(r) = self.role {
            u.role = r;
        }
        if let Some(p) = &self.prefix {
            u.prefix = p.clone();
        }
        if let Some(e) = self.enabled {
            u.enabled = e;
        } else if self.enable_if_new && is_new {
            u.enabled = true;
        }
        for h in &self.add_passwords {
            if !u.passwords.contains(h) {
                u.passwords.push(h.clone());
            }
        }
        if let Some(t) = &self.add_token {
            u.tokens.retain(|o| o.id != t.id);
            u.tokens.push(t.clone());
        }
        if u.passwords.len() + u.tokens.len() > MAX_SECRETS {
            return Err(format!(
                "a user may hold at most {MAX_SECRETS} passwords and tokens"
            ));
        }
        Ok(u)
    }
}

/// A hash no secret is known to match, verified against for unknown or disabled users so
/// that a failure takes as long whatever its cause (made once per process).
fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| {
        let mut secret = [0u8; 32];
        rand::Rng::fill(&mut rand::thread_rng(), &mut secret[..]);
        hash_secret(&secret).expect("hashing a random secret works")
    })
}

/// A new token for user `name` (made off the async runtime): the token to show once, and
/// the write that stores its hash with the user.
pub async fn token_write(name: &str) -> Result<(String, crate::command::WriteOp)> {
    let n = name.to_string();
    let (token, record) = tokio::task::spawn_blocking(move || new_token(&n))
        .await
        .map_err(|e| Error::Internal(format!("token task failed: {e}")))??;
    let op = crate::command::WriteOp::SetUser {
        name: name.to_string(),
        change: UserChange {
            add_token: Some(record),
            ..Default::default()
        },
        only_if_no_users: false,
    };
    Ok((token, op))
}

/// The write that revokes user `name`'s token `token`: its id, or the whole token
/// (`<user>.<id>.<secret>`, which must then be `name`'s). Applying it fails (rejected,
/// nothing changes) if the user holds no such token by then.
pub fn revoke_token_write(name: &str, token: &str) -> Result<crate::command::WriteOp> {
    check_name(name)?;
    let id = match split_token(token) {
        Some((user, id, _)) if user == name => id,
        Some((user, _, _)) => {
            return Err(Error::invalid(format!(
                "that token belongs to user {user}, not {name}"
            )))
        }
        None => token,
    };
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(Error::invalid(
            "a token id is the part between the dots of <user>.<id>.<secret> (see `user list`)",
        ));
    }
    Ok(crate::command::WriteOp::SetUser {
        name: name.to_string(),
        change: UserChange {
            revoke_tokens: TokenRevocation::Id(id.to_string()),
            ..Default::default()
        },
        only_if_no_users: false,
    })
}

/// The id of a token made by [`new_token`] (`None`: not of that form).
pub fn token_id(token: &str) -> Option<&str> {
    split_token(token).map(|(_, id, _)| id)
}

/// Hashes a secret with argon2id and a fresh random salt (a PHC string). Slow on purpose:
/// call it off the async runtime ([`hash_secret_async`]).
pub fn hash_secret(secret: &[u8]) -> Result<String> {
    if secret.is_empty() || secret.len() > MAX_SECRET {
        return Err(Error::invalid(format!(
            "a password is 1 to {MAX_SECRET} bytes"
        )));
    }
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(secret, &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Internal(format!("hashing a secret: {e}")))
}

/// [`hash_secret`] on the blocking pool.
pub async fn hash_secret_async(secret: Vec<u8>) -> Result<String> {
    tokio::task::spawn_blocking(move || hash_secret(&secret))
        .await
        .map_err(|e| Error::Internal(format!("hashing task failed: {e}")))?
}

/// A new token for `user`: the token itself (`<user>.<id>.<secret>`, shown once) and its
/// stored form.
pub fn new_token(user: &str) -> Result<(String, TokenRecord)> {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    let id: String = (0..8)
        .map(|_| char::from(b"0123456789abcdef"[rng.gen_range(0..16)]))
        .collect();
    let secret: String = (0..40)
        .map(|_| char::from(rng.sample(rand::distributions::Alphanumeric)))
        .collect();
    let hash = hash_secret(secret.as_bytes())?;
    Ok((format!("{user}.{id}.{secret}"), TokenRecord { id, hash }))
}

/// Splits a token into (user, id, secret).
fn split_token(token: &str) -> Option<(&str, &str, &str)> {
    let mut it = token.rsplitn(3, '.');
    let secret = it.next()?;
    let id = it.next()?;
    let user = it.next()?;
    Some((user, id, secret))
}

/// Who a request runs as, and what it may touch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// `None`: no user exists and authentication is not required (open, local use).
    pub user: Option<String>,
    pub role: Role,
    pub prefix: Vec<u8>,
    /// The stored hash of the password or token this identity was proved with: a
    /// connection stays authenticated only while its user still holds it (see
    /// [`Authenticator::refresh`]).
    proved_by: Option<String>,
}

impl Identity {
    /// The identity of every request while no user exists (and none is required).
    pub fn open() -> Identity {
        Identity {
            user: None,
            role: Role::Admin,
            prefix: vec![],
            proved_by: None,
        }
    }

    fn of(name: &str, u: &UserRecord, proved_by: &str) -> Identity {
        Identity {
            user: Some(name.to_string()),
            role: u.role,
            prefix: u.prefix.clone(),
            proved_by: Some(proved_by.to_string()),
        }
    }

    /// The name to show (`default` for the open identity, as Redis' WHOAMI does).
    pub fn name(&self) -> &str {
        self.user.as_deref().unwrap_or(DEFAULT_USER)
    }

    fn denied(&self, what: &str) -> Error {
        Error::PermissionDenied(format!(
            "user {} (role {}) may not {what}",
            self.name(),
            self.role.as_str()
        ))
    }

    /// May this identity read `key`?
    pub fn check_read(&self, key: &[u8]) -> Result<()> {
        if key.starts_with(&self.prefix) {
            Ok(())
        } else {
            Err(self.denied("access keys outside its prefix"))
        }
    }

    /// May this identity write every one of `keys`?
    pub fn check_write<'a>(&self, keys: impl IntoIterator<Item = &'a [u8]>) -> Result<()> {
        if self.role < Role::ReadWrite {
            return Err(self.denied("write"));
        }
        for k in keys {
            self.check_read(k)?;
        }
        Ok(())
    }

    /// May this identity propose `op` (user management needs the admin role; every
    /// other write, the readwrite role and keys inside the prefix)?
    pub fn check_op(&self, op: &crate::command::WriteOp) -> Result<()> {
        if op.is_user_op() {
            return self.check_admin();
        }
        match op {
            // A transaction that only compares and reads needs only the read role.
            crate::command::WriteOp::Txn(t) if !t.writes() => {
                t.keys().into_iter().try_for_each(|k| self.check_read(k))?
            }
            // Leases name no key: the readwrite role; revoking one deletes the keys
            // attached to it, whoever attached them, so a user held to a key prefix may
            // not (its leases end by expiring).
            crate::command::WriteOp::LeaseRevoke { .. } if !self.prefix.is_empty() => {
                return Err(self.denied("revoke leases (keys outside its prefix may be attached)"));
            }
            op if op.is_lease_op() => self.check_write(std::iter::empty())?,
            _ => self.check_write(op.keys())?,
        }
        if let crate::command::WriteOp::Txn(t) = op {
            // A range must lie wholly inside the prefix: narrowing it must change nothing.
            for range in t.ranges() {
                if self.narrow(range).as_ref() != Some(range) {
                    return Err(self.denied("access keys outside its prefix"));
                }
            }
        }
        Ok(())
    }

    /// May user `name`, as `record` (its entry in the user table where the command is
    /// applied; `None`: deleted) says, apply `op`? The apply-time check of the state
    /// machine: a user demoted, disabled or deleted after the command was proposed (maybe
    /// through a node that had not applied the change yet) is refused there too.
    pub fn permits(
        name: &str,
        record: Option<&UserRecord>,
        op: &crate::command::WriteOp,
    ) -> Result<()> {
        Identity::as_recorded(name, record)?.check_op(op)
    }

    /// The identity of user `name` as `record` says it is at a log position (`None`:
    /// deleted): refused if the user no longer exists or is disabled.
    fn as_recorded(name: &str, record: Option<&UserRecord>) -> Result<Identity> {
        let Some(rec) = record else {
            return Err(Error::PermissionDenied(format!(
                "user {name} no longer exists"
            )));
        };
        if !rec.enabled {
            return Err(Error::PermissionDenied(format!("user {name} is disabled")));
        }
        Ok(Identity {
            user: Some(name.to_string()),
            role: rec.role,
            prefix: rec.prefix.clone(),
            proved_by: None,
        })
    }

    /// May user `name`, as `record` says (its entry in the user table as of the log
    /// position where the write is applied; `None`: deleted), apply a SQL write? The SQL
    /// store's apply-time check, the counterpart of [`Identity::permits`]: the user must
    /// exist, be enabled, have the readwrite role and no key prefix.
    pub fn permits_sql(name: &str, record: Option<&UserRecord>) -> Result<()> {
        Identity::as_recorded(name, record)?.check_sql_write()
    }

    /// May this identity use SQL: query (`write` false, the read role) or execute
    /// (`write` true, the readwrite role)? A user limited to a key prefix may not: a
    /// key prefix says nothing about SQL tables, so its limit could not be kept there.
    pub fn check_sql(&self, write: bool) -> Result<()> {
        if !self.prefix.is_empty() {
            return Err(Error::PermissionDenied(format!(
                "user {} is limited to keys under the prefix {:?} and may not use SQL \
                 (key prefixes do not cover SQL tables; use a user without a prefix)",
                self.name(),
                String::from_utf8_lossy(&self.prefix)
            )));
        }
        if write && self.role < Role::ReadWrite {
            return Err(self.denied("execute SQL (it needs the readwrite role)"));
        }
        Ok(())
    }

    /// May this identity run read-only SQL (any role, no key prefix)?
    pub fn check_sql_read(&self) -> Result<()> {
        self.check_sql(false)
    }

    /// May this identity run SQL that may change the database (the readwrite role, no
    /// key prefix)?
    pub fn check_sql_write(&self) -> Result<()> {
        self.check_sql(true)
    }

    /// May this identity manage users and membership?
    pub fn check_admin(&self) -> Result<()> {
        if self.role < Role::Admin {
            return Err(self.denied("manage users or change the membership"));
        }
        Ok(())
    }

    /// `range` narrowed to this identity's prefix (`None`: nothing of it is visible).
    pub fn narrow(&self, range: &ScanRange) -> Option<ScanRange> {
        let p = &self.prefix;
        if p.is_empty() {
            return Some(range.clone());
        }
        match range {
            ScanRange::Prefix(q) if q.starts_with(p) => Some(range.clone()),
            ScanRange::Prefix(q) if p.starts_with(q) => Some(ScanRange::Prefix(p.clone())),
            ScanRange::Prefix(_) => None,
            ScanRange::Range { from, to } => {
                let end = prefix_end(p);
                let from = from.max(p).clone();
                let to = match (to, end) {
                    (Some(a), Some(b)) => Some(a.clone().min(b)),
                    (a, b) => a.clone().or(b),
                };
                if to.as_ref().is_some_and(|t| *t <= from) {
                    return None;
                }
                Some(ScanRange::Range { from, to })
            }
        }
    }
}

/// A credential as a request presents it.
#[derive(Clone)]
pub enum Credential {
    Password { user: String, secret: Vec<u8> },
    Token(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Password { user, .. } => write!(f, "password of {user}"),
            Credential::Token(_) => write!(f, "token"),
        }
    }
}

/// The phrase of every failed authentication (the same whatever failed, so that a client
/// cannot tell a wrong password from an unknown or disabled user).
pub const BAD_CREDENTIALS: &str = "invalid username-password pair or user is disabled";

/// Authenticates requests against the replicated user table of one node.
pub struct Authenticator {
    kv: KvStore,
    /// Require credentials: from the start (a flag), or since this node first saw a user
    /// (the last user cannot be deleted, so once true it stays true).
    require: std::sync::atomic::AtomicBool,
    mac_key: ring::hmac::Key,
    cache: Mutex<HashSet<[u8; 32]>>,
    verifying: Arc<Semaphore>,
    /// Failure log lines, at most one per [`FAIL_LOG_EVERY`] seconds.
    fail_log: crate::ratelog::RateLimited,
    failures: AtomicU64,
}

impl Authenticator {
    pub fn new(kv: KvStore, require: bool) -> Arc<Authenticator> {
        let rng = ring::rand::SystemRandom::new();
        let mac_key = ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng)
            .expect("the system random source works");
        // Made now, at start, not on the async runtime at the first failure.
        dummy_hash();
        Arc::new(Authenticator {
            kv,
            require: std::sync::atomic::AtomicBool::new(require),
            mac_key,
            cache: Mutex::new(HashSet::new()),
            verifying: Arc::new(Semaphore::new(VERIFY_CONCURRENCY)),
            fail_log: crate::ratelog::RateLimited::new(std::time::Duration::from_secs(
                FAIL_LOG_EVERY,
            )),
            failures: AtomicU64::new(0),
        })
    }

    /// True when requests must carry credentials.
    pub fn required(&self) -> Result<bool> {
        if self.require.load(Ordering::Relaxed) {
            return Ok(true);
        }
        let users = self.kv.has_users()?;
        if users {
            self.require.store(true, Ordering::Relaxed);
        }
        Ok(users)
    }

    /// The identity of a request that carries no credentials: the open identity while
    /// authentication is not required, else an authentication error.
    pub fn anonymous(&self) -> Result<Identity> {
        if self.required()? {
            Err(Error::Unauthenticated("authentication required".into()))
        } else {
            Ok(Identity::open())
        }
    }

    /// The identity for `cred` (None: the request carried none), or an authentication
    /// error; `api` names the protocol for the log line of a failure.
    pub async fn authenticate(&self, cred: Option<Credential>, api: &str) -> Result<Identity> {
        let Some(cred) = cred else {
            return self.anonymous();
        };
        let (user, secret, hashes) = match &cred {
            Credential::Password { user, secret } => {
                let rec = self.kv.user(user)?.filter(|u| u.enabled);
                let hashes = rec
                    .as_ref()
                    .map(|u| u.passwords.clone())
                    .unwrap_or_default();
                (user.clone(), secret.clone(), (rec, hashes))
            }
            Credential::Token(t) => match split_token(t) {
                Some((user, id, secret)) => {
                    let rec = self.kv.user(user)?.filter(|u| u.enabled);
                    let hashes = rec
                        .as_ref()
                        .and_then(|u| u.tokens.iter().find(|t| t.id == id))
                        .map(|t| vec![t.hash.clone()])
                        .unwrap_or_default();
                    (user.to_string(), secret.as_bytes().to_vec(), (rec, hashes))
                }
                None => (String::new(), vec![], (None, vec![])),
            },
        };
        let (rec, hashes) = hashes;
        match rec {
            Some(rec) => {
                if let Some(i) = self.verify(&user, &secret, &hashes).await? {
                    return Ok(Identity::of(&user, &rec, &hashes[i]));
                }
            }
            // An unknown or disabled user costs the same verification as a wrong
            // password, so that the time taken does not tell which it was.
            None => {
                self.verify(&user, &secret, &[dummy_hash().to_string()])
                    .await?;
            }
        }
        self.log_failure(api, &user);
        Err(Error::Unauthenticated(BAD_CREDENTIALS.into()))
    }

    /// Re-reads an authenticated identity (a connection that authenticated once): its
    /// current role and prefix, or an error if the user was deleted or disabled since.
    /// A connection proved by a password or token its user no longer holds (changed,
    /// reset, or the user deleted and made anew) must authenticate again.
    pub fn refresh(&self, id: &Identity) -> Result<Identity> {
        let (Some(name), Some(proof)) = (&id.user, &id.proved_by) else {
            return self.anonymous();
        };
        let holds = |u: &UserRecord| {
            u.passwords.iter().any(|h| h == proof) || u.tokens.iter().any(|t| &t.hash == proof)
        };
        match self.kv.user(name)?.filter(|u| u.enabled && holds(u)) {
            Some(u) => Ok(Identity::of(name, &u, proof)),
            None => Err(Error::Unauthenticated(format!(
                "user {name} was deleted or disabled, or its password changed; authenticate \
                 again"
            ))),
        }
    }

    fn cache_key(&self, user: &str, hash: &str, secret: &[u8]) -> [u8; 32] {
        let mut ctx = ring::hmac::Context::with_key(&self.mac_key);
        for part in [user.as_bytes(), hash.as_bytes(), secret] {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
        let tag = ctx.sign();
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    fn cached(&self, keys: &[[u8; 32]]) -> Option<usize> {
        let cache = self.cache.lock().unwrap();
        keys.iter().position(|k| cache.contains(k))
    }

    /// Which of `hashes` `secret` matches, if any.
    async fn verify(&self, user: &str, secret: &[u8], hashes: &[String]) -> Result<Option<usize>> {
        if secret.is_empty() || secret.len() > MAX_SECRET {
            return Ok(None);
        }
        let keys: Vec<[u8; 32]> = hashes
            .iter()
            .map(|h| self.cache_key(user, h, secret))
            .collect();
        if let Some(i) = self.cached(&keys) {
            return Ok(Some(i));
        }
        // The permit travels into the blocking task: a caller that gives up (a cancelled
        // request) does not free its place while its verification still runs.
        let permit = self
            .verifying
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::Unavailable("the node is shutting down".into()))?;
        // Many connections presenting the same credentials at once (a pool starting up)
        // wait here; the first one's verification serves the rest.
        if let Some(i) = self.cached(&keys) {
            return Ok(Some(i));
        }
        let (hashes, secret) = (hashes.to_vec(), secret.to_vec());
        let found = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            hashes.iter().position(|h| {
                PasswordHash::new(h)
                    .is_ok_and(|p| Argon2::default().verify_password(&secret, &p).is_ok())
            })
        })
        .await
        .map_err(|e| Error::Internal(format!("verification task failed: {e}")))?;
        let Some(i) = found else {
            return Ok(None);
        };
        let mut cache = self.cache.lock().unwrap();
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(keys[i]);
        Ok(Some(i))
    }

    fn log_failure(&self, api: &str, user: &str) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(suppressed) = self.fail_log.admit() {
            let user: String = user.chars().take(MAX_NAME).collect();
            tracing::warn!(
                "authentication failed on {api} for user {user:?}; {suppressed} more \
                 suppressed since the last such line ({n} failures since start; at most one \
                 line per {FAIL_LOG_EVERY}s)"
            );
        }
    }

    /// One user, as this node's applied state has it.
    pub fn user(&self, name: &str) -> Result<Option<UserRecord>> {
        self.kv.user(name)
    }

    /// Every user, by name (admin listing; secrets are not shown, only counted).
    pub fn users(&self) -> Result<Vec<(String, UserRecord)>> {
        self.kv.users()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_needs_the_role_and_no_prefix() {
        let id = |role, prefix: &[u8]| Identity {
            user: Some("u".into()),
            role,
            prefix: prefix.to_vec(),
            proved_by: None,
        };
        assert!(id(Role::Read, b"").check_sql(false).is_ok());
        assert!(matches!(
            id(Role::Read, b"").check_sql(true),
            Err(Error::PermissionDenied(_))
        ));
        assert!(id(Role::ReadWrite, b"").check_sql(true).is_ok());
        assert!(Identity::open().check_sql(true).is_ok());
        match id(Role::Admin, b"app/").check_sql(false) {
            Err(Error::PermissionDenied(m)) => assert!(m.contains("may not use SQL"), "{m}"),
            other => panic!("a prefixed user used SQL: {other:?}"),
        }
    }

    #[test]
    fn a_transaction_stays_inside_the_prefix() {
        use crate::command::{Compare, CompareOp, CompareTarget, Txn, TxnOp, WriteOp};
        let id = |role| Identity {
            user: Some("a".into()),
            role,
            prefix: b"app/".to_vec(),
            proved_by: None,
        };
        let txn = |compare: &[u8], range: ScanRange| {
            WriteOp::Txn(Txn {
                compare: vec![Compare {
                    key: compare.to_vec(),
                    op: CompareOp::Equal,
                    target: CompareTarget::Version(0),
                }],
                success: vec![TxnOp::DeleteRange { range }],
                failure: vec![TxnOp::Get {
                    key: b"app/x".to_vec(),
                }],
            })
        };
        let inside = txn(b"app/k", ScanRange::Prefix(b"app/q".to_vec()));
        assert!(id(Role::ReadWrite).check_op(&inside).is_ok());
        assert!(
            id(Role::Read).check_op(&inside).is_err(),
            "a transaction writes"
        );
        let reads_only = WriteOp::Txn(Txn {
            compare: vec![],
            success: vec![TxnOp::Get {
                key: b"app/x".to_vec(),
            }],
            failure: vec![],
        });
        assert!(id(Role::Read).check_op(&reads_only).is_ok(), "only reads");
        for outside in [
            txn(b"other", ScanRange::Prefix(b"app/q".to_vec())),
            txn(b"app/k", ScanRange::Prefix(b"ap".to_vec())),
            txn(
                b"app/k",
                ScanRange::Range {
                    from: b"app/".to_vec(),
                    to: None,
                },
            ),
        ] {
            assert!(
                matches!(
                    id(Role::ReadWrite).check_op(&outside),
                    Err(Error::PermissionDenied(_))
                ),
                "{outside:?}"
            );
        }
    }

    #[test]
    fn narrowing_keeps_only_the_prefix() {
        let id = Identity {
            user: Some("a".into()),
            role: Role::Read,
            prefix: b"app/".to_vec(),
            proved_by: None,
        };
        assert_eq!(
            id.narrow(&ScanRange::Prefix(vec![])),
            Some(ScanRange::Prefix(b"app/".to_vec()))
        );
        assert_eq!(id.narrow(&ScanRange::Prefix(b"other".to_vec())), None);
        assert_eq!(
            id.narrow(&ScanRange::Range {
                from: vec![],
                to: None
            }),
            Some(ScanRange::Range {
                from: b"app/".to_vec(),
                to: Some(b"app0".to_vec())
            })
        );
        assert_eq!(
            id.narrow(&ScanRange::Range {
                from: b"b".to_vec(),
                to: None
            }),
            None
        );
        assert!(id.check_read(b"app/x").is_ok());
        assert!(matches!(
            id.check_read(b"other"),
            Err(Error::PermissionDenied(_))
        ));
        assert!(matches!(
            id.check_write([b"app/x".as_slice()]),
            Err(Error::PermissionDenied(_))
        ));
    }

    fn set_user(kv: &mut KvStore, seq: u64, name: &str, change: UserChange) {
        use crate::machine::StateMachine;
        let cmd = crate::command::KvCommand {
            client_id: 1,
            seq,
            op: crate::command::WriteOp::SetUser {
                name: name.into(),
                change,
                only_if_no_users: false,
            },
            user: None,
        };
        let index = kv.applied_index();
        kv.apply_kv(index, &[cmd]).unwrap();
    }

    fn password(user: &str, pw: &str) -> Option<Credential> {
        Some(Credential::Password {
            user: user.into(),
            secret: pw.as_bytes().to_vec(),
        })
    }

    /// The verification cache never outlives a change: a new password (new salt, new
    /// stored hash) refuses the old one although it was cached, a disabled user is
    /// refused, and a role change shows on the next request.
    #[tokio::test]
    async fn a_changed_user_is_not_served_from_the_cache() {
        let mut kv = KvStore::open_memory(Default::default()).unwrap();
        let auth = Authenticator::new(kv.clone(), false);
        assert_eq!(
            auth.authenticate(None, "test").await.unwrap(),
            Identity::open()
        );
        let first = UserChange {
            role: Some(Role::ReadWrite),
            enabled: Some(true),
            add_passwords: vec![hash_secret(b"one").unwrap()],
            ..Default::default()
        };
        set_user(&mut kv, 1, "u", first);
        // Users exist: anonymous requests are refused now.
        assert!(matches!(
            auth.authenticate(None, "test").await,
            Err(Error::Unauthenticated(_))
        ));
        let id = auth
            .authenticate(password("u", "one"), "test")
            .await
            .unwrap();
        assert_eq!(id.role, Role::ReadWrite);
        assert!(auth
            .authenticate(password("u", "two"), "test")
            .await
            .is_err());
        assert!(auth
            .authenticate(password("v", "one"), "test")
            .await
            .is_err());
        // Cached now; change the password and the role.
        let old = auth
            .authenticate(password("u", "one"), "test")
            .await
            .unwrap();
        assert!(auth.refresh(&old).is_ok());
        let second = UserChange {
            reset_passwords: true,
            role: Some(Role::Read),
            add_passwords: vec![hash_secret(b"two").unwrap()],
            ..Default::default()
        };
        set_user(&mut kv, 2, "u", second);
        // A connection proved by the old password must authenticate again.
        assert!(matches!(auth.refresh(&old), Err(Error::Unauthenticated(_))));
        assert!(matches!(
            auth.authenticate(password("u", "one"), "test").await,
            Err(Error::Unauthenticated(_))
        ));
        let id = auth
            .authenticate(password("u", "two"), "test")
            .await
            .unwrap();
        assert_eq!(id.role, Role::Read);
        let off = UserChange {
            enabled: Some(false),
            ..Default::default()
        };
        set_user(&mut kv, 3, "u", off);
        assert!(auth
            .authenticate(password("u", "two"), "test")
            .await
            .is_err());
        assert!(auth.refresh(&id).is_err(), "a connection's user is re-read");
    }

    /// `UserChange` as it was before per-token revocation: `reset_tokens` a bool.
    #[derive(Serialize)]
    struct OldUserChange {
        reset_passwords: bool,
        role: Option<Role>,
        prefix: Option<Vec<u8>>,
        enabled: Option<bool>,
        add_passwords: Vec<String>,
        add_token: Option<TokenRecord>,
        enable_if_new: bool,
        reset_tokens: bool,
    }

    /// Entries logged before per-token revocation decode as they were meant, with what
    /// follows them intact, in both encodings in use (the log's fixed-width bincode, the
    /// peer transport's varint bincode); the new form round-trips.
    #[test]
    fn old_user_changes_decode_and_revocations_round_trip() {
        use bincode::Options;
        let old = |reset_tokens| OldUserChange {
            reset_passwords: reset_tokens,
            role: Some(Role::Admin),
            prefix: Some(b"p/".to_vec()),
            enabled: None,
            add_passwords: vec!["h".into()],
            add_token: Some(TokenRecord {
                id: "0123abcd".into(),
                hash: "x".into(),
            }),
            enable_if_new: true,
            reset_tokens,
        };
        let varint = bincode::DefaultOptions::new();
        for reset in [false, true] {
            let want = if reset {
                TokenRevocation::All
            } else {
                TokenRevocation::Nothing
            };
            let fixed = bincode::serialize(&(old(reset), true, 7u64)).unwrap();
            let (c, flag, n): (UserChange, bool, u64) = bincode::deserialize(&fixed).unwrap();
            assert_eq!((c.revoke_tokens, flag, n), (want.clone(), true, 7));
            assert_eq!(c.role, Some(Role::Admin));
            assert_eq!(c.add_token.unwrap().id, "0123abcd");
            let var = varint.serialize(&(old(reset), true, 7u64)).unwrap();
            let (c, flag, n): (UserChange, bool, u64) = varint.deserialize(&var).unwrap();
            assert_eq!((c.revoke_tokens, flag, n), (want, true, 7));
        }
        let new = UserChange {
            revoke_tokens: TokenRevocation::Id("0123abcd".into()),
            ..Default::default()
        };
        let fixed = bincode::serialize(&(new.clone(), true)).unwrap();
        assert_eq!(
            bincode::deserialize::<(UserChange, bool)>(&fixed).unwrap(),
            (new.clone(), true)
        );
        let var = varint.serialize(&(new.clone(), false)).unwrap();
        assert_eq!(
            varint.deserialize::<(UserChange, bool)>(&var).unwrap(),
            (new, false)
        );
    }

    #[test]
    fn one_token_is_revoked_and_the_others_stay() {
        let (t1, r1) = new_token("u").unwrap();
        let (_, r2) = new_token("u").unwrap();
        let mut u = UserRecord {
            role: Role::Read,
            prefix: vec![],
            enabled: true,
            passwords: vec![],
            tokens: vec![r1.clone(), r2.clone()],
        };
        let revoke = |id: &str| UserChange {
            revoke_tokens: TokenRevocation::Id(id.into()),
            ..Default::default()
        };
        u = revoke(&r1.id).apply_to(Some(u)).unwrap();
        assert_eq!(u.tokens, vec![r2.clone()]);
        // Revoking one the user does not hold (again, or never made) rejects the change,
        // and revoking on a user that does not exist creates nothing.
        assert!(revoke(&r1.id).apply_to(Some(u.clone())).is_err());
        assert!(revoke(&r1.id).apply_to(None).is_err());
        // By id or by the whole token; a token of another user is refused.
        let by_token = revoke_token_write("u", &t1).unwrap();
        let by_id = revoke_token_write("u", &r1.id).unwrap();
        assert_eq!(by_token, by_id);
        assert!(revoke_token_write("v", &t1).is_err());
        assert!(revoke_token_write("u", "").is_err());
        assert_eq!(token_id(&t1), Some(r1.id.as_str()));
    }

    #[test]
    fn tokens_split_from_the_right() {
        assert_eq!(
            split_token("a.b.c.0123.secret"),
            Some(("a.b.c", "0123", "secret"))
        );
        assert_eq!(split_token("nodots"), None);
    }

    #[test]
    fn hashing_salts_and_verifies() {
        let a = hash_secret(b"pw").unwrap();
        let b = hash_secret(b"pw").unwrap();
        assert_ne!(a, b, "a fresh salt every time");
        assert!(a.starts_with("$argon2id$"));
        let p = PasswordHash::new(&a).unwrap();
        assert!(Argon2::default().verify_password(b"pw", &p).is_ok());
        assert!(Argon2::default().verify_password(b"px", &p).is_err());
        assert!(hash_secret(b"").is_err());
    }
}
