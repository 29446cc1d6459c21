//! `osctl cluster create|show|destroy`: local clusters (the container provider of
//! `basalt-cluster`), configured the way a user configures any node: secrets and configs
//! generated, each node's config applied through its maintenance-mode API, then every
//! node waited for over mTLS.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use basalt_api::machine::v1 as api;
use basalt_api::machine::v1::machine_service_client::MachineServiceClient;
use basalt_cluster::{
    container, network, qemu, ClusterRecord, NodeRecord, Options, Provider, Role,
};
use basalt_machine_config::client::ClientConfig;
use basalt_machine_config::generate::{generate, GenerateOptions};
use basalt_machine_config::{Config, Mode, Patch};
use basalt_pki::{write_private_file, SecretsBundle};

use crate::connect::Connection;
use crate::Global;

/// The name `make cluster` and every verb use when none is given.
const DEFAULT_NAME: &str = "basalt";

#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    /// Where clusters keep their files.
    #[arg(long, global = true, env = "BASALT_CLUSTERS_DIR")]
    clusters_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: ClusterCmd,
}

#[derive(Debug, clap::Subcommand)]
enum ClusterCmd {
    /// Create a local cluster and wait until every node runs its config.
    Create(CreateArgs),
    /// List a cluster's nodes and their states.
    Show {
        #[arg(long, default_value = DEFAULT_NAME)]
        name: String,
    },
    /// Remove a cluster: every process, namespace, link, cgroup and file it made (also a
    /// half-made one).
    Destroy {
        #[arg(long, default_value = DEFAULT_NAME)]
        name: String,
    },
    /// Put a freshly built image (`make reload` builds it) into the running nodes, one at
    /// a time: each reboots into it keeping its state, and is back before the next goes.
    Reload {
        #[arg(long, default_value = DEFAULT_NAME)]
        name: String,
        /// The directory `make image` (or `make reload`) writes.
        #[arg(long, default_value = "_out")]
        image: PathBuf,
        /// How long each node may take to come back.
        #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
        wait_timeout: Duration,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ProviderArg {
    /// machined in container mode, each node in namespaces of its own (no VM, no Docker).
    Container,
    /// The boot image under QEMU, each node with a STATE disk and a tap on the bridge.
    Qemu,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Accel {
    /// QEMU's emulator: works everywhere, slowly.
    Tcg,
    Kvm,
}

#[derive(Debug, clap::Args)]
struct CreateArgs {
    #[arg(long, default_value = DEFAULT_NAME)]
    name: String,
    #[arg(long, value_enum, default_value = "container")]
    provider: ProviderArg,
    #[arg(long, default_value_t = 1)]
    controlplanes: usize,
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// The cluster's private subnet; the host takes its first address.
    #[arg(long, default_value = "10.5.0.0/24")]
    cidr: ipnet::Ipv4Net,
    /// The directory `make image` writes (its rootfs/ is what the nodes run).
    #[arg(long, default_value = "_out")]
    image: PathBuf,
    #[command(flatten)]
    patches: crate::ConfigPatches,
    /// How long to wait for every node to run its config.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    wait_timeout: Duration,
    /// qemu: virtual CPUs per node.
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// qemu: memory per node, MiB.
    #[arg(long, default_value_t = 512)]
    memory: u32,
    /// qemu: the accelerator (KVM hangs stock kernels on some hosts: TCG unless asked).
    #[arg(long, value_enum, default_value = "tcg")]
    accel: Accel,
}

pub fn run(args: ClusterArgs, osconfig: &Path) -> Result<()> {
    let clusters_dir = match args.clusters_dir {
        Some(dir) => dir,
        None => {
            let home = std::env::var_os("HOME").context("HOME is not set; pass --clusters-dir")?;
            PathBuf::from(home).join(".basalt").join("clusters")
        }
    };
    if !matches!(args.command, ClusterCmd::Show { .. }) {
        basalt_cluster::require_root()?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        match args.command {
            ClusterCmd::Create(create_args) => create(create_args, &clusters_dir, osconfig).await,
            ClusterCmd::Show { name } => show(&clusters_dir, &name),
            ClusterCmd::Destroy { name } => destroy(&clusters_dir, &name).await,
            ClusterCmd::Reload {
                name,
                image,
                wait_timeout,
            } => reload(&clusters_dir, &name, &image, wait_timeout).await,
        }
    })
}

async fn create(args: CreateArgs, clusters_dir: &Path, osconfig: &Path) -> Result<()> {
    let options = Options {
        name: args.name.clone(),
        provider: match args.provider {
            ProviderArg::Container => Provider::Container,
            ProviderArg::Qemu => Provider::Qemu,
        },
        controlplanes: args.controlplanes,
        workers: args.workers,
        cidr: args.cidr,
        clusters_dir: clusters_dir.to_path_buf(),
    };
    let mut record = ClusterRecord::plan(&options)?;
    record.claim()?;
    if let Err(e) = network::check_free(record.cidr).await {
        // Nothing is made yet but the record.
        let _ = std::fs::remove_dir_all(&record.dir);
        return Err(e.into());
    }
    let started = Instant::now();
    let mut children = Vec::new();
    let made = tokio::select! {
        made = make(&mut record, &args, &mut children) => made,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    let client = match made {
        Ok(client) => client,
        Err(e) => {
            eprintln!(
                "cluster {}: {e:#}\nremoving everything it made...",
                record.name
            );
            for child in &mut children {
                let _ = child.kill();
                let _ = child.wait();
            }
            let left = basalt_cluster::destroy(&record).await;
            for problem in &left {
                eprintln!("  left behind: {problem}");
            }
            return Err(e);
        }
    };
    let mut merged = crate::load_client(osconfig)?;
    merged
        .contexts
        .extend(client.contexts.iter().map(|(k, v)| (k.clone(), v.clone())));
    merged.context = client.context.clone();
    crate::save_client(osconfig, &merged)?;

    println!(
        "\ncluster {} is up in {:.1} s ({} nodes, {})",
        record.name,
        started.elapsed().as_secs_f64(),
        record.nodes.len(),
        record.cidr
    );
    print_table(&record, |_| "running".to_string());
    let all: Vec<String> = record.nodes.iter().map(|n| n.address.to_string()).collect();
    let name = if record.name == DEFAULT_NAME {
        String::new()
    } else {
        format!(" --name {}", record.name)
    };
    println!(
        "\ncontext {:?} is current in {}. Next:\n  osctl -n {} version\n  osctl -n {} get apicertificates\n  osctl cluster show{name}\n  osctl cluster destroy{name}",
        client.context,
        osconfig.display(),
        all.join(","),
        all.last().map_or("", String::as_str),
    );
    Ok(())
}

/// Everything `create` makes, in order; returns the cluster's client config.
async fn make(
    record: &mut ClusterRecord,
    args: &CreateArgs,
    children: &mut Vec<Child>,
) -> Result<ClientConfig> {
    let (controlplane, worker, client) = configs(record, args)?;
    match record.provider {
        Provider::Container => container::prepare_rootfs(&args.image, record)?,
        Provider::Qemu => qemu::prepare_image(&args.image, record)?,
    }
    network::create(record).await?;
    let vm = qemu::VmOptions {
        cpus: args.cpus,
        memory_mib: args.memory,
        kvm: args.accel == Accel::Kvm,
    };
    for i in 0..record.nodes.len() {
        match record.provider {
            Provider::Container => children.push(container::start(record, i, "")?),
            Provider::Qemu => {
                children.push(qemu::start(record, i, vm)?);
                network::plug_tap(record, i).await?;
            }
        }
    }
    let deadline = Instant::now() + args.wait_timeout;
    let mut progress = Progress::new(record);
    let mut steps: Vec<Step> = vec![Step::Booting; record.nodes.len()];
    let osconfig = record.dir.join("osconfig");
    loop {
        // Workers get their certificates from the control plane's trustd: they are
        // configured once it runs.
        let control_plane_up = record
            .nodes
            .iter()
            .zip(&steps)
            .all(|(n, s)| n.role == Role::Worker || *s == Step::Running);
        for (i, node) in record.nodes.iter().enumerate() {
            if steps[i] == Step::Running {
                continue;
            }
            if let Some(status) = children[i].try_wait().context("waiting for a node")? {
                bail!(
                    "node {} stopped ({status}) before it was up; its console ({}) ends with:\n{}{}",
                    node.name,
                    node.console.display(),
                    tail(&node.console, 15),
                    tail(&node.console.with_file_name("qemu.log"), 5)
                );
            }
            let config = match node.role {
                Role::ControlPlane => &controlplane,
                Role::Worker => &worker,
            };
            if node.role == Role::Worker && !control_plane_up {
                progress.set(i, "booting (waiting for the control plane)");
                continue;
            }
            steps[i] = advance(steps[i], node, config, &osconfig).await?;
            progress.set(i, steps[i].describe());
        }
        progress.draw();
        if steps.iter().all(|s| *s == Step::Running) && all_members(record, &osconfig).await {
            return Ok(client);
        }
        if Instant::now() > deadline {
            let late: Vec<String> = record
                .nodes
                .iter()
                .zip(&steps)
                .filter(|(_, s)| **s != Step::Running)
                .map(|(n, s)| format!("{} ({})", n.name, s.describe()))
                .collect();
            bail!("not up after {:?}: {}", args.wait_timeout, late.join(", "));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Secrets, the two configs and the client config, written to the cluster's directory.
fn configs(record: &ClusterRecord, args: &CreateArgs) -> Result<(Config, Config, ClientConfig)> {
    let bundle = SecretsBundle::generate()?;
    bundle.write_to(record.dir.join("secrets.yaml"))?;
    let endpoint = format!("https://{}:6443", record.nodes[0].address);
    let options = GenerateOptions {
        cluster_name: record.name.clone(),
        endpoint,
        install_disk: None,
        admin_validity: Duration::from_secs(365 * 24 * 3600),
    };
    let generated = generate(&bundle, &options)?;
    let (controlplane, worker) = args
        .patches
        .apply(generated.controlplane, generated.worker)?;
    controlplane
        .validate(Mode::Container)
        .context("the control-plane config")?;
    worker
        .validate(Mode::Container)
        .context("the worker config")?;
    let mut client = generated.client;
    let endpoints: Vec<String> = record
        .nodes
        .iter()
        .filter(|n| n.role == Role::ControlPlane)
        .map(|n| n.address.to_string())
        .collect();
    for context in client.contexts.values_mut() {
        context.endpoints = endpoints.clone();
    }
    for (file, text) in [
        ("controlplane.yaml", controlplane.to_yaml()?),
        ("worker.yaml", worker.to_yaml()?),
        ("osconfig", client.to_yaml()?),
    ] {
        write_private_file(&record.dir.join(file), text.as_bytes())?;
    }
    Ok((controlplane, worker, client))
}

/// Where a node is in `create`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Waiting for its maintenance-mode API.
    Booting,
    /// Config applied; waiting for it to answer over mTLS and run.
    Configuring,
    Running,
}

impl Step {
    fn describe(self) -> &'static str {
        match self {
            Step::Booting => "booting",
            Step::Configuring => "configuring",
            Step::Running => "running",
        }
    }
}

/// One try at the node's next step; a node that does not answer yet stays where it is.
async fn advance(step: Step, node: &NodeRecord, config: &Config, osconfig: &Path) -> Result<Step> {
    let endpoint = node.address.to_string();
    match step {
        Step::Booting => {
            let Ok(connection) = open(&endpoint, true, osconfig).await else {
                return Ok(Step::Booting);
            };
            let patch = Patch::parse(&format!(
                "apiVersion: basalt.dev/v1alpha1\nkind: MachineConfig\nhostname: {}\n",
                node.name
            ))?;
            let config = config.clone().patch(&patch)?;
            let request = api::ApplyConfigurationRequest {
                data: config.to_yaml()?.into_bytes(),
                mode: api::ApplyMode::Auto as i32,
                ..Default::default()
            };
            MachineServiceClient::new(connection.channel.clone())
                .apply_configuration(connection.request(request))
                .await
                .with_context(|| format!("applying the config of {}", node.name))?;
            Ok(Step::Configuring)
        }
        Step::Configuring => Ok(if runs_config(node, osconfig).await {
            Step::Running
        } else {
            Step::Configuring
        }),
        Step::Running => Ok(Step::Running),
    }
}

/// Whether every node knows every node as a member: then calls through any node reach
/// any other at once.
async fn all_members(record: &ClusterRecord, osconfig: &Path) -> bool {
    for node in &record.nodes {
        if member_count(node, osconfig).await < record.nodes.len() {
            return false;
        }
    }
    true
}

/// Whether `node` answers over mTLS, out of maintenance mode.
async fn runs_config(node: &NodeRecord, osconfig: &Path) -> bool {
    let Ok(connection) = open(&node.address.to_string(), false, osconfig).await else {
        return false;
    };
    let answer = MachineServiceClient::new(connection.channel.clone())
        .version(connection.request(api::VersionRequest {}))
        .await;
    answer.is_ok_and(|a| a.into_inner().messages.iter().all(|m| !m.maintenance))
}

/// How many members `node` knows (0 when it cannot be asked).
async fn member_count(node: &NodeRecord, osconfig: &Path) -> usize {
    let Ok(connection) = open(&node.address.to_string(), false, osconfig).await else {
        return 0;
    };
    let request = basalt_api::resource::v1::ListRequest {
        r#type: "members".into(),
        ..Default::default()
    };
    let mut client = basalt_api::resource::v1::resource_service_client::ResourceServiceClient::new(
        connection.channel.clone(),
    );
    let Ok(answer) = client.list(connection.request(request)).await else {
        return 0;
    };
    let mut stream = answer.into_inner();
    let mut count = 0;
    while let Ok(Some(_)) = stream.message().await {
        count += 1;
    }
    count
}

/// A connection to one node: insecure (maintenance mode) or with the cluster's client
/// certificate.
async fn open(endpoint: &str, insecure: bool, osconfig: &Path) -> Result<Connection> {
    let global = Global {
        endpoints: vec![endpoint.to_string()],
        nodes: Vec::new(),
        context: None,
        insecure,
        fingerprint: None,
    };
    Connection::open(&global, osconfig).await
}

/// A line per node, redrawn in place on a terminal and printed on change elsewhere.
struct Progress {
    names: Vec<String>,
    states: Vec<String>,
    shown: Vec<String>,
    terminal: bool,
    drawn: bool,
}

impl Progress {
    fn new(record: &ClusterRecord) -> Progress {
        let names = record
            .nodes
            .iter()
            .map(|n| format!("{} ({}, {})", n.name, n.role, n.address))
            .collect();
        let count = record.nodes.len();
        Progress {
            names,
            states: vec![String::new(); count],
            shown: vec![String::new(); count],
            terminal: std::io::stdout().is_terminal(),
            drawn: false,
        }
    }

    fn set(&mut self, i: usize, state: &str) {
        self.states[i] = state.to_string();
    }

    fn draw(&mut self) {
        let mut out = std::io::stdout().lock();
        if self.terminal {
            if self.drawn {
                let _ = write!(out, "\x1b[{}A", self.names.len());
            }
            for (name, state) in self.names.iter().zip(&self.states) {
                let _ = writeln!(out, "\x1b[2K  {name}: {state}");
            }
            self.drawn = true;
        } else {
            for ((name, state), shown) in self.names.iter().zip(&self.states).zip(&mut self.shown) {
                if state != shown {
                    let _ = writeln!(out, "  {name}: {state}");
                    *shown = state.clone();
                }
            }
        }
        let _ = out.flush();
    }
}

fn print_table(record: &ClusterRecord, state: impl Fn(&NodeRecord) -> String) {
    println!("NODE\tROLE\tADDRESS\tSTATE");
    for node in &record.nodes {
        println!(
            "{}\t{}\t{}\t{}",
            node.name,
            node.role,
            node.address,
            state(node)
        );
    }
}

/// The last `lines` lines of a file.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn show(clusters_dir: &Path, name: &str) -> Result<()> {
    let record = ClusterRecord::load(clusters_dir, name)?;
    println!(
        "cluster {} ({} provider, {}, host {} on {})",
        record.name, record.provider, record.cidr, record.host_address, record.host_link
    );
    print_table(&record, |node| {
        if container::is_running(&record, node) {
            "running".into()
        } else {
            "stopped".into()
        }
    });
    Ok(())
}

async fn reload(
    clusters_dir: &Path,
    name: &str,
    image: &Path,
    wait_timeout: Duration,
) -> Result<()> {
    let record = ClusterRecord::load(clusters_dir, name)?;
    if record.provider != Provider::Container {
        bail!(
            "cluster {name} runs on {}: reload puts a new machined into container nodes; \
             destroy and create it again",
            record.provider
        );
    }
    let started = Instant::now();
    let old = container::replace_rootfs(image, &record)?;
    let osconfig = record.dir.join("osconfig");
    // Workers first: the control plane's trustd serves them while they come back.
    let mut order: Vec<&NodeRecord> = record.nodes.iter().collect();
    order.sort_by_key(|n| n.role == Role::ControlPlane);
    for node in order {
        let node_started = Instant::now();
        let before = container::init_pid(node)
            .ok_or_else(|| anyhow!("node {} is not running", node.name))?;
        let connection = open(&node.address.to_string(), false, &osconfig).await?;
        let request = api::RebootRequest {
            mode: api::RebootMode::Default as i32,
        };
        MachineServiceClient::new(connection.channel.clone())
            .reboot(connection.request(request))
            .await
            .with_context(|| format!("rebooting {}", node.name))?;
        let deadline = Instant::now() + wait_timeout;
        loop {
            let rebooted = container::init_pid(node).is_some_and(|pid| pid != before);
            if rebooted
                && runs_config(node, &osconfig).await
                && member_count(node, &osconfig).await >= record.nodes.len()
            {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "node {} is not back after {wait_timeout:?}; its console ({}) ends with:\n{}",
                    node.name,
                    node.console.display(),
                    tail(&node.console, 15)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!(
            "  {}: running the new image ({:.1} s)",
            node.name,
            node_started.elapsed().as_secs_f64()
        );
    }
    std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
    println!(
        "cluster {} reloaded in {:.1} s ({} nodes)",
        record.name,
        started.elapsed().as_secs_f64(),
        record.nodes.len()
    );
    Ok(())
}

async fn destroy(clusters_dir: &Path, name: &str) -> Result<()> {
    let record = ClusterRecord::load(clusters_dir, name)?;
    let left = basalt_cluster::destroy(&record).await;
    if !left.is_empty() {
        let list: Vec<String> = left.iter().map(|e| e.to_string()).collect();
        bail!(
            "cluster {name} is partly removed; left:\n  {}",
            list.join("\n  ")
        );
    }
    println!("cluster {name} destroyed");
    Ok(())
}
