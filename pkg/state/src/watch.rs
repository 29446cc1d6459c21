use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
    pub limits: WatchLimits,
}

/// How far a watch's reader may fall behind before the watch is overrun. A watch for a
/// remote client takes small limits, so that a client that never reads holds little.
#[derive(Debug, Clone, Copy, Default)]
pub struct WatchLimits {
    /// Events waiting for the reader; the state's capacity without it.
    pub events: Option<usize>,
    /// Bytes of the resources those events hold ([`AnyResource::approx_len`]); no
    /// bound without it. Sized events cost a serialization each (counted, not written),
    /// so only watches for remote clients take this bound.
    pub bytes: Option<usize>,
}

/// A stream of events. It ends when the state is dropped; it yields
/// [`StateError::Overrun`] (and then ends) if the reader fell more than the watch
/// capacity behind: events are never dropped silently.
#[derive(Debug)]
pub struct Watch {
    pub(crate) kind: Kind,
    pub(crate) initial: VecDeque<Event>,
    /// Each event with its size in bytes (0 when the watch has no byte bound).
    pub(crate) rx: mpsc::Receiver<(Event, usize)>,
    pub(crate) overrun: Arc<AtomicBool>,
    /// Bytes of the events waiting in `rx`.
    pub(crate) pending: Arc<AtomicUsize>,
}

impl Watch {
    /// The next event; `None` once the watch has ended.
    pub async fn next(&mut self) -> Option<Result<Event, StateError>> {
        if let Some(event) = self.initial.pop_front() {
            return Some(Ok(event));
        }
        match self.rx.recv().await {
            Some(event) => Some(Ok(self.taken(event))),
            None => self.end(),
        }
    }

    /// The next event if one is ready, without waiting: for draining a burst.
    pub fn try_next(&mut self) -> Option<Result<Event, StateError>> {
        if let Some(event) = self.initial.pop_front() {
            return Some(Ok(event));
        }
        match self.rx.try_recv() {
            Ok(event) => Some(Ok(self.taken(event))),
            Err(mpsc::error::TryRecvError::Empty) => None,
            Err(mpsc::error::TryRecvError::Disconnected) => self.end(),
        }
    }

    /// An event the reader takes: its bytes no longer wait.
    fn taken(&self, (event, size): (Event, usize)) -> Event {
        if size > 0 {
            self.pending.fetch_sub(size, Ordering::AcqRel);
        }
        event
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
    pub tx: mpsc::Sender<(Event, usize)>,
    pub overrun: Arc<AtomicBool>,
    /// The byte bound, and the bytes waiting (shared with the [`Watch`]).
    pub max_bytes: Option<usize>,
    pub pending: Arc<AtomicUsize>,
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
        let size = match self.max_bytes {
            None => 0,
            Some(max) => {
                let size = match &event {
                    Event::Updated { old, new } => old.approx_len() + new.approx_len(),
                    other => other.resource().map_or(0, |r| r.approx_len()),
                };
                let pending = self.pending.fetch_add(size, Ordering::AcqRel);
                if pending.saturating_add(size) > max {
                    self.overrun.store(true, Ordering::Release);
                    return false;
                }
                size
            }
        };
        match self.tx.try_send((event, size)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.overrun.store(true, Ordering::Release);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}
