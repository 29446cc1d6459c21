use std::collections::BTreeSet;

use basalt_resource::{Kind, Phase, ResourceError, ResourceKey};
use thiserror::Error;

/// Errors of state operations. Each names the resource it is about.
#[derive(Debug, Error)]
pub enum StateError {
    #[error("resource {0} does not exist")]
    NotFound(ResourceKey),

    #[error("resource {0} already exists")]
    AlreadyExists(ResourceKey),

    #[error("resource {key} was changed by another writer: the update is based on version {expected}, the resource is at version {actual}")]
    Conflict {
        key: ResourceKey,
        expected: u64,
        actual: u64,
    },

    #[error("resource {key} is owned by {owner:?}; {writer:?} may not change it")]
    OwnerConflict {
        key: ResourceKey,
        owner: String,
        writer: String,
    },

    #[error("resource {key} is {phase}; it can no longer be changed that way")]
    PhaseConflict { key: ResourceKey, phase: Phase },

    #[error("resource {key} still has finalizers {finalizers:?}")]
    PendingFinalizers {
        key: ResourceKey,
        finalizers: BTreeSet<String>,
    },

    #[error("invalid resource key {key}: {reason}")]
    InvalidKey {
        key: ResourceKey,
        reason: &'static str,
    },

    #[error("resource {0} is at the highest version there is")]
    VersionOverflow(ResourceKey),

    #[error("resource {key} is written as {found}, not as {expected}")]
    KeyMismatch {
        key: ResourceKey,
        expected: String,
        found: String,
    },

    #[error("the watch of {0} fell too far behind and was closed; watch again to resynchronize")]
    Overrun(Kind),

    #[error("persistent state at {path}: {reason}")]
    Persistence { path: String, reason: String },

    /// The file is there but is not a state this version can read: damaged, truncated or
    /// of another format. (A file in use by another process is [`Persistence`].)
    ///
    /// [`Persistence`]: StateError::Persistence
    #[error("persistent state at {path} is damaged or not a state file: {reason}")]
    Corrupt { path: String, reason: String },

    #[error(transparent)]
    Resource(#[from] ResourceError),
}
