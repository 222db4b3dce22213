#!/usr/bin/env python3
"""Drives a paxosdb RESP listener with redis-py, the way an application would.

Usage: resp_client.py HOST PORT [OTHER_PORT]

Uses RESP2 and RESP3 (HELLO 3) connections, plain commands, a pipeline, the paxosdb CAS
commands through execute_command, scan_iter, expiry (set ex=, ttl, setex, expire nx=,
getex persist=, Lock() taking, extending, releasing and timing out), scripts (eval,
register_script, a read-modify-write script racing from two nodes), and transactions:
pipeline() (MULTI/EXEC),
a per-command error inside EXEC, EXECABORT, and transaction() with WATCH retried under a
concurrent write (forced once, then two threads through two nodes racing on a counter).
OTHER_PORT (another node) checks that a write through one node is read through the other.
Exits non-zero on the first mismatch.
"""
import sys
import uuid

import redis


def check(what, got, want):
    if got != want:
        print(f"MISMATCH {what}: got {got!r}, want {want!r}", file=sys.stderr)
        sys.exit(1)


def run(r, prefix, other=None):
    k = lambda name: f"{prefix}:{name}"
    check("ping", r.ping(), True)
    check("set", r.set(k("a"), "1"), True)
    check("get", r.get(k("a")), b"1")
    check("get missing", r.get(k("missing")), None)
    check("set nx on existing", r.set(k("a"), "2", nx=True), None)
    check("set xx", r.set(k("a"), "2", xx=True), True)
    check("set get", r.set(k("a"), "3", get=True), b"2")
    check("incr", r.incr(k("n")), 1)
    check("incrby", r.incrby(k("n"), 41), 42)
    check("decr", r.decr(k("n")), 41)
    check("decrby", r.decrby(k("n"), 40), 1)
    try:
        r.set(k("s"), "abc")
        r.incr(k("s"))
        print("MISMATCH incr of a non-integer did not fail", file=sys.stderr)
        sys.exit(1)
    except redis.ResponseError as e:
        check("incr error", str(e), "value is not an integer or out of range")
    check("mset", r.mset({k("m1"): "x", k("m2"): "y"}), True)
    check("mget", r.mget([k("m1"), k("m2"), k("missing")]), [b"x", b"y", None])
    check("exists", r.exists(k("m1"), k("m2"), k("missing")), 2)
    check("append", r.append(k("m1"), "yz"), 3)
    check("strlen", r.strlen(k("m1")), 3)
    check("getdel", r.getdel(k("m2")), b"y")
    check("getdel again", r.getdel(k("m2")), None)
    check("setnx", r.setnx(k("m2"), "again"), True)
    check("delete", r.delete(k("m1"), k("m2"), k("missing")), 2)
    # Our compare-and-swap commands.
    r.set(k("c"), "old")
    check("cas hit", r.execute_command("CAS", k("c"), "old", "new"), 1)
    check("cas miss", r.execute_command("CAS", k("c"), "old", "newer"), 0)
    check("cas result", r.get(k("c")), b"new")
    value, version = r.execute_command("GETVER", k("c"))
    check("getver value", value, b"new")
    check("casver stale", r.execute_command("CASVER", k("c"), version - 1, "x"), 0)
    check("casver hit", r.execute_command("CASVER", k("c"), version, "v2"), 1)
    check("casver absent", r.execute_command("CASVER", k("fresh"), 0, "born"), 1)
    check("casver absent result", r.get(k("fresh")), b"born")
    # A pipeline: many commands, replies in order.
    p = r.pipeline(transaction=False)
    for i in range(50):
        p.set(k(f"p{i:02}"), str(i))
    for i in range(50):
        p.get(k(f"p{i:02}"))
    replies = p.execute()
    check("pipeline sets", replies[:50], [True] * 50)
    check("pipeline gets", replies[50:], [str(i).encode() for i in range(50)])
    # SCAN through every page, and KEYS.
    scanned = sorted(r.scan_iter(match=k("p*"), count=7))
    check("scan_iter", scanned, [k(f"p{i:02}").encode() for i in range(50)])
    check("keys", sorted(r.keys(k("p?5"))), [k(f"p{i}5").encode() for i in range(5)])
    check("dbsize", r.dbsize() >= 50, True)
    info = r.info("replication")
    check("info role", info.get("role") in ("master", "slave"), True)
    if other is not None:
        r.set(k("across"), "seen")
        check("read through another node", other.get(k("across")), b"seen")
    expiry(r, other, k)
    transactions(r, other, k)
    scripts(r, other, k)


def scripts(r, other, k):
    """EVAL / EVALSHA through redis-py: replies converted as Redis converts them, errors,
    and read-modify-write scripts from two nodes at once losing no update."""
    reader = other if other is not None else r
    check("eval integer", r.eval("return 1 + 2", 0), 3)
    check("eval keys and argv", r.eval("return {KEYS[1], ARGV[1], ARGV[2]}", 1, "a", "b", "c"),
          [b"a", b"b", b"c"])
    check("eval nil in array ends it", r.eval("return {1, 2, nil, 4}", 0), [1, 2])
    check("eval status", r.eval("return redis.status_reply('FINE')", 0) in (b"FINE", "FINE"), True)
    check("eval float truncates", r.eval("return 3.99", 0), 3)
    check("eval boolean", (r.eval("return true", 0), r.eval("return false", 0)), (1, None))
    r.set(k("s1"), "v1")
    check("call get", r.eval("return redis.call('get', KEYS[1])", 1, k("s1")), b"v1")
    check("call get missing is false",
          r.eval("return redis.call('get', KEYS[1]) == false", 1, k("nope")), 1)
    check("error_reply", refusal(lambda: r.eval("return redis.error_reply('MYERR went wrong')", 0)),
          "MYERR went wrong")
    check("call error",
          "not an integer" in refusal(lambda: r.eval("return redis.call('incr', KEYS[1])", 1, k("s1"))),
          True)
    check("pcall error is a table",
          r.eval("local e = redis.pcall('incr', KEYS[1]); return e.err ~= nil", 1, k("s1")), 1)
    check("not allowed",
          "not allowed from script" in refusal(lambda: r.eval("return redis.call('keys', '*')", 0)),
          True)
    check("eval_ro write",
          "read-only" in refusal(lambda: r.eval_ro("return redis.call('set', KEYS[1], 'x')", 1, k("ro"))),
          True)
    check("nothing written by eval_ro", reader.get(k("ro")), None)

    # Writes, with expiry, seen through the other node.
    n = r.eval("redis.call('set', KEYS[1], ARGV[1], 'PX', 60000); "
               "return redis.call('pttl', KEYS[1])", 1, k("w"), "x")
    check("set px then pttl in a script", 55_000 <= n <= 60_000, True)
    check("script write read elsewhere", reader.get(k("w")), b"x")

    # register_script: EVALSHA, NOSCRIPT, SCRIPT LOAD behind the scenes; SCRIPT EXISTS.
    bump = r.register_script(
        "local v = tonumber(redis.call('get', KEYS[1]) or '0') "
        "redis.call('set', KEYS[1], v + tonumber(ARGV[1])) return v + tonumber(ARGV[1])")
    check("registered script", bump(keys=[k("ctr")], args=[5]), 5)
    check("script exists", r.script_exists(bump.sha), [True])
    check("script flush", r.script_flush(), True)
    check("script gone", r.script_exists(bump.sha), [False])
    check("registered script reloads itself", bump(keys=[k("ctr")], args=[1]), 6)

    # Two clients, one per node, each adding 1 thirty times with that read-modify-write
    # script: with no atomicity some additions would be lost.
    def job(c):
        s = c.register_script(bump.script)
        for _ in range(30):
            s(keys=[k("ctr")], args=[1])

    check("scripting workers", race(r, other, job), [])
    check("counter after scripts under contention", r.get(k("ctr")), b"66")


def refusal(call):
    """The message of the error reply call() must get (exits if it gets none)."""
    try:
        got = call()
    except redis.ResponseError as e:
        return str(e)
    print(f"MISMATCH expected an error reply, got {got!r}", file=sys.stderr)
    sys.exit(1)


def race(r, other, job):
    """Runs job(client) in two threads at once, one with a client of r's node and one of
    other's (r's again without it); the exceptions they raised."""
    import threading

    kwargs = r.connection_pool.connection_kwargs
    ports = [kwargs["port"], (other or r).connection_pool.connection_kwargs["port"]]
    failures = []

    def worker(port):
        try:
            job(redis.Redis(host=kwargs["host"], port=port,
                            protocol=kwargs.get("protocol", 2), socket_timeout=20))
        except Exception as e:  # reported by the caller: a thread's exception is not ours
            failures.append(repr(e))

    threads = [threading.Thread(target=worker, args=(p,)) for p in ports]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return failures


def expiry(r, other, k):
    """Expiry through redis-py's own methods; deadlines read through another node."""
    reader = other if other is not None else r
    check("set ex", r.set(k("e"), "v", ex=60), True)
    ttl = reader.ttl(k("e"))
    check("ttl after ex=60", 55 <= ttl <= 60, True)
    check("ttl of a key without deadline", (r.set(k("np"), "v"), r.ttl(k("np"))), (True, -1))
    check("ttl of an absent key", r.ttl(k("nosuch")), -2)
    check("setex", r.setex(k("se"), 30, "w"), True)
    check("setex value and ttl", (reader.get(k("se")), 25 <= reader.ttl(k("se")) <= 30), (b"w", True))
    check("expire nx on a key with a deadline", r.expire(k("e"), 100, nx=True), False)
    check("expire nx on a key without", r.expire(k("np"), 100, nx=True), True)
    check("pttl after expire nx", 95_000 <= reader.pttl(k("np")) <= 100_000, True)
    check("expire gt", r.expire(k("np"), 200, gt=True), True)
    check("getex persist", r.getex(k("e"), persist=True), b"v")
    check("ttl after getex persist", reader.ttl(k("e")), -1)
    check("getex ex", r.getex(k("e"), ex=40), b"v")
    check("ttl after getex ex", 35 <= reader.ttl(k("e")) <= 40, True)
    check("persist", (r.persist(k("e")), r.persist(k("e"))), (True, False))
    try:
        r.setex(k("se"), 0, "x")
        print("MISMATCH setex with 0 seconds did not fail", file=sys.stderr)
        sys.exit(1)
    except redis.ResponseError as e:
        check("setex error", str(e), "invalid expire time in 'setex' command")

    # Lock(): acquire is SET NX PX (a timeout); release(), extend() and reacquire() run
    # Lua scripts (EVALSHA, loaded on NOSCRIPT) that compare the token first.
    name = k("lock")
    lock = r.lock(name, timeout=10)
    check("lock taken", lock.acquire(blocking=False), True)
    check("lock extended", lock.extend(20), True)
    check("extended ttl", 25_000 <= reader.pttl(name) <= 30_000, True)
    check("lock reacquired", lock.reacquire(), True)
    check("reacquired ttl", 5_000 <= reader.pttl(name) <= 10_000, True)
    other_lock = reader.lock(name, timeout=10)
    other_lock.local.token = b"not-the-owner"
    try:
        other_lock.release()
        print("MISMATCH a lock released by a non-owner", file=sys.stderr)
        sys.exit(1)
    except redis.exceptions.LockNotOwnedError:
        pass
    check("still held after a stranger's release", reader.get(name), lock.local.token)
    lock.release()
    check("released", reader.get(name), None)
    check("taken again at once", reader.lock(name, timeout=10).acquire(blocking=False), True)
    r.delete(name)

    # And timing out: a lock not released is free once its timeout passed.
    first = r.lock(name, timeout=2)
    check("lock acquired", first.acquire(blocking=False), True)
    check("lock held", reader.lock(name).locked(), True)
    check("second lock refused while held", reader.lock(name, timeout=5).acquire(blocking=False), False)
    check("lock key has the timeout", 0 < r.pttl(name) <= 2000, True)
    second = reader.lock(name, timeout=5)
    check("second lock taken once the first timed out", second.acquire(blocking_timeout=20), True)
    check("second lock owns it", second.owned(), True)
    check("first lock no longer owns it", first.owned(), False)


def transactions(r, other, k):
    """pipeline() (transaction=True by default) sends MULTI, the commands, EXEC: one
    atomic transaction, each command's reply in order."""
    reader = other if other is not None else r
    p = r.pipeline()
    p.set(k("tx-a"), "1").incr(k("tx-n")).incrby(k("tx-n"), 4).get(k("tx-a"))
    p.mget([k("tx-a"), k("tx-n"), k("tx-missing")])
    check("transaction replies", p.execute(), [True, 1, 5, b"1", [b"1", b"5", None]])
    check("transaction applied", reader.get(k("tx-n")), b"5")

    # A runtime error is that command's reply; the others still apply (Redis' EXEC).
    r.set(k("tx-s"), "abc")
    p = r.pipeline()
    p.incr(k("tx-s")).set(k("tx-after"), "x")
    replies = p.execute(raise_on_error=False)
    check("error in its slot", isinstance(replies[0], redis.ResponseError), True)
    check("error text", str(replies[0]), "value is not an integer or out of range")
    check("rest applied", (replies[1], reader.get(k("tx-after"))), (True, b"x"))

    # A queue-time error aborts the whole block (EXECABORT): nothing applied.
    p = r.pipeline()
    p.set(k("tx-aborted"), "1").execute_command("NOSUCHCOMMAND", "x")
    try:
        p.execute()
        print("MISMATCH a block with an unknown command did not raise", file=sys.stderr)
        sys.exit(1)
    except redis.ResponseError:
        pass
    check("aborted block not applied", reader.exists(k("tx-aborted")), 0)
    check("connection usable after EXECABORT", r.incr(k("tx-n")), 6)

    # transaction(func, key): WATCH, read, MULTI, write, EXEC, retried on WatchError. The
    # first attempt is made to conflict: another client (through another node) writes
    # the key between the WATCH read and EXEC, so EXEC must apply nothing and the retry
    # must see the new value.
    key = k("tx-counter")
    attempts = []

    def bump(pipe):
        seen = int(pipe.get(key) or 0)
        if not attempts:
            reader.incr(key)
        attempts.append(seen)
        pipe.multi()
        pipe.set(key, seen + 1)

    r.transaction(bump, key)
    check("watch conflict retried once", attempts, [0, 1])
    check("counter after retry", r.get(key), b"2")

    # Two clients, one per node, each incrementing the counter 20 times with the
    # optimistic-lock pattern: every increment lands exactly once.
    retries = []

    def job(c):
        tries = 0

        def step(pipe):
            nonlocal tries
            tries += 1
            seen = int(pipe.get(key) or 0)
            pipe.multi()
            pipe.set(key, seen + 1)

        for _ in range(20):
            c.transaction(step, key)
        retries.append(tries - 20)

    check("contending workers", race(r, other, job), [])
    check("counter under contention", r.get(key), b"42")
    print(f"watch retries under contention: {sum(retries)}", file=sys.stderr)


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    other_port = int(sys.argv[3]) if len(sys.argv) > 3 else None
    run_id = uuid.uuid4().hex[:8]
    for proto in (2, 3):
        r = redis.Redis(host=host, port=port, protocol=proto, socket_timeout=20)
        other = None
        if other_port:
            other = redis.Redis(host=host, port=other_port, protocol=proto, socket_timeout=20)
        run(r, f"py{proto}-{run_id}", other)
    print("ok")


if __name__ == "__main__":
    main()
