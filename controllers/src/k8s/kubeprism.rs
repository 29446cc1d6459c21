use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use basalt_controller_runtime::{Action, Controller, ControllerError, Input, Output, Runtime};
use basalt_kubeprism::{
    Balancer, BalancerConfig, BalancerStatus, Check, HealthConfig, HttpsCheck, Problem,
};
use basalt_resources::k8s::{
    KubePrismConfigSpec, KubePrismEndpointsSpec, KubePrismState, KubePrismStatusSpec,
    KubePrismUpstreamSpec,
};

/// How often the status is refreshed while the balancer runs (counters move without
/// any input changing).
const STATUS_PERIOD: Duration = Duration::from_secs(1);
/// Upstream names are resolved again this often by default (DNS answers change)...
const RESOLVE_EVERY: Duration = Duration::from_secs(30);
/// ...and at most this long apart while one of them does not resolve (DNS may come up
/// after us).
const RESOLVE_RETRY: Duration = Duration::from_secs(2);

/// Runs the KubePrism balancer as `KubePrismConfig` says, keeps its upstreams equal to
/// `KubePrismEndpoints`, and publishes its status and one resource per upstream.
#[derive(Debug)]
pub struct KubePrismController {
    listen_ip: IpAddr,
    base: BalancerConfig,
    resolve_every: Duration,
    running: Option<Running>,
}

#[derive(Debug)]
struct Running {
    config: KubePrismConfigSpec,
    balancer: Balancer,
    endpoints: Option<Vec<String>>,
    /// When the endpoints were last resolved, and whether one of them failed to.
    resolved: Option<(Instant, bool)>,
}

impl KubePrismController {
    /// Listens on `listen_ip` (the node's loopback address) at the configured port.
    pub fn new(listen_ip: IpAddr) -> Self {
        Self::with_config(listen_ip, BalancerConfig::default())
    }

    /// With balancer tunables other than the defaults (the health check still follows
    /// the config's CA).
    pub fn with_config(listen_ip: IpAddr, base: BalancerConfig) -> Self {
        KubePrismController {
            listen_ip,
            base,
            resolve_every: RESOLVE_EVERY,
            running: None,
        }
    }

    /// Resolves the upstream names again every `every` (30 s by default).
    pub fn resolving_every(mut self, every: Duration) -> Self {
        self.resolve_every = every;
        self
    }

    async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.balancer.shutdown().await;
        }
    }

    /// Starts the balancer for `config`, or says why it cannot.
    async fn start(&self, config: &KubePrismConfigSpec) -> Result<Balancer, String> {
        let mut balancer_config = self.base.clone();
        if let Some(ca) = &config.ca {
            let check = HttpsCheck::new(ca.as_bytes(), None).map_err(|e| e.to_string())?;
            // HTTPS checks come with their own intervals and timeout (see HealthConfig).
            balancer_config.health = HealthConfig::with_check(Check::Https(Arc::new(check)));
        }
        Balancer::bind(
            SocketAddr::new(self.listen_ip, config.port),
            balancer_config,
        )
        .await
        .map_err(|e| e.to_string())
    }
}

#[async_trait]
impl Controller for KubePrismController {
    basalt_controller_runtime::declare! {
        name: "k8s.KubePrismController",
        inputs: [
            Input::weak::<KubePrismConfigSpec>().with_id(KubePrismConfigSpec::ID),
            Input::weak::<KubePrismEndpointsSpec>().with_id(KubePrismEndpointsSpec::ID),
        ],
        outputs: [
            Output::exclusive::<KubePrismStatusSpec>(),
            Output::exclusive::<KubePrismUpstreamSpec>(),
        ],
    }

    async fn reconcile(&mut self, rt: &mut Runtime) -> Result<Action, ControllerError> {
        let config = rt
            .get::<KubePrismConfigSpec>(KubePrismConfigSpec::ID)
            .await?
            .map(|r| r.spec)
            .filter(|c| c.enabled);
        let Some(config) = config else {
            self.stop().await;
            rt.put_spec(
                KubePrismStatusSpec::ID,
                idle(KubePrismState::Disabled, Vec::new()),
            )
            .await?;
            return Ok(Action::Done);
        };
        if self.running.as_ref().is_some_and(|r| r.config != config) {
            // A new port or CA: a new listener. Connections through the old one carry on.
            self.stop().await;
        }
        let running = match &mut self.running {
            Some(running) => running,
            None => match self.start(&config).await {
                Ok(balancer) => self.running.insert(Running {
                    config,
                    balancer,
                    endpoints: None,
                    resolved: None,
                }),
                Err(problem) => {
                    tracing::warn!(%problem, "kubeprism cannot start");
                    rt.put_spec(
                        KubePrismStatusSpec::ID,
                        idle(KubePrismState::Failed, vec![problem]),
                    )
                    .await?;
                    return Ok(Action::RequeueAfter(STATUS_PERIOD));
                }
            },
        };

        let endpoints = rt
            .get::<KubePrismEndpointsSpec>(KubePrismEndpointsSpec::ID)
            .await?
            .map(|r| r.spec.endpoints)
            .unwrap_or_default();
        let every = self.resolve_every;
        let retry = every.min(RESOLVE_RETRY);
        let resolve_due = running
            .resolved
            .is_none_or(|(at, failed)| at.elapsed() >= if failed { retry } else { every });
        if running.endpoints.as_ref() != Some(&endpoints) || resolve_due {
            let problems = running.balancer.set_upstreams(&endpoints).await;
            let failed = problems
                .iter()
                .any(|p| matches!(p, Problem::Unresolvable { .. }));
            running.resolved = Some((Instant::now(), failed));
            running.endpoints = Some(endpoints);
        }

        let status = running.balancer.status();
        let mut shown = HashSet::new();
        for upstream in &status.upstreams {
            // A name whose address changed is listed twice while its old address drains:
            // its resource shows the current one (listed first).
            if shown.insert(&upstream.name) {
                rt.put_spec(&upstream.name, upstream_spec(upstream)).await?;
            }
        }
        rt.put_spec(KubePrismStatusSpec::ID, status_spec(&status))
            .await?;
        Ok(Action::RequeueAfter(STATUS_PERIOD.min(self.resolve_every)))
    }
}

fn idle(state: KubePrismState, problems: Vec<String>) -> KubePrismStatusSpec {
    KubePrismStatusSpec {
        state,
        listen: String::new(),
        healthy: 0,
        upstreams: 0,
        active_connections: 0,
        accepted: 0,
        refused: 0,
        failed: 0,
        problems,
    }
}

fn status_spec(status: &BalancerStatus) -> KubePrismStatusSpec {
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    KubePrismStatusSpec {
        state: KubePrismState::Running,
        listen: status.listen.to_string(),
        healthy: count(status.healthy()),
        upstreams: count(status.upstreams.len()),
        active_connections: status.active_connections,
        accepted: status.accepted,
        refused: status.refused,
        failed: status.failed,
        problems: status.problems.iter().map(ToString::to_string).collect(),
    }
}

fn upstream_spec(u: &basalt_kubeprism::UpstreamStatus) -> KubePrismUpstreamSpec {
    let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    KubePrismUpstreamSpec {
        address: u.address.to_string(),
        state: u.state.to_string(),
        active_connections: u.active,
        total_connections: u.total,
        bytes_sent: u.bytes_sent,
        bytes_received: u.bytes_received,
        dial_failures: u.dial_failures,
        check_failures: u.check_failures,
        dial_latency_us: micros(u.dial_latency),
        check_latency_us: u.check_latency.map(micros),
        last_error: u.last_error.clone(),
    }
}
