//! apid on its own: the Machine API over a state in a directory, with the local node
//! implementations (this host's /proc and /sys, files under --file-root). machined runs
//! the same server with its own implementations.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use apid::node::local::LocalNode;
use apid::{Apid, ApidOptions, Limits};
use basalt_machine_config::Mode;
use basalt_resource::namespaces;
use basalt_state::State;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "apid", version, about = "The Basalt Machine API server")]
struct Args {
    #[arg(long, default_value = "0.0.0.0:50000")]
    listen: SocketAddr,
    /// Keep the config namespace here (persistent across restarts); in memory without it.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Names and addresses of this node for its certificate (repeatable).
    #[arg(long = "san")]
    sans: Vec<String>,
    /// A directory `osctl read`/`ls` may see (repeatable).
    #[arg(long = "file-root")]
    file_roots: Vec<PathBuf>,
    /// How applied configs are validated: metal, cloud or container.
    #[arg(long, default_value = "metal")]
    mode: Mode,
    /// Start with this machine config (as if applied before); maintenance mode without
    /// one (unless the state directory holds one).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Calls one client may have in flight, streams included.
    #[arg(long, default_value_t = Limits::default().max_calls_per_client)]
    max_calls_per_client: usize,
    /// Calls per second one client may start (burst: twice as many).
    #[arg(long, default_value_t = Limits::default().calls_per_second)]
    rate: f64,
}

#[tokio::main]
async fn main() -> Result<()> {
    // Logs go to stderr, plain when it is not a terminal (read by scripts and benches).
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let registry = Arc::new(basalt_resource::meta::builtin_registry()?);
    let state = match &args.state_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let (state, report) = State::builder()
                .persistent(
                    dir.join("state.redb"),
                    &[namespaces::CONFIG],
                    registry.clone(),
                )
                .open()?;
            tracing::info!(?report, "state loaded");
            state
        }
        None => State::new(),
    };
    if let Some(path) = &args.config {
        let yaml = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        apid::store_config(&state, &yaml)
            .await
            .with_context(|| format!("{}", path.display()))?;
    }
    let node = LocalNode::new(state.clone(), Vec::new(), args.file_roots)?;
    let mut sans = args.sans;
    if !args.listen.ip().is_unspecified() {
        sans.push(args.listen.ip().to_string());
    }
    let limits = Limits {
        max_calls_per_client: args.max_calls_per_client,
        calls_per_second: args.rate,
        burst: args.rate * 2.0,
        ..Limits::default()
    };
    let apid = Apid::start(ApidOptions {
        listen: args.listen,
        state,
        registry,
        node: node.handles(),
        limits,
        peer_port: basalt_api::DEFAULT_PORT,
        validation_mode: args.mode,
        sans,
        identity: None,
    })
    .await?;
    // Tools (tests, benchmarks) read the address from here when the port was 0.
    tracing::info!(addr = %apid.local_addr(), "listening");
    tokio::signal::ctrl_c().await?;
    apid.shutdown().await?;
    Ok(())
}
