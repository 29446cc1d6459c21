//! Accepting clients and giving each one an upstream: dial with retries on other
//! upstreams (invisible to the client, which has not sent or received a byte yet), then
//! proxy.

use std::cell::RefCell;
use std::io;
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::balance::{choose, Rng};
use crate::error::is_local;
use crate::proxy::proxy;
use crate::replay::{Answer, Held};
use crate::shared::{Shared, Slot};
use crate::spin;
use crate::upstream::{ActiveGuard, Upstream};

/// What a retry on another upstream needs of the dial budget at least, after a wait
/// for an answer: a dial on a LAN takes well under this.
const RETRY_ROOM: Duration = Duration::from_millis(100);

/// After an accept error (e.g. out of file descriptors), wait this long: retrying at
/// once would spin on the same error.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Accepts until `stop`; each connection is spawned (on the current thread's runtime)
/// into `connections`.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    shared: &Arc<Shared>,
    stop: &CancellationToken,
    connections: &TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((client, _peer)) => {
                shared.accepted.fetch_add(1, Ordering::Relaxed);
                match Slot::take(shared) {
                    Some(slot) => {
                        if shared.config.spin.is_zero() {
                            connections.spawn(serve(client, slot));
                        } else {
                            connections.spawn(spin::active(serve(client, slot)));
                        }
                    }
                    None => {
                        // Over the limit: close at once (with a reset, so the client does
                        // not wait) rather than queue; the client retries.
                        shared.note_refusal();
                        let _ = client.set_zero_linger();
                    }
                }
            }
            Err(e) => {
                shared.accept_errors.fetch_add(1, Ordering::Relaxed);
                if is_local(&e) {
                    shared.note_local("accept", &e);
                }
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

async fn serve(client: TcpStream, slot: Slot) {
    let shared = slot.shared();
    let Some((guard, stream)) = connect_client(shared, &client).await else {
        return;
    };
    let mode = shared.config.proxy;
    if let Err(e) = proxy(mode, client, stream, &guard.0.counters).await {
        // Resets are the normal end of many connections; nothing to report.
        tracing::debug!(upstream = %guard.0.name, error = %e, "connection ended");
    }
}

/// Finds the client an upstream that answers: dials, and while another upstream is
/// left to try, waits for the first answer with the client's first bytes kept, to
/// replay them elsewhere if none comes. `None`: the client was closed (or left).
async fn connect_client(shared: &Shared, client: &TcpStream) -> Option<(ActiveGuard, TcpStream)> {
    let mut dialer = Dialer::new(shared);
    let mut held = Held::default();
    let answer_timeout = shared.config.answer_timeout;
    loop {
        let (upstream, mut stream) = match dialer.dial().await {
            Ok(dialed) => dialed,
            Err(failure) => {
                match failure {
                    DialFailure::NoUpstream => shared.note_failure(),
                    DialFailure::Local(e) => shared.note_local("dial", &e),
                }
                let _ = client.set_zero_linger();
                return None;
            }
        };
        // Counted from the dial: a client waiting on its answer is this upstream's load.
        let guard = ActiveGuard::new(upstream);
        // The client socket has TCP_NODELAY from the listener already.
        let _ = stream.set_nodelay(true);
        let answer = if dialer.can_retry(answer_timeout) {
            let retry_by = dialer.retry_by();
            held.await_answer(client, &mut stream, answer_timeout, retry_by)
                .await
        } else {
            // The last chance: no deadline, whatever the upstream's pace.
            match held.resend(&mut stream).await {
                Ok(()) => Answer::Proceed,
                Err(e) => {
                    tracing::debug!(upstream = %guard.0.name, error = %e, "connection ended");
                    return None;
                }
            }
        };
        match answer {
            Answer::Proceed => {
                // Sent through user space, not the proxy: counted here.
                let sent = &guard.0.counters.bytes_sent;
                sent.fetch_add(held.len() as u64, Ordering::Relaxed);
                return Some((guard, stream));
            }
            Answer::ClientGone => return None,
            Answer::Silent(reason) => guard.0.on_data_path_failure(&reason),
        }
    }
}

enum DialFailure {
    /// No upstream answered within the attempts and time allowed.
    NoUpstream,
    /// This node is out of descriptors, ports or memory: another upstream would fail
    /// the same way, and this one is not to blame.
    Local(io::Error),
}

thread_local! {
    /// Per serving thread: choosing an upstream writes no memory another thread writes.
    static RNG: RefCell<Rng> = RefCell::new(Rng::new(crate::shared::seed()));
}

/// The upstreams tried for one client connection, within the attempt and time budget
/// (dials and waits for a first answer alike).
struct Dialer<'a> {
    shared: &'a Shared,
    set: Arc<Vec<Arc<Upstream>>>,
    tried: Vec<bool>,
    attempts: usize,
    started: Instant,
    rng: Rng,
}

impl<'a> Dialer<'a> {
    fn new(shared: &'a Shared) -> Self {
        let set = shared.upstreams();
        Dialer {
            shared,
            tried: vec![false; set.len()],
            set,
            attempts: 0,
            started: Instant::now(),
            rng: Rng::new(RNG.with(|rng| rng.borrow_mut().next_u64())),
        }
    }

    fn left(&self) -> Duration {
        self.shared
            .config
            .dial_budget
            .saturating_sub(self.started.elapsed())
    }

    /// Until when another upstream could still be tried after a wait (the budget's
    /// end, less a moment to dial).
    fn retry_by(&self) -> Instant {
        self.started + self.shared.config.dial_budget.saturating_sub(RETRY_ROOM)
    }

    /// Whether, after waiting `wait` more, another upstream could still be tried.
    fn can_retry(&self, wait: Duration) -> bool {
        self.attempts < self.shared.config.dial_attempts
            && self.tried.contains(&false)
            && self.left() > wait
    }

    /// Dials untried upstreams until one connects.
    async fn dial(&mut self) -> Result<(Arc<Upstream>, TcpStream), DialFailure> {
        let config = &self.shared.config;
        while self.attempts < config.dial_attempts {
            self.attempts += 1;
            let candidates: Vec<_> = self
                .set
                .iter()
                .zip(&self.tried)
                .map(|(u, &t)| u.candidate(t))
                .collect();
            let i = choose(&candidates, &mut self.rng).ok_or(DialFailure::NoUpstream)?;
            self.tried[i] = true;
            let upstream = &self.set[i];
            let left = self.left();
            if left.is_zero() {
                return Err(DialFailure::NoUpstream);
            }
            let attempt = Instant::now();
            match connect(upstream.addr, config.dial_timeout.min(left)).await {
                Ok(Ok(stream)) => {
                    upstream.on_dial_success(attempt.elapsed());
                    return Ok((Arc::clone(upstream), stream));
                }
                Ok(Err(e)) if is_local(&e) => return Err(DialFailure::Local(e)),
                Ok(Err(e)) => upstream.on_data_path_failure(&format!("dial: {e}")),
                Err(_) => upstream.on_data_path_failure(&format!(
                    "dial: {}",
                    io::Error::from(io::ErrorKind::TimedOut)
                )),
            }
        }
        Err(DialFailure::NoUpstream)
    }
}

/// Connects within `limit`. The timer is armed only for a dial not done after two turns
/// of the event loop: on loopback or a LAN most dials (and every refused one) are, and
/// arming a timer costs the thread a wake-up of its own event loop (tokio unparks its
/// driver, a syscall, whenever a timer is armed before any other pending one, which is
/// nearly always the case on a serving thread, whose dials finish in microseconds).
async fn connect(
    addr: std::net::SocketAddr,
    limit: Duration,
) -> Result<io::Result<TcpStream>, tokio::time::error::Elapsed> {
    let mut connecting = pin!(TcpStream::connect(addr));
    for _ in 0..2 {
        if let Poll::Ready(done) = futures::poll!(connecting.as_mut()) {
            return Ok(done);
        }
        // Polled again once this thread's runtime has turned its event loop.
        tokio::task::yield_now().await;
    }
    tokio::time::timeout(limit, connecting).await
}
