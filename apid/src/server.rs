//! Starting and stopping apid, and the state its parts share.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use basalt_api::machine::v1::machine_service_server::MachineServiceServer;
use basalt_api::resource::v1::resource_service_server::ResourceServiceServer;
use basalt_machine_config::Mode as ValidationMode;
use basalt_resource::secrets::ApiCertificatesSpec;
use basalt_resource::{Registry, ResourceKey};
use basalt_state::{Event, State, StateError};
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::authz::Caller;
use crate::events::EventLog;
use crate::forward::Forwarder;
use crate::gate::GateLayer;
use crate::identity::{MaintenanceIdentity, NodeIdentity};
use crate::limits::{Limiter, Limits};
use crate::listener::{self, cluster_config, maintenance_config};
use crate::machine::MachineApi;
use crate::node::NodeHandles;
use crate::resources::ResourceApi;
use crate::ApidError;

/// The owner apid writes its resources as.
pub(crate) const OWNER: &str = "apid";

#[derive(Debug)]
pub struct ApidOptions {
    pub listen: SocketAddr,
    pub state: State,
    pub registry: Arc<Registry>,
    pub node: NodeHandles,
    pub limits: Limits,
    /// The port of other nodes' apid, for node names given without one.
    pub peer_port: u16,
    /// How applied configs are validated.
    pub validation_mode: ValidationMode,
    /// Names and addresses the node is reached by, for the maintenance certificate.
    pub sans: Vec<String>,
}

/// Maintenance mode, or configured with the cluster PKI.
#[derive(Debug, Clone)]
pub(crate) enum Mode {
    Maintenance(MaintenanceIdentity),
    Configured(Arc<NodeIdentity>),
}

pub(crate) struct Shared {
    pub state: State,
    pub registry: Arc<Registry>,
    pub node: NodeHandles,
    pub events: EventLog,
    pub limits: Limits,
    pub limiter: Limiter,
    pub validation_mode: ValidationMode,
    peer_port: u16,
    mode: Mutex<(Mode, Option<Arc<Forwarder>>)>,
    tls: watch::Sender<Arc<ServerConfig>>,
    /// Cancelled when the node leaves maintenance mode: anonymous connections close.
    maintenance_over: CancellationToken,
    /// One configuration change at a time.
    pub apply_lock: tokio::sync::Mutex<crate::apply::Pending>,
    pub open_streams: AtomicUsize,
}

impl Shared {
    pub fn in_maintenance(&self) -> bool {
        matches!(self.mode().0, Mode::Maintenance(_))
    }

    fn mode(&self) -> std::sync::MutexGuard<'_, (Mode, Option<Arc<Forwarder>>)> {
        self.mode.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn identity(&self) -> Option<Arc<NodeIdentity>> {
        match &self.mode().0 {
            Mode::Configured(id) => Some(id.clone()),
            Mode::Maintenance(_) => None,
        }
    }

    pub fn forwarder(&self) -> Option<Arc<Forwarder>> {
        self.mode().1.clone()
    }

    /// Serves with `identity` from now on: new connections need a client certificate from
    /// its CA, and anonymous connections still open from maintenance mode are closed.
    /// Applied again whenever the node's API certificates change.
    fn configure(&self, identity: NodeIdentity) -> Result<(), ApidError> {
        let tls = cluster_config(&identity)?;
        let forwarder = Forwarder::new(identity.peer_tls(), self.peer_port, &self.limits);
        *self.mode() = (
            Mode::Configured(Arc::new(identity)),
            Some(Arc::new(forwarder)),
        );
        self.tls.send_replace(tls);
        self.maintenance_over.cancel();
        Ok(())
    }

    pub fn audit(&self, caller: &Caller, method: &str, result: tonic::Code) {
        tracing::info!(target: "audit", who = %caller.who(), roles = %caller.roles_header(), method, result = ?result, "call");
        self.events.publish(
            "audit",
            format!("{method} by {}: {result:?}", caller.who()),
            &[
                ("who", caller.who()),
                ("method", method.to_string()),
                ("result", format!("{result:?}")),
            ],
        );
    }

    /// Waits until apid serves certificates from the OS CA `ca` (PEM), at most `timeout`.
    /// Returns whether it does.
    pub async fn serving_ca(&self, ca: &str, timeout: std::time::Duration) -> bool {
        let mut changes = self.tls.subscribe();
        let serving = async {
            loop {
                if self.identity().is_some_and(|id| id.ca == ca) {
                    return;
                }
                if changes.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(timeout, serving).await.is_ok()
    }

    /// Counts an open stream until the returned guard is dropped.
    pub fn stream_opened(self: &Arc<Self>) -> StreamGuard {
        self.open_streams.fetch_add(1, Ordering::AcqRel);
        StreamGuard(self.clone())
    }
}

pub(crate) struct StreamGuard(Arc<Shared>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.open_streams.fetch_sub(1, Ordering::AcqRel);
    }
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

/// Serves the node's API certificates as they change: the first ones end maintenance
/// mode, later ones (renewed, or for a new CA or new names) are served to new
/// connections without a restart. Certificates that cannot be served are logged and the
/// ones before them kept.
async fn follow_certificates(
    shared: Arc<Shared>,
    mut served: Option<ApiCertificatesSpec>,
    cancel: CancellationToken,
) {
    let key = ResourceKey::of::<ApiCertificatesSpec>(ApiCertificatesSpec::ID);
    'watch: loop {
        let mut watch = match shared.state.watch(&key).await {
            Ok(watch) => watch,
            Err(e) => {
                tracing::error!(error = %e, "cannot watch the API certificates");
                return;
            }
        };
        loop {
            let event = tokio::select! {
                _ = cancel.cancelled() => return,
                event = watch.next() => event,
            };
            let resource = match event {
                None => return,
                Some(Ok(Event::Created(r) | Event::Updated { new: r, .. })) => r,
                Some(Ok(Event::Destroyed(_))) => {
                    tracing::warn!("the API certificates were removed; serving the last ones");
                    continue;
                }
                Some(Ok(Event::Bootstrapped)) => continue,
                // Fell behind: start over from the current certificates.
                Some(Err(_)) => continue 'watch,
            };
            let spec = match resource.spec_as::<ApiCertificatesSpec>() {
                Ok(spec) => spec.clone(),
                Err(e) => {
                    tracing::error!(error = %e, "unreadable API certificates");
                    continue;
                }
            };
            if served.as_ref() == Some(&spec) {
                continue;
            }
            match shared.configure(NodeIdentity::from_spec(&spec)) {
                Ok(()) => {
                    tracing::info!(not_after = %spec.not_after, "serving the node's API certificates");
                    served = Some(spec);
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot serve the new API certificates; keeping the current ones")
                }
            }
        }
    }
}

impl Apid {
    pub async fn start(options: ApidOptions) -> Result<Apid, ApidError> {
        let key = ResourceKey::of::<ApiCertificatesSpec>(ApiCertificatesSpec::ID);
        let certificates = match options.state.get(&key).await {
            Ok(r) => Some(
                r.spec_as::<ApiCertificatesSpec>()
                    .map_err(|e| ApidError::Identity(e.to_string()))?
                    .clone(),
            ),
            Err(StateError::NotFound(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let maintenance = MaintenanceIdentity::generate(&options.sans)?;
        let tls = watch::Sender::new(maintenance_config(&maintenance)?);
        let fingerprint = maintenance.fingerprint_hex();
        let shared = Arc::new(Shared {
            state: options.state,
            registry: options.registry,
            node: options.node,
            events: EventLog::default(),
            limiter: Limiter::new(options.limits.clone()),
            limits: options.limits,
            validation_mode: options.validation_mode,
            peer_port: options.peer_port,
            mode: Mutex::new((Mode::Maintenance(maintenance), None)),
            tls,
            maintenance_over: CancellationToken::new(),
            apply_lock: tokio::sync::Mutex::new(Default::default()),
            open_streams: AtomicUsize::new(0),
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
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(listener::accept(
            listener,
            shared.tls.subscribe(),
            tx,
            cancel.clone(),
            shared.maintenance_over.clone(),
        ));
        let max = shared.limits.max_message_bytes;
        let machine = MachineServiceServer::new(MachineApi::new(shared.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        let resources = ResourceServiceServer::new(ResourceApi::new(shared.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        let server = tonic::transport::Server::builder()
            .timeout(shared.limits.unary_timeout)
            .max_concurrent_streams(shared.limits.max_streams_per_connection)
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
            .layer(GateLayer(shared.clone()))
            .add_service(machine)
            .add_service(resources);
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
        match &self.shared.mode().0 {
            Mode::Maintenance(m) => Some(m.fingerprint_hex()),
            Mode::Configured(_) => None,
        }
    }

    pub fn in_maintenance(&self) -> bool {
        self.shared.in_maintenance()
    }

    /// Server streams (watches, logs, events...) open right now.
    pub fn open_streams(&self) -> usize {
        self.shared.open_streams.load(Ordering::Acquire)
    }

    pub fn events(&self) -> EventLog {
        self.shared.events.clone()
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
