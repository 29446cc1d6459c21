use basalt_resource::{namespaces, ResourceSpec};
use serde::{Deserialize, Serialize};

/// A route of a configured link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteConfig {
    /// Destination CIDR.
    pub network: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<u32>,
}

/// A network link as the machine config states it (id: the link name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ResourceSpec)]
#[resource(
    type = "LinkConfigs.net.basalt.dev",
    namespace = namespaces::CONFIG,
    column("DHCP", "dhcp"),
    column("Addresses", "addresses"),
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LinkConfigSpec {
    pub dhcp: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Static addresses, CIDR notation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteConfig>,
}

/// Name servers and time servers from the machine config (id `network`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ResourceSpec)]
#[resource(
    type = "NetworkServersConfigs.net.basalt.dev",
    namespace = namespaces::CONFIG,
    column("Nameservers", "nameservers"),
    column("TimeServers", "timeServers"),
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkServersConfigSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub time_servers: Vec<String>,
}

impl NetworkServersConfigSpec {
    pub const ID: &'static str = "network";
}
