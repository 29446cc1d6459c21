use std::collections::BTreeMap;

use async_trait::async_trait;
use basalt_controller_runtime::{Action, Controller, ControllerError, Input, Output, Runtime};
use basalt_resources::cluster::{ForwardTargetSpec, MemberSpec};
use basalt_resources::k8s::ControlPlaneEndpointSpec;
use basalt_resources::network::HostnameSpec;

/// Derives the nodes this node's API may forward calls to (`ForwardTargets/node`): its
/// own names and addresses (its hostname, and what its API certificate names), the
/// control-plane endpoint's host, and every member of the cluster by name (reached at
/// its first address) and by address.
#[derive(Debug)]
pub struct ForwardTargetsController {
    /// The node's names and addresses.
    sans: Vec<String>,
}

impl ForwardTargetsController {
    pub fn new(sans: Vec<String>) -> Self {
        ForwardTargetsController { sans }
    }
}

#[async_trait]
impl Controller for ForwardTargetsController {
    basalt_controller_runtime::declare! {
        name: "cluster.ForwardTargetsController",
        inputs: [
            Input::weak::<HostnameSpec>().with_id(HostnameSpec::ID),
            Input::weak::<ControlPlaneEndpointSpec>().with_id(ControlPlaneEndpointSpec::ID),
            Input::weak::<MemberSpec>(),
        ],
        outputs: [
            // Shared: tests (and later other sources) add targets of their own.
            Output::shared::<ForwardTargetSpec>(),
        ],
    }

    async fn reconcile(&mut self, rt: &mut Runtime) -> Result<Action, ControllerError> {
        let hostname = rt
            .get::<HostnameSpec>(HostnameSpec::ID)
            .await?
            .map(|r| r.spec.hostname);
        let endpoint = rt
            .get::<ControlPlaneEndpointSpec>(ControlPlaneEndpointSpec::ID)
            .await?
            .map(|r| r.spec.endpoint);
        let members: Vec<_> = rt
            .list::<MemberSpec>()
            .await?
            .into_iter()
            .map(|m| (m.metadata.id, m.spec.addresses))
            .collect();
        let spec = targets(&self.sans, hostname, endpoint.as_deref(), members);
        rt.put_spec(ForwardTargetSpec::NODE, spec).await?;
        Ok(Action::Done)
    }
}

/// The node's own names and addresses, the endpoint's host, the members by name (with
/// their addresses) and by address. Names are kept lowercase, as hosts are compared.
pub fn targets(
    sans: &[String],
    hostname: Option<String>,
    endpoint: Option<&str>,
    members: Vec<(String, Vec<String>)>,
) -> ForwardTargetSpec {
    let mut targets: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let host_of = |url: &str| {
        let rest = url.strip_prefix("https://").unwrap_or(url);
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        basalt_api::client::Target::parse(authority, 0)
            .ok()
            .map(|t| t.host)
    };
    let own = sans.iter().cloned().chain(hostname);
    for host in own.chain(endpoint.and_then(host_of)) {
        if !host.is_empty() {
            targets.entry(host.to_ascii_lowercase()).or_default();
        }
    }
    for (name, addresses) in members {
        for address in &addresses {
            targets.entry(address.to_ascii_lowercase()).or_default();
        }
        targets.insert(name.to_ascii_lowercase(), addresses);
    }
    ForwardTargetSpec { targets }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_names_the_endpoint_and_members_by_name_and_address() {
        let spec = targets(
            &["10.5.0.2".into(), "Node.Lab".into()],
            Some("cp-1".into()),
            Some("https://[fd00::1]:6443/"),
            vec![
                ("w-1".into(), vec!["10.5.0.3".into(), "fd00::3".into()]),
                ("cp-1".into(), vec!["10.5.0.2".into()]),
            ],
        );
        let got: Vec<_> = spec
            .targets
            .iter()
            .map(|(k, v)| format!("{k}={}", v.join(",")))
            .collect();
        assert_eq!(
            got,
            [
                "10.5.0.2=",
                "10.5.0.3=",
                "cp-1=10.5.0.2",
                "fd00::1=",
                "fd00::3=",
                "node.lab=",
                "w-1=10.5.0.3,fd00::3",
            ]
        );
        assert_eq!(
            targets(&[], None, Some("https://api.lab"), vec![]).targets,
            BTreeMap::from([("api.lab".to_string(), vec![])])
        );
    }
}
