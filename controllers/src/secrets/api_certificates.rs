use std::time::Duration;

use async_trait::async_trait;
use basalt_api::trustd::v1::CertificateRequest;
use basalt_controller_runtime::{Action, Controller, ControllerError, Input, Output, Runtime};
use basalt_pki::{issue_node_certs, request_node_certs, CertAndKey};

use crate::trustd::{self, TrustdError};
use basalt_resources::k8s::ControlPlaneEndpointSpec;
use basalt_resources::network::{AddressSpecSpec, HostnameSpec};
use basalt_resources::secrets::{ApiCertificatesSpec, OsRootSpec};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// How long the node's API certificates live unless told otherwise; they are renewed at
/// half their life.
pub const DEFAULT_API_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// The node's name when it has no hostname yet.
const UNNAMED: &str = "basalt";

/// After a failed call to trustd the next waits this long, doubling up to the maximum.
const TRUSTD_RETRY: Duration = Duration::from_millis(500);
const TRUSTD_RETRY_MAX: Duration = Duration::from_secs(30);

/// Issues the node's Machine API certificates (`ApiCertificates/api`) from the OS CA:
/// a server certificate for the node's hostname, the config's `certSANs`, the addresses
/// it is given (`AddressSpec`s) and the names and addresses the node process is reached
/// by, and the `os:impersonator` client
/// certificate apid forwards calls with. They are issued again when the CA or the names
/// change, and renewed at half their life. Without the CA key (worker nodes) the node
/// makes its keys and asks the control plane's trustd (at the control-plane endpoint's
/// host) to sign them, presenting the machine token; it renews them the same way.
#[derive(Debug, Clone)]
pub struct ApiCertificatesController {
    sans: Vec<String>,
    validity: Duration,
    trustd_port: u16,
    /// How long to wait after a failed call to trustd.
    retry: Duration,
}

impl ApiCertificatesController {
    /// `sans`: the names and addresses the node is reached by besides its hostname and the
    /// config's `certSANs`; `trustd_port`: where workers find trustd.
    pub fn new(sans: Vec<String>, validity: Duration, trustd_port: u16) -> Self {
        ApiCertificatesController {
            sans,
            validity,
            trustd_port,
            retry: TRUSTD_RETRY,
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum ApiCertificatesError {
    #[error("issuing the API certificates from the OS CA: {0}")]
    Issue(#[from] basalt_pki::PkiError),
    #[error("formatting the certificate's expiry: {0}")]
    Time(#[from] time::error::Format),
    #[error(transparent)]
    Trustd(#[from] TrustdError),
    #[error("trustd at {target}: {reason}")]
    Answer { target: String, reason: String },
}

#[async_trait]
impl Controller for ApiCertificatesController {
    basalt_controller_runtime::declare! {
        name: "secrets.ApiCertificatesController",
        inputs: [
            Input::weak::<OsRootSpec>().with_id(OsRootSpec::ID),
            Input::weak::<HostnameSpec>().with_id(HostnameSpec::ID),
            Input::weak::<ControlPlaneEndpointSpec>().with_id(ControlPlaneEndpointSpec::ID),
            // The node is reached at the addresses it is given (ip=, the config).
            Input::weak::<AddressSpecSpec>(),
        ],
        outputs: [
            Output::exclusive::<ApiCertificatesSpec>(),
        ],
    }

    async fn reconcile(&mut self, rt: &mut Runtime) -> Result<Action, ControllerError> {
        let Some(root) = rt.get::<OsRootSpec>(OsRootSpec::ID).await? else {
            return Ok(Action::Done);
        };
        let hostname = rt
            .get::<HostnameSpec>(HostnameSpec::ID)
            .await?
            .map(|h| h.spec);
        let name = hostname
            .as_ref()
            .map_or_else(|| UNNAMED.to_string(), |h| h.fqdn());
        let mut sans = self.sans.clone();
        sans.extend(root.spec.cert_sans.iter().cloned());
        sans.push(name.clone());
        if let Some(h) = &hostname {
            sans.push(h.hostname.clone());
        }
        for address in rt.list::<AddressSpecSpec>().await? {
            let ip = address.spec.address.split('/').next().unwrap_or_default();
            if address.spec.link != "lo" && !ip.is_empty() {
                sans.push(ip.to_string());
            }
        }
        sans.sort();
        sans.dedup();

        let now = OffsetDateTime::now_utc();
        let renew_at = |not_after: OffsetDateTime| not_after - self.validity / 2;
        let current = rt
            .get::<ApiCertificatesSpec>(ApiCertificatesSpec::ID)
            .await?
            .map(|r| r.spec);
        let from_trustd = root.spec.ca_key.is_empty();
        let keep = current.filter(|c| {
            c.ca == root.spec.ca
                && c.sans == sans
                && c.issuer.starts_with("trustd") == from_trustd
                && OffsetDateTime::parse(&c.not_after, &Rfc3339).is_ok_and(|t| renew_at(t) > now)
        });
        let spec = match keep {
            Some(current) => current,
            None if from_trustd => {
                let endpoint = rt
                    .get::<ControlPlaneEndpointSpec>(ControlPlaneEndpointSpec::ID)
                    .await?
                    .map(|r| r.spec.endpoint)
                    .unwrap_or_default();
                match self.ask_trustd(&root.spec, &endpoint, &name, &sans).await {
                    Ok(spec) => {
                        self.retry = TRUSTD_RETRY;
                        spec
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?self.retry, "no API certificates from trustd yet");
                        let wait = self.retry;
                        self.retry = (self.retry * 2).min(TRUSTD_RETRY_MAX);
                        return Ok(Action::RequeueAfter(wait));
                    }
                }
            }
            None => {
                let ca = CertAndKey {
                    crt: root.spec.ca.clone(),
                    key: root.spec.ca_key.clone(),
                };
                let certs = issue_node_certs(&ca, &name, &sans, self.validity)
                    .map_err(|e| ControllerError::other(ApiCertificatesError::from(e)))?;
                tracing::info!(%name, not_after = %certs.not_after, "issued the API certificates");
                ApiCertificatesSpec {
                    ca: root.spec.ca.clone(),
                    server_crt: certs.server.crt,
                    server_key: certs.server.key,
                    peer_crt: certs.peer.crt,
                    peer_key: certs.peer.key,
                    sans,
                    not_after: certs
                        .not_after
                        .format(&Rfc3339)
                        .map_err(|e| ControllerError::other(ApiCertificatesError::from(e)))?,
                    issuer: "self".into(),
                }
            }
        };
        let renewal = OffsetDateTime::parse(&spec.not_after, &Rfc3339)
            .map(|t| renew_at(t) - now)
            .ok()
            .and_then(|d| Duration::try_from(d).ok())
            .unwrap_or(Duration::ZERO);
        rt.put_spec(ApiCertificatesSpec::ID, spec).await?;
        // A floor, so that a certificate that cannot outlive the CA does not spin.
        Ok(Action::RequeueAfter(renewal.max(Duration::from_secs(1))))
    }
}

impl ApiCertificatesController {
    /// Makes the node's keys and has trustd sign them: over TLS that checks trustd's
    /// certificate against the OS CA, with the machine token. What comes back is checked
    /// against the CA before it is used.
    async fn ask_trustd(
        &self,
        root: &OsRootSpec,
        endpoint: &str,
        name: &str,
        sans: &[String],
    ) -> Result<ApiCertificatesSpec, ApiCertificatesError> {
        let target = trustd::target(endpoint, self.trustd_port)?;
        let (request, keys) = request_node_certs(name, sans)?;
        let message = CertificateRequest {
            server_csr: request.server_csr,
            peer_csr: request.peer_csr,
        };
        let channel = trustd::channel(root, &target)?;
        let answer = trustd::call(
            root,
            &target,
            channel,
            message,
            |mut client, request| async move { client.certificate(request).await },
        )
        .await?;
        let failed = |reason: String| ApiCertificatesError::Answer {
            target: target.to_string(),
            reason,
        };
        let now = OffsetDateTime::now_utc();
        let server = basalt_pki::verify(&answer.server_crt, &root.ca, now)
            .map_err(|e| failed(format!("its server certificate: {e}")))?;
        basalt_pki::verify(&answer.peer_crt, &root.ca, now)
            .map_err(|e| failed(format!("its peer certificate: {e}")))?;
        tracing::info!(%name, trustd = %target, not_after = %server.not_after, "API certificates from trustd");
        Ok(ApiCertificatesSpec {
            ca: root.ca.clone(),
            server_crt: answer.server_crt,
            server_key: keys.server,
            peer_crt: answer.peer_crt,
            peer_key: keys.peer,
            sans: sans.to_vec(),
            not_after: server.not_after.format(&Rfc3339)?,
            issuer: format!("trustd {target}"),
        })
    }
}
