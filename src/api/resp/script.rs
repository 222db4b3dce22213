//! Lua scripts: `EVAL`, `EVALSHA`, `EVAL_RO`, `EVALSHA_RO` and `SCRIPT LOAD | EXISTS |
//! FLUSH | KILL`, as Redis clients use them (redis-py's `Lock.release` and `extend`,
//! rate limiters, compare-and-delete).
//!
//! Redis runs a script inside its single thread: nothing interleaves with it. paxosdb
//! runs it on the node that received it, against a [`Rehearsal`] of the store (the code
//! that applies entries, writing nothing), and then proposes what it wrote as **one
//! transaction** guarded by the version of every key it read. Where that transaction is
//! applied, either none of those keys changed since — then every write meets the state
//! the script saw and does what it did in the rehearsal, and the script's reply stands —
//! or one did, nothing is applied, and the script runs again (at most
//! [`MAX_ATTEMPTS`] times; then `-TRYAGAIN`, nothing applied). So a script is atomic and
//! linearizable like a `MULTI`/`EXEC` block with `WATCH` on every key it touched, whatever
//! it computes in between.
//!
//! Inside a script, `redis.call` and `redis.pcall` run the same commands with the same
//! replies as a `MULTI` block can hold (the key reads and writes of [`Plan::of`]), plus
//! `TTL` and its family; anything else (key walks, connection and server commands,
//! another script) is refused as Redis refuses commands not allowed from scripts.
//! Conversions between Lua and replies are Redis's: integers to numbers, bulk strings to
//! strings, nil to `false`, arrays to tables, status and error replies to `{ok=...}` and
//! `{err=...}`; a script's number is returned as an integer (truncated), `true` as 1,
//! `false` and `nil` as nil. As in Redis, a script that fails after writing keeps its
//! writes before the failure, and answers the error.
//!
//! # Invariants
//!
//! - Nothing a script does reaches the store except through its one transaction, and that
//!   transaction applies only if every key the script read still has the version the
//!   script saw (its [`Rehearsal::compares`]).
//! - Bounded: a script runs at most [`TIME_LIMIT`] and [`MEMORY_LIMIT`] (past either it is
//!   stopped with an error and applies nothing), makes at most [`MAX_TXN_OPS`] writes,
//!   answers within the reply limit, and at most [`MAX_RUNNING`] run at once per node
//!   (the others wait their turn). Only text chunks load (no Lua bytecode), and the
//!   libraries that reach files, processes or the loader (`io`, `os`, `package`,
//!   `debug`, `load`, `dofile`, `loadfile`, `require`, `print`) are not there.
//! - The script cache is per node and bounded ([`MAX_CACHED`] scripts, [`MAX_CACHED_BYTES`]
//!   in all; the oldest go first): `EVALSHA` of a script this node forgot or never saw
//!   answers `-NOSCRIPT`, on which clients send the script again.

use super::cmd::{self, RespCommand};
use super::exec::{error_reply, ttl_reply};
use super::frame::{Frame, FrameLimits};
use super::plan::Plan;
use crate::auth::Identity;
use crate::command::{Deadline, Expiry, Limits, Txn, TxnOp, WriteOp, MAX_TXN_OPS};
use crate::kv::rehearsal::Rehearsal;
use crate::kv::KvStore;
use mlua::{HookTriggers, Lua, LuaOptions, MultiValue, StdLib, Value, VmState};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long one run of a script may take.
pub const TIME_LIMIT: Duration = Duration::from_secs(5);
/// The memory one script's Lua state may use.
pub const MEMORY_LIMIT: usize = 64 * 1024 * 1024;
/// Scripts running at once on one node.
pub const MAX_RUNNING: usize = 8;
/// Runs of one script before it gives up because its keys kept changing.
pub const MAX_ATTEMPTS: usize = 16;
/// Scripts a node's cache holds, and their bytes in all.
pub const MAX_CACHED: usize = 4096;
pub const MAX_CACHED_BYTES: usize = 64 * 1024 * 1024;
/// Lua instructions between two checks of a script's time. Small, since a loop of a few
/// instructions around a costly C call (a large string operation, a full collection)
/// makes one call per few instructions.
const HOOK_EVERY: u32 = 100;
/// How deep a table a script returns may nest.
const MAX_REPLY_DEPTH: usize = 64;

/// A node's cached scripts, by SHA1 (lower-case hex).
#[derive(Default)]
pub struct Scripts {
    bodies: HashMap<String, Arc<Vec<u8>>>,
    order: VecDeque<String>,
    bytes: usize,
}

/// The SHA1 of `body` in lower-case hex, as Redis names scripts.
pub fn sha1_hex(body: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, body);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

impl Scripts {
    /// Caches `body` (forgetting the oldest scripts beyond the bounds); its SHA1.
    pub fn insert(&mut self, body: Vec<u8>) -> (String, Arc<Vec<u8>>) {
        let sha = sha1_hex(&body);
        if let Some(b) = self.bodies.get(&sha) {
            return (sha, b.clone());
        }
        let body = Arc::new(body);
        self.bytes += body.len();
        self.bodies.insert(sha.clone(), body.clone());
        self.order.push_back(sha.clone());
        while self.order.len() > MAX_CACHED || self.bytes > MAX_CACHED_BYTES {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(b) = self.bodies.remove(&old) {
                self.bytes -= b.len();
            }
        }
        (sha, body)
    }

    /// The script named by `sha` (any case), if cached.
    pub fn get(&self, sha: &[u8]) -> Option<Arc<Vec<u8>>> {
        let sha = String::from_utf8_lossy(sha).to_ascii_lowercase();
        self.bodies.get(&sha).cloned()
    }

    pub fn flush(&mut self) {
        *self = Scripts::default();
    }
}

/// What a script runs as and within.
#[derive(Clone)]
pub struct Context {
    pub identity: Identity,
    pub limits: Limits,
    /// `EVAL_RO`: writes are refused.
    pub read_only: bool,
    pub max_reply_bytes: usize,
    /// How long one run may take ([`TIME_LIMIT`]).
    pub time_limit: Duration,
}

/// One run of a script: its reply, and the transaction that makes its writes happen
/// (`None`: it read and wrote no key).
pub struct Run {
    pub reply: Frame,
    pub txn: Option<Txn>,
}

/// The state `redis.call` works on during one run.
struct Calls<'a> {
    rehearsal: Rehearsal<'a>,
    writes: Vec<WriteOp>,
    /// The bytes of `writes` in a transaction.
    write_bytes: usize,
    /// Set once the script touched more than one transaction holds (or read more than
    /// its memory): why. It then runs no more commands, applies nothing, and answers that.
    over: Option<String>,
    ctx: &'a Context,
    /// The error reply `redis.call` last raised, to answer it as it was.
    raised: Option<String>,
}

impl Calls<'_> {
    /// One command, as `redis.call` runs it: its reply (maybe an error reply).
    fn call(&mut self, words: Vec<Vec<u8>>) -> Frame {
        // Past its bounds a script runs no more commands (and applies nothing).
        if let Some(over) = &self.over {
            return Frame::Error(over.clone());
        }
        let c = match cmd::parse(words) {
            Ok(c) => c,
            Err(e) => return e,
        };
        let limits = &self.ctx.limits;
        let plan = match c {
            RespCommand::Ttl { key, ms, absolute } => return self.ttl(key, ms, absolute),
            // The version of a key the script wrote is the revision its write gets where
            // the transaction applies, unknown while the script runs.
            RespCommand::GetVer(_) | RespCommand::CasVer(..) => {
                return Frame::error(
                    "ERR GETVER and CASVER are not allowed from scripts (a script's writes \
                     get their versions where they apply, after it ran)",
                )
            }
            c => match Plan::of(c, limits) {
                Ok(p) => p,
                Err(_) => return Frame::error("ERR This Redis command is not allowed from script"),
            },
        };
        if let Err(e) = plan.check(&self.ctx.identity) {
            return error_reply(e);
        }
        // The script's time stands still while it runs (as in Redis): a relative deadline
        // counts from the rehearsal's time, here and where the writes apply alike.
        let time = self.rehearsal.time();
        let ops: Vec<TxnOp> = (plan.txn_ops(limits).into_iter())
            .map(|op| freeze_deadline(op, time))
            .collect();
        let writes = ops
            .iter()
            .filter(|op| matches!(op, TxnOp::Write(_)))
            .count();
        if writes > 0 && self.ctx.read_only {
            return Frame::error("ERR Write commands are not allowed from read-only scripts.");
        }
        let results = match self.rehearsal.run(&ops) {
            Ok(Ok(results)) => results,
            Ok(Err(why)) => return Frame::error(format!("ERR {why}")),
            Err(e) => return error_reply(e),
        };
        for op in ops {
            if let TxnOp::Write(w) = op {
                self.write_bytes += w.size();
                self.writes.push(w);
            }
        }
        // What the script touched must fit one transaction, and is all it may hold.
        let (keys, key_bytes, loaded) = self.rehearsal.seen();
        let (n, bytes) = (keys + self.writes.len(), key_bytes + self.write_bytes + 16);
        let over = if n > MAX_TXN_OPS || bytes > 4 * limits.max_value {
            Some(format!(
                "ERR the script's keys and writes do not fit one transaction ({n} keys and \
                 writes, at most {MAX_TXN_OPS}; {bytes} bytes, at most {}); nothing was \
                 applied",
                4 * limits.max_value
            ))
        } else if loaded > MEMORY_LIMIT {
            Some(format!(
                "ERR the script read more than {} MiB of keys and values; nothing was applied",
                MEMORY_LIMIT >> 20
            ))
        } else {
            None
        };
        if let Some(over) = over {
            self.over = Some(over.clone());
            return Frame::Error(over);
        }
        plan.reply_in_txn(
            limits,
            &mut results.into_iter(),
            self.ctx.max_reply_bytes,
            false,
        )
    }

    /// `TTL`, `PTTL`, `EXPIRETIME`, `PEXPIRETIME` against the rehearsal.
    fn ttl(&mut self, key: Vec<u8>, ms: bool, absolute: bool) -> Frame {
        if let Err(e) = self.ctx.identity.check_read(&key) {
            return error_reply(e);
        }
        if self.ctx.limits.check_key(&key).is_err() {
            return Frame::Integer(-2);
        }
        match self.rehearsal.deadline(&key) {
            Ok((deadline, now)) => ttl_reply(deadline, now, ms, absolute),
            Err(e) => error_reply(e),
        }
    }
}

/// Runs `body` once with `keys` and `args` against the store as it is now (see the module
/// docs). Synchronous: called on the blocking pool.
pub fn run(store: &KvStore, body: &[u8], keys: &[Vec<u8>], args: &[Vec<u8>], ctx: &Context) -> Run {
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let rehearsal = match store.rehearse(clock) {
        Ok(r) => r,
        Err(e) => {
            return Run {
                reply: error_reply(e),
                txn: None,
            }
        }
    };
    let calls = RefCell::new(Calls {
        rehearsal,
        writes: Vec::new(),
        write_bytes: 0,
        over: None,
        ctx,
        raised: None,
    });
    let stop = Rc::new(Cell::new(None));
    let (reply, stopped) = match lua_run(&calls, &stop, body, keys, args, ctx) {
        Ok(f) => (f, false),
        Err(e) => {
            let calls = calls.borrow();
            failed(&e, stop.get(), ctx.time_limit, calls.raised.as_deref())
        }
    };
    let calls = calls.into_inner();
    // A script stopped by a limit applies nothing; one that failed otherwise keeps the
    // writes it made before failing, as in Redis.
    // Past its bounds, that is the answer, even if the script caught the error.
    let reply = match &calls.over {
        Some(over) => Frame::Error(over.clone()),
        None => reply,
    };
    let applies = !stopped && calls.over.is_none();
    let txn = (applies && (calls.rehearsal.read_any() || !calls.writes.is_empty())).then(|| Txn {
        compare: calls.rehearsal.compares(),
        success: calls.writes.into_iter().map(TxnOp::Write).collect(),
        failure: vec![],
    });
    Run { reply, txn }
}

/// Why a limit stopped a script.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Time,
    Memory,
}

/// The error a script stopped by a limit raises (and raises again past every `pcall`).
fn stopped_error(stop: Stop, limit: Duration) -> mlua::Error {
    mlua::Error::RuntimeError(stopped_message(stop, limit))
}

fn stopped_message(stop: Stop, limit: Duration) -> String {
    match stop {
        Stop::Time => format!(
            "BUSY the script ran longer than {limit:?} and was stopped; nothing was applied"
        ),
        Stop::Memory => format!(
            "BUSY the script used more than {} MiB of memory and was stopped; nothing was \
             applied",
            MEMORY_LIMIT >> 20
        ),
    }
}

/// The error reply of a script that failed with `e`, and whether a limit stopped it
/// (`stopped`, or out of memory): an error reply `redis.call` raised as it was, anything
/// else as `ERR` and Lua's message (its first line).
fn failed(
    e: &mlua::Error,
    stopped: Option<Stop>,
    limit: Duration,
    raised: Option<&str>,
) -> (Frame, bool) {
    let mut root = e;
    while let mlua::Error::CallbackError { cause, .. } = root {
        root = cause;
    }
    if let Some(stop) = stopped {
        return (Frame::Error(stopped_message(stop, limit)), true);
    }
    let message = match root {
        mlua::Error::RuntimeError(m) => m.clone(),
        mlua::Error::MemoryError(_) => {
            return (Frame::Error(stopped_message(Stop::Memory, limit)), true);
        }
        mlua::Error::SyntaxError { message, .. } => {
            let first = clip(message.lines().next().unwrap_or_default());
            return (
                Frame::error(format!("ERR Error compiling script: {first}")),
                false,
            );
        }
        other => other.to_string(),
    };
    if raised == Some(message.as_str()) {
        return (Frame::Error(message), false);
    }
    let first = clip(message.lines().next().unwrap_or_default());
    // paxosdb's own refusals (the library's guards) carry their kind already.
    match first.starts_with("ERR ") {
        true => (Frame::Error(first), false),
        false => (Frame::error(format!("ERR {first}")), false),
    }
}

/// At most the first 4 KiB of a script's error message (`error(("x"):rep(3e7))` is
/// allowed, its 30 MB reply is not).
fn clip(message: &str) -> String {
    match message.char_indices().nth(4096) {
        Some((i, _)) => format!("{}...", &message[..i]),
        None => message.to_string(),
    }
}

/// Runs the script in a fresh, limited Lua state with `redis` bound to `calls`.
fn lua_run(
    calls: &RefCell<Calls<'_>>,
    stop: &Rc<Cell<Option<Stop>>>,
    body: &[u8],
    keys: &[Vec<u8>],
    args: &[Vec<u8>],
    ctx: &Context,
) -> mlua::Result<Frame> {
    let limit = ctx.time_limit;
    let libs = StdLib::TABLE | StdLib::STRING | StdLib::MATH | StdLib::UTF8;
    let lua = Lua::new_with(libs, LuaOptions::new())?;
    lua.set_memory_limit(MEMORY_LIMIT)?;
    let clock = Clock {
        deadline: Instant::now() + limit,
        stop: stop.clone(),
        limit,
    };
    let hook = clock.clone();
    lua.set_hook(
        HookTriggers::new().every_nth_instruction(HOOK_EVERY),
        move |_, _| hook.check().map(|()| VmState::Continue),
    );
    let globals = lua.globals();
    for name in [
        "dofile",
        "loadfile",
        "load",
        "loadstring",
        "require",
        "print",
    ] {
        globals.set(name, Value::Nil)?;
    }
    // `pcall` and `xpcall` may not swallow a limit: past it, they raise it again.
    for name in ["pcall", "xpcall"] {
        let raw: mlua::Function = globals.get(name)?;
        let flag = stop.clone();
        let clock = clock.clone();
        let wrapped = lua.create_function(move |_, args: MultiValue| {
            clock.check()?;
            let r: MultiValue = raw.call(args)?;
            let out_of_memory = match (r.front(), r.get(1)) {
                (Some(Value::Boolean(false)), Some(Value::String(e))) => {
                    e.as_bytes().starts_with(b"not enough memory")
                }
                (Some(Value::Boolean(false)), Some(Value::Error(e))) => is_memory(e),
                _ => false,
            };
            if out_of_memory && flag.get().is_none() {
                flag.set(Some(Stop::Memory));
            }
            match flag.get() {
                Some(stop) => Err(stopped_error(stop, limit)),
                None => Ok(r),
            }
        })?;
        globals.set(name, wrapped)?;
    }
    guard_library(&lua, &clock)?;
    let strings = |list: &[Vec<u8>]| -> mlua::Result<mlua::Table> {
        let t = lua.create_table_with_capacity(list.len(), 0)?;
        for (i, w) in list.iter().enumerate() {
            t.raw_set(i + 1, lua.create_string(w)?)?;
        }
        Ok(t)
    };
    globals.set("KEYS", strings(keys)?)?;
    globals.set("ARGV", strings(args)?)?;
    let redis = lua.create_table()?;
    redis.set(
        "sha1hex",
        lua.create_function(|_, s: mlua::String| Ok(sha1_hex(&s.as_bytes())))?,
    )?;
    let reply_table = |field: &'static str| {
        lua.create_function(move |lua, msg: mlua::String| {
            let t = lua.create_table()?;
            t.set(field, msg)?;
            Ok(t)
        })
    };
    redis.set("error_reply", reply_table("err")?)?;
    redis.set("status_reply", reply_table("ok")?)?;
    redis.set("log", lua.create_function(|_, _: MultiValue| Ok(()))?)?;
    redis.set(
        "setresp",
        lua.create_function(|_, v: i64| match v {
            2 => Ok(()),
            _ => Err(mlua::Error::RuntimeError(
                "ERR paxosdb scripts speak RESP2 only".into(),
            )),
        })?,
    )?;
    redis.set("set_repl", lua.create_function(|_, _: MultiValue| Ok(()))?)?;
    redis.set("replicate_commands", lua.create_function(|_, ()| Ok(true))?)?;
    for (name, v) in [
        ("LOG_DEBUG", 0),
        ("LOG_VERBOSE", 1),
        ("LOG_NOTICE", 2),
        ("LOG_WARNING", 3),
        ("REPL_NONE", 0),
        ("REPL_AOF", 1),
        ("REPL_SLAVE", 2),
        ("REPL_REPLICA", 2),
        ("REPL_ALL", 3),
    ] {
        redis.set(name, v)?;
    }
    let max_args = FrameLimits::for_max_value(ctx.limits.max_value).max_frame;
    lua.scope(|scope| {
        let call = |protected: bool| {
            scope.create_function(move |lua, args: MultiValue| {
                let words = words(args, max_args)?;
                let reply = calls.borrow_mut().call(words);
                match reply {
                    Frame::Error(m) if !protected => {
                        calls.borrow_mut().raised = Some(m.clone());
                        Err(mlua::Error::RuntimeError(m))
                    }
                    f => to_lua(lua, f),
                }
            })
        };
        redis.set("call", call(false)?)?;
        redis.set("pcall", call(true)?)?;
        globals.set("redis", redis.clone())?;
        let value = (lua.load(body))
            .set_name("@user_script")
            .set_mode(mlua::ChunkMode::Text)
            .eval::<Value>()?;
        let mut budget = ctx.max_reply_bytes;
        Ok(from_lua(&value, 0, &mut budget).unwrap_or_else(|over| over))
    })
}

/// The arguments of `redis.call`: strings and numbers, as Redis takes them.
fn words(args: MultiValue, max_bytes: usize) -> mlua::Result<Vec<Vec<u8>>> {
    let bad = || {
        mlua::Error::RuntimeError(
            "ERR Lua redis lib command arguments must be strings or integers".into(),
        )
    };
    if args.is_empty() {
        return Err(mlua::Error::RuntimeError(
            "ERR Please specify at least one argument for this redis lib call".into(),
        ));
    }
    // Counted before anything is copied: as much as one request may carry.
    let len = |v: &Value| match v {
        Value::String(s) => s.as_bytes().len(),
        _ => 24,
    };
    let total: usize = args.iter().map(len).sum();
    if total > max_bytes {
        return Err(mlua::Error::RuntimeError(format!(
            "ERR the arguments of one redis.call may hold at most {max_bytes} bytes, as one \
             request may"
        )));
    }
    args.into_iter()
        .map(|v| match v {
            Value::String(s) => Ok(s.as_bytes().to_vec()),
            Value::Integer(i) => Ok(i.to_string().into_bytes()),
            Value::Number(n) if n.fract() == 0.0 && n.abs() < 1e17 => {
                Ok((n as i64).to_string().into_bytes())
            }
            Value::Number(n) => Ok(format!("{n}").into_bytes()),
            _ => Err(bad()),
        })
        .collect()
}

/// A reply as Redis gives it to Lua.
fn to_lua(lua: &Lua, f: Frame) -> mlua::Result<Value> {
    Ok(match f {
        Frame::Integer(i) => Value::Integer(i),
        Frame::Bulk(b) => Value::String(lua.create_string(&b)?),
        Frame::Null => Value::Boolean(false),
        Frame::Boolean(b) => Value::Integer(i64::from(b)),
        Frame::Double(d) => Value::String(lua.create_string(d.to_string())?),
        Frame::Simple(s) => {
            let t = lua.create_table()?;
            t.set("ok", s)?;
            Value::Table(t)
        }
        Frame::Error(s) => {
            let t = lua.create_table()?;
            t.set("err", s)?;
            Value::Table(t)
        }
        Frame::Array(items) => {
            let t = lua.create_table_with_capacity(items.len(), 0)?;
            for (i, item) in items.into_iter().enumerate() {
                t.raw_set(i + 1, to_lua(lua, item)?)?;
            }
            Value::Table(t)
        }
        Frame::Map(pairs) => {
            let t = lua.create_table_with_capacity(pairs.len() * 2, 0)?;
            for (i, (k, v)) in pairs.into_iter().enumerate() {
                t.raw_set(2 * i + 1, to_lua(lua, k)?)?;
                t.raw_set(2 * i + 2, to_lua(lua, v)?)?;
            }
            Value::Table(t)
        }
        Frame::Encoded(_) => {
            return Err(mlua::Error::RuntimeError(
                "ERR internal: an encoded reply inside a script".into(),
            ))
        }
    })
}

/// A script's return value as Redis answers it, within `budget` bytes: every element
/// is charged its own size and its bytes (a table holding one big string a million times
/// costs a million copies), so the reply built is never much larger than the budget.
fn from_lua(v: &Value, depth: usize, budget: &mut usize) -> Result<Frame, Frame> {
    let mut take = |n: usize| match spend(budget, n + std::mem::size_of::<Frame>()) {
        true => Ok(()),
        false => Err(Frame::error(
            "ERR the script's reply would exceed max_reply_bytes",
        )),
    };
    Ok(match v {
        Value::Nil | Value::Boolean(false) => Frame::Null,
        Value::Boolean(true) => Frame::Integer(1),
        Value::Integer(i) => Frame::Integer(*i),
        Value::Number(n) => Frame::Integer(*n as i64),
        Value::String(s) => {
            let b = s.as_bytes();
            take(b.len())?;
            Frame::Bulk(b.to_vec())
        }
        Value::Table(t) => {
            // Charged before it is copied.
            let mut text = |field: &str| match t.raw_get::<Value>(field) {
                Ok(Value::String(s)) => match take(s.as_bytes().len()) {
                    Ok(()) => Ok(Some(s.to_string_lossy())),
                    Err(over) => Err(over),
                },
                _ => Ok(None),
            };
            if let Some(e) = text("err")? {
                return Ok(Frame::Error(e));
            }
            if let Some(ok) = text("ok")? {
                return Ok(Frame::Simple(ok));
            }
            take(0)?;
            if depth >= MAX_REPLY_DEPTH {
                return Ok(Frame::error("ERR reached lua stack limit"));
            }
            let mut items = Vec::new();
            for i in 1.. {
                let item = match t.raw_get::<Value>(i) {
                    Ok(Value::Nil) | Err(_) => break,
                    Ok(item) => item,
                };
                items.push(from_lua(&item, depth + 1, budget)?);
            }
            Frame::Array(items)
        }
        _ => Frame::Null,
    })
}

/// Takes `n` bytes from `budget`, if it has them.
fn spend(budget: &mut usize, n: usize) -> bool {
    match budget.checked_sub(n) {
        Some(left) => {
            *budget = left;
            true
        }
        None => false,
    }
}

#[cfg(test)]
#[path = "script_tests.rs"]
mod tests;

/// `op` with a relative deadline made absolute at `time` (what it resolves to when
/// applied at that time).
fn freeze_deadline(op: TxnOp, time: u64) -> TxnOp {
    let fix = |d: Deadline| Deadline::At(d.resolve(time));
    match op {
        TxnOp::Write(WriteOp::SetExpiring {
            key,
            value,
            cond,
            expiry: Expiry::Set(d),
        }) => TxnOp::Write(WriteOp::SetExpiring {
            key,
            value,
            cond,
            expiry: Expiry::Set(fix(d)),
        }),
        TxnOp::Write(WriteOp::Expire {
            key,
            deadline: Some(d),
            when,
        }) => TxnOp::Write(WriteOp::Expire {
            key,
            deadline: Some(fix(d)),
            when,
        }),
        op => op,
    }
}

/// Whether `e` is running out of memory (maybe raised inside a callback).
fn is_memory(mut e: &mlua::Error) -> bool {
    while let mlua::Error::CallbackError { cause, .. } = e {
        e = cause;
    }
    matches!(e, mlua::Error::MemoryError(_))
}

/// About the worst-case steps of matching `pattern` (m bytes) anywhere in `n` bytes:
/// (n + 1) ^ (q + 1) × (m + 1), q the pattern's repetitions (`*`, `+`, `-`, `?` outside
/// sets and escapes, each balance `%bxy` and each back-reference `%1`..`%9`, which may
/// scan the rest of the subject).
fn match_steps(n: usize, pattern: &[u8]) -> f64 {
    let mut q = 0;
    let mut i = 0;
    while i < pattern.len() {
        match pattern[i] {
            // `%bxy`: two delimiters follow, whatever they are.
            b'%' if pattern.get(i + 1) == Some(&b'b') => {
                q += 1;
                i += 3;
            }
            // A back-reference compares up to the rest of the subject at every try.
            b'%' if pattern.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                q += 1;
                i += 1;
            }
            b'%' => i += 1,
            b'[' => {
                // A set, up to its closing bracket (one right after `[` or `[^` is in it).
                i += 1;
                if pattern.get(i) == Some(&b'^') {
                    i += 1;
                }
                if pattern.get(i) == Some(&b']') {
                    i += 1;
                }
                while i < pattern.len() && pattern[i] != b']' {
                    if pattern[i] == b'%' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'*' | b'+' | b'-' | b'?' => q += 1,
            _ => {}
        }
        i += 1;
    }
    (n as f64 + 1.0).powi(q + 1) * (pattern.len() as f64 + 1.0)
}

/// A run's time limit, as the hook and the library's guards check it.
#[derive(Clone)]
struct Clock {
    deadline: Instant,
    stop: Rc<Cell<Option<Stop>>>,
    limit: Duration,
}

impl Clock {
    /// An error once the run is past its time (or stopped otherwise), from then on.
    fn check(&self) -> mlua::Result<()> {
        if self.stop.get().is_none() && Instant::now() > self.deadline {
            self.stop.set(Some(Stop::Time));
        }
        match self.stop.get() {
            Some(stop) => Err(stopped_error(stop, self.limit)),
            None => Ok(()),
        }
    }
}

/// The most steps a script's pattern match or sort may take in the worst case.
const MAX_C_STEPS: f64 = 1e8;
/// The most elements one `table.move` of a script may move.
const MAX_MOVE: i64 = 10_000_000;

/// A refusal of a library call whose work would be unbounded by the time limit.
fn too_long(what: &str) -> mlua::Error {
    mlua::Error::RuntimeError(format!(
        "ERR {what} could take too long in a script (paxosdb bounds the work of one call of \
         Lua's C library); use smaller strings or tables, or simpler patterns"
    ))
}

/// Lua's library runs in C, where the time limit's hook never runs, and some of it can
/// work for hours on inputs that fit in memory. Every guarded function checks the time
/// first (a loop of a few instructions around a costly call), then refuses a call whose
/// worst case is out of bounds:
/// - `string.find`, `match`, `gmatch`, `gsub`: pattern matching backtracks (see
///   [`match_steps`]; `gsub` also copies its replacement per match);
/// - `string.rep` of empty strings loops without allocating: answered at once;
/// - `table.sort` compares strings byte by byte: n log n × the longest string;
/// - `table.move` loops over any range of indexes (numeric strings included);
/// - `setmetatable` refuses `__gc` (Lua turns hooks off in finalizers, and runs the
///   rest when the state closes) and `__len` (`table.insert`, `remove`, `concat`,
///   `unpack` loop up to the length it makes up);
/// - `collectgarbage` only checks the time.
fn guard_library(lua: &Lua, clock: &Clock) -> mlua::Result<()> {
    type Check = fn(&Lua, &MultiValue) -> mlua::Result<Option<MultiValue>>;
    let globals = lua.globals();
    let string: mlua::Table = globals.get("string")?;
    let table: mlua::Table = globals.get("table")?;
    let guards: [(&mlua::Table, &str, Check); 10] = [
        (&string, "find", |_, a| match_guard("string.find", a, false)),
        (&string, "match", |_, a| {
            match_guard("string.match", a, false)
        }),
        (&string, "gmatch", |_, a| {
            match_guard("string.gmatch", a, false)
        }),
        (&string, "gsub", |_, a| match_guard("string.gsub", a, true)),
        (&string, "rep", |lua, a| {
            let empty = |v: Option<&Value>| match v {
                Some(Value::String(s)) => s.as_bytes().is_empty(),
                None | Some(Value::Nil) => true,
                _ => false,
            };
            if !(empty(a.front()) && empty(a.get(2))) {
                return Ok(None);
            }
            let empty = Value::String(lua.create_string("")?);
            Ok(Some(MultiValue::from_iter([empty])))
        }),
        (&table, "sort", |_, a| {
            if let (Some(Value::Table(t)), None | Some(Value::Nil)) = (a.front(), a.get(1)) {
                let n = t.raw_len();
                let mut longest = 0;
                for i in 1..=n {
                    if let Ok(Value::String(s)) = t.raw_get::<Value>(i) {
                        longest = longest.max(s.as_bytes().len());
                    }
                }
                let n = n as f64 + 1.0;
                if n * n.log2().max(1.0) * (longest as f64 + 1.0) > MAX_C_STEPS {
                    return Err(too_long("table.sort of these strings"));
                }
            }
            Ok(None)
        }),
        (&table, "move", |lua, a| {
            let int =
                |i: usize| (a.get(i).cloned()).and_then(|v| lua.coerce_integer(v).ok().flatten());
            if let (Some(f), Some(e)) = (int(1), int(2)) {
                if e.saturating_sub(f) >= MAX_MOVE {
                    return Err(too_long("table.move of that many elements"));
                }
            }
            Ok(None)
        }),
        (&globals, "setmetatable", |_, a| {
            if let Some(Value::Table(mt)) = a.get(1) {
                for field in ["__gc", "__len"] {
                    if !matches!(mt.raw_get::<Value>(field)?, Value::Nil) {
                        return Err(mlua::Error::RuntimeError(format!(
                            "ERR scripts cannot set {field} metamethods"
                        )));
                    }
                }
            }
            Ok(None)
        }),
        (&globals, "collectgarbage", |_, _| Ok(None)),
        (&string, "format", |_, _| Ok(None)),
    ];
    for (t, name, check) in guards {
        let raw: mlua::Function = t.get(name)?;
        let clock = clock.clone();
        let wrapped = lua.create_function(move |lua, args: MultiValue| {
            clock.check()?;
            match check(lua, &args)? {
                Some(answer) => Ok(answer),
                None => raw.call::<MultiValue>(args),
            }
        })?;
        t.set(name, wrapped)?;
    }
    Ok(())
}

/// Refuses a pattern match whose worst case passes [`MAX_C_STEPS`] (see [`match_steps`];
/// a plain `find` compares the pattern at every place; `gsub`'s replacement string is
/// copied at every match). Numbers are matched as their text, a few dozen bytes.
fn match_guard(what: &str, args: &MultiValue, replaces: bool) -> mlua::Result<Option<MultiValue>> {
    let len = |v: Option<&Value>| match v {
        Some(Value::String(s)) => Some(s.as_bytes().len()),
        Some(Value::Integer(_) | Value::Number(_)) => Some(48),
        _ => None,
    };
    let plain = what == "string.find"
        && matches!(args.get(3), Some(v) if !matches!(v, Value::Nil | Value::Boolean(false)));
    let (Some(n), Some(m)) = (len(args.front()), len(args.get(1))) else {
        return Ok(None);
    };
    let mut steps = match (plain, args.get(1)) {
        (false, Some(Value::String(p))) => match_steps(n, &p.as_bytes()),
        _ => (n as f64 + 1.0) * (m as f64 + 1.0),
    };
    if replaces {
        steps *= len(args.get(2)).map_or(1.0, |r| r as f64 + 1.0);
    }
    match steps > MAX_C_STEPS {
        true => Err(too_long(&format!(
            "{what} over {n} bytes with this pattern"
        ))),
        false => Ok(None),
    }
}
