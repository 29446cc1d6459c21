//! The canonical encoding of a config, its BLAKE3 digest, and a structural diff.

use std::fmt;

use serde_json::Value;

use crate::{Config, ConfigError, REDACTED};

/// Writes a JSON value with object keys sorted, whatever map order serde_json was built
/// with: the same config always encodes to the same bytes.
fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                if let Some(v) = map.get(k) {
                    canonical(v, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(v, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Whether a change added, removed or changed a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Removed,
    Changed,
}

/// One difference between two configs.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub kind: ChangeKind,
    /// `MachineConfig.network.links[0].mtu`
    pub path: String,
    pub old: Option<Value>,
    pub new: Option<Value>,
    /// A secret changed: its values are not shown.
    pub secret: bool,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &Option<Value>| match v {
            _ if self.secret => "(secret)".to_string(),
            Some(v) => v.to_string(),
            None => String::new(),
        };
        if self.secret && self.kind == ChangeKind::Changed {
            return write!(f, "~ {}: (secret changed)", self.path);
        }
        match self.kind {
            ChangeKind::Added => write!(f, "+ {}: {}", self.path, show(&self.new)),
            ChangeKind::Removed => write!(f, "- {}: {}", self.path, show(&self.old)),
            ChangeKind::Changed => {
                write!(
                    f,
                    "~ {}: {} -> {}",
                    self.path,
                    show(&self.old),
                    show(&self.new)
                )
            }
        }
    }
}

fn diff_values(
    path: &str,
    old: Option<&Value>,
    new: Option<&Value>,
    redacted: &Value,
    out: &mut Vec<Change>,
) {
    let secret = redacted == &Value::String(REDACTED.to_string());
    match (old, new) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                diff_values(
                    &format!("{path}.{k}"),
                    a.get(k),
                    b.get(k),
                    redacted.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) => {
            for i in 0..a.len().max(b.len()) {
                diff_values(
                    &format!("{path}[{i}]"),
                    a.get(i),
                    b.get(i),
                    redacted.get(i).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        (Some(a), Some(b)) if a == b => {}
        (a, b) => out.push(Change {
            kind: match (a, b) {
                (None, _) => ChangeKind::Added,
                (_, None) => ChangeKind::Removed,
                _ => ChangeKind::Changed,
            },
            path: path.to_string(),
            old: a.cloned(),
            new: b.cloned(),
            secret,
        }),
    }
}

impl Config {
    /// The canonical encoding: documents in canonical order, each as JSON with sorted keys,
    /// one per line.
    pub fn canonical(&self) -> Result<String, ConfigError> {
        let mut out = String::new();
        for (kind, doc) in self.documents()? {
            out.push_str(&kind);
            out.push('\t');
            canonical(&doc, &mut out);
            out.push('\n');
        }
        Ok(out)
    }

    /// BLAKE3 of the canonical encoding, hex: equal for configs that mean the same thing,
    /// however their YAML was written.
    pub fn digest(&self) -> Result<String, ConfigError> {
        Ok(blake3::hash(self.canonical()?.as_bytes())
            .to_hex()
            .to_string())
    }

    /// What changes from `self` to `other`, field by field. Secret values never appear in
    /// the result (only that they changed).
    pub fn diff(&self, other: &Config) -> Result<Vec<Change>, ConfigError> {
        let docs = |c: &Config| -> Result<serde_json::Map<String, Value>, ConfigError> {
            Ok(c.documents()?.into_iter().collect())
        };
        let (old, new) = (Value::Object(docs(self)?), Value::Object(docs(other)?));
        // A secret is redacted in at least one of the redacted views where it is set.
        let (old_r, new_r) = (
            Value::Object(docs(&self.redacted())?),
            Value::Object(docs(&other.redacted())?),
        );
        let mut redacted = old_r;
        merge_secret_marks(&mut redacted, &new_r);
        let mut out = Vec::new();
        if let (Value::Object(a), Value::Object(b)) = (&old, &new) {
            let mut kinds: Vec<&String> = a.keys().chain(b.keys()).collect();
            kinds.sort();
            kinds.dedup();
            for k in kinds {
                diff_values(
                    k,
                    a.get(k),
                    b.get(k),
                    redacted.get(k).unwrap_or(&Value::Null),
                    &mut out,
                );
            }
        }
        for change in &mut out {
            // Hide whatever a secret held, also inside a removed or added document.
            if change.secret {
                change.old = None;
                change.new = None;
            }
        }
        Ok(out)
    }
}

/// Copies the REDACTED marks of `other` into `into` where `into` has none.
fn merge_secret_marks(into: &mut Value, other: &Value) {
    match (into, other) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(k) {
                    Some(existing) => merge_secret_marks(existing, v),
                    None => {
                        a.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (into, Value::String(s)) if s == REDACTED => *into = Value::String(REDACTED.to_string()),
        _ => {}
    }
}
