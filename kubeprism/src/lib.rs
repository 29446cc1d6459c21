//! KubePrism: the per-node TCP load balancer in front of the Kubernetes API servers.
//!
//! Clients (kubelet, host-network pods) connect to one local address; each connection is
//! proxied to one upstream API server. Failover is meant to be invisible:
//!
//! - **Passive health**: a failed or timed-out dial marks the upstream suspect and the
//!   same client connection is dialed again on another upstream (bounded attempts and
//!   time) before a byte moves, so the client never sees the dead one. A hung upstream
//!   dials fine (its kernel completes the handshake): the client's first bytes are kept
//!   until the upstream answers, and replayed on another upstream if it does not
//!   within 500 ms (`replay`).
//! - **Active health**: a task per upstream checks it (TCP connect, or HTTPS
//!   `GET /readyz` with the CA verified, on a kept-alive connection) every 200 ms while
//!   it is down or suspect and every 500 ms while it is up, with rise/fall hysteresis
//!   ([`health`]); an HTTPS check that gets no answer in 500 ms is a hard failure.
//! - **Selection**: power of two choices weighted by outstanding connections and dial
//!   latency ([`balance`]).
//! - **Threads**: one per core, each with its own runtime, accepting from one shared
//!   listening socket and serving the connections it accepts to the end ([`Balancer`]).
//! - **Proxying**: `splice(2)` through a lazily made pipe on Linux (zero-copy), or
//!   a copy through user space; half-close is carried through.
//! - **Reconfiguration** swaps the upstream set atomically; established connections keep
//!   their upstream, and removed upstreams drain.
//!
//! The health state machine and selection are pure (no sockets) and unit-tested; the
//! [`testing`] module has a stand-in for kube-apiserver with `/readyz`.

mod balancer;
mod check;
mod config;
mod error;
mod listener;
mod proxy;
mod replay;
mod resolve;
mod shared;
mod spin;
#[cfg(target_os = "linux")]
mod splice;
mod status;
mod upstream;

pub mod balance;
pub mod health;
#[cfg(feature = "testing")]
pub mod testing;

pub use balancer::Balancer;
pub use config::{BalancerConfig, Check, HealthConfig, HttpsCheck, ProxyMode};
pub use error::{CheckError, Error};
pub use health::{HealthState, Thresholds};
pub use resolve::{parse as parse_upstream, Resolver};
pub use status::{BalancerStatus, Problem, UpstreamState, UpstreamStatus};
