use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;

/// What went wrong making, running or removing a local cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster name {name:?} is not valid: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("{0}")]
    Invalid(String),
    #[error(
        "cluster {name:?} exists ({}): remove it with `osctl cluster destroy --name {name}`",
        dir.display()
    )]
    Exists { name: String, dir: PathBuf },
    #[error("no cluster {name:?} (no record in {})", dir.display())]
    NotFound { name: String, dir: PathBuf },
    #[error("subnet {cidr} is in use by {by}: choose another with --cidr")]
    SubnetInUse { cidr: Ipv4Net, by: String },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the cluster record {}: {source}", path.display())]
    Record {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Sys(#[from] basalt_sys::SysError),
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("no image in {}: run `make image` (it writes rootfs/ there)", dir.display())]
    NoImage { dir: PathBuf },
    #[error("node {node}: {what}")]
    Node { node: String, what: String },
}

impl ClusterError {
    pub(crate) fn io(what: &'static str, path: &Path, source: std::io::Error) -> Self {
        ClusterError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}
