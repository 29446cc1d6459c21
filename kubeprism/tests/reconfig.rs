//! Reconfiguring the upstream list drops no established connection; removed upstreams
//! drain and then leave the status.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use basalt_kubeprism::testing::{echo_round_trip, echo_stream, get, TestCa, TestDns};
use basalt_kubeprism::{BalancerConfig, Problem, UpstreamState};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconfiguring_drops_no_connection_and_removed_upstreams_drain() {
    let ca = TestCa::new().unwrap();
    let b = backends(3, &ca).await;
    let lb = balancer(BalancerConfig::default(), &names(&[&b[0], &b[1]])).await;
    let addr = lb.local_addr();

    let mut streams = Vec::new();
    for _ in 0..8 {
        streams.push(echo_stream(addr).await.unwrap());
    }
    let on_b0 = streams.iter().filter(|(_, n)| n == "b0").count() as u64;
    assert!(on_b0 > 0, "no stream on b0");
    let b1_total = lb.status().upstream(&b[1].upstream()).unwrap().total;

    // b0 out, b2 in; b1 stays with its counters.
    let problems = lb.set_upstreams(&names(&[&b[1], &b[2]])).await;
    assert!(problems.is_empty(), "{problems:?}");
    let status = lb.status();
    let draining = status.upstream(&b[0].upstream()).unwrap();
    assert_eq!(draining.state, UpstreamState::Draining);
    assert_eq!(draining.active, on_b0);
    assert_eq!(status.upstream(&b[1].upstream()).unwrap().total, b1_total);

    for (s, name) in &mut streams {
        echo_round_trip(s, b"across the reconfiguration")
            .await
            .unwrap_or_else(|e| panic!("stream to {name}: {e}"));
    }
    for _ in 0..20 {
        let (_, name) = get(addr, "/name").await.unwrap();
        assert_ne!(name, "b0", "a removed upstream got a new connection");
    }

    // The same list again changes nothing.
    lb.set_upstreams(&names(&[&b[1], &b[2]])).await;
    assert_eq!(
        lb.status().upstream(&b[0].upstream()).unwrap().active,
        on_b0
    );

    // Once its streams close, the drained upstream leaves the status.
    streams.retain(|(_, n)| n != "b0");
    wait_for(&lb, Duration::from_secs(5), "b0 drained", |s| {
        s.upstream(&b[0].upstream()).is_none()
    })
    .await;
    for (s, _) in &mut streams {
        echo_round_trip(s, b"after the drain").await.unwrap();
    }

    // Adding it back brings it into rotation.
    lb.set_upstreams(&names(&[&b[0], &b[1], &b[2]])).await;
    assert_eq!(lb.status().upstreams.len(), 3);
}

/// Names are resolved each time the list is set: a name whose address changed moves to
/// the new one (its connections to the old one drain), and a name that stops resolving
/// (a DNS blip) keeps the address it had, with the problem reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_follows_its_address_and_survives_a_dns_blip() {
    let ca = TestCa::new().unwrap();
    let b = backends(2, &ca).await;
    let dns = TestDns::default();
    let name = "api.cluster.test:6443".to_string();
    dns.set(&name, Some(b[0].addr()));
    let config = BalancerConfig {
        resolver: dns.resolver(),
        ..BalancerConfig::default()
    };
    let lb = balancer(config, std::slice::from_ref(&name)).await;
    let addr = lb.local_addr();
    assert_eq!(get(addr, "/name").await.unwrap(), (200, "b0".into()));
    let (mut stream, on) = echo_stream(addr).await.unwrap();
    assert_eq!(on, "b0");

    dns.set(&name, Some(b[1].addr()));
    assert!(lb
        .set_upstreams(std::slice::from_ref(&name))
        .await
        .is_empty());
    wait_for(
        &lb,
        Duration::from_secs(5),
        "the name on its new address",
        |s| {
            s.upstreams
                .iter()
                .any(|u| u.address == b[1].addr() && u.state == UpstreamState::Healthy)
        },
    )
    .await;
    assert_eq!(get(addr, "/name").await.unwrap(), (200, "b1".into()));
    // The stream to the old address is untouched; the old address drains.
    echo_round_trip(&mut stream, b"still there").await.unwrap();
    let old = lb.status();
    let old = old
        .upstreams
        .iter()
        .find(|u| u.address == b[0].addr())
        .unwrap();
    assert_eq!(old.state, UpstreamState::Draining);

    dns.set(&name, None);
    let problems = lb.set_upstreams(std::slice::from_ref(&name)).await;
    assert!(
        matches!(&problems[..], [Problem::Unresolvable { name: n, .. }] if *n == name),
        "{problems:?}"
    );
    assert_eq!(get(addr, "/name").await.unwrap(), (200, "b1".into()));
    assert!(lb.status().problems.contains(&problems[0]));
}
