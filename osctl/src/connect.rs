//! From the global flags and the client config to a channel and a node list.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use basalt_api::client::{self, parse_fingerprint, ClientTls, Target};
use basalt_machine_config::client::ClientConfig;
use tonic::transport::Channel;

use crate::Global;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// An error with its causes: transport errors say what went wrong only in their sources.
fn chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

/// A connection to one endpoint, and the nodes each call is for.
pub struct Connection {
    pub channel: Channel,
    pub endpoint: String,
    pub nodes: Vec<String>,
}

fn split(values: &[String]) -> Vec<String> {
    values
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .collect()
}

impl Connection {
    pub async fn open(global: &Global, osconfig: &Path) -> Result<Connection> {
        let client = if osconfig.exists() {
            ClientConfig::parse(&crate::read(osconfig)?)
                .with_context(|| format!("{}", osconfig.display()))?
        } else {
            ClientConfig::default()
        };
        let name = global
            .context
            .clone()
            .unwrap_or_else(|| client.context.clone());
        let context = client.contexts.get(&name);
        if global.context.is_some() && context.is_none() {
            bail!("no context {name:?} in {}", osconfig.display());
        }

        let mut endpoints = split(&global.endpoints);
        if endpoints.is_empty() {
            endpoints = context.map(|c| c.endpoints.clone()).unwrap_or_default();
        }
        if endpoints.is_empty() {
            bail!("no endpoint: pass -e/--endpoints or set one with `osctl config endpoint`");
        }
        let mut nodes = split(&global.nodes);
        if nodes.is_empty() {
            nodes = context.map(|c| c.nodes.clone()).unwrap_or_default();
        }

        let tls = if global.insecure {
            let pin = global
                .fingerprint
                .as_deref()
                .map(parse_fingerprint)
                .transpose()?;
            ClientTls::Insecure { pin }
        } else {
            let Some(context) = context else {
                bail!(
                    "no client config at {} (or no current context): run `osctl gen config`, \
                     or pass --insecure for a node in maintenance mode",
                    osconfig.display()
                );
            };
            ClientTls::Mutual {
                ca: context.ca.clone(),
                crt: context.crt.clone(),
                key: context.key.expose().to_string(),
            }
        };

        // The first endpoint that answers.
        let mut errors = Vec::new();
        for endpoint in &endpoints {
            let target = Target::parse(endpoint, basalt_api::DEFAULT_PORT)?;
            match client::connect(&target, &tls, CONNECT_TIMEOUT).await {
                Ok(channel) => {
                    return Ok(Connection {
                        channel,
                        endpoint: endpoint.clone(),
                        nodes,
                    })
                }
                Err(e) => errors.push(format!("{endpoint}: {}", chain(&e))),
            }
        }
        bail!("no endpoint answered:\n  {}", errors.join("\n  "))
    }

    /// A request carrying the node list.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if !self.nodes.is_empty() {
            if let Ok(value) = self.nodes.join(",").parse() {
                request
                    .metadata_mut()
                    .insert(basalt_api::NODES_HEADER, value);
            }
        }
        request
    }

    /// The node a message came from: its label, or the endpoint when it was not
    /// forwarded.
    pub fn node(&self, metadata: &Option<basalt_api::common::v1::Metadata>) -> String {
        match metadata {
            Some(m) if !m.node.is_empty() => m.node.clone(),
            _ => self.endpoint.clone(),
        }
    }
}

/// Per-node errors inside an answer: printed, and counted so the command fails at the
/// end, after the other nodes' answers.
#[derive(Default)]
pub struct Failures(pub usize);

impl Failures {
    /// True when the message is a node's error (and so has no content).
    pub fn check(
        &mut self,
        connection: &Connection,
        metadata: &Option<basalt_api::common::v1::Metadata>,
    ) -> bool {
        match metadata {
            Some(m) if !m.error.is_empty() => {
                eprintln!("{}: error: {}", connection.node(metadata), m.error);
                self.0 += 1;
                true
            }
            _ => false,
        }
    }

    pub fn finish(self) -> Result<()> {
        if self.0 > 0 {
            bail!("{} node(s) failed", self.0);
        }
        Ok(())
    }
}
