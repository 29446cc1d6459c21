//! The certificates apid serves and forwards with: the node's API certificates (issued by
//! the node's secrets controller, or on workers by the control plane) or, in maintenance
//! mode, a self-signed one. apid holds no CA key.

use basalt_api::client::{fingerprint, fingerprint_hex, ClientTls};
use basalt_api::tls;
use basalt_pki::CertAndKey;
use basalt_resources::secrets::ApiCertificatesSpec;

use crate::ApidError;

/// The node's place in the cluster PKI, as the `ApiCertificates` resource holds it.
#[derive(Clone)]
pub struct NodeIdentity {
    /// The OS CA certificate: clients and peer nodes must chain to it.
    pub ca: String,
    /// What apid serves with.
    pub server: CertAndKey,
    /// What apid presents to other nodes when it forwards a call (`os:impersonator`).
    pub peer: CertAndKey,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity").finish_non_exhaustive()
    }
}

impl NodeIdentity {
    pub fn from_spec(spec: &ApiCertificatesSpec) -> Self {
        NodeIdentity {
            ca: spec.ca.clone(),
            server: CertAndKey {
                crt: spec.server_crt.clone(),
                key: spec.server_key.clone(),
            },
            peer: CertAndKey {
                crt: spec.peer_crt.clone(),
                key: spec.peer_key.clone(),
            },
        }
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
        // P-256 like the cluster's server certificates: BoringSSL clients (grpcio) cannot
        // verify Ed25519 handshake signatures.
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
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
