//! The commands paxosdb understands: the command table (names, arities, flags and key
//! positions, which `COMMAND` also reports) and parsing a request into a [`RespCommand`].
//!
//! Parsing checks the arity first, as Redis does, so a wrong argument count always gets
//! `ERR wrong number of arguments for '<name>' command`, and an unknown name always gets
//! `ERR unknown command '<name>', with args beginning with: '<arg>' ...`.

use super::frame::Frame;
use super::parse::{not_integer, syntax_error, wrong_arity, Args, Reply};
use crate::command::SetCond;

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
    Set {
        key: Vec<u8>,
        value: Vec<u8>,
        cond: SetCond,
        get: bool,
    },
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
    /// `TTL key` / `PTTL key`: -1 (no expiry) or -2 (absent).
    Ttl(Vec<u8>),
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
        "ttl" | "pttl" => RespCommand::Ttl(a.bytes()?),
        "multi" => RespCommand::Multi,
        "exec" => RespCommand::Exec,
        "discard" => RespCommand::Discard,
        "watch" => RespCommand::Watch(a.rest()),
        "unwatch" => RespCommand::Unwatch,
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

/// The refusal of expiry options.
pub fn no_ttl() -> Reply {
    Frame::error("ERR paxosdb has no TTLs yet")
}

fn parse_set(a: &mut Args) -> Result<RespCommand, Reply> {
    let key = a.bytes()?;
    let value = a.bytes()?;
    let mut cond = SetCond::Always;
    let mut get = false;
    while a.remaining() > 0 {
        match a.keyword()?.as_str() {
            "NX" if cond == SetCond::Always => cond = SetCond::IfAbsent,
            "XX" if cond == SetCond::Always => cond = SetCond::IfPresent,
            "GET" => get = true,
            "EX" | "PX" | "EXAT" | "PXAT" | "KEEPTTL" => return Err(no_ttl()),
            _ => return Err(syntax_error()),
        }
    }
    Ok(RespCommand::Set {
        key,
        value,
        cond,
        get,
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
        assert_eq!(
            err(&["set", "k", "v", "EX", "10"]),
            "ERR paxosdb has no TTLs yet"
        );
        assert_eq!(
            err(&["set", "k", "v", "keepttl"]),
            "ERR paxosdb has no TTLs yet"
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
                get: true
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
