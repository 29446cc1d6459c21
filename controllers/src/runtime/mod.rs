//! Controllers of the runtime domain: facts about the running system.

mod kernel_cmdline;

pub use kernel_cmdline::KernelCmdlineController;
