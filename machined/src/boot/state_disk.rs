//! STATE: the disk (or partition) whose ext4 filesystem is labelled `STATE` holds the
//! node's persistent namespaces and its applied config. It is found by label, so the
//! node does not care which device the machine gives it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use basalt_sys::{Mount, MountFlags, Sys};

use crate::BootError;

/// The filesystem label of the STATE disk.
pub const LABEL: &str = "STATE";
/// Where STATE is mounted.
pub const MOUNT_POINT: &str = "/system/state";

/// Where an ext2/3/4 superblock starts, its magic number and its label.
const SUPERBLOCK: usize = 1024;
const MAGIC_AT: usize = SUPERBLOCK + 0x38;
const LABEL_AT: usize = SUPERBLOCK + 0x78;
const EXT_MAGIC: u16 = 0xEF53;

/// The label of the ext filesystem whose first bytes are `head`, if it is one.
pub fn ext_label(head: &[u8]) -> Option<String> {
    let magic = head.get(MAGIC_AT..MAGIC_AT + 2)?;
    if u16::from_le_bytes([magic[0], magic[1]]) != EXT_MAGIC {
        return None;
    }
    let label = head.get(LABEL_AT..LABEL_AT + 16)?;
    let end = label.iter().position(|&b| b == 0).unwrap_or(label.len());
    Some(String::from_utf8_lossy(&label[..end]).into_owned())
}

/// The block device (under `dev`) whose ext filesystem is labelled [`LABEL`], looking
/// through the devices the kernel lists under `sys_block` (`/sys/class/block`).
pub fn find(sys_block: &Path, dev: &Path) -> Option<PathBuf> {
    let mut names: Vec<_> = std::fs::read_dir(sys_block)
        .ok()?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    names.into_iter().map(|name| dev.join(name)).find(|device| {
        let mut head = vec![0u8; SUPERBLOCK + 1024];
        std::fs::File::open(device)
            .and_then(|mut file| std::io::Read::read_exact(&mut file, &mut head))
            .is_ok()
            && ext_label(&head).as_deref() == Some(LABEL)
    })
}

/// Waits up to `timeout` for STATE to appear (block devices are probed while the boot
/// goes on), then mounts it at [`MOUNT_POINT`] below `root`. `None`: no STATE disk.
pub fn mount(sys: &dyn Sys, root: &Path, timeout: Duration) -> Result<Option<PathBuf>, BootError> {
    let started = Instant::now();
    let device = loop {
        if let Some(device) = find(&root.join("sys/class/block"), &root.join("dev")) {
            break device;
        }
        if started.elapsed() >= timeout {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let target = super::mounts::under(root, Path::new(MOUNT_POINT));
    std::fs::create_dir_all(&target).map_err(|source| BootError::Directory {
        path: target.clone(),
        source,
    })?;
    let mount = Mount {
        source: device.to_string_lossy().into_owned(),
        target: target.clone(),
        fstype: "ext4".into(),
        flags: MountFlags {
            no_suid: true,
            no_dev: true,
            no_exec: true,
            read_only: false,
        },
        data: String::new(),
    };
    sys.mount(&mount).map_err(|source| BootError::Mount {
        what: format!("STATE ({})", device.display()),
        target: target.clone(),
        source,
    })?;
    tracing::info!(device = %device.display(), at = %target.display(), "STATE mounted");
    Ok(Some(target))
}

#[cfg(test)]
mod tests {
    use basalt_sys::{Call, Recording};

    use super::*;

    fn ext4_head(label: &str) -> Vec<u8> {
        let mut head = vec![0u8; 2048];
        head[MAGIC_AT..MAGIC_AT + 2].copy_from_slice(&EXT_MAGIC.to_le_bytes());
        head[LABEL_AT..LABEL_AT + label.len()].copy_from_slice(label.as_bytes());
        head
    }

    #[test]
    fn reads_the_label_of_ext_filesystems_only() {
        assert_eq!(ext_label(&ext4_head("STATE")).as_deref(), Some("STATE"));
        assert_eq!(
            ext_label(&ext4_head("sixteen-chars-xx")).as_deref(),
            Some("sixteen-chars-xx")
        );
        assert_eq!(ext_label(&[0u8; 2048]), None);
        assert_eq!(ext_label(&[0u8; 10]), None);
    }

    #[test]
    fn finds_state_by_label_and_mounts_it() {
        let root = tempfile::tempdir().unwrap();
        for (name, label) in [("vda", "OTHER"), ("vdb", "STATE")] {
            std::fs::create_dir_all(root.path().join("sys/class/block").join(name)).unwrap();
            std::fs::create_dir_all(root.path().join("dev")).unwrap();
            std::fs::write(root.path().join("dev").join(name), ext4_head(label)).unwrap();
        }
        std::fs::create_dir_all(root.path().join("sys/class/block/vdc")).unwrap();
        let sys = Recording::new();
        let target = mount(&sys, root.path(), Duration::ZERO).unwrap().unwrap();
        assert_eq!(target, root.path().join("system/state"));
        let [Call::Mount(mount)] = &sys.calls()[..] else {
            panic!("{:?}", sys.calls())
        };
        assert_eq!(mount.source, root.path().join("dev/vdb").to_string_lossy());
        assert_eq!(mount.fstype, "ext4");
    }

    #[test]
    fn no_state_disk_is_none_after_the_timeout() {
        let root = tempfile::tempdir().unwrap();
        let sys = Recording::new();
        assert_eq!(
            mount(&sys, root.path(), Duration::from_millis(100)).unwrap(),
            None
        );
        assert!(sys.calls().is_empty());
    }
}
