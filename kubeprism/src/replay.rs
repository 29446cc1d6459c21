//! Waiting for an upstream's first answer, with the client's first bytes kept to replay
//! on another upstream.
//!
//! A hung API server (stopped, or wedged) still has a kernel that completes TCP
//! handshakes: the dial succeeds and the client's ClientHello goes into a socket nobody
//! reads. Until the upstream sends its first byte, nothing was answered, so the client's
//! bytes so far can be sent again to another upstream without the client noticing
//! (for TLS: the handshake simply continues with whoever answers). So the bytes are
//! kept (up to [`REPLAY_LIMIT`]) until the first upstream byte arrives; from then on
//! the connection is proxied as usual.

use std::cell::RefCell;
use std::io;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The most of a client's first bytes kept for a replay: a ClientHello is a few hundred
/// bytes, a plain-text request head a few KiB. A client that sends more before any
/// answer is proxied without the safety net.
pub(crate) const REPLAY_LIMIT: usize = 16 * 1024;

/// What the client sent before any upstream answered.
#[derive(Debug, Default)]
pub(crate) struct Held {
    bytes: Vec<u8>,
    /// The client finished sending (its FIN was read).
    client_done: bool,
}

/// How the wait for an upstream's first byte ended.
#[derive(Debug)]
pub(crate) enum Answer {
    /// The upstream sent its first byte, or the client sent more than can be kept (or
    /// nothing at all before closing): proxy from here.
    Proceed,
    /// The upstream said nothing within the deadline after the client's bytes reached
    /// it, or closed first: the reason, for its health.
    Silent(String),
    /// The client went away before anything was answered.
    ClientGone,
}

impl Held {
    /// The bytes kept, to count as sent to the upstream that answers.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Sends the kept bytes (and the client's FIN) to a newly dialed upstream, for the
    /// last upstream tried, which gets no deadline.
    pub async fn resend(&self, upstream: &mut TcpStream) -> io::Result<()> {
        if !self.bytes.is_empty() {
            upstream.write_all(&self.bytes).await?;
        }
        if self.client_done {
            upstream.shutdown().await?;
        }
        Ok(())
    }

    /// Sends the kept bytes to `upstream`, then forwards what the client sends until
    /// the upstream's first byte.
    ///
    /// The upstream is blamed (`Silent`) only for what a healthy server would have
    /// answered: the deadline starts once the client's bytes are a whole first message
    /// (a TLS record, an HTTP request head; a client that sends half of one, or bytes no
    /// server answers, gets no answer from any), and a close before any answer counts
    /// against the upstream only then, or when the client had sent nothing. Past
    /// `retry_by` no other upstream could be tried: a deadline that would end after it
    /// is not set, and this upstream is the last chance.
    pub async fn await_answer(
        &mut self,
        client: &TcpStream,
        upstream: &mut TcpStream,
        timeout: Duration,
        retry_by: std::time::Instant,
    ) -> Answer {
        if let Err(e) = self.resend(upstream).await {
            return Answer::Silent(format!("sending the client's first bytes: {e}"));
        }
        let retry_by = Instant::from_std(retry_by);
        let arm = |held: &Held| {
            let at = Instant::now() + timeout;
            (held.complete() && at < retry_by).then_some(at)
        };
        let mut deadline = arm(self);
        loop {
            let silence = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let mut first = [0u8; 1];
            let blame = self.bytes.is_empty() || self.complete();
            tokio::select! {
                // The answer first: a byte from the upstream settles it.
                biased;
                peeked = upstream.peek(&mut first) => return match peeked {
                    Ok(n) if n > 0 || !blame => Answer::Proceed,
                    Ok(_) => Answer::Silent("closed before answering".into()),
                    Err(_) if !blame => Answer::Proceed,
                    Err(e) => Answer::Silent(format!("before answering: {e}")),
                },
                readable = client.readable(), if !self.client_done => {
                    if readable.is_err() {
                        return Answer::ClientGone;
                    }
                    match self.take_from(client) {
                        Ok(Some(0)) => {
                            self.client_done = true;
                            if self.bytes.is_empty() {
                                return Answer::Proceed;
                            }
                            if upstream.shutdown().await.is_err() {
                                return Answer::Silent("closed before answering".into());
                            }
                        }
                        Ok(Some(n)) => {
                            let new = &self.bytes[self.bytes.len() - n..];
                            if let Err(e) = upstream.write_all(new).await {
                                return Answer::Silent(format!("sending the client's bytes: {e}"));
                            }
                            if deadline.is_none() {
                                deadline = arm(self);
                            }
                        }
                        // Full: the rest stays in the client's socket for the proxy.
                        Ok(None) => return Answer::Proceed,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(_) => return Answer::ClientGone,
                    }
                }
                () = silence => {
                    let ms = timeout.as_millis();
                    return Answer::Silent(format!("no answer {ms} ms after the client's first message"));
                }
            }
        }
    }

    /// Whether the kept bytes hold a whole first message: a TLS record (a ClientHello:
    /// type 22, then a 2-byte version and a 2-byte length) or an HTTP request head.
    fn complete(&self) -> bool {
        match self.bytes.as_slice() {
            [0x16, _, _, hi, lo, rest @ ..] => {
                rest.len() >= usize::from(u16::from_be_bytes([*hi, *lo]))
            }
            [0x16, ..] | [] => false,
            head => head.windows(4).any(|w| w == b"\r\n\r\n"),
        }
    }

    /// Reads what the client has into the kept bytes: `Some(n)` bytes read (0: the
    /// client finished sending), `None` when [`REPLAY_LIMIT`] is reached.
    fn take_from(&mut self, client: &TcpStream) -> io::Result<Option<usize>> {
        let room = REPLAY_LIMIT.saturating_sub(self.bytes.len());
        if room == 0 {
            return Ok(None);
        }
        // Read through the thread's scratch buffer, kept at the size read: thousands of
        // clients waiting for their first answer at once hold a ClientHello each, not
        // 16 KiB each (which the allocator would keep after they are gone).
        SCRATCH.with_borrow_mut(|scratch| {
            let n = client.try_read(&mut scratch[..room])?;
            self.bytes.reserve_exact(n);
            self.bytes.extend_from_slice(&scratch[..n]);
            Ok(Some(n))
        })
    }
}

thread_local! {
    /// Per serving thread: where a client's first bytes are read before they are kept.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; REPLAY_LIMIT]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn a_whole_first_message_is_a_tls_record_or_an_http_head() {
        let held = |bytes: &[u8]| Held {
            bytes: bytes.to_vec(),
            client_done: false,
        };
        let mut hello = vec![0x16, 3, 1, 0, 4];
        assert!(!held(&hello).complete(), "a record header alone");
        hello.extend_from_slice(&[1, 0, 0, 0]);
        assert!(held(&hello).complete());
        assert!(!held(&hello[..7]).complete());
        assert!(held(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").complete());
        assert!(!held(b"GET / HTTP/1.1\r\n").complete());
        assert!(!held(b"\0\0\0\0\0").complete());
        assert!(!held(b"").complete());
    }

    #[tokio::test]
    async fn a_client_waiting_holds_what_it_sent_not_the_limit() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (served, _) = listener.accept().await.unwrap();
        client.write_all(&[0x16; 300]).await.unwrap();
        let mut held = Held::default();
        served.readable().await.unwrap();
        assert_eq!(held.take_from(&served).unwrap(), Some(300));
        // What 10,000 clients awaiting their first answer each hold: see the bench's
        // idle memory (16 KiB each took it from 27 to 185 MiB).
        assert!(held.bytes.capacity() < 1024, "{}", held.bytes.capacity());
        assert_eq!(held.len(), 300);
    }
}
