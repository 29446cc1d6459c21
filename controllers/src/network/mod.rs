//! Controllers of the network domain: the hostname; the desired links, addresses, routes
//! and resolvers merged from their sources (`ConfigController`); applied over rtnetlink
//! (`ApplyController`); observed from the kernel (`StatusController`); and the files the
//! node's resolver reads (`EtcFilesController`).

mod apply;
mod cmdline;
mod config;
mod etc;
mod hostname;
pub mod netlink;
mod status;

pub use apply::ApplyController;
pub use cmdline::{IpArg, IpArgError};
pub use config::ConfigController;
pub use etc::EtcFilesController;
pub use hostname::HostnameController;
pub use netlink::Netlink;
pub use status::StatusController;

use basalt_controller_runtime::ControllerError;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("opening a netlink socket: {source}")]
    Open {
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Netlink {
        what: &'static str,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("the network controllers need a waker: register them as plain controllers")]
    NoWaker,
    #[error("{}", problems.join("; "))]
    Apply { problems: Vec<String> },
    #[error("setting the kernel's host name: {source}")]
    Hostname {
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl NetworkError {
    fn netlink(what: &'static str) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
        move |source| NetworkError::Netlink { what, source }
    }
}

impl From<NetworkError> for ControllerError {
    fn from(error: NetworkError) -> Self {
        ControllerError::Other(Box::new(error))
    }
}
