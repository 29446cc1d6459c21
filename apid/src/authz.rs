//! Who may call what: one table with an entry for every RPC. A call to a path that is not
//! in the table is denied, and a test checks that every RPC of the API has an entry.

use std::sync::Arc;

use basalt_pki::Role;
use tonic::Status;

use crate::listener::Peer;

/// The rule for one RPC.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub path: &'static str,
    pub roles: &'static [Role],
    /// Changes the node: audited.
    pub mutating: bool,
    /// Allowed without a client certificate while the node is in maintenance mode.
    pub maintenance: bool,
}

const ALL: &[Role] = &[Role::Admin, Role::Operator, Role::Reader];
const OPERATE: &[Role] = &[Role::Admin, Role::Operator];
const ADMIN: &[Role] = &[Role::Admin];

const fn rule(path: &'static str, roles: &'static [Role], mutating: bool) -> Rule {
    Rule {
        path,
        roles,
        mutating,
        maintenance: false,
    }
}

const fn maintenance(mut r: Rule) -> Rule {
    r.maintenance = true;
    r
}

macro_rules! machine {
    ($method:literal) => {
        concat!("/basalt.machine.v1.MachineService/", $method)
    };
}
macro_rules! resource {
    ($method:literal) => {
        concat!("/basalt.resource.v1.ResourceService/", $method)
    };
}

/// Every RPC and who may call it. Reading secrets (sensitive resources, config) and
/// changing configuration or wiping the node are for admins; day-two operations
/// (services, reboot) also for operators; read-only views for readers too.
pub const RULES: &[Rule] = &[
    maintenance(rule(machine!("ApplyConfiguration"), ADMIN, true)),
    maintenance(rule(machine!("Version"), ALL, false)),
    rule(machine!("Time"), ALL, false),
    rule(machine!("ServiceList"), ALL, false),
    rule(machine!("ServiceStart"), OPERATE, true),
    rule(machine!("ServiceStop"), OPERATE, true),
    rule(machine!("ServiceRestart"), OPERATE, true),
    rule(machine!("Logs"), ALL, false),
    rule(machine!("Dmesg"), ALL, false),
    rule(machine!("Reboot"), OPERATE, true),
    rule(machine!("Shutdown"), OPERATE, true),
    rule(machine!("Reset"), ADMIN, true),
    rule(machine!("Processes"), ALL, false),
    rule(machine!("Memory"), ALL, false),
    rule(machine!("Mounts"), ALL, false),
    rule(machine!("Disks"), ALL, false),
    rule(machine!("Netstat"), ALL, false),
    rule(machine!("ControllerDependencies"), ALL, false),
    // File contents may be secret (operators never read secrets); names are not.
    rule(machine!("Read"), ADMIN, false),
    rule(machine!("List"), ALL, false),
    rule(machine!("Events"), ALL, false),
    // Issues a certificate: as powerful as the roles it grants.
    rule(machine!("GenerateClientConfiguration"), ADMIN, true),
    maintenance(rule(resource!("Get"), ALL, false)),
    maintenance(rule(resource!("List"), ALL, false)),
    maintenance(rule(resource!("Watch"), ALL, false)),
    maintenance(rule(resource!("Definitions"), ALL, false)),
];

pub fn rule_for(path: &str) -> Option<&'static Rule> {
    RULES.iter().find(|r| r.path == path)
}

/// The result of a call as its response headers tell it: an error before the handler
/// produced anything (a malformed or oversized message, a failed handler) comes back as a
/// status in the headers; a stream's later errors come in its trailers. Exact for a unary
/// call, which every mutating RPC is (a test keeps it so): the audit of changes uses it.
pub fn result_of<B>(response: &http::Response<B>) -> tonic::Code {
    match Status::from_header_map(response.headers()) {
        Some(status) => status.code(),
        None => tonic::Code::Ok,
    }
}

/// The caller of one request, after forwarding is taken into account: a node forwarding
/// a call (`os:impersonator`) passes on the roles of the client it forwards for.
#[derive(Debug, Clone)]
pub struct Caller {
    pub peer: Arc<Peer>,
    pub roles: Vec<Role>,
    /// The node's subject when the call was forwarded by another node.
    pub forwarded_by: Option<String>,
}

/// The gRPC metadata key in which a forwarding node names the client's roles.
pub const ROLES_HEADER: &str = "basalt-roles";

impl Caller {
    pub fn new(peer: Arc<Peer>, forwarded_roles: Option<&str>) -> Caller {
        let impersonator = peer.roles.contains(&Role::Impersonator);
        match (impersonator, forwarded_roles) {
            (true, Some(list)) => Caller {
                roles: list
                    .split(',')
                    .filter_map(|r| r.trim().parse().ok())
                    .filter(|r| *r != Role::Impersonator)
                    .collect(),
                forwarded_by: Some(peer.subject.clone()),
                peer,
            },
            _ => Caller {
                roles: peer
                    .roles
                    .iter()
                    .copied()
                    .filter(|r| *r != Role::Impersonator)
                    .collect(),
                forwarded_by: None,
                peer,
            },
        }
    }

    /// Sensitive resources and secret config fields are for admins only.
    pub fn sees_secrets(&self) -> bool {
        self.roles.contains(&Role::Admin)
    }

    pub fn roles_header(&self) -> String {
        self.roles
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// For logs and the audit trail.
    pub fn who(&self) -> String {
        match &self.forwarded_by {
            Some(node) => format!("{} via {node}", self.peer.who()),
            None => self.peer.who(),
        }
    }

    /// Whether the call may go on, and if not, the status that says why.
    pub fn authorize(
        &self,
        path: &str,
        rule: Option<&Rule>,
        maintenance: bool,
    ) -> Result<(), Status> {
        let Some(rule) = rule else {
            return Err(Status::permission_denied(format!(
                "{path}: not in the authorization table"
            )));
        };
        if !self.peer.authenticated {
            return if maintenance && rule.maintenance {
                Ok(())
            } else if maintenance {
                Err(Status::permission_denied(format!(
                    "{path} is not available in maintenance mode"
                )))
            } else {
                Err(Status::unauthenticated(
                    "the node has left maintenance mode: a client certificate is required",
                ))
            };
        }
        if self.roles.iter().any(|r| rule.roles.contains(r)) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "{path} needs one of the roles {}; {} has {}",
                rule.roles
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                self.who(),
                if self.roles.is_empty() {
                    "none".to_string()
                } else {
                    self.roles_header()
                }
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rpc_has_exactly_one_rule() {
        for (path, _) in basalt_api::METHODS {
            let n = RULES.iter().filter(|r| r.path == *path).count();
            assert_eq!(n, 1, "{path} has {n} rules");
        }
        for rule in RULES {
            assert!(
                basalt_api::METHODS.iter().any(|(p, _)| *p == rule.path),
                "rule for unknown RPC {}",
                rule.path
            );
        }
    }

    /// The audit reads a call's result from its response headers ([`result_of`]), which
    /// is the whole story only for unary calls: a streaming RPC that changes the node
    /// needs its audit to read the trailers first.
    #[test]
    fn every_mutating_rpc_is_unary() {
        for rule in RULES.iter().filter(|r| r.mutating) {
            let streaming = basalt_api::METHODS
                .iter()
                .any(|(p, streams)| *p == rule.path && *streams);
            assert!(!streaming, "{} changes the node and streams", rule.path);
        }
    }
}
