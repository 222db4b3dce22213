//! The SQL store beside the replica core: [`SqlMachine`] is the node's second state
//! machine (the core drives it through `machine::StateMachine`), [`SqlHandle`] is what the
//! SQL APIs call (`SqlService`), and [`SqlReader`] is what a state transfer moves
//! (`transfer::Transferable`).
//!
//! A SQL write travels as a `machine::Command` for `Machine::Sql` whose payload is the
//! bincode of a [`Request`] that the receiving node already made deterministic
//! ([`determinism::prepare`], with its clock and random source); its outcome comes back as
//! the bincode of the per-statement results.
//!
//! # Invariants
//!
//! - Every replica applies the same bytes: nothing here adds node-local state to a
//!   command after it was proposed.
//! - A linearizable query runs only after this node applied everything that was
//!   acknowledged before the query arrived (the KV read barrier); a stale one reads what
//!   this node applied, and says which index that was.
//! - A user's rights for SQL are checked by the API that received the request, and a
//!   write's again where every replica applies it: the command carries its user, and
//!   [`SqlMachine`] checks it against the key-value store's user table as of the
//!   write's entry ([`UserTable`]; see `store`, *Rights at apply*).

use super::determinism;
use super::store::UserTable;
use super::{
    QueryOutput, ReadLevel, Request, SqlImporter, SqlOutcome, SqlPart, SqlReader, SqlService,
    SqlSession, SqlStore, SqlWrite, StatementResult,
};
use crate::error::{Error, Result};
use crate::kv::KvStore;
use crate::machine::{Command, Machine, Outcome, StateMachine};
use crate::membership::Membership;
use crate::node::NodeHandle;
use crate::transfer::{Import, Transferable};
use futures::future::BoxFuture;

/// The SQL store as one of the node's state machines.
pub struct SqlMachine {
    store: SqlStore,
    /// The user table writes are checked against at apply (`None`: a write that names a
    /// user is denied).
    users: Option<Box<dyn UserTable>>,
}

impl SqlMachine {
    /// The store without a user table: for writes that run as no user (the simulation,
    /// tests).
    pub fn new(store: SqlStore) -> SqlMachine {
        SqlMachine { store, users: None }
    }

    /// The store checking each write's user against `users` (the node's key-value store,
    /// the primary machine, applied before this one) as of the write's entry.
    pub fn with_users(store: SqlStore, users: Box<dyn UserTable>) -> SqlMachine {
        SqlMachine {
            store,
            users: Some(users),
        }
    }
}

/// The node's user table is the key-value store's.
impl UserTable for KvStore {
    fn user_after(&self, index: u64, name: &str) -> Result<Option<crate::auth::UserRecord>> {
        KvStore::user_after(self, index, name)
    }

    fn changed_users_at(&self, index: u64) -> Result<bool> {
        Ok(self.last_user_change()? == Some(index))
    }
}

impl StateMachine for SqlMachine {
    fn machine(&self) -> Machine {
        Machine::Sql
    }

    fn applied_index(&self) -> u64 {
        self.store.applied_index()
    }

    /// Decodes the requests and applies them in one SQLite transaction; a payload that is
    /// not a SQL request is rejected (and touches no session).
    fn apply(&mut self, index: u64, commands: &[&Command]) -> Result<Vec<Outcome>> {
        let decoded = commands
            .iter()
            .map(|c| {
                bincode::deserialize::<Request>(&c.payload)
                    .map(|request| SqlWrite {
                        client_id: c.client_id,
                        seq: c.seq,
                        request,
                        user: c.user.clone(),
                    })
                    .map_err(|e| format!("not a SQL request: {e}"))
            })
            .collect();
        crate::machine::apply_decoded(decoded, |valid| {
            let users = self.users.as_deref();
            (self.store.apply_checked(index, &valid, users)?.into_iter())
                .map(|o| {
                    Ok(match o {
                        SqlOutcome::Results(r) => Outcome::Done(bincode::serialize(&r)?),
                        SqlOutcome::Rejected(why) => Outcome::Rejected(why),
                        SqlOutcome::Superseded(why) => Outcome::Superseded(why),
                        SqlOutcome::SessionReused(why) => Outcome::SessionReused(why),
                        SqlOutcome::Denied(why) => Outcome::Denied(why),
                    })
                })
                .collect()
        })
    }

    fn make_durable(&mut self) -> Result<()> {
        self.store.flush().map(|_| ())
    }

    fn install_staged(&mut self) -> Result<u64> {
        self.store.install_staged()
    }

    fn membership(&self) -> Result<Option<Membership>> {
        self.store.membership()
    }

    fn apply_membership(&mut self, index: u64, m: &Membership) -> Result<()> {
        self.store.apply_membership(index, m)
    }
}

/// The SQL database as a state transfer moves it: each [`SqlPart`] is one opaque part.
impl Transferable for SqlReader {
    fn machine(&self) -> Machine {
        Machine::Sql
    }

    fn export(
        &self,
        pinned: &mut dyn FnMut(u64),
        sink: &mut dyn FnMut(Vec<u8>) -> Result<()>,
    ) -> Result<()> {
        self.export_pinned(pinned, &mut |part| sink(bincode::serialize(&part)?))
    }

    fn importer(&self) -> Result<Box<dyn Import>> {
        Ok(Box::new(SqlImport {
            importer: SqlReader::importer(self)?,
            end: None,
        }))
    }
}

/// Receives the SQL database's parts: chunks are staged as they come; the end is kept for
/// `finish`.
struct SqlImport {
    importer: SqlImporter,
    end: Option<super::SqlEnd>,
}

impl Import for SqlImport {
    fn part(&mut self, bytes: Vec<u8>) -> Result<()> {
        let part: SqlPart = bincode::deserialize(&bytes)
            .map_err(|e| Error::Unavailable(format!("undecodable SQL state part: {e}")))?;
        if self.end.is_some() {
            return Err(Error::Unavailable("SQL state part after its end".into()));
        }
        match part {
            SqlPart::Chunk(c) => self.importer.chunk(c),
            SqlPart::End(end) => {
                self.end = Some(end);
                Ok(())
            }
        }
    }

    fn finish(self: Box<Self>) -> Result<u64> {
        let end = self
            .end
            .ok_or_else(|| Error::Unavailable("the SQL state ended without its end".into()))?;
        self.importer.finish(end)
    }
}

/// What the SQL APIs call on a node: writes through the log, queries from this node's
/// database after the read barrier their level asks for.
#[derive(Clone)]
pub struct SqlHandle {
    node: NodeHandle,
    reader: SqlReader,
}

impl SqlHandle {
    pub fn new(node: NodeHandle, reader: SqlReader) -> SqlHandle {
        SqlHandle { node, reader }
    }

    async fn run_execute(
        &self,
        req: Request,
        session: Option<SqlSession>,
        user: Option<String>,
    ) -> Result<Vec<StatementResult>> {
        let (client_id, seq) = match session {
            Some(s) => (s.client_id, s.seq),
            // A fresh session of its own: applied at most once, nobody retries it.
            None => ((rand::random::<u64>() >> 11).max(1), 1),
        };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let req = determinism::prepare(req, now_ms, &mut rand::thread_rng())?;
        let payload = bincode::serialize(&req)?;
        let bytes = self
            .node
            .submit(Command {
                client_id,
                seq,
                user,
                machine: Machine::Sql,
                payload,
            })
            .await?;
        bincode::deserialize(&bytes)
            .map_err(|e| Error::Internal(format!("undecodable SQL result: {e}")))
    }

    async fn run_query(&self, req: Request, level: ReadLevel) -> Result<QueryOutput> {
        match level {
            ReadLevel::Linearizable => self.node.read_barrier().await?,
            ReadLevel::Stale => {}
            ReadLevel::Fresh { max_ms, strict } => {
                let max = std::time::Duration::from_millis(max_ms);
                self.node.check_fresh(max, strict).await?
            }
        }
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || reader.query(&req))
            .await
            .map_err(|e| Error::Internal(format!("SQL query task: {e}")))?
    }
}

impl SqlService for SqlHandle {
    fn execute(
        &self,
        req: Request,
        session: Option<SqlSession>,
        user: Option<String>,
    ) -> BoxFuture<'_, Result<Vec<StatementResult>>> {
        Box::pin(self.run_execute(req, session, user))
    }

    fn query(&self, req: Request, level: ReadLevel) -> BoxFuture<'_, Result<QueryOutput>> {
        Box::pin(self.run_query(req, level))
    }
}
