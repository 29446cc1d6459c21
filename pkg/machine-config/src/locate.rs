//! Finding the line and column of a field path in a document's YAML text, so that
//! validation errors (found after parsing) can point at the text like parse errors do.
//! It understands block-style YAML, which is how configs are written; inside flow style
//! (`[a, b]`, `{a: 1}`) it points at the nearest enclosing field.

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// Where each document of a parsed config came from.
#[derive(Debug, Clone, Default)]
pub struct SourceMap {
    pub(crate) docs: Vec<SourceDoc>,
}

#[derive(Debug, Clone)]
pub(crate) struct SourceDoc {
    kind: String,
    name: Option<String>,
    first_line: usize,
    lines: Vec<String>,
    /// The meaningful lines, as (line index, indentation), computed once.
    entries: Vec<(usize, usize)>,
}

/// A meaningful line: its number (1-based, in the document), indentation and the text
/// after it.
#[derive(Debug, Clone)]
struct Entry<'a> {
    line: usize,
    indent: usize,
    text: &'a str,
}

impl SourceDoc {
    pub fn new(kind: String, name: Option<String>, first_line: usize, text: &str) -> Self {
        let lines: Vec<String> = basalt_resource::yaml::lines(text)
            .map(|(l, _)| l.to_string())
            .collect();
        let entries = lines
            .iter()
            .enumerate()
            .filter_map(|(i, l)| {
                let text = l.trim_start();
                (!text.is_empty() && !text.starts_with('#')).then_some((i, l.len() - text.len()))
            })
            .collect();
        SourceDoc {
            kind,
            name,
            first_line,
            lines,
            entries,
        }
    }

    /// The (line, column) of the deepest part of `path` found in the text, both 1-based
    /// and relative to the whole config.
    fn locate(&self, path: &[Seg]) -> (usize, usize) {
        let mut region: Vec<Entry<'_>> = self
            .entries
            .iter()
            .map(|&(line, indent)| Entry {
                line,
                indent,
                text: &self.lines[line][indent..],
            })
            .collect();
        let mut best = (0, 0);
        for seg in path {
            let Some(min) = region.iter().map(|e| e.indent).min() else {
                break;
            };
            let found = match seg {
                Seg::Key(key) => region.iter().position(|e| {
                    e.indent == min
                        && (e
                            .text
                            .strip_prefix(key.as_str())
                            .is_some_and(|r| r.starts_with(':'))
                            || e.text
                                .strip_prefix(&format!("\"{key}\""))
                                .is_some_and(|r| r.starts_with(':')))
                }),
                Seg::Index(n) => region
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| e.indent == min && (e.text == "-" || e.text.starts_with("- ")))
                    .nth(*n)
                    .map(|(i, _)| i),
            };
            let Some(at) = found else {
                break;
            };
            let entry = region[at].clone();
            best = (entry.line, entry.indent);
            let mut next = Vec::new();
            if let Seg::Index(_) = seg {
                // The item's first line holds its first key after "- ".
                let rest = entry.text[1..].trim_start();
                if !rest.is_empty() {
                    next.push(Entry {
                        line: entry.line,
                        indent: entry.indent + (entry.text.len() - rest.len()),
                        text: rest,
                    });
                }
            }
            for e in &region[at + 1..] {
                let nested = e.indent > entry.indent;
                // `key:` followed by a list at the same indentation.
                let compact_list = matches!(seg, Seg::Key(_))
                    && e.indent == entry.indent
                    && (e.text == "-" || e.text.starts_with("- "));
                if !nested && !compact_list {
                    break;
                }
                next.push(e.clone());
            }
            region = next;
        }
        (self.first_line + best.0, best.1 + 1)
    }
}

impl SourceMap {
    /// The position of `path` in the document of `kind` (and `name`, for extension
    /// services), if that document came from text.
    pub(crate) fn locate(
        &self,
        kind: &str,
        name: Option<&str>,
        path: &[Seg],
    ) -> Option<(usize, usize)> {
        self.docs
            .iter()
            .find(|d| d.kind == kind && d.name.as_deref() == name)
            .map(|d| d.locate(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> Seg {
        Seg::Key(k.to_string())
    }

    #[test]
    fn finds_nested_keys_and_list_items() {
        let text = "\
apiVersion: basalt.dev/v1alpha1
kind: MachineConfig
network:
  links:
    - name: eth0
      mtu: 1500
    - name: eth1
      addresses:
      - 192.0.2.1/24
      - bad
  nameservers: [1.1.1.1]
";
        let doc = SourceDoc::new("MachineConfig".into(), None, 10, text);
        assert_eq!(doc.locate(&[key("network")]), (12, 1));
        assert_eq!(
            doc.locate(&[key("network"), key("links"), Seg::Index(1)]),
            (16, 5)
        );
        assert_eq!(
            doc.locate(&[key("network"), key("links"), Seg::Index(0), key("mtu")]),
            (15, 7)
        );
        assert_eq!(
            doc.locate(&[key("network"), key("links"), Seg::Index(1), key("name")]),
            (16, 7)
        );
        assert_eq!(
            doc.locate(&[
                key("network"),
                key("links"),
                Seg::Index(1),
                key("addresses"),
                Seg::Index(1)
            ]),
            (19, 7)
        );
        // Inside flow style: the enclosing key.
        assert_eq!(
            doc.locate(&[key("network"), key("nameservers"), Seg::Index(0)]),
            (20, 3)
        );
        // Missing: the deepest part found.
        assert_eq!(doc.locate(&[key("network"), key("nope")]), (12, 1));
    }
}
