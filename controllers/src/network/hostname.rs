use async_trait::async_trait;
use basalt_controller_runtime::{Action, Controller, ControllerError, Input, Output, Runtime};
use basalt_resources::config::HostnameConfigSpec;
use basalt_resources::network::{HostnameSource, HostnameSpec};
use basalt_resources::runtime::KernelCmdlineSpec;

/// The kernel command line argument that names the node.
pub const CMDLINE_HOSTNAME: &str = "basalt.hostname";

/// Derives the node's hostname, highest priority first, from the user's `HostnameConfig`
/// or from `basalt.hostname=` on the kernel command line. An invalid value is skipped
/// (and logged) in favour of the next source; with no valid source there is no
/// `Hostname` resource.
#[derive(Debug, Default)]
pub struct HostnameController;

#[async_trait]
impl Controller for HostnameController {
    basalt_controller_runtime::declare! {
        name: "network.HostnameController",
        inputs: [
            Input::weak::<HostnameConfigSpec>().with_id(HostnameConfigSpec::ID),
            Input::weak::<KernelCmdlineSpec>().with_id(KernelCmdlineSpec::ID),
        ],
        outputs: [
            Output::exclusive::<HostnameSpec>(),
        ],
    }

    async fn reconcile(&mut self, rt: &mut Runtime) -> Result<Action, ControllerError> {
        let config = rt
            .get::<HostnameConfigSpec>(HostnameConfigSpec::ID)
            .await?
            .map(|c| (HostnameSource::Config, c.spec.hostname));
        let cmdline = rt
            .get::<KernelCmdlineSpec>(KernelCmdlineSpec::ID)
            .await?
            .and_then(|c| c.spec.get(CMDLINE_HOSTNAME).map(str::to_string))
            .map(|h| (HostnameSource::Cmdline, h));

        let chosen = [config, cmdline]
            .into_iter()
            .flatten()
            .find_map(
                |(source, value)| match HostnameSpec::from_fqdn(&value, source) {
                    Ok(spec) => Some(spec),
                    Err(e) => {
                        tracing::warn!(?source, error = %e, "ignoring an invalid hostname");
                        None
                    }
                },
            );
        if let Some(spec) = chosen {
            rt.put_spec(HostnameSpec::ID, spec).await?;
        }
        Ok(Action::Done)
    }
}
