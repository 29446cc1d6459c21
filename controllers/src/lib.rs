//! Basalt's controllers, one module per domain of the resources they write: a reader
//! finds a controller by its output's domain. The `config` domain is the only one that
//! reads the machine config; the others read the typed resources it publishes.

pub mod cluster;
pub mod config;
pub mod k8s;
pub mod network;
pub mod runtime;
pub mod secrets;
pub mod time;
mod trustd;

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use basalt_controller_runtime::{Engine, RegistrationError};

pub use secrets::DEFAULT_API_CERT_VALIDITY;

/// What the node-facing controllers need to know of the node process: where to read the
/// system from, where to listen, and how it is reached.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The kernel command line (`/proc/cmdline`).
    pub cmdline: PathBuf,
    /// Where KubePrism listens (at the configured port).
    pub kubeprism_listen: IpAddr,
    /// Names and addresses the node's API is reached by, for its certificate (besides
    /// the hostname and the config's `certSANs`).
    pub api_sans: Vec<String>,
    /// How long the API certificates live; renewed at half their life.
    pub api_cert_validity: Duration,
    /// Where a node without the CA key finds trustd on the control-plane endpoint's host.
    pub trustd_port: u16,
    /// The network namespace whose links, addresses and routes the node manages and
    /// reports; none in a process that shares the host's (tests).
    pub netlink: Option<network::Netlink>,
    /// Where the node's `hosts` and `resolv.conf` are written (and whether the kernel's
    /// host name is set); neither without it.
    pub etc_dir: Option<PathBuf>,
    /// The clock the time servers set; none where the clock is not the node's own
    /// (container nodes, tests): the offset is measured and reported only.
    pub clock: Option<Arc<dyn time::Clock>>,
}

impl Default for Sources {
    fn default() -> Self {
        Sources {
            cmdline: PathBuf::from("/proc/cmdline"),
            kubeprism_listen: IpAddr::V4(Ipv4Addr::LOCALHOST),
            api_sans: Vec::new(),
            api_cert_validity: DEFAULT_API_CERT_VALIDITY,
            trustd_port: basalt_api::TRUSTD_PORT,
            netlink: None,
            etc_dir: None,
            clock: None,
        }
    }
}

/// Registers every controller: the one place that lists them.
pub fn register_all(engine: &mut Engine, sources: &Sources) -> Result<(), RegistrationError> {
    engine.register(config::MachineConfigController)?;
    engine.register(runtime::KernelCmdlineController::new(
        sources.cmdline.clone(),
    ))?;
    engine.register(runtime::MachineStatusController)?;
    engine.register(runtime::VersionController::new(PathBuf::from(
        "/proc/sys/kernel/osrelease",
    )))?;
    engine.register(network::HostnameController)?;
    engine.register(network::ConfigController)?;
    if let Some(netlink) = &sources.netlink {
        engine.register(network::StatusController::new(netlink.clone()))?;
        engine.register(network::ApplyController::new(netlink.clone()))?;
    }
    if let Some(dir) = &sources.etc_dir {
        engine.register(network::EtcFilesController::new(dir.clone(), true))?;
    }
    engine.register(time::SyncController::new(sources.clock.clone()))?;
    engine.register(secrets::ApiCertificatesController::new(
        sources.api_sans.clone(),
        sources.api_cert_validity,
        sources.trustd_port,
    ))?;
    engine.register(cluster::MembersController::new(
        sources.api_sans.clone(),
        sources.trustd_port,
    ))?;
    engine.register(cluster::ForwardTargetsController::new(
        sources.api_sans.clone(),
    ))?;
    engine.register(k8s::KubePrismEndpointsController)?;
    engine.register(k8s::KubePrismController::new(sources.kubeprism_listen))?;
    Ok(())
}
