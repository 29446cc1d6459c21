//! State benchmarks: single-writer update rate (in memory), and watch-delivery latency
//! with 100 watchers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use basalt_resource::{AnyResource, Resource, ResourceKey, ResourceSpec};
use basalt_state::{Event, State, WatchKindOptions};
use criterion::{criterion_group, Criterion, Throughput};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ResourceSpec)]
#[resource(type = "Samples.bench.basalt.dev", namespace = "bench")]
struct Sample {
    value: u64,
}

fn key() -> ResourceKey {
    ResourceKey::new(Sample::DEFAULT_NAMESPACE, Sample::TYPE, "one")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// One stored update: the next value, based on the current version (compare-and-swap).
async fn bump(state: &State, current: &mut Arc<AnyResource>, value: u64) {
    let mut next = AnyResource::clone(current);
    next.spec = Arc::new(Sample { value });
    *current = state.update(next, "").await.unwrap();
}

fn updates(c: &mut Criterion) {
    let rt = runtime();
    let state = State::new();
    let mut current = rt.block_on(async {
        state
            .create(Resource::new("one", Sample { value: 0 }).into_any(), "")
            .await
            .unwrap()
    });
    let mut value = 0;
    let mut group = c.benchmark_group("state");
    group.throughput(Throughput::Elements(1));
    group.bench_function("update (single writer, in-memory)", |b| {
        b.iter(|| {
            value += 1;
            rt.block_on(bump(&state, &mut current, value));
        })
    });
    group.finish();
}

/// Percentiles of watch delivery: the time from the start of an update to each of 100
/// watchers receiving its event. The writer waits for all watchers before the next
/// update, so this is delivery latency, not queueing behind a backlog.
fn watch_latency() -> (Duration, Duration, Duration, usize) {
    const WATCHERS: usize = 100;
    const UPDATES: u64 = 2_000;
    let rt = runtime();
    rt.block_on(async {
        let state = State::new();
        let mut current = state
            .create(Resource::new("one", Sample { value: 0 }).into_any(), "")
            .await
            .unwrap();
        let sent_at = Arc::new(Mutex::new(Instant::now()));
        let received = Arc::new(AtomicUsize::new(0));
        let all_received = Arc::new(tokio::sync::Notify::new());
        let samples = Arc::new(Mutex::new(Vec::with_capacity(WATCHERS * UPDATES as usize)));
        let mut tasks = Vec::new();
        for _ in 0..WATCHERS {
            let mut watch = state
                .watch_kind(&key().kind(), WatchKindOptions::default())
                .await
                .unwrap();
            let (sent_at, received, all, samples) = (
                sent_at.clone(),
                received.clone(),
                all_received.clone(),
                samples.clone(),
            );
            tasks.push(tokio::spawn(async move {
                while let Some(Ok(Event::Updated { .. })) = watch.next().await {
                    let latency = sent_at.lock().unwrap().elapsed();
                    samples.lock().unwrap().push(latency);
                    if received.fetch_add(1, Ordering::AcqRel) + 1 == WATCHERS {
                        all.notify_one();
                    }
                }
            }));
        }
        for value in 1..=UPDATES {
            received.store(0, Ordering::Release);
            *sent_at.lock().unwrap() = Instant::now();
            bump(&state, &mut current, value).await;
            all_received.notified().await;
        }
        drop(state);
        for t in tasks {
            t.abort();
        }
        let mut samples = std::mem::take(&mut *samples.lock().unwrap());
        samples.sort();
        let at = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
        (at(0.50), at(0.99), at(0.999), samples.len())
    })
}

criterion_group!(benches, updates);

fn main() {
    benches();
    let (p50, p99, p999, n) = watch_latency();
    println!(
        "state/watch delivery, 100 watchers ({n} events): p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs (target p99 <= 1000 µs)",
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        p999.as_secs_f64() * 1e6,
    );
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
}
