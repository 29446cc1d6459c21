//! A cgroup per service: `<this process's cgroup>/<parent>/<service>` in every hierarchy
//! this process can write, with the service's memory and pids limits where a controller
//! for them is found (the unified hierarchy first, else a v1 one). What cannot be made or
//! applied is reported, never fatal: a service runs without its limit rather than not at
//! all, and its status says which limit is missing and why.
//!
//! The cgroup is made before the service's process exists, and the process joins it
//! before it execs (through the files [`ServiceCgroup::procs_files`] opens), so nothing
//! the service runs can start outside it.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::process::{kill_process, Pid, Signal};

use super::{current_dir, inherit_cpuset, Hierarchy};

/// The limits of one service; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of memory (with page cache) before the kernel's OOM killer steps in.
    pub memory_max: Option<u64>,
    /// Processes and threads the service may have at once; a fork past it fails with
    /// EAGAIN.
    pub pids_max: Option<u64>,
}

/// The leaf a v2 cgroup's own processes move to when the cgroup must hand controllers
/// to its children (see [`enable_v2`]).
const LEAF: &str = "basalt-machined";

/// How long [`ServiceCgroup::remove`] keeps killing and retrying before it reports.
const REMOVE_PATIENCE: Duration = Duration::from_secs(5);

/// One service's directory in one hierarchy.
#[derive(Debug)]
struct Dir {
    path: PathBuf,
    unified: bool,
    /// The controllers the directory has: a v1 hierarchy's, or those enabled for it in
    /// the unified one.
    controllers: Vec<String>,
}

/// The cgroups of one service, removed (with whatever is left in them) by
/// [`ServiceCgroup::remove`] or, failing that, when dropped.
#[derive(Debug)]
pub struct ServiceCgroup {
    dirs: Vec<Dir>,
    /// The `<parent>` directories, removed when their last service goes.
    parents: Vec<PathBuf>,
    not_applied: Vec<String>,
    problems: Vec<String>,
    /// The file with the cgroup's `oom_kill` counter, when a memory limit is applied.
    oom_counter: Option<PathBuf>,
    removed: bool,
}

impl ServiceCgroup {
    /// Makes `<own cgroup>/<parent>/<id>` in each of `hierarchies` and applies `limits`.
    /// Blocking (cgroupfs writes, and killing what an earlier run left behind).
    pub fn create(hierarchies: &[Hierarchy], parent: &str, id: &str, limits: Limits) -> Self {
        let mut cgroup = ServiceCgroup {
            dirs: Vec::new(),
            parents: Vec::new(),
            not_applied: Vec::new(),
            problems: Vec::new(),
            oom_counter: None,
            removed: false,
        };
        let mut wanted = Vec::new();
        if limits.memory_max.is_some() {
            wanted.push("memory");
        }
        if limits.pids_max.is_some() {
            wanted.push("pids");
        }
        for hierarchy in hierarchies {
            let own = current_dir(hierarchy);
            let base = own.join(parent);
            let dir = base.join(id);
            if let Err(e) = fs::create_dir_all(&dir).and_then(|()| inherit_cpuset(hierarchy, &dir))
            {
                cgroup.problems.push(format!("{}: {e}", dir.display()));
                continue;
            }
            let controllers = match &hierarchy.controllers {
                Some(controllers) => controllers.clone(),
                None => enable_v2(hierarchy, &own, &base, &wanted, &mut cgroup.problems),
            };
            // Left by an earlier run that could not clean up (a machined that died): its
            // processes are not this run's.
            kill_listed(&dir);
            cgroup.parents.push(base);
            cgroup.dirs.push(Dir {
                path: dir,
                unified: hierarchy.is_unified(),
                controllers,
            });
        }
        if let Some(max) = limits.memory_max {
            let applied = cgroup.limit("memory", max, "memory.max", "memory.limit_in_bytes");
            match applied {
                Ok(dir) => {
                    cgroup.oom_counter = Some(dir.join(if dir_is_v2(&dir) {
                        "memory.events"
                    } else {
                        "memory.oom_control"
                    }));
                }
                Err(why) => cgroup
                    .not_applied
                    .push(format!("memory limit of {max} bytes: {why}")),
            }
        }
        if let Some(max) = limits.pids_max {
            if let Err(why) = cgroup.limit("pids", max, "pids.max", "pids.max") {
                cgroup
                    .not_applied
                    .push(format!("pids limit of {max}: {why}"));
            }
        }
        cgroup
    }

    /// Writes `value` to the limit file of the first directory with `controller` (the
    /// unified hierarchy's `v2_file` first, else a v1 hierarchy's `v1_file`); returns
    /// that directory, or why there is none.
    fn limit(
        &self,
        controller: &str,
        value: u64,
        v2_file: &str,
        v1_file: &str,
    ) -> Result<PathBuf, String> {
        let mut candidates: Vec<&Dir> = self
            .dirs
            .iter()
            .filter(|d| d.controllers.iter().any(|c| c == controller))
            .collect();
        candidates.sort_by_key(|d| !d.unified);
        let mut why = Vec::new();
        for dir in candidates {
            let file = dir.path.join(if dir.unified { v2_file } else { v1_file });
            match fs::write(&file, value.to_string()) {
                Ok(()) => return Ok(dir.path.clone()),
                Err(e) => why.push(format!("writing {}: {e}", file.display())),
            }
        }
        if why.is_empty() {
            why.push(format!("no {controller} controller this node can use"));
        }
        Err(why.join("; "))
    }

    /// The limits that could not be applied, each with why.
    pub fn not_applied(&self) -> &[String] {
        &self.not_applied
    }

    /// Hierarchies the service could not get a cgroup in (it runs without them).
    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    /// The service's directories, one per hierarchy it has a cgroup in.
    pub fn dirs(&self) -> impl Iterator<Item = &Path> {
        self.dirs.iter().map(|d| d.path.as_path())
    }

    /// Each directory's `cgroup.procs`, open for writing: a child writes `0` to each
    /// before it execs to join them (see `crate::exec::confine`). A file that cannot be
    /// opened is left out and reported.
    pub fn procs_files(&mut self) -> Vec<OwnedFd> {
        let mut files = Vec::with_capacity(self.dirs.len());
        for dir in &self.dirs {
            let path = dir.path.join("cgroup.procs");
            match OpenOptions::new().write(true).open(&path) {
                Ok(file) => files.push(OwnedFd::from(file)),
                Err(e) => self.problems.push(format!("{}: {e}", path.display())),
            }
        }
        files
    }

    /// How many times the kernel's OOM killer killed a process of this cgroup for its
    /// memory limit; `None` without a memory limit or a readable counter.
    pub fn oom_kills(&self) -> Option<u64> {
        let text = fs::read_to_string(self.oom_counter.as_ref()?).ok()?;
        text.lines()
            .find_map(|line| line.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
    }

    /// Every process in the service's cgroups.
    pub fn pids(&self) -> BTreeSet<i32> {
        self.dirs.iter().flat_map(|d| listed(&d.path)).collect()
    }

    /// Kills every process in the cgroups: at once through a v2 `cgroup.kill`, else by
    /// SIGKILL to each listed pid until none is left (a process forking meanwhile is
    /// listed on the next round). Blocking, for at most a few seconds; returns what is
    /// left alive.
    pub fn kill(&self) -> BTreeSet<i32> {
        for dir in self.dirs.iter().filter(|d| d.unified) {
            // ENOENT before Linux 5.14: the loop below does it.
            let _ = fs::write(dir.path.join("cgroup.kill"), "1");
        }
        let deadline = Instant::now() + REMOVE_PATIENCE;
        loop {
            let left = self.pids();
            if left.is_empty() || Instant::now() >= deadline {
                return left;
            }
            for dir in &self.dirs {
                kill_listed(&dir.path);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills what is left and removes the service's directories (and `<parent>` when it
    /// was the last service there). Blocking; returns what it could not do.
    pub fn remove(&mut self) -> Vec<String> {
        self.removed = true;
        let mut problems = Vec::new();
        let left = self.kill();
        if !left.is_empty() {
            problems.push(format!("processes {left:?} survived SIGKILL"));
        }
        for dir in &self.dirs {
            if let Err(e) = remove_dir_patiently(&dir.path) {
                problems.push(format!("removing {}: {e}", dir.path.display()));
            }
        }
        for parent in &self.parents {
            // Fails while other services are there: that is the point.
            let _ = fs::remove_dir(parent);
        }
        problems
    }
}

impl Drop for ServiceCgroup {
    fn drop(&mut self) {
        if !self.removed {
            // Only reached when the supervising task was dropped mid-run (its runtime
            // went away): no service outlives its supervisor, and no cgroup is left.
            let _ = self.remove();
        }
    }
}

/// A v2 directory: it has `cgroup.controllers`.
fn dir_is_v2(dir: &Path) -> bool {
    dir.join("cgroup.controllers").exists()
}

/// The pids in a cgroup directory's `cgroup.procs` (none if it cannot be read).
fn listed(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

fn kill_listed(dir: &Path) {
    for pid in listed(dir) {
        if let Some(pid) = Pid::from_raw(pid) {
            // ESRCH: it is gone already.
            let _ = kill_process(pid, Signal::KILL);
        }
    }
}

/// rmdir fails with EBUSY for a moment after the last process was killed (it is still
/// exiting): retry until it succeeds or time is up. A directory that is gone is removed.
fn remove_dir_patiently(dir: &Path) -> io::Result<()> {
    let deadline = Instant::now() + REMOVE_PATIENCE;
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => {
                kill_listed(dir);
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Enables `wanted` controllers for `base` (`<own>/<parent>`) in the unified hierarchy:
/// in `own`'s `cgroup.subtree_control`, then in `base`'s. Returns the ones enabled;
/// the others are reported in `problems`.
///
/// cgroup v2's "no internal processes" rule: a cgroup other than the root cannot both
/// have processes and hand controllers to its children (EBUSY). machined is in `own`
/// (a container node's cgroup on its host), so when that bites, every process of `own`
/// moves to the leaf `<own>/basalt-machined` first, the way systemd keeps itself in
/// `init.scope`: services are then under a sibling of machined's cgroup, and `own` only
/// has children. The root cgroup (machined as PID 1 of a VM) is exempt and needs none
/// of this.
fn enable_v2(
    hierarchy: &Hierarchy,
    own: &Path,
    base: &Path,
    wanted: &[&str],
    problems: &mut Vec<String>,
) -> Vec<String> {
    let available = fs::read_to_string(own.join("cgroup.controllers")).unwrap_or_default();
    let available: Vec<&str> = available.split_whitespace().collect();
    let mut enabled = Vec::new();
    for &controller in wanted {
        if !available.contains(&controller) {
            // The normal case on a v1/v2 hybrid host: v1 has it.
            continue;
        }
        let enable =
            |dir: &Path| fs::write(dir.join("cgroup.subtree_control"), format!("+{controller}"));
        let mut result = enable(own);
        if matches!(&result, Err(e) if e.raw_os_error() == Some(Errno::BUSY.raw_os_error()))
            && own != hierarchy.mount
        {
            result = move_to_leaf(own).and_then(|()| enable(own));
        }
        match result.and_then(|()| enable(base)) {
            Ok(()) => enabled.push(controller.to_string()),
            Err(e) => problems.push(format!(
                "cgroup v2 {}: cannot enable the {controller} controller: {e}",
                own.display()
            )),
        }
    }
    enabled
}

/// Moves every process of the v2 cgroup `own` to its child [`LEAF`].
fn move_to_leaf(own: &Path) -> io::Result<()> {
    let leaf = own.join(LEAF);
    fs::create_dir_all(&leaf)?;
    for pid in listed(own) {
        match fs::write(leaf.join("cgroup.procs"), pid.to_string()) {
            // It exited meanwhile.
            Err(e) if e.raw_os_error() == Some(Errno::SRCH.raw_os_error()) => {}
            other => other?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_oom_counter_is_read_from_v1_and_v2_files() {
        let dir = tempfile::tempdir().unwrap();
        for (file, text, want) in [
            (
                "memory.events",
                "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
                Some(1),
            ),
            (
                "memory.oom_control",
                "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
                Some(2),
            ),
            ("memory.oom_control", "oom_kill_disable 0\n", None),
        ] {
            let path = dir.path().join(file);
            fs::write(&path, text).unwrap();
            let cgroup = ServiceCgroup {
                dirs: Vec::new(),
                parents: Vec::new(),
                not_applied: Vec::new(),
                problems: Vec::new(),
                oom_counter: Some(path),
                removed: true,
            };
            assert_eq!(cgroup.oom_kills(), want, "{file}: {text:?}");
        }
    }

    /// Removes what the v2 test made, also when it fails.
    struct V2Cleanup {
        own: PathBuf,
        child: std::process::Child,
        root_had_it: bool,
        root: PathBuf,
    }

    impl Drop for V2Cleanup {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            for dir in [
                self.own.join("services"),
                self.own.join(LEAF),
                self.own.clone(),
            ] {
                let _ = remove_dir_patiently(&dir);
            }
            if !self.root_had_it {
                let _ = fs::write(self.root.join("cgroup.subtree_control"), "-hugetlb");
            }
        }
    }

    /// The "no internal processes" rule on the host's unified hierarchy, with the one
    /// controller it has here (hugetlb): a cgroup with a process cannot give its children
    /// a controller until its processes move to the leaf.
    #[test]
    fn a_v2_cgroup_with_processes_hands_controllers_down_through_a_leaf() {
        let root = PathBuf::from("/sys/fs/cgroup/unified");
        let available = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        if !available.split_whitespace().any(|c| c == "hugetlb") {
            println!(
                "skipped: no cgroup v2 hierarchy with hugetlb at {}",
                root.display()
            );
            return;
        }
        let subtree = fs::read_to_string(root.join("cgroup.subtree_control")).unwrap();
        let root_had_it = subtree.split_whitespace().any(|c| c == "hugetlb");
        let own = root.join(format!("basalt-sys-test-{}", std::process::id()));
        fs::create_dir(&own).unwrap();
        let child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let pid = child.id();
        let cleanup = V2Cleanup {
            own: own.clone(),
            child,
            root_had_it,
            root: root.clone(),
        };
        fs::write(own.join("cgroup.procs"), pid.to_string()).unwrap();
        if !root_had_it {
            fs::write(root.join("cgroup.subtree_control"), "+hugetlb").unwrap();
        }
        let hierarchy = Hierarchy {
            mount: root.clone(),
            current: PathBuf::from("/").join(own.file_name().unwrap()),
            controllers: None,
        };
        let base = own.join("services");
        fs::create_dir(&base).unwrap();
        // The rule itself, so that this test shows the case it is about.
        let refused = fs::write(own.join("cgroup.subtree_control"), "+hugetlb").unwrap_err();
        assert_eq!(refused.raw_os_error(), Some(Errno::BUSY.raw_os_error()));

        let mut problems = Vec::new();
        let enabled = enable_v2(&hierarchy, &own, &base, &["hugetlb"], &mut problems);
        assert_eq!(enabled, ["hugetlb"], "{problems:?}");
        assert_eq!(listed(&own.join(LEAF)), [pid as i32]);
        assert!(listed(&own).is_empty());
        let controllers = fs::read_to_string(base.join("cgroup.controllers")).unwrap();
        assert!(controllers.contains("hugetlb"), "{controllers:?}");
        drop(cleanup);
        assert!(!own.exists());
    }
}
