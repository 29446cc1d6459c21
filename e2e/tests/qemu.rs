//! The image booted under QEMU (TCG), the way a user meets a new machine: it comes up in
//! maintenance mode, takes a control-plane config from `osctl apply-config --insecure`,
//! serves it over mutual TLS, runs the services of an extension layer added to the image
//! (one killed over its memory limit), survives a reboot with its config on STATE, and
//! powers off on `osctl shutdown`. Its API certificates live 12 s: the served one changes while it
//! runs. One boot of the scenario, every step asserted on the way.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use basalt_e2e::{Image, Osctl, Vm};

/// Under TCG the kernel alone takes ~2 s to reach /init; a debug machined more to start.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// The API certificates' lifetime: renewed at half of it.
const CERT_LIFETIME: Duration = Duration::from_secs(12);
/// The memory limit of the extension layer's service, which wants 64 MiB at once.
const MEMHOG_LIMIT: u64 = 16 << 20;

/// An extension layer with one service: busybox's `dd` with a 64 MiB buffer, limited to
/// [`MEMHOG_LIMIT`] (Debian's static busybox: the image has no libraries for it).
fn memhog_layer(dir: &std::path::Path) -> std::path::PathBuf {
    let layer = dir.join("memhog");
    std::fs::create_dir_all(layer.join("bin")).unwrap();
    std::fs::create_dir_all(layer.join("services")).unwrap();
    std::fs::copy("/bin/busybox", layer.join("bin/busybox"))
        .expect("no /bin/busybox: run hack/setup.sh (busybox-static)");
    std::fs::write(
        layer.join("services/memhog.yaml"),
        format!(
            "command: [bin/busybox, dd, if=/dev/zero, of=/dev/null, bs=64M, count=1000]\n\
             restart: never\n\
             memoryMax: {}Mi\n",
            MEMHOG_LIMIT >> 20
        ),
    )
    .unwrap();
    layer
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vm_boots_to_maintenance_takes_a_config_reboots_with_it_and_powers_off() {
    let image = Image::locate();
    let tmp = tempfile::tempdir().unwrap();
    let osctl = Osctl {
        dir: tmp.path().to_path_buf(),
        netns: None,
    };
    let image = image
        .with_layer("memhog", &memhog_layer(tmp.path()), tmp.path())
        .await;
    let lifetime = format!("basalt.api-cert-lifetime={}s", CERT_LIFETIME.as_secs());
    let mut vm = Vm::boot(&image, &[&lifetime]).await;
    let endpoint = vm.endpoint();

    osctl.gen_controlplane("qemu-1").await;

    // Maintenance mode, reached over the forwarded port.
    let out = osctl
        .until_ok(
            &["--insecure", "-e", &endpoint, "version"],
            BOOT_TIMEOUT,
            &vm,
        )
        .await;
    assert!(out.contains("Maintenance: true"), "{out}");
    osctl
        .ok(&[
            "--insecure",
            "-e",
            &endpoint,
            "apply-config",
            "-f",
            "gen/controlplane.yaml",
        ])
        .await;

    // Configured: mutual TLS with the generated client certificate.
    let out = osctl
        .until_ok(&["-e", &endpoint, "version"], Duration::from_secs(60), &vm)
        .await;
    assert!(!out.contains("Maintenance: true"), "{out}");
    let hostname = osctl
        .until_ok(
            &["-e", &endpoint, "get", "hostname"],
            Duration::from_secs(30),
            &vm,
        )
        .await;
    assert!(hostname.contains("qemu-1"), "{hostname}");
    // KubePrism runs once its controller has followed the config.
    osctl
        .until_contains(
            &["-e", &endpoint, "get", "kubeprismstatus"],
            "7445",
            Duration::from_secs(30),
            &vm,
        )
        .await;

    // The layer's service ran in its cgroup, went over its memory limit, was killed by
    // the kernel and is reported so; the node runs on.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let memhog = loop {
        let out = osctl
            .ok(&["-e", &endpoint, "get", "services", "memhog", "-o", "yaml"])
            .await;
        if out.contains("state: Failed") {
            break out;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "memhog did not fail within 60 s:\n{out}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!("{memhog}");
    assert!(
        memhog.contains(&format!(
            "killed: over its memory limit of {MEMHOG_LIMIT} bytes (oom_kill)"
        )),
        "{memhog}"
    );
    let services = osctl.ok(&["-e", &endpoint, "services"]).await;
    assert!(services.contains("memhog"), "{services}");
    let dmesg = osctl.ok(&["-e", &endpoint, "dmesg"]).await;
    assert!(dmesg.contains("Linux version"), "{dmesg}");
    // PID 1 logs to the kernel log too.
    assert!(dmesg.contains("machined: "), "{dmesg}");

    // A reboot comes back configured, from STATE.
    osctl.ok(&["-e", &endpoint, "reboot"]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let hostname = osctl
        .until_ok(&["-e", &endpoint, "get", "hostname"], BOOT_TIMEOUT, &vm)
        .await;
    assert!(hostname.contains("qemu-1"), "{hostname}");
    assert!(
        vm.boots() >= 2,
        "the kernel did not boot twice:\n{}",
        vm.console_text()
    );

    // The served certificate is renewed before it expires, without a restart, and
    // clients (trusting the OS CA) go on working.
    let first = vm.served_certificate().await;
    let boots = vm.boots();
    let deadline = std::time::Instant::now() + CERT_LIFETIME;
    while vm.served_certificate().await == first {
        assert!(
            std::time::Instant::now() < deadline,
            "the served certificate did not change within {CERT_LIFETIME:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(vm.boots(), boots, "the node restarted");
    osctl.ok(&["-e", &endpoint, "version"]).await;

    // Each boot ran its sequences, timed phase by phase.
    let console = vm.console_text();
    for sequence in ["Initialize", "Boot", "Reboot"] {
        let line = format!("sequence={sequence} elapsed=");
        assert!(
            console.contains(&line),
            "no {line:?} in the console:\n{console}"
        );
    }

    // Shutdown powers the machine off: QEMU exits, successfully.
    osctl.ok(&["-e", &endpoint, "shutdown"]).await;
    let status = vm.exited(Duration::from_secs(60)).await;
    assert!(status.success(), "QEMU exited with {status}");
}
