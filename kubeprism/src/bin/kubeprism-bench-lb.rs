//! The balancer alone in its own process, for `make bench` (which measures its memory
//! and compares it with HAProxy):
//! `kubeprism-bench-lb --listen IP:PORT [--ca PEM-FILE] [--copy] [--threads N]
//! [--spin-us MICROSECONDS] --upstream HOST:PORT...`. Prints `listening IP:PORT`, runs
//! until stdin closes. With `--ca`, upstreams are checked over HTTPS (`/readyz`,
//! verified against that CA) with the settings the node ships; without, by TCP connect.

#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{bail, Context};
use basalt_kubeprism::{Balancer, BalancerConfig, Check, HealthConfig, HttpsCheck, ProxyMode};
use tokio::io::AsyncReadExt;

// The balancer serves connections on threads of its own; this runtime only runs the
// health checks.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let mut listen: SocketAddr = "127.0.0.1:7445".parse()?;
    let mut upstreams = Vec::new();
    let mut config = BalancerConfig {
        max_connections: 20_000,
        ..BalancerConfig::default()
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().context("--listen IP:PORT")?.parse()?,
            "--upstream" => upstreams.push(args.next().context("--upstream HOST:PORT")?),
            "--ca" => {
                let path = args.next().context("--ca PEM-FILE")?;
                let pem = std::fs::read(&path).with_context(|| format!("reading {path}"))?;
                let check = HttpsCheck::new(&pem, None)?;
                // What the node's KubePrism controller sets.
                config.health = HealthConfig::with_check(Check::Https(Arc::new(check)));
            }
            "--copy" => config.proxy = ProxyMode::Copy,
            "--threads" => config.threads = args.next().context("--threads N")?.parse()?,
            "--spin-us" => {
                let micros = args.next().context("--spin-us MICROSECONDS")?.parse()?;
                config.spin = std::time::Duration::from_micros(micros);
            }
            other => bail!("unknown argument {other:?}"),
        }
    }
    let balancer = Balancer::bind(listen, config).await?;
    let problems = balancer.set_upstreams(&upstreams).await;
    if !problems.is_empty() {
        bail!("upstreams: {problems:?}");
    }
    println!("listening {}", balancer.local_addr());
    // The parent holds our stdin: when it goes (even killed), so do we.
    let mut sink = [0u8; 64];
    let mut stdin = tokio::io::stdin();
    while stdin.read(&mut sink).await? > 0 {}
    balancer.shutdown().await;
    Ok(())
}
