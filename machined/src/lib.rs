//! machined: the node. It owns the state, runs every registered controller over it, and
//! serves the Machine and Resource services from it; apid, the API's edge, hands it every
//! call it authorized. A config applied through the API is reconciled by the controllers
//! like any other input.
//!
//! Today the node runs as a process on a host, with apid in-process; booting as PID 1
//! with apid in its own process comes next.

mod api;
mod error;
pub mod events;
mod node;
pub mod parts;

pub use api::store_config;
pub use error::StartError;
pub use node::{Node, NodeOptions};
