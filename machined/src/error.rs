use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("creating the state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("opening the state: {0}")]
    State(#[from] basalt_state::StateError),
    #[error("registering the controllers: {0}")]
    Registration(#[from] basalt_controller_runtime::RegistrationError),
    #[error("the resource registry: {0}")]
    Registry(#[from] basalt_resource::ResourceError),
    #[error("the node's parts: {0}")]
    Parts(#[from] crate::parts::NodeError),
    #[error("machined's socket {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the config given at start: {0}")]
    Config(String),
    #[error("the Machine API: {0}")]
    Api(#[from] apid::ApidError),
    #[error(
        "the node has a config but its API certificates did not appear within {0:?}: \
         see the secrets.ApiCertificatesController logs"
    )]
    NoCertificates(std::time::Duration),
}

/// What can go wrong while PID 1 brings the machine up.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(transparent)]
    Sequence(#[from] crate::sequencer::SequenceError),
    #[error("the Boot sequence ended without starting the node")]
    NodeMissing,
    #[error("creating {path}: {source}")]
    Directory {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mounting {what} at {target}: {source}")]
    Mount {
        what: String,
        target: PathBuf,
        #[source]
        source: basalt_sys::SysError,
    },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} line {line}: {reason}")]
    ModulesDep {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("kernel module {0} is not in modules.dep (is it in the image's module list?)")]
    UnknownModule(String),
    #[error("kernel modules depend on each other in a circle: {0}")]
    ModuleCycle(String),
    #[error("loading kernel module {path}: {source}")]
    Module {
        path: PathBuf,
        #[source]
        source: basalt_sys::SysError,
    },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the node: {0}")]
    Node(#[from] StartError),
}
