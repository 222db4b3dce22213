//! Generates the gRPC server and client code from `proto/paxosdb.proto`, plus the
//! file descriptor set that server reflection serves to tools such as `grpcurl`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_build::configure()
        .file_descriptor_set_path(out.join("paxosdb_descriptor.bin"))
        .compile_protos(&["proto/paxosdb.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/paxosdb.proto");
    Ok(())
}
