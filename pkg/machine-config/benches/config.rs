//! Parse and validate a full control-plane config (target ≤ 1 ms).

use basalt_machine_config::{Config, Mode};
use criterion::{criterion_group, criterion_main, Criterion};

const CONTROLPLANE: &str = include_str!("../testdata/controlplane.yaml");

fn parse_validate(c: &mut Criterion) {
    let mut group = c.benchmark_group("config");
    group.bench_function("parse + validate (full controlplane config)", |b| {
        b.iter(|| {
            let (config, source) = Config::parse_with_source(CONTROLPLANE).ok()?;
            config.validate_with_source(Mode::Metal, Some(&source)).ok()
        })
    });
    group.bench_function("digest", |b| {
        let config = Config::parse(CONTROLPLANE).ok();
        b.iter(|| config.as_ref().map(|c| c.digest()))
    });
    group.finish();
}

criterion_group!(benches, parse_validate);
criterion_main!(benches);
