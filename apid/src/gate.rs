//! What every call passes: who is calling, may they, are they within their limits, is
//! the call for this node (handed to the node's backend with the verified caller) or for
//! others (forwarding), and an audit record for every call that changes something.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use http::uri::PathAndQuery;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::server::{Grpc, ServerStreamingService, UnaryService};
use tonic::{Request, Response, Status};
use tower::Service;

use crate::authz::{result_of, rule_for, Caller, ROLES_HEADER};
use crate::caller::AuthorizedCaller;
use crate::forward::{Call, Forwarder, RawCodec};
use crate::limits::{Guarded, OpenStream};
use crate::listener::Peer;
use crate::shared::Shared;

/// Most nodes one call may name.
const MAX_NODES: usize = 64;

/// How long the answer to the ApplyConfiguration that ends maintenance mode waits for apid
/// to serve the certificates the config brings, so that the client's next call, with a
/// client certificate, finds them.
const LEAVE_MAINTENANCE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

const APPLY_CONFIGURATION: &str = "/basalt.machine.v1.MachineService/ApplyConfiguration";

#[derive(Clone)]
pub(crate) struct Gate {
    shared: Arc<Shared>,
}

impl Gate {
    pub fn new(shared: Arc<Shared>) -> Self {
        Gate { shared }
    }
}

/// The gate under the name of each service it serves (tonic routes by service name).
#[derive(Clone)]
pub(crate) struct MachineRoute(pub Gate);
#[derive(Clone)]
pub(crate) struct ResourceRoute(pub Gate);

impl NamedService for MachineRoute {
    const NAME: &'static str = "basalt.machine.v1.MachineService";
}

impl NamedService for ResourceRoute {
    const NAME: &'static str = "basalt.resource.v1.ResourceService";
}

macro_rules! delegate_to_gate {
    ($route:ty) => {
        impl Service<http::Request<Body>> for $route {
            type Response = http::Response<Body>;
            type Error = Infallible;
            type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

            fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
                self.0.poll_ready(cx)
            }

            fn call(&mut self, request: http::Request<Body>) -> Self::Future {
                self.0.call(request)
            }
        }
    };
}
delegate_to_gate!(MachineRoute);
delegate_to_gate!(ResourceRoute);

fn reply(status: Status) -> http::Response<Body> {
    status.into_http()
}

/// How a node is told apart from another: its host (lowercase) and port as the forwarding
/// would reach them, so that `IP`, `IP:50000` and `IP:50000/` are one node; the text
/// itself for one that does not parse (forwarding reports it).
fn node_identity(node: &str) -> String {
    match basalt_api::client::Target::parse(node, basalt_api::DEFAULT_PORT) {
        Ok(target) => format!("{}:{}", target.host.to_ascii_lowercase(), target.port),
        Err(_) => node.to_string(),
    }
}

/// The nodes a call names, if any: `nodes: a,b,c`; each node once, however it is spelt
/// (the first spelling is the one answers are labelled with).
fn nodes_of(request: &http::Request<Body>) -> Result<Option<Vec<String>>, Status> {
    let Some(value) = request.headers().get(basalt_api::NODES_HEADER) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| Status::invalid_argument("the nodes metadata is not ASCII"))?;
    let mut nodes: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for node in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if seen.insert(node_identity(node)) {
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

impl Service<http::Request<Body>> for Gate {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is checked on the clone that serves the call.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
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
            let maintenance = shared.in_maintenance();
            if let Err(status) = caller.authorize(&path, rule, maintenance) {
                tracing::info!(target: "audit", who = %caller.who(), method = %path, result = ?status.code(), reason = status.message(), "denied");
                return Ok(reply(status));
            }
            // A node forwarding to us has resolved the node list already.
            let nodes = if caller.forwarded_by.is_some() {
                Ok(None)
            } else {
                nodes_of(&request)
            };
            // The node that forwards a call has held its client to the limits already;
            // counting it against the forwarding node would let one client's streams
            // crowd out everyone else who comes through that node. A call this node fans
            // out to N nodes takes N of its client's places in flight.
            let weight = match &nodes {
                Ok(Some(nodes)) => nodes.len(),
                _ => 1,
            };
            let permit = match caller.forwarded_by {
                Some(_) => None,
                None => {
                    match shared
                        .limiter
                        .admit(caller.peer.addr.ip(), &caller.peer.subject, weight)
                    {
                        Ok(p) => Some(p),
                        Err(status) => {
                            tracing::warn!(who = %caller.who(), method = %path, reason = status.message(), "call refused");
                            return Ok(reply(status));
                        }
                    }
                }
            };
            let response = match nodes {
                Err(status) => reply(status),
                Ok(Some(nodes)) => forward(&shared, &caller, &path, &nodes, request).await,
                Ok(None) => {
                    AuthorizedCaller::of(&caller).write(request.headers_mut());
                    let mut backend = shared.backend.clone();
                    match backend.call(request).await {
                        Ok(r) => r,
                        Err(never) => match never {},
                    }
                }
            };
            let result = result_of(&response);
            let streaming = basalt_api::METHODS
                .iter()
                .any(|(p, streaming)| *p == path && *streaming);
            let stream = (streaming && result == tonic::Code::Ok)
                .then(|| OpenStream::new(&shared.open_streams));
            if result != tonic::Code::Ok {
                let reason = Status::from_header_map(response.headers())
                    .map(|s| s.message().to_string())
                    .unwrap_or_default();
                tracing::info!(who = %caller.who(), method = %path, code = ?result, %reason, "call failed");
            }
            if rule.is_some_and(|r| r.mutating) {
                tracing::info!(target: "audit", who = %caller.who(), roles = %caller.roles_header(), method = %path, result = ?result, "call");
            }
            if maintenance
                && path == APPLY_CONFIGURATION
                && result == tonic::Code::Ok
                && response
                    .headers()
                    .contains_key(crate::CONFIG_APPLIED_HEADER)
            {
                // The node has its config; the client's next call comes with a client
                // certificate.
                if !shared.left_maintenance(LEAVE_MAINTENANCE_TIMEOUT).await {
                    tracing::warn!("a config was applied, but the node's API certificates did not come within {LEAVE_MAINTENANCE_TIMEOUT:?}");
                }
            }
            Ok(response.map(|body| {
                Body::new(Guarded {
                    inner: body,
                    permit,
                    stream,
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
    let nodes = match nodes
        .iter()
        .map(|n| shared.forward_targets.resolve(n, shared.peer_port))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(nodes) => nodes,
        Err(status) => return reply(status),
    };
    let target = ForwardTo {
        forwarder,
        nodes,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_node_are_one_node() {
        let same = [
            "10.0.0.2",
            "10.0.0.2:50000",
            "10.0.0.2:50000/",
            "10.0.0.2:50000//",
            "https://10.0.0.2:50000",
            " 10.0.0.2 ",
        ];
        for spelling in same {
            assert_eq!(node_identity(spelling), "10.0.0.2:50000", "{spelling:?}");
        }
        assert_eq!(node_identity("Node-A"), node_identity("node-a:50000"));
        assert_ne!(node_identity("10.0.0.2:50001"), node_identity("10.0.0.2"));
        assert_eq!(node_identity("[::1]:50000"), node_identity("::1"));
        assert_eq!(node_identity("a b"), "a b");
    }
}
