use async_trait::async_trait;
use basalt_controller_runtime::{Action, Controller, ControllerError, Input, Output, Runtime};
use basalt_machine_config::Config;
use basalt_resources::cluster::MachineRole;
use basalt_resources::config::{HostnameConfigSpec, MachineConfigSpec, MachineTypeSpec};
use basalt_resources::k8s::{ControlPlaneEndpointSpec, KubePrismConfigSpec};
use basalt_resources::kubespan::KubeSpanConfigSpec;
use basalt_resources::network::{LinkConfigSpec, NetworkServersConfigSpec, RouteConfig};
use basalt_resources::runtime::{ExtensionServiceConfigSpec, ExtensionServiceFile};
use basalt_resources::secrets::OsRootSpec;

/// Parses the machine config in effect (`MachineConfig/active`) and publishes it per
/// concern: the role, the hostname, links and servers (network), the OS CA (secrets), KubePrism
/// and the control-plane endpoint (k8s), KubeSpan, and extension services. Without a
/// config (maintenance mode) there are none; a document removed from the config takes
/// its resources with it.
#[derive(Debug, Default)]
pub struct MachineConfigController;

#[async_trait]
impl Controller for MachineConfigController {
    basalt_controller_runtime::declare! {
        name: "config.MachineConfigController",
        inputs: [
            Input::weak::<MachineConfigSpec>().with_id(MachineConfigSpec::ACTIVE),
        ],
        outputs: [
            Output::exclusive::<MachineTypeSpec>(),
            Output::exclusive::<HostnameConfigSpec>(),
            Output::exclusive::<LinkConfigSpec>(),
            Output::exclusive::<NetworkServersConfigSpec>(),
            Output::exclusive::<OsRootSpec>(),
            Output::exclusive::<KubePrismConfigSpec>(),
            Output::exclusive::<ControlPlaneEndpointSpec>(),
            Output::exclusive::<KubeSpanConfigSpec>(),
            Output::exclusive::<ExtensionServiceConfigSpec>(),
        ],
    }

    async fn reconcile(&mut self, rt: &mut Runtime) -> Result<Action, ControllerError> {
        let Some(active) = rt
            .get::<MachineConfigSpec>(MachineConfigSpec::ACTIVE)
            .await?
        else {
            return Ok(Action::Done);
        };
        // The config in effect was validated when it was applied. One that no longer
        // parses (a corrupt store) fails the run: the resources of the last good one stay
        // and the error is retried with backoff.
        let config = Config::parse(&active.spec.yaml).map_err(ControllerError::other)?;
        publish_machine(rt, &config).await?;
        publish_cluster(rt, &config).await?;
        publish_features(rt, &config).await?;
        Ok(Action::Done)
    }
}

async fn publish_machine(rt: &mut Runtime, config: &Config) -> Result<(), ControllerError> {
    let Some(machine) = &config.machine else {
        return Ok(());
    };
    let role = match machine.role {
        basalt_machine_config::Role::Controlplane => MachineRole::ControlPlane,
        basalt_machine_config::Role::Worker => MachineRole::Worker,
    };
    rt.put_spec(MachineTypeSpec::ID, MachineTypeSpec { role })
        .await?;
    if let Some(hostname) = &machine.hostname {
        let spec = HostnameConfigSpec {
            hostname: hostname.clone(),
        };
        rt.put_spec(HostnameConfigSpec::ID, spec).await?;
    }
    if let Some(ca) = &machine.ca {
        let spec = OsRootSpec {
            ca: ca.crt.clone(),
            ca_key: ca.key.expose().to_string(),
            cert_sans: machine.cert_sans.clone(),
            token: machine.token.expose().to_string(),
        };
        rt.put_spec(OsRootSpec::ID, spec).await?;
    }
    let Some(network) = &machine.network else {
        return Ok(());
    };
    for link in &network.links {
        let spec = LinkConfigSpec {
            dhcp: link.dhcp,
            mtu: link.mtu,
            addresses: link.addresses.clone(),
            routes: link
                .routes
                .iter()
                .map(|r| RouteConfig {
                    network: r.network.clone(),
                    gateway: r.gateway.map(|g| g.to_string()),
                    metric: r.metric,
                })
                .collect(),
        };
        rt.put_spec(&link.name, spec).await?;
    }
    let servers = NetworkServersConfigSpec {
        nameservers: network.nameservers.iter().map(|n| n.to_string()).collect(),
        time_servers: network.time_servers.clone(),
    };
    rt.put_spec(NetworkServersConfigSpec::ID, servers).await
}

async fn publish_cluster(rt: &mut Runtime, config: &Config) -> Result<(), ControllerError> {
    // Without a KubePrismConfig document KubePrism is on at its default port: a node
    // needs it to reach the API servers.
    let kubeprism = config.kubeprism.clone().unwrap_or_default();
    let cluster = config.cluster.as_ref();
    let spec = KubePrismConfigSpec {
        enabled: kubeprism.enabled,
        port: kubeprism.port,
        ca: cluster.and_then(|c| c.ca.as_ref()).map(|ca| ca.crt.clone()),
    };
    rt.put_spec(KubePrismConfigSpec::ID, spec).await?;
    if let Some(cluster) = cluster {
        let spec = ControlPlaneEndpointSpec {
            endpoint: cluster.control_plane.endpoint.clone(),
        };
        rt.put_spec(ControlPlaneEndpointSpec::ID, spec).await?;
    }
    Ok(())
}

async fn publish_features(rt: &mut Runtime, config: &Config) -> Result<(), ControllerError> {
    if let Some(kubespan) = &config.kubespan {
        let spec = KubeSpanConfigSpec {
            enabled: kubespan.enabled,
            advertise_kubernetes_networks: kubespan.advertise_kubernetes_networks,
            allow_down_peer_bypass: kubespan.allow_down_peer_bypass,
            mtu: kubespan.mtu,
            endpoint_filters: kubespan.endpoint_filters.clone(),
        };
        rt.put_spec(KubeSpanConfigSpec::ID, spec).await?;
    }
    for service in &config.extensions {
        let spec = ExtensionServiceConfigSpec {
            environment: service.environment.clone(),
            config_files: service
                .config_files
                .iter()
                .map(|f| ExtensionServiceFile {
                    mount_path: f.mount_path.clone(),
                    content: f.content.clone(),
                })
                .collect(),
        };
        rt.put_spec(&service.name, spec).await?;
    }
    Ok(())
}
