use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The lifecycle phase of a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    #[default]
    Running,
    /// Teardown was requested: consumers release their finalizers, then the owner destroys it.
    TearingDown,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Running => "running",
            Phase::TearingDown => "tearing-down",
        })
    }
}

/// A resource kind: all resources of one type in one namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Kind {
    pub namespace: String,
    pub type_name: String,
}

impl Kind {
    /// The kind of a spec type in its default namespace.
    pub fn of<S: crate::ResourceSpec>() -> Self {
        Kind::new(S::DEFAULT_NAMESPACE, S::TYPE)
    }

    pub fn new(namespace: impl Into<String>, type_name: impl Into<String>) -> Self {
        Kind {
            namespace: namespace.into(),
            type_name: type_name.into(),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.type_name)
    }
}

/// The identity of one resource.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKey {
    pub namespace: String,
    pub type_name: String,
    pub id: String,
}

impl ResourceKey {
    /// The key of a resource of a spec type in its default namespace.
    pub fn of<S: crate::ResourceSpec>(id: impl Into<String>) -> Self {
        ResourceKey::new(S::DEFAULT_NAMESPACE, S::TYPE, id)
    }

    pub fn new(
        namespace: impl Into<String>,
        type_name: impl Into<String>,
        id: impl Into<String>,
    ) -> Self {
        ResourceKey {
            namespace: namespace.into(),
            type_name: type_name.into(),
            id: id.into(),
        }
    }

    pub fn kind(&self) -> Kind {
        Kind::new(self.namespace.clone(), self.type_name.clone())
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.type_name, self.id)
    }
}

/// Metadata of a resource: identity, version, ownership and lifecycle.
///
/// `version` starts at 1 on create and grows by exactly one per stored write; writes that
/// change nothing are not stored and do not bump it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub namespace: String,
    #[serde(rename = "type")]
    pub type_name: String,
    pub id: String,
    pub version: u64,
    /// The controller that owns the resource; empty for user-owned resources.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
    #[serde(default)]
    pub phase: Phase,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub finalizers: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated: OffsetDateTime,
}

impl Metadata {
    /// Metadata for a resource that is not stored yet (version 0).
    pub fn new(
        namespace: impl Into<String>,
        type_name: impl Into<String>,
        id: impl Into<String>,
    ) -> Self {
        let now = OffsetDateTime::now_utc();
        Metadata {
            namespace: namespace.into(),
            type_name: type_name.into(),
            id: id.into(),
            version: 0,
            owner: String::new(),
            phase: Phase::Running,
            finalizers: BTreeSet::new(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            created: now,
            updated: now,
        }
    }

    pub fn key(&self) -> ResourceKey {
        ResourceKey::new(
            self.namespace.clone(),
            self.type_name.clone(),
            self.id.clone(),
        )
    }

    pub fn kind(&self) -> Kind {
        Kind::new(self.namespace.clone(), self.type_name.clone())
    }

    /// Whether the parts a writer controls (everything but version and timestamps) are equal.
    pub fn same_content(&self, other: &Metadata) -> bool {
        self.owner == other.owner
            && self.phase == other.phase
            && self.finalizers == other.finalizers
            && self.labels == other.labels
            && self.annotations == other.annotations
    }
}
