//! Peer frame decoding (`paxosdb::transport::read_frame`): what another node — or anything
//! that connects to the peer port — sends. Like `serve_peer`, the input is read as one
//! `Hello` frame (limit `MAX_HELLO_FRAME`) followed by `PeerMsg` frames (limit: the default
//! `max_frame_bytes`) until the first error. The same bytes are also read as messages from
//! the start, so message decoding does not depend on a valid hello, and as the frames of a
//! state transfer (`StatePart`, whose chunks are also CRC-checked).
//!
//! `read_frame` is async over `AsyncRead`; a `&[u8]` never blocks, so
//! `futures::executor::block_on` runs it without a runtime.
//!
//! Invariants beyond "never panics": whatever decodes re-encodes (with `write_frame`) to a
//! frame that decodes and re-encodes to the same bytes, and a decoded `Hello` round-trips
//! exactly.
#![no_main]

use futures::executor::block_on;
use libfuzzer_sys::fuzz_target;
use paxosdb::config::Config;
use paxosdb::kv::transfer::StatePart;
use paxosdb::transport::{read_frame, write_frame, Hello, PeerMsg, MAX_HELLO_FRAME};
use std::sync::OnceLock;

fn max_frame() -> usize {
    static MAX: OnceLock<usize> = OnceLock::new();
    *MAX.get_or_init(|| Config::new(1, Vec::new(), String::new(), "".into()).max_frame_bytes)
}

fn encode<T: serde::Serialize>(value: &T, limit: usize) -> Vec<u8> {
    let mut out = Vec::new();
    block_on(write_frame(&mut out, value, limit)).expect("a decoded value re-encodes");
    out
}

fn read_messages(mut r: &[u8]) {
    let limit = max_frame();
    while let Ok(msg) = block_on(read_frame::<_, PeerMsg>(&mut r, limit)) {
        let bytes = encode(&msg, limit);
        let again: PeerMsg =
            block_on(read_frame(&mut bytes.as_slice(), limit)).expect("re-encoded decodes");
        assert_eq!(encode(&again, limit), bytes);
    }
}

fn read_state_parts(mut r: &[u8]) {
    let limit = max_frame();
    while let Ok(part) = block_on(read_frame::<_, StatePart>(&mut r, limit)) {
        if let StatePart::Chunk(c) = &part {
            let _ = c.verify();
        }
        let bytes = encode(&part, limit);
        let again: StatePart =
            block_on(read_frame(&mut bytes.as_slice(), limit)).expect("re-encoded decodes");
        assert_eq!(again, part);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut r = data;
    if let Ok(hello) = block_on(read_frame::<_, Hello>(&mut r, MAX_HELLO_FRAME)) {
        let bytes = encode(&hello, MAX_HELLO_FRAME);
        let again: Hello =
            block_on(read_frame(&mut bytes.as_slice(), MAX_HELLO_FRAME)).expect("decodes");
        assert_eq!(again, hello);
        read_messages(r);
    }
    read_messages(data);
    read_state_parts(data);
});
