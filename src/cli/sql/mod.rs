//! `paxosdb sql`: a SQL shell over the gRPC `paxosdb.v1.Sql` service.
//!
//! Three ways in, one engine ([`Shell`]): `-e "SQL"` runs its text and exits; a pipe or
//! file on standard input is run as a script; a terminal gets an interactive shell with
//! line editing and history (rustyline; the history file is `$PAXOSDB_SQL_HISTORY`, else
//! `$XDG_DATA_HOME/paxosdb/sql_history` or `~/.local/share/paxosdb/sql_history`, at most
//! [`HISTORY_MAX`] entries, readable by its owner only; an empty `PAXOSDB_SQL_HISTORY`
//! keeps none). The text is cut into statements at `;` ([`split`]); a statement may span
//! lines. A line starting with `.` where a statement would start is a dot-command:
//! `.tables`, `.schema [TABLE]`, `.mode MODE`, `.timer on|off`, `.help`, `.quit`.
//!
//! Where a statement goes: the shell decides on the client side, by a conservative rule
//! ([`split::is_read_only`]): a statement that can only read (`SELECT`, `VALUES`,
//! `EXPLAIN`, a `WITH` that names no write) goes through `Query` at the chosen read level
//! (linearizable, or `--stale`); everything else through `Execute`, i.e. the log. A read
//! the rule cannot prove read-only is therefore run as a write: correct, only slower.
//!
//! Transactions: `BEGIN` ... `COMMIT` in the shell are not sent as statements (a request
//! is the unit of work on the cluster; no transaction stays open between requests).
//! The shell collects the statements in between and sends them at `COMMIT` (or `END`)
//! as one `Execute` with the transaction flag: all of them apply, or, if one fails, none.
//! `ROLLBACK` drops them unsent. Their results are printed at `COMMIT`.
//!
//! Errors: a failed statement prints `Error: ...` on stderr (in JSON mode its result is an
//! `{"error"}` object on stdout). With `-e` or a script, the first failure stops the run
//! and the exit code is 1; the interactive shell goes on.
//!
//! Output modes: see [`render`].
//!
//! # Invariants
//!
//! - Only statements the rule proves read-only are sent to `Query`.
//! - Between `BEGIN` and `COMMIT` nothing is sent; at `COMMIT` exactly one request is.
//! - The history file is bounded ([`HISTORY_MAX`] entries) and private to its owner.

pub mod render;
pub mod split;

use super::{client, Cli};
use crate::client::Client;
use crate::error::{Error, Result};
use crate::sql::{Params, ReadLevel, Request, Statement, StatementResult, Value};
use clap::Args;
use render::Mode;
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::time::Instant;

/// History entries kept, in memory and in the history file.
pub const HISTORY_MAX: usize = 1000;

#[derive(Args, Debug)]
pub struct SqlArgs {
    /// Run this SQL (statements separated by `;`, dot-commands on their own lines) and
    /// exit; stops at the first error with exit code 1.
    #[arg(short = 'e', long = "execute", value_name = "SQL")]
    pub execute: Option<String>,
    /// Output mode.
    #[arg(long, value_enum, default_value = "table")]
    pub mode: Mode,
    /// JSON output (the same as --mode json): one object per statement, one per line.
    #[arg(long)]
    pub json: bool,
    /// Read from the contacted node's copy (may be behind) instead of linearizably.
    #[arg(long)]
    pub stale: bool,
}

const HELP: &str = "\
.help               this text
.mode [MODE]        show or set the output mode: table, box, csv, json, line
.quit / .exit       leave the shell
.schema [TABLE]     show the CREATE statements (of one table and its indexes/triggers)
.tables [PATTERN]   list tables and views (names LIKE PATTERN)
.timer on|off       show how long each statement took
Statements end with `;` and may span lines. Reads (SELECT, VALUES, EXPLAIN, WITH ... SELECT)
go through Query, everything else through Execute (the replicated log). BEGIN ... COMMIT
collects the statements in between and sends them as one transaction at COMMIT.
";

/// Runs `paxosdb sql`.
pub async fn run(cli: &Cli, a: &SqlArgs) -> Result<ExitCode> {
    let mut shell = Shell {
        client: client(cli)?,
        mode: if a.json { Mode::Json } else { a.mode },
        timer: false,
        level: if a.stale {
            ReadLevel::Stale
        } else {
            ReadLevel::Linearizable
        },
        tx: None,
        buffer: String::new(),
        quit: false,
    };
    let stop_on_error = true;
    if let Some(text) = &a.execute {
        return Ok(shell
            .script(text.lines().map(|l| Ok(l.to_string())), stop_on_error)
            .await);
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let lines = stdin.lock().lines().map(|l| l.map_err(Error::from));
        return Ok(shell.script(lines, stop_on_error).await);
    }
    shell.interactive().await
}

/// The shell's state between lines.
struct Shell {
    client: Client,
    mode: Mode,
    timer: bool,
    level: ReadLevel,
    /// Statements collected since `BEGIN`, sent at `COMMIT`.
    tx: Option<Vec<String>>,
    /// Text of an unfinished statement.
    buffer: String,
    quit: bool,
}

/// What a line did.
enum Outcome {
    Ok,
    Failed,
}

impl Shell {
    /// Runs `lines` to the end (or the first failure, with `stop_on_error`); the exit
    /// code.
    async fn script(
        &mut self,
        lines: impl Iterator<Item = Result<String>>,
        stop_on_error: bool,
    ) -> ExitCode {
        let mut failed = false;
        for line in lines {
            let line = match line {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("error: reading input: {e}");
                    return ExitCode::FAILURE;
                }
            };
            if let Outcome::Failed = self.line(&line).await {
                failed = true;
                if stop_on_error {
                    return ExitCode::FAILURE;
                }
            }
            if self.quit {
                break;
            }
        }
        if !self.quit {
            if let Outcome::Failed = self.finish().await {
                failed = true;
            }
        }
        if failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        }
    }

    /// End of input: runs a last statement that lacks its `;`; an open `BEGIN` is
    /// dropped unsent (as a connection that closes rolls back).
    async fn finish(&mut self) -> Outcome {
        let rest = std::mem::take(&mut self.buffer);
        let mut outcome = Outcome::Ok;
        if split::split(&rest).rest_has_content {
            outcome = self.statement(rest.trim().to_string()).await;
        }
        if let Some(tx) = self.tx.take() {
            eprintln!(
                "error: the input ended inside BEGIN; {} statement(s) not sent (add COMMIT)",
                tx.len()
            );
            outcome = Outcome::Failed;
        }
        outcome
    }

    /// Takes one line of input.
    async fn line(&mut self, line: &str) -> Outcome {
        if self.buffer.trim().is_empty() && line.trim_start().starts_with('.') {
            self.buffer.clear();
            return self.dot(line.trim()).await;
        }
        self.buffer.push_str(line);
        self.buffer.push('\n');
        let cut = split::split(&self.buffer);
        self.buffer = if cut.rest_has_content {
            cut.rest
        } else {
            String::new()
        };
        for sql in cut.statements {
            if let Outcome::Failed = self.statement(sql).await {
                // The rest of the line is not run after a failure.
                self.buffer.clear();
                return Outcome::Failed;
            }
        }
        Outcome::Ok
    }

    /// Runs (or, inside BEGIN, collects) one statement.
    async fn statement(&mut self, sql: String) -> Outcome {
        let kw = split::first_keyword(&sql).unwrap_or_default();
        match (kw.as_str(), self.tx.is_some()) {
            ("BEGIN", false) => {
                self.tx = Some(Vec::new());
                return Outcome::Ok;
            }
            ("BEGIN", true) => {
                return fail("already inside BEGIN; COMMIT or ROLLBACK first");
            }
            ("COMMIT" | "END", true) => {
                let statements = self.tx.take().unwrap_or_default();
                if statements.is_empty() {
                    return Outcome::Ok;
                }
                let req = Request {
                    statements: statements.into_iter().map(Statement::new).collect(),
                    transaction: true,
                };
                return self.send(req, false).await;
            }
            ("ROLLBACK", true) => {
                let n = self.tx.take().map_or(0, |t| t.len());
                eprintln!("rolled back: {n} statement(s) not sent");
                return Outcome::Ok;
            }
            ("COMMIT" | "END" | "ROLLBACK", false) => {
                return fail(&format!("{kw} without BEGIN"));
            }
            ("SAVEPOINT" | "RELEASE", _) => {
                return fail("savepoints are not supported; use BEGIN ... COMMIT");
            }
            _ => {}
        }
        if let Some(tx) = &mut self.tx {
            tx.push(sql);
            return Outcome::Ok;
        }
        let read = split::is_read_only(&sql);
        self.send(
            Request {
                statements: vec![Statement::new(sql)],
                transaction: false,
            },
            read,
        )
        .await
    }

    /// Sends `req` (through Query if `read`, else Execute) and prints its results.
    async fn send(&mut self, req: Request, read: bool) -> Outcome {
        let effects: Vec<split::Effects> = req
            .statements
            .iter()
            .map(|s| split::effects(&s.sql))
            .collect();
        let start = Instant::now();
        let results = if read {
            self.client
                .sql_query(req, self.level)
                .await
                .map(|o| o.results)
        } else {
            self.client.sql_execute(req).await
        };
        let elapsed = start.elapsed();
        let results = match results {
            Ok(r) => r,
            Err(e) => return fail(&e.to_string()),
        };
        let mut outcome = Outcome::Ok;
        for (i, r) in results.iter().enumerate() {
            let effects = effects.get(i).copied().unwrap_or_default();
            if !self.print_result(r, effects) {
                outcome = Outcome::Failed;
            }
        }
        if self.timer {
            out(&format!("Run Time: real {:.3}s\n", elapsed.as_secs_f64()));
        }
        outcome
    }

    /// Prints one result of a statement with these `effects`: for a write, the text
    /// modes show the change count only if it may change rows and the last insert id
    /// only if it may insert (SQLite's are left over from an earlier statement
    /// otherwise; JSON shows what the node sent). False if it is a failed statement.
    fn print_result(&self, r: &StatementResult, effects: split::Effects) -> bool {
        match (&r.error, self.mode) {
            (Some(_), Mode::Json) => {
                out(&render::render(Mode::Json, r));
                false
            }
            (Some(e), _) => {
                eprintln!("Error: {e}");
                false
            }
            (None, Mode::Json) => {
                out(&render::render(Mode::Json, r));
                true
            }
            (None, mode) if r.columns.is_empty() => {
                let r = StatementResult {
                    rows_affected: r.rows_affected.filter(|_| effects.dml),
                    last_insert_id: r.last_insert_id.filter(|_| effects.insert),
                    ..r.clone()
                };
                out(&render::render(mode, &r));
                true
            }
            (None, mode) => {
                out(&render::render(mode, r));
                true
            }
        }
    }

    /// Runs one read-only query for a dot-command.
    async fn query(&self, sql: &str, params: Vec<Value>) -> Result<StatementResult> {
        let req = Request {
            statements: vec![Statement {
                sql: sql.into(),
                params: Params::Positional(params),
            }],
            transaction: false,
        };
        let mut results = self.client.sql_query(req, self.level).await?.results;
        let r = results
            .pop()
            .ok_or_else(|| Error::Internal("a query returned no result".into()))?;
        match r.error {
            Some(e) => Err(Error::InvalidInput(e)),
            None => Ok(r),
        }
    }

    async fn dot(&mut self, line: &str) -> Outcome {
        let mut words = line.split_whitespace();
        let cmd = words.next().unwrap_or_default();
        let args: Vec<&str> = words.collect();
        match (cmd, args.as_slice()) {
            (".quit" | ".exit", []) => {
                self.quit = true;
                Outcome::Ok
            }
            (".help", []) => {
                out(HELP);
                Outcome::Ok
            }
            (".mode", []) => {
                out(&format!("{}\n", self.mode.name()));
                Outcome::Ok
            }
            (".mode", [m]) => match Mode::parse(m) {
                Some(m) => {
                    self.mode = m;
                    Outcome::Ok
                }
                None => fail(&format!(
                    "unknown mode {m:?}: use table, box, csv, json or line"
                )),
            },
            (".timer", [v]) => match *v {
                "on" => {
                    self.timer = true;
                    Outcome::Ok
                }
                "off" => {
                    self.timer = false;
                    Outcome::Ok
                }
                _ => fail(".timer on|off"),
            },
            (".tables", [] | [_]) => {
                let (filter, params) = match args.first() {
                    Some(p) => (" AND name LIKE ?1", vec![Value::Text(p.to_string())]),
                    None => ("", vec![]),
                };
                let sql = format!(
                    "SELECT name FROM sqlite_schema WHERE type IN ('table', 'view') \
                     AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
                     AND name NOT LIKE '\\_paxosdb\\_%' ESCAPE '\\'{filter} ORDER BY name"
                );
                match self.query(&sql, params).await {
                    Ok(r) => {
                        let names: Vec<String> = r.rows.iter().map(|row| first_text(row)).collect();
                        if !names.is_empty() {
                            out(&(names.join("\n") + "\n"));
                        }
                        Outcome::Ok
                    }
                    Err(e) => fail(&e.to_string()),
                }
            }
            (".schema", [] | [_]) => {
                let (filter, params) = match args.first() {
                    Some(t) => (
                        " AND lower(tbl_name) = lower(?1)",
                        vec![Value::Text(t.to_string())],
                    ),
                    None => ("", vec![]),
                };
                let sql = format!(
                    "SELECT sql FROM sqlite_schema WHERE sql IS NOT NULL{filter} \
                     AND tbl_name NOT LIKE '\\_paxosdb\\_%' ESCAPE '\\' \
                     ORDER BY tbl_name, type DESC, name"
                );
                match self.query(&sql, params).await {
                    Ok(r) => {
                        for row in &r.rows {
                            out(&format!("{};\n", first_text(row)));
                        }
                        Outcome::Ok
                    }
                    Err(e) => fail(&e.to_string()),
                }
            }
            _ => fail(&format!("unknown or malformed command {line:?}; try .help")),
        }
    }

    /// The interactive shell.
    async fn interactive(&mut self) -> Result<ExitCode> {
        use rustyline::error::ReadlineError;
        let config = rustyline::Config::builder()
            .max_history_size(HISTORY_MAX)
            .and_then(|c| c.history_ignore_dups(true))
            .map_err(|e| Error::Internal(format!("line editor: {e}")))?
            .auto_add_history(false)
            .build();
        let mut rl = rustyline::DefaultEditor::with_config(config)
            .map_err(|e| Error::Internal(format!("line editor: {e}")))?;
        let history = history_file();
        if let Some(h) = &history {
            // A missing file is the normal first run.
            let _ = rl.load_history(h);
        }
        out("paxosdb sql: statements end with `;`, .help for help, .quit to leave\n");
        while !self.quit {
            let prompt = match (self.buffer.trim().is_empty(), self.tx.is_some()) {
                (true, false) => "sql> ",
                (true, true) => "sql*> ",
                (false, _) => "  ...> ",
            };
            match rl.readline(prompt) {
                Ok(line) => {
                    if !line.trim().is_empty() {
                        let _ = rl.add_history_entry(line.as_str());
                    }
                    self.line(&line).await;
                }
                // Ctrl-C drops the unfinished statement, as in sqlite3 and psql.
                Err(ReadlineError::Interrupted) => self.buffer.clear(),
                Err(ReadlineError::Eof) => break,
                Err(e) => {
                    eprintln!("error: reading input: {e}");
                    break;
                }
            }
        }
        if let Some(h) = &history {
            if let Err(e) = save_history(&mut rl, h) {
                eprintln!("warning: cannot save the history to {}: {e}", h.display());
            }
        }
        if let Some(tx) = self.tx.take() {
            eprintln!("left inside BEGIN: {} statement(s) not sent", tx.len());
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// The text of a row's first value.
fn first_text(row: &[Value]) -> String {
    match row.first() {
        Some(Value::Text(t)) => t.clone(),
        Some(v) => render::cell(v),
        None => String::new(),
    }
}

/// Prints `msg` as a failure; returns [`Outcome::Failed`].
fn fail(msg: &str) -> Outcome {
    eprintln!("Error: {msg}");
    Outcome::Failed
}

/// Writes to stdout; a closed stdout (`| head`) ends the process quietly, as a shell
/// tool should, instead of a panic.
fn out(s: &str) {
    let mut o = std::io::stdout().lock();
    if o.write_all(s.as_bytes()).and_then(|()| o.flush()).is_err() {
        std::process::exit(1);
    }
}

/// The history file (see the module doc); `None` keeps no history.
fn history_file() -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    if let Some(p) = std::env::var_os("PAXOSDB_SQL_HISTORY") {
        return (!p.is_empty()).then(|| PathBuf::from(p));
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))?;
    Some(data.join("paxosdb").join("sql_history"))
}

/// Saves the history readable by its owner only (it may hold data and secrets).
fn save_history(rl: &mut rustyline::DefaultEditor, path: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    rl.save_history(path)
        .map_err(|e| Error::Storage(format!("history: {e}")))
}
