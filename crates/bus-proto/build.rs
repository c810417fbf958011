//! Generates the `tether.bus.v1` messages and services from the .proto, without a system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/tether/bus/v1/bus.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        // prost's codec with smaller buffers (crate::Codec).
        .codec_path("crate::Codec")
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
