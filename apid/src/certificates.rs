//! The node's API certificates, which apid serves: read from the node at start, and
//! followed as they change (renewed, or issued for a new CA or new names).

use std::sync::Arc;
use std::time::Duration;

use basalt_api::resource::v1 as rapi;
use basalt_api::resource::v1::resource_service_client::ResourceServiceClient;
use basalt_resource::ResourceSpec;
use basalt_resources::secrets::ApiCertificatesSpec;
use tokio_util::sync::CancellationToken;

use crate::caller::AuthorizedCaller;
use crate::identity::NodeIdentity;
use crate::shared::{Backend, Shared};
use crate::ApidError;

/// How long apid waits before it watches the node's certificates again after the watch
/// failed.
const REWATCH_DELAY: Duration = Duration::from_secs(1);

/// A client of the node's resource service over `backend`, calling as apid itself (also
/// what trustd, beside it, reads the node's CA and certificates with).
pub fn node_resources(
    backend: &Backend,
) -> ResourceServiceClient<
    tonic::service::interceptor::InterceptedService<
        Backend,
        impl tonic::service::Interceptor + Clone,
    >,
> {
    ResourceServiceClient::with_interceptor(backend.clone(), |mut request: tonic::Request<()>| {
        let mut headers = std::mem::take(request.metadata_mut()).into_headers();
        AuthorizedCaller::apid().write(&mut headers);
        *request.metadata_mut() = tonic::metadata::MetadataMap::from_headers(headers);
        Ok(request)
    })
}

fn certificates_request() -> (String, String) {
    (
        ApiCertificatesSpec::TYPE.to_string(),
        ApiCertificatesSpec::ID.to_string(),
    )
}

fn decode(resource: Option<basalt_resource::proto::Resource>) -> Option<ApiCertificatesSpec> {
    let resource = resource?;
    match serde_yaml_ng::from_str(&resource.spec) {
        Ok(spec) => Some(spec),
        Err(e) => {
            tracing::error!(error = %e, "unreadable API certificates");
            None
        }
    }
}

/// The node's API certificates now, if it has any.
pub(crate) async fn current_certificates(
    backend: &Backend,
) -> Result<Option<ApiCertificatesSpec>, ApidError> {
    let (r#type, id) = certificates_request();
    let request = rapi::GetRequest {
        namespace: String::new(),
        r#type,
        id,
    };
    match node_resources(backend).get(request).await {
        Ok(answer) => Ok(decode(
            answer
                .into_inner()
                .messages
                .into_iter()
                .next()
                .and_then(|m| m.resource),
        )),
        Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
        Err(status) => Err(ApidError::Node(status.message().to_string())),
    }
}

/// Serves the node's API certificates as they change: the first ones end maintenance
/// mode, later ones (renewed, or for a new CA or new names) are served to new
/// connections without a restart. Certificates that cannot be served are logged and the
/// ones before them kept.
pub(crate) async fn follow_certificates(
    shared: Arc<Shared>,
    mut served: Option<ApiCertificatesSpec>,
    cancel: CancellationToken,
) {
    loop {
        let (r#type, id) = certificates_request();
        let request = rapi::WatchRequest {
            r#type,
            id,
            ..Default::default()
        };
        let mut client = node_resources(&shared.backend);
        let watch = tokio::select! {
            _ = cancel.cancelled() => return,
            watch = client.watch(request) => watch,
        };
        let mut events = match watch {
            Ok(events) => events.into_inner(),
            Err(status) => {
                tracing::error!(error = %status.message(), "cannot watch the node's API certificates");
                tokio::time::sleep(REWATCH_DELAY).await;
                continue;
            }
        };
        loop {
            let event = tokio::select! {
                _ = cancel.cancelled() => return,
                event = events.message() => event,
            };
            let event = match event {
                Ok(Some(event)) => event,
                // The watch ended (fell behind, or the node went away): start over from
                // the current certificates.
                Ok(None) | Err(_) => break,
            };
            let created_or_updated = [rapi::EventType::Created, rapi::EventType::Updated]
                .iter()
                .any(|t| *t as i32 == event.event);
            if !created_or_updated {
                continue;
            }
            let Some(spec) = decode(event.resource) else {
                continue;
            };
            if served.as_ref() == Some(&spec) {
                continue;
            }
            match shared.configure(NodeIdentity::from_spec(&spec)) {
                Ok(()) => {
                    tracing::info!(not_after = %spec.not_after, "serving the node's API certificates");
                    served = Some(spec);
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot serve the new API certificates; keeping the current ones")
                }
            }
        }
        tokio::time::sleep(REWATCH_DELAY).await;
    }
}
