//! The RESP frame parser (`paxosdb::api::resp::frame`): `parse` (any RESP2/RESP3 frame) and
//! `parse_request` (what the server reads from a client: a multibulk or an inline command),
//! under the server's default limits and under small ones that make every limit reachable.
//!
//! Invariants beyond "never panics": a frame uses at least one byte and never more than it
//! was given; the bytes it used parse on their own to the same result; and any shorter
//! prefix of them is `Incomplete` (a frame split across reads must not be rejected).
#![no_main]

use libfuzzer_sys::fuzz_target;
use paxosdb::api::resp::frame::{parse, parse_request, FrameError, FrameLimits};

const SMALL: FrameLimits = FrameLimits {
    max_bulk: 100,
    max_elements: 10,
    max_inline: 64,
    max_depth: 3,
    max_frame: 1000,
};

fn check_frame(data: &[u8], limits: &FrameLimits) {
    let Ok((frame, used)) = parse(data, limits) else {
        return;
    };
    assert!(
        used > 0 && used <= data.len(),
        "used {used} of {}",
        data.len()
    );
    let (again, used_again) = parse(&data[..used], limits).expect("the used bytes alone parse");
    assert_eq!(used_again, used);
    // Compare encodings: a NaN double is not equal to itself.
    assert_eq!(again.to_bytes(true), frame.to_bytes(true));
    for cut in [used - 1, used / 2] {
        if cut > 0 && cut < used {
            assert_eq!(
                parse(&data[..cut], limits).unwrap_err(),
                FrameError::Incomplete,
                "prefix of {cut} bytes of a {used}-byte frame"
            );
        }
    }
}

fn check_request(data: &[u8], limits: &FrameLimits) {
    let Ok((args, used)) = parse_request(data, limits) else {
        return;
    };
    assert!(
        used > 0 && used <= data.len(),
        "used {used} of {}",
        data.len()
    );
    assert!(args.len() <= limits.max_elements.max(limits.max_inline));
    let longest = limits.max_bulk.max(limits.max_inline);
    assert!(args.iter().all(|a| a.len() <= longest));
    let (again, used_again) = parse_request(&data[..used], limits).expect("used bytes parse");
    assert_eq!((again, used_again), (args, used));
    for cut in [used - 1, used / 2] {
        if cut > 0 && cut < used {
            assert_eq!(
                parse_request(&data[..cut], limits).unwrap_err(),
                FrameError::Incomplete,
                "prefix of {cut} bytes of a {used}-byte request"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    for limits in [SMALL, FrameLimits::default()] {
        check_frame(data, &limits);
        check_request(data, &limits);
    }
});
