//! Runtime domain: facts about the running system.

mod extension_service;
mod kernel_cmdline;
mod machine;
mod service;

pub use extension_service::*;
pub use kernel_cmdline::*;
pub use machine::*;
pub use service::*;
