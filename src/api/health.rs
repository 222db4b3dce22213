//! The standard gRPC health service, `grpc.health.v1.Health`, on the gRPC listener:
//! what load balancers, `grpc_health_probe` and Kubernetes' gRPC probes ask.
//!
//! A node is `SERVING` when it can serve a linearizable read within a second (the same
//! test as HTTP's `/readyz`: a read round confirmed by a majority and applied here), and
//! `NOT_SERVING` otherwise (no leader, no quorum, catching up, removed). The server as a
//! whole (`""`) and each of its services (`paxosdb.v1.Kv`, `paxosdb.v1.Sql`,
//! `paxosdb.v1.Cluster`, `paxosdb.v1.Lease`) have that one status; another name is `NOT_FOUND` for `Check`
//! and `SERVICE_UNKNOWN` for `Watch`, as the protocol says. `Watch` sends the status at
//! once and then each change, checked every second. Neither needs credentials.
//!
//! Invariants:
//! - a check writes nothing (a read round takes no log entry);
//! - at most [`MAX_WATCHES`] watches run on a node at once (each is a task checking once
//!   a second); one more is refused with `RESOURCE_EXHAUSTED`, retryable.

use crate::node::NodeHandle;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tonic::{Request, Response, Status};

/// The generated types and server of `proto/grpc/health/v1/health.proto`.
pub mod proto {
    tonic::include_proto!("grpc.health.v1");
    /// Encoded descriptors for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("health_descriptor");
}

use proto::health_check_response::ServingStatus;
use proto::health_server::Health;
use proto::{HealthCheckRequest, HealthCheckResponse};

/// The names a status is kept for.
pub const SERVICES: &[&str] = &[
    "",
    "paxosdb.v1.Kv",
    "paxosdb.v1.Sql",
    "paxosdb.v1.Cluster",
    "paxosdb.v1.Lease",
];
/// How long a check waits for a linearizable read before saying `NOT_SERVING`.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a watch checks.
const WATCH_EVERY: Duration = Duration::from_secs(1);
/// Most watches at once on one node.
pub const MAX_WATCHES: usize = 256;

/// The health service of one node.
#[derive(Clone)]
pub struct HealthService {
    node: NodeHandle,
    watches: Arc<Semaphore>,
}

impl HealthService {
    pub fn new(node: NodeHandle) -> Self {
        HealthService {
            node,
            watches: Arc::new(Semaphore::new(MAX_WATCHES)),
        }
    }
}

/// `SERVING` if `node` serves a linearizable read within [`CHECK_TIMEOUT`].
async fn status(node: &NodeHandle) -> ServingStatus {
    match tokio::time::timeout(CHECK_TIMEOUT, node.read_barrier()).await {
        Ok(Ok(())) => ServingStatus::Serving,
        _ => ServingStatus::NotServing,
    }
}

fn answer(s: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse { status: s as i32 }
}

type WatchStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        req: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let service = req.into_inner().service;
        if !SERVICES.contains(&service.as_str()) {
            return Err(Status::not_found(format!(
                "no service {service:?} here; known: {SERVICES:?}"
            )));
        }
        Ok(Response::new(answer(status(&self.node).await)))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<HealthCheckRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let service = req.into_inner().service;
        let permit = self.watches.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "this node runs {MAX_WATCHES} health watches already; retry later or use Check"
            ))
        })?;
        let (tx, rx) = mpsc::channel(1);
        let node = self.node.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if !SERVICES.contains(&service.as_str()) {
                // Unknown: said once, and the call stays open (the protocol's rule).
                if tx
                    .send(Ok(answer(ServingStatus::ServiceUnknown)))
                    .await
                    .is_ok()
                {
                    tx.closed().await;
                }
                return;
            }
            let mut last = None;
            loop {
                let now = status(&node).await;
                if last != Some(now) {
                    if tx.send(Ok(answer(now))).await.is_err() {
                        return;
                    }
                    last = Some(now);
                }
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(WATCH_EVERY) => {}
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
