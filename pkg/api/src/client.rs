//! Connecting to apid: TLS 1.3 with a client certificate, or — for a node in maintenance
//! mode, which has no cluster PKI yet — without one, optionally pinning the SHA-256
//! fingerprint of the node's self-signed certificate.
//!
//! Used by osctl and by apid itself when it forwards a call to another node.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::tls::{self, TlsError};

/// How to authenticate to a node.
#[derive(Clone)]
pub enum ClientTls {
    /// Mutual TLS: the server must present a certificate from `ca` for the name or
    /// address dialled; we present `crt`.
    Mutual {
        ca: String,
        crt: String,
        key: String,
    },
    /// The server must present a certificate from `ca`; we present none (a node asking
    /// trustd for its first certificate).
    ServerOnly { ca: String },
    /// No client certificate and no CA (maintenance mode). With `pin`, the server's
    /// certificate must have exactly this SHA-256 fingerprint.
    Insecure { pin: Option<[u8; 32]> },
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientTls::Mutual { .. } => f.write_str("Mutual { .. }"),
            ClientTls::ServerOnly { .. } => f.write_str("ServerOnly { .. }"),
            ClientTls::Insecure { pin } => f
                .debug_struct("Insecure")
                .field("pin", &pin.map(|p| fingerprint_hex(&p)))
                .finish(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("connecting to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("fingerprint {0:?}: expected 64 hex digits (SHA-256), colons allowed")]
    Fingerprint(String),
}

/// A `host[:port]` target: an IP address (IPv6 in brackets when a port follows) or a
/// DNS name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
}

impl Target {
    pub fn parse(text: &str, default_port: u16) -> Result<Target, ClientError> {
        let bad = |reason: &str| ClientError::Endpoint {
            endpoint: text.to_string(),
            reason: reason.to_string(),
        };
        let text = text.trim();
        let text = text
            .strip_prefix("https://")
            .or_else(|| text.strip_prefix("tcp://"))
            .unwrap_or(text)
            .trim_end_matches('/');
        if text.is_empty() {
            return Err(bad("empty"));
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(Target {
                host: ip.to_string(),
                port: default_port,
            });
        }
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None if after.is_empty() => (host, None),
                None => return Err(bad("expected ':port' after ']'")),
            }
        } else {
            match text.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (text, None),
            }
        };
        let port = match port {
            Some(p) => p
                .parse()
                .map_err(|_| bad("the port is not a number 0-65535"))?,
            None => default_port,
        };
        if host.is_empty() || host.contains(['/', ' ', '[', ']']) {
            return Err(bad("not a host name or address"));
        }
        Ok(Target {
            host: host.to_string(),
            port,
        })
    }

    fn server_name(&self) -> Result<ServerName<'static>, ClientError> {
        ServerName::try_from(self.host.clone()).map_err(|e| ClientError::Endpoint {
            endpoint: self.to_string(),
            reason: format!("not a valid server name: {e}"),
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Parses a fingerprint written as hex, with or without colons.
pub fn parse_fingerprint(text: &str) -> Result<[u8; 32], ClientError> {
    let hex: String = text.chars().filter(|c| *c != ':').collect();
    let bad = || ClientError::Fingerprint(text.to_string());
    if hex.len() != 64 || !hex.is_ascii() {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// SHA-256 of a DER certificate.
pub fn fingerprint(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

/// A fingerprint as lower-case hex pairs joined by colons.
pub fn fingerprint_hex(fp: &[u8; 32]) -> String {
    fp.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The rustls client configuration for `tls`: TLS 1.3 only, ALPN h2.
pub fn client_config(tls: &ClientTls) -> Result<ClientConfig, ClientError> {
    let provider = tls::provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Rustls)?;
    let roots = |ca: &str| -> Result<RootCertStore, ClientError> {
        let mut roots = RootCertStore::empty();
        for cert in tls::certs_from_pem("ca", ca)? {
            roots.add(cert).map_err(TlsError::Rustls)?;
        }
        Ok(roots)
    };
    let mut config = match tls {
        ClientTls::Mutual { ca, crt, key } => builder
            .with_root_certificates(roots(ca)?)
            .with_client_auth_cert(tls::certs_from_pem("crt", crt)?, tls::key_from_pem(key)?)
            .map_err(TlsError::Rustls)?,
        ClientTls::ServerOnly { ca } => builder
            .with_root_certificates(roots(ca)?)
            .with_no_client_auth(),
        ClientTls::Insecure { pin } => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified {
                pin: *pin,
                provider,
            }))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A channel to `target`, connected lazily and re-connected after failures; the TCP
/// connect and TLS handshake together are bounded by `connect_timeout`.
pub fn channel(
    target: &Target,
    tls: &ClientTls,
    connect_timeout: Duration,
) -> Result<Channel, ClientError> {
    let (endpoint, connector) = endpoint(target, tls, connect_timeout)?;
    Ok(endpoint.connect_with_connector_lazy(connector))
}

/// Connects now, so that a wrong address, a refused connection or a failed handshake is
/// reported here rather than at the first call.
pub async fn connect(
    target: &Target,
    tls: &ClientTls,
    connect_timeout: Duration,
) -> Result<Channel, ClientError> {
    let (endpoint, connector) = endpoint(target, tls, connect_timeout)?;
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|source| ClientError::Connect {
            endpoint: target.to_string(),
            source,
        })
}

type Connector = tower::util::BoxCloneSyncService<Uri, TokioIo<TlsStream<TcpStream>>, io::Error>;

fn endpoint(
    target: &Target,
    tls: &ClientTls,
    connect_timeout: Duration,
) -> Result<(Endpoint, Connector), ClientError> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(tls)?));
    let name = target.server_name()?;
    let address = target.to_string();
    // The scheme is plain http: TLS is ours, done in the connector below.
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| ClientError::Endpoint {
            endpoint: address.clone(),
            reason: e.to_string(),
        })?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    let connect = move |_: Uri| {
        let (connector, name, address) = (connector.clone(), name.clone(), address.clone());
        async move {
            let work = async {
                let tcp = TcpStream::connect(&address).await?;
                tcp.set_nodelay(true)?;
                connector.connect(name, tcp).await
            };
            match tokio::time::timeout(connect_timeout, work).await {
                Ok(Ok(stream)) => Ok(TokioIo::new(stream)),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no TLS session with {address} within {connect_timeout:?}"),
                )),
            }
        }
    };
    Ok((
        endpoint,
        tower::util::BoxCloneSyncService::new(tower::service_fn(connect)),
    ))
}

/// Accepts any server certificate (or only the pinned one), but still checks that the
/// server holds its key.
#[derive(Debug)]
struct Unverified {
    pin: Option<[u8; 32]>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.pin {
            Some(pin) if fingerprint(end_entity) != pin => Err(rustls::Error::General(format!(
                "the server certificate's fingerprint is {}, not the pinned {}",
                fingerprint_hex(&fingerprint(end_entity)),
                fingerprint_hex(&pin)
            ))),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not offered".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
