use std::collections::BTreeMap;
use std::net::IpAddr;
use std::str::FromStr as _;

use async_trait::async_trait;
use basalt_controller_runtime::{Action, Controller, ControllerError, Input, Runtime};
use basalt_resources::network::{
    AddressSpecSpec, AddressStatusSpec, LinkSpecSpec, LinkStatusSpec, RouteSpecSpec,
};
use ipnet::IpNet;
use rtnetlink::packet_route::route::{RouteMessage, RouteProtocol};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use super::netlink::{self, Link, Netlink};
use super::NetworkError;

/// Makes the kernel's links, addresses and routes what the `LinkSpec`, `AddressSpec`
/// and `RouteSpec` resources say, over rtnetlink: links up with their MTU, then
/// addresses, then routes (a gateway is reachable once its link has an address). What it
/// added and is no longer asked for is removed; what others added is left alone. A spec
/// whose link is not there yet waits for it (link changes wake this controller).
#[derive(Debug)]
pub struct ApplyController {
    netlink: Netlink,
    handle: Option<Handle>,
    /// What this controller added, by spec id, so it can take it away again. Lost when
    /// machined restarts: what it had added then stays until the node reboots.
    added_addresses: BTreeMap<String, AddressSpecSpec>,
    added_routes: BTreeMap<String, RouteSpecSpec>,
}

impl ApplyController {
    pub fn new(netlink: Netlink) -> Self {
        ApplyController {
            netlink,
            handle: None,
            added_addresses: BTreeMap::new(),
            added_routes: BTreeMap::new(),
        }
    }

    async fn handle(&mut self) -> Result<Handle, NetworkError> {
        if let Some(handle) = &self.handle {
            return Ok(handle.clone());
        }
        let handle = self
            .netlink
            .connect()
            .await
            .map_err(|source| NetworkError::Open { source })?;
        self.handle = Some(handle.clone());
        Ok(handle)
    }
}

#[async_trait]
impl Controller for ApplyController {
    basalt_controller_runtime::declare! {
        name: "network.ApplyController",
        inputs: [
            Input::weak::<LinkSpecSpec>(),
            Input::weak::<AddressSpecSpec>(),
            Input::weak::<RouteSpecSpec>(),
            // A link that appears, or an address that goes (someone removed it).
            Input::weak::<LinkStatusSpec>(),
            Input::weak::<AddressStatusSpec>(),
        ],
        outputs: [],
    }

    async fn reconcile(&mut self, rt: &mut Runtime) -> Result<Action, ControllerError> {
        let handle = self.handle().await?;
        let links = netlink::links(&handle)
            .await
            .map_err(NetworkError::netlink("listing links"))?;
        let mut problems = Vec::new();

        for spec in rt.list::<LinkSpecSpec>().await? {
            if let Some(link) = links.iter().find(|l| l.name == spec.metadata.id) {
                if let Err(problem) = apply_link(&handle, link, &spec.spec).await {
                    problems.push(problem);
                }
            }
        }

        let addresses = specs_by_id::<AddressSpecSpec>(rt).await?;
        self.apply_addresses(&handle, &links, &addresses, &mut problems)
            .await?;
        let routes = specs_by_id::<RouteSpecSpec>(rt).await?;
        self.apply_routes(&handle, &links, &routes, &mut problems)
            .await?;

        if problems.is_empty() {
            Ok(Action::Done)
        } else {
            Err(NetworkError::Apply { problems }.into())
        }
    }
}

impl ApplyController {
    /// Adds the wanted addresses missing from their links, and removes the ones this
    /// controller added that are no longer wanted.
    async fn apply_addresses(
        &mut self,
        handle: &Handle,
        links: &[Link],
        wanted: &BTreeMap<String, AddressSpecSpec>,
        problems: &mut Vec<String>,
    ) -> Result<(), NetworkError> {
        let present = netlink::addresses(handle)
            .await
            .map_err(NetworkError::netlink("listing addresses"))?;
        for (id, spec) in wanted {
            let Some(index) = index_of(links, &spec.link) else {
                continue;
            };
            let Ok(net) = IpNet::from_str(&spec.address) else {
                problems.push(format!("address {id}: not CIDR"));
                continue;
            };
            let there = present.iter().any(|a| {
                a.link_index == index && a.address == net.addr() && a.prefix == net.prefix_len()
            });
            if !there {
                match handle
                    .address()
                    .add(index, net.addr(), net.prefix_len())
                    .execute()
                    .await
                {
                    Ok(()) => {
                        tracing::info!(link = %spec.link, address = %spec.address, "address added")
                    }
                    Err(e) if netlink::already_exists(&e) => {}
                    Err(e) => {
                        problems.push(format!("adding {} to {}: {e}", spec.address, spec.link));
                        continue;
                    }
                }
            }
            self.added_addresses.insert(id.clone(), spec.clone());
        }
        for (id, spec) in unwanted(&self.added_addresses, wanted) {
            match remove_address(handle, links, &spec).await {
                Ok(()) => {
                    tracing::info!(link = %spec.link, address = %spec.address, "address removed");
                    self.added_addresses.remove(&id);
                }
                Err(problem) => problems.push(problem),
            }
        }
        Ok(())
    }

    /// Adds the wanted routes missing from the main table, and removes the ones this
    /// controller added that are no longer wanted.
    async fn apply_routes(
        &mut self,
        handle: &Handle,
        links: &[Link],
        wanted: &BTreeMap<String, RouteSpecSpec>,
        problems: &mut Vec<String>,
    ) -> Result<(), NetworkError> {
        let present = netlink::routes(handle)
            .await
            .map_err(NetworkError::netlink("listing routes"))?;
        for (id, spec) in wanted {
            let Some(index) = index_of(links, &spec.link) else {
                continue;
            };
            let route = match route_message(spec, index) {
                Ok(route) => route,
                Err(problem) => {
                    problems.push(format!("route {id}: {problem}"));
                    continue;
                }
            };
            let there = present.iter().any(|r| {
                r.destination_cidr() == spec.destination
                    && r.gateway.map(|g| g.to_string()) == spec.gateway
                    && r.link_index == Some(index)
                    && r.metric == spec.metric
            });
            if !there {
                match handle.route().add(route).execute().await {
                    Ok(()) => tracing::info!(route = %id, "route added"),
                    Err(e) if netlink::already_exists(&e) => {}
                    Err(e) => {
                        problems.push(format!("adding route {id}: {e}"));
                        continue;
                    }
                }
            }
            // A changed metric is a new route: the old one goes below.
            if let Some(old) = self.added_routes.insert(id.clone(), spec.clone()) {
                if old.metric != spec.metric {
                    if let Err(problem) = remove_route(handle, links, &old).await {
                        problems.push(problem);
                    }
                }
            }
        }
        for (id, spec) in unwanted(&self.added_routes, wanted) {
            match remove_route(handle, links, &spec).await {
                Ok(()) => {
                    tracing::info!(route = %id, "route removed");
                    self.added_routes.remove(&id);
                }
                Err(problem) => problems.push(problem),
            }
        }
        Ok(())
    }
}

/// The specs of a kind, by id.
async fn specs_by_id<S: basalt_resource::ResourceSpec>(
    rt: &Runtime,
) -> Result<BTreeMap<String, S>, ControllerError> {
    Ok(rt
        .list::<S>()
        .await?
        .into_iter()
        .map(|r| (r.metadata.id, r.spec))
        .collect())
}

/// What this controller added that is no longer wanted, to remove.
fn unwanted<T: Clone>(
    added: &BTreeMap<String, T>,
    wanted: &BTreeMap<String, T>,
) -> Vec<(String, T)> {
    added
        .iter()
        .filter(|(id, _)| !wanted.contains_key(*id))
        .map(|(id, spec)| (id.clone(), spec.clone()))
        .collect()
}

fn index_of(links: &[Link], name: &str) -> Option<u32> {
    links.iter().find(|l| l.name == name).map(|l| l.index)
}

async fn apply_link(handle: &Handle, link: &Link, spec: &LinkSpecSpec) -> Result<(), String> {
    let mut change = LinkUnspec::new_with_index(link.index);
    let mut changed = false;
    if spec.up && !link.up {
        change = change.up();
        changed = true;
    }
    if let Some(mtu) = spec.mtu.filter(|mtu| *mtu != link.mtu) {
        change = change.mtu(mtu);
        changed = true;
    }
    if !changed {
        return Ok(());
    }
    handle
        .link()
        .set(change.build())
        .execute()
        .await
        .map_err(|e| format!("setting link {} (up, mtu {:?}): {e}", link.name, spec.mtu))?;
    tracing::info!(link = %link.name, mtu = ?spec.mtu, "link set up");
    Ok(())
}

async fn remove_address(
    handle: &Handle,
    links: &[Link],
    spec: &AddressSpecSpec,
) -> Result<(), String> {
    let what = format!("removing {} from {}", spec.address, spec.link);
    let (Some(index), Ok(net)) = (index_of(links, &spec.link), IpNet::from_str(&spec.address))
    else {
        return Ok(()); // the link is gone, and its addresses with it
    };
    let Some(message) = netlink::address_message(handle, index, net.addr(), net.prefix_len())
        .await
        .map_err(|e| format!("{what}: {e}"))?
    else {
        return Ok(());
    };
    match handle.address().del(message).execute().await {
        Err(e) if !netlink::already_gone(&e) => Err(format!("{what}: {e}")),
        _ => Ok(()),
    }
}

async fn remove_route(handle: &Handle, links: &[Link], spec: &RouteSpecSpec) -> Result<(), String> {
    let Some(index) = index_of(links, &spec.link) else {
        return Ok(());
    };
    let what = format!("removing route {}", spec.id());
    let route = route_message(spec, index).map_err(|e| format!("{what}: {e}"))?;
    match handle.route().del(route).execute().await {
        Err(e) if !netlink::already_gone(&e) => Err(format!("{what}: {e}")),
        _ => Ok(()),
    }
}

/// The kernel's form of a route spec, marked as a static route (`proto static`).
fn route_message(spec: &RouteSpecSpec, index: u32) -> Result<RouteMessage, String> {
    let destination = IpNet::from_str(&spec.destination)
        .map_err(|_| format!("destination {:?} is not CIDR", spec.destination))?;
    let mut builder = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(destination.addr(), destination.prefix_len())
        .map_err(|e| e.to_string())?;
    if let Some(gateway) = &spec.gateway {
        let gateway: IpAddr = gateway
            .parse()
            .map_err(|_| format!("gateway {gateway:?} is not an address"))?;
        builder = builder.gateway(gateway).map_err(|e| e.to_string())?;
    }
    Ok(builder
        .output_interface(index)
        .priority(spec.metric)
        .protocol(RouteProtocol::Static)
        .build())
}
