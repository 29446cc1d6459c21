//! A harness for controller tests: run controllers against a fresh in-memory state and
//! assert what their outputs eventually become.
//!
//! ```text
//! let h = Harness::builder().with(HostnameController)?.start();
//! h.state().create(config.into_any(), "").await?;
//! h.assert_resource::<HostnameSpec>("hostname", |r| r.spec.hostname == "node-1").await;
//! ```

use std::time::Duration;

use basalt_resource::{Kind, LabelQuery, Resource, ResourceKey, ResourceSpec};
use basalt_state::{State, StateError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{Controller, Engine, EngineOptions, QController, RegistrationError};

/// How long an eventual assertion waits by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds a [`Harness`].
#[derive(Debug)]
pub struct HarnessBuilder {
    engine: Engine,
}

impl HarnessBuilder {
    pub fn with(mut self, controller: impl Controller) -> Result<Self, RegistrationError> {
        self.engine.register(controller)?;
        Ok(self)
    }

    pub fn with_q(mut self, controller: impl QController) -> Result<Self, RegistrationError> {
        self.engine.register_q(controller)?;
        Ok(self)
    }

    /// Starts the controllers on the current tokio runtime.
    pub fn start(self) -> Harness {
        let state = self.engine.state().clone();
        let shutdown = CancellationToken::new();
        let engine = tokio::spawn(self.engine.run(shutdown.clone()));
        Harness {
            state,
            shutdown,
            engine: Some(engine),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// Controllers running over an in-memory state; stops them when dropped.
#[derive(Debug)]
pub struct Harness {
    state: State,
    shutdown: CancellationToken,
    engine: Option<JoinHandle<()>>,
    timeout: Duration,
}

impl Harness {
    /// A harness over a fresh in-memory state, with a short backoff so restarts are quick.
    pub fn builder() -> HarnessBuilder {
        Self::builder_with(State::new())
    }

    pub fn builder_with(state: State) -> HarnessBuilder {
        let options = EngineOptions {
            backoff_base: Duration::from_millis(10),
            backoff_max: Duration::from_millis(200),
            shutdown_grace: Duration::from_secs(5),
        };
        HarnessBuilder {
            engine: Engine::with_options(state, options),
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Waits until the resource exists and `check` holds for it; panics with the last
    /// version seen when the timeout passes.
    pub async fn assert_resource<S: ResourceSpec>(
        &self,
        id: &str,
        check: impl Fn(&Resource<S>) -> bool,
    ) -> Resource<S> {
        let key = ResourceKey::of::<S>(id);
        let mut last: Option<Resource<S>> = None;
        let found = tokio::time::timeout(self.timeout, async {
            loop {
                if let Ok(r) = self.state.get(&key).await {
                    if let Ok(typed) = Resource::<S>::try_from(r.as_ref()) {
                        if check(&typed) {
                            return typed;
                        }
                        last = Some(typed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await;
        match found {
            Ok(r) => r,
            Err(_) => panic!(
                "{key}: the check did not hold within {:?}; last seen: {last:#?}",
                self.timeout
            ),
        }
    }

    /// Waits until the resource does not exist.
    pub async fn assert_no_resource<S: ResourceSpec>(&self, id: &str) {
        let key = ResourceKey::of::<S>(id);
        let gone = tokio::time::timeout(self.timeout, async {
            while !matches!(self.state.get(&key).await, Err(StateError::NotFound(_))) {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await;
        if gone.is_err() {
            panic!("{key} still exists after {:?}", self.timeout);
        }
    }

    /// Waits until exactly `n` resources of the type exist (and `check` holds for all).
    pub async fn assert_count<S: ResourceSpec>(
        &self,
        n: usize,
        check: impl Fn(&Resource<S>) -> bool,
    ) {
        let kind = Kind::of::<S>();
        let mut last = 0;
        let done = tokio::time::timeout(self.timeout, async {
            loop {
                if let Ok(all) = self.state.list(&kind, &LabelQuery::everything()).await {
                    last = all.len();
                    let ok = all.len() == n
                        && all
                            .iter()
                            .all(|r| Resource::<S>::try_from(r.as_ref()).is_ok_and(|t| check(&t)));
                    if ok {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        if done.is_err() {
            panic!(
                "{kind}: expected {n} matching resources within {:?}, last count {last}",
                self.timeout
            );
        }
    }

    /// Stops the controllers and waits for them.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(engine) = self.engine.take() {
            let _ = engine.await;
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
