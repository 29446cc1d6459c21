//! Bytes go through intact both ways, large and small, with half-close, in both proxy
//! modes; and they are counted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use basalt_kubeprism::testing::{echo_stream, TestCa};
use basalt_kubeprism::{BalancerConfig, ProxyMode};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BULK: usize = 4 << 20;

async fn round_trip(mode: ProxyMode) {
    let ca = TestCa::new().unwrap();
    let b = backends(1, &ca).await;
    let config = BalancerConfig {
        proxy: mode,
        ..BalancerConfig::default()
    };
    let lb = balancer(config, &names(&[&b[0]])).await;
    let (stream, _) = echo_stream(lb.local_addr()).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let data: Vec<u8> = (0..BULK).map(|i| (i * 7 % 251) as u8).collect();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        // Small writes first, then bulk: both paths of the splice mode.
        for chunk in sent[..1000].chunks(10) {
            write.write_all(chunk).await.unwrap();
        }
        write.write_all(&sent[1000..]).await.unwrap();
        // Half-close: the echo answers everything, then closes its side too.
        write.shutdown().await.unwrap();
        write
    });
    let mut back = Vec::with_capacity(BULK);
    tokio::time::timeout(Duration::from_secs(30), read.read_to_end(&mut back))
        .await
        .expect("the echo ends after the half-close")
        .unwrap();
    let _write = writer.await.unwrap();
    assert!(back == data, "{} bytes back of {}", back.len(), data.len());

    let name = b[0].upstream();
    wait_for(&lb, Duration::from_secs(5), "connection closed", |s| {
        s.upstream(&name).unwrap().active == 0
    })
    .await;
    // Each byte counted once: the payload plus the echo's short request and answer head.
    let u = lb.status().upstream(&name).unwrap().clone();
    let counted = (BULK as u64)..(BULK as u64 + 100);
    assert!(counted.contains(&u.bytes_sent), "sent {}", u.bytes_sent);
    assert!(
        counted.contains(&u.bytes_received),
        "received {}",
        u.bytes_received
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splice_mode_moves_large_and_small_writes_intact_with_half_close() {
    round_trip(ProxyMode::Splice).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_mode_moves_large_and_small_writes_intact_with_half_close() {
    round_trip(ProxyMode::Copy).await;
}
