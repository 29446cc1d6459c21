//! Busy-polling for a moment after activity, so that the next event of a busy connection
//! finds its serving thread awake.
//!
//! A thread that blocks in `epoll_wait` has to be woken for the next event, and on a
//! virtual machine waking an idle CPU costs tens of microseconds: a proxied round trip
//! pays it twice (the request, then the answer). In `make bench` that wake-up was most of
//! the latency a proxy adds, for HAProxy as for us. So for [`BalancerConfig::spin`] after
//! a serving thread last polled a connection, it keeps polling its event loop without
//! blocking (and yields the CPU to any other runnable thread between polls) before it
//! goes to sleep. An idle node does not spin at all; a busy one spins at most that long
//! per burst of activity.
//!
//! [`BalancerConfig::spin`]: crate::BalancerConfig::spin

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

thread_local! {
    /// When this thread last polled a connection.
    static LAST_ACTIVE: Cell<Option<Instant>> = const { Cell::new(None) };
    /// The spinner of this thread, while it sleeps.
    static SLEEPING: RefCell<Option<Waker>> = const { RefCell::new(None) };
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
        LAST_ACTIVE.set(Some(Instant::now()));
        if let Some(spinner) = SLEEPING.with(|s| s.borrow_mut().take()) {
            spinner.wake();
        }
        self.project().work.poll(cx)
    }
}

fn recently_active(spin: Duration) -> bool {
    LAST_ACTIVE.get().is_some_and(|t| t.elapsed() < spin)
}

/// Spins while this thread was active within `spin`, sleeps otherwise; runs until
/// dropped. Spawned once per serving thread, on its runtime.
pub(crate) async fn spinner(spin: Duration) {
    loop {
        if recently_active(spin) {
            // Lets another thread that is ready to run on this CPU have it...
            std::thread::yield_now();
            // ...and has tokio poll the event loop without blocking before this task
            // runs again.
            tokio::task::yield_now().await;
        } else {
            poll_fn(|cx| {
                if recently_active(spin) {
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
}
