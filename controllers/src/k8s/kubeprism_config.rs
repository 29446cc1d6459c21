use async_trait::async_trait;
use basalt_controller_runtime::{Action, Controller, ControllerError, Input, Output, Runtime};
use basalt_machine_config::{Config, KubePrismConfig};
use basalt_resource::config::MachineConfigSpec;
use basalt_resource::k8s::{ControlPlaneEndpointSpec, KubePrismConfigSpec};

/// Turns the machine config in effect into what KubePrism runs on: its settings (the
/// `KubePrismConfig` document; without one KubePrism is on at port 7445, as a node
/// needs it to reach the API servers), the Kubernetes CA its HTTPS `/readyz` checks
/// verify against, and the cluster's control-plane endpoint. Without a config
/// (maintenance mode) there are neither.
#[derive(Debug, Default)]
pub struct KubePrismConfigController;

#[async_trait]
impl Controller for KubePrismConfigController {
    fn name(&self) -> &'static str {
        "k8s.KubePrismConfigController"
    }

    fn inputs(&self) -> Vec<Input> {
        vec![Input::weak::<MachineConfigSpec>().with_id(MachineConfigSpec::ACTIVE)]
    }

    fn outputs(&self) -> Vec<Output> {
        vec![
            Output::exclusive::<KubePrismConfigSpec>(),
            Output::exclusive::<ControlPlaneEndpointSpec>(),
        ]
    }

    async fn reconcile(&mut self, rt: &mut Runtime) -> Result<Action, ControllerError> {
        let Some(active) = rt
            .get::<MachineConfigSpec>(MachineConfigSpec::ACTIVE)
            .await?
        else {
            return Ok(Action::Done);
        };
        // The config in effect was validated when it was applied; one that no longer
        // parses is an error (retried with backoff), not a reason to stop KubePrism.
        let config = Config::parse(&active.spec.yaml).map_err(ControllerError::other)?;
        let document = config
            .kubeprism
            .clone()
            .unwrap_or_else(KubePrismConfig::default);
        let cluster = config.cluster.as_ref();
        rt.put_spec(
            KubePrismConfigSpec::ID,
            KubePrismConfigSpec {
                enabled: document.enabled,
                port: document.port,
                ca: cluster.and_then(|c| c.ca.as_ref()).map(|ca| ca.crt.clone()),
            },
        )
        .await?;
        if let Some(cluster) = cluster {
            rt.put_spec(
                ControlPlaneEndpointSpec::ID,
                ControlPlaneEndpointSpec {
                    endpoint: cluster.control_plane.endpoint.clone(),
                },
            )
            .await?;
        }
        Ok(Action::Done)
    }
}
