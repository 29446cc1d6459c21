//! Config domain: user-owned resources that state what the node should be.

use serde::{Deserialize, Serialize};

use crate::{namespaces, Column, ResourceSpec};

/// The hostname the user asked for (id `hostname`); may be a fully qualified name.
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
