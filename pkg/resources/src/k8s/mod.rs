//! Kubernetes domain: KubePrism, the per-node load balancer in front of the API servers:
//! its settings, the API-server endpoints it balances over, and its status.

mod control_plane;
mod kubeprism;

pub use control_plane::*;
pub use kubeprism::*;
