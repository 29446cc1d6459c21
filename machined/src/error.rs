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
