//! What the node's network is: links, addresses and routes as the kernel reports them
//! over netlink, and the resolver files as written.

use basalt_resource::{namespaces, ResourceSpec};
use serde::{Deserialize, Serialize};

/// A link the kernel has (id: its name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ResourceSpec)]
#[resource(
    type = "LinkStatuses.net.basalt.dev",
    namespace = namespaces::NETWORK,
    aliases("links", "link"),
    column("Index", "index"),
    column("Kind", "kind"),
    column("Up", "up"),
    column("State", "operState"),
    column("MTU", "mtu"),
    column("Hardware address", "hardwareAddr"),
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LinkStatusSpec {
    pub index: u32,
    /// The driver's kind (`veth`, `bridge`...), empty for a physical device or loopback.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// The operational state (`up`, `down`, `unknown`, `lowerlayerdown`...).
    pub oper_state: String,
    pub mtu: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hardware_addr: String,
}

/// An address on a link (id: `<link>/<address>/<prefix>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ResourceSpec)]
#[resource(
    type = "AddressStatuses.net.basalt.dev",
    namespace = namespaces::NETWORK,
    aliases("addresses", "address", "addr"),
    column("Link", "link"),
    column("Address", "address"),
    column("Family", "family"),
    column("Scope", "scope"),
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AddressStatusSpec {
    pub link: String,
    /// CIDR notation.
    pub address: String,
    /// `inet` or `inet6`.
    pub family: String,
    /// `global`, `link`, `host`...
    pub scope: String,
}

/// A route of the main table (id: `<link>/<destination>/<gateway or "direct">/<metric>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ResourceSpec)]
#[resource(
    type = "RouteStatuses.net.basalt.dev",
    namespace = namespaces::NETWORK,
    aliases("routes", "route"),
    column("Link", "link"),
    column("Destination", "destination"),
    column("Gateway", "gateway"),
    column("Metric", "metric"),
    column("Protocol", "protocol"),
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteStatusSpec {
    /// The output link; empty for a route without one (a blackhole).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub link: String,
    /// CIDR notation; `0.0.0.0/0` is the default route.
    pub destination: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    pub metric: u32,
    /// Who added it: `kernel`, `boot`, `static` (Basalt's), `dhcp`...
    pub protocol: String,
    pub family: String,
}

/// The name servers in the node's resolv.conf (id `resolvers`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ResourceSpec)]
#[resource(
    type = "ResolverStatuses.net.basalt.dev",
    namespace = namespaces::NETWORK,
    aliases("resolvers"),
    column("Nameservers", "nameservers"),
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResolverStatusSpec {
    pub nameservers: Vec<String>,
}

impl ResolverStatusSpec {
    pub const ID: &'static str = "resolvers";
}
