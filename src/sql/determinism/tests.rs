use super::*;
use crate::sql::Statement;
use rand::rngs::StdRng;
use rand::SeedableRng;

/// 2024-02-29 13:45:07.089 UTC
const NOW: i64 = 1_709_214_307_089;

fn one(sql: &str) -> Result<String> {
    one_with(sql, Params::None)
}

fn one_with(sql: &str, params: Params) -> Result<String> {
    let req = Request {
        statements: vec![Statement {
            sql: sql.into(),
            params,
        }],
        transaction: false,
    };
    let mut rng = StdRng::seed_from_u64(7);
    Ok(prepare(req, NOW, &mut rng)?.statements.remove(0).sql)
}

fn refused(sql: &str, why: &str) {
    match one(sql) {
        Err(Error::InvalidInput(m)) => assert!(m.contains(why), "{sql}: {m}"),
        r => panic!("{sql} should be refused, got {r:?}"),
    }
}

/// Runs `sql` on a fresh in-memory SQLite and returns the first column of the first row.
fn eval(sql: &str) -> rusqlite::types::Value {
    let c = rusqlite::Connection::open_in_memory().unwrap();
    c.query_row(sql, [], |r| r.get(0)).unwrap()
}

#[test]
fn the_date_is_the_proposers_utc_time() {
    assert_eq!(Now::at(NOW).precise(), "'2024-02-29 13:45:07.089'");
    assert_eq!(Now::at(0).timestamp(), "'1970-01-01 00:00:00'");
    assert_eq!(Now::at(-1).precise(), "'1969-12-31 23:59:59.999'");
}

#[test]
fn random_becomes_a_literal_and_is_the_same_for_every_replica() {
    let out = one("INSERT INTO t VALUES (random(), RANDOM ( ))").unwrap();
    assert!(!out.to_ascii_lowercase().contains("random"), "{out}");
    // The same seed gives the same text; the text evaluates to the same value anywhere.
    assert_eq!(
        out,
        one("INSERT INTO t VALUES (random(), RANDOM ( ))").unwrap()
    );
    let sel = one("SELECT random() + 0").unwrap();
    assert_eq!(eval(&sel), eval(&sel));
    assert_eq!(random_literal(i64::MIN), "(-9223372036854775807 - 1)");
    assert_eq!(
        eval(&format!("SELECT {}", random_literal(i64::MIN))),
        rusqlite::types::Value::Integer(i64::MIN)
    );
}

#[test]
fn randomblob_with_a_literal_length_becomes_a_blob() {
    let out = one("SELECT randomblob(16)").unwrap();
    match eval(&out) {
        rusqlite::types::Value::Blob(b) => assert_eq!(b.len(), 16),
        v => panic!("{v:?}"),
    }
    match eval(&one("SELECT randomblob(0)").unwrap()) {
        rusqlite::types::Value::Blob(b) => assert_eq!(b.len(), 1),
        v => panic!("{v:?}"),
    }
    refused("SELECT randomblob(?)", "literal length");
    refused("SELECT randomblob(length(x))", "literal length");
    refused("SELECT randomblob(1000000)", "over the limit");
}

#[test]
fn current_time_keywords_become_literals() {
    let out = one("INSERT INTO t VALUES (CURRENT_TIMESTAMP, current_date, Current_Time)").unwrap();
    assert_eq!(
        out,
        "INSERT INTO t VALUES ('2024-02-29 13:45:07', '2024-02-29', '13:45:07')"
    );
}

#[test]
fn now_arguments_of_date_functions_become_literals() {
    let cases = [
        ("SELECT datetime('now')", "2024-02-29 13:45:07"),
        ("SELECT date('NOW', '+1 day')", "2024-03-01"),
        ("SELECT time( 'now' )", "13:45:07"),
        ("SELECT strftime('%Y', 'now')", "2024"),
        ("SELECT strftime('%H')", "13"),
        ("SELECT date()", "2024-02-29"),
        (
            "SELECT datetime('now', 'start of month')",
            "2024-02-01 00:00:00",
        ),
    ];
    for (sql, want) in cases {
        let out = one(sql).unwrap();
        assert!(!out.contains("'now'") && !out.contains("'NOW'"), "{out}");
        assert_eq!(
            eval(&out),
            rusqlite::types::Value::Text(want.into()),
            "{sql} -> {out}"
        );
    }
    let out = one("SELECT unixepoch('now')").unwrap();
    assert_eq!(eval(&out), rusqlite::types::Value::Integer(NOW / 1000));
    let out = one("SELECT julianday()").unwrap();
    assert!(
        matches!(eval(&out), rusqlite::types::Value::Real(_)),
        "{out}"
    );
}

#[test]
fn literals_identifiers_and_comments_are_never_rewritten() {
    for sql in [
        "INSERT INTO t VALUES ('random()', 'CURRENT_TIMESTAMP', 'now')",
        "SELECT \"random()\", [current_date], `datetime('now')` FROM t",
        "SELECT 1 -- random() CURRENT_TIME datetime('now')\n",
        "SELECT 1 /* randomblob(?) date() */",
        "SELECT random FROM t WHERE current_timestamp_col = 1",
        "SELECT datetime(created) FROM t",
    ] {
        assert_eq!(one(sql).unwrap(), sql);
    }
}

#[test]
fn deferred_evaluation_in_schema_statements_is_refused() {
    refused(
        "CREATE TABLE t (a, ts TEXT DEFAULT CURRENT_TIMESTAMP)",
        "CREATE or ALTER",
    );
    refused("CREATE TABLE t (a DEFAULT (random()))", "CREATE or ALTER");
    refused(
        "ALTER TABLE t ADD COLUMN d TEXT DEFAULT (datetime('now'))",
        "CREATE or ALTER",
    );
    refused(
        "CREATE TRIGGER g AFTER INSERT ON t BEGIN UPDATE t SET ts = CURRENT_TIME; END",
        "CREATE or ALTER",
    );
    refused("CREATE VIEW v AS SELECT date()", "CREATE or ALTER");
    refused(
        "CREATE TABLE t (d CHECK (d < date('now')))",
        "CREATE or ALTER",
    );
    // Evaluated once, by the proposer: allowed.
    let out = one("CREATE TABLE IF NOT EXISTS main.t AS SELECT random() AS r").unwrap();
    assert!(!out.contains("random()"), "{out}");
    // Nothing to rewrite: allowed.
    let plain = "CREATE TABLE t (a INTEGER PRIMARY KEY, d TEXT CHECK (date(d) IS NOT NULL))";
    assert_eq!(one(plain).unwrap(), plain);
}

#[test]
fn timezone_modifiers_and_now_parameters_are_refused() {
    refused("SELECT datetime('now', 'localtime')", "time zone");
    refused("SELECT datetime(x, 'utc') FROM t", "time zone");
    match one_with(
        "INSERT INTO t VALUES (datetime(?))",
        Params::Positional(vec![Value::Text("now".into())]),
    ) {
        Err(Error::InvalidInput(m)) => assert!(m.contains("'now'"), "{m}"),
        r => panic!("{r:?}"),
    }
    // 'now' as a plain value elsewhere is just text.
    one_with(
        "INSERT INTO t VALUES (?)",
        Params::Positional(vec![Value::Text("now".into())]),
    )
    .unwrap();
}

#[test]
fn limits_are_checked_before_and_after_rewriting() {
    let long = format!(
        "SELECT '{}'",
        "x".repeat(SqlLimits::default().max_statement_bytes)
    );
    assert!(matches!(one(&long), Err(Error::TooLarge(_))));
    let many = Request {
        statements: vec![Statement::new("SELECT 1"); SqlLimits::default().max_statements + 1],
        transaction: false,
    };
    let mut rng = StdRng::seed_from_u64(1);
    assert!(matches!(
        prepare(many, NOW, &mut rng),
        Err(Error::TooLarge(_))
    ));
}

#[test]
fn never_panics_on_odd_input() {
    for sql in [
        "",
        "random(",
        "randomblob(",
        "date(",
        "strftime(",
        "SELECT random() random() random()",
        "'",
        "\"",
        "randomblob(-5)",
        "CREATE",
        "CREATE TABLE",
        "CREATE TABLE IF",
        "datetime(,,,)",
        "é random() ü",
    ] {
        let _ = one(sql);
    }
}

proptest::proptest! {
    #[test]
    fn prepare_never_panics_and_keeps_text_outside_rewrites(s in "[ -~éü\n]{0,120}") {
        let toks = crate::sql::lexer::tokenize(&s);
        let joined: String = toks.iter().map(|t| t.text(&s)).collect();
        proptest::prop_assert_eq!(joined, s.clone());
        let _ = one(&s);
        let _ = crate::sql::lexer::count_statements(&s);
    }

    #[test]
    fn prepare_is_the_identity_without_nondeterministic_sql(
        s in "(SELECT|INSERT INTO t VALUES|UPDATE t SET a =) [a-z0-9 ,()'+*]{0,60}"
    ) {
        let lower = s.to_ascii_lowercase();
        let touches = ["random", "current_", "date", "time", "julianday", "unixepoch", "strftime"]
            .iter()
            .any(|w| lower.contains(w));
        if !touches {
            proptest::prop_assert_eq!(one(&s).unwrap(), s);
        }
    }
}
