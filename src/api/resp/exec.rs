//! Running parsed commands against the node, and mapping results and errors to replies.
//!
//! Consistency: every read is linearizable unless the connection sent `READONLY`, after
//! which its reads are served from this node's local copy (`Consistency::Stale`, possibly
//! behind) until `READWRITE`. Multi-key reads (MGET, EXISTS, KEYS, SCAN, DBSIZE) take one
//! read barrier and then read locally, so each reflects every write acknowledged before
//! the command started. They are not snapshots: a concurrent write may or may not show.
//!
//! Bounded work and memory per command (invariants):
//! - a multi-value reply (MGET, KEYS, SCAN, COMMAND INFO) is encoded as it is built, by
//!   [`ArrayEncoder`], and refused with `-ERR reply would exceed max_reply_bytes ...` as
//!   soon as it would pass `max_reply_bytes`; it is never built whole and then encoded;
//! - a glob pattern is compiled once per command and longer than twice the largest key
//!   is refused; a page of keys that needs more than a moment's matching is matched on
//!   the blocking pool, and key walks (KEYS, DBSIZE, INFO) yield between pages, and
//!   MGET / EXISTS every [`YIELD_EVERY`] keys, so no command holds a runtime thread long;
//! - a `MULTI` block holds at most [`crate::command::MAX_TXN_OPS`] commands, as many key
//!   operations plus watched keys, and 4 × the value limit of queued bytes, and a
//!   connection watches at most [`super::txn::MAX_WATCHED_KEYS`] keys: past a bound the
//!   command is refused (the block aborted), never held; `EXEC`'s reply is encoded within
//!   `max_reply_bytes` like MGET's, and its values are bounded before that by the
//!   transaction's own read budget where it is applied.
//!
//! One translation of each data command: [`Plan::of`] says what reads and writes a command
//! makes and how it answers from their results; alone it runs here ([`ConnState`]'s
//! `run_plan`: one read barrier then local reads, or each write proposed in the
//! connection's session), queued after `MULTI` it becomes part of `EXEC`'s one
//! transaction ([`super::txn`]), and either way the same shapes build its reply. The
//! exceptions read a key's deadline, which a transaction's reads do not carry, so they
//! run only alone (refused inside `MULTI`): `TTL`, `PTTL`, `EXPIRETIME`, `PEXPIRETIME`
//! (one [`crate::kv::KvHandle::get_timed`], with the connection's consistency).
//!
//! Transactions (see [`super::txn`]): after `MULTI` each data command is checked as it
//! would be alone and queued (`+QUEUED`); `EXEC` proposes them all as one
//! [`crate::command::Txn`] guarded by a version comparison per `WATCH`ed key, in one
//! write of the session, and answers every command's reply, or a null array if a watched
//! key changed. A command that cannot
//! be queued (unknown, malformed, not permitted, not a key read or write, over a bound)
//! is answered with its error and makes `EXEC` answer `-EXECABORT`, having run nothing.
//! So a block is applied entirely or not at all, never half.
//!
//! Errors, by how a Redis client should react:
//! - invalid input → `-ERR <message>` (nothing changed);
//! - unavailable (no leader, no quorum) → `-TRYAGAIN <message>` (nothing changed; retry);
//! - outcome unknown → `-ERR outcome unknown: ...` (the write may or may not have been
//!   applied; this reply never claims that it failed);
//! - internal or storage → `-ERR internal: ...`;
//! - no credentials where they are required → `-NOAUTH Authentication required.`; wrong
//!   ones (`AUTH`, `HELLO ... AUTH`) → `-WRONGPASS invalid username-password pair or user
//!   is disabled.`; a role or key prefix that forbids the command → `-NOPERM ...`. In all
//!   three nothing ran and nothing changed.

use super::cmd::{self, Acl, RespCommand, ScriptRef, Spec, COMMANDS};
use super::frame::{ArrayEncoder, Frame, OverBudget};
use super::glob::{self, Glob};
use super::plan::{bulk_or_null, Plan, ReadReply};
use super::script;
use super::txn::{Queue, TxnRefusal, Watches};
use super::Shared;
use crate::auth::{Credential, Identity, Role, TokenRevocation, UserChange};
use crate::command::{KeyValue, ScanRange, Versioned};
use crate::error::Error;
use crate::kv::handle::{ScanResult, TxnResult, Writer};
use crate::node::{Consistency, NodeRole, MAX_SCAN_LIMIT};
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub use super::txn::EXEC_ABORT;

/// Matching work (word steps, see [`Glob::work_bound`]) that runs on the async runtime;
/// a page of keys needing more is matched on the blocking pool.
const INLINE_MATCH_WORK: u64 = 64 * 1024;
/// Keys read between two yields to the runtime in multi-key commands.
const YIELD_EVERY: usize = 256;

/// Whether the connection continues after a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum After {
    Continue,
    Close,
}

/// One RESP connection's state: protocol version, name, user, MULTI and WATCH, and the
/// at-most-once write session it writes under (`client_id`, `next_seq`: what
/// [`crate::client::Session`] is for the Rust client), which is why this is not called a
/// session itself.
pub struct ConnState {
    /// The connection id (`CLIENT ID`, `HELLO`).
    pub id: u64,
    /// Replies in RESP3 (after `HELLO 3`).
    pub resp3: bool,
    client_id: u64,
    next_seq: u64,
    consistency: Consistency,
    name: Option<Vec<u8>>,
    /// After `MULTI`, until `EXEC` or `DISCARD`: the queued commands.
    multi: Option<Queue>,
    /// The keys `WATCH`ed since the last `EXEC`, `DISCARD` or `UNWATCH`.
    watches: Watches,
    /// The user this connection authenticated as (`AUTH`, `HELLO ... AUTH`).
    user: Option<Identity>,
    /// Who the running command runs as: the user, re-read before every command so that a
    /// changed role or a deleted user takes effect at once.
    current: Identity,
}

type Reply = Result<Frame, Frame>;

/// The refusal of a reply larger than `max_reply_bytes`.
pub fn too_big(e: OverBudget) -> Frame {
    Frame::error(format!(
        "ERR reply would exceed max_reply_bytes ({} bytes); ask for fewer keys",
        e.budget
    ))
}

/// Encodes the keys of `rows` that match `glob` (all of them if None) into `out`. When
/// that is more than a moment's work (long patterns over long keys), it runs on the
/// blocking pool so the runtime's threads keep serving other connections.
async fn encode_matching(
    glob: Option<&Arc<Glob>>,
    rows: Vec<KeyValue>,
    mut out: ArrayEncoder,
) -> Result<ArrayEncoder, Frame> {
    let work: u64 = match glob {
        Some(g) => rows.iter().map(|r| g.work_bound(r.key.len())).sum(),
        None => 0,
    };
    let run = move |glob: Option<Arc<Glob>>, mut out: ArrayEncoder| {
        for r in rows {
            if glob.as_ref().is_none_or(|g| g.matches(&r.key)) {
                out.bulk(&r.key)?;
            }
        }
        Ok::<_, OverBudget>(out)
    };
    let glob = glob.cloned();
    if work <= INLINE_MATCH_WORK {
        out = run(glob, out).map_err(too_big)?;
    } else {
        out = tokio::task::spawn_blocking(move || run(glob, out))
            .await
            .map_err(|e| Frame::error(format!("ERR internal: key matching failed: {e}")))?
            .map_err(too_big)?;
    }
    Ok(out)
}

/// A walk over every key that starts with a prefix, one scan page at a time.
struct KeyWalk {
    from: Vec<u8>,
    to: Option<Vec<u8>>,
    done: bool,
}

impl KeyWalk {
    /// A walk over the keys starting with `prefix` that `id` may see.
    fn new(prefix: &[u8], id: &Identity) -> KeyWalk {
        match id.narrow(&ScanRange::Prefix(prefix.to_vec())) {
            Some(ScanRange::Prefix(p)) => KeyWalk {
                to: prefix_end(&p),
                from: p,
                done: false,
            },
            Some(ScanRange::Range { from, to }) => KeyWalk {
                from,
                to,
                done: false,
            },
            None => KeyWalk {
                from: vec![],
                to: None,
                done: true,
            },
        }
    }

    /// The next page of rows (read locally: the caller takes the read barrier), or None
    /// at the end. Yields to the runtime after each page, so a whole-keyspace walk never
    /// holds a runtime thread for its full length.
    async fn next_page(&mut self, shared: &Shared) -> Result<Option<Vec<KeyValue>>, Frame> {
        if self.done {
            return Ok(None);
        }
        let range = ScanRange::Range {
            from: std::mem::take(&mut self.from),
            to: self.to.clone(),
        };
        let page = shared.kv.scan(&range, MAX_SCAN_LIMIT, Consistency::Stale);
        let ScanResult {
            items: rows, more, ..
        } = page.await.map_err(error_reply)?;
        match rows.last() {
            Some(last) if more => self.from = successor(&last.key),
            _ => self.done = true,
        }
        tokio::task::yield_now().await;
        Ok(Some(rows))
    }
}

/// Maps a node error to the Redis error reply a client should see.
pub fn error_reply(e: Error) -> Frame {
    match e {
        Error::InvalidInput(m) | Error::TooLarge(m) | Error::SessionReused(m) => {
            Frame::error(format!("ERR {m}"))
        }
        Error::Unavailable(m) => Frame::error(format!("TRYAGAIN {m}")),
        Error::Overloaded(m) => Frame::error(format!("BUSY {m}")),
        Error::Unauthenticated(_) => Frame::error("NOAUTH Authentication required."),
        Error::PermissionDenied(m) => Frame::error(format!("NOPERM {m}")),
        Error::OutcomeUnknown(m) => Frame::error(format!(
            "ERR outcome unknown: {m}; the command may or may not have been applied"
        )),
        e @ Error::Compacted { .. } => Frame::error(format!("ERR {e}")),
        e @ (Error::Config(_) | Error::Storage(_) | Error::Internal(_)) => {
            Frame::error(format!("ERR internal: {e}"))
        }
    }
}

/// The reply of `TTL` (`ms` false), `PTTL` (`ms`), `EXPIRETIME` and `PEXPIRETIME`
/// (`absolute`) for a key whose deadline is `deadline` (`None`: absent, `Some(None)`:
/// never expires) read at log time `now`: -2, -1, or the remaining time or the deadline,
/// in ms or in seconds rounded as Redis does.
pub fn ttl_reply(deadline: Option<Option<u64>>, now: u64, ms: bool, absolute: bool) -> Frame {
    let deadline = match deadline {
        None => return Frame::Integer(-2),
        Some(None) => return Frame::Integer(-1),
        Some(Some(d)) => d,
    };
    let t = if absolute {
        deadline
    } else {
        deadline.saturating_sub(now)
    };
    let t = i64::try_from(t).unwrap_or(i64::MAX);
    Frame::Integer(if ms { t } else { t.saturating_add(500) / 1000 })
}

/// The script cache, even if a thread panicked holding it.
fn lock(scripts: &std::sync::Mutex<script::Scripts>) -> std::sync::MutexGuard<'_, script::Scripts> {
    scripts.lock().unwrap_or_else(|e| e.into_inner())
}

/// The name of the command `words` asks for, as the command table spells it.
fn command_name(words: &[Vec<u8>]) -> &'static str {
    (words.first())
        .and_then(|w| cmd::lookup(&String::from_utf8_lossy(w)))
        .map_or("unknown", |spec| spec.name)
}

use crate::command::prefix_end;

/// Compiles a `KEYS` / `SCAN MATCH` / `CONFIG GET` pattern, once per command; refuses one
/// longer than twice the largest key (compiling costs memory in its length).
fn compile(shared: &Shared, pattern: &[u8]) -> Result<glob::Glob, Frame> {
    let max = glob::max_pattern_len(shared.node.limits().max_key);
    if pattern.len() > max {
        return Err(Frame::error(format!(
            "ERR pattern is {} bytes; the limit is {max} bytes (twice the largest key)",
            pattern.len()
        )));
    }
    Ok(glob::Glob::new(pattern))
}

/// The smallest key after `key`.
fn successor(key: &[u8]) -> Vec<u8> {
    let mut k = key.to_vec();
    k.push(0);
    k
}

fn command_entry(s: &Spec) -> Frame {
    Frame::Array(vec![
        Frame::bulk(s.name),
        Frame::Integer(s.arity),
        Frame::Array(
            s.flags
                .iter()
                .map(|f| Frame::Simple(f.to_string()))
                .collect(),
        ),
        Frame::Integer(s.keys.0),
        Frame::Integer(s.keys.1),
        Frame::Integer(s.keys.2),
        Frame::Array(vec![]),
        Frame::Array(vec![]),
        Frame::Array(vec![]),
        Frame::Array(vec![]),
    ])
}

/// A user as `ACL LIST` shows it, in Redis' rule syntax (secrets are never shown).
fn acl_line(name: &str, u: &crate::auth::UserRecord) -> String {
    let keys = if u.prefix.is_empty() {
        "~*".to_string()
    } else {
        format!("~{}*", String::from_utf8_lossy(&u.prefix))
    };
    let role = match u.role {
        Role::Read => "+@read",
        Role::ReadWrite => "+@readwrite",
        Role::Admin => "+@all",
    };
    format!(
        "user {name} {} {keys} {role}",
        if u.enabled { "on" } else { "off" }
    )
}

/// Translates `ACL SETUSER` rules into a user change; passwords are hashed here, before
/// anything is proposed. Supported: `on`, `off`, `>password`, `resetpass`, `~prefix*`,
/// `~*` / `allkeys`, `+@read` (role read), `+@write` / `+@readwrite` (role readwrite),
/// `+@all` / `allcommands` / `+@admin` (role admin), `reset`.
async fn acl_rules(rules: Vec<Vec<u8>>) -> Result<UserChange, Frame> {
    let mut change = UserChange::default();
    let bad = |r: &[u8], why: &str| {
        Frame::error(format!(
            "ERR Error in ACL SETUSER modifier '{}': {why}",
            String::from_utf8_lossy(&r[..r.len().min(64)])
        ))
    };
    for r in rules {
        let lower = String::from_utf8_lossy(&r).to_ascii_lowercase();
        match lower.as_str() {
            "on" => change.enabled = Some(true),
            "off" => change.enabled = Some(false),
            "resetpass" => {
                change.reset_passwords = true;
                change.revoke_tokens = TokenRevocation::All;
            }
            "allkeys" | "~*" => change.prefix = Some(vec![]),
            "+@read" => change.role = Some(Role::Read),
            "+@write" | "+@readwrite" => change.role = Some(Role::ReadWrite),
            "+@all" | "allcommands" | "+@admin" => change.role = Some(Role::Admin),
            "reset" => {
                change = UserChange {
                    reset_passwords: true,
                    revoke_tokens: TokenRevocation::All,
                    role: Some(Role::Read),
                    prefix: Some(vec![]),
                    enabled: Some(false),
                    ..Default::default()
                }
            }
            _ if r.first() == Some(&b'>') => {
                let hash = crate::auth::hash_secret_async(r[1..].to_vec())
                    .await
                    .map_err(error_reply)?;
                change.add_passwords.push(hash);
            }
            _ if r.first() == Some(&b'~') => {
                let p = &r[1..];
                match p.split_last() {
                    Some((b'*', prefix)) if !prefix.iter().any(|c| b"*?[]\\".contains(c)) => {
                        change.prefix = Some(prefix.to_vec())
                    }
                    _ => {
                        return Err(bad(
                            &r,
                            "paxosdb supports only key patterns of the form ~prefix*",
                        ))
                    }
                }
            }
            _ => return Err(bad(&r, "Syntax error (paxosdb supports on, off, >password, resetpass, ~prefix*, allkeys, +@read, +@readwrite, +@all, reset)")),
        }
    }
    Ok(change)
}

/// What `CONFIG GET` reports (redis-benchmark asks for `save` and `appendonly`).
const CONFIG: &[(&str, &str)] = &[
    ("appendonly", "yes"),
    ("appendfsync", "always"),
    ("save", ""),
    ("databases", "1"),
];

impl ConnState {
    pub fn new(id: u64) -> ConnState {
        ConnState {
            id,
            resp3: false,
            client_id: rand::random::<u64>().max(1),
            next_seq: 1,
            consistency: Consistency::Linearizable,
            name: None,
            multi: None,
            watches: Watches::default(),
            user: None,
            current: Identity::open(),
        }
    }

    /// Who the next command runs as, or why it may not run (`-NOAUTH`).
    fn resolve(&self, shared: &Shared) -> Result<Identity, Frame> {
        let auth = &shared.info.auth;
        match &self.user {
            Some(id) => auth.refresh(id),
            None => auth.anonymous(),
        }
        .map_err(error_reply)
    }

    /// `AUTH` / `HELLO ... AUTH`: on success the connection runs as the user; on failure
    /// nothing changes and the reply is Redis' `-WRONGPASS`.
    async fn authenticate(
        &mut self,
        shared: &Shared,
        user: Vec<u8>,
        password: Vec<u8>,
    ) -> Result<(), Frame> {
        let cred = Credential::Password {
            user: String::from_utf8_lossy(&user).into_owned(),
            secret: password,
        };
        match shared.info.auth.authenticate(Some(cred), "resp").await {
            Ok(id) => {
                self.current = id.clone();
                self.user = Some(id);
                Ok(())
            }
            Err(Error::Unauthenticated(m)) => Err(Frame::error(format!("WRONGPASS {m}."))),
            Err(e) => Err(error_reply(e)),
        }
    }

    /// Parses and runs one request.
    pub async fn run(&mut self, shared: &Shared, words: Vec<Vec<u8>>) -> (Frame, After) {
        let name = command_name(&words);
        let parsed = cmd::parse(words);
        if self.multi.is_some() {
            return self.in_multi(shared, name, parsed).await;
        }
        match parsed {
            Ok(RespCommand::Quit) => (Frame::ok(), After::Close),
            Ok(c) => match self.admitted(shared, c).await {
                Ok(f) | Err(f) => (f, After::Continue),
            },
            Err(e) => (e, After::Continue),
        }
    }

    /// Runs `c` if the connection may: `AUTH` and `HELLO ... AUTH` always run; any other
    /// command needs an authenticated user once authentication is required.
    async fn admitted(&mut self, shared: &Shared, c: RespCommand) -> Reply {
        match c {
            RespCommand::Auth { user, password } => {
                let user = user.unwrap_or_else(|| crate::auth::DEFAULT_USER.into());
                self.authenticate(shared, user, password).await?;
                Ok(Frame::ok())
            }
            RespCommand::Hello {
                proto,
                name,
                auth: Some((user, password)),
            } => {
                if proto.is_some_and(|p| !(2..=3).contains(&p)) {
                    return Err(Frame::error("NOPROTO unsupported protocol version"));
                }
                self.authenticate(shared, user, password).await?;
                self.execute(
                    shared,
                    RespCommand::Hello {
                        proto,
                        name,
                        auth: None,
                    },
                )
                .await
            }
            c => {
                self.current = self.resolve(shared)?;
                self.execute(shared, c).await
            }
        }
    }

    /// A request inside a `MULTI` block: queued, or one of the commands Redis runs at
    /// once there (`EXEC`, `DISCARD`, `QUIT`, and the errors of `MULTI` and `WATCH`).
    /// Anything refused while queueing aborts the block (`EXEC` answers `-EXECABORT`).
    async fn in_multi(
        &mut self,
        shared: &Shared,
        name: &'static str,
        parsed: Result<RespCommand, Frame>,
    ) -> (Frame, After) {
        let reply = match parsed {
            Ok(RespCommand::Quit) => return (Frame::ok(), After::Close),
            Ok(RespCommand::Exec) => self.exec(shared).await,
            Ok(RespCommand::Discard) => {
                self.multi = None;
                self.watches = Watches::default();
                Frame::ok()
            }
            // Neither aborts the block, as in Redis.
            Ok(RespCommand::Multi) => Frame::error("ERR MULTI calls can not be nested"),
            Ok(RespCommand::Watch(_)) => Frame::error("ERR WATCH inside MULTI is not allowed"),
            Ok(c) => match self.queue(shared, name, c) {
                Ok(()) => Frame::Simple("QUEUED".into()),
                Err(e) => self.abort(e),
            },
            Err(e) => self.abort(e),
        };
        (reply, After::Continue)
    }

    /// Aborts the open `MULTI` block because of `e` (a refused command), and answers `e`.
    fn abort(&mut self, e: Frame) -> Frame {
        if let Some(q) = self.multi.as_mut() {
            q.abort();
        }
        e
    }

    /// Checks `c` as it would be checked alone (the user, its rights, that it is a key
    /// read or write) and queues it within the queue's bounds.
    fn queue(&mut self, shared: &Shared, name: &'static str, c: RespCommand) -> Result<(), Frame> {
        self.current = self.resolve(shared)?;
        let limits = shared.node.limits();
        let plan = match c {
            // EXEC forgets the watches anyway: UNWATCH inside the block answers OK.
            RespCommand::Unwatch => Plan::Known(Frame::ok()),
            RespCommand::Ttl { .. } => {
                return Err(TxnRefusal::ReadsDeadline { command: name }.reply())
            }
            c => Plan::of(c, &limits)
                .map_err(|_| TxnRefusal::NotTransactional { command: name }.reply())?,
        };
        plan.check(&self.current).map_err(error_reply)?;
        let watched = self.watches.len();
        let Some(q) = self.multi.as_mut() else {
            return Err(Frame::error("ERR internal: no MULTI block to queue in"));
        };
        q.push(plan, watched, &limits).map_err(|r| r.reply())
    }

    /// `EXEC`: ends the block and forgets the watches, and runs the queued commands as
    /// one transaction unless the block was aborted.
    async fn exec(&mut self, shared: &Shared) -> Frame {
        let watches = std::mem::take(&mut self.watches);
        let Some(queue) = self.multi.take() else {
            return Frame::error("ERR EXEC without MULTI");
        };
        if queue.aborted() {
            return Frame::error(EXEC_ABORT);
        }
        match self.run_txn(shared, queue, watches).await {
            Ok(f) | Err(f) => f,
        }
    }

    /// Proposes the queued commands, guarded by the watched keys' versions, as one
    /// transaction in one write of this connection's session, and answers each.
    async fn run_txn(&mut self, shared: &Shared, queue: Queue, watches: Watches) -> Reply {
        self.current = self.resolve(shared)?;
        let limits = shared.node.limits();
        let (txn, answer) = queue.prepare(watches, &limits);
        let result = if super::txn::is_empty(&txn) {
            TxnResult {
                succeeded: true,
                results: vec![],
            }
        } else {
            // The state machine checks a transaction's rights at apply (write rights
            // over every key it names, or read rights for one that only reads):
            // checked here first, so that a refusal proposes nothing.
            let op = crate::command::WriteOp::Txn(txn);
            (self.current).check_op(&op).map_err(error_reply)?;
            let crate::command::WriteOp::Txn(txn) = op else {
                unreachable!("built just above")
            };
            let by = self.next_writer();
            shared.kv.txn(&by, txn).await.map_err(error_reply)?
        };
        Ok(answer.reply(result, &limits, shared.max_reply_bytes, self.resp3))
    }

    /// `WATCH keys...`: remembers each key's version as of now (0: absent), read after
    /// one read barrier, so that `EXEC` applies only if none of them changed since.
    async fn watch(&mut self, shared: &Shared, keys: Vec<Vec<u8>>) -> Reply {
        for k in &keys {
            self.current.check_read(k).map_err(error_reply)?;
        }
        let fresh = self.watches.new_keys(keys).map_err(|r| r.reply())?;
        // Every version read below is at least as recent as a linearizable read started
        // now: a linearizable get is this same barrier followed by a local read.
        shared.node.read_barrier().await.map_err(error_reply)?;
        let mut read = Vec::with_capacity(fresh.len());
        for (i, k) in fresh.into_iter().enumerate() {
            // A key that could never be stored never changes: nothing to compare.
            if let Some(v) = self.read_local(shared, &k).await? {
                read.push((k, v.version));
            } else if shared.node.limits().check_key(&k).is_ok() {
                read.push((k, 0));
            }
            if i % YIELD_EVERY == YIELD_EVERY - 1 {
                tokio::task::yield_now().await;
            }
        }
        // All or none: an error above watched nothing new.
        for (k, version) in read {
            self.watches.insert(k, version);
        }
        Ok(Frame::ok())
    }

    /// Runs a data command alone: after the permission check, its reads after one read
    /// barrier (none with `READONLY`) as local reads, or each of its writes proposed in
    /// this session; then its reply from their results.
    async fn run_plan(&mut self, shared: &Shared, plan: Plan) -> Reply {
        plan.check(&self.current).map_err(error_reply)?;
        match plan {
            Plan::Known(f) => Ok(f),
            Plan::Read { keys, shape } => {
                self.barrier(shared).await?;
                // MGET's values are encoded as they are read and then dropped; its reply
                // is refused as soon as it would pass the budget.
                let mut reply = ReadReply::new(shape, shared.max_reply_bytes, self.resp3);
                for (i, k) in keys.iter().enumerate() {
                    reply.push(self.read_local(shared, k).await?)?;
                    if i % YIELD_EVERY == YIELD_EVERY - 1 {
                        tokio::task::yield_now().await;
                    }
                }
                Ok(reply.finish())
            }
            Plan::Write { ops, shape } => {
                // Each write on its own (`DEL k1 k2` deletes each key atomically, one
                // write per key); every key was checked above, before any write.
                let mut results = Vec::with_capacity(ops.len());
                for op in ops {
                    let by = self.next_writer();
                    results.push(shared.kv.write(&by, op).await.map_err(error_reply)?);
                }
                Ok(shape.reply(results))
            }
            plan @ Plan::GetAndWrite { .. } => {
                // The read and the write in one transaction: nothing comes between them.
                let limits = shared.node.limits();
                let by = self.next_writer();
                let txn = shared.kv.txn(&by, plan.own_txn(&limits));
                let result = txn.await.map_err(error_reply)?;
                let mut results = result.results.into_iter();
                Ok(plan.reply_in_txn(&limits, &mut results, shared.max_reply_bytes, self.resp3))
            }
        }
    }

    /// `TTL`, `PTTL`, `EXPIRETIME`, `PEXPIRETIME`: -2 if the key is absent, -1 if it
    /// never expires, else its remaining time (the deadline minus the log's time the read
    /// reflects) or its deadline, in ms or in seconds rounded as Redis does.
    async fn ttl(&self, shared: &Shared, key: Vec<u8>, ms: bool, absolute: bool) -> Reply {
        self.current.check_read(&key).map_err(error_reply)?;
        if shared.node.limits().check_key(&key).is_err() {
            return Ok(Frame::Integer(-2));
        }
        let read = shared.kv.get_timed(&key, self.consistency);
        let (timed, _, log_time) = read.await.map_err(error_reply)?;
        let deadline = timed.map(|t| t.deadline);
        Ok(ttl_reply(deadline, log_time, ms, absolute))
    }

    /// `EVAL`, `EVALSHA` and their `_RO` forms (see [`super::script`]): the script runs
    /// against a rehearsal of this node's copy (after one read barrier, unless
    /// `READONLY`), and what it read and wrote is proposed as one transaction in this
    /// session, guarded by the versions it read; if one changed, it runs again.
    async fn eval(
        &mut self,
        shared: &Shared,
        script: ScriptRef,
        keys: Vec<Vec<u8>>,
        args: Vec<Vec<u8>>,
        read_only: bool,
    ) -> Reply {
        let body = match script {
            ScriptRef::Body(b) => lock(&shared.scripts).insert(b).1,
            ScriptRef::Sha(sha) => lock(&shared.scripts)
                .get(&sha)
                .ok_or_else(|| Frame::error("NOSCRIPT No matching script. Please use EVAL."))?,
        };
        let linearizable = self.consistency == Consistency::Linearizable;
        if linearizable {
            shared.node.read_barrier().await.map_err(error_reply)?;
        }
        let ctx = Arc::new(script::Context {
            identity: self.current.clone(),
            limits: shared.node.limits(),
            read_only,
            max_reply_bytes: shared.max_reply_bytes,
            time_limit: script::TIME_LIMIT,
        });
        let (keys, args) = (Arc::new(keys), Arc::new(args));
        for attempt in 0..script::MAX_ATTEMPTS {
            if attempt > 1 {
                // Contention (or a key expiring by this node's clock before the leader's):
                // back off a little, more each time, at most 100 ms.
                let ms = (1u64 << attempt.min(7)).min(100);
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            }
            let slot = (shared.script_slots.acquire().await)
                .map_err(|_| Frame::error("ERR internal: the script slots are closed"))?;
            let (store, body, keys, args, ctx) = (
                shared.kv.store().clone(),
                body.clone(),
                keys.clone(),
                args.clone(),
                ctx.clone(),
            );
            let run =
                tokio::task::spawn_blocking(move || script::run(&store, &body, &keys, &args, &ctx));
            let run = (run.await)
                .map_err(|e| Frame::error(format!("ERR internal: the script's thread: {e}")))?;
            drop(slot);
            // A script that wrote nothing needs no transaction when its reads were one
            // key's (a linearizable read) or allowed to be stale.
            let Some(txn) = run
                .txn
                .filter(|t| !t.success.is_empty() || (linearizable && t.compare.len() > 1))
            else {
                return Ok(run.reply);
            };
            let op = crate::command::WriteOp::Txn(txn);
            self.current.check_op(&op).map_err(error_reply)?;
            let crate::command::WriteOp::Txn(txn) = op else {
                unreachable!("built just above")
            };
            let by = self.next_writer();
            let done = shared.kv.txn(&by, txn).await.map_err(error_reply)?;
            if done.succeeded {
                return Ok(run.reply);
            }
        }
        Err(Frame::error(format!(
            "TRYAGAIN the script's keys kept changing while it ran ({} runs); nothing was \
             applied",
            script::MAX_ATTEMPTS
        )))
    }

    /// Checks that the current user is an administrator and names the write.
    fn admin_writer(&mut self) -> Result<Writer, Frame> {
        self.current.check_admin().map_err(error_reply)?;
        Ok(self.next_writer())
    }

    /// Names the next write: the current user, in this connection's session at its next
    /// seq.
    fn next_writer(&mut self) -> Writer {
        let seq = self.next_seq;
        self.next_seq += 1;
        Writer::new(self.current.user.clone(), self.client_id, seq)
    }

    /// Reads one key from this node's copy (the caller takes the read barrier it needs).
    /// A key that could never be stored (empty, too long) is absent.
    async fn read_local(&self, shared: &Shared, key: &[u8]) -> Result<Option<Versioned>, Frame> {
        if shared.node.limits().check_key(key).is_err() {
            return Ok(None);
        }
        let read = shared.kv.get_value(key, Consistency::Stale);
        read.await.map_err(error_reply)
    }

    /// Prepares a multi-read: one barrier if linearizable; the reads that follow are local.
    async fn barrier(&self, shared: &Shared) -> Result<(), Frame> {
        if self.consistency == Consistency::Linearizable {
            shared.node.read_barrier().await.map_err(error_reply)?;
        }
        Ok(())
    }

    /// Counts the keys that start with `prefix`.
    async fn count_keys(&self, shared: &Shared, prefix: &[u8]) -> Result<u64, Frame> {
        self.barrier(shared).await?;
        let mut walk = KeyWalk::new(prefix, &self.current);
        let mut n = 0;
        while let Some(rows) = walk.next_page(shared).await? {
            n += rows.len() as u64;
        }
        Ok(n)
    }

    async fn execute(&mut self, shared: &Shared, c: RespCommand) -> Reply {
        let c = match Plan::of(c, &shared.node.limits()) {
            Ok(plan) => return self.run_plan(shared, plan).await,
            Err(c) => c,
        };
        Ok(match c {
            RespCommand::Quit => Frame::ok(),
            RespCommand::Auth { .. } => Frame::ok(),
            RespCommand::Acl(acl) => self.acl(shared, acl).await?,
            RespCommand::Hello { proto, name, .. } => {
                match proto {
                    None => {}
                    Some(2) => self.resp3 = false,
                    Some(3) => self.resp3 = true,
                    Some(_) => {
                        return Err(Frame::error("NOPROTO unsupported protocol version"));
                    }
                }
                if name.is_some() {
                    self.name = name;
                }
                self.hello(shared).await
            }
            RespCommand::CommandList => Frame::Array(COMMANDS.iter().map(command_entry).collect()),
            RespCommand::CommandCount => Frame::Integer(COMMANDS.len() as i64),
            RespCommand::CommandDocs => Frame::Map(vec![]),
            RespCommand::CommandInfo(names) => {
                // Up to a million names: encoded as they come, within the reply budget.
                let mut out = ArrayEncoder::new(shared.max_reply_bytes, self.resp3);
                for n in &names {
                    let entry = cmd::lookup(&String::from_utf8_lossy(n))
                        .map(command_entry)
                        .unwrap_or(Frame::Null);
                    out.push(&entry).map_err(too_big)?;
                }
                out.finish()
            }
            RespCommand::ClientSetName(n) => {
                self.name = (!n.is_empty()).then_some(n);
                Frame::ok()
            }
            RespCommand::ClientGetName => bulk_or_null(self.name.clone()),
            RespCommand::ClientSetInfo => Frame::ok(),
            RespCommand::ClientId => Frame::Integer(self.id as i64),
            RespCommand::ConfigGet(patterns) => {
                // Each pattern compiled once; a request may carry a million of them.
                let mut found = [false; CONFIG.len()];
                for (n, p) in patterns.iter().enumerate() {
                    if found.iter().all(|&f| f) {
                        break;
                    }
                    let g = compile(shared, &p.to_ascii_lowercase())?;
                    for (f, (k, _)) in found.iter_mut().zip(CONFIG) {
                        *f |= g.matches(k.as_bytes());
                    }
                    if n % 256 == 255 {
                        tokio::task::yield_now().await;
                    }
                }
                Frame::Map(
                    CONFIG
                        .iter()
                        .zip(found)
                        .filter(|(_, f)| *f)
                        .map(|((k, v), _)| (Frame::bulk(*k), Frame::bulk(*v)))
                        .collect(),
                )
            }
            RespCommand::Info(sections) => Frame::Bulk(self.info(shared, &sections).await?.into()),
            RespCommand::ReadOnly => {
                self.consistency = Consistency::Stale;
                Frame::ok()
            }
            RespCommand::ReadWrite => {
                self.consistency = Consistency::Linearizable;
                Frame::ok()
            }
            RespCommand::Keys(pattern) => {
                let glob = Arc::new(compile(shared, &pattern)?);
                let glob = (!glob.matches_all()).then_some(glob);
                self.barrier(shared).await?;
                let mut walk = KeyWalk::new(&glob::literal_prefix(&pattern), &self.current);
                let mut out = ArrayEncoder::new(shared.max_reply_bytes, self.resp3);
                while let Some(rows) = walk.next_page(shared).await? {
                    out = encode_matching(glob.as_ref(), rows, out).await?;
                }
                out.finish()
            }
            RespCommand::DbSize => Frame::Integer(self.count_keys(shared, b"").await? as i64),
            RespCommand::Ttl { key, ms, absolute } => self.ttl(shared, key, ms, absolute).await?,
            RespCommand::Multi => {
                self.multi = Some(Queue::default());
                Frame::ok()
            }
            RespCommand::Exec => return Err(Frame::error("ERR EXEC without MULTI")),
            RespCommand::Discard => return Err(Frame::error("ERR DISCARD without MULTI")),
            RespCommand::Watch(keys) => self.watch(shared, keys).await?,
            RespCommand::Unwatch => {
                self.watches = Watches::default();
                Frame::ok()
            }
            RespCommand::Eval {
                script,
                keys,
                args,
                read_only,
            } => self.eval(shared, script, keys, args, read_only).await?,
            RespCommand::ScriptLoad(body) => {
                Frame::Bulk(lock(&shared.scripts).insert(body).0.into_bytes())
            }
            RespCommand::ScriptExists(shas) => {
                let scripts = lock(&shared.scripts);
                let known = |sha: &Vec<u8>| Frame::Integer(i64::from(scripts.get(sha).is_some()));
                Frame::Array(shas.iter().map(known).collect())
            }
            RespCommand::ScriptFlush => {
                lock(&shared.scripts).flush();
                Frame::ok()
            }
            RespCommand::ScriptKill => {
                return Err(Frame::error("NOTBUSY No scripts in execution right now."))
            }
            RespCommand::Scan {
                cursor,
                pattern,
                count,
                only_strings,
            } => {
                self.scan(shared, cursor, pattern, count, only_strings)
                    .await?
            }
            // Data commands have a plan and ran above.
            RespCommand::Ping(_)
            | RespCommand::Echo(_)
            | RespCommand::Select(_)
            | RespCommand::Get(_)
            | RespCommand::GetVer(_)
            | RespCommand::Type(_)
            | RespCommand::Strlen(_)
            | RespCommand::Exists(_)
            | RespCommand::MGet(_)
            | RespCommand::Set { .. }
            | RespCommand::GetEx { .. }
            | RespCommand::Expire { .. }
            | RespCommand::Persist(_)
            | RespCommand::SetNx(..)
            | RespCommand::GetDel(_)
            | RespCommand::Del(_)
            | RespCommand::MSet(_)
            | RespCommand::IncrBy(..)
            | RespCommand::Append(..)
            | RespCommand::Cas(..)
            | RespCommand::CasVer(..) => {
                return Err(Frame::error("ERR internal: a data command was not planned"))
            }
        })
    }

    async fn scan(
        &self,
        shared: &Shared,
        cursor: u64,
        pattern: Option<Vec<u8>>,
        count: usize,
        only_strings: bool,
    ) -> Reply {
        let glob = pattern.as_deref().map(|p| compile(shared, p)).transpose()?;
        let prefix = pattern
            .as_deref()
            .map(glob::literal_prefix)
            .unwrap_or_default();
        let mut from = prefix.clone();
        if cursor != 0 {
            let last = shared.cursors.lock().unwrap().get(cursor).ok_or_else(|| {
                Frame::error("ERR invalid cursor (unknown or expired on this node)")
            })?;
            from = from.max(successor(&last));
        }
        let range = ScanRange::Range {
            from,
            to: prefix_end(&prefix),
        };
        // A user with a key prefix sees only its keys: the range is narrowed to them.
        let (rows, more) = match self.current.narrow(&range) {
            Some(range) => {
                let page = shared.kv.scan(&range, count, self.consistency);
                let page = page.await.map_err(error_reply)?;
                (page.items, page.more)
            }
            None => (vec![], false),
        };
        let next = match rows.last() {
            Some(last) if more => shared.cursors.lock().unwrap().insert(last.key.clone()),
            _ => 0,
        };
        let mut out = ArrayEncoder::new(shared.max_reply_bytes, self.resp3);
        if only_strings {
            let glob = glob.map(Arc::new).filter(|g| !g.matches_all());
            out = encode_matching(glob.as_ref(), rows, out).await?;
        }
        // The reply is `[cursor, [keys...]]`.
        let mut head = b"*2\r\n".to_vec();
        Frame::bulk(next.to_string()).encode(&mut head, self.resp3);
        Ok(out.finish_after(&head))
    }

    async fn acl(&mut self, shared: &Shared, acl: Acl) -> Reply {
        if acl != Acl::WhoAmI {
            self.current.check_admin().map_err(error_reply)?;
        }
        Ok(match acl {
            Acl::WhoAmI => Frame::bulk(self.current.name()),
            Acl::Users | Acl::List => {
                let users = shared.info.auth.users().map_err(error_reply)?;
                let line = |(n, u): (String, crate::auth::UserRecord)| match acl {
                    Acl::Users => Frame::bulk(n),
                    _ => Frame::bulk(acl_line(&n, &u)),
                };
                Frame::Array(users.into_iter().map(line).collect())
            }
            Acl::SetUser { name, rules } => {
                let name = String::from_utf8_lossy(&name).into_owned();
                let change = acl_rules(rules).await?;
                let by = self.admin_writer()?;
                let set = shared.kv.set_user(&by, name, change, false);
                set.await.map_err(error_reply)?;
                Frame::ok()
            }
            Acl::DelUser(names) => {
                let mut n = 0;
                for name in names {
                    let name = String::from_utf8_lossy(&name).into_owned();
                    let by = self.admin_writer()?;
                    let del = shared.kv.delete_user(&by, name);
                    n += del.await.map_err(error_reply)? as i64;
                }
                Frame::Integer(n)
            }
        })
    }

    async fn hello(&self, shared: &Shared) -> Frame {
        let role = match shared.node.status().await {
            Ok(st) if st.role == NodeRole::Leader => "master",
            _ => "replica",
        };
        Frame::Map(vec![
            (Frame::bulk("server"), Frame::bulk("redis")),
            (Frame::bulk("version"), Frame::bulk(REDIS_COMPAT_VERSION)),
            (
                Frame::bulk("proto"),
                Frame::Integer(if self.resp3 { 3 } else { 2 }),
            ),
            (Frame::bulk("id"), Frame::Integer(self.id as i64)),
            (Frame::bulk("mode"), Frame::bulk("standalone")),
            (Frame::bulk("role"), Frame::bulk(role)),
            (Frame::bulk("modules"), Frame::Array(vec![])),
        ])
    }

    async fn info(&self, shared: &Shared, sections: &[String]) -> Result<String, Frame> {
        let all = sections.is_empty()
            || sections
                .iter()
                .any(|s| s == "all" || s == "default" || s == "everything");
        let want = |name: &str| all || sections.iter().any(|s| s == name);
        let mut out = String::new();
        let cfg = &shared.info.config;
        if want("server") {
            out.push_str(&format!(
                "# Server\r\nredis_version:{REDIS_COMPAT_VERSION}\r\npaxosdb_version:{}\r\n\
                 redis_mode:standalone\r\nnode_id:{}\r\nprocess_id:{}\r\ntcp_port:{}\r\n\
                 uptime_in_seconds:{}\r\n\r\n",
                env!("CARGO_PKG_VERSION"),
                cfg.id,
                std::process::id(),
                shared.port,
                shared.started.elapsed().as_secs(),
            ));
        }
        if want("clients") {
            out.push_str(&format!(
                "# Clients\r\nconnected_clients:{}\r\nblocked_clients:0\r\n\r\n",
                shared.clients.load(Ordering::Relaxed)
            ));
        }
        if want("memory") {
            // The whole process (the store's caches and memtables included): what the
            // node costs, the closest thing to Redis' own accounting.
            let rss = crate::metrics::process_rss_bytes().unwrap_or(0);
            out.push_str(&format!(
                "# Memory\r\nused_memory:{rss}\r\nused_memory_human:{:.2}M\r\n\
                 used_memory_rss:{rss}\r\nmaxmemory:0\r\n\r\n",
                rss as f64 / 1048576.0
            ));
        }
        if want("stats") {
            out.push_str(&format!(
                "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\n\r\n",
                shared.connections_received.load(Ordering::Relaxed),
                shared.info.metrics.requests_of("resp"),
            ));
        }
        if want("replication") {
            out.push_str("# Replication\r\n");
            match shared.node.status().await {
                Ok(st) => {
                    out.push_str(&format!(
                        "role:{}\r\npaxos_role:{}\r\nleader_id:{}\r\nmembers:{}\r\n\
                         config_id:{}\r\ndecided_index:{}\r\napplied_index:{}\r\n\
                         compacted_index:{}\r\n",
                        if st.role == NodeRole::Leader {
                            "master"
                        } else {
                            "slave"
                        },
                        st.role.as_str(),
                        st.leader.unwrap_or(0),
                        st.membership.members.len(),
                        st.membership.config_id,
                        st.decided_index,
                        st.applied_index,
                        st.compacted_index,
                    ));
                    // A follower names the leader's Redis listener as its master (it
                    // also takes writes itself, forwarding them).
                    let leader = st.leader.filter(|_| st.role != NodeRole::Leader);
                    let resp = (shared.info.members().into_iter())
                        .find(|m| Some(m.id) == leader)
                        .and_then(|m| m.listeners.into_iter().find(|(n, _)| n == "resp"));
                    if let Some((host, port)) = resp.as_ref().and_then(|(_, a)| a.rsplit_once(':'))
                    {
                        out.push_str(&format!(
                            "master_host:{host}\r\nmaster_port:{port}\r\nmaster_link_status:up\r\n"
                        ));
                    }
                }
                Err(e) => out.push_str(&format!("role:unknown\r\nerror:{e}\r\n")),
            }
            out.push_str("\r\n");
        }
        if want("keyspace") {
            let n = self.count_keys(shared, b"").await?;
            out.push_str("# Keyspace\r\n");
            if n > 0 {
                out.push_str(&format!("db0:keys={n},expires=0,avg_ttl=0\r\n"));
            }
            out.push_str("\r\n");
        }
        Ok(out)
    }
}

/// The Redis version paxosdb reports to clients (the command set it follows).
pub const REDIS_COMPAT_VERSION: &str = "7.0.0";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_bounds() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    fn rows(keys: &[Vec<u8>]) -> Vec<KeyValue> {
        keys.iter()
            .map(|k| KeyValue {
                key: k.clone(),
                value: Vec::new(),
                version: 1,
            })
            .collect()
    }

    /// KEYS' matching step: the crafted pattern over a page of 4 KiB keys is matched off
    /// the runtime, finds exactly the matching keys, and respects the reply budget.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn matching_a_page_of_keys() {
        let pat = format!("*{}b", "a".repeat(4000));
        let glob = Arc::new(Glob::new(pat.as_bytes()));
        let mut keys: Vec<Vec<u8>> = (0..2000u32)
            .map(|i| {
                let mut k = vec![b'a'; 4096];
                k[..4].copy_from_slice(&i.to_be_bytes());
                k
            })
            .collect();
        for i in [10, 1500] {
            *keys[i].last_mut().unwrap() = b'b';
        }
        assert!(
            rows(&keys)
                .iter()
                .map(|r| glob.work_bound(r.key.len()))
                .sum::<u64>()
                > INLINE_MATCH_WORK
        );
        let out = encode_matching(Some(&glob), rows(&keys), ArrayEncoder::new(1 << 20, false))
            .await
            .unwrap();
        let want = Frame::Array(vec![
            Frame::Bulk(keys[10].clone()),
            Frame::Bulk(keys[1500].clone()),
        ]);
        assert_eq!(out.finish().to_bytes(false), want.to_bytes(false));
        // Every key matches `*`: 2000 × 4 KiB do not fit in 1 MiB.
        match encode_matching(None, rows(&keys), ArrayEncoder::new(1 << 20, false)).await {
            Err(Frame::Error(m)) => {
                assert!(
                    m.starts_with("ERR reply would exceed max_reply_bytes (1048576 bytes)"),
                    "{m}"
                )
            }
            Err(other) => panic!("expected the reply budget error, got {other:?}"),
            Ok(out) => panic!("expected the reply budget error, got {} keys", out.len()),
        }
    }

    #[test]
    fn errors_map_to_redis_kinds() {
        let e = |x| match error_reply(x) {
            Frame::Error(m) => m,
            _ => unreachable!(),
        };
        assert_eq!(e(Error::InvalidInput("bad".into())), "ERR bad");
        assert!(e(Error::Unavailable("no leader".into())).starts_with("TRYAGAIN "));
        let unknown = e(Error::OutcomeUnknown("timeout".into()));
        assert!(unknown.starts_with("ERR outcome unknown"));
        assert!(unknown.contains("may or may not"));
    }

    #[tokio::test]
    async fn acl_rules_map_to_a_user_change() {
        let rules = |r: &[&str]| r.iter().map(|w| w.as_bytes().to_vec()).collect();
        let c = acl_rules(rules(&["on", "~app/*", "+@readwrite", ">pw"]))
            .await
            .unwrap();
        assert_eq!(c.enabled, Some(true));
        assert_eq!(c.prefix, Some(b"app/".to_vec()));
        assert_eq!(c.role, Some(Role::ReadWrite));
        assert_eq!(c.add_passwords.len(), 1);
        assert!(c.add_passwords[0].starts_with("$argon2id$"), "hashed here");
        let c = acl_rules(rules(&["allkeys", "+@all", "off"]))
            .await
            .unwrap();
        assert_eq!(
            (c.prefix, c.role, c.enabled),
            (Some(vec![]), Some(Role::Admin), Some(false))
        );
        // resetpass and reset revoke tokens too (a token is a way in).
        for r in ["resetpass", "reset"] {
            let c = acl_rules(rules(&[r])).await.unwrap();
            assert!(
                c.reset_passwords && c.revoke_tokens == TokenRevocation::All,
                "{r}"
            );
        }
        for bad in ["~a*b*", "~nostar", "+@dangerous", "nopass"] {
            let e = acl_rules(rules(&[bad])).await.unwrap_err();
            let text = format!("{e:?}");
            assert!(text.contains("ACL SETUSER"), "{bad}: {text}");
        }
    }

    #[test]
    fn auth_errors_map_to_redis_replies() {
        let e = |err| format!("{:?}", error_reply(err));
        assert!(e(Error::Unauthenticated("x".into())).contains("NOAUTH Authentication required."));
        assert!(e(Error::PermissionDenied("no".into())).contains("NOPERM no"));
    }
}
