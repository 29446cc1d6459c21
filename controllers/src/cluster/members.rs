use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use basalt_api::trustd::v1::{Member, RegisterRequest};
use basalt_controller_runtime::{Action, Controller, ControllerError, Input, Output, Runtime};
use basalt_resources::cluster::{MachineRole, MemberSpec};
use basalt_resources::config::MachineTypeSpec;
use basalt_resources::k8s::{
    ControlPlaneEndpointSpec, ControlPlaneMemberSpec, DEFAULT_API_SERVER_PORT,
};
use basalt_resources::network::HostnameSpec;
use basalt_resources::secrets::OsRootSpec;

use tonic::transport::Channel;

use crate::trustd;

/// How often a node registers again (trustd drops a member not heard from in 60 s), so
/// that every node learns of a new one within a second.
const REFRESH: Duration = Duration::from_secs(1);
/// trustd forgets a member not heard from in this long: a former name is sent as replaced
/// for as long, so that every trustd, even one unreachable for a while, drops it.
const FORMER_NAME_TTL: Duration = Duration::from_secs(60);
/// The most former names one registration carries (trustd refuses more); the newest.
const MAX_FORMER_NAMES: usize = 8;
/// After a round in which no trustd answered (a control plane's own trustd starts a
/// moment after its config).
const RETRY: Duration = Duration::from_millis(500);

/// Cluster membership: registers the node (its hostname, role and addresses) with trustd
/// on the control-plane endpoint's host and on every control-plane member it knows, every
/// few seconds, and publishes what they answer as `Member` resources (and the control-plane
/// ones as `ControlPlaneMember`, which KubePrism balances over). When no trustd answers,
/// the members known stay.
#[derive(Debug)]
pub struct MembersController {
    /// The node's names and addresses; its addresses are the IPs among them.
    sans: Vec<String>,
    trustd_port: u16,
    /// A channel per trustd, kept between rounds (a registration every second must not
    /// cost a TLS handshake), for the OS CA they were made for.
    channels: HashMap<String, Channel>,
    channels_ca: String,
    /// No trustd answered the last round: said once, not every retry.
    unreachable: bool,
    /// The name registered last, and the names before it with when they were replaced.
    registered_as: Option<String>,
    former_names: Vec<(String, Instant)>,
}

impl MembersController {
    pub fn new(sans: Vec<String>, trustd_port: u16) -> Self {
        MembersController {
            sans,
            trustd_port,
            channels: HashMap::new(),
            channels_ca: String::new(),
            unreachable: false,
            registered_as: None,
            former_names: Vec::new(),
        }
    }
}

impl MembersController {
    /// The names this node registered under before `name`, within [`FORMER_NAME_TTL`].
    fn former_names_of(&mut self, name: &str) -> Vec<String> {
        let now = Instant::now();
        if let Some(old) = self.registered_as.replace(name.to_string()) {
            if old != name {
                self.former_names.push((old, now));
            }
        }
        self.former_names.retain(|(former, since)| {
            former != name && now.duration_since(*since) < FORMER_NAME_TTL
        });
        let excess = self.former_names.len().saturating_sub(MAX_FORMER_NAMES);
        self.former_names.drain(..excess);
        self.former_names.iter().map(|(n, _)| n.clone()).collect()
    }
}

fn role_name(role: MachineRole) -> &'static str {
    match role {
        MachineRole::ControlPlane => "controlplane",
        MachineRole::Worker => "worker",
    }
}

fn role_of(name: &str) -> Option<MachineRole> {
    match name {
        "controlplane" => Some(MachineRole::ControlPlane),
        "worker" => Some(MachineRole::Worker),
        _ => None,
    }
}

#[async_trait]
impl Controller for MembersController {
    basalt_controller_runtime::declare! {
        name: "cluster.MembersController",
        inputs: [
            Input::weak::<OsRootSpec>().with_id(OsRootSpec::ID),
            Input::weak::<HostnameSpec>().with_id(HostnameSpec::ID),
            Input::weak::<MachineTypeSpec>().with_id(MachineTypeSpec::ID),
            Input::weak::<ControlPlaneEndpointSpec>().with_id(ControlPlaneEndpointSpec::ID),
        ],
        outputs: [
            Output::exclusive::<MemberSpec>(),
            Output::exclusive::<ControlPlaneMemberSpec>(),
        ],
    }

    async fn reconcile(&mut self, rt: &mut Runtime) -> Result<Action, ControllerError> {
        let root = rt.get::<OsRootSpec>(OsRootSpec::ID).await?;
        let hostname = rt.get::<HostnameSpec>(HostnameSpec::ID).await?;
        let role = rt.get::<MachineTypeSpec>(MachineTypeSpec::ID).await?;
        let endpoint = rt
            .get::<ControlPlaneEndpointSpec>(ControlPlaneEndpointSpec::ID)
            .await?;
        let (Some(root), Some(hostname), Some(role), Some(endpoint)) =
            (root, hostname, role, endpoint)
        else {
            // Not configured: not a member of anything.
            return Ok(Action::Done);
        };
        let addresses: Vec<String> = self
            .sans
            .iter()
            .filter(|s| s.parse::<IpAddr>().is_ok_and(|ip| !ip.is_unspecified()))
            .cloned()
            .collect();
        if addresses.is_empty() {
            tracing::warn!("the node has no address to register with: no membership");
            return Ok(Action::Done);
        }
        let me = Member {
            name: hostname.spec.hostname.clone(),
            role: role_name(role.spec.role).to_string(),
            addresses,
        };
        let replaces = self.former_names_of(&me.name);

        // trustd on the endpoint's host, and on every control-plane member known.
        let known = rt.list::<MemberSpec>().await?;
        let mut hosts = vec![endpoint.spec.endpoint.clone()];
        for member in known
            .iter()
            .filter(|m| m.spec.role == MachineRole::ControlPlane)
        {
            hosts.extend(member.spec.addresses.iter().cloned());
        }
        let mut targets = Vec::new();
        for host in &hosts {
            match trustd::target(host, self.trustd_port) {
                Ok(target) if !targets.contains(&target) => targets.push(target),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "a trustd that cannot be reached"),
            }
        }
        if self.channels_ca != root.spec.ca {
            self.channels.clear();
            self.channels_ca = root.spec.ca.clone();
        }
        let mut members: BTreeMap<String, MemberSpec> = BTreeMap::new();
        let mut answered = 0;
        for target in &targets {
            let key = target.to_string();
            let channel = match self.channels.get(&key) {
                Some(channel) => channel.clone(),
                None => match trustd::channel(&root.spec, target) {
                    Ok(channel) => {
                        self.channels.insert(key.clone(), channel.clone());
                        channel
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "a trustd that cannot be reached");
                        continue;
                    }
                },
            };
            let request = RegisterRequest {
                member: Some(me.clone()),
                replaces: replaces.clone(),
            };
            let answer = trustd::call(
                &root.spec,
                target,
                channel,
                request,
                |mut client, r| async move { client.register(r).await },
            )
            .await;
            match answer {
                Ok(answer) => {
                    answered += 1;
                    for m in answer.members {
                        let Some(role) = role_of(&m.role) else {
                            continue;
                        };
                        members.insert(
                            m.name,
                            MemberSpec {
                                role,
                                addresses: m.addresses,
                            },
                        );
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "registering");
                    self.channels.remove(&key);
                }
            }
        }
        if answered == 0 && !self.unreachable {
            tracing::warn!(trustd = ?targets.iter().map(|t| t.to_string()).collect::<Vec<_>>(), retry_in = ?RETRY, "no trustd answered: the members known stay");
        }
        self.unreachable = answered == 0;
        if answered == 0 {
            members = known
                .into_iter()
                .map(|m| (m.metadata.id.clone(), m.spec))
                .collect();
        }
        for (name, member) in &members {
            if member.role == MachineRole::ControlPlane {
                let spec = ControlPlaneMemberSpec {
                    addresses: member.addresses.clone(),
                    api_server_port: DEFAULT_API_SERVER_PORT,
                };
                rt.put_spec(name, spec).await?;
            }
            rt.put_spec(name, member.clone()).await?;
        }
        Ok(Action::RequeueAfter(if answered == 0 {
            RETRY
        } else {
            REFRESH
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_renamed_node_names_its_former_names_newest_last_and_at_most_eight() {
        let mut c = MembersController::new(vec!["10.0.0.2".into()], 50001);
        assert!(c.former_names_of("a").is_empty());
        assert!(c.former_names_of("a").is_empty());
        assert_eq!(c.former_names_of("b"), ["a"]);
        // Back to a former name: it is no longer former.
        assert_eq!(c.former_names_of("a"), ["b"]);
        for i in 0..20 {
            c.former_names_of(&format!("n{i}"));
        }
        let former = c.former_names_of("last");
        assert_eq!(former.len(), MAX_FORMER_NAMES);
        assert_eq!(former.last().map(String::as_str), Some("n19"));
    }
}
