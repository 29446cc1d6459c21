//! A small process supervisor: real child processes, their output in a bounded ring,
//! restarts with backoff, and a `ServiceSpec` resource per service on every transition.
//!
//! Each service runs in its own process group, so that stopping it also stops whatever
//! it forked (a shell's children): real services get a cgroup in machined; a process group
//! is the part of that an unprivileged, in-process supervisor can have.

use std::collections::BTreeMap;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use basalt_api::machine::v1 as api;
use basalt_resources::runtime::{ServiceSpec, ServiceState};
use basalt_state::State;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::sync::{oneshot, Mutex};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::logbuf::{LogBuffer, LogLimits, MAX_LINE};
use super::put_resource;
use crate::boot::reaper;
use crate::parts::{ByteStream, NodeError, Services};

/// The owner of the `ServiceSpec` resources this supervisor writes.
pub const SUPERVISOR_OWNER: &str = "machined.Supervisor";

/// The `PATH` of a service whose definition sets none: services get only the environment
/// they are defined with, not apid's.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// When a service that exited is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
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
}

impl ServiceDefinition {
    pub fn new(id: impl Into<String>, command: &[&str]) -> Self {
        ServiceDefinition {
            id: id.into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            env: BTreeMap::new(),
            restart: RestartPolicy::default(),
        }
    }

    pub fn restart(mut self, restart: RestartPolicy) -> Self {
        self.restart = restart;
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }
}

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
}

impl Default for SupervisorOptions {
    fn default() -> Self {
        SupervisorOptions {
            stop_grace: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            backoff_reset_after: Duration::from_secs(60),
            logs: LogLimits::default(),
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
}

/// Supervises the services it was given. Dropping it stops them all (in the background);
/// [`Supervisor::shutdown`] stops them and waits.
#[derive(Debug)]
pub struct Supervisor {
    shared: Arc<Shared>,
    /// In definition order.
    services: Vec<Arc<Service>>,
}

impl Supervisor {
    /// A supervisor with every service stopped; nothing is written to the state until a
    /// service is started ([`Supervisor::start_all`] or [`Services::start`]).
    pub fn new(
        state: State,
        definitions: Vec<ServiceDefinition>,
        options: SupervisorOptions,
    ) -> Result<Self, NodeError> {
        let mut services: Vec<Arc<Service>> = Vec::with_capacity(definitions.len());
        for definition in definitions {
            if definition.command.is_empty() {
                return Err(NodeError::InvalidArgument(format!(
                    "service {} has an empty command",
                    definition.id
                )));
            }
            if services.iter().any(|s| s.definition.id == definition.id) {
                return Err(NodeError::InvalidArgument(format!(
                    "service {} is defined twice",
                    definition.id
                )));
            }
            services.push(Arc::new(Service {
                log: Arc::new(LogBuffer::new(options.logs)),
                status: Mutex::new(status(ServiceState::Stopped, "", 0, 0)),
                runner: Mutex::new(None),
                started: AtomicBool::new(false),
                definition,
            }));
        }
        Ok(Supervisor {
            shared: Arc::new(Shared {
                state,
                options,
                shutdown: CancellationToken::new(),
            }),
            services,
        })
    }

    /// Starts every service that is not running; fails only once shut down.
    pub async fn start_all(&self) -> Result<(), NodeError> {
        for service in &self.services {
            let mut runner = service.runner.lock().await;
            if !is_running(&runner) {
                self.launch(service, &mut runner).await?;
            }
        }
        Ok(())
    }

    /// Stops every service (SIGTERM, then SIGKILL after the grace period) and waits.
    pub async fn shutdown(&self) {
        self.shared.shutdown.cancel();
        for service in &self.services {
            Self::stop_runner(&mut *service.runner.lock().await).await;
        }
    }

    fn find(&self, id: &str) -> Result<&Arc<Service>, NodeError> {
        self.services
            .iter()
            .find(|s| s.definition.id == id)
            .ok_or_else(|| NodeError::NotFound(format!("service {id}")))
    }

    /// Starts supervising `service` into `slot`. The service is Preparing when this
    /// returns, so a caller that lists services next never sees its state from before
    /// the start. Safe to drop halfway: the runner is in the slot before anything waits.
    async fn launch(
        &self,
        service: &Arc<Service>,
        slot: &mut Option<Runner>,
    ) -> Result<(), NodeError> {
        if self.shared.shutdown.is_cancelled() {
            return Err(NodeError::FailedPrecondition(format!(
                "service {} cannot start: its supervisor is shut down",
                service.definition.id
            )));
        }
        let cancel = self.shared.shutdown.child_token();
        let (prepared, is_prepared) = oneshot::channel();
        let (shared, service) = (Arc::clone(&self.shared), Arc::clone(service));
        let token = cancel.clone();
        let task = tokio::spawn(async move {
            prepare(&shared, &service).await;
            let _ = prepared.send(());
            supervise(shared, service, token).await;
        });
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
        self.shared.shutdown.cancel();
    }
}

fn is_running(runner: &Option<Runner>) -> bool {
    runner.as_ref().is_some_and(|r| !r.task.is_finished())
}

fn status(state: ServiceState, message: &str, pid: i32, restarts: u32) -> ServiceSpec {
    ServiceSpec {
        state,
        running: state == ServiceState::Running,
        healthy: state == ServiceState::Running,
        message: message.to_string(),
        pid,
        restarts,
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

/// Records a transition in memory and in the state. A failed state write is logged and
/// not fatal: the service keeps running, and the next transition writes again.
async fn transition(
    shared: &Shared,
    service: &Service,
    state: ServiceState,
    message: &str,
    pid: i32,
) {
    let id = &service.definition.id;
    let mut current = service.status.lock().await;
    *current = status(state, message, pid, current.restarts);
    tracing::info!(service = %id, state = state.as_str(), pid, message, "service transition");
    if let Err(error) = put_resource(&shared.state, SUPERVISOR_OWNER, id, current.clone()).await {
        tracing::warn!(service = %id, %error, "could not publish the service status");
    }
}

/// Supervises one service (already Preparing) until it is cancelled or its restart
/// policy lets it end.
async fn supervise(shared: Arc<Shared>, service: Arc<Service>, cancel: CancellationToken) {
    let options = &shared.options;
    let mut backoff = options.backoff_initial;
    loop {
        let started = Instant::now();
        let outcome = run_once(&shared, &service, &cancel).await;
        let (failed, message) = match outcome {
            RunOutcome::Cancelled(message) => {
                transition(&shared, &service, ServiceState::Stopped, &message, 0).await;
                return;
            }
            RunOutcome::Exited(status) => (!status.success(), describe_exit(status)),
            RunOutcome::Failed(message) => (true, message),
        };
        let restart = match service.definition.restart {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => failed,
            RestartPolicy::Never => false,
        };
        let state = if failed {
            ServiceState::Failed
        } else {
            ServiceState::Finished
        };
        if !restart {
            transition(&shared, &service, state, &message, 0).await;
            return;
        }
        if started.elapsed() >= options.backoff_reset_after {
            backoff = options.backoff_initial;
        }
        let waiting = format!("{message}; restarting in {backoff:?}");
        transition(&shared, &service, state, &waiting, 0).await;
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = cancel.cancelled() => {
                transition(&shared, &service, ServiceState::Stopped, &message, 0).await;
                return;
            }
        }
        backoff = (backoff * 2).min(options.backoff_max);
        prepare(&shared, &service).await;
    }
}

/// The transition before each start; every start after the first counts as a restart.
async fn prepare(shared: &Shared, service: &Service) {
    if service.started.swap(true, Ordering::Relaxed) {
        service.status.lock().await.restarts += 1;
    }
    transition(shared, service, ServiceState::Preparing, "", 0).await;
}

enum RunOutcome {
    Exited(ExitStatus),
    /// Not started, or lost: the message says why.
    Failed(String),
    /// Stopped on request; the message says how it ended.
    Cancelled(String),
}

fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => format!("ended: {status}"),
    }
}

/// Kills the whole process group when dropped: also when the runner task is dropped with
/// its runtime, so no child outlives the supervisor. The kernel does not reuse the group's
/// id while any member lives; once none does, the signal finds nothing (ESRCH).
struct GroupGuard(Pid);

impl GroupGuard {
    fn signal(&self, signal: Signal) {
        // ESRCH: the group is already gone, which is what we want.
        if let Err(error) = killpg(self.0, signal) {
            if error != nix::errno::Errno::ESRCH {
                tracing::warn!(pgid = self.0.as_raw(), %signal, %error, "could not signal a service");
            }
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
    }
}

fn command(definition: &ServiceDefinition) -> Command {
    let mut argv = definition.command.iter();
    let mut cmd = Command::new(argv.next().map_or("", String::as_str));
    cmd.args(argv)
        .env_clear()
        .envs(&definition.env)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if !definition.env.contains_key("PATH") {
        cmd.env("PATH", DEFAULT_PATH);
    }
    cmd
}

/// One run of the service: spawn, publish Running, wait for the exit or the stop request.
async fn run_once(shared: &Shared, service: &Service, cancel: &CancellationToken) -> RunOutcome {
    let id = &service.definition.id;
    // Out of PID 1's reaper's reach while this waits for it.
    let (mut child, _waited) = match reaper::spawn(&mut command(&service.definition)) {
        Ok(spawned) => spawned,
        Err(error) => {
            let argv0 = service
                .definition
                .command
                .first()
                .map_or("", String::as_str);
            return RunOutcome::Failed(format!("could not start {argv0}: {error}"));
        }
    };
    let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) else {
        return RunOutcome::Failed("the process ended before it got a pid".to_string());
    };
    let group = GroupGuard(Pid::from_raw(pid));
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(pump(stdout, Arc::clone(&service.log)));
    }
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(pump(stderr, Arc::clone(&service.log)));
    }
    transition(shared, service, ServiceState::Running, "", pid).await;

    let waited = tokio::select! {
        waited = child.wait() => waited,
        () = cancel.cancelled() => {
            let message = terminate(&mut child, &group, shared.options.stop_grace).await;
            tracing::info!(service = %id, pid, %message, "service stopped");
            return RunOutcome::Cancelled(message);
        }
    };
    // `group` drops here: anything the service left behind in its group goes with it.
    match waited {
        Ok(status) => RunOutcome::Exited(status),
        Err(error) => RunOutcome::Failed(format!("waiting for pid {pid}: {error}")),
    }
}

/// SIGTERM to the group, SIGKILL after `grace`; returns how the service ended.
async fn terminate(child: &mut Child, group: &GroupGuard, grace: Duration) -> String {
    group.signal(Signal::SIGTERM);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(Ok(status)) => describe_exit(status),
        Ok(Err(error)) => format!("waiting after SIGTERM: {error}"),
        Err(_) => {
            group.signal(Signal::SIGKILL);
            match child.wait().await {
                Ok(status) => format!("did not exit within {grace:?}; {}", describe_exit(status)),
                Err(error) => format!("waiting after SIGKILL: {error}"),
            }
        }
    }
}

/// Copies a child's output into the log line by line, until the pipe closes. Lines
/// longer than [`MAX_LINE`] are cut into pieces, so a child that never writes a newline
/// cannot make this buffer without bound.
async fn pump(mut output: impl AsyncRead + Unpin, log: Arc<LogBuffer>) {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 8192];
    loop {
        let n = match output.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(buf.get(..n).unwrap_or_default());
        let mut start = 0;
        while let Some(pos) = pending
            .get(start..)
            .and_then(|rest| rest.iter().position(|&b| b == b'\n'))
        {
            push_line(&log, pending.get(start..start + pos).unwrap_or_default());
            start += pos + 1;
        }
        pending.drain(..start);
        let whole = pending.len() - pending.len() % MAX_LINE;
        if whole > 0 {
            push_line(&log, pending.get(..whole).unwrap_or_default());
            pending.drain(..whole);
        }
    }
    if !pending.is_empty() {
        push_line(&log, &pending);
    }
}

/// Logs one line (without its newline) as pieces of at most [`MAX_LINE`] bytes.
fn push_line(log: &LogBuffer, line: &[u8]) {
    if line.is_empty() {
        log.push(line);
    }
    for piece in line.chunks(MAX_LINE) {
        log.push(piece);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::parts::logbuf::tests::collect;

    #[tokio::test]
    async fn output_is_split_into_bounded_lines() {
        let log = Arc::new(LogBuffer::new(LogLimits::default()));
        let mut data = b"one\n\ntwo\r\n".to_vec();
        data.extend(std::iter::repeat_n(b'x', MAX_LINE + 10));
        data.extend_from_slice(b"\nlast without newline");
        pump(std::io::Cursor::new(data), Arc::clone(&log)).await;
        let text = collect(log.stream(false, None)).await;
        let lengths: Vec<_> = text.split_inclusive('\n').map(str::len).collect();
        assert_eq!(lengths, [4, 1, 5, MAX_LINE + 1, 11, 21]);
        assert!(text.starts_with("one\n\ntwo\r\nxxx"));
        assert!(text.ends_with("xx\nlast without newline\n"));
    }
}
