use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use basalt_resource::AnyResource;

use crate::watch::Watcher;

/// All resources of one kind and the watchers of that kind. Writes and event delivery
/// happen under one lock, so every watcher sees the kind's writes in the order they
/// were made.
#[derive(Debug)]
pub(crate) struct KindStore {
    /// Whether writes go to disk before they are acknowledged.
    pub persistent: bool,
    /// Serializes writers of a persistent kind across the disk write, which happens
    /// outside `inner` so readers are not blocked by the disk.
    pub write_lock: Arc<tokio::sync::Mutex<()>>,
    inner: Mutex<KindInner>,
}

#[derive(Debug, Default)]
pub(crate) struct KindInner {
    pub resources: BTreeMap<String, Arc<AnyResource>>,
    pub watchers: Vec<Watcher>,
}

impl KindInner {
    /// Stores (or removes) a resource and tells every watcher.
    pub fn apply(
        &mut self,
        id: &str,
        old: Option<Arc<AnyResource>>,
        new: Option<Arc<AnyResource>>,
    ) {
        match &new {
            Some(r) => {
                self.resources.insert(id.to_string(), r.clone());
            }
            None => {
                self.resources.remove(id);
            }
        }
        self.watchers
            .retain(|w| w.notify(old.as_ref(), new.as_ref()));
    }
}

impl KindStore {
    pub fn new(persistent: bool) -> Self {
        KindStore {
            persistent,
            write_lock: Arc::new(tokio::sync::Mutex::new(())),
            inner: Mutex::new(KindInner::default()),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, KindInner> {
        // A panic while holding the lock cannot leave the map half-written (every
        // mutation is a single insert or remove), so a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}
