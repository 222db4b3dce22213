//! Running one user statement on a SQLite connection, for both the apply connection
//! (writes from the log) and the read connections (queries): the guard that keeps users
//! away from paxosdb's internal tables and from connection-level state (the authorizer),
//! the step budget (the progress handler), parameter binding, typed results and the
//! result-size limits.
//!
//! # Invariants
//!
//! - A statement run as a user statement (the guard not trusted) cannot read or write a
//!   table, index, trigger or view named `_paxosdb_*`, attach or detach a database, load
//!   an extension, control transactions or savepoints (the request's `transaction` flag
//!   does that), create temporary objects (they would live in one connection, not in the
//!   replicated database), or set a PRAGMA; in a write, it cannot read the page layout
//!   (`dbstat`) either. Each refusal is an error naming its reason.
//! - A user statement stops after [`super::SqlLimits::step_budget`] SQLite VM steps. The
//!   count depends only on the statement, its parameters and the database, so a runaway
//!   statement fails the same way on every replica.
//! - A result never holds more than `max_result_rows` rows or `max_result_bytes` bytes:
//!   a statement whose result would is an error (and, in a write, undone).

use super::lexer::count_statements;
use super::{Params, SqlLimits, Statement, StatementResult, Value};
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, ErrorCode};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Prefix of every internal table and index (never reachable by user statements).
pub(crate) const INTERNAL_PREFIX: &str = "_paxosdb_";

/// VM steps between two calls of the progress handler (the budget's granularity).
const STEPS_PER_TICK: u64 = 1000;

/// PRAGMAs that only describe the schema: allowed in user statements (reads and writes),
/// whatever their argument (a table or index name).
const SCHEMA_PRAGMAS: &[&str] = &[
    "table_info",
    "table_xinfo",
    "table_list",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "foreign_key_check",
];

/// Virtual tables that show the file's page layout or the connection's own state: fine
/// in a query, but they differ between replicas, so never in a write.
/// (Checked by name in the text too: SQLite does not authorize every use of an eponymous
/// virtual table, e.g. `count(*)` reads no column.)
const LAYOUT_TABLES: &[&str] = &["dbstat", "sqlite_dbpage", "sqlite_stmt"];

/// Which connection a guard protects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// The connection that applies log entries.
    Apply,
    /// A read-only connection for queries.
    Read,
}

/// The per-connection state of the authorizer and the step budget.
pub(crate) struct Guard {
    role: Role,
    /// True while paxosdb runs its own statements (no checks, no budget).
    trusted: AtomicBool,
    /// Why the authorizer last refused something (SQLite itself only says "not
    /// authorized").
    refusal: Mutex<Option<String>>,
    /// Progress-handler ticks of the running user statement.
    ticks: AtomicU64,
    /// Ticks allowed per user statement.
    max_ticks: u64,
}

impl Guard {
    /// Installs the authorizer and the progress handler on `conn`.
    pub(crate) fn install(conn: &Connection, role: Role, limits: &SqlLimits) -> Arc<Guard> {
        let g = Arc::new(Guard {
            role,
            trusted: AtomicBool::new(false),
            refusal: Mutex::new(None),
            ticks: AtomicU64::new(0),
            max_ticks: limits.step_budget.div_ceil(STEPS_PER_TICK).max(1),
        });
        let a = g.clone();
        conn.authorizer(Some(move |ctx: AuthContext<'_>| {
            if a.trusted.load(Ordering::Relaxed) {
                return Authorization::Allow;
            }
            match policy(a.role, &ctx) {
                Ok(()) => Authorization::Allow,
                Err(why) => {
                    *a.refusal.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
                    Authorization::Deny
                }
            }
        }));
        let p = g.clone();
        conn.progress_handler(
            STEPS_PER_TICK as i32,
            Some(move || {
                if p.trusted.load(Ordering::Relaxed) {
                    return false;
                }
                p.ticks.fetch_add(1, Ordering::Relaxed) + 1 > p.max_ticks
            }),
        );
        g
    }

    /// Runs `f` as paxosdb's own code (no authorizer checks, no step budget).
    pub(crate) fn trusted<T>(&self, f: impl FnOnce() -> T) -> T {
        let before = self.trusted.swap(true, Ordering::Relaxed);
        let out = f();
        self.trusted.store(before, Ordering::Relaxed);
        out
    }

    fn begin_user_statement(&self) {
        self.trusted.store(false, Ordering::Relaxed);
        self.ticks.store(0, Ordering::Relaxed);
        *self.refusal.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn take_refusal(&self) -> Option<String> {
        self.refusal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    fn budget_spent(&self) -> bool {
        self.ticks.load(Ordering::Relaxed) > self.max_ticks
    }
}

fn internal(name: &str) -> bool {
    name.len() >= INTERNAL_PREFIX.len()
        && name.as_bytes()[..INTERNAL_PREFIX.len()].eq_ignore_ascii_case(INTERNAL_PREFIX.as_bytes())
}

/// True when an identifier of `sql` (quoted or not, never a string literal) names an
/// internal object. The authorizer sees what a statement does when it runs; this also
/// catches a trigger or view *body* that would touch internals later.
fn names_internal(sql: &str) -> bool {
    identifiers(sql).any(internal)
}

/// Every identifier of `sql`, quoted ones without their quotes.
fn identifiers(sql: &str) -> impl Iterator<Item = &str> {
    use super::lexer::{tokenize, Kind};
    tokenize(sql).into_iter().filter_map(move |t| {
        let text = t.text(sql);
        match t.kind {
            Kind::Word => Some(text),
            Kind::QuotedIdent if text.len() > 2 => Some(&text[1..text.len() - 1]),
            _ => None,
        }
    })
}

/// What a user statement may do (see the module invariants).
fn policy(role: Role, ctx: &AuthContext<'_>) -> Result<(), String> {
    use AuthAction as A;
    let names: &[&str] = match ctx.action {
        A::Read { table_name, .. }
            if role == Role::Apply
                && LAYOUT_TABLES
                    .iter()
                    .any(|t| t.eq_ignore_ascii_case(table_name)) =>
        {
            return Err(format!(
                "{table_name} describes this node's page layout or connection, which differs \
                 between nodes: it cannot feed a write (use it in a query)"
            ))
        }
        A::CreateIndex {
            index_name,
            table_name,
        }
        | A::DropIndex {
            index_name,
            table_name,
        } => &[index_name, table_name],
        A::CreateTrigger {
            trigger_name,
            table_name,
        }
        | A::DropTrigger {
            trigger_name,
            table_name,
        } => &[trigger_name, table_name],
        A::CreateTable { table_name }
        | A::DropTable { table_name }
        | A::Delete { table_name }
        | A::Insert { table_name }
        | A::Read { table_name, .. }
        | A::Update { table_name, .. }
        | A::AlterTable { table_name, .. }
        | A::Analyze { table_name }
        | A::CreateVtable { table_name, .. }
        | A::DropVtable { table_name, .. } => &[table_name],
        A::CreateView { view_name } | A::DropView { view_name } => &[view_name],
        A::Reindex { index_name } => &[index_name],
        A::CreateTempIndex { .. }
        | A::CreateTempTable { .. }
        | A::CreateTempTrigger { .. }
        | A::CreateTempView { .. }
        | A::DropTempIndex { .. }
        | A::DropTempTable { .. }
        | A::DropTempTrigger { .. }
        | A::DropTempView { .. } => {
            return Err(
                "temporary tables, indexes, triggers and views are not allowed: they \
                 would live in one connection of one node, not in the replicated database"
                    .into(),
            )
        }
        A::Attach { .. } | A::Detach { .. } => {
            return Err(
                "ATTACH and DETACH are not allowed: only the replicated database \
                 is reachable"
                    .into(),
            )
        }
        A::Transaction { .. } | A::Savepoint { .. } => {
            return Err(
                "BEGIN, COMMIT, ROLLBACK and SAVEPOINT are not allowed in a \
                 statement: send the statements as one request with transaction=true"
                    .into(),
            )
        }
        A::Function { function_name } if function_name.eq_ignore_ascii_case("load_extension") => {
            return Err("load_extension() is not allowed".into())
        }
        A::Pragma {
            pragma_name,
            pragma_value,
        } => {
            let schema = SCHEMA_PRAGMAS
                .iter()
                .any(|p| p.eq_ignore_ascii_case(pragma_name));
            return match (role, schema, pragma_value) {
                (_, true, Some(v)) if internal(v) => Err(format!(
                    "tables named {INTERNAL_PREFIX}* are internal to paxosdb"
                )),
                (_, true, _) | (Role::Read, _, None) => Ok(()),
                (Role::Read, false, Some(_)) => Err(format!(
                    "PRAGMA {pragma_name} with a value is not allowed: it would change \
                     connection settings"
                )),
                (Role::Apply, false, _) => Err(format!(
                    "PRAGMA {pragma_name} is not allowed in a write: settings are the same \
                     fixed ones on every node (only schema PRAGMAs such as table_info are \
                     allowed)"
                )),
            };
        }
        A::Unknown { code, .. } => {
            return Err(format!(
                "the statement needs an action paxosdb does not know ({code})"
            ))
        }
        _ => &[],
    };
    if names.iter().any(|n| internal(n)) {
        return Err(format!(
            "tables named {INTERNAL_PREFIX}* are internal to paxosdb: user statements cannot \
             read, write or create them"
        ));
    }
    Ok(())
}

/// How a statement failed.
#[derive(Debug)]
pub(crate) struct Failure {
    pub message: String,
    /// SQLite's error code, when SQLite raised it.
    pub code: Option<ErrorCode>,
}

impl Failure {
    fn new(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            code: None,
        }
    }

    /// True when SQLite could not write (disk full, I/O error, out of memory): a fault
    /// of this node, never a result.
    pub fn is_storage(&self) -> bool {
        matches!(
            self.code,
            Some(
                ErrorCode::DiskFull
                    | ErrorCode::SystemIoFailure
                    | ErrorCode::OutOfMemory
                    | ErrorCode::DatabaseCorrupt
                    | ErrorCode::NotADatabase
                    | ErrorCode::CannotOpen
            )
        )
    }

    pub fn into_result(self) -> StatementResult {
        error_result(self.message)
    }
}

pub(crate) fn error_result(message: impl Into<String>) -> StatementResult {
    StatementResult {
        error: Some(message.into()),
        ..Default::default()
    }
}

fn to_sql(v: &Value) -> rusqlite::types::Value {
    match v {
        Value::Null => rusqlite::types::Value::Null,
        Value::Integer(i) => rusqlite::types::Value::Integer(*i),
        Value::Real(f) => rusqlite::types::Value::Real(*f),
        Value::Text(s) => rusqlite::types::Value::Text(s.clone()),
        Value::Blob(b) => rusqlite::types::Value::Blob(b.clone()),
    }
}

pub(crate) fn from_sql(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Integer(i),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

/// Bytes a value counts for in a result.
pub(crate) fn value_bytes(v: &Value) -> usize {
    match v {
        Value::Null => 1,
        Value::Integer(_) | Value::Real(_) => 8,
        Value::Text(s) => s.len(),
        Value::Blob(b) => b.len(),
    }
}

/// Bytes a request's statements and parameters count for.
pub(crate) fn statement_bytes(st: &Statement) -> usize {
    let params: usize = match &st.params {
        Params::None => 0,
        Params::Positional(vs) => vs.iter().map(value_bytes).sum(),
        Params::Named(vs) => vs.iter().map(|(n, v)| n.len() + value_bytes(v)).sum(),
    };
    st.sql.len() + params
}

/// Runs one user statement. With `Role::Read`, a statement that could write is refused
/// (`Ok(Err(..))` is a statement error; the outer `Err` is a refusal of the whole query).
pub(crate) fn run_statement(
    conn: &Connection,
    guard: &Guard,
    st: &Statement,
    limits: &SqlLimits,
) -> Result<StatementResult, Failure> {
    match count_statements(&st.sql) {
        1 => {}
        0 => return Err(Failure::new("empty statement: no SQL to run")),
        n => {
            return Err(Failure::new(format!(
                "the text holds {n} statements; send each as its own statement of the request"
            )))
        }
    }
    if names_internal(&st.sql) {
        return Err(Failure::new(format!(
            "tables named {INTERNAL_PREFIX}* are internal to paxosdb: user statements cannot \
             read, write or create them (nor triggers or views that would)"
        )));
    }
    if guard.role == Role::Apply {
        if let Some(t) =
            identifiers(&st.sql).find(|i| LAYOUT_TABLES.iter().any(|l| l.eq_ignore_ascii_case(i)))
        {
            return Err(Failure::new(format!(
                "{t} describes this node's page layout or connection, which differs between \
                 nodes: it cannot feed a write (use it in a query)"
            )));
        }
    }
    let sqlite_failure = |guard: &Guard, e: rusqlite::Error| {
        let code = e.sqlite_error_code();
        if guard.budget_spent() {
            return Failure {
                message: format!(
                    "the statement was stopped after {} SQLite steps, its budget; it changed \
                     nothing (on any node)",
                    limits.step_budget
                ),
                code,
            };
        }
        let message = match (code, guard.take_refusal()) {
            (Some(ErrorCode::AuthorizationForStatementDenied), Some(why)) => why,
            _ => e.to_string(),
        };
        Failure { message, code }
    };
    guard.begin_user_statement();
    let prepared = conn.prepare(&st.sql);
    let mut stmt = match prepared {
        Ok(s) => s,
        Err(e) => {
            let f = sqlite_failure(guard, e);
            guard.trusted.store(true, Ordering::Relaxed);
            return Err(f);
        }
    };
    // `changes()` keeps the count of the last INSERT/UPDATE/DELETE: a statement that
    // changed no row (DDL) would report the one before it (the request's reset).
    let total_before = conn.total_changes();
    let result = run_prepared(&mut stmt, guard, st, limits, &sqlite_failure);
    drop(stmt);
    let result = result.map(|mut r| {
        if r.columns.is_empty() || r.rows_affected.is_some() {
            r.last_insert_id = Some(conn.last_insert_rowid());
            let changed_rows = conn.total_changes() != total_before;
            r.rows_affected = Some(if changed_rows { conn.changes() } else { 0 });
        }
        r
    });
    guard.trusted.store(true, Ordering::Relaxed);
    result
}

/// Whether the statement may write (false: read-only). Callers check before running.
pub(crate) fn is_read_only(conn: &Connection, guard: &Guard, sql: &str) -> Option<bool> {
    guard.begin_user_statement();
    let r = conn.prepare(sql).ok().map(|s| s.readonly());
    guard.trusted.store(true, Ordering::Relaxed);
    r
}

fn run_prepared(
    stmt: &mut rusqlite::Statement<'_>,
    guard: &Guard,
    st: &Statement,
    limits: &SqlLimits,
    sqlite_failure: &dyn Fn(&Guard, rusqlite::Error) -> Failure,
) -> Result<StatementResult, Failure> {
    let expected = stmt.parameter_count();
    match &st.params {
        Params::None if expected > 0 => {
            return Err(Failure::new(format!(
                "the statement has {expected} parameters but none were given"
            )))
        }
        Params::None => {}
        Params::Positional(vs) => {
            if vs.len() != expected {
                return Err(Failure::new(format!(
                    "the statement has {expected} parameters but {} were given",
                    vs.len()
                )));
            }
            for (i, v) in vs.iter().enumerate() {
                stmt.raw_bind_parameter(i + 1, to_sql(v))
                    .map_err(|e| sqlite_failure(guard, e))?;
            }
        }
        Params::Named(vs) => {
            for (n, v) in vs {
                // The name without its prefix character (rqlite's form), or with it.
                let idx = [":", "@", "$", ""]
                    .iter()
                    .find_map(|p| stmt.parameter_index(&format!("{p}{n}")).ok().flatten());
                match idx {
                    Some(i) => stmt
                        .raw_bind_parameter(i, to_sql(v))
                        .map_err(|e| sqlite_failure(guard, e))?,
                    None => {
                        return Err(Failure::new(format!(
                            "the statement has no parameter named {n}"
                        )))
                    }
                }
            }
        }
    }
    let read_only = stmt.readonly();
    let columns: Vec<String> = stmt.column_names().iter().map(|s| s.to_string()).collect();
    let types: Vec<String> = stmt
        .columns()
        .iter()
        .map(|c| c.decl_type().unwrap_or("").to_lowercase())
        .collect();
    let n = columns.len();
    let mut rows_out = Vec::new();
    let mut bytes = 0usize;
    let mut rows = stmt.raw_query();
    loop {
        match rows.next() {
            Ok(Some(row)) => {
                if rows_out.len() == limits.max_result_rows {
                    return Err(Failure::new(format!(
                        "the result has more than {} rows, the limit; narrow it (WHERE, LIMIT)",
                        limits.max_result_rows
                    )));
                }
                let mut r = Vec::with_capacity(n);
                for i in 0..n {
                    let v = row.get_ref(i).map(from_sql).unwrap_or(Value::Null);
                    bytes += value_bytes(&v);
                    r.push(v);
                }
                if bytes > limits.max_result_bytes {
                    return Err(Failure::new(format!(
                        "the result is larger than {} bytes, the limit; narrow it (fewer \
                         columns or rows)",
                        limits.max_result_bytes
                    )));
                }
                rows_out.push(r);
            }
            Ok(None) => break,
            Err(e) => return Err(sqlite_failure(guard, e)),
        }
    }
    Ok(StatementResult {
        columns,
        types,
        rows: rows_out,
        // Marks a writing statement for the caller, which fills in the counters.
        rows_affected: (!read_only).then_some(0),
        ..Default::default()
    })
}
