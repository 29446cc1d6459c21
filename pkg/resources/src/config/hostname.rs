use basalt_resource::{namespaces, ResourceSpec};
use serde::{Deserialize, Serialize};

/// The hostname the machine config asks for (id `hostname`); may be a fully qualified
/// name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ResourceSpec)]
#[resource(
    type = "HostnameConfigs.config.basalt.dev",
    namespace = namespaces::CONFIG,
    column("Hostname", "hostname"),
)]
#[serde(deny_unknown_fields)]
pub struct HostnameConfigSpec {
    pub hostname: String,
}

impl HostnameConfigSpec {
    pub const ID: &'static str = "hostname";
}
