//! The COSI resource model of Basalt.
//!
//! Everything a node knows is a typed resource: [`Metadata`] (identity, version, owner,
//! phase, finalizers, labels) plus a spec implementing [`ResourceSpec`]. The state store
//! keeps resources type-erased as [`AnyResource`]; controllers and clients work with the
//! typed [`Resource<S>`]. Every type is described by a [`ResourceDefinitionSpec`] in a
//! [`Registry`], so the API can list types and decode specs it was not compiled with.
//!
//! This crate is the model only. The domain types (config, network, runtime, secrets,
//! k8s, kubespan, meta) live in `basalt-resources`, one module per domain, mirrored by
//! controllers of the same domain; `#[derive(ResourceSpec)]` declares each.

// `#[derive(ResourceSpec)]` names this crate by its path, also inside it.
extern crate self as basalt_resource;

mod error;
mod metadata;
mod registry;
mod resource;
mod selector;
mod spec;

pub mod proto;
pub mod yaml;

pub use basalt_resource_derive::ResourceSpec;
pub use error::ResourceError;
pub use metadata::{Kind, Metadata, Phase, ResourceKey};
pub use registry::{PrintColumn, Registry, ResourceDefinitionSpec};
pub use resource::{AnyResource, Resource};
pub use selector::{LabelQuery, LabelTerm};
pub use spec::{Column, DynSpec, ResourceSpec};

/// Namespaces every node has; a type names its default one in
/// [`ResourceSpec::DEFAULT_NAMESPACE`].
pub mod namespaces {
    /// What the node should be: the applied machine config and what is published from it.
    pub const CONFIG: &str = "config";
    /// Network state: links, addresses, hostname.
    pub const NETWORK: &str = "network";
    /// Facts about the running system: kernel command line, services.
    pub const RUNTIME: &str = "runtime";
    /// Secrets: never sent to a reader.
    pub const SECRETS: &str = "secrets";
    /// Kubernetes components.
    pub const K8S: &str = "k8s";
    /// Cluster membership.
    pub const CLUSTER: &str = "cluster";
    /// Resource definitions and other facts about the state itself.
    pub const META: &str = "meta";
    /// Resources that survive a reboot (backed by the STATE partition).
    pub const PERSISTENT: &str = "persistent";
}
