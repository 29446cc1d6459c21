//! ApplyConfiguration on a configured node: dry run, auto, no-reboot, reboot, staged and
//! try (reverted at its timeout unless confirmed), against the real state.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use basalt_api::machine::v1::machine_service_client::MachineServiceClient;
use basalt_api::machine::v1::{self as mapi, ApplyConfigurationRequest, ApplyMode};
use basalt_machine_config::Config;
use basalt_pki::Role;
use basalt_resource::ResourceKey;
use basalt_resources::config::MachineConfigSpec;
use basalt_resources::runtime::{MachineStage, MachineStatusSpec};
use basalt_state::{State, StateError};
use common::*;
use tonic::transport::Channel;

struct Node {
    apid: machined::Node,
    state: State,
    machine: MachineServiceClient<Channel>,
    yaml: String,
}

/// A node running with the generated control-plane config, and an admin client.
async fn configured() -> (Cluster, Node) {
    let cluster = Cluster::new();
    let apid = cluster.start("127.0.0.1").await;
    let state = apid.state().clone();
    let yaml = config(&state, "active").await.unwrap();
    let machine =
        MachineServiceClient::new(channel(apid.local_addr(), &cluster.tls(&[Role::Admin])).await);
    let node = Node {
        apid,
        state,
        machine,
        yaml,
    };
    (cluster, node)
}

/// The node's config with `change` made to its MachineConfig document.
fn changed(yaml: &str, change: impl FnOnce(&mut basalt_machine_config::MachineConfig)) -> String {
    let mut config = Config::parse(yaml).unwrap();
    change(config.machine.as_mut().unwrap());
    config.to_yaml().unwrap()
}

fn request(yaml: &str, mode: ApplyMode) -> ApplyConfigurationRequest {
    ApplyConfigurationRequest {
        data: yaml.as_bytes().to_vec(),
        mode: mode as i32,
        ..Default::default()
    }
}

async fn config(state: &State, id: &str) -> Option<String> {
    match state.get(&ResourceKey::of::<MachineConfigSpec>(id)).await {
        Ok(r) => Some(r.spec_as::<MachineConfigSpec>().unwrap().yaml.clone()),
        Err(StateError::NotFound(_)) => None,
        Err(e) => panic!("{e}"),
    }
}

async fn apply(
    machine: &mut MachineServiceClient<Channel>,
    request: ApplyConfigurationRequest,
) -> mapi::ApplyConfigurationResult {
    let mut response = machine
        .apply_configuration(request)
        .await
        .unwrap()
        .into_inner();
    response.messages.remove(0)
}

#[tokio::test]
async fn dry_run_auto_no_reboot_and_staged() {
    let (_cluster, mut node) = configured().await;
    let renamed = changed(&node.yaml, |m| m.hostname = Some("cp-1".into()));

    // A dry run shows the change and stores nothing.
    let mut dry = request(&renamed, ApplyMode::Auto);
    dry.dry_run = true;
    let result = apply(&mut node.machine, dry).await;
    assert!(
        result.diff.contains("MachineConfig.hostname"),
        "{}",
        result.diff
    );
    assert_eq!(result.mode, ApplyMode::NoReboot as i32);
    assert_eq!(
        config(&node.state, "active").await.as_deref(),
        Some(&*node.yaml)
    );

    // Auto with a change that needs no reboot: applied now.
    let result = apply(&mut node.machine, request(&renamed, ApplyMode::Auto)).await;
    assert_eq!(
        result.mode,
        ApplyMode::NoReboot as i32,
        "{}",
        result.mode_details
    );
    assert_eq!(
        config(&node.state, "active").await.as_deref(),
        Some(&*renamed)
    );

    // No-reboot refuses a change that needs one, naming it; nothing is stored.
    let new_args = changed(&renamed, |m| m.kernel_args.push("quiet".into()));
    let status = node
        .machine
        .apply_configuration(request(&new_args, ApplyMode::NoReboot))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(status.message().contains("kernelArgs"), "{status:?}");
    assert_eq!(
        config(&node.state, "active").await.as_deref(),
        Some(&*renamed)
    );

    // Staged: kept for the next boot, the config in effect untouched.
    let result = apply(&mut node.machine, request(&new_args, ApplyMode::Staged)).await;
    assert_eq!(result.mode, ApplyMode::Staged as i32);
    assert_eq!(
        config(&node.state, "staged").await.as_deref(),
        Some(&*new_args)
    );
    assert_eq!(
        config(&node.state, "active").await.as_deref(),
        Some(&*renamed)
    );

    // A later immediate apply supersedes the staged one.
    let result = apply(
        &mut node.machine,
        request(&node.yaml.clone(), ApplyMode::NoReboot),
    )
    .await;
    assert_eq!(result.mode, ApplyMode::NoReboot as i32);
    assert_eq!(config(&node.state, "staged").await, None);
    assert_eq!(
        config(&node.state, "active").await.as_deref(),
        Some(&*node.yaml)
    );
    node.apid.shutdown().await.unwrap();
}

#[tokio::test]
async fn auto_reboots_for_kernel_args() {
    let (_cluster, mut node) = configured().await;
    let new_args = changed(&node.yaml, |m| m.kernel_args.push("quiet".into()));
    let result = apply(&mut node.machine, request(&new_args, ApplyMode::Auto)).await;
    assert_eq!(result.mode, ApplyMode::Reboot as i32);
    assert!(
        result.mode_details.contains("kernelArgs"),
        "{}",
        result.mode_details
    );
    assert_eq!(
        config(&node.state, "active").await.as_deref(),
        Some(&*new_args)
    );
    let status = node
        .state
        .get(&ResourceKey::of::<MachineStatusSpec>("machine"))
        .await
        .unwrap();
    let status = status.spec_as::<MachineStatusSpec>().unwrap();
    assert_eq!(status.stage, MachineStage::Rebooting);
    node.apid.shutdown().await.unwrap();
}

#[tokio::test]
async fn try_mode_reverts_at_its_timeout_unless_confirmed() {
    let (_cluster, mut node) = configured().await;
    let tried = changed(&node.yaml, |m| m.hostname = Some("tried".into()));
    let mut try_request = request(&tried, ApplyMode::Try);
    try_request.try_timeout = Some(Duration::from_millis(500).try_into().unwrap());

    // Not confirmed: the previous config comes back after the timeout.
    let result = apply(&mut node.machine, try_request.clone()).await;
    assert_eq!(result.mode, ApplyMode::Try as i32);
    assert_eq!(
        config(&node.state, "active").await.as_deref(),
        Some(&*tried)
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while config(&node.state, "active").await.as_deref() != Some(&*node.yaml) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the tried config was not reverted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Confirmed by a second apply before the timeout: it stays.
    apply(&mut node.machine, try_request).await;
    let confirmed = changed(&node.yaml, |m| m.hostname = Some("confirmed".into()));
    apply(&mut node.machine, request(&confirmed, ApplyMode::NoReboot)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        config(&node.state, "active").await.as_deref(),
        Some(&*confirmed)
    );
    node.apid.shutdown().await.unwrap();
}

/// A change made from a config that is no longer in effect is ABORTED and stores nothing;
/// one made from the config in effect applies.
#[tokio::test]
async fn a_change_from_a_stale_config_is_aborted() {
    let (_cluster, mut node) = configured().await;
    let base = Config::parse(&node.yaml).unwrap().digest().unwrap();
    let first = changed(&node.yaml, |m| m.hostname = Some("first".into()));
    let mut from_base = request(&first, ApplyMode::Auto);
    from_base.base_digest = base.clone();
    apply(&mut node.machine, from_base).await;

    // A second editor who read the config before the first change.
    let second = changed(&node.yaml, |m| m.hostname = Some("second".into()));
    let mut stale = request(&second, ApplyMode::Auto);
    stale.base_digest = base.clone();
    let status = node.machine.apply_configuration(stale).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");
    assert!(status.message().contains("changed since"), "{status:?}");
    assert_eq!(
        config(&node.state, "active").await.as_deref(),
        Some(&*first)
    );

    // Redone from the config in effect, it applies.
    let mut redone = request(
        &changed(&first, |m| m.hostname = Some("second".into())),
        ApplyMode::Auto,
    );
    redone.base_digest = Config::parse(&first).unwrap().digest().unwrap();
    apply(&mut node.machine, redone).await;
    let now = Config::parse(&config(&node.state, "active").await.unwrap()).unwrap();
    assert_eq!(now.machine.unwrap().hostname.as_deref(), Some("second"));
}
