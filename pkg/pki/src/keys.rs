//! PEM certificates and private keys: the pairs a bundle stores, and parsing them with
//! errors that name the field and never quote key material.

use std::fmt;

use rcgen::{KeyPair, PublicKeyData, PKCS_ECDSA_P256_SHA256, PKCS_ED25519};
use serde::{Deserialize, Serialize};
use x509_parser::certificate::X509Certificate;
use x509_parser::pem::parse_x509_pem;
use x509_parser::prelude::FromDer;

use crate::{random_bytes, PkiError};

const CERTIFICATE_LABEL: &str = "CERTIFICATE";
/// PKCS#8: the one private-key encoding that carries its own algorithm.
const PRIVATE_KEY_LABEL: &str = "PRIVATE KEY";

/// PKCS#8 v1 of an Ed25519 key up to its 32-byte seed (RFC 8410 10.3):
/// SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 }, OCTET STRING { OCTET STRING seed } }.
const ED25519_PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// What a redacted secret prints as.
pub(crate) const REDACTED: &str = "<redacted>";

/// A certificate and its private key, both PEM (the key PKCS#8).
///
/// Debug and Display print the certificate's subject, never the key: these pairs end up in
/// error messages and logs.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertAndKey {
    /// The certificate, PEM.
    pub crt: String,
    /// The private key, PEM PKCS#8.
    pub key: String,
}

impl CertAndKey {
    /// Checks that the certificate and the key parse and that the key is the
    /// certificate's; `field` names the pair in errors (`certs.etcd`).
    pub fn check(&self, field: &str) -> Result<(), PkiError> {
        let der = certificate_der(&self.crt, &format!("{field}.crt"))?;
        let cert = parse_certificate(&der, &format!("{field}.crt"))?;
        let key = parse_key(&self.key, &format!("{field}.key"))?;
        check_key_matches(&cert, &key, &format!("{field}.key"))
    }

    /// As [`CertAndKey::check`], and the certificate may issue certificates (one
    /// certificate: the one the key signs with).
    pub fn check_ca(&self, field: &str) -> Result<(), PkiError> {
        check_ca_certificate(&self.crt, &format!("{field}.crt"))?;
        self.check(field)
    }

    /// The certificate's subject as text (`CN=etcd-ca`), or why it cannot be read.
    fn subject(&self) -> String {
        certificate_der(&self.crt, "crt")
            .and_then(|der| parse_certificate(&der, "crt").map(|c| c.subject().to_string()))
            .unwrap_or_else(|_| "<unparseable certificate>".to_owned())
    }
}

impl fmt::Debug for CertAndKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertAndKey")
            .field("subject", &self.subject())
            .field("key", &REDACTED)
            .finish()
    }
}

impl fmt::Display for CertAndKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.subject())
    }
}

/// A bare private key, PEM PKCS#8 (the Kubernetes service-account signing key). Debug
/// prints it redacted.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyPem(pub String);

impl KeyPem {
    /// Checks that the key parses; `field` names it in errors.
    pub fn check(&self, field: &str) -> Result<(), PkiError> {
        parse_key(&self.0, field).map(drop)
    }
}

impl fmt::Debug for KeyPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("KeyPem").field(&REDACTED).finish()
    }
}

/// The key algorithms this PKI issues with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyAlgorithm {
    Ed25519,
    EcdsaP256,
}

impl KeyAlgorithm {
    pub(crate) fn of(key: &KeyPair, what: &str) -> Result<Self, PkiError> {
        let alg = key.algorithm();
        if alg == &PKCS_ED25519 {
            Ok(Self::Ed25519)
        } else if alg == &PKCS_ECDSA_P256_SHA256 {
            Ok(Self::EcdsaP256)
        } else {
            let algorithm = if alg == &rcgen::PKCS_ECDSA_P384_SHA384 {
                "ECDSA P-384"
            } else if [
                &rcgen::PKCS_RSA_SHA256,
                &rcgen::PKCS_RSA_SHA384,
                &rcgen::PKCS_RSA_SHA512,
            ]
            .contains(&alg)
            {
                "RSA"
            } else {
                "unknown"
            };
            Err(PkiError::UnsupportedKey {
                what: what.to_owned(),
                algorithm,
            })
        }
    }

    pub(crate) fn signature_algorithm(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            Self::Ed25519 => &PKCS_ED25519,
            Self::EcdsaP256 => &PKCS_ECDSA_P256_SHA256,
        }
    }

    pub(crate) fn generate(self, what: &str) -> Result<KeyPair, PkiError> {
        let failed = |e: rcgen::Error| PkiError::Generate {
            what: what.to_owned(),
            reason: e.to_string(),
        };
        match self {
            // ring writes Ed25519 keys as PKCS#8 v2 (with the public key), which OpenSSL
            // 3.0 cannot read; v1 (RFC 8410) is what OpenSSL and Go write and read.
            Self::Ed25519 => {
                let seed = random_bytes::<32>()?;
                let mut pkcs8 = Vec::with_capacity(ED25519_PKCS8_V1_PREFIX.len() + seed.len());
                pkcs8.extend_from_slice(&ED25519_PKCS8_V1_PREFIX);
                pkcs8.extend_from_slice(&seed);
                KeyPair::try_from(pkcs8).map_err(failed)
            }
            Self::EcdsaP256 => KeyPair::generate_for(self.signature_algorithm()).map_err(failed),
        }
    }
}

/// The DER of the one PEM certificate in `pem`. Anything but whitespace around the block
/// is refused: a second certificate pasted by mistake would otherwise be ignored silently.
/// Checks that `crt` (PEM: one certificate, or several, as a trust bundle in a CA's
/// rotation holds) parses and that each may issue certificates; `field` names it in
/// errors.
pub fn check_ca_certificate(crt: &str, field: &str) -> Result<(), PkiError> {
    let blocks = pem_blocks(crt);
    for (i, block) in blocks.iter().enumerate() {
        let field = match blocks.len() {
            1 => field.to_owned(),
            _ => format!("{field}[{i}]"),
        };
        let der = certificate_der(block, &field)?;
        let cert = parse_certificate(&der, &field)?;
        if let Some(reason) = crate::inspect::ca_problem(&cert) {
            return Err(PkiError::NotACa {
                subject: crate::inspect::display_name(&cert),
                reason,
            });
        }
    }
    Ok(())
}

/// `text` cut after each PEM block's END line; what follows the last one (or the whole
/// text, without any) is a block of its own, for the parser to say what is wrong.
fn pem_blocks(text: &str) -> Vec<&str> {
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(end) = rest.find("-----END ") {
        let line_end = rest[end..].find('\n').map_or(rest.len(), |i| end + i + 1);
        blocks.push(&rest[..line_end]);
        rest = &rest[line_end..];
    }
    if blocks.is_empty() || !rest.trim().is_empty() {
        blocks.push(rest);
    }
    blocks
}

pub(crate) fn certificate_der(pem: &str, field: &str) -> Result<Vec<u8>, PkiError> {
    let invalid = |reason: String| PkiError::InvalidCertificate {
        field: field.to_owned(),
        reason,
    };
    let (label, der) = single_pem_block(pem).map_err(|r| invalid(r.to_owned()))?;
    if label != CERTIFICATE_LABEL {
        // Naming a key's label would put "PRIVATE KEY" in logs that are searched for it.
        let found = if label.contains("PRIVATE") {
            "a private key".to_owned()
        } else {
            format!("{label:?}")
        };
        return Err(invalid(format!(
            "the PEM block is {found}, not {CERTIFICATE_LABEL:?}"
        )));
    }
    Ok(der)
}

/// Parses a DER certificate, refusing trailing bytes.
pub(crate) fn parse_certificate<'a>(
    der: &'a [u8],
    field: &str,
) -> Result<X509Certificate<'a>, PkiError> {
    let invalid = |reason: String| PkiError::InvalidCertificate {
        field: field.to_owned(),
        reason,
    };
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| invalid(e.to_string()))?;
    if !rest.is_empty() {
        return Err(invalid(format!(
            "{} bytes follow the certificate",
            rest.len()
        )));
    }
    Ok(cert)
}

/// Parses a PKCS#8 PEM private key of a supported algorithm.
pub(crate) fn parse_key(pem: &str, field: &str) -> Result<KeyPair, PkiError> {
    let invalid = |reason: &'static str| PkiError::InvalidKey {
        field: field.to_owned(),
        reason,
    };
    let (label, der) = single_pem_block(pem).map_err(invalid)?;
    if label != PRIVATE_KEY_LABEL {
        return Err(invalid(
            "the PEM block is not a PKCS#8 private key (convert it with `openssl pkcs8 -topk8 -nocrypt`)",
        ));
    }
    // rcgen's errors may quote ring's reasons but never the key; still, a fixed text is
    // what this crate promises for keys.
    let key = KeyPair::try_from(der.as_slice())
        .map_err(|_| invalid("not a PKCS#8 Ed25519, ECDSA or RSA private key"))?;
    KeyAlgorithm::of(&key, field)?;
    Ok(key)
}

/// Whether `key` is the private half of `cert`'s public key.
pub(crate) fn check_key_matches(
    cert: &X509Certificate<'_>,
    key: &KeyPair,
    field: &str,
) -> Result<(), PkiError> {
    if cert.public_key().subject_public_key.data.as_ref() == key.der_bytes() {
        Ok(())
    } else {
        Err(PkiError::KeyMismatch {
            field: field.to_owned(),
        })
    }
}

/// The label and decoded contents of the one PEM block in `text`. The reasons are fixed
/// texts: this also reads private keys.
fn single_pem_block(text: &str) -> Result<(String, Vec<u8>), &'static str> {
    let trimmed = text.trim_start();
    if !trimmed.starts_with("-----BEGIN ") {
        return Err("not PEM: no \"-----BEGIN\" line at the start");
    }
    let (rest, pem) = parse_x509_pem(trimmed.as_bytes()).map_err(|_| "malformed PEM")?;
    if !rest.iter().all(u8::is_ascii_whitespace) {
        return Err("more than one PEM block, or text after the PEM block");
    }
    // The reader takes any line starting "-----END " as the end; a cut-off file must not
    // pass for a whole one.
    if !trimmed
        .trim_end()
        .ends_with(&format!("-----END {}-----", pem.label))
    {
        return Err("the PEM block does not end with its \"-----END\" line");
    }
    Ok((pem.label, pem.contents))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_text_around_the_block() {
        let key = KeyAlgorithm::EcdsaP256
            .generate("test")
            .unwrap()
            .serialize_pem();
        assert!(parse_key(&key, "k").is_ok());
        assert!(parse_key(&format!("\n  {key}\n\n"), "k").is_ok());
        for bad in [
            format!("junk\n{key}"),
            format!("{key}{key}"),
            format!("{key}junk"),
            key.replace("PRIVATE KEY", "EC PRIVATE KEY"),
            key[..key.len() / 2].to_owned(),
            String::new(),
        ] {
            let err = parse_key(&bad, "certs.x.key").unwrap_err();
            let text = err.to_string();
            assert!(text.starts_with("certs.x.key"), "{text}");
            assert!(!text.contains("PRIVATE KEY-----"), "{text}");
        }
    }
}
