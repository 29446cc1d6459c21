//! Runtime domain: facts about the running system.

mod config_status;
mod extension_service;
mod kernel_cmdline;
mod machine;
mod service;
mod version;

pub use config_status::*;
pub use extension_service::*;
pub use kernel_cmdline::*;
pub use machine::*;
pub use service::*;
pub use version::*;
