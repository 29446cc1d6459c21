//! The image as a container node, the way the cluster tooling runs it: the initramfs
//! unpacked, machined as PID 1 of fresh namespaces pivoted into it, its STATE a
//! directory, its cgroups `basalt/<cluster>/<node>`. The same flow as under QEMU:
//! maintenance, `osctl apply-config --insecure`, mutual TLS, a reboot that comes back
//! configured, and a shutdown that ends it with success. `osctl` reaches it inside the
//! node's own network namespace, at 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use basalt_e2e::{Console, ContainerNode, Image, Osctl};

const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
const ENDPOINT: &str = "127.0.0.1";

/// How many times the node has finished its Boot sequence.
fn boots(node: &ContainerNode) -> usize {
    node.console_text()
        .matches("sequence done sequence=Boot")
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_node_boots_to_maintenance_takes_a_config_reboots_with_it_and_powers_off() {
    let image = Image::locate();
    let tmp = tempfile::tempdir().unwrap();
    let name = format!("c-{}", std::process::id());
    let mut node = ContainerNode::start(&image, "e2e", &name, "").await;
    let osctl = Osctl {
        dir: tmp.path().to_path_buf(),
        netns: Some(node.pid()),
    };
    osctl.gen_controlplane(&name).await;

    let out = osctl
        .until_ok(
            &["--insecure", "-e", ENDPOINT, "version"],
            BOOT_TIMEOUT,
            &node,
        )
        .await;
    assert!(out.contains("Maintenance: true"), "{out}");

    // PID 1 runs in the node's cgroups, in the image's root: no shell there.
    let cgroups = std::fs::read_to_string(format!("/proc/{}/cgroup", node.pid())).unwrap();
    let subtree = format!("/basalt/e2e/{name}");
    assert!(
        cgroups
            .lines()
            .any(|l| l.starts_with("0::") && l.ends_with(&subtree)),
        "{cgroups}"
    );
    let init =
        std::fs::read_to_string(format!("/proc/{}/task/{}/children", node.pid(), node.pid()))
            .unwrap();
    let init: u32 = init.split_whitespace().next().unwrap().parse().unwrap();
    let root = format!("/proc/{init}/root");
    assert!(std::path::Path::new(&root).join("init").exists());
    for shell in ["bin/sh", "bin/bash", "usr/bin/env"] {
        assert!(!std::path::Path::new(&root).join(shell).exists(), "{shell}");
    }

    osctl
        .ok(&[
            "--insecure",
            "-e",
            ENDPOINT,
            "apply-config",
            "-f",
            "gen/controlplane.yaml",
        ])
        .await;
    let out = osctl
        .until_ok(&["-e", ENDPOINT, "version"], BOOT_TIMEOUT, &node)
        .await;
    assert!(!out.contains("Maintenance: true"), "{out}");
    let hostname = osctl
        .until_ok(&["-e", ENDPOINT, "get", "hostname"], BOOT_TIMEOUT, &node)
        .await;
    assert!(hostname.contains(&name), "{hostname}");
    // KubePrism runs once its controller has followed the config.
    osctl
        .until_contains(
            &["-e", ENDPOINT, "get", "kubeprismstatus"],
            "7445",
            Duration::from_secs(30),
            &node,
        )
        .await;
    osctl.ok(&["-e", ENDPOINT, "services"]).await;
    osctl.ok(&["-e", ENDPOINT, "dmesg"]).await;

    // A reboot is a new PID 1 in a new PID namespace, configured from STATE.
    assert_eq!(boots(&node), 1);
    osctl.ok(&["-e", ENDPOINT, "reboot"]).await;
    let deadline = std::time::Instant::now() + BOOT_TIMEOUT;
    while boots(&node) < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no second boot:\n{}",
            node.console_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let hostname = osctl
        .until_ok(&["-e", ENDPOINT, "get", "hostname"], BOOT_TIMEOUT, &node)
        .await;
    assert!(hostname.contains(&name), "{hostname}");

    osctl.ok(&["-e", ENDPOINT, "shutdown"]).await;
    let status = node.exited(Duration::from_secs(30)).await;
    assert!(
        status.success(),
        "the shim exited with {status}:\n{}",
        node.console_text()
    );
    // Its cgroups went with it.
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let unified = mounts
        .lines()
        .find_map(|l| {
            let fields: Vec<_> = l.split_whitespace().collect();
            (fields.get(2) == Some(&"cgroup2")).then(|| fields[1].to_string())
        })
        .unwrap();
    let dir = std::path::Path::new(&unified).join(subtree.trim_start_matches('/'));
    assert!(!dir.exists(), "{} is left", dir.display());
}

/// What a failing test leaves: its node is killed with its shim, PID 1 with it (it dies
/// with its parent), and the node's cgroups are removed.
#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_container_node_leaves_no_process_or_cgroup_behind() {
    let image = Image::locate();
    let tmp = tempfile::tempdir().unwrap();
    let name = format!("d-{}", std::process::id());
    let node = ContainerNode::start(&image, "e2e", &name, "").await;
    let osctl = Osctl {
        dir: tmp.path().to_path_buf(),
        netns: Some(node.pid()),
    };
    osctl
        .until_ok(
            &["--insecure", "-e", ENDPOINT, "version"],
            BOOT_TIMEOUT,
            &node,
        )
        .await;
    let shim = node.pid();
    let children = format!("/proc/{shim}/task/{shim}/children");
    let init: u32 = std::fs::read_to_string(children)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let cgroup = std::fs::read_to_string(format!("/proc/{init}/cgroup")).unwrap();
    assert!(cgroup.contains(&format!("/basalt/e2e/{name}")), "{cgroup}");
    drop(node);
    for pid in [shim, init] {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Gone, or a zombie of this test's (the shim) until the runtime reaps it.
        assert!(
            stat.is_empty() || stat.contains(") Z "),
            "{pid} is still running: {stat}"
        );
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    for line in mounts.lines().filter(|l| l.contains(" cgroup")) {
        let mount = line.split_whitespace().nth(1).unwrap();
        let walk = std::process::Command::new("find")
            .args([mount, "-maxdepth", "6", "-type", "d", "-name", &name])
            .output()
            .unwrap();
        assert!(
            walk.stdout.is_empty(),
            "left: {}",
            String::from_utf8_lossy(&walk.stdout)
        );
    }
}
