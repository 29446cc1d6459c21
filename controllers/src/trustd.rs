//! The client side of trustd, for the controllers of a node without the OS CA key: a
//! connection to trustd on the control-plane endpoint's host (or a control-plane
//! member), checked against the OS CA, and calls carrying the machine token.

use std::time::Duration;

use basalt_api::client::{ClientTls, Target};
use basalt_api::trustd::v1::trust_service_client::TrustServiceClient;
use basalt_resources::secrets::OsRootSpec;
use tonic::transport::Channel;

/// A call to trustd (connect, handshake and answer) that takes longer has failed.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(5);

/// What went wrong asking trustd.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TrustdError {
    #[error("the control-plane endpoint {endpoint:?}: {source}")]
    Endpoint {
        endpoint: String,
        #[source]
        source: basalt_api::client::ClientError,
    },
    #[error("trustd at {target}: {reason}")]
    Call { target: String, reason: String },
}

/// trustd on `host` (an endpoint URL, `host:port` or an address: only its host is used).
pub(crate) fn target(host: &str, port: u16) -> Result<Target, TrustdError> {
    let parsed = Target::parse(host, 0).map_err(|source| TrustdError::Endpoint {
        endpoint: host.to_string(),
        source,
    })?;
    Ok(Target {
        host: parsed.host,
        port,
    })
}

/// A channel to trustd at `target`, its certificate checked against the OS CA; it
/// connects when first used, and again after a failure.
pub(crate) fn channel(root: &OsRootSpec, target: &Target) -> Result<Channel, TrustdError> {
    let tls = ClientTls::ServerOnly {
        ca: root.ca.clone(),
    };
    basalt_api::client::channel(target, &tls, TIMEOUT).map_err(|e| TrustdError::Call {
        target: target.to_string(),
        reason: e.to_string(),
    })
}

/// Runs `call` over `channel` (to trustd at `target`) with the machine token, within
/// [`TIMEOUT`].
pub(crate) async fn call<T, R, F, Fut>(
    root: &OsRootSpec,
    target: &Target,
    channel: Channel,
    message: T,
    call: F,
) -> Result<R, TrustdError>
where
    F: FnOnce(TrustServiceClient<Channel>, tonic::Request<T>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<R>, tonic::Status>>,
{
    let failed = |reason: String| TrustdError::Call {
        target: target.to_string(),
        reason,
    };
    let mut request = tonic::Request::new(message);
    let token = root
        .token
        .parse()
        .map_err(|_| failed("the machine token is not valid metadata".into()))?;
    request
        .metadata_mut()
        .insert(basalt_api::TOKEN_HEADER, token);
    let attempt = call(TrustServiceClient::new(channel), request);
    match tokio::time::timeout(TIMEOUT, attempt).await {
        Ok(Ok(answer)) => Ok(answer.into_inner()),
        Ok(Err(status)) => Err(failed(format!("{:?}: {}", status.code(), status.message()))),
        Err(_) => Err(failed(format!("no answer in {TIMEOUT:?}"))),
    }
}
