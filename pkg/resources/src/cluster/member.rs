use basalt_resource::{namespaces, ResourceSpec};
use serde::{Deserialize, Serialize};

/// What a node is in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MachineRole {
    ControlPlane,
    Worker,
}

/// A node of the cluster (id: its node name), as the control plane's trustd lists it:
/// every node registers there, with its role and addresses, and reads the list back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ResourceSpec)]
#[resource(
    type = "Members.cluster.basalt.dev",
    namespace = namespaces::CLUSTER,
    aliases("mem"),
    column("Role", "role"),
    column("Addresses", "addresses"),
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MemberSpec {
    pub role: MachineRole,
    pub addresses: Vec<String>,
}
