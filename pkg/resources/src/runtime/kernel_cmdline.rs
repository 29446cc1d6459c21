use basalt_resource::{namespaces, ResourceSpec};
use serde::{Deserialize, Serialize};

/// One argument of the kernel command line: `key` or `key=value`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelArg {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// The kernel command line the node booted with (id `cmdline`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ResourceSpec)]
#[resource(
    type = "KernelCmdlines.runtime.basalt.dev",
    namespace = namespaces::RUNTIME,
    aliases("cmdline"),
    column("Cmdline", "raw"),
)]
#[serde(deny_unknown_fields)]
pub struct KernelCmdlineSpec {
    pub raw: String,
    pub args: Vec<KernelArg>,
}

impl KernelCmdlineSpec {
    /// The id of the one resource of this type.
    pub const ID: &'static str = "cmdline";

    /// Parses a command line the way the kernel splits it: on white space, except inside
    /// double quotes, which are removed. Arguments after a lone `--` belong to init and are
    /// kept as they are. Never fails: the kernel accepts any bytes here, and so do we.
    pub fn parse(raw: &str) -> Self {
        let mut args = Vec::new();
        let mut current = String::new();
        let mut in_quotes = false;
        let mut has_token = false;
        for c in raw.chars() {
            match c {
                '"' => {
                    in_quotes = !in_quotes;
                    has_token = true;
                }
                c if c.is_whitespace() && !in_quotes => {
                    if has_token {
                        args.push(std::mem::take(&mut current));
                        has_token = false;
                    }
                }
                c => {
                    current.push(c);
                    has_token = true;
                }
            }
        }
        if has_token {
            args.push(current);
        }
        let args = args
            .into_iter()
            .map(|arg| match arg.split_once('=') {
                Some((k, v)) => KernelArg {
                    key: k.to_string(),
                    value: Some(v.to_string()),
                },
                None => KernelArg {
                    key: arg,
                    value: None,
                },
            })
            .collect();
        KernelCmdlineSpec {
            raw: raw.trim().to_string(),
            args,
        }
    }

    /// The value of the last `key=value` before `--` (the kernel's rule: the last one wins).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .take_while(|a| a.key != "--")
            .filter(|a| a.key == key)
            .filter_map(|a| a.value.as_deref())
            .last()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_quotes_and_last_value_wins() {
        let c = KernelCmdlineSpec::parse(
            "console=ttyS0 basalt.hostname=a quiet x=\"two words\" basalt.hostname=b -- basalt.hostname=c\n",
        );
        assert_eq!(c.get("basalt.hostname"), Some("b"));
        assert_eq!(c.get("x"), Some("two words"));
        assert_eq!(c.get("quiet"), None);
        assert!(c.args.iter().any(|a| a.key == "quiet" && a.value.is_none()));
        assert_eq!(c.raw.lines().count(), 1);
    }

    #[test]
    fn empty_quotes_make_an_empty_argument() {
        let c = KernelCmdlineSpec::parse("a=\"\" \"\"");
        assert_eq!(c.get("a"), Some(""));
        assert_eq!(c.args.len(), 2);
    }
}
