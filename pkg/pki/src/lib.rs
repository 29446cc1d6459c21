//! The cluster's PKI: the secrets bundle `osctl gen secrets` writes, its certificate
//! authorities, issuing client and server certificates from them, and checking
//! certificates the way the Machine API server does.
//!
//! - Machine API (apid) roles travel in a client certificate's Organization values
//!   ([`Role`]), one value per role, so authorization needs nothing but the certificate.
//! - Keys are Ed25519 under the OS CA and ECDSA P-256 under the Kubernetes-side CAs,
//!   which is what the Kubernetes components accept.
//! - Nothing here prints key material: [`CertAndKey`], [`KeyPem`], [`ClusterSecrets`]
//!   and [`BootstrapToken`] redact it in Debug, and errors describe keys in fixed words.

mod bundle;
mod error;
mod file;
mod inspect;
mod issue;
mod keys;
mod role;

pub use bundle::{BootstrapToken, BundleCerts, ClusterSecrets, SecretsBundle, TrustdInfo};
pub use error::PkiError;
pub use file::write_private_file;
pub use inspect::{inspect, roles_of, verify, CertInfo};
pub use issue::{
    issue_client_cert, issue_node_certs, issue_server_cert, request_node_certs, sign_node_request,
    NodeCertRequest, NodeCertificates, NodeKeys, SignedNodeCerts, CA_VALIDITY,
    CLOCK_SKEW_ALLOWANCE,
};
pub use keys::{check_ca_certificate, CertAndKey, KeyPem};
pub use role::Role;

/// `N` bytes from the operating system's CSPRNG.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], PkiError> {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PkiError::Random)?;
    Ok(bytes)
}
