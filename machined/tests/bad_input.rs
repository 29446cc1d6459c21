//! A node given bad things to run or to keep: a service binary that does not exist, a
//! daemon that exits at once, a STATE that is full. The node stays up and reachable,
//! reports each (as a resource and in its answers), and loses nothing it acknowledged.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use basalt_api::machine::v1::machine_service_client::MachineServiceClient;
use basalt_api::machine::v1::{self as mapi, ApplyConfigurationRequest, ApplyMode};
use basalt_machine_config::Config;
use basalt_pki::Role;
use basalt_resource::ResourceKey;
use basalt_resources::config::MachineConfigSpec;
use basalt_resources::runtime::{ServiceSpec, ServiceState};
use common::*;
use machined::parts::ServiceDefinition;
use machined::NodeOptions;

async fn version_answers(machine: &mut MachineServiceClient<tonic::transport::Channel>) {
    machine
        .version(tonic::Request::new(mapi::VersionRequest {}))
        .await
        .expect("the node no longer answers");
}

async fn spec_of(state: &basalt_state::State, id: &str) -> Option<ServiceSpec> {
    let resource = state.get(&ResourceKey::of::<ServiceSpec>(id)).await.ok()?;
    basalt_resource::Resource::<ServiceSpec>::try_from(resource.as_ref())
        .ok()
        .map(|r| r.spec)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_binary_and_a_daemon_that_exits_at_once_are_reported_and_the_node_stays_up() {
    let cluster = Cluster::new();
    let options = NodeOptions {
        services: vec![
            ServiceDefinition::new("ghost", &["/nonexistent/bin/daemon", "--serve"]),
            ServiceDefinition::new("flaky", &["sh", "-c", "echo starting; exit 3"]),
        ],
        ..cluster.configured_options("127.0.0.1")
    };
    let node = machined::Node::start(options).await.unwrap();
    let state = node.state().clone();
    let mut machine =
        MachineServiceClient::new(channel(node.local_addr(), &cluster.tls(&[Role::Admin])).await);

    let deadline = Instant::now() + Duration::from_secs(30);
    let (ghost, flaky) = loop {
        let ghost = spec_of(&state, "ghost").await;
        let flaky = spec_of(&state, "flaky").await;
        if let (Some(g), Some(f)) = (&ghost, &flaky) {
            // Between its runs the flaky one is Failed, with its end in the message.
            if g.state == ServiceState::Failed && f.state == ServiceState::Failed && f.restarts >= 2
            {
                break (g.clone(), f.clone());
            }
        }
        assert!(Instant::now() < deadline, "{ghost:?} {flaky:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        ghost.message.contains("/nonexistent/bin/daemon"),
        "{ghost:?}"
    );
    assert!(flaky.message.contains("exited with code 3"), "{flaky:?}");
    version_answers(&mut machine).await;

    // The API answers the same, and the flaky one's output is in its log.
    let list = machine
        .service_list(tonic::Request::new(mapi::ServiceListRequest {}))
        .await
        .unwrap()
        .into_inner();
    let services = &list.messages[0].services;
    let ghost = services.iter().find(|s| s.id == "ghost").unwrap();
    assert_eq!(ghost.state, "Failed");
    assert!(!ghost.healthy);
    assert!(service_logs(&mut machine, "flaky")
        .await
        .contains("starting"));
    node.shutdown().await.unwrap();
}

/// A small tmpfs, unmounted when the test ends (also when it fails).
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs");
        SmallDisk(dir.to_path_buf())
    }

    /// Writes a file until the disk is full.
    fn fill(&self) -> PathBuf {
        let path = self.0.join("filler");
        let chunk = vec![0u8; 64 * 1024];
        let mut file = std::fs::File::create(&path).unwrap();
        while std::io::Write::write_all(&mut file, &chunk).is_ok() {}
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn with_hostname(yaml: &str, hostname: &str) -> String {
    let mut config = Config::parse(yaml).unwrap();
    config.machine.as_mut().unwrap().hostname = Some(hostname.into());
    config.to_yaml().unwrap()
}

async fn active_hostname(state: &basalt_state::State) -> Option<String> {
    let resource = state
        .get(&ResourceKey::of::<MachineConfigSpec>(
            MachineConfigSpec::ACTIVE,
        ))
        .await
        .ok()?;
    let spec = basalt_resource::Resource::<MachineConfigSpec>::try_from(resource.as_ref())
        .ok()?
        .spec;
    Config::parse(&spec.yaml).ok()?.machine?.hostname
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_state_refuses_an_apply_and_keeps_what_was_acknowledged() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: mounting a small disk needs root");
        return;
    }
    let cluster = Cluster::new();
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(&dir.path().join("state"), "4m");
    let options = || NodeOptions {
        state_dir: Some(disk.0.join("basalt")),
        ..cluster.configured_options("127.0.0.1")
    };
    let node = machined::Node::start(options()).await.unwrap();
    let mut machine =
        MachineServiceClient::new(channel(node.local_addr(), &cluster.tls(&[Role::Admin])).await);
    let yaml = controlplane_yaml(&cluster);
    let apply = |hostname: &str| ApplyConfigurationRequest {
        data: with_hostname(&yaml, hostname).into_bytes(),
        mode: ApplyMode::NoReboot as i32,
        ..Default::default()
    };
    machine
        .apply_configuration(apply("before-full"))
        .await
        .unwrap();

    let filler = disk.fill();
    let refused = machine
        .apply_configuration(apply("while-full"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("space"),
        "the error says why: {refused:?}"
    );
    version_answers(&mut machine).await;
    assert_eq!(
        active_hostname(node.state()).await.as_deref(),
        Some("before-full")
    );

    // Room again: the node takes configs again, without a restart.
    std::fs::remove_file(filler).unwrap();
    machine
        .apply_configuration(apply("after-full"))
        .await
        .unwrap();
    node.shutdown().await.unwrap();

    // What was acknowledged is what a restart finds. (The stopped node's last tasks let
    // go of the state file in the background: a new one in this process may wait.)
    let deadline = Instant::now() + Duration::from_secs(10);
    let node = loop {
        match machined::Node::start(options()).await {
            Ok(node) => break node,
            Err(e) if e.to_string().contains("in use") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the node does not start again: {e}"),
        }
    };
    assert_eq!(
        active_hostname(node.state()).await.as_deref(),
        Some("after-full")
    );
    node.shutdown().await.unwrap();
}
