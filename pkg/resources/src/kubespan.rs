//! KubeSpan domain: the WireGuard mesh between the nodes of a cluster.

use serde::{Deserialize, Serialize};

use basalt_resource::{namespaces, ResourceSpec};

/// KubeSpan settings from the `KubeSpanConfig` document (id `kubespan`); absent when the
/// config has none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ResourceSpec)]
#[resource(
    type = "KubeSpanConfigs.kubespan.basalt.dev",
    namespace = namespaces::CONFIG,
    column("Enabled", "enabled"),
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubeSpanConfigSpec {
    pub enabled: bool,
    /// Route pod subnets over the mesh too.
    #[serde(default)]
    pub advertise_kubernetes_networks: bool,
    /// Keep routing to a peer that is down, rather than withdrawing its routes.
    #[serde(default)]
    pub allow_down_peer_bypass: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Only endpoints in these CIDRs (a leading `!` excludes) are advertised.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoint_filters: Vec<String>,
}

impl KubeSpanConfigSpec {
    pub const ID: &'static str = "kubespan";
}
