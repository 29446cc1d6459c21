//! KubePrism against HAProxy and a direct connection, on loopback, in one run:
//! throughput of one long stream (iperf3), new connections per second, added latency of
//! a small request/response, failover under load when a backend dies, and memory with
//! 10,000 idle proxied connections. Each figure is printed beside HAProxy's and the
//! direct one, as a ratio. Run with `make bench` (or `cargo bench -p basalt-kubeprism`).

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use basalt_kubeprism::testing::{echo_stream, get, Mode, TestBackend, TestCa, TlsLoad};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

const IPERF_SECONDS: u32 = 4;
const RATE_WINDOW: Duration = Duration::from_secs(1);
const RATE_ROUNDS: u32 = 9;
const RATE_CONCURRENCY: usize = 16;
const PINGS: usize = 24_000;
const PING_ROUND: usize = 1000;
const IDLE_CONNECTIONS: usize = 10_000;
/// The hard RLIMIT_NOFILE here is 20,000 and cannot be raised (no CAP_SYS_RESOURCE), and
/// a proxy needs two descriptors a connection: RSS is measured at these two counts and
/// extrapolated (linearly) to [`IDLE_CONNECTIONS`].
const IDLE_STEPS: [usize; 2] = [4_000, 9_000];

/// A proxy under test: its address for the HTTP backends and for iperf3.
struct Target {
    name: &'static str,
    http: Vec<SocketAddr>,
    iperf: SocketAddr,
    pid: Option<u32>,
}

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        // `cargo bench -- --list` (and nextest) expect no output here.
        return Ok(());
    }
    raise_nofile()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

/// Raises the soft RLIMIT_NOFILE to the hard one (children inherit it).
fn raise_nofile() -> Result<()> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let hard = getrlimit(Resource::Nofile).maximum;
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: hard,
            maximum: hard,
        },
    )
    .context("raising RLIMIT_NOFILE")?;
    let need = 2 * IDLE_STEPS[1] as u64 + 1000;
    if hard.is_some_and(|h| h < need) {
        bail!("RLIMIT_NOFILE hard limit {hard:?} is below {need}");
    }
    Ok(())
}

async fn run() -> Result<()> {
    for tool in ["haproxy", "iperf3"] {
        if which(tool).is_none() {
            bail!("{tool} is missing: run hack/setup.sh");
        }
    }
    let ca = TestCa::new()?;
    let mut backends = Vec::new();
    for i in 0..3 {
        backends.push(TestBackend::start(&format!("b{i}"), &ca).await?);
    }
    let upstreams: Vec<String> = backends.iter().map(TestBackend::upstream).collect();
    let iperf_port = free_port()?;
    let _iperf = spawn(Command::new("iperf3").args(["-s", "-p", &iperf_port.to_string()]))?;
    let iperf_addr = SocketAddr::from(([127, 0, 0, 1], iperf_port));
    // Not probed with a connection: iperf3 would log a failed test for each.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Ours checks the HTTP backends as the node checks API servers (HTTPS `/readyz`
    // with the cluster CA); iperf3 speaks no HTTPS, so its balancers check by TCP.
    let ca_dir = tempfile::tempdir()?;
    let ca_path = ca_dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca.pem())?;
    let ca_file = Some(ca_path.as_path());
    let (_ours, ours_addr, ours_pid) = start_ours(&upstreams, ca_file, false).await?;
    let (_ours_iperf, ours_iperf, _) = start_ours(&[iperf_addr.to_string()], None, false).await?;
    let (_copy_iperf, copy_iperf, _) = start_ours(&[iperf_addr.to_string()], None, true).await?;
    let (_copy, copy_addr, _) = start_ours(&upstreams, ca_file, true).await?;
    let (_haproxy, _cfg, haproxy_addr, haproxy_iperf, haproxy_pid) =
        start_haproxy(&upstreams, iperf_addr, HaproxyChecks::Default).await?;

    let targets = [
        Target {
            name: "ours",
            http: vec![ours_addr],
            iperf: ours_iperf,
            pid: Some(ours_pid),
        },
        Target {
            name: "haproxy",
            http: vec![haproxy_addr],
            iperf: haproxy_iperf,
            pid: Some(haproxy_pid),
        },
        Target {
            name: "direct",
            http: backends.iter().map(TestBackend::addr).collect(),
            iperf: iperf_addr,
            pid: None,
        },
        // Ours copying through user space instead of splicing: the alternative, measured.
        Target {
            name: "ours-copy",
            http: vec![copy_addr],
            iperf: copy_iperf,
            pid: None,
        },
    ];

    let mut results = Results::default();
    for t in targets.iter().filter(|_| wants("throughput")) {
        let gbps = iperf(t.iperf).await?;
        println!("{:8} throughput {gbps:.2} Gbit/s", t.name);
        results.throughput.push(gbps);
    }
    if wants("rate") {
        measure_rate(&targets, [ours_pid, haproxy_pid], &mut results).await?;
    }
    if wants("latency") {
        measure_latency(&targets, &mut results).await?;
    }
    for t in targets[..2].iter().filter(|_| wants("failover")) {
        let f = failover(t.http[0], &backends[0]).await?;
        println!(
            "{:8} failover: {} failed new connections over {:?}; {} in flight on the killed backend",
            t.name, f.failed, f.span, f.in_flight
        );
        results.failover.push(f);
    }
    if wants("hang") {
        // HAProxy with checks tuned for a fast failover: HTTPS `/readyz` every 200 ms,
        // out after 2 failures (each timing out after 200 ms); once balancing by least
        // connections as ours does (one client stuck on the hung server is then enough
        // to steer the others away), once round robin (its default).
        let mut proxies = vec![("ours", ours_addr, None)];
        for balance in ["leastconn", "roundrobin"] {
            let tuned = HaproxyChecks::Tuned {
                ca: &ca_path,
                balance,
            };
            let (child, cfg, addr, _, _) = start_haproxy(&upstreams, iperf_addr, tuned).await?;
            proxies.push((balance, addr, Some((child, cfg))));
        }
        let tls = Arc::clone(&basalt_kubeprism::HttpsCheck::new(ca.pem().as_bytes(), None)?.tls);
        for (name, addr, _) in &proxies {
            let h = hang(*addr, &backends[0], &tls).await?;
            println!(
                "{name:10} hang: {} of {} new clients failed; last failure {} ms after the hang began; slowest answer {} ms",
                h.failed,
                h.clients,
                h.last_failure.map_or("-".into(), |d| d.as_millis().to_string()),
                h.slowest.as_millis()
            );
            results.hang.push(h);
        }
    }
    for t in targets[..2].iter().filter(|_| wants("memory")) {
        let pid = t.pid.context("a proxy has a pid")?;
        let (measured, mib) = idle_memory(t.http[0], pid, &backends).await?;
        println!(
            "{:8} RSS with {IDLE_STEPS:?} idle connections: {measured:.1?} MiB; at {IDLE_CONNECTIONS} (extrapolated): {mib:.1} MiB",
            t.name
        );
        results.memory.push(mib);
    }
    results.print();
    Ok(())
}

#[derive(Default)]
struct Results {
    /// ours, haproxy, direct, ours with copy
    throughput: Vec<f64>,
    /// per target, the median of its per-round rates
    rate: Vec<f64>,
    /// the median of the per-round ratios ours / HAProxy
    rate_ratio: f64,
    /// ours, haproxy: CPU time (user + system) per connection in the rate test, µs
    cpu_per_connection: Vec<f64>,
    /// ours, haproxy: context switches of the proxy's threads per connection, same test
    switches_per_connection: Vec<f64>,
    /// p50, p99 (median of the per-round p99s), p99 over all samples
    latency: Vec<(f64, f64, f64)>,
    /// ours, haproxy
    failover: Vec<Failover>,
    /// ours, haproxy with tuned checks (leastconn, roundrobin)
    hang: Vec<Hang>,
    memory: Vec<f64>,
}

impl Results {
    fn print(&self) {
        let met = |ok: bool| if ok { "yes" } else { "**no**" };
        let [t_ours, t_ha, t_direct, t_copy] = self.throughput[..] else {
            return;
        };
        let [r_ours, r_ha, r_direct, r_copy] = self.rate[..] else {
            return;
        };
        let [c_ours, c_ha] = self.cpu_per_connection[..] else {
            return;
        };
        let [cs_ours, cs_ha] = self.switches_per_connection[..] else {
            return;
        };
        let [(p50_ours, p99_ours, all_ours), (p50_ha, p99_ha, all_ha), (p50_direct, p99_direct, all_direct), (p50_copy, p99_copy, _)] =
            self.latency[..]
        else {
            return;
        };
        let [f_ours, f_ha] = self.failover[..] else {
            return;
        };
        let [h_ours, h_ha, h_ha_rr] = self.hang[..] else {
            return;
        };
        let [m_ours, m_ha] = self.memory[..] else {
            return;
        };
        let (a50_ours, a99_ours) = (p50_ours - p50_direct, p99_ours - p99_direct);
        let (a50_ha, a99_ha) = (p50_ha - p50_direct, p99_ha - p99_direct);
        let failover = |f: Failover| {
            let new = if f.failed == 0 {
                "0 failed".to_string()
            } else {
                format!("{} failed over {} ms", f.failed, f.span.as_millis())
            };
            format!("{new} ({} in flight on it)", f.in_flight)
        };
        println!();
        println!("| figure | ours | HAProxy | direct | ours / HAProxy | target | met? |");
        println!("|---|---|---|---|---|---|---|");
        println!(
            "| one-stream throughput (iperf3, Gbit/s) | {t_ours:.2} | {t_ha:.2} | {t_direct:.2} | {:.2} | ≥ 0.9 | {} |",
            t_ours / t_ha,
            met(t_ours >= 0.9 * t_ha)
        );
        println!(
            "| same, ours in copy mode (user-space buffers) instead of splice | {t_copy:.2} | | | {:.2} | (info) | |",
            t_copy / t_ha
        );
        println!(
            "| new connections/s ({RATE_CONCURRENCY} clients, request + answer each; median of {RATE_ROUNDS} rounds; ratio: median of the per-round ratios) | {r_ours:.0} | {r_ha:.0} | {r_direct:.0} | {:.2} | ≥ 1.0 | {} |",
            self.rate_ratio,
            met(self.rate_ratio >= 1.0)
        );
        println!(
            "| same, ours in copy mode | {r_copy:.0} | | | {:.2} | (info) | |",
            r_copy / r_ha
        );
        println!(
            "| proxy CPU time (user + system) per connection in that test (µs) | {c_ours:.1} | {c_ha:.1} | | {:.2} | (info) | |",
            c_ours / c_ha
        );
        println!(
            "| proxy context switches per connection in that test | {cs_ours:.2} | {cs_ha:.2} | | {:.2} | (info) | |",
            cs_ours / cs_ha
        );
        println!(
            "| added latency p50 (64 B round trip, µs) | {a50_ours:.1} | {a50_ha:.1} | 0 ({p50_direct:.1} total) | {:.2} | (info) | |",
            a50_ours / a50_ha
        );
        println!(
            "| added latency p99 (µs; median of {} per-round p99s of {PING_ROUND} round trips) | {a99_ours:.1} | {a99_ha:.1} | 0 ({p99_direct:.1} total) | {:.2} | ≤ 1.0 | {} |",
            PINGS / PING_ROUND - 1,
            a99_ours / a99_ha,
            met(a99_ours <= a99_ha)
        );
        println!(
            "| same, p99 over all {} round trips (µs) | {:.1} | {:.1} | 0 ({all_direct:.1} total) | {:.2} | (info) | |",
            PINGS - PING_ROUND,
            all_ours - all_direct,
            all_ha - all_direct,
            (all_ours - all_direct) / (all_ha - all_direct)
        );
        println!(
            "| added latency p50 / p99, ours in copy mode (µs) | {:.1} / {:.1} | | | | (info) | |",
            p50_copy - p50_direct,
            p99_copy - p99_direct
        );
        println!(
            "| failover: connections started after the kill that failed, first to last (requests in flight on the killed backend) | {} | {} | | | no failed new connection | {} |",
            failover(f_ours),
            failover(f_ha),
            met(f_ours.failed == 0)
        );
        let hang = |h: Hang| {
            let pct = 100.0 * h.failed as f64 / h.clients.max(1) as f64;
            format!(
                "{} of {} ({pct:.1} %), slowest answer {} ms",
                h.failed,
                h.clients,
                h.slowest.as_millis()
            )
        };
        println!(
            "| hang: one of three backends stops answering (TCP still accepted) for {} s under {} new TLS clients/s and {WATCHES} long-lived connections: new clients failed (ours: HTTPS checks as the node ships them; HAProxy: `check-ssl`, `inter 200ms fall 2`, leastconn) | {} | {} | | | ≤ 1 % | {} |",
            HANG.as_secs(),
            Duration::from_secs(1).as_micros() / HANG_EVERY.as_micros(),
            hang(h_ours),
            hang(h_ha),
            met(h_ours.failed * 100 <= h_ours.clients)
        );
        println!(
            "| same, HAProxy balancing round robin | | {} | | | (info) | |",
            hang(h_ha_rr),
        );
        println!(
            "| RSS with {IDLE_CONNECTIONS} idle proxied connections (MiB, extrapolated from {IDLE_STEPS:?}) | {m_ours:.1} | {m_ha:.1} | | {:.2} | ≤ 64 MiB | {} |",
            m_ours / m_ha,
            met(m_ours <= 64.0)
        );
    }
}

/// Whether this run measures `part`: all of them unless `KUBEPRISM_BENCH_ONLY` lists
/// some (comma-separated: throughput, rate, latency, failover, hang, memory). The summary
/// table is printed only when all are measured.
fn wants(part: &str) -> bool {
    match std::env::var("KUBEPRISM_BENCH_ONLY") {
        Ok(only) => only.split(',').any(|p| p.trim() == part),
        Err(_) => true,
    }
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(tool))
        .find(|p| p.exists())
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn spawn(cmd: &mut Command) -> Result<Child> {
    cmd.kill_on_drop(true)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))
}

async fn wait_listening(addr: SocketAddr) -> Result<()> {
    let started = Instant::now();
    while TcpStream::connect(addr).await.is_err() {
        if started.elapsed() > Duration::from_secs(10) {
            bail!("nothing listens on {addr}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Starts our balancer process; returns it (stdin held: it exits when dropped), its
/// address and pid.
async fn start_ours(
    upstreams: &[String],
    ca: Option<&std::path::Path>,
    copy: bool,
) -> Result<(Child, SocketAddr, u32)> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kubeprism-bench-lb"));
    cmd.args(["--listen", "127.0.0.1:0"]);
    if let Some(ca) = ca {
        cmd.arg("--ca").arg(ca);
    }
    if copy {
        cmd.arg("--copy");
    }
    // Serving threads: one per core unless KUBEPRISM_BENCH_THREADS says otherwise.
    if let Ok(threads) = std::env::var("KUBEPRISM_BENCH_THREADS") {
        cmd.args(["--threads", &threads]);
    }
    // Spinning after activity: the default unless KUBEPRISM_BENCH_SPIN_US says otherwise
    // (0 turns it off).
    if let Ok(micros) = std::env::var("KUBEPRISM_BENCH_SPIN_US") {
        cmd.args(["--spin-us", &micros]);
    }
    for u in upstreams {
        cmd.args(["--upstream", u]);
    }
    let mut child = cmd
        .kill_on_drop(true)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting kubeprism-bench-lb")?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).await?;
    let addr = line
        .trim()
        .strip_prefix("listening ")
        .with_context(|| format!("unexpected output {line:?}"))?
        .parse()?;
    let pid = child.id().context("pid")?;
    Ok((child, addr, pid))
}

/// How HAProxy checks its servers.
enum HaproxyChecks<'a> {
    /// `check`: TCP connect every 2 s, down after 3 failures, up after 2; `leastconn`.
    Default,
    /// HTTPS `/readyz` verified against `ca`, every 200 ms, down after 2 failures, up
    /// after 2, balancing by `balance`.
    Tuned {
        ca: &'a std::path::Path,
        balance: &'static str,
    },
}

/// Starts HAProxy with `checks` in front of the backends, and a second frontend for
/// iperf3. It splices (`option splice-auto`), as ours does: the throughput compared is
/// zero-copy to zero-copy. Its pipes are capped at 256, as ours are, so that 2 × maxconn plus the
/// pipes fit in the descriptor limit here (20,000).
async fn start_haproxy(
    upstreams: &[String],
    iperf: SocketAddr,
    checks: HaproxyChecks<'_>,
) -> Result<(Child, tempfile::TempDir, SocketAddr, SocketAddr, u32)> {
    let (http, iperf_front) = (free_port()?, free_port()?);
    let (balance, httpchk, checks) = match checks {
        HaproxyChecks::Default => ("leastconn", "", "check".to_string()),
        HaproxyChecks::Tuned { ca, balance } => (
            balance,
            "    option httpchk GET /readyz\n",
            format!(
                "check check-ssl verify required ca-file {} inter 200ms fall 2 rise 2",
                ca.display()
            ),
        ),
    };
    let servers: String = upstreams
        .iter()
        .enumerate()
        .map(|(i, u)| format!("    server s{i} {u} {checks}\n"))
        .collect();
    let config = format!(
        "global\n    maxconn 9300\n    maxpipes 256\n\ndefaults\n    mode tcp\n    option splice-auto\n    maxconn 9300\n    timeout connect 5s\n    timeout client 10m\n    timeout server 10m\n\n\
         frontend api\n    bind 127.0.0.1:{http}\n    default_backend apiservers\n\n\
         backend apiservers\n    balance {balance}\n{httpchk}{servers}\n\
         frontend iperf\n    bind 127.0.0.1:{iperf_front}\n    default_backend iperf\n\n\
         backend iperf\n    server iperf {iperf}\n"
    );
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, config)?;
    let log = dir.path().join("haproxy.log");
    let child = Command::new("haproxy")
        .arg("-f")
        .arg(&path)
        .arg("-db")
        .kill_on_drop(true)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("starting haproxy")?;
    let http = SocketAddr::from(([127, 0, 0, 1], http));
    let iperf_front = SocketAddr::from(([127, 0, 0, 1], iperf_front));
    if let Err(e) = wait_listening(http).await {
        bail!("{e}; haproxy says: {}", std::fs::read_to_string(&log)?);
    }
    let pid = child.id().context("pid")?;
    Ok((child, dir, http, iperf_front, pid))
}

async fn iperf(addr: SocketAddr) -> Result<f64> {
    match iperf_once(addr).await {
        Ok(gbps) => Ok(gbps),
        Err(e) => {
            // iperf3's server now and then drops a test's control connection as it
            // starts ("control socket has closed unexpectedly"): once more.
            println!("  (iperf3 failed, once more: {e:#})");
            tokio::time::sleep(Duration::from_secs(1)).await;
            iperf_once(addr).await
        }
    }
}

async fn iperf_once(addr: SocketAddr) -> Result<f64> {
    let out = Command::new("iperf3")
        .args(["-c", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(["-t", &IPERF_SECONDS.to_string(), "-J"])
        .output()
        .await?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("iperf3 output: {}", String::from_utf8_lossy(&out.stderr)))?;
    let bps = json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("iperf3 result: {}", json["error"]))?;
    // The server serves one test at a time: let it settle.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(bps / 1e9)
}

/// New connections a second through each target: [`RATE_ROUNDS`] rounds of
/// [`RATE_WINDOW`] each. Each round runs every target once, and the order turns by one
/// from round to round, so that no target always follows the same one (the one before
/// leaves sockets in TIME_WAIT and work for the kernel) and load from outside the bench
/// (the cores are shared) falls on all of them alike.
async fn measure_rate(targets: &[Target], pids: [u32; 2], results: &mut Results) -> Result<()> {
    let mut per_round: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    let cpu_before = [cpu_ticks(pids[0])?, cpu_ticks(pids[1])?];
    let switches_before = [context_switches(pids[0])?, context_switches(pids[1])?];
    // Per target: CPU time of the whole machine and of this process (the clients and
    // the backends) during its rounds, in ticks.
    let mut machine = vec![0u64; targets.len()];
    let mut bench = vec![0u64; targets.len()];
    let me = std::process::id();
    for round in 0..RATE_ROUNDS as usize {
        for i in (0..targets.len()).map(|i| (i + round) % targets.len()) {
            let before = (busy_ticks()?, cpu_ticks(me)?);
            let done = connection_rate(&targets[i].http).await?;
            machine[i] += busy_ticks()? - before.0;
            bench[i] += cpu_ticks(me)? - before.1;
            per_round[i].push(done as f64 / RATE_WINDOW.as_secs_f64());
        }
    }
    let cpu_after = [cpu_ticks(pids[0])?, cpu_ticks(pids[1])?];
    let switches_after = [context_switches(pids[0])?, context_switches(pids[1])?];
    for i in 0..2 {
        let ticks = cpu_after[i] - cpu_before[i];
        let connections: f64 = per_round[i].iter().sum::<f64>() * RATE_WINDOW.as_secs_f64();
        results
            .cpu_per_connection
            .push(ticks as f64 * 1e6 / ticks_per_second() / connections);
        results
            .switches_per_connection
            .push(switches_after[i].saturating_sub(switches_before[i]) as f64 / connections);
    }
    for (i, (t, rates)) in targets.iter().zip(&per_round).enumerate() {
        let mut sorted = rates.clone();
        let median = quantile(&mut sorted, 0.5);
        let connections: f64 = rates.iter().sum::<f64>() * RATE_WINDOW.as_secs_f64();
        let per_connection = |ticks: u64| ticks as f64 * 1e6 / ticks_per_second() / connections;
        println!(
            "{:9} {median:.0} connections/s (median of {rates:.0?}); CPU µs a connection: machine {:.1}, clients and backends {:.1}",
            t.name,
            per_connection(machine[i]),
            per_connection(bench[i]),
        );
        results.rate.push(median);
    }
    // Ours and HAProxy ran one after the other in every round: the ratio within a round
    // is the fairest comparison.
    let mut ratios: Vec<f64> = per_round[0]
        .iter()
        .zip(&per_round[1])
        .map(|(o, h)| o / h)
        .collect();
    let median = quantile(&mut ratios, 0.5);
    println!("ours / haproxy per round: {ratios:.2?}, median {median:.2}");
    println!(
        "CPU µs per connection ours {:.1} haproxy {:.1}; context switches per connection ours {:.2} haproxy {:.2}",
        results.cpu_per_connection[0],
        results.cpu_per_connection[1],
        results.switches_per_connection[0],
        results.switches_per_connection[1]
    );
    results.rate_ratio = median;
    Ok(())
}

/// Short connections (connect, `GET /name`, answer, close) completed in [`RATE_WINDOW`].
async fn connection_rate(addrs: &[SocketAddr]) -> Result<u64> {
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + RATE_WINDOW;
    let mut tasks = Vec::new();
    for i in 0..RATE_CONCURRENCY {
        let (done, errors, addrs) = (Arc::clone(&done), Arc::clone(&errors), addrs.to_vec());
        tasks.push(tokio::spawn(async move {
            let mut n = i;
            while Instant::now() < deadline {
                n += 1;
                match get(addrs[n % addrs.len()], "/name").await {
                    Ok((200, _)) => done.fetch_add(1, Ordering::Relaxed),
                    _ => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let errors = errors.load(Ordering::Relaxed);
    if errors > 0 {
        println!("  ({errors} failed connections)");
    }
    Ok(done.load(Ordering::Relaxed))
}

/// Added latency: round trips of 64 bytes on an established stream through each target,
/// in rounds that alternate between the targets.
async fn measure_latency(targets: &[Target], results: &mut Results) -> Result<()> {
    let mut streams = Vec::new();
    for t in targets {
        let (s, _) = echo_stream(t.http[0]).await?;
        s.set_nodelay(true)?;
        streams.push(s);
    }
    // Per target, the samples of each round.
    let mut rounds: Vec<Vec<Vec<f64>>> = vec![Vec::new(); targets.len()];
    for round in 0..PINGS / PING_ROUND {
        for (s, rounds) in streams.iter_mut().zip(&mut rounds) {
            let samples = ping(s, PING_ROUND).await?;
            // The first round warms up caches and the scheduler.
            if round > 0 {
                rounds.push(samples);
            }
        }
    }
    for (t, rounds) in targets.iter().zip(&mut rounds) {
        let mut all: Vec<f64> = rounds.iter().flatten().copied().collect();
        let p99_all = quantile(&mut all, 0.99);
        let p50 = quantile(&mut all, 0.5);
        // A burst of outside load (the cores are shared with builds) ruins whichever
        // round it lands in: the p99 compared is the median of the per-round p99s.
        let mut p99s: Vec<f64> = rounds.iter_mut().map(|r| quantile(r, 0.99)).collect();
        let p99 = quantile(&mut p99s, 0.5);
        println!(
            "{:9} round trip p50 {p50:.1} µs, p99 {p99:.1} µs (median of per-round p99s; over all samples {p99_all:.1} µs)",
            t.name
        );
        results.latency.push((p50, p99, p99_all));
    }
    Ok(())
}

fn quantile(samples: &mut [f64], q: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[((samples.len().max(1) - 1) as f64 * q) as usize]
}

/// `n` round trips of 64 bytes on an established stream, in microseconds.
async fn ping(s: &mut TcpStream, n: usize) -> Result<Vec<f64>> {
    let payload = [7u8; 64];
    let mut back = [0u8; 64];
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        s.write_all(&payload).await?;
        s.read_exact(&mut back).await?;
        samples.push(started.elapsed().as_secs_f64() * 1e6);
    }
    Ok(samples)
}

/// What became of the clients when a backend died under them.
#[derive(Clone, Copy)]
struct Failover {
    /// Requests started before the backend was dead: those it had taken die with it.
    in_flight: usize,
    /// Connections started after the kill that failed.
    failed: usize,
    /// From the first of those to the last.
    span: Duration,
}

/// Kills `victim` under a load of short connections, counting the failed ones. Revives
/// it afterwards.
async fn failover(addr: SocketAddr, victim: &TestBackend) -> Result<Failover> {
    let stop = Arc::new(AtomicBool::new(false));
    // When each failed connection started, and when it failed.
    let failures: Arc<Mutex<Vec<(Instant, Instant)>>> = Arc::default();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (stop, failures) = (Arc::clone(&stop), Arc::clone(&failures));
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                if !matches!(get(addr, "/name").await, Ok((200, _))) {
                    failures.lock().unwrap().push((started, Instant::now()));
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    victim.kill().await;
    // Dead from here on (listener closed, connections dropped): a connection started
    // while it was dying may have reached it, and counts as in flight.
    let killed = Instant::now();
    // HAProxy's default checks need 3 × 2 s to take a server out.
    tokio::time::sleep(Duration::from_secs(9)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    victim.revive().await?;
    // Back in every proxy's rotation (HAProxy: 2 checks 2 s apart) before the next run.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let failures = failures.lock().unwrap();
    let (new, in_flight): (Vec<_>, Vec<_>) = failures.iter().partition(|(s, _)| *s >= killed);
    let span = match (new.first(), new.last()) {
        (Some((_, first)), Some((_, last))) => *last - *first,
        _ => Duration::ZERO,
    };
    Ok(Failover {
        in_flight: in_flight.len(),
        failed: new.len(),
        span,
    })
}

/// How long the hang lasts, and how often a new client comes meanwhile.
const HANG: Duration = Duration::from_secs(5);
const HANG_EVERY: Duration = Duration::from_millis(5);
/// Long-lived connections held through the proxy meanwhile.
const WATCHES: usize = 30;

#[derive(Debug, Clone, Copy)]
struct Hang {
    /// Clients started during the hang, and how many of them failed.
    clients: usize,
    failed: usize,
    /// The last failed client's end, after the hang began.
    last_failure: Option<Duration>,
    /// The slowest answer a client started during the hang got.
    slowest: Duration,
}

/// Hangs `victim` (connections accepted, nothing read or answered) for [`HANG`] under a
/// steady stream of new TLS clients through `addr`, counting the clients that failed.
async fn hang(
    addr: SocketAddr,
    victim: &TestBackend,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<Hang> {
    // Long-lived connections on every backend, as kubelet's and controllers' watches
    // are: without them, one client stuck on the hung backend would be enough for a
    // least-connections choice to send every other client elsewhere.
    let mut streams = Vec::new();
    for _ in 0..WATCHES {
        streams.push(echo_stream(addr).await?);
    }
    let load = TlsLoad::start(addr, Arc::clone(tls), HANG_EVERY, Duration::from_secs(2));
    tokio::time::sleep(Duration::from_secs(1)).await;
    victim.set_mode(Mode::Hang);
    let hung = Instant::now();
    tokio::time::sleep(HANG).await;
    victim.set_mode(Mode::Ready);
    let recovered = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let outcomes = load.stop().await;
    drop(streams);
    // Back in every proxy's rotation before the next run.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during: Vec<_> = outcomes
        .iter()
        .filter(|o| o.started >= hung && o.started < recovered)
        .collect();
    let failed: Vec<_> = during.iter().filter(|o| o.result.is_err()).collect();
    Ok(Hang {
        clients: during.len(),
        failed: failed.len(),
        last_failure: failed.iter().map(|o| o.started + o.took - hung).max(),
        slowest: during
            .iter()
            .filter(|o| o.result.is_ok())
            .map(|o| o.took)
            .max()
            .unwrap_or_default(),
    })
}

/// RSS of `pid` with each of [`IDLE_STEPS`] idle connections proxied through `addr`,
/// in MiB, and the figure extrapolated to [`IDLE_CONNECTIONS`].
async fn idle_memory(
    addr: SocketAddr,
    pid: u32,
    backends: &[TestBackend],
) -> Result<([f64; 2], f64)> {
    let served = || backends.iter().map(TestBackend::connections).sum::<u64>();
    let before = served();
    let mut conns = Vec::with_capacity(IDLE_STEPS[1]);
    let mut measured = [0.0; 2];
    for (step, &n) in IDLE_STEPS.iter().enumerate() {
        while conns.len() < n {
            // Small batches, each served before the next: the backends share the bench's
            // two cores, and an overflowing accept queue would drop connections.
            let batch = (n - conns.len()).min(100);
            let batch: Vec<_> = (0..batch).map(|_| TcpStream::connect(addr)).collect();
            for c in futures::future::join_all(batch).await {
                conns.push(c?);
            }
            let started = Instant::now();
            while served() < before + conns.len() as u64 {
                if started.elapsed() > Duration::from_secs(10) {
                    bail!(
                        "only {} of {} connections reached a backend",
                        served() - before,
                        conns.len()
                    );
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        measured[step] = rss_mib(pid)?;
    }
    drop(conns);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let per_connection = (measured[1] - measured[0]) / (IDLE_STEPS[1] - IDLE_STEPS[0]) as f64;
    let extrapolated = measured[1] + per_connection * (IDLE_CONNECTIONS - IDLE_STEPS[1]) as f64;
    Ok((measured, extrapolated))
}

/// CPU time (user + system, all threads) `pid` has used, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces), from field 3 (state) on.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("/proc/PID/stat")?
        .1
        .split_whitespace()
        .collect();
    let field = |n: usize| -> Result<u64> {
        Ok(fields.get(n - 3).context("/proc/PID/stat field")?.parse()?)
    };
    Ok(field(14)? + field(15)?)
}

/// CPU time of the whole machine not spent idle so far, in ticks (`/proc/stat`).
fn busy_ticks() -> Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let cpu: Vec<u64> = stat
        .lines()
        .next()
        .context("/proc/stat")?
        .split_whitespace()
        .skip(1)
        // user nice system idle iowait irq softirq steal: guest and guest_nice, after
        // them, are counted in user and nice already.
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let idle = cpu.get(3).copied().unwrap_or(0) + cpu.get(4).copied().unwrap_or(0);
    Ok(cpu.iter().sum::<u64>() - idle)
}

/// Context switches (voluntary and not) of all of a process's threads so far.
fn context_switches(pid: u32) -> Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let status = std::fs::read_to_string(task?.path().join("status"))?;
        for line in status.lines() {
            if let Some((key, value)) = line.split_once(':') {
                if key.ends_with("ctxt_switches") {
                    total += value.trim().parse::<u64>()?;
                }
            }
        }
    }
    Ok(total)
}

fn ticks_per_second() -> f64 {
    rustix::param::clock_ticks_per_second() as f64
}

fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS")?;
    Ok(kib / 1024.0)
}
