use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::resource::Document;
use crate::{namespaces, proto, AnyResource, DynSpec, ResourceError, ResourceSpec};

/// A column of `osctl get` output, as served with a definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrintColumn {
    pub name: String,
    /// Dotted path into the spec (`hostname`, `args.0`).
    pub path: String,
}

impl PrintColumn {
    /// The column's text for a spec given as JSON; empty when the path leads nowhere.
    pub fn extract(&self, spec: &serde_json::Value) -> String {
        let mut node = spec;
        for step in self.path.split('.').filter(|s| !s.is_empty()) {
            let next = match node {
                serde_json::Value::Object(map) => map.get(step),
                serde_json::Value::Array(items) => {
                    step.parse::<usize>().ok().and_then(|i| items.get(i))
                }
                _ => None,
            };
            match next {
                Some(n) => node = n,
                None => return String::new(),
            }
        }
        match node {
            serde_json::Value::Null => String::new(),
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }
}

/// The description of a resource type, served by the API so clients need not know the
/// type at compile time. Definitions are resources themselves (namespace `meta`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ResourceSpec)]
#[resource(
    type = "ResourceDefinitions.meta.basalt.dev",
    namespace = namespaces::META,
    aliases("rd", "rds"),
    column("Aliases", "aliases"),
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceDefinitionSpec {
    #[serde(rename = "type")]
    pub type_name: String,
    /// Singular, capitalized name for humans (`Hostname`).
    pub display_type: String,
    pub default_namespace: String,
    /// Lower-case names `osctl get` accepts for this type.
    pub aliases: Vec<String>,
    #[serde(default)]
    pub print_columns: Vec<PrintColumn>,
    #[serde(default)]
    pub sensitive: bool,
}

impl ResourceDefinitionSpec {
    /// The definition of a spec type, with its derived aliases.
    pub fn of<S: ResourceSpec>() -> Self {
        let full = S::TYPE.to_ascii_lowercase();
        let (plural, domain) = full.split_once('.').unwrap_or((full.as_str(), ""));
        let singular = singular_of(plural);
        let mut aliases = vec![full.clone(), plural.to_string(), singular.clone()];
        if let Some(first_domain) = domain.split('.').next().filter(|d| !d.is_empty()) {
            aliases.push(format!("{plural}.{first_domain}"));
            aliases.push(format!("{singular}.{first_domain}"));
        }
        aliases.extend(S::ALIASES.iter().map(|a| a.to_ascii_lowercase()));
        let mut seen = std::collections::HashSet::new();
        aliases.retain(|a| seen.insert(a.clone()));
        let display_type = S::TYPE
            .split('.')
            .next()
            .map(singular_of)
            .unwrap_or_default();
        ResourceDefinitionSpec {
            type_name: S::TYPE.to_string(),
            display_type,
            default_namespace: S::DEFAULT_NAMESPACE.to_string(),
            aliases,
            print_columns: S::PRINT_COLUMNS
                .iter()
                .map(|c| PrintColumn {
                    name: c.name.to_string(),
                    path: c.path.to_string(),
                })
                .collect(),
            sensitive: S::SENSITIVE,
        }
    }
}

/// English plural to singular, for the plural type names we use (`Hostnames`,
/// `Statuses`, `Addresses`, `Leases`, `Policies`, `Boxes`).
fn singular_of(plural: &str) -> String {
    if let Some(stem) = plural.strip_suffix("ies") {
        format!("{stem}y")
    } else if plural.ends_with("sses") || plural.ends_with("uses") || plural.ends_with("xes") {
        plural[..plural.len() - 2].to_string()
    } else {
        plural.strip_suffix('s').unwrap_or(plural).to_string()
    }
}

type DecodeFn = fn(serde_json::Value) -> Result<Arc<dyn DynSpec>, ResourceError>;

fn decode_typed<S: ResourceSpec>(
    value: serde_json::Value,
) -> Result<Arc<dyn DynSpec>, ResourceError> {
    serde_json::from_value::<S>(value)
        .map(|s| Arc::new(s) as Arc<dyn DynSpec>)
        .map_err(|e| ResourceError::DecodeSpec {
            type_name: S::TYPE.to_string(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn singulars() {
        for (plural, singular) in [
            ("Hostnames", "Hostname"),
            ("Statuses", "Status"),
            ("Addresses", "Address"),
            ("Leases", "Lease"),
            ("Licenses", "License"),
            ("Policies", "Policy"),
            ("Boxes", "Box"),
            ("KernelCmdlines", "KernelCmdline"),
        ] {
            assert_eq!(super::singular_of(plural), singular);
        }
    }
}

#[derive(Debug)]
struct Entry {
    definition: ResourceDefinitionSpec,
    decode: DecodeFn,
}

/// Every resource type a node knows, with the decoders for their specs.
#[derive(Debug)]
pub struct Registry {
    types: BTreeMap<String, Entry>,
    aliases: HashMap<String, String>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// A registry that knows only resource definitions themselves.
    pub fn new() -> Self {
        let mut registry = Registry {
            types: BTreeMap::new(),
            aliases: HashMap::new(),
        };
        // An empty registry cannot conflict with the first type.
        let _ = registry.register::<ResourceDefinitionSpec>();
        registry
    }

    /// Registers a type; fails if the type or one of its aliases is already taken.
    pub fn register<S: ResourceSpec>(&mut self) -> Result<(), ResourceError> {
        if self.types.contains_key(S::TYPE) {
            return Err(ResourceError::DuplicateType(S::TYPE.to_string()));
        }
        let definition = ResourceDefinitionSpec::of::<S>();
        if let Some((alias, other)) = definition
            .aliases
            .iter()
            .find_map(|a| self.aliases.get(a).map(|o| (a, o)))
        {
            return Err(ResourceError::AliasConflict {
                alias: alias.clone(),
                type_name: S::TYPE.to_string(),
                other: other.clone(),
            });
        }
        for alias in &definition.aliases {
            self.aliases.insert(alias.clone(), S::TYPE.to_string());
        }
        self.types.insert(
            S::TYPE.to_string(),
            Entry {
                definition,
                decode: decode_typed::<S>,
            },
        );
        Ok(())
    }

    pub fn definition(&self, type_name: &str) -> Option<&ResourceDefinitionSpec> {
        self.types.get(type_name).map(|e| &e.definition)
    }

    /// All definitions, ordered by type name.
    pub fn definitions(&self) -> impl Iterator<Item = &ResourceDefinitionSpec> {
        self.types.values().map(|e| &e.definition)
    }

    /// Finds a type by its exact name or by any alias, ignoring case.
    pub fn resolve(&self, name: &str) -> Result<&ResourceDefinitionSpec, ResourceError> {
        if let Some(entry) = self.types.get(name) {
            return Ok(&entry.definition);
        }
        self.aliases
            .get(&name.to_ascii_lowercase())
            .and_then(|t| self.definition(t))
            .ok_or_else(|| ResourceError::UnknownType(name.to_string()))
    }

    /// Decodes a spec of a registered type from its JSON form.
    pub fn decode_spec(
        &self,
        type_name: &str,
        value: serde_json::Value,
    ) -> Result<Arc<dyn DynSpec>, ResourceError> {
        let entry = self
            .types
            .get(type_name)
            .ok_or_else(|| ResourceError::UnknownType(type_name.to_string()))?;
        (entry.decode)(value)
    }

    /// Decodes a spec of a registered type from YAML text.
    pub fn decode_spec_yaml(
        &self,
        type_name: &str,
        yaml: &str,
    ) -> Result<Arc<dyn DynSpec>, ResourceError> {
        crate::yaml::check_expansion(yaml).map_err(|reason| ResourceError::DecodeSpec {
            type_name: type_name.to_string(),
            reason,
        })?;
        let value: serde_json::Value =
            serde_yaml_ng::from_str(yaml).map_err(|e| ResourceError::DecodeSpec {
                type_name: type_name.to_string(),
                reason: e.to_string(),
            })?;
        self.decode_spec(type_name, value)
    }

    /// Decodes a resource document (`metadata:` + `spec:`), as written by [`AnyResource::to_yaml`].
    pub fn decode_yaml(&self, text: &str) -> Result<AnyResource, ResourceError> {
        crate::yaml::check_expansion(text)
            .map_err(|reason| ResourceError::DecodeDocument { reason })?;
        let doc: Document =
            serde_yaml_ng::from_str(text).map_err(|e| ResourceError::DecodeDocument {
                reason: e.to_string(),
            })?;
        let spec = self.decode_spec(&doc.metadata.type_name, doc.spec)?;
        Ok(AnyResource {
            metadata: doc.metadata,
            spec,
        })
    }

    /// Decodes the protobuf form of a resource.
    pub fn decode_proto(&self, message: proto::Resource) -> Result<AnyResource, ResourceError> {
        let metadata = message
            .metadata
            .ok_or_else(|| ResourceError::DecodeDocument {
                reason: "the resource has no metadata".to_string(),
            })?
            .try_into()?;
        let metadata: crate::Metadata = metadata;
        let spec = self.decode_spec_yaml(&metadata.type_name, &message.spec)?;
        Ok(AnyResource { metadata, spec })
    }
}
