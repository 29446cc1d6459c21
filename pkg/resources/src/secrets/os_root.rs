use basalt_resource::{namespaces, ResourceSpec};
use serde::{Deserialize, Serialize};

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
    /// The machine token (`machine.token`): what a node without the CA key presents to
    /// trustd for its certificates, and what trustd checks.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
}

impl OsRootSpec {
    pub const ID: &'static str = "os";
}
