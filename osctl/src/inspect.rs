//! `osctl inspect dependencies`: the controller graph of each node in Graphviz DOT
//! (`osctl inspect dependencies | dot -Tsvg > graph.svg`).

use std::collections::BTreeSet;
use std::fmt::Write as _;

use anyhow::Result;
use basalt_api::machine::v1 as api;
use basalt_api::machine::v1::machine_service_client::MachineServiceClient;
use clap::Subcommand;

use crate::connect::{Connection, Failures};

#[derive(Debug, Clone, Subcommand)]
pub enum InspectCmd {
    /// The controller graph as Graphviz DOT: resource types are ellipses, controllers
    /// boxes; inputs solid (strong), dashed (weak) or dotted (destroy-ready); outputs
    /// bold (exclusive) or plain (shared).
    Dependencies,
}

/// DOT's quoted string: backslashes and quotes escaped.
fn quoted(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// One node's graph as a DOT digraph.
fn dot(node: &str, edges: &[api::ControllerDependency]) -> String {
    let mut out = format!(
        "digraph controllers {{\n  label={};\n  rankdir=LR;\n",
        quoted(node)
    );
    let mut controllers = BTreeSet::new();
    let mut types = BTreeSet::new();
    for e in edges {
        controllers.insert(e.controller.as_str());
        let kind = format!("{}/{}", e.namespace, e.r#type);
        let (from, to, style) = match api::DependencyKind::try_from(e.kind) {
            Ok(api::DependencyKind::InputWeak) => (kind.clone(), e.controller.clone(), "dashed"),
            Ok(api::DependencyKind::InputStrong) => (kind.clone(), e.controller.clone(), "solid"),
            Ok(api::DependencyKind::InputDestroyReady) => {
                (kind.clone(), e.controller.clone(), "dotted")
            }
            Ok(api::DependencyKind::OutputExclusive) => {
                (e.controller.clone(), kind.clone(), "bold")
            }
            Ok(api::DependencyKind::OutputShared) | Err(_) => {
                (e.controller.clone(), kind.clone(), "solid")
            }
        };
        types.insert(kind);
        let _ = writeln!(
            out,
            "  {} -> {} [style={style}];",
            quoted(&from),
            quoted(&to)
        );
    }
    for c in controllers {
        let _ = writeln!(out, "  {} [shape=box];", quoted(c));
    }
    for t in types {
        let _ = writeln!(out, "  {} [shape=ellipse];", quoted(&t));
    }
    out.push_str("}\n");
    out
}

pub async fn run(connection: &Connection, command: InspectCmd) -> Result<()> {
    let InspectCmd::Dependencies = command;
    let mut client = MachineServiceClient::new(connection.channel.clone());
    let answer = client
        .controller_dependencies(connection.request(api::ControllerDependenciesRequest {}))
        .await?;
    let mut failures = Failures::default();
    for m in answer.into_inner().messages {
        if failures.check(connection, &m.metadata) {
            continue;
        }
        print!("{}", dot(&connection.node(&m.metadata), &m.edges));
    }
    failures.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_point_from_inputs_and_to_outputs_with_names_quoted() {
        let edge = |kind: api::DependencyKind, ty: &str| api::ControllerDependency {
            controller: "net.\"Odd\"Controller".into(),
            kind: kind as i32,
            namespace: "network".into(),
            r#type: ty.into(),
            id: String::new(),
        };
        let graph = dot(
            "n1",
            &[
                edge(api::DependencyKind::InputWeak, "Links.net"),
                edge(api::DependencyKind::OutputExclusive, "Routes.net"),
            ],
        );
        assert!(
            graph
                .contains("\"network/Links.net\" -> \"net.\\\"Odd\\\"Controller\" [style=dashed];"),
            "{graph}"
        );
        assert!(
            graph.contains("\"net.\\\"Odd\\\"Controller\" -> \"network/Routes.net\" [style=bold];"),
            "{graph}"
        );
        assert!(
            graph.starts_with("digraph controllers {\n  label=\"n1\";"),
            "{graph}"
        );
    }
}
