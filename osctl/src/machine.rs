//! The machine service commands: config, version, services, logs, power, system views,
//! files and events. Every answer is printed per node; a node's error is printed and
//! makes the command fail, after the other nodes' answers.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result};
use basalt_api::machine::v1 as api;
use basalt_api::machine::v1::machine_service_client::MachineServiceClient;
use clap::{Subcommand, ValueEnum};
use tonic::Streaming;

use crate::connect::{Connection, Failures};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ApplyModeArg {
    Auto,
    NoReboot,
    Reboot,
    Staged,
    Try,
}

impl From<ApplyModeArg> for api::ApplyMode {
    fn from(m: ApplyModeArg) -> Self {
        match m {
            ApplyModeArg::Auto => api::ApplyMode::Auto,
            ApplyModeArg::NoReboot => api::ApplyMode::NoReboot,
            ApplyModeArg::Reboot => api::ApplyMode::Reboot,
            ApplyModeArg::Staged => api::ApplyMode::Staged,
            ApplyModeArg::Try => api::ApplyMode::Try,
        }
    }
}

/// How a config is applied: `apply-config`, `patch` and `edit` share these.
#[derive(Debug, Clone, clap::Args)]
pub struct ApplyArgs {
    #[arg(long, value_enum, default_value = "auto")]
    pub mode: ApplyModeArg,
    /// Show what would change; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// For --mode try: revert unless confirmed within this long (e.g. 1m, 30s).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1m")]
    pub timeout: Duration,
}

impl ApplyArgs {
    /// The request applying `data`; `base_digest` names the config it was made from.
    pub fn request(&self, data: Vec<u8>, base_digest: String) -> api::ApplyConfigurationRequest {
        api::ApplyConfigurationRequest {
            data,
            mode: api::ApplyMode::from(self.mode) as i32,
            dry_run: self.dry_run,
            try_timeout: prost_types::Duration::try_from(self.timeout).ok(),
            base_digest,
        }
    }

    /// Prints a node's answer: the plan (and with --dry-run its diff), then warnings.
    pub fn print(&self, node: &str, result: &api::ApplyConfigurationResult) {
        if self.dry_run {
            println!("{node}: dry run: {}\n{}", result.mode_details, result.diff);
        } else {
            println!("{node}: {}", result.mode_details);
        }
        for w in &result.warnings {
            eprintln!("{node}: warning: {w}");
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ServiceAction {
    Start,
    Stop,
    Restart,
}

#[derive(Debug, Clone, Subcommand)]
pub enum MachineCmd {
    /// Client and server versions.
    Version,
    /// Each node's clock, and how far it is from this machine's.
    Time,
    /// Apply a machine configuration to the nodes.
    ApplyConfig {
        #[arg(long, short)]
        file: PathBuf,
        #[command(flatten)]
        apply: ApplyArgs,
    },
    /// List the services.
    Services,
    /// Start, stop or restart a service.
    Service { id: String, action: ServiceAction },
    /// A service's logs.
    Logs {
        id: String,
        #[arg(long, short)]
        follow: bool,
        /// Only the last N lines.
        #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
        tail: i32,
    },
    /// The kernel log.
    Dmesg {
        #[arg(long, short)]
        follow: bool,
        #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
        tail: i32,
    },
    /// Reboot the nodes (their services stop first).
    Reboot {
        /// Power-cycle instead of a warm reboot.
        #[arg(long)]
        powercycle: bool,
    },
    /// Power the nodes off.
    Shutdown {
        /// Skip stopping services gracefully.
        #[arg(long)]
        force: bool,
    },
    /// Wipe the node back to its first boot.
    Reset {
        /// Leave etcd first.
        #[arg(long)]
        graceful: bool,
        /// Reboot afterwards instead of powering off.
        #[arg(long)]
        reboot: bool,
        /// Only these partition labels.
        #[arg(long)]
        wipe: Vec<String>,
    },
    /// Print a file.
    Read { path: String },
    /// List a directory.
    #[command(name = "ls", alias = "list")]
    Ls {
        path: String,
        #[arg(long, short)]
        recurse: bool,
        /// With --recurse: at most this deep (0: no limit).
        #[arg(long, default_value_t = 0)]
        depth: i32,
    },
    /// The nodes' processes: state, threads, CPU time, memory, command line.
    Processes,
    /// The nodes' memory: total, free, available, buffers, cache, swap.
    Memory,
    /// The nodes' mounted filesystems and their use.
    Mounts,
    /// The nodes' block devices.
    Disks,
    /// The nodes' TCP and UDP sockets and the processes holding them (connected ones
    /// without -l or -a).
    Netstat {
        /// Only listening sockets (TCP listeners, unconnected UDP sockets).
        #[arg(long, short, conflicts_with = "all")]
        listening: bool,
        /// Every socket.
        #[arg(long, short)]
        all: bool,
    },
    /// The node's events: config, services, power, audit.
    Events {
        /// Replay the last N first (-1: all kept).
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        tail: i32,
        /// Stop after this long (e.g. 10s, 5m); follow until interrupted without it.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
    },
}

/// Streams bytes per node to standard output, prefixed by the node when there are
/// several.
async fn print_data(connection: &Connection, mut stream: Streaming<api::Data>) -> Result<()> {
    let mut failures = Failures::default();
    let prefix = connection.nodes.len() > 1;
    let mut out = std::io::stdout().lock();
    while let Some(message) = stream.message().await? {
        if failures.check(connection, &message.metadata) {
            continue;
        }
        if prefix {
            let node = connection.node(&message.metadata);
            for line in String::from_utf8_lossy(&message.bytes).split_inclusive('\n') {
                write!(out, "{node}: {line}")?;
            }
        } else {
            out.write_all(&message.bytes)?;
        }
        out.flush()?;
    }
    failures.finish()
}

fn gib(bytes: u64) -> String {
    format!("{:.2}", bytes as f64 / (1u64 << 30) as f64)
}

pub async fn run(connection: &Connection, command: MachineCmd) -> Result<()> {
    let mut client = MachineServiceClient::new(connection.channel.clone());
    let mut failures = Failures::default();
    macro_rules! each {
        ($answer:expr, |$node:ident, $m:ident| $body:block) => {
            for $m in $answer.into_inner().messages {
                if failures.check(connection, &$m.metadata) {
                    continue;
                }
                let $node = connection.node(&$m.metadata);
                $body
            }
        };
    }
    match command {
        MachineCmd::Time => {
            let sent = std::time::SystemTime::now();
            let answer = client.time(connection.request(api::TimeRequest {})).await?;
            let local = crate::health::midpoint(sent, std::time::SystemTime::now());
            println!("NODE\tTIME\tOFFSET\tSYNCED\tSERVER");
            each!(answer, |node, m| {
                let time = m.time.unwrap_or_default();
                let offset = crate::health::offset(&time, local);
                let shown = time::OffsetDateTime::from_unix_timestamp(time.seconds)
                    .map(|t| t + time::Duration::nanoseconds(i64::from(time.nanos)))
                    .ok()
                    .and_then(|t| {
                        t.format(&time::format_description::well_known::Rfc3339)
                            .ok()
                    })
                    .unwrap_or_else(|| format!("{}s", time.seconds));
                let server = match (m.sets_clock, m.error.is_empty()) {
                    (false, _) => "(the host's clock)".to_string(),
                    (true, true) => m.server,
                    (true, false) => format!("{} ({})", m.server, m.error),
                };
                println!("{node}\t{shown}\t{offset:+.3} s\t{}\t{server}", m.synced);
            });
        }
        MachineCmd::Version => {
            println!("Client:\n\tTag: {}", env!("CARGO_PKG_VERSION"));
            let answer = client
                .version(connection.request(api::VersionRequest {}))
                .await?;
            println!("Server:");
            each!(answer, |node, m| {
                println!(
                    "\tNODE: {node}\n\tTag: {}\n\tSHA: {}\n\tOS/Arch: {}/{}\n\tMaintenance: {}",
                    m.tag, m.sha, m.os, m.arch, m.maintenance
                );
            });
        }
        MachineCmd::ApplyConfig { file, apply } => {
            let data =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let answer = client
                .apply_configuration(connection.request(apply.request(data, String::new())))
                .await?;
            each!(answer, |node, m| {
                apply.print(&node, &m);
            });
        }
        MachineCmd::Services => {
            let answer = client
                .service_list(connection.request(api::ServiceListRequest {}))
                .await?;
            println!("NODE\tSERVICE\tSTATE\tHEALTH\tPID\tRESTARTS\tMESSAGE");
            each!(answer, |node, m| {
                for s in m.services {
                    let health = if s.healthy { "OK" } else { "?" };
                    println!(
                        "{node}\t{}\t{}\t{health}\t{}\t{}\t{}",
                        s.id, s.state, s.pid, s.restarts, s.message
                    );
                }
            });
        }
        MachineCmd::Service { id, action } => {
            let request = connection.request(api::ServiceRequest { id });
            let answer = match action {
                ServiceAction::Start => client.service_start(request).await?,
                ServiceAction::Stop => client.service_stop(request).await?,
                ServiceAction::Restart => client.service_restart(request).await?,
            };
            each!(answer, |node, m| {
                println!("{node}: {}", m.response);
            });
        }
        MachineCmd::Logs { id, follow, tail } => {
            let request = api::LogsRequest {
                id,
                follow,
                tail_lines: tail,
            };
            let stream = client.logs(connection.request(request)).await?.into_inner();
            return print_data(connection, stream).await;
        }
        MachineCmd::Dmesg { follow, tail } => {
            let request = api::DmesgRequest {
                follow,
                tail_lines: tail,
            };
            let stream = client
                .dmesg(connection.request(request))
                .await?
                .into_inner();
            return print_data(connection, stream).await;
        }
        MachineCmd::Read { path } => {
            let stream = client
                .read(connection.request(api::ReadRequest { path }))
                .await?
                .into_inner();
            return print_data(connection, stream).await;
        }
        MachineCmd::Reboot { powercycle } => {
            let mode = if powercycle {
                api::RebootMode::Powercycle
            } else {
                api::RebootMode::Default
            };
            let answer = client
                .reboot(connection.request(api::RebootRequest { mode: mode as i32 }))
                .await?;
            each!(answer, |node, m| {
                println!("{node}: {}", m.action);
            });
        }
        MachineCmd::Shutdown { force } => {
            let answer = client
                .shutdown(connection.request(api::ShutdownRequest { force }))
                .await?;
            each!(answer, |node, m| {
                println!("{node}: {}", m.action);
            });
        }
        MachineCmd::Reset {
            graceful,
            reboot,
            wipe,
        } => {
            let answer = client
                .reset(connection.request(api::ResetRequest {
                    graceful,
                    reboot,
                    wipe,
                }))
                .await?;
            each!(answer, |node, m| {
                println!("{node}: {}", m.action);
            });
        }
        MachineCmd::Ls {
            path,
            recurse,
            depth,
        } => {
            let request = api::FileListRequest {
                root: path,
                recurse,
                max_depth: depth,
            };
            let mut stream = client.list(connection.request(request)).await?.into_inner();
            println!("NODE\tMODE\tSIZE\tNAME");
            while let Some(f) = stream.message().await? {
                if failures.check(connection, &f.metadata) {
                    continue;
                }
                let node = connection.node(&f.metadata);
                if !f.error.is_empty() {
                    eprintln!("{node}: {}: {}", f.name, f.error);
                    continue;
                }
                let link = if f.link.is_empty() {
                    String::new()
                } else {
                    format!(" -> {}", f.link)
                };
                let kind = if f.is_dir { "d" } else { "-" };
                println!(
                    "{node}\t{kind}{:o}\t{}\t{}{link}",
                    f.mode & 0o7777,
                    f.size,
                    f.relative_name
                );
            }
        }
        MachineCmd::Processes => {
            let answer = client
                .processes(connection.request(api::ProcessesRequest {}))
                .await?;
            println!("NODE\tPID\tSTATE\tTHREADS\tCPU-TIME\tVIRTMEM\tRESMEM\tCOMMAND");
            each!(answer, |node, m| {
                for p in m.processes {
                    let command = if p.args.is_empty() { p.command } else { p.args };
                    println!(
                        "{node}\t{}\t{}\t{}\t{:.2}\t{}\t{}\t{command}",
                        p.pid, p.state, p.threads, p.cpu_time, p.virtual_memory, p.resident_memory
                    );
                }
            });
        }
        MachineCmd::Memory => {
            let answer = client
                .memory(connection.request(api::MemoryRequest {}))
                .await?;
            println!("NODE\tTOTAL(GiB)\tFREE\tAVAILABLE\tBUFFERS\tCACHED\tSWAP-TOTAL\tSWAP-FREE");
            each!(answer, |node, m| {
                println!(
                    "{node}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    gib(m.total),
                    gib(m.free),
                    gib(m.available),
                    gib(m.buffers),
                    gib(m.cached),
                    gib(m.swap_total),
                    gib(m.swap_free)
                );
            });
        }
        MachineCmd::Mounts => {
            let answer = client
                .mounts(connection.request(api::MountsRequest {}))
                .await?;
            println!("NODE\tSOURCE\tTARGET\tTYPE\tSIZE(GiB)\tAVAILABLE");
            each!(answer, |node, m| {
                for mount in m.mounts {
                    println!(
                        "{node}\t{}\t{}\t{}\t{}\t{}",
                        mount.source,
                        mount.target,
                        mount.filesystem,
                        gib(mount.size),
                        gib(mount.available)
                    );
                }
            });
        }
        MachineCmd::Disks => {
            let answer = client
                .disks(connection.request(api::DisksRequest {}))
                .await?;
            println!("NODE\tNAME\tSIZE(GiB)\tMODEL\tSERIAL\tROTATIONAL\tREADONLY");
            each!(answer, |node, m| {
                for d in m.disks {
                    println!(
                        "{node}\t{}\t{}\t{}\t{}\t{}\t{}",
                        d.name,
                        gib(d.size),
                        d.model,
                        d.serial,
                        d.rotational,
                        d.read_only
                    );
                }
            });
        }
        MachineCmd::Netstat { listening, all } => {
            let filter = match (listening, all) {
                (_, true) => api::NetstatFilter::All,
                (true, false) => api::NetstatFilter::Listening,
                (false, false) => api::NetstatFilter::Connected,
            };
            let answer = client
                .netstat(connection.request(api::NetstatRequest {
                    filter: filter as i32,
                }))
                .await?;
            println!("NODE\tPROTO\tLOCAL\tREMOTE\tSTATE\tTX-Q\tRX-Q\tPID/PROGRAM");
            each!(answer, |node, m| {
                for s in m.sockets {
                    // IPv6 addresses in brackets, as in a URL.
                    let address = |ip: &str, port: u32| {
                        if ip.contains(':') {
                            format!("[{ip}]:{port}")
                        } else {
                            format!("{ip}:{port}")
                        }
                    };
                    let program = match s.pid {
                        0 => "-".to_string(),
                        pid => format!("{pid}/{}", s.process),
                    };
                    println!(
                        "{node}\t{}\t{}\t{}\t{}\t{}\t{}\t{program}",
                        s.protocol,
                        address(&s.local_ip, s.local_port),
                        address(&s.remote_ip, s.remote_port),
                        s.state,
                        s.tx_queue,
                        s.rx_queue
                    );
                }
            });
        }
        MachineCmd::Events { tail, duration } => {
            let mut stream = client
                .events(connection.request(api::EventsRequest { tail_events: tail }))
                .await?
                .into_inner();
            let until = duration.map(|d| tokio::time::Instant::now() + d);
            loop {
                let next = stream.message();
                let e = match until {
                    Some(until) => match tokio::time::timeout_at(until, next).await {
                        Ok(e) => e?,
                        Err(_) => break,
                    },
                    None => next.await?,
                };
                let Some(e) = e else { break };
                if failures.check(connection, &e.metadata) {
                    continue;
                }
                let node = connection.node(&e.metadata);
                let when = e
                    .time
                    .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t.seconds).ok())
                    .and_then(|t| {
                        t.format(&time::format_description::well_known::Rfc3339)
                            .ok()
                    })
                    .unwrap_or_default();
                println!("{node}\t{}\t{when}\t{}\t{}", e.id, e.kind, e.message);
            }
        }
    }
    failures.finish()
}
