//! A node in a container on a host: the same image and the same boot as on a machine,
//! but for the hardware steps. Two processes, both this binary:
//!
//! - the shim (argv[0] `basalt-container`, started by the cluster tooling with the
//!   image's root unpacked in a directory): puts itself in the node's cgroups
//!   (`basalt/<cluster>/<node>` in every hierarchy the host offers), makes the node's
//!   network namespace, and starts PID 1 in a fresh PID namespace, again after each
//!   reboot; it exits when the node powers off.
//! - PID 1 ([`main`], `/init` with `container=basalt` in its environment): takes fresh
//!   mount, UTS, IPC and cgroup namespaces, binds the node's STATE directory at
//!   /system/state, pivots into the image's root (so it runs the image's files, and has
//!   no shell either), mounts what a container may, and boots as on a machine.
//!
//! A PID namespace's init that calls reboot(2) is killed by the kernel with SIGHUP
//! (restart) or SIGINT (power off): that is how the shim learns what the node asked.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use basalt_sys::{cgroups, netns, Linux, Mount, MountFlags, Namespaces, Sys};

use super::mounts;
use super::pid1::{self, Machine};
use crate::BootError;

/// The environment that tells PID 1 it is a container node, and its settings.
pub const CONTAINER_ENV: &str = "container";
pub const CONTAINER_VALUE: &str = "basalt";
const ROOT_ENV: &str = "BASALT_ROOT";
const STATE_ENV: &str = "BASALT_STATE";
const CMDLINE_ENV: &str = "BASALT_CMDLINE";
/// The node's kernel command line, written where its controllers read it.
const CMDLINE_FILE: &str = "/run/basalt/cmdline";
/// Devices a container node gets from its host (no devtmpfs: that is the host's).
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty", "kmsg"];

/// The shim's command line.
#[derive(Debug, clap::Parser)]
#[command(
    name = "basalt-container",
    about = "Runs a Basalt node in a container (started by the cluster tooling)"
)]
pub struct ShimArgs {
    /// The image's root, unpacked (its `init` is this binary).
    #[arg(long)]
    pub root: PathBuf,
    /// The node's STATE: a directory of the host, kept across reboots.
    #[arg(long)]
    pub state: PathBuf,
    #[arg(long)]
    pub cluster: String,
    #[arg(long)]
    pub node: String,
    /// The node's kernel command line (`basalt.config=`, `basalt.api-cert-lifetime=`...).
    #[arg(long, default_value = "")]
    pub kernel_args: String,
    /// The node's network namespace, made and cabled by the cluster tooling (a pinned
    /// namespace file); a fresh one without it.
    #[arg(long)]
    pub netns: Option<PathBuf>,
}

/// The shim's main: runs the node until it powers off; its exit code is the node's.
pub fn run_shim(args: ShimArgs) -> ExitCode {
    let sys = Linux;
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let hierarchies = cgroups::hierarchies(&read("/proc/self/mounts"), &read("/proc/self/cgroup"));
    let (joined, problems) =
        cgroups::join(&hierarchies, &args.cluster, &args.node, std::process::id());
    for problem in &problems {
        tracing::warn!(problem = %problem, "a cgroup hierarchy the node does without");
    }
    tracing::info!(
        joined = ?joined.iter().map(|h| h.mount.display().to_string()).collect::<Vec<_>>(),
        "the node's cgroups"
    );
    let code = run_boots(&sys, &args);
    for problem in cgroups::remove(&joined, &args.cluster, &args.node) {
        tracing::warn!(problem = %problem, "removing the node's cgroups");
    }
    code
}

fn run_boots(sys: &dyn Sys, args: &ShimArgs) -> ExitCode {
    // The node's network namespace is the shim's: it survives the node's reboots, as a
    // machine's network card does.
    let joined = match &args.netns {
        Some(path) => netns::enter(path),
        None => sys.unshare(Namespaces {
            net: true,
            ..Namespaces::default()
        }),
    };
    if let Err(e) = joined {
        tracing::error!(error = %e, "cannot enter the node's network namespace");
        return ExitCode::FAILURE;
    }
    let init = args.root.join("init");
    loop {
        let pid = Namespaces {
            pid: true,
            ..Namespaces::default()
        };
        if let Err(e) = sys
            .reset_pid_namespace_for_children()
            .and_then(|()| sys.unshare(pid))
        {
            tracing::error!(error = %e, "cannot make the node's PID namespace");
            return ExitCode::FAILURE;
        }
        let status = std::process::Command::new(&init)
            .env_clear()
            .env(CONTAINER_ENV, CONTAINER_VALUE)
            .env(ROOT_ENV, &args.root)
            .env(STATE_ENV, &args.state)
            .env(CMDLINE_ENV, &args.kernel_args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .status();
        let status = match status {
            Ok(status) => status,
            Err(e) => {
                tracing::error!(init = %init.display(), error = %e, "cannot start the node");
                return ExitCode::FAILURE;
            }
        };
        use std::os::unix::process::ExitStatusExt as _;
        match (status.signal(), status.code()) {
            (Some(SIGHUP), _) => {
                tracing::info!(node = %args.node, "the node restarts");
            }
            (Some(SIGINT), _) => {
                tracing::info!(node = %args.node, "the node powered off");
                return ExitCode::SUCCESS;
            }
            (Some(signal), _) => {
                tracing::error!(signal, "the node was killed");
                return ExitCode::from(128 + (signal as u8 & 0x7f));
            }
            (None, Some(code)) => {
                tracing::error!(code, "the node's PID 1 exited");
                return ExitCode::from(code as u8);
            }
            (None, None) => return ExitCode::FAILURE,
        }
    }
}

const SIGHUP: i32 = 1;
const SIGINT: i32 = 2;

/// Whether this process is a container node's PID 1.
pub fn is_container_init() -> bool {
    std::process::id() == 1
        && std::env::var(CONTAINER_ENV).is_ok_and(|value| value == CONTAINER_VALUE)
}

/// PID 1's main in a container: never returns.
pub fn main() -> ! {
    let sys = Linux;
    let error = super::guard(&sys, pid1::FATAL_DELAY, |mounted| {
        if let Err(e) = sys.die_with_parent() {
            tracing::warn!(error = %e, "the node will not go with its shim");
        }
        let root = PathBuf::from(std::env::var_os(ROOT_ENV).unwrap_or_default());
        let state = PathBuf::from(std::env::var_os(STATE_ENV).unwrap_or_default());
        enter_root(&sys, &root, &state)?;
        mounted.extend(mounts::mount_all(&sys, Path::new("/"), &early())?);
        let cmdline = std::env::var(CMDLINE_ENV).unwrap_or_default();
        write_cmdline(&cmdline)?;
        let runtime = super::runtime()?;
        let machine = Machine {
            hardware: false,
            cmdline,
            cmdline_path: PathBuf::from(CMDLINE_FILE),
        };
        runtime.block_on(pid1::boot(mounted, machine))
    });
    tracing::error!(error = %error, "the kernel refused to take the node down");
    loop {
        std::thread::park();
    }
}

/// Fresh namespaces (before any other thread starts), STATE and the host's devices bound
/// in, then the image's root becomes `/` and the host's is let go.
pub fn enter_root(sys: &dyn Sys, root: &Path, state: &Path) -> Result<(), BootError> {
    let mount_error = |what: &str, target: &Path| {
        let what = what.to_string();
        let target = target.to_path_buf();
        move |source| BootError::Mount {
            what,
            target,
            source,
        }
    };
    if !root.join("init").exists() {
        return Err(BootError::Io {
            what: "finding the image's root (BASALT_ROOT)",
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} has no init", root.display()),
            ),
        });
    }
    sys.unshare(Namespaces {
        mount: true,
        uts: true,
        ipc: true,
        cgroup: true,
        ..Namespaces::default()
    })
    .map_err(|source| BootError::Mount {
        what: "new namespaces".into(),
        target: PathBuf::from("/"),
        source,
    })?;
    sys.make_private(Path::new("/"))
        .map_err(mount_error("private mounts", Path::new("/")))?;
    // pivot_root needs the new root to be a mount point.
    sys.bind(root, root)
        .map_err(mount_error("the image's root", root))?;
    let state_target = mounts::under(root, Path::new(super::state_disk::MOUNT_POINT));
    create_dir(&state_target)?;
    sys.bind(state, &state_target)
        .map_err(mount_error("the node's STATE", &state_target))?;
    let dev = root.join("dev");
    create_dir(&dev)?;
    let tmpfs = Mount {
        source: "tmpfs".into(),
        target: dev.clone(),
        fstype: "tmpfs".into(),
        flags: MountFlags {
            no_suid: true,
            no_exec: true,
            ..MountFlags::default()
        },
        data: "mode=0755".into(),
    };
    sys.mount(&tmpfs).map_err(mount_error("tmpfs", &dev))?;
    for device in DEVICES {
        let host = Path::new("/dev").join(device);
        let target = dev.join(device);
        if !host.exists() {
            continue;
        }
        std::fs::write(&target, b"").map_err(|source| BootError::Directory {
            path: target.clone(),
            source,
        })?;
        sys.bind(&host, &target)
            .map_err(mount_error("a host device", &target))?;
    }
    std::env::set_current_dir(root).map_err(|source| BootError::Directory {
        path: root.to_path_buf(),
        source,
    })?;
    // The old root goes on top of the new one, and is detached at once.
    sys.pivot_root(Path::new("."), Path::new("."))
        .map_err(mount_error("pivot_root", root))?;
    sys.unmount(Path::new("."))
        .map_err(mount_error("the host's root", Path::new("/")))?;
    std::env::set_current_dir("/").map_err(|source| BootError::Directory {
        path: PathBuf::from("/"),
        source,
    })?;
    Ok(())
}

fn create_dir(path: &Path) -> Result<(), BootError> {
    std::fs::create_dir_all(path).map_err(|source| BootError::Directory {
        path: path.to_path_buf(),
        source,
    })
}

fn write_cmdline(cmdline: &str) -> Result<(), BootError> {
    let path = Path::new(CMDLINE_FILE);
    if let Some(dir) = path.parent() {
        create_dir(dir)?;
    }
    std::fs::write(path, cmdline).map_err(|source| BootError::Directory {
        path: path.to_path_buf(),
        source,
    })
}

/// A container node's early mounts: the kernel's views of its own namespaces (no
/// devtmpfs, which is the host's), scratch space, and its cgroups, rooted at its
/// subtree by the cgroup namespace.
pub fn early() -> Vec<Mount> {
    mounts::early()
        .into_iter()
        .filter(|m| m.fstype != "devtmpfs")
        .map(|m| match m.fstype.as_str() {
            // Its own pseudo-terminals, not the host's.
            "devpts" => Mount {
                data: format!("{},newinstance", m.data),
                ..m
            },
            _ => m,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use basalt_sys::{Call, Recording};

    use super::*;

    #[test]
    fn enters_the_images_root_with_state_and_devices_bound_in() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("init"), b"").unwrap();
        let state = tempfile::tempdir().unwrap();
        let cwd = std::env::current_dir().unwrap();
        let sys = Recording::new();
        // The recording does not pivot: only the calls are checked.
        enter_root(&sys, root.path(), state.path()).unwrap();
        std::env::set_current_dir(cwd).unwrap();
        let names: Vec<_> = sys.calls().iter().map(Call::name).collect();
        assert_eq!(names[..4], ["unshare", "make_private", "bind", "bind"]);
        assert_eq!(names[4], "mount", "tmpfs on /dev");
        assert_eq!(names[names.len() - 2..], ["pivot_root", "unmount"]);
        let calls = sys.calls();
        let Call::Unshare(namespaces) = &calls[0] else {
            unreachable!()
        };
        assert!(namespaces.mount && namespaces.cgroup && namespaces.uts && namespaces.ipc);
        assert!(!namespaces.pid && !namespaces.net, "those are the shim's");
        assert!(calls.contains(&Call::Bind {
            source: state.path().to_path_buf(),
            target: root.path().join("system/state"),
        }));
        assert!(calls.contains(&Call::Bind {
            source: PathBuf::from("/dev/null"),
            target: root.path().join("dev/null"),
        }));
    }

    #[test]
    fn a_root_without_init_is_refused_before_anything_changes() {
        let root = tempfile::tempdir().unwrap();
        let sys = Recording::new();
        let err = enter_root(&sys, root.path(), root.path()).unwrap_err();
        assert!(err.to_string().contains("has no init"), "{err}");
        assert!(sys.calls().is_empty());
    }

    #[test]
    fn container_mounts_have_no_devtmpfs_and_their_own_ptys() {
        let early = early();
        assert!(early.iter().all(|m| m.fstype != "devtmpfs"));
        let devpts = early.iter().find(|m| m.fstype == "devpts").unwrap();
        assert!(devpts.data.ends_with(",newinstance"));
    }
}
