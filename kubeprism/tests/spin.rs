//! Serving threads spin only right after serving, for a bounded time, and are asleep (no
//! CPU at all) once their connections go quiet.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use basalt_kubeprism::testing::{echo_stream, TestCa};
use basalt_kubeprism::BalancerConfig;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// CPU time (user + system, in clock ticks) of this process's serving threads.
fn serving_ticks() -> u64 {
    let mut ticks = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let stat = std::fs::read_to_string(task.unwrap().path().join("stat")).unwrap();
        let (name, rest) = stat.split_once(") ").unwrap();
        if !name.contains("(kubeprism-") {
            continue;
        }
        // From field 3 (state) on: utime and stime are fields 14 and 15.
        let fields: Vec<&str> = rest.split_whitespace().collect();
        ticks += fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    }
    ticks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_threads_spin_after_traffic_and_sleep_when_idle() {
    let ca = TestCa::new().unwrap();
    let b = backends(1, &ca).await;
    let config = BalancerConfig {
        spin: Duration::from_micros(200),
        ..BalancerConfig::default()
    };
    let lb = balancer(config, &names(&[&b[0]])).await;
    let (mut stream, _) = echo_stream(lb.local_addr()).await.unwrap();

    // Round trips for a second, each followed by a pause longer than the spin: the
    // serving thread spins after each (200 µs of 1 ms) and sleeps in between.
    let before = serving_ticks();
    let mut back = [0u8; 64];
    let started = std::time::Instant::now();
    let mut trips = 0;
    while started.elapsed() < Duration::from_secs(1) {
        stream.write_all(&[1; 64]).await.unwrap();
        stream.read_exact(&mut back).await.unwrap();
        trips += 1;
        std::thread::sleep(Duration::from_millis(1));
    }
    let busy = serving_ticks() - before;

    // Then quiet for a second, the connection still open.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = serving_ticks();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = serving_ticks() - before;
    println!("{trips} round trips: {busy} ticks busy, {idle} idle");
    // A tick is 10 ms: a thread left spinning would show about 100 in that second.
    assert!(idle <= 2, "serving threads used {idle} ticks while idle");
    // About 200 µs a round trip (less when other threads want the CPU: the spinner
    // yields to them), not the whole second.
    assert!(
        busy <= 60,
        "serving threads used {busy} ticks while serving"
    );
}
