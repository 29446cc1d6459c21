//! The persistent backend: resources survive a restart, a writer killed at any point
//! leaves every resource intact (the old or the new version), bad files are errors.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::result_large_err,
    clippy::map_entry
)]

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use basalt_resource::{AnyResource, Registry, ResourceSpec};
use basalt_state::{State, StateError};
use common::{counter, key, Counter};

fn registry() -> Arc<Registry> {
    let mut r = Registry::new();
    r.register::<Counter>().unwrap();
    Arc::new(r)
}

fn open(dir: &Path) -> Result<(State, basalt_state::LoadReport), StateError> {
    State::builder()
        .persistent(
            dir.join("state.redb"),
            &[Counter::DEFAULT_NAMESPACE],
            registry(),
        )
        .open()
}

#[tokio::test]
async fn resources_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (state, report) = open(dir.path()).unwrap();
        assert_eq!(report.loaded, 0);
        state
            .create(counter("a", 1).into_any(), "ctl")
            .await
            .unwrap();
        let b = state.create(counter("b", 1).into_any(), "").await.unwrap();
        let mut next = AnyResource::clone(&b);
        next.spec = Arc::new(Counter::new(2));
        state.update(next, "").await.unwrap();
        state.add_finalizer(&key("b"), "keep").await.unwrap();
        state
            .create(counter("gone", 1).into_any(), "")
            .await
            .unwrap();
        state.destroy(&key("gone"), "").await.unwrap();
        // Other namespaces stay in memory.
        state
            .create(counter("mem", 1).in_namespace("scratch").into_any(), "")
            .await
            .unwrap();
    }
    let (state, report) = open(dir.path()).unwrap();
    assert_eq!(report.loaded, 2, "{report:?}");
    assert!(report.skipped.is_empty(), "{report:?}");
    let a = state.get(&key("a")).await.unwrap();
    assert_eq!((a.metadata.version, a.metadata.owner.as_str()), (1, "ctl"));
    let b = state.get(&key("b")).await.unwrap();
    assert_eq!(b.metadata.version, 3);
    assert_eq!(b.spec_as::<Counter>().unwrap().value, 2);
    assert!(b.metadata.finalizers.contains("keep"));
    assert!(state.get(&key("gone")).await.is_err());
}

#[tokio::test]
async fn unknown_types_are_reported_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (state, _) = open(dir.path()).unwrap();
        state.create(counter("a", 1).into_any(), "").await.unwrap();
    }
    // A registry without the type (an older version reading a newer one's state).
    let (state, report) = State::builder()
        .persistent(
            dir.path().join("state.redb"),
            &["test"],
            Arc::new(Registry::new()),
        )
        .open()
        .unwrap();
    assert_eq!(report.loaded, 0);
    assert_eq!(report.skipped.len(), 1);
    assert!(
        report.skipped[0].contains("unknown resource type"),
        "{report:?}"
    );
    drop(state);
    let (_, report) = open(dir.path()).unwrap();
    assert_eq!(report.loaded, 1, "the record was kept on disk");
}

#[test]
fn a_corrupt_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    for garbage in [vec![0x5a; 64 * 1024], b"short".to_vec()] {
        std::fs::write(&path, garbage).unwrap();
        let err = open(dir.path()).unwrap_err();
        assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("state.redb"), "{err}");
    }
}

#[test]
fn a_file_in_use_is_not_called_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let (_state, _) = open(dir.path()).unwrap();
    let err = open(dir.path()).unwrap_err();
    assert!(matches!(err, StateError::Persistence { .. }), "{err}");
}

const CHILD_ENV: &str = "BASALT_STATE_CRASH_CHILD";
const IDS: usize = 8;

/// The writer the crash test kills: updates counters in a loop and appends an
/// acknowledgement line ("id version") after each write returns.
fn crash_writer(dir: &Path) -> ! {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (state, _) = open(dir).unwrap();
        let mut acks = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("acks"))
            .unwrap();
        for round in 0.. {
            let id = format!("r{}", round % IDS);
            let stored = match state.get(&key(&id)).await {
                Err(_) => state.create(counter(&id, 0).into_any(), "").await.unwrap(),
                Ok(current) => {
                    let mut next = AnyResource::clone(&current);
                    let value = current.spec_as::<Counter>().unwrap().value;
                    next.spec = Arc::new(Counter::new(value + 1));
                    state.update(next, "").await.unwrap()
                }
            };
            // One write(2) per line: a kill cannot tear it.
            acks.write_all(format!("{id} {}\n", stored.metadata.version).as_bytes())
                .unwrap();
        }
    });
    unreachable!("the writer loops until it is killed")
}

#[test]
fn persistent_store_survives_sigkill() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        crash_writer(Path::new(&dir));
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let kills = 200;
    let started = Instant::now();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut max_versions = 0u64;
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    for round in 0..kills {
        let mut child = Command::new(&exe)
            .args([
                "persistent_store_survives_sigkill",
                "--exact",
                "--nocapture",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // xorshift: kill anywhere from start-up (opening, recovery) to mid-write.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_micros(2_000 + seed % 40_000));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        let acked = last_acks(dir.path());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (state, report) = open(dir.path())
            .unwrap_or_else(|e| panic!("round {round}: the store does not open: {e}"));
        assert!(report.skipped.is_empty(), "round {round}: {report:?}");
        let listed = rt
            .block_on(state.list(&key("x").kind(), &Default::default()))
            .unwrap();
        for r in &listed {
            let c = r.spec_as::<Counter>().unwrap();
            assert_eq!(
                c.check,
                format!("value={}", c.value),
                "round {round}: torn record"
            );
            assert_eq!(
                c.value + 1,
                r.metadata.version,
                "round {round}: version and spec disagree"
            );
            // Never older than what was acknowledged or seen after an earlier kill. (It may
            // be newer than the last acknowledgement: a kill between a commit and its
            // acknowledgement leaves a durable write nobody was told about.)
            let floor = acked
                .get(&r.metadata.id)
                .copied()
                .max(seen.get(&r.metadata.id).copied())
                .unwrap_or(0);
            assert!(
                r.metadata.version >= floor,
                "round {round}: {} went back to version {} from {floor}",
                r.metadata.id,
                r.metadata.version
            );
            seen.insert(r.metadata.id.clone(), r.metadata.version);
            max_versions = max_versions.max(r.metadata.version);
        }
        // Every acknowledged write is on disk.
        for (id, version) in &acked {
            assert!(
                listed
                    .iter()
                    .any(|r| &r.metadata.id == id && r.metadata.version >= *version),
                "round {round}: acknowledged {id} v{version} is lost"
            );
        }
    }
    assert!(
        max_versions > 10,
        "the writer hardly wrote: the test tested nothing"
    );
    eprintln!(
        "{kills} kills in {:.1}s, highest version {max_versions}",
        started.elapsed().as_secs_f64()
    );
}

fn last_acks(dir: &Path) -> BTreeMap<String, u64> {
    let text = std::fs::read_to_string(dir.join("acks")).unwrap_or_default();
    let mut acks = BTreeMap::new();
    for line in text.lines() {
        let (id, version) = line.split_once(' ').unwrap();
        acks.insert(id.to_string(), version.parse().unwrap());
    }
    acks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_writes_leave_memory_equal_to_disk() {
    let dir = tempfile::tempdir().unwrap();
    let in_memory = {
        let (state, _) = open(dir.path()).unwrap();
        for i in 0..200u64 {
            // Callers that give up mid-write (a client hanging up, a deadline).
            let write = state.create(counter(&format!("r{i}"), i).into_any(), "");
            let _ = tokio::time::timeout(Duration::from_micros(i % 50), write).await;
        }
        // Let writes already handed to the disk finish.
        let mut listed = Vec::new();
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = state
                .list(&key("x").kind(), &Default::default())
                .await
                .unwrap();
            if now.len() == listed.len() && !now.is_empty() {
                break;
            }
            listed = now;
        }
        listed
            .iter()
            .map(|r| (r.metadata.id.clone(), r.metadata.version))
            .collect::<BTreeMap<_, _>>()
    };
    let (state, _) = open(dir.path()).unwrap();
    let on_disk: BTreeMap<_, _> = state
        .list(&key("x").kind(), &Default::default())
        .await
        .unwrap()
        .iter()
        .map(|r| (r.metadata.id.clone(), r.metadata.version))
        .collect();
    assert_eq!(in_memory, on_disk);
}

#[tokio::test]
async fn unknown_types_are_not_written_to_disk() {
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, ResourceSpec)]
    #[resource(type = "Unregistereds.test.basalt.dev", namespace = "test")]
    struct Unregistered;
    let dir = tempfile::tempdir().unwrap();
    let (state, _) = open(dir.path()).unwrap();
    let err = state
        .create(
            basalt_resource::Resource::new("u", Unregistered).into_any(),
            "",
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unknown resource type"), "{err}");
}
