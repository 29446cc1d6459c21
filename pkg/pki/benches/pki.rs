//! PKI benchmarks: generating a whole secrets bundle (`osctl gen secrets`), issuing a
//! client certificate, and verifying one (what the API server does per connection).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use basalt_pki::{issue_client_cert, verify, Role, SecretsBundle};
use criterion::{criterion_group, Criterion};

const HOUR: Duration = Duration::from_secs(3600);

fn pki(c: &mut Criterion) {
    let mut group = c.benchmark_group("pki");
    group.bench_function("SecretsBundle::generate", |b| {
        b.iter(|| SecretsBundle::generate().unwrap())
    });
    let bundle = SecretsBundle::generate().unwrap();
    for (name, ca) in [
        ("Ed25519", &bundle.certs.os),
        ("ECDSA P-256", &bundle.certs.k8s),
    ] {
        group.bench_function(format!("issue_client_cert ({name})"), |b| {
            b.iter(|| issue_client_cert(ca, "admin", &[Role::Admin], HOUR).unwrap())
        });
        let leaf = issue_client_cert(ca, "admin", &[Role::Admin], HOUR).unwrap();
        let now = time::OffsetDateTime::now_utc();
        group.bench_function(format!("verify ({name})"), |b| {
            b.iter(|| verify(&leaf.crt, &ca.crt, now).unwrap())
        });
    }
    group.finish();
}

/// The figure with a target: the median and worst of 100 bundle generations.
fn generate_figure() -> (Duration, Duration) {
    let mut samples: Vec<Duration> = (0..100)
        .map(|_| {
            let start = Instant::now();
            SecretsBundle::generate().unwrap();
            start.elapsed()
        })
        .collect();
    samples.sort();
    (samples[samples.len() / 2], samples[samples.len() - 1])
}

criterion_group!(benches, pki);

fn main() {
    benches();
    let (median, worst) = generate_figure();
    println!(
        "pki/SecretsBundle::generate (100 runs): median {:.2} ms, max {:.2} ms (target <= 100 ms)",
        median.as_secs_f64() * 1e3,
        worst.as_secs_f64() * 1e3,
    );
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
}
