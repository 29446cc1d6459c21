//! A JSON Schema of every document kind, for editors (docs/config.schema.json).

use schemars::generate::SchemaSettings;

use crate::{
    ClusterConfig, ExtensionServiceConfig, KubePrismConfig, KubeSpanConfig, MachineConfig,
};

/// One schema that accepts any Basalt config document.
pub fn json_schema() -> serde_json::Value {
    let mut generator = SchemaSettings::draft2020_12().into_generator();
    let kinds = [
        generator.subschema_for::<MachineConfig>(),
        generator.subschema_for::<ClusterConfig>(),
        generator.subschema_for::<KubeSpanConfig>(),
        generator.subschema_for::<KubePrismConfig>(),
        generator.subschema_for::<ExtensionServiceConfig>(),
    ];
    let defs = generator.take_definitions(true);
    serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Basalt configuration document",
        "description": "One document of a Basalt machine configuration (apiVersion basalt.dev/v1alpha1).",
        "oneOf": kinds,
        "$defs": defs,
    })
}
