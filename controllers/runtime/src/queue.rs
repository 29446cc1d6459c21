//! The runner of a [`QController`]: a de-duplicating queue of items fed by input
//! watches, delayed requeues, and per-item backoff.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use basalt_resource::ResourceKey;
use basalt_state::State;
use futures::FutureExt;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::runner::{failure, spawn_watch, Backoff};
use crate::{Action, Output, QController, QInput, Runtime};

#[derive(Debug, Default)]
struct Pending {
    order: VecDeque<ResourceKey>,
    queued: HashSet<ResourceKey>,
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
            p.order.push_back(key);
            self.ready.notify_one();
        }
    }

    fn pop(&self) -> Option<ResourceKey> {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let key = p.order.pop_front()?;
        p.queued.remove(&key);
        Some(key)
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
            spawn_watch(
                &mut watches,
                state.clone(),
                qinput.input.kind.clone(),
                // The bootstrap snapshot queues every existing item at start, and again
                // after an overrun. (Items whose resources vanished during an overrun are
                // not queued again; their next change or a restart handles them.)
                true,
                move |r| {
                    if qinput.input.wakes_on(r) {
                        for key in (qinput.map)(r) {
                            q.push(key);
                        }
                    }
                },
                || {},
            )
            .await;
        }

        let inputs = self.inputs.iter().map(|q| q.input.clone()).collect();
        let mut rt = Runtime::new(state, name, inputs, self.outputs.clone());
        let mut delayed: BinaryHeap<Reverse<(Instant, u64, ResourceKey)>> = BinaryHeap::new();
        let mut failures: HashMap<ResourceKey, Backoff> = HashMap::new();
        let mut sequence = 0u64;
        loop {
            // Move due requeues into the queue.
            let now = Instant::now();
            while delayed.peek().is_some_and(|Reverse((at, _, _))| *at <= now) {
                if let Some(Reverse((_, _, key))) = delayed.pop() {
                    queue.push(key);
                }
            }
            let Some(item) = queue.pop() else {
                let next_due = delayed.peek().map(|Reverse((at, _, _))| *at);
                let due = async {
                    match next_due {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = queue.ready.notified() => {}
                    _ = due => {}
                }
                continue;
            };
            if shutdown.is_cancelled() {
                break;
            }
            rt.start_run();
            let result = AssertUnwindSafe(self.controller.reconcile(&mut rt, &item))
                .catch_unwind()
                .await;
            let requeue_after: Option<Duration> = match failure(name, result) {
                Ok(Action::Done) => {
                    failures.remove(&item);
                    None
                }
                Ok(Action::RequeueAfter(after)) => {
                    failures.remove(&item);
                    Some(after)
                }
                Err(reason) => {
                    let delay = failures
                        .entry(item.clone())
                        .or_insert_with(|| self.backoff.clone())
                        .next_delay();
                    tracing::warn!(controller = name, %item, error = %reason, retry_in = ?delay, "reconcile failed");
                    Some(delay)
                }
            };
            if let Some(after) = requeue_after {
                sequence += 1;
                delayed.push(Reverse((Instant::now() + after, sequence, item)));
            }
        }
        tracing::debug!(controller = name, "controller stopped");
    }
}
