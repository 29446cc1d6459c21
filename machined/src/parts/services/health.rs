//! Health checks of a running service: a TCP connect, or an HTTP GET on loopback through
//! hyper's client connection (one connection per check: a check is rare, and a kept
//! connection would hide a server that stopped accepting new ones).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::definition::{http_target, HealthCheck, HealthKind};

/// Most of a health answer read: enough for any `/health` body.
const MAX_BODY: usize = 64 * 1024;

/// One check: `Ok` with a short note, or why it failed ("connection refused").
pub(super) async fn check_once(check: &HealthCheck) -> Result<String, String> {
    match tokio::time::timeout(check.timeout, run(&check.kind)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {:?}", check.timeout)),
    }
}

async fn run(kind: &HealthKind) -> Result<String, String> {
    match kind {
        HealthKind::Tcp(address) => {
            connect(*address).await?;
            Ok(format!("connected to {address}"))
        }
        HealthKind::Http { url, expect } => http_get(url, expect.as_deref()).await,
    }
}

async fn connect(address: SocketAddr) -> Result<TcpStream, String> {
    TcpStream::connect(address)
        .await
        .map_err(|e| match e.kind() {
            // "connection refused" rather than "Connection refused (os error 111)".
            std::io::ErrorKind::ConnectionRefused => e.kind().to_string(),
            _ => e.to_string(),
        })
}

async fn http_get(url: &str, expect: Option<&str>) -> Result<String, String> {
    // Checked when the supervisor was made; an error here is still an answer.
    let (address, uri) = http_target(url)?;
    let stream = connect(address).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    // The connection does the I/O while the request and the body are read; it ends
    // with this check (the task is aborted when the guard drops).
    let driver = AbortOnDrop(tokio::spawn(connection));
    let authority = uri
        .authority()
        .map_or_else(|| address.to_string(), ToString::to_string);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = http::Request::get(path)
        .header(http::header::HOST, authority)
        .header(http::header::USER_AGENT, "basalt-machined health check")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    drop(driver);
    if !status.is_success() {
        return Err(format!("GET {url}: {status}"));
    }
    if let Some(expect) = expect {
        let text = String::from_utf8_lossy(&body);
        if !text.contains(expect) {
            let shown: String = text.chars().take(120).collect();
            return Err(format!("GET {url}: the answer lacks {expect:?}: {shown:?}"));
        }
    }
    Ok(format!("GET {url}: {status}"))
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The pause before the next check.
pub(super) fn next_delay(check: &HealthCheck) -> Duration {
    check.interval.max(Duration::from_millis(10))
}
