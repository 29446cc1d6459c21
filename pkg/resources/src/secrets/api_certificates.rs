use basalt_resource::{namespaces, ResourceSpec};
use serde::{Deserialize, Serialize};

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
    column("Issuer", "issuer"),
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
    /// Who signed them: `self` (from the config's CA key) or `trustd <endpoint>`.
    #[serde(default)]
    pub issuer: String,
}

impl ApiCertificatesSpec {
    pub const ID: &'static str = "api";
}
