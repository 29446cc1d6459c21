//! `osctl`: the workstation CLI of Basalt.
#![allow(clippy::print_stdout)] // a CLI prints

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use basalt_machine_config::client::ClientConfig;
use basalt_machine_config::generate::{generate, GenerateOptions};
use basalt_machine_config::{Config, Mode, Patch};
use basalt_pki::{write_private_file, SecretsBundle};
use clap::{CommandFactory, Parser, Subcommand};

mod cluster;
mod connect;
mod diagnose;
mod edit;
mod health;
mod inspect;
mod machine;
mod resources;

#[derive(Debug, Parser)]
#[command(
    name = "osctl",
    version,
    about = "Manage Basalt nodes and their configuration"
)]
struct Cli {
    /// The client configuration file.
    #[arg(long, global = true, env = "OSCONFIG")]
    osconfig: Option<PathBuf>,
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// How to reach nodes: the flags override the current context of the client config.
#[derive(Debug, clap::Args)]
struct Global {
    /// The endpoints to connect to (comma-separated or repeated); the first that answers
    /// is used.
    #[arg(long, short = 'e', global = true, value_delimiter = ',')]
    endpoints: Vec<String>,
    /// The nodes each call is for, forwarded by the endpoint (comma-separated or
    /// repeated); the endpoint itself without it.
    #[arg(long, short = 'n', global = true, value_delimiter = ',')]
    nodes: Vec<String>,
    /// Use this context of the client config instead of the current one.
    #[arg(long, global = true)]
    context: Option<String>,
    /// Connect without a client certificate and without verifying the node: for nodes
    /// in maintenance mode.
    #[arg(long, global = true)]
    insecure: bool,
    /// With --insecure: the SHA-256 fingerprint the node's certificate must have (the
    /// node prints it).
    #[arg(long, global = true, requires = "insecure")]
    fingerprint: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate secrets and configurations.
    #[command(subcommand)]
    Gen(Gen),
    /// Check a configuration file for a run mode.
    Validate {
        /// metal, cloud or container.
        #[arg(long, short)]
        mode: Mode,
        file: PathBuf,
    },
    /// Work with machine configuration files.
    #[command(subcommand, name = "machineconfig", alias = "mc")]
    MachineConfig(MachineConfigCmd),
    /// Manage the client configuration (contexts, endpoints, nodes).
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Show resources.
    Get(resources::GetArgs),
    /// Patch a resource on the nodes (the machine config) and apply it.
    #[command(subcommand)]
    Patch(edit::PatchCmd),
    /// Edit a resource on the nodes (the machine config) in $EDITOR and apply it.
    #[command(subcommand)]
    Edit(edit::EditCmd),
    /// Look inside the nodes' machinery.
    #[command(subcommand)]
    Inspect(inspect::InspectCmd),
    /// Local clusters: create, show and destroy them.
    Cluster(cluster::ClusterArgs),
    /// Check the cluster: every member (or the -n nodes) reachable, its clock, services,
    /// membership and KubePrism.
    Health(health::HealthArgs),
    /// Print a shell completion script (bash, zsh, fish...): `source <(osctl completion bash)`.
    Completion { shell: clap_complete::Shell },
    #[command(flatten)]
    Machine(machine::MachineCmd),
}

#[derive(Debug, Subcommand)]
enum Gen {
    /// Generate a secrets bundle for a new cluster.
    Secrets {
        #[arg(long, short, default_value = "secrets.yaml")]
        output: PathBuf,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Generate controlplane.yaml, worker.yaml and the client config `osconfig`.
    Config {
        /// The cluster name.
        name: String,
        /// The Kubernetes API endpoint, https://HOST:PORT.
        endpoint: String,
        /// Use this secrets bundle instead of generating one.
        #[arg(long)]
        with_secrets: Option<PathBuf>,
        #[command(flatten)]
        patches: ConfigPatches,
        /// The install disk (metal); `none` for cloud and container nodes.
        #[arg(long, default_value = "/dev/sda")]
        install_disk: String,
        #[arg(long, short, default_value = ".")]
        output_dir: PathBuf,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
enum MachineConfigCmd {
    /// Apply patches to a configuration file.
    Patch {
        file: PathBuf,
        /// @FILE or inline YAML/JSON (repeatable).
        #[arg(long, short, required = true)]
        patch: Vec<String>,
        /// Write here instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCmd {
    /// List the contexts.
    Contexts,
    /// Switch to a context.
    Context { name: String },
    /// Add the contexts of another client config file.
    Merge { file: PathBuf },
    /// Set the endpoints of the current context.
    Endpoint {
        #[arg(required = true)]
        endpoints: Vec<String>,
    },
    /// Set the default nodes of the current context.
    Node {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Show the current context.
    Info,
}

pub(crate) fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// How a patch argument is named in errors: its file, or its position (inline patches
/// may hold secrets, so they are not echoed).
fn patch_name(arg: &str, index: usize) -> String {
    match arg.strip_prefix('@') {
        Some(file) => file.to_string(),
        None => format!("inline patch {}", index + 1),
    }
}

/// `@FILE` or inline text.
fn patch_arg(arg: &str, index: usize) -> Result<Patch> {
    let text = match arg.strip_prefix('@') {
        Some(file) => read(Path::new(file))?,
        None => arg.to_string(),
    };
    Patch::parse(&text).with_context(|| patch_name(arg, index))
}

/// The patches of the generated configs (`gen config`, `cluster create`).
#[derive(Debug, Clone, clap::Args)]
struct ConfigPatches {
    /// A patch for both configs: @FILE or inline YAML/JSON (repeatable).
    #[arg(long)]
    config_patch: Vec<String>,
    /// A patch for the control-plane config only.
    #[arg(long)]
    config_patch_control_plane: Vec<String>,
    /// A patch for the worker config only.
    #[arg(long)]
    config_patch_worker: Vec<String>,
}

impl ConfigPatches {
    /// The control-plane and worker configs, patched.
    fn apply(&self, controlplane: Config, worker: Config) -> Result<(Config, Config)> {
        let controlplane = apply_patches(controlplane, &self.config_patch)?;
        let controlplane = apply_patches(controlplane, &self.config_patch_control_plane)?;
        let worker = apply_patches(worker, &self.config_patch)?;
        let worker = apply_patches(worker, &self.config_patch_worker)?;
        Ok((controlplane, worker))
    }
}

pub(crate) fn apply_patches(mut config: Config, patches: &[String]) -> Result<Config> {
    for (i, p) in patches.iter().enumerate() {
        config = config
            .patch(&patch_arg(p, i)?)
            .with_context(|| patch_name(p, i))?;
    }
    Ok(config)
}

fn refuse_overwrite(path: &Path, force: bool) -> Result<()> {
    if path.exists() && !force {
        bail!("{} exists; use --force to replace it", path.display());
    }
    Ok(())
}

fn osconfig_path(cli: &Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = cli {
        return Ok(p.clone());
    }
    let home = std::env::var_os("HOME").context("HOME is not set; pass --osconfig")?;
    Ok(PathBuf::from(home).join(".basalt").join("config"))
}

fn load_client(path: &Path) -> Result<ClientConfig> {
    if !path.exists() {
        return Ok(ClientConfig::default());
    }
    ClientConfig::parse(&read(path)?).with_context(|| format!("{}", path.display()))
}

fn save_client(path: &Path, config: &ClientConfig) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    write_private_file(path, config.to_yaml()?.as_bytes())?;
    Ok(())
}

/// Runs a command against the API.
fn remote(cli: &Cli, command: impl AsyncFnOnce(&connect::Connection) -> Result<()>) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let osconfig = osconfig_path(&cli.osconfig)?;
    runtime.block_on(async {
        // Failures to connect are explained by `open` itself, per endpoint.
        let connection = connect::Connection::open(&cli.global, &osconfig).await?;
        command(&connection)
            .await
            .map_err(|e| explain_call(e, &connection, cli.global.insecure))
    })
}

/// A call that failed after the connection was made: a certificate refused after the
/// handshake (TLS 1.3 refuses client certificates then), or the connection closed.
fn explain_call(
    error: anyhow::Error,
    connection: &connect::Connection,
    insecure: bool,
) -> anyhow::Error {
    let endpoint = &connection.endpoint;
    if let Some(text) = diagnose::explain(&error, endpoint) {
        return error.context(text);
    }
    if insecure && format!("{error:#}").contains("transport error") {
        return error.context(format!(
            "{endpoint} closed the connection: a configured node needs a client certificate \
             (drop --insecure)"
        ));
    }
    if diagnose::closed_by_peer(&error) {
        if let Some(problem) = &connection.client_certificate_problem {
            return error.context(format!(
                "{endpoint} closed the connection after the handshake: it refused this client \
                 certificate: {problem}"
            ));
        }
        return error.context(format!(
            "{endpoint} closed the connection after the handshake: it refused this client \
             certificate (signed by another cluster's CA?): a new osconfig comes from `osctl \
             gen config` with this cluster's secrets"
        ));
    }
    error
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Get(ref args) => {
            let args = args.clone();
            remote(&cli, async |c| resources::get(c, args).await)?;
        }
        Command::Patch(ref command) => {
            let command = command.clone();
            remote(&cli, async |c| edit::patch(c, command).await)?;
        }
        Command::Edit(ref command) => {
            let command = command.clone();
            remote(&cli, async |c| edit::edit(c, command).await)?;
        }
        Command::Inspect(ref command) => {
            let command = command.clone();
            remote(&cli, async |c| inspect::run(c, command).await)?;
        }
        Command::Machine(ref command) => {
            let command = command.clone();
            remote(&cli, async |c| machine::run(c, command).await)?;
        }
        Command::Cluster(args) => cluster::run(args, &osconfig_path(&cli.osconfig)?)?,
        Command::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "osctl", &mut std::io::stdout());
        }
        Command::Health(ref args) => {
            let args = args.clone();
            remote(&cli, async |c| health::run(c, args).await)?;
        }
        Command::Gen(Gen::Secrets { output, force }) => {
            refuse_overwrite(&output, force)?;
            SecretsBundle::generate()?.write_to(&output)?;
            println!("wrote {}", output.display());
        }
        Command::Gen(Gen::Config {
            name,
            endpoint,
            with_secrets,
            patches,
            install_disk,
            output_dir,
            force,
        }) => {
            let bundle = match &with_secrets {
                Some(path) => SecretsBundle::read_from(path)?,
                None => SecretsBundle::generate()?,
            };
            let options = GenerateOptions {
                cluster_name: name,
                endpoint,
                install_disk: (install_disk != "none").then_some(install_disk),
                admin_validity: Duration::from_secs(365 * 24 * 3600),
            };
            let generated = generate(&bundle, &options)?;
            let (controlplane, worker) = patches.apply(generated.controlplane, generated.worker)?;
            let mode = if options.install_disk.is_some() {
                Mode::Metal
            } else {
                Mode::Cloud
            };
            controlplane
                .validate(mode)
                .context("the generated control-plane config")?;
            worker
                .validate(mode)
                .context("the generated worker config")?;

            std::fs::create_dir_all(&output_dir)
                .with_context(|| format!("cannot create {}", output_dir.display()))?;
            let files = [
                ("controlplane.yaml", controlplane.to_yaml()?),
                ("worker.yaml", worker.to_yaml()?),
                ("osconfig", generated.client.to_yaml()?),
            ];
            for (file, _) in &files {
                refuse_overwrite(&output_dir.join(file), force)?;
            }
            for (file, contents) in &files {
                let path = output_dir.join(file);
                write_private_file(&path, contents.as_bytes())?;
                println!("wrote {}", path.display());
            }
        }
        Command::Validate { mode, file } => {
            let text = read(&file)?;
            let (config, source) =
                Config::parse_with_source(&text).with_context(|| format!("{}", file.display()))?;
            config
                .validate_with_source(mode, Some(&source))
                .with_context(|| format!("{}", file.display()))?;
            println!("{} is valid for {mode} mode", file.display());
        }
        Command::MachineConfig(MachineConfigCmd::Patch {
            file,
            patch,
            output,
        }) => {
            let config =
                Config::parse(&read(&file)?).with_context(|| format!("{}", file.display()))?;
            let yaml = apply_patches(config, &patch)?.to_yaml()?;
            match output {
                Some(path) => write_private_file(&path, yaml.as_bytes())?,
                None => print!("{yaml}"),
            }
        }
        Command::Config(cmd) => {
            let path = osconfig_path(&cli.osconfig)?;
            let mut client = load_client(&path)?;
            match cmd {
                ConfigCmd::Contexts => {
                    println!("CURRENT  NAME  ENDPOINTS  NODES");
                    for (name, c) in &client.contexts {
                        let current = if *name == client.context { "*" } else { "" };
                        println!(
                            "{current:<8} {name}  {}  {}",
                            c.endpoints.join(","),
                            c.nodes.join(",")
                        );
                    }
                    return Ok(());
                }
                ConfigCmd::Info => {
                    let name = client.context.clone();
                    let c = client.current_mut()?;
                    println!(
                        "context:   {name}\nendpoints: {}\nnodes:     {}",
                        c.endpoints.join(", "),
                        c.nodes.join(", ")
                    );
                    return Ok(());
                }
                ConfigCmd::Context { name } => client.use_context(&name)?,
                ConfigCmd::Merge { file } => {
                    let other = ClientConfig::parse(&read(&file)?)
                        .with_context(|| format!("{}", file.display()))?;
                    for name in client.merge(other) {
                        println!("added context {name}");
                    }
                }
                ConfigCmd::Endpoint { endpoints } => client.current_mut()?.endpoints = endpoints,
                ConfigCmd::Node { nodes } => client.current_mut()?.nodes = nodes,
            }
            save_client(&path, &client)?;
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every verb, at every depth, says what it does in `--help`.
    #[test]
    fn every_verb_has_a_help_line() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for sub in command.get_subcommands() {
                let path = format!("{path} {}", sub.get_name());
                if sub
                    .get_about()
                    .is_none_or(|about| about.to_string().trim().is_empty())
                {
                    missing.push(path.clone());
                }
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "osctl", &mut missing);
        assert!(missing.is_empty(), "verbs without a help line: {missing:?}");
    }
}
