//! Compiles the .proto files with protox (a protobuf compiler in Rust), so a fresh machine
//! builds without a system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/switchboard/node/v1/node.proto",
        "proto/switchboard/replication/v1/replication.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        // Snapshot carries the nonce key: its Debug (in lib.rs) leaves it out.
        .skip_debug([".switchboard.replication.v1.Snapshot"])
        .compile_fds(descriptors)?;
    Ok(())
}
