//! apid: the Machine API's edge. TLS 1.3 with client certificates (the node's own, which
//! apid follows as they change), roles from the certificate, one authorization table,
//! limits, maintenance mode for unconfigured nodes, forwarding of calls to other nodes,
//! and an audit line for every call that changes something. Each authorized call is
//! handed to the node (its [`Backend`]) with the verified caller in its metadata
//! ([`AuthorizedCaller`]); apid serves nothing itself and holds no CA key.

pub mod authz;
pub mod caller;
mod certificates;
mod error;
mod forward;
mod gate;
pub mod identity;
pub mod limits;
pub mod listener;
mod server;
mod shared;
pub mod socket;
mod targets;

/// The response header with which the node says an ApplyConfiguration stored a config in
/// effect (not a dry run): only then does apid, in maintenance mode, wait for the node's
/// certificates before it answers.
pub const CONFIG_APPLIED_HEADER: &str = "basalt-config-applied";

pub use caller::AuthorizedCaller;
pub use certificates::node_resources;
pub use error::ApidError;
pub use forward::{label_items, RawCodec};
pub use identity::{MaintenanceIdentity, NodeIdentity};
pub use limits::Limits;
pub use server::{Apid, ApidOptions};
pub use shared::Backend;
