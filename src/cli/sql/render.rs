//! How the shell prints a statement's result, in each output mode.
//!
//! - `table` (the default): an aligned ASCII table like sqlite3's `.mode table`, numbers
//!   right-aligned, widths measured in terminal columns (wide characters count two);
//! - `box`: the same with Unicode box-drawing lines (sqlite3's `.mode box`);
//! - `csv`: RFC 4180, a header line, then one line per row (CRLF line ends);
//! - `json`: one JSON object per statement on one line: `{"columns", "types", "rows"}`
//!   for a query, `{"rows_affected", "last_insert_id"}` for a write, `{"error"}` for a
//!   failed statement; integers and reals as JSON numbers, text as strings, NULL as
//!   `null`, a blob as `{"base64": "..."}`;
//! - `line`: one `column = value` line per column, a blank line between rows (sqlite3's
//!   `.mode line`).
//!
//! A write prints `N rows changed` (with `, last insert id M` when it inserted) in the
//! table, box and line modes, `OK` when its result has no change count (the shell drops
//! it for statements that change no rows, such as `CREATE TABLE`), nothing in CSV.
//!
//! In the text modes a value is shown as sqlite3 shows it, except that NULL reads `NULL`,
//! a real always has a decimal point or exponent (`3.0`, not `3`, so it is not mistaken
//! for an integer), a blob is a SQL blob literal (`x'00ff'`) and control characters in
//! text are escaped (`\n`, `\t`, `\u{1b}`) so that a row stays on one line.
//!
//! # Invariants
//!
//! - Every line of a `table`/`box` rendering has the same display width.
//! - Rendering never fails and never panics, whatever the values hold.

use crate::sql::{StatementResult, Value};
use base64::Engine;
use std::fmt::Write;
use unicode_width::UnicodeWidthStr;

/// An output mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Table,
    Box,
    Csv,
    Json,
    Line,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        <Mode as clap::ValueEnum>::from_str(s, true).ok()
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Table => "table",
            Mode::Box => "box",
            Mode::Csv => "csv",
            Mode::Json => "json",
            Mode::Line => "line",
        }
    }
}

/// A value as text for the table, box and line modes.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::Integer(i) => i.to_string(),
        Value::Real(f) => real(*f),
        Value::Text(t) => escape(t),
        Value::Blob(b) => blob_literal(b),
    }
}

/// A real with a decimal point or an exponent.
fn real(f: f64) -> String {
    // Rust's Debug form of f64 keeps `.0` on whole numbers and round-trips exactly.
    format!("{f:?}")
}

fn blob_literal(b: &[u8]) -> String {
    let mut s = String::with_capacity(3 + 2 * b.len());
    s.push_str("x'");
    for byte in b {
        let _ = write!(s, "{byte:02x}");
    }
    s.push('\'');
    s
}

/// Text with control characters escaped, so it stays on one line of one width.
fn escape(t: &str) -> String {
    if !t.chars().any(char::is_control) {
        return t.to_string();
    }
    let mut s = String::with_capacity(t.len() + 8);
    for c in t.chars() {
        match c {
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(s, "\\u{{{:x}}}", c as u32);
            }
            c => s.push(c),
        }
    }
    s
}

fn width(s: &str) -> usize {
    UnicodeWidthStr::width(s)
}

fn is_number(v: &Value) -> bool {
    matches!(v, Value::Integer(_) | Value::Real(_))
}

/// The line that reports a write in the text modes: `OK` without a change count.
pub fn changes_line(r: &StatementResult) -> String {
    let Some(n) = r.rows_affected else {
        return "OK".into();
    };
    let mut s = format!("{n} row{} changed", if n == 1 { "" } else { "s" });
    if let Some(id) = r.last_insert_id.filter(|_| n > 0) {
        let _ = write!(s, ", last insert id {id}");
    }
    s
}

/// Renders one successful result (`r.error` is `None`) in `mode`; the text ends with a
/// newline, or is empty when there is nothing to show (a write in CSV mode).
pub fn render(mode: Mode, r: &StatementResult) -> String {
    if mode == Mode::Json {
        let mut s = json(r).to_string();
        s.push('\n');
        return s;
    }
    if r.columns.is_empty() {
        return match mode {
            Mode::Csv => String::new(),
            _ => changes_line(r) + "\n",
        };
    }
    match mode {
        Mode::Table => table(r, &ASCII),
        Mode::Box => table(r, &BOX),
        Mode::Csv => csv(r),
        Mode::Line => line(r),
        Mode::Json => unreachable!("handled above"),
    }
}

/// The JSON form of one result (also of a failed one).
pub fn json(r: &StatementResult) -> serde_json::Value {
    use serde_json::json;
    if let Some(e) = &r.error {
        return json!({ "error": e });
    }
    if r.columns.is_empty() {
        return json!({
            "rows_affected": r.rows_affected,
            "last_insert_id": r.last_insert_id,
        });
    }
    let rows: Vec<Vec<serde_json::Value>> = r
        .rows
        .iter()
        .map(|row| row.iter().map(json_value).collect())
        .collect();
    json!({ "columns": r.columns, "types": r.types, "rows": rows })
}

fn json_value(v: &Value) -> serde_json::Value {
    use serde_json::json;
    match v {
        Value::Null => serde_json::Value::Null,
        Value::Integer(i) => json!(i),
        // NaN and infinities have no JSON number: they become null (serde_json's rule).
        Value::Real(f) => json!(f),
        Value::Text(t) => json!(t),
        Value::Blob(b) => {
            json!({ "base64": base64::engine::general_purpose::STANDARD.encode(b) })
        }
    }
}

/// The characters a table is drawn with.
struct Lines {
    top: [&'static str; 3],
    mid: [&'static str; 3],
    bottom: [&'static str; 3],
    horizontal: &'static str,
    vertical: &'static str,
}

const ASCII: Lines = Lines {
    top: ["+", "+", "+"],
    mid: ["+", "+", "+"],
    bottom: ["+", "+", "+"],
    horizontal: "-",
    vertical: "|",
};

const BOX: Lines = Lines {
    top: ["┌", "┬", "┐"],
    mid: ["├", "┼", "┤"],
    bottom: ["└", "┴", "┘"],
    horizontal: "─",
    vertical: "│",
};

fn table(r: &StatementResult, l: &Lines) -> String {
    let header: Vec<String> = r.columns.iter().map(|c| escape(c)).collect();
    let cells: Vec<Vec<String>> = r
        .rows
        .iter()
        .map(|row| {
            (0..header.len())
                .map(|i| row.get(i).map(cell).unwrap_or_default())
                .collect()
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| width(h)).collect();
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(width(c));
        }
    }
    let rule = |ends: &[&str; 3]| {
        let mut s = String::from(ends[0]);
        for (i, w) in widths.iter().enumerate() {
            if i > 0 {
                s.push_str(ends[1]);
            }
            s.push_str(&l.horizontal.repeat(w + 2));
        }
        s.push_str(ends[2]);
        s.push('\n');
        s
    };
    let row_line = |cells: &[String], right: &dyn Fn(usize) -> bool| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            s.push_str(l.vertical);
            s.push(' ');
            let pad = " ".repeat(w - width(c));
            if right(i) {
                s.push_str(&pad);
                s.push_str(c);
            } else {
                s.push_str(c);
                s.push_str(&pad);
            }
            s.push(' ');
        }
        s.push_str(l.vertical);
        s.push('\n');
        s
    };
    let mut out = rule(&l.top);
    out.push_str(&row_line(&header, &|_| false));
    out.push_str(&rule(&l.mid));
    for (row, values) in cells.iter().zip(&r.rows) {
        out.push_str(&row_line(row, &|i| values.get(i).is_some_and(is_number)));
    }
    out.push_str(&rule(&l.bottom));
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) || s.starts_with(' ') || s.ends_with(' ') {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn csv(r: &StatementResult) -> String {
    let mut out = String::new();
    let line = |fields: Vec<String>| fields.join(",") + "\r\n";
    out.push_str(&line(r.columns.iter().map(|c| csv_field(c)).collect()));
    for row in &r.rows {
        out.push_str(&line(
            row.iter()
                .map(|v| match v {
                    Value::Null => String::new(),
                    Value::Text(t) => csv_field(t),
                    v => cell(v),
                })
                .collect(),
        ));
    }
    out
}

fn line(r: &StatementResult) -> String {
    let names: Vec<String> = r.columns.iter().map(|c| escape(c)).collect();
    let w = names.iter().map(|n| width(n)).max().unwrap_or(0);
    let mut out = String::new();
    for (i, row) in r.rows.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        for (n, v) in names.iter().zip(row) {
            let _ = writeln!(out, "{}{n} = {}", " ".repeat(w - width(n)), cell(v));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(columns: &[&str], rows: Vec<Vec<Value>>) -> StatementResult {
        StatementResult {
            columns: columns.iter().map(|c| c.to_string()).collect(),
            types: columns.iter().map(|_| String::new()).collect(),
            rows,
            ..Default::default()
        }
    }

    fn sample() -> StatementResult {
        result(
            &["id", "name", "score", "data"],
            vec![
                vec![
                    Value::Integer(1),
                    Value::Text("alice".into()),
                    Value::Real(3.0),
                    Value::Blob(vec![0, 0xff]),
                ],
                vec![
                    Value::Integer(12345),
                    Value::Text("bob\tsmith".into()),
                    Value::Null,
                    Value::Null,
                ],
            ],
        )
    }

    #[test]
    fn table_is_aligned_with_numbers_on_the_right() {
        let want = "\
+-------+------------+-------+---------+
| id    | name       | score | data    |
+-------+------------+-------+---------+
|     1 | alice      |   3.0 | x'00ff' |
| 12345 | bob\\tsmith | NULL  | NULL    |
+-------+------------+-------+---------+
";
        assert_eq!(render(Mode::Table, &sample()), want);
    }

    #[test]
    fn wide_characters_and_box_lines_keep_the_columns_straight() {
        let r = result(
            &["名前", "n"],
            vec![
                vec![Value::Text("日本語".into()), Value::Integer(7)],
                vec![Value::Text("a\nb".into()), Value::Real(-0.25)],
            ],
        );
        for mode in [Mode::Table, Mode::Box] {
            let out = render(mode, &r);
            let widths: Vec<usize> = out.lines().map(width).collect();
            assert!(widths.iter().all(|w| *w == widths[0]), "{mode:?}:\n{out}");
            assert_eq!(out.lines().count(), 6, "{out}");
        }
        let out = render(Mode::Box, &r);
        assert!(
            out.starts_with("┌────────┬───────┐\n│ 名前   │ n     │\n"),
            "{out}"
        );
        assert!(out.contains("│ a\\nb   │ -0.25 │"), "{out}");
    }

    #[test]
    fn a_query_without_rows_still_shows_its_header() {
        let r = result(&["a"], vec![]);
        assert_eq!(render(Mode::Table, &r), "+---+\n| a |\n+---+\n+---+\n");
        assert_eq!(render(Mode::Csv, &r), "a\r\n");
        assert_eq!(render(Mode::Line, &r), "");
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let r = result(
            &["a", "b,c"],
            vec![
                vec![Value::Text("x\"y".into()), Value::Text("1,2".into())],
                vec![Value::Null, Value::Text("line\nbreak".into())],
                vec![Value::Real(1.5), Value::Blob(vec![1])],
            ],
        );
        assert_eq!(
            render(Mode::Csv, &r),
            "a,\"b,c\"\r\n\"x\"\"y\",\"1,2\"\r\n,\"line\nbreak\"\r\n1.5,x'01'\r\n"
        );
    }

    #[test]
    fn json_keeps_the_types() {
        let out = render(Mode::Json, &sample());
        assert!(out.ends_with('\n') && out.lines().count() == 1);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["columns"][1], "name");
        assert_eq!(v["rows"][0][0], 1);
        assert!(v["rows"][0][0].is_i64());
        assert!(v["rows"][0][2].is_f64());
        assert_eq!(v["rows"][0][3]["base64"], "AP8=");
        assert!(v["rows"][1][2].is_null());
        let write = StatementResult {
            rows_affected: Some(2),
            last_insert_id: Some(9),
            ..Default::default()
        };
        assert_eq!(
            json(&write),
            serde_json::json!({"rows_affected": 2, "last_insert_id": 9})
        );
        let failed = StatementResult {
            error: Some("no such table: t".into()),
            ..Default::default()
        };
        assert_eq!(
            json(&failed),
            serde_json::json!({"error": "no such table: t"})
        );
    }

    #[test]
    fn line_mode_and_writes() {
        let r = result(
            &["id", "name"],
            vec![
                vec![Value::Integer(1), Value::Text("a".into())],
                vec![Value::Integer(2), Value::Null],
            ],
        );
        assert_eq!(
            render(Mode::Line, &r),
            "  id = 1\nname = a\n\n  id = 2\nname = NULL\n"
        );
        let write = StatementResult {
            rows_affected: Some(1),
            last_insert_id: Some(4),
            ..Default::default()
        };
        assert_eq!(
            render(Mode::Table, &write),
            "1 row changed, last insert id 4\n"
        );
        assert_eq!(render(Mode::Csv, &write), "");
        let ddl = StatementResult {
            rows_affected: Some(0),
            last_insert_id: Some(4),
            ..Default::default()
        };
        assert_eq!(render(Mode::Line, &ddl), "0 rows changed\n");
        assert_eq!(render(Mode::Table, &StatementResult::default()), "OK\n");
    }
}
