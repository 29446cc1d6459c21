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
    #[error("HTTP: {0}")]
    Http(String),
    #[error("timed out after {0} ms")]
    Timeout(u64),
    /// This node ran out of something (descriptors, ports, memory): says nothing of the
    /// upstream, so it does not count against it.
    #[error("local: {0}")]
    Local(String),
    #[error("not ready: HTTP status {0}")]
    NotReady(u16),
}

/// Whether a connect failed for want of something on this node (descriptors, local
/// ports, buffers, memory) rather than because of the upstream.
pub(crate) fn is_local(e: &io::Error) -> bool {
    use rustix::io::Errno;
    let local = [
        Errno::MFILE,
        Errno::NFILE,
        Errno::NOBUFS,
        Errno::NOMEM,
        Errno::ADDRNOTAVAIL,
    ];
    e.raw_os_error()
        .is_some_and(|code| local.iter().any(|l| l.raw_os_error() == code))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::io::Errno;

    #[test]
    fn running_out_is_local_a_refusal_is_not() {
        for errno in [Errno::MFILE, Errno::NFILE, Errno::ADDRNOTAVAIL] {
            assert!(is_local(&io::Error::from_raw_os_error(
                errno.raw_os_error()
            )));
        }
        for errno in [Errno::CONNREFUSED, Errno::HOSTUNREACH, Errno::TIMEDOUT] {
            assert!(!is_local(&io::Error::from_raw_os_error(
                errno.raw_os_error()
            )));
        }
        assert!(!is_local(&io::Error::other("no errno")));
    }
}
