//! Where a booting node gets its config, and bad input on the way: a `basalt.config=` URL
//! that never answers or serves a gigabyte, a config that does not parse, a damaged
//! state file, a persisted config that no longer reads. The node always comes up with
//! its API reachable (in maintenance mode, or with the config of an earlier source),
//! and says what went wrong in `MachineConfigStatus` and in its log.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use basalt_api::client::ClientTls;
use basalt_api::machine::v1::{self as mapi, machine_service_client::MachineServiceClient};
use basalt_resource::{namespaces, Resource, ResourceKey};
use basalt_resources::config::MachineConfigSpec;
use basalt_resources::runtime::{ConfigSource, MachineConfigStatusSpec};
use basalt_state::State;
use common::{channel, controlplane_yaml, Cluster, Logs};
use machined::acquire::{ConfigSources, FetchLimits};
use machined::{Node, NodeOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const FETCH_TIMEOUT: Duration = Duration::from_secs(2);

fn with_url(cluster: &Cluster, ip: &str, url: String) -> NodeOptions {
    NodeOptions {
        config: ConfigSources {
            url: Some(url),
            fetch: FetchLimits {
                timeout: FETCH_TIMEOUT,
                ..FetchLimits::default()
            },
            ..ConfigSources::default()
        },
        ..cluster.options(ip)
    }
}

async fn config_status(node: &Node) -> MachineConfigStatusSpec {
    node.state()
        .get_as::<MachineConfigStatusSpec>(MachineConfigStatusSpec::ID)
        .await
        .unwrap()
        .spec
}

/// The node answers in maintenance mode, over TLS without a client certificate.
async fn assert_reachable_in_maintenance(node: &Node) {
    assert!(node.in_maintenance());
    let insecure = ClientTls::Insecure { pin: None };
    let mut machine = MachineServiceClient::new(channel(node.local_addr(), &insecure).await);
    let version = machine
        .version(mapi::VersionRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(version.messages[0].maintenance);
}

/// An HTTP server on loopback that answers every request with `answer`.
async fn serve(answer: impl Fn() -> Answer + Send + Sync + 'static) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/config.yaml", listener.local_addr().unwrap());
    let answer = std::sync::Arc::new(answer);
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut request = [0; 4096];
                let _ = stream.read(&mut request).await;
                match answer() {
                    Answer::Nothing => std::future::pending().await,
                    Answer::Body(body) => {
                        let head =
                            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                        let _ = stream.write_all(head.as_bytes()).await;
                        let _ = stream.write_all(body.as_bytes()).await;
                    }
                    Answer::Endless(sent) => {
                        let head = "HTTP/1.1 200 OK\r\ncontent-length: 1073741824\r\n\r\n";
                        let _ = stream.write_all(head.as_bytes()).await;
                        let chunk = vec![b'a'; 64 << 10];
                        while stream.write_all(&chunk).await.is_ok() {
                            sent.fetch_add(chunk.len(), std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    url
}

enum Answer {
    /// Accept, read the request, never answer.
    Nothing,
    Body(String),
    /// A gigabyte, as long as the client reads; counts what it sent.
    Endless(std::sync::Arc<std::sync::atomic::AtomicUsize>),
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_config_urls_leave_the_node_reachable_and_say_why() {
    let logs = Logs::capture();
    let cluster = Cluster::new();

    // Never answers: the boot waits the fetch timeout and no longer.
    let url = serve(|| Answer::Nothing).await;
    let started = Instant::now();
    let node = Node::start(with_url(&cluster, "127.0.0.1", url.clone()))
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(
        took >= FETCH_TIMEOUT && took < FETCH_TIMEOUT * 3,
        "{took:?}"
    );
    assert_reachable_in_maintenance(&node).await;
    let status = config_status(&node).await;
    assert_eq!(status.source, ConfigSource::None);
    assert_eq!(status.url.as_deref(), Some(url.as_str()));
    assert!(
        status.problems[0].contains("no answer within 2s"),
        "{status:?}"
    );
    assert!(
        logs.text().contains("no answer within 2s"),
        "{}",
        logs.text()
    );
    node.shutdown().await.unwrap();

    // A gigabyte: refused after the 4 MiB a config may have, without reading the rest.
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = sent.clone();
    let url = serve(move || Answer::Endless(counter.clone())).await;
    let started = Instant::now();
    let node = Node::start(with_url(&cluster, "127.0.0.1", url))
        .await
        .unwrap();
    assert!(started.elapsed() < FETCH_TIMEOUT, "{:?}", started.elapsed());
    assert_reachable_in_maintenance(&node).await;
    let status = config_status(&node).await;
    assert!(
        status.problems[0].contains("larger than 4194304 bytes"),
        "{status:?}"
    );
    let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(sent < 64 << 20, "the node read {sent} bytes");
    node.shutdown().await.unwrap();

    // Not a config: the parser's error, naming where.
    let url = serve(|| Answer::Body("apiVersion: basalt.dev/v1alpha1\nkind: [".into())).await;
    let node = Node::start(with_url(&cluster, "127.0.0.1", url.clone()))
        .await
        .unwrap();
    assert_reachable_in_maintenance(&node).await;
    let status = config_status(&node).await;
    assert!(
        status.problems[0].starts_with(&format!("the config from {url}: ")),
        "{status:?}"
    );
    assert!(
        status.problems[0].contains("document 1 (line"),
        "{status:?}"
    );
    node.shutdown().await.unwrap();

    // Nobody listens: retried until the deadline, then maintenance.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", closed.local_addr().unwrap());
    drop(closed);
    let node = Node::start(with_url(&cluster, "127.0.0.1", url))
        .await
        .unwrap();
    assert_reachable_in_maintenance(&node).await;
    assert!(config_status(&node).await.problems[0].contains("connecting"));
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_config_url_configures_the_node() {
    let cluster = Cluster::new();
    let yaml = controlplane_yaml(&cluster);
    let url = serve(move || Answer::Body(yaml.clone())).await;
    let node = Node::start(with_url(&cluster, "127.0.0.2", url))
        .await
        .unwrap();
    assert!(!node.in_maintenance());
    let status = config_status(&node).await;
    assert_eq!(status.source, ConfigSource::Url);
    assert!(status.problems.is_empty(), "{status:?}");
    node.shutdown().await.unwrap();
}

fn persistent(dir: &std::path::Path) -> State {
    let registry = std::sync::Arc::new(basalt_resources::meta::builtin_registry().unwrap());
    State::builder()
        .persistent(dir.join("state.redb"), &[namespaces::CONFIG], registry)
        .open()
        .unwrap()
        .0
}

async fn put_config(state: &State, id: &str, yaml: &str) {
    let spec = MachineConfigSpec {
        yaml: yaml.to_string(),
        digest: String::new(),
    };
    state
        .put(Resource::new(id, spec).into_any(), "apid")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_state_file_is_kept_aside_and_the_node_boots_to_maintenance() {
    let cluster = Cluster::new();
    let dir = tempfile::tempdir().unwrap();
    let garbage = vec![0x5a_u8; 128 << 10];
    std::fs::write(dir.path().join("state.redb"), &garbage).unwrap();
    let node = Node::start(NodeOptions {
        state_dir: Some(dir.path().to_path_buf()),
        ..cluster.options("127.0.0.3")
    })
    .await
    .unwrap();
    assert_reachable_in_maintenance(&node).await;
    let status = config_status(&node).await;
    assert!(
        status.problems[0].contains("is damaged or not a state file"),
        "{status:?}"
    );
    // Nothing is lost: the damaged file is where the problem says, byte for byte.
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("state.redb.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert!(status.problems[0].contains(&aside[0].display().to_string()));
    assert_eq!(std::fs::read(&aside[0]).unwrap(), garbage);
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_persisted_config_that_no_longer_reads_is_kept_aside_and_the_next_source_used() {
    let cluster = Cluster::new();
    let broken = "apiVersion: basalt.dev/v1alpha1\nkind: MachineConfig\nhostname: [\n";
    for embedded in [None, Some(controlplane_yaml(&cluster))] {
        let dir = tempfile::tempdir().unwrap();
        put_config(&persistent(dir.path()), MachineConfigSpec::ACTIVE, broken).await;
        let node = Node::start(NodeOptions {
            state_dir: Some(dir.path().to_path_buf()),
            config: ConfigSources {
                embedded: embedded.clone(),
                ..ConfigSources::default()
            },
            ..cluster.options("127.0.0.4")
        })
        .await
        .unwrap();
        let status = config_status(&node).await;
        assert!(
            status.problems[0].starts_with("the config on STATE does not read"),
            "{status:?}"
        );
        let kept = node
            .state()
            .get_as::<MachineConfigSpec>(machined::acquire::CORRUPT_ID)
            .await
            .unwrap();
        assert_eq!(kept.spec.yaml, broken);
        if embedded.is_some() {
            assert_eq!(status.source, ConfigSource::Image);
            assert!(!node.in_maintenance());
        } else {
            assert_eq!(status.source, ConfigSource::None);
            assert_reachable_in_maintenance(&node).await;
        }
        node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_staged_config_takes_effect_at_boot() {
    let cluster = Cluster::new();
    let dir = tempfile::tempdir().unwrap();
    let yaml = controlplane_yaml(&cluster);
    put_config(&persistent(dir.path()), MachineConfigSpec::STAGED, &yaml).await;
    let node = Node::start(NodeOptions {
        state_dir: Some(dir.path().to_path_buf()),
        ..cluster.options("127.0.0.5")
    })
    .await
    .unwrap();
    assert!(!node.in_maintenance());
    assert_eq!(config_status(&node).await.source, ConfigSource::Staged);
    let active = node
        .state()
        .get_as::<MachineConfigSpec>(MachineConfigSpec::ACTIVE)
        .await
        .unwrap();
    assert_eq!(active.spec.yaml, yaml);
    let staged = ResourceKey::of::<MachineConfigSpec>(MachineConfigSpec::STAGED);
    assert!(node.state().get(&staged).await.is_err(), "used once");
    node.shutdown().await.unwrap();
}
