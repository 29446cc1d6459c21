//! Secrets domain: the key material the node issues and holds.

mod api_certificates;

pub use api_certificates::{ApiCertificatesController, DEFAULT_API_CERT_VALIDITY};
