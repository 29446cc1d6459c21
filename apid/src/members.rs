//! The cluster's members, which forwarding is limited to: followed from the node's
//! `Member` resources (cluster membership through trustd). A call may name a member by
//! its name or by one of its addresses; any other node is refused. A node that knows no
//! member (no membership yet, or none configured) forwards to the nodes named as they are.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use basalt_api::resource::v1 as rapi;
use basalt_resource::ResourceSpec;
use basalt_resources::cluster::MemberSpec;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::certificates::node_resources;
use crate::shared::Shared;

/// How long apid waits before it watches the members again after the watch failed.
const REWATCH_DELAY: Duration = Duration::from_secs(1);

/// Member name → addresses.
#[derive(Debug, Default)]
pub(crate) struct Members(RwLock<BTreeMap<String, Vec<String>>>);

impl Members {
    fn replace(&self, members: BTreeMap<String, Vec<String>>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = members;
    }

    /// Where to send a call for `node`: a member's first address for its name, a
    /// member's address as it is; refused when members are known and `node` is none.
    pub fn resolve(&self, node: &str) -> Result<String, Status> {
        let members = self.0.read().unwrap_or_else(|p| p.into_inner());
        if members.is_empty() {
            return Ok(node.to_string());
        }
        if let Some(address) = members.get(node).and_then(|a| a.first()) {
            return Ok(address.clone());
        }
        let host = basalt_api::client::Target::parse(node, 0)
            .map(|t| t.host)
            .unwrap_or_default();
        if members.values().flatten().any(|a| *a == host) {
            return Ok(node.to_string());
        }
        Err(Status::permission_denied(format!(
            "node {node} is not a member of the cluster (osctl get members lists them)"
        )))
    }
}

async fn list(shared: &Shared) -> Result<BTreeMap<String, Vec<String>>, Status> {
    let request = rapi::ListRequest {
        r#type: MemberSpec::TYPE.to_string(),
        ..Default::default()
    };
    let mut stream = node_resources(&shared.backend)
        .list(request)
        .await?
        .into_inner();
    let mut members = BTreeMap::new();
    while let Some(message) = stream.message().await? {
        let Some(resource) = message.resource else {
            continue;
        };
        let id = resource
            .metadata
            .as_ref()
            .map(|m| m.id.clone())
            .unwrap_or_default();
        match serde_yaml_ng::from_str::<MemberSpec>(&resource.spec) {
            Ok(spec) => {
                members.insert(id, spec.addresses);
            }
            Err(e) => tracing::error!(member = %id, error = %e, "an unreadable member"),
        }
    }
    Ok(members)
}

/// Keeps `shared.members` as the node's `Member` resources are: listed again on every
/// change.
pub(crate) async fn follow_members(shared: Arc<Shared>, cancel: CancellationToken) {
    loop {
        let request = rapi::WatchRequest {
            r#type: MemberSpec::TYPE.to_string(),
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
                        Ok(members) => shared.members.replace(members),
                        Err(status) => {
                            tracing::error!(error = %status.message(), "cannot list the members")
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
                tracing::error!(error = %status.message(), "cannot watch the members");
            }
        }
        tokio::time::sleep(REWATCH_DELAY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_members_are_reached_once_members_are_known() {
        let members = Members::default();
        assert_eq!(members.resolve("10.9.9.9").unwrap(), "10.9.9.9");
        members.replace(BTreeMap::from([
            ("cp-1".to_string(), vec!["10.5.0.2".to_string()]),
            ("w-1".to_string(), vec!["10.5.0.3".to_string()]),
        ]));
        assert_eq!(members.resolve("w-1").unwrap(), "10.5.0.3");
        assert_eq!(members.resolve("10.5.0.2").unwrap(), "10.5.0.2");
        assert_eq!(members.resolve("10.5.0.2:50000").unwrap(), "10.5.0.2:50000");
        for outsider in ["10.9.9.9", "w-2", "example.com", "10.5.0.33"] {
            let status = members.resolve(outsider).unwrap_err();
            assert_eq!(status.code(), tonic::Code::PermissionDenied, "{outsider}");
            assert!(status.message().contains("not a member"));
        }
    }
}
