use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use basalt_resource::{AnyResource, Kind, Phase, ResourceKey, ResourceSpec};

use crate::{ControllerError, Runtime};

/// How an input's changes wake its controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// Any change wakes the controller.
    Weak,
    /// Any change wakes the controller, which holds a finalizer on the resources it
    /// uses ([`Runtime::add_finalizer`], allowed only on strong inputs) so they are not
    /// destroyed under it, and releases it when they tear down.
    Strong,
    /// Only a resource that is tearing down with no finalizers left wakes the controller:
    /// for the owner that destroys it.
    DestroyReady,
}

/// A resource kind a controller reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    pub kind: Kind,
    /// Only this resource, when set.
    pub id: Option<String>,
    pub input_kind: InputKind,
}

impl Input {
    fn of<S: ResourceSpec>(input_kind: InputKind) -> Self {
        Input {
            kind: Kind::of::<S>(),
            id: None,
            input_kind,
        }
    }

    pub fn weak<S: ResourceSpec>() -> Self {
        Self::of::<S>(InputKind::Weak)
    }

    pub fn strong<S: ResourceSpec>() -> Self {
        Self::of::<S>(InputKind::Strong)
    }

    pub fn destroy_ready<S: ResourceSpec>() -> Self {
        Self::of::<S>(InputKind::DestroyReady)
    }

    pub fn in_namespace(mut self, namespace: &str) -> Self {
        self.kind.namespace = namespace.to_string();
        self
    }

    pub fn with_id(mut self, id: &str) -> Self {
        self.id = Some(id.to_string());
        self
    }

    /// Whether a change of `resource` should wake the controller.
    pub(crate) fn wakes_on(&self, resource: &AnyResource) -> bool {
        if self
            .id
            .as_ref()
            .is_some_and(|id| *id != resource.metadata.id)
        {
            return false;
        }
        match self.input_kind {
            InputKind::Weak | InputKind::Strong => true,
            InputKind::DestroyReady => {
                resource.metadata.phase == Phase::TearingDown
                    && resource.metadata.finalizers.is_empty()
            }
        }
    }
}

/// Whether other controllers may write the same type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// This controller is the only writer of the type.
    Exclusive,
    /// Several controllers write resources of the type, each its own.
    Shared,
}

/// A resource kind a controller writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub kind: Kind,
    pub output_kind: OutputKind,
}

impl Output {
    pub fn exclusive<S: ResourceSpec>() -> Self {
        Output {
            kind: Kind::of::<S>(),
            output_kind: OutputKind::Exclusive,
        }
    }

    pub fn shared<S: ResourceSpec>() -> Self {
        Output {
            kind: Kind::of::<S>(),
            output_kind: OutputKind::Shared,
        }
    }

    pub fn in_namespace(mut self, namespace: &str) -> Self {
        self.kind.namespace = namespace.to_string();
        self
    }
}

/// What the runtime should do after a successful reconcile.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Wait for the next input change.
    Done,
    /// Run again after this long even if no input changes (polling an outside source).
    RequeueAfter(Duration),
}

/// A controller that reconciles all of its outputs in each run.
///
/// After a successful run the runtime tears down and destroys every output resource the
/// controller owns but did not write in that run: a run states the complete set.
#[async_trait]
pub trait Controller: Send + 'static {
    /// A unique name, `domain.NameController`; it is the owner of the outputs.
    fn name(&self) -> &'static str;
    fn inputs(&self) -> Vec<Input>;
    fn outputs(&self) -> Vec<Output>;
    async fn reconcile(&mut self, rt: &mut Runtime) -> Result<Action, ControllerError>;
}

/// Maps a changed input resource to the queue items it affects.
pub type Mapper = Arc<dyn Fn(&AnyResource) -> Vec<ResourceKey> + Send + Sync>;

/// An input of a [`QController`] and how its changes become queue items.
#[derive(Clone)]
pub struct QInput {
    pub input: Input,
    pub map: Mapper,
}

impl fmt::Debug for QInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QInput")
            .field("input", &self.input)
            .finish_non_exhaustive()
    }
}

impl QInput {
    /// Each changed resource is itself the queue item.
    pub fn primary(input: Input) -> Self {
        QInput {
            input,
            map: Arc::new(|r| vec![r.metadata.key()]),
        }
    }

    /// Changed resources are mapped to the items they affect.
    pub fn mapped(
        input: Input,
        map: impl Fn(&AnyResource) -> Vec<ResourceKey> + Send + Sync + 'static,
    ) -> Self {
        QInput {
            input,
            map: Arc::new(map),
        }
    }
}

/// A controller that reconciles one item (a resource key) at a time from a queue. The
/// item's resource may no longer exist: then the controller removes what it made for it.
/// Outputs are not cleaned up automatically.
#[async_trait]
pub trait QController: Send + 'static {
    fn name(&self) -> &'static str;
    fn inputs(&self) -> Vec<QInput>;
    fn outputs(&self) -> Vec<Output>;
    async fn reconcile(
        &mut self,
        rt: &mut Runtime,
        item: &ResourceKey,
    ) -> Result<Action, ControllerError>;
}

/// Declares a [`Controller`]'s name, inputs and outputs, inside its `impl` block:
///
/// ```text
/// impl Controller for HostnameController {
///     basalt_controller_runtime::declare! {
///         name: "network.HostnameController",
///         inputs: [Input::weak::<HostnameConfigSpec>().with_id(HostnameConfigSpec::ID)],
///         outputs: [Output::exclusive::<HostnameSpec>()],
///     }
///     async fn reconcile(...) { ... }
/// }
/// ```
#[macro_export]
macro_rules! declare {
    (
        name: $name:literal,
        inputs: [$($input:expr),* $(,)?],
        outputs: [$($output:expr),* $(,)?] $(,)?
    ) => {
        fn name(&self) -> &'static str {
            $name
        }

        fn inputs(&self) -> ::std::vec::Vec<$crate::Input> {
            ::std::vec![$($input),*]
        }

        fn outputs(&self) -> ::std::vec::Vec<$crate::Output> {
            ::std::vec![$($output),*]
        }
    };
}
