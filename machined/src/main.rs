//! machined: the Basalt node. Runs the controllers over the node's state and serves the
//! Machine API from it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result};
use apid::Limits;
use basalt_controllers::Sources;
use basalt_machine_config::Mode;
use clap::Parser;
use machined::acquire::{ConfigSources, FetchLimits};
use machined::edge::ApidProcessOptions;
use machined::{Node, NodeOptions};

#[derive(Debug, Parser)]
#[command(name = "machined", version, about = "The Basalt node")]
struct Args {
    /// Where the Machine API listens.
    #[arg(long, default_value = "0.0.0.0:50000")]
    listen: SocketAddr,
    /// Keep the config namespace here (persistent across restarts); in memory without it.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Names and addresses of this node for its certificates (repeatable).
    #[arg(long = "san")]
    sans: Vec<String>,
    /// A directory `osctl read`/`ls` may see (repeatable).
    #[arg(long = "file-root")]
    file_roots: Vec<PathBuf>,
    /// How applied configs are validated: metal, cloud or container.
    #[arg(long, default_value = "metal")]
    mode: Mode,
    /// Start with this machine config when the state directory holds none (as an image's
    /// embedded config); then the command line's `basalt.config=` URL; maintenance mode
    /// without any.
    #[arg(long)]
    config: Option<PathBuf>,
    /// How long fetching the `basalt.config=` URL may take, retries included.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    config_fetch_timeout: Duration,
    /// Where KubePrism listens (at the port its config names).
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    kubeprism_listen: IpAddr,
    /// The kernel command line to read.
    #[arg(long, default_value = "/proc/cmdline")]
    cmdline: PathBuf,
    /// Lifetime of the node's API certificates in seconds; renewed at half of it.
    #[arg(long, default_value_t = basalt_controllers::DEFAULT_API_CERT_VALIDITY.as_secs())]
    api_cert_lifetime: u64,
    /// Calls one client may have in flight, streams included.
    #[arg(long, default_value_t = Limits::default().max_calls_per_client)]
    max_calls_per_client: usize,
    /// Calls per second one client may start (burst: twice as many).
    #[arg(long, default_value_t = Limits::default().calls_per_second, value_parser = positive_rate)]
    rate: f64,
    /// Run apid in its own process under this uid (and --apid-gid), reaching the node
    /// over a unix socket in --run-dir; in this process without it.
    #[arg(long)]
    apid_uid: Option<u32>,
    #[arg(long, requires = "apid_uid")]
    apid_gid: Option<u32>,
    /// Where machined's socket for apid lives.
    #[arg(long, default_value = "/run/basalt")]
    run_dir: PathBuf,
    /// Where trustd listens once the node holds the OS CA key; no trustd without it.
    #[arg(long)]
    trustd_listen: Option<SocketAddr>,
    /// Run the services of the node's role (etcd on a control plane) from the image
    /// layers in this directory, keeping their data in --state-dir.
    #[arg(long)]
    extensions: Option<PathBuf>,
    /// The port of trustd on the control-plane endpoint's host, for a node without the
    /// OS CA key.
    #[arg(long, default_value_t = basalt_api::TRUSTD_PORT)]
    trustd_port: u16,
}

fn positive_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "{text:?} is not a positive number of calls per second"
        )),
    }
}

/// One binary, several roles, by the name it was started under: `apid` is the API's edge
/// and `trustd` the control plane's signer (both started by machined), `basalt-container` the shim of a container node; anything else
/// is machined: PID 1 of a machine or a container, or a process on a host.
fn main() -> Result<ExitCode> {
    let pid1 = std::process::id() == 1;
    let container = machined::boot::container::is_container_init();
    machined::init_logging(pid1);
    if container {
        machined::boot::container::main();
    }
    if pid1 {
        machined::boot::metal::main();
    }
    let role = std::env::args_os()
        .next()
        .and_then(|arg0| Some(Path::new(&arg0).file_name()?.to_string_lossy().into_owned()));
    if role.as_deref() == Some("basalt-container") {
        // Before any thread starts: it makes namespaces for the children it spawns.
        let args = machined::boot::container::ShimArgs::parse();
        return Ok(machined::boot::container::run_shim(args));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if role.as_deref() == Some("apid") {
        let args = machined::edge::ApidArgs::parse();
        runtime.block_on(machined::edge::run_apid(args))?;
    } else if role.as_deref() == Some("trustd") {
        let args = machined::trustd::TrustdArgs::parse();
        runtime.block_on(machined::trustd::run_trustd(args));
    } else {
        runtime.block_on(run(Args::parse()))?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn run(args: Args) -> Result<()> {
    let embedded = match &args.config {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?,
        ),
        None => None,
    };
    // Read as the kernel command line's other arguments are: missing is empty.
    let cmdline = std::fs::read_to_string(&args.cmdline).unwrap_or_default();
    let config = ConfigSources {
        embedded,
        url: ConfigSources::url_from_cmdline(&cmdline),
        fetch: FetchLimits {
            timeout: args.config_fetch_timeout,
            ..FetchLimits::default()
        },
    };
    let roles = args.extensions.map(|extensions| machined::roles::Layout {
        extensions,
        state: args.state_dir.clone(),
    });
    let node = Node::start(NodeOptions {
        listen: args.listen,
        state_dir: args.state_dir,
        config,
        validation_mode: args.mode,
        file_roots: args.file_roots,
        services: Vec::new(),
        limits: Limits {
            max_calls_per_client: args.max_calls_per_client,
            calls_per_second: args.rate,
            burst: args.rate * 2.0,
            ..Limits::default()
        },
        sources: Sources {
            cmdline: args.cmdline,
            kubeprism_listen: args.kubeprism_listen,
            api_cert_validity: Duration::from_secs(args.api_cert_lifetime.max(1)),
            trustd_port: args.trustd_port,
            ..Sources::default()
        },
        sans: args.sans,
        apid_process: args.apid_uid.map(|uid| ApidProcessOptions {
            uid,
            gid: args.apid_gid.unwrap_or(uid),
            run_dir: args.run_dir,
            binary: None,
        }),
        trustd_listen: args.trustd_listen,
        roles,
    })
    .await?;
    // Tools (tests, benchmarks) read the address from here when the port was 0.
    tracing::info!(addr = %node.local_addr(), "listening");
    tokio::signal::ctrl_c().await?;
    node.shutdown().await?;
    Ok(())
}
