#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use basalt_kubeprism::testing::{TestBackend, TestCa};
use basalt_kubeprism::{Balancer, BalancerConfig, BalancerStatus};

pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

pub async fn backends(n: usize, ca: &TestCa) -> Vec<TestBackend> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(TestBackend::start(&format!("b{i}"), ca).await.unwrap());
    }
    out
}

pub fn names(backends: &[&TestBackend]) -> Vec<String> {
    backends.iter().map(|b| b.upstream()).collect()
}

pub async fn balancer(config: BalancerConfig, upstreams: &[String]) -> Balancer {
    let lb = Balancer::bind(loopback(), config).await.unwrap();
    let problems = lb.set_upstreams(upstreams).await;
    if !upstreams.is_empty() {
        assert!(problems.is_empty(), "{problems:?}");
    }
    lb
}

/// Polls the status until `check` holds; returns how long that took. Panics with the
/// last status after `timeout`.
pub async fn wait_for(
    lb: &Balancer,
    timeout: Duration,
    what: &str,
    check: impl Fn(&BalancerStatus) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let status = lb.status();
        if check(&status) {
            return started.elapsed();
        }
        if started.elapsed() > timeout {
            panic!("{what}: not within {timeout:?}; status: {status:#?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
