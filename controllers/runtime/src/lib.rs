//! The controller runtime: controllers declare the resources they read (inputs) and
//! write (outputs); the [`Engine`] wakes a controller when an input changes (coalescing
//! bursts into one run), restarts it with exponential backoff when it errors or panics,
//! destroys the outputs a run no longer produced, and stops gracefully.
//!
//! Two shapes of controller: [`Controller`] reconciles everything at once and owns the
//! full set of its outputs; [`QController`] reconciles one resource at a time from a
//! queue, with per-item requeues.

mod controller;
mod engine;
mod error;
mod queue;
mod runner;
mod runtime;
pub mod testing;

pub use controller::{
    Action, Controller, Input, InputKind, Output, OutputKind, QController, QInput,
};
pub use engine::{Dependency, Edge, Engine, EngineOptions};
pub use error::{ControllerError, RegistrationError};
pub use runtime::{Runtime, Waker};
pub use tokio_util::sync::CancellationToken;
