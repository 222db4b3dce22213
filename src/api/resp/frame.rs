//! RESP frames: the value type, an incremental parser with limits, and the encoder.
//!
//! The parser works on whatever bytes have arrived so far. It either returns one complete
//! frame and how many bytes it used, or [`FrameError::Incomplete`] (wait for more bytes),
//! or [`FrameError::Protocol`] (the peer is not speaking RESP, or asked for more than the
//! [`FrameLimits`] allow). Invariants, checked by the tests and the fuzz test:
//!
//! - it never panics, whatever the input;
//! - it never claims more bytes than it was given;
//! - it never allocates more than the input justifies (declared lengths and element counts
//!   are checked against the limits and against the bytes actually present before anything
//!   is allocated for them), and it refuses nesting deeper than `max_depth`, so a hostile
//!   client cannot exhaust memory or stack.
//!
//! [`parse`] reads any RESP2 or RESP3 frame (used by tests and clients). The server reads
//! requests with [`parse_request`], which follows Redis: a request is either a multibulk
//! (`*N` followed by N bulk strings) or an inline command (one line of space-separated
//! words, as typed into `telnet`).
//!
//! Encoding follows the connection's protocol version: in RESP2, maps become flat arrays,
//! booleans integers, doubles bulk strings and null `$-1`. Replies with many or large
//! elements (MGET, KEYS, SCAN) are encoded as they are built, by [`ArrayEncoder`], within
//! a byte budget, and carried as [`Frame::Encoded`] bytes, so a reply is never built twice
//! and never grows past `max_reply_bytes`.

use std::fmt;

/// One RESP value.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    /// `+OK`
    Simple(String),
    /// `-ERR message`: the first word is the error kind (`ERR`, `TRYAGAIN`, ...).
    Error(String),
    /// `:42`
    Integer(i64),
    /// `$3\r\nfoo`
    Bulk(Vec<u8>),
    /// `$-1` / `*-1` in RESP2, `_` in RESP3.
    Null,
    /// `*N`
    Array(Vec<Frame>),
    /// RESP3 `%N` (a flat array of key, value, ... in RESP2).
    Map(Vec<(Frame, Frame)>),
    /// RESP3 `#t` / `#f` (integer 1 / 0 in RESP2).
    Boolean(bool),
    /// RESP3 `,1.5` (a bulk string in RESP2).
    Double(f64),
    /// A reply already encoded for its connection's protocol version (built by
    /// [`ArrayEncoder`]); written out as it is. The parser never produces it.
    Encoded(Encoded),
}

/// Encoded reply bytes: `buf[start..]` (the bytes before `start` are unused headroom).
#[derive(Clone, PartialEq, Eq)]
pub struct Encoded {
    buf: Vec<u8>,
    start: usize,
}

impl Encoded {
    /// Wraps bytes that are already a valid encoding.
    pub fn from_vec(buf: Vec<u8>) -> Encoded {
        Encoded { buf, start: 0 }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    pub fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for Encoded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.as_bytes();
        let shown = String::from_utf8_lossy(&b[..b.len().min(256)]);
        write!(f, "Encoded({} bytes: {shown:?})", b.len())
    }
}

/// The reply to build would pass its byte budget (`max_reply_bytes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OverBudget {
    pub budget: usize,
}

/// Room kept before an [`ArrayEncoder`]'s elements for the headers written last.
const HEADROOM: usize = 64;

/// Builds an array reply by encoding each element as it comes, straight into the bytes
/// that will be written, within a byte budget.
///
/// Invariants: the elements are encoded once and never held in a second structure; the
/// encoded elements never exceed `budget` bytes (an element that would pass it is refused
/// with [`OverBudget`] before it is copied); the element count, which comes first on the
/// wire, is written at the end into headroom kept at the front, so finishing does not
/// copy the reply either.
pub struct ArrayEncoder {
    buf: Vec<u8>,
    count: usize,
    budget: usize,
    resp3: bool,
}

impl ArrayEncoder {
    pub fn new(budget: usize, resp3: bool) -> ArrayEncoder {
        ArrayEncoder {
            buf: vec![0; HEADROOM],
            count: 0,
            budget,
            resp3,
        }
    }

    /// Bytes of elements encoded so far.
    pub fn bytes(&self) -> usize {
        self.buf.len() - HEADROOM
    }

    /// Elements encoded so far.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn charge(&self, n: usize) -> Result<(), OverBudget> {
        if self.bytes().saturating_add(n) > self.budget {
            Err(OverBudget {
                budget: self.budget,
            })
        } else {
            Ok(())
        }
    }

    /// Appends a bulk string.
    pub fn bulk(&mut self, b: &[u8]) -> Result<(), OverBudget> {
        self.charge(decimal_len(b.len()) + b.len() + 5)?;
        header(&mut self.buf, b'$', b.len() as i64);
        self.buf.extend_from_slice(b);
        self.buf.extend_from_slice(b"\r\n");
        self.count += 1;
        Ok(())
    }

    /// Appends a null (`$-1` in RESP2, `_` in RESP3).
    pub fn null(&mut self) -> Result<(), OverBudget> {
        self.push(&Frame::Null)
    }

    /// Appends any frame (for small ones: it is built already; only its encoding counts).
    pub fn push(&mut self, f: &Frame) -> Result<(), OverBudget> {
        let before = self.buf.len();
        f.encode(&mut self.buf, self.resp3);
        if self.bytes() > self.budget {
            self.buf.truncate(before);
            return Err(OverBudget {
                budget: self.budget,
            });
        }
        self.count += 1;
        Ok(())
    }

    /// The array as a reply.
    pub fn finish(self) -> Frame {
        self.finish_after(&[])
    }

    /// The array as the last element of a reply whose encoding starts with `head` (e.g.
    /// `*2\r\n$1\r\n0\r\n` for SCAN's `[cursor, [keys...]]`).
    pub fn finish_after(mut self, head: &[u8]) -> Frame {
        let mut top = head.to_vec();
        header(&mut top, b'*', self.count as i64);
        if top.len() <= HEADROOM {
            let start = HEADROOM - top.len();
            self.buf[start..HEADROOM].copy_from_slice(&top);
            Frame::Encoded(Encoded {
                buf: self.buf,
                start,
            })
        } else {
            top.extend_from_slice(&self.buf[HEADROOM..]);
            Frame::Encoded(Encoded::from_vec(top))
        }
    }
}

/// Digits of `n` in decimal.
fn decimal_len(mut n: usize) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

impl Frame {
    pub fn ok() -> Frame {
        Frame::Simple("OK".into())
    }

    /// An error reply; `msg` starts with the error kind, e.g. `"ERR syntax error"`.
    pub fn error(msg: impl Into<String>) -> Frame {
        Frame::Error(msg.into())
    }

    pub fn bulk(b: impl Into<Vec<u8>>) -> Frame {
        Frame::Bulk(b.into())
    }

    /// Appends the encoding of this frame to `out`, in RESP3 if `resp3`, else RESP2.
    pub fn encode(&self, out: &mut Vec<u8>, resp3: bool) {
        match self {
            Frame::Simple(s) => line(out, b'+', s),
            Frame::Error(s) => line(out, b'-', s),
            Frame::Integer(i) => header(out, b':', *i),
            Frame::Bulk(b) => {
                header(out, b'$', b.len() as i64);
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Frame::Null if resp3 => out.extend_from_slice(b"_\r\n"),
            Frame::Null => out.extend_from_slice(b"$-1\r\n"),
            Frame::Array(items) => {
                header(out, b'*', items.len() as i64);
                for f in items {
                    f.encode(out, resp3);
                }
            }
            Frame::Map(pairs) => {
                if resp3 {
                    header(out, b'%', pairs.len() as i64);
                } else {
                    header(out, b'*', 2 * pairs.len() as i64);
                }
                for (k, v) in pairs {
                    k.encode(out, resp3);
                    v.encode(out, resp3);
                }
            }
            Frame::Boolean(b) if resp3 => {
                out.extend_from_slice(if *b { b"#t\r\n" } else { b"#f\r\n" })
            }
            Frame::Boolean(b) => header(out, b':', *b as i64),
            Frame::Double(d) => {
                let s = format_double(*d);
                if resp3 {
                    line(out, b',', &s);
                } else {
                    Frame::Bulk(s.into_bytes()).encode(out, false);
                }
            }
            Frame::Encoded(e) => out.extend_from_slice(e.as_bytes()),
        }
    }

    /// The encoding of this frame as a new buffer.
    pub fn to_bytes(&self, resp3: bool) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out, resp3);
        out
    }
}

fn format_double(d: f64) -> String {
    if d.is_nan() {
        "nan".into()
    } else if d.is_infinite() {
        if d > 0.0 { "inf" } else { "-inf" }.into()
    } else {
        d.to_string()
    }
}

/// A one-line frame; CR and LF (which would end the line early) become spaces.
fn line(out: &mut Vec<u8>, kind: u8, s: &str) {
    out.push(kind);
    out.extend(
        s.bytes()
            .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.extend_from_slice(b"\r\n");
}

fn header(out: &mut Vec<u8>, kind: u8, n: i64) {
    use std::io::Write;
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{}{n}\r\n", kind as char);
}

/// Why a frame could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The bytes so far are a valid beginning; read more.
    Incomplete,
    /// Not valid RESP, or beyond the limits. The message completes
    /// `"ERR Protocol error: "`.
    Protocol(String),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Incomplete => write!(f, "incomplete frame"),
            FrameError::Protocol(m) => write!(f, "{m}"),
        }
    }
}

fn protocol(msg: impl Into<String>) -> FrameError {
    FrameError::Protocol(msg.into())
}

/// What one frame (one request) may contain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLimits {
    /// Largest bulk string, in bytes.
    pub max_bulk: usize,
    /// Most elements of one array (a map of N pairs counts 2N).
    pub max_elements: usize,
    /// Longest line: inline commands, simple strings, errors.
    pub max_inline: usize,
    /// Deepest nesting of arrays and maps.
    pub max_depth: usize,
    /// Largest whole frame, in bytes.
    pub max_frame: usize,
}

impl FrameLimits {
    /// Limits for a server whose values may be `max_value` bytes: a bulk string holds a
    /// value with room to spare (2 × + 64 KiB), and a whole request an MSET of the
    /// largest size the node accepts (4 × the value limit) with room for its framing.
    pub fn for_max_value(max_value: usize) -> FrameLimits {
        FrameLimits {
            max_bulk: max_value.saturating_mul(2).saturating_add(64 * 1024),
            max_elements: 1024 * 1024,
            max_inline: 64 * 1024,
            max_depth: 8,
            max_frame: max_value.saturating_mul(8).saturating_add(1024 * 1024),
        }
    }
}

impl Default for FrameLimits {
    fn default() -> Self {
        FrameLimits::for_max_value(crate::command::Limits::default().max_value)
    }
}

/// Longest header line (`$123\r\n`): a sign, 20 digits and some slack.
const MAX_HEADER: usize = 32;

/// Parses one frame from the start of `buf`; returns it and the number of bytes it used.
pub fn parse(buf: &[u8], limits: &FrameLimits) -> Result<(Frame, usize), FrameError> {
    let mut p = Parser { buf, limits };
    let (frame, end) = p.frame(0, 0, true)?;
    Ok((frame.expect("built"), end))
}

/// Parses one client request from the start of `buf`: its arguments (an empty list for a
/// blank line or an empty multibulk, which the server ignores) and the bytes it used.
pub fn parse_request(
    buf: &[u8],
    limits: &FrameLimits,
) -> Result<(Vec<Vec<u8>>, usize), FrameError> {
    match buf.first() {
        None => Err(FrameError::Incomplete),
        Some(b'*') => {
            let mut p = Parser { buf, limits };
            // A cheap pass that allocates nothing, so a request arriving in many reads is
            // not rebuilt on every read.
            p.frame(0, 0, false)?;
            let (frame, end) = p.frame(0, 0, true)?;
            match frame {
                Some(Frame::Array(items)) => {
                    let mut args = Vec::with_capacity(items.len());
                    for item in items {
                        match item {
                            Frame::Bulk(b) => args.push(b),
                            other => {
                                return Err(protocol(format!(
                                    "expected '$', got '{}'",
                                    kind_char(&other)
                                )))
                            }
                        }
                    }
                    Ok((args, end))
                }
                // `*-1`: a null request, ignored like an empty one.
                _ => Ok((Vec::new(), end)),
            }
        }
        Some(_) => parse_inline(buf, limits),
    }
}

fn kind_char(f: &Frame) -> char {
    match f {
        Frame::Simple(_) => '+',
        Frame::Error(_) => '-',
        Frame::Integer(_) => ':',
        Frame::Bulk(_) => '$',
        Frame::Null => '_',
        Frame::Array(_) => '*',
        Frame::Map(_) => '%',
        Frame::Boolean(_) => '#',
        Frame::Double(_) => ',',
        Frame::Encoded(_) => '?',
    }
}

/// An inline command: one line, ended by `\n` (a `\r` before it is dropped), split on
/// spaces and tabs. Double and single quotes group words, as in redis-cli.
fn parse_inline(buf: &[u8], limits: &FrameLimits) -> Result<(Vec<Vec<u8>>, usize), FrameError> {
    let nl = match buf
        .iter()
        .take(limits.max_inline + 1)
        .position(|&b| b == b'\n')
    {
        Some(i) => i,
        None if buf.len() > limits.max_inline => return Err(protocol("too big inline request")),
        None => return Err(FrameError::Incomplete),
    };
    let mut text = &buf[..nl];
    if let Some(stripped) = text.strip_suffix(b"\r") {
        text = stripped;
    }
    Ok((split_inline(text)?, nl + 1))
}

fn split_inline(text: &[u8]) -> Result<Vec<Vec<u8>>, FrameError> {
    let mut args = Vec::new();
    let mut i = 0;
    while i < text.len() {
        while i < text.len() && (text[i] == b' ' || text[i] == b'\t') {
            i += 1;
        }
        if i >= text.len() {
            break;
        }
        let mut word = Vec::new();
        while i < text.len() && text[i] != b' ' && text[i] != b'\t' {
            let q = text[i];
            if q == b'"' || q == b'\'' {
                i += 1;
                loop {
                    match text.get(i) {
                        None => return Err(protocol("unbalanced quotes in request")),
                        Some(&c) if c == q => {
                            i += 1;
                            break;
                        }
                        Some(b'\\') if q == b'"' && i + 1 < text.len() => {
                            word.push(match text[i + 1] {
                                b'n' => b'\n',
                                b'r' => b'\r',
                                b't' => b'\t',
                                c => c,
                            });
                            i += 2;
                        }
                        Some(&c) => {
                            word.push(c);
                            i += 1;
                        }
                    }
                }
            } else {
                word.push(q);
                i += 1;
            }
        }
        args.push(word);
    }
    Ok(args)
}

struct Parser<'a> {
    buf: &'a [u8],
    limits: &'a FrameLimits,
}

impl Parser<'_> {
    /// Checks that `end` stays inside the frame size limit.
    fn within(&self, end: usize) -> Result<(), FrameError> {
        if end > self.limits.max_frame {
            Err(protocol(format!(
                "request larger than {} bytes",
                self.limits.max_frame
            )))
        } else {
            Ok(())
        }
    }

    /// The line starting at `pos` (without its CRLF) and the position after the CRLF.
    fn line(&self, pos: usize, max: usize) -> Result<(&[u8], usize), FrameError> {
        let rest = self.buf.get(pos..).unwrap_or(&[]);
        let window = &rest[..rest.len().min(max + 2)];
        match window.windows(2).position(|w| w == b"\r\n") {
            Some(i) => Ok((&rest[..i], pos + i + 2)),
            None if rest.len() >= max + 2 => Err(protocol("line too long or missing CRLF")),
            None => Err(FrameError::Incomplete),
        }
    }

    fn number(&self, pos: usize, what: &str) -> Result<(i64, usize), FrameError> {
        let (text, next) = self.line(pos, MAX_HEADER)?;
        let n = parse_i64(text).ok_or_else(|| protocol(format!("invalid {what}")))?;
        Ok((n, next))
    }

    /// Parses (when `build`) or only checks the frame at `pos`; returns the end position.
    fn frame(
        &mut self,
        pos: usize,
        depth: usize,
        build: bool,
    ) -> Result<(Option<Frame>, usize), FrameError> {
        let Some(&kind) = self.buf.get(pos) else {
            return Err(FrameError::Incomplete);
        };
        let body = pos + 1;
        let (frame, end) = match kind {
            b'+' | b'-' => {
                let (text, next) = self.line(body, self.limits.max_inline)?;
                let s = build.then(|| String::from_utf8_lossy(text).into_owned());
                let f = s.map(|s| {
                    if kind == b'+' {
                        Frame::Simple(s)
                    } else {
                        Frame::Error(s)
                    }
                });
                (f, next)
            }
            b':' => {
                let (n, next) = self.number(body, "integer")?;
                (Some(Frame::Integer(n)), next)
            }
            b'$' => {
                let (len, next) = self.number(body, "bulk length")?;
                if len == -1 {
                    (Some(Frame::Null), next)
                } else if len < 0 || len as u64 > self.limits.max_bulk as u64 {
                    return Err(protocol("invalid bulk length"));
                } else {
                    let len = len as usize;
                    let end = next + len + 2;
                    self.within(end)?;
                    if self.buf.len() < end {
                        return Err(FrameError::Incomplete);
                    }
                    if &self.buf[end - 2..end] != b"\r\n" {
                        return Err(protocol("bulk string not followed by CRLF"));
                    }
                    (
                        build.then(|| Frame::Bulk(self.buf[next..end - 2].to_vec())),
                        end,
                    )
                }
            }
            b'*' | b'%' | b'~' | b'>' => {
                let (n, mut next) = self.number(body, "multibulk length")?;
                if n == -1 && kind == b'*' {
                    return Ok((Some(Frame::Null), next));
                }
                let per = if kind == b'%' { 2 } else { 1 };
                if n < 0 || (n as u64).saturating_mul(per) > self.limits.max_elements as u64 {
                    return Err(protocol("invalid multibulk length"));
                }
                if depth >= self.limits.max_depth {
                    return Err(protocol("nesting too deep"));
                }
                let count = n as usize * per as usize;
                // Never trust the declared count for the allocation: elements are added
                // as they are parsed.
                let mut items = Vec::with_capacity(if build { count.min(1024) } else { 0 });
                for _ in 0..count {
                    let (f, e) = self.frame(next, depth + 1, build)?;
                    self.within(e)?;
                    next = e;
                    if let Some(f) = f {
                        items.push(f);
                    }
                }
                let f = build.then(|| {
                    if kind == b'%' {
                        let mut pairs = Vec::with_capacity(items.len() / 2);
                        let mut it = items.into_iter();
                        while let (Some(k), Some(v)) = (it.next(), it.next()) {
                            pairs.push((k, v));
                        }
                        Frame::Map(pairs)
                    } else {
                        Frame::Array(items)
                    }
                });
                (f, next)
            }
            b'_' => {
                let (text, next) = self.line(body, MAX_HEADER)?;
                if !text.is_empty() {
                    return Err(protocol("invalid null"));
                }
                (Some(Frame::Null), next)
            }
            b'#' => {
                let (text, next) = self.line(body, MAX_HEADER)?;
                let b = match text {
                    b"t" => true,
                    b"f" => false,
                    _ => return Err(protocol("invalid boolean")),
                };
                (Some(Frame::Boolean(b)), next)
            }
            b',' => {
                let (text, next) = self.line(body, 512)?;
                let d = std::str::from_utf8(text)
                    .ok()
                    .and_then(|s| s.parse::<f64>().ok())
                    .ok_or_else(|| protocol("invalid double"))?;
                (Some(Frame::Double(d)), next)
            }
            other => {
                return Err(protocol(format!(
                    "unexpected type byte 0x{other:02x} at offset {pos}"
                )))
            }
        };
        self.within(end)?;
        Ok((if build { frame } else { None }, end))
    }
}

/// A strict decimal i64: optional `-`, digits only, no overflow.
fn parse_i64(text: &[u8]) -> Option<i64> {
    let (neg, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        let d = (d - b'0') as i64;
        n = n.checked_mul(10)?;
        n = if neg {
            n.checked_sub(d)?
        } else {
            n.checked_add(d)?
        };
    }
    Some(n)
}

#[cfg(test)]
mod tests;
