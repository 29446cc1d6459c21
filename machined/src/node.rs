use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use apid::{Apid, ApidOptions, Limits};
use basalt_controller_runtime::Engine;
use basalt_controllers::Sources;
use basalt_machine_config::Mode;
use basalt_resource::{namespaces, ResourceKey};
use basalt_resources::runtime::ConfigSource;
use basalt_resources::secrets::ApiCertificatesSpec;
use basalt_state::{Event, State, StateError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::acquire::{self, ConfigSources};
use crate::api::{self, Shared};
use crate::edge::{self, ApidProcessOptions, RoleProcess};
use crate::events::EventLog;
use crate::parts::{LocalNode, ServiceDefinition};
use crate::roles;
use crate::trustd::Trustd;
use crate::StartError;

/// The state's file in the state directory.
const STATE_FILE: &str = "state.redb";
/// How long a configured node waits for its API certificates before it gives up.
const CERTIFICATES_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the node waits for its API to accept connections before it says it does not.
const READY_PATIENCE: Duration = Duration::from_secs(30);

/// How a node is started.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Where the Machine API listens.
    pub listen: SocketAddr,
    /// Keep the config namespace here (persistent across restarts); in memory without it.
    pub state_dir: Option<PathBuf>,
    /// Where the node finds a config when its state holds none.
    pub config: ConfigSources,
    /// How applied configs are validated.
    pub validation_mode: Mode,
    /// Directories `osctl read`/`ls` may see.
    pub file_roots: Vec<PathBuf>,
    /// Services the node supervises.
    pub services: Vec<ServiceDefinition>,
    pub limits: Limits,
    /// What the controllers read the system from. Its `api_sans` gets the names and
    /// addresses below added.
    pub sources: Sources,
    /// Names and addresses the node is reached by (its API certificates carry them).
    pub sans: Vec<String>,
    /// Run apid in its own process (reaching the node over a unix socket) rather than
    /// in this one.
    pub apid_process: Option<ApidProcessOptions>,
    /// Where trustd listens once the node holds the OS CA key; no trustd without it.
    pub trustd_listen: Option<SocketAddr>,
    /// Run the services of the node's role (etcd on a control plane) from these layers;
    /// only `services` without it.
    pub roles: Option<roles::Layout>,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            listen: SocketAddr::from(([0, 0, 0, 0], basalt_api::DEFAULT_PORT)),
            state_dir: None,
            config: ConfigSources::default(),
            validation_mode: Mode::Metal,
            file_roots: Vec::new(),
            services: Vec::new(),
            limits: Limits::default(),
            sources: Sources::default(),
            sans: Vec::new(),
            apid_process: None,
            trustd_listen: None,
            roles: None,
        }
    }
}

/// apid's process, started before the node it serves, and machined's socket it waits on.
#[derive(Debug)]
pub struct EarlyApid {
    listener: tokio::net::UnixListener,
    apid: RoleProcess,
}

impl EarlyApid {
    /// Binds machined's socket and starts apid's process, when `options` run apid as a
    /// process of its own; `None` otherwise.
    pub fn start(options: &NodeOptions) -> Result<Option<EarlyApid>, StartError> {
        let Some(process) = &options.apid_process else {
            return Ok(None);
        };
        let socket = process.socket();
        let listener = api::socket::bind(&socket, process.uid)?;
        let args = edge::apid_args(options.listen, &socket, &options.limits, &sans_of(options));
        Ok(Some(EarlyApid {
            listener,
            apid: RoleProcess::start(process, "apid", args),
        }))
    }
}

/// The names and addresses the node's API certificates carry besides its hostname.
fn sans_of(options: &NodeOptions) -> Vec<String> {
    let mut sans = options.sans.clone();
    if !options.listen.ip().is_unspecified() {
        sans.push(options.listen.ip().to_string());
    }
    sans
}

/// A running node: its state, its controllers and its Machine API.
#[derive(Debug)]
pub struct Node {
    state: State,
    local: LocalNode,
    events: EventLog,
    edge: Edge,
    trustd: Option<TrustdRun>,
    /// Keeps the services in step with the node's role.
    roles: Option<JoinHandle<()>>,
    stop: CancellationToken,
    controllers: JoinHandle<()>,
}

impl Node {
    pub async fn start(options: NodeOptions) -> Result<Node, StartError> {
        Self::start_with(options, None).await
    }

    /// As [`Node::start`], with apid's process already started ([`EarlyApid::start`] with
    /// the same options), as PID 1 does before its first sequence.
    pub async fn start_with(
        options: NodeOptions,
        early: Option<EarlyApid>,
    ) -> Result<Node, StartError> {
        let sans = sans_of(&options);
        // apid's own process comes up (an exec, its keys) while this one opens the state
        // and starts the controllers. Its first call waits on the bound socket until the
        // node serves it, which a configured node does only once it has its
        // certificates: apid cannot mistake it for one in maintenance mode.
        let early_apid = match early {
            Some(early) => Some(early),
            None => EarlyApid::start(&options)?,
        };

        let registry = Arc::new(basalt_resources::meta::builtin_registry()?);
        let mut problems = Vec::new();
        let state = match &options.state_dir {
            Some(dir) => open_state(dir, &registry, &mut problems)?,
            None => State::new(),
        };
        let config =
            acquire::acquire(&state, &options.config, options.validation_mode, problems).await?;

        let mut sources = options.sources.clone();
        sources.api_sans.extend(sans.iter().cloned());
        let mut engine = Engine::new(state.clone());
        basalt_controllers::register_all(&mut engine, &sources)?;
        let dependencies = engine.dependencies();
        let stop = CancellationToken::new();
        let controllers = tokio::spawn(engine.run(stop.clone()));

        // A configured node never serves maintenance mode, not even for the moment its
        // controllers take to issue the API certificates: anyone may apply a config to
        // a node in maintenance mode.
        if config.source != ConfigSource::None {
            wait_for_certificates(&state, CERTIFICATES_TIMEOUT).await?;
        }

        let local = LocalNode::new(state.clone(), options.services.clone(), options.file_roots)?;
        local.services.start_all().await?;
        let roles = options.roles.map(|layout| {
            tokio::spawn(roles::follow(
                state.clone(),
                local.services.clone(),
                options.services,
                layout,
            ))
        });
        let events = EventLog::default();
        let shared = Arc::new(Shared::new(
            state.clone(),
            registry,
            local.handles(),
            events.clone(),
            options.validation_mode,
            dependencies,
        ));
        let backend = api::backend(shared, &options.limits);
        // Set once the API accepts connections (or the node gives up waiting).
        let api_ready = tokio::sync::watch::Sender::new(false);
        let validity = options.sources.api_cert_validity;
        let (edge, trustd) = match early_apid.zip(options.apid_process.as_ref()) {
            None => {
                let trustd = options.trustd_listen.map(|listen| {
                    TrustdRun::InProcess(Trustd::start(backend.clone(), listen, validity))
                });
                let apid = Apid::start(ApidOptions {
                    listen: options.listen,
                    backend,
                    limits: options.limits,
                    peer_port: basalt_api::DEFAULT_PORT,
                    sans,
                })
                .await?;
                (Edge::InProcess(apid), trustd)
            }
            Some((EarlyApid { listener, apid }, process)) => {
                let socket = process.socket();
                let stop_socket = CancellationToken::new();
                let socket_task = tokio::spawn(api::socket::serve(
                    listener,
                    backend,
                    process.uid,
                    stop_socket.clone(),
                ));
                // trustd beside apid: its own process, over the same socket, started once
                // the API is up (a boot's CPU goes to apid first).
                let trustd = options.trustd_listen.map(|listen| {
                    let args = crate::trustd::trustd_args(listen, &socket, validity);
                    let mut ready = api_ready.subscribe();
                    let gate = async move {
                        let _ = ready.wait_for(|up| *up).await;
                    };
                    TrustdRun::Process(RoleProcess::start_after(process, "trustd", args, gate))
                });
                let edge = Edge::Process {
                    listen: options.listen,
                    apid,
                    stop_socket,
                    socket_task,
                };
                (edge, trustd)
            }
        };
        tokio::spawn(announce_ready(
            match &edge {
                Edge::InProcess(apid) => apid.local_addr(),
                Edge::Process { listen, .. } => *listen,
            },
            api_ready,
        ));
        Ok(Node {
            state,
            local,
            events,
            edge,
            trustd,
            roles,
            stop,
            controllers,
        })
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// Where the Machine API listens.
    pub fn local_addr(&self) -> SocketAddr {
        match &self.edge {
            Edge::InProcess(apid) => apid.local_addr(),
            Edge::Process { listen, .. } => *listen,
        }
    }

    /// apid, when it runs in this process.
    pub fn apid(&self) -> Option<&Apid> {
        match &self.edge {
            Edge::InProcess(apid) => Some(apid),
            Edge::Process { .. } => None,
        }
    }

    /// Whether the API serves maintenance mode (no certificates yet), when apid runs in
    /// this process (false otherwise).
    pub fn in_maintenance(&self) -> bool {
        self.apid().is_some_and(Apid::in_maintenance)
    }

    /// The fingerprint of the maintenance certificate, while in maintenance mode (when
    /// apid runs in this process).
    pub fn maintenance_fingerprint(&self) -> Option<String> {
        self.apid()?.maintenance_fingerprint()
    }

    /// The node's parts (supervisor, power requests, /proc, files).
    pub fn local(&self) -> &LocalNode {
        &self.local
    }

    /// What happened on the node (configs applied, power requests, audit records).
    pub fn events(&self) -> &EventLog {
        &self.events
    }

    /// Streams (watches, logs, events, ...) the API serves to clients right now (when
    /// apid runs in this process; 0 otherwise).
    pub fn open_streams(&self) -> usize {
        self.apid().map_or(0, Apid::open_streams)
    }

    /// Stops the API, the services and the controllers, in that order.
    pub async fn shutdown(self) -> Result<(), StartError> {
        match self.trustd {
            Some(TrustdRun::InProcess(trustd)) => trustd.stop().await,
            Some(TrustdRun::Process(trustd)) => trustd.stop().await,
            None => {}
        }
        let api = match self.edge {
            Edge::InProcess(apid) => apid.shutdown().await,
            Edge::Process {
                apid,
                stop_socket,
                socket_task,
                ..
            } => {
                apid.stop().await;
                stop_socket.cancel();
                let _ = socket_task.await;
                Ok(())
            }
        };
        if let Some(roles) = self.roles {
            roles.abort();
            let _ = roles.await;
        }
        self.local.services.shutdown().await;
        self.stop.cancel();
        if let Err(e) = self.controllers.await {
            tracing::error!(error = %e, "the controller engine failed");
        }
        Ok(api?)
    }
}

/// Where the Machine API's edge runs.
#[derive(Debug)]
enum Edge {
    InProcess(Apid),
    Process {
        listen: SocketAddr,
        apid: RoleProcess,
        stop_socket: CancellationToken,
        socket_task: JoinHandle<()>,
    },
}

/// Where trustd runs: beside apid, in this process or in its own.
#[derive(Debug)]
enum TrustdRun {
    InProcess(Trustd),
    Process(RoleProcess),
}

/// Opens the persistent state in `dir` (the node's alone: not even apid, another uid,
/// may read it). A file that does not open as a state is moved aside, never deleted, and
/// the node starts afresh: to maintenance mode, reachable, rather than failing to boot.
fn open_state(
    dir: &Path,
    registry: &Arc<basalt_resource::Registry>,
    problems: &mut Vec<String>,
) -> Result<State, StartError> {
    let dir_error = |source| StartError::StateDir {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(dir_error)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(dir_error)?;
    let path = dir.join(STATE_FILE);
    let open = || {
        State::builder()
            .persistent(path.clone(), &[namespaces::CONFIG], registry.clone())
            .open()
    };
    let (state, report) = match open() {
        Ok(opened) => opened,
        Err(e @ StateError::Corrupt { .. }) => {
            let aside = dir.join(format!("{STATE_FILE}.corrupt-{}", unix_time()));
            std::fs::rename(&path, &aside).map_err(dir_error)?;
            let problem = format!(
                "the state on STATE does not open ({e}): moved to {}, starting afresh",
                aside.display()
            );
            tracing::error!(problem = %problem, "state");
            problems.push(problem);
            open()?
        }
        Err(e) => return Err(e.into()),
    };
    for skipped in &report.skipped {
        problems.push(format!("a record on STATE was not loaded: {skipped}"));
    }
    tracing::info!(?report, "state loaded");
    Ok(state)
}

fn unix_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Logs "Machine API ready" once the API accepts connections (apid may be a process of
/// its own, still starting): the moment a client can reach the node, which the boot
/// figures measure from the log.
async fn announce_ready(listen: SocketAddr, ready: tokio::sync::watch::Sender<bool>) {
    let addr = match listen.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => {
            SocketAddr::from(([127, 0, 0, 1], listen.port()))
        }
        ip if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, listen.port()))
        }
        _ => listen,
    };
    let started = std::time::Instant::now();
    while started.elapsed() < READY_PATIENCE {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            tracing::info!(%addr, elapsed = ?started.elapsed(), "Machine API ready");
            ready.send_replace(true);
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tracing::warn!(%addr, "the Machine API accepts no connection after {READY_PATIENCE:?}");
    ready.send_replace(true);
}

async fn wait_for_certificates(state: &State, timeout: Duration) -> Result<(), StartError> {
    let key = ResourceKey::of::<ApiCertificatesSpec>(ApiCertificatesSpec::ID);
    let mut watch = state.watch(&key).await?;
    let appeared = async {
        loop {
            match watch.next().await {
                Some(Ok(Event::Created(_) | Event::Updated { .. })) => return,
                Some(_) => continue,
                None => std::future::pending().await,
            }
        }
    };
    tokio::time::timeout(timeout, appeared)
        .await
        .map_err(|_| StartError::NoCertificates(timeout))
}
