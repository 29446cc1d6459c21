//! The secrets bundle: everything a cluster's configs are generated from, kept in one
//! file by `osctl gen secrets` so configs can be regenerated without new CAs.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::file::write_private_file;
use crate::inspect::ca_problem;
use crate::issue::generate_ca;
use crate::keys::{certificate_der, parse_certificate, parse_key, KeyAlgorithm, KeyPem, REDACTED};
use crate::{random_bytes, CertAndKey, PkiError};

/// Bytes of the cluster id and of the cluster secret.
const CLUSTER_BYTES: usize = 32;
const TOKEN_ID_LEN: usize = 6;
const TOKEN_SECRET_LEN: usize = 16;
const TOKEN_ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A cluster's secrets, in the shape of Talos's secrets bundle.
///
/// Read with [`SecretsBundle::from_yaml`] / [`SecretsBundle::read_from`], which refuse
/// unknown fields and check every certificate and key, so a bundle in hand is usable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretsBundle {
    pub cluster: ClusterSecrets,
    pub bootstrap_token: BootstrapToken,
    pub trustdinfo: TrustdInfo,
    pub certs: BundleCerts,
}

/// trustd's part: the machine token (`machine.token`), which nodes without the OS CA key
/// present to trustd for their certificates. Its own, not the Kubernetes bootstrap token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustdInfo {
    pub token: BootstrapToken,
}

/// The cluster's identity and shared secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSecrets {
    /// 32 random bytes, base64: names the cluster to discovery; not secret.
    pub id: String,
    /// 32 random bytes, base64: the key nodes derive KubeSpan's pre-shared key and the
    /// discovery encryption (AES-256) key from.
    pub secret: String,
}

impl ClusterSecrets {
    /// The decoded cluster secret.
    pub fn secret_bytes(&self) -> Result<[u8; CLUSTER_BYTES], PkiError> {
        decode_32(&self.secret, "cluster.secret")
    }

    /// The decoded cluster id.
    pub fn id_bytes(&self) -> Result<[u8; CLUSTER_BYTES], PkiError> {
        decode_32(&self.id, "cluster.id")
    }
}

impl fmt::Debug for ClusterSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterSecrets")
            .field("id", &self.id)
            .field("secret", &REDACTED)
            .finish()
    }
}

/// A Kubernetes bootstrap token, `[a-z0-9]{6}.[a-z0-9]{16}`: the part before the dot
/// names the token, the part after is its secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BootstrapToken(pub String);

impl BootstrapToken {
    /// A new random token.
    pub fn generate() -> Result<Self, PkiError> {
        let id = random_token_chars(TOKEN_ID_LEN)?;
        let secret = random_token_chars(TOKEN_SECRET_LEN)?;
        Ok(Self(format!("{id}.{secret}")))
    }

    /// The public half, the token id.
    pub fn id(&self) -> Option<&str> {
        self.0.split_once('.').map(|(id, _)| id)
    }

    fn is_well_formed(&self) -> bool {
        let token_chars = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        };
        self.0.split_once('.').is_some_and(|(id, secret)| {
            token_chars(id, TOKEN_ID_LEN) && token_chars(secret, TOKEN_SECRET_LEN)
        })
    }
}

impl fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.id() {
            Some(id) if self.is_well_formed() => write!(f, "BootstrapToken(\"{id}.{REDACTED}\")"),
            _ => write!(f, "BootstrapToken({REDACTED:?})"),
        }
    }
}

/// The cluster's certificate authorities and the service-account key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BundleCerts {
    /// The Machine API CA (Ed25519): node server certificates and `osctl` client
    /// certificates.
    pub os: CertAndKey,
    /// The Kubernetes CA (ECDSA P-256).
    pub k8s: CertAndKey,
    /// The front-proxy CA of the API aggregation layer (ECDSA P-256).
    pub k8s_aggregator: CertAndKey,
    /// The etcd CA (ECDSA P-256).
    pub etcd: CertAndKey,
    /// The key service-account tokens are signed with (ECDSA P-256).
    pub k8s_service_account: KeyPem,
}

/// A bundle is a few KiB; anything far larger is not one.
const MAX_BUNDLE_BYTES: usize = 1024 * 1024;

/// The bundle's CAs: field name, common name, key algorithm.
const CAS: [(&str, &str, KeyAlgorithm); 4] = [
    ("os", "basalt-os-ca", KeyAlgorithm::Ed25519),
    ("k8s", "kubernetes", KeyAlgorithm::EcdsaP256),
    ("k8sAggregator", "front-proxy-ca", KeyAlgorithm::EcdsaP256),
    ("etcd", "etcd-ca", KeyAlgorithm::EcdsaP256),
];

impl BundleCerts {
    fn cas(&self) -> [(&'static str, &CertAndKey); 4] {
        [
            (CAS[0].0, &self.os),
            (CAS[1].0, &self.k8s),
            (CAS[2].0, &self.k8s_aggregator),
            (CAS[3].0, &self.etcd),
        ]
    }
}

impl SecretsBundle {
    /// A new bundle: random cluster id, secret, bootstrap and machine tokens, four self-signed CAs
    /// valid for [`crate::CA_VALIDITY`], and a service-account key.
    pub fn generate() -> Result<Self, PkiError> {
        let now = OffsetDateTime::now_utc();
        let [os, k8s, k8s_aggregator, etcd] = CAS.map(|(_, cn, alg)| generate_ca(cn, alg, now));
        let service_account = KeyAlgorithm::EcdsaP256.generate("the service-account key")?;
        Ok(Self {
            cluster: ClusterSecrets {
                id: BASE64.encode(random_bytes::<CLUSTER_BYTES>()?),
                secret: BASE64.encode(random_bytes::<CLUSTER_BYTES>()?),
            },
            bootstrap_token: BootstrapToken::generate()?,
            trustdinfo: TrustdInfo {
                token: BootstrapToken::generate()?,
            },
            certs: BundleCerts {
                os: os?,
                k8s: k8s?,
                k8s_aggregator: k8s_aggregator?,
                etcd: etcd?,
                k8s_service_account: KeyPem(service_account.serialize_pem()),
            },
        })
    }

    /// Reads a bundle from YAML and [checks](Self::validate) it.
    pub fn from_yaml(yaml: &str) -> Result<Self, PkiError> {
        if yaml.len() > MAX_BUNDLE_BYTES {
            return Err(PkiError::Yaml {
                reason: format!(
                    "the bundle has {} bytes, more than the {MAX_BUNDLE_BYTES} accepted",
                    yaml.len()
                ),
            });
        }
        basalt_resource::yaml::check_expansion(yaml).map_err(|reason| PkiError::Yaml { reason })?;
        let bundle: Self = serde_yaml_ng::from_str(yaml).map_err(|e| PkiError::Yaml {
            reason: redact_quoted_strings(&e.to_string()),
        })?;
        bundle.validate()?;
        Ok(bundle)
    }

    /// The bundle as YAML.
    pub fn to_yaml(&self) -> Result<String, PkiError> {
        serde_yaml_ng::to_string(self).map_err(|e| PkiError::Encode {
            reason: e.to_string(),
        })
    }

    /// Checks what the types cannot: the cluster id and secret are 32 bytes of base64,
    /// the token is well formed, every certificate and key parses, every CA is a CA, and
    /// every key belongs to its certificate. Errors name the field (`certs.etcd.key`).
    pub fn validate(&self) -> Result<(), PkiError> {
        self.cluster.id_bytes()?;
        self.cluster.secret_bytes()?;
        for (field, token) in [
            ("bootstrapToken", &self.bootstrap_token),
            ("trustdinfo.token", &self.trustdinfo.token),
        ] {
            if !token.is_well_formed() {
                return Err(PkiError::InvalidField {
                    field: field.to_owned(),
                    reason: "must match [a-z0-9]{6}.[a-z0-9]{16}".to_owned(),
                });
            }
        }
        for (name, pair) in self.certs.cas() {
            let field = format!("certs.{name}");
            pair.check(&field)?;
            let crt_field = format!("{field}.crt");
            let der = certificate_der(&pair.crt, &crt_field)?;
            let cert = parse_certificate(&der, &crt_field)?;
            if let Some(reason) = ca_problem(&cert) {
                return Err(PkiError::InvalidCertificate {
                    field: crt_field,
                    reason: format!("not a certificate authority: {reason}"),
                });
            }
        }
        let field = "certs.k8sServiceAccount";
        let key = parse_key(&self.certs.k8s_service_account.0, field)?;
        if KeyAlgorithm::of(&key, field)? != KeyAlgorithm::EcdsaP256 {
            return Err(PkiError::InvalidKey {
                field: field.to_owned(),
                reason: "service-account tokens are signed with ES256: the key must be ECDSA P-256",
            });
        }
        Ok(())
    }

    /// Writes the bundle to `path` with mode 0600, atomically: it goes to a new file in
    /// the same directory first (0600 from its creation, so the secrets are never
    /// readable by others, whatever the umask), is synced, and is renamed over `path`.
    /// An existing file at `path` is replaced; refusing to is the caller's choice.
    pub fn write_to(&self, path: impl AsRef<Path>) -> Result<(), PkiError> {
        write_private_file(path.as_ref(), self.to_yaml()?.as_bytes())
    }

    /// Reads and [checks](Self::validate) a bundle written by [`Self::write_to`].
    pub fn read_from(path: impl AsRef<Path>) -> Result<Self, PkiError> {
        let path = path.as_ref();
        let yaml = fs::read_to_string(path).map_err(|source| PkiError::Io {
            op: "read",
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml(&yaml).map_err(|source| PkiError::File {
            path: PathBuf::from(path),
            source: Box::new(source),
        })
    }
}

impl fmt::Display for SecretsBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "secrets bundle of cluster {}: os CA {}, kubernetes CA {}, aggregator CA {}, etcd CA {}",
            self.cluster.id,
            self.certs.os,
            self.certs.k8s,
            self.certs.k8s_aggregator,
            self.certs.etcd
        )
    }
}

/// serde quotes a string it did not expect (`invalid type: string "...", expected struct
/// CertAndKey`); in a bundle, that string may be a private key pasted one level off.
fn redact_quoted_strings(message: &str) -> String {
    const OPEN: &str = "string \"";
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(OPEN) {
        let start = at + OPEN.len();
        out.push_str(&rest[..start]);
        out.push_str(REDACTED);
        // The value is Debug-escaped: it ends at the first quote not after a backslash.
        let value = &rest[start..];
        let mut escaped = false;
        let end = value.char_indices().find_map(|(i, c)| match c {
            '\\' if !escaped => {
                escaped = true;
                None
            }
            '"' if !escaped => Some(i),
            _ => {
                escaped = false;
                None
            }
        });
        rest = end.map_or("", |end| &value[end..]);
    }
    out.push_str(rest);
    out
}

fn decode_32(value: &str, field: &str) -> Result<[u8; CLUSTER_BYTES], PkiError> {
    // Fixed reasons: the decoder's own would quote the offending byte of a secret.
    let invalid = |reason: String| PkiError::InvalidField {
        field: field.to_owned(),
        reason,
    };
    let bytes = BASE64
        .decode(value)
        .map_err(|_| invalid("is not standard base64".to_owned()))?;
    <[u8; CLUSTER_BYTES]>::try_from(bytes.as_slice()).map_err(|_| {
        invalid(format!(
            "must be {CLUSTER_BYTES} bytes, is {} bytes",
            bytes.len()
        ))
    })
}

/// `len` characters from [a-z0-9], uniformly: bytes from 252 up are redrawn, since 256
/// is not a multiple of 36.
fn random_token_chars(len: usize) -> Result<String, PkiError> {
    let mut out = String::with_capacity(len);
    while out.len() < len {
        for b in random_bytes::<32>()? {
            if out.len() == len {
                break;
            }
            if usize::from(b) < 252 {
                out.push(char::from(TOKEN_ALPHABET[usize::from(b) % 36]));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_well_formed() {
        for _ in 0..100 {
            let token = BootstrapToken::generate().unwrap();
            assert!(token.is_well_formed(), "{}", token.0);
        }
        assert!(!BootstrapToken("abcdef.0123456789abcdeF".into()).is_well_formed());
        assert!(!BootstrapToken("abcdef0123456789abcdef".into()).is_well_formed());
        assert!(!BootstrapToken("abcde.0123456789abcdefg".into()).is_well_formed());
    }

    #[test]
    fn quoted_strings_are_redacted() {
        assert_eq!(
            redact_quoted_strings(
                r#"certs.os: invalid type: string "-----BEGIN PRIVATE KEY-----\nMC4\"x\\", expected struct CertAndKey at line 3"#
            ),
            r#"certs.os: invalid type: string "<redacted>", expected struct CertAndKey at line 3"#
        );
        assert_eq!(
            redact_quoted_strings(r#"a string "cut"#),
            r#"a string "<redacted>"#
        );
        assert_eq!(
            redact_quoted_strings("unknown field `x`"),
            "unknown field `x`"
        );
    }

    #[test]
    fn token_debug_hides_the_secret() {
        let token = BootstrapToken("abcdef.0123456789abcdef".into());
        let debug = format!("{token:?}");
        assert!(debug.contains("abcdef"), "{debug}");
        assert!(!debug.contains("0123456789abcdef"), "{debug}");
    }
}
