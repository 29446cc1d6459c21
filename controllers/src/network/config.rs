use std::collections::BTreeMap;
use std::str::FromStr as _;

use async_trait::async_trait;
use basalt_controller_runtime::{Action, Controller, ControllerError, Input, Output, Runtime};
use basalt_resources::network::{
    AddressSpecSpec, ConfigLayer, LinkConfigSpec, LinkSpecSpec, LinkStatusSpec,
    NetworkServersConfigSpec, ResolverSpecSpec, RouteSpecSpec,
};
use basalt_resources::runtime::KernelCmdlineSpec;
use ipnet::IpNet;

use super::cmdline::IpArg;

/// Merges what the node's network should be from its layers, later ones winning on the
/// same link, address, route or resolver list: loopback up (every node), the kernel's
/// `ip=`, the machine config. A value a layer cannot state (an invalid `ip=`, an
/// address that is not CIDR) is logged and left out; the rest still applies.
#[derive(Debug, Default)]
pub struct ConfigController;

#[derive(Default)]
struct Desired {
    links: BTreeMap<String, LinkSpecSpec>,
    addresses: BTreeMap<String, AddressSpecSpec>,
    routes: BTreeMap<String, RouteSpecSpec>,
    resolvers: Option<ResolverSpecSpec>,
}

impl Desired {
    fn link(&mut self, name: &str, mtu: Option<u32>, layer: ConfigLayer) {
        self.links.insert(
            name.to_string(),
            LinkSpecSpec {
                up: true,
                mtu,
                layer,
            },
        );
    }

    fn address(&mut self, link: &str, text: &str, layer: ConfigLayer) {
        match IpNet::from_str(text) {
            Ok(net) => {
                let spec = AddressSpecSpec {
                    link: link.to_string(),
                    address: net.to_string(),
                    layer,
                };
                self.addresses.insert(spec.id(), spec);
            }
            Err(_) => tracing::warn!(
                link,
                address = text,
                ?layer,
                "ignoring an address that is not CIDR"
            ),
        }
    }

    fn route(
        &mut self,
        link: &str,
        destination: &str,
        gateway: Option<String>,
        metric: Option<u32>,
        layer: ConfigLayer,
    ) {
        match IpNet::from_str(destination) {
            Ok(net) => {
                let spec = RouteSpecSpec {
                    link: link.to_string(),
                    // The network, not an address in it: as the kernel reports it.
                    destination: net.trunc().to_string(),
                    gateway,
                    metric: metric.unwrap_or(RouteSpecSpec::DEFAULT_METRIC),
                    layer,
                };
                self.routes.insert(spec.id(), spec);
            }
            Err(_) => tracing::warn!(
                link,
                destination,
                ?layer,
                "ignoring a route whose destination is not CIDR"
            ),
        }
    }
}

#[async_trait]
impl Controller for ConfigController {
    basalt_controller_runtime::declare! {
        name: "network.ConfigController",
        inputs: [
            Input::weak::<KernelCmdlineSpec>().with_id(KernelCmdlineSpec::ID),
            Input::weak::<LinkConfigSpec>(),
            Input::weak::<NetworkServersConfigSpec>().with_id(NetworkServersConfigSpec::ID),
            // `ip=` without a device names the first link there is.
            Input::weak::<LinkStatusSpec>(),
        ],
        outputs: [
            Output::exclusive::<LinkSpecSpec>(),
            Output::exclusive::<AddressSpecSpec>(),
            Output::exclusive::<RouteSpecSpec>(),
            Output::exclusive::<ResolverSpecSpec>(),
        ],
    }

    async fn reconcile(&mut self, rt: &mut Runtime) -> Result<Action, ControllerError> {
        let mut desired = Desired::default();
        desired.link("lo", None, ConfigLayer::Default);

        let cmdline = rt.get::<KernelCmdlineSpec>(KernelCmdlineSpec::ID).await?;
        let ip = cmdline.and_then(|c| match IpArg::from_cmdline(&c.spec.raw) {
            Ok(ip) => ip,
            Err(error) => {
                tracing::warn!(%error, "ignoring the kernel's ip= argument");
                None
            }
        });
        if let Some(ip) = ip {
            let device = match ip.device.clone() {
                Some(device) => Some(device),
                None => first_link(rt).await?,
            };
            if let Some(device) = device {
                let layer = ConfigLayer::Cmdline;
                desired.link(&device, None, layer);
                desired.address(&device, &format!("{}/{}", ip.address, ip.prefix), layer);
                if let Some(gateway) = ip.gateway {
                    desired.route(&device, "0.0.0.0/0", Some(gateway.to_string()), None, layer);
                }
                if !ip.nameservers.is_empty() {
                    desired.resolvers = Some(ResolverSpecSpec {
                        nameservers: ip.nameservers.iter().map(ToString::to_string).collect(),
                        layer,
                    });
                }
            }
        }

        for link in rt.list::<LinkConfigSpec>().await? {
            let (name, spec) = (&link.metadata.id, &link.spec);
            let layer = ConfigLayer::Config;
            if spec.dhcp {
                tracing::warn!(link = %name, "DHCP is not supported yet: only the link's static addresses apply");
            }
            desired.link(name, spec.mtu, layer);
            for address in &spec.addresses {
                desired.address(name, address, layer);
            }
            for route in &spec.routes {
                desired.route(
                    name,
                    &route.network,
                    route.gateway.clone(),
                    route.metric,
                    layer,
                );
            }
        }
        let servers = rt
            .get::<NetworkServersConfigSpec>(NetworkServersConfigSpec::ID)
            .await?;
        if let Some(servers) = servers.filter(|s| !s.spec.nameservers.is_empty()) {
            desired.resolvers = Some(ResolverSpecSpec {
                nameservers: servers.spec.nameservers,
                layer: ConfigLayer::Config,
            });
        }

        for (id, spec) in desired.links {
            rt.put_spec(&id, spec).await?;
        }
        for (id, spec) in desired.addresses {
            rt.put_spec(&id, spec).await?;
        }
        for (id, spec) in desired.routes {
            rt.put_spec(&id, spec).await?;
        }
        if let Some(spec) = desired.resolvers {
            rt.put_spec(ResolverSpecSpec::ID, spec).await?;
        }
        Ok(Action::Done)
    }
}

/// The first link by index with a hardware address (an Ethernet device, not loopback or
/// a tunnel), once the kernel has one.
async fn first_link(rt: &mut Runtime) -> Result<Option<String>, ControllerError> {
    let mut links = rt.list::<LinkStatusSpec>().await?;
    links.sort_by_key(|l| l.spec.index);
    Ok(links
        .into_iter()
        .find(|l| l.metadata.id != "lo" && !l.spec.hardware_addr.is_empty())
        .map(|l| l.metadata.id))
}
