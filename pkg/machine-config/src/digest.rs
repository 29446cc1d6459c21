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

fn is_marker(v: Option<&Value>) -> bool {
    matches!(v, Some(Value::String(s)) if s == REDACTED)
}

/// Walks the raw old and new values to find what changed; what it reports comes from the
/// redacted views, so a secret never appears, also not inside an added or removed subtree.
fn diff_values(
    path: &str,
    (old, new): (Option<&Value>, Option<&Value>),
    (red_old, red_new): (Option<&Value>, Option<&Value>),
    out: &mut Vec<Change>,
) {
    match (old, new) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                diff_values(
                    &format!("{path}.{k}"),
                    (a.get(k), b.get(k)),
                    (
                        red_old.and_then(|r| r.get(k)),
                        red_new.and_then(|r| r.get(k)),
                    ),
                    out,
                );
            }
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) => {
            for i in 0..a.len().max(b.len()) {
                diff_values(
                    &format!("{path}[{i}]"),
                    (a.get(i), b.get(i)),
                    (
                        red_old.and_then(|r| r.get(i)),
                        red_new.and_then(|r| r.get(i)),
                    ),
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
            old: a.and(red_old).cloned(),
            new: b.and(red_new).cloned(),
            secret: is_marker(red_old) || is_marker(red_new),
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
        let docs = |c: &Config| -> Result<Value, ConfigError> {
            Ok(Value::Object(c.documents()?.into_iter().collect()))
        };
        let (old, new) = (docs(self)?, docs(other)?);
        let (red_old, red_new) = (docs(&self.redacted())?, docs(&other.redacted())?);
        let mut out = Vec::new();
        diff_values(
            "",
            (Some(&old), Some(&new)),
            (Some(&red_old), Some(&red_new)),
            &mut out,
        );
        for change in &mut out {
            // Paths start with the document kind, not with a dot.
            change.path = change.path.trim_start_matches('.').to_string();
        }
        Ok(out)
    }
}
