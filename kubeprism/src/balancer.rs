//! The balancer handle: binds the listeners, starts the threads that serve connections,
//! holds the upstream set, reconfigures it and reports status.
//!
//! Connections are served thread per core: each thread runs its own single-threaded
//! tokio runtime, and serves every connection it accepts to the end. A connection never
//! moves between threads, so no wakeup crosses a thread (no futex or eventfd write per
//! event, no work stealing): in `make bench` this cut the added round-trip latency (p50
//! and p99) by about a tenth.
//!
//! All threads accept from one listening socket (each has a duplicate of its descriptor
//! in its own epoll set), as HAProxy's threads do: whichever thread is free takes the
//! next client. With one socket per thread (`SO_REUSEPORT`) the kernel hashed clients to
//! threads blindly, and one thread sat idle while the other had a queue: a fifth more
//! context switches a connection, and 5–10 % fewer connections a second in `make bench`.
//! The price of sharing is a few accepts that find nothing (two threads woken for one
//! client). The caller's runtime runs the health checks and reconfiguration.

use std::io;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use rustix::net::{sockopt, AddressFamily, SocketFlags, SocketType};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::BalancerConfig;
use crate::shared::{lock, Shared};
use crate::status::{BalancerStatus, Problem};
use crate::upstream::Upstream;
use crate::{check, listener, resolve, Error};

/// Clients waiting to be accepted; the kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: i32 = 4096;

/// A recent refusal or failed client keeps its problem in the status this long: the
/// status says what is wrong now, not that something once went wrong (the counters
/// keep the history).
const REPORT_FOR: Duration = Duration::from_secs(10);

/// A running balancer. Dropping it stops the listeners and the health checks;
/// established connections run until either side closes them (each serving thread
/// ends after its last one).
#[derive(Debug)]
pub struct Balancer {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    stop: CancellationToken,
    /// One per serving thread: fires once its listener is closed.
    closed: Vec<oneshot::Receiver<()>>,
}

impl Balancer {
    /// Binds `listen` and starts accepting, with no upstreams yet.
    pub async fn bind(listen: SocketAddr, config: BalancerConfig) -> Result<Self, Error> {
        let bind_err = |source| Error::Bind {
            addr: listen,
            source,
        };
        let threads = match config.threads {
            // As many serving threads as cores, like HAProxy's default `nbthread`.
            0 => std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
            n => n,
        };
        let mut listeners = Vec::with_capacity(threads);
        let first = listener(listen).map_err(bind_err)?;
        let local_addr = first.local_addr().map_err(bind_err)?;
        for _ in 1..threads {
            listeners.push(first.try_clone().map_err(bind_err)?);
        }
        listeners.push(first);
        let mut config = config;
        config.max_connections = connection_budget(config.max_connections);
        let shared = Arc::new(Shared {
            active: AtomicUsize::new(0),
            config,
            upstreams: RwLock::new(Arc::new(Vec::new())),
            draining: Mutex::new(Vec::new()),
            config_problems: Mutex::new(vec![Problem::NoUpstreams]),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
            local_failures: AtomicU64::new(0),
            last_refusal: Mutex::new(None),
            last_failure: Mutex::new(None),
            last_local: Mutex::new(None),
            reconfiguring: tokio::sync::Mutex::new(()),
        });
        let stop = CancellationToken::new();
        // Threads started before a failure stop again when this goes out of scope.
        let stop_on_error = stop.clone().drop_guard();
        let mut closed = Vec::with_capacity(threads);
        let mut started = Vec::with_capacity(threads);
        for (i, listener) in listeners.into_iter().enumerate() {
            let (started_tx, started_rx) = oneshot::channel();
            let (closed_tx, closed_rx) = oneshot::channel();
            let (shared, stop) = (Arc::clone(&shared), stop.clone());
            std::thread::Builder::new()
                .name(format!("kubeprism-{i}"))
                .spawn(move || serve_thread(listener, shared, stop, started_tx, closed_tx))
                .map_err(Error::Workers)?;
            started.push(started_rx);
            closed.push(closed_rx);
        }
        for started in started {
            started
                .await
                .unwrap_or_else(|_| Err(io::Error::other("the thread ended while starting")))
                .map_err(Error::Workers)?;
        }
        stop_on_error.disarm();
        tracing::info!(%local_addr, threads, "kubeprism listening");
        Ok(Balancer {
            shared,
            local_addr,
            stop,
            closed,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Replaces the upstream list (`host:port` each). Upstreams that stay keep their
    /// health and counters; new ones start checks; removed ones stop taking new
    /// connections and drain. Returns the problems found in the list (also in status).
    pub async fn set_upstreams(&self, names: &[String]) -> Vec<Problem> {
        let _serial = self.shared.reconfiguring.lock().await;
        let (names, mut problems) = resolve::dedupe(names);
        let config = &self.shared.config;
        let resolved = resolve::resolve(
            &config.resolver,
            names,
            config.resolve_timeout,
            &mut problems,
        )
        .await;

        let old = self.shared.upstreams();
        let mut draining = lock(&self.shared.draining);
        let mut next = Vec::with_capacity(resolved.len());
        for (name, addr) in resolved {
            let same = |u: &&Arc<Upstream>| u.name == name && u.addr == addr;
            if let Some(u) = old.iter().find(same) {
                next.push(Arc::clone(u));
            } else if let Some(pos) = draining.iter().position(|u| same(&u)) {
                // Back before it finished draining: keep its counters, check it again.
                let u = draining.swap_remove(pos);
                u.set_draining(false);
                self.spawn_checks(&u);
                next.push(u);
            } else {
                let u = Upstream::new(name, addr, self.shared.config.health.thresholds);
                self.spawn_checks(&u);
                next.push(u);
            }
        }
        // A name that does not resolve now (a DNS blip) keeps the addresses it had: the
        // problem is reported, but a working upstream is not drained for it.
        for p in &problems {
            if let Problem::Unresolvable { name, .. } = p {
                next.extend(old.iter().filter(|u| &u.name == name).cloned());
            }
        }
        if next.is_empty() && !problems.contains(&Problem::NoUpstreams) {
            problems.push(Problem::NoUpstreams);
        }
        for u in old.iter() {
            if !next.iter().any(|n| Arc::ptr_eq(n, u)) {
                tracing::info!(upstream = %u.name, active = u.counters.active.load(Ordering::Relaxed), "upstream removed, draining");
                u.set_draining(true);
                // Ends its checks: a draining upstream takes no new connections.
                u.next_epoch();
                draining.push(Arc::clone(u));
            }
        }
        *self
            .shared
            .upstreams
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(next);
        drop(draining);
        for p in &problems {
            tracing::warn!(problem = %p, "upstream list");
        }
        *lock(&self.shared.config_problems) = problems.clone();
        problems
    }

    /// Starts the health checks of an upstream; checks started earlier for it end.
    fn spawn_checks(&self, upstream: &Arc<Upstream>) {
        let epoch = upstream.next_epoch();
        let stop = self.stop.clone();
        let shared = Arc::clone(&self.shared);
        let upstream = Arc::clone(upstream);
        tokio::spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = check::run(upstream, &shared, epoch) => {}
            }
        });
    }

    /// A snapshot of the balancer's state; drops drained upstreams as a side effect.
    pub fn status(&self) -> BalancerStatus {
        let shared = &self.shared;
        let current = shared.upstreams();
        let mut draining = lock(&shared.draining);
        draining.retain(|u| u.counters.active.load(Ordering::Relaxed) > 0);
        let upstreams: Vec<_> = current
            .iter()
            .chain(draining.iter())
            .map(|u| u.status())
            .collect();
        drop(draining);

        let mut problems = lock(&shared.config_problems).clone();
        let refused = shared.refused.load(Ordering::Relaxed);
        let failed = shared.failed.load(Ordering::Relaxed);
        if !current.is_empty()
            && upstreams
                .iter()
                .take(current.len())
                .all(|u| u.state == crate::UpstreamState::Down)
        {
            problems.push(Problem::AllDown);
        }
        if lock(&shared.last_refusal).is_some_and(|t| t.elapsed() < REPORT_FOR) {
            problems.push(Problem::ConnectionLimit {
                max: shared.config.max_connections,
                refused,
            });
        }
        if !current.is_empty()
            && lock(&shared.last_failure).is_some_and(|t| t.elapsed() < REPORT_FOR)
        {
            problems.push(Problem::NoUpstreamReachable { failed });
        }
        if let Some((at, error)) = lock(&shared.last_local).as_ref() {
            if at.elapsed() < REPORT_FOR {
                problems.push(Problem::OutOfResources {
                    error: error.clone(),
                    lost: shared.local_failures.load(Ordering::Relaxed),
                });
            }
        }
        BalancerStatus {
            listen: self.local_addr,
            upstreams,
            problems,
            max_connections: shared.config.max_connections,
            active_connections: shared.active.load(Ordering::Relaxed) as u64,
            accepted: shared.accepted.load(Ordering::Relaxed),
            refused,
            failed,
            accept_errors: shared.accept_errors.load(Ordering::Relaxed),
        }
    }

    /// Stops accepting and checking, and waits for the listeners to close (so the port
    /// can be bound again at once). Established connections are left to finish.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        for closed in self.closed.drain(..) {
            // An error means the thread is gone, and its listener with it.
            let _ = closed.await;
        }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// One serving thread: reports on `started` whether its runtime is up, then accepts on
/// its descriptor of the shared listening socket and serves what it accepts until
/// `stop`; then closes that descriptor, reports that on `closed`, and lets its
/// established connections finish.
fn serve_thread(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    stop: CancellationToken,
    started: oneshot::Sender<io::Result<()>>,
    closed: oneshot::Sender<()>,
) {
    // Built here, not by the caller: a runtime must not be dropped (on an error) in the
    // caller's async context.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .and_then(|runtime| {
            let listener = {
                let _serving = runtime.enter();
                TcpListener::from_std(listener)?
            };
            Ok((runtime, listener))
        });
    let (runtime, listener) = match runtime {
        Ok(started_up) => {
            let _ = started.send(Ok(()));
            started_up
        }
        Err(e) => {
            let _ = started.send(Err(e));
            return;
        }
    };
    let spin = shared.config.spin;
    if !spin.is_zero() {
        // Ends with the runtime.
        runtime.spawn(crate::spin::spinner(spin));
    }
    // Spawned, not run as the `block_on` future itself: waking that future always
    // writes to the runtime's eventfd (a syscall, and a needless turn of the event loop),
    // while waking a spawned task from its own thread only queues it. The accept loop is
    // woken for every burst of new clients.
    let serving = runtime.spawn(async move {
        let connections = TaskTracker::new();
        listener::accept_loop(listener, &shared, &stop, &connections).await;
        // The listener was moved into the loop and is closed now.
        let _ = closed.send(());
        connections.close();
        connections.wait().await;
    });
    if let Err(e) = runtime.block_on(serving) {
        tracing::error!(error = %e, "a serving thread failed");
    }
}

/// The listening socket (non-blocking). `TCP_NODELAY` is set here because accepted
/// sockets inherit it (Linux): one `setsockopt` less per client.
fn listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let family = if addr.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let flags = SocketFlags::NONBLOCK | SocketFlags::CLOEXEC;
    let socket = rustix::net::socket_with(family, SocketType::STREAM, flags, None)?;
    sockopt::set_socket_reuseaddr(&socket, true)?;
    sockopt::set_tcp_nodelay(&socket, true)?;
    rustix::net::bind(&socket, &addr)?;
    rustix::net::listen(&socket, LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Descriptors kept for everything but proxied connections (listeners, health checks,
/// pooled pipes), at most.
const RESERVED_FDS: u64 = 1024;

/// `wanted` connections, or as many as the descriptor limit allows. Each proxied
/// connection holds two descriptors; the soft `RLIMIT_NOFILE` is raised as far as the
/// hard one allows (as HAProxy does), and if that is not enough the connection limit is
/// lowered, so that a client flood meets the connection limit (refused at once, and
/// reported) before the process runs out of descriptors (which fails accepts, dials and
/// checks alike).
fn connection_budget(wanted: usize) -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let need = (wanted as u64)
        .saturating_mul(2)
        .saturating_add(RESERVED_FDS);
    let soft = limit.current.unwrap_or(u64::MAX);
    if soft >= need {
        return wanted;
    }
    let raised = limit.maximum.map_or(need, |hard| hard.min(need));
    let soft = match setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(raised),
            maximum: limit.maximum,
        },
    ) {
        Ok(()) => raised,
        Err(e) => {
            tracing::warn!(error = %e, "raising RLIMIT_NOFILE");
            soft
        }
    };
    let reserve = (soft / 8).clamp(32, RESERVED_FDS);
    let allowed = usize::try_from(soft.saturating_sub(reserve) / 2).unwrap_or(usize::MAX);
    if allowed < wanted {
        tracing::warn!(
            wanted,
            allowed,
            nofile = soft,
            "the descriptor limit lowers the connection limit"
        );
    }
    allowed.min(wanted)
}
