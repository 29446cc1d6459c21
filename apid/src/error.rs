use std::net::SocketAddr;

use basalt_api::client::ClientError;
use basalt_api::tls::TlsError;

#[derive(Debug, thiserror::Error)]
pub enum ApidError {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("node identity: {0}")]
    Identity(String),
    #[error(transparent)]
    Pki(#[from] basalt_pki::PkiError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the node: {0}")]
    Node(String),
    #[error("the server task failed: {0}")]
    Task(String),
    #[error("serving: {0}")]
    Serve(#[from] tonic::transport::Error),
}
