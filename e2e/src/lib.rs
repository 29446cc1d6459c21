//! The end-to-end harness: the boot image (`make image`, under `_out/`) booted under QEMU
//! with a STATE disk, reached from the host only through a loopback port forward, and
//! driven by the real `osctl` binary. Every VM is killed and every file removed when its
//! handle drops, also when a test fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The image `make image` built: the kernel, our initramfs, and what boots (ours and the
/// image layers' segment).
#[derive(Debug, Clone)]
pub struct Image {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub boot_initramfs: PathBuf,
}

impl Image {
    /// `_out/` of the repository (or `$BASALT_IMAGE_DIR`); fails with how to build it.
    pub fn locate() -> Image {
        let dir = std::env::var_os("BASALT_IMAGE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("_out"));
        let image = Image {
            kernel: dir.join("vmlinuz"),
            initramfs: dir.join("initramfs.cpio.zst"),
            boot_initramfs: dir.join("initramfs.img"),
        };
        assert!(
            image.kernel.exists() && image.initramfs.exists() && image.boot_initramfs.exists(),
            "no boot image in {}: run `make image` first (`make test` does)",
            dir.display()
        );
        image
    }
}

impl Image {
    /// This image with one more image layer, as the image factory adds an extension: the
    /// directory `layer` packed as `<name>.sqsh` into an initramfs segment of its own,
    /// put before the image's. The new boot initramfs is written in `dir`.
    pub async fn with_layer(&self, name: &str, layer: &Path, dir: &Path) -> Image {
        let segment = dir.join(format!("{name}.segment"));
        let extensions = segment.join("system/extensions");
        std::fs::create_dir_all(&extensions).unwrap();
        let boot_initramfs = dir.join(format!("initramfs-{name}.img"));
        let script = format!(
            "set -euo pipefail
             mksquashfs '{layer}' '{extensions}/{name}.sqsh' -noappend -quiet -no-progress -comp zstd -all-root >/dev/null
             (cd '{segment}' && find . | LC_ALL=C sort | cpio --create --format=newc --owner=0:0 --quiet) > '{dir}/{name}.cpio'
             cat '{dir}/{name}.cpio' '{boot}' > '{out}'",
            layer = layer.display(),
            extensions = extensions.display(),
            segment = segment.display(),
            dir = dir.display(),
            boot = self.boot_initramfs.display(),
            out = boot_initramfs.display(),
        );
        let status = Command::new("bash")
            .args(["-c", &script])
            .status()
            .await
            .unwrap();
        assert!(status.success(), "packing the layer {name} failed");
        Image {
            boot_initramfs,
            ..self.clone()
        }
    }

    /// Unpacks the initramfs into `dir`: the root a container node runs.
    pub async fn unpack(&self, dir: &Path) {
        let script = format!(
            "zstd -dc '{}' | cpio -idm --quiet --no-absolute-filenames",
            self.initramfs.display()
        );
        let status = Command::new("bash")
            .args(["-c", &script])
            .current_dir(dir)
            .status()
            .await
            .unwrap();
        assert!(
            status.success(),
            "unpacking {} failed",
            self.initramfs.display()
        );
    }
}

/// A container node: the image's root unpacked, run by its shim in namespaces of its own
/// (the cluster tooling's way), its STATE a directory. Killed with its shim when dropped.
#[derive(Debug)]
pub struct ContainerNode {
    shim: Child,
    pub console: PathBuf,
    pub cluster: String,
    pub node: String,
    _dir: tempfile::TempDir,
}

impl ContainerNode {
    pub async fn start(
        image: &Image,
        cluster: &str,
        node: &str,
        kernel_args: &str,
    ) -> ContainerNode {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let state = dir.path().join("state");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&state).unwrap();
        image.unpack(&root).await;
        let console = dir.path().join("console.log");
        let log = std::fs::File::create(&console).unwrap();
        let shim = Command::new(root.join("init"))
            .arg0("basalt-container")
            .arg("--root")
            .arg(&root)
            .arg("--state")
            .arg(&state)
            .args(["--cluster", cluster, "--node", node])
            .args(["--kernel-args", kernel_args])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        ContainerNode {
            shim,
            console,
            cluster: cluster.to_string(),
            node: node.to_string(),
            _dir: dir,
        }
    }

    /// The shim's pid: its network namespace is the node's.
    pub fn pid(&self) -> u32 {
        self.shim.id().unwrap()
    }

    /// Waits for the shim to exit (the node powered off).
    pub async fn exited(&mut self, timeout: Duration) -> ExitStatus {
        let console = self.console.clone();
        exited(&mut self.shim, timeout, &console).await
    }
}

impl Drop for ContainerNode {
    /// A test that failed leaves its node running: kill it (PID 1 goes with its shim)
    /// and remove the cgroups the shim could not.
    fn drop(&mut self) {
        if let Ok(None) = self.shim.try_wait() {
            let _ = self.shim.start_kill();
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(self.shim.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let hierarchies = basalt_sys::cgroups::hierarchies(
            &read("/proc/self/mounts"),
            &read("/proc/self/cgroup"),
        );
        // Its processes may take a moment to leave.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let _ = basalt_sys::cgroups::remove(&hierarchies, &self.cluster, &self.node);
            let left = hierarchies
                .iter()
                .any(|h| basalt_sys::cgroups::node_dir(h, &self.cluster, &self.node).exists());
            if !left || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Console for ContainerNode {
    fn console_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.console).unwrap_or_default()).into_owned()
    }
}

/// A binary of the workspace, built beside this test by `cargo nextest run --workspace`.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/<name>
    let path = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first",
        path.display()
    );
    path
}

/// A TCP port on 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The guest's address on QEMU's user-mode network, and its gateway.
pub const GUEST_IP: &str = "10.0.2.15";
const GUEST_GATEWAY: &str = "10.0.2.2";

/// A VM booted from the image, with a STATE disk, its Machine API forwarded to
/// 127.0.0.1:`api_port` (and nowhere else: the user-mode network is `restrict=on`, so the
/// guest reaches nothing outside).
#[derive(Debug)]
pub struct Vm {
    child: Child,
    pub api_port: u16,
    pub console: PathBuf,
    _dir: tempfile::TempDir,
}

impl Vm {
    /// Formats a STATE disk (ext4 labelled STATE, as the cluster tooling does) and boots
    /// with `kernel_args` added to the command line.
    pub async fn boot(image: &Image, kernel_args: &[&str]) -> Vm {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("state.img");
        let file = std::fs::File::create(&disk).unwrap();
        file.set_len(1 << 30).unwrap();
        drop(file);
        let mkfs = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "STATE"])
            .arg(&disk)
            .status()
            .await
            .expect("mkfs.ext4 (e2fsprogs) is missing: run hack/setup.sh");
        assert!(mkfs.success(), "mkfs.ext4 failed");

        let api_port = free_port();
        let console = dir.path().join("console.log");
        let append = format!(
            "console=ttyS0 panic=-1 basalt.platform=cloud ip={GUEST_IP}::{GUEST_GATEWAY}:255.255.255.0::eth0:off {}",
            kernel_args.join(" ")
        );
        let child = Command::new("qemu-system-x86_64")
            .args(["-M", "q35", "-accel", basalt_cluster::qemu::TCG_ACCEL])
            .args(["-cpu", "max", "-m", "512", "-smp", "2"])
            .args(["-display", "none", "-monitor", "none", "-nodefaults"])
            .arg("-kernel")
            .arg(&image.kernel)
            .arg("-initrd")
            .arg(&image.boot_initramfs)
            .args(["-append", &append])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-drive")
            .arg(format!("file={},format=raw,if=virtio", disk.display()))
            .args([
                "-netdev",
                &format!("user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{api_port}-:50000"),
            ])
            .args(["-device", "virtio-net-pci,netdev=net0"])
            .args(["-device", "virtio-rng-pci"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("qemu-system-x86_64 is missing: run hack/setup.sh");
        Vm {
            child,
            api_port,
            console,
            _dir: dir,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.api_port)
    }

    /// The certificate the Machine API serves right now (PEM), as a TLS client sees it.
    pub async fn served_certificate(&self) -> String {
        let out = Command::new("openssl")
            .args(["s_client", "-connect", &self.endpoint()])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .await
            .expect("openssl is missing: run hack/setup.sh");
        let text = String::from_utf8_lossy(&out.stdout);
        let begin = text.find("-----BEGIN CERTIFICATE-----");
        let end = text.find("-----END CERTIFICATE-----");
        match (begin, end) {
            (Some(begin), Some(end)) => text[begin..end].to_string(),
            _ => panic!("no certificate from {}: {text}", self.endpoint()),
        }
    }

    /// How many times the kernel has booted in this VM.
    pub fn boots(&self) -> usize {
        self.console_text().matches("Linux version").count()
    }

    /// What the VM printed on its serial console so far.
    pub fn console_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.console).unwrap_or_default()).into_owned()
    }

    /// Waits for QEMU to exit.
    pub async fn exited(&mut self, timeout: Duration) -> ExitStatus {
        let console = self.console.clone();
        exited(&mut self.child, timeout, &console).await
    }
}

/// Waits for `child` (a node) to exit; fails with its console if it does not.
async fn exited(child: &mut Child, timeout: Duration, console: &Path) -> ExitStatus {
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => status.unwrap(),
        Err(_) => panic!(
            "the node did not exit within {timeout:?}; console:\n{}",
            String::from_utf8_lossy(&std::fs::read(console).unwrap_or_default())
        ),
    }
}

/// What a node printed on its console, to show when a test fails.
pub trait Console {
    fn console_text(&self) -> String;
}

impl Console for Vm {
    fn console_text(&self) -> String {
        Vm::console_text(self)
    }
}

/// The real `osctl`, with its own client config file; run in the network namespace of
/// the process `netns` when set (a container node's).
#[derive(Debug)]
pub struct Osctl {
    pub dir: PathBuf,
    pub netns: Option<u32>,
}

impl Osctl {
    /// osctl with `args`, this osctl's client config and clusters directory (`clusters/`
    /// in its directory), killed if dropped before it ends.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = match self.netns {
            None => Command::new(workspace_binary("osctl")),
            Some(pid) => {
                let mut nsenter = Command::new("nsenter");
                nsenter
                    .arg(format!("--net=/proc/{pid}/ns/net"))
                    .arg("--")
                    .arg(workspace_binary("osctl"));
                nsenter
            }
        };
        command
            .args(args)
            .current_dir(&self.dir)
            .env("OSCONFIG", self.dir.join("osconfig"))
            .env("BASALT_CLUSTERS_DIR", self.clusters_dir())
            .kill_on_drop(true);
        command
    }

    /// Where `osctl cluster` keeps this osctl's clusters.
    pub fn clusters_dir(&self) -> PathBuf {
        self.dir.join("clusters")
    }

    pub async fn run(&self, args: &[&str]) -> std::process::Output {
        self.command(args).output().await.unwrap()
    }

    /// Secrets and a control-plane config for a node called `hostname` whose API
    /// certificate also names 127.0.0.1 (how the test reaches it); its client config
    /// becomes this osctl's. The config is `gen/controlplane.yaml`.
    pub async fn gen_controlplane(&self, hostname: &str) {
        std::fs::write(
            self.dir.join("patch.yaml"),
            format!(
                "apiVersion: basalt.dev/v1alpha1\nkind: MachineConfig\nhostname: {hostname}\n\
                 certSans: [127.0.0.1]\n"
            ),
        )
        .unwrap();
        self.ok(&["gen", "secrets", "-o", "secrets.yaml"]).await;
        self.ok(&[
            "gen",
            "config",
            "e2e",
            &format!("https://{GUEST_IP}:6443"),
            "--with-secrets",
            "secrets.yaml",
            "--install-disk",
            "none",
            "--config-patch",
            "@patch.yaml",
            "-o",
            "gen",
        ])
        .await;
        std::fs::copy(self.dir.join("gen/osconfig"), self.dir.join("osconfig")).unwrap();
    }

    /// Runs osctl and returns its output, failing the test if it failed.
    pub async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "osctl {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Retries `args` until it succeeds or `timeout` passes (a booting node).
    pub async fn until_ok(&self, args: &[&str], timeout: Duration, node: &dyn Console) -> String {
        self.until(args, timeout, node, "").await
    }

    /// Retries `args` until it succeeds with `needle` in its output or `timeout` passes
    /// (what a controller publishes a moment after the config it follows).
    pub async fn until_contains(
        &self,
        args: &[&str],
        needle: &str,
        timeout: Duration,
        node: &dyn Console,
    ) -> String {
        self.until(args, timeout, node, needle).await
    }

    async fn until(
        &self,
        args: &[&str],
        timeout: Duration,
        node: &dyn Console,
        needle: &str,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.run(args).await;
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() && stdout.contains(needle) {
                return stdout;
            }
            assert!(
                Instant::now() < deadline,
                "osctl {args:?} still failing or without {needle:?} after {timeout:?}: \
                 {stdout}{}\nconsole:\n{}",
                String::from_utf8_lossy(&out.stderr),
                node.console_text()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
