//! Meta domain: facts about the state itself, and the one place every built-in type is
//! registered.

pub use crate::registry::{PrintColumn, ResourceDefinitionSpec};
use crate::{config, network, runtime, Registry, ResourceError};

/// A registry with every built-in resource type.
pub fn builtin_registry() -> Result<Registry, ResourceError> {
    let mut registry = Registry::new();
    registry.register::<config::HostnameConfigSpec>()?;
    registry.register::<config::MachineConfigSpec>()?;
    registry.register::<network::HostnameSpec>()?;
    registry.register::<runtime::KernelCmdlineSpec>()?;
    registry.register::<runtime::ServiceSpec>()?;
    registry.register::<runtime::MachineStatusSpec>()?;
    Ok(registry)
}
