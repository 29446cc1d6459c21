//! A cluster's network: a bridge (`br0`) in a network namespace of the cluster's own, a
//! veth pair from it to the host (`bs-<cluster>`, holding the host's address in the
//! cluster's subnet), and a veth pair from it to each node's namespace (`eth0` there).
//! The host gets one link and its connected route; no forwarding, NAT or firewall change.

use std::net::IpAddr;
use std::os::fd::AsRawFd as _;
use std::path::Path;

use basalt_sys::netns;
use futures::TryStreamExt as _;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth};

use crate::{ClusterError, ClusterRecord, NodeRecord, Provider};

const BRIDGE: &str = "br0";
const UPLINK: &str = "uplink";
/// The node's link, as on a machine with one network card.
const NODE_LINK: &str = "eth0";

/// A netlink connection bound to one network namespace.
struct Netlink {
    handle: Handle,
    connection: tokio::task::JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

fn netlink_error(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Netlink { what, source }
}

impl Netlink {
    /// A connection in this process's namespace.
    fn here() -> Result<Netlink, ClusterError> {
        let (connection, handle, _) = rtnetlink::new_connection()
            .map_err(|e| ClusterError::io("opening a netlink socket", Path::new("-"), e))?;
        Ok(Netlink {
            handle,
            connection: tokio::spawn(connection),
        })
    }

    /// A connection in the namespace pinned at `path`: a socket belongs to the namespace
    /// it was made in, so a thread of its own enters it, makes the socket, and ends.
    fn inside(path: &Path) -> Result<Netlink, ClusterError> {
        let runtime = tokio::runtime::Handle::current();
        let made = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    netns::enter(path)?;
                    let _entered = runtime.enter();
                    rtnetlink::new_connection()
                        .map_err(|e| ClusterError::io("opening a netlink socket in", path, e))
                })
                .join()
                .unwrap_or_else(|_| {
                    Err(ClusterError::Invalid(format!(
                        "the thread entering {} panicked",
                        path.display()
                    )))
                })
        });
        let (connection, handle, _) = made?;
        Ok(Netlink {
            handle,
            connection: tokio::spawn(connection),
        })
    }

    /// The index of the link called `name`, if there is one.
    async fn index(&self, name: &str) -> Result<Option<u32>, ClusterError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(link) => Ok(link.map(|l| l.header.index)),
            Err(rtnetlink::Error::NetlinkError(e))
                if e.raw_code() == -(rustix::io::Errno::NODEV.raw_os_error()) =>
            {
                Ok(None)
            }
            Err(e) => Err(netlink_error(format!("finding link {name}"))(e)),
        }
    }

    async fn must_index(&self, name: &str) -> Result<u32, ClusterError> {
        self.index(name).await?.ok_or_else(|| {
            ClusterError::Invalid(format!("link {name} is missing right after it was made"))
        })
    }

    async fn set(
        &self,
        message: rtnetlink::packet_route::link::LinkMessage,
        what: String,
    ) -> Result<(), ClusterError> {
        self.handle
            .link()
            .set(message)
            .execute()
            .await
            .map_err(netlink_error(what))
    }

    async fn up(&self, name: &str) -> Result<(), ClusterError> {
        let index = self.must_index(name).await?;
        self.set(
            LinkUnspec::new_with_index(index).up().build(),
            format!("setting {name} up"),
        )
        .await
    }

    /// Moves the link `name` into the namespace at `target`.
    async fn move_to(&self, name: &str, target: &Path) -> Result<(), ClusterError> {
        let index = self.must_index(name).await?;
        let file =
            std::fs::File::open(target).map_err(|e| ClusterError::io("opening", target, e))?;
        self.set(
            LinkUnspec::new_with_index(index)
                .setns_by_fd(file.as_raw_fd())
                .build(),
            format!("moving {name} into {}", target.display()),
        )
        .await
    }

    /// Plugs the link `name` into the bridge and sets it up.
    async fn plug(&self, name: &str, bridge: u32) -> Result<(), ClusterError> {
        let index = self.must_index(name).await?;
        self.set(
            LinkUnspec::new_with_index(index)
                .controller(bridge)
                .up()
                .build(),
            format!("plugging {name} into {BRIDGE}"),
        )
        .await
    }
}

/// Refuses a subnet the host already has an address in.
pub async fn check_free(cidr: ipnet::Ipv4Net) -> Result<(), ClusterError> {
    let host = Netlink::here()?;
    let addresses: Vec<_> = host
        .handle
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(netlink_error("listing the host's addresses"))?;
    for message in addresses {
        for attribute in &message.attributes {
            if let AddressAttribute::Address(IpAddr::V4(address)) = attribute {
                if cidr.contains(address) {
                    return Err(ClusterError::SubnetInUse {
                        cidr,
                        by: format!(
                            "the host's address {address} (link {})",
                            message.header.index
                        ),
                    });
                }
            }
        }
    }
    Ok(())
}

/// Makes the cluster's namespace, bridge and uplink, then each container node's
/// namespace and cable (a qemu node's tap is plugged when QEMU has made it:
/// [`plug_tap`]). The host's end of the uplink gets the host's address.
pub async fn create(record: &ClusterRecord) -> Result<(), ClusterError> {
    netns::create(&record.netns)?;
    let cluster = Netlink::inside(&record.netns)?;
    let host = Netlink::here()?;
    cluster.up("lo").await?;
    cluster
        .handle
        .link()
        .add(LinkBridge::new(BRIDGE).up().build())
        .execute()
        .await
        .map_err(netlink_error(format!("adding bridge {BRIDGE}")))?;
    let bridge = cluster.must_index(BRIDGE).await?;

    // Made inside the cluster's namespace, where its names are free, and the host's end
    // moved out.
    cluster
        .handle
        .link()
        .add(LinkVeth::new(UPLINK, &record.host_link).build())
        .execute()
        .await
        .map_err(netlink_error(format!(
            "adding veth {UPLINK}/{}",
            record.host_link
        )))?;
    cluster
        .move_to(&record.host_link, Path::new("/proc/thread-self/ns/net"))
        .await?;
    cluster.plug(UPLINK, bridge).await?;
    let index = host.must_index(&record.host_link).await?;
    host.handle
        .address()
        .add(
            index,
            IpAddr::V4(record.host_address),
            record.cidr.prefix_len(),
        )
        .execute()
        .await
        .map_err(netlink_error(format!(
            "adding {}/{} to {}",
            record.host_address,
            record.cidr.prefix_len(),
            record.host_link
        )))?;
    host.up(&record.host_link).await?;

    if record.provider == Provider::Container {
        for (i, node) in record.nodes.iter().enumerate() {
            attach(&cluster, bridge, node, i).await?;
        }
    }
    Ok(())
}

/// Plugs the tap QEMU made for node `index` (in the cluster's namespace, where QEMU runs)
/// into the bridge, once it is there.
pub async fn plug_tap(record: &ClusterRecord, index: usize) -> Result<(), ClusterError> {
    let cluster = Netlink::inside(&record.netns)?;
    let bridge = cluster.must_index(BRIDGE).await?;
    let tap = crate::qemu::tap_name(index);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while cluster.index(&tap).await?.is_none() {
        if std::time::Instant::now() > deadline {
            return Err(ClusterError::Node {
                node: record.nodes[index].name.clone(),
                what: format!("QEMU made no tap {tap} within 10 s"),
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    cluster.plug(&tap, bridge).await
}

/// The node's namespace, and a veth pair from the bridge (`n<i>`) to it (`eth0`). The
/// node sets its own address from its `ip=` argument, as on a machine.
async fn attach(
    cluster: &Netlink,
    bridge: u32,
    node: &NodeRecord,
    i: usize,
) -> Result<(), ClusterError> {
    netns::create(&node.netns)?;
    let port = format!("n{i}");
    cluster
        .handle
        .link()
        .add(LinkVeth::new(&port, NODE_LINK).build())
        .execute()
        .await
        .map_err(netlink_error(format!(
            "adding veth {port}/{NODE_LINK} for {}",
            node.name
        )))?;
    cluster.move_to(NODE_LINK, &node.netns).await?;
    cluster.plug(&port, bridge).await
}

/// The node's `ip=` kernel argument: its address, the host as its gateway.
pub fn ip_argument(record: &ClusterRecord, node: &NodeRecord) -> String {
    format!(
        "ip={}::{}:{}::{NODE_LINK}:off",
        node.address,
        record.host_address,
        record.cidr.prefix_len()
    )
}

/// Removes the uplink (and with it the bridge's end) and unpins every namespace. Each
/// piece that is not there is skipped; the others are tried whatever fails.
pub async fn destroy(record: &ClusterRecord) -> Vec<ClusterError> {
    let mut problems = Vec::new();
    match Netlink::here() {
        Ok(host) => match host.index(&record.host_link).await {
            Ok(Some(index)) => {
                if let Err(e) = host.handle.link().del(index).execute().await {
                    problems.push(netlink_error(format!("removing {}", record.host_link))(e));
                }
            }
            Ok(None) => {}
            Err(e) => problems.push(e),
        },
        Err(e) => problems.push(e),
    }
    for path in record.nodes.iter().map(|n| &n.netns).chain([&record.netns]) {
        if let Err(e) = netns::remove(path) {
            problems.push(e.into());
        }
    }
    problems
}
