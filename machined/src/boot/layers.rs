//! Image layers: squashfs files the boot image carries in /system/extensions (a segment
//! of the initramfs of their own), each attached to a loop device and mounted read-only
//! at /system/extensions/<name>. A container node's image has them unpacked there
//! already.

use std::path::{Path, PathBuf};

use basalt_sys::loopdev::LoopDevice;
use basalt_sys::{Mount, MountFlags, Sys};

use crate::BootError;

/// The layer files' ending.
const LAYER_SUFFIX: &str = "sqsh";

/// Mounts every `<dir>/<name>.sqsh` at `<dir>/<name>`, in name order, attaching each
/// with `attach` (a loop device on a machine). A layer that fails is logged and skipped:
/// the node comes up without it, and the services that need it say so. Returns the
/// mount points.
pub fn mount_all(
    sys: &dyn Sys,
    dir: &Path,
    attach: impl Fn(&Path) -> Result<LoopDevice, basalt_sys::SysError>,
) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == LAYER_SUFFIX))
            .collect(),
        Err(_) => return Vec::new(),
    };
    files.sort();
    let mut mounted = Vec::new();
    for file in files {
        match mount_one(sys, &file, &attach) {
            Ok(target) => {
                tracing::info!(layer = %file.display(), at = %target.display(), "image layer mounted");
                mounted.push(target);
            }
            Err(error) => {
                tracing::error!(layer = %file.display(), %error, "image layer not mounted")
            }
        }
    }
    mounted
}

fn mount_one(
    sys: &dyn Sys,
    file: &Path,
    attach: &impl Fn(&Path) -> Result<LoopDevice, basalt_sys::SysError>,
) -> Result<PathBuf, BootError> {
    let target = file.with_extension("");
    std::fs::create_dir_all(&target).map_err(|source| BootError::Directory {
        path: target.clone(),
        source,
    })?;
    let device = attach(file).map_err(|source| BootError::Mount {
        what: format!("a loop device for {}", file.display()),
        target: target.clone(),
        source,
    })?;
    let mount = Mount {
        source: device.path.to_string_lossy().into_owned(),
        target: target.clone(),
        fstype: "squashfs".into(),
        flags: MountFlags {
            read_only: true,
            no_suid: true,
            no_dev: true,
            no_exec: false,
        },
        data: String::new(),
    };
    sys.mount(&mount).map_err(|source| BootError::Mount {
        what: format!("image layer {}", file.display()),
        target: target.clone(),
        source,
    })?;
    // The mount holds the device now.
    drop(device);
    Ok(target)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use basalt_sys::{Call, Recording};

    use super::*;

    #[test]
    fn each_layer_is_attached_and_mounted_read_only_at_its_name() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["etcd.sqsh", "a.sqsh", "notes.txt"] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        let sys = Recording::new();
        let mounted = mount_all(&sys, dir.path(), |file| {
            Ok(LoopDevice::unheld(PathBuf::from(format!(
                "/dev/loop-{}",
                file.file_stem().unwrap().to_string_lossy()
            ))))
        });
        assert_eq!(mounted, [dir.path().join("a"), dir.path().join("etcd")]);
        let calls = sys.calls();
        let Call::Mount(first) = &calls[0] else {
            panic!("{calls:?}")
        };
        assert_eq!(
            (
                first.source.as_str(),
                first.fstype.as_str(),
                first.flags.read_only
            ),
            ("/dev/loop-a", "squashfs", true)
        );
        assert!(dir.path().join("etcd").is_dir());
    }

    #[test]
    fn a_layer_that_cannot_be_attached_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bad.sqsh"), b"").unwrap();
        std::fs::write(dir.path().join("good.sqsh"), b"").unwrap();
        let sys = Recording::new();
        let mounted = mount_all(&sys, dir.path(), |file| {
            if file.ends_with("bad.sqsh") {
                Err(basalt_sys::SysError::Invalid {
                    call: "attach",
                    reason: "no loop device".into(),
                })
            } else {
                Ok(LoopDevice::unheld(PathBuf::from("/dev/loop0")))
            }
        });
        assert_eq!(mounted, [dir.path().join("good")]);
        assert!(mount_all(&sys, &dir.path().join("missing"), |_| unreachable!()).is_empty());
    }
}
