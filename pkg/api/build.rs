//! Compiles the .proto files with protox (no system protoc) and generates the tonic/prost
//! code, plus a table of every RPC (its path and whether it streams), which apid's
//! authorization table and forwarding are checked against.

use std::fmt::Write as _;
use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "proto/basalt/common/v1/common.proto",
    "proto/basalt/resource/v1/resource.proto",
    "proto/basalt/machine/v1/machine.proto",
    "proto/basalt/trustd/v1/trustd.proto",
];

/// trustd's service is served on its own port, not through apid: it is not a Machine API
/// method.
const NOT_MACHINE_API: &[&str] = &["basalt.trustd.v1"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"])?;

    let mut methods = String::from(
        "/// Every RPC of every Machine API service: (path, server streaming).\n\
         pub const METHODS: &[(&str, bool)] = &[\n",
    );
    for file in &fds.file {
        if NOT_MACHINE_API.contains(&file.package()) {
            continue;
        }
        for service in &file.service {
            for method in &service.method {
                writeln!(
                    methods,
                    "    (\"/{}.{}/{}\", {}),",
                    file.package(),
                    service.name(),
                    method.name(),
                    method.server_streaming()
                )?;
            }
        }
    }
    methods.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("methods.rs"), methods)?;

    tonic_prost_build::configure()
        .extern_path(
            ".basalt.resource.v1.Metadata",
            "::basalt_resource::proto::Metadata",
        )
        .extern_path(
            ".basalt.resource.v1.Resource",
            "::basalt_resource::proto::Resource",
        )
        .extern_path(
            ".google.protobuf.Timestamp",
            "::basalt_resource::proto::Timestamp",
        )
        .compile_fds(fds)?;
    Ok(())
}
