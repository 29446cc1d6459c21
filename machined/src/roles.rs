//! The services a node runs for its role, from the image layers it has: a control plane
//! runs etcd (Debian's, from the etcd layer); a worker and a node in maintenance mode
//! run none of these. [`follow`] keeps the node's [`ServiceSet`] in step with the role
//! of the config in effect.

use std::path::PathBuf;
use std::sync::Arc;

use basalt_resource::ResourceKey;
use basalt_resources::cluster::MachineRole;
use basalt_resources::config::MachineTypeSpec;
use basalt_state::{Event, State};

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
        "etcd",
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

/// Keeps `set` at `fixed` plus the services of the node's role, as `MachineType/machine-type`
/// changes, until the state goes away. A set that cannot be supervised is logged; the
/// current one runs on.
pub async fn follow(
    state: State,
    set: Arc<ServiceSet>,
    fixed: Vec<ServiceDefinition>,
    layout: Layout,
) {
    let key = ResourceKey::of::<MachineTypeSpec>(MachineTypeSpec::ID);
    let mut watch = match state.watch(&key).await {
        Ok(watch) => watch,
        Err(error) => {
            tracing::error!(%error, "cannot follow the node's role: it runs no role services");
            return;
        }
    };
    let mut role = None;
    loop {
        let mut definitions = fixed.clone();
        definitions.extend(services(role, &layout));
        if let Err(error) = set.replace(definitions).await {
            tracing::error!(%error, ?role, "the services of the node's role cannot run");
        }
        role = loop {
            match watch.next().await {
                Some(Ok(Event::Created(r) | Event::Updated { new: r, .. })) => {
                    match basalt_resource::Resource::<MachineTypeSpec>::try_from(r.as_ref()) {
                        Ok(typed) => break Some(typed.spec.role),
                        Err(error) => tracing::warn!(%error, "an unreadable machine type"),
                    }
                }
                Some(Ok(Event::Destroyed(_))) => break None,
                Some(_) => continue,
                None => return,
            }
        };
    }
}
