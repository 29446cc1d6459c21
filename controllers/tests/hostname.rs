#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use basalt_controller_runtime::testing::Harness;
use basalt_controllers::network::HostnameController;
use basalt_controllers::runtime::KernelCmdlineController;
use basalt_resource::{AnyResource, Resource, ResourceKey, ResourceSpec};
use basalt_resources::config::HostnameConfigSpec;
use basalt_resources::network::{HostnameSource, HostnameSpec};
use basalt_resources::runtime::KernelCmdlineSpec;
use basalt_state::State;

fn config_key() -> ResourceKey {
    ResourceKey::new(
        HostnameConfigSpec::DEFAULT_NAMESPACE,
        HostnameConfigSpec::TYPE,
        HostnameConfigSpec::ID,
    )
}

async fn set_config(state: &State, hostname: &str) {
    let spec = HostnameConfigSpec {
        hostname: hostname.into(),
    };
    match state.get(&config_key()).await {
        Ok(current) => {
            let mut next = AnyResource::clone(&current);
            next.spec = Arc::new(spec);
            state.update(next, "").await.unwrap();
        }
        Err(_) => {
            state
                .create(Resource::new(HostnameConfigSpec::ID, spec).into_any(), "")
                .await
                .unwrap();
        }
    }
}

fn cmdline_file(text: &str) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), text).unwrap();
    f
}

fn harness(cmdline: &tempfile::NamedTempFile) -> Harness {
    Harness::builder()
        .with(KernelCmdlineController::new(cmdline.path().to_path_buf()))
        .unwrap()
        .with(HostnameController)
        .unwrap()
        .start()
}

#[tokio::test]
async fn kernel_cmdline_is_published() {
    let file = cmdline_file("console=ttyS0 basalt.hostname=node-1 quiet\n");
    let h = harness(&file);
    let c = h
        .assert_resource::<KernelCmdlineSpec>("cmdline", |_| true)
        .await;
    assert_eq!(c.spec.raw, "console=ttyS0 basalt.hostname=node-1 quiet");
    assert_eq!(c.spec.get("console"), Some("ttyS0"));
    assert_eq!(c.metadata.owner, "runtime.KernelCmdlineController");
    h.stop().await;
}

#[tokio::test]
async fn hostname_comes_from_the_cmdline_then_from_config_which_wins() {
    let file = cmdline_file("basalt.hostname=from-cmdline.lab");
    let h = harness(&file);
    let hn = h
        .assert_resource::<HostnameSpec>("hostname", |r| r.spec.source == HostnameSource::Cmdline)
        .await;
    assert_eq!(
        (hn.spec.hostname.as_str(), hn.spec.domainname.as_str()),
        ("from-cmdline", "lab")
    );

    set_config(h.state(), "from-config").await;
    h.assert_resource::<HostnameSpec>("hostname", |r| {
        r.spec.source == HostnameSource::Config && r.spec.hostname == "from-config"
    })
    .await;

    // An invalid config falls back to the command line.
    set_config(h.state(), "not_valid!").await;
    h.assert_resource::<HostnameSpec>("hostname", |r| r.spec.hostname == "from-cmdline")
        .await;

    // Removing the config keeps the command line's name.
    set_config(h.state(), "again").await;
    h.assert_resource::<HostnameSpec>("hostname", |r| r.spec.hostname == "again")
        .await;
    h.state().destroy(&config_key(), "").await.unwrap();
    h.assert_resource::<HostnameSpec>("hostname", |r| r.spec.hostname == "from-cmdline")
        .await;
    h.stop().await;
}

#[tokio::test]
async fn without_a_source_there_is_no_hostname() {
    let file = cmdline_file("console=ttyS0 basalt.hostname=-bad-");
    let h = harness(&file);
    h.assert_resource::<KernelCmdlineSpec>("cmdline", |_| true)
        .await;
    set_config(h.state(), "only-config").await;
    h.assert_resource::<HostnameSpec>("hostname", |r| r.spec.hostname == "only-config")
        .await;
    // The only valid source goes away: so does the hostname.
    h.state().destroy(&config_key(), "").await.unwrap();
    h.assert_no_resource::<HostnameSpec>("hostname").await;
    h.stop().await;
}

#[tokio::test]
async fn an_unreadable_cmdline_is_retried_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cmdline");
    let h = Harness::builder()
        .with(KernelCmdlineController::new(path.clone()))
        .unwrap()
        .with(HostnameController)
        .unwrap()
        .start();
    // The file appears later (the controller keeps retrying with backoff).
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    std::fs::write(&path, "basalt.hostname=late").unwrap();
    h.assert_resource::<HostnameSpec>("hostname", |r| r.spec.hostname == "late")
        .await;
    h.stop().await;
}

#[test]
fn every_controller_registers_and_the_graph_shows_the_pair() {
    let mut engine = basalt_controller_runtime::Engine::new(State::new());
    basalt_controllers::register_all(&mut engine, &Default::default()).unwrap();
    let edges: Vec<(&str, String)> = engine
        .dependencies()
        .into_iter()
        .map(|d| (d.controller, d.kind.to_string()))
        .collect();
    let cmdline = "runtime/KernelCmdlines.runtime.basalt.dev".to_string();
    assert!(
        edges.contains(&("runtime.KernelCmdlineController", cmdline.clone())),
        "{edges:?}"
    );
    assert!(
        edges.contains(&("network.HostnameController", cmdline)),
        "{edges:?}"
    );
}
