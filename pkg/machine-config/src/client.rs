//! The client configuration `osctl` reads (`osconfig`): named contexts, each with the
//! endpoints to dial, the default nodes to target, the CA to trust and a client
//! certificate.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{ConfigError, Secret};

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Context {
    #[serde(default)]
    pub endpoints: Vec<String>,
    #[serde(default)]
    pub nodes: Vec<String>,
    /// PEM of the OS CA.
    pub ca: String,
    /// PEM client certificate and key.
    pub crt: String,
    pub key: Secret,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientConfig {
    /// The current context.
    #[serde(default)]
    pub context: String,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

fn client_error(reason: impl Into<String>) -> ConfigError {
    ConfigError::Encode(reason.into())
}

impl ClientConfig {
    pub fn single(name: &str, context: Context) -> Self {
        ClientConfig {
            context: name.to_string(),
            contexts: BTreeMap::from([(name.to_string(), context)]),
        }
    }

    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        if text.len() > crate::parse::MAX_CONFIG_BYTES {
            return Err(client_error("the client configuration is too large"));
        }
        basalt_resource::yaml::check_expansion(text).map_err(client_error)?;
        let config: ClientConfig = serde_yaml_ng::from_str(text)
            .map_err(|e| client_error(format!("not a client configuration: {e}")))?;
        if !config.context.is_empty() && !config.contexts.contains_key(&config.context) {
            return Err(client_error(format!(
                "the current context {:?} is not one of the contexts",
                config.context
            )));
        }
        Ok(config)
    }

    pub fn to_yaml(&self) -> Result<String, ConfigError> {
        serde_yaml_ng::to_string(self).map_err(|e| client_error(e.to_string()))
    }

    /// Adds every context of `other`; a name already taken gets a `-1`, `-2`... suffix.
    /// The current context becomes `other`'s. Returns the names added.
    pub fn merge(&mut self, other: ClientConfig) -> Vec<String> {
        let mut added = Vec::new();
        for (name, context) in other.contexts {
            let mut unique = name.clone();
            let mut n = 1;
            while self.contexts.contains_key(&unique) {
                unique = format!("{name}-{n}");
                n += 1;
            }
            if name == other.context {
                self.context = unique.clone();
            }
            self.contexts.insert(unique.clone(), context);
            added.push(unique);
        }
        added
    }

    pub fn use_context(&mut self, name: &str) -> Result<(), ConfigError> {
        if !self.contexts.contains_key(name) {
            return Err(client_error(format!("no context named {name:?}")));
        }
        self.context = name.to_string();
        Ok(())
    }

    /// The current context, to change it.
    pub fn current_mut(&mut self) -> Result<&mut Context, ConfigError> {
        let name = self.context.clone();
        self.contexts.get_mut(&name).ok_or_else(|| {
            client_error("no current context: `osctl config context NAME` picks one")
        })
    }
}
