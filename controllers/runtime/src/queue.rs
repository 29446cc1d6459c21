//! The runner of a [`QController`]: a de-duplicating queue of items fed by input
//! watches, delayed requeues, and per-item backoff.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use basalt_resource::ResourceKey;
use basalt_state::State;
use futures::FutureExt;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::runner::{failure, sleep_until_some, spawn_watch, Backoff};
use crate::{Action, Output, QController, QInput, Runtime};

#[derive(Debug, Default)]
struct Pending {
    order: VecDeque<ResourceKey>,
    queued: HashSet<ResourceKey>,
    /// Every item ever queued, for resynchronizing after a watch overrun.
    known: HashSet<ResourceKey>,
}

/// Items waiting to be reconciled; an item queued twice is reconciled once.
#[derive(Debug, Default)]
struct Queue {
    pending: Mutex<Pending>,
    ready: Notify,
}

impl Queue {
    fn push(&self, key: ResourceKey) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.queued.insert(key.clone()) {
            p.known.insert(key.clone());
            p.order.push_back(key);
            self.ready.notify_one();
        }
    }

    fn requeue_known(&self) {
        let known: Vec<ResourceKey> = {
            let p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.known.iter().cloned().collect()
        };
        for key in known {
            self.push(key);
        }
    }

    fn pop(&self) -> Option<ResourceKey> {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let key = p.order.pop_front()?;
        p.queued.remove(&key);
        Some(key)
    }
}

/// Items to reconcile later: one due time per item, the earliest asked for.
#[derive(Debug, Default)]
struct Schedule {
    due: HashMap<ResourceKey, Instant>,
    heap: BinaryHeap<Reverse<(Instant, ResourceKey)>>,
}

impl Schedule {
    fn at(&mut self, key: ResourceKey, at: Instant) {
        if self.due.get(&key).is_some_and(|d| *d <= at) {
            return;
        }
        self.due.insert(key.clone(), at);
        self.heap.push(Reverse((at, key)));
    }

    /// Items that are due; entries superseded by an earlier time are dropped.
    fn take_due(&mut self, now: Instant) -> Vec<ResourceKey> {
        let mut due = Vec::new();
        while self.heap.peek().is_some_and(|Reverse((at, _))| *at <= now) {
            if let Some(Reverse((at, key))) = self.heap.pop() {
                if self.due.get(&key) == Some(&at) {
                    self.due.remove(&key);
                    due.push(key);
                }
            }
        }
        due
    }

    fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }
}

pub(crate) struct QControllerRunner {
    pub controller: Box<dyn QController>,
    pub inputs: Vec<QInput>,
    pub outputs: Vec<Output>,
    pub backoff: Backoff,
}

impl QControllerRunner {
    pub async fn run(mut self, state: State, shutdown: CancellationToken) {
        let name = self.controller.name();
        let queue = Arc::new(Queue::default());
        let mut watches = JoinSet::new();
        for qinput in self.inputs.clone() {
            let q = queue.clone();
            let q2 = queue.clone();
            spawn_watch(
                &mut watches,
                state.clone(),
                qinput.input.kind.clone(),
                // The bootstrap snapshot queues every existing item at start.
                true,
                move |r| {
                    if qinput.input.wakes_on(r) {
                        for key in (qinput.map)(r) {
                            q.push(key);
                        }
                    }
                },
                // After an overrun, anything may have changed, including resources that
                // are gone now (and so not in the new snapshot): requeue every item seen.
                move || q2.requeue_known(),
            )
            .await;
        }

        let inputs = self.inputs.iter().map(|q| q.input.clone()).collect();
        let mut rt = Runtime::new(state, name, inputs, self.outputs.clone(), None);
        let mut schedule = Schedule::default();
        // Failing items: their backoff, and when they may run again.
        let mut failing: HashMap<ResourceKey, (Backoff, Instant)> = HashMap::new();
        loop {
            let now = Instant::now();
            for key in schedule.take_due(now) {
                queue.push(key);
            }
            let Some(item) = queue.pop() else {
                let due = sleep_until_some(schedule.next());
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break,
                    _ = queue.ready.notified() => {}
                    _ = due => {}
                }
                continue;
            };
            if shutdown.is_cancelled() {
                break;
            }
            // A change to a failing item does not cut its backoff short.
            if let Some((_, not_before)) = failing.get(&item).filter(|(_, nb)| *nb > now) {
                schedule.at(item, *not_before);
                continue;
            }
            rt.start_run();
            let result = AssertUnwindSafe(self.controller.reconcile(&mut rt, &item))
                .catch_unwind()
                .await;
            match failure(name, result) {
                Ok(action) => {
                    failing.remove(&item);
                    if let Action::RequeueAfter(after) = action {
                        // A wait too long to represent is a wait for the next change.
                        if let Some(at) = Instant::now().checked_add(after) {
                            schedule.at(item, at);
                        }
                    }
                }
                Err(reason) => {
                    let (backoff, not_before) = failing
                        .entry(item.clone())
                        .or_insert_with(|| (self.backoff.clone(), now));
                    let delay = backoff.next_delay();
                    *not_before = Instant::now() + delay;
                    tracing::warn!(controller = name, %item, error = %reason, retry_in = ?delay, "reconcile failed");
                    schedule.at(item, *not_before);
                }
            }
        }
        tracing::debug!(controller = name, "controller stopped");
    }
}
