//! A container node's cgroups on its host: its own subtree, `basalt/<cluster>/<node>`, in every
//! hierarchy the host offers: the unified (v2) one and, on a v1/v2 hybrid host, each v1
//! hierarchy with controllers. What cannot be used is reported and skipped, never fatal:
//! a node runs without a controller rather than not at all.

use std::path::{Path, PathBuf};

mod service;

pub use service::{Limits, ServiceCgroup};

/// One cgroup hierarchy mounted on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Where it is mounted (`/sys/fs/cgroup/cpu,cpuacct`).
    pub mount: PathBuf,
    /// This process's cgroup in it, as `/proc/self/cgroup` says (`/` at the top): the
    /// node's subtree goes below it, inside whatever the host put the tooling in.
    pub current: PathBuf,
    /// `None` for the unified (v2) hierarchy; the controllers of a v1 one.
    pub controllers: Option<Vec<String>>,
}

impl Hierarchy {
    pub fn is_unified(&self) -> bool {
        self.controllers.is_none()
    }
}

/// v1 mount options that are not controllers.
const NOT_CONTROLLERS: &[&str] = &[
    "rw",
    "ro",
    "nosuid",
    "nodev",
    "noexec",
    "relatime",
    "noatime",
    "clone_children",
    "noprefix",
    "xattr",
];

/// The hierarchies in a mount table (`/proc/self/mounts`), each with this process's
/// cgroup in it from `cgroups` (`/proc/self/cgroup`). Named v1 hierarchies without
/// controllers (systemd's `name=systemd`) are left out: they are their owner's.
pub fn hierarchies(mounts: &str, cgroups: &str) -> Vec<Hierarchy> {
    let mut found = Vec::new();
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, mount, fstype, options, ..] = fields[..] else {
            continue;
        };
        let controllers = match fstype {
            "cgroup2" => None,
            "cgroup" => {
                let controllers: Vec<String> = options
                    .split(',')
                    .filter(|o| !NOT_CONTROLLERS.contains(o) && !o.contains('='))
                    .map(str::to_string)
                    .collect();
                if controllers.is_empty() {
                    continue;
                }
                Some(controllers)
            }
            _ => continue,
        };
        let current = current_cgroup(cgroups, controllers.as_deref());
        found.push(Hierarchy {
            mount: PathBuf::from(mount),
            current,
            controllers,
        });
    }
    found
}

/// The cgroup of the hierarchy with `controllers` (`None`: the unified one) in a
/// `/proc/self/cgroup` text (`ID:CONTROLLERS:PATH` lines, `0::PATH` for v2); `/` if
/// it is not there.
fn current_cgroup(cgroups: &str, controllers: Option<&[String]>) -> PathBuf {
    let wanted = controllers.map(|c| {
        let mut c = c.to_vec();
        c.sort();
        c
    });
    cgroups
        .lines()
        .find_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, listed, path) = (fields.next()?, fields.next()?, fields.next()?);
            let mut listed: Vec<String> = listed
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect();
            listed.sort();
            let matches = match &wanted {
                None => listed.is_empty(),
                Some(wanted) => *wanted == listed,
            };
            matches.then(|| PathBuf::from(path))
        })
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// This process's own cgroup directory in `hierarchy`.
pub fn current_dir(hierarchy: &Hierarchy) -> PathBuf {
    let below = hierarchy
        .current
        .strip_prefix("/")
        .unwrap_or(&hierarchy.current);
    hierarchy.mount.join(below)
}

/// The hierarchies of this process, from `/proc/self/mounts` and `/proc/self/cgroup`;
/// empty when either cannot be read (no /proc: no cgroups to use).
pub fn own_hierarchies() -> Vec<Hierarchy> {
    match (
        std::fs::read_to_string("/proc/self/mounts"),
        std::fs::read_to_string("/proc/self/cgroup"),
    ) {
        (Ok(mounts), Ok(cgroups)) => hierarchies(&mounts, &cgroups),
        _ => Vec::new(),
    }
}

/// The node's directory in `hierarchy`.
pub fn node_dir(hierarchy: &Hierarchy, cluster: &str, node: &str) -> PathBuf {
    let below = hierarchy
        .current
        .strip_prefix("/")
        .unwrap_or(&hierarchy.current);
    hierarchy
        .mount
        .join(below)
        .join("basalt")
        .join(cluster)
        .join(node)
}

/// Puts `pid` into the node's cgroup in each hierarchy; returns the hierarchies it
/// joined and the problems with the others.
pub fn join(
    hierarchies: &[Hierarchy],
    cluster: &str,
    node: &str,
    pid: u32,
) -> (Vec<Hierarchy>, Vec<String>) {
    let mut joined = Vec::new();
    let mut problems = Vec::new();
    for hierarchy in hierarchies {
        let dir = node_dir(hierarchy, cluster, node);
        let result = std::fs::create_dir_all(&dir)
            .and_then(|()| inherit_cpuset(hierarchy, &dir))
            .and_then(|()| std::fs::write(dir.join("cgroup.procs"), pid.to_string()));
        match result {
            Ok(()) => joined.push(hierarchy.clone()),
            Err(e) => problems.push(format!("{}: {e}", dir.display())),
        }
    }
    (joined, problems)
}

/// A new v1 cpuset cgroup has no CPUs or memory nodes, and no process may join it until
/// it has: give each directory down to `dir` its parent's.
pub(crate) fn inherit_cpuset(hierarchy: &Hierarchy, dir: &Path) -> std::io::Result<()> {
    let is_cpuset = hierarchy
        .controllers
        .as_ref()
        .is_some_and(|c| c.iter().any(|c| c == "cpuset"));
    if !is_cpuset {
        return Ok(());
    }
    let Ok(below) = dir.strip_prefix(&hierarchy.mount) else {
        return Ok(());
    };
    let mut parent = hierarchy.mount.clone();
    for part in below.components() {
        let child = parent.join(part);
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let current = std::fs::read_to_string(child.join(file))?;
            if current.trim().is_empty() {
                std::fs::write(
                    child.join(file),
                    std::fs::read_to_string(parent.join(file))?,
                )?;
            }
        }
        parent = child;
    }
    Ok(())
}

/// Moves this process back where it was and removes the node's cgroups (once nothing is
/// left in them), its cluster's when it was the last node, and `basalt` when that was
/// the last cluster. Returns what it could not do.
pub fn remove(hierarchies: &[Hierarchy], cluster: &str, node: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for hierarchy in hierarchies {
        let below = hierarchy
            .current
            .strip_prefix("/")
            .unwrap_or(&hierarchy.current);
        let back = hierarchy.mount.join(below).join("cgroup.procs");
        if let Err(e) = std::fs::write(&back, std::process::id().to_string()) {
            problems.push(format!(
                "cannot leave the node's cgroup for {}: {e}",
                back.display()
            ));
        }
        // Fails while processes or other nodes are left: that is the point.
        let dir = node_dir(hierarchy, cluster, node);
        for dir in dir.ancestors().take(3) {
            let _ = std::fs::remove_dir(dir);
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_unified_and_v1_hierarchies_of_a_hybrid_host() {
        let mounts = "\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
tmpfs /sys/fs/cgroup tmpfs ro,nosuid,nodev,noexec,mode=755 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,nosuid,nodev,noexec,relatime,xattr,name=systemd 0 0
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,nodev,noexec,relatime,cpu,cpuacct 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,nosuid,nodev,noexec,relatime,memory 0 0
cgroup /sys/fs/cgroup/cpuset cgroup rw,nosuid,nodev,noexec,relatime,cpuset,clone_children 0 0
garbage
";
        let cgroups = "\
9:name=systemd:/
4:memory:/process_api/e820
1:cpu,cpuacct:/
0::/
";
        let found = hierarchies(mounts, cgroups);
        let names: Vec<_> = found
            .iter()
            .map(|h| (h.mount.display().to_string(), h.controllers.clone()))
            .take(4)
            .collect();
        let v1 = |c: &[&str]| Some(c.iter().map(|c| c.to_string()).collect::<Vec<_>>());
        assert_eq!(
            names,
            [
                ("/sys/fs/cgroup/unified".to_string(), None),
                (
                    "/sys/fs/cgroup/cpu,cpuacct".to_string(),
                    v1(&["cpu", "cpuacct"])
                ),
                ("/sys/fs/cgroup/memory".to_string(), v1(&["memory"])),
                ("/sys/fs/cgroup/cpuset".to_string(), v1(&["cpuset"])),
            ]
        );
        // Below where the host put this process, in each hierarchy.
        assert_eq!(
            node_dir(&found[2], "lab", "cp-1"),
            PathBuf::from("/sys/fs/cgroup/memory/process_api/e820/basalt/lab/cp-1")
        );
        assert_eq!(
            node_dir(&found[0], "lab", "cp-1"),
            PathBuf::from("/sys/fs/cgroup/unified/basalt/lab/cp-1")
        );
    }
}
