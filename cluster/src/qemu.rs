//! The qemu provider's nodes: the boot image (`_out/vmlinuz`, `_out/initramfs.cpio.zst`,
//! copied for the cluster) booted under QEMU — TCG unless KVM is asked for — with an ext4
//! STATE disk of its own, its network card a tap on the cluster's bridge. QEMU runs in
//! the cluster's network namespace (through `nsenter`), where it makes the tap; it is
//! put in the node's cgroups, so that stopping a node is the same for both providers.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use basalt_sys::cgroups;

use crate::{network, ClusterError, ClusterRecord};

/// How a node's VM is sized and run.
#[derive(Debug, Clone, Copy)]
pub struct VmOptions {
    pub cpus: u32,
    pub memory_mib: u32,
    /// KVM instead of TCG (QEMU's emulator).
    pub kvm: bool,
}

/// QEMU's emulator, with a translation cache of 256 MiB instead of its default 1 GiB.
/// QEMU keeps what it translated until that cache fills, across a reset too: after a
/// reboot, the guest rewrites pages that held code it ran (etcd, machined) and QEMU
/// invalidates each one's translations on the first write. With the default, a reboot's
/// kernel took 6-7 s instead of 1.3 s to unpack the initramfs (measured with the QEMU
/// test's image); a smaller cache is flushed whole before that piles up.
pub const TCG_ACCEL: &str = "tcg,tb-size=256";

/// The STATE disk of each node.
/// Sparse: room for etcd's write-ahead log (64 MiB segments) without using it up front.
const STATE_DISK_BYTES: u64 = 1 << 30;

/// The image's kernel and initramfs, in the cluster's directory.
fn kernel(record: &ClusterRecord) -> PathBuf {
    record.dir.join("vmlinuz")
}

/// Our initramfs and the image layers' segment, as they boot (`initramfs.img`).
fn initramfs(record: &ClusterRecord) -> PathBuf {
    record.dir.join("initramfs.img")
}

/// Copies the boot image for the cluster, so that a rebuilt image does not change what
/// its nodes boot.
pub fn prepare_image(image_dir: &Path, record: &ClusterRecord) -> Result<(), ClusterError> {
    for (from, to) in [
        (image_dir.join("vmlinuz"), kernel(record)),
        (image_dir.join("initramfs.img"), initramfs(record)),
    ] {
        if !from.is_file() {
            return Err(ClusterError::NoImage {
                dir: image_dir.to_path_buf(),
            });
        }
        std::fs::copy(&from, &to).map_err(|e| ClusterError::io("copying", &from, e))?;
    }
    Ok(())
}

/// An empty ext4 file system labelled STATE, as a machine's STATE partition.
fn make_state_disk(path: &Path) -> Result<(), ClusterError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| ClusterError::io("creating", dir, e))?;
    }
    let file = std::fs::File::create(path).map_err(|e| ClusterError::io("creating", path, e))?;
    file.set_len(STATE_DISK_BYTES)
        .map_err(|e| ClusterError::io("sizing", path, e))?;
    drop(file);
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "STATE"])
        .arg(path)
        .output()
        .map_err(|e| ClusterError::io("running mkfs.ext4 (e2fsprogs) for", path, e))?;
    if !out.status.success() {
        return Err(ClusterError::Invalid(format!(
            "mkfs.ext4 {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// The name of node `index`'s tap on the bridge.
pub fn tap_name(index: usize) -> String {
    format!("t{index}")
}

/// Boots node `index`: its STATE disk made, QEMU started in the cluster's network
/// namespace in a process group of its own, then put in the node's cgroups (recorded
/// first, as for a container node). The serial console goes to the node's console file.
pub fn start(
    record: &mut ClusterRecord,
    index: usize,
    vm: VmOptions,
) -> Result<Child, ClusterError> {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let hierarchies = cgroups::hierarchies(&read("/proc/self/mounts"), &read("/proc/self/cgroup"));
    record.nodes[index].cgroups = hierarchies
        .iter()
        .map(|h| cgroups::node_dir(h, &record.name, &record.nodes[index].name))
        .collect();
    record.save()?;
    let node = &record.nodes[index];
    make_state_disk(&node.state)?;
    // QEMU's own complaints (a tap it cannot make, a missing KVM) beside the console.
    let log_path = node.console.with_file_name("qemu.log");
    let log =
        std::fs::File::create(&log_path).map_err(|e| ClusterError::io("creating", &log_path, e))?;
    let append = format!(
        "console=ttyS0 panic=-1 basalt.platform=cloud {}",
        network::ip_argument(record, node)
    );
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--net={}", record.netns.display()))
        .arg("--")
        .arg("qemu-system-x86_64")
        .args(["-M", "q35", "-cpu", "max"])
        .args(["-accel", if vm.kvm { "kvm" } else { TCG_ACCEL }])
        .args(["-m", &vm.memory_mib.to_string()])
        .args(["-smp", &vm.cpus.to_string()])
        .args(["-display", "none", "-monitor", "none", "-nodefaults"])
        .arg("-kernel")
        .arg(kernel(record))
        .arg("-initrd")
        .arg(initramfs(record))
        .args(["-append", &append])
        .arg("-serial")
        .arg(format!("file:{}", node.console.display()))
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=virtio",
            node.state.display()
        ))
        .args([
            "-netdev",
            &format!(
                "tap,id=net0,ifname={},script=no,downscript=no",
                tap_name(index)
            ),
        ])
        .args([
            "-device",
            &format!(
                "virtio-net-pci,netdev=net0,mac=52:54:00:00:{:02x}:{:02x}",
                index / 256,
                index % 256
            ),
        ])
        .args(["-device", "virtio-rng-pci"])
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    let child = command.spawn().map_err(|e| ClusterError::Node {
        node: node.name.clone(),
        what: format!("cannot start QEMU (qemu-system-x86_64, through nsenter): {e}"),
    })?;
    let (joined, problems) = cgroups::join(&hierarchies, &record.name, &node.name, child.id());
    if joined.is_empty() {
        return Err(ClusterError::Node {
            node: node.name.clone(),
            what: format!(
                "cannot put QEMU in the node's cgroups: {}",
                problems.join("; ")
            ),
        });
    }
    record.nodes[index].pid = Some(child.id());
    record.save()?;
    Ok(child)
}
