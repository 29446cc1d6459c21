//! What a service is: its command, when it restarts, what it waits for, how its health
//! is checked, its limits and capabilities; and the checks [`Supervisor::new`] makes on a
//! set of them (unknown dependencies, cycles, health check addresses).
//!
//! [`Supervisor::new`]: super::Supervisor::new

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use basalt_sys::exec::{Capability, User};

use crate::parts::NodeError;

/// When a service that exited is started again (`always`, `onFailure`, `never` in an
/// extension service's description).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

/// How a service's health is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthKind {
    /// Healthy when a TCP connection to the address succeeds.
    Tcp(SocketAddr),
    /// Healthy when a GET of the URL (plain HTTP on loopback) answers 2xx and, with
    /// `expect`, the body contains it (etcd's `/health`: `"health":"true"`).
    Http { url: String, expect: Option<String> },
}

/// A health check, run every `interval` from `initial_delay` after the service starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub kind: HealthKind,
    pub interval: Duration,
    /// One check that takes longer has failed.
    pub timeout: Duration,
    pub initial_delay: Duration,
}

impl HealthCheck {
    pub fn tcp(address: SocketAddr) -> Self {
        HealthCheck::of(HealthKind::Tcp(address))
    }

    pub fn http(url: impl Into<String>) -> Self {
        HealthCheck::of(HealthKind::Http {
            url: url.into(),
            expect: None,
        })
    }

    fn of(kind: HealthKind) -> Self {
        HealthCheck {
            kind,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            initial_delay: Duration::ZERO,
        }
    }

    /// Healthy only when the body contains `text` (HTTP checks).
    pub fn expect(mut self, text: impl Into<String>) -> Self {
        if let HealthKind::Http { expect, .. } = &mut self.kind {
            *expect = Some(text.into());
        }
        self
    }

    /// Why the supervisor would refuse this check (an HTTP check must be plain HTTP to a
    /// loopback address), if it would.
    pub fn refused(&self) -> Option<String> {
        match &self.kind {
            HealthKind::Http { url, .. } => http_target(url).err(),
            HealthKind::Tcp(_) => None,
        }
    }

    pub fn timing(
        mut self,
        interval: Duration,
        timeout: Duration,
        initial_delay: Duration,
    ) -> Self {
        self.interval = interval;
        self.timeout = timeout;
        self.initial_delay = initial_delay;
        self
    }
}

/// Limits of a service's cgroup; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServiceResources {
    /// Bytes; over it the kernel kills the service (and the supervisor says so).
    pub memory_max: Option<u64>,
    /// Processes and threads at once; a fork past it fails with EAGAIN.
    pub pids_max: Option<u64>,
}

/// What to run for one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceDefinition {
    pub id: String,
    /// argv; the first element is looked up in the service's `PATH`.
    pub command: Vec<String>,
    /// The whole environment of the service (plus a default `PATH` when it has none).
    pub env: BTreeMap<String, String>,
    pub restart: RestartPolicy,
    /// Ids of services that must be running and healthy before this one starts (and
    /// before each restart).
    pub depends_on: Vec<String>,
    /// Why this node does not run the service (a condition not met here): it is
    /// published as Skipped with this reason and never started.
    pub skip: Option<String>,
    /// Without one, the service is healthy while it runs.
    pub health: Option<HealthCheck>,
    pub resources: ServiceResources,
    /// The only capabilities the service keeps (with no_new_privs); `None` keeps
    /// machined's.
    pub capabilities: Option<Vec<Capability>>,
    /// The user it runs as; `None`: machined's (root).
    pub user: Option<User>,
}

impl ServiceDefinition {
    pub fn new(id: impl Into<String>, command: &[&str]) -> Self {
        ServiceDefinition {
            id: id.into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            env: BTreeMap::new(),
            restart: RestartPolicy::default(),
            depends_on: Vec::new(),
            skip: None,
            health: None,
            resources: ServiceResources::default(),
            capabilities: None,
            user: None,
        }
    }

    pub fn user(mut self, user: User) -> Self {
        self.user = Some(user);
        self
    }

    pub fn restart(mut self, restart: RestartPolicy) -> Self {
        self.restart = restart;
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    pub fn depends_on(mut self, id: impl Into<String>) -> Self {
        self.depends_on.push(id.into());
        self
    }

    pub fn skip(mut self, reason: impl Into<String>) -> Self {
        self.skip = Some(reason.into());
        self
    }

    pub fn health(mut self, check: HealthCheck) -> Self {
        self.health = Some(check);
        self
    }

    pub fn memory_max(mut self, bytes: u64) -> Self {
        self.resources.memory_max = Some(bytes);
        self
    }

    pub fn pids_max(mut self, pids: u64) -> Self {
        self.resources.pids_max = Some(pids);
        self
    }

    pub fn capabilities(mut self, capabilities: Vec<Capability>) -> Self {
        self.capabilities = Some(capabilities);
        self
    }
}

/// Why a set of definitions is refused.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    #[error("service {id} has an empty command")]
    EmptyCommand { id: String },
    #[error("service {id} is defined twice")]
    Duplicate { id: String },
    #[error("service {id} depends on {dependency}, which is not defined")]
    UnknownDependency { id: String, dependency: String },
    #[error("services depend on each other in a cycle: {}", cycle.join(" -> "))]
    Cycle { cycle: Vec<String> },
    #[error("service {id}: health check URL {url:?}: {reason}")]
    HealthUrl {
        id: String,
        url: String,
        reason: String,
    },
}

impl From<DefinitionError> for NodeError {
    fn from(error: DefinitionError) -> Self {
        NodeError::InvalidArgument(error.to_string())
    }
}

/// The indices of `definitions` in an order where each service comes after its
/// dependencies; refuses empty commands, duplicates, unknown dependencies, cycles and
/// health check URLs that are not plain HTTP on loopback.
pub(super) fn check(definitions: &[ServiceDefinition]) -> Result<Vec<usize>, DefinitionError> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, definition) in definitions.iter().enumerate() {
        let id = &definition.id;
        if definition.command.is_empty() {
            return Err(DefinitionError::EmptyCommand { id: id.clone() });
        }
        if index.insert(id, i).is_some() {
            return Err(DefinitionError::Duplicate { id: id.clone() });
        }
        if let Some(HealthCheck {
            kind: HealthKind::Http { url, .. },
            ..
        }) = &definition.health
        {
            http_target(url).map_err(|reason| DefinitionError::HealthUrl {
                id: id.clone(),
                url: url.clone(),
                reason,
            })?;
        }
    }
    let mut deps: Vec<Vec<usize>> = Vec::with_capacity(definitions.len());
    for definition in definitions {
        let mut these = Vec::new();
        for dependency in &definition.depends_on {
            let &i = index.get(dependency.as_str()).ok_or_else(|| {
                DefinitionError::UnknownDependency {
                    id: definition.id.clone(),
                    dependency: dependency.clone(),
                }
            })?;
            these.push(i);
        }
        deps.push(these);
    }
    // Depth-first, with the path so far to name a cycle.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let mut marks = vec![Mark::New; definitions.len()];
    let mut order = Vec::with_capacity(definitions.len());
    fn visit(
        i: usize,
        deps: &[Vec<usize>],
        marks: &mut [Mark],
        path: &mut Vec<usize>,
        order: &mut Vec<usize>,
        definitions: &[ServiceDefinition],
    ) -> Result<(), DefinitionError> {
        match marks.get(i).copied() {
            Some(Mark::Done) | None => return Ok(()),
            Some(Mark::OnPath) => {
                let from = path.iter().position(|&p| p == i).unwrap_or(0);
                let cycle = path
                    .get(from..)
                    .unwrap_or_default()
                    .iter()
                    .chain(std::iter::once(&i))
                    .filter_map(|&p| definitions.get(p).map(|d| d.id.clone()))
                    .collect();
                return Err(DefinitionError::Cycle { cycle });
            }
            Some(Mark::New) => {}
        }
        if let Some(mark) = marks.get_mut(i) {
            *mark = Mark::OnPath;
        }
        path.push(i);
        for &dep in deps.get(i).map(Vec::as_slice).unwrap_or_default() {
            visit(dep, deps, marks, path, order, definitions)?;
        }
        path.pop();
        if let Some(mark) = marks.get_mut(i) {
            *mark = Mark::Done;
        }
        order.push(i);
        Ok(())
    }
    for i in 0..definitions.len() {
        visit(
            i,
            &deps,
            &mut marks,
            &mut Vec::new(),
            &mut order,
            definitions,
        )?;
    }
    Ok(order)
}

/// Where an HTTP health check connects: the URL must be `http://` to a loopback address
/// (`localhost` is 127.0.0.1: a static binary has no resolver to ask).
pub(super) fn http_target(url: &str) -> Result<(SocketAddr, http::Uri), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err("only http:// is checked".to_string());
    }
    let host = uri.host().ok_or("no host")?;
    let ip: IpAddr = if host == "localhost" {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| format!("{host} is not an IP address or localhost"))?
    };
    if !ip.is_loopback() {
        return Err(format!("{ip} is not a loopback address"));
    }
    Ok((SocketAddr::new(ip, uri.port_u16().unwrap_or(80)), uri))
}
