//! A bounded ring of output lines per service, and the streams that read it.
//!
//! The writer (the service's output pump) never waits for readers: it appends under a
//! short lock and bumps a `watch` counter. A reader keeps its own position; when the ring
//! has moved past it, the reader skips ahead and says how many lines it missed. Memory is
//! bounded by the ring alone, however slow the readers are.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::sync::watch;

use crate::parts::ByteStream;

/// How much output a service keeps; the oldest lines are dropped first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    pub max_lines: usize,
    pub max_bytes: usize,
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits {
            max_lines: 5_000,
            max_bytes: 1 << 20,
        }
    }
}

/// Longest line kept as one; the output pump cuts longer ones.
pub(crate) const MAX_LINE: usize = 16 * 1024;

/// Most lines one stream chunk carries: a reader far behind catches up in several chunks
/// instead of one copy of the whole ring.
const MAX_LINES_PER_CHUNK: usize = 256;

#[derive(Debug)]
struct Ring {
    /// Each line ends with `\n`.
    lines: VecDeque<Bytes>,
    /// Sequence number of `lines[0]`; line numbers only grow.
    first_seq: u64,
    bytes: usize,
}

impl Ring {
    fn end_seq(&self) -> u64 {
        self.first_seq + self.lines.len() as u64
    }
}

#[derive(Debug)]
pub(crate) struct LogBuffer {
    ring: Mutex<Ring>,
    limits: LogLimits,
    /// The sequence number after the newest line.
    end: watch::Sender<u64>,
}

impl LogBuffer {
    pub(crate) fn new(limits: LogLimits) -> Self {
        LogBuffer {
            ring: Mutex::new(Ring {
                lines: VecDeque::new(),
                first_seq: 0,
                bytes: 0,
            }),
            limits,
            end: watch::channel(0).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        // A panic while holding this lock leaves the ring consistent (pushes and pops are
        // single operations), so a poisoned lock is still usable.
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends one line; a `\n` is added when it has none.
    pub(crate) fn push(&self, line: &[u8]) {
        let mut owned = BytesMut::with_capacity(line.len() + 1);
        owned.extend_from_slice(line);
        if !line.ends_with(b"\n") {
            owned.extend_from_slice(b"\n");
        }
        let line = owned.freeze();
        let end = {
            let mut ring = self.lock();
            ring.bytes += line.len();
            ring.lines.push_back(line);
            while ring.lines.len() > self.limits.max_lines.max(1)
                || (ring.bytes > self.limits.max_bytes && ring.lines.len() > 1)
            {
                let Some(old) = ring.lines.pop_front() else {
                    break;
                };
                ring.bytes -= old.len();
                ring.first_seq += 1;
            }
            ring.end_seq()
        };
        self.end.send_replace(end);
    }

    /// Lines from `cursor` on, at most [`MAX_LINES_PER_CHUNK`], as one chunk; a cursor the
    /// ring has moved past first gets a marker line with the count of lost lines. Returns
    /// the chunk (empty when there is nothing new) and the new cursor.
    fn read_from(&self, cursor: u64) -> (Bytes, u64) {
        let ring = self.lock();
        let mut out = BytesMut::new();
        let mut cursor = cursor;
        if cursor < ring.first_seq {
            out.extend_from_slice(
                format!("[... {} lines dropped]\n", ring.first_seq - cursor).as_bytes(),
            );
            cursor = ring.first_seq;
        }
        let skip = usize::try_from(cursor - ring.first_seq).unwrap_or(usize::MAX);
        for line in ring.lines.iter().skip(skip).take(MAX_LINES_PER_CHUNK) {
            out.extend_from_slice(line);
            cursor += 1;
        }
        (out.freeze(), cursor)
    }

    /// The position `tail` lines before the newest (`None`: the oldest kept line).
    fn tail_start(&self, tail: Option<usize>) -> u64 {
        let ring = self.lock();
        match tail {
            None => ring.first_seq,
            Some(n) => ring.end_seq().saturating_sub(n as u64).max(ring.first_seq),
        }
    }

    /// The last `tail` lines, then, with `follow`, new lines until the stream is dropped.
    pub(crate) fn stream(self: &Arc<Self>, follow: bool, tail: Option<usize>) -> ByteStream {
        let mut changes = self.end.subscribe();
        let cursor = self.tail_start(tail);
        // Without follow the stream ends at the newest line of the moment it was asked for.
        let stop_at = (!follow).then(|| *changes.borrow_and_update());
        let state = (Arc::clone(self), changes, cursor);
        futures::stream::unfold(state, move |(buffer, mut changes, cursor)| async move {
            loop {
                if stop_at.is_some_and(|stop| cursor >= stop) {
                    return None;
                }
                let (chunk, next) = buffer.read_from(cursor);
                if !chunk.is_empty() {
                    return Some((Ok(chunk), (buffer, changes, next)));
                }
                // Nothing new: wait for the writer. The sender lives as long as the
                // buffer, which this stream holds, so `changed` cannot fail here.
                if changes.changed().await.is_err() {
                    return None;
                }
            }
        })
        .boxed()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The whole text of a stream that ends.
    pub(crate) async fn collect(stream: ByteStream) -> String {
        let chunks: Vec<_> = stream.collect().await;
        let bytes: Vec<u8> = chunks
            .into_iter()
            .flat_map(|c| c.unwrap().to_vec())
            .collect();
        String::from_utf8(bytes).unwrap()
    }

    #[tokio::test]
    async fn keeps_the_newest_lines_within_limits() {
        let log = Arc::new(LogBuffer::new(LogLimits {
            max_lines: 3,
            max_bytes: 1 << 20,
        }));
        for i in 0..5 {
            log.push(format!("line {i}").as_bytes());
        }
        assert_eq!(
            collect(log.stream(false, None)).await,
            "line 2\nline 3\nline 4\n"
        );
        assert_eq!(collect(log.stream(false, Some(1))).await, "line 4\n");
        assert_eq!(collect(log.stream(false, Some(0))).await, "");

        let bytes = Arc::new(LogBuffer::new(LogLimits {
            max_lines: 100,
            max_bytes: 10,
        }));
        bytes.push(b"aaaa\n");
        bytes.push(b"bbbb");
        bytes.push(b"cccc");
        assert_eq!(collect(bytes.stream(false, None)).await, "bbbb\ncccc\n");
    }

    #[tokio::test]
    async fn a_reader_left_behind_skips_ahead_with_a_marker() {
        let log = Arc::new(LogBuffer::new(LogLimits {
            max_lines: 2,
            max_bytes: 1 << 20,
        }));
        log.push(b"a");
        log.push(b"b");
        let mut stream = log.stream(true, None);
        assert_eq!(stream.next().await.unwrap().unwrap(), "a\nb\n");
        for line in ["c", "d", "e", "f"] {
            log.push(line.as_bytes());
        }
        assert_eq!(
            stream.next().await.unwrap().unwrap(),
            "[... 2 lines dropped]\ne\nf\n"
        );
        log.push(b"g");
        assert_eq!(stream.next().await.unwrap().unwrap(), "g\n");
    }
}
