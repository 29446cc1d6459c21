use basalt_resource::{namespaces, ResourceSpec};
use serde::{Deserialize, Serialize};

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
