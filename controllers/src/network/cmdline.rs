//! The kernel command line's `ip=` argument, in the kernel's own syntax (which Debian's
//! kernel does not act on itself: it has no IP autoconfiguration).

use std::net::Ipv4Addr;

/// A static `ip=<client>:<server>:<gateway>:<netmask>:<hostname>:<device>:<autoconf>:<dns0>:<dns1>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpArg {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    /// The link to configure; the first one that is not loopback when empty.
    pub device: Option<String>,
    pub nameservers: Vec<Ipv4Addr>,
}

/// An `ip=` value that cannot be applied, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("kernel argument ip={value}: {reason}")]
pub struct IpArgError {
    pub value: String,
    pub reason: String,
}

impl IpArg {
    /// The `ip=` argument of a kernel command line (the last one wins, as in the
    /// kernel), if it has one.
    pub fn from_cmdline(cmdline: &str) -> Result<Option<IpArg>, IpArgError> {
        match cmdline
            .split_whitespace()
            .filter_map(|arg| arg.strip_prefix("ip="))
            .next_back()
        {
            Some(value) => IpArg::parse(value).map(Some),
            None => Ok(None),
        }
    }

    pub fn parse(value: &str) -> Result<IpArg, IpArgError> {
        let invalid = |reason: String| IpArgError {
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
        let optional_ip = |i: usize, what: &str| match field(i) {
            "" => Ok(None),
            text => text
                .parse()
                .map(Some)
                .map_err(|_| invalid(format!("{what} {text:?} is not an IPv4 address"))),
        };
        let gateway = optional_ip(2, "gateway")?;
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
        let nameservers = [optional_ip(7, "dns0")?, optional_ip(8, "dns1")?]
            .into_iter()
            .flatten()
            .collect();
        Ok(IpArg {
            address,
            prefix,
            gateway,
            device,
            nameservers,
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_the_kernels_static_syntax() {
        let ip = IpArg::parse("10.0.2.15::10.0.2.2:255.255.255.0:node:eth0:off:10.0.2.3").unwrap();
        assert_eq!(
            ip,
            IpArg {
                address: Ipv4Addr::new(10, 0, 2, 15),
                prefix: 24,
                gateway: Some(Ipv4Addr::new(10, 0, 2, 2)),
                device: Some("eth0".into()),
                nameservers: vec![Ipv4Addr::new(10, 0, 2, 3)],
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
            ("10.0.0.2:::24::eth0:off:ns", "dns0"),
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
