//! The one map from the node's typed errors to gRPC status codes. Handlers return these
//! errors; none builds a status from an error's text.

use basalt_machine_config::plan::PlanError;
use basalt_machine_config::ConfigError;
use basalt_pki::PkiError;
use basalt_resource::ResourceError;
use basalt_state::StateError;
use tonic::{Code, Status};

use crate::parts::NodeError;

/// The code for a state error.
pub(crate) fn state_code(e: &StateError) -> Code {
    match e {
        StateError::NotFound(_) => Code::NotFound,
        StateError::AlreadyExists(_) => Code::AlreadyExists,
        // Based on a version that is no longer current: read again and retry.
        StateError::Conflict { .. } => Code::Aborted,
        StateError::OwnerConflict { .. }
        | StateError::PhaseConflict { .. }
        | StateError::PendingFinalizers { .. } => Code::FailedPrecondition,
        StateError::InvalidKey { .. } | StateError::KeyMismatch { .. } => Code::InvalidArgument,
        StateError::VersionOverflow(_) => Code::OutOfRange,
        // The watch ended; the client starts over from a fresh snapshot.
        StateError::Overrun(_) => Code::Aborted,
        StateError::Persistence { .. } => Code::Unavailable,
        StateError::Corrupt { .. } => Code::DataLoss,
        StateError::Resource(e) => resource_code(e),
    }
}

pub(crate) fn state_status(e: StateError) -> Status {
    Status::new(state_code(&e), e.to_string())
}

pub(crate) fn resource_code(e: &ResourceError) -> Code {
    match e {
        ResourceError::UnknownType(_) => Code::NotFound,
        ResourceError::DecodeSpec { .. }
        | ResourceError::DecodeDocument { .. }
        | ResourceError::InvalidHostname { .. }
        | ResourceError::Selector { .. } => Code::InvalidArgument,
        ResourceError::DuplicateType(_)
        | ResourceError::AliasConflict { .. }
        | ResourceError::TypeMismatch { .. }
        | ResourceError::EncodeSpec { .. } => Code::Internal,
    }
}

pub(crate) fn resource_status(e: ResourceError) -> Status {
    Status::new(resource_code(&e), e.to_string())
}

pub(crate) fn node_code(e: &NodeError) -> Code {
    match e {
        NodeError::NotFound(_) => Code::NotFound,
        NodeError::InvalidArgument(_) => Code::InvalidArgument,
        NodeError::PermissionDenied(_) => Code::PermissionDenied,
        NodeError::FailedPrecondition(_) => Code::FailedPrecondition,
        NodeError::Unavailable(_) => Code::Unavailable,
        NodeError::Io { source, .. } => match source.kind() {
            std::io::ErrorKind::NotFound => Code::NotFound,
            std::io::ErrorKind::PermissionDenied => Code::PermissionDenied,
            _ => Code::Internal,
        },
    }
}

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Self {
        Status::new(node_code(&e), e.to_string())
    }
}

/// A config that was sent: its errors are the caller's.
pub(crate) fn config_code(e: &ConfigError) -> Code {
    match e {
        ConfigError::Document { .. }
        | ConfigError::Field { .. }
        | ConfigError::Invalid(_)
        | ConfigError::Patch { .. } => Code::InvalidArgument,
        ConfigError::Encode(_) => Code::Internal,
    }
}

pub(crate) fn plan_code(e: &PlanError) -> Code {
    match e {
        PlanError::NeedsReboot(_)
        | PlanError::NothingToStage
        | PlanError::NothingToRevertTo
        | PlanError::NoMachineConfig
        | PlanError::NoOsCa
        | PlanError::NoToken
        | PlanError::NoEndpoint
        | PlanError::ApiCertificate(_) => Code::FailedPrecondition,
        PlanError::Config(e) => config_code(e),
    }
}

pub(crate) fn plan_status(e: PlanError) -> Status {
    Status::new(plan_code(&e), e.to_string())
}

pub(crate) fn config_status(e: ConfigError) -> Status {
    Status::new(config_code(&e), e.to_string())
}

/// Certificates the node issues (client configs): a bad request, or a CA it cannot use.
pub(crate) fn pki_code(e: &PkiError) -> Code {
    match e {
        PkiError::UnknownRole(_)
        | PkiError::InvalidSan { .. }
        | PkiError::InvalidCommonName { .. }
        | PkiError::InvalidValidity { .. }
        | PkiError::InvalidRequest { .. } => Code::InvalidArgument,
        PkiError::Yaml { .. }
        | PkiError::InvalidField { .. }
        | PkiError::InvalidCertificate { .. }
        | PkiError::InvalidKey { .. }
        | PkiError::KeyMismatch { .. }
        | PkiError::NotACa { .. }
        | PkiError::Expired { .. }
        | PkiError::NotYetValid { .. }
        | PkiError::WrongIssuer { .. }
        | PkiError::BadSignature { .. }
        | PkiError::UnsupportedKey { .. } => Code::FailedPrecondition,
        PkiError::Generate { .. }
        | PkiError::Random
        | PkiError::Encode { .. }
        | PkiError::File { .. }
        | PkiError::Io { .. } => Code::Internal,
    }
}

pub(crate) fn pki_status(e: PkiError) -> Status {
    Status::new(pki_code(&e), e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use basalt_resource::{Kind, Phase, ResourceKey};

    fn key() -> ResourceKey {
        ResourceKey::new("config", "MachineConfigs.config.basalt.dev", "active")
    }

    #[test]
    fn every_state_and_resource_error_has_its_code() {
        let state = [
            (StateError::NotFound(key()), Code::NotFound),
            (StateError::AlreadyExists(key()), Code::AlreadyExists),
            (
                StateError::Conflict {
                    key: key(),
                    expected: 1,
                    actual: 2,
                },
                Code::Aborted,
            ),
            (
                StateError::OwnerConflict {
                    key: key(),
                    owner: "a".into(),
                    writer: "b".into(),
                },
                Code::FailedPrecondition,
            ),
            (
                StateError::PhaseConflict {
                    key: key(),
                    phase: Phase::TearingDown,
                },
                Code::FailedPrecondition,
            ),
            (
                StateError::PendingFinalizers {
                    key: key(),
                    finalizers: Default::default(),
                },
                Code::FailedPrecondition,
            ),
            (
                StateError::InvalidKey {
                    key: key(),
                    reason: "empty id",
                },
                Code::InvalidArgument,
            ),
            (StateError::VersionOverflow(key()), Code::OutOfRange),
            (
                StateError::KeyMismatch {
                    key: key(),
                    expected: "a".into(),
                    found: "b".into(),
                },
                Code::InvalidArgument,
            ),
            (StateError::Overrun(Kind::new("config", "T")), Code::Aborted),
            (
                StateError::Persistence {
                    path: "/state".into(),
                    reason: "disk full".into(),
                },
                Code::Unavailable,
            ),
            (
                StateError::Corrupt {
                    path: "/state".into(),
                    reason: "invalid magic".into(),
                },
                Code::DataLoss,
            ),
            (
                StateError::Resource(ResourceError::UnknownType("x".into())),
                Code::NotFound,
            ),
        ];
        for (error, code) in state {
            let status = state_status(error);
            assert_eq!(status.code(), code, "{}", status.message());
            assert!(!status.message().is_empty());
        }
        let resource = [
            (ResourceError::UnknownType("x".into()), Code::NotFound),
            (ResourceError::DuplicateType("x".into()), Code::Internal),
            (
                ResourceError::AliasConflict {
                    alias: "a".into(),
                    type_name: "T".into(),
                    other: "U".into(),
                },
                Code::Internal,
            ),
            (
                ResourceError::TypeMismatch {
                    key: "k".into(),
                    expected: "T",
                    found: "U".into(),
                },
                Code::Internal,
            ),
            (
                ResourceError::DecodeSpec {
                    type_name: "T".into(),
                    reason: "r".into(),
                },
                Code::InvalidArgument,
            ),
            (
                ResourceError::DecodeDocument { reason: "r".into() },
                Code::InvalidArgument,
            ),
            (
                ResourceError::EncodeSpec {
                    type_name: "T".into(),
                    reason: "r".into(),
                },
                Code::Internal,
            ),
            (
                ResourceError::InvalidHostname {
                    value: "-".into(),
                    reason: "r",
                },
                Code::InvalidArgument,
            ),
            (
                ResourceError::Selector {
                    input: "a=".into(),
                    position: 2,
                    reason: "r",
                },
                Code::InvalidArgument,
            ),
        ];
        for (error, code) in resource {
            assert_eq!(resource_status(error).code(), code);
        }
    }

    #[test]
    fn every_node_plan_config_and_pki_error_has_its_code() {
        let io = |kind| NodeError::io("reading", std::io::Error::from(kind));
        let node = [
            (NodeError::NotFound("svc".into()), Code::NotFound),
            (
                NodeError::InvalidArgument("x".into()),
                Code::InvalidArgument,
            ),
            (
                NodeError::PermissionDenied("x".into()),
                Code::PermissionDenied,
            ),
            (
                NodeError::FailedPrecondition("x".into()),
                Code::FailedPrecondition,
            ),
            (NodeError::Unavailable("x".into()), Code::Unavailable),
            (io(std::io::ErrorKind::NotFound), Code::NotFound),
            (
                io(std::io::ErrorKind::PermissionDenied),
                Code::PermissionDenied,
            ),
            (io(std::io::ErrorKind::Other), Code::Internal),
        ];
        for (error, code) in node {
            assert_eq!(Status::from(error).code(), code);
        }
        let config = || ConfigError::Document {
            document: 1,
            line: 1,
            reason: "no kind".into(),
        };
        let plan = [
            (
                PlanError::NeedsReboot(vec!["a".into()]),
                Code::FailedPrecondition,
            ),
            (PlanError::NothingToStage, Code::FailedPrecondition),
            (PlanError::NothingToRevertTo, Code::FailedPrecondition),
            (PlanError::NoMachineConfig, Code::FailedPrecondition),
            (PlanError::NoOsCa, Code::FailedPrecondition),
            (PlanError::NoToken, Code::FailedPrecondition),
            (PlanError::NoEndpoint, Code::FailedPrecondition),
            (
                PlanError::ApiCertificate(PkiError::Random),
                Code::FailedPrecondition,
            ),
            (PlanError::Config(config()), Code::InvalidArgument),
        ];
        for (error, code) in plan {
            assert_eq!(plan_status(error).code(), code);
        }
        let configs = [
            (config(), Code::InvalidArgument),
            (
                ConfigError::Field {
                    kind: "MachineConfig".into(),
                    document: 1,
                    line: 2,
                    column: 3,
                    message: "m".into(),
                },
                Code::InvalidArgument,
            ),
            (
                ConfigError::Invalid(basalt_machine_config::ValidationErrors(Vec::new())),
                Code::InvalidArgument,
            ),
            (
                ConfigError::Patch {
                    patch: "p".into(),
                    reason: "r".into(),
                },
                Code::InvalidArgument,
            ),
            (ConfigError::Encode("e".into()), Code::Internal),
        ];
        for (error, code) in configs {
            assert_eq!(config_status(error).code(), code);
        }
        let pki = [
            (
                PkiError::UnknownRole("os:root".into()),
                Code::InvalidArgument,
            ),
            (
                PkiError::InvalidSan {
                    value: "a b".into(),
                    reason: "r".into(),
                },
                Code::InvalidArgument,
            ),
            (
                PkiError::KeyMismatch { field: "ca".into() },
                Code::FailedPrecondition,
            ),
            (
                PkiError::Yaml { reason: "r".into() },
                Code::FailedPrecondition,
            ),
            (
                PkiError::InvalidRequest {
                    what: "the server request",
                    reason: "r".into(),
                },
                Code::InvalidArgument,
            ),
            (PkiError::Random, Code::Internal),
            (PkiError::Encode { reason: "r".into() }, Code::Internal),
        ];
        for (error, code) in pki {
            assert_eq!(pki_status(error).code(), code);
        }
    }
}
