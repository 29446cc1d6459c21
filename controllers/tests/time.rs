//! The time sync controller against SNTP servers the test runs on 127.0.0.1: one whose
//! clock is ten seconds ahead, one that never answers, one that answers garbage. The
//! node's clock is a recording: the host's is never touched.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use basalt_controller_runtime::testing::Harness;
use basalt_controllers::time::{Clock, SyncController};
use basalt_resource::Resource;
use basalt_resources::network::NetworkServersConfigSpec;
use basalt_resources::time::TimeStatusSpec;
use basalt_state::State;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// Seconds from 1900 (NTP's era) to 1970.
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

#[derive(Debug, Default)]
struct RecordingClock(Mutex<Vec<i64>>);

impl Clock for RecordingClock {
    fn step(&self, offset_micros: i64) -> std::io::Result<()> {
        self.0.lock().unwrap().push(offset_micros);
        Ok(())
    }
}

enum Answer {
    /// A server whose clock is this far ahead of ours.
    Ahead(Duration),
    Silent,
    Garbage,
}

/// An SNTP server on 127.0.0.1, stopped when the handle is dropped (aborted).
struct Server {
    address: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn ntp_timestamp(time: SystemTime) -> [u8; 8] {
    let since = time.duration_since(UNIX_EPOCH).unwrap();
    let seconds = (since.as_secs() + NTP_UNIX_OFFSET) as u32;
    let fraction = ((u64::from(since.subsec_nanos()) << 32) / 1_000_000_000) as u32;
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&seconds.to_be_bytes());
    out[4..].copy_from_slice(&fraction.to_be_bytes());
    out
}

async fn server(answer: Answer) -> Server {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let address = socket.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut request = [0u8; 48];
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut request).await else {
                return;
            };
            let reply = match &answer {
                Answer::Silent => continue,
                Answer::Garbage => vec![0xff; 10],
                Answer::Ahead(skew) => {
                    let now = ntp_timestamp(SystemTime::now() + *skew);
                    let mut reply = vec![0u8; 48];
                    reply[0] = (4 << 3) | 4; // version 4, mode 4 (server)
                    reply[1] = 1; // stratum 1
                    reply[12..16].copy_from_slice(b"TEST");
                    reply[16..24].copy_from_slice(&now);
                    // The originate timestamp is the request's transmit timestamp.
                    if n == 48 {
                        reply[24..32].copy_from_slice(&request[40..48]);
                    }
                    reply[32..40].copy_from_slice(&now);
                    reply[40..48].copy_from_slice(&now);
                    reply
                }
            };
            let _ = socket.send_to(&reply, peer).await;
        }
    });
    Server { address, task }
}

async fn servers(state: &State, servers: &[&Server]) {
    let spec = NetworkServersConfigSpec {
        nameservers: Vec::new(),
        time_servers: servers.iter().map(|s| s.address.to_string()).collect(),
    };
    state
        .put(
            Resource::new(NetworkServersConfigSpec::ID, spec).into_any(),
            "test",
        )
        .await
        .unwrap();
}

fn harness(state: State, clock: Option<Arc<RecordingClock>>) -> Harness {
    let clock = clock.map(|c| c as Arc<dyn Clock>);
    Harness::builder_with(state)
        .with(SyncController::new(clock))
        .unwrap()
        .start()
        .with_timeout(Duration::from_secs(20))
}

#[tokio::test]
async fn a_clock_ten_seconds_behind_is_stepped_and_reported() {
    let state = State::new();
    let clock = Arc::new(RecordingClock::default());
    let h = harness(state.clone(), Some(clock.clone()));
    h.assert_resource::<TimeStatusSpec>(TimeStatusSpec::ID, |t| {
        !t.spec.synced && t.spec.error.contains("no time servers configured")
    })
    .await;

    let ahead = server(Answer::Ahead(Duration::from_secs(10))).await;
    servers(&state, &[&ahead]).await;
    let status = h
        .assert_resource::<TimeStatusSpec>(TimeStatusSpec::ID, |t| t.spec.synced)
        .await
        .spec;
    assert!(
        (9_500_000..10_500_000).contains(&status.offset_micros),
        "{status:?}"
    );
    assert_eq!(status.server, ahead.address.to_string());
    assert!(
        status.sets_clock && !status.last_step.is_empty(),
        "{status:?}"
    );
    let steps = clock.0.lock().unwrap().clone();
    assert_eq!(steps.len(), 1, "{steps:?}");
    assert!((9_500_000..10_500_000).contains(&steps[0]), "{steps:?}");
    h.stop().await;
}

#[tokio::test]
async fn a_silent_or_garbled_server_is_reported_and_the_next_one_answers() {
    let state = State::new();
    let clock = Arc::new(RecordingClock::default());
    let silent = server(Answer::Silent).await;
    let garbage = server(Answer::Garbage).await;
    servers(&state, &[&silent, &garbage]).await;
    let h = harness(state.clone(), Some(clock.clone()));
    let status = h
        .assert_resource::<TimeStatusSpec>(TimeStatusSpec::ID, |t| !t.spec.error.is_empty())
        .await
        .spec;
    assert!(!status.synced, "{status:?}");
    assert!(status.error.contains("no answer within"), "{status:?}");
    assert!(
        status.error.contains(&garbage.address.to_string()),
        "{status:?}"
    );

    let good = server(Answer::Ahead(Duration::ZERO)).await;
    servers(&state, &[&silent, &good]).await;
    let status = h
        .assert_resource::<TimeStatusSpec>(TimeStatusSpec::ID, |t| t.spec.synced)
        .await
        .spec;
    assert_eq!(status.server, good.address.to_string());
    assert!(
        clock.0.lock().unwrap().is_empty(),
        "an exact clock is not stepped"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_node_that_does_not_set_its_clock_reports_the_offset() {
    let state = State::new();
    let ahead = server(Answer::Ahead(Duration::from_secs(10))).await;
    servers(&state, &[&ahead]).await;
    let h = harness(state.clone(), None);
    let status = h
        .assert_resource::<TimeStatusSpec>(TimeStatusSpec::ID, |t| t.spec.offset_micros != 0)
        .await
        .spec;
    assert!(!status.synced && !status.sets_clock, "{status:?}");
    assert!(status.error.contains("does not set it"), "{status:?}");
    h.stop().await;
}
