//! Accepting connections: TCP, then a TLS 1.3 handshake with whatever server
//! configuration is current (maintenance or cluster: it can change while the process
//! runs), then the caller's identity read once from its certificate.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
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
/// must not hold a slot for long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// Handshakes in progress at once from one source (an IPv4 address, an IPv6 /64). A
/// connection over it is closed at once: one host's stalled connections cannot take the
/// slots everyone else needs.
const MAX_HANDSHAKES_PER_SOURCE: usize = 32;
/// Handshakes in progress at once in all; a connection over it is closed at once too.
/// Every connection is accepted and looked at: none waits in the kernel's backlog behind
/// stalled ones.
const MAX_HANDSHAKES: usize = 1024;

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

/// An anonymous connection outlives maintenance mode by this much: long enough to carry
/// the answer to the ApplyConfiguration that ended it. (The gate refuses any new call on
/// it at once.)
const ANONYMOUS_GRACE: Duration = Duration::from_secs(2);

/// An accepted connection, with the identity its handshake established.
pub struct ApidStream {
    inner: TlsStream<TcpStream>,
    peer: Arc<Peer>,
    /// For a connection without a client certificate: resolves a moment after the node
    /// leaves maintenance mode, which ends the connection and every stream on it.
    ends: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl std::fmt::Debug for ApidStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApidStream")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl ApidStream {
    /// Fails once an anonymous connection has outlived maintenance mode. Polling the
    /// token registers the connection's waker, so an idle connection is woken to close.
    fn check_open(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if let Some(ends) = &mut self.ends {
            if ends.as_mut().poll(cx).is_ready() {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "the node left maintenance mode: anonymous connections are closed",
                ));
            }
        }
        Ok(())
    }
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
        let this = self.get_mut();
        this.check_open(cx)?;
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ApidStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check_open(cx)?;
        Pin::new(&mut this.inner).poll_write(cx, buf)
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
        let this = self.get_mut();
        this.check_open(cx)?;
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Where connections come from, for the per-source quota: an IPv4 address (an IPv4 one
/// mapped into IPv6 too), or the /64 of an IPv6 one (a host usually holds a whole /64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    V4(Ipv4Addr),
    V6Prefix(u64),
}

impl Source {
    fn of(ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Source::V4(v4),
            IpAddr::V6(v6) => Source::V6Prefix((u128::from(v6) >> 64) as u64),
        }
    }
}

/// Handshakes in progress per source.
#[derive(Debug, Clone, Default)]
struct Sources(Arc<std::sync::Mutex<HashMap<Source, usize>>>);

impl Sources {
    /// A handshake slot of `ip`'s source, or `None` when it has all of its quota.
    fn take(&self, ip: IpAddr) -> Option<SourceSlot> {
        let source = Source::of(ip);
        let mut counts = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = counts.entry(source).or_insert(0);
        if *count >= MAX_HANDSHAKES_PER_SOURCE {
            return None;
        }
        *count += 1;
        Some(SourceSlot {
            sources: self.clone(),
            source,
        })
    }
}

/// One handshake's place in its source's quota, given back when dropped.
struct SourceSlot {
    sources: Sources,
    source: Source,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut counts = self
            .sources
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.source) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.source);
            }
        }
    }
}

/// Accepts connections until `cancel`, handing each to `out` (for tonic's
/// `serve_with_incoming`; public for the benchmark's bare server). A failed handshake
/// (wrong CA, expired or missing certificate) is logged and closed: the request never
/// reaches the API. A connection without a client certificate (possible in maintenance
/// mode only) is closed when `maintenance_over` is cancelled.
pub async fn accept(
    listener: TcpListener,
    tls: watch::Receiver<Arc<ServerConfig>>,
    out: mpsc::Sender<io::Result<ApidStream>>,
    cancel: CancellationToken,
    maintenance_over: CancellationToken,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let sources = Sources::default();
    loop {
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
        let Some(source_slot) = sources.take(addr.ip()) else {
            tracing::debug!(peer = %addr, "closed: its source has {MAX_HANDSHAKES_PER_SOURCE} handshakes in progress");
            continue;
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            tracing::debug!(peer = %addr, "closed: {MAX_HANDSHAKES} handshakes in progress");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.borrow().clone());
        let out = out.clone();
        let maintenance_over = maintenance_over.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
            drop(source_slot);
            match handshake {
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
                    let ends = (!peer.authenticated).then(|| {
                        Box::pin(async move {
                            maintenance_over.cancelled().await;
                            tokio::time::sleep(ANONYMOUS_GRACE).await;
                        }) as Pin<Box<dyn Future<Output = ()> + Send>>
                    });
                    let stream = ApidStream {
                        inner: stream,
                        peer: Arc::new(peer),
                        ends,
                    };
                    let _ = out.send(Ok(stream)).await;
                }
                Ok(Err(e)) => tracing::info!(peer = %addr, error = %e, "TLS handshake refused"),
                Err(_) => tracing::info!(peer = %addr, "TLS handshake timed out"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_is_an_ipv4_address_or_an_ipv6_64_and_has_a_quota() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            Source::of(ip("10.0.0.1")),
            Source::of(ip("::ffff:10.0.0.1"))
        );
        assert_ne!(Source::of(ip("10.0.0.1")), Source::of(ip("10.0.0.2")));
        assert_eq!(
            Source::of(ip("2001:db8:1:2::1")),
            Source::of(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            Source::of(ip("2001:db8:1:2::1")),
            Source::of(ip("2001:db8:1:3::1"))
        );

        let sources = Sources::default();
        let slots: Vec<_> = (0..MAX_HANDSHAKES_PER_SOURCE)
            .map(|_| sources.take(ip("10.0.0.1")).unwrap())
            .collect();
        assert!(sources.take(ip("10.0.0.1")).is_none());
        assert!(sources.take(ip("10.0.0.2")).is_some());
        drop(slots);
        assert!(sources.take(ip("10.0.0.1")).is_some());
        assert!(
            sources.0.lock().unwrap().is_empty(),
            "returned slots leave no entry"
        );
    }
}
