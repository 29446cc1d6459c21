//! Runtime domain: facts about the running system.

use serde::{Deserialize, Serialize};

use basalt_resource::{namespaces, ResourceSpec};

/// One argument of the kernel command line: `key` or `key=value`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelArg {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// The kernel command line the node booted with (id `cmdline`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ResourceSpec)]
#[resource(
    type = "KernelCmdlines.runtime.basalt.dev",
    namespace = namespaces::RUNTIME,
    aliases("cmdline"),
    column("Cmdline", "raw"),
)]
#[serde(deny_unknown_fields)]
pub struct KernelCmdlineSpec {
    pub raw: String,
    pub args: Vec<KernelArg>,
}

impl KernelCmdlineSpec {
    /// The id of the one resource of this type.
    pub const ID: &'static str = "cmdline";

    /// Parses a command line the way the kernel splits it: on white space, except inside
    /// double quotes, which are removed. Arguments after a lone `--` belong to init and are
    /// kept as they are. Never fails: the kernel accepts any bytes here, and so do we.
    pub fn parse(raw: &str) -> Self {
        let mut args = Vec::new();
        let mut current = String::new();
        let mut in_quotes = false;
        let mut has_token = false;
        for c in raw.chars() {
            match c {
                '"' => {
                    in_quotes = !in_quotes;
                    has_token = true;
                }
                c if c.is_whitespace() && !in_quotes => {
                    if has_token {
                        args.push(std::mem::take(&mut current));
                        has_token = false;
                    }
                }
                c => {
                    current.push(c);
                    has_token = true;
                }
            }
        }
        if has_token {
            args.push(current);
        }
        let args = args
            .into_iter()
            .map(|arg| match arg.split_once('=') {
                Some((k, v)) => KernelArg {
                    key: k.to_string(),
                    value: Some(v.to_string()),
                },
                None => KernelArg {
                    key: arg,
                    value: None,
                },
            })
            .collect();
        KernelCmdlineSpec {
            raw: raw.trim().to_string(),
            args,
        }
    }

    /// The value of the last `key=value` before `--` (the kernel's rule: the last one wins).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .take_while(|a| a.key != "--")
            .filter(|a| a.key == key)
            .filter_map(|a| a.value.as_deref())
            .last()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_quotes_and_last_value_wins() {
        let c = KernelCmdlineSpec::parse(
            "console=ttyS0 basalt.hostname=a quiet x=\"two words\" basalt.hostname=b -- basalt.hostname=c\n",
        );
        assert_eq!(c.get("basalt.hostname"), Some("b"));
        assert_eq!(c.get("x"), Some("two words"));
        assert_eq!(c.get("quiet"), None);
        assert!(c.args.iter().any(|a| a.key == "quiet" && a.value.is_none()));
        assert_eq!(c.raw.lines().count(), 1);
    }

    #[test]
    fn empty_quotes_make_an_empty_argument() {
        let c = KernelCmdlineSpec::parse("a=\"\" \"\"");
        assert_eq!(c.get("a"), Some(""));
        assert_eq!(c.args.len(), 2);
    }
}

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
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSpec {
    pub state: ServiceState,
    pub running: bool,
    pub healthy: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// 0 when not running.
    #[serde(default)]
    pub pid: i32,
    #[serde(default)]
    pub restarts: u32,
}

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

/// A file handed to an extension service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtensionServiceFile {
    pub mount_path: String,
    pub content: String,
}

/// An extension service's settings from its `ExtensionServiceConfig` document (id: the
/// service name). Its environment and files may hold secrets, so it is sensitive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ResourceSpec)]
#[resource(
    type = "ExtensionServiceConfigs.runtime.basalt.dev",
    namespace = namespaces::CONFIG,
    sensitive,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtensionServiceConfigSpec {
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub environment: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config_files: Vec<ExtensionServiceFile>,
}
