//! Bytes go through intact both ways, large and small, with half-close from either side
//! and a reset after an answer, in both proxy modes; and they are counted.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use std::time::Duration;

use basalt_kubeprism::testing::{echo_stream, TestCa};
use basalt_kubeprism::{Balancer, BalancerConfig, ProxyMode};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

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

/// A plain TCP upstream for the tests below, and the one connection the balancer proxies
/// to it (told from the health checks' connections by the client's first bytes).
async fn proxied_pair(mode: ProxyMode) -> (Balancer, TcpStream, TcpStream) {
    let upstream = TcpListener::bind(loopback()).await.unwrap();
    let config = BalancerConfig {
        proxy: mode,
        ..BalancerConfig::default()
    };
    let lb = balancer(config, &[upstream.local_addr().unwrap().to_string()]).await;
    // A small receive buffer: what the client does not read yet stays in the balancer.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut client = socket.connect(lb.local_addr()).await.unwrap();
    client.write_all(b"hello").await.unwrap();
    loop {
        let (mut server, _) = upstream.accept().await.unwrap();
        let mut hello = [0u8; 5];
        // A check's connection closes without a byte.
        if server.read_exact(&mut hello).await.is_ok() && &hello == b"hello" {
            return (lb, client, server);
        }
    }
}

async fn upstream_half_closes_first(mode: ProxyMode) {
    let (_lb, mut client, mut server) = proxied_pair(mode).await;
    server.write_all(b"answer").await.unwrap();
    server.shutdown().await.unwrap();
    // The client sees the answer and the end of it...
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut answer))
        .await
        .expect("the upstream's end reaches the client")
        .unwrap();
    assert_eq!(answer, b"answer");
    // ...and what it sends afterwards still reaches the upstream.
    client.write_all(b"and more").await.unwrap();
    client.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), server.read_to_end(&mut rest))
        .await
        .expect("the client's end reaches the upstream")
        .unwrap();
    assert_eq!(rest, b"and more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splice_mode_carries_on_after_the_upstream_half_closes() {
    upstream_half_closes_first(ProxyMode::Splice).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_mode_carries_on_after_the_upstream_half_closes() {
    upstream_half_closes_first(ProxyMode::Copy).await;
}

/// The upstream sends its last answer and resets the connection while the client is
/// still sending (an API server refusing an upload, say): the answer, queued in the
/// balancer because the client reads slowly, is still delivered.
async fn answer_then_reset(mode: ProxyMode) {
    // Small enough to sit in the balancer's receive buffer whole.
    const ANSWER: usize = 48 * 1024;
    let (_lb, client, server) = proxied_pair(mode).await;
    let (mut read, mut write) = client.into_split();
    let answer: Vec<u8> = (0..ANSWER).map(|i| (i % 241) as u8).collect();
    let mut server = server;
    tokio::time::timeout(Duration::from_secs(5), server.write_all(&answer))
        .await
        .expect("the answer fits in the balancer's buffers")
        .unwrap();
    // The client keeps sending and reads nothing yet.
    let sending = tokio::spawn(async move {
        let chunk = [1u8; 1024];
        for _ in 0..2000 {
            if write.write_all(&chunk).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Closed with the client's bytes unread: a reset.
    server.set_zero_linger().unwrap();
    drop(server);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), read.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the client was left hanging after {} bytes", got.len()),
        }
    }
    sending.abort();
    assert!(
        got == answer,
        "{} bytes of the {ANSWER}-byte answer",
        got.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splice_mode_delivers_the_answer_of_an_upstream_that_resets() {
    answer_then_reset(ProxyMode::Splice).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_mode_delivers_the_answer_of_an_upstream_that_resets() {
    answer_then_reset(ProxyMode::Copy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_an_upstream_closes_unanswered_is_replayed_on_another() {
    let ca = TestCa::new().unwrap();
    let b = backends(1, &ca).await;
    // Takes connections and closes each unanswered: an API server shutting down.
    let closing = TcpListener::bind(loopback()).await.unwrap();
    let closing_name = closing.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((s, _)) = closing.accept().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
            // With the request unread, the close is a reset, as a dying server's is.
            drop(s);
        }
    });
    let lb = balancer(
        BalancerConfig::default(),
        &[closing_name.clone(), b[0].upstream()],
    )
    .await;
    // Every client gets the real backend's answer, also those that met the closing
    // upstream first (until one has).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut clients = 0;
    loop {
        let answer = basalt_kubeprism::testing::get(lb.local_addr(), "/name").await;
        assert_eq!(answer.unwrap(), (200, "b0".into()));
        clients += 1;
        let status = lb.status();
        let closing = status.upstream(&closing_name).unwrap();
        if closing.dial_failures > 0 {
            let error = closing.last_error.clone().unwrap_or_default();
            assert!(error.contains("before answering"), "{error}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no client met it");
    }
    println!("{clients} clients until one met the closing upstream");
    assert_eq!(lb.status().failed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_more_than_can_be_kept_is_proxied_unharmed() {
    const SIZE: usize = 64 * 1024;
    // Two plain upstreams that read 64 KiB and answer "ok" (the checks' connections
    // send nothing and are let go).
    let (got_tx, mut got) = tokio::sync::mpsc::unbounded_channel();
    let mut upstreams = Vec::new();
    for _ in 0..2 {
        let listener = TcpListener::bind(loopback()).await.unwrap();
        upstreams.push(listener.local_addr().unwrap().to_string());
        let got_tx = got_tx.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let got_tx = got_tx.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; SIZE];
                    if s.read_exact(&mut buf).await.is_ok() {
                        s.write_all(b"ok").await.unwrap();
                        got_tx.send(buf).unwrap();
                    }
                });
            }
        });
    }
    let lb = balancer(BalancerConfig::default(), &upstreams).await;
    // More than the 16 KiB kept for a replay, at once, before any answer: the rest is
    // proxied as it comes.
    let mut client = TcpStream::connect(lb.local_addr()).await.unwrap();
    let sent: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
    client.write_all(&sent).await.unwrap();
    let mut answer = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(10), client.read_exact(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    assert_eq!(&answer, b"ok");
    assert!(got.recv().await.unwrap() == sent, "the bytes differ");
    assert!(got.try_recv().is_err(), "sent to two upstreams");
}

/// Bytes no server answers (a client's garbage, half a ClientHello) are the client's
/// fault: an upstream that closes on them, or says nothing, is not marked down for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_garbage_does_not_count_against_the_upstreams() {
    let mut upstreams = Vec::new();
    for _ in 0..2 {
        // Reads what comes, then closes: what a server does with bytes it cannot parse.
        let listener = TcpListener::bind(loopback()).await.unwrap();
        upstreams.push(listener.local_addr().unwrap().to_string());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    let _ = tokio::time::timeout(Duration::from_millis(50), s.read(&mut buf)).await;
                });
            }
        });
    }
    let lb = balancer(BalancerConfig::default(), &upstreams).await;
    for garbage in [&b"\0\0\0\0\0"[..], &[0x16, 3, 1, 2, 0, 1, 0]] {
        for _ in 0..10 {
            let mut client = TcpStream::connect(lb.local_addr()).await.unwrap();
            client.write_all(garbage).await.unwrap();
            let mut rest = Vec::new();
            // The upstream's close reaches the client.
            let read = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut rest));
            assert!(read.await.is_ok(), "the client was left hanging");
        }
    }
    let status = lb.status();
    for u in &status.upstreams {
        assert_eq!(u.dial_failures, 0, "{u:#?}");
        assert_eq!(u.state, basalt_kubeprism::UpstreamState::Healthy, "{u:#?}");
    }
}
