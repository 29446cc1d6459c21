//! The active health-check task of one upstream: TCP connect or HTTPS `GET /readyz`,
//! bounded by a timeout, at the interval the health state machine asks for.

use std::sync::Arc;
use std::time::Instant;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{Check, HealthConfig, HttpsCheck};
use crate::http;
use crate::upstream::Upstream;
use crate::CheckError;

/// Runs checks until the upstream moves past `epoch` (it was removed, or another task
/// took over).
pub(crate) async fn run(upstream: Arc<Upstream>, config: HealthConfig, epoch: u64) {
    while upstream.epoch() == epoch {
        let started = Instant::now();
        let result =
            match tokio::time::timeout(config.timeout, probe(&upstream, &config.check)).await {
                Ok(result) => result,
                Err(_) => Err(CheckError::Timeout(
                    u64::try_from(config.timeout.as_millis()).unwrap_or(u64::MAX),
                )),
            };
        if upstream.epoch() != epoch {
            return;
        }
        let wait = upstream.on_check(result, started.elapsed());
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = upstream.kick.notified() => {}
        }
    }
}

async fn probe(upstream: &Upstream, check: &Check) -> Result<(), CheckError> {
    let tcp = TcpStream::connect(upstream.addr).await.map_err(|e| {
        use std::io::ErrorKind::{ConnectionRefused, ConnectionReset};
        match e.kind() {
            ConnectionRefused | ConnectionReset => CheckError::Refused(e.to_string()),
            _ => CheckError::Connect(e.to_string()),
        }
    })?;
    match check {
        Check::Tcp => Ok(()),
        Check::Https(https) => readyz(tcp, host_of(&upstream.name), https).await,
    }
}

/// The host part of `host:port` (brackets of an IPv6 literal removed).
fn host_of(name: &str) -> &str {
    let host = name.rsplit_once(':').map_or(name, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

async fn readyz(tcp: TcpStream, host: &str, check: &HttpsCheck) -> Result<(), CheckError> {
    let server_name = ServerName::try_from(host.to_string())
        .map_err(|e| CheckError::Tls(format!("server name {host:?}: {e}")))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(&check.tls));
    let mut tls = connector
        .connect(server_name, tcp)
        .await
        .map_err(|e| CheckError::Tls(e.to_string()))?;
    let io = |e: std::io::Error| CheckError::Io(e.to_string());
    tls.write_all(&http::request(host, &check.path))
        .await
        .map_err(io)?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    loop {
        if let Some(code) = http::parse_status(&buf).map_err(CheckError::BadResponse)? {
            return if code == 200 {
                Ok(())
            } else {
                Err(CheckError::NotReady(code))
            };
        }
        let n = tls.read(&mut chunk).await.map_err(io)?;
        if n == 0 {
            return Err(CheckError::BadResponse("closed before the status line"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn hosts() {
        assert_eq!(host_of("10.0.0.1:6443"), "10.0.0.1");
        assert_eq!(host_of("[fd00::1]:6443"), "fd00::1");
        assert_eq!(host_of("api.example.org:443"), "api.example.org");
    }
}
