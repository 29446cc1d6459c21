//! Basalt's controllers, one module per domain of the resources they write: a reader
//! finds a controller by its output's domain.

pub mod network;
pub mod runtime;

use std::path::PathBuf;

use basalt_controller_runtime::{Engine, RegistrationError};

/// Where the node-facing controllers read the system from.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The kernel command line (`/proc/cmdline`).
    pub cmdline: PathBuf,
}

impl Default for Sources {
    fn default() -> Self {
        Sources {
            cmdline: PathBuf::from("/proc/cmdline"),
        }
    }
}

/// Registers every controller: the one place that lists them.
pub fn register_all(engine: &mut Engine, sources: &Sources) -> Result<(), RegistrationError> {
    engine.register(runtime::KernelCmdlineController::new(
        sources.cmdline.clone(),
    ))?;
    engine.register(network::HostnameController)?;
    Ok(())
}
