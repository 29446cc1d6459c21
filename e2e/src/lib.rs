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

/// The image `make image` built: the kernel and the initramfs.
#[derive(Debug, Clone)]
pub struct Image {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
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
        };
        assert!(
            image.kernel.exists() && image.initramfs.exists(),
            "no boot image in {}: run `make image` first (`make test` does)",
            dir.display()
        );
        image
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
        file.set_len(64 << 20).unwrap();
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
            .args([
                "-M", "q35", "-accel", "tcg", "-cpu", "max", "-m", "512", "-smp", "2",
            ])
            .args(["-display", "none", "-monitor", "none", "-nodefaults"])
            .arg("-kernel")
            .arg(&image.kernel)
            .arg("-initrd")
            .arg(&image.initramfs)
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
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!(
                "the VM did not exit within {timeout:?}; console:\n{}",
                self.console_text()
            ),
        }
    }
}

/// The real `osctl`, with its own client config file.
#[derive(Debug)]
pub struct Osctl {
    pub dir: PathBuf,
}

impl Osctl {
    pub async fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new(workspace_binary("osctl"))
            .args(args)
            .current_dir(&self.dir)
            .env("OSCONFIG", self.dir.join("osconfig"))
            .output()
            .await
            .unwrap()
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
    pub async fn until_ok(&self, args: &[&str], timeout: Duration, vm: &Vm) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.run(args).await;
            if out.status.success() {
                return String::from_utf8(out.stdout).unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "osctl {args:?} still failing after {timeout:?}: {}\nconsole:\n{}",
                String::from_utf8_lossy(&out.stderr),
                vm.console_text()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
