use std::collections::BTreeMap;

use basalt_resource::{namespaces, ResourceSpec};
use serde::{Deserialize, Serialize};

/// Nodes this node's API may forward calls to (the `nodes` a call names), from one
/// source (id: the source, e.g. `node` for what the node derives itself). A call naming
/// a node in none of them is refused before any connection is made: the API is no way
/// to reach, or probe, an address of the caller's choosing.
///
/// Each target is a name or an address; a name with addresses is reached at the first
/// of them, anything else as it is written.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ResourceSpec)]
#[resource(
    type = "ForwardTargets.cluster.basalt.dev",
    namespace = namespaces::CLUSTER,
    aliases("ft"),
    column("Targets", "targets"),
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ForwardTargetSpec {
    pub targets: BTreeMap<String, Vec<String>>,
}

impl ForwardTargetSpec {
    /// What the node derives itself: its own names and addresses, the control-plane
    /// endpoint's host and the cluster's members.
    pub const NODE: &'static str = "node";
}
