//! A single SQLite database that implements [`SqlService`] WITHOUT replication: a
//! stand-in that lets the SQL APIs be built and tested while the replicated SQL state
//! machine is being built. Never wired into `paxosdb server` on `main`; it goes away when
//! the replicated service lands.
//!
//! # Invariants
//!
//! - `query` never changes the database (the connection refuses non-read-only
//!   statements before running them).

use super::{QueryOutput, ReadLevel, Request, SqlService, SqlSession, StatementResult, Value};
use crate::error::{Error, Result};
use futures::future::BoxFuture;
use rusqlite::types::ValueRef;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// One SQLite connection behind a mutex.
#[derive(Clone)]
pub struct LocalSql {
    conn: Arc<Mutex<rusqlite::Connection>>,
}

impl LocalSql {
    /// Opens (or creates) the database file at `path`.
    pub fn open(path: &Path) -> Result<LocalSql> {
        let conn = rusqlite::Connection::open(path)
            .map_err(|e| Error::Storage(format!("open {}: {e}", path.display())))?;
        Ok(LocalSql {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    fn run(&self, req: Request, read_only: bool) -> Result<Vec<StatementResult>> {
        let conn = self.conn.lock().expect("sql connection");
        let tx = if req.transaction {
            Some(conn.unchecked_transaction().map_err(sql_err)?)
        } else {
            None
        };
        let c: &rusqlite::Connection = &conn;
        let mut out = Vec::new();
        let mut failed = false;
        for st in &req.statements {
            let r = run_one(c, st, read_only);
            failed |= r.error.is_some();
            out.push(r);
            if failed && req.transaction {
                break;
            }
        }
        if let Some(t) = tx {
            if failed {
                t.rollback().map_err(sql_err)?;
            } else {
                t.commit().map_err(sql_err)?;
            }
        }
        Ok(out)
    }
}

fn sql_err(e: rusqlite::Error) -> Error {
    Error::Storage(format!("sqlite: {e}"))
}

fn run_one(c: &rusqlite::Connection, st: &super::Statement, read_only: bool) -> StatementResult {
    let fail = |e: String| StatementResult {
        error: Some(e),
        ..Default::default()
    };
    let mut stmt = match c.prepare(&st.sql) {
        Ok(s) => s,
        Err(e) => return fail(e.to_string()),
    };
    if read_only && !stmt.readonly() {
        return fail("a query cannot change the database: use execute".into());
    }
    let to_sql = |v: &Value| -> rusqlite::types::Value {
        match v {
            Value::Null => rusqlite::types::Value::Null,
            Value::Integer(i) => rusqlite::types::Value::Integer(*i),
            Value::Real(f) => rusqlite::types::Value::Real(*f),
            Value::Text(s) => rusqlite::types::Value::Text(s.clone()),
            Value::Blob(b) => rusqlite::types::Value::Blob(b.clone()),
        }
    };
    let bound = match &st.params {
        super::Params::None => Ok(()),
        super::Params::Positional(vs) => vs
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| stmt.raw_bind_parameter(i + 1, to_sql(v))),
        super::Params::Named(vs) => vs.iter().try_for_each(|(n, v)| {
            let idx = [":", "@", "$"]
                .iter()
                .find_map(|p| stmt.parameter_index(&format!("{p}{n}")).ok().flatten());
            match idx {
                Some(i) => stmt.raw_bind_parameter(i, to_sql(v)),
                None => Err(rusqlite::Error::InvalidParameterName(n.clone())),
            }
        }),
    };
    if let Err(e) = bound {
        return fail(e.to_string());
    }
    let columns: Vec<String> = stmt.column_names().iter().map(|s| s.to_string()).collect();
    let types: Vec<String> = stmt
        .columns()
        .iter()
        .map(|c| c.decl_type().unwrap_or("").to_lowercase())
        .collect();
    let n = columns.len();
    let mut rows_out = Vec::new();
    let mut rows = stmt.raw_query();
    loop {
        match rows.next() {
            Ok(Some(row)) => {
                let mut r = Vec::with_capacity(n);
                for i in 0..n {
                    r.push(match row.get_ref(i) {
                        Ok(ValueRef::Null) | Err(_) => Value::Null,
                        Ok(ValueRef::Integer(i)) => Value::Integer(i),
                        Ok(ValueRef::Real(f)) => Value::Real(f),
                        Ok(ValueRef::Text(t)) => Value::Text(String::from_utf8_lossy(t).into()),
                        Ok(ValueRef::Blob(b)) => Value::Blob(b.to_vec()),
                    });
                }
                rows_out.push(r);
            }
            Ok(None) => break,
            Err(e) => return fail(e.to_string()),
        }
    }
    drop(rows);
    if n > 0 {
        StatementResult {
            columns,
            types,
            rows: rows_out,
            ..Default::default()
        }
    } else {
        StatementResult {
            last_insert_id: Some(c.last_insert_rowid()),
            rows_affected: Some(c.changes()),
            ..Default::default()
        }
    }
}

impl SqlService for LocalSql {
    fn execute(
        &self,
        req: Request,
        _session: Option<SqlSession>,
    ) -> BoxFuture<'_, Result<Vec<StatementResult>>> {
        let me = self.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || me.run(req, false))
                .await
                .map_err(|e| Error::Internal(format!("sql task: {e}")))?
        })
    }

    fn query(&self, req: Request, _level: ReadLevel) -> BoxFuture<'_, Result<QueryOutput>> {
        let me = self.clone();
        Box::pin(async move {
            let results = tokio::task::spawn_blocking(move || me.run(req, true))
                .await
                .map_err(|e| Error::Internal(format!("sql task: {e}")))??;
            Ok(QueryOutput {
                results,
                applied_index: 0,
            })
        })
    }
}
