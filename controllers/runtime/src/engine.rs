use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use basalt_resource::Kind;
use basalt_state::State;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::queue::QControllerRunner;
use crate::runner::{Backoff, ControllerRunner};
use crate::{
    Controller, Input, InputKind, Output, OutputKind, QController, QInput, RegistrationError,
};

/// One edge of the controller graph: a controller reads or writes a resource type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    pub controller: &'static str,
    pub kind: Kind,
    /// For an input of one resource only.
    pub id: Option<String>,
    pub edge: Edge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edge {
    Input(InputKind),
    Output(OutputKind),
}

/// Tunables of an [`Engine`].
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// The first wait after a failed run; doubles per consecutive failure.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// How long [`Engine::run`] waits for running reconciles after shutdown is asked for.
    pub shutdown_grace: Duration,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

enum Registered {
    Plain(Box<dyn Controller>),
    Queue(Box<dyn QController>, Vec<QInput>),
}

struct Entry {
    name: &'static str,
    inputs: Vec<Input>,
    outputs: Vec<Output>,
    controller: Registered,
}

/// Runs a set of controllers over one state.
pub struct Engine {
    state: State,
    options: EngineOptions,
    entries: Vec<Entry>,
    names: HashSet<&'static str>,
    /// type -> (kind of output, controllers writing it)
    writers: BTreeMap<String, (OutputKind, Vec<&'static str>)>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("controllers", &self.names)
            .finish_non_exhaustive()
    }
}

impl Engine {
    pub fn new(state: State) -> Self {
        Self::with_options(state, EngineOptions::default())
    }

    pub fn with_options(state: State, options: EngineOptions) -> Self {
        Engine {
            state,
            options,
            entries: Vec::new(),
            names: HashSet::new(),
            writers: BTreeMap::new(),
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// Checks a controller's name and outputs against those registered already.
    fn admit(&mut self, name: &'static str, outputs: &[Output]) -> Result<(), RegistrationError> {
        if self.names.contains(name) {
            return Err(RegistrationError::DuplicateName(name.to_string()));
        }
        for output in outputs {
            let Some((kind, writers)) = self.writers.get(&output.kind.type_name) else {
                continue;
            };
            let other = writers.first().copied().unwrap_or_default().to_string();
            let (controller, type_name) = (name.to_string(), output.kind.type_name.clone());
            match (output.output_kind, kind) {
                (OutputKind::Exclusive, _) => {
                    return Err(RegistrationError::ExclusiveConflict {
                        controller,
                        type_name,
                        other,
                    })
                }
                (OutputKind::Shared, OutputKind::Exclusive) => {
                    return Err(RegistrationError::SharedConflict {
                        controller,
                        type_name,
                        other,
                    })
                }
                (OutputKind::Shared, OutputKind::Shared) => {}
            }
        }
        self.names.insert(name);
        for output in outputs {
            self.writers
                .entry(output.kind.type_name.clone())
                .or_insert_with(|| (output.output_kind, Vec::new()))
                .1
                .push(name);
        }
        Ok(())
    }

    /// Registers a controller; fails on a duplicate name or a conflicting output.
    pub fn register(&mut self, controller: impl Controller) -> Result<(), RegistrationError> {
        let (name, inputs, outputs) =
            (controller.name(), controller.inputs(), controller.outputs());
        self.admit(name, &outputs)?;
        self.entries.push(Entry {
            name,
            inputs,
            outputs,
            controller: Registered::Plain(Box::new(controller)),
        });
        Ok(())
    }

    /// Registers a queue-driven controller.
    pub fn register_q(&mut self, controller: impl QController) -> Result<(), RegistrationError> {
        let (name, qinputs, outputs) =
            (controller.name(), controller.inputs(), controller.outputs());
        self.admit(name, &outputs)?;
        self.entries.push(Entry {
            name,
            inputs: qinputs.iter().map(|q| q.input.clone()).collect(),
            outputs,
            controller: Registered::Queue(Box::new(controller), qinputs),
        });
        Ok(())
    }

    /// The dependency graph: every controller's inputs and outputs, in the order they
    /// were registered (`osctl inspect dependencies` draws it).
    pub fn dependencies(&self) -> Vec<Dependency> {
        let mut out = Vec::new();
        for e in &self.entries {
            for i in &e.inputs {
                out.push(Dependency {
                    controller: e.name,
                    kind: i.kind.clone(),
                    id: i.id.clone(),
                    edge: Edge::Input(i.input_kind),
                });
            }
            for o in &e.outputs {
                out.push(Dependency {
                    controller: e.name,
                    kind: o.kind.clone(),
                    id: None,
                    edge: Edge::Output(o.output_kind),
                });
            }
        }
        out
    }

    /// Runs every controller until `shutdown` is cancelled, then lets running reconciles
    /// finish (up to the grace period) and returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tasks = JoinSet::new();
        let mut names = std::collections::HashMap::new();
        let backoff = Backoff::new(self.options.backoff_base, self.options.backoff_max);
        for entry in self.entries {
            let (state, stop) = (self.state.clone(), shutdown.clone());
            match entry.controller {
                Registered::Plain(controller) => {
                    let runner = ControllerRunner {
                        controller,
                        inputs: entry.inputs,
                        outputs: entry.outputs,
                        backoff: backoff.clone(),
                    };
                    names.insert(tasks.spawn(runner.run(state, stop)).id(), entry.name);
                }
                Registered::Queue(controller, inputs) => {
                    let runner = QControllerRunner {
                        controller,
                        inputs,
                        outputs: entry.outputs,
                        backoff: backoff.clone(),
                    };
                    names.insert(tasks.spawn(runner.run(state, stop)).id(), entry.name);
                }
            }
            tracing::debug!(controller = entry.name, "controller started");
        }
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                // Runners contain their controllers' panics and run until shutdown: one
                // that ends early is a bug in the runtime, and loud.
                Some(ended) = tasks.join_next_with_id() => {
                    let id = match &ended {
                        Ok((id, ())) => *id,
                        Err(e) => e.id(),
                    };
                    let controller = names.get(&id).copied().unwrap_or("?");
                    tracing::error!(controller, result = ?ended.map(|_| ()), "a controller runner stopped before shutdown");
                }
            }
        }
        let drained = tokio::time::timeout(self.options.shutdown_grace, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                remaining = tasks.len(),
                "controllers did not stop within the grace period; aborting them"
            );
            tasks.shutdown().await;
        }
    }
}
