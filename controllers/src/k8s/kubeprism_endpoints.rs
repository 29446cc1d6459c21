use async_trait::async_trait;
use basalt_controller_runtime::{Action, Controller, ControllerError, Input, Output, Runtime};
use basalt_resource::namespaces;
use basalt_resources::k8s::{
    ControlPlaneEndpointSpec, ControlPlaneMemberSpec, KubePrismEndpointsSpec,
};

/// Derives the API servers KubePrism balances over from the control-plane endpoint and
/// the control-plane members. With neither there is no `KubePrismEndpoints` resource.
#[derive(Debug, Default)]
pub struct KubePrismEndpointsController;

#[async_trait]
impl Controller for KubePrismEndpointsController {
    basalt_controller_runtime::declare! {
        name: "k8s.KubePrismEndpointsController",
        inputs: [
            Input::weak::<ControlPlaneEndpointSpec>().with_id(ControlPlaneEndpointSpec::ID),
            Input::weak::<ControlPlaneMemberSpec>().in_namespace(namespaces::CLUSTER),
        ],
        outputs: [
            Output::exclusive::<KubePrismEndpointsSpec>(),
        ],
    }

    async fn reconcile(&mut self, rt: &mut Runtime) -> Result<Action, ControllerError> {
        let endpoint = rt
            .get::<ControlPlaneEndpointSpec>(ControlPlaneEndpointSpec::ID)
            .await?
            .map(|r| r.spec.endpoint);
        let mut members = rt.list::<ControlPlaneMemberSpec>().await?;
        if endpoint.is_none() && members.is_empty() {
            return Ok(Action::Done);
        }
        members.sort_by(|a, b| a.metadata.id.cmp(&b.metadata.id));
        let members: Vec<_> = members.into_iter().map(|m| m.spec).collect();
        let endpoints = endpoints(endpoint.as_deref(), &members);
        rt.put_spec(
            KubePrismEndpointsSpec::ID,
            KubePrismEndpointsSpec { endpoints },
        )
        .await?;
        Ok(Action::Done)
    }
}

/// `host:port` of the cluster endpoint (an `https://` URL, port 443 when it names none),
/// then of every member address, without repeats. An endpoint that is not a URL is
/// logged and left out; the balancer reports whatever is wrong with the rest.
pub fn endpoints(endpoint: Option<&str>, members: &[ControlPlaneMemberSpec]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |e: String| {
        if !out.contains(&e) {
            out.push(e);
        }
    };
    if let Some(url) = endpoint {
        match host_port_of_url(url) {
            Some(e) => push(e),
            None => tracing::warn!(
                endpoint = url,
                "ignoring a control-plane endpoint that is not https://HOST[:PORT]"
            ),
        }
    }
    for member in members {
        for address in &member.addresses {
            let host = if address.contains(':') && !address.starts_with('[') {
                format!("[{address}]")
            } else {
                address.clone()
            };
            push(format!("{host}:{}", member.api_server_port));
        }
    }
    out
}

fn host_port_of_url(url: &str) -> Option<String> {
    let rest = url.strip_prefix("https://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    // A port follows the last ':' unless that ':' is inside an IPv6 literal.
    let has_port = authority.rsplit_once(':').is_some_and(|(host, _)| {
        !host.ends_with(':') && (host.ends_with(']') || !host.contains(':'))
    });
    Some(if has_port {
        authority.to_string()
    } else {
        format!("{authority}:443")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(addresses: &[&str], port: u16) -> ControlPlaneMemberSpec {
        ControlPlaneMemberSpec {
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            api_server_port: port,
        }
    }

    #[test]
    fn endpoint_first_then_members_without_repeats() {
        let got = endpoints(
            Some("https://api.lab:6443/"),
            &[
                member(&["10.0.0.2", "fd00::2"], 6443),
                member(&["10.0.0.2"], 6443),
            ],
        );
        assert_eq!(got, ["api.lab:6443", "10.0.0.2:6443", "[fd00::2]:6443"]);
        assert_eq!(endpoints(Some("https://api.lab"), &[]), ["api.lab:443"]);
        assert_eq!(endpoints(Some("https://[fd00::1]"), &[]), ["[fd00::1]:443"]);
        assert_eq!(
            endpoints(Some("https://[fd00::1]:6443"), &[]),
            ["[fd00::1]:6443"]
        );
        assert!(endpoints(Some("http://api.lab:6443"), &[]).is_empty());
        assert!(endpoints(Some("https://"), &[]).is_empty());
    }
}
