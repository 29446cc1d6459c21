//! The node's parts the Machine API reaches, each behind a trait (so that the metal and
//! container modes can differ, and tests can see the seams): services, power, the
//! running system, files. [`LocalNode`] holds the implementations: a process supervisor,
//! power requests recorded in the state, the host's /proc and /sys, files under allowed
//! roots.
//!
//! Values use the wire types of `basalt_api::machine::v1` directly (with `metadata`
//! unset): they are plain data, and a second set of structs would only be copied field
//! by field.

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
    DefinitionError, HealthCheck, HealthKind, RestartPolicy, ServiceDefinition, ServiceResources,
    ServiceSet, Supervisor, SupervisorOptions, SUPERVISOR_OWNER,
};
pub use system::ProcSystem;

use async_trait::async_trait;
use basalt_api::machine::v1 as api;
use bytes::Bytes;
use futures::stream::BoxStream;

/// Chunks of a byte stream (logs, dmesg, a file).
pub type ByteStream = BoxStream<'static, Result<Bytes, NodeError>>;

/// Entries of a directory listing.
pub type FileStream = BoxStream<'static, Result<api::FileInfo, NodeError>>;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl NodeError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        NodeError::Io {
            what: what.into(),
            source,
        }
    }
}

/// The node's services (kubelet, etcd, extensions...).
#[async_trait]
pub trait Services: Send + Sync + 'static {
    async fn list(&self) -> Result<Vec<api::ServiceInfo>, NodeError>;
    /// Each returns a short human answer ("service kubelet started").
    async fn start(&self, id: &str) -> Result<String, NodeError>;
    async fn stop(&self, id: &str) -> Result<String, NodeError>;
    async fn restart(&self, id: &str) -> Result<String, NodeError>;
    /// A service's output: the last `tail` lines (`None`: all that are kept), then, with
    /// `follow`, new output as it comes until the stream is dropped.
    async fn logs(
        &self,
        id: &str,
        follow: bool,
        tail: Option<usize>,
    ) -> Result<ByteStream, NodeError>;
}

/// What to wipe on reset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResetOptions {
    pub graceful: bool,
    pub reboot: bool,
    /// Partition labels; empty means every system partition.
    pub wipe: Vec<String>,
}

/// Reboot, shutdown and reset. Each call starts the action and returns; the API answers
/// before the node goes down.
#[async_trait]
pub trait Power: Send + Sync + 'static {
    async fn reboot(&self, mode: api::RebootMode) -> Result<(), NodeError>;
    async fn shutdown(&self, force: bool) -> Result<(), NodeError>;
    async fn reset(&self, options: ResetOptions) -> Result<(), NodeError>;
}

/// A read-only view of the running system.
#[async_trait]
pub trait System: Send + Sync + 'static {
    async fn processes(&self) -> Result<Vec<api::Process>, NodeError>;
    async fn memory(&self) -> Result<api::MemoryResult, NodeError>;
    async fn mounts(&self) -> Result<Vec<api::Mount>, NodeError>;
    async fn disks(&self) -> Result<Vec<api::Disk>, NodeError>;
    async fn netstat(&self, filter: api::NetstatFilter) -> Result<Vec<api::Socket>, NodeError>;
    /// The kernel log: the last `tail` lines (`None`: all), then new lines with `follow`.
    async fn dmesg(&self, follow: bool, tail: Option<usize>) -> Result<ByteStream, NodeError>;
}

/// Files under the allowed roots only. A path outside them — also through a symlink or
/// `..` — is `PermissionDenied`.
#[async_trait]
pub trait Files: Send + Sync + 'static {
    async fn read(&self, path: &str) -> Result<ByteStream, NodeError>;
    /// `max_depth` 0 means no limit; without `recurse` only the root's own entries.
    async fn list(
        &self,
        root: &str,
        recurse: bool,
        max_depth: u32,
    ) -> Result<FileStream, NodeError>;
}

/// The node implementations apid serves from.
#[derive(Clone)]
pub struct NodeHandles {
    pub services: std::sync::Arc<dyn Services>,
    pub power: std::sync::Arc<dyn Power>,
    pub system: std::sync::Arc<dyn System>,
    pub files: std::sync::Arc<dyn Files>,
}

impl std::fmt::Debug for NodeHandles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeHandles")
    }
}

/// The local implementations with their concrete types, for the parts that are not in
/// the traits: starting and stopping the supervisor, subscribing to power requests.
#[derive(Debug, Clone)]
pub struct LocalNode {
    pub services: Arc<ServiceSet>,
    pub power: Arc<StatePower>,
    pub system: Arc<ProcSystem>,
    pub files: Arc<LocalFiles>,
}

impl LocalNode {
    /// Services are defined but not started: call `services.start_all()`.
    pub fn new(
        state: State,
        services: Vec<ServiceDefinition>,
        file_roots: Vec<PathBuf>,
    ) -> Result<Self, NodeError> {
        Ok(LocalNode {
            services: Arc::new(ServiceSet::new(
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
            services: self.services.clone(),
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
