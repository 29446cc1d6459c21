//! The protobuf form of a resource: metadata as fields, the spec as YAML text, as the
//! resource API (`basalt.resource.v1`) sends it. The API crate maps its messages onto these.

use crate::{AnyResource, Phase, ResourceError};

/// Wire-compatible with `google.protobuf.Timestamp`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, prost::Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Metadata {
    #[prost(string, tag = "1")]
    pub namespace: String,
    #[prost(string, tag = "2")]
    pub r#type: String,
    #[prost(string, tag = "3")]
    pub id: String,
    #[prost(uint64, tag = "4")]
    pub version: u64,
    #[prost(string, tag = "5")]
    pub owner: String,
    #[prost(string, tag = "6")]
    pub phase: String,
    #[prost(string, repeated, tag = "7")]
    pub finalizers: Vec<String>,
    #[prost(btree_map = "string, string", tag = "8")]
    pub labels: std::collections::BTreeMap<String, String>,
    #[prost(btree_map = "string, string", tag = "9")]
    pub annotations: std::collections::BTreeMap<String, String>,
    #[prost(message, optional, tag = "10")]
    pub created: Option<Timestamp>,
    #[prost(message, optional, tag = "11")]
    pub updated: Option<Timestamp>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Resource {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<Metadata>,
    /// The spec as YAML text.
    #[prost(string, tag = "2")]
    pub spec: String,
}

fn timestamp(t: time::OffsetDateTime) -> Timestamp {
    Timestamp {
        seconds: t.unix_timestamp(),
        nanos: t.nanosecond() as i32,
    }
}

fn from_timestamp(
    field: &str,
    t: Option<Timestamp>,
) -> Result<time::OffsetDateTime, ResourceError> {
    let t = t.unwrap_or_default();
    let nanos = i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos);
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos).map_err(|e| {
        ResourceError::DecodeDocument {
            reason: format!("metadata.{field}: {e}"),
        }
    })
}

impl From<&crate::Metadata> for Metadata {
    fn from(m: &crate::Metadata) -> Self {
        Metadata {
            namespace: m.namespace.clone(),
            r#type: m.type_name.clone(),
            id: m.id.clone(),
            version: m.version,
            owner: m.owner.clone(),
            phase: m.phase.to_string(),
            finalizers: m.finalizers.iter().cloned().collect(),
            labels: m.labels.clone(),
            annotations: m.annotations.clone(),
            created: Some(timestamp(m.created)),
            updated: Some(timestamp(m.updated)),
        }
    }
}

impl TryFrom<Metadata> for crate::Metadata {
    type Error = ResourceError;

    fn try_from(m: Metadata) -> Result<Self, Self::Error> {
        let phase = match m.phase.as_str() {
            "running" | "" => Phase::Running,
            "tearing-down" => Phase::TearingDown,
            other => {
                return Err(ResourceError::DecodeDocument {
                    reason: format!("metadata.phase: unknown phase {other:?}"),
                })
            }
        };
        Ok(crate::Metadata {
            created: from_timestamp("created", m.created)?,
            updated: from_timestamp("updated", m.updated)?,
            namespace: m.namespace,
            type_name: m.r#type,
            id: m.id,
            version: m.version,
            owner: m.owner,
            phase,
            finalizers: m.finalizers.into_iter().collect(),
            labels: m.labels,
            annotations: m.annotations,
        })
    }
}

impl AnyResource {
    /// The protobuf form: metadata fields and the spec as YAML.
    pub fn to_proto(&self) -> Result<Resource, ResourceError> {
        Ok(Resource {
            metadata: Some((&self.metadata).into()),
            spec: self.spec.to_yaml()?,
        })
    }
}
