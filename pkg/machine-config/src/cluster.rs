//! The `ClusterConfig` document: the cluster this node belongs to.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ApiVersion, CertKey, Secret};

kind_tag!(ClusterConfigKind => "ClusterConfig");

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterConfig {
    pub api_version: ApiVersion,
    pub kind: ClusterConfigKind,
    #[cfg_attr(test, proptest(strategy = "crate::arbitrary::text()"))]
    pub name: String,
    /// Base64 of 32 random bytes: the cluster's identity in discovery.
    #[cfg_attr(test, proptest(strategy = "crate::arbitrary::text()"))]
    pub id: String,
    /// Base64 of 32 random bytes: the KubeSpan pre-shared key and discovery encryption key.
    #[serde(default, skip_serializing_if = "Secret::is_empty")]
    pub secret: Secret,
    pub control_plane: ControlPlane,
    /// Kubernetes CA (key on control-plane nodes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CertKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregator_ca: Option<CertKey>,
    #[serde(default, skip_serializing_if = "Secret::is_empty")]
    pub service_account_key: Secret,
    #[serde(default, skip_serializing_if = "Secret::is_empty")]
    pub bootstrap_token: Secret,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<Etcd>,
    #[serde(default)]
    pub network: ClusterNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_server: Option<ApiServer>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControlPlane {
    /// `https://HOST:PORT` of the Kubernetes API.
    #[cfg_attr(test, proptest(strategy = "crate::arbitrary::text()"))]
    pub endpoint: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Etcd {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CertKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(test, proptest(strategy = "crate::arbitrary::maybe_text()"))]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[cfg_attr(test, proptest(strategy = "crate::arbitrary::small_map()"))]
    pub extra_args: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(rename_all = "lowercase")]
pub enum Cni {
    #[default]
    Flannel,
    /// No CNI: the user installs one.
    None,
    /// Manifests from `cniUrls`.
    Custom,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterNetwork {
    #[serde(default = "default_pod_subnets")]
    #[cfg_attr(test, proptest(strategy = "crate::arbitrary::small_texts()"))]
    pub pod_subnets: Vec<String>,
    #[serde(default = "default_service_subnets")]
    #[cfg_attr(test, proptest(strategy = "crate::arbitrary::small_texts()"))]
    pub service_subnets: Vec<String>,
    #[serde(default = "default_dns_domain")]
    #[cfg_attr(test, proptest(strategy = "crate::arbitrary::text()"))]
    pub dns_domain: String,
    #[serde(default)]
    pub cni: Cni,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(test, proptest(strategy = "crate::arbitrary::small_texts()"))]
    pub cni_urls: Vec<String>,
}

fn default_pod_subnets() -> Vec<String> {
    vec!["10.244.0.0/16".to_string()]
}

fn default_service_subnets() -> Vec<String> {
    vec!["10.96.0.0/12".to_string()]
}

fn default_dns_domain() -> String {
    "cluster.local".to_string()
}

impl Default for ClusterNetwork {
    fn default() -> Self {
        ClusterNetwork {
            pod_subnets: default_pod_subnets(),
            service_subnets: default_service_subnets(),
            dns_domain: default_dns_domain(),
            cni: Cni::default(),
            cni_urls: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiServer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(test, proptest(strategy = "crate::arbitrary::maybe_text()"))]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(test, proptest(strategy = "crate::arbitrary::small_texts()"))]
    pub cert_sans: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[cfg_attr(test, proptest(strategy = "crate::arbitrary::small_map()"))]
    pub extra_args: BTreeMap<String, String>,
}
