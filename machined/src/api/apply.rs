//! Applying a machine configuration: parse and validate it, let the apply plan decide
//! what happens, and do that: store it (as the config in effect or staged), confirm or
//! schedule the revert of a tried config, reboot. The node's controllers take it from
//! there; this waits until the API certificates they issue come from the config's OS CA.

use std::sync::Arc;
use std::time::Duration;

use apid::AuthorizedCaller;
use basalt_api::machine::v1::{self as api, ApplyConfigurationRequest, ApplyConfigurationResult};
use basalt_machine_config::plan::{self, Action, ApplyMode, Plan, DEFAULT_TRY_TIMEOUT};
use basalt_machine_config::{Config, Mode};
use basalt_resource::{Resource, ResourceKey};
use basalt_resources::config::MachineConfigSpec;
use basalt_resources::secrets::ApiCertificatesSpec;
use basalt_state::{Event, State, StateError};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};

use super::status::{config_status, plan_status, resource_status, state_status};
use super::{here, Shared};

/// The owner of the applied configs: the Machine API, on the user's behalf.
pub(crate) const OWNER: &str = "apid";
/// How long an apply waits for the API certificates from a new OS CA.
const CERTIFICATES_TIMEOUT: Duration = Duration::from_secs(10);

/// A config applied in try mode, waiting to be confirmed or reverted.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    revert: Option<CancellationToken>,
}

fn key(id: &str) -> ResourceKey {
    ResourceKey::of::<MachineConfigSpec>(id)
}

/// The stored config `id`, as stored and parsed.
async fn stored(shared: &Shared, id: &str) -> Result<Option<(String, Config)>, Status> {
    let resource = match shared.state.get(&key(id)).await {
        Ok(resource) => resource,
        Err(StateError::NotFound(_)) => return Ok(None),
        Err(e) => return Err(state_status(e)),
    };
    let spec = resource
        .spec_as::<MachineConfigSpec>()
        .map_err(resource_status)?;
    let config = Config::parse(&spec.yaml).map_err(|e| {
        Status::new(
            Code::DataLoss,
            format!("the stored {id} config does not parse: {e}"),
        )
    })?;
    Ok(Some((spec.yaml.clone(), config)))
}

/// Writes `yaml` as the config with `id`, or removes it when `yaml` is `None`.
pub(crate) async fn store(
    state: &State,
    id: &str,
    yaml: Option<(&str, &Config)>,
) -> Result<(), Status> {
    let result = match yaml {
        Some((yaml, config)) => {
            let digest = config.digest().map_err(config_status)?;
            let spec = MachineConfigSpec {
                yaml: yaml.to_string(),
                digest,
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

/// Stores `yaml` as the config in effect, as if it had been applied.
pub async fn store_config(state: &State, yaml: &str) -> Result<(), Status> {
    let config = Config::parse(yaml).map_err(config_status)?;
    store(state, MachineConfigSpec::ACTIVE, Some((yaml, &config))).await
}

/// Parses and validates `yaml` the way an apply does, for a config that arrives another
/// way (from the image, a URL, STATE); the error in words.
pub(crate) fn check(yaml: &str, mode: Mode) -> Result<Config, String> {
    let config = Config::parse(yaml).map_err(|e| e.to_string())?;
    config.validate(mode).map_err(|e| e.to_string())?;
    Ok(config)
}

fn mode(request: &ApplyConfigurationRequest) -> Result<ApplyMode, Status> {
    let mode = api::ApplyMode::try_from(request.mode)
        .map_err(|_| Status::invalid_argument(format!("unknown apply mode {}", request.mode)))?;
    Ok(match mode {
        api::ApplyMode::Auto => ApplyMode::Auto,
        api::ApplyMode::NoReboot => ApplyMode::NoReboot,
        api::ApplyMode::Reboot => ApplyMode::Reboot,
        api::ApplyMode::Staged => ApplyMode::Staged,
        api::ApplyMode::Try => ApplyMode::Try {
            timeout: request
                .try_timeout
                .and_then(|d| Duration::try_from(d).ok())
                .unwrap_or(DEFAULT_TRY_TIMEOUT),
        },
    })
}

fn api_mode(action: Action) -> api::ApplyMode {
    match action {
        Action::ApplyNow => api::ApplyMode::NoReboot,
        Action::ApplyAndReboot => api::ApplyMode::Reboot,
        Action::Stage => api::ApplyMode::Staged,
        Action::Try { .. } => api::ApplyMode::Try,
    }
}

/// Configs being parsed and validated at once. On blocking threads, so that a costly one
/// (anyone may send one to a node in maintenance mode) never holds a runtime worker that
/// other clients' handshakes need; at most two, so that a flood of them cannot take
/// every blocking thread either.
static PARSING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// The config of an apply, parsed and validated; the error as the client should see it.
async fn parse(data: Vec<u8>, mode: Mode) -> Result<(String, Config), Status> {
    let _turn = PARSING
        .acquire()
        .await
        .map_err(|_| Status::unavailable("the node is shutting down"))?;
    let work = tokio::task::spawn_blocking(move || {
        let text = String::from_utf8(data)
            .map_err(|e| Status::invalid_argument(format!("the config is not UTF-8: {e}")))?;
        let config = Config::parse(&text).map_err(config_status)?;
        config
            .validate(mode)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok((text, config))
    });
    work.await
        .map_err(|e| Status::internal(format!("parsing the config failed: {e}")))?
}

/// Applies a config. It is parsed first, in the call (a client that goes away leaves
/// nothing behind); the rest runs in its own task: a client that goes away (or whose
/// deadline passes) halfway must not leave a config stored but not in effect, or a
/// config tried without its revert.
pub(crate) async fn apply(
    shared: &Arc<Shared>,
    caller: &AuthorizedCaller,
    mut request: ApplyConfigurationRequest,
) -> Result<ApplyConfigurationResult, Status> {
    let data = std::mem::take(&mut request.data);
    let (text, config) = parse(data, shared.validation_mode).await?;
    let task = tokio::spawn(apply_whole(
        shared.clone(),
        caller.clone(),
        request,
        text,
        config,
    ));
    task.await
        .map_err(|e| Status::internal(format!("applying the config failed: {e}")))?
}

async fn apply_whole(
    shared: Arc<Shared>,
    caller: AuthorizedCaller,
    request: ApplyConfigurationRequest,
    text: String,
    config: Config,
) -> Result<ApplyConfigurationResult, Status> {
    let text = text.as_str();
    let mode = mode(&request)?;

    let mut pending = shared.apply_lock.lock().await;
    let current = stored(&shared, MachineConfigSpec::ACTIVE).await?;
    // Anyone may apply the first config; after it, a client certificate is needed
    // (apid may still be on its way out of maintenance mode).
    if !caller.authenticated && current.is_some() {
        return Err(Status::unauthenticated(
            "the node has left maintenance mode: a client certificate is required",
        ));
    }
    if !request.base_digest.is_empty() {
        check_base(&request.base_digest, current.as_ref().map(|(_, c)| c))?;
    }
    let plan = plan::plan(current.as_ref().map(|(_, c)| c), &config, mode).map_err(plan_status)?;
    let mut result = ApplyConfigurationResult {
        metadata: here(),
        mode: api_mode(plan.action) as i32,
        mode_details: plan.details(),
        warnings: plan.warnings.clone(),
        diff: plan.diff(),
    };
    if request.dry_run {
        return Ok(result);
    }
    execute(&shared, &mut pending, &plan, text, &config, current).await?;
    shared.events.publish(
        "config",
        format!("config applied: {}", plan.details()),
        &[
            ("who", caller.who.clone()),
            ("mode", format!("{:?}", api_mode(plan.action))),
        ],
    );
    if plan.action != Action::Stage && !certificates_from(&shared.state, &plan.os_ca).await {
        result.warnings.push(format!(
            "the API certificates did not come within {CERTIFICATES_TIMEOUT:?} (without the OS CA key they come from trustd at the control-plane endpoint); see the secrets.ApiCertificatesController logs"
        ));
    }
    Ok(result)
}

/// Refuses a change made from another config than the one in effect (ABORTED, as
/// for any compare-and-swap that lost): someone applied a config in between.
fn check_base(base: &str, current: Option<&Config>) -> Result<(), Status> {
    let Some(current) = current else {
        return Err(Status::aborted(format!(
            "this change was made from config {base}, but the node has no config in effect: \
             apply a whole config instead"
        )));
    };
    let digest = current.digest().map_err(config_status)?;
    if digest != base {
        return Err(Status::aborted(format!(
            "the config in effect changed since this change was made from it (it was \
             {base}, it is now {digest}): read it again and redo the change"
        )));
    }
    Ok(())
}

/// Does what the plan says.
async fn execute(
    shared: &Arc<Shared>,
    pending: &mut Pending,
    plan: &Plan,
    text: &str,
    config: &Config,
    current: Option<(String, Config)>,
) -> Result<(), Status> {
    if plan.action == Action::Stage {
        return store(
            &shared.state,
            MachineConfigSpec::STAGED,
            Some((text, config)),
        )
        .await;
    }
    store(
        &shared.state,
        MachineConfigSpec::ACTIVE,
        Some((text, config)),
    )
    .await?;
    // Stored: this apply confirms (cancels the revert of) a config applied in try mode.
    if let Some(revert) = pending.revert.take() {
        revert.cancel();
    }
    store(&shared.state, MachineConfigSpec::STAGED, None).await?;
    match (plan.action, current) {
        (Action::ApplyAndReboot, _) => shared.node.power.reboot(Default::default()).await?,
        (Action::Try { timeout }, Some(previous)) => {
            let token = CancellationToken::new();
            pending.revert = Some(token.clone());
            tokio::spawn(revert_after(shared.clone(), token, timeout, previous));
        }
        _ => {}
    }
    Ok(())
}

/// Waits until the node's API certificates come from the OS CA `ca` (PEM).
async fn certificates_from(state: &State, ca: &str) -> bool {
    let key = ResourceKey::of::<ApiCertificatesSpec>(ApiCertificatesSpec::ID);
    let Ok(mut watch) = state.watch(&key).await else {
        return false;
    };
    let issued = async {
        loop {
            match watch.next().await {
                Some(Ok(Event::Created(r) | Event::Updated { new: r, .. }))
                    if r.spec_as::<ApiCertificatesSpec>().is_ok_and(|c| c.ca == ca) =>
                {
                    return true
                }
                Some(_) => continue,
                None => return false,
            }
        }
    };
    tokio::time::timeout(CERTIFICATES_TIMEOUT, issued)
        .await
        .unwrap_or(false)
}

/// Restores the config that was in effect before a try, unless `token` is cancelled first.
async fn revert_after(
    shared: Arc<Shared>,
    token: CancellationToken,
    timeout: Duration,
    previous: (String, Config),
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
    let (yaml, config) = &previous;
    match store(
        &shared.state,
        MachineConfigSpec::ACTIVE,
        Some((yaml, config)),
    )
    .await
    {
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
