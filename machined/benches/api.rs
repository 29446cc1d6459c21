//! `make bench` for the Machine API: the node (machined, its own process) against a bare
//! tonic + rustls server answering the same Version message over the same TLS, measured
//! in the same run: unary latency p50/p99 on one connection, calls/s with 64 concurrent
//! clients, and the node's memory with 1,000 open Watch streams.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use apid::listener::{accept, cluster_config};
use apid::{NodeIdentity, RawCodec};
use basalt_api::client::{self, ClientTls, Target};
use basalt_api::machine::v1 as api;
use basalt_api::machine::v1::machine_service_client::MachineServiceClient;
use basalt_api::resource::v1 as rapi;
use basalt_api::resource::v1::resource_service_client::ResourceServiceClient;
use basalt_pki::{issue_client_cert, issue_node_certs, Role, SecretsBundle};
use bytes::Bytes;
use futures::future::BoxFuture;
use prost::Message;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::body::Body;
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::transport::Channel;

const LATENCY_CALLS: usize = 3000;
const CLIENTS: usize = 64;
const LOAD_SECONDS: u64 = 5;
const WATCHES: usize = 1000;

// ---- the bare server: tonic + rustls, one method, no gate, no state ----

#[derive(Clone)]
struct Bare(Bytes);

impl NamedService for Bare {
    const NAME: &'static str = "basalt.machine.v1.MachineService";
}

impl UnaryService<Bytes> for Bare {
    type Response = Bytes;
    type Future = BoxFuture<'static, Result<tonic::Response<Bytes>, tonic::Status>>;

    fn call(&mut self, _request: tonic::Request<Bytes>) -> Self::Future {
        let answer = self.0.clone();
        Box::pin(async move { Ok(tonic::Response::new(answer)) })
    }
}

impl tower::Service<http::Request<Body>> for Bare {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let service = self.clone();
        Box::pin(async move { Ok(Grpc::new(RawCodec).unary(service, request).await) })
    }
}

async fn bare_server(dir: &Path) -> Result<()> {
    let read = |name: &str| std::fs::read_to_string(dir.join(name));
    let identity = NodeIdentity {
        ca: read("ca.crt")?,
        server: basalt_pki::CertAndKey {
            crt: read("server.crt")?,
            key: read("server.key")?,
        },
        peer: basalt_pki::CertAndKey {
            crt: read("server.crt")?,
            key: read("server.key")?,
        },
    };
    let answer = api::VersionResponse {
        messages: vec![api::VersionResult {
            metadata: Some(Default::default()),
            tag: env!("CARGO_PKG_VERSION").into(),
            sha: "unknown".into(),
            rust_version: "unknown".into(),
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
            maintenance: false,
        }],
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    eprintln!("listening {}", listener.local_addr()?);
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let (_, tls) = tokio::sync::watch::channel(cluster_config(&identity)?);
    tokio::spawn(accept(
        listener,
        tls,
        tx,
        Default::default(),
        Default::default(),
    ));
    tonic::transport::Server::builder()
        .add_service(Bare(Bytes::from(answer.encode_to_vec())))
        .serve_with_incoming(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?;
    Ok(())
}

// ---- the bench ----

struct Server {
    child: Child,
    addr: SocketAddr,
}

/// Starts `command` and waits for the address it logs on stderr (`listening ADDR` or
/// `addr=ADDR`).
async fn spawn(mut command: Command) -> Result<Server> {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(child.stderr.take().context("no stderr")?).lines();
    let find = async {
        while let Some(line) = lines.next_line().await? {
            let found = line
                .split_whitespace()
                .find_map(|w| {
                    w.strip_prefix("addr=")
                        .or(w.parse::<SocketAddr>().ok().map(|_| w))
                })
                .and_then(|a| a.parse().ok());
            if let Some(addr) = found {
                return Ok(addr);
            }
        }
        bail!("the server ended without saying where it listens")
    };
    let addr = tokio::time::timeout(Duration::from_secs(30), find)
        .await
        .context("the server did not say where it listens within 30 s")??;
    // Keep draining its log so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Server { child, addr })
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

async fn connect(addr: SocketAddr, tls: &ClientTls) -> Result<Channel> {
    let target = Target::parse(&addr.to_string(), 0)?;
    Ok(client::connect(&target, tls, Duration::from_secs(10)).await?)
}

struct Figures {
    p50: Duration,
    p99: Duration,
    per_second: f64,
}

async fn measure(addr: SocketAddr, tls: &ClientTls) -> Result<Figures> {
    let mut one = MachineServiceClient::new(connect(addr, tls).await?);
    for _ in 0..200 {
        one.version(api::VersionRequest {}).await?;
    }
    let mut samples = Vec::with_capacity(LATENCY_CALLS);
    for _ in 0..LATENCY_CALLS {
        let start = Instant::now();
        one.version(api::VersionRequest {}).await?;
        samples.push(start.elapsed());
    }
    samples.sort();
    let p50 = samples[samples.len() / 2];
    let p99 = samples[samples.len() * 99 / 100];

    let count = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(LOAD_SECONDS);
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let mut client = MachineServiceClient::new(connect(addr, tls).await?);
        let count = count.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < stop {
                if client.version(api::VersionRequest {}).await.is_ok() {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let start = Instant::now();
    for t in tasks {
        t.await?;
    }
    let per_second = count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    Ok(Figures {
        p50,
        p99,
        per_second,
    })
}

async fn watches(node: &Server, tls: &ClientTls) -> Result<(u64, u64)> {
    let idle = rss_kib(node.child.id().context("the node exited")?)?;
    let mut streams = Vec::with_capacity(WATCHES);
    // Spread over connections as real clients would be (and under HTTP/2's stream cap).
    let per_connection = 100;
    for _ in 0..WATCHES.div_ceil(per_connection) {
        let mut client = ResourceServiceClient::new(connect(node.addr, tls).await?);
        for _ in 0..per_connection {
            if streams.len() == WATCHES {
                break;
            }
            let request = rapi::WatchRequest {
                r#type: "machinestatuses".into(),
                bootstrap: true,
                ..Default::default()
            };
            let mut stream = client.watch(request).await?.into_inner();
            stream.message().await?.context("no bootstrap event")?;
            streams.push(stream);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let loaded = rss_kib(node.child.id().context("the node exited")?)?;
    drop(streams);
    Ok((idle, loaded))
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

async fn bench() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let bundle = SecretsBundle::generate()?;
    let options = basalt_machine_config::generate::GenerateOptions {
        cluster_name: "bench".into(),
        endpoint: "https://127.0.0.1:6443".into(),
        install_disk: None,
        admin_validity: Duration::from_secs(3600),
    };
    let config = basalt_machine_config::generate::generate(&bundle, &options)?.controlplane;
    let config_path: PathBuf = dir.path().join("controlplane.yaml");
    std::fs::write(&config_path, config.to_yaml()?)?;
    let certs = issue_node_certs(
        &bundle.certs.os,
        "bare",
        &["127.0.0.1".into()],
        Duration::from_secs(3600),
    )?;
    std::fs::write(dir.path().join("ca.crt"), &bundle.certs.os.crt)?;
    std::fs::write(dir.path().join("server.crt"), &certs.server.crt)?;
    std::fs::write(dir.path().join("server.key"), &certs.server.key)?;
    let admin = issue_client_cert(
        &bundle.certs.os,
        "admin",
        &[Role::Admin],
        Duration::from_secs(3600),
    )?;
    let tls = ClientTls::Mutual {
        ca: bundle.certs.os.crt.clone(),
        crt: admin.crt,
        key: admin.key,
    };

    let mut node_cmd = Command::new(env!("CARGO_BIN_EXE_machined"));
    node_cmd
        .args([
            "--listen",
            "127.0.0.1:0",
            "--mode",
            "cloud",
            "--san",
            "127.0.0.1",
        ])
        .arg("--config")
        .arg(&config_path)
        .args(["--max-calls-per-client", "100000", "--rate", "10000000"])
        .env("RUST_LOG", "warn,machined=info");
    let node = spawn(node_cmd).await?;
    let mut bare_cmd = Command::new(std::env::current_exe()?);
    bare_cmd.env("BASALT_BENCH_BARE", dir.path());
    let bare = spawn(bare_cmd).await?;

    println!(
        "Machine API: unary Version over mTLS (TLS 1.3, P-256 server key, Ed25519 client key)"
    );
    let ours = measure(node.addr, &tls).await?;
    let theirs = measure(bare.addr, &tls).await?;
    let (idle, loaded) = watches(&node, &tls).await?;

    let ratio = |a: f64, b: f64| a / b;
    println!("| figure | node (machined) | bare tonic+rustls | ratio | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| latency p50, 1 connection, {LATENCY_CALLS} calls | {} | {} | {:.2}x | <= 1.25x |",
        ms(ours.p50),
        ms(theirs.p50),
        ratio(ours.p50.as_secs_f64(), theirs.p50.as_secs_f64())
    );
    println!(
        "| latency p99 | {} | {} | {:.2}x | <= 1.25x |",
        ms(ours.p99),
        ms(theirs.p99),
        ratio(ours.p99.as_secs_f64(), theirs.p99.as_secs_f64())
    );
    println!(
        "| calls/s, {CLIENTS} clients, {LOAD_SECONDS} s | {:.0} | {:.0} | {:.2}x | >= 0.8x |",
        ours.per_second,
        theirs.per_second,
        ratio(ours.per_second, theirs.per_second)
    );
    println!("| node RSS idle | {:.1} MiB | | | |", idle as f64 / 1024.0);
    println!(
        "| node RSS with {WATCHES} open Watch streams | {:.1} MiB | | | <= 50 MiB |",
        loaded as f64 / 1024.0
    );
    Ok(())
}

fn main() -> Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    match std::env::var_os("BASALT_BENCH_BARE") {
        Some(dir) => runtime.block_on(bare_server(Path::new(&dir))),
        None => runtime.block_on(bench()),
    }
}
