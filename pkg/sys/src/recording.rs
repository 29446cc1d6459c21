//! A fake that records the calls made to it, and fails those it is told to: PID-1 logic
//! is tested with it, without root.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use crate::{Mount, Namespaces, Reboot, Sys, SysError};

/// One call, as made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Mount(Mount),
    MakePrivate(PathBuf),
    Unmount(PathBuf),
    PivotRoot { new_root: PathBuf, put_old: PathBuf },
    LoadModule { path: PathBuf, params: String },
    Sync,
    Reboot(Reboot),
    Unshare(Namespaces),
    Bind { source: PathBuf, target: PathBuf },
    ResetPidNamespaceForChildren,
    DieWithParent,
    SetNoNewPrivs,
    SetChildSubreaper,
}

impl Call {
    /// The call's name, as [`Recording::fail`] takes it.
    pub fn name(&self) -> &'static str {
        match self {
            Call::Mount(_) => "mount",
            Call::MakePrivate(_) => "make_private",
            Call::Unmount(_) => "unmount",
            Call::PivotRoot { .. } => "pivot_root",
            Call::LoadModule { .. } => "load_module",
            Call::Sync => "sync",
            Call::Reboot(_) => "reboot",
            Call::Unshare(_) => "unshare",
            Call::Bind { .. } => "bind",
            Call::ResetPidNamespaceForChildren => "reset_pid_namespace_for_children",
            Call::DieWithParent => "die_with_parent",
            Call::SetNoNewPrivs => "set_no_new_privs",
            Call::SetChildSubreaper => "set_child_subreaper",
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    calls: Vec<Call>,
    failing: Vec<(&'static str, std::io::ErrorKind)>,
}

/// Records every call; those named in [`Recording::fail`] or [`Recording::fail_with`]
/// fail.
#[derive(Debug, Default)]
pub struct Recording {
    inner: Mutex<Inner>,
}

impl Recording {
    pub fn new() -> Self {
        Self::default()
    }

    /// Calls with this name (see [`Call::name`]) fail from now on, with EPERM.
    pub fn fail(&self, name: &'static str) {
        self.fail_with(name, std::io::ErrorKind::PermissionDenied);
    }

    /// Calls with this name fail from now on, with an error of this kind.
    pub fn fail_with(&self, name: &'static str, kind: std::io::ErrorKind) {
        self.lock().failing.push((name, kind));
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, call: Call) -> Result<(), SysError> {
        let name = call.name();
        let mut inner = self.lock();
        inner.calls.push(call);
        match inner.failing.iter().find(|(failing, _)| *failing == name) {
            Some((_, kind)) => Err(SysError::call(name, std::io::Error::from(*kind))),
            None => Ok(()),
        }
    }
}

impl Sys for Recording {
    fn mount(&self, mount: &Mount) -> Result<(), SysError> {
        self.record(Call::Mount(mount.clone()))
    }

    fn make_private(&self, target: &Path) -> Result<(), SysError> {
        self.record(Call::MakePrivate(target.to_path_buf()))
    }

    fn bind(&self, source: &Path, target: &Path) -> Result<(), SysError> {
        self.record(Call::Bind {
            source: source.to_path_buf(),
            target: target.to_path_buf(),
        })
    }

    fn unmount(&self, target: &Path) -> Result<(), SysError> {
        self.record(Call::Unmount(target.to_path_buf()))
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> Result<(), SysError> {
        self.record(Call::PivotRoot {
            new_root: new_root.to_path_buf(),
            put_old: put_old.to_path_buf(),
        })
    }

    fn load_module(&self, path: &Path, params: &str) -> Result<(), SysError> {
        self.record(Call::LoadModule {
            path: path.to_path_buf(),
            params: params.to_string(),
        })
    }

    fn sync(&self) {
        let _ = self.record(Call::Sync);
    }

    fn reboot(&self, how: Reboot) -> Result<(), SysError> {
        self.record(Call::Reboot(how))
    }

    fn unshare(&self, namespaces: Namespaces) -> Result<(), SysError> {
        self.record(Call::Unshare(namespaces))
    }

    fn reset_pid_namespace_for_children(&self) -> Result<(), SysError> {
        self.record(Call::ResetPidNamespaceForChildren)
    }

    fn die_with_parent(&self) -> Result<(), SysError> {
        self.record(Call::DieWithParent)
    }

    fn set_no_new_privs(&self) -> Result<(), SysError> {
        self.record(Call::SetNoNewPrivs)
    }

    fn set_child_subreaper(&self) -> Result<(), SysError> {
        self.record(Call::SetChildSubreaper)
    }
}
