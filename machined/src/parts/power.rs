//! Power actions as requests: the machine's stage is recorded in the state and the request
//! is handed to whoever acts on it (machined's sequencer) through a channel.

use async_trait::async_trait;
use basalt_api::machine::v1 as api;
use basalt_resources::runtime::{PowerAction, PowerRequestSpec};
use basalt_state::State;
use tokio::sync::{watch, Mutex};

use super::put_resource;
use crate::parts::{NodeError, Power, ResetOptions};

/// The owner of the `PowerRequest` resource this writes.
pub const POWER_OWNER: &str = "power";

/// What the node was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PowerRequest {
    Reboot { mode: api::RebootMode },
    Shutdown { force: bool },
    Reset(ResetOptions),
}

impl PowerRequest {
    fn action(&self) -> PowerAction {
        match self {
            PowerRequest::Reboot { .. } => PowerAction::Reboot,
            PowerRequest::Shutdown { .. } => PowerAction::Shutdown,
            PowerRequest::Reset(_) => PowerAction::Reset,
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
    /// Makes "is a request pending? then record this one" one step.
    current: Mutex<()>,
    /// `None` until a request is accepted.
    requests: watch::Sender<Option<PowerRequest>>,
}

impl StatePower {
    pub fn new(state: State) -> Self {
        StatePower {
            state,
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
        let spec = PowerRequestSpec {
            action: request.action(),
            reason,
        };
        put_resource(&self.state, POWER_OWNER, PowerRequestSpec::ID, spec)
            .await
            .map_err(|e| {
                NodeError::Unavailable(format!("could not record the power request: {e}"))
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
