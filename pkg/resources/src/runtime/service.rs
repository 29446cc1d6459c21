use basalt_resource::{namespaces, ResourceSpec};
use serde::{Deserialize, Serialize};

/// Where a service is in its life, as its supervisor runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceState {
    /// Being set up to start (its process is being spawned).
    Preparing,
    /// Waiting for what it depends on.
    Waiting,
    Running,
    /// Exited on its own, successfully.
    Finished,
    /// Exited with an error or could not start; restarted with backoff if its policy says so.
    Failed,
    /// Not started (the node does not run it here).
    Skipped,
    /// Stopped on request, or not started yet.
    Stopped,
}

impl ServiceState {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceState::Preparing => "Preparing",
            ServiceState::Waiting => "Waiting",
            ServiceState::Running => "Running",
            ServiceState::Finished => "Finished",
            ServiceState::Failed => "Failed",
            ServiceState::Skipped => "Skipped",
            ServiceState::Stopped => "Stopped",
        }
    }
}

/// One service of the node (id: the service name), as its supervisor sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ResourceSpec)]
#[resource(
    type = "Services.runtime.basalt.dev",
    namespace = namespaces::RUNTIME,
    aliases("svc"),
    column("State", "state"),
    column("Healthy", "healthy"),
    column("Restarts", "restarts"),
    column("Message", "message"),
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSpec {
    pub state: ServiceState,
    pub running: bool,
    /// Running, and its health check (if it has one) passed last time.
    pub healthy: bool,
    /// Why it is in its state: what it waits for, how it ended, why it is unhealthy.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The last health check's result ("ok", "connection refused", ...); empty for a
    /// service without a check or before its first one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub health_message: String,
    /// Limits of its definition the host could not apply, each with why ("memory limit
    /// of 64 MiB: no memory controller this node can use").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits_not_applied: Vec<String>,
    /// 0 when not running.
    #[serde(default)]
    pub pid: i32,
    #[serde(default)]
    pub restarts: u32,
}
