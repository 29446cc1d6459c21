use thiserror::Error;

use crate::ValidationErrors;

/// Errors reading, patching or encoding a config. Each names the document and, where
/// the text is known, the line and column.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// A document as a whole is wrong: no kind, an unknown kind, a duplicate.
    #[error("document {document} (line {line}): {reason}")]
    Document {
        document: usize,
        line: usize,
        reason: String,
    },

    /// A field of a document is wrong; `message` starts with the field path.
    #[error("{kind} (document {document}) at line {line} column {column}: {message}")]
    Field {
        kind: String,
        document: usize,
        line: usize,
        column: usize,
        message: String,
    },

    #[error("invalid configuration:\n{0}")]
    Invalid(ValidationErrors),

    #[error("patch {patch}: {reason}")]
    Patch { patch: String, reason: String },

    #[error("cannot encode the configuration: {0}")]
    Encode(String),
}
