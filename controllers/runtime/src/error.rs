use basalt_resource::{Kind, ResourceError};
use basalt_state::StateError;
use thiserror::Error;

/// Why a reconcile failed. The runtime logs it and runs the controller again after a
/// backoff.
#[derive(Debug, Error)]
pub enum ControllerError {
    #[error(transparent)]
    State(#[from] StateError),

    #[error(transparent)]
    Resource(#[from] ResourceError),

    #[error("controller {controller} read {kind}, which is not one of its inputs or outputs")]
    NotAnInput { controller: String, kind: Kind },

    #[error(
        "controller {controller} holds finalizers only on strong inputs, and {kind} is not one"
    )]
    NotAStrongInput { controller: String, kind: Kind },

    #[error("controller {controller} wrote {type_name}, which is not one of its outputs")]
    NotAnOutput {
        controller: String,
        type_name: String,
    },

    #[error("output {key} is still being torn down (finalizers {finalizers:?})")]
    OutputTearingDown {
        key: String,
        finalizers: Vec<String>,
    },

    /// A controller's own failure.
    #[error("{0}")]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

impl ControllerError {
    pub fn other(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        ControllerError::Other(e.into())
    }
}

/// Why a controller could not be registered.
#[derive(Debug, Error)]
pub enum RegistrationError {
    #[error("a controller named {0:?} is already registered")]
    DuplicateName(String),

    #[error("controller {controller} wants {type_name} as an exclusive output, but {other} already writes it")]
    ExclusiveConflict {
        controller: String,
        type_name: String,
        other: String,
    },

    #[error("controller {controller} wants {type_name} as a shared output, but {other} owns it exclusively")]
    SharedConflict {
        controller: String,
        type_name: String,
        other: String,
    },
}
