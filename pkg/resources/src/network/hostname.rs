use basalt_resource::{namespaces, ResourceError, ResourceSpec};
use serde::{Deserialize, Serialize};

/// Where a hostname came from, highest priority first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostnameSource {
    /// The machine configuration (a `HostnameConfig` resource).
    Config,
    /// `basalt.hostname=` on the kernel command line.
    Cmdline,
}

/// The node's hostname (id `hostname`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ResourceSpec)]
#[resource(
    type = "Hostnames.net.basalt.dev",
    namespace = namespaces::NETWORK,
    column("Hostname", "hostname"),
    column("Domainname", "domainname"),
    column("Source", "source"),
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostnameSpec {
    pub hostname: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domainname: String,
    pub source: HostnameSource,
}

impl HostnameSpec {
    pub const ID: &'static str = "hostname";

    /// Splits and checks a (fully qualified) host name against RFC 1123.
    pub fn from_fqdn(fqdn: &str, source: HostnameSource) -> Result<Self, ResourceError> {
        let invalid = |reason: &'static str| ResourceError::InvalidHostname {
            value: fqdn.to_string(),
            reason,
        };
        let fqdn = fqdn.strip_suffix('.').unwrap_or(fqdn);
        if fqdn.is_empty() {
            return Err(invalid("it is empty"));
        }
        if fqdn.len() > 253 {
            return Err(invalid("it is longer than 253 characters"));
        }
        for label in fqdn.split('.') {
            if label.is_empty() || label.len() > 63 {
                return Err(invalid("each label must have 1 to 63 characters"));
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return Err(invalid("only letters, digits and '-' are allowed"));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(invalid("a label may not start or end with '-'"));
            }
        }
        let (hostname, domainname) = fqdn.split_once('.').unwrap_or((fqdn, ""));
        Ok(HostnameSpec {
            hostname: hostname.to_ascii_lowercase(),
            domainname: domainname.to_ascii_lowercase(),
            source,
        })
    }

    pub fn fqdn(&self) -> String {
        if self.domainname.is_empty() {
            self.hostname.clone()
        } else {
            format!("{}.{}", self.hostname, self.domainname)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_validates() {
        let h = HostnameSpec::from_fqdn("Node-1.Example.org.", HostnameSource::Config).unwrap();
        assert_eq!(
            (h.hostname.as_str(), h.domainname.as_str()),
            ("node-1", "example.org")
        );
        assert_eq!(h.fqdn(), "node-1.example.org");
        for bad in ["", "-a", "a..b", "a_b", &"x".repeat(64), "a b"] {
            assert!(
                HostnameSpec::from_fqdn(bad, HostnameSource::Cmdline).is_err(),
                "{bad:?}"
            );
        }
    }
}
