use std::any::Any;
use std::fmt::Debug;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::ResourceError;

/// A column that `osctl get` prints for a type: a header and a dotted path into the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    /// Dotted path into the spec, e.g. `hostname` or `args.0`.
    pub path: &'static str,
}

/// The spec of a resource type.
///
/// `TYPE` is the plural, dotted, globally unique type name (`Hostnames.net.basalt.dev`).
pub trait ResourceSpec:
    Clone + PartialEq + Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
    const TYPE: &'static str;
    const DEFAULT_NAMESPACE: &'static str;
    /// Sensitive resources are never sent to a client with the reader role.
    const SENSITIVE: bool = false;
    const ALIASES: &'static [&'static str] = &[];
    const PRINT_COLUMNS: &'static [Column] = &[];
}

/// A type-erased spec: what the state store holds.
pub trait DynSpec: Any + Debug + Send + Sync {
    fn as_any(&self) -> &dyn Any;
    fn type_name(&self) -> &'static str;
    /// Deep equality with another spec (false when the types differ).
    fn dyn_eq(&self, other: &dyn DynSpec) -> bool;
    fn to_yaml(&self) -> Result<String, ResourceError>;
    fn to_json_value(&self) -> Result<serde_json::Value, ResourceError>;
    /// Bytes of the spec as JSON, counted without writing them: what a reader that has
    /// not read a version yet holds of it, roughly.
    fn encoded_len(&self) -> usize;
}

impl<S: ResourceSpec> DynSpec for S {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn type_name(&self) -> &'static str {
        S::TYPE
    }

    fn dyn_eq(&self, other: &dyn DynSpec) -> bool {
        other.as_any().downcast_ref::<S>() == Some(self)
    }

    fn to_yaml(&self) -> Result<String, ResourceError> {
        serde_yaml_ng::to_string(self).map_err(|e| ResourceError::EncodeSpec {
            type_name: S::TYPE.to_string(),
            reason: e.to_string(),
        })
    }

    fn to_json_value(&self) -> Result<serde_json::Value, ResourceError> {
        serde_json::to_value(self).map_err(|e| ResourceError::EncodeSpec {
            type_name: S::TYPE.to_string(),
            reason: e.to_string(),
        })
    }

    fn encoded_len(&self) -> usize {
        let mut count = ByteCount(0);
        // A spec that cannot be written counts what was written of it: writing it where
        // it goes reports the error.
        let _ = serde_json::to_writer(&mut count, self);
        count.0
    }
}

/// A writer that only counts.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
