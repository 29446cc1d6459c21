//! The nodes calls may be forwarded to: followed from the node's `ForwardTargets`
//! resources (the node's own names and addresses, the control-plane endpoint's host and
//! the cluster's members; tests add their own). A call naming any other node is refused
//! before a connection is made, so that the API cannot be made to reach, or probe, an
//! address of the caller's choosing.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use basalt_api::client::Target;
use basalt_api::resource::v1 as rapi;
use basalt_resource::ResourceSpec;
use basalt_resources::cluster::ForwardTargetSpec;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::certificates::node_resources;
use crate::shared::Shared;

/// How long apid waits before it watches the targets again after the watch failed.
const REWATCH_DELAY: Duration = Duration::from_secs(1);

/// Target (a name or an address, lowercase) → the addresses it is reached at (none: as
/// written), from every `ForwardTargets` resource.
#[derive(Debug, Default)]
pub(crate) struct ForwardTargets(RwLock<BTreeMap<String, Vec<String>>>);

impl ForwardTargets {
    fn replace(&self, targets: BTreeMap<String, Vec<String>>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = targets;
    }

    /// Where to send a call for `node`: a target name with addresses at the first of
    /// them, any other target as written; refused when `node`'s host is no target. A
    /// target host is reached on the API's port (`api_port`, or none named) only, unless
    /// a target names the host with another port (`host:port`, as tests do): the
    /// endpoint's host may be a load balancer with other ports behind it.
    pub fn resolve(&self, node: &str, api_port: u16) -> Result<String, Status> {
        let refused = || {
            Status::permission_denied(format!(
                "node {node} is not among the nodes this node forwards to \
                 (osctl get forwardtargets lists them)"
            ))
        };
        let target = Target::parse(node, 0).map_err(|_| refused())?;
        let host = target.host.to_ascii_lowercase();
        let targets = self.0.read().unwrap_or_else(|p| p.into_inner());
        let bracketed = |h: &str| match h.contains(':') {
            true => format!("[{h}]"),
            false => h.to_string(),
        };
        if target.port != 0 && target.port != api_port {
            let host_port = format!("{}:{}", bracketed(&host), target.port);
            return match targets.contains_key(&host_port) {
                true => Ok(node.to_string()),
                false => Err(refused()),
            };
        }
        if let Some(addresses) = targets.get(&host) {
            return Ok(match addresses.first() {
                None => node.to_string(),
                Some(address) if target.port == 0 => address.clone(),
                Some(address) => format!("{}:{}", bracketed(address), target.port),
            });
        }
        if targets
            .values()
            .flatten()
            .any(|a| a.eq_ignore_ascii_case(&host))
        {
            return Ok(node.to_string());
        }
        Err(refused())
    }
}

/// Every `ForwardTargets` resource's targets, merged.
async fn list(shared: &Shared) -> Result<BTreeMap<String, Vec<String>>, Status> {
    let request = rapi::ListRequest {
        r#type: ForwardTargetSpec::TYPE.to_string(),
        ..Default::default()
    };
    let mut stream = node_resources(&shared.backend)
        .list(request)
        .await?
        .into_inner();
    let mut targets: BTreeMap<String, Vec<String>> = BTreeMap::new();
    while let Some(message) = stream.message().await? {
        let Some(resource) = message.resource else {
            continue;
        };
        let id = resource
            .metadata
            .as_ref()
            .map(|m| m.id.clone())
            .unwrap_or_default();
        match serde_yaml_ng::from_str::<ForwardTargetSpec>(&resource.spec) {
            Ok(spec) => {
                for (target, addresses) in spec.targets {
                    let known = targets.entry(target.to_ascii_lowercase()).or_default();
                    for address in addresses {
                        if !known.contains(&address) {
                            known.push(address);
                        }
                    }
                }
            }
            Err(e) => tracing::error!(id = %id, error = %e, "unreadable forward targets"),
        }
    }
    Ok(targets)
}

/// Keeps `shared.forward_targets` as the node's `ForwardTargets` resources are: listed
/// again on every change.
pub(crate) async fn follow_targets(shared: Arc<Shared>, cancel: CancellationToken) {
    loop {
        let request = rapi::WatchRequest {
            r#type: ForwardTargetSpec::TYPE.to_string(),
            ..Default::default()
        };
        let mut client = node_resources(&shared.backend);
        let watch = tokio::select! {
            _ = cancel.cancelled() => return,
            watch = client.watch(request) => watch,
        };
        match watch {
            Ok(events) => {
                let mut events = events.into_inner();
                loop {
                    match list(&shared).await {
                        Ok(targets) => shared.forward_targets.replace(targets),
                        Err(status) => {
                            // Watched again (and listed) after the delay: on a quiet
                            // node the next change may be long in coming.
                            tracing::error!(error = %status.message(), "cannot list the forward targets");
                            break;
                        }
                    }
                    let event = tokio::select! {
                        _ = cancel.cancelled() => return,
                        event = events.message() => event,
                    };
                    if !matches!(event, Ok(Some(_))) {
                        break;
                    }
                }
            }
            Err(status) => {
                tracing::error!(error = %status.message(), "cannot watch the forward targets");
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            () = tokio::time::sleep(REWATCH_DELAY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_targets_are_reached_and_on_the_api_port() {
        let targets = ForwardTargets::default();
        let resolve = |node: &str| targets.resolve(node, 50000);
        let status = resolve("10.9.9.9").unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        targets.replace(BTreeMap::from([
            ("cp-1".to_string(), vec!["10.5.0.2".to_string()]),
            ("w-1".to_string(), vec!["fd00::3".to_string()]),
            ("10.5.0.4".to_string(), vec![]),
            ("api.lab".to_string(), vec![]),
            ("127.0.0.9:4000".to_string(), vec![]),
        ]));
        let resolve = |node: &str| targets.resolve(node, 50000);
        assert_eq!(resolve("cp-1").unwrap(), "10.5.0.2");
        assert_eq!(resolve("CP-1:50000").unwrap(), "10.5.0.2:50000");
        assert_eq!(resolve("w-1:50000").unwrap(), "[fd00::3]:50000");
        assert_eq!(resolve("10.5.0.2").unwrap(), "10.5.0.2");
        assert_eq!(resolve("10.5.0.2:50000").unwrap(), "10.5.0.2:50000");
        assert_eq!(resolve("[fd00::3]:50000").unwrap(), "[fd00::3]:50000");
        assert_eq!(resolve("https://10.5.0.4/").unwrap(), "https://10.5.0.4/");
        assert_eq!(resolve("api.lab:50000").unwrap(), "api.lab:50000");
        assert_eq!(resolve("127.0.0.9:4000").unwrap(), "127.0.0.9:4000");
        for outsider in [
            "10.9.9.9",
            "w-2",
            "example.com",
            "10.5.0.33",
            "10.5.0.2x",
            "",
            // A target host, another port: not the API.
            "api.lab:22",
            "10.5.0.2:6443",
            "cp-1:2379",
            "127.0.0.9",
        ] {
            let status = resolve(outsider).unwrap_err();
            assert_eq!(status.code(), tonic::Code::PermissionDenied, "{outsider}");
            assert!(status.message().contains("forwardtargets"), "{outsider}");
        }
    }
}
