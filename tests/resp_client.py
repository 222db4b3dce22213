#!/usr/bin/env python3
"""Drives a paxosdb RESP listener with redis-py, the way an application would.

Usage: resp_client.py HOST PORT [OTHER_PORT]

Uses RESP2 and RESP3 (HELLO 3) connections, plain commands, a pipeline, the paxosdb CAS
commands through execute_command, scan_iter, and a refused MULTI/EXEC pipeline. OTHER_PORT (another node) checks that a
write through one node is read through the other. Exits non-zero on the first mismatch.
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
    refused_transaction(r, other, k)


def refused_transaction(r, other, k):
    """pipeline(transaction=True) sends MULTI, the commands, EXEC. paxosdb has no
    transactions yet: it must raise, and none of the commands may have been applied (a
    retry would otherwise apply them twice)."""
    p = r.pipeline(transaction=True)
    p.set(k("tx-a"), "1")
    p.incr(k("tx-n"))
    try:
        p.execute()
        print("MISMATCH a MULTI/EXEC pipeline did not raise", file=sys.stderr)
        sys.exit(1)
    except redis.ResponseError as e:
        check("transaction error says why", "not supported" in str(e), True)
    # Read through another connection (another node if there is one).
    reader = other if other is not None else redis.Redis(
        host=r.connection_pool.connection_kwargs["host"],
        port=r.connection_pool.connection_kwargs["port"],
        socket_timeout=20,
    )
    check("transaction SET not applied", reader.get(k("tx-a")), None)
    check("transaction INCR not applied", reader.get(k("tx-n")), None)
    check("transaction keys absent", r.exists(k("tx-a"), k("tx-n")), 0)
    # The connection is usable again (EXEC ended the MULTI).
    check("after transaction", r.set(k("after-tx"), "ok"), True)
    check("after transaction get", r.get(k("after-tx")), b"ok")
    check("after transaction incr", r.incr(k("tx-n")), 1)


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
