use std::path::PathBuf;

/// A system call that failed, with what it was asked to do.
#[derive(Debug, thiserror::Error)]
pub enum SysError {
    #[error("{call} {}: {source}", path.display())]
    Path {
        call: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{call}: {source}")]
    Call {
        call: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{call}: {reason}")]
    Invalid { call: &'static str, reason: String },
}

impl SysError {
    /// The kind of the OS error behind this one, if the kernel refused the call.
    pub fn kind(&self) -> Option<std::io::ErrorKind> {
        match self {
            SysError::Path { source, .. } | SysError::Call { source, .. } => Some(source.kind()),
            SysError::Invalid { .. } => None,
        }
    }

    pub(crate) fn path(call: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        SysError::Path {
            call,
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn call(call: &'static str, source: impl Into<std::io::Error>) -> Self {
        SysError::Call {
            call,
            source: source.into(),
        }
    }
}
