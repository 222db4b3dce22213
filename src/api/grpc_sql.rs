//! The gRPC SQL service, `paxosdb.v1.Sql`: `Execute` (statements through the log) and
//! `Query` (read-only statements at a read level), with typed values and parameters.
//!
//! A call is authenticated exactly as a KV call ([`super::grpc::identity`]: the
//! `authorization` metadata), then authorized by [`Identity::check_sql`]: `Query` needs
//! the `read` role, `Execute` `readwrite`, and a user limited to a key prefix may use
//! neither. The request is then decoded into the shared SQL vocabulary
//! ([`crate::sql::Request`]) and handed to the node's [`SqlService`]; errors map to gRPC
//! statuses as for KV ([`to_status`]). A statement that fails is not a gRPC error: it is
//! reported in its own result's `error`.
//!
//! The conversions between the protobuf messages and the SQL vocabulary live here too
//! (the client library uses them in the other direction).
//!
//! Every call is timed into [`Metrics`] as protocol `grpc`, ops `sql_execute` and
//! `sql_query`.
//!
//! # Invariants
//!
//! - Nothing reaches the [`SqlService`] before its caller is authenticated and authorized.
//! - A request that cannot be decoded (both positional and named parameters, a session
//!   with a zero id, an unknown read level) is refused whole with `INVALID_ARGUMENT`:
//!   no statement of it runs.
//! - Message sizes are bounded in both directions (`server.rs` sets the limits): a
//!   request over the limit is refused before it is decoded; an answer over
//!   `max_response` is refused with a message saying so (for `Execute`, that the
//!   statements were applied nonetheless).

use super::grpc::{identity, to_status};
use super::pb;
use crate::auth::Authenticator;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::sql::{self, ReadLevel, SqlService, SqlSession};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Serves `paxosdb.v1.Sql` over a node's SQL service.
pub struct SqlGrpc {
    pub sql: Arc<dyn SqlService>,
    pub metrics: Arc<Metrics>,
    pub auth: Arc<Authenticator>,
    /// The largest answer sent (the server's encoding limit): a larger one is refused
    /// with a message saying so.
    pub max_response: usize,
}

impl SqlGrpc {
    /// Refuses an answer of more than `max_response` bytes; `ran` says whether the
    /// statements were applied anyway (an Execute), so the message does not claim that
    /// nothing happened.
    #[allow(clippy::result_large_err)] // tonic handlers return Status by value
    fn bounded<T: prost::Message>(&self, answer: T, ran: bool) -> Result<T, Status> {
        let size = answer.encoded_len();
        if size <= self.max_response {
            return Ok(answer);
        }
        let what = format!(
            "the answer is {size} bytes, over the limit of {} bytes",
            self.max_response
        );
        Err(if ran {
            Status::out_of_range(format!(
                "the statements were applied, but {what}: return fewer rows from a write"
            ))
        } else {
            Status::invalid_argument(format!("{what}: select fewer rows or columns (LIMIT)"))
        })
    }
}

#[tonic::async_trait]
impl pb::sql_server::Sql for SqlGrpc {
    async fn execute(
        &self,
        req: Request<pb::ExecuteRequest>,
    ) -> std::result::Result<Response<pb::ExecuteResponse>, Status> {
        self.metrics
            .timed("grpc", "sql_execute", async move {
                let id = identity(&self.auth, req.metadata()).await?;
                id.check_sql(true).map_err(to_status)?;
                let r = req.into_inner();
                let session = match r.session {
                    None => None,
                    Some(s) if s.client_id == 0 || s.seq == 0 => {
                        return Err(Status::invalid_argument(
                            "a session's client_id and seq must be non-zero",
                        ))
                    }
                    Some(s) => Some(SqlSession {
                        client_id: s.client_id,
                        seq: s.seq,
                    }),
                };
                let request = request_from_pb(r.statements, r.transaction).map_err(to_status)?;
                let results = self
                    .sql
                    .execute(request, session, id.user.clone())
                    .await
                    .map_err(to_status)?;
                let answer = pb::ExecuteResponse {
                    results: results.into_iter().map(result_to_pb).collect(),
                };
                self.bounded(answer, true).map(Response::new)
            })
            .await
    }

    async fn query(
        &self,
        req: Request<pb::QueryRequest>,
    ) -> std::result::Result<Response<pb::QueryResponse>, Status> {
        self.metrics
            .timed("grpc", "sql_query", async move {
                let id = identity(&self.auth, req.metadata()).await?;
                id.check_sql(false).map_err(to_status)?;
                let r = req.into_inner();
                let level = level_from_pb(r.level, r.freshness).map_err(to_status)?;
                let request = request_from_pb(r.statements, r.transaction).map_err(to_status)?;
                let out = self.sql.query(request, level).await.map_err(to_status)?;
                let answer = pb::QueryResponse {
                    results: out.results.into_iter().map(result_to_pb).collect(),
                    applied_index: out.applied_index,
                };
                self.bounded(answer, false).map(Response::new)
            })
            .await
    }
}

/// A protobuf value as an SQL value (an unset oneof is NULL).
pub fn value_from_pb(v: pb::SqlValue) -> sql::Value {
    use pb::sql_value::Value as V;
    match v.value {
        None | Some(V::Null(_)) => sql::Value::Null,
        Some(V::Integer(i)) => sql::Value::Integer(i),
        Some(V::Real(f)) => sql::Value::Real(f),
        Some(V::Text(t)) => sql::Value::Text(t),
        Some(V::Blob(b)) => sql::Value::Blob(b),
    }
}

/// An SQL value as a protobuf value.
pub fn value_to_pb(v: sql::Value) -> pb::SqlValue {
    use pb::sql_value::Value as V;
    pb::SqlValue {
        value: Some(match v {
            sql::Value::Null => V::Null(true),
            sql::Value::Integer(i) => V::Integer(i),
            sql::Value::Real(f) => V::Real(f),
            sql::Value::Text(t) => V::Text(t),
            sql::Value::Blob(b) => V::Blob(b),
        }),
    }
}

/// Protobuf statements as a request; a statement with both positional and named
/// parameters is refused.
pub fn request_from_pb(
    statements: Vec<pb::SqlStatement>,
    transaction: bool,
) -> Result<sql::Request> {
    let statements = statements
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let params = match (s.positional.is_empty(), s.named.is_empty()) {
                (true, true) => sql::Params::None,
                (false, true) => {
                    sql::Params::Positional(s.positional.into_iter().map(value_from_pb).collect())
                }
                (true, false) => sql::Params::Named(
                    s.named
                        .into_iter()
                        .map(|n| (n.name, n.value.map_or(sql::Value::Null, value_from_pb)))
                        .collect(),
                ),
                (false, false) => {
                    return Err(Error::invalid(format!(
                        "statement {} has both positional and named parameters; use one kind",
                        i + 1
                    )))
                }
            };
            Ok(sql::Statement { sql: s.sql, params })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(sql::Request {
        statements,
        transaction,
    })
}

/// A request as protobuf statements (the client's direction).
pub fn statements_to_pb(req: &sql::Request) -> Vec<pb::SqlStatement> {
    req.statements
        .iter()
        .map(|s| {
            let (positional, named) = match &s.params {
                sql::Params::None => (vec![], vec![]),
                sql::Params::Positional(vs) => {
                    (vs.iter().cloned().map(value_to_pb).collect(), vec![])
                }
                sql::Params::Named(vs) => (
                    vec![],
                    vs.iter()
                        .map(|(n, v)| pb::NamedValue {
                            name: n.clone(),
                            value: Some(value_to_pb(v.clone())),
                        })
                        .collect(),
                ),
            };
            pb::SqlStatement {
                sql: s.sql.clone(),
                positional,
                named,
            }
        })
        .collect()
}

/// A statement's result as protobuf.
pub fn result_to_pb(r: sql::StatementResult) -> pb::SqlResult {
    pb::SqlResult {
        columns: r.columns,
        types: r.types,
        rows: r
            .rows
            .into_iter()
            .map(|row| pb::SqlRow {
                values: row.into_iter().map(value_to_pb).collect(),
            })
            .collect(),
        last_insert_id: r.last_insert_id,
        rows_affected: r.rows_affected,
        error: r.error,
    }
}

/// A protobuf result as a statement's result (the client's direction).
pub fn result_from_pb(r: pb::SqlResult) -> sql::StatementResult {
    sql::StatementResult {
        columns: r.columns,
        types: r.types,
        rows: r
            .rows
            .into_iter()
            .map(|row| row.values.into_iter().map(value_from_pb).collect())
            .collect(),
        last_insert_id: r.last_insert_id,
        rows_affected: r.rows_affected,
        error: r.error,
    }
}

/// A protobuf read level and freshness bound; an unknown level, or a bound on a
/// linearizable read, is refused.
pub fn level_from_pb(level: i32, freshness: Option<pb::Freshness>) -> Result<ReadLevel> {
    match (pb::ReadLevel::try_from(level), freshness) {
        (Ok(pb::ReadLevel::Linearizable), None) => Ok(ReadLevel::Linearizable),
        (Ok(pb::ReadLevel::Linearizable), Some(_)) => Err(Error::invalid(
            "a freshness bound applies to stale reads only (READ_LEVEL_STALE)",
        )),
        (Ok(pb::ReadLevel::Stale), None) => Ok(ReadLevel::Stale),
        (Ok(pb::ReadLevel::Stale), Some(f)) => Ok(ReadLevel::Fresh {
            max_ms: f.max_ms,
            strict: f.strict,
        }),
        (Err(_), _) => Err(Error::invalid(format!("unknown read level {level}"))),
    }
}

/// A read level as protobuf: the level and its freshness bound.
pub fn level_to_pb(level: ReadLevel) -> (pb::ReadLevel, Option<pb::Freshness>) {
    match level {
        ReadLevel::Linearizable => (pb::ReadLevel::Linearizable, None),
        ReadLevel::Stale => (pb::ReadLevel::Stale, None),
        ReadLevel::Fresh { max_ms, strict } => {
            (pb::ReadLevel::Stale, Some(pb::Freshness { max_ms, strict }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_requests_round_trip() {
        let values = vec![
            sql::Value::Null,
            sql::Value::Integer(i64::MIN),
            sql::Value::Real(-0.5),
            sql::Value::Text("é\n".into()),
            sql::Value::Blob(vec![0, 255]),
        ];
        let req = sql::Request {
            statements: vec![
                sql::Statement {
                    sql: "INSERT INTO t VALUES (?, ?, ?, ?, ?)".into(),
                    params: sql::Params::Positional(values.clone()),
                },
                sql::Statement {
                    sql: "SELECT :a".into(),
                    params: sql::Params::Named(vec![("a".into(), sql::Value::Integer(1))]),
                },
                sql::Statement::new("SELECT 1"),
            ],
            transaction: true,
        };
        let back = request_from_pb(statements_to_pb(&req), true).unwrap();
        assert_eq!(back, req);
        let res = sql::StatementResult {
            columns: vec!["a".into()],
            types: vec!["integer".into()],
            rows: vec![values],
            last_insert_id: Some(3),
            rows_affected: None,
            error: Some("x".into()),
        };
        assert_eq!(result_from_pb(result_to_pb(res.clone())), res);
        // An unset oneof is NULL.
        assert_eq!(
            value_from_pb(pb::SqlValue { value: None }),
            sql::Value::Null
        );
    }

    #[test]
    fn mixed_parameters_and_unknown_levels_are_refused() {
        let st = pb::SqlStatement {
            sql: "SELECT ?, :a".into(),
            positional: vec![value_to_pb(sql::Value::Integer(1))],
            named: vec![pb::NamedValue {
                name: "a".into(),
                value: None,
            }],
        };
        assert!(matches!(
            request_from_pb(vec![st], false),
            Err(Error::InvalidInput(_))
        ));
        assert!(matches!(
            level_from_pb(7, None),
            Err(Error::InvalidInput(_))
        ));
        assert_eq!(level_from_pb(1, None).unwrap(), ReadLevel::Stale);
        assert_eq!(level_to_pb(ReadLevel::Linearizable).0 as i32, 0);
        let bound = Some(pb::Freshness {
            max_ms: 500,
            strict: true,
        });
        let fresh = level_from_pb(1, bound).unwrap();
        let want = ReadLevel::Fresh {
            max_ms: 500,
            strict: true,
        };
        assert_eq!(fresh, want);
        assert_eq!(level_to_pb(fresh), (pb::ReadLevel::Stale, bound));
        assert!(matches!(
            level_from_pb(0, bound),
            Err(Error::InvalidInput(_))
        ));
    }
}
