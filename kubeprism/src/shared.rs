//! The state a balancer's handle, its health checks, its accept loops and its
//! connections share.

use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Instant;

use crate::config::BalancerConfig;
use crate::status::Problem;
use crate::upstream::Upstream;

/// State shared by the handle, the accept loop and the connections.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: BalancerConfig,
    /// The set new connections choose from; swapped whole on reconfiguration, so a
    /// connection being dialed keeps the snapshot it started with.
    pub(crate) upstreams: RwLock<Arc<Vec<Arc<Upstream>>>>,
    /// Removed upstreams whose connections are still open.
    pub(crate) draining: Mutex<Vec<Arc<Upstream>>>,
    /// Problems found in the last upstream list.
    pub(crate) config_problems: Mutex<Vec<Problem>>,
    /// Client connections open now (at most `config.max_connections`).
    pub(crate) active: AtomicUsize,
    pub(crate) accepted: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) accept_errors: AtomicU64,
    /// Clients lost because this node ran out of something (`error::is_local`).
    pub(crate) local_failures: AtomicU64,
    pub(crate) last_refusal: Mutex<Option<Instant>>,
    pub(crate) last_failure: Mutex<Option<Instant>>,
    pub(crate) last_local: Mutex<Option<(Instant, String)>>,
    /// Serializes reconfigurations: each reads the set the one before it wrote.
    pub(crate) reconfiguring: tokio::sync::Mutex<()>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every lock here guards plain data that stays valid after a panic.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub fn upstreams(&self) -> Arc<Vec<Arc<Upstream>>> {
        Arc::clone(
            &self
                .upstreams
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    pub fn note_refusal(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        *lock(&self.last_refusal) = Some(Instant::now());
    }

    /// A client no upstream could be found for.
    pub fn note_failure(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        *lock(&self.last_failure) = Some(Instant::now());
    }

    /// A client lost because this node ran out of descriptors, ports or memory while
    /// accepting (`what` = "accept") or dialing it: not the upstreams' fault.
    pub fn note_local(&self, what: &str, error: &io::Error) {
        self.local_failures.fetch_add(1, Ordering::Relaxed);
        self.note_short_of_resources(format!("{what}: {error}"));
    }

    /// This node ran out of descriptors, ports or memory (for a client, or for a health
    /// check that could not run): reported as `Problem::OutOfResources` for a while.
    pub fn note_short_of_resources(&self, error: String) {
        *lock(&self.last_local) = Some((Instant::now(), error));
    }
}

/// One client connection, counted against `max_connections` until dropped. A plain
/// counter, not a semaphore: nothing ever waits for a slot (a client over the limit is
/// refused at once), and releasing a tokio semaphore's permit takes a lock that every
/// serving thread would contend for on every connection.
pub(crate) struct Slot(Arc<Shared>);

impl Slot {
    pub fn take(shared: &Arc<Shared>) -> Option<Slot> {
        // Relaxed: the count only bounds how many connections run at once.
        if shared.active.fetch_add(1, Ordering::Relaxed) < shared.config.max_connections {
            Some(Slot(Arc::clone(shared)))
        } else {
            shared.active.fetch_sub(1, Ordering::Relaxed);
            None
        }
    }

    pub fn shared(&self) -> &Shared {
        &self.0
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A seed for the random choices of a thread or a check.
pub(crate) fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0x9e37_79b9_7f4a_7c15, |d| d.as_nanos() as u64)
}
