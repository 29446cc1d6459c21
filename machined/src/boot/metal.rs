//! The boot on a real kernel (QEMU or hardware): machined is `/init` of the initramfs.
//! Early mounts, kernel modules, the reaper, the first network, STATE, then the node;
//! it runs until a power request, and the machine goes down as asked.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use basalt_controllers::Sources;
use basalt_machine_config::Mode;
use basalt_resources::runtime::KernelCmdlineSpec;
use basalt_sys::{Linux, Reboot};

use super::{modules, mounts, network, reaper, state_disk};
use crate::acquire::{ConfigSources, FetchLimits};
use crate::edge::ApidProcessOptions;
use crate::parts::PowerRequest;
use crate::{BootError, Node, NodeOptions};

/// How long a failed boot shows its error on the console before the machine restarts.
pub const FATAL_DELAY: Duration = Duration::from_secs(10);
/// How long the boot waits for the STATE disk and for the `ip=` link to appear.
const STATE_WAIT: Duration = Duration::from_secs(5);
const LINK_WAIT: Duration = Duration::from_secs(10);
/// The image's list of kernel modules to load, and its embedded machine config (optional).
const MODULE_LIST: &str = "/etc/basalt/modules";
const EMBEDDED_CONFIG: &str = "/etc/basalt/config.yaml";
/// apid's uid and gid on a node: no user of its own besides this number.
pub const APID_UID: u32 = 50000;
/// How long the answer to a reboot or shutdown call has to reach its client.
const ANSWER_GRACE: Duration = Duration::from_millis(300);

/// PID 1's main: never returns.
pub fn main() -> ! {
    let sys = Linux;
    let error = super::guard(&sys, FATAL_DELAY, |mounted| {
        mounted.extend(mounts::mount_all(&sys, Path::new("/"), &mounts::early())?);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|source| BootError::Io {
                what: "starting the async runtime",
                source,
            })?;
        runtime.block_on(boot(mounted))
    });
    tracing::error!(error = %error, "the kernel refused to take the machine down");
    loop {
        std::thread::park();
    }
}

async fn boot(mounted: &mut Vec<PathBuf>) -> Result<Reboot, BootError> {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let release = read("/proc/sys/kernel/osrelease").trim().to_string();
    let modules_dir = Path::new("/lib/modules").join(&release);
    match modules::load_listed(&Linux, &modules_dir, Path::new(MODULE_LIST)) {
        Ok(loaded) => tracing::info!(loaded, kernel = %release, "kernel modules loaded"),
        Err(e) => tracing::error!(error = %e, "loading kernel modules"),
    }
    tokio::spawn(reaper::run(PathBuf::from("/proc")));

    let cmdline = read("/proc/cmdline");
    let platform = platform_of(&cmdline);
    let ip = network::IpArg::from_cmdline(&cmdline).unwrap_or_else(|e| {
        tracing::error!(error = %e, "ignoring the kernel's ip= argument");
        None
    });
    if let Err(e) = network::configure(ip.as_ref(), LINK_WAIT).await {
        tracing::error!(error = %e, "configuring the network");
    }

    let state =
        tokio::task::spawn_blocking(|| state_disk::mount(&Linux, Path::new("/"), STATE_WAIT))
            .await
            .map_err(|e| BootError::Io {
                what: "looking for STATE",
                source: std::io::Error::other(e),
            })?;
    let state_dir = match state {
        Ok(Some(target)) => {
            mounted.push(target.clone());
            Some(target.join("basalt"))
        }
        Ok(None) => {
            tracing::warn!(
                "no STATE disk (an ext4 filesystem labelled {}): the node's config lives in \
                 memory and is lost when it restarts",
                state_disk::LABEL
            );
            None
        }
        Err(e) => {
            tracing::error!(error = %e, "mounting STATE: the node's config lives in memory");
            None
        }
    };
    let config = ConfigSources {
        embedded: std::fs::read_to_string(EMBEDDED_CONFIG).ok(),
        url: ConfigSources::url_from_cmdline(&cmdline),
        fetch: FetchLimits::default(),
    };

    let node = Node::start(NodeOptions {
        listen: SocketAddr::from(([0, 0, 0, 0], basalt_api::DEFAULT_PORT)),
        state_dir,
        config,
        validation_mode: platform,
        sans: ip.iter().map(|ip| ip.address.to_string()).collect(),
        sources: Sources {
            api_cert_validity: api_cert_lifetime(&cmdline),
            ..Sources::default()
        },
        apid_process: Some(ApidProcessOptions {
            uid: APID_UID,
            gid: APID_UID,
            run_dir: PathBuf::from("/run/basalt"),
            binary: None,
        }),
        ..NodeOptions::default()
    })
    .await?;

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
    tokio::time::sleep(ANSWER_GRACE).await;
    if let Err(e) = node.shutdown().await {
        tracing::error!(error = %e, "stopping the node");
    }
    Ok(match request {
        PowerRequest::Shutdown { .. } => Reboot::PowerOff,
        PowerRequest::Reboot { .. } | PowerRequest::Reset(_) => Reboot::Restart,
    })
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
