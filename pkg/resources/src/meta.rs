//! Meta domain: facts about the state itself, and the one place every built-in type is
//! registered.

pub use basalt_resource::{PrintColumn, ResourceDefinitionSpec};
use basalt_resource::{Registry, ResourceError};

use crate::{cluster, config, k8s, kubespan, network, runtime, secrets, time};

/// A registry with every built-in resource type.
pub fn builtin_registry() -> Result<Registry, ResourceError> {
    let mut registry = Registry::new();
    registry.register::<config::HostnameConfigSpec>()?;
    registry.register::<config::MachineConfigSpec>()?;
    registry.register::<config::MachineTypeSpec>()?;
    registry.register::<cluster::MemberSpec>()?;
    registry.register::<cluster::ForwardTargetSpec>()?;
    registry.register::<network::HostnameSpec>()?;
    registry.register::<network::LinkConfigSpec>()?;
    registry.register::<network::NetworkServersConfigSpec>()?;
    registry.register::<network::LinkSpecSpec>()?;
    registry.register::<network::AddressSpecSpec>()?;
    registry.register::<network::RouteSpecSpec>()?;
    registry.register::<network::ResolverSpecSpec>()?;
    registry.register::<network::LinkStatusSpec>()?;
    registry.register::<network::AddressStatusSpec>()?;
    registry.register::<network::RouteStatusSpec>()?;
    registry.register::<network::ResolverStatusSpec>()?;
    registry.register::<kubespan::KubeSpanConfigSpec>()?;
    registry.register::<runtime::ExtensionServiceConfigSpec>()?;
    registry.register::<runtime::KernelCmdlineSpec>()?;
    registry.register::<runtime::ServiceSpec>()?;
    registry.register::<runtime::MachineStatusSpec>()?;
    registry.register::<runtime::VersionSpec>()?;
    registry.register::<time::TimeStatusSpec>()?;
    registry.register::<runtime::PowerRequestSpec>()?;
    registry.register::<runtime::MachineConfigStatusSpec>()?;
    registry.register::<secrets::OsRootSpec>()?;
    registry.register::<secrets::ApiCertificatesSpec>()?;
    registry.register::<k8s::KubePrismConfigSpec>()?;
    registry.register::<k8s::ControlPlaneEndpointSpec>()?;
    registry.register::<k8s::ControlPlaneMemberSpec>()?;
    registry.register::<k8s::KubePrismEndpointsSpec>()?;
    registry.register::<k8s::KubePrismStatusSpec>()?;
    registry.register::<k8s::KubePrismUpstreamSpec>()?;
    Ok(registry)
}
