//! apid: the Machine API server. TLS 1.3 with client certificates, roles from the
//! certificate, one authorization table, maintenance mode for unconfigured nodes, and
//! forwarding of calls to other nodes.

mod apply;
pub mod authz;
mod error;
pub mod events;
mod forward;
mod gate;
pub mod identity;
pub mod limits;
pub mod listener;
mod machine;
pub mod node;
mod resources;
mod server;

pub use apply::store_config;
pub use error::ApidError;
pub use forward::{label_items, RawCodec};
pub use identity::{MaintenanceIdentity, NodeIdentity};
pub use limits::Limits;
pub use server::{Apid, ApidOptions};
