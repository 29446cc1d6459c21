//! From the global flags and the client config to a channel and a node list.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use basalt_api::client::{self, parse_fingerprint, ClientTls, Target};
use basalt_machine_config::client::ClientConfig;
use tonic::metadata::{Ascii, MetadataValue};
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
    /// What is wrong with the client certificate, if anything (see
    /// [`crate::diagnose::client_certificate_problem`]).
    pub client_certificate_problem: Option<String>,
    /// `nodes` as the header each request carries; `None` for the endpoint itself.
    nodes_header: Option<MetadataValue<Ascii>>,
}

/// The node list as request metadata, checked before anything is sent: a node that could
/// not be sent and were left out would turn a call meant for it into one for the endpoint
/// itself (`osctl -n <node> reboot` rebooting the wrong machine).
fn nodes_header(nodes: &[String]) -> Result<Option<MetadataValue<Ascii>>> {
    if nodes.is_empty() {
        return Ok(None);
    }
    for node in nodes {
        // gRPC's ASCII metadata is printable ASCII; the header parser alone would let
        // other bytes (a UTF-8 name) through raw, for the server to misread.
        if !node.bytes().all(|b| (b' '..=b'~').contains(&b)) {
            bail!("node {node:?} cannot be sent in request metadata: only printable ASCII can");
        }
    }
    let joined = nodes.join(",");
    let header = joined
        .parse()
        .with_context(|| format!("the node list {joined:?} cannot be sent"))?;
    Ok(Some(header))
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
        let nodes_header = nodes_header(&nodes)?;

        let mut client_certificate_problem = None;
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
            client_certificate_problem = crate::diagnose::client_certificate_problem(
                &context.crt,
                time::OffsetDateTime::now_utc(),
            );
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
                        client_certificate_problem,
                        nodes_header,
                    })
                }
                Err(e) => errors.push(match crate::diagnose::explain_std(&e, endpoint) {
                    Some(what) => format!("{what}\n    ({endpoint}: {})", chain(&e)),
                    None => format!("{endpoint}: {}", chain(&e)),
                }),
            }
        }
        bail!("no endpoint answered:\n  {}", errors.join("\n  "))
    }

    /// A request carrying the node list.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(header) = &self.nodes_header {
            request
                .metadata_mut()
                .insert(basalt_api::NODES_HEADER, header.clone());
        }
        request
    }

    /// Each node a call is for, one at a time: `None` is the endpoint itself.
    pub fn targets(&self) -> Vec<Option<String>> {
        if self.nodes.is_empty() {
            return vec![None];
        }
        self.nodes.iter().cloned().map(Some).collect()
    }

    /// A request for `target` alone (see [`Connection::targets`]).
    pub fn request_to<T>(&self, target: Option<&str>, message: T) -> Result<tonic::Request<T>> {
        let mut request = tonic::Request::new(message);
        if let Some(header) =
            nodes_header(&target.map(str::to_string).into_iter().collect::<Vec<_>>())?
        {
            request
                .metadata_mut()
                .insert(basalt_api::NODES_HEADER, header);
        }
        Ok(request)
    }

    /// How `target` is named in output: the node, or the endpoint itself.
    pub fn label(&self, target: Option<&str>) -> String {
        target.unwrap_or(&self.endpoint).to_string()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_that_cannot_be_sent_is_an_error_naming_it() {
        let nodes = |list: &[&str]| list.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert!(nodes_header(&[]).unwrap().is_none());
        let header = nodes_header(&nodes(&["10.0.0.2", "node-b"]))
            .unwrap()
            .unwrap();
        assert_eq!(header.to_str().unwrap(), "10.0.0.2,node-b");

        for bad in ["nöde", "a\nb", "tab\u{7f}"] {
            let err = nodes_header(&nodes(&["10.0.0.2", bad])).unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }
}
