//! Feature documents: `KubeSpanConfig`, `KubePrismConfig`, `ExtensionServiceConfig`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ApiVersion;

kind_tag!(KubeSpanConfigKind => "KubeSpanConfig");
kind_tag!(KubePrismConfigKind => "KubePrismConfig");
kind_tag!(ExtensionServiceConfigKind => "ExtensionServiceConfig");

/// The WireGuard mesh between nodes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubeSpanConfig {
    pub api_version: ApiVersion,
    pub kind: KubeSpanConfigKind,
    pub enabled: bool,
    /// Route pod subnets over the mesh too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub advertise_kubernetes_networks: bool,
    /// Keep routing to a peer that is down, rather than withdrawing its routes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_down_peer_bypass: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Only endpoints in these CIDRs (a leading `!` excludes) are advertised.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(test, proptest(strategy = "crate::arbitrary::small_texts()"))]
    pub endpoint_filters: Vec<String>,
}

/// The per-node load balancer in front of the Kubernetes API servers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubePrismConfig {
    pub api_version: ApiVersion,
    pub kind: KubePrismConfigKind,
    pub enabled: bool,
    #[serde(default = "default_kubeprism_port")]
    pub port: u16,
}

pub const DEFAULT_KUBEPRISM_PORT: u16 = 7445;

fn default_kubeprism_port() -> u16 {
    DEFAULT_KUBEPRISM_PORT
}

impl Default for KubePrismConfig {
    fn default() -> Self {
        KubePrismConfig {
            api_version: ApiVersion::default(),
            kind: KubePrismConfigKind::default(),
            enabled: true,
            port: DEFAULT_KUBEPRISM_PORT,
        }
    }
}

/// Configuration of a service that a system extension provides; one document per
/// service, identified by `name`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtensionServiceConfig {
    pub api_version: ApiVersion,
    pub kind: ExtensionServiceConfigKind,
    #[cfg_attr(test, proptest(strategy = "crate::arbitrary::text()"))]
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[cfg_attr(test, proptest(strategy = "crate::arbitrary::small_map()"))]
    pub environment: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(test, proptest(strategy = "crate::arbitrary::small_vec()"))]
    pub config_files: Vec<ConfigFile>,
}

/// A file handed to an extension service; merges in patches by `mountPath`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigFile {
    #[cfg_attr(test, proptest(strategy = "crate::arbitrary::text()"))]
    pub mount_path: String,
    #[cfg_attr(test, proptest(strategy = "crate::arbitrary::text()"))]
    pub content: String,
}
