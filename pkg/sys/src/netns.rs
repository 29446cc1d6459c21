//! Named network namespaces, kept as `ip netns` keeps them: pinned by a bind mount of the
//! namespace's /proc file on a file under /run/netns, so that they outlive the process
//! that made them and tools such as `ip netns exec` see them.

use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};

use rustix::thread::{LinkNameSpaceType, UnshareFlags};

use crate::SysError;

/// Where `ip netns` keeps named network namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// The pin of the network namespace called `name`.
pub fn path_of(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Makes a new network namespace pinned at `path` (which must not exist).
pub fn create(path: &Path) -> Result<(), SysError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| SysError::path("mkdir", dir, e))?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| SysError::path("create", path, e))?;
    // A thread of its own enters the new namespace and pins it: the caller's threads stay
    // where they are.
    let pinned = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                #[allow(unsafe_code)]
                // SAFETY: `unshare_unsafe` is unsafe only for CLONE_FILES (other threads
                // would use descriptors from a table this thread no longer shares); NEWNET
                // alone is asked for.
                unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNET) }
                    .map_err(|e| SysError::call("unshare(CLONE_NEWNET)", e))?;
                rustix::mount::mount_bind(Path::new("/proc/thread-self/ns/net"), path)
                    .map_err(|e| SysError::path("mount --bind", path, e.into()))
            })
            .join()
            .unwrap_or_else(|_| {
                Err(SysError::Invalid {
                    call: "unshare(CLONE_NEWNET)",
                    reason: "the thread making the namespace panicked".into(),
                })
            })
    });
    if pinned.is_err() {
        let _ = std::fs::remove_file(path);
    }
    pinned
}

/// Unpins the namespace at `path` and removes its file; the namespace itself goes when
/// no process is left in it. Nothing there is not an error.
pub fn remove(path: &Path) -> Result<(), SysError> {
    match rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH) {
        Ok(()) | Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(SysError::path("umount", path, e.into())),
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(SysError::path("rm", path, e)),
        _ => Ok(()),
    }
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter(path: &Path) -> Result<(), SysError> {
    let file = std::fs::File::open(path).map_err(|e| SysError::path("open", path, e))?;
    rustix::thread::move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network))
        .map_err(|e| SysError::path("setns(CLONE_NEWNET)", path, e.into()))
}

/// Runs `f` on a thread of its own inside the namespace at `path`, and returns what it
/// returned: sockets it opens stay in that namespace. No other thread moves, and the
/// thread ends with `f`, so no later work runs in the wrong namespace by accident.
pub fn run_in<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T, SysError> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                enter(path)?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|_| {
                Err(SysError::Invalid {
                    call: "run_in",
                    reason: format!("the thread in {} panicked", path.display()),
                })
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `path` is a pinned namespace (a mount point of an nsfs file), not a leftover
    /// plain file.
    fn is_pinned(path: &Path) -> bool {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        mounts.lines().any(|line| {
            let mut fields = line.split_whitespace();
            let _source = fields.next();
            fields.next().map(Path::new) == Some(path) && fields.next() == Some("nsfs")
        })
    }

    /// Removes the pin when the test ends, also when it fails.
    struct Pinned(PathBuf);

    impl Drop for Pinned {
        fn drop(&mut self) {
            let _ = remove(&self.0);
        }
    }

    /// Root only (CI is root): a namespace made, entered by a thread, and removed.
    #[test]
    fn a_pinned_namespace_is_made_entered_and_removed() {
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let pinned = Pinned(dir.path().join("ns"));
        let path = pinned.0.clone();
        create(&path).unwrap();
        assert!(is_pinned(&path));
        assert!(create(&path).is_err(), "an existing pin is refused");
        assert!(is_pinned(&path), "a refused pin leaves the first alone");
        let own = std::fs::metadata("/proc/self/ns/net").unwrap();
        let inside = std::thread::spawn({
            let path = path.clone();
            move || {
                enter(&path).unwrap();
                std::fs::metadata("/proc/thread-self/ns/net").unwrap()
            }
        })
        .join()
        .unwrap();
        use std::os::unix::fs::MetadataExt as _;
        assert_ne!(own.ino(), inside.ino());
        remove(&path).unwrap();
        assert!(!path.exists() && !is_pinned(&path));
        remove(&path).unwrap();
    }
}
