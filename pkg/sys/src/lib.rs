//! The node's system calls: mounting, switching root, loading kernel modules, rebooting,
//! namespaces, process controls, and the kernel log. PID-1 logic calls them through the
//! [`Sys`] trait, so that it is unit-tested with [`Recording`] (which records each call
//! and fails the ones it is told to) without root or a kernel to spare; [`Linux`] makes
//! the real calls.
//!
//! This is the one crate of the workspace allowed `unsafe`, and each block says why it is
//! sound. Most calls need none: rustix wraps them safely.

pub mod cgroups;
mod error;
pub mod exec;
pub mod kmsg;
mod linux;
pub mod loopdev;
pub mod netns;
mod recording;

use std::path::{Path, PathBuf};

pub use error::SysError;
pub use linux::Linux;
pub use recording::{Call, Recording};

/// A filesystem to mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The device or the name for a virtual filesystem (`proc`, `none`...).
    pub source: String,
    pub target: PathBuf,
    pub fstype: String,
    pub flags: MountFlags,
    /// Filesystem options (`mode=0755`, `size=64m`...); empty for none.
    pub data: String,
}

/// The mount flags the node uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MountFlags {
    pub read_only: bool,
    pub no_suid: bool,
    pub no_dev: bool,
    pub no_exec: bool,
}

/// How the machine goes down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reboot {
    Restart,
    PowerOff,
    Halt,
}

/// Namespaces a process can leave its parent's for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Namespaces {
    pub mount: bool,
    pub pid: bool,
    pub net: bool,
    pub uts: bool,
    pub ipc: bool,
    pub cgroup: bool,
}

/// The system calls PID 1 and the node make.
pub trait Sys: Send + Sync + 'static {
    fn mount(&self, mount: &Mount) -> Result<(), SysError>;
    /// Makes the mounts at and below `target` private: nothing mounted there propagates
    /// to other mount namespaces, or from them (needed before `pivot_root`).
    fn make_private(&self, target: &Path) -> Result<(), SysError>;
    /// Makes the tree at `source` (with what is mounted below it) appear at `target` too.
    fn bind(&self, source: &Path, target: &Path) -> Result<(), SysError>;
    /// Detaches the filesystem at `target` (lazily: it goes once nothing uses it).
    fn unmount(&self, target: &Path) -> Result<(), SysError>;
    /// Makes `new_root` the root filesystem; the old one is put at `put_old`.
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> Result<(), SysError>;
    /// Loads the kernel module in the file `path` with `params` (`key=value ...`).
    fn load_module(&self, path: &Path, params: &str) -> Result<(), SysError>;
    /// Flushes filesystem buffers to disk.
    fn sync(&self);
    /// Takes the machine down at once: sync and unmount first.
    fn reboot(&self, how: Reboot) -> Result<(), SysError>;
    /// Moves the calling thread into new namespaces (mount namespaces of the process:
    /// call it before other threads start).
    fn unshare(&self, namespaces: Namespaces) -> Result<(), SysError>;
    /// The next child goes into this process's own PID namespace again, undoing an
    /// earlier `unshare` of it (so that another one can be made for the next child).
    fn reset_pid_namespace_for_children(&self) -> Result<(), SysError>;
    /// This process is killed when its parent dies (a container node's PID 1 goes with
    /// its shim).
    fn die_with_parent(&self) -> Result<(), SysError>;
    /// Neither this process nor its children gain privileges through exec.
    fn set_no_new_privs(&self) -> Result<(), SysError>;
    /// Orphaned descendants are re-parented to this process, which reaps them.
    fn set_child_subreaper(&self) -> Result<(), SysError>;
}
