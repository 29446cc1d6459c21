//! The balancer's tunables and how upstreams are checked.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::health::Thresholds;
use crate::resolve::Resolver;
use crate::Error;

/// How bytes move between a client and its upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// `splice(2)` through a pipe: the bytes never enter user space (Linux only).
    Splice,
    /// `tokio::io::copy` through user-space buffers, each direction on its own.
    Copy,
}

impl Default for ProxyMode {
    fn default() -> Self {
        if cfg!(target_os = "linux") {
            ProxyMode::Splice
        } else {
            ProxyMode::Copy
        }
    }
}

/// The balancer's configuration (the upstream list is set separately and may change).
#[derive(Debug, Clone)]
pub struct BalancerConfig {
    /// Client connections beyond this are closed at once and counted as refused.
    pub max_connections: usize,
    /// One dial attempt gives up after this long.
    pub dial_timeout: Duration,
    /// Upstreams tried for one client connection before it is closed.
    pub dial_attempts: usize,
    /// All dial attempts for one client connection, and the waits for their first
    /// answers, together take at most this long.
    pub dial_budget: Duration,
    /// An upstream that has not answered this long after the client's first bytes
    /// reached it is suspect, and the bytes are replayed on another upstream (while one
    /// is left to try within the budget; see the `replay` module).
    pub answer_timeout: Duration,
    pub proxy: ProxyMode,
    pub health: HealthConfig,
    /// Threads serving connections (all accepting from one socket); 0: one per core.
    pub threads: usize,
    /// A serving thread keeps polling for this long after it last served a connection
    /// before it sleeps (see the `spin` module); zero: it sleeps at once.
    pub spin: Duration,
    /// Resolves upstream names.
    pub resolver: Resolver,
    /// Resolving one upstream name gives up after this long.
    pub resolve_timeout: Duration,
}

impl Default for BalancerConfig {
    fn default() -> Self {
        BalancerConfig {
            max_connections: 20_000,
            dial_timeout: Duration::from_millis(750),
            dial_attempts: 3,
            dial_budget: Duration::from_secs(2),
            // An API server answers a ClientHello in milliseconds; a false alarm costs
            // one replay and an early check.
            answer_timeout: Duration::from_millis(500),
            proxy: ProxyMode::default(),
            health: HealthConfig::default(),
            threads: 0,
            spin: Duration::from_micros(50),
            resolver: Resolver::system(),
            resolve_timeout: Duration::from_secs(2),
        }
    }
}

/// Active health checks, independent of the data path.
#[derive(Debug, Clone)]
pub struct HealthConfig {
    pub check: Check,
    pub thresholds: Thresholds,
    /// One check gives up after this long (and counts as failed).
    pub timeout: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            check: Check::Tcp,
            thresholds: Thresholds::default(),
            timeout: Duration::from_secs(1),
        }
    }
}

impl HealthConfig {
    /// The defaults for `check`. An HTTPS check runs every 500 ms and times out after
    /// 500 ms, and a timeout is a hard failure: a hung API server (whose kernel still
    /// completes handshakes) is out of rotation within a second even if no client
    /// happens to notice. A `/readyz` on a kept-alive connection costs the API server
    /// little more than a TCP check would.
    pub fn with_check(check: Check) -> Self {
        match check {
            Check::Tcp => HealthConfig::default(),
            Check::Https(_) => HealthConfig {
                check,
                thresholds: Thresholds::default(),
                timeout: Duration::from_millis(500),
            },
        }
    }
}

/// What an active check does.
#[derive(Debug, Clone, Default)]
pub enum Check {
    /// The port accepts a TCP connection.
    #[default]
    Tcp,
    /// `GET /readyz` over TLS answers 200: the API server is ready, not just listening.
    Https(Arc<HttpsCheck>),
}

/// The TLS side of an HTTPS check. An answer of 200 is ready; 401 or 403 (anonymous
/// access to `/readyz` refused) counts as up, since the server answered over TLS
/// verified against the CA, though its readiness cannot be seen without a client
/// certificate; any other status is not ready.
#[derive(Debug)]
pub struct HttpsCheck {
    pub tls: Arc<rustls::ClientConfig>,
    /// The path to GET, `/readyz` for kube-apiserver.
    pub path: String,
}

impl HttpsCheck {
    /// A check that verifies the server against `ca_pem` (one or more PEM certificates)
    /// and presents `client` (certificate chain PEM, private key PEM) when given.
    pub fn new(ca_pem: &[u8], client: Option<(&[u8], &[u8])>) -> Result<Self, Error> {
        let mut roots = rustls::RootCertStore::empty();
        let cas = certs(ca_pem, "CA certificates")?;
        if cas.is_empty() {
            return Err(Error::Pem {
                what: "CA certificates",
                reason: "no certificate found".into(),
            });
        }
        for ca in cas {
            roots
                .add(ca)
                .map_err(|e| Error::Tls(format!("adding a CA certificate: {e}")))?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots);
        let tls = match client {
            None => builder.with_no_client_auth(),
            Some((chain_pem, key_pem)) => {
                let chain = certs(chain_pem, "client certificate")?;
                let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| Error::Pem {
                    what: "client key",
                    reason: e.to_string(),
                })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| Error::Tls(format!("client certificate: {e}")))?
            }
        };
        Ok(HttpsCheck {
            tls: Arc::new(tls),
            path: "/readyz".to_string(),
        })
    }
}

fn certs(pem: &[u8], what: &'static str) -> Result<Vec<CertificateDer<'static>>, Error> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Pem {
            what,
            reason: e.to_string(),
        })
}
