#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Forwarding: three apids on three loopback addresses; one endpoint reaches them all,
//! and a dead node is one error among the answers, within the deadline.

mod common;

use std::time::{Duration, Instant};

use basalt_api::machine::v1 as mapi;
use basalt_api::machine::v1::machine_service_client::MachineServiceClient;
use basalt_api::resource::v1 as rapi;
use basalt_api::resource::v1::resource_service_client::ResourceServiceClient;
use basalt_pki::Role;
use common::*;

fn node_of(metadata: &Option<basalt_api::common::v1::Metadata>) -> (String, String) {
    let m = metadata.clone().unwrap();
    (m.node, m.error)
}

#[tokio::test]
async fn one_endpoint_reaches_three_nodes_and_reports_a_dead_one() {
    let cluster = Cluster::new();
    let a = cluster.start("127.0.0.11").await;
    let b = cluster.start("127.0.0.12").await;
    let c = cluster.start("127.0.0.13").await;
    let nodes: Vec<String> = [&a, &b, &c]
        .iter()
        .map(|n| n.local_addr().to_string())
        .collect();
    cluster.forward_from(&a, &nodes).await;
    let admin = channel(a.local_addr(), &cluster.tls(&[Role::Admin])).await;
    let mut machine = MachineServiceClient::new(admin.clone());
    let mut resources = ResourceServiceClient::new(admin.clone());

    // Unary: one merged answer, one result per node, in the order asked.
    let version = machine
        .version(to_nodes(mapi::VersionRequest {}, &nodes))
        .await
        .unwrap()
        .into_inner();
    let got: Vec<_> = version
        .messages
        .iter()
        .map(|m| node_of(&m.metadata))
        .collect();
    let want: Vec<_> = nodes.iter().map(|n| (n.clone(), String::new())).collect();
    assert_eq!(got, want);
    assert!(version
        .messages
        .iter()
        .all(|m| m.tag == env!("CARGO_PKG_VERSION")));

    // Streaming: every node's resources, each labelled.
    let list = rapi::ListRequest {
        r#type: "machinestatuses".into(),
        ..Default::default()
    };
    let mut stream = resources
        .list(to_nodes(list.clone(), &nodes))
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while let Some(message) = stream.message().await.unwrap() {
        let (node, error) = node_of(&message.metadata);
        assert_eq!(error, "");
        assert_eq!(message.resource.unwrap().metadata.unwrap().id, "machine");
        seen.push(node);
    }
    seen.sort();
    assert_eq!(seen, nodes);

    // A dead node: its error, within the forward timeout; the others answer.
    c.shutdown().await.unwrap();
    let start = Instant::now();
    let version = machine
        .version(to_nodes(mapi::VersionRequest {}, &nodes))
        .await
        .unwrap()
        .into_inner();
    let took = start.elapsed();
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let results: Vec<_> = version
        .messages
        .iter()
        .map(|m| node_of(&m.metadata))
        .collect();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0], (nodes[0].clone(), String::new()));
    assert_eq!(results[1], (nodes[1].clone(), String::new()));
    assert_eq!(results[2].0, nodes[2]);
    assert!(!results[2].1.is_empty(), "no error for the dead node");
    let code = version.messages[2].metadata.as_ref().unwrap().code;
    assert!(
        [
            tonic::Code::Unavailable as i32,
            tonic::Code::DeadlineExceeded as i32
        ]
        .contains(&code),
        "{results:?} code {code}"
    );
    println!("dead node reported in {took:?}: {}", results[2].1);

    let start = Instant::now();
    let mut stream = resources
        .list(to_nodes(list, &nodes))
        .await
        .unwrap()
        .into_inner();
    let mut answers = Vec::new();
    while let Some(message) = stream.message().await.unwrap() {
        answers.push(node_of(&message.metadata));
    }
    assert!(start.elapsed() < Duration::from_secs(3));
    answers.sort();
    assert_eq!(answers.len(), 3, "{answers:?}");
    assert!(
        answers.iter().any(|(n, e)| n == &nodes[2] && !e.is_empty()),
        "{answers:?}"
    );
    assert_eq!(answers.iter().filter(|(_, e)| e.is_empty()).count(), 2);

    // A node that accepts connections and never answers: its error comes at the
    // deadline (2 s in these tests), the others' answers with it.
    let silent = tokio::net::TcpListener::bind("127.0.0.14:0").await.unwrap();
    let silent_node = silent.local_addr().unwrap().to_string();
    let _keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    cluster
        .forward_from(&a, &[nodes[0].clone(), silent_node.clone()])
        .await;
    let start = Instant::now();
    let version = machine
        .version(to_nodes(
            mapi::VersionRequest {},
            &[nodes[0].clone(), silent_node.clone()],
        ))
        .await
        .unwrap()
        .into_inner();
    let took = start.elapsed();
    let results: Vec<_> = version
        .messages
        .iter()
        .map(|m| node_of(&m.metadata))
        .collect();
    assert_eq!(results[0], (nodes[0].clone(), String::new()));
    assert_eq!(results[1].0, silent_node);
    assert!(!results[1].1.is_empty());
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(4),
        "took {took:?}"
    );
    println!("silent node reported in {took:?}: {}", results[1].1);
}

#[tokio::test]
async fn forwarded_calls_keep_the_callers_roles() {
    let cluster = Cluster::new();
    let a = cluster.start("127.0.0.21").await;
    let b = cluster.start("127.0.0.22").await;
    let target = vec![b.local_addr().to_string()];
    cluster.forward_from(&a, &target).await;
    let reader = channel(a.local_addr(), &cluster.tls(&[Role::Reader])).await;

    // Denied where the call enters...
    let status = MachineServiceClient::new(reader.clone())
        .reboot(to_nodes(mapi::RebootRequest::default(), &target))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);

    // ...and where it lands: b sees a reader, not the forwarding node.
    let get = rapi::GetRequest {
        r#type: "mc".into(),
        id: "active".into(),
        ..Default::default()
    };
    let answer = ResourceServiceClient::new(reader)
        .get(to_nodes(get, &target))
        .await
        .unwrap()
        .into_inner();
    let metadata = answer.messages[0].metadata.clone().unwrap();
    assert_eq!(
        metadata.code,
        tonic::Code::PermissionDenied as i32,
        "{metadata:?}"
    );
    assert!(metadata.error.contains("sensitive"), "{metadata:?}");

    // A node certificate cannot call anything by itself.
    let node_tls = cluster.peer_tls("127.0.0.21");
    let status = MachineServiceClient::new(channel(b.local_addr(), &node_tls).await)
        .version(mapi::VersionRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
}

/// An admin's Watch of machine statuses through `entry`, for `nodes`.
async fn watch_through(
    entry: &machined::Node,
    cluster: &Cluster,
    nodes: &[String],
) -> tonic::Streaming<rapi::WatchResponse> {
    let admin = channel(entry.local_addr(), &cluster.tls(&[Role::Admin])).await;
    let request = rapi::WatchRequest {
        r#type: "machinestatuses".into(),
        bootstrap: true,
        ..Default::default()
    };
    ResourceServiceClient::new(admin)
        .watch(to_nodes(request, nodes))
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn a_forwarded_stream_ends_on_the_target_when_the_client_leaves() {
    let cluster = Cluster::new();
    let a = cluster.start("127.0.0.31").await;
    let b = cluster.start("127.0.0.32").await;
    let target = vec![b.local_addr().to_string()];
    cluster.forward_from(&a, &target).await;
    let mut watch = watch_through(&a, &cluster, &target).await;
    let first = watch.message().await.unwrap().expect("the bootstrap event");
    assert_eq!(node_of(&first.metadata).0, target[0]);
    assert_eq!(b.open_streams(), 1);

    drop(watch);
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.open_streams() > 0 || a.open_streams() > 0 {
        assert!(
            Instant::now() < deadline,
            "streams still open: entry {}, target {}",
            a.open_streams(),
            b.open_streams()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A Watch naming one node in 64 spellings opens one stream on it, not 64.
#[tokio::test]
async fn spellings_of_one_node_open_one_stream() {
    let cluster = Cluster::new();
    let a = cluster.start("127.0.0.33").await;
    let b = cluster.start("127.0.0.34").await;
    let address = b.local_addr().to_string();
    cluster
        .forward_from(&a, std::slice::from_ref(&address))
        .await;
    let spellings: Vec<String> = (0..64)
        .map(|i| match i % 4 {
            0 => format!("{address}{}", "/".repeat(i / 4)),
            1 => format!("https://{address}{}", "/".repeat(i / 4)),
            2 => format!(" {address}{} ", "/".repeat(i / 4 + 1)),
            _ => format!("tcp://{address}{}", "/".repeat(i / 4)),
        })
        .collect();
    let mut watch = watch_through(&a, &cluster, &spellings).await;
    let first = watch.message().await.unwrap().expect("the bootstrap event");
    assert_eq!(node_of(&first.metadata).0, spellings[0]);
    assert_eq!(b.open_streams(), 1);
    drop(watch);
}

/// A node outside the forward targets is refused before any connection is made; one
/// inside that cannot be reached gets the same error however it fails (refused, silent,
/// another protocol): the API tells nothing of an address's state.
#[tokio::test]
async fn only_forward_targets_are_reached_and_unreachable_ones_look_alike() {
    let cluster = Cluster::new();
    let a = cluster.start("127.0.0.41").await;
    let admin = channel(a.local_addr(), &cluster.tls(&[Role::Admin])).await;
    let mut machine = MachineServiceClient::new(admin);

    // Listeners that count their connections: silent, and speaking another protocol.
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut addresses = Vec::new();
    for (ip, answer) in [
        ("127.0.0.42", None),
        ("127.0.0.43", Some(&b"SSH-2.0-x\r\n"[..])),
    ] {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        addresses.push(listener.local_addr().unwrap().to_string());
        let accepted = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut socket, _)) = listener.accept().await {
                accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if let Some(answer) = answer {
                    use tokio::io::AsyncWriteExt;
                    let _ = socket.write_all(answer).await;
                }
                held.push(socket);
            }
        });
    }
    // Nothing listens on this one: refused.
    let refused = "127.0.0.44:9".to_string();

    // Not targets yet: refused by the node, nothing reached.
    for node in addresses.iter().chain([&refused]) {
        let status = machine
            .version(to_nodes(
                mapi::VersionRequest {},
                std::slice::from_ref(node),
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        assert!(status.message().contains("forwardtargets"), "{status:?}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0);

    // Targets now: each fails alike.
    let nodes = [addresses[0].clone(), addresses[1].clone(), refused];
    cluster.forward_from(&a, &nodes).await;
    let answer = machine
        .version(to_nodes(mapi::VersionRequest {}, &nodes))
        .await
        .unwrap()
        .into_inner();
    let errors: Vec<_> = answer
        .messages
        .iter()
        .map(|m| {
            let m = m.metadata.clone().unwrap();
            (m.code, m.error.replace(&m.node, "NODE"))
        })
        .collect();
    assert_eq!(errors.len(), 3);
    assert!(
        errors.iter().all(|e| *e
            == (
                tonic::Code::Unavailable as i32,
                "node NODE is unreachable, or the connection to it was lost".to_string()
            )),
        "{errors:?}"
    );
    // Streams alike.
    let admin = channel(a.local_addr(), &cluster.tls(&[Role::Admin])).await;
    let list = rapi::ListRequest {
        r#type: "machinestatuses".into(),
        ..Default::default()
    };
    let mut stream = ResourceServiceClient::new(admin)
        .list(to_nodes(list, &nodes))
        .await
        .unwrap()
        .into_inner();
    let mut stream_errors = Vec::new();
    while let Some(message) = stream.message().await.unwrap() {
        let m = message.metadata.unwrap();
        stream_errors.push((m.code, m.error.replace(&m.node, "NODE")));
    }
    assert_eq!(stream_errors.len(), 3);
    assert!(
        stream_errors.iter().all(|e| *e == errors[0]),
        "{stream_errors:?}"
    );
    assert!(accepted.load(std::sync::atomic::Ordering::SeqCst) >= 2);
}
