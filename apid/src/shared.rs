//! What apid's parts share: the node behind it, the limits, and whether it serves
//! maintenance mode or the cluster's certificates.

use std::convert::Infallible;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::ServerConfig;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tower::util::BoxCloneSyncService;

use crate::forward::Forwarder;
use crate::identity::{MaintenanceIdentity, NodeIdentity};
use crate::limits::{Limiter, Limits};
use crate::listener::cluster_config;
use crate::targets::ForwardTargets;
use crate::ApidError;

/// The node behind apid: it serves the Machine and Resource services for the calls apid
/// authorized, with the caller in their metadata ([`AuthorizedCaller`]).
pub type Backend = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, Infallible>;

/// Maintenance mode, or configured with the cluster PKI (and so able to reach other
/// nodes).
pub(crate) enum Mode {
    Maintenance(MaintenanceIdentity),
    Configured(Arc<Forwarder>),
}

pub(crate) struct Shared {
    pub backend: Backend,
    pub limits: Limits,
    pub limiter: Limiter,
    pub peer_port: u16,
    pub mode: Mutex<Mode>,
    pub tls: watch::Sender<Arc<ServerConfig>>,
    /// Cancelled when the node leaves maintenance mode: anonymous connections close.
    pub maintenance_over: CancellationToken,
    /// Server streams open to clients (watches, logs, events, forwarded ones...).
    pub open_streams: Arc<AtomicUsize>,
    /// The nodes calls may be forwarded to.
    pub forward_targets: ForwardTargets,
}

impl Shared {
    pub fn in_maintenance(&self) -> bool {
        matches!(*self.mode(), Mode::Maintenance(_))
    }

    pub fn mode(&self) -> std::sync::MutexGuard<'_, Mode> {
        self.mode.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn forwarder(&self) -> Option<Arc<Forwarder>> {
        match &*self.mode() {
            Mode::Configured(forwarder) => Some(forwarder.clone()),
            Mode::Maintenance(_) => None,
        }
    }

    /// Serves with `identity` from now on: new connections need a client certificate from
    /// its CA, and anonymous connections still open from maintenance mode are closed.
    /// Applied again whenever the node's API certificates change.
    pub fn configure(&self, identity: NodeIdentity) -> Result<(), ApidError> {
        let tls = cluster_config(&identity)?;
        let forwarder = Forwarder::new(identity.peer_tls(), self.peer_port, &self.limits);
        *self.mode() = Mode::Configured(Arc::new(forwarder));
        self.tls.send_replace(tls);
        self.maintenance_over.cancel();
        Ok(())
    }

    /// Waits until apid has left maintenance mode, at most `timeout`; returns whether it
    /// has.
    pub async fn left_maintenance(&self, timeout: Duration) -> bool {
        let mut changes = self.tls.subscribe();
        let left = async {
            while self.in_maintenance() {
                if changes.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(timeout, left).await.is_ok()
    }
}
