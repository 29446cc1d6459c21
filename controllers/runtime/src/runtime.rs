use std::collections::HashSet;
use std::sync::Arc;

use basalt_resource::{AnyResource, Kind, LabelQuery, Phase, Resource, ResourceKey, ResourceSpec};
use basalt_state::{State, StateError};
use tokio::sync::Notify;

use crate::{ControllerError, Input, InputKind, Output};

/// What a controller sees of the state during a reconcile: typed reads of its inputs
/// (and outputs), writes of its outputs, and the bookkeeping for output clean-up.
#[derive(Debug)]
pub struct Runtime {
    state: State,
    controller: &'static str,
    inputs: Vec<Input>,
    outputs: Vec<Output>,
    /// Outputs written in the current run.
    written: HashSet<ResourceKey>,
    /// Wakes the controller's loop, for changes from outside the state; none for a queue
    /// controller, whose runs are per item.
    trigger: Option<Arc<Notify>>,
}

/// Wakes a controller for a change outside the state (a netlink event, a file): a
/// controller hands it to the watcher it starts. Wakes while a run is going on are not
/// lost: the controller runs once more after it.
#[derive(Debug, Clone)]
pub struct Waker(Arc<Notify>);

impl Waker {
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

impl Runtime {
    pub(crate) fn new(
        state: State,
        controller: &'static str,
        inputs: Vec<Input>,
        outputs: Vec<Output>,
        trigger: Option<Arc<Notify>>,
    ) -> Self {
        Runtime {
            state,
            controller,
            inputs,
            outputs,
            written: HashSet::new(),
            trigger,
        }
    }

    /// What wakes this controller from outside the state (`None` in a queue controller).
    pub fn waker(&self) -> Option<Waker> {
        self.trigger.clone().map(Waker)
    }

    /// The name of the controller, which owns its outputs.
    pub fn controller(&self) -> &'static str {
        self.controller
    }

    fn check_read(&self, kind: &Kind) -> Result<(), ControllerError> {
        if self.inputs.iter().any(|i| i.kind == *kind)
            || self.outputs.iter().any(|o| o.kind == *kind)
        {
            Ok(())
        } else {
            Err(ControllerError::NotAnInput {
                controller: self.controller.to_string(),
                kind: kind.clone(),
            })
        }
    }

    fn check_write(&self, kind: &Kind) -> Result<(), ControllerError> {
        if self.outputs.iter().any(|o| o.kind == *kind) {
            Ok(())
        } else {
            Err(ControllerError::NotAnOutput {
                controller: self.controller.to_string(),
                type_name: kind.to_string(),
            })
        }
    }

    /// A resource of the type's default namespace, if it exists.
    pub async fn get<S: ResourceSpec>(
        &self,
        id: &str,
    ) -> Result<Option<Resource<S>>, ControllerError> {
        self.get_in::<S>(S::DEFAULT_NAMESPACE, id).await
    }

    pub async fn get_in<S: ResourceSpec>(
        &self,
        namespace: &str,
        id: &str,
    ) -> Result<Option<Resource<S>>, ControllerError> {
        let key = ResourceKey::new(namespace, S::TYPE, id);
        self.check_read(&key.kind())?;
        match self.state.get(&key).await {
            Ok(r) => Ok(Some(Resource::try_from(r.as_ref())?)),
            Err(StateError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Every resource of the type's default namespace.
    pub async fn list<S: ResourceSpec>(&self) -> Result<Vec<Resource<S>>, ControllerError> {
        self.list_in::<S>(S::DEFAULT_NAMESPACE, &LabelQuery::everything())
            .await
    }

    pub async fn list_in<S: ResourceSpec>(
        &self,
        namespace: &str,
        selector: &LabelQuery,
    ) -> Result<Vec<Resource<S>>, ControllerError> {
        let kind = Kind::new(namespace, S::TYPE);
        self.check_read(&kind)?;
        self.state
            .list(&kind, selector)
            .await?
            .iter()
            .map(|r| Ok(Resource::try_from(r.as_ref())?))
            .collect()
    }

    /// Writes an output: creates it, or updates its spec, labels and annotations. A write
    /// that changes nothing is not stored. The output counts as produced by this run.
    pub async fn put<S: ResourceSpec>(
        &mut self,
        resource: Resource<S>,
    ) -> Result<(), ControllerError> {
        let key = resource.metadata.key();
        self.check_write(&key.kind())?;
        self.written.insert(key.clone());
        let mut resource = resource.into_any();
        loop {
            let current = match self.state.get(&key).await {
                Ok(current) => current,
                Err(StateError::NotFound(_)) => {
                    match self.state.create(resource.clone(), self.controller).await {
                        Err(StateError::AlreadyExists(_)) => continue,
                        other => return other.map(drop).map_err(Into::into),
                    }
                }
                Err(e) => return Err(e.into()),
            };
            if current.metadata.phase == Phase::TearingDown {
                // An earlier run dropped it and a later one wants it back: finish the
                // teardown first if nothing holds it, else wait for the finalizers.
                if current.metadata.owner == self.controller
                    && current.metadata.finalizers.is_empty()
                {
                    self.state.destroy(&key, self.controller).await?;
                    continue;
                }
                return Err(ControllerError::OutputTearingDown {
                    key: key.to_string(),
                    finalizers: current.metadata.finalizers.iter().cloned().collect(),
                });
            }
            resource.metadata.version = current.metadata.version;
            match self.state.update(resource.clone(), self.controller).await {
                Err(StateError::Conflict { .. }) => continue,
                other => return other.map(drop).map_err(Into::into),
            }
        }
    }

    /// Writes an output in the type's default namespace with no labels.
    pub async fn put_spec<S: ResourceSpec>(
        &mut self,
        id: &str,
        spec: S,
    ) -> Result<(), ControllerError> {
        self.put(Resource::new(id, spec)).await
    }

    fn check_strong(&self, kind: &Kind) -> Result<(), ControllerError> {
        if self
            .inputs
            .iter()
            .any(|i| i.kind == *kind && i.input_kind == InputKind::Strong)
        {
            Ok(())
        } else {
            Err(ControllerError::NotAStrongInput {
                controller: self.controller.to_string(),
                kind: kind.clone(),
            })
        }
    }

    /// Holds a finalizer (the controller's name) on a strong input, so it is not
    /// destroyed while this controller uses it.
    pub async fn add_finalizer(&self, key: &ResourceKey) -> Result<(), ControllerError> {
        self.check_strong(&key.kind())?;
        self.state.add_finalizer(key, self.controller).await?;
        Ok(())
    }

    /// Releases this controller's finalizer on a strong input.
    pub async fn remove_finalizer(&self, key: &ResourceKey) -> Result<(), ControllerError> {
        self.check_strong(&key.kind())?;
        match self.state.remove_finalizer(key, self.controller).await {
            Ok(_) | Err(StateError::NotFound(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Tears down an output and destroys it once no finalizer holds it. Returns whether
    /// it is gone.
    pub async fn destroy_output(&self, key: &ResourceKey) -> Result<bool, ControllerError> {
        self.check_write(&key.kind())?;
        let torn = match self.state.teardown(key, self.controller).await {
            Ok(torn) => torn,
            Err(StateError::NotFound(_)) => return Ok(true),
            Err(e) => return Err(e.into()),
        };
        if !torn.metadata.finalizers.is_empty() {
            return Ok(false);
        }
        match self.state.destroy(key, self.controller).await {
            Ok(()) | Err(StateError::NotFound(_)) => Ok(true),
            Err(StateError::PendingFinalizers { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) fn start_run(&mut self) {
        self.written.clear();
    }

    /// Destroys (or starts tearing down) every output this controller owns that the run
    /// did not write.
    pub(crate) async fn cleanup_outputs(&mut self) -> Result<(), ControllerError> {
        let stale: Vec<Arc<AnyResource>> = {
            let mut stale = Vec::new();
            for output in &self.outputs {
                let all = self
                    .state
                    .list(&output.kind, &LabelQuery::everything())
                    .await?;
                stale.extend(all.into_iter().filter(|r| {
                    r.metadata.owner == self.controller && !self.written.contains(&r.metadata.key())
                }));
            }
            stale
        };
        for resource in stale {
            self.destroy_output(&resource.metadata.key()).await?;
        }
        Ok(())
    }
}
