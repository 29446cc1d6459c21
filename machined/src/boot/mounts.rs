//! The filesystems PID 1 mounts before anything else runs: the kernel's views (/proc,
//! /sys, /dev, cgroup2) and the scratch space under /run and /tmp. Debian's kernel does
//! not mount devtmpfs by itself.

use std::path::{Path, PathBuf};

use basalt_sys::{Mount, MountFlags, Sys};

use crate::BootError;

/// The early mounts, in order (a later target may live on an earlier one).
pub fn early() -> Vec<Mount> {
    let kernel = MountFlags {
        no_suid: true,
        no_dev: true,
        no_exec: true,
        read_only: false,
    };
    let scratch = MountFlags {
        no_suid: true,
        no_dev: true,
        ..MountFlags::default()
    };
    let mount = |source: &str, target: &str, fstype: &str, flags, data: &str| Mount {
        source: source.into(),
        target: target.into(),
        fstype: fstype.into(),
        flags,
        data: data.into(),
    };
    vec![
        mount("proc", "/proc", "proc", kernel, ""),
        mount("sysfs", "/sys", "sysfs", kernel, ""),
        mount(
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MountFlags {
                no_suid: true,
                no_exec: true,
                ..MountFlags::default()
            },
            "mode=0755",
        ),
        mount(
            "devpts",
            "/dev/pts",
            "devpts",
            kernel,
            "mode=0620,ptmxmode=0666",
        ),
        mount("tmpfs", "/dev/shm", "tmpfs", kernel, "mode=1777"),
        mount("tmpfs", "/run", "tmpfs", scratch, "mode=0755"),
        mount("tmpfs", "/tmp", "tmpfs", scratch, "mode=1777"),
        // The files the node writes for /etc (hosts, resolv.conf): its own, also where
        // container nodes share the image's directory.
        mount("tmpfs", "/system/etc", "tmpfs", kernel, "mode=0755"),
        mount("cgroup2", "/sys/fs/cgroup", "cgroup2", kernel, "nsdelegate"),
    ]
}

/// Mounts each of `mounts` below `root` (`/` on a node), creating its directory first.
/// Returns the targets mounted, to unmount in reverse order when the node goes down.
pub fn mount_all(sys: &dyn Sys, root: &Path, mounts: &[Mount]) -> Result<Vec<PathBuf>, BootError> {
    let mut done = Vec::with_capacity(mounts.len());
    for mount in mounts {
        let target = under(root, &mount.target);
        std::fs::create_dir_all(&target).map_err(|source| BootError::Directory {
            path: target.clone(),
            source,
        })?;
        let at_root = Mount {
            target: target.clone(),
            ..mount.clone()
        };
        sys.mount(&at_root).map_err(|source| BootError::Mount {
            what: mount.fstype.clone(),
            target: target.clone(),
            source,
        })?;
        done.push(target);
    }
    Ok(done)
}

/// `path` (absolute on the node) below `root`.
pub fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

#[cfg(test)]
mod tests {
    use basalt_sys::{Call, Recording};

    use super::*;

    #[test]
    fn mounts_each_in_order_below_the_root_and_creates_its_directory() {
        let root = tempfile::tempdir().unwrap();
        let sys = Recording::new();
        let done = mount_all(&sys, root.path(), &early()).unwrap();
        let targets: Vec<_> = sys
            .calls()
            .into_iter()
            .map(|call| match call {
                Call::Mount(m) => (m.fstype, m.target),
                other => panic!("unexpected call {other:?}"),
            })
            .collect();
        let expected: Vec<_> = [
            ("proc", "proc"),
            ("sysfs", "sys"),
            ("devtmpfs", "dev"),
            ("devpts", "dev/pts"),
            ("tmpfs", "dev/shm"),
            ("tmpfs", "run"),
            ("tmpfs", "tmp"),
            ("tmpfs", "system/etc"),
            ("cgroup2", "sys/fs/cgroup"),
        ]
        .iter()
        .map(|(fs, dir)| (fs.to_string(), root.path().join(dir)))
        .collect();
        assert_eq!(targets, expected);
        assert_eq!(
            done,
            expected.iter().map(|(_, t)| t.clone()).collect::<Vec<_>>()
        );
        assert!(root.path().join("sys/fs/cgroup").is_dir());
    }

    #[test]
    fn a_failed_mount_names_the_filesystem_and_where() {
        let root = tempfile::tempdir().unwrap();
        let sys = Recording::new();
        sys.fail("mount");
        let error = mount_all(&sys, root.path(), &early())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("proc")
                && error.contains(&root.path().join("proc").display().to_string()),
            "{error}"
        );
    }
}
