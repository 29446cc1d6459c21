//! Config domain: what the node should be. The machine config as applied through the API
//! (user-owned), and what the config controllers publish from it.

mod hostname;
mod machine_config;
mod machine_type;

pub use hostname::*;
pub use machine_config::*;
pub use machine_type::*;
