use basalt_resource::{namespaces, ResourceSpec};
use serde::{Deserialize, Serialize};

/// KubePrism settings (id `kubeprism`), from the `KubePrismConfig` document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ResourceSpec)]
#[resource(
    type = "KubePrismConfigs.k8s.basalt.dev",
    namespace = namespaces::CONFIG,
    column("Enabled", "enabled"),
    column("Port", "port"),
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubePrismConfigSpec {
    pub enabled: bool,
    /// Port on the node's loopback address; 0 picks a free one (tests).
    pub port: u16,
    /// PEM of the Kubernetes CA. When set, upstreams are checked with HTTPS
    /// `GET /readyz` verified against it; otherwise with a TCP connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
}

impl KubePrismConfigSpec {
    pub const ID: &'static str = "kubeprism";
}

/// The API servers KubePrism balances over (id `kubeprism`), `host:port` each: the
/// cluster endpoint first, then the control-plane members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ResourceSpec)]
#[resource(
    type = "KubePrismEndpoints.k8s.basalt.dev",
    namespace = namespaces::K8S,
    column("Endpoints", "endpoints"),
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubePrismEndpointsSpec {
    pub endpoints: Vec<String>,
}

impl KubePrismEndpointsSpec {
    pub const ID: &'static str = "kubeprism";
}

/// Whether the balancer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KubePrismState {
    Running,
    Disabled,
    /// It should run but cannot (e.g. the port is taken); see `problems`.
    Failed,
}

/// The balancer as a whole (id `kubeprism`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ResourceSpec)]
#[resource(
    type = "KubePrismStatuses.k8s.basalt.dev",
    namespace = namespaces::K8S,
    aliases("kps"),
    column("State", "state"),
    column("Listen", "listen"),
    column("Healthy", "healthy"),
    column("Upstreams", "upstreams"),
    column("Active", "activeConnections"),
    column("Refused", "refused"),
    column("Problems", "problems"),
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubePrismStatusSpec {
    pub state: KubePrismState,
    /// `IP:PORT` it listens on (empty unless running).
    #[serde(default)]
    pub listen: String,
    /// Upstreams in rotation, of `upstreams`.
    pub healthy: u32,
    pub upstreams: u32,
    pub active_connections: u64,
    pub accepted: u64,
    /// Closed at once because the connection limit was reached.
    pub refused: u64,
    /// Closed because no upstream could be dialed.
    pub failed: u64,
    /// What is wrong: empty, duplicate or unresolvable upstreams, every upstream down,
    /// a connection flood, a port that cannot be bound.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

impl KubePrismStatusSpec {
    pub const ID: &'static str = "kubeprism";
}

/// One upstream of the balancer (id: its `host:port`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ResourceSpec)]
#[resource(
    type = "KubePrismUpstreams.k8s.basalt.dev",
    namespace = namespaces::K8S,
    aliases("kpu"),
    column("Address", "address"),
    column("State", "state"),
    column("Active", "activeConnections"),
    column("Total", "totalConnections"),
    column("Sent", "bytesSent"),
    column("Received", "bytesReceived"),
    column("Dial Failures", "dialFailures"),
    column("Check Failures", "checkFailures"),
    column("Latency (µs)", "dialLatencyUs"),
    column("Last Error", "lastError"),
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubePrismUpstreamSpec {
    /// The resolved `IP:PORT`.
    pub address: String,
    /// `healthy`, `suspect` (a dial just failed), `down` or `draining` (removed, with
    /// connections still open).
    pub state: String,
    pub active_connections: u64,
    pub total_connections: u64,
    /// Client to API server.
    pub bytes_sent: u64,
    /// API server to client.
    pub bytes_received: u64,
    pub dial_failures: u64,
    pub check_failures: u64,
    /// Smoothed dial latency, microseconds.
    pub dial_latency_us: u64,
    /// Duration of the last health check, microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_latency_us: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}
