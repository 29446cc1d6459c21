//! One of three HTTPS upstreams hung, killed or unready under a steady stream of new TLS
//! clients (about 100 a second), with the checks the node ships: how many clients fail,
//! and how soon the upstream leaves rotation and comes back.
//!
//! These tests run one at a time (their own nextest group): each keeps two cores busy
//! enough that two at once would measure each other.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use basalt_kubeprism::testing::{echo_stream, Mode, Outcome, TestBackend, TestCa, TlsLoad};
use basalt_kubeprism::{Balancer, BalancerConfig, Check, HealthConfig, HttpsCheck, UpstreamState};
use common::*;

/// One new client every this long.
const EVERY: Duration = Duration::from_millis(10);
/// A client without its answer this long after it started has failed: an unanswered
/// client of a hung upstream would wait for as long as the hang lasts.
const GIVE_UP: Duration = Duration::from_secs(2);
/// How long the fault lasts.
const FAULT: Duration = Duration::from_secs(5);

/// A balancer in front of three backends with the node's HTTPS check settings, all
/// three healthy; returns the balancer, the backends and the clients' TLS settings.
async fn setup() -> (Balancer, Vec<TestBackend>, Arc<rustls::ClientConfig>) {
    let ca = TestCa::new().unwrap();
    let b = backends(3, &ca).await;
    let check = Arc::new(HttpsCheck::new(ca.pem().as_bytes(), None).unwrap());
    let tls = Arc::clone(&check.tls);
    let config = BalancerConfig {
        health: HealthConfig::with_check(Check::Https(check)),
        ..BalancerConfig::default()
    };
    let lb = balancer(config, &names(&[&b[0], &b[1], &b[2]])).await;
    wait_for(&lb, Duration::from_secs(5), "first checks", |s| {
        s.upstreams.iter().all(|u| u.check_latency.is_some()) && s.healthy() == 3
    })
    .await;
    (lb, b, tls)
}

/// Runs `fault` on backend 0 for [`FAULT`] under load, then `recover`; prints and
/// returns (clients started in the fault window, failed among them, out of rotation
/// after, back in rotation after).
async fn under_load(
    what: &str,
    fault: impl AsyncFnOnce(&TestBackend),
    recover: impl AsyncFnOnce(&TestBackend),
) -> (usize, Vec<Outcome>, Duration, Duration) {
    let (lb, b, tls) = setup().await;
    let victim = b[0].upstream();
    // Long-lived connections on every backend, as watches are: without them, one
    // client stuck on the victim would be enough for the choice by outstanding
    // connections to avoid it, and the test would not see the rest.
    let mut watches = Vec::new();
    for _ in 0..30 {
        watches.push(echo_stream(lb.local_addr()).await.unwrap());
    }
    let load = TlsLoad::start(lb.local_addr(), tls, EVERY, GIVE_UP);
    tokio::time::sleep(Duration::from_secs(1)).await;

    fault(&b[0]).await;
    let faulted = Instant::now();
    let out = wait_for(&lb, FAULT, "out of rotation", |s| {
        s.upstream(&victim).unwrap().state != UpstreamState::Healthy
    })
    .await;
    tokio::time::sleep(FAULT.saturating_sub(faulted.elapsed())).await;
    recover(&b[0]).await;
    let recovered = Instant::now();
    let back = wait_for(&lb, Duration::from_secs(5), "back in rotation", |s| {
        s.upstream(&victim).unwrap().state == UpstreamState::Healthy
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let outcomes = load.stop().await;
    drop(watches);

    let window: Vec<_> = outcomes
        .iter()
        .filter(|o| o.started >= faulted && o.started < recovered)
        .collect();
    // A client already talking to the victim when the fault came shares its fate, as
    // with any proxy: counted are the clients that started after it.
    let in_flight = outcomes
        .iter()
        .filter(|o| o.started < faulted && o.result.is_err())
        .count();
    let failed: Vec<_> = outcomes
        .iter()
        .filter(|o| o.started >= faulted && o.result.is_err())
        .cloned()
        .collect();
    let served_victim = outcomes
        .iter()
        .any(|o| o.started > recovered && o.result.as_ref().is_ok_and(|n| n == b[0].name()));
    println!(
        "{what}: {} clients, {} during the fault, {} new ones failed ({in_flight} in flight at the fault); out of rotation after {out:?}, back {back:?} after recovery",
        outcomes.len(),
        window.len(),
        failed.len(),
    );
    // ~100 a second, less what a loaded machine's timer lets through.
    assert!(window.len() >= 250, "too little load: {}", window.len());
    assert!(served_victim, "no client reached it after it recovered");
    (window.len(), failed, out, back)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_upstream_fails_at_most_one_client_in_a_hundred() {
    let (clients, failed, out, back) = under_load(
        "hung",
        async |b: &TestBackend| b.set_mode(Mode::Hang),
        async |b: &TestBackend| b.set_mode(Mode::Ready),
    )
    .await;
    assert!(failed.len() * 100 <= clients, "failed: {failed:?}");
    assert!(out <= Duration::from_secs(1), "out after {out:?}");
    assert!(back <= Duration::from_secs(1), "back after {back:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_upstream_fails_no_client() {
    let (_, failed, out, back) = under_load(
        "killed",
        async |b: &TestBackend| b.kill().await,
        async |b: &TestBackend| b.revive().await.unwrap(),
    )
    .await;
    assert!(failed.is_empty(), "failed: {failed:?}");
    assert!(out <= Duration::from_secs(1), "out after {out:?}");
    assert!(back <= Duration::from_secs(1), "back after {back:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unready_upstream_fails_no_client() {
    let (_, failed, out, back) = under_load(
        "unready",
        async |b: &TestBackend| b.set_mode(Mode::Unready),
        async |b: &TestBackend| b.set_mode(Mode::Ready),
    )
    .await;
    assert!(failed.is_empty(), "failed: {failed:?}");
    // Two checks 500 ms and 200 ms apart, each answered at once.
    assert!(out <= Duration::from_secs(1), "out after {out:?}");
    assert!(back <= Duration::from_secs(1), "back after {back:?}");
}
