//! machined: the node. It owns the state, runs every registered controller over it, and
//! serves the Machine API (apid) from it, so that a config applied through the API is
//! reconciled by the controllers like any other input.
//!
//! Today the node runs as a process on a host (the API in-process, the local
//! implementations of the node's parts); booting as PID 1 and apid in its own process
//! come next.

mod error;
mod node;

pub use error::NodeError;
pub use node::{Node, NodeOptions};
