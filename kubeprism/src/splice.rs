//! Zero-copy proxying with `splice(2)`: socket → pipe → socket, so payload bytes stay in
//! the kernel. Readiness comes from tokio (`readable`/`writable` + `try_io`, which clears
//! the readiness when the syscall says `EAGAIN`); the sockets are already non-blocking
//! and the pipe is opened non-blocking, so no call here blocks a worker thread.
//!
//! Small reads are copied through a stack buffer instead (see [`SMALL`]).
//!
//! A pipe is held only while bytes are in flight: taken from a small shared pool when
//! data arrives and given back once it is drained. An idle connection (kubelet watches
//! sit idle for minutes) costs no pipe and no descriptors beyond its two sockets, and a
//! short connection does not pay for creating and closing two pipes.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use rustix::net::Shutdown;
use rustix::pipe::{pipe_with, splice, PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes moved per splice: the default pipe capacity, so moving a socket's data into an
/// empty pipe never stops on a full pipe.
const CHUNK: usize = 64 * 1024;

/// Empty pipes kept for reuse; beyond this many, drained pipes are closed.
const POOL_MAX: usize = 256;

/// (read end, write end)
type Pipe = (OwnedFd, OwnedFd);

static POOL: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());

fn take_pipe() -> io::Result<Pipe> {
    // The pool holds plain descriptors, valid after any panic.
    let pooled = POOL.lock().unwrap_or_else(PoisonError::into_inner).pop();
    match pooled {
        Some(pipe) => Ok(pipe),
        None => Ok(pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?),
    }
}

/// Only ever called with a drained pipe: a pooled pipe must start empty.
fn give_pipe(pipe: Pipe) {
    let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    if pool.len() < POOL_MAX {
        pool.push(pipe);
    }
}

/// Up to this many bytes go through user space (one read, one write) rather than
/// through a pipe: Kubernetes API requests and answers are mostly small, and for them two
/// splices cost more than a copy. A read that fills this much means bulk data is queued,
/// and the direction switches to splice until a splice moves less.
const SMALL: usize = 2048;

/// What one step of a direction did. Each step counts the bytes it wrote.
enum Step {
    Eof,
    /// Nothing to read after all (readiness was stale).
    Again,
    /// `n` bytes read; `unsent`, the tail of them, still to be written.
    Moved {
        n: usize,
        unsent: Vec<u8>,
    },
}

/// Moves bytes from `from` to `to` until `from` ends, then shuts down `to`'s write half
/// unless the other direction has ended already (`ended`, shared by both directions):
/// then both sockets are about to be closed, which sends the FIN anyway.
pub(crate) async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    counter: &AtomicU64,
    ended: &AtomicBool,
) -> io::Result<u64> {
    let mut total = 0u64;
    let mut bulk = false;
    loop {
        from.readable().await?;
        let step = match bulk.then(take_pipe) {
            Some(Ok(pipe)) => splice_once(from, to, pipe, counter).await?,
            Some(Err(e)) => {
                // Out of descriptors for a pipe: this step goes through user space.
                tracing::debug!(error = %e, "no pipe, copying");
                copy_small(from, to, counter)?
            }
            None => copy_small(from, to, counter)?,
        };
        match step {
            Step::Eof => break,
            Step::Again => {}
            Step::Moved { n, unsent } => {
                write_all(to, &unsent, counter).await?;
                total += n as u64;
                bulk = n >= SMALL;
            }
        }
    }
    // Both sockets are empty of unread bytes once both directions saw their end, so
    // the close that follows sends a FIN, not a reset: one syscall less per connection.
    if !ended.swap(true, Ordering::Relaxed) {
        // The peer may already be gone; its error shows up in the other direction.
        if let Err(e) = rustix::net::shutdown(to, Shutdown::Write) {
            tracing::debug!(error = %e, "shutting down the write half");
        }
    }
    Ok(total)
}

/// One read into a stack buffer and one write. Not async: the buffer must not live in
/// the connection's future (10,000 idle connections would each carry it).
fn copy_small(from: &TcpStream, to: &TcpStream, counter: &AtomicU64) -> io::Result<Step> {
    let mut buf = [0u8; SMALL];
    let n = match read_drained(from, SMALL, |n| {
        *n = rustix::io::read(from, &mut buf)?;
        Ok(())
    }) {
        Ok(0) => return Ok(Step::Eof),
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Step::Again),
        Err(e) => return Err(e),
    };
    let written = match to.try_write(&buf[..n]) {
        Ok(w) => w,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    counter.fetch_add(written as u64, Ordering::Relaxed);
    Ok(Step::Moved {
        n,
        unsent: buf[written..n].to_vec(),
    })
}

/// Runs one `read(2)` of at most `max` bytes (`read` stores how many it got) under
/// tokio's readiness. A short read from a TCP socket drained its receive queue: the
/// readiness is cleared on the spot, saving the read that would only answer `EAGAIN`
/// (tokio keeps it set if an event came in meanwhile, so nothing is missed).
fn read_drained(
    from: &TcpStream,
    max: usize,
    read: impl FnOnce(&mut usize) -> io::Result<()>,
) -> io::Result<usize> {
    let mut got = 0;
    let result = from.try_io(Interest::READABLE, || {
        read(&mut got)?;
        if got > 0 && got < max {
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(got)
        }
    });
    match result {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
        other => other,
    }
}

/// Writes what a short write left over (rare: the peer's window was full).
async fn write_all(to: &TcpStream, mut bytes: &[u8], counter: &AtomicU64) -> io::Result<()> {
    while !bytes.is_empty() {
        to.writable().await?;
        match to.try_write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                bytes = &bytes[n..];
                counter.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Splices what is queued on `from` into `pipe` (empty) and all of it on to `to`.
async fn splice_once(
    from: &TcpStream,
    to: &TcpStream,
    pipe: Pipe,
    counter: &AtomicU64,
) -> io::Result<Step> {
    let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
    let (pipe_out, pipe_in) = (&pipe.0, &pipe.1);
    // Unlike a short read, a short splice does not mean the socket is drained (the
    // pipe has only so many slots), so the readiness is left for `EAGAIN` to clear.
    let filled = match from.try_io(Interest::READABLE, || {
        Ok(splice(from, None, pipe_in, None, CHUNK, flags)?)
    }) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            give_pipe(pipe);
            return Ok(Step::Again);
        }
        Err(e) => {
            // Nothing was moved into the pipe: it is still empty.
            give_pipe(pipe);
            return Err(e);
        }
    };
    if filled == 0 {
        give_pipe(pipe);
        return Ok(Step::Eof);
    }
    let mut left = filled;
    while left > 0 {
        to.writable().await?;
        match to.try_io(Interest::WRITABLE, || {
            Ok(splice(pipe_out, None, to, None, left, flags)?)
        }) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                left -= n;
                counter.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // The pipe still holds bytes: it is dropped (closed), not pooled.
            Err(e) => return Err(e),
        }
    }
    give_pipe(pipe);
    Ok(Step::Moved {
        n: filled,
        unsent: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_direction_keeps_no_buffer_in_its_future() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (b, _) = listener.accept().await.unwrap();
        let counter = AtomicU64::new(0);
        let ended = AtomicBool::new(false);
        let future = pump(&a, &b, &counter, &ended);
        // What 10,000 idle connections carry twice each: it must stay small.
        assert!(
            std::mem::size_of_val(&future) < 512,
            "{}",
            std::mem::size_of_val(&future)
        );
    }
}
