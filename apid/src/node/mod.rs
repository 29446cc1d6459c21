//! What apid needs from the node it runs on, as traits: machined provides the real
//! implementations (its service supervisor, its power sequencer). `local` holds
//! in-process implementations over the host's /proc and /sys, real child processes and
//! the real state, used by tests and by a stand-alone apid.
//!
//! Values use the wire types of `basalt_api::machine::v1` directly (with `metadata`
//! unset): they are plain data, and a second set of structs would only be copied field
//! by field.

pub mod local;

use std::path::PathBuf;

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

impl From<NodeError> for tonic::Status {
    fn from(e: NodeError) -> Self {
        let message = e.to_string();
        match e {
            NodeError::NotFound(_) => tonic::Status::not_found(message),
            NodeError::InvalidArgument(_) => tonic::Status::invalid_argument(message),
            NodeError::PermissionDenied(_) => tonic::Status::permission_denied(message),
            NodeError::FailedPrecondition(_) => tonic::Status::failed_precondition(message),
            NodeError::Unavailable(_) => tonic::Status::unavailable(message),
            NodeError::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => tonic::Status::not_found(message),
                std::io::ErrorKind::PermissionDenied => tonic::Status::permission_denied(message),
                _ => tonic::Status::internal(message),
            },
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
    /// The roots, for error messages and documentation.
    fn roots(&self) -> Vec<PathBuf>;
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
