//! Kubernetes domain: KubePrism, the per-node load balancer in front of the API servers:
//! its settings, the API-server endpoints it balances over, and its status.

use serde::{Deserialize, Serialize};

use crate::{namespaces, Column, ResourceSpec};

/// The port of a Kubernetes API server when nothing says otherwise.
pub const DEFAULT_API_SERVER_PORT: u16 = 6443;

/// KubePrism settings (id `kubeprism`), from the `KubePrismConfig` document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

impl ResourceSpec for KubePrismConfigSpec {
    const TYPE: &'static str = "KubePrismConfigs.k8s.basalt.dev";
    const DEFAULT_NAMESPACE: &'static str = namespaces::CONFIG;
    const PRINT_COLUMNS: &'static [Column] = &[
        Column {
            name: "Enabled",
            path: "enabled",
        },
        Column {
            name: "Port",
            path: "port",
        },
    ];
}

impl KubePrismConfigSpec {
    pub const ID: &'static str = "kubeprism";
}

/// The cluster's control-plane endpoint (id `control-plane`), `https://HOST:PORT`, from
/// the `ClusterConfig` document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControlPlaneEndpointSpec {
    pub endpoint: String,
}

impl ResourceSpec for ControlPlaneEndpointSpec {
    const TYPE: &'static str = "ControlPlaneEndpoints.k8s.basalt.dev";
    const DEFAULT_NAMESPACE: &'static str = namespaces::CONFIG;
    const PRINT_COLUMNS: &'static [Column] = &[Column {
        name: "Endpoint",
        path: "endpoint",
    }];
}

impl ControlPlaneEndpointSpec {
    pub const ID: &'static str = "control-plane";
}

/// A control-plane node of the cluster (id: its node name), as cluster membership
/// reports it; its API server is at each address on `apiServerPort`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControlPlaneMemberSpec {
    pub addresses: Vec<String>,
    #[serde(default = "default_api_server_port")]
    pub api_server_port: u16,
}

fn default_api_server_port() -> u16 {
    DEFAULT_API_SERVER_PORT
}

impl ResourceSpec for ControlPlaneMemberSpec {
    const TYPE: &'static str = "ControlPlaneMembers.k8s.basalt.dev";
    const DEFAULT_NAMESPACE: &'static str = namespaces::CLUSTER;
    const PRINT_COLUMNS: &'static [Column] = &[
        Column {
            name: "Addresses",
            path: "addresses",
        },
        Column {
            name: "Port",
            path: "apiServerPort",
        },
    ];
}

/// The API servers KubePrism balances over (id `kubeprism`), `host:port` each: the
/// cluster endpoint first, then the control-plane members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubePrismEndpointsSpec {
    pub endpoints: Vec<String>,
}

impl ResourceSpec for KubePrismEndpointsSpec {
    const TYPE: &'static str = "KubePrismEndpoints.k8s.basalt.dev";
    const DEFAULT_NAMESPACE: &'static str = namespaces::K8S;
    const PRINT_COLUMNS: &'static [Column] = &[Column {
        name: "Endpoints",
        path: "endpoints",
    }];
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

impl ResourceSpec for KubePrismStatusSpec {
    const TYPE: &'static str = "KubePrismStatuses.k8s.basalt.dev";
    const DEFAULT_NAMESPACE: &'static str = namespaces::K8S;
    const ALIASES: &'static [&'static str] = &["kps"];
    const PRINT_COLUMNS: &'static [Column] = &[
        Column {
            name: "State",
            path: "state",
        },
        Column {
            name: "Listen",
            path: "listen",
        },
        Column {
            name: "Healthy",
            path: "healthy",
        },
        Column {
            name: "Upstreams",
            path: "upstreams",
        },
        Column {
            name: "Active",
            path: "activeConnections",
        },
        Column {
            name: "Refused",
            path: "refused",
        },
        Column {
            name: "Problems",
            path: "problems",
        },
    ];
}

impl KubePrismStatusSpec {
    pub const ID: &'static str = "kubeprism";
}

/// One upstream of the balancer (id: its `host:port`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

impl ResourceSpec for KubePrismUpstreamSpec {
    const TYPE: &'static str = "KubePrismUpstreams.k8s.basalt.dev";
    const DEFAULT_NAMESPACE: &'static str = namespaces::K8S;
    const ALIASES: &'static [&'static str] = &["kpu"];
    const PRINT_COLUMNS: &'static [Column] = &[
        Column {
            name: "Address",
            path: "address",
        },
        Column {
            name: "State",
            path: "state",
        },
        Column {
            name: "Active",
            path: "activeConnections",
        },
        Column {
            name: "Total",
            path: "totalConnections",
        },
        Column {
            name: "Sent",
            path: "bytesSent",
        },
        Column {
            name: "Received",
            path: "bytesReceived",
        },
        Column {
            name: "Dial Failures",
            path: "dialFailures",
        },
        Column {
            name: "Check Failures",
            path: "checkFailures",
        },
        Column {
            name: "Latency (µs)",
            path: "dialLatencyUs",
        },
        Column {
            name: "Last Error",
            path: "lastError",
        },
    ];
}
