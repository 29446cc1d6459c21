//! The node's spine end to end, the way a user drives it: the real `machined` binary,
//! configured only through the real `osctl` binary. A config applied in maintenance mode
//! reaches the controllers (hostname, KubePrism in front of a stand-in API server), a
//! second apply over mutual TLS changes what they publish, and a restart comes back
//! with the config from the state directory. No test code writes a resource.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use basalt_kubeprism::testing::{TestBackend, TestCa};
use basalt_pki::SecretsBundle;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// This test's own loopback address, so KubePrism's port collides with no other test.
const NODE_IP: &str = "127.0.0.51";

/// `osctl` is built beside `machined` by `cargo build`/`nextest run` of the workspace.
fn osctl_path() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_machined")).with_file_name("osctl");
    assert!(
        path.exists(),
        "{} is missing: build the workspace (cargo build -p osctl)",
        path.display()
    );
    path
}

struct Osctl {
    dir: PathBuf,
    endpoint: String,
}

impl Osctl {
    async fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new(osctl_path())
            .args(args)
            .current_dir(&self.dir)
            .env("OSCONFIG", self.dir.join("osconfig"))
            .output()
            .await
            .unwrap()
    }

    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "osctl {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `osctl get TYPE -o json` over mTLS: the first resource's document.
    async fn get(&self, type_name: &str) -> Option<serde_json::Value> {
        let out = self
            .run(&["-e", &self.endpoint, "get", type_name, "-o", "json"])
            .await;
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8(out.stdout).unwrap();
        serde_json::from_str(text.lines().next()?).ok()
    }

    /// Waits until `get TYPE` shows a resource for which `check` holds.
    async fn eventually(
        &self,
        type_name: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let doc = self.get(type_name).await;
            if let Some(doc) = doc.filter(|d| check(d)) {
                return doc;
            }
            assert!(
                Instant::now() < deadline,
                "{type_name} never matched; last: {:?}",
                self.get(type_name).await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Starts the node and waits for the address its Machine API listens on.
async fn start_node(dir: &Path) -> (Child, String) {
    let cmdline = dir.join("cmdline");
    std::fs::write(&cmdline, "console=ttyS0 basalt.hostname=from-cmdline\n").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_machined"))
        .args(["--listen", &format!("{NODE_IP}:0"), "--mode", "cloud"])
        .args(["--kubeprism-listen", NODE_IP])
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--cmdline")
        .arg(&cmdline)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let find = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            // machined's own line, not KubePrism's (which listens too).
            if !line.contains("machined: listening") {
                continue;
            }
            if let Some(addr) = line.split("addr=").nth(1) {
                return addr.split_whitespace().next().unwrap().to_string();
            }
        }
        panic!("machined exited before it listened");
    };
    let addr = tokio::time::timeout(Duration::from_secs(30), find)
        .await
        .expect("machined did not start listening");
    // Keep draining its log, so that it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

async fn stop(mut child: Child) {
    let pid = child.id().unwrap().to_string();
    let _ = Command::new("kill").args(["-INT", &pid]).status().await;
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("machined did not stop on SIGINT")
        .unwrap();
    assert!(status.success(), "machined exited with {status}");
}

fn patch(dir: &Path, name: &str, hostname: &str, kubeprism_port: u16) {
    let text = format!(
        "apiVersion: basalt.dev/v1alpha1\nkind: MachineConfig\nhostname: {hostname}\n---\n\
         apiVersion: basalt.dev/v1alpha1\nkind: KubePrismConfig\nenabled: true\nport: {kubeprism_port}\n"
    );
    std::fs::write(dir.join(name), text).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_config_applied_with_osctl_reaches_the_controllers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let mut osctl = Osctl {
        dir: dir.clone(),
        endpoint: String::new(),
    };
    osctl.ok(&["gen", "secrets", "-o", "secrets.yaml"]).await;
    // A stand-in kube-apiserver with a certificate from the cluster's Kubernetes CA, so
    // KubePrism's HTTPS /readyz checks verify it as they would a real one.
    let bundle = SecretsBundle::read_from(dir.join("secrets.yaml")).unwrap();
    let k8s_ca = TestCa::from_pem(&bundle.certs.k8s.crt, &bundle.certs.k8s.key).unwrap();
    let api_server = TestBackend::start("api", &k8s_ca).await.unwrap();
    let endpoint = format!("https://{}", api_server.upstream());
    patch(&dir, "first.yaml", "spine-1", 17445);
    patch(&dir, "second.yaml", "spine-2", 17446);
    for (out, patch) in [("first", "@first.yaml"), ("second", "@second.yaml")] {
        osctl
            .ok(&[
                "gen",
                "config",
                "spine",
                &endpoint,
                "--with-secrets",
                "secrets.yaml",
                "--install-disk",
                "none",
                "--config-patch",
                patch,
                "-o",
                out,
                "--force",
            ])
            .await;
    }
    std::fs::copy(dir.join("first/osconfig"), dir.join("osconfig")).unwrap();

    let (node, addr) = start_node(&dir).await;
    let _: SocketAddr = addr.parse().unwrap();
    osctl.endpoint = addr.clone();

    // Maintenance mode: the hostname comes from the kernel command line.
    let out = osctl.ok(&["--insecure", "-e", &addr, "version"]).await;
    assert!(out.contains("Maintenance: true"), "{out}");
    let out = osctl
        .ok(&["--insecure", "-e", &addr, "get", "hostname"])
        .await;
    assert!(out.contains("from-cmdline"), "{out}");

    let out = osctl
        .ok(&[
            "--insecure",
            "-e",
            &addr,
            "apply-config",
            "-f",
            "first/controlplane.yaml",
        ])
        .await;
    assert!(out.contains("applied"), "{out}");
    let out = osctl.ok(&["-e", &addr, "version"]).await;
    assert!(out.contains("Maintenance: false"), "{out}");

    let hostname = osctl
        .eventually("hostname", |d| d["spec"]["hostname"] == "spine-1")
        .await;
    assert_eq!(hostname["spec"]["source"], "config");
    assert_eq!(hostname["metadata"]["owner"], "network.HostnameController");
    let kubeprism_listen = format!("{NODE_IP}:17445");
    let status = osctl
        .eventually("kubeprismstatus", |d| {
            d["spec"]["state"] == "running"
                && d["spec"]["listen"] == kubeprism_listen.as_str()
                && d["spec"]["healthy"] == 1
        })
        .await;
    assert_eq!(status["metadata"]["owner"], "k8s.KubePrismController");
    let machine = osctl
        .eventually("machinestatus", |d| d["spec"]["stage"] == "running")
        .await;
    assert_eq!(
        machine["metadata"]["owner"],
        "runtime.MachineStatusController"
    );
    // The API serves the certificates the secrets controller issued for the hostname.
    let certs = osctl
        .eventually("apicertificates", |d| {
            d["spec"]["sans"]
                .as_array()
                .is_some_and(|s| s.iter().any(|n| n == "spine-1"))
        })
        .await;
    assert_eq!(
        certs["metadata"]["owner"],
        "secrets.ApiCertificatesController"
    );

    // A second apply, over mutual TLS, changes what the controllers publish.
    let out = osctl
        .ok(&[
            "-e",
            &addr,
            "apply-config",
            "-f",
            "second/controlplane.yaml",
        ])
        .await;
    assert!(out.contains("applied"), "{out}");
    osctl
        .eventually("hostname", |d| d["spec"]["hostname"] == "spine-2")
        .await;
    let kubeprism_listen = format!("{NODE_IP}:17446");
    osctl
        .eventually("kubeprismstatus", |d| {
            d["spec"]["state"] == "running"
                && d["spec"]["listen"] == kubeprism_listen.as_str()
                && d["spec"]["healthy"] == 1
        })
        .await;

    // A restart comes back configured, from the state directory.
    stop(node).await;
    let (node, addr) = start_node(&dir).await;
    osctl.endpoint = addr.clone();
    let out = osctl.ok(&["-e", &addr, "version"]).await;
    assert!(out.contains("Maintenance: false"), "{out}");
    osctl
        .eventually("hostname", |d| d["spec"]["hostname"] == "spine-2")
        .await;
    stop(node).await;
}
