//! Convergence of a chain of three controllers (A -> B -> C -> D) over 10,000 resources:
//! the time from the first source written to the last final output stored.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use basalt_controller_runtime::testing::Harness;
use basalt_resource::{Kind, Resource, ResourceSpec};
use basalt_state::{Event, WatchKindOptions};
use common::{Num, Stage, A, B, C, D};
use criterion::{criterion_group, criterion_main, Criterion};

const N: i64 = 10_000;

async fn converge() -> Duration {
    let h = Harness::builder()
        .with(Stage::<A, B>::new("bench.AtoB"))
        .unwrap()
        .with(Stage::<B, C>::new("bench.BtoC"))
        .unwrap()
        .with(Stage::<C, D>::new("bench.CtoD"))
        .unwrap()
        .start();
    let mut outputs = h
        .state()
        .watch_kind(
            &Kind::new(D::DEFAULT_NAMESPACE, D::TYPE),
            WatchKindOptions::default(),
        )
        .await
        .unwrap();
    let started = Instant::now();
    for i in 0..N {
        h.state()
            .create(Resource::new(format!("r{i}"), A::new(i)).into_any(), "")
            .await
            .unwrap();
    }
    let mut done = 0;
    while done < N {
        if let Event::Created(d) = outputs.next().await.unwrap().unwrap() {
            assert_eq!(
                d.spec_as::<D>().unwrap().value(),
                d.metadata.id[1..].parse::<i64>().unwrap() + 3
            );
            done += 1;
        }
    }
    let took = started.elapsed();
    h.stop().await;
    took
}

fn chain(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("runtime");
    group.sample_size(10);
    group.bench_function("chain of 3 controllers, 10000 resources: converge", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| rt.block_on(converge())).sum())
    });
    group.finish();
}

criterion_group!(benches, chain);
criterion_main!(benches);
