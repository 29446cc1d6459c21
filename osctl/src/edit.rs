//! `osctl patch machineconfig` and `osctl edit machineconfig`: change the config in effect
//! on each node, through the apply plan. Each change carries the digest of the config it
//! was made from, so a node whose config changed meanwhile refuses it (ABORTED) instead
//! of one editor silently overwriting another.

use std::path::Path;

use anyhow::{bail, Context as _, Result};
use basalt_api::machine::v1 as api;
use basalt_api::machine::v1::machine_service_client::MachineServiceClient;
use basalt_api::resource::v1 as resource_api;
use basalt_api::resource::v1::resource_service_client::ResourceServiceClient;
use basalt_machine_config::Config;
use basalt_resource::ResourceSpec as _;
use basalt_resources::config::MachineConfigSpec;
use clap::Subcommand;
use tonic::{Code, Status};

use crate::connect::{Connection, Failures};
use crate::machine::ApplyArgs;

#[derive(Debug, Clone, Subcommand)]
pub enum PatchCmd {
    /// Patch the machine config in effect on the nodes and apply it through the plan.
    #[command(name = "machineconfig", alias = "mc")]
    MachineConfig {
        /// @FILE or inline YAML/JSON: a strategic merge patch or an RFC 6902 JSON patch
        /// (repeatable, applied in order).
        #[arg(long, short, required = true)]
        patch: Vec<String>,
        #[command(flatten)]
        apply: ApplyArgs,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum EditCmd {
    /// Edit the machine config in effect on the nodes in $EDITOR and apply it through the
    /// plan; an edit the node refuses opens again with the error.
    #[command(name = "machineconfig", alias = "mc")]
    MachineConfig {
        #[command(flatten)]
        apply: ApplyArgs,
    },
}

/// A node's answer to a call for it alone, or its error: the endpoint's own status, or
/// the node's as the endpoint forwarded it.
fn one<T>(
    messages: Vec<T>,
    metadata: impl Fn(&T) -> Option<&basalt_api::common::v1::Metadata>,
) -> Result<T, Status> {
    let message = messages
        .into_iter()
        .next()
        .ok_or_else(|| Status::internal("the node sent no answer"))?;
    match metadata(&message) {
        Some(m) if !m.error.is_empty() => Err(Status::new(Code::from(m.code), m.error.clone())),
        _ => Ok(message),
    }
}

/// The config in effect on `target` and its digest.
async fn in_effect(connection: &Connection, target: Option<&str>) -> Result<MachineConfigSpec> {
    let label = connection.label(target);
    let mut client = ResourceServiceClient::new(connection.channel.clone());
    let request = resource_api::GetRequest {
        namespace: String::new(),
        r#type: MachineConfigSpec::TYPE.to_string(),
        id: MachineConfigSpec::ACTIVE.to_string(),
    };
    let answer = client
        .get(connection.request_to(target, request)?)
        .await
        .and_then(|a| one(a.into_inner().messages, |m| m.metadata.as_ref()))
        .map_err(|status| match status.code() {
            Code::NotFound => anyhow::anyhow!(
                "{label} has no config in effect: apply one with `osctl apply-config`"
            ),
            _ => anyhow::Error::new(status)
                .context(format!("cannot read the config in effect on {label}")),
        })?;
    let resource = answer
        .resource
        .with_context(|| format!("{label} sent no config"))?;
    serde_yaml_ng::from_str(&resource.spec)
        .with_context(|| format!("the config resource of {label} does not parse"))
}

/// Applies `yaml` to `target` as a change of the config with `base_digest`.
async fn apply(
    connection: &Connection,
    target: Option<&str>,
    args: &ApplyArgs,
    yaml: String,
    base_digest: String,
) -> Result<api::ApplyConfigurationResult, Status> {
    let mut client = MachineServiceClient::new(connection.channel.clone());
    let request = connection
        .request_to(target, args.request(yaml.into_bytes(), base_digest))
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let answer = client.apply_configuration(request).await?;
    one(answer.into_inner().messages, |m| m.metadata.as_ref())
}

/// Runs `one` for each node the call is for. With one node its error is the command's;
/// with several, as the other verbs do, each node's error is printed, the other nodes
/// still run, and the command fails at the end.
async fn for_each_target<F, Fut>(connection: &Connection, mut one: F) -> Result<()>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut targets = connection.targets();
    if targets.len() == 1 {
        return one(targets.remove(0)).await;
    }
    let mut failures = Failures::default();
    for target in targets {
        let label = connection.label(target.as_deref());
        if let Err(e) = one(target).await {
            eprintln!("{label}: error: {e:#}");
            failures.0 += 1;
        }
    }
    failures.finish()
}

pub async fn patch(connection: &Connection, command: PatchCmd) -> Result<()> {
    let PatchCmd::MachineConfig { patch, apply: args } = command;
    let (patch, args) = (&patch, &args);
    for_each_target(connection, |target| async move {
        let target = target.as_deref();
        let label = connection.label(target);
        let current = in_effect(connection, target).await?;
        let config = Config::parse(&current.yaml)
            .with_context(|| format!("the config in effect on {label}"))?;
        let patched = crate::apply_patches(config, patch)?.to_yaml()?;
        let result = apply(connection, target, args, patched, current.digest)
            .await
            .with_context(|| format!("{label}: the patched config was not applied"))?;
        args.print(&label, &result);
        Ok(())
    })
    .await
}

/// Lines starting with this are osctl's notes in the file being edited, removed on save.
const NOTE: &str = "#| ";

/// The file the editor opens: notes (what this is, the last error), then the config.
fn with_notes(label: &str, error: Option<&str>, yaml: &str) -> String {
    let mut text = format!(
        "{NOTE}The machine config in effect on {label}. Lines starting with '#|' are ignored;\n\
         {NOTE}an empty file cancels the edit.\n"
    );
    if let Some(error) = error {
        text.push_str(&format!("{NOTE}\n{NOTE}The edit was not applied:\n"));
        for line in error.lines() {
            text.push_str(&format!("{NOTE}  {line}\n"));
        }
    }
    text.push_str(&format!("{NOTE}\n"));
    text.push_str(yaml);
    text
}

fn without_notes(text: &str) -> String {
    text.split_inclusive('\n')
        .filter(|line| !line.starts_with(NOTE.trim_end()))
        .collect()
}

/// Opens `path` in the user's editor ($OSCTL_EDITOR, $EDITOR, or vi), through the shell so
/// the variable may carry arguments, as kubectl does.
async fn run_editor(path: &Path) -> Result<()> {
    let editor = ["OSCTL_EDITOR", "EDITOR"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|e| !e.trim().is_empty()))
        .unwrap_or_else(|| "vi".to_string());
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("osctl-edit")
        .arg(path)
        .status()
        .await
        .with_context(|| format!("cannot start the editor {editor:?}"))?;
    if !status.success() {
        bail!("the editor {editor:?} failed ({status}); nothing was applied");
    }
    Ok(())
}

/// Refusals an edit can fix: the config does not parse or validate, or the plan refuses
/// it in this mode.
fn fixable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::InvalidArgument | Code::FailedPrecondition
    )
}

pub async fn edit(connection: &Connection, command: EditCmd) -> Result<()> {
    let EditCmd::MachineConfig { apply: args } = command;
    let args = &args;
    for_each_target(connection, |target| async move {
        edit_one(connection, target.as_deref(), args).await
    })
    .await
}

async fn edit_one(connection: &Connection, target: Option<&str>, args: &ApplyArgs) -> Result<()> {
    let label = connection.label(target);
    let current = in_effect(connection, target).await?;
    // Private (the config holds secrets), and removed unless an edit is to be kept.
    let file = tempfile::Builder::new()
        .prefix("osctl-edit-")
        .suffix(".yaml")
        .tempfile()
        .context("cannot create a file to edit")?;
    let mut text = current.yaml.clone();
    let mut error: Option<String> = None;
    loop {
        std::fs::write(file.path(), with_notes(&label, error.as_deref(), &text))
            .with_context(|| format!("cannot write {}", file.path().display()))?;
        run_editor(file.path()).await?;
        let edited = without_notes(&crate::read(file.path())?);
        if edited.trim().is_empty() {
            println!("{label}: edit cancelled (empty file); nothing was applied");
            return Ok(());
        }
        if edited == current.yaml {
            println!("{label}: no changes; nothing was applied");
            return Ok(());
        }
        if let Some(error) = &error {
            if edited == text {
                let kept = keep(file)?;
                bail!(
                    "{label}: the edit was saved unchanged, so it still fails: {error}\n\
                     nothing was applied; the edit is kept in {}",
                    kept.display()
                );
            }
        }
        text = edited;
        if let Err(e) = Config::parse(&text) {
            error = Some(format!("{e:#}"));
            continue;
        }
        match apply(
            connection,
            target,
            args,
            text.clone(),
            current.digest.clone(),
        )
        .await
        {
            Ok(result) => {
                args.print(&label, &result);
                return Ok(());
            }
            Err(status) if fixable(&status) => error = Some(status.message().to_string()),
            Err(status) => {
                let kept = keep(file)?;
                return Err(anyhow::Error::new(status).context(format!(
                    "{label}: the edit was not applied; it is kept in {}",
                    kept.display()
                )));
            }
        }
    }
}

/// Keeps the edited file past this run, so a refused edit is not lost.
fn keep(file: tempfile::NamedTempFile) -> Result<std::path::PathBuf> {
    let (_, path) = file.keep().context("cannot keep the edited file")?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_removed_and_errors_shown_line_by_line() {
        let yaml = "version: v1\nkind: MachineConfig\n# a comment of the user's\n";
        let text = with_notes("node-a", Some("line 1\nline 2"), yaml);
        assert!(text.contains("#|   line 1\n#|   line 2\n"), "{text}");
        assert_eq!(without_notes(&text), yaml);
        assert_eq!(without_notes(&with_notes("n", None, yaml)), yaml);
    }
}
