//! Client-facing protocol servers. Each one decodes its protocol, validates, and calls a
//! typed handle above the protocol-neutral [`crate::node::NodeHandle`] —
//! [`crate::kv::KvHandle`] for keys and values, [`crate::sql::SqlService`] for SQL — which
//! answers each call with its own result type; none re-implements routing, retries or
//! consistency: gRPC ([`grpc`] for KV and the cluster, [`grpc_sql`] for SQL), HTTP/JSON
//! ([`http`]) and the Redis protocol ([`resp`]).
//! They share one connection limit and idle timeout ([`conn`]) and, when it is on, one
//! TLS setup ([`tls`]).

pub mod conn;
pub mod grpc;
pub mod grpc_sql;
pub mod health;
pub mod http;
pub mod resp;
pub mod tls;
pub mod txn_pb;

/// The generated protobuf types and gRPC stubs of `proto/paxosdb.proto`.
pub mod pb {
    tonic::include_proto!("paxosdb.v1");
    /// Encoded descriptors for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("paxosdb_descriptor");
}
