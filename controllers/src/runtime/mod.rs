//! Controllers of the runtime domain: facts about the running system.

mod kernel_cmdline;
mod machine_status;
mod version;

pub use kernel_cmdline::KernelCmdlineController;
pub use machine_status::MachineStatusController;
pub use version::VersionController;
