//! Config domain: what the node should be. The machine config as applied through the API
//! (user-owned), and what the config controllers publish from it.

use serde::{Deserialize, Serialize};

use basalt_resource::{namespaces, ResourceSpec};

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

/// A machine configuration as applied through the API: id `active` is the one in effect,
/// `staged` one waiting for the next boot. It holds secrets, so it is sensitive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ResourceSpec)]
#[resource(
    type = "MachineConfigs.config.basalt.dev",
    namespace = namespaces::CONFIG,
    sensitive,
    aliases("mc"),
    column("Digest", "digest"),
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MachineConfigSpec {
    /// The multi-document YAML, as applied.
    pub yaml: String,
    /// BLAKE3 of its canonical form: equal for configs that mean the same.
    pub digest: String,
}

impl MachineConfigSpec {
    pub const ACTIVE: &'static str = "active";
    pub const STAGED: &'static str = "staged";
}
