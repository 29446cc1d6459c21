//! The loop that runs one controller: wake-ups from input watches, runs guarded against
//! errors and panics, backoff, and output clean-up.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use basalt_resource::{AnyResource, Phase};
use basalt_state::{Event, State, StateError, WatchKindOptions};
use futures::FutureExt;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{Action, Controller, ControllerError, Input, Output, Runtime};

/// Sleeps until `at`, or forever when there is no deadline.
pub(crate) async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Exponential backoff between failed runs, reset by a successful one.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        // Bounded so that "now + delay" can always be represented.
        const LONGEST: Duration = Duration::from_secs(24 * 3600);
        Backoff {
            base: base.min(LONGEST),
            max: max.min(LONGEST),
            failures: 0,
        }
    }

    /// The wait before the next try, growing ×2 per consecutive failure, with ±25%
    /// jitter so that controllers failing together do not retry in lockstep.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.failures.min(20));
        self.failures = self.failures.saturating_add(1);
        let delay = exp.min(self.max);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let jitter = 0.75 + f64::from(nanos % 1000) / 2000.0;
        Duration::try_from_secs_f64(delay.as_secs_f64() * jitter).unwrap_or(delay)
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Turns the result of a guarded run into a log line and the failure it is.
pub(crate) fn failure(
    controller: &str,
    result: Result<Result<Action, ControllerError>, Box<dyn std::any::Any + Send>>,
) -> Result<Action, String> {
    match result {
        Ok(Ok(action)) => Ok(action),
        Ok(Err(e)) => Err(e.to_string()),
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_string());
            tracing::error!(controller, panic = %message, "controller panicked");
            Err(format!("panicked: {message}"))
        }
    }
}

/// Watches a kind and calls `on_change` with each changed resource. The first
/// subscription is made before this returns, so a run that starts afterwards cannot miss
/// a change. Survives overruns by watching again (and calling `on_resync`, since changes
/// may have been missed in between).
pub(crate) async fn spawn_watch(
    tasks: &mut JoinSet<()>,
    state: State,
    kind: basalt_resource::Kind,
    bootstrap: bool,
    on_change: impl Fn(&AnyResource) + Send + Sync + 'static,
    on_resync: impl Fn() + Send + Sync + 'static,
) {
    let options = WatchKindOptions {
        bootstrap,
        ..Default::default()
    };
    let mut watch = match state.watch_kind(&kind, options.clone()).await {
        Ok(watch) => watch,
        Err(e) => {
            tracing::error!(%kind, error = %e, "cannot watch an input; the controller will not wake for it");
            return;
        }
    };
    tasks.spawn(async move {
        loop {
            match watch.next().await {
                Some(Ok(Event::Bootstrapped)) => {}
                Some(Ok(event)) => {
                    if let Some(r) = event.resource() {
                        on_change(r);
                    }
                }
                Some(Err(StateError::Overrun(_))) => {
                    tracing::warn!(%kind, "watch overrun; watching again");
                    match state.watch_kind(&kind, options.clone()).await {
                        Ok(w) => watch = w,
                        Err(e) => {
                            tracing::error!(%kind, error = %e, "cannot watch an input again; the controller no longer wakes for it");
                            return;
                        }
                    }
                    on_resync();
                }
                // The state is gone: the node is shutting down.
                None => return,
                Some(Err(e)) => {
                    tracing::error!(%kind, error = %e, "input watch failed; the controller no longer wakes for it");
                    return;
                }
            }
        }
    });
}

/// Wakes the controller for its own outputs that are tearing down and free to destroy,
/// so a clean-up that waited on finalizers finishes.
pub(crate) fn wakes_owner(controller: &str, resource: &AnyResource) -> bool {
    resource.metadata.owner == controller
        && resource.metadata.phase == Phase::TearingDown
        && resource.metadata.finalizers.is_empty()
}

pub(crate) struct ControllerRunner {
    pub controller: Box<dyn Controller>,
    pub inputs: Vec<Input>,
    pub outputs: Vec<Output>,
    pub backoff: Backoff,
}

impl ControllerRunner {
    pub async fn run(mut self, state: State, shutdown: CancellationToken) {
        let name = self.controller.name();
        let trigger = Arc::new(Notify::new());
        let mut watches = JoinSet::new();
        for input in self.inputs.clone() {
            let t = trigger.clone();
            let t2 = trigger.clone();
            let kind = input.kind.clone();
            spawn_watch(
                &mut watches,
                state.clone(),
                kind,
                false,
                move |r| {
                    if input.wakes_on(r) {
                        t.notify_one();
                    }
                },
                move || t2.notify_one(),
            )
            .await;
        }
        for output in &self.outputs {
            let t = trigger.clone();
            let t2 = trigger.clone();
            spawn_watch(
                &mut watches,
                state.clone(),
                output.kind.clone(),
                false,
                move |r| {
                    if wakes_owner(name, r) {
                        t.notify_one();
                    }
                },
                move || t2.notify_one(),
            )
            .await;
        }

        let mut rt = Runtime::new(
            state,
            name,
            self.inputs.clone(),
            self.outputs.clone(),
            Some(Arc::clone(&trigger)),
        );
        // The first run happens at start, whatever the inputs.
        trigger.notify_one();
        let mut requeue_at: Option<Instant> = None;
        loop {
            let requeue = sleep_until_some(requeue_at);
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = trigger.notified() => {}
                _ = requeue => {}
            }
            if shutdown.is_cancelled() {
                break;
            }
            requeue_at = None;
            rt.start_run();
            let result = AssertUnwindSafe(async {
                let action = self.controller.reconcile(&mut rt).await?;
                rt.cleanup_outputs().await?;
                Ok(action)
            })
            .catch_unwind()
            .await;
            match failure(name, result) {
                Ok(Action::Done) => self.backoff.reset(),
                Ok(Action::RequeueAfter(after)) => {
                    self.backoff.reset();
                    // A wait too long to represent is a wait for the next change.
                    requeue_at = Instant::now().checked_add(after);
                }
                Err(reason) => {
                    let delay = self.backoff.next_delay();
                    tracing::warn!(controller = name, error = %reason, retry_in = ?delay, "reconcile failed");
                    // Changes during the backoff do not cut it short; they are remembered.
                    tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => trigger.notify_one(),
                    }
                }
            }
        }
        tracing::debug!(controller = name, "controller stopped");
    }
}
