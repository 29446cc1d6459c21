//! Zero-copy proxying with `splice(2)`: socket → pipe → socket, so payload bytes stay in
//! the kernel. Readiness comes from tokio (`readable`/`writable` + `try_io`, which clears
//! the readiness when the syscall says `EAGAIN`); the sockets are already non-blocking
//! and the pipe is opened non-blocking, so no call here blocks a worker thread.
//!
//! The pipe is created on the first byte, not at connect: an idle connection (kubelet
//! watches sit idle for minutes) costs no pipe and no file descriptors beyond its two
//! sockets.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::AtomicU64;

use rustix::net::Shutdown;
use rustix::pipe::{pipe_with, splice, PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::proxy::add;

/// Bytes moved per splice: the default pipe capacity, so moving a socket's data into an
/// empty pipe never stops on a full pipe.
const CHUNK: usize = 64 * 1024;

/// Moves bytes from `from` to `to` until `from` ends, then shuts down `to`'s write half.
pub(crate) async fn pump(from: &TcpStream, to: &TcpStream, counter: &AtomicU64) -> io::Result<u64> {
    let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
    let mut pipe: Option<(OwnedFd, OwnedFd)> = None;
    let mut total = 0u64;
    loop {
        from.readable().await?;
        let (pipe_out, pipe_in) = match &pipe {
            Some(p) => p,
            None => pipe.insert(pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?),
        };
        let filled = match from.try_io(Interest::READABLE, || {
            Ok(splice(from, None, pipe_in, None, CHUNK, flags)?)
        }) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
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
                Err(e) => return Err(e),
            }
        }
        total += filled as u64;
    }
    // The peer may already be gone; its error shows up in the other direction.
    if let Err(e) = rustix::net::shutdown(to, Shutdown::Write) {
        tracing::debug!(error = %e, "shutting down the write half");
    }
    Ok(total)
}
