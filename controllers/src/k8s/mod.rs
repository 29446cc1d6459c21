//! Controllers of the Kubernetes domain.

mod kubeprism;
mod kubeprism_endpoints;

pub use kubeprism::KubePrismController;
pub use kubeprism_endpoints::{endpoints, KubePrismEndpointsController};
