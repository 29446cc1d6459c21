//! Reading and checking certificates with x509-parser.

use std::net::IpAddr;

use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::keys::{certificate_der, parse_certificate};
use crate::{PkiError, Role};

/// What the rest of the system needs to know about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The first Common Name of the subject, or "" when it has none.
    pub subject_cn: String,
    /// Every Organization value of the subject, in order; roles are carried here.
    pub organizations: Vec<String>,
    /// The first Common Name of the issuer, or "" when it has none.
    pub issuer_cn: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// basicConstraints CA=true.
    pub is_ca: bool,
    pub dns_sans: Vec<String>,
    pub ip_sans: Vec<IpAddr>,
    /// Extended key usage serverAuth.
    pub server_auth: bool,
    /// Extended key usage clientAuth.
    pub client_auth: bool,
}

/// Reads one PEM certificate.
pub fn inspect(crt_pem: &str) -> Result<CertInfo, PkiError> {
    let der = certificate_der(crt_pem, "certificate")?;
    let cert = parse_certificate(&der, "certificate")?;
    info(&cert)
}

/// Checks that `crt_pem` was issued by the CA `ca_pem` and is valid at `now`, and returns
/// what it says.
///
/// Checked in order: the CA is a CA (basicConstraints CA=true, and keyCertSign when it
/// has a keyUsage), the certificate's issuer is the CA's subject, the signature verifies
/// with the CA's public key, and both the CA and the certificate are valid at `now`.
pub fn verify(crt_pem: &str, ca_pem: &str, now: OffsetDateTime) -> Result<CertInfo, PkiError> {
    let der = certificate_der(crt_pem, "certificate")?;
    let cert = parse_certificate(&der, "certificate")?;
    let ca_der = certificate_der(ca_pem, "CA certificate")?;
    let ca = parse_certificate(&ca_der, "CA certificate")?;
    let subject = display_name(&cert);
    let ca_name = display_name(&ca);

    if let Some(reason) = ca_problem(&ca) {
        return Err(PkiError::NotACa {
            subject: ca_name,
            reason,
        });
    }
    // Names compare as encoded: CAs made here copy the encoding into what they issue,
    // and RFC 5280's name matching beyond that is not worth its ambiguity.
    if cert.issuer().as_raw() != ca.subject().as_raw() {
        return Err(PkiError::WrongIssuer {
            subject,
            issuer: cert.issuer().to_string(),
            ca: ca.subject().to_string(),
        });
    }
    if cert.verify_signature(Some(ca.public_key())).is_err() {
        return Err(PkiError::BadSignature {
            subject,
            ca: ca_name,
        });
    }
    check_validity(&ca, &ca_name, now)?;
    check_validity(&cert, &subject, now)?;
    info(&cert)
}

/// The roles a certificate carries; Organization values that are not roles are ignored.
pub fn roles_of(info: &CertInfo) -> Vec<Role> {
    let mut roles = Vec::new();
    for role in info.organizations.iter().filter_map(|o| o.parse().ok()) {
        if !roles.contains(&role) {
            roles.push(role);
        }
    }
    roles
}

fn check_validity(
    cert: &X509Certificate<'_>,
    name: &str,
    now: OffsetDateTime,
) -> Result<(), PkiError> {
    let not_before = cert.validity().not_before.to_datetime();
    let not_after = cert.validity().not_after.to_datetime();
    if now < not_before {
        return Err(PkiError::NotYetValid {
            subject: name.to_owned(),
            not_before,
        });
    }
    if now > not_after {
        return Err(PkiError::Expired {
            subject: name.to_owned(),
            not_after,
        });
    }
    Ok(())
}

/// Why `cert` may not issue certificates, if it may not.
pub(crate) fn ca_problem(cert: &X509Certificate<'_>) -> Option<&'static str> {
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => {}
        Ok(_) => return Some("it lacks basicConstraints CA=true"),
        Err(_) => return Some("its basicConstraints extension is malformed or repeated"),
    }
    match cert.key_usage() {
        Ok(None) => None,
        Ok(Some(ku)) if ku.value.key_cert_sign() => None,
        Ok(Some(_)) => Some("its keyUsage does not allow keyCertSign"),
        Err(_) => Some("its keyUsage extension is malformed or repeated"),
    }
}

/// A certificate's name for messages: its Common Name, or its whole subject without one.
pub(crate) fn display_name(cert: &X509Certificate<'_>) -> String {
    match first_cn(cert.subject()) {
        Some(cn) => cn,
        None => cert.subject().to_string(),
    }
}

fn first_cn(name: &x509_parser::x509::X509Name<'_>) -> Option<String> {
    name.iter_common_name()
        .find_map(|cn| cn.as_str().ok())
        .map(str::to_owned)
}

fn info(cert: &X509Certificate<'_>) -> Result<CertInfo, PkiError> {
    let subject = display_name(cert);
    let invalid = |reason: String| PkiError::InvalidCertificate {
        field: format!("certificate {subject:?}"),
        reason,
    };
    let organizations = cert
        .subject()
        .iter_organization()
        .map(|o| o.as_str().map(str::to_owned))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("an Organization value is not text: {e}")))?;
    let is_ca = cert
        .basic_constraints()
        .map_err(|e| invalid(format!("basicConstraints: {e}")))?
        .is_some_and(|bc| bc.value.ca);
    let (server_auth, client_auth) = match cert
        .extended_key_usage()
        .map_err(|e| invalid(format!("extendedKeyUsage: {e}")))?
    {
        Some(eku) => (eku.value.server_auth, eku.value.client_auth),
        None => (false, false),
    };
    let mut dns_sans = Vec::new();
    let mut ip_sans = Vec::new();
    if let Some(san) = cert
        .subject_alternative_name()
        .map_err(|e| invalid(format!("subjectAltName: {e}")))?
    {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => dns_sans.push((*dns).to_owned()),
                GeneralName::IPAddress(bytes) => {
                    ip_sans.push(ip_address(bytes).ok_or_else(|| {
                        invalid(format!("an IP address SAN has {} bytes", bytes.len()))
                    })?)
                }
                _ => {}
            }
        }
    }
    Ok(CertInfo {
        subject_cn: first_cn(cert.subject()).unwrap_or_default(),
        organizations,
        issuer_cn: first_cn(cert.issuer()).unwrap_or_default(),
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
        is_ca,
        dns_sans,
        ip_sans,
        server_auth,
        client_auth,
    })
}

fn ip_address(bytes: &[u8]) -> Option<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        Some(IpAddr::from(v4))
    } else if let Ok(v6) = <[u8; 16]>::try_from(bytes) {
        Some(IpAddr::from(v6))
    } else {
        None
    }
}
