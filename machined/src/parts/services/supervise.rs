//! One service's life: wait for its dependencies, start it in its cgroup with its
//! capabilities, check its health while it runs, say how it ended, restart it with
//! backoff. Every transition is published as the service's `ServiceSpec`.

use std::process::{ExitStatus, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use basalt_resources::runtime::ServiceState;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::definition::{HealthCheck, RestartPolicy, ServiceDefinition};
use super::{cgroup, health, Service, Shared, SUPERVISOR_OWNER};
use crate::boot::reaper;
use crate::parts::logbuf::{LogBuffer, MAX_LINE};
use crate::parts::put_resource;

/// The `PATH` of a service whose definition sets none: services get only the environment
/// they are defined with, not apid's.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Records a transition in memory and in the state, and wakes the services waiting on
/// this one. A failed state write is logged and not fatal: the service keeps running,
/// and the next transition writes again.
pub(super) async fn transition(
    shared: &Shared,
    service: &Service,
    state: ServiceState,
    message: &str,
    pid: i32,
) {
    let id = &service.definition.id;
    let checked = service.definition.health.is_some();
    let mut current = service.status.lock().await;
    current.state = state;
    current.running = state == ServiceState::Running;
    current.healthy = current.running && !checked;
    current.message = message.to_string();
    current.pid = pid;
    current.health_message = if current.running && checked {
        "not checked yet".to_string()
    } else {
        String::new()
    };
    tracing::info!(service = %id, state = state.as_str(), pid, message, "service transition");
    if let Err(error) = put_resource(&shared.state, SUPERVISOR_OWNER, id, current.clone()).await {
        tracing::warn!(service = %id, %error, "could not publish the service status");
    }
    drop(current);
    shared.changes.send_modify(|n| *n = n.wrapping_add(1));
}

/// Records a health check's result of the run with `pid`; publishes only changes.
async fn set_health(shared: &Shared, service: &Service, pid: i32, result: Result<String, String>) {
    let id = &service.definition.id;
    let mut current = service.status.lock().await;
    if current.state != ServiceState::Running || current.pid != pid {
        return;
    }
    let (healthy, note) = match result {
        Ok(note) => (true, note),
        Err(why) => (false, why),
    };
    let message = if healthy {
        String::new()
    } else {
        format!("health check failed: {note}")
    };
    if current.healthy == healthy && current.message == message {
        return;
    }
    current.healthy = healthy;
    current.health_message = note;
    current.message = message;
    if healthy {
        tracing::info!(service = %id, pid, "service is healthy");
    } else {
        tracing::warn!(service = %id, pid, message = %current.message, "service is unhealthy");
    }
    if let Err(error) = put_resource(&shared.state, SUPERVISOR_OWNER, id, current.clone()).await {
        tracing::warn!(service = %id, %error, "could not publish the service status");
    }
    drop(current);
    shared.changes.send_modify(|n| *n = n.wrapping_add(1));
}

/// Tells the starter that the service has left its stopped state (it is Waiting or
/// Preparing now).
fn announce(prepared: &mut Option<oneshot::Sender<()>>) {
    if let Some(prepared) = prepared.take() {
        let _ = prepared.send(());
    }
}

/// Supervises one service until it is cancelled or its restart policy lets it end.
pub(super) async fn supervise(
    shared: Arc<Shared>,
    service: Arc<Service>,
    cancel: CancellationToken,
    mut prepared: Option<oneshot::Sender<()>>,
) {
    let options = &shared.options;
    let mut backoff = options.backoff_initial;
    loop {
        if !wait_for_dependencies(&shared, &service, &cancel, &mut prepared).await {
            transition(&shared, &service, ServiceState::Stopped, "", 0).await;
            return;
        }
        prepare(&shared, &service).await;
        announce(&mut prepared);
        let started = Instant::now();
        let (failed, message) = match run_once(&shared, &service, &cancel).await {
            RunOutcome::Cancelled(message) => {
                transition(&shared, &service, ServiceState::Stopped, &message, 0).await;
                return;
            }
            RunOutcome::Exited { success, message } => (!success, message),
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
    }
}

/// Waits until every dependency runs and is healthy, as Waiting with a message naming
/// those it waits for; false when cancelled meanwhile.
async fn wait_for_dependencies(
    shared: &Shared,
    service: &Service,
    cancel: &CancellationToken,
    prepared: &mut Option<oneshot::Sender<()>>,
) -> bool {
    if service.dependencies.is_empty() {
        return true;
    }
    let mut changes = shared.changes.subscribe();
    loop {
        // Marked seen before looking: a change from now on wakes the wait below.
        changes.borrow_and_update();
        let mut missing = Vec::new();
        for dependency in &service.dependencies {
            let status = dependency.status.lock().await;
            if !(status.state == ServiceState::Running && status.healthy) {
                missing.push(dependency.definition.id.as_str());
            }
        }
        if missing.is_empty() {
            return true;
        }
        let message = format!("waiting for {}", missing.join(", "));
        let unchanged = {
            let current = service.status.lock().await;
            current.state == ServiceState::Waiting && current.message == message
        };
        if !unchanged {
            transition(shared, service, ServiceState::Waiting, &message, 0).await;
        }
        announce(prepared);
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return false },
            () = cancel.cancelled() => return false,
        }
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
    Exited {
        success: bool,
        message: String,
    },
    /// Not started, or lost: the message says why.
    Failed(String),
    /// Stopped on request; the message says how it ended.
    Cancelled(String),
}

pub(super) fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => format!("ended: {status}"),
    }
}

/// How the run ended, told from its exit and its cgroup's OOM kill counter: a SIGKILL
/// from the kernel for the memory limit reads as such, not as "killed by signal 9".
fn describe_end(
    status: ExitStatus,
    memory_max: Option<u64>,
    oom_before: Option<u64>,
    oom_after: Option<u64>,
) -> String {
    use std::os::unix::process::ExitStatusExt;
    let oom_kills = oom_after
        .unwrap_or(0)
        .saturating_sub(oom_before.unwrap_or(0));
    let (Some(max), true) = (memory_max, oom_kills > 0) else {
        return describe_exit(status);
    };
    if status.signal() == Some(Signal::SIGKILL as i32) {
        format!("killed: over its memory limit of {max} bytes (oom_kill)")
    } else {
        format!(
            "{}; {oom_kills} of its processes killed over its memory limit of {max} bytes (oom_kill)",
            describe_exit(status)
        )
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

/// Aborts a task when dropped (a run's health checks end with the run).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
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

/// One run of the service: its cgroup, spawn, publish Running, check its health, wait for
/// the exit or the stop request, remove the cgroup with whatever is left in it.
async fn run_once(
    shared: &Arc<Shared>,
    service: &Arc<Service>,
    cancel: &CancellationToken,
) -> RunOutcome {
    let definition = &service.definition;
    let id = &definition.id;
    let mut run_cgroup = cgroup::create(
        &shared.hierarchies,
        shared.options.cgroup_parent.as_deref(),
        definition,
    )
    .await;
    for limit in &run_cgroup.not_applied {
        tracing::warn!(service = %id, %limit, "limit not applied");
    }
    service.status.lock().await.limits_not_applied = run_cgroup.not_applied.clone();

    let mut cmd = command(definition);
    let procs = run_cgroup
        .cgroup
        .as_mut()
        .map(|c| c.procs_files())
        .unwrap_or_default();
    if let Err(error) = basalt_sys::exec::confine(
        &mut cmd,
        procs,
        definition.user,
        definition.capabilities.as_deref(),
    ) {
        cgroup::remove(id, run_cgroup.cgroup).await;
        return RunOutcome::Failed(format!("could not confine the service: {error}"));
    }
    // Out of PID 1's reaper's reach while this waits for it.
    let spawned = reaper::spawn(&mut cmd);
    // The parent's copies of the cgroup.procs files are not needed once it has forked.
    drop(cmd);
    let (mut child, _waited) = match spawned {
        Ok(spawned) => spawned,
        Err(error) => {
            cgroup::remove(id, run_cgroup.cgroup).await;
            let argv0 = definition.command.first().map_or("", String::as_str);
            return RunOutcome::Failed(format!("could not start {argv0}: {error}"));
        }
    };
    let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) else {
        cgroup::remove(id, run_cgroup.cgroup).await;
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
    let checks = definition.health.clone().map(|check| {
        let (shared, service) = (Arc::clone(shared), Arc::clone(service));
        AbortOnDrop(tokio::spawn(check_health(shared, service, pid, check)))
    });

    let waited = tokio::select! {
        waited = child.wait() => Ok(waited),
        () = cancel.cancelled() => Err(()),
    };
    // No health result of this run may land after its end is published: abort the
    // checks and wait until they are gone.
    if let Some(mut checks) = checks {
        checks.0.abort();
        let _ = (&mut checks.0).await;
    }
    let outcome = match waited {
        Ok(Ok(status)) => {
            drop(group);
            let oom_after = cgroup::remove(id, run_cgroup.cgroup).await;
            return RunOutcome::Exited {
                success: status.success(),
                message: describe_end(
                    status,
                    definition.resources.memory_max,
                    run_cgroup.oom_before,
                    oom_after,
                ),
            };
        }
        Ok(Err(error)) => RunOutcome::Failed(format!("waiting for pid {pid}: {error}")),
        Err(()) => {
            let message = terminate(&mut child, &group, shared.options.stop_grace).await;
            tracing::info!(service = %id, pid, %message, "service stopped");
            RunOutcome::Cancelled(message)
        }
    };
    // Anything the service left behind, in its group or its cgroup, goes with it.
    drop(group);
    cgroup::remove(id, run_cgroup.cgroup).await;
    outcome
}

/// Checks the health of the run with `pid` until aborted.
async fn check_health(shared: Arc<Shared>, service: Arc<Service>, pid: i32, check: HealthCheck) {
    tokio::time::sleep(check.initial_delay).await;
    loop {
        let result = health::check_once(&check).await;
        set_health(&shared, &service, pid, result).await;
        tokio::time::sleep(health::next_delay(&check)).await;
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
pub(super) async fn pump(mut output: impl AsyncRead + Unpin, log: Arc<LogBuffer>) {
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
    use std::os::unix::process::ExitStatusExt;

    use super::*;
    use crate::parts::logbuf::tests::collect;
    use crate::parts::LogLimits;

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

    #[test]
    fn an_oom_kill_reads_as_one() {
        let killed = ExitStatus::from_raw(9);
        let exited = ExitStatus::from_raw(1 << 8);
        assert_eq!(
            describe_end(killed, Some(1000), Some(0), Some(1)),
            "killed: over its memory limit of 1000 bytes (oom_kill)"
        );
        assert_eq!(
            describe_end(killed, Some(1000), Some(1), Some(1)),
            "killed by signal 9"
        );
        assert_eq!(
            describe_end(killed, None, None, Some(1)),
            "killed by signal 9"
        );
        assert_eq!(
            describe_end(exited, Some(1000), None, Some(2)),
            "exited with code 1; 2 of its processes killed over its memory limit of 1000 bytes (oom_kill)"
        );
    }
}
