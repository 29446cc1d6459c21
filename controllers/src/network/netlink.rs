//! The node's view of the kernel's network over rtnetlink: connections opened in the
//! node's network namespace (or a test's), and links, addresses and routes read into
//! plain values.

use std::io;
use std::net::IpAddr;
use std::path::PathBuf;

use futures::channel::mpsc::UnboundedReceiver;
use futures::TryStreamExt as _;
use rtnetlink::packet_core::NetlinkMessage;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{Handle, MulticastGroup, RouteMessageBuilder};

/// Where the network controllers reach the kernel: the process's own network namespace,
/// or the one pinned at a path (a test's).
#[derive(Debug, Clone, Default)]
pub struct Netlink {
    pub netns: Option<PathBuf>,
}

/// Notifications of a multicast connection.
pub type Events = UnboundedReceiver<(
    NetlinkMessage<RouteNetlinkMessage>,
    rtnetlink::sys::SocketAddr,
)>;

impl Netlink {
    /// A connection for requests. It lives as long as the handle (or a clone of it).
    pub async fn connect(&self) -> io::Result<Handle> {
        Ok(self.open(&[]).await?.0)
    }

    /// A connection that also receives the kernel's notifications of `groups`.
    pub async fn monitor(&self, groups: &[MulticastGroup]) -> io::Result<(Handle, Events)> {
        self.open(groups).await
    }

    async fn open(&self, groups: &[MulticastGroup]) -> io::Result<(Handle, Events)> {
        let groups = groups.to_vec();
        let runtime = tokio::runtime::Handle::current();
        // The socket is made on a thread that may enter the namespace; it stays there.
        let open = move || {
            let _context = runtime.enter();
            if groups.is_empty() {
                rtnetlink::new_connection()
            } else {
                rtnetlink::new_multicast_connection(&groups)
            }
        };
        let (connection, handle, events) = match self.netns.clone() {
            None => open()?,
            Some(path) => tokio::task::spawn_blocking(move || {
                basalt_sys::netns::run_in(&path, open).map_err(io::Error::other)?
            })
            .await
            .map_err(io::Error::other)??,
        };
        // Ends when the last handle is dropped.
        tokio::spawn(connection);
        Ok((handle, events))
    }
}

/// A link as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub kind: String,
    pub up: bool,
    pub oper_state: String,
    pub mtu: u32,
    pub hardware_addr: String,
}

impl Link {
    fn from_message(message: &LinkMessage) -> Link {
        let mut link = Link {
            index: message.header.index,
            name: String::new(),
            kind: String::new(),
            up: message.header.flags.contains(LinkFlags::Up),
            oper_state: String::new(),
            mtu: 0,
            hardware_addr: String::new(),
        };
        for attribute in &message.attributes {
            match attribute {
                LinkAttribute::IfName(name) => link.name.clone_from(name),
                LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
                LinkAttribute::OperState(state) => {
                    link.oper_state = state.to_string().to_ascii_lowercase()
                }
                LinkAttribute::Address(bytes) => {
                    link.hardware_addr = bytes
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<Vec<_>>()
                        .join(":")
                }
                LinkAttribute::LinkInfo(infos) => {
                    if let Some(kind) = infos.iter().find_map(|i| match i {
                        LinkInfo::Kind(kind) => Some(kind.to_string()),
                        _ => None,
                    }) {
                        link.kind = kind;
                    }
                }
                _ => {}
            }
        }
        link
    }
}

/// An address on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub link_index: u32,
    pub address: IpAddr,
    pub prefix: u8,
    pub scope: String,
}

impl Address {
    fn from_message(message: &AddressMessage) -> Option<Address> {
        // IPv4 puts the interface's own address in Local (Address is the peer's on a
        // point-to-point link); IPv6 has Address only.
        let local = message.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(ip) => Some(*ip),
            _ => None,
        });
        let address = local.or_else(|| {
            message.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            })
        })?;
        Some(Address {
            link_index: message.header.index,
            address,
            prefix: message.header.prefix_len,
            scope: message.header.scope.to_string().to_ascii_lowercase(),
        })
    }

    pub fn cidr(&self) -> String {
        format!("{}/{}", self.address, self.prefix)
    }
}

/// A route of the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub destination: IpAddr,
    pub prefix: u8,
    pub gateway: Option<IpAddr>,
    pub link_index: Option<u32>,
    pub metric: u32,
    pub protocol: String,
}

impl Route {
    fn from_message(message: &RouteMessage) -> Option<Route> {
        let table = message
            .attributes
            .iter()
            .find_map(|a| match a {
                RouteAttribute::Table(table) => Some(*table),
                _ => None,
            })
            .unwrap_or(u32::from(message.header.table));
        if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
            return None;
        }
        let ip = |address: &RouteAddress| match address {
            RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
            RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
            _ => None,
        };
        let unspecified = match message.header.address_family {
            AddressFamily::Inet => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            AddressFamily::Inet6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            _ => return None,
        };
        let mut route = Route {
            destination: unspecified,
            prefix: message.header.destination_prefix_length,
            gateway: None,
            link_index: None,
            metric: 0,
            protocol: message.header.protocol.to_string().to_ascii_lowercase(),
        };
        for attribute in &message.attributes {
            match attribute {
                RouteAttribute::Destination(d) => route.destination = ip(d)?,
                RouteAttribute::Gateway(g) => route.gateway = ip(g),
                RouteAttribute::Oif(index) => route.link_index = Some(*index),
                RouteAttribute::Priority(metric) => route.metric = *metric,
                _ => {}
            }
        }
        Some(route)
    }

    pub fn destination_cidr(&self) -> String {
        format!("{}/{}", self.destination, self.prefix)
    }
}

pub async fn links(handle: &Handle) -> Result<Vec<Link>, rtnetlink::Error> {
    let messages: Vec<LinkMessage> = handle.link().get().execute().try_collect().await?;
    Ok(messages.iter().map(Link::from_message).collect())
}

pub async fn addresses(handle: &Handle) -> Result<Vec<Address>, rtnetlink::Error> {
    let messages: Vec<AddressMessage> = handle.address().get().execute().try_collect().await?;
    Ok(messages.iter().filter_map(Address::from_message).collect())
}

/// The main table's routes, IPv4 then IPv6.
pub async fn routes(handle: &Handle) -> Result<Vec<Route>, rtnetlink::Error> {
    let mut routes = Vec::new();
    for family in [
        RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
        RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
    ] {
        let messages: Vec<RouteMessage> =
            handle.route().get(family).execute().try_collect().await?;
        routes.extend(messages.iter().filter_map(Route::from_message));
    }
    Ok(routes)
}

/// The kernel's answer to a request was "it is there already" (EEXIST).
pub fn already_exists(error: &rtnetlink::Error) -> bool {
    matches!(error, rtnetlink::Error::NetlinkError(e) if e.to_io().kind() == io::ErrorKind::AlreadyExists)
}

/// The kernel's answer to a removal was "there is no such thing" (ESRCH, ENOENT,
/// EADDRNOTAVAIL): it is gone already.
pub fn already_gone(error: &rtnetlink::Error) -> bool {
    matches!(error, rtnetlink::Error::NetlinkError(e) if matches!(
        e.to_io().kind(),
        io::ErrorKind::NotFound | io::ErrorKind::AddrNotAvailable
    ) || e.raw_code() == -ESRCH)
}

/// "No such process", which the kernel also answers for a route that is not there.
const ESRCH: i32 = 3;

/// The kernel's message for an address on a link, to remove it with.
pub async fn address_message(
    handle: &Handle,
    index: u32,
    address: IpAddr,
    prefix: u8,
) -> Result<Option<AddressMessage>, rtnetlink::Error> {
    let messages: Vec<AddressMessage> = handle.address().get().execute().try_collect().await?;
    Ok(messages.into_iter().find(|m| {
        Address::from_message(m)
            .is_some_and(|a| a.link_index == index && a.address == address && a.prefix == prefix)
    }))
}
