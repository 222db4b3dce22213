//! Generates the gRPC server and client code from `proto/paxosdb.proto`, plus the
//! file descriptor set that server reflection serves to tools such as `grpcurl`; and the
//! client of etcd's KV service from `proto/etcd/kv.proto` (a subset of etcd's API), which
//! `paxosdb bench --target etcd` drives; and the standard gRPC health service
//! (`proto/grpc/health/v1/health.proto`).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_build::configure()
        .file_descriptor_set_path(out.join("paxosdb_descriptor.bin"))
        .compile_protos(&["proto/paxosdb.proto"], &["proto"])?;
    tonic_build::configure()
        .build_server(false)
        .compile_protos(&["proto/etcd/kv.proto"], &["proto/etcd"])?;
    tonic_build::configure()
        .file_descriptor_set_path(out.join("health_descriptor.bin"))
        .compile_protos(&["proto/grpc/health/v1/health.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/paxosdb.proto");
    println!("cargo:rerun-if-changed=proto/etcd/kv.proto");
    println!("cargo:rerun-if-changed=proto/grpc/health/v1/health.proto");
    Ok(())
}
