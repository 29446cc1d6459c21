//! The certificates apid serves and forwards with: the cluster's (from the OS CA in the
//! machine config) or, in maintenance mode, a self-signed one.

use std::time::Duration;

use basalt_api::client::{fingerprint, fingerprint_hex, ClientTls};
use basalt_api::tls;
use basalt_machine_config::Config;
use basalt_pki::{issue_client_cert, issue_server_cert, CertAndKey, Role};

use crate::ApidError;

/// How long node certificates live; they are re-issued from the CA at every start.
const NODE_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// The node's place in the cluster PKI.
#[derive(Clone)]
pub struct NodeIdentity {
    /// The OS CA certificate: clients and peer nodes must chain to it.
    pub ca: String,
    /// What apid serves with.
    pub server: CertAndKey,
    /// What apid presents to other nodes when it forwards a call (`os:impersonator`).
    pub peer: CertAndKey,
    /// The OS CA with its key, on control-plane nodes: for issuing client configs.
    pub ca_with_key: Option<CertAndKey>,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("issuer", &self.ca_with_key.is_some())
            .finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// Issues the node's certificates from the OS CA in `config`. `sans` are the names and
    /// addresses the node is reached by, besides the config's `certSANs` and hostname.
    ///
    /// Needs the CA key, which only control-plane configs carry; a worker will get its
    /// certificates from the control plane (trustd), which does not exist yet.
    pub fn from_config(config: &Config, sans: &[String]) -> Result<Self, ApidError> {
        let machine = config
            .machine
            .as_ref()
            .ok_or_else(|| ApidError::Identity("the config has no MachineConfig".into()))?;
        let ca = machine
            .ca
            .as_ref()
            .ok_or_else(|| ApidError::Identity("machine.ca is missing".into()))?;
        if ca.key.is_empty() {
            return Err(ApidError::Identity(
                "machine.ca has no key: worker nodes need the control plane to issue their \
                 API certificate (trustd), which is not built yet"
                    .into(),
            ));
        }
        let ca = CertAndKey {
            crt: ca.crt.clone(),
            key: ca.key.expose().to_string(),
        };
        let name = machine.hostname.clone().unwrap_or_else(|| "basalt".into());
        let mut all_sans: Vec<String> = sans.to_vec();
        all_sans.extend(machine.cert_sans.iter().cloned());
        all_sans.push(name.clone());
        all_sans.sort();
        all_sans.dedup();
        Self::issue(&ca, &name, &all_sans)
    }

    /// Issues server and peer certificates for a node named `name` from `ca`.
    pub fn issue(ca: &CertAndKey, name: &str, sans: &[String]) -> Result<Self, ApidError> {
        let server = issue_server_cert(ca, name, sans, NODE_CERT_VALIDITY)?;
        let peer = issue_client_cert(ca, name, &[Role::Impersonator], NODE_CERT_VALIDITY)?;
        Ok(NodeIdentity {
            ca: ca.crt.clone(),
            server,
            peer,
            ca_with_key: Some(ca.clone()),
        })
    }

    /// How this node authenticates to other nodes.
    pub fn peer_tls(&self) -> ClientTls {
        ClientTls::Mutual {
            ca: self.ca.clone(),
            crt: self.peer.crt.clone(),
            key: self.peer.key.clone(),
        }
    }
}

/// The self-signed certificate of maintenance mode, and its SHA-256 fingerprint (which
/// the node prints, so that a client can pin it).
#[derive(Clone)]
pub struct MaintenanceIdentity {
    pub cert: CertAndKey,
    pub fingerprint: [u8; 32],
}

impl std::fmt::Debug for MaintenanceIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MaintenanceIdentity")
            .field("fingerprint", &fingerprint_hex(&self.fingerprint))
            .finish()
    }
}

impl MaintenanceIdentity {
    pub fn generate(sans: &[String]) -> Result<Self, ApidError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .map_err(|e| ApidError::Identity(format!("maintenance key: {e}")))?;
        let mut params = rcgen::CertificateParams::new(sans.to_vec())
            .map_err(|e| ApidError::Identity(format!("maintenance certificate names: {e}")))?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "basalt maintenance");
        let cert = params
            .self_signed(&key)
            .map_err(|e| ApidError::Identity(format!("maintenance certificate: {e}")))?;
        let der = tls::certs_from_pem("maintenance certificate", &cert.pem())?;
        let fingerprint = der.first().map(|d| fingerprint(d)).unwrap_or_default();
        Ok(MaintenanceIdentity {
            cert: CertAndKey {
                crt: cert.pem(),
                key: key.serialize_pem(),
            },
            fingerprint,
        })
    }

    pub fn fingerprint_hex(&self) -> String {
        fingerprint_hex(&self.fingerprint)
    }
}
