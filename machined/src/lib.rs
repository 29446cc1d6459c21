//! machined: the node. It owns the state, runs every registered controller over it, and
//! serves the Machine and Resource services from it; apid, the API's edge, hands it every
//! call it authorized. A config applied through the API is reconciled by the controllers
//! like any other input.
//!
//! It runs as `/init` of a real kernel ([`boot::metal`]) or as a process on a host;
//! apid runs in its own process ([`edge`]) on a machine, in this one in tests.

pub mod acquire;
mod api;
pub mod boot;
pub mod edge;
mod error;
pub mod events;
mod node;
pub mod parts;
pub mod sequencer;

pub use api::store_config;
pub use error::{BootError, StartError};
pub use node::{Node, NodeOptions};

/// Logs to stderr (the console, as PID 1): plain unless stderr is a terminal and the
/// process is not PID 1 (a serial console shows escape codes as garbage).
pub fn init_logging(pid1: bool) {
    let ansi = !pid1 && std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
}
