//! Zero-copy proxying with `splice(2)`: socket → pipe → socket, so payload bytes stay in
//! the kernel. Readiness comes from tokio (`readable`/`writable` + `try_io`, which clears
//! the readiness when the syscall says `EAGAIN`); the sockets are already non-blocking
//! and the pipe is opened non-blocking, so no call here blocks a worker thread.
//!
//! A pipe is held only while bytes are in flight: taken from a small shared pool when
//! data arrives and given back once it is drained. An idle connection (kubelet watches
//! sit idle for minutes) costs no pipe and no descriptors beyond its two sockets, and a
//! short connection does not pay for creating and closing two pipes.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, PoisonError};

use rustix::net::Shutdown;
use rustix::pipe::{pipe_with, splice, PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::proxy::add;

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

/// Moves bytes from `from` to `to` until `from` ends, then shuts down `to`'s write half.
pub(crate) async fn pump(from: &TcpStream, to: &TcpStream, counter: &AtomicU64) -> io::Result<u64> {
    let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
    let mut total = 0u64;
    loop {
        from.readable().await?;
        let pipe = take_pipe()?;
        let (pipe_out, pipe_in) = (&pipe.0, &pipe.1);
        let filled = match from.try_io(Interest::READABLE, || {
            Ok(splice(from, None, pipe_in, None, CHUNK, flags)?)
        }) {
            Ok(0) => {
                give_pipe(pipe);
                break;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                give_pipe(pipe);
                continue;
            }
            // Nothing was moved into the pipe: it is still empty.
            Err(e) => {
                give_pipe(pipe);
                return Err(e);
            }
        };
        let mut left = filled;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                Ok(splice(pipe_out, None, to, None, left, flags)?)
            }) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    left -= n;
                    add(counter, n as u64);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The pipe still holds bytes: it is dropped (closed), not pooled.
                Err(e) => return Err(e),
            }
        }
        give_pipe(pipe);
        total += filled as u64;
    }
    // The peer may already be gone; its error shows up in the other direction.
    if let Err(e) = rustix::net::shutdown(to, Shutdown::Write) {
        tracing::debug!(error = %e, "shutting down the write half");
    }
    Ok(total)
}
