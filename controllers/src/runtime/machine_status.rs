use async_trait::async_trait;
use basalt_controller_runtime::{Action, Controller, ControllerError, Input, Output, Runtime};
use basalt_resources::config::MachineConfigSpec;
use basalt_resources::runtime::{MachineStage, MachineStatusSpec, PowerAction, PowerRequestSpec};
use basalt_resources::secrets::ApiCertificatesSpec;

/// Publishes where the machine is in its life (`MachineStatus/machine`), its one owner:
/// going down once a power request is accepted; running once it has a config and the
/// API serves the cluster's certificates; booting while a config waits for them; else
/// in maintenance mode, waiting for a config.
#[derive(Debug, Default)]
pub struct MachineStatusController;

#[async_trait]
impl Controller for MachineStatusController {
    basalt_controller_runtime::declare! {
        name: "runtime.MachineStatusController",
        inputs: [
            Input::weak::<MachineConfigSpec>().with_id(MachineConfigSpec::ACTIVE),
            Input::weak::<ApiCertificatesSpec>().with_id(ApiCertificatesSpec::ID),
            Input::weak::<PowerRequestSpec>().with_id(PowerRequestSpec::ID),
        ],
        outputs: [
            Output::exclusive::<MachineStatusSpec>(),
        ],
    }

    async fn reconcile(&mut self, rt: &mut Runtime) -> Result<Action, ControllerError> {
        let power = rt.get::<PowerRequestSpec>(PowerRequestSpec::ID).await?;
        let config = rt
            .get::<MachineConfigSpec>(MachineConfigSpec::ACTIVE)
            .await?;
        let certificates = rt
            .get::<ApiCertificatesSpec>(ApiCertificatesSpec::ID)
            .await?;
        let (stage, reason) = match (power, config, certificates) {
            (Some(power), _, _) => {
                let stage = match power.spec.action {
                    PowerAction::Reboot => MachineStage::Rebooting,
                    PowerAction::Shutdown => MachineStage::ShuttingDown,
                    PowerAction::Reset => MachineStage::Resetting,
                };
                (stage, power.spec.reason)
            }
            (None, Some(_), Some(_)) => (MachineStage::Running, "configured".to_string()),
            (None, Some(_), None) => (
                MachineStage::Booting,
                "configured; waiting for the API certificates".to_string(),
            ),
            (None, None, _) => (MachineStage::Maintenance, "no machine config".to_string()),
        };
        rt.put_spec(MachineStatusSpec::ID, MachineStatusSpec { stage, reason })
            .await?;
        Ok(Action::Done)
    }
}
