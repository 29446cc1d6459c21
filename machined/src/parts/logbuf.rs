//! A bounded ring of output lines per service, and the streams that read it.
//!
//! Lines go into an open block; a full block (64 KiB, or 4096 lines) is sealed: its text
//! is compressed with zstd and kept as one buffer. Service output is repetitive, so a
//! sealed block is typically a tenth of its text or less. The ring is bounded by what it
//! holds (compressed blocks plus the open block's text): the oldest block goes first, or,
//! with no sealed block left, the open block's oldest lines.
//!
//! The writer (the service's output pump) never waits for readers: it appends under a
//! short lock and bumps a `watch` counter. A reader keeps its own position (a line
//! number); when the ring has moved past it, the reader skips ahead and says how many
//! lines it missed. Readers decompress outside the lock.

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
    /// Bytes held: compressed blocks, plus the text of the newest, open block.
    pub max_bytes: usize,
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits {
            max_lines: 1_000_000,
            max_bytes: 1 << 20,
        }
    }
}

/// Longest line kept as one; the output pump cuts longer ones.
pub(crate) const MAX_LINE: usize = 16 * 1024;

/// Most lines one stream chunk carries from the open block: a reader far behind catches
/// up in several chunks instead of one copy of the whole ring. A chunk from a sealed
/// block is the rest of that block.
const MAX_LINES_PER_CHUNK: usize = 256;

/// The open block is sealed at this much text...
const BLOCK_BYTES: usize = 64 * 1024;
/// ...or this many lines (each costs a `Bytes` until then).
const BLOCK_LINES: usize = 4096;

/// zstd's default level: fast, and most of the gain on text.
const ZSTD_LEVEL: i32 = 3;

/// Lines `first_seq..first_seq + lines`, their text (each ending with `\n`) compressed.
#[derive(Debug)]
struct Sealed {
    first_seq: u64,
    lines: u64,
    text_len: usize,
    /// zstd frame, or the text itself when it did not compress.
    data: Bytes,
    compressed: bool,
}

impl Sealed {
    fn seal(first_seq: u64, lines: &VecDeque<Bytes>, text_len: usize) -> Self {
        let mut text = Vec::with_capacity(text_len);
        for line in lines {
            text.extend_from_slice(line);
        }
        let (data, compressed) = match zstd::bulk::compress(&text, ZSTD_LEVEL) {
            Ok(packed) if packed.len() < text.len() => (Bytes::from(packed), true),
            // Incompressible (or a zstd error): kept as it is, never lost.
            _ => (Bytes::from(text), false),
        };
        Sealed {
            first_seq,
            lines: lines.len() as u64,
            text_len,
            data,
            compressed,
        }
    }

    fn end_seq(&self) -> u64 {
        self.first_seq + self.lines
    }
}

/// The text of a sealed block, from the copy of its data a reader took.
fn unseal(data: &Bytes, compressed: bool, text_len: usize) -> Bytes {
    if !compressed {
        return data.clone();
    }
    match zstd::bulk::decompress(data, text_len) {
        Ok(text) => Bytes::from(text),
        // Cannot happen with a frame this process made; say so in the stream rather
        // than lose the reader's place.
        Err(error) => Bytes::from(format!("[... a log block could not be read: {error}]\n")),
    }
}

#[derive(Debug)]
struct Ring {
    sealed: VecDeque<Sealed>,
    sealed_bytes: usize,
    /// The newest lines, uncompressed; each ends with `\n`.
    open: VecDeque<Bytes>,
    /// Sequence number of `open[0]`; line numbers only grow.
    open_seq: u64,
    open_bytes: usize,
}

impl Ring {
    fn first_seq(&self) -> u64 {
        self.sealed.front().map_or(self.open_seq, |b| b.first_seq)
    }

    fn end_seq(&self) -> u64 {
        self.open_seq + self.open.len() as u64
    }

    fn held(&self) -> usize {
        self.sealed_bytes + self.open_bytes
    }

    fn append(&mut self, line: Bytes, limits: LogLimits) {
        self.open_bytes += line.len();
        self.open.push_back(line);
        if self.open_bytes >= BLOCK_BYTES || self.open.len() >= BLOCK_LINES {
            let block = Sealed::seal(self.open_seq, &self.open, self.open_bytes);
            self.sealed_bytes += block.data.len();
            self.open_seq = block.end_seq();
            self.sealed.push_back(block);
            self.open.clear();
            self.open_bytes = 0;
        }
        while self.held() > limits.max_bytes
            || self.end_seq() - self.first_seq() > limits.max_lines.max(1) as u64
        {
            if let Some(old) = self.sealed.pop_front() {
                self.sealed_bytes -= old.data.len();
            } else if self.open.len() > 1 {
                if let Some(old) = self.open.pop_front() {
                    self.open_bytes -= old.len();
                    self.open_seq += 1;
                }
            } else {
                break;
            }
        }
    }
}

#[derive(Debug)]
pub(crate) struct LogBuffer {
    ring: Mutex<Ring>,
    limits: LogLimits,
    /// The sequence number after the newest line.
    end: watch::Sender<u64>,
}

/// What a reader takes from the ring under the lock: lines of the open block, or a copy
/// (a reference count) of a sealed block to decompress after.
enum Taken {
    Lines(BytesMut),
    Block {
        data: Bytes,
        compressed: bool,
        text_len: usize,
        skip: u64,
    },
}

impl LogBuffer {
    pub(crate) fn new(limits: LogLimits) -> Self {
        LogBuffer {
            ring: Mutex::new(Ring {
                sealed: VecDeque::new(),
                sealed_bytes: 0,
                open: VecDeque::new(),
                open_seq: 0,
                open_bytes: 0,
            }),
            limits,
            end: watch::channel(0).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        // A panic while holding this lock leaves the ring consistent (each change is
        // done before the counters move), so a poisoned lock is still usable.
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends one line; a `\n` is added when it has none. A `\n` inside makes several
    /// lines (line numbers count `\n`s, in sealed blocks too).
    pub(crate) fn push(&self, line: &[u8]) {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let end = {
            let mut ring = self.lock();
            for piece in line.split(|&b| b == b'\n') {
                let mut owned = BytesMut::with_capacity(piece.len() + 1);
                owned.extend_from_slice(piece);
                owned.extend_from_slice(b"\n");
                ring.append(owned.freeze(), self.limits);
            }
            ring.end_seq()
        };
        self.end.send_replace(end);
    }

    /// Bytes the ring holds (compressed blocks and the open block's text).
    #[cfg(test)]
    pub(crate) fn held_bytes(&self) -> usize {
        self.lock().held()
    }

    /// Lines from `cursor` on, as one chunk; a cursor the ring has moved past first gets
    /// a marker line with the count of lost lines. Returns the chunk (empty when there
    /// is nothing new) and the new cursor.
    fn read_from(&self, cursor: u64) -> (Bytes, u64) {
        let mut out = BytesMut::new();
        let mut cursor = cursor;
        let taken = {
            let ring = self.lock();
            let first = ring.first_seq();
            if cursor < first {
                out.extend_from_slice(
                    format!("[... {} lines dropped]\n", first - cursor).as_bytes(),
                );
                cursor = first;
            }
            if cursor < ring.open_seq {
                let index = ring.sealed.partition_point(|b| b.end_seq() <= cursor);
                match ring.sealed.get(index) {
                    Some(block) => {
                        let taken = Taken::Block {
                            data: block.data.clone(),
                            compressed: block.compressed,
                            text_len: block.text_len,
                            skip: cursor - block.first_seq,
                        };
                        cursor = block.end_seq();
                        taken
                    }
                    None => Taken::Lines(BytesMut::new()),
                }
            } else {
                let skip = usize::try_from(cursor - ring.open_seq).unwrap_or(usize::MAX);
                let mut lines = BytesMut::new();
                for line in ring.open.iter().skip(skip).take(MAX_LINES_PER_CHUNK) {
                    lines.extend_from_slice(line);
                    cursor += 1;
                }
                Taken::Lines(lines)
            }
        };
        match taken {
            Taken::Lines(lines) => out.extend_from_slice(&lines),
            Taken::Block {
                data,
                compressed,
                text_len,
                skip,
            } => {
                let text = unseal(&data, compressed, text_len);
                out.extend_from_slice(after_lines(&text, skip));
            }
        }
        (out.freeze(), cursor)
    }

    /// The position `tail` lines before the newest (`None`: the oldest kept line).
    fn tail_start(&self, tail: Option<usize>) -> u64 {
        let ring = self.lock();
        match tail {
            None => ring.first_seq(),
            Some(n) => ring
                .end_seq()
                .saturating_sub(n as u64)
                .max(ring.first_seq()),
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

/// `text` without its first `skip` lines.
fn after_lines(text: &[u8], skip: u64) -> &[u8] {
    let mut rest = text;
    for _ in 0..skip {
        match rest.iter().position(|&b| b == b'\n') {
            Some(pos) => rest = rest.get(pos + 1..).unwrap_or_default(),
            None => return &[],
        }
    }
    rest
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

    /// 50 MB of repetitive output (a service logging the same kind of line in a loop)
    /// in a 1 MiB ring: it holds at most 1 MiB, keeps far more than 1 MiB of text thanks
    /// to compression, and the tail and a full read are exact.
    #[tokio::test]
    async fn fifty_megabytes_of_output_stay_bounded_and_the_tail_exact() {
        let limits = LogLimits {
            max_lines: usize::MAX,
            max_bytes: 1 << 20,
        };
        let log = Arc::new(LogBuffer::new(limits));
        let line = |i: u64| {
            format!(
                "{i:09} level=info msg=\"reconciled\" object=pod/web-{} took=3ms",
                i % 97
            )
        };
        let mut written = 0usize;
        let mut count = 0u64;
        let mut most_held = 0;
        while written < 50_000_000 {
            let text = line(count);
            written += text.len() + 1;
            log.push(text.as_bytes());
            count += 1;
            if count % 10_000 == 0 {
                most_held = most_held.max(log.held_bytes());
            }
        }
        assert!(most_held <= limits.max_bytes, "held {most_held} bytes");
        assert!(log.held_bytes() <= limits.max_bytes);

        let tail = collect(log.stream(false, Some(100))).await;
        let want: String = (count - 100..count).map(|i| line(i) + "\n").collect();
        assert_eq!(tail, want);

        // Everything kept, in order and whole, across sealed blocks and the open one.
        let all = collect(log.stream(false, None)).await;
        let kept: Vec<&str> = all.lines().collect();
        assert!(
            all.len() > 8 * limits.max_bytes,
            "only {} bytes of text kept in {} bytes",
            all.len(),
            limits.max_bytes
        );
        let first: u64 = kept[0][..9].parse().unwrap();
        assert_eq!(first + kept.len() as u64, count);
        for (n, text) in kept.iter().enumerate() {
            assert_eq!(*text, line(first + n as u64));
        }
    }

    #[tokio::test]
    async fn a_reader_left_behind_by_sealed_blocks_skips_whole_blocks() {
        let log = Arc::new(LogBuffer::new(LogLimits {
            max_lines: 3 * BLOCK_LINES,
            max_bytes: 1 << 20,
        }));
        log.push(b"first");
        let mut stream = log.stream(true, None);
        assert_eq!(stream.next().await.unwrap().unwrap(), "first\n");
        for i in 0..5 * BLOCK_LINES {
            log.push(format!("{i}").as_bytes());
        }
        // Blocks of BLOCK_LINES lines went; the reader is told how many, then reads on
        // from the oldest kept line, inside a sealed block.
        let chunk = stream.next().await.unwrap().unwrap();
        let text = std::str::from_utf8(&chunk).unwrap();
        let (marker, rest) = text.split_once('\n').unwrap();
        let dropped: usize = marker
            .strip_prefix("[... ")
            .and_then(|m| m.strip_suffix(" lines dropped]"))
            .unwrap()
            .parse()
            .unwrap();
        assert!(dropped >= 2 * BLOCK_LINES, "{marker}");
        // Line number n + 1 is the number n: "first" was line 0 and was read.
        assert!(rest.starts_with(&format!("{dropped}\n")), "{}", &rest[..20]);
        // The tail may start inside a sealed block.
        let tail = collect(log.stream(false, Some(BLOCK_LINES + 2))).await;
        assert_eq!(tail.lines().count(), BLOCK_LINES + 2);
        assert_eq!(
            tail.lines().last(),
            Some(&*format!("{}", 5 * BLOCK_LINES - 1))
        );
    }

    #[tokio::test]
    async fn a_line_with_newlines_inside_is_several_lines() {
        let log = Arc::new(LogBuffer::new(LogLimits::default()));
        log.push(b"a\nb\n");
        log.push(b"");
        assert_eq!(collect(log.stream(false, Some(2))).await, "b\n\n");
    }
}
