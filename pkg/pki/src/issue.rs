//! Making certificates: self-signed CAs (through rcgen) and leaf certificates signed by
//! a CA (built with RustCrypto's `x509-cert`, because a client certificate has one
//! Organization per role and rcgen can write only one per name).

use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints as CaConstraints, CertificateParams, DistinguishedName, DnType, IsCa,
    KeyUsagePurpose, PublicKeyData, SigningKey,
};
use ring::digest;
use time::OffsetDateTime;
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::der::asn1::{
    Any, BitString, GeneralizedTime, Ia5String, ObjectIdentifier, OctetString, SetOfVec, UtcTime,
};
use x509_cert::der::oid::db::rfc4519::{COMMON_NAME, ORGANIZATION_NAME};
use x509_cert::der::oid::db::rfc5280::{ID_KP_CLIENT_AUTH, ID_KP_SERVER_AUTH};
use x509_cert::der::oid::db::rfc5912::ECDSA_WITH_SHA_256;
use x509_cert::der::oid::db::rfc8410::ID_ED_25519 as ED25519;
use x509_cert::der::oid::AssociatedOid;
use x509_cert::der::pem::LineEnding;
use x509_cert::der::{self, Decode, Encode, EncodePem, Tag};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages,
    SubjectAltName, SubjectKeyIdentifier,
};
use x509_cert::ext::Extension;
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::time::{Time, Validity};
use x509_cert::{Certificate, TbsCertificate, Version};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;

use crate::inspect::{ca_problem, display_name};
use crate::keys::{certificate_der, check_key_matches, parse_certificate, parse_key, KeyAlgorithm};
use crate::{random_bytes, CertAndKey, PkiError, Role};

/// How far before "now" a certificate becomes valid: a peer whose clock runs a few
/// minutes behind the issuer's must still accept a certificate issued a moment ago.
pub const CLOCK_SKEW_ALLOWANCE: time::Duration = time::Duration::minutes(5);

/// How long the CAs of a secrets bundle are valid: rotating a cluster's CAs is a project,
/// so they outlive any node.
pub const CA_VALIDITY: time::Duration = time::Duration::days(3650);

/// RFC 5280 caps a common name at 64 characters (ub-common-name).
const MAX_COMMON_NAME: usize = 64;

/// Makes a self-signed CA certificate and its key.
pub(crate) fn generate_ca(
    common_name: &str,
    algorithm: KeyAlgorithm,
    now: OffsetDateTime,
) -> Result<CertAndKey, PkiError> {
    let failed = |reason: String| PkiError::Generate {
        what: format!("CA {common_name:?}"),
        reason,
    };
    let key = algorithm.generate(&format!("the key of CA {common_name:?}"))?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(CaConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = now - CLOCK_SKEW_ALLOWANCE;
    params.not_after = now + CA_VALIDITY;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial_number()?));
    let cert = params
        .self_signed(&key)
        .map_err(|e| failed(e.to_string()))?;
    Ok(CertAndKey {
        crt: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// Issues a client certificate for the Machine API: the subject is
/// `O=<role>, ..., CN=<common_name>`, one O per role; extended key usage clientAuth.
///
/// The key is Ed25519 when the CA's is, ECDSA P-256 otherwise. The certificate is valid
/// from [`CLOCK_SKEW_ALLOWANCE`] ago until `validity` from now, but never past the CA's
/// own end.
pub fn issue_client_cert(
    ca: &CertAndKey,
    common_name: &str,
    roles: &[Role],
    validity: Duration,
) -> Result<CertAndKey, PkiError> {
    let mut organizations: Vec<&str> = Vec::with_capacity(roles.len());
    for role in roles {
        if !organizations.contains(&role.as_str()) {
            organizations.push(role.as_str());
        }
    }
    issue(
        ca,
        &Leaf {
            common_name,
            organizations,
            sans: Vec::new(),
            server_auth: false,
            validity,
        },
    )
}

/// Issues a server certificate: subject `CN=<common_name>`, one subject alternative name
/// per entry of `sans` (an IP address when it parses as one, a DNS name otherwise),
/// extended key usage serverAuth and clientAuth — nodes also present it to each other
/// as clients (node-to-node mTLS). The key is ECDSA P-256 whatever the CA's key, so that
/// every TLS client can talk to the server; validity as [`issue_client_cert`].
pub fn issue_server_cert(
    ca: &CertAndKey,
    common_name: &str,
    sans: &[String],
    validity: Duration,
) -> Result<CertAndKey, PkiError> {
    let sans = sans
        .iter()
        .map(|s| San::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    issue(
        ca,
        &Leaf {
            common_name,
            organizations: Vec::new(),
            sans,
            server_auth: true,
            validity,
        },
    )
}

pub(crate) struct Leaf<'a> {
    common_name: &'a str,
    organizations: Vec<&'a str>,
    sans: Vec<San>,
    server_auth: bool,
    validity: Duration,
}

pub(crate) enum San {
    Dns(String),
    Ip(IpAddr),
}

impl San {
    pub(crate) fn parse(value: &str) -> Result<Self, PkiError> {
        if let Ok(ip) = value.parse::<IpAddr>() {
            return Ok(San::Ip(ip));
        }
        let invalid = |reason: &str| PkiError::InvalidSan {
            value: value.to_owned(),
            reason: reason.to_owned(),
        };
        if value.is_empty() || value.len() > 253 {
            return Err(invalid("a DNS name has 1 to 253 characters"));
        }
        for (i, label) in value.split('.').enumerate() {
            let wildcard = i == 0 && label == "*";
            let ok = wildcard
                || (!label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-'));
            if !ok {
                return Err(invalid(
                    "not an IP address, nor a DNS name (labels of 1 to 63 letters, digits \
                     and inner hyphens, an optional leading \"*\" label)",
                ));
            }
        }
        Ok(San::Dns(value.to_owned()))
    }

    fn general_name(&self) -> der::Result<GeneralName> {
        Ok(match self {
            San::Dns(name) => GeneralName::DnsName(Ia5String::new(name)?),
            San::Ip(IpAddr::V4(ip)) => GeneralName::IpAddress(OctetString::new(ip.octets())?),
            San::Ip(IpAddr::V6(ip)) => GeneralName::IpAddress(OctetString::new(ip.octets())?),
        })
    }
}

fn issue(ca: &CertAndKey, leaf: &Leaf<'_>) -> Result<CertAndKey, PkiError> {
    // Server keys are ECDSA P-256 whatever the CA's: TLS stacks built on BoringSSL (gRPC
    // C-core: Python, C++, Ruby clients) do not offer Ed25519 handshake signatures, but
    // they verify an Ed25519 CA's signature on the certificate.
    let key_algorithm = if leaf.server_auth {
        KeyAlgorithm::EcdsaP256
    } else {
        let ca_key = parse_key(&ca.key, "the key of the CA")?;
        KeyAlgorithm::of(&ca_key, "the key of the CA")?
    };
    let key = key_algorithm.generate(&format!("the key of {:?}", leaf.common_name))?;
    Ok(CertAndKey {
        crt: sign(ca, leaf, &key.subject_public_key_info())?,
        key: key.serialize_pem(),
    })
}

/// The certificate `leaf` describes, for the public key `spki` (SubjectPublicKeyInfo,
/// DER), signed by `ca`; PEM.
pub(crate) fn sign(ca: &CertAndKey, leaf: &Leaf<'_>, spki: &[u8]) -> Result<String, PkiError> {
    check_common_name(leaf.common_name)?;
    let ca_der = certificate_der(&ca.crt, "the CA certificate")?;
    let ca_cert = parse_certificate(&ca_der, "the CA certificate")?;
    let ca_name = display_name(&ca_cert);
    if let Some(reason) = ca_problem(&ca_cert) {
        return Err(PkiError::NotACa {
            subject: ca_name,
            reason,
        });
    }
    let ca_key = parse_key(&ca.key, &format!("the key of CA {ca_name:?}"))?;
    check_key_matches(&ca_cert, &ca_key, &format!("the key of CA {ca_name:?}"))?;
    let algorithm = KeyAlgorithm::of(&ca_key, &format!("the key of CA {ca_name:?}"))?;

    let (not_before, not_after) = leaf_validity(&ca_cert, &ca_name, leaf)?;

    // Neither algorithm takes parameters (RFC 8410 3, RFC 5758 3.2).
    let signature_algorithm = AlgorithmIdentifierOwned {
        oid: match algorithm {
            KeyAlgorithm::Ed25519 => ED25519,
            KeyAlgorithm::EcdsaP256 => ECDSA_WITH_SHA_256,
        },
        parameters: None,
    };
    let encoding = |e: der::Error| PkiError::Generate {
        what: format!("the certificate of {:?}", leaf.common_name),
        reason: e.to_string(),
    };
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::new(&serial_number()?).map_err(encoding)?,
        signature: signature_algorithm.clone(),
        issuer: Name::from_der(ca_cert.subject().as_raw()).map_err(encoding)?,
        validity: Validity {
            not_before: x509_time(not_before).map_err(encoding)?,
            not_after: x509_time(not_after).map_err(encoding)?,
        },
        subject: subject(leaf).map_err(encoding)?,
        subject_public_key_info: SubjectPublicKeyInfoOwned::from_der(spki).map_err(encoding)?,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(extensions(leaf, spki, &ca_cert).map_err(encoding)?),
    };
    let signature =
        ca_key
            .sign(&tbs.to_der().map_err(encoding)?)
            .map_err(|e| PkiError::Generate {
                what: format!("the signature of {:?}", leaf.common_name),
                reason: e.to_string(),
            })?;
    let cert = Certificate {
        tbs_certificate: tbs,
        signature_algorithm,
        signature: BitString::from_bytes(&signature).map_err(encoding)?,
    };
    cert.to_pem(LineEnding::LF).map_err(encoding)
}

/// UTCTime through 2049, GeneralizedTime from 2050 on (RFC 5280 4.1.2.5), to the
/// second.
fn x509_time(at: OffsetDateTime) -> der::Result<Time> {
    let since_epoch = std::time::Duration::from_secs(
        u64::try_from(at.unix_timestamp()).map_err(|_| der::ErrorKind::DateTime)?,
    );
    Ok(if at.year() < 2050 {
        Time::UtcTime(UtcTime::from_unix_duration(since_epoch)?)
    } else {
        Time::GeneralTime(GeneralizedTime::from_unix_duration(since_epoch)?)
    })
}

fn check_common_name(name: &str) -> Result<(), PkiError> {
    let invalid = |reason| PkiError::InvalidCommonName {
        value: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("it is empty"));
    }
    if name.chars().count() > MAX_COMMON_NAME {
        return Err(invalid("it is longer than 64 characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid("it contains control characters"));
    }
    Ok(())
}

fn leaf_validity(
    ca: &X509Certificate<'_>,
    ca_name: &str,
    leaf: &Leaf<'_>,
) -> Result<(OffsetDateTime, OffsetDateTime), PkiError> {
    let invalid = |reason: String| PkiError::InvalidValidity {
        subject: leaf.common_name.to_owned(),
        reason,
    };
    if leaf.validity.is_zero() {
        return Err(invalid("the validity is zero".to_owned()));
    }
    let validity = time::Duration::try_from(leaf.validity)
        .map_err(|_| invalid(format!("{:?} is too long", leaf.validity)))?;
    let now = OffsetDateTime::now_utc();
    let ca_not_after = ca.validity().not_after.to_datetime();
    if ca_not_after <= now {
        return Err(PkiError::Expired {
            subject: ca_name.to_owned(),
            not_after: ca_not_after,
        });
    }
    // A certificate cannot outlive its CA in any verifier; saying so in the certificate
    // keeps `not_after` honest.
    let not_after = now
        .checked_add(validity)
        .map_or(ca_not_after, |end| end.min(ca_not_after));
    Ok((now - CLOCK_SKEW_ALLOWANCE, not_after))
}

/// `O=..., O=..., CN=...`, one attribute per RDN, as UTF8String (RFC 5280 4.1.2.6).
fn subject(leaf: &Leaf<'_>) -> der::Result<Name> {
    let rdn = |oid: ObjectIdentifier, value: &str| -> der::Result<RelativeDistinguishedName> {
        let value = Any::new(Tag::Utf8String, value.as_bytes())?;
        let attribute = AttributeTypeAndValue { oid, value };
        Ok(RelativeDistinguishedName(SetOfVec::try_from(vec![
            attribute,
        ])?))
    };
    let mut rdns = leaf
        .organizations
        .iter()
        .map(|o| rdn(ORGANIZATION_NAME, o))
        .collect::<der::Result<Vec<_>>>()?;
    rdns.push(rdn(COMMON_NAME, leaf.common_name)?);
    Ok(RdnSequence(rdns))
}

fn extensions(
    leaf: &Leaf<'_>,
    spki: &[u8],
    ca: &X509Certificate<'_>,
) -> der::Result<Vec<Extension>> {
    fn extension<T: Encode + AssociatedOid>(value: &T, critical: bool) -> der::Result<Extension> {
        Ok(Extension {
            extn_id: T::OID,
            critical,
            extn_value: OctetString::new(value.to_der()?)?,
        })
    }
    let mut purposes = Vec::new();
    if leaf.server_auth {
        purposes.push(ID_KP_SERVER_AUTH);
    }
    purposes.push(ID_KP_CLIENT_AUTH);
    let mut all = vec![
        // Not a CA: a leaf key must not be able to mint certificates.
        extension(
            &BasicConstraints {
                ca: false,
                path_len_constraint: None,
            },
            true,
        )?,
        extension(&KeyUsage(KeyUsages::DigitalSignature.into()), true)?,
        extension(&ExtendedKeyUsage(purposes), false)?,
        extension(
            &SubjectKeyIdentifier(OctetString::new(key_identifier(spki))?),
            false,
        )?,
        extension(
            &AuthorityKeyIdentifier {
                key_identifier: Some(OctetString::new(authority_key_id(ca))?),
                authority_cert_issuer: None,
                authority_cert_serial_number: None,
            },
            false,
        )?,
    ];
    if !leaf.sans.is_empty() {
        let names = leaf
            .sans
            .iter()
            .map(San::general_name)
            .collect::<der::Result<Vec<_>>>()?;
        all.push(extension(&SubjectAltName(names), false)?);
    }
    Ok(all)
}

/// The CA's own subject key identifier, so that chains build by identifier; for a CA
/// without one (made elsewhere), one derived the way rcgen derives it for ours.
fn authority_key_id(ca: &X509Certificate<'_>) -> Vec<u8> {
    ca.iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
            _ => None,
        })
        .unwrap_or_else(|| key_identifier(ca.public_key().raw))
}

/// The first 160 bits of the SHA-256 of the SubjectPublicKeyInfo (rcgen's method).
fn key_identifier(spki: &[u8]) -> Vec<u8> {
    let hash = digest::digest(&digest::SHA256, spki);
    hash.as_ref()[..20].to_vec()
}

/// A random positive serial of 16 bytes: RFC 5280 wants them unique per CA, and the
/// CA/Browser Forum at least 64 random bits; the top bits are fixed so the INTEGER
/// encoding is always 16 bytes and positive.
fn serial_number() -> Result<[u8; 16], PkiError> {
    let mut serial = random_bytes::<16>()?;
    serial[0] = (serial[0] & 0x7f) | 0x40;
    Ok(serial)
}

/// A node's request for its API certificates: certificate signing requests (PEM) for two
/// keys the node made and keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCertRequest {
    /// For the server certificate: the node's name as common name, and every name and
    /// address it is reached by as subject alternative names.
    pub server_csr: String,
    /// For the `os:impersonator` client certificate: only its key is used.
    pub peer_csr: String,
}

/// The keys behind a [`NodeCertRequest`] (PEM); they never leave the node.
#[derive(Clone)]
pub struct NodeKeys {
    pub server: String,
    pub peer: String,
}

impl std::fmt::Debug for NodeKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeKeys { .. }")
    }
}

/// The certificates signed for a [`NodeCertRequest`] (PEM), with what they say.
#[derive(Debug, Clone)]
pub struct SignedNodeCerts {
    pub server_crt: String,
    pub peer_crt: String,
    pub name: String,
    pub sans: Vec<String>,
    pub not_after: OffsetDateTime,
}

/// Makes the node's two keys (ECDSA P-256, which every TLS stack speaks) and the request
/// for their certificates.
pub fn request_node_certs(
    name: &str,
    sans: &[String],
) -> Result<(NodeCertRequest, NodeKeys), PkiError> {
    check_common_name(name)?;
    for san in sans {
        San::parse(san)?;
    }
    let csr = |sans: Vec<String>, what: &str| -> Result<(String, String), PkiError> {
        let generate = |e: rcgen::Error| PkiError::Generate {
            what: format!("the {what} request of {name:?}"),
            reason: e.to_string(),
        };
        let key = KeyAlgorithm::EcdsaP256.generate(&format!("the {what} key of {name:?}"))?;
        let mut params = CertificateParams::new(sans).map_err(generate)?;
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, name);
        params.distinguished_name = subject;
        let request = params.serialize_request(&key).map_err(generate)?;
        Ok((request.pem().map_err(generate)?, key.serialize_pem()))
    };
    let (server_csr, server) = csr(sans.to_vec(), "server")?;
    let (peer_csr, peer) = csr(Vec::new(), "peer")?;
    Ok((
        NodeCertRequest {
            server_csr,
            peer_csr,
        },
        NodeKeys { server, peer },
    ))
}

/// Signs a node's request with the OS CA. Each request's signature is checked (the
/// requester holds the key); from the requests only the keys, the common name and the
/// server's subject alternative names are taken. Usages, the `os:impersonator` role and
/// the validity are the issuer's, as for [`issue_node_certs`].
pub fn sign_node_request(
    ca: &CertAndKey,
    request: &NodeCertRequest,
    validity: Duration,
) -> Result<SignedNodeCerts, PkiError> {
    let server = parse_request(&request.server_csr, "the server request")?;
    let peer = parse_request(&request.peer_csr, "the peer request")?;
    let invalid = |reason: String| PkiError::InvalidRequest {
        what: "the server request",
        reason,
    };
    let name = server
        .params
        .distinguished_name
        .get(&DnType::CommonName)
        .and_then(|value| match value {
            rcgen::DnValue::Utf8String(s) => Some(s.clone()),
            rcgen::DnValue::PrintableString(s) => Some(s.as_str().to_string()),
            _ => None,
        })
        .ok_or_else(|| invalid("its subject has no common name".into()))?;
    let mut sans = Vec::new();
    for san in &server.params.subject_alt_names {
        sans.push(match san {
            rcgen::SanType::DnsName(dns) => dns.as_str().to_string(),
            rcgen::SanType::IpAddress(ip) => ip.to_string(),
            other => {
                return Err(invalid(format!(
                    "{other:?} is not a DNS name or an IP address"
                )))
            }
        });
    }
    let parsed_sans = sans
        .iter()
        .map(|s| San::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    let server_crt = sign(
        ca,
        &Leaf {
            common_name: &name,
            organizations: Vec::new(),
            sans: parsed_sans,
            server_auth: true,
            validity,
        },
        &server.public_key.subject_public_key_info(),
    )?;
    let peer_crt = sign(
        ca,
        &Leaf {
            common_name: &name,
            organizations: vec![Role::Impersonator.as_str()],
            sans: Vec::new(),
            server_auth: false,
            validity,
        },
        &peer.public_key.subject_public_key_info(),
    )?;
    let not_after = crate::inspect(&server_crt)?.not_after;
    Ok(SignedNodeCerts {
        server_crt,
        peer_crt,
        name,
        sans,
        not_after,
    })
}

fn parse_request(
    pem: &str,
    what: &'static str,
) -> Result<rcgen::CertificateSigningRequestParams, PkiError> {
    rcgen::CertificateSigningRequestParams::from_pem(pem).map_err(|e| PkiError::InvalidRequest {
        what,
        reason: e.to_string(),
    })
}

/// The certificates of a node's Machine API: the server certificate it serves, and the
/// `os:impersonator` client certificate it presents to other nodes when it forwards a
/// call.
#[derive(Debug, Clone)]
pub struct NodeCertificates {
    pub server: CertAndKey,
    pub peer: CertAndKey,
    /// When the server certificate expires.
    pub not_after: OffsetDateTime,
}

/// Issues a node's API certificates from the OS CA: `name` is the node's name (the common
/// name of both), `sans` every name and address it is reached by.
pub fn issue_node_certs(
    ca: &CertAndKey,
    name: &str,
    sans: &[String],
    validity: Duration,
) -> Result<NodeCertificates, PkiError> {
    let server = issue_server_cert(ca, name, sans, validity)?;
    let peer = issue_client_cert(ca, name, &[Role::Impersonator], validity)?;
    let not_after = crate::inspect(&server.crt)?.not_after;
    Ok(NodeCertificates {
        server,
        peer,
        not_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sans_are_typed_and_checked() {
        assert!(matches!(San::parse("10.0.0.1"), Ok(San::Ip(_))));
        assert!(matches!(San::parse("fd00::1"), Ok(San::Ip(_))));
        assert!(matches!(San::parse("node-1.example.org"), Ok(San::Dns(_))));
        assert!(matches!(San::parse("*.example.org"), Ok(San::Dns(_))));
        for bad in [
            "",
            "a..b",
            "-a.b",
            "a b",
            "ä.example",
            "a.*.b",
            "10.0.0.1:80",
        ] {
            assert!(
                matches!(San::parse(bad), Err(PkiError::InvalidSan { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn common_names_are_checked() {
        assert!(check_common_name("admin").is_ok());
        assert!(check_common_name("").is_err());
        assert!(check_common_name(&"x".repeat(65)).is_err());
        assert!(check_common_name("a\nb").is_err());
    }

    #[test]
    fn a_node_request_is_signed_with_the_issuers_profile() {
        let bundle = crate::SecretsBundle::generate().unwrap();
        let ca = &bundle.certs.os;
        let sans = vec!["10.5.0.3".to_string(), "w-1".to_string()];
        let (request, keys) = request_node_certs("w-1", &sans).unwrap();
        let signed = sign_node_request(ca, &request, Duration::from_secs(3600)).unwrap();
        assert_eq!(signed.name, "w-1");
        assert_eq!(signed.sans, sans);
        let now = OffsetDateTime::now_utc();
        let server = crate::verify(&signed.server_crt, &ca.crt, now).unwrap();
        assert!(server.organizations.is_empty());
        assert_eq!(server.dns_sans, ["w-1"]);
        let peer = crate::verify(&signed.peer_crt, &ca.crt, now).unwrap();
        assert_eq!(peer.organizations, [Role::Impersonator.as_str()]);
        assert!(peer.dns_sans.is_empty() && peer.ip_sans.is_empty());
        // Each certificate is for the key the node kept.
        for (crt, key) in [
            (&signed.server_crt, &keys.server),
            (&signed.peer_crt, &keys.peer),
        ] {
            let cert = CertAndKey {
                crt: crt.clone(),
                key: key.clone(),
            };
            assert!(cert.check("node").is_ok());
        }
        assert_eq!(format!("{keys:?}"), "NodeKeys { .. }");
    }

    #[test]
    fn a_bad_or_forged_request_is_refused() {
        let bundle = crate::SecretsBundle::generate().unwrap();
        let ca = &bundle.certs.os;
        let (good, _) = request_node_certs("w-1", &["10.5.0.3".into()]).unwrap();
        let refused = |request: NodeCertRequest| {
            sign_node_request(ca, &request, Duration::from_secs(60)).unwrap_err()
        };
        let garbage = NodeCertRequest {
            server_csr: "not a request".into(),
            ..good.clone()
        };
        assert!(matches!(
            refused(garbage),
            PkiError::InvalidRequest {
                what: "the server request",
                ..
            }
        ));
        // A character of the signed part changed: the signature no longer holds.
        let mut lines: Vec<String> = good.peer_csr.lines().map(str::to_string).collect();
        let flipped = if lines[1].as_bytes()[30] == b'A' {
            "B"
        } else {
            "A"
        };
        lines[1].replace_range(30..31, flipped);
        let forged = NodeCertRequest {
            peer_csr: lines.join("\n"),
            ..good.clone()
        };
        assert!(matches!(
            refused(forged),
            PkiError::InvalidRequest {
                what: "the peer request",
                ..
            }
        ));
        assert!(request_node_certs("", &[]).is_err());
        assert!(request_node_certs("w-1", &["not a name!".into()]).is_err());
    }
}
