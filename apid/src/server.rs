//! Starting and stopping apid.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::certificates::{current_certificates, follow_certificates};
use crate::gate::{Gate, MachineRoute, ResourceRoute};
use crate::identity::{MaintenanceIdentity, NodeIdentity};
use crate::limits::{Limiter, Limits};
use crate::listener::{self, maintenance_config};
use crate::shared::{Backend, Mode, Shared};
use crate::targets::{follow_targets, ForwardTargets};
use crate::ApidError;

#[derive(Debug)]
pub struct ApidOptions {
    pub listen: SocketAddr,
    /// The node that serves the calls.
    pub backend: Backend,
    pub limits: Limits,
    /// The port of other nodes' apid, for node names given without one.
    pub peer_port: u16,
    /// Names and addresses the node is reached by, for the maintenance certificate.
    pub sans: Vec<String>,
}

/// A running apid.
pub struct Apid {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    cancel: CancellationToken,
    task: JoinHandle<Result<(), ApidError>>,
}

impl std::fmt::Debug for Apid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Apid")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Apid {
    /// Starts serving: with the node's API certificates if it has them, else in
    /// maintenance mode.
    pub async fn start(options: ApidOptions) -> Result<Apid, ApidError> {
        // The maintenance identity first: made while the node may still be starting, so
        // that its first answer below is not followed by the key's generation.
        let maintenance = MaintenanceIdentity::generate(&options.sans)?;
        let certificates = current_certificates(&options.backend).await?;
        let tls = watch::Sender::new(maintenance_config(&maintenance)?);
        let fingerprint = maintenance.fingerprint_hex();
        let shared = Arc::new(Shared {
            backend: options.backend,
            limiter: Limiter::new(options.limits.clone()),
            limits: options.limits,
            peer_port: options.peer_port,
            mode: Mutex::new(Mode::Maintenance(maintenance)),
            tls,
            maintenance_over: CancellationToken::new(),
            open_streams: Arc::new(AtomicUsize::new(0)),
            forward_targets: ForwardTargets::default(),
        });
        let listener =
            TcpListener::bind(options.listen)
                .await
                .map_err(|source| ApidError::Bind {
                    addr: options.listen,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| ApidError::Bind {
            addr: options.listen,
            source,
        })?;
        match &certificates {
            Some(spec) => {
                shared.configure(NodeIdentity::from_spec(spec))?;
                tracing::info!(%local_addr, "apid serving with the cluster PKI");
            }
            None => {
                tracing::warn!(%local_addr, %fingerprint, "apid in maintenance mode: apply a config with `osctl apply-config --insecure`; the certificate fingerprint is {fingerprint}");
            }
        }

        let cancel = CancellationToken::new();
        tokio::spawn(follow_certificates(
            shared.clone(),
            certificates,
            cancel.clone(),
        ));
        tokio::spawn(follow_targets(shared.clone(), cancel.clone()));
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(listener::accept(
            listener,
            shared.tls.subscribe(),
            tx,
            cancel.clone(),
            shared.maintenance_over.clone(),
        ));
        let gate = Gate::new(shared.clone());
        let server = tonic::transport::Server::builder()
            .timeout(shared.limits.unary_timeout)
            .max_concurrent_streams(shared.limits.max_streams_per_connection)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(MachineRoute(gate.clone()))
            .add_service(ResourceRoute(gate));
        let stop = cancel.clone();
        let task = tokio::spawn(async move {
            server
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::ReceiverStream::new(rx),
                    stop.cancelled_owned(),
                )
                .await
                .map_err(ApidError::from)
        });
        Ok(Apid {
            shared,
            local_addr,
            cancel,
            task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The SHA-256 fingerprint of the maintenance certificate, while in maintenance mode.
    pub fn maintenance_fingerprint(&self) -> Option<String> {
        match &*self.shared.mode() {
            Mode::Maintenance(m) => Some(m.fingerprint_hex()),
            Mode::Configured(_) => None,
        }
    }

    pub fn in_maintenance(&self) -> bool {
        self.shared.in_maintenance()
    }

    /// Server streams (watches, logs, events...) open to clients right now.
    pub fn open_streams(&self) -> usize {
        self.shared.open_streams.load(Ordering::Acquire)
    }

    /// Stops accepting, ends open calls, and waits for the server to finish.
    pub async fn shutdown(self) -> Result<(), ApidError> {
        self.cancel.cancel();
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(ApidError::Task(e.to_string())),
        }
    }
}
