use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use basalt_resource::{AnyResource, Kind, LabelQuery};
use tokio::sync::mpsc;

use crate::StateError;

/// A change to a watched resource. Events of one kind arrive in the order they were
/// stored, so each resource's events arrive in version order.
#[derive(Debug, Clone)]
pub enum Event {
    Created(Arc<AnyResource>),
    Updated {
        old: Arc<AnyResource>,
        new: Arc<AnyResource>,
    },
    /// The resource was destroyed, or (with a label selector) no longer matches it.
    Destroyed(Arc<AnyResource>),
    /// Every resource that existed when a bootstrapping watch started has been sent.
    Bootstrapped,
}

impl Event {
    /// The resource the event is about, as it is now (or was last, when destroyed).
    pub fn resource(&self) -> Option<&Arc<AnyResource>> {
        match self {
            Event::Created(r) | Event::Destroyed(r) => Some(r),
            Event::Updated { new, .. } => Some(new),
            Event::Bootstrapped => None,
        }
    }
}

/// Options of [`crate::State::watch_kind`].
#[derive(Debug, Clone, Default)]
pub struct WatchKindOptions {
    /// Send every existing resource as `Created`, then `Bootstrapped`, then changes.
    pub bootstrap: bool,
    /// Only resources whose labels match.
    pub selector: LabelQuery,
    /// How many events may wait for the reader before the watch is overrun; the state's
    /// capacity without it. A watch for a remote client takes a small one, so that a
    /// client that never reads holds little.
    pub capacity: Option<usize>,
}

/// A stream of events. It ends when the state is dropped; it yields
/// [`StateError::Overrun`] (and then ends) if the reader fell more than the watch
/// capacity behind: events are never dropped silently.
#[derive(Debug)]
pub struct Watch {
    pub(crate) kind: Kind,
    pub(crate) initial: VecDeque<Event>,
    pub(crate) rx: mpsc::Receiver<Event>,
    pub(crate) overrun: Arc<AtomicBool>,
}

impl Watch {
    /// The next event; `None` once the watch has ended.
    pub async fn next(&mut self) -> Option<Result<Event, StateError>> {
        if let Some(event) = self.initial.pop_front() {
            return Some(Ok(event));
        }
        match self.rx.recv().await {
            Some(event) => Some(Ok(event)),
            None => self.end(),
        }
    }

    /// The next event if one is ready, without waiting: for draining a burst.
    pub fn try_next(&mut self) -> Option<Result<Event, StateError>> {
        if let Some(event) = self.initial.pop_front() {
            return Some(Ok(event));
        }
        match self.rx.try_recv() {
            Ok(event) => Some(Ok(event)),
            Err(mpsc::error::TryRecvError::Empty) => None,
            Err(mpsc::error::TryRecvError::Disconnected) => self.end(),
        }
    }

    fn end(&mut self) -> Option<Result<Event, StateError>> {
        self.overrun
            .swap(false, Ordering::AcqRel)
            .then(|| Err(StateError::Overrun(self.kind.clone())))
    }
}

/// The state's side of a watch.
#[derive(Debug)]
pub(crate) struct Watcher {
    pub id: Option<String>,
    pub selector: LabelQuery,
    pub tx: mpsc::Sender<Event>,
    pub overrun: Arc<AtomicBool>,
}

impl Watcher {
    pub fn matches(&self, resource: &AnyResource) -> bool {
        self.id
            .as_ref()
            .is_none_or(|id| *id == resource.metadata.id)
            && self.selector.matches(&resource.metadata.labels)
    }

    /// Sends the event a change means to this watcher; false when the watcher is gone
    /// or overrun and should be dropped.
    pub fn notify(&self, old: Option<&Arc<AnyResource>>, new: Option<&Arc<AnyResource>>) -> bool {
        let old = old.filter(|r| self.matches(r));
        let new = new.filter(|r| self.matches(r));
        let event = match (old, new) {
            (None, Some(new)) => Event::Created(new.clone()),
            (Some(old), Some(new)) => Event::Updated {
                old: old.clone(),
                new: new.clone(),
            },
            (Some(old), None) => Event::Destroyed(old.clone()),
            (None, None) => return true,
        };
        match self.tx.try_send(event) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.overrun.store(true, Ordering::Release);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}
