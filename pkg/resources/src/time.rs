//! Time domain: the node's clock against its time servers.

use basalt_resource::{namespaces, ResourceSpec};
use serde::{Deserialize, Serialize};

/// How the node's clock stands against its time servers (id `node`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ResourceSpec)]
#[resource(
    type = "TimeStatuses.time.basalt.dev",
    namespace = namespaces::RUNTIME,
    aliases("timestatus", "time"),
    column("Synced", "synced"),
    column("Server", "server"),
    column("Offset (µs)", "offsetMicros"),
    column("Sets clock", "setsClock"),
    column("Error", "error"),
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimeStatusSpec {
    /// The last query was answered and the clock is (now) within the step threshold of
    /// the server's time.
    pub synced: bool,
    /// The server that answered last.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub server: String,
    /// The server's time minus the node's, as measured (before any step).
    pub offset_micros: i64,
    /// Whether this node sets its clock (not a container node, whose clock is the host's).
    pub sets_clock: bool,
    /// When the clock was last stepped, RFC 3339.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_step: String,
    /// Why the node is not synced.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

impl TimeStatusSpec {
    pub const ID: &'static str = "node";
}
