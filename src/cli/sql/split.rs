//! Reading SQL text the way the shell needs it: splitting it into statements at `;`, and
//! telling a statement that can only read from one that may write.
//!
//! The splitter knows SQLite's lexical shapes that may hide a `;`: string literals
//! (`'...'`, with `''` inside), quoted identifiers (`"..."`, `` `...` ``, `[...]`),
//! comments (`-- ...` and `/* ... */`), and trigger bodies (`CREATE TRIGGER ... BEGIN
//! ...; ...; END;`, where only the `;` right after `END` ends the statement).
//!
//! The read-only rule ([`is_read_only`]) is conservative: it answers `true` only for a
//! statement that starts with `SELECT`, `VALUES` or `EXPLAIN`, or starts with `WITH` and
//! names none of `INSERT`, `UPDATE`, `DELETE`, `REPLACE` outside literals. Anything else
//! (PRAGMA, DDL, writes, `WITH ... INSERT`) is treated as a possible write. A wrong "may
//! write" only costs a trip through the log; a wrong "read-only" would be refused by the
//! node, never run as a read.
//!
//! # Invariants
//!
//! - A `;` inside a literal, a quoted identifier, a comment or a trigger body never ends a
//!   statement.
//! - Statements that are empty or only comments are dropped, never sent.

/// Where the scanner is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lex {
    Normal,
    /// Inside a literal or quoted identifier closed by this character (doubled = escaped).
    Quoted(char),
    /// Inside `[...]`.
    Bracket,
    LineComment,
    BlockComment,
}

/// SQL text cut into complete statements and what is left after the last one.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Split {
    /// Complete statements (each ended by `;`), trimmed, without their `;`.
    pub statements: Vec<String>,
    /// The text after the last complete statement.
    pub rest: String,
    /// Whether `rest` holds anything but whitespace and comments (an unfinished statement).
    pub rest_has_content: bool,
}

fn word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$'
}

/// Calls `on` with each token of `input`: words and top-level `;` outside literals,
/// quoted identifiers and comments, and [`Token::Other`] for any other content.
fn lex(input: &str, mut on: impl FnMut(Token<'_>)) {
    let mut st = Lex::Normal;
    let mut word_start: Option<usize> = None;
    let mut it = input.char_indices().peekable();
    while let Some((pos, c)) = it.next() {
        let next = it.peek().map(|&(_, n)| n);
        match st {
            Lex::Normal => {
                if word_char(c) {
                    word_start.get_or_insert(pos);
                    continue;
                }
                if let Some(s) = word_start.take() {
                    on(Token::Word(&input[s..pos]));
                }
                match c {
                    '\'' | '"' | '`' => {
                        st = Lex::Quoted(c);
                        on(Token::Other);
                    }
                    '[' => {
                        st = Lex::Bracket;
                        on(Token::Other);
                    }
                    '-' if next == Some('-') => {
                        it.next();
                        st = Lex::LineComment;
                    }
                    '/' if next == Some('*') => {
                        it.next();
                        st = Lex::BlockComment;
                    }
                    ';' => on(Token::Semicolon(pos)),
                    c if c.is_whitespace() => {}
                    _ => on(Token::Other),
                }
            }
            Lex::Quoted(q) => {
                if c == q {
                    if next == Some(q) {
                        it.next();
                    } else {
                        st = Lex::Normal;
                    }
                }
            }
            Lex::Bracket => {
                if c == ']' {
                    st = Lex::Normal;
                }
            }
            Lex::LineComment => {
                if c == '\n' {
                    st = Lex::Normal;
                }
            }
            Lex::BlockComment => {
                if c == '*' && next == Some('/') {
                    it.next();
                    st = Lex::Normal;
                }
            }
        }
    }
    if let Some(s) = word_start {
        on(Token::Word(&input[s..]));
    }
}

/// What the lexer reports.
#[derive(Debug)]
enum Token<'a> {
    /// A keyword or bare identifier (or number).
    Word(&'a str),
    /// A `;` at top level, at this byte offset.
    Semicolon(usize),
    /// Any other content: punctuation, a literal, a quoted identifier.
    Other,
}

/// Cuts `input` into complete statements.
pub fn split(input: &str) -> Split {
    let mut out = Split::default();
    let mut start = 0;
    let mut first: Vec<String> = Vec::new();
    let mut last_word_is_end = false;
    let mut has_content = false;
    lex(input, |t| match t {
        Token::Word(w) => {
            has_content = true;
            if first.len() < 3 {
                first.push(w.to_ascii_uppercase());
            }
            last_word_is_end = w.eq_ignore_ascii_case("END");
        }
        Token::Other => {
            has_content = true;
            last_word_is_end = false;
        }
        Token::Semicolon(pos) => {
            if is_trigger(&first) && !last_word_is_end {
                // A `;` between the statements of a trigger body.
                last_word_is_end = false;
                return;
            }
            if has_content {
                out.statements.push(input[start..pos].trim().to_string());
            }
            start = pos + 1;
            first.clear();
            has_content = false;
            last_word_is_end = false;
        }
    });
    out.rest = input[start..].to_string();
    out.rest_has_content = has_content;
    out
}

/// `CREATE [TEMP|TEMPORARY] TRIGGER`.
fn is_trigger(first: &[String]) -> bool {
    match first {
        [c, t, ..] if c == "CREATE" && t == "TRIGGER" => true,
        [c, tmp, t] if c == "CREATE" && (tmp == "TEMP" || tmp == "TEMPORARY") => t == "TRIGGER",
        _ => false,
    }
}

/// The upper-case words of `sql` outside literals and comments.
fn words(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    lex(sql, |t| {
        if let Token::Word(w) = t {
            out.push(w.to_ascii_uppercase());
        }
    });
    out
}

/// The first keyword of `sql` (upper case), skipping comments; `None` if there is none.
pub fn first_keyword(sql: &str) -> Option<String> {
    let mut first = None;
    let mut done = false;
    lex(sql, |t| {
        if done {
            return;
        }
        match t {
            Token::Word(w) => {
                first = Some(w.to_ascii_uppercase());
                done = true;
            }
            Token::Semicolon(_) => done = true,
            // `(SELECT ...)` and the like: look past opening punctuation.
            Token::Other => {}
        }
    });
    first
}

/// What a write statement may do to rows, for reporting it: SQLite's change count and
/// last insert id are those of the last statement that changed rows, so they say
/// something about this statement only if it may change (`dml`) or insert rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// Names `INSERT`, `UPDATE`, `DELETE` or `REPLACE`.
    pub dml: bool,
    /// Names `INSERT` or `REPLACE`.
    pub insert: bool,
}

/// The [`Effects`] `sql` may have.
pub fn effects(sql: &str) -> Effects {
    let mut e = Effects::default();
    for w in words(sql) {
        match w.as_str() {
            "INSERT" | "REPLACE" => {
                e.insert = true;
                e.dml = true;
            }
            "UPDATE" | "DELETE" => e.dml = true,
            _ => {}
        }
    }
    e
}

/// True only when `sql` certainly cannot write (see the module doc for the rule).
pub fn is_read_only(sql: &str) -> bool {
    match first_keyword(sql).as_deref() {
        Some("SELECT" | "VALUES" | "EXPLAIN") => true,
        Some("WITH") => !words(sql)
            .iter()
            .any(|w| matches!(w.as_str(), "INSERT" | "UPDATE" | "DELETE" | "REPLACE")),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_top_level_semicolons_only() {
        let s = split(
            "SELECT 'a;b'; INSERT INTO \"x;y\" VALUES (1) -- c;\n; /* d; */ SELECT [e;f];\n\
             ;  ; SELECT 1",
        );
        assert_eq!(
            s.statements,
            vec![
                "SELECT 'a;b'",
                "INSERT INTO \"x;y\" VALUES (1) -- c;",
                "/* d; */ SELECT [e;f]",
            ]
        );
        assert_eq!(s.rest.trim(), "SELECT 1");
        assert!(s.rest_has_content);
        let s = split("SELECT 'it''s;' ; -- only a comment\n");
        assert_eq!(s.statements, vec!["SELECT 'it''s;'"]);
        assert!(!s.rest_has_content);
        // An unfinished literal keeps everything in the rest.
        let s = split("SELECT 'abc;\n");
        assert!(s.statements.is_empty());
        assert!(s.rest_has_content);
    }

    #[test]
    fn trigger_bodies_end_at_end() {
        let sql = "CREATE TEMP TRIGGER t AFTER INSERT ON a BEGIN\n  INSERT INTO b VALUES (1);\n  \
                   UPDATE c SET n = n + 1;\nEND;\nSELECT 2;";
        let s = split(sql);
        assert_eq!(s.statements.len(), 2, "{:?}", s.statements);
        assert!(s.statements[0].ends_with("END"));
        assert_eq!(s.statements[1], "SELECT 2");
        // Unfinished trigger: nothing complete yet.
        let s = split("create trigger t after insert on a begin insert into b values (1);");
        assert!(s.statements.is_empty());
        assert!(s.rest_has_content);
    }

    #[test]
    fn the_read_only_rule_is_conservative() {
        for sql in [
            "SELECT 1",
            "  -- c\n select * from t",
            "/* x */ (SELECT 1)",
            "VALUES (1), (2)",
            "EXPLAIN QUERY PLAN SELECT 1",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "WITH x AS (SELECT 'insert') SELECT * FROM x",
        ] {
            assert!(is_read_only(sql), "{sql}");
        }
        for sql in [
            "INSERT INTO t VALUES (1)",
            "WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x",
            "with x as (select 1) delete from t",
            "PRAGMA user_version = 3",
            "CREATE TABLE t (a)",
            "BEGIN",
            "",
            "-- nothing",
        ] {
            assert!(!is_read_only(sql), "{sql}");
        }
        assert_eq!(first_keyword(" /*a*/ begin;"), Some("BEGIN".into()));
        let e = effects("with x as (select 1) insert into t select * from x");
        assert!(e.insert && e.dml);
        assert!(effects("REPLACE INTO t VALUES (1)").insert);
        let e = effects("UPDATE t SET a = 'insert'");
        assert!(e.dml && !e.insert);
        assert_eq!(effects("CREATE TABLE t (a)"), Effects::default());
    }
}
