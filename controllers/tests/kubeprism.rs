#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use basalt_controller_runtime::testing::Harness;
use basalt_controllers::config::MachineConfigController;
use basalt_controllers::k8s::{KubePrismController, KubePrismEndpointsController};
use basalt_kubeprism::testing::{echo_stream, get, Mode, TestBackend, TestCa, TestDns};
use basalt_kubeprism::BalancerConfig;
use basalt_machine_config::generate::{generate, GenerateOptions};
use basalt_machine_config::KubePrismConfig;
use basalt_resource::{Resource, ResourceKey, ResourceSpec};
use basalt_resources::config::MachineConfigSpec;
use basalt_resources::k8s::{
    ControlPlaneEndpointSpec, ControlPlaneMemberSpec, KubePrismConfigSpec, KubePrismEndpointsSpec,
    KubePrismState, KubePrismStatusSpec, KubePrismUpstreamSpec,
};
use basalt_state::State;

/// Creates or replaces a user-owned resource.
async fn put<S: ResourceSpec>(state: &State, id: &str, spec: S) {
    state
        .put(Resource::new(id, spec).into_any(), "")
        .await
        .unwrap();
}

/// The KubePrism controllers, looking names up in `dns` (no lookup leaves the machine)
/// and again every 300 ms.
fn harness(dns: &TestDns) -> Harness {
    let config = BalancerConfig {
        resolver: dns.resolver(),
        ..BalancerConfig::default()
    };
    let kubeprism = KubePrismController::with_config(IpAddr::V4(Ipv4Addr::LOCALHOST), config)
        .resolving_every(Duration::from_millis(300));
    Harness::builder()
        .with(KubePrismEndpointsController)
        .unwrap()
        .with(kubeprism)
        .unwrap()
        .start()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubeprism_runs_follows_the_endpoints_and_reports_its_upstreams() {
    let ca = TestCa::new().unwrap();
    let b0 = TestBackend::start("b0", &ca).await.unwrap();
    let b1 = TestBackend::start("b1", &ca).await.unwrap();
    let h = harness(&TestDns::default());
    h.assert_resource::<KubePrismStatusSpec>(KubePrismStatusSpec::ID, |r| {
        r.spec.state == KubePrismState::Disabled
    })
    .await;

    let state = h.state();
    put(
        state,
        ControlPlaneEndpointSpec::ID,
        ControlPlaneEndpointSpec {
            endpoint: format!("https://127.0.0.1:{}", b0.addr().port()),
        },
    )
    .await;
    put(
        state,
        "cp-2",
        ControlPlaneMemberSpec {
            addresses: vec!["127.0.0.1".into()],
            api_server_port: b1.addr().port(),
        },
    )
    .await;
    h.assert_resource::<KubePrismEndpointsSpec>(KubePrismEndpointsSpec::ID, |r| {
        r.spec.endpoints == [b0.upstream(), b1.upstream()]
    })
    .await;

    enable_with_ca(state, &ca).await;
    let status = h
        .assert_resource::<KubePrismStatusSpec>(KubePrismStatusSpec::ID, |r| {
            r.spec.state == KubePrismState::Running && r.spec.healthy == 2
        })
        .await;
    let listen: SocketAddr = status.spec.listen.parse().unwrap();
    for _ in 0..4 {
        assert_eq!(get(listen, "/name").await.unwrap().0, 200);
    }
    h.assert_resource::<KubePrismStatusSpec>(KubePrismStatusSpec::ID, |r| r.spec.accepted >= 4)
        .await;

    // An unready API server shows in its upstream resource.
    b1.set_mode(Mode::Unready);
    let down = h
        .assert_resource::<KubePrismUpstreamSpec>(&b1.upstream(), |r| r.spec.state == "down")
        .await;
    assert!(down.spec.last_error.unwrap().contains("503"));
    assert_eq!(down.metadata.owner, "k8s.KubePrismController");

    // The member leaves: so does its upstream.
    state
        .destroy(&ResourceKey::of::<ControlPlaneMemberSpec>("cp-2"), "")
        .await
        .unwrap();
    h.assert_no_resource::<KubePrismUpstreamSpec>(&b1.upstream())
        .await;
    h.assert_resource::<KubePrismStatusSpec>(KubePrismStatusSpec::ID, |r| r.spec.upstreams == 1)
        .await;

    // A bad endpoint is reported, and the balancer stays up.
    put(
        state,
        ControlPlaneEndpointSpec::ID,
        ControlPlaneEndpointSpec {
            endpoint: "https://does-not-exist.invalid:6443".into(),
        },
    )
    .await;
    running_with_an_unresolvable_name(&h).await;

    // Disabled: no listener, no upstreams.
    put(
        state,
        KubePrismConfigSpec::ID,
        KubePrismConfigSpec {
            enabled: false,
            port: 0,
            ca: None,
        },
    )
    .await;
    h.assert_resource::<KubePrismStatusSpec>(KubePrismStatusSpec::ID, |r| {
        r.spec.state == KubePrismState::Disabled
    })
    .await;
    h.assert_count::<KubePrismUpstreamSpec>(0, |_| true).await;
    assert!(tokio::net::TcpStream::connect(listen).await.is_err());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_that_cannot_be_bound_is_reported_and_retried() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let h = harness(&TestDns::default());
    put(
        h.state(),
        KubePrismConfigSpec::ID,
        KubePrismConfigSpec {
            enabled: true,
            port,
            ca: None,
        },
    )
    .await;
    h.assert_resource::<KubePrismStatusSpec>(KubePrismStatusSpec::ID, |r| {
        r.spec.state == KubePrismState::Failed && !r.spec.problems.is_empty()
    })
    .await;
    drop(taken);
    h.assert_resource::<KubePrismStatusSpec>(KubePrismStatusSpec::ID, |r| {
        r.spec.state == KubePrismState::Running && r.spec.problems == ["no upstreams configured"]
    })
    .await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_names_are_resolved_again() {
    let ca = TestCa::new().unwrap();
    // The checks verify the endpoint's name, so the backends' certificates carry it.
    let b0 = TestBackend::start_for("b0", &ca, &["api.cluster.test"])
        .await
        .unwrap();
    let b1 = TestBackend::start_for("b1", &ca, &["api.cluster.test"])
        .await
        .unwrap();
    let dns = TestDns::default();
    let h = harness(&dns);
    let name = "api.cluster.test:6443";
    put(
        h.state(),
        ControlPlaneEndpointSpec::ID,
        ControlPlaneEndpointSpec {
            endpoint: format!("https://{name}"),
        },
    )
    .await;
    enable_with_ca(h.state(), &ca).await;
    // Not known yet (DNS not up): reported, and looked up again until it is.
    running_with_an_unresolvable_name(&h).await;
    dns.set(name, Some(b0.addr()));
    let status = h
        .assert_resource::<KubePrismStatusSpec>(KubePrismStatusSpec::ID, |r| {
            r.spec.healthy == 1 && r.spec.problems.is_empty()
        })
        .await;
    let listen: SocketAddr = status.spec.listen.parse().unwrap();
    assert_eq!(get(listen, "/name").await.unwrap(), (200, "b0".into()));
    let (_held, on) = echo_stream(listen).await.unwrap();
    assert_eq!(on, "b0");

    // The name moves to another address: so does the upstream, with no input changed
    // (the old address drains under the connection still held).
    dns.set(name, Some(b1.addr()));
    // Healthy by a passed check, not only by a new upstream's optimistic start.
    h.assert_resource::<KubePrismUpstreamSpec>(name, |r| {
        r.spec.address == b1.addr().to_string()
            && r.spec.state == "healthy"
            && r.spec.check_latency_us.is_some()
            && r.spec.check_failures == 0
    })
    .await;
    assert_eq!(get(listen, "/name").await.unwrap(), (200, "b1".into()));
    // It stays on the new address while the old one drains (through a few status
    // refreshes).
    let key = ResourceKey::of::<KubePrismUpstreamSpec>(name);
    for _ in 0..75 {
        let r = h.state().get(&key).await.unwrap();
        let r = Resource::<KubePrismUpstreamSpec>::try_from(r.as_ref()).unwrap();
        assert_eq!(r.spec.address, b1.addr().to_string());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.stop().await;
}

/// Turns KubePrism on, on any free port, checking upstreams over HTTPS against `ca`.
async fn enable_with_ca(state: &State, ca: &TestCa) {
    put(
        state,
        KubePrismConfigSpec::ID,
        KubePrismConfigSpec {
            enabled: true,
            port: 0,
            ca: Some(ca.pem().to_string()),
        },
    )
    .await;
}

/// Waits until the balancer runs and reports a name that does not resolve.
async fn running_with_an_unresolvable_name(h: &Harness) {
    h.assert_resource::<KubePrismStatusSpec>(KubePrismStatusSpec::ID, |r| {
        r.spec.state == KubePrismState::Running
            && r.spec
                .problems
                .iter()
                .any(|p| p.contains("does not resolve"))
    })
    .await;
}

/// A generated control-plane config whose endpoint is `endpoint` and whose Kubernetes CA
/// is `ca` (the test backends' CA), with KubePrism as `kubeprism` says.
fn machine_config(endpoint: &str, ca: &TestCa, kubeprism: KubePrismConfig) -> MachineConfigSpec {
    let bundle = basalt_pki::SecretsBundle::generate().unwrap();
    let options = GenerateOptions {
        cluster_name: "test".into(),
        endpoint: endpoint.into(),
        install_disk: None,
        admin_validity: std::time::Duration::from_secs(3600),
    };
    let mut config = generate(&bundle, &options).unwrap().controlplane;
    config.cluster.as_mut().unwrap().ca.as_mut().unwrap().crt = ca.pem().to_string();
    config.kubeprism = Some(kubeprism);
    MachineConfigSpec {
        yaml: config.to_yaml().unwrap(),
        digest: config.digest().unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_machine_config_turns_kubeprism_on_and_off() {
    let ca = TestCa::new().unwrap();
    let backend = TestBackend::start("b0", &ca).await.unwrap();
    let h = Harness::builder()
        .with(MachineConfigController)
        .unwrap()
        .with(KubePrismEndpointsController)
        .unwrap()
        .with(KubePrismController::new(IpAddr::V4(Ipv4Addr::LOCALHOST)))
        .unwrap()
        .start();
    let endpoint = format!("https://127.0.0.1:{}", backend.addr().port());
    let on = KubePrismConfig {
        enabled: true,
        port: 0,
        ..Default::default()
    };
    put(
        h.state(),
        MachineConfigSpec::ACTIVE,
        machine_config(&endpoint, &ca, on.clone()),
    )
    .await;
    // The endpoint from ClusterConfig, checked over HTTPS against its CA.
    h.assert_resource::<KubePrismEndpointsSpec>(KubePrismEndpointsSpec::ID, |r| {
        r.spec.endpoints == [backend.upstream()]
    })
    .await;
    let config = h
        .assert_resource::<KubePrismConfigSpec>(KubePrismConfigSpec::ID, |r| r.spec.enabled)
        .await;
    assert_eq!(config.spec.ca.as_deref(), Some(ca.pem()));
    let status = h
        .assert_resource::<KubePrismStatusSpec>(KubePrismStatusSpec::ID, |r| {
            r.spec.state == KubePrismState::Running && r.spec.healthy == 1
        })
        .await;
    let listen: SocketAddr = status.spec.listen.parse().unwrap();
    assert_eq!(get(listen, "/name").await.unwrap().0, 200);

    // Turned off in the config: the balancer stops.
    let off = KubePrismConfig {
        enabled: false,
        ..on
    };
    put(
        h.state(),
        MachineConfigSpec::ACTIVE,
        machine_config(&endpoint, &ca, off),
    )
    .await;
    h.assert_resource::<KubePrismStatusSpec>(KubePrismStatusSpec::ID, |r| {
        r.spec.state == KubePrismState::Disabled
    })
    .await;
    h.stop().await;
}
