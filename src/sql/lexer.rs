//! A small SQL tokenizer: just enough of SQLite's lexical rules to find function calls,
//! keywords and string literals without ever looking inside a string literal, a quoted
//! identifier or a comment. Used by [`super::determinism`] (rewriting `random()` and
//! friends before a write enters the log) and to refuse a statement text that holds more
//! than one statement.
//!
//! # Invariants
//!
//! - Tokens cover the input exactly: concatenating every token's text gives the input
//!   back, so a rewrite that replaces some tokens changes nothing else.
//! - Never panics on any input (unterminated literals and comments run to the end).

/// What a token is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Spaces, tabs, newlines.
    Space,
    /// `-- ...` or `/* ... */`.
    Comment,
    /// `'...'` (with `''` inside).
    String,
    /// `x'..'` / `X'..'`.
    Blob,
    /// `"..."`, `` `...` `` or `[...]`.
    QuotedIdent,
    /// A keyword or an unquoted identifier.
    Word,
    /// A numeric literal.
    Number,
    /// `?`, `?NNN`, `:name`, `@name`, `$name`.
    Param,
    /// Any other character (operators, parentheses, `;`, `,`).
    Punct,
}

/// One token: its kind and its byte range in the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Token {
    pub kind: Kind,
    pub start: usize,
    pub end: usize,
}

impl Token {
    pub fn text<'a>(&self, sql: &'a str) -> &'a str {
        &sql[self.start..self.end]
    }

    /// True for a word equal (ignoring ASCII case) to `w`.
    pub fn is_word(&self, sql: &str, w: &str) -> bool {
        self.kind == Kind::Word && self.text(sql).eq_ignore_ascii_case(w)
    }

    pub fn is_punct(&self, sql: &str, p: &str) -> bool {
        self.kind == Kind::Punct && self.text(sql) == p
    }

    /// Neither space nor comment.
    pub fn significant(&self) -> bool {
        !matches!(self.kind, Kind::Space | Kind::Comment)
    }
}

fn is_ident_start(c: char) -> bool {
    c.is_alphabetic() || c == '_' || !c.is_ascii()
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$' || !c.is_ascii()
}

/// Splits `sql` into tokens (see the module docs).
pub(crate) fn tokenize(sql: &str) -> Vec<Token> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    // The end of the char starting at `j` (inputs are UTF-8).
    let char_end = |j: usize| j + sql[j..].chars().next().map_or(1, char::len_utf8);
    // The position after the closing `close` of a quoted run starting at `j` (doubled
    // closers are escapes); the end of input when unterminated.
    let quoted = |j: usize, close: u8, doubled: bool| {
        let mut k = j + 1;
        while k < b.len() {
            if b[k] == close {
                if doubled && k + 1 < b.len() && b[k + 1] == close {
                    k += 2;
                    continue;
                }
                return k + 1;
            }
            k += 1;
        }
        b.len()
    };
    while i < b.len() {
        let c = sql[i..].chars().next().unwrap_or(' ');
        let (kind, end) = match c {
            ' ' | '\t' | '\n' | '\r' | '\x0c' => {
                let mut k = i;
                while k < b.len() && matches!(b[k], b' ' | b'\t' | b'\n' | b'\r' | 0x0c) {
                    k += 1;
                }
                (Kind::Space, k)
            }
            '-' if b.get(i + 1) == Some(&b'-') => {
                let k = sql[i..].find('\n').map_or(b.len(), |n| i + n + 1);
                (Kind::Comment, k)
            }
            '/' if b.get(i + 1) == Some(&b'*') => {
                let k = sql[i + 2..].find("*/").map_or(b.len(), |n| i + 2 + n + 2);
                (Kind::Comment, k)
            }
            '\'' => (Kind::String, quoted(i, b'\'', true)),
            'x' | 'X' if b.get(i + 1) == Some(&b'\'') => (Kind::Blob, quoted(i + 1, b'\'', true)),
            '"' => (Kind::QuotedIdent, quoted(i, b'"', true)),
            '`' => (Kind::QuotedIdent, quoted(i, b'`', true)),
            '[' => (Kind::QuotedIdent, quoted(i, b']', false)),
            '?' => {
                let mut k = i + 1;
                while k < b.len() && b[k].is_ascii_digit() {
                    k += 1;
                }
                (Kind::Param, k)
            }
            ':' | '@' | '$'
                if sql[i + 1..]
                    .chars()
                    .next()
                    .is_some_and(|n| is_ident_char(n) && n != '$') =>
            {
                let mut k = i + 1;
                while k < b.len() {
                    let n = sql[k..].chars().next().unwrap_or(' ');
                    if !is_ident_char(n) {
                        break;
                    }
                    k += n.len_utf8();
                }
                (Kind::Param, k)
            }
            c if c.is_ascii_digit()
                || (c == '.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) =>
            {
                let mut k = i;
                while k < b.len() {
                    let d = b[k];
                    let exp_sign = (d == b'+' || d == b'-')
                        && k > i
                        && matches!(b[k - 1], b'e' | b'E')
                        && !sql[i..k].starts_with("0x")
                        && !sql[i..k].starts_with("0X");
                    if d.is_ascii_alphanumeric() || d == b'.' || d == b'_' || exp_sign {
                        k += 1;
                    } else {
                        break;
                    }
                }
                (Kind::Number, k)
            }
            c if is_ident_start(c) => {
                let mut k = i;
                while k < b.len() {
                    let n = sql[k..].chars().next().unwrap_or(' ');
                    if !is_ident_char(n) {
                        break;
                    }
                    k += n.len_utf8();
                }
                (Kind::Word, k)
            }
            _ => (Kind::Punct, char_end(i)),
        };
        out.push(Token {
            kind,
            start: i,
            end: end.max(char_end(i)).min(b.len()),
        });
        i = out.last().map_or(b.len(), |t| t.end);
    }
    out
}

/// The number of statements in `sql` (ignoring empty ones: stray `;`, comments).
/// A `;` inside a `CREATE TRIGGER ... BEGIN ... END` body does not end the statement.
pub(crate) fn count_statements(sql: &str) -> usize {
    let toks: Vec<Token> = tokenize(sql)
        .into_iter()
        .filter(Token::significant)
        .collect();
    let mut count = 0;
    let mut in_stmt = false;
    let mut is_trigger = false;
    // Inside a trigger body: nesting of BEGIN/CASE ... END.
    let mut depth = 0usize;
    for (n, t) in toks.iter().enumerate() {
        if t.is_punct(sql, ";") {
            if !is_trigger || depth == 0 {
                in_stmt = false;
                is_trigger = false;
            }
            continue;
        }
        if !in_stmt {
            in_stmt = true;
            count += 1;
            // CREATE [TEMP|TEMPORARY] TRIGGER
            let words: Vec<&Token> = toks[n..].iter().take(3).collect();
            is_trigger = words.first().is_some_and(|w| w.is_word(sql, "create"))
                && words.iter().skip(1).any(|w| w.is_word(sql, "trigger"));
            depth = 0;
        }
        if is_trigger {
            if t.is_word(sql, "begin") || t.is_word(sql, "case") {
                depth += 1;
            } else if t.is_word(sql, "end") {
                depth = depth.saturating_sub(1);
            }
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(sql: &str) -> Vec<(Kind, &str)> {
        tokenize(sql)
            .into_iter()
            .map(|t| (t.kind, t.text(sql)))
            .collect()
    }

    #[test]
    fn tokens_cover_the_input_and_respect_quotes() {
        let sql = "SELECT 'a''random()' , \"random()\", [x y], `q`, x'00ff', -- random()\n\
                   /* now */ random ( ), :p, ?1, 1.5e+3, é";
        let toks = tokenize(sql);
        let joined: String = toks.iter().map(|t| t.text(sql)).collect();
        assert_eq!(joined, sql);
        let k = kinds(sql);
        assert!(k.contains(&(Kind::String, "'a''random()'")));
        assert!(k.contains(&(Kind::QuotedIdent, "\"random()\"")));
        assert!(k.contains(&(Kind::QuotedIdent, "[x y]")));
        assert!(k.contains(&(Kind::Blob, "x'00ff'")));
        assert!(k.contains(&(Kind::Comment, "-- random()\n")));
        assert!(k.contains(&(Kind::Comment, "/* now */")));
        assert!(k.contains(&(Kind::Param, ":p")));
        assert!(k.contains(&(Kind::Param, "?1")));
        assert!(k.contains(&(Kind::Number, "1.5e+3")));
        assert!(k.contains(&(Kind::Word, "é")));
        assert_eq!(k.iter().filter(|(_, t)| *t == "random").count(), 1);
    }

    #[test]
    fn unterminated_runs_end_at_the_input_end() {
        for sql in [
            "'abc", "\"abc", "/* abc", "[abc", "x'ab", "-- abc", "é'", "$", ":",
        ] {
            let toks = tokenize(sql);
            let joined: String = toks.iter().map(|t| t.text(sql)).collect();
            assert_eq!(joined, sql);
        }
    }

    #[test]
    fn statements_are_counted_with_trigger_bodies() {
        assert_eq!(count_statements("SELECT 1"), 1);
        assert_eq!(count_statements("SELECT 1;"), 1);
        assert_eq!(count_statements("SELECT 1; -- x\n ;"), 1);
        assert_eq!(count_statements("SELECT ';'; SELECT 2"), 2);
        assert_eq!(count_statements("  -- only a comment"), 0);
        assert_eq!(
            count_statements(
                "CREATE TRIGGER t AFTER INSERT ON a BEGIN INSERT INTO b VALUES (1); \
                 UPDATE b SET x = CASE WHEN 1 THEN 2 END; END;"
            ),
            1
        );
        assert_eq!(
            count_statements("CREATE TRIGGER t AFTER INSERT ON a BEGIN SELECT 1; END; SELECT 2"),
            2
        );
    }
}
