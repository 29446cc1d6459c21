//! The layer every call passes first: who is calling, may they, are they within their
//! limits, is the call for this node or for others (forwarding), and an audit record for
//! every call that changes something.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use http::uri::PathAndQuery;
use tonic::body::Body;
use tonic::server::{Grpc, ServerStreamingService, UnaryService};
use tonic::{Request, Response, Status};
use tower::{Layer, Service};

use crate::authz::{rule_for, Caller, ROLES_HEADER};
use crate::forward::{Call, Forwarder, RawCodec};
use crate::limits::Guarded;
use crate::listener::Peer;
use crate::server::Shared;

/// Most nodes one call may name.
const MAX_NODES: usize = 64;

#[derive(Clone)]
pub(crate) struct GateLayer(pub Arc<Shared>);

impl<S> Layer<S> for GateLayer {
    type Service = Gate<S>;

    fn layer(&self, inner: S) -> Gate<S> {
        Gate {
            inner,
            shared: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Gate<S> {
    inner: S,
    shared: Arc<Shared>,
}

fn reply(status: Status) -> http::Response<Body> {
    status.into_http()
}

/// The nodes a call names, if any: `nodes: a,b,c`.
fn nodes_of(request: &http::Request<Body>) -> Result<Option<Vec<String>>, Status> {
    let Some(value) = request.headers().get(basalt_api::NODES_HEADER) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| Status::invalid_argument("the nodes metadata is not ASCII"))?;
    let mut nodes: Vec<String> = Vec::new();
    for node in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if !nodes.iter().any(|n| n == node) {
            nodes.push(node.to_string());
        }
    }
    if nodes.len() > MAX_NODES {
        return Err(Status::invalid_argument(format!(
            "a call may name at most {MAX_NODES} nodes, not {}",
            nodes.len()
        )));
    }
    Ok((!nodes.is_empty()).then_some(nodes))
}

impl<S> Service<http::Request<Body>> for Gate<S>
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

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is checked on the clone that serves the call.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        Box::pin(async move {
            let path = request.uri().path().to_string();
            let Some(peer) = request.extensions().get::<Arc<Peer>>().cloned() else {
                return Ok(reply(Status::internal(
                    "connection without a peer identity",
                )));
            };
            let forwarded_roles = request
                .headers()
                .get(ROLES_HEADER)
                .and_then(|v| v.to_str().ok());
            let caller = Caller::new(peer, forwarded_roles);
            let rule = rule_for(&path);
            if let Err(status) = caller.authorize(&path, rule, shared.in_maintenance()) {
                tracing::info!(target: "audit", who = %caller.who(), method = %path, result = ?status.code(), reason = status.message(), "denied");
                return Ok(reply(status));
            }
            // The node that forwards a call has held its client to the limits already;
            // counting it against the forwarding node would let one client's streams
            // crowd out everyone else who comes through that node.
            let permit = match caller.forwarded_by {
                Some(_) => None,
                None => match shared
                    .limiter
                    .admit(caller.peer.addr.ip(), &caller.peer.subject)
                {
                    Ok(p) => Some(p),
                    Err(status) => {
                        tracing::warn!(who = %caller.who(), method = %path, reason = status.message(), "call refused");
                        return Ok(reply(status));
                    }
                },
            };
            // A node forwarding to us has resolved the node list already.
            let nodes = if caller.forwarded_by.is_some() {
                Ok(None)
            } else {
                nodes_of(&request)
            };
            let response = match nodes {
                Err(status) => reply(status),
                Ok(Some(nodes)) => forward(&shared, &caller, &path, &nodes, request).await,
                Ok(None) => {
                    request.extensions_mut().insert(caller.clone());
                    match inner.call(request).await {
                        Ok(r) => r,
                        Err(never) => match never {},
                    }
                }
            };
            // An error before the handler produced anything (a malformed or oversized
            // message, a failed handler) comes back as a status in the headers.
            let result = match Status::from_header_map(response.headers()) {
                Some(status) if status.code() != tonic::Code::Ok => {
                    tracing::info!(who = %caller.who(), method = %path, code = ?status.code(), reason = %status.message(), "call failed");
                    status.code()
                }
                _ => tonic::Code::Ok,
            };
            if rule.is_some_and(|r| r.mutating) {
                shared.audit(&caller, &path, result);
            }
            Ok(response.map(|body| {
                Body::new(Guarded {
                    inner: body,
                    permit,
                })
            }))
        })
    }
}

async fn forward(
    shared: &Arc<Shared>,
    caller: &Caller,
    path: &str,
    nodes: &[String],
    request: http::Request<Body>,
) -> http::Response<Body> {
    let Some(forwarder) = shared.forwarder() else {
        return reply(Status::failed_precondition(
            "this node is in maintenance mode: it cannot reach other nodes",
        ));
    };
    let Some((_, streaming)) = basalt_api::METHODS.iter().find(|(p, _)| *p == path) else {
        return reply(Status::unimplemented(format!("{path}: no such method")));
    };
    let Ok(path) = PathAndQuery::try_from(path) else {
        return reply(Status::invalid_argument("malformed method path"));
    };
    let target = ForwardTo {
        forwarder,
        nodes: nodes.to_vec(),
        path,
        roles: caller.roles_header(),
    };
    let max = shared.limits.max_message_bytes;
    let mut grpc = Grpc::new(RawCodec).apply_max_message_size_config(Some(max), Some(max));
    if *streaming {
        grpc.server_streaming(target, request).await
    } else {
        grpc.unary(target, request).await
    }
}

#[derive(Clone)]
struct ForwardTo {
    forwarder: Arc<Forwarder>,
    nodes: Vec<String>,
    path: PathAndQuery,
    roles: String,
}

impl ForwardTo {
    fn call(&self, request: Request<Bytes>) -> Call {
        let (metadata, _, message) = request.into_parts();
        Call {
            path: self.path.clone(),
            metadata,
            roles: self.roles.clone(),
            message,
        }
    }
}

impl UnaryService<Bytes> for ForwardTo {
    type Response = Bytes;
    type Future = BoxFuture<'static, Result<Response<Bytes>, Status>>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let call = ForwardTo::call(self, request);
        let (forwarder, nodes) = (self.forwarder.clone(), self.nodes.clone());
        Box::pin(async move { Ok(Response::new(forwarder.unary(&nodes, call).await)) })
    }
}

impl ServerStreamingService<Bytes> for ForwardTo {
    type Response = Bytes;
    type ResponseStream = BoxStream<'static, Result<Bytes, Status>>;
    type Future = BoxFuture<'static, Result<Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let call = ForwardTo::call(self, request);
        let stream = self.forwarder.stream(&self.nodes, call);
        Box::pin(async move { Ok(Response::new(stream)) })
    }
}
