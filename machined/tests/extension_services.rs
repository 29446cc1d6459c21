//! Services image layers bring: a configured node runs them, with the environment the
//! config's `ExtensionServiceConfig` gives (a new config restarts them with the new one),
//! and lists those it cannot run as Skipped, saying why.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use basalt_api::machine::v1::machine_service_client::MachineServiceClient;
use basalt_api::machine::v1::{self as mapi, ApplyConfigurationRequest, ApplyMode};
use basalt_pki::Role;
use common::*;
use machined::roles::Layout;
use machined::NodeOptions;
use tonic::transport::Channel;

/// Writes `services/<name>.yaml` files into `layer`, and `bin/sh`: a link to the host's
/// shell (run from where it is: a temporary directory may be mounted noexec).
fn layer(dir: &Path, name: &str, services: &[(&str, &str)]) {
    let layer = dir.join(name);
    std::fs::create_dir_all(layer.join("services")).unwrap();
    std::fs::create_dir_all(layer.join("bin")).unwrap();
    std::os::unix::fs::symlink("/bin/sh", layer.join("bin/sh")).unwrap();
    for (service, text) in services {
        std::fs::write(layer.join("services").join(format!("{service}.yaml")), text).unwrap();
    }
}

/// A greeter's command: says its environment, then stays.
const GREET: &str =
    r#"command: [bin/sh, -c, 'echo "GREETING=$GREETING FROM=$FROM"; exec sleep 600']"#;

fn with_greeting(config: &str, greeting: &str) -> String {
    format!(
        "{config}---\napiVersion: basalt.dev/v1alpha1\nkind: ExtensionServiceConfig\n\
         name: greet\nenvironment:\n  GREETING: {greeting}\n"
    )
}

async fn services(machine: &mut MachineServiceClient<Channel>) -> Vec<mapi::ServiceInfo> {
    let list = machine
        .service_list(mapi::ServiceListRequest {})
        .await
        .unwrap()
        .into_inner();
    list.messages.into_iter().next().unwrap().services
}

/// Waits until the service's log holds `needle` (the node takes its services up a moment
/// after it takes its config: until then it has no such service).
async fn wait_logs(machine: &mut MachineServiceClient<Channel>, id: &str, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = services(machine).await.iter().any(|s| s.id == id);
        let text = if listed {
            service_logs(machine, id).await
        } else {
            String::new()
        };
        if text.contains(needle) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in {id}'s log:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_layers_services_run_with_the_configs_environment_or_say_why_not() {
    let cluster = Cluster::new();
    let extensions = tempfile::tempdir().unwrap();
    layer(
        extensions.path(),
        "greeter",
        &[
            ("greet", &format!("{GREET}\nenvironment: {{FROM: layer}}\n")),
            ("orphan", &format!("{GREET}\ndependsOn: [kubelet]\n")),
        ],
    );
    layer(
        extensions.path(),
        "broken",
        &[("escape", "command: [/bin/sh]\n")],
    );
    let yaml = controlplane_yaml(&cluster);
    let mut options = cluster.configured_options("127.0.0.1");
    options.config.embedded = Some(with_greeting(&yaml, "hello"));
    let node = machined::Node::start(NodeOptions {
        roles: Some(Layout {
            extensions: extensions.path().to_path_buf(),
            state: None,
        }),
        ..options
    })
    .await
    .unwrap();
    let mut machine =
        MachineServiceClient::new(channel(node.local_addr(), &cluster.tls(&[Role::Admin])).await);

    wait_logs(&mut machine, "greet", "GREETING=hello FROM=layer").await;
    let list = services(&mut machine).await;
    let of = |id: &str| list.iter().find(|s| s.id == id).unwrap().clone();
    assert_eq!(of("greet").state, "Running");
    let orphan = of("orphan");
    assert_eq!(orphan.state, "Skipped");
    assert_eq!(
        orphan.message,
        "it depends on kubelet, which this node does not run"
    );
    let escape = of("escape");
    assert_eq!(escape.state, "Skipped");
    assert!(
        escape.message.contains("escape.yaml")
            && escape.message.contains("must be a path inside the layer"),
        "{escape:?}"
    );
    // No STATE here: the role's own service is skipped, the extensions run regardless.
    assert_eq!(of("etcd").state, "Skipped");

    // A new environment restarts the service with it.
    machine
        .apply_configuration(ApplyConfigurationRequest {
            data: with_greeting(&yaml, "again").into_bytes(),
            mode: ApplyMode::NoReboot as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    wait_logs(&mut machine, "greet", "GREETING=again FROM=layer").await;
    node.shutdown().await.unwrap();
}
