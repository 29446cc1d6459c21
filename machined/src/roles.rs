//! The services a node runs for its role, from the image layers it has: a control plane
//! runs etcd (Debian's, from the etcd layer); a worker and a node in maintenance mode
//! run none of these. Any configured node also runs the services its layers bring
//! ([`crate::extension_services`]). [`follow`] keeps the node's [`ServiceSet`] in step
//! with the role of the config in effect.

use std::path::PathBuf;
use std::sync::Arc;

use basalt_resource::{Kind, ResourceKey};
use basalt_resources::cluster::MachineRole;
use basalt_resources::config::MachineTypeSpec;
use basalt_resources::runtime::ExtensionServiceConfigSpec;
use basalt_state::{State, StateError, WatchKindOptions};

use crate::extension_services;
use crate::parts::{HealthCheck, ServiceDefinition, ServiceSet};

/// Where a node's image layers are (each mounted, or unpacked in a container node's
/// image, at `<dir>/<name>`).
pub const EXTENSIONS_DIR: &str = "/system/extensions";

/// etcd's client and peer URLs: loopback only, one member per control plane for now.
const ETCD_CLIENT: &str = "http://127.0.0.1:2379";
const ETCD_PEER: &str = "http://127.0.0.1:2380";
/// The member's name; constant, so that a renamed node keeps its etcd data.
const ETCD_NAME: &str = "basalt";
const ETCD_MEMORY_MAX: u64 = 512 << 20;
const ETCD_PIDS_MAX: u64 = 512;
/// etcd's service id.
const ETCD: &str = "etcd";
/// The names of the services a role may run: never an extension service's, whatever
/// the node's role.
const ROLE_SERVICES: &[&str] = &[ETCD];

/// Where the role's services find what they need.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The image layers' directory ([`EXTENSIONS_DIR`] on a node).
    pub extensions: PathBuf,
    /// The STATE directory services keep data in; `None` without STATE.
    pub state: Option<PathBuf>,
}

impl Layout {
    fn etcd_binary(&self) -> PathBuf {
        self.extensions.join("etcd/usr/bin/etcd")
    }
}

/// The services of `role` (none before the node has one).
pub fn services(role: Option<MachineRole>, layout: &Layout) -> Vec<ServiceDefinition> {
    match role {
        Some(MachineRole::ControlPlane) => vec![etcd(layout)],
        Some(MachineRole::Worker) | None => Vec::new(),
    }
}

fn etcd(layout: &Layout) -> ServiceDefinition {
    let binary = layout.etcd_binary();
    let data = layout
        .state
        .as_deref()
        .map(|state| state.join("etcd"))
        .unwrap_or_default();
    let initial_cluster = format!("{ETCD_NAME}={ETCD_PEER}");
    let definition = ServiceDefinition::new(
        ETCD,
        &[
            &binary.to_string_lossy(),
            "--name",
            ETCD_NAME,
            "--data-dir",
            &data.to_string_lossy(),
            "--listen-client-urls",
            ETCD_CLIENT,
            "--advertise-client-urls",
            ETCD_CLIENT,
            "--listen-peer-urls",
            ETCD_PEER,
            "--initial-advertise-peer-urls",
            ETCD_PEER,
            "--initial-cluster",
            &initial_cluster,
        ],
    )
    .health(HealthCheck::http(format!("{ETCD_CLIENT}/health")).expect(r#""health":"true""#))
    .memory_max(ETCD_MEMORY_MAX)
    .pids_max(ETCD_PIDS_MAX)
    // Unprivileged ports, files it owns: it needs no capability.
    .capabilities(Vec::new());
    if !binary.exists() {
        definition.skip(format!(
            "the etcd layer is not in this image (no {})",
            binary.display()
        ))
    } else if layout.state.is_none() {
        definition.skip("no STATE: etcd keeps its data there")
    } else {
        definition
    }
}

/// Keeps `set` at `fixed`, plus the services of the node's role and, once it has one,
/// the services its image layers bring (see [`crate::extension_services`]), as
/// `MachineType/machine-type` and the `ExtensionServiceConfig`s change, until the state
/// goes away. A set that cannot be supervised is logged, and the node runs without its
/// extension services, or else on the current set.
pub async fn follow(
    state: State,
    set: Arc<ServiceSet>,
    fixed: Vec<ServiceDefinition>,
    layout: Layout,
) {
    loop {
        let watches = async {
            let role = state
                .watch(&ResourceKey::of::<MachineTypeSpec>(MachineTypeSpec::ID))
                .await?;
            let configs = state
                .watch_kind(
                    &Kind::of::<ExtensionServiceConfigSpec>(),
                    WatchKindOptions::default(),
                )
                .await?;
            Ok::<_, StateError>((role, configs))
        };
        let (mut role_watch, mut config_watch) = match watches.await {
            Ok(watches) => watches,
            Err(error) => {
                tracing::error!(%error, "cannot follow the node's role and configs: it runs no role or extension services");
                return;
            }
        };
        loop {
            run_services(&state, &set, &fixed, &layout).await;
            // What changed does not matter: everything is read afresh.
            let event = tokio::select! {
                event = role_watch.next() => event,
                event = config_watch.next() => event,
            };
            match event {
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    tracing::warn!(%error, "following the node's role: watching afresh");
                    break;
                }
                None => return,
            }
        }
    }
}

/// Makes `set` the services the node should run now. If the state cannot be read, the
/// services stay as they are.
async fn run_services(
    state: &State,
    set: &ServiceSet,
    fixed: &[ServiceDefinition],
    layout: &Layout,
) {
    let role = match state.get_as::<MachineTypeSpec>(MachineTypeSpec::ID).await {
        Ok(machine_type) => Some(machine_type.spec.role),
        Err(StateError::NotFound(_)) => None,
        Err(error) => {
            tracing::error!(%error, "cannot read the node's role: its services stay as they are");
            return;
        }
    };
    let mut definitions = fixed.to_vec();
    definitions.extend(services(role, layout));
    let mut extensions = Vec::new();
    if role.is_some() {
        let configs = match state.list_as::<ExtensionServiceConfigSpec>().await {
            Ok(configs) => configs
                .into_iter()
                .map(|r| (r.metadata.id.clone(), r.spec))
                .collect(),
            Err(error) => {
                tracing::error!(%error, "cannot read the extension services' configs: the services stay as they are");
                return;
            }
        };
        let dir = layout.extensions.clone();
        let loaded = tokio::task::spawn_blocking(move || extension_services::load(&dir))
            .await
            .unwrap_or_default();
        extensions = extension_services::fit(&definitions, ROLE_SERVICES, loaded, &configs);
    }
    if !extensions.is_empty() {
        let mut all = definitions.clone();
        all.extend(extensions);
        match set.replace(all).await {
            Ok(()) => return,
            Err(error) => {
                tracing::error!(%error, "the extension services cannot run: the node runs without them")
            }
        }
    }
    if let Err(error) = set.replace(definitions).await {
        tracing::error!(%error, ?role, "the services of the node's role cannot run");
    }
}
