//! Busy-polling for a moment after activity, when the next event is likely to come
//! within that moment, so that it finds its serving thread awake.
//!
//! A thread that blocks in `epoll_wait` has to be woken for the next event, and on a
//! virtual machine waking an idle CPU costs tens of microseconds: a proxied round trip
//! pays it twice (the request, then the answer). In `make bench` that wake-up was most of
//! the latency a proxy adds, for HAProxy as for us. So, for [`BalancerConfig::spin`]
//! after a serving thread last polled a connection, it keeps polling its event loop
//! without blocking (yielding the CPU to any other runnable thread between polls) before
//! it goes to sleep.
//!
//! Only when it pays: the thread spins only if the gap before the last event was shorter
//! than the spin, i.e. its events come fast enough for a spin to catch the next one (an
//! upstream answering within microseconds, a client sending its next request at once).
//! An API server that takes milliseconds to answer is never waited for by spinning, and
//! an idle node does not spin at all.
//!
//! [`BalancerConfig::spin`]: crate::BalancerConfig::spin

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

thread_local! {
    /// This thread's spin time (zero: it has no spinner).
    static SPIN: Cell<Duration> = const { Cell::new(Duration::ZERO) };
    /// When this thread last finished polling a connection.
    static LAST_ACTIVE: Cell<Option<Instant>> = const { Cell::new(None) };
    /// Whether the gap before that poll was shorter than the spin.
    static FAST: Cell<bool> = const { Cell::new(false) };
    /// The spinner of this thread, while it sleeps.
    static SLEEPING: RefCell<Option<Waker>> = const { RefCell::new(None) };
}

#[cfg(test)]
thread_local! {
    /// Turns of the spinner's loop, for the tests.
    static SPINS: Cell<u64> = const { Cell::new(0) };
}

pin_project_lite::pin_project! {
    /// A connection's future, noting each poll as activity of this thread. A struct,
    /// not an `async fn`: that would hold the wrapped future twice (the argument and
    /// its pinned copy), and 10,000 idle connections each carry it.
    pub(crate) struct Active<F> {
        #[pin]
        work: F,
    }
}

pub(crate) fn active<F: Future>(work: F) -> Active<F> {
    Active { work }
}

impl<F: Future> Future for Active<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let spin = SPIN.get();
        FAST.set(LAST_ACTIVE.get().is_some_and(|last| last.elapsed() < spin));
        let polled = self.project().work.poll(cx);
        // Stamped after the poll: the spin counts from the end of the work.
        LAST_ACTIVE.set(Some(Instant::now()));
        if FAST.get() {
            if let Some(spinner) = SLEEPING.with(|s| s.borrow_mut().take()) {
                spinner.wake();
            }
        }
        polled
    }
}

fn worth_spinning(spin: Duration) -> bool {
    FAST.get() && LAST_ACTIVE.get().is_some_and(|t| t.elapsed() < spin)
}

/// Spins while it is worth it, sleeps otherwise; runs until dropped. Spawned once per
/// serving thread, on its runtime, with a `spin` above zero.
pub(crate) async fn spinner(spin: Duration) {
    SPIN.set(spin);
    loop {
        if worth_spinning(spin) {
            #[cfg(test)]
            SPINS.set(SPINS.get() + 1);
            // Lets another thread that is ready to run on this CPU have it...
            std::thread::yield_now();
            // ...and has tokio poll the event loop without blocking before this task
            // runs again.
            tokio::task::yield_now().await;
        } else {
            poll_fn(|cx| {
                if worth_spinning(spin) {
                    Poll::Ready(())
                } else {
                    SLEEPING.with(|s| *s.borrow_mut() = Some(cx.waker().clone()));
                    Poll::Pending
                }
            })
            .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wrapper_adds_nothing_to_a_connections_future() {
        let buffer = [7u8; 300];
        let connection = async move { buffer.len() };
        let size = std::mem::size_of_val(&connection);
        assert_eq!(std::mem::size_of_val(&active(connection)), size);
    }

    /// Polls a connection-like future once through the wrapper.
    fn poll_once() {
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut work = std::pin::pin!(active(std::future::pending::<()>()));
        let _ = work.as_mut().poll(&mut cx);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn spins_after_fast_events_only_and_not_for_long() {
        // Long, so that a loaded machine cannot stretch the steps below past it.
        let spin = Duration::from_millis(100);
        let spinner = tokio::spawn(spinner(spin));
        tokio::task::yield_now().await;

        // One event after a long quiet: no telling when the next comes, no spin.
        poll_once();
        tokio::time::sleep(spin + spin / 2).await;
        assert_eq!(SPINS.get(), 0);

        // Two events in quick succession: the spinner spins...
        poll_once();
        poll_once();
        let started = SPINS.get();
        std::thread::sleep(Duration::from_millis(1));
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        assert!(SPINS.get() > started, "no spin after fast events");

        // ...for at most the spin time, then sleeps.
        tokio::time::sleep(spin * 2).await;
        let after = SPINS.get();
        tokio::time::sleep(spin * 2).await;
        assert_eq!(SPINS.get(), after, "still spinning");
        spinner.abort();
    }
}
