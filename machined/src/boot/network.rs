//! The node's first network: the loopback link up, and the static address and default
//! route the kernel command line's `ip=` names (the kernel's own syntax, which Debian's
//! kernel does not act on itself: it has no IP autoconfiguration). Applied over
//! rtnetlink at boot, before the API listens, so the API is reachable at that address.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use futures::TryStreamExt as _;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use crate::BootError;

/// A static `ip=<client>:<server>:<gateway>:<netmask>:<hostname>:<device>:<autoconf>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpArg {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    /// The link to configure; the first one that is not loopback when empty.
    pub device: Option<String>,
}

impl IpArg {
    /// The `ip=` argument of a kernel command line, if it has one.
    pub fn from_cmdline(cmdline: &str) -> Result<Option<IpArg>, BootError> {
        match cmdline
            .split_whitespace()
            .filter_map(|arg| arg.strip_prefix("ip="))
            .next_back()
        {
            Some(value) => IpArg::parse(value).map(Some),
            None => Ok(None),
        }
    }

    pub fn parse(value: &str) -> Result<IpArg, BootError> {
        let invalid = |reason: String| BootError::IpArg {
            value: value.to_string(),
            reason,
        };
        let fields: Vec<&str> = value.split(':').collect();
        let field = |i: usize| fields.get(i).copied().unwrap_or("");
        let address: Ipv4Addr = field(0).parse().map_err(|_| {
            invalid(format!(
                "{:?} is not an IPv4 address (only static IPv4 is supported)",
                field(0)
            ))
        })?;
        let gateway = match field(2) {
            "" => None,
            text => Some(
                text.parse()
                    .map_err(|_| invalid(format!("gateway {text:?} is not an IPv4 address")))?,
            ),
        };
        let prefix = match field(3) {
            "" => 24,
            text => prefix_of(text).ok_or_else(|| {
                invalid(format!(
                    "netmask {text:?} is not a netmask or a prefix length"
                ))
            })?,
        };
        let device = Some(field(5)).filter(|d| !d.is_empty()).map(str::to_string);
        match field(6) {
            "" | "off" | "none" | "static" => {}
            other => {
                return Err(invalid(format!(
                    "autoconf {other:?} is not supported: only static addresses (off)"
                )))
            }
        }
        Ok(IpArg {
            address,
            prefix,
            gateway,
            device,
        })
    }
}

/// A prefix length from a dotted netmask (`255.255.255.0`) or a number (`24`).
fn prefix_of(text: &str) -> Option<u8> {
    if let Ok(length) = text.parse::<u8>() {
        return (length <= 32).then_some(length);
    }
    let mask = u32::from(text.parse::<Ipv4Addr>().ok()?);
    let length = mask.leading_ones();
    (mask.checked_shl(length).unwrap_or(0) == 0).then_some(length as u8)
}

/// Brings up loopback and applies `ip` (if any), waiting up to `timeout` for its link
/// to appear (network drivers probe while the boot goes on).
pub async fn configure(ip: Option<&IpArg>, timeout: Duration) -> Result<(), BootError> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(|source| BootError::Io {
        what: "opening a netlink socket",
        source,
    })?;
    let connection = tokio::spawn(connection);
    let result = apply(&handle, ip, timeout).await;
    connection.abort();
    result
}

async fn apply(handle: &Handle, ip: Option<&IpArg>, timeout: Duration) -> Result<(), BootError> {
    let lo = link_index(handle, Some("lo"), Duration::ZERO).await?;
    set_up(handle, lo, "lo").await?;
    let Some(ip) = ip else { return Ok(()) };
    let index = link_index(handle, ip.device.as_deref(), timeout).await?;
    let name = ip.device.as_deref().unwrap_or("the first link");
    set_up(handle, index, name).await?;
    let netlink = |what: String| move |source| BootError::Netlink { what, source };
    match handle
        .address()
        .add(index, IpAddr::V4(ip.address), ip.prefix)
        .execute()
        .await
    {
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc_eexist() => {}
        other => other.map_err(netlink(format!(
            "adding {}/{} to {name}",
            ip.address, ip.prefix
        )))?,
    }
    if let Some(gateway) = ip.gateway {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .output_interface(index)
            .build();
        match handle.route().add(route).execute().await {
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc_eexist() => {}
            other => other.map_err(netlink(format!("adding the default route via {gateway}")))?,
        }
    }
    tracing::info!(address = %ip.address, prefix = ip.prefix, gateway = ?ip.gateway, link = name, "network configured from ip=");
    Ok(())
}

/// EEXIST: the address or route is there already (machined restarted in place).
fn libc_eexist() -> i32 {
    rustix::io::Errno::EXIST.raw_os_error()
}

async fn set_up(handle: &Handle, index: u32, name: &str) -> Result<(), BootError> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|source| BootError::Netlink {
            what: format!("setting {name} up"),
            source,
        })
}

/// The index of the link named `name` (or the first that is not loopback).
async fn link_index(
    handle: &Handle,
    name: Option<&str>,
    timeout: Duration,
) -> Result<u32, BootError> {
    let started = Instant::now();
    loop {
        let links: Vec<_> =
            handle
                .link()
                .get()
                .execute()
                .try_collect()
                .await
                .map_err(|source| BootError::Netlink {
                    what: "listing links".into(),
                    source,
                })?;
        let found = links.iter().find(|link| {
            let link_name = link.attributes.iter().find_map(|a| match a {
                rtnetlink::packet_route::link::LinkAttribute::IfName(n) => Some(n.as_str()),
                _ => None,
            });
            match name {
                Some(wanted) => link_name == Some(wanted),
                None => link_name != Some("lo"),
            }
        });
        if let Some(link) = found {
            return Ok(link.header.index);
        }
        if started.elapsed() >= timeout {
            return Err(BootError::NoLink {
                name: name.unwrap_or("(any but lo)").to_string(),
                waited: timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kernels_static_syntax() {
        let ip = IpArg::parse("10.0.2.15::10.0.2.2:255.255.255.0:node:eth0:off").unwrap();
        assert_eq!(
            ip,
            IpArg {
                address: Ipv4Addr::new(10, 0, 2, 15),
                prefix: 24,
                gateway: Some(Ipv4Addr::new(10, 0, 2, 2)),
                device: Some("eth0".into()),
            }
        );
        let short = IpArg::parse("192.168.7.2:::28").unwrap();
        assert_eq!(
            (short.prefix, short.gateway, short.device),
            (28, None, None)
        );
        let cmdline = "console=ttyS0 ip=1.2.3.4 ip=5.6.7.8::5.6.7.1:255.255.0.0 quiet";
        assert_eq!(IpArg::from_cmdline(cmdline).unwrap().unwrap().prefix, 16);
        assert_eq!(IpArg::from_cmdline("console=ttyS0").unwrap(), None);
    }

    #[test]
    fn refuses_what_it_cannot_apply_and_says_why() {
        for (value, says) in [
            ("dhcp", "not an IPv4 address"),
            ("10.0.0.2::10.0.0.1:255.0.255.0", "netmask"),
            ("10.0.0.2::10.0.0.1:33", "netmask"),
            ("10.0.0.2::gw", "gateway"),
            ("10.0.0.2:::24::eth0:dhcp", "only static"),
        ] {
            let error = IpArg::parse(value).unwrap_err().to_string();
            assert!(
                error.contains(says) && error.contains(value),
                "{value}: {error}"
            );
        }
    }

    #[test]
    fn netmasks_and_prefixes() {
        assert_eq!(prefix_of("255.255.255.255"), Some(32));
        assert_eq!(prefix_of("0.0.0.0"), Some(0));
        assert_eq!(prefix_of("255.255.128.0"), Some(17));
        assert_eq!(prefix_of("0"), Some(0));
    }
}
