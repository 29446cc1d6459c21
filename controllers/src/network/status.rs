use std::collections::HashMap;

use async_trait::async_trait;
use basalt_controller_runtime::{Action, Controller, ControllerError, Output, Runtime};
use basalt_resources::network::{AddressStatusSpec, LinkStatusSpec, RouteStatusSpec};
use futures::StreamExt as _;
use rtnetlink::{Handle, MulticastGroup};
use tokio::task::JoinHandle;

use super::netlink::{self, Netlink};
use super::NetworkError;

/// Publishes the links, addresses and routes (main table) the kernel has, and follows
/// its notifications: a change shows in the resources within one reconcile.
#[derive(Debug)]
pub struct StatusController {
    netlink: Netlink,
    watch: Option<Watch>,
}

/// The subscription to the kernel's notifications, the task that turns each into a wake
/// of the controller, and a connection of its own for the dumps (answers and
/// notifications on one socket get in each other's way).
#[derive(Debug)]
struct Watch {
    handle: Handle,
    /// Keeps the subscription's connection open.
    _monitor: Handle,
    task: JoinHandle<()>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StatusController {
    pub fn new(netlink: Netlink) -> Self {
        StatusController {
            netlink,
            watch: None,
        }
    }

    /// The watch, started (again, if its socket ended) before the dump, so that no
    /// change between the two is missed.
    async fn watch(&mut self, rt: &Runtime) -> Result<Handle, ControllerError> {
        if let Some(watch) = self.watch.as_ref().filter(|w| !w.task.is_finished()) {
            return Ok(watch.handle.clone());
        }
        let groups = [
            MulticastGroup::Link,
            MulticastGroup::Ipv4Ifaddr,
            MulticastGroup::Ipv6Ifaddr,
            MulticastGroup::Ipv4Route,
            MulticastGroup::Ipv6Route,
        ];
        let (monitor, mut events) = self
            .netlink
            .monitor(&groups)
            .await
            .map_err(|source| NetworkError::Open { source })?;
        let handle = self
            .netlink
            .connect()
            .await
            .map_err(|source| NetworkError::Open { source })?;
        let waker = rt.waker().ok_or(NetworkError::NoWaker)?;
        let task = tokio::spawn(async move {
            while events.next().await.is_some() {
                waker.wake();
            }
        });
        self.watch = Some(Watch {
            handle: handle.clone(),
            _monitor: monitor,
            task,
        });
        Ok(handle)
    }
}

#[async_trait]
impl Controller for StatusController {
    basalt_controller_runtime::declare! {
        name: "network.StatusController",
        inputs: [],
        outputs: [
            Output::exclusive::<LinkStatusSpec>(),
            Output::exclusive::<AddressStatusSpec>(),
            Output::exclusive::<RouteStatusSpec>(),
        ],
    }

    async fn reconcile(&mut self, rt: &mut Runtime) -> Result<Action, ControllerError> {
        let handle = self.watch(rt).await?;
        let links = netlink::links(&handle)
            .await
            .map_err(NetworkError::netlink("listing links"))?;
        let addresses = netlink::addresses(&handle)
            .await
            .map_err(NetworkError::netlink("listing addresses"))?;
        let routes = netlink::routes(&handle)
            .await
            .map_err(NetworkError::netlink("listing routes"))?;

        let names: HashMap<u32, String> = links.iter().map(|l| (l.index, l.name.clone())).collect();
        let name_of = |index: u32| {
            names
                .get(&index)
                .cloned()
                .unwrap_or_else(|| index.to_string())
        };
        for link in links {
            let spec = LinkStatusSpec {
                index: link.index,
                kind: link.kind,
                up: link.up,
                oper_state: link.oper_state,
                mtu: link.mtu,
                hardware_addr: link.hardware_addr,
            };
            rt.put_spec(&link.name, spec).await?;
        }
        for address in addresses {
            let link = name_of(address.link_index);
            let spec = AddressStatusSpec {
                address: address.cidr(),
                family: family(address.address.is_ipv4()),
                scope: address.scope,
                link,
            };
            rt.put_spec(&format!("{}/{}", spec.link, spec.address), spec)
                .await?;
        }
        for route in routes {
            let spec = RouteStatusSpec {
                link: route.link_index.map(name_of).unwrap_or_default(),
                destination: route.destination_cidr(),
                gateway: route.gateway.map(|g| g.to_string()),
                metric: route.metric,
                protocol: route.protocol,
                family: family(route.destination.is_ipv4()),
            };
            let id = format!(
                "{}/{}/{}/{}",
                spec.link,
                spec.destination,
                spec.gateway.as_deref().unwrap_or("direct"),
                spec.metric
            );
            rt.put_spec(&id, spec).await?;
        }
        Ok(Action::Done)
    }
}

fn family(v4: bool) -> String {
    if v4 { "inet" } else { "inet6" }.to_string()
}
