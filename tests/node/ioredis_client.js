#!/usr/bin/env node
// Drives a paxosdb RESP listener with ioredis, the way a Node.js application would:
// multi().set().incr().get().exec() (one transaction, each reply in order), a runtime
// error in its slot, EXECABORT after a queue-time error, and WATCH: a write through
// another node between WATCH and EXEC makes exec() resolve to null with nothing applied,
// while an untouched watched key lets it apply. Then expiry: set(k, v, "EX", 60), ttl,
// expire NX and persist. Scripts: defineCommand (EVALSHA, EVAL on NOSCRIPT) on two
// nodes, and eval.
//
// Usage: node ioredis_client.js HOST PORT OTHER_PORT
// Prints "ok" and exits 0, or prints the first mismatch and exits 1.
"use strict";

const Redis = require("ioredis");
const assert = require("node:assert/strict");

async function main() {
  const [host, port, otherPort] = process.argv.slice(2);
  const opts = { host, maxRetriesPerRequest: 1, connectTimeout: 20000 };
  const r = new Redis({ ...opts, port: Number(port) });
  const other = new Redis({ ...opts, port: Number(otherPort) });
  const id = Math.random().toString(16).slice(2, 10);
  const k = (name) => `io-${id}:${name}`;
  try {
    // One transaction: [error, reply] per command, in order.
    const replies = await r.multi().set(k("a"), "1").incr(k("n")).get(k("a")).exec();
    assert.deepEqual(replies, [
      [null, "OK"],
      [null, 1],
      [null, "1"],
    ]);
    assert.equal(await other.get(k("n")), "1", "applied, seen through another node");

    // A runtime error is that command's own result; the rest still applies.
    await r.set(k("s"), "abc");
    const mixed = await r.multi().incr(k("s")).set(k("after"), "x").exec();
    assert.ok(mixed[0][0] instanceof Error, "INCR of a non-number fails in its slot");
    assert.match(mixed[0][0].message, /value is not an integer or out of range/);
    assert.deepEqual(mixed[1], [null, "OK"]);
    assert.equal(await other.get(k("after")), "x");

    // A queue-time error (an unknown command) aborts the whole block.
    await assert.rejects(
      r.multi().set(k("aborted"), "1").call("nosuchcommand", "x").exec(),
      /EXECABORT/,
    );
    assert.equal(await other.exists(k("aborted")), 0, "nothing of an aborted block applied");

    // WATCH, then another client writes the key through another node: exec() resolves
    // to null and nothing of the block applies.
    await r.set(k("w"), "start");
    assert.equal(await r.watch(k("w")), "OK");
    await other.set(k("w"), "theirs");
    const conflicted = await r.multi().set(k("w"), "mine").set(k("side"), "1").exec();
    assert.equal(conflicted, null, "EXEC after a watched key changed");
    assert.equal(await other.get(k("w")), "theirs");
    assert.equal(await other.exists(k("side")), 0);

    // A watched key nobody touches: the block applies.
    assert.equal(await r.watch(k("w")), "OK");
    const applied = await r.multi().set(k("w"), "mine").incr(k("n")).exec();
    assert.deepEqual(applied, [
      [null, "OK"],
      [null, 2],
    ]);
    assert.equal(await other.get(k("w")), "mine");

    // Expiry: SET ... EX, and TTL through another node (-1 without, -2 absent).
    assert.equal(await r.set(k("e"), "v", "EX", 60), "OK");
    const ttl = await other.ttl(k("e"));
    assert.ok(ttl > 55 && ttl <= 60, `TTL ${ttl} after EX 60`);
    assert.equal(await other.ttl(k("w")), -1);
    assert.equal(await other.ttl(k("nosuch")), -2);
    assert.equal(await r.expire(k("w"), 30, "NX"), 1);
    assert.equal(await r.persist(k("w")), 1);

    // Scripts: defineCommand sends EVALSHA and falls back to EVAL on NOSCRIPT (the
    // other node has not seen the script); eval with keys and arguments.
    const swap = {
      numberOfKeys: 1,
      lua:
        "local old = redis.call('get', KEYS[1]) " +
        "redis.call('set', KEYS[1], ARGV[1]) return old",
    };
    r.defineCommand("swap", swap);
    other.defineCommand("swap", swap);
    assert.equal(await r.swap(k("sw"), "one"), null);
    assert.equal(await other.swap(k("sw"), "two"), "one");
    assert.equal(await r.get(k("sw")), "two");
    assert.deepEqual(await r.eval("return {KEYS[1], ARGV[1]}", 1, "key", "arg"), ["key", "arg"]);
    console.log("ok");
  } finally {
    r.disconnect();
    other.disconnect();
  }
}

main().catch((e) => {
  console.error(`MISMATCH ${e.stack || e}`);
  process.exit(1);
});
