//! Secrets domain: key material the node holds. Every type here is sensitive: it is never
//! sent to a client without the `os:admin` role.

use serde::{Deserialize, Serialize};

use basalt_resource::{namespaces, ResourceSpec};

/// The OS certificate authority of the cluster (id `os`), from the machine config: the
/// CA that clients and peer nodes chain to, and on control-plane nodes its key, from
/// which the node's API certificates and client configs are issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ResourceSpec)]
#[resource(
    type = "OsRoots.secrets.basalt.dev",
    namespace = namespaces::SECRETS,
    sensitive,
    column("CertSANs", "certSans"),
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OsRootSpec {
    /// PEM of the OS CA certificate.
    pub ca: String,
    /// PEM of its private key; empty on worker nodes, which get their certificates from
    /// the control plane.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ca_key: String,
    /// Extra names and addresses for the node's API certificate (`certSANs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cert_sans: Vec<String>,
}

impl OsRootSpec {
    pub const ID: &'static str = "os";
}

/// The certificates the Machine API serves and forwards with (id `api`): the server
/// certificate for the node's names, the `os:impersonator` client certificate it
/// presents to other nodes, and the CA both chain to. apid serves whatever this holds
/// and picks up a new one without a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ResourceSpec)]
#[resource(
    type = "ApiCertificates.secrets.basalt.dev",
    namespace = namespaces::SECRETS,
    sensitive,
    column("SANs", "sans"),
    column("NotAfter", "notAfter"),
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiCertificatesSpec {
    /// PEM of the OS CA certificate: clients and peer nodes must chain to it.
    pub ca: String,
    pub server_crt: String,
    pub server_key: String,
    pub peer_crt: String,
    pub peer_key: String,
    /// The names and addresses in the server certificate.
    pub sans: Vec<String>,
    /// When the server certificate expires (RFC 3339).
    pub not_after: String,
}

impl ApiCertificatesSpec {
    pub const ID: &'static str = "api";
}
