//! A process supervisor: real child processes, each in its own process group and its own
//! cgroup (with its memory and pids limits) and with only the capabilities it is given;
//! dependencies between services; health checks; restarts with backoff; output in a
//! bounded, compressed ring; a `ServiceSpec` resource per service on every transition.
//!
//! [`definition`] says what a service is; [`supervise`] runs one; [`cgroup`] and
//! [`health`] are its cgroups and its health checks.

mod cgroup;
mod definition;
mod health;
mod set;
mod supervise;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use basalt_api::machine::v1 as api;
use basalt_resources::runtime::{ServiceSpec, ServiceState};
use basalt_state::State;
use basalt_sys::cgroups::Hierarchy;
use tokio::sync::{oneshot, watch, Mutex};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use definition::{
    DefinitionError, HealthCheck, HealthKind, RestartPolicy, ServiceDefinition, ServiceResources,
};
pub use set::ServiceSet;

use super::logbuf::{LogBuffer, LogLimits};
use crate::parts::{ByteStream, NodeError, Services};

/// The owner of the `ServiceSpec` resources this supervisor writes.
pub const SUPERVISOR_OWNER: &str = "machined.Supervisor";

/// Timings and limits of the supervisor.
#[derive(Debug, Clone)]
pub struct SupervisorOptions {
    /// How long a service has to exit after SIGTERM before it gets SIGKILL.
    pub stop_grace: Duration,
    /// The first wait before a restart; it doubles on each quick failure.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// A run this long resets the backoff: the service was healthy for a while.
    pub backoff_reset_after: Duration,
    pub logs: LogLimits,
    /// The directory below machined's own cgroup (in each hierarchy) that holds a cgroup
    /// per service; `None` makes no cgroups (and reports every limit as not applied).
    pub cgroup_parent: Option<String>,
}

impl Default for SupervisorOptions {
    fn default() -> Self {
        SupervisorOptions {
            stop_grace: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            backoff_reset_after: Duration::from_secs(60),
            logs: LogLimits::default(),
            cgroup_parent: Some("basalt-services".to_string()),
        }
    }
}

/// The shared parts of one service: what the runner task and the API calls both touch.
#[derive(Debug)]
struct Service {
    definition: ServiceDefinition,
    log: Arc<LogBuffer>,
    /// The published status; its lock also orders the writes to the state.
    status: Mutex<ServiceSpec>,
    /// The running supervision of the service, if any; its lock serializes start/stop.
    runner: Mutex<Option<Runner>>,
    /// Set by the first start: every later start, automatic or asked for, is a restart.
    started: AtomicBool,
    /// The services this one waits for (they come before it in the supervisor's order, so
    /// these references make no cycle).
    dependencies: Vec<Arc<Service>>,
}

#[derive(Debug)]
struct Runner {
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    state: State,
    options: SupervisorOptions,
    /// Cancelled when the supervisor goes away: every runner stops its service.
    shutdown: CancellationToken,
    /// Set when [`Supervisor::shutdown`] begins: no service starts any more.
    closing: AtomicBool,
    /// Bumped on every transition: services waiting for others look again.
    changes: watch::Sender<u64>,
    /// The cgroup hierarchies machined is in, read once.
    hierarchies: Vec<Hierarchy>,
}

/// Supervises the services it was given. Dropping it stops them all (in the background);
/// [`Supervisor::shutdown`] stops them and waits.
#[derive(Debug)]
pub struct Supervisor {
    shared: Arc<Shared>,
    /// In definition order.
    services: Vec<Arc<Service>>,
    /// Indices into `services`, each after its dependencies.
    order: Vec<usize>,
    /// Set once a successor took over the shared parts ([`Supervisor::succeed`]).
    handed_over: AtomicBool,
}

impl Supervisor {
    /// A supervisor with every service stopped; nothing is written to the state until a
    /// service is started ([`Supervisor::start_all`] or [`Services::start`]). Refuses
    /// empty commands, duplicate ids, unknown dependencies, dependency cycles and health
    /// checks that are not on loopback.
    pub fn new(
        state: State,
        definitions: Vec<ServiceDefinition>,
        options: SupervisorOptions,
    ) -> Result<Self, NodeError> {
        let order = definition::check(&definitions)?;
        let hierarchies = if options.cgroup_parent.is_some() {
            basalt_sys::cgroups::own_hierarchies()
        } else {
            Vec::new()
        };
        let shared = Arc::new(Shared {
            state,
            options,
            shutdown: CancellationToken::new(),
            closing: AtomicBool::new(false),
            changes: watch::channel(0).0,
            hierarchies,
        });
        Ok(Self::assemble(shared, &definitions, order, &[], &[]))
    }

    /// The supervisor of `definitions` after this one, which it replaces: a service whose
    /// definition is unchanged, and so are those of everything it depends on, is taken
    /// over as it is (running, its status, log and restarts); every other service of
    /// this one is stopped, dependents first. A changed service keeps its log. Refuses
    /// what [`Supervisor::new`] refuses, leaving this one as it was.
    pub(super) async fn succeed(
        &self,
        definitions: Vec<ServiceDefinition>,
    ) -> Result<Supervisor, NodeError> {
        let order = definition::check(&definitions)?;
        let mut kept: Vec<Arc<Service>> = Vec::new();
        for definition in order.iter().filter_map(|&i| definitions.get(i)) {
            let same = self.services.iter().find(|s| s.definition == *definition);
            let deps_kept = definition
                .depends_on
                .iter()
                .all(|dep| kept.iter().any(|k| k.definition.id == *dep));
            if let (Some(service), true) = (same, deps_kept) {
                kept.push(Arc::clone(service));
            }
        }
        for service in self
            .order
            .iter()
            .rev()
            .filter_map(|&i| self.services.get(i))
        {
            if !kept.iter().any(|k| Arc::ptr_eq(k, service)) {
                Self::stop_runner(&mut *service.runner.lock().await).await;
            }
        }
        // The services taken over go on under the same shared parts: this one must not
        // stop them when it is dropped.
        self.handed_over.store(true, Ordering::SeqCst);
        Ok(Self::assemble(
            Arc::clone(&self.shared),
            &definitions,
            order,
            &self.services,
            &kept,
        ))
    }

    /// A supervisor over `shared` for checked `definitions` in `order`: the services of
    /// `kept` as they are, the others made anew (one named like one of `previous` keeps
    /// its log).
    fn assemble(
        shared: Arc<Shared>,
        definitions: &[ServiceDefinition],
        order: Vec<usize>,
        previous: &[Arc<Service>],
        kept: &[Arc<Service>],
    ) -> Supervisor {
        let mut made: Vec<Option<Arc<Service>>> = vec![None; definitions.len()];
        for &i in &order {
            let Some(definition) = definitions.get(i) else {
                continue;
            };
            if let Some(same) = kept.iter().find(|k| k.definition.id == definition.id) {
                if let Some(slot) = made.get_mut(i) {
                    *slot = Some(Arc::clone(same));
                }
                continue;
            }
            // Dependencies come first in `order`: each is made already.
            let dependencies = definition
                .depends_on
                .iter()
                .filter_map(|dep| {
                    made.iter()
                        .flatten()
                        .find(|s| s.definition.id == *dep)
                        .cloned()
                })
                .collect();
            let log = previous
                .iter()
                .find(|p| p.definition.id == definition.id)
                .map(|p| Arc::clone(&p.log))
                .unwrap_or_else(|| Arc::new(LogBuffer::new(shared.options.logs)));
            if let Some(slot) = made.get_mut(i) {
                *slot = Some(Arc::new(Service {
                    log,
                    status: Mutex::new(stopped()),
                    runner: Mutex::new(None),
                    started: AtomicBool::new(false),
                    dependencies,
                    definition: definition.clone(),
                }));
            }
        }
        Supervisor {
            shared,
            services: made.into_iter().flatten().collect(),
            order,
            handed_over: AtomicBool::new(false),
        }
    }

    /// Starts every service that is not running, in dependency order: a service whose
    /// dependencies are not running and healthy yet waits for them (Waiting) without
    /// holding up the others. Services the node skips are published as Skipped. Fails
    /// only once shut down.
    pub async fn start_all(&self) -> Result<(), NodeError> {
        for service in self.order.iter().filter_map(|&i| self.services.get(i)) {
            if let Some(reason) = &service.definition.skip {
                let state = service.status.lock().await.state;
                if state != ServiceState::Skipped {
                    supervise::transition(&self.shared, service, ServiceState::Skipped, reason, 0)
                        .await;
                }
                continue;
            }
            let mut runner = service.runner.lock().await;
            if !is_running(&runner) {
                self.launch(service, &mut runner).await?;
            }
        }
        Ok(())
    }

    /// Stops every service (SIGTERM, then SIGKILL after the grace period) and waits;
    /// dependents before what they depend on (kubelet before etcd), so that none sees its
    /// dependency go while it still runs.
    pub async fn shutdown(&self) {
        // No start from here on; each runner is then stopped in turn (cancelling the
        // shared token first would stop them all at once).
        self.shared.closing.store(true, Ordering::SeqCst);
        for service in self
            .order
            .iter()
            .rev()
            .filter_map(|&i| self.services.get(i))
        {
            Self::stop_runner(&mut *service.runner.lock().await).await;
        }
        self.shared.shutdown.cancel();
    }

    fn find(&self, id: &str) -> Result<&Arc<Service>, NodeError> {
        self.services
            .iter()
            .find(|s| s.definition.id == id)
            .ok_or_else(|| NodeError::NotFound(format!("service {id}")))
    }

    /// Starts supervising `service` into `slot`. The service is Waiting or Preparing when
    /// this returns, so a caller that lists services next never sees its state from before
    /// the start. Safe to drop halfway: the runner is in the slot before anything waits.
    async fn launch(
        &self,
        service: &Arc<Service>,
        slot: &mut Option<Runner>,
    ) -> Result<(), NodeError> {
        if self.shared.shutdown.is_cancelled() || self.shared.closing.load(Ordering::SeqCst) {
            return Err(NodeError::FailedPrecondition(format!(
                "service {} cannot start: its supervisor is shut down",
                service.definition.id
            )));
        }
        // A call that began before the node's services changed: its successor runs them.
        if self.handed_over.load(Ordering::SeqCst) {
            return Err(NodeError::Unavailable(format!(
                "service {} cannot start: the node's services changed meanwhile; try again",
                service.definition.id
            )));
        }
        if let Some(reason) = &service.definition.skip {
            return Err(NodeError::FailedPrecondition(format!(
                "service {} is skipped on this node: {reason}",
                service.definition.id
            )));
        }
        let cancel = self.shared.shutdown.child_token();
        let (prepared, is_prepared) = oneshot::channel();
        let (shared, service) = (Arc::clone(&self.shared), Arc::clone(service));
        let token = cancel.clone();
        let task = tokio::spawn(supervise::supervise(shared, service, token, Some(prepared)));
        *slot = Some(Runner { cancel, task });
        // An error means the task is gone (a panic); the slot shows it finished.
        let _ = is_prepared.await;
        Ok(())
    }

    /// Stops the service supervised from `slot`, if any; true when one was running. The
    /// runner leaves the slot only once it has finished, so a start cannot overlap the
    /// end of a stop, even if this is dropped halfway.
    async fn stop_runner(slot: &mut Option<Runner>) -> bool {
        let Some(runner) = slot.as_mut() else {
            return false;
        };
        let was_running = !runner.task.is_finished();
        runner.cancel.cancel();
        let _ = (&mut runner.task).await;
        *slot = None;
        was_running
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if !self.handed_over.load(Ordering::SeqCst) {
            self.shared.shutdown.cancel();
        }
    }
}

fn is_running(runner: &Option<Runner>) -> bool {
    runner.as_ref().is_some_and(|r| !r.task.is_finished())
}

fn stopped() -> ServiceSpec {
    ServiceSpec {
        state: ServiceState::Stopped,
        running: false,
        healthy: false,
        message: String::new(),
        health_message: String::new(),
        limits_not_applied: Vec::new(),
        pid: 0,
        restarts: 0,
    }
}

#[async_trait]
impl Services for Supervisor {
    async fn list(&self) -> Result<Vec<api::ServiceInfo>, NodeError> {
        let mut out = Vec::with_capacity(self.services.len());
        for service in &self.services {
            let s = service.status.lock().await.clone();
            out.push(api::ServiceInfo {
                id: service.definition.id.clone(),
                state: s.state.as_str().to_string(),
                healthy: s.healthy,
                message: s.message,
                pid: s.pid,
                restarts: s.restarts,
            });
        }
        Ok(out)
    }

    /// Starting a service that is already supervised (running, or waiting to restart) is
    /// refused: a silent success would hide that nothing was restarted.
    async fn start(&self, id: &str) -> Result<String, NodeError> {
        let service = self.find(id)?;
        let mut runner = service.runner.lock().await;
        if is_running(&runner) {
            return Err(NodeError::FailedPrecondition(format!(
                "service {id} is already running"
            )));
        }
        self.launch(service, &mut runner).await?;
        Ok(format!("service {id} started"))
    }

    /// Stopping a service that is not running succeeds: it is where it was asked to be.
    async fn stop(&self, id: &str) -> Result<String, NodeError> {
        let service = self.find(id)?;
        let mut runner = service.runner.lock().await;
        Ok(if Self::stop_runner(&mut runner).await {
            format!("service {id} stopped")
        } else {
            format!("service {id} was not running")
        })
    }

    async fn restart(&self, id: &str) -> Result<String, NodeError> {
        let service = self.find(id)?;
        let mut runner = service.runner.lock().await;
        Self::stop_runner(&mut runner).await;
        self.launch(service, &mut runner).await?;
        Ok(format!("service {id} restarted"))
    }

    async fn logs(
        &self,
        id: &str,
        follow: bool,
        tail: Option<usize>,
    ) -> Result<ByteStream, NodeError> {
        Ok(self.find(id)?.log.stream(follow, tail))
    }
}
