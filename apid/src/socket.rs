//! The node behind apid when apid runs in its own process: machined's Machine and
//! Resource services on a local unix socket (DESIGN §4). Calls pass through unchanged,
//! the verified caller in their metadata; only apid's uid can connect to the socket, so
//! only apid can set that metadata.

use std::path::PathBuf;

use hyper_util::rt::TokioIo;
use tonic::transport::{Endpoint, Uri};
use tower::util::BoxCloneSyncService;
use tower::ServiceExt as _;

use crate::Backend;

/// A backend that reaches machined at the unix socket `path`. It connects on the first
/// call and again after machined restarts; while machined does not answer, calls fail
/// with UNAVAILABLE.
pub fn backend(path: PathBuf) -> Backend {
    let connector = tower::service_fn(move |_: Uri| {
        let path = path.clone();
        async move {
            Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
        }
    });
    // The URI is required and unused: every connection goes to the socket.
    let channel =
        Endpoint::from_static("http://machined.sock").connect_with_connector_lazy(connector);
    BoxCloneSyncService::new(tower::service_fn(move |request| {
        let channel = channel.clone();
        async move {
            let answer = channel.oneshot(request).await.unwrap_or_else(|e| {
                tonic::Status::unavailable(format!("machined does not answer on its socket: {e}"))
                    .into_http()
            });
            Ok::<_, std::convert::Infallible>(answer)
        }
    }))
}
