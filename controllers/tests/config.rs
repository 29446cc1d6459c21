//! The config domain publishes the machine config per concern; the secrets domain issues
//! the API certificates from it; the machine status follows both and power requests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use basalt_controller_runtime::testing::Harness;
use basalt_controllers::config::MachineConfigController;
use basalt_controllers::network::HostnameController;
use basalt_controllers::runtime::MachineStatusController;
use basalt_controllers::secrets::ApiCertificatesController;
use basalt_machine_config::generate::{generate, GenerateOptions};
use basalt_machine_config::{Config, KubePrismConfig, Link, Network, Route};
use basalt_pki::SecretsBundle;
use basalt_resource::{Resource, ResourceKey, ResourceSpec};
use basalt_resources::config::{HostnameConfigSpec, MachineConfigSpec};
use basalt_resources::k8s::{ControlPlaneEndpointSpec, KubePrismConfigSpec};
use basalt_resources::kubespan::KubeSpanConfigSpec;
use basalt_resources::network::{HostnameSpec, LinkConfigSpec, NetworkServersConfigSpec};
use basalt_resources::runtime::{
    ExtensionServiceConfigSpec, MachineStage, MachineStatusSpec, PowerAction, PowerRequestSpec,
};
use basalt_resources::secrets::{ApiCertificatesSpec, OsRootSpec};
use basalt_state::State;

/// Creates or replaces a resource as `owner`.
async fn put<S: ResourceSpec>(state: &State, owner: &str, id: &str, spec: S) {
    state
        .put(Resource::new(id, spec).into_any(), owner)
        .await
        .unwrap();
}

/// The generated control-plane config of `bundle`, changed by `change`.
fn config(bundle: &SecretsBundle, change: impl FnOnce(&mut Config)) -> Config {
    let options = GenerateOptions {
        cluster_name: "test".into(),
        endpoint: "https://api.test:6443".into(),
        install_disk: None,
        admin_validity: Duration::from_secs(3600),
    };
    let mut config = generate(bundle, &options).unwrap().controlplane;
    change(&mut config);
    config
}

async fn apply(state: &State, config: &Config) {
    let spec = MachineConfigSpec {
        yaml: config.to_yaml().unwrap(),
        digest: config.digest().unwrap(),
    };
    put(state, "apid", MachineConfigSpec::ACTIVE, spec).await;
}

fn full(config: &mut Config) {
    let machine = config.machine.as_mut().unwrap();
    machine.hostname = Some("node-1".into());
    machine.cert_sans = vec!["api.node-1.test".into()];
    machine.network = Some(Network {
        links: vec![Link {
            name: "eth0".into(),
            dhcp: false,
            mtu: Some(1400),
            addresses: vec!["10.5.0.2/24".into()],
            routes: vec![Route {
                network: "0.0.0.0/0".into(),
                gateway: Some("10.5.0.1".parse().unwrap()),
                metric: None,
            }],
        }],
        nameservers: vec!["10.5.0.1".parse().unwrap()],
        time_servers: vec!["time.test".into()],
    });
    config.kubeprism = Some(KubePrismConfig {
        enabled: false,
        ..Default::default()
    });
    config.kubespan = Some(
        serde_yaml_ng::from_str(
            "apiVersion: basalt.dev/v1alpha1\nkind: KubeSpanConfig\nenabled: true\nmtu: 1380\n",
        )
        .unwrap(),
    );
    config.extensions = vec![serde_yaml_ng::from_str(
        "apiVersion: basalt.dev/v1alpha1\nkind: ExtensionServiceConfig\nname: agent\nenvironment:\n  TOKEN: t0k3n\n",
    )
    .unwrap()];
}

#[tokio::test]
async fn the_config_is_published_per_concern_and_follows_every_apply() {
    let bundle = SecretsBundle::generate().unwrap();
    let h = Harness::builder()
        .with(MachineConfigController)
        .unwrap()
        .start();
    apply(h.state(), &config(&bundle, full)).await;

    let hostname = h
        .assert_resource::<HostnameConfigSpec>(HostnameConfigSpec::ID, |_| true)
        .await;
    assert_eq!(hostname.spec.hostname, "node-1");
    assert_eq!(hostname.metadata.owner, "config.MachineConfigController");
    let link = h.assert_resource::<LinkConfigSpec>("eth0", |_| true).await;
    assert_eq!(link.spec.addresses, ["10.5.0.2/24"]);
    assert_eq!(link.spec.mtu, Some(1400));
    assert_eq!(link.spec.routes[0].gateway.as_deref(), Some("10.5.0.1"));
    let servers = h
        .assert_resource::<NetworkServersConfigSpec>(NetworkServersConfigSpec::ID, |_| true)
        .await;
    assert_eq!(servers.spec.nameservers, ["10.5.0.1"]);
    assert_eq!(servers.spec.time_servers, ["time.test"]);
    let root = h
        .assert_resource::<OsRootSpec>(OsRootSpec::ID, |_| true)
        .await;
    assert_eq!(root.spec.ca, bundle.certs.os.crt);
    assert_eq!(root.spec.ca_key, bundle.certs.os.key);
    assert_eq!(root.spec.cert_sans, ["api.node-1.test"]);
    let kubeprism = h
        .assert_resource::<KubePrismConfigSpec>(KubePrismConfigSpec::ID, |_| true)
        .await;
    assert!(!kubeprism.spec.enabled);
    assert_eq!(kubeprism.spec.ca.as_deref(), Some(&*bundle.certs.k8s.crt));
    let endpoint = h
        .assert_resource::<ControlPlaneEndpointSpec>(ControlPlaneEndpointSpec::ID, |_| true)
        .await;
    assert_eq!(endpoint.spec.endpoint, "https://api.test:6443");
    let kubespan = h
        .assert_resource::<KubeSpanConfigSpec>(KubeSpanConfigSpec::ID, |_| true)
        .await;
    assert!(kubespan.spec.enabled);
    assert_eq!(kubespan.spec.mtu, Some(1380));
    let agent = h
        .assert_resource::<ExtensionServiceConfigSpec>("agent", |_| true)
        .await;
    assert_eq!(agent.spec.environment["TOKEN"], "t0k3n");

    // A second apply: changed values follow, removed documents take their resources,
    // and KubePrism without its document is on at its default port.
    let second = config(&bundle, |c| {
        c.machine.as_mut().unwrap().hostname = Some("node-2".into());
    });
    apply(h.state(), &second).await;
    h.assert_resource::<HostnameConfigSpec>(HostnameConfigSpec::ID, |r| {
        r.spec.hostname == "node-2"
    })
    .await;
    h.assert_resource::<KubePrismConfigSpec>(KubePrismConfigSpec::ID, |r| {
        r.spec.enabled && r.spec.port == 7445
    })
    .await;
    h.assert_no_resource::<LinkConfigSpec>("eth0").await;
    h.assert_no_resource::<NetworkServersConfigSpec>(NetworkServersConfigSpec::ID)
        .await;
    h.assert_no_resource::<KubeSpanConfigSpec>(KubeSpanConfigSpec::ID)
        .await;
    h.assert_no_resource::<ExtensionServiceConfigSpec>("agent")
        .await;

    // A config that no longer parses (a corrupt store) changes nothing.
    let corrupt = MachineConfigSpec {
        yaml: "kind: [".into(),
        digest: "x".into(),
    };
    put(h.state(), "apid", MachineConfigSpec::ACTIVE, corrupt).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let hostname = h
        .assert_resource::<HostnameConfigSpec>(HostnameConfigSpec::ID, |_| true)
        .await;
    assert_eq!(hostname.spec.hostname, "node-2");
    h.stop().await;
}

fn certificates_harness(validity: Duration) -> Harness {
    Harness::builder()
        .with(MachineConfigController)
        .unwrap()
        .with(HostnameController)
        .unwrap()
        .with(ApiCertificatesController::new(
            vec!["127.0.0.1".into()],
            validity,
            basalt_api::TRUSTD_PORT,
        ))
        .unwrap()
        .with(MachineStatusController)
        .unwrap()
        .start()
}

fn check_server(spec: &ApiCertificatesSpec, bundle: &SecretsBundle, name: &str) {
    let info = basalt_pki::verify(
        &spec.server_crt,
        &bundle.certs.os.crt,
        time::OffsetDateTime::now_utc(),
    )
    .unwrap();
    assert_eq!(info.subject_cn, name);
    assert!(info.dns_sans.iter().any(|s| s == name), "{info:?}");
    assert!(
        info.ip_sans.iter().any(|ip| ip.to_string() == "127.0.0.1"),
        "{info:?}"
    );
    let peer = basalt_pki::verify(
        &spec.peer_crt,
        &bundle.certs.os.crt,
        time::OffsetDateTime::now_utc(),
    )
    .unwrap();
    assert_eq!(peer.organizations, ["os:impersonator"]);
    assert_eq!(spec.ca, bundle.certs.os.crt);
}

#[tokio::test]
async fn api_certificates_are_issued_from_the_config_and_follow_the_hostname() {
    let bundle = SecretsBundle::generate().unwrap();
    let h = certificates_harness(Duration::from_secs(3600));
    h.assert_resource::<MachineStatusSpec>(MachineStatusSpec::ID, |r| {
        r.spec.stage == MachineStage::Maintenance
    })
    .await;

    apply(
        h.state(),
        &config(&bundle, |c| {
            c.machine.as_mut().unwrap().hostname = Some("node-1".into())
        }),
    )
    .await;
    let first = h
        .assert_resource::<ApiCertificatesSpec>(ApiCertificatesSpec::ID, |r| {
            r.spec.sans.iter().any(|s| s == "node-1")
        })
        .await;
    assert_eq!(first.metadata.owner, "secrets.ApiCertificatesController");
    check_server(&first.spec, &bundle, "node-1");
    h.assert_resource::<MachineStatusSpec>(MachineStatusSpec::ID, |r| {
        r.spec.stage == MachineStage::Running
    })
    .await;

    // A new hostname: new certificates for it, from the same CA.
    apply(
        h.state(),
        &config(&bundle, |c| {
            c.machine.as_mut().unwrap().hostname = Some("node-2".into())
        }),
    )
    .await;
    h.assert_resource::<HostnameSpec>(HostnameSpec::ID, |r| r.spec.hostname == "node-2")
        .await;
    let second = h
        .assert_resource::<ApiCertificatesSpec>(ApiCertificatesSpec::ID, |r| {
            r.spec.sans.iter().any(|s| s == "node-2")
        })
        .await;
    check_server(&second.spec, &bundle, "node-2");
    assert!(!second.spec.sans.iter().any(|s| s == "node-1"));

    // A power request takes precedence in the machine's status.
    let power = PowerRequestSpec {
        action: PowerAction::Shutdown,
        reason: "shutdown requested".into(),
    };
    put(h.state(), "power", PowerRequestSpec::ID, power).await;
    h.assert_resource::<MachineStatusSpec>(MachineStatusSpec::ID, |r| {
        r.spec.stage == MachineStage::ShuttingDown && r.spec.reason == "shutdown requested"
    })
    .await;
    h.stop().await;
}

#[tokio::test]
async fn api_certificates_are_renewed_at_half_their_life() {
    let bundle = SecretsBundle::generate().unwrap();
    // Issued with 5 minutes of clock-skew allowance: a 2 s lifetime ends 2 s after
    // issuing, and is renewed after 1 s.
    let h = certificates_harness(Duration::from_secs(2));
    apply(h.state(), &config(&bundle, |_| {})).await;
    let first = h
        .assert_resource::<ApiCertificatesSpec>(ApiCertificatesSpec::ID, |_| true)
        .await;
    let renewed = h
        .assert_resource::<ApiCertificatesSpec>(ApiCertificatesSpec::ID, |r| {
            r.spec.server_crt != first.spec.server_crt
        })
        .await;
    assert!(renewed.spec.not_after > first.spec.not_after);
    h.stop().await;
}

#[tokio::test]
async fn a_worker_config_gets_no_certificates_here() {
    let bundle = SecretsBundle::generate().unwrap();
    let options = GenerateOptions {
        cluster_name: "test".into(),
        endpoint: "https://api.test:6443".into(),
        install_disk: None,
        admin_validity: Duration::from_secs(3600),
    };
    let worker = generate(&bundle, &options).unwrap().worker;
    let h = certificates_harness(Duration::from_secs(3600));
    apply(h.state(), &worker).await;
    let root = h
        .assert_resource::<OsRootSpec>(OsRootSpec::ID, |_| true)
        .await;
    assert!(root.spec.ca_key.is_empty());
    h.assert_resource::<MachineStatusSpec>(MachineStatusSpec::ID, |r| {
        r.spec.stage == MachineStage::Booting
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let key = ResourceKey::of::<ApiCertificatesSpec>(ApiCertificatesSpec::ID);
    assert!(h.state().get(&key).await.is_err());
    h.stop().await;
}
