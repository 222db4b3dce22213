//! Deterministic fuzz test of the HTTP request decoding ([`super::decode`] and the metrics
//! operation naming): seeded random paths, query strings and header values, biased towards
//! the characters that matter (`%`, `+`, `&`, `=`, digits, parameter names), must never
//! panic, and what decodes must satisfy the documented invariants.
//!
//! `cargo test --lib api::http::fuzz` runs 100,000 inputs (seed 1). A long run:
//! `PAXOSDB_FUZZ_ITERS=20000000 PAXOSDB_FUZZ_SEED=$RANDOM cargo test --lib api::http::fuzz`.

use super::decode::{self, Precondition};
use crate::command::{Limits, ScanRange};
use axum::http::Method;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const PIECES: &[&str] = &[
    "%",
    "%0",
    "%00",
    "%ff",
    "%FF",
    "%zz",
    "%2F",
    "%25",
    "+",
    "&",
    "=",
    "&&",
    "==",
    "/",
    "*",
    "\"",
    " ",
    "0",
    "1",
    "7",
    "18446744073709551615",
    "18446744073709551616",
    "-1",
    "+1",
    "prefix",
    "from",
    "to",
    "limit",
    "consistency",
    "cas",
    "stale",
    "linearizable",
    "a",
    "é",
    "/v1/kv/",
    "/v1/kv",
    "10000",
    "10001",
    "index",
    "wait",
    "from_revision",
    "ms",
    "s",
    "m",
    "h",
    ".",
    "/v1/watch/",
    "/v1/watch",
    "lease",
    "keys",
    "true",
    "ttl",
    "ttl_ms",
    "/v1/lease/",
    "/keep-alive",
];

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn random_string(rng: &mut StdRng) -> String {
    let n = rng.gen_range(0..12);
    let mut s = String::new();
    for _ in 0..n {
        if rng.gen_bool(0.7) {
            s.push_str(PIECES[rng.gen_range(0..PIECES.len())]);
        } else {
            s.push(rng.gen_range(' '..='~'));
        }
    }
    s
}

fn random_bytes(rng: &mut StdRng) -> Vec<u8> {
    let n = rng.gen_range(0..24);
    if rng.gen_bool(0.5) {
        random_string(rng).into_bytes()
    } else {
        (0..n).map(|_| rng.gen()).collect()
    }
}

fn check_json_bytes(bytes: &[u8], rng_key: bool) {
    let obj = decode::entry_json(rng_key.then_some(bytes), bytes, 3);
    assert!(
        obj.contains_key("value") != obj.contains_key("value_base64"),
        "exactly one of value/value_base64 expected: {obj:?}"
    );
    // What a client sends back (a transaction's key or value) decodes to the same bytes.
    let back = decode::get_bytes(&obj, "", "value").unwrap();
    assert_eq!(back.as_deref(), Some(bytes));
    if rng_key {
        assert_eq!(
            decode::get_bytes(&obj, "", "key").unwrap().as_deref(),
            Some(bytes)
        );
    }
}

fn one_input(rng: &mut StdRng, limits: &Limits) {
    let q = random_string(rng);
    let query = rng.gen_bool(0.9).then_some(q.as_str());
    let _ = decode::get_params(query);
    let _ = decode::delete_params(query);
    if let Ok(Some(v)) = decode::put_params(query) {
        assert!(q.contains("cas"), "cas={v} from {q:?}");
    }
    if let Ok(p) = decode::scan_params(query, limits) {
        assert!(p.limit as u64 <= decode::MAX_LIMIT);
        if let ScanRange::Range { from, to: Some(to) } = &p.range {
            assert!(to >= from, "{q:?}");
        }
    }
    for block in [
        decode::get_query(query).ok().and_then(|p| p.block),
        (decode::scan_params(query, limits).ok()).and_then(|p| p.block),
    ]
    .into_iter()
    .flatten()
    {
        assert!(block.wait_ms <= decode::MAX_WAIT_MS, "{q:?}");
        assert!(q.contains("index"), "{q:?}");
    }
    if let Ok(Some(r)) = decode::watch_key_params(query) {
        assert!(r >= 1, "{q:?}");
    }
    if let Ok((ScanRange::Range { from, to: Some(to) }, _)) =
        decode::watch_range_params(query, limits)
    {
        assert!(to >= from, "{q:?}");
    }
    if let Ok(Some(r)) = decode::last_event_id(Some(q.as_bytes())) {
        assert!(r.skip > 0 || (r.revision >= 1 && !q.contains('.')), "{q:?}");
    }
    let _ = decode::parse_wait(q.as_bytes());
    let path = format!("{}{}", decode::WATCH_PREFIX, random_string(rng));
    if let Ok(k) = decode::key_under(decode::WATCH_PREFIX, &path, limits) {
        assert!(!k.is_empty() && k.len() <= limits.max_key);
    }
    let path = format!("{}{}", decode::KV_PREFIX, random_string(rng));
    if let Ok(k) = decode::key_from_path(&path, limits) {
        assert!(!k.is_empty() && k.len() <= limits.max_key);
    }
    let (a, b) = (random_bytes(rng), random_bytes(rng));
    let pick = |rng: &mut StdRng, v: &[u8]| rng.gen_bool(0.6).then(|| v.to_vec());
    let (ca, cb) = (pick(rng, &a), pick(rng, &b));
    if let Ok(Some((c, s))) = decode::session(ca.as_deref(), cb.as_deref()) {
        assert!(c != 0 && s != 0);
    }
    let cas = rng.gen_bool(0.3).then(|| rng.gen_range(0..3u64));
    let (im, inm) = (pick(rng, &a), pick(rng, &b));
    if let Ok(Some(Precondition::Version(v))) =
        decode::precondition(cas, im.as_deref(), inm.as_deref())
    {
        assert!(cas.is_some() || im.is_some() || (inm.is_some() && v == 0));
    }
    check_json_bytes(&a, rng.gen_bool(0.5));
    // A transaction body: arbitrary text, and the random string as a key, value and
    // range bound (quoted as JSON), never panics; what decodes is what the core accepts.
    let quoted = serde_json::Value::String(q.clone()).to_string();
    for body in [
        q.clone(),
        format!(
            r#"{{"compare": [{{"key": {quoted}, "value": {quoted}}}], "success": [{{"put": {{"key": {quoted}, "value_base64": {quoted}}}}}, {{"range": {{"from": {quoted}, "to": "m"}}}}]}}"#
        ),
    ] {
        if let Ok(t) = super::txn::decode(body.as_bytes(), limits) {
            // Only the whole transaction's size is left for the core to refuse.
            let checked = limits.check_write(&crate::command::WriteOp::Txn(t));
            assert!(
                !matches!(checked, Err(crate::error::Error::InvalidInput(_))),
                "{body}: {checked:?}"
            );
        }
    }
    // Leases: what decodes is what the store accepts.
    if let Ok(p) = decode::put_query(query) {
        assert!(p.lease != Some(0) && !(p.lease.is_some() && p.ttl_ms.is_some()));
    }
    if let Ok(p) = decode::lease_list_params(query) {
        assert!((1..=decode::MAX_LIMIT as usize).contains(&p.limit), "{q:?}");
    }
    let _ = decode::lease_get_params(query);
    let lease_path = format!("{}{}", decode::LEASE_PREFIX, random_string(rng));
    for suffix in ["", "/keep-alive"] {
        if let Ok(id) = decode::lease_from_path(&lease_path, suffix) {
            assert!(id >= 1, "{lease_path:?}");
        }
    }
    for body in [
        q.clone(),
        format!(r#"{{"ttl": {quoted}}}"#),
        format!(r#"{{"ttl": {quoted}, "id": 3}}"#),
        format!(r#"{{"ttl_ms": {q}}}"#),
    ] {
        if let Ok(g) = super::lease::decode_grant(body.as_bytes()) {
            let op = crate::command::WriteOp::LeaseGrant {
                id: g.id,
                ttl_ms: g.ttl_ms,
            };
            assert!(limits.check_write(&op).is_ok(), "{body}");
        }
    }
    let methods = [Method::GET, Method::PUT, Method::DELETE, Method::POST];
    let m = &methods[rng.gen_range(0..methods.len())];
    let _ = super::op_name(m, &path, query, rng.gen_bool(0.5));
    let _ = super::op_name(m, &lease_path, query, rng.gen_bool(0.5));
}

#[test]
fn decoding_never_panics_on_random_input() {
    let iters = env_u64("PAXOSDB_FUZZ_ITERS", 100_000);
    let seed = env_u64("PAXOSDB_FUZZ_SEED", 1);
    let limits = Limits {
        max_key: 16,
        max_value: 64,
    };
    let mut rng = StdRng::seed_from_u64(seed);
    for i in 0..iters {
        let before = rng.clone();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            one_input(&mut rng, &limits)
        }));
        if r.is_err() {
            // Replay the failing input deterministically for the report.
            let mut replay = before;
            let q = random_string(&mut replay);
            panic!("seed {seed}, input {i} panicked (first query string {q:?})");
        }
    }
}

#[test]
fn percent_decoding_round_trips() {
    let mut rng = StdRng::seed_from_u64(env_u64("PAXOSDB_FUZZ_SEED", 1));
    for _ in 0..10_000 {
        let bytes = random_bytes(&mut rng);
        let enc: String = bytes.iter().map(|b| format!("%{b:02X}")).collect();
        assert_eq!(decode::percent_decode(&enc, true).unwrap(), bytes);
    }
}

#[test]
fn decoding_examples() {
    let l = Limits::default();
    assert_eq!(decode::key_from_path("/v1/kv/a%2Fb", &l).unwrap(), b"a/b");
    assert_eq!(
        decode::key_from_path("/v1/kv/%00%ff", &l).unwrap(),
        b"\0\xff"
    );
    assert_eq!(
        decode::key_from_path("/v1/kv/", &l).unwrap_err().status,
        400
    );
    assert_eq!(decode::put_params(Some("cas=0")).unwrap(), Some(0));
    assert!(decode::put_params(Some("cas=-1")).is_err());
    assert!(decode::get_params(Some("consistncy=stale")).is_err());
    assert!(decode::scan_params(Some("limit=0"), &l).is_err());
    let both = decode::scan_params(Some("prefix=a&from=a5&to=z"), &l).unwrap();
    let (from, to) = (b"a5".to_vec(), Some(b"b".to_vec()));
    assert_eq!(both.range, ScanRange::Range { from, to });
    let inverted = decode::scan_params(Some("from=b&to=a"), &l).unwrap();
    let (from, to) = (b"b".to_vec(), Some(b"b".to_vec()));
    assert_eq!(inverted.range, ScanRange::Range { from, to });
    assert_eq!(
        crate::command::prefix_end(b"a\xff\xff"),
        Some(b"b".to_vec())
    );
    assert_eq!(crate::command::prefix_end(b"\xff"), None);
    let p = decode::scan_params(Some("prefix=a+b&limit=5&consistency=stale"), &l).unwrap();
    assert_eq!(p.range, ScanRange::Prefix(b"a b".to_vec()));
    assert_eq!(p.limit, 5);
    assert_eq!(
        decode::precondition(None, Some(b"\"7\""), None).unwrap(),
        Some(Precondition::Version(7))
    );
    assert_eq!(
        decode::precondition(Some(0), None, Some(b"*")).unwrap(),
        Some(Precondition::Version(0))
    );
    let never = Some(Precondition::Never);
    assert_eq!(
        decode::precondition(Some(1), Some(b"2"), None).unwrap(),
        never
    );
    assert_eq!(
        decode::precondition(None, Some(b"*"), Some(b"*")).unwrap(),
        never
    );
    // Blocking queries and watches.
    let blocking = |q| decode::get_query(Some(q)).unwrap().block.unwrap();
    let b = blocking("index=7&wait=300ms");
    assert_eq!((b.index, b.wait_ms), (7, 300));
    assert_eq!(blocking("index=0").wait_ms, decode::DEFAULT_WAIT_MS);
    assert_eq!(blocking("index=1&wait=1h").wait_ms, decode::MAX_WAIT_MS);
    assert_eq!(blocking("index=1&wait=0s").wait_ms, 0);
    assert_eq!(decode::get_query(None).unwrap().block, None);
    assert_eq!(decode::get_query(Some("wait=1s")).unwrap().block, None);
    for bad in [
        "wait=1",
        "index=-1",
        "index=1&wait=1",
        "index=1&wait=1.5s",
        "index=",
    ] {
        assert_eq!(
            decode::get_query(Some(bad)).unwrap_err().status,
            400,
            "{bad}"
        );
    }
    let p = decode::scan_params(Some("prefix=a&index=3&wait=2s"), &l).unwrap();
    assert_eq!(p.block.map(|b| (b.index, b.wait_ms)), Some((3, 2_000)));
    assert_eq!(
        decode::watch_key_params(Some("from_revision=5")).unwrap(),
        Some(5)
    );
    assert!(decode::watch_key_params(Some("from_revision=0")).is_err());
    assert!(decode::watch_key_params(Some("prefix=a")).is_err());
    assert_eq!(
        decode::watch_range_params(Some("prefix=a%00"), &l).unwrap(),
        (ScanRange::Prefix(b"a\0".to_vec()), None)
    );
    assert_eq!(
        decode::key_under(decode::WATCH_PREFIX, "/v1/watch/a%2Fb", &l).unwrap(),
        b"a/b"
    );
    let resume = |h: &str| decode::last_event_id(Some(h.as_bytes()));
    let r = resume("41").unwrap().unwrap();
    assert_eq!((r.revision, r.skip), (42, 0));
    let r = resume("41.2").unwrap().unwrap();
    assert_eq!((r.revision, r.skip), (41, 2));
    assert_eq!(resume("").unwrap(), None);
    for bad in [
        "x",
        "41.",
        ".2",
        "41.0",
        "41.2.3",
        "-1",
        "18446744073709551615",
    ] {
        assert!(resume(bad).is_err(), "{bad}");
    }
    assert!(decode::session(Some(b"1"), None).is_err());
    assert_eq!(
        decode::session(Some(b"5"), Some(b"2")).unwrap(),
        Some((5, 2))
    );
}
