//! Basalt's resource types, one module per domain, mirrored by the controllers of the
//! same domain: a reader finds a controller by its output's domain. Each type declares
//! its name, namespace, aliases and print columns with `#[derive(ResourceSpec)]`;
//! [`meta::builtin_registry`] registers every one.

pub mod cluster;
pub mod config;
pub mod k8s;
pub mod kubespan;
pub mod meta;
pub mod network;
pub mod runtime;
pub mod secrets;
pub mod time;
