use basalt_resource::{namespaces, ResourceSpec};
use serde::{Deserialize, Serialize};

/// What the node runs (id `version`): Basalt's version, the kernel's release and the
/// machine's architecture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ResourceSpec)]
#[resource(
    type = "Versions.runtime.basalt.dev",
    namespace = namespaces::RUNTIME,
    column("Version", "version"),
    column("Kernel", "kernel"),
    column("Arch", "arch"),
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VersionSpec {
    pub version: String,
    pub kernel: String,
    pub arch: String,
}

impl VersionSpec {
    pub const ID: &'static str = "version";
}
