use std::path::PathBuf;

use async_trait::async_trait;
use basalt_controller_runtime::{Action, Controller, ControllerError, Output, Runtime};
use basalt_resources::runtime::KernelCmdlineSpec;

/// Publishes the kernel command line the node booted with as `KernelCmdline/cmdline`.
#[derive(Debug)]
pub struct KernelCmdlineController {
    path: PathBuf,
}

impl KernelCmdlineController {
    /// Reads the command line from `path` (`/proc/cmdline` on a node).
    pub fn new(path: PathBuf) -> Self {
        KernelCmdlineController { path }
    }
}

/// The kernel limits the command line to a few KiB; anything much larger is not one.
const MAX_CMDLINE: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
enum CmdlineError {
    #[error("cannot read the kernel command line from {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} holds {len} bytes, more than a kernel command line can be ({MAX_CMDLINE})")]
    TooLarge { path: String, len: usize },
}

#[async_trait]
impl Controller for KernelCmdlineController {
    basalt_controller_runtime::declare! {
        name: "runtime.KernelCmdlineController",
        inputs: [],
        outputs: [
            Output::exclusive::<KernelCmdlineSpec>(),
        ],
    }

    async fn reconcile(&mut self, rt: &mut Runtime) -> Result<Action, ControllerError> {
        let path = self.path.display().to_string();
        let bytes = tokio::fs::read(&self.path).await.map_err(|source| {
            ControllerError::other(CmdlineError::Read {
                path: path.clone(),
                source,
            })
        })?;
        if bytes.len() > MAX_CMDLINE {
            return Err(ControllerError::other(CmdlineError::TooLarge {
                path,
                len: bytes.len(),
            }));
        }
        // The kernel passes bytes; arguments we care about are ASCII, so a stray invalid
        // byte is replaced rather than failing the whole line.
        let text = String::from_utf8_lossy(&bytes);
        rt.put_spec(KernelCmdlineSpec::ID, KernelCmdlineSpec::parse(&text))
            .await?;
        // The command line does not change while the node runs.
        Ok(Action::Done)
    }
}
