//! apid in its own process: the API's edge runs as a child of machined, under its own
//! uid with no capabilities, and reaches the node over machined's unix socket. The same
//! binary plays both roles (by argv[0]): [`RoleProcess`] is machined's side (start,
//! restart with backoff, stop), [`run_apid`] the child's.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use apid::{Apid, ApidOptions, Limits};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::boot::reaper;

/// How machined runs apid as a separate process.
#[derive(Debug, Clone)]
pub struct ApidProcessOptions {
    /// apid's uid and gid: not root, so it holds no capabilities.
    pub uid: u32,
    pub gid: u32,
    /// Where machined's socket lives (`/run/basalt` on a node).
    pub run_dir: PathBuf,
    /// The binary to run as apid (machined's own, by default).
    pub binary: Option<PathBuf>,
}

impl ApidProcessOptions {
    pub fn socket(&self) -> PathBuf {
        self.run_dir.join("machined.sock")
    }
}

/// The first restart waits this long, doubling up to the maximum.
const RESTART_BACKOFF: Duration = Duration::from_millis(500);
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A stopped apid has this long to finish its calls before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The command line of the apid role.
#[derive(Debug, clap::Parser)]
#[command(
    name = "apid",
    about = "The Basalt Machine API's edge (started by machined)"
)]
pub struct ApidArgs {
    #[arg(long)]
    pub listen: SocketAddr,
    /// machined's unix socket.
    #[arg(long)]
    pub socket: PathBuf,
    #[arg(long, default_value_t = basalt_api::DEFAULT_PORT)]
    pub peer_port: u16,
    #[arg(long = "san")]
    pub sans: Vec<String>,
    #[arg(long, default_value_t = Limits::default().max_calls_per_client)]
    pub max_calls_per_client: usize,
    #[arg(long, default_value_t = Limits::default().calls_per_second)]
    pub rate: f64,
}

/// machined's side: keeps one process of a role (`apid`, `trustd`) running, under apid's
/// uid, until stopped (or dropped: then it stops in the background).
#[derive(Debug)]
pub(crate) struct RoleProcess {
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Drop for RoleProcess {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl RoleProcess {
    pub fn start(
        options: &ApidProcessOptions,
        role: &'static str,
        args: Vec<String>,
    ) -> RoleProcess {
        Self::start_after(options, role, args, std::future::ready(()))
    }

    /// As [`RoleProcess::start`], once `gate` completes (it is not started at all if
    /// stopped before).
    pub fn start_after(
        options: &ApidProcessOptions,
        role: &'static str,
        args: Vec<String>,
        gate: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> RoleProcess {
        let stop = CancellationToken::new();
        let (options, token) = (options.clone(), stop.clone());
        let task = tokio::spawn(async move {
            tokio::select! {
                () = gate => supervise(options, role, args, token).await,
                () = token.cancelled() => {}
            }
        });
        RoleProcess {
            stop,
            task: Some(task),
        }
    }

    /// Asks the process to stop (SIGTERM), kills it after a grace period, and waits.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(Err(e)) = match self.task.take() {
            Some(task) => Some(task.await),
            None => None,
        } {
            tracing::error!(error = %e, "a process supervisor failed");
        }
    }
}

/// The arguments machined gives its apid.
pub(crate) fn apid_args(
    listen: SocketAddr,
    socket: &std::path::Path,
    limits: &Limits,
    sans: &[String],
) -> Vec<String> {
    let mut args = vec![
        "--listen".to_string(),
        listen.to_string(),
        "--socket".to_string(),
        socket.display().to_string(),
        "--max-calls-per-client".to_string(),
        limits.max_calls_per_client.to_string(),
        "--rate".to_string(),
        limits.calls_per_second.to_string(),
    ];
    for san in sans {
        args.extend(["--san".to_string(), san.clone()]);
    }
    args
}

async fn supervise(
    options: ApidProcessOptions,
    role: &'static str,
    args: Vec<String>,
    stop: CancellationToken,
) {
    let binary = match &options.binary {
        Some(binary) => binary.clone(),
        None => PathBuf::from("/proc/self/exe"),
    };
    let mut backoff = RESTART_BACKOFF;
    loop {
        let mut command = tokio::process::Command::new(&binary);
        command
            .arg0(role)
            .args(&args)
            .uid(options.uid)
            .gid(options.gid)
            .env_clear()
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .kill_on_drop(true);
        let started = std::time::Instant::now();
        let (mut child, _waited) = match reaper::spawn(&mut command) {
            Ok(spawned) => spawned,
            Err(e) => {
                tracing::error!(binary = %binary.display(), role, error = %e, "cannot start the process");
                if sleep_or_stop(&stop, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
                continue;
            }
        };
        let pid = child.id();
        tracing::info!(pid, uid = options.uid, role, "started");
        let status = tokio::select! {
            status = child.wait() => status,
            () = stop.cancelled() => {
                terminate(&mut child, role).await;
                return;
            }
        };
        // A run that lasted a while starts the backoff over.
        if started.elapsed() > RESTART_BACKOFF_MAX {
            backoff = RESTART_BACKOFF;
        }
        tracing::error!(?status, role, restart_in = ?backoff, "exited");
        if sleep_or_stop(&stop, backoff).await {
            return;
        }
        backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
    }
}

/// Sleeps for `delay`; true if stopped meanwhile.
async fn sleep_or_stop(stop: &CancellationToken, delay: Duration) -> bool {
    tokio::select! {
        () = stop.cancelled() => true,
        () = tokio::time::sleep(delay) => false,
    }
}

async fn terminate(child: &mut tokio::process::Child, role: &str) {
    if let Some(pid) = child
        .id()
        .and_then(|pid| rustix::process::Pid::from_raw(pid as i32))
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        tracing::warn!(role, "did not stop within {STOP_GRACE:?}: killing it");
        let _ = child.kill().await;
    }
}

/// The apid role's main: the edge, its backend machined's socket, until SIGTERM.
pub async fn run_apid(args: ApidArgs) -> Result<(), apid::ApidError> {
    if let Err(e) = basalt_sys::Sys::set_no_new_privs(&basalt_sys::Linux) {
        tracing::warn!(error = %e, "cannot set no_new_privs");
    }
    let limits = Limits {
        max_calls_per_client: args.max_calls_per_client,
        calls_per_second: args.rate,
        burst: args.rate * 2.0,
        ..Limits::default()
    };
    let apid = Apid::start(ApidOptions {
        listen: args.listen,
        backend: apid::socket::backend(args.socket),
        limits,
        peer_port: args.peer_port,
        sans: args.sans,
    })
    .await?;
    tracing::info!(addr = %apid.local_addr(), "apid listening");
    terminated().await;
    apid.shutdown().await
}

/// Completes on SIGTERM (machined stopping a role's process) or Ctrl-C.
pub(crate) async fn terminated() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
