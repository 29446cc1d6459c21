use std::time::Duration;

use async_trait::async_trait;
use basalt_controller_runtime::{Action, Controller, ControllerError, Input, Output, Runtime};
use basalt_pki::{issue_node_certs, CertAndKey};
use basalt_resources::network::HostnameSpec;
use basalt_resources::secrets::{ApiCertificatesSpec, OsRootSpec};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// How long the node's API certificates live unless told otherwise; they are renewed at
/// half their life.
pub const DEFAULT_API_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// The node's name when it has no hostname yet.
const UNNAMED: &str = "basalt";

/// Issues the node's Machine API certificates (`ApiCertificates/api`) from the OS CA:
/// a server certificate for the node's hostname, the config's `certSANs` and the names
/// and addresses the node process is reached by, and the `os:impersonator` client
/// certificate apid forwards calls with. They are issued again when the CA or the names
/// change, and renewed at half their life. Without the CA key (worker nodes) there are
/// none: the control plane will issue them (trustd).
#[derive(Debug, Clone)]
pub struct ApiCertificatesController {
    sans: Vec<String>,
    validity: Duration,
}

impl ApiCertificatesController {
    /// `sans`: the names and addresses the node is reached by besides its hostname and the
    /// config's `certSANs`.
    pub fn new(sans: Vec<String>, validity: Duration) -> Self {
        ApiCertificatesController { sans, validity }
    }
}

#[derive(Debug, thiserror::Error)]
enum ApiCertificatesError {
    #[error("issuing the API certificates from the OS CA: {0}")]
    Issue(#[from] basalt_pki::PkiError),
    #[error("formatting the certificate's expiry: {0}")]
    Time(#[from] time::error::Format),
}

#[async_trait]
impl Controller for ApiCertificatesController {
    basalt_controller_runtime::declare! {
        name: "secrets.ApiCertificatesController",
        inputs: [
            Input::weak::<OsRootSpec>().with_id(OsRootSpec::ID),
            Input::weak::<HostnameSpec>().with_id(HostnameSpec::ID),
        ],
        outputs: [
            Output::exclusive::<ApiCertificatesSpec>(),
        ],
    }

    async fn reconcile(&mut self, rt: &mut Runtime) -> Result<Action, ControllerError> {
        let Some(root) = rt.get::<OsRootSpec>(OsRootSpec::ID).await? else {
            return Ok(Action::Done);
        };
        if root.spec.ca_key.is_empty() {
            tracing::info!(
                "no OS CA key in the config: the API certificates come from the control plane"
            );
            return Ok(Action::Done);
        }
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
        sans.sort();
        sans.dedup();

        let now = OffsetDateTime::now_utc();
        let renew_at = |not_after: OffsetDateTime| not_after - self.validity / 2;
        let current = rt
            .get::<ApiCertificatesSpec>(ApiCertificatesSpec::ID)
            .await?
            .map(|r| r.spec);
        let keep = current.filter(|c| {
            c.ca == root.spec.ca
                && c.sans == sans
                && OffsetDateTime::parse(&c.not_after, &Rfc3339).is_ok_and(|t| renew_at(t) > now)
        });
        let spec = match keep {
            Some(current) => current,
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
