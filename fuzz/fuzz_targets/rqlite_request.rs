//! The rqlite-compatible SQL API's decoding and encoding (`paxosdb::api::http::rqlite`):
//! query strings, request bodies, the read-only classification, and the encoding of
//! results made from what was decoded; the same entry points as the seeded test
//! `fuzz_decoders` in `src/api/http/rqlite.rs`, driven by libFuzzer's coverage feedback.
//!
//! An input is the query string on its first line, then the body:
//!
//! ```text
//! transaction&level=none
//! [["INSERT INTO t VALUES(?, ?)", 1, "x'00ff'"], "SELECT 1"]
//! ```
//!
//! The first byte also picks the endpoint, whether it is a `GET /db/query` and whether
//! the body is `text/plain`. Invariants: nothing panics; a decoded body holds at least
//! one statement; every encoding is a `{"results":[...]}` object.
#![no_main]

use libfuzzer_sys::fuzz_target;
use paxosdb::api::http::rqlite::{self, Endpoint, Render};
use paxosdb::sql::{Params, StatementResult, Value};

fuzz_target!(|data: &[u8]| {
    let (head, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &data[data.len()..]),
    };
    let pick = data.first().copied().unwrap_or(0);
    let endpoint = [Endpoint::Execute, Endpoint::Query, Endpoint::Request][pick as usize % 3];
    let query = String::from_utf8_lossy(head);
    let _ = rqlite::options(Some(&query), endpoint, pick & 4 != 0);
    let Ok(statements) = rqlite::statements(body, pick & 8 != 0) else {
        return;
    };
    assert!(!statements.is_empty());
    let mut results = Vec::new();
    for st in &statements {
        let _ = rqlite::is_read_only(&st.sql);
        let row: Vec<Value> = match &st.params {
            Params::None => vec![Value::Text(st.sql.clone())],
            Params::Positional(v) => v.clone(),
            Params::Named(v) => v.iter().map(|(_, v)| v.clone()).collect(),
        };
        let names: Vec<String> = match &st.params {
            Params::Named(v) => v.iter().map(|(n, _)| n.clone()).collect(),
            _ => (0..row.len()).map(|i| format!("c{}", i % 3)).collect(),
        };
        results.push(StatementResult {
            types: names
                .iter()
                .map(|n| {
                    if n.len() % 2 == 0 {
                        "boolean".into()
                    } else {
                        String::new()
                    }
                })
                .collect(),
            columns: names,
            rows: vec![row.clone(), row],
            ..Default::default()
        });
        results.push(StatementResult {
            last_insert_id: Some(st.sql.len() as i64),
            rows_affected: Some(0),
            error: (st.sql.len() % 2 == 1).then(|| st.sql.clone()),
            ..Default::default()
        });
    }
    for bits in 0..8u8 {
        let how = Render {
            associative: bits & 1 != 0,
            blob_array: bits & 2 != 0,
            unified: bits & 4 != 0,
        };
        let out = rqlite::encode(&results, how, (bits & 1 != 0).then_some(0.5), bits & 4 != 0);
        assert!(out.starts_with(b"{") && out.ends_with(b"}"));
        let text = std::str::from_utf8(&out).expect("UTF-8 JSON");
        assert!(text.contains("\"results\""));
    }
});
