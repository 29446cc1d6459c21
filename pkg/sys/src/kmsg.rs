//! The kernel log, `/dev/kmsg`: one record per read. A follower waits for new records on
//! the runtime's reactor (the device supports poll), so it costs nothing while the
//! kernel is quiet and sees a record as soon as it is logged.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Room for the longest record: the kernel's limit is 2 KiB a record (PRINTK_MESSAGE_MAX
/// plus the header), and a read with a buffer too small for the next record fails with
/// EINVAL.
pub const RECORD_MAX: usize = 8192;

/// Opens the kernel log for reading from its oldest kept record, without blocking.
pub fn open(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
}

/// The next record if there is one now; `None` when the reader has them all. Records the
/// kernel overwrote before they were read (EPIPE) are skipped.
pub fn read_record(file: &File, buf: &mut [u8]) -> io::Result<Option<String>> {
    match read_one(file, buf) {
        Ok(record) => Ok(Some(record)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

/// One record, or WouldBlock when there is none now.
fn read_one(mut file: &File, buf: &mut [u8]) -> io::Result<String> {
    loop {
        match file.read(buf) {
            Ok(0) => return Err(io::ErrorKind::WouldBlock.into()),
            Ok(n) => {
                let record = buf.get(..n).unwrap_or_default();
                return Ok(String::from_utf8_lossy(record).into_owned());
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Follows the log: [`Follow::next`] waits for the next record.
#[derive(Debug)]
pub struct Follow {
    fd: AsyncFd<File>,
    buf: Vec<u8>,
}

impl Follow {
    /// Follows from where `file` (opened with [`open`]) is. Needs a tokio runtime.
    pub fn new(file: File) -> io::Result<Self> {
        #[allow(unsafe_code)]
        // SAFETY: registering promises that the descriptor stays open, and is the one
        // `as_raw_fd` returns, for as long as the `AsyncFd` holds it. The `AsyncFd` owns the
        // `File`, which closes its descriptor only when dropped (with the `AsyncFd`, after
        // deregistering) and always returns the same one.
        let fd = unsafe { AsyncFd::register_with_interest(file, Interest::READABLE) }?;
        Ok(Follow {
            fd,
            buf: vec![0; RECORD_MAX],
        })
    }

    /// The next record, when the kernel logs it.
    pub async fn next(&mut self) -> io::Result<String> {
        let Follow { fd, buf } = self;
        loop {
            let mut ready = fd.readable().await?;
            // A WouldBlock clears the readiness, and the loop waits again.
            if let Ok(result) = ready.try_io(|file| read_one(file.get_ref(), buf)) {
                return result;
            }
        }
    }
}
