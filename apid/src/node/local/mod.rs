//! In-process implementations of the node traits over the real host: a process
//! supervisor, /proc and /sys, files under allowed roots, and power requests recorded in
//! the state.

mod files;
mod logbuf;
mod power;
mod procfs;
mod services;
mod system;

use std::path::PathBuf;
use std::sync::Arc;

use basalt_resource::{Resource, ResourceSpec};
use basalt_state::{State, StateError};

pub use files::LocalFiles;
pub use logbuf::LogLimits;
pub use power::{PowerRequest, StatePower, POWER_OWNER};
pub use services::{
    RestartPolicy, ServiceDefinition, Supervisor, SupervisorOptions, SUPERVISOR_OWNER,
};
pub use system::ProcSystem;

use super::{NodeError, NodeHandles};

/// The local implementations with their concrete types, for the parts that are not in
/// the traits: starting and stopping the supervisor, subscribing to power requests.
#[derive(Debug, Clone)]
pub struct LocalNode {
    pub supervisor: Arc<Supervisor>,
    pub power: Arc<StatePower>,
    pub system: Arc<ProcSystem>,
    pub files: Arc<LocalFiles>,
}

impl LocalNode {
    /// Services are defined but not started: call `supervisor.start_all()`.
    pub fn new(
        state: State,
        services: Vec<ServiceDefinition>,
        file_roots: Vec<PathBuf>,
    ) -> Result<Self, NodeError> {
        Ok(LocalNode {
            supervisor: Arc::new(Supervisor::new(
                state.clone(),
                services,
                SupervisorOptions::default(),
            )?),
            power: Arc::new(StatePower::new(state)),
            system: Arc::new(ProcSystem::new()),
            files: Arc::new(LocalFiles::new(file_roots)),
        })
    }

    pub fn handles(&self) -> NodeHandles {
        NodeHandles {
            services: self.supervisor.clone(),
            power: self.power.clone(),
            system: self.system.clone(),
            files: self.files.clone(),
        }
    }
}

impl NodeHandles {
    /// The local implementations behind the traits; services are defined, not started
    /// (use [`LocalNode`] to start them and to subscribe to power requests).
    pub fn local(
        state: State,
        services: Vec<ServiceDefinition>,
        file_roots: Vec<PathBuf>,
    ) -> Result<Self, NodeError> {
        Ok(LocalNode::new(state, services, file_roots)?.handles())
    }
}

/// Creates or replaces the resource `id` of type `S` as `owner`.
async fn put_resource<S: ResourceSpec>(
    state: &State,
    owner: &str,
    id: &str,
    spec: S,
) -> Result<(), StateError> {
    state
        .put(Resource::new(id, spec).into_any(), owner)
        .await
        .map(|_| ())
}
