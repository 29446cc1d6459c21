//! Moving bytes both ways between a client and its upstream, counting them, with
//! half-close: when one side finishes sending, the other side's write half is shut down
//! and the opposite direction carries on.

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use crate::config::ProxyMode;
use crate::upstream::Counters;

/// After one direction fails, the other gets this long to finish. A server that sends
/// its last answer and resets the connection (the client was still sending) has left
/// that answer queued on the upstream socket, readable after the reset: it is still
/// delivered. A direction that is only waiting for more (an idle watch) is dropped at
/// the end, so a dead peer does not hold the connection open.
const GRACE: Duration = Duration::from_secs(1);

/// Proxies until both directions end, or one fails and the other finishes within
/// [`GRACE`]; returns the bytes moved (client to upstream, upstream to client).
pub(crate) async fn proxy(
    mode: ProxyMode,
    mut client: TcpStream,
    mut upstream: TcpStream,
    counters: &Counters,
) -> io::Result<(u64, u64)> {
    let moved = directions(mode, &mut client, &mut upstream, counters).await;
    if moved.is_err() {
        // Boxed: the rare paths stay out of every connection's future (see the test).
        Box::pin(linger([&client, &upstream])).await;
    }
    moved
}

async fn directions(
    mode: ProxyMode,
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    counters: &Counters,
) -> io::Result<(u64, u64)> {
    match mode {
        #[cfg(target_os = "linux")]
        ProxyMode::Splice => {
            let ended = std::sync::atomic::AtomicBool::new(false);
            let sent = pin!(crate::splice::pump(
                client,
                upstream,
                &counters.bytes_sent,
                &ended
            ));
            let received = pin!(crate::splice::pump(
                upstream,
                client,
                &counters.bytes_received,
                &ended
            ));
            both(sent, received).await
        }
        _ => {
            let (mut client_read, mut client_write) = client.split();
            let (mut upstream_read, mut upstream_write) = upstream.split();
            // Boxed: copy mode is not the default, and stays out of the future's size.
            Box::pin(async {
                let sent = pin!(copy(
                    &mut client_read,
                    &mut upstream_write,
                    &counters.bytes_sent
                ));
                let received = pin!(copy(
                    &mut upstream_read,
                    &mut client_write,
                    &counters.bytes_received,
                ));
                both(sent, received).await
            })
            .await
        }
    }
}

/// After a failure, lets each peer have what is already queued for it. A socket closed
/// with unread bytes sends a reset, and a reset throws away what its send queue still
/// holds (the end of an answer, say): so each socket is shut down for writing (a FIN
/// after the queued bytes) and read, discarding, until its peer closes too, for at most
/// [`GRACE`].
async fn linger(sockets: [&TcpStream; 2]) {
    for s in sockets {
        // A socket that was reset cannot be shut down, and needs no lingering.
        let _ = rustix::net::shutdown(s, rustix::net::Shutdown::Write);
    }
    let [a, b] = sockets;
    let _ = tokio::time::timeout(GRACE, futures::future::join(drain(a), drain(b))).await;
}

/// Reads and discards until the peer closes or the socket fails.
async fn drain(s: &TcpStream) {
    // On the heap: in the future, it would enlarge every idle connection's future.
    let mut buf = vec![0u8; 4096];
    loop {
        if s.readable().await.is_err() {
            return;
        }
        match s.try_read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// One direction through a user-space buffer, then the half-close. Counted at the end:
/// the copy loop gives no progress figures.
async fn copy(
    from: &mut ReadHalf<'_>,
    to: &mut WriteHalf<'_>,
    counter: &AtomicU64,
) -> io::Result<u64> {
    let n = tokio::io::copy(from, to).await?;
    counter.fetch_add(n, Ordering::Relaxed);
    to.shutdown().await?;
    Ok(n)
}

/// Runs both directions: when one ends, the other runs to its own end; when one fails,
/// the other gets [`GRACE`]. Takes them pinned by the caller: moved in by value, each
/// would be held twice in this future (the argument and its pinned copy).
async fn both<A, B>(mut a: Pin<&mut A>, mut b: Pin<&mut B>) -> io::Result<(u64, u64)>
where
    A: Future<Output = io::Result<u64>>,
    B: Future<Output = io::Result<u64>>,
{
    tokio::select! {
        done = a.as_mut() => match done {
            Ok(n) => Ok((n, b.await?)),
            Err(e) => {
                let _ = Box::pin(tokio::time::timeout(GRACE, b)).await;
                Err(e)
            }
        },
        done = b.as_mut() => match done {
            Ok(n) => Ok((a.await?, n)),
            Err(e) => {
                let _ = Box::pin(tokio::time::timeout(GRACE, a)).await;
                Err(e)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_keeps_its_future_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (upstream, _) = listener.accept().await.unwrap();
        let counters = Counters::default();
        let future = proxy(ProxyMode::Splice, client, upstream, &counters);
        // What each of 10,000 idle connections carries (in a debug build: an optimized
        // one is smaller). A buffer held here would show.
        let size = std::mem::size_of_val(&future);
        println!("proxy future: {size} bytes");
        assert!(size < 1280, "{size}");
    }
}
