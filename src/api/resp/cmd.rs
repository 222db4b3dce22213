//! The commands paxosdb understands: the command table (names, arities, flags and key
//! positions, which `COMMAND` also reports) and parsing a request into a [`RespCommand`].
//!
//! Parsing checks the arity first, as Redis does, so a wrong argument count always gets
//! `ERR wrong number of arguments for '<name>' command`, and an unknown name always gets
//! `ERR unknown command '<name>', with args beginning with: '<arg>' ...`.

use super::frame::Frame;
use super::parse::{not_integer, syntax_error, wrong_arity, Args, Reply};
use crate::command::{Deadline, ExpireCond, Expiry, SetCond};

/// One entry of the command table.
pub struct Spec {
    /// Lower-case name.
    pub name: &'static str,
    /// Redis arity: N means exactly N words (name included), -N at least N.
    pub arity: i64,
    pub flags: &'static [&'static str],
    /// First key, last key (-1: the last argument) and step, as `COMMAND` reports them.
    pub keys: (i64, i64, i64),
}

const fn spec(
    name: &'static str,
    arity: i64,
    flags: &'static [&'static str],
    keys: (i64, i64, i64),
) -> Spec {
    Spec {
        name,
        arity,
        flags,
        keys,
    }
}

const NOKEYS: (i64, i64, i64) = (0, 0, 0);
const ONEKEY: (i64, i64, i64) = (1, 1, 1);
const ALLKEYS: (i64, i64, i64) = (1, -1, 1);
const R: &[&str] = &["readonly", "fast"];
const W: &[&str] = &["write", "denyoom", "fast"];
const C: &[&str] = &["fast", "loading", "stale"];
const TX: &[&str] = &["noscript", "loading", "stale", "fast", "allow_busy"];
const SCRIPT: &[&str] = &["noscript", "stale", "skip_monitor", "movablekeys"];
const SCRIPT_RO: &[&str] = &[
    "noscript",
    "stale",
    "skip_monitor",
    "readonly",
    "movablekeys",
];

/// Every command, in the order `COMMAND` lists them.
pub const COMMANDS: &[Spec] = &[
    spec("ping", -1, C, NOKEYS),
    spec("echo", 2, C, NOKEYS),
    spec(
        "hello",
        -1,
        &["noscript", "loading", "stale", "fast"],
        NOKEYS,
    ),
    spec(
        "auth",
        -2,
        &["noscript", "loading", "stale", "fast"],
        NOKEYS,
    ),
    spec("acl", -2, &["admin", "loading", "stale"], NOKEYS),
    spec("select", 2, C, NOKEYS),
    spec("quit", -1, C, NOKEYS),
    spec("command", -1, &["loading", "stale"], NOKEYS),
    spec("client", -2, &["loading", "stale"], NOKEYS),
    spec("config", -2, &["admin", "loading", "stale"], NOKEYS),
    spec("info", -1, &["loading", "stale"], NOKEYS),
    spec("readonly", 1, C, NOKEYS),
    spec("readwrite", 1, C, NOKEYS),
    spec("get", 2, R, ONEKEY),
    spec("set", -3, &["write", "denyoom"], ONEKEY),
    spec("setnx", 3, W, ONEKEY),
    spec("getdel", 2, &["write", "fast"], ONEKEY),
    spec("del", -2, &["write"], ALLKEYS),
    spec("exists", -2, R, ALLKEYS),
    spec("mget", -2, R, ALLKEYS),
    spec("mset", -3, &["write", "denyoom"], (1, -1, 2)),
    spec("incr", 2, W, ONEKEY),
    spec("incrby", 3, W, ONEKEY),
    spec("decr", 2, W, ONEKEY),
    spec("decrby", 3, W, ONEKEY),
    spec("append", 3, W, ONEKEY),
    spec("strlen", 2, R, ONEKEY),
    spec("keys", 2, &["readonly"], NOKEYS),
    spec("scan", -2, &["readonly"], NOKEYS),
    spec("dbsize", 1, R, NOKEYS),
    spec("cas", 4, W, ONEKEY),
    spec("casver", 4, W, ONEKEY),
    spec("getver", 2, R, ONEKEY),
    spec("type", 2, R, ONEKEY),
    spec("ttl", 2, R, ONEKEY),
    spec("pttl", 2, R, ONEKEY),
    // Expiry (the log's time; see `Deadline`).
    spec("setex", 4, &["write", "denyoom"], ONEKEY),
    spec("psetex", 4, &["write", "denyoom"], ONEKEY),
    spec("getex", -2, &["write", "fast"], ONEKEY),
    spec("expire", -3, &["write", "fast"], ONEKEY),
    spec("pexpire", -3, &["write", "fast"], ONEKEY),
    spec("expireat", -3, &["write", "fast"], ONEKEY),
    spec("pexpireat", -3, &["write", "fast"], ONEKEY),
    spec("persist", 2, &["write", "fast"], ONEKEY),
    spec("expiretime", 2, R, ONEKEY),
    spec("pexpiretime", 2, R, ONEKEY),
    // Transactions: the block becomes one key-value transaction (txn.rs).
    spec("multi", 1, TX, NOKEYS),
    spec(
        "exec",
        1,
        &["noscript", "loading", "stale", "skip_slowlog"],
        NOKEYS,
    ),
    spec("discard", 1, TX, NOKEYS),
    spec("watch", -2, TX, ALLKEYS),
    spec("unwatch", 1, TX, NOKEYS),
    // Scripts: run against a rehearsal, applied as one transaction (script.rs).
    spec("eval", -3, SCRIPT, NOKEYS),
    spec("evalsha", -3, SCRIPT, NOKEYS),
    spec("eval_ro", -3, SCRIPT_RO, NOKEYS),
    spec("evalsha_ro", -3, SCRIPT_RO, NOKEYS),
    spec("script", -2, &["noscript"], NOKEYS),
];

pub fn lookup(name: &str) -> Option<&'static Spec> {
    COMMANDS.iter().find(|s| s.name.eq_ignore_ascii_case(name))
}

/// A parsed RESP request: what a client asked of this connection (not the replicated
/// [`crate::machine::Command`] a write becomes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RespCommand {
    Ping(Option<Vec<u8>>),
    Echo(Vec<u8>),
    /// `HELLO [protover [AUTH user pass] [SETNAME name]]`
    Hello {
        proto: Option<i64>,
        name: Option<Vec<u8>>,
        /// (user, password)
        auth: Option<(Vec<u8>, Vec<u8>)>,
    },
    /// `AUTH [user] password` (no user: `default`).
    Auth {
        user: Option<Vec<u8>>,
        password: Vec<u8>,
    },
    /// `ACL WHOAMI | USERS | LIST | SETUSER name rule... | DELUSER name...`
    Acl(Acl),
    Select(i64),
    Quit,
    CommandList,
    CommandCount,
    CommandDocs,
    CommandInfo(Vec<Vec<u8>>),
    ClientSetName(Vec<u8>),
    ClientGetName,
    ClientSetInfo,
    ClientId,
    ConfigGet(Vec<Vec<u8>>),
    Info(Vec<String>),
    ReadOnly,
    ReadWrite,
    Get(Vec<u8>),
    /// `SET` (and `SETEX`, `PSETEX`): `expiry` None clears the key's deadline, as a
    /// plain `SET` does in Redis.
    Set {
        key: Vec<u8>,
        value: Vec<u8>,
        cond: SetCond,
        get: bool,
        expiry: Option<Expiry>,
    },
    /// `GETEX key [EX s|PX ms|EXAT s|PXAT ms|PERSIST]`: `change` None is a plain read;
    /// `Some(None)` removes the deadline (`PERSIST`), `Some(Some(d))` sets it.
    GetEx {
        key: Vec<u8>,
        change: Option<Option<Deadline>>,
    },
    /// `EXPIRE`, `PEXPIRE`, `EXPIREAT`, `PEXPIREAT key time [NX|XX|GT|LT]` (`XX GT` is
    /// `GT`: a key without a deadline never passes GT).
    Expire {
        key: Vec<u8>,
        deadline: Deadline,
        when: ExpireCond,
    },
    /// `PERSIST key`: 1 if a deadline was removed.
    Persist(Vec<u8>),
    SetNx(Vec<u8>, Vec<u8>),
    GetDel(Vec<u8>),
    Del(Vec<Vec<u8>>),
    Exists(Vec<Vec<u8>>),
    MGet(Vec<Vec<u8>>),
    MSet(Vec<(Vec<u8>, Vec<u8>)>),
    IncrBy(Vec<u8>, i64),
    Append(Vec<u8>, Vec<u8>),
    Strlen(Vec<u8>),
    Keys(Vec<u8>),
    Scan {
        cursor: u64,
        pattern: Option<Vec<u8>>,
        count: usize,
        /// `TYPE t`: only `string` matches anything (paxosdb stores strings only).
        only_strings: bool,
    },
    DbSize,
    /// `CAS key expected new`: 1 if the value was `expected` and is now `new`, else 0.
    Cas(Vec<u8>, Vec<u8>, Vec<u8>),
    /// `CASVER key version new`: 1 if the key's version was `version` (0 = absent).
    CasVer(Vec<u8>, u64, Vec<u8>),
    /// `GETVER key`: `[value, version]`, or nil.
    GetVer(Vec<u8>),
    /// `TYPE key`: `string` or `none`.
    Type(Vec<u8>),
    /// `TTL`, `PTTL` (remaining time), `EXPIRETIME`, `PEXPIRETIME` (`absolute`: the
    /// deadline itself): -2 if absent, -1 if the key never expires.
    Ttl {
        key: Vec<u8>,
        ms: bool,
        absolute: bool,
    },
    /// `MULTI`: the commands that follow, up to `EXEC` or `DISCARD`, are queued.
    Multi,
    /// `EXEC`: runs the queued commands as one transaction.
    Exec,
    /// `DISCARD`: drops the queued commands and the watched keys.
    Discard,
    /// `WATCH key...`: `EXEC` applies nothing if one of these keys changes before it.
    Watch(Vec<Vec<u8>>),
    /// `UNWATCH`: forgets the watched keys.
    Unwatch,
    /// `EVAL`, `EVALSHA` (and their `_RO` forms): runs a Lua script with its keys and
    /// arguments.
    Eval {
        script: ScriptRef,
        keys: Vec<Vec<u8>>,
        args: Vec<Vec<u8>>,
        read_only: bool,
    },
    /// `SCRIPT LOAD script`: caches it and answers its SHA1.
    ScriptLoad(Vec<u8>),
    /// `SCRIPT EXISTS sha1...`: 1 or 0 for each.
    ScriptExists(Vec<Vec<u8>>),
    /// `SCRIPT FLUSH [ASYNC|SYNC]`: forgets every cached script.
    ScriptFlush,
    /// `SCRIPT KILL`: no script runs long enough to be killed (each has a time bound).
    ScriptKill,
}

/// The script an `EVAL` (its text) or `EVALSHA` (its SHA1, of a cached one) names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScriptRef {
    Body(Vec<u8>),
    Sha(Vec<u8>),
}

/// The `ACL` subcommands paxosdb implements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acl {
    WhoAmI,
    Users,
    List,
    SetUser { name: Vec<u8>, rules: Vec<Vec<u8>> },
    DelUser(Vec<Vec<u8>>),
}

/// The message Redis gives for an unknown command.
fn unknown_command(name: &[u8], args: &[Vec<u8>]) -> Reply {
    let mut msg = format!(
        "ERR unknown command '{}', with args beginning with: ",
        clip(name)
    );
    for a in args.iter().take(16) {
        msg.push_str(&format!("'{}' ", clip(a)));
    }
    Frame::error(msg)
}

fn clip(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(128)]).into_owned()
}

fn unknown_subcommand(cmd: &str, sub: &[u8]) -> Reply {
    Frame::error(format!(
        "ERR unknown subcommand '{}'. Try {} HELP.",
        clip(sub),
        cmd.to_ascii_uppercase()
    ))
}

/// Parses a request (command name and arguments, as sent) into a [`RespCommand`].
pub fn parse(mut words: Vec<Vec<u8>>) -> Result<RespCommand, Reply> {
    if words.is_empty() {
        return Err(Frame::error("ERR empty command"));
    }
    let name_bytes = words.remove(0);
    let name = String::from_utf8_lossy(&name_bytes).into_owned();
    let Some(spec) = lookup(&name) else {
        return Err(unknown_command(&name_bytes, &words));
    };
    let n = words.len() as i64 + 1;
    if (spec.arity > 0 && n != spec.arity) || (spec.arity < 0 && n < -spec.arity) {
        return Err(wrong_arity(spec.name));
    }
    let mut a = Args::new(spec.name, words);
    let cmd = match spec.name {
        "ping" => match a.remaining() {
            0 => RespCommand::Ping(None),
            1 => RespCommand::Ping(Some(a.bytes()?)),
            _ => return Err(wrong_arity("ping")),
        },
        "echo" => RespCommand::Echo(a.bytes()?),
        "hello" => parse_hello(&mut a)?,
        "auth" => match a.remaining() {
            1 => RespCommand::Auth {
                user: None,
                password: a.bytes()?,
            },
            2 => RespCommand::Auth {
                user: Some(a.bytes()?),
                password: a.bytes()?,
            },
            _ => return Err(syntax_error()),
        },
        "acl" => {
            let sub = a.bytes()?;
            let acl = match String::from_utf8_lossy(&sub).to_ascii_uppercase().as_str() {
                "WHOAMI" => Acl::WhoAmI,
                "USERS" => Acl::Users,
                "LIST" => Acl::List,
                "SETUSER" => Acl::SetUser {
                    name: a.bytes()?,
                    rules: a.rest(),
                },
                "DELUSER" if a.remaining() > 0 => Acl::DelUser(a.rest()),
                "DELUSER" => return Err(wrong_arity("acl|deluser")),
                _ => return Err(unknown_subcommand("acl", &sub)),
            };
            a.finish()
                .map_err(|_| wrong_arity(&format!("acl|{}", clip(&sub).to_lowercase())))?;
            return Ok(RespCommand::Acl(acl));
        }
        "select" => RespCommand::Select(a.int()?),
        "quit" => RespCommand::Quit,
        "command" => {
            if a.remaining() == 0 {
                RespCommand::CommandList
            } else {
                let sub = a.bytes()?;
                match String::from_utf8_lossy(&sub).to_ascii_uppercase().as_str() {
                    "COUNT" => RespCommand::CommandCount,
                    "DOCS" => {
                        a.rest();
                        RespCommand::CommandDocs
                    }
                    "INFO" => RespCommand::CommandInfo(a.rest()),
                    "LIST" => {
                        a.rest();
                        RespCommand::CommandList
                    }
                    _ => return Err(unknown_subcommand("command", &sub)),
                }
            }
        }
        "client" => {
            let sub = a.bytes()?;
            let cmd = match String::from_utf8_lossy(&sub).to_ascii_uppercase().as_str() {
                "SETNAME" => {
                    let name = a.bytes()?;
                    if name.iter().any(|&b| b <= b' ' || b > b'~') {
                        return Err(Frame::error(
                            "ERR Client names cannot contain spaces, newlines or special characters.",
                        ));
                    }
                    RespCommand::ClientSetName(name)
                }
                "GETNAME" => RespCommand::ClientGetName,
                "SETINFO" => {
                    a.bytes()?;
                    a.bytes()?;
                    RespCommand::ClientSetInfo
                }
                "ID" => RespCommand::ClientId,
                _ => return Err(unknown_subcommand("client", &sub)),
            };
            a.finish()
                .map_err(|_| wrong_arity(&format!("client|{}", clip(&sub))))?;
            return Ok(cmd);
        }
        "config" => {
            let sub = a.bytes()?;
            if !sub.eq_ignore_ascii_case(b"GET") {
                return Err(Frame::error(format!(
                    "ERR CONFIG {} is not supported by paxosdb (only CONFIG GET)",
                    clip(&sub).to_ascii_uppercase()
                )));
            }
            if a.remaining() == 0 {
                return Err(wrong_arity("config|get"));
            }
            RespCommand::ConfigGet(a.rest())
        }
        "info" => RespCommand::Info(
            a.rest()
                .iter()
                .map(|s| String::from_utf8_lossy(s).to_ascii_lowercase())
                .collect(),
        ),
        "readonly" => RespCommand::ReadOnly,
        "readwrite" => RespCommand::ReadWrite,
        "get" => RespCommand::Get(a.bytes()?),
        "set" => parse_set(&mut a)?,
        "setnx" => RespCommand::SetNx(a.bytes()?, a.bytes()?),
        "getdel" => RespCommand::GetDel(a.bytes()?),
        "del" => RespCommand::Del(a.rest()),
        "exists" => RespCommand::Exists(a.rest()),
        "mget" => RespCommand::MGet(a.rest()),
        "mset" => {
            if !a.remaining().is_multiple_of(2) {
                return Err(wrong_arity("mset"));
            }
            let rest = a.rest();
            let mut pairs = Vec::with_capacity(rest.len() / 2);
            let mut it = rest.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                pairs.push((k, v));
            }
            RespCommand::MSet(pairs)
        }
        "incr" => RespCommand::IncrBy(a.bytes()?, 1),
        "decr" => RespCommand::IncrBy(a.bytes()?, -1),
        "incrby" => RespCommand::IncrBy(a.bytes()?, a.int()?),
        "decrby" => {
            let key = a.bytes()?;
            let d = a.int()?;
            let d = d
                .checked_neg()
                .ok_or_else(|| Frame::error("ERR decrement would overflow"))?;
            RespCommand::IncrBy(key, d)
        }
        "append" => RespCommand::Append(a.bytes()?, a.bytes()?),
        "strlen" => RespCommand::Strlen(a.bytes()?),
        "keys" => RespCommand::Keys(a.bytes()?),
        "scan" => parse_scan(&mut a)?,
        "dbsize" => RespCommand::DbSize,
        "cas" => RespCommand::Cas(a.bytes()?, a.bytes()?, a.bytes()?),
        "casver" => {
            let key = a.bytes()?;
            let v = a.int()?;
            let v = u64::try_from(v).map_err(|_| not_integer())?;
            RespCommand::CasVer(key, v, a.bytes()?)
        }
        "getver" => RespCommand::GetVer(a.bytes()?),
        "type" => RespCommand::Type(a.bytes()?),
        "ttl" | "pttl" | "expiretime" | "pexpiretime" => RespCommand::Ttl {
            key: a.bytes()?,
            ms: spec.name.starts_with('p'),
            absolute: spec.name.ends_with("time"),
        },
        "setex" | "psetex" => {
            let key = a.bytes()?;
            let n = a.int()?;
            let ms = spec.name == "psetex";
            let deadline = set_deadline(spec.name, n, ms, true)?;
            RespCommand::Set {
                key,
                value: a.bytes()?,
                cond: SetCond::Always,
                get: false,
                expiry: Some(Expiry::Set(deadline)),
            }
        }
        "getex" => parse_getex(&mut a)?,
        "expire" | "pexpire" | "expireat" | "pexpireat" => parse_expire(spec.name, &mut a)?,
        "persist" => RespCommand::Persist(a.bytes()?),
        "multi" => RespCommand::Multi,
        "exec" => RespCommand::Exec,
        "discard" => RespCommand::Discard,
        "watch" => RespCommand::Watch(a.rest()),
        "unwatch" => RespCommand::Unwatch,
        "eval" | "evalsha" | "eval_ro" | "evalsha_ro" => {
            let text = a.bytes()?;
            let script = match spec.name.starts_with("evalsha") {
                true => ScriptRef::Sha(text),
                false => ScriptRef::Body(text),
            };
            let n = a.int()?;
            let n = usize::try_from(n)
                .map_err(|_| Frame::error("ERR Number of keys can't be negative"))?;
            if n > a.remaining() {
                return Err(Frame::error(
                    "ERR Number of keys can't be greater than number of args",
                ));
            }
            let mut rest = a.rest();
            let args = rest.split_off(n);
            RespCommand::Eval {
                script,
                keys: rest,
                args,
                read_only: spec.name.ends_with("_ro"),
            }
        }
        "script" => {
            let sub = a.bytes()?;
            let c = match String::from_utf8_lossy(&sub).to_ascii_uppercase().as_str() {
                "LOAD" => RespCommand::ScriptLoad(a.bytes()?),
                "EXISTS" if a.remaining() > 0 => RespCommand::ScriptExists(a.rest()),
                "EXISTS" => return Err(wrong_arity("script|exists")),
                "FLUSH" => {
                    if let Some(mode) = a.rest().first() {
                        let mode = String::from_utf8_lossy(mode).to_ascii_uppercase();
                        if mode != "ASYNC" && mode != "SYNC" {
                            return Err(syntax_error());
                        }
                    }
                    RespCommand::ScriptFlush
                }
                "KILL" => RespCommand::ScriptKill,
                _ => return Err(unknown_subcommand("script", &sub)),
            };
            a.finish()
                .map_err(|_| wrong_arity(&format!("script|{}", clip(&sub).to_lowercase())))?;
            return Ok(c);
        }
        other => {
            return Err(Frame::error(format!(
                "ERR command '{other}' is listed but not implemented"
            )))
        }
    };
    a.finish()?;
    Ok(cmd)
}

fn parse_hello(a: &mut Args) -> Result<RespCommand, Reply> {
    if a.remaining() == 0 {
        return Ok(RespCommand::Hello {
            proto: None,
            name: None,
            auth: None,
        });
    }
    let proto = a
        .int()
        .map_err(|_| Frame::error("ERR Protocol version is not an integer or out of range"))?;
    let mut name = None;
    let mut auth = None;
    while a.remaining() > 0 {
        match a.keyword()?.as_str() {
            "AUTH" if a.remaining() >= 2 => auth = Some((a.bytes()?, a.bytes()?)),
            "SETNAME" if a.remaining() >= 1 => name = Some(a.bytes()?),
            _ => return Err(syntax_error()),
        }
    }
    Ok(RespCommand::Hello {
        proto: Some(proto),
        name,
        auth,
    })
}

/// Redis' refusal of an expiry time out of range, for command `name`.
pub fn invalid_expire(name: &str) -> Reply {
    Frame::error(format!("ERR invalid expire time in '{name}' command"))
}

/// Milliseconds since the Unix epoch by this node's clock: only to refuse a relative
/// time that would overflow once added to the time (as Redis does); the deadline itself
/// is resolved with the log's time where it is applied.
fn local_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The deadline of `SET`'s, `SETEX`'s or `GETEX`'s expiry option: `n` seconds (`ms`:
/// milliseconds) from now (`relative`) or since the epoch. As Redis: `n` must be
/// positive and the result must fit in 64 bits, else `invalid expire time`.
fn set_deadline(name: &str, n: i64, ms: bool, relative: bool) -> Result<Deadline, Reply> {
    let n = if ms { Some(n) } else { n.checked_mul(1000) };
    let n = n
        .filter(|&n| n > 0)
        .filter(|&n| !relative || n <= i64::MAX - local_now_ms())
        .ok_or_else(|| invalid_expire(name))?;
    Ok(if relative {
        Deadline::In(n as u64)
    } else {
        Deadline::At(n as u64)
    })
}

/// The expiry option of `SET` or `GETEX`: EX s, PX ms, EXAT s, PXAT ms, and KEEPTTL
/// (SET) or PERSIST (GETEX). As in Redis, options that conflict are a syntax error, the
/// same option twice is not (the last counts), and the time is checked only after every
/// option was parsed.
enum TimeOpt {
    None,
    Keep,
    Persist,
    Time { kw: String, n: Vec<u8> },
}

fn parse_set(a: &mut Args) -> Result<RespCommand, Reply> {
    let key = a.bytes()?;
    let value = a.bytes()?;
    let mut cond = SetCond::Always;
    let mut get = false;
    let mut time = TimeOpt::None;
    while a.remaining() > 0 {
        let kw = a.keyword()?;
        match kw.as_str() {
            "NX" if cond != SetCond::IfPresent => cond = SetCond::IfAbsent,
            "XX" if cond != SetCond::IfAbsent => cond = SetCond::IfPresent,
            "GET" => get = true,
            "KEEPTTL" if matches!(time, TimeOpt::None | TimeOpt::Keep) => time = TimeOpt::Keep,
            _ => parse_time_opt(a, kw, &mut time)?,
        }
    }
    let expiry = match time {
        TimeOpt::None => None,
        TimeOpt::Keep => Some(Expiry::Keep),
        TimeOpt::Persist => return Err(syntax_error()),
        TimeOpt::Time { kw, n } => Some(Expiry::Set(time_deadline("set", &kw, &n)?)),
    };
    Ok(RespCommand::Set {
        key,
        value,
        cond,
        get,
        expiry,
    })
}

/// One of EX, PX, EXAT, PXAT (with its argument) into `time`, unless another kind of
/// expiry option came before (the same one again replaces it).
fn parse_time_opt(a: &mut Args, kw: String, time: &mut TimeOpt) -> Result<(), Reply> {
    if !matches!(kw.as_str(), "EX" | "PX" | "EXAT" | "PXAT") || a.remaining() == 0 {
        return Err(syntax_error());
    }
    match time {
        TimeOpt::None => {}
        TimeOpt::Time { kw: before, .. } if *before == kw => {}
        _ => return Err(syntax_error()),
    }
    *time = TimeOpt::Time { kw, n: a.bytes()? };
    Ok(())
}

/// The deadline of an `EX`/`PX`/`EXAT`/`PXAT` option of command `name`.
fn time_deadline(name: &str, kw: &str, n: &[u8]) -> Result<Deadline, Reply> {
    let mut args = Args::new(name, vec![n.to_vec()]);
    let n = args.int()?;
    set_deadline(name, n, kw.starts_with('P'), !kw.ends_with("AT"))
}

fn parse_getex(a: &mut Args) -> Result<RespCommand, Reply> {
    let key = a.bytes()?;
    let mut time = TimeOpt::None;
    while a.remaining() > 0 {
        let kw = a.keyword()?;
        match kw.as_str() {
            "PERSIST" if matches!(time, TimeOpt::None | TimeOpt::Persist) => {
                time = TimeOpt::Persist
            }
            _ => parse_time_opt(a, kw, &mut time)?,
        }
    }
    let change = match time {
        TimeOpt::None => None,
        TimeOpt::Persist => Some(None),
        TimeOpt::Keep => return Err(syntax_error()),
        TimeOpt::Time { kw, n } => Some(Some(time_deadline("getex", &kw, &n)?)),
    };
    Ok(RespCommand::GetEx { key, change })
}

/// `EXPIRE` and its family. As Redis: the options first (an unknown one is `Unsupported
/// option`, NX with another or GT with LT are refused), then the time, which may be
/// negative or zero (the key is then deleted) but must not overflow 64 bits.
fn parse_expire(name: &str, a: &mut Args) -> Result<RespCommand, Reply> {
    let key = a.bytes()?;
    let time = a.bytes()?;
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for opt in a.rest() {
        match String::from_utf8_lossy(&opt).to_ascii_uppercase().as_str() {
            "NX" => nx = true,
            "XX" => xx = true,
            "GT" => gt = true,
            "LT" => lt = true,
            _ => {
                return Err(Frame::error(format!(
                    "ERR Unsupported option {}",
                    clip(&opt)
                )))
            }
        }
    }
    if nx && (xx || gt || lt) {
        return Err(Frame::error(
            "ERR NX and XX, GT or LT options at the same time are not compatible",
        ));
    }
    if gt && lt {
        return Err(Frame::error(
            "ERR GT and LT options at the same time are not compatible",
        ));
    }
    let n = Args::new(name, vec![time]).int()?;
    let ms = if name.starts_with('p') {
        Some(n)
    } else {
        n.checked_mul(1000)
    };
    let relative = !name.ends_with("at");
    let ms = ms
        .filter(|&ms| !relative || ms <= i64::MAX - local_now_ms())
        .ok_or_else(|| invalid_expire(name))?;
    // A time already passed (or now) deletes the key: any such deadline does that alike.
    let ms = ms.max(0) as u64;
    let deadline = if relative {
        Deadline::In(ms)
    } else {
        Deadline::At(ms)
    };
    let when = if nx {
        ExpireCond::IfNone
    } else if gt {
        // `XX GT` is `GT`: a key without a deadline never passes GT.
        ExpireCond::Later
    } else if lt && xx {
        ExpireCond::EarlierIfSome
    } else if lt {
        ExpireCond::Earlier
    } else if xx {
        ExpireCond::IfSome
    } else {
        ExpireCond::Always
    };
    Ok(RespCommand::Expire {
        key,
        deadline,
        when,
    })
}

/// Default and largest `COUNT` of one `SCAN` step.
pub const SCAN_DEFAULT_COUNT: usize = 10;
pub const SCAN_MAX_COUNT: usize = crate::node::MAX_SCAN_LIMIT;

fn parse_scan(a: &mut Args) -> Result<RespCommand, Reply> {
    let c = a.bytes()?;
    let cursor = std::str::from_utf8(&c)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| Frame::error("ERR invalid cursor"))?;
    let mut pattern = None;
    let mut count = SCAN_DEFAULT_COUNT;
    let mut only_strings = true;
    while a.remaining() > 0 {
        match a.keyword()?.as_str() {
            "MATCH" if a.remaining() >= 1 => pattern = Some(a.bytes()?),
            "COUNT" if a.remaining() >= 1 => {
                let n = a.int()?;
                if n < 1 {
                    return Err(syntax_error());
                }
                count = (n as u64).min(SCAN_MAX_COUNT as u64) as usize;
            }
            "TYPE" if a.remaining() >= 1 => {
                only_strings = a.bytes()?.eq_ignore_ascii_case(b"string");
            }
            _ => return Err(syntax_error()),
        }
    }
    Ok(RespCommand::Scan {
        cursor,
        pattern,
        count,
        only_strings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(words: &[&str]) -> Result<RespCommand, Reply> {
        parse(words.iter().map(|s| s.as_bytes().to_vec()).collect())
    }

    fn err(words: &[&str]) -> String {
        match p(words) {
            Err(Frame::Error(m)) => m,
            other => panic!("expected an error for {words:?}, got {other:?}"),
        }
    }

    #[test]
    fn redis_error_shapes() {
        assert_eq!(
            err(&["foo", "a", "b"]),
            "ERR unknown command 'foo', with args beginning with: 'a' 'b' "
        );
        assert_eq!(
            err(&["foo"]),
            "ERR unknown command 'foo', with args beginning with: "
        );
        assert_eq!(
            err(&["GET"]),
            "ERR wrong number of arguments for 'get' command"
        );
        assert_eq!(
            err(&["get", "a", "b"]),
            "ERR wrong number of arguments for 'get' command"
        );
        assert_eq!(
            err(&["mset", "a", "1", "b"]),
            "ERR wrong number of arguments for 'mset' command"
        );
        assert_eq!(err(&["set", "k", "v", "NX", "XX"]), "ERR syntax error");
        assert_eq!(err(&["set", "k", "v", "bogus"]), "ERR syntax error");
        // Expiry options, with Redis' words for each refusal.
        let invalid = |c: &str| format!("ERR invalid expire time in '{c}' command");
        for bad in ["0", "-5"] {
            for opt in ["EX", "PX", "EXAT", "PXAT"] {
                assert_eq!(err(&["set", "k", "v", opt, bad]), invalid("set"));
                assert_eq!(err(&["getex", "k", opt, bad]), invalid("getex"));
            }
            assert_eq!(err(&["setex", "k", bad, "v"]), invalid("setex"));
            assert_eq!(err(&["psetex", "k", bad, "v"]), invalid("psetex"));
        }
        let huge = (i64::MAX / 1000 + 1).to_string();
        assert_eq!(err(&["set", "k", "v", "EX", &huge]), invalid("set"));
        assert_eq!(err(&["set", "k", "v", "EXAT", &huge]), invalid("set"));
        let max = i64::MAX.to_string();
        assert_eq!(err(&["set", "k", "v", "PX", &max]), invalid("set"));
        assert_eq!(err(&["expire", "k", &huge]), invalid("expire"));
        assert_eq!(err(&["pexpire", "k", &max]), invalid("pexpire"));
        assert_eq!(err(&["expireat", "k", &huge]), invalid("expireat"));
        assert_eq!(
            err(&["set", "k", "v", "EX", "x"]),
            "ERR value is not an integer or out of range"
        );
        for conflict in [
            &["EX", "1", "PX", "1"][..],
            &["EX", "1", "KEEPTTL"],
            &["KEEPTTL", "PXAT", "1"],
            &["EX"],
            &["PERSIST"],
        ] {
            let mut w = vec!["set", "k", "v"];
            w.extend_from_slice(conflict);
            assert_eq!(err(&w), "ERR syntax error", "{w:?}");
        }
        for bad in [&["EX", "1", "PERSIST"][..], &["KEEPTTL"], &["NX"], &["PX"]] {
            let mut w = vec!["getex", "k"];
            w.extend_from_slice(bad);
            assert_eq!(err(&w), "ERR syntax error", "{w:?}");
        }
        for nx in [&["NX", "XX"][..], &["gt", "nx"], &["NX", "LT"]] {
            let mut w = vec!["expire", "k", "10"];
            w.extend_from_slice(nx);
            assert_eq!(
                err(&w),
                "ERR NX and XX, GT or LT options at the same time are not compatible"
            );
        }
        assert_eq!(
            err(&["pexpire", "k", "10", "GT", "LT"]),
            "ERR GT and LT options at the same time are not compatible"
        );
        assert_eq!(
            err(&["expire", "k", "10", "sometimes"]),
            "ERR Unsupported option sometimes"
        );
        assert_eq!(
            err(&["expire", "k", "soon"]),
            "ERR value is not an integer or out of range"
        );
        assert_eq!(
            err(&["incrby", "k", "x"]),
            "ERR value is not an integer or out of range"
        );
        assert_eq!(
            err(&["decrby", "k", &i64::MIN.to_string()]),
            "ERR decrement would overflow"
        );
        assert_eq!(err(&["scan", "abc"]), "ERR invalid cursor");
    }

    #[test]
    fn parses_commands() {
        assert_eq!(
            p(&["SeT", "k", "v", "nx", "get"]).unwrap(),
            RespCommand::Set {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                cond: SetCond::IfAbsent,
                get: true,
                expiry: None,
            }
        );
        // Relative times are `In` (resolved with the log's time), absolute ones `At`;
        // the same option twice is allowed (the last counts), as in Redis.
        let set = |w: &[&str]| match p(w).unwrap() {
            RespCommand::Set {
                cond, get, expiry, ..
            } => (cond, get, expiry),
            other => panic!("{other:?}"),
        };
        let at = |d| Some(Expiry::Set(d));
        assert_eq!(
            set(&["set", "k", "v", "ex", "10", "nx", "get"]),
            (SetCond::IfAbsent, true, at(Deadline::In(10_000)))
        );
        assert_eq!(
            set(&["set", "k", "v", "PX", "5", "PX", "7"]),
            (SetCond::Always, false, at(Deadline::In(7)))
        );
        assert_eq!(
            set(&["set", "k", "v", "exat", "2", "xx"]),
            (SetCond::IfPresent, false, at(Deadline::At(2000)))
        );
        assert_eq!(set(&["set", "k", "v", "pxat", "3"]).2, at(Deadline::At(3)));
        assert_eq!(
            set(&["set", "k", "v", "keepttl", "keepttl"]).2,
            Some(Expiry::Keep)
        );
        assert_eq!(set(&["setex", "k", "3", "v"]).2, at(Deadline::In(3000)));
        assert_eq!(set(&["psetex", "k", "3", "v"]).2, at(Deadline::In(3)));
        assert_eq!(
            p(&["getex", "k"]).unwrap(),
            RespCommand::GetEx {
                key: b"k".to_vec(),
                change: None
            }
        );
        assert_eq!(
            p(&["getex", "k", "persist"]).unwrap(),
            RespCommand::GetEx {
                key: b"k".to_vec(),
                change: Some(None)
            }
        );
        assert_eq!(
            p(&["getex", "k", "EX", "2"]).unwrap(),
            RespCommand::GetEx {
                key: b"k".to_vec(),
                change: Some(Some(Deadline::In(2000)))
            }
        );
        let expire = |w: &[&str]| match p(w).unwrap() {
            RespCommand::Expire { deadline, when, .. } => (deadline, when),
            other => panic!("{other:?}"),
        };
        use ExpireCond as E;
        assert_eq!(
            expire(&["expire", "k", "5"]),
            (Deadline::In(5000), E::Always)
        );
        assert_eq!(
            expire(&["pexpire", "k", "5", "nx"]),
            (Deadline::In(5), E::IfNone)
        );
        assert_eq!(
            expire(&["expireat", "k", "5", "xx"]),
            (Deadline::At(5000), E::IfSome)
        );
        assert_eq!(
            expire(&["pexpireat", "k", "5", "xx", "gt"]),
            (Deadline::At(5), E::Later)
        );
        assert_eq!(
            expire(&["expire", "k", "5", "lt", "xx"]),
            (Deadline::In(5000), E::EarlierIfSome)
        );
        // A time already passed deletes the key: no overflow, no refusal.
        assert_eq!(expire(&["expire", "k", "-5"]).0, Deadline::In(0));
        assert_eq!(expire(&["pexpireat", "k", "-5"]).0, Deadline::At(0));
        assert_eq!(
            p(&["pexpiretime", "k"]).unwrap(),
            RespCommand::Ttl {
                key: b"k".to_vec(),
                ms: true,
                absolute: true
            }
        );
        assert_eq!(
            p(&["ttl", "k"]).unwrap(),
            RespCommand::Ttl {
                key: b"k".to_vec(),
                ms: false,
                absolute: false
            }
        );
        assert_eq!(
            p(&["decr", "k"]).unwrap(),
            RespCommand::IncrBy(b"k".to_vec(), -1)
        );
        assert_eq!(
            p(&["mset", "a", "1", "b", "2"]).unwrap(),
            RespCommand::MSet(vec![
                (b"a".to_vec(), b"1".to_vec()),
                (b"b".to_vec(), b"2".to_vec())
            ])
        );
        assert_eq!(
            p(&["scan", "0", "match", "k*", "count", "5"]).unwrap(),
            RespCommand::Scan {
                cursor: 0,
                pattern: Some(b"k*".to_vec()),
                count: 5,
                only_strings: true
            }
        );
        assert_eq!(
            p(&["casver", "k", "7", "new"]).unwrap(),
            RespCommand::CasVer(b"k".to_vec(), 7, b"new".to_vec())
        );
        assert_eq!(
            p(&["hello", "3", "setname", "me"]).unwrap(),
            RespCommand::Hello {
                proto: Some(3),
                name: Some(b"me".to_vec()),
                auth: None,
            }
        );
        assert_eq!(
            p(&["hello", "3", "auth", "u", "pw"]).unwrap(),
            RespCommand::Hello {
                proto: Some(3),
                name: None,
                auth: Some((b"u".to_vec(), b"pw".to_vec())),
            }
        );
        assert_eq!(
            p(&["auth", "pw"]).unwrap(),
            RespCommand::Auth {
                user: None,
                password: b"pw".to_vec()
            }
        );
        assert_eq!(
            p(&["acl", "setuser", "bob", "on", ">pw"]).unwrap(),
            RespCommand::Acl(super::Acl::SetUser {
                name: b"bob".to_vec(),
                rules: vec![b"on".to_vec(), b">pw".to_vec()]
            })
        );
        assert_eq!(
            p(&["client", "setinfo", "lib-name", "redis-py"]).unwrap(),
            RespCommand::ClientSetInfo
        );
        assert_eq!(
            p(&["command", "docs", "get"]).unwrap(),
            RespCommand::CommandDocs
        );
    }

    #[test]
    fn every_listed_command_parses_with_some_arguments() {
        for s in COMMANDS {
            let n = s.arity.unsigned_abs() as usize;
            let mut words = vec![s.name.to_string()];
            words.extend(std::iter::repeat_n("1".to_string(), n.saturating_sub(1)));
            let r = parse(words.iter().map(|w| w.as_bytes().to_vec()).collect());
            if let Err(Frame::Error(m)) = &r {
                assert!(!m.contains("not implemented"), "{}: {m}", s.name);
            }
        }
    }
}
