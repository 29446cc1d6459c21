//! Applying a machine configuration: validate, diff against the one in effect, decide
//! whether it needs a reboot, store it, and — the first time, in maintenance mode —
//! switch the API to the cluster PKI the config carries.

use std::sync::Arc;
use std::time::Duration;

use basalt_api::machine::v1::{ApplyConfigurationRequest, ApplyConfigurationResult, ApplyMode};
use basalt_machine_config::{Change, Config};
use basalt_resource::config::MachineConfigSpec;
use basalt_resource::runtime::MachineStage;
use basalt_resource::{Resource, ResourceKey};
use basalt_state::{State, StateError};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::authz::Caller;
use crate::identity::NodeIdentity;
use crate::resources::{here, state_status};
use crate::server::{Shared, OWNER};
use crate::ApidError;

/// Config paths whose change takes effect only after a reboot.
const REBOOT_PATHS: &[&str] = &["MachineConfig.install", "MachineConfig.kernelArgs"];
const DEFAULT_TRY_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_TRY_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// A config applied in try mode, waiting to be confirmed or reverted.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    revert: Option<CancellationToken>,
}

fn key(id: &str) -> ResourceKey {
    ResourceKey::of::<MachineConfigSpec>(id)
}

async fn stored(
    shared: &Shared,
    id: &str,
) -> Result<Option<(Arc<basalt_resource::AnyResource>, Config)>, Status> {
    match shared.state.get(&key(id)).await {
        Ok(resource) => {
            let spec = resource
                .spec_as::<MachineConfigSpec>()
                .map_err(|e| Status::internal(e.to_string()))?;
            let config = Config::parse(&spec.yaml)
                .map_err(|e| Status::internal(format!("the {id} config does not parse: {e}")))?;
            Ok(Some((resource, config)))
        }
        Err(StateError::NotFound(_)) => Ok(None),
        Err(e) => Err(state_status(e)),
    }
}

/// Writes `yaml` as the config with `id`, or removes it when `yaml` is `None`.
async fn store(state: &State, id: &str, yaml: Option<(&str, &Config)>) -> Result<(), Status> {
    let result = match yaml {
        Some((yaml, config)) => {
            let spec = MachineConfigSpec {
                yaml: yaml.to_string(),
                digest: config
                    .digest()
                    .map_err(|e| Status::internal(e.to_string()))?,
            };
            state
                .put(Resource::new(id, spec).into_any(), OWNER)
                .await
                .map(|_| ())
        }
        None => match state.destroy(&key(id), OWNER).await {
            Err(StateError::NotFound(_)) => Ok(()),
            other => other,
        },
    };
    result.map_err(state_status)
}

/// Stores `yaml` as the config in effect, as if it had been applied: for a node that
/// boots with a config (and for tests and benchmarks).
pub async fn store_config(state: &State, yaml: &str) -> Result<(), ApidError> {
    let config = Config::parse(yaml).map_err(|e| ApidError::Config(e.to_string()))?;
    store(state, MachineConfigSpec::ACTIVE, Some((yaml, &config)))
        .await
        .map_err(|e| ApidError::Config(e.message().to_string()))
}

fn needs_reboot(changes: &[Change]) -> Vec<String> {
    changes
        .iter()
        .filter(|c| REBOOT_PATHS.iter().any(|p| c.path.starts_with(p)))
        .map(|c| c.path.clone())
        .collect()
}

pub(crate) async fn apply(
    shared: &Arc<Shared>,
    caller: &Caller,
    request: ApplyConfigurationRequest,
) -> Result<ApplyConfigurationResult, Status> {
    let text = std::str::from_utf8(&request.data)
        .map_err(|e| Status::invalid_argument(format!("the config is not UTF-8: {e}")))?;
    let config = Config::parse(text).map_err(|e| Status::invalid_argument(e.to_string()))?;
    config
        .validate(shared.validation_mode)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let mode = ApplyMode::try_from(request.mode)
        .map_err(|_| Status::invalid_argument(format!("unknown apply mode {}", request.mode)))?;

    let mut pending = shared.apply_lock.lock().await;
    let maintenance = shared.in_maintenance();
    // Another apply may have ended maintenance mode while this one waited.
    if !caller.peer.authenticated && !maintenance {
        return Err(Status::unauthenticated(
            "the node has left maintenance mode: a client certificate is required",
        ));
    }
    let current = stored(shared, MachineConfigSpec::ACTIVE).await?;
    let changes = match &current {
        Some((_, old)) => old.diff(&config),
        None => Config::default().diff(&config),
    }
    .map_err(|e| Status::internal(e.to_string()))?;
    let diff = changes.iter().map(|c| format!("{c}\n")).collect::<String>();
    let reboot_paths = needs_reboot(&changes);
    let reboot_required = !reboot_paths.is_empty() && current.is_some();

    let (mode, details) = match mode {
        ApplyMode::Auto if reboot_required => (
            ApplyMode::Reboot,
            format!("a reboot applies {}", reboot_paths.join(", ")),
        ),
        ApplyMode::Auto => (ApplyMode::NoReboot, "applied without a reboot".to_string()),
        ApplyMode::NoReboot | ApplyMode::Try if reboot_required => {
            return Err(Status::failed_precondition(format!(
                "these changes need a reboot: {}; use --mode auto, reboot or staged",
                reboot_paths.join(", ")
            )));
        }
        ApplyMode::Staged if maintenance => {
            return Err(Status::failed_precondition(
                "a node in maintenance mode has no config to keep until a reboot: apply without --mode staged",
            ));
        }
        ApplyMode::Staged => (
            ApplyMode::Staged,
            "staged: takes effect at the next boot".into(),
        ),
        ApplyMode::Reboot => (ApplyMode::Reboot, "applied; the node reboots".into()),
        ApplyMode::NoReboot => (ApplyMode::NoReboot, "applied without a reboot".into()),
        ApplyMode::Try => {
            let timeout = request
                .try_timeout
                .and_then(|d| Duration::try_from(d).ok())
                .unwrap_or(DEFAULT_TRY_TIMEOUT)
                .min(MAX_TRY_TIMEOUT);
            (
                ApplyMode::Try,
                format!("applied; reverted in {timeout:?} unless confirmed by another apply"),
            )
        }
    };
    let result = ApplyConfigurationResult {
        metadata: here(),
        mode: mode as i32,
        mode_details: details.clone(),
        warnings: Vec::new(),
        diff,
    };
    if request.dry_run {
        return Ok(result);
    }

    // Everything that can fail on the config's PKI fails before anything is stored.
    let identity = if maintenance {
        Some(
            NodeIdentity::from_config(&config, &shared.sans)
                .map_err(|e| Status::failed_precondition(e.to_string()))?,
        )
    } else {
        None
    };

    if mode == ApplyMode::Staged {
        store(
            &shared.state,
            MachineConfigSpec::STAGED,
            Some((text, &config)),
        )
        .await?;
    } else {
        // A new apply confirms (cancels the revert of) a config applied in try mode.
        if let Some(revert) = pending.revert.take() {
            revert.cancel();
        }
        store(
            &shared.state,
            MachineConfigSpec::ACTIVE,
            Some((text, &config)),
        )
        .await?;
        store(&shared.state, MachineConfigSpec::STAGED, None).await?;
    }
    shared.events.publish(
        "config",
        format!("config applied: {details}"),
        &[("who", caller.who()), ("mode", format!("{mode:?}"))],
    );

    if let Some(identity) = identity {
        shared
            .configure(identity)
            .map_err(|e| Status::internal(e.to_string()))?;
        shared
            .set_stage(MachineStage::Running, "config applied")
            .await
            .map_err(state_status)?;
        tracing::info!(who = %caller.who(), "config applied: left maintenance mode");
    }
    match mode {
        ApplyMode::Reboot => shared.node.power.reboot(Default::default()).await?,
        ApplyMode::Try => {
            let token = CancellationToken::new();
            pending.revert = Some(token.clone());
            let timeout = request
                .try_timeout
                .and_then(|d| Duration::try_from(d).ok())
                .unwrap_or(DEFAULT_TRY_TIMEOUT)
                .min(MAX_TRY_TIMEOUT);
            tokio::spawn(revert_after(shared.clone(), token, timeout, current));
        }
        _ => {}
    }
    Ok(result)
}

/// Restores the config that was in effect before a try, unless `token` is cancelled first.
async fn revert_after(
    shared: Arc<Shared>,
    token: CancellationToken,
    timeout: Duration,
    previous: Option<(Arc<basalt_resource::AnyResource>, Config)>,
) {
    tokio::select! {
        _ = token.cancelled() => return,
        _ = tokio::time::sleep(timeout) => {}
    }
    // Held while restoring, so a concurrent apply either confirms first or comes after.
    let _pending = shared.apply_lock.lock().await;
    if token.is_cancelled() {
        return;
    }
    let restored = match &previous {
        Some((resource, config)) => match resource.spec_as::<MachineConfigSpec>() {
            Ok(spec) => {
                store(
                    &shared.state,
                    MachineConfigSpec::ACTIVE,
                    Some((&spec.yaml, config)),
                )
                .await
            }
            Err(e) => Err(Status::internal(e.to_string())),
        },
        None => store(&shared.state, MachineConfigSpec::ACTIVE, None).await,
    };
    match restored {
        Ok(()) => {
            tracing::warn!(
                ?timeout,
                "try mode: the config was not confirmed; the previous one is restored"
            );
            shared.events.publish(
                "config",
                "try mode timed out: previous config restored",
                &[],
            );
        }
        Err(e) => {
            tracing::error!(error = %e.message(), "try mode: restoring the previous config failed")
        }
    }
}
