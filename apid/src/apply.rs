//! Applying a machine configuration: validate, diff against the one in effect, decide
//! whether it needs a reboot, and store it. The node's controllers take it from there;
//! the first time, in maintenance mode, this waits until the API serves the
//! certificates they issue from the config's OS CA.

use std::sync::Arc;
use std::time::Duration;

use basalt_api::machine::v1::{ApplyConfigurationRequest, ApplyConfigurationResult, ApplyMode};
use basalt_machine_config::{Change, Config};
use basalt_pki::{issue_node_certs, CertAndKey};
use basalt_resource::config::MachineConfigSpec;
use basalt_resource::{Resource, ResourceKey};
use basalt_state::{State, StateError};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::authz::Caller;
use crate::resources::{here, state_status};
use crate::server::{Shared, OWNER};
use crate::ApidError;

/// Config paths whose change takes effect only after a reboot.
const REBOOT_PATHS: &[&str] = &["MachineConfig.install", "MachineConfig.kernelArgs"];
const DEFAULT_TRY_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_TRY_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// How long an apply waits for the API to serve certificates from a new OS CA.
const SWITCH_TIMEOUT: Duration = Duration::from_secs(10);

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

/// The PEM of the OS CA the node's API certificates will come from. A config that
/// cannot give them (no CA, no CA key, names a certificate cannot carry) is refused now,
/// dry run included, rather than leaving the node without an API.
fn os_ca(config: &Config) -> Result<String, Status> {
    let refuse = |why: String| Status::failed_precondition(why);
    let machine = config
        .machine
        .as_ref()
        .ok_or_else(|| refuse("the config has no MachineConfig".into()))?;
    let ca = machine
        .ca
        .as_ref()
        .ok_or_else(|| refuse("machine.ca is missing".into()))?;
    if ca.key.is_empty() {
        return Err(refuse(
            "machine.ca has no key: worker nodes need the control plane to issue their API \
             certificate (trustd), which is not built yet"
                .into(),
        ));
    }
    let ca = CertAndKey {
        crt: ca.crt.clone(),
        key: ca.key.expose().to_string(),
    };
    let name = machine.hostname.as_deref().unwrap_or("basalt");
    let mut sans = machine.cert_sans.clone();
    sans.push(name.to_string());
    issue_node_certs(&ca, name, &sans, Duration::from_secs(3600))
        .map_err(|e| refuse(format!("the node's API certificate cannot be issued: {e}")))?;
    Ok(ca.crt)
}

fn needs_reboot(changes: &[Change]) -> Vec<String> {
    changes
        .iter()
        .filter(|c| REBOOT_PATHS.iter().any(|p| c.path.starts_with(p)))
        .map(|c| c.path.clone())
        .collect()
}

/// Applies a config. The work runs in its own task: a client that goes away (or whose
/// deadline passes) halfway must not leave a config stored but not in effect, or a
/// config tried without its revert.
pub(crate) async fn apply(
    shared: &Arc<Shared>,
    caller: &Caller,
    request: ApplyConfigurationRequest,
) -> Result<ApplyConfigurationResult, Status> {
    let task = tokio::spawn(apply_whole(shared.clone(), caller.clone(), request));
    task.await
        .map_err(|e| Status::internal(format!("applying the config failed: {e}")))?
}

async fn apply_whole(
    shared: Arc<Shared>,
    caller: Caller,
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
    let try_timeout = request
        .try_timeout
        .and_then(|d| Duration::try_from(d).ok())
        .unwrap_or(DEFAULT_TRY_TIMEOUT)
        .min(MAX_TRY_TIMEOUT);
    let os_ca = os_ca(&config)?;

    let mut pending = shared.apply_lock.lock().await;
    let maintenance = shared.in_maintenance();
    // Another apply may have ended maintenance mode while this one waited.
    if !caller.peer.authenticated && !maintenance {
        return Err(Status::unauthenticated(
            "the node has left maintenance mode: a client certificate is required",
        ));
    }
    let current = stored(&shared, MachineConfigSpec::ACTIVE).await?;
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
        ApplyMode::Try if maintenance => {
            return Err(Status::failed_precondition(
                "a node in maintenance mode has no config to go back to: apply without --mode try",
            ));
        }
        ApplyMode::Staged => (
            ApplyMode::Staged,
            "staged: takes effect at the next boot".into(),
        ),
        ApplyMode::Reboot => (ApplyMode::Reboot, "applied; the node reboots".into()),
        ApplyMode::NoReboot => (ApplyMode::NoReboot, "applied without a reboot".into()),
        ApplyMode::Try => (
            ApplyMode::Try,
            format!("applied; reverted in {try_timeout:?} unless confirmed by another apply"),
        ),
    };
    let mut result = ApplyConfigurationResult {
        metadata: here(),
        mode: mode as i32,
        mode_details: details.clone(),
        warnings: Vec::new(),
        diff,
    };
    if request.dry_run {
        return Ok(result);
    }

    if mode == ApplyMode::Staged {
        store(
            &shared.state,
            MachineConfigSpec::STAGED,
            Some((text, &config)),
        )
        .await?;
    } else {
        store(
            &shared.state,
            MachineConfigSpec::ACTIVE,
            Some((text, &config)),
        )
        .await?;
        // Stored: this apply confirms (cancels the revert of) a config applied in try mode.
        if let Some(revert) = pending.revert.take() {
            revert.cancel();
        }
        store(&shared.state, MachineConfigSpec::STAGED, None).await?;
    }
    shared.events.publish(
        "config",
        format!("config applied: {details}"),
        &[("who", caller.who()), ("mode", format!("{mode:?}"))],
    );

    if mode != ApplyMode::Staged && !shared.serving_ca(&os_ca, SWITCH_TIMEOUT).await {
        result.warnings.push(format!(
            "the API does not serve certificates from the config's OS CA yet (waited {SWITCH_TIMEOUT:?}); see the secrets.ApiCertificatesController logs"
        ));
    } else if maintenance {
        tracing::info!(who = %caller.who(), "config applied: left maintenance mode");
    }
    match (mode, current) {
        (ApplyMode::Reboot, _) => shared.node.power.reboot(Default::default()).await?,
        (ApplyMode::Try, Some(previous)) => {
            let token = CancellationToken::new();
            pending.revert = Some(token.clone());
            tokio::spawn(revert_after(shared.clone(), token, try_timeout, previous));
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
    previous: (Arc<basalt_resource::AnyResource>, Config),
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
    let (resource, config) = &previous;
    let restored = async {
        let spec = resource
            .spec_as::<MachineConfigSpec>()
            .map_err(|e| Status::internal(e.to_string()))?;
        store(
            &shared.state,
            MachineConfigSpec::ACTIVE,
            Some((&spec.yaml, config)),
        )
        .await
    };
    match restored.await {
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
