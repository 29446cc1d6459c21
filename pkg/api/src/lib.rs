//! The Machine API contract: the `.proto` files under `proto/` and the code generated from
//! them. Resource messages map onto `basalt_resource::proto`, so a resource travels
//! without conversion between the state store and the wire.
//!
//! Conventions every service follows (apid's forwarding depends on them):
//! - a unary response is `repeated <Result> messages = 1`, one per node;
//! - every per-node message (each unary result, each streamed message) has
//!   `basalt.common.v1.Metadata metadata = 1`.

#![allow(clippy::doc_lazy_continuation, clippy::large_enum_variant)]

pub mod client;
pub mod tls;

pub mod common {
    pub mod v1 {
        tonic::include_proto!("basalt.common.v1");
    }
}

pub mod resource {
    pub mod v1 {
        tonic::include_proto!("basalt.resource.v1");
    }
}

pub mod machine {
    pub mod v1 {
        tonic::include_proto!("basalt.machine.v1");
    }
}

pub mod trustd {
    pub mod v1 {
        tonic::include_proto!("basalt.trustd.v1");
    }
}

include!(concat!(env!("OUT_DIR"), "/methods.rs"));

/// The directory holding the `.proto` files, for clients generated in other languages.
pub const PROTO_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/proto");

/// The gRPC metadata key naming the nodes a call is for (comma-separated).
pub const NODES_HEADER: &str = "nodes";

/// The default API port.
pub const DEFAULT_PORT: u16 = 50000;

/// trustd's port on control-plane nodes.
pub const TRUSTD_PORT: u16 = 50001;

/// The gRPC metadata key carrying the machine token in calls to trustd.
pub const TOKEN_HEADER: &str = "token";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_is_listed_once() {
        let mut paths: Vec<_> = METHODS.iter().map(|(p, _)| *p).collect();
        paths.sort_unstable();
        paths.dedup();
        assert_eq!(paths.len(), METHODS.len());
        assert!(METHODS.contains(&("/basalt.machine.v1.MachineService/Version", false)));
        assert!(METHODS.contains(&("/basalt.resource.v1.ResourceService/Watch", true)));
        assert!(!METHODS
            .iter()
            .any(|(p, _)| p.starts_with("/basalt.trustd.")));
    }
}
