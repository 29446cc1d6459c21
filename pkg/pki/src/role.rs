use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::PkiError;

/// A role of the Machine API. A client certificate carries its roles as Organization (O)
/// values of its subject, so the API server authorizes from the certificate alone, with
/// no user database on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Role {
    /// Everything, including secrets.
    #[serde(rename = "os:admin")]
    Admin,
    /// Day-two operations (reboot, upgrade, service control) without reading secrets.
    #[serde(rename = "os:operator")]
    Operator,
    /// Read-only access to non-sensitive resources.
    #[serde(rename = "os:reader")]
    Reader,
    /// Taking etcd snapshots, for backup jobs.
    #[serde(rename = "os:etcd:backup")]
    EtcdBackup,
    /// A node forwarding a call for a client: trusted to name the client's roles in the
    /// call's metadata. Only node certificates carry it, never a person's.
    #[serde(rename = "os:impersonator")]
    Impersonator,
}

impl Role {
    /// Every role, in order of decreasing power.
    pub const ALL: [Role; 5] = [
        Role::Admin,
        Role::Operator,
        Role::Reader,
        Role::EtcdBackup,
        Role::Impersonator,
    ];

    /// The Organization value that carries this role in a certificate.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "os:admin",
            Role::Operator => "os:operator",
            Role::Reader => "os:reader",
            Role::EtcdBackup => "os:etcd:backup",
            Role::Impersonator => "os:impersonator",
        }
    }
}

impl FromStr for Role {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| PkiError::UnknownRole(s.to_owned()))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_round_trip() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
            assert_eq!(role.to_string(), role.as_str());
            let yaml = serde_yaml_ng::to_string(&role).unwrap();
            assert_eq!(yaml.trim(), role.as_str());
            assert_eq!(serde_yaml_ng::from_str::<Role>(&yaml).unwrap(), role);
        }
        let err = "os:root".parse::<Role>().unwrap_err();
        assert!(err.to_string().contains("os:root"), "{err}");
    }
}
