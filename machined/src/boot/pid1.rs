//! PID 1's boot on any machine, a VM, hardware or a container: the Initialize sequence
//! (kernel modules, then the image layers and STATE; nothing in a container), Boot (the node, whose
//! controllers set up the network), and on a power request Reboot, Shutdown or Reset. The
//! mains that get here are [`super::metal`] and [`super::container`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use basalt_controllers::network::{IpArg, Netlink};
use basalt_controllers::time::{Clock, SystemClock};
use basalt_controllers::Sources;
use basalt_machine_config::Mode;
use basalt_resources::runtime::KernelCmdlineSpec;
use basalt_sys::{Linux, Reboot};

use super::{layers, modules, reaper, state_disk};
use crate::acquire::{ConfigSources, FetchLimits};
use crate::edge::ApidProcessOptions;
use crate::parts::PowerRequest;
use crate::sequencer::{Phase, Sequence, Sequencer, Task};
use crate::{roles, BootError, EarlyApid, Node, NodeOptions};

/// How long a failed boot shows its error on the console before the machine restarts.
pub const FATAL_DELAY: Duration = Duration::from_secs(10);
/// How long the boot waits for the STATE disk to appear.
const STATE_WAIT: Duration = Duration::from_secs(5);
/// Where the node writes `hosts` and `resolv.conf` (the image's /etc links there): a
/// tmpfs of the node's own, also when container nodes share one image directory.
const ETC_DIR: &str = "/system/etc";
/// The image's list of kernel modules to load, and its embedded machine config (optional).
const MODULE_LIST: &str = "/etc/basalt/modules";
const EMBEDDED_CONFIG: &str = "/etc/basalt/config.yaml";
/// apid's uid and gid on a node: no user of its own besides this number.
pub const APID_UID: u32 = 50000;
/// How long the answer to a reboot or shutdown call has to reach its client.
const ANSWER_GRACE: Duration = Duration::from_millis(300);

/// What PID 1 boots on.
#[derive(Debug, Clone)]
pub(crate) struct Machine {
    /// A VM or hardware: kernel modules to load and a STATE disk to find. In a container
    /// neither: STATE is a directory the host gave it, already at /system/state.
    pub hardware: bool,
    /// The kernel command line (a container node's own, not its host's).
    pub cmdline: String,
    /// Where the controllers read it.
    pub cmdline_path: PathBuf,
}

/// From early mounts to a running node, and down again on a power request: the same
/// on every machine, but for the hardware steps.
pub(crate) async fn boot(
    mounted: &mut Vec<PathBuf>,
    machine: Machine,
) -> Result<Reboot, BootError> {
    tokio::spawn(reaper::run(PathBuf::from("/proc")));
    let sequencer = Sequencer::default();
    // apid's process first: it comes up while the machine loads its modules and mounts
    // STATE (its options do not depend on STATE).
    let early_apid = EarlyApid::start(&node_options(&machine, None)).unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot start apid early: the node starts it");
        None
    });

    // Steps that fail here are logged and the boot goes on: a node without STATE still
    // comes up, reachable, and says what is missing.
    let state_mount = Arc::new(Mutex::new(None));
    let mut phases = Vec::new();
    if machine.hardware {
        phases.push(Phase::new(
            "modules",
            vec![Task::new("load", load_modules())],
        ));
        phases.push(Phase::new(
            "devices",
            vec![
                Task::new("layers", mount_layers()),
                Task::new("state", mount_state(state_mount.clone())),
            ],
        ));
    } else {
        *state_mount.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(PathBuf::from(state_disk::MOUNT_POINT));
    }
    sequencer.run(Sequence::Initialize, phases).await?;
    let state_target = state_mount
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    let state_dir = state_target.as_ref().map(|target| target.join("basalt"));
    if machine.hardware {
        mounted.extend(state_target);
    }

    let options = node_options(&machine, state_dir.clone());
    let node = Arc::new(Mutex::new(None));
    let started = node.clone();
    sequencer
        .run(
            Sequence::Boot,
            vec![Phase::new(
                "node",
                vec![Task::new("start", async move {
                    let running = Node::start_with(options, early_apid).await?;
                    *started.lock().unwrap_or_else(PoisonError::into_inner) = Some(running);
                    Ok::<(), BootError>(())
                })],
            )],
        )
        .await?;
    let node = node
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
        .ok_or(BootError::NodeMissing)?;

    let mut requests = node.local().power.subscribe();
    let request = loop {
        if let Some(request) = requests.borrow_and_update().clone() {
            break request;
        }
        if requests.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tracing::info!(?request, "going down");
    let (sequence, how) = match &request {
        PowerRequest::Shutdown { .. } => (Sequence::Shutdown, Reboot::PowerOff),
        PowerRequest::Reboot { .. } => (Sequence::Reboot, Reboot::Restart),
        PowerRequest::Reset(options) if !options.reboot => (Sequence::Reset, Reboot::PowerOff),
        PowerRequest::Reset(_) => (Sequence::Reset, Reboot::Restart),
    };
    let mut phases = vec![
        Phase::new(
            "answer",
            vec![Task::new("grace", async {
                tokio::time::sleep(ANSWER_GRACE).await;
                Ok::<(), BootError>(())
            })],
        ),
        Phase::new(
            "node",
            vec![Task::new("stop", async move { node.shutdown().await })],
        ),
    ];
    if let (Sequence::Reset, Some(dir)) = (sequence, state_dir) {
        phases.push(Phase::new("wipe", vec![Task::new("state", wipe(dir))]));
    }
    // Down it goes, even if a step of the way failed.
    if let Err(e) = sequencer.run(sequence, phases).await {
        tracing::error!(error = %e, "going down");
    }
    Ok(how)
}

async fn load_modules() -> Result<(), BootError> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim();
    let modules_dir = Path::new("/lib/modules").join(release);
    match modules::load_listed(&Linux, &modules_dir, Path::new(MODULE_LIST)) {
        Ok(loaded) => tracing::info!(loaded, kernel = %release, "kernel modules loaded"),
        Err(e) => tracing::error!(error = %e, "loading kernel modules"),
    }
    Ok(())
}

/// Mounts the image layers (after the modules: loop and squashfs are among them).
async fn mount_layers() -> Result<(), BootError> {
    tokio::task::spawn_blocking(|| {
        layers::mount_all(
            &Linux,
            Path::new(roles::EXTENSIONS_DIR),
            basalt_sys::loopdev::attach_read_only,
        )
    })
    .await
    .map_err(|e| BootError::Io {
        what: "mounting the image layers",
        source: std::io::Error::other(e),
    })?;
    Ok(())
}

/// Mounts STATE and leaves where in `mounted`.
async fn mount_state(mounted: Arc<Mutex<Option<PathBuf>>>) -> Result<(), BootError> {
    let found =
        tokio::task::spawn_blocking(|| state_disk::mount(&Linux, Path::new("/"), STATE_WAIT))
            .await
            .map_err(|e| BootError::Io {
                what: "looking for STATE",
                source: std::io::Error::other(e),
            })?;
    match found {
        Ok(Some(target)) => *mounted.lock().unwrap_or_else(PoisonError::into_inner) = Some(target),
        Ok(None) => tracing::warn!(
            "no STATE disk (an ext4 filesystem labelled {}): the node's config lives in \
             memory and is lost when it restarts",
            state_disk::LABEL
        ),
        Err(e) => tracing::error!(error = %e, "mounting STATE: the node's config lives in memory"),
    }
    Ok(())
}

/// A reset forgets everything the node keeps on STATE: its config and its state.
async fn wipe(dir: PathBuf) -> Result<(), BootError> {
    match tokio::fs::remove_dir_all(&dir).await {
        Ok(()) => {
            tracing::info!(dir = %dir.display(), "the node's state is wiped");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(BootError::Io {
            what: "wiping the node's state",
            source,
        }),
    }
}

/// The node as the kernel command line and the image describe it.
fn node_options(machine: &Machine, state_dir: Option<PathBuf>) -> NodeOptions {
    let cmdline = machine.cmdline.as_str();
    let ip = IpArg::from_cmdline(cmdline).ok().flatten();
    let roles = roles::Layout {
        extensions: PathBuf::from(roles::EXTENSIONS_DIR),
        // STATE's mount point: the node keeps its own state in `basalt` below it.
        state: state_dir
            .as_deref()
            .and_then(Path::parent)
            .map(Path::to_path_buf),
    };
    NodeOptions {
        listen: SocketAddr::from(([0, 0, 0, 0], basalt_api::DEFAULT_PORT)),
        state_dir,
        config: ConfigSources {
            embedded: std::fs::read_to_string(EMBEDDED_CONFIG).ok(),
            url: ConfigSources::url_from_cmdline(cmdline),
            fetch: FetchLimits::default(),
        },
        validation_mode: if machine.hardware {
            platform_of(cmdline)
        } else {
            Mode::Container
        },
        sans: ip.iter().map(|ip| ip.address.to_string()).collect(),
        sources: Sources {
            cmdline: machine.cmdline_path.clone(),
            api_cert_validity: api_cert_lifetime(cmdline),
            netlink: Some(Netlink::default()),
            etc_dir: Some(PathBuf::from(ETC_DIR)),
            // A container node's clock is its host's: measured, never set.
            clock: machine
                .hardware
                .then(|| Arc::new(SystemClock) as Arc<dyn Clock>),
            ..Sources::default()
        },
        apid_process: Some(ApidProcessOptions {
            uid: APID_UID,
            gid: APID_UID,
            run_dir: PathBuf::from("/run/basalt"),
            binary: None,
        }),
        trustd_listen: Some(SocketAddr::from(([0, 0, 0, 0], basalt_api::TRUSTD_PORT))),
        roles: Some(roles),
        ..NodeOptions::default()
    }
}

/// The platform the kernel command line names (`basalt.platform=metal|cloud`), which
/// decides how configs are validated: `metal` installs to a disk, so its configs need an
/// install disk; `cloud` boots an image already on its disk (as `_out/` under QEMU does).
fn platform_of(cmdline: &str) -> Mode {
    let cmdline = KernelCmdlineSpec::parse(cmdline);
    let named = cmdline.get("basalt.platform");
    match named.map(str::parse::<Mode>) {
        None => Mode::Metal,
        Some(Ok(Mode::Container)) | Some(Err(_)) => {
            tracing::error!(platform = ?named, "unknown basalt.platform= (metal or cloud): using metal");
            Mode::Metal
        }
        Some(Ok(mode)) => mode,
    }
}

/// How long the node's API certificates live (`basalt.api-cert-lifetime=`, e.g. `1h`;
/// renewed at half of it), or the default.
fn api_cert_lifetime(cmdline: &str) -> Duration {
    let cmdline = KernelCmdlineSpec::parse(cmdline);
    let Some(text) = cmdline.get("basalt.api-cert-lifetime") else {
        return basalt_controllers::DEFAULT_API_CERT_VALIDITY;
    };
    match humantime::parse_duration(text) {
        Ok(lifetime) if lifetime >= Duration::from_secs(2) => lifetime,
        other => {
            tracing::error!(value = text, error = ?other.err(), "basalt.api-cert-lifetime= needs a duration of 2s or more: using the default");
            basalt_controllers::DEFAULT_API_CERT_VALIDITY
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_platform_comes_from_the_command_line_and_defaults_to_metal() {
        assert_eq!(platform_of("console=ttyS0"), Mode::Metal);
        assert_eq!(platform_of("basalt.platform=cloud quiet"), Mode::Cloud);
        assert_eq!(platform_of("basalt.platform=container"), Mode::Metal);
        assert_eq!(platform_of("basalt.platform=mars"), Mode::Metal);
    }

    #[test]
    fn the_api_certificate_lifetime_comes_from_the_command_line() {
        let default = basalt_controllers::DEFAULT_API_CERT_VALIDITY;
        assert_eq!(api_cert_lifetime("quiet"), default);
        assert_eq!(
            api_cert_lifetime("basalt.api-cert-lifetime=20s"),
            Duration::from_secs(20)
        );
        assert_eq!(api_cert_lifetime("basalt.api-cert-lifetime=1s"), default);
        assert_eq!(api_cert_lifetime("basalt.api-cert-lifetime=soon"), default);
    }
}
