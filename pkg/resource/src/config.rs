//! Config domain: what the node should be. The machine config as applied through the API
//! (user-owned), and what the config controllers publish from it.

use serde::{Deserialize, Serialize};

use crate::{namespaces, Column, ResourceSpec};

/// The hostname the machine config asks for (id `hostname`); may be a fully qualified
/// name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostnameConfigSpec {
    pub hostname: String,
}

impl ResourceSpec for HostnameConfigSpec {
    const TYPE: &'static str = "HostnameConfigs.config.basalt.dev";
    const DEFAULT_NAMESPACE: &'static str = namespaces::CONFIG;
    const PRINT_COLUMNS: &'static [Column] = &[Column {
        name: "Hostname",
        path: "hostname",
    }];
}

impl HostnameConfigSpec {
    pub const ID: &'static str = "hostname";
}

/// A machine configuration as applied through the API: id `active` is the one in effect,
/// `staged` one waiting for the next boot. It holds secrets, so it is sensitive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MachineConfigSpec {
    /// The multi-document YAML, as applied.
    pub yaml: String,
    /// BLAKE3 of its canonical form: equal for configs that mean the same.
    pub digest: String,
}

impl ResourceSpec for MachineConfigSpec {
    const TYPE: &'static str = "MachineConfigs.config.basalt.dev";
    const DEFAULT_NAMESPACE: &'static str = namespaces::CONFIG;
    const SENSITIVE: bool = true;
    const ALIASES: &'static [&'static str] = &["mc"];
    const PRINT_COLUMNS: &'static [Column] = &[Column {
        name: "Digest",
        path: "digest",
    }];
}

impl MachineConfigSpec {
    pub const ACTIVE: &'static str = "active";
    pub const STAGED: &'static str = "staged";
}
