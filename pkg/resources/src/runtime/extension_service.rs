use basalt_resource::{namespaces, ResourceSpec};
use serde::{Deserialize, Serialize};

/// A file handed to an extension service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtensionServiceFile {
    pub mount_path: String,
    pub content: String,
}

/// An extension service's settings from its `ExtensionServiceConfig` document (id: the
/// service name). Its environment and files may hold secrets, so it is sensitive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ResourceSpec)]
#[resource(
    type = "ExtensionServiceConfigs.runtime.basalt.dev",
    namespace = namespaces::CONFIG,
    sensitive,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtensionServiceConfigSpec {
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub environment: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config_files: Vec<ExtensionServiceFile>,
}
