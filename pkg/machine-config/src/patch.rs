//! Config patches: strategic merge (YAML documents merged into the documents of the same
//! kind) and RFC 6902 JSON patch.
//!
//! Strategic merge: maps merge key by key; a value `{"$patch": "delete"}` deletes the key
//! (or, as a whole document, the document); lists of links merge by `name`, routes by
//! `network`, files by `path`, extension config files by `mountPath` (an item with
//! `$patch: delete` removes the item of that key); lists users add to rather than restate
//! append the items not there yet: the certificate SANs (machine and API server) and the
//! kernel arguments, as in Talos; other lists and scalars are replaced (a JSON patch
//! replaces or removes any item).
//!
//! JSON patch paths start with the document kind: `/MachineConfig/network/links/0/mtu`,
//! `/ExtensionServiceConfig/NAME/environment/FOO`.

use serde_json::{Map, Value};

use crate::{Config, ConfigError};

/// A parsed patch.
#[derive(Debug, Clone)]
pub enum Patch {
    /// Partial documents, each with `kind` (and `name` for extension services).
    StrategicMerge(Vec<Value>),
    Json(json_patch::Patch),
}

const DELETE: &str = "$patch";

/// More operations than any hand-written patch has.
const MAX_JSON_PATCH_OPS: usize = 256;

/// A value as it is inserted where nothing was: without `$patch` markers, and without
/// the items they delete (deleting what is not there is a no-op).
fn strip_markers(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(k, v)| k != DELETE && !is_delete(v))
                .map(|(k, v)| (k, strip_markers(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .filter(|v| !is_delete(v))
                .map(strip_markers)
                .collect(),
        ),
        other => other,
    }
}

/// The key lists of maps merge by, by document kind and field path (without indices).
fn merge_key(kind: &str, path: &[String]) -> Option<&'static str> {
    let path: Vec<&str> = path.iter().map(String::as_str).collect();
    match (kind, path.as_slice()) {
        ("MachineConfig", ["network", "links"]) => Some("name"),
        ("MachineConfig", ["network", "links", "routes"]) => Some("network"),
        ("MachineConfig", ["files"]) => Some("path"),
        ("ExtensionServiceConfig", ["configFiles"]) => Some("mountPath"),
        _ => None,
    }
}

/// Whether the list at `path` in a document of `kind` takes a patch's items in addition to
/// its own (each once), rather than being replaced by them.
fn appends(kind: &str, path: &[String]) -> bool {
    let path: Vec<&str> = path.iter().map(String::as_str).collect();
    matches!(
        (kind, path.as_slice()),
        ("MachineConfig", ["certSans"] | ["kernelArgs"])
            | ("ClusterConfig", ["apiServer", "certSans"])
    )
}

fn is_delete(v: &Value) -> bool {
    v.get(DELETE).and_then(Value::as_str) == Some("delete")
}

fn merge(kind: &str, path: &mut Vec<String>, base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(base), Value::Object(patch)) => {
            for (k, v) in patch {
                if k == DELETE {
                    continue;
                }
                if is_delete(&v) {
                    base.remove(&k);
                    continue;
                }
                path.push(k.clone());
                match base.get_mut(&k) {
                    Some(existing) => merge(kind, path, existing, v),
                    None => {
                        base.insert(k, strip_markers(v));
                    }
                }
                path.pop();
            }
        }
        (Value::Array(base), Value::Array(patch)) if merge_key(kind, path).is_some() => {
            let key = merge_key(kind, path).unwrap_or_default();
            for item in patch {
                let id = item.get(key).cloned();
                let existing = id
                    .as_ref()
                    .and_then(|id| base.iter().position(|b| b.get(key) == Some(id)));
                match existing {
                    Some(i) if is_delete(&item) => {
                        base.remove(i);
                    }
                    Some(i) => merge(kind, path, &mut base[i], item),
                    None if is_delete(&item) => {}
                    None => base.push(strip_markers(item)),
                }
            }
        }
        (Value::Array(base), Value::Array(patch)) if appends(kind, path) => {
            for item in patch.into_iter().map(strip_markers) {
                if !base.contains(&item) {
                    base.push(item);
                }
            }
        }
        (base, patch) => *base = strip_markers(patch),
    }
}

fn patch_error(reason: impl Into<String>) -> ConfigError {
    ConfigError::Patch {
        patch: "<patch>".into(),
        reason: reason.into(),
    }
}

impl Patch {
    /// Reads a patch: a YAML or JSON list is an RFC 6902 JSON patch; one or more YAML
    /// documents (maps) are a strategic merge patch.
    pub fn parse(text: &str) -> Result<Patch, ConfigError> {
        if text.len() > crate::parse::MAX_CONFIG_BYTES {
            return Err(patch_error(
                "the patch is larger than a configuration may be",
            ));
        }
        basalt_resource::yaml::check_expansion(text).map_err(patch_error)?;
        let first: Result<Value, _> = serde_yaml_ng::from_str(text);
        if let Ok(Value::Array(_)) = &first {
            let ops: json_patch::Patch = serde_yaml_ng::from_str(text)
                .map_err(|e| patch_error(format!("not a JSON patch (RFC 6902): {e}")))?;
            return Ok(Patch::Json(ops));
        }
        let mut docs = Vec::new();
        for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let value: Value = serde::Deserialize::deserialize(doc)
                .map_err(|e| patch_error(format!("document {}: {e}", i + 1)))?;
            match &value {
                Value::Object(m) if m.get("kind").is_some_and(Value::is_string) => docs.push(value),
                Value::Null => {}
                _ => {
                    return Err(patch_error(format!(
                        "document {}: a patch document is a map with a kind",
                        i + 1
                    )))
                }
            }
        }
        Ok(Patch::StrategicMerge(docs))
    }
}

/// The config as one JSON object: `{ "MachineConfig": {...}, "ExtensionServiceConfig":
/// { NAME: {...} }, ... }`.
fn view(config: &Config) -> Result<Value, ConfigError> {
    let mut root = Map::new();
    let mut extensions = Map::new();
    for (kind, doc) in config.documents()? {
        match kind.split_once('/') {
            Some((_, name)) => {
                extensions.insert(name.to_string(), doc);
            }
            None => {
                root.insert(kind, doc);
            }
        }
    }
    // Present even when empty, so `add /ExtensionServiceConfig/NAME` works.
    root.insert("ExtensionServiceConfig".into(), Value::Object(extensions));
    Ok(Value::Object(root))
}

/// Rebuilds a config from the view, through the YAML parser, so that whatever a patch
/// broke is reported as a parse error would be (with the field path).
fn from_view(view: Value) -> Result<Config, ConfigError> {
    let Value::Object(mut root) = view else {
        return Err(patch_error(
            "the patch replaced the whole configuration with a non-map",
        ));
    };
    let mut docs = Vec::new();
    for kind in [
        "MachineConfig",
        "ClusterConfig",
        "KubeSpanConfig",
        "KubePrismConfig",
    ] {
        docs.extend(root.remove(kind));
    }
    if let Some(Value::Object(exts)) = root.remove("ExtensionServiceConfig") {
        docs.extend(exts.into_values());
    }
    if let Some(kind) = root.keys().next() {
        return Err(patch_error(format!("unknown document kind {kind:?}")));
    }
    let mut text = String::new();
    for doc in docs {
        text.push_str("---\n");
        text.push_str(
            &serde_yaml_ng::to_string(&doc).map_err(|e| ConfigError::Encode(e.to_string()))?,
        );
    }
    Config::parse(&text)
        .map_err(|e| patch_error(format!("the patched configuration is not valid: {e}")))
}

impl Config {
    /// Applies a patch, returning the patched config.
    pub fn patch(&self, patch: &Patch) -> Result<Config, ConfigError> {
        let mut root = view(self)?;
        match patch {
            Patch::Json(ops) => {
                if ops.0.len() > MAX_JSON_PATCH_OPS {
                    return Err(patch_error(format!(
                        "{} operations; at most {MAX_JSON_PATCH_OPS} are accepted",
                        ops.0.len()
                    )));
                }
                // One at a time, checking the size after each: `copy` can double it.
                for (i, op) in ops.0.iter().enumerate() {
                    json_patch::patch(&mut root, std::slice::from_ref(op))
                        .map_err(|e| patch_error(format!("operation {}: {e}", i + 1)))?;
                    let size = serde_json::to_vec(&root)
                        .map(|v| v.len())
                        .unwrap_or(usize::MAX);
                    if size > crate::parse::MAX_CONFIG_BYTES {
                        return Err(patch_error(format!(
                            "operation {} makes the configuration larger than {} bytes",
                            i + 1,
                            crate::parse::MAX_CONFIG_BYTES
                        )));
                    }
                }
            }
            Patch::StrategicMerge(docs) => {
                for doc in docs {
                    let kind = doc
                        .get("kind")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string();
                    let Value::Object(map) = &mut root else {
                        return Err(patch_error("the configuration is not a map"));
                    };
                    let mut doc = doc.clone();
                    if let Value::Object(d) = &mut doc {
                        d.entry("apiVersion")
                            .or_insert_with(|| Value::String(crate::API_VERSION.into()));
                    }
                    let slot = if kind == "ExtensionServiceConfig" {
                        let name = doc
                            .get("name")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string();
                        let exts = map
                            .entry("ExtensionServiceConfig")
                            .or_insert_with(|| Value::Object(Map::new()));
                        let Value::Object(exts) = exts else {
                            return Err(patch_error("extension services are not a map"));
                        };
                        if is_delete(&doc) {
                            exts.remove(&name);
                            continue;
                        }
                        exts.entry(name).or_insert(Value::Null)
                    } else {
                        if is_delete(&doc) {
                            map.remove(&kind);
                            continue;
                        }
                        map.entry(kind.clone()).or_insert(Value::Null)
                    };
                    if slot.is_null() {
                        *slot = Value::Object(Map::new());
                    }
                    merge(&kind, &mut Vec::new(), slot, doc);
                }
            }
        }
        from_view(root)
    }
}
