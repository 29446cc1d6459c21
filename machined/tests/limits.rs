#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Bad input and greedy clients: oversized and malformed messages, floods of streams and
//! calls. The server stays up, answers other clients, and logs why it refused.
//! (Logs are the process's: see `common::Logs`.)

mod common;

use std::time::{Duration, Instant};

use basalt_api::machine::v1 as mapi;
use basalt_api::machine::v1::machine_service_client::MachineServiceClient;
use basalt_api::resource::v1 as rapi;
use basalt_api::resource::v1::resource_service_client::ResourceServiceClient;
use basalt_pki::Role;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn start(cluster: &Cluster, limits: apid::Limits) -> machined::Node {
    let mut options = cluster.configured_options("127.0.0.1");
    options.limits = limits;
    machined::Node::start(options).await.unwrap()
}

async fn version_works(apid: &machined::Node, cluster: &Cluster, roles: &[Role]) {
    let channel = channel(apid.local_addr(), &cluster.tls(roles)).await;
    MachineServiceClient::new(channel)
        .version(mapi::VersionRequest {})
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_and_malformed_messages_are_refused_and_logged() {
    let logs = Logs::capture();
    let cluster = Cluster::new();
    let apid = start(
        &cluster,
        apid::Limits {
            max_message_bytes: 64 << 10,
            ..Default::default()
        },
    )
    .await;
    let admin = channel(apid.local_addr(), &cluster.tls(&[Role::Admin])).await;

    let huge = mapi::ApplyConfigurationRequest {
        data: vec![b'#'; 1 << 20],
        ..Default::default()
    };
    let status = MachineServiceClient::new(admin.clone())
        .max_encoding_message_size(4 << 20)
        .apply_configuration(huge)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("too large"), "{status:?}");

    for garbage in [&[0xff, 0xff, 0xff][..], &[0x0a, 0x80], &[0x12, 0x05, b'a']] {
        let status = raw_call(
            &admin,
            "/basalt.resource.v1.ResourceService/Get",
            false,
            bytes::Bytes::from(garbage),
        )
        .await
        .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
        assert!(status.message().contains("decode"), "{status:?}");
    }

    // Not even HTTP/2: the connection is closed, nothing else happens.
    let mut tcp = tokio::net::TcpStream::connect(apid.local_addr())
        .await
        .unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), tcp.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "a non-TLS client was kept open");

    version_works(&apid, &cluster, &[Role::Reader]).await;
    let text = logs.text();
    assert!(
        text.contains("call failed") && text.contains("too large"),
        "{text}"
    );
    assert!(text.contains("failed to decode"), "{text}");
    assert!(text.contains("TLS handshake refused"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_streams_from_one_client_does_not_starve_others() {
    let logs = Logs::capture();
    let cluster = Cluster::new();
    let limit = 8;
    let apid = start(
        &cluster,
        apid::Limits {
            max_calls_per_client: limit,
            ..Default::default()
        },
    )
    .await;
    let greedy = channel(apid.local_addr(), &cluster.tls(&[Role::Admin])).await;
    let mut client = ResourceServiceClient::new(greedy.clone());
    let watch = rapi::WatchRequest {
        r#type: "machinestatuses".into(),
        bootstrap: true,
        ..Default::default()
    };

    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..limit * 4 {
        match client.watch(watch.clone()).await {
            Ok(stream) => held.push(stream.into_inner()),
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                refused += 1;
            }
        }
    }
    assert_eq!(held.len(), limit);
    assert_eq!(refused, limit * 3);
    assert_eq!(apid.open_streams(), limit);
    // Others are served meanwhile, and the greedy client's streams still work.
    version_works(&apid, &cluster, &[Role::Reader]).await;
    let first = held[0].message().await.unwrap().unwrap();
    assert_eq!(first.resource.unwrap().metadata.unwrap().id, "machine");

    // Streams end when the client goes away.
    drop(held);
    drop(client);
    drop(greedy);
    let deadline = Instant::now() + Duration::from_secs(10);
    while apid.open_streams() > 0 {
        assert!(
            Instant::now() < deadline,
            "{} streams still open",
            apid.open_streams()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    version_works(&apid, &cluster, &[Role::Admin]).await;
    let text = logs.text();
    assert!(
        text.contains("call refused") && text.contains("too many calls in flight"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_over_its_rate_is_refused_until_it_slows_down() {
    let logs = Logs::capture();
    let cluster = Cluster::new();
    let apid = start(
        &cluster,
        apid::Limits {
            calls_per_second: 5.0,
            burst: 5.0,
            ..Default::default()
        },
    )
    .await;
    let mut machine =
        MachineServiceClient::new(channel(apid.local_addr(), &cluster.tls(&[Role::Admin])).await);
    let mut refused = 0;
    for _ in 0..20 {
        if let Err(status) = machine.version(mapi::VersionRequest {}).await {
            assert_eq!(status.code(), tonic::Code::ResourceExhausted);
            refused += 1;
        }
    }
    assert!(refused >= 10, "only {refused} of 20 calls refused");
    version_works(&apid, &cluster, &[Role::Reader]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    machine.version(mapi::VersionRequest {}).await.unwrap();
    assert!(logs.text().contains("rate limit"));
}

/// A gRPC channel to `server` whose connections come from `source` (a second loopback
/// address stands for a second host).
async fn channel_from(
    source: std::net::IpAddr,
    server: std::net::SocketAddr,
    tls: &basalt_api::client::ClientTls,
) -> tonic::transport::Channel {
    let config = basalt_api::client::client_config(tls).unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let connect = move |_: tonic::transport::Uri| {
        let connector = connector.clone();
        async move {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind((source, 0).into())?;
            let tcp = socket.connect(server).await?;
            let name = rustls::pki_types::ServerName::IpAddress(server.ip().into());
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    };
    // HTTP/2's smallest windows: the client buffers little of what it does not read.
    tonic::transport::Endpoint::from_shared(format!("http://{server}"))
        .unwrap()
        .initial_connection_window_size(65_535)
        .initial_stream_window_size(65_535)
        .connect_with_connector(tower::service_fn(connect))
        .await
        .unwrap()
}

/// 2,000 connections from one host that never start their handshakes take nothing from
/// another host: a client on 127.0.0.2 is served within 1 s on every call while they
/// hang (connections over the first host's quota are closed at once).
#[tokio::test(flavor = "multi_thread")]
async fn stalled_connections_from_one_host_do_not_starve_another() {
    let cluster = Cluster::new();
    let apid = cluster.start("127.0.0.1").await;
    let server = apid.local_addr();
    let mut stalled = Vec::new();
    for _ in 0..2000 {
        stalled.push(tokio::net::TcpStream::connect(server).await.unwrap());
    }
    let other = "127.0.0.2".parse().unwrap();
    let tls = cluster.tls(&[Role::Reader]);
    let mut slowest = Duration::ZERO;
    for call in 0..10 {
        let started = Instant::now();
        let channel = channel_from(other, server, &tls).await;
        MachineServiceClient::new(channel)
            .version(mapi::VersionRequest {})
            .await
            .unwrap_or_else(|e| panic!("call {call}: {e:?}"));
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "call {call} took {took:?}");
        slowest = slowest.max(took);
    }
    // Most of the flood was closed at once, not left waiting.
    let mut closed = 0;
    for tcp in &mut stalled {
        let mut byte = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(1), tcp.read(&mut byte)).await
        {
            closed += 1;
        }
    }
    println!("slowest of 10 calls from another host: {slowest:?}; {closed} of 2000 closed");
    assert!(
        closed >= 1900,
        "only {closed} of 2000 stalled connections were closed"
    );
    drop(stalled);
    apid.shutdown().await.unwrap();
}

/// Whether this process runs `test` alone, so that its RSS is that test's: under nextest
/// (a process per test), or in the child this starts otherwise (`cargo test` runs a
/// binary's tests as threads of one process), whose result it asserts.
fn alone(test: &str) -> bool {
    const CHILD: &str = "BASALT_TEST_ALONE";
    if std::env::var_os("NEXTEST").is_some() || std::env::var_os(CHILD).is_some() {
        return true;
    }
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .status()
        .unwrap();
    assert!(
        status.success(),
        "{test}, alone in a process of its own, failed"
    );
    false
}

/// The process's resident memory, bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// Watches whose client never reads, while the node changes thousands of times, cost a
/// bounded amount (an API watch holds at most 1,024 events besides what HTTP/2 lets
/// through): the client reading at last gets what was buffered, then ABORTED ("fell too
/// far behind"), and can watch again from a fresh snapshot. (RSS is this process's:
/// clients and node both.)
#[tokio::test(flavor = "multi_thread")]
async fn a_watch_that_never_reads_is_overrun_and_memory_stays_bounded() {
    if !alone("a_watch_that_never_reads_is_overrun_and_memory_stays_bounded") {
        return;
    }
    use basalt_resource::Resource;
    use basalt_resources::config::HostnameConfigSpec;
    let cluster = Cluster::new();
    let apid = cluster.start("127.0.0.1").await;
    let local = "127.0.0.1".parse().unwrap();
    let tls = cluster.tls(&[Role::Admin]);
    // A connection per watch: streams that share one share its flow-control window too,
    // and the unread ones would hold it all.
    let channel = || channel_from(local, apid.local_addr(), &tls);
    let watch = rapi::WatchRequest {
        r#type: "hostnameconfigs".into(),
        bootstrap: true,
        ..Default::default()
    };
    let mut idle = Vec::new();
    for _ in 0..20 {
        let mut client = ResourceServiceClient::new(channel().await);
        idle.push(client.watch(watch.clone()).await.unwrap().into_inner());
    }
    let flood = |from: usize, to: usize| {
        let state = apid.state().clone();
        async move {
            for i in from..to {
                let spec = HostnameConfigSpec {
                    hostname: format!("flood-{i}-{}", "x".repeat(200)),
                };
                state
                    .put(Resource::new("flood", spec).into_any(), "test")
                    .await
                    .unwrap();
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    // Enough changes to fill every watch's queue; then four times as many, which must
    // cost nothing more.
    let (filled, changes) = (3_000, 15_000);
    let before = rss();
    flood(0, filled).await;
    let after_filled = rss();
    flood(filled, changes).await;
    let after_all = rss();
    let (filling, more) = (
        after_filled.saturating_sub(before),
        after_all.saturating_sub(after_filled),
    );
    println!(
        "20 unread watches: RSS +{} KiB for the first {filled} changes, +{} KiB for {} more",
        filling / 1024,
        more / 1024,
        changes - filled
    );
    assert!(filling < 10 << 20, "RSS grew {} MiB", filling >> 20);
    assert!(more < 2 << 20, "RSS went on growing: {} KiB", more >> 10);

    let mut first = idle.swap_remove(0);
    let (received, status) = read_until_error(&mut first).await;
    println!("{received} events, then {status:?}");
    assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");
    assert!(
        status.message().contains("fell too far behind"),
        "{status:?}"
    );
    assert!(received < changes, "{received} events: nothing was dropped");
    // Watching again starts from a fresh snapshot.
    let mut again = ResourceServiceClient::new(channel().await)
        .watch(watch.clone())
        .await
        .unwrap()
        .into_inner();
    let snapshot = again.message().await.unwrap().unwrap();
    let spec = snapshot.resource.unwrap().spec;
    assert!(spec.contains(&format!("flood-{}-", changes - 1)), "{spec}");
    // Streams still open would hold the graceful shutdown.
    drop((again, first, idle));
    apid.shutdown().await.unwrap();
}

/// Reads a watch until it ends with an error; returns the events before it and the
/// error. Fails if the watch ends cleanly, or stalls for 10 s.
async fn read_until_error(
    watch: &mut tonic::Streaming<rapi::WatchResponse>,
) -> (usize, tonic::Status) {
    let mut received = 0;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), watch.message())
            .await
            .unwrap_or_else(|_| panic!("no event nor error in 10 s after {received} events"));
        match next {
            Ok(Some(_)) => received += 1,
            Ok(None) => panic!("the watch ended without an error after {received} events"),
            Err(status) => return (received, status),
        }
    }
}

/// Large resources overrun an unread API watch by the bytes its events hold (4 MiB),
/// long before its 1,024 events.
#[tokio::test(flavor = "multi_thread")]
async fn an_unread_watch_of_large_resources_is_overrun_by_their_bytes() {
    use basalt_resource::Resource;
    use basalt_resources::config::HostnameConfigSpec;
    let cluster = Cluster::new();
    let apid = cluster.start("127.0.0.1").await;
    let tls = cluster.tls(&[Role::Admin]);
    let mut watch = ResourceServiceClient::new(channel(apid.local_addr(), &tls).await)
        .watch(rapi::WatchRequest {
            r#type: "hostnameconfigs".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // 200 versions of 64 KiB: each update holds the old one and the new one.
    for i in 0..200 {
        let spec = HostnameConfigSpec {
            hostname: format!("large-{i}-{}", "x".repeat(64 << 10)),
        };
        apid.state()
            .put(Resource::new("large", spec).into_any(), "test")
            .await
            .unwrap();
    }
    let (received, status) = read_until_error(&mut watch).await;
    println!("{received} events of ~128 KiB, then {status:?}");
    assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");
    // 4 MiB hold ~32 such events, and HTTP/2 takes a few more.
    assert!(received < 64, "{received} events before the overrun");
    drop(watch);
    apid.shutdown().await.unwrap();
}

/// A call naming N nodes takes N of its client's places in flight on the node that fans
/// it out: over the limit, it is refused before any node is reached.
#[tokio::test(flavor = "multi_thread")]
async fn a_call_to_n_nodes_counts_n_calls_in_flight() {
    let cluster = Cluster::new();
    let apid = start(
        &cluster,
        apid::Limits {
            max_calls_per_client: 4,
            ..Default::default()
        },
    )
    .await;
    let nodes: Vec<String> = (201..=205).map(|i| format!("127.0.0.{i}:9")).collect();
    cluster.forward_from(&apid, &nodes[..4]).await;
    let mut machine =
        MachineServiceClient::new(channel(apid.local_addr(), &cluster.tls(&[Role::Admin])).await);
    let status = machine
        .version(to_nodes(mapi::VersionRequest {}, &nodes))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("N nodes counts N"), "{status:?}");
    // Within the limit, the call goes out (and reports the nodes that do not answer).
    let answer = machine
        .version(to_nodes(mapi::VersionRequest {}, &nodes[..4]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.messages.len(), 4);
    apid.shutdown().await.unwrap();
}

/// Hostile YAML of 1 MiB, which anyone may send to a node in maintenance mode, costs no
/// more than a flat config of that size: each shape is refused (naming why) or parsed
/// within 5× the time of a flat 1 MiB config, and another client is served meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_yaml_shapes_cost_no_more_than_a_flat_config() {
    const MIB: usize = 1 << 20;
    let cluster = Cluster::new();
    let node = cluster.start_unconfigured("127.0.0.1").await;
    let insecure = basalt_api::client::ClientTls::Insecure { pin: None };
    let channel = channel(node.local_addr(), &insecure).await;
    let dry_run = |yaml: String| mapi::ApplyConfigurationRequest {
        data: yaml.into_bytes(),
        dry_run: true,
        ..Default::default()
    };
    let timed = |yaml: String| {
        let mut machine = MachineServiceClient::new(channel.clone());
        async move {
            let started = Instant::now();
            let result = machine.apply_configuration(dry_run(yaml)).await;
            (started.elapsed(), result.err())
        }
    };

    // A flat config of 1 MiB: its bytes in many small entries (an environment of ~60,000
    // variables), as many nodes for the parser as a long list; not one long scalar,
    // which costs it next to nothing.
    let mut flat = format!(
        "{}---\napiVersion: basalt.dev/v1alpha1\nkind: ExtensionServiceConfig\nname: big\n\
         environment:\n",
        controlplane_yaml(&cluster)
    );
    for i in 0.. {
        if flat.len() > MIB {
            break;
        }
        flat.push_str(&format!("  VARIABLE_{i}: v{i}\n"));
    }
    // The flat config's time, the slower of two runs (the machine is shared).
    let mut baseline = Duration::ZERO;
    for _ in 0..2 {
        let (took, error) = timed(flat.clone()).await;
        assert!(error.is_none(), "the flat config: {error:?}");
        baseline = baseline.max(took);
    }

    let mut block = String::new();
    for depth in 0.. {
        if block.len() > MIB {
            break;
        }
        block.push_str(&format!("{}k{depth}:\n", " ".repeat(depth)));
    }
    let mut fan = format!("a: &a {}\nb: [", "v".repeat(1024));
    while fan.len() < MIB {
        fan.push_str("*a, ");
    }
    fan.push_str("*a]\n");
    let shapes = [
        (
            "flow nesting",
            format!("x: {}", "[".repeat(MIB)),
            "nested more than",
        ),
        ("block nesting", block, "kind"),
        (
            "a 1 MiB scalar",
            format!("kind: {}\n", "k".repeat(MIB)),
            "bytes more",
        ),
        (
            "a 1 MiB list",
            format!(
                "apiVersion: basalt.dev/v1alpha1\nkind: MachineConfig\nlist: [{}]\n",
                "1, ".repeat(MIB / 3)
            ),
            "list",
        ),
        ("an alias fan", fan, "expands to more than"),
    ];

    // Another client, calling all along.
    let served = {
        let mut machine = MachineServiceClient::new(channel.clone());
        tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            for _ in 0..50 {
                let started = Instant::now();
                machine.version(mapi::VersionRequest {}).await.unwrap();
                slowest = slowest.max(started.elapsed());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            slowest
        })
    };
    for (name, yaml, expected) in shapes {
        let (took, error) = timed(yaml).await;
        let error = error.unwrap_or_else(|| panic!("{name} was accepted"));
        println!("{name}: {took:?} (flat: {baseline:?}): {}", error.message());
        assert!(
            took <= baseline * 5,
            "{name} took {took:?}, more than 5× the flat config's {baseline:?}"
        );
        assert!(error.message().contains(expected), "{name}: {error:?}");
    }
    let slowest = served.await.unwrap();
    println!("slowest Version call meanwhile: {slowest:?}");
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
    node.shutdown().await.unwrap();
}
