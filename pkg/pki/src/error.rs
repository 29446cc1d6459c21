use std::path::PathBuf;

use thiserror::Error;
use time::OffsetDateTime;

/// Errors of the PKI: reading and checking a secrets bundle, issuing and verifying
/// certificates.
///
/// Each variant names what it is about: a field path of the bundle (`certs.etcd.key`), or
/// the common name of a certificate. No variant ever carries key material: reasons about
/// private keys are fixed texts of this crate, never the message of a parser that might
/// quote its input.
#[derive(Debug, Error)]
pub enum PkiError {
    #[error("cannot decode the secrets bundle: {reason}")]
    Yaml { reason: String },

    #[error("cannot encode the secrets bundle: {reason}")]
    Encode { reason: String },

    #[error("{field}: {reason}")]
    InvalidField { field: String, reason: String },

    #[error("{field}: not a usable certificate: {reason}")]
    InvalidCertificate { field: String, reason: String },

    #[error("{field}: not a usable private key: {reason}")]
    InvalidKey { field: String, reason: &'static str },

    #[error("{field} does not belong to the certificate next to it (the public keys differ)")]
    KeyMismatch { field: String },

    #[error("certificate {subject:?} cannot be used as a certificate authority: {reason}")]
    NotACa {
        subject: String,
        reason: &'static str,
    },

    #[error("certificate {subject:?} expired at {not_after}")]
    Expired {
        subject: String,
        not_after: OffsetDateTime,
    },

    #[error("certificate {subject:?} is not valid before {not_before}")]
    NotYetValid {
        subject: String,
        not_before: OffsetDateTime,
    },

    #[error("certificate {subject:?} was issued by {issuer:?}, not by the CA {ca:?}")]
    WrongIssuer {
        subject: String,
        issuer: String,
        ca: String,
    },

    #[error(
        "the signature of certificate {subject:?} does not verify with the key of the CA {ca:?}"
    )]
    BadSignature { subject: String, ca: String },

    #[error("{what}: a {algorithm} key is not supported; use Ed25519 or ECDSA P-256")]
    UnsupportedKey {
        what: String,
        algorithm: &'static str,
    },

    #[error("invalid subject alternative name {value:?}: {reason}")]
    InvalidSan { value: String, reason: String },

    #[error("invalid common name {value:?}: {reason}")]
    InvalidCommonName { value: String, reason: &'static str },

    #[error("certificate {subject:?}: invalid validity: {reason}")]
    InvalidValidity { subject: String, reason: String },

    #[error("unknown role {0:?}; the roles are os:admin, os:operator, os:reader, os:etcd:backup")]
    UnknownRole(String),

    #[error("cannot generate {what}: {reason}")]
    Generate { what: String, reason: String },

    #[error("{what} is not a valid certificate signing request: {reason}")]
    InvalidRequest { what: &'static str, reason: String },

    #[error("the system random number generator failed")]
    Random,

    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: Box<PkiError>,
    },

    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}
