//! Basalt's controllers, one module per domain of the resources they write: a reader
//! finds a controller by its output's domain.

pub mod k8s;
pub mod network;
pub mod runtime;

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use basalt_controller_runtime::{Engine, RegistrationError};

/// Where the node-facing controllers read the system from.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The kernel command line (`/proc/cmdline`).
    pub cmdline: PathBuf,
    /// Where KubePrism listens (at the configured port).
    pub kubeprism_listen: IpAddr,
}

impl Default for Sources {
    fn default() -> Self {
        Sources {
            cmdline: PathBuf::from("/proc/cmdline"),
            kubeprism_listen: IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }
}

/// Registers every controller: the one place that lists them.
pub fn register_all(engine: &mut Engine, sources: &Sources) -> Result<(), RegistrationError> {
    engine.register(runtime::KernelCmdlineController::new(
        sources.cmdline.clone(),
    ))?;
    engine.register(network::HostnameController)?;
    engine.register(k8s::KubePrismConfigController)?;
    engine.register(k8s::KubePrismEndpointsController)?;
    engine.register(k8s::KubePrismController::new(sources.kubeprism_listen))?;
    Ok(())
}
