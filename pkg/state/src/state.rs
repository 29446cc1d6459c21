use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, RwLock};

use basalt_resource::{
    AnyResource, Kind, LabelQuery, Phase, Registry, Resource, ResourceError, ResourceKey,
    ResourceSpec,
};
use time::OffsetDateTime;
use tokio::sync::mpsc;

use crate::kind_store::KindStore;
use crate::persistent::{LoadReport, PersistentStore};
use crate::watch::{Event, Watch, WatchKindOptions, WatchLimits, Watcher};
use crate::{StateError, DEFAULT_WATCH_CAPACITY};

/// The resource state of a node. Cheap to clone: clones share the same state.
#[derive(Debug, Clone)]
pub struct State {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// namespace -> type -> store; nested so lookups by `&str` allocate nothing.
    kinds: RwLock<HashMap<String, HashMap<String, Arc<KindStore>>>>,
    persistent: Option<Persistence>,
    watch_capacity: usize,
}

/// The disk behind the persistent namespaces.
#[derive(Debug)]
struct Persistence {
    store: PersistentStore,
    namespaces: Vec<String>,
    /// Writes of types it does not know are refused: they could not be read back.
    registry: Arc<Registry>,
}

/// Options for opening a [`State`].
#[derive(Debug)]
pub struct StateBuilder {
    watch_capacity: usize,
    persistent: Option<(PathBuf, Vec<String>, Arc<Registry>)>,
}

impl StateBuilder {
    /// How many events a watcher may fall behind before its watch is closed.
    pub fn watch_capacity(mut self, capacity: usize) -> Self {
        self.watch_capacity = capacity.max(1);
        self
    }

    /// Stores the given namespaces in a crash-safe file at `path`, decoding what is there
    /// with `registry`.
    pub fn persistent(
        mut self,
        path: impl Into<PathBuf>,
        namespaces: &[&str],
        registry: Arc<Registry>,
    ) -> Self {
        let namespaces = namespaces.iter().map(|s| s.to_string()).collect();
        self.persistent = Some((path.into(), namespaces, registry));
        self
    }

    /// Opens the state, loading persistent namespaces from disk.
    pub fn open(self) -> Result<(State, LoadReport), StateError> {
        let mut report = LoadReport::default();
        let mut loaded = Vec::new();
        let persistent = match self.persistent {
            None => None,
            Some((path, namespaces, registry)) => {
                let (store, resources, r) = PersistentStore::open(&path, &registry, &namespaces)?;
                report = r;
                loaded = resources;
                Some(Persistence {
                    store,
                    namespaces,
                    registry,
                })
            }
        };
        let state = State {
            inner: Arc::new(Inner {
                kinds: RwLock::new(HashMap::new()),
                persistent,
                watch_capacity: self.watch_capacity,
            }),
        };
        for resource in loaded {
            let store =
                state.kind_store(&resource.metadata.namespace, &resource.metadata.type_name);
            let id = resource.metadata.id.clone();
            store.lock().resources.insert(id, Arc::new(resource));
        }
        Ok((state, report))
    }
}

impl Default for State {
    fn default() -> Self {
        Self::new()
    }
}

/// What a write does to the stored resource.
#[allow(clippy::large_enum_variant)] // short-lived, one per write: boxing would cost an allocation
enum Change {
    Put(AnyResource),
    Delete,
    /// Nothing to store: the write would not change anything.
    Keep,
}

impl State {
    /// An in-memory state.
    pub fn new() -> Self {
        // Opening without persistence touches no disk and cannot fail.
        match Self::builder().open() {
            Ok((state, _)) => state,
            Err(_) => unreachable!("an in-memory state opens without I/O"),
        }
    }

    pub fn builder() -> StateBuilder {
        StateBuilder {
            watch_capacity: DEFAULT_WATCH_CAPACITY,
            persistent: None,
        }
    }

    fn find_store(&self, namespace: &str, type_name: &str) -> Option<Arc<KindStore>> {
        let kinds = self.inner.kinds.read().unwrap_or_else(|p| p.into_inner());
        kinds.get(namespace).and_then(|t| t.get(type_name)).cloned()
    }

    fn kind_store(&self, namespace: &str, type_name: &str) -> Arc<KindStore> {
        if let Some(store) = self.find_store(namespace, type_name) {
            return store;
        }
        let persistent = self
            .inner
            .persistent
            .as_ref()
            .is_some_and(|p| p.namespaces.iter().any(|n| n == namespace));
        let mut kinds = self.inner.kinds.write().unwrap_or_else(|p| p.into_inner());
        kinds
            .entry(namespace.to_string())
            .or_default()
            .entry(type_name.to_string())
            .or_insert_with(|| Arc::new(KindStore::new(persistent)))
            .clone()
    }

    /// One resource.
    pub async fn get(&self, key: &ResourceKey) -> Result<Arc<AnyResource>, StateError> {
        self.find_store(&key.namespace, &key.type_name)
            .and_then(|s| s.lock().resources.get(&key.id).cloned())
            .ok_or_else(|| StateError::NotFound(key.clone()))
    }

    /// Every resource of a kind whose labels match, ordered by id.
    pub async fn list(
        &self,
        kind: &Kind,
        selector: &LabelQuery,
    ) -> Result<Vec<Arc<AnyResource>>, StateError> {
        Ok(self
            .find_store(&kind.namespace, &kind.type_name)
            .map(|s| {
                s.lock()
                    .resources
                    .values()
                    .filter(|r| selector.matches(&r.metadata.labels))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Applies one write: `plan` looks at the current resource and says what to store.
    /// The stored resource gets the next version and the current time as `updated`.
    /// Returns the stored resource (`None` once deleted).
    async fn write(
        &self,
        key: &ResourceKey,
        plan: impl FnOnce(Option<&Arc<AnyResource>>) -> Result<Change, StateError>,
    ) -> Result<Option<Arc<AnyResource>>, StateError> {
        let store = self.kind_store(&key.namespace, &key.type_name);
        let prepare = |current: Option<&Arc<AnyResource>>| -> Result<Option<Option<Arc<AnyResource>>>, StateError> {
            match plan(current)? {
                Change::Keep => Ok(None),
                Change::Delete => Ok(Some(None)),
                Change::Put(mut next) => {
                    let now = OffsetDateTime::now_utc();
                    next.metadata.version = match current {
                        None => 1,
                        Some(c) => c
                            .metadata
                            .version
                            .checked_add(1)
                            .ok_or_else(|| StateError::VersionOverflow(key.clone()))?,
                    };
                    next.metadata.updated = now;
                    if current.is_none() {
                        next.metadata.created = now;
                    }
                    Ok(Some(Some(Arc::new(next))))
                }
            }
        };

        let Some(disk) = self.inner.persistent.as_ref().filter(|_| store.persistent) else {
            let mut inner = store.lock();
            let current = inner.resources.get(&key.id).cloned();
            return Ok(match prepare(current.as_ref())? {
                None => current,
                Some(next) => {
                    inner.apply(&key.id, current, next.clone());
                    next
                }
            });
        };

        // Persistent: one writer at a time per kind, and the disk write happens before
        // the change is visible, so an acknowledged write survives a crash. The disk
        // write, the in-memory apply and the writer lock travel together in one blocking
        // task: if the caller goes away mid-write, memory still ends up equal to disk.
        let writer = store.write_lock.clone().lock_owned().await;
        let current = store.lock().resources.get(&key.id).cloned();
        let Some(next) = prepare(current.as_ref())? else {
            return Ok(current);
        };
        if let Some(r) = &next {
            if disk.registry.definition(&r.metadata.type_name).is_none() {
                // It could be written, but not read back after a restart.
                return Err(ResourceError::UnknownType(r.metadata.type_name.clone()).into());
            }
        }
        let (disk_store, id, stored) = (disk.store.clone(), key.id.clone(), next.clone());
        let key = key.clone();
        let path = disk.store.path().display().to_string();
        tokio::task::spawn_blocking(move || {
            let _writer = writer;
            match &next {
                Some(r) => disk_store.put(r)?,
                None => disk_store.delete(&key)?,
            }
            store.lock().apply(&id, current, next);
            Ok::<_, StateError>(())
        })
        .await
        .map_err(|e| StateError::Persistence {
            path,
            reason: format!("the disk writer failed: {e}"),
        })??;
        Ok(stored)
    }

    /// A write that leaves the resource in place: its result is the stored resource.
    async fn write_existing(
        &self,
        key: &ResourceKey,
        plan: impl FnOnce(Option<&Arc<AnyResource>>) -> Result<Change, StateError>,
    ) -> Result<Arc<AnyResource>, StateError> {
        self.write(key, plan)
            .await?
            .ok_or_else(|| StateError::NotFound(key.clone()))
    }

    /// `current` with the spec, labels and annotations of `resource`.
    fn replace(current: &AnyResource, resource: AnyResource) -> Result<Change, StateError> {
        if current.metadata.phase == Phase::TearingDown {
            return Err(StateError::PhaseConflict {
                key: current.metadata.key(),
                phase: current.metadata.phase,
            });
        }
        let mut next = AnyResource {
            metadata: current.metadata.clone(),
            spec: resource.spec,
        };
        next.metadata.labels = resource.metadata.labels;
        next.metadata.annotations = resource.metadata.annotations;
        Ok(if next.same_content(current) {
            Change::Keep
        } else {
            Change::Put(next)
        })
    }

    fn require_owner(current: &AnyResource, writer: &str) -> Result<(), StateError> {
        if current.metadata.owner != writer {
            return Err(StateError::OwnerConflict {
                key: current.metadata.key(),
                owner: current.metadata.owner.clone(),
                writer: writer.to_string(),
            });
        }
        Ok(())
    }

    /// Creates a resource owned by `owner` (empty: user-owned), at version 1.
    pub async fn create(
        &self,
        resource: AnyResource,
        owner: &str,
    ) -> Result<Arc<AnyResource>, StateError> {
        let key = new_key(&resource)?;
        let resource = fresh(resource, owner);
        self.write_existing(&key, |current| match current {
            Some(_) => Err(StateError::AlreadyExists(key.clone())),
            None => Ok(Change::Put(resource)),
        })
        .await
    }

    /// Creates the resource, or replaces the spec, labels and annotations of the stored
    /// one whatever its version: for a writer that is the only one of its resource and
    /// states it whole (a status, a config as applied). Owner and phase rules are those of
    /// `create` and `update`.
    pub async fn put(
        &self,
        resource: AnyResource,
        owner: &str,
    ) -> Result<Arc<AnyResource>, StateError> {
        let key = new_key(&resource)?;
        let stored = self
            .write_existing(&key, |current| {
                let Some(current) = current else {
                    return Ok(Change::Put(fresh(resource, owner)));
                };
                Self::require_owner(current, owner)?;
                Self::replace(current, resource)
            })
            .await?;
        Ok(stored)
    }

    /// Replaces the spec, labels and annotations of a resource. `resource.metadata.version`
    /// must be the stored version (compare-and-swap); the writer must be the owner; a
    /// resource being torn down cannot be updated. A write that changes nothing is not
    /// stored and does not bump the version.
    pub async fn update(
        &self,
        resource: AnyResource,
        owner: &str,
    ) -> Result<Arc<AnyResource>, StateError> {
        check_spec_type(&resource)?;
        let key = resource.metadata.key();
        let stored = self
            .write_existing(&key, |current| {
                let current = current.ok_or_else(|| StateError::NotFound(key.clone()))?;
                Self::require_owner(current, owner)?;
                if current.metadata.version != resource.metadata.version {
                    return Err(StateError::Conflict {
                        key: key.clone(),
                        expected: resource.metadata.version,
                        actual: current.metadata.version,
                    });
                }
                Self::replace(current, resource)
            })
            .await?;
        Ok(stored)
    }

    /// Starts the teardown of a resource: its phase becomes tearing-down, so consumers
    /// release their finalizers. Idempotent.
    pub async fn teardown(
        &self,
        key: &ResourceKey,
        owner: &str,
    ) -> Result<Arc<AnyResource>, StateError> {
        let stored = self
            .write_existing(key, |current| {
                let current = current.ok_or_else(|| StateError::NotFound(key.clone()))?;
                Self::require_owner(current, owner)?;
                if current.metadata.phase == Phase::TearingDown {
                    return Ok(Change::Keep);
                }
                let mut next = AnyResource::clone(current);
                next.metadata.phase = Phase::TearingDown;
                Ok(Change::Put(next))
            })
            .await?;
        Ok(stored)
    }

    /// Destroys a resource that has no finalizers left.
    pub async fn destroy(&self, key: &ResourceKey, owner: &str) -> Result<(), StateError> {
        self.write(key, |current| {
            let current = current.ok_or_else(|| StateError::NotFound(key.clone()))?;
            Self::require_owner(current, owner)?;
            if !current.metadata.finalizers.is_empty() {
                return Err(StateError::PendingFinalizers {
                    key: key.clone(),
                    finalizers: current.metadata.finalizers.clone(),
                });
            }
            Ok(Change::Delete)
        })
        .await?;
        Ok(())
    }

    /// Adds a finalizer: the resource cannot be destroyed until it is removed. Any writer
    /// may add one, but not to a resource already being torn down.
    pub async fn add_finalizer(
        &self,
        key: &ResourceKey,
        finalizer: &str,
    ) -> Result<Arc<AnyResource>, StateError> {
        let stored = self
            .write_existing(key, |current| {
                let current = current.ok_or_else(|| StateError::NotFound(key.clone()))?;
                if current.metadata.finalizers.contains(finalizer) {
                    return Ok(Change::Keep);
                }
                if current.metadata.phase == Phase::TearingDown {
                    return Err(StateError::PhaseConflict {
                        key: key.clone(),
                        phase: current.metadata.phase,
                    });
                }
                let mut next = AnyResource::clone(current);
                next.metadata.finalizers.insert(finalizer.to_string());
                Ok(Change::Put(next))
            })
            .await?;
        Ok(stored)
    }

    /// Removes a finalizer (a no-op if it is not there).
    pub async fn remove_finalizer(
        &self,
        key: &ResourceKey,
        finalizer: &str,
    ) -> Result<Arc<AnyResource>, StateError> {
        let stored = self
            .write_existing(key, |current| {
                let current = current.ok_or_else(|| StateError::NotFound(key.clone()))?;
                if !current.metadata.finalizers.contains(finalizer) {
                    return Ok(Change::Keep);
                }
                let mut next = AnyResource::clone(current);
                next.metadata.finalizers.remove(finalizer);
                Ok(Change::Put(next))
            })
            .await?;
        Ok(stored)
    }

    fn subscribe(&self, kind: &Kind, id: Option<&str>, options: WatchKindOptions) -> Watch {
        let store = self.kind_store(&kind.namespace, &kind.type_name);
        let limits = options.limits;
        let capacity = limits.events.unwrap_or(self.inner.watch_capacity).max(1);
        let (tx, rx) = mpsc::channel(capacity);
        let overrun = Arc::new(AtomicBool::new(false));
        let pending = Arc::new(AtomicUsize::new(0));
        let watcher = Watcher {
            id: id.map(str::to_string),
            selector: options.selector,
            tx,
            overrun: overrun.clone(),
            max_bytes: limits.bytes,
            pending: pending.clone(),
        };
        let mut initial = VecDeque::new();
        let mut inner = store.lock();
        // Watches dropped on a quiet kind are otherwise only noticed at its next write.
        inner.watchers.retain(|w| !w.tx.is_closed());
        if options.bootstrap {
            initial.extend(
                inner
                    .resources
                    .values()
                    .filter(|r| watcher.matches(r))
                    .map(|r| Event::Created(r.clone())),
            );
            initial.push_back(Event::Bootstrapped);
        }
        inner.watchers.push(watcher);
        Watch {
            kind: kind.clone(),
            initial,
            rx,
            overrun,
            pending,
        }
    }

    /// Watches one resource: first its current state (`Created`, if it exists), then
    /// every change.
    pub async fn watch(&self, key: &ResourceKey) -> Result<Watch, StateError> {
        self.watch_with(key, WatchLimits::default()).await
    }

    /// As [`State::watch`], within `limits` (see [`WatchLimits`]).
    pub async fn watch_with(
        &self,
        key: &ResourceKey,
        limits: WatchLimits,
    ) -> Result<Watch, StateError> {
        let mut watch = self.subscribe(
            &key.kind(),
            Some(&key.id),
            WatchKindOptions {
                bootstrap: true,
                selector: LabelQuery::everything(),
                limits,
            },
        );
        watch.initial.retain(|e| !matches!(e, Event::Bootstrapped));
        Ok(watch)
    }

    /// Watches every resource of a kind (optionally only those whose labels match):
    /// with `bootstrap`, first each existing resource, then [`Event::Bootstrapped`], then
    /// every change, with nothing missed in between.
    pub async fn watch_kind(
        &self,
        kind: &Kind,
        options: WatchKindOptions,
    ) -> Result<Watch, StateError> {
        Ok(self.subscribe(kind, None, options))
    }

    /// A typed resource in the type's default namespace.
    pub async fn get_as<S: ResourceSpec>(&self, id: &str) -> Result<Resource<S>, StateError> {
        let key = ResourceKey::of::<S>(id);
        Ok(Resource::try_from(self.get(&key).await?.as_ref())?)
    }

    /// Every typed resource of the type's default namespace.
    pub async fn list_as<S: ResourceSpec>(&self) -> Result<Vec<Resource<S>>, StateError> {
        let kind = Kind::of::<S>();
        self.list(&kind, &LabelQuery::everything())
            .await?
            .iter()
            .map(|r| Ok(Resource::try_from(r.as_ref())?))
            .collect()
    }
}

/// Longest namespace, type or id accepted.
const MAX_KEY_PART: usize = 1024;

/// Namespaces and types are names; ids may hold `/` (e.g. `inet4/10.0.0.0/8`). None may be
/// empty, very long, or hold NUL (the persistent key separator).
fn validate_key(key: &ResourceKey) -> Result<(), StateError> {
    let invalid = |reason: &'static str| StateError::InvalidKey {
        key: key.clone(),
        reason,
    };
    for part in [&key.namespace, &key.type_name, &key.id] {
        if part.is_empty() {
            return Err(invalid("namespace, type and id must not be empty"));
        }
        if part.len() > MAX_KEY_PART {
            return Err(invalid("namespace, type and id must be at most 1024 bytes"));
        }
        if part.contains('\0') {
            return Err(invalid("namespace, type and id must not contain NUL"));
        }
    }
    if key.namespace.contains('/') || key.type_name.contains('/') {
        return Err(invalid("namespace and type must not contain '/'"));
    }
    Ok(())
}

/// A resource's metadata must name the type its spec is.
/// The key of a resource about to be stored for the first time, checked: its spec is of
/// its type and the key is well formed.
fn new_key(resource: &AnyResource) -> Result<ResourceKey, StateError> {
    check_spec_type(resource)?;
    let key = resource.metadata.key();
    validate_key(&key)?;
    Ok(key)
}

/// `resource` as it is first stored: owned by `owner`, running, and without finalizers
/// (they are added by their holders, never brought along).
fn fresh(mut resource: AnyResource, owner: &str) -> AnyResource {
    resource.metadata.owner = owner.to_string();
    resource.metadata.phase = Phase::Running;
    resource.metadata.finalizers.clear();
    resource
}

fn check_spec_type(resource: &AnyResource) -> Result<(), StateError> {
    let found = resource.spec.type_name();
    if found != resource.metadata.type_name {
        return Err(StateError::KeyMismatch {
            key: resource.metadata.key(),
            expected: resource.metadata.type_name.clone(),
            found: found.to_string(),
        });
    }
    Ok(())
}
