//! The HTTP request decoding (`paxosdb::api::http::decode` and the metrics operation name),
//! the same entry points as the seeded fuzz test in `src/api/http/fuzz.rs`, driven by
//! libFuzzer's coverage feedback instead.
//!
//! An input is a small HTTP/1.1 request head, so seeds are readable and libFuzzer's
//! dictionary-like mutations stay meaningful:
//!
//! ```text
//! PUT /v1/kv/a%2Fb?cas=3 HTTP/1.1
//! if-match: "7"
//! x-paxosdb-client-id: 5
//! x-paxosdb-seq: 1
//!
//! body bytes (any)
//! ```
//!
//! The request target goes through `http::Uri` like a real request (hyper parses it the
//! same way); one that `Uri` refuses is still split at `?` and decoded, so the decoders see
//! strings a real server would never hand them, too. Invariants are those of `fuzz.rs`.
#![no_main]

use axum::http::{Method, Uri};
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use paxosdb::api::http::decode::{self, Precondition};
use paxosdb::api::http::op_name;
use paxosdb::command::{Limits, ScanRange};

struct Request<'a> {
    method: Method,
    path: String,
    query: Option<String>,
    headers: Vec<(String, &'a [u8])>,
    body: &'a [u8],
}

fn split_request(data: &[u8]) -> Request<'_> {
    let (head, body) = match data.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => (&data[..i], &data[i + 4..]),
        None => (data, &data[data.len()..]),
    };
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let request_line = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let mut words = request_line.split(' ');
    let method =
        Method::from_bytes(words.next().unwrap_or_default().as_bytes()).unwrap_or(Method::GET);
    let target = words.next().unwrap_or_default();
    let (path, query) = match Uri::try_from(target) {
        Ok(uri) => (uri.path().to_string(), uri.query().map(str::to_string)),
        Err(_) => match target.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (target.to_string(), None),
        },
    };
    let headers = lines
        .filter_map(|l| {
            let colon = l.iter().position(|&b| b == b':')?;
            let name = String::from_utf8_lossy(&l[..colon]).to_ascii_lowercase();
            let v = &l[colon + 1..];
            let start = v
                .iter()
                .position(|b| !b.is_ascii_whitespace())
                .unwrap_or(v.len());
            let end = v
                .iter()
                .rposition(|b| !b.is_ascii_whitespace())
                .map_or(start, |e| e + 1);
            Some((name, &v[start..end.max(start)]))
        })
        .collect();
    Request {
        method,
        path,
        query,
        headers,
        body,
    }
}

fn header<'a>(r: &Request<'a>, name: &str) -> Option<&'a [u8]> {
    r.headers.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
}

fn check(r: &Request<'_>, limits: &Limits) {
    let query = r.query.as_deref();
    let _ = decode::get_params(query);
    let _ = decode::delete_params(query);
    let cas = match decode::put_params(query) {
        Ok(Some(v)) => {
            // The name may be escaped (`%63as`), so look in the decoded query.
            let decoded = decode::percent_decode(query.unwrap_or(""), true).unwrap_or_default();
            assert!(
                decoded.windows(3).any(|w| w == b"cas"),
                "cas={v} from {query:?}"
            );
            Some(v)
        }
        _ => None,
    };
    if let Ok(p) = decode::scan_params(query, limits) {
        assert!(p.limit as u64 <= decode::MAX_LIMIT);
        if let ScanRange::Range { from, to: Some(to) } = &p.range {
            assert!(to >= from, "{query:?}");
        }
    }
    if let Ok(k) = decode::key_from_path(&r.path, limits) {
        assert!(!k.is_empty() && k.len() <= limits.max_key);
        assert!(r.path.starts_with(decode::KV_PREFIX));
    }
    let client = header(r, "x-paxosdb-client-id");
    let seq = header(r, "x-paxosdb-seq");
    if let Ok(Some((c, s))) = decode::session(client, seq) {
        assert!(c != 0 && s != 0);
    }
    if let Some(len) = header(r, "content-length") {
        let _ = decode::parse_u64("Content-Length", len);
    }
    let (im, inm) = (header(r, "if-match"), header(r, "if-none-match"));
    if let Ok(Some(Precondition::Version(v))) = decode::precondition(cas, im, inm) {
        assert!(cas.is_some() || im.is_some() || (inm.is_some() && v == 0));
    }
    let conditional = im.is_some() || inm.is_some();
    let op = op_name(&r.method, &r.path, query, conditional);
    assert!(!op.is_empty());
}

/// Bytes survive the JSON scheme exactly: UTF-8 as `value`, anything else as base64.
fn check_json(bytes: &[u8]) {
    let obj = decode::entry_json(Some(bytes), bytes, 1);
    for name in ["key", "value"] {
        let back = match (obj.get(name), obj.get(&format!("{name}_base64"))) {
            (Some(v), None) => v.as_str().unwrap().as_bytes().to_vec(),
            (None, Some(b)) => base64::engine::general_purpose::STANDARD
                .decode(b.as_str().unwrap())
                .unwrap(),
            other => panic!("exactly one of {name}/{name}_base64 expected, got {other:?}"),
        };
        assert_eq!(back, bytes);
    }
}

/// `%XX` for every byte decodes back to the bytes, in paths and in query strings.
fn check_percent(bytes: &[u8]) {
    let enc: String = bytes.iter().map(|b| format!("%{b:02X}")).collect();
    assert_eq!(decode::percent_decode(&enc, true).unwrap(), bytes);
    assert_eq!(decode::percent_decode(&enc, false).unwrap(), bytes);
}

fuzz_target!(|data: &[u8]| {
    let r = split_request(data);
    let small = Limits {
        max_key: 16,
        max_value: 64,
    };
    check(&r, &small);
    check(&r, &Limits::default());
    let _ = decode::percent_decode(&r.path, false);
    let _ = decode::percent_decode(r.query.as_deref().unwrap_or(""), true);
    check_json(r.body);
    check_percent(r.body);
    let _ = paxosdb::command::prefix_end(r.body);
});
