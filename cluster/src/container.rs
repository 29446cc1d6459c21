//! The container provider's nodes: the image's files copied once for the cluster, and per
//! node a shim (`init` run as `basalt-container`) in the node's network namespace, which
//! puts itself in the node's cgroups and runs PID 1 until the node powers off.

use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use basalt_sys::cgroups;

use crate::{network, ClusterError, ClusterRecord, NodeRecord};

/// How long a node's processes get to leave its cgroups once killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Copies the image's files (`<image_dir>/rootfs`, written by `make image`) for the
/// cluster: its nodes share them, and a rebuilt image does not change them under the
/// running nodes.
pub fn prepare_rootfs(image_dir: &Path, record: &ClusterRecord) -> Result<(), ClusterError> {
    let source = image_dir.join("rootfs");
    if !source.join("init").is_file() {
        return Err(ClusterError::NoImage {
            dir: image_dir.to_path_buf(),
        });
    }
    copy_tree(&source, &record.rootfs)
}

/// Puts the image's files (`<image_dir>/rootfs`) in place of the cluster's, for nodes
/// that boot from now on: the new tree is copied beside the old one and renamed over it.
/// Running nodes keep the files they were started from; the old tree, which their mounts
/// hold, is returned for removal once they have all booted again.
pub fn replace_rootfs(image_dir: &Path, record: &ClusterRecord) -> Result<PathBuf, ClusterError> {
    let source = image_dir.join("rootfs");
    if !source.join("init").is_file() {
        return Err(ClusterError::NoImage {
            dir: image_dir.to_path_buf(),
        });
    }
    let fresh = record.dir.join("rootfs.new");
    let old = record.dir.join("rootfs.old");
    for leftover in [&fresh, &old] {
        match std::fs::remove_dir_all(leftover) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(ClusterError::io("removing", leftover, e))
            }
            _ => {}
        }
    }
    copy_tree(&source, &fresh)?;
    std::fs::rename(&record.rootfs, &old)
        .map_err(|e| ClusterError::io("moving aside", &record.rootfs, e))?;
    std::fs::rename(&fresh, &record.rootfs)
        .map_err(|e| ClusterError::io("putting in place", &record.rootfs, e))?;
    Ok(old)
}

/// The pid (on the host) of the node's PID 1 now: the shim's child, which a reboot
/// replaces.
pub fn init_pid(node: &NodeRecord) -> Option<u32> {
    let shim = node.pid?;
    std::fs::read_to_string(format!("/proc/{shim}/task/{shim}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A copy of a tree of directories, files and symbolic links, modes kept.
fn copy_tree(from: &Path, to: &Path) -> Result<(), ClusterError> {
    let meta = std::fs::symlink_metadata(from).map_err(|e| ClusterError::io("reading", from, e))?;
    std::fs::DirBuilder::new()
        .mode(meta.mode() & 0o7777)
        .create(to)
        .map_err(|e| ClusterError::io("creating", to, e))?;
    let entries = std::fs::read_dir(from).map_err(|e| ClusterError::io("reading", from, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| ClusterError::io("reading", from, e))?;
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        let kind = entry
            .file_type()
            .map_err(|e| ClusterError::io("reading", &source, e))?;
        if kind.is_dir() {
            copy_tree(&source, &target)?;
        } else if kind.is_symlink() {
            let link =
                std::fs::read_link(&source).map_err(|e| ClusterError::io("reading", &source, e))?;
            std::os::unix::fs::symlink(link, &target)
                .map_err(|e| ClusterError::io("creating", &target, e))?;
        } else {
            std::fs::copy(&source, &target).map_err(|e| ClusterError::io("copying", &source, e))?;
            let mode = entry
                .metadata()
                .map_err(|e| ClusterError::io("reading", &source, e))?
                .mode();
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode & 0o7777))
                .map_err(|e| ClusterError::io("setting the mode of", &target, e))?;
        }
    }
    Ok(())
}

/// This process's cgroup hierarchies: a shim it starts begins in the same cgroups.
fn own_hierarchies() -> Vec<cgroups::Hierarchy> {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    cgroups::hierarchies(&read("/proc/self/mounts"), &read("/proc/self/cgroup"))
}

/// Starts node `index`'s shim in the node's network namespace, in a process group of
/// its own (a Ctrl-C at the terminal is for osctl, which then cleans up), logging to the
/// node's console file. Records the cgroups it makes and its pid.
pub fn start(
    record: &mut ClusterRecord,
    index: usize,
    kernel_args: &str,
) -> Result<Child, ClusterError> {
    // The shim starts in this process's cgroups and makes the node's below them: they
    // are recorded before it starts, so that whatever happens to this process next, a
    // `destroy` finds the node's processes.
    let cgroups = own_hierarchies()
        .iter()
        .map(|h| cgroups::node_dir(h, &record.name, &record.nodes[index].name))
        .collect();
    record.nodes[index].cgroups = cgroups;
    record.save()?;
    let node = &record.nodes[index];
    std::fs::create_dir_all(&node.state)
        .map_err(|e| ClusterError::io("creating", &node.state, e))?;
    let console = std::fs::File::create(&node.console)
        .map_err(|e| ClusterError::io("creating", &node.console, e))?;
    let stderr = console
        .try_clone()
        .map_err(|e| ClusterError::io("opening", &node.console, e))?;
    let args = format!("{} {kernel_args}", network::ip_argument(record, node));
    let init = record.rootfs.join("init");
    let child = Command::new(&init)
        .arg0("basalt-container")
        .arg("--root")
        .arg(&record.rootfs)
        .arg("--state")
        .arg(&node.state)
        .args(["--cluster", &record.name, "--node", &node.name])
        .arg("--netns")
        .arg(&node.netns)
        .args(["--kernel-args", args.trim()])
        .env_clear()
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(console)
        .stderr(stderr)
        .spawn()
        .map_err(|e| ClusterError::Node {
            node: node.name.clone(),
            what: format!("cannot start {}: {e}", init.display()),
        })?;
    record.nodes[index].pid = Some(child.id());
    record.save()?;
    Ok(child)
}

/// Kills every process in the node's cgroups (the shim, PID 1 and everything it runs),
/// and a shim that has not joined them yet, then removes the cgroups, with its cluster's
/// and `basalt` when they are left empty.
pub async fn stop(record: &ClusterRecord, node: &NodeRecord) -> Result<(), ClusterError> {
    let deadline = Instant::now() + STOP_TIMEOUT;
    let late = |what: String| ClusterError::Node {
        node: node.name.clone(),
        what: format!("{what} after {STOP_TIMEOUT:?}"),
    };
    let mut killed = std::collections::BTreeSet::new();
    loop {
        let mut pids: Vec<u32> = node.cgroups.iter().flat_map(|dir| processes(dir)).collect();
        pids.extend(shims(&record.rootfs, &node.name));
        if pids.is_empty() {
            break;
        }
        killed.extend(pids.iter().copied());
        for pid in &pids {
            if let Some(pid) = rustix::process::Pid::from_raw(*pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        if Instant::now() > deadline {
            return Err(late(format!("processes {pids:?} are still there")));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Out of the cgroups is not yet gone: wait until their parents have reaped them.
    while killed
        .iter()
        .any(|pid| Path::new(&format!("/proc/{pid}")).exists())
    {
        if Instant::now() > deadline {
            return Err(late(format!("processes {killed:?} are not reaped")));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for dir in &node.cgroups {
        // A v1 cgroup stays busy for a moment after its last task has gone.
        loop {
            match remove_tree(dir) {
                Ok(()) => break,
                Err(e)
                    if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error())
                        && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(ClusterError::io("removing the cgroup", dir, e)),
            }
        }
        // The cluster's and `basalt`, when this node was the last in them.
        for parent in dir.ancestors().skip(1).take(2) {
            let _ = std::fs::remove_dir(parent);
        }
    }
    Ok(())
}

/// The shims running node `node` of the cluster whose files are `rootfs`, by their
/// command lines (`--root ROOTFS ... --node NODE`).
fn shims(rootfs: &Path, node: &str) -> Vec<u32> {
    let root = format!("\0--root\0{}\0", rootfs.display());
    let name = format!("\0--node\0{node}\0");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            cmdline.contains(&root) && cmdline.contains(&name)
        })
        .collect()
}

/// Every process in the cgroup `dir` and below it.
fn processes(dir: &Path) -> Vec<u32> {
    let mut found: Vec<u32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    for child in subdirs(dir) {
        found.extend(processes(&child));
    }
    found
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Removes an empty cgroup and its empty children, deepest first (cgroup directories go
/// with rmdir, not by removing their files).
fn remove_tree(dir: &Path) -> std::io::Result<()> {
    for child in subdirs(dir) {
        remove_tree(&child)?;
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Whether the node still runs: a process in its cgroups (QEMU, or a container node's
/// PID 1), or its shim.
pub fn is_running(record: &ClusterRecord, node: &NodeRecord) -> bool {
    node.cgroups.iter().any(|dir| !processes(dir).is_empty())
        || !shims(&record.rootfs, &node.name).is_empty()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_tree_is_copied_with_its_modes_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("from");
        std::fs::create_dir_all(from.join("lib/sub")).unwrap();
        std::fs::write(from.join("init"), "binary").unwrap();
        std::fs::set_permissions(from.join("init"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::fs::write(from.join("lib/sub/data"), "data").unwrap();
        std::os::unix::fs::symlink("sub/data", from.join("lib/link")).unwrap();
        let to = dir.path().join("to");
        copy_tree(&from, &to).unwrap();
        let mode = |p: &str| std::fs::metadata(to.join(p)).unwrap().mode() & 0o777;
        assert_eq!(mode("init"), 0o755);
        assert_eq!(
            std::fs::read_to_string(to.join("lib/link")).unwrap(),
            "data"
        );
        assert_eq!(
            std::fs::read_link(to.join("lib/link")).unwrap(),
            PathBuf::from("sub/data")
        );
        assert!(copy_tree(&dir.path().join("none"), &dir.path().join("x")).is_err());
    }
}
