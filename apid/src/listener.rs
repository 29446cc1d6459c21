//! Accepting connections: TCP, then a TLS 1.3 handshake with whatever server
//! configuration is current (maintenance or cluster: it can change while the process
//! runs), then the caller's identity read once from its certificate.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use basalt_api::tls;
use basalt_pki::Role;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

use crate::identity::{MaintenanceIdentity, NodeIdentity};
use crate::ApidError;

/// A handshake that takes longer is dropped: a client that connects and says nothing
/// must not hold a slot.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; more connections wait in the kernel's backlog.
const MAX_HANDSHAKES: usize = 256;

/// Who is calling, as established by the TLS handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The certificate's common name; empty without a certificate.
    pub subject: String,
    /// The roles in the certificate's Organization values (unknown values ignored).
    pub roles: Vec<Role>,
    /// False for a connection without a client certificate (maintenance mode).
    pub authenticated: bool,
}

impl Peer {
    fn from_certificate(addr: SocketAddr, der: &[u8]) -> Peer {
        let mut peer = Peer {
            addr,
            subject: String::new(),
            roles: Vec::new(),
            authenticated: true,
        };
        // rustls has verified the chain already; a certificate x509-parser cannot read
        // simply carries no roles.
        if let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) {
            let subject = cert.subject();
            peer.subject = subject
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .next()
                .unwrap_or_default()
                .to_string();
            peer.roles = subject
                .iter_organization()
                .filter_map(|o| o.as_str().ok()?.parse().ok())
                .collect();
        }
        peer
    }

    /// For logs: `admin@127.0.0.1:4711` or `anonymous@...`.
    pub fn who(&self) -> String {
        if self.authenticated {
            format!("{}@{}", self.subject, self.addr)
        } else {
            format!("anonymous@{}", self.addr)
        }
    }
}

fn base_config() -> Result<rustls::ConfigBuilder<ServerConfig, rustls::WantsVerifier>, ApidError> {
    Ok(ServerConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls::TlsError::Rustls)?)
}

fn finish(mut config: ServerConfig) -> Arc<ServerConfig> {
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// Maintenance mode: a self-signed certificate, no client certificate asked for.
pub fn maintenance_config(identity: &MaintenanceIdentity) -> Result<Arc<ServerConfig>, ApidError> {
    let config = base_config()?
        .with_no_client_auth()
        .with_single_cert(
            tls::certs_from_pem("maintenance certificate", &identity.cert.crt)?,
            tls::key_from_pem(&identity.cert.key)?,
        )
        .map_err(tls::TlsError::Rustls)?;
    Ok(finish(config))
}

/// Normal operation: a client certificate from the OS CA is required.
pub fn cluster_config(identity: &NodeIdentity) -> Result<Arc<ServerConfig>, ApidError> {
    let mut roots = RootCertStore::empty();
    for cert in tls::certs_from_pem("OS CA", &identity.ca)? {
        roots.add(cert).map_err(tls::TlsError::Rustls)?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), tls::provider())
        .build()
        .map_err(|e| tls::TlsError::Verifier(e.to_string()))?;
    let config = base_config()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            tls::certs_from_pem("server certificate", &identity.server.crt)?,
            tls::key_from_pem(&identity.server.key)?,
        )
        .map_err(tls::TlsError::Rustls)?;
    Ok(finish(config))
}

/// An accepted, authenticated connection.
#[derive(Debug)]
pub struct ApidStream {
    inner: TlsStream<TcpStream>,
    peer: Arc<Peer>,
}

impl Connected for ApidStream {
    type ConnectInfo = Arc<Peer>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.peer.clone()
    }
}

impl AsyncRead for ApidStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ApidStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Accepts connections until `cancel`, handing each authenticated one to `out` (for
/// tonic's `serve_with_incoming`; public for the benchmark's bare server). A failed
/// handshake (wrong CA, expired or missing certificate) is logged and closed: the
/// request never reaches the API.
pub async fn accept(
    listener: TcpListener,
    tls: watch::Receiver<Arc<ServerConfig>>,
    out: mpsc::Sender<io::Result<ApidStream>>,
    cancel: CancellationToken,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => return,
            permit = handshakes.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (tcp, addr) = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.borrow().clone());
        let out = out.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let peer = match stream.get_ref().1.peer_certificates() {
                        Some([leaf, ..]) => Peer::from_certificate(addr, leaf),
                        _ => Peer {
                            addr,
                            subject: String::new(),
                            roles: Vec::new(),
                            authenticated: false,
                        },
                    };
                    let stream = ApidStream {
                        inner: stream,
                        peer: Arc::new(peer),
                    };
                    let _ = out.send(Ok(stream)).await;
                }
                Ok(Err(e)) => tracing::info!(peer = %addr, error = %e, "TLS handshake refused"),
                Err(_) => tracing::info!(peer = %addr, "TLS handshake timed out"),
            }
        });
    }
}
