//! Bad input does not take the balancer down: it reports it in its status.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use basalt_kubeprism::testing::{get, TestCa, TestDns};
use basalt_kubeprism::{Balancer, BalancerConfig, Problem, UpstreamState};
use common::*;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_list_keeps_listening_and_closes_clients_promptly() {
    let lb = Balancer::bind(loopback(), BalancerConfig::default())
        .await
        .unwrap();
    assert_eq!(lb.status().problems, [Problem::NoUpstreams]);
    assert_eq!(lb.set_upstreams(&[]).await, [Problem::NoUpstreams]);
    let started = Instant::now();
    // Closed with a reset, not left hanging: the reset may even beat the connect.
    if let Ok(mut client) = TcpStream::connect(lb.local_addr()).await {
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(2), client.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(1));
    wait_for(&lb, Duration::from_secs(5), "client closed", |s| {
        s.failed == 1
    })
    .await;

    // Upstreams arrive later: the same listener serves.
    let ca = TestCa::new().unwrap();
    let b = backends(1, &ca).await;
    assert!(lb.set_upstreams(&names(&[&b[0]])).await.is_empty());
    assert_eq!(
        get(lb.local_addr(), "/name").await.unwrap(),
        (200, "b0".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_invalid_and_unresolvable_names_are_reported_and_skipped() {
    let ca = TestCa::new().unwrap();
    let b = backends(1, &ca).await;
    let port = b[0].addr().port();
    let dns = TestDns::default();
    dns.set(&format!("localhost:{port}"), Some(b[0].addr()));
    let config = BalancerConfig {
        resolver: dns.resolver(),
        ..BalancerConfig::default()
    };
    let lb = Balancer::bind(loopback(), config).await.unwrap();
    let list: Vec<String> = [
        format!("127.0.0.1:{port}"),
        format!("127.0.0.1:{port}"),
        // Same address under a name.
        format!("localhost:{port}"),
        "no-port".to_string(),
        "does-not-exist.invalid:6443".to_string(),
    ]
    .into();
    let problems = lb.set_upstreams(&list).await;
    assert_eq!(problems.len(), 4, "{problems:?}");
    assert!(problems
        .iter()
        .any(|p| matches!(p, Problem::Duplicate { name, .. } if name.starts_with("localhost"))));
    assert!(problems
        .iter()
        .any(|p| matches!(p, Problem::Unresolvable { name, .. } if name.contains("invalid"))));
    assert!(problems
        .iter()
        .any(|p| matches!(p, Problem::Invalid { .. })));
    let status = lb.status();
    assert_eq!(status.upstreams.len(), 1);
    assert_eq!(status.problems, problems);
    assert_eq!(
        get(lb.local_addr(), "/name").await.unwrap(),
        (200, "b0".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_is_refused_beyond_the_limit_and_reported() {
    let ca = TestCa::new().unwrap();
    let b = backends(1, &ca).await;
    let config = BalancerConfig {
        max_connections: 32,
        ..BalancerConfig::default()
    };
    let lb = balancer(config, &names(&[&b[0]])).await;
    let mut flood = Vec::new();
    for _ in 0..100 {
        // Refused ones are reset, sometimes before the connect completes.
        if let Ok(s) = TcpStream::connect(lb.local_addr()).await {
            flood.push(s);
        }
    }
    wait_for(
        &lb,
        Duration::from_secs(5),
        "flood refused and reported",
        |s| {
            s.active_connections == 32
                && s.refused == 68
                && s.problems
                    .iter()
                    .any(|p| matches!(p, Problem::ConnectionLimit { max: 32, .. }))
        },
    )
    .await;
    drop(flood);
    wait_for(&lb, Duration::from_secs(5), "flood gone", |s| {
        s.active_connections == 0
    })
    .await;
    assert_eq!(
        get(lb.local_addr(), "/name").await.unwrap(),
        (200, "b0".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_never_answers_the_handshake_is_skipped_and_reported() {
    let ca = TestCa::new().unwrap();
    let b = backends(1, &ca).await;
    // A listener that never accepts, with its queue (backlog 0: one connection) full:
    // the kernel drops further SYNs, so dials to it hang like to a black-holed host.
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(loopback()).unwrap();
    let hole = socket.listen(0).unwrap();
    let hole_addr = hole.local_addr().unwrap();
    let _filler = TcpStream::connect(hole_addr).await.unwrap();
    let hung = tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(hole_addr));
    assert!(hung.await.is_err(), "the black hole answered");

    let config = BalancerConfig {
        dial_timeout: Duration::from_millis(300),
        ..BalancerConfig::default()
    };
    let lb = balancer(config, &[hole_addr.to_string(), b[0].upstream()]).await;
    // Every client is served, by the other upstream, after at most one timed-out dial.
    for _ in 0..10 {
        let started = Instant::now();
        assert_eq!(
            get(lb.local_addr(), "/name").await.unwrap(),
            (200, "b0".into())
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    let name = hole_addr.to_string();
    wait_for(&lb, Duration::from_secs(5), "black hole down", |s| {
        let u = s.upstream(&name).unwrap();
        u.state == UpstreamState::Down
            && u.last_error
                .as_deref()
                .is_some_and(|e| e.contains("timed out"))
    })
    .await;
    assert_eq!(lb.status().failed, 0, "a client was closed");
}
