use thiserror::Error;

/// Errors of the resource model: registry, encodings, selectors.
#[derive(Debug, Error)]
pub enum ResourceError {
    #[error("unknown resource type {0:?}")]
    UnknownType(String),

    #[error("resource type {0:?} is registered twice")]
    DuplicateType(String),

    #[error("alias {alias:?} of {type_name:?} is already used by {other:?}")]
    AliasConflict {
        alias: String,
        type_name: String,
        other: String,
    },

    #[error("resource {key} holds a {found} spec, not a {expected} spec")]
    TypeMismatch {
        key: String,
        expected: &'static str,
        found: String,
    },

    #[error("cannot decode the spec of a {type_name} resource: {reason}")]
    DecodeSpec { type_name: String, reason: String },

    #[error("cannot decode a resource document: {reason}")]
    DecodeDocument { reason: String },

    #[error("cannot encode the spec of a {type_name} resource: {reason}")]
    EncodeSpec { type_name: String, reason: String },

    #[error("invalid hostname {value:?}: {reason}")]
    InvalidHostname { value: String, reason: &'static str },

    #[error("invalid label selector {input:?} at byte {position}: {reason}")]
    Selector {
        input: String,
        position: usize,
        reason: &'static str,
    },
}
