//! Running out of file descriptors is this node's problem, not the upstreams': a client
//! flood that exhausts them is reported as such, no upstream is marked down for it, and
//! clients are served again once the flood is gone. Health checks that cannot open a
//! socket are reported the same way. The connection limit follows the descriptor limit.
//!
//! Alone in its file: it lowers the limit of the whole test process for good.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use basalt_kubeprism::testing::{get, TestCa};
use basalt_kubeprism::{BalancerConfig, Problem, UpstreamState};
use common::*;
use rustix::process::{setrlimit, Resource, Rlimit};
use tokio::net::TcpStream;

const NOFILE: u64 = 256;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_that_exhausts_descriptors_is_reported_and_blames_no_upstream() {
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(NOFILE),
            maximum: Some(NOFILE),
        },
    )
    .unwrap();
    let ca = TestCa::new().unwrap();
    let b = backends(2, &ca).await;
    let lb = balancer(BalancerConfig::default(), &names(&[&b[0], &b[1]])).await;
    // Two descriptors a connection, some kept back: well under 20,000.
    let max = lb.status().max_connections;
    assert!(
        max > 0 && (max as u64) < NOFILE / 2,
        "max_connections {max}"
    );

    // Every client holds four descriptors of this process (its own, the balancer's two,
    // the backend's): the process runs out long before the connection limit.
    let mut flood = Vec::new();
    while flood.len() < 1000 {
        match TcpStream::connect(lb.local_addr()).await {
            Ok(c) => flood.push(c),
            Err(_) => break,
        }
    }
    println!("{} clients connected before running out", flood.len());
    wait_for(
        &lb,
        Duration::from_secs(5),
        "out of resources reported",
        |s| {
            s.problems
                .iter()
                .any(|p| matches!(p, Problem::OutOfResources { .. }))
        },
    )
    .await;
    let status = lb.status();
    for u in &status.upstreams {
        assert_eq!(u.state, UpstreamState::Healthy, "{u:#?}");
        assert_eq!(u.dial_failures, 0, "{u:#?}");
    }

    drop(flood);
    wait_for(&lb, Duration::from_secs(5), "connections closed", |s| {
        s.active_connections == 0
    })
    .await;
    let (code, _) = get(lb.local_addr(), "/name").await.unwrap();
    assert_eq!(code, 200);
    assert!(lb
        .status()
        .upstreams
        .iter()
        .all(|u| u.state == UpstreamState::Healthy));

    // Descriptors taken by something else on the node, with no client at all: the health
    // checks cannot open a socket. That is reported too, and blames no upstream.
    let checks_before: Vec<u64> = lb
        .status()
        .upstreams
        .iter()
        .map(|u| u.check_failures)
        .collect();
    // Taken again and again: the backends close the flood's last connections meanwhile.
    let mut hog = Vec::new();
    let started = std::time::Instant::now();
    loop {
        while let Ok(f) = std::fs::File::open("/dev/null") {
            hog.push(f);
        }
        let reported = lb.status().problems.iter().any(
            |p| matches!(p, Problem::OutOfResources { error, .. } if error.starts_with("check of")),
        );
        if reported {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no check short of descriptors reported: {:#?}",
            lb.status()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = lb.status();
    for (u, before) in status.upstreams.iter().zip(checks_before) {
        assert_eq!(u.state, UpstreamState::Healthy, "{u:#?}");
        assert_eq!(u.check_failures, before, "{u:#?}");
    }
    drop(hog);
}
