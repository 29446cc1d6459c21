use std::io;
use std::net::SocketAddr;

/// Errors of the balancer library. Per-connection and per-check failures are not errors
/// of the balancer: they are counted and reported in its status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("binding the listener on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("starting the connection-serving threads: {0}")]
    Workers(#[source] io::Error),
    #[error("TLS configuration for health checks: {0}")]
    Tls(String),
    #[error("reading PEM {what}: {reason}")]
    Pem { what: &'static str, reason: String },
}

/// Why an active health check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// Refused or reset: nothing listens, a hard failure.
    #[error("connection refused: {0}")]
    Refused(String),
    #[error("connect: {0}")]
    Connect(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("I/O: {0}")]
    Io(String),
    #[error("timed out after {0} ms")]
    Timeout(u64),
    #[error("bad HTTP response: {0}")]
    BadResponse(&'static str),
    #[error("not ready: HTTP status {0}")]
    NotReady(u16),
}
