//! What the node's network should be: links, addresses, routes and resolvers merged from
//! their sources (defaults, the kernel's `ip=`, the machine config), for the controllers
//! that apply them over netlink and write the resolver files.

use basalt_resource::{namespaces, ResourceSpec};
use serde::{Deserialize, Serialize};

/// Where a piece of the desired network came from, lowest priority first: a later layer
/// replaces an earlier one's resource of the same id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfigLayer {
    /// What every node has (loopback up).
    Default,
    /// The kernel command line (`ip=`).
    Cmdline,
    /// The machine config.
    Config,
}

/// A link to set up (id: its name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ResourceSpec)]
#[resource(
    type = "LinkSpecs.net.basalt.dev",
    namespace = namespaces::NETWORK,
    column("Up", "up"),
    column("MTU", "mtu"),
    column("Layer", "layer"),
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LinkSpecSpec {
    pub up: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    pub layer: ConfigLayer,
}

/// An address to put on a link (id: `<link>/<address>/<prefix>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ResourceSpec)]
#[resource(
    type = "AddressSpecs.net.basalt.dev",
    namespace = namespaces::NETWORK,
    column("Link", "link"),
    column("Address", "address"),
    column("Layer", "layer"),
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AddressSpecSpec {
    pub link: String,
    /// CIDR notation: `10.0.0.2/24`.
    pub address: String,
    pub layer: ConfigLayer,
}

impl AddressSpecSpec {
    pub fn id(&self) -> String {
        format!("{}/{}", self.link, self.address)
    }
}

/// A route to add in the main table (id: see [`RouteSpecSpec::id`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ResourceSpec)]
#[resource(
    type = "RouteSpecs.net.basalt.dev",
    namespace = namespaces::NETWORK,
    column("Link", "link"),
    column("Destination", "destination"),
    column("Gateway", "gateway"),
    column("Metric", "metric"),
    column("Layer", "layer"),
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteSpecSpec {
    pub link: String,
    /// CIDR notation; `0.0.0.0/0` is the default route.
    pub destination: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    pub metric: u32,
    pub layer: ConfigLayer,
}

impl RouteSpecSpec {
    /// The metric of a route that states none (as `ip route` does for IPv6; IPv4
    /// routes get 0 from the kernel, but one value for both keeps ids predictable).
    pub const DEFAULT_METRIC: u32 = 1024;

    /// `<link>/<destination>/<gateway or "direct">`: one route per destination and
    /// next hop on a link; a second metric for the same one replaces the first.
    pub fn id(&self) -> String {
        format!(
            "{}/{}/{}",
            self.link,
            self.destination,
            self.gateway.as_deref().unwrap_or("direct")
        )
    }
}

/// The name servers the node uses (id `resolvers`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ResourceSpec)]
#[resource(
    type = "ResolverSpecs.net.basalt.dev",
    namespace = namespaces::NETWORK,
    column("Nameservers", "nameservers"),
    column("Layer", "layer"),
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResolverSpecSpec {
    pub nameservers: Vec<String>,
    pub layer: ConfigLayer,
}

impl ResolverSpecSpec {
    pub const ID: &'static str = "resolvers";
}
