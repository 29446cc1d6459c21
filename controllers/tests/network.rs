//! The network controllers against a real kernel: each test makes a network namespace of
//! its own (root only; CI is root) with dummy links, runs the controllers in it, and
//! removes it when it ends, also on failure. No packet leaves the namespace.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use basalt_controller_runtime::testing::Harness;
use basalt_controllers::network::{
    ApplyController, ConfigController, EtcFilesController, Netlink, StatusController,
};
use basalt_resource::{namespaces, Resource, ResourceKey, ResourceSpec};
use basalt_resources::network::{
    AddressStatusSpec, HostnameSource, HostnameSpec, LinkConfigSpec, LinkStatusSpec,
    NetworkServersConfigSpec, ResolverStatusSpec, RouteConfig, RouteStatusSpec,
};
use basalt_resources::runtime::KernelCmdlineSpec;
use basalt_state::State;

/// A network namespace pinned under /run/netns for the test's life, with veth links
/// whose peers (up, so the links get a carrier) are in a second namespace of the test's:
/// the host has no dummy driver, and the links are the only ones besides loopback.
struct Netns {
    name: String,
    path: PathBuf,
    peers: PathBuf,
}

impl Netns {
    /// `None` (and a note) when not root: namespaces need CAP_SYS_ADMIN.
    fn new(links: &[&str]) -> Option<Netns> {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: making a network namespace needs root");
            return None;
        }
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "basalt-net-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = basalt_sys::netns::path_of(&name);
        let peers = basalt_sys::netns::path_of(&format!("{name}-peers"));
        basalt_sys::netns::create(&path).unwrap();
        let netns = Netns { name, path, peers };
        basalt_sys::netns::create(&netns.peers).unwrap();
        let peers = format!("{}-peers", netns.name);
        for link in links {
            netns.ip(&[
                "link", "add", link, "type", "veth", "peer", "name", link, "netns", &peers,
            ]);
            ip(&peers, &["link", "set", link, "up"]);
        }
        Some(netns)
    }

    /// Test set-up and outside changes only; the controllers use netlink.
    fn ip(&self, args: &[&str]) {
        ip(&self.name, args);
    }

    fn netlink(&self) -> Netlink {
        Netlink {
            netns: Some(self.path.clone()),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = basalt_sys::netns::remove(&self.path);
        let _ = basalt_sys::netns::remove(&self.peers);
    }
}

fn ip(netns: &str, args: &[&str]) {
    let status = Command::new("ip")
        .arg("-n")
        .arg(netns)
        .args(args)
        .status()
        .expect("ip is missing: run hack/setup.sh");
    assert!(status.success(), "ip -n {netns} {args:?}");
}

async fn put<S: ResourceSpec>(state: &State, id: &str, spec: S) {
    state
        .put(Resource::new(id, spec).into_any(), "test")
        .await
        .unwrap();
}

async fn cmdline(state: &State, raw: &str) {
    put(state, KernelCmdlineSpec::ID, KernelCmdlineSpec::parse(raw)).await;
}

fn harness(state: State, netns: &Netns, etc: Option<PathBuf>) -> Harness {
    let mut builder = Harness::builder_with(state)
        .with(ConfigController)
        .unwrap()
        .with(StatusController::new(netns.netlink()))
        .unwrap()
        .with(ApplyController::new(netns.netlink()))
        .unwrap();
    if let Some(dir) = etc {
        builder = builder.with(EtcFilesController::new(dir, false)).unwrap();
    }
    builder.start().with_timeout(Duration::from_secs(20))
}

#[tokio::test]
async fn addresses_routes_and_resolvers_come_from_ip_and_the_config_and_stay_applied() {
    let Some(netns) = Netns::new(&["eth0", "eth1"]) else {
        return;
    };
    let etc = tempfile::tempdir().unwrap();
    let state = State::new();
    cmdline(
        &state,
        "console=ttyS0 ip=10.99.0.2::10.99.0.1:255.255.255.0:node:eth0:off:10.99.0.53",
    )
    .await;
    let hostname = HostnameSpec {
        hostname: "node-1".into(),
        domainname: "lab.test".into(),
        source: HostnameSource::Config,
    };
    put(&state, HostnameSpec::ID, hostname).await;
    let h = harness(state.clone(), &netns, Some(etc.path().to_path_buf()));

    // From ip=: the link up, its address, the default route, the name server.
    h.assert_resource::<LinkStatusSpec>("eth0", |l| l.spec.up)
        .await;
    h.assert_resource::<AddressStatusSpec>("eth0/10.99.0.2/24", |a| a.spec.family == "inet")
        .await;
    h.assert_resource::<RouteStatusSpec>("eth0/0.0.0.0/0/10.99.0.1/1024", |r| {
        r.spec.protocol == "static"
    })
    .await;
    h.assert_resource::<ResolverStatusSpec>("resolvers", |r| r.spec.nameservers == ["10.99.0.53"])
        .await;
    h.assert_resource::<LinkStatusSpec>("lo", |l| l.spec.up)
        .await;

    // The config adds a link with an MTU, an address and a route, and its name server
    // wins over ip='s.
    let link = LinkConfigSpec {
        dhcp: false,
        mtu: Some(1400),
        addresses: vec!["10.98.0.2/24".into()],
        routes: vec![RouteConfig {
            network: "10.50.7.0/16".into(),
            gateway: Some("10.98.0.1".into()),
            metric: Some(50),
        }],
    };
    put(&state, "eth1", link).await;
    let servers = NetworkServersConfigSpec {
        nameservers: vec!["10.98.0.53".into()],
        time_servers: Vec::new(),
    };
    put(&state, NetworkServersConfigSpec::ID, servers).await;
    h.assert_resource::<LinkStatusSpec>("eth1", |l| l.spec.up && l.spec.mtu == 1400)
        .await;
    h.assert_resource::<AddressStatusSpec>("eth1/10.98.0.2/24", |_| true)
        .await;
    h.assert_resource::<RouteStatusSpec>("eth1/10.50.0.0/16/10.98.0.1/50", |_| true)
        .await;
    h.assert_resource::<ResolverStatusSpec>("resolvers", |r| r.spec.nameservers == ["10.98.0.53"])
        .await;
    let hosts = std::fs::read_to_string(etc.path().join("hosts")).unwrap();
    assert!(hosts.contains("127.0.0.1 localhost\n"), "{hosts}");
    assert!(
        hosts.contains("10.98.0.2 node-1.lab.test node-1\n"),
        "{hosts}"
    );
    let resolv = std::fs::read_to_string(etc.path().join("resolv.conf")).unwrap();
    assert!(
        resolv.contains("nameserver 10.98.0.53\nsearch lab.test\n"),
        "{resolv}"
    );

    // Removed by someone else: put back. A link that appears is seen without polling.
    netns.ip(&["address", "del", "10.99.0.2/24", "dev", "eth0"]);
    netns.ip(&[
        "link", "add", "extra0", "type", "veth", "peer", "name", "extra1",
    ]);
    h.assert_resource::<LinkStatusSpec>("extra0", |l| !l.spec.up && l.spec.kind == "veth")
        .await;
    h.assert_resource::<AddressStatusSpec>("eth0/10.99.0.2/24", |_| true)
        .await;
    h.assert_resource::<RouteStatusSpec>("eth0/0.0.0.0/0/10.99.0.1/1024", |_| true)
        .await;

    // The config's link goes: its address and route go with it; ip='s stay.
    let key = ResourceKey::new(namespaces::CONFIG, LinkConfigSpec::TYPE, "eth1");
    state.teardown(&key, "test").await.unwrap();
    state.destroy(&key, "test").await.unwrap();
    h.assert_no_resource::<AddressStatusSpec>("eth1/10.98.0.2/24")
        .await;
    h.assert_no_resource::<RouteStatusSpec>("eth1/10.50.0.0/16/10.98.0.1/50")
        .await;
    h.assert_resource::<AddressStatusSpec>("eth0/10.99.0.2/24", |_| true)
        .await;
    h.stop().await;
}

#[tokio::test]
async fn ip_without_a_device_names_the_first_ethernet_link_and_a_bad_one_is_skipped() {
    let Some(netns) = Netns::new(&["ens3", "ens4"]) else {
        return;
    };
    let state = State::new();
    cmdline(&state, "ip=10.97.0.2:::16").await;
    let h = harness(state.clone(), &netns, None);
    h.assert_resource::<AddressStatusSpec>("ens3/10.97.0.2/16", |_| true)
        .await;
    h.assert_resource::<LinkStatusSpec>("ens4", |l| !l.spec.up)
        .await;

    // A value the node cannot apply is skipped and logged: what the last one set is
    // taken back, and nothing else changes.
    cmdline(&state, "ip=dhcp").await;
    h.assert_no_resource::<AddressStatusSpec>("ens3/10.97.0.2/16")
        .await;
    h.assert_resource::<LinkStatusSpec>("lo", |l| l.spec.up)
        .await;
    h.stop().await;
}
