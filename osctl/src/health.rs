//! `osctl health`: the cluster's nodes (the `-n` list, else the members the endpoint
//! knows), each checked in turn, through the endpoint: reachable over mTLS and out of
//! maintenance, its clock within 2 s of this machine's, its services healthy, the same
//! members as the endpoint, KubePrism running. Each check is printed as it runs, retried
//! until it passes or the wait runs out; the first that does not pass ends the command
//! with an error naming the node and the check.

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Result};
use basalt_api::machine::v1 as api;
use basalt_api::machine::v1::machine_service_client::MachineServiceClient;
use basalt_api::resource::v1 as rapi;
use basalt_api::resource::v1::resource_service_client::ResourceServiceClient;
use basalt_resource::proto::Timestamp;
use tonic::transport::Channel;

use crate::connect::Connection;

/// The most a node's clock may be off from this machine's.
const MAX_CLOCK_OFFSET: Duration = Duration::from_secs(2);
/// Between two tries of a check that did not pass.
const RETRY: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, clap::Args)]
pub struct HealthArgs {
    /// How long each check may take to pass.
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    wait_timeout: Duration,
}

/// The local time halfway through a call: what the node's answer is compared with.
pub fn midpoint(sent: SystemTime, received: SystemTime) -> SystemTime {
    sent + received.duration_since(sent).unwrap_or_default() / 2
}

/// How far `time` (a node's) is ahead of `local`, in seconds.
pub fn offset(time: &Timestamp, local: SystemTime) -> f64 {
    let local = local
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    time.seconds as f64 + f64::from(time.nanos) / 1e9 - local
}

/// A node to check: how it is named, and the address calls are forwarded to.
struct Target {
    name: String,
    address: String,
}

/// A call for `node`, forwarded by the endpoint.
fn to<T>(node: &str, message: T) -> Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        basalt_api::NODES_HEADER,
        node.parse()
            .map_err(|_| anyhow!("{node:?} is not a node name"))?,
    );
    Ok(request)
}

/// The specs (YAML) of every resource of `type` on `node`, by id.
async fn list(channel: &Channel, node: &str, r#type: &str) -> Result<Vec<(String, String)>> {
    let request = rapi::ListRequest {
        r#type: r#type.into(),
        ..Default::default()
    };
    let mut stream = ResourceServiceClient::new(channel.clone())
        .list(to(node, request)?)
        .await?
        .into_inner();
    let mut found = Vec::new();
    while let Some(message) = stream.message().await? {
        if let Some(m) = message.metadata.as_ref().filter(|m| !m.error.is_empty()) {
            bail!("{}", m.error);
        }
        if let Some(resource) = message.resource {
            let id = resource.metadata.map(|m| m.id).unwrap_or_default();
            found.push((id, resource.spec));
        }
    }
    Ok(found)
}

/// The members `node` knows: name → first address.
async fn members(channel: &Channel, node: &str) -> Result<Vec<Target>> {
    let mut targets = Vec::new();
    for (name, spec) in list(channel, node, "members").await? {
        let spec: serde_json::Value = serde_yaml_ng::from_str(&spec)?;
        let address = spec["addresses"][0]
            .as_str()
            .unwrap_or_default()
            .to_string();
        targets.push(Target { name, address });
    }
    Ok(targets)
}

/// The first error of a forwarded answer's messages.
fn node_error(metadata: &Option<basalt_api::common::v1::Metadata>) -> Result<()> {
    match metadata {
        Some(m) if !m.error.is_empty() => Err(anyhow!("{}", m.error)),
        _ => Ok(()),
    }
}

async fn reachable(channel: &Channel, node: &str) -> Result<String> {
    let answer = MachineServiceClient::new(channel.clone())
        .version(to(node, api::VersionRequest {})?)
        .await?
        .into_inner();
    let m = answer
        .messages
        .first()
        .ok_or_else(|| anyhow!("no answer"))?;
    node_error(&m.metadata)?;
    if m.maintenance {
        bail!("in maintenance mode: it has no config");
    }
    Ok(format!("version {}", m.tag))
}

async fn clock(channel: &Channel, node: &str) -> Result<String> {
    let sent = SystemTime::now();
    let answer = MachineServiceClient::new(channel.clone())
        .time(to(node, api::TimeRequest {})?)
        .await?
        .into_inner();
    let local = midpoint(sent, SystemTime::now());
    let m = answer
        .messages
        .first()
        .ok_or_else(|| anyhow!("no answer"))?;
    node_error(&m.metadata)?;
    let offset = offset(&m.time.unwrap_or_default(), local);
    if offset.abs() > MAX_CLOCK_OFFSET.as_secs_f64() {
        bail!("off by {offset:+.3} s (more than {MAX_CLOCK_OFFSET:?})");
    }
    Ok(format!("offset {offset:+.3} s"))
}

async fn services(channel: &Channel, node: &str) -> Result<String> {
    let answer = MachineServiceClient::new(channel.clone())
        .service_list(to(node, api::ServiceListRequest {})?)
        .await?
        .into_inner();
    let mut count = 0;
    for m in &answer.messages {
        node_error(&m.metadata)?;
        for s in &m.services {
            // Not meant to run here (its layer is not in the image, say): nothing to check.
            if s.state == "Skipped" {
                continue;
            }
            if !s.healthy {
                bail!(
                    "service {} is {} and not healthy: {}",
                    s.id,
                    s.state,
                    s.message
                );
            }
            count += 1;
        }
    }
    Ok(format!("{count} healthy"))
}

/// Whether `node` knows the members the endpoint knows, both read now: membership may be
/// changing while the check runs (a node renamed), and both views follow it.
async fn same_members(channel: &Channel, endpoint: &str, node: &str) -> Result<String> {
    let names = |targets: Vec<Target>| -> BTreeSet<String> {
        targets.into_iter().map(|t| t.name).collect()
    };
    let expected = names(members(channel, endpoint).await?);
    let known = names(members(channel, node).await?);
    if known != expected {
        let missing: Vec<_> = expected.difference(&known).collect();
        let extra: Vec<_> = known.difference(&expected).collect();
        bail!("knows other members: missing {missing:?}, extra {extra:?}");
    }
    Ok(format!("{} members", known.len()))
}

async fn kubeprism(channel: &Channel, node: &str) -> Result<String> {
    let status = list(channel, node, "kubeprismstatus").await?;
    let Some((_, spec)) = status.first() else {
        return Ok("disabled".into());
    };
    let spec: serde_json::Value = serde_yaml_ng::from_str(spec)?;
    let state = spec["state"].as_str().unwrap_or_default();
    if state != "running" {
        bail!("{state}: {}", spec["problems"]);
    }
    let healthy = spec["healthy"].as_u64().unwrap_or_default();
    let upstreams = spec["upstreams"].as_u64().unwrap_or_default();
    Ok(if healthy == 0 {
        // Basalt's control planes run no kube-apiserver yet: nothing answers there.
        format!(
            "running on {}, warning: no healthy upstream of {upstreams} (no API server answers)",
            spec["listen"].as_str().unwrap_or_default()
        )
    } else {
        format!(
            "running on {}, {healthy} of {upstreams} upstreams healthy",
            spec["listen"].as_str().unwrap_or_default()
        )
    })
}

/// Retries `check` until it passes or `deadline`; prints the outcome.
async fn check<F, Fut>(what: &str, target: &Target, deadline: Instant, check: F) -> Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<String>>,
{
    loop {
        match check().await {
            Ok(detail) => {
                println!("  {what:<10} OK  {detail}");
                return Ok(());
            }
            Err(e) if Instant::now() >= deadline => {
                println!("  {what:<10} FAILED  {e:#}");
                bail!("{} ({}): {what}: {e:#}", target.name, target.address);
            }
            Err(_) => tokio::time::sleep(RETRY).await,
        }
    }
}

pub async fn run(connection: &Connection, args: HealthArgs) -> Result<()> {
    let channel = &connection.channel;
    let deadline = Instant::now() + args.wait_timeout;
    // The endpoint's own view of the cluster: the nodes to check (each one's members are
    // compared with the endpoint's, read again at every try).
    let endpoint = connection.endpoint.clone();
    let known = loop {
        match members(channel, &endpoint).await {
            Ok(found) if !found.is_empty() => break found,
            Ok(_) if Instant::now() >= deadline => {
                bail!("{endpoint} knows no members: is it configured, and is trustd up?")
            }
            Err(e) if Instant::now() >= deadline => bail!("{endpoint}: members: {e:#}"),
            _ => tokio::time::sleep(RETRY).await,
        }
    };
    let targets: Vec<Target> = if connection.nodes.is_empty() {
        known
    } else {
        connection
            .nodes
            .iter()
            .map(|n| Target {
                name: n.clone(),
                address: n.clone(),
            })
            .collect()
    };
    println!(
        "{} nodes, from the members {endpoint} knows: {}",
        targets.len(),
        targets
            .iter()
            .map(|t| format!("{} ({})", t.name, t.address))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for target in &targets {
        println!("{} ({})", target.name, target.address);
        let node = target.address.as_str();
        check("reachable", target, deadline, || reachable(channel, node)).await?;
        check("clock", target, deadline, || clock(channel, node)).await?;
        check("services", target, deadline, || services(channel, node)).await?;
        check("members", target, deadline, || {
            same_members(channel, &endpoint, node)
        })
        .await?;
        check("kubeprism", target, deadline, || kubeprism(channel, node)).await?;
    }
    println!("healthy: {} nodes", targets.len());
    Ok(())
}
