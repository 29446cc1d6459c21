//! Power actions as requests: the machine's stage is recorded in the state and the request
//! is handed to whoever acts on it (machined's sequencer) through a channel.

use async_trait::async_trait;
use basalt_api::machine::v1 as api;
use basalt_resource::runtime::{MachineStage, MachineStatusSpec};
use basalt_state::State;
use tokio::sync::{watch, Mutex};

use super::put_resource;
use crate::node::{NodeError, Power, ResetOptions};

/// The default owner of the `MachineStatus` resource this writes. apid writes it too
/// (maintenance, running): one owner for both.
pub const POWER_OWNER: &str = crate::server::OWNER;

/// What the node was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PowerRequest {
    Reboot { mode: api::RebootMode },
    Shutdown { force: bool },
    Reset(ResetOptions),
}

impl PowerRequest {
    fn stage(&self) -> MachineStage {
        match self {
            PowerRequest::Reboot { .. } => MachineStage::Rebooting,
            PowerRequest::Shutdown { .. } => MachineStage::ShuttingDown,
            PowerRequest::Reset(_) => MachineStage::Resetting,
        }
    }

    /// What the node is doing, in the words of an answer ("the node is already ...").
    fn doing(&self) -> &'static str {
        match self {
            PowerRequest::Reboot { .. } => "rebooting",
            PowerRequest::Shutdown { .. } => "shutting down",
            PowerRequest::Reset(_) => "resetting",
        }
    }
}

/// Records power requests; the first one wins until the node goes down, and every later
/// one is refused with `FailedPrecondition`.
#[derive(Debug)]
pub struct StatePower {
    state: State,
    owner: String,
    /// Makes "is a request pending? then record this one" one step.
    current: Mutex<()>,
    /// `None` until a request is accepted.
    requests: watch::Sender<Option<PowerRequest>>,
}

impl StatePower {
    pub fn new(state: State) -> Self {
        Self::with_owner(state, POWER_OWNER)
    }

    /// Writes the `MachineStatus` resource as `owner` (the component that owns it on this
    /// node, e.g. machined).
    pub fn with_owner(state: State, owner: impl Into<String>) -> Self {
        StatePower {
            state,
            owner: owner.into(),
            current: Mutex::new(()),
            requests: watch::channel(None).0,
        }
    }

    /// The accepted request (`None` until there is one); a receiver sees a request made
    /// before it subscribed too.
    pub fn subscribe(&self) -> watch::Receiver<Option<PowerRequest>> {
        self.requests.subscribe()
    }

    async fn request(&self, request: PowerRequest, reason: String) -> Result<(), NodeError> {
        let _one_at_a_time = self.current.lock().await;
        if let Some(pending) = self.requests.borrow().as_ref() {
            return Err(NodeError::FailedPrecondition(format!(
                "the node is already {}",
                pending.doing()
            )));
        }
        let spec = MachineStatusSpec {
            stage: request.stage(),
            reason,
        };
        put_resource(&self.state, &self.owner, MachineStatusSpec::ID, spec)
            .await
            .map_err(|e| {
                NodeError::Unavailable(format!("could not record the machine stage: {e}"))
            })?;
        tracing::info!(?request, "power request accepted");
        self.requests.send_replace(Some(request));
        Ok(())
    }
}

#[async_trait]
impl Power for StatePower {
    async fn reboot(&self, mode: api::RebootMode) -> Result<(), NodeError> {
        let reason = format!("reboot requested (mode {})", mode.as_str_name());
        self.request(PowerRequest::Reboot { mode }, reason).await
    }

    async fn shutdown(&self, force: bool) -> Result<(), NodeError> {
        let reason = if force {
            "forced shutdown requested".to_string()
        } else {
            "shutdown requested".to_string()
        };
        self.request(PowerRequest::Shutdown { force }, reason).await
    }

    async fn reset(&self, options: ResetOptions) -> Result<(), NodeError> {
        let reason = format!(
            "reset requested (graceful: {}, reboot: {}, wipe: {})",
            options.graceful,
            options.reboot,
            if options.wipe.is_empty() {
                "all system partitions".to_string()
            } else {
                options.wipe.join(", ")
            }
        );
        self.request(PowerRequest::Reset(options), reason).await
    }
}
