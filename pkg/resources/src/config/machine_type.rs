use basalt_resource::{namespaces, ResourceSpec};
use serde::{Deserialize, Serialize};

use crate::cluster::MachineRole;

/// The node's role (id `machine-type`), from `machine.role` of the config in effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ResourceSpec)]
#[resource(
    type = "MachineTypes.config.basalt.dev",
    namespace = namespaces::CONFIG,
    column("Role", "role"),
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MachineTypeSpec {
    pub role: MachineRole,
}

impl MachineTypeSpec {
    pub const ID: &'static str = "machine-type";
}
