//! Moving bytes both ways between a client and its upstream, counting them, with
//! half-close: when one side finishes sending, the other side's write half is shut down
//! and the opposite direction carries on.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::TcpStream;

use crate::config::ProxyMode;
use crate::upstream::Counters;

/// Proxies until both directions end or one fails; returns the bytes moved
/// (client to upstream, upstream to client).
pub(crate) async fn proxy(
    mode: ProxyMode,
    mut client: TcpStream,
    mut upstream: TcpStream,
    counters: &Counters,
) -> io::Result<(u64, u64)> {
    match mode {
        #[cfg(target_os = "linux")]
        ProxyMode::Splice => {
            let ended = std::sync::atomic::AtomicBool::new(false);
            let sent = crate::splice::pump(&client, &upstream, &counters.bytes_sent, &ended);
            let received =
                crate::splice::pump(&upstream, &client, &counters.bytes_received, &ended);
            tokio::try_join!(sent, received)
        }
        _ => {
            // Counted at the end: the copy loop gives no progress figures.
            let (sent, received) =
                tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
            add(&counters.bytes_sent, sent);
            add(&counters.bytes_received, received);
            Ok((sent, received))
        }
    }
}

pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}
