//! Killing one of three upstreams under continuous load: no new client connection
//! fails, streams to the survivors carry on, and the dead one leaves rotation within
//! 1 s and comes back within 1 s of recovery.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use basalt_kubeprism::testing::{echo_round_trip, echo_stream, get, TestCa};
use basalt_kubeprism::{BalancerConfig, UpstreamState};
use common::*;
use tokio::net::TcpStream;

const WORKERS: usize = 4;

/// One short client connection: when it started, and whether it got its answer.
type Outcome = (Instant, Result<String, String>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_three_under_load_fails_no_new_connection() {
    let ca = TestCa::new().unwrap();
    let b = backends(3, &ca).await;
    let lb = balancer(BalancerConfig::default(), &names(&[&b[0], &b[1], &b[2]])).await;
    let addr = lb.local_addr();

    // Long-lived streams, spread over the three, each carrying traffic all along.
    let stop = Arc::new(AtomicBool::new(false));
    let victim = b[0].name().to_string();
    let mut streams = Vec::new();
    for _ in 0..9 {
        let (stream, name) = echo_stream(addr).await.unwrap();
        streams.push((
            name,
            tokio::spawn(stream_traffic(stream, Arc::clone(&stop))),
        ));
    }
    assert!(
        streams.iter().any(|(n, _)| *n == victim),
        "no stream on the victim"
    );

    // Continuous load of short connections.
    let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (stop, outcomes) = (Arc::clone(&stop), Arc::clone(&outcomes));
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let result = match get(addr, "/name").await {
                    Ok((200, name)) => Ok(name),
                    Ok((code, _)) => Err(format!("status {code}")),
                    Err(e) => Err(e.to_string()),
                };
                outcomes.lock().unwrap().push((started, result));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    b[0].kill().await;
    let killed = Instant::now();
    let upstream = b[0].upstream();
    let out_of_rotation = wait_for(&lb, Duration::from_secs(5), "victim out of rotation", |s| {
        s.upstream(&upstream).unwrap().state != UpstreamState::Healthy
    })
    .await;
    let down = wait_for(&lb, Duration::from_secs(5), "victim down", |s| {
        s.upstream(&upstream).unwrap().state == UpstreamState::Down
    })
    .await;
    let down = down + out_of_rotation;
    println!("out of rotation after {out_of_rotation:?}, down after {down:?}");
    assert!(
        out_of_rotation <= Duration::from_secs(1),
        "out of rotation after {out_of_rotation:?}"
    );

    b[0].revive().await.unwrap();
    let revived = Instant::now();
    let back = wait_for(&lb, Duration::from_secs(5), "victim back", |s| {
        s.upstream(&upstream).unwrap().state == UpstreamState::Healthy
    })
    .await;
    println!("back in rotation after {back:?}");
    assert!(back <= Duration::from_secs(1), "back after {back:?}");
    // And it takes new client connections again.
    let served_victim = || {
        outcomes
            .lock()
            .unwrap()
            .iter()
            .any(|(started, r)| *started >= revived && r.as_ref().is_ok_and(|n| *n == victim))
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !served_victim() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        served_victim(),
        "no client reached the victim after its recovery"
    );

    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    // Streams to the survivors were untouched: every round trip before, during and
    // after the kill came back.
    let mut survivors = Vec::new();
    for (name, traffic) in streams {
        let (stream, trips, error) = traffic.await.unwrap();
        if name == victim {
            assert!(error.is_some(), "a stream to the killed backend lived on");
        } else {
            assert!(error.is_none(), "stream to {name}: {error:?}");
            assert!(trips > 20, "stream to {name}: only {trips} round trips");
            survivors.push(stream);
        }
    }
    for s in &mut survivors {
        echo_round_trip(s, b"and still").await.unwrap();
    }
    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    let failed_new: Vec<_> = outcomes
        .iter()
        .filter(|(started, r)| *started >= killed && r.is_err())
        .collect();
    // Requests already in flight on the victim when it died share its fate (at most one
    // per worker); every connection started after the kill must succeed.
    let in_flight = outcomes
        .iter()
        .filter(|(started, r)| *started < killed && r.is_err())
        .count();
    let ok = outcomes.iter().filter(|(_, r)| r.is_ok()).count();
    println!(
        "{} connections, {ok} ok, {in_flight} in flight on the victim at the kill, {} failed after it",
        outcomes.len(),
        failed_new.len()
    );
    assert!(
        failed_new.is_empty(),
        "failed new connections: {failed_new:?}"
    );
    assert!(in_flight <= WORKERS, "{in_flight} failures before the kill");
    assert!(ok > 100, "too little load: {ok}");
    assert_eq!(lb.status().failed, 0, "the balancer closed clients");

    // Close the rest before the balancer goes: nothing is left behind.
    drop(survivors);
    lb.shutdown().await;
}

/// Round trips on an echo stream until `stop` or the first error; gives back the
/// stream, the round trips made and the error.
async fn stream_traffic(
    mut stream: TcpStream,
    stop: Arc<AtomicBool>,
) -> (TcpStream, usize, Option<String>) {
    let mut trips = 0;
    while !stop.load(Ordering::Relaxed) {
        let payload = format!("trip {trips}");
        let trip = tokio::time::timeout(
            Duration::from_secs(5),
            echo_round_trip(&mut stream, payload.as_bytes()),
        );
        match trip.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return (stream, trips, Some(e.to_string())),
            Err(_) => return (stream, trips, Some("no answer within 5 s".into())),
        }
        trips += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (stream, trips, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_traffic_the_checks_alone_take_a_dead_upstream_out_and_back_within_1s() {
    let ca = TestCa::new().unwrap();
    let b = backends(2, &ca).await;
    let lb = balancer(BalancerConfig::default(), &names(&[&b[0], &b[1]])).await;
    let name = b[0].upstream();
    let state = |s: &basalt_kubeprism::BalancerStatus| s.upstream(&name).unwrap().state;
    wait_for(&lb, Duration::from_secs(5), "first check", |s| {
        s.upstream(&name).unwrap().check_latency.is_some()
    })
    .await;

    b[0].kill().await;
    let out = wait_for(&lb, Duration::from_secs(5), "out of rotation", |s| {
        state(s) != UpstreamState::Healthy
    })
    .await;
    let down = wait_for(&lb, Duration::from_secs(5), "down", |s| {
        state(s) == UpstreamState::Down
    })
    .await;
    println!("out of rotation after {out:?}, down {down:?} later");
    assert!(out <= Duration::from_secs(1), "out after {out:?}");

    b[0].revive().await.unwrap();
    let back = wait_for(&lb, Duration::from_secs(5), "back", |s| {
        state(s) == UpstreamState::Healthy
    })
    .await;
    println!("back in rotation after {back:?}");
    assert!(back <= Duration::from_secs(1), "back after {back:?}");
    // No client was involved: the active checks did it all.
    assert_eq!(lb.status().accepted, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_upstream_dead_clients_are_closed_and_it_is_reported() {
    let ca = TestCa::new().unwrap();
    let b = backends(2, &ca).await;
    let lb = balancer(BalancerConfig::default(), &names(&[&b[0], &b[1]])).await;
    b[0].kill().await;
    b[1].kill().await;
    // A client is closed (no answer) promptly, after the bounded retries.
    let started = Instant::now();
    assert!(get(lb.local_addr(), "/name").await.is_err());
    assert!(started.elapsed() < Duration::from_secs(3));
    wait_for(&lb, Duration::from_secs(5), "all down reported", |s| {
        s.problems.contains(&basalt_kubeprism::Problem::AllDown) && s.failed >= 1
    })
    .await;
    // One comes back: clients succeed again.
    b[1].revive().await.unwrap();
    wait_for(&lb, Duration::from_secs(5), "one healthy", |s| {
        s.healthy() == 1
    })
    .await;
    assert_eq!(
        get(lb.local_addr(), "/name").await.unwrap(),
        (200, "b1".into())
    );
}
