//! The real system calls.

use std::ffi::CString;
use std::path::Path;

use rustix::mount::{MountFlags as Flags, MountPropagationFlags, UnmountFlags};
use rustix::system::RebootCommand;
use rustix::thread::UnshareFlags;

use crate::{Mount, Namespaces, Reboot, Sys, SysError};

/// The running kernel.
#[derive(Debug, Clone, Copy, Default)]
pub struct Linux;

impl Sys for Linux {
    fn mount(&self, m: &Mount) -> Result<(), SysError> {
        let mut flags = Flags::empty();
        flags.set(Flags::RDONLY, m.flags.read_only);
        flags.set(Flags::NOSUID, m.flags.no_suid);
        flags.set(Flags::NODEV, m.flags.no_dev);
        flags.set(Flags::NOEXEC, m.flags.no_exec);
        let data = CString::new(m.data.as_str()).map_err(|_| SysError::Invalid {
            call: "mount",
            reason: format!("the options of {} hold a NUL byte", m.target.display()),
        })?;
        let data = (!m.data.is_empty()).then_some(data.as_c_str());
        rustix::mount::mount(m.source.as_str(), &m.target, m.fstype.as_str(), flags, data)
            .map_err(|e| SysError::path("mount", &m.target, e.into()))
    }

    fn make_private(&self, target: &Path) -> Result<(), SysError> {
        let flags = MountPropagationFlags::PRIVATE | MountPropagationFlags::REC;
        rustix::mount::mount_change(target, flags)
            .map_err(|e| SysError::path("mount --make-rprivate", target, e.into()))
    }

    fn bind(&self, source: &Path, target: &Path) -> Result<(), SysError> {
        rustix::mount::mount_bind_recursive(source, target)
            .map_err(|e| SysError::path("mount --rbind", target, e.into()))
    }

    fn unmount(&self, target: &Path) -> Result<(), SysError> {
        rustix::mount::unmount(target, UnmountFlags::DETACH)
            .map_err(|e| SysError::path("umount", target, e.into()))
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> Result<(), SysError> {
        rustix::process::pivot_root(new_root, put_old)
            .map_err(|e| SysError::path("pivot_root", new_root, e.into()))
    }

    fn load_module(&self, path: &Path, params: &str) -> Result<(), SysError> {
        let file = std::fs::File::open(path).map_err(|e| SysError::path("open", path, e))?;
        let params = CString::new(params).map_err(|_| SysError::Invalid {
            call: "finit_module",
            reason: format!("the parameters of {} hold a NUL byte", path.display()),
        })?;
        rustix::system::finit_module(&file, &params, 0)
            .map_err(|e| SysError::path("finit_module", path, e.into()))
    }

    fn sync(&self) {
        rustix::fs::sync();
    }

    fn reboot(&self, how: Reboot) -> Result<(), SysError> {
        let command = match how {
            Reboot::Restart => RebootCommand::Restart,
            Reboot::PowerOff => RebootCommand::PowerOff,
            Reboot::Halt => RebootCommand::Halt,
        };
        rustix::system::reboot(command).map_err(|e| SysError::call("reboot", e))
    }

    fn unshare(&self, namespaces: Namespaces) -> Result<(), SysError> {
        let mut flags = UnshareFlags::empty();
        flags.set(UnshareFlags::NEWNS, namespaces.mount);
        flags.set(UnshareFlags::NEWPID, namespaces.pid);
        flags.set(UnshareFlags::NEWNET, namespaces.net);
        flags.set(UnshareFlags::NEWUTS, namespaces.uts);
        flags.set(UnshareFlags::NEWIPC, namespaces.ipc);
        flags.set(UnshareFlags::NEWCGROUP, namespaces.cgroup);
        #[allow(unsafe_code)]
        // SAFETY: `unshare_unsafe` is unsafe only for CLONE_FILES, which would leave other
        // threads using descriptors from a table this thread no longer shares. The flags
        // built above are namespace flags only, never FILES.
        unsafe { rustix::thread::unshare_unsafe(flags) }.map_err(|e| SysError::call("unshare", e))
    }

    fn reset_pid_namespace_for_children(&self) -> Result<(), SysError> {
        let own = std::fs::File::open("/proc/self/ns/pid")
            .map_err(|e| SysError::path("open", Path::new("/proc/self/ns/pid"), e))?;
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&own),
            Some(rustix::thread::LinkNameSpaceType::ProcessID),
        )
        .map_err(|e| SysError::call("setns(CLONE_NEWPID)", e))
    }

    fn die_with_parent(&self) -> Result<(), SysError> {
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
            .map_err(|e| SysError::call("prctl(PDEATHSIG)", e))
    }

    fn set_no_new_privs(&self) -> Result<(), SysError> {
        rustix::thread::set_no_new_privs(true).map_err(|e| SysError::call("prctl(NO_NEW_PRIVS)", e))
    }

    fn set_child_subreaper(&self) -> Result<(), SysError> {
        rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
            .map_err(|e| SysError::call("prctl(CHILD_SUBREAPER)", e))
    }
}
