use basalt_resource::{namespaces, ResourceSpec};
use serde::{Deserialize, Serialize};

/// Where the config in effect came from when the node booted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ConfigSource {
    /// The config the node had (persisted on STATE).
    State,
    /// A config staged for this boot, now in effect.
    Staged,
    /// The config embedded in the boot image.
    Image,
    /// The `basalt.config=` URL of the kernel command line.
    Url,
    /// None: the node waits in maintenance mode.
    None,
}

/// How the node found its machine config at boot (id `machine`), and what went wrong on
/// the way: a persisted config that no longer reads, a URL that did not answer or served
/// too much. Problems are also logged; a node with problems may still have a config (an
/// earlier source in the order won).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ResourceSpec)]
#[resource(
    type = "MachineConfigStatuses.runtime.basalt.dev",
    namespace = namespaces::RUNTIME,
    aliases("configstatus"),
    column("Source", "source"),
    column("Problems", "problems"),
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MachineConfigStatusSpec {
    pub source: ConfigSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

impl MachineConfigStatusSpec {
    pub const ID: &'static str = "machine";
}
