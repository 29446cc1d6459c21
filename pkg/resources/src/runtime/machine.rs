use basalt_resource::{namespaces, ResourceSpec};
use serde::{Deserialize, Serialize};

/// Where the machine is in its life (id `machine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum MachineStage {
    Booting,
    /// Waiting for a config; the API accepts one without client certificates.
    Maintenance,
    Running,
    Rebooting,
    ShuttingDown,
    Resetting,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ResourceSpec)]
#[resource(
    type = "MachineStatuses.runtime.basalt.dev",
    namespace = namespaces::RUNTIME,
    column("Stage", "stage"),
    column("Reason", "reason"),
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MachineStatusSpec {
    pub stage: MachineStage,
    /// Why the stage last changed, in words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

impl MachineStatusSpec {
    pub const ID: &'static str = "machine";
}

/// What a power request asks of the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PowerAction {
    Reboot,
    Shutdown,
    Reset,
}

/// The power request the node accepted (id `power`): the first one wins until the node
/// goes down. Written by the node's power handler, read by whatever takes the node down
/// and by the machine status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ResourceSpec)]
#[resource(
    type = "PowerRequests.runtime.basalt.dev",
    namespace = namespaces::RUNTIME,
    column("Action", "action"),
    column("Reason", "reason"),
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PowerRequestSpec {
    pub action: PowerAction,
    /// Who asked for what, in words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

impl PowerRequestSpec {
    pub const ID: &'static str = "power";
}
