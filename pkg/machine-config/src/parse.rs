//! Reading and writing the multi-document YAML form.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::locate::{SourceDoc, SourceMap};
use crate::{
    ClusterConfigKind, Config, ConfigError, ExtensionServiceConfigKind, KubePrismConfigKind,
    KubeSpanConfigKind, MachineConfigKind, API_VERSION,
};

/// The largest config accepted: far beyond any real one, small enough to parse quickly.
pub const MAX_CONFIG_BYTES: usize = 4 * 1024 * 1024;

/// One document of a multi-document text: its lines and where it starts (1-based).
#[derive(Debug)]
struct RawDoc {
    first_line: usize,
    text: String,
}

/// Splits at `---` lines (and ends a document at `...`). Block scalars are indented
/// under their key, so a `---` at column 0 is always a document marker. Each document
/// keeps its text as written, line breaks included.
fn split_documents(text: &str) -> Vec<RawDoc> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut first_line = 1;
    let mut flush = |current: &mut String, first_line: usize| {
        let has_content = basalt_resource::yaml::lines(current).any(|(l, _)| {
            let l = l.trim();
            !l.is_empty() && !l.starts_with('#')
        });
        if has_content {
            docs.push(RawDoc {
                first_line,
                text: std::mem::take(current),
            });
        }
        current.clear();
    };
    for (i, (line, whole)) in basalt_resource::yaml::lines(text).enumerate() {
        let marker = line.trim_end();
        if marker == "---" || marker.starts_with("--- ") || marker == "..." {
            flush(&mut current, first_line);
            // `--- key: value` starts the document on the marker's line.
            match marker.strip_prefix("--- ").map(str::trim_start) {
                Some(rest) if !rest.is_empty() && !rest.starts_with('#') => {
                    first_line = i + 1;
                    current.push_str(rest);
                    current.push('\n');
                }
                _ => first_line = i + 2,
            }
            continue;
        }
        current.push_str(whole);
    }
    flush(&mut current, first_line);
    docs
}

/// What every document starts with; read leniently to decide how to read the rest.
#[derive(Debug, Deserialize)]
struct Header {
    #[serde(rename = "apiVersion")]
    api_version: Option<serde_yaml_ng::Value>,
    kind: Option<serde_yaml_ng::Value>,
}

/// The kinds of document a config may hold.
const KINDS: [&str; 5] = [
    MachineConfigKind::KIND,
    ClusterConfigKind::KIND,
    KubeSpanConfigKind::KIND,
    KubePrismConfigKind::KIND,
    ExtensionServiceConfigKind::KIND,
];

/// The document's kind when its lines say it plainly: a top-level (column 0)
/// `apiVersion: basalt.dev/v1alpha1` and `kind: <a known kind>`, once each, as every
/// written config has them. It saves a whole parse of the document (the typed parse
/// after it checks both fields again); anything else gets [`header_kind`].
fn plain_kind(text: &str) -> Option<&'static str> {
    let mut kind = None;
    let mut version = false;
    for (line, _) in basalt_resource::yaml::lines(text) {
        let value = |key: &str| {
            line.strip_prefix(key)
                .map(|v| v.split(" #").next().unwrap_or(v).trim())
        };
        if let Some(v) = value("kind: ") {
            if kind.is_some() {
                return None;
            }
            kind = Some(KINDS.into_iter().find(|k| *k == v)?);
        } else if let Some(v) = value("apiVersion: ") {
            if version || v != API_VERSION {
                return None;
            }
            version = true;
        }
    }
    kind.filter(|_| version)
}

/// The document's kind, from a parse of its `apiVersion` and `kind`, each checked.
fn header_kind(doc: &RawDoc, index: usize) -> Result<String, ConfigError> {
    let fail = |reason: String| ConfigError::Document {
        document: index,
        line: doc.first_line,
        reason,
    };
    let header: Header = serde_yaml_ng::from_str(&doc.text).map_err(|e| {
        let (line, column, message) = positioned(&e, doc);
        ConfigError::Document {
            document: index,
            line,
            reason: format!("not a mapping with apiVersion and kind (column {column}): {message}"),
        }
    })?;
    let kind = match header.kind {
        Some(serde_yaml_ng::Value::String(k)) => k,
        Some(_) => return Err(fail("kind must be a string".into())),
        None => return Err(fail("the document has no kind".into())),
    };
    match header.api_version {
        Some(serde_yaml_ng::Value::String(v)) if v == API_VERSION => Ok(kind),
        Some(v) => Err(fail(format!(
            "{kind}: unsupported apiVersion {v:?}, expected {API_VERSION}"
        ))),
        None => Err(fail(format!("{kind}: the document has no apiVersion"))),
    }
}

/// Serde quotes the offending value in some messages; a secret pasted in the wrong place
/// must not end up in an error. Quoted text longer than a short word is replaced.
fn redact_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut parts = message.split('"');
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    for (i, part) in parts.enumerate() {
        out.push('"');
        // Odd pieces are inside quotes.
        if i % 2 == 0 && part.chars().count() > 24 {
            out.push_str(&format!("<{} characters>", part.chars().count()));
        } else {
            out.push_str(part);
        }
    }
    out
}

/// Adds `offset` to every "line N" in a message.
fn shift_lines(message: &str, offset: usize) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find("line ") {
        let (before, after) = rest.split_at(at + "line ".len());
        out.push_str(before);
        let digits = after.chars().take_while(char::is_ascii_digit).count();
        match after[..digits].parse::<usize>() {
            Ok(n) => out.push_str(&(n + offset).to_string()),
            Err(_) => out.push_str(&after[..digits]),
        }
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}

/// A YAML error with its position moved from document-relative to config-relative.
fn positioned(e: &serde_yaml_ng::Error, doc: &RawDoc) -> (usize, usize, String) {
    let (line, column) = e
        .location()
        .map(|l| (l.line() + doc.first_line - 1, l.column()))
        .unwrap_or((doc.first_line, 1));
    // The library appends its own (document-relative) position: drop it, and move the
    // positions inside the message to the whole text.
    let message = e.to_string();
    let message = match message.rfind(" at line ") {
        Some(at) if e.location().is_some() => message[..at].to_string(),
        _ => message,
    };
    let message = shift_lines(&message, doc.first_line - 1);
    (line, column, redact_quoted(&message))
}

fn typed<T: DeserializeOwned>(doc: &RawDoc, index: usize, kind: &str) -> Result<T, ConfigError> {
    serde_yaml_ng::from_str(&doc.text).map_err(|e| {
        // A field's error may come before the syntax error further on that is its cause
        // (`role: [worker` unclosed): the whole document's parse names that one.
        if let Err(syntax) = header_kind(doc, index) {
            return syntax;
        }
        let (line, column, message) = positioned(&e, doc);
        ConfigError::Field {
            kind: kind.to_string(),
            document: index,
            line,
            column,
            message,
        }
    })
}

impl Config {
    /// Parses a multi-document config.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Self::parse_with_source(text).map(|(c, _)| c)
    }

    /// Parses a multi-document config, keeping where each document is, so validation
    /// errors can name lines.
    pub fn parse_with_source(text: &str) -> Result<(Config, SourceMap), ConfigError> {
        if text.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::Document {
                document: 1,
                line: 1,
                reason: format!(
                    "the config has {} bytes, more than the {MAX_CONFIG_BYTES} accepted",
                    text.len()
                ),
            });
        }
        basalt_resource::yaml::check_expansion(text).map_err(|reason| ConfigError::Document {
            document: 1,
            line: 1,
            reason,
        })?;
        let mut config = Config::default();
        let mut source = SourceMap::default();
        for (i, doc) in split_documents(text).iter().enumerate() {
            let index = i + 1;
            let fail = |reason: String| ConfigError::Document {
                document: index,
                line: doc.first_line,
                reason,
            };
            let kind = match plain_kind(&doc.text) {
                Some(kind) => kind.to_string(),
                None => header_kind(doc, index)?,
            };
            // Reads a document that may appear once.
            let once = |slot_taken: bool| -> Result<(), ConfigError> {
                if slot_taken {
                    return Err(fail(format!(
                        "a second {kind} document; there may be only one"
                    )));
                }
                Ok(())
            };
            let mut name = None;
            match kind.as_str() {
                MachineConfigKind::KIND => {
                    once(config.machine.is_some())?;
                    config.machine = Some(typed(doc, index, &kind)?);
                }
                ClusterConfigKind::KIND => {
                    once(config.cluster.is_some())?;
                    config.cluster = Some(typed(doc, index, &kind)?);
                }
                KubeSpanConfigKind::KIND => {
                    once(config.kubespan.is_some())?;
                    config.kubespan = Some(typed(doc, index, &kind)?);
                }
                KubePrismConfigKind::KIND => {
                    once(config.kubeprism.is_some())?;
                    config.kubeprism = Some(typed(doc, index, &kind)?);
                }
                ExtensionServiceConfigKind::KIND => {
                    let ext: crate::ExtensionServiceConfig = typed(doc, index, &kind)?;
                    if config.extensions.iter().any(|e| e.name == ext.name) {
                        return Err(fail(format!(
                            "a second ExtensionServiceConfig named {:?}",
                            ext.name
                        )));
                    }
                    name = Some(ext.name.clone());
                    config.extensions.push(ext);
                }
                other => {
                    return Err(fail(format!(
                        "unknown kind {other:?}; known kinds: {}",
                        KINDS.join(", ")
                    )))
                }
            }
            source
                .docs
                .push(SourceDoc::new(kind, name, doc.first_line, &doc.text));
        }
        config.extensions.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((config, source))
    }

    /// The documents in canonical order: machine, cluster, KubeSpan, KubePrism, then
    /// extension services by name. Each with its kind and (for extensions) name.
    pub fn documents(&self) -> Result<Vec<(String, serde_json::Value)>, ConfigError> {
        fn value<T: Serialize>(doc: &T) -> Result<serde_json::Value, ConfigError> {
            serde_json::to_value(doc).map_err(|e| ConfigError::Encode(e.to_string()))
        }
        let mut docs = Vec::new();
        if let Some(m) = &self.machine {
            docs.push((MachineConfigKind::KIND.to_string(), value(m)?));
        }
        if let Some(c) = &self.cluster {
            docs.push((ClusterConfigKind::KIND.to_string(), value(c)?));
        }
        if let Some(k) = &self.kubespan {
            docs.push((KubeSpanConfigKind::KIND.to_string(), value(k)?));
        }
        if let Some(k) = &self.kubeprism {
            docs.push((KubePrismConfigKind::KIND.to_string(), value(k)?));
        }
        let mut extensions: Vec<_> = self.extensions.iter().collect();
        extensions.sort_by(|a, b| a.name.cmp(&b.name));
        for e in extensions {
            docs.push((
                format!("{}/{}", ExtensionServiceConfigKind::KIND, e.name),
                value(e)?,
            ));
        }
        Ok(docs)
    }

    /// The config as multi-document YAML, in canonical document order.
    pub fn to_yaml(&self) -> Result<String, ConfigError> {
        fn yaml<T: Serialize>(doc: &T) -> Result<String, ConfigError> {
            serde_yaml_ng::to_string(doc).map_err(|e| ConfigError::Encode(e.to_string()))
        }
        let mut parts = Vec::new();
        if let Some(m) = &self.machine {
            parts.push(yaml(m)?);
        }
        if let Some(c) = &self.cluster {
            parts.push(yaml(c)?);
        }
        if let Some(k) = &self.kubespan {
            parts.push(yaml(k)?);
        }
        if let Some(k) = &self.kubeprism {
            parts.push(yaml(k)?);
        }
        let mut extensions: Vec<_> = self.extensions.iter().collect();
        extensions.sort_by(|a, b| a.name.cmp(&b.name));
        for e in extensions {
            parts.push(yaml(e)?);
        }
        Ok(parts.join("---\n"))
    }
}
