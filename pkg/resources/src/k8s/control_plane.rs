use basalt_resource::{namespaces, ResourceSpec};
use serde::{Deserialize, Serialize};

/// The port of a Kubernetes API server when nothing says otherwise.
pub const DEFAULT_API_SERVER_PORT: u16 = 6443;

/// The cluster's control-plane endpoint (id `control-plane`), `https://HOST:PORT`, from
/// the `ClusterConfig` document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ResourceSpec)]
#[resource(
    type = "ControlPlaneEndpoints.k8s.basalt.dev",
    namespace = namespaces::CONFIG,
    column("Endpoint", "endpoint"),
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControlPlaneEndpointSpec {
    pub endpoint: String,
}

impl ControlPlaneEndpointSpec {
    pub const ID: &'static str = "control-plane";
}

/// A control-plane node of the cluster (id: its node name), as cluster membership
/// reports it; its API server is at each address on `apiServerPort`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ResourceSpec)]
#[resource(
    type = "ControlPlaneMembers.k8s.basalt.dev",
    namespace = namespaces::CLUSTER,
    column("Addresses", "addresses"),
    column("Port", "apiServerPort"),
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControlPlaneMemberSpec {
    pub addresses: Vec<String>,
    #[serde(default = "default_api_server_port")]
    pub api_server_port: u16,
}

fn default_api_server_port() -> u16 {
    DEFAULT_API_SERVER_PORT
}
