//! machined: the node. It owns the state, runs every registered controller over it, and
//! serves the Machine and Resource services from it; apid, the API's edge, hands it every
//! call it authorized. A config applied through the API is reconciled by the controllers
//! like any other input.
//!
//! It runs as `/init` of a real kernel ([`boot::metal`]) or as a process on a host;
//! apid runs in its own process ([`edge`]) on a machine, in this one in tests. A node
//! with the OS CA key also runs trustd, which signs the other nodes' API certificates.

pub mod acquire;
mod api;
pub mod boot;
pub mod edge;
mod error;
pub mod events;
pub mod extension_services;
mod node;
pub mod parts;
pub mod roles;
pub mod sequencer;
pub mod trustd;

pub use api::store_config;
pub use error::{BootError, StartError};
pub use node::{EarlyApid, Node, NodeOptions};

/// Logs to stderr (the console, as PID 1): plain unless stderr is a terminal and the
/// process is not PID 1 (a serial console shows escape codes as garbage). PID 1 of a
/// machine moves its log to the kernel's once /dev is there ([`log_to_kmsg`]).
pub fn init_logging(pid1: bool) {
    let ansi = !pid1 && std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_writer(|| LogWriter)
        .with_ansi(ansi)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
}

/// The kernel log, once PID 1 has moved its log there.
static KMSG: std::sync::Mutex<Option<std::fs::File>> = std::sync::Mutex::new(None);
/// The kernel keeps records of about 1 KiB; longer lines are cut.
const KMSG_RECORD: usize = 1000;

/// From now on each log line is a record of the kernel log (which the kernel also prints
/// on the console), so `osctl dmesg` shows the boot with the kernel's own lines. Not for
/// a container node: that log is its host's. Userspace records are rate-limited by
/// default, so this turns the limit off first; where it cannot, the log stays on stderr.
pub fn log_to_kmsg() -> std::io::Result<()> {
    std::fs::write("/proc/sys/kernel/printk_devkmsg", "on\n")?;
    let kmsg = std::fs::OpenOptions::new().write(true).open("/dev/kmsg")?;
    *KMSG
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(kmsg);
    Ok(())
}

/// Writes one formatted line (the fmt layer writes each event at once) to the kernel log
/// or to stderr.
struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let mut kmsg = KMSG
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(file) = kmsg.as_mut() {
            // <6>: info, so that the console shows it at the default log level.
            let mut record = b"<6>machined: ".to_vec();
            record.extend_from_slice(&line[..line.len().min(KMSG_RECORD)]);
            if file.write(&record).is_ok() {
                return Ok(line.len());
            }
        }
        drop(kmsg);
        std::io::stderr().write_all(line)?;
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
