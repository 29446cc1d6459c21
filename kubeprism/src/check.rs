//! The active health-check task of one upstream: a TCP connect, or an HTTPS
//! `GET /readyz`, bounded by a timeout, at the interval the health state machine asks for
//! (with a little jitter, so that the nodes of a cluster do not check in step).
//!
//! HTTPS checks keep their connection open between checks (HTTP/1.1 keep-alive): one
//! TLS handshake per upstream per node instead of one per check, which matters to an
//! API server that a thousand nodes check. The open connection is also a signal of its
//! own: when the server's process dies, its kernel closes the connection, and the next
//! check runs at once instead of at the end of the interval.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::balance::Rng;
use crate::config::{Check, HttpsCheck};
use crate::error::is_local;
use crate::shared::Shared;
use crate::upstream::Upstream;
use crate::CheckError;

/// The most of a `/readyz` answer that is read (kube-apiserver's lists its checks, a
/// few KiB when verbose); a longer one fails the check.
const MAX_BODY: usize = 64 * 1024;

/// Runs checks until the upstream moves past `epoch` (it was removed, or another task
/// took over).
pub(crate) async fn run(upstream: Arc<Upstream>, shared: &Shared, epoch: u64) {
    let config = &shared.config.health;
    let mut prober = Prober {
        check: config.check.clone(),
        kept: None,
    };
    let mut rng = Rng::new(crate::shared::seed() ^ u64::from(upstream.addr.port()));
    while upstream.epoch() == epoch {
        let started = Instant::now();
        let result = match tokio::time::timeout(config.timeout, prober.probe(&upstream)).await {
            Ok(result) => result,
            Err(_) => Err(CheckError::Timeout(
                u64::try_from(config.timeout.as_millis()).unwrap_or(u64::MAX),
            )),
        };
        if upstream.epoch() != epoch {
            return;
        }
        if let Err(e @ CheckError::Local(_)) = &result {
            shared.note_short_of_resources(format!("check of {}: {e}", upstream.name));
        }
        let wait = jitter(upstream.on_check(result, started.elapsed()), &mut rng);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = upstream.kick.notified() => {}
            () = prober.closed() => {
                // Not sooner than a down upstream's interval: a server that closes every
                // connection must not turn the checks into a loop.
                let soonest = started + config.thresholds.interval_down;
                tokio::time::sleep_until(soonest.into()).await;
            }
        }
    }
}

/// `wait` made up to a tenth shorter, at random.
fn jitter(wait: Duration, rng: &mut Rng) -> Duration {
    let tenth = u64::try_from(wait.as_micros() / 10).unwrap_or(0);
    wait.saturating_sub(Duration::from_micros(rng.next_u64() % tenth.max(1)))
}

/// A kept-alive HTTPS connection: its request handle and the task driving it.
struct Kept {
    sender: SendRequest<Empty<Bytes>>,
    driver: JoinHandle<()>,
}

impl Drop for Kept {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

struct Prober {
    check: Check,
    kept: Option<Kept>,
}

impl Prober {
    async fn probe(&mut self, upstream: &Upstream) -> Result<(), CheckError> {
        match &self.check {
            Check::Tcp => connect(upstream).await.map(drop),
            Check::Https(https) => {
                // Taken out while in use: a check cut short by its timeout drops the
                // connection with it, and the next check starts on a fresh one.
                let mut kept = match self.kept.take() {
                    Some(kept) if !kept.sender.is_closed() => kept,
                    _ => handshake(upstream, https).await?,
                };
                let (result, reusable) =
                    readyz(&mut kept.sender, host_of(&upstream.name), https).await;
                if reusable {
                    self.kept = Some(kept);
                }
                result
            }
        }
    }

    /// Completes when the kept connection closes; never when there is none.
    async fn closed(&mut self) {
        match &mut self.kept {
            Some(kept) => {
                let _ = (&mut kept.driver).await;
                self.kept = None;
            }
            None => std::future::pending().await,
        }
    }
}

async fn connect(upstream: &Upstream) -> Result<TcpStream, CheckError> {
    TcpStream::connect(upstream.addr).await.map_err(|e| {
        use std::io::ErrorKind::{ConnectionRefused, ConnectionReset};
        if is_local(&e) {
            return CheckError::Local(e.to_string());
        }
        match e.kind() {
            ConnectionRefused | ConnectionReset => CheckError::Refused(e.to_string()),
            _ => CheckError::Connect(e.to_string()),
        }
    })
}

/// The host part of `host:port` (brackets of an IPv6 literal removed).
fn host_of(name: &str) -> &str {
    let host = name.rsplit_once(':').map_or(name, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// A new TCP + TLS + HTTP/1.1 connection to the upstream.
async fn handshake(upstream: &Upstream, check: &HttpsCheck) -> Result<Kept, CheckError> {
    let tcp = connect(upstream).await?;
    let _ = tcp.set_nodelay(true);
    let host = host_of(&upstream.name);
    let server_name = ServerName::try_from(host.to_string())
        .map_err(|e| CheckError::Tls(format!("server name {host:?}: {e}")))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(&check.tls));
    let tls = connector
        .connect(server_name, tcp)
        .await
        .map_err(|e| CheckError::Tls(e.to_string()))?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| CheckError::Http(e.to_string()))?;
    let name = upstream.name.clone();
    let driver = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(upstream = %name, error = %e, "health-check connection ended");
        }
    });
    Ok(Kept { sender, driver })
}

/// One `GET` on the kept connection; returns the verdict and whether the connection can
/// carry the next check.
async fn readyz(
    sender: &mut SendRequest<Empty<Bytes>>,
    host: &str,
    check: &HttpsCheck,
) -> (Result<(), CheckError>, bool) {
    let http = |e: hyper::Error| CheckError::Http(e.to_string());
    let request = http::Request::get(check.path.as_str())
        .header(http::header::HOST, host)
        .header(http::header::USER_AGENT, "basalt-kubeprism")
        .body(Empty::new());
    let request = match request {
        Ok(request) => request,
        Err(e) => return (Err(CheckError::Http(e.to_string())), false),
    };
    if let Err(e) = sender.ready().await {
        return (Err(http(e)), false);
    }
    let answer = match sender.send_request(request).await {
        Ok(answer) => answer,
        Err(e) => return (Err(http(e)), false),
    };
    let status = answer.status().as_u16();
    let keep_alive = !answer
        .headers()
        .get_all(http::header::CONNECTION)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    // Read to the end, so that the connection is ready for the next request.
    if let Err(e) = Limited::new(answer.into_body(), MAX_BODY).collect().await {
        return (
            Err(CheckError::Http(format!("reading the answer: {e}"))),
            false,
        );
    }
    let verdict = match status {
        200 => Ok(()),
        // The server is up and serving TLS but refuses anonymous `/readyz` (anonymous
        // auth off, or RBAC changed): readiness cannot be seen, and counting it down
        // would take every upstream out. A client certificate in the check fixes this.
        401 | 403 => Ok(()),
        code => Err(CheckError::NotReady(code)),
    };
    (verdict, keep_alive)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(host_of("10.0.0.1:6443"), "10.0.0.1");
        assert_eq!(host_of("[fd00::1]:6443"), "fd00::1");
        assert_eq!(host_of("api.example.org:443"), "api.example.org");
    }

    #[test]
    fn jitter_shortens_by_at_most_a_tenth() {
        let mut rng = Rng::new(7);
        let wait = Duration::from_secs(1);
        let waits: Vec<_> = (0..100).map(|_| jitter(wait, &mut rng)).collect();
        assert!(waits.iter().all(|w| *w <= wait && *w > wait * 9 / 10));
        assert!(waits.iter().any(|w| *w != waits[0]), "no jitter at all");
        assert_eq!(jitter(Duration::ZERO, &mut rng), Duration::ZERO);
    }
}
