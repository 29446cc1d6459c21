//! Local clusters as a user makes them: `osctl cluster create` (container provider, the
//! files of `_out/rootfs`), `osctl` through one endpoint to every node, trustd's
//! certificates, membership, `osctl health`, `osctl cluster show` and `destroy`, and after it nothing left on the host: no process, network
//! namespace, veth, cgroup, mount or directory. Also a node killed while the cluster is
//! made, a second cluster of the same name, and a half-made cluster destroyed.
//!
//! Each test has its own cluster name and subnet; a test that fails destroys its cluster.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use basalt_e2e::{repo_root, workspace_binary, Image, Osctl};
use tokio::process::Command;

/// A cluster's name and subnet, with its own files and client config; destroyed when
/// dropped if a test left it behind.
struct Cluster {
    name: String,
    cidr: String,
    osctl: Osctl,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn new(name: &str, subnet: u8) -> Cluster {
        Image::locate();
        let dir = tempfile::tempdir().unwrap();
        Cluster {
            name: name.to_string(),
            cidr: format!("10.213.{subnet}.0/24"),
            osctl: Osctl {
                dir: dir.path().to_path_buf(),
                netns: None,
            },
            _dir: dir,
        }
    }

    fn clusters_dir(&self) -> PathBuf {
        self.osctl.clusters_dir()
    }

    fn command(&self, args: &[&str]) -> Command {
        self.osctl.command(args)
    }

    async fn run(&self, args: &[&str]) -> Output {
        self.osctl.run(args).await
    }

    async fn ok(&self, args: &[&str]) -> String {
        self.osctl.ok(args).await
    }

    fn create_args(&self, controlplanes: usize, workers: usize) -> Vec<String> {
        let image = repo_root().join("_out");
        [
            "cluster",
            "create",
            "--wait-timeout",
            "3m",
            "--name",
            &self.name,
            "--cidr",
            &self.cidr,
            "--controlplanes",
            &controlplanes.to_string(),
            "--workers",
            &workers.to_string(),
            "--image",
            image.to_str().unwrap(),
        ]
        .map(str::to_string)
        .to_vec()
    }

    /// `osctl cluster create`, sent `signal` as soon as the first node's shim runs.
    async fn interrupted_create(
        &self,
        controlplanes: usize,
        workers: usize,
        signal: &str,
    ) -> Output {
        let args = self.create_args(controlplanes, workers);
        let create = self
            .command(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        shim_of(self, &self.controlplane(1), Duration::from_secs(30)).await;
        send(create.id().unwrap(), signal);
        create.wait_with_output().await.unwrap()
    }

    fn controlplane(&self, index: usize) -> String {
        format!("{}-controlplane-{index}", self.name)
    }

    fn worker(&self, index: usize) -> String {
        format!("{}-worker-{index}", self.name)
    }

    /// Fails the test naming every piece of the cluster still on the host.
    fn assert_nothing_left(&self) {
        let mut left = Vec::new();
        for entry in std::fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
        {
            let file = entry.file_name().to_string_lossy().into_owned();
            if file == format!("basalt-{}", self.name)
                || file.starts_with(&format!("basalt-{}-", self.name))
            {
                left.push(format!("network namespace {file}"));
            }
        }
        if Path::new("/sys/class/net")
            .join(format!("bs-{}", self.name))
            .exists()
        {
            left.push(format!("link bs-{}", self.name));
        }
        left.extend(
            processes_of(&self.clusters_dir())
                .iter()
                .map(|p| format!("process {p}")),
        );
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        for h in
            basalt_sys::cgroups::hierarchies(&read("/proc/self/mounts"), &read("/proc/self/cgroup"))
        {
            let dir = basalt_sys::cgroups::node_dir(&h, &self.name, "x");
            let cluster = dir.parent().unwrap();
            if cluster.exists() {
                left.push(format!("cgroup {}", cluster.display()));
            }
        }
        for line in read("/proc/self/mounts").lines() {
            if line.contains(&format!("basalt-{}", self.name))
                || line.contains(self.osctl.dir.to_str().unwrap())
            {
                left.push(format!("mount {line}"));
            }
        }
        if self.clusters_dir().join(&self.name).exists() {
            left.push(format!(
                "directory {}",
                self.clusters_dir().join(&self.name).display()
            ));
        }
        assert!(left.is_empty(), "left behind: {left:#?}");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.clusters_dir().join(&self.name).exists() {
            let _ = std::process::Command::new(workspace_binary("osctl"))
                .args(["cluster", "destroy", "--name", &self.name])
                .env("BASALT_CLUSTERS_DIR", self.clusters_dir())
                .status();
        }
    }
}

/// The pids of the processes of clusters kept in `clusters_dir` (shims, QEMU), by their
/// command lines, which name files there.
fn processes_of(clusters_dir: &Path) -> Vec<u32> {
    shims(&format!("{}/", clusters_dir.display()))
}

fn shims(wanted: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| cmdline_of(*pid).contains(wanted))
        .collect()
}

fn cmdline_of(pid: u32) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&cmdline).into_owned()
}

/// The shims of node `node` of `cluster` running now.
fn shims_of(cluster: &Cluster, node: &str) -> Vec<u32> {
    let wanted = format!("\0--node\0{node}\0");
    processes_of(&cluster.clusters_dir())
        .into_iter()
        .filter(|pid| cmdline_of(*pid).contains(&wanted))
        .collect()
}

/// The shim of node `node` of `cluster`, once it runs.
async fn shim_of(cluster: &Cluster, node: &str, timeout: Duration) -> u32 {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(&pid) = shims_of(cluster, node).first() {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "no shim for {node} after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until `node`'s hostname resource says `expected`, and the endpoint knows the
/// node as a member by that name and no longer by `former`.
async fn wait_for_hostname(cluster: &Cluster, node: &str, expected: &str, former: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let args = [
            "-n",
            node,
            "get",
            "hostname",
            "-o",
            "jsonpath={.spec.hostname}",
        ];
        let out = cluster.ok(&args).await;
        // The endpoint learns the new name when the node registers next (every second).
        let members = cluster.ok(&["get", "members"]).await;
        if out.trim() == expected
            && members.contains(&format!("\t{expected}\t"))
            && !members.contains(&format!("\t{former}\t"))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{node}'s hostname is {out:?}, not {expected:?}, or the endpoint's members \
             do not say so (or still name {former:?}):\n{members}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn kill(pid: u32) {
    send(pid, "KILL");
}

fn send(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_three_node_cluster_is_made_used_through_one_endpoint_and_destroyed_leaving_nothing() {
    let cluster = Cluster::new("e2e3n", 31);
    let args = cluster.create_args(1, 2);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = Instant::now();
    let out = cluster.ok(&args).await;
    println!("create took {:?}:\n{out}", started.elapsed());
    let nodes = [
        cluster.controlplane(1),
        cluster.worker(1),
        cluster.worker(2),
    ];
    for (node, role) in nodes.iter().zip(["controlplane", "worker", "worker"]) {
        assert!(out.contains(&format!("{node}\t{role}\t")), "{out}");
    }

    // A second cluster of the same name is refused, naming it, and the first is untouched.
    let again = cluster.run(&args).await;
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success());
    assert!(
        stderr.contains(&format!("cluster \"{}\" exists", cluster.name)),
        "{stderr}"
    );

    // Every node, through the control plane (the context's endpoint), over mTLS.
    let addresses: Vec<String> = (2..=4).map(|i| format!("10.213.31.{i}")).collect();
    let out = cluster.ok(&["-n", &addresses.join(","), "version"]).await;
    for address in &addresses {
        assert!(out.contains(&format!("NODE: {address}")), "{out}");
    }
    assert!(!out.contains("Maintenance: true"), "{out}");
    let out = cluster.ok(&["-n", &addresses[2], "get", "hostname"]).await;
    assert!(out.contains(&nodes[2]), "{out}");

    // A worker's config changed live through the endpoint: patched, then edited back.
    let renamed = format!("{}-renamed", nodes[2]);
    let patch =
        format!("apiVersion: basalt.dev/v1alpha1\nkind: MachineConfig\nhostname: {renamed}\n");
    let out = cluster
        .ok(&["-n", &addresses[2], "patch", "mc", "-p", &patch])
        .await;
    assert!(out.contains("applied without a reboot"), "{out}");
    wait_for_hostname(&cluster, &addresses[2], &renamed, &nodes[2]).await;
    let editor = format!("sed -i 's/^hostname: .*/hostname: {}/'", nodes[2]);
    let edited = cluster
        .command(&["-n", &addresses[2], "edit", "mc"])
        .env("EDITOR", &editor)
        .output()
        .await
        .unwrap();
    assert!(
        edited.status.success(),
        "{}",
        String::from_utf8_lossy(&edited.stderr)
    );
    wait_for_hostname(&cluster, &addresses[2], &nodes[2], &renamed).await;

    // The workers hold no CA key: their API certificates came from the control plane's
    // trustd; the control plane issued its own.
    let out = cluster
        .ok(&["-n", &addresses.join(","), "get", "apicertificates"])
        .await;
    let mut issuers: Vec<&str> = out
        .lines()
        .skip(1)
        .map(|l| l.rsplit('\t').next().unwrap())
        .collect();
    issuers.sort_unstable();
    assert_eq!(
        issuers,
        [
            "self",
            "trustd 10.213.31.2:50001",
            "trustd 10.213.31.2:50001"
        ],
        "{out}"
    );

    // osctl health: every check of every node, printed as it runs.
    let out = cluster.ok(&["health", "--wait-timeout", "30s"]).await;
    for node in &nodes {
        assert!(out.contains(&format!("{node} (")), "{out}");
    }
    assert_eq!(out.matches(" OK ").count(), 15, "{out}");
    assert!(out.contains("healthy: 3 nodes"), "{out}");

    // The control plane runs etcd (Debian's, from the image's etcd layer), healthy by
    // its own /health, its output in its log; the workers run none.
    let out = cluster.ok(&["-n", &addresses.join(","), "services"]).await;
    let etcd: Vec<&str> = out.lines().filter(|l| l.contains("\tetcd\t")).collect();
    assert_eq!(etcd.len(), 1, "{out}");
    assert!(
        etcd[0].starts_with(&format!("{}\tetcd\tRunning\tOK\t", addresses[0])),
        "{out}"
    );
    let logs = cluster.ok(&["-n", &addresses[0], "logs", "etcd"]).await;
    assert!(logs.contains("ready to serve client requests"), "{logs}");

    let shown = cluster
        .ok(&["cluster", "show", "--name", &cluster.name])
        .await;
    assert_eq!(shown.matches("\trunning").count(), 3, "{shown}");

    // The inner loop: the image put into the running nodes one at a time; each comes
    // back with its state (its hostname is from the config it kept on STATE).
    let out = cluster
        .ok(&[
            "cluster",
            "reload",
            "--name",
            &cluster.name,
            "--image",
            repo_root().join("_out").to_str().unwrap(),
        ])
        .await;
    assert_eq!(out.matches("running the new image").count(), 3, "{out}");
    let out = cluster.ok(&["-n", &nodes[1], "get", "hostname"]).await;
    assert!(out.contains(&nodes[1]), "{out}");
    let out = cluster.ok(&["health", "--wait-timeout", "30s"]).await;
    assert!(out.contains("healthy: 3 nodes"), "{out}");

    // A node gone: health fails, naming it and the check. Its shim is killed until its
    // API stops answering (the kill takes a moment to end the node's processes).
    kill(shim_of(&cluster, &nodes[2], Duration::from_secs(5)).await);
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster
        .run(&["-n", &addresses[2], "version"])
        .await
        .status
        .success()
    {
        assert!(
            Instant::now() < deadline,
            "{} still answers after its shim was killed",
            nodes[2]
        );
        for pid in shims_of(&cluster, &nodes[2]) {
            // It may be gone meanwhile: that is what this waits for.
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let failed = cluster.run(&["health", "--wait-timeout", "2s"]).await;
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success());
    assert!(
        stderr.contains(&format!("{} (10.213.31.4): reachable", nodes[2])),
        "{stderr}"
    );

    cluster
        .ok(&["cluster", "destroy", "--name", &cluster.name])
        .await;
    cluster.assert_nothing_left();
    let again = cluster
        .run(&["cluster", "destroy", "--name", &cluster.name])
        .await;
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("no cluster"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_killed_while_the_cluster_is_made_fails_create_naming_it_and_nothing_is_left() {
    let cluster = Cluster::new("e2ekill", 32);
    let args = cluster.create_args(2, 0);
    let create = cluster
        .command(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .output();
    let victim = cluster.controlplane(2);
    let killer = async {
        let pid = shim_of(&cluster, &victim, Duration::from_secs(30)).await;
        kill(pid);
    };
    let (out, ()) = tokio::join!(create, killer);
    let out = out.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "create succeeded: {stderr}");
    assert!(
        stderr.contains(&format!("node {victim} stopped")),
        "{stderr}"
    );
    cluster.assert_nothing_left();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_half_made_cluster_is_destroyed() {
    let cluster = Cluster::new("e2ehalf", 33);
    // osctl dies as soon as the first node runs: the rest is left as it was.
    let out = cluster.interrupted_create(2, 0, "KILL").await;
    assert!(
        cluster.clusters_dir().join(&cluster.name).exists(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    cluster
        .ok(&["cluster", "destroy", "--name", &cluster.name])
        .await;
    cluster.assert_nothing_left();
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_while_the_cluster_is_made_removes_everything_it_made() {
    let cluster = Cluster::new("e2eintr", 35);
    let out = cluster.interrupted_create(1, 1, "INT").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("interrupted") && stderr.contains("removing everything"),
        "{stderr}"
    );
    cluster.assert_nothing_left();
}

/// The qemu provider: the boot image under QEMU (TCG), a STATE disk and a tap on the
/// bridge per node; the same checks, lean (two nodes).
#[tokio::test(flavor = "multi_thread")]
async fn a_two_node_qemu_cluster_is_made_checked_and_destroyed_leaving_nothing() {
    let cluster = Cluster::new("e2eqemu", 34);
    let mut args = cluster.create_args(1, 1);
    args.extend(["--provider", "qemu"].map(str::to_string));
    // The worker gets a second address and a route from its config, beside ip='s.
    let patch = "apiVersion: basalt.dev/v1alpha1\nkind: MachineConfig\nnetwork:\n  links:\n  \
                 - name: eth0\n    addresses: [10.213.34.100/24]\n    routes:\n    \
                 - network: 10.77.0.0/16\n      gateway: 10.213.34.1\n      metric: 300\n";
    args.extend(["--config-patch-worker", patch].map(str::to_string));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = Instant::now();
    let out = cluster.ok(&args).await;
    println!("create took {:?}:\n{out}", started.elapsed());
    let nodes = [cluster.controlplane(1), cluster.worker(1)];
    let addresses = ["10.213.34.2", "10.213.34.3"];

    let out = cluster.ok(&["health", "--wait-timeout", "60s"]).await;
    assert!(out.contains("healthy: 2 nodes"), "{out}");
    let out = cluster.ok(&["-n", &addresses.join(","), "version"]).await;
    assert_eq!(out.matches("Maintenance: false").count(), 2, "{out}");
    let out = cluster
        .ok(&["-n", &addresses.join(","), "get", "members"])
        .await;
    for node in &nodes {
        assert_eq!(out.matches(&format!("\t{node}\t")).count(), 2, "{out}");
    }
    let out = cluster
        .ok(&["-n", &nodes[1], "get", "apicertificates"])
        .await;
    assert!(out.contains("trustd 10.213.34.2:50001"), "{out}");

    // The control plane runs etcd from the image's etcd layer (a squashfs in a segment
    // of the initramfs of its own, on a loop device), healthy, with its memory and pids
    // limits applied in the VM's cgroup v2; the worker runs none.
    let out = cluster
        .ok(&["-n", &nodes[0], "get", "services", "etcd", "-o", "yaml"])
        .await;
    assert!(
        out.contains("state: Running") && out.contains("healthy: true"),
        "{out}"
    );
    assert!(!out.contains("limitsNotApplied"), "{out}");
    let out = cluster.ok(&["-n", &nodes[1], "services"]).await;
    assert!(!out.contains("etcd"), "{out}");

    // The node's network from ip= and from its config, as the kernel has it, and the host
    // reaching the node at the config's address.
    let out = cluster.ok(&["-n", &nodes[1], "get", "addresses"]).await;
    for address in [
        "eth0/10.213.34.3/24",
        "eth0/10.213.34.100/24",
        "lo/127.0.0.1/8",
    ] {
        assert!(out.contains(address), "no {address}:\n{out}");
    }
    let out = cluster.ok(&["-n", &nodes[1], "get", "routes"]).await;
    for route in [
        "eth0/0.0.0.0/0/10.213.34.1/1024",
        "eth0/10.77.0.0/16/10.213.34.1/300",
    ] {
        assert!(out.contains(route), "no {route}:\n{out}");
    }
    let out = cluster
        .ok(&["-e", "10.213.34.100", "get", "hostname"])
        .await;
    assert!(out.contains(&nodes[1]), "{out}");

    cluster
        .ok(&["cluster", "destroy", "--name", &cluster.name])
        .await;
    cluster.assert_nothing_left();
}
