use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{DynSpec, Metadata, ResourceError, ResourceSpec};

/// A typed resource: metadata and a spec of a known type.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource<S: ResourceSpec> {
    pub metadata: Metadata,
    pub spec: S,
}

impl<S: ResourceSpec> Resource<S> {
    /// A new resource in the type's default namespace.
    pub fn new(id: impl Into<String>, spec: S) -> Self {
        Resource {
            metadata: Metadata::new(S::DEFAULT_NAMESPACE, S::TYPE, id),
            spec,
        }
    }

    /// The same resource in another namespace.
    pub fn in_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.metadata.namespace = namespace.into();
        self
    }

    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.labels.insert(key.into(), value.into());
        self
    }

    pub fn id(&self) -> &str {
        &self.metadata.id
    }

    /// Type-erases the resource for the state store.
    pub fn into_any(self) -> AnyResource {
        AnyResource {
            metadata: self.metadata,
            spec: Arc::new(self.spec),
        }
    }
}

impl<S: ResourceSpec> TryFrom<&AnyResource> for Resource<S> {
    type Error = ResourceError;

    fn try_from(any: &AnyResource) -> Result<Self, Self::Error> {
        Ok(Resource {
            metadata: any.metadata.clone(),
            spec: any.spec_as::<S>()?.clone(),
        })
    }
}

/// A type-erased resource as the state store keeps it; cheap to clone.
#[derive(Debug, Clone)]
pub struct AnyResource {
    pub metadata: Metadata,
    pub spec: Arc<dyn DynSpec>,
}

impl PartialEq for AnyResource {
    fn eq(&self, other: &Self) -> bool {
        self.metadata == other.metadata && self.spec.dyn_eq(other.spec.as_ref())
    }
}

/// The document form of a resource (`metadata:` and `spec:`) as it is written.
#[derive(Debug, Serialize)]
struct DocumentRef<'a> {
    metadata: &'a Metadata,
    spec: serde_json::Value,
}

/// The document form of a resource as it is read; the spec is decoded by its definition.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Document {
    pub metadata: Metadata,
    pub spec: serde_json::Value,
}

impl AnyResource {
    /// The spec as a concrete type.
    pub fn spec_as<S: ResourceSpec>(&self) -> Result<&S, ResourceError> {
        self.spec
            .as_any()
            .downcast_ref::<S>()
            .ok_or_else(|| ResourceError::TypeMismatch {
                key: self.metadata.key().to_string(),
                expected: S::TYPE,
                found: self.spec.type_name().to_string(),
            })
    }

    /// Whether `other` would be a no-op write over `self`: same spec, same writer-controlled metadata.
    pub fn same_content(&self, other: &AnyResource) -> bool {
        self.metadata.same_content(&other.metadata) && self.spec.dyn_eq(other.spec.as_ref())
    }

    /// About how many bytes the resource takes (its spec as JSON, and its metadata's
    /// texts): for bounding what a slow reader may hold.
    pub fn approx_len(&self) -> usize {
        let m = &self.metadata;
        let pairs = m.labels.iter().chain(&m.annotations);
        let labels: usize = pairs.map(|(k, v)| k.len() + v.len()).sum();
        let fixed = std::mem::size_of::<AnyResource>() + std::mem::size_of::<Metadata>();
        fixed + m.id.len() + labels + self.spec.encoded_len()
    }

    /// The resource as one YAML document with `metadata` and `spec`.
    pub fn to_yaml(&self) -> Result<String, ResourceError> {
        let doc = DocumentRef {
            metadata: &self.metadata,
            spec: self.spec.to_json_value()?,
        };
        serde_yaml_ng::to_string(&doc).map_err(|e| ResourceError::EncodeSpec {
            type_name: self.metadata.type_name.clone(),
            reason: e.to_string(),
        })
    }

    /// The resource as a JSON value with `metadata` and `spec`.
    pub fn to_json_value(&self) -> Result<serde_json::Value, ResourceError> {
        let doc = DocumentRef {
            metadata: &self.metadata,
            spec: self.spec.to_json_value()?,
        };
        serde_json::to_value(&doc).map_err(|e| ResourceError::EncodeSpec {
            type_name: self.metadata.type_name.clone(),
            reason: e.to_string(),
        })
    }
}
