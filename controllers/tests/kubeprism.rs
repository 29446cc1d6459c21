#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use basalt_controller_runtime::testing::Harness;
use basalt_controllers::k8s::{KubePrismController, KubePrismEndpointsController};
use basalt_kubeprism::testing::{get, Mode, TestBackend, TestCa};
use basalt_resource::k8s::{
    ControlPlaneEndpointSpec, ControlPlaneMemberSpec, KubePrismConfigSpec, KubePrismEndpointsSpec,
    KubePrismState, KubePrismStatusSpec, KubePrismUpstreamSpec,
};
use basalt_resource::{Resource, ResourceKey, ResourceSpec};
use basalt_state::State;

/// Creates or replaces a user-owned resource.
async fn put<S: ResourceSpec>(state: &State, id: &str, spec: S) {
    state
        .put(Resource::new(id, spec).into_any(), "")
        .await
        .unwrap();
}

fn harness() -> Harness {
    Harness::builder()
        .with(KubePrismEndpointsController)
        .unwrap()
        .with(KubePrismController::new(IpAddr::V4(Ipv4Addr::LOCALHOST)))
        .unwrap()
        .start()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubeprism_runs_follows_the_endpoints_and_reports_its_upstreams() {
    let ca = TestCa::new().unwrap();
    let b0 = TestBackend::start("b0", &ca).await.unwrap();
    let b1 = TestBackend::start("b1", &ca).await.unwrap();
    let h = harness();
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
    h.assert_resource::<KubePrismStatusSpec>(KubePrismStatusSpec::ID, |r| {
        r.spec.state == KubePrismState::Running
            && r.spec
                .problems
                .iter()
                .any(|p| p.contains("does not resolve"))
    })
    .await;

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
    let h = harness();
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
