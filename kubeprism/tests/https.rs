//! HTTPS `/readyz` checks: an open port is not enough, the API must say it is ready,
//! over TLS verified against the cluster CA.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use basalt_kubeprism::testing::{get, Mode, TestCa};
use basalt_kubeprism::{BalancerConfig, Check, HealthConfig, HttpsCheck, UpstreamState};
use common::*;

fn https(ca: &TestCa) -> BalancerConfig {
    let check = HttpsCheck::new(ca.pem().as_bytes(), None).unwrap();
    BalancerConfig {
        health: HealthConfig::with_check(Check::Https(Arc::new(check))),
        ..BalancerConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_port_whose_readyz_fails_is_taken_out_and_back() {
    let ca = TestCa::new().unwrap();
    let b = backends(3, &ca).await;
    let lb = balancer(https(&ca), &names(&[&b[0], &b[1], &b[2]])).await;
    let unready = b[1].upstream();
    // Every upstream passes its first HTTPS check.
    wait_for(&lb, Duration::from_secs(5), "first checks", |s| {
        s.upstreams.iter().all(|u| u.check_latency.is_some()) && s.healthy() == 3
    })
    .await;

    b[1].set_mode(Mode::Unready);
    // A healthy upstream is checked every second; two failures 200 ms apart take it
    // down.
    let took = wait_for(&lb, Duration::from_secs(5), "unready upstream down", |s| {
        s.upstream(&unready).unwrap().state == UpstreamState::Down
    })
    .await;
    println!("unready upstream down after {took:?}");
    // At most one 1 s interval to the first failure and one 200 ms interval to the
    // second, plus scheduling on a loaded machine.
    assert!(took <= Duration::from_millis(2000), "down after {took:?}");
    let status = lb.status();
    let last_error = status
        .upstream(&unready)
        .unwrap()
        .last_error
        .clone()
        .unwrap();
    assert!(last_error.contains("503"), "{last_error}");
    for _ in 0..30 {
        let (code, name) = get(lb.local_addr(), "/name").await.unwrap();
        assert_eq!(code, 200);
        assert_ne!(name, "b1", "an unready upstream got a client");
    }

    b[1].set_mode(Mode::Ready);
    let back = wait_for(&lb, Duration::from_secs(5), "ready again", |s| {
        s.upstream(&unready).unwrap().state == UpstreamState::Healthy
    })
    .await;
    println!("ready upstream back after {back:?}");
    assert!(back <= Duration::from_secs(1), "back after {back:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_accepts_and_never_answers_is_reported_down() {
    let ca = TestCa::new().unwrap();
    let b = backends(2, &ca).await;
    b[0].set_mode(Mode::Hang);
    let mut config = https(&ca);
    config.health.timeout = Duration::from_millis(300);
    let lb = balancer(config, &names(&[&b[0], &b[1]])).await;
    let hung = b[0].upstream();
    wait_for(&lb, Duration::from_secs(5), "hung upstream down", |s| {
        let u = s.upstream(&hung).unwrap();
        u.state == UpstreamState::Down
            && u.last_error
                .as_deref()
                .is_some_and(|e| e.contains("timed out"))
    })
    .await;
    // The balancer carries on with the other one.
    for _ in 0..10 {
        assert_eq!(
            get(lb.local_addr(), "/name").await.unwrap(),
            (200, "b1".into())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_from_another_ca_fails_the_check() {
    let ca = TestCa::new().unwrap();
    let other = TestCa::new().unwrap();
    let b = backends(1, &ca).await;
    let lb = balancer(https(&other), &names(&[&b[0]])).await;
    let name = b[0].upstream();
    wait_for(
        &lb,
        Duration::from_secs(5),
        "untrusted upstream down",
        |s| {
            let u = s.upstream(&name).unwrap();
            u.state == UpstreamState::Down
                && u.last_error.as_deref().is_some_and(|e| e.contains("TLS"))
        },
    )
    .await;
}

#[tokio::test]
async fn bad_pem_is_an_error_not_a_panic() {
    assert!(HttpsCheck::new(b"", None).is_err());
    assert!(HttpsCheck::new(b"-----BEGIN CERTIFICATE-----\nnope\n", None).is_err());
    let ca = TestCa::new().unwrap();
    assert!(HttpsCheck::new(ca.pem().as_bytes(), Some((ca.pem().as_bytes(), b"junk"))).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_keep_one_connection_and_see_a_dead_server_at_once() {
    let ca = TestCa::new().unwrap();
    let b = backends(2, &ca).await;
    let lb = balancer(https(&ca), &names(&[&b[0], &b[1]])).await;
    let name = b[0].upstream();
    // Three checks or more, 1 s apart while up...
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let status = lb.status();
    assert_eq!(
        status.upstream(&name).unwrap().state,
        UpstreamState::Healthy
    );
    // ...on one connection: one TLS handshake per upstream, not one per check.
    assert_eq!(b[0].connections(), 1, "connections to the backend");

    // No client traffic: only the checks can notice. The kept connection closes when
    // the server dies, and the next check runs then, not at the end of the interval.
    b[0].kill().await;
    let out = wait_for(&lb, Duration::from_secs(5), "out of rotation", |s| {
        s.upstream(&name).unwrap().state != UpstreamState::Healthy
    })
    .await;
    println!("out of rotation {out:?} after the kill");
    assert!(out <= Duration::from_millis(500), "out after {out:?}");
    b[0].revive().await.unwrap();
    let back = wait_for(&lb, Duration::from_secs(5), "back", |s| {
        s.upstream(&name).unwrap().state == UpstreamState::Healthy
    })
    .await;
    println!("back in rotation {back:?} after the recovery");
    assert!(back <= Duration::from_secs(1), "back after {back:?}");
    assert_eq!(lb.status().accepted, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_refuses_anonymous_readyz_counts_as_up() {
    let ca = TestCa::new().unwrap();
    let b = backends(1, &ca).await;
    b[0].set_mode(Mode::Forbidden);
    let lb = balancer(https(&ca), &names(&[&b[0]])).await;
    let name = b[0].upstream();
    wait_for(&lb, Duration::from_secs(5), "two checks", |s| {
        s.upstream(&name).unwrap().check_latency.is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = lb.status();
    let u = status.upstream(&name).unwrap();
    assert_eq!(u.state, UpstreamState::Healthy, "{u:#?}");
    assert_eq!(u.check_failures, 0, "{u:#?}");
}
