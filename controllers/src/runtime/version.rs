use std::path::PathBuf;

use async_trait::async_trait;
use basalt_controller_runtime::{Action, Controller, ControllerError, Output, Runtime};
use basalt_resources::runtime::VersionSpec;

/// Publishes what the node runs as `Version/version`: Basalt's version (this build's),
/// the kernel's release and the architecture.
#[derive(Debug)]
pub struct VersionController {
    /// The kernel's release (`/proc/sys/kernel/osrelease` on a node).
    osrelease: PathBuf,
}

impl VersionController {
    pub fn new(osrelease: PathBuf) -> Self {
        VersionController { osrelease }
    }
}

#[async_trait]
impl Controller for VersionController {
    basalt_controller_runtime::declare! {
        name: "runtime.VersionController",
        inputs: [],
        outputs: [
            Output::exclusive::<VersionSpec>(),
        ],
    }

    async fn reconcile(&mut self, rt: &mut Runtime) -> Result<Action, ControllerError> {
        // An unreadable release is reported as unknown rather than failing the resource:
        // the version of Basalt is the fact that matters most here.
        let kernel = match tokio::fs::read_to_string(&self.osrelease).await {
            Ok(release) => release.trim().to_string(),
            Err(error) => {
                tracing::warn!(path = %self.osrelease.display(), %error, "cannot read the kernel's release");
                "unknown".to_string()
            }
        };
        let spec = VersionSpec {
            version: env!("CARGO_PKG_VERSION").to_string(),
            kernel,
            arch: std::env::consts::ARCH.to_string(),
        };
        rt.put_spec(VersionSpec::ID, spec).await?;
        Ok(Action::Done)
    }
}
