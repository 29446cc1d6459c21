//! `osctl get`: resources of any type, as a table (with the type's print columns), YAML
//! or JSON, once or as a watch.

use anyhow::{Context as _, Result};
use basalt_api::common::v1::Metadata as NodeMetadata;
use basalt_api::resource::v1 as api;
use basalt_api::resource::v1::resource_service_client::ResourceServiceClient;
use basalt_resource::proto::Resource;
use basalt_resources::meta::PrintColumn;
use serde_json_path::JsonPath;

use crate::connect::{Connection, Failures};

/// How `osctl get` prints: `table`, `yaml`, `json`, or `jsonpath=EXPR`.
#[derive(Debug, Clone)]
pub enum Output {
    Table,
    Yaml,
    Json,
    /// The values the expression selects in each resource's JSON document, one a line.
    JsonPath(JsonPath),
}

/// Parses `-o`. A JSONPath is RFC 9535's (`$.spec.hostname`) or kubectl's template form
/// (`{.spec.hostname}`), over the document `-o json` prints.
fn parse_output(text: &str) -> Result<Output, String> {
    let expression = match text {
        "table" => return Ok(Output::Table),
        "yaml" => return Ok(Output::Yaml),
        "json" => return Ok(Output::Json),
        _ => text.strip_prefix("jsonpath=").ok_or_else(|| {
            format!("{text:?}: the output is one of table, yaml, json, jsonpath=EXPR")
        })?,
    };
    let inner = expression
        .strip_prefix('{')
        .and_then(|e| e.strip_suffix('}'))
        .unwrap_or(expression);
    let rooted = if inner.starts_with('$') {
        inner.to_string()
    } else {
        format!("${inner}")
    };
    JsonPath::parse(&rooted)
        .map(Output::JsonPath)
        .map_err(|e| format!("jsonpath {expression:?}: {e}"))
}

#[derive(Debug, Clone, clap::Args)]
pub struct GetArgs {
    /// The type: its full name or an alias (`osctl get rd` lists them).
    pub r#type: String,
    /// One resource; all of the type without it.
    pub id: Option<String>,
    /// The namespace; the type's default without it.
    #[arg(long)]
    pub namespace: Option<String>,
    /// table, yaml, json, or jsonpath=EXPR (e.g. `jsonpath={.spec.hostname}`).
    #[arg(long, short, value_parser = parse_output, default_value = "table")]
    pub output: Output,
    /// Keep printing changes.
    #[arg(long, short)]
    pub watch: bool,
    /// Only resources whose labels match, e.g. `app=web,!canary`.
    #[arg(long, short = 'l')]
    pub selector: Option<String>,
}

/// The print columns of `type_name`, found among the definitions.
fn columns(definitions: &[api::Definition], type_name: &str) -> Vec<PrintColumn> {
    let wanted = type_name.to_ascii_lowercase();
    definitions
        .iter()
        .find(|d| d.r#type.eq_ignore_ascii_case(&wanted) || d.aliases.contains(&wanted))
        .map(|d| {
            d.print_columns
                .iter()
                .map(|c| PrintColumn {
                    name: c.name.clone(),
                    path: c.path.clone(),
                })
                .collect()
        })
        .unwrap_or_default()
}

struct Printer {
    output: Output,
    columns: Vec<PrintColumn>,
    header_done: bool,
    /// With an event column (watch).
    events: bool,
}

impl Printer {
    fn print(&mut self, node: &str, event: Option<&str>, resource: &Resource) -> Result<()> {
        let metadata = resource.metadata.clone().unwrap_or_default();
        let spec: serde_json::Value =
            serde_yaml_ng::from_str(&resource.spec).with_context(|| {
                format!(
                    "the spec of {}/{} is not YAML",
                    metadata.r#type, metadata.id
                )
            })?;
        match &self.output {
            Output::Table => {
                if !self.header_done {
                    let mut header = vec!["NODE"];
                    if self.events {
                        header.push("*");
                    }
                    header.extend(["NAMESPACE", "TYPE", "ID", "VERSION"]);
                    let mut line = header.join("\t");
                    for c in &self.columns {
                        line.push('\t');
                        line.push_str(&c.name.to_ascii_uppercase());
                    }
                    println!("{line}");
                    self.header_done = true;
                }
                let display_type = metadata.r#type.split('.').next().unwrap_or_default();
                let mut line = node.to_string();
                if let Some(event) = event {
                    line.push('\t');
                    line.push_str(event);
                }
                line.push_str(&format!(
                    "\t{}\t{}\t{}\t{}",
                    metadata.namespace, display_type, metadata.id, metadata.version
                ));
                for c in &self.columns {
                    line.push('\t');
                    line.push_str(&c.extract(&spec));
                }
                println!("{line}");
            }
            Output::Yaml | Output::Json | Output::JsonPath(_) => {
                let mut doc = serde_json::json!({
                    "node": node,
                    "metadata": {
                        "namespace": metadata.namespace,
                        "type": metadata.r#type,
                        "id": metadata.id,
                        "version": metadata.version,
                        "owner": metadata.owner,
                        "phase": metadata.phase,
                        "labels": metadata.labels,
                    },
                    "spec": spec,
                });
                if let Some(event) = event {
                    doc["event"] = serde_json::Value::String(event.to_string());
                }
                match &self.output {
                    Output::Yaml => print!("---\n{}", serde_yaml_ng::to_string(&doc)?),
                    Output::JsonPath(path) => {
                        for value in path.query(&doc).all() {
                            match value {
                                serde_json::Value::String(text) => println!("{text}"),
                                other => println!("{}", serde_json::to_string(other)?),
                            }
                        }
                    }
                    _ => println!("{}", serde_json::to_string(&doc)?),
                }
            }
        }
        Ok(())
    }
}

fn event_name(event: i32) -> &'static str {
    match api::EventType::try_from(event) {
        Ok(api::EventType::Created) => "+",
        Ok(api::EventType::Updated) => "~",
        Ok(api::EventType::Destroyed) => "-",
        _ => "?",
    }
}

pub async fn get(connection: &Connection, args: GetArgs) -> Result<()> {
    let mut client = ResourceServiceClient::new(connection.channel.clone());
    let mut failures = Failures::default();
    // Definitions come from the endpoint itself: they are the same on every node.
    let definitions = client
        .definitions(api::DefinitionsRequest {})
        .await?
        .into_inner()
        .messages
        .into_iter()
        .flat_map(|m| m.definitions)
        .collect::<Vec<_>>();
    let wanted = args.r#type.to_ascii_lowercase();
    if ["rd", "rds", "resourcedefinition", "resourcedefinitions"].contains(&wanted.as_str()) {
        println!("TYPE\tALIASES\tNAMESPACE\tSENSITIVE");
        for d in &definitions {
            println!(
                "{}\t{}\t{}\t{}",
                d.r#type,
                d.aliases.join(","),
                d.default_namespace,
                d.sensitive
            );
        }
        return Ok(());
    }
    let mut printer = Printer {
        output: args.output.clone(),
        columns: columns(&definitions, &args.r#type),
        header_done: false,
        events: args.watch,
    };
    let namespace = args.namespace.clone().unwrap_or_default();
    let selector = args.selector.clone().unwrap_or_default();
    let mut show = |metadata: &Option<NodeMetadata>,
                    event: Option<&str>,
                    resource: Option<Resource>|
     -> Result<()> {
        if failures.check(connection, metadata) {
            return Ok(());
        }
        if let Some(resource) = resource {
            printer.print(&connection.node(metadata), event, &resource)?;
        }
        Ok(())
    };

    if args.watch {
        let request = api::WatchRequest {
            namespace,
            r#type: args.r#type.clone(),
            id: args.id.clone().unwrap_or_default(),
            bootstrap: true,
            label_selector: selector,
        };
        let mut stream = client
            .watch(connection.request(request))
            .await?
            .into_inner();
        while let Some(message) = stream.message().await? {
            let event = event_name(message.event);
            show(&message.metadata, Some(event), message.resource)?;
        }
    } else if let Some(id) = &args.id {
        let request = api::GetRequest {
            namespace,
            r#type: args.r#type.clone(),
            id: id.clone(),
        };
        let answer = client.get(connection.request(request)).await?.into_inner();
        for message in answer.messages {
            show(&message.metadata, None, message.resource)?;
        }
    } else {
        let request = api::ListRequest {
            namespace,
            r#type: args.r#type.clone(),
            label_selector: selector,
        };
        let mut stream = client.list(connection.request(request)).await?.into_inner();
        while let Some(message) = stream.message().await? {
            show(&message.metadata, None, message.resource)?;
        }
    }
    failures.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_formats_and_both_jsonpath_forms_parse() {
        let doc = serde_json::json!({"spec": {"hostname": "n1"}, "metadata": {"id": "x"}});
        for expression in ["jsonpath={.spec.hostname}", "jsonpath=$.spec.hostname"] {
            let Ok(Output::JsonPath(path)) = parse_output(expression) else {
                panic!("{expression} did not parse as a jsonpath");
            };
            assert_eq!(path.query(&doc).all(), vec![&serde_json::json!("n1")]);
        }
        assert!(matches!(parse_output("yaml"), Ok(Output::Yaml)));
        assert!(parse_output("xml").unwrap_err().contains("jsonpath=EXPR"));
        assert!(parse_output("jsonpath={.spec[}")
            .unwrap_err()
            .contains("jsonpath"));
    }
}
