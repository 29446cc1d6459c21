use std::fmt::Debug;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use basalt_controller_runtime::{Action, Controller, ControllerError, Input, Output, Runtime};
use basalt_resources::network::NetworkServersConfigSpec;
use basalt_resources::time::TimeStatusSpec;
use sntpc::{NtpContext, StdTimestampGen};
use sntpc_net_tokio::UdpSocketWrapper;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The NTP port, for servers named without one.
const NTP_PORT: u16 = 123;
/// How long one server has to answer.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// An offset beyond this is stepped at once (ntpd's step threshold); within it the clock
/// counts as synced.
const STEP_THRESHOLD_MICROS: i64 = 128_000;
/// How often a synced node asks again, and the longest wait after failures.
const POLL: Duration = Duration::from_secs(64);
/// The first wait after a failed round; it doubles up to [`POLL`].
const RETRY: Duration = Duration::from_secs(2);

/// What sets the node's clock: the kernel's, or a test's record.
pub trait Clock: Send + Sync + Debug + 'static {
    /// Moves the clock by `offset_micros` (positive: forward).
    fn step(&self, offset_micros: i64) -> io::Result<()>;
}

/// The kernel's real-time clock (CAP_SYS_TIME: PID 1 on a machine, never a container
/// node, whose clock is its host's).
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn step(&self, offset_micros: i64) -> io::Result<()> {
        let offset = Duration::from_micros(offset_micros.unsigned_abs());
        let now = SystemTime::now();
        let target = if offset_micros >= 0 {
            now.checked_add(offset)
        } else {
            now.checked_sub(offset)
        }
        .ok_or_else(|| io::Error::other("the stepped time is out of range"))?;
        let since = target
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_err(|_| io::Error::other("the stepped time is before 1970"))?;
        let spec = rustix::time::Timespec {
            tv_sec: i64::try_from(since.as_secs()).map_err(io::Error::other)?,
            tv_nsec: i64::from(since.subsec_nanos()),
        };
        rustix::time::clock_settime(rustix::time::ClockId::Realtime, spec)?;
        Ok(())
    }
}

/// Asks the configured time servers (`network.timeServers`, in order, the first answer
/// wins) for the time, steps the clock when it is off by more than 128 ms (if this node
/// sets its clock), and publishes `TimeStatus/node`. Asks again every 64 s, sooner after
/// a failure; a config change asks at once. Without servers the node is not synced and
/// says so: it never reaches out to a default server of its own.
#[derive(Debug)]
pub struct SyncController {
    clock: Option<Arc<dyn Clock>>,
    retry: Duration,
}

impl SyncController {
    /// `clock`: what to step; `None` measures and reports only (container nodes).
    pub fn new(clock: Option<Arc<dyn Clock>>) -> Self {
        SyncController {
            clock,
            retry: RETRY,
        }
    }
}

#[async_trait]
impl Controller for SyncController {
    basalt_controller_runtime::declare! {
        name: "time.SyncController",
        inputs: [
            Input::weak::<NetworkServersConfigSpec>().with_id(NetworkServersConfigSpec::ID),
        ],
        outputs: [
            Output::exclusive::<TimeStatusSpec>(),
        ],
    }

    async fn reconcile(&mut self, rt: &mut Runtime) -> Result<Action, ControllerError> {
        let servers = rt
            .get::<NetworkServersConfigSpec>(NetworkServersConfigSpec::ID)
            .await?
            .map(|s| s.spec.time_servers)
            .unwrap_or_default();
        let previous = rt.get::<TimeStatusSpec>(TimeStatusSpec::ID).await?;
        let mut status = TimeStatusSpec {
            synced: false,
            server: String::new(),
            offset_micros: 0,
            sets_clock: self.clock.is_some(),
            last_step: previous.map(|p| p.spec.last_step).unwrap_or_default(),
            error: String::new(),
        };
        if servers.is_empty() {
            status.error = "no time servers configured (network.timeServers)".into();
            rt.put_spec(TimeStatusSpec::ID, status).await?;
            return Ok(Action::Done);
        }

        let mut failures = Vec::new();
        let mut answer = None;
        for server in &servers {
            match query(server).await {
                Ok(offset) => {
                    answer = Some((server.clone(), offset));
                    break;
                }
                Err(reason) => failures.push(format!("{server}: {reason}")),
            }
        }
        let Some((server, offset)) = answer else {
            status.error = format!("no time server answered: {}", failures.join("; "));
            tracing::warn!(error = %status.error, "time sync failed");
            rt.put_spec(TimeStatusSpec::ID, status).await?;
            let wait = self.retry;
            self.retry = (self.retry * 2).min(POLL);
            return Ok(Action::RequeueAfter(wait));
        };
        self.retry = RETRY;
        status.server = server;
        status.offset_micros = offset;
        status.synced = offset.abs() <= STEP_THRESHOLD_MICROS;
        if let (false, Some(clock)) = (status.synced, &self.clock) {
            match clock.step(offset) {
                Ok(()) => {
                    tracing::info!(offset_micros = offset, server = %status.server, "clock stepped");
                    status.synced = true;
                    status.last_step = OffsetDateTime::now_utc()
                        .format(&Rfc3339)
                        .unwrap_or_default();
                }
                Err(e) => status.error = format!("stepping the clock by {offset} µs: {e}"),
            }
        } else if !status.synced {
            status.error = format!(
                "the clock is {offset} µs off {} and this node does not set it",
                status.server
            );
        }
        rt.put_spec(TimeStatusSpec::ID, status).await?;
        Ok(Action::RequeueAfter(POLL))
    }
}

/// One SNTP exchange with `server` (`host` or `host:port`): the server's time minus
/// ours, in microseconds.
async fn query(server: &str) -> Result<i64, String> {
    // `host`, `host:port`, an address, or an address with a port (`[v6]:port`).
    let target = match server.parse::<std::net::IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, NTP_PORT).to_string(),
        Err(_) if server.contains(':') => server.to_string(),
        Err(_) => format!("{server}:{NTP_PORT}"),
    };
    let exchange = async {
        let address = tokio::net::lookup_host(target.as_str())
            .await
            .map_err(|e| format!("resolving: {e}"))?
            .next()
            .ok_or_else(|| "resolves to no address".to_string())?;
        let local: SocketAddr = if address.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            ([0u16; 8], 0).into()
        };
        let socket = tokio::net::UdpSocket::bind(local)
            .await
            .map_err(|e| format!("binding a socket: {e}"))?;
        let socket = UdpSocketWrapper::from(socket);
        let context = NtpContext::new(StdTimestampGen::default());
        sntpc::get_time(address, &socket, context)
            .await
            .map(|result| result.offset())
            .map_err(|e| format!("{e:?}"))
    };
    tokio::time::timeout(QUERY_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {QUERY_TIMEOUT:?}"))?
}
