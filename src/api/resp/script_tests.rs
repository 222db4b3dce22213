//! Scripts run against a real store (the in-memory backend of the same `KvStore`), and
//! their transactions applied to it as the log would apply them.

use super::*;
use crate::command::{Compare, CompareOp, Deadline, Expiry, KvCommand, WriteResult};

fn store() -> KvStore {
    KvStore::open_memory(Default::default()).unwrap()
}

fn ctx() -> Context {
    Context {
        identity: Identity::open(),
        limits: Limits::default(),
        read_only: false,
        max_reply_bytes: 1 << 20,
        time_limit: Duration::from_millis(300),
    }
}

/// Applies `op` as the next log entry.
fn apply(kv: &mut KvStore, op: WriteOp) -> WriteResult {
    let index = crate::machine::StateMachine::applied_index(kv);
    let cmd = KvCommand {
        client_id: 1,
        seq: index + 1,
        op,
        user: None,
    };
    kv.apply_kv(index, &[cmd]).unwrap().remove(0)
}

fn set(kv: &mut KvStore, key: &str, value: &str) -> u64 {
    let op = WriteOp::Put {
        key: key.into(),
        value: value.into(),
        return_prev: false,
    };
    match apply(kv, op) {
        WriteResult::Put { version, .. } => version,
        other => panic!("{other:?}"),
    }
}

fn eval(kv: &KvStore, body: &str, keys: &[&str], args: &[&str]) -> Run {
    let words = |w: &[&str]| w.iter().map(|s| s.as_bytes().to_vec()).collect::<Vec<_>>();
    run(kv, body.as_bytes(), &words(keys), &words(args), &ctx())
}

/// A lock's release: delete the key only if it holds the caller's token.
const RELEASE: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then \
                         return redis.call('del', KEYS[1]) \
                       end \
                       return 0";

#[test]
fn a_release_reads_compares_and_deletes_in_one_guarded_transaction() {
    let mut kv = store();
    let v = set(&mut kv, "lock", "token-a");

    // Someone else's token: answers 0, writes nothing, guarded by what it read.
    let r = eval(&kv, RELEASE, &["lock"], &["token-b"]);
    assert_eq!(r.reply, Frame::Integer(0));
    let t = r.txn.expect("it read a key");
    assert_eq!(
        t.compare,
        vec![Compare::version(b"lock", CompareOp::Equal, v)]
    );
    assert!(t.success.is_empty());

    // The owner's: answers 1, and its transaction deletes the key when applied.
    let r = eval(&kv, RELEASE, &["lock"], &["token-a"]);
    assert_eq!(r.reply, Frame::Integer(1));
    let t = r.txn.unwrap();
    assert_eq!(t.success.len(), 1);
    match apply(&mut kv, WriteOp::Txn(t)) {
        WriteResult::Txn {
            succeeded: true, ..
        } => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(kv.get(b"lock").unwrap().0, None);
}

#[test]
fn a_key_changed_between_the_run_and_its_transaction_applies_nothing() {
    let mut kv = store();
    set(&mut kv, "n", "1");
    let bump = "local v = tonumber(redis.call('get', KEYS[1])) \
                redis.call('set', KEYS[1], v + 1) return v + 1";
    let r = eval(&kv, bump, &["n"], &[]);
    assert_eq!(r.reply, Frame::Integer(2));
    // A write lands first: the script's transaction must not apply over it.
    set(&mut kv, "n", "10");
    match apply(&mut kv, WriteOp::Txn(r.txn.unwrap())) {
        WriteResult::Txn {
            succeeded: false, ..
        } => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(kv.get(b"n").unwrap().0.unwrap().value, b"10");
    // Run again, it sees 10.
    let r = eval(&kv, bump, &["n"], &[]);
    assert_eq!(r.reply, Frame::Integer(11));
}

#[test]
fn replies_convert_as_in_redis() {
    let kv = store();
    let cases: &[(&str, Frame)] = &[
        ("return 42", Frame::Integer(42)),
        ("return 3.7", Frame::Integer(3)),
        ("return 'x'", Frame::Bulk(b"x".to_vec())),
        ("return nil", Frame::Null),
        ("return false", Frame::Null),
        ("return true", Frame::Integer(1)),
        (
            "return {1, 'a', {2}, nil, 5}",
            Frame::Array(vec![
                Frame::Integer(1),
                Frame::Bulk(b"a".to_vec()),
                Frame::Array(vec![Frame::Integer(2)]),
            ]),
        ),
        (
            "return redis.status_reply('OK')",
            Frame::Simple("OK".into()),
        ),
        ("return {err='NOPE no'}", Frame::Error("NOPE no".into())),
        (
            "return redis.call('get', 'absent')",
            Frame::Null, // false back to nil
        ),
        (
            "return type(redis.call('get', 'absent'))",
            Frame::Bulk(b"boolean".to_vec()),
        ),
        (
            "return redis.call('ping')['ok']",
            Frame::Bulk(b"PONG".to_vec()),
        ),
        (
            "return redis.sha1hex('')",
            Frame::Bulk(b"da39a3ee5e6b4b0d3255bfef95601890afd80709".to_vec()),
        ),
        (
            "return {io == nil, os == nil, load == nil, dofile == nil, require == nil}",
            Frame::Array(vec![Frame::Integer(1); 5]),
        ),
    ];
    for (body, want) in cases {
        assert_eq!(&eval(&kv, body, &[], &[]).reply, want, "{body}");
    }
    // A table that holds itself ends at the depth limit instead of overflowing.
    let r = eval(&kv, "local t = {} t[1] = t return t", &[], &[]);
    let mut f = &r.reply;
    let mut depth = 0;
    while let Frame::Array(items) = f {
        f = &items[0];
        depth += 1;
    }
    assert!(
        matches!(f, Frame::Error(_)) && depth == MAX_REPLY_DEPTH,
        "{f:?}"
    );
}

#[test]
fn errors_are_redis_errors_and_writes_before_one_stay() {
    let mut kv = store();
    set(&mut kv, "s", "text");
    // redis.call raises the command's own error; pcall returns it as a table.
    let r = eval(&kv, "return redis.call('incr', 's')", &[], &[]);
    assert_eq!(
        r.reply,
        Frame::Error("ERR value is not an integer or out of range".into())
    );
    let r = eval(&kv, "return redis.pcall('incr', 's')['err']", &[], &[]);
    assert_eq!(
        r.reply,
        Frame::Bulk(b"ERR value is not an integer or out of range".to_vec())
    );
    // Refused commands, arguments and syntax.
    for (body, says) in [
        ("return redis.call('keys', '*')", "not allowed from script"),
        (
            "return redis.call('eval', 'return 1', '0')",
            "not allowed from script",
        ),
        (
            "return redis.call('get', {})",
            "must be strings or integers",
        ),
        ("return redis.call()", "at least one argument"),
        ("return nosuch.thing", "attempt to index"),
        ("return (", "Error compiling script"),
    ] {
        match eval(&kv, body, &[], &[]).reply {
            Frame::Error(m) => assert!(m.contains(says), "{body}: {m}"),
            other => panic!("{body}: {other:?}"),
        }
    }
    // As in Redis: a write before the failure stays.
    let r = eval(&kv, "redis.call('set', 'w', '1') error('boom')", &[], &[]);
    match &r.reply {
        Frame::Error(m) => assert!(m.starts_with("ERR") && m.contains("boom"), "{m}"),
        other => panic!("{other:?}"),
    }
    let t = r.txn.expect("the write before the error");
    assert_eq!(t.success.len(), 1);
    apply(&mut kv, WriteOp::Txn(t));
    assert_eq!(kv.get(b"w").unwrap().0.unwrap().value, b"1");
}

#[test]
fn read_only_scripts_refuse_writes() {
    let kv = store();
    let mut c = ctx();
    c.read_only = true;
    let r = run(&kv, b"return redis.call('set', 'k', 'v')", &[], &[], &c);
    assert!(
        matches!(&r.reply, Frame::Error(m) if m.contains("read-only")),
        "{:?}",
        r.reply
    );
    assert!(r.txn.is_none_or(|t| t.success.is_empty()));
}

#[test]
fn a_script_past_its_time_or_memory_is_stopped_and_applies_nothing() {
    let kv = store();
    for body in [
        "redis.call('set', 'k', 'v') while true do end",
        // pcall cannot swallow the stop.
        "redis.call('set', 'k', 'v') while true do pcall(function() while true do end end) end",
        "redis.call('set', 'k', 'v') local t = {} for i = 1, 1e9 do t[i] = string.rep('x', 100) .. i end",
    ] {
        let started = Instant::now();
        let r = eval(&kv, body, &[], &[]);
        assert!(
            matches!(&r.reply, Frame::Error(m) if m.starts_with("BUSY the script")),
            "{body}: {:?}",
            r.reply
        );
        assert!(r.txn.is_none(), "{body}: a stopped script applies nothing");
        assert!(started.elapsed() < Duration::from_secs(5), "{body}");
    }
}

#[test]
fn ttl_and_expiry_inside_a_script_use_the_rehearsals_clock() {
    let mut kv = store();
    set(&mut kv, "k", "v");
    let r = eval(
        &kv,
        "local before = redis.call('pttl', KEYS[1]) \
         redis.call('pexpire', KEYS[1], 5000) \
         return {before, redis.call('pttl', KEYS[1]), redis.call('ttl', 'absent')}",
        &["k"],
        &[],
    );
    assert_eq!(
        r.reply,
        Frame::Array(vec![
            Frame::Integer(-1),
            Frame::Integer(5000),
            Frame::Integer(-2)
        ])
    );
}

#[test]
fn the_cache_is_bounded_and_names_scripts_by_sha1() {
    let mut s = Scripts::default();
    let (sha, _) = s.insert(b"return 1".to_vec());
    assert_eq!(sha, "e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
    assert!(s.get(sha.to_uppercase().as_bytes()).is_some());
    for i in 0..MAX_CACHED + 10 {
        s.insert(format!("return {i}").into_bytes());
    }
    assert!(s.get(sha.as_bytes()).is_none(), "the oldest went first");
    assert_eq!(s.order.len(), MAX_CACHED);
    s.flush();
    assert_eq!(s.bytes, 0);
}

#[test]
fn versions_cannot_be_read_or_compared_in_a_script() {
    let kv = store();
    for body in [
        "return redis.call('getver', 'k')",
        "return redis.call('casver', 'k', '0', 'v')",
    ] {
        let r = eval(&kv, body, &[], &[]);
        assert!(
            matches!(&r.reply, Frame::Error(m) if m.contains("not allowed from scripts")),
            "{body}: {:?}",
            r.reply
        );
    }
}

#[test]
fn relative_deadlines_count_from_the_scripts_frozen_time() {
    let kv = store();
    let r = eval(
        &kv,
        "redis.call('set', KEYS[1], 'v', 'PX', 5000) return redis.call('pttl', KEYS[1])",
        &["k"],
        &[],
    );
    assert_eq!(r.reply, Frame::Integer(5000));
    let t = r.txn.unwrap();
    match &t.success[..] {
        [TxnOp::Write(WriteOp::SetExpiring {
            expiry: Expiry::Set(Deadline::At(at)),
            ..
        })] => {
            // The rehearsal ran at this node's clock (the log's time is older here).
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64;
            assert!(*at > now && *at <= now + 5000, "{at} against {now}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn pattern_matching_and_replies_are_bounded() {
    let kv = store();
    // A backtracking match that would run for ages is refused at once.
    let started = Instant::now();
    let r = eval(
        &kv,
        "return string.find(string.rep('a', 50), string.rep('a*', 20) .. 'b')",
        &[],
        &[],
    );
    assert!(
        matches!(&r.reply, Frame::Error(m) if m.contains("could take too long")),
        "{:?}",
        r.reply
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    // Ordinary matches run, in every form.
    let r = eval(
        &kv,
        "local a, b = string.match('lock:42', '^(%a+):(%d+)$') \
         local n = 0 for w in ('a b c'):gmatch('%a') do n = n + 1 end \
         return {a, b, n, (string.gsub('x-y', '%-', '+')), string.find('a.b', '.', 1, true)}",
        &[],
        &[],
    );
    assert_eq!(
        r.reply,
        Frame::Array(vec![
            Frame::Bulk(b"lock".to_vec()),
            Frame::Bulk(b"42".to_vec()),
            Frame::Integer(3),
            Frame::Bulk(b"x+y".to_vec()),
            Frame::Integer(2),
            Frame::Integer(2),
        ])
    );
    // One big error string returned a million times is charged a million times.
    let r = eval(
        &kv,
        "local e = {err = string.rep('x', 1000000)} local t = {} \
         for i = 1, 1000 do t[i] = e end return t",
        &[],
        &[],
    );
    assert!(
        matches!(&r.reply, Frame::Error(m) if m.contains("max_reply_bytes")),
        "{:?}",
        r.reply
    );
}

#[test]
fn pcall_cannot_swallow_running_out_of_memory() {
    let kv = store();
    let r = eval(
        &kv,
        "redis.call('set', 'k', 'v') \
         pcall(function() local s, t = 'x', {} for i = 1, 64 do s = s .. s t[i] = s end end) \
         return 1",
        &[],
        &[],
    );
    assert!(
        matches!(&r.reply, Frame::Error(m) if m.contains("memory")),
        "{:?}",
        r.reply
    );
    assert!(r.txn.is_none());
}

/// A script whose keys and writes would not fit one transaction applies nothing and
/// answers that, whether or not it caught the error (with `redis.pcall`).
#[test]
fn a_script_past_one_transaction_applies_nothing_and_answers_so() {
    let kv = store();
    for body in [
        "for i = 1, 2000 do redis.call('set', 'k' .. i, 'v') end return 1",
        "for i = 1, 2000 do redis.pcall('set', 'k' .. i, 'v') end \
         return redis.pcall('get', 'k1')['err'] ~= nil and 1 or 0",
    ] {
        let r = eval(&kv, body, &[], &[]);
        assert!(
            matches!(&r.reply, Frame::Error(m) if m.contains("do not fit one transaction")),
            "{body}: {:?}",
            r.reply
        );
        assert!(r.txn.is_none(), "{body}");
    }
}

#[test]
fn finalizers_long_moves_and_guard_bypasses_are_refused() {
    let kv = store();
    for (body, says) in [
        (
            "setmetatable({}, {__gc = function() while true do end end}) return 1",
            "cannot set __gc",
        ),
        (
            "table.move({}, 1, math.maxinteger - 1, 2) return 1",
            "table.move",
        ),
        (
            "return string.match(1111111111111111111, ('1*'):rep(25) .. '2')",
            "could take too long",
        ),
        (
            "return string.find('[]' .. ('a'):rep(40), '%b[]' .. ('a*'):rep(20) .. 'b')",
            "could take too long",
        ),
        (
            "return string.find(('a'):rep(3e6), ('a'):rep(1e6), 1, true)",
            "could take too long",
        ),
    ] {
        let started = Instant::now();
        match eval(&kv, body, &[], &[]).reply {
            Frame::Error(m) => {
                assert!(m.contains(says) && !m.starts_with("ERR ERR"), "{body}: {m}")
            }
            other => panic!("{body}: {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(2), "{body}");
    }
    // A metatable without a finalizer is fine.
    let r = eval(
        &kv,
        "local t = setmetatable({}, {__index = function() return 7 end}) return t.x",
        &[],
        &[],
    );
    assert_eq!(r.reply, Frame::Integer(7));
}

#[test]
fn the_c_library_cannot_run_past_the_time_limit() {
    let kv = store();
    for (body, says) in [
        ("return string.rep('', math.maxinteger)", ""),
        (
            "table.remove(setmetatable({}, {__len = function() return math.maxinteger end}), 1)",
            "__len",
        ),
        (
            "table.move({}, 1, '9223372036854775807', 1) return 1",
            "table.move",
        ),
        (
            "return (('a'):rep(1e5):gsub('', ('%0'):rep(1e5)))",
            "could take too long",
        ),
        (
            "local s = ('a'):rep(1e6) local t = {} for i = 1, 1e5 do t[i] = s end \
             table.sort(t) return 1",
            "table.sort",
        ),
        (
            "return string.match(('a'):rep(1000), '(.-)%1b')",
            "could take too long",
        ),
        // Cheap calls in a tight loop still meet the time limit at the next call.
        (
            "local s = ('a'):rep(1e6) while true do s:find('b', 1, true) end",
            "BUSY",
        ),
    ] {
        let started = Instant::now();
        let reply = eval(&kv, body, &[], &[]).reply;
        assert!(started.elapsed() < Duration::from_secs(3), "{body}");
        match (says, reply) {
            ("", Frame::Bulk(b)) => assert!(b.is_empty(), "{body}"),
            (says, Frame::Error(m)) => assert!(m.contains(says), "{body}: {m}"),
            (_, other) => panic!("{body}: {other:?}"),
        }
    }
    // A huge error message is cut.
    match eval(&kv, "error(('x'):rep(1e6))", &[], &[]).reply {
        Frame::Error(m) => assert!(m.len() < 5000, "{}", m.len()),
        other => panic!("{other:?}"),
    }
    // Arguments of one call are bounded before they are copied.
    let r = eval(
        &kv,
        "local s = ('x'):rep(2^20) local t = {'set', 'k'} for i = 3, 20 do t[i] = s end \
         return redis.call(table.unpack(t))",
        &[],
        &[],
    );
    assert!(
        matches!(&r.reply, Frame::Error(m) if m.contains("arguments of one redis.call")),
        "{:?}",
        r.reply
    );
}
