//! The node's services on a local unix socket, for apid in its own process (DESIGN §4):
//! the same backend the in-process edge calls, served over HTTP/2. The socket file is
//! apid's alone (its uid, mode 0600), and every connection's peer is checked against
//! that uid too, so the caller metadata on each call can only have come from apid.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use apid::Backend;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::UnixListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::StartError;

/// Binds the socket at `path` for the process running as `peer_uid` (replacing a stale
/// one a previous run left).
pub(crate) fn bind(path: &Path, peer_uid: u32) -> Result<UnixListener, StartError> {
    let io = |source| StartError::Socket {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    std::os::unix::fs::chown(path, Some(peer_uid), None).map_err(io)?;
    Ok(listener)
}

/// Serves `backend` to connections from `peer_uid` until `stop`.
pub(crate) async fn serve(
    listener: UnixListener,
    backend: Backend,
    peer_uid: u32,
    stop: CancellationToken,
) {
    let mut connections = JoinSet::new();
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting on the node's socket");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        match stream.peer_cred() {
            Ok(cred) if cred.uid() == peer_uid => {}
            other => {
                tracing::warn!(peer = ?other.map(|c| c.uid()), "refused a connection to the node's socket: not apid's uid");
                continue;
            }
        }
        let backend = backend.clone();
        let service = tower::service_fn(move |request: http::Request<hyper::body::Incoming>| {
            backend.clone().oneshot(request.map(tonic::body::Body::new))
        });
        connections.spawn(async move {
            let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "a connection on the node's socket ended");
            }
        });
        while connections.try_join_next().is_some() {}
    }
    connections.shutdown().await;
}
