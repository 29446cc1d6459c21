//! What the balancer reports: per-upstream state and counters, and the problems it sees.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

use crate::health::HealthState;

/// An upstream's state as reported (selection state, or draining out of the set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamState {
    Healthy,
    Suspect,
    Down,
    /// Removed from the set; kept until its last connection closes.
    Draining,
}

impl From<HealthState> for UpstreamState {
    fn from(s: HealthState) -> Self {
        match s {
            HealthState::Healthy => UpstreamState::Healthy,
            HealthState::Suspect => UpstreamState::Suspect,
            HealthState::Down => UpstreamState::Down,
        }
    }
}

impl fmt::Display for UpstreamState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UpstreamState::Healthy => "healthy",
            UpstreamState::Suspect => "suspect",
            UpstreamState::Down => "down",
            UpstreamState::Draining => "draining",
        })
    }
}

/// One upstream's state and counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpstreamStatus {
    /// As configured (`host:port`).
    pub name: String,
    /// What the name resolved to.
    pub address: SocketAddr,
    pub state: UpstreamState,
    /// Time since the state last changed.
    pub state_for: Duration,
    /// Connections proxied right now.
    pub active: u64,
    /// Connections proxied since the upstream was added.
    pub total: u64,
    /// Client to upstream.
    pub bytes_sent: u64,
    /// Upstream to client.
    pub bytes_received: u64,
    pub dial_failures: u64,
    pub check_failures: u64,
    /// Smoothed dial latency (zero before the first connection).
    pub dial_latency: Duration,
    /// Duration of the last active check.
    pub check_latency: Option<Duration>,
    pub last_error: Option<String>,
}

/// Something wrong that the balancer survives and reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Problem {
    /// The upstream list is empty: clients are accepted and closed at once.
    NoUpstreams,
    /// An upstream is not `host:port`.
    Invalid { name: String, reason: String },
    /// An upstream name did not resolve (it is left out until the next reconfiguration).
    Unresolvable { name: String, error: String },
    /// An upstream repeats another one (same name or same address); it is used once.
    Duplicate { name: String, same_as: String },
    /// Every upstream is down: clients are still tried against them, last resort.
    AllDown,
    /// The connection limit was reached recently and clients were refused.
    ConnectionLimit { max: usize, refused: u64 },
    /// Client connections were closed because no upstream could be dialed.
    NoUpstreamReachable { failed: u64 },
    /// This node ran out of descriptors, local ports or memory while accepting, dialing
    /// or checking an upstream (the upstreams are not blamed for it); `lost` clients so
    /// far (a check that could not run loses none).
    OutOfResources { error: String, lost: u64 },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::NoUpstreams => write!(f, "no upstreams configured"),
            Problem::Invalid { name, reason } => write!(f, "invalid upstream {name:?}: {reason}"),
            Problem::Unresolvable { name, error } => {
                write!(f, "upstream {name:?} does not resolve: {error}")
            }
            Problem::Duplicate { name, same_as } => {
                write!(f, "upstream {name:?} duplicates {same_as:?}")
            }
            Problem::AllDown => write!(f, "every upstream is down"),
            Problem::ConnectionLimit { max, refused } => write!(
                f,
                "connection limit {max} reached: {refused} connections refused"
            ),
            Problem::NoUpstreamReachable { failed } => write!(
                f,
                "{failed} client connections closed: no upstream could be dialed"
            ),
            Problem::OutOfResources { error, lost } => write!(
                f,
                "out of local resources ({error}); {lost} client connections lost so far"
            ),
        }
    }
}

/// The balancer as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BalancerStatus {
    pub listen: SocketAddr,
    /// In the set, then draining.
    pub upstreams: Vec<UpstreamStatus>,
    pub problems: Vec<Problem>,
    pub max_connections: usize,
    /// Client connections open right now (including those being dialed for).
    pub active_connections: u64,
    pub accepted: u64,
    /// Closed at once because of the connection limit.
    pub refused: u64,
    /// Closed because no upstream could be dialed.
    pub failed: u64,
    /// `accept(2)` errors (e.g. out of file descriptors).
    pub accept_errors: u64,
}

impl BalancerStatus {
    /// Upstreams in rotation.
    pub fn healthy(&self) -> usize {
        self.upstreams
            .iter()
            .filter(|u| u.state == UpstreamState::Healthy)
            .count()
    }

    pub fn upstream(&self, name: &str) -> Option<&UpstreamStatus> {
        self.upstreams.iter().find(|u| u.name == name)
    }
}
