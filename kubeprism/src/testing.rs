//! A stand-in for kube-apiserver, for tests and benchmarks: an HTTP server on loopback
//! that speaks TLS or plain text on the same port (told apart by the first byte), with
//! `/readyz`, and that a test can make slow, unready, hung or dead.
//!
//! Paths: `/readyz` (200 `ok`, or 503 when unready), `/name` (200, body = the backend's
//! name), `/echo` (200 with an `x-backend` header, then echoes every byte until the
//! client closes: a long-lived stream). Every answer except `/echo` closes the
//! connection.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::{Error, Resolver};

/// Names for tests, so that no lookup leaves the machine: `host:port` → an address,
/// changeable while a balancer uses it. Other names fail to resolve.
#[derive(Debug, Clone, Default)]
pub struct TestDns(Arc<Mutex<HashMap<String, SocketAddr>>>);

impl TestDns {
    /// Makes `name` resolve to `addr`, or (`None`) to nothing.
    pub fn set(&self, name: &str, addr: Option<SocketAddr>) {
        let mut names = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match addr {
            Some(addr) => names.insert(name.to_string(), addr),
            None => names.remove(name),
        };
    }

    pub fn resolver(&self) -> Resolver {
        let names = Arc::clone(&self.0);
        Resolver::new(move |name| {
            let found = names
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&name)
                .copied();
            Box::pin(async move {
                found.map(|addr| vec![addr]).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, format!("{name}: unknown name"))
                })
            })
        })
    }
}

/// How a backend behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Ready,
    /// The port is open and serves, but `/readyz` answers 503.
    Unready,
    /// Every answer waits this long first.
    Slow(Duration),
    /// Accepts connections and neither reads nor answers until the mode changes, as a
    /// stopped process (SIGSTOP) whose kernel still completes handshakes.
    Hang,
    /// `/readyz` answers 403, as kube-apiserver does when anonymous requests may not
    /// read it.
    Forbidden,
}

/// A certificate authority for test backends; its PEM goes into an
/// [`crate::HttpsCheck`].
#[derive(Debug)]
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl TestCa {
    pub fn new() -> Result<Self, Error> {
        let tls = |e: rcgen::Error| Error::Tls(e.to_string());
        let key = KeyPair::generate().map_err(tls)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // A name of its own: with rcgen's default name on both, OpenSSL (HAProxy's
        // checks in `make bench`) takes the server's certificate for self-signed.
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "kubeprism test CA");
        let cert = params.self_signed(&key).map_err(tls)?;
        Ok(TestCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// An existing CA (certificate and key, PEM), e.g. a cluster's Kubernetes CA.
    pub fn from_pem(crt: &str, key: &str) -> Result<Self, Error> {
        let tls = |e: rcgen::Error| Error::Tls(e.to_string());
        let key = KeyPair::from_pem(key).map_err(tls)?;
        Ok(TestCa {
            pem: crt.to_string(),
            issuer: Issuer::from_ca_cert_pem(crt, key).map_err(tls)?,
        })
    }

    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A server configuration for `127.0.0.1`, `localhost` and `names`.
    fn server_config(&self, names: &[&str]) -> Result<Arc<rustls::ServerConfig>, Error> {
        let tls = |e: rcgen::Error| Error::Tls(e.to_string());
        let key = KeyPair::generate().map_err(tls)?;
        let sans = ["127.0.0.1", "localhost"].iter().chain(names);
        let params =
            CertificateParams::new(sans.map(|n| n.to_string()).collect::<Vec<_>>()).map_err(tls)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(tls)?;
        let chain = vec![CertificateDer::from(cert.der().to_vec())];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| Error::Tls(e.to_string()))?;
        Ok(Arc::new(config))
    }
}

#[derive(Debug)]
struct Shared {
    name: String,
    mode: watch::Sender<Mode>,
    tls: Arc<rustls::ServerConfig>,
    /// Connections accepted (all paths).
    connections: AtomicU64,
}

/// A running backend on `127.0.0.1`. Dropping it kills it.
#[derive(Debug)]
pub struct TestBackend {
    addr: SocketAddr,
    shared: Arc<Shared>,
    running: Mutex<Option<(CancellationToken, JoinHandle<()>)>>,
}

impl TestBackend {
    /// Starts a backend on a free loopback port, with a certificate for `127.0.0.1` and
    /// `localhost`.
    pub async fn start(name: &str, ca: &TestCa) -> Result<Self, Error> {
        Self::start_for(name, ca, &[]).await
    }

    /// Starts a backend whose certificate also names `names`: for upstreams known by a
    /// DNS name, whose health checks verify it.
    pub async fn start_for(name: &str, ca: &TestCa, names: &[&str]) -> Result<Self, Error> {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            source,
        })?;
        let backend = TestBackend {
            addr,
            shared: Arc::new(Shared {
                name: name.to_string(),
                mode: watch::Sender::new(Mode::Ready),
                tls: ca.server_config(names)?,
                connections: AtomicU64::new(0),
            }),
            running: Mutex::new(None),
        };
        backend.serve(listener);
        Ok(backend)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:PORT`, as an upstream name.
    pub fn upstream(&self) -> String {
        self.addr.to_string()
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn set_mode(&self, mode: Mode) {
        self.shared.mode.send_replace(mode);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Closes the listener and resets every connection; when it returns, the port
    /// refuses connections.
    pub async fn kill(&self) {
        let running = self.running().take();
        if let Some((token, task)) = running {
            token.cancel();
            let _ = task.await;
        }
    }

    /// Listens again on the same port.
    pub async fn revive(&self) -> Result<(), Error> {
        self.kill().await;
        // The old listener closes when its task sees the cancellation; retry briefly.
        let mut tries = 0;
        let listener = loop {
            match bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if tries >= 100 => return Err(e),
                Err(_) => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        self.serve(listener);
        Ok(())
    }

    fn running(&self) -> std::sync::MutexGuard<'_, Option<(CancellationToken, JoinHandle<()>)>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn serve(&self, listener: TcpListener) {
        let token = CancellationToken::new();
        let stop = token.clone();
        let shared = Arc::clone(&self.shared);
        let task = tokio::spawn(async move {
            // Dropping the set aborts every connection task: a killed backend resets.
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => {
                            shared.connections.fetch_add(1, Ordering::Relaxed);
                            conns.spawn(connection(stream, Arc::clone(&shared)));
                        }
                        // Out of descriptors, say: the next accept would fail at once.
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    },
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        *self.running() = Some((token, task));
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        if let Some((token, _)) = self.running().take() {
            token.cancel();
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

async fn connection(stream: TcpStream, shared: Arc<Shared>) {
    until_not_hung(&shared).await;
    let mut first = [0u8; 1];
    let tls = matches!(stream.peek(&mut first).await, Ok(1) if first[0] == 0x16);
    let result = if tls {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&shared.tls));
        match acceptor.accept(stream).await {
            Ok(tls) => serve_http(tls, &shared).await,
            Err(e) => Err(e),
        }
    } else {
        serve_http(stream, &shared).await
    };
    if let Err(e) = result {
        tracing::debug!(backend = %shared.name, error = %e, "test backend connection");
    }
}

/// Returns once the backend is not hung (at once if it is not).
async fn until_not_hung(shared: &Shared) {
    let mut mode = shared.mode.subscribe();
    // The sender lives in `shared`: the wait cannot fail.
    let _ = mode.wait_for(|m| *m != Mode::Hang).await;
}

/// Serves requests on one connection until the client closes it or asks to close it
/// (`connection: close`), as kube-apiserver does with HTTP/1.1 keep-alive.
async fn serve_http<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    shared: &Shared,
) -> io::Result<()> {
    loop {
        let mut head = Vec::with_capacity(256);
        let mut byte = [0u8; 256];
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() > 8192 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "head too long"));
            }
            // Clients send one request and wait for the answer (an echo client waits for
            // the head), so nothing past the head is read here.
            let n = s.read(&mut byte).await?;
            if n == 0 {
                return Ok(());
            }
            head.extend_from_slice(&byte[..n]);
        }
        let mode = *shared.mode.borrow();
        match mode {
            Mode::Slow(d) => tokio::time::sleep(d).await,
            Mode::Hang => until_not_hung(shared).await,
            Mode::Ready | Mode::Unready | Mode::Forbidden => {}
        }
        let mode = *shared.mode.borrow();
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let path = head.split(' ').nth(1).unwrap_or_default().to_string();
        let close = head.contains("\r\nconnection: close\r\n");
        let (status, body) = match path.as_str() {
            "/readyz" if mode == Mode::Unready => ("503 Service Unavailable", "not ready"),
            "/readyz" if mode == Mode::Forbidden => ("403 Forbidden", "forbidden"),
            "/readyz" => ("200 OK", "ok"),
            "/name" => ("200 OK", shared.name.as_str()),
            "/echo" => return echo(s, &shared.name).await,
            _ => ("404 Not Found", "not found"),
        };
        let connection = if close { "close" } else { "keep-alive" };
        let answer = format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: {connection}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(answer.as_bytes()).await?;
        if close {
            return s.shutdown().await;
        }
        s.flush().await?;
    }
}

/// Answers `/echo`: a head, then every byte back until the client closes.
async fn echo<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, name: &str) -> io::Result<()> {
    let header = format!("HTTP/1.1 200 OK\r\nx-backend: {name}\r\n\r\n");
    s.write_all(header.as_bytes()).await?;
    s.flush().await?;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return s.shutdown().await;
        }
        s.write_all(&buf[..n]).await?;
        s.flush().await?;
    }
}

/// A client of the test backend: `GET path` over plain TCP to `addr`; returns the
/// status code and body.
pub async fn get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    get_on(TcpStream::connect(addr).await?, path).await
}

/// `GET path` over TLS to `addr`, verified with `tls` (e.g. an [`crate::HttpsCheck`]'s,
/// made from a [`TestCa`]) as `127.0.0.1`: what kubelet's first request looks like to
/// a balancer (a ClientHello first).
pub async fn get_tls(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    path: &str,
) -> io::Result<(u16, String)> {
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let tls = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await?;
    get_on(tls, path).await
}

/// `GET path` on a connection, which the answer closes.
async fn get_on<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    path: &str,
) -> io::Result<(u16, String)> {
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await?;
    parse_answer(&answer)
}

fn parse_answer(answer: &[u8]) -> io::Result<(u16, String)> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "bad answer");
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let code = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(bad)?;
    Ok((code, body.to_string()))
}

/// Opens an `/echo` stream; returns the stream and the backend's name.
pub async fn echo_stream(addr: SocketAddr) -> io::Result<(TcpStream, String)> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(b"GET /echo HTTP/1.1\r\nhost: test\r\n\r\n")
        .await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    // Byte by byte: the echo must not be read ahead of the head.
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 4096 || s.read(&mut byte).await? == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "bad echo head"));
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head);
    let name = text
        .lines()
        .find_map(|l| l.strip_prefix("x-backend: "))
        .unwrap_or_default()
        .to_string();
    Ok((s, name))
}

/// Sends `payload` on an echo stream and reads it back.
pub async fn echo_round_trip(s: &mut TcpStream, payload: &[u8]) -> io::Result<()> {
    s.write_all(payload).await?;
    let mut back = vec![0u8; payload.len()];
    s.read_exact(&mut back).await?;
    if back != payload {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "echo differs"));
    }
    Ok(())
}

/// What one client of a [`TlsLoad`] got.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub started: Instant,
    /// Until its answer, or until it failed or gave up.
    pub took: Duration,
    /// The name of the backend that answered, or why the client failed.
    pub result: Result<String, String>,
}

/// A steady stream of new TLS clients, each asking `/name` once on its own connection
/// (as kubelet and host-network pods open theirs), until stopped.
#[derive(Debug)]
pub struct TlsLoad {
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    task: JoinHandle<()>,
    give_up: Duration,
}

impl TlsLoad {
    /// One new client every `every` to `addr`, verified with `tls`; a client without
    /// its answer after `give_up` has failed.
    pub fn start(
        addr: SocketAddr,
        tls: Arc<rustls::ClientConfig>,
        every: Duration,
        give_up: Duration,
    ) -> TlsLoad {
        let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::default();
        let record = Arc::clone(&outcomes);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let (tls, record) = (Arc::clone(&tls), Arc::clone(&record));
                tokio::spawn(async move {
                    let started = Instant::now();
                    let answer = tokio::time::timeout(give_up, get_tls(addr, tls, "/name"));
                    let result = match answer.await {
                        Ok(Ok((200, name))) => Ok(name),
                        Ok(Ok((code, _))) => Err(format!("status {code}")),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err(format!("no answer within {give_up:?}")),
                    };
                    let took = started.elapsed();
                    let outcome = Outcome {
                        started,
                        took,
                        result,
                    };
                    record
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(outcome);
                });
            }
        });
        TlsLoad {
            outcomes,
            task,
            give_up,
        }
    }

    /// Stops starting clients, lets the last ones finish, and returns every outcome in
    /// the order they ended.
    pub async fn stop(self) -> Vec<Outcome> {
        self.task.abort();
        tokio::time::sleep(self.give_up + Duration::from_millis(200)).await;
        std::mem::take(&mut *self.outcomes.lock().unwrap_or_else(PoisonError::into_inner))
    }
}
