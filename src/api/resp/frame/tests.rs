//! Frame parser tests: every frame type, incomplete input at every split point, limits,
//! requests (multibulk and inline), and a deterministic fuzz test.

use super::*;

fn lim() -> FrameLimits {
    FrameLimits {
        max_bulk: 100,
        max_elements: 10,
        max_inline: 64,
        max_depth: 3,
        max_frame: 1000,
    }
}

fn ok(input: &[u8]) -> Frame {
    let (f, used) = parse(input, &lim()).unwrap_or_else(|e| panic!("{input:?}: {e:?}"));
    assert_eq!(used, input.len(), "{input:?} fully used");
    f
}

fn proto_err(input: &[u8]) -> String {
    match parse(input, &lim()) {
        Err(FrameError::Protocol(m)) => m,
        other => panic!("expected a protocol error for {input:?}, got {other:?}"),
    }
}

#[test]
fn every_frame_type() {
    assert_eq!(ok(b"+OK\r\n"), Frame::Simple("OK".into()));
    assert_eq!(ok(b"-ERR bad\r\n"), Frame::Error("ERR bad".into()));
    assert_eq!(ok(b":42\r\n"), Frame::Integer(42));
    assert_eq!(ok(b":-7\r\n"), Frame::Integer(-7));
    assert_eq!(ok(b"$3\r\nfoo\r\n"), Frame::Bulk(b"foo".to_vec()));
    assert_eq!(ok(b"$0\r\n\r\n"), Frame::Bulk(vec![]));
    assert_eq!(
        ok(b"$4\r\na\r\nb\r\n"),
        Frame::Bulk(b"a\r\nb".to_vec()),
        "binary safe"
    );
    assert_eq!(ok(b"$-1\r\n"), Frame::Null);
    assert_eq!(ok(b"*-1\r\n"), Frame::Null);
    assert_eq!(ok(b"_\r\n"), Frame::Null);
    assert_eq!(ok(b"*0\r\n"), Frame::Array(vec![]));
    assert_eq!(
        ok(b"*2\r\n$1\r\na\r\n:1\r\n"),
        Frame::Array(vec![Frame::Bulk(b"a".to_vec()), Frame::Integer(1)])
    );
    assert_eq!(
        ok(b"*2\r\n*1\r\n+x\r\n*0\r\n"),
        Frame::Array(vec![
            Frame::Array(vec![Frame::Simple("x".into())]),
            Frame::Array(vec![])
        ])
    );
    assert_eq!(
        ok(b"%1\r\n+k\r\n:1\r\n"),
        Frame::Map(vec![(Frame::Simple("k".into()), Frame::Integer(1))])
    );
    assert_eq!(ok(b"#t\r\n"), Frame::Boolean(true));
    assert_eq!(ok(b"#f\r\n"), Frame::Boolean(false));
    assert_eq!(ok(b",1.5\r\n"), Frame::Double(1.5));
}

#[test]
fn encode_then_parse_round_trips() {
    let frames = vec![
        Frame::Simple("OK".into()),
        Frame::Error("ERR x".into()),
        Frame::Integer(i64::MIN),
        Frame::Bulk(b"\x00\r\n\xff".to_vec()),
        Frame::Null,
        Frame::Array(vec![Frame::Integer(1), Frame::Array(vec![Frame::Null])]),
        Frame::Map(vec![(Frame::bulk("a"), Frame::Integer(2))]),
        Frame::Boolean(true),
        Frame::Double(-2.25),
    ];
    for f in frames {
        let bytes = f.to_bytes(true);
        assert_eq!(ok(&bytes), f, "RESP3 round trip of {f:?}");
    }
    // RESP2 downgrades.
    assert_eq!(Frame::Null.to_bytes(false), b"$-1\r\n");
    assert_eq!(Frame::Boolean(true).to_bytes(false), b":1\r\n");
    assert_eq!(
        Frame::Map(vec![(Frame::bulk("a"), Frame::Integer(2))]).to_bytes(false),
        b"*2\r\n$1\r\na\r\n:2\r\n"
    );
    // Line frames cannot be broken by CR/LF in their text.
    assert_eq!(
        Frame::Error("ERR a\r\nb".into()).to_bytes(false),
        b"-ERR a  b\r\n"
    );
}

#[test]
fn incomplete_at_every_split_point() {
    let inputs: &[&[u8]] = &[
        b"+OK\r\n",
        b":123\r\n",
        b"$5\r\nhello\r\n",
        b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
        b"%1\r\n+a\r\n#t\r\n",
        b",3.5\r\n",
        b"_\r\n",
    ];
    for input in inputs {
        for cut in 0..input.len() {
            assert_eq!(
                parse(&input[..cut], &lim()),
                Err(FrameError::Incomplete),
                "{:?} cut at {cut}",
                String::from_utf8_lossy(input)
            );
        }
        // Extra bytes after a frame are left for the next one.
        let mut two = input.to_vec();
        two.extend_from_slice(input);
        let (_, used) = parse(&two, &lim()).unwrap();
        assert_eq!(used, input.len());
    }
}

#[test]
fn malformed_frames() {
    proto_err(b"!x\r\n");
    proto_err(b":12a\r\n");
    proto_err(b":\r\n");
    proto_err(b":99999999999999999999\r\n");
    proto_err(b"$-2\r\n");
    proto_err(b"$abc\r\n");
    proto_err(b"$3\r\nfooXY");
    proto_err(b"*-2\r\n");
    proto_err(b"#x\r\n");
    proto_err(b",notanumber\r\n");
    proto_err(b"_x\r\n");
    // A header line that never ends is an error once it is longer than any valid one.
    proto_err(&[b':'; 40]);
}

#[test]
fn limits() {
    assert_eq!(proto_err(b"$101\r\n"), "invalid bulk length");
    assert!(matches!(
        parse(b"$100\r\n", &lim()),
        Err(FrameError::Incomplete)
    ));
    assert_eq!(proto_err(b"*11\r\n"), "invalid multibulk length");
    assert_eq!(
        proto_err(b"%6\r\n"),
        "invalid multibulk length",
        "a map counts 2 per pair"
    );
    assert!(matches!(
        parse(b"*10\r\n", &lim()),
        Err(FrameError::Incomplete)
    ));
    assert_eq!(proto_err(b"*1\r\n*1\r\n*1\r\n*1\r\n"), "nesting too deep");
    assert!(parse(b"*1\r\n*1\r\n*0\r\n", &lim()).is_ok());
    // The whole frame: 10 bulks of 100 bytes exceed 1000 bytes before they arrive.
    let mut big = b"*10\r\n".to_vec();
    for _ in 0..9 {
        big.extend_from_slice(b"$100\r\n");
        big.extend_from_slice(&[b'x'; 100]);
        big.extend_from_slice(b"\r\n");
    }
    big.extend_from_slice(b"$100\r\n");
    assert!(proto_err(&big).contains("larger than"));
    // Simple strings are bounded by the inline limit.
    let mut long = b"+".to_vec();
    long.extend_from_slice(&[b'a'; 100]);
    proto_err(&long);
    // A huge declared count allocates nothing up front.
    let huge = FrameLimits {
        max_elements: usize::MAX,
        ..lim()
    };
    assert_eq!(
        parse(b"*9223372036854775807\r\n", &huge),
        Err(FrameError::Incomplete)
    );
}

#[test]
fn requests() {
    let l = lim();
    let (args, used) = parse_request(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nrest", &l).unwrap();
    assert_eq!(args, vec![b"GET".to_vec(), b"k".to_vec()]);
    assert_eq!(used, 20);
    assert_eq!(
        parse_request(b"*1\r\n:1\r\n", &l),
        Err(FrameError::Protocol("expected '$', got ':'".into()))
    );
    assert_eq!(parse_request(b"*0\r\n", &l), Ok((vec![], 4)));
    assert_eq!(parse_request(b"*-1\r\n", &l), Ok((vec![], 5)));
    assert_eq!(parse_request(b"", &l), Err(FrameError::Incomplete));
    // Inline commands, as typed into telnet.
    assert_eq!(
        parse_request(b"SET k  \"a b\\n\"\r\n", &l),
        Ok((vec![b"SET".to_vec(), b"k".to_vec(), b"a b\n".to_vec()], 16))
    );
    assert_eq!(
        parse_request(b"PING\n", &l),
        Ok((vec![b"PING".to_vec()], 5))
    );
    assert_eq!(parse_request(b"\r\n", &l), Ok((vec![], 2)));
    assert_eq!(parse_request(b"PIN", &l), Err(FrameError::Incomplete));
    assert!(matches!(
        parse_request(b"SET \"k\n", &l),
        Err(FrameError::Protocol(_))
    ));
    assert_eq!(
        parse_request(&[b'a'; 65], &l),
        Err(FrameError::Protocol("too big inline request".into()))
    );
}

/// A small deterministic PRNG (xorshift64*), so failures reproduce from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const SEEDS: &[&[u8]] = &[
    b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r\n",
    b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
    b"+OK\r\n",
    b"-ERR x\r\n",
    b":-12\r\n",
    b"$-1\r\n",
    b"%2\r\n+a\r\n:1\r\n+b\r\n*1\r\n#t\r\n",
    b",1e10\r\n",
    b"_\r\n",
    b"PING hello \"quoted arg\"\r\n",
    b"*1\r\n*1\r\n*1\r\n$0\r\n\r\n",
];

const ALPHABET: &[u8] = b"*$:+-%#,_~>\r\n0123456789-\" \\abc";

fn mutate(rng: &mut Rng, input: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        let pos = if input.is_empty() {
            0
        } else {
            rng.below(input.len() + 1)
        };
        match rng.below(6) {
            0 if !input.is_empty() && pos < input.len() => input[pos] = rng.next() as u8,
            1 if pos < input.len() => {
                input.remove(pos);
            }
            2 => input.insert(pos, ALPHABET[rng.below(ALPHABET.len())]),
            3 => {
                let num = match rng.below(4) {
                    0 => "-1".to_string(),
                    1 => u64::MAX.to_string(),
                    2 => i64::MIN.to_string(),
                    _ => rng.below(200).to_string(),
                };
                for (i, b) in num.bytes().enumerate() {
                    input.insert((pos + i).min(input.len()), b);
                }
            }
            4 => {
                let seed = SEEDS[rng.below(SEEDS.len())];
                let at = pos.min(input.len());
                input.splice(at..at, seed.iter().copied());
            }
            _ => input.truncate(pos),
        }
    }
}

/// Feeds random and mutated inputs to both parsers: they never panic and never claim more
/// bytes than they were given. `PAXOSDB_FUZZ_ITERS` sets the number of inputs (default
/// 100 000) and `PAXOSDB_FUZZ_SEED` the seed, for long runs:
/// `PAXOSDB_FUZZ_ITERS=50000000 cargo test --release --lib resp::frame::tests::fuzz`.
#[test]
fn fuzz_never_panics_or_overclaims() {
    let iters: usize = std::env::var("PAXOSDB_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let seed: u64 = std::env::var("PAXOSDB_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_cafe);
    let mut rng = Rng(seed.max(1));
    let limits = [lim(), FrameLimits::default()];
    for i in 0..iters {
        let input: Vec<u8> = if i % 4 == 0 {
            (0..rng.below(64))
                .map(|_| {
                    if rng.below(2) == 0 {
                        ALPHABET[rng.below(ALPHABET.len())]
                    } else {
                        rng.next() as u8
                    }
                })
                .collect()
        } else {
            let mut v = SEEDS[rng.below(SEEDS.len())].to_vec();
            mutate(&mut rng, &mut v);
            v
        };
        let l = &limits[i % 2];
        if let Ok((_, used)) = parse(&input, l) {
            assert!(used <= input.len(), "seed {seed} iteration {i}: {input:?}");
            assert!(used > 0, "seed {seed} iteration {i}: {input:?}");
        }
        if let Ok((_, used)) = parse_request(&input, l) {
            assert!(used <= input.len(), "seed {seed} iteration {i}: {input:?}");
            assert!(used > 0, "seed {seed} iteration {i}: {input:?}");
        }
    }
}

/// The encoder's bytes are exactly what encoding the built frame would give.
#[test]
fn array_encoder_matches_frame_encoding() {
    for resp3 in [false, true] {
        let items = vec![
            Frame::bulk("a"),
            Frame::Null,
            Frame::Bulk(vec![0xff; 300]),
            Frame::Bulk(Vec::new()),
            Frame::Integer(7),
        ];
        let mut enc = ArrayEncoder::new(usize::MAX, resp3);
        for f in &items {
            match f {
                Frame::Bulk(b) => enc.bulk(b).unwrap(),
                Frame::Null => enc.null().unwrap(),
                other => enc.push(other).unwrap(),
            }
        }
        assert_eq!(enc.len(), items.len());
        let want = Frame::Array(items.clone()).to_bytes(resp3);
        let got = enc.finish().to_bytes(resp3);
        assert_eq!(got, want, "resp3={resp3}");
        // Nested as SCAN nests it: [cursor, [keys...]].
        let mut enc = ArrayEncoder::new(usize::MAX, resp3);
        for i in 0..1000 {
            enc.bulk(format!("key:{i}").as_bytes()).unwrap();
        }
        let mut head = b"*2\r\n".to_vec();
        Frame::bulk(u64::MAX.to_string()).encode(&mut head, resp3);
        let got = enc.finish_after(&head).to_bytes(resp3);
        let want = Frame::Array(vec![
            Frame::bulk(u64::MAX.to_string()),
            Frame::Array((0..1000).map(|i| Frame::bulk(format!("key:{i}"))).collect()),
        ]);
        assert_eq!(got, want.to_bytes(resp3));
        assert_eq!(parse(&got, &FrameLimits::default()).unwrap().0, want);
    }
    // A head longer than the headroom still gives the right bytes.
    let mut enc = ArrayEncoder::new(usize::MAX, false);
    enc.bulk(b"x").unwrap();
    let head = Frame::bulk(vec![b'h'; 200]).to_bytes(false);
    let got = enc.finish_after(&head).to_bytes(false);
    assert_eq!(got, [head, b"*1\r\n$1\r\nx\r\n".to_vec()].concat());
}

/// The MGET that used to run a node out of memory: 3000 × a 1 MiB value. The encoder
/// refuses the element that would pass the budget, having held at most the budget.
#[test]
fn array_encoder_stops_at_the_budget() {
    let value = vec![b'v'; 1024 * 1024];
    let budget = 64 * 1024 * 1024;
    let mut enc = ArrayEncoder::new(budget, false);
    let mut accepted = 0;
    let err = (0..3000)
        .find_map(|_| match enc.bulk(&value) {
            Ok(()) => {
                accepted += 1;
                None
            }
            Err(e) => Some(e),
        })
        .expect("refused before 3000 values");
    assert_eq!(err, OverBudget { budget });
    assert_eq!(accepted, 63, "63 values and their framing fit in 64 MiB");
    assert!(enc.bytes() <= budget);
    assert_eq!(enc.bytes(), 63 * (value.len() + "$1048576\r\n\r\n".len()));
    // The refused element left nothing behind; smaller ones still fit.
    enc.bulk(b"small").unwrap();
    assert_eq!(enc.len(), 64);
    // Exactly at the budget is allowed (`$4\r\nabcd\r\n` is 10 bytes), a byte more is not.
    assert!(ArrayEncoder::new(9, false).bulk(b"abcd").is_err());
    let mut enc = ArrayEncoder::new(10, false);
    enc.bulk(b"abcd").unwrap();
    assert_eq!(enc.bytes(), 10);
    assert!(enc.null().is_err());
    assert!(enc.push(&Frame::Integer(1)).is_err());
    assert_eq!(enc.bytes(), 10, "a refused frame is rolled back");
}
