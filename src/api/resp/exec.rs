//! Running parsed commands against the node, and mapping results and errors to replies.
//!
//! Consistency: every read is linearizable unless the connection sent `READONLY`, after
//! which its reads are served from this node's local copy (`Consistency::Stale`, possibly
//! behind) until `READWRITE`. Multi-key reads (MGET, EXISTS, KEYS, SCAN, DBSIZE) take one
//! read barrier and then read locally, so each reflects every write acknowledged before
//! the command started. They are not snapshots: a concurrent write may or may not show.
//!
//! Errors, by how a Redis client should react:
//! - invalid input → `-ERR <message>` (nothing changed);
//! - unavailable (no leader, no quorum) → `-TRYAGAIN <message>` (nothing changed; retry);
//! - outcome unknown → `-ERR outcome unknown: ...` (the write may or may not have been
//!   applied; this reply never claims that it failed);
//! - internal or storage → `-ERR internal: ...`.

use super::cmd::{self, Command, Spec, COMMANDS};
use super::frame::Frame;
use super::glob;
use super::Shared;
use crate::command::{Expect, ScanRange, SetCond, WriteOp, WriteResult};
use crate::error::Error;
use crate::node::{Consistency, Role, MAX_SCAN_LIMIT};
use std::sync::atomic::Ordering;

/// Whether the connection continues after a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum After {
    Continue,
    Close,
}

/// One connection's state.
pub struct Session {
    /// The connection id (`CLIENT ID`, `HELLO`).
    pub id: u64,
    /// Replies in RESP3 (after `HELLO 3`).
    pub resp3: bool,
    client_id: u64,
    next_seq: u64,
    consistency: Consistency,
    name: Option<Vec<u8>>,
}

type Reply = Result<Frame, Frame>;

/// Maps a node error to the Redis error reply a client should see.
pub fn error_reply(e: Error) -> Frame {
    match e {
        Error::InvalidInput(m) => Frame::error(format!("ERR {m}")),
        Error::Unavailable(m) => Frame::error(format!("TRYAGAIN {m}")),
        Error::OutcomeUnknown(m) => Frame::error(format!(
            "ERR outcome unknown: {m}; the command may or may not have been applied"
        )),
        e @ (Error::Config(_) | Error::Storage(_) | Error::Internal(_)) => {
            Frame::error(format!("ERR internal: {e}"))
        }
    }
}

fn unexpected(r: WriteResult) -> Frame {
    Frame::error(format!("ERR internal: unexpected result {r:?}"))
}

fn bulk_or_null(v: Option<Vec<u8>>) -> Frame {
    v.map(Frame::Bulk).unwrap_or(Frame::Null)
}

/// The smallest key after every key that starts with `prefix` (None: no bound).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

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

/// What `CONFIG GET` reports (redis-benchmark asks for `save` and `appendonly`).
const CONFIG: &[(&str, &str)] = &[
    ("appendonly", "yes"),
    ("appendfsync", "always"),
    ("save", ""),
    ("databases", "1"),
];

impl Session {
    pub fn new(id: u64) -> Session {
        Session {
            id,
            resp3: false,
            client_id: rand::random::<u64>().max(1),
            next_seq: 1,
            consistency: Consistency::Linearizable,
            name: None,
        }
    }

    /// Parses and runs one request.
    pub async fn run(&mut self, shared: &Shared, words: Vec<Vec<u8>>) -> (Frame, After) {
        match cmd::parse(words) {
            Ok(Command::Quit) => (Frame::ok(), After::Close),
            Ok(c) => match self.execute(shared, c).await {
                Ok(f) | Err(f) => (f, After::Continue),
            },
            Err(e) => (e, After::Continue),
        }
    }

    async fn write(&mut self, shared: &Shared, op: WriteOp) -> Result<WriteResult, Frame> {
        let seq = self.next_seq;
        self.next_seq += 1;
        shared
            .node
            .write(self.client_id, seq, op)
            .await
            .map_err(error_reply)
    }

    /// Reads one key. A key that could never be stored (empty, too long) is absent.
    async fn get(
        &self,
        shared: &Shared,
        key: &[u8],
        c: Consistency,
    ) -> Result<Option<crate::command::Versioned>, Frame> {
        if shared.node.limits().check_key(key).is_err() {
            return Ok(None);
        }
        let (v, _) = shared.node.get(key, c).await.map_err(error_reply)?;
        Ok(v)
    }

    /// Prepares a multi-read: one barrier if linearizable; the reads that follow are local.
    async fn barrier(&self, shared: &Shared) -> Result<(), Frame> {
        if self.consistency == Consistency::Linearizable {
            shared.node.read_barrier().await.map_err(error_reply)?;
        }
        Ok(())
    }

    /// Calls `f` with every key that starts with `prefix`, in order.
    async fn each_key(
        &self,
        shared: &Shared,
        prefix: &[u8],
        mut f: impl FnMut(&[u8]),
    ) -> Result<(), Frame> {
        self.barrier(shared).await?;
        let to = prefix_end(prefix);
        let mut from = prefix.to_vec();
        loop {
            let range = ScanRange::Range {
                from,
                to: to.clone(),
            };
            let (rows, more, _) = shared
                .node
                .scan(&range, MAX_SCAN_LIMIT, Consistency::Stale)
                .await
                .map_err(error_reply)?;
            rows.iter().for_each(|r| f(&r.key));
            // A whole-keyspace walk must not hold a runtime thread for its full length.
            tokio::task::yield_now().await;
            match rows.last() {
                Some(last) if more => from = successor(&last.key),
                _ => return Ok(()),
            }
        }
    }

    async fn execute(&mut self, shared: &Shared, c: Command) -> Reply {
        Ok(match c {
            Command::Ping(None) => Frame::Simple("PONG".into()),
            Command::Ping(Some(m)) | Command::Echo(m) => Frame::Bulk(m),
            Command::Quit => Frame::ok(),
            Command::Hello { proto, name } => {
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
            Command::Select(0) => Frame::ok(),
            Command::Select(_) => return Err(Frame::error("ERR DB index is out of range")),
            Command::CommandList => Frame::Array(COMMANDS.iter().map(command_entry).collect()),
            Command::CommandCount => Frame::Integer(COMMANDS.len() as i64),
            Command::CommandDocs => Frame::Map(vec![]),
            Command::CommandInfo(names) => Frame::Array(
                names
                    .iter()
                    .map(|n| {
                        cmd::lookup(&String::from_utf8_lossy(n))
                            .map(command_entry)
                            .unwrap_or(Frame::Null)
                    })
                    .collect(),
            ),
            Command::ClientSetName(n) => {
                self.name = (!n.is_empty()).then_some(n);
                Frame::ok()
            }
            Command::ClientGetName => bulk_or_null(self.name.clone()),
            Command::ClientSetInfo => Frame::ok(),
            Command::ClientId => Frame::Integer(self.id as i64),
            Command::ConfigGet(patterns) => {
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
            Command::Info(sections) => Frame::Bulk(self.info(shared, &sections).await?.into()),
            Command::ReadOnly => {
                self.consistency = Consistency::Stale;
                Frame::ok()
            }
            Command::ReadWrite => {
                self.consistency = Consistency::Linearizable;
                Frame::ok()
            }
            Command::Get(k) => bulk_or_null(
                self.get(shared, &k, self.consistency)
                    .await?
                    .map(|v| v.value),
            ),
            Command::GetVer(k) => match self.get(shared, &k, self.consistency).await? {
                Some(v) => {
                    Frame::Array(vec![Frame::Bulk(v.value), Frame::Integer(v.version as i64)])
                }
                None => Frame::Null,
            },
            Command::Type(k) => Frame::Simple(
                match self.get(shared, &k, self.consistency).await? {
                    Some(_) => "string",
                    None => "none",
                }
                .into(),
            ),
            Command::Ttl(k) => {
                Frame::Integer(match self.get(shared, &k, self.consistency).await? {
                    Some(_) => -1,
                    None => -2,
                })
            }
            Command::Strlen(k) => Frame::Integer(
                self.get(shared, &k, self.consistency)
                    .await?
                    .map_or(0, |v| v.value.len() as i64),
            ),
            Command::Set {
                key,
                value,
                cond: SetCond::Always,
                get: false,
            } => match self
                .write(
                    shared,
                    WriteOp::Put {
                        key,
                        value,
                        return_prev: false,
                    },
                )
                .await?
            {
                WriteResult::Put { .. } => Frame::ok(),
                r => return Err(unexpected(r)),
            },
            Command::Set {
                key,
                value,
                cond,
                get,
            } => match self
                .write(shared, WriteOp::Set { key, value, cond })
                .await?
            {
                WriteResult::Set { applied, prev, .. } => {
                    if get {
                        bulk_or_null(prev.map(|v| v.value))
                    } else if applied {
                        Frame::ok()
                    } else {
                        Frame::Null
                    }
                }
                r => return Err(unexpected(r)),
            },
            Command::SetNx(key, value) => match self
                .write(
                    shared,
                    WriteOp::Set {
                        key,
                        value,
                        cond: SetCond::IfAbsent,
                    },
                )
                .await?
            {
                WriteResult::Set { applied, .. } => Frame::Integer(applied as i64),
                r => return Err(unexpected(r)),
            },
            // A key that could never be stored is simply absent, as for reads.
            Command::GetDel(key) if shared.node.limits().check_key(&key).is_err() => Frame::Null,
            Command::GetDel(key) => match self
                .write(
                    shared,
                    WriteOp::Delete {
                        key,
                        return_prev: true,
                    },
                )
                .await?
            {
                WriteResult::Delete { prev, .. } => bulk_or_null(prev.map(|v| v.value)),
                r => return Err(unexpected(r)),
            },
            Command::Del(keys) => {
                // One write per key (each atomic on its own), like Redis's count reply.
                let mut deleted = 0;
                for key in keys {
                    if shared.node.limits().check_key(&key).is_err() {
                        continue;
                    }
                    match self
                        .write(
                            shared,
                            WriteOp::Delete {
                                key,
                                return_prev: false,
                            },
                        )
                        .await?
                    {
                        WriteResult::Delete { deleted: d, .. } => deleted += d as i64,
                        r => return Err(unexpected(r)),
                    }
                }
                Frame::Integer(deleted)
            }
            Command::Exists(keys) => {
                self.barrier(shared).await?;
                let mut n = 0;
                for k in keys {
                    n += self.get(shared, &k, Consistency::Stale).await?.is_some() as i64;
                }
                Frame::Integer(n)
            }
            Command::MGet(keys) => {
                self.barrier(shared).await?;
                let mut out = Vec::with_capacity(keys.len());
                for k in keys {
                    let v = self.get(shared, &k, Consistency::Stale).await?;
                    out.push(bulk_or_null(v.map(|v| v.value)));
                }
                Frame::Array(out)
            }
            Command::MSet(pairs) => match self.write(shared, WriteOp::MultiPut { pairs }).await? {
                WriteResult::MultiPut { .. } => Frame::ok(),
                r => return Err(unexpected(r)),
            },
            Command::IncrBy(key, delta) => {
                match self.write(shared, WriteOp::Incr { key, delta }).await? {
                    WriteResult::Incr { value, .. } => Frame::Integer(value),
                    r => return Err(unexpected(r)),
                }
            }
            Command::Append(key, suffix) => {
                match self.write(shared, WriteOp::Append { key, suffix }).await? {
                    WriteResult::Append { len, .. } => Frame::Integer(len as i64),
                    r => return Err(unexpected(r)),
                }
            }
            Command::Cas(key, expected, new_value) => {
                let op = WriteOp::Cas {
                    key,
                    expect: Expect::Value(expected),
                    new_value,
                };
                match self.write(shared, op).await? {
                    WriteResult::Cas { succeeded, .. } => Frame::Integer(succeeded as i64),
                    r => return Err(unexpected(r)),
                }
            }
            Command::CasVer(key, version, new_value) => {
                let op = WriteOp::Cas {
                    key,
                    expect: Expect::Version(version),
                    new_value,
                };
                match self.write(shared, op).await? {
                    WriteResult::Cas { succeeded, .. } => Frame::Integer(succeeded as i64),
                    r => return Err(unexpected(r)),
                }
            }
            Command::Keys(pattern) => {
                let glob = compile(shared, &pattern)?;
                let mut keys = Vec::new();
                self.each_key(shared, &glob::literal_prefix(&pattern), |k| {
                    if glob.matches(k) {
                        keys.push(Frame::bulk(k));
                    }
                })
                .await?;
                Frame::Array(keys)
            }
            Command::DbSize => {
                let mut n = 0i64;
                self.each_key(shared, b"", |_| n += 1).await?;
                Frame::Integer(n)
            }
            Command::Scan {
                cursor,
                pattern,
                count,
                only_strings,
            } => {
                self.scan(shared, cursor, pattern, count, only_strings)
                    .await?
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
        let (rows, more, _) = shared
            .node
            .scan(&range, count, self.consistency)
            .await
            .map_err(error_reply)?;
        let next = match rows.last() {
            Some(last) if more => shared.cursors.lock().unwrap().insert(last.key.clone()),
            _ => 0,
        };
        let keys = rows
            .into_iter()
            .filter(|r| only_strings && glob.as_ref().is_none_or(|g| g.matches(&r.key)))
            .map(|r| Frame::Bulk(r.key))
            .collect();
        Ok(Frame::Array(vec![
            Frame::bulk(next.to_string()),
            Frame::Array(keys),
        ]))
    }

    async fn hello(&self, shared: &Shared) -> Frame {
        let role = match shared.node.status().await {
            Ok(st) if st.role == Role::Leader => "master",
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
                "# Clients\r\nconnected_clients:{}\r\n\r\n",
                shared.clients.load(Ordering::Relaxed)
            ));
        }
        if want("replication") {
            out.push_str("# Replication\r\n");
            match shared.node.status().await {
                Ok(st) => out.push_str(&format!(
                    "role:{}\r\npaxos_role:{}\r\nleader_id:{}\r\nmembers:{}\r\n\
                     config_id:{}\r\ndecided_index:{}\r\napplied_index:{}\r\n\
                     compacted_index:{}\r\n",
                    if st.role == Role::Leader {
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
                )),
                Err(e) => out.push_str(&format!("role:unknown\r\nerror:{e}\r\n")),
            }
            out.push_str("\r\n");
        }
        if want("keyspace") {
            let mut n = 0u64;
            self.each_key(shared, b"", |_| n += 1).await?;
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
}
