//! Redis glob patterns, for `KEYS`, `SCAN ... MATCH` and `CONFIG GET`: `*` (any run of
//! bytes), `?` (any one byte), `[abc]`, `[^abc]`, `[a-z]` (a reversed range `[z-a]` means
//! the same), and `\x` (the byte `x` itself), inside and outside brackets. An
//! unterminated `[` class ends at the end of the pattern, and a trailing `\` is a literal
//! backslash, as in Redis.
//!
//! A pattern is compiled once per command ([`Glob::new`]) into a small automaton and then
//! run over every key. Every token except `*` consumes exactly one byte, so the pattern is
//! a chain of states 0..=m (m = the number of one-byte tokens): state j means "the first j
//! tokens matched", and a `*` before token j is a self-loop on state j. The set of live
//! states is kept as bits in `u64` words and advanced with one mask per byte value (a
//! bit-parallel NFA simulation, "shift-and" with self-loops).
//!
//! Invariants:
//! - matching costs at most `len(key) × ceil((m + 1) / 64)` word steps, whatever the
//!   pattern and key (no backtracking: a hostile pattern cannot freeze a node), and only
//!   about `len(key) × (len(key) - m) / 64` when the key is barely longer than the
//!   pattern; [`Glob::work_bound`] states the bound and the tests check it;
//! - compiling costs 256 × ceil((m + 1) / 64) words of memory (264 KiB for an 8 KiB
//!   pattern) and O(256 × m) time, so callers cap the pattern length (the RESP layer
//!   refuses patterns over [`max_pattern_len`]);
//! - the language matched is exactly that of the backtracking matcher paxosdb used before
//!   (Redis's glob syntax and its corner cases), which the tests keep as a reference and
//!   compare against on random patterns and keys;
//! - nothing panics, whatever the pattern and key bytes.

/// The longest pattern a command may use: twice the largest key (room for escapes).
pub fn max_pattern_len(max_key: usize) -> usize {
    max_key.saturating_mul(2).max(64)
}

/// A compiled glob pattern.
#[derive(Clone, Debug)]
pub struct Glob {
    /// Words per state set: `ceil((m + 1) / 64)`.
    words: usize,
    /// The number of one-byte tokens; the accepting state.
    m: usize,
    /// For each byte value `c`, the words whose bit j is set when token j accepts `c`.
    masks: Vec<u64>,
    /// Bit j set when state j has a `*` self-loop.
    loops: Vec<u64>,
    /// Whether the pattern has any `*` (if not, only keys of exactly m bytes can match).
    any_star: bool,
    /// Whether the pattern is only stars (matches every key).
    all: bool,
}

impl Glob {
    /// Compiles `pattern`. Never fails: every byte string is a valid Redis glob. Costs
    /// O(len(pattern) + 256 × ceil((m + 1) / 64) + the bytes listed by its classes).
    pub fn new(pattern: &[u8]) -> Glob {
        let m = Tokens::new(pattern)
            .filter(|t| !matches!(t, Token::Star))
            .count();
        let words = m / 64 + 1;
        let mut masks = vec![0u64; 256 * words];
        let mut loops = vec![0u64; words];
        // States entered by any byte (`?`), or by any byte but a few (`[^...]`).
        let mut any = vec![0u64; words];
        let mut except: Vec<(usize, [u64; 4])> = Vec::new();
        let mut j = 0;
        let mut any_star = false;
        for t in Tokens::new(pattern) {
            let (word, bit) = (j / 64, 1u64 << (j % 64));
            match t {
                Token::Star => {
                    loops[word] |= bit;
                    any_star = true;
                    continue;
                }
                Token::Any => any[word] |= bit,
                Token::Byte(c) => masks[c as usize * words + word] |= bit,
                Token::Class { set, negate: false } => {
                    for c in members(&set) {
                        masks[c * words + word] |= bit;
                    }
                }
                Token::Class { set, negate: true } => {
                    any[word] |= bit;
                    except.push((j, set));
                }
            }
            j += 1;
        }
        if any.iter().any(|&w| w != 0) {
            for row in masks.chunks_mut(words) {
                for (x, a) in row.iter_mut().zip(&any) {
                    *x |= a;
                }
            }
            for (j, set) in except {
                for c in members(&set) {
                    masks[c * words + j / 64] &= !(1u64 << (j % 64));
                }
            }
        }
        Glob {
            words,
            m,
            masks,
            loops,
            any_star,
            all: m == 0 && any_star,
        }
    }

    /// True when the pattern matches every key (it is only `*`s).
    pub fn matches_all(&self) -> bool {
        self.all
    }

    /// True when `key` matches.
    pub fn matches(&self, key: &[u8]) -> bool {
        self.run(key, &mut 0)
    }

    /// The most word steps [`Glob::matches`] may take on a key of `key_len` bytes: at
    /// most `ceil((m + 1) / 64)` per byte, and fewer when the key is barely longer than
    /// the pattern's one-byte tokens (only `key_len - m + 1` states can still lead to a
    /// match at any point).
    pub fn work_bound(&self, key_len: usize) -> u64 {
        if self.all || key_len < self.m {
            return 0;
        }
        let band = (key_len - self.m) / 64 + 2;
        key_len as u64 * band.min(self.words) as u64
    }

    /// Matches `key`, adding the word steps taken to `work`.
    fn run(&self, key: &[u8], work: &mut u64) -> bool {
        if self.all {
            return true;
        }
        if key.len() < self.m || (!self.any_star && key.len() != self.m) {
            return false;
        }
        let (w, n) = (self.words, key.len());
        let mut cur = vec![0u64; w];
        cur[0] = 1;
        // Only words lo..=hi can hold useful states: bits only move up (a byte consumed)
        // or stay (a `*`), so words below the lowest live one stay empty; after i bytes no
        // state above i is live; and a state below m - (n - i) cannot reach m in the
        // n - i bytes left, so it is dropped (words below it are no longer updated).
        let mut lo = 0;
        for (i, &c) in key.iter().enumerate() {
            let hi = ((i + 1) / 64).min(w - 1);
            lo = lo.max((self.m + i).saturating_sub(n) / 64);
            let mask = &self.masks[c as usize * w..(c as usize + 1) * w];
            let mut carry = 0u64;
            let mut live = 0u64;
            for k in lo..=hi {
                let x = cur[k];
                let moved = x & mask[k];
                let next = (moved << 1) | carry | (x & self.loops[k]);
                carry = moved >> 63;
                cur[k] = next;
                live |= next;
            }
            *work += (hi + 1 - lo) as u64;
            if live == 0 {
                return false;
            }
            while cur[lo] == 0 {
                lo += 1;
            }
        }
        cur[self.m / 64] >> (self.m % 64) & 1 == 1
    }
}

/// One element of a pattern.
enum Token {
    /// A run of `*`.
    Star,
    /// `?`
    Any,
    /// A literal byte (escaped or not).
    Byte(u8),
    /// `[...]`: the bytes listed, and whether the class is negated (`[^...]`).
    Class { set: [u64; 4], negate: bool },
}

/// The tokens of a pattern, in order.
struct Tokens<'a> {
    pattern: &'a [u8],
    p: usize,
}

impl<'a> Tokens<'a> {
    fn new(pattern: &'a [u8]) -> Tokens<'a> {
        Tokens { pattern, p: 0 }
    }
}

impl Iterator for Tokens<'_> {
    type Item = Token;

    fn next(&mut self) -> Option<Token> {
        let (pattern, len) = (self.pattern, self.pattern.len());
        let p = self.p;
        let c = *pattern.get(p)?;
        Some(match c {
            b'*' => {
                while self.p < len && pattern[self.p] == b'*' {
                    self.p += 1;
                }
                Token::Star
            }
            b'?' => {
                self.p += 1;
                Token::Any
            }
            b'[' => {
                let (set, negate, next) = class(pattern, p);
                self.p = next;
                Token::Class { set, negate }
            }
            b'\\' if p + 1 < len => {
                self.p += 2;
                Token::Byte(pattern[p + 1])
            }
            c => {
                self.p += 1;
                Token::Byte(c)
            }
        })
    }
}

/// The byte values in a 256-bit set.
fn members(set: &[u64; 4]) -> impl Iterator<Item = usize> + '_ {
    set.iter().enumerate().flat_map(|(w, &bits)| {
        let mut bits = bits;
        std::iter::from_fn(move || {
            (bits != 0).then(|| {
                let b = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                w * 64 + b
            })
        })
    })
}

/// Adds the bytes `lo..=hi` to `set`, a word at a time.
fn add_range(set: &mut [u64; 4], lo: u8, hi: u8) {
    for (w, word) in set.iter_mut().enumerate() {
        let (first, last) = (w * 64, w * 64 + 63);
        let (from, to) = (usize::from(lo).max(first), usize::from(hi).min(last));
        if from <= to {
            let n = to - from + 1;
            let ones = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
            *word |= ones << (from - first);
        }
    }
}

/// The class starting at `pattern[start] == b'['`: the bytes it lists, whether it is
/// negated, and the pattern position after it.
fn class(pattern: &[u8], start: usize) -> ([u64; 4], bool, usize) {
    let len = pattern.len();
    let mut j = start + 1;
    let negate = j < len && pattern[j] == b'^';
    if negate {
        j += 1;
    }
    let mut set = [0u64; 4];
    while j < len {
        match pattern[j] {
            b']' => {
                j += 1;
                break;
            }
            b'\\' if j + 1 < len => {
                add_range(&mut set, pattern[j + 1], pattern[j + 1]);
                j += 2;
            }
            a if j + 2 < len && pattern[j + 1] == b'-' => {
                let b = pattern[j + 2];
                add_range(&mut set, a.min(b), a.max(b));
                j += 3;
            }
            a => {
                add_range(&mut set, a, a);
                j += 1;
            }
        }
    }
    (set, negate, j)
}

/// True when `key` matches the glob `pattern` (compiles it; to match many keys, compile
/// once with [`Glob::new`]).
pub fn matches(pattern: &[u8], key: &[u8]) -> bool {
    Glob::new(pattern).matches(key)
}

/// The bytes every key matching `pattern` starts with (the part before the first special
/// character), so a search can scan only that prefix.
pub fn literal_prefix(pattern: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < pattern.len() {
        match pattern[i] {
            b'*' | b'?' | b'[' => break,
            b'\\' if i + 1 < pattern.len() => {
                out.push(pattern[i + 1]);
                i += 2;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(p: &str, k: &str) -> bool {
        matches(p.as_bytes(), k.as_bytes())
    }

    /// The reference: the straightforward backtracking matcher paxosdb used before (one
    /// remembered `*`, O(pattern × key) per key). Returns the match and its steps.
    fn reference(pattern: &[u8], key: &[u8]) -> (bool, u64) {
        let mut steps = 0u64;
        let (mut p, mut i) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while i < key.len() {
            steps += 1;
            if p < pattern.len() {
                let step = match pattern[p] {
                    b'*' => {
                        while p < pattern.len() && pattern[p] == b'*' {
                            p += 1;
                        }
                        star = Some((p, i));
                        continue;
                    }
                    b'?' => Some(p + 1),
                    b'[' => match ref_class(pattern, p, key[i]) {
                        (true, next) => Some(next),
                        (false, _) => None,
                    },
                    b'\\' if p + 1 < pattern.len() => (pattern[p + 1] == key[i]).then_some(p + 2),
                    c => (c == key[i]).then_some(p + 1),
                };
                if let Some(next) = step {
                    p = next;
                    i += 1;
                    continue;
                }
            }
            match star {
                Some((sp, si)) => {
                    p = sp;
                    i = si + 1;
                    star = Some((sp, si + 1));
                }
                None => return (false, steps),
            }
        }
        while p < pattern.len() && pattern[p] == b'*' {
            p += 1;
        }
        (p == pattern.len(), steps)
    }

    fn ref_class(pattern: &[u8], start: usize, c: u8) -> (bool, usize) {
        let len = pattern.len();
        let mut j = start + 1;
        let negate = j < len && pattern[j] == b'^';
        if negate {
            j += 1;
        }
        let mut hit = false;
        while j < len {
            match pattern[j] {
                b']' => {
                    j += 1;
                    return (hit != negate, j);
                }
                b'\\' if j + 1 < len => {
                    hit |= pattern[j + 1] == c;
                    j += 2;
                }
                a if j + 2 < len && pattern[j + 1] == b'-' => {
                    let b = pattern[j + 2];
                    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
                    hit |= lo <= c && c <= hi;
                    j += 3;
                }
                a => {
                    hit |= a == c;
                    j += 1;
                }
            }
        }
        (hit != negate, j)
    }

    #[test]
    fn stars_and_questions() {
        assert!(m("*", ""));
        assert!(m("*", "anything"));
        assert!(m("h?llo", "hello"));
        assert!(m("h?llo", "hallo"));
        assert!(!m("h?llo", "hllo"));
        assert!(m("h*llo", "hllo"));
        assert!(m("h*llo", "heeeello"));
        assert!(!m("h*llo", "heeeellox"));
        assert!(m("user:*:name", "user:42:name"));
        assert!(!m("user:*:name", "user:42:age"));
        assert!(m("**a**", "bab"));
        assert!(m("a*b*c", "a-b-b-c"));
        assert!(!m("a*b*c", "a-b-b-"));
        assert!(!m("", "a"));
        assert!(m("", ""));
        assert!(!m("?", ""));
    }

    #[test]
    fn classes() {
        assert!(m("h[ae]llo", "hello"));
        assert!(m("h[ae]llo", "hallo"));
        assert!(!m("h[ae]llo", "hillo"));
        assert!(m("h[^e]llo", "hallo"));
        assert!(!m("h[^e]llo", "hello"));
        assert!(m("h[a-b]llo", "hbllo"));
        assert!(!m("h[a-b]llo", "hcllo"));
        assert!(m("h[b-a]llo", "hallo"), "reversed ranges work like Redis");
        assert!(m("[\\]]", "]"));
        assert!(m("[a-]", "a"), "a dangling dash does not break the class");
        assert!(
            m("x[abc", "xa"),
            "an unterminated class ends at the pattern end"
        );
        assert!(!m("x[abc", "xd"));
        assert!(m("*[0-9]", "key9"));
        assert!(!m("*[0-9]", "key"));
        assert!(!m("[]", "a"), "an empty class matches nothing");
        assert!(m("[^]", "a"), "an empty negated class matches anything");
    }

    #[test]
    fn escapes() {
        assert!(m("\\*", "*"));
        assert!(!m("\\*", "a"));
        assert!(m("a\\?b", "a?b"));
        assert!(!m("a\\?b", "axb"));
        assert!(m("a\\", "a\\"), "a trailing backslash is literal");
        assert!(m("\\[x]", "[x]"));
    }

    #[test]
    fn bytes_not_chars() {
        assert!(matches(b"\xff*", b"\xff\x00\x01"));
        assert!(matches(b"?", b"\x80"));
        assert!(matches(b"[\x00-\xff]", b"\x7f"));
        // Ranges and negations across the 64-byte words of a class's set.
        for c in 0..=255u8 {
            let k = [c];
            assert_eq!(matches(b"[\x3f-\xc1]", &k), (0x3f..=0xc1).contains(&c));
            assert_eq!(matches(b"[^\x3f-\xc1]", &k), !(0x3f..=0xc1).contains(&c));
            assert!(matches(b"[\xff-\x00]", &k));
            assert_eq!(matches(b"[^a]", &k), c != b'a');
            assert!(matches(b"[^]", &k));
            assert!(matches(b"?", &k));
            assert_eq!(matches(b"[ac-e]", &k), b"acde".contains(&c));
        }
    }

    #[test]
    fn worst_case_is_not_exponential() {
        let key = "a".repeat(4000);
        let pat = format!("{}b", "*a".repeat(50));
        let g = Glob::new(pat.as_bytes());
        let mut work = 0;
        assert!(!g.run(key.as_bytes(), &mut work));
        assert!(work <= g.work_bound(key.len()), "{work}");
    }

    /// The pattern that froze a node: `*` + 4000 × `a` + `b` against 4 KiB keys. The
    /// backtracking matcher spends up to 8 million steps per key; this one stays within
    /// its bound (here 3 words per key byte).
    #[test]
    fn crafted_pattern_over_4k_keys_is_bounded() {
        let pat = format!("*{}b", "a".repeat(4000));
        let g = Glob::new(pat.as_bytes());
        assert_eq!(g.words, 63, "4001 one-byte tokens + 1 state = 63 words");
        let mut keys: Vec<Vec<u8>> = vec![
            vec![b'a'; 4096],
            [vec![b'a'; 4095], vec![b'b']].concat(),
            [vec![b'x'; 95], vec![b'a'; 4000], vec![b'b']].concat(),
            [vec![b'a'; 3000], vec![b'b'], vec![b'a'; 1095]].concat(),
            [vec![b'a'; 3999], vec![b'b'; 97]].concat(),
        ];
        // And keys with one byte changed anywhere in the 4000 `a`s before the `b`.
        for at in [0, 1, 63, 64, 2000, 3999] {
            let mut k = [vec![b'a'; 4095], vec![b'b']].concat();
            k[95 + at] = b'c';
            keys.push(k);
        }
        let want = [false, true, true, false, false];
        let (mut total, mut total_old) = (0u64, 0u64);
        for (n, key) in keys.iter().enumerate() {
            assert_eq!(key.len(), 4096);
            let mut work = 0;
            let got = g.run(key, &mut work);
            assert_eq!(got, want.get(n).copied().unwrap_or(false), "key {n}");
            assert!(work <= g.work_bound(key.len()), "key {n}: {work} steps");
            total += work;
            // The old matcher agrees, at a far higher cost.
            let (old, old_steps) = reference(pat.as_bytes(), key);
            assert_eq!(old, got, "key {n}");
            total_old += old_steps;
        }
        // Only keys 96 bytes longer than the 4001 tokens: a band of 3 words per byte.
        assert_eq!(g.work_bound(4096), 3 * 4096);
        assert!(total <= keys.len() as u64 * 3 * 4096, "{total}");
        assert!(total_old > 100 * total, "old {total_old} vs new {total}");
    }

    #[test]
    fn work_is_bounded_for_every_shape() {
        let key = vec![b'a'; 4096];
        for pat in [
            "*".repeat(8192),
            "?".repeat(8192),
            "*a".repeat(4096),
            "[a-z]*".repeat(2000),
            format!("{}*", "a".repeat(8000)),
        ] {
            let g = Glob::new(pat.as_bytes());
            let mut work = 0;
            g.run(&key, &mut work);
            assert!(work <= g.work_bound(key.len()), "{pat:.20}: {work}");
        }
        assert!(Glob::new(b"***").matches_all());
        assert!(!Glob::new(b"*?").matches_all());
    }

    #[test]
    fn prefixes() {
        assert_eq!(literal_prefix(b"user:*"), b"user:");
        assert_eq!(literal_prefix(b"*"), b"");
        assert_eq!(literal_prefix(b"a\\*b*"), b"a*b");
        assert_eq!(literal_prefix(b"ab?"), b"ab");
        assert_eq!(literal_prefix(b"ab[c]"), b"ab");
        assert_eq!(literal_prefix(b"abc"), b"abc");
    }

    /// Short patterns and keys over a small alphabet, where the interesting cases (stars
    /// next to classes, escapes, ranges, unterminated classes) are dense.
    fn pattern() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(prop::sample::select(b"ab*?[]^-\\c\xff".to_vec()), 0..14)
    }

    fn key() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(prop::sample::select(b"abc-]^*\\\xff".to_vec()), 0..12)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        #[test]
        fn agrees_with_the_reference(p in pattern(), k in key()) {
            let g = Glob::new(&p);
            let mut work = 0;
            prop_assert_eq!(g.run(&k, &mut work), reference(&p, &k).0);
            prop_assert!(work <= g.work_bound(k.len()));
        }

        #[test]
        fn agrees_on_long_patterns(
            parts in prop::collection::vec((0..4u8, 0..80usize), 1..6),
            k in prop::collection::vec(prop::sample::select(b"ab".to_vec()), 0..200),
        ) {
            // Long runs cross the 64-bit word boundaries of the state set.
            let mut p = Vec::new();
            for (kind, n) in parts {
                match kind {
                    0 => p.push(b'*'),
                    1 => p.extend(std::iter::repeat_n(b'a', n)),
                    2 => p.extend(std::iter::repeat_n(b'?', n % 8)),
                    _ => p.extend_from_slice(b"[ab]"),
                }
            }
            let g = Glob::new(&p);
            let mut work = 0;
            prop_assert_eq!(g.run(&k, &mut work), reference(&p, &k).0);
            prop_assert!(work <= g.work_bound(k.len()));
        }
    }
}
