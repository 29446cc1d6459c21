//! The Machine and Resource services, served by the node for the calls apid authorized
//! (the caller in each call's metadata). [`backend`] is what apid hands calls to.

mod apply;
mod machine;
mod resources;
pub(crate) mod socket;
pub(crate) mod status;

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use apid::{AuthorizedCaller, Backend, Limits};
use basalt_api::common::v1::Metadata as NodeMetadata;
use basalt_api::machine::v1::machine_service_server::MachineServiceServer;
use basalt_api::resource::v1::resource_service_server::ResourceServiceServer;
use basalt_controller_runtime::Dependency;
use basalt_machine_config::Mode;
use basalt_resource::{Registry, ResourceKey};
use basalt_resources::secrets::ApiCertificatesSpec;
use basalt_state::{State, StateError};
use futures::future::BoxFuture;
use tonic::body::Body;
use tonic::{Request, Status};
use tower::util::BoxCloneSyncService;
use tower::Service;

pub use apply::store_config;
pub(crate) use apply::{check, store, OWNER as CONFIG_OWNER};
pub(crate) use status::state_status;

use crate::events::EventLog;
use crate::parts::NodeHandles;

/// What the handlers share.
pub(crate) struct Shared {
    pub state: State,
    pub registry: Arc<Registry>,
    pub node: NodeHandles,
    pub events: EventLog,
    pub validation_mode: Mode,
    /// The controller graph, as registered.
    pub dependencies: Vec<Dependency>,
    /// One configuration change at a time.
    pub apply_lock: tokio::sync::Mutex<apply::Pending>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Shared {
    pub fn new(
        state: State,
        registry: Arc<Registry>,
        node: NodeHandles,
        events: EventLog,
        validation_mode: Mode,
        dependencies: Vec<Dependency>,
    ) -> Self {
        Shared {
            state,
            registry,
            node,
            events,
            validation_mode,
            dependencies,
            apply_lock: tokio::sync::Mutex::new(Default::default()),
        }
    }

    /// A node without API certificates serves maintenance mode.
    pub async fn in_maintenance(&self) -> Result<bool, Status> {
        let key = ResourceKey::of::<ApiCertificatesSpec>(ApiCertificatesSpec::ID);
        match self.state.get(&key).await {
            Ok(_) => Ok(false),
            Err(StateError::NotFound(_)) => Ok(true),
            Err(e) => Err(state_status(e)),
        }
    }
}

/// The caller apid verified.
pub(crate) fn caller<T>(request: &Request<T>) -> Result<AuthorizedCaller, Status> {
    AuthorizedCaller::read(request.metadata())
}

/// This node's metadata for a response (forwarding labels it with the node's name).
pub(crate) fn here() -> Option<NodeMetadata> {
    Some(NodeMetadata::default())
}

/// The node's services as apid's backend, with an audit event for every call that
/// changes something.
pub(crate) fn backend(shared: Arc<Shared>, limits: &Limits) -> Backend {
    let max = limits.max_message_bytes;
    let machine = MachineServiceServer::new(machine::MachineApi::new(shared.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let resources = ResourceServiceServer::new(resources::ResourceApi::new(shared.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let routes = tonic::service::Routes::new(machine).add_service(resources);
    BoxCloneSyncService::new(Audited {
        inner: routes,
        events: shared.events.clone(),
    })
}

/// The longest error message a response carries. An error may quote the caller's input
/// (a config's unknown kind, say), and a header of a megabyte breaks the connection for
/// every call on it: HTTP/2 clients refuse such headers.
const MAX_ERROR_MESSAGE: usize = 1024;

/// Cuts an error message in `headers` (a response's, or a stream's trailers) to
/// [`MAX_ERROR_MESSAGE`] bytes.
fn bound_error_message(headers: &mut http::HeaderMap) {
    let Some(status) = Status::from_header_map(headers) else {
        return;
    };
    let message = status.message();
    if message.len() <= MAX_ERROR_MESSAGE {
        return;
    }
    let mut cut = MAX_ERROR_MESSAGE;
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    let bounded = format!("{}… ({} bytes more)", &message[..cut], message.len() - cut);
    if let Err(e) = Status::new(status.code(), bounded).add_header(headers) {
        tracing::warn!(error = %e, "cannot shorten an error message");
    }
}

/// The response with its error message bounded, in the headers and in the trailers
/// that end a stream.
fn bound_error_messages(mut response: http::Response<Body>) -> http::Response<Body> {
    use http_body_util::BodyExt;
    bound_error_message(response.headers_mut());
    response.map(|body| {
        Body::new(body.map_frame(|frame| match frame.into_trailers() {
            Ok(mut trailers) => {
                bound_error_message(&mut trailers);
                http_body::Frame::trailers(trailers)
            }
            Err(frame) => frame,
        }))
    })
}

/// Publishes an `audit` event for every call that changes the node, with its result.
#[derive(Clone)]
struct Audited<S> {
    inner: S,
    events: EventLog,
}

impl<S> Service<http::Request<Body>> for Audited<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let method = request.uri().path().to_string();
        let who = request
            .headers()
            .get(apid::caller::WHO)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("unknown")
            .to_string();
        let response = self.inner.call(request);
        let events = self.events.clone();
        Box::pin(async move {
            let response = bound_error_messages(response.await?);
            if apid::authz::rule_for(&method).is_some_and(|r| r.mutating) {
                let result = format!("{:?}", apid::authz::result_of(&response));
                events.publish(
                    "audit",
                    format!("{method} by {who}: {result}"),
                    &[("who", who), ("method", method), ("result", result)],
                );
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A stream that ends with an error of 1 MiB in its trailers (as a header of that
    /// size, it would break the client's connection): the client gets 1 KiB of it.
    #[tokio::test]
    async fn an_error_message_in_a_streams_trailers_is_cut_too() {
        let mut trailers = http::HeaderMap::new();
        let long = "é".repeat(512 << 10);
        Status::aborted(long).add_header(&mut trailers).unwrap();
        let frames = futures::stream::iter([
            Ok::<_, Status>(http_body::Frame::data(bytes::Bytes::from_static(b"data"))),
            Ok(http_body::Frame::trailers(trailers)),
        ]);
        let body = Body::new(http_body_util::StreamBody::new(frames));
        let response = bound_error_messages(http::Response::new(body));
        let collected = response.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap();
        let status = Status::from_header_map(&trailers).unwrap();
        assert_eq!(status.code(), tonic::Code::Aborted);
        assert!(
            status.message().len() <= MAX_ERROR_MESSAGE + 32,
            "{}",
            status.message().len()
        );
        assert!(
            status.message().ends_with("(1047552 bytes more)"),
            "{}",
            &status.message()[1000..]
        );
        assert_eq!(collected.to_bytes(), "data");
    }
}
