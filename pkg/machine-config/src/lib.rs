//! Basalt's machine configuration: multi-document YAML, one `kind` per document
//! (`MachineConfig`, `ClusterConfig`, `KubeSpanConfig`, `KubePrismConfig`,
//! `ExtensionServiceConfig`), all `apiVersion: basalt.dev/v1alpha1`.
//!
//! Parsing is strict (unknown fields are errors) and every error names the document, the
//! field path, and the line and column. Validation knows the run modes (metal, cloud,
//! container). Configs can be patched (strategic merge or RFC 6902), redacted for
//! readers, encoded canonically, digested (BLAKE3) and diffed.

#[macro_use]
mod macros;
#[cfg(test)]
mod arbitrary;
pub mod client;
mod cluster;
mod digest;
mod error;
mod features;
pub mod generate;
mod locate;
mod machine;
mod parse;
mod patch;
pub mod plan;
mod schema;
mod secret;
mod validate;

pub use cluster::*;
pub use digest::{Change, ChangeKind};
pub use error::ConfigError;
pub use features::*;
pub use locate::SourceMap;
pub use machine::*;
pub use parse::MAX_CONFIG_BYTES;
pub use patch::Patch;
pub use schema::json_schema;
pub use secret::{CertKey, Secret, REDACTED};
pub use validate::{Mode, ValidationError, ValidationErrors};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The one API version of config documents so far.
pub const API_VERSION: &str = "basalt.dev/v1alpha1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum ApiVersion {
    #[default]
    #[serde(rename = "basalt.dev/v1alpha1")]
    V1Alpha1,
}

/// A whole node configuration: its documents by kind. `Debug` shows what
/// [`Config::redacted`] shows: a config in a log line or a panic keeps its secrets.
#[derive(Clone, PartialEq, Default)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Config {
    pub machine: Option<MachineConfig>,
    pub cluster: Option<ClusterConfig>,
    pub kubespan: Option<KubeSpanConfig>,
    pub kubeprism: Option<KubePrismConfig>,
    /// One per extension service, unique by name.
    pub extensions: Vec<ExtensionServiceConfig>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = self.redacted();
        f.debug_struct("Config")
            .field("machine", &shown.machine)
            .field("cluster", &shown.cluster)
            .field("kubespan", &shown.kubespan)
            .field("kubeprism", &shown.kubeprism)
            .field("extensions", &shown.extensions)
            .finish()
    }
}

impl Config {
    /// A copy with every secret replaced by [`REDACTED`]: for any display meant for
    /// readers (the API's `os:reader` role, logs, dry-run diffs). Environment values and
    /// file contents count as secrets: they carry credentials (a proxy's, a registry's)
    /// as often as not.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        let redact_pair = |p: &mut Option<CertKey>| {
            if let Some(p) = p {
                p.key.redact();
            }
        };
        let redact_text = |text: &mut String| {
            if !text.is_empty() {
                *text = REDACTED.to_string();
            }
        };
        if let Some(m) = &mut c.machine {
            m.token.redact();
            redact_pair(&mut m.ca);
            m.env.values_mut().for_each(redact_text);
            m.files.iter_mut().for_each(|f| redact_text(&mut f.content));
        }
        for e in &mut c.extensions {
            e.environment.values_mut().for_each(redact_text);
            e.config_files
                .iter_mut()
                .for_each(|f| redact_text(&mut f.content));
        }
        if let Some(cl) = &mut c.cluster {
            cl.secret.redact();
            cl.service_account_key.redact();
            cl.bootstrap_token.redact();
            redact_pair(&mut cl.ca);
            redact_pair(&mut cl.aggregator_ca);
            if let Some(e) = &mut cl.etcd {
                redact_pair(&mut e.ca);
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]

        /// parse(serialize(c)) == c for any config (extension names made unique, as
        /// parsing requires).
        #[test]
        fn parse_serialize_round_trip(mut config: Config) {
            let mut seen = std::collections::HashSet::new();
            config.extensions.retain(|e| seen.insert(e.name.clone()));
            config.extensions.sort_by(|a, b| a.name.cmp(&b.name));
            let yaml = config.to_yaml().unwrap();
            let parsed = Config::parse(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
            prop_assert_eq!(parsed, config);
        }
    }
}
