//! Redis glob patterns, for `KEYS` and `SCAN ... MATCH`: `*` (any run of bytes), `?` (any
//! one byte), `[abc]`, `[^abc]`, `[a-z]` (a reversed range `[z-a]` means the same), and
//! `\x` (the byte `x` itself), inside and outside brackets. An unterminated `[` class ends
//! at the end of the pattern, and a trailing `\` is a literal backslash, as in Redis.
//!
//! Matching works on bytes and runs in O(pattern × key) time: one remembered `*` position
//! is enough to backtrack, because every other token consumes exactly one byte.

/// True when `key` matches the glob `pattern`.
pub fn matches(pattern: &[u8], key: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    // After a `*`: where the pattern continues, and the key position it was tried at.
    let mut star: Option<(usize, usize)> = None;
    while i < key.len() {
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
                b'[' => match class(pattern, p, key[i]) {
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
            None => return false,
        }
    }
    while p < pattern.len() && pattern[p] == b'*' {
        p += 1;
    }
    p == pattern.len()
}

/// Matches byte `c` against the class starting at `pattern[start] == b'['`; returns
/// whether it matched and the pattern position after the class.
fn class(pattern: &[u8], start: usize, c: u8) -> (bool, usize) {
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

    fn m(p: &str, k: &str) -> bool {
        matches(p.as_bytes(), k.as_bytes())
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
    }

    #[test]
    fn worst_case_is_not_exponential() {
        let key = "a".repeat(4000);
        let pat = format!("{}b", "*a".repeat(50));
        let t = std::time::Instant::now();
        assert!(!m(&pat, &key));
        assert!(t.elapsed() < std::time::Duration::from_secs(2));
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
}
