//! The boot on a real kernel (QEMU or hardware): machined is `/init` of the initramfs.
//! Early mounts, the kernel log, then PID 1's sequences ([`super::pid1`]) with the
//! hardware steps; the machine goes down as the node asks.

use std::path::{Path, PathBuf};

use basalt_sys::Linux;

use super::mounts;
use super::pid1::{self, Machine, FATAL_DELAY};

/// PID 1's main: never returns.
pub fn main() -> ! {
    let sys = Linux;
    let error = super::guard(&sys, FATAL_DELAY, |mounted| {
        mounted.extend(mounts::mount_all(&sys, Path::new("/"), &mounts::early())?);
        if let Err(e) = crate::log_to_kmsg() {
            tracing::warn!(error = %e, "logging to the console only, not the kernel log");
        }
        // The first line in the kernel log: the boot's timeline starts here.
        tracing::info!(mounts = mounted.len(), "machined started as PID 1");
        let runtime = super::runtime()?;
        let machine = Machine {
            hardware: true,
            cmdline: std::fs::read_to_string("/proc/cmdline").unwrap_or_default(),
            cmdline_path: PathBuf::from("/proc/cmdline"),
        };
        runtime.block_on(pid1::boot(mounted, machine))
    });
    tracing::error!(error = %error, "the kernel refused to take the machine down");
    loop {
        std::thread::park();
    }
}
